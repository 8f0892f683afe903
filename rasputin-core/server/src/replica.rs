//! What the daemon keeps per hosted range (`Replica`), and the timers of
//! all of them (`Deadlines`). Everything else (connections, the sync
//! pipeline, snapshot streams) is the node's, shared by every replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use mio::Token;

use rasputin_consensus::{Nanos, NodeId, Term};
use rasputin_kv::operation::{ClientRequest, Node};
use rasputin_kv::range::{RangeDescriptor, RangeId};

use super::snapshot::Receiver;

/// Ranges one node hosts at most; a split that would pass it is refused.
pub const REPLICAS_PER_NODE_MAX: usize = 10_000;

/// How often a replica tells a peer that does not host its range the
/// range's descriptor, at most: the peer asks at every append or heartbeat
/// until it can make its empty replica, which it cannot while one of its
/// ranges still holds some of the keys.
pub const INTRODUCTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A client request waiting for its answer.
pub struct Waiter {
    pub token: Token,
    pub request_id: u64,
    /// Its index in `metrics::OPERATIONS`, and when it arrived, for the metrics.
    pub operation: usize,
    pub arrived: Instant,
}

/// One hosted range: its consensus node and what waits on it.
pub struct Replica {
    pub node: Node,
    /// The range's bounds as this node applied them last.
    pub descriptor: RangeDescriptor,
    /// Client requests waiting for their entry to apply or their read to be
    /// confirmed, by (client id, sequence).
    pub waiting: HashMap<(u64, u64), Vec<Waiter>>,
    /// Client requests read in this poll, stepped together by `propose`.
    pub proposals: Vec<ClientRequest>,
    /// When consensus wants its next tick.
    pub deadline: Nanos,
    /// A replacement's votes are withheld until its log catches up.
    pub withholding_votes: bool,
    /// The snapshot this replica is receiving, if any.
    pub receiver: Receiver,
    /// When this replica last told each peer that missed the range's split
    /// the range's descriptor (`RangeIntroduction`).
    pub introduced: HashMap<NodeId, Instant>,
    /// As a data range's leader: the (term, version) of its last split that
    /// the meta range said it holds, in this leader's term.
    pub meta_recorded: Option<(Term, u64)>,
}

impl Replica {
    pub fn new(node: Node, descriptor: RangeDescriptor, withholding_votes: bool) -> Replica {
        Replica {
            node,
            descriptor,
            waiting: HashMap::new(),
            proposals: Vec::new(),
            deadline: 0,
            withholding_votes,
            receiver: Receiver::default(),
            introduced: HashMap::new(),
            meta_recorded: None,
        }
    }
}

/// Every replica's next deadline, earliest first, so that a turn ticks only
/// the replicas that are due and the loop sleeps until the first.
#[derive(Default)]
pub struct Deadlines {
    ordered: BTreeSet<(Nanos, RangeId)>,
}

impl Deadlines {
    /// Moves `range`'s deadline from `old` to `new`.
    pub fn set(&mut self, range: RangeId, old: Nanos, new: Nanos) {
        self.ordered.remove(&(old, range));
        self.ordered.insert((new, range));
    }

    pub fn earliest(&self) -> Option<Nanos> {
        self.ordered.first().map(|(deadline, _)| *deadline)
    }

    /// The ranges whose deadline has come by `now`.
    pub fn due(&self, now: Nanos) -> Vec<RangeId> {
        self.ordered.iter().take_while(|(deadline, _)| *deadline <= now).map(|(_, range)| *range).collect()
    }
}

/// The hosted data range holding `key`, if any. Ranges are keyed by id, so
/// this looks at each; `by_start` keeps them in key order for one seek.
pub fn holding(
    by_start: &BTreeMap<Vec<u8>, RangeId>,
    replicas: &BTreeMap<RangeId, Replica>,
    key: &[u8],
) -> Option<RangeId> {
    let (_, &range) = by_start.range(..=key.to_vec()).next_back()?;
    replicas.get(&range).filter(|replica| replica.descriptor.contains(key)).map(|_| range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_due_in_order_and_move() {
        let mut deadlines = Deadlines::default();
        deadlines.set(1, 0, 30);
        deadlines.set(2, 0, 10);
        deadlines.set(3, 0, 20);
        assert_eq!(deadlines.earliest(), Some(10));
        assert_eq!(deadlines.due(20), vec![2, 3]);
        deadlines.set(2, 10, 40);
        assert_eq!(deadlines.due(30), vec![3, 1]);
        deadlines.set(3, 20, 50);
        assert_eq!(deadlines.due(45), vec![1, 2]);
    }
}
