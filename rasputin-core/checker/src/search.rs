//! Wing & Gong's search with Lowe's improvements, for the history of one key.
//!
//! Completed operations contribute a call and a return entry to a doubly
//! linked list sorted by time. An operation may take effect next only if its
//! call precedes the first return still in the list (otherwise an operation
//! that returned before it was invoked would be ordered after it). Taking
//! effect "lifts" both entries out of the list; backtracking relinks them.
//!
//! Unknown-outcome operations have no return entry (they return at +infinity)
//! and are optional, so each could be inserted almost anywhere; three rules
//! keep that freedom from multiplying the search:
//! - They are kept outside the list, in invoke order, and tried after the
//!   completed candidates, so configurations without them are cached first and
//!   dominate those that add them (see `cache`).
//! - Moving an unknown-outcome operation later never breaks real-time order,
//!   and leaving it out never breaks anything. So if some linearization
//!   exists, one exists where each unknown-outcome operation is directly
//!   followed by an operation that depends on it: one that could not take
//!   effect without it, or ends in a different state both without it and with
//!   the two swapped. The search only explores such linearizations.
//! - Of several pending unknown-outcome operations with equal inputs, only the
//!   earliest invoked is tried: once all are eligible they are interchangeable.

use std::collections::{HashMap, HashSet};

use super::bitset::Bitset;
use super::cache::Cache;
use super::{model, Input, Operation, Output, Value};

pub(super) enum KeyOutcome {
    Linearizable,
    Violated(DeadEnd),
    Exhausted { states_explored: u64 },
}

/// The configuration with the most completed operations linearized at which
/// the search got stuck.
pub(super) struct DeadEnd {
    /// History indices, in linearization order.
    pub(super) linearization: Vec<usize>,
    /// How many of `linearization` are completed operations.
    pub(super) completed_placed: usize,
    pub(super) state: Value,
    /// History indices of the completed operations that were eligible next.
    pub(super) unplaceable: Vec<usize>,
}

/// Checks the operations of one key; `operations` are history indices in invoke order.
pub(super) fn check_key(history: &[Operation], operations: &[usize], states_max: u64) -> KeyOutcome {
    Search::new(history, operations).run(states_max)
}

const HEAD: usize = 0;

#[derive(Clone, Copy)]
struct Entry {
    /// Index into `Search::completed`.
    operation: usize,
    time: u64,
    is_return: bool,
}

/// An operation taking effect: an index into `Search::completed` or `Search::unknown`.
#[derive(Clone, Copy)]
enum Placed {
    Completed(usize),
    Unknown(usize),
}

struct Frame {
    placed: Placed,
    previous_state: Value,
}

/// Where the search of the current configuration's candidates continues.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this node of the entry list.
    Entry(usize),
    /// At this index of `Search::unknown`; operations invoked after
    /// `boundary` (the earliest pending return) may not go next.
    Unknown { position: usize, boundary: u64 },
}

enum Attempt {
    Placed,
    Rejected,
    OverLimit,
}

struct Search<'a> {
    history: &'a [Operation],
    /// History indices of completed operations, in invoke order.
    completed: Vec<usize>,
    /// History indices of the unknown-outcome operations that can matter, in invoke order.
    unknown: Vec<usize>,
    /// For each of `unknown`, the latest earlier one with an equal input.
    earlier_twin: Vec<Option<usize>>,
    /// Node 0 is the head sentinel and the last node the tail sentinel.
    entries: Vec<Entry>,
    next: Vec<usize>,
    previous: Vec<usize>,
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    linearized_completed: Bitset,
    linearized_unknown: Bitset,
    pending_completed: usize,
    state: Value,
    stack: Vec<Frame>,
    cache: Cache,
    states_explored: u64,
    deepest: Option<DeadEnd>,
}

impl<'a> Search<'a> {
    fn new(history: &'a [Operation], operations: &[usize]) -> Self {
        let observed = observed_states(history, operations);
        let (completed, unknown): (Vec<usize>, Vec<usize>) = operations
            .iter()
            .copied()
            .filter(|&index| can_matter(&history[index], &observed))
            .partition(|&index| history[index].output.is_some());
        let entries = sorted_entries(history, &completed);
        let mut call_node = vec![0; completed.len()];
        let mut return_node = vec![0; completed.len()];
        for (node, entry) in entries.iter().enumerate().skip(1).take(2 * completed.len()) {
            let nodes = if entry.is_return { &mut return_node } else { &mut call_node };
            nodes[entry.operation] = node;
        }
        Search {
            earlier_twin: earlier_twins(history, &unknown),
            history,
            next: (1..=entries.len()).collect(),
            previous: (0..entries.len()).map(|node| node.saturating_sub(1)).collect(),
            entries,
            call_node,
            return_node,
            linearized_completed: Bitset::new(completed.len()),
            linearized_unknown: Bitset::new(unknown.len()),
            pending_completed: completed.len(),
            completed,
            unknown,
            state: None,
            stack: Vec::new(),
            cache: Cache::new(),
            states_explored: 1,
            deepest: None,
        }
    }

    fn run(mut self, states_max: u64) -> KeyOutcome {
        self.cache.visit(&self.linearized_completed, &self.linearized_unknown, self.state);
        let mut cursor = Cursor::Entry(self.next[HEAD]);
        while self.pending_completed > 0 {
            let Some(placed) = self.candidate_at(cursor) else {
                self.record_dead_end();
                let Some(resumed) = self.backtrack() else {
                    return KeyOutcome::Violated(self.deepest.expect("the root is a dead end"));
                };
                cursor = resumed;
                continue;
            };
            cursor = match self.try_place(placed, states_max) {
                Attempt::Placed => Cursor::Entry(self.next[HEAD]),
                Attempt::Rejected => self.cursor_after(placed),
                Attempt::OverLimit => return KeyOutcome::Exhausted { states_explored: self.states_explored },
            };
        }
        KeyOutcome::Linearizable
    }

    /// The first candidate to try at or after `cursor`, if any is left. The
    /// walk of the list ends at the first return entry, which is where the
    /// unknown-outcome candidates begin.
    fn candidate_at(&self, cursor: Cursor) -> Option<Placed> {
        match cursor {
            Cursor::Entry(node) => {
                let entry = self.entry(node);
                if entry.is_return {
                    self.next_unknown(0, entry.time).map(Placed::Unknown)
                } else {
                    Some(Placed::Completed(entry.operation))
                }
            }
            Cursor::Unknown { position, boundary } => self.next_unknown(position, boundary).map(Placed::Unknown),
        }
    }

    /// The entry at `node`, which must not be the tail: while a completed
    /// operation is pending, its return entry stops every walk before the tail.
    fn entry(&self, node: usize) -> Entry {
        assert!(
            node + 1 < self.entries.len(),
            "walked past the last return entry with {} completed operations pending",
            self.pending_completed
        );
        self.entries[node]
    }

    /// The first unknown-outcome operation at or after `position` that was
    /// invoked no later than `boundary`, is not linearized, and has no pending
    /// earlier twin.
    fn next_unknown(&self, position: usize, boundary: u64) -> Option<usize> {
        (position..self.unknown.len())
            .take_while(|&operation| self.history[self.unknown[operation]].invoke_ns <= boundary)
            .find(|&operation| {
                !self.linearized_unknown.contains(operation) && !self.has_pending_earlier_twin(operation)
            })
    }

    fn has_pending_earlier_twin(&self, operation: usize) -> bool {
        let mut twin = self.earlier_twin[operation];
        while let Some(earlier) = twin {
            if !self.linearized_unknown.contains(earlier) {
                return true;
            }
            twin = self.earlier_twin[earlier];
        }
        false
    }

    /// Lets `placed` take effect if its output matches, it depends on a
    /// directly preceding unknown-outcome operation, and the resulting
    /// configuration is not dominated by one already searched. Configurations
    /// right after an unknown-outcome operation are not cached: they carry the
    /// extra obligation that the next operation depend on it, so they cannot
    /// stand for the same configuration without that obligation.
    fn try_place(&mut self, placed: Placed, states_max: u64) -> Attempt {
        let operation = &self.history[self.history_index(placed)];
        let Some(next_state) = model::step(self.state, &operation.input, operation.output.as_ref()) else {
            return Attempt::Rejected;
        };
        if !self.depends_on_last_unknown(operation, next_state) {
            return Attempt::Rejected;
        }
        self.mark(placed, true);
        if matches!(placed, Placed::Completed(_))
            && !self.cache.visit(&self.linearized_completed, &self.linearized_unknown, next_state)
        {
            self.mark(placed, false);
            return Attempt::Rejected;
        }
        self.states_explored += 1;
        if self.states_explored > states_max {
            return Attempt::OverLimit;
        }
        self.stack.push(Frame { placed, previous_state: self.state });
        self.state = next_state;
        if let Placed::Completed(operation) = placed {
            self.lift(operation);
        }
        Attempt::Placed
    }

    /// Whether `operation`, about to take effect with result `next_state`,
    /// depends on the unknown-outcome operation placed just before it (true
    /// when there is none): it could not take effect from the state before
    /// that one, or its result there differs from `next_state` both alone and
    /// followed by the unknown-outcome operation.
    fn depends_on_last_unknown(&self, operation: &Operation, next_state: Value) -> bool {
        let Some(&Frame { placed: Placed::Unknown(unknown), previous_state }) = self.stack.last() else {
            return true;
        };
        let Some(state_without) = model::step(previous_state, &operation.input, operation.output.as_ref()) else {
            return true;
        };
        let (state_swapped, _) = model::apply(state_without, &self.history[self.unknown[unknown]].input);
        next_state != state_without && next_state != state_swapped
    }

    /// Undoes the most recent placement; returns where the search of the
    /// restored configuration's candidates continues, or None at the root.
    fn backtrack(&mut self) -> Option<Cursor> {
        let frame = self.stack.pop()?;
        self.state = frame.previous_state;
        self.mark(frame.placed, false);
        if let Placed::Completed(operation) = frame.placed {
            self.unlift(operation);
        }
        Some(self.cursor_after(frame.placed))
    }

    /// The candidate after `placed` in search order: completed operations in
    /// list order, then unknown-outcome operations in invoke order.
    fn cursor_after(&self, placed: Placed) -> Cursor {
        match placed {
            Placed::Completed(operation) => Cursor::Entry(self.next[self.call_node[operation]]),
            Placed::Unknown(operation) => {
                Cursor::Unknown { position: operation + 1, boundary: self.earliest_pending_return() }
            }
        }
    }

    fn earliest_pending_return(&self) -> u64 {
        let mut node = self.next[HEAD];
        while !self.entry(node).is_return {
            node = self.next[node];
        }
        self.entries[node].time
    }

    fn history_index(&self, placed: Placed) -> usize {
        match placed {
            Placed::Completed(operation) => self.completed[operation],
            Placed::Unknown(operation) => self.unknown[operation],
        }
    }

    fn mark(&mut self, placed: Placed, linearized: bool) {
        let (set, member) = match placed {
            Placed::Completed(operation) => (&mut self.linearized_completed, operation),
            Placed::Unknown(operation) => (&mut self.linearized_unknown, operation),
        };
        assert_ne!(set.contains(member), linearized, "operation {member} marked linearized={linearized} twice");
        if linearized {
            set.insert(member);
        } else {
            set.remove(member);
        }
    }

    fn lift(&mut self, operation: usize) {
        self.unlink(self.call_node[operation]);
        self.unlink(self.return_node[operation]);
        self.pending_completed -= 1;
    }

    /// Relinks in the reverse order of `lift`, which restores the list exactly
    /// because the search undoes placements last-in, first-out.
    fn unlift(&mut self, operation: usize) {
        self.relink(self.return_node[operation]);
        self.relink(self.call_node[operation]);
        self.pending_completed += 1;
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        self.previous[next] = node;
    }

    /// Remembers the current configuration if it is the deepest dead end yet,
    /// to explain a violation.
    fn record_dead_end(&mut self) {
        let completed_placed = self.completed.len() - self.pending_completed;
        if self.deepest.as_ref().is_some_and(|deepest| deepest.completed_placed >= completed_placed) {
            return;
        }
        let linearization = self.stack.iter().map(|frame| self.history_index(frame.placed)).collect();
        let mut unplaceable = Vec::new();
        let mut node = self.next[HEAD];
        while !self.entry(node).is_return {
            unplaceable.push(self.completed[self.entries[node].operation]);
            node = self.next[node];
        }
        self.deepest = Some(DeadEnd { linearization, completed_placed, state: self.state, unplaceable });
    }
}

/// The list of call and return entries of `completed`, with a head and a tail
/// sentinel. At equal times calls sort before returns, so an operation that
/// returns at the instant another is invoked counts as concurrent with it.
fn sorted_entries(history: &[Operation], completed: &[usize]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = completed
        .iter()
        .enumerate()
        .flat_map(|(operation, &index)| {
            let call = Entry { operation, time: history[index].invoke_ns, is_return: false };
            let complete_ns = history[index].complete_ns.expect("completed operation");
            let complete = Entry { operation, time: complete_ns, is_return: true };
            [call, complete]
        })
        .collect();
    entries.sort_by_key(|entry| (entry.time, entry.is_return, entry.operation));
    let sentinel = Entry { operation: usize::MAX, time: u64::MAX, is_return: true };
    entries.insert(HEAD, sentinel);
    entries.push(sentinel);
    entries
}

/// For each of `unknown` (history indices), the index within `unknown` of the
/// latest earlier operation with an equal input.
fn earlier_twins(history: &[Operation], unknown: &[usize]) -> Vec<Option<usize>> {
    let mut latest: HashMap<&Input, usize> = HashMap::new();
    unknown.iter().enumerate().map(|(position, &index)| latest.insert(&history[index].input, position)).collect()
}

/// Register states that some operation of the key observed in its output or
/// may have found when a CAS succeeded (an over-approximation is harmless).
fn observed_states(history: &[Operation], operations: &[usize]) -> HashSet<Value> {
    let mut observed = HashSet::new();
    for &index in operations {
        let operation = &history[index];
        let may_have_succeeded = !matches!(operation.output, Some(Output::Cas { success: false, .. }));
        if let (Input::Cas { expected, .. }, true) = (&operation.input, may_have_succeeded) {
            observed.insert(Some(*expected));
        }
        match operation.output {
            Some(Output::Read(state) | Output::Cas { current: state, .. } | Output::Delete(state)) => {
                observed.insert(state);
            }
            Some(Output::Write) | None => {}
        }
    }
    observed
}

/// Whether an operation can affect the verdict. Completed operations always
/// can, and an unknown-outcome read never does. Nor does an unknown-outcome
/// operation whose only effect is to set a state that no operation observes
/// or succeeds from: in a linearization that includes it, every completed operation
/// up to the next change of the register would observe that state (read,
/// failed CAS, delete) or succeed from it (CAS), so only unknown-outcome
/// operations that leave it in place lie in between and can be dropped along
/// with it; the write or delete that then changes the register does so regardless.
fn can_matter(operation: &Operation, observed: &HashSet<Value>) -> bool {
    if operation.output.is_some() {
        return true;
    }
    match operation.input {
        Input::Read => false,
        Input::Write(value) | Input::Cas { new: value, .. } => observed.contains(&Some(value)),
        Input::Delete => observed.contains(&None),
    }
}
