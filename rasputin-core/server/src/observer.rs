//! What the event loop tells operators: after each turn it reads consensus
//! and storage into the metrics and the status board, which the status
//! server and the client port's status request serve.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rasputin_consensus::{Nanos, NodeId, Role};
use rasputin_kv::operation::Node;
use rasputin_kv::range::{RangeDescriptor, RangeId};
use rasputin_kv::wire::proto;

use crate::metrics::Metrics;
use crate::status::{StatusBoard, StatusServer};
use crate::storage::Storage;

/// The board is republished at most this often: a turn can be a few
/// microseconds, and a status is a dozen fields and four strings.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(50);
/// RocksDB's size is read this often.
const STORAGE_SIZE_INTERVAL: Duration = Duration::from_secs(5);

/// A range's request rate is counted over this window, in whole seconds.
pub const REQUEST_RATE_WINDOW_SECONDS: u64 = 10;

/// Requests answered per second, over the last `REQUEST_RATE_WINDOW_SECONDS`
/// whole seconds: one bucket per second, the current one still filling.
struct RequestRate {
    started: Instant,
    buckets: [Cell<u64>; REQUEST_RATE_WINDOW_SECONDS as usize + 1],
    /// The second (since `started`) that the newest bucket counts.
    second: Cell<u64>,
}

impl RequestRate {
    fn new(started: Instant) -> RequestRate {
        RequestRate { started, buckets: Default::default(), second: Cell::new(0) }
    }

    fn record(&self, now: Instant) {
        let bucket = &self.buckets[self.advance(now)];
        bucket.set(bucket.get() + 1);
    }

    fn per_second(&self, now: Instant) -> f64 {
        let current = self.advance(now);
        let done: u64 =
            (0..self.buckets.len()).filter(|&index| index != current).map(|index| self.buckets[index].get()).sum();
        // Early on, fewer whole seconds than the window have passed.
        let seconds = self.second.get().clamp(1, REQUEST_RATE_WINDOW_SECONDS);
        done as f64 / seconds as f64
    }

    /// Empties the buckets of the seconds that passed since the last call,
    /// and returns the current second's bucket.
    fn advance(&self, now: Instant) -> usize {
        let second = now.saturating_duration_since(self.started).as_secs();
        let length = self.buckets.len() as u64;
        let passed = second.saturating_sub(self.second.get()).min(length);
        for step in 1..=passed {
            self.buckets[((self.second.get() + step) % length) as usize].set(0);
        }
        self.second.set(self.second.get().max(second));
        (self.second.get() % length) as usize
    }
}

/// Who this node is, for its status.
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub peer_address: String,
    pub client_address: String,
}

/// What consensus and the loop look like this turn.
pub struct Turn<'a> {
    /// The first range's node, whose role and log the status reports.
    pub node: Option<&'a Node>,
    /// Every hosted data range, with its node.
    pub ranges: Vec<(&'a RangeDescriptor, &'a Node)>,
    /// The meta range's replica here, if this node hosts one.
    pub meta: Option<(&'a RangeDescriptor, &'a Node)>,
    pub now: Nanos,
    pub storage: &'a Storage,
    /// The leader's client address, when known.
    pub leader_address: Option<&'a str>,
    pub shutting_down: bool,
    pub snapshot_sends: (u64, u64),
}

pub struct Observer {
    identity: Identity,
    pub metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    /// Serves the board and the metrics over HTTP while it lives.
    _server: Option<StatusServer>,
    started: Instant,
    // Cells, so that the loop can observe itself through a shared borrow.
    published_at: Cell<Option<Instant>>,
    sized_at: Cell<Option<Instant>>,
    leader_seen: Cell<Option<NodeId>>,
    lease_end_seen: Cell<Option<Nanos>>,
    lease_held_seen: Cell<bool>,
    /// Each hosted range's request rate; a range no longer hosted leaves.
    requests: RefCell<BTreeMap<RangeId, RequestRate>>,
}

impl Observer {
    pub fn new(
        identity: Identity,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
        server: Option<StatusServer>,
    ) -> Observer {
        let started = Instant::now();
        Observer {
            identity,
            metrics,
            board,
            _server: server,
            started,
            requests: RefCell::new(BTreeMap::new()),
            published_at: Cell::new(None),
            sized_at: Cell::new(None),
            leader_seen: Cell::new(None),
            lease_end_seen: Cell::new(None),
            lease_held_seen: Cell::new(false),
        }
    }

    /// Counts what changed since the last turn, and republishes the status
    /// when it is due or `urgent`.
    pub fn after_turn(&self, turn: &Turn, urgent: bool) {
        if let Some(node) = turn.node {
            self.count_leadership(node, turn.now);
        }
        self.metrics.ranges.store(turn.ranges.len() as u64, Ordering::Relaxed);
        let (started, finished) = turn.snapshot_sends;
        self.metrics.snapshot_sends_started.store(started, Ordering::Relaxed);
        self.metrics.snapshot_sends_finished.store(finished, Ordering::Relaxed);
        let now = Instant::now();
        if self.sized_at.get().is_none_or(|at| now.duration_since(at) >= STORAGE_SIZE_INTERVAL) {
            self.sized_at.set(Some(now));
            self.metrics.storage_bytes.store(turn.storage.size_bytes(), Ordering::Relaxed);
            let hosted = |range: &RangeId| turn.ranges.iter().any(|(descriptor, _)| descriptor.id == *range);
            self.requests.borrow_mut().retain(|range, _| hosted(range));
        }
        if urgent || self.published_at.get().is_none_or(|at| now.duration_since(at) >= PUBLISH_INTERVAL) {
            self.published_at.set(Some(now));
            self.board.publish(self.status(turn));
        }
    }

    /// A client request of `range` was answered, for its request rate.
    pub fn count_request(&self, range: RangeId) {
        let now = Instant::now();
        self.requests.borrow_mut().entry(range).or_insert_with(|| RequestRate::new(now)).record(now);
    }

    fn count_leadership(&self, node: &Node, now: Nanos) {
        let leader = node.leader_id();
        if leader.is_some() && leader != self.leader_seen.replace(leader) {
            self.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        let lease_end = node.lease_end();
        if let (Some(end), Some(seen)) = (lease_end, self.lease_end_seen.replace(lease_end)) {
            if end > seen {
                self.metrics.lease_renewals.fetch_add(1, Ordering::Relaxed);
            }
        }
        let held = node.holds_lease(now);
        if self.lease_held_seen.replace(held) && !held && node.role() == Role::Leader {
            self.metrics.lease_lapses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This node's status as of `turn`.
    pub fn status(&self, turn: &Turn) -> proto::NodeStatus {
        let mut status = proto::NodeStatus {
            node_id: self.identity.node_id,
            cluster_id: self.identity.cluster_id,
            peer_address: self.identity.peer_address.clone(),
            client_address: self.identity.client_address.clone(),
            role: "joining".to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            shutting_down: turn.shutting_down,
            applied_index: turn.storage.first_range().applied().0,
            leader_address: turn.leader_address.unwrap_or_default().to_string(),
            ..Default::default()
        };
        if let Some(node) = turn.node {
            status.role = match node.role() {
                Role::Leader => "leader",
                Role::Follower => "follower",
                Role::LeaderElect => "leader-elect",
                Role::PreCandidate | Role::Candidate => "candidate",
            }
            .to_string();
            status.term = node.term();
            status.leader_id = node.leader_id().unwrap_or(0);
            status.lease_held = node.sees_leased_leader(turn.now);
            status.commit_index = node.commit_index();
            status.log_entries = node.log().last_index() - node.log().snapshot_index();
            status.log_bytes = node.log().bytes() as u64;
            status.snapshot_index = node.log().snapshot_index();
        }
        let single = turn.ranges.len() == 1;
        let ranges = turn.ranges.iter().map(|(descriptor, node)| self.range_status(descriptor, node, single));
        status.ranges = ranges.collect();
        status.meta_range = turn.meta.map(|(descriptor, node)| self.range_status(descriptor, node, false));
        status
    }

    /// A range's line in the status: the requests answered for it per
    /// second, and, while the node hosts one range, the node's storage size
    /// (per range, size is not measured yet: RocksDB's table files mix the
    /// ranges' keys with the sessions every write updates, so their key
    /// bounds cannot apportion it, and this binding of RocksDB offers no
    /// approximate size of a key span).
    fn range_status(&self, descriptor: &RangeDescriptor, node: &Node, single: bool) -> proto::RangeStatus {
        let size_bytes = if single { self.metrics.storage_bytes.load(Ordering::Relaxed) } else { 0 };
        let requests = self.requests.borrow();
        let requests_per_second = requests.get(&descriptor.id).map_or(0.0, |rate| rate.per_second(Instant::now()));
        proto::RangeStatus {
            descriptor: Some(descriptor.to_proto()),
            leader_id: node.leader_id().unwrap_or(0),
            size_bytes,
            requests_per_second,
            transferring_to: node.transferring_to().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_rate_counts_the_whole_seconds_of_its_window_only() {
        let started = Instant::now();
        let rate = RequestRate::new(started);
        let at = |seconds: f64| started + Duration::from_secs_f64(seconds);
        for _ in 0..30 {
            rate.record(at(0.5));
        }
        // The second still filling does not count yet.
        assert_eq!(rate.per_second(at(0.9)), 0.0);
        assert_eq!(rate.per_second(at(1.5)), 30.0);
        for _ in 0..10 {
            rate.record(at(2.5));
        }
        assert_eq!(rate.per_second(at(3.0)), 40.0 / 3.0);
        // Eleven seconds on, the first second has left the window.
        assert_eq!(rate.per_second(at(11.5)), 10.0 / 10.0);
        assert_eq!(rate.per_second(at(40.0)), 0.0);
    }
}
