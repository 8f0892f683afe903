//! The vocabulary of the consensus module: identifiers, log entries, the
//! commands they carry and peer messages. Plain data only; behaviour lives in `node`.

use bytes::Bytes;

/// A cluster member's identity. Stable for the member's lifetime.
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;
/// A position in the replicated log. Index 0 is the empty prefix.
pub type LogIndex = u64;
/// A node's local monotonic time in nanoseconds. Never compared across nodes.
pub type Nanos = u64;

/// What consensus needs to know of a command it replicates; everything else
/// about it belongs to the state machine that applies it. Keeping consensus
/// ignorant of the operations lets a new collection type add commands
/// without touching Harpoon.
pub trait Command: Clone + std::fmt::Debug + PartialEq + Eq + std::hash::Hash {
    /// Reads do not enter the log; they are served at a confirmed read index.
    fn is_read(&self) -> bool;
    /// Bytes the command occupies in a log entry, for batch limits.
    fn size_bytes(&self) -> usize;
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryPayload<C> {
    /// Appended by every new leader so that it can commit entries of its term
    /// and learn the commit index (Raft §8).
    Noop,
    Command(C),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry<C> {
    pub term: Term,
    pub index: LogIndex,
    pub payload: EntryPayload<C>,
}

impl<C: Command> Entry<C> {
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(command) => command.size_bytes(),
        };
        payload + 32
    }
}

/// State that must survive a crash before any message that depends on it leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// A state-machine image covering the log up to `last_index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub last_index: LogIndex,
    pub last_term: Term,
    /// Opaque to consensus; shared so that sending it to several peers does not copy it.
    pub data: Bytes,
}

/// Where a follower's log diverges, so the leader can skip a whole term at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RejectHint {
    /// The first index of `conflict_term` in the follower's log, or its last index + 1.
    pub conflict_index: LogIndex,
    /// The term the follower holds at the rejected `prev_index`, if it holds one.
    pub conflict_term: Option<Term>,
}

/// A peer message. `round` numbers the leader's lease and read-confirmation
/// rounds; a response echoes the round of the request it answers, and only
/// responses to a round count towards that round's quorum.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message<C> {
    /// "Would you vote for me in `term`?" Changes no state at the receiver.
    PreVote {
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    /// Carries the responder's log position, so that a candidate behind
    /// it can let it campaign first (Harpoon's campaign preference).
    PreVoteResponse {
        term: Term,
        granted: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    Vote {
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    /// Carries the voter's log position when it voted. Harpoon voters do
    /// not compare logs; the winner adopts the most up-to-date log of its
    /// vote quorum instead (see `Fetch`).
    VoteResponse {
        term: Term,
        granted: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    Append {
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry<C>>,
        commit: LogIndex,
        round: u64,
    },
    AppendResponse {
        term: Term,
        success: bool,
        /// On success, the last index now known to match the leader.
        /// On rejection, the `prev_index` that was rejected.
        index: LogIndex,
        hint: Option<RejectHint>,
        round: u64,
    },
    /// Carries the commit index and starts a lease round; no log check.
    Heartbeat {
        term: Term,
        commit: LogIndex,
        round: u64,
    },
    HeartbeatResponse {
        term: Term,
        round: u64,
    },
    /// From a Harpoon leader-elect to the voter of its quorum with the most
    /// up-to-date log: "send me what follows (`prev_index`, `prev_term`)".
    /// The voter answers with a `FetchResponse`, or with an
    /// `InstallSnapshot` if it compacted past `prev_index`.
    Fetch {
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
    },
    FetchResponse {
        term: Term,
        prev_index: LogIndex,
        /// Whether the voter's log holds `prev_term` at `prev_index`; if not,
        /// `entries` is empty and the leader-elect gives up its election.
        matched: bool,
        entries: Vec<Entry<C>>,
    },
    InstallSnapshot {
        term: Term,
        snapshot: Snapshot,
        round: u64,
    },
    InstallSnapshotResponse {
        term: Term,
        last_index: LogIndex,
        round: u64,
    },
    /// Harpoon's leadership transfer: the leader of `term` has stopped
    /// leading and hands the promises made to it over to `successor`, which
    /// campaigns at once; nobody else may be helped until they run out.
    Release {
        term: Term,
        successor: NodeId,
    },
}

impl<C> Message<C> {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::Fetch { term, .. }
            | Message::FetchResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::InstallSnapshotResponse { term, .. }
            | Message::Release { term, .. } => *term,
        }
    }

    /// A short name for traces and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote { .. } => "prevote",
            Message::PreVoteResponse { .. } => "prevote-resp",
            Message::Vote { .. } => "vote",
            Message::VoteResponse { .. } => "vote-resp",
            Message::Append { .. } => "append",
            Message::AppendResponse { .. } => "append-resp",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatResponse { .. } => "heartbeat-resp",
            Message::Fetch { .. } => "fetch",
            Message::FetchResponse { .. } => "fetch-resp",
            Message::InstallSnapshot { .. } => "snapshot",
            Message::InstallSnapshotResponse { .. } => "snapshot-resp",
            Message::Release { .. } => "release",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope<C> {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message<C>,
}
