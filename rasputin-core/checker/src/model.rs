//! The sequential specification of one key: a register that may be absent.

use super::{Input, Output, Value};

/// Applies `input` to a register holding `state`; returns the new state and
/// the output a client would observe.
pub(super) fn apply(state: Value, input: &Input) -> (Value, Output) {
    match *input {
        Input::Read => (state, Output::Read(state)),
        Input::Write(value) => (Some(value), Output::Write),
        Input::Cas { expected, new } if state == Some(expected) => {
            (Some(new), Output::Cas { success: true, current: Some(new) })
        }
        Input::Cas { .. } => (state, Output::Cas { success: false, current: state }),
        Input::Delete => (None, Output::Delete(state)),
    }
}

/// The state after `input` takes effect on `state`, or None when the output
/// it would produce contradicts the observed one. An unobserved output (the
/// outcome is unknown) accepts anything.
pub(super) fn step(state: Value, input: &Input, observed: Option<&Output>) -> Option<Value> {
    let (next, output) = apply(state, input);
    match observed {
        Some(observed) if *observed != output => None,
        _ => Some(next),
    }
}
