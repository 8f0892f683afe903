//! rasputin-nemesis: a fault campaign against a real `rasputind` cluster.
//! See `docs/testing.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use rasputin_checker::Verdict;
use rasputin_harness as harness;
use rasputin_harness::cluster::LIBFAKETIME_PATH;
use rasputin_harness::nemesis::FaultKind;
use rasputin_harness::network::firewall_available;
use rasputin_harness::report::PorcupineVerdict;
use rasputin_harness::workload::WorkloadSettings;
use rasputin_harness::Settings;

/// Set in the private network namespace the harness re-executes itself in.
const IN_NAMESPACE_VARIABLE: &str = "RASPUTIN_NEMESIS_IN_NAMESPACE";

#[derive(Parser, Debug)]
#[command(
    name = "rasputin-nemesis",
    about = "Runs a real rasputind cluster under faults and checks the client history for linearizability",
    after_help = "Exit status: 0 no anomaly, 1 anomalies (or, with --expect-anomaly, not both checkers flagged one), 2 setup or usage error, 3 a checker could not decide.\nThe long campaign: rasputin-nemesis --time-limit 600 --nemesis all --combine --splits"
)]
struct Arguments {
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: usize,
    /// Campaign length in seconds, recovery included.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Faults: all, kill, pause, partition, clock, or kinds such as kill-leader,isolate (comma-separated).
    #[arg(long, default_value = "all", value_parser = parse_kinds)]
    nemesis: FaultKinds,
    /// Sometimes inject a network fault and a process fault together.
    #[arg(long)]
    combine: bool,
    /// Seeds the choice of faults and operations (the cluster's timing is real, so runs still differ).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients, each with one operation in flight.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Keys in use at a time.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Operations per key before moving on to fresh keys.
    #[arg(long, default_value_t = 2000)]
    operations_per_key: u64,
    /// Operations per second over all clients.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Bound on operations over the whole campaign.
    #[arg(long, default_value_t = 1_000_000)]
    operations_max: u64,
    /// How a partition is made: auto (firewall when root with iptables, else proxy), firewall or proxy.
    #[arg(long, default_value = "auto", value_parser = ["auto", "firewall", "proxy"])]
    network: String,
    /// Where storage, logs, the history and Porcupine's visualisation go (emptied first).
    #[arg(long, default_value = "target/nemesis")]
    dir: PathBuf,
    /// The daemon to test (default: rasputind beside this program).
    #[arg(long)]
    rasputind: Option<PathBuf>,
    /// The Porcupine checker built from ci/porcupine (default: target/porcupine-check, if built).
    #[arg(long)]
    porcupine: Option<PathBuf>,
    /// Succeed only if both checkers find the history not linearizable: for a daemon built with a deliberate bug.
    #[arg(long)]
    expect_anomaly: bool,
    /// How long a client waits for one server before trying another, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    attempt_timeout_ms: u64,
    /// How long a client tries before recording the outcome as unknown, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    operation_timeout_ms: u64,
    /// Fail unless every enabled fault kind was injected at least once.
    #[arg(long)]
    cover_every_kind: bool,
    /// Shortest and longest fault, in milliseconds.
    #[arg(long, default_value = "2000,5000", value_parser = parse_range)]
    fault_ms: (u64, u64),
    /// Fault-free time between faults and at the end, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    quiet_ms: u64,
    /// During every fault, split the range holding a key in use at that key; at the end every node must host the same ranges, and the meta range record them.
    #[arg(long)]
    splits: bool,
}

/// A wrapper, because clap reads a bare `Vec` as a repeated flag.
#[derive(Clone, Debug)]
struct FaultKinds(Vec<FaultKind>);

fn parse_kinds(text: &str) -> Result<FaultKinds, String> {
    FaultKind::parse_set(text).map(FaultKinds)
}

fn parse_nodes(text: &str) -> Result<usize, String> {
    match text {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("--nodes must be 3 or 5, not {text}")),
    }
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let parsed = text.split_once(',').and_then(|(low, high)| Some((low.parse().ok()?, high.parse().ok()?)));
    match parsed {
        Some((low, high)) if 0 < low && low <= high => Ok((low, high)),
        _ => Err(format!("{text:?} is not LOW,HIGH with 0 < LOW <= HIGH")),
    }
}

fn beside_this_program(relative: &str) -> Option<PathBuf> {
    let program = std::env::current_exe().ok()?;
    let found = program.parent()?.join(relative);
    found.exists().then_some(found)
}

/// Runs this same command inside a new network namespace, where iptables
/// rules touch nothing outside the campaign.
fn reexecute_in_namespace() -> ExitCode {
    let program = std::env::current_exe().expect("the path of this program");
    let status = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(program)
        .args(std::env::args_os().skip(1))
        .env(IN_NAMESPACE_VARIABLE, "1")
        .status();
    match status {
        Ok(status) => ExitCode::from(status.code().unwrap_or(2) as u8),
        Err(error) => {
            eprintln!("rasputin-nemesis: cannot run unshare: {error}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let in_namespace = std::env::var_os(IN_NAMESPACE_VARIABLE).is_some();
    let firewall = match arguments.network.as_str() {
        "firewall" => true,
        "proxy" => false,
        _ => in_namespace || firewall_available(),
    };
    if firewall && !in_namespace {
        return reexecute_in_namespace();
    }
    let Some(daemon) = arguments.rasputind.clone().or_else(|| beside_this_program("rasputind")) else {
        eprintln!(
            "rasputin-nemesis: no rasputind beside this program; build it (cargo build --release) or pass --rasputind"
        );
        return ExitCode::from(2);
    };
    let porcupine = arguments.porcupine.clone().or_else(|| beside_this_program("../porcupine-check"));
    if porcupine.is_none() {
        eprintln!("rasputin-nemesis: porcupine-check not found, so only rasputin's checker runs; build it with (cd ci/porcupine && go build -o ../../target/porcupine-check .)");
    }
    let mut kinds = arguments.nemesis.0.clone();
    if !Path::new(LIBFAKETIME_PATH).exists() && kinds.contains(&FaultKind::ClockSkew) {
        eprintln!(
            "rasputin-nemesis: no libfaketime at {LIBFAKETIME_PATH} (Debian package faketime), so no clock-skew faults"
        );
        kinds.retain(|kind| *kind != FaultKind::ClockSkew);
    }
    if kinds.is_empty() {
        eprintln!("rasputin-nemesis: no fault kind left to inject");
        return ExitCode::from(2);
    }
    let seed = arguments.seed.unwrap_or_else(rand::random);
    let settings = Settings {
        nodes: arguments.nodes,
        time_limit: Duration::from_secs(arguments.time_limit),
        kinds,
        combine: arguments.combine,
        seed,
        directory: arguments.dir.clone(),
        daemon,
        porcupine,
        firewall,
        workload: WorkloadSettings {
            clients: arguments.clients.max(1),
            keys: arguments.keys.max(1),
            operations_per_key_max: arguments.operations_per_key,
            rate_per_second: arguments.rate,
            operations_max: arguments.operations_max,
            attempt_timeout: Duration::from_millis(arguments.attempt_timeout_ms),
            operation_timeout: Duration::from_millis(arguments.operation_timeout_ms),
            seed,
        },
        fault_duration: (Duration::from_millis(arguments.fault_ms.0), Duration::from_millis(arguments.fault_ms.1)),
        quiet: Duration::from_millis(arguments.quiet_ms),
        splits: arguments.splits,
    };
    let names: Vec<&str> = settings.kinds.iter().map(|kind| kind.name()).collect();
    println!(
        "rasputin-nemesis: {} nodes, {} s, faults {}{}{}, seed {seed}",
        settings.nodes,
        arguments.time_limit,
        names.join(","),
        if settings.combine { " (combined)" } else { "" },
        if settings.splits { ", with splits" } else { "" }
    );
    let report = match harness::run(&settings) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("rasputin-nemesis: {error}");
            return ExitCode::from(2);
        }
    };
    report.print();
    let missed: Vec<&str> =
        settings.kinds.iter().map(|kind| kind.name()).filter(|name| !report.faults.contains_key(name)).collect();
    if arguments.cover_every_kind && !missed.is_empty() {
        println!("not every fault kind was injected (missed: {}); lengthen --time-limit", missed.join(", "));
        return ExitCode::from(1);
    }
    if arguments.expect_anomaly {
        let both = matches!(report.ours, Verdict::NotLinearizable(_))
            && matches!(report.porcupine, PorcupineVerdict::NotLinearizable { .. });
        println!(
            "expected an anomaly: {}",
            if both { "both checkers flagged the history" } else { "NOT flagged by both checkers" }
        );
        return ExitCode::from(if both { 0 } else { 1 });
    }
    if !report.anomalies().is_empty() {
        return ExitCode::from(1);
    }
    if report.inconclusive() {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
