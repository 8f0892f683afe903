//! The in-memory replicated log, compacted behind a snapshot.

use super::types::{Command, Entry, LogIndex, Snapshot, Term};

/// Entries `snapshot_index + 1 ..= last_index()`, held in order with no gaps.
#[derive(Clone, Debug, Default)]
pub struct Log<C> {
    snapshot_index: LogIndex,
    snapshot_term: Term,
    entries: Vec<Entry<C>>,
    /// The entries' `size_bytes`, summed: what the log holds in memory.
    bytes: usize,
}

fn bytes_of<C: Command>(entries: &[Entry<C>]) -> usize {
    entries.iter().map(Entry::size_bytes).sum()
}

impl<C: Command> Log<C> {
    pub fn restore(snapshot_index: LogIndex, snapshot_term: Term, entries: Vec<Entry<C>>) -> Log<C> {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot_index + 1 + offset as u64,
                "restored log has a gap or is out of order after snapshot index {snapshot_index}"
            );
        }
        let bytes = bytes_of(&entries);
        Log { snapshot_index, snapshot_term, entries, bytes }
    }

    /// The bytes of the entries held, as `Command::size_bytes` counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    pub fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |entry| entry.term)
    }

    /// The term at `index`, or None if it is compacted away or beyond the end.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry<C>> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Entries from `from` on, at most `count_max` of them and about `bytes_max`
    /// bytes (always at least one, so that a large entry still moves).
    pub fn slice(&self, from: LogIndex, count_max: usize, bytes_max: usize) -> Vec<Entry<C>> {
        assert!(from > self.snapshot_index, "slice from {from} reaches into the snapshot at {}", self.snapshot_index);
        let start = (from - self.snapshot_index - 1) as usize;
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in self.entries.iter().skip(start).take(count_max) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Every entry from `from` to the end.
    pub fn suffix(&self, from: LogIndex) -> &[Entry<C>] {
        let start = from.saturating_sub(self.snapshot_index + 1) as usize;
        &self.entries[start.min(self.entries.len())..]
    }

    /// Appends `entry` after dropping everything at or beyond its index.
    pub fn truncate_and_append(&mut self, entry: Entry<C>) {
        assert!(
            entry.index > self.snapshot_index && entry.index <= self.last_index() + 1,
            "entry index {} outside ({}, {}]",
            entry.index,
            self.snapshot_index,
            self.last_index() + 1
        );
        let keep = (entry.index - self.snapshot_index - 1) as usize;
        self.bytes -= bytes_of(&self.entries[keep..]);
        self.entries.truncate(keep);
        self.bytes += entry.size_bytes();
        self.entries.push(entry);
    }

    /// The first index holding `term`, scanning back from `from` while the term holds.
    pub fn first_index_of_term_at(&self, from: LogIndex) -> LogIndex {
        let term = self.term(from);
        let mut index = from;
        while index > self.snapshot_index + 1 && self.term(index - 1) == term {
            index -= 1;
        }
        index
    }

    /// The last index whose term is `term`, if the log holds that term.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries.iter().rev().find(|entry| entry.term == term).map(|entry| entry.index)
    }

    /// Drops entries up to `index`, which the caller has covered with a snapshot.
    pub fn compact(&mut self, index: LogIndex, term: Term) {
        if index <= self.snapshot_index {
            return;
        }
        let keep_from = ((index - self.snapshot_index) as usize).min(self.entries.len());
        self.bytes -= bytes_of(&self.entries[..keep_from]);
        self.entries.drain(..keep_from);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the log with `snapshot`, keeping any suffix that agrees with it.
    pub fn install(&mut self, snapshot: &Snapshot) {
        if self.term(snapshot.last_index) == Some(snapshot.last_term) {
            self.compact(snapshot.last_index, snapshot.last_term);
        } else {
            self.entries.clear();
            self.bytes = 0;
            self.snapshot_index = snapshot.last_index;
            self.snapshot_term = snapshot.last_term;
        }
    }

    /// Raft's election restriction: is this log at most as up to date as one
    /// ending at (`last_term`, `last_index`)? A voter grants only if so.
    pub fn at_most_as_up_to_date_as(&self, last_index: LogIndex, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_command::TestCommand;
    use crate::types::EntryPayload;

    type Entry = crate::types::Entry<TestCommand>;
    type Log = super::Log<TestCommand>;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry { term, index, payload: EntryPayload::Noop }
    }

    fn log_of_terms(terms: &[Term]) -> Log {
        let entries = terms.iter().enumerate().map(|(offset, &term)| entry(offset as u64 + 1, term)).collect();
        Log::restore(0, 0, entries)
    }

    #[test]
    fn truncation_replaces_the_conflicting_suffix() {
        let mut log = log_of_terms(&[1, 1, 2, 2]);
        log.truncate_and_append(entry(3, 3));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.term(4), None);
    }

    #[test]
    fn compaction_keeps_terms_at_the_boundary() {
        let mut log = log_of_terms(&[1, 1, 2, 2]);
        log.compact(2, 1);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(1), None);
        assert_eq!(log.entry(3).map(|e| e.term), Some(2));
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    fn first_index_of_term_scans_back_within_the_term() {
        let log = log_of_terms(&[1, 2, 2, 2, 3]);
        assert_eq!(log.first_index_of_term_at(4), 2);
        assert_eq!(log.last_index_of_term(2), Some(4));
        assert_eq!(log.last_index_of_term(5), None);
    }

    #[test]
    fn the_byte_count_follows_appends_truncations_and_compactions() {
        let mut log = log_of_terms(&[1, 1, 1, 1]);
        let each = entry(1, 1).size_bytes();
        assert_eq!(log.bytes(), 4 * each);
        log.truncate_and_append(entry(3, 2));
        assert_eq!(log.bytes(), 3 * each);
        log.compact(2, 1);
        assert_eq!(log.bytes(), each);
        log.install(&Snapshot { last_index: 9, last_term: 3, data: bytes::Bytes::new() });
        assert_eq!(log.bytes(), 0);
    }

    #[test]
    fn slice_respects_count_and_bytes_but_moves_at_least_one() {
        let log = log_of_terms(&[1, 1, 1, 1]);
        assert_eq!(log.slice(2, 2, usize::MAX).len(), 2);
        assert_eq!(log.slice(1, 10, 1).len(), 1);
    }

    #[test]
    fn install_keeps_a_matching_suffix_and_drops_a_conflicting_log() {
        let mut log = log_of_terms(&[1, 1, 2, 2]);
        let data = bytes::Bytes::new();
        log.install(&Snapshot { last_index: 3, last_term: 2, data: data.clone() });
        assert_eq!((log.snapshot_index(), log.last_index()), (3, 4));
        log.install(&Snapshot { last_index: 6, last_term: 5, data });
        assert_eq!((log.snapshot_index(), log.last_index(), log.last_term()), (6, 6, 5));
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_of_terms(&[1, 2, 2]);
        assert!(log.at_most_as_up_to_date_as(3, 2));
        assert!(log.at_most_as_up_to_date_as(1, 3));
        assert!(!log.at_most_as_up_to_date_as(5, 1));
        assert!(!log.at_most_as_up_to_date_as(2, 2));
    }
}
