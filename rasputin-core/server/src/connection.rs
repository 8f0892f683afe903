//! One TCP connection of the daemon: buffered, framed, non-blocking.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;

use rasputin_consensus::NodeId;
use rasputin_kv::wire::{self, WireError};

use crate::metrics::{Metrics, Port, Traffic};

/// Bytes read from a socket in one call: the size of the daemon's scratch buffer.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// Bytes one connection may read in one turn of the event loop. A fast
/// sender then waits for the next turn, and timers and other connections
/// (heartbeats above all) are served in between.
pub const READ_BYTES_PER_TURN_MAX: usize = 1 << 20;
/// Frames one connection may yield in one turn of the event loop.
pub const FRAMES_PER_TURN_MAX: usize = 256;
/// Unsent bytes a client connection may hold before it is closed as too slow.
pub const CLIENT_OUTGOING_BYTES_MAX: usize = 32 << 20;
/// Unsent bytes a peer connection may hold before messages to it are
/// dropped: appends in flight (APPENDS_IN_FLIGHT_MAX of about
/// APPEND_BYTES_MAX) and a few snapshot chunks fit many times over.
pub const PEER_OUTGOING_BYTES_MAX: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Accepted on the client port.
    Client,
    /// Accepted on the peer port; carries messages from `remote` once greeted.
    PeerInbound,
    /// Opened by this node to send to peer `NodeId`.
    PeerOutbound(NodeId),
}

pub struct Connection {
    pub stream: TcpStream,
    pub kind: Kind,
    pub address: SocketAddr,
    /// The handshake is complete.
    pub greeted: bool,
    /// For an outbound peer connection: the peer said it hosts many ranges
    /// (`wire::FEATURE_RANGES`), so it takes every range's messages.
    pub hosts_ranges: bool,
    /// For peer connections: the node at the other end.
    pub remote: Option<NodeId>,
    pub opened_at: Instant,
    incoming: BytesMut,
    outgoing: BytesMut,
    /// Where this connection counts its bytes and frames, by port.
    metrics: Arc<Metrics>,
}

enum ReadOutcome {
    Data(usize),
    Drained,
    Closed,
}

/// What reading from a connection found.
pub enum Received {
    /// Everything available was read.
    Frames(Vec<Bytes>),
    /// The turn's budget ran out with more to read: read again next turn.
    More(Vec<Bytes>),
    /// The other side closed the connection, or broke the framing.
    Closed(Vec<Bytes>, Option<WireError>),
}

impl Connection {
    pub fn new(stream: TcpStream, kind: Kind, address: SocketAddr, metrics: Arc<Metrics>) -> Connection {
        metrics.traffic(port_of(kind)).connections_open.fetch_add(1, Ordering::Relaxed);
        let remote = match kind {
            Kind::PeerOutbound(peer) => Some(peer),
            _ => None,
        };
        Connection {
            stream,
            kind,
            address,
            greeted: false,
            hosts_ranges: false,
            remote,
            opened_at: Instant::now(),
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
            metrics,
        }
    }

    fn traffic(&self) -> &Traffic {
        self.metrics.traffic(port_of(self.kind))
    }

    /// Until the handshake completes, the other side is a stranger and gets
    /// room for a Hello only.
    fn frame_bytes_max(&self) -> usize {
        match (self.greeted, self.kind) {
            (false, _) => wire::HELLO_FRAME_BYTES_MAX,
            (true, Kind::Client) => wire::CLIENT_FRAME_BYTES_MAX,
            (true, Kind::PeerInbound | Kind::PeerOutbound(_)) => wire::PEER_FRAME_BYTES_MAX,
        }
    }

    fn outgoing_bytes_max(&self) -> usize {
        match self.kind {
            Kind::Client => CLIENT_OUTGOING_BYTES_MAX,
            Kind::PeerInbound | Kind::PeerOutbound(_) => PEER_OUTGOING_BYTES_MAX,
        }
    }

    /// Reads what is available, up to this turn's budget, and splits it into
    /// frames. Reads land in `scratch`, shared by all connections, and only
    /// the bytes read are copied: growing `incoming` by a whole chunk per
    /// read would zero 64 KiB for every small request. mio is
    /// edge-triggered, so a connection that returns `More` must be read
    /// again without waiting for another event.
    ///
    /// Only the first frame is split off before the handshake completes: the
    /// caller must handle it, which raises the frame limit, before asking for
    /// more.
    pub fn receive(&mut self, scratch: &mut [u8]) -> Received {
        let received = self.receive_uncounted(scratch);
        let frames = match &received {
            Received::Frames(frames) | Received::More(frames) | Received::Closed(frames, _) => frames.len(),
        };
        self.traffic().frames_received.fetch_add(frames as u64, Ordering::Relaxed);
        received
    }

    fn receive_uncounted(&mut self, scratch: &mut [u8]) -> Received {
        let mut frames = Vec::new();
        let mut bytes_read = 0;
        loop {
            if let Err(error) = self.split_frames(&mut frames) {
                return Received::Closed(frames, Some(error));
            }
            if !self.greeted && !frames.is_empty() {
                return Received::More(frames);
            }
            if frames.len() >= FRAMES_PER_TURN_MAX || bytes_read >= READ_BYTES_PER_TURN_MAX {
                return Received::More(frames);
            }
            let outcome = match self.stream.read(scratch) {
                Ok(0) => ReadOutcome::Closed,
                Ok(read) => ReadOutcome::Data(read),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => ReadOutcome::Drained,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => ReadOutcome::Data(0),
                Err(_) => ReadOutcome::Closed,
            };
            match outcome {
                ReadOutcome::Data(read) => {
                    bytes_read += read;
                    self.traffic().bytes_received.fetch_add(read as u64, Ordering::Relaxed);
                    self.incoming.extend_from_slice(&scratch[..read]);
                }
                ReadOutcome::Drained | ReadOutcome::Closed => {
                    if let Err(error) = self.split_frames(&mut frames) {
                        return Received::Closed(frames, Some(error));
                    }
                    if frames.len() >= FRAMES_PER_TURN_MAX {
                        // More whole frames wait in `incoming` for the next turn.
                        return Received::More(frames);
                    }
                    return match outcome {
                        ReadOutcome::Closed => Received::Closed(frames, None),
                        _ => Received::Frames(frames),
                    };
                }
            }
        }
    }

    /// Splits whole frames off `incoming`, up to the turn's limit, and one
    /// only before the handshake.
    fn split_frames(&mut self, frames: &mut Vec<Bytes>) -> Result<(), WireError> {
        let frame_bytes_max = self.frame_bytes_max();
        while (self.greeted || frames.is_empty()) && frames.len() < FRAMES_PER_TURN_MAX {
            match wire::take_frame(&mut self.incoming, frame_bytes_max)? {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        Ok(())
    }

    /// Queues a frame. Returns false if the connection's outgoing limit would be exceeded.
    pub fn queue(&mut self, message: &impl prost::Message) -> bool {
        if self.outgoing.len() + message.encoded_len() > self.outgoing_bytes_max() {
            return false;
        }
        wire::encode_frame(message, &mut self.outgoing);
        self.traffic().frames_sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Writes as much as the socket takes. An error means the connection is dead.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.outgoing.is_empty() {
            match self.stream.write(&self.outgoing) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    let _ = self.outgoing.split_to(written);
                    self.traffic().bytes_sent.fetch_add(written as u64, Ordering::Relaxed);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Bytes queued and not yet written to the socket.
    pub fn outgoing_bytes(&self) -> usize {
        self.outgoing.len()
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rasputin_kv::wire::proto;

    /// A greeted connection over a real loopback socket, and the peer's end.
    fn connected_pair() -> (Connection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, address) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut connection =
            Connection::new(TcpStream::from_std(accepted), Kind::PeerInbound, address, Arc::new(Metrics::new()));
        connection.greeted = true;
        (connection, sender)
    }

    /// Issue 13, item 7: a fast sender gets a bounded share of each turn.
    #[test]
    fn one_turn_yields_a_bounded_number_of_frames() {
        let (mut connection, mut sender) = connected_pair();
        let mut bytes = BytesMut::new();
        let frames_sent = 3 * FRAMES_PER_TURN_MAX + 10;
        for round in 0..frames_sent {
            wire::encode_frame(&proto::HeartbeatResponse { term: 1, round: round as u64 }, &mut bytes);
        }
        sender.write_all(&bytes).unwrap();
        drop(sender);
        let mut scratch = vec![0; READ_CHUNK_BYTES];
        let mut received = 0;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "only {received} of {frames_sent} frames arrived");
            match connection.receive(&mut scratch) {
                Received::More(frames) | Received::Frames(frames) => {
                    assert!(frames.len() <= FRAMES_PER_TURN_MAX, "{} frames in one turn", frames.len());
                    received += frames.len();
                }
                Received::Closed(frames, error) => {
                    assert!(error.is_none(), "{error:?}");
                    received += frames.len();
                    break;
                }
            }
        }
        assert_eq!(received, frames_sent);
        let traffic = connection.traffic();
        assert_eq!(traffic.frames_received.load(Ordering::Relaxed), frames_sent as u64);
        assert_eq!(traffic.bytes_received.load(Ordering::Relaxed), bytes.len() as u64);
        assert_eq!(traffic.connections_open.load(Ordering::Relaxed), 1);
    }

    /// Before the handshake, a stranger's frame may be a few KiB at most.
    #[test]
    fn before_the_handshake_a_large_declared_frame_closes_the_connection() {
        let (mut connection, mut sender) = connected_pair();
        connection.greeted = false;
        sender.write_all(&(100_000u32).to_be_bytes()).unwrap();
        let mut scratch = vec![0; READ_CHUNK_BYTES];
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the oversized hello was never refused");
            if let Received::Closed(_, Some(error)) = connection.receive(&mut scratch) {
                assert!(matches!(error, WireError::FrameTooLarge { max: wire::HELLO_FRAME_BYTES_MAX, .. }));
                break;
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.traffic().connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn port_of(kind: Kind) -> Port {
    match kind {
        Kind::Client => Port::Client,
        Kind::PeerInbound | Kind::PeerOutbound(_) => Port::Peer,
    }
}
