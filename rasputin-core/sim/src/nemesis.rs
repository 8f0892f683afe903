//! Fault injection: which faults a run may draw, and how each is shaped.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::network::Network;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NemesisKind {
    /// Clean partitions: an isolated node, majority/minority, one-way cuts, clogged links.
    Partition,
    /// Partial connectivity: two nodes lose each other while both reach the rest; bridges.
    Partial,
    /// Crash and restart: one node, the leader, or every node at once.
    Crash,
    /// Freeze a process while its clock runs on, often longer than the lease.
    Pause,
    /// Skew a node's clock rate to the edge of the allowed drift.
    Clock,
    /// Both at once: the leader's clock at the edge of the drift bound while
    /// two nodes lose each other. Single faults rarely reach the window
    /// where lease margins matter; this one aims at it.
    SkewedPartial,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 6] = [
        NemesisKind::Partition,
        NemesisKind::Partial,
        NemesisKind::Crash,
        NemesisKind::Pause,
        NemesisKind::Clock,
        NemesisKind::SkewedPartial,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Partition => "partition",
            NemesisKind::Partial => "partial",
            NemesisKind::Crash => "crash",
            NemesisKind::Pause => "pause",
            NemesisKind::Clock => "clock",
            NemesisKind::SkewedPartial => "skewed-partial",
        }
    }

    /// Parses a command-line name; `all` selects every kind and `none` no faults.
    pub fn parse_set(text: &str) -> Option<Vec<NemesisKind>> {
        match text {
            "all" => Some(NemesisKind::ALL.to_vec()),
            "none" => Some(Vec::new()),
            _ => NemesisKind::ALL.into_iter().find(|kind| kind.name() == text).map(|kind| vec![kind]),
        }
    }
}

/// Which nodes a crash or pause hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Random,
    Everyone,
}

/// Shapes a random clean partition into `network`; returns its description.
pub fn partition(network: &mut Network, rng: &mut ChaCha8Rng, nodes: usize, leader: Option<usize>) -> String {
    let mut order: Vec<usize> = (0..nodes).collect();
    order.shuffle(rng);
    let victim = leader.filter(|_| rng.gen_bool(0.5)).unwrap_or(order[0]);
    match rng.gen_range(0..4) {
        0 => {
            for other in (0..nodes).filter(|&other| other != victim) {
                network.cut_both_ways(victim, other);
            }
            format!("isolate {}", victim + 1)
        }
        1 => {
            let minority = &order[..nodes / 2];
            for &a in minority {
                for &b in &order[nodes / 2..] {
                    network.cut_both_ways(a, b);
                }
            }
            format!("split minority {:?}", minority.iter().map(|index| index + 1).collect::<Vec<_>>())
        }
        2 => {
            let outbound = rng.gen_bool(0.5);
            for other in (0..nodes).filter(|&other| other != victim) {
                if outbound {
                    network.cut_one_way(victim, other);
                } else {
                    network.cut_one_way(other, victim);
                }
            }
            format!("one-way cut {} {}", if outbound { "from" } else { "to" }, victim + 1)
        }
        _ => {
            let other = order.iter().copied().find(|&node| node != victim).expect("at least two nodes");
            let extra_ns = rng.gen_range(100_000_000..800_000_000);
            network.clog_both_ways(victim, other, extra_ns);
            format!("clog {}-{} by {} ms", victim + 1, other + 1, extra_ns / 1_000_000)
        }
    }
}

/// Shapes a partial-connectivity fault into `network`; returns its description.
pub fn partial(network: &mut Network, rng: &mut ChaCha8Rng, nodes: usize, leader: Option<usize>) -> String {
    let mut order: Vec<usize> = (0..nodes).collect();
    order.shuffle(rng);
    if rng.gen_bool(0.3) {
        // A bridge: two halves that reach each other only through one node.
        let bridge = order[0];
        let half = (nodes - 1) / 2;
        let (left, right) = order[1..].split_at(half);
        for &a in left {
            for &b in right {
                network.cut_both_ways(a, b);
            }
        }
        return format!("bridge through {}", bridge + 1);
    }
    let a = leader.unwrap_or(order[0]);
    let b = order.iter().copied().find(|&node| node != a).expect("at least two nodes");
    network.cut_both_ways(a, b);
    format!("partial cut {}-{}", a + 1, b + 1)
}
