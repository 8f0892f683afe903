//! The key-value state machine that committed entries are applied to, with
//! client sessions that make retried writes take effect exactly once.
//!
//! # Sessions
//! A client opens a session with an `OpenSession` entry; the entry's log
//! index becomes its client id, so ids are never reused. Each write names
//! (client id, sequence). The session remembers the last sequence applied
//! and just enough of its answer to repeat it to a retry. Sessions expire
//! oldest first (lowest id) once there are more than `count_max` of them or
//! they hold more than `bytes_max` bytes: a deterministic rule applied by
//! every replica as it applies the same log, so they all agree. A write
//! whose session has expired is refused with `Refusal::SessionExpired`,
//! never applied as if new: that is what makes a late retry safe.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::Bound;

use prost::Message as _;
use thiserror::Error;

use crate::meta::{self, EpochGuard, MetaError, MetaRecords};
use crate::operation::{ClientRequest, Entry, EntryPayload, Operation};
use crate::range::{RangeDescriptor, RangeId, SplitError};
use crate::scan::{self, ScanPage};
use crate::snapshot::{self, Chunker, Record, SnapshotDecodeError};
use crate::wire::proto;
use rasputin_consensus::{LogIndex, Term};

/// Sessions the cluster keeps; beyond this the oldest expire.
pub const SESSIONS_COUNT_MAX: usize = 100_000;
/// Bytes all sessions may hold together; beyond this the oldest expire.
pub const SESSIONS_BYTES_MAX: usize = 64 << 20;
/// What a session costs beyond the value it remembers, for `SESSIONS_BYTES_MAX`.
pub const SESSION_OVERHEAD_BYTES: usize = 48;

/// When sessions expire. Part of the state machine's definition: every
/// replica of a cluster must use the same limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    pub count_max: usize,
    pub bytes_max: usize,
}

impl SessionLimits {
    pub const PRODUCTION: SessionLimits =
        SessionLimits { count_max: SESSIONS_COUNT_MAX, bytes_max: SESSIONS_BYTES_MAX };
}

/// The outcome of one operation, with the semantics of the original README:
/// - set: success, and the value written;
/// - get: success if the key exists, and its value;
/// - cas: success if the expected value matched, and the value after the operation;
/// - del: success if the key existed, and the value it had;
/// - open session: success, and the new session's id as `index`.
///
/// `found` says whether the key exists (for del: existed), so that an empty
/// value and a missing key never look alike.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    pub success: bool,
    pub found: bool,
    pub value: Vec<u8>,
    /// The log position that produced this state (for reads, the read index).
    pub term: Term,
    pub index: LogIndex,
}

impl Response {
    /// The value: what get read, what set wrote, cas's current value, del's previous value.
    pub fn get_value(&self) -> &[u8] {
        &self.value
    }

    /// get: the key existed; cas: the swap happened; del: the key existed; set: always.
    pub fn get_success(&self) -> bool {
        self.success
    }

    /// Whether the key exists (for del: existed), so that an empty value
    /// and a missing key never look alike.
    pub fn get_found(&self) -> bool {
        self.found
    }
}

/// What a session keeps of its last write's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    pub success: bool,
    pub found: bool,
    /// The answer's value, or None when it is the request's own (what a set
    /// wrote, what a successful cas swapped in): the retry carries it again.
    pub value: Option<Vec<u8>>,
    pub term: Term,
    pub index: LogIndex,
}

/// A client session: its last applied sequence and what that write answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub sequence: u64,
    /// None until the session's first write.
    pub last: Option<Remembered>,
}

impl Session {
    /// What this session counts against `SessionLimits::bytes_max`.
    pub fn bytes(&self) -> usize {
        SESSION_OVERHEAD_BYTES + self.last.as_ref().and_then(|last| last.value.as_ref()).map_or(0, Vec::len)
    }
}

/// How many sessions there are and the bytes they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCensus {
    pub count: usize,
    pub bytes: usize,
}

/// Why the state machine refused a committed write. Every replica refuses
/// it alike, so the answer is as final as an applied write's.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("session {client_id} has expired or was never opened; the cluster keeps its newest {SESSIONS_COUNT_MAX} sessions. The request was not applied; if it retried an earlier attempt, that attempt's outcome is unknown")]
    SessionExpired { client_id: u64 },
    #[error("sequence {sequence} is below session {client_id}'s last applied sequence {last}: a later request of the session has been applied, so this one never will be")]
    SequenceBelowSession { client_id: u64, sequence: u64, last: u64 },
    #[error("an OpenSession entry must carry client id 0 and a non-zero nonce")]
    MalformedOpen,
    #[error("the key lies outside range {range}, which is what this replica holds now; the request was not applied, so look the key's range up again and send it there")]
    RangeMismatch { range: RangeDescriptor },
    #[error("the split was not made: {0}")]
    Split(#[from] SplitError),
    #[error("this replica holds {holds}, not the meta range; send meta requests to the meta range")]
    NotMeta { holds: String },
    #[error("the meta range did not record the update: {0}")]
    Meta(#[from] MetaError),
}

/// Read access to a key-value state, in memory or on disk.
pub trait KvRead {
    type Error;
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    fn session(&self, client_id: u64) -> Result<Option<Session>, Self::Error>;
    fn census(&self) -> SessionCensus;
    /// The session with the lowest id at or above `from`.
    fn oldest_session_from(&self, from: u64) -> Result<Option<(u64, Session)>, Self::Error>;
    /// The range this state is, if it is one range of many; None: it holds
    /// every key, and cannot split.
    fn range(&self) -> Result<Option<RangeDescriptor>, Self::Error>;
    /// Only with the planted bug of `StoreFaults::misrouted_writes_apply`.
    fn applies_misrouted_writes(&self) -> bool {
        false
    }
    /// The records, if this state is the meta range's.
    fn meta(&self) -> Option<&MetaRecords> {
        None
    }
    /// Off only with the planted bug of `StoreFaults::meta_updates_unguarded`.
    fn meta_epoch_guard(&self) -> EpochGuard {
        EpochGuard::On
    }
}

/// Deliberate state-machine bugs, for the simulator's tests that show its
/// checks catch them. No daemon store has any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreFaults {
    /// Apply a write whose key this range no longer holds (the range split
    /// between the write's proposal and its commit) instead of refusing it:
    /// the classic misrouted write, which the key's new owner never sees.
    pub misrouted_writes_apply: bool,
    /// Record a meta update without checking that it is newer than the
    /// records it replaces: a late copy of an old split's update puts the
    /// meta range back behind its data ranges.
    pub meta_updates_unguarded: bool,
}

impl StoreFaults {
    /// The name of each planted bug, as the simulator's `--bug` takes them.
    pub const NAMES: [&'static str; 2] = ["misrouted-writes-apply", "meta-updates-unguarded"];

    pub fn named(name: &str) -> Option<StoreFaults> {
        match name {
            "misrouted-writes-apply" => Some(StoreFaults { misrouted_writes_apply: true, ..StoreFaults::default() }),
            "meta-updates-unguarded" => Some(StoreFaults { meta_updates_unguarded: true, ..StoreFaults::default() }),
            _ => None,
        }
    }
}

/// One change an applied entry makes to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Session {
        client_id: u64,
        session: Session,
    },
    EndSession {
        client_id: u64,
    },
    /// The range becomes `left`; `right` is a new range, made of the keys
    /// from its start on and a copy of every session, so that a write
    /// retried across the split is still applied exactly once.
    Split {
        left: RangeDescriptor,
        right: RangeDescriptor,
    },
    /// The meta range records these descriptors in place of those they cover.
    Meta {
        descriptors: Vec<RangeDescriptor>,
    },
}

/// What applying an entry produced for the client that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub client_id: u64,
    pub sequence: u64,
    pub outcome: Result<Response, Refusal>,
}

/// What applying an entry means: the client's answer, the changes to make,
/// and the session census once they are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub applied: Option<Applied>,
    pub changes: Vec<Change>,
    pub census: SessionCensus,
}

/// Decides the effect of the committed `entry` on `state`, with the README's
/// semantics and exactly-once sessions. Shared by every store, so that the
/// simulator and the daemon cannot disagree on what an operation does.
pub fn decide<S: KvRead>(state: &S, entry: &Entry, limits: SessionLimits) -> Result<Decision, S::Error> {
    let census = state.census();
    let EntryPayload::Command(request) = &entry.payload else {
        return Ok(Decision { applied: None, changes: Vec::new(), census });
    };
    let refuse =
        |refusal: Refusal| Decision { applied: Some(answer(request, Err(refusal))), changes: Vec::new(), census };
    if let Operation::OpenSession = request.operation {
        if request.client_id != 0 || request.sequence == 0 {
            return Ok(refuse(Refusal::MalformedOpen));
        }
        return open_session(state, entry, request, limits);
    }
    if let Operation::Split { key, right_range, version } = &request.operation {
        if request.client_id != 0 || request.sequence == 0 {
            return Ok(refuse(Refusal::MalformedOpen));
        }
        return split(state, entry, request, key, *right_range, *version);
    }
    if let Operation::MetaUpdate { descriptors } = &request.operation {
        if request.client_id != 0 || request.sequence == 0 {
            return Ok(refuse(Refusal::MalformedOpen));
        }
        return meta_update(state, entry, request, descriptors);
    }
    let misrouted = |range: &RangeDescriptor| !range.contains(request.operation.key());
    if let Some(range) = state.range()?.filter(misrouted).filter(|_| !state.applies_misrouted_writes()) {
        // Before the session: a write misrouted here is not applied, so its
        // session must not remember it either.
        return Ok(refuse(Refusal::RangeMismatch { range }));
    }
    let Some(session) = state.session(request.client_id)? else {
        return Ok(refuse(Refusal::SessionExpired { client_id: request.client_id }));
    };
    match (request.sequence.cmp(&session.sequence), &session.last) {
        (std::cmp::Ordering::Equal, Some(last)) => {
            let response = recall(last, &request.operation);
            Ok(Decision { applied: Some(answer(request, Ok(response))), changes: Vec::new(), census })
        }
        (std::cmp::Ordering::Greater, _) => apply_write(state, entry, request, session, limits),
        _ => Ok(refuse(Refusal::SequenceBelowSession {
            client_id: request.client_id,
            sequence: request.sequence,
            last: session.sequence,
        })),
    }
}

fn answer(request: &ClientRequest, outcome: Result<Response, Refusal>) -> Applied {
    Applied { client_id: request.client_id, sequence: request.sequence, outcome }
}

fn open_session<S: KvRead>(
    state: &S,
    entry: &Entry,
    request: &ClientRequest,
    limits: SessionLimits,
) -> Result<Decision, S::Error> {
    let client_id = entry.index;
    let session = Session { sequence: 0, last: None };
    let mut census = state.census();
    census.count += 1;
    census.bytes += session.bytes();
    let mut changes = vec![Change::Session { client_id, session }];
    expire_oldest(state, client_id, limits, &mut census, &mut changes)?;
    let response = Response { success: true, found: true, value: Vec::new(), term: entry.term, index: client_id };
    Ok(Decision { applied: Some(answer(request, Ok(response))), changes, census })
}

fn split<S: KvRead>(
    state: &S,
    entry: &Entry,
    request: &ClientRequest,
    key: &bytes::Bytes,
    right_range: RangeId,
    version: u64,
) -> Result<Decision, S::Error> {
    let census = state.census();
    let halves = match state.range()? {
        Some(range) => range.split_at(key, version, right_range),
        None => Err(SplitError::Unsupported),
    };
    let (outcome, changes) = match halves {
        Ok((left, right)) => {
            let response =
                Response { success: true, found: false, value: Vec::new(), term: entry.term, index: entry.index };
            (Ok(response), vec![Change::Split { left, right }])
        }
        Err(error) => (Err(Refusal::Split(error)), Vec::new()),
    };
    Ok(Decision { applied: Some(answer(request, outcome)), changes, census })
}

/// Records a split's (or merge's) descriptors in the meta range. A stale
/// update is refused, and the sender takes that as done: the meta range
/// holds those descriptors or newer ones.
fn meta_update<S: KvRead>(
    state: &S,
    entry: &Entry,
    request: &ClientRequest,
    descriptors: &[RangeDescriptor],
) -> Result<Decision, S::Error> {
    let census = state.census();
    let checked = match state.meta() {
        Some(records) => records.check(descriptors, state.meta_epoch_guard()).map_err(Refusal::Meta),
        None => {
            let holds = state.range()?.map_or_else(|| "every key".to_string(), |range| format!("range {range}"));
            Err(Refusal::NotMeta { holds })
        }
    };
    let (outcome, changes) = match checked {
        Ok(()) => {
            let response =
                Response { success: true, found: false, value: Vec::new(), term: entry.term, index: entry.index };
            (Ok(response), vec![Change::Meta { descriptors: descriptors.to_vec() }])
        }
        Err(refusal) => (Err(refusal), Vec::new()),
    };
    Ok(Decision { applied: Some(answer(request, outcome)), changes, census })
}

fn apply_write<S: KvRead>(
    state: &S,
    entry: &Entry,
    request: &ClientRequest,
    session: Session,
    limits: SessionLimits,
) -> Result<Decision, S::Error> {
    let (success, found, value, change) = match &request.operation {
        Operation::Set { key, value } => {
            (true, true, value.to_vec(), Some(Change::Put { key: key.to_vec(), value: value.to_vec() }))
        }
        Operation::Cas { key, expected, new } => match state.value(key)? {
            Some(current) if current == expected[..] => {
                (true, true, new.to_vec(), Some(Change::Put { key: key.to_vec(), value: new.to_vec() }))
            }
            Some(current) => (false, true, current, None),
            None => (false, false, Vec::new(), None),
        },
        Operation::Del { key } => match state.value(key)? {
            Some(previous) => (true, true, previous, Some(Change::Delete { key: key.to_vec() })),
            None => (false, false, Vec::new(), None),
        },
        Operation::Get { key } => {
            // Reads do not enter the log; a leader that logged one anyway gets a read.
            let current = state.value(key)?;
            (current.is_some(), current.is_some(), current.unwrap_or_default(), None)
        }
        // A scan's pages never enter the log either, and a page does not fit
        // in a session's answer: a logged one changes nothing and finds nothing.
        Operation::Scan { .. } | Operation::MetaLookup { .. } => (false, false, Vec::new(), None),
        Operation::OpenSession | Operation::Split { .. } | Operation::MetaUpdate { .. } => {
            unreachable!("decide handles OpenSession, Split and MetaUpdate")
        }
    };
    let response = Response { success, found, value, term: entry.term, index: entry.index };
    let remembered = Session { sequence: request.sequence, last: Some(remember(&response, &request.operation)) };
    let mut census = state.census();
    census.bytes = census.bytes - session.bytes() + remembered.bytes();
    let mut changes: Vec<Change> = change.into_iter().collect();
    changes.push(Change::Session { client_id: request.client_id, session: remembered });
    expire_oldest(state, request.client_id, limits, &mut census, &mut changes)?;
    Ok(Decision { applied: Some(answer(request, Ok(response))), changes, census })
}

/// Keeps of a write's answer only what its request cannot supply again.
fn remember(response: &Response, operation: &Operation) -> Remembered {
    let from_request = match operation {
        Operation::Set { .. } => true,
        Operation::Cas { .. } => response.success,
        Operation::Del { .. }
        | Operation::Get { .. }
        | Operation::Scan { .. }
        | Operation::OpenSession
        | Operation::Split { .. }
        | Operation::MetaUpdate { .. }
        | Operation::MetaLookup { .. } => false,
    };
    Remembered {
        success: response.success,
        found: response.found,
        value: (!from_request).then(|| response.value.clone()),
        term: response.term,
        index: response.index,
    }
}

/// The answer a retry of the remembered write gets: the original one.
fn recall(last: &Remembered, operation: &Operation) -> Response {
    let value = match (&last.value, operation) {
        (Some(value), _) => value.clone(),
        (None, Operation::Set { value, .. }) => value.to_vec(),
        (None, Operation::Cas { new, .. }) => new.to_vec(),
        (None, _) => Vec::new(),
    };
    Response { success: last.success, found: last.found, value, term: last.term, index: last.index }
}

/// Expires the oldest sessions, never `keep`, until the census is within `limits`.
fn expire_oldest<S: KvRead>(
    state: &S,
    keep: u64,
    limits: SessionLimits,
    census: &mut SessionCensus,
    changes: &mut Vec<Change>,
) -> Result<(), S::Error> {
    let mut from = 0;
    while census.count > limits.count_max || census.bytes > limits.bytes_max {
        let Some((client_id, session)) = state.oldest_session_from(from)? else { break };
        if client_id != keep {
            census.count -= 1;
            census.bytes -= session.bytes();
            changes.push(Change::EndSession { client_id });
        }
        let Some(next) = client_id.checked_add(1) else { break };
        from = next;
    }
    Ok(())
}

/// Reads a key as a client sees it at the current applied state.
pub fn read_response<S: KvRead>(state: &S, key: &[u8], term: Term, index: LogIndex) -> Result<Response, S::Error> {
    let value = state.value(key)?;
    let found = value.is_some();
    Ok(Response { success: found, found, value: value.unwrap_or_default(), term, index })
}

// ----- sessions as stored: one protobuf encoding, on disk and in snapshots -----

pub fn session_to_proto(session: &Session) -> proto::Session {
    let mut stored = proto::Session { sequence: session.sequence, ..Default::default() };
    if let Some(last) = &session.last {
        stored.has_last = true;
        stored.success = last.success;
        stored.found = last.found;
        stored.value_is_request = last.value.is_none();
        stored.value = last.value.clone().unwrap_or_default().into();
        stored.term = last.term;
        stored.index = last.index;
    }
    stored
}

pub fn session_from_proto(stored: proto::Session) -> Session {
    let last = stored.has_last.then(|| Remembered {
        success: stored.success,
        found: stored.found,
        value: (!stored.value_is_request).then(|| stored.value.to_vec()),
        term: stored.term,
        index: stored.index,
    });
    Session { sequence: stored.sequence, last }
}

pub fn encode_session(session: &Session) -> Vec<u8> {
    session_to_proto(session).encode_to_vec()
}

pub fn decode_session(bytes: &[u8]) -> Result<Session, SnapshotDecodeError> {
    proto::Session::decode(bytes).map(session_from_proto).map_err(|_| SnapshotDecodeError::BadSession)
}

// ----- the in-memory store of the simulator -----

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    range: RangeDescriptor,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, Session>,
    census: SessionCensus,
    limits: SessionLimits,
    applied_index: LogIndex,
    applied_term: Term,
    /// The right half of a split just applied, for the driver to start as a new range.
    split_off: Option<Box<KvStore>>,
    /// The descriptors this range's last split produced, which its leader
    /// sends the meta range until the meta range holds them (or newer).
    split_outcome: Option<Vec<RangeDescriptor>>,
    /// Present in the meta range's store only; its data map stays empty.
    meta: Option<MetaRecords>,
    faults: StoreFaults,
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore::new(SessionLimits::PRODUCTION)
    }
}

impl KvStore {
    /// The store of a new cluster's first range, which holds every key.
    pub fn new(limits: SessionLimits) -> KvStore {
        KvStore::empty(limits, RangeDescriptor::first(Vec::new()))
    }

    /// An empty store of `range`.
    pub fn empty(limits: SessionLimits, range: RangeDescriptor) -> KvStore {
        KvStore {
            range,
            split_off: None,
            split_outcome: None,
            meta: None,
            data: BTreeMap::new(),
            sessions: BTreeMap::new(),
            census: SessionCensus::default(),
            limits,
            applied_index: 0,
            applied_term: 0,
            faults: StoreFaults::default(),
        }
    }

    /// An empty store of the meta range, whose one record is `first`.
    pub fn meta(limits: SessionLimits, range: RangeDescriptor, first: RangeDescriptor) -> KvStore {
        assert!(range.is_meta(), "the meta range's store is of the meta range, not {range}");
        KvStore { meta: Some(MetaRecords::new(first)), ..KvStore::empty(limits, range) }
    }

    /// The meta range's records; None in a data range's store.
    pub fn meta_records(&self) -> Option<&MetaRecords> {
        self.meta.as_ref()
    }

    /// What a meta lookup answers: up to `limit` descriptors from the one
    /// holding `key` on.
    pub fn lookup(&self, key: &[u8], limit: u32) -> Result<Vec<RangeDescriptor>, Refusal> {
        let records = self.meta.as_ref().ok_or_else(|| Refusal::NotMeta { holds: format!("range {}", self.range) })?;
        Ok(records.lookup(key, limit as usize))
    }

    /// The descriptors this range's last split produced, if it has split.
    pub fn split_outcome(&self) -> Option<&[RangeDescriptor]> {
        self.split_outcome.as_deref()
    }

    /// This store with the planted bugs of `faults`, which the ranges it
    /// splits off inherit.
    pub fn with_faults(self, faults: StoreFaults) -> KvStore {
        KvStore { faults, ..self }
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    pub fn applied_term(&self) -> Term {
        self.applied_term
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn descriptor(&self) -> &RangeDescriptor {
        &self.range
    }

    /// After an entry whose split applied: the new range's store, at the
    /// split's position. The caller starts the new range from it.
    pub fn take_split_off(&mut self) -> Option<KvStore> {
        self.split_off.take().map(|store| *store)
    }

    /// Applies the next committed entry. Returns the client's answer, or
    /// None for a no-op.
    pub fn apply(&mut self, entry: &Entry) -> Option<Applied> {
        assert_eq!(
            entry.index,
            self.applied_index + 1,
            "entries must be applied in order without gaps (applied {}, got {})",
            self.applied_index,
            entry.index
        );
        let Ok(decision) = decide(self, entry, self.limits);
        for change in decision.changes {
            self.make(change, entry);
        }
        self.census = decision.census;
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        decision.applied
    }

    /// Serves a read at the current applied state, if this range holds the key.
    pub fn read(&self, key: &[u8]) -> Result<Response, Refusal> {
        if !self.range.contains(key) {
            return Err(Refusal::RangeMismatch { range: self.range.clone() });
        }
        let Ok(response) = read_response(self, key, self.applied_term, self.applied_index);
        Ok(response)
    }

    /// Serves one page of a scan at the current applied state, if this
    /// range holds `start`; the page stops at the range's end.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Result<ScanPage, Refusal> {
        if !self.range.contains(start) {
            return Err(Refusal::RangeMismatch { range: self.range.clone() });
        }
        let range_end = self.range.end.as_deref();
        let stop = match (end, range_end) {
            (Some(end), Some(range_end)) => Some(end.min(range_end)),
            (end, range_end) => end.or(range_end),
        };
        let boundary = scan::reaches_past(end, range_end).then(|| range_end.unwrap_or_default().to_vec());
        if stop.is_some_and(|stop| stop <= start) {
            // BTreeMap::range panics on an empty span; the page is empty.
            return Ok(ScanPage {
                pairs: Vec::new(),
                resume: None,
                term: self.applied_term,
                index: self.applied_index,
            });
        }
        let upper = stop.map_or(Bound::Unbounded, Bound::Excluded);
        let within = self.data.range::<[u8], _>((Bound::Included(start), upper));
        let pairs = within.map(|(key, value)| Ok::<_, Infallible>((key.clone(), value.clone())));
        let Ok((pairs, resume)) = scan::fill_page(pairs, limit, boundary);
        Ok(ScanPage { pairs, resume, term: self.applied_term, index: self.applied_index })
    }

    fn make(&mut self, change: Change, entry: &Entry) {
        match change {
            Change::Put { key, value } => {
                self.data.insert(key, value);
            }
            Change::Delete { key } => {
                self.data.remove(&key);
            }
            Change::Session { client_id, session } => {
                self.sessions.insert(client_id, session);
            }
            Change::EndSession { client_id } => {
                self.sessions.remove(&client_id);
            }
            Change::Split { left, right } => {
                let moved = self.data.split_off(&right.start[..]);
                let mut store = KvStore::empty(self.limits, right.clone()).with_faults(self.faults);
                store.data = moved;
                store.sessions = self.sessions.clone();
                store.census = self.census;
                (store.applied_index, store.applied_term) = (entry.index, entry.term);
                self.split_outcome = Some(vec![left.clone(), right]);
                self.range = left;
                self.split_off = Some(Box::new(store));
            }
            Change::Meta { descriptors } => {
                self.meta.as_mut().expect("decide sends meta updates to the meta range only").replace(&descriptors);
            }
        }
    }

    /// Serialises the whole state, applied position included, in the
    /// chunked format the daemon streams (see `snapshot`).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut chunker = Chunker::new(self.applied_index, self.applied_term);
        chunker.push(&Record::Range { descriptor: &self.range.to_proto().encode_to_vec() });
        for (key, value) in &self.data {
            chunker.push(&Record::Value { key, value });
        }
        for (&client_id, session) in &self.sessions {
            chunker.push(&Record::Session { client_id, session: &encode_session(session) });
        }
        if let Some(outcome) = &self.split_outcome {
            chunker.push(&Record::SplitOutcome { update: &meta_update_bytes(outcome) });
        }
        // The meta range's records, keyed as they sort: each by its end key.
        for record in self.meta.iter().flat_map(MetaRecords::records) {
            let key = meta::record_key(record);
            chunker.push(&Record::Value { key: &key, value: &record.to_proto().encode_to_vec() });
        }
        chunker.finish()
    }

    pub fn restore(bytes: &[u8], limits: SessionLimits) -> Result<KvStore, SnapshotDecodeError> {
        let chunks = snapshot::split(bytes)?;
        let mut store = KvStore::new(limits);
        (store.applied_index, store.applied_term) = chunks[0].position();
        let mut meta_records = Vec::new();
        for record in chunks.iter().flat_map(|chunk| chunk.records()) {
            match record? {
                // The range record comes first, so a meta range's is known here.
                Record::Value { value, .. } if store.range.is_meta() => meta_records.push(decode_range(value)?),
                Record::Value { key, value } => {
                    store.data.insert(key.to_vec(), value.to_vec());
                }
                Record::Session { client_id, session } => {
                    let session = decode_session(session)?;
                    store.census.count += 1;
                    store.census.bytes += session.bytes();
                    store.sessions.insert(client_id, session);
                }
                Record::Range { descriptor } => store.range = decode_range(descriptor)?,
                Record::SplitOutcome { update } => store.split_outcome = Some(decode_meta_update(update)?),
            }
        }
        if store.range.is_meta() {
            store.meta = Some(MetaRecords::restore(meta_records).ok_or(SnapshotDecodeError::BadRange)?);
        }
        Ok(store)
    }
}

/// The range a snapshot is of, read from its first chunk (None: a
/// snapshot of a store that holds every key).
pub fn snapshot_range(bytes: &[u8]) -> Result<Option<RangeDescriptor>, SnapshotDecodeError> {
    let chunks = snapshot::split(bytes)?;
    match chunks[0].records().next().transpose()? {
        Some(Record::Range { descriptor }) => decode_range(descriptor).map(Some),
        _ => Ok(None),
    }
}

pub fn decode_range(bytes: &[u8]) -> Result<RangeDescriptor, SnapshotDecodeError> {
    let stored = proto::RangeDescriptor::decode(bytes).map_err(|_| SnapshotDecodeError::BadRange)?;
    RangeDescriptor::from_proto(stored).map_err(|_| SnapshotDecodeError::BadRange)
}

/// A split's outcome as stored and streamed: the meta update it makes.
pub fn meta_update_bytes(descriptors: &[RangeDescriptor]) -> Vec<u8> {
    proto::MetaUpdate { descriptors: descriptors.iter().map(RangeDescriptor::to_proto).collect() }.encode_to_vec()
}

pub fn decode_meta_update(bytes: &[u8]) -> Result<Vec<RangeDescriptor>, SnapshotDecodeError> {
    let update = proto::MetaUpdate::decode(bytes).map_err(|_| SnapshotDecodeError::BadRange)?;
    let descriptors = update.descriptors.into_iter().map(RangeDescriptor::from_proto);
    descriptors.collect::<Result<_, _>>().map_err(|_| SnapshotDecodeError::BadRange)
}

impl KvRead for KvStore {
    type Error = std::convert::Infallible;

    fn meta(&self) -> Option<&MetaRecords> {
        self.meta.as_ref()
    }

    fn meta_epoch_guard(&self) -> EpochGuard {
        if self.faults.meta_updates_unguarded {
            EpochGuard::Off
        } else {
            EpochGuard::On
        }
    }

    fn range(&self) -> Result<Option<RangeDescriptor>, Self::Error> {
        Ok(Some(self.range.clone()))
    }

    fn applies_misrouted_writes(&self) -> bool {
        self.faults.misrouted_writes_apply
    }

    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.data.get(key).cloned())
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, Self::Error> {
        Ok(self.sessions.get(&client_id).cloned())
    }

    fn census(&self) -> SessionCensus {
        self.census
    }

    fn oldest_session_from(&self, from: u64) -> Result<Option<(u64, Session)>, Self::Error> {
        Ok(self.sessions.range(from..).next().map(|(&client_id, session)| (client_id, session.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const LIMITS: SessionLimits = SessionLimits::PRODUCTION;

    fn command(index: LogIndex, client_id: u64, sequence: u64, operation: Operation) -> Entry {
        Entry { term: 1, index, payload: EntryPayload::Command(ClientRequest { client_id, sequence, operation }) }
    }

    fn open(index: LogIndex, nonce: u64) -> Entry {
        command(index, 0, nonce, Operation::OpenSession)
    }

    fn set(key: &[u8], value: &[u8]) -> Operation {
        Operation::Set { key: Bytes::copy_from_slice(key), value: Bytes::copy_from_slice(value) }
    }

    fn cas(key: &[u8], expected: &[u8], new: &[u8]) -> Operation {
        Operation::Cas {
            key: Bytes::copy_from_slice(key),
            expected: Bytes::copy_from_slice(expected),
            new: Bytes::copy_from_slice(new),
        }
    }

    fn response(applied: Option<Applied>) -> Response {
        applied.expect("an answer").outcome.expect("applied")
    }

    /// A store with one session, opened at index 1 (its client id).
    fn store_with_session() -> KvStore {
        let mut store = KvStore::default();
        let opened = response(store.apply(&open(1, 99)));
        assert_eq!(opened.index, 1, "the session's id is its entry's index");
        store
    }

    #[test]
    fn readme_semantics_hold() {
        let mut store = store_with_session();
        store.apply(&command(2, 1, 1, set(b"k1", b"v1")));
        assert_eq!(store.read(b"k1").expect("the first range holds every key").value, b"v1");
        let ok = response(store.apply(&command(3, 1, 2, cas(b"k1", b"v1", b"v12"))));
        assert!(ok.success && ok.value == b"v12");
        let failed = response(store.apply(&command(4, 1, 3, cas(b"k1", b"vNever", b"vNever2"))));
        assert!(!failed.success && failed.value == b"v12");
        let deleted = response(store.apply(&command(5, 1, 4, Operation::Del { key: Bytes::from_static(b"k1") })));
        assert!(deleted.success && deleted.value == b"v12");
        assert!(!store.read(b"k1").expect("the first range holds every key").success);
    }

    /// Issue 13, item 12: a failed cas on an empty value says the key exists.
    #[test]
    fn a_failed_cas_on_an_empty_value_reports_the_key_as_found() {
        let mut store = store_with_session();
        store.apply(&command(2, 1, 1, set(b"k", b"")));
        let failed = response(store.apply(&command(3, 1, 2, cas(b"k", b"x", b"y"))));
        assert_eq!((failed.success, failed.found, failed.value.as_slice()), (false, true, &b""[..]));
        let missing = response(store.apply(&command(4, 1, 3, cas(b"nothing", b"x", b"y"))));
        assert_eq!((missing.success, missing.found), (false, false));
        assert!(
            store.read(b"k").expect("the first range holds every key").found
                && !store.read(b"nothing").expect("the first range holds every key").found
        );
    }

    #[test]
    fn a_retried_write_applies_once_and_gets_the_original_answer() {
        let mut store = store_with_session();
        store.apply(&open(2, 98));
        store.apply(&command(3, 1, 1, set(b"k", b"a")));
        store.apply(&command(4, 2, 1, set(b"k", b"b")));
        let retry = response(store.apply(&command(5, 1, 1, set(b"k", b"a"))));
        assert_eq!((retry.index, retry.value.as_slice()), (3, &b"a"[..]), "the retry returns the original answer");
        assert_eq!(
            store.read(b"k").expect("the first range holds every key").value,
            b"b",
            "the retry did not write again"
        );
        let swap = response(store.apply(&command(6, 2, 2, cas(b"k", b"b", b"c"))));
        let swap_retry = response(store.apply(&command(7, 2, 2, cas(b"k", b"b", b"c"))));
        assert_eq!(swap, swap_retry);
    }

    /// Issue 13, item 6: a stale sequence and an unknown session are refused, never applied.
    #[test]
    fn stale_sequences_and_unknown_sessions_are_refused() {
        let mut store = store_with_session();
        store.apply(&command(2, 1, 5, set(b"k", b"a")));
        let stale = store.apply(&command(3, 1, 4, set(b"k", b"old"))).unwrap().outcome;
        assert_eq!(stale, Err(Refusal::SequenceBelowSession { client_id: 1, sequence: 4, last: 5 }));
        let unknown = store.apply(&command(4, 77, 1, set(b"k", b"x"))).unwrap().outcome;
        assert_eq!(unknown, Err(Refusal::SessionExpired { client_id: 77 }));
        let bad_open = store.apply(&command(5, 3, 1, Operation::OpenSession)).unwrap().outcome;
        assert_eq!(bad_open, Err(Refusal::MalformedOpen));
        assert_eq!(store.read(b"k").expect("the first range holds every key").value, b"a");
    }

    /// Issue 13, item 9: sessions are bounded by count and by bytes, the
    /// oldest expire first, and a retry after expiry is refused.
    #[test]
    fn sessions_expire_oldest_first_within_their_limits() {
        let limits = SessionLimits { count_max: 3, bytes_max: 1 << 20 };
        let mut store = KvStore::new(limits);
        for index in 1..=5 {
            store.apply(&open(index, 100 + index));
        }
        assert_eq!(store.session_count(), 3);
        assert_eq!(store.census().count, 3);
        assert!(store.session(1).unwrap().is_none() && store.session(2).unwrap().is_none());
        let late = store.apply(&command(6, 1, 1, set(b"k", b"x"))).unwrap().outcome;
        assert_eq!(late, Err(Refusal::SessionExpired { client_id: 1 }));
        // A deleted 600 KiB value is remembered for retries; two of them
        // exceed the byte limit, and the older session expires.
        let big = vec![7u8; 600 << 10];
        store.apply(&command(7, 3, 1, set(b"a", &big)));
        store.apply(&command(8, 4, 1, set(b"b", &big)));
        store.apply(&command(9, 3, 2, Operation::Del { key: Bytes::from_static(b"a") }));
        assert!(store.census().bytes <= limits.bytes_max);
        store.apply(&command(10, 4, 2, Operation::Del { key: Bytes::from_static(b"b") }));
        assert!(store.census().bytes <= limits.bytes_max, "{:?}", store.census());
        assert!(store.session(3).unwrap().is_none(), "the older session expired to make room");
        let retry = response(store.apply(&command(11, 4, 2, Operation::Del { key: Bytes::from_static(b"b") })));
        assert_eq!(retry.value, big, "the surviving session still answers its retry");
    }

    #[test]
    fn snapshot_round_trips_and_rejects_corruption() {
        let mut store = store_with_session();
        store.apply(&command(2, 1, 1, set(b"k", b"a")));
        store.apply(&command(3, 1, 2, Operation::Del { key: Bytes::from_static(b"k") }));
        store.apply(&command(4, 1, 3, set(b"j", b"")));
        let bytes = store.snapshot();
        assert_eq!(KvStore::restore(&bytes, LIMITS), Ok(store));
        assert!(matches!(KvStore::restore(&bytes[..bytes.len() - 1], LIMITS), Err(SnapshotDecodeError::TooShort(_))));
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(matches!(KvStore::restore(&flipped, LIMITS), Err(SnapshotDecodeError::Checksum { .. })));
        let nonsense = b"\x2f\0\0\0nonsense, but long enough to be read as a chunk";
        assert!(matches!(KvStore::restore(nonsense, LIMITS), Err(SnapshotDecodeError::BadMagic)));
        assert_eq!(KvStore::restore(&[], LIMITS), Err(SnapshotDecodeError::Unfinished));
    }

    fn split(index: LogIndex, key: &[u8], right_range: RangeId, version: u64) -> Entry {
        command(index, 0, 1_000 + index, Operation::Split { key: Bytes::copy_from_slice(key), right_range, version })
    }

    #[test]
    fn a_split_moves_the_right_keys_and_copies_every_session() {
        let mut store = store_with_session();
        response(store.apply(&command(2, 1, 1, set(b"a", b"1"))));
        response(store.apply(&command(3, 1, 2, set(b"x", b"2"))));
        response(store.apply(&split(4, b"m", 2, 0)));
        let mut right = store.take_split_off().expect("the split made a range");
        assert_eq!((right.applied_index(), right.applied_term()), (4, 1));
        assert_eq!(store.descriptor().end.as_deref(), Some(&b"m"[..]));
        assert_eq!((right.descriptor().id, &right.descriptor().start[..]), (2, &b"m"[..]));
        assert_eq!(store.read(b"a").map(|answer| answer.value), Ok(b"1".to_vec()));
        assert_eq!(right.read(b"x").map(|answer| answer.value), Ok(b"2".to_vec()));
        assert!(matches!(store.read(b"x"), Err(Refusal::RangeMismatch { .. })));
        assert!(matches!(right.read(b"a"), Err(Refusal::RangeMismatch { .. })));
        // A retry of the write applied before the split gets its answer from either half.
        let retried = response(right.apply(&command(5, 1, 2, set(b"x", b"2"))));
        assert_eq!((retried.index, retried.value), (3, b"2".to_vec()), "remembered, not applied again");
        assert_eq!(right.session_count(), store.session_count());
    }

    fn scanned(page: &ScanPage) -> Vec<&[u8]> {
        page.pairs.iter().map(|pair| &pair.key[..]).collect()
    }

    #[test]
    fn a_scan_pages_in_key_order_and_stops_at_its_range() {
        let mut store = store_with_session();
        for (index, key) in [(2, &b"c"[..]), (3, b"a"), (4, b"x"), (5, b"b")] {
            response(store.apply(&command(index, 1, index - 1, set(key, b"v"))));
        }
        let first = store.scan(b"", None, 2).expect("the first range holds every key");
        assert_eq!((scanned(&first), first.resume.as_deref()), (vec![&b"a"[..], b"b"], Some(&b"c"[..])));
        let rest = store.scan(b"c", None, 0).expect("the first range holds every key");
        assert_eq!((scanned(&rest), rest.resume.as_deref()), (vec![&b"c"[..], b"x"], None));
        assert_eq!(scanned(&store.scan(b"b", Some(b"x"), 0).expect("held")), [b"b", b"c"]);
        assert!(store.scan(b"x", Some(b"b"), 0).expect("held").pairs.is_empty(), "an empty span is an empty page");
        response(store.apply(&split(6, b"m", 2, 0)));
        let left = store.scan(b"", None, 0).expect("the left holds the start");
        assert_eq!((scanned(&left), left.resume.as_deref()), (vec![&b"a"[..], b"b", b"c"], Some(&b"m"[..])));
        assert_eq!(store.scan(b"b", Some(b"c"), 0).expect("held").resume, None, "the span ends inside the range");
        assert!(matches!(store.scan(b"n", None, 0), Err(Refusal::RangeMismatch { .. })));
        let right = store.take_split_off().expect("the split made a range");
        assert_eq!(scanned(&right.scan(b"m", None, 0).expect("the right holds m")), [b"x"]);
    }

    #[test]
    fn a_write_for_a_key_the_range_no_longer_holds_is_refused_and_not_remembered() {
        let mut store = store_with_session();
        response(store.apply(&split(2, b"m", 2, 0)));
        let outcome = store.apply(&command(3, 1, 1, set(b"x", b"late"))).expect("an answer").outcome;
        assert!(matches!(outcome, Err(Refusal::RangeMismatch { .. })), "{outcome:?}");
        let mut right = store.take_split_off().expect("the split made a range");
        // The same request, sent on to the right range, applies there once.
        let applied = response(right.apply(&command(3, 1, 1, set(b"x", b"late"))));
        assert_eq!(applied.index, 3);
        assert_eq!(right.read(b"x").map(|answer| answer.value), Ok(b"late".to_vec()));
        // Had the left remembered the refused sequence, this would be a retry of it.
        let fresh = response(store.apply(&command(4, 1, 1, set(b"a", b"fine"))));
        assert_eq!(fresh.index, 4, "the left's session did not remember the refused write");
    }

    #[test]
    fn splits_of_an_old_version_at_a_bound_or_without_ranges_are_refused() {
        let mut store = KvStore::default();
        response(store.apply(&split(1, b"m", 2, 0)));
        let _ = store.take_split_off();
        for (index, entry) in [(2, split(2, b"c", 3, 0)), (3, split(3, b"m", 3, 1)), (4, split(4, b"x", 3, 1))] {
            let outcome = store.apply(&entry).expect("an answer").outcome;
            assert!(matches!(outcome, Err(Refusal::Split(_))), "entry {index}: {outcome:?}");
            assert!(store.take_split_off().is_none());
        }
        let decided = decide(&WholeKeySpace, &split(1, b"m", 2, 0), LIMITS).expect("infallible");
        let outcome = decided.applied.expect("an answer").outcome;
        assert_eq!(outcome, Err(Refusal::Split(SplitError::Unsupported)));
        assert!(decided.changes.is_empty());
    }

    #[test]
    fn a_snapshot_carries_the_range_it_is_of() {
        let mut store = store_with_session();
        response(store.apply(&command(2, 1, 1, set(b"x", b"2"))));
        response(store.apply(&split(3, b"m", 9, 0)));
        let right = store.take_split_off().expect("the split made a range");
        for half in [store, right] {
            let restored = KvStore::restore(&half.snapshot(), LIMITS).expect("its own snapshot");
            assert_eq!(snapshot_range(&half.snapshot()), Ok(Some(half.descriptor().clone())));
            assert_eq!(restored, half);
        }
    }

    fn meta_update(index: LogIndex, descriptors: &[RangeDescriptor]) -> Entry {
        command(index, 0, 2_000 + index, Operation::MetaUpdate { descriptors: descriptors.to_vec() })
    }

    #[test]
    fn the_meta_range_records_a_split_once_and_survives_its_snapshot() {
        let first = RangeDescriptor::first(vec![1, 2, 3]);
        let mut meta = KvStore::meta(LIMITS, RangeDescriptor::meta(vec![1, 2, 3]), first.clone());
        let mut data = KvStore::empty(LIMITS, first);
        response(data.apply(&split(1, b"m", 2, 0)));
        let outcome = data.split_outcome().expect("the split's descriptors").to_vec();
        assert_eq!(outcome[1].id, 2);
        response(meta.apply(&meta_update(1, &outcome)));
        let retried = meta.apply(&meta_update(2, &outcome)).expect("an answer").outcome;
        assert!(matches!(retried, Err(Refusal::Meta(MetaError::Stale { .. }))), "{retried:?}");
        assert_eq!(meta.lookup(b"z", 8), Ok(vec![outcome[1].clone()]));
        assert_eq!(meta.lookup(b"", 8), Ok(outcome.clone()));
        let restored = KvStore::restore(&meta.snapshot(), LIMITS).expect("its own snapshot");
        assert_eq!(restored, meta);
        // A data range refuses meta requests: it holds data, not records.
        let refused = data.apply(&meta_update(2, &outcome)).expect("an answer").outcome;
        assert!(matches!(refused, Err(Refusal::NotMeta { .. })), "{refused:?}");
        assert!(matches!(data.lookup(b"a", 8), Err(Refusal::NotMeta { .. })));
        let decided = decide(&WholeKeySpace, &meta_update(1, &outcome), LIMITS).expect("infallible");
        assert!(matches!(decided.applied.expect("an answer").outcome, Err(Refusal::NotMeta { .. })));
        assert!(decided.changes.is_empty());
    }

    /// A store that holds every key in one range, as the daemon's does.
    struct WholeKeySpace;

    impl KvRead for WholeKeySpace {
        type Error = std::convert::Infallible;
        fn value(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
            Ok(None)
        }
        fn session(&self, _client_id: u64) -> Result<Option<Session>, Self::Error> {
            Ok(None)
        }
        fn census(&self) -> SessionCensus {
            SessionCensus::default()
        }
        fn oldest_session_from(&self, _from: u64) -> Result<Option<(u64, Session)>, Self::Error> {
            Ok(None)
        }
        fn range(&self) -> Result<Option<RangeDescriptor>, Self::Error> {
            Ok(None)
        }
    }
}
