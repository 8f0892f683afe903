//! rasputin-model: the bounded model check with chosen bounds, for runs
//! deeper than CI's. Prints the states explored, the depth, the time, and
//! the first counterexample found, if any.
//!
//!     rasputin-model [harpoon|raft] DEPTH [votes-ignore-logs] [crashes=N] [duplicates=N] [writes=N]

use std::process::ExitCode;
use std::time::Instant;

use rasputin_consensus::{ElectionMode, Faults};
use rasputin_model::{Bounds, Harpoon};
use stateright::{Checker, Model};

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mode = ElectionMode::parse(arguments.first().map_or("harpoon", String::as_str));
    let depth = arguments.get(1).and_then(|text| text.parse().ok());
    let (Some(mode), Some(depth)) = (mode, depth) else {
        eprintln!("usage: rasputin-model harpoon|raft|raft-pv-cq DEPTH [votes-ignore-logs] [crashes=N] [duplicates=N] [writes=N]");
        return ExitCode::from(2);
    };
    let count = |name: &str, default: u64| {
        arguments
            .iter()
            .find_map(|argument| argument.strip_prefix(&format!("{name}=")).and_then(|value| value.parse().ok()))
            .unwrap_or(default)
    };
    let faults = Faults {
        votes_ignore_logs: arguments.iter().any(|argument| argument == "votes-ignore-logs"),
        ..Faults::default()
    };
    let bounds = Bounds {
        nodes: 3,
        mode,
        faults,
        writes: count("writes", 1),
        crashes: count("crashes", 0) as u32,
        duplicates: count("duplicates", 0) as u32,
        messages_in_flight_max: 4,
    };
    println!("{bounds:?}, depth {depth}");
    let started = Instant::now();
    let checker = Harpoon { bounds }.checker().target_max_depth(depth).spawn_bfs().join();
    println!(
        "states={} unique={} depth={} seconds={:.1}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    let mut broken = false;
    for property in ["no property broken while stepping", "at most one valid lease", "log matching"] {
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
    if broken {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
