//! Opening a replica: the memory budget ([`OpenOptions`]), the identity and format checks
//! of `meta_v1`, and the upgrade of a store made before `digest_v1` existed.
//!
//! One budget, `cache_bytes`, bounds both caches a replica keeps: redb's page cache (read
//! cache and write buffer together) gets three quarters, the document cache one quarter.
//! Rows are read from redb pages by every query, while the document cache only speeds up
//! repeated writes to the same rows, so the pages get the larger share.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable};

use super::cache::DocCache;
use super::{digest_parts, Replica};
use crate::catalog::Catalog;
use crate::error::{Corruption, OpenError, StorageError};
use crate::storage::{
    self, FORMAT_VERSION, FORMAT_VERSION_COMPACTED, FORMAT_VERSION_UNCOMPACTED, FORMAT_VERSION_WITHOUT_DIGEST,
};
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// The memory budget of a replica when none is given: sized for a gateway.
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;
/// The smallest budget accepted; below it redb cannot keep a write transaction's pages.
pub const CACHE_BYTES_MIN: usize = 1 << 20;

/// How a replica is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// Memory for caches, split between redb's page cache and the document cache.
    pub cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions { cache_bytes: CACHE_BYTES_DEFAULT }
    }
}

impl OpenOptions {
    /// The part of the budget given to redb's page cache.
    pub fn redb_cache_bytes(&self) -> usize {
        self.cache_bytes - self.doc_cache_bytes()
    }

    /// The part of the budget given to the document cache.
    pub fn doc_cache_bytes(&self) -> usize {
        self.cache_bytes / 4
    }
}

impl Replica {
    /// Opens (or creates) the replica stored at `path` for node `node`, with the default
    /// memory budget ([`CACHE_BYTES_DEFAULT`]).
    ///
    /// A file made by another node is refused: a node id must never be reused, or two
    /// nodes would issue different changes under the same `(origin, seq)`.
    pub fn open(path: impl AsRef<Path>, node: NodeId) -> Result<Replica, OpenError> {
        Replica::open_with(path, node, &OpenOptions::default())
    }

    /// [`Replica::open`] with options; a budget below [`CACHE_BYTES_MIN`] is refused.
    pub fn open_with(path: impl AsRef<Path>, node: NodeId, options: &OpenOptions) -> Result<Replica, OpenError> {
        if options.cache_bytes < CACHE_BYTES_MIN {
            return Err(OpenError::CacheTooSmall { bytes: options.cache_bytes, min_bytes: CACHE_BYTES_MIN });
        }
        let db = Database::builder()
            .set_cache_size(options.redb_cache_bytes())
            .create(path.as_ref())
            .map_err(StorageError::from)?;
        let replica = Replica::open_database_with(db, node, options)?;
        if replica.upgraded_on_open {
            tracing::info!(path = %path.as_ref().display(), "store upgraded to format {FORMAT_VERSION_UNCOMPACTED} (digest_v1 built)");
        }
        Ok(replica)
    }

    /// Opens (or initialises) the replica held by a database the caller built, e.g. with
    /// `redb::Builder` on another `StorageBackend` (the fault tests use one that runs out
    /// of space), with the default document cache. The same node-id rule as
    /// [`Replica::open`] applies.
    pub fn open_database(db: Database, node: NodeId) -> Result<Replica, OpenError> {
        Replica::open_database_with(db, node, &OpenOptions::default())
    }

    /// [`Replica::open_database`] with the document cache sized from `options` (redb's
    /// cache is whatever the caller's builder set).
    pub fn open_database_with(db: Database, node: NodeId, options: &OpenOptions) -> Result<Replica, OpenError> {
        let txn = db.begin_write().map_err(StorageError::from)?;
        storage::create_tables(&txn)?;
        let upgraded = {
            let mut meta = txn.open_table(storage::META).map_err(StorageError::from)?;
            check_or_init_meta(&mut meta, node)?
        };
        if upgraded {
            build_digest(&txn)?;
        }
        txn.commit().map_err(StorageError::from)?;
        let mut replica = Replica {
            db: Arc::new(db),
            node,
            catalog: Catalog::default(),
            versions: VersionVector::new(),
            announced: VersionVector::new(),
            floor: VersionVector::new(),
            transfer_claim: None,
            cache: DocCache::new(options.doc_cache_bytes()),
            guard: super::guard::Guard::default(),
            redb_cache_bytes: options.redb_cache_bytes(),
            upgraded_on_open: upgraded,
            holders: Box::default(),
            sweep: super::save::Sweep::default(),
            format: 0,
            next_row_n: 1,
        };
        replica.reload_state()?;
        Ok(replica)
    }
}

/// Initialises `meta_v1` of a new store, or checks the format and node id of an existing
/// one. Returns whether the store has the previous format and must be upgraded (its
/// format version is already rewritten here, in the caller's transaction).
fn check_or_init_meta(meta: &mut redb::Table<&'static str, &'static [u8]>, node: NodeId) -> Result<bool, OpenError> {
    let format = meta.get(storage::META_FORMAT).map_err(StorageError::from)?.map(|v| v.value().to_vec());
    let upgrade = match format {
        None => {
            let format = FORMAT_VERSION_UNCOMPACTED.to_be_bytes();
            meta.insert(storage::META_FORMAT, format.as_slice()).map_err(StorageError::from)?;
            meta.insert(storage::META_NODE_ID, node.as_bytes().as_slice()).map_err(StorageError::from)?;
            return Ok(false);
        }
        Some(bytes) => match <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_be_bytes).unwrap_or(0) {
            FORMAT_VERSION | FORMAT_VERSION_COMPACTED | FORMAT_VERSION_UNCOMPACTED => false,
            FORMAT_VERSION_WITHOUT_DIGEST => true,
            found => return Err(OpenError::UnsupportedFormat { found, expected: FORMAT_VERSION }),
        },
    };
    let stored = meta.get(storage::META_NODE_ID).map_err(StorageError::from)?;
    let stored =
        stored.and_then(|v| NodeId::from_slice(v.value())).ok_or_else(|| StorageError::Corrupt(Corruption::NodeId))?;
    if stored != node {
        return Err(OpenError::NodeIdMismatch { stored, requested: node });
    }
    if upgrade {
        let format = FORMAT_VERSION_UNCOMPACTED.to_be_bytes();
        meta.insert(storage::META_FORMAT, format.as_slice()).map_err(StorageError::from)?;
    }
    Ok(upgrade)
}

/// Builds `digest_v1` from the tables it summarises (one scan of each).
fn build_digest(txn: &redb::WriteTransaction) -> Result<(), StorageError> {
    let parts = digest_parts::compute_parts(
        &txn.open_table(storage::CATALOG)?,
        &txn.open_table(storage::DOC_HEADS)?,
        &txn.open_table(storage::ROWS)?,
        &txn.open_table(storage::CONFLICTS)?,
        &txn.open_table(storage::APPEND_BLOCKS)?,
    )?;
    let mut digest = txn.open_table(storage::DIGEST)?;
    digest.retain(|_, _| false)?;
    digest_parts::store_parts(&mut digest, &parts)
}
