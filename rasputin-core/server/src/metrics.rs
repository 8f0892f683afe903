//! The daemon's metrics. The event loop updates them (atomics, and a mutex
//! per latency histogram that only a scrape contends for); the status
//! server renders them in Prometheus's text exposition format.
//!
//! The format is written here rather than by a metrics crate: the set of
//! metrics is fixed, the latency histograms are rasputin-histogram's
//! log-bucketed ones (which the Prometheus crates cannot hold), and the text
//! format is four kinds of line. ci/test.sh parses it with Prometheus's own
//! Python parser.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rasputin_histogram::Histogram;
use rasputin_kv::wire::ErrorCode;

/// The operations a client request can carry, as the `operation` label has them.
pub const OPERATIONS: [&str; 9] =
    ["set", "get", "cas", "del", "open_session", "split", "scan", "meta_update", "meta_lookup"];

/// The answers a request can get: OK, or one of the wire's error codes, by number.
const OUTCOME_COUNT: usize = 13;

/// The percentile gauges cover this much recent time...
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);
/// ...kept as this many slots, so that the window slides a slot at a time.
const LATENCY_WINDOW_SLOT_COUNT: usize = 6;

/// Upper bounds of the exported histogram buckets, in seconds: from 50 µs,
/// below a local fsync, to 10 s, the client's operation timeout.
const BUCKET_BOUNDS_SECONDS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Which listening port a connection came from, or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

impl Port {
    fn label(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Peer => "peer",
        }
    }
}

/// Bytes and frames through one port, in both directions.
#[derive(Default)]
pub struct Traffic {
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_sent: AtomicU64,
    pub connections_open: AtomicU64,
}

/// A latency histogram since start, and the same over the last
/// LATENCY_WINDOW for the percentile gauges. Values are nanoseconds.
struct Latency {
    total: Histogram,
    slots: Vec<Histogram>,
    /// The slot being filled, and when it started.
    current: usize,
    current_started: Instant,
}

impl Latency {
    fn new(now: Instant) -> Latency {
        Latency {
            total: Histogram::new(),
            slots: (0..LATENCY_WINDOW_SLOT_COUNT).map(|_| Histogram::new()).collect(),
            current: 0,
            current_started: now,
        }
    }

    /// Moves the window on to `now`, emptying the slots it leaves behind.
    fn slide(&mut self, now: Instant) {
        let slot_length = LATENCY_WINDOW / LATENCY_WINDOW_SLOT_COUNT as u32;
        let mut passed = 0;
        while now.duration_since(self.current_started) >= slot_length && passed < LATENCY_WINDOW_SLOT_COUNT {
            self.current = (self.current + 1) % LATENCY_WINDOW_SLOT_COUNT;
            self.slots[self.current].clear();
            self.current_started += slot_length;
            passed += 1;
        }
        if passed == LATENCY_WINDOW_SLOT_COUNT {
            self.current_started = now;
        }
    }

    fn record(&mut self, now: Instant, elapsed: Duration) {
        self.slide(now);
        let nanoseconds = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.total.record(nanoseconds);
        self.slots[self.current].record(nanoseconds);
    }

    fn window(&mut self, now: Instant) -> Histogram {
        self.slide(now);
        let mut window = Histogram::new();
        for slot in &self.slots {
            window.merge(slot);
        }
        window
    }
}

/// Locks `mutex`, poisoned or not: a panic while recording leaves a
/// histogram or a published status whole; keep serving it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Metrics {
    requests: [[AtomicU64; OUTCOME_COUNT]; OPERATIONS.len()],
    request_latency: [Mutex<Latency>; OPERATIONS.len()],
    log_write_latency: Mutex<Latency>,
    log_sync_latency: Mutex<Latency>,
    pub client: Traffic,
    pub peer: Traffic,
    pub proposals: AtomicU64,
    pub commits: AtomicU64,
    pub leader_changes: AtomicU64,
    pub lease_renewals: AtomicU64,
    pub lease_lapses: AtomicU64,
    pub snapshot_sends_started: AtomicU64,
    pub snapshot_sends_finished: AtomicU64,
    pub snapshot_installs: AtomicU64,
    pub compactions: AtomicU64,
    pub storage_bytes: AtomicU64,
    pub splits: AtomicU64,
    pub balancing_transfers: AtomicU64,
    pub unhosted_messages: AtomicU64,
    pub empty_replicas: AtomicU64,
    pub meta_updates: AtomicU64,
    pub ranges: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let now = Instant::now();
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            request_latency: std::array::from_fn(|_| Mutex::new(Latency::new(now))),
            log_write_latency: Mutex::new(Latency::new(now)),
            log_sync_latency: Mutex::new(Latency::new(now)),
            client: Traffic::default(),
            peer: Traffic::default(),
            proposals: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            lease_renewals: AtomicU64::new(0),
            lease_lapses: AtomicU64::new(0),
            snapshot_sends_started: AtomicU64::new(0),
            snapshot_sends_finished: AtomicU64::new(0),
            snapshot_installs: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            storage_bytes: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            balancing_transfers: AtomicU64::new(0),
            unhosted_messages: AtomicU64::new(0),
            empty_replicas: AtomicU64::new(0),
            meta_updates: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
        }
    }

    pub fn traffic(&self, port: Port) -> &Traffic {
        match port {
            Port::Client => &self.client,
            Port::Peer => &self.peer,
        }
    }

    /// A client request was answered, `elapsed` after it arrived.
    pub fn request_answered(&self, operation: usize, code: ErrorCode, elapsed: Duration) {
        let outcome = usize::try_from(code as i32).unwrap_or(ErrorCode::Internal as usize).min(OUTCOME_COUNT - 1);
        self.requests[operation][outcome].fetch_add(1, Ordering::Relaxed);
        lock(&self.request_latency[operation]).record(Instant::now(), elapsed);
    }

    pub fn log_written(&self, elapsed: Duration) {
        lock(&self.log_write_latency).record(Instant::now(), elapsed);
    }

    pub fn log_synced(&self, elapsed: Duration) {
        lock(&self.log_sync_latency).record(Instant::now(), elapsed);
    }

    /// The whole set, in Prometheus's text format (version 0.0.4), with the
    /// gauges that only the status board knows.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = Exposition::default();
        self.render_requests(&mut out);
        self.render_storage(&mut out);
        self.render_traffic(&mut out);
        self.render_consensus(&mut out, gauges);
        out.text
    }

    fn render_requests(&self, out: &mut Exposition) {
        out.header("rasputin_requests_total", "counter", "Client requests answered, by operation and outcome.");
        for (operation, name) in OPERATIONS.iter().enumerate() {
            for outcome in 0..OUTCOME_COUNT {
                let count = self.requests[operation][outcome].load(Ordering::Relaxed);
                let code = ErrorCode::try_from(outcome as i32).unwrap_or(ErrorCode::Internal);
                let labels = format!("operation=\"{name}\",outcome=\"{}\"", code.as_str_name().to_lowercase());
                out.sample("rasputin_requests_total", &labels, count as f64);
            }
        }
        let now = Instant::now();
        let name = "rasputin_request_duration_seconds";
        out.header(name, "histogram", "Time from a client request's arrival to its answer, by operation.");
        let mut windows = Vec::new();
        for (operation, label) in OPERATIONS.iter().enumerate() {
            let mut latency = lock(&self.request_latency[operation]);
            out.histogram(name, &format!("operation=\"{label}\""), &latency.total);
            windows.push((format!("operation=\"{label}\""), latency.window(now)));
        }
        out.percentiles(name, "client request latency", &windows);
    }

    fn render_storage(&self, out: &mut Exposition) {
        let now = Instant::now();
        for (name, help, what, latency) in [
            (
                "rasputin_log_write_duration_seconds",
                "Time to write one batch of log entries to RocksDB, unsynced.",
                "log write latency",
                &self.log_write_latency,
            ),
            (
                "rasputin_log_fsync_duration_seconds",
                "Time from asking for a sync of the log to its completion.",
                "log fsync latency",
                &self.log_sync_latency,
            ),
        ] {
            let mut latency = lock(latency);
            out.header(name, "histogram", help);
            out.histogram(name, "", &latency.total);
            let window = latency.window(now);
            out.percentiles(name, what, &[(String::new(), window)]);
        }
        out.counter("rasputin_log_compactions_total", "Times the log was cut back to a snapshot.", &self.compactions);
        out.gauge(
            "rasputin_storage_bytes",
            "RocksDB's size: SST files plus memtables.",
            self.storage_bytes.load(Ordering::Relaxed) as f64,
        );
    }

    fn render_traffic(&self, out: &mut Exposition) {
        let counters: [(&str, &str, fn(&Traffic) -> &AtomicU64); 4] = [
            ("rasputin_received_bytes_total", "Bytes read, by port.", |traffic| &traffic.bytes_received),
            ("rasputin_sent_bytes_total", "Bytes written, by port.", |traffic| &traffic.bytes_sent),
            ("rasputin_received_frames_total", "Frames read, by port.", |traffic| &traffic.frames_received),
            ("rasputin_sent_frames_total", "Frames queued to send, by port.", |traffic| &traffic.frames_sent),
        ];
        for (name, help, field) in counters {
            out.header(name, "counter", help);
            for port in [Port::Client, Port::Peer] {
                let value = field(self.traffic(port)).load(Ordering::Relaxed);
                out.sample(name, &format!("port=\"{}\"", port.label()), value as f64);
            }
        }
        let name = "rasputin_connections";
        out.header(name, "gauge", "Open connections, by port.");
        for port in [Port::Client, Port::Peer] {
            let open = self.traffic(port).connections_open.load(Ordering::Relaxed);
            out.sample(name, &format!("port=\"{}\"", port.label()), open as f64);
        }
    }

    fn render_consensus(&self, out: &mut Exposition, gauges: &Gauges) {
        out.counter("rasputin_proposals_total", "Client requests handed to consensus.", &self.proposals);
        out.counter("rasputin_commits_total", "Log entries committed and applied.", &self.commits);
        out.counter("rasputin_leader_changes_total", "Times this node saw the leader change.", &self.leader_changes);
        out.counter(
            "rasputin_lease_renewals_total",
            "Event-loop turns in which this leader's lease was extended.",
            &self.lease_renewals,
        );
        out.counter(
            "rasputin_lease_lapses_total",
            "Times this leader's lease ran out while it led.",
            &self.lease_lapses,
        );
        out.counter(
            "rasputin_snapshot_sends_started_total",
            "Snapshot transfers this node began to a follower.",
            &self.snapshot_sends_started,
        );
        out.counter(
            "rasputin_snapshot_sends_finished_total",
            "Snapshot transfers a follower confirmed.",
            &self.snapshot_sends_finished,
        );
        out.counter(
            "rasputin_snapshot_installs_total",
            "Snapshots this node received and installed.",
            &self.snapshot_installs,
        );
        out.counter("rasputin_splits_total", "Splits this node applied, each making a range.", &self.splits);
        out.counter(
            "rasputin_balancing_transfers_total",
            "Leaderships this node handed over to balance the leaders.",
            &self.balancing_transfers,
        );
        out.counter(
            "rasputin_unhosted_messages_total",
            "Peer messages dropped because they were for a range this node does not host.",
            &self.unhosted_messages,
        );
        out.counter(
            "rasputin_empty_replicas_total",
            "Empty replicas made for ranges whose split this node missed, each then filled by a snapshot.",
            &self.empty_replicas,
        );
        out.counter(
            "rasputin_meta_updates_total",
            "Splits this node, as the meta range's leader, recorded in the meta range.",
            &self.meta_updates,
        );
        out.gauge("rasputin_ranges", "Data ranges this node hosts.", self.ranges.load(Ordering::Relaxed) as f64);
        out.gauge("rasputin_term", "This node's current term.", gauges.term as f64);
        out.header("rasputin_role", "gauge", "1 for this node's role, 0 for the others.");
        for role in ["leader", "leader-elect", "follower", "candidate", "joining"] {
            out.sample("rasputin_role", &format!("role=\"{role}\""), f64::from(u8::from(gauges.role == role)));
        }
        out.gauge("rasputin_leader_id", "The leader this node knows, 0 for none.", gauges.leader_id as f64);
        out.gauge(
            "rasputin_lease_held",
            "1 when this node sees a leader holding its lease.",
            f64::from(u8::from(gauges.lease_held)),
        );
        out.gauge("rasputin_commit_index", "The highest log index known committed.", gauges.commit_index as f64);
        out.gauge("rasputin_applied_index", "The highest log index applied.", gauges.applied_index as f64);
        out.gauge("rasputin_log_entries", "Entries in the log since its last snapshot.", gauges.log_entries as f64);
        out.gauge("rasputin_log_bytes", "Bytes of the entries in the log.", gauges.log_bytes as f64);
        out.gauge("rasputin_uptime_seconds", "Seconds since the daemon started.", gauges.uptime_seconds as f64);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// The gauges read off consensus, from the status board.
pub struct Gauges<'a> {
    pub role: &'a str,
    pub term: u64,
    pub leader_id: u64,
    pub lease_held: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub log_entries: u64,
    pub log_bytes: u64,
    pub uptime_seconds: u64,
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: &AtomicU64) {
        self.header(name, "counter", help);
        self.sample(name, "", value.load(Ordering::Relaxed) as f64);
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, "gauge", help);
        self.sample(name, "", value);
    }

    /// One histogram's buckets, sum and count. Bucket counts carry the
    /// histogram's 1% relative error at their bounds.
    fn histogram(&mut self, name: &str, labels: &str, histogram: &Histogram) {
        let separator = if labels.is_empty() { "" } else { "," };
        for bound in BUCKET_BOUNDS_SECONDS {
            let count = histogram.count_at_most((bound * 1e9) as u64);
            self.sample(&format!("{name}_bucket"), &format!("{labels}{separator}le=\"{bound}\""), count as f64);
        }
        self.sample(&format!("{name}_bucket"), &format!("{labels}{separator}le=\"+Inf\""), histogram.count() as f64);
        self.sample(&format!("{name}_sum"), labels, histogram.sum() as f64 / 1e9);
        self.sample(&format!("{name}_count"), labels, histogram.count() as f64);
    }

    /// `{name}_p50`, `_p99` and `_p999` gauges over the sliding window; NaN
    /// when the window saw nothing.
    fn percentiles(&mut self, name: &str, what: &str, windows: &[(String, Histogram)]) {
        let minutes = LATENCY_WINDOW.as_secs() / 60;
        for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let gauge = format!("{name}_{suffix}");
            self.header(
                &gauge,
                "gauge",
                &format!("The {suffix} of {what} over the last {minutes} minute(s), in seconds."),
            );
            for (labels, window) in windows {
                let seconds = window.quantile(quantile).map_or(f64::NAN, |nanoseconds| nanoseconds / 1e9);
                self.sample(&gauge, labels, seconds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_requests_move_their_counter_and_histogram() {
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.request_answered(0, ErrorCode::Ok, Duration::from_millis(2));
        }
        metrics.request_answered(1, ErrorCode::NotLeader, Duration::from_micros(300));
        let gauges = Gauges {
            role: "leader",
            term: 4,
            leader_id: 1,
            lease_held: true,
            commit_index: 9,
            applied_index: 9,
            log_entries: 2,
            log_bytes: 100,
            uptime_seconds: 5,
        };
        let text = metrics.render(&gauges);
        assert!(text.contains("rasputin_requests_total{operation=\"set\",outcome=\"ok\"} 3\n"), "{text}");
        assert!(text.contains("rasputin_requests_total{operation=\"get\",outcome=\"not_leader\"} 1\n"), "{text}");
        assert!(text.contains("rasputin_request_duration_seconds_count{operation=\"set\"} 3\n"), "{text}");
        assert!(text.contains("rasputin_request_duration_seconds_bucket{operation=\"set\",le=\"0.001\"} 0\n"));
        assert!(text.contains("rasputin_request_duration_seconds_bucket{operation=\"set\",le=\"0.0025\"} 3\n"));
        assert!(text.contains("rasputin_role{role=\"leader\"} 1\n"));
        let p50 = text
            .lines()
            .find_map(|line| line.strip_prefix("rasputin_request_duration_seconds_p50{operation=\"set\"} "))
            .expect("a p50 gauge for set");
        let p50: f64 = p50.parse().unwrap();
        assert!((p50 - 0.002).abs() <= 0.002 * 0.01, "p50 {p50} within 1% of 2 ms");
    }

    #[test]
    fn the_window_forgets_what_is_older_than_its_length() {
        let start = Instant::now();
        let mut latency = Latency::new(start);
        latency.record(start, Duration::from_millis(1));
        assert_eq!(latency.window(start + LATENCY_WINDOW / 2).count(), 1);
        assert_eq!(latency.window(start + LATENCY_WINDOW + Duration::from_secs(1)).count(), 0);
        assert_eq!(latency.total.count(), 1, "the histogram since start keeps it");
        latency.record(start + LATENCY_WINDOW * 5, Duration::from_millis(1));
        assert_eq!(latency.window(start + LATENCY_WINDOW * 5).count(), 1);
    }
}
