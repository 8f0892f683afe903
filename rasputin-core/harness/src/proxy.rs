//! A fault-injecting TCP proxy, for when the harness cannot use a firewall.
//!
//! Each node is advertised at a proxy address; the proxy forwards to the
//! node's own address. A peer connection's source address names the node it
//! comes from (the daemon connects from its bind address), so each directed
//! link can be cut, stalled or delayed on its own. Client connections pass
//! through untouched.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cluster::NodeAddresses;
use super::network::{Link, LinkFault};
use super::HarnessError;

/// Open proxied connections at once, over all listeners; more are closed on arrival.
const CONNECTIONS_COUNT_MAX: usize = 512;
/// Chunks read but not yet written, per direction of a connection.
const CHUNKS_IN_FLIGHT_MAX: usize = 64;
const CHUNK_BYTES_MAX: usize = 256 * 1024;
/// How often idle threads look at the stop flag and the link's fault.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Shared {
    stop: AtomicBool,
    faults: Mutex<HashMap<Link, LinkFault>>,
    /// Node `index`'s own IP, to name the node a peer connection comes from.
    own_ips: Vec<Ipv4Addr>,
    connections_open: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn fault(&self, link: Option<Link>) -> Option<LinkFault> {
        link.and_then(|link| lock(&self.faults).get(&link).copied())
    }

    fn spawn(&self, work: impl FnOnce() + Send + 'static) {
        let mut threads = lock(&self.threads);
        threads.retain(|thread| !thread.is_finished());
        threads.push(std::thread::spawn(work));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Proxy {
    shared: Arc<Shared>,
}

/// Which traffic a listener carries: a node's peer port (faultable) or its client port.
#[derive(Clone, Copy)]
enum Port {
    Peer { to: usize },
    Client,
}

impl Proxy {
    pub fn start(addresses: &[NodeAddresses]) -> Result<Proxy, HarnessError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            faults: Mutex::new(HashMap::new()),
            own_ips: addresses.iter().map(|node| node.own_ip).collect(),
            connections_open: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        for (index, node) in addresses.iter().enumerate() {
            for (port, number) in [(Port::Peer { to: index }, node.peer_port), (Port::Client, node.cli_port)] {
                let listen_at = SocketAddr::new(IpAddr::V4(node.advertised_ip), number);
                let target = SocketAddr::new(IpAddr::V4(node.own_ip), number);
                let listener =
                    TcpListener::bind(listen_at).map_err(|source| HarnessError::io("start the proxy", source))?;
                listener.set_nonblocking(true).map_err(|source| HarnessError::io("start the proxy", source))?;
                let worker = shared.clone();
                shared.spawn(move || accept_loop(&worker, &listener, port, target));
            }
        }
        Ok(Proxy { shared })
    }

    pub fn set_faults(&mut self, links: &[Link], fault: LinkFault) {
        let mut faults = lock(&self.shared.faults);
        for link in links {
            faults.insert(*link, fault);
        }
    }

    pub fn clear_faults(&mut self) {
        lock(&self.shared.faults).clear();
    }

    /// Stops every thread and closes every connection, then waits for them.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        loop {
            let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.shared.threads));
            if threads.is_empty() {
                break;
            }
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, port: Port, target: SocketAddr) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, source)) => accept(shared, stream, source, port, target),
            Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL_INTERVAL),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

fn accept(shared: &Arc<Shared>, inbound: TcpStream, source: SocketAddr, port: Port, target: SocketAddr) {
    let link = match port {
        Port::Peer { to } => {
            let from = shared.own_ips.iter().position(|ip| IpAddr::V4(*ip) == source.ip());
            from.map(|from| (from, to))
        }
        Port::Client => None,
    };
    if shared.fault(link) == Some(LinkFault::Cut) {
        return; // dropping the stream closes it: a cut link refuses connections
    }
    if shared.connections_open.load(Ordering::SeqCst) >= CONNECTIONS_COUNT_MAX {
        return;
    }
    let Ok(outbound) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else { return };
    let (Ok(inbound_reader), Ok(outbound_reader)) = (inbound.try_clone(), outbound.try_clone()) else { return };
    let _ = inbound.set_nonblocking(false);
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    shared.connections_open.fetch_add(2, Ordering::SeqCst);
    let reverse = link.map(|(from, to)| (to, from));
    pump(shared, inbound_reader, outbound, link);
    pump(shared, outbound_reader, inbound, reverse);
}

/// Moves bytes from `source` to `destination` under `link`'s faults: a reader
/// thread stamps each chunk with its due time, a writer thread delivers it then.
fn pump(shared: &Arc<Shared>, source: TcpStream, destination: TcpStream, link: Option<Link>) {
    let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT_MAX);
    let reader_shared = shared.clone();
    shared.spawn(move || {
        read_chunks(&reader_shared, &source, link, &sender);
        let _ = source.shutdown(Shutdown::Both);
    });
    let writer_shared = shared.clone();
    shared.spawn(move || {
        write_chunks(&writer_shared, &destination, &receiver);
        let _ = destination.shutdown(Shutdown::Both);
        writer_shared.connections_open.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Waits while `link` is stalled; then the delay to apply, or None if the
/// link is cut or the proxy is stopping.
fn wait_while_stalled(shared: &Shared, link: Option<Link>) -> Option<Duration> {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        match shared.fault(link) {
            Some(LinkFault::Cut) => return None,
            Some(LinkFault::Stall) => std::thread::sleep(POLL_INTERVAL),
            Some(LinkFault::Delay(delay)) => return Some(delay),
            None => return Some(Duration::ZERO),
        }
    }
}

fn read_chunks(shared: &Shared, mut source: &TcpStream, link: Option<Link>, sender: &SyncSender<(Instant, Vec<u8>)>) {
    if source.set_read_timeout(Some(POLL_INTERVAL)).is_err() {
        return;
    }
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
    while wait_while_stalled(shared, link).is_some() {
        match source.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => {
                // Looked at again after the read, so that a fault set before
                // bytes were sent applies to them, however the read raced it.
                let Some(delay) = wait_while_stalled(shared, link) else { return };
                if sender.send((Instant::now() + delay, buffer[..count].to_vec())).is_err() {
                    return;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn write_chunks(shared: &Shared, mut destination: &TcpStream, receiver: &Receiver<(Instant, Vec<u8>)>) {
    while let Ok((due, chunk)) = receiver.recv() {
        while Instant::now() < due {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(POLL_INTERVAL.min(due.saturating_duration_since(Instant::now())));
        }
        if destination.write_all(&chunk).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan_addresses;

    const DEADLINE: Duration = Duration::from_secs(5);

    /// Node 0's "daemon": echoes what arrives on its peer port, for the two
    /// connections the test gets through the proxy.
    fn echo_server(at: SocketAddr) -> JoinHandle<()> {
        let listener = TcpListener::bind(at).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 1024];
                    while let Ok(count) = stream.read(&mut buffer) {
                        if count == 0 || stream.write_all(&buffer[..count]).is_err() {
                            break;
                        }
                    }
                });
            }
        })
    }

    /// Connects from node 1's own address to node 0's advertised (proxy) one.
    fn connect_as_node_one(addresses: &[NodeAddresses]) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(IpAddr::V4(addresses[1].own_ip), 0).into()).unwrap();
        socket.connect(&addresses[0].peer().into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        stream
    }

    /// Sends `text` and polls for its echo until the deadline; None if it never came.
    fn round_trip(stream: &mut TcpStream, text: &[u8], deadline: Instant) -> Option<Vec<u8>> {
        stream.write_all(text).ok()?;
        let mut received = Vec::new();
        let mut buffer = [0u8; 64];
        while received.len() < text.len() && Instant::now() < deadline {
            match stream.read(&mut buffer) {
                Ok(0) => return None,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        (received.len() == text.len()).then_some(received)
    }

    #[test]
    fn links_can_be_cut_stalled_and_delayed_one_direction_at_a_time() {
        let addresses = plan_addresses(2, true).unwrap();
        let server = echo_server(SocketAddr::new(IpAddr::V4(addresses[0].own_ip), addresses[0].peer_port));
        let mut proxy = Proxy::start(&addresses).unwrap();
        let mut stream = connect_as_node_one(&addresses);
        assert_eq!(round_trip(&mut stream, b"hello", Instant::now() + DEADLINE).as_deref(), Some(&b"hello"[..]));

        // A stall holds the bytes, without closing, until it is lifted.
        proxy.set_faults(&[(1, 0)], LinkFault::Stall);
        assert_eq!(round_trip(&mut stream, b"held", Instant::now() + Duration::from_millis(300)), None);
        proxy.clear_faults();
        let mut late = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while late.len() < 4 && Instant::now() < deadline {
            let mut buffer = [0u8; 16];
            if let Ok(count) = stream.read(&mut buffer) {
                late.extend_from_slice(&buffer[..count]);
            }
        }
        assert_eq!(late, b"held");

        // A delay on the reverse link alone holds back only the echo.
        proxy.set_faults(&[(0, 1)], LinkFault::Delay(Duration::from_millis(300)));
        let sent_at = Instant::now();
        assert!(round_trip(&mut stream, b"slow", sent_at + DEADLINE).is_some());
        assert!(sent_at.elapsed() >= Duration::from_millis(300), "the echo came back early");
        proxy.clear_faults();

        // A cut closes the connection and refuses new ones until healed.
        proxy.set_faults(&[(1, 0)], LinkFault::Cut);
        assert_eq!(round_trip(&mut stream, b"lost", Instant::now() + DEADLINE), None);
        let mut refused = connect_as_node_one(&addresses);
        assert_eq!(round_trip(&mut refused, b"lost", Instant::now() + DEADLINE), None);
        proxy.clear_faults();
        let mut healed = connect_as_node_one(&addresses);
        assert_eq!(round_trip(&mut healed, b"back", Instant::now() + DEADLINE).as_deref(), Some(&b"back"[..]));

        proxy.stop();
        drop((stream, refused, healed));
        server.join().unwrap();
    }
}
