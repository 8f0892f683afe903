//! Closed-loop load: each client is a thread with its own connection and
//! one operation in flight. `rasputin bench` and `rasputin-bench` (which can
//! also drive etcd) share it, so their figures mean the same thing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rasputin_histogram::Histogram;

/// One client's connection to the system under test.
pub trait Store: Send {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String>;
    /// A linearizable read.
    fn get(&mut self, key: &[u8]) -> Result<(), String>;
    /// Swaps in `new` if the value is `expected`.
    fn cas(&mut self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<(), String>;
}

/// A `rasputin::Client` with one connection per server; requests go to the leader.
pub struct RasputinStore {
    client: rasputin::Client,
}

impl RasputinStore {
    pub fn new(client: rasputin::Client) -> RasputinStore {
        RasputinStore { client }
    }
}

impl Store for RasputinStore {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.client.set(key, value).map(drop).map_err(|error| error.to_string())
    }

    fn get(&mut self, key: &[u8]) -> Result<(), String> {
        self.client.get(key).map(drop).map_err(|error| error.to_string())
    }

    fn cas(&mut self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<(), String> {
        self.client.cas(key, expected, new).map(drop).map_err(|error| error.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Every operation writes.
    Put,
    /// Every operation is a linearizable read.
    Get,
    /// Half reads, half writes.
    Mixed,
    /// Every operation is a compare-and-swap that succeeds.
    Cas,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mix: Mix,
    pub value_bytes: usize,
    /// Keys, chosen uniformly.
    pub keys: u64,
    /// Unmeasured time first, to open connections and warm caches.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Bound on measured operations over all clients.
    pub operations_max: u64,
}

/// Connections that write every key before a read or cas workload, however
/// few clients are measured.
pub const PRELOAD_CLIENTS_COUNT: usize = 32;
/// How often `run` reports progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

pub fn key(number: u64) -> Vec<u8> {
    format!("bench/{number:08}").into_bytes()
}

/// Writes every key once, so that reads and swaps find a value.
pub fn preload(stores: &mut [Box<dyn Store>], keys: u64, value: &[u8]) -> Result<(), String> {
    let count = stores.len().max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = stores
            .iter_mut()
            .enumerate()
            .map(|(index, store)| {
                scope.spawn(move || -> Result<(), String> {
                    (index as u64..keys).step_by(count).try_for_each(|number| store.put(&key(number), value))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| worker.join().expect("a preload thread panicked"))
    })
}

/// How far a run has come, once a PROGRESS_INTERVAL.
pub struct Progress {
    pub elapsed: Duration,
    pub operations: u64,
    pub errors: u64,
}

/// What a run measured. Latencies are in microseconds, to the histogram's
/// 1% relative error.
pub struct Summary {
    pub latencies: Histogram,
    pub seconds: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn operations(&self) -> u64 {
        self.latencies.count()
    }

    pub fn operations_per_second(&self) -> f64 {
        self.operations() as f64 / self.seconds
    }

    /// The latency at `quantile`, in milliseconds (0 with nothing measured).
    pub fn milliseconds(&self, quantile: f64) -> f64 {
        self.latencies.quantile(quantile).unwrap_or(0.0) / 1000.0
    }
}

struct Shared<'a> {
    settings: &'a Settings,
    value: Vec<u8>,
    measuring: AtomicBool,
    stop: AtomicBool,
    measured: AtomicU64,
    errors: AtomicU64,
}

struct Outcome {
    latencies: Histogram,
    first_error: Option<String>,
}

fn run_client(shared: &Shared, store: &mut dyn Store, seed: u64) -> Outcome {
    let mut random = ChaCha8Rng::seed_from_u64(seed);
    let mut latencies = Histogram::new();
    let mut first_error = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = key(random.gen_range(0..shared.settings.keys.max(1)));
        let read = match shared.settings.mix {
            Mix::Put | Mix::Cas => false,
            Mix::Get => true,
            Mix::Mixed => random.gen_bool(0.5),
        };
        let started = Instant::now();
        let result = match (shared.settings.mix, read) {
            (Mix::Cas, _) => store.cas(&key, &shared.value, &shared.value),
            (_, true) => store.get(&key),
            (_, false) => store.put(&key, &shared.value),
        };
        let elapsed = started.elapsed();
        if !shared.measuring.load(Ordering::Relaxed) {
            continue;
        }
        if shared.measured.fetch_add(1, Ordering::Relaxed) >= shared.settings.operations_max {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        match result {
            Ok(()) => latencies.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)),
            Err(error) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert(error);
            }
        }
    }
    Outcome { latencies, first_error }
}

/// Runs `settings` with one thread per store, calling `progress` once a
/// PROGRESS_INTERVAL while measuring.
pub fn run(stores: &mut [Box<dyn Store>], settings: &Settings, mut progress: impl FnMut(&Progress)) -> Summary {
    let shared = Shared {
        settings,
        value: vec![b'v'; settings.value_bytes],
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        measured: AtomicU64::new(0),
        errors: AtomicU64::new(0),
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
        std::thread::sleep(settings.warmup);
        shared.measuring.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let deadline = started + settings.duration;
        let mut next_report = started + PROGRESS_INTERVAL;
        while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= next_report {
                next_report += PROGRESS_INTERVAL;
                progress(&Progress {
                    elapsed: now - started,
                    operations: shared.measured.load(Ordering::Relaxed),
                    errors: shared.errors.load(Ordering::Relaxed),
                });
            }
            let until = deadline.min(next_report).saturating_duration_since(Instant::now());
            std::thread::sleep(Duration::from_millis(10).min(until));
        }
        shared.measuring.store(false, Ordering::SeqCst);
        let seconds = started.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::SeqCst);
        let outcomes: Vec<Outcome> =
            workers.into_iter().map(|worker| worker.join().expect("a client thread panicked")).collect();
        (outcomes, seconds)
    });
    let mut latencies = Histogram::new();
    for outcome in &outcomes {
        latencies.merge(&outcome.latencies);
    }
    let first_error = outcomes.into_iter().find_map(|outcome| outcome.first_error);
    Summary { latencies, seconds, errors: shared.errors.load(Ordering::Relaxed), first_error }
}
