//! The key-value state machine that committed entries are applied to, with
//! client sessions that make retried writes take effect exactly once.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::consensus::{ClientRequest, Entry, EntryPayload, LogIndex, Operation, Term};

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

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    sequence: u64,
    response: Response,
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
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        let EntryPayload::Command(request) = &entry.payload else {
            return None;
        };
        if let Some(session) = self.sessions.get(&request.client_id) {
            if request.sequence == session.sequence {
                return Some(Applied {
                    client_id: request.client_id,
                    sequence: request.sequence,
                    response: session.response.clone(),
                });
            }
            if request.sequence < session.sequence {
                return None;
            }
        }
        let response = self.execute(request, entry.term, entry.index);
        self.remember(request, response.clone());
        Some(Applied { client_id: request.client_id, sequence: request.sequence, response })
    }

    /// Serves a read at the current applied state.
    pub fn read(&self, key: &[u8]) -> Response {
        let (success, value) = match self.data.get(key) {
            Some(value) => (true, value.clone()),
            None => (false, Vec::new()),
        };
        Response { success, value, term: self.applied_term, index: self.applied_index }
    }

    fn execute(&mut self, request: &ClientRequest, term: Term, index: LogIndex) -> Response {
        let (success, value) = match &request.operation {
            Operation::Set { key, value } => {
                self.data.insert(key.clone(), value.clone());
                (true, value.clone())
            }
            Operation::Get { key } => match self.data.get(key) {
                Some(value) => (true, value.clone()),
                None => (false, Vec::new()),
            },
            Operation::Cas { key, expected, new } => match self.data.get_mut(key) {
                Some(current) if current == expected => {
                    *current = new.clone();
                    (true, new.clone())
                }
                Some(current) => (false, current.clone()),
                None => (false, Vec::new()),
            },
            Operation::Del { key } => match self.data.remove(key) {
                Some(previous) => (true, previous),
                None => (false, Vec::new()),
            },
        };
        Response { success, value, term, index }
    }

    fn remember(&mut self, request: &ClientRequest, response: Response) {
        if !self.sessions.contains_key(&request.client_id) && self.sessions.len() >= CLIENT_SESSIONS_COUNT_MAX {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, session)| session.response.index)
                .map(|(&client, _)| client)
                .expect("sessions are full, so not empty");
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(request.client_id, Session { sequence: request.sequence, response });
    }

    /// Serialises the whole state, applied position included.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.applied_index);
        put_u64(&mut out, self.applied_term);
        put_u64(&mut out, self.data.len() as u64);
        for (key, value) in &self.data {
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        put_u64(&mut out, self.sessions.len() as u64);
        for (client, session) in &self.sessions {
            put_u64(&mut out, *client);
            put_u64(&mut out, session.sequence);
            put_u64(&mut out, session.response.success as u64);
            put_bytes(&mut out, &session.response.value);
            put_u64(&mut out, session.response.term);
            put_u64(&mut out, session.response.index);
        }
        out
    }

    pub fn restore(bytes: &[u8]) -> Result<KvStore, SnapshotDecodeError> {
        let mut reader = Reader { bytes, position: 0 };
        let applied_index = reader.u64()?;
        let applied_term = reader.u64()?;
        let mut data = BTreeMap::new();
        for _ in 0..reader.u64()? {
            let key = reader.bytes()?;
            data.insert(key, reader.bytes()?);
        }
        let mut sessions = BTreeMap::new();
        for _ in 0..reader.u64()? {
            let client = reader.u64()?;
            let sequence = reader.u64()?;
            let success = reader.u64()? != 0;
            let value = reader.bytes()?;
            let response = Response { success, value, term: reader.u64()?, index: reader.u64()? };
            sessions.insert(client, Session { sequence, response });
        }
        if reader.position != bytes.len() {
            return Err(SnapshotDecodeError::TrailingBytes(bytes.len() - reader.position));
        }
        Ok(KvStore { data, sessions, applied_index, applied_term })
    }
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

    fn command(index: LogIndex, client_id: u64, sequence: u64, operation: Operation) -> Entry {
        Entry { term: 1, index, payload: EntryPayload::Command(ClientRequest { client_id, sequence, operation }) }
    }

    fn set(key: &[u8], value: &[u8]) -> Operation {
        Operation::Set { key: key.to_vec(), value: value.to_vec() }
    }

    #[test]
    fn readme_semantics_hold() {
        let mut store = KvStore::default();
        let k = b"k1".to_vec();
        store.apply(&command(1, 1, 1, set(b"k1", b"v1")));
        assert_eq!(store.read(&k).value, b"v1");
        let cas = |expected: &[u8], new: &[u8]| Operation::Cas {
            key: k.clone(),
            expected: expected.to_vec(),
            new: new.to_vec(),
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
