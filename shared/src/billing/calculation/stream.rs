//! Rating a cycle's CDRs as they are read, page by page in consumption
//! order, into line sums and bundle use ([`RatingState`]), per-CDR pricings
//! in chunks of at most `pricings::CHUNK`, and a checkpoint at each local
//! midnight the CDRs cross. What it hands back to write is bounded by one
//! page.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::billing::calculation::segment_starts;
use crate::billing::calculation::state::{RatingState, Sums};
use crate::billing::pricings::{PricingChunk, Split, CHUNK};
use crate::billing::rating::{Prepared, RatePlan, Rater, Usage};
use crate::billing::totals::TotalsError;
use crate::cdr::cycle_bounds;
use crate::cdr::{Kind, Zone};

/// CDRs per page read.
pub const PAGE: usize = 20_000;

/// A byte range of [`CdrPage::text`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// One CDR as rating needs it.
#[derive(Debug, Clone, Copy)]
pub struct PageRow {
    pub id: i64,
    /// Microseconds since the Unix epoch: only ever compared.
    pub started_at: i64,
    pub provider: Span,
    pub external_id: Span,
    pub subscription: Span,
    pub kind: Kind,
    pub zone: Zone,
    pub destination: Span,
    pub duration_seconds: u32,
    pub volume_bytes: u64,
    pub units: u32,
    pub provider_cost_micros: i64,
}

/// A page of CDRs in consumption order; the strings live in one buffer.
#[derive(Debug, Default)]
pub struct CdrPage {
    pub rows: Vec<PageRow>,
    pub text: Vec<u8>,
    /// Whether CDRs follow this page (its reader stopped at its limit).
    pub more: bool,
}

impl CdrPage {
    pub fn clear(&mut self) {
        self.rows.clear();
        self.text.clear();
        self.more = false;
    }

    /// Puts rows that arrived in `started_at` order into consumption order:
    /// CDRs of the same instant by provider, then external id, compared as
    /// bytes (PostgreSQL's `COLLATE "C"`).
    pub fn order_ties(&mut self) {
        let text = &self.text;
        let bytes = |span: Span| &text[span.start as usize..(span.start + span.len) as usize];
        let consumption = |a: &PageRow, b: &PageRow| {
            bytes(a.provider)
                .cmp(bytes(b.provider))
                .then_with(|| bytes(a.external_id).cmp(bytes(b.external_id)))
        };
        // The rows come in `started_at` order, so only the CDRs of each
        // instant need sorting: sorting the whole page broke its runs at
        // every tie and cost a sixth of a 10M calculation's CPU.
        if !self.rows.is_sorted_by_key(|r| r.started_at) {
            self.rows.sort_by(|a, b| {
                a.started_at
                    .cmp(&b.started_at)
                    .then_with(|| consumption(a, b))
            });
            return;
        }
        for instant in self
            .rows
            .chunk_by_mut(|a, b| a.started_at == b.started_at)
            .filter(|instant| instant.len() > 1)
        {
            instant.sort_by(consumption);
        }
    }

    /// Drops the CDRs of the page's last instant, so that the next page
    /// begins with them; `false` (nothing dropped) when the page holds a
    /// single instant.
    pub fn drop_last_instant(&mut self) -> bool {
        let Some(last) = self.rows.last().map(|r| r.started_at) else {
            return false;
        };
        let keep = self.rows.partition_point(|r| r.started_at < last);
        if keep == 0 {
            return false;
        }
        self.rows.truncate(keep);
        true
    }

    pub fn span(&mut self, bytes: &[u8]) -> Span {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(bytes);
        Span {
            start,
            len: bytes.len() as u32,
        }
    }

    pub fn text(&self, span: Span) -> &[u8] {
        &self.text[span.start as usize..(span.start + span.len) as usize]
    }

    /// Where the next page starts: after this page's last instant (a page
    /// holds whole instants).
    pub fn last_key(&self) -> Option<CdrKey> {
        let row = self.rows.last()?;
        Some(CdrKey {
            started_at: row.started_at,
        })
    }
}

/// The end of a page in consumption order: its last instant, all of whose
/// CDRs the page held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdrKey {
    /// Microseconds since the Unix epoch.
    pub started_at: i64,
}

/// What a calculation writes as it goes.
pub enum Output {
    Chunk {
        segment: DateTime<Utc>,
        seq: i32,
        first_position: u64,
        chunk: PricingChunk,
    },
    Checkpoint {
        at: DateTime<Utc>,
        state: RatingState,
    },
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn instant(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

fn index_i32(index: Option<usize>) -> i32 {
    index.and_then(|i| i32::try_from(i).ok()).unwrap_or(-1)
}

fn quantity_i64(quantity: u64) -> i64 {
    i64::try_from(quantity).unwrap_or(i64::MAX)
}

/// One calculation's rating, from the cycle's start or a checkpoint.
pub struct Run<'p> {
    customer_id: i64,
    rater: Option<Rater<'p>>,
    state: RatingState,
    /// Segment starts after the one being rated, as microseconds.
    boundaries: Vec<i64>,
    next: usize,
    from: DateTime<Utc>,
    segment: DateTime<Utc>,
    seq: i32,
    chunk: PricingChunk,
    chunk_first: u64,
    cdrs_read: u64,
    rate_seconds: f64,
    /// CDRs in the segment being rated, and lines that count a CDR: a
    /// midnight becomes a checkpoint only once the segment holds at least as
    /// many CDRs as a checkpoint holds lines, so that a checkpoint never
    /// costs more to write than the reading it saves.
    segment_cdrs: u64,
    used_lines: u64,
    /// The latest `started_at` rated (microseconds), for the checkpoint
    /// after the last CDR.
    last_started_at: Option<i64>,
}

impl<'p> Run<'p> {
    pub fn new(
        plan: Option<&'p RatePlan>,
        cycle: NaiveDate,
        zone: Tz,
        resume: Option<(DateTime<Utc>, RatingState)>,
        customer_id: i64,
    ) -> Self {
        let (start, _) = cycle_bounds(cycle, zone);
        let (from, mut state) = resume.unwrap_or((start, RatingState::default()));
        let rater = plan.map(|plan| Rater::resume(plan, std::mem::take(&mut state.spent)));
        let boundaries: Vec<i64> = segment_starts(cycle, zone)
            .into_iter()
            .filter(|b| *b > from)
            .map(micros)
            .collect();
        Run {
            customer_id,
            rater,
            chunk_first: state.cdr_count,
            state,
            boundaries,
            next: 0,
            from,
            segment: from,
            seq: 0,
            chunk: PricingChunk::default(),
            cdrs_read: 0,
            rate_seconds: 0.0,
            segment_cdrs: 0,
            used_lines: 0,
            last_started_at: None,
        }
        .counting_lines()
    }

    fn counting_lines(mut self) -> Self {
        self.used_lines = self.state.lines.iter().filter(|l| l.cdr_count != 0).count() as u64;
        self
    }

    /// Where reading starts.
    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    pub fn cdrs_read(&self) -> u64 {
        self.cdrs_read
    }

    pub fn rate_seconds(&self) -> f64 {
        self.rate_seconds
    }

    /// The state after everything rated so far (after [`Run::finish`]: the
    /// cycle's final state).
    pub fn state(&self) -> &RatingState {
        &self.state
    }

    fn snapshot(&self) -> RatingState {
        let mut state = self.state.clone();
        if let Some(rater) = &self.rater {
            state.spent = rater.spent().to_vec();
        }
        state
    }

    fn flush_chunk(&mut self, outputs: &mut Vec<Output>) {
        if self.chunk.is_empty() {
            return;
        }
        let chunk = std::mem::take(&mut self.chunk);
        let first_position = self.chunk_first;
        self.chunk_first += chunk.len() as u64;
        outputs.push(Output::Chunk {
            segment: self.segment,
            seq: self.seq,
            first_position,
            chunk,
        });
        self.seq += 1;
    }

    /// Ends the segment being rated when `started_at` lies past it: its
    /// pricings are written and a checkpoint taken at the new segment's
    /// start (the state before this CDR).
    fn cross(&mut self, started_at: i64, outputs: &mut Vec<Output>) {
        if self.next >= self.boundaries.len() || started_at < self.boundaries[self.next] {
            return;
        }
        while self.next < self.boundaries.len() && self.boundaries[self.next] <= started_at {
            self.next += 1;
        }
        if self.segment_cdrs < self.used_lines.max(1) {
            return;
        }
        self.segment_cdrs = 0;
        self.flush_chunk(outputs);
        self.segment = instant(self.boundaries[self.next - 1]);
        self.seq = 0;
        outputs.push(Output::Checkpoint {
            at: self.segment,
            state: self.snapshot(),
        });
    }

    /// Rates one page of CDRs (the rate-plan method).
    pub fn rate_page(&mut self, page: &CdrPage) -> Result<Vec<Output>, TotalsError> {
        let started = std::time::Instant::now();
        let mut outputs = Vec::new();
        let mut numbers = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            let number = self
                .state
                .subscriptions
                .number(page.text(row.subscription))
                .map_err(|problem| TotalsError::BadCdr {
                    id: row.id,
                    problem,
                })?;
            numbers.push(number);
        }
        let usage = |row: &PageRow, number: u32| Usage {
            subscription: number as usize,
            kind: row.kind,
            zone: row.zone,
            destination: page.text(row.destination),
            duration_seconds: row.duration_seconds,
            volume_bytes: row.volume_bytes,
            units: row.units,
            provider_cost_micros: row.provider_cost_micros,
        };
        let Some(mut rater) = self.rater.take() else {
            return Err(TotalsError::Read(format!(
                "customer {} has no rate plan to rate with",
                self.customer_id
            )));
        };
        // Finding each CDR's rate does not depend on the others: done on two
        // threads, it takes about half the rating off the one walk in
        // consumption order that bundles need.
        let prepared: Vec<Prepared> = {
            let rater = &rater;
            let rows: Vec<(&PageRow, u32)> =
                page.rows.iter().zip(numbers.iter().copied()).collect();
            let prepare = |part: &[(&PageRow, u32)]| -> Vec<Prepared> {
                part.iter()
                    .map(|(row, n)| rater.prepare(&usage(row, *n)))
                    .collect()
            };
            let (first, second) = rows.split_at(rows.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| prepare(second));
                let mut all = prepare(first);
                all.extend(other.join().unwrap_or_else(|_| prepare(second)));
                all
            })
        };
        for ((row, &number), prepared) in page.rows.iter().zip(&numbers).zip(prepared) {
            if self.next < self.boundaries.len() && row.started_at >= self.boundaries[self.next] {
                self.rater = Some(rater);
                self.cross(row.started_at, &mut outputs);
                rater = self.rater.take().expect("just put back");
            }
            let pricing = rater.rate_prepared(&usage(row, number), prepared);
            let chunk = &mut self.chunk;
            let index = chunk.pricings.len() as u32;
            chunk.pricings.cdr_id.push(row.id);
            chunk
                .pricings
                .rated_cost_micros
                .push(pricing.rated_cost_micros);
            chunk.pricings.rate.push(index_i32(pricing.rate));
            chunk.pricings.bundle.push(index_i32(pricing.bundle));
            chunk
                .pricings
                .billed_quantity
                .push(quantity_i64(pricing.billed_quantity));
            chunk
                .pricings
                .covered_quantity
                .push(quantity_i64(pricing.covered_quantity));
            let shares = rater.shares();
            if shares.iter().filter(|s| s.covered > 0).count() > 1 {
                for share in shares.iter().filter(|s| s.covered > 0) {
                    chunk.splits.push(Split {
                        index,
                        bundle: index_i32(Some(share.bundle)),
                        covered: quantity_i64(share.covered),
                    });
                }
            }
            let line = self.state.line(number, row.kind, row.zone);
            if line.cdr_count == 0 {
                self.used_lines += 1;
            }
            line.cdr_count += 1;
            match row.kind {
                Kind::Voice => line.voice_seconds += i64::from(row.duration_seconds),
                Kind::Data => line.data_bytes += quantity_i64(row.volume_bytes),
                Kind::Sms | Kind::Mms => line.messages += i64::from(row.units),
                Kind::Service => {}
            }
            line.provider_cost_micros += row.provider_cost_micros;
            line.rated_cost_micros += pricing.rated_cost_micros;
            line.unrated_count += i64::from(pricing.unrated);
            self.state.cdr_count += 1;
            self.cdrs_read += 1;
            self.segment_cdrs += 1;
            self.last_started_at = Some(row.started_at);
            if self.chunk.len() >= CHUNK {
                self.flush_chunk(&mut outputs);
            }
        }
        self.rater = Some(rater);
        self.rate_seconds += started.elapsed().as_secs_f64();
        Ok(outputs)
    }

    /// Adds the standard method's sums of the CDRs from the restart on
    /// (`last` is the latest `started_at` among them).
    pub fn add_groups(
        &mut self,
        groups: Vec<(String, Kind, Zone, Sums)>,
        last: Option<DateTime<Utc>>,
    ) -> Result<(), TotalsError> {
        for (subscription, kind, zone, sums) in groups {
            let number = self
                .state
                .subscriptions
                .number(subscription.as_bytes())
                .map_err(TotalsError::Read)?;
            self.state.line(number, kind, zone).add(&sums);
            let count = u64::try_from(sums.cdr_count).unwrap_or(0);
            self.state.cdr_count += count;
            self.cdrs_read += count;
        }
        self.last_started_at = last.map(micros);
        Ok(())
    }

    /// Writes what is left and the final state, once: as the checkpoint
    /// right after the last CDR, where the next calculation restarts when
    /// the next import only adds later CDRs (the daily case), or at `end`
    /// when there is no such place. It is the cycle's latest checkpoint
    /// either way.
    pub fn finish(&mut self, end: DateTime<Utc>) -> Vec<Output> {
        let mut outputs = Vec::new();
        self.flush_chunk(&mut outputs);
        let state = self.snapshot();
        self.state = state.clone();
        let at = self
            .last_started_at
            .map(|last| instant(last.saturating_add(1)))
            .filter(|after| *after > self.segment && *after < end)
            .unwrap_or(end);
        outputs.push(Output::Checkpoint { at, state });
        outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(rows: &[(i64, &str, &str)]) -> CdrPage {
        let mut page = CdrPage::default();
        for (i, (started_at, provider, external_id)) in rows.iter().enumerate() {
            let provider = page.span(provider.as_bytes());
            let external_id = page.span(external_id.as_bytes());
            let empty = page.span(b"");
            page.rows.push(PageRow {
                id: i as i64,
                started_at: *started_at,
                provider,
                external_id,
                subscription: empty,
                kind: Kind::Voice,
                zone: Zone::Home,
                destination: empty,
                duration_seconds: 0,
                volume_bytes: 0,
                units: 0,
                provider_cost_micros: 0,
            });
        }
        page
    }

    fn order(page: &CdrPage) -> Vec<i64> {
        page.rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn the_cdrs_of_each_instant_are_put_in_provider_then_external_id_order_as_bytes() {
        let mut rows = page(&[
            (1, "routit", "b"),
            (2, "vodafone", "a"),
            (2, "kpn", "z"),
            (2, "kpn", "Z"),
            (3, "routit", "a"),
            (4, "routit", "b"),
            (4, "routit", "a"),
        ]);
        rows.order_ties();
        // "Z" (0x5a) sorts before "z" (0x7a), as under COLLATE "C".
        assert_eq!(order(&rows), vec![0, 3, 2, 1, 4, 6, 5]);
    }

    #[test]
    fn rows_out_of_started_at_order_are_sorted_whole() {
        let mut rows = page(&[(3, "routit", "a"), (1, "routit", "b"), (1, "routit", "a")]);
        rows.order_ties();
        assert_eq!(order(&rows), vec![2, 1, 0]);
    }
}
