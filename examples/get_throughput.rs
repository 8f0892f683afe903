//! Closed-loop `get` throughput of the Rust client, to compare with the
//! Python client's (bindings/python/bench_get.py). Not a test: it prints.
//!
//!     get-throughput [PEERS] [THREADS] [SECONDS]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let mut arguments = std::env::args().skip(1);
    let peers = arguments.next().unwrap_or_else(|| "127.0.0.1:8888".to_string());
    let threads: usize = arguments.next().and_then(|text| text.parse().ok()).unwrap_or(1);
    let seconds: f64 = arguments.next().and_then(|text| text.parse().ok()).unwrap_or(5.0);
    let peers = peers.split(',').map(|peer| peer.parse().expect("host:port")).collect();
    let client = rasputin::Client::new(peers, threads);
    client.set(b"bench-key", &[7u8; 256]).expect("the cluster accepts a write");
    let operations = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while Instant::now() < deadline {
                    client.get(b"bench-key").expect("get succeeds");
                    operations.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let rate = operations.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("rust get: threads={threads} ops_per_second={rate:.0}");
}
