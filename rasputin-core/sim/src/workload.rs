//! Simulated clients: one operation in flight each, on a small key set,
//! with unique written values, timeouts and retries. Their history goes to
//! the linearizability checker.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use std::collections::BTreeMap;

use bytes::Bytes;
use rasputin_checker as checker;
use rasputin_kv::operation::{ClientRequest, Operation};
use rasputin_kv::range::{RangeDescriptor, RangeId};
use rasputin_kv::route::RouteCache;
use rasputin_kv::state_machine::Response;

pub fn key_bytes(key: u64) -> Bytes {
    format!("k{key}").into_bytes().into()
}

pub fn value_bytes(value: u64) -> Bytes {
    Bytes::copy_from_slice(&value.to_be_bytes())
}

fn value_id(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

/// What an operation is for: opening the client's session in a range, or the workload.
#[derive(Clone, Debug)]
pub enum Purpose {
    OpenSession { range: RangeId },
    Workload { key: u64, input: checker::Input },
}

/// One logical operation, retried under the same (client id, sequence)
/// until it completes or its deadline passes.
#[derive(Clone, Debug)]
pub struct PendingOperation {
    pub request: ClientRequest,
    pub purpose: Purpose,
    pub invoked_at_ns: u64,
    pub deadline_ns: u64,
    /// Some attempt may have reached a leader that proposed it.
    pub maybe_applied: bool,
    pub attempt: u64,
    /// The range the latest attempt went to; 0 if it asked which range holds the key.
    pub range: RangeId,
    /// The node the latest attempt went to.
    pub target: usize,
}

impl PendingOperation {
    /// Whether the request carries its session's identity yet: a workload
    /// operation drawn before its range was known gets it when first sent,
    /// and keeps it for every retry.
    pub fn is_bound(&self) -> bool {
        self.request.client_id != 0 || matches!(self.purpose, Purpose::OpenSession { .. })
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    pub index: usize,
    /// Each range's session client id, once opened. Sessions are per range;
    /// a split copies the parent's to the new range.
    pub sessions: BTreeMap<RangeId, u64>,
    pub sequence: u64,
    /// Sessions this client has asked to open, for unique nonces.
    opens: u64,
    /// Each route's target is the index of the node to ask.
    pub routes: RouteCache<usize>,
    /// Where the client asks which range holds a key it has no route for.
    pub lookup_target: usize,
    pub pending: Option<PendingOperation>,
    /// The last value this client saw per key, to aim its cas at.
    last_seen: Vec<Option<u64>>,
}

impl Client {
    pub fn new(index: usize, keys: u64, target: usize, first: RangeDescriptor) -> Client {
        Client {
            index,
            sessions: BTreeMap::new(),
            sequence: 0,
            opens: 0,
            routes: RouteCache::new(first, target),
            lookup_target: target,
            pending: None,
            last_seen: vec![None; keys as usize],
        }
    }

    /// Binds a workload request to the session of `range`, if the client has one.
    pub fn bind(&mut self, operation: &mut PendingOperation, range: RangeId) -> bool {
        let Some(&client_id) = self.sessions.get(&range) else { return false };
        self.sequence += 1;
        operation.request.client_id = client_id;
        operation.request.sequence = self.sequence;
        true
    }

    /// An operation that opens a session in `range`.
    pub fn open_session(&mut self, range: RangeId, now_ns: u64, timeout_ns: u64) -> PendingOperation {
        self.opens += 1;
        let nonce = ((self.index as u64 + 1) << 32) | self.opens;
        let request = ClientRequest { client_id: 0, sequence: nonce, operation: Operation::OpenSession };
        PendingOperation {
            request,
            purpose: Purpose::OpenSession { range },
            invoked_at_ns: now_ns,
            deadline_ns: now_ns + timeout_ns,
            maybe_applied: false,
            attempt: 0,
            range,
            target: 0,
        }
    }

    /// Draws the next operation: opening a session first in a range it
    /// knows and has none for. `next_value` hands out unique values. A
    /// workload operation whose key has no known range, or whose range has
    /// no session yet, is drawn unbound (client id 0).
    pub fn next_operation(
        &mut self,
        rng: &mut ChaCha8Rng,
        next_value: &mut u64,
        now_ns: u64,
        timeout_ns: u64,
    ) -> PendingOperation {
        let sessionless = self.routes.ranges().find(|range| !self.sessions.contains_key(range));
        if let Some(range) = sessionless {
            return self.open_session(range, now_ns, timeout_ns);
        }
        let key = rng.gen_range(0..self.last_seen.len() as u64);
        let key_name = key_bytes(key);
        let mut fresh = || {
            *next_value += 1;
            *next_value
        };
        let roll: u32 = rng.gen_range(0..100);
        let (operation, input) = if roll < 40 {
            (Operation::Get { key: key_name }, checker::Input::Read)
        } else if roll < 70 {
            let value = fresh();
            (Operation::Set { key: key_name, value: value_bytes(value) }, checker::Input::Write(value))
        } else if roll < 90 {
            let expected = self.last_seen[key as usize].unwrap_or(0);
            let new = fresh();
            let operation = Operation::Cas { key: key_name, expected: value_bytes(expected), new: value_bytes(new) };
            (operation, checker::Input::Cas { expected, new })
        } else {
            (Operation::Del { key: key_name }, checker::Input::Delete)
        };
        let range = self.routes.for_key(&key_bytes(key)).map(|route| route.descriptor.id);
        let request = ClientRequest { client_id: 0, sequence: 0, operation };
        let mut operation = PendingOperation {
            request,
            purpose: Purpose::Workload { key, input },
            invoked_at_ns: now_ns,
            deadline_ns: now_ns + timeout_ns,
            maybe_applied: false,
            attempt: 0,
            range: range.unwrap_or_default(),
            target: 0,
        };
        if let Some(range) = range {
            self.bind(&mut operation, range);
        }
        operation
    }

    /// Records what a completed workload operation observed, and converts it for the checker.
    pub fn observe(&mut self, key: u64, input: &checker::Input, response: &Response) -> checker::Output {
        let current = if response.found { value_id(&response.value) } else { None };
        let output = match input {
            checker::Input::Read => checker::Output::Read(current),
            checker::Input::Write(_) => checker::Output::Write,
            checker::Input::Cas { .. } => checker::Output::Cas { success: response.success, current },
            checker::Input::Delete => checker::Output::Delete(current),
        };
        let after = match input {
            checker::Input::Delete => None,
            checker::Input::Write(value) => Some(*value),
            _ => current,
        };
        self.last_seen[key as usize] = after;
        output
    }
}
