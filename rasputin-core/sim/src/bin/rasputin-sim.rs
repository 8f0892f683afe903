//! rasputin-sim: runs the deterministic cluster simulator over many seeds,
//! or the partial-connectivity experiment.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use rasputin_consensus::{ElectionMode, Faults};
use rasputin_kv::state_machine::StoreFaults;
use rasputin_sim::experiment::{self, Contender, Scenario};
use rasputin_sim::{run_seed, NemesisKind, SeedReport, SimConfig};

/// Keys of the workload under the split nemesis, so that splits leave several ranges busy.
const SPLIT_WORKLOAD_KEYS: u64 = 8;

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
    /// Faults to inject: all, partition, partial, crash, pause, clock, skewed-partial or none.
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
    /// Build in a deliberate bug, to see the checks catch it: lease-without-margin, read-before-noop,
    /// stale-reads, votes-ignore-logs (raft modes), skip-fetch or votes-ignore-promises (harpoon),
    /// split-leads-in-any-term, transfer-keeps-serving, misrouted-writes-apply or meta-updates-unguarded (with --splits).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Faults::NAMES.into_iter().chain(StoreFaults::NAMES)))]
    bug: Option<String>,
    /// Write each seed's client history to DIR/seed-S.jsonl (format: docs/history.md).
    #[arg(long, value_name = "DIR")]
    history_dir: Option<std::path::PathBuf>,
    /// Worker threads; each seed's result is printed as it finishes.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Stop at the first violation: seeds not yet started are not run.
    #[arg(long)]
    fail_fast: bool,
    /// Harpoon: a lagging node campaigns at once instead of letting a
    /// better-placed node go first (Config::campaign_defers_to_better_logs).
    #[arg(long)]
    no_campaign_preference: bool,
    /// The split nemesis too: a range's leader is asked now and then to
    /// split it at a random key, during every other fault, and the workload
    /// spans the ranges (at least 8 keys).
    #[arg(long)]
    splits: bool,
    /// Keys the clients use (default 3; 8 with --splits).
    #[arg(long)]
    keys: Option<u64>,
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
    NemesisKind::parse_set(text).map(NemesisSet).ok_or_else(|| {
        format!("unknown nemesis {text}: use all, partition, partial, crash, pause, clock, skewed-partial or none")
    })
}

fn parse_election(text: &str) -> Result<ElectionMode, String> {
    ElectionMode::parse(text).ok_or_else(|| format!("unknown election mode {text}: use harpoon, raft or raft-pv-cq"))
}

/// The consensus bug `bug` names; none for a state-machine bug.
fn faults_for(bug: Option<&str>) -> Faults {
    bug.and_then(Faults::named).unwrap_or_default()
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
    config.store_faults = arguments.bug.as_deref().and_then(StoreFaults::named).unwrap_or_default();
    config.campaign_defers_to_better_logs = !arguments.no_campaign_preference;
    config.splits = arguments.splits;
    config.balance_leaders = arguments.splits;
    config.keys = arguments.keys.unwrap_or(if arguments.splits { SPLIT_WORKLOAD_KEYS } else { config.keys });
    config.record_history = arguments.history_dir.is_some();
    if let Some(directory) = &arguments.history_dir {
        if let Err(error) = std::fs::create_dir_all(directory) {
            eprintln!("rasputin-sim: cannot create {}: {error}", directory.display());
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let seeds: Vec<u64> = (arguments.seed..arguments.seed + arguments.seeds).collect();
    let mut totals = Totals::default();
    let mut write_failed = false;
    in_parallel(
        &seeds,
        arguments.threads,
        |&seed| run_seed(&config, seed),
        |report| {
            if let Err(message) = report_seed(&arguments, &report) {
                eprintln!("rasputin-sim: {message}");
                write_failed = true;
                return false;
            }
            totals.add(&report);
            !(arguments.fail_fast && report.violation.is_some())
        },
    );
    if write_failed {
        return ExitCode::from(2);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let Totals {
        seeds: seeds_run,
        operations,
        violations,
        slowest_recovery_ns,
        elections,
        fetching_elections,
        splits,
        transfers,
        balancing_moves,
        unbalanced_seeds,
        meta_updates,
        meta_lookups,
    } = totals;
    println!(
        "seeds={seeds_run} ops={operations} violations={violations} nodes={} election={} wall={elapsed:.1}s ops_per_wall_second={:.0} slowest_recovery_ms={} elections={elections} fetching_elections={fetching_elections} splits={splits} transfers={transfers} balancing_moves={balancing_moves} unbalanced_seeds={unbalanced_seeds} meta_updates={meta_updates} meta_lookups={meta_lookups}",
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

/// What the seeds run so far add up to.
#[derive(Default)]
struct Totals {
    seeds: u64,
    operations: usize,
    violations: u64,
    slowest_recovery_ns: u64,
    elections: usize,
    fetching_elections: usize,
    splits: usize,
    transfers: usize,
    balancing_moves: usize,
    /// Seeds that ended with one node leading two ranges more than another.
    unbalanced_seeds: u64,
    meta_updates: usize,
    meta_lookups: usize,
}

impl Totals {
    fn add(&mut self, report: &SeedReport) {
        self.seeds += 1;
        self.operations += report.operations;
        self.violations += u64::from(report.violation.is_some());
        self.slowest_recovery_ns = self.slowest_recovery_ns.max(report.recovery_ns.unwrap_or(0));
        self.elections += report.elections.len();
        self.fetching_elections += report.fetching_elections;
        self.splits += report.splits;
        self.transfers += report.transfers;
        self.balancing_moves += report.balancing_moves;
        self.unbalanced_seeds += u64::from(report.leaders_balanced == Some(false));
        self.meta_updates += report.meta_updates;
        self.meta_lookups += report.meta_lookups;
    }
}

/// Prints one seed's result (and its trace, with --trace) and writes its
/// history, as soon as the seed finishes.
fn report_seed(arguments: &Arguments, report: &SeedReport) -> Result<(), String> {
    if arguments.trace {
        print!("{}", report.trace);
        println!("faults: {:?}", report.faults);
    }
    if let (Some(directory), Some(lines)) = (&arguments.history_dir, &report.history_json_lines) {
        let path = directory.join(format!("seed-{}.jsonl", report.seed));
        std::fs::write(&path, lines).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    match &report.violation {
        None => println!("ok seed={} ops={}", report.seed, report.operations),
        Some(violation) => {
            println!("FAIL seed={}: {violation}", report.seed);
            println!("  replay: {}", replay_command(arguments, report));
        }
    }
    Ok(())
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
    if arguments.no_campaign_preference {
        command.push_str(" --no-campaign-preference");
    }
    if arguments.splits {
        command.push_str(" --splits");
    }
    if let Some(keys) = arguments.keys {
        command.push_str(&format!(" --keys {keys}"));
    }
    command
}

/// Runs `work` over `items` on `threads` threads and hands each result to
/// `done` on this thread as it finishes, in finishing order. Once `done`
/// returns false, no further item starts; those running finish.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> R + Sync,
    mut done: impl FnMut(R) -> bool,
) {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Bounded: a worker waits rather than let results pile up unprinted.
    let (results, finished) = mpsc::sync_channel(threads.max(1));
    let (next, stop, work) = (&next, &stop, &work);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let results = results.clone();
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    if results.send(work(item)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(results);
        for result in finished {
            if !done(result) {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
}

fn run_experiment(arguments: &Arguments) {
    println!("| scenario | election | nodes | leader changes (mean, max) | write availability | longest outage, election timeouts (mean, max) |");
    println!("|---|---|---|---|---|---|");
    for scenario in Scenario::ALL {
        for contender in Contender::ALL {
            let seeds: Vec<u64> = (arguments.seed..arguments.seed + arguments.seeds).collect();
            let mut outcomes = Vec::with_capacity(seeds.len());
            in_parallel(
                &seeds,
                arguments.threads,
                |&seed| experiment::run(scenario, contender, seed),
                |outcome| {
                    outcomes.push(outcome);
                    true
                },
            );
            let errors: Vec<&String> = outcomes.iter().filter_map(|outcome| outcome.error.as_ref()).collect();
            for error in &errors {
                eprintln!("{} {}: {error}", scenario.label(), contender.label());
            }
            let count = outcomes.len() as f64;
            let changes: f64 = outcomes.iter().map(|outcome| outcome.leader_changes as f64).sum::<f64>() / count;
            let max_changes = outcomes.iter().map(|outcome| outcome.leader_changes).max().unwrap_or(0);
            let availability: f64 = outcomes.iter().map(|outcome| outcome.write_availability).sum::<f64>() / count;
            let outages = outcomes.iter().map(|outcome| outcome.longest_outage_election_timeouts);
            let outage = outages.clone().sum::<f64>() / count;
            let max_outage = outages.fold(0.0, f64::max);
            println!(
                "| {} | {} | {} | {changes:.1}, {max_changes} | {:.0}% | {outage:.1}, {max_outage:.1} |",
                scenario.label(),
                contender.label(),
                scenario.nodes(),
                availability * 100.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_parallel;

    #[test]
    fn every_item_is_handed_back_once() {
        let items: Vec<u64> = (0..500).collect();
        let mut seen = Vec::new();
        in_parallel(
            &items,
            3,
            |&item| item * 2,
            |result| {
                seen.push(result);
                true
            },
        );
        seen.sort_unstable();
        assert_eq!(seen, items.iter().map(|item| item * 2).collect::<Vec<_>>());
    }

    #[test]
    fn no_item_starts_after_done_says_stop() {
        let items: Vec<u64> = (0..10_000).collect();
        let mut handed = 0;
        in_parallel(
            &items,
            2,
            |&item| item,
            |_| {
                handed += 1;
                handed < 10
            },
        );
        // At most the items already running when the tenth came back, and
        // those queued in the bounded channel, finish after it.
        assert!((10..=14).contains(&handed), "{handed} results handed back after asking to stop at 10");
    }
}
