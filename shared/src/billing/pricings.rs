//! How each CDR of a rate-plan cycle was priced: in consumption order, the
//! CDR, its rated cost, the rate and first bundle that priced it, and the
//! billed and bundle-covered quantities, with the shares of the rare CDRs
//! that several bundles covered. Stored in `rating_chunk`, a row per at most
//! [`CHUNK`] CDRs of one segment of the cycle, as one encoded column each
//! (`billing::encoding`): written as the calculation rates, read by
//! `billing::explain`.

use std::ops::Range;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::billing::encoding::{put_varint, seal, unseal, zigzag, Reader};
use crate::ports::StoreError;

/// CDRs per `rating_chunk` row at most: the write buffer of a calculation,
/// and the most a CDR's explanation decodes besides its checkpoint.
pub const CHUNK: usize = 20_000;

const TAG: &[u8; 8] = b"TEMPRC02";

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
    Store(#[from] StoreError),
}

/// A `rating_chunk` row as stored, not yet checked or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub segment: DateTime<Utc>,
    pub first_position: i64,
    pub cdr_count: i32,
    pub pricings: Vec<u8>,
}

/// Where the pricings are read (`adapters::billing::pricings` on
/// PostgreSQL; the calculation writes them through its `CycleStore`).
#[async_trait]
pub trait PricingsStore: Send + Sync {
    /// The stored chunks of a cycle, or of its segment starting at
    /// `segment`, ordered by segment and sequence.
    async fn chunks(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        segment: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredChunk>, StoreError>;
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

    pub fn push(&mut self, other: &Pricings, i: usize) {
        self.cdr_id.push(other.cdr_id[i]);
        self.rated_cost_micros.push(other.rated_cost_micros[i]);
        self.rate.push(other.rate[i]);
        self.bundle.push(other.bundle[i]);
        self.billed_quantity.push(other.billed_quantity[i]);
        self.covered_quantity.push(other.covered_quantity[i]);
    }

    pub fn append(&mut self, other: &Pricings) {
        for i in 0..other.len() {
            self.push(other, i);
        }
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

/// One share of a CDR that more than one bundle covered: its index in the
/// chunk, the bundle number and what that bundle covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub index: u32,
    pub bundle: i32,
    pub covered: i64,
}

/// The pricings of one `rating_chunk` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PricingChunk {
    pub pricings: Pricings,
    pub splits: Vec<Split>,
}

impl PricingChunk {
    pub fn len(&self) -> usize {
        self.pricings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pricings.is_empty()
    }

    pub fn clear(&mut self) {
        *self = PricingChunk::default();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.pricings.encode(0..self.pricings.len());
        // The splits follow the sealed pricings as a sealed block of their
        // own, so chunks without splits pay four bytes.
        let mut splits = Vec::new();
        put_varint(&mut splits, self.splits.len() as u64);
        for split in &self.splits {
            put_varint(&mut splits, split.index.into());
            put_varint(&mut splits, zigzag(split.bundle.into()));
            put_varint(&mut splits, zigzag(split.covered));
        }
        let splits = seal(Vec::new(), &[&splits]);
        let mut out = Vec::with_capacity(bytes.len() + splits.len() + 8);
        put_varint(&mut out, bytes.len() as u64);
        out.append(&mut bytes);
        out.extend_from_slice(&splits);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader::new(bytes);
        let pricings_bytes = reader.bytes()?;
        let rest = &bytes[bytes.len() - reader.remaining()..];
        let mut chunk = PricingChunk::default();
        chunk.pricings.decode_into(pricings_bytes)?;
        let raw = unseal(rest)?;
        let mut head = Reader::new(&raw);
        let [mut splits] = head.columns::<1>()?;
        for _ in 0..splits.usize()? {
            let index = splits.u32()?;
            if index as usize >= chunk.pricings.len() {
                return Err("a split names a CDR the chunk lacks".into());
            }
            chunk.splits.push(Split {
                index,
                bundle: i32::try_from(splits.signed()?).map_err(|_| "a bundle is too big")?,
                covered: splits.signed()?,
            });
        }
        Ok(chunk)
    }
}

/// Every stored pricing of a cycle, in consumption order; empty when the
/// cycle has no rate-plan rating.
pub async fn read(
    store: &dyn PricingsStore,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Pricings, PricingsError> {
    let chunks = read_chunks(store, customer_id, cycle, None).await?;
    let mut all = Pricings::default();
    for (_, _, chunk) in chunks {
        all.append(&chunk.pricings);
    }
    Ok(all)
}

/// The stored chunks of a cycle (or of one segment of it) in consumption
/// order, each with its segment and its first position in the cycle.
pub async fn read_chunks(
    store: &dyn PricingsStore,
    customer_id: i64,
    cycle: NaiveDate,
    segment: Option<DateTime<Utc>>,
) -> Result<Vec<(DateTime<Utc>, u64, PricingChunk)>, PricingsError> {
    let rows = store.chunks(customer_id, cycle, segment).await?;
    let damaged = |problem: String| PricingsError::Damaged {
        customer_id,
        cycle,
        problem,
    };
    let mut chunks = Vec::with_capacity(rows.len());
    let mut expected: Option<u64> = None;
    for row in rows {
        let first = u64::try_from(row.first_position)
            .map_err(|_| damaged("a chunk starts at a negative position".into()))?;
        let count = row.cdr_count;
        if let Some(expected) = expected {
            if first != expected {
                return Err(damaged(format!(
                    "a chunk starts at position {first}, expected {expected}"
                )));
            }
        }
        let chunk = PricingChunk::decode(&row.pricings).map_err(&damaged)?;
        if usize::try_from(count).ok() != Some(chunk.len()) {
            return Err(damaged(format!(
                "the chunk at {first} says {count} CDRs and holds {}",
                chunk.len()
            )));
        }
        expected = Some(first + chunk.len() as u64);
        chunks.push((row.segment, first, chunk));
    }
    Ok(chunks)
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
