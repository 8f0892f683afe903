//! rasputin-bench: a closed-loop load generator for Rasputin and, built with
//! the `etcd` feature, for etcd, with the same workload code for both.
//! Each client is a thread with its own connection and one operation in
//! flight. Not a test: it prints figures (see docs/performance.md).

#[cfg(feature = "etcd")]
mod etcd;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rasputin_cli::load::{self, Mix, RasputinStore, Settings, Store, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Rasputin,
    Etcd,
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

fn open(arguments: &Arguments, endpoints: &[String]) -> Result<Box<dyn Store>, String> {
    match arguments.system {
        System::Rasputin => {
            let peers: Vec<SocketAddr> = endpoints
                .iter()
                .map(|endpoint| endpoint.parse().map_err(|error| format!("{endpoint:?}: {error}")))
                .collect::<Result<_, _>>()?;
            Ok(Box::new(RasputinStore::new(rasputin::Client::new(peers, 1))))
        }
        #[cfg(feature = "etcd")]
        System::Etcd => Ok(Box::new(etcd::EtcdStore::connect(&endpoints[0])?)),
        #[cfg(not(feature = "etcd"))]
        System::Etcd => {
            Err("this rasputin-bench was built without the etcd feature; build with --features etcd".into())
        }
    }
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
    let settings = Settings {
        mix: arguments.mix,
        value_bytes: arguments.value_bytes,
        keys: arguments.keys,
        warmup: Duration::from_secs_f64(arguments.warmup_seconds),
        duration: Duration::from_secs_f64(arguments.seconds),
        operations_max: arguments.operations_max,
    };
    if arguments.mix != Mix::Put && !arguments.no_preload {
        let value = vec![b'v'; arguments.value_bytes];
        let loaders: Result<Vec<Box<dyn Store>>, String> =
            (0..load::PRELOAD_CLIENTS_COUNT).map(|_| open(&arguments, &endpoints)).collect();
        if let Err(error) = loaders.and_then(|mut loaders| load::preload(&mut loaders, arguments.keys, &value)) {
            eprintln!("rasputin-bench: preloading the keys failed: {error}");
            return ExitCode::from(1);
        }
    }
    let summary = load::run(&mut stores, &settings, |_| {});
    report(&arguments, &summary)
}

fn report(arguments: &Arguments, summary: &Summary) -> ExitCode {
    println!(
        "system={:?} mix={:?} clients={} value_bytes={} keys={} ops={} seconds={:.2} ops_per_second={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} errors={}",
        arguments.system,
        arguments.mix,
        arguments.clients,
        arguments.value_bytes,
        arguments.keys,
        summary.operations(),
        summary.seconds,
        summary.operations_per_second(),
        summary.milliseconds(0.5),
        summary.milliseconds(0.99),
        summary.milliseconds(0.999),
        summary.errors,
    );
    if let Some(error) = &summary.first_error {
        eprintln!("rasputin-bench: {} operations failed; the first: {error}", summary.errors);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
