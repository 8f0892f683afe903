//! Simulated clients: one operation in flight each, on a small key set,
//! with unique written values, timeouts and retries. Their history goes to
//! the linearizability checker.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::checker;
use crate::consensus::{ClientRequest, Operation};
use crate::state_machine::Response;
use bytes::Bytes;

/// Client ids start here so that they never look like node ids in traces.
pub const CLIENT_ID_BASE: u64 = 1_000;

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

/// One logical operation, retried under the same sequence number until it
/// completes or its deadline passes.
#[derive(Clone, Debug)]
pub struct PendingOperation {
    pub request: ClientRequest,
    pub key: u64,
    pub input: checker::Input,
    pub invoked_at_ns: u64,
    pub deadline_ns: u64,
    /// Some attempt may have reached a leader that proposed it.
    pub maybe_applied: bool,
    pub attempt: u64,
}

#[derive(Clone, Debug)]
pub struct Client {
    pub client_id: u64,
    pub sequence: u64,
    /// The node index this client sends to next.
    pub target: usize,
    pub pending: Option<PendingOperation>,
    /// The last value this client saw per key, to aim its cas at.
    last_seen: Vec<Option<u64>>,
}

impl Client {
    pub fn new(index: usize, keys: u64, target: usize) -> Client {
        Client {
            client_id: CLIENT_ID_BASE + index as u64,
            sequence: 0,
            target,
            pending: None,
            last_seen: vec![None; keys as usize],
        }
    }

    /// Draws the next operation; `next_value` hands out unique values.
    pub fn next_operation(
        &mut self,
        rng: &mut ChaCha8Rng,
        next_value: &mut u64,
        now_ns: u64,
        timeout_ns: u64,
    ) -> PendingOperation {
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
        PendingOperation {
            request: ClientRequest { client_id: self.client_id, sequence: self.sequence, operation },
            key,
            input,
            invoked_at_ns: now_ns,
            deadline_ns: now_ns + timeout_ns,
            maybe_applied: false,
            attempt: 0,
        }
    }

    /// Records what a completed operation observed, and converts it for the checker.
    pub fn observe(&mut self, operation: &PendingOperation, response: &Response) -> checker::Output {
        let current = if response.success || !response.value.is_empty() { value_id(&response.value) } else { None };
        let output = match operation.input {
            checker::Input::Read => checker::Output::Read(current),
            checker::Input::Write(_) => checker::Output::Write,
            checker::Input::Cas { .. } => checker::Output::Cas { success: response.success, current },
            checker::Input::Delete => checker::Output::Delete(current),
        };
        let after = match operation.input {
            checker::Input::Delete => None,
            checker::Input::Write(value) => Some(value),
            _ => current,
        };
        self.last_seen[operation.key as usize] = after;
        output
    }
}
