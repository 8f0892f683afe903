//! rasputin: the command-line client of Rasputin DB, modelled on etcdctl.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use rasputin::client::{ClientError, STATUSES};
use rasputin::{Client, KeyValue, NodeStatus, RangeStatus, Response};
use rasputin_cli::load::{self, Mix, RasputinStore, Settings, Store};
use rasputin_kv::wire::ErrorCode;
use serde_json::{json, Value};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  get: the key was not found (\"key not found\" on standard error)
  2  bad usage: an unknown flag, bad hex, an unreadable --file, a key or value too large
  3  cas: the key's value was not the expected one, so nothing was swapped
  4  the cluster failed the request: unreachable, timed out or refused
     (standard error names the status, e.g. \"UNAVAILABLE (status 8)\")
  5  health: an endpoint is unhealthy or did not answer

Output (-w): simple prints values as they are and one line per result; table
aligns columns under a header; json prints one object per line, with keys and
values in base64. The JSON fields: put {key, term, index}; get {key, found,
value, term, index} (with --prefix or --range-end: {key, value} per key); cas {key, swapped, term, index}; del {key, deleted,
term, index}; status {endpoint, node_id, cluster_id, peer_address,
client_address, role, term, leader_id, leader_address, lease_held,
commit_index, applied_index, log_entries, log_bytes, snapshot_index,
uptime_seconds, version, shutting_down} or {endpoint, error}; health
{endpoint, healthy, reason}; ranges list {range_id, start, end (null:
no end), epoch_version, epoch_conf_ver, replicas, leader_id, size_bytes,
requests_per_second, transferring_to}; ranges split: the new range's
row, as ranges list; ranges transfer {range_id, leader_id, term}; bench {mix, clients, operations, seconds,
operations_per_second, p50_ms, p99_ms, p999_ms, errors}.";

#[derive(Parser, Debug)]
#[command(
    name = "rasputin",
    version,
    about = "The Rasputin DB command-line client",
    after_help = EXIT_CODES
)]
struct Arguments {
    /// Servers' client addresses (host:port), comma-separated. Any one will
    /// do for reads and writes; status and health ask each.
    #[arg(long, env = "RASPUTIN_ENDPOINTS", default_value = "127.0.0.1:8888", global = true)]
    endpoints: String,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple", global = true)]
    write_out: Format,
    /// How long a command may take, e.g. 500ms, 5s, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Keys and values on the command line and in simple and table output are hex.
    #[arg(long, global = true)]
    hex: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Simple,
    Json,
    Table,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sets KEY to VALUE (or to the contents of --file).
    Put {
        key: String,
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file instead, byte for byte.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Prints KEY's value; exits 1 when there is none. With --prefix or
    /// --range-end, prints each key and its value on lines of their own, in
    /// key order (exit 0 even when there are none).
    Get {
        key: String,
        /// Every key that starts with KEY.
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
        /// Every key from KEY (inclusive) to this one (exclusive).
        #[arg(long)]
        range_end: Option<String>,
        /// With --prefix or --range-end: at most this many keys.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Sets KEY to NEW if its value is EXPECTED; exits 3 when it is not.
    Cas { key: String, expected: String, new: String },
    /// Deletes KEY.
    Del { key: String },
    /// One row per endpoint: id, addresses, role, term, leader, indexes, log, uptime, version.
    Status,
    /// Exits 0 only when every endpoint answers and sees a leader holding its lease.
    Health,
    /// The key space's ranges: list them, or move a range's leadership.
    Ranges {
        #[command(subcommand)]
        command: RangesCommand,
    },
    /// Closed-loop load with a progress line a second, then p50/p99/p999.
    Bench {
        #[arg(long, value_enum, default_value = "put")]
        mix: Mix,
        /// Concurrent clients, each with its own connection and one operation in flight.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
        clients: u64,
        /// Measured time.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Keys, chosen uniformly.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        keys: u64,
    },
}

#[derive(Subcommand, Debug)]
enum RangesCommand {
    /// One row per range: id, bounds, epoch, replicas, leader, size and
    /// request rate, as the range's leader (or else any replica) reports them.
    List {
        /// The descriptors the meta range records instead (id, bounds,
        /// epoch and replicas), which may lag a split by a moment.
        #[arg(long)]
        meta: bool,
    },
    /// Asks RANGE's leader to hand its leadership to node NODE, and waits
    /// (up to --timeout) until NODE leads.
    Transfer { range: u64, node: u64 },
    /// Splits the range holding KEY at KEY: it ends there, and a new range
    /// holds the keys from KEY on, on the same replicas and leader. Waits
    /// (up to --timeout) until an endpoint lists the new range.
    Split { key: String },
}

/// A command's failure, with the exit code it means.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into() }
    }

    fn client(error: &ClientError) -> Failure {
        let status = error.status();
        let name = STATUSES.iter().find(|(_, number)| *number == status).map_or("UNKNOWN", |(name, _)| name);
        let code = match error {
            ClientError::KeyTooLarge(_)
            | ClientError::ValueTooLarge(_)
            | ClientError::RequestTooLarge(_)
            | ClientError::NoPeers
            | ClientError::UnknownPeer { .. }
            | ClientError::InvalidSetting(_)
            | ClientError::InvalidRetryToken(_) => 2,
            ClientError::Timeout { .. } | ClientError::Unavailable { .. } | ClientError::Refused { .. } => 4,
        };
        Failure { code, message: format!("{name} (status {status}): {error}") }
    }
}

/// One result: named fields for json and table, and the line simple prints.
#[derive(Default)]
struct Record {
    fields: Vec<(&'static str, Value)>,
    /// Table cells shown as text rather than as their JSON (keys and values
    /// are base64 in JSON only).
    texts: Vec<(&'static str, String)>,
    simple: Vec<u8>,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let mut out = std::io::stdout().lock();
    match execute(&arguments) {
        Ok((records, code)) => {
            print(&mut out, arguments.write_out, &records);
            ExitCode::from(code)
        }
        Err(failure) => {
            eprintln!("rasputin: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn execute(arguments: &Arguments) -> Result<(Vec<Record>, u8), Failure> {
    let endpoints: Vec<String> =
        arguments.endpoints.split(',').map(str::trim).filter(|part| !part.is_empty()).map(String::from).collect();
    let attempt = arguments.timeout.min(rasputin::client::ATTEMPT_TIMEOUT_DEFAULT);
    let client = Client::builder()
        .peers(endpoints)
        .connections_per_server(1)
        .timeouts(attempt, arguments.timeout)
        .build()
        .map_err(|error| Failure::client(&error))?;
    let text = |argument: &str| decode_argument(argument, arguments.hex);
    let show = |bytes: &[u8]| shown(bytes, arguments.hex);
    let key_text = |key: &[u8]| vec![("key", show(key))];
    match &arguments.command {
        Command::Put { key, value, file } => {
            let key = text(key)?;
            let value = match (value, file) {
                (_, Some(path)) => std::fs::read(path)
                    .map_err(|error| Failure::usage(format!("cannot read --file {}: {error}", path.display())))?,
                (Some(value), None) => text(value)?,
                (None, None) => return Err(Failure::usage("give a VALUE or --file")),
            };
            let response = client.set(&key, &value).map_err(|error| Failure::client(&error))?;
            Ok((vec![Record { texts: key_text(&key), ..written(&key, &response, None, b"OK".to_vec()) }], 0))
        }
        Command::Get { key, prefix, range_end, limit } if *prefix || range_end.is_some() => {
            let start = text(key)?;
            let end = match range_end {
                Some(end) => Some(text(end)?),
                None => rasputin::prefix_end(&start),
            };
            let limit = limit.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
            let pairs = client.scan(&start, end.as_deref(), limit).map_err(|error| Failure::client(&error))?;
            Ok((pairs.iter().map(|pair| scanned(pair, arguments.hex)).collect(), 0))
        }
        Command::Get { limit: Some(_), .. } => Err(Failure::usage("--limit needs --prefix or --range-end")),
        Command::Get { key, .. } => {
            let key = text(key)?;
            let response = client.get(&key).map_err(|error| Failure::client(&error))?;
            if !response.found {
                eprintln!("rasputin: key not found");
                let fields = vec![("key", base64(&key)), ("found", json!(false))];
                let records = if arguments.write_out == Format::Json {
                    vec![Record { fields, ..Record::default() }]
                } else {
                    Vec::new()
                };
                return Ok((records, 1));
            }
            let fields = vec![
                ("key", base64(&key)),
                ("found", json!(true)),
                ("value", base64(&response.value)),
                ("term", json!(response.term)),
                ("index", json!(response.index)),
            ];
            let simple = if arguments.hex { hex(&response.value).into_bytes() } else { response.value.clone() };
            let texts = vec![("key", show(&key)), ("value", show(&response.value))];
            Ok((vec![Record { fields, texts, simple }], 0))
        }
        Command::Cas { key, expected, new } => {
            let (key, expected, new) = (text(key)?, text(expected)?, text(new)?);
            let response = client.cas(&key, &expected, &new).map_err(|error| Failure::client(&error))?;
            let simple = if response.success { b"OK".to_vec() } else { b"NOT SWAPPED".to_vec() };
            let record = Record {
                texts: key_text(&key),
                ..written(&key, &response, Some(("swapped", response.success)), simple)
            };
            if !response.success {
                eprintln!("rasputin: the value of the key was not the expected one; nothing was swapped");
            }
            Ok((vec![record], if response.success { 0 } else { 3 }))
        }
        Command::Del { key } => {
            let key = text(key)?;
            let response = client.del(&key).map_err(|error| Failure::client(&error))?;
            let simple = if response.found { b"1".to_vec() } else { b"0".to_vec() };
            let record = written(&key, &response, Some(("deleted", response.found)), simple);
            Ok((vec![Record { texts: key_text(&key), ..record }], 0))
        }
        Command::Status => status(&client),
        Command::Ranges { command: RangesCommand::List { meta: false } } => ranges_list(&client, arguments.hex),
        Command::Ranges { command: RangesCommand::List { meta: true } } => meta_list(&client, arguments.hex),
        Command::Ranges { command: RangesCommand::Transfer { range, node } } => {
            transfer(&client, *range, *node, arguments.timeout)
        }
        Command::Ranges { command: RangesCommand::Split { key } } => {
            split(&client, &text(key)?, arguments.hex, arguments.timeout)
        }
        Command::Health => health(&client),
        Command::Bench { mix, clients, seconds, value_bytes, keys } => {
            let settings = Settings {
                mix: *mix,
                value_bytes: *value_bytes,
                keys: *keys,
                warmup: Duration::from_millis(500),
                duration: Duration::try_from_secs_f64(*seconds)
                    .map_err(|error| Failure::usage(format!("--seconds {seconds}: {error}")))?,
                operations_max: u64::MAX,
            };
            bench(&client, &settings, *clients)
        }
    }
}

/// The record of one pair of a scan: etcdctl's two lines, key then value, in simple output.
fn scanned(pair: &KeyValue, hex_output: bool) -> Record {
    let show = |bytes: &[u8]| shown(bytes, hex_output);
    let raw = |bytes: &[u8]| if hex_output { hex(bytes).into_bytes() } else { bytes.to_vec() };
    let simple = [raw(&pair.key), b"\n".to_vec(), raw(&pair.value)].concat();
    Record {
        fields: vec![("key", base64(&pair.key)), ("value", base64(&pair.value))],
        texts: vec![("key", show(&pair.key)), ("value", show(&pair.value))],
        simple,
    }
}

/// The record of a write: its key, position and, for cas and del, its outcome.
fn written(key: &[u8], response: &Response, outcome: Option<(&'static str, bool)>, simple: Vec<u8>) -> Record {
    let mut fields = vec![("key", base64(key))];
    fields.extend(outcome.map(|(name, value)| (name, json!(value))));
    fields.extend([("term", json!(response.term)), ("index", json!(response.index))]);
    Record { fields, simple, ..Record::default() }
}

/// Rows are labelled by resolved address, one per address: a host name may
/// stand for several, and a repeated endpoint for one.
fn status(client: &Client) -> Result<(Vec<Record>, u8), Failure> {
    let mut records = Vec::new();
    let mut code = 0;
    for address in client.peers() {
        let endpoint = address.to_string();
        match client.node_status(*address) {
            Ok(status) => records.push(status_record(&endpoint, &status)),
            Err(error) => {
                code = 4;
                let failure = Failure::client(&error);
                eprintln!("rasputin: {endpoint}: {}", failure.message);
                let line = format!("{endpoint}, unreachable: {}", failure.message);
                records.push(Record {
                    fields: vec![("endpoint", json!(endpoint)), ("error", json!(failure.message))],
                    simple: line.into_bytes(),
                    ..Record::default()
                });
            }
        }
    }
    Ok((records, code))
}

fn status_record(endpoint: &str, status: &NodeStatus) -> Record {
    let leader = if status.leader_id == 0 { "none".to_string() } else { status.leader_id.to_string() };
    let simple = format!(
        "{}, {}, {}, {}, term {}, leader {leader}{}, commit {}, applied {}, log {} entries {} bytes, up {}s, v{}",
        status.node_id,
        status.peer_address,
        status.client_address,
        status.role,
        status.term,
        if status.lease_held { " (leased)" } else { "" },
        status.commit_index,
        status.applied_index,
        status.log_entries,
        status.log_bytes,
        status.uptime_seconds,
        status.version,
    );
    let mut fields = vec![("endpoint", json!(endpoint))];
    if let Value::Object(map) = serde_json::to_value(status).unwrap_or_default() {
        fields.extend(STATUS_FIELDS.iter().map(|name| (*name, map.get(*name).cloned().unwrap_or(Value::Null))));
    }
    Record { fields, simple: simple.into_bytes(), ..Record::default() }
}

/// NodeStatus's fields in the order the table shows them.
const STATUS_FIELDS: [&str; 17] = [
    "node_id",
    "peer_address",
    "client_address",
    "role",
    "term",
    "leader_id",
    "lease_held",
    "commit_index",
    "applied_index",
    "log_entries",
    "log_bytes",
    "snapshot_index",
    "uptime_seconds",
    "version",
    "leader_address",
    "cluster_id",
    "shutting_down",
];

/// Every range any endpoint holds, each as its leader sees it when an
/// endpoint leads it, in key order.
fn ranges_list(client: &Client, hex_output: bool) -> Result<(Vec<Record>, u8), Failure> {
    let (ranges, code) = known_ranges(client, true)?;
    Ok((ranges.iter().map(|range| range_record(range, hex_output)).collect(), code))
}

/// Every data range the meta range records, in key order, as rows of
/// `ranges list` without what only a replica knows (leader, size, rate).
fn meta_list(client: &Client, hex_output: bool) -> Result<(Vec<Record>, u8), Failure> {
    let ranges = client.meta_ranges().map_err(|error| Failure::client(&error))?;
    let recorded = ranges.iter().map(|range| RangeStatus { descriptor: Some(range.to_proto()), ..Default::default() });
    Ok((recorded.map(|range| range_record(&range, hex_output)).collect(), 0))
}

/// Every range the endpoints hold, in key order, each as its leader sees
/// it when an endpoint leads it, and the exit code (4 if an endpoint did
/// not answer). `report` prints each endpoint that did not answer.
fn known_ranges(client: &Client, report: bool) -> Result<(Vec<RangeStatus>, u8), Failure> {
    let mut ranges: std::collections::BTreeMap<u64, (bool, RangeStatus)> = Default::default();
    let mut code = 0;
    for address in client.peers() {
        let status = match client.node_status(*address) {
            Ok(status) => status,
            Err(error) => {
                code = 4;
                if report {
                    eprintln!("rasputin: {address}: {}", Failure::client(&error).message);
                }
                continue;
            }
        };
        for range in status.ranges {
            let Some(descriptor) = &range.descriptor else { continue };
            let leads = range.leader_id == status.node_id;
            let known = ranges.get(&descriptor.id).is_some_and(|(known_leads, _)| *known_leads);
            if !known {
                ranges.insert(descriptor.id, (leads, range));
            }
        }
    }
    if ranges.is_empty() && code != 0 {
        return Err(Failure { code, message: "no endpoint answered".to_string() });
    }
    let mut ranges: Vec<RangeStatus> = ranges.into_values().map(|(_, range)| range).collect();
    ranges.sort_by(|left, right| start_of(left).cmp(start_of(right)));
    Ok((ranges, code))
}

fn start_of(range: &RangeStatus) -> &[u8] {
    range.descriptor.as_ref().map_or(&[], |descriptor| &descriptor.start[..])
}

/// How often `ranges split` asks whether the new range is listed yet.
const SPLIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

fn split(client: &Client, key: &[u8], hex_output: bool, timeout: Duration) -> Result<(Vec<Record>, u8), Failure> {
    let deadline = std::time::Instant::now() + timeout;
    let mut report = true;
    loop {
        let (ranges, _) = known_ranges(client, std::mem::take(&mut report))?;
        let holding = ranges
            .iter()
            .filter_map(|range| range.descriptor.as_ref())
            .find(|descriptor| descriptor.start[..] <= *key && (!descriptor.has_end || *key < descriptor.end[..]));
        let Some(holding) = holding else {
            return Err(Failure { code: 4, message: "no endpoint listed the range holding the key".to_string() });
        };
        if holding.start[..] == *key {
            break;
        }
        let version = holding.epoch.unwrap_or_default().version;
        match client.split(key, version) {
            Ok(()) => break,
            // A listing taken from a node that had not applied the range's
            // last split yet names its old version: read it again.
            Err(ClientError::Refused { code: ErrorCode::BadRequest, .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(SPLIT_POLL_INTERVAL);
            }
            Err(error) => return Err(Failure::client(&error)),
        }
    }
    loop {
        let (ranges, _) = known_ranges(client, false)?;
        if let Some(made) = ranges.iter().find(|range| start_of(range) == key) {
            return Ok((vec![range_record(made, hex_output)], 0));
        }
        if std::time::Instant::now() >= deadline {
            let message = format!("the split was made, but no endpoint listed its new range within {timeout:?}");
            return Err(Failure { code: 4, message });
        }
        std::thread::sleep(SPLIT_POLL_INTERVAL);
    }
}

fn range_record(range: &RangeStatus, hex_output: bool) -> Record {
    let descriptor = range.descriptor.clone().unwrap_or_default();
    let epoch = descriptor.epoch.unwrap_or_default();
    let end = descriptor.has_end.then_some(&descriptor.end[..]);
    let replicas: Vec<String> = descriptor.replicas.iter().map(u64::to_string).collect();
    let leader = if range.leader_id == 0 { "none".to_string() } else { range.leader_id.to_string() };
    let shown_end = end.map_or_else(|| "none".to_string(), |end| format!("{:?}", shown(end, hex_output)));
    let simple = format!(
        "{}, start {:?}, end {shown_end}, epoch {}.{}, replicas {}, leader {leader}, {} bytes, {:.1} requests/s",
        descriptor.id,
        shown(&descriptor.start, hex_output),
        epoch.version,
        epoch.conf_ver,
        replicas.join(","),
        range.size_bytes,
        range.requests_per_second,
    );
    let fields = vec![
        ("range_id", json!(descriptor.id)),
        ("start", base64(&descriptor.start)),
        ("end", end.map_or(Value::Null, base64)),
        ("epoch_version", json!(epoch.version)),
        ("epoch_conf_ver", json!(epoch.conf_ver)),
        ("replicas", json!(descriptor.replicas)),
        ("leader_id", json!(range.leader_id)),
        ("size_bytes", json!(range.size_bytes)),
        ("requests_per_second", json!(range.requests_per_second)),
        ("transferring_to", json!(range.transferring_to)),
    ];
    let texts = vec![("start", shown(&descriptor.start, hex_output)), ("end", shown_end)];
    Record { fields, texts, simple: simple.into_bytes() }
}

/// How often `ranges transfer` asks whether the successor leads yet.
const TRANSFER_POLL_INTERVAL: Duration = Duration::from_millis(50);

fn transfer(client: &Client, range_id: u64, to: u64, timeout: Duration) -> Result<(Vec<Record>, u8), Failure> {
    let deadline = std::time::Instant::now() + timeout;
    client.transfer_leadership(range_id, to).map_err(|error| Failure::client(&error))?;
    loop {
        if let Some(term) = leads(client, range_id, to) {
            let simple = format!("node {to} leads range {range_id} (term {term})");
            let fields = vec![("range_id", json!(range_id)), ("leader_id", json!(to)), ("term", json!(term))];
            return Ok((vec![Record { fields, simple: simple.into_bytes(), ..Record::default() }], 0));
        }
        if std::time::Instant::now() >= deadline {
            let message = format!("node {to} did not take up the leadership of range {range_id} within {timeout:?}; the transfer is abandoned after an election timeout, so try again");
            return Err(Failure { code: 4, message });
        }
        std::thread::sleep(TRANSFER_POLL_INTERVAL);
    }
}

/// The term in which `to` leads range `range_id`, if an endpoint says so:
/// `to` itself, or a replica that follows it.
fn leads(client: &Client, range_id: u64, to: u64) -> Option<u64> {
    client.peers().iter().filter_map(|address| client.node_status(*address).ok()).find_map(|status| {
        let led_by_to = status.ranges.iter().any(|range| {
            let id = range.descriptor.as_ref().map_or(0, |descriptor| descriptor.id);
            (id == range_id || range_id == 0) && range.leader_id == to
        });
        let confirmed = status.node_id != to || status.role == "leader";
        (led_by_to && confirmed).then_some(status.term)
    })
}

fn health(client: &Client) -> Result<(Vec<Record>, u8), Failure> {
    let mut records = Vec::new();
    let mut leaders = std::collections::BTreeSet::new();
    let mut code = 0;
    for address in client.peers() {
        let endpoint = address.to_string();
        let reason = match client.node_status(*address) {
            Ok(status) => {
                leaders.insert(status.leader_id);
                rasputin_kv::health::unhealthy_reason(&status)
            }
            Err(error) => Some(format!("did not answer: {}", Failure::client(&error).message)),
        };
        if reason.is_some() {
            code = 5;
        }
        let simple = match &reason {
            None => format!("{endpoint} is healthy"),
            Some(reason) => format!("{endpoint} is unhealthy: {reason}"),
        };
        records.push(Record {
            fields: vec![
                ("endpoint", json!(endpoint)),
                ("healthy", json!(reason.is_none())),
                ("reason", json!(reason)),
            ],
            simple: simple.into_bytes(),
            ..Record::default()
        });
    }
    if leaders.len() > 1 {
        code = 5;
        eprintln!("rasputin: the endpoints name different leaders: {leaders:?}");
    }
    Ok((records, code))
}

fn bench(client: &Client, settings: &Settings, clients: u64) -> Result<(Vec<Record>, u8), Failure> {
    let peers = client.peers().to_vec();
    let open = || -> Box<dyn Store> { Box::new(RasputinStore::new(Client::new(peers.clone(), 1))) };
    let value = vec![b'v'; settings.value_bytes];
    if settings.mix != Mix::Put {
        let mut loaders: Vec<Box<dyn Store>> = (0..load::PRELOAD_CLIENTS_COUNT).map(|_| open()).collect();
        load::preload(&mut loaders, settings.keys, &value)
            .map_err(|error| Failure { code: 4, message: format!("preloading the keys failed: {error}") })?;
    }
    let mut stores: Vec<Box<dyn Store>> = (0..clients).map(|_| open()).collect();
    let summary = load::run(&mut stores, settings, |progress| {
        let rate = progress.operations as f64 / progress.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "{:>5.1}s  {:>10} ops  {:>9.0} ops/s  {} errors",
            progress.elapsed.as_secs_f64(),
            progress.operations,
            rate,
            progress.errors
        );
    });
    let fields = vec![
        ("mix", json!(format!("{:?}", settings.mix).to_lowercase())),
        ("clients", json!(clients)),
        ("operations", json!(summary.operations())),
        ("seconds", json!(round3(summary.seconds))),
        ("operations_per_second", json!(summary.operations_per_second().round())),
        ("p50_ms", json!(round3(summary.milliseconds(0.5)))),
        ("p99_ms", json!(round3(summary.milliseconds(0.99)))),
        ("p999_ms", json!(round3(summary.milliseconds(0.999)))),
        ("errors", json!(summary.errors)),
    ];
    let simple = format!(
        "{} ops in {:.2}s: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, {} errors",
        summary.operations(),
        summary.seconds,
        summary.operations_per_second(),
        summary.milliseconds(0.5),
        summary.milliseconds(0.99),
        summary.milliseconds(0.999),
        summary.errors
    );
    if let Some(error) = &summary.first_error {
        eprintln!("rasputin: {} operations failed; the first: {error}", summary.errors);
    }
    let code = if summary.first_error.is_some() { 4 } else { 0 };
    Ok((vec![Record { fields, simple: simple.into_bytes(), ..Record::default() }], code))
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn print(out: &mut impl Write, format: Format, records: &[Record]) {
    match format {
        Format::Simple => {
            for record in records {
                let _ = out.write_all(&record.simple);
                let _ = out.write_all(b"\n");
            }
        }
        Format::Json => {
            for record in records {
                let object: serde_json::Map<String, Value> =
                    record.fields.iter().map(|(name, value)| (name.to_string(), value.clone())).collect();
                let _ = writeln!(out, "{}", Value::Object(object));
            }
        }
        Format::Table => print_table(out, records),
    }
}

/// Aligned columns under an upper-case header, one row per record; records
/// with other fields (an unreachable endpoint's) start a block of their own.
fn print_table(out: &mut impl Write, records: &[Record]) {
    let mut index = 0;
    while index < records.len() {
        let names: Vec<&str> = records[index].fields.iter().map(|(name, _)| *name).collect();
        let block: Vec<&Record> = records[index..]
            .iter()
            .take_while(|record| record.fields.iter().map(|(name, _)| *name).eq(names.iter().copied()))
            .collect();
        index += block.len();
        let rows: Vec<Vec<String>> = block.iter().map(|record| cells(record)).collect();
        let header: Vec<String> = names.iter().map(|name| name.to_uppercase().replace('_', " ")).collect();
        let widths: Vec<usize> = (0..names.len())
            .map(|column| rows.iter().map(|row| row[column].len()).chain([header[column].len()]).max().unwrap_or(0))
            .collect();
        for row in std::iter::once(&header).chain(rows.iter()) {
            let line: Vec<String> = row.iter().zip(&widths).map(|(text, width)| format!("{text:<width$}")).collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
    }
}

fn cells(record: &Record) -> Vec<String> {
    let cell = |(name, value): &(&str, Value)| {
        if let Some((_, text)) = record.texts.iter().find(|(text_name, _)| text_name == name) {
            return text.clone();
        }
        match value {
            Value::String(text) => text.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        }
    };
    record.fields.iter().map(cell).collect()
}

fn base64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn shown(bytes: &[u8], as_hex: bool) -> String {
    if as_hex {
        hex(bytes)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// A key or value argument: UTF-8 as given, or hex with --hex.
fn decode_argument(argument: &str, as_hex: bool) -> Result<Vec<u8>, Failure> {
    if !as_hex {
        return Ok(argument.as_bytes().to_vec());
    }
    let digits = argument.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(Failure::usage(format!("{argument:?} is not hex: it has an odd number of digits")));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| Failure::usage(format!("{argument:?} is not hex")))
        })
        .collect()
}

/// "250ms", "5s", "2m", or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|character: char| !(character.is_ascii_digit() || character == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 1m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_their_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn hex_arguments_decode_and_bad_ones_are_usage_errors() {
        assert_eq!(decode_argument("00ff10", true).ok(), Some(vec![0, 255, 16]));
        assert_eq!(decode_argument("zz", false).ok(), Some(b"zz".to_vec()));
        assert_eq!(decode_argument("abc", true).err().map(|failure| failure.code), Some(2));
        assert_eq!(decode_argument("zz", true).err().map(|failure| failure.code), Some(2));
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }

    #[test]
    fn tables_align_their_columns() {
        let records = vec![
            Record { fields: vec![("endpoint", json!("a:1")), ("healthy", json!(true))], ..Record::default() },
            Record { fields: vec![("endpoint", json!("long-name:1")), ("healthy", json!(false))], ..Record::default() },
        ];
        let mut out = Vec::new();
        print_table(&mut out, &records);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "ENDPOINT     HEALTHY\na:1          true\nlong-name:1  false\n");
    }
}
