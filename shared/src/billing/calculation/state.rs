//! The rating state of a cycle at one point of consumption order: line sums
//! per subscription, kind and zone, bundle use per subscription and pool,
//! and the CDRs counted so far. It is all a calculation keeps in memory
//! (its size grows with subscriptions, never with CDRs), and what a
//! checkpoint stores, so rating can restart there.

use std::collections::HashMap;

use crate::billing::encoding::{put_bytes, put_varint, seal, unseal, zigzag, Reader};
use crate::cdr::{Kind, Zone};

pub(crate) const KINDS: [Kind; 5] = [Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data, Kind::Service];
pub(crate) const ZONES: [Zone; 3] = [Zone::Home, Zone::Eu, Zone::World];
/// Lines per subscription: one per kind and zone.
pub(crate) const SLOTS: usize = KINDS.len() * ZONES.len();

const TAG: &[u8; 8] = b"TEMCKP01";

pub(crate) fn slot(kind: Kind, zone: Zone) -> usize {
    let k = match kind {
        Kind::Voice => 0,
        Kind::Sms => 1,
        Kind::Mms => 2,
        Kind::Data => 3,
        Kind::Service => 4,
    };
    let z = match zone {
        Zone::Home => 0,
        Zone::Eu => 1,
        Zone::World => 2,
    };
    k * ZONES.len() + z
}

/// The figures of one totals line (or of the totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub cdr_count: i64,
    pub voice_seconds: i64,
    pub data_bytes: i64,
    pub messages: i64,
    pub provider_cost_micros: i64,
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
}

impl Sums {
    pub fn add(&mut self, other: &Sums) {
        self.cdr_count += other.cdr_count;
        self.voice_seconds += other.voice_seconds;
        self.data_bytes += other.data_bytes;
        self.messages += other.messages;
        self.provider_cost_micros += other.provider_cost_micros;
        self.rated_cost_micros += other.rated_cost_micros;
        self.unrated_count += other.unrated_count;
    }

    fn values(&self) -> [i64; 7] {
        [
            self.cdr_count,
            self.voice_seconds,
            self.data_bytes,
            self.messages,
            self.provider_cost_micros,
            self.rated_cost_micros,
            self.unrated_count,
        ]
    }

    fn from_values(v: [i64; 7]) -> Self {
        Sums {
            cdr_count: v[0],
            voice_seconds: v[1],
            data_bytes: v[2],
            messages: v[3],
            provider_cost_micros: v[4],
            rated_cost_micros: v[5],
            unrated_count: v[6],
        }
    }
}

/// One totals line: subscription, kind, zone and its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub subscription: String,
    pub kind: Kind,
    pub zone: Zone,
    pub sums: Sums,
}

/// FNV-1a: a subscription is looked up once per CDR, and the default
/// SipHash costs more than the rest of decoding a row. The keys are our own
/// data, so flooding is no concern.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Subscriptions of the cycle numbered 0, 1, 2, ... in the order first met
/// (what per-subscription bundles and the line table index by).
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    names: Vec<String>,
    numbers: HashMap<Box<[u8]>, u32, std::hash::BuildHasherDefault<Fnv>>,
}

impl Subscriptions {
    pub fn number(&mut self, name: &[u8]) -> Result<u32, String> {
        if let Some(&n) = self.numbers.get(name) {
            return Ok(n);
        }
        let text = std::str::from_utf8(name)
            .map_err(|_| "its subscription is not UTF-8".to_string())?
            .to_string();
        let n = u32::try_from(self.names.len())
            .map_err(|_| "the cycle has more than 4 billion subscriptions".to_string())?;
        self.names.push(text);
        self.numbers.insert(name.into(), n);
        Ok(n)
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.numbers.get(name.as_bytes()).copied()
    }

    pub fn name(&self, number: u32) -> &str {
        &self.names[number as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Rating state after some prefix of the cycle's CDRs in consumption order.
#[derive(Debug, Clone, Default)]
pub struct RatingState {
    pub cdr_count: u64,
    pub subscriptions: Subscriptions,
    /// `SLOTS` lines per subscription number.
    pub lines: Vec<Sums>,
    /// Used allowance per bundle of the plan, per slot (0 when pooled, the
    /// subscription number otherwise); see `rating::Rater::spent`.
    pub spent: Vec<Vec<u64>>,
}

impl RatingState {
    /// The line of subscription `number`, growing the table as needed.
    pub fn line(&mut self, number: u32, kind: Kind, zone: Zone) -> &mut Sums {
        let at = number as usize * SLOTS + slot(kind, zone);
        if self.lines.len() <= at {
            self.lines
                .resize((number as usize + 1) * SLOTS, Sums::default());
        }
        &mut self.lines[at]
    }

    /// Lines that counted at least one CDR.
    pub fn lines(&self) -> Vec<Line> {
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, sums)| sums.cdr_count != 0)
            .map(|(at, sums)| Line {
                subscription: self.subscriptions.name((at / SLOTS) as u32).to_string(),
                kind: KINDS[at % SLOTS / ZONES.len()],
                zone: ZONES[at % ZONES.len()],
                sums: *sums,
            })
            .collect()
    }

    pub fn total(&self) -> Sums {
        let mut total = Sums::default();
        for line in &self.lines {
            total.add(line);
        }
        total
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut head = TAG.to_vec();
        put_varint(&mut head, self.cdr_count);
        let mut names = Vec::new();
        put_varint(&mut names, self.subscriptions.len() as u64);
        for name in &self.subscriptions.names {
            put_bytes(&mut names, name.as_bytes());
        }
        let mut lines = Vec::new();
        let used = self.lines.iter().filter(|s| s.cdr_count != 0).count();
        put_varint(&mut lines, used as u64);
        for (at, sums) in self.lines.iter().enumerate() {
            if sums.cdr_count == 0 {
                continue;
            }
            put_varint(&mut lines, at as u64);
            for value in sums.values() {
                put_varint(&mut lines, zigzag(value));
            }
        }
        let mut spent = Vec::new();
        put_varint(&mut spent, self.spent.len() as u64);
        for bundle in &self.spent {
            let used = bundle.iter().filter(|v| **v != 0).count();
            put_varint(&mut spent, used as u64);
            for (slot, value) in bundle.iter().enumerate().filter(|(_, v)| **v != 0) {
                put_varint(&mut spent, slot as u64);
                put_varint(&mut spent, *value);
            }
        }
        seal(head, &[&names, &lines, &spent])
    }

    pub fn decode(compressed: &[u8]) -> Result<Self, String> {
        let raw = unseal(compressed)?;
        let mut head = Reader::new(&raw);
        if head.take(TAG.len())? != TAG {
            return Err("another layout".into());
        }
        let cdr_count = head.varint()?;
        let [mut names, mut lines, mut spent] = head.columns::<3>()?;
        let mut state = RatingState {
            cdr_count,
            ..RatingState::default()
        };
        for _ in 0..names.usize()? {
            state.subscriptions.number(names.bytes()?)?;
        }
        state.lines = vec![Sums::default(); state.subscriptions.len() * SLOTS];
        for _ in 0..lines.usize()? {
            let at = lines.usize()?;
            let mut values = [0i64; 7];
            for value in &mut values {
                *value = lines.signed()?;
            }
            *state
                .lines
                .get_mut(at)
                .ok_or("a line names no known subscription")? = Sums::from_values(values);
        }
        for _ in 0..spent.usize()? {
            let mut bundle = Vec::new();
            for _ in 0..spent.usize()? {
                let slot = spent.usize()?;
                if slot > state.subscriptions.len() {
                    return Err("a bundle counter names no known subscription".into());
                }
                if bundle.len() <= slot {
                    bundle.resize(slot + 1, 0);
                }
                bundle[slot] = spent.varint()?;
            }
            state.spent.push(bundle);
        }
        Ok(state)
    }
}

/// What changed between two final states' lines: the lines to write (new
/// or different) and the ones that no longer count any CDR. Without an
/// earlier state every stored line is replaced.
pub struct LineChanges {
    pub replace_all: bool,
    pub upsert: Vec<Line>,
    pub delete: Vec<(String, Kind, Zone)>,
}

pub fn line_changes(before: Option<&RatingState>, after: &RatingState) -> LineChanges {
    let new = after.lines();
    let Some(before) = before else {
        return LineChanges {
            replace_all: true,
            upsert: new,
            delete: Vec::new(),
        };
    };
    if after
        .subscriptions
        .names
        .starts_with(&before.subscriptions.names)
    {
        return numbered_line_changes(before, after);
    }
    let mut old: HashMap<(String, usize), Sums> = before
        .lines()
        .into_iter()
        .map(|l| ((l.subscription, slot(l.kind, l.zone)), l.sums))
        .collect();
    let mut upsert = Vec::new();
    for line in new {
        match old.remove(&(line.subscription.clone(), slot(line.kind, line.zone))) {
            Some(sums) if sums == line.sums => {}
            _ => upsert.push(line),
        }
    }
    let mut delete: Vec<(String, Kind, Zone)> = old
        .into_keys()
        .map(|(subscription, at)| {
            (
                subscription,
                KINDS[at / ZONES.len()],
                ZONES[at % ZONES.len()],
            )
        })
        .collect();
    delete.sort_by(|a, b| a.0.cmp(&b.0));
    LineChanges {
        replace_all: false,
        upsert,
        delete,
    }
}

/// [`line_changes`] when `after` numbers the subscriptions as `before`
/// does, and perhaps more after them (it resumed from a checkpoint of the
/// same calculation, as every incremental one does): the lines compare by
/// position, and only the changed ones are named. Comparing all of them by
/// name built two copies of every line of the cycle, more than the rest of
/// a 1% import's calculation.
fn numbered_line_changes(before: &RatingState, after: &RatingState) -> LineChanges {
    let line = |at: usize, sums: Sums| Line {
        subscription: after.subscriptions.name((at / SLOTS) as u32).to_string(),
        kind: KINDS[at % SLOTS / ZONES.len()],
        zone: ZONES[at % ZONES.len()],
        sums,
    };
    let mut upsert = Vec::new();
    let mut delete = Vec::new();
    let empty = Sums::default();
    for at in 0..before.lines.len().max(after.lines.len()) {
        let old = before.lines.get(at).unwrap_or(&empty);
        let new = after.lines.get(at).unwrap_or(&empty);
        if old == new {
            continue;
        }
        if new.cdr_count != 0 {
            upsert.push(line(at, *new));
        } else if old.cdr_count != 0 {
            let gone = line(at, *old);
            delete.push((gone.subscription, gone.kind, gone.zone));
        }
    }
    delete.sort_by(|a, b| a.0.cmp(&b.0));
    LineChanges {
        replace_all: false,
        upsert,
        delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RatingState {
        let mut state = RatingState {
            cdr_count: 3,
            ..RatingState::default()
        };
        let a = state.subscriptions.number(b"+31600000001").unwrap();
        let b = state.subscriptions.number(b"+31600000002").unwrap();
        *state.line(a, Kind::Voice, Zone::Home) = Sums {
            cdr_count: 2,
            voice_seconds: 120,
            provider_cost_micros: -5,
            rated_cost_micros: 90_000,
            ..Sums::default()
        };
        *state.line(b, Kind::Data, Zone::Eu) = Sums {
            cdr_count: 1,
            data_bytes: 1 << 40,
            unrated_count: 1,
            ..Sums::default()
        };
        state.spent = vec![vec![7], vec![0, 60], vec![]];
        state
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let state = state();
        let back = RatingState::decode(&state.encode()).unwrap();
        assert_eq!(back.cdr_count, 3);
        assert_eq!(back.lines(), state.lines());
        assert_eq!(back.spent, vec![vec![7], vec![0, 60], vec![]]);
        assert_eq!(back.subscriptions.get("+31600000002"), Some(1));
        let bytes = state.encode();
        assert!(RatingState::decode(&bytes[..bytes.len() - 2]).is_err());
    }

    #[test]
    fn line_changes_name_only_lines_that_differ_or_vanished() {
        let before = state();
        let mut after = before.clone();
        let c = after.subscriptions.number(b"+31600000003").unwrap();
        after.line(c, Kind::Sms, Zone::World).cdr_count = 1;
        after.line(1, Kind::Data, Zone::Eu).cdr_count = 0;
        let changes = line_changes(Some(&before), &after);
        assert_eq!(changes.upsert.len(), 1);
        assert_eq!(changes.upsert[0].subscription, "+31600000003");
        assert_eq!(
            changes.delete,
            vec![("+31600000002".to_string(), Kind::Data, Zone::Eu)]
        );
        assert_eq!(line_changes(None, &after).upsert.len(), 2);
    }

    #[test]
    fn line_changes_by_position_equal_line_changes_by_name() {
        let before = state();
        let mut after = before.clone();
        let c = after.subscriptions.number(b"+31600000003").unwrap();
        after.line(c, Kind::Sms, Zone::World).cdr_count = 1;
        after.line(0, Kind::Voice, Zone::Home).rated_cost_micros += 1;
        after.line(1, Kind::Data, Zone::Eu).cdr_count = 0;
        // The same lines, the subscriptions numbered otherwise.
        let mut renumbered = RatingState::default();
        for name in ["+31600000003", "+31600000002", "+31600000001"] {
            let n = renumbered.subscriptions.number(name.as_bytes()).unwrap();
            let from = after.subscriptions.get(name).unwrap() as usize * SLOTS;
            for (i, sums) in after.lines[from..from + SLOTS].iter().enumerate() {
                renumbered.line(n, KINDS[i / ZONES.len()], ZONES[i % ZONES.len()]);
                renumbered.lines[n as usize * SLOTS + i] = *sums;
            }
        }

        let by_position = line_changes(Some(&before), &after);
        let by_name = line_changes(Some(&before), &renumbered);

        let key = |l: &Line| {
            (
                l.subscription.clone(),
                slot(l.kind, l.zone),
                l.sums.values(),
            )
        };
        let mut a: Vec<_> = by_position.upsert.iter().map(key).collect();
        let mut b: Vec<_> = by_name.upsert.iter().map(key).collect();
        a.sort();
        b.sort();
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert_eq!(by_position.delete, by_name.delete);
        assert_eq!(
            by_position.delete,
            vec![("+31600000002".to_string(), Kind::Data, Zone::Eu)]
        );
    }
}
