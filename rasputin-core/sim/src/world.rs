//! The simulated world: event queue, servers, clients, nemesis and checks.

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::clock::Clock;
use super::disk::{Batch, Disk, Submitted};
use super::invariants::{check_leases, Breach, Invariants, PromiseView};
use super::nemesis::{self, NemesisKind, Target};
use super::network::{exponential, Network};
use super::workload::{Client, PendingOperation, Purpose};
use super::{SimConfig, EVENTS_PER_SEED_MAX, SECOND_NS};
use rasputin_checker as checker;
use rasputin_consensus::{ElectionMode, NodeId, Rejection, Role, Snapshot, Term};
use rasputin_kv::operation::{ClientRequest, EntryPayload, Envelope, Input, Node, ReadReady, Ready};
use rasputin_kv::state_machine::{KvStore, Refusal, Response};

/// One-way latency between a client and a node.
const CLIENT_LATENCY_NS: u64 = 300_000;
/// Search states the checker may visit per key before calling a history inconclusive.
const CHECKER_STATES_PER_KEY_MAX: u64 = 10_000_000;
/// How long a client waits before retrying after a "not leader" answer.
const REDIRECT_BACKOFF_NS: u64 = 2_000_000;

#[derive(Clone, Debug)]
enum Reply {
    Done(Response),
    Refused(Refusal),
    NotLeader(Option<NodeId>),
    Overloaded,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver(Envelope),
    Timer { node: usize, generation: u64 },
    DiskSynced { node: usize, incarnation: u64 },
    Request { node: usize, client: usize, request: ClientRequest, attempt: u64 },
    Reply { client: usize, sequence: u64, attempt: u64, reply: Reply },
    AttemptTimeout { client: usize, sequence: u64, attempt: u64 },
    Retry { client: usize, sequence: u64 },
    ClientStart { client: usize },
    Nemesis,
}

impl Event {
    /// The node an event happens at, if it is one; such events wait while that node is paused.
    fn node(&self) -> Option<usize> {
        match self {
            Event::Deliver(envelope) => Some(envelope.to as usize - 1),
            Event::Timer { node, .. } | Event::DiskSynced { node, .. } | Event::Request { node, .. } => Some(*node),
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

struct Server {
    node: Option<Node>,
    kv: KvStore,
    disk: Disk,
    clock: Clock,
    incarnation: u64,
    paused: bool,
    stashed: Vec<Event>,
    timer_generation: u64,
    /// Client requests this server accepted: (client id, sequence) → (client, attempt).
    pending: BTreeMap<(u64, u64), (usize, u64)>,
    was_leader_in: Option<Term>,
    was_leader_elect_in: Option<Term>,
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
    invariants: Invariants,
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
                Server {
                    node: None,
                    kv: KvStore::default(),
                    disk: Disk::default(),
                    clock: Clock::new(offset, rate),
                    incarnation: 0,
                    paused: false,
                    stashed: Vec::new(),
                    timer_generation: 0,
                    pending: BTreeMap::new(),
                    was_leader_in: None,
                    was_leader_elect_in: None,
                }
            })
            .collect();
        let clients = (0..config.clients).map(|index| Client::new(index, config.keys, index % config.nodes)).collect();
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
            invariants: Invariants::default(),
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
            if server.node.is_none() {
                return Ok(());
            }
            if server.paused {
                server.stashed.push(event);
                return Ok(());
            }
        }
        match event {
            Event::Deliver(envelope) => {
                let node = envelope.to as usize - 1;
                if self.network.is_cut(envelope.from as usize - 1, node) {
                    return Ok(());
                }
                self.step(node, Input::Message(envelope))
            }
            Event::Timer { node, generation } => {
                if generation != self.servers[node].timer_generation {
                    return Ok(());
                }
                self.step(node, Input::Tick)
            }
            Event::DiskSynced { node, incarnation } => self.on_disk_synced(node, incarnation),
            Event::Request { node, client, request, attempt } => self.on_request(node, client, request, attempt),
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
        }
    }

    // ----- servers -----

    fn start_node(&mut self, index: usize) {
        let seed = self.rng.gen();
        let config = self.config.consensus_config(index as u64 + 1);
        let server = &mut self.servers[index];
        let recovered = server.disk.stored.recover();
        let limits = self.config.session_limits;
        server.kv = match &recovered.snapshot {
            Some(snapshot) => KvStore::restore(&snapshot.data, limits).expect("the simulator wrote this snapshot"),
            None => KvStore::new(limits),
        };
        let local = server.clock.local(self.now_ns);
        let node = Node::new(config, recovered, seed, local).expect("simulator config is valid");
        server.node = Some(node);
        server.incarnation += 1;
        server.was_leader_in = None;
        self.step(index, Input::Tick).expect("a fresh node breaks no invariant");
    }

    fn crash(&mut self, index: usize) {
        let server = &mut self.servers[index];
        server.node = None;
        server.disk.crash();
        if server.paused && self.config.pause_freezes_clock {
            server.clock.thaw(self.now_ns);
        }
        server.paused = false;
        server.stashed.clear();
        server.pending.clear();
        server.timer_generation += 1;
    }

    fn step(&mut self, index: usize, input: Input) -> Result<(), Breach> {
        let server = &mut self.servers[index];
        let local = server.clock.local(self.now_ns);
        let node = server.node.as_mut().expect("stepping a running node");
        let before = PromiseView::of(node, local);
        let ready = node.step(local, input);
        self.invariants.on_step(&before, node)?;
        self.after_step(index, ready)
    }

    fn after_step(&mut self, index: usize, ready: Ready) -> Result<(), Breach> {
        let id = index as NodeId + 1;
        {
            let server = &mut self.servers[index];
            let node = server.node.as_ref().expect("running");
            self.invariants.on_persisted_entries(node, &ready.persist.entries)?;
            if node.role() == Role::Leader && server.was_leader_in != Some(node.term()) {
                self.invariants.on_leader(node)?;
                self.report.elections.push((self.now_ns, id, node.term()));
                server.was_leader_in = Some(node.term());
            }
            if node.role() == Role::LeaderElect && server.was_leader_elect_in != Some(node.term()) {
                self.report.fetching_elections += 1;
                server.was_leader_elect_in = Some(node.term());
            }
        }
        let Ready { persist, send, send_after_persist, apply, reads, rejected, refused, next_deadline } = ready;
        if let Some((from, error)) = refused.first() {
            return Err(format!(
                "node {id} refused a message from node {from}, which a correct node never sends: {error}"
            ));
        }
        if let Some(snapshot) = &persist.snapshot {
            let limits = self.config.session_limits;
            self.servers[index].kv =
                KvStore::restore(&snapshot.data, limits).expect("snapshots come from peers' stores");
        }
        let leader_term = self.servers[index].node.as_ref().filter(|node| node.role() == Role::Leader).map(Node::term);
        for entry in &apply {
            self.invariants.on_apply(id, entry, leader_term)?;
            self.apply(index, entry);
        }
        self.serve_reads(index, reads)?;
        for (request, rejection) in rejected {
            self.reject(index, request, rejection);
        }
        for envelope in send {
            self.transmit(envelope);
        }
        let sync_ns = self.config.sync_ns;
        let incarnation = self.servers[index].incarnation;
        match self.servers[index].disk.submit(Batch { persist, send_after: send_after_persist }, self.now_ns, sync_ns) {
            Submitted::SendNow(envelopes) => envelopes.into_iter().for_each(|envelope| self.transmit(envelope)),
            Submitted::SyncAt(at_ns) => {
                self.schedule(at_ns - self.now_ns, Event::DiskSynced { node: index, incarnation })
            }
            Submitted::Queued => {}
        }
        self.set_timer(index, next_deadline);
        self.maybe_compact(index)
    }

    fn set_timer(&mut self, index: usize, deadline: u64) {
        let server = &mut self.servers[index];
        server.timer_generation += 1;
        let generation = server.timer_generation;
        let at_ns = server.clock.true_at(deadline, self.now_ns).max(self.now_ns + 1);
        self.schedule(at_ns - self.now_ns, Event::Timer { node: index, generation });
    }

    fn on_disk_synced(&mut self, index: usize, incarnation: u64) -> Result<(), Breach> {
        if self.servers[index].incarnation != incarnation {
            return Ok(());
        }
        let batches = self.servers[index].disk.complete_sync();
        let mut position = None;
        for batch in batches {
            position = batch.persist.last_position().or(position);
            for envelope in batch.send_after {
                self.transmit(envelope);
            }
        }
        match position {
            Some((index_synced, term)) => self.step(index, Input::Persisted { index: index_synced, term }),
            None => Ok(()),
        }
    }

    fn maybe_compact(&mut self, index: usize) -> Result<(), Breach> {
        let server = &mut self.servers[index];
        let node = server.node.as_ref().expect("running");
        let applied = server.kv.applied_index();
        if applied < node.log().snapshot_index() + self.config.snapshot_every_entries {
            return Ok(());
        }
        let snapshot =
            Snapshot { last_index: applied, last_term: server.kv.applied_term(), data: server.kv.snapshot().into() };
        let persist = rasputin_kv::operation::Persist { snapshot: Some(snapshot.clone()), ..Default::default() };
        let incarnation = server.incarnation;
        if let Submitted::SyncAt(at_ns) =
            server.disk.submit(Batch { persist, send_after: Vec::new() }, self.now_ns, self.config.sync_ns)
        {
            self.schedule(at_ns - self.now_ns, Event::DiskSynced { node: index, incarnation });
        }
        self.step(index, Input::Compact(snapshot))
    }

    fn apply(&mut self, index: usize, entry: &rasputin_kv::operation::Entry) {
        let server = &mut self.servers[index];
        if entry.index <= server.kv.applied_index() {
            // Already covered by a snapshot this server restored.
            return;
        }
        let applied = server.kv.apply(entry);
        if let (Some(applied), EntryPayload::Command(_)) = (applied, &entry.payload) {
            let key = (applied.client_id, applied.sequence);
            if let Some((client, attempt)) = server.pending.remove(&key) {
                let reply = match applied.outcome {
                    Ok(response) => Reply::Done(response),
                    Err(refusal) => Reply::Refused(refusal),
                };
                self.reply(client, applied.sequence, attempt, reply);
            }
        }
    }

    /// Answers reads whose index the same Ready's entries have just applied.
    fn serve_reads(&mut self, index: usize, reads: Vec<ReadReady>) -> Result<(), Breach> {
        let applied = self.servers[index].kv.applied_index();
        for read in reads {
            if read.read_index > applied {
                return Err(format!(
                    "node {} released a read at {} before applying it ({applied})",
                    index + 1,
                    read.read_index
                ));
            }
            let server = &mut self.servers[index];
            let response = server.kv.read(read.request.operation.key());
            let key = (read.request.client_id, read.request.sequence);
            if let Some((client, attempt)) = server.pending.remove(&key) {
                self.reply(client, read.request.sequence, attempt, Reply::Done(response));
            }
        }
        Ok(())
    }

    fn reject(&mut self, index: usize, request: ClientRequest, rejection: Rejection) {
        let key = (request.client_id, request.sequence);
        if let Some((client, attempt)) = self.servers[index].pending.remove(&key) {
            let reply = match rejection {
                Rejection::NotLeader { leader } => Reply::NotLeader(leader),
                Rejection::Overloaded => Reply::Overloaded,
            };
            self.reply(client, request.sequence, attempt, reply);
        }
    }

    fn reply(&mut self, client: usize, sequence: u64, attempt: u64, reply: Reply) {
        self.schedule(CLIENT_LATENCY_NS, Event::Reply { client, sequence, attempt, reply });
    }

    fn transmit(&mut self, envelope: Envelope) {
        let (from, to) = (envelope.from as usize - 1, envelope.to as usize - 1);
        let copies = if self.network.duplicate(&mut self.rng) { 2 } else { 1 };
        let held_ns = self.network.hold(&mut self.rng, from, to, envelope.message.kind());
        for _ in 0..copies {
            if let Some(delay) = self.network.delay(&mut self.rng, from, to) {
                self.schedule(delay + held_ns, Event::Deliver(envelope.clone()));
            }
        }
    }

    fn on_request(&mut self, index: usize, client: usize, request: ClientRequest, attempt: u64) -> Result<(), Breach> {
        let key = (request.client_id, request.sequence);
        self.servers[index].pending.insert(key, (client, attempt));
        self.step(index, Input::Client(request))
    }

    fn check_leases(&self) -> Result<(), Breach> {
        if self.config.mode != ElectionMode::Harpoon {
            return Ok(());
        }
        let holders: Vec<NodeId> = self
            .servers
            .iter()
            .filter_map(|server| {
                let node = server.node.as_ref()?;
                node.holds_lease(server.clock.local(self.now_ns)).then_some(node.id())
            })
            .collect();
        check_leases(&holders, self.now_ns)
    }

    pub(super) fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(index, server)| {
                let node = server.node.as_ref()?;
                (node.role() == Role::Leader && !server.paused).then_some((node.term(), index))
            })
            .max()
            .map(|(_, index)| index)
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

    fn send_attempt(&mut self, client: usize) {
        let target = self.clients[client].target;
        let operation = self.clients[client].pending.as_mut().expect("an operation is pending");
        operation.attempt += 1;
        let (request, attempt, sequence) = (operation.request.clone(), operation.attempt, operation.request.sequence);
        self.schedule(CLIENT_LATENCY_NS, Event::Request { node: target, client, request, attempt });
        self.schedule(self.config.attempt_timeout_ns, Event::AttemptTimeout { client, sequence, attempt });
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
            Reply::NotLeader(_) | Reply::Overloaded if attempt != current_attempt => {}
            Reply::NotLeader(leader) => {
                let nodes = self.config.nodes;
                let target = &mut self.clients[client].target;
                *target = leader.map_or((*target + 1) % nodes, |leader| leader as usize - 1);
                self.retry_later(client, REDIRECT_BACKOFF_NS);
            }
            Reply::Overloaded => self.retry_later(client, 10 * REDIRECT_BACKOFF_NS),
        }
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
        let nodes = self.config.nodes;
        let state = &mut self.clients[client];
        let Some(operation) = state.pending.as_mut() else { return };
        if operation.request.sequence != sequence || operation.attempt != attempt {
            return;
        }
        // The attempt may have reached a leader that appended it.
        operation.maybe_applied |= !operation.request.operation.is_read();
        state.target = (state.target + 1) % nodes;
        if self.now_ns >= operation.deadline_ns {
            self.give_up(client);
        } else {
            self.send_attempt(client);
        }
    }

    fn complete(&mut self, client: usize, response: Response) {
        let operation = self.clients[client].pending.take().expect("pending");
        let Purpose::Workload { key, input } = &operation.purpose else {
            // The answer's index is the new session's id.
            let state = &mut self.clients[client];
            (state.session, state.sequence) = (Some(response.index), 0);
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
        if let Refusal::SessionExpired { .. } = refusal {
            self.clients[client].session = None;
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
                    server.paused = server.node.is_some();
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
                    if self.servers[victim].node.is_none() {
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
        if self.servers[index].node.is_some() && !self.servers[index].paused {
            self.step(index, Input::Tick)?;
        }
        Ok(())
    }

    // ----- the end of a run -----

    fn finish(mut self) -> SeedReport {
        for client in 0..self.clients.len() {
            if let Some(mut operation) = self.clients[client].pending.take() {
                operation.maybe_applied |= !operation.request.operation.is_read();
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
