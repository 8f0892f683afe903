//! A bounded, exhaustive check of the real sans-IO consensus core.
//!
//! The state is a cluster of real `Node`s, the messages in flight, each
//! node's disk, and what was committed. The checker (stateright) explores
//! every order of these actions, to a depth bound:
//! - deliver any message in flight, lose it, or deliver it and keep a copy
//!   (duplication, within a budget);
//! - let true time pass to the next deadline any node has, and tick every
//!   node whose deadline has come. Each node's clock runs at its own fixed
//!   rate (`Bounds::clock_skews_ppm`), within the drift bound;
//! - the same, but leave one due node unticked: a slow or paused process.
//!   Time passes for it all the same, and it sees so when it next steps;
//! - hand a client write or read of one register to the leader (within budgets);
//! - crash a node and restart it from its disk (within a budget);
//! - wipe a node's disk and start a replacement in its place, as the daemon
//!   does with `--replace`: it learns the highest term and the most
//!   up-to-date log among the others, and withholds its votes from
//!   candidates short of that log (within a budget);
//! - ask the leader to transfer its leadership to another node (within a budget).
//!
//! The driver here is the daemon's contract at its strictest: a Ready's
//! persist is synced before its held messages leave, and `Persisted` comes
//! back at once. After every step the properties the simulator checks are
//! checked: one leader per term, at most one valid lease, log matching,
//! leader completeness, state-machine safety, and linearizability of the
//! client history (stateright's `LinearizabilityTester`).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use rasputin_consensus::{
    Command, Config, ElectionMode, Entry, EntryPayload, Envelope, Faults, HardState, Input, LogIndex, Nanos, Node,
    NodeId, Ready, Recovered, Role, Term,
};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use stateright::{Model, Property};

/// A client request on one register: a write of its own number, or a read.
/// Consensus sees only which of the two it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// Unique over the run: the client (a history thread) and, for a
    /// write, the value written.
    pub number: u64,
    pub read: bool,
}

impl Command for Request {
    fn is_read(&self) -> bool {
        self.read
    }

    fn size_bytes(&self) -> usize {
        8
    }
}

/// What one checking run explores.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub nodes: usize,
    pub mode: ElectionMode,
    pub faults: Faults,
    /// Client writes handed to nodes, over the whole run.
    pub writes: u64,
    /// Client reads handed to nodes, over the whole run.
    pub reads: u64,
    pub crashes: u32,
    /// Nodes whose disks are lost and replaced, over the whole run.
    pub replacements: u32,
    /// Leadership transfers asked of leaders, over the whole run.
    pub transfers: u32,
    pub duplicates: u32,
    /// Times time may pass while a due node is left unticked.
    pub pauses: u32,
    /// Messages in flight beyond which no more time passes: a bound on the
    /// state space, not on the protocol.
    pub messages_in_flight_max: usize,
    /// Harpoon's campaign preference. It only delays campaigns, so safety
    /// must hold without it too; without it, lagging nodes win sooner and
    /// the fetch is reached in fewer steps.
    pub campaign_defers_to_better_logs: bool,
    pub start: Start,
    /// How fast each node's clock runs against true time, in parts per
    /// million (+22,500 is 2.25% fast). Any two must stay within the drift
    /// bound the lease assumes (5%: a rate ratio of at most 1 / 0.95).
    pub clock_skews_ppm: Vec<i64>,
}

/// A clock rate error that keeps any two nodes within the 5% drift bound:
/// the simulator's ε = 0.45 δ.
pub const SKEW_AT_THE_EDGE_PPM: i64 = 22_500;

const PPM: i128 = 1_000_000;

/// Where exploration begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Three empty nodes at time 0.
    Empty,
    /// Node 3 cut off while the others elect a leader and commit its
    /// no-op; then every message in flight is lost. A reachable state from
    /// which a lagging node's election, the case Harpoon v2 changes, is a
    /// few steps away, so the checker can go deeper there.
    LaggingThirdNode,
    /// Every message delivered in order until a leader's no-op has
    /// committed; then every message in flight is lost. A leadership
    /// transfer's whole exchange is a few steps away.
    Led,
}

/// One node's disk: what the driver has synced for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Disk {
    pub hard_state: HardState,
    pub entries: Vec<Entry<Request>>,
    /// A replacement's target (`Recovered::votes_withheld_until`), kept
    /// across its restarts.
    pub votes_withheld_until: Option<(Term, LogIndex)>,
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub nodes: Vec<Node<Request>>,
    pub disks: Vec<Disk>,
    /// Messages in flight, kept sorted so that equal states compare equal.
    pub network: Vec<Envelope<Request>>,
    pub now: Nanos,
    /// Each node's next deadline, from its last Ready, in true time.
    pub deadlines: Vec<Nanos>,
    pub writes_made: u64,
    pub reads_made: u64,
    /// The client history: each request is its own thread, invoked when
    /// handed to a node and returned when that node answers it (a write
    /// once it applies it, a read once it serves it). Rejected requests
    /// stay in flight, as a client that never heard back sees them.
    pub history: LinearizabilityTester<u64, Register<u64>>,
    /// The node each request in flight was handed to, which answers it.
    pub waiting: BTreeMap<u64, usize>,
    pub crashes_made: u32,
    pub replacements_made: u32,
    /// A withholding replacement's vote helped elect a leader.
    pub led_with_a_replacements_vote: bool,
    pub transfers_made: u32,
    /// The last transfer asked for: its successor and the term it was asked in.
    pub transfer: Option<(NodeId, Term)>,
    /// A transfer's successor went on to lead a later term.
    pub led_after_a_transfer: bool,
    pub duplicates_made: u32,
    pub pauses_made: u32,
    /// The leader of each term seen.
    pub leaders: BTreeMap<Term, NodeId>,
    /// The first entry applied at each index, with the term of the node
    /// that applied it: the entry was committed in that term or earlier, so
    /// every leader of a later term must hold it.
    pub committed: BTreeMap<LogIndex, (Entry<Request>, Term)>,
    /// Broken properties, as found while stepping.
    pub broken: Vec<String>,
    /// A leader-elect fetched its best voter's log and went on to lead.
    pub led_after_a_fetch: bool,
}

impl Hash for Cluster {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        // Node holds maps and an RNG, none of them Hash; its Debug form
        // names every field, so equal forms are equal states.
        for node in &self.nodes {
            format!("{node:?}").hash(hasher);
        }
        self.disks.hash(hasher);
        self.network.hash(hasher);
        self.deadlines.hash(hasher);
        (self.now, self.writes_made, self.reads_made, self.crashes_made, self.duplicates_made, self.pauses_made)
            .hash(hasher);
        (self.transfers_made, self.transfer, self.led_after_a_transfer).hash(hasher);
        (self.replacements_made, self.led_with_a_replacements_vote).hash(hasher);
        self.history.hash(hasher);
        self.waiting.hash(hasher);
        (&self.broken, self.led_after_a_fetch).hash(hasher);
    }
}

impl PartialEq for Cluster {
    fn eq(&self, other: &Cluster) -> bool {
        let forms = |cluster: &Cluster| cluster.nodes.iter().map(|node| format!("{node:?}")).collect::<Vec<_>>();
        self.disks == other.disks
            && self.network == other.network
            && self.deadlines == other.deadlines
            && (self.now, self.writes_made, self.reads_made, self.crashes_made, self.duplicates_made, self.pauses_made)
                == (
                    other.now,
                    other.writes_made,
                    other.reads_made,
                    other.crashes_made,
                    other.duplicates_made,
                    other.pauses_made,
                )
            && (self.transfers_made, self.transfer, self.led_after_a_transfer)
                == (other.transfers_made, other.transfer, other.led_after_a_transfer)
            && (self.replacements_made, self.led_with_a_replacements_vote)
                == (other.replacements_made, other.led_with_a_replacements_vote)
            && self.history == other.history
            && self.waiting == other.waiting
            && (&self.broken, self.led_after_a_fetch) == (&other.broken, other.led_after_a_fetch)
            && forms(self) == forms(other)
    }
}

impl Eq for Cluster {}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Deliver(usize),
    DeliverAndKeep(usize),
    Lose(usize),
    PassTime,
    PassTimeWithout(usize),
    Write(usize),
    Read(usize),
    CrashAndRestart(usize),
    /// The node's disk is lost; a replacement starts in its place.
    Replace(usize),
    /// The leader at the first index hands its leadership to the node at the second.
    Transfer(usize, usize),
}

/// The model: `Bounds` and the real core.
pub struct Harpoon {
    pub bounds: Bounds,
}

const ELECTION_TIMEOUT_NS: Nanos = 1_000_000_000;

impl Harpoon {
    fn config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id, (1..=self.bounds.nodes as NodeId).collect());
        config.mode = self.bounds.mode;
        config.faults = self.bounds.faults;
        config.campaign_defers_to_better_logs = self.bounds.campaign_defers_to_better_logs;
        config.election_timeout_ns = ELECTION_TIMEOUT_NS;
        config
    }

    /// Node `index`'s clock at true time `now`.
    fn local(&self, index: usize, now: Nanos) -> Nanos {
        let rate = PPM + self.bounds.clock_skews_ppm[index] as i128;
        (now as i128 * rate / PPM) as Nanos
    }

    /// The first true time at which node `index`'s clock reads `local`.
    fn true_time(&self, index: usize, local: Nanos) -> Nanos {
        let rate = PPM + self.bounds.clock_skews_ppm[index] as i128;
        ((local as i128 * PPM + rate - 1) / rate) as Nanos
    }

    fn start(&self, id: NodeId, disk: &Disk, now: Nanos) -> Node<Request> {
        let recovered = Recovered {
            hard_state: disk.hard_state,
            entries: disk.entries.clone(),
            votes_withheld_until: disk.votes_withheld_until,
            ..Recovered::default()
        };
        // One seed per node: the election timeouts differ, and a state is
        // a function of the actions that led to it.
        Node::new(self.config(id), recovered, id, now).expect("a disk this driver wrote recovers")
    }

    /// Steps node `index` with `input` and carries out what it asks.
    fn step(&self, cluster: &mut Cluster, index: usize, input: Input<Request>) {
        let now = self.local(index, cluster.now);
        let fetching = cluster.nodes[index].role() == Role::LeaderElect;
        let ready = cluster.nodes[index].step(now, input);
        cluster.led_after_a_fetch |= fetching && cluster.nodes[index].role() == Role::Leader;
        self.carry_out(cluster, index, ready);
        check_node(cluster, index);
    }

    fn carry_out(&self, cluster: &mut Cluster, index: usize, ready: Ready<Request>) {
        let Ready { persist, send, send_after_persist, apply, reads, next_deadline, .. } = ready;
        cluster.deadlines[index] = self.true_time(index, next_deadline);
        cluster.network.extend(send);
        let position = persist.last_position();
        let disk = &mut cluster.disks[index];
        if let Some(hard_state) = persist.hard_state {
            disk.hard_state = hard_state;
        }
        if let Some(first) = persist.entries.first() {
            disk.entries.retain(|entry| entry.index < first.index);
            disk.entries.extend(persist.entries.iter().cloned());
        }
        // Synced: what waited for the disk may leave.
        cluster.network.extend(send_after_persist);
        cluster.network.sort_by_key(|envelope| format!("{envelope:?}"));
        let term = cluster.nodes[index].term();
        for entry in apply {
            match cluster.committed.get(&entry.index) {
                Some((first, _)) if *first != entry => cluster.broken.push(format!(
                    "state-machine safety: node {} applied {entry:?} at {} where {first:?} was applied",
                    index + 1,
                    entry.index
                )),
                Some(_) => {}
                None => {
                    cluster.committed.insert(entry.index, (entry.clone(), term));
                }
            }
            if let EntryPayload::Command(request) = &entry.payload {
                answer(cluster, index, request.number, RegisterRet::WriteOk);
            }
        }
        for read in reads {
            // Everything up to the read index is applied by the end of this Ready.
            let value = cluster
                .committed
                .range(..=read.read_index)
                .rev()
                .find_map(|(_, (entry, _))| match &entry.payload {
                    EntryPayload::Command(request) if !request.read => Some(request.number),
                    _ => None,
                })
                .unwrap_or(0);
            answer(cluster, index, read.request.number, RegisterRet::ReadOk(value));
        }
        if let Some((index_synced, term)) = position {
            self.step(cluster, index, Input::Persisted { index: index_synced, term });
        }
    }

    /// Time jumps to the earliest deadline still ahead (nothing happens in
    /// between), or stays if only overdue nodes are left to tick.
    fn next_time(cluster: &Cluster) -> Nanos {
        cluster.deadlines.iter().copied().filter(|&deadline| deadline > cluster.now).min().unwrap_or(cluster.now)
    }

    /// Time passes to `next_time`, and every node then due but `slow` ticks.
    fn pass_time(&self, cluster: &mut Cluster, slow: Option<usize>) {
        cluster.now = Harpoon::next_time(cluster);
        for index in 0..self.bounds.nodes {
            if cluster.deadlines[index] <= cluster.now && Some(index) != slow {
                self.step(cluster, index, Input::Tick);
            }
        }
    }

    fn empty_cluster(&self) -> Cluster {
        let disks = vec![Disk::default(); self.bounds.nodes];
        let nodes = (0..self.bounds.nodes).map(|index| self.start(index as NodeId + 1, &disks[index], 0)).collect();
        let mut cluster = Cluster {
            nodes,
            disks,
            network: Vec::new(),
            now: 0,
            deadlines: vec![0; self.bounds.nodes],
            writes_made: 0,
            reads_made: 0,
            history: LinearizabilityTester::new(Register(0)),
            waiting: BTreeMap::new(),
            crashes_made: 0,
            replacements_made: 0,
            led_with_a_replacements_vote: false,
            transfers_made: 0,
            transfer: None,
            led_after_a_transfer: false,
            duplicates_made: 0,
            pauses_made: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            broken: Vec::new(),
            led_after_a_fetch: false,
        };
        // Learns each node's first deadline; nothing is due at time 0.
        for index in 0..self.bounds.nodes {
            self.step(&mut cluster, index, Input::Tick);
        }
        cluster
    }

    /// See `Start::LaggingThirdNode` and `Start::Led`. Delivers the oldest
    /// message, dropping those to or from the node `cut` (if any), and lets
    /// time pass when none is left, until an entry commits.
    fn first_commit(&self, cut: Option<NodeId>) -> Cluster {
        let mut cluster = self.empty_cluster();
        for _ in 0..10_000 {
            if !cluster.committed.is_empty() {
                cluster.network.clear();
                return cluster;
            }
            cluster.network.retain(|envelope| Some(envelope.from) != cut && Some(envelope.to) != cut);
            if cluster.network.is_empty() {
                self.pass_time(&mut cluster, None);
                continue;
            }
            let envelope = cluster.network.remove(0);
            self.step(&mut cluster, envelope.to as usize - 1, Input::Message(envelope));
        }
        panic!("a connected majority committed nothing in 10,000 steps (node {cut:?} cut off)")
    }
}

/// What the daemon's `--replace` writes before node `index` starts again:
/// the highest term among the others, voted in by itself (it may have
/// voted in that term before), and the most up-to-date log among them as
/// the target. It asks every other member, which answer from what they
/// hold now.
fn replacement_disk(cluster: &Cluster, index: usize) -> Disk {
    let others = || cluster.nodes.iter().enumerate().filter(move |&(other, _)| other != index).map(|(_, node)| node);
    let term = others().map(Node::term).max().unwrap_or(0);
    let target = others().map(|node| (node.log().last_term(), node.log().last_index())).max().unwrap_or((0, 0));
    Disk {
        hard_state: HardState { term, voted_for: Some(index as NodeId + 1) },
        entries: Vec::new(),
        votes_withheld_until: Some(target),
    }
}

/// Node `index` answers request `number`, if that request is waiting for it.
fn answer(cluster: &mut Cluster, index: usize, number: u64, ret: RegisterRet<u64>) {
    if cluster.waiting.get(&number) != Some(&index) {
        return;
    }
    cluster.waiting.remove(&number);
    if let Err(error) = cluster.history.on_return(number, ret) {
        cluster.broken.push(format!("the client history is malformed: {error}"));
    }
}

/// Hands a request to node `index`, recording its invocation.
fn invoke(cluster: &mut Cluster, index: usize, request: &Request) {
    let op = if request.read { RegisterOp::Read } else { RegisterOp::Write(request.number) };
    if let Err(error) = cluster.history.on_invoke(request.number, op) {
        cluster.broken.push(format!("the client history is malformed: {error}"));
    }
    cluster.waiting.insert(request.number, index);
}

/// The checks that need one node's state after it stepped.
fn check_node(cluster: &mut Cluster, index: usize) {
    let node = &cluster.nodes[index];
    if node.role() == Role::Leader {
        let id = index as NodeId + 1;
        let term = node.term();
        let successor_leads = |(successor, asked_in): (NodeId, Term)| successor == id && term > asked_in;
        cluster.led_after_a_transfer |= cluster.transfer.is_some_and(successor_leads);
        let withholding_voter = |voter: &Node<Request>| {
            voter.id() != id && voter.withholds_votes() && voter.hard_state() == HardState { term, voted_for: Some(id) }
        };
        cluster.led_with_a_replacements_vote |= cluster.nodes.iter().any(withholding_voter);
        match cluster.leaders.get(&term) {
            Some(&other) if other != id => {
                cluster.broken.push(format!("election safety: nodes {other} and {id} both led term {term}"))
            }
            _ => {
                cluster.leaders.insert(term, id);
            }
        }
        for (committed_index, (entry, committed_by)) in &cluster.committed {
            let held = node.log().entry(*committed_index);
            if term > *committed_by && *committed_index > node.log().snapshot_index() && held != Some(entry) {
                cluster.broken.push(format!(
                    "leader completeness: leader {id} of term {term} lacks committed {entry:?} (holds {held:?})"
                ));
            }
        }
    }
}

/// Log matching over every pair of nodes: an (index, term) pair names the
/// same entry, and the same history before it, everywhere.
fn logs_match(cluster: &Cluster) -> bool {
    let logs: Vec<_> = cluster.nodes.iter().map(Node::log).collect();
    for (first, a) in logs.iter().enumerate() {
        for b in &logs[first + 1..] {
            let last = a.last_index().min(b.last_index());
            let floor = a.snapshot_index().max(b.snapshot_index());
            let mut matched = false;
            for index in (floor + 1..=last).rev() {
                let (x, y) = (a.entry(index), b.entry(index));
                if matched && x != y {
                    return false;
                }
                if x.is_some() && x.map(|entry| entry.term) == y.map(|entry| entry.term) {
                    if x != y {
                        return false;
                    }
                    matched = true;
                }
            }
        }
    }
    true
}

impl Model for Harpoon {
    type State = Cluster;
    type Action = Action;

    fn init_states(&self) -> Vec<Cluster> {
        match self.bounds.start {
            Start::Empty => vec![self.empty_cluster()],
            Start::LaggingThirdNode => vec![self.first_commit(Some(self.bounds.nodes as NodeId))],
            Start::Led => vec![self.first_commit(None)],
        }
    }

    fn actions(&self, cluster: &Cluster, actions: &mut Vec<Action>) {
        if !cluster.broken.is_empty() {
            return;
        }
        for index in 0..cluster.network.len() {
            actions.push(Action::Deliver(index));
            actions.push(Action::Lose(index));
            if cluster.duplicates_made < self.bounds.duplicates {
                actions.push(Action::DeliverAndKeep(index));
            }
        }
        let time_may_pass = cluster.network.len() < self.bounds.messages_in_flight_max;
        if time_may_pass {
            actions.push(Action::PassTime);
        }
        let next_time = Harpoon::next_time(cluster);
        for index in 0..self.bounds.nodes {
            let pause_left = cluster.pauses_made < self.bounds.pauses;
            if time_may_pass && pause_left && cluster.deadlines[index] <= next_time {
                actions.push(Action::PassTimeWithout(index));
            }
            let leads = cluster.nodes[index].role() == Role::Leader;
            if cluster.writes_made < self.bounds.writes && leads {
                actions.push(Action::Write(index));
            }
            if cluster.reads_made < self.bounds.reads && leads {
                actions.push(Action::Read(index));
            }
            if cluster.crashes_made < self.bounds.crashes {
                actions.push(Action::CrashAndRestart(index));
            }
            if cluster.replacements_made < self.bounds.replacements {
                actions.push(Action::Replace(index));
            }
            if cluster.transfers_made < self.bounds.transfers && leads {
                let others = (0..self.bounds.nodes).filter(|&to| to != index);
                actions.extend(others.map(|to| Action::Transfer(index, to)));
            }
        }
    }

    fn next_state(&self, last: &Cluster, action: Action) -> Option<Cluster> {
        let mut cluster = last.clone();
        match action {
            Action::Deliver(index) | Action::DeliverAndKeep(index) => {
                let envelope = if action == Action::Deliver(index) {
                    cluster.network.remove(index)
                } else {
                    cluster.duplicates_made += 1;
                    cluster.network[index].clone()
                };
                let to = envelope.to as usize - 1;
                self.step(&mut cluster, to, Input::Message(envelope));
            }
            Action::Lose(index) => {
                cluster.network.remove(index);
            }
            Action::PassTime => self.pass_time(&mut cluster, None),
            Action::PassTimeWithout(slow) => {
                cluster.pauses_made += 1;
                self.pass_time(&mut cluster, Some(slow));
            }
            Action::Write(index) | Action::Read(index) => {
                let read = matches!(action, Action::Read(_));
                if read {
                    cluster.reads_made += 1;
                } else {
                    cluster.writes_made += 1;
                }
                let request = Request { number: cluster.writes_made + cluster.reads_made, read };
                invoke(&mut cluster, index, &request);
                self.step(&mut cluster, index, Input::Client(request));
            }
            Action::CrashAndRestart(index) => {
                cluster.crashes_made += 1;
                // Its clients never hear back: their requests stay in flight.
                cluster.waiting.retain(|_, node| *node != index);
                let id = index as NodeId + 1;
                let now = self.local(index, cluster.now);
                cluster.nodes[index] = self.start(id, &cluster.disks[index], now);
                self.step(&mut cluster, index, Input::Tick);
            }
            Action::Replace(index) => {
                cluster.replacements_made += 1;
                cluster.waiting.retain(|_, node| *node != index);
                cluster.disks[index] = replacement_disk(&cluster, index);
                let now = self.local(index, cluster.now);
                cluster.nodes[index] = self.start(index as NodeId + 1, &cluster.disks[index], now);
                self.step(&mut cluster, index, Input::Tick);
            }
            Action::Transfer(index, to) => {
                cluster.transfers_made += 1;
                let successor = to as NodeId + 1;
                cluster.transfer = Some((successor, cluster.nodes[index].term()));
                self.step(&mut cluster, index, Input::TransferLeadership { to: successor });
            }
        }
        Some(cluster)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::<Self>::always("no property broken while stepping", |_, cluster: &Cluster| {
                cluster.broken.is_empty()
            }),
            Property::<Self>::always("at most one valid lease", |model, cluster: &Cluster| {
                let holds = |(index, node): (usize, &Node<Request>)| node.holds_lease(model.local(index, cluster.now));
                cluster.nodes.iter().enumerate().filter(|&pair| holds(pair)).count() <= 1
            }),
            Property::<Self>::always("log matching", |_, cluster: &Cluster| logs_match(cluster)),
            Property::<Self>::always("the client history is linearizable", |_, cluster: &Cluster| {
                cluster.history.is_consistent()
            }),
            Property::<Self>::sometimes("a lagging node leads after fetching", |_, cluster: &Cluster| {
                cluster.led_after_a_fetch
            }),
            Property::<Self>::sometimes(
                "a replacement still catching up helps elect a leader",
                |_, cluster: &Cluster| cluster.led_with_a_replacements_vote,
            ),
            Property::<Self>::sometimes("a transfer's successor leads", |_, cluster: &Cluster| {
                cluster.led_after_a_transfer
            }),
            Property::<Self>::sometimes("a read is answered", |_, cluster: &Cluster| {
                let answered = cluster.history.serialized_history().unwrap_or_default();
                answered.iter().any(|(_, ret)| matches!(ret, RegisterRet::ReadOk(_)))
            }),
            Property::<Self>::sometimes("a write commits", |_, cluster: &Cluster| {
                cluster.committed.values().any(|(entry, _)| matches!(entry.payload, EntryPayload::Command(_)))
            }),
        ]
    }
}
