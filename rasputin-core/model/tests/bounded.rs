//! The bounded model check that CI runs: every interleaving of the model's
//! actions to a depth bound, for Harpoon and for classic Raft. Deeper runs
//! and their figures are in docs/harpoon.md.

use std::time::Instant;

use rasputin_consensus::{ElectionMode, Faults};
use rasputin_model::{Bounds, Harpoon};
use stateright::{Checker, Model};

const SAFETY: [&str; 3] = ["no property broken while stepping", "at most one valid lease", "log matching"];

fn check(bounds: Bounds, depth: usize) -> impl Checker<Harpoon> {
    let started = Instant::now();
    let mode = bounds.mode;
    let checker = Harpoon { bounds }.checker().target_max_depth(depth).spawn_bfs().join();
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
        crashes: 0,
        duplicates: 0,
        messages_in_flight_max: 4,
        campaign_defers_to_better_logs: true,
    }
}

/// Deep enough for a write to commit, so that state-machine safety and
/// leader completeness have something to check; messages may be lost.
#[test]
fn harpoon_commits_a_write_and_breaks_nothing_in_every_interleaving_to_depth_14() {
    let checker = check(quiet(ElectionMode::Harpoon, 1), 14);
    checker.assert_properties();
}

#[test]
fn harpoon_breaks_nothing_with_a_crash_and_a_duplicate_to_depth_10() {
    let bounds = Bounds { crashes: 1, duplicates: 1, ..quiet(ElectionMode::Harpoon, 2) };
    let checker = check(bounds, 10);
    for property in SAFETY {
        checker.assert_no_discovery(property);
    }
}

#[test]
fn classic_raft_breaks_nothing_in_every_interleaving_to_depth_12() {
    let checker = check(quiet(ElectionMode::Raft, 1), 12);
    for property in SAFETY {
        checker.assert_no_discovery(property);
    }
}

/// A planted bug: voters that ignore the candidate's log. The checker must
/// find the leader that lacks a committed entry (12 steps).
#[test]
fn the_checker_finds_a_leader_without_a_committed_entry_when_votes_ignore_logs() {
    let bounds =
        Bounds { faults: Faults { votes_ignore_logs: true, ..Faults::default() }, ..quiet(ElectionMode::Raft, 1) };
    let checker = check(bounds, 12);
    let path =
        checker.discovery("no property broken while stepping").expect("the planted bug is found within 12 steps");
    let broken = path.last_state().broken.join("; ");
    assert!(broken.contains("leader completeness"), "{broken}");
}
