//! Linearizability checker for per-key register histories.
//!
//! Each key is an independent register (linearizability is local, so checking
//! keys separately is exact). Per key, the search is Wing & Gong's algorithm
//! with Lowe's improvements: a doubly linked list of call and return entries,
//! depth-first lifting and unlifting of operations, and a cache of visited
//! configurations (set of linearized operations, register state) that prunes
//! repeated work.
//!
//! Operations whose outcome is unknown (the client timed out) have no return
//! entry: they may take effect at any point after their invocation, or never.
#![forbid(unsafe_code)]

mod bitset;
mod cache;
mod history;
mod model;
mod search;

#[cfg(test)]
mod brute;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use history::write_json_lines;

/// A value as the checker sees it: written values are unique u64 ids; None = key absent.
pub type Value = Option<u64>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Read,
    Write(u64),
    Cas { expected: u64, new: u64 },
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// The value seen (None = missing key).
    Read(Value),
    /// The set succeeded.
    Write,
    /// The success flag and the value after the operation: the new value on
    /// success, the unchanged current value on failure.
    Cas { success: bool, current: Value },
    /// The previous value (None if the key was missing); the key is absent afterwards.
    Delete(Value),
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub client: u64,
    pub key: u64,
    pub input: Input,
    pub invoke_ns: u64,
    /// None = outcome unknown (timed out): may take effect at any point after invoke, or never.
    pub complete_ns: Option<u64>,
    /// Some iff complete_ns is Some.
    pub output: Option<Output>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Violation),
    /// The search of `key` visited more states than `Limits::states_per_key_max`.
    Inconclusive {
        key: u64,
        states_explored: u64,
    },
}

/// Why one key's history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: u64,
    /// Indices (into the checked slice) of every operation on `key`, in invoke order.
    pub operations: Vec<usize>,
    /// The longest linearization found (most completed operations placed), in
    /// the order the operations take effect.
    pub longest_linearizable_prefix: Vec<usize>,
    /// Completed operations that were eligible to take effect right after that
    /// prefix, none of which could be placed there without a later contradiction.
    pub unplaceable: Vec<usize>,
    pub explanation: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Visited search states per key before giving up with `Verdict::Inconclusive`.
    /// A state takes well under a microsecond and at most about 100 bytes of
    /// memory, held while its key is checked.
    pub states_per_key_max: u64,
}

impl Default for Limits {
    /// 50 million states: under a minute and a few GiB at worst, with room to
    /// spare for a violation on one hot key of a 10,000-operation history with
    /// timeouts, which took 15 to 32 million states in our trials.
    fn default() -> Self {
        Limits { states_per_key_max: 50_000_000 }
    }
}

/// Checks every key of `history` independently, in ascending key order.
/// The first key with a violation decides the verdict; otherwise the first key
/// that hit the limit makes the verdict inconclusive.
pub fn check(history: &[Operation], limits: &Limits) -> Verdict {
    let mut first_inconclusive = None;
    for (key, operations) in split_by_key(history) {
        match search::check_key(history, &operations, limits.states_per_key_max) {
            search::KeyOutcome::Linearizable => {}
            search::KeyOutcome::Violated(dead_end) => {
                return Verdict::NotLinearizable(violation(history, key, operations, dead_end));
            }
            search::KeyOutcome::Exhausted { states_explored } => {
                first_inconclusive.get_or_insert(Verdict::Inconclusive { key, states_explored });
            }
        }
    }
    first_inconclusive.unwrap_or(Verdict::Linearizable)
}

/// Groups operation indices by key, each group in invoke order; equal invoke
/// times keep input order so the result is deterministic.
fn split_by_key(history: &[Operation]) -> BTreeMap<u64, Vec<usize>> {
    let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        assert_well_formed(index, operation);
        by_key.entry(operation.key).or_default().push(index);
    }
    for indices in by_key.values_mut() {
        indices.sort_by_key(|&index| (history[index].invoke_ns, index));
    }
    by_key
}

fn assert_well_formed(index: usize, operation: &Operation) {
    assert_eq!(
        operation.complete_ns.is_some(),
        operation.output.is_some(),
        "operation {index} must have an output exactly when it has a completion time: {operation:?}"
    );
    if let Some(complete_ns) = operation.complete_ns {
        assert!(complete_ns >= operation.invoke_ns, "operation {index} completes before it is invoked: {operation:?}");
    }
}

fn violation(history: &[Operation], key: u64, operations: Vec<usize>, dead_end: search::DeadEnd) -> Violation {
    let completed = operations.iter().filter(|&&index| history[index].output.is_some()).count();
    let pending: Vec<String> =
        dead_end.unplaceable.iter().map(|&index| format!("[{}]", describe(index, &history[index]))).collect();
    let explanation = format!(
        "key {key}: at most {} of {completed} completed operations can be linearized; \
         after the longest linearizable prefix the register holds {:?}, and none of the \
         pending completed operations can take effect next without a contradiction: {}",
        dead_end.completed_placed,
        dead_end.state,
        pending.join(" ")
    );
    Violation {
        key,
        operations,
        longest_linearizable_prefix: dead_end.linearization,
        unplaceable: dead_end.unplaceable,
        explanation,
    }
}

fn describe(index: usize, operation: &Operation) -> String {
    let outcome = match (&operation.output, operation.complete_ns) {
        (Some(output), Some(complete_ns)) => {
            format!("-> {output:?} during {}..{complete_ns}", operation.invoke_ns)
        }
        _ => format!("outcome unknown, invoked at {}", operation.invoke_ns),
    };
    format!("#{index} client {} {:?} {outcome}", operation.client, operation.input)
}
