//! Histories of a simulated linearizable store, for the tests.
//!
//! Every operation gets a random linearization point inside its interval;
//! applying them in point order to a register per key yields outputs that are
//! linearizable by construction. An operation whose outcome is unknown takes
//! effect inside its interval or never, and its client moves on at the end of
//! the interval as after a timeout.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{model, Input, Operation, Output, Value};

pub(super) struct Workload {
    pub(super) clients: u64,
    pub(super) keys: u64,
    pub(super) operations: usize,
    pub(super) max_duration_ns: u64,
    pub(super) max_pause_ns: u64,
    pub(super) unknown_percent: u32,
}

pub(super) fn simulate(rng: &mut ChaCha8Rng, workload: &Workload) -> Vec<Operation> {
    let mut clocks: Vec<u64> = (0..workload.clients).map(|_| rng.gen_range(0..=workload.max_pause_ns)).collect();
    let mut written = vec![Vec::new(); workload.keys as usize];
    let mut next_value = 1;
    let mut history = Vec::with_capacity(workload.operations);
    // (linearization point, random tie-break, history index)
    let mut effects = Vec::with_capacity(workload.operations);
    for _ in 0..workload.operations {
        let client =
            (0..workload.clients).min_by_key(|&client| (clocks[client as usize], client)).expect("at least one client");
        let invoke_ns = clocks[client as usize];
        let complete_ns = invoke_ns + rng.gen_range(0..=workload.max_duration_ns);
        clocks[client as usize] = complete_ns + rng.gen_range(0..=workload.max_pause_ns);
        let key = rng.gen_range(0..workload.keys);
        let input = random_input(rng, &mut next_value, &mut written[key as usize]);
        let unknown = rng.gen_range(0..100) < workload.unknown_percent;
        if !unknown || rng.gen_bool(0.5) {
            effects.push((rng.gen_range(invoke_ns..=complete_ns), rng.gen::<u64>(), history.len()));
        }
        history.push(Operation {
            client,
            key,
            input,
            invoke_ns,
            complete_ns: (!unknown).then_some(complete_ns),
            output: None,
        });
    }
    record_outputs(&mut history, effects, workload.keys);
    history
}

/// Applies the operations that take effect in the order of their
/// linearization points and records the outputs of the completed ones.
fn record_outputs(history: &mut [Operation], mut effects: Vec<(u64, u64, usize)>, keys: u64) {
    effects.sort_unstable();
    let mut registers: Vec<Value> = vec![None; keys as usize];
    for (_, _, index) in effects {
        let operation = &mut history[index];
        let register = &mut registers[operation.key as usize];
        let (next, output) = model::apply(*register, &operation.input);
        *register = next;
        if operation.complete_ns.is_some() {
            operation.output = Some(output);
        }
    }
}

/// A random operation on a key whose written values so far are `written`;
/// new values come from the history-wide sequence `next_value`, so they are unique.
fn random_input(rng: &mut ChaCha8Rng, next_value: &mut u64, written: &mut Vec<u64>) -> Input {
    match rng.gen_range(0..20) {
        0..=7 => Input::Read,
        8..=13 => Input::Write(fresh_value(next_value, written)),
        14..=16 => {
            let expected = expected_value(rng, written);
            Input::Cas { expected, new: fresh_value(next_value, written) }
        }
        _ => Input::Delete,
    }
}

fn fresh_value(next_value: &mut u64, written: &mut Vec<u64>) -> u64 {
    let value = *next_value;
    *next_value += 1;
    written.push(value);
    value
}

/// Mostly the latest value written, so that CAS often succeeds; sometimes an
/// older one or one never written, so that it also fails.
fn expected_value(rng: &mut ChaCha8Rng, written: &[u64]) -> u64 {
    match written.last() {
        Some(&latest) if rng.gen_bool(0.7) => latest,
        Some(_) => written[rng.gen_range(0..written.len())],
        None => u64::MAX,
    }
}

/// An output of the shape `input` produces, with random contents drawn from
/// `values` (plus absent), to corrupt a history.
pub(super) fn random_output(rng: &mut ChaCha8Rng, input: &Input, values: &[u64]) -> Output {
    match *input {
        Input::Read => Output::Read(random_value(rng, values)),
        Input::Write(_) => Output::Write,
        Input::Cas { new, .. } if rng.gen_bool(0.3) => Output::Cas { success: true, current: Some(new) },
        Input::Cas { .. } => Output::Cas { success: false, current: random_value(rng, values) },
        Input::Delete => Output::Delete(random_value(rng, values)),
    }
}

fn random_value(rng: &mut ChaCha8Rng, values: &[u64]) -> Value {
    (!values.is_empty() && rng.gen_bool(0.7)).then(|| values[rng.gen_range(0..values.len())])
}
