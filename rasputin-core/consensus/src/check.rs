//! What a peer message must satisfy before it may change a node's state.
//!
//! Peer bytes are untrusted even after a handshake: the cluster id is only a
//! hash of the public member list. `check_structure` rejects messages that
//! no correct node sends (gaps in an append, index 0, terms out of order,
//! numbers so large that arithmetic on them could overflow); `Node::step`
//! adds the checks that need the node's state (a term that jumps too far,
//! an acknowledgement beyond the log). A refused message changes nothing
//! and comes back in `Ready::refused`, so the driver can drop the
//! connection it came on.

use thiserror::Error;

use super::types::{LogIndex, Message, NodeId, Term};

/// The largest term a message or a disk may carry. Far beyond any real
/// cluster's, and low enough that `term + 1` can never overflow.
pub const TERM_MAX: Term = u64::MAX >> 2;
/// The largest log index a message or a disk may carry, for the same reason.
pub const LOG_INDEX_MAX: LogIndex = u64::MAX >> 2;
/// How far beyond its own term a node lets one message take it. Pre-vote
/// keeps real terms close together (an isolated Harpoon node never raises
/// its term); a peer that claims a term a million elections ahead is
/// broken or hostile, and adopting it would spread the bogus term to the
/// whole cluster.
pub const TERM_JUMP_MAX: Term = 1 << 20;

/// Why a node refused a peer message. None of these can be sent by a
/// correct member, so the driver logs it and closes the connection.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message from node {from}, which is not a member; check the peer's --seed-peers")]
    NotAMember { from: NodeId },
    #[error("message for node {to} delivered to node {own}; the peer's member list differs")]
    WrongRecipient { to: NodeId, own: NodeId },
    #[error("message from this node itself (node {own}); two daemons share an identity")]
    FromSelf { own: NodeId },
    #[error("{field} {value} exceeds the largest allowed {max}; the peer is broken or hostile")]
    NumberTooLarge { field: &'static str, value: u64, max: u64 },
    #[error("term {term} is more than {TERM_JUMP_MAX} beyond this node's term {own}; the peer is broken or hostile")]
    TermJump { term: Term, own: Term },
    #[error("append after index {prev_index} holds entry {index} at position {position}; entries must be contiguous")]
    Gap { prev_index: LogIndex, position: usize, index: LogIndex },
    #[error("entry {index} has term {entry_term}, outside [{low}, {high}]; terms must rise along the log and stay within the message's")]
    EntryTerm { index: LogIndex, entry_term: Term, low: Term, high: Term },
    #[error("a fetch response after index {prev_index} carries entries though the voter's log does not match there")]
    EntriesWithoutMatch { prev_index: LogIndex },
    #[error("a release names node {successor} as the next leader, which is not a member or is the releasing node")]
    BadSuccessor { successor: NodeId },
    #[error("the peer acknowledges index {index}, beyond this leader's last index {last_index}")]
    BeyondLog { index: LogIndex, last_index: LogIndex },
}

fn bounded(field: &'static str, value: u64, max: u64) -> Result<(), MessageError> {
    if value > max {
        return Err(MessageError::NumberTooLarge { field, value, max });
    }
    Ok(())
}

/// Checks what a message must satisfy whatever the receiver's state.
pub fn check_structure<C>(message: &Message<C>) -> Result<(), MessageError> {
    bounded("term", message.term(), TERM_MAX)?;
    match message {
        Message::PreVote { last_log_index, last_log_term, .. }
        | Message::Vote { last_log_index, last_log_term, .. } => {
            bounded("last log index", *last_log_index, LOG_INDEX_MAX)?;
            bounded("last log term", *last_log_term, TERM_MAX)
        }
        Message::Append { term, prev_index, prev_term, entries, commit, .. } => {
            bounded("prev index", *prev_index, LOG_INDEX_MAX - entries.len() as u64)?;
            bounded("prev term", *prev_term, *term)?;
            bounded("commit", *commit, LOG_INDEX_MAX)?;
            check_entries(*term, *prev_index, *prev_term, entries)
        }
        Message::AppendResponse { index, hint, .. } => {
            bounded("index", *index, LOG_INDEX_MAX)?;
            if let Some(hint) = hint {
                bounded("conflict index", hint.conflict_index, LOG_INDEX_MAX)?;
                bounded("conflict term", hint.conflict_term.unwrap_or(0), TERM_MAX)?;
            }
            Ok(())
        }
        Message::Heartbeat { commit, .. } => bounded("commit", *commit, LOG_INDEX_MAX),
        Message::PreVoteResponse { term, last_log_index, last_log_term, .. }
        | Message::VoteResponse { term, last_log_index, last_log_term, .. } => {
            bounded("last log index", *last_log_index, LOG_INDEX_MAX)?;
            // A responder's log holds no term beyond the one it answers in.
            bounded("last log term", *last_log_term, *term)
        }
        Message::Fetch { term, prev_index, prev_term } => {
            bounded("prev index", *prev_index, LOG_INDEX_MAX)?;
            bounded("prev term", *prev_term, *term)
        }
        Message::FetchResponse { term, prev_index, matched, entries } => {
            bounded("prev index", *prev_index, LOG_INDEX_MAX - entries.len() as u64)?;
            if !matched && !entries.is_empty() {
                return Err(MessageError::EntriesWithoutMatch { prev_index: *prev_index });
            }
            check_entries(*term, *prev_index, 0, entries)
        }
        Message::InstallSnapshot { term, snapshot, .. } => {
            bounded("snapshot index", snapshot.last_index, LOG_INDEX_MAX)?;
            bounded("snapshot term", snapshot.last_term, *term)
        }
        Message::InstallSnapshotResponse { last_index, .. } => bounded("last index", *last_index, LOG_INDEX_MAX),
        // The successor's membership needs the receiver's config: `Node::check_message`.
        Message::HeartbeatResponse { .. } | Message::Release { .. } => Ok(()),
    }
}

fn check_entries<C>(
    term: Term,
    prev_index: LogIndex,
    prev_term: Term,
    entries: &[super::types::Entry<C>],
) -> Result<(), MessageError> {
    let mut low = prev_term;
    for (position, entry) in entries.iter().enumerate() {
        let expected = prev_index + 1 + position as u64;
        if entry.index != expected {
            return Err(MessageError::Gap { prev_index, position, index: entry.index });
        }
        if entry.term < low || entry.term > term {
            return Err(MessageError::EntryTerm { index: entry.index, entry_term: entry.term, low, high: term });
        }
        low = entry.term;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_command::TestCommand;
    use crate::types::EntryPayload;

    type Entry = crate::types::Entry<TestCommand>;
    type Message = crate::types::Message<TestCommand>;

    fn noop(index: LogIndex, term: Term) -> Entry {
        Entry { term, index, payload: EntryPayload::Noop }
    }

    fn append(prev_index: LogIndex, prev_term: Term, entries: Vec<Entry>) -> Message {
        Message::Append { term: 5, prev_index, prev_term, entries, commit: 0, round: 1 }
    }

    #[test]
    fn appends_must_be_contiguous_with_rising_terms_within_the_message_term() {
        assert_eq!(check_structure(&append(3, 2, vec![noop(4, 2), noop(5, 5)])), Ok(()));
        assert!(matches!(check_structure(&append(3, 2, vec![noop(5, 2)])), Err(MessageError::Gap { .. })));
        assert!(matches!(check_structure(&append(0, 0, vec![noop(0, 1)])), Err(MessageError::Gap { .. })));
        let falling = append(3, 2, vec![noop(4, 3), noop(5, 2)]);
        assert!(matches!(check_structure(&falling), Err(MessageError::EntryTerm { .. })));
        let above = append(3, 2, vec![noop(4, 6)]);
        assert!(matches!(check_structure(&above), Err(MessageError::EntryTerm { .. })));
        let below_prev = append(3, 4, vec![noop(4, 3)]);
        assert!(matches!(check_structure(&below_prev), Err(MessageError::EntryTerm { .. })));
    }

    #[test]
    fn numbers_near_the_top_of_u64_are_refused() {
        let heartbeat = Message::Heartbeat { term: u64::MAX, commit: 0, round: 0 };
        assert!(matches!(check_structure(&heartbeat), Err(MessageError::NumberTooLarge { field: "term", .. })));
        let overflowing = append(u64::MAX - 1, 0, vec![noop(u64::MAX, 1)]);
        assert!(matches!(check_structure(&overflowing), Err(MessageError::NumberTooLarge { .. })));
        let vote = Message::Vote { term: 1, last_log_index: u64::MAX, last_log_term: 0 };
        assert!(check_structure(&vote).is_err());
        assert_eq!(check_structure(&Message::Heartbeat { term: TERM_MAX, commit: 0, round: u64::MAX }), Ok(()));
    }
}
