//! One TCP connection of the daemon: buffered, framed, non-blocking.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;

use crate::consensus::NodeId;
use crate::wire::{self, WireError};

/// Bytes read from a socket in one call: the size of the daemon's scratch buffer.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// Unsent bytes a client connection may hold before it is closed as too slow.
pub const CLIENT_OUTGOING_BYTES_MAX: usize = 32 << 20;
/// Unsent bytes a peer connection may hold before messages to it are dropped.
pub const PEER_OUTGOING_BYTES_MAX: usize = 1 << 30;

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
    /// For peer connections: the node at the other end.
    pub remote: Option<NodeId>,
    incoming: BytesMut,
    outgoing: BytesMut,
}

enum ReadOutcome {
    Data(usize),
    Drained,
    Closed,
}

/// What reading from a connection found.
pub enum Received {
    Frames(Vec<Bytes>),
    /// The other side closed the connection, or broke the framing.
    Closed(Vec<Bytes>, Option<WireError>),
}

impl Connection {
    pub fn new(stream: TcpStream, kind: Kind, address: SocketAddr) -> Connection {
        let remote = match kind {
            Kind::PeerOutbound(peer) => Some(peer),
            _ => None,
        };
        Connection {
            stream,
            kind,
            address,
            greeted: false,
            remote,
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
        }
    }

    fn frame_bytes_max(&self) -> usize {
        match self.kind {
            Kind::Client => wire::CLIENT_FRAME_BYTES_MAX,
            Kind::PeerInbound | Kind::PeerOutbound(_) => wire::PEER_FRAME_BYTES_MAX,
        }
    }

    fn outgoing_bytes_max(&self) -> usize {
        match self.kind {
            Kind::Client => CLIENT_OUTGOING_BYTES_MAX,
            Kind::PeerInbound | Kind::PeerOutbound(_) => PEER_OUTGOING_BYTES_MAX,
        }
    }

    /// Reads everything available (mio is edge-triggered) and splits it into
    /// frames. Reads land in `scratch`, shared by all connections, and only
    /// the bytes read are copied: growing `incoming` by a whole chunk per
    /// read would zero 64 KiB for every small request.
    pub fn receive(&mut self, scratch: &mut [u8]) -> Received {
        let frame_bytes_max = self.frame_bytes_max();
        let mut frames = Vec::new();
        loop {
            let outcome = match self.stream.read(scratch) {
                Ok(0) => ReadOutcome::Closed,
                Ok(read) => ReadOutcome::Data(read),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => ReadOutcome::Drained,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => ReadOutcome::Data(0),
                Err(_) => ReadOutcome::Closed,
            };
            let read = if let ReadOutcome::Data(read) = outcome { read } else { 0 };
            self.incoming.extend_from_slice(&scratch[..read]);
            loop {
                match wire::take_frame(&mut self.incoming, frame_bytes_max) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => return Received::Closed(frames, Some(error)),
                }
            }
            match outcome {
                ReadOutcome::Closed => return Received::Closed(frames, None),
                ReadOutcome::Drained => return Received::Frames(frames),
                ReadOutcome::Data(_) => {}
            }
        }
    }

    /// Queues a frame. Returns false if the connection's outgoing limit would be exceeded.
    pub fn queue(&mut self, message: &impl prost::Message) -> bool {
        if self.outgoing.len() + message.encoded_len() > self.outgoing_bytes_max() {
            return false;
        }
        wire::encode_frame(message, &mut self.outgoing);
        true
    }

    /// Writes as much as the socket takes. An error means the connection is dead.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.outgoing.is_empty() {
            match self.stream.write(&self.outgoing) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    let _ = self.outgoing.split_to(written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }
}
