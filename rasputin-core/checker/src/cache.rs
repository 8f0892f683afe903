//! The memo of visited search configurations.
//!
//! A configuration is (completed operations linearized, unknown-outcome
//! operations linearized, register state). Unknown-outcome operations are
//! optional, so a configuration dominates every one that has the same
//! completed set and state but a superset of linearized unknown operations:
//! anything the dominated one can still do, the dominating one can do too.
//! The cache therefore maps (completed set, state) to the minimal unknown sets
//! visited, and rejects any configuration dominated by one of them.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::bitset::{is_subset, Bitset};
use super::Value;

pub(super) struct Cache {
    visited: HashSet<Visited, BuildHasherDefault<WordHasher>>,
    /// Reused buffer for encoding keys so that lookups do not allocate.
    key: Vec<u64>,
}

impl Cache {
    pub(super) fn new() -> Self {
        Cache { visited: HashSet::default(), key: Vec::new() }
    }

    /// Records the configuration and returns true, unless a visited
    /// configuration dominates it (then it need not be searched again).
    pub(super) fn visit(&mut self, completed: &Bitset, unknown: &Bitset, state: Value) -> bool {
        self.encode(completed.words(), state);
        let unknown = unknown.words();
        let visited_sets = self.visited.get(self.key.as_slice()).map_or(&[][..], Visited::unknown_sets);
        if visited_sets.chunks_exact(unknown.len()).any(|set| is_subset(set, unknown)) {
            return false;
        }
        let mut entry = Vec::with_capacity(self.key.len() + visited_sets.len() + unknown.len());
        entry.extend_from_slice(&self.key);
        // Sets that contain the new one are now redundant: dropping them keeps
        // the dominance scan short.
        entry.extend(visited_sets.chunks_exact(unknown.len()).filter(|set| !is_subset(unknown, set)).flatten());
        entry.extend_from_slice(unknown);
        self.visited.replace(Visited(entry.into_boxed_slice()));
        true
    }

    /// Encodes state and completed set as [key length and number of leading
    /// all-ones words, state tag, state value, words up to the last non-zero
    /// one]. Operations are numbered in invoke order and real-time order
    /// forces old ones to be linearized, so a linearized set is a run of full
    /// words followed by a short window: storing only the window keeps the
    /// cache small.
    fn encode(&mut self, completed: &[u64], state: Value) {
        let full_words = completed.iter().take_while(|&&word| word == u64::MAX).count();
        let window_end = completed.iter().rposition(|&word| word != 0).map_or(full_words, |last| last + 1);
        let key_length = 3 + window_end - full_words;
        let packed = u32::try_from(key_length)
            .ok()
            .zip(u32::try_from(full_words).ok())
            .map(|(length, full)| u64::from(length) | u64::from(full) << 32);
        let packed = packed.unwrap_or_else(|| panic!("{} bitset words do not fit a cache key", completed.len()));
        self.key.clear();
        self.key.push(packed);
        self.key.extend_from_slice(&match state {
            None => [0, 0],
            Some(value) => [1, value],
        });
        self.key.extend_from_slice(&completed[full_words..window_end]);
    }
}

/// A visited (completed set, state) followed by its minimal unknown sets, in
/// one allocation to keep the cache small. Hashing and equality cover only
/// the key, whose length is the low half of the first word, so entries are
/// found by an encoded key alone.
struct Visited(Box<[u64]>);

impl Visited {
    fn key(&self) -> &[u64] {
        &self.0[..self.0[0] as u32 as usize]
    }

    fn unknown_sets(&self) -> &[u64] {
        &self.0[self.key().len()..]
    }
}

impl Borrow<[u64]> for Visited {
    fn borrow(&self) -> &[u64] {
        self.key()
    }
}

impl Hash for Visited {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Visited {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Visited {}

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
