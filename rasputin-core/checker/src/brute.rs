//! Brute-force reference checker for small histories, used by the tests.
//!
//! It tries every subset of the unknown-outcome operations and every order of
//! the chosen ones with the completed ones that respects real-time order,
//! over all keys at once, so it also checks that splitting a history by key
//! loses nothing. Orders are built one operation at a time and abandoned as
//! soon as a prefix is illegal, which keeps histories of ten operations cheap.

use std::collections::BTreeMap;

use super::{model, Operation, Value};

/// The cost grows as 2^unknown * n!.
const OPERATIONS_MAX: usize = 10;

pub(super) fn is_linearizable(history: &[Operation]) -> bool {
    assert!(history.len() <= OPERATIONS_MAX, "brute force cannot check {} operations", history.len());
    let (completed, unknown): (Vec<usize>, Vec<usize>) =
        (0..history.len()).partition(|&index| history[index].complete_ns.is_some());
    (0..1u32 << unknown.len()).any(|subset| {
        let mut chosen = completed.clone();
        chosen.extend(unknown.iter().enumerate().filter(|&(bit, _)| subset & (1 << bit) != 0).map(|(_, &index)| index));
        can_order(history, &mut chosen, &mut BTreeMap::new())
    })
}

/// Whether the `remaining` operations can follow, in some order, a prefix
/// that left the keys in `registers`.
fn can_order(history: &[Operation], remaining: &mut Vec<usize>, registers: &mut BTreeMap<u64, Value>) -> bool {
    if remaining.is_empty() {
        return true;
    }
    for position in 0..remaining.len() {
        let next = remaining[position];
        if remaining.iter().any(|&other| must_precede(history, other, next)) {
            continue;
        }
        let operation = &history[next];
        let before = registers.get(&operation.key).copied().flatten();
        let (after, output) = model::apply(before, &operation.input);
        if operation.output.as_ref().is_some_and(|observed| *observed != output) {
            continue;
        }
        registers.insert(operation.key, after);
        remaining.remove(position);
        let found = can_order(history, remaining, registers);
        remaining.insert(position, next);
        registers.insert(operation.key, before);
        if found {
            return true;
        }
    }
    false
}

/// Real-time order: `earlier` completed before `later` was invoked.
fn must_precede(history: &[Operation], earlier: usize, later: usize) -> bool {
    history[earlier].complete_ns.is_some_and(|complete_ns| complete_ns < history[later].invoke_ns)
}
