//! The faults a campaign injects into a real cluster, and how each is healed.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::cluster::Cluster;
use super::network::{Link, LinkFault, LinkFaultKind, Network};
use super::HarnessError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of a random node, restarted when healed.
    KillOne,
    /// kill -9 of the leader, restarted when healed.
    KillLeader,
    /// kill -9 of every node at once, all restarted when healed.
    KillAll,
    /// SIGSTOP of the leader, SIGCONT when healed; held longer than the lease.
    PauseLeader,
    /// One node (the leader half the time) cut off from all others.
    Isolate,
    /// The leader cut off from all others.
    IsolateLeader,
    /// A minority cut off from a majority.
    MajorityMinority,
    /// Two halves that cannot reach each other, and one node reaching both.
    Bridge,
    /// Two nodes cut from each other only.
    Partial,
    /// One node's messages to the others are lost (or theirs to it), not the reverse.
    OneWay,
    /// One node restarted with its clocks running fast or slow (libfaketime),
    /// within the drift bound the lease assumes.
    ClockSkew,
    /// The constrained election (docs/harpoon.md, scenario (c)): a follower
    /// A (and with five nodes one more) stops hearing the leader for a
    /// moment, so that the others hold entries A lacks; then the leader is
    /// cut off entirely and every other link not touching A is cut, so A
    /// is the only node that reaches a majority.
    Constrained,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::KillOne,
        FaultKind::KillLeader,
        FaultKind::KillAll,
        FaultKind::PauseLeader,
        FaultKind::Isolate,
        FaultKind::IsolateLeader,
        FaultKind::MajorityMinority,
        FaultKind::Bridge,
        FaultKind::Partial,
        FaultKind::OneWay,
        FaultKind::ClockSkew,
        FaultKind::Constrained,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillOne => "kill-one",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillAll => "kill-all",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::Isolate => "isolate",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::MajorityMinority => "majority-minority",
            FaultKind::Bridge => "bridge",
            FaultKind::Partial => "partial",
            FaultKind::OneWay => "one-way",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::Constrained => "constrained",
        }
    }

    /// Parses a comma-separated list of names or groups: all, kill, pause,
    /// partition, clock, or single kinds such as kill-leader.
    pub fn parse_set(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim) {
            let group: Vec<FaultKind> = match part {
                "all" => FaultKind::ALL.to_vec(),
                "kill" => vec![FaultKind::KillOne, FaultKind::KillLeader, FaultKind::KillAll],
                "pause" => vec![FaultKind::PauseLeader],
                "partition" => FaultKind::ALL.into_iter().filter(|kind| kind.is_network()).collect(),
                "clock" => vec![FaultKind::ClockSkew],
                name => match FaultKind::ALL.into_iter().find(|kind| kind.name() == name) {
                    Some(kind) => vec![kind],
                    None => {
                        return Err(format!(
                            "unknown nemesis {name:?}: use all, kill, pause, partition, clock, or one of {}",
                            FaultKind::ALL.map(FaultKind::name).join(", ")
                        ))
                    }
                },
            };
            for kind in group {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        Ok(kinds)
    }

    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::Isolate
                | FaultKind::IsolateLeader
                | FaultKind::MajorityMinority
                | FaultKind::Bridge
                | FaultKind::Partial
                | FaultKind::OneWay
                | FaultKind::Constrained
        )
    }
}

/// A fault in force, with what healing it takes.
pub enum Active {
    Killed(Vec<usize>),
    Paused(usize),
    Partitioned,
    Skewed(usize),
}

/// Chooses the faults of each round: every enabled kind once, in order, then
/// at random; with `combine`, some rounds add a network fault to a process
/// fault (or the reverse).
pub struct Planner {
    kinds: Vec<FaultKind>,
    combine: bool,
    rounds_planned: usize,
}

impl Planner {
    pub fn new(kinds: Vec<FaultKind>, combine: bool) -> Planner {
        assert!(!kinds.is_empty(), "a campaign needs at least one fault kind");
        Planner { kinds, combine, rounds_planned: 0 }
    }

    pub fn next_round(&mut self, random: &mut ChaCha8Rng) -> Vec<FaultKind> {
        let first = match self.kinds.get(self.rounds_planned) {
            Some(kind) => *kind,
            None => *self.kinds.choose(random).expect("not empty"),
        };
        self.rounds_planned += 1;
        let mut round = vec![first];
        let others: Vec<FaultKind> =
            self.kinds.iter().copied().filter(|kind| kind.is_network() != first.is_network()).collect();
        if self.combine && !others.is_empty() && random.gen_bool(0.5) {
            round.push(*others.choose(random).expect("not empty"));
        }
        round
    }
}

/// How long the constrained election's future leader stops hearing the
/// leader before the partition: long enough for the others to take
/// entries it lacks, shorter than the 500 ms lease, so the leader leads on.
const CONSTRAINED_LAG: Duration = Duration::from_millis(300);

/// The clock rate of a skewed node: 1% to 4% fast or slow, inside the 5%
/// drift bound the daemon's lease is computed for.
fn skewed_rate(random: &mut ChaCha8Rng) -> f64 {
    let error = random.gen_range(0.01..0.04);
    if random.gen_bool(0.5) {
        1.0 + error
    } else {
        1.0 - error
    }
}

/// The leader half the time (when one answers), otherwise a random node.
fn target(cluster: &Cluster, random: &mut ChaCha8Rng) -> usize {
    let leader = if random.gen_bool(0.5) { cluster.leader() } else { None };
    leader.unwrap_or_else(|| random.gen_range(0..cluster.len()))
}

fn between(from: &[usize], to: &[usize]) -> Vec<Link> {
    let mut links = Vec::new();
    for &a in from {
        for &b in to {
            links.push((a, b));
            links.push((b, a));
        }
    }
    links
}

/// The directed links a network fault cuts among `count` nodes; `chosen` is
/// the node that isolate and one-way single out.
fn links_for(kind: FaultKind, count: usize, chosen: usize, random: &mut ChaCha8Rng) -> Vec<Link> {
    let mut nodes: Vec<usize> = (0..count).collect();
    nodes.shuffle(random);
    match kind {
        FaultKind::Isolate | FaultKind::IsolateLeader => {
            let others: Vec<usize> = (0..count).filter(|node| *node != chosen).collect();
            between(&[chosen], &others)
        }
        FaultKind::MajorityMinority => {
            let (minority, majority) = nodes.split_at(count / 2);
            between(minority, majority)
        }
        FaultKind::Bridge => {
            let halves = &nodes[1..];
            let (left, right) = halves.split_at(halves.len() / 2);
            between(left, right)
        }
        FaultKind::Partial => between(&nodes[..1], &nodes[1..2]),
        FaultKind::OneWay => {
            let outbound = random.gen_bool(0.5);
            let others = (0..count).filter(|other| *other != chosen);
            others.map(|other| if outbound { (chosen, other) } else { (other, chosen) }).collect()
        }
        _ => unreachable!("{kind:?} is not a network fault"),
    }
}

/// The constrained election's partition: every link that does not touch
/// `hub` is cut, and so are the hub's links to `isolated`.
fn constrained_links(count: usize, hub: usize, isolated: usize) -> Vec<Link> {
    let mut links = Vec::new();
    for a in 0..count {
        for b in (a + 1)..count {
            let touches_hub = a == hub || b == hub;
            if !touches_hub || a == isolated || b == isolated {
                links.extend([(a, b), (b, a)]);
            }
        }
    }
    links
}

/// Lets the followers other than the hub (and, with five nodes or more,
/// one more) get ahead of it, then cuts the links of `constrained_links`.
fn constrain(cluster: &Cluster, network: &mut Network, random: &mut ChaCha8Rng) -> Result<String, HarnessError> {
    let count = cluster.len();
    let leader = cluster.leader().unwrap_or_else(|| random.gen_range(0..count));
    let mut followers: Vec<usize> = (0..count).filter(|node| *node != leader).collect();
    followers.shuffle(random);
    let hub = followers[0];
    let lagging: Vec<Link> =
        followers.iter().take(if count >= 5 { 2 } else { 1 }).map(|&node| (leader, node)).collect();
    network.apply(&lagging, LinkFault::Cut)?;
    std::thread::sleep(CONSTRAINED_LAG);
    network.heal()?;
    network.apply(&constrained_links(count, hub, leader), LinkFault::Cut)?;
    Ok(format!(
        "constrained election: node {} lagged behind leader {}, which is now cut off; only node {} reaches a majority",
        hub + 1,
        leader + 1,
        hub + 1
    ))
}

fn link_fault(network: &Network, random: &mut ChaCha8Rng) -> LinkFault {
    match network.link_faults().choose(random).expect("every network can cut") {
        LinkFaultKind::Cut => LinkFault::Cut,
        LinkFaultKind::Stall => LinkFault::Stall,
        LinkFaultKind::Delay => LinkFault::Delay(Duration::from_millis(random.gen_range(50..400))),
    }
}

/// Injects one fault; the returned description goes into the campaign log.
pub fn inject(
    kind: FaultKind,
    cluster: &mut Cluster,
    network: &mut Network,
    random: &mut ChaCha8Rng,
) -> Result<(Active, String), HarnessError> {
    let node_name = |index: usize| format!("node {}", index + 1);
    Ok(match kind {
        FaultKind::KillOne | FaultKind::KillLeader => {
            let victim = match kind {
                FaultKind::KillLeader => cluster.leader().unwrap_or_else(|| random.gen_range(0..cluster.len())),
                _ => random.gen_range(0..cluster.len()),
            };
            cluster.kill(victim);
            (Active::Killed(vec![victim]), format!("killed {}", node_name(victim)))
        }
        FaultKind::KillAll => {
            let all: Vec<usize> = (0..cluster.len()).collect();
            all.iter().for_each(|node| cluster.kill(*node));
            (Active::Killed(all), "killed every node".to_string())
        }
        FaultKind::PauseLeader => {
            let victim = cluster.leader().unwrap_or_else(|| random.gen_range(0..cluster.len()));
            cluster.pause(victim)?;
            (Active::Paused(victim), format!("paused {}", node_name(victim)))
        }
        FaultKind::ClockSkew => {
            let victim = target(cluster, random);
            let rate = skewed_rate(random);
            cluster.kill(victim);
            cluster.launch(victim, Some(rate))?;
            (Active::Skewed(victim), format!("restarted {} with its clocks at {rate:.3}× speed", node_name(victim)))
        }
        FaultKind::Constrained => (Active::Partitioned, constrain(cluster, network, random)?),
        network_kind => {
            let chosen = match network_kind {
                FaultKind::IsolateLeader => cluster.leader().unwrap_or_else(|| random.gen_range(0..cluster.len())),
                _ => target(cluster, random),
            };
            let links = links_for(network_kind, cluster.len(), chosen, random);
            let fault = link_fault(network, random);
            network.apply(&links, fault)?;
            let shown: Vec<String> = links.iter().map(|(from, to)| format!("{}→{}", from + 1, to + 1)).collect();
            (Active::Partitioned, format!("{fault:?} on links {}", shown.join(" ")))
        }
    })
}

pub fn heal(active: Active, cluster: &mut Cluster, network: &mut Network) -> Result<(), HarnessError> {
    match active {
        Active::Killed(nodes) => {
            for node in nodes {
                cluster.launch(node, None)?;
            }
        }
        Active::Paused(node) => cluster.resume(node)?,
        Active::Partitioned => network.heal()?,
        Active::Skewed(node) => {
            cluster.kill(node);
            cluster.launch(node, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    #[test]
    fn groups_and_names_parse_and_unknown_names_are_refused() {
        assert_eq!(FaultKind::parse_set("all").unwrap(), FaultKind::ALL.to_vec());
        assert_eq!(FaultKind::parse_set("kill,kill-leader").unwrap().len(), 3);
        let partitions = FaultKind::parse_set("partition").unwrap();
        assert!(partitions.iter().all(|kind| kind.is_network()) && partitions.len() == 7);
        assert_eq!(FaultKind::parse_set("pause,clock").unwrap(), [FaultKind::PauseLeader, FaultKind::ClockSkew]);
        assert!(FaultKind::parse_set("meteor").unwrap_err().contains("unknown nemesis \"meteor\""));
    }

    #[test]
    fn the_first_rounds_cover_every_kind_and_combined_rounds_mix_classes() {
        let mut random = ChaCha8Rng::seed_from_u64(1);
        let mut planner = Planner::new(FaultKind::ALL.to_vec(), true);
        let rounds: Vec<Vec<FaultKind>> = (0..200).map(|_| planner.next_round(&mut random)).collect();
        let firsts: Vec<FaultKind> = rounds.iter().take(FaultKind::ALL.len()).map(|round| round[0]).collect();
        assert_eq!(firsts, FaultKind::ALL.to_vec());
        assert!(rounds.iter().any(|round| round.len() == 2));
        for round in rounds.iter().filter(|round| round.len() == 2) {
            assert_ne!(round[0].is_network(), round[1].is_network(), "{round:?}");
        }
    }

    fn cut_pairs(links: &[Link]) -> BTreeSet<(usize, usize)> {
        links.iter().map(|&(from, to)| (from.min(to), from.max(to))).collect()
    }

    #[test]
    fn the_constrained_partition_leaves_only_the_hub_a_majority() {
        let links = constrained_links(5, 1, 3);
        let cut = cut_pairs(&links);
        assert_eq!((links.len(), cut.len()), (14, 7));
        for node in 0..5 {
            let reaches = (0..5).filter(|other| *other != node && !cut.contains(&(node.min(*other), node.max(*other))));
            let expected = match node {
                1 => 3,
                3 => 0,
                _ => 1,
            };
            assert_eq!(reaches.count(), expected, "node {node}");
        }
        assert_eq!(cut_pairs(&constrained_links(3, 0, 2)), BTreeSet::from([(0, 2), (1, 2)]));
    }

    #[test]
    fn partitions_cut_the_links_their_names_say() {
        let mut random = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let isolated = links_for(FaultKind::Isolate, 5, 2, &mut random);
            assert_eq!(isolated.len(), 8);
            assert!(isolated.iter().all(|&(from, to)| from == 2 || to == 2));

            let split = links_for(FaultKind::MajorityMinority, 5, 0, &mut random);
            let minority: BTreeSet<usize> =
                (0..5).filter(|node| split.iter().filter(|link| link.0 == *node).count() == 3).collect();
            assert_eq!((split.len(), minority.len()), (12, 2), "{split:?}");

            let bridged = links_for(FaultKind::Bridge, 5, 0, &mut random);
            let touched: BTreeSet<usize> = bridged.iter().flat_map(|&(from, to)| [from, to]).collect();
            assert_eq!((bridged.len(), touched.len()), (8, 4), "one node, the bridge, keeps every link");

            let partial = links_for(FaultKind::Partial, 3, 0, &mut random);
            assert_eq!((partial.len(), cut_pairs(&partial).len()), (2, 1));

            let one_way = links_for(FaultKind::OneWay, 3, 1, &mut random);
            let outbound = one_way.iter().all(|link| link.0 == 1);
            let inbound = one_way.iter().all(|link| link.1 == 1);
            assert!(one_way.len() == 2 && (outbound || inbound), "{one_way:?}");
        }
    }
}
