//! The key-value state machine that committed entries are applied to, with
//! client sessions that make retried writes take effect exactly once.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::consensus::{Entry, EntryPayload, LogIndex, Operation, Term};

/// Client sessions remembered; beyond this the least recently active is forgotten.
pub const CLIENT_SESSIONS_COUNT_MAX: usize = 100_000;

/// The outcome of one operation, with the semantics of the original README:
/// - set: success, and the value written;
/// - get: success if the key exists, and its value;
/// - cas: success if the expected value matched, and the value after the operation;
/// - del: success if the key existed, and the value it had.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    pub success: bool,
    pub value: Vec<u8>,
    /// The log position that produced this state (for reads, the read index).
    pub term: Term,
    pub index: LogIndex,
}

/// A client's last write and its response, to answer retries of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub sequence: u64,
    pub response: Response,
}

/// Read access to a key-value state, in memory or on disk.
pub trait KvRead {
    type Error;
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    fn session(&self, client_id: u64) -> Result<Option<Session>, Self::Error>;
}

/// One change an applied entry makes to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    Session { client_id: u64, session: Session },
}

/// What applying an entry means: the client's answer and the changes to make.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub applied: Option<Applied>,
    pub changes: Vec<Change>,
}

/// Decides the effect of the committed `entry` on `state`, with the README's
/// semantics and exactly-once sessions. Shared by every store, so that the
/// simulator and the daemon cannot disagree on what an operation does.
pub fn decide<S: KvRead>(state: &S, entry: &Entry) -> Result<Decision, S::Error> {
    let EntryPayload::Command(request) = &entry.payload else {
        return Ok(Decision::default());
    };
    let reply = |response: Response| Applied { client_id: request.client_id, sequence: request.sequence, response };
    if let Some(session) = state.session(request.client_id)? {
        if request.sequence == session.sequence {
            return Ok(Decision { applied: Some(reply(session.response)), changes: Vec::new() });
        }
        if request.sequence < session.sequence {
            return Ok(Decision::default());
        }
    }
    let (success, value, change) = match &request.operation {
        Operation::Set { key, value } => {
            (true, value.to_vec(), Some(Change::Put { key: key.to_vec(), value: value.to_vec() }))
        }
        Operation::Get { key } => match state.value(key)? {
            Some(value) => (true, value, None),
            None => (false, Vec::new(), None),
        },
        Operation::Cas { key, expected, new } => match state.value(key)? {
            Some(current) if current == expected[..] => {
                (true, new.to_vec(), Some(Change::Put { key: key.to_vec(), value: new.to_vec() }))
            }
            Some(current) => (false, current, None),
            None => (false, Vec::new(), None),
        },
        Operation::Del { key } => match state.value(key)? {
            Some(previous) => (true, previous, Some(Change::Delete { key: key.to_vec() })),
            None => (false, Vec::new(), None),
        },
    };
    let response = Response { success, value, term: entry.term, index: entry.index };
    let session = Session { sequence: request.sequence, response: response.clone() };
    let mut changes: Vec<Change> = change.into_iter().collect();
    changes.push(Change::Session { client_id: request.client_id, session });
    Ok(Decision { applied: Some(reply(response)), changes })
}

/// Reads a key as a client sees it at the current applied state.
pub fn read_response<S: KvRead>(state: &S, key: &[u8], term: Term, index: LogIndex) -> Result<Response, S::Error> {
    let (success, value) = match state.value(key)? {
        Some(value) => (true, value),
        None => (false, Vec::new()),
    };
    Ok(Response { success, value, term, index })
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotDecodeError {
    #[error("snapshot ends early at byte {0}; the snapshot is truncated or corrupt, fetch it again")]
    Truncated(usize),
    #[error("snapshot has {0} trailing bytes; the snapshot is corrupt, fetch it again")]
    TrailingBytes(usize),
}

/// What applying an entry produced: the response for the client that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub client_id: u64,
    pub sequence: u64,
    pub response: Response,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, Session>,
    applied_index: LogIndex,
    applied_term: Term,
}

impl KvStore {
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    pub fn applied_term(&self) -> Term {
        self.applied_term
    }

    /// Applies the next committed entry. Returns the client's response, or
    /// None for a no-op and for a stale retry of an already superseded request.
    pub fn apply(&mut self, entry: &Entry) -> Option<Applied> {
        assert_eq!(
            entry.index,
            self.applied_index + 1,
            "entries must be applied in order without gaps (applied {}, got {})",
            self.applied_index,
            entry.index
        );
        let Ok(decision) = decide(self, entry);
        for change in decision.changes {
            self.make(change);
        }
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        decision.applied
    }

    /// Serves a read at the current applied state.
    pub fn read(&self, key: &[u8]) -> Response {
        let Ok(response) = read_response(self, key, self.applied_term, self.applied_index);
        response
    }

    fn make(&mut self, change: Change) {
        match change {
            Change::Put { key, value } => {
                self.data.insert(key, value);
            }
            Change::Delete { key } => {
                self.data.remove(&key);
            }
            Change::Session { client_id, session } => self.remember(client_id, session),
        }
    }

    fn remember(&mut self, client_id: u64, session: Session) {
        if !self.sessions.contains_key(&client_id) && self.sessions.len() >= CLIENT_SESSIONS_COUNT_MAX {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, session)| session.response.index)
                .map(|(&client, _)| client)
                .expect("sessions are full, so not empty");
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(client_id, session);
    }

    /// Serialises the whole state, applied position included.
    pub fn snapshot(&self) -> Vec<u8> {
        let data = self.data.iter().map(|(key, value)| (key.as_slice(), value.as_slice()));
        let sessions = self.sessions.iter().map(|(&client, session)| (client, session));
        encode_snapshot(self.applied_index, self.applied_term, data, sessions)
    }

    pub fn restore(bytes: &[u8]) -> Result<KvStore, SnapshotDecodeError> {
        let contents = decode_snapshot(bytes)?;
        Ok(KvStore {
            data: contents.data.into_iter().collect(),
            sessions: contents.sessions.into_iter().collect(),
            applied_index: contents.applied_index,
            applied_term: contents.applied_term,
        })
    }
}

impl KvRead for KvStore {
    type Error = std::convert::Infallible;

    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.data.get(key).cloned())
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, Self::Error> {
        Ok(self.sessions.get(&client_id).cloned())
    }
}

/// A decoded snapshot, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotContents {
    pub applied_index: LogIndex,
    pub applied_term: Term,
    pub data: Vec<(Vec<u8>, Vec<u8>)>,
    pub sessions: Vec<(u64, Session)>,
}

/// The snapshot format every store shares: position, key-values, sessions.
pub fn encode_snapshot<'a>(
    applied_index: LogIndex,
    applied_term: Term,
    data: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    sessions: impl ExactSizeIterator<Item = (u64, &'a Session)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_u64(&mut out, applied_index);
    put_u64(&mut out, applied_term);
    put_u64(&mut out, data.len() as u64);
    for (key, value) in data {
        put_bytes(&mut out, key);
        put_bytes(&mut out, value);
    }
    put_u64(&mut out, sessions.len() as u64);
    for (client, session) in sessions {
        put_u64(&mut out, client);
        put_u64(&mut out, session.sequence);
        put_u64(&mut out, session.response.success as u64);
        put_bytes(&mut out, &session.response.value);
        put_u64(&mut out, session.response.term);
        put_u64(&mut out, session.response.index);
    }
    out
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotContents, SnapshotDecodeError> {
    let mut reader = Reader { bytes, position: 0 };
    let applied_index = reader.u64()?;
    let applied_term = reader.u64()?;
    let mut data = Vec::new();
    for _ in 0..reader.u64()? {
        let key = reader.bytes()?;
        data.push((key, reader.bytes()?));
    }
    let mut sessions = Vec::new();
    for _ in 0..reader.u64()? {
        let client = reader.u64()?;
        let sequence = reader.u64()?;
        let success = reader.u64()? != 0;
        let value = reader.bytes()?;
        let response = Response { success, value, term: reader.u64()?, index: reader.u64()? };
        sessions.push((client, Session { sequence, response }));
    }
    if reader.position != bytes.len() {
        return Err(SnapshotDecodeError::TrailingBytes(bytes.len() - reader.position));
    }
    Ok(SnapshotContents { applied_index, applied_term, data, sessions })
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], SnapshotDecodeError> {
        let end = self.position.checked_add(count).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(SnapshotDecodeError::Truncated(self.position))?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, SnapshotDecodeError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("took exactly 8 bytes")))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, SnapshotDecodeError> {
        let length = self.u64()?;
        let length = usize::try_from(length).map_err(|_| SnapshotDecodeError::Truncated(self.position))?;
        Ok(self.take(length)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::ClientRequest;

    fn command(index: LogIndex, client_id: u64, sequence: u64, operation: Operation) -> Entry {
        Entry { term: 1, index, payload: EntryPayload::Command(ClientRequest { client_id, sequence, operation }) }
    }

    fn set(key: &[u8], value: &[u8]) -> Operation {
        Operation::Set { key: bytes::Bytes::copy_from_slice(key), value: bytes::Bytes::copy_from_slice(value) }
    }

    #[test]
    fn readme_semantics_hold() {
        let mut store = KvStore::default();
        let k = bytes::Bytes::from_static(b"k1");
        store.apply(&command(1, 1, 1, set(b"k1", b"v1")));
        assert_eq!(store.read(&k).value, b"v1");
        let cas = |expected: &[u8], new: &[u8]| Operation::Cas {
            key: k.clone(),
            expected: bytes::Bytes::copy_from_slice(expected),
            new: bytes::Bytes::copy_from_slice(new),
        };
        let ok = store.apply(&command(2, 1, 2, cas(b"v1", b"v12"))).unwrap().response;
        assert!(ok.success && ok.value == b"v12");
        let failed = store.apply(&command(3, 1, 3, cas(b"vNever", b"vNever2"))).unwrap().response;
        assert!(!failed.success && failed.value == b"v12");
        let deleted = store.apply(&command(4, 1, 4, Operation::Del { key: k.clone() })).unwrap().response;
        assert!(deleted.success && deleted.value == b"v12");
        assert!(!store.read(&k).success);
    }

    #[test]
    fn a_retried_write_applies_once() {
        let mut store = KvStore::default();
        store.apply(&command(1, 7, 1, set(b"k", b"a")));
        store.apply(&command(2, 8, 1, set(b"k", b"b")));
        let retry = store.apply(&command(3, 7, 1, set(b"k", b"a"))).unwrap();
        assert_eq!(retry.response.index, 1, "the retry returns the original response");
        assert_eq!(store.read(b"k").value, b"b", "the retry did not write again");
    }

    #[test]
    fn snapshot_round_trips_and_rejects_corruption() {
        let mut store = KvStore::default();
        store.apply(&command(1, 7, 1, set(b"k", b"a")));
        store.apply(&command(2, 9, 4, set(b"j", b"")));
        let bytes = store.snapshot();
        assert_eq!(KvStore::restore(&bytes), Ok(store));
        assert!(matches!(KvStore::restore(&bytes[..bytes.len() - 1]), Err(SnapshotDecodeError::Truncated(_))));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(KvStore::restore(&longer), Err(SnapshotDecodeError::TrailingBytes(1)));
    }
}
