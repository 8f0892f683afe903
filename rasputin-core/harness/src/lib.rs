//! Fault campaigns against real clusters, in the style of Jepsen: real
//! `rasputind` processes, sockets and RocksDB, real faults (kill -9,
//! SIGSTOP, partitions, clock skew), and the client history judged by our
//! checker and by Porcupine. The binary is `rasputin-nemesis`; the results
//! and how to read them are in `docs/testing.md`.

pub mod cluster;
pub mod nemesis;
pub mod network;
pub mod proxy;
pub mod report;
pub mod splitter;
pub mod workload;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use cluster::Cluster;
use nemesis::{FaultKind, Planner};
use network::Network;
use rasputin_checker as checker;
use rasputin_checker::{write_json_lines, Limits};
use report::{FaultWindow, PorcupineVerdict, Report};
use workload::{Workload, WorkloadSettings};

#[derive(Debug, Error)]
pub enum HarnessError {
    #[error("cannot {action}: {source}")]
    Io { action: &'static str, source: std::io::Error },
    #[error("cannot run {program}: {source}; is it installed and on PATH?")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

impl HarnessError {
    pub fn io(action: &'static str, source: std::io::Error) -> HarnessError {
        HarnessError::Io { action, source }
    }
}

/// How long a new cluster gets to elect its first leader.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Settings {
    pub nodes: usize,
    pub time_limit: Duration,
    pub kinds: Vec<FaultKind>,
    pub combine: bool,
    pub seed: u64,
    pub directory: PathBuf,
    pub daemon: PathBuf,
    pub porcupine: Option<PathBuf>,
    pub firewall: bool,
    pub workload: WorkloadSettings,
    /// How long each fault lasts: drawn from this range.
    pub fault_duration: (Duration, Duration),
    /// Fault-free time between rounds, and at the end of the campaign.
    pub quiet: Duration,
    /// During each fault, split the range holding a key in use
    /// (`splitter`), and require every node to host the same ranges at the end.
    pub splits: bool,
}

/// Runs one campaign: starts the cluster and the workload, injects faults
/// until the time limit, stops everything, and checks the history.
pub fn run(settings: &Settings) -> Result<Report, HarnessError> {
    cluster::fresh_directory(&settings.directory)?;
    let addresses = cluster::plan_addresses(settings.nodes, !settings.firewall)?;
    let mut network = Network::start(settings.firewall, &addresses)?;
    let network_name = network.name();
    let mut cluster = Cluster::start(&settings.daemon, &settings.directory, addresses)?;
    let outcome = drive(settings, &mut cluster, &mut network);
    cluster.stop_all();
    network.stop();
    let (recorded, windows, end_ns, splits) = outcome?;
    let panics: Vec<String> = (0..cluster.len()).flat_map(|node| cluster.log_failures(node)).collect();
    let history_path = settings.directory.join("history.jsonl");
    let mut out =
        BufWriter::new(File::create(&history_path).map_err(|source| HarnessError::io("write the history", source))?);
    write_json_lines(&recorded.operations, end_ns, &mut out)
        .and_then(|()| out.flush())
        .map_err(|source| HarnessError::io("write the history", source))?;
    let mut report = Report::measure(settings.nodes, network_name, &recorded, &windows, end_ns);
    report.ours = checker::check(&recorded.operations, &Limits::default());
    report.porcupine = run_porcupine(settings.porcupine.as_deref(), &history_path)?;
    report.panics = panics;
    report.history = history_path;
    report.splits = splits;
    Ok(report)
}

type Driven = (workload::Recorded, Vec<FaultWindow>, u64, Option<report::Splits>);

fn drive(settings: &Settings, cluster: &mut Cluster, network: &mut Network) -> Result<Driven, HarnessError> {
    wait_for_leader(cluster)?;
    let started = Instant::now();
    let deadline = started + settings.time_limit;
    let workload = Workload::start(settings.workload.clone(), cluster.client_addresses(), started);
    let mut random = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut planner = Planner::new(settings.kinds.clone(), settings.combine);
    let mut windows = Vec::new();
    let mut split_counts = splitter::SplitCounts::default();
    let result = (|| {
        // Each round: quiet, fault, heal; the last quiet period is recovery.
        while Instant::now() + settings.quiet * 2 + settings.fault_duration.0 <= deadline {
            sleep_until((Instant::now() + settings.quiet).min(deadline));
            let (shortest, longest) = settings.fault_duration;
            let hold = random.gen_range(shortest..=longest);
            let fault_end = (Instant::now() + hold).min(deadline - settings.quiet);
            let start_ns = started.elapsed().as_nanos() as u64;
            let mut active = Vec::new();
            let mut descriptions = Vec::new();
            let kinds = planner.next_round(&mut random);
            for kind in &kinds {
                let (fault, description) = nemesis::inject(*kind, cluster, network, &mut random)?;
                active.push(fault);
                descriptions.push(description);
            }
            if settings.splits {
                descriptions.push(split_in_use(cluster, &workload, &mut random, &mut split_counts));
            }
            println!("  {:>6.1}s {}", start_ns as f64 / 1e9, descriptions.join("; "));
            sleep_until(fault_end);
            for fault in active.into_iter().rev() {
                nemesis::heal(fault, cluster, network)?;
            }
            windows.push(FaultWindow { kinds, start_ns, end_ns: started.elapsed().as_nanos() as u64 });
        }
        sleep_until(deadline);
        Ok(())
    })();
    let recorded = workload.stop();
    let end_ns = started.elapsed().as_nanos() as u64;
    let splits = settings.splits.then(|| report::Splits {
        counts: split_counts,
        converged: splitter::await_convergence(&cluster.client_addresses()),
    });
    result.map(|()| (recorded, windows, end_ns, splits))
}

/// Splits the range holding one of the keys the workload uses now, at
/// that key; says what happened, for the campaign log.
fn split_in_use(
    cluster: &Cluster,
    workload: &Workload,
    random: &mut ChaCha8Rng,
    counts: &mut splitter::SplitCounts,
) -> String {
    let in_use = workload.keys_in_use();
    let key = splitter::key_name(random.gen_range(in_use));
    let shown = String::from_utf8_lossy(&key).into_owned();
    match splitter::split(&cluster.client_addresses(), &key) {
        Ok(splitter::Split::Made) => {
            counts.made += 1;
            format!("split at {shown}")
        }
        Ok(splitter::Split::Already) => {
            counts.already += 1;
            format!("{shown} starts a range already")
        }
        Err(error) => {
            counts.failed += 1;
            format!("split at {shown} not made: {error}")
        }
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

fn wait_for_leader(cluster: &Cluster) -> Result<(), HarnessError> {
    let deadline = Instant::now() + FIRST_LEADER_TIMEOUT;
    while Instant::now() < deadline {
        if cluster.leader().is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(HarnessError::Setup(format!(
        "no leader was elected within {FIRST_LEADER_TIMEOUT:?}; see {}",
        cluster.log_path(0).display()
    )))
}

/// Runs porcupine-check (`ci/porcupine`) on the history: exit 0 linearizable,
/// 1 not (with an HTML visualisation beside the history), 3 undecided.
fn run_porcupine(
    program: Option<&std::path::Path>,
    history: &std::path::Path,
) -> Result<PorcupineVerdict, HarnessError> {
    let Some(program) = program else {
        return Ok(PorcupineVerdict::NotRun);
    };
    let html = history.with_extension("html");
    let output = Command::new(program)
        .arg("-html")
        .arg(&html)
        .arg(history)
        .output()
        .map_err(|source| HarnessError::Spawn { program: program.to_path_buf(), source })?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match output.status.code() {
        Some(0) => Ok(PorcupineVerdict::Linearizable),
        Some(1) => Ok(PorcupineVerdict::NotLinearizable { html }),
        Some(3) => Ok(PorcupineVerdict::Undecided),
        _ => Err(HarnessError::Setup(format!(
            "porcupine-check failed on {} ({}): {said} {}",
            history.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}
