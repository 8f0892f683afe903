//! The key-value store's commands, and the consensus types specialised to
//! them. Consensus is generic over its `Command`; this is where the store
//! says what a command is, so that everything above consensus names one
//! `Entry`, one `Message` and one `Node`.

use bytes::Bytes;

use rasputin_consensus as consensus;

use crate::range::{RangeDescriptor, RangeId};

/// What a client asks of the key-value state machine. Keys and values are
/// `Bytes`: decoded without a copy from the request's frame, and shared,
/// not copied, by the log, the appends to each follower, the persisted
/// entry and the applied one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Set {
        key: Bytes,
        value: Bytes,
    },
    Get {
        key: Bytes,
    },
    Cas {
        key: Bytes,
        expected: Bytes,
        new: Bytes,
    },
    Del {
        key: Bytes,
    },
    /// Opens a client session; the entry's index becomes its client id.
    OpenSession,
    /// Cuts the range at `key`: the keys from `key` on become the new range
    /// `right_range`, on the same replicas. Refused unless the range is
    /// still at `version`, so that a split decided on an old picture of the
    /// range never applies. Needs no session: a retry is refused by the
    /// version the first attempt raised.
    Split {
        key: Bytes,
        right_range: RangeId,
        version: u64,
    },
    /// Reads up to `limit` keys from `start` (inclusive) to `end` (exclusive;
    /// None: no end) in key order: one page of a scan (see `scan`).
    Scan {
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
    },
    /// To the meta range: record the descriptors a split produced, if they
    /// are newer than the records they replace. Needs no session: a retry
    /// is refused as stale, and changes nothing.
    MetaUpdate {
        descriptors: Vec<RangeDescriptor>,
    },
    /// To the meta range: up to `limit` descriptors, from the one holding
    /// `key` on, in key order.
    MetaLookup {
        key: Bytes,
        limit: u32,
    },
}

impl Operation {
    /// Reads do not enter the log; they are served at a confirmed read index.
    pub fn is_read(&self) -> bool {
        matches!(self, Operation::Get { .. } | Operation::Scan { .. } | Operation::MetaLookup { .. })
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Operation::Set { key, .. }
            | Operation::Get { key }
            | Operation::Cas { key, .. }
            | Operation::Del { key }
            | Operation::Split { key, .. }
            | Operation::MetaLookup { key, .. } => key,
            Operation::Scan { start, .. } => start,
            // The meta range holds every key of its own key space.
            Operation::OpenSession | Operation::MetaUpdate { .. } => &[],
        }
    }

    /// Bytes this operation occupies in a log entry, used for batch limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            Operation::Set { key, value } => key.len() + value.len(),
            Operation::Get { key } | Operation::Del { key } => key.len(),
            Operation::Split { key, .. } => key.len() + 16,
            Operation::Scan { start, end, .. } => start.len() + end.as_ref().map_or(0, Bytes::len) + 4,
            Operation::Cas { key, expected, new } => key.len() + expected.len() + new.len(),
            Operation::OpenSession => 0,
            Operation::MetaUpdate { descriptors } => descriptors.iter().map(RangeDescriptor::size_bytes).sum(),
            Operation::MetaLookup { key, .. } => key.len() + 4,
        }
    }
}

/// A client command. `(client_id, sequence)` identifies it across retries, so
/// the state machine can apply a retried write exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientRequest {
    pub client_id: u64,
    pub sequence: u64,
    pub operation: Operation,
}

impl consensus::Command for ClientRequest {
    fn is_read(&self) -> bool {
        self.operation.is_read()
    }

    fn size_bytes(&self) -> usize {
        self.operation.size_bytes()
    }
}

pub type Entry = consensus::Entry<ClientRequest>;
pub type EntryPayload = consensus::EntryPayload<ClientRequest>;
pub type Message = consensus::Message<ClientRequest>;
pub type Envelope = consensus::Envelope<ClientRequest>;
pub type Input = consensus::Input<ClientRequest>;
pub type Node = consensus::Node<ClientRequest>;
pub type Recovered = consensus::Recovered<ClientRequest>;
pub type Ready = consensus::Ready<ClientRequest>;
pub type ReadReady = consensus::ReadReady<ClientRequest>;
pub type Persist = consensus::Persist<ClientRequest>;
pub type Log = consensus::Log<ClientRequest>;
