//! Safety properties checked after every simulator event. A breach is
//! returned as a description, which the simulator reports with its seed.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use rasputin_consensus::{LogIndex, NodeId, Term};
use rasputin_kv::operation::{Entry, EntryPayload, Node};
use rasputin_kv::range::{RangeDescriptor, RangeId};

/// A stable fingerprint of an entry's payload.
fn fingerprint(payload: &EntryPayload) -> u64 {
    let mut hasher = DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

/// The checks of one range's Harpoon group.
#[derive(Default)]
pub struct Invariants {
    /// The log position the group starts from: 0 for the first range, the
    /// split entry's index for a range a split made.
    base: LogIndex,
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) → (payload fingerprint, term of the entry before it).
    entries: HashMap<(LogIndex, Term), (u64, Term)>,
    /// Committed entries as first applied anywhere: index → (term, fingerprint).
    committed: Vec<(Term, u64)>,
    /// index → the lowest term of a leader that applied it, i.e. committed it.
    committed_in_term: Vec<Term>,
}

pub type Breach = String;

impl Invariants {
    /// The checks of a range whose log starts after `base`.
    pub fn after(base: LogIndex) -> Invariants {
        Invariants { base, ..Invariants::default() }
    }

    /// At most one leader per term, and leader completeness: a leader holds
    /// every entry committed by the leader of an earlier term. (A late-elected
    /// leader of an older term may lack entries committed in newer ones.)
    pub fn on_leader(&mut self, node: &Node) -> Result<(), Breach> {
        let term = node.term();
        let id = node.id();
        if let Some(&other) = self.leaders.get(&term) {
            if other != id {
                return Err(format!("two leaders in term {term}: nodes {other} and {id}"));
            }
            return Ok(());
        }
        self.leaders.insert(term, id);
        let log = node.log();
        for (offset, &(committed_term, print)) in self.committed.iter().enumerate() {
            let index = self.base + offset as LogIndex + 1;
            if index <= log.snapshot_index() || self.committed_in_term[offset] >= term {
                continue;
            }
            let held = log.entry(index).map(|entry| (entry.term, fingerprint(&entry.payload)));
            if held != Some((committed_term, print)) {
                return Err(format!(
                    "leader completeness: node {id}, leader of term {term}, lacks committed index {index} (term {committed_term}); holds {held:?}"
                ));
            }
        }
        Ok(())
    }

    /// Log matching: an (index, term) pair names one entry and one predecessor term everywhere.
    pub fn on_persisted_entries(&mut self, node: &Node, entries: &[Entry]) -> Result<(), Breach> {
        for entry in entries {
            let previous_term = node.log().term(entry.index - 1).unwrap_or(0);
            let print = (fingerprint(&entry.payload), previous_term);
            let recorded = *self.entries.entry((entry.index, entry.term)).or_insert(print);
            if recorded != print {
                return Err(format!(
                    "log matching: node {} holds a different entry or predecessor at index {} term {}",
                    node.id(),
                    entry.index,
                    entry.term
                ));
            }
        }
        Ok(())
    }

    /// State machine safety: no two nodes apply different entries at one
    /// index. `leader_term` is the applying node's term if it leads.
    pub fn on_apply(&mut self, node_id: NodeId, entry: &Entry, leader_term: Option<Term>) -> Result<(), Breach> {
        let print = (entry.term, fingerprint(&entry.payload));
        assert!(
            entry.index > self.base,
            "node {node_id} applied index {} of a range that starts after {}",
            entry.index,
            self.base
        );
        let offset = (entry.index - self.base - 1) as usize;
        let committing_term = leader_term.unwrap_or(Term::MAX);
        if offset == self.committed.len() {
            self.committed.push(print);
            self.committed_in_term.push(committing_term);
            return Ok(());
        }
        if offset < self.committed.len() {
            self.committed_in_term[offset] = self.committed_in_term[offset].min(committing_term);
        }
        if offset > self.committed.len() {
            return Err(format!(
                "node {node_id} applied index {} before anyone applied {}",
                entry.index,
                self.base + self.committed.len() as LogIndex + 1
            ));
        }
        if self.committed[offset] != print {
            return Err(format!(
                "node {node_id} applied term {} at index {}, where term {} was applied before",
                entry.term, entry.index, self.committed[offset].0
            ));
        }
        Ok(())
    }
}

/// What a node had promised as a step began: enough to tell whether the
/// step's vote or campaign broke a promise.
pub struct PromiseView {
    term: Term,
    voted_for: Option<NodeId>,
    /// The candidates this node's promise forbade it to help, itself included.
    forbidden: Vec<NodeId>,
}

impl PromiseView {
    pub fn of(node: &Node, now: u64) -> PromiseView {
        let forbidden =
            node.config().members.iter().copied().filter(|&member| node.promise_forbids(member, now)).collect();
        PromiseView { term: node.term(), voted_for: node.hard_state().voted_for, forbidden }
    }
}

impl Invariants {
    /// Harpoon's promise: while a vote or lease extension binds a node, it
    /// helps nobody else become leader: it neither votes for another
    /// candidate nor campaigns itself.
    pub fn on_step(&self, before: &PromiseView, node: &Node) -> Result<(), Breach> {
        let hard_state = node.hard_state();
        let new_vote =
            hard_state.voted_for.filter(|_| (hard_state.term, hard_state.voted_for) != (before.term, before.voted_for));
        match new_vote {
            Some(candidate) if before.forbidden.contains(&candidate) => Err(format!(
                "node {} gave its vote in term {} to node {candidate} while a promise forbade it",
                node.id(),
                hard_state.term
            )),
            _ => Ok(()),
        }
    }
}

/// One valid lease: the node that holds it, the range, and the keys that
/// replica believes the range holds.
pub struct Lease<'a> {
    pub node: NodeId,
    pub range: RangeId,
    pub descriptor: &'a RangeDescriptor,
    /// The holder's term's no-op has committed, so it answers reads from
    /// the state `descriptor` is of; before, it waits and applies first.
    pub serving: bool,
}

/// At most one lease covers a key at an instant of true time: within a
/// range, one holder; across ranges, no two serving holders whose
/// replicas' descriptors share a key (a split must not leave the old
/// leader serving the right half beside the right range's leader).
pub fn check_leases(leases: &[Lease], true_ns: u64) -> Result<(), Breach> {
    for (position, first) in leases.iter().enumerate() {
        for second in &leases[position + 1..] {
            let both_serve = first.serving && second.serving;
            if first.range == second.range || (both_serve && first.descriptor.overlaps(second.descriptor)) {
                return Err(format!(
                    "at true time {true_ns} ns, node {} (range {}) and node {} (range {}) both hold a valid lease on keys of {} and {}",
                    first.node, first.range, second.node, second.range, first.descriptor, second.descriptor
                ));
            }
        }
    }
    Ok(())
}

/// A node's ranges cover each key at most once.
pub fn check_tiling(node: NodeId, descriptors: &[&RangeDescriptor]) -> Result<(), Breach> {
    for (position, first) in descriptors.iter().enumerate() {
        if let Some(second) = descriptors[position + 1..].iter().find(|second| first.overlaps(second)) {
            return Err(format!("node {node} holds ranges {first} and {second}, which share keys"));
        }
    }
    Ok(())
}
