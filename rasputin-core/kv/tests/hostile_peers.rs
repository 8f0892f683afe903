//! Issue 13, item 8: no peer message crashes a node. A million random and
//! extreme messages go through the wire boundary (`peer_frame_from_proto`,
//! and `install_snapshot_message` for the last chunk of a snapshot stream)
//! and then `Node::step`, against nodes in every role; none may panic, and
//! none may carry a term beyond `TERM_MAX` into the node.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rasputin_consensus::{Config, ElectionMode, LogIndex, Nanos, Role, Term, TERM_MAX};
use rasputin_kv::operation::{ClientRequest, Envelope, Input, Message, Node, Operation, Ready, Recovered};
use rasputin_kv::wire::{self, proto};

const INPUTS: u64 = 1_000_000;
/// Inputs between fresh nodes, so that every role gets its share.
const INPUTS_PER_NODE: u64 = 2_000;
const MS: Nanos = 1_000_000;
const SEED: u64 = 13;

/// What the daemon steps for `message`: a consensus message that passes
/// the wire's checks, or, for a snapshot chunk, the InstallSnapshot its
/// stream ends in, at a position as random as the chunk.
fn consensus_message(rng: &mut ChaCha8Rng, message: proto::PeerMessage) -> Option<Envelope> {
    match wire::peer_frame_from_proto(message).ok()? {
        wire::PeerFrame::Consensus(envelope) => Some(envelope),
        wire::PeerFrame::Chunk { from, to, chunk } => {
            let position = (number(rng, 10), number(rng, chunk.term));
            wire::install_snapshot_message(from, to, &chunk, position).ok()
        }
        wire::PeerFrame::ChunkAck { .. }
        | wire::PeerFrame::RangeUnknown { .. }
        | wire::PeerFrame::RangeIntroduction { .. }
        | wire::PeerFrame::MetaRecord { .. }
        | wire::PeerFrame::MetaRecorded { .. } => None,
    }
}

/// Numbers that break careless arithmetic, and numbers near the node's own.
fn number(rng: &mut ChaCha8Rng, near: u64) -> u64 {
    match rng.gen_range(0..14) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::MAX - 1,
        4 => TERM_MAX,
        5 => TERM_MAX + 1,
        6 => 1 << 63,
        7 => rng.gen(),
        8 => near.saturating_sub(1),
        9 => near,
        10 => near.saturating_add(1),
        11 => near.saturating_add(rng.gen_range(2..10)),
        _ => rng.gen_range(0..20),
    }
}

fn entries(rng: &mut ChaCha8Rng, prev_index: u64, term: u64) -> Vec<proto::Entry> {
    let count = rng.gen_range(0..5);
    let contiguous = rng.gen_bool(0.7);
    (0..count)
        .map(|offset| {
            let index = if contiguous { prev_index.wrapping_add(1 + offset) } else { number(rng, prev_index) };
            let command = rng.gen_bool(0.5).then(|| proto::Command {
                client_id: number(rng, 1),
                sequence: number(rng, 1),
                operation: Some(proto::command::Operation::Set(proto::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from(vec![7; rng.gen_range(0..40)]),
                })),
            });
            let entry_term = if rng.gen_bool(0.8) { term } else { number(rng, term) };
            proto::Entry { term: entry_term, index, command }
        })
        .collect()
}

fn vote_response(rng: &mut ChaCha8Rng, term: Term, log_term: Term, last: LogIndex) -> proto::VoteResponse {
    let last_log_term = if rng.gen_bool(0.8) { log_term.min(term) } else { log_term };
    let last_log_index = if rng.gen_bool(0.8) { rng.gen_range(0..last + 3) } else { number(rng, last) };
    proto::VoteResponse { term, granted: rng.gen(), last_log_index, last_log_term }
}

/// A random peer message for `node`, mostly from a member and to it.
fn message(rng: &mut ChaCha8Rng, node: &Node) -> proto::PeerMessage {
    use proto::peer_message::Body;
    let term = node.term();
    let last = node.log().last_index();
    let mut t = || number(rng, term);
    let (term_a, term_b) = (t(), t());
    let body = match rng.gen_range(0..11) {
        0 => Body::PreVote(proto::PreVote { term: term_a, last_log_index: number(rng, last), last_log_term: term_b }),
        1 => Body::PreVoteResponse(vote_response(rng, term_a, term_b, last)),
        2 => Body::Vote(proto::PreVote { term: term_a, last_log_index: number(rng, last), last_log_term: term_b }),
        3 if rng.gen_bool(0.5) => Body::VoteResponse(vote_response(rng, term_a, term_b, last)),
        3 => {
            let prev_index = number(rng, last);
            let prev_term = if rng.gen_bool(0.5) { node.log().term(prev_index).unwrap_or(0) } else { term_b };
            Body::Fetch(proto::Fetch { term: term_a, prev_index, prev_term })
        }
        4 => {
            let prev_index = number(rng, last);
            proto::peer_message::Body::Append(proto::Append {
                term: term_a,
                prev_index,
                prev_term: if rng.gen_bool(0.5) { node.log().term(prev_index).unwrap_or(0) } else { term_b },
                entries: entries(rng, prev_index, term_a),
                commit: number(rng, last),
                round: number(rng, 1),
            })
        }
        5 => Body::AppendResponse(proto::AppendResponse {
            term: term_a,
            success: rng.gen(),
            index: number(rng, last),
            hint: rng.gen_bool(0.5).then(|| proto::RejectHint {
                conflict_index: number(rng, last),
                has_conflict_term: rng.gen(),
                conflict_term: term_b,
            }),
            round: number(rng, 1),
        }),
        6 => Body::Heartbeat(proto::Heartbeat { term: term_a, commit: number(rng, last), round: number(rng, 1) }),
        7 if rng.gen_bool(0.5) => {
            Body::HeartbeatResponse(proto::HeartbeatResponse { term: term_a, round: number(rng, 1) })
        }
        7 => {
            let prev_index = number(rng, last);
            Body::FetchResponse(proto::FetchResponse {
                term: term_a,
                prev_index,
                matched: rng.gen_bool(0.9),
                entries: entries(rng, prev_index, term_a),
            })
        }
        8 => Body::SnapshotChunk(proto::SnapshotChunk {
            transfer_id: rng.gen(),
            term: term_a,
            round: number(rng, 1),
            data: Bytes::from(vec![1; rng.gen_range(0..40)]),
        }),
        9 => Body::Release(proto::Release { term: term_a, successor: number(rng, 3) }),
        _ => Body::InstallSnapshotResponse(proto::InstallSnapshotResponse {
            term: term_a,
            last_index: number(rng, last),
            round: number(rng, 1),
        }),
    };
    let from = if rng.gen_bool(0.9) { rng.gen_range(2..=3) } else { number(rng, 2) };
    let to = if rng.gen_bool(0.95) { 1 } else { number(rng, 1) };
    proto::PeerMessage { range_id: 0, from, to, body: rng.gen_bool(0.99).then_some(body) }
}

/// Feeds what a node asks to persist straight back as synced, as a driver would.
fn settle(node: &mut Node, now: Nanos, ready: Ready) {
    if let Some((index, term)) = ready.persist.last_position() {
        let _ = node.step(now, Input::Persisted { index, term });
    }
}

/// A node of a 3-node cluster in one of the roles, built through real messages.
fn fresh_node(rng: &mut ChaCha8Rng, now: Nanos) -> Node {
    let mode = [ElectionMode::Harpoon, ElectionMode::Raft, ElectionMode::RaftPreVoteCheckQuorum][rng.gen_range(0..3)];
    let mut config = Config::new(1, vec![1, 2, 3]);
    config.mode = mode;
    let mut node = Node::new(config, Recovered::default(), rng.gen(), now).expect("a valid configuration");
    let later = now + 3_000 * MS;
    let ready = node.step(later, Input::Tick);
    settle(&mut node, later, ready);
    if rng.gen_bool(0.3) {
        return node;
    }
    let term = node.term() + 1;
    let grant = |node: &mut Node, message| {
        let ready = node.step(later, Input::Message(Envelope { from: 2, to: 1, message }));
        settle(node, later, ready);
    };
    grant(&mut node, Message::PreVoteResponse { term, granted: true, last_log_index: 0, last_log_term: 0 });
    if rng.gen_bool(0.2) {
        return node;
    }
    let term = node.term();
    // Sometimes the voter's log is ahead, and the node is left fetching.
    let (last_log_index, last_log_term) = if rng.gen_bool(0.3) { (5, term - 1) } else { (0, 0) };
    grant(&mut node, Message::VoteResponse { term, granted: true, last_log_index, last_log_term });
    if node.role() == Role::Leader {
        let set = Operation::Set { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") };
        let ready = node.step(later, Input::Client(ClientRequest { client_id: 9, sequence: 1, operation: set }));
        settle(&mut node, later, ready);
    }
    node
}

#[test]
fn a_million_random_and_extreme_peer_messages_crash_no_node() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut now: Nanos = 0;
    let mut node = fresh_node(&mut rng, now);
    now += 3_000 * MS;
    let mut stepped = 0u64;
    for input in 0..INPUTS {
        if input % INPUTS_PER_NODE == 0 {
            node = fresh_node(&mut rng, now);
            now += 3_000 * MS;
        }
        now += rng.gen_range(0..20 * MS);
        let envelope = if rng.gen_bool(0.03) {
            let garbage: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            wire::decode::<proto::PeerMessage>(Bytes::from(garbage), "PeerMessage")
                .ok()
                .and_then(|message| consensus_message(&mut rng, message))
        } else {
            let message = message(&mut rng, &node);
            consensus_message(&mut rng, message)
        };
        let Some(envelope) = envelope else { continue };
        let shown = format!("{envelope:?}");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let ready = node.step(now, Input::Message(envelope));
            settle(&mut node, now, ready);
        }));
        assert!(outcome.is_ok(), "input {input} (seed {SEED}) crashed node 1 in role {:?}: {shown}", node.role());
        assert!(node.term() <= TERM_MAX, "input {input} took the term to {}: {shown}", node.term());
        stepped += 1;
    }
    // Most extreme numbers are refused at the wire; enough get through to
    // exercise every role's handlers.
    assert!(stepped > INPUTS / 4, "only {stepped} of {INPUTS} inputs got past the wire boundary");
}
