//! Version vectors: per origin node, the highest sequence number held contiguously.
//!
//! A replica holds change `(origin, seq)` for every `seq <= vector[origin]` and never one
//! above it (changes above it wait in the pending table). That makes the vector an exact
//! summary of the change log, which is what sync exchanges and what `changes_since` reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Highest contiguous sequence number held, per origin. Missing origins are 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// An empty vector.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The highest contiguous seq held from `origin` (0 if none).
    pub fn seq(&self, origin: NodeId) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Sets the entry for `origin`. Setting 0 removes it, so equal vectors compare equal.
    pub fn set(&mut self, origin: NodeId, seq: u64) {
        if seq == 0 {
            self.0.remove(&origin);
        } else {
            self.0.insert(origin, seq);
        }
        debug_assert!(!self.0.values().any(|s| *s == 0), "no entry is 0, so equal vectors compare equal");
    }

    /// Whether this vector holds everything `other` holds.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(origin, seq)| self.seq(origin) >= seq)
    }

    /// Entries in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(origin, seq)| (*origin, *seq))
    }

    /// Number of origins with at least one change.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no change is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total number of changes the vector covers.
    pub fn total_changes(&self) -> u64 {
        self.0.values().sum()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> VersionVector {
        let mut vector = VersionVector::new();
        for (origin, seq) in iter {
            vector.set(origin, seq);
        }
        vector
    }
}
