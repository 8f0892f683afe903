use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::simulation::{random_output, simulate, Workload};
use super::*;

fn completed(client: u64, invoke_ns: u64, complete_ns: u64, input: Input, output: Output) -> Operation {
    Operation { client, key: 0, input, invoke_ns, complete_ns: Some(complete_ns), output: Some(output) }
}

fn timed_out(client: u64, invoke_ns: u64, input: Input) -> Operation {
    Operation { client, key: 0, input, invoke_ns, complete_ns: None, output: None }
}

fn on_key(key: u64, operation: Operation) -> Operation {
    Operation { key, ..operation }
}

fn write(client: u64, invoke_ns: u64, complete_ns: u64, value: u64) -> Operation {
    completed(client, invoke_ns, complete_ns, Input::Write(value), Output::Write)
}

fn read(client: u64, invoke_ns: u64, complete_ns: u64, seen: Value) -> Operation {
    completed(client, invoke_ns, complete_ns, Input::Read, Output::Read(seen))
}

fn cas(client: u64, span: (u64, u64), expected: u64, new: u64, success: bool, current: Value) -> Operation {
    completed(client, span.0, span.1, Input::Cas { expected, new }, Output::Cas { success, current })
}

fn delete(client: u64, invoke_ns: u64, complete_ns: u64, previous: Value) -> Operation {
    completed(client, invoke_ns, complete_ns, Input::Delete, Output::Delete(previous))
}

/// Asserts the checker and the brute-force reference both accept `history`.
fn assert_linearizable(history: &[Operation]) {
    assert_eq!(check(history, &Limits::default()), Verdict::Linearizable, "{history:#?}");
    assert!(brute::is_linearizable(history), "brute force disagrees: {history:#?}");
}

/// Asserts the checker and the brute-force reference both reject `history`.
fn assert_violation(history: &[Operation]) -> Violation {
    assert!(!brute::is_linearizable(history), "brute force disagrees: {history:#?}");
    match check(history, &Limits::default()) {
        Verdict::NotLinearizable(violation) => violation,
        other => panic!("expected a violation, got {other:?} for {history:#?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        write(0, 0, 1, 1),
        read(0, 2, 3, Some(1)),
        cas(0, (4, 5), 1, 2, true, Some(2)),
        read(0, 6, 7, Some(2)),
        delete(0, 8, 9, Some(2)),
        read(0, 10, 11, None),
        cas(0, (12, 13), 2, 3, false, None),
    ]);
}

#[test]
fn later_read_may_see_either_of_two_overlapping_writes() {
    for seen in [1, 2] {
        assert_linearizable(&[write(0, 0, 10, 1), write(1, 5, 15, 2), read(2, 20, 30, Some(seen))]);
    }
}

#[test]
fn read_overlapping_a_write_may_see_old_or_new_value() {
    for seen in [1, 2] {
        assert_linearizable(&[write(0, 0, 2, 1), write(0, 5, 15, 2), read(1, 6, 8, Some(seen))]);
    }
}

#[test]
fn operations_touching_at_one_instant_are_concurrent() {
    assert_linearizable(&[write(0, 0, 10, 1), read(1, 10, 20, None)]);
}

#[test]
fn cas_success_and_failure() {
    assert_linearizable(&[
        write(0, 0, 1, 1),
        cas(0, (2, 10), 1, 2, true, Some(2)),
        cas(1, (2, 10), 1, 3, false, Some(2)),
        read(2, 11, 12, Some(2)),
    ]);
}

#[test]
fn delete_returns_previous_value() {
    assert_linearizable(&[write(0, 0, 1, 7), delete(0, 2, 3, Some(7)), delete(0, 4, 5, None), read(0, 6, 7, None)]);
}

#[test]
fn unknown_write_observed_by_later_read() {
    assert_linearizable(&[
        write(0, 0, 1, 1),
        timed_out(1, 2, Input::Write(2)),
        read(0, 10, 11, Some(2)),
        read(0, 12, 13, Some(2)),
    ]);
}

#[test]
fn unknown_write_never_observed() {
    assert_linearizable(&[
        write(0, 0, 1, 1),
        timed_out(1, 2, Input::Write(2)),
        read(0, 10, 11, Some(1)),
        read(0, 20, 21, Some(1)),
    ]);
}

#[test]
fn unknown_write_may_take_effect_after_later_operations() {
    assert_linearizable(&[
        write(0, 0, 1, 1),
        timed_out(1, 2, Input::Write(2)),
        write(0, 3, 4, 3),
        read(0, 5, 6, Some(3)),
        read(0, 7, 8, Some(2)),
    ]);
}

#[test]
fn unknown_delete_and_cas_may_take_effect() {
    assert_linearizable(&[
        write(0, 0, 1, 1),
        timed_out(1, 2, Input::Cas { expected: 1, new: 2 }),
        read(0, 3, 4, Some(2)),
        timed_out(2, 5, Input::Delete),
        read(0, 6, 7, None),
    ]);
}

#[test]
fn history_of_only_unknown_operations_is_linearizable() {
    assert_linearizable(&[timed_out(0, 0, Input::Delete), timed_out(1, 0, Input::Read)]);
}

#[test]
fn stale_read_after_completed_write() {
    assert_violation(&[write(0, 0, 1, 1), write(0, 2, 3, 2), read(1, 4, 5, Some(1))]);
}

#[test]
fn read_before_a_write_completes_is_not_concurrent_with_it_afterwards() {
    assert_violation(&[write(0, 0, 10, 1), read(1, 11, 20, None)]);
}

#[test]
fn read_of_a_value_never_written() {
    assert_violation(&[write(0, 0, 1, 1), read(1, 2, 3, Some(9))]);
}

#[test]
fn two_cas_from_the_same_expected_value_cannot_both_succeed() {
    assert_violation(&[write(0, 0, 1, 1), cas(1, (2, 10), 1, 2, true, Some(2)), cas(2, (2, 10), 1, 3, true, Some(3))]);
}

#[test]
fn read_of_an_older_value_after_a_newer_one() {
    assert_violation(&[write(0, 0, 1, 1), write(0, 2, 20, 2), read(1, 3, 4, Some(2)), read(1, 5, 6, Some(1))]);
}

#[test]
fn delete_returning_a_wrong_value() {
    assert_violation(&[write(0, 0, 1, 1), write(0, 2, 3, 2), delete(1, 4, 5, Some(1))]);
}

#[test]
fn unknown_write_observed_then_unobserved() {
    assert_violation(&[
        write(0, 0, 1, 1),
        timed_out(1, 2, Input::Write(2)),
        read(0, 3, 4, Some(2)),
        read(0, 5, 6, Some(1)),
    ]);
}

#[test]
fn violation_names_the_key_its_operations_and_the_stuck_read() {
    let history = [
        on_key(3, write(0, 0, 1, 1)),
        on_key(5, write(0, 2, 3, 1)),
        on_key(5, write(0, 4, 5, 2)),
        on_key(3, read(1, 6, 7, Some(1))),
        on_key(5, read(1, 8, 9, Some(1))),
    ];
    let violation = assert_violation(&history);
    assert_eq!(violation.key, 5);
    assert_eq!(violation.operations, vec![1, 2, 4]);
    assert_eq!(violation.longest_linearizable_prefix, vec![1, 2]);
    assert_eq!(violation.unplaceable, vec![4]);
    assert!(violation.explanation.contains("#4"), "{}", violation.explanation);
}

#[test]
#[should_panic(expected = "must have an output exactly when it has a completion time")]
fn output_without_completion_is_rejected() {
    let mut operation = read(0, 0, 1, None);
    operation.complete_ns = None;
    check(&[operation], &Limits::default());
}

#[test]
fn exceeding_the_state_limit_is_inconclusive() {
    let mut history: Vec<Operation> = (0..8).map(|client| write(client, 0, 100, client + 1)).collect();
    history.push(read(9, 200, 201, Some(99)));
    let limits = Limits { states_per_key_max: 20 };
    assert_eq!(check(&history, &limits), Verdict::Inconclusive { key: 0, states_explored: 21 });
}

/// 2-6 operations from 1-3 clients over 1-2 keys, 20% with unknown outcome.
fn small_workload(rng: &mut ChaCha8Rng) -> Workload {
    Workload {
        clients: rng.gen_range(1..=3),
        keys: rng.gen_range(1..=2),
        operations: rng.gen_range(2..=6),
        max_duration_ns: 6,
        max_pause_ns: 3,
        unknown_percent: 20,
    }
}

/// Replaces the output of one completed, non-write operation by a random one.
fn corrupt_one_output(rng: &mut ChaCha8Rng, history: &mut [Operation]) {
    let candidates: Vec<usize> = (0..history.len())
        .filter(|&index| history[index].output.is_some() && !matches!(history[index].input, Input::Write(_)))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let values: Vec<u64> = history
        .iter()
        .filter_map(|operation| match operation.input {
            Input::Write(value) | Input::Cas { new: value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let target = candidates[rng.gen_range(0..candidates.len())];
    history[target].output = Some(random_output(rng, &history[target].input, &values));
}

/// Checks the histories of `workload` for each seed, 60% of them with one
/// output corrupted, against the brute force; returns how many were
/// linearizable.
fn linearizable_agreeing_with_brute_force(
    seeds: std::ops::Range<u64>,
    workload: impl Fn(&mut ChaCha8Rng) -> Workload,
) -> usize {
    let mut linearizable = 0;
    for seed in seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let workload = workload(&mut rng);
        let mut history = simulate(&mut rng, &workload);
        if rng.gen_bool(0.6) {
            corrupt_one_output(&mut rng, &mut history);
        }
        let expected = brute::is_linearizable(&history);
        let verdict = check(&history, &Limits::default());
        assert!(matches!(verdict, Verdict::Linearizable | Verdict::NotLinearizable(_)), "seed {seed}: {verdict:?}");
        assert_eq!(
            verdict == Verdict::Linearizable,
            expected,
            "seed {seed}: brute force says linearizable={expected}, checker says {verdict:?} for {history:#?}"
        );
        linearizable += usize::from(expected);
    }
    linearizable
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let linearizable = linearizable_agreeing_with_brute_force(0..2000, small_workload);
    assert!(
        (500..=1500).contains(&linearizable),
        "both verdicts should be common; {linearizable} of 2000 were linearizable"
    );
}

#[test]
fn agrees_with_brute_force_when_many_outcomes_are_unknown() {
    let linearizable = linearizable_agreeing_with_brute_force(10_000..15_000, |rng| Workload {
        clients: rng.gen_range(1..=3),
        keys: 1,
        operations: rng.gen_range(3..=8),
        max_duration_ns: 6,
        max_pause_ns: 3,
        unknown_percent: 50,
    });
    assert!(
        (1000..=4500).contains(&linearizable),
        "both verdicts should be common; {linearizable} of 5000 were linearizable"
    );
}

#[test]
fn simulated_small_histories_are_linearizable() {
    for seed in 0..1000 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let workload = small_workload(&mut rng);
        let history = simulate(&mut rng, &workload);
        assert_eq!(check(&history, &Limits::default()), Verdict::Linearizable, "seed {seed}: {history:#?}");
        assert!(brute::is_linearizable(&history), "seed {seed}: {history:#?}");
    }
}

#[test]
fn simulated_medium_histories_are_linearizable() {
    for seed in 0..300 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let workload = Workload {
            clients: rng.gen_range(2..=8),
            keys: rng.gen_range(1..=3),
            operations: 200,
            max_duration_ns: 20,
            max_pause_ns: 5,
            unknown_percent: 10,
        };
        let history = simulate(&mut rng, &workload);
        assert_eq!(check(&history, &Limits::default()), Verdict::Linearizable, "seed {seed}");
    }
}

#[test]
fn verdict_is_deterministic() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let workload =
        Workload { clients: 6, keys: 2, operations: 300, max_duration_ns: 20, max_pause_ns: 5, unknown_percent: 10 };
    let mut history = simulate(&mut rng, &workload);
    corrupt_one_output(&mut rng, &mut history);
    assert_eq!(check(&history, &Limits::default()), check(&history, &Limits::default()));
}

const LARGE_SEED: u64 = 20_240_601;

/// 10,000 operations from 10 clients over 5 keys, about 2% with unknown outcome.
fn large_history() -> Vec<Operation> {
    let workload = Workload {
        clients: 10,
        keys: 5,
        operations: 10_000,
        max_duration_ns: 100,
        max_pause_ns: 20,
        unknown_percent: 2,
    };
    simulate(&mut ChaCha8Rng::seed_from_u64(LARGE_SEED), &workload)
}

#[test]
fn large_simulated_history_is_linearizable() {
    assert_eq!(check(&large_history(), &Limits::default()), Verdict::Linearizable);
}

/// Makes a completed read from the second half of the history return the
/// value of a write that a later write overwrote before the read began, and
/// returns the read's index. No linearization can explain that.
fn make_one_read_stale(history: &mut [Operation]) -> usize {
    for read_index in history.len() / 2..history.len() {
        if let Some(value) = overwritten_value_before(history, read_index) {
            history[read_index].output = Some(Output::Read(Some(value)));
            return read_index;
        }
    }
    panic!("no read in the second half follows two sequential writes");
}

/// For a completed read: the value of a completed write on its key that
/// another completed write started after, both done before the read began.
fn overwritten_value_before(history: &[Operation], read_index: usize) -> Option<u64> {
    let read = &history[read_index];
    if read.input != Input::Read || read.output.is_none() {
        return None;
    }
    let earlier_writes: Vec<(u64, u64, u64)> = history
        .iter()
        .filter(|operation| operation.key == read.key)
        .filter_map(|operation| match (&operation.input, operation.complete_ns) {
            (Input::Write(value), Some(complete_ns)) if complete_ns < read.invoke_ns => {
                Some((*value, operation.invoke_ns, complete_ns))
            }
            _ => None,
        })
        .collect();
    earlier_writes
        .iter()
        .find(|&&(_, _, first_complete_ns)| {
            earlier_writes.iter().any(|&(_, second_invoke_ns, _)| first_complete_ns < second_invoke_ns)
        })
        .map(|&(value, _, _)| value)
}

#[test]
fn large_history_with_one_stale_read_is_not_linearizable() {
    let mut history = large_history();
    let stale_read = make_one_read_stale(&mut history);
    match check(&history, &Limits::default()) {
        Verdict::NotLinearizable(violation) => {
            assert_eq!(violation.key, history[stale_read].key);
            assert!(violation.operations.contains(&stale_read));
            assert!(!violation.longest_linearizable_prefix.contains(&stale_read));
        }
        other => panic!("expected a violation at read {stale_read}, got {other:?}"),
    }
}
