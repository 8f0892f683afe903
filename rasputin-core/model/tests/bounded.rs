//! The bounded model check that CI runs: every interleaving of the model's
//! actions to a depth bound, for Harpoon and for classic Raft. Deeper runs
//! and their figures are in docs/harpoon.md.

use std::time::Instant;

use rasputin_consensus::{ElectionMode, Faults};
use rasputin_model::{Bounds, Harpoon, Start, SKEW_AT_THE_EDGE_PPM};
use stateright::{Checker, HasDiscoveries, Model};

const SAFETY: [&str; 4] = [
    "no property broken while stepping",
    "at most one valid lease",
    "log matching",
    "the client history is linearizable",
];

fn check(bounds: Bounds, depth: usize) -> impl Checker<Harpoon> {
    let started = Instant::now();
    let mode = bounds.mode;
    let checker = Harpoon { bounds }
        .checker()
        .target_max_depth(depth)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    println!(
        "{}: {} states, {} unique, depth {}, {:.1}s",
        mode.name(),
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    checker
}

fn quiet(mode: ElectionMode, writes: u64) -> Bounds {
    Bounds {
        nodes: 3,
        mode,
        faults: Faults::default(),
        writes,
        reads: 0,
        crashes: 0,
        replacements: 0,
        transfers: 0,
        duplicates: 0,
        pauses: 0,
        messages_in_flight_max: 4,
        campaign_defers_to_better_logs: true,
        start: Start::Empty,
        clock_skews_ppm: vec![0; 3],
    }
}

fn assert_safe(checker: &impl Checker<Harpoon>) {
    for property in SAFETY {
        checker.assert_no_discovery(property);
    }
}

fn planted(bug: &str, bounds: Bounds) -> Bounds {
    Bounds { faults: Faults::named(bug).expect("a planted bug's name"), ..bounds }
}

/// The state a lagging node's election starts from (`Start::LaggingThirdNode`),
/// with the campaign preference off so that the lagging node may win at once.
fn lagging(writes: u64, pauses: u32) -> Bounds {
    Bounds {
        start: Start::LaggingThirdNode,
        pauses,
        campaign_defers_to_better_logs: false,
        messages_in_flight_max: 6,
        ..quiet(ElectionMode::Harpoon, writes)
    }
}

/// Deep enough for a write to commit, so that state-machine safety and
/// leader completeness have something to check; messages may be lost; a
/// read makes the history worth checking for linearizability.
#[test]
fn harpoon_commits_a_write_and_breaks_nothing_in_every_interleaving_to_depth_12() {
    let checker = check(Bounds { reads: 1, ..quiet(ElectionMode::Harpoon, 1) }, 12);
    assert_safe(&checker);
    checker.assert_any_discovery("a write commits");
    checker.assert_any_discovery("a read is answered");
}

/// Harpoon v2's new case: the lagging node wins, fetches the committed
/// entry it lacks, leads and commits a write, while the old leader may be
/// paused. Every interleaving to depth 12 from there.
#[test]
fn harpoon_v2_a_lagging_winner_fetches_and_breaks_nothing_to_depth_12() {
    let bounds = Bounds { messages_in_flight_max: 4, campaign_defers_to_better_logs: true, ..lagging(1, 1) };
    let checker = check(bounds, 12);
    assert_safe(&checker);
    checker.assert_any_discovery("a lagging node leads after fetching");
    checker.assert_any_discovery("a write commits");
}

/// Clocks at both edges of the drift bound: node 1 fast, node 2 slow.
#[test]
fn harpoon_breaks_nothing_with_clocks_at_the_edge_of_the_drift_bound_to_depth_11() {
    let skews = vec![SKEW_AT_THE_EDGE_PPM, -SKEW_AT_THE_EDGE_PPM, 0];
    let bounds = Bounds { reads: 1, clock_skews_ppm: skews, ..quiet(ElectionMode::Harpoon, 1) };
    let checker = check(bounds, 11);
    assert_safe(&checker);
    checker.assert_any_discovery("a read is answered");
}

#[test]
fn harpoon_breaks_nothing_with_a_crash_and_a_duplicate_to_depth_10() {
    let bounds = Bounds { crashes: 1, duplicates: 1, reads: 1, ..quiet(ElectionMode::Harpoon, 1) };
    assert_safe(&check(bounds, 10));
}

#[test]
fn classic_raft_breaks_nothing_in_every_interleaving_to_depth_11() {
    assert_safe(&check(quiet(ElectionMode::Raft, 1), 11));
}

fn counterexample(checker: &impl Checker<Harpoon>) -> (usize, String) {
    let path = checker.discovery("no property broken while stepping").expect("the planted bug is found");
    (path.clone().into_actions().len(), path.last_state().broken.join("; "))
}

/// A planted bug: Raft voters that ignore the candidate's log. The checker
/// must find the leader that lacks a committed entry (9 steps).
#[test]
fn the_checker_finds_a_leader_without_a_committed_entry_when_raft_votes_ignore_logs() {
    let checker = check(planted("votes-ignore-logs", quiet(ElectionMode::Raft, 1)), 11);
    let (steps, broken) = counterexample(&checker);
    assert!(broken.contains("leader completeness"), "{broken}");
    println!("found in {steps} steps");
}

/// The planted bug Harpoon v2 must not have: a leader-elect that leads
/// with its own log, skipping the fetch. Found from the lagging start (8 steps).
#[test]
fn the_checker_finds_a_leader_elect_that_skips_the_fetch() {
    let checker = check(planted("skip-fetch", lagging(0, 2)), 10);
    let (steps, broken) = counterexample(&checker);
    assert!(broken.contains("leader completeness"), "{broken}");
    println!("found in {steps} steps");
}

/// From a led cluster, the leader hands over to either follower while
/// messages may be lost, reordered or left undelivered. The successor must
/// go on to lead, and no two leases, leaders of a term or logs may clash.
/// (With a write, a read and a duplicate as well, depth 10 takes 216 s and
/// 10 GiB: a run for docs/harpoon.md, not for CI.)
fn transferring() -> Bounds {
    Bounds { start: Start::Led, transfers: 1, ..quiet(ElectionMode::Harpoon, 0) }
}

#[test]
fn harpoon_transfers_leadership_and_breaks_nothing_in_every_interleaving_to_depth_11() {
    let checker = check(transferring(), 11);
    assert_safe(&checker);
    checker.assert_any_discovery("a transfer's successor leads");
}

/// The planted bug: the old leader keeps serving after its Release. The
/// successor, elected by the released follower, then holds a lease too.
/// The counterexample is 10 steps deep, past what breadth-first covers in
/// a minute, so this search goes depth-first and stops at the first.
#[test]
fn the_checker_finds_an_old_leader_serving_after_its_transfer() {
    let checker = Harpoon { bounds: planted("transfer-keeps-serving", transferring()) }
        .checker()
        .target_max_depth(12)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_dfs()
        .join();
    let path = checker.discovery("at most one valid lease").expect("the planted bug is found");
    println!("found in {} steps: {:?}", path.clone().into_actions().len(), path.into_actions());
}

/// From the lagging start (node 3 lacks the committed no-op), a node's disk
/// is lost and a replacement starts in its place. A candidate whose log
/// reaches the replacement's target may win with its vote; no leader may
/// then lack a committed entry.
fn replacing() -> Bounds {
    Bounds { replacements: 1, ..lagging(0, 0) }
}

#[test]
fn harpoon_replaces_a_lost_node_and_breaks_nothing_in_every_interleaving_to_depth_10() {
    let checker = check(replacing(), 10);
    assert_safe(&checker);
    checker.assert_any_discovery("a replacement still catching up helps elect a leader");
}

/// The planted bug: the replacement votes for anyone. Node 3, lacking the
/// no-op that the lost log acknowledged, wins with its vote.
#[test]
fn the_checker_finds_a_leader_elected_by_a_replacement_that_votes_freely() {
    let checker = check(planted("replacement-votes-freely", replacing()), 10);
    let (steps, broken) = counterexample(&checker);
    assert!(broken.contains("leader completeness"), "{broken}");
    println!("found in {steps} steps");
}
