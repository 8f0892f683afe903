//! The partial-connectivity experiment: Harpoon against Raft and Raft with
//! pre-vote and check-quorum, in the scenarios of `shared/notes` and the
//! Omni-Paxos paper (EuroSys 2023).

use super::nemesis::NemesisKind;
use super::network::NetworkConfig;
use super::world::World;
use super::{SimConfig, SECOND_NS};
use rasputin_consensus::{Config, ElectionMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// (a) The leader and one follower lose each other; everyone else is connected.
    LeaderFollower,
    /// (b) Five nodes; only A reaches everyone, the leader C reaches only A.
    QuorumLoss,
    /// (c) As (b) with C cut off entirely, after B and E received entries that A lacks.
    Constrained,
    /// (d) Three nodes; the leader B and C lose each other; A reaches both.
    Chained,
}

impl Scenario {
    pub const ALL: [Scenario; 4] =
        [Scenario::LeaderFollower, Scenario::QuorumLoss, Scenario::Constrained, Scenario::Chained];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::LeaderFollower => "(a) leader-follower partial",
            Scenario::QuorumLoss => "(b) quorum loss",
            Scenario::Constrained => "(c) constrained election",
            Scenario::Chained => "(d) chained",
        }
    }

    pub fn nodes(self) -> usize {
        match self {
            Scenario::Chained => 3,
            Scenario::LeaderFollower | Scenario::QuorumLoss | Scenario::Constrained => 5,
        }
    }
}

/// An election protocol under test: a mode, and for Harpoon whether a
/// lagging node lets a better-placed one campaign first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    pub mode: ElectionMode,
    pub campaign_defers_to_better_logs: bool,
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender { mode: ElectionMode::Harpoon, campaign_defers_to_better_logs: true },
        Contender { mode: ElectionMode::Harpoon, campaign_defers_to_better_logs: false },
        Contender { mode: ElectionMode::RaftPreVoteCheckQuorum, campaign_defers_to_better_logs: false },
        Contender { mode: ElectionMode::Raft, campaign_defers_to_better_logs: false },
    ];

    pub fn label(self) -> &'static str {
        match (self.mode, self.campaign_defers_to_better_logs) {
            (ElectionMode::Harpoon, true) => "harpoon",
            (ElectionMode::Harpoon, false) => "harpoon, no campaign preference",
            (mode, _) => mode.name(),
        }
    }
}

/// One run of one scenario. Times are in election timeouts.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Leaders elected while the fault lasted.
    pub leader_changes: usize,
    /// The share of the fault window, in slots of a tenth of an election
    /// timeout, in which at least one client write committed.
    pub write_availability: f64,
    /// The longest stretch without a committed write during the fault.
    pub longest_outage_election_timeouts: f64,
    /// Set when the run could not set up the scenario or broke an invariant.
    pub error: Option<String>,
}

const WARMUP_NS: u64 = 5 * SECOND_NS;
const FAULT_ELECTION_TIMEOUTS: u64 = 20;

pub fn run(scenario: Scenario, contender: Contender, seed: u64) -> Outcome {
    let mut config = SimConfig::new(scenario.nodes(), contender.mode, Vec::<NemesisKind>::new());
    config.campaign_defers_to_better_logs = contender.campaign_defers_to_better_logs;
    config.network = NetworkConfig::default();
    config.clients = 4;
    config.client_think_ns = 5_000_000;
    let election_ns = Config::new(1, vec![1]).election_timeout_ns;
    config.attempt_timeout_ns = election_ns * 3 / 10;
    config.operation_timeout_ns = 2 * election_ns;
    let mut world = World::new(&config, seed);
    world.start_nodes();
    world.start_clients();
    let fault_ns = FAULT_ELECTION_TIMEOUTS * election_ns;
    match run_phases(&mut world, scenario, election_ns, fault_ns) {
        Ok(fault_start_ns) => measure(world.into_report(), fault_start_ns, fault_ns, election_ns),
        Err(error) => Outcome { error: Some(error), ..Outcome::default() },
    }
}

fn run_phases(world: &mut World, scenario: Scenario, election_ns: u64, fault_ns: u64) -> Result<u64, String> {
    world.run_until(WARMUP_NS)?;
    let leader = world.leader().ok_or("no leader after the warm-up")?;
    let nodes = scenario.nodes();
    let others: Vec<usize> = (0..nodes).filter(|&node| node != leader).collect();
    match scenario {
        Scenario::LeaderFollower | Scenario::Chained => world.network.cut_both_ways(leader, others[0]),
        Scenario::QuorumLoss => keep_only_hub_links(world, nodes, others[0], None),
        Scenario::Constrained => {
            // A (others[0]) and D (others[2]) stop receiving from C for a moment,
            // so B and E hold appended entries that A lacks.
            let (a, d) = (others[0], others[2]);
            world.network.cut_one_way(leader, a);
            world.network.cut_one_way(leader, d);
            let now = world.now_ns();
            world.run_until(now + election_ns * 3 / 10)?;
            world.network.heal();
            keep_only_hub_links(world, nodes, a, Some(leader));
        }
    }
    let fault_start_ns = world.now_ns();
    world.run_until(fault_start_ns + fault_ns)?;
    world.network.heal();
    world.set_end(fault_start_ns + fault_ns + 5 * election_ns, fault_start_ns + fault_ns);
    let now = world.now_ns();
    world.run_until(now + 5 * election_ns)?;
    Ok(fault_start_ns)
}

/// Cuts every link that does not touch `hub`, and the hub's link to `isolated`.
fn keep_only_hub_links(world: &mut World, nodes: usize, hub: usize, isolated: Option<usize>) {
    for a in 0..nodes {
        for b in (a + 1)..nodes {
            let touches_hub = a == hub || b == hub;
            let to_isolated = isolated.is_some_and(|node| a == node || b == node);
            if !touches_hub || to_isolated {
                world.network.cut_both_ways(a, b);
            }
        }
    }
}

fn measure(report: super::SeedReport, start_ns: u64, fault_ns: u64, election_ns: u64) -> Outcome {
    let end_ns = start_ns + fault_ns;
    let leader_changes = report.elections.iter().filter(|(at, _, _)| *at > start_ns && *at <= end_ns).count();
    let slot_ns = election_ns / 10;
    let slots = (fault_ns / slot_ns) as usize;
    let mut available = vec![false; slots];
    let mut completions: Vec<u64> =
        report.write_completions_ns.iter().copied().filter(|&at| at > start_ns && at <= end_ns).collect();
    completions.sort_unstable();
    for &at in &completions {
        available[(((at - start_ns) / slot_ns) as usize).min(slots - 1)] = true;
    }
    let mut previous = start_ns;
    let mut longest = 0;
    for &at in completions.iter().chain(std::iter::once(&end_ns)) {
        longest = longest.max(at - previous);
        previous = at;
    }
    Outcome {
        leader_changes,
        write_availability: available.iter().filter(|&&slot| slot).count() as f64 / slots as f64,
        longest_outage_election_timeouts: longest as f64 / election_ns as f64,
        error: report.violation,
    }
}
