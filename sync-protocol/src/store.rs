//! What a session needs from the local store, as a trait, so that the simulator and the
//! daemon drive the same session code over the same store. `Replica` implements it; the
//! daemon steps each session on the replica's owner thread, where it holds the `Replica`.
//! Besides the vector, the log floor, `changes_since` and `apply_remote`: four calls serve
//! anti-entropy (`docs/design.md` § "Anti-entropy"), two the causal-stability horizon
//! (§ "Causal-stability horizon") and four state transfer (§ "State transfer").

use edgestore::{
    ApplyError, ApplyReport, ChangeBatch, DocHeads, HeadsTree, HeldClaim, HeldPage, NodeId, RepairReport, Replica,
    StorageError, TransferBatch, TransferProgress, TransferReport, VersionVector,
};

/// The store operations sync uses. All are synchronous and local: a session calls them
/// from `handle_*`/`poll_*` and never holds anything across calls.
pub trait SyncStore {
    /// The store's version vector.
    fn version_vector(&self) -> VersionVector;
    /// The log floor: per origin, the highest seq compacted out of the log. A peer whose
    /// vector is below it for an origin the store holds more of cannot be served from the
    /// log (`changes_since` answers `StorageError::BelowLogFloor`).
    fn log_floor(&self) -> VersionVector;
    /// Log entries `vector` lacks, bounded.
    fn changes_since(
        &self,
        vector: &VersionVector,
        changes_max: usize,
        bytes_max: usize,
    ) -> Result<ChangeBatch, StorageError>;
    /// Applies changes from a peer, atomically per call.
    fn apply_remote(&mut self, changes: Vec<Vec<u8>>) -> Result<ApplyReport, ApplyError>;
    /// Anti-entropy: the digest tree over every document's heads.
    fn heads_tree(&self) -> Result<HeadsTree, StorageError>;
    /// Anti-entropy: the documents of one tree range, at most `docs_max`, and whether that
    /// is all of them.
    fn heads_in_range(&self, depth: u8, prefix: u32, docs_max: usize) -> Result<(Vec<DocHeads>, bool), StorageError>;
    /// Anti-entropy: the automerge changes of a document that a holder of `heads` lacks.
    fn doc_changes_missing(&self, key: &[u8], heads: &[[u8; 32]]) -> Result<Vec<Vec<u8>>, StorageError>;
    /// Anti-entropy: merges a peer's automerge changes into documents (never the log).
    fn repair_docs(&mut self, docs: Vec<(Vec<u8>, Vec<Vec<u8>>)>) -> Result<RepairReport, ApplyError>;
    /// Horizon: records what peer `from` reported holding, and the vectors it forwarded
    /// for other members; whether anything grew (`Replica::record_held`).
    fn record_held(&mut self, from: NodeId, claims: &[HeldClaim], now_ms: u64) -> Result<bool, StorageError>;
    /// Horizon: held vectors that grew after `generation`, bounded (`Replica::held_since`).
    fn held_since(&self, generation: u64, entries_max: usize, now_ms: u64) -> HeldPage;
    /// State transfer (receiver): the unfinished transfer's progress, if any.
    fn transfer_progress(&self) -> Result<Option<TransferProgress>, StorageError>;
    /// State transfer (receiver): claims the one receiving slot for `donor` for
    /// `lease_ms` (renewed by each claim of the holder); `false` while another holds it.
    fn claim_transfer(&mut self, donor: NodeId, now_ms: u64, lease_ms: u64) -> bool;
    /// State transfer (donor): the documents after `after` in key order, bounded.
    fn export_transfer(&self, after: &[u8], docs_max: usize, bytes_max: usize) -> Result<TransferBatch, StorageError>;
    /// State transfer (receiver): imports a batch durably with its progress; the last one
    /// installs the vector.
    fn import_transfer(&mut self, donor: NodeId, batch: TransferBatch) -> Result<TransferReport, ApplyError>;
}

impl SyncStore for Replica {
    fn version_vector(&self) -> VersionVector {
        Replica::version_vector(self).clone()
    }

    fn log_floor(&self) -> VersionVector {
        Replica::log_floor(self).clone()
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

    fn heads_tree(&self) -> Result<HeadsTree, StorageError> {
        Replica::heads_tree(self)
    }

    fn heads_in_range(&self, depth: u8, prefix: u32, docs_max: usize) -> Result<(Vec<DocHeads>, bool), StorageError> {
        Replica::heads_in_range(self, depth, prefix, docs_max)
    }

    fn doc_changes_missing(&self, key: &[u8], heads: &[[u8; 32]]) -> Result<Vec<Vec<u8>>, StorageError> {
        Replica::doc_changes_missing(self, key, heads)
    }

    fn repair_docs(&mut self, docs: Vec<(Vec<u8>, Vec<Vec<u8>>)>) -> Result<RepairReport, ApplyError> {
        Replica::repair_docs(self, docs)
    }

    fn record_held(&mut self, from: NodeId, claims: &[HeldClaim], now_ms: u64) -> Result<bool, StorageError> {
        Replica::record_held(self, from, claims, now_ms)
    }

    fn held_since(&self, generation: u64, entries_max: usize, now_ms: u64) -> HeldPage {
        Replica::held_since(self, generation, entries_max, now_ms)
    }

    fn transfer_progress(&self) -> Result<Option<TransferProgress>, StorageError> {
        Replica::transfer_progress(self)
    }

    fn claim_transfer(&mut self, donor: NodeId, now_ms: u64, lease_ms: u64) -> bool {
        Replica::claim_transfer(self, donor, now_ms, lease_ms)
    }

    fn export_transfer(&self, after: &[u8], docs_max: usize, bytes_max: usize) -> Result<TransferBatch, StorageError> {
        Replica::export_transfer(self, after, docs_max, bytes_max)
    }

    fn import_transfer(&mut self, donor: NodeId, batch: TransferBatch) -> Result<TransferReport, ApplyError> {
        Replica::import_transfer(self, donor, batch)
    }
}
