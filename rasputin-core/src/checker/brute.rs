//! Brute-force reference checker for small histories, used by the tests.
//!
//! It tries every subset of the unknown-outcome operations and every order of
//! the chosen ones with the completed ones, over all keys at once, so it also
//! checks that splitting a history by key loses nothing.

use std::collections::BTreeMap;

use super::{model, Operation, Value};

/// Enough for the tests' histories; the cost grows as 2^unknown * n!.
const OPERATIONS_MAX: usize = 9;

pub(super) fn is_linearizable(history: &[Operation]) -> bool {
    assert!(history.len() <= OPERATIONS_MAX, "brute force cannot check {} operations", history.len());
    let (completed, unknown): (Vec<usize>, Vec<usize>) =
        (0..history.len()).partition(|&index| history[index].complete_ns.is_some());
    (0..1u32 << unknown.len()).any(|subset| {
        let mut chosen = completed.clone();
        chosen.extend(unknown.iter().enumerate().filter(|&(bit, _)| subset & (1 << bit) != 0).map(|(_, &index)| index));
        any_permutation(&mut chosen, 0, &mut |order| respects_real_time(history, order) && is_legal(history, order))
    })
}

/// Whether `accept` holds for some ordering of `items` that keeps
/// `items[..fixed]` as they are.
fn any_permutation(items: &mut [usize], fixed: usize, accept: &mut impl FnMut(&[usize]) -> bool) -> bool {
    if fixed == items.len() {
        return accept(items);
    }
    for choice in fixed..items.len() {
        items.swap(fixed, choice);
        let found = any_permutation(items, fixed + 1, accept);
        items.swap(fixed, choice);
        if found {
            return true;
        }
    }
    false
}

/// No operation is ordered after one that was invoked after it completed.
fn respects_real_time(history: &[Operation], order: &[usize]) -> bool {
    order.iter().enumerate().all(|(position, &earlier)| {
        order[position + 1..].iter().all(|&later| {
            history[later].complete_ns.is_none_or(|complete_ns| complete_ns >= history[earlier].invoke_ns)
        })
    })
}

/// Running `order` sequentially reproduces every observed output.
fn is_legal(history: &[Operation], order: &[usize]) -> bool {
    let mut registers: BTreeMap<u64, Value> = BTreeMap::new();
    order.iter().all(|&index| {
        let operation = &history[index];
        let register = registers.entry(operation.key).or_insert(None);
        let (next, output) = model::apply(*register, &operation.input);
        *register = next;
        operation.output.as_ref().is_none_or(|observed| *observed == output)
    })
}
