//! rasputin-sim: runs the deterministic cluster simulator over many seeds,
//! or the partial-connectivity experiment.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rasputin_consensus::{ElectionMode, Faults};
use rasputin_sim::experiment::{self, Scenario};
use rasputin_sim::{run_seed, NemesisKind, SeedReport, SimConfig};

#[derive(Parser, Debug)]
#[command(name = "rasputin-sim", about = "Deterministic simulation of a Rasputin cluster under faults")]
struct Arguments {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed; seeds run from here upwards.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: usize,
    /// Faults to inject: all, partition, partial, crash, pause, clock or none.
    #[arg(long, default_value = "all", value_parser = parse_nemesis)]
    nemesis: NemesisSet,
    /// Leader election: harpoon, raft or raft-pv-cq.
    #[arg(long, default_value = "harpoon", value_parser = parse_election)]
    election: ElectionMode,
    /// Print every event of the run (use with --seeds 1).
    #[arg(long)]
    trace: bool,
    /// Run the partial-connectivity experiment instead, over --seeds seeds per cell.
    #[arg(long)]
    experiment: bool,
    /// Clock rate error ε: each clock runs at a rate in [1 − ε, 1 + ε]. Defaults to within the drift bound.
    #[arg(long)]
    clock_epsilon: Option<f64>,
    /// What a paused node's clock does: runs on (as CLOCK_BOOTTIME, which
    /// the daemon reads) or stands still (as CLOCK_MONOTONIC through a
    /// host's suspend, to see what the checks say of it).
    #[arg(long, default_value = "running", value_parser = ["running", "frozen"])]
    pause_clock: String,
    /// Sessions the cluster keeps before the oldest expire (default: as the
    /// daemon). A few make sessions expire all the time.
    #[arg(long)]
    sessions_max: Option<usize>,
    /// Build in a deliberate bug, to see the checks catch it: lease-without-margin, read-before-noop or stale-reads.
    #[arg(long, value_parser = ["lease-without-margin", "read-before-noop", "stale-reads"])]
    bug: Option<String>,
    /// Write each seed's client history to DIR/seed-S.jsonl (format: docs/history.md).
    #[arg(long, value_name = "DIR")]
    history_dir: Option<std::path::PathBuf>,
    /// Worker threads; results are printed in seed order whatever this is.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn parse_nodes(text: &str) -> Result<usize, String> {
    match text {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("--nodes must be 3 or 5, not {text}")),
    }
}

#[derive(Clone, Debug)]
struct NemesisSet(Vec<NemesisKind>);

fn parse_nemesis(text: &str) -> Result<NemesisSet, String> {
    NemesisKind::parse_set(text)
        .map(NemesisSet)
        .ok_or_else(|| format!("unknown nemesis {text}: use all, partition, partial, crash, pause, clock or none"))
}

fn parse_election(text: &str) -> Result<ElectionMode, String> {
    ElectionMode::parse(text).ok_or_else(|| format!("unknown election mode {text}: use harpoon, raft or raft-pv-cq"))
}

fn faults_for(bug: Option<&str>) -> Faults {
    Faults {
        lease_without_drift_margin: bug == Some("lease-without-margin"),
        read_before_noop_commits: bug == Some("read-before-noop"),
        reads_ignore_lease: bug == Some("stale-reads"),
    }
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if arguments.experiment {
        run_experiment(&arguments);
        return ExitCode::SUCCESS;
    }
    let nemesis = arguments.nemesis.0.clone();
    let mut config = SimConfig::new(arguments.nodes, arguments.election, nemesis);
    config.record_trace = arguments.trace;
    config.clock_epsilon = arguments.clock_epsilon.unwrap_or(config.clock_epsilon);
    config.pause_freezes_clock = arguments.pause_clock == "frozen";
    if let Some(count_max) = arguments.sessions_max {
        config.session_limits.count_max = count_max;
    }
    config.faults = faults_for(arguments.bug.as_deref());
    config.record_history = arguments.history_dir.is_some();
    if let Some(directory) = &arguments.history_dir {
        if let Err(error) = std::fs::create_dir_all(directory) {
            eprintln!("rasputin-sim: cannot create {}: {error}", directory.display());
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let seeds: Vec<u64> = (arguments.seed..arguments.seed + arguments.seeds).collect();
    let reports = in_parallel(&seeds, arguments.threads, |&seed| run_seed(&config, seed));
    let elapsed = started.elapsed().as_secs_f64();
    let mut operations = 0;
    let mut violations = 0;
    let mut slowest_recovery_ns = 0;
    for report in &reports {
        operations += report.operations;
        slowest_recovery_ns = slowest_recovery_ns.max(report.recovery_ns.unwrap_or(0));
        if arguments.trace {
            print!("{}", report.trace);
            println!("faults: {:?}", report.faults);
        }
        if let (Some(directory), Some(lines)) = (&arguments.history_dir, &report.history_json_lines) {
            let path = directory.join(format!("seed-{}.jsonl", report.seed));
            if let Err(error) = std::fs::write(&path, lines) {
                eprintln!("rasputin-sim: cannot write {}: {error}", path.display());
                return ExitCode::from(2);
            }
        }
        if let Some(violation) = &report.violation {
            violations += 1;
            println!("FAIL seed={}: {violation}", report.seed);
            println!("  replay: {}", replay_command(&arguments, report));
        }
    }
    println!(
        "seeds={} ops={operations} violations={violations} nodes={} election={} wall={elapsed:.1}s ops_per_wall_second={:.0} slowest_recovery_ms={}",
        seeds.len(),
        arguments.nodes,
        arguments.election.name(),
        operations as f64 / elapsed.max(1e-9),
        slowest_recovery_ns / 1_000_000
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay_command(arguments: &Arguments, report: &SeedReport) -> String {
    let nemesis: Vec<&str> = arguments.nemesis.0.iter().map(|kind| kind.name()).collect();
    let nemesis = if nemesis.len() == NemesisKind::ALL.len() { "all".to_string() } else { nemesis.join(",") };
    let mut command = format!(
        "cargo run --release -p rasputin-sim --bin rasputin-sim -- --seeds 1 --seed {} --nodes {} --nemesis {} --election {}",
        report.seed,
        arguments.nodes,
        if nemesis.is_empty() { "none" } else { &nemesis },
        arguments.election.name()
    );
    if let Some(epsilon) = arguments.clock_epsilon {
        command.push_str(&format!(" --clock-epsilon {epsilon}"));
    }
    if let Some(bug) = &arguments.bug {
        command.push_str(&format!(" --bug {bug}"));
    }
    if arguments.pause_clock != "running" {
        command.push_str(&format!(" --pause-clock {}", arguments.pause_clock));
    }
    if let Some(count_max) = arguments.sessions_max {
        command.push_str(&format!(" --sessions-max {count_max}"));
    }
    command
}

/// Runs `work` over `items` on `threads` threads, returning results in item order.
fn in_parallel<T: Sync, R: Send>(items: &[T], threads: usize, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.max(1);
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let chunks: Vec<_> = slots.chunks_mut(1).zip(items.iter()).collect();
    let queue = std::sync::Mutex::new(chunks.into_iter());
    let (queue, work) = (&queue, &work);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(move || loop {
                let next = queue.lock().expect("no worker panics while holding the queue").next();
                let Some((slot, item)) = next else { break };
                slot[0] = Some(work(item));
            });
        }
    });
    slots.into_iter().map(|slot| slot.expect("every item was processed")).collect()
}

fn run_experiment(arguments: &Arguments) {
    let modes = [ElectionMode::Harpoon, ElectionMode::RaftPreVoteCheckQuorum, ElectionMode::Raft];
    println!("| scenario | election | nodes | leader changes (mean, max) | write availability | longest outage (election timeouts) |");
    println!("|---|---|---|---|---|---|");
    for scenario in Scenario::ALL {
        for mode in modes {
            let seeds: Vec<u64> = (arguments.seed..arguments.seed + arguments.seeds).collect();
            let outcomes = in_parallel(&seeds, arguments.threads, |&seed| experiment::run(scenario, mode, seed));
            let errors: Vec<&String> = outcomes.iter().filter_map(|outcome| outcome.error.as_ref()).collect();
            for error in &errors {
                eprintln!("{} {}: {error}", scenario.label(), mode.name());
            }
            let count = outcomes.len() as f64;
            let changes: f64 = outcomes.iter().map(|outcome| outcome.leader_changes as f64).sum::<f64>() / count;
            let max_changes = outcomes.iter().map(|outcome| outcome.leader_changes).max().unwrap_or(0);
            let availability: f64 = outcomes.iter().map(|outcome| outcome.write_availability).sum::<f64>() / count;
            let outage: f64 =
                outcomes.iter().map(|outcome| outcome.longest_outage_election_timeouts).sum::<f64>() / count;
            println!(
                "| {} | {} | {} | {changes:.1}, {max_changes} | {:.0}% | {outage:.1} |",
                scenario.label(),
                mode.name(),
                scenario.nodes(),
                availability * 100.0
            );
        }
    }
}
