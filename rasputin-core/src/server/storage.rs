//! RocksDB storage: the log, the hard state, the key-value state machine,
//! client sessions and the latest snapshot, in one database per node.
//!
//! Key layout: in the default column family, `m:…` metadata, `k:` + key for
//! values and `s:` + big-endian client id for sessions; in the `log` column
//! family, the big-endian index of each log entry. One WriteBatch (and one
//! WAL) still covers both. The log has a family of its own so that
//! truncation and compaction can delete a range: a range tombstone makes
//! every later read of its memtable pay (in RocksDB 8.10 a CPUID
//! instruction per read, which traps in a virtual machine), and the log is
//! read only at recovery.

use std::collections::HashMap;
use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use thiserror::Error;

use crate::consensus::{Entry, LogIndex, Persist, Recovered, Snapshot, Term};
use crate::state_machine::{self, Applied, Change, KvRead, Response, Session, SnapshotDecodeError};
use crate::wire::{self, proto, WireError};

const HARD_STATE_KEY: &[u8] = b"m:hard";
const APPLIED_KEY: &[u8] = b"m:applied";
const IDENTITY_KEY: &[u8] = b"m:identity";
/// The layout version; 2 keeps the log in a column family of its own.
const FORMAT_KEY: &[u8] = b"m:format";
const FORMAT_VERSION: u8 = 2;
const SNAPSHOT_KEY: &[u8] = b"m:snapshot";
const LOG_FAMILY: &str = "log";
/// Sorts after every log key (8 bytes), to end a range deletion of the whole log.
const LOG_END: [u8; 9] = [0xff; 9];
/// Client sessions kept in memory, so that applying a write need not read
/// its session from RocksDB; beyond this the cache starts over.
const SESSIONS_CACHED_COUNT_MAX: usize = 100_000;
const VALUE_PREFIX: &[u8] = b"k:";
const SESSION_PREFIX: &[u8] = b"s:";

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("storage directory {path} is locked by another process (is another rasputind running on it?): {source}")]
    Locked { path: String, source: rocksdb::Error },
    #[error("cannot open storage in {path}: {source}; check the path and its permissions")]
    Open { path: String, source: rocksdb::Error },
    #[error("storage IO failed: {0}; the disk may be full or failing, and the node stops rather than risk its data")]
    Io(#[from] rocksdb::Error),
    #[error("stored record is corrupt: {0}; restore this node's directory from a peer by wiping it")]
    Corrupt(#[from] WireError),
    #[error("stored snapshot is corrupt: {0}; wipe this node's directory so that it fetches a fresh one")]
    CorruptSnapshot(#[from] SnapshotDecodeError),
    #[error("storage belongs to node {stored_node} of cluster {stored_cluster:x}, but this is node {node} of cluster {cluster:x}; point --storage-dir at this node's own directory")]
    WrongIdentity { stored_node: u64, stored_cluster: u64, node: u64, cluster: u64 },
    #[error("storage in {path} has layout version {found}, but this rasputind reads version {FORMAT_VERSION}; wipe the directory and let the node catch up from its peers, or run the rasputind that wrote it")]
    UnknownFormat { path: String, found: u8 },
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

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("prefixes are not empty") += 1;
    end
}

pub struct Storage {
    db: DB,
    applied_index: LogIndex,
    applied_term: Term,
    /// The last stored log index, set by `recover`: an append past it
    /// needs no deletion.
    log_last_index: LogIndex,
    /// Sessions as stored, for the clients seen lately.
    sessions: HashMap<u64, Session>,
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
        Ok(Storage {
            db,
            applied_index: applied.index,
            applied_term: applied.term,
            log_last_index: 0,
            sessions: HashMap::new(),
        })
    }

    /// Records which node and cluster this directory belongs to, or checks it.
    pub fn claim_identity(&self, node: u64, cluster: u64) -> Result<(), StorageError> {
        let expected = [node.to_be_bytes(), cluster.to_be_bytes()].concat();
        match self.db.get(IDENTITY_KEY)? {
            None => Ok(self.db.put(IDENTITY_KEY, &expected)?),
            Some(stored) if stored == expected => Ok(()),
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
        let mut entries = Vec::new();
        let start = log_key(after + 1);
        for item in self.db.iterator_cf(self.log_family(), IteratorMode::From(&start, Direction::Forward)) {
            let (_, value) = item?;
            entries.push(wire::entry_from_proto(wire::decode(value.into_vec().into(), "Entry")?)?);
        }
        self.log_last_index = entries.last().map_or(after, |entry| entry.index);
        Ok(Recovered { hard_state, snapshot, entries })
    }

    fn log_family(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(LOG_FAMILY).expect("the database is opened with the log family")
    }

    pub fn stored_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        match self.db.get(SNAPSHOT_KEY)? {
            Some(bytes) => Ok(Some(wire::snapshot_from_proto(wire::decode(bytes.into(), "Snapshot")?))),
            None => Ok(None),
        }
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
    fn stage_install(
        &mut self,
        batch: &mut WriteBatch,
        snapshot: &Snapshot,
        log_emptied: bool,
    ) -> Result<(), StorageError> {
        let contents = state_machine::decode_snapshot(&snapshot.data)?;
        batch.delete_range(VALUE_PREFIX.to_vec(), prefix_end(VALUE_PREFIX));
        batch.delete_range(SESSION_PREFIX.to_vec(), prefix_end(SESSION_PREFIX));
        for (key, value) in &contents.data {
            batch.put(value_key(key), value);
        }
        for (client_id, session) in &contents.sessions {
            batch.put(session_key(*client_id), wire::to_bytes(&session_to_proto(session)));
        }
        if log_emptied {
            batch.delete_range_cf(self.log_family(), &log_key(0)[..], &LOG_END[..]);
            self.log_last_index = snapshot.last_index;
        } else {
            batch.delete_range_cf(self.log_family(), log_key(0), log_key(snapshot.last_index + 1));
        }
        self.sessions.clear();
        batch.put(SNAPSHOT_KEY, wire::to_bytes(&wire::snapshot_to_proto(snapshot)));
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
        let mut overlay = Overlay { storage: self, values: HashMap::new(), sessions: HashMap::new() };
        let mut answers = Vec::new();
        let mut last = None;
        for entry in entries.iter().filter(|entry| entry.index > overlay.storage.applied_index) {
            let decision = state_machine::decide(&overlay, entry)?;
            for change in decision.changes {
                overlay.stage(&mut batch, change);
            }
            answers.extend(decision.applied);
            last = Some((entry.index, entry.term));
        }
        let sessions = overlay.sessions;
        if let Some((index, term)) = last {
            self.stage_applied(&mut batch, index, term);
            self.write(batch, false)?;
        }
        if self.sessions.len() + sessions.len() > SESSIONS_CACHED_COUNT_MAX {
            self.sessions.clear();
        }
        self.sessions.extend(sessions);
        Ok(answers)
    }

    pub fn read(&self, key: &[u8]) -> Result<Response, StorageError> {
        state_machine::read_response(self, key, self.applied_term, self.applied_index)
    }

    /// Serialises the state machine at the applied index, for a snapshot.
    pub fn snapshot_data(&self) -> Result<Vec<u8>, StorageError> {
        let data = self.scan(VALUE_PREFIX)?;
        let sessions: Vec<(u64, Session)> = self
            .scan(SESSION_PREFIX)?
            .into_iter()
            .map(|(key, value)| {
                let client = u64::from_be_bytes(key.as_slice().try_into().unwrap_or([0; 8]));
                Ok((client, session_from_proto(wire::decode(value.into(), "Session")?)))
            })
            .collect::<Result<_, StorageError>>()?;
        let data_iter = data.iter().map(|(key, value)| (key.as_slice(), value.as_slice()));
        let session_iter = sessions.iter().map(|(client, session)| (*client, session));
        Ok(state_machine::encode_snapshot(self.applied_index, self.applied_term, data_iter, session_iter))
    }

    /// Stores `snapshot` as the latest and drops the log it covers.
    pub fn compact(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put(SNAPSHOT_KEY, wire::to_bytes(&wire::snapshot_to_proto(snapshot)));
        batch.delete_range_cf(self.log_family(), log_key(0), log_key(snapshot.last_index + 1));
        self.write(batch, true)
    }

    /// Every (key without prefix, value) under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key[prefix.len()..].to_vec(), value.into_vec()));
        }
        Ok(out)
    }
}

/// The state as a batch of applies leaves it: staged changes over the database.
struct Overlay<'a> {
    storage: &'a Storage,
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    sessions: HashMap<u64, Session>,
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
                batch.put(session_key(client_id), wire::to_bytes(&session_to_proto(&session)));
                self.sessions.insert(client_id, session);
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
            Some(staged) => Ok(Some(staged.clone())),
            None => self.storage.session(client_id),
        }
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
            Some(bytes) => Ok(Some(session_from_proto(wire::decode(bytes.into(), "Session")?))),
            None => Ok(None),
        }
    }
}

fn session_to_proto(session: &Session) -> proto::Session {
    proto::Session {
        sequence: session.sequence,
        success: session.response.success,
        value: session.response.value.clone().into(),
        term: session.response.term,
        index: session.response.index,
    }
}

fn session_from_proto(session: proto::Session) -> Session {
    Session {
        sequence: session.sequence,
        response: Response {
            success: session.success,
            value: session.value.to_vec(),
            term: session.term,
            index: session.index,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{ClientRequest, EntryPayload, HardState, Operation};

    fn command(index: LogIndex, client_id: u64, sequence: u64, operation: Operation) -> Entry {
        Entry { term: 1, index, payload: EntryPayload::Command(ClientRequest { client_id, sequence, operation }) }
    }

    fn set(value: &[u8]) -> Operation {
        Operation::Set { key: bytes::Bytes::from_static(b"k"), value: bytes::Bytes::copy_from_slice(value) }
    }

    #[test]
    fn a_batch_of_applies_sees_its_own_earlier_changes() {
        let directory = std::env::temp_dir().join(format!("rasputin-storage-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let mut storage = Storage::open(&directory).unwrap();
        let cas = Operation::Cas {
            key: bytes::Bytes::from_static(b"k"),
            expected: bytes::Bytes::from_static(b"one"),
            new: bytes::Bytes::from_static(b"two"),
        };
        let entries = [
            command(1, 7, 1, set(b"one")),
            command(2, 8, 1, cas),
            // A retry of client 7's write, in the same batch: answered from its session.
            command(3, 7, 1, set(b"one")),
        ];
        let answers = storage.apply(&entries).unwrap();
        assert_eq!(answers.len(), 3);
        assert!(answers[1].response.success && answers[1].response.value == b"two", "{:?}", answers[1]);
        assert_eq!(answers[2].response.index, answers[0].response.index, "the retry was applied again");
        assert_eq!(storage.value(b"k").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(storage.applied(), (3, 1));
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
        stage_and_write(&mut storage, vec![command(3, 2, 2, set(b"newer"))]);
        let snapshot = Snapshot { last_index: 2, last_term: 1, data: std::sync::Arc::new(Vec::new()) };
        storage.compact(&snapshot).unwrap();
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.snapshot.map(|snapshot| snapshot.last_index), Some(2));
        assert_eq!(recovered.entries, [command(3, 2, 2, set(b"newer"))]);
        let stored_log = storage.db.iterator_cf(storage.log_family(), IteratorMode::Start).count();
        assert_eq!(stored_log, 1, "compaction deleted entries 1 and 2");
        drop(storage);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_database_of_an_older_layout_is_refused_with_a_clear_error() {
        let directory = std::env::temp_dir().join(format!("rasputin-storage-format-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
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
