//! The simulated world: event queue, servers, clients, nemesis and checks.

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::clock::Clock;
use super::disk::Stored;
use super::disk::{Batch, Disk, Submitted};
use super::invariants::{check_leases, check_tiling, Breach, Invariants, Lease, PromiseView};
use super::nemesis::{self, NemesisKind, Target};
use super::network::{exponential, Network};
use super::workload::{key_bytes, Client, PendingOperation, Purpose};
use super::{SimConfig, EVENTS_PER_SEED_MAX, RANGES_MAX, SECOND_NS};
use bytes::Bytes;
use rasputin_checker as checker;
use rasputin_consensus::{ElectionMode, LogIndex, NodeId, Rejection, Role, Snapshot, Term};
use rasputin_kv::balance::{self, Leadership};
use rasputin_kv::operation::{
    ClientRequest, Entry, EntryPayload, Envelope, Input, Message, Node, Operation, ReadReady, Ready,
};
use rasputin_kv::range::{RangeDescriptor, RangeId, FIRST_RANGE_ID, META_RANGE_ID};
use rasputin_kv::state_machine::{self, KvStore, Refusal, Response};

/// One-way latency between a client and a node.
const CLIENT_LATENCY_NS: u64 = 300_000;
/// Search states the checker may visit per key before calling a history inconclusive.
const CHECKER_STATES_PER_KEY_MAX: u64 = 10_000_000;
/// How long a client waits before retrying after a "not leader" answer.
const REDIRECT_BACKOFF_NS: u64 = 2_000_000;

/// How often the split nemesis acts, at most, and at least.
const SPLIT_GAP_NS: std::ops::Range<u64> = 300_000_000..2_000_000_000;
/// The share of the split nemesis's actions that are leadership transfers.
const TRANSFER_SHARE: f64 = 0.4;
/// How often the leader balancer looks at who leads what.
const BALANCE_INTERVAL_NS: u64 = SECOND_NS;

mod meta_sync;

#[derive(Clone, Debug)]
enum Reply {
    Done(Response),
    Refused(Refusal),
    NotLeader(Option<NodeId>),
    Overloaded,
    /// The range asked for does not hold the key (or is not here, or has
    /// another epoch); these are the descriptors the node knows for the key.
    RangeMismatch(Vec<RangeDescriptor>),
}

/// A consensus message of one range, with the sender's picture of that
/// range, so that a node that has no replica of it can tell whether one of
/// its own ranges still covers those keys (a split it has yet to apply).
#[derive(Clone, Debug)]
struct RangeEnvelope {
    range: RangeId,
    span: RangeDescriptor,
    envelope: Envelope,
}

/// Where a client sends a request: a range it believes holds the key, at
/// the version it knows; or, with no route, it asks which range holds it.
#[derive(Clone, Debug)]
enum Destination {
    Range { range: RangeId, version: u64 },
    Lookup,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver(RangeEnvelope),
    Timer {
        node: usize,
        range: RangeId,
        generation: u64,
    },
    DiskSynced {
        node: usize,
        range: RangeId,
        incarnation: u64,
    },
    Request {
        node: usize,
        client: usize,
        destination: Destination,
        request: ClientRequest,
        attempt: u64,
    },
    Reply {
        client: usize,
        sequence: u64,
        attempt: u64,
        reply: Reply,
    },
    AttemptTimeout {
        client: usize,
        sequence: u64,
        attempt: u64,
    },
    Retry {
        client: usize,
        sequence: u64,
    },
    ClientStart {
        client: usize,
    },
    Nemesis,
    SplitNemesis,
    Balance,
    /// Every data leader whose last split the meta range may not hold yet sends it.
    MetaSync,
    /// A data range's leader at node `from` asks node `node` to record its
    /// last split in the meta range.
    MetaRequest {
        node: usize,
        from: usize,
        range: RangeId,
        term: Term,
        descriptors: Vec<RangeDescriptor>,
    },
    /// The meta range holds the split (or newer) that `range`'s leader in `term` sent.
    MetaConfirmed {
        node: usize,
        range: RangeId,
        term: Term,
        version: u64,
    },
}

impl Event {
    /// The node an event happens at, if it is one; such events wait while that node is paused.
    fn node(&self) -> Option<usize> {
        match self {
            Event::Deliver(delivery) => Some(delivery.envelope.to as usize - 1),
            Event::Timer { node, .. }
            | Event::DiskSynced { node, .. }
            | Event::Request { node, .. }
            | Event::MetaRequest { node, .. }
            | Event::MetaConfirmed { node, .. } => Some(*node),
            _ => None,
        }
    }
}

struct Scheduled {
    at_ns: u64,
    sequence: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ns, self.sequence) == (other.at_ns, other.sequence)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap pops the greatest, and we want the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at_ns, other.sequence).cmp(&(self.at_ns, self.sequence))
    }
}

/// A client request a replica accepted, to answer when it applies or is served.
struct Accepted {
    client: usize,
    attempt: u64,
    key: Bytes,
}

/// One node's replica of one range: its Harpoon group member, state machine and disk.
struct Replica {
    node: Option<Node>,
    kv: KvStore,
    disk: Disk,
    /// What the node knew of the range when a message made it create this
    /// replica empty, before any state arrived; kept across restarts.
    created_as: RangeDescriptor,
    /// The state machine as the latest split left it. A split's apply is
    /// made durable at once, with the new range's first state, so that a
    /// restart never finds the new range beside a parent that still holds
    /// its keys (the daemon syncs a split's write batch before going on).
    split_state: Option<KvStore>,
    /// A split applied in the step under way: its log is synced at the end
    /// of the step with its apply, as the daemon's one WAL would.
    split_applied: bool,
    timer_generation: u64,
    /// Client requests accepted: (client id, sequence) → who asked.
    pending: BTreeMap<(u64, u64), Accepted>,
    was_leader_in: Option<Term>,
    was_leader_elect_in: Option<Term>,
    /// A data leader's: (term, left version) of the last split the meta
    /// range told it that it holds. Lost with a crash: a new leader asks again.
    meta_confirmed: Option<(Term, u64)>,
    /// The meta range's: which data leader each MetaUpdate (by nonce) came from.
    meta_askers: BTreeMap<u64, meta_sync::MetaAsker>,
}

impl Replica {
    fn new(kv: KvStore, disk: Disk) -> Replica {
        Replica {
            node: None,
            created_as: kv.descriptor().clone(),
            split_state: None,
            split_applied: false,
            kv,
            disk,
            timer_generation: 0,
            pending: BTreeMap::new(),
            was_leader_in: None,
            was_leader_elect_in: None,
            meta_confirmed: None,
            meta_askers: BTreeMap::new(),
        }
    }

    /// Created empty by a message, and given no state yet: it serves nothing.
    fn is_empty(&self) -> bool {
        !self.kv.descriptor().is_original() && self.kv.applied_index() == 0
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("the replica's server is running")
    }

    /// Whether this replica holds keys of `span`, now or as it would
    /// restart from its disk (an install not yet synced may have narrowed
    /// it in memory only).
    fn covers_any(&self, span: &RangeDescriptor) -> bool {
        self.kv.descriptor().overlaps(span) || (!self.is_empty() && self.durable_descriptor().overlaps(span))
    }

    /// The descriptor this replica would restart with.
    fn durable_descriptor(&self) -> RangeDescriptor {
        let snapshot = self.disk.stored.snapshot.as_ref();
        let stored = snapshot.map(|snapshot| {
            let range = state_machine::snapshot_range(&snapshot.data).expect("the simulator wrote this snapshot");
            (snapshot.last_index, range.expect("the simulator's snapshots name their range"))
        });
        let split = self.split_state.as_ref().map(|state| (state.applied_index(), state.descriptor().clone()));
        match (stored, split) {
            (Some(stored), Some(split)) => std::cmp::max_by_key(stored, split, |(index, _)| *index).1,
            (Some((_, range)), None) | (None, Some((_, range))) => range,
            (None, None) => self.created_as.clone(),
        }
    }
}

struct Server {
    replicas: BTreeMap<RangeId, Replica>,
    running: bool,
    clock: Clock,
    incarnation: u64,
    paused: bool,
    stashed: Vec<Event>,
}

impl Server {
    fn replica(&mut self, range: RangeId) -> &mut Replica {
        self.replicas.get_mut(&range).expect("the simulator only addresses replicas it made")
    }

    /// What a RANGE_MISMATCH carries: the descriptor of the range asked
    /// for, if this server has it, and of the range that holds `key`.
    fn descriptors_for(&self, asked: Option<RangeId>, key: &[u8]) -> Vec<RangeDescriptor> {
        self.replicas
            .iter()
            .filter(|(&range, replica)| {
                let descriptor = replica.kv.descriptor();
                let holds_key = !descriptor.is_meta() && descriptor.contains(key);
                !replica.is_empty() && (Some(range) == asked || holds_key)
            })
            .map(|(_, replica)| replica.kv.descriptor().clone())
            .collect()
    }
}

/// What one seed's run produced.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub operations: usize,
    pub violation: Option<String>,
    pub trace: String,
    /// Leaders elected, as (true time, node, term).
    pub elections: Vec<(u64, NodeId, Term)>,
    /// Elections whose winner had to fetch its best voter's log first.
    pub fetching_elections: usize,
    /// True completion times of successful writes.
    pub write_completions_ns: Vec<u64>,
    /// The client history as JSON lines (docs/history.md), when asked for.
    pub history_json_lines: Option<Vec<u8>>,
    /// From healing to the first write invoked after it committing.
    pub recovery_ns: Option<u64>,
    /// Requests the state machine refused (expired sessions, above all).
    pub refusals: usize,
    pub faults: Vec<String>,
    /// Splits applied, each counted once however many replicas applied it.
    pub splits: usize,
    /// Leaders that handed their leadership over (released their promises).
    pub transfers: usize,
    /// Transfers the leader balancer asked for.
    pub balancing_moves: usize,
    /// With the balancer on: at the end, every node led within one range
    /// as many ranges as every other.
    pub leaders_balanced: Option<bool>,
    /// Splits the meta range recorded (each once, by the replica it reached).
    pub meta_updates: usize,
    /// Client route lookups the meta range answered.
    pub meta_lookups: usize,
}

pub(super) struct World<'a> {
    config: &'a SimConfig,
    rng: ChaCha8Rng,
    now_ns: u64,
    sequence: u64,
    events: u64,
    queue: BinaryHeap<Scheduled>,
    pub(super) network: Network,
    servers: Vec<Server>,
    clients: Vec<Client>,
    next_value: u64,
    history: Vec<checker::Operation>,
    /// Each range's checks.
    invariants: BTreeMap<RangeId, Invariants>,
    /// The id the split nemesis gives the next range.
    next_range_id: RangeId,
    /// Every descriptor a data range has had (its first, and each split's
    /// halves): the meta range may record only these.
    decided: HashSet<RangeDescriptor>,
    active_fault: Option<ActiveFault>,
    fault_phase_over: bool,
    healed_at_ns: u64,
    end_ns: u64,
    report: SeedReport,
}

enum ActiveFault {
    Network,
    Crashed(Vec<usize>),
    Paused(Vec<usize>),
    Clock(usize),
    /// A skewed clock and a network fault, healed together.
    SkewedNetwork(usize),
}

/// Runs one seed to completion, with every check. A panic inside consensus
/// or the simulator is reported as a violation, so that the seed replays it.
pub fn run_seed(config: &SimConfig, seed: u64) -> SeedReport {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut world = World::new(config, seed);
        world.start_nodes();
        world.start_clients();
        if !config.nemeses.is_empty() {
            world.schedule(SECOND_NS, Event::Nemesis);
        }
        if config.splits {
            world.schedule(SECOND_NS, Event::SplitNemesis);
        }
        if config.balance_leaders {
            world.schedule(SECOND_NS, Event::Balance);
        }
        world.end_ns = config.fault_phase_ns + config.recovery_phase_ns;
        world.run_and_check()
    }));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_else(|| "panic without a message".to_string());
        SeedReport { seed, violation: Some(format!("panic: {message}")), ..SeedReport::default() }
    })
}

impl<'a> World<'a> {
    pub(super) fn new(config: &'a SimConfig, seed: u64) -> World<'a> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let servers = (0..config.nodes)
            .map(|_| {
                let rate = 1.0 + rng.gen_range(-config.clock_epsilon..=config.clock_epsilon);
                let offset = rng.gen_range(0..1_000 * SECOND_NS);
                let first = Replica::new(config.store(config.first_range()), Disk::default());
                let mut replicas = BTreeMap::from([(FIRST_RANGE_ID, first)]);
                if config.splits {
                    replicas.insert(META_RANGE_ID, Replica::new(config.store(config.meta_range()), Disk::default()));
                }
                Server {
                    replicas,
                    running: false,
                    clock: Clock::new(offset, rate),
                    incarnation: 0,
                    paused: false,
                    stashed: Vec::new(),
                }
            })
            .collect();
        let clients = (0..config.clients)
            .map(|index| Client::new(index, config.keys, index % config.nodes, config.first_range()))
            .collect();
        let mut invariants = BTreeMap::from([(FIRST_RANGE_ID, Invariants::default())]);
        if config.splits {
            invariants.insert(META_RANGE_ID, Invariants::default());
        }
        World {
            config,
            rng,
            now_ns: 0,
            sequence: 0,
            events: 0,
            queue: BinaryHeap::new(),
            network: Network::new(config.nodes, config.network.clone()),
            servers,
            clients,
            next_value: 0,
            history: Vec::new(),
            invariants,
            next_range_id: FIRST_RANGE_ID + 1,
            decided: HashSet::from([config.first_range()]),
            active_fault: None,
            fault_phase_over: false,
            healed_at_ns: config.fault_phase_ns,
            end_ns: u64::MAX,
            report: SeedReport { seed, ..SeedReport::default() },
        }
    }

    pub(super) fn start_nodes(&mut self) {
        for index in 0..self.config.nodes {
            self.start_node(index);
        }
        if self.config.splits {
            // Data leaders record their splits in the meta range by rounds.
            self.schedule(meta_sync::META_SYNC_INTERVAL_NS, Event::MetaSync);
        }
    }

    pub(super) fn start_clients(&mut self) {
        for client in 0..self.config.clients {
            let delay = self.rng.gen_range(0..self.config.client_think_ns.max(1));
            self.schedule(delay, Event::ClientStart { client });
        }
    }

    pub(super) fn set_end(&mut self, end_ns: u64, healed_at_ns: u64) {
        self.end_ns = end_ns;
        self.healed_at_ns = healed_at_ns;
        self.fault_phase_over = true;
    }

    fn schedule(&mut self, delay_ns: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Scheduled { at_ns: self.now_ns + delay_ns, sequence: self.sequence, event });
    }

    fn run_and_check(mut self) -> SeedReport {
        if let Err(breach) = self.run_until(self.end_ns) {
            self.report.violation = Some(breach);
            return self.report;
        }
        self.finish()
    }

    /// Processes events up to `until_ns`, checking the invariants after each.
    pub(super) fn run_until(&mut self, until_ns: u64) -> Result<(), Breach> {
        while let Some(next) = self.queue.peek() {
            if next.at_ns > until_ns {
                break;
            }
            let Scheduled { at_ns, event, .. } = self.queue.pop().expect("peeked");
            self.now_ns = at_ns;
            self.events += 1;
            if self.events > EVENTS_PER_SEED_MAX {
                return Err(format!("more than {EVENTS_PER_SEED_MAX} events: the run is stuck"));
            }
            if self.config.record_trace {
                let _ = writeln!(self.report.trace, "{at_ns} {event:?}");
            }
            self.handle(event)?;
            self.check_leases()?;
        }
        self.now_ns = self.now_ns.max(until_ns);
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), Breach> {
        if let Some(node) = event.node() {
            let server = &mut self.servers[node];
            if !server.running {
                return Ok(());
            }
            if server.paused {
                server.stashed.push(event);
                return Ok(());
            }
        }
        match event {
            Event::Deliver(delivery) => self.on_deliver(delivery),
            Event::Timer { node, range, generation } => {
                if generation != self.servers[node].replica(range).timer_generation {
                    return Ok(());
                }
                self.step(node, range, Input::Tick)
            }
            Event::DiskSynced { node, range, incarnation } => self.on_disk_synced(node, range, incarnation),
            Event::Request { node, client, destination, request, attempt } => {
                self.on_request(node, client, destination, request, attempt)
            }
            Event::Reply { client, sequence, attempt, reply } => {
                self.on_reply(client, sequence, attempt, reply);
                Ok(())
            }
            Event::AttemptTimeout { client, sequence, attempt } => {
                self.on_attempt_timeout(client, sequence, attempt);
                Ok(())
            }
            Event::Retry { client, sequence } => {
                if self.clients[client].pending.as_ref().is_some_and(|op| op.request.sequence == sequence) {
                    self.send_attempt(client);
                }
                Ok(())
            }
            Event::ClientStart { client } => {
                self.on_client_start(client);
                Ok(())
            }
            Event::Nemesis => self.on_nemesis(),
            Event::SplitNemesis => self.on_split_nemesis(),
            Event::Balance => self.on_balance(),
            Event::MetaSync => self.on_meta_sync(),
            Event::MetaRequest { node, from, range, term, descriptors } => {
                self.on_meta_request(node, from, range, term, descriptors)
            }
            Event::MetaConfirmed { node, range, term, version } => {
                self.on_meta_confirmed(node, range, term, version);
                Ok(())
            }
        }
    }

    // ----- servers -----

    /// Starts every replica the server's disks hold, the first range first.
    fn start_node(&mut self, index: usize) {
        self.servers[index].running = true;
        self.servers[index].incarnation += 1;
        let ranges: Vec<RangeId> = self.servers[index].replicas.keys().copied().collect();
        for range in ranges {
            self.start_replica(index, range);
        }
    }

    fn start_replica(&mut self, index: usize, range: RangeId) {
        let seed = self.rng.gen();
        let config = self.config.consensus_config(index as u64 + 1);
        let local = self.servers[index].clock.local(self.now_ns);
        let replica = self.servers[index].replica(range);
        let mut recovered = replica.disk.stored.recover();
        replica.kv = match &recovered.snapshot {
            Some(snapshot) => self.config.restored_store(&snapshot.data).expect("the simulator wrote this snapshot"),
            None => self.config.store(replica.created_as.clone()),
        };
        if let Some(split_state) =
            replica.split_state.as_ref().filter(|split| split.applied_index() > replica.kv.applied_index())
        {
            replica.kv = split_state.clone();
        }
        if replica.is_empty() {
            // It knows nothing of the range yet: it must not campaign
            // until a leader has sent it the range's state, and it votes
            // only for a candidate that holds some of the range's log.
            recovered.votes_withheld_until = Some((0, 1));
        }
        replica.node = Some(Node::new(config, recovered, seed, local).expect("simulator config is valid"));
        replica.was_leader_in = None;
        self.step(index, range, Input::Tick).expect("a fresh node breaks no invariant");
    }

    fn crash(&mut self, index: usize) {
        let server = &mut self.servers[index];
        server.running = false;
        for replica in server.replicas.values_mut() {
            replica.node = None;
            replica.disk.crash();
            replica.pending.clear();
            replica.meta_confirmed = None;
            replica.meta_askers.clear();
            replica.timer_generation += 1;
        }
        if server.paused && self.config.pause_freezes_clock {
            server.clock.thaw(self.now_ns);
        }
        server.paused = false;
        server.stashed.clear();
    }

    fn on_deliver(&mut self, delivery: RangeEnvelope) -> Result<(), Breach> {
        let RangeEnvelope { range, span, envelope } = delivery;
        let node = envelope.to as usize - 1;
        if self.network.is_cut(envelope.from as usize - 1, node) {
            return Ok(());
        }
        if self.would_overlap(node, range, &envelope) {
            // The node holds those keys in another range: installing this
            // snapshot would cover them twice. A later one, taken after the
            // split that separates the two, will do.
            return Ok(());
        }
        if !self.servers[node].replicas.contains_key(&range) {
            let server = &self.servers[node];
            if server.replicas.values().any(|replica| replica.covers_any(&span)) {
                // One of this node's ranges still holds those keys: the split
                // that made this range has yet to apply here, and will make it.
                return Ok(());
            }
            let kv = self.config.store(span);
            self.servers[node].replicas.insert(range, Replica::new(kv, Disk::default()));
            self.start_replica(node, range);
        }
        self.step(node, range, Input::Message(envelope))
    }

    /// Whether `envelope` is a snapshot of `range` whose keys one of the
    /// node's other ranges already holds.
    fn would_overlap(&self, node: usize, range: RangeId, envelope: &Envelope) -> bool {
        let Message::InstallSnapshot { snapshot, .. } = &envelope.message else { return false };
        let Ok(Some(incoming)) = state_machine::snapshot_range(&snapshot.data) else { return false };
        self.servers[node].replicas.iter().any(|(&other, replica)| other != range && replica.covers_any(&incoming))
    }

    fn step(&mut self, index: usize, range: RangeId, input: Input) -> Result<(), Breach> {
        let server = &mut self.servers[index];
        let local = server.clock.local(self.now_ns);
        let replica = server.replicas.get_mut(&range).expect("stepping a replica the simulator made");
        let node = replica.node.as_mut().expect("stepping a running node");
        let before = PromiseView::of(node, local);
        let ready = node.step(local, input);
        let invariants = self.invariants.get_mut(&range).expect("a range's checks exist from its split on");
        invariants.on_step(&before, node)?;
        self.after_step(index, range, ready)
    }

    fn range_invariants(&mut self, range: RangeId) -> &mut Invariants {
        self.invariants.get_mut(&range).expect("a range's checks exist from its split on")
    }

    fn after_step(&mut self, index: usize, range: RangeId, ready: Ready) -> Result<(), Breach> {
        self.observe_roles(index, range, &ready)?;
        let id = index as NodeId + 1;
        let Ready { persist, send, send_after_persist, apply, reads, rejected, refused, next_deadline } = ready;
        if let Some((from, error)) = refused.first() {
            return Err(format!(
                "node {id} refused a message of range {range} from node {from}, which a correct node never sends: {error}"
            ));
        }
        if let Some(snapshot) = &persist.snapshot {
            self.servers[index].replica(range).kv =
                self.config.restored_store(&snapshot.data).expect("snapshots come from peers' stores");
        }
        let replica = self.servers[index].replica(range);
        let leader_term = replica.node.as_ref().filter(|node| node.role() == Role::Leader).map(Node::term);
        for entry in &apply {
            self.range_invariants(range).on_apply(id, entry, leader_term)?;
            self.apply(index, range, entry)?;
        }
        self.serve_reads(index, range, reads)?;
        for (request, rejection) in rejected {
            self.reject(index, range, request, rejection);
        }
        if send.iter().any(|envelope| matches!(envelope.message, Message::Release { .. })) {
            self.report.transfers += 1;
        }
        for envelope in send {
            self.transmit(range, envelope);
        }
        let sync_ns = self.config.sync_ns;
        let incarnation = self.servers[index].incarnation;
        let batch = Batch { persist, send_after: send_after_persist };
        match self.servers[index].replica(range).disk.submit(batch, self.now_ns, sync_ns) {
            Submitted::SendNow(envelopes) => envelopes.into_iter().for_each(|envelope| self.transmit(range, envelope)),
            Submitted::SyncAt(at_ns) => {
                self.schedule(at_ns - self.now_ns, Event::DiskSynced { node: index, range, incarnation })
            }
            Submitted::Queued => {}
        }
        let replica = self.servers[index].replica(range);
        if std::mem::take(&mut replica.split_applied) {
            replica.disk.write_pending_now();
        }
        self.set_timer(index, range, next_deadline);
        self.maybe_compact(index, range)
    }

    /// Checks a new leader, counts elections, and checks that the node's
    /// ranges still cover each key at most once.
    fn observe_roles(&mut self, index: usize, range: RangeId, ready: &Ready) -> Result<(), Breach> {
        let id = index as NodeId + 1;
        let replica = self.servers[index].replica(range);
        let node = replica.node.as_ref().expect("running");
        let (role, term) = (node.role(), node.term());
        let new_leader = role == Role::Leader && replica.was_leader_in != Some(term);
        let new_leader_elect = role == Role::LeaderElect && replica.was_leader_elect_in != Some(term);
        if new_leader {
            replica.was_leader_in = Some(term);
        }
        if new_leader_elect {
            replica.was_leader_elect_in = Some(term);
        }
        let node = self.servers[index].replica(range).node.as_ref().expect("running");
        let invariants = self.invariants.get_mut(&range).expect("a range's checks exist from its split on");
        invariants.on_persisted_entries(node, &ready.persist.entries)?;
        if new_leader {
            invariants.on_leader(node)?;
            if range == FIRST_RANGE_ID {
                self.report.elections.push((self.now_ns, id, term));
            }
        }
        if new_leader_elect && range == FIRST_RANGE_ID {
            self.report.fetching_elections += 1;
        }
        let server = &self.servers[index];
        let descriptors: Vec<&RangeDescriptor> = server
            .replicas
            .values()
            .filter(|replica| !replica.is_empty())
            .map(|replica| replica.kv.descriptor())
            .collect();
        check_tiling(id, &descriptors)
    }

    fn set_timer(&mut self, index: usize, range: RangeId, deadline: u64) {
        let server = &mut self.servers[index];
        let at_ns = server.clock.true_at(deadline, self.now_ns).max(self.now_ns + 1);
        let replica = server.replica(range);
        replica.timer_generation += 1;
        let generation = replica.timer_generation;
        self.schedule(at_ns - self.now_ns, Event::Timer { node: index, range, generation });
    }

    fn on_disk_synced(&mut self, index: usize, range: RangeId, incarnation: u64) -> Result<(), Breach> {
        if self.servers[index].incarnation != incarnation {
            return Ok(());
        }
        let batches = self.servers[index].replica(range).disk.complete_sync();
        let mut position = None;
        for batch in batches {
            position = batch.persist.last_position().or(position);
            for envelope in batch.send_after {
                self.transmit(range, envelope);
            }
        }
        match position {
            Some((index_synced, term)) => self.step(index, range, Input::Persisted { index: index_synced, term }),
            None => Ok(()),
        }
    }

    fn maybe_compact(&mut self, index: usize, range: RangeId) -> Result<(), Breach> {
        let (now_ns, sync_ns, every) = (self.now_ns, self.config.sync_ns, self.config.snapshot_every_entries);
        let incarnation = self.servers[index].incarnation;
        let replica = self.servers[index].replica(range);
        let applied = replica.kv.applied_index();
        // After a restart the state may run ahead of what consensus has applied again.
        let behind = replica.node().applied_index() < applied;
        if behind || applied < replica.node().log().snapshot_index() + every {
            return Ok(());
        }
        let snapshot =
            Snapshot { last_index: applied, last_term: replica.kv.applied_term(), data: replica.kv.snapshot().into() };
        let persist = rasputin_kv::operation::Persist { snapshot: Some(snapshot.clone()), ..Default::default() };
        if let Submitted::SyncAt(at_ns) =
            replica.disk.submit(Batch { persist, send_after: Vec::new() }, now_ns, sync_ns)
        {
            self.schedule(at_ns - now_ns, Event::DiskSynced { node: index, range, incarnation });
        }
        self.step(index, range, Input::Compact(snapshot))
    }

    fn apply(&mut self, index: usize, range: RangeId, entry: &Entry) -> Result<(), Breach> {
        let replica = self.servers[index].replica(range);
        if entry.index <= replica.kv.applied_index() {
            // Already covered by a snapshot this server restored.
            return Ok(());
        }
        let meta_before = replica.kv.meta_records().cloned();
        let applied = replica.kv.apply(entry);
        if let Some(right) = replica.kv.take_split_off() {
            replica.split_state = Some(replica.kv.clone());
            replica.split_applied = true;
            self.decided.extend(replica.kv.split_outcome().into_iter().flatten().cloned());
            self.start_split_off(index, range, right)?;
        }
        if let Some(before) = meta_before {
            return self.on_meta_applied(index, &before, applied);
        }
        let (Some(applied), EntryPayload::Command(_)) = (applied, &entry.payload) else { return Ok(()) };
        let replica = self.servers[index].replica(range);
        let Some(accepted) = replica.pending.remove(&(applied.client_id, applied.sequence)) else { return Ok(()) };
        let reply = match applied.outcome {
            Ok(response) => Reply::Done(response),
            Err(Refusal::RangeMismatch { .. }) => {
                Reply::RangeMismatch(self.servers[index].descriptors_for(Some(range), &accepted.key))
            }
            Err(refusal) => Reply::Refused(refusal),
        };
        self.reply(accepted.client, applied.sequence, accepted.attempt, reply);
        Ok(())
    }

    /// A split applied on this replica of `parent`: starts this node's
    /// replica of the new range, unless it has one already (restarted, it
    /// replays splits it made before).
    fn start_split_off(&mut self, index: usize, parent: RangeId, right: KvStore) -> Result<(), Breach> {
        let range = right.descriptor().id;
        let base: LogIndex = right.applied_index();
        if !self.invariants.contains_key(&range) {
            self.invariants.insert(range, Invariants::after(base));
            self.report.splits += 1;
        }
        if self.servers[index].replicas.contains_key(&range) {
            return Ok(());
        }
        let seed = self.rng.gen();
        let snapshot = Snapshot { last_index: base, last_term: right.applied_term(), data: right.snapshot().into() };
        let parent_node = self.servers[index].replica(parent).node();
        let node = parent_node.split_off(snapshot.clone(), seed).map_err(|error| error.to_string())?;
        // Made durable with the parent's applied index, as the daemon writes both in one batch.
        let stored = Stored { hard_state: node.hard_state(), snapshot: Some(snapshot), entries: Vec::new() };
        let mut replica = Replica::new(right, Disk::holding(stored));
        replica.node = Some(node);
        self.servers[index].replicas.insert(range, replica);
        self.step(index, range, Input::Tick)
    }

    /// Answers reads whose index the same Ready's entries have just applied.
    fn serve_reads(&mut self, index: usize, range: RangeId, reads: Vec<ReadReady>) -> Result<(), Breach> {
        for read in reads {
            let server = &mut self.servers[index];
            let replica = server.replica(range);
            let applied = replica.kv.applied_index();
            if read.read_index > applied {
                return Err(format!(
                    "node {} released a read of range {range} at {} before applying it ({applied})",
                    index + 1,
                    read.read_index
                ));
            }
            let key = (read.request.client_id, read.request.sequence);
            let Some(accepted) = replica.pending.remove(&key) else { continue };
            let reply = match &read.request.operation {
                Operation::MetaLookup { key, limit } => {
                    self.report.meta_lookups += 1;
                    Reply::RangeMismatch(replica.kv.lookup(key, *limit).expect("lookups go to the meta range only"))
                }
                operation => match replica.kv.read(operation.key()) {
                    Ok(response) => Reply::Done(response),
                    Err(_) => Reply::RangeMismatch(server.descriptors_for(Some(range), &accepted.key)),
                },
            };
            self.reply(accepted.client, read.request.sequence, accepted.attempt, reply);
        }
        Ok(())
    }

    fn reject(&mut self, index: usize, range: RangeId, request: ClientRequest, rejection: Rejection) {
        self.forget_meta_asker(index, range, &request);
        let key = (request.client_id, request.sequence);
        if let Some(accepted) = self.servers[index].replica(range).pending.remove(&key) {
            let reply = match rejection {
                Rejection::NotLeader { leader } => Reply::NotLeader(leader),
                Rejection::Overloaded => Reply::Overloaded,
            };
            self.reply(accepted.client, request.sequence, accepted.attempt, reply);
        }
    }

    fn reply(&mut self, client: usize, sequence: u64, attempt: u64, reply: Reply) {
        self.schedule(CLIENT_LATENCY_NS, Event::Reply { client, sequence, attempt, reply });
    }

    fn transmit(&mut self, range: RangeId, mut envelope: Envelope) {
        let (from, to) = (envelope.from as usize - 1, envelope.to as usize - 1);
        let kv = &self.servers[from].replica(range).kv;
        if let Message::InstallSnapshot { snapshot, .. } = &mut envelope.message {
            // As the daemon does, a snapshot is sent of the state now, not
            // of the last compaction: an old one could name bounds that
            // later splits have narrowed, and be refused for overlapping them.
            *snapshot =
                Snapshot { last_index: kv.applied_index(), last_term: kv.applied_term(), data: kv.snapshot().into() };
        }
        let span = kv.descriptor().clone();
        let copies = if self.network.duplicate(&mut self.rng) { 2 } else { 1 };
        let held_ns = self.network.hold(&mut self.rng, from, to, envelope.message.kind());
        for _ in 0..copies {
            if let Some(delay) = self.network.delay(&mut self.rng, from, to) {
                let delivery = RangeEnvelope { range, span: span.clone(), envelope: envelope.clone() };
                self.schedule(delay + held_ns, Event::Deliver(delivery));
            }
        }
    }

    fn on_request(
        &mut self,
        index: usize,
        client: usize,
        destination: Destination,
        request: ClientRequest,
        attempt: u64,
    ) -> Result<(), Breach> {
        let server = &mut self.servers[index];
        let key = Bytes::copy_from_slice(request.operation.key());
        let Destination::Range { range, version } = destination else {
            return self.look_up(index, client, request, attempt);
        };
        let keyless = matches!(request.operation, Operation::OpenSession);
        let holds = server.replicas.get(&range).is_some_and(|replica| {
            let descriptor = replica.kv.descriptor();
            !replica.is_empty() && descriptor.epoch.version == version && (keyless || descriptor.contains(&key))
        });
        if !holds {
            let known = server.descriptors_for(Some(range), &key);
            self.reply(client, request.sequence, attempt, Reply::RangeMismatch(known));
            return Ok(());
        }
        let accepted = Accepted { client, attempt, key };
        server.replica(range).pending.insert((request.client_id, request.sequence), accepted);
        self.step(index, range, Input::Client(request))
    }

    /// At most one valid lease covers any key, checked at true time.
    fn check_leases(&self) -> Result<(), Breach> {
        if self.config.mode != ElectionMode::Harpoon {
            return Ok(());
        }
        let mut leases = Vec::new();
        for server in self.servers.iter().filter(|server| server.running) {
            let local = server.clock.local(self.now_ns);
            for (&range, replica) in &server.replicas {
                let node = replica.node();
                if node.holds_lease(local) {
                    let serving = node.serves_lease_reads(local);
                    leases.push(Lease { node: node.id(), range, descriptor: replica.kv.descriptor(), serving });
                }
            }
        }
        check_leases(&leases, self.now_ns)
    }

    /// The leader of the first range, which the nemesis aims its faults at.
    pub(super) fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(index, server)| {
                let node = server.replicas[&FIRST_RANGE_ID].node.as_ref()?;
                (node.role() == Role::Leader && !server.paused).then_some((node.term(), index))
            })
            .max()
            .map(|(_, index)| index)
    }

    /// The running, unpaused leader of the range that holds `key`, with that range.
    fn leader_for(&self, key: &[u8]) -> Option<(usize, RangeDescriptor)> {
        let mut best: Option<(Term, usize, &RangeDescriptor)> = None;
        for (index, server) in self.servers.iter().enumerate().filter(|(_, server)| server.running && !server.paused) {
            let holds =
                |replica: &&Replica| !replica.kv.descriptor().is_meta() && replica.kv.descriptor().contains(key);
            for replica in server.replicas.values().filter(holds) {
                let node = replica.node();
                if node.role() == Role::Leader && best.is_none_or(|(term, _, _)| node.term() > term) {
                    best = Some((node.term(), index, replica.kv.descriptor()));
                }
            }
        }
        best.map(|(_, index, descriptor)| (index, descriptor.clone()))
    }

    // ----- the leader balancer -----

    /// Every range's leader: the running, unpaused replica that leads the
    /// highest term; ranges with none are left out.
    fn leaderships(&self) -> Vec<Leadership> {
        let mut best: BTreeMap<RangeId, (Term, NodeId, Vec<NodeId>)> = BTreeMap::new();
        for (index, server) in self.servers.iter().enumerate().filter(|(_, server)| server.running && !server.paused) {
            for (&range, replica) in &server.replicas {
                let Some(node) = replica.node.as_ref().filter(|node| node.role() == Role::Leader) else { continue };
                if best.get(&range).is_none_or(|(term, _, _)| node.term() > *term) {
                    let replicas = replica.kv.descriptor().replicas.clone();
                    best.insert(range, (node.term(), index as NodeId + 1, replicas));
                }
            }
        }
        best.into_iter().map(|(range, (_, leader, replicas))| Leadership { range, leader, replicas }).collect()
    }

    /// A balancing round: the moves of `balance::balancing_moves`, carried
    /// out as leadership transfers, among the nodes that run.
    fn on_balance(&mut self) -> Result<(), Breach> {
        self.schedule(BALANCE_INTERVAL_NS, Event::Balance);
        let live: Vec<NodeId> = (0..self.servers.len())
            .filter(|&index| self.servers[index].running && !self.servers[index].paused)
            .map(|index| index as NodeId + 1)
            .collect();
        for step in balance::balancing_moves(&self.leaderships(), &live) {
            self.report.balancing_moves += 1;
            self.step(step.from as usize - 1, step.range, Input::TransferLeadership { to: step.to })?;
        }
        Ok(())
    }

    /// Whether each node leads within one range as many as each other.
    fn leaders_balanced(&self) -> bool {
        let leaderships = self.leaderships();
        let counts: Vec<usize> = (1..=self.servers.len() as NodeId)
            .map(|node| leaderships.iter().filter(|leadership| leadership.leader == node).count())
            .collect();
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1
    }

    // ----- the split nemesis -----

    /// Now and then asks the leader of a random key's range to split it
    /// there, or to hand its leadership to another replica, during
    /// whatever other fault is under way.
    fn on_split_nemesis(&mut self) -> Result<(), Breach> {
        if self.now_ns >= self.config.fault_phase_ns {
            return Ok(());
        }
        let gap = self.rng.gen_range(SPLIT_GAP_NS);
        self.schedule(gap, Event::SplitNemesis);
        let key = key_bytes(self.rng.gen_range(0..self.config.keys));
        let ranges = self.invariants.len();
        let Some((index, descriptor)) = self.leader_for(&key) else { return Ok(()) };
        if self.rng.gen_bool(TRANSFER_SHARE) {
            let others = self.servers.len() as NodeId - 1;
            let to = (index as NodeId + self.rng.gen_range(1..=others)) % self.servers.len() as NodeId + 1;
            self.report.faults.push(format!("{} transfer range {} to node {to}", self.now_ns, descriptor.id));
            return self.step(index, descriptor.id, Input::TransferLeadership { to });
        }
        if ranges >= RANGES_MAX || key == descriptor.start || !self.meta_holds_last_split(index, descriptor.id) {
            return Ok(());
        }
        self.propose_split(index, &descriptor, key)
    }

    /// Asks the range's leader at `index` to split it at `key`, into a range with a new id.
    fn propose_split(&mut self, index: usize, descriptor: &RangeDescriptor, key: Bytes) -> Result<(), Breach> {
        let right_range = self.next_range_id;
        self.next_range_id += 1;
        let version = descriptor.epoch.version;
        let operation = Operation::Split { key: key.clone(), right_range, version };
        let request = ClientRequest { client_id: 0, sequence: u64::MAX - right_range, operation };
        self.report.faults.push(format!("{} split range {} at {key:?} into {right_range}", self.now_ns, descriptor.id));
        self.step(index, descriptor.id, Input::Client(request))
    }

    // ----- clients -----

    fn on_client_start(&mut self, client: usize) {
        if self.now_ns >= self.end_ns {
            return;
        }
        let operation = self.clients[client].next_operation(
            &mut self.rng,
            &mut self.next_value,
            self.now_ns,
            self.config.operation_timeout_ns,
        );
        self.clients[client].pending = Some(operation);
        self.send_attempt(client);
    }

    /// Sends the pending operation's next attempt to the range its key lies
    /// in by the client's routes; with no route, asks a node which range
    /// holds the key. A workload operation takes its session identity at its
    /// first send to a range and keeps it for every retry. If the client has
    /// no session in that range, it drops the operation, which went nowhere,
    /// and opens one.
    fn send_attempt(&mut self, client: usize) {
        let (now_ns, timeout_ns) = (self.now_ns, self.config.operation_timeout_ns);
        let state = &mut self.clients[client];
        let mut operation = state.pending.take().expect("an operation is pending");
        let (node, destination) = match &operation.purpose {
            Purpose::OpenSession { range } => {
                let Some(route) = state.routes.for_range(*range) else {
                    // The range has split since: open sessions in what the client learns next.
                    self.schedule_next_operation(client);
                    return;
                };
                (route.target, Destination::Range { range: *range, version: route.descriptor.epoch.version })
            }
            Purpose::Workload { key, .. } => match state.routes.for_key(&key_bytes(*key)) {
                None => (state.lookup_target, Destination::Lookup),
                Some(route) => {
                    let (range, target, version) = (route.descriptor.id, route.target, route.descriptor.epoch.version);
                    if !operation.is_bound() && !state.bind(&mut operation, range) {
                        state.pending = Some(state.open_session(range, now_ns, timeout_ns));
                        return self.send_attempt(client);
                    }
                    (target, Destination::Range { range, version })
                }
            },
        };
        operation.range = match destination {
            Destination::Range { range, .. } => range,
            Destination::Lookup => 0,
        };
        operation.target = node;
        operation.attempt += 1;
        let (request, attempt, sequence) = (operation.request.clone(), operation.attempt, operation.request.sequence);
        state.pending = Some(operation);
        self.schedule(CLIENT_LATENCY_NS, Event::Request { node, client, destination, request, attempt });
        self.schedule(self.config.attempt_timeout_ns, Event::AttemptTimeout { client, sequence, attempt });
    }

    /// Points the route of the operation's range (or the lookups) at another node.
    fn redirect(&mut self, client: usize, leader: Option<NodeId>) {
        let nodes = self.config.nodes;
        let state = &mut self.clients[client];
        let range = state.pending.as_ref().expect("pending").range;
        let next = |target: usize| leader.map_or((target + 1) % nodes, |leader| leader as usize - 1);
        match state.routes.for_range(range) {
            Some(route) if range != 0 => route.target = next(route.target),
            _ => state.lookup_target = next(state.lookup_target),
        }
    }

    fn on_reply(&mut self, client: usize, sequence: u64, attempt: u64, reply: Reply) {
        let Some(operation) = self.clients[client].pending.as_ref() else { return };
        if operation.request.sequence != sequence {
            return;
        }
        let current_attempt = operation.attempt;
        match reply {
            Reply::Done(response) => self.complete(client, response),
            Reply::Refused(refusal) => self.on_refused(client, refusal),
            Reply::RangeMismatch(descriptors) => {
                self.on_range_mismatch(client, attempt == current_attempt, descriptors)
            }
            Reply::NotLeader(_) | Reply::Overloaded if attempt != current_attempt => {}
            Reply::NotLeader(leader) => {
                self.redirect(client, leader);
                self.retry_later(client, REDIRECT_BACKOFF_NS);
            }
            Reply::Overloaded => self.retry_later(client, 10 * REDIRECT_BACKOFF_NS),
        }
    }

    /// The attempt went to a range that does not hold the key (any more),
    /// or asked which one does: the client learns what the node knew and
    /// tries again. The attempt was not applied.
    fn on_range_mismatch(&mut self, client: usize, current: bool, descriptors: Vec<RangeDescriptor>) {
        let state = &mut self.clients[client];
        let target = state.pending.as_ref().expect("pending").target;
        let mut news = false;
        for descriptor in descriptors {
            news |= state.routes.learn(descriptor, target);
        }
        if !current {
            return;
        }
        if !news {
            // The node knows less than the client: it lags, so ask another.
            self.redirect(client, None);
        }
        self.retry_later(client, REDIRECT_BACKOFF_NS);
    }

    fn retry_later(&mut self, client: usize, backoff_ns: u64) {
        let operation = self.clients[client].pending.as_ref().expect("pending");
        if self.now_ns + backoff_ns >= operation.deadline_ns {
            self.give_up(client);
            return;
        }
        let sequence = operation.request.sequence;
        self.schedule(backoff_ns, Event::Retry { client, sequence });
    }

    fn on_attempt_timeout(&mut self, client: usize, sequence: u64, attempt: u64) {
        let state = &mut self.clients[client];
        let Some(operation) = state.pending.as_mut() else { return };
        if operation.request.sequence != sequence || operation.attempt != attempt {
            return;
        }
        // An attempt sent to a range may have reached a leader that appended it.
        operation.maybe_applied |= !operation.request.operation.is_read() && operation.range != 0;
        let deadline_ns = operation.deadline_ns;
        self.redirect(client, None);
        if self.now_ns >= deadline_ns {
            self.give_up(client);
        } else {
            self.send_attempt(client);
        }
    }

    fn complete(&mut self, client: usize, response: Response) {
        let operation = self.clients[client].pending.take().expect("pending");
        let Purpose::Workload { key, input } = &operation.purpose else {
            // The answer's index is the new session's id.
            if let Purpose::OpenSession { range } = operation.purpose {
                self.clients[client].sessions.insert(range, response.index);
            }
            self.schedule_next_operation(client);
            return;
        };
        let output = self.clients[client].observe(*key, input, &response);
        if !operation.request.operation.is_read() {
            self.report.write_completions_ns.push(self.now_ns);
            if operation.invoked_at_ns >= self.healed_at_ns && self.fault_phase_over {
                let since_heal_ns = self.now_ns - self.healed_at_ns;
                self.report.recovery_ns =
                    Some(self.report.recovery_ns.map_or(since_heal_ns, |ns| ns.min(since_heal_ns)));
            }
        }
        self.history.push(checker::Operation {
            client: client as u64,
            key: *key,
            input: input.clone(),
            invoke_ns: operation.invoked_at_ns,
            complete_ns: Some(self.now_ns),
            output: Some(output),
        });
        self.schedule_next_operation(client);
    }

    /// The state machine refused the client's current request. An expired
    /// session was not applied now; if an earlier attempt might have been,
    /// the outcome is unknown. Either way the client opens a new session.
    fn on_refused(&mut self, client: usize, refusal: Refusal) {
        let operation = self.clients[client].pending.take().expect("pending");
        self.report.refusals += 1;
        if let Refusal::SessionExpired { client_id } = refusal {
            self.clients[client].sessions.retain(|_, session| *session != client_id);
        }
        self.record_unknown(client, operation);
        self.schedule_next_operation(client);
    }

    fn give_up(&mut self, client: usize) {
        let operation = self.clients[client].pending.take().expect("pending");
        self.record_unknown(client, operation);
        self.schedule_next_operation(client);
    }

    /// A workload operation that may or may not have taken effect.
    fn record_unknown(&mut self, client: usize, operation: PendingOperation) {
        let Purpose::Workload { key, input } = operation.purpose else { return };
        if operation.maybe_applied {
            self.history.push(checker::Operation {
                client: client as u64,
                key,
                input,
                invoke_ns: operation.invoked_at_ns,
                complete_ns: None,
                output: None,
            });
        }
    }

    fn schedule_next_operation(&mut self, client: usize) {
        let think = exponential(&mut self.rng, self.config.client_think_ns);
        self.schedule(think, Event::ClientStart { client });
    }

    // ----- nemesis -----

    /// Alternates faults and quiet gaps until the fault phase ends, then heals for good.
    fn on_nemesis(&mut self) -> Result<(), Breach> {
        if let Some(fault) = self.active_fault.take() {
            self.heal(fault)?;
            self.healed_at_ns = self.now_ns;
            self.fault_phase_over = self.now_ns >= self.config.fault_phase_ns;
            let gap = self.rng.gen_range(200_000_000..1_500_000_000);
            self.schedule(gap, Event::Nemesis);
            return Ok(());
        }
        if self.now_ns >= self.config.fault_phase_ns {
            self.fault_phase_over = true;
            if self.report.faults.is_empty() {
                self.healed_at_ns = self.now_ns;
            }
            return Ok(());
        }
        let kind = self.config.nemeses[self.rng.gen_range(0..self.config.nemeses.len())];
        let (fault, description, duration_ns) = self.inject(kind)?;
        self.report.faults.push(format!("{} {description}", self.now_ns));
        self.active_fault = Some(fault);
        let until = (self.now_ns + duration_ns).min(self.config.fault_phase_ns);
        self.schedule(until - self.now_ns, Event::Nemesis);
        Ok(())
    }

    fn inject(&mut self, kind: NemesisKind) -> Result<(ActiveFault, String, u64), Breach> {
        let nodes = self.config.nodes;
        let leader = self.leader();
        let lease_ns = self.config.consensus_config(1).lease_duration_ns;
        let duration_ns = self.rng.gen_range(500_000_000..4 * SECOND_NS);
        Ok(match kind {
            NemesisKind::Partition => {
                let description = nemesis::partition(&mut self.network, &mut self.rng, nodes, leader);
                (ActiveFault::Network, description, duration_ns)
            }
            NemesisKind::Partial => {
                let description = nemesis::partial(&mut self.network, &mut self.rng, nodes, leader);
                (ActiveFault::Network, description, duration_ns)
            }
            NemesisKind::Crash => {
                let victims = self.victims(leader);
                for &victim in &victims {
                    self.crash(victim);
                }
                let description = format!("crash {:?}", victims.iter().map(|v| v + 1).collect::<Vec<_>>());
                (ActiveFault::Crashed(victims), description, duration_ns)
            }
            NemesisKind::Pause => {
                let victims: Vec<usize> = self.victims(leader).into_iter().take(1).collect();
                for &victim in &victims {
                    let server = &mut self.servers[victim];
                    server.paused = server.running;
                    if server.paused && self.config.pause_freezes_clock {
                        server.clock.freeze(self.now_ns);
                    }
                }
                let pause_ns = self.rng.gen_range(lease_ns / 2..4 * lease_ns);
                let description = format!(
                    "pause {:?} for {} ms",
                    victims.iter().map(|v| v + 1).collect::<Vec<_>>(),
                    pause_ns / 1_000_000
                );
                (ActiveFault::Paused(victims), description, pause_ns)
            }
            NemesisKind::Clock => {
                let victim = leader.unwrap_or_else(|| self.rng.gen_range(0..nodes));
                let description = self.skew_clock(victim)?;
                (ActiveFault::Clock(victim), description, duration_ns)
            }
            NemesisKind::SkewedPartial => {
                let victim = leader.unwrap_or_else(|| self.rng.gen_range(0..nodes));
                let skew = self.skew_clock(victim)?;
                let cut = nemesis::partial(&mut self.network, &mut self.rng, nodes, leader);
                (ActiveFault::SkewedNetwork(victim), format!("{skew} and {cut}"), duration_ns)
            }
        })
    }

    /// Sets `victim`'s clock rate to one edge of the allowed drift.
    fn skew_clock(&mut self, victim: usize) -> Result<String, Breach> {
        let epsilon = self.config.clock_epsilon;
        let rate = if self.rng.gen_bool(0.5) { 1.0 + epsilon } else { 1.0 - epsilon };
        self.servers[victim].clock.set_rate(self.now_ns, rate);
        self.kick(victim)?;
        Ok(format!("clock rate of {} to {rate:.4}", victim + 1))
    }

    /// Gives `victim`'s clock a random rate within the allowed drift.
    fn unskew_clock(&mut self, victim: usize) -> Result<(), Breach> {
        let epsilon = self.config.clock_epsilon;
        let rate = 1.0 + self.rng.gen_range(-epsilon..=epsilon);
        self.servers[victim].clock.set_rate(self.now_ns, rate);
        self.kick(victim)
    }

    fn victims(&mut self, leader: Option<usize>) -> Vec<usize> {
        let target = match self.rng.gen_range(0..10) {
            0..=3 => Target::Leader,
            4..=7 => Target::Random,
            _ => Target::Everyone,
        };
        match (target, leader) {
            (Target::Everyone, _) => (0..self.config.nodes).collect(),
            (Target::Leader, Some(leader)) => vec![leader],
            _ => vec![self.rng.gen_range(0..self.config.nodes)],
        }
    }

    fn heal(&mut self, fault: ActiveFault) -> Result<(), Breach> {
        match fault {
            ActiveFault::Network => self.network.heal(),
            ActiveFault::Crashed(victims) => {
                for victim in victims {
                    if !self.servers[victim].running {
                        self.start_node(victim);
                    }
                }
            }
            ActiveFault::Paused(victims) => {
                for victim in victims {
                    self.resume(victim)?;
                }
            }
            ActiveFault::Clock(victim) => self.unskew_clock(victim)?,
            ActiveFault::SkewedNetwork(victim) => {
                self.network.heal();
                self.unskew_clock(victim)?;
            }
        }
        Ok(())
    }

    fn resume(&mut self, index: usize) -> Result<(), Breach> {
        let server = &mut self.servers[index];
        if server.paused && self.config.pause_freezes_clock {
            server.clock.thaw(self.now_ns);
        }
        server.paused = false;
        for event in std::mem::take(&mut server.stashed) {
            self.handle(event)?;
        }
        self.kick(index)
    }

    /// Re-arms a node's timer after its clock changed.
    fn kick(&mut self, index: usize) -> Result<(), Breach> {
        if self.servers[index].running && !self.servers[index].paused {
            let ranges: Vec<RangeId> = self.servers[index].replicas.keys().copied().collect();
            for range in ranges {
                self.step(index, range, Input::Tick)?;
            }
        }
        Ok(())
    }

    // ----- the end of a run -----

    fn finish(mut self) -> SeedReport {
        if self.config.balance_leaders {
            self.report.leaders_balanced = Some(self.leaders_balanced());
        }
        for client in 0..self.clients.len() {
            if let Some(mut operation) = self.clients[client].pending.take() {
                operation.maybe_applied |= !operation.request.operation.is_read() && operation.is_bound();
                self.record_unknown(client, operation);
            }
        }
        self.report.operations = self.history.len();
        if self.config.record_history {
            let mut lines = Vec::new();
            checker::write_json_lines(&self.history, self.now_ns, &mut lines).expect("writing to memory cannot fail");
            self.report.history_json_lines = Some(lines);
        }
        let limits = checker::Limits { states_per_key_max: CHECKER_STATES_PER_KEY_MAX };
        match checker::check(&self.history, &limits) {
            checker::Verdict::Linearizable => {}
            checker::Verdict::NotLinearizable(violation) => {
                let explanation = &violation.explanation;
                self.report.violation =
                    Some(format!("history not linearizable on key {}: {explanation}", violation.key));
                return self.report;
            }
            checker::Verdict::Inconclusive { key, states_explored } => {
                self.report.violation =
                    Some(format!("the checker gave up on key {key} after {states_explored} states; inspect this seed"));
                return self.report;
            }
        }
        if let Err(breach) = self.check_meta_caught_up() {
            self.report.violation = Some(breach);
            return self.report;
        }
        if !self.config.nemeses.is_empty() {
            match self.report.recovery_ns {
                Some(ns) if ns <= self.config.recovery_bound_ns => {}
                other => {
                    self.report.violation = Some(format!(
                        "after healing at {} ns, no new write committed within {} ns (first: {other:?})",
                        self.healed_at_ns, self.config.recovery_bound_ns
                    ));
                }
            }
        }
        self.report
    }

    #[cfg(test)]
    pub(super) fn set_clock_rate(&mut self, index: usize, rate: f64) -> Result<(), Breach> {
        self.servers[index].clock.set_rate(self.now_ns, rate);
        self.kick(index)
    }

    pub(super) fn into_report(self) -> SeedReport {
        self.report
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.now_ns
    }
}
