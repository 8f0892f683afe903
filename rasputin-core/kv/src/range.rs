//! Ranges: the key space cut into spans, each replicated by its own Harpoon
//! group. A range's descriptor says which keys it holds, which nodes hold
//! it, and its epoch; a split is a command in the range's own log, so every
//! replica of the range shrinks it at the same log position.

use std::fmt;

use bytes::Bytes;
use thiserror::Error;

use rasputin_consensus::NodeId;

use crate::wire::proto;

pub type RangeId = u64;

/// The range a new cluster starts with; it covers every key. Splits keep it
/// as the leftmost range, so it always exists.
pub const FIRST_RANGE_ID: RangeId = 1;

/// The meta range, which holds every data range's descriptor in a key space
/// of its own: its bounds are of that space, never of data keys. The last
/// id, so that data ranges take theirs from the first on.
pub const META_RANGE_ID: RangeId = RangeId::MAX;

/// A range's version. `version` rises with every split or merge (a change
/// of bounds), `conf_ver` with every change of replicas. A request names the
/// epoch it was routed by, and a replica refuses one that differs: the
/// requester's picture of the range is out of date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeEpoch {
    pub version: u64,
    pub conf_ver: u64,
}

/// Which keys a range holds, and where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RangeDescriptor {
    pub id: RangeId,
    /// The first key of the range.
    pub start: Bytes,
    /// The first key after the range; None: every key from `start` on.
    pub end: Option<Bytes>,
    pub replicas: Vec<NodeId>,
    pub epoch: RangeEpoch,
}

/// Why a split cannot happen. The range is unchanged.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("the split key must lie strictly inside range {range}; ask for a key between its bounds")]
    KeyOutsideRange { range: RangeDescriptor },
    #[error("the split was asked of range version {asked}, but range {range} is at version {}: read its descriptor again and decide anew", range.epoch.version)]
    StaleVersion { asked: u64, range: RangeDescriptor },
    #[error("range {range}'s right half would reuse range id {right}; allocate a new id")]
    RangeIdInUse { right: RangeId, range: RangeDescriptor },
    #[error("this server keeps the whole key space in one range and cannot split it; upgrade every node to a version with ranges")]
    Unsupported,
}

impl RangeDescriptor {
    /// The range of a new cluster: every key, on every member.
    pub fn first(replicas: Vec<NodeId>) -> RangeDescriptor {
        RangeDescriptor { id: FIRST_RANGE_ID, start: Bytes::new(), end: None, replicas, epoch: RangeEpoch::default() }
    }

    /// The meta range of a new cluster, on every member.
    pub fn meta(replicas: Vec<NodeId>) -> RangeDescriptor {
        RangeDescriptor { id: META_RANGE_ID, ..RangeDescriptor::first(replicas) }
    }

    /// Whether this is the meta range, whose bounds are not of data keys.
    pub fn is_meta(&self) -> bool {
        self.id == META_RANGE_ID
    }

    /// Whether the range exists from a cluster's first instant (the first
    /// data range and the meta range); every other is made by a split.
    pub fn is_original(&self) -> bool {
        self.id == FIRST_RANGE_ID || self.is_meta()
    }

    /// Bytes the descriptor takes in a log entry, for batch limits.
    pub fn size_bytes(&self) -> usize {
        self.start.len() + self.end.as_ref().map_or(0, Bytes::len) + 8 * self.replicas.len() + 32
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && self.end.as_ref().is_none_or(|end| key < &end[..])
    }

    /// Whether the two ranges share a key. The meta range's keys are of a
    /// space of their own, so it shares none with a data range.
    pub fn overlaps(&self, other: &RangeDescriptor) -> bool {
        if self.is_meta() != other.is_meta() {
            return false;
        }
        let starts_before_other_ends = other.end.as_ref().is_none_or(|end| self.start < *end);
        let other_starts_before_this_ends = self.end.as_ref().is_none_or(|end| other.start < *end);
        starts_before_other_ends && other_starts_before_this_ends
    }

    /// The two ranges a split at `key` leaves: this one, shrunk to end at
    /// `key`, and a new one with id `right` from `key` on, on the same
    /// replicas. Both get the next version.
    pub fn split_at(
        &self,
        key: &Bytes,
        asked_version: u64,
        right: RangeId,
    ) -> Result<(RangeDescriptor, RangeDescriptor), SplitError> {
        if asked_version != self.epoch.version {
            return Err(SplitError::StaleVersion { asked: asked_version, range: self.clone() });
        }
        if right == self.id || right < FIRST_RANGE_ID {
            return Err(SplitError::RangeIdInUse { right, range: self.clone() });
        }
        if !self.contains(key) || *key == self.start {
            return Err(SplitError::KeyOutsideRange { range: self.clone() });
        }
        let epoch = RangeEpoch { version: self.epoch.version + 1, ..self.epoch };
        let left = RangeDescriptor { end: Some(key.clone()), epoch, ..self.clone() };
        let right = RangeDescriptor { id: right, start: key.clone(), end: self.end.clone(), epoch, ..self.clone() };
        Ok((left, right))
    }
}

/// A stored or received descriptor that cannot be one.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("a range descriptor is malformed: {0}; it is corrupt or from an incompatible version")]
pub struct DescriptorError(&'static str);

impl RangeDescriptor {
    pub fn to_proto(&self) -> proto::RangeDescriptor {
        proto::RangeDescriptor {
            id: self.id,
            start: self.start.clone(),
            has_end: self.end.is_some(),
            end: self.end.clone().unwrap_or_default(),
            replicas: self.replicas.clone(),
            epoch: Some(proto::RangeEpoch { version: self.epoch.version, conf_ver: self.epoch.conf_ver }),
        }
    }

    pub fn from_proto(stored: proto::RangeDescriptor) -> Result<RangeDescriptor, DescriptorError> {
        if stored.id < FIRST_RANGE_ID {
            return Err(DescriptorError("range id 0"));
        }
        let end = stored.has_end.then_some(stored.end);
        if end.as_ref().is_some_and(|end| *end <= stored.start) {
            return Err(DescriptorError("its end is not after its start"));
        }
        let epoch = stored.epoch.ok_or(DescriptorError("no epoch"))?;
        Ok(RangeDescriptor {
            id: stored.id,
            start: stored.start,
            end,
            replicas: stored.replicas,
            epoch: RangeEpoch { version: epoch.version, conf_ver: epoch.conf_ver },
        })
    }
}

impl fmt::Display for RangeDescriptor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.end.as_ref().map_or_else(|| "∞".to_string(), |end| format!("{:?}", Escaped(end)));
        write!(
            formatter,
            "{} [{:?}, {end}) version {} conf_ver {} on {:?}",
            self.id,
            Escaped(&self.start),
            self.epoch.version,
            self.epoch.conf_ver,
            self.replicas
        )
    }
}

/// Shows a key as text where it is printable and as escapes where not.
struct Escaped<'a>(&'a [u8]);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "\"{}\"", self.0.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn a_split_tiles_the_range_it_cuts() {
        let whole = RangeDescriptor::first(vec![1, 2, 3]);
        let (left, right) = whole.split_at(&key("m"), 0, 2).expect("m lies inside");
        for probe in ["", "a", "l", "lzzz", "m", "m\0", "z", "\u{ff}"] {
            assert!(whole.contains(probe.as_bytes()));
            assert!(
                left.contains(probe.as_bytes()) != right.contains(probe.as_bytes()),
                "{probe:?} must be in exactly one half"
            );
        }
        assert!(!left.overlaps(&right) && !right.overlaps(&left));
        assert!(whole.overlaps(&left) && whole.overlaps(&right));
        assert_eq!((left.epoch.version, right.epoch.version), (1, 1));
        assert_eq!((left.id, right.id), (FIRST_RANGE_ID, 2));
        assert_eq!(right.replicas, vec![1, 2, 3]);
    }

    #[test]
    fn splits_at_a_bound_or_of_an_old_version_are_refused() {
        let whole = RangeDescriptor::first(vec![1]);
        let (left, right) = whole.split_at(&key("m"), 0, 2).expect("m lies inside");
        assert!(matches!(left.split_at(&key("m"), 1, 3), Err(SplitError::KeyOutsideRange { .. })));
        assert!(matches!(right.split_at(&key("m"), 1, 3), Err(SplitError::KeyOutsideRange { .. })));
        assert!(matches!(whole.split_at(&Bytes::new(), 0, 2), Err(SplitError::KeyOutsideRange { .. })));
        assert!(matches!(left.split_at(&key("c"), 0, 3), Err(SplitError::StaleVersion { asked: 0, .. })));
        assert!(matches!(left.split_at(&key("c"), 1, 1), Err(SplitError::RangeIdInUse { .. })));
        assert!(left.split_at(&key("c"), 1, 3).is_ok());
    }

    #[test]
    fn a_descriptor_survives_protobuf_and_a_malformed_one_is_refused() {
        let whole = RangeDescriptor::first(vec![1, 2, 3]);
        let (left, right) = whole.split_at(&key("m"), 0, 7).expect("m lies inside");
        for descriptor in [whole, left.clone(), right] {
            assert_eq!(RangeDescriptor::from_proto(descriptor.to_proto()), Ok(descriptor));
        }
        let inverted = proto::RangeDescriptor { start: key("z"), ..left.to_proto() };
        assert!(RangeDescriptor::from_proto(inverted).is_err());
        assert!(RangeDescriptor::from_proto(proto::RangeDescriptor { id: 0, ..left.to_proto() }).is_err());
        assert!(RangeDescriptor::from_proto(proto::RangeDescriptor { epoch: None, ..left.to_proto() }).is_err());
    }

    #[test]
    fn a_descriptor_prints_its_bounds_readably() {
        let whole = RangeDescriptor::first(vec![1, 2]);
        let (left, _) = whole.split_at(&Bytes::from_static(b"k\x01"), 0, 2).expect("inside");
        assert_eq!(left.to_string(), "1 [\"\", \"k\\x01\") version 1 conf_ver 0 on [1, 2]");
        assert_eq!(whole.to_string(), "1 [\"\", ∞) version 0 conf_ver 0 on [1, 2]");
    }
}
