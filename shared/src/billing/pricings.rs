//! How each CDR of a rate-plan cycle was priced: in consumption order, the
//! CDR, its rated cost, the rate and first bundle that priced it, and the
//! billed and bundle-covered quantities. Stored in `cycle_rating_chunk`, a
//! row per [`CHUNK`] CDRs, as one encoded column each (`billing::encoding`):
//! written on every rate-plan calculation, read by `billing::explain`.

use std::ops::Range;

use chrono::NaiveDate;
use sqlx::{PgConnection, PgPool, Row};

use crate::billing::encoding::{put_varint, seal, unseal, zigzag, Reader};

/// CDRs per `cycle_rating_chunk` row: a million CDRs are ten rows, and no
/// row nears PostgreSQL's 1 GiB value limit however big a cycle gets.
pub const CHUNK: usize = 100_000;

const TAG: &[u8; 8] = b"TEMPRC01";

/// Parallel columns: element `i` of each is the CDR at position `i` of
/// consumption order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricings {
    pub cdr_id: Vec<i64>,
    pub rated_cost_micros: Vec<i64>,
    /// Index into the plan snapshot's `rates`; -1: none (unrated, or a
    /// service).
    pub rate: Vec<i32>,
    /// Index into the snapshot's `bundles` of the first bundle that covered
    /// part of the CDR; -1: none.
    pub bundle: Vec<i32>,
    /// Seconds, bytes or messages after increments, and the part bundles
    /// covered.
    pub billed_quantity: Vec<i64>,
    pub covered_quantity: Vec<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PricingsError {
    #[error("the stored pricings of customer {customer_id}'s cycle {cycle} are damaged ({problem}); recalculate the cycle's totals")]
    Damaged {
        customer_id: i64,
        cycle: NaiveDate,
        problem: String,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Pricings {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            cdr_id: Vec::with_capacity(n),
            rated_cost_micros: Vec::with_capacity(n),
            rate: Vec::with_capacity(n),
            bundle: Vec::with_capacity(n),
            billed_quantity: Vec::with_capacity(n),
            covered_quantity: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.cdr_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdr_id.is_empty()
    }

    /// The position of a CDR in consumption order.
    pub fn position_of(&self, cdr_id: i64) -> Option<usize> {
        self.cdr_id.iter().position(|id| *id == cdr_id)
    }

    fn encode(&self, range: Range<usize>) -> Vec<u8> {
        let mut head = TAG.to_vec();
        put_varint(&mut head, range.len() as u64);
        let mut columns: [Vec<u8>; 6] =
            std::array::from_fn(|_| Vec::with_capacity(range.len() * 3));
        let mut last_id = 0i64;
        for i in range {
            put_varint(
                &mut columns[0],
                zigzag(self.cdr_id[i].wrapping_sub(last_id)),
            );
            last_id = self.cdr_id[i];
            put_varint(&mut columns[1], zigzag(self.rated_cost_micros[i]));
            put_varint(&mut columns[2], zigzag(self.rate[i].into()));
            put_varint(&mut columns[3], zigzag(self.bundle[i].into()));
            put_varint(&mut columns[4], zigzag(self.billed_quantity[i]));
            put_varint(&mut columns[5], zigzag(self.covered_quantity[i]));
        }
        let columns: Vec<&[u8]> = columns.iter().map(Vec::as_slice).collect();
        seal(head, &columns)
    }

    /// Appends one chunk's pricings.
    fn decode_into(&mut self, compressed: &[u8]) -> Result<(), String> {
        let raw = unseal(compressed)?;
        let mut head = Reader::new(&raw);
        if head.take(TAG.len())? != TAG {
            return Err("another layout".into());
        }
        let n = head.usize()?;
        let [mut ids, mut costs, mut rates, mut bundles, mut billed, mut covered] =
            head.columns::<6>()?;
        let small =
            |value: i64| i32::try_from(value).map_err(|_| "an index is too big".to_string());
        let mut id = 0i64;
        for _ in 0..n {
            id = id.wrapping_add(ids.signed()?);
            self.cdr_id.push(id);
            self.rated_cost_micros.push(costs.signed()?);
            self.rate.push(small(rates.signed()?)?);
            self.bundle.push(small(bundles.signed()?)?);
            self.billed_quantity.push(billed.signed()?);
            self.covered_quantity.push(covered.signed()?);
        }
        Ok(())
    }
}

/// Every stored pricing of a cycle, in consumption order; empty when the
/// cycle has no rate-plan rating.
pub async fn read(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Pricings, PricingsError> {
    let rows = sqlx::query(
        "SELECT first_position, cdr_count, pricings FROM cycle_rating_chunk
         WHERE customer_id = $1 AND cycle = $2 ORDER BY chunk",
    )
    .bind(customer_id)
    .bind(cycle)
    .fetch_all(pool)
    .await?;
    let damaged = |problem: String| PricingsError::Damaged {
        customer_id,
        cycle,
        problem,
    };
    let mut pricings = Pricings::default();
    for row in rows {
        let first: i32 = row.try_get("first_position")?;
        let count: i32 = row.try_get("cdr_count")?;
        if usize::try_from(first).ok() != Some(pricings.len()) {
            return Err(damaged(format!(
                "a chunk starts at position {first}, expected {}",
                pricings.len()
            )));
        }
        let bytes: Vec<u8> = row.try_get("pricings")?;
        pricings.decode_into(&bytes).map_err(&damaged)?;
        if usize::try_from(count).ok() != Some(pricings.len() - first as usize) {
            return Err(damaged(format!(
                "the chunk at {first} says {count} CDRs and holds {}",
                pricings.len() - first as usize
            )));
        }
    }
    Ok(pricings)
}

/// Writes a cycle's pricings (its `cycle_rating` row must exist).
pub(crate) async fn write(
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: NaiveDate,
    pricings: &Pricings,
) -> Result<(), sqlx::Error> {
    let n = pricings.len();
    for (chunk, first) in (0..n).step_by(CHUNK).enumerate() {
        let range = first..(first + CHUNK).min(n);
        sqlx::query(
            "INSERT INTO cycle_rating_chunk (customer_id, cycle, chunk, first_position, cdr_count, pricings)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(chunk as i32)
        .bind(first as i32)
        .bind(range.len() as i32)
        .bind(pricings.encode(range))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricings_read_back_as_written_across_chunks() {
        let mut pricings = Pricings::default();
        for i in 0..2_500i64 {
            pricings.cdr_id.push(1_000 + i * 7 - (i % 3) * 11);
            pricings.rated_cost_micros.push(i * 1_234 - 50_000);
            pricings.rate.push((i % 5) as i32 - 1);
            pricings.bundle.push((i % 4) as i32 - 1);
            pricings.billed_quantity.push(i * 60);
            pricings.covered_quantity.push(i * 30);
        }
        let mut back = Pricings::default();
        for first in (0..pricings.len()).step_by(1_000) {
            let bytes = pricings.encode(first..(first + 1_000).min(pricings.len()));
            back.decode_into(&bytes).unwrap();
        }
        assert_eq!(back, pricings);
        assert_eq!(back.position_of(996), Some(1));
        let bytes = pricings.encode(0..10);
        assert!(Pricings::default()
            .decode_into(&bytes[..bytes.len() / 2])
            .is_err());
    }
}
