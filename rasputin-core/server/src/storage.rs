//! RocksDB storage: the log, the hard state, the key-value state machine,
//! client sessions and the position of the latest snapshot, in one database
//! per node.
//!
//! Key layout: in the default column family, `m:…` metadata, `k:` + key for
//! values and `s:` + big-endian client id for sessions; in the `log` column
//! family, the big-endian index of each log entry. One WriteBatch (and one
//! WAL) still covers both. The log has a family of its own so that
//! truncation and compaction can delete a range: a range tombstone makes
//! every later read of its memtable pay (in RocksDB 8.10 a CPUID
//! instruction per read, which traps in a virtual machine), and the log is
//! read only at recovery.
//!
//! A snapshot is not a copy of the data. The state machine already lives in
//! RocksDB, so compacting the log only makes the applied state durable (one
//! synced write) and records its position. A snapshot's bytes are built only
//! when a follower needs them, by `SnapshotSource` on another thread, from a
//! RocksDB snapshot: a consistent view that the event loop keeps writing past.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use thiserror::Error;

use rasputin_consensus::{LogIndex, NodeId, Snapshot, Term};
use rasputin_kv::operation::{Entry, Persist, Recovered};
use rasputin_kv::state_machine::{
    self, Applied, Change, KvRead, Record, Response, Session, SessionCensus, SessionLimits, SnapshotDecodeError,
    SnapshotReader, SnapshotWriter,
};
use rasputin_kv::wire::{self, proto, WireError};

const HARD_STATE_KEY: &[u8] = b"m:hard";
const APPLIED_KEY: &[u8] = b"m:applied";
const IDENTITY_KEY: &[u8] = b"m:identity";
/// The layout version: 2 keeps the log in a column family of its own; 3
/// stores a snapshot's position only, sessions as `state_machine` encodes
/// them, and the peers this node has heard from.
const FORMAT_KEY: &[u8] = b"m:format";
const FORMAT_VERSION: u8 = 3;
/// The position (index, term) of the latest snapshot: the log before it is gone.
const SNAPSHOT_KEY: &[u8] = b"m:snapshot";
/// Present while a replacement node must not vote: the (term, index) its
/// log must reach first.
const WITHHOLD_KEY: &[u8] = b"m:withhold";
/// `m:seen:` + big-endian node id: this node has had a consensus message from that peer.
const SEEN_PREFIX: &[u8] = b"m:seen:";
const LOG_FAMILY: &str = "log";
/// Sorts after every log key (8 bytes), to end a range deletion of the whole log.
const LOG_END: [u8; 9] = [0xff; 9];
/// Client sessions kept in memory, so that applying a write need not read
/// its session from RocksDB; beyond this the cache starts over.
const SESSIONS_CACHED_COUNT_MAX: usize = 100_000;
/// How much a flush, a compaction or the WAL writes before RocksDB asks the
/// kernel to write it back.
const BACKGROUND_SYNC_BYTES: u64 = 1 << 20;
const VALUE_PREFIX: &[u8] = b"k:";
const SESSION_PREFIX: &[u8] = b"s:";
/// The largest snapshot that fits in one peer frame, with room for the
/// message around it. Streamed snapshots will lift this bound.
pub const SNAPSHOT_BYTES_MAX: usize = wire::PEER_FRAME_BYTES_MAX - (1 << 20);

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("storage directory {path} is locked by another process (is another rasputind running on it?): {source}")]
    Locked { path: String, source: rocksdb::Error },
    #[error("cannot open storage in {path}: {source}; check the path and its permissions")]
    Open { path: String, source: rocksdb::Error },
    #[error("storage IO failed: {0}; the disk may be full or failing, and the node stops rather than risk its data")]
    Io(#[from] rocksdb::Error),
    #[error("stored record is corrupt: {0}; restore this node's directory from a peer by wiping it and starting with --replace")]
    Corrupt(#[from] WireError),
    #[error("stored state is impossible: {0}; restore this node's directory from a peer by wiping it and starting with --replace")]
    Impossible(String),
    #[error("a snapshot is corrupt: {0}")]
    CorruptSnapshot(#[from] SnapshotDecodeError),
    #[error("storage belongs to node {stored_node} of cluster {stored_cluster:x}, but this is node {node} of cluster {cluster:x}; point --storage-dir at this node's own directory")]
    WrongIdentity { stored_node: u64, stored_cluster: u64, node: u64, cluster: u64 },
    #[error("storage in {path} has layout version {found}, but this rasputind reads version {FORMAT_VERSION}; wipe the directory and let the node catch up from its peers (start it with --replace), or run the rasputind that wrote it")]
    UnknownFormat { path: String, found: u8 },
    #[error("the state machine holds more than {SNAPSHOT_BYTES_MAX} bytes, more than one snapshot message carries; a follower this far behind cannot catch up until snapshots are streamed")]
    SnapshotTooLarge,
    #[error("the sync thread stopped; the node stops rather than lose track of what is durable")]
    SyncThreadGone,
}

impl StorageError {
    /// Whether the stored data itself is bad (as opposed to the disk or the
    /// invocation): restarting will not help, an operator must act.
    pub fn needs_an_operator(&self) -> bool {
        matches!(self, StorageError::Corrupt(_) | StorageError::Impossible(_) | StorageError::CorruptSnapshot(_))
    }
}

fn log_key(index: LogIndex) -> [u8; 8] {
    index.to_be_bytes()
}

fn value_key(key: &[u8]) -> Vec<u8> {
    [VALUE_PREFIX, key].concat()
}

fn session_key(client_id: u64) -> Vec<u8> {
    [SESSION_PREFIX, &client_id.to_be_bytes()].concat()
}

fn seen_key(node: NodeId) -> Vec<u8> {
    [SEEN_PREFIX, &node.to_be_bytes()].concat()
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("prefixes are not empty") += 1;
    end
}

/// Whether this node's directory was new when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The directory held no data: this node starts with nothing.
    Fresh,
    Existing,
}

pub struct Storage {
    db: Arc<DB>,
    applied_index: LogIndex,
    applied_term: Term,
    /// The last stored log index, set by `recover`: an append past it
    /// needs no deletion.
    log_last_index: LogIndex,
    /// Sessions as stored, for the clients seen lately.
    sessions: HashMap<u64, Session>,
    census: SessionCensus,
    /// No session below this id is left: where the search for the oldest
    /// session starts, so that it does not wade through the tombstones of
    /// expired ones.
    sessions_expired_below: Cell<u64>,
    seen: BTreeSet<NodeId>,
}

/// Stamps a new database with the layout version, or checks an existing one's.
/// A database written before versions were stamped has an identity but no
/// version: version 1, whose log lived among the other keys.
fn check_format(db: &DB, path: &str) -> Result<(), StorageError> {
    match db.get(FORMAT_KEY)? {
        Some(stored) if stored == [FORMAT_VERSION] => Ok(()),
        Some(stored) => {
            Err(StorageError::UnknownFormat { path: path.to_string(), found: stored.first().copied().unwrap_or(0) })
        }
        None if db.get(IDENTITY_KEY)?.is_some() => {
            Err(StorageError::UnknownFormat { path: path.to_string(), found: 1 })
        }
        None => Ok(db.put(FORMAT_KEY, [FORMAT_VERSION])?),
    }
}

/// Every (key without prefix, value) under `prefix`, in key order.
fn scan<'a>(db: &'a DB, prefix: &'a [u8]) -> impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), StorageError>> + 'a {
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(prefix_end(prefix));
    db.iterator_opt(IteratorMode::From(prefix, Direction::Forward), options).map(move |item| {
        let (key, value) = item?;
        Ok((key[prefix.len()..].into(), value))
    })
}

fn client_id_of(key: &[u8]) -> Result<u64, StorageError> {
    key.try_into().map(u64::from_be_bytes).map_err(|_| StorageError::Impossible(format!("session key {key:?}")))
}

fn session_census(db: &DB) -> Result<SessionCensus, StorageError> {
    let mut census = SessionCensus::default();
    for item in scan(db, SESSION_PREFIX) {
        let (_, value) = item?;
        census.count += 1;
        census.bytes += state_machine::decode_session(&value)?.bytes();
    }
    Ok(census)
}

impl Storage {
    /// Opens (creating if needed) the node's database. RocksDB's own LOCK
    /// file keeps a second daemon out of the same directory.
    pub fn open(directory: &Path) -> Result<Storage, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // One thread writes: the concurrent memtable insert path (a fresh
        // skip-list splice per key) and the write thread's spinning only cost.
        options.set_allow_concurrent_memtable_write(false);
        options.set_enable_write_thread_adaptive_yield(false);
        // Votes and acknowledgements wait for the sync thread's WAL sync. A
        // memtable flush that leaves 64 MiB of dirty pages for the kernel to
        // write at once makes that sync wait behind them for longer than a
        // lease (and the loop's own writes get throttled); writing flushes
        // and the WAL back a little at a time keeps each sync short.
        options.set_bytes_per_sync(BACKGROUND_SYNC_BYTES);
        options.set_wal_bytes_per_sync(BACKGROUND_SYNC_BYTES);
        let path = directory.display().to_string();
        let db =
            DB::open_cf(&options, directory, [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, LOG_FAMILY]).map_err(|source| {
                if source.to_string().contains("lock") {
                    StorageError::Locked { path: path.clone(), source }
                } else {
                    StorageError::Open { path: path.clone(), source }
                }
            })?;
        check_format(&db, &path)?;
        let applied = match db.get(APPLIED_KEY)? {
            Some(bytes) => wire::decode::<proto::AppliedPosition>(bytes.into(), "AppliedPosition")?,
            None => proto::AppliedPosition::default(),
        };
        let census = session_census(&db)?;
        let seen = scan(&db, SEEN_PREFIX).map(|item| client_id_of(&item?.0)).collect::<Result<_, _>>()?;
        Ok(Storage {
            db: Arc::new(db),
            applied_index: applied.index,
            applied_term: applied.term,
            log_last_index: 0,
            sessions: HashMap::new(),
            census,
            sessions_expired_below: Cell::new(0),
            seen,
        })
    }

    /// Checks which node and cluster this directory belongs to. A directory
    /// with no identity yet is `Fresh`; `write_identity` claims it once the
    /// node has joined, so that a node refused while joining leaves its
    /// directory as empty as it found it.
    pub fn claim_identity(&self, node: u64, cluster: u64) -> Result<Claim, StorageError> {
        let expected = [node.to_be_bytes(), cluster.to_be_bytes()].concat();
        match self.db.get(IDENTITY_KEY)? {
            None => Ok(Claim::Fresh),
            Some(stored) if stored == expected => Ok(Claim::Existing),
            Some(stored) => {
                let number = |range: std::ops::Range<usize>| {
                    stored.get(range).and_then(|bytes| bytes.try_into().ok()).map_or(0, u64::from_be_bytes)
                };
                Err(StorageError::WrongIdentity {
                    stored_node: number(0..8),
                    stored_cluster: number(8..16),
                    node,
                    cluster,
                })
            }
        }
    }

    pub fn write_identity(&self, node: u64, cluster: u64) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.put_opt(IDENTITY_KEY, [node.to_be_bytes(), cluster.to_be_bytes()].concat(), &options)?)
    }

    /// Whether this node has had a consensus message from `node`.
    pub fn has_seen(&self, node: NodeId) -> bool {
        self.seen.contains(&node)
    }

    /// Remembers, durably, that `node` has sent this node a consensus
    /// message: from then on a wiped `node` is known to have taken part.
    pub fn record_seen(&mut self, node: NodeId) -> Result<(), StorageError> {
        if self.seen.insert(node) {
            let mut options = WriteOptions::default();
            options.set_sync(true);
            self.db.put_opt(seen_key(node), [], &options)?;
        }
        Ok(())
    }

    /// The log position a replacement must reach before it votes, if it must.
    pub fn votes_withheld_until(&self) -> Result<Option<(Term, LogIndex)>, StorageError> {
        let Some(bytes) = self.db.get(WITHHOLD_KEY)? else { return Ok(None) };
        let position: proto::AppliedPosition = wire::decode(bytes.into(), "WithheldUntil")?;
        Ok(Some((position.term, position.index)))
    }

    /// Starts a replacement node: it burns its vote in `term` (it may have
    /// voted there before its disk was lost) and withholds votes until its
    /// log is at least as up to date as one ending at `until` (term, index).
    pub fn start_replacement(&self, term: Term, own: NodeId, until: (Term, LogIndex)) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let hard_state = rasputin_consensus::HardState { term, voted_for: Some(own) };
        batch.put(HARD_STATE_KEY, wire::to_bytes(&wire::hard_state_to_proto(hard_state)));
        let (term, index) = until;
        batch.put(WITHHOLD_KEY, wire::to_bytes(&proto::AppliedPosition { index, term }));
        self.write(batch, true)
    }

    pub fn end_withholding(&self) -> Result<(), StorageError> {
        Ok(self.db.delete(WITHHOLD_KEY)?)
    }

    pub fn applied(&self) -> (LogIndex, Term) {
        (self.applied_index, self.applied_term)
    }

    /// Everything consensus needs to restart.
    pub fn recover(&mut self) -> Result<Recovered, StorageError> {
        let hard_state = match self.db.get(HARD_STATE_KEY)? {
            Some(bytes) => wire::hard_state_from_proto(wire::decode(bytes.into(), "HardState")?),
            None => Default::default(),
        };
        let snapshot = self.stored_snapshot()?;
        let after = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_index);
        if after > self.applied_index {
            return Err(StorageError::Impossible(format!(
                "the snapshot at index {after} lies beyond the applied index {}",
                self.applied_index
            )));
        }
        let mut entries = Vec::new();
        let start = log_key(after + 1);
        for item in self.db.iterator_cf(self.log_family(), IteratorMode::From(&start, Direction::Forward)) {
            let (_, value) = item?;
            entries.push(wire::entry_from_proto(wire::decode(value.into_vec().into(), "Entry")?)?);
        }
        self.log_last_index = entries.last().map_or(after, |entry| entry.index);
        Ok(Recovered { hard_state, snapshot, entries, votes_withheld_until: self.votes_withheld_until()? })
    }

    fn log_family(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(LOG_FAMILY).expect("the database is opened with the log family")
    }

    /// The latest snapshot's position. Its data is built when a follower needs it.
    fn stored_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self.db.get(SNAPSHOT_KEY)? else { return Ok(None) };
        let position: proto::AppliedPosition = wire::decode(bytes.into(), "SnapshotPosition")?;
        Ok(Some(Snapshot { last_index: position.index, last_term: position.term, data: Bytes::new() }))
    }

    /// Adds consensus's persist request to `batch`. `log_emptied` says the
    /// node dropped its whole log for an installed snapshot.
    pub fn stage(&mut self, batch: &mut WriteBatch, persist: &Persist, log_emptied: bool) -> Result<(), StorageError> {
        if let Some(hard_state) = persist.hard_state {
            batch.put(HARD_STATE_KEY, wire::to_bytes(&wire::hard_state_to_proto(hard_state)));
        }
        if let Some(snapshot) = &persist.snapshot {
            self.stage_install(batch, snapshot, log_emptied)?;
        }
        if let (Some(first), Some(last)) = (persist.entries.first(), persist.entries.last()) {
            let log = self.log_family();
            if first.index <= self.log_last_index {
                batch.delete_range_cf(log, &log_key(first.index)[..], &LOG_END[..]);
            }
            for entry in &persist.entries {
                batch.put_cf(log, log_key(entry.index), wire::to_bytes(&wire::entry_to_proto(entry)));
            }
            self.log_last_index = last.index;
        }
        Ok(())
    }

    /// Replaces the state machine with a snapshot received from the leader.
    /// The wire checked its format and checksum before consensus saw it.
    fn stage_install(
        &mut self,
        batch: &mut WriteBatch,
        snapshot: &Snapshot,
        log_emptied: bool,
    ) -> Result<(), StorageError> {
        let reader = SnapshotReader::new(&snapshot.data)?;
        batch.delete_range(VALUE_PREFIX.to_vec(), prefix_end(VALUE_PREFIX));
        batch.delete_range(SESSION_PREFIX.to_vec(), prefix_end(SESSION_PREFIX));
        let mut census = SessionCensus::default();
        for record in reader.records() {
            match record? {
                Record::Value { key, value } => batch.put(value_key(key), value),
                Record::Session { client_id, session } => {
                    census.count += 1;
                    census.bytes += state_machine::decode_session(session)?.bytes();
                    batch.put(session_key(client_id), session);
                }
            }
        }
        if log_emptied {
            batch.delete_range_cf(self.log_family(), &log_key(0)[..], &LOG_END[..]);
            self.log_last_index = snapshot.last_index;
        } else {
            batch.delete_range_cf(self.log_family(), log_key(0), log_key(snapshot.last_index + 1));
        }
        self.sessions.clear();
        self.census = census;
        self.sessions_expired_below.set(0);
        let position = proto::AppliedPosition { index: snapshot.last_index, term: snapshot.last_term };
        batch.put(SNAPSHOT_KEY, wire::to_bytes(&position));
        self.stage_applied(batch, snapshot.last_index, snapshot.last_term);
        Ok(())
    }

    fn stage_applied(&mut self, batch: &mut WriteBatch, index: LogIndex, term: Term) {
        batch.put(APPLIED_KEY, wire::to_bytes(&proto::AppliedPosition { index, term }));
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Writes `batch`; with `sync`, waits until it is on disk.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        Ok(self.db.write_opt(batch, &options)?)
    }

    /// Applies committed entries with one unsynced write: their changes and
    /// the new applied index in one WriteBatch. Each entry sees the changes
    /// of those before it through an overlay. Entries already covered by a
    /// snapshot are skipped. Not synced: committed entries can be applied
    /// again from the log.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied>, StorageError> {
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay {
            storage: self,
            values: HashMap::new(),
            sessions: BTreeMap::new(),
            census: self.census,
            expired_below: Cell::new(self.sessions_expired_below.get()),
        };
        let mut answers = Vec::new();
        let mut last = None;
        for entry in entries.iter().filter(|entry| entry.index > overlay.storage.applied_index) {
            let decision = state_machine::decide(&overlay, entry, SessionLimits::PRODUCTION)?;
            for change in decision.changes {
                overlay.stage(&mut batch, change);
            }
            overlay.census = decision.census;
            answers.extend(decision.applied);
            last = Some((entry.index, entry.term));
        }
        let Overlay { sessions, census, expired_below, .. } = overlay;
        let Some((index, term)) = last else { return Ok(answers) };
        self.stage_applied(&mut batch, index, term);
        self.write(batch, false)?;
        self.census = census;
        self.sessions_expired_below.set(self.sessions_expired_below.get().max(expired_below.get()));
        if self.sessions.len() + sessions.len() > SESSIONS_CACHED_COUNT_MAX {
            self.sessions.clear();
        }
        for (client_id, session) in sessions {
            match session {
                Some(session) => {
                    self.sessions.insert(client_id, session);
                }
                None => {
                    self.sessions.remove(&client_id);
                }
            }
        }
        Ok(answers)
    }

    pub fn read(&self, key: &[u8]) -> Result<Response, StorageError> {
        state_machine::read_response(self, key, self.applied_term, self.applied_index)
    }

    /// What another thread needs to build a snapshot of this state.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource { db: self.db.clone() }
    }

    /// The batch that compacts the log up to `index` (of `term`), at most the
    /// applied index: once synced, with the applied state written before it
    /// in the WAL, it records the snapshot's position; the log it covers
    /// goes. Recovery applies again what lies past `index`.
    pub fn compaction(&self, index: LogIndex, term: Term) -> (WriteBatch, Snapshot) {
        assert!(index <= self.applied_index, "compacting to {index}, past the applied index {}", self.applied_index);
        let mut batch = WriteBatch::default();
        batch.put(SNAPSHOT_KEY, wire::to_bytes(&proto::AppliedPosition { index, term }));
        batch.delete_range_cf(self.log_family(), log_key(0), log_key(index + 1));
        (batch, Snapshot { last_index: index, last_term: term, data: Bytes::new() })
    }

    /// A thread that syncs the WAL on request, so that the event loop goes
    /// on (heartbeats, acknowledgements, reads) while the disk works. The
    /// loop writes its batches unsynced and then asks for a sync, which
    /// covers every write made before the request. (A synced write on the
    /// other thread would not do: RocksDB groups concurrent writers, and the
    /// loop's next write would wait for that sync.) `waker` is woken after
    /// each sync.
    pub fn sync_worker(&self, waker: impl Fn() + Send + 'static) -> std::io::Result<SyncWorker> {
        let (requests, requested) = std::sync::mpsc::sync_channel::<()>(1);
        let (finished, done) = std::sync::mpsc::sync_channel(1);
        let db = self.db.clone();
        std::thread::Builder::new().name("rasputin-sync".into()).spawn(move || {
            for () in requested {
                if finished.send(db.flush_wal(true).map_err(StorageError::from)).is_err() {
                    return;
                }
                waker();
            }
        })?;
        Ok(SyncWorker { requests, done })
    }
}

/// The sync thread: one sync is requested at a time, and its outcome comes back.
pub struct SyncWorker {
    requests: std::sync::mpsc::SyncSender<()>,
    done: std::sync::mpsc::Receiver<Result<(), StorageError>>,
}

impl SyncWorker {
    /// Asks for a sync of everything written so far; one at a time.
    pub fn request(&self) -> Result<(), StorageError> {
        self.requests.send(()).map_err(|_| StorageError::SyncThreadGone)
    }

    /// The outcome of the sync requested, if it is done.
    pub fn try_finished(&self) -> Option<Result<(), StorageError>> {
        match self.done.try_recv() {
            Ok(result) => Some(result),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Err(StorageError::SyncThreadGone)),
        }
    }

    /// Waits for the sync requested.
    pub fn wait(&self) -> Result<(), StorageError> {
        self.done.recv().map_err(|_| StorageError::SyncThreadGone)?
    }
}

/// Builds snapshots of the state machine off the event loop.
#[derive(Clone)]
pub struct SnapshotSource {
    db: Arc<DB>,
}

impl SnapshotSource {
    /// A snapshot of the state as it is now, at the applied position it has.
    /// Reads a RocksDB snapshot, so the event loop may go on writing.
    pub fn build(&self) -> Result<Snapshot, StorageError> {
        let view = self.db.snapshot();
        let applied = match view.get(APPLIED_KEY)? {
            Some(bytes) => wire::decode::<proto::AppliedPosition>(bytes.into(), "AppliedPosition")?,
            None => proto::AppliedPosition::default(),
        };
        let mut writer = SnapshotWriter::new(applied.index, applied.term);
        for (prefix, is_value) in [(VALUE_PREFIX, true), (SESSION_PREFIX, false)] {
            let mut options = ReadOptions::default();
            options.set_iterate_upper_bound(prefix_end(prefix));
            // A whole-state scan would only push hot blocks out of the cache.
            options.fill_cache(false);
            for item in view.iterator_opt(IteratorMode::From(prefix, Direction::Forward), options) {
                let (key, value) = item?;
                let key = &key[prefix.len()..];
                if is_value {
                    writer.value(key, &value);
                } else {
                    writer.session(client_id_of(key)?, &value);
                }
                if writer.len() > SNAPSHOT_BYTES_MAX {
                    return Err(StorageError::SnapshotTooLarge);
                }
            }
        }
        Ok(Snapshot { last_index: applied.index, last_term: applied.term, data: writer.finish().into() })
    }
}

/// The state as a batch of applies leaves it: staged changes over the database.
struct Overlay<'a> {
    storage: &'a Storage,
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Sessions written (Some) or expired (None) by this batch.
    sessions: BTreeMap<u64, Option<Session>>,
    census: SessionCensus,
    /// Every stored session below this id has expired, in the database or in
    /// this batch: where the search for the oldest starts, so that a batch
    /// that expires many sessions does not pass over them again each time.
    expired_below: Cell<u64>,
}

impl Overlay<'_> {
    fn stage(&mut self, batch: &mut WriteBatch, change: Change) {
        match change {
            Change::Put { key, value } => {
                batch.put(value_key(&key), &value);
                self.values.insert(key, Some(value));
            }
            Change::Delete { key } => {
                batch.delete(value_key(&key));
                self.values.insert(key, None);
            }
            Change::Session { client_id, session } => {
                batch.put(session_key(client_id), state_machine::encode_session(&session));
                self.sessions.insert(client_id, Some(session));
            }
            Change::EndSession { client_id } => {
                batch.delete(session_key(client_id));
                self.sessions.insert(client_id, None);
            }
        }
    }
}

impl KvRead for Overlay<'_> {
    type Error = StorageError;

    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.values.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.storage.value(key),
        }
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError> {
        match self.sessions.get(&client_id) {
            Some(staged) => Ok(staged.clone()),
            None => self.storage.session(client_id),
        }
    }

    fn census(&self) -> SessionCensus {
        self.census
    }

    /// The lower of the oldest stored session this batch has not touched and
    /// the oldest session this batch wrote.
    fn oldest_session_from(&self, from: u64) -> Result<Option<(u64, Session)>, StorageError> {
        let mut cursor = from.max(self.expired_below.get());
        // Whether every stored session below `cursor` has expired.
        let mut prefix_expired = from <= self.expired_below.get();
        let stored = loop {
            let Some((client_id, session)) = self.storage.oldest_session_from(cursor)? else { break None };
            let staged = self.sessions.get(&client_id);
            if staged.is_none() {
                break Some((client_id, session));
            }
            let Some(next) = client_id.checked_add(1) else { break None };
            prefix_expired &= staged == Some(&None);
            if prefix_expired {
                self.expired_below.set(next);
            }
            cursor = next;
        };
        // No session this batch wrote lies below the hint: those below it are
        // the ones it expired, and starting there skips them.
        let staged = self
            .sessions
            .range(from.max(self.expired_below.get())..)
            .find_map(|(&client_id, session)| session.as_ref().map(|session| (client_id, session.clone())));
        Ok(match (stored, staged) {
            (Some(stored), Some(staged)) => Some(if stored.0 < staged.0 { stored } else { staged }),
            (stored, staged) => stored.or(staged),
        })
    }
}

impl KvRead for Storage {
    type Error = StorageError;

    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(value_key(key))?)
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError> {
        if let Some(session) = self.sessions.get(&client_id) {
            return Ok(Some(session.clone()));
        }
        match self.db.get(session_key(client_id))? {
            Some(bytes) => Ok(Some(state_machine::decode_session(&bytes)?)),
            None => Ok(None),
        }
    }

    fn census(&self) -> SessionCensus {
        self.census
    }

    fn oldest_session_from(&self, from: u64) -> Result<Option<(u64, Session)>, StorageError> {
        let lowest_left = self.sessions_expired_below.get();
        let start = session_key(from.max(lowest_left));
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(prefix_end(SESSION_PREFIX));
        let first = self.db.iterator_opt(IteratorMode::From(&start, Direction::Forward), options).next();
        let Some(item) = first else { return Ok(None) };
        let (key, value) = item?;
        let client_id = client_id_of(&key[SESSION_PREFIX.len()..])?;
        if from <= lowest_left {
            // The lowest session there is: new sessions only ever get higher ids.
            self.sessions_expired_below.set(client_id);
        }
        Ok(Some((client_id, state_machine::decode_session(&value)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rasputin_consensus::HardState;
    use rasputin_kv::operation::{ClientRequest, EntryPayload, Operation};

    fn command(index: LogIndex, client_id: u64, sequence: u64, operation: Operation) -> Entry {
        Entry { term: 1, index, payload: EntryPayload::Command(ClientRequest { client_id, sequence, operation }) }
    }

    fn set(value: &[u8]) -> Operation {
        Operation::Set { key: bytes::Bytes::from_static(b"k"), value: bytes::Bytes::copy_from_slice(value) }
    }

    fn open(index: LogIndex) -> Entry {
        command(index, 0, 1_000 + index, Operation::OpenSession)
    }

    fn temporary(name: &str) -> std::path::PathBuf {
        let directory = std::env::temp_dir().join(format!("rasputin-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    #[test]
    fn a_batch_of_applies_sees_its_own_earlier_changes() {
        let directory = temporary("batch");
        let mut storage = Storage::open(&directory).unwrap();
        let cas = Operation::Cas {
            key: bytes::Bytes::from_static(b"k"),
            expected: bytes::Bytes::from_static(b"one"),
            new: bytes::Bytes::from_static(b"two"),
        };
        let entries = [
            open(1),
            open(2),
            command(3, 1, 1, set(b"one")),
            command(4, 2, 1, cas),
            // A retry of client 1's write, in the same batch: answered from its session.
            command(5, 1, 1, set(b"one")),
        ];
        let answers = storage.apply(&entries).unwrap();
        assert_eq!(answers.len(), 5);
        let response = |index: usize| answers[index].outcome.clone().unwrap();
        assert!(response(3).success && response(3).value == b"two", "{:?}", answers[3]);
        assert_eq!(response(4).index, response(2).index, "the retry was applied again");
        assert_eq!(storage.value(b"k").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(storage.applied(), (5, 1));
        // Entries at or below the applied index are not applied twice.
        assert!(storage.apply(&entries).unwrap().is_empty());

        // A conflicting append drops the old suffix; compaction drops the prefix.
        let persist = |entries: Vec<Entry>| Persist { hard_state: Some(HardState::default()), entries, snapshot: None };
        let stage_and_write = |storage: &mut Storage, entries: Vec<Entry>| {
            let mut batch = WriteBatch::default();
            storage.stage(&mut batch, &persist(entries), false).unwrap();
            storage.write(batch, true).unwrap();
        };
        let old: Vec<Entry> = (1..=3).map(|index| command(index, 1, index, set(b"old"))).collect();
        stage_and_write(&mut storage, old);
        stage_and_write(&mut storage, vec![command(2, 2, 1, set(b"new"))]);
        assert_eq!(storage.recover().unwrap().entries, [command(1, 1, 1, set(b"old")), command(2, 2, 1, set(b"new"))]);
        stage_and_write(&mut storage, vec![command(3, 2, 2, set(b"newer")), command(6, 2, 3, set(b"x"))]);
        let (batch, snapshot) = storage.compaction(5, 1);
        storage.write(batch, true).unwrap();
        assert_eq!(snapshot.last_index, 5);
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.snapshot.map(|snapshot| snapshot.last_index), Some(5));
        assert_eq!(recovered.entries, [command(6, 2, 3, set(b"x"))]);
        drop(storage);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// A snapshot built off the loop installs into another store byte for
    /// byte, sessions and their census included.
    #[test]
    fn a_built_snapshot_installs_elsewhere_with_the_same_state() {
        let (from, to) = (temporary("source"), temporary("target"));
        let mut source = Storage::open(&from).unwrap();
        let mut entries = vec![open(1), open(2)];
        entries.extend((3..50).map(|index| command(index, 1 + index % 2, index, set(&index.to_be_bytes()))));
        source.apply(&entries).unwrap();
        let snapshot = source.snapshot_source().build().unwrap();
        assert_eq!((snapshot.last_index, snapshot.last_term), (49, 1));
        wire::check_snapshot(&snapshot).unwrap();
        let mut target = Storage::open(&to).unwrap();
        let mut batch = WriteBatch::default();
        let persist = Persist { snapshot: Some(snapshot.clone()), ..Persist::default() };
        target.stage(&mut batch, &persist, true).unwrap();
        target.write(batch, true).unwrap();
        assert_eq!(target.census(), source.census());
        assert_eq!(target.value(b"k").unwrap(), source.value(b"k").unwrap());
        assert_eq!(target.session(2).unwrap(), source.session(2).unwrap());
        assert_eq!(target.snapshot_source().build().unwrap().data, snapshot.data, "the installed state is the same");
        drop((source, target));
        std::fs::remove_dir_all(&from).unwrap();
        std::fs::remove_dir_all(&to).unwrap();
    }

    /// Issue 13, item 9: the store expires sessions as the state machine
    /// says, and finds the census again when it reopens.
    #[test]
    fn sessions_beyond_the_limit_expire_and_the_census_survives_a_restart() {
        let directory = temporary("sessions");
        let mut storage = Storage::open(&directory).unwrap();
        let count = state_machine::SESSIONS_COUNT_MAX as u64 + 10;
        for first in (1..=count).step_by(10_000) {
            let entries: Vec<Entry> = (first..(first + 10_000).min(count + 1)).map(open).collect();
            storage.apply(&entries).unwrap();
        }
        assert_eq!(storage.census().count, state_machine::SESSIONS_COUNT_MAX);
        assert!(storage.session(10).unwrap().is_none() && storage.session(11).unwrap().is_some());
        let census = storage.census();
        drop(storage);
        let reopened = Storage::open(&directory).unwrap();
        assert_eq!(reopened.census(), census);
        drop(reopened);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_database_of_an_older_layout_is_refused_with_a_clear_error() {
        let directory = temporary("format");
        let mut options = Options::default();
        options.create_if_missing(true);
        let old = DB::open(&options, &directory).unwrap();
        old.put(IDENTITY_KEY, [0u8; 16]).unwrap();
        drop(old);
        let error = Storage::open(&directory).err().expect("an old layout is refused");
        assert!(matches!(error, StorageError::UnknownFormat { found: 1, .. }), "{error}");
        assert!(error.to_string().contains("wipe the directory"), "{error}");
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
