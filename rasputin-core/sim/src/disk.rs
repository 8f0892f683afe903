//! The simulated disk: writes stay pending until synced, and a crash drops
//! whatever was not synced yet.

use std::collections::VecDeque;

use rasputin_consensus::{HardState, Snapshot};
use rasputin_kv::operation::{Entry, Envelope, Persist, Recovered};

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl Stored {
    fn write(&mut self, persist: &Persist) {
        if let Some(hard_state) = persist.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(snapshot) = &persist.snapshot {
            self.install(snapshot.clone());
        }
        if let Some(first) = persist.entries.first() {
            let base = self.snapshot.as_ref().map_or(0, |snapshot| snapshot.last_index);
            assert!(first.index > base, "persisting index {} behind the stored snapshot at {base}", first.index);
            self.entries.retain(|entry| entry.index < first.index);
            let expected = self.entries.last().map_or(base, |entry| entry.index) + 1;
            assert_eq!(
                first.index,
                expected,
                "persisting index {} would leave a gap after {}",
                first.index,
                expected - 1
            );
            self.entries.extend(persist.entries.iter().cloned());
        }
    }

    fn install(&mut self, snapshot: Snapshot) {
        let base = self.snapshot.as_ref().map_or(0, |stored| stored.last_index);
        if snapshot.last_index <= base {
            return;
        }
        let agrees =
            self.entries.iter().any(|entry| entry.index == snapshot.last_index && entry.term == snapshot.last_term);
        if agrees {
            self.entries.retain(|entry| entry.index > snapshot.last_index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot);
    }

    pub fn recover(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            votes_withheld_until: None,
        }
    }
}

/// A write and the messages that wait for it.
#[derive(Debug)]
pub struct Batch {
    pub persist: Persist,
    pub send_after: Vec<Envelope>,
}

pub enum Submitted {
    SendNow(Vec<Envelope>),
    /// Schedule a sync completion at this true time.
    SyncAt(u64),
    Queued,
}

#[derive(Debug, Default)]
pub struct Disk {
    pub stored: Stored,
    pending: VecDeque<Batch>,
    /// The oldest pending batches already written by `write_pending_now`;
    /// their syncs only release their messages.
    written_early: usize,
    busy_until_ns: u64,
}

impl Disk {
    /// A disk on which `stored` is already durable.
    pub fn holding(stored: Stored) -> Disk {
        Disk { stored, ..Disk::default() }
    }

    /// Queues a batch behind earlier ones. A batch with nothing to write
    /// still waits for the syncs before it, since its messages may depend on them.
    pub fn submit(&mut self, batch: Batch, now_ns: u64, sync_ns: u64) -> Submitted {
        if batch.persist.is_empty() {
            if self.pending.is_empty() {
                return Submitted::SendNow(batch.send_after);
            }
            self.pending.push_back(batch);
            return Submitted::Queued;
        }
        self.pending.push_back(batch);
        self.busy_until_ns = self.busy_until_ns.max(now_ns) + sync_ns;
        Submitted::SyncAt(self.busy_until_ns)
    }

    /// Completes the oldest sync: makes its batch durable and returns it with
    /// any empty batches queued behind it.
    pub fn complete_sync(&mut self) -> Vec<Batch> {
        let first = self.pending.pop_front().expect("a sync completed with nothing pending");
        assert!(!first.persist.is_empty(), "a sync completed for an empty batch");
        if self.written_early > 0 {
            self.written_early -= 1;
        } else {
            self.stored.write(&first.persist);
        }
        let mut done = vec![first];
        while self.pending.front().is_some_and(|batch| batch.persist.is_empty()) {
            done.push(self.pending.pop_front().expect("front exists"));
        }
        done
    }

    /// Makes every pending write durable now, as a sync that covers them
    /// all would; their messages still leave when their own syncs complete.
    pub fn write_pending_now(&mut self) {
        let with_writes = self.pending.iter().filter(|batch| !batch.persist.is_empty());
        for batch in with_writes.skip(self.written_early) {
            self.stored.write(&batch.persist);
        }
        self.written_early = self.pending.iter().filter(|batch| !batch.persist.is_empty()).count();
    }

    /// A crash: unsynced writes are lost, and so are the messages waiting on them.
    pub fn crash(&mut self) {
        self.written_early = 0;
        self.pending.clear();
        self.busy_until_ns = 0;
    }
}
