//! The daemon's event loop. One thread: it polls both ports, feeds inputs to
//! the consensus node with the monotonic clock, and carries out each Ready
//! in the order the core's contract sets (see `consensus::ready`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rocksdb::WriteBatch;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::config::{Flags, Membership};
use super::connection::{Connection, Kind, Received, READ_CHUNK_BYTES};
use super::storage::{Storage, StorageError};
use crate::consensus::{
    ClientRequest, Config, Envelope, Input, LogIndex, MessageError, Nanos, Node, NodeId, ReadReady, Ready, Rejection,
    Role, Snapshot, StartError, Term,
};
use crate::state_machine::Response;
use crate::wire::{self, proto, ErrorCode, PROTOCOL_VERSION};

const PEER_LISTENER: Token = Token(0);
const CLIENT_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_CONNECTION: usize = 16;
/// Client requests waiting for their entry to apply or their read to be confirmed.
const CLIENT_REQUESTS_WAITING_COUNT_MAX: usize = 100_000;
/// Open client connections; further ones are refused.
const CLIENT_CONNECTIONS_COUNT_MAX: usize = 10_000;
/// How often a lost peer connection is retried.
const PEER_RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
/// Events handled per poll.
const EVENTS_PER_POLL_MAX: usize = 1024;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("invalid flags: {0}")]
    Flags(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {address}: {source}; is the port in use?")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("event loop failed: {0}")]
    Io(#[from] std::io::Error),
}

impl DaemonError {
    /// Exit code: 2 for bad invocations, 1 for failures while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Flags(_) | DaemonError::Start(StartError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// A client request waiting for its answer: which connection, which request id.
type Waiter = (Token, u64);

struct Daemon {
    membership: Membership,
    client_address: String,
    snapshot_every_entries: u64,
    node: Node,
    storage: Storage,
    started: Instant,
    poll: Poll,
    connections: BTreeMap<Token, Connection>,
    next_token: usize,
    outbound: BTreeMap<NodeId, Token>,
    reconnect_at: BTreeMap<NodeId, Instant>,
    peer_client_addresses: BTreeMap<NodeId, String>,
    waiting: HashMap<(u64, u64), Vec<Waiter>>,
    reads_waiting: Vec<ReadReady>,
    batch: WriteBatch,
    batch_dirty: bool,
    persisted_position: Option<(LogIndex, Term)>,
    held_messages: Vec<Envelope>,
    deadline: Nanos,
    shutting_down: bool,
    /// Client requests read in this poll, stepped together by `propose`;
    /// bounded by CLIENT_REQUESTS_WAITING_COUNT_MAX through `waiting`.
    proposals: Vec<ClientRequest>,
    /// Where every connection's reads land before their bytes are framed.
    read_scratch: Vec<u8>,
    /// Outgoing peer connections leave from this address, so that peers (and
    /// firewall rules) see the same address the node listens on.
    bind: IpAddr,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(flags: Flags) -> Result<(), DaemonError> {
    let membership = flags.membership().map_err(DaemonError::Flags)?;
    let mut storage = Storage::open(&flags.storage_dir)?;
    storage.claim_identity(membership.node_id, membership.cluster_id)?;
    let members = (1..=membership.peers.len() as u64).collect();
    let mut config = Config::new(membership.node_id, members);
    if cfg!(feature = "fault-stale-reads") {
        config.faults.reads_ignore_lease = true;
        warn!("built with the test-only feature fault-stale-reads: reads ignore the lease and may be stale; never run this build for real");
    }
    let started = Instant::now();
    let recovered = storage.recover()?;
    info!(
        node = membership.node_id,
        term = recovered.hard_state.term,
        entries = recovered.entries.len(),
        snapshot = recovered.snapshot.as_ref().map_or(0, |snapshot| snapshot.last_index),
        applied = storage.applied().0,
        "recovered from {}",
        flags.storage_dir.display()
    );
    let seed = membership.node_id ^ std::process::id() as u64 ^ started.elapsed().as_nanos() as u64;
    let node = Node::new(config, recovered, seed, 0)?;
    let poll = Poll::new()?;
    let mut peer_listener = listen(SocketAddr::new(flags.bind, flags.peer_port))?;
    let mut client_listener = listen(SocketAddr::new(flags.bind, flags.cli_port))?;
    poll.registry().register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)?;
    poll.registry().register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)?;
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    let advertise = flags.advertise.unwrap_or(flags.bind);
    let mut daemon = Daemon {
        client_address: SocketAddr::new(advertise, flags.cli_port).to_string(),
        bind: flags.bind,
        read_scratch: vec![0; READ_CHUNK_BYTES],
        proposals: Vec::new(),
        snapshot_every_entries: flags.snapshot_every_entries,
        node,
        storage,
        started,
        poll,
        connections: BTreeMap::new(),
        next_token: FIRST_CONNECTION,
        outbound: BTreeMap::new(),
        reconnect_at: BTreeMap::new(),
        peer_client_addresses: BTreeMap::new(),
        waiting: HashMap::new(),
        reads_waiting: Vec::new(),
        batch: WriteBatch::default(),
        batch_dirty: false,
        persisted_position: None,
        held_messages: Vec::new(),
        deadline: 0,
        shutting_down: false,
        membership,
    };
    info!(
        node = daemon.membership.node_id,
        peers = ?daemon.membership.peers,
        client = %daemon.client_address,
        "rasputind listening"
    );
    daemon.event_loop(&peer_listener, &client_listener, &mut signals)
}

/// Starts a non-blocking connect from `source` (any port), unless `source` is
/// unspecified, when the kernel picks the source address as usual.
fn connect_from(source: IpAddr, address: SocketAddr) -> std::io::Result<TcpStream> {
    if source.is_unspecified() {
        return TcpStream::connect(address);
    }
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&address.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from_std(socket.into()))
}

fn listen(address: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(address).map_err(|source| DaemonError::Listen { address, source })
}

impl Daemon {
    fn now(&self) -> Nanos {
        self.started.elapsed().as_nanos() as Nanos
    }

    fn event_loop(
        &mut self,
        peer_listener: &TcpListener,
        client_listener: &TcpListener,
        signals: &mut Signals,
    ) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL_MAX);
        self.step(Input::Tick)?;
        self.flush_persist()?;
        while !self.shutting_down {
            self.connect_peers();
            self.flush_connections();
            let wait_ns = self.deadline.saturating_sub(self.now());
            let wait = Duration::from_nanos(wait_ns).min(PEER_RECONNECT_INTERVAL);
            if let Err(error) = self.poll.poll(&mut events, Some(wait)) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error.into());
                }
            }
            for event in events.iter() {
                match event.token() {
                    PEER_LISTENER => self.accept(peer_listener, Kind::PeerInbound),
                    CLIENT_LISTENER => self.accept(client_listener, Kind::Client),
                    SIGNALS => self.on_signals(signals),
                    token => self.on_connection_event(token, event.is_readable(), event.is_writable())?,
                }
            }
            self.propose()?;
            if self.now() >= self.deadline {
                self.step(Input::Tick)?;
            }
            // Appends to followers (and answers) may leave before this node's
            // own sync: followers then sync while the leader does. Messages
            // that must wait for the sync are held apart until it is done.
            self.flush_connections();
            self.flush_persist()?;
        }
        self.flush_persist()?;
        self.flush_connections();
        info!(node = self.membership.node_id, "shut down cleanly");
        Ok(())
    }

    fn on_signals(&mut self, signals: &mut Signals) {
        for signal in signals.pending() {
            info!(signal, "received a termination signal; finishing writes and stopping");
            self.shutting_down = true;
        }
    }

    // ----- connections -----

    fn register(&mut self, mut stream: TcpStream, kind: Kind, address: SocketAddr) -> Option<Token> {
        let token = Token(self.next_token);
        self.next_token += 1;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(error) = self.poll.registry().register(&mut stream, token, interest) {
            warn!(%address, %error, "cannot watch a connection; dropping it");
            return None;
        }
        let _ = stream.set_nodelay(true);
        self.connections.insert(token, Connection::new(stream, kind, address));
        Some(token)
    }

    fn accept(&mut self, listener: &TcpListener, kind: Kind) {
        loop {
            match listener.accept() {
                Ok((stream, address)) => {
                    let clients =
                        self.connections.values().filter(|connection| connection.kind == Kind::Client).count();
                    if kind == Kind::Client && clients >= CLIENT_CONNECTIONS_COUNT_MAX {
                        warn!(%address, "refusing a client connection: {CLIENT_CONNECTIONS_COUNT_MAX} are open");
                        continue;
                    }
                    debug!(%address, ?kind, "accepted a connection");
                    self.register(stream, kind, address);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    warn!(%error, "accept failed");
                    return;
                }
            }
        }
    }

    fn connect_peers(&mut self) {
        let now = Instant::now();
        for (index, address) in self.membership.peers.clone().into_iter().enumerate() {
            let peer = index as NodeId + 1;
            if peer == self.membership.node_id || self.outbound.contains_key(&peer) {
                continue;
            }
            if self.reconnect_at.get(&peer).is_some_and(|at| now < *at) {
                continue;
            }
            self.reconnect_at.insert(peer, now + PEER_RECONNECT_INTERVAL);
            let stream = match connect_from(self.bind, address) {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(%address, %error, "cannot connect to a peer; will retry");
                    continue;
                }
            };
            let Some(token) = self.register(stream, Kind::PeerOutbound(peer), address) else { continue };
            let hello = proto::Hello {
                protocol_version: PROTOCOL_VERSION,
                role: proto::hello::Role::Peer as i32,
                node_id: self.membership.node_id,
                cluster_id: self.membership.cluster_id,
                client_address: self.client_address.clone(),
            };
            self.connections.get_mut(&token).expect("just registered").queue(&hello);
            self.outbound.insert(peer, token);
        }
    }

    fn close(&mut self, token: Token, reason: &str) {
        let Some(mut connection) = self.connections.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut connection.stream);
        if let Kind::PeerOutbound(peer) = connection.kind {
            self.outbound.remove(&peer);
        }
        debug!(address = %connection.address, ?connection.kind, reason, "closed a connection");
    }

    fn close_for_bad_input(&mut self, token: Token, error: &dyn std::fmt::Display) {
        if let Some(connection) = self.connections.get(&token) {
            warn!(address = %connection.address, kind = ?connection.kind, %error, "closing a connection that sent bad input");
        }
        self.close(token, "bad input");
    }

    /// Closes the connections on which `peer` sent a message consensus refused.
    fn close_peer_for_bad_input(&mut self, peer: NodeId, error: &MessageError) {
        let tokens: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.kind == Kind::PeerInbound && connection.remote == Some(peer))
            .map(|(&token, _)| token)
            .collect();
        for token in tokens {
            self.close_for_bad_input(token, error);
        }
    }

    fn flush_connections(&mut self) {
        let dead: Vec<Token> = self
            .connections
            .iter_mut()
            .filter(|(_, connection)| connection.has_outgoing())
            .filter_map(|(token, connection)| connection.flush().err().map(|_| *token))
            .collect();
        for token in dead {
            self.close(token, "write failed");
        }
    }

    fn on_connection_event(&mut self, token: Token, readable: bool, writable: bool) -> Result<(), DaemonError> {
        if writable {
            if let Some(connection) = self.connections.get_mut(&token) {
                if connection.flush().is_err() {
                    self.close(token, "write failed");
                    return Ok(());
                }
            }
        }
        if !readable {
            return Ok(());
        }
        let Some(connection) = self.connections.get_mut(&token) else { return Ok(()) };
        let (frames, closed) = match connection.receive(&mut self.read_scratch) {
            Received::Frames(frames) => (frames, None),
            Received::Closed(frames, error) => (frames, Some(error)),
        };
        for frame in frames {
            if !self.connections.contains_key(&token) {
                return Ok(());
            }
            self.on_frame(token, frame)?;
        }
        match closed {
            Some(Some(error)) => self.close_for_bad_input(token, &error),
            Some(None) => self.close(token, "closed by the other side"),
            None => {}
        }
        Ok(())
    }

    fn on_frame(&mut self, token: Token, frame: bytes::Bytes) -> Result<(), DaemonError> {
        let connection = self.connections.get(&token).expect("checked by the caller");
        let (kind, greeted) = (connection.kind, connection.greeted);
        match (kind, greeted) {
            (Kind::PeerOutbound(_), false) => self.on_hello_reply(token, frame),
            (Kind::PeerOutbound(_), true) => {
                self.close_for_bad_input(token, &"a peer sent data on a connection used only for sending");
                Ok(())
            }
            (_, false) => self.on_hello(token, kind, frame),
            (Kind::PeerInbound, true) => self.on_peer_frame(token, frame),
            (Kind::Client, true) => self.on_client_frame(token, frame),
        }
    }

    fn on_hello(&mut self, token: Token, kind: Kind, frame: bytes::Bytes) -> Result<(), DaemonError> {
        let hello: proto::Hello = match wire::decode(frame, "Hello") {
            Ok(hello) => hello,
            Err(error) => {
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
        };
        let refusal = self.check_hello(kind, &hello);
        let reply = match &refusal {
            Ok(()) => proto::HelloReply { accepted: true, protocol_version: PROTOCOL_VERSION, ..Default::default() },
            Err((code, message)) => proto::HelloReply {
                accepted: false,
                protocol_version: PROTOCOL_VERSION,
                error: *code as i32,
                message: message.clone(),
            },
        };
        let connection = self.connections.get_mut(&token).expect("checked by the caller");
        connection.queue(&reply);
        let _ = connection.flush();
        if let Err((_, message)) = refusal {
            self.close_for_bad_input(token, &message);
            return Ok(());
        }
        connection.greeted = true;
        if kind == Kind::PeerInbound {
            connection.remote = Some(hello.node_id);
            self.peer_client_addresses.insert(hello.node_id, hello.client_address);
        }
        Ok(())
    }

    fn check_hello(&self, kind: Kind, hello: &proto::Hello) -> Result<(), (ErrorCode, String)> {
        wire::check_version(hello).map_err(|error| (ErrorCode::IncompatibleVersion, error.to_string()))?;
        let expected = if kind == Kind::Client { proto::hello::Role::Client } else { proto::hello::Role::Peer };
        if hello.role != expected as i32 {
            let port = if kind == Kind::Client { "client" } else { "peer" };
            return Err((ErrorCode::BadRequest, format!("this is the {port} port; a {expected:?} must greet it")));
        }
        if kind == Kind::Client {
            return Ok(());
        }
        let members = self.membership.peers.len() as u64;
        if hello.cluster_id != self.membership.cluster_id {
            return Err((
                ErrorCode::UnknownNode,
                "the peer belongs to another cluster (its --seed-peers differ)".into(),
            ));
        }
        if hello.node_id == 0 || hello.node_id > members || hello.node_id == self.membership.node_id {
            return Err((ErrorCode::UnknownNode, format!("node {} is not a member of this cluster", hello.node_id)));
        }
        Ok(())
    }

    fn on_hello_reply(&mut self, token: Token, frame: bytes::Bytes) -> Result<(), DaemonError> {
        match wire::decode::<proto::HelloReply>(frame, "HelloReply") {
            Ok(reply) if reply.accepted => {
                self.connections.get_mut(&token).expect("checked by the caller").greeted = true;
            }
            Ok(reply) => {
                error!(message = %reply.message, code = reply.error, "a peer refused this node's handshake");
                self.close(token, "handshake refused");
            }
            Err(error) => self.close_for_bad_input(token, &error),
        }
        Ok(())
    }

    fn on_peer_frame(&mut self, token: Token, frame: bytes::Bytes) -> Result<(), DaemonError> {
        let remote = self.connections[&token].remote;
        let message: proto::PeerMessage = match wire::decode(frame, "PeerMessage") {
            Ok(message) => message,
            Err(error) => {
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
        };
        if message.range_id != wire::DEFAULT_RANGE_ID {
            self.close_for_bad_input(token, &format!("message for unknown range {}", message.range_id));
            return Ok(());
        }
        let envelope = match wire::peer_message_from_proto(message) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
        };
        if Some(envelope.from) != remote || envelope.to != self.membership.node_id {
            let error =
                format!("message from {} to {} on the connection of node {remote:?}", envelope.from, envelope.to);
            self.close_for_bad_input(token, &error);
            return Ok(());
        }
        self.step(Input::Message(envelope))
    }

    fn on_client_frame(&mut self, token: Token, frame: bytes::Bytes) -> Result<(), DaemonError> {
        let request: proto::ClientRequest = match wire::decode(frame, "ClientRequest") {
            Ok(request) => request,
            Err(error) => {
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
        };
        let request_id = request.request_id;
        let request = match wire::client_request_from_proto(request) {
            Ok(request) => request,
            Err(error) => {
                self.respond_error(token, request_id, error.code(), error.to_string());
                return Ok(());
            }
        };
        if self.waiting.len() >= CLIENT_REQUESTS_WAITING_COUNT_MAX {
            let message = "too many requests are waiting; retry shortly".to_string();
            self.respond_error(token, request_id, ErrorCode::Overloaded, message);
            return Ok(());
        }
        self.waiting.entry((request.client_id, request.sequence)).or_default().push((token, request_id));
        self.proposals.push(request);
        Ok(())
    }

    /// Steps every request that arrived in this poll at once: one append per
    /// follower and one persist for all of them.
    fn propose(&mut self) -> Result<(), DaemonError> {
        if self.proposals.is_empty() {
            return Ok(());
        }
        let requests = std::mem::take(&mut self.proposals);
        self.step(Input::Clients(requests))
    }

    // ----- consensus -----

    fn step(&mut self, input: Input) -> Result<(), DaemonError> {
        let was_leader = self.node.role() == Role::Leader;
        let ready = self.node.step(self.now(), input);
        let is_leader = self.node.role() == Role::Leader;
        if was_leader != is_leader {
            info!(node = self.membership.node_id, term = self.node.term(), role = ?self.node.role(), "role changed");
        }
        self.carry_out(ready)?;
        if was_leader && !is_leader {
            self.redirect_waiting_writes();
        }
        Ok(())
    }

    /// A deposed leader's proposals may never apply here. Their clients are
    /// told to retry at the new leader, under the same sequence numbers, so a
    /// proposal that did commit is answered from its session, not applied twice.
    fn redirect_waiting_writes(&mut self) {
        let keys: Vec<(u64, u64)> = self.waiting.keys().copied().collect();
        for key in keys {
            let message = "this node lost the leadership; retry at the leader".to_string();
            self.answer(key, Err((ErrorCode::NotLeader, message)));
        }
    }

    /// Carries out one Ready, in the order the core's contract requires.
    fn carry_out(&mut self, ready: Ready) -> Result<(), DaemonError> {
        let Ready { persist, send, send_after_persist, apply, reads, rejected, refused, next_deadline } = ready;
        self.deadline = next_deadline;
        for (peer, error) in refused {
            self.close_peer_for_bad_input(peer, &error);
        }
        for envelope in &send {
            self.send_to_peer(envelope);
        }
        if !persist.is_empty() {
            let installs_snapshot = persist.snapshot.is_some();
            let log_emptied = installs_snapshot && self.node.log().last_index() == self.node.log().snapshot_index();
            self.storage.stage(&mut self.batch, &persist, log_emptied)?;
            self.batch_dirty = true;
            if let Some(position) = persist.last_position() {
                self.persisted_position = Some(position);
            }
            if let Some(snapshot) = &persist.snapshot {
                info!(index = snapshot.last_index, term = snapshot.last_term, "installing a snapshot from the leader");
                // Entries applied next build on the snapshot, so it must be in place first.
                self.write_batch()?;
            }
        }
        self.held_messages.extend(send_after_persist);
        if !self.batch_dirty {
            self.release_held_messages();
        }
        for applied in self.storage.apply(&apply)? {
            self.answer((applied.client_id, applied.sequence), Ok(applied.response));
        }
        self.reads_waiting.extend(reads);
        self.serve_reads()?;
        for (request, rejection) in rejected {
            self.answer_rejection(&request, rejection);
        }
        Ok(())
    }

    fn write_batch(&mut self) -> Result<(), DaemonError> {
        let batch = std::mem::take(&mut self.batch);
        self.storage.write(batch, true)?;
        self.batch_dirty = false;
        Ok(())
    }

    /// Group commit: one sync covers everything staged since the last one;
    /// then the messages that waited for it leave, and consensus hears of it.
    fn flush_persist(&mut self) -> Result<(), DaemonError> {
        while self.batch_dirty || self.persisted_position.is_some() || !self.held_messages.is_empty() {
            if self.batch_dirty {
                self.write_batch()?;
            }
            self.release_held_messages();
            if let Some((index, term)) = self.persisted_position.take() {
                self.step(Input::Persisted { index, term })?;
            }
        }
        self.maybe_compact()
    }

    fn release_held_messages(&mut self) {
        for envelope in std::mem::take(&mut self.held_messages) {
            self.send_to_peer(&envelope);
        }
    }

    fn maybe_compact(&mut self) -> Result<(), DaemonError> {
        let (applied, applied_term) = self.storage.applied();
        if applied < self.node.log().snapshot_index() + self.snapshot_every_entries
            || applied > self.node.applied_index()
        {
            return Ok(());
        }
        let data = std::sync::Arc::new(self.storage.snapshot_data()?);
        let snapshot = Snapshot { last_index: applied, last_term: applied_term, data };
        self.storage.compact(&snapshot)?;
        info!(index = applied, bytes = snapshot.data.len(), "took a snapshot and compacted the log");
        self.step(Input::Compact(snapshot))?;
        self.flush_persist()
    }

    fn send_to_peer(&mut self, envelope: &Envelope) {
        let Some(token) = self.outbound.get(&envelope.to) else { return };
        let Some(connection) = self.connections.get_mut(token) else { return };
        if !connection.queue(&wire::peer_message_to_proto(envelope)) {
            warn!(peer = envelope.to, "dropping a {} message: the peer is not keeping up", envelope.message.kind());
        }
    }

    // ----- answering clients -----

    fn serve_reads(&mut self) -> Result<(), DaemonError> {
        let applied = self.storage.applied().0;
        let (ready, waiting): (Vec<ReadReady>, Vec<ReadReady>) =
            std::mem::take(&mut self.reads_waiting).into_iter().partition(|read| read.read_index <= applied);
        self.reads_waiting = waiting;
        for read in ready {
            let response = self.storage.read(read.request.operation.key())?;
            self.answer((read.request.client_id, read.request.sequence), Ok(response));
        }
        Ok(())
    }

    fn answer_rejection(&mut self, request: &ClientRequest, rejection: Rejection) {
        let (code, message) = match rejection {
            Rejection::NotLeader { .. } => (ErrorCode::NotLeader, "this node is not the leader".to_string()),
            Rejection::Overloaded => (ErrorCode::Overloaded, "the leader is overloaded; retry shortly".to_string()),
        };
        self.answer((request.client_id, request.sequence), Err((code, message)));
    }

    fn answer(&mut self, key: (u64, u64), outcome: Result<Response, (ErrorCode, String)>) {
        let Some(waiters) = self.waiting.remove(&key) else { return };
        let leader = self.node.leader_id().and_then(|leader| self.peer_client_addresses.get(&leader)).cloned();
        for (token, request_id) in waiters {
            let response = match &outcome {
                Ok(response) => proto::ClientResponse {
                    request_id,
                    error: ErrorCode::Ok as i32,
                    success: response.success,
                    value: response.value.clone().into(),
                    term: response.term,
                    index: response.index,
                    ..Default::default()
                },
                Err((code, message)) => proto::ClientResponse {
                    request_id,
                    error: *code as i32,
                    leader: if *code == ErrorCode::NotLeader {
                        leader.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    message: message.clone(),
                    ..Default::default()
                },
            };
            self.queue_to_client(token, &response);
        }
    }

    fn respond_error(&mut self, token: Token, request_id: u64, code: ErrorCode, message: String) {
        let response = proto::ClientResponse { request_id, error: code as i32, message, ..Default::default() };
        self.queue_to_client(token, &response);
    }

    fn queue_to_client(&mut self, token: Token, response: &proto::ClientResponse) {
        let Some(connection) = self.connections.get_mut(&token) else { return };
        if !connection.queue(response) {
            self.close(token, "client is not reading its responses");
        }
    }
}
