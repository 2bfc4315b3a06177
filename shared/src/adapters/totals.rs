//! CalculateTotals on PostgreSQL: the [`CycleStore`] of one calculation is
//! one REPEATABLE READ transaction, so the CDRs, the marks, the checkpoints
//! and the customer's settings all come from one snapshot, and its writes
//! (totals, lines, pricings, checkpoints, consumed marks) commit together.
//!
//! Calculations of the same cycle are serialized by an advisory lock. The
//! snapshot is taken before the lock is granted, so one that waited while
//! another committed finds `cycle_state` changed under it (a serialization
//! failure) and starts again on a fresh snapshot: there it usually finds the
//! cycle current and does nothing (a burst of DispatchTotals coalesces). A
//! cycle's first calculation inserts a placeholder `cycle_state` row, so a
//! waiting first one fails on that insert the same way; locking the marks
//! it read and upserting the pricings fail it the same way too, should it
//! get that far.
//!
//! CDRs are read in pages of about `stream::PAGE` with binary COPY (about
//! half the time of fetching rows), in `started_at` order from the
//! `(customer_id, started_at)` index; the CDRs of one instant are put in
//! consumption order (provider, external id) here, and a page always holds
//! whole instants, so the next one begins after its last `started_at`.
//!
//! The first page is read on the calculation's own transaction; the rest of
//! the cycle is cut into time slices of about a page each ([`Slices`]), and
//! up to [`READERS`] slices are read at once, each in index order on a
//! connection borrowed from the pool for that slice only, in the same
//! snapshot (`pg_export_snapshot`), while the calculation rates and writes
//! the pages before them. A reader takes a connection only when the pool has
//! one to spare: the chain runtime runs as many records at once as the pool
//! has connections, counting one per record, so a reader that held its
//! connection for the whole calculation made a sibling record wait for it
//! (issue 17). With no connection to spare (a pool of one), every page is
//! read in sequence on the calculation's own transaction.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use futures::TryStreamExt;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::billing::calculation::{
    self, CalculationReport, CdrKey, CdrPage, CycleSettings, CycleStore, Line, LineChanges, Method,
    PageRow, PendingChange, Previous, RatingState, Recalculation, Sums,
};
use crate::billing::customer::BillingCustomer;
use crate::billing::pricings::PricingChunk;
use crate::billing::totals::{CycleTotals, TotalsError};
use crate::cdr::cycle_bounds;
use crate::cdr::{Kind, Zone};
use crate::ports::StoreError;

/// Lines written by one statement.
const LINES_PER_STATEMENT: usize = 10_000;

/// Attempts of one calculation that lost its snapshot to another.
const ATTEMPTS: u32 = 8;

/// How long a slice reader waits for the connection the pool had to spare
/// when it looked (opening one takes milliseconds); past that, the
/// calculation reads the slice on its own transaction.
const READER_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Calculates the cycle's totals, from the last checkpoint before its
/// earliest change (or not at all when nothing changed).
pub async fn calculate_totals(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<CycleTotals, TotalsError> {
    calculate_totals_with(pool, customer_id, cycle, Recalculation::Incremental)
        .await
        .map(|(totals, _)| totals)
}

/// [`calculate_totals`], saying what it did and where the time went.
pub async fn calculate_totals_with(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    how: Recalculation,
) -> Result<(CycleTotals, CalculationReport), TotalsError> {
    calculate_totals_by(pool, customer_id, cycle, how, None).await
}

/// [`calculate_totals_with`] as the run `by` (a CalculateTotals message
/// id), recorded with the totals it makes so that its chain can tell its
/// own calculation, retried, from another chain's.
pub async fn calculate_totals_by(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    how: Recalculation,
    by: Option<&str>,
) -> Result<(CycleTotals, CalculationReport), TotalsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = attempt_once(pool, customer_id, cycle, how, by).await;
        match result {
            Err(TotalsError::Store(e)) if attempt < ATTEMPTS && lost_snapshot(&e) => {
                tracing::info!(customer_id, %cycle, attempt, "another calculation of the cycle committed first; starting again");
            }
            other => {
                if let Ok((totals, report)) = &other {
                    tracing::info!(
                        customer_id,
                        %cycle,
                        method = totals.method,
                        cdrs = totals.cdr_count,
                        calculation = ?report.calculation,
                        cdrs_read = report.cdrs_read,
                        read_s = report.read_seconds,
                        rate_s = report.rate_seconds,
                        write_s = report.write_seconds,
                        "totals calculated"
                    );
                }
                return other;
            }
        }
    }
}

fn lost_snapshot(e: &StoreError) -> bool {
    matches!(e.source.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("40001") | Some("40P01")))
}

async fn attempt_once(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    how: Recalculation,
    by: Option<&str>,
) -> Result<(CycleTotals, CalculationReport), TotalsError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("totals:{customer_id}:{cycle}"))
        .execute(&mut *tx)
        .await?;
    let mut store = PgCycleStore {
        tx,
        pool: pool.clone(),
        snapshot: None,
        slices: None,
        customer_id,
        cycle,
        end: None,
    };
    let done = calculation::calculate(&mut store, customer_id, cycle, how, by).await?;
    store.tx.commit().await?;
    Ok(done)
}

/// One calculation's transaction.
pub struct PgCycleStore {
    tx: Transaction<'static, Postgres>,
    /// Where the slice readers borrow their connections, a slice at a time.
    pool: PgPool,
    /// The transaction's snapshot, exported for the readers once needed.
    snapshot: Option<String>,
    /// The cycle's slices being read, once reading began.
    slices: Option<Slices>,
    customer_id: i64,
    cycle: NaiveDate,
    /// The cycle's end, once the customer's zone is known.
    end: Option<DateTime<Utc>>,
}

fn timestamp(at: DateTime<Utc>) -> String {
    format!("'{}'", at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// A string as an SQL literal: E'' reads backslashes the same whatever
/// `standard_conforming_strings` says.
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

#[async_trait]
impl CycleStore for PgCycleStore {
    async fn customer(&mut self) -> Result<BillingCustomer, TotalsError> {
        let row = sqlx::query(
            "SELECT c.billing_cycle_start_day, c.time_zone, c.rate_plan_id, p.plan
             FROM customer c LEFT JOIN rate_plan p ON p.id = c.rate_plan_id WHERE c.id = $1",
        )
        .bind(self.customer_id)
        .fetch_optional(&mut *self.tx)
        .await?
        .ok_or(crate::billing::customer::CustomerError::UnknownCustomer(
            self.customer_id,
        ))?;
        let customer = BillingCustomer::from_settings(
            self.customer_id,
            self.cycle,
            row.try_get("billing_cycle_start_day")?,
            row.try_get("time_zone")?,
            row.try_get("rate_plan_id")?,
            row.try_get("plan")?,
        )?;
        self.end = Some(cycle_bounds(self.cycle, customer.zone).1);
        Ok(customer)
    }

    async fn previous(&mut self) -> Result<Option<Previous>, TotalsError> {
        // A calculation that committed after this snapshot was taken makes
        // one of these two statements a serialization failure, and the
        // caller starts again on a fresh snapshot: the FOR UPDATE when the
        // cycle had a state, the INSERT when both were the cycle's first
        // (a placeholder, `calculations` 0, that this calculation
        // overwrites or rolls back).
        sqlx::query(
            "INSERT INTO cycle_state (customer_id, cycle, method, time_zone, start_day, cdr_count, calculations, cdrs_read)
             VALUES ($1, $2, 'standard', '', 0, 0, 0, 0) ON CONFLICT DO NOTHING",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .execute(&mut *self.tx)
        .await?;
        let row = sqlx::query(
            "SELECT method, rate_plan_id, plan, time_zone, start_day, calculations, calculated_by FROM cycle_state
             WHERE customer_id = $1 AND cycle = $2 FOR UPDATE",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = row.filter(|row| row.try_get::<i64, _>("calculations").unwrap_or(0) > 0)
        else {
            return Ok(None);
        };
        let method: String = row.try_get("method")?;
        Ok(Some(Previous {
            settings: CycleSettings {
                method: Method::from_stored(&method),
                rate_plan_id: row.try_get("rate_plan_id")?,
                plan: row.try_get("plan")?,
                time_zone: row.try_get("time_zone")?,
                start_day: u32::try_from(row.try_get::<i16, _>("start_day")?).unwrap_or(0),
            },
            calculated_by: row.try_get("calculated_by")?,
        }))
    }

    async fn pending_changes(&mut self) -> Result<Vec<PendingChange>, TotalsError> {
        // FOR UPDATE: marks another calculation consumed after this snapshot
        // was taken make this a serialization failure, before any rating,
        // also for a cycle's first calculation (no cycle_state row yet).
        let rows: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, changed_from FROM cycle_change WHERE customer_id = $1 AND cycle = $2 FOR UPDATE",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, changed_from)| PendingChange { id, changed_from })
            .collect())
    }

    async fn stored_totals(&mut self) -> Result<Option<CycleTotals>, TotalsError> {
        let row = sqlx::query(
            "SELECT method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                    provider_cost_micros, rated_cost_micros, unrated_count
             FROM totals WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let method: String = row.try_get("method")?;
        Ok(Some(CycleTotals {
            customer_id: self.customer_id,
            cycle: self.cycle,
            method: Method::from_stored(&method).as_str(),
            rate_plan_id: row.try_get("rate_plan_id")?,
            cdr_count: row.try_get("cdr_count")?,
            voice_seconds: row.try_get("voice_seconds")?,
            data_bytes: row.try_get("data_bytes")?,
            messages: row.try_get("messages")?,
            provider_cost_micros: row.try_get("provider_cost_micros")?,
            rated_cost_micros: row.try_get("rated_cost_micros")?,
            unrated_count: row.try_get("unrated_count")?,
        }))
    }

    async fn checkpoint_before(
        &mut self,
        at: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, Vec<u8>)>, TotalsError> {
        let end = self.end()?;
        Ok(sqlx::query_as(
            "SELECT at, state FROM rating_checkpoint
             WHERE customer_id = $1 AND cycle = $2 AND at <= $3 AND at < $4
             ORDER BY at DESC LIMIT 1",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(at)
        .bind(end)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn final_state(&mut self) -> Result<Option<Vec<u8>>, TotalsError> {
        Ok(sqlx::query_scalar(
            "SELECT state FROM rating_checkpoint WHERE customer_id = $1 AND cycle = $2
             ORDER BY at DESC LIMIT 1",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn discard_from(&mut self, from: Option<DateTime<Utc>>) -> Result<(), TotalsError> {
        sqlx::query(
            "DELETE FROM rating_chunk WHERE customer_id = $1 AND cycle = $2
             AND ($3::timestamptz IS NULL OR segment >= $3)",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(from)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "DELETE FROM rating_checkpoint WHERE customer_id = $1 AND cycle = $2
             AND ($3::timestamptz IS NULL OR at > $3)",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(from)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn read_page(
        &mut self,
        from: DateTime<Utc>,
        after: Option<&CdrKey>,
        limit: usize,
        page: &mut CdrPage,
    ) -> Result<(), TotalsError> {
        let end = micros(self.end()?);
        let continues = self
            .slices
            .as_ref()
            .is_some_and(|s| s.from == from && s.limit == limit && s.expect.as_ref() == after);
        if !continues {
            // A new reading (or one the slices did not expect: dropping them
            // stops their readers) starts right after `after`.
            let next = match after {
                Some(key) => key.started_at.saturating_add(1),
                None => micros(from),
            };
            self.slices = Some(Slices::new(from, next, limit));
        }
        loop {
            self.dispatch(end).await?;
            let Some(slices) = self.slices.as_mut() else {
                return Err(TotalsError::Read(
                    "the slices vanished while reading".into(),
                ));
            };
            let Some(front) = slices.queue.front_mut() else {
                // Nothing read ahead: the next page is counted from where the
                // dispatched slices end, on the calculation's own transaction.
                if slices.next >= end {
                    page.clear();
                    return Ok(());
                }
                let at = instant_of(slices.next)?;
                copy_page(
                    &mut self.tx,
                    self.customer_id,
                    at,
                    instant_of(end)?,
                    None,
                    limit,
                    page,
                )
                .await?;
                let slices = self.slices.as_mut().expect("present above");
                slices.learn_from_page(page, end);
                slices.expect = page.last_key();
                self.dispatch(end).await?;
                return Ok(());
            };
            match &mut front.reader {
                Some(reader) => match reader.pages.recv().await {
                    Some(SliceMessage::Page(next)) => {
                        *page = next;
                        front.after = page.last_key();
                        front.rows += page.rows.len() as u64;
                    }
                    Some(SliceMessage::Done) => {
                        let done = slices.queue.pop_front().expect("the front slice");
                        slices.learn_from_slice(&done);
                        continue;
                    }
                    Some(SliceMessage::Failed(e)) => {
                        tracing::info!(error = %e, "a slice read ahead is read on the calculation's own connection");
                        front.reader = None;
                        continue;
                    }
                    None => {
                        // The reader ended without saying so (it panicked):
                        // what it did not send is read here.
                        front.reader = None;
                        continue;
                    }
                },
                None => {
                    let (from, to, after) = (front.from, front.to, front.after);
                    copy_page(
                        &mut self.tx,
                        self.customer_id,
                        instant_of(from)?,
                        instant_of(to)?,
                        after.as_ref(),
                        limit,
                        page,
                    )
                    .await?;
                    let slices = self.slices.as_mut().expect("present above");
                    let front = slices.queue.front_mut().expect("the front slice");
                    front.rows += page.rows.len() as u64;
                    front.after = page.last_key().or(front.after);
                    if !page.more {
                        let done = slices.queue.pop_front().expect("the front slice");
                        slices.learn_from_slice(&done);
                    }
                }
            }
            if page.rows.is_empty() {
                continue;
            }
            // More may follow in later slices; an empty page says when none
            // did.
            page.more = true;
            if let Some(slices) = self.slices.as_mut() {
                slices.expect = page.last_key();
            }
            return Ok(());
        }
    }

    async fn group(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<(String, Kind, Zone, Sums)>, Option<DateTime<Utc>>), TotalsError> {
        type GroupRow = (
            String,
            String,
            String,
            i64,
            i64,
            i64,
            i64,
            i64,
            DateTime<Utc>,
        );
        let rows: Vec<GroupRow> = sqlx::query_as(
            "SELECT subscription, kind, roaming_zone, count(*), sum(duration_seconds)::bigint,
                    sum(volume_bytes)::bigint, sum(units)::bigint, sum(provider_cost_micros)::bigint,
                    max(started_at)
             FROM call_detail_record
             WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3
             GROUP BY subscription, kind, roaming_zone",
        )
        .bind(self.customer_id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *self.tx)
        .await?;
        let last = rows.iter().map(|row| row.8).max();
        let groups = rows
            .into_iter()
            .map(|(subscription, kind, zone, count, seconds, bytes, units, cost, _)| {
                let (Some(kind), Some(zone)) =
                    (parse_kind(kind.as_bytes()), parse_zone(zone.as_bytes()))
                else {
                    return Err(TotalsError::Read(format!(
                        "subscription {subscription} has CDRs of kind '{kind}' in zone '{zone}', which billing does not know"
                    )));
                };
                let sums = Sums {
                    cdr_count: count,
                    voice_seconds: if kind == Kind::Voice { seconds } else { 0 },
                    data_bytes: if kind == Kind::Data { bytes } else { 0 },
                    messages: if matches!(kind, Kind::Sms | Kind::Mms) {
                        units
                    } else {
                        0
                    },
                    provider_cost_micros: cost,
                    rated_cost_micros: cost,
                    unrated_count: 0,
                };
                Ok((subscription, kind, zone, sums))
            })
            .collect::<Result<Vec<_>, TotalsError>>()?;
        Ok((groups, last))
    }

    async fn write_chunk(
        &mut self,
        segment: DateTime<Utc>,
        seq: i32,
        first_position: u64,
        chunk: &PricingChunk,
    ) -> Result<(), TotalsError> {
        // An upsert, like every write here: a row another calculation
        // committed after this snapshot is then a serialization failure
        // (start again), where a plain INSERT would fail on the key. The
        // first calculation of a cycle has no cycle_state row to lock, so
        // this is where a waiting one can find it lost.
        sqlx::query(
            "INSERT INTO rating_chunk (customer_id, cycle, segment, seq, first_position, cdr_count, pricings)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (customer_id, cycle, segment, seq) DO UPDATE SET
                 first_position = EXCLUDED.first_position, cdr_count = EXCLUDED.cdr_count,
                 pricings = EXCLUDED.pricings",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(segment)
        .bind(seq)
        .bind(i64::try_from(first_position).unwrap_or(i64::MAX))
        .bind(chunk.len() as i32)
        .bind(chunk.encode())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn write_checkpoint(
        &mut self,
        at: DateTime<Utc>,
        state: &RatingState,
    ) -> Result<(), TotalsError> {
        sqlx::query(
            "INSERT INTO rating_checkpoint (customer_id, cycle, at, cdr_count, state)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (customer_id, cycle, at) DO UPDATE SET cdr_count = EXCLUDED.cdr_count, state = EXCLUDED.state",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(at)
        .bind(i64::try_from(state.cdr_count).unwrap_or(i64::MAX))
        .bind(state.encode())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn write_totals(
        &mut self,
        totals: &CycleTotals,
        lines: &LineChanges,
    ) -> Result<(), TotalsError> {
        sqlx::query(
            "INSERT INTO totals (customer_id, cycle, method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                                 provider_cost_micros, rated_cost_micros, unrated_count, calculated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
             ON CONFLICT (customer_id, cycle) DO UPDATE SET
                 method = EXCLUDED.method, rate_plan_id = EXCLUDED.rate_plan_id, cdr_count = EXCLUDED.cdr_count,
                 voice_seconds = EXCLUDED.voice_seconds, data_bytes = EXCLUDED.data_bytes,
                 messages = EXCLUDED.messages, provider_cost_micros = EXCLUDED.provider_cost_micros,
                 rated_cost_micros = EXCLUDED.rated_cost_micros, unrated_count = EXCLUDED.unrated_count,
                 calculated_at = EXCLUDED.calculated_at",
        )
        .bind(totals.customer_id)
        .bind(totals.cycle)
        .bind(totals.method)
        .bind(&totals.rate_plan_id)
        .bind(totals.cdr_count)
        .bind(totals.voice_seconds)
        .bind(totals.data_bytes)
        .bind(totals.messages)
        .bind(totals.provider_cost_micros)
        .bind(totals.rated_cost_micros)
        .bind(totals.unrated_count)
        .execute(&mut *self.tx)
        .await?;
        // A full calculation compares its lines with the stored ones rather
        // than deleting them all and inserting them again: an insert costs
        // a foreign key check per line (more than half of writing 58,000
        // lines), an update of a line's figures none, and an unchanged line
        // nothing at all.
        let mut unchanged = vec![false; lines.upsert.len()];
        let mut stale: Vec<(String, String, String)> = lines
            .delete
            .iter()
            .map(|(s, k, z)| (s.clone(), k.as_str().into(), z.as_str().into()))
            .collect();
        if lines.replace_all {
            let index: HashMap<(&str, Kind, Zone), usize> = lines
                .upsert
                .iter()
                .enumerate()
                .map(|(i, l)| ((l.subscription.as_str(), l.kind, l.zone), i))
                .collect();
            let mut stored = sqlx::query(
                "SELECT subscription, kind, roaming_zone, cdr_count, voice_seconds, data_bytes, messages,
                        provider_cost_micros, rated_cost_micros, unrated_count
                 FROM totals_line WHERE customer_id = $1 AND cycle = $2",
            )
            .bind(self.customer_id)
            .bind(self.cycle)
            .fetch(&mut *self.tx);
            while let Some(row) = stored.try_next().await? {
                let subscription: &str = row.try_get("subscription")?;
                let kind: &str = row.try_get("kind")?;
                let zone: &str = row.try_get("roaming_zone")?;
                let known = parse_kind(kind.as_bytes()).zip(parse_zone(zone.as_bytes()));
                let at = known.and_then(|(k, z)| index.get(&(subscription, k, z)));
                match at {
                    Some(&i) => {
                        let sums = Sums {
                            cdr_count: row.try_get("cdr_count")?,
                            voice_seconds: row.try_get("voice_seconds")?,
                            data_bytes: row.try_get("data_bytes")?,
                            messages: row.try_get("messages")?,
                            provider_cost_micros: row.try_get("provider_cost_micros")?,
                            rated_cost_micros: row.try_get("rated_cost_micros")?,
                            unrated_count: row.try_get("unrated_count")?,
                        };
                        unchanged[i] = sums == lines.upsert[i].sums;
                    }
                    None => stale.push((subscription.into(), kind.into(), zone.into())),
                }
            }
        }
        if !stale.is_empty() {
            sqlx::query(
                "DELETE FROM totals_line t USING UNNEST($3::text[], $4::text[], $5::text[]) AS d(s, k, z)
                 WHERE t.customer_id = $1 AND t.cycle = $2 AND t.subscription = d.s AND t.kind = d.k
                   AND t.roaming_zone = d.z",
            )
            .bind(self.customer_id)
            .bind(self.cycle)
            .bind(stale.iter().map(|d| d.0.as_str()).collect::<Vec<_>>())
            .bind(stale.iter().map(|d| d.1.as_str()).collect::<Vec<_>>())
            .bind(stale.iter().map(|d| d.2.as_str()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        let changed: Vec<&Line> = lines
            .upsert
            .iter()
            .zip(&unchanged)
            .filter(|(_, same)| !**same)
            .map(|(line, _)| line)
            .collect();
        // In slices: the bound arrays of every line of a large cycle at once
        // were the calculation's peak of memory.
        for up in changed.chunks(LINES_PER_STATEMENT) {
            let column = |f: fn(&Sums) -> i64| up.iter().map(|l| f(&l.sums)).collect::<Vec<i64>>();
            sqlx::query(
                "INSERT INTO totals_line (customer_id, cycle, subscription, kind, roaming_zone, cdr_count, voice_seconds,
                                          data_bytes, messages, provider_cost_micros, rated_cost_micros, unrated_count)
                 SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[],
                                              $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])
                 ON CONFLICT (customer_id, cycle, subscription, kind, roaming_zone) DO UPDATE SET
                     cdr_count = EXCLUDED.cdr_count, voice_seconds = EXCLUDED.voice_seconds,
                     data_bytes = EXCLUDED.data_bytes, messages = EXCLUDED.messages,
                     provider_cost_micros = EXCLUDED.provider_cost_micros,
                     rated_cost_micros = EXCLUDED.rated_cost_micros, unrated_count = EXCLUDED.unrated_count",
            )
            .bind(self.customer_id)
            .bind(self.cycle)
            .bind(up.iter().map(|l| l.subscription.as_str()).collect::<Vec<_>>())
            .bind(up.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>())
            .bind(up.iter().map(|l| l.zone.as_str()).collect::<Vec<_>>())
            .bind(column(|s| s.cdr_count))
            .bind(column(|s| s.voice_seconds))
            .bind(column(|s| s.data_bytes))
            .bind(column(|s| s.messages))
            .bind(column(|s| s.provider_cost_micros))
            .bind(column(|s| s.rated_cost_micros))
            .bind(column(|s| s.unrated_count))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn write_settings(
        &mut self,
        settings: &CycleSettings,
        cdr_count: u64,
        restarted_at: Option<DateTime<Utc>>,
        cdrs_read: u64,
        by: Option<&str>,
    ) -> Result<(), TotalsError> {
        sqlx::query(
            "INSERT INTO cycle_state (customer_id, cycle, method, rate_plan_id, plan, time_zone, start_day, cdr_count,
                                      calculations, restarted_at, cdrs_read, calculated_at, calculated_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, now(), $11)
             ON CONFLICT (customer_id, cycle) DO UPDATE SET
                 method = EXCLUDED.method, rate_plan_id = EXCLUDED.rate_plan_id, plan = EXCLUDED.plan,
                 time_zone = EXCLUDED.time_zone, start_day = EXCLUDED.start_day, cdr_count = EXCLUDED.cdr_count,
                 calculations = cycle_state.calculations + 1, restarted_at = EXCLUDED.restarted_at,
                 cdrs_read = EXCLUDED.cdrs_read, calculated_at = EXCLUDED.calculated_at,
                 calculated_by = EXCLUDED.calculated_by",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(settings.method.as_str())
        .bind(&settings.rate_plan_id)
        .bind(&settings.plan)
        .bind(&settings.time_zone)
        .bind(i16::try_from(settings.start_day).unwrap_or(1))
        .bind(i64::try_from(cdr_count).unwrap_or(i64::MAX))
        .bind(restarted_at)
        .bind(i64::try_from(cdrs_read).unwrap_or(i64::MAX))
        .bind(by)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn consume(&mut self, changes: &[PendingChange]) -> Result<(), TotalsError> {
        if changes.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM cycle_change WHERE id = ANY($1)")
            .bind(changes.iter().map(|c| c.id).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

/// A page of whole instants. The rows come in `started_at` order straight
/// from the `(customer_id, started_at)` index, with no sort on the server
/// (a third of the read at 10M CDRs); ties are put in consumption order
/// here. A page that stops at its limit gives its last instant back to the
/// next page, which begins after the last instant this one kept, so no
/// instant is ever split and the key of a page is its last `started_at`.
pub(crate) async fn copy_page(
    conn: &mut PgConnection,
    customer_id: i64,
    from: DateTime<Utc>,
    end: DateTime<Utc>,
    after: Option<&CdrKey>,
    limit: usize,
    page: &mut CdrPage,
) -> Result<(), TotalsError> {
    // COPY takes no parameters: the values are integers and timestamps we
    // format ourselves.
    let lower = match after {
        None => format!("started_at >= {}", timestamp(from)),
        Some(key) => format!("started_at > {}", timestamp(instant_of(key.started_at)?)),
    };
    page.clear();
    copy_rows(
        conn,
        &format!(
            "customer_id = {customer_id} AND {lower} AND started_at < {}
             ORDER BY started_at LIMIT {limit}",
            timestamp(end)
        ),
        page,
    )
    .await?;
    if page.rows.len() >= limit {
        page.more = true;
        if !page.drop_last_instant() {
            // One instant holds `limit` CDRs or more: the page is all of it.
            let at = instant_of(page.rows[0].started_at)?;
            page.clear();
            page.more = true;
            copy_rows(
                conn,
                &format!(
                    "customer_id = {customer_id} AND started_at = {}",
                    timestamp(at)
                ),
                page,
            )
            .await?;
        }
    }
    page.order_ties();
    Ok(())
}

fn instant_of(micros: i64) -> Result<DateTime<Utc>, TotalsError> {
    Utc.timestamp_micros(micros)
        .single()
        .ok_or_else(|| TotalsError::Read("a CDR's start is out of range".into()))
}

/// Appends the CDRs `condition` selects (a `WHERE` clause and its order),
/// read with binary COPY.
async fn copy_rows(
    conn: &mut PgConnection,
    condition: &str,
    page: &mut CdrPage,
) -> Result<(), TotalsError> {
    let sql = format!(
        "COPY (SELECT id, started_at, provider, external_id, subscription, kind, roaming_zone, destination,
                      duration_seconds, volume_bytes, units, provider_cost_micros
               FROM call_detail_record WHERE {condition})
         TO STDOUT (FORMAT binary)"
    );
    let mut decoder = BinaryRows::default();
    let mut stream = conn.copy_out_raw(&sql).await?;
    while let Some(chunk) = stream.try_next().await? {
        decoder.feed(chunk, page)?;
    }
    drop(stream);
    decoder.finish()?;
    Ok(())
}

/// Slices read ahead at most at once, each on a connection of its own.
const READERS: usize = 2;

/// The CDRs a slice aims at, as a share of a page: a little under one page,
/// so that a slice is usually read by one query.
const SLICE_SHARE: f64 = 0.8;

/// The shortest slice: CDRs start on whole seconds in practice, and a
/// dense second is read in pages anyway.
const MIN_SLICE_MICROS: i64 = 1_000_000;

/// The rest of a cycle's reading, cut into time slices: each slice is read
/// in index order, in pages of whole instants, on a connection borrowed from
/// the pool for that slice only, in the calculation's snapshot; several
/// slices are read at once and handed to the rating in order. Slices are
/// cut as they are dispatched, to hold about [`SLICE_SHARE`] of a page at
/// the density of the CDRs read so far. A slice for which no connection was
/// free, or whose reader failed, is read on the calculation's own
/// transaction, as is the first page (which gives the density).
struct Slices {
    from: DateTime<Utc>,
    limit: usize,
    /// Dispatched and not yet handed over, in consumption order.
    queue: VecDeque<Slice>,
    /// Where the next slice begins (microseconds since the Unix epoch):
    /// every CDR before it is in a slice of `queue` or handed over.
    next: i64,
    /// The next slice's length in microseconds, once a page was read.
    width: Option<i64>,
    /// The key of the last page handed over: the calculation asks for the
    /// page after it.
    expect: Option<CdrKey>,
    /// Readers dispatched that have no connection yet.
    acquiring: Arc<AtomicUsize>,
}

struct Slice {
    /// `[from, to)`, microseconds since the Unix epoch.
    from: i64,
    to: i64,
    /// Its last instant handed over, where the rest of it starts.
    after: Option<CdrKey>,
    rows: u64,
    /// `None`: read on the calculation's own transaction.
    reader: Option<SliceReader>,
}

enum SliceMessage {
    Page(CdrPage),
    /// Every CDR of the slice was sent.
    Done,
    Failed(TotalsError),
}

struct SliceReader {
    pages: mpsc::Receiver<SliceMessage>,
    task: JoinHandle<()>,
}

impl Drop for SliceReader {
    fn drop(&mut self) {
        // Its connection goes back to the pool, its transaction rolled back.
        self.task.abort();
    }
}

impl Slices {
    fn new(from: DateTime<Utc>, next: i64, limit: usize) -> Self {
        Slices {
            from,
            limit,
            queue: VecDeque::new(),
            next,
            width: None,
            expect: None,
            acquiring: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn target(&self) -> f64 {
        (self.limit as f64 * SLICE_SHARE).max(1.0)
    }

    /// A page counted on the calculation's own transaction from `next`: the
    /// dispatched slices now end after it.
    fn learn_from_page(&mut self, page: &CdrPage, end: i64) {
        let (Some(first), Some(last)) = (page.rows.first(), page.rows.last()) else {
            self.next = end;
            return;
        };
        self.next = if page.more {
            last.started_at.saturating_add(1)
        } else {
            end
        };
        let span = (last.started_at - first.started_at).max(1) as f64;
        let width = span * self.target() / page.rows.len() as f64;
        self.width = Some((width as i64).max(MIN_SLICE_MICROS));
    }

    /// A slice read whole: the next ones are cut to its density.
    fn learn_from_slice(&mut self, slice: &Slice) {
        let Some(width) = self.width else { return };
        let length = (slice.to - slice.from).max(1) as f64;
        let wanted = match slice.rows {
            0 => width as f64 * 2.0,
            rows => length * self.target() / rows as f64,
        };
        let wanted = wanted.clamp(width as f64 / 4.0, width as f64 * 4.0);
        self.width = Some((wanted as i64).max(MIN_SLICE_MICROS));
    }

    fn reading(&self) -> usize {
        self.queue.iter().filter(|s| s.reader.is_some()).count()
    }
}

/// Reads one slice in pages on a connection borrowed for it alone.
async fn read_slice(
    pool: PgPool,
    snapshot: String,
    customer_id: i64,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    limit: usize,
    acquiring: Arc<AtomicUsize>,
    pages: mpsc::Sender<SliceMessage>,
) {
    let connected = tokio::time::timeout(
        READER_WAIT,
        pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
    )
    .await;
    acquiring.fetch_sub(1, Ordering::SeqCst);
    let result = async {
        let mut reader = connected.map_err(|_| sqlx::Error::PoolTimedOut)??;
        sqlx::query(&format!("SET TRANSACTION SNAPSHOT {}", literal(&snapshot)))
            .execute(&mut *reader)
            .await?;
        // A slice bounded in time is estimated at fewer rows than the page
        // limit, and the planner then reads it with a bitmap heap scan and a
        // sort, where the index alone gives the order (the slices lost to
        // the read-ahead at 1M that way). Only this reader's transaction.
        sqlx::query("SET LOCAL enable_bitmapscan = off")
            .execute(&mut *reader)
            .await?;
        let mut after: Option<CdrKey> = None;
        let mut reader = Some(reader);
        while let Some(conn) = reader.as_mut() {
            let mut page = CdrPage::default();
            copy_page(
                conn,
                customer_id,
                from,
                to,
                after.as_ref(),
                limit,
                &mut page,
            )
            .await?;
            after = page.last_key();
            if !page.more {
                // Back to the pool before the page waits for the rating.
                if let Some(done) = reader.take() {
                    done.commit().await?;
                }
            }
            if !page.rows.is_empty() && pages.send(SliceMessage::Page(page)).await.is_err() {
                // The calculation no longer wants it.
                return Ok(());
            }
        }
        Ok::<(), TotalsError>(())
    }
    .await;
    let last = match result {
        Ok(()) => SliceMessage::Done,
        Err(e) => SliceMessage::Failed(e),
    };
    let _ = pages.send(last).await;
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

impl PgCycleStore {
    /// Dispatches slices after the last one while fewer than [`READERS`]
    /// are being read and the pool has a connection to lend.
    async fn dispatch(&mut self, end: i64) -> Result<(), TotalsError> {
        loop {
            let Some(slices) = self.slices.as_ref() else {
                return Ok(());
            };
            let Some(width) = slices.width else {
                return Ok(());
            };
            let acquiring = slices.acquiring.load(Ordering::SeqCst);
            if slices.next >= end
                || slices.reading() >= READERS
                || crate::adapters::postgres::spare_connections(&self.pool, acquiring) == 0
            {
                return Ok(());
            }
            let snapshot = self.exported_snapshot().await?;
            let slices = self.slices.as_mut().expect("present above");
            let from = slices.next;
            let to = from.saturating_add(width).min(end);
            slices.next = to;
            slices.acquiring.fetch_add(1, Ordering::SeqCst);
            let (sender, receiver) = mpsc::channel(1);
            let task = tokio::spawn(read_slice(
                self.pool.clone(),
                snapshot,
                self.customer_id,
                (instant_of(from)?, instant_of(to)?),
                slices.limit,
                slices.acquiring.clone(),
                sender,
            ));
            slices.queue.push_back(Slice {
                from,
                to,
                after: None,
                rows: 0,
                reader: Some(SliceReader {
                    pages: receiver,
                    task,
                }),
            });
        }
    }

    async fn exported_snapshot(&mut self) -> Result<String, TotalsError> {
        if let Some(snapshot) = &self.snapshot {
            return Ok(snapshot.clone());
        }
        let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut *self.tx)
            .await?;
        self.snapshot = Some(snapshot.clone());
        Ok(snapshot)
    }

    fn end(&self) -> Result<DateTime<Utc>, TotalsError> {
        self.end
            .ok_or_else(|| TotalsError::Read("the customer was not read before the cycle".into()))
    }
}

pub(crate) fn parse_kind(s: &[u8]) -> Option<Kind> {
    Some(match s {
        b"voice" => Kind::Voice,
        b"sms" => Kind::Sms,
        b"mms" => Kind::Mms,
        b"data" => Kind::Data,
        b"service" => Kind::Service,
        _ => return None,
    })
}

pub(crate) fn parse_zone(s: &[u8]) -> Option<Zone> {
    Some(match s {
        b"home" => Zone::Home,
        b"eu" => Zone::Eu,
        b"world" => Zone::World,
        _ => return None,
    })
}

/// Columns read per CDR.
const FIELDS: i16 = 12;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Decoder of PostgreSQL's binary COPY format for [`READ_COLUMNS`]. The
/// server sends a row per message; a row split over messages is buffered.
#[derive(Default)]
struct BinaryRows {
    pending: Vec<u8>,
    header_seen: bool,
    trailer_seen: bool,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A cursor over one buffer; `None` means "the buffer ends here".
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What decoding one row found.
// A row's field offsets stay on the stack; boxing them would allocate once
// per CDR.
#[allow(clippy::large_enum_variant)]
enum Step {
    Row(RawRow),
    Trailer,
    /// The buffer ends inside the row: wait for more.
    Incomplete,
}

/// One row's fields, borrowed from the buffer as byte ranges.
struct RawRow {
    fields: [(usize, usize); FIELDS as usize],
}

impl BinaryRows {
    fn feed(&mut self, chunk: Bytes, out: &mut CdrPage) -> Result<(), TotalsError> {
        if self.pending.is_empty() {
            let used = self.decode(&chunk, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(&chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.decode(&pending, out)?;
            self.pending = pending;
            self.pending.drain(..used);
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), TotalsError> {
        if !self.trailer_seen || !self.pending.is_empty() {
            return Err(TotalsError::Read(
                "the COPY stream ended before its trailer".into(),
            ));
        }
        Ok(())
    }

    /// Decodes every complete row of `bytes`; returns how many bytes it used.
    fn decode(&mut self, bytes: &[u8], out: &mut CdrPage) -> Result<usize, TotalsError> {
        let mut used = 0;
        if !self.header_seen {
            let mut cursor = Cursor { bytes, at: 0 };
            let (Some(signature), Some(_flags), Some(extension)) =
                (cursor.take(SIGNATURE.len()), cursor.i32(), cursor.i32())
            else {
                return Ok(0);
            };
            if signature != SIGNATURE {
                return Err(TotalsError::Read("not a binary COPY stream".into()));
            }
            let Some(_) = cursor.take(usize::try_from(extension).unwrap_or(usize::MAX)) else {
                return Ok(0);
            };
            self.header_seen = true;
            used = cursor.at;
        }
        loop {
            if self.trailer_seen {
                if used < bytes.len() {
                    return Err(TotalsError::Read("data after the COPY trailer".into()));
                }
                return Ok(used);
            }
            let mut cursor = Cursor { bytes, at: used };
            match Self::row(&mut cursor)? {
                Step::Incomplete => return Ok(used),
                Step::Trailer => self.trailer_seen = true,
                Step::Row(raw) => push_row(out, bytes, &raw)?,
            }
            used = cursor.at;
        }
    }

    fn row(cursor: &mut Cursor<'_>) -> Result<Step, TotalsError> {
        let Some(count) = cursor.i16() else {
            return Ok(Step::Incomplete);
        };
        if count == -1 {
            return Ok(Step::Trailer);
        }
        if count != FIELDS {
            return Err(TotalsError::Read(format!(
                "a row has {count} fields, expected {FIELDS}"
            )));
        }
        let mut fields = [(0, 0); FIELDS as usize];
        for field in &mut fields {
            let Some(len) = cursor.i32() else {
                return Ok(Step::Incomplete);
            };
            // Every column read is NOT NULL, so -1 (NULL) is refused too.
            let len = usize::try_from(len)
                .map_err(|_| TotalsError::Read("a NOT NULL column came back NULL".into()))?;
            let start = cursor.at;
            if cursor.take(len).is_none() {
                return Ok(Step::Incomplete);
            }
            *field = (start, len);
        }
        Ok(Step::Row(RawRow { fields }))
    }
}

fn int<const N: usize>(bytes: &[u8], (start, len): (usize, usize)) -> Option<[u8; N]> {
    if len != N {
        return None;
    }
    bytes.get(start..start + N)?.try_into().ok()
}

fn push_row(out: &mut CdrPage, bytes: &[u8], raw: &RawRow) -> Result<(), TotalsError> {
    let f = &raw.fields;
    let text = |i: usize| &bytes[f[i].0..f[i].0 + f[i].1];
    let bad =
        |what: &str| TotalsError::Read(format!("column {what} has an unexpected binary form"));
    let id = i64::from_be_bytes(int::<8>(bytes, f[0]).ok_or_else(|| bad("id"))?);
    let problem = |problem: String| TotalsError::BadCdr { id, problem };
    let started_at = i64::from_be_bytes(int::<8>(bytes, f[1]).ok_or_else(|| bad("started_at"))?)
        .saturating_add(PG_EPOCH_MICROS);
    let kind = parse_kind(text(5)).ok_or_else(|| {
        problem(format!(
            "kind '{}' is not voice, sms, mms, data or service",
            String::from_utf8_lossy(text(5))
        ))
    })?;
    let zone = parse_zone(text(6)).ok_or_else(|| {
        problem(format!(
            "roaming zone '{}' is not home, eu or world",
            String::from_utf8_lossy(text(6))
        ))
    })?;
    let duration =
        i32::from_be_bytes(int::<4>(bytes, f[8]).ok_or_else(|| bad("duration_seconds"))?);
    let volume = i64::from_be_bytes(int::<8>(bytes, f[9]).ok_or_else(|| bad("volume_bytes"))?);
    let units = i32::from_be_bytes(int::<4>(bytes, f[10]).ok_or_else(|| bad("units"))?);
    let cost =
        i64::from_be_bytes(int::<8>(bytes, f[11]).ok_or_else(|| bad("provider_cost_micros"))?);
    let negative = |what: &str, value: i64| problem(format!("{what} is negative ({value})"));
    let row = PageRow {
        id,
        started_at,
        provider: out.span(text(2)),
        external_id: out.span(text(3)),
        subscription: out.span(text(4)),
        kind,
        zone,
        destination: out.span(text(7)),
        duration_seconds: u32::try_from(duration)
            .map_err(|_| negative("duration_seconds", duration.into()))?,
        volume_bytes: u64::try_from(volume).map_err(|_| negative("volume_bytes", volume))?,
        units: u32::try_from(units).map_err(|_| negative("units", units.into()))?,
        provider_cost_micros: cost,
    };
    out.rows.push(row);
    Ok(())
}
