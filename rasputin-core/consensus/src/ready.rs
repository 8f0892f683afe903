//! What a node asks its driver to do after each input.
//!
//! # The ordering contract
//! The driver handles a [`Ready`] in this order:
//! 1. Write [`Persist`] (hard state, then snapshot, then entries) and sync it.
//!    Several Readys may share one sync (group commit), but syncs complete in order.
//! 2. Only after that sync has completed, send [`Ready::send_after_persist`].
//!    These messages promise durability (a vote, an append acknowledgement)
//!    and would break safety if the node crashed and forgot what it promised.
//! 3. Report the sync with [`Input::Persisted`](super::Input::Persisted).
//!
//! [`Ready::send`] may leave at once, in parallel with the sync: they promise
//! nothing about this node's disk (a leader's appends, say, which it counts
//! for itself only once persisted). [`Ready::apply`] holds committed entries,
//! which are durable on a quorum already and may be applied at once.

use super::check::MessageError;
use super::types::{Entry, Envelope, HardState, LogIndex, Nanos, NodeId, Snapshot, Term};

/// Everything the node needs written and synced before `send_after_persist` leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist<C> {
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader. The driver persists it, restores
    /// its state machine from it, and drops log entries it covers.
    pub snapshot: Option<Snapshot>,
    /// Contiguous entries. The first one's index says where they go: every
    /// stored entry at or beyond it is replaced.
    pub entries: Vec<Entry<C>>,
}

impl<C> Default for Persist<C> {
    fn default() -> Self {
        Persist { hard_state: None, snapshot: None, entries: Vec::new() }
    }
}

impl<C> Persist<C> {
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.snapshot.is_none() && self.entries.is_empty()
    }

    /// The (index, term) to report back in `Input::Persisted` once this is synced.
    pub fn last_position(&self) -> Option<(LogIndex, Term)> {
        if let Some(entry) = self.entries.last() {
            return Some((entry.index, entry.term));
        }
        self.snapshot.as_ref().map(|snapshot| (snapshot.last_index, snapshot.last_term))
    }
}

/// Why a client request was turned away without entering the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// This node is not the leader; retry at `leader` if known.
    NotLeader { leader: Option<NodeId> },
    /// Too many requests are waiting; back off and retry.
    Overloaded,
}

/// A read that may be served once the state machine has applied `read_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReady<C> {
    pub request: C,
    pub read_index: LogIndex,
}

/// The output of one [`Node::step`](super::Node::step). See the module
/// documentation for the order in which a driver must act on it.
#[must_use = "a Ready holds messages and writes that the driver must carry out"]
#[derive(Clone, Debug)]
pub struct Ready<C> {
    pub persist: Persist<C>,
    /// Messages that may be sent immediately.
    pub send: Vec<Envelope<C>>,
    /// Messages that must wait until `persist` (and every earlier persist) is synced.
    pub send_after_persist: Vec<Envelope<C>>,
    /// Committed entries, in index order, to apply to the state machine.
    pub apply: Vec<Entry<C>>,
    /// Reads whose linearization point is fixed; serve each after applying its read index.
    pub reads: Vec<ReadReady<C>>,
    pub rejected: Vec<(C, Rejection)>,
    /// Peer messages refused unread, with the sender: no correct member
    /// sends them, so the driver drops the connection they came on.
    pub refused: Vec<(NodeId, MessageError)>,
    /// The local time at which the node next needs an `Input::Tick`.
    pub next_deadline: Nanos,
}

impl<C> Default for Ready<C> {
    fn default() -> Self {
        Ready {
            persist: Persist::default(),
            send: Vec::new(),
            send_after_persist: Vec::new(),
            apply: Vec::new(),
            reads: Vec::new(),
            rejected: Vec::new(),
            refused: Vec::new(),
            next_deadline: 0,
        }
    }
}
