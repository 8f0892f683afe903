//! A fixed-size set of small integers packed into 64-bit words.

const WORD_BITS: usize = 64;

#[derive(Debug)]
pub(super) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// An empty set able to hold `0..capacity`. It always has at least one
    /// word so that sets of different capacities have a uniform layout.
    pub(super) fn new(capacity: usize) -> Self {
        Bitset { words: vec![0; capacity.div_ceil(WORD_BITS).max(1)] }
    }

    pub(super) fn insert(&mut self, member: usize) {
        self.words[member / WORD_BITS] |= 1 << (member % WORD_BITS);
    }

    pub(super) fn remove(&mut self, member: usize) {
        self.words[member / WORD_BITS] &= !(1 << (member % WORD_BITS));
    }

    pub(super) fn contains(&self, member: usize) -> bool {
        self.words[member / WORD_BITS] & (1 << (member % WORD_BITS)) != 0
    }

    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }
}

/// Whether every bit of `subset` is also set in `superset` (same length).
pub(super) fn is_subset(subset: &[u64], superset: &[u64]) -> bool {
    subset.iter().zip(superset).all(|(small, large)| small & !large == 0)
}
