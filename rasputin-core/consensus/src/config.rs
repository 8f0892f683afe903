//! Consensus configuration, validated before a node starts.

use super::types::{Nanos, NodeId};
use thiserror::Error;

/// How leaders are chosen. Only `Harpoon` is meant for production; the Raft
/// modes exist so that experiments can measure Harpoon against them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElectionMode {
    /// Lease-based, non-preempting leadership with pre-vote.
    Harpoon,
    /// Raft as published: no pre-vote, no check-quorum, ReadIndex reads.
    Raft,
    /// Raft with pre-vote and check-quorum (etcd's recommended setting).
    RaftPreVoteCheckQuorum,
}

impl ElectionMode {
    pub fn name(self) -> &'static str {
        match self {
            ElectionMode::Harpoon => "harpoon",
            ElectionMode::Raft => "raft",
            ElectionMode::RaftPreVoteCheckQuorum => "raft-pv-cq",
        }
    }

    pub fn parse(text: &str) -> Option<ElectionMode> {
        [ElectionMode::Harpoon, ElectionMode::Raft, ElectionMode::RaftPreVoteCheckQuorum]
            .into_iter()
            .find(|mode| mode.name() == text)
    }

    pub fn uses_pre_vote(self) -> bool {
        self != ElectionMode::Raft
    }
}

/// Deliberate bugs, compiled in so that tests can show the simulator's
/// checks catch them. Never set outside tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// Serve lease reads for the full `lease_duration`, ignoring clock drift and the margin.
    pub lease_without_drift_margin: bool,
    /// Serve reads before the leader's no-op of its term has committed.
    pub read_before_noop_commits: bool,
    /// Serve reads at once from the leader's own state, with no lease or
    /// quorum round, and keep leading after the lease runs out: the classic
    /// stale read of a deposed leader that does not know it was deposed.
    pub reads_ignore_lease: bool,
    /// Raft modes: grant votes and pre-votes whatever the candidate's log
    /// holds, so that a leader may lack committed entries. (Harpoon never
    /// compares logs in a vote; its leader-elect fetches instead.) The
    /// model checker must find the consequence.
    pub votes_ignore_logs: bool,
    /// Harpoon: a leader-elect leads with its own log at once, skipping the
    /// fetch from its most up-to-date voter.
    pub leader_elect_skips_fetch: bool,
    /// Harpoon: grant votes even while a promise to another node binds.
    pub votes_ignore_promises: bool,
    /// A node that applies a split while it leads the parent in a later
    /// term than the split's still leads the new range at once, with only
    /// the split's state: the new range's leader of the split's term may
    /// have written more, so writes are lost and two leases overlap.
    pub split_leads_in_any_term: bool,
    /// Harpoon: a leader that hands its leadership over keeps leading, and
    /// serving reads from its lease, until the lease runs out, instead of
    /// stepping down as it releases its promises: its successor's lease
    /// then overlaps its own, and its reads go stale.
    pub transfer_keeps_serving: bool,
    /// A replacement that has not caught up votes for any candidate, as a
    /// node that lost nothing would: a candidate lacking entries the lost
    /// log had acknowledged may then win and lead without them.
    pub replacement_votes_freely: bool,
}

impl Faults {
    /// The name of each planted bug, as the simulator's and the model
    /// checker's `--bug` options take them.
    pub const NAMES: [&'static str; 9] = [
        "lease-without-margin",
        "read-before-noop",
        "stale-reads",
        "votes-ignore-logs",
        "skip-fetch",
        "votes-ignore-promises",
        "split-leads-in-any-term",
        "transfer-keeps-serving",
        "replacement-votes-freely",
    ];

    /// The faults for one planted bug's name, if it names one.
    pub fn named(name: &str) -> Option<Faults> {
        let mut faults = Faults::default();
        let flag = match name {
            "lease-without-margin" => &mut faults.lease_without_drift_margin,
            "read-before-noop" => &mut faults.read_before_noop_commits,
            "stale-reads" => &mut faults.reads_ignore_lease,
            "votes-ignore-logs" => &mut faults.votes_ignore_logs,
            "skip-fetch" => &mut faults.leader_elect_skips_fetch,
            "votes-ignore-promises" => &mut faults.votes_ignore_promises,
            "split-leads-in-any-term" => &mut faults.split_leads_in_any_term,
            "transfer-keeps-serving" => &mut faults.transfer_keeps_serving,
            "replacement-votes-freely" => &mut faults.replacement_votes_freely,
            _ => return None,
        };
        *flag = true;
        Some(faults)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Every voting member, including `id`.
    pub members: Vec<NodeId>,
    pub mode: ElectionMode,
    /// The base election timeout; each wait is drawn from [timeout, 2 × timeout).
    pub election_timeout_ns: Nanos,
    pub heartbeat_interval_ns: Nanos,
    /// How long a vote or lease extension binds the voter, on the voter's clock.
    pub lease_duration_ns: Nanos,
    /// The largest relative rate difference between any two nodes' clocks, in [0, 0.5).
    pub drift_bound: f64,
    /// Subtracted from every lease to absorb scheduling delay and timer granularity.
    pub lease_margin_ns: Nanos,
    /// A follower whose oldest unacknowledged append is older than this is probed again.
    pub retransmit_timeout_ns: Nanos,
    /// Harpoon: a node that wins its pre-votes but hears of a more
    /// up-to-date log waits once more before campaigning, so that the
    /// better-placed node usually wins and no fetch is needed.
    pub campaign_defers_to_better_logs: bool,
    pub faults: Faults,
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("node id {id} is not among the members {members:?}; list every member, this node included")]
    NotAMember { id: NodeId, members: Vec<NodeId> },
    #[error("member {0} is listed twice; list each member once")]
    DuplicateMember(NodeId),
    #[error("the lease ({lease_ns} ns) must be shorter than the election timeout ({election_ns} ns), or a follower could campaign while still bound to its leader")]
    LeaseNotShorterThanElection { lease_ns: Nanos, election_ns: Nanos },
    #[error("the heartbeat interval ({heartbeat_ns} ns) must be under a third of the lease ({lease_ns} ns) so that a leader renews before its lease runs out")]
    HeartbeatTooSlow { heartbeat_ns: Nanos, lease_ns: Nanos },
    #[error("drift_bound {0} must lie in [0, 0.5)")]
    DriftBoundOutOfRange(f64),
    #[error("the lease margin ({margin_ns} ns) leaves no usable lease out of {usable_ns} ns; shorten the margin or lengthen the lease")]
    MarginTooLarge { margin_ns: Nanos, usable_ns: Nanos },
    #[error("{name} must be greater than zero")]
    Zero { name: &'static str },
}

impl Config {
    /// A configuration with the defaults used by the daemon: 1 s election
    /// timeout, 100 ms heartbeats, a 500 ms lease and a 5% drift bound.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            id,
            members,
            mode: ElectionMode::Harpoon,
            election_timeout_ns: 1_000_000_000,
            heartbeat_interval_ns: 100_000_000,
            lease_duration_ns: 500_000_000,
            drift_bound: 0.05,
            lease_margin_ns: 10_000_000,
            retransmit_timeout_ns: 300_000_000,
            campaign_defers_to_better_logs: true,
            faults: Faults::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.members.contains(&self.id) {
            return Err(ConfigError::NotAMember { id: self.id, members: self.members.clone() });
        }
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::DuplicateMember(pair[0]));
        }
        for (name, value) in [
            ("election_timeout_ns", self.election_timeout_ns),
            ("heartbeat_interval_ns", self.heartbeat_interval_ns),
            ("lease_duration_ns", self.lease_duration_ns),
            ("retransmit_timeout_ns", self.retransmit_timeout_ns),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        if !(0.0..0.5).contains(&self.drift_bound) {
            return Err(ConfigError::DriftBoundOutOfRange(self.drift_bound));
        }
        if self.lease_duration_ns >= self.election_timeout_ns {
            return Err(ConfigError::LeaseNotShorterThanElection {
                lease_ns: self.lease_duration_ns,
                election_ns: self.election_timeout_ns,
            });
        }
        if self.heartbeat_interval_ns * 3 > self.lease_duration_ns {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat_ns: self.heartbeat_interval_ns,
                lease_ns: self.lease_duration_ns,
            });
        }
        let usable_ns = self.usable_lease_ns();
        if self.lease_margin_ns >= usable_ns {
            return Err(ConfigError::MarginTooLarge { margin_ns: self.lease_margin_ns, usable_ns });
        }
        Ok(())
    }

    /// The part of a lease a leader may count on, on its own clock, before the margin.
    pub fn usable_lease_ns(&self) -> Nanos {
        (self.lease_duration_ns as f64 * (1.0 - self.drift_bound)) as Nanos
    }

    /// How long after a round's send time the leader's lease from that round lasts.
    pub fn leader_lease_ns(&self) -> Nanos {
        if self.faults.lease_without_drift_margin {
            return self.lease_duration_ns;
        }
        self.usable_lease_ns() - self.lease_margin_ns
    }

    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::new(1, vec![1, 2, 3]).validate(), Ok(()));
    }

    #[test]
    fn lease_must_be_shorter_than_election_timeout() {
        let mut config = Config::new(1, vec![1, 2, 3]);
        config.lease_duration_ns = config.election_timeout_ns;
        assert!(matches!(config.validate(), Err(ConfigError::LeaseNotShorterThanElection { .. })));
    }

    #[test]
    fn drift_bound_must_be_below_half() {
        let mut config = Config::new(1, vec![1, 2, 3]);
        for bad in [0.5, 0.7, -0.1] {
            config.drift_bound = bad;
            assert_eq!(config.validate(), Err(ConfigError::DriftBoundOutOfRange(bad)));
        }
    }

    #[test]
    fn members_must_include_self_once() {
        assert!(matches!(Config::new(4, vec![1, 2, 3]).validate(), Err(ConfigError::NotAMember { .. })));
        assert_eq!(Config::new(1, vec![1, 2, 2]).validate(), Err(ConfigError::DuplicateMember(2)));
    }

    #[test]
    fn every_planted_bug_has_a_name() {
        for name in Faults::NAMES {
            let faults = Faults::named(name).expect("a listed name parses");
            assert_ne!(faults, Faults::default(), "{name} plants nothing");
        }
        assert_eq!(Faults::named("no-such-bug"), None);
    }

    #[test]
    fn leader_lease_is_shortened_by_drift_and_margin() {
        let config = Config::new(1, vec![1, 2, 3]);
        assert_eq!(config.leader_lease_ns(), 475_000_000 - 10_000_000);
    }
}
