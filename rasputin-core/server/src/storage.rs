//! RocksDB storage: the log, the hard state, the key-value state machine,
//! client sessions and the position of the latest snapshot, in one database
//! per node.
//!
//! Key layout (version 4), so that one database holds many ranges: in the
//! default column family, `m:…` the node's own metadata (identity, layout
//! version, peers seen), `k:` + key for values, shared by every range so
//! that a split moves no data, and per range (`RangeKeys`) `r:` + big-endian
//! range id + `:` + field for its metadata (hard state, applied position,
//! snapshot position, vote withholding, install marker) and `s:` + range id
//! + big-endian client id for its sessions; in the `log` column family, range
//! id + big-endian index of each log entry. One WriteBatch (and one WAL)
//! covers every range and both families. Version 3, which kept one range's
//! metadata under `m:`, is migrated at open in one atomic write. The log has a family of its own so that
//! truncation and compaction can delete a range: a range tombstone makes
//! every later read of its memtable pay (in RocksDB 8.10 a CPUID
//! instruction per read, which traps in a virtual machine), and the log is
//! read only at recovery.
//!
//! A snapshot is not a copy of the data. The state machine already lives in
//! RocksDB, so compacting the log only makes the applied state durable (one
//! synced write) and records its position. A snapshot's bytes are read only
//! when a follower needs them, a chunk at a time, by `SnapshotSource` on
//! another thread, from a RocksDB snapshot: a consistent view that the
//! event loop keeps writing past.
//!
//! A follower writes the chunks it receives, in key order, into an SST file
//! (`IncomingSnapshot`), and installs it by ingesting the file: the old data
//! goes with two range deletions, and nothing passes through the memtable
//! or sits in memory. A marker (`m:installing`) written before the old data
//! goes lets recovery finish an install that a crash interrupted.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use rocksdb::{
    Direction, IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions,
    DB,
};
use thiserror::Error;

use rasputin_consensus::{HardState, LogIndex, NodeId, Snapshot, Term};
use rasputin_kv::meta::{self, MetaRecords};
use rasputin_kv::operation::{Entry, Persist, Recovered};
use rasputin_kv::range::{RangeDescriptor, RangeId, FIRST_RANGE_ID, META_RANGE_ID};
use rasputin_kv::scan::{self, ScanPage};
use rasputin_kv::snapshot::{ChunkReader, ChunkWriter, Record, SnapshotDecodeError};
use rasputin_kv::state_machine::{self, Applied, Change, KvRead, Response, Session, SessionCensus, SessionLimits};
use rasputin_kv::wire::{self, proto, WireError};

const IDENTITY_KEY: &[u8] = b"m:identity";
/// The layout version: 2 keeps the log in a column family of its own; 3
/// stores a snapshot's position only, sessions as `state_machine` encodes
/// them, and the peers this node has heard from; 4 keeps each range's
/// metadata, sessions and log under its id; 5 adds the meta range's records
/// and each range's last split outcome.
const FORMAT_KEY: &[u8] = b"m:format";
/// Present once this node has started as a replacement for one whose
/// disk was lost: what its lost replicas voted and acknowledged is
/// unknown, so it makes no replica on demand (`Storage::open_empty`).
const REPLACED_KEY: &[u8] = b"m:replaced";
const FORMAT_VERSION: u8 = 5;
/// Version 3's keys of its one range's metadata, which `migrate_from_3` moves.
const FORMAT_3_FIELDS: [(&[u8], &[u8]); 5] = [
    (b"m:hard", HARD_STATE_FIELD),
    (b"m:applied", APPLIED_FIELD),
    (b"m:snapshot", SNAPSHOT_FIELD),
    (b"m:withhold", WITHHOLD_FIELD),
    (b"m:installing", INSTALLING_FIELD),
];
const RANGE_PREFIX: &[u8] = b"r:";
const HARD_STATE_FIELD: &[u8] = b"hard";
const APPLIED_FIELD: &[u8] = b"applied";
/// The position (index, term) of the latest snapshot: the log before it is gone.
const SNAPSHOT_FIELD: &[u8] = b"snapshot";
/// Present while a replacement node must not vote: the (term, index) its
/// log must reach first.
const WITHHOLD_FIELD: &[u8] = b"withhold";
/// Present while a snapshot is being installed (see the module's comment).
const INSTALLING_FIELD: &[u8] = b"installing";
/// The range's descriptor: its bounds, replicas and epoch. The first range
/// has none until it splits: it holds every key.
const DESCRIPTOR_FIELD: &[u8] = b"descriptor";
/// The descriptors the range's last split made, which its leader sends the
/// meta range until the meta range holds them (docs/ranges.md).
const SPLIT_OUTCOME_FIELD: &[u8] = b"outcome";
/// The stream key of a snapshot's split outcome: after every value's, before
/// every session's, as its storage key (`r:`…) lies between theirs.
const SPLIT_OUTCOME_STREAM_KEY: &[u8] = b"o:";
/// The meta range's records: `e:` + `meta::record_key` (its end key) for
/// each data range's descriptor. The meta range's values, in a key space
/// of their own, apart from the data ranges' `k:`.
const META_RECORD_PREFIX: &[u8] = b"e:";
/// The stream key of a snapshot's descriptor record, which comes first:
/// it sorts before every value's and session's.
const RANGE_STREAM_KEY: &[u8] = b"d:";
/// Where a follower stages the snapshot it is receiving, under its directory.
const STAGING_DIRECTORY: &str = "snapshot-in";
/// `m:seen:` + big-endian node id: this node has had a consensus message from that peer.
const SEEN_PREFIX: &[u8] = b"m:seen:";
const LOG_FAMILY: &str = "log";
/// Client sessions kept in memory, so that applying a write need not read
/// its session from RocksDB; beyond this the cache starts over.
const SESSIONS_CACHED_COUNT_MAX: usize = 100_000;
/// How much a flush, a compaction or the WAL writes before RocksDB asks the
/// kernel to write it back.
const BACKGROUND_SYNC_BYTES: u64 = 1 << 20;
const VALUE_PREFIX: &[u8] = b"k:";
const SESSION_PREFIX: &[u8] = b"s:";
/// The longest storage key of the state machine: a prefix and the longest
/// client key.
pub const STATE_KEY_BYTES_MAX: usize = 2 + wire::KEY_BYTES_MAX;
/// Options for the SST files a follower stages: RocksDB's defaults, as the
/// database's own files have. The writer borrows them for its lifetime.
static SST_OPTIONS: LazyLock<Options> = LazyLock::new(Options::default);

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
    #[error("storage in {path} holds {ranges} ranges split by a development build from before the meta range (layout 4), which cannot be upgraded in place; start the cluster afresh, or run the rasputind that wrote it")]
    SplitBeforeMeta { path: String, ranges: usize },
    #[error("cannot stage a snapshot in {path}: {source}; check the disk and the directory's permissions")]
    Staging { path: String, source: std::io::Error },
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

/// Why a chunk of a snapshot stream was not written. `Refused` and
/// `OutOfOrder` are the sender's fault: the transfer is dropped and the
/// leader starts another. `Storage` is this node's disk.
#[derive(Debug, Error)]
pub enum ChunkError {
    #[error("snapshot chunk refused: {0}")]
    Refused(#[from] SnapshotDecodeError),
    #[error("snapshot record for key {0:?} is not after the one before it; the sender is misbehaving")]
    OutOfOrder(Vec<u8>),
    #[error("snapshot of range {range} holds key {key:?} outside its bounds, or describes another range; the sender is misbehaving")]
    OutsideRange { range: RangeId, key: Vec<u8> },
    #[error("the meta range's snapshot leaves a gap or an overlap at key {next:?}: its records must tile the key space; the sender is misbehaving")]
    MetaGap { next: Vec<u8> },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Where one range's own state lives: its metadata under `r:` + id, its
/// sessions under `s:` + id, its log under its id in the log family. Its
/// data is not under it: values are shared by every range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RangeKeys {
    id: [u8; 8],
}

impl RangeKeys {
    const fn of(range: RangeId) -> RangeKeys {
        RangeKeys { id: range.to_be_bytes() }
    }

    fn field(&self, field: &[u8]) -> Vec<u8> {
        [RANGE_PREFIX, &self.id, b":", field].concat()
    }

    fn hard_state(&self) -> Vec<u8> {
        self.field(HARD_STATE_FIELD)
    }

    fn applied(&self) -> Vec<u8> {
        self.field(APPLIED_FIELD)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.field(SNAPSHOT_FIELD)
    }

    fn withhold(&self) -> Vec<u8> {
        self.field(WITHHOLD_FIELD)
    }

    fn installing(&self) -> Vec<u8> {
        self.field(INSTALLING_FIELD)
    }

    fn descriptor(&self) -> Vec<u8> {
        self.field(DESCRIPTOR_FIELD)
    }

    fn split_outcome(&self) -> Vec<u8> {
        self.field(SPLIT_OUTCOME_FIELD)
    }

    fn is_meta(&self) -> bool {
        self.range_id() == META_RANGE_ID
    }

    /// Where the range's values live: the shared `k:` space, or for the
    /// meta range its records.
    fn values_prefix(&self) -> &'static [u8] {
        if self.is_meta() {
            META_RECORD_PREFIX
        } else {
            VALUE_PREFIX
        }
    }

    /// The storage keys of the range's values in `descriptor`'s span (none:
    /// every value), as the bounds of an iteration or a range deletion.
    fn value_span(&self, descriptor: Option<&RangeDescriptor>) -> (Vec<u8>, Vec<u8>) {
        if self.is_meta() {
            return (META_RECORD_PREFIX.to_vec(), prefix_end(META_RECORD_PREFIX));
        }
        value_span(descriptor)
    }

    fn range_id(&self) -> RangeId {
        RangeId::from_be_bytes(self.id)
    }

    fn sessions(&self) -> Vec<u8> {
        [SESSION_PREFIX, &self.id].concat()
    }

    fn session(&self, client_id: u64) -> Vec<u8> {
        [SESSION_PREFIX, &self.id, &client_id.to_be_bytes()].concat()
    }

    fn log(&self, index: LogIndex) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&self.id);
        key[8..].copy_from_slice(&index.to_be_bytes());
        key
    }

    /// Sorts after every log key of this range and before the next range's,
    /// to end a range deletion of the whole log.
    fn log_end(&self) -> Vec<u8> {
        [&self.id[..], &[0xff; 9]].concat()
    }

    /// The state machine's prefixes, in the order a snapshot carries them.
    #[cfg(test)]
    fn state_prefixes(&self) -> [Vec<u8>; 2] {
        [self.values_prefix().to_vec(), self.sessions()]
    }
}

/// The first range, which layout 3 held alone.
const FIRST: RangeKeys = RangeKeys::of(FIRST_RANGE_ID);

/// The storage keys of the values in `descriptor`'s span (none: every
/// value), as the bounds of an iteration or a range deletion.
fn value_span(descriptor: Option<&RangeDescriptor>) -> (Vec<u8>, Vec<u8>) {
    let start = descriptor.map_or_else(|| VALUE_PREFIX.to_vec(), |descriptor| value_key(&descriptor.start));
    let end =
        descriptor.and_then(|descriptor| descriptor.end.as_deref()).map_or_else(|| prefix_end(VALUE_PREFIX), value_key);
    (start, end)
}

fn encode_descriptor(descriptor: &RangeDescriptor) -> Vec<u8> {
    wire::to_bytes(&descriptor.to_proto())
}

fn decode_descriptor(bytes: &[u8]) -> Result<RangeDescriptor, StorageError> {
    Ok(state_machine::decode_range(bytes)?)
}

fn value_key(key: &[u8]) -> Vec<u8> {
    [VALUE_PREFIX, key].concat()
}

/// A record's key in a snapshot stream, by which chunks resume: `k:` + key
/// or `s:` + client id, whatever range the records are of, so that nodes
/// agree on it whatever their storage layout.
fn stream_key(record: &Record) -> Result<Vec<u8>, SnapshotDecodeError> {
    match record {
        Record::Value { key, .. } => Ok(value_key(key)),
        Record::Session { client_id, .. } => Ok([SESSION_PREFIX, &client_id.to_be_bytes()].concat()),
        Record::Range { .. } => Ok(RANGE_STREAM_KEY.to_vec()),
        Record::SplitOutcome { .. } => Ok(SPLIT_OUTCOME_STREAM_KEY.to_vec()),
    }
}

fn seen_key(node: NodeId) -> Vec<u8> {
    [SEEN_PREFIX, &node.to_be_bytes()].concat()
}

/// The first key after every key that starts with `prefix`: the prefix
/// with its last byte below 0xff raised, and the bytes after it dropped.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    *end.last_mut().expect("no prefix in this layout is all 0xff bytes") += 1;
    end
}

/// Whether this node's directory was new when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The directory held no data: this node starts with nothing.
    Fresh,
    Existing,
}

/// The node's database: its identity and peers seen, and the ranges it hosts.
pub struct Storage {
    db: Arc<DB>,
    directory: PathBuf,
    members: Vec<NodeId>,
    seen: BTreeSet<NodeId>,
    ranges: BTreeMap<RangeId, RangeStorage>,
}

/// One hosted range's storage: its log, hard state and state machine, in
/// the node's database, under its `RangeKeys`.
pub struct RangeStorage {
    db: Arc<DB>,
    /// Where the range's own state lives.
    keys: RangeKeys,
    applied_index: LogIndex,
    applied_term: Term,
    /// The last stored log index, set by `recover`: an append past it
    /// needs no deletion.
    log_last_index: LogIndex,
    /// The stored descriptor; None for the first range before it splits.
    descriptor: Option<RangeDescriptor>,
    /// The meta range's records, as stored under `e:`; None for a data range.
    meta: Option<MetaRecords>,
    /// The descriptors the range's last split made, if it has split.
    split_outcome: Option<Vec<RangeDescriptor>>,
    /// The cluster's members: the replicas of the first range before it splits.
    members: Vec<NodeId>,
    /// Sessions as stored, for the clients seen lately.
    sessions: HashMap<u64, Session>,
    census: SessionCensus,
    /// No session below this id is left: where the search for the oldest
    /// session starts, so that it does not wade through the tombstones of
    /// expired ones.
    sessions_expired_below: Cell<u64>,
    directory: PathBuf,
    /// A snapshot received whole, waiting for consensus to install it.
    staged: Option<StagedSnapshot>,
}

/// Stamps a new database with the layout version, or checks an existing one's.
/// A database written before versions were stamped has an identity but no
/// version: version 1, whose log lived among the other keys.
fn check_format(db: &DB, path: &str) -> Result<(), StorageError> {
    match db.get(FORMAT_KEY)? {
        Some(stored) if stored == [FORMAT_VERSION] => Ok(()),
        Some(stored) if stored == [3] => migrate_from_3(db),
        Some(stored) if stored == [4] => migrate_from_4(db, path),
        Some(stored) => {
            Err(StorageError::UnknownFormat { path: path.to_string(), found: stored.first().copied().unwrap_or(0) })
        }
        None if db.get(IDENTITY_KEY)?.is_some() => {
            Err(StorageError::UnknownFormat { path: path.to_string(), found: 1 })
        }
        None => Ok(db.put(FORMAT_KEY, [FORMAT_VERSION])?),
    }
}

/// Moves version 3's one range under range 1's keys (`FORMAT_3_FIELDS`,
/// its sessions, its log), in one synced write with the new version, so
/// that a crash leaves either layout whole. The log holds what the last
/// compaction left (`LOG_BYTES_COMPACT_AFTER`), the sessions at most
/// `SESSIONS_COUNT_MAX`: the batch is bounded.
fn migrate_from_3(db: &DB) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    for (old, field) in FORMAT_3_FIELDS {
        if let Some(value) = db.get(old)? {
            batch.put(FIRST.field(field), value);
            batch.delete(old);
        }
    }
    let mut sessions = 0;
    for item in scan(db, SESSION_PREFIX) {
        let (client, value) = item?;
        batch.put(FIRST.session(client_id_of(&client)?), value);
        batch.delete([SESSION_PREFIX, &client].concat());
        sessions += 1;
    }
    let log = db.cf_handle(LOG_FAMILY).expect("the database is opened with the log family");
    let mut entries = 0;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (key, value) = item?;
        let index = <[u8; 8]>::try_from(&key[..])
            .map(u64::from_be_bytes)
            .map_err(|_| StorageError::Impossible(format!("a layout 3 log key of {} bytes", key.len())))?;
        batch.put_cf(log, FIRST.log(index), value);
        batch.delete_cf(log, key);
        entries += 1;
    }
    batch.put(FORMAT_KEY, [FORMAT_VERSION]);
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)?;
    tracing::info!(sessions, entries, "moved the storage from layout 3 to layout 4 (state per range)");
    Ok(())
}

/// Layout 5 adds the meta range, which starts with one record: the first
/// range, covering every key. A layout 4 database that never split is
/// that, and needs only the new version. One that split cannot be
/// upgraded in place: its replicas would each start a meta range from
/// what they alone hold, and their records would differ.
fn migrate_from_4(db: &DB, path: &str) -> Result<(), StorageError> {
    let mut ranges = stored_ranges(db)?;
    ranges.remove(&META_RANGE_ID);
    if ranges.iter().any(|&range| range != FIRST_RANGE_ID) {
        return Err(StorageError::SplitBeforeMeta { path: path.to_string(), ranges: ranges.len() });
    }
    db.put(FORMAT_KEY, [FORMAT_VERSION])?;
    tracing::info!("moved the storage from layout 4 to layout 5 (a meta range)");
    Ok(())
}

/// The key of a meta record: the descriptor's end key, under `e:`.
fn meta_record_key(descriptor: &RangeDescriptor) -> Vec<u8> {
    [META_RECORD_PREFIX, &meta::record_key(descriptor)].concat()
}

/// The meta range's records as stored; a meta range that has recorded
/// nothing yet holds the first range on every member.
fn load_meta_records(db: &DB, members: &[NodeId]) -> Result<MetaRecords, StorageError> {
    let records =
        scan(db, META_RECORD_PREFIX).map(|item| decode_descriptor(&item?.1)).collect::<Result<Vec<_>, _>>()?;
    if records.is_empty() {
        return Ok(MetaRecords::new(RangeDescriptor::first(members.to_vec())));
    }
    let count = records.len();
    MetaRecords::restore(records).ok_or_else(|| {
        StorageError::Impossible(format!("the meta range's {count} stored records do not tile the key space"))
    })
}

fn load_split_outcome(db: &DB, keys: &RangeKeys) -> Result<Option<Vec<RangeDescriptor>>, StorageError> {
    let Some(bytes) = db.get(keys.split_outcome())? else { return Ok(None) };
    Ok(Some(state_machine::decode_meta_update(&bytes)?))
}

/// The ranges whose metadata the database holds, by their `r:` keys: one
/// seek per range, from each range's first field past its last.
fn stored_ranges(db: &DB) -> Result<BTreeSet<RangeId>, StorageError> {
    let mut ranges = BTreeSet::new();
    let mut from = RANGE_PREFIX.to_vec();
    loop {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(prefix_end(RANGE_PREFIX));
        let Some(item) = db.iterator_opt(IteratorMode::From(&from, Direction::Forward), options).next() else { break };
        let (key, _) = item?;
        let id = key.get(RANGE_PREFIX.len()..RANGE_PREFIX.len() + 8).and_then(|id| id.try_into().ok());
        let id = id.map(u64::from_be_bytes).ok_or_else(|| StorageError::Impossible(format!("range key {key:?}")))?;
        ranges.insert(id);
        let Some(next) = id.checked_add(1) else { break };
        from = [RANGE_PREFIX, &next.to_be_bytes()].concat();
    }
    Ok(ranges)
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

fn session_census(db: &DB, keys: &RangeKeys) -> Result<SessionCensus, StorageError> {
    let mut census = SessionCensus::default();
    let prefix = keys.sessions();
    for item in scan(db, &prefix) {
        let (_, value) = item?;
        census.count += 1;
        census.bytes += state_machine::decode_session(&value)?.bytes();
    }
    Ok(census)
}

impl Storage {
    /// Opens (creating if needed) the node's database, and every range it
    /// holds, of a cluster of `members`. RocksDB's own LOCK file keeps a
    /// second daemon out of the same directory.
    pub fn open(directory: &Path, members: &[NodeId]) -> Result<Storage, StorageError> {
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
        let seen = scan(&db, SEEN_PREFIX).map(|item| client_id_of(&item?.0)).collect::<Result<_, _>>()?;
        let mut stored = stored_ranges(&db)?;
        // Every member hosts the first range and the meta range from the start.
        stored.insert(FIRST_RANGE_ID);
        stored.insert(META_RANGE_ID);
        let db = Arc::new(db);
        let mut ranges = BTreeMap::new();
        for range in stored {
            // Opening a range finishes an install a crash interrupted, from its staged file.
            let opened = RangeStorage::open(db.clone(), directory, RangeKeys::of(range), members)?;
            ranges.insert(range, opened);
        }
        // Any other snapshot staged and not installed is of no use after a
        // restart: its transfer is gone, and the leader starts another.
        remove_staging(directory)?;
        Ok(Storage { db, directory: directory.to_path_buf(), members: members.to_vec(), seen, ranges })
    }

    /// The first range, which every node hosts from the start.
    pub fn first_range(&self) -> &RangeStorage {
        &self.ranges[&FIRST_RANGE_ID]
    }

    pub fn first_range_mut(&mut self) -> &mut RangeStorage {
        self.ranges.get_mut(&FIRST_RANGE_ID).expect("open hosts the first range")
    }

    /// The ids of the ranges this node hosts, in order.
    pub fn range_ids(&self) -> impl Iterator<Item = RangeId> + '_ {
        self.ranges.keys().copied()
    }

    pub fn range(&self, range: RangeId) -> Option<&RangeStorage> {
        self.ranges.get(&range)
    }

    pub fn range_mut(&mut self, range: RangeId) -> Option<&mut RangeStorage> {
        self.ranges.get_mut(&range)
    }

    /// Opens the right half of a split that `RangeStorage::apply` just
    /// wrote, with the left half's metadata, in one batch.
    pub fn open_split_off(&mut self, right: &SplitMade) -> Result<&mut RangeStorage, StorageError> {
        let range = right.descriptor.id;
        let opened = RangeStorage::open(self.db.clone(), &self.directory, RangeKeys::of(range), &self.members)?;
        if opened.descriptor.as_ref() != Some(&right.descriptor) {
            return Err(StorageError::Impossible(format!(
                "range {range} was split off, and its descriptor is not stored"
            )));
        }
        Ok(self.ranges.entry(range).or_insert(opened))
    }

    /// Stores and opens an empty replica of `descriptor`'s range, for a
    /// node that missed the split that made it: no state, and votes
    /// withheld (the target (0, 1)) until its leader's snapshot arrives.
    /// Synced, so that a restart finds it as the peers now expect it.
    pub fn open_empty(&mut self, descriptor: &RangeDescriptor) -> Result<&mut RangeStorage, StorageError> {
        assert!(!self.was_replaced()?, "a replacement makes no replica on demand (range {})", descriptor.id);
        let range = descriptor.id;
        let keys = RangeKeys::of(range);
        if self.ranges.contains_key(&range) || self.db.get(keys.descriptor())?.is_some() {
            return Err(StorageError::Impossible(format!(
                "an empty replica of range {range}, which is stored already"
            )));
        }
        let mut batch = WriteBatch::default();
        batch.put(keys.descriptor(), encode_descriptor(descriptor));
        batch.put(keys.withhold(), wire::to_bytes(&proto::AppliedPosition { index: 1, term: 0 }));
        self.write(batch, true)?;
        let opened = RangeStorage::open(self.db.clone(), &self.directory, keys, &self.members)?;
        Ok(self.ranges.entry(range).or_insert(opened))
    }

    /// Stops hosting the meta range, as a replacement does (`Daemon::start_consensus`).
    pub fn stop_hosting_meta(&mut self) {
        self.ranges.remove(&META_RANGE_ID);
    }

    /// Whether this node started as a replacement (`start_replacement`).
    /// Its lost replica of a range may have voted in a term, or helped
    /// commit entries, that an empty replica would not know of: such a
    /// replica needs what a replacement learns from every member, which
    /// membership changes will give it.
    pub fn was_replaced(&self) -> Result<bool, StorageError> {
        Ok(self.db.get(REPLACED_KEY)?.is_some())
    }

    /// The first range's storage, which keeps the database open on its own.
    #[cfg(test)]
    pub(crate) fn into_first_range(mut self) -> RangeStorage {
        self.ranges.remove(&FIRST_RANGE_ID).expect("open hosts the first range")
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

    /// RocksDB's size, both column families: live SST files plus memtables.
    /// A property that cannot be read counts as zero: this is for metrics.
    pub fn size_bytes(&self) -> u64 {
        let families = [self.db.cf_handle("default"), self.db.cf_handle(LOG_FAMILY)];
        let property = |family: &rocksdb::ColumnFamily, name: &str| {
            self.db.property_int_value_cf(family, name).ok().flatten().unwrap_or(0)
        };
        families
            .into_iter()
            .flatten()
            .map(|family| {
                property(family, "rocksdb.total-sst-files-size") + property(family, "rocksdb.cur-size-all-mem-tables")
            })
            .sum()
    }

    /// What another thread needs to read snapshots of the ranges' state.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource { db: self.db.clone() }
    }

    /// Writes `batch`; with `sync`, waits until it is on disk.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        Ok(self.db.write_opt(batch, &options)?)
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
        let thread = std::thread::Builder::new().name("rasputin-sync".into()).spawn(move || {
            for () in requested {
                if finished.send(db.flush_wal(true).map_err(StorageError::from)).is_err() {
                    return;
                }
                waker();
            }
        })?;
        Ok(SyncWorker { thread: Some(thread), requests, done })
    }
}

impl RangeStorage {
    fn open(db: Arc<DB>, directory: &Path, keys: RangeKeys, members: &[NodeId]) -> Result<RangeStorage, StorageError> {
        finish_interrupted_install(&db, &keys)?;
        if keys.is_meta() && db.get(keys.descriptor())?.is_none() {
            // Stored, so that its snapshots carry it as any range's do.
            db.put(keys.descriptor(), encode_descriptor(&RangeDescriptor::meta(members.to_vec())))?;
        }
        let descriptor = db.get(keys.descriptor())?.map(|bytes| decode_descriptor(&bytes)).transpose()?;
        let range = keys.range_id();
        if descriptor.is_none() && range != FIRST_RANGE_ID {
            return Err(StorageError::Impossible(format!("range {range} is stored without its descriptor")));
        }
        if descriptor.as_ref().is_some_and(|descriptor| descriptor.id != range) {
            return Err(StorageError::Impossible(format!(
                "range {range} is stored with the descriptor {descriptor:?}"
            )));
        }
        let applied = match db.get(keys.applied())? {
            Some(bytes) => wire::decode::<proto::AppliedPosition>(bytes.into(), "AppliedPosition")?,
            None => proto::AppliedPosition::default(),
        };
        let census = session_census(&db, &keys)?;
        let meta = keys.is_meta().then(|| load_meta_records(&db, members)).transpose()?;
        let split_outcome = load_split_outcome(&db, &keys)?;
        Ok(RangeStorage {
            db,
            keys,
            applied_index: applied.index,
            applied_term: applied.term,
            log_last_index: 0,
            descriptor,
            meta,
            split_outcome,
            members: members.to_vec(),
            sessions: HashMap::new(),
            census,
            sessions_expired_below: Cell::new(0),
            directory: directory.to_path_buf(),
            staged: None,
        })
    }

    /// The log position a replacement must reach before it votes, if it must.
    pub fn votes_withheld_until(&self) -> Result<Option<(Term, LogIndex)>, StorageError> {
        let Some(bytes) = self.db.get(self.keys.withhold())? else { return Ok(None) };
        let position: proto::AppliedPosition = wire::decode(bytes.into(), "WithheldUntil")?;
        Ok(Some((position.term, position.index)))
    }

    /// Starts a replacement node: it burns its vote in `term` (it may have
    /// voted there before its disk was lost) and withholds votes until its
    /// log is at least as up to date as one ending at `until` (term, index).
    pub fn start_replacement(&self, term: Term, own: NodeId, until: (Term, LogIndex)) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let hard_state = rasputin_consensus::HardState { term, voted_for: Some(own) };
        batch.put(self.keys.hard_state(), wire::to_bytes(&wire::hard_state_to_proto(hard_state)));
        let (term, index) = until;
        batch.put(self.keys.withhold(), wire::to_bytes(&proto::AppliedPosition { index, term }));
        batch.put(REPLACED_KEY, []);
        self.write(batch, true)
    }

    pub fn end_withholding(&self) -> Result<(), StorageError> {
        Ok(self.db.delete(self.keys.withhold())?)
    }

    pub fn applied(&self) -> (LogIndex, Term) {
        (self.applied_index, self.applied_term)
    }

    /// The range this is: its stored descriptor, or for the first range
    /// before any split, every key on every member.
    pub fn descriptor(&self) -> RangeDescriptor {
        self.descriptor.clone().unwrap_or_else(|| RangeDescriptor::first(self.members.clone()))
    }

    /// Everything consensus needs to restart.
    pub fn recover(&mut self) -> Result<Recovered, StorageError> {
        let hard_state = match self.db.get(self.keys.hard_state())? {
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
        let start = self.keys.log(after + 1);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(self.keys.log_end());
        let log = self.db.iterator_cf_opt(self.log_family(), options, IteratorMode::From(&start, Direction::Forward));
        for item in log {
            let (_, value) = item?;
            entries.push(wire::entry_from_proto(wire::decode(value.into_vec().into(), "Entry")?)?);
        }
        self.log_last_index = entries.last().map_or(after, |entry| entry.index);
        Ok(Recovered { hard_state, snapshot, entries, votes_withheld_until: self.votes_withheld_until()? })
    }

    /// Writes `batch` to the node's one database, as `Storage::write` does.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        Ok(self.db.write_opt(batch, &options)?)
    }

    fn log_family(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(LOG_FAMILY).expect("the database is opened with the log family")
    }

    /// The latest snapshot's position. Its data is built when a follower needs it.
    fn stored_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self.db.get(self.keys.snapshot())? else { return Ok(None) };
        let position: proto::AppliedPosition = wire::decode(bytes.into(), "SnapshotPosition")?;
        Ok(Some(Snapshot { last_index: position.index, last_term: position.term, data: Bytes::new() }))
    }

    /// Adds consensus's persist request to `batch`. `log_emptied` says the
    /// node dropped its whole log for an installed snapshot.
    pub fn stage(&mut self, batch: &mut WriteBatch, persist: &Persist, log_emptied: bool) -> Result<(), StorageError> {
        if let Some(hard_state) = persist.hard_state {
            batch.put(self.keys.hard_state(), wire::to_bytes(&wire::hard_state_to_proto(hard_state)));
        }
        if let Some(snapshot) = &persist.snapshot {
            self.stage_install(batch, snapshot, log_emptied)?;
        }
        if let (Some(first), Some(last)) = (persist.entries.first(), persist.entries.last()) {
            let log = self.log_family();
            if first.index <= self.log_last_index {
                batch.delete_range_cf(log, &self.keys.log(first.index)[..], &self.keys.log_end()[..]);
            }
            for entry in &persist.entries {
                batch.put_cf(log, self.keys.log(entry.index), wire::to_bytes(&wire::entry_to_proto(entry)));
            }
            self.log_last_index = last.index;
        }
        Ok(())
    }

    /// Replaces the state machine with the snapshot `offer_staged` holds,
    /// which the daemon staged before it stepped the InstallSnapshot.
    fn stage_install(
        &mut self,
        batch: &mut WriteBatch,
        snapshot: &Snapshot,
        log_emptied: bool,
    ) -> Result<(), StorageError> {
        let position = (snapshot.last_index, snapshot.last_term);
        let staged = self.staged.take();
        let staged = staged.filter(|staged| staged.position == position).unwrap_or_else(|| {
            panic!("consensus installs the snapshot at {position:?}, but none is staged at that position")
        });
        let install = proto::SnapshotInstall {
            index: snapshot.last_index,
            term: snapshot.last_term,
            log_emptied,
            file: staged.file.as_ref().map(|file| file.display().to_string()).unwrap_or_default(),
            range: staged.descriptor.as_ref().map(RangeDescriptor::to_proto),
        };
        replace_state(&self.db, &self.keys, &install)?;
        self.descriptor = staged.descriptor;
        if self.keys.is_meta() {
            self.meta = Some(load_meta_records(&self.db, &self.members)?);
        }
        self.split_outcome = load_split_outcome(&self.db, &self.keys)?;
        stage_finished_install(&self.db, &self.keys, batch, &install);
        if log_emptied {
            self.log_last_index = snapshot.last_index;
        }
        self.sessions.clear();
        self.census = staged.census;
        self.sessions_expired_below.set(0);
        self.applied_index = snapshot.last_index;
        self.applied_term = snapshot.last_term;
        Ok(())
    }

    /// Starts receiving a snapshot at `position`, dropping any staged before.
    pub fn begin_incoming(&mut self, position: (LogIndex, Term)) -> Result<IncomingSnapshot, StorageError> {
        self.clear_staging()?;
        let directory = self.staging_directory();
        std::fs::create_dir_all(&directory)
            .map_err(|source| StorageError::Staging { path: directory.display().to_string(), source })?;
        let path = directory.join(format!("{}-{}.sst", position.0, position.1));
        let writer = SstFileWriter::create(&SST_OPTIONS);
        writer.open(&path)?;
        let keys = self.keys;
        Ok(IncomingSnapshot {
            writer,
            path,
            keys,
            position,
            census: SessionCensus::default(),
            records: 0,
            last_key: None,
            descriptor: None,
            meta_next_start: keys.is_meta().then(Bytes::new),
        })
    }

    /// Holds a snapshot received whole until consensus installs it.
    pub fn offer_staged(&mut self, staged: StagedSnapshot) {
        self.staged = Some(staged);
    }

    /// Removes what is staged and not installed, and the file of an install
    /// that is durable now.
    pub fn clear_staging(&mut self) -> Result<(), StorageError> {
        self.staged = None;
        remove_directory(&self.staging_directory())
    }

    /// Where this range stages the snapshot it receives, apart from other
    /// ranges' (under the node's staging directory).
    fn staging_directory(&self) -> PathBuf {
        let range = RangeId::from_be_bytes(self.keys.id);
        self.directory.join(STAGING_DIRECTORY).join(range.to_string())
    }

    fn stage_applied(&mut self, batch: &mut WriteBatch, index: LogIndex, term: Term) {
        batch.put(self.keys.applied(), wire::to_bytes(&proto::AppliedPosition { index, term }));
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Applies committed entries with one unsynced write: their changes and
    /// the new applied index in one WriteBatch. Each entry sees the changes
    /// of those before it through an overlay. Entries already covered by a
    /// snapshot are skipped. Not synced: committed entries can be applied
    /// again from the log.
    /// `hard_state` is consensus's now: a split's right half starts with it.
    pub fn apply(&mut self, entries: &[Entry], hard_state: HardState) -> Result<Applying, StorageError> {
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay {
            storage: self,
            values: HashMap::new(),
            sessions: BTreeMap::new(),
            census: self.census,
            expired_below: Cell::new(self.sessions_expired_below.get()),
            descriptor: self.descriptor(),
            hard_state,
            splits: Vec::new(),
            meta: self.meta.clone(),
        };
        let mut answers = Vec::new();
        let mut last = None;
        for entry in entries.iter().filter(|entry| entry.index > overlay.storage.applied_index) {
            let decision = state_machine::decide(&overlay, entry, SessionLimits::PRODUCTION)?;
            for change in decision.changes {
                overlay.stage(&mut batch, change, (entry.index, entry.term))?;
            }
            overlay.census = decision.census;
            answers.extend(decision.applied);
            last = Some((entry.index, entry.term));
        }
        let Overlay { sessions, census, expired_below, descriptor, splits, meta, .. } = overlay;
        let Some((index, term)) = last else { return Ok(Applying { answers, splits }) };
        self.stage_applied(&mut batch, index, term);
        self.write(batch, false)?;
        if let Some(split) = splits.last() {
            self.split_outcome = Some(vec![descriptor.clone(), split.descriptor.clone()]);
            self.descriptor = Some(descriptor);
        }
        self.meta = meta;
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
        Ok(Applying { answers, splits })
    }

    /// The descriptors this range's last split made, if it has split.
    pub fn split_outcome(&self) -> Option<&[RangeDescriptor]> {
        self.split_outcome.as_deref()
    }

    /// The meta range's records; None for a data range.
    pub fn meta_records(&self) -> Option<&MetaRecords> {
        self.meta.as_ref()
    }

    pub fn read(&self, key: &[u8]) -> Result<Response, StorageError> {
        state_machine::read_response(self, key, self.applied_term, self.applied_index)
    }

    /// One page of a scan at the applied state, from `start` (a key of
    /// this range: the caller routed it here). The page stops at its
    /// limit, the scan's end or the range's end, where the scan resumes.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Result<ScanPage, StorageError> {
        let (term, index) = (self.applied_term, self.applied_index);
        if end.is_some_and(|end| end <= start) {
            return Ok(ScanPage { pairs: Vec::new(), resume: None, term, index });
        }
        let descriptor = self.descriptor();
        let range_end = descriptor.end.as_deref();
        let boundary = scan::reaches_past(end, range_end).then(|| range_end.map(<[u8]>::to_vec)).flatten();
        let stop = match (end, range_end) {
            (Some(end), Some(range_end)) => Some(end.min(range_end)),
            (end, range_end) => end.or(range_end),
        };
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(stop.map_or_else(|| prefix_end(VALUE_PREFIX), value_key));
        let from = value_key(start);
        let pairs = self.db.iterator_opt(IteratorMode::From(&from, Direction::Forward), options).map(|item| {
            let (key, value) = item?;
            Ok::<_, StorageError>((key[VALUE_PREFIX.len()..].to_vec(), value.into_vec()))
        });
        let (pairs, resume) = scan::fill_page(pairs, limit, boundary)?;
        Ok(ScanPage { pairs, resume, term, index })
    }

    /// Every record of the state machine, as stored.
    #[cfg(test)]
    pub(crate) fn state_records(&self) -> Result<Vec<(Box<[u8]>, Box<[u8]>)>, StorageError> {
        let prefixes = self.keys.state_prefixes();
        prefixes.iter().flat_map(|prefix| scan(&self.db, prefix)).collect()
    }

    /// The batch that compacts the log up to `index` (of `term`), at most the
    /// applied index: once synced, with the applied state written before it
    /// in the WAL, it records the snapshot's position; the log it covers
    /// goes. Recovery applies again what lies past `index`.
    pub fn compaction(&self, index: LogIndex, term: Term) -> (WriteBatch, Snapshot) {
        assert!(index <= self.applied_index, "compacting to {index}, past the applied index {}", self.applied_index);
        let mut batch = WriteBatch::default();
        batch.put(self.keys.snapshot(), wire::to_bytes(&proto::AppliedPosition { index, term }));
        batch.delete_range_cf(self.log_family(), self.keys.log(0), self.keys.log(index + 1));
        (batch, Snapshot { last_index: index, last_term: term, data: Bytes::new() })
    }
}

/// The sync thread: one sync is requested at a time, and its outcome comes back.
pub struct SyncWorker {
    /// Joined on drop, like the snapshot thread (see `Drop for Streams`).
    thread: Option<std::thread::JoinHandle<()>>,
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

impl Drop for SyncWorker {
    /// Stops the sync thread and waits for it, so that no thread holds the
    /// database when the process exits.
    fn drop(&mut self) {
        let (closed_requests, _) = std::sync::mpsc::sync_channel(0);
        let (_, closed_done) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.requests, closed_requests));
        drop(std::mem::replace(&mut self.done, closed_done));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads snapshots of every range's state machine off the event loop.
#[derive(Clone)]
pub struct SnapshotSource {
    db: Arc<DB>,
}

/// One chunk read from a snapshot view.
#[derive(Debug)]
pub struct ReadChunk {
    pub data: Bytes,
    /// The storage key of the chunk's last record: the next chunk starts after it.
    pub last_key: Option<Vec<u8>>,
    pub last: bool,
}

impl SnapshotSource {
    /// Serves `requests` until the channel closes, keeping a RocksDB
    /// snapshot (a consistent view the event loop writes past) per open
    /// transfer. Every request gets one answer on `answers`, and `wake`
    /// is called after each.
    pub fn serve(
        &self,
        requests: std::sync::mpsc::Receiver<ViewRequest>,
        answers: std::sync::mpsc::SyncSender<ViewAnswer>,
        wake: impl Fn(),
    ) {
        let mut views = HashMap::new();
        for request in requests {
            let answer = match request {
                ViewRequest::Open { transfer, range } => {
                    let view = self.db.snapshot();
                    let keys = RangeKeys::of(range);
                    let position = applied_position(&view, &keys);
                    if position.is_ok() {
                        views.insert(transfer, (view, keys));
                    }
                    ViewAnswer::Opened { transfer, position }
                }
                ViewRequest::Chunk { transfer, sequence, position, after } => {
                    let chunk = match views.get(&transfer) {
                        Some((view, keys)) => read_chunk(view, keys, position, sequence, after.as_deref()),
                        None => Err(StorageError::Impossible(format!("no view is open for transfer {transfer}"))),
                    };
                    ViewAnswer::Chunk { transfer, sequence, chunk }
                }
                ViewRequest::Close { transfer } => {
                    views.remove(&transfer);
                    ViewAnswer::Closed { transfer }
                }
            };
            if answers.send(answer).is_err() {
                return;
            }
            wake();
        }
    }
}

/// What the event loop asks of the snapshot thread.
#[derive(Debug)]
pub enum ViewRequest {
    /// Open a view of `range`'s state as it is now.
    Open {
        transfer: u64,
        range: RangeId,
    },
    /// Read chunk `sequence`, from the first key after `after` (None: the start).
    Chunk {
        transfer: u64,
        sequence: u64,
        position: (LogIndex, Term),
        after: Option<Vec<u8>>,
    },
    Close {
        transfer: u64,
    },
}

#[derive(Debug)]
pub enum ViewAnswer {
    /// The view is open at this applied position.
    Opened {
        transfer: u64,
        position: Result<(LogIndex, Term), StorageError>,
    },
    Chunk {
        transfer: u64,
        sequence: u64,
        chunk: Result<ReadChunk, StorageError>,
    },
    Closed {
        transfer: u64,
    },
}

fn applied_position(view: &rocksdb::Snapshot, keys: &RangeKeys) -> Result<(LogIndex, Term), StorageError> {
    let applied = match view.get(keys.applied())? {
        Some(bytes) => wire::decode::<proto::AppliedPosition>(bytes.into(), "AppliedPosition")?,
        None => proto::AppliedPosition::default(),
    };
    Ok((applied.index, applied.term))
}

/// Reads the records after stream key `after` (see `stream_key`) into one
/// chunk, as many as fit: the range's descriptor (if it has one), every
/// value in its span in key order (the meta range's records), its last
/// split's outcome, then every session.
fn read_chunk(
    view: &rocksdb::Snapshot,
    keys: &RangeKeys,
    position: (LogIndex, Term),
    sequence: u64,
    after: Option<&[u8]>,
) -> Result<ReadChunk, StorageError> {
    let mut fill = ChunkFill { writer: ChunkWriter::new(position.0, position.1, sequence), last_key: None, after };
    let stored_descriptor = view.get(keys.descriptor())?;
    let descriptor = stored_descriptor.as_deref().map(decode_descriptor).transpose()?;
    if let Some(stored) = &stored_descriptor {
        fill.push(&Record::Range { descriptor: stored })?;
    }
    let (values_start, values_end) = keys.value_span(descriptor.as_ref());
    if !fill.section(view, keys.values_prefix(), VALUE_PREFIX, values_start, values_end)? {
        return Ok(fill.finish(false));
    }
    if let Some(update) = view.get(keys.split_outcome())? {
        if !fill.push(&Record::SplitOutcome { update: &update })? {
            return Ok(fill.finish(false));
        }
    }
    let sessions = keys.sessions();
    let sessions_end = prefix_end(&sessions);
    let whole = fill.section(view, &sessions, SESSION_PREFIX, sessions.clone(), sessions_end)?;
    Ok(fill.finish(whole))
}

/// A chunk being filled with the records after a stream key.
struct ChunkFill<'a> {
    writer: ChunkWriter,
    last_key: Option<Vec<u8>>,
    after: Option<&'a [u8]>,
}

impl ChunkFill<'_> {
    /// Adds `record` unless the stream has sent it already; false if it
    /// does not fit, and the chunk is full.
    fn push(&mut self, record: &Record) -> Result<bool, StorageError> {
        let key = stream_key(record)?;
        if self.after.is_some_and(|after| key[..] <= *after) {
            return Ok(true);
        }
        if !self.writer.fits(record) {
            return Ok(false);
        }
        self.writer.push(record);
        self.last_key = Some(key);
        Ok(true)
    }

    /// Adds the records stored from `lowest` to `upper_bound` under
    /// `prefix`, whose stream keys are under `stream_prefix`; false if the
    /// chunk filled before the last.
    fn section(
        &mut self,
        view: &rocksdb::Snapshot,
        prefix: &[u8],
        stream_prefix: &[u8],
        lowest: Vec<u8>,
        upper_bound: Vec<u8>,
    ) -> Result<bool, StorageError> {
        let start = match self.after {
            Some(after) if after >= &prefix_end(stream_prefix)[..] => return Ok(true),
            Some(after) if after >= stream_prefix => [prefix, &after[stream_prefix.len()..]].concat().max(lowest),
            _ => lowest,
        };
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(upper_bound);
        // A whole-state scan would only push hot blocks out of the cache.
        options.fill_cache(false);
        for item in view.iterator_opt(IteratorMode::From(&start, Direction::Forward), options) {
            let (key, value) = item?;
            if !self.push(&state_record(stream_prefix, &key[prefix.len()..], &value)?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn finish(self, last: bool) -> ReadChunk {
        ReadChunk { data: self.writer.finish(last).into(), last_key: self.last_key, last }
    }
}

/// The record stored under `key` (its prefix gone) of the state under `kind`
/// (`VALUE_PREFIX` or `SESSION_PREFIX`).
fn state_record<'a>(kind: &[u8], key: &'a [u8], value: &'a [u8]) -> Result<Record<'a>, StorageError> {
    Ok(if kind == VALUE_PREFIX {
        Record::Value { key, value }
    } else {
        Record::Session { client_id: client_id_of(key)?, session: value }
    })
}

impl RangeKeys {
    /// The storage key a record of this range is kept under.
    fn record(&self, record: &Record) -> Result<Vec<u8>, SnapshotDecodeError> {
        match record {
            Record::Session { client_id, .. } => Ok(self.session(*client_id)),
            Record::Value { key, .. } => Ok([self.values_prefix(), key].concat()),
            Record::SplitOutcome { .. } => Ok(self.split_outcome()),
            record => stream_key(record),
        }
    }
}

/// A snapshot being received: its records go straight into an SST file,
/// which must get them in key order.
pub struct IncomingSnapshot {
    writer: SstFileWriter<'static>,
    path: PathBuf,
    keys: RangeKeys,
    position: (LogIndex, Term),
    census: SessionCensus,
    records: u64,
    last_key: Option<Vec<u8>>,
    /// The range the snapshot is of, from its first record (none: the
    /// first range, never split).
    descriptor: Option<RangeDescriptor>,
    /// Where the meta range's next record must start, so that the records
    /// tile the key space; None once the last (unbounded) one came.
    meta_next_start: Option<Bytes>,
}

impl IncomingSnapshot {
    /// Writes a chunk whose header and checksum the caller has checked.
    pub fn write(&mut self, chunk: &ChunkReader) -> Result<(), ChunkError> {
        for record in chunk.records() {
            let record = record?;
            let key = stream_key(&record)?;
            if self.last_key.as_ref().is_some_and(|last| &key <= last) {
                return Err(ChunkError::OutOfOrder(key));
            }
            // Stream order is storage order: values, then sessions by id.
            let stored = self.keys.record(&record)?;
            let value = match record {
                Record::Value { key, value } => {
                    if self.descriptor.as_ref().is_some_and(|descriptor| !descriptor.contains(key)) {
                        return Err(ChunkError::OutsideRange { range: self.keys.range_id(), key: key.to_vec() });
                    }
                    if self.keys.is_meta() {
                        self.check_meta_record(key, value)?;
                    }
                    value
                }
                Record::Session { session, .. } => {
                    self.census.count += 1;
                    self.census.bytes += state_machine::decode_session(session)?.bytes();
                    session
                }
                Record::Range { descriptor } => {
                    // The first record, by its stream key, and of this range.
                    let descriptor = state_machine::decode_range(descriptor)?;
                    if descriptor.id != self.keys.range_id() {
                        return Err(ChunkError::OutsideRange { range: self.keys.range_id(), key: key.clone() });
                    }
                    self.descriptor = Some(descriptor);
                    self.last_key = Some(key);
                    continue;
                }
                Record::SplitOutcome { update } => {
                    state_machine::decode_meta_update(update)?;
                    update
                }
            };
            self.writer.put(&stored, value).map_err(StorageError::from)?;
            self.records += 1;
            self.last_key = Some(key);
        }
        if chunk.last && self.keys.is_meta() && self.meta_next_start.is_some() {
            // Records that stop before the last range would leave keys unroutable.
            return Err(ChunkError::MetaGap { next: self.meta_next_start.clone().unwrap_or_default().to_vec() });
        }
        Ok(())
    }

    /// A meta record must be a descriptor, stored under its own end key,
    /// starting where the one before it ended.
    fn check_meta_record(&mut self, key: &[u8], value: &[u8]) -> Result<(), ChunkError> {
        let descriptor = state_machine::decode_range(value)?;
        let range = self.keys.range_id();
        if key != meta::record_key(&descriptor) || descriptor.is_meta() {
            return Err(ChunkError::OutsideRange { range, key: key.to_vec() });
        }
        match &self.meta_next_start {
            Some(start) if *start == descriptor.start => {
                self.meta_next_start = descriptor.end;
                Ok(())
            }
            _ => Err(ChunkError::MetaGap { next: descriptor.start.to_vec() }),
        }
    }

    /// The stream key (see `stream_key`) of the last record written.
    pub fn last_key(&self) -> Option<&[u8]> {
        self.last_key.as_deref()
    }

    /// Closes the file; the snapshot waits for consensus to install it.
    pub fn finish(mut self) -> Result<StagedSnapshot, StorageError> {
        let file = if self.records == 0 {
            // RocksDB writes no SST file without a key: an empty state has none.
            None
        } else {
            self.writer.finish()?;
            Some(self.path.clone())
        };
        Ok(StagedSnapshot { position: self.position, file, census: self.census, descriptor: self.descriptor })
    }
}

/// A snapshot received whole and written to an SST file.
#[derive(Debug)]
pub struct StagedSnapshot {
    position: (LogIndex, Term),
    file: Option<PathBuf>,
    census: SessionCensus,
    descriptor: Option<RangeDescriptor>,
}

impl StagedSnapshot {
    /// The range the snapshot is of; None: the first range, never split.
    pub fn descriptor(&self) -> Option<&RangeDescriptor> {
        self.descriptor.as_ref()
    }
}

/// Removes every range's staged snapshots, under the node's `directory`.
fn remove_staging(directory: &Path) -> Result<(), StorageError> {
    remove_directory(&directory.join(STAGING_DIRECTORY))
}

fn remove_directory(staging: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(staging) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(StorageError::Staging { path: staging.display().to_string(), source })
        }
        _ => Ok(()),
    }
}

/// Drops the state machine and ingests the staged file in its place. The
/// marker goes first, with the deletions, in one synced write: from then on
/// recovery finishes the install (`finish_interrupted_install`), which is
/// why this may run again on the same file.
fn replace_state(db: &DB, keys: &RangeKeys, install: &proto::SnapshotInstall) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    batch.put(keys.installing(), wire::to_bytes(install));
    // The snapshot's descriptor comes in with the deletions, so that a
    // restart finds the range's new bounds with whatever data it holds.
    // Values outside its span are other ranges' (or no range's, until the
    // range that holds them installs its own snapshot), and stay.
    let descriptor = match &install.range {
        Some(range) => {
            let descriptor = RangeDescriptor::from_proto(range.clone())
                .map_err(|error| StorageError::Impossible(format!("a snapshot install's descriptor: {error}")))?;
            batch.put(keys.descriptor(), encode_descriptor(&descriptor));
            Some(descriptor)
        }
        None => {
            batch.delete(keys.descriptor());
            None
        }
    };
    let (values_start, values_end) = keys.value_span(descriptor.as_ref());
    batch.delete_range(values_start, values_end);
    batch.delete(keys.split_outcome());
    let sessions = keys.sessions();
    let sessions_end = prefix_end(&sessions);
    batch.delete_range(sessions, sessions_end);
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)?;
    if install.file.is_empty() {
        return Ok(());
    }
    // RocksDB moves what it ingests; a hard link goes in, so that the staged
    // name stays for a second attempt, without a copy of the data.
    let staged = Path::new(&install.file);
    let link = staged.with_extension("ingest");
    let staging = |source| StorageError::Staging { path: install.file.clone(), source };
    match std::fs::remove_file(&link) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(staging(error)),
        _ => {}
    }
    std::fs::hard_link(staged, &link).map_err(staging)?;
    let mut options = IngestExternalFileOptions::default();
    options.set_move_files(true);
    db.ingest_external_file_opts(&options, vec![link])?;
    Ok(())
}

/// What completes an install once the data is in: the applied position,
/// the snapshot's position, the log it covers gone, the marker gone.
fn stage_finished_install(db: &DB, keys: &RangeKeys, batch: &mut WriteBatch, install: &proto::SnapshotInstall) {
    let log = db.cf_handle(LOG_FAMILY).expect("the database is opened with the log family");
    if install.log_emptied {
        batch.delete_range_cf(log, &keys.log(0)[..], &keys.log_end()[..]);
    } else {
        batch.delete_range_cf(log, keys.log(0), keys.log(install.index + 1));
    }
    let position = proto::AppliedPosition { index: install.index, term: install.term };
    batch.put(keys.snapshot(), wire::to_bytes(&position));
    batch.put(keys.applied(), wire::to_bytes(&position));
    batch.delete(keys.installing());
}

/// Finishes a snapshot install that a crash interrupted, from its staged
/// file, before anything reads the state.
fn finish_interrupted_install(db: &DB, keys: &RangeKeys) -> Result<(), StorageError> {
    let Some(bytes) = db.get(keys.installing())? else { return Ok(()) };
    let install: proto::SnapshotInstall = wire::decode(bytes.into(), "SnapshotInstall")?;
    if !install.file.is_empty() && !Path::new(&install.file).exists() {
        return Err(StorageError::Impossible(format!(
            "a snapshot install at index {} was interrupted, and its staged file {} is gone",
            install.index, install.file
        )));
    }
    tracing::warn!(index = install.index, term = install.term, "finishing a snapshot install that was interrupted");
    replace_state(db, keys, &install)?;
    let mut batch = WriteBatch::default();
    stage_finished_install(db, keys, &mut batch, &install);
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)?;
    Ok(())
}

/// The state as a batch of applies leaves it: staged changes over the database.
struct Overlay<'a> {
    storage: &'a RangeStorage,
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Sessions written (Some) or expired (None) by this batch.
    sessions: BTreeMap<u64, Option<Session>>,
    census: SessionCensus,
    /// Every stored session below this id has expired, in the database or in
    /// this batch: where the search for the oldest starts, so that a batch
    /// that expires many sessions does not pass over them again each time.
    expired_below: Cell<u64>,
    /// The range as this batch leaves it: a split shrinks it.
    descriptor: RangeDescriptor,
    /// The hard state the right half of a split starts with: its parent's here.
    hard_state: HardState,
    splits: Vec<SplitMade>,
    /// The meta range's records as this batch leaves them; None for a data range.
    meta: Option<MetaRecords>,
}

/// The right half of a split this node applied: stored with the left
/// half's new bounds, in the same batch, and ready to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMade {
    pub descriptor: RangeDescriptor,
    /// The split entry's (index, term): the new range's snapshot position.
    pub position: (LogIndex, Term),
}

/// What a batch of committed entries did.
#[derive(Debug, Default)]
pub struct Applying {
    pub answers: Vec<Applied>,
    pub splits: Vec<SplitMade>,
}

impl Overlay<'_> {
    fn stage(
        &mut self,
        batch: &mut WriteBatch,
        change: Change,
        position: (LogIndex, Term),
    ) -> Result<(), StorageError> {
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
                batch.put(self.storage.keys.session(client_id), state_machine::encode_session(&session));
                self.sessions.insert(client_id, Some(session));
            }
            Change::EndSession { client_id } => {
                batch.delete(self.storage.keys.session(client_id));
                self.sessions.insert(client_id, None);
            }
            Change::Split { left, right } => self.stage_split(batch, left, right, position)?,
            Change::Meta { descriptors } => {
                let records = self.meta.as_mut().expect("decide records meta updates in the meta range only");
                for replaced in records.replace(&descriptors) {
                    batch.delete(meta_record_key(&replaced));
                }
                for descriptor in &descriptors {
                    batch.put(meta_record_key(descriptor), encode_descriptor(descriptor));
                }
            }
        }
        Ok(())
    }

    /// The left half's new bounds and the whole right half: its descriptor,
    /// its position (the split entry's), the hard state consensus gives it
    /// (`Node::split_off`: its parent's) and a copy of every session, so
    /// that a restart never finds one half without the other.
    fn stage_split(
        &mut self,
        batch: &mut WriteBatch,
        left: RangeDescriptor,
        right: RangeDescriptor,
        (index, term): (LogIndex, Term),
    ) -> Result<(), StorageError> {
        let db = &self.storage.db;
        let right_keys = RangeKeys::of(right.id);
        if db.get(right_keys.applied())?.is_some() || db.get(right_keys.descriptor())?.is_some() {
            return Err(StorageError::Impossible(format!(
                "a split at index {index} makes range {}, which this node holds already",
                right.id
            )));
        }
        batch.put(self.storage.keys.descriptor(), encode_descriptor(&left));
        batch.put(self.storage.keys.split_outcome(), state_machine::meta_update_bytes(&[left.clone(), right.clone()]));
        batch.put(right_keys.descriptor(), encode_descriptor(&right));
        let position = wire::to_bytes(&proto::AppliedPosition { index, term });
        batch.put(right_keys.applied(), &position);
        batch.put(right_keys.snapshot(), &position);
        batch.put(right_keys.hard_state(), wire::to_bytes(&wire::hard_state_to_proto(self.hard_state)));
        for item in scan(db, &self.storage.keys.sessions()) {
            let (client, stored) = item?;
            let client_id = client_id_of(&client)?;
            if !self.sessions.contains_key(&client_id) {
                batch.put(right_keys.session(client_id), stored);
            }
        }
        for (&client_id, session) in &self.sessions {
            if let Some(session) = session {
                batch.put(right_keys.session(client_id), state_machine::encode_session(session));
            }
        }
        self.descriptor = left;
        self.splits.push(SplitMade { descriptor: right, position: (index, term) });
        Ok(())
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

    fn range(&self) -> Result<Option<RangeDescriptor>, StorageError> {
        Ok(Some(self.descriptor.clone()))
    }

    fn meta(&self) -> Option<&MetaRecords> {
        self.meta.as_ref()
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

impl KvRead for RangeStorage {
    type Error = StorageError;

    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(value_key(key))?)
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError> {
        if let Some(session) = self.sessions.get(&client_id) {
            return Ok(Some(session.clone()));
        }
        match self.db.get(self.keys.session(client_id))? {
            Some(bytes) => Ok(Some(state_machine::decode_session(&bytes)?)),
            None => Ok(None),
        }
    }

    fn range(&self) -> Result<Option<RangeDescriptor>, StorageError> {
        Ok(Some(self.descriptor()))
    }

    fn meta(&self) -> Option<&MetaRecords> {
        self.meta.as_ref()
    }

    fn census(&self) -> SessionCensus {
        self.census
    }

    fn oldest_session_from(&self, from: u64) -> Result<Option<(u64, Session)>, StorageError> {
        let lowest_left = self.sessions_expired_below.get();
        let start = self.keys.session(from.max(lowest_left));
        let prefix = self.keys.sessions();
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(prefix_end(&prefix));
        let first = self.db.iterator_opt(IteratorMode::From(&start, Direction::Forward), options).next();
        let Some(item) = first else { return Ok(None) };
        let (key, value) = item?;
        let client_id = client_id_of(&key[prefix.len()..])?;
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
    use rasputin_kv::meta::MetaError;
    use rasputin_kv::operation::Persist;
    use rasputin_kv::operation::{ClientRequest, EntryPayload, Operation};
    use rasputin_kv::state_machine::Refusal;

    const MEMBERS: [NodeId; 3] = [1, 2, 3];

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
    fn a_scan_reads_values_only_in_key_order_and_resumes_where_it_stopped() {
        let directory = temporary("scan");
        let mut storage = Storage::open(&directory, &MEMBERS).unwrap().into_first_range();
        let put = |index, key: &'static [u8]| {
            let value = bytes::Bytes::from_static(b"v");
            command(index, 1, index - 1, Operation::Set { key: bytes::Bytes::from_static(key), value })
        };
        let entries = [open(1), put(2, b"b"), put(3, b"\xff"), put(4, b"a"), put(5, b""), put(6, b"c")];
        storage.apply(&entries, HardState::default()).unwrap();
        let keys = |page: &ScanPage| page.pairs.iter().map(|pair| pair.key.clone()).collect::<Vec<_>>();
        let all = storage.scan(b"", None, 0).unwrap();
        assert_eq!(keys(&all), [&b""[..], b"a", b"b", b"c", b"\xff"], "sessions and metadata are not values");
        assert_eq!((all.resume, all.index), (None, 6));
        let first = storage.scan(b"a", None, 2).unwrap();
        assert_eq!((keys(&first), first.resume.as_deref()), (vec![b"a".to_vec(), b"b".to_vec()], Some(&b"c"[..])));
        assert_eq!(keys(&storage.scan(b"a", Some(b"c"), 0).unwrap()), [b"a", b"b"]);
        assert!(storage.scan(b"c", Some(b"a"), 0).unwrap().pairs.is_empty());
        drop(storage);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_batch_of_applies_sees_its_own_earlier_changes() {
        let directory = temporary("batch");
        let mut storage = Storage::open(&directory, &MEMBERS).unwrap().into_first_range();
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
        let answers = storage.apply(&entries, HardState::default()).unwrap().answers;
        assert_eq!(answers.len(), 5);
        let response = |index: usize| answers[index].outcome.clone().unwrap();
        assert!(response(3).success && response(3).value == b"two", "{:?}", answers[3]);
        assert_eq!(response(4).index, response(2).index, "the retry was applied again");
        assert_eq!(storage.value(b"k").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(storage.applied(), (5, 1));
        // Entries at or below the applied index are not applied twice.
        assert!(storage.apply(&entries, HardState::default()).unwrap().answers.is_empty());

        // A conflicting append drops the old suffix; compaction drops the prefix.
        let persist = |entries: Vec<Entry>| Persist { hard_state: Some(HardState::default()), entries, snapshot: None };
        let stage_and_write = |storage: &mut RangeStorage, entries: Vec<Entry>| {
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

    /// A snapshot read chunk by chunk from a view installs into another
    /// store, and an install cut short after the old data went (a crash)
    /// is finished when the store opens again: the state is the source's,
    /// sessions and their census included.
    #[test]
    fn an_install_interrupted_by_a_crash_is_finished_at_recovery() {
        let (from, to) = (temporary("source"), temporary("target"));
        let mut source = Storage::open(&from, &MEMBERS).unwrap().into_first_range();
        let mut entries = vec![open(1), open(2)];
        entries.extend((3..50).map(|index| command(index, 1 + index % 2, index, set(&index.to_be_bytes()))));
        source.apply(&entries, HardState::default()).unwrap();
        let mut target = Storage::open(&to, &MEMBERS).unwrap().into_first_range();
        target.apply(&[open(1), command(2, 1, 1, set(b"stale"))], HardState::default()).unwrap();
        let view = source.db.snapshot();
        let position = applied_position(&view, &FIRST).unwrap();
        assert_eq!(position, (49, 1));
        let mut incoming = target.begin_incoming(position).unwrap();
        let chunk = read_chunk(&view, &FIRST, position, 0, None).unwrap();
        assert!(chunk.last, "a small state fits in one chunk");
        incoming.write(&ChunkReader::new(&chunk.data).unwrap()).unwrap();
        let staged = incoming.finish().unwrap();
        let install = proto::SnapshotInstall {
            index: 49,
            term: 1,
            log_emptied: true,
            file: staged.file.as_ref().unwrap().display().to_string(),
            range: None,
        };
        replace_state(&target.db, &FIRST, &install).unwrap();
        drop(target);
        let target = Storage::open(&to, &MEMBERS).unwrap().into_first_range();
        assert_eq!(target.applied(), (49, 1));
        assert_eq!(target.census(), source.census());
        assert_eq!(target.value(b"k").unwrap(), source.value(b"k").unwrap());
        assert!(target.state_records().unwrap() == source.state_records().unwrap(), "the installed state is the same");
        assert!(target.db.get(FIRST.installing()).unwrap().is_none(), "the marker is gone");
        assert!(!to.join(STAGING_DIRECTORY).exists(), "the staged file is gone");
        drop(view);
        drop((source, target));
        std::fs::remove_dir_all(&from).unwrap();
        std::fs::remove_dir_all(&to).unwrap();
    }

    fn put(index: LogIndex, key: &'static [u8], value: &'static [u8]) -> Entry {
        let operation = Operation::Set { key: bytes::Bytes::from_static(key), value: bytes::Bytes::from_static(value) };
        command(index, 1, index, operation)
    }

    fn split(index: LogIndex, key: &'static [u8], right_range: RangeId) -> Entry {
        let operation = Operation::Split { key: bytes::Bytes::from_static(key), right_range, version: 0 };
        command(index, 0, 5_000 + index, operation)
    }

    /// Issue 17: a split's apply stores the left half's new bounds and the
    /// whole right half (descriptor, position, hard state, sessions) in one
    /// batch; both halves reopen after a restart, and each refuses the
    /// other's keys from then on.
    #[test]
    fn a_split_stores_both_halves_and_both_reopen_after_a_restart() {
        let directory = temporary("split");
        let mut storage = Storage::open(&directory, &MEMBERS).unwrap();
        let hard_state = HardState { term: 1, voted_for: Some(2) };
        let entries =
            [open(1), put(2, b"a", b"left"), put(3, b"x", b"right"), split(4, b"m", 9), put(5, b"y", b"late")];
        let applying = storage.first_range_mut().apply(&entries, hard_state).unwrap();
        let [made] = &applying.splits[..] else { panic!("one split: {:?}", applying.splits) };
        assert_eq!((made.descriptor.id, &made.descriptor.start[..], made.position), (9, &b"m"[..], (4, 1)));
        let refused = applying.answers.last().unwrap().outcome.clone();
        assert!(matches!(refused, Err(Refusal::RangeMismatch { .. })), "a write after the split: {refused:?}");
        assert_eq!(storage.first_range().descriptor().end.as_deref(), Some(&b"m"[..]));
        assert_eq!(storage.first_range().descriptor().epoch.version, 1);
        storage.open_split_off(made).unwrap();
        drop(storage);

        let mut storage = Storage::open(&directory, &MEMBERS).unwrap();
        assert_eq!(storage.range_ids().collect::<Vec<_>>(), vec![FIRST_RANGE_ID, 9, META_RANGE_ID]);
        let outcome = storage.first_range().split_outcome().map(|outcome| outcome.to_vec());
        assert_eq!(
            outcome,
            Some(vec![storage.first_range().descriptor(), made.descriptor.clone()]),
            "for the meta range"
        );
        let right = storage.range_mut(9).unwrap();
        let recovered = right.recover().unwrap();
        assert_eq!(recovered.hard_state, hard_state, "the right half starts with its parent's vote");
        assert_eq!(recovered.snapshot.map(|snapshot| (snapshot.last_index, snapshot.last_term)), Some((4, 1)));
        assert_eq!(right.applied(), (4, 1));
        assert!(right.session(1).unwrap().is_some(), "the session came with the split");
        assert_eq!(right.value(b"x").unwrap().as_deref(), Some(&b"right"[..]), "a split moves no data");
        let late = right.apply(&[put(5, b"y", b"late")], hard_state).unwrap().answers;
        assert!(late[0].outcome.is_ok(), "the right half takes its keys: {late:?}");
        let left = storage.first_range_mut();
        assert_eq!(left.descriptor().end.as_deref(), Some(&b"m"[..]));
        let stray = left.apply(&[put(6, b"z", b"stray")], hard_state).unwrap().answers;
        assert!(matches!(stray[0].outcome, Err(Refusal::RangeMismatch { .. })), "{stray:?}");
        drop(storage);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// Issue 17: an empty replica, made for a range whose split this node
    /// missed, is stored with its descriptor and its votes withheld, holds
    /// nothing, and reopens so after a restart; a replacement is marked.
    #[test]
    fn an_empty_replica_reopens_withholding_and_a_replacement_is_marked() {
        let directory = temporary("empty-replica");
        let mut storage = Storage::open(&directory, &MEMBERS).unwrap();
        let (_, right) = storage.first_range().descriptor().split_at(&Bytes::from_static(b"m"), 0, 9).unwrap();
        assert!(!storage.was_replaced().unwrap());
        storage.open_empty(&right).unwrap();
        assert!(storage.open_empty(&right).is_err(), "a range is made once");
        drop(storage);
        let mut storage = Storage::open(&directory, &MEMBERS).unwrap();
        let empty = storage.range_mut(9).expect("the empty replica reopens");
        assert_eq!(empty.descriptor(), right);
        assert_eq!(empty.applied(), (0, 0));
        let recovered = empty.recover().unwrap();
        assert_eq!(recovered.votes_withheld_until, Some((0, 1)), "until its leader's snapshot arrives");
        assert_eq!((recovered.hard_state, recovered.entries.len()), (HardState::default(), 0));
        storage.first_range().start_replacement(3, 2, (3, 10)).unwrap();
        assert!(storage.was_replaced().unwrap());
        drop(storage);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// Issue 17: a split range's snapshot carries its descriptor and only
    /// the values in its bounds; installing it replaces those values only,
    /// and a snapshot holding a key outside the bounds it names is refused.
    #[test]
    fn a_split_range_snapshot_carries_its_bounds_and_replaces_only_its_keys() {
        let (from, to) = (temporary("bounded-source"), temporary("bounded-target"));
        let mut source = Storage::open(&from, &MEMBERS).unwrap();
        let entries = [open(1), put(2, b"a", b"new"), put(3, b"x", b"right"), split(4, b"m", 9)];
        source.first_range_mut().apply(&entries, HardState::default()).unwrap();
        let mut target = Storage::open(&to, &MEMBERS).unwrap().into_first_range();
        target.apply(&[open(1), put(2, b"a", b"stale"), put(3, b"y", b"other")], HardState::default()).unwrap();

        let view = source.db.snapshot();
        let position = applied_position(&view, &FIRST).unwrap();
        let chunk = read_chunk(&view, &FIRST, position, 0, None).unwrap();
        let reader = ChunkReader::new(&chunk.data).unwrap();
        let records: Vec<Record> = reader.records().collect::<Result<_, _>>().unwrap();
        assert!(matches!(records[0], Record::Range { .. }), "the descriptor comes first: {records:?}");
        let values: Vec<&[u8]> = records
            .iter()
            .filter_map(|record| if let Record::Value { key, .. } = record { Some(*key) } else { None })
            .collect();
        assert_eq!(values, vec![&b"a"[..]], "only the left half's values");
        let mut incoming = target.begin_incoming(position).unwrap();
        incoming.write(&reader).unwrap();
        let staged = incoming.finish().unwrap();
        assert_eq!(staged.descriptor().and_then(|descriptor| descriptor.end.as_deref()), Some(&b"m"[..]));
        target.offer_staged(staged);
        let snapshot = Snapshot { last_index: position.0, last_term: position.1, data: Bytes::new() };
        let mut batch = WriteBatch::default();
        target.stage(&mut batch, &Persist { snapshot: Some(snapshot), ..Persist::default() }, true).unwrap();
        target.write(batch, true).unwrap();
        assert_eq!(target.value(b"a").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(target.value(b"y").unwrap().as_deref(), Some(&b"other"[..]), "outside the bounds, untouched");
        assert_eq!(target.descriptor().end.as_deref(), Some(&b"m"[..]), "the bounds came with the snapshot");
        let outcome = target.split_outcome().map(|outcome| outcome.iter().map(|range| range.id).collect::<Vec<_>>());
        assert_eq!(outcome, Some(vec![FIRST_RANGE_ID, 9]), "the split's outcome came with the snapshot");

        let mut writer = ChunkWriter::new(position.0, position.1, 0);
        let descriptor = encode_descriptor(&target.descriptor());
        writer.push(&Record::Range { descriptor: &descriptor });
        writer.push(&Record::Value { key: b"z", value: b"outside" });
        let data = writer.finish(true);
        let mut hostile = target.begin_incoming(position).unwrap();
        let refused = hostile.write(&ChunkReader::new(&data).unwrap());
        assert!(matches!(refused, Err(ChunkError::OutsideRange { range: 1, .. })), "{refused:?}");
        drop((view, hostile));
        target.clear_staging().unwrap();
        drop((source, target));
        std::fs::remove_dir_all(&from).unwrap();
        std::fs::remove_dir_all(&to).unwrap();
    }

    fn meta_update(index: LogIndex, descriptors: &[RangeDescriptor]) -> Entry {
        command(index, 0, 7_000 + index, Operation::MetaUpdate { descriptors: descriptors.to_vec() })
    }

    /// Issue 17: the meta range records a split once (a repeat is stale),
    /// in a key space of its own, keeps its records over a restart, and
    /// streams them to a follower, which refuses records that leave a gap.
    #[test]
    fn the_meta_range_records_a_split_keeps_it_and_streams_records_that_tile() {
        let (from, to) = (temporary("meta-source"), temporary("meta-target"));
        let first = RangeDescriptor::first(MEMBERS.to_vec());
        let (left, right) = first.split_at(&Bytes::from_static(b"m"), 0, 9).unwrap();
        let halves = [left.clone(), right.clone()];
        let mut source = Storage::open(&from, &MEMBERS).unwrap();
        let meta = source.range_mut(META_RANGE_ID).expect("every member hosts the meta range");
        let applying = meta.apply(&[meta_update(1, &halves), meta_update(2, &halves)], HardState::default()).unwrap();
        let outcomes: Vec<_> = applying.answers.iter().map(|applied| applied.outcome.clone()).collect();
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(Refusal::Meta(MetaError::Stale { .. }))), "{outcomes:?}");
        assert!(scan(&source.db, VALUE_PREFIX).next().is_none(), "meta records are not data values");
        drop(source);

        let source = Storage::open(&from, &MEMBERS).unwrap();
        let records = source.range(META_RANGE_ID).unwrap().meta_records().unwrap();
        assert_eq!(records.lookup(b"", 10), halves.to_vec(), "the records survive a restart");
        let keys = RangeKeys::of(META_RANGE_ID);
        let view = source.db.snapshot();
        let position = applied_position(&view, &keys).unwrap();
        let chunk = read_chunk(&view, &keys, position, 0, None).unwrap();
        let mut target = Storage::open(&to, &MEMBERS).unwrap();
        let follower = target.range_mut(META_RANGE_ID).unwrap();
        let mut incoming = follower.begin_incoming(position).unwrap();
        incoming.write(&ChunkReader::new(&chunk.data).unwrap()).unwrap();
        follower.offer_staged(incoming.finish().unwrap());
        let snapshot = Snapshot { last_index: position.0, last_term: position.1, data: Bytes::new() };
        let mut batch = WriteBatch::default();
        follower.stage(&mut batch, &Persist { snapshot: Some(snapshot), ..Persist::default() }, true).unwrap();
        follower.write(batch, true).unwrap();
        assert_eq!(follower.meta_records().unwrap().lookup(b"z", 10), vec![right.clone()]);

        let mut writer = ChunkWriter::new(position.0, position.1, 0);
        let descriptor = encode_descriptor(&follower.descriptor());
        writer.push(&Record::Range { descriptor: &descriptor });
        let (key, value) = (meta::record_key(&right), encode_descriptor(&right));
        writer.push(&Record::Value { key: &key, value: &value });
        let data = writer.finish(true);
        let mut hostile = follower.begin_incoming(position).unwrap();
        let refused = hostile.write(&ChunkReader::new(&data).unwrap());
        assert!(matches!(refused, Err(ChunkError::MetaGap { .. })), "a record missing before it: {refused:?}");
        drop((view, hostile));
        follower.clear_staging().unwrap();
        drop((source, target));
        std::fs::remove_dir_all(&from).unwrap();
        std::fs::remove_dir_all(&to).unwrap();
    }

    /// Issue 13, item 9: the store expires sessions as the state machine
    /// says, and finds the census again when it reopens.
    #[test]
    fn sessions_beyond_the_limit_expire_and_the_census_survives_a_restart() {
        let directory = temporary("sessions");
        let mut storage = Storage::open(&directory, &MEMBERS).unwrap().into_first_range();
        let count = state_machine::SESSIONS_COUNT_MAX as u64 + 10;
        for first in (1..=count).step_by(10_000) {
            let entries: Vec<Entry> = (first..(first + 10_000).min(count + 1)).map(open).collect();
            storage.apply(&entries, HardState::default()).unwrap();
        }
        assert_eq!(storage.census().count, state_machine::SESSIONS_COUNT_MAX);
        assert!(storage.session(10).unwrap().is_none() && storage.session(11).unwrap().is_some());
        let census = storage.census();
        drop(storage);
        let reopened = Storage::open(&directory, &MEMBERS).unwrap().into_first_range();
        assert_eq!(reopened.census(), census);
        drop(reopened);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// A node upgraded from layout 3 keeps everything: its hard state, log,
    /// snapshot position, applied position and sessions move under range 1.
    #[test]
    fn a_layout_3_database_moves_under_range_one_and_loses_nothing() {
        let directory = temporary("layout-3");
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let old = DB::open_cf(&options, &directory, [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, LOG_FAMILY]).unwrap();
        let hard_state = HardState { term: 7, voted_for: Some(2) };
        old.put(FORMAT_KEY, [3]).unwrap();
        old.put(IDENTITY_KEY, [0u8; 16]).unwrap();
        old.put(b"m:hard", wire::to_bytes(&wire::hard_state_to_proto(hard_state))).unwrap();
        old.put(b"m:applied", wire::to_bytes(&proto::AppliedPosition { index: 5, term: 7 })).unwrap();
        old.put(b"m:snapshot", wire::to_bytes(&proto::AppliedPosition { index: 4, term: 7 })).unwrap();
        let session = Session { sequence: 3, last: None };
        old.put([SESSION_PREFIX, &9u64.to_be_bytes()].concat(), state_machine::encode_session(&session)).unwrap();
        old.put(value_key(b"k"), b"v").unwrap();
        let log = old.cf_handle(LOG_FAMILY).unwrap();
        let entries: Vec<Entry> = (5..=6).map(|index| command(index, 9, index, set(b"v"))).collect();
        for entry in &entries {
            old.put_cf(log, entry.index.to_be_bytes(), wire::to_bytes(&wire::entry_to_proto(entry))).unwrap();
        }
        drop(old);
        for _ in 0..2 {
            let mut storage = Storage::open(&directory, &MEMBERS).unwrap().into_first_range();
            let recovered = storage.recover().unwrap();
            assert_eq!(recovered.hard_state, hard_state);
            assert_eq!(recovered.snapshot.map(|snapshot| snapshot.last_index), Some(4));
            assert_eq!(recovered.entries, entries);
            assert_eq!(storage.applied(), (5, 7));
            assert_eq!(storage.session(9).unwrap(), Some(session.clone()));
            assert_eq!(storage.census().count, 1);
            assert_eq!(storage.value(b"k").unwrap().as_deref(), Some(&b"v"[..]));
            assert_eq!(storage.db.get(FORMAT_KEY).unwrap().as_deref(), Some(&[FORMAT_VERSION][..]));
            assert!(storage.db.get(b"m:hard").unwrap().is_none(), "the old keys are gone");
        }
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// One range's log, sessions and metadata never reach another's.
    #[test]
    fn range_keys_keep_each_range_apart() {
        let (first, last) = (RangeKeys::of(1), RangeKeys::of(RangeId::MAX));
        assert!(first.log(u64::MAX)[..] < first.log_end()[..] && first.log_end()[..] < RangeKeys::of(2).log(0)[..]);
        assert!(last.log(u64::MAX)[..] < last.log_end()[..]);
        assert!(prefix_end(&first.sessions()) <= RangeKeys::of(2).sessions());
        assert!(last.session(u64::MAX) < prefix_end(&last.sessions()), "an all-0xff id still has an end");
        assert_ne!(first.hard_state(), RangeKeys::of(2).hard_state());
        assert_eq!(prefix_end(b"s:\xff\xff"), b"s;");
    }

    /// A range other than the first stored without its descriptor cannot
    /// be served (its bounds are unknown): refused with a clear error.
    #[test]
    fn a_range_stored_without_its_descriptor_is_refused_with_a_clear_error() {
        let directory = temporary("other-range");
        let storage = Storage::open(&directory, &MEMBERS).unwrap();
        storage.write_identity(1, 1).unwrap();
        storage.db.put(RangeKeys::of(7).applied(), wire::to_bytes(&proto::AppliedPosition::default())).unwrap();
        drop(storage);
        let error = Storage::open(&directory, &MEMBERS).err().expect("a range without bounds is refused");
        assert!(matches!(&error, StorageError::Impossible(message) if message.contains("range 7")), "{error}");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_layout_4_database_gains_a_meta_range_unless_it_split() {
        let directory = temporary("layout-4");
        let stamp_layout_4 = |storage: Storage| {
            storage.db.put(FORMAT_KEY, [4]).unwrap();
            drop(storage);
        };
        let storage = Storage::open(&directory, &MEMBERS).unwrap();
        stamp_layout_4(storage);
        let mut storage = Storage::open(&directory, &MEMBERS).expect("one range, never split: upgraded");
        assert_eq!(storage.db.get(FORMAT_KEY).unwrap().as_deref(), Some(&[FORMAT_VERSION][..]));
        let applying = storage.first_range_mut().apply(&[open(1), split(2, b"m", 9)], HardState::default()).unwrap();
        storage.open_split_off(&applying.splits[0]).unwrap();
        stamp_layout_4(storage);
        let error = Storage::open(&directory, &MEMBERS).err().expect("a split layout 4 database is refused");
        assert!(matches!(error, StorageError::SplitBeforeMeta { ranges: 2, .. }), "{error}");
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
        let error = Storage::open(&directory, &MEMBERS).err().expect("an old layout is refused");
        assert!(matches!(error, StorageError::UnknownFormat { found: 1, .. }), "{error}");
        assert!(error.to_string().contains("wipe the directory"), "{error}");
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
