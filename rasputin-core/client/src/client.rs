//! `rasputin::Client`: finds the leader, follows redirects, pipelines
//! requests from many threads over a few reused connections, and retries
//! with the same (client id, sequence) so that writes take effect once.
//!
//! # Sessions and retries
//! The client opens sessions with the cluster (one per concurrent caller,
//! reused) and numbers each session's requests. Within one call it retries
//! under the same identity, so a write applies at most once. When a call
//! times out, whether it took effect is unknown: the error carries a
//! [`RetryToken`], and [`Client::retry`] sends the same request again under
//! the same identity, so it still applies at most once and its answer says
//! what happened. Once the cluster has expired the session (it keeps its
//! newest `SESSIONS_COUNT_MAX`), the retry is refused with `SESSION_EXPIRED`
//! and the outcome stays unknown.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use thiserror::Error;

use rasputin_kv::operation::{ClientRequest, Operation};
use rasputin_kv::range::{RangeDescriptor, RangeId, FIRST_RANGE_ID, META_RANGE_ID};
use rasputin_kv::route::{RouteCache, ROUTES_COUNT_MAX};
use rasputin_kv::wire::{self, proto, ErrorCode, WireError, CLIENT_FRAME_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};

pub use crate::builder::ClientBuilder;
pub use rasputin_kv::scan::{KeyValue, ScanPage, SCAN_PAIRS_MAX};
pub use rasputin_kv::state_machine::Response;
/// A node's answer to `Client::node_status`.
pub use rasputin_kv::wire::proto::{NodeStatus, RangeStatus};

/// How long one attempt waits for its answer before trying another node.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// How long an operation may take, retries included.
pub const OPERATION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Pause before retrying after a refusal without a leader hint.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// How long a meta lookup may take before the client asks the servers instead.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Descriptors a client asks for in one lookup: its key's range and some
/// after it, for the next keys of a scan.
const LOOKUP_DESCRIPTORS_COUNT: u32 = 16;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("key of {0} bytes exceeds the limit of {KEY_BYTES_MAX} bytes; use a shorter key")]
    KeyTooLarge(usize),
    #[error("value of {0} bytes exceeds the limit of {VALUE_BYTES_MAX} bytes; split the value")]
    ValueTooLarge(usize),
    #[error(
        "the request is {0} bytes, more than one frame of {CLIENT_FRAME_BYTES_MAX} bytes holds; send smaller values"
    )]
    RequestTooLarge(usize),
    #[error("the operation did not finish within {timeout:?} ({detail}); it may or may not have taken effect. Retry it with Client::retry and this error's token: the retry keeps the request's identity, so it applies at most once, and its answer says what happened")]
    Timeout { timeout: Duration, detail: String, retry: RetryToken },
    #[error("no server could be reached within {timeout:?} ({detail}); nothing was sent, so nothing took effect. Check that the cluster is running and the addresses are right")]
    Unavailable { timeout: Duration, detail: String },
    #[error("the server refused the request ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("no peers were given; pass at least one server's client address")]
    NoPeers,
    #[error("peer {peer:?} is not a reachable name or address ({detail}); give \"host:port\" with a host name or an IP address")]
    UnknownPeer { peer: String, detail: String },
    #[error("invalid client setting: {0}")]
    InvalidSetting(String),
    #[error("not a retry token: {0}; pass the token of a timed-out operation unchanged")]
    InvalidRetryToken(String),
}

impl ClientError {
    /// The server's wire error code behind this error, as on the wire.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::KeyTooLarge(_) | ClientError::ValueTooLarge(_) | ClientError::RequestTooLarge(_) => {
                ErrorCode::ValueTooLarge
            }
            ClientError::Timeout { .. } | ClientError::Unavailable { .. } => ErrorCode::Internal,
            ClientError::Refused { code, .. } => *code,
            ClientError::NoPeers
            | ClientError::UnknownPeer { .. }
            | ClientError::InvalidSetting(_)
            | ClientError::InvalidRetryToken(_) => ErrorCode::BadRequest,
        }
    }

    /// The stable status number every binding reports for this error; the
    /// same numbers as `rasputin_status` in librasputin's C header.
    pub fn status(&self) -> i32 {
        match self {
            ClientError::NoPeers
            | ClientError::UnknownPeer { .. }
            | ClientError::InvalidSetting(_)
            | ClientError::InvalidRetryToken(_) => STATUS_INVALID_ARGUMENT,
            ClientError::KeyTooLarge(_) => STATUS_KEY_TOO_LARGE,
            ClientError::ValueTooLarge(_) | ClientError::RequestTooLarge(_) => STATUS_VALUE_TOO_LARGE,
            ClientError::Timeout { .. } => STATUS_TIMEOUT,
            ClientError::Refused { .. } => STATUS_REFUSED,
            ClientError::Unavailable { .. } => STATUS_UNAVAILABLE,
        }
    }

    /// For a timed-out operation, the token that retries it under the same identity.
    pub fn retry_token(&self) -> Option<&RetryToken> {
        match self {
            ClientError::Timeout { retry, .. } => Some(retry),
            _ => None,
        }
    }
}

/// The stable status numbers, defined here once for every binding: the C
/// header's `rasputin_status` (0–8), Python's and Java's closed client (9)
/// and Go's missing key (10). `rasputin-ffi/tests/statuses.rs` fails if the
/// header, Python, Java or Go says otherwise. `ClientError::status` maps
/// errors onto them.
pub const STATUS_OK: i32 = 0;
pub const STATUS_NULL_ARGUMENT: i32 = 1;
pub const STATUS_INVALID_ARGUMENT: i32 = 2;
pub const STATUS_KEY_TOO_LARGE: i32 = 3;
pub const STATUS_VALUE_TOO_LARGE: i32 = 4;
pub const STATUS_TIMEOUT: i32 = 5;
pub const STATUS_REFUSED: i32 = 6;
pub const STATUS_INTERNAL: i32 = 7;
pub const STATUS_UNAVAILABLE: i32 = 8;
pub const STATUS_CLOSED: i32 = 9;
pub const STATUS_NOT_FOUND: i32 = 10;

/// Every status, by the name the bindings give it (C: `RASPUTIN_OK`,
/// `RASPUTIN_ERROR_<NAME>`; Go: `Status<Name>`).
pub const STATUSES: [(&str, i32); 11] = [
    ("OK", STATUS_OK),
    ("NULL_ARGUMENT", STATUS_NULL_ARGUMENT),
    ("INVALID_ARGUMENT", STATUS_INVALID_ARGUMENT),
    ("KEY_TOO_LARGE", STATUS_KEY_TOO_LARGE),
    ("VALUE_TOO_LARGE", STATUS_VALUE_TOO_LARGE),
    ("TIMEOUT", STATUS_TIMEOUT),
    ("REFUSED", STATUS_REFUSED),
    ("INTERNAL", STATUS_INTERNAL),
    ("UNAVAILABLE", STATUS_UNAVAILABLE),
    ("CLOSED", STATUS_CLOSED),
    ("NOT_FOUND", STATUS_NOT_FOUND),
];

/// A timed-out operation, to send again under the same (client id,
/// sequence) with [`Client::retry`]. As bytes (`to_bytes`), it crosses
/// language bindings unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryToken {
    request: ClientRequest,
}

impl RetryToken {
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::client_request_to_proto(0, &self.request).encode_to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<RetryToken, ClientError> {
        let invalid = |reason: String| ClientError::InvalidRetryToken(reason);
        if bytes.len() > CLIENT_FRAME_BYTES_MAX {
            return Err(invalid(format!("{} bytes is longer than any request", bytes.len())));
        }
        let message = proto::ClientRequest::decode(bytes).map_err(|error| invalid(error.to_string()))?;
        let request = wire::client_request_from_proto(message).map_err(|error| invalid(error.to_string()))?;
        Ok(RetryToken { request })
    }
}

/// Where a caller waits for its response. Filled with None if the
/// connection dies first. (A Condvar, unlike a channel, allocates nothing
/// per calling thread, so foreign threads calling through the C ABI leave
/// no thread-local state behind.)
#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Option<proto::ClientResponse>>>,
    filled: Condvar,
}

impl Slot {
    fn fill(&self, outcome: Option<proto::ClientResponse>) {
        *lock(&self.outcome) = Some(outcome);
        self.filled.notify_one();
    }

    /// Waits up to `timeout`: Err on timeout, Ok(None) if the connection died.
    fn wait(&self, timeout: Duration) -> Result<Option<proto::ClientResponse>, ()> {
        let guard = lock(&self.outcome);
        let (mut guard, _) = self
            .filled
            .wait_timeout_while(guard, timeout, |outcome| outcome.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.take().ok_or(())
    }
}

type Waiters = Arc<Mutex<HashMap<u64, Arc<Slot>>>>;

/// A pipelined connection to one server. A reader thread hands each
/// response to the caller waiting for its request id.
struct Connection {
    writer: Mutex<TcpStream>,
    waiters: Waiters,
    dead: Arc<AtomicBool>,
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How one attempt ended, when it did not get an answer.
enum AttemptFailure {
    /// The request never reached a socket: nothing took effect.
    NotSent(String),
    /// The request was sent and its answer did not come.
    Unanswered(String),
}

impl Connection {
    fn open(address: SocketAddr, timeout: Duration) -> Result<Connection, String> {
        let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|error| error.to_string())?;
        stream.set_nodelay(true).map_err(|error| error.to_string())?;
        let hello = proto::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            role: proto::hello::Role::Client as i32,
            ..Default::default()
        };
        write_frame(&mut stream, &hello).map_err(|error| error.to_string())?;
        stream.set_read_timeout(Some(timeout)).map_err(|error| error.to_string())?;
        let mut buffer = BytesMut::new();
        let reply: proto::HelloReply = read_frame(&mut stream, &mut buffer, &mut [0u8; 1024])
            .map_err(|error| error.to_string())
            .and_then(|frame| wire::decode(frame, "HelloReply").map_err(|error| error.to_string()))?;
        if !reply.accepted {
            return Err(format!("handshake refused: {}", reply.message));
        }
        stream.set_read_timeout(None).map_err(|error| error.to_string())?;
        // A write that blocks this long means the server is gone; the caller retries elsewhere.
        stream.set_write_timeout(Some(timeout)).map_err(|error| error.to_string())?;
        let reader = stream.try_clone().map_err(|error| error.to_string())?;
        let connection = Connection {
            writer: Mutex::new(stream),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            dead: Arc::new(AtomicBool::new(false)),
            reader: Mutex::new(None),
        };
        let (waiters, dead) = (connection.waiters.clone(), connection.dead.clone());
        let handle = std::thread::Builder::new()
            .name("rasputin-client-reader".into())
            .spawn(move || dispatch_responses(reader, buffer, waiters, dead))
            .map_err(|error| error.to_string())?;
        *lock(&connection.reader) = Some(handle);
        Ok(connection)
    }

    /// Closes the socket, which ends the reader thread, and waits for it.
    fn close(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
        if let Some(handle) = lock(&self.reader).take() {
            let _ = handle.join();
        }
    }

    /// Sends one request and waits up to `timeout` for its response. A
    /// caller that gives up only stops waiting: the connection, and the
    /// other callers' requests on it, carry on.
    fn call(&self, request: &proto::ClientRequest, timeout: Duration) -> Result<proto::ClientResponse, AttemptFailure> {
        let slot = Arc::new(Slot::default());
        lock(&self.waiters).insert(request.request_id, slot.clone());
        let sent = write_frame(&mut lock(&self.writer), request);
        if let Err(error) = sent {
            self.dead.store(true, Ordering::SeqCst);
            lock(&self.waiters).remove(&request.request_id);
            return Err(AttemptFailure::NotSent(error.to_string()));
        }
        let outcome = slot.wait(timeout);
        lock(&self.waiters).remove(&request.request_id);
        match outcome {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(AttemptFailure::Unanswered("the connection closed".to_string())),
            Err(()) => Err(AttemptFailure::Unanswered(format!("no answer within {timeout:?}"))),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave these maps half-updated; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn dispatch_responses(mut stream: TcpStream, mut buffer: BytesMut, waiters: Waiters, dead: Arc<AtomicBool>) {
    // Allocated (and zeroed) once per connection, not once per response.
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    while let Ok(frame) = read_frame(&mut stream, &mut buffer, &mut chunk) {
        let Ok(response) = wire::decode::<proto::ClientResponse>(frame, "ClientResponse") else { break };
        if let Some(slot) = lock(&waiters).remove(&response.request_id) {
            slot.fill(Some(response));
        }
    }
    dead.store(true, Ordering::SeqCst);
    for (_, slot) in lock(&waiters).drain() {
        slot.fill(None);
    }
}

fn write_frame(stream: &mut TcpStream, message: &impl prost::Message) -> std::io::Result<()> {
    let mut buffer = BytesMut::new();
    wire::encode_frame(message, &mut buffer);
    stream.write_all(&buffer)
}

/// Bytes a client connection reads from its socket at once.
const READ_CHUNK_BYTES: usize = 16 << 10;

fn read_frame(stream: &mut TcpStream, buffer: &mut BytesMut, chunk: &mut [u8]) -> Result<bytes::Bytes, WireError> {
    loop {
        if let Some(frame) = wire::take_frame(buffer, CLIENT_FRAME_BYTES_MAX)? {
            return Ok(frame);
        }
        let read = stream.read(chunk).unwrap_or(0);
        if read == 0 {
            return Err(WireError::MissingField { message: "stream", field: "bytes (connection closed)" });
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// A session: a client id used by one operation at a time, so that the
/// server can recognise retries of that operation.
struct Session {
    client_id: u64,
    next_sequence: u64,
    /// The range that opened it: ids are unique within a range only.
    range: RangeId,
}

/// How a request fared across its attempts.
struct Sent {
    /// The server's OK answer, or why there was none.
    outcome: Result<proto::ClientResponse, ClientError>,
    /// Whether an attempt that did not succeed may still have taken
    /// effect: it went unanswered, or its leader lost the leadership with
    /// it in the log.
    uncertain: bool,
}

struct Inner {
    peers: Vec<SocketAddr>,
    connections_per_server: usize,
    connections: Mutex<HashMap<SocketAddr, Vec<Arc<Connection>>>>,
    next_connection: AtomicUsize,
    leader: Mutex<Option<SocketAddr>>,
    /// Sessions not in use, by the range they were last used in: sessions
    /// are per range (a split copies them to both halves).
    idle_sessions: Mutex<HashMap<RangeId, Vec<Session>>>,
    /// Which range holds each key, from the descriptors servers report.
    routes: Mutex<RouteCache<()>>,
    /// The server that last answered for each range: its leader, most
    /// likely. Ranges of one cluster may have different leaders.
    range_leaders: Mutex<HashMap<RangeId, SocketAddr>>,
    next_request_id: AtomicU64,
    attempt_timeout: Mutex<Duration>,
    operation_timeout: Mutex<Duration>,
    /// Meta lookups the meta range answered, for tests and diagnostics.
    meta_lookups: AtomicU64,
}

/// A client of a Rasputin cluster. It is `Send + Sync`: share one between
/// threads (wrap it in an `Arc`), and their requests are pipelined over up
/// to `nthreads` connections per server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// (attempt, operation) timeouts of this handle, overriding the shared ones.
    timeouts: Option<(Duration, Duration)>,
}

impl Client {
    /// A builder that takes host names as well as addresses, and names its settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The servers' addresses this client knows.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.inner.peers
    }

    /// `peers` are servers' client addresses; any one of them will do, the
    /// client finds the leader. Connections open lazily, so this cannot fail.
    pub fn new(peers: Vec<SocketAddr>, nthreads: usize) -> Client {
        Client {
            inner: Arc::new(Inner {
                peers,
                connections_per_server: nthreads.max(1),
                connections: Mutex::new(HashMap::new()),
                next_connection: AtomicUsize::new(0),
                leader: Mutex::new(None),
                idle_sessions: Mutex::new(HashMap::new()),
                // Filled from the meta range as keys are first written.
                routes: Mutex::new(RouteCache::empty()),
                range_leaders: Mutex::new(HashMap::new()),
                next_request_id: AtomicU64::new(1),
                attempt_timeout: Mutex::new(ATTEMPT_TIMEOUT_DEFAULT),
                operation_timeout: Mutex::new(OPERATION_TIMEOUT_DEFAULT),
                meta_lookups: AtomicU64::new(0),
            }),
            timeouts: None,
        }
    }

    /// A handle on the same connections whose calls take at most `operation`
    /// (each attempt at most `attempt`). For per-call deadlines.
    pub fn with_timeouts(&self, attempt: Duration, operation: Duration) -> Client {
        Client { inner: self.inner.clone(), timeouts: Some((attempt, operation)) }
    }

    /// Sets how long one attempt and a whole operation may take.
    pub fn set_timeouts(&self, attempt: Duration, operation: Duration) {
        *lock(&self.inner.attempt_timeout) = attempt;
        *lock(&self.inner.operation_timeout) = operation;
    }

    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<Response, ClientError> {
        check_sizes(key, &[value])?;
        self.execute(Operation::Set { key: Bytes::copy_from_slice(key), value: Bytes::copy_from_slice(value) })
    }

    /// success (and found) is false if the key is missing.
    pub fn get(&self, key: &[u8]) -> Result<Response, ClientError> {
        check_sizes(key, &[])?;
        self.execute(Operation::Get { key: Bytes::copy_from_slice(key) })
    }

    /// Swaps in `new` if the value is `expected`; returns the current value,
    /// whether it swapped, and whether the key exists.
    pub fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<Response, ClientError> {
        check_sizes(key, &[expected, new])?;
        self.execute(Operation::Cas {
            key: Bytes::copy_from_slice(key),
            expected: Bytes::copy_from_slice(expected),
            new: Bytes::copy_from_slice(new),
        })
    }

    /// Deletes the key; returns the value it had (success false if it was missing).
    pub fn del(&self, key: &[u8]) -> Result<Response, ClientError> {
        check_sizes(key, &[])?;
        self.execute(Operation::Del { key: Bytes::copy_from_slice(key) })
    }

    /// Sends a timed-out operation again under its original identity (see
    /// the module documentation). The answer is the operation's own: if the
    /// first attempt took effect, the one it got.
    pub fn retry(&self, token: &RetryToken) -> Result<Response, ClientError> {
        if self.inner.peers.is_empty() {
            return Err(ClientError::NoPeers);
        }
        self.send(&token.request).outcome.map(response_of)
    }

    /// One page of a scan: up to `limit` pairs (at most `SCAN_PAIRS_MAX`;
    /// 0: as many as a page holds) of the keys in [`start`, `end`) (None: no
    /// end), in key order, read linearizably. `resume` says where the next
    /// page starts, if the scan did not reach its end.
    pub fn scan_page(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<ScanPage, ClientError> {
        check_sizes(start, &[])?;
        check_sizes(end.unwrap_or_default(), &[])?;
        let operation = Operation::Scan {
            start: Bytes::copy_from_slice(start),
            end: end.map(Bytes::copy_from_slice),
            limit: u32::try_from(limit.min(SCAN_PAIRS_MAX)).expect("SCAN_PAIRS_MAX fits in a u32"),
        };
        if self.inner.peers.is_empty() {
            return Err(ClientError::NoPeers);
        }
        let request = ClientRequest { client_id: 0, sequence: nonce(), operation };
        self.send_routed(&request).outcome.map(wire::scan_page_from_proto)
    }

    /// Every key in [`start`, `end`) (None: no end) with its value, in key
    /// order, at most `limit` of them (None: all). Each page is
    /// linearizable; the scan as a whole is not one snapshot: a key written
    /// while it runs may or may not appear (see `scan_iter`).
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: Option<usize>) -> Result<Vec<KeyValue>, ClientError> {
        self.scan_iter(start, end, limit).collect()
    }

    /// The pairs of `scan`, fetched a page at a time as the iterator is
    /// read. A page goes on from the first key the last one did not return,
    /// so every key present throughout the scan comes exactly once, in
    /// order; after an error the iterator ends.
    pub fn scan_iter(&self, start: &[u8], end: Option<&[u8]>, limit: Option<usize>) -> ScanIter {
        ScanIter {
            client: self.clone(),
            next: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            remaining: limit,
            page: VecDeque::new(),
        }
    }

    fn remember_leader(&self, range: RangeId, leader: SocketAddr) {
        let mut leaders = lock(&self.inner.range_leaders);
        if leaders.len() >= ROUTES_COUNT_MAX && !leaders.contains_key(&range) {
            leaders.clear();
        }
        leaders.insert(range, leader);
    }

    /// The server this client last found leading, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        *lock(&self.inner.leader)
    }

    fn execute(&self, operation: Operation) -> Result<Response, ClientError> {
        if self.inner.peers.is_empty() {
            return Err(ClientError::NoPeers);
        }
        check_frame(&operation)?;
        if operation.is_read() {
            // A read changes nothing, so it needs no session: a nonce names
            // its answer, and a client cut off from the majority can still read.
            let request = ClientRequest { client_id: 0, sequence: nonce(), operation };
            return self.send_routed(&request).outcome.map(response_of);
        }
        let key = operation.key().to_vec();
        let deadline = Instant::now() + self.operation_timeout();
        let mut range = self.range_of(&key);
        let mut session = self.take_session(range)?;
        let mut fresh_sessions_tried = BTreeSet::new();
        // Whether an attempt so far may have taken effect: sent, and not
        // answered with a refusal that says it did not.
        let mut uncertain = false;
        loop {
            let request = ClientRequest {
                client_id: session.client_id,
                sequence: session.next_sequence,
                operation: operation.clone(),
            };
            let routed = self.route_of(&key);
            let sent = self.send(&request);
            uncertain |= sent.uncertain;
            let outcome = sent.outcome;
            match outcome {
                // The key's range split or moved; this attempt was not
                // applied. If no attempt may have been, the operation goes
                // to the range holding the key now in a session of that
                // range's own. Otherwise the same session and sequence go:
                // a split copies every session, so that an attempt applied
                // before the split is answered from its session (see
                // docs/ranges.md on session ids, unique within a range).
                Err(error @ ClientError::Refused { code: ErrorCode::RangeMismatch, .. }) => {
                    if Instant::now() >= deadline {
                        self.put_session(session);
                        return Err(error);
                    }
                    range = self.reroute(&key, routed);
                    if !uncertain && session.range != range {
                        self.put_session(session);
                        session = self.take_session(range)?;
                    }
                }
                // The range does not know the session (it was opened after
                // the range split off, or it has expired). If no attempt may
                // have taken effect, the request goes again, once per range,
                // in a session opened for it.
                Err(ClientError::Refused { code: ErrorCode::SessionExpired, .. })
                    if !uncertain && fresh_sessions_tried.insert(range) =>
                {
                    session = self.open_session(range)?;
                }
                Err(error @ ClientError::Refused { code: ErrorCode::SessionExpired, .. }) => return Err(error),
                // Nothing was sent; the session's next sequence is still unused.
                Err(error @ ClientError::Unavailable { .. }) => {
                    self.put_session(session);
                    return Err(error);
                }
                // The request may still be in flight under this session: the
                // retry token owns it now.
                Err(error @ ClientError::Timeout { .. }) => return Err(error),
                outcome => {
                    session.next_sequence += 1;
                    self.put_session(session);
                    return outcome.map(response_of);
                }
            }
        }
    }

    /// An idle session of `range`, or a new one opened there.
    fn take_session(&self, range: RangeId) -> Result<Session, ClientError> {
        if let Some(session) = lock(&self.inner.idle_sessions).get_mut(&range).and_then(Vec::pop) {
            return Ok(session);
        }
        self.open_session(range)
    }

    fn put_session(&self, session: Session) {
        lock(&self.inner.idle_sessions).entry(session.range).or_default().push(session);
    }

    fn open_session(&self, range: RangeId) -> Result<Session, ClientError> {
        let request = ClientRequest { client_id: 0, sequence: nonce(), operation: Operation::OpenSession };
        match self.send_in(&request, Some(range)).outcome {
            Ok(response) => Ok(Session { client_id: response.index, next_sequence: 1, range }),
            // The caller's own operation was never sent, so it took no effect.
            Err(ClientError::Timeout { timeout, detail, .. }) => {
                Err(ClientError::Unavailable { timeout, detail: format!("could not open a session: {detail}") })
            }
            Err(error) => Err(error),
        }
    }

    /// The range holding `key`, as far as the client knows; when it knows
    /// none (a split left a gap in what it learnt), it looks the key up in
    /// the meta range, or (with servers from before it) asks the servers
    /// which ranges they hold. The first range if they cannot say.
    fn range_of(&self, key: &[u8]) -> RangeId {
        if let Some(route) = lock(&self.inner.routes).for_key(key) {
            return route.descriptor.id;
        }
        self.look_up(key);
        let mut routes = lock(&self.inner.routes);
        if routes.for_key(key).is_none() {
            // Servers from before ranges say nothing of them: the first range,
            // at the epoch before any split, routes every key there, and
            // spares the next operations another lookup.
            routes.learn(RangeDescriptor::first(Vec::new()), ());
        }
        routes.for_key(key).map_or(FIRST_RANGE_ID, |route| route.descriptor.id)
    }

    /// Learns the ranges from the one holding `key` on from the meta range;
    /// if it does not answer (no leader in time, or a server from before
    /// it), or teaches nothing new (it lags a split by a moment), from what
    /// the servers say they host.
    fn look_up(&self, key: &[u8]) {
        let client = Client { timeouts: Some(self.lookup_timeouts()), ..self.clone() };
        match client.meta_lookup(key, LOOKUP_DESCRIPTORS_COUNT) {
            Ok(descriptors) => {
                self.inner.meta_lookups.fetch_add(1, Ordering::Relaxed);
                if !self.learn(descriptors) {
                    self.learn_hosted_ranges();
                }
            }
            Err(_) => self.learn_hosted_ranges(),
        }
    }

    /// The descriptors the meta range records from the range holding `key`
    /// on, at most `limit` (0: as many as one lookup answers).
    fn meta_lookup(&self, key: &[u8], limit: u32) -> Result<Vec<proto::RangeDescriptor>, ClientError> {
        let operation = Operation::MetaLookup { key: Bytes::copy_from_slice(key), limit };
        let request = ClientRequest { client_id: 0, sequence: nonce(), operation };
        self.send_in(&request, Some(META_RANGE_ID)).outcome.map(|response| response.descriptors)
    }

    /// Every data range's descriptor as the meta range records it, in key
    /// order, one lookup per page of descriptors. The meta range may lag a
    /// split by a moment; the data ranges stay the authority.
    pub fn meta_ranges(&self) -> Result<Vec<RangeDescriptor>, ClientError> {
        let mut ranges: Vec<RangeDescriptor> = Vec::new();
        loop {
            let from = ranges.last().and_then(|last| last.end.clone()).unwrap_or_default();
            let page = self.meta_lookup(&from, 0)?;
            let page: Vec<RangeDescriptor> =
                page.into_iter().filter_map(|range| RangeDescriptor::from_proto(range).ok()).collect();
            // Each page must go on from where the last ended, or the walk would not end.
            let follows = page.first().is_some_and(|first| first.contains(&from));
            if !follows {
                let message = format!("the meta range's lookup from {from:?} did not start at the range holding it");
                return Err(ClientError::Refused { code: ErrorCode::Internal, message });
            }
            ranges.extend(page);
            if ranges.last().is_some_and(|last| last.end.is_none()) {
                return Ok(ranges);
            }
        }
    }

    /// A lookup gives up sooner than an operation, so that a meta range
    /// without a leader costs a fallback, not the operation's whole time.
    fn lookup_timeouts(&self) -> (Duration, Duration) {
        let (attempt, operation) =
            self.timeouts.unwrap_or_else(|| (*lock(&self.inner.attempt_timeout), *lock(&self.inner.operation_timeout)));
        (attempt.min(LOOKUP_TIMEOUT), operation.min(LOOKUP_TIMEOUT))
    }

    /// Meta lookups this client made that the meta range answered.
    pub fn meta_lookups(&self) -> u64 {
        self.inner.meta_lookups.load(Ordering::Relaxed)
    }

    /// Learns every range the servers list in their status.
    fn learn_hosted_ranges(&self) {
        for address in self.inner.peers.clone() {
            let Ok(status) = self.node_status(address) else { continue };
            let descriptors = status.ranges.into_iter().filter_map(|range| range.descriptor);
            self.learn(descriptors);
        }
    }

    /// Takes in descriptors a server reported; returns whether any was news.
    fn learn(&self, descriptors: impl IntoIterator<Item = proto::RangeDescriptor>) -> bool {
        let mut routes = lock(&self.inner.routes);
        let mut news = false;
        for descriptor in descriptors {
            // A malformed descriptor teaches nothing; the server's next answer
            // will do. The meta range holds no data key, so it is no route.
            if let Some(descriptor) = RangeDescriptor::from_proto(descriptor).ok().filter(|route| !route.is_meta()) {
                news |= routes.learn(descriptor, ());
            }
        }
        news
    }

    /// `send` for a read, sent again to the range holding its key when a
    /// split moved it, until the operation's time is up.
    fn send_routed(&self, request: &ClientRequest) -> Sent {
        let deadline = Instant::now() + self.operation_timeout();
        let key = request.operation.key();
        loop {
            let routed = self.route_of(key);
            let sent = self.send(request);
            let moved = matches!(sent.outcome, Err(ClientError::Refused { code: ErrorCode::RangeMismatch, .. }));
            if !moved || Instant::now() >= deadline {
                return sent;
            }
            self.reroute(key, routed);
        }
    }

    fn route_of(&self, key: &[u8]) -> Option<RangeDescriptor> {
        lock(&self.inner.routes).for_key(key).map(|route| route.descriptor.clone())
    }

    /// The range holding `key` after a server refused the request routed by
    /// `routed`. When the refusal taught nothing new (the server holds no
    /// range for the key yet, say), the client asks every server, after a pause.
    fn reroute(&self, key: &[u8], routed: Option<RangeDescriptor>) -> RangeId {
        let now = self.route_of(key);
        if let Some(route) = now.filter(|route| Some(route) != routed.as_ref()) {
            return route.id;
        }
        std::thread::sleep(RETRY_BACKOFF);
        self.look_up(key);
        self.range_of(key)
    }

    fn operation_timeout(&self) -> Duration {
        self.timeouts.map_or_else(|| *lock(&self.inner.operation_timeout), |(_, operation)| operation)
    }

    /// Sends `request` until it is answered or the operation times out,
    /// following redirects and rotating through the servers.
    /// Each attempt names the range the client believes holds the key,
    /// and its epoch: a server that disagrees refuses it (RANGE_MISMATCH)
    /// with the descriptors it knows, which the client learns.
    fn send(&self, request: &ClientRequest) -> Sent {
        self.send_in(request, None)
    }

    /// `send`, to `range` if given (an OpenSession, which has no key).
    fn send_in(&self, request: &ClientRequest, range: Option<RangeId>) -> Sent {
        let timed_out =
            |timeout, detail| ClientError::Timeout { timeout, detail, retry: RetryToken { request: request.clone() } };
        let message_for = |request_id| {
            let mut message = wire::client_request_to_proto(request_id, request);
            let routes = lock(&self.inner.routes);
            let (range, epoch) = match range {
                // A session needs its range only, at any epoch.
                Some(range) => (range, None),
                None => match routes.for_key(request.operation.key()) {
                    Some(route) => (route.descriptor.id, Some(route.descriptor.epoch)),
                    None => (FIRST_RANGE_ID, None),
                },
            };
            message.range_id = wire::range_to_wire(range);
            message.epoch = epoch.map(|epoch| proto::RangeEpoch { version: epoch.version, conf_ver: epoch.conf_ver });
            message
        };
        self.send_message(&message_for, &timed_out)
    }

    /// `send` for any message, built afresh (with a new request id) for
    /// each attempt. `timed_out` makes the error of an attempted message
    /// that was never answered OK in time.
    fn send_message(
        &self,
        message_for: &dyn Fn(u64) -> proto::ClientRequest,
        timed_out: &dyn Fn(Duration, String) -> ClientError,
    ) -> Sent {
        let (attempt_timeout, operation_timeout) =
            self.timeouts.unwrap_or_else(|| (*lock(&self.inner.attempt_timeout), *lock(&self.inner.operation_timeout)));
        let deadline = Instant::now() + operation_timeout;
        let mut target = self.leader().unwrap_or(self.inner.peers[0]);
        let mut rotation = 0;
        let mut last_problem = String::from("no attempt made");
        let mut attempts = 0;
        let mut uncertain = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let (timeout, detail) = (operation_timeout, last_problem);
                let outcome = if attempts == 0 {
                    Err(ClientError::Unavailable { timeout, detail })
                } else {
                    Err(timed_out(timeout, detail))
                };
                return Sent { outcome, uncertain };
            }
            let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
            let message = message_for(request_id);
            let range = wire::range_from_wire(message.range_id);
            if attempts == 0 && rotation == 0 {
                if let Some(leader) = lock(&self.inner.range_leaders).get(&range) {
                    target = *leader;
                }
            }
            let attempt = self
                .connection(target, remaining.min(attempt_timeout))
                .map_err(AttemptFailure::NotSent)
                .and_then(|connection| {
                    connection.call(&message, remaining.min(attempt_timeout)).inspect_err(|failure| {
                        if let AttemptFailure::NotSent(_) = failure {
                            self.forget(target, &connection);
                        }
                    })
                });
            let response = match attempt {
                Ok(response) => {
                    attempts += 1;
                    response
                }
                Err(failure) => {
                    let problem = match failure {
                        AttemptFailure::NotSent(problem) => problem,
                        AttemptFailure::Unanswered(problem) => {
                            attempts += 1;
                            uncertain = true;
                            problem
                        }
                    };
                    last_problem = format!("{target}: {problem}");
                    rotation += 1;
                    target = self.inner.peers[rotation % self.inner.peers.len()];
                    std::thread::sleep(RETRY_BACKOFF.min(remaining));
                    continue;
                }
            };
            match ErrorCode::try_from(response.error).unwrap_or(ErrorCode::Internal) {
                ErrorCode::Ok => {
                    // Where the meta range's leader is says nothing of the data ranges'.
                    if range != META_RANGE_ID {
                        *lock(&self.inner.leader) = Some(target);
                    }
                    self.remember_leader(range, target);
                    return Sent { outcome: Ok(response), uncertain };
                }
                ErrorCode::NotLeader => {
                    uncertain |= response.proposed;
                    last_problem = format!("{target} is not the leader");
                    match response.leader.parse::<SocketAddr>() {
                        Ok(leader) => target = leader,
                        Err(_) => {
                            rotation += 1;
                            target = self.inner.peers[rotation % self.inner.peers.len()];
                            std::thread::sleep(RETRY_BACKOFF.min(remaining));
                        }
                    }
                }
                ErrorCode::Overloaded | ErrorCode::ShuttingDown => {
                    last_problem = format!("{target}: {}", response.message);
                    std::thread::sleep(RETRY_BACKOFF.min(remaining));
                }
                // A node that teaches nothing new is behind (it has not
                // applied a split yet, say): ask another.
                ErrorCode::RangeMismatch if !self.learn(response.descriptors) => {
                    last_problem = format!("{target}: {}", response.message);
                    rotation += 1;
                    target = self.inner.peers[rotation % self.inner.peers.len()];
                    std::thread::sleep(RETRY_BACKOFF.min(remaining));
                }
                ErrorCode::RangeMismatch => {
                    let code = ErrorCode::RangeMismatch;
                    return Sent { outcome: Err(ClientError::Refused { code, message: response.message }), uncertain };
                }
                code => {
                    return Sent { outcome: Err(ClientError::Refused { code, message: response.message }), uncertain }
                }
            }
        }
    }

    /// Splits the range holding `key` at `key`, if that range is at epoch
    /// version `version` (as `node_status` lists it): it then ends at
    /// `key`, and a new range holds the keys from `key` on, on the same
    /// replicas and led by the same leader. No data moves. Returns `Ok`
    /// once a range starts at `key`, whoever split it there: a split needs
    /// no session, so a retry after a lost answer (its leader handed over,
    /// say) is a second ask, refused as stale when the first applied, and
    /// the servers' range listings then say that it did. A stale version
    /// with no range starting at `key` is refused (`BAD_REQUEST`) and
    /// changes nothing: read the descriptor again and decide anew.
    pub fn split(&self, key: &[u8], version: u64) -> Result<(), ClientError> {
        let operation = Operation::Split { key: Bytes::copy_from_slice(key), right_range: 0, version };
        check_frame(&operation)?;
        let request = ClientRequest { client_id: 0, sequence: nonce(), operation };
        match self.send_routed(&request).outcome {
            Err(error) if !self.range_starts_at(key) => Err(error),
            _ => Ok(()),
        }
    }

    /// Whether a server lists a range that starts at `key`.
    fn range_starts_at(&self, key: &[u8]) -> bool {
        self.learn_hosted_ranges();
        self.route_of(key).is_some_and(|route| route.start[..] == *key)
    }

    /// Asks the leader of range `range_id` (0: the first range) to hand
    /// its leadership to node `to`, following redirects to the leader.
    /// Returns once the leader has begun the transfer (at once if `to`
    /// leads already); `node_status` shows when `to` leads. An unknown node
    /// is refused (`UNKNOWN_NODE`) and changes nothing; so does a transfer
    /// that a leader of another consensus mode cannot make (`BAD_REQUEST`).
    pub fn transfer_leadership(&self, range_id: u64, to: u64) -> Result<(), ClientError> {
        let message_for = |request_id| proto::ClientRequest {
            request_id,
            range_id,
            transfer_leadership: Some(proto::TransferLeadershipRequest { to }),
            ..Default::default()
        };
        // A transfer asked twice is the same transfer, so no retry token is needed.
        let timed_out = |timeout, detail: String| ClientError::Unavailable {
            timeout,
            detail: format!("no leader began the transfer in time: {detail}"),
        };
        self.send_message(&message_for, &timed_out).outcome.map(|_| ())
    }

    /// Asks the server at `address`, which need not be one of `peers`,
    /// about itself: its role, term, leader, log and version. Any node
    /// answers, leader or not, without consensus, so this works on a
    /// cluster that has lost its quorum. One attempt, within the attempt
    /// timeout: a status is for now, and a retry elsewhere would be another
    /// node's.
    pub fn node_status(&self, address: SocketAddr) -> Result<NodeStatus, ClientError> {
        let timeout = self.timeouts.map_or_else(|| *lock(&self.inner.attempt_timeout), |(attempt, _)| attempt);
        let request = proto::ClientRequest {
            request_id: self.inner.next_request_id.fetch_add(1, Ordering::Relaxed),
            status: Some(proto::StatusRequest {}),
            ..Default::default()
        };
        let unavailable = |detail: String| ClientError::Unavailable { timeout, detail: format!("{address}: {detail}") };
        let connection = self.connection(address, timeout).map_err(unavailable)?;
        let response = connection.call(&request, timeout).map_err(|failure| match failure {
            AttemptFailure::NotSent(problem) | AttemptFailure::Unanswered(problem) => {
                self.forget(address, &connection);
                unavailable(problem)
            }
        })?;
        match (ErrorCode::try_from(response.error).unwrap_or(ErrorCode::Internal), response.status) {
            (ErrorCode::Ok, Some(status)) => Ok(status),
            (ErrorCode::Ok, None) => Err(ClientError::Refused {
                code: ErrorCode::Internal,
                message: format!("{address} answered a status request without a status"),
            }),
            (code, _) => Err(ClientError::Refused {
                code,
                message: format!("{address} refused a status request, so it predates them: {}", response.message),
            }),
        }
    }

    /// A live connection to `address`, opening one if the pool is not full.
    fn connection(&self, address: SocketAddr, timeout: Duration) -> Result<Arc<Connection>, String> {
        let turn = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        {
            let mut pool = lock(&self.inner.connections);
            let connections = pool.entry(address).or_default();
            connections.retain(|connection| !connection.dead.load(Ordering::SeqCst));
            if connections.len() >= self.inner.connections_per_server {
                return Ok(connections[turn % connections.len()].clone());
            }
        }
        let connection = Arc::new(Connection::open(address, timeout)?);
        lock(&self.inner.connections).entry(address).or_default().push(connection.clone());
        Ok(connection)
    }

    fn forget(&self, address: SocketAddr, connection: &Arc<Connection>) {
        connection.close();
        if let Some(connections) = lock(&self.inner.connections).get_mut(&address) {
            connections.retain(|other| !Arc::ptr_eq(other, connection));
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: close every connection and join its reader.
    fn drop(&mut self) {
        for connections in lock(&self.connections).values() {
            for connection in connections {
                connection.close();
            }
        }
    }
}

/// A single key's answer, from the server's.
fn response_of(response: proto::ClientResponse) -> Response {
    Response {
        success: response.success,
        found: response.found,
        value: response.value.into(),
        term: response.term,
        index: response.index,
    }
}

/// The pairs of a scan, a page at a time (see `Client::scan_iter`).
pub struct ScanIter {
    client: Client,
    /// Where the next page starts; None once the scan is over.
    next: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    remaining: Option<usize>,
    page: VecDeque<KeyValue>,
}

impl ScanIter {
    fn fetch(&mut self) -> Result<(), ClientError> {
        let Some(start) = self.next.take() else { return Ok(()) };
        let limit = self.remaining.unwrap_or(0);
        let page = self.client.scan_page(&start, self.end.as_deref(), limit)?;
        self.next = page.resume;
        self.page.extend(page.pairs);
        Ok(())
    }
}

impl Iterator for ScanIter {
    type Item = Result<KeyValue, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == Some(0) {
            return None;
        }
        // An empty page with a resume key is possible (a range with no keys in the span).
        while self.page.is_empty() && self.next.is_some() {
            if let Err(error) = self.fetch() {
                self.next = None;
                return Some(Err(error));
            }
        }
        let pair = self.page.pop_front()?;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= 1;
        }
        Some(Ok(pair))
    }
}

/// The first key after every key that starts with `prefix`, the end of a
/// prefix scan; None when no key is (the prefix is empty or all 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|byte| *byte != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// A random, non-zero number that tells a request without a session apart
/// from every other in flight.
fn nonce() -> u64 {
    rand::random::<u64>() | 1
}

fn check_sizes(key: &[u8], values: &[&[u8]]) -> Result<(), ClientError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(ClientError::KeyTooLarge(key.len()));
    }
    match values.iter().map(|value| value.len()).max() {
        Some(length) if length > VALUE_BYTES_MAX => Err(ClientError::ValueTooLarge(length)),
        _ => Ok(()),
    }
}

/// Checks that the whole request fits in one frame, with the largest ids
/// it could carry: a server closes a connection on an oversized frame, and
/// that would fail every other caller's request on it.
fn check_frame(operation: &Operation) -> Result<(), ClientError> {
    let request = ClientRequest { client_id: u64::MAX, sequence: u64::MAX, operation: operation.clone() };
    wire::check_request_frame(&wire::client_request_to_proto(u64::MAX, &request)).map_err(|error| match error {
        wire::RequestError::RequestTooLarge(bytes) => ClientError::RequestTooLarge(bytes),
        other => ClientError::Refused { code: other.code(), message: other.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_client_is_send_and_sync() {
        assert_send_sync::<Client>();
    }

    #[test]
    fn oversized_input_is_refused_before_sending() {
        let client = Client::new(vec!["127.0.0.1:9".parse().unwrap()], 1);
        let big = vec![0; VALUE_BYTES_MAX + 1];
        assert!(matches!(client.set(b"k", &big), Err(ClientError::ValueTooLarge(_))));
        assert!(matches!(client.get(&big), Err(ClientError::KeyTooLarge(_))));
        assert!(matches!(client.cas(b"k", &big, b"new"), Err(ClientError::ValueTooLarge(_))));
        assert!(matches!(Client::new(Vec::new(), 1).get(b"k"), Err(ClientError::NoPeers)));
    }

    #[test]
    fn an_unreachable_cluster_is_reported_unavailable_without_panicking() {
        let client = Client::new(vec!["127.0.0.1:9".parse().unwrap()], 1);
        client.set_timeouts(Duration::from_millis(50), Duration::from_millis(200));
        let error = client.get(b"k").unwrap_err();
        assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");
    }

    #[test]
    fn retry_tokens_round_trip_as_bytes_and_garbage_is_refused() {
        let request = ClientRequest {
            client_id: 7,
            sequence: 3,
            operation: Operation::Cas {
                key: Bytes::from_static(b"k"),
                expected: Bytes::from_static(b""),
                new: Bytes::from_static(b"n"),
            },
        };
        let token = RetryToken { request };
        assert_eq!(RetryToken::from_bytes(&token.to_bytes()).unwrap(), token);
        assert!(matches!(RetryToken::from_bytes(b"\xff\xff"), Err(ClientError::InvalidRetryToken(_))));
        assert!(matches!(RetryToken::from_bytes(&[]), Err(ClientError::InvalidRetryToken(_))));
    }

    /// A server speaking the client protocol: it accepts the handshake and
    /// sends what `answer` makes of each request (nothing for None). It
    /// counts the connections it accepts.
    fn fake_server(
        answer: impl Fn(&proto::ClientRequest) -> Option<proto::ClientResponse> + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counter, answer) = (accepted.clone(), Arc::new(answer));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || serve(stream, &*answer));
            }
        });
        (address, accepted)
    }

    fn serve(mut stream: TcpStream, answer: &dyn Fn(&proto::ClientRequest) -> Option<proto::ClientResponse>) {
        let (mut buffer, mut chunk) = (BytesMut::new(), vec![0u8; 4096]);
        let Ok(_) = read_frame(&mut stream, &mut buffer, &mut chunk) else { return };
        let reply =
            proto::HelloReply { accepted: true, protocol_version: wire::PROTOCOL_VERSION, ..Default::default() };
        let _ = write_frame(&mut stream, &reply);
        while let Ok(frame) = read_frame(&mut stream, &mut buffer, &mut chunk) {
            let Ok(request) = wire::decode::<proto::ClientRequest>(frame, "ClientRequest") else { return };
            let Some(response) = answer(&request) else { continue };
            if write_frame(&mut stream, &response).is_err() {
                return;
            }
        }
    }

    /// Never answers a get of key "slow"; answers everything else at once.
    fn selective_server() -> (SocketAddr, Arc<AtomicUsize>) {
        fake_server(|request| {
            let slow = matches!(&request.operation, Some(proto::client_request::Operation::Get(get)) if get.key.as_ref() == b"slow");
            (!slow).then(|| proto::ClientResponse { request_id: request.request_id, index: 9, ..Default::default() })
        })
    }

    /// Issue 13, item 5: one caller's attempt timeout must not close the
    /// connection that other callers' requests are pipelined on.
    #[test]
    fn one_callers_timeout_leaves_the_shared_connection_to_the_others() {
        let (address, accepted) = selective_server();
        let client = Client::new(vec![address], 1);
        client.get(b"warm-up").unwrap();
        let impatient = client.with_timeouts(Duration::from_millis(50), Duration::from_millis(200));
        let waiting = std::thread::spawn(move || impatient.get(b"slow"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut gets = 0;
        while !waiting.is_finished() {
            assert!(Instant::now() < deadline, "the slow get never timed out");
            client.get(b"fast").expect("a get beside the timing-out one");
            gets += 1;
        }
        let error = waiting.join().unwrap().unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
        client.get(b"fast").unwrap();
        assert!(gets > 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a timed-out attempt reconnected the shared connection");
    }

    /// Serves scans of the keys "k00".."k09" two pairs a page, as a server
    /// whose pages are full (or a range that ends) would.
    fn paging_server() -> SocketAddr {
        let keys: Vec<Vec<u8>> = (0..10).map(|index| format!("k{index:02}").into_bytes()).collect();
        let (address, _) = fake_server(move |request| {
            let Some(proto::client_request::Operation::Scan(scan)) = &request.operation else { return None };
            let within =
                keys.iter().filter(|key| key[..] >= scan.start[..] && (!scan.has_end || key[..] < scan.end[..]));
            let mut within = within.cloned();
            let limit = if scan.limit == 0 { 2 } else { scan.limit.min(2) as usize };
            let pairs = within.by_ref().take(limit).map(|key| KeyValue { value: key.clone(), key }).collect();
            let page = ScanPage { pairs, resume: within.next(), term: 1, index: 1 };
            Some(wire::scan_page_to_proto(request.request_id, page))
        });
        address
    }

    #[test]
    fn a_scan_walks_the_pages_in_order_and_stops_at_its_limit() {
        let client = Client::new(vec![paging_server()], 1);
        let keys = |pairs: Vec<KeyValue>| {
            pairs.into_iter().map(|pair| String::from_utf8(pair.key).unwrap()).collect::<Vec<_>>()
        };
        let all = client.scan(b"", None, None).expect("a scan of everything");
        assert_eq!(keys(all), (0..10).map(|index| format!("k{index:02}")).collect::<Vec<_>>());
        assert_eq!(keys(client.scan(b"k03", Some(b"k06"), None).unwrap()), ["k03", "k04", "k05"]);
        assert_eq!(keys(client.scan(b"k01", None, Some(3)).unwrap()), ["k01", "k02", "k03"]);
        assert!(client.scan(b"k05", Some(b"k05"), None).unwrap().is_empty());
        let page = client.scan_page(b"k08", None, 0).unwrap();
        assert_eq!((page.pairs.len(), page.resume), (2, None));
        assert!(matches!(client.scan(&vec![0; KEY_BYTES_MAX + 1], None, None), Err(ClientError::KeyTooLarge(_))));
    }

    #[test]
    fn a_prefix_ends_after_its_last_byte_that_can_grow() {
        assert_eq!(prefix_end(b"user/"), Some(b"user0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    /// A server of two ranges, 1 below "m" and 7 from "m" on; range 1 opens
    /// sessions 100 and up, range 7 sessions 700 and up. A refusal for a
    /// key of range 1 names range 1 only, so a client learns of range 7
    /// only from a write to it. The writes applied, as (range, session).
    fn two_range_server(writes: Arc<Mutex<Vec<(u64, u64)>>>) -> SocketAddr {
        let descriptor = |id: RangeId, start: &'static [u8], end: Option<&'static [u8]>| RangeDescriptor {
            id,
            start: Bytes::from_static(start),
            end: end.map(Bytes::from_static),
            replicas: vec![1],
            epoch: rasputin_kv::range::RangeEpoch { version: 1, conf_ver: 0 },
        };
        let (left, right) = (descriptor(1, b"", Some(b"m")), descriptor(7, b"m", None));
        let (address, _) = fake_server(move |request| {
            let mut response = proto::ClientResponse { request_id: request.request_id, ..Default::default() };
            let range = if request.range_id == 0 { FIRST_RANGE_ID } else { request.range_id };
            let version = request.epoch.map_or(0, |epoch| epoch.version);
            match &request.operation {
                None => response.error = ErrorCode::BadRequest as i32,
                // A server from before the meta range.
                Some(proto::client_request::Operation::MetaLookup(_)) => {
                    response.error = ErrorCode::UnknownRange as i32
                }
                Some(proto::client_request::Operation::OpenSession(_)) => response.index = 100 * range,
                Some(proto::client_request::Operation::Set(set)) if range == 1 && set.key >= "m" => {
                    response.error = ErrorCode::RangeMismatch as i32;
                    response.descriptors = vec![left.to_proto(), right.to_proto()];
                }
                Some(_) if range == 1 && version != 1 => {
                    response.error = ErrorCode::RangeMismatch as i32;
                    response.descriptors = vec![left.to_proto()];
                }
                _ => {
                    lock(&writes).push((range, request.client_id));
                    response.success = true;
                }
            }
            Some(response)
        });
        address
    }

    /// Issue 17: a write whose range split before it was sent goes to the
    /// new range in a session that range opened, never under the id of
    /// the old range's session, which there may be another client's.
    #[test]
    fn a_write_moved_by_a_split_uses_a_session_of_its_new_range() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let client = Client::new(vec![two_range_server(writes.clone())], 1);
        client.set(b"a", b"left").expect("the left range takes it");
        client.set(b"z", b"right").expect("the write moves to the right range");
        let sessions_opened_in = lock(&client.inner.idle_sessions).keys().copied().collect::<BTreeSet<_>>();
        assert_eq!(sessions_opened_in, BTreeSet::from([1, 7]), "a session per range");
        assert_eq!(*lock(&writes), [(1, 100), (7, 700)], "each write in its range's own session");
    }

    /// A server from before ranges answers a meta lookup BAD_REQUEST (an
    /// operation it does not know) and its status lists no range: the
    /// client then routes every key to the first range, and looks nothing
    /// up again for the next keys.
    #[test]
    fn against_a_server_from_before_ranges_a_client_looks_up_once() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        let (address, _) = fake_server(move |request| {
            let mut response = proto::ClientResponse { request_id: request.request_id, ..Default::default() };
            match &request.operation {
                Some(proto::client_request::Operation::MetaLookup(_)) => {
                    counted.fetch_add(1, Ordering::SeqCst);
                    response.error = ErrorCode::BadRequest as i32;
                }
                Some(proto::client_request::Operation::OpenSession(_)) => response.index = 5,
                None => response.error = ErrorCode::BadRequest as i32,
                Some(_) => response.success = true,
            }
            Some(response)
        });
        let client = Client::new(vec![address], 1);
        for key in [&b"a"[..], b"m", b"z"] {
            client.set(key, b"value").expect("the old server takes every write");
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1, "one lookup, then the first range routes every key");
    }

    /// Opens sessions from id 100 up and refuses, as expired, every write
    /// of a session below 100.
    fn expiring_server() -> SocketAddr {
        let opened = AtomicU64::new(100);
        let (address, _) = fake_server(move |request| {
            let mut response = proto::ClientResponse { request_id: request.request_id, ..Default::default() };
            match request.operation {
                Some(proto::client_request::Operation::OpenSession(_)) => {
                    response.index = opened.fetch_add(1, Ordering::SeqCst);
                }
                _ if request.client_id < 100 => response.error = ErrorCode::SessionExpired as i32,
                _ => response.success = true,
            }
            Some(response)
        });
        address
    }

    /// A session the cluster expired is dropped for good, and the call it
    /// failed goes again once, in a session opened for it, not in another
    /// idle one that may have expired too.
    #[test]
    fn expired_idle_sessions_are_dropped_and_a_fresh_one_is_opened() {
        let client = Client::new(vec![expiring_server()], 1);
        for client_id in 1..=3 {
            client.put_session(Session { client_id, next_sequence: 5, range: FIRST_RANGE_ID });
        }
        client.set(b"k", b"v").expect("the write goes again in a fresh session");
        let sessions = lock(&client.inner.idle_sessions);
        let idle: Vec<u64> = sessions[&FIRST_RANGE_ID].iter().map(|session| session.client_id).collect();
        assert_eq!(idle, [1, 2, 100], "the expired session was dropped and the fresh one kept");
    }
}
