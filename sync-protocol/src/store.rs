//! What a session needs from the local store, as a trait, so that the simulator and the
//! daemon drive the same session code over the same `Replica` (or a `ReplicaHandle`).

use edgestore::{ApplyError, ApplyReport, ChangeBatch, Replica, StorageError, VersionVector};

/// The store operations sync uses. All are synchronous and local: a session calls them
/// from `handle_*`/`poll_*` and never holds anything across calls.
pub trait SyncStore {
    /// The store's version vector.
    fn version_vector(&self) -> VersionVector;
    /// Log entries `vector` lacks, bounded.
    fn changes_since(
        &self,
        vector: &VersionVector,
        changes_max: usize,
        bytes_max: usize,
    ) -> Result<ChangeBatch, StorageError>;
    /// Applies changes from a peer, atomically per call.
    fn apply_remote(&mut self, changes: Vec<Vec<u8>>) -> Result<ApplyReport, ApplyError>;
}

impl SyncStore for Replica {
    fn version_vector(&self) -> VersionVector {
        Replica::version_vector(self).clone()
    }

    fn changes_since(
        &self,
        vector: &VersionVector,
        changes_max: usize,
        bytes_max: usize,
    ) -> Result<ChangeBatch, StorageError> {
        Replica::changes_since(self, vector, changes_max, bytes_max)
    }

    fn apply_remote(&mut self, changes: Vec<Vec<u8>>) -> Result<ApplyReport, ApplyError> {
        Replica::apply_remote(self, changes)
    }
}
