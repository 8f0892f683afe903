//! The status server: `--status-port` serves `/metrics` (Prometheus),
//! `/health` and `/status` over HTTP, from its own thread.
//!
//! The event loop never waits on it: it publishes the node's status to a
//! board after its turns, and the metrics are atomics. The server answers
//! one request at a time, each with a read deadline, so a slow or hostile
//! scraper costs at most STATUS_READ_TIMEOUT per connection and can never
//! pile up threads or memory. Request heads are parsed by httparse, the
//! parser hyper uses; responses are written here, since only GET of three
//! paths is served.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rasputin_kv::wire::proto;

use crate::metrics::{lock, Gauges, Metrics};

/// A request head bigger than this is refused: the three paths need no more.
pub const STATUS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// A scraper that sends no whole request head within this is dropped.
pub const STATUS_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Headers parsed per request; more get 431.
const STATUS_REQUEST_HEADERS_COUNT_MAX: usize = 32;
/// How often the server looks at its stop flag while no one connects.
const STATUS_ACCEPT_POLL: Duration = Duration::from_millis(100);
/// The board is stale, and the node unhealthy, when the event loop has not
/// published for this long: it publishes at least every turn, and turns
/// come at least every 200 ms.
pub const STATUS_STALE_AFTER: Duration = Duration::from_secs(2);

/// What the event loop last said about this node.
struct Published {
    status: proto::NodeStatus,
    at: Instant,
}

/// Where the event loop leaves the node's status for the status server.
pub struct StatusBoard {
    published: Mutex<Published>,
}

impl StatusBoard {
    pub fn new(status: proto::NodeStatus) -> StatusBoard {
        StatusBoard { published: Mutex::new(Published { status, at: Instant::now() }) }
    }

    pub fn publish(&self, status: proto::NodeStatus) {
        *lock(&self.published) = Published { status, at: Instant::now() };
    }

    /// The node's status, and how long ago it was published.
    pub fn read(&self) -> (proto::NodeStatus, Duration) {
        let published = lock(&self.published);
        (published.status.clone(), published.at.elapsed())
    }
}

/// Why this node is not healthy, or None when it is: its event loop is
/// running, and its status is healthy (see `rasputin_kv::health`).
pub fn unhealthy_reason(status: &proto::NodeStatus, age: Duration) -> Option<String> {
    if age > STATUS_STALE_AFTER {
        return Some(format!("the event loop has not run for {:.1}s", age.as_secs_f64()));
    }
    rasputin_kv::health::unhealthy_reason(status)
}

/// The status server's thread. Dropping it stops the thread and waits for it.
pub struct StatusServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusServer {
    /// Serves on `listener`, which the caller bound so that it can report
    /// a port in use as it does for the others.
    pub fn start(
        listener: TcpListener,
        board: Arc<StatusBoard>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<StatusServer> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("rasputin-status".into()).spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &board, &metrics),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(STATUS_ACCEPT_POLL)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the status server could not accept a connection");
                        std::thread::sleep(STATUS_ACCEPT_POLL);
                    }
                }
            }
        })?;
        Ok(StatusServer { stop, thread: Some(thread) })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(code: u16, body: impl Into<String>) -> Reply {
        Reply { code, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    fn json(code: u16, body: String) -> Reply {
        Reply { code, content_type: "application/json", body }
    }
}

fn serve(mut stream: TcpStream, board: &StatusBoard, metrics: &Metrics) {
    let (reply, head_only) = match read_request(&mut stream) {
        Ok((method, path)) => (route(&method, &path, board, metrics), method == "HEAD"),
        Err(reply) => (reply, false),
    };
    let reason = match reply.code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.code,
        reply.content_type,
        reply.body.len()
    );
    let _ = stream.set_write_timeout(Some(STATUS_READ_TIMEOUT));
    let _ = stream.write_all(head.as_bytes());
    if !head_only {
        let _ = stream.write_all(reply.body.as_bytes());
    }
}

/// Reads one request head: its method and path, or the error to answer.
fn read_request(stream: &mut TcpStream) -> Result<(String, String), Reply> {
    let started = Instant::now();
    stream.set_nonblocking(false).map_err(|_| Reply::text(400, "unreadable connection\n"))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = STATUS_READ_TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Reply::text(408, "no whole request head in time\n"));
        }
        let _ = stream.set_read_timeout(Some(left));
        let read = match stream.read(&mut chunk) {
            Ok(0) => return Err(Reply::text(400, "the connection closed mid-request\n")),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Reply::text(408, "no whole request head in time\n")),
        };
        head.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; STATUS_REQUEST_HEADERS_COUNT_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default().to_string();
                return Ok((method, request.path.unwrap_or_default().to_string()));
            }
            Ok(httparse::Status::Partial) if head.len() < STATUS_REQUEST_BYTES_MAX => {}
            Ok(httparse::Status::Partial) => return Err(Reply::text(413, "the request head is too large\n")),
            Err(httparse::Error::TooManyHeaders) => return Err(Reply::text(431, "too many headers\n")),
            Err(error) => return Err(Reply::text(400, format!("not an HTTP request: {error}\n"))),
        }
    }
}

fn route(method: &str, path: &str, board: &StatusBoard, metrics: &Metrics) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET and HEAD are served\n");
    }
    let path = path.split('?').next().unwrap_or_default();
    let (status, age) = board.read();
    match path {
        "/metrics" => {
            let gauges = Gauges {
                role: &status.role,
                term: status.term,
                leader_id: status.leader_id,
                lease_held: status.lease_held,
                commit_index: status.commit_index,
                applied_index: status.applied_index,
                log_entries: status.log_entries,
                log_bytes: status.log_bytes,
                uptime_seconds: status.uptime_seconds,
            };
            Reply { code: 200, content_type: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render(&gauges) }
        }
        "/health" => match unhealthy_reason(&status, age) {
            None => Reply::json(200, "{\"health\":\"true\"}\n".to_string()),
            Some(reason) => Reply::json(503, format!("{}\n", serde_json::json!({"health": "false", "reason": reason}))),
        },
        "/status" => match serde_json::to_string(&status) {
            Ok(json) => Reply::json(200, json + "\n"),
            Err(error) => Reply::text(500, format!("cannot encode the status: {error}\n")),
        },
        _ => Reply::text(404, "not found; try /metrics, /health or /status\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn healthy_follower() -> proto::NodeStatus {
        proto::NodeStatus { role: "follower".into(), term: 3, leader_id: 1, lease_held: true, ..Default::default() }
    }

    #[test]
    fn a_loop_that_stopped_publishing_is_unhealthy() {
        assert_eq!(unhealthy_reason(&healthy_follower(), Duration::ZERO), None);
        let stale = unhealthy_reason(&healthy_follower(), STATUS_STALE_AFTER * 2).unwrap();
        assert!(stale.contains("event loop"), "{stale}");
    }

    fn get(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn the_server_answers_its_paths_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let board = Arc::new(StatusBoard::new(healthy_follower()));
        let server = StatusServer::start(listener, board.clone(), Arc::new(Metrics::new())).unwrap();
        let health = get(address, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("{\"health\":\"true\"}\n"), "{health}");
        board.publish(proto::NodeStatus { lease_held: false, ..healthy_follower() });
        let sick = get(address, b"GET /health HTTP/1.1\r\n\r\n");
        assert!(sick.starts_with("HTTP/1.1 503 ") && sick.contains("\"health\":\"false\""), "{sick}");
        let status = get(address, b"GET /status HTTP/1.0\r\n\r\n");
        assert!(status.contains("\"role\":\"follower\""), "{status}");
        let metrics = get(address, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(metrics.contains("# TYPE rasputin_requests_total counter"), "{metrics}");
        assert!(get(address, b"POST /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(get(address, b"GET /nowhere HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(address, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        // Exactly the limit and no end of head, so that the server has read
        // everything it was sent when it answers and closes.
        let start = b"GET /health HTTP/1.1\r\nX: ".as_slice();
        let huge = [start, &vec![b'a'; STATUS_REQUEST_BYTES_MAX - start.len()]].concat();
        assert!(get(address, &huge).starts_with("HTTP/1.1 413 "));
        drop(server);
    }
}
