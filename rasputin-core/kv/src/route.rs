//! A client's route cache: which range holds a key, at which epoch, and
//! where to send requests for it. Filled from meta lookups and from the
//! descriptors a `RANGE_MISMATCH` carries; a pure structure, so that the
//! simulator's clients and the Rust client keep the same one.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use crate::range::{RangeDescriptor, RangeId};

/// Routes a cache keeps at most; beyond this it forgets the first in key
/// order (a miss costs one meta lookup), so that its memory is bounded.
pub const ROUTES_COUNT_MAX: usize = 100_000;

/// What a client believes of one range: its descriptor and where to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route<T> {
    pub descriptor: RangeDescriptor,
    pub target: T,
}

/// Routes by start key, so that "which range holds k" is one seek.
#[derive(Clone, Debug)]
pub struct RouteCache<T> {
    by_start: BTreeMap<Bytes, Route<T>>,
    /// Each route's start key, by range id.
    starts: BTreeMap<RangeId, Bytes>,
}

impl<T: Clone> RouteCache<T> {
    /// A cache that knows no range yet: each key's first request looks its
    /// range up.
    pub fn empty() -> RouteCache<T> {
        RouteCache { by_start: BTreeMap::new(), starts: BTreeMap::new() }
    }

    /// A cache that knows one range, as a client of a new cluster does.
    pub fn new(first: RangeDescriptor, target: T) -> RouteCache<T> {
        let mut cache = RouteCache::empty();
        cache.insert(Route { descriptor: first, target });
        cache
    }

    /// The route of the range holding `key`, if the cache knows it.
    pub fn for_key(&self, key: &[u8]) -> Option<&Route<T>> {
        let (_, route) = self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        route.descriptor.contains(key).then_some(route)
    }

    pub fn for_range(&mut self, range: RangeId) -> Option<&mut Route<T>> {
        let start = self.starts.get(&range)?;
        self.by_start.get_mut(start)
    }

    /// Every known range's id, in key order.
    pub fn ranges(&self) -> impl Iterator<Item = RangeId> + '_ {
        self.by_start.values().map(|route| route.descriptor.id)
    }

    /// Takes in a descriptor a node or the meta range reported. Splits and
    /// merges raise versions, so of two overlapping descriptors the one
    /// with the higher version is the newer; the older goes. A range's
    /// target is kept when its descriptor is replaced. Returns whether the
    /// descriptor was news.
    pub fn learn(&mut self, descriptor: RangeDescriptor, target: T) -> bool {
        let overlapping = self.overlapping(&descriptor);
        let newer_known =
            overlapping.iter().any(|start| self.by_start[start].descriptor.epoch.version >= descriptor.epoch.version);
        if newer_known {
            return false;
        }
        let inherited = self.for_range(descriptor.id).map(|route| route.target.clone());
        let same_id = self.starts.get(&descriptor.id).cloned();
        for start in overlapping.into_iter().chain(same_id) {
            self.remove(&start);
        }
        if self.by_start.len() >= ROUTES_COUNT_MAX {
            if let Some(first) = self.by_start.keys().next().cloned() {
                self.remove(&first);
            }
        }
        self.insert(Route { descriptor, target: inherited.unwrap_or(target) });
        true
    }

    /// The start keys of the routes that share a key with `descriptor`.
    fn overlapping(&self, descriptor: &RangeDescriptor) -> Vec<Bytes> {
        let mut before = self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(&descriptor.start[..])));
        let holding_start = before.next_back().map(|(start, _)| start.clone());
        let from = holding_start.unwrap_or_else(|| descriptor.start.clone());
        self.by_start
            .range(from..)
            .take_while(|(start, _)| descriptor.end.as_ref().is_none_or(|end| *start < end))
            .filter(|(_, route)| route.descriptor.overlaps(descriptor))
            .map(|(start, _)| start.clone())
            .collect()
    }

    fn insert(&mut self, route: Route<T>) {
        let start = route.descriptor.start.clone();
        self.starts.insert(route.descriptor.id, start.clone());
        self.by_start.insert(start, route);
    }

    fn remove(&mut self, start: &Bytes) {
        if let Some(route) = self.by_start.remove(start) {
            self.starts.remove(&route.descriptor.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(range: &RangeDescriptor, key: &'static str, right: RangeId) -> (RangeDescriptor, RangeDescriptor) {
        range.split_at(&Bytes::from_static(key.as_bytes()), range.epoch.version, right).unwrap()
    }

    #[test]
    fn a_newer_descriptor_replaces_the_older_and_keeps_its_target() {
        let first = RangeDescriptor::first(vec![1, 2, 3]);
        let mut cache = RouteCache::new(first.clone(), "node-1");
        let (left, right) = split(&first, "m", 2);
        assert!(cache.learn(right.clone(), "node-2"), "the right half is news");
        assert!(cache.for_key(b"a").is_none(), "the old first range went: its span overlapped");
        assert!(cache.learn(left.clone(), "node-3"));
        assert_eq!(cache.for_key(b"a").map(|route| route.target), Some("node-3"));
        assert_eq!(cache.for_key(b"m").map(|route| (route.descriptor.id, route.target)), Some((2, "node-2")));
        assert_eq!(cache.ranges().collect::<Vec<_>>(), [1, 2]);
        // A late report of the old first range is not news, and changes nothing.
        assert!(!cache.learn(first, "node-9"));
        assert_eq!(cache.for_key(b"z").map(|route| route.descriptor.clone()), Some(right.clone()));
        // The left splits again; its id keeps its target.
        let (left_left, _) = split(&left, "f", 3);
        cache.for_range(1).unwrap().target = "node-1";
        assert!(cache.learn(left_left, "node-7"));
        assert_eq!(cache.for_key(b"a").map(|route| route.target), Some("node-1"));
        assert!(cache.for_key(b"g").is_none(), "the hole between f and m awaits a lookup");
    }
}
