//! The daemon's event loop. One thread: it polls both ports, feeds inputs to
//! the consensus node with the boot clock, and carries out each Ready in the
//! order the core's contract sets (see `consensus::ready`). A second thread
//! reads snapshots for followers that need one (see `snapshot`), and a
//! third syncs the WAL.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rocksdb::WriteBatch;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::clock::BootClock;
use super::config::{Flags, Membership};
use super::connection::{Connection, Kind, Received, READ_CHUNK_BYTES};
use super::metrics::{Metrics, OPERATIONS};
use super::observer::{Identity, Observer, Turn};
use super::replica::{self, Deadlines, Replica, Waiter, INTRODUCTION_INTERVAL, REPLICAS_PER_NODE_MAX};
use super::snapshot::{ChunkOutcome, Streams};
use super::status::{StatusBoard, StatusServer};
use super::storage::{Claim, SplitMade, Storage, StorageError, SyncWorker};
use rasputin_consensus::{
    Config, LogIndex, MessageError, Nanos, NodeId, Rejection, Role, Snapshot, StartError, Term, TransferError,
    LOG_INDEX_MAX, TERM_MAX,
};
use rasputin_kv::balance::{self, Leadership};
use rasputin_kv::operation::{
    ClientRequest, Entry, Envelope, Input, Message, Node, Operation, Persist, ReadReady, Ready,
};
use rasputin_kv::range::{RangeDescriptor, RangeId, FIRST_RANGE_ID, META_RANGE_ID};
use rasputin_kv::scan::ScanPage;
use rasputin_kv::state_machine::{Refusal, Response};
use rasputin_kv::wire::{self, proto, ErrorCode, PROTOCOL_VERSION};

mod meta_sync;
use meta_sync::MetaAsker;

const PEER_LISTENER: Token = Token(0);
const CLIENT_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// The snapshot thread or the sync thread finished something. Mio allows
/// one waker per poll, so the two share it.
const WORKER_DONE: Token = Token(3);
const FIRST_CONNECTION: usize = 16;
/// A turn of the event loop longer than this is logged, with the time its
/// RocksDB writes took: heartbeats wait for the turn, and a lease is 500 ms.
const TURN_WARN_MS: u128 = 100;
/// Client requests waiting for their entry to apply or their read to be confirmed.
const CLIENT_REQUESTS_WAITING_COUNT_MAX: usize = 100_000;
/// Open client connections; further ones are refused.
const CLIENT_CONNECTIONS_COUNT_MAX: usize = 10_000;
/// Connections accepted on the peer port that have not completed their
/// handshake. Beyond this the oldest is closed: strangers cannot hold the
/// room a reconnecting member needs, since a member greets at once.
const PEER_HANDSHAKES_PENDING_COUNT_MAX: usize = 16;
/// How long a connection may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often connections are checked against the handshake timeout.
const HANDSHAKE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often a lost peer connection is retried.
const PEER_RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
/// Events handled per poll.
const EVENTS_PER_POLL_MAX: usize = 1024;
/// The log is compacted once its entries hold this many bytes in memory,
/// however few they are: 10,000 entries of 1 MiB values would be 10 GiB.
const LOG_BYTES_COMPACT_AFTER: usize = 64 << 20;
/// How often a node that is joining says what it waits for.
const JOIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How often each node runs the leader balancer over the ranges it hosts.
const BALANCE_INTERVAL: Duration = Duration::from_secs(1);

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
    #[error("--storage-dir is empty, but node {peer} (at term {peer_term}) has had messages from node {node} before: this node's data was lost. A node that forgot its votes could vote twice in one term. Restore the directory, or start the node with --replace to rejoin as a replacement")]
    WipedNode { node: NodeId, peer: NodeId, peer_term: Term },
    #[error("--replace is for a node whose --storage-dir is empty, and this one holds data; drop --replace to start the node as it is")]
    ReplaceWithData,
    #[error(
        "range {range} would pass the {REPLICAS_PER_NODE_MAX} ranges one node hosts at most; merge ranges or add nodes"
    )]
    TooManyRanges { range: RangeId },
}

impl DaemonError {
    /// Exit code: 2 for bad invocations, 3 when the data needs an operator
    /// (restarting will not help), 1 for other failures while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Flags(_) | DaemonError::Start(StartError::Config(_)) | DaemonError::ReplaceWithData => 2,
            DaemonError::Start(StartError::Recovered(_)) | DaemonError::WipedNode { .. } => 3,
            DaemonError::Storage(error) if error.needs_an_operator() => 3,
            _ => 1,
        }
    }
}

/// Persists on their way to disk, at one stage: staged in the batch,
/// written unsynced, being synced, or synced. One pipeline serves every
/// range: one WAL, so one sync covers them all.
#[derive(Clone, Debug, Default)]
struct SyncJob {
    /// Every persist up to the `persists`-th has reached this stage.
    persists: u64,
    /// Each range's last log position among them, not yet passed to the next stage.
    positions: BTreeMap<RangeId, (LogIndex, Term)>,
    /// Each range's compaction, not yet passed to the next stage.
    compactions: BTreeMap<RangeId, Snapshot>,
}

impl SyncJob {
    /// What this stage holds for the next one; the persist count stays.
    fn take(&mut self) -> SyncJob {
        SyncJob {
            persists: self.persists,
            positions: std::mem::take(&mut self.positions),
            compactions: std::mem::take(&mut self.compactions),
        }
    }

    /// Takes in what an earlier stage passed on: later news wins.
    fn absorb(&mut self, earlier: SyncJob) {
        self.persists = earlier.persists;
        self.positions.extend(earlier.positions);
        self.compactions.extend(earlier.compactions);
    }
}

/// What a node with an empty directory waits for before it takes part.
struct Join {
    replace: bool,
    /// Each member's answer to this node's greeting.
    answers: BTreeMap<NodeId, Answer>,
    reported_at: Instant,
}

/// A member's answer to the greeting of a node that is joining.
#[derive(Clone, Copy, Debug)]
struct Answer {
    term: Term,
    /// The end of the member's log: (last term, last index).
    log_end: (Term, LogIndex),
    knows_you: bool,
}

struct Daemon {
    membership: Membership,
    client_address: String,
    snapshot_every_entries: u64,
    /// Every hosted range's replica; none while the node joins (see `Join`).
    replicas: BTreeMap<RangeId, Replica>,
    /// The hosted data ranges by start key, to route a key in one seek.
    by_start: BTreeMap<Vec<u8>, RangeId>,
    deadlines: Deadlines,
    /// Ranges with client requests read in this poll, for `propose`.
    proposing: BTreeSet<RangeId>,
    /// Client requests waiting in every replica, bounded by CLIENT_REQUESTS_WAITING_COUNT_MAX.
    waiting_count: usize,
    join: Option<Join>,
    storage: Storage,
    clock: BootClock,
    poll: Poll,
    connections: BTreeMap<Token, Connection>,
    next_token: usize,
    client_connections: usize,
    outbound: BTreeMap<NodeId, Token>,
    reconnect_at: BTreeMap<NodeId, Instant>,
    peer_client_addresses: BTreeMap<NodeId, String>,
    batch: WriteBatch,
    /// Persists staged into `batch`, written unsynced, being synced by the
    /// sync thread (one sync at a time), and synced (their position and
    /// compaction not yet reported to consensus).
    staged: SyncJob,
    written: SyncJob,
    sync_in_flight: Option<SyncJob>,
    synced: SyncJob,
    syncs: SyncWorker,
    /// Messages that promise durability, each with the number of persists
    /// that must be synced before it may leave, and its range.
    held_messages: VecDeque<(u64, RangeId, Envelope)>,
    /// Ranges whose logs may be due for compaction: they applied entries,
    /// or their compaction waited for one under way or a snapshot being sent.
    compaction_due: BTreeSet<RangeId>,
    /// How long this turn's RocksDB writes took, for the slow-turn warning.
    turn_storage: Duration,
    shutting_down: bool,
    /// Where every connection's reads land before their bytes are framed.
    read_scratch: Vec<u8>,
    /// Connections whose last read stopped at the turn's budget.
    backlog: BTreeSet<Token>,
    /// Outgoing peer connections leave from this address, so that peers (and
    /// firewall rules) see the same address the node listens on.
    bind: IpAddr,
    streams: Streams,
    handshakes_swept_at: Instant,
    balanced_at: Instant,
    observer: Observer,
    /// When the sync under way was asked for, for its latency.
    sync_requested_at: Instant,
    /// As the meta range's leader: the senders of the meta updates it
    /// proposed, by sequence, bounded by META_ASKERS_COUNT_MAX.
    meta_askers: BTreeMap<u64, MetaAsker>,
    /// The sequence of the last meta update this node proposed.
    meta_sequence: u64,
    /// When the data leaders here last sent their splits; None: at once.
    meta_synced_at: Option<Instant>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(flags: Flags) -> Result<(), DaemonError> {
    let membership = flags.membership().map_err(DaemonError::Flags)?;
    let members: Vec<NodeId> = (1..=membership.peers.len() as NodeId).collect();
    let storage = Storage::open(&flags.storage_dir, &members)?;
    let claim = storage.claim_identity(membership.node_id, membership.cluster_id)?;
    if flags.replace && claim == Claim::Existing {
        return Err(DaemonError::ReplaceWithData);
    }
    let poll = Poll::new()?;
    let mut peer_listener = listen(SocketAddr::new(flags.bind, flags.peer_port))?;
    let mut client_listener = listen(SocketAddr::new(flags.bind, flags.cli_port))?;
    poll.registry().register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)?;
    poll.registry().register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)?;
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WORKER_DONE)?);
    let snapshot_waker = waker.clone();
    let streams = Streams::start(storage.snapshot_source(), move || {
        let _ = snapshot_waker.wake();
    })?;
    let syncs = storage.sync_worker(move || {
        let _ = waker.wake();
    })?;
    let advertise = flags.advertise.unwrap_or(flags.bind);
    let client_address = SocketAddr::new(advertise, flags.cli_port).to_string();
    let identity = Identity {
        node_id: membership.node_id,
        cluster_id: membership.cluster_id,
        peer_address: SocketAddr::new(advertise, flags.peer_port).to_string(),
        client_address: client_address.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    let board = Arc::new(StatusBoard::new(proto::NodeStatus::default()));
    let status_server = match flags.status_port {
        Some(port) => {
            let address = SocketAddr::new(flags.bind, port);
            let listener =
                std::net::TcpListener::bind(address).map_err(|source| DaemonError::Listen { address, source })?;
            info!(%address, "status server listening: /metrics, /health, /status");
            Some(StatusServer::start(listener, board.clone(), metrics.clone())?)
        }
        None => None,
    };
    let join = (claim == Claim::Fresh).then(|| Join {
        replace: flags.replace,
        answers: BTreeMap::new(),
        reported_at: Instant::now(),
    });
    let mut daemon = Daemon {
        client_address,
        bind: flags.bind,
        read_scratch: vec![0; READ_CHUNK_BYTES],
        snapshot_every_entries: flags.snapshot_every_entries,
        replicas: BTreeMap::new(),
        by_start: BTreeMap::new(),
        deadlines: Deadlines::default(),
        proposing: BTreeSet::new(),
        waiting_count: 0,
        join,
        storage,
        clock: BootClock::start(),
        poll,
        connections: BTreeMap::new(),
        next_token: FIRST_CONNECTION,
        client_connections: 0,
        outbound: BTreeMap::new(),
        reconnect_at: BTreeMap::new(),
        peer_client_addresses: BTreeMap::new(),
        batch: WriteBatch::default(),
        staged: SyncJob::default(),
        written: SyncJob::default(),
        sync_in_flight: None,
        synced: SyncJob::default(),
        syncs,
        held_messages: VecDeque::new(),
        compaction_due: BTreeSet::new(),
        turn_storage: Duration::ZERO,
        shutting_down: false,
        backlog: BTreeSet::new(),
        streams,
        handshakes_swept_at: Instant::now(),
        balanced_at: Instant::now(),
        membership,
        observer: Observer::new(identity, metrics, board, status_server),
        sync_requested_at: Instant::now(),
        meta_askers: BTreeMap::new(),
        // Apart from the nonces of this node's earlier runs.
        meta_sequence: std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0),
        meta_synced_at: None,
    };
    info!(
        node = daemon.membership.node_id,
        peers = ?daemon.membership.peers,
        client = %daemon.client_address,
        joining = daemon.join.is_some(),
        "rasputind listening"
    );
    if daemon.join.is_none() {
        daemon.start_consensus()?;
    }
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
        self.clock.now_ns()
    }

    /// Starts consensus for every hosted range from what the disk holds.
    fn start_consensus(&mut self) -> Result<(), DaemonError> {
        if cfg!(feature = "fault-stale-reads") {
            warn!("built with the test-only feature fault-stale-reads: reads ignore the lease and may be stale; never run this build for real");
        }
        if self.storage.was_replaced()? {
            // Its lost meta replica's votes and acknowledgements are unknown,
            // as for a range made on demand; that waits for membership.
            self.storage.stop_hosting_meta();
        }
        let ranges: Vec<RangeId> = self.storage.range_ids().collect();
        for range in ranges {
            self.start_replica(range)?;
        }
        info!(node = self.membership.node_id, ranges = self.replicas.len(), "recovered every hosted range");
        self.flush_persist()
    }

    fn consensus_config(&self) -> Config {
        let members = (1..=self.membership.peers.len() as u64).collect();
        let mut config = Config::new(self.membership.node_id, members);
        config.faults.reads_ignore_lease = cfg!(feature = "fault-stale-reads");
        config
    }

    /// A seed for a replica's consensus randomness (election timeouts):
    /// different per node, process, range and instant.
    fn seed(&self, range: RangeId) -> u64 {
        self.membership.node_id ^ std::process::id() as u64 ^ self.now() ^ range.rotate_left(32)
    }

    fn start_replica(&mut self, range: RangeId) -> Result<(), DaemonError> {
        let config = self.consensus_config();
        let storage = self.storage.range_mut(range).expect("starting a range the storage holds");
        let recovered = storage.recover()?;
        let descriptor = storage.descriptor();
        info!(
            node = self.membership.node_id,
            range,
            term = recovered.hard_state.term,
            entries = recovered.entries.len(),
            snapshot = recovered.snapshot.as_ref().map_or(0, |snapshot| snapshot.last_index),
            applied = storage.applied().0,
            votes_withheld_until = ?recovered.votes_withheld_until,
            "recovered"
        );
        let withholding = recovered.votes_withheld_until.is_some();
        let node = Node::new(config, recovered, self.seed(range), self.now())?;
        self.host(range, Replica::new(node, descriptor, withholding))?;
        self.step(range, Input::Tick)
    }

    /// Adds a replica to those this node drives.
    fn host(&mut self, range: RangeId, replica: Replica) -> Result<(), DaemonError> {
        if self.replicas.len() >= REPLICAS_PER_NODE_MAX {
            return Err(DaemonError::TooManyRanges { range });
        }
        if !replica.descriptor.is_meta() {
            self.by_start.insert(replica.descriptor.start.to_vec(), range);
        }
        self.deadlines.set(range, 0, 0);
        self.replicas.insert(range, replica);
        Ok(())
    }

    /// The first range's replica, which every running node has.
    fn first(&self) -> Option<&Replica> {
        self.replicas.get(&FIRST_RANGE_ID)
    }

    fn event_loop(
        &mut self,
        peer_listener: &TcpListener,
        client_listener: &TcpListener,
        signals: &mut Signals,
    ) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL_MAX);
        while !self.shutting_down {
            self.connect_peers();
            self.pump_snapshots();
            self.flush_connections();
            self.close_stalled_handshakes()?;
            let wait = if self.backlog.is_empty() {
                let wait_ns =
                    self.deadlines.earliest().map_or(u64::MAX, |deadline| deadline.saturating_sub(self.now()));
                Duration::from_nanos(wait_ns).min(PEER_RECONNECT_INTERVAL)
            } else {
                Duration::ZERO
            };
            if let Err(error) = self.poll.poll(&mut events, Some(wait)) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error.into());
                }
            }
            let turn_started = Instant::now();
            self.turn_storage = Duration::ZERO;
            for event in events.iter() {
                match event.token() {
                    PEER_LISTENER => self.accept(peer_listener, Kind::PeerInbound),
                    CLIENT_LISTENER => self.accept(client_listener, Kind::Client),
                    SIGNALS => self.on_signals(signals),
                    WORKER_DONE => {
                        self.on_syncs_done()?;
                        self.on_snapshot_chunks_read()?;
                    }
                    token => self.on_connection_event(token, event.is_readable(), event.is_writable())?,
                }
            }
            for token in std::mem::take(&mut self.backlog) {
                self.read_connection(token)?;
            }
            self.propose()?;
            for range in self.deadlines.due(self.now()) {
                self.step(range, Input::Tick)?;
            }
            // Appends to followers (and answers) may leave before this node's
            // own sync: followers then sync while the leader does. Messages
            // that must wait for the sync are held apart until it is done.
            self.flush_connections();
            self.flush_persist()?;
            self.maybe_finish_joining()?;
            self.balance_leaders()?;
            self.sync_meta();
            self.observe(false);
            self.warn_if_slow(turn_started.elapsed());
        }
        self.observe(true);
        self.sync_now()?;
        self.report_synced()?;
        self.flush_connections();
        info!(node = self.membership.node_id, "shut down cleanly");
        Ok(())
    }

    fn on_signals(&mut self, signals: &mut Signals) {
        for signal in signals.pending() {
            info!(signal, "received a termination signal; finishing writes and stopping");
            self.shutting_down = true;
        }
        self.observe(true);
    }

    // ----- leader balancing -----

    /// Every node runs `balance::balancing_moves` over the leaders it sees
    /// for the ranges it hosts, and carries out the moves away from itself
    /// as Harpoon leadership transfers; the other nodes make theirs. So each
    /// node comes to lead within one range as many as the others, and a
    /// node that is down receives none.
    fn balance_leaders(&mut self) -> Result<(), DaemonError> {
        if self.join.is_some() || self.balanced_at.elapsed() < BALANCE_INTERVAL {
            return Ok(());
        }
        self.balanced_at = Instant::now();
        let own = self.membership.node_id;
        let leaderships: Vec<Leadership> = self
            .replicas
            .iter()
            // The meta range's light load is not worth a transfer's pause.
            .filter(|(&range, _)| range != META_RANGE_ID)
            .filter_map(|(&range, replica)| {
                let leader = replica.node.leader_id()?;
                Some(Leadership { range, leader, replicas: replica.descriptor.replicas.clone() })
            })
            .collect();
        for step in balance::balancing_moves(&leaderships, &self.reachable_members()) {
            let Some(replica) = self.replicas.get(&step.range) else { continue };
            // A successor that lacks the log would hold the range's writes
            // until the transfer gave up: an empty replica waiting for its
            // snapshot, say.
            let ready = replica.node.transferring_to().is_none()
                && replica.node.transfer_leadership_check(step.to).is_ok()
                && replica.node.follower_caught_up(step.to);
            if step.from != own || !ready {
                continue;
            }
            info!(node = own, range = step.range, to = step.to, "balancing leaders: handing a range's leadership over");
            self.observer.metrics.balancing_transfers.fetch_add(1, Ordering::Relaxed);
            self.step(step.range, Input::TransferLeadership { to: step.to })?;
        }
        Ok(())
    }

    /// This node and the members it has a handshaken connection with, both ways.
    fn reachable_members(&self) -> Vec<NodeId> {
        let sends_to = |peer: NodeId| {
            let connection = self.outbound.get(&peer).and_then(|token| self.connections.get(token));
            connection.is_some_and(|connection| connection.greeted)
        };
        let hears_from = |peer: NodeId| {
            self.connections.values().any(|connection| {
                connection.kind == Kind::PeerInbound && connection.greeted && connection.remote == Some(peer)
            })
        };
        let own = self.membership.node_id;
        let members = 1..=self.membership.peers.len() as NodeId;
        members.filter(|&peer| peer == own || (sends_to(peer) && hears_from(peer))).collect()
    }

    // ----- joining -----

    /// A node whose directory was empty takes part only once it knows it
    /// never took part before: every other member says it has not heard
    /// from it, or a quorum of the other members answers, all from term 0.
    /// (Any election ever held had a quorum of voters, which meets that one
    /// in a member that is not this node, and that member's term would not
    /// be 0.) A replacement waits for every member: it must learn the
    /// highest term, in which it may have voted before, and the most
    /// up-to-date log, which holds every entry committed so far.
    fn maybe_finish_joining(&mut self) -> Result<(), DaemonError> {
        let Some(join) = &mut self.join else { return Ok(()) };
        let node = self.membership.node_id;
        if let Some((&peer, answer)) = join.answers.iter().find(|(_, answer)| answer.knows_you) {
            if !join.replace {
                return Err(DaemonError::WipedNode { node, peer, peer_term: answer.term });
            }
        }
        let others = self.membership.peers.len() - 1;
        let everyone_answered = join.answers.len() == others;
        let quorum_of_others = join.answers.len() > self.membership.peers.len() / 2;
        let never_elected = join.answers.values().all(|answer| answer.term == 0);
        let ready = everyone_answered || (!join.replace && quorum_of_others && never_elected);
        if !ready {
            if join.reported_at.elapsed() >= JOIN_REPORT_INTERVAL {
                join.reported_at = Instant::now();
                let answered: Vec<&NodeId> = join.answers.keys().collect();
                info!(
                    node,
                    ?answered,
                    replace = join.replace,
                    "joining with an empty directory: waiting until every other member answers (in a new cluster, a quorum of them)"
                );
            }
            return Ok(());
        }
        if join.replace {
            let term = join.answers.values().map(|answer| answer.term).max().unwrap_or(0);
            let most_up_to_date = join.answers.values().map(|answer| answer.log_end).max().unwrap_or((0, 0));
            info!(
                node,
                term,
                log_end = ?most_up_to_date,
                "replacing a lost node: no vote in term {term}, and until this node's log reaches {most_up_to_date:?} no campaign and no vote for a candidate whose log falls short of it"
            );
            self.storage.first_range_mut().start_replacement(term, node, most_up_to_date)?;
        }
        self.storage.write_identity(node, self.membership.cluster_id)?;
        self.join = None;
        info!(node, "joined the cluster");
        self.start_consensus()
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
        if kind == Kind::Client {
            self.client_connections += 1;
        }
        self.connections.insert(token, Connection::new(stream, kind, address, self.observer.metrics.clone()));
        Some(token)
    }

    fn accept(&mut self, listener: &TcpListener, kind: Kind) {
        loop {
            match listener.accept() {
                Ok((stream, address)) => {
                    if kind == Kind::Client && self.client_connections >= CLIENT_CONNECTIONS_COUNT_MAX {
                        warn!(%address, "refusing a client connection: {CLIENT_CONNECTIONS_COUNT_MAX} are open");
                        continue;
                    }
                    if kind == Kind::PeerInbound {
                        self.make_room_for_a_handshake();
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
                features: wire::FEATURE_RANGES,
            };
            self.connections.get_mut(&token).expect("just registered").queue(&hello);
            self.outbound.insert(peer, token);
        }
    }

    fn close(&mut self, token: Token, reason: &str) {
        let Some(mut connection) = self.connections.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut connection.stream);
        match connection.kind {
            Kind::Client => self.client_connections -= 1,
            Kind::PeerInbound => {}
            Kind::PeerOutbound(peer) => {
                self.outbound.remove(&peer);
            }
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

    /// Closes the oldest peer connection still waiting for its handshake if
    /// the waiting room is full, preferring one from an address that no
    /// member has, so that a flood from elsewhere cannot crowd out a
    /// member's reconnect. (Tokens rise with time: the first is the oldest.)
    fn make_room_for_a_handshake(&mut self) {
        let pending: Vec<(Token, bool)> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.kind == Kind::PeerInbound && !connection.greeted)
            .map(|(&token, connection)| {
                let from_a_member = self.membership.peers.iter().any(|peer| peer.ip() == connection.address.ip());
                (token, from_a_member)
            })
            .collect();
        if pending.len() >= PEER_HANDSHAKES_PENDING_COUNT_MAX {
            let stranger = pending.iter().find(|(_, from_a_member)| !from_a_member);
            let (oldest, _) = *stranger.unwrap_or(&pending[0]);
            let message = format!("{PEER_HANDSHAKES_PENDING_COUNT_MAX} peer connections wait for a handshake");
            self.close_for_bad_input(oldest, &message);
        }
    }

    /// A connection that has not completed its handshake in time holds a
    /// slot for nothing, and so does a snapshot whose leader went quiet.
    fn close_stalled_handshakes(&mut self) -> Result<(), DaemonError> {
        if self.handshakes_swept_at.elapsed() < HANDSHAKE_SWEEP_INTERVAL {
            return Ok(());
        }
        for (range, replica) in &mut self.replicas {
            let storage = self.storage.range_mut(*range).expect("every replica's range is stored");
            replica.receiver.drop_if_stalled(storage)?;
        }
        self.handshakes_swept_at = Instant::now();
        let stalled: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, connection)| !connection.greeted && connection.opened_at.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(&token, _)| token)
            .collect();
        for token in stalled {
            self.close_for_bad_input(token, &format!("no handshake within {HANDSHAKE_TIMEOUT:?}"));
        }
        Ok(())
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
        if readable {
            self.read_connection(token)?;
        }
        Ok(())
    }

    fn read_connection(&mut self, token: Token) -> Result<(), DaemonError> {
        let Some(connection) = self.connections.get_mut(&token) else { return Ok(()) };
        let (frames, closed) = match connection.receive(&mut self.read_scratch) {
            Received::Frames(frames) => (frames, None),
            Received::More(frames) => {
                self.backlog.insert(token);
                (frames, None)
            }
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
            (Kind::PeerOutbound(peer), false) => {
                self.on_hello_reply(token, peer, frame);
                Ok(())
            }
            (Kind::PeerOutbound(_), true) => {
                self.close_for_bad_input(token, &"a peer sent data on a connection used only for sending");
                Ok(())
            }
            (_, false) => {
                self.on_hello(token, kind, frame);
                Ok(())
            }
            (Kind::PeerInbound, true) => self.on_peer_frame(token, frame),
            (Kind::Client, true) => self.on_client_frame(token, frame),
        }
    }

    fn on_hello(&mut self, token: Token, kind: Kind, frame: bytes::Bytes) {
        let hello: proto::Hello = match wire::decode(frame, "Hello") {
            Ok(hello) => hello,
            Err(error) => {
                self.close_for_bad_input(token, &error);
                return;
            }
        };
        let refusal = self.check_hello(kind, &hello);
        let reply = match &refusal {
            Ok(()) => {
                let (term, last_log_term, last_log_index) = self.first().map_or((0, 0, 0), |first| {
                    (first.node.term(), first.node.log().last_term(), first.node.log().last_index())
                });
                let knows_you = kind == Kind::PeerInbound && self.storage.has_seen(hello.node_id);
                proto::HelloReply {
                    accepted: true,
                    protocol_version: PROTOCOL_VERSION,
                    term,
                    last_log_term,
                    last_log_index,
                    knows_you,
                    features: wire::FEATURE_RANGES,
                    ..Default::default()
                }
            }
            Err((code, message)) => proto::HelloReply {
                accepted: false,
                protocol_version: PROTOCOL_VERSION,
                error: *code as i32,
                message: message.clone(),
                ..Default::default()
            },
        };
        let connection = self.connections.get_mut(&token).expect("checked by the caller");
        connection.queue(&reply);
        let _ = connection.flush();
        if let Err((_, message)) = refusal {
            self.close_for_bad_input(token, &message);
            return;
        }
        connection.greeted = true;
        if kind == Kind::PeerInbound {
            connection.remote = Some(hello.node_id);
            self.peer_client_addresses.insert(hello.node_id, hello.client_address);
            self.close_older_connections_of(hello.node_id, token);
        }
    }

    /// A member keeps one connection to this node; when it opens another,
    /// the older one is dead or about to be, and only holds a slot.
    fn close_older_connections_of(&mut self, peer: NodeId, newest: Token) {
        let older: Vec<Token> = self
            .connections
            .iter()
            .filter(|(&token, connection)| {
                token != newest && connection.kind == Kind::PeerInbound && connection.remote == Some(peer)
            })
            .map(|(&token, _)| token)
            .collect();
        for token in older {
            self.close(token, "the peer reconnected");
        }
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

    fn on_hello_reply(&mut self, token: Token, peer: NodeId, frame: bytes::Bytes) {
        match wire::decode::<proto::HelloReply>(frame, "HelloReply") {
            Ok(reply) if reply.accepted => {
                let connection = self.connections.get_mut(&token).expect("checked by the caller");
                connection.greeted = true;
                connection.hosts_ranges = reply.features & wire::FEATURE_RANGES != 0;
                if !connection.hosts_ranges {
                    info!(
                        peer,
                        "this peer hosts one range (an older rasputind): it gets the first range's messages only"
                    );
                }
                let Some(join) = &mut self.join else { return };
                // The same bounds as for a peer message: a joining node stores what it learns here.
                let numbers = [reply.term, reply.last_log_term, reply.last_log_index];
                if numbers.iter().any(|&number| number > TERM_MAX.min(LOG_INDEX_MAX)) {
                    let error = format!("a handshake reply with impossible numbers {numbers:?}");
                    self.close_for_bad_input(token, &error);
                    return;
                }
                let log_end = (reply.last_log_term, reply.last_log_index);
                join.answers.insert(peer, Answer { term: reply.term, log_end, knows_you: reply.knows_you });
            }
            Ok(reply) => {
                error!(message = %reply.message, code = reply.error, "a peer refused this node's handshake");
                self.close(token, "handshake refused");
            }
            Err(error) => self.close_for_bad_input(token, &error),
        }
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
        let range = wire::range_from_wire(message.range_id);
        let frame = match wire::peer_frame_from_proto(message) {
            Ok(frame) => frame,
            Err(error) => {
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
        };
        let (from, to) = frame.from_to();
        if Some(from) != remote || to != self.membership.node_id {
            let error = format!("message from {from} to {to} on the connection of node {remote:?}");
            self.close_for_bad_input(token, &error);
            return Ok(());
        }
        if self.join.is_some() {
            debug!(peer = from, "dropping a peer message while joining");
            return Ok(());
        }
        // Between nodes about a data range, which the receiver need not host.
        match frame {
            wire::PeerFrame::MetaRecord { term, descriptors, .. } => {
                self.on_meta_record(from, range, term, descriptors);
                return Ok(());
            }
            wire::PeerFrame::MetaRecorded { term, version, .. } => {
                self.on_meta_recorded(range, term, version);
                return Ok(());
            }
            _ => {}
        }
        if !self.replicas.contains_key(&range) {
            return self.on_unhosted_frame(range, from, frame);
        }
        // From here on, a wiped `from` is known to have taken part.
        self.storage.record_seen(from)?;
        match frame {
            wire::PeerFrame::Consensus(envelope) => self.step(range, Input::Message(envelope)),
            wire::PeerFrame::Chunk { chunk, .. } => self.on_snapshot_chunk(token, range, from, chunk),
            wire::PeerFrame::ChunkAck { ack, .. } => {
                self.streams.on_ack((range, from), &ack);
                Ok(())
            }
            wire::PeerFrame::RangeUnknown { .. } => {
                self.introduce(range, from);
                Ok(())
            }
            // Hosted already: there is nothing to make.
            wire::PeerFrame::RangeIntroduction { .. } => Ok(()),
            wire::PeerFrame::MetaRecord { .. } | wire::PeerFrame::MetaRecorded { .. } => {
                unreachable!("handled before the range is looked up")
            }
        }
    }

    /// A message for a range this node does not host: one it has not made
    /// yet (its split has yet to apply here), one whose split it will
    /// never apply (a snapshot of the parent from after the split reached
    /// it), or one it no longer holds. Not bad input: ranges come and go.
    /// An append, heartbeat or snapshot chunk is answered `RangeUnknown`,
    /// so that the sender introduces the range (and stops streaming it
    /// here), and an introduction may make an empty replica.
    fn on_unhosted_frame(&mut self, range: RangeId, from: NodeId, frame: wire::PeerFrame) -> Result<(), DaemonError> {
        match frame {
            wire::PeerFrame::RangeIntroduction { descriptor, .. } => {
                return self.on_range_introduction(from, descriptor)
            }
            wire::PeerFrame::Consensus(Envelope {
                message: Message::Append { .. } | Message::Heartbeat { .. },
                ..
            })
            | wire::PeerFrame::Chunk { .. } => {
                let unknown = wire::range_unknown_to_proto(self.membership.node_id, from, range);
                self.send_own_message(from, &unknown);
            }
            _ => {}
        }
        debug!(peer = from, range, "dropping a message for a range this node does not host");
        self.observer.metrics.unhosted_messages.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `peer` said it does not host `range`: stops streaming it a snapshot
    /// of the range, and tells it the range's descriptor, if it is one of
    /// the range's replicas, at most once per `INTRODUCTION_INTERVAL`.
    fn introduce(&mut self, range: RangeId, peer: NodeId) {
        self.streams.abort_unhosted((range, peer));
        let own = self.membership.node_id;
        let replica = self.replicas.get_mut(&range).expect("the caller checked the range is hosted");
        let recently = replica.introduced.get(&peer).is_some_and(|at| at.elapsed() < INTRODUCTION_INTERVAL);
        // A member without the meta range is a replacement, which makes none on demand.
        if !replica.descriptor.replicas.contains(&peer) || recently || replica.descriptor.is_meta() {
            return;
        }
        replica.introduced.insert(peer, Instant::now());
        let introduction = wire::range_introduction_to_proto(own, peer, &replica.descriptor);
        self.send_own_message(peer, &introduction);
    }

    /// `from` told this node of a range it does not host. If none of its
    /// ranges holds any of the range's keys, the split that made the range
    /// will never apply here (a snapshot from after it shrank the parent),
    /// so this node makes an empty replica, which votes only for
    /// candidates holding some of the range's log and does not campaign
    /// until the leader's snapshot arrives (docs/ranges.md). While one of
    /// its ranges overlaps it, the split is still to apply here, and makes
    /// the replica itself.
    fn on_range_introduction(&mut self, from: NodeId, descriptor: RangeDescriptor) -> Result<(), DaemonError> {
        let (own, range) = (self.membership.node_id, descriptor.id);
        let among_replicas = descriptor.replicas.contains(&own) && descriptor.replicas.contains(&from);
        if descriptor.is_meta() || !among_replicas {
            warn!(peer = from, %descriptor, "ignoring an introduction to a range this node is not to host");
            return Ok(());
        }
        if let Some(other) = self.overlapping(range, &descriptor) {
            debug!(range, other, "not making an empty replica: its split has yet to apply to a range here");
            return Ok(());
        }
        if self.replicas.len() >= REPLICAS_PER_NODE_MAX {
            warn!(range, max = REPLICAS_PER_NODE_MAX, "not making an empty replica: this node hosts the most it may");
            return Ok(());
        }
        if self.storage.was_replaced()? {
            debug!(
                range,
                "not making an empty replica: this node replaced a lost one, whose votes in the range are unknown"
            );
            return Ok(());
        }
        info!(node = own, peer = from, %descriptor, "making an empty replica of a range whose split this node missed; its leader's snapshot fills it");
        self.storage.open_empty(&descriptor)?;
        self.observer.metrics.empty_replicas.fetch_add(1, Ordering::Relaxed);
        self.start_replica(range)
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
        if request.status.is_some() {
            let status = self.observer.status(&self.turn());
            let response = proto::ClientResponse { request_id, status: Some(status), ..Default::default() };
            self.queue_to_client(token, &response);
            return Ok(());
        }
        if let Some(transfer) = request.transfer_leadership {
            let response = self.transfer_leadership(request_id, request.range_id, transfer.to)?;
            self.queue_to_client(token, &response);
            return Ok(());
        }
        let operation = operation_index(&request);
        let (named_range, epoch) = (request.range_id, request.epoch.map(|epoch| (epoch.version, epoch.conf_ver)));
        let mut request = match wire::client_request_from_proto(request) {
            Ok(request) => request,
            Err(error) => {
                self.respond_error(token, request_id, error.code(), error.to_string());
                return Ok(());
            }
        };
        if let Some((code, message)) = self.meta_request_refusal(&request.operation) {
            self.respond_error(token, request_id, code, message);
            return Ok(());
        }
        if self.join.is_some() {
            let message = "this node is joining the cluster; ask another".to_string();
            self.respond_error(token, request_id, ErrorCode::NotLeader, message);
            return Ok(());
        }
        if self.waiting_count >= CLIENT_REQUESTS_WAITING_COUNT_MAX {
            let message = "too many requests are waiting; retry shortly".to_string();
            self.respond_error(token, request_id, ErrorCode::Overloaded, message);
            return Ok(());
        }
        let routed = match request.operation {
            Operation::MetaLookup { .. } => Ok(META_RANGE_ID),
            _ => self.route(named_range, epoch, &request.operation),
        };
        let range = match routed {
            Ok(range) => range,
            Err(mismatch) => {
                self.respond_mismatch(token, request_id, mismatch);
                return Ok(());
            }
        };
        if let Operation::Split { right_range, version, .. } = &mut request.operation {
            let refusal = self.split_refusal(range, *version);
            let refusal =
                refusal.or_else(|| self.allocate_range(right_range).err().map(|m| (ErrorCode::BadRequest, m)));
            if let Some((code, message)) = refusal {
                self.respond_error(token, request_id, code, message);
                return Ok(());
            }
        }
        let waiter = Waiter { token, request_id, operation, arrived: Instant::now() };
        let replica = self.replicas.get_mut(&range).expect("routed to a hosted range");
        replica.waiting.entry((request.client_id, request.sequence)).or_default().push(waiter);
        replica.proposals.push(request);
        self.waiting_count += 1;
        self.proposing.insert(range);
        Ok(())
    }

    /// The hosted range a request goes to: the one it names (0 with an
    /// epoch: the first range; 0 without: the one holding its key, as
    /// clients from before ranges send), if that range holds its key at the
    /// epoch it names. Otherwise the descriptors this node knows for the
    /// key, for a RANGE_MISMATCH.
    fn route(
        &self,
        named: RangeId,
        epoch: Option<(u64, u64)>,
        operation: &Operation,
    ) -> Result<RangeId, Vec<RangeDescriptor>> {
        let key = operation.key();
        let holder = match operation {
            // A session is opened in the range the client names, or the first.
            Operation::OpenSession => Some(wire::range_from_wire(named)),
            _ => replica::holding(&self.by_start, &self.replicas, key),
        };
        let known = || holder.and_then(|range| self.replicas.get(&range)).map(|replica| replica.descriptor.clone());
        // A client that routes names the first range 0, with its epoch, so
        // that a daemon from before ranges (which ignores epochs) takes it.
        let range = match (named, epoch) {
            (wire::DEFAULT_RANGE_ID, None) => holder,
            (named, _) => Some(wire::range_from_wire(named)),
        };
        let Some(replica) =
            range.and_then(|range| self.replicas.get(&range)).filter(|replica| !replica.descriptor.is_meta())
        else {
            // The meta range holds descriptors, not the data keys it covers.
            return Err(known().into_iter().collect());
        };
        let epoch_differs = epoch.is_some_and(|(version, conf_ver)| {
            (version, conf_ver) != (replica.descriptor.epoch.version, replica.descriptor.epoch.conf_ver)
        });
        let holds = matches!(operation, Operation::OpenSession) || replica.descriptor.contains(key);
        if !holds || epoch_differs {
            let mut descriptors = vec![replica.descriptor.clone()];
            descriptors.extend(known().filter(|descriptor| descriptor.id != replica.descriptor.id));
            return Err(descriptors);
        }
        Ok(range.expect("a replica was found"))
    }

    /// Gives a split's right half a new range id, unless the request names
    /// one, which must not be hosted here. Ids are random (as UUIDs are):
    /// no node hands them out yet, and two among 2^62 meet with negligible
    /// chance; the split's apply refuses an id its node already holds.
    fn allocate_range(&self, right_range: &mut RangeId) -> Result<(), String> {
        if self.replicas.len() >= REPLICAS_PER_NODE_MAX {
            return Err(format!("this node hosts {REPLICAS_PER_NODE_MAX} ranges, the most it may"));
        }
        if *right_range == 0 {
            let random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), self.now());
            *right_range = (random >> 2).max(FIRST_RANGE_ID + 1);
            return Ok(());
        }
        if self.replicas.contains_key(right_range) || *right_range == META_RANGE_ID {
            return Err(format!("range id {right_range} is in use; ask for a split with right_range 0"));
        }
        Ok(())
    }

    /// An operator's transfer: begun here if this node leads the range and
    /// `to` is a member, and answered at once; the transfer finishes on its own.
    fn transfer_leadership(
        &mut self,
        request_id: u64,
        range_id: u64,
        to: NodeId,
    ) -> Result<proto::ClientResponse, DaemonError> {
        let refuse = |code: ErrorCode, message: String, leader: String| proto::ClientResponse {
            request_id,
            error: code as i32,
            message,
            leader,
            ..Default::default()
        };
        if self.join.is_some() {
            let message = "this node is joining the cluster; ask another".to_string();
            return Ok(refuse(ErrorCode::NotLeader, message, String::new()));
        }
        let range = wire::range_from_wire(range_id);
        let Some(replica) = self.replicas.get(&range) else {
            let message = format!("this node does not host range {range}; `rasputin ranges list` shows where it is");
            return Ok(refuse(ErrorCode::UnknownRange, message, String::new()));
        };
        let leader = self.leader_client_address(range).unwrap_or_default().to_string();
        if let Err(error) = replica.node.transfer_leadership_check(to) {
            let code = match error {
                TransferError::ToItself { .. } => {
                    let message = format!("node {to} leads range {range} already");
                    return Ok(proto::ClientResponse { request_id, message, ..Default::default() });
                }
                TransferError::NotLeader { .. } => ErrorCode::NotLeader,
                TransferError::UnknownNode { .. } => ErrorCode::UnknownNode,
                TransferError::Unsupported { .. } => ErrorCode::BadRequest,
            };
            return Ok(refuse(code, error.to_string(), leader));
        }
        info!(node = self.membership.node_id, range, to, "transferring the leadership, as an operator asked");
        self.step(range, Input::TransferLeadership { to })?;
        let message = format!("transferring the leadership of range {range} to node {to}");
        Ok(proto::ClientResponse { request_id, message, ..Default::default() })
    }

    /// Steps every request that arrived in this poll at once, per range:
    /// one append per follower and one persist for all of them.
    fn propose(&mut self) -> Result<(), DaemonError> {
        for range in std::mem::take(&mut self.proposing) {
            let Some(replica) = self.replicas.get_mut(&range) else { continue };
            let requests = std::mem::take(&mut replica.proposals);
            self.observer.metrics.proposals.fetch_add(requests.len() as u64, Ordering::Relaxed);
            self.step(range, Input::Clients(requests))?;
        }
        Ok(())
    }

    // ----- consensus -----

    fn step(&mut self, range: RangeId, input: Input) -> Result<(), DaemonError> {
        let now = self.now();
        let Some(replica) = self.replicas.get_mut(&range) else { return Ok(()) };
        let was = replica.node.role();
        let ready = replica.node.step(now, input);
        let node = &replica.node;
        let (was_leader, is_leader) = (was == Role::Leader, node.role() == Role::Leader);
        // Rare, and what an operator reads first after an outage (etcd logs the same).
        if node.role() != was {
            info!(node = self.membership.node_id, range, term = node.term(), role = ?node.role(), "role changed");
        }
        self.carry_out(range, ready)?;
        if was_leader && !is_leader {
            self.redirect_waiting_writes(range);
            if range == META_RANGE_ID {
                // Their entries may never commit now; their senders send again.
                self.meta_askers.clear();
            }
        }
        self.check_withholding(range)
    }

    /// A replacement that now holds everything committed before it started
    /// may vote again, and need not wait again after a restart.
    fn check_withholding(&mut self, range: RangeId) -> Result<(), DaemonError> {
        let Some(replica) = self.replicas.get_mut(&range) else { return Ok(()) };
        if replica.withholding_votes && !replica.node.withholds_votes() {
            self.storage.range_mut(range).expect("every replica's range is stored").end_withholding()?;
            replica.withholding_votes = false;
            info!(node = self.membership.node_id, range, "caught up: this replacement votes again");
        }
        Ok(())
    }

    /// A deposed leader's proposals may never apply here. Their clients are
    /// told to retry at the new leader, under the same sequence numbers, so a
    /// proposal that did commit is answered from its session, not applied twice.
    fn redirect_waiting_writes(&mut self, range: RangeId) {
        let keys: Vec<(u64, u64)> = self.replicas[&range].waiting.keys().copied().collect();
        for key in keys {
            let message = "this node lost the leadership; retry at the leader".to_string();
            let failure = Failure { proposed: true, ..Failure::new(ErrorCode::NotLeader, message) };
            self.answer(range, key, Err(failure));
        }
    }

    /// Carries out one Ready of `range`, in the order the core's contract requires.
    fn carry_out(&mut self, range: RangeId, ready: Ready) -> Result<(), DaemonError> {
        let Ready { persist, send, send_after_persist, apply, reads, rejected, refused, next_deadline } = ready;
        let replica = self.replicas.get_mut(&range).expect("only a hosted range steps");
        self.deadlines.set(range, replica.deadline, next_deadline);
        replica.deadline = next_deadline;
        for (peer, error) in refused {
            self.close_peer_for_bad_input(peer, &error);
        }
        for envelope in send {
            self.send_to_peer(range, envelope);
        }
        if !persist.is_empty() {
            self.stage_persist(range, &persist)?;
        }
        let persists_needed = self.staged.persists;
        let held = send_after_persist.into_iter().map(|envelope| (persists_needed, range, envelope));
        self.held_messages.extend(held);
        self.release_held_messages();
        if !apply.is_empty() {
            self.apply(range, &apply)?;
        }
        self.serve_reads(range, reads)?;
        for (request, rejection) in rejected {
            self.answer_rejection(range, &request, rejection);
        }
        Ok(())
    }

    fn stage_persist(&mut self, range: RangeId, persist: &Persist) -> Result<(), DaemonError> {
        let installs_snapshot = persist.snapshot.is_some();
        let node = &self.replicas[&range].node;
        let log_emptied = installs_snapshot && node.log().last_index() == node.log().snapshot_index();
        let storage = self.storage.range_mut(range).expect("every replica's range is stored");
        storage.stage(&mut self.batch, persist, log_emptied)?;
        self.staged.persists += 1;
        if let Some(position) = persist.last_position() {
            self.staged.positions.insert(range, position);
        }
        if let Some(snapshot) = &persist.snapshot {
            self.observer.metrics.snapshot_installs.fetch_add(1, Ordering::Relaxed);
            info!(
                range,
                index = snapshot.last_index,
                term = snapshot.last_term,
                "installing a snapshot from the leader"
            );
            let descriptor = storage.descriptor();
            self.reindex(range, descriptor);
            // Entries applied next build on the snapshot, so it must be in place first.
            self.sync_now()?;
            self.replicas.get_mut(&range).expect("stepped above").node.forget_snapshot_data();
        }
        Ok(())
    }

    /// Applies committed entries of `range`, answers their clients, and
    /// starts the right half of each split among them.
    fn apply(&mut self, range: RangeId, entries: &[Entry]) -> Result<(), DaemonError> {
        self.observer.metrics.commits.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let started = Instant::now();
        let hard_state = self.replicas[&range].node.hard_state();
        let storage = self.storage.range_mut(range).expect("every replica's range is stored");
        let applying = storage.apply(entries, hard_state)?;
        let descriptor = storage.descriptor();
        self.turn_storage += started.elapsed();
        self.compaction_due.insert(range);
        if !applying.splits.is_empty() {
            self.reindex(range, descriptor);
            // The meta range learns of the split now, not a round later.
            self.meta_synced_at = None;
        }
        for split in applying.splits {
            self.start_split_off(range, split)?;
        }
        for applied in applying.answers {
            if range == META_RANGE_ID {
                self.on_meta_applied(&applied);
            }
            let outcome = applied.outcome.map_err(|refusal| self.refusal_failure(refusal));
            self.answer(range, (applied.client_id, applied.sequence), outcome);
        }
        Ok(())
    }

    /// What a client is told of a committed write its range refused.
    fn refusal_failure(&self, refusal: Refusal) -> Failure {
        let message = refusal.to_string();
        let code = match refusal {
            Refusal::SessionExpired { .. } => ErrorCode::SessionExpired,
            Refusal::RangeMismatch { range } => {
                return Failure {
                    descriptors: self.neighbours(&range),
                    ..Failure::new(ErrorCode::RangeMismatch, message)
                };
            }
            // Refused at intake (see on_client_frame); these are a peer's logged ones.
            Refusal::NotMeta { .. } | Refusal::Meta(_) => ErrorCode::UnknownRange,
            Refusal::SequenceBelowSession { .. } | Refusal::MalformedOpen | Refusal::Split(_) => ErrorCode::BadRequest,
        };
        Failure::new(code, message)
    }

    /// `range` as it is now, and the hosted range that starts where it ends
    /// (a split's right half): where a refused key lies, most likely.
    fn neighbours(&self, range: &RangeDescriptor) -> Vec<RangeDescriptor> {
        let right = range.end.as_ref().and_then(|end| self.by_start.get(&end[..]));
        let right = right.and_then(|right| self.replicas.get(right)).map(|replica| replica.descriptor.clone());
        std::iter::once(range.clone()).chain(right).collect()
    }

    /// Records `range`'s new bounds for routing.
    fn reindex(&mut self, range: RangeId, descriptor: RangeDescriptor) {
        let Some(replica) = self.replicas.get_mut(&range) else { return };
        if descriptor.is_meta() {
            return;
        }
        if self.by_start.get(&replica.descriptor.start[..]) == Some(&range) {
            self.by_start.remove(&replica.descriptor.start[..]);
        }
        self.by_start.insert(descriptor.start.to_vec(), range);
        replica.descriptor = descriptor;
    }

    /// A split applied here: starts this node's replica of the right half
    /// from its parent's consensus (`Node::split_off`), with the state the
    /// split's apply stored for it.
    fn start_split_off(&mut self, parent: RangeId, split: SplitMade) -> Result<(), DaemonError> {
        let range = split.descriptor.id;
        self.storage.open_split_off(&split)?;
        let (last_index, last_term) = split.position;
        let snapshot = Snapshot { last_index, last_term, data: bytes::Bytes::new() };
        let node = self.replicas[&parent].node.split_off(snapshot, self.seed(range))?;
        info!(
            node = self.membership.node_id,
            parent,
            range,
            start = ?split.descriptor.start,
            index = last_index,
            leads = node.role() == Role::Leader,
            "split: hosting the new range"
        );
        self.observer.metrics.splits.fetch_add(1, Ordering::Relaxed);
        self.host(range, Replica::new(node, split.descriptor, false))?;
        self.step(range, Input::Tick)
    }

    /// Answers reads whose index the same Ready's entries have just applied,
    /// if the range still holds their key: a split since the read arrived
    /// moves it to another range, which may have written it since.
    fn serve_reads(&mut self, range: RangeId, reads: Vec<ReadReady>) -> Result<(), DaemonError> {
        let storage = self.storage.range(range).expect("every replica's range is stored");
        let applied = storage.applied().0;
        let descriptor = storage.descriptor();
        for read in reads {
            // Committed entries of this Ready were applied just above.
            assert!(read.read_index <= applied, "read at {} before applying it ({applied})", read.read_index);
            let key = (read.request.client_id, read.request.sequence);
            let operation = &read.request.operation;
            if !descriptor.contains(operation.key()) {
                let message = format!("range {descriptor} no longer holds the key; look it up again");
                let failure = Failure {
                    descriptors: self.neighbours(&descriptor),
                    ..Failure::new(ErrorCode::RangeMismatch, message)
                };
                self.answer(range, key, Err(failure));
                continue;
            }
            let storage = self.storage.range(range).expect("every replica's range is stored");
            match operation {
                Operation::Scan { start, end, limit } => {
                    let page = storage.scan(start, end.as_deref(), *limit)?;
                    self.answer_page(range, key, page);
                }
                Operation::MetaLookup { key: lookup, limit } => self.answer_lookup(key, lookup, *limit),
                operation => {
                    let response = storage.read(operation.key())?;
                    self.answer(range, key, Ok(response));
                }
            }
        }
        Ok(())
    }

    /// Writes what this turn staged, unsynced, and asks the sync thread to
    /// sync it unless a sync is under way: the next one then covers
    /// everything written meanwhile (group commit), and the loop goes on.
    fn start_sync(&mut self) -> Result<(), DaemonError> {
        if self.written.persists < self.staged.persists {
            let started = Instant::now();
            self.storage.write(std::mem::take(&mut self.batch), false)?;
            self.turn_storage += started.elapsed();
            self.observer.metrics.log_written(started.elapsed());
            self.written.absorb(self.staged.take());
        }
        let unsynced = self.synced.persists < self.written.persists || !self.written.compactions.is_empty();
        if self.sync_in_flight.is_some() || !unsynced {
            return Ok(());
        }
        self.syncs.request()?;
        self.sync_requested_at = Instant::now();
        self.sync_in_flight = Some(self.written.take());
        Ok(())
    }

    /// The sync under way is done: the messages that waited for it may leave.
    fn finish_sync(&mut self) {
        let job = self.sync_in_flight.take().expect("a sync finished, so one was under way");
        self.observer.metrics.log_synced(self.sync_requested_at.elapsed());
        self.synced.absorb(job);
        self.release_held_messages();
    }

    fn on_syncs_done(&mut self) -> Result<(), DaemonError> {
        while let Some(outcome) = self.syncs.try_finished() {
            outcome?;
            self.finish_sync();
        }
        self.report_synced()?;
        self.start_sync()
    }

    /// Syncs everything, waiting for the disk: for a snapshot that later
    /// entries build on, and at shutdown.
    fn sync_now(&mut self) -> Result<(), DaemonError> {
        if self.sync_in_flight.is_some() {
            self.syncs.wait()?;
            self.finish_sync();
        }
        self.start_sync()?;
        if self.sync_in_flight.is_some() {
            self.syncs.wait()?;
            self.finish_sync();
        }
        Ok(())
    }

    /// Tells consensus what is durable now. Called at the top of the loop
    /// only, never from inside the handling of a Ready.
    fn report_synced(&mut self) -> Result<(), DaemonError> {
        for (range, (index, term)) in std::mem::take(&mut self.synced.positions) {
            self.step(range, Input::Persisted { index, term })?;
        }
        for (range, snapshot) in std::mem::take(&mut self.synced.compactions) {
            info!(range, index = snapshot.last_index, term = snapshot.last_term, "compacted the log");
            self.step(range, Input::Compact(snapshot))?;
        }
        Ok(())
    }

    /// Group commit: what this turn staged is written and goes to the sync
    /// thread; then the log may be compacted.
    fn flush_persist(&mut self) -> Result<(), DaemonError> {
        self.report_synced()?;
        for range in std::mem::take(&mut self.compaction_due) {
            if self.maybe_compact(range)? {
                self.compaction_due.insert(range);
            }
        }
        self.start_sync()
    }

    fn warn_if_slow(&self, turn: Duration) {
        if turn.as_millis() > TURN_WARN_MS {
            warn!(
                turn_ms = turn.as_millis(),
                storage_ms = self.turn_storage.as_millis(),
                "a turn of the event loop was slow; heartbeats waited for it"
            );
        }
    }

    fn release_held_messages(&mut self) {
        while self.held_messages.front().is_some_and(|(needed, _, _)| *needed <= self.synced.persists) {
            let (_, range, envelope) = self.held_messages.pop_front().expect("front exists");
            self.send_to_peer(range, envelope);
        }
    }

    /// Compacts the log once enough entries have applied, or enough bytes. Nothing is copied:
    /// one synced write, on the sync thread, makes the applied state durable
    /// (see `Storage::compaction`). The log a follower catching up from a
    /// recent snapshot still needs is kept.
    /// Returns whether the compaction waits for something: one under way, or
    /// a snapshot some follower still needs the log after.
    fn maybe_compact(&mut self, range: RangeId) -> Result<bool, DaemonError> {
        let Some(replica) = self.replicas.get(&range) else { return Ok(false) };
        let node = &replica.node;
        let compacting = [Some(&self.written), self.sync_in_flight.as_ref(), Some(&self.synced)]
            .into_iter()
            .any(|stage| stage.is_some_and(|stage| stage.compactions.contains_key(&range)));
        if compacting || self.streams.opening(range) {
            // A snapshot being opened will be at an index not known yet, at
            // least the compacted one: its follower needs the log after it.
            return Ok(true);
        }
        let (replicas, outbound) = (&self.replicas, &self.outbound);
        self.streams.forget_caught_up(
            |(range, peer)| replicas.get(&range).and_then(|replica| replica.node.match_index(peer)),
            |peer| outbound.get(&peer).copied(),
        );
        let storage = self.storage.range(range).expect("every replica's range is stored");
        let (applied, _) = storage.applied();
        let mut index = applied.min(node.applied_index());
        let floor = self.streams.catch_up_floor(range);
        let held_back = floor.is_some_and(|floor| floor < index);
        if let Some(floor) = floor {
            index = index.min(floor);
        }
        let compacted = node.log().snapshot_index();
        let log_is_large = node.log().bytes() > LOG_BYTES_COMPACT_AFTER && index > compacted;
        if index < compacted + self.snapshot_every_entries && !log_is_large {
            return Ok(held_back);
        }
        let term = node.log().term(index).expect("an applied index past the snapshot is in the log");
        let (batch, snapshot) = storage.compaction(index, term);
        self.observer.metrics.compactions.fetch_add(1, Ordering::Relaxed);
        self.storage.write(batch, false)?;
        self.written.compactions.insert(range, snapshot);
        Ok(false)
    }

    fn send_to_peer(&mut self, range: RangeId, envelope: Envelope) {
        if let Message::InstallSnapshot { term, round, .. } = envelope.message {
            self.streams.request(range, envelope.to, term, round);
            return;
        }
        let Some(token) = self.outbound.get(&envelope.to) else { return };
        let Some(connection) = self.connections.get_mut(token) else { return };
        let mut message = wire::peer_message_to_proto(&envelope);
        message.range_id = wire::range_to_wire(range);
        if !takes_range(connection, &message) {
            return;
        }
        if !connection.queue(&message) {
            warn!(
                peer = envelope.to,
                range,
                "dropping a {} message: the peer is not keeping up",
                envelope.message.kind()
            );
        }
    }

    // ----- snapshots, streamed beside consensus (see `snapshot`) -----

    fn pump_snapshots(&mut self) {
        let (replicas, outbound, connections) = (&self.replicas, &self.outbound, &self.connections);
        let sending_term =
            |range| replicas.get(&range).and_then(|replica: &Replica| replica.node.snapshot_sending_term());
        self.streams.pump(sending_term, |peer| {
            let token = *outbound.get(&peer)?;
            let connection = connections.get(&token).filter(|connection| connection.greeted)?;
            Some((token, connection.outgoing_bytes()))
        });
    }

    fn on_snapshot_chunks_read(&mut self) -> Result<(), DaemonError> {
        for ((range, peer), chunk) in self.streams.on_answers()? {
            self.send_stream_message(range, peer, proto::peer_message::Body::SnapshotChunk(chunk));
        }
        self.pump_snapshots();
        Ok(())
    }

    fn send_stream_message(&mut self, range: RangeId, peer: NodeId, body: proto::peer_message::Body) {
        let mut message = wire::stream_message_to_proto(self.membership.node_id, peer, body);
        message.range_id = wire::range_to_wire(range);
        self.send_own_message(peer, &message);
    }

    /// Queues a message of the daemon's own (not consensus's) to `peer`,
    /// if connected; one the peer is too slow to take is dropped, and the
    /// exchange it belongs to repeats.
    fn send_own_message(&mut self, peer: NodeId, message: &proto::PeerMessage) {
        let Some(token) = self.outbound.get(&peer) else { return };
        let Some(connection) = self.connections.get_mut(token) else { return };
        if !takes_range(connection, message) {
            return;
        }
        if !connection.queue(message) {
            warn!(peer, range = message.range_id, "dropping a message to a peer that is not keeping up");
        }
    }

    /// A chunk of a snapshot of `range` from `leader`. One from a leader of
    /// an older term is refused, so that its stream stops. The last chunk
    /// steps the InstallSnapshot it stands for: consensus decides whether
    /// the staged snapshot goes in, and what is staged and not installed goes.
    fn on_snapshot_chunk(
        &mut self,
        token: Token,
        range: RangeId,
        leader: NodeId,
        chunk: proto::SnapshotChunk,
    ) -> Result<(), DaemonError> {
        let replica = self.replicas.get_mut(&range).expect("the caller checked the range is hosted");
        let storage = self.storage.range_mut(range).expect("every replica's range is stored");
        let received = if chunk.term < replica.node.term() {
            ChunkOutcome::Ack(proto::SnapshotChunkAck {
                transfer_id: chunk.transfer_id,
                refused: true,
                ..Default::default()
            })
        } else {
            replica.receiver.on_chunk(storage, leader, &chunk)?
        };
        let body = proto::peer_message::Body::SnapshotChunkAck;
        let (ack, complete) = match received {
            ChunkOutcome::Ack(ack) => (ack, None),
            ChunkOutcome::Bad { ack, error } => {
                self.send_stream_message(range, leader, body(ack));
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
            ChunkOutcome::Complete { ack, staged, position } => (ack, Some((staged, position))),
        };
        self.send_stream_message(range, leader, body(ack));
        let Some((staged, position)) = complete else { return Ok(()) };
        let overlapping = staged.descriptor().and_then(|incoming| self.overlapping(range, incoming));
        let envelope = wire::install_snapshot_message(leader, self.membership.node_id, &chunk, position);
        let storage = self.storage.range_mut(range).expect("every replica's range is stored");
        if let Some(other) = overlapping {
            // Another range here holds some of its keys: the split that
            // separates them has yet to apply here. A later snapshot will do.
            info!(range, other, "not installing a snapshot whose keys another hosted range holds");
            return Ok(storage.clear_staging()?);
        }
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(error) => {
                storage.clear_staging()?;
                self.close_for_bad_input(token, &error);
                return Ok(());
            }
        };
        info!(range, leader, index = position.0, "received a snapshot in full");
        storage.offer_staged(staged);
        self.step(range, Input::Message(envelope))?;
        self.storage.range_mut(range).expect("every replica's range is stored").clear_staging()?;
        Ok(())
    }

    /// Another hosted range sharing a key with `incoming`, a descriptor of `range`.
    fn overlapping(&self, range: RangeId, incoming: &RangeDescriptor) -> Option<RangeId> {
        let other =
            |(&id, replica): (&RangeId, &Replica)| (id != range && replica.descriptor.overlaps(incoming)).then_some(id);
        self.replicas.iter().find_map(other)
    }

    // ----- telling operators -----

    /// The loop's state this turn, for the observer.
    fn turn(&self) -> Turn<'_> {
        Turn {
            node: self.first().map(|first| &first.node),
            ranges: self
                .replicas
                .values()
                .filter(|replica| !replica.descriptor.is_meta())
                .map(|replica| (&replica.descriptor, &replica.node))
                .collect(),
            meta: self.replicas.get(&META_RANGE_ID).map(|replica| (&replica.descriptor, &replica.node)),
            now: self.now(),
            storage: &self.storage,
            leader_address: self.leader_client_address(FIRST_RANGE_ID),
            shutting_down: self.shutting_down,
            snapshot_sends: (self.streams.started_count, self.streams.finished_count),
        }
    }

    fn leader_client_address(&self, range: RangeId) -> Option<&str> {
        let leader = self.replicas.get(&range).and_then(|replica| replica.node.leader_id())?;
        if leader == self.membership.node_id {
            return Some(&self.client_address);
        }
        self.peer_client_addresses.get(&leader).map(String::as_str)
    }

    fn observe(&self, urgent: bool) {
        self.observer.after_turn(&self.turn(), urgent);
    }

    // ----- answering clients -----

    fn answer_rejection(&mut self, range: RangeId, request: &ClientRequest, rejection: Rejection) {
        if range == META_RANGE_ID {
            self.forget_meta_asker(request, &rejection);
        }
        let (code, message) = match rejection {
            Rejection::NotLeader { .. } => (ErrorCode::NotLeader, "this node is not the leader".to_string()),
            Rejection::Overloaded => (ErrorCode::Overloaded, "the leader is overloaded; retry shortly".to_string()),
        };
        self.answer(range, (request.client_id, request.sequence), Err(Failure::new(code, message)));
    }

    /// Takes the requests waiting in `range` under `key`.
    fn take_waiters(&mut self, range: RangeId, key: (u64, u64)) -> Vec<Waiter> {
        let waiters = self.replicas.get_mut(&range).and_then(|replica| replica.waiting.remove(&key));
        let waiters = waiters.unwrap_or_default();
        self.waiting_count -= waiters.len();
        waiters
    }

    fn answer(&mut self, range: RangeId, key: (u64, u64), outcome: Result<Response, Failure>) {
        let waiters = self.take_waiters(range, key);
        if waiters.is_empty() {
            return;
        }
        let leader = self.leader_client_address(range).unwrap_or_default().to_string();
        for Waiter { token, request_id, operation, arrived } in waiters {
            let code = outcome.as_ref().map_or_else(|failure| failure.code, |_| ErrorCode::Ok);
            self.observer.metrics.request_answered(operation, code, arrived.elapsed());
            self.observer.count_request(range);
            let response = match &outcome {
                Ok(response) => proto::ClientResponse {
                    request_id,
                    error: ErrorCode::Ok as i32,
                    success: response.success,
                    found: response.found,
                    value: response.value.clone().into(),
                    term: response.term,
                    index: response.index,
                    ..Default::default()
                },
                Err(failure) => failure.to_response(request_id, &leader),
            };
            self.queue_to_client(token, &response);
        }
    }

    /// Answers the scan waiting under `key` with one page.
    fn answer_page(&mut self, range: RangeId, key: (u64, u64), page: ScanPage) {
        for Waiter { token, request_id, operation, arrived } in self.take_waiters(range, key) {
            self.observer.metrics.request_answered(operation, ErrorCode::Ok, arrived.elapsed());
            self.observer.count_request(range);
            let response = wire::scan_page_to_proto(request_id, page.clone());
            self.queue_to_client(token, &response);
        }
    }

    fn respond_error(&mut self, token: Token, request_id: u64, code: ErrorCode, message: String) {
        let response = proto::ClientResponse { request_id, error: code as i32, message, ..Default::default() };
        self.queue_to_client(token, &response);
    }

    fn respond_mismatch(&mut self, token: Token, request_id: u64, descriptors: Vec<RangeDescriptor>) {
        let message = if descriptors.is_empty() {
            "this node holds no range for the key; ask another node".to_string()
        } else {
            "the request's range does not hold its key at the epoch it names; route it by the descriptors".to_string()
        };
        let failure = Failure { descriptors, ..Failure::new(ErrorCode::RangeMismatch, message) };
        self.queue_to_client(token, &failure.to_response(request_id, ""));
    }

    fn queue_to_client(&mut self, token: Token, response: &proto::ClientResponse) {
        let Some(connection) = self.connections.get_mut(&token) else { return };
        if !connection.queue(response) {
            self.close(token, "client is not reading its responses");
        }
    }
}

/// Why a client request failed, as the client is told.
struct Failure {
    code: ErrorCode,
    message: String,
    /// With RANGE_MISMATCH: the ranges this node holds for the key.
    descriptors: Vec<RangeDescriptor>,
    /// With NOT_LEADER: the request is in the log and may still commit.
    proposed: bool,
}

impl Failure {
    fn new(code: ErrorCode, message: String) -> Failure {
        Failure { code, message, descriptors: Vec::new(), proposed: false }
    }

    /// The response; `leader` is the range leader's client address, sent with NOT_LEADER.
    fn to_response(&self, request_id: u64, leader: &str) -> proto::ClientResponse {
        proto::ClientResponse {
            request_id,
            error: self.code as i32,
            leader: if self.code == ErrorCode::NotLeader { leader.to_string() } else { String::new() },
            message: self.message.clone(),
            descriptors: self.descriptors.iter().map(RangeDescriptor::to_proto).collect(),
            proposed: self.proposed,
            ..Default::default()
        }
    }
}

/// Whether the peer at the end of `connection` takes `message`: the first
/// range's, which every daemon does, or another range's, which only one
/// that said it hosts many ranges does (`wire::FEATURE_RANGES`). Before
/// its handshake reply, a peer is not known to; the message is sent again.
fn takes_range(connection: &Connection, message: &proto::PeerMessage) -> bool {
    message.range_id == wire::DEFAULT_RANGE_ID || connection.hosts_ranges
}

/// The request's operation as an index into `metrics::OPERATIONS`.
fn operation_index(request: &proto::ClientRequest) -> usize {
    use proto::client_request::Operation as Wire;
    let name = match request.operation {
        Some(Wire::Set(_)) | None => "set",
        Some(Wire::Get(_)) => "get",
        Some(Wire::Cas(_)) => "cas",
        Some(Wire::Del(_)) => "del",
        Some(Wire::OpenSession(_)) => "open_session",
        Some(Wire::Split(_)) => "split",
        Some(Wire::Scan(_)) => "scan",
        Some(Wire::MetaUpdate(_)) => "meta_update",
        Some(Wire::MetaLookup(_)) => "meta_lookup",
    };
    OPERATIONS.iter().position(|operation| *operation == name).expect("every operation is listed")
}
