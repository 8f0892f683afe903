//! The memo of visited search configurations.
//!
//! A configuration is (completed operations linearized, unknown-outcome
//! operations linearized, register state). Unknown-outcome operations are
//! optional, so a configuration dominates every one that has the same
//! completed set and state but a superset of linearized unknown operations:
//! anything the dominated one can still do, the dominating one can do too.
//! The cache therefore maps (completed set, state) to the minimal unknown sets
//! visited, and rejects any configuration dominated by one of them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::bitset::{is_subset, Bitset};
use super::Value;

pub(super) struct Cache {
    /// Encoded (completed set, state) to the visited unknown sets, each
    /// `unknown_words` long, concatenated.
    visited: HashMap<Box<[u64]>, Vec<u64>, BuildHasherDefault<WordHasher>>,
    /// Reused buffer for encoding keys so that lookups do not allocate.
    key: Vec<u64>,
    states: u64,
}

impl Cache {
    pub(super) fn new() -> Self {
        Cache { visited: HashMap::default(), key: Vec::new(), states: 0 }
    }

    /// Records the configuration and returns true, unless a visited
    /// configuration dominates it (then it need not be searched again).
    pub(super) fn visit(&mut self, completed: &Bitset, unknown: &Bitset, state: Value) -> bool {
        self.encode(completed.words(), state);
        let unknown = unknown.words();
        if let Some(visited_sets) = self.visited.get_mut(self.key.as_slice()) {
            let mut sets = visited_sets.chunks_exact(unknown.len());
            if sets.any(|set| is_subset(set, unknown)) {
                return false;
            }
            // Sets that contain the new one are now redundant: drop them to
            // keep the dominance scan short.
            let mut minimal: Vec<u64> = visited_sets
                .chunks_exact(unknown.len())
                .filter(|set| !is_subset(unknown, set))
                .flatten()
                .copied()
                .collect();
            minimal.extend_from_slice(unknown);
            *visited_sets = minimal;
        } else {
            self.visited.insert(self.key.as_slice().into(), unknown.to_vec());
        }
        self.states += 1;
        true
    }

    /// Number of configurations recorded so far.
    pub(super) fn states(&self) -> u64 {
        self.states
    }

    /// Encodes state and completed set as [state tag, state value, number of
    /// leading all-ones words, words up to the last non-zero one]. Operations
    /// are numbered in invoke order and real-time order forces old ones to be
    /// linearized, so a linearized set is a run of full words followed by a
    /// short window: storing only the window keeps the cache small.
    fn encode(&mut self, completed: &[u64], state: Value) {
        self.key.clear();
        self.key.extend_from_slice(&match state {
            None => [0, 0],
            Some(value) => [1, value],
        });
        let full_words = completed.iter().take_while(|&&word| word == u64::MAX).count();
        let window_end = completed.iter().rposition(|&word| word != 0).map_or(full_words, |last| last + 1);
        self.key.push(full_words as u64);
        self.key.extend_from_slice(&completed[full_words..window_end]);
    }
}

/// A multiply-rotate hasher over 64-bit words with a final avalanche. The keys
/// come from our own search, not from an adversary, so SipHash's protection is
/// not needed and its cost per word is.
#[derive(Default)]
pub(super) struct WordHasher {
    hash: u64,
}

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word: [u8; 8] = chunk.try_into().expect("chunks_exact yields 8 bytes");
            self.add(u64::from_le_bytes(word));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    /// Murmur3's finaliser: the table uses both the top and the bottom bits.
    fn finish(&self) -> u64 {
        let mut hash = self.hash;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    }
}
