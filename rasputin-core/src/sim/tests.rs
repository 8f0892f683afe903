//! Simulator tests: determinism, safety over many seeds in every election
//! mode, and proof that the checks catch deliberately broken variants.

use super::world::World;
use super::*;
use crate::consensus::Faults;

fn failures(config: &SimConfig, seeds: std::ops::Range<u64>) -> Vec<String> {
    seeds
        .filter_map(|seed| {
            let report = run_seed(config, seed);
            report.violation.map(|violation| format!("seed {seed}: {violation}"))
        })
        .collect()
}

#[test]
fn the_same_seed_gives_a_byte_identical_trace() {
    let mut config = SimConfig::new(3, ElectionMode::Harpoon, NemesisKind::ALL.to_vec());
    config.record_trace = true;
    let first = run_seed(&config, 7);
    let second = run_seed(&config, 7);
    assert!(first.trace.lines().count() > 10_000, "the run did something");
    assert!(first.trace == second.trace, "seed 7 diverged between two runs");
    assert_ne!(first.trace, run_seed(&config, 8).trace, "different seeds give different runs");
}

#[test]
fn harpoon_is_safe_and_recovers_on_three_nodes_under_every_nemesis() {
    let config = SimConfig::new(3, ElectionMode::Harpoon, NemesisKind::ALL.to_vec());
    let failed = failures(&config, 0..150);
    assert!(failed.is_empty(), "replay with rasputin-sim --seed S --seeds 1 --nodes 3: {failed:#?}");
}

#[test]
fn harpoon_is_safe_and_recovers_on_five_nodes_under_every_nemesis() {
    let config = SimConfig::new(5, ElectionMode::Harpoon, NemesisKind::ALL.to_vec());
    let failed = failures(&config, 1_000..1_100);
    assert!(failed.is_empty(), "replay with rasputin-sim --seed S --seeds 1 --nodes 5: {failed:#?}");
}

#[test]
fn the_raft_comparison_modes_are_safe_too() {
    for mode in [ElectionMode::Raft, ElectionMode::RaftPreVoteCheckQuorum] {
        let config = SimConfig::new(3, mode, NemesisKind::ALL.to_vec());
        let failed = failures(&config, 2_000..2_040);
        assert!(failed.is_empty(), "{}: {failed:#?}", mode.name());
    }
}

#[test]
fn reads_before_the_noop_commits_are_caught() {
    let mut config = SimConfig::new(3, ElectionMode::Harpoon, NemesisKind::ALL.to_vec());
    config.faults = Faults { read_before_noop_commits: true, ..Faults::default() };
    let caught = (0..200).find(|&seed| run_seed(&config, seed).violation.is_some());
    assert!(caught.is_some(), "200 seeds of a leader serving reads before its no-op commits went unnoticed");
}

/// Runs a quiet 3-node cluster (no clients, so every log stays equal), then
/// slows the leader's clock to `leader_rate` and speeds the others to
/// `follower_rate`. It cuts the leader from follower F at once, so that F
/// keeps campaigning, and from the other follower `isolate_after_ns` later.
/// Returns the first invariant breach.
fn lease_breach(
    leader_rate: f64,
    follower_rate: f64,
    faults: Faults,
    seed: u64,
    isolate_after_ns: u64,
) -> Option<String> {
    let mut config = SimConfig::new(3, ElectionMode::Harpoon, Vec::new());
    config.faults = faults;
    config.clock_epsilon = 0.0;
    let mut world = World::new(&config, seed);
    world.start_nodes();
    world.run_until(3 * SECOND_NS).expect("a healthy cluster breaks nothing");
    let leader = world.leader().expect("a leader after 3 s");
    for node in 0..3 {
        let rate = if node == leader { leader_rate } else { follower_rate };
        world.set_clock_rate(node, rate).expect("changing a rate breaks nothing by itself");
    }
    let others: Vec<usize> = (0..3).filter(|&node| node != leader).collect();
    world.network.cut_both_ways(leader, others[0]);
    let now = world.now_ns();
    if let Err(breach) = world.run_until(now + isolate_after_ns) {
        return Some(breach);
    }
    world.network.cut_both_ways(leader, others[1]);
    let now = world.now_ns();
    world.run_until(now + 3 * SECOND_NS).err()
}

/// Clock rates at the very edge of the drift bound: the follower's clock is
/// faster than the leader's by exactly 1 / (1 − drift_bound).
fn rates_at_the_bound() -> (f64, f64) {
    let bound = crate::consensus::Config::new(1, vec![1]).drift_bound;
    let leader_rate = 1.0 - bound / 2.0;
    (leader_rate, leader_rate / (1.0 - bound))
}

/// (seed, isolation delay) pairs: delays in 10 ms steps across three election
/// timeouts, over a few seeds so that heartbeat and campaign phases differ.
/// Some pair lands a campaign in any window between a promise and a lease.
fn isolation_sweep() -> impl Iterator<Item = (u64, u64)> {
    (1..=6).flat_map(|seed| (0..300).map(move |step| (seed, step * 10_000_000)))
}

#[test]
fn leases_stay_exclusive_at_the_edge_of_the_drift_bound() {
    let (leader_rate, follower_rate) = rates_at_the_bound();
    for (seed, delay) in isolation_sweep() {
        let breach = lease_breach(leader_rate, follower_rate, Faults::default(), seed, delay);
        assert_eq!(breach, None, "seed {seed}: isolating the leader {delay} ns after the partial cut");
    }
}

#[test]
fn a_lease_without_the_drift_margin_is_caught_at_the_edge_of_the_bound() {
    let (leader_rate, follower_rate) = rates_at_the_bound();
    let faults = Faults { lease_without_drift_margin: true, ..Faults::default() };
    let caught =
        isolation_sweep().find_map(|(seed, delay)| lease_breach(leader_rate, follower_rate, faults, seed, delay));
    let breach = caught.expect("some isolation time lets a campaign through while the unshortened lease runs");
    assert!(breach.contains("hold a valid lease"), "unexpected breach: {breach}");
}

#[test]
fn clocks_far_beyond_the_drift_bound_are_caught_by_the_lease_check() {
    let breach = lease_breach(0.4, 2.5, Faults::default(), 42, 0);
    let breach = breach.expect("a 6x rate difference must let a new leader overlap the old lease");
    assert!(breach.contains("hold a valid lease"), "unexpected breach: {breach}");
}
