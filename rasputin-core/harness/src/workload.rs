//! The register workload: concurrent clients doing read, write and cas on a
//! few keys, each with one operation in flight, recording what they saw.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use rasputin::client::{Client, ClientError};
use rasputin::Response;
use rasputin_checker::{Input, Operation, Output, Value};

/// How one client's operations are paced and bounded.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    pub clients: usize,
    /// Keys in use at a time.
    pub keys: u64,
    /// Operations on a key before the workload moves on to fresh keys; keeps
    /// each key's history small enough to check quickly.
    pub operations_per_key_max: u64,
    /// Operations per second over all clients.
    pub rate_per_second: f64,
    /// The campaign's bound on operations, over all clients.
    pub operations_max: u64,
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    pub seed: u64,
}

impl WorkloadSettings {
    /// The numbers of the keys operation `number` chooses among: the
    /// workload moves to fresh keys every `operations_per_key_max` operations.
    fn keys_of(&self, number: u64) -> std::ops::Range<u64> {
        let generation = number / self.operations_per_key_max.max(1);
        generation * self.keys..(generation + 1) * self.keys
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Definitely without effect: a read that got no answer.
    Failed,
    /// A write or cas that got no answer: it may or may not have taken effect.
    Unknown,
}

/// What the workload saw, for the checkers and the report.
pub struct Recorded {
    /// Operations with an effect or a possible one: the history to check.
    /// Failed reads are left out, as they cannot constrain it.
    pub operations: Vec<Operation>,
    /// Every operation's invoke time and outcome, failed ones included.
    pub outcomes: Vec<(u64, Outcome)>,
    /// Values read back that the workload never wrote: corruption.
    pub foreign_values: Vec<String>,
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Recorded>>,
    shared: Arc<Shared>,
}

struct Shared {
    stop: Arc<AtomicBool>,
    started: Instant,
    operations_started: AtomicU64,
    settings: WorkloadSettings,
    peers: Vec<SocketAddr>,
}

impl Workload {
    /// Starts the clients; times in the history count from `started`.
    pub fn start(settings: WorkloadSettings, peers: Vec<SocketAddr>, started: Instant) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            stop: stop.clone(),
            started,
            operations_started: AtomicU64::new(0),
            settings: settings.clone(),
            peers,
        });
        let threads = (0..settings.clients)
            .map(|index| {
                let shared = shared.clone();
                std::thread::spawn(move || run_client(&shared, index as u64 + 1))
            })
            .collect();
        Workload { stop, threads, shared }
    }

    /// The numbers of the keys the clients use now (`perform` names them).
    pub fn keys_in_use(&self) -> std::ops::Range<u64> {
        let settings = &self.shared.settings;
        let started = self.shared.operations_started.load(Ordering::SeqCst);
        settings.keys_of(started.min(settings.operations_max))
    }

    /// Asks every client to finish its operation in flight and stop, and
    /// gathers their records.
    pub fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Recorded { operations: Vec::new(), outcomes: Vec::new(), foreign_values: Vec::new() };
        for thread in self.threads {
            let recorded = thread.join().expect("a workload client panicked");
            all.operations.extend(recorded.operations);
            all.outcomes.extend(recorded.outcomes);
            all.foreign_values.extend(recorded.foreign_values);
        }
        all.operations.sort_by_key(|operation| (operation.invoke_ns, operation.client));
        all.outcomes.sort_unstable_by_key(|(time, _)| *time);
        all
    }
}

/// A unique value id: the client in the high bits, its counter in the low.
fn value_id(client: u64, counter: u64) -> u64 {
    (client << 32) | counter
}

fn run_client(shared: &Shared, client_number: u64) -> Recorded {
    let settings = &shared.settings;
    let client = Client::new(shared.peers.clone(), 1);
    // Odd clients fail over to another server after one attempt timeout;
    // even ones give a server the whole operation, as a client without
    // failover would, and so stay with a node cut off from the others.
    // The mix puts operations on both sides of a partition.
    let attempt_timeout = if client_number % 2 == 1 { settings.attempt_timeout } else { settings.operation_timeout };
    client.set_timeouts(attempt_timeout, settings.operation_timeout);
    let mut random = ChaCha8Rng::seed_from_u64(settings.seed ^ client_number.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let interval = Duration::from_secs_f64(settings.clients as f64 / settings.rate_per_second.max(0.001));
    let mut recorded = Recorded { operations: Vec::new(), outcomes: Vec::new(), foreign_values: Vec::new() };
    let mut next_start = Instant::now();
    let mut written = 0u64;
    // The value this client last saw in each key, for its next cas there.
    let mut last_seen: HashMap<u64, u64> = HashMap::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let number = shared.operations_started.fetch_add(1, Ordering::SeqCst);
        if number >= settings.operations_max {
            break;
        }
        let key = settings.keys_of(number).start + random.gen_range(0..settings.keys);
        let input = match random.gen_range(0..10) {
            0..=3 => Input::Read,
            4..=7 => {
                written += 1;
                Input::Write(value_id(client_number, written))
            }
            _ => {
                written += 1;
                let expected = last_seen.get(&key).copied().unwrap_or(value_id(client_number, written - 1));
                Input::Cas { expected, new: value_id(client_number, written) }
            }
        };
        let (operation, outcome) = perform(shared, &client, client_number, key, input, &mut recorded.foreign_values);
        match (&operation.input, &operation.output) {
            (_, Some(Output::Read(Some(seen)) | Output::Cas { current: Some(seen), .. }))
            | (Input::Write(seen), Some(_)) => {
                last_seen.insert(key, *seen);
            }
            _ => {}
        }
        recorded.outcomes.push((operation.invoke_ns, outcome));
        if outcome != Outcome::Failed {
            recorded.operations.push(operation);
        }
        next_start += interval;
        let now = Instant::now();
        if next_start > now {
            std::thread::sleep(next_start - now);
        } else {
            next_start = now;
        }
    }
    recorded
}

fn perform(
    shared: &Shared,
    client: &Client,
    client_number: u64,
    key: u64,
    input: Input,
    foreign_values: &mut Vec<String>,
) -> (Operation, Outcome) {
    let key_bytes = crate::splitter::key_name(key);
    let invoke_ns = shared.started.elapsed().as_nanos() as u64;
    let result: Result<Response, ClientError> = match &input {
        Input::Read => client.get(&key_bytes),
        Input::Write(id) => client.set(&key_bytes, id.to_string().as_bytes()),
        Input::Cas { expected, new } => {
            client.cas(&key_bytes, expected.to_string().as_bytes(), new.to_string().as_bytes())
        }
        Input::Delete => client.del(&key_bytes),
    };
    let complete_ns = shared.started.elapsed().as_nanos() as u64;
    let mut value = |response: &Response| -> Value {
        if !response.success && response.value.is_empty() {
            return None;
        }
        let parsed = std::str::from_utf8(&response.value).ok().and_then(|text| text.parse::<u64>().ok());
        if parsed.is_none() {
            foreign_values.push(format!("key {key}: read {:?}", String::from_utf8_lossy(&response.value)));
        }
        parsed
    };
    let output = match (&input, result) {
        (Input::Read, Ok(response)) => Some(Output::Read(value(&response))),
        (Input::Write(_), Ok(_)) => Some(Output::Write),
        (Input::Cas { .. }, Ok(response)) => Some(Output::Cas { success: response.success, current: value(&response) }),
        (Input::Delete, Ok(response)) => Some(Output::Delete(value(&response))),
        (_, Err(_)) => None,
    };
    let outcome = match (&input, &output) {
        (_, Some(_)) => Outcome::Ok,
        (Input::Read, None) => Outcome::Failed,
        (_, None) => Outcome::Unknown,
    };
    let complete_ns = output.is_some().then_some(complete_ns);
    (Operation { client: client_number, key, input, invoke_ns, complete_ns, output }, outcome)
}
