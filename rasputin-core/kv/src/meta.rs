//! The meta range's state: every data range's descriptor, keyed by its end
//! key, so that "which range holds key k" is one seek. The data ranges
//! decide their splits in their own logs; the meta range only follows, by
//! updates that carry the descriptors a split produced and apply only if
//! they are newer than what they replace (docs/ranges.md, "The meta range").
//! A pure structure, so that the simulator and the daemon keep the same one.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use thiserror::Error;

use crate::range::RangeDescriptor;

/// Descriptors one lookup returns at most: enough for a client walking a
/// scan to fill its cache in one round, few enough to bound the answer.
pub const DESCRIPTORS_PER_LOOKUP_MAX: usize = 64;

/// Descriptors one update carries at most: a split makes two, a merge one.
pub const DESCRIPTORS_PER_UPDATE_MAX: usize = 2;

/// Where a record sits: its range's end key, the last range after every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EndKey {
    Key(Bytes),
    /// Past every key; the derived order puts it after every `Key`.
    Unbounded,
}

impl EndKey {
    fn of(descriptor: &RangeDescriptor) -> EndKey {
        descriptor.end.clone().map_or(EndKey::Unbounded, EndKey::Key)
    }
}

/// The key a record sorts by in the meta range's key space: its end key,
/// with the last range (no end) after every other. Also a snapshot's key.
pub fn record_key(descriptor: &RangeDescriptor) -> Vec<u8> {
    match &descriptor.end {
        Some(end) => [&[0u8][..], end].concat(),
        None => vec![1],
    }
}

/// Why an update changed nothing. Each leaves the records as they were.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("a meta update must carry 1 to {DESCRIPTORS_PER_UPDATE_MAX} descriptors, not {0}")]
    BadSize(usize),
    #[error("the update's descriptors must be adjacent and in key order; {0} is not")]
    NotContiguous(RangeDescriptor),
    #[error("the update is not newer than record {record}: it repeats or predates it (nothing to do)")]
    Stale { record: RangeDescriptor },
    #[error("the update covers part of record {record} only: an earlier update has not landed yet; retry once it has")]
    OutOfOrder { record: RangeDescriptor },
}

/// Whether an update must be newer than the records it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochGuard {
    On,
    /// The planted bug: a late, older update overwrites newer records.
    Off,
}

/// Every data range's descriptor, tiling the key space exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRecords {
    by_end: BTreeMap<EndKey, RangeDescriptor>,
}

impl MetaRecords {
    /// The records of a new cluster: its one range.
    pub fn new(first: RangeDescriptor) -> MetaRecords {
        assert!(first.start.is_empty() && first.end.is_none(), "the first range covers every key: {first}");
        MetaRecords { by_end: BTreeMap::from([(EndKey::of(&first), first)]) }
    }

    /// The range holding `key`, and those after it, at most `limit` (and at
    /// most `DESCRIPTORS_PER_LOOKUP_MAX`) in key order.
    pub fn lookup(&self, key: &[u8], limit: usize) -> Vec<RangeDescriptor> {
        // The first record whose end lies after the key holds it.
        let after_key = Bound::Excluded(EndKey::Key(Bytes::copy_from_slice(key)));
        let count = limit.min(DESCRIPTORS_PER_LOOKUP_MAX);
        self.by_end.range((after_key, Bound::Unbounded)).map(|(_, record)| record.clone()).take(count).collect()
    }

    /// Replaces the records an update's descriptors cover, if the update is
    /// newer than every one of them and covers them whole. Idempotent: a
    /// retry, or a late copy of an older update, is `Stale`.
    pub fn apply(&mut self, update: &[RangeDescriptor]) -> Result<(), MetaError> {
        self.check(update, EpochGuard::On)?;
        self.replace(update);
        Ok(())
    }

    /// Whether `apply` would take `update`, without taking it: the state
    /// machine decides with this and makes the change with `replace`.
    /// `EpochGuard::Off` is the simulator's planted bug only.
    pub fn check(&self, update: &[RangeDescriptor], guard: EpochGuard) -> Result<(), MetaError> {
        let (Some(first), Some(last)) = (update.first(), update.last()) else { return Err(MetaError::BadSize(0)) };
        if update.len() > DESCRIPTORS_PER_UPDATE_MAX {
            return Err(MetaError::BadSize(update.len()));
        }
        if let Some(gap) = update.windows(2).find(|pair| pair[0].end.as_ref() != Some(&pair[1].start)) {
            return Err(MetaError::NotContiguous(gap[1].clone()));
        }
        let replaced = self.covered(&first.start, &EndKey::of(last));
        let version = update.iter().map(|descriptor| descriptor.epoch.version).min().expect("checked non-empty");
        let stale = replaced.iter().find(|record| record.epoch.version >= version);
        if let (Some(record), EpochGuard::On) = (stale, guard) {
            return Err(MetaError::Stale { record: (*record).clone() });
        }
        let whole = |record: &&RangeDescriptor| record.start >= first.start && EndKey::of(record) <= EndKey::of(last);
        if let Some(record) = replaced.iter().find(|record| !whole(record)) {
            return Err(MetaError::OutOfOrder { record: (*record).clone() });
        }
        Ok(())
    }

    /// Puts the update's descriptors in place of the records they cover,
    /// and returns those records (a store on disk deletes their keys).
    /// The caller has checked it (`check`), so the records still tile.
    pub fn replace(&mut self, update: &[RangeDescriptor]) -> Vec<RangeDescriptor> {
        let (Some(first), Some(last)) = (update.first(), update.last()) else { return Vec::new() };
        let ends: Vec<EndKey> =
            self.covered(&first.start, &EndKey::of(last)).iter().map(|record| EndKey::of(record)).collect();
        let replaced = ends.iter().filter_map(|end| self.by_end.remove(end)).collect();
        self.by_end.extend(update.iter().map(|descriptor| (EndKey::of(descriptor), descriptor.clone())));
        assert!(self.tiles_the_key_space(), "a checked meta update left a gap or an overlap: {update:?}");
        replaced
    }

    /// The records a snapshot held, if they tile the key space.
    pub fn restore(records: Vec<RangeDescriptor>) -> Option<MetaRecords> {
        let by_end = records.into_iter().map(|record| (EndKey::of(&record), record)).collect();
        let restored = MetaRecords { by_end };
        restored.tiles_the_key_space().then_some(restored)
    }

    /// The records sharing a key with [start, end).
    fn covered(&self, start: &Bytes, end: &EndKey) -> Vec<&RangeDescriptor> {
        let after_start = Bound::Excluded(EndKey::Key(start.clone()));
        let records = self.by_end.range((after_start, Bound::Unbounded)).map(|(_, record)| record);
        records.take_while(|record| EndKey::Key(record.start.clone()) < *end).collect()
    }

    /// Every record, in key order.
    pub fn records(&self) -> impl Iterator<Item = &RangeDescriptor> {
        self.by_end.values()
    }

    /// Whether the records cover every key exactly once: the first starts
    /// at the empty key, each starts where the one before it ends, and the
    /// last has no end. `apply` keeps this; the simulator checks it.
    pub fn tiles_the_key_space(&self) -> bool {
        let mut expected_start = Bytes::new();
        for record in self.by_end.values() {
            if record.start != expected_start {
                return false;
            }
            match &record.end {
                Some(end) => expected_start = end.clone(),
                // Unbounded sorts last, so nothing follows this record.
                None => return true,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::FIRST_RANGE_ID;

    fn first() -> RangeDescriptor {
        RangeDescriptor::first(vec![1, 2, 3])
    }

    fn split(range: &RangeDescriptor, key: &str, right: u64) -> (RangeDescriptor, RangeDescriptor) {
        range.split_at(&Bytes::copy_from_slice(key.as_bytes()), range.epoch.version, right).unwrap()
    }

    fn ids(records: &MetaRecords) -> Vec<u64> {
        records.records().map(|record| record.id).collect()
    }

    #[test]
    fn a_lookup_finds_the_range_holding_the_key_and_those_after_it() {
        let mut records = MetaRecords::new(first());
        let (left, right) = split(&first(), "m", 2);
        records.apply(&[left.clone(), right.clone()]).unwrap();
        assert_eq!(records.lookup(b"a", 10), vec![left.clone(), right.clone()]);
        assert_eq!(records.lookup(b"l", 1), vec![left]);
        // A range's end key belongs to the next range.
        assert_eq!(records.lookup(b"m", 10), vec![right.clone()]);
        assert_eq!(records.lookup(b"zzz", 10), vec![right]);
        assert!(records.tiles_the_key_space());
    }

    #[test]
    fn a_repeated_or_older_update_is_stale_and_changes_nothing() {
        let mut records = MetaRecords::new(first());
        let (left, right) = split(&first(), "m", 2);
        records.apply(&[left.clone(), right.clone()]).unwrap();
        let (right_left, right_right) = split(&right, "t", 3);
        records.apply(&[right_left, right_right]).unwrap();
        let before = records.clone();
        assert!(matches!(records.apply(&[left.clone(), right.clone()]), Err(MetaError::Stale { .. })));
        assert!(matches!(records.apply(&[first()]), Err(MetaError::Stale { .. })));
        assert_eq!(records, before);
        assert_eq!(ids(&records), vec![FIRST_RANGE_ID, 2, 3]);
    }

    #[test]
    fn an_update_that_arrives_before_the_one_it_follows_waits_for_it() {
        let mut records = MetaRecords::new(first());
        let (left, right) = split(&first(), "m", 2);
        let (right_left, right_right) = split(&right, "t", 3);
        let second = [right_left, right_right];
        assert!(matches!(records.apply(&second), Err(MetaError::OutOfOrder { .. })));
        assert_eq!(ids(&records), vec![FIRST_RANGE_ID]);
        records.apply(&[left, right]).unwrap();
        records.apply(&second).unwrap();
        assert_eq!(ids(&records), vec![FIRST_RANGE_ID, 2, 3]);
        assert!(records.tiles_the_key_space());
    }

    #[test]
    fn without_the_epoch_guard_a_late_update_overwrites_newer_records() {
        let mut records = MetaRecords::new(first());
        let (left, right) = split(&first(), "m", 2);
        records.apply(&[left.clone(), right.clone()]).unwrap();
        let (right_left, right_right) = split(&right, "t", 3);
        records.apply(&[right_left, right_right]).unwrap();
        let late = [left, right];
        assert!(matches!(records.check(&late, EpochGuard::On), Err(MetaError::Stale { .. })));
        assert_eq!(records.check(&late, EpochGuard::Off), Ok(()));
        records.replace(&late);
        assert_eq!(ids(&records), vec![FIRST_RANGE_ID, 2]);
    }

    #[test]
    fn restored_records_must_tile_the_key_space() {
        let (left, right) = split(&first(), "m", 2);
        assert_eq!(
            MetaRecords::restore(vec![right.clone(), left.clone()]).map(|records| ids(&records)),
            Some(vec![1, 2])
        );
        assert_eq!(MetaRecords::restore(vec![right]), None);
        assert_eq!(MetaRecords::restore(vec![left]), None);
    }

    #[test]
    fn malformed_updates_are_refused() {
        let mut records = MetaRecords::new(first());
        let (left, right) = split(&first(), "m", 2);
        assert_eq!(records.apply(&[]), Err(MetaError::BadSize(0)));
        let three = [left.clone(), right.clone(), right.clone()];
        assert_eq!(records.apply(&three), Err(MetaError::BadSize(3)));
        assert_eq!(records.apply(&[right, left.clone()]), Err(MetaError::NotContiguous(left)));
        assert_eq!(ids(&records), vec![FIRST_RANGE_ID]);
    }
}
