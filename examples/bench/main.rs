//! rasputin-bench: a closed-loop load generator for Rasputin and, built with
//! the `etcd` feature, for etcd, with the same workload code for both.
//! Each client is a thread with its own connection and one operation in
//! flight. Not a test: it prints figures (see docs/performance.md).

#[cfg(feature = "etcd")]
mod etcd;
mod store;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use store::{RasputinStore, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Rasputin,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// Every operation writes.
    Put,
    /// Every operation is a linearizable read.
    Get,
    /// Half reads, half writes.
    Mixed,
    /// Every operation is a compare-and-swap that succeeds.
    Cas,
}

#[derive(Parser, Debug)]
#[command(name = "rasputin-bench", about = "Closed-loop load on Rasputin or etcd: ops/s and latency percentiles")]
struct Arguments {
    #[arg(long, value_enum, default_value = "rasputin")]
    system: System,
    /// Comma-separated client addresses (host:port). etcd clients each use the first.
    #[arg(long, default_value = "127.0.0.1:8888,127.0.0.1:8889,127.0.0.1:8890")]
    endpoints: String,
    /// Concurrent clients, each with its own connection and one operation in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Keys, chosen uniformly.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, value_enum, default_value = "put")]
    mix: Mix,
    /// Measured time (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Unmeasured time first, to open connections and warm caches.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Skip writing every key before a read or cas workload (they are already there).
    #[arg(long)]
    no_preload: bool,
    /// Bound on measured operations over all clients.
    #[arg(long, default_value_t = 100_000_000)]
    operations_max: u64,
}

/// Connections that write every key before a read or cas workload, however
/// few clients are measured.
const PRELOAD_CLIENTS_COUNT: usize = 32;
/// Latencies are recorded in microseconds, up to a minute, to 3 significant digits.
const LATENCY_MICROSECONDS_MAX: u64 = 60_000_000;

fn open(arguments: &Arguments, endpoints: &[String]) -> Result<Box<dyn Store>, String> {
    match arguments.system {
        System::Rasputin => {
            let peers: Vec<SocketAddr> = endpoints
                .iter()
                .map(|endpoint| endpoint.parse().map_err(|error| format!("{endpoint:?}: {error}")))
                .collect::<Result<_, _>>()?;
            Ok(Box::new(RasputinStore::new(peers)))
        }
        #[cfg(feature = "etcd")]
        System::Etcd => Ok(Box::new(etcd::EtcdStore::connect(&endpoints[0])?)),
        #[cfg(not(feature = "etcd"))]
        System::Etcd => {
            Err("this rasputin-bench was built without the etcd feature; build with --features etcd".into())
        }
    }
}

fn key(number: u64) -> Vec<u8> {
    format!("bench/{number:08}").into_bytes()
}

/// Writes every key once, so that reads and swaps find a value.
fn preload(stores: &mut [Box<dyn Store>], keys: u64, value: &[u8]) -> Result<(), String> {
    let count = stores.len() as u64;
    std::thread::scope(|scope| {
        let workers: Vec<_> = stores
            .iter_mut()
            .enumerate()
            .map(|(index, store)| {
                scope.spawn(move || -> Result<(), String> {
                    (index as u64..keys).step_by(count as usize).try_for_each(|number| store.put(&key(number), value))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| worker.join().expect("a preload thread panicked"))
    })
}

struct Outcome {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

struct Shared<'a> {
    arguments: &'a Arguments,
    value: Vec<u8>,
    measuring: AtomicBool,
    stop: AtomicBool,
    measured: AtomicU64,
}

fn run_client(shared: &Shared, store: &mut dyn Store, seed: u64) -> Outcome {
    let mut random = ChaCha8Rng::seed_from_u64(seed);
    let mut latencies = Histogram::new_with_max(LATENCY_MICROSECONDS_MAX, 3).expect("valid histogram bounds");
    let (mut errors, mut first_error) = (0, None);
    while !shared.stop.load(Ordering::Relaxed) {
        let key = key(random.gen_range(0..shared.arguments.keys));
        let read = match shared.arguments.mix {
            Mix::Put | Mix::Cas => false,
            Mix::Get => true,
            Mix::Mixed => random.gen_bool(0.5),
        };
        let started = Instant::now();
        let result = match (shared.arguments.mix, read) {
            (Mix::Cas, _) => store.cas(&key, &shared.value, &shared.value),
            (_, true) => store.get(&key),
            (_, false) => store.put(&key, &shared.value),
        };
        let elapsed = started.elapsed();
        if !shared.measuring.load(Ordering::Relaxed) {
            continue;
        }
        if shared.measured.fetch_add(1, Ordering::Relaxed) >= shared.arguments.operations_max {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        match result {
            Ok(()) => latencies.saturating_record(elapsed.as_micros() as u64),
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    Outcome { latencies, errors, first_error }
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let endpoints: Vec<String> = arguments.endpoints.split(',').map(|text| text.trim().to_string()).collect();
    let mut stores = Vec::with_capacity(arguments.clients);
    for _ in 0..arguments.clients.max(1) {
        match open(&arguments, &endpoints) {
            Ok(store) => stores.push(store),
            Err(error) => {
                eprintln!("rasputin-bench: cannot connect: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let value = vec![b'v'; arguments.value_bytes];
    if arguments.mix != Mix::Put && !arguments.no_preload {
        let loaders: Result<Vec<Box<dyn Store>>, String> =
            (0..PRELOAD_CLIENTS_COUNT).map(|_| open(&arguments, &endpoints)).collect();
        if let Err(error) = loaders.and_then(|mut loaders| preload(&mut loaders, arguments.keys, &value)) {
            eprintln!("rasputin-bench: preloading the keys failed: {error}");
            return ExitCode::from(1);
        }
    }
    let shared = Shared {
        arguments: &arguments,
        value,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        measured: AtomicU64::new(0),
    };
    let (outcomes, seconds) = std::thread::scope(|scope| {
        let workers: Vec<_> = stores
            .iter_mut()
            .enumerate()
            .map(|(index, store)| {
                let shared = &shared;
                scope.spawn(move || run_client(shared, store.as_mut(), index as u64))
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(arguments.warmup_seconds));
        shared.measuring.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(arguments.seconds);
        while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now())));
        }
        shared.measuring.store(false, Ordering::SeqCst);
        let seconds = started.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::SeqCst);
        let outcomes: Vec<Outcome> =
            workers.into_iter().map(|worker| worker.join().expect("a client thread panicked")).collect();
        (outcomes, seconds)
    });
    report(&arguments, &outcomes, seconds)
}

fn report(arguments: &Arguments, outcomes: &[Outcome], seconds: f64) -> ExitCode {
    let mut latencies = Histogram::<u64>::new_with_max(LATENCY_MICROSECONDS_MAX, 3).expect("valid histogram bounds");
    for outcome in outcomes {
        latencies.add(&outcome.latencies).expect("histograms with the same bounds add");
    }
    let errors: u64 = outcomes.iter().map(|outcome| outcome.errors).sum();
    let milliseconds = |quantile: f64| latencies.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "system={:?} mix={:?} clients={} value_bytes={} keys={} ops={} seconds={seconds:.2} ops_per_second={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} errors={errors}",
        arguments.system,
        arguments.mix,
        arguments.clients,
        arguments.value_bytes,
        arguments.keys,
        latencies.len(),
        latencies.len() as f64 / seconds,
        milliseconds(0.5),
        milliseconds(0.99),
        milliseconds(0.999),
    );
    if let Some(error) = outcomes.iter().find_map(|outcome| outcome.first_error.as_ref()) {
        eprintln!("rasputin-bench: {errors} operations failed; the first: {error}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
