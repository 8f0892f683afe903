//! The Harpoon state machine: one replica's view of consensus, driven by
//! [`Node::step`]. It performs no IO and reads no clock: time comes in with
//! every input, and everything the node wants done comes out in a [`Ready`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use thiserror::Error;

use super::check::{check_structure, MessageError, LOG_INDEX_MAX, TERM_JUMP_MAX, TERM_MAX};
use super::config::{Config, ConfigError, ElectionMode};
use super::log::Log;
use super::ready::{ReadReady, Ready, Rejection};
use super::types::{
    Command, Entry, EntryPayload, Envelope, HardState, LogIndex, Message, Nanos, NodeId, RejectHint, Snapshot, Term,
};

/// Entries in one append message.
pub const APPEND_ENTRIES_COUNT_MAX: usize = 256;
/// Approximate payload bytes in one append message.
pub const APPEND_BYTES_MAX: usize = 1 << 20;
/// Append messages outstanding to one follower before the leader waits for acks.
pub const APPENDS_IN_FLIGHT_MAX: usize = 8;
/// Reads waiting for a ReadIndex round or for the term's no-op to commit.
pub const READS_WAITING_COUNT_MAX: usize = 4096;
/// Log entries the leader holds beyond the commit index before it refuses writes.
pub const UNCOMMITTED_ENTRIES_COUNT_MAX: u64 = 8192;
/// Lease rounds the leader remembers while waiting for their quorums.
pub const LEASE_ROUNDS_TRACKED_MAX: usize = 64;

/// One input to [`Node::step`].
#[derive(Clone, Debug)]
pub enum Input<C> {
    /// Nothing happened but time passing; due at or after `Ready::next_deadline`.
    Tick,
    Message(Envelope<C>),
    Client(C),
    /// Requests that arrived together: their writes go to followers in one
    /// append (and to disk in one persist), not one append each.
    Clients(Vec<C>),
    /// Every persist up to the one whose last entry is (`index`, `term`) is synced.
    Persisted {
        index: LogIndex,
        term: Term,
    },
    /// The driver snapshotted its state machine at `snapshot.last_index`
    /// (no later than the applied index) and persisted it; the log before it may go.
    Compact(Snapshot),
    /// An operator asks this leader to hand its leadership to `to` (see
    /// `Node::transfer_leadership_check`; a transfer it refuses is ignored).
    TransferLeadership {
        to: NodeId,
    },
}

/// Why a leader will not hand its leadership to a node.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("node {own} is not the leader; ask the leader (node {leader:?}) to transfer")]
    NotLeader { own: NodeId, leader: Option<NodeId> },
    #[error("node {to} is not a member of this group; name one of {members:?}")]
    UnknownNode { to: NodeId, members: Vec<NodeId> },
    #[error("node {to} leads already; nothing to transfer")]
    ToItself { to: NodeId },
    #[error("leadership transfer needs Harpoon's promises; this group runs {mode:?}")]
    Unsupported { mode: ElectionMode },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Asking for pre-votes; its term is not raised yet.
    PreCandidate,
    Candidate,
    /// Harpoon: won its election, and is making its log equal to the most
    /// up-to-date log among its voters before it leads.
    LeaderElect,
    Leader,
}

/// What a node finds on its disk when it starts.
#[derive(Clone, Debug)]
pub struct Recovered<C> {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, in order.
    pub entries: Vec<Entry<C>>,
    /// A node that replaces one whose disk was lost does not campaign until
    /// its log is at least as up to date as a log ending at this (term,
    /// index): the most up-to-date log among the other members when it
    /// started, which holds every entry committed by then. Until then it
    /// votes only for candidates whose logs reach this position: its lost
    /// log may have counted towards commits that only a minority holds now,
    /// and it could otherwise vote for a candidate lacking them.
    pub votes_withheld_until: Option<(Term, LogIndex)>,
}

impl<C> Default for Recovered<C> {
    fn default() -> Self {
        Recovered { hard_state: HardState::default(), snapshot: None, entries: Vec::new(), votes_withheld_until: None }
    }
}

/// Why a node cannot start from what it recovered. The disk holds a state
/// no correct node writes; starting would risk safety, so the driver stops
/// and says so.
#[derive(Debug, Error, PartialEq)]
pub enum StartError {
    #[error("invalid consensus configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("the stored consensus state is impossible: {0}; this node's data is corrupt, so restore its directory or replace the node")]
    Recovered(String),
}

/// Whom a promise binds this node to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PromiseHolder {
    Node(NodeId),
    /// The quiet period after a restart: the node cannot know whom it
    /// promised before the crash, so it helps nobody.
    RestartQuietPeriod,
}

/// A vote or lease extension this node granted: until `until` (local time) it
/// helps nobody but `holder` become leader, itself included.
#[derive(Clone, Copy, Debug)]
struct Promise {
    holder: PromiseHolder,
    until: Nanos,
}

/// The leader's rules about leases and reads: all true in production.
/// `Config::faults` (tests that prove the checks catch broken leaders)
/// changes them, and this is the only place consensus reads it.
#[derive(Clone, Copy, Debug)]
struct LeaderRules {
    /// A leader whose lease lapses stops leading.
    abdicates_when_the_lease_lapses: bool,
    /// Reads wait for the leader's lease or a quorum round.
    reads_need_the_lease: bool,
    /// Reads wait for the no-op of the leader's term to commit.
    reads_need_the_noop: bool,
    /// A split's new range is led at once only by the parent's leader of the split's own term.
    splits_lead_only_in_their_term: bool,
    /// A leader that releases its promises to a successor stops leading at once.
    release_steps_down: bool,
}

impl LeaderRules {
    fn of(config: &Config) -> LeaderRules {
        let faults = config.faults;
        LeaderRules {
            abdicates_when_the_lease_lapses: !faults.reads_ignore_lease,
            reads_need_the_lease: !faults.reads_ignore_lease,
            reads_need_the_noop: !(faults.reads_ignore_lease || faults.read_before_noop_commits),
            splits_lead_only_in_their_term: !faults.split_leads_in_any_term,
            release_steps_down: !faults.transfer_keeps_serving,
        }
    }
}

#[derive(Clone, Debug)]
struct Progress {
    next_index: LogIndex,
    match_index: LogIndex,
    /// The last index of each append in flight, oldest first.
    in_flight: VecDeque<LogIndex>,
    /// Probing sends one append at a time until the follower's log position is known.
    probing: bool,
    last_progress_at: Nanos,
    last_ack_at: Nanos,
    snapshot_sent_at: Option<Nanos>,
}

impl Progress {
    /// A follower whose log position the leader has yet to learn.
    fn probing_from(next_index: LogIndex, now: Nanos, last_ack_at: Nanos) -> Progress {
        Progress {
            next_index,
            match_index: 0,
            in_flight: VecDeque::new(),
            probing: true,
            last_progress_at: now,
            last_ack_at,
            snapshot_sent_at: None,
        }
    }
}

/// A Harpoon leader-elect's fetch of the most up-to-date log in its vote quorum.
#[derive(Clone, Copy, Debug)]
struct Fetching {
    /// The voter whose log is adopted.
    source: NodeId,
    /// The (term, index) the source's log ended at when it voted. Its log
    /// cannot have changed since: only this term's leader, which is this
    /// node, may append to a voter of this term.
    target: (Term, LogIndex),
    /// The last index fetched and agreed on; the next request asks for what follows it.
    cursor: LogIndex,
    sent_at: Nanos,
}

#[derive(Clone, Debug)]
struct Round {
    number: u64,
    sent_at: Nanos,
    acks: BTreeSet<NodeId>,
}

#[derive(Clone, Debug)]
struct WaitingRead<C> {
    request: C,
    /// None until the leader's no-op has committed.
    read_index: Option<LogIndex>,
    /// The round that must reach a quorum; 0 until one is started for this read.
    round: u64,
}

#[derive(Clone, Debug)]
struct LeaderState<C> {
    progress: BTreeMap<NodeId, Progress>,
    rounds: VecDeque<Round>,
    current_round: u64,
    confirmed_round: u64,
    lease_end: Nanos,
    /// Until then the leader stays even without a lease: its first round
    /// must have a chance to be acknowledged, however slow the disks that
    /// delayed its election were.
    first_round_grace_end: Nanos,
    noop_index: LogIndex,
    reads_waiting: VecDeque<WaitingRead<C>>,
    heartbeat_due: Nanos,
    check_quorum_due: Nanos,
    transfer: Option<Transfer>,
}

/// A leadership transfer under way: writes wait while `to` catches up.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    /// Past this, the transfer is abandoned and writes resume.
    until: Nanos,
    /// Only with the planted `transfer-keeps-serving` bug: the promises
    /// went to `to`, and this leader serves on from its lease.
    released: bool,
}

/// Checks what a disk handed back against what a correct node writes.
fn check_recovered<C>(recovered: &Recovered<C>) -> Result<(), String> {
    let hard_state = recovered.hard_state;
    if hard_state.term > TERM_MAX {
        return Err(format!("term {} exceeds the largest allowed {TERM_MAX}", hard_state.term));
    }
    let (mut index, mut term) =
        recovered.snapshot.as_ref().map_or((0, 0), |snapshot| (snapshot.last_index, snapshot.last_term));
    if index > LOG_INDEX_MAX || term > hard_state.term {
        return Err(format!(
            "the snapshot at index {index}, term {term} lies beyond the node's term {}",
            hard_state.term
        ));
    }
    for entry in &recovered.entries {
        if entry.index != index + 1 {
            return Err(format!("the log jumps from index {index} to {}", entry.index));
        }
        if entry.term < term || entry.term > hard_state.term {
            return Err(format!(
                "entry {} has term {}, outside [{term}, {}] (the previous entry's term to the node's term)",
                entry.index, entry.term, hard_state.term
            ));
        }
        (index, term) = (entry.index, entry.term);
    }
    if index > LOG_INDEX_MAX {
        return Err(format!("the log reaches index {index}, beyond the largest allowed {LOG_INDEX_MAX}"));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Node<C> {
    config: Config,
    rules: LeaderRules,
    rng: ChaCha8Rng,
    now: Nanos,
    hard_state: HardState,
    hard_state_dirty: bool,
    log: Log<C>,
    /// The lowest log index changed since the last Ready; the suffix from it must be persisted.
    unstable_from: Option<LogIndex>,
    snapshot: Option<Snapshot>,
    snapshot_to_persist: Option<Snapshot>,
    durable_index: LogIndex,
    commit_index: LogIndex,
    applied_index: LogIndex,
    role: Role,
    leader_id: Option<NodeId>,
    election_deadline: Nanos,
    last_leader_contact: Option<Nanos>,
    promise: Option<Promise>,
    /// The grants of the pre-vote or vote under way, with each granter's
    /// log position (last term, last index); this node's own included.
    votes: BTreeMap<NodeId, (Term, LogIndex)>,
    /// A pre-vote response showed a log more up to date than this node's.
    better_log_seen: bool,
    /// This node already let a better-placed node campaign first once since it last followed a leader.
    campaign_deferred: bool,
    fetching: Option<Fetching>,
    campaign_sent_at: Nanos,
    leader: Option<LeaderState<C>>,
    votes_withheld_until: Option<(Term, LogIndex)>,
    /// A leader released its promises to this node: campaign at the next
    /// tick, without a pre-vote.
    campaign_now: bool,
    /// Client writes were appended in this step: replicate once, at its end.
    replication_due: bool,
    out: Ready<C>,
}

impl<C: Command> Node<C> {
    /// Starts a node from what it recovered from disk. `seed` drives its
    /// election-timeout randomness; `now` is its local monotonic time.
    pub fn new(config: Config, recovered: Recovered<C>, seed: u64, now: Nanos) -> Result<Node<C>, StartError> {
        config.validate()?;
        check_recovered(&recovered).map_err(StartError::Recovered)?;
        let (snapshot_index, snapshot_term) =
            recovered.snapshot.as_ref().map_or((0, 0), |snapshot| (snapshot.last_index, snapshot.last_term));
        let log = Log::restore(snapshot_index, snapshot_term, recovered.entries);
        // Harpoon: a restarted node may have promised its vote before the crash,
        // so it keeps quiet for a whole lease before granting any.
        let promise = (config.mode == ElectionMode::Harpoon)
            .then_some(Promise { holder: PromiseHolder::RestartQuietPeriod, until: now + config.lease_duration_ns });
        let mut node = Node {
            rules: LeaderRules::of(&config),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            hard_state: recovered.hard_state,
            hard_state_dirty: false,
            durable_index: log.last_index(),
            log,
            unstable_from: None,
            snapshot: recovered.snapshot,
            snapshot_to_persist: None,
            commit_index: snapshot_index,
            applied_index: snapshot_index,
            role: Role::Follower,
            leader_id: None,
            election_deadline: 0,
            last_leader_contact: None,
            promise,
            votes: BTreeMap::new(),
            better_log_seen: false,
            campaign_deferred: false,
            fetching: None,
            campaign_sent_at: 0,
            leader: None,
            votes_withheld_until: recovered.votes_withheld_until,
            campaign_now: false,
            replication_due: false,
            out: Ready::default(),
            config,
        };
        node.reset_election_deadline();
        Ok(node)
    }

    /// Starts this node's replica of the range that a split creates, as the
    /// split entry applies here. `snapshot` is the new range's state at the
    /// split entry (its `last_index` and `last_term` are the entry's), the
    /// same on every replica, so the new group's logs all begin alike.
    ///
    /// The new group starts where its parent stands on this node: the same
    /// term, vote and promise, so a node never helps two leaders of one term
    /// and a promise to the parent's leader binds for the new range too. If
    /// this node leads the parent in the split entry's term, it leads the
    /// new range from the first instant, with the parent's lease: only it
    /// can lead the new range in that term, and every replica starts in that
    /// term or a later one, so no other leader has written to it. A leader
    /// of a later term cannot know what the new range's leader of the
    /// split's term wrote, so it starts as a follower.
    ///
    /// The new range has the parent's replicas and configuration. The
    /// driver persists the new node's `hard_state()` and the snapshot,
    /// in the same write as the parent's applied index, before it steps the
    /// new node.
    pub fn split_off(&self, snapshot: Snapshot, seed: u64) -> Result<Node<C>, StartError> {
        let (index, term) = (snapshot.last_index, snapshot.last_term);
        if term > self.term() || index > self.applied_index {
            return Err(StartError::Recovered(format!(
                "a split at index {index}, term {term} lies beyond the parent's term {} or applied index {}",
                self.term(),
                self.applied_index
            )));
        }
        let in_term = self.term() == term || !self.rules.splits_lead_only_in_their_term;
        let leads = self.role == Role::Leader && in_term;
        let leader = self.leader.as_ref().filter(|_| leads).map(|parent| LeaderState {
            // Every replica of the new range begins at the split entry (its
            // snapshot), which is committed: a follower probed again after
            // an unanswered append (`retransmit_stalled`) is probed from
            // there, not sent a snapshot of what it already holds.
            progress: parent
                .progress
                .iter()
                .map(|(&peer, progress)| {
                    let mut progress = Progress::probing_from(index + 1, self.now, progress.last_ack_at);
                    progress.match_index = index;
                    (peer, progress)
                })
                .collect(),
            rounds: VecDeque::new(),
            current_round: 0,
            confirmed_round: 0,
            lease_end: parent.lease_end,
            first_round_grace_end: parent.first_round_grace_end,
            // The split's state is committed: nothing of this term comes before it.
            noop_index: index,
            reads_waiting: VecDeque::new(),
            heartbeat_due: self.now,
            check_quorum_due: parent.check_quorum_due,
            // A transfer of the parent is the parent's; the new range's leader stays.
            transfer: None,
        });
        Ok(Node {
            rules: self.rules,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: self.now,
            hard_state: self.hard_state,
            hard_state_dirty: false,
            log: Log::restore(index, term, Vec::new()),
            unstable_from: None,
            snapshot: Some(snapshot),
            snapshot_to_persist: None,
            durable_index: index,
            commit_index: index,
            applied_index: index,
            role: if leads { Role::Leader } else { Role::Follower },
            leader_id: self.leader_id.filter(|_| self.term() == term),
            election_deadline: self.election_deadline,
            last_leader_contact: self.last_leader_contact,
            promise: self.promise,
            votes: BTreeMap::new(),
            better_log_seen: false,
            campaign_deferred: false,
            fetching: None,
            campaign_sent_at: self.campaign_sent_at,
            leader,
            // A replacement still catching up may have lost entries of this
            // range too, if its lost disk had applied the split before.
            votes_withheld_until: self.votes_withheld_until,
            campaign_now: false,
            replication_due: false,
            out: Ready::default(),
            // The new range has the parent's replicas.
            config: self.config.clone(),
        })
    }

    /// Feeds one input at local time `now` and returns what the driver must do.
    pub fn step(&mut self, now: Nanos, input: Input<C>) -> Ready<C> {
        assert!(now >= self.now, "node {}: time went backwards from {} to {now}", self.config.id, self.now);
        self.now = now;
        self.on_time_passed();
        match input {
            Input::Tick => {}
            Input::Message(envelope) => self.on_message(envelope),
            Input::Client(request) => self.on_client(request),
            Input::Clients(requests) => requests.into_iter().for_each(|request| self.on_client(request)),
            Input::Persisted { index, term } => self.on_persisted(index, term),
            Input::Compact(snapshot) => self.on_compact(snapshot),
            Input::TransferLeadership { to } => {
                if self.transfer_leadership_check(to).is_ok() {
                    self.start_transfer(to);
                }
            }
        }
        self.finish_step();
        self.take_ready()
    }

    // ----- inspection, for drivers, tests and the simulator's checks -----

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.hard_state.term
    }
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }
    pub fn log(&self) -> &Log<C> {
        &self.log
    }

    /// Whether, at local time `now`, a promise forbids this node to help
    /// `candidate` become leader (by voting, or by campaigning if it is itself).
    pub fn promise_forbids(&self, candidate: NodeId, now: Nanos) -> bool {
        self.promise.is_some_and(|promise| promise.until > now && promise.holder != PromiseHolder::Node(candidate))
    }

    /// Whether this node would hand its leadership to `to` now: it must
    /// lead a Harpoon group of which `to` is another member.
    pub fn transfer_leadership_check(&self, to: NodeId) -> Result<(), TransferError> {
        let own = self.config.id;
        if self.config.mode != ElectionMode::Harpoon {
            return Err(TransferError::Unsupported { mode: self.config.mode });
        }
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { own, leader: self.leader_id });
        }
        if to == own {
            return Err(TransferError::ToItself { to });
        }
        if !self.config.members.contains(&to) {
            return Err(TransferError::UnknownNode { to, members: self.config.members.clone() });
        }
        Ok(())
    }

    /// While leading: whether `peer` has acknowledged the whole log. A
    /// follower still probed has not said where its log ends: a new
    /// range's leader takes each to hold the split entry until it answers,
    /// and one that missed the split holds nothing.
    pub fn follower_caught_up(&self, peer: NodeId) -> bool {
        let progress = self.leader.as_ref().and_then(|leader| leader.progress.get(&peer));
        progress.is_some_and(|progress| !progress.probing && progress.match_index == self.log.last_index())
    }

    /// The node this leader is handing its leadership to, if a transfer is under way.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.leader.as_ref().and_then(|leader| leader.transfer).map(|transfer| transfer.to)
    }

    /// Drops the bytes of the snapshot this node holds and keeps its
    /// position, for a driver that builds snapshots when a follower needs
    /// one rather than keep one in memory. An InstallSnapshot this node
    /// sends then carries no data, and the driver supplies it.
    pub fn forget_snapshot_data(&mut self) {
        if let Some(snapshot) = &mut self.snapshot {
            snapshot.data = bytes::Bytes::new();
        }
    }

    /// While leading: the last index known to match the leader's log on `peer`.
    pub fn match_index(&self, peer: NodeId) -> Option<LogIndex> {
        self.leader.as_ref()?.progress.get(&peer).map(|progress| progress.match_index)
    }

    /// Whether this node still withholds its votes (see `Recovered::votes_withheld_until`).
    pub fn withholds_votes(&self) -> bool {
        let own = (self.log.last_term(), self.log.last_index());
        self.votes_withheld_until.is_some_and(|target| own < target)
    }

    /// Whether a withholding node refuses a candidate whose log ends at
    /// `position`. It helps one whose log reaches the target: that log holds
    /// every entry the target's log held committed (Raft's up-to-date
    /// argument), so the vote cannot lose what this node's lost log had
    /// acknowledged. Refusing such a candidate too would leave the cluster
    /// without a leader for good if another member failed before this
    /// node caught up: only a leader can bring it up to date.
    fn withholds_votes_from(&self, position: (Term, LogIndex)) -> bool {
        let reaches = |target| position >= target || self.config.faults.replacement_votes_freely;
        self.withholds_votes() && self.votes_withheld_until.is_some_and(|target| !reaches(target))
    }

    /// Whether this node would serve a lease read at local time `now`.
    pub fn holds_lease(&self, now: Nanos) -> bool {
        self.config.mode == ElectionMode::Harpoon && self.leader.as_ref().is_some_and(|leader| now < leader.lease_end)
    }

    /// Whether this node would answer a lease read at local time `now`
    /// from its applied state: it holds the lease, and its term's no-op
    /// has committed (before that a read waits, and the state it will be
    /// served from is not known yet).
    pub fn serves_lease_reads(&self, now: Nanos) -> bool {
        self.holds_lease(now) && self.leader.as_ref().is_some_and(|leader| self.commit_index >= leader.noop_index)
    }

    /// The term in which this node may send snapshots, if any: as leader, to
    /// its followers; as a voter, to the leader-elect it voted for, which
    /// fetches from it. A transfer begun in another term must stop.
    pub fn snapshot_sending_term(&self) -> Option<Term> {
        let voter = self.hard_state.voted_for.is_some_and(|candidate| candidate != self.config.id);
        (self.role == Role::Leader || voter).then_some(self.term())
    }

    /// While leading: the local time at which its lease runs out unless renewed.
    pub fn lease_end(&self) -> Option<Nanos> {
        self.leader.as_ref().map(|leader| leader.lease_end)
    }

    /// Whether this node sees a leader whose lease holds at local time
    /// `now`: as leader, its own lease; otherwise, the promise it gave the
    /// leader it follows. Health checks ask this.
    pub fn sees_leased_leader(&self, now: Nanos) -> bool {
        if self.role == Role::Leader {
            return self.holds_lease(now);
        }
        match (self.leader_id, self.promise) {
            (Some(leader), Some(promise)) => promise.holder == PromiseHolder::Node(leader) && now < promise.until,
            _ => false,
        }
    }

    // ----- time -----

    fn on_time_passed(&mut self) {
        let now = self.now;
        if self.role != Role::Leader {
            if now >= self.election_deadline {
                self.on_election_timeout();
            } else if self.fetch_retransmit_at().is_some_and(|at| now >= at) {
                self.send_fetch();
            }
            return;
        }
        if self.lease_lapsed(now) {
            // Lost the quorum's promises: stop serving, keep the term.
            self.abdicate();
            return;
        }
        if self.config.mode == ElectionMode::RaftPreVoteCheckQuorum && now >= self.leader_ref().check_quorum_due {
            if !self.quorum_recently_active() {
                self.abdicate();
                return;
            }
            self.leader_mut().check_quorum_due = now + self.config.election_timeout_ns;
        }
        if self.leader_ref().transfer.is_some_and(|transfer| now >= transfer.until && !transfer.released) {
            // The successor did not catch up in time: keep leading.
            self.leader_mut().transfer = None;
        }
        if self.leader_ref().transfer.is_some_and(|transfer| transfer.released) {
            // The planted bug: the promises are gone, yet this leader serves
            // on until its lease lapses. It sends nothing that would win
            // them back.
            return;
        }
        if now >= self.leader_ref().heartbeat_due {
            self.start_round();
        }
        self.retransmit_stalled();
    }

    fn quorum_recently_active(&self) -> bool {
        let since = self.now.saturating_sub(self.config.election_timeout_ns);
        let active = self.leader_ref().progress.values().filter(|progress| progress.last_ack_at >= since).count();
        active + 1 >= self.config.quorum()
    }

    fn retransmit_stalled(&mut self) {
        let timeout = self.config.retransmit_timeout_ns;
        let now = self.now;
        let stalled: Vec<NodeId> = self
            .leader_ref()
            .progress
            .iter()
            .filter(|(_, progress)| {
                let waiting = !progress.in_flight.is_empty() || progress.snapshot_sent_at.is_some();
                waiting && now >= progress.last_progress_at + timeout
            })
            .map(|(&peer, _)| peer)
            .collect();
        for peer in stalled {
            let progress = self.progress_mut(peer);
            // An unanswered probe goes again where it was: the follower
            // said nothing, so nothing says it needs more. (Going back to
            // the match index sent a follower this leader never heard
            // from, at match 0, a snapshot: one per range to a node that
            // hosts none of them yet, each holding a transfer slot.)
            // Appends lost after an answer resume after what it acknowledged.
            if !progress.probing {
                progress.next_index = progress.match_index + 1;
            }
            progress.probing = true;
            progress.in_flight.clear();
            progress.snapshot_sent_at = None;
            progress.last_progress_at = now;
            self.replicate(peer);
        }
    }

    fn random_election_timeout(&mut self) -> Nanos {
        let base = self.config.election_timeout_ns;
        self.rng.gen_range(base..2 * base)
    }

    fn reset_election_deadline(&mut self) {
        self.election_deadline = self.now + self.random_election_timeout();
    }

    /// Harpoon: a leader stops when its lease has lapsed, but not before its
    /// first round has had a full lease's time to be acknowledged.
    fn lease_lapsed(&self, now: Nanos) -> bool {
        let Some(leader) = &self.leader else { return false };
        self.config.mode == ElectionMode::Harpoon
            && self.rules.abdicates_when_the_lease_lapses
            && now >= leader.lease_end.max(leader.first_round_grace_end)
    }

    /// Whether an unexpired promise forbids helping `candidate` become leader.
    fn promise_binds(&self, candidate: NodeId) -> bool {
        self.promise_forbids(candidate, self.now)
    }

    fn promise_to(&mut self, holder: NodeId) {
        if self.config.mode == ElectionMode::Harpoon {
            let holder = PromiseHolder::Node(holder);
            let until = self.now + self.config.lease_duration_ns;
            let until = match self.promise {
                Some(promise) if promise.holder == holder => until.max(promise.until),
                _ => until,
            };
            self.promise = Some(Promise { holder, until });
        }
    }

    /// A follower in Raft-with-check-quorum ignores campaigns while it hears from a leader.
    fn hears_leader(&self) -> bool {
        self.role == Role::Leader
            || (self.leader_id.is_some()
                && self.last_leader_contact.is_some_and(|at| self.now < at + self.config.election_timeout_ns))
    }

    /// Whether this node may not help `candidate`, whose log ends at `position`.
    fn bound_against(&self, candidate: NodeId, position: (Term, LogIndex)) -> bool {
        if self.withholds_votes_from(position) {
            return true;
        }
        match self.config.mode {
            ElectionMode::Harpoon => self.promise_binds(candidate) && !self.config.faults.votes_ignore_promises,
            ElectionMode::RaftPreVoteCheckQuorum => self.hears_leader(),
            ElectionMode::Raft => false,
        }
    }

    // ----- elections -----

    fn on_election_timeout(&mut self) {
        if self.withholds_votes() {
            self.reset_election_deadline();
            return;
        }
        if let Some(promise) = self.promise.filter(|_| self.promise_binds(self.config.id)) {
            // Harpoon: still bound to a leader (or to the restart quiet period).
            self.election_deadline = promise.until;
            return;
        }
        if std::mem::take(&mut self.campaign_now) {
            // The leader handed over its promises: no one else may win, so
            // no pre-vote is needed to avoid disrupting anybody.
            self.start_election();
            return;
        }
        if self.role == Role::LeaderElect {
            // The voter with the best log did not answer in time. Settling
            // for a lesser log could lose a committed entry: start over.
            self.role = Role::Follower;
            self.fetching = None;
        }
        self.reset_election_deadline();
        if self.config.mode.uses_pre_vote() {
            self.start_pre_vote();
        } else {
            self.start_election();
        }
    }

    fn own_position(&self) -> (Term, LogIndex) {
        (self.log.last_term(), self.log.last_index())
    }

    fn start_pre_vote(&mut self) {
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.votes = BTreeMap::from([(self.config.id, self.own_position())]);
        self.better_log_seen = false;
        let message = Message::PreVote {
            term: self.term() + 1,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        self.broadcast(message);
        if self.votes.len() >= self.config.quorum() {
            self.on_pre_vote_quorum();
        }
    }

    /// Harpoon's campaign preference: any node that wins its pre-votes hears
    /// a quorum and may lead, but one that heard of a more up-to-date log
    /// waits once, for about half an election timeout, so that the better
    /// node (whose timer runs too) usually campaigns first and no fetch is
    /// needed. If that node cannot win (it does not reach a quorum, as in
    /// the constrained election), this one campaigns after the wait.
    fn on_pre_vote_quorum(&mut self) {
        let defers = self.config.mode == ElectionMode::Harpoon
            && self.config.campaign_defers_to_better_logs
            && self.better_log_seen
            && !self.campaign_deferred;
        if !defers {
            self.start_election();
            return;
        }
        self.campaign_deferred = true;
        self.role = Role::Follower;
        self.votes.clear();
        self.election_deadline = self.now + self.random_election_timeout() / 2;
    }

    fn start_election(&mut self) {
        if self.config.mode == ElectionMode::Harpoon && self.promise_binds(self.config.id) {
            // A promise made since the pre-vote started (a vote for another
            // candidate) forbids campaigning until it expires.
            self.role = Role::Follower;
            self.reset_election_deadline();
            return;
        }
        self.role = Role::Candidate;
        self.leader_id = None;
        self.hard_state = HardState { term: self.term() + 1, voted_for: Some(self.config.id) };
        self.hard_state_dirty = true;
        self.votes = BTreeMap::from([(self.config.id, self.own_position())]);
        self.campaign_sent_at = self.now;
        self.promise_to(self.config.id);
        let message = Message::Vote {
            term: self.term(),
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        self.broadcast(message);
        if self.votes.len() >= self.config.quorum() {
            self.on_vote_quorum();
        }
    }

    /// Raft's up-to-date rule: a candidate whose log ends at
    /// (`last_log_term`, `last_log_index`) may get this node's vote.
    /// Harpoon does not compare logs: its leader-elect fetches instead.
    fn log_allows(&self, last_log_index: LogIndex, last_log_term: Term) -> bool {
        self.config.mode == ElectionMode::Harpoon
            || self.config.faults.votes_ignore_logs
            || self.log.at_most_as_up_to_date_as(last_log_index, last_log_term)
    }

    fn on_pre_vote(&mut self, from: NodeId, term: Term, last_log_index: LogIndex, last_log_term: Term) {
        let granted = term > self.term()
            && self.log_allows(last_log_index, last_log_term)
            && !self.bound_against(from, (last_log_term, last_log_index));
        let term = if granted { term } else { self.term() };
        let (last_log_term, last_log_index) = self.own_position();
        self.send(from, Message::PreVoteResponse { term, granted, last_log_index, last_log_term });
    }

    fn on_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool, position: (Term, LogIndex)) {
        if !granted && term > self.term() {
            self.become_follower(term, None);
            return;
        }
        if self.role != Role::PreCandidate {
            return;
        }
        self.better_log_seen |= position > self.own_position();
        if !granted || term != self.term() + 1 {
            return;
        }
        self.votes.insert(from, position);
        if self.votes.len() >= self.config.quorum() {
            self.on_pre_vote_quorum();
        }
    }

    fn on_vote(&mut self, from: NodeId, term: Term, last_log_index: LogIndex, last_log_term: Term) {
        let (own_term, own_index) = self.own_position();
        if term < self.term() || self.bound_against(from, (last_log_term, last_log_index)) {
            // Harpoon: a bound voter neither votes nor adopts the candidate's term.
            let response = Message::VoteResponse {
                term: self.term(),
                granted: false,
                last_log_index: own_index,
                last_log_term: own_term,
            };
            self.send_after_persist(from, response);
            return;
        }
        if term > self.term() {
            self.become_follower(term, None);
        }
        let free = self.hard_state.voted_for.is_none_or(|voted| voted == from);
        let granted = free && self.log_allows(last_log_index, last_log_term);
        if granted {
            self.hard_state.voted_for = Some(from);
            self.hard_state_dirty = true;
            // A voter helps its candidate, not itself: a pre-vote of its own
            // still gathering grants must not go on to a campaign.
            self.role = Role::Follower;
            self.votes.clear();
            self.campaign_deferred = false;
            self.reset_election_deadline();
            self.promise_to(from);
        }
        // Sent after the vote is durable, and reporting a log that is: a
        // Harpoon winner may adopt this log as it stands now, and from now
        // on only that winner may change it.
        let response =
            Message::VoteResponse { term: self.term(), granted, last_log_index: own_index, last_log_term: own_term };
        self.send_after_persist(from, response);
    }

    fn on_vote_response(&mut self, from: NodeId, term: Term, granted: bool, position: (Term, LogIndex)) {
        if term > self.term() {
            self.become_follower(term, None);
            return;
        }
        if self.role != Role::Candidate || term != self.term() || !granted {
            return;
        }
        self.votes.insert(from, position);
        if self.votes.len() >= self.config.quorum() {
            self.on_vote_quorum();
        }
    }

    /// Harpoon's leader completeness: every entry committed in an earlier
    /// term is on a quorum, which meets the vote quorum, so the most
    /// up-to-date log among the voters holds it (Raft's argument, with
    /// "the candidate's log" replaced by that log). The winner adopts that
    /// log before it leads; with its own log best, it leads at once.
    fn on_vote_quorum(&mut self) {
        let own = self.own_position();
        let id = self.config.id;
        let best = self.votes.iter().filter(|(&voter, _)| voter != id).max_by_key(|(&voter, &position)| {
            // Ties go to the lower id, for a choice every replay repeats.
            (position, std::cmp::Reverse(voter))
        });
        let skips = self.config.mode != ElectionMode::Harpoon || self.config.faults.leader_elect_skips_fetch;
        match best {
            Some((&source, &target)) if target > own && !skips => {
                self.role = Role::LeaderElect;
                self.fetching = Some(Fetching { source, target, cursor: self.commit_index, sent_at: self.now });
                self.send_fetch();
            }
            _ => self.become_leader(),
        }
    }

    /// When a leader-elect asks its source again, unanswered.
    fn fetch_retransmit_at(&self) -> Option<Nanos> {
        self.fetching.map(|fetching| fetching.sent_at + self.config.retransmit_timeout_ns)
    }

    fn send_fetch(&mut self) {
        let fetching = self.fetching.as_mut().expect("a leader-elect fetches");
        fetching.sent_at = self.now;
        let (source, prev_index) = (fetching.source, fetching.cursor);
        let prev_term = self.log.term(prev_index).unwrap_or_else(|| {
            panic!(
                "node {}: no term at the fetch cursor {prev_index} (snapshot {})",
                self.config.id,
                self.log.snapshot_index()
            )
        });
        self.send(source, Message::Fetch { term: self.term(), prev_index, prev_term });
    }

    /// A voter answers its leader-elect from a log that nothing has changed
    /// since it voted (see `Fetching::target`).
    fn on_fetch(&mut self, from: NodeId, term: Term, prev_index: LogIndex, prev_term: Term) {
        if term < self.term() {
            let response =
                Message::FetchResponse { term: self.term(), prev_index, matched: false, entries: Vec::new() };
            self.send(from, response);
            return;
        }
        if term > self.term() || self.hard_state.voted_for != Some(from) {
            // No correct node asks a voter that did not vote for it.
            return;
        }
        // The leader-elect is working towards leading this term: wait for it
        // rather than campaign. (No promise is renewed: a restarted voter
        // cannot know whom it promised before.)
        self.reset_election_deadline();
        if prev_index < self.log.snapshot_index() {
            let snapshot = self.snapshot_covering_the_log();
            self.send(from, Message::InstallSnapshot { term, snapshot, round: 0 });
            return;
        }
        let matched = self.log.term(prev_index) == Some(prev_term);
        let entries = if matched && prev_index < self.log.last_index() {
            self.log.slice(prev_index + 1, APPEND_ENTRIES_COUNT_MAX, APPEND_BYTES_MAX)
        } else {
            Vec::new()
        };
        self.send(from, Message::FetchResponse { term, prev_index, matched, entries });
    }

    fn on_fetch_response(&mut self, from: NodeId, prev_index: LogIndex, matched: bool, entries: Vec<Entry<C>>) {
        let Some(fetching) = self.fetching.filter(|fetching| fetching.source == from) else { return };
        if self.role != Role::LeaderElect || prev_index != fetching.cursor {
            return; // A duplicate, or the answer to a retransmitted request.
        }
        let (target_term, target_index) = fetching.target;
        let beyond_target = entries.last().is_some_and(|entry| entry.index > target_index || entry.term > target_term);
        if !matched || entries.is_empty() || beyond_target {
            // The source's log is not the one it voted with: a broken peer.
            // Leading with anything else could lose a committed entry.
            self.give_up_election();
            return;
        }
        let last = entries.last().map_or(prev_index, |entry| entry.index);
        // The cursor starts at the commit index and only rises.
        self.merge_entries(from, entries);
        self.on_fetched(last);
    }

    /// A snapshot from the source, which had compacted past the cursor.
    fn on_fetched_snapshot(&mut self, snapshot: Snapshot) {
        let fetching = self.fetching.expect("a leader-elect fetches");
        if snapshot.last_index <= fetching.cursor {
            return; // A duplicate: the cursor has passed it.
        }
        let (target_term, target_index) = fetching.target;
        if snapshot.last_index > target_index || snapshot.last_term > target_term {
            self.give_up_election();
            return;
        }
        let last_index = snapshot.last_index;
        self.install(snapshot);
        self.on_fetched(last_index);
    }

    fn on_fetched(&mut self, last: LogIndex) {
        let fetching = self.fetching.as_mut().expect("a leader-elect fetches");
        fetching.cursor = last;
        let (target_term, target_index) = fetching.target;
        // A fetch that moves may take as long as it needs.
        self.election_deadline = self.now + self.config.election_timeout_ns;
        if last < target_index {
            self.send_fetch();
            return;
        }
        if self.own_position() != (target_term, target_index) {
            // The source's entries do not end where it said its log did.
            self.give_up_election();
            return;
        }
        self.fetching = None;
        self.become_leader();
    }

    fn give_up_election(&mut self) {
        self.fetching = None;
        self.role = Role::Follower;
        self.reset_election_deadline();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term() {
            self.hard_state = HardState { term, voted_for: None };
            self.hard_state_dirty = true;
        }
        self.step_down_from_leading(leader);
        self.role = Role::Follower;
        self.fetching = None;
        self.leader_id = leader;
        self.reset_election_deadline();
    }

    /// Harpoon's abdication, also used by check-quorum: stop leading without a new term.
    fn abdicate(&mut self) {
        self.step_down_from_leading(None);
        self.role = Role::Follower;
        self.leader_id = None;
        self.reset_election_deadline();
    }

    fn step_down_from_leading(&mut self, new_leader: Option<NodeId>) {
        if let Some(leader) = self.leader.take() {
            for read in leader.reads_waiting {
                self.out.rejected.push((read.request, Rejection::NotLeader { leader: new_leader }));
            }
        }
    }

    fn become_leader(&mut self) {
        let now = self.now;
        let next_index = self.log.last_index() + 1;
        let progress = self
            .config
            .members
            .iter()
            .filter(|&&member| member != self.config.id)
            .map(|&peer| (peer, Progress::probing_from(next_index, now, now)))
            .collect();
        // The votes were promises made no earlier than the campaign's send time,
        // so they give the first lease.
        let lease_end = match self.config.mode {
            ElectionMode::Harpoon => self.campaign_sent_at + self.config.leader_lease_ns(),
            _ => 0,
        };
        self.leader = Some(LeaderState {
            progress,
            rounds: VecDeque::new(),
            current_round: 0,
            confirmed_round: 0,
            lease_end,
            first_round_grace_end: now + self.config.leader_lease_ns(),
            noop_index: next_index,
            reads_waiting: VecDeque::new(),
            heartbeat_due: now,
            check_quorum_due: now + self.config.election_timeout_ns,
            transfer: None,
        });
        self.role = Role::Leader;
        self.leader_id = Some(self.config.id);
        self.append_local(EntryPayload::Noop);
        self.start_round();
        self.replicate_all();
    }

    // ----- rounds: heartbeats, leases and read confirmation -----

    /// Starts a lease/read round with a heartbeat to every peer.
    fn start_round(&mut self) {
        let now = self.now;
        let id = self.config.id;
        let interval = self.config.heartbeat_interval_ns;
        let commit = self.commit_index;
        let term = self.term();
        self.promise_to(id);
        let leader = self.leader_mut();
        leader.current_round += 1;
        let number = leader.current_round;
        leader.rounds.push_back(Round { number, sent_at: now, acks: BTreeSet::from([id]) });
        while leader.rounds.len() > LEASE_ROUNDS_TRACKED_MAX {
            leader.rounds.pop_front();
        }
        leader.heartbeat_due = now + interval;
        let heartbeats: Vec<(NodeId, Message<C>)> = leader
            .progress
            .iter()
            .map(|(&peer, progress)| {
                (peer, Message::Heartbeat { term, commit: commit.min(progress.match_index), round: number })
            })
            .collect();
        for (peer, message) in heartbeats {
            self.send(peer, message);
        }
        self.on_round_ack(id, number);
    }

    fn on_round_ack(&mut self, from: NodeId, number: u64) {
        let quorum = self.config.quorum();
        let lease_ns = self.config.leader_lease_ns();
        let harpoon = self.config.mode == ElectionMode::Harpoon;
        let leader = self.leader_mut();
        let Some(round) = leader.rounds.iter_mut().find(|round| round.number == number) else {
            return;
        };
        round.acks.insert(from);
        if round.acks.len() < quorum {
            return;
        }
        let sent_at = round.sent_at;
        if harpoon {
            leader.lease_end = leader.lease_end.max(sent_at + lease_ns);
        }
        leader.confirmed_round = leader.confirmed_round.max(number);
        // Older rounds can only give a shorter lease and confirm less.
        leader.rounds.retain(|round| round.number > number);
    }

    // ----- replication -----

    fn append_local(&mut self, payload: EntryPayload<C>) {
        let entry = Entry { term: self.term(), index: self.log.last_index() + 1, payload };
        self.mark_unstable(entry.index);
        self.log.truncate_and_append(entry);
    }

    fn mark_unstable(&mut self, index: LogIndex) {
        self.unstable_from = Some(self.unstable_from.map_or(index, |from| from.min(index)));
        self.durable_index = self.durable_index.min(index - 1);
    }

    fn replicate_all(&mut self) {
        let peers: Vec<NodeId> = self.leader_ref().progress.keys().copied().collect();
        for peer in peers {
            self.replicate(peer);
        }
    }

    fn replicate(&mut self, peer: NodeId) {
        let now = self.now;
        let last_index = self.log.last_index();
        let snapshot_index = self.log.snapshot_index();
        let retransmit = self.config.retransmit_timeout_ns;
        let progress = self.progress_mut(peer);
        if progress.next_index <= snapshot_index {
            let recently_sent = progress.snapshot_sent_at.is_some_and(|at| now < at + retransmit);
            if !recently_sent {
                self.send_snapshot(peer);
            }
            return;
        }
        if progress.probing {
            if progress.in_flight.is_empty() {
                self.send_append(peer);
            }
            return;
        }
        loop {
            let progress = self.progress_mut(peer);
            if progress.in_flight.len() >= APPENDS_IN_FLIGHT_MAX || progress.next_index > last_index {
                return;
            }
            self.send_append(peer);
        }
    }

    fn send_append(&mut self, peer: NodeId) {
        let progress = &self.leader_ref().progress[&peer];
        let prev_index = progress.next_index - 1;
        let probing = progress.probing;
        let prev_term = self.log.term(prev_index).unwrap_or_else(|| {
            panic!(
                "node {}: no term at {prev_index} though the snapshot is at {}",
                self.config.id,
                self.log.snapshot_index()
            )
        });
        let entries = if prev_index < self.log.last_index() {
            self.log.slice(prev_index + 1, APPEND_ENTRIES_COUNT_MAX, APPEND_BYTES_MAX)
        } else {
            Vec::new()
        };
        let last_sent = prev_index + entries.len() as u64;
        let message = Message::Append {
            term: self.term(),
            prev_index,
            prev_term,
            entries,
            commit: self.commit_index,
            round: self.leader_ref().current_round,
        };
        let progress = self.progress_mut(peer);
        progress.in_flight.push_back(last_sent);
        if !probing {
            progress.next_index = last_sent + 1;
        }
        self.send(peer, message);
    }

    /// The snapshot the log is compacted behind, which a node behind it needs.
    fn snapshot_covering_the_log(&self) -> Snapshot {
        self.snapshot.clone().unwrap_or_else(|| {
            panic!("node {}: log compacted to {} without a snapshot", self.config.id, self.log.snapshot_index())
        })
    }

    fn send_snapshot(&mut self, peer: NodeId) {
        let snapshot = self.snapshot_covering_the_log();
        let message = Message::InstallSnapshot { term: self.term(), snapshot, round: self.leader_ref().current_round };
        let now = self.now;
        let progress = self.progress_mut(peer);
        progress.snapshot_sent_at = Some(now);
        progress.last_progress_at = now;
        self.send(peer, message);
    }

    fn on_append_response(&mut self, from: NodeId, success: bool, index: LogIndex, hint: Option<RejectHint>) {
        let now = self.now;
        if success {
            let progress = self.progress_mut(from);
            if index > progress.match_index {
                progress.match_index = index;
                progress.last_progress_at = now;
            }
            progress.next_index = progress.next_index.max(index + 1);
            while progress.in_flight.front().is_some_and(|&last| last <= index) {
                progress.in_flight.pop_front();
            }
            if progress.probing {
                progress.probing = false;
                progress.in_flight.clear();
            }
            self.maybe_commit();
            self.replicate(from);
            return;
        }
        let progress = self.progress_mut(from);
        let stale = if progress.probing { index + 1 != progress.next_index } else { index <= progress.match_index };
        if stale {
            return;
        }
        let next = self.next_index_after_reject(index, hint);
        let progress = self.progress_mut(from);
        if let Some(RejectHint { conflict_index, conflict_term: None }) = hint {
            // The follower's log ends before what it acknowledged: its disk
            // was wiped or replaced. Start over from where it really is.
            progress.match_index = progress.match_index.min(conflict_index.saturating_sub(1));
        }
        progress.next_index = next.clamp(progress.match_index + 1, index.max(progress.match_index + 1));
        progress.probing = true;
        progress.in_flight.clear();
        progress.last_progress_at = now;
        self.replicate(from);
    }

    /// Raft's fast backtracking: skip the follower's whole conflicting term.
    fn next_index_after_reject(&self, rejected: LogIndex, hint: Option<RejectHint>) -> LogIndex {
        let Some(hint) = hint else { return rejected };
        match hint.conflict_term.and_then(|term| self.log.last_index_of_term(term)) {
            Some(last_of_term) => (last_of_term + 1).min(rejected),
            None => hint.conflict_index.min(rejected),
        }
    }

    fn on_snapshot_response(&mut self, from: NodeId, last_index: LogIndex) {
        let now = self.now;
        let progress = self.progress_mut(from);
        progress.match_index = progress.match_index.max(last_index);
        progress.next_index = progress.match_index + 1;
        progress.snapshot_sent_at = None;
        progress.probing = true;
        progress.in_flight.clear();
        progress.last_progress_at = now;
        self.maybe_commit();
        self.replicate(from);
    }

    fn maybe_commit(&mut self) {
        let mut matched: Vec<LogIndex> =
            self.leader_ref().progress.values().map(|progress| progress.match_index).collect();
        matched.push(self.durable_index);
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.config.quorum() - 1];
        // Raft §5.4.2: only entries of the current term commit by counting.
        if candidate > self.commit_index && self.log.term(candidate) == Some(self.term()) {
            self.commit_index = candidate;
        }
    }

    // ----- follower side -----

    /// Accepts `from` as leader of `term` (which is at least ours).
    fn follow(&mut self, from: NodeId, term: Term) {
        if term > self.term() || self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(term, Some(from));
        } else {
            self.reset_election_deadline();
        }
        self.last_leader_contact = Some(self.now);
        self.campaign_deferred = false;
        self.promise_to(from);
    }

    fn on_append(&mut self, from: NodeId, append: Message<C>) {
        let Message::Append { term, prev_index, prev_term, entries, commit, round } = append else {
            unreachable!("on_append takes only appends");
        };
        if term < self.term() {
            let response =
                Message::AppendResponse { term: self.term(), success: false, index: prev_index, hint: None, round };
            self.send(from, response);
            return;
        }
        self.follow(from, term);
        if prev_index < self.commit_index {
            let index = self.commit_index;
            self.send_after_persist(from, Message::AppendResponse { term, success: true, index, hint: None, round });
            return;
        }
        if self.log.term(prev_index) != Some(prev_term) {
            let hint = self.reject_hint(prev_index);
            let response = Message::AppendResponse { term, success: false, index: prev_index, hint: Some(hint), round };
            self.send(from, response);
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        // Entries start after prev_index, which is at least the commit index
        // (checked above), and check_structure made them contiguous.
        self.merge_entries(from, entries);
        self.commit_index = self.commit_index.max(commit.min(last_new));
        self.send_after_persist(
            from,
            Message::AppendResponse { term, success: true, index: last_new, hint: None, round },
        );
    }

    /// Takes contiguous `entries` from `from` into the log, replacing the
    /// suffix from the first that conflicts. The caller ensures they all
    /// lie beyond the commit index.
    fn merge_entries(&mut self, from: NodeId, entries: Vec<Entry<C>>) {
        for entry in entries {
            if self.log.term(entry.index) == Some(entry.term) {
                continue;
            }
            assert!(
                entry.index > self.commit_index,
                "node {}: entries from {from} would overwrite committed index {} (commit {})",
                self.config.id,
                entry.index,
                self.commit_index
            );
            self.mark_unstable(entry.index);
            self.log.truncate_and_append(entry);
        }
    }

    fn reject_hint(&self, prev_index: LogIndex) -> RejectHint {
        if prev_index > self.log.last_index() {
            return RejectHint { conflict_index: self.log.last_index() + 1, conflict_term: None };
        }
        let conflict_term = self.log.term(prev_index);
        RejectHint { conflict_index: self.log.first_index_of_term_at(prev_index), conflict_term }
    }

    fn on_heartbeat(&mut self, from: NodeId, term: Term, commit: LogIndex, round: u64) {
        if term < self.term() {
            self.send(from, Message::HeartbeatResponse { term: self.term(), round });
            return;
        }
        self.follow(from, term);
        // The leader sends min(its commit, our acknowledged match), which we hold.
        self.commit_index = self.commit_index.max(commit.min(self.log.last_index()));
        self.send(from, Message::HeartbeatResponse { term, round });
    }

    fn on_install_snapshot(&mut self, from: NodeId, term: Term, snapshot: Snapshot, round: u64) {
        if term < self.term() {
            let response = Message::InstallSnapshotResponse { term: self.term(), last_index: 0, round };
            self.send(from, response);
            return;
        }
        self.follow(from, term);
        let last_index = snapshot.last_index;
        if last_index <= self.commit_index {
            let response = Message::InstallSnapshotResponse { term, last_index: self.commit_index, round };
            self.send_after_persist(from, response);
            return;
        }
        self.install(snapshot);
        self.send_after_persist(from, Message::InstallSnapshotResponse { term, last_index, round });
    }

    /// Replaces the state up to `snapshot.last_index`, which is committed.
    fn install(&mut self, snapshot: Snapshot) {
        let last_index = snapshot.last_index;
        self.log.install(&snapshot);
        self.unstable_from = self.unstable_from.map(|from| from.max(last_index + 1));
        if self.unstable_from.is_some_and(|from| from > self.log.last_index()) {
            self.unstable_from = None;
        }
        self.durable_index = self.durable_index.min(last_index);
        self.commit_index = last_index;
        self.applied_index = last_index;
        self.snapshot = Some(snapshot.clone());
        self.snapshot_to_persist = Some(snapshot);
    }

    // ----- inputs -----

    fn on_message(&mut self, envelope: Envelope<C>) {
        if let Err(error) = self.check_message(&envelope) {
            self.out.refused.push((envelope.from, error));
            return;
        }
        let Envelope { from, message, .. } = envelope;
        let term = message.term();
        let is_response = matches!(
            message,
            Message::AppendResponse { .. }
                | Message::HeartbeatResponse { .. }
                | Message::InstallSnapshotResponse { .. }
        );
        if is_response {
            if term > self.term() {
                self.become_follower(term, None);
                return;
            }
            if self.role != Role::Leader || term < self.term() {
                return;
            }
            self.progress_mut(from).last_ack_at = self.now;
        }
        match message {
            Message::PreVote { term, last_log_index, last_log_term } => {
                self.on_pre_vote(from, term, last_log_index, last_log_term)
            }
            Message::PreVoteResponse { term, granted, last_log_index, last_log_term } => {
                self.on_pre_vote_response(from, term, granted, (last_log_term, last_log_index))
            }
            Message::Vote { term, last_log_index, last_log_term } => {
                self.on_vote(from, term, last_log_index, last_log_term)
            }
            Message::VoteResponse { term, granted, last_log_index, last_log_term } => {
                self.on_vote_response(from, term, granted, (last_log_term, last_log_index))
            }
            append @ Message::Append { .. } => self.on_append(from, append),
            Message::Heartbeat { term, commit, round } => self.on_heartbeat(from, term, commit, round),
            Message::Fetch { term, prev_index, prev_term } => self.on_fetch(from, term, prev_index, prev_term),
            Message::FetchResponse { term, .. } if term > self.term() => self.become_follower(term, None),
            Message::FetchResponse { term, prev_index, matched, entries } => {
                if term == self.term() {
                    self.on_fetch_response(from, prev_index, matched, entries);
                }
            }
            // This term's only leader is this node, so a snapshot of this
            // term is its source's answer to a fetch.
            Message::InstallSnapshot { term, snapshot, .. }
                if self.role == Role::LeaderElect && term == self.term() =>
            {
                if self.fetching.is_some_and(|fetching| fetching.source == from) {
                    self.on_fetched_snapshot(snapshot);
                }
            }
            Message::InstallSnapshot { term, snapshot, round } => self.on_install_snapshot(from, term, snapshot, round),
            Message::AppendResponse { success, index, hint, round, .. } => {
                self.on_round_ack(from, round);
                self.on_append_response(from, success, index, hint);
            }
            Message::HeartbeatResponse { round, .. } => {
                self.on_round_ack(from, round);
                // A follower still probed is sent its probe: a new range's
                // leader takes every follower to hold the split entry, and
                // an idle range appends nothing else, so one that missed
                // the split (an empty replica) learns of it only this way.
                let progress = &self.leader_ref().progress[&from];
                let behind = progress.probing || progress.match_index < self.log.last_index();
                if behind && progress.in_flight.is_empty() {
                    self.replicate(from);
                }
            }
            Message::InstallSnapshotResponse { last_index, round, .. } => {
                self.on_round_ack(from, round);
                self.on_snapshot_response(from, last_index);
            }
            Message::Release { term, successor } => self.on_release(from, term, successor),
        }
    }

    /// The checks a peer message must pass before it may change anything.
    fn check_message(&self, envelope: &Envelope<C>) -> Result<(), MessageError> {
        let own = self.config.id;
        if envelope.to != own {
            return Err(MessageError::WrongRecipient { to: envelope.to, own });
        }
        if envelope.from == own {
            return Err(MessageError::FromSelf { own });
        }
        if !self.config.members.contains(&envelope.from) {
            return Err(MessageError::NotAMember { from: envelope.from });
        }
        check_structure(&envelope.message)?;
        let term = envelope.message.term();
        if term > self.term().saturating_add(TERM_JUMP_MAX) {
            return Err(MessageError::TermJump { term, own: self.term() });
        }
        if let Message::Release { successor, .. } = envelope.message {
            if successor == envelope.from || !self.config.members.contains(&successor) {
                return Err(MessageError::BadSuccessor { successor });
            }
        }
        let acknowledged = match envelope.message {
            Message::AppendResponse { index, .. } => Some(index),
            Message::InstallSnapshotResponse { last_index, .. } => Some(last_index),
            _ => None,
        };
        let counted = self.role == Role::Leader && term == self.term();
        match acknowledged {
            // Every index a follower names in this term came from this leader's log.
            Some(index) if counted && index > self.log.last_index() => {
                Err(MessageError::BeyondLog { index, last_index: self.log.last_index() })
            }
            _ => Ok(()),
        }
    }

    fn on_client(&mut self, request: C) {
        if self.role != Role::Leader {
            let leader = self.leader_id;
            self.out.rejected.push((request, Rejection::NotLeader { leader }));
            return;
        }
        if request.is_read() {
            self.on_read(request);
            return;
        }
        if let Some(transfer) = self.leader_ref().transfer {
            // Writes wait for the successor, so that it catches up; the
            // client retries and finds it.
            self.out.rejected.push((request, Rejection::NotLeader { leader: Some(transfer.to) }));
            return;
        }
        if self.log.last_index() - self.commit_index >= UNCOMMITTED_ENTRIES_COUNT_MAX {
            self.out.rejected.push((request, Rejection::Overloaded));
            return;
        }
        self.append_local(EntryPayload::Command(request));
        self.replication_due = true;
    }

    fn on_read(&mut self, request: C) {
        let now = self.now;
        let rules = self.rules;
        let commit = self.commit_index;
        let holds_lease = self.holds_lease(now) || !rules.reads_need_the_lease;
        let leader = self.leader_mut();
        let noop_committed = commit >= leader.noop_index || !rules.reads_need_the_noop;
        if holds_lease && noop_committed {
            self.out.reads.push(ReadReady { request, read_index: commit });
            return;
        }
        if leader.reads_waiting.len() >= READS_WAITING_COUNT_MAX {
            self.out.rejected.push((request, Rejection::Overloaded));
            return;
        }
        let read_index = noop_committed.then_some(commit);
        leader.reads_waiting.push_back(WaitingRead { request, read_index, round: 0 });
    }

    fn on_persisted(&mut self, index: LogIndex, term: Term) {
        // A persist may report entries that a later truncation has replaced.
        if self.log.term(index) == Some(term) && self.unstable_from.is_none_or(|from| from > index) {
            self.durable_index = self.durable_index.max(index);
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    fn on_compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.last_index;
        if index <= self.log.snapshot_index() {
            return;
        }
        assert!(
            index <= self.applied_index,
            "node {}: snapshot at {index} is beyond the applied index {}",
            self.config.id,
            self.applied_index
        );
        assert_eq!(
            self.log.term(index),
            Some(snapshot.last_term),
            "node {}: snapshot term disagrees with the log at {index}",
            self.config.id
        );
        self.log.compact(index, snapshot.last_term);
        self.unstable_from = self.unstable_from.map(|from| from.max(index + 1));
        self.snapshot = Some(snapshot);
    }

    // ----- leadership transfer -----

    /// Harpoon's transfer: writes stop, the successor catches up, and then
    /// the leader steps down and hands its promises over (`release`).
    fn start_transfer(&mut self, to: NodeId) {
        let until = self.now + self.config.election_timeout_ns;
        self.leader_mut().transfer = Some(Transfer { to, until, released: false });
        self.replicate(to);
    }

    /// Releases the promises once the successor holds the whole log, so
    /// that it can lead without fetching and nothing this leader accepted
    /// waits for another election.
    fn release_when_caught_up(&mut self) {
        let Some(leader) = self.leader.as_ref() else { return };
        let Some(transfer) = leader.transfer.filter(|transfer| !transfer.released) else { return };
        if self.follower_caught_up(transfer.to) {
            self.release(transfer.to);
        }
    }

    /// Steps down and tells every peer that the promises made to this
    /// leader now belong to `successor`. It serves nothing from here on,
    /// before any peer can help the successor, so the two leases never
    /// overlap; its own promise goes to the successor too.
    fn release(&mut self, successor: NodeId) {
        let term = self.term();
        self.broadcast(Message::Release { term, successor });
        if !self.rules.release_steps_down {
            if let Some(transfer) = &mut self.leader_mut().transfer {
                transfer.released = true;
            }
            return;
        }
        self.abdicate();
        self.hand_promise_to(successor);
    }

    /// Moves a binding promise from its holder to `successor`, expiring when it would have.
    fn hand_promise_to(&mut self, successor: NodeId) {
        if let Some(promise) = &mut self.promise {
            promise.holder = PromiseHolder::Node(successor);
        }
    }

    /// A follower hears that its leader of `term` handed over to `successor`.
    fn on_release(&mut self, from: NodeId, term: Term, successor: NodeId) {
        let bound_to_sender = self.promise.is_some_and(|promise| promise.holder == PromiseHolder::Node(from));
        if term != self.term() || self.role != Role::Follower || self.leader_id != Some(from) || !bound_to_sender {
            // Late, or from a node this one does not follow: nothing to hand over.
            return;
        }
        self.hand_promise_to(successor);
        self.leader_id = None;
        if successor == self.config.id && !self.withholds_votes() {
            // Campaign in a step of its own, so that the promise is this
            // node's before it votes for itself.
            self.campaign_now = true;
            self.election_deadline = self.now;
        }
    }

    // ----- end of step -----

    fn finish_step(&mut self) {
        if std::mem::take(&mut self.replication_due) && self.role == Role::Leader {
            self.replicate_all();
        }
        self.release_when_caught_up();
        if self.role == Role::Leader {
            self.serve_waiting_reads();
        }
        while self.applied_index < self.commit_index {
            self.applied_index += 1;
            let entry = self.log.entry(self.applied_index).unwrap_or_else(|| {
                panic!("node {}: committed index {} is missing from the log", self.config.id, self.applied_index)
            });
            self.out.apply.push(entry.clone());
        }
    }

    fn serve_waiting_reads(&mut self) {
        let commit = self.commit_index;
        let leader = self.leader_mut();
        let noop_committed = commit >= leader.noop_index;
        let mut needs_round = false;
        for read in leader.reads_waiting.iter_mut() {
            if read.read_index.is_none() && noop_committed {
                read.read_index = Some(commit);
            }
            needs_round |= read.round == 0;
        }
        if needs_round {
            self.start_round();
            let leader = self.leader_mut();
            let round = leader.current_round;
            for read in leader.reads_waiting.iter_mut().filter(|read| read.round == 0) {
                read.round = round;
            }
        }
        let holds_lease = self.holds_lease(self.now);
        let leader = self.leader.as_mut().expect("leader state exists while leading");
        let confirmed = leader.confirmed_round;
        while let Some(read) = leader.reads_waiting.front() {
            // A valid lease confirms leadership as well as a quorum round does.
            let ready = read.read_index.is_some() && (holds_lease || read.round <= confirmed);
            if !ready {
                break;
            }
            let read = leader.reads_waiting.pop_front().expect("front exists");
            let read_index = read.read_index.expect("checked above");
            self.out.reads.push(ReadReady { request: read.request, read_index });
        }
    }

    fn take_ready(&mut self) -> Ready<C> {
        let mut ready = std::mem::take(&mut self.out);
        if self.hard_state_dirty {
            self.hard_state_dirty = false;
            ready.persist.hard_state = Some(self.hard_state);
            // Every message carries the new term or vote; none may leave before it is durable.
            let mut held = std::mem::take(&mut ready.send);
            held.append(&mut ready.send_after_persist);
            ready.send_after_persist = held;
        }
        if let Some(from) = self.unstable_from.take() {
            ready.persist.entries = self.log.suffix(from).to_vec();
        }
        ready.persist.snapshot = self.snapshot_to_persist.take();
        ready.next_deadline = self.next_deadline();
        ready
    }

    fn next_deadline(&self) -> Nanos {
        let Some(leader) = &self.leader else {
            let retransmit_at = self.fetch_retransmit_at();
            return retransmit_at.map_or(self.election_deadline, |at| at.min(self.election_deadline)).max(self.now);
        };
        if leader.transfer.is_some_and(|transfer| transfer.released) {
            // The planted bug's leader only waits for its lease to lapse.
            return leader.lease_end.max(leader.first_round_grace_end).max(self.now);
        }
        let mut deadline = leader.heartbeat_due;
        if let Some(transfer) = leader.transfer {
            deadline = deadline.min(transfer.until);
        }
        match self.config.mode {
            ElectionMode::Harpoon if self.rules.abdicates_when_the_lease_lapses => {
                deadline = deadline.min(leader.lease_end.max(leader.first_round_grace_end))
            }
            ElectionMode::Harpoon => {}
            ElectionMode::RaftPreVoteCheckQuorum => deadline = deadline.min(leader.check_quorum_due),
            ElectionMode::Raft => {}
        }
        for progress in leader.progress.values() {
            if !progress.in_flight.is_empty() || progress.snapshot_sent_at.is_some() {
                deadline = deadline.min(progress.last_progress_at + self.config.retransmit_timeout_ns);
            }
        }
        deadline.max(self.now)
    }

    // ----- small helpers -----

    fn send(&mut self, to: NodeId, message: Message<C>) {
        self.out.send.push(Envelope { from: self.config.id, to, message });
    }

    fn send_after_persist(&mut self, to: NodeId, message: Message<C>) {
        self.out.send_after_persist.push(Envelope { from: self.config.id, to, message });
    }

    fn broadcast(&mut self, message: Message<C>) {
        let peers: Vec<NodeId> = self.config.members.iter().copied().filter(|&peer| peer != self.config.id).collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }

    fn leader_ref(&self) -> &LeaderState<C> {
        self.leader.as_ref().expect("leader state exists while leading")
    }

    fn leader_mut(&mut self) -> &mut LeaderState<C> {
        self.leader.as_mut().expect("leader state exists while leading")
    }

    fn progress_mut(&mut self, peer: NodeId) -> &mut Progress {
        let id = self.config.id;
        self.leader_mut().progress.get_mut(&peer).unwrap_or_else(|| panic!("node {id}: no progress for peer {peer}"))
    }
}
