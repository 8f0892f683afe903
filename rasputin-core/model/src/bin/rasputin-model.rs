//! rasputin-model: the bounded model check with chosen bounds, for runs
//! deeper than CI's. Prints the states explored, the depth, the time, and
//! the first counterexample found, if any.
//!
//!     rasputin-model harpoon|raft|raft-pv-cq DEPTH [BUG] [crashes=N] [replacements=N] [duplicates=N] [writes=N]
//!         [reads=N] [pauses=N] [transfers=N] [messages=N] [no-preference] [lagging|led] [drift] [dfs]
//!
//! BUG is one of `Faults::NAMES` (skip-fetch, votes-ignore-promises, votes-ignore-logs, ...).

use std::process::ExitCode;
use std::time::Instant;

use rasputin_consensus::{ElectionMode, Faults};
use rasputin_model::{Bounds, Harpoon, Start, SKEW_AT_THE_EDGE_PPM};
use stateright::{Checker, HasDiscoveries, Model};

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mode = ElectionMode::parse(arguments.first().map_or("harpoon", String::as_str));
    let depth = arguments.get(1).and_then(|text| text.parse().ok());
    let (Some(mode), Some(depth)) = (mode, depth) else {
        eprintln!(
            "usage: rasputin-model harpoon|raft|raft-pv-cq DEPTH [BUG] [crashes=N] [replacements=N] [duplicates=N] [writes=N] [reads=N] [pauses=N] [transfers=N] [messages=N] [no-preference] [lagging|led] [drift] [dfs]; BUG: {}",
            Faults::NAMES.join(", ")
        );
        return ExitCode::from(2);
    };
    let count = |name: &str, default: u64| {
        arguments
            .iter()
            .find_map(|argument| argument.strip_prefix(&format!("{name}=")).and_then(|value| value.parse().ok()))
            .unwrap_or(default)
    };
    let faults = arguments.iter().skip(2).find_map(|argument| Faults::named(argument)).unwrap_or_default();
    let bounds = Bounds {
        nodes: 3,
        mode,
        faults,
        writes: count("writes", 1),
        reads: count("reads", 0),
        crashes: count("crashes", 0) as u32,
        replacements: count("replacements", 0) as u32,
        transfers: count("transfers", 0) as u32,
        duplicates: count("duplicates", 0) as u32,
        pauses: count("pauses", 0) as u32,
        messages_in_flight_max: count("messages", 4) as usize,
        campaign_defers_to_better_logs: !arguments.iter().any(|argument| argument == "no-preference"),
        start: if arguments.iter().any(|argument| argument == "lagging") {
            Start::LaggingThirdNode
        } else if arguments.iter().any(|argument| argument == "led") {
            Start::Led
        } else {
            Start::Empty
        },
        // drift: node 1's clock fast and node 2's slow, at the edge of the bound.
        clock_skews_ppm: if arguments.iter().any(|argument| argument == "drift") {
            vec![SKEW_AT_THE_EDGE_PPM, -SKEW_AT_THE_EDGE_PPM, 0]
        } else {
            vec![0; 3]
        },
    };
    println!("{bounds:?}, depth {depth}");
    let started = Instant::now();
    // Stops at the first counterexample; with none, explores everything to the depth.
    let builder = Harpoon { bounds }.checker().target_max_depth(depth).finish_when(HasDiscoveries::AnyFailures);
    // Depth-first reaches a deep counterexample long before breadth-first
    // has exhausted the levels above it; breadth-first finds the shortest.
    if arguments.iter().any(|argument| argument == "dfs") {
        report(builder.spawn_dfs().join(), started)
    } else {
        report(builder.spawn_bfs().join(), started)
    }
}

fn report(checker: impl Checker<Harpoon>, started: Instant) -> ExitCode {
    println!(
        "states={} unique={} depth={} seconds={:.1}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    let mut broken = false;
    for property in [
        "no property broken while stepping",
        "at most one valid lease",
        "log matching",
        "the client history is linearizable",
    ] {
        if let Some(path) = checker.discovery(property) {
            broken = true;
            let state = path.last_state();
            println!(
                "counterexample to {property:?} in {} steps: {:?}",
                path.clone().into_actions().len(),
                state.broken
            );
            println!("actions: {:?}", path.into_actions());
        }
    }
    let committed = checker.discovery("a write commits").is_some();
    println!("a write committed within the bound: {committed}");
    let read = checker.discovery("a read is answered").is_some();
    println!("a read was answered within the bound: {read}");
    let fetched = checker.discovery("a lagging node leads after fetching").is_some();
    println!("a lagging node led after fetching within the bound: {fetched}");
    let transferred = checker.discovery("a transfer's successor leads").is_some();
    println!("a transfer's successor led within the bound: {transferred}");
    if broken {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
