//! Simulated clients: one operation in flight each, on a small key set,
//! with unique written values, timeouts and retries. Their history goes to
//! the linearizability checker.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use bytes::Bytes;
use rasputin_checker as checker;
use rasputin_kv::operation::{ClientRequest, Operation};
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

/// What an operation is for: opening the client's session, or the workload.
#[derive(Clone, Debug)]
pub enum Purpose {
    OpenSession,
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
}

#[derive(Clone, Debug)]
pub struct Client {
    pub index: usize,
    /// The session's client id, once opened.
    pub session: Option<u64>,
    pub sequence: u64,
    /// Sessions this client has asked to open, for unique nonces.
    opens: u64,
    /// The node index this client sends to next.
    pub target: usize,
    pub pending: Option<PendingOperation>,
    /// The last value this client saw per key, to aim its cas at.
    last_seen: Vec<Option<u64>>,
}

impl Client {
    pub fn new(index: usize, keys: u64, target: usize) -> Client {
        Client {
            index,
            session: None,
            sequence: 0,
            opens: 0,
            target,
            pending: None,
            last_seen: vec![None; keys as usize],
        }
    }

    /// Draws the next operation: opening a session if the client has none.
    /// `next_value` hands out unique values.
    pub fn next_operation(
        &mut self,
        rng: &mut ChaCha8Rng,
        next_value: &mut u64,
        now_ns: u64,
        timeout_ns: u64,
    ) -> PendingOperation {
        let pending = |request, purpose| PendingOperation {
            request,
            purpose,
            invoked_at_ns: now_ns,
            deadline_ns: now_ns + timeout_ns,
            maybe_applied: false,
            attempt: 0,
        };
        let Some(client_id) = self.session else {
            self.opens += 1;
            let nonce = ((self.index as u64 + 1) << 32) | self.opens;
            let request = ClientRequest { client_id: 0, sequence: nonce, operation: Operation::OpenSession };
            return pending(request, Purpose::OpenSession);
        };
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
        self.sequence += 1;
        let request = ClientRequest { client_id, sequence: self.sequence, operation };
        pending(request, Purpose::Workload { key, input })
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
