//! Restore: a backup becomes the store of a new node, never of the node it was taken from.
//!
//! Reusing the backup's node id would let two stores (the original, if it still runs, and
//! the restored one, or two restores of one backup) write different changes under the same
//! `(origin, seq)`: an equivocation every peer refuses. So a restore adopts a new node id:
//!
//! - `meta_v1.node_id` becomes the new id; every change the backup holds — those of the old
//!   node included — stays in `log_v1` as a foreign change, is still served to peers, and
//!   the old node's changes after the backup are accepted like any peer's.
//! - The new id must not appear in the backup's version vector, log or pending changes
//!   (it would have been used before).
//! - `announced_vector` is dropped: the new node's first change then depends on the whole
//!   version vector, which its automerge changes (made on documents holding every backed-up
//!   change) need on every receiver.
//! - Its own seq starts at 1 (it has no entry in the vector); documents are loaded with the
//!   new id as their automerge actor, so every new change is authored by it.
//! - Pending (parked) changes stay and apply once their dependencies arrive.

use std::fs::{File, OpenOptions};
use std::path::Path;

use redb::{Database, ReadableTable};

use super::backup::{claim_temporary, io, place, sync_file, verify_copy, BackupError};
use super::Replica;
use crate::error::{OpenError, StorageError};
use crate::keys;
use crate::storage::{
    self, FORMAT_VERSION, FORMAT_VERSION_COMPACTED, FORMAT_VERSION_UNCOMPACTED, FORMAT_VERSION_WITHOUT_DIGEST,
};
use crate::types::NodeId;

impl Replica {
    /// Builds a new store at `dest` from the backup file `backup`, owned by `new_node`,
    /// and opens it. See the module documentation for what changes.
    ///
    /// Refuses an existing `dest`, `new_node` equal to the backup's node id or already
    /// present in its changes, and a backup that is not a valid store. Works on
    /// `dest` + `.partial` (refused if present), checks the result with
    /// `check_integrity`, then links it under `dest`; the backup file is only read.
    pub fn restore(backup: &Path, dest: &Path, new_node: NodeId) -> Result<Replica, BackupError> {
        let temp = claim_temporary(dest)?;
        let outcome = copy_and_adopt(backup, &temp, new_node).and_then(|()| {
            verify_copy(&temp, new_node)?;
            place(&temp, dest)
        });
        // On success the temporary name is already gone; on failure it is ours to remove.
        let _ = std::fs::remove_file(&temp);
        outcome?;
        Ok(Replica::open(dest, new_node)?)
    }
}

/// Copies the backup's bytes to `temp` and gives the copy its new identity, durably.
fn copy_and_adopt(backup: &Path, temp: &Path, new_node: NodeId) -> Result<(), BackupError> {
    let mut from = File::open(backup).map_err(|e| io(backup, e))?;
    let mut to = OpenOptions::new().write(true).truncate(true).open(temp).map_err(|e| io(temp, e))?;
    std::io::copy(&mut from, &mut to).map_err(|e| io(temp, e))?;
    to.sync_all().map_err(|e| io(temp, e))?;
    drop(to);
    let not_a_store = |reason: String| BackupError::NotAStore { path: backup.to_path_buf(), reason };
    // The file comes from outside this process: have redb verify every page instead of
    // trusting it (a plain open may panic on a corrupted file).
    let db =
        Database::builder().set_check_integrity_on_open(true).create(temp).map_err(|e| not_a_store(e.to_string()))?;
    let mut txn = db.begin_write().map_err(StorageError::from)?;
    txn.set_durability(redb::Durability::Immediate).map_err(StorageError::from)?;
    adopt_identity(&txn, new_node, not_a_store)?;
    txn.commit().map_err(StorageError::from)?;
    drop(db);
    sync_file(temp)
}

/// Rewrites the identity in `meta_v1` after checking that `new_node` is really new.
fn adopt_identity(
    txn: &redb::WriteTransaction,
    new_node: NodeId,
    not_a_store: impl Fn(String) -> BackupError,
) -> Result<(), BackupError> {
    storage::create_tables(txn)?;
    let mut meta = txn.open_table(storage::META).map_err(StorageError::from)?;
    let format = meta.get(storage::META_FORMAT).map_err(StorageError::from)?.map(|v| v.value().to_vec());
    let Some(format) = format else { return Err(not_a_store("no format version in meta_v1".into())) };
    let found = <[u8; 4]>::try_from(format.as_slice()).map(u32::from_be_bytes).unwrap_or(0);
    // A backup of the previous format is upgraded when the restored store is opened.
    let known = [FORMAT_VERSION, FORMAT_VERSION_COMPACTED, FORMAT_VERSION_UNCOMPACTED, FORMAT_VERSION_WITHOUT_DIGEST];
    if !known.contains(&found) {
        return Err(OpenError::UnsupportedFormat { found, expected: FORMAT_VERSION }.into());
    }
    let old_node = meta.get(storage::META_NODE_ID).map_err(StorageError::from)?;
    let old_node = old_node.and_then(|v| NodeId::from_slice(v.value()));
    let old_node = old_node.ok_or_else(|| not_a_store("no valid node id in meta_v1".into()))?;
    if old_node == new_node {
        return Err(BackupError::SameIdentity(new_node));
    }
    if has_changes_of(txn, new_node)? {
        return Err(BackupError::IdentityInUse(new_node));
    }
    meta.insert(storage::META_NODE_ID, new_node.as_bytes().as_slice()).map_err(StorageError::from)?;
    meta.remove(storage::META_ANNOUNCED).map_err(StorageError::from)?;
    // A restored store is a new member: it learns again what others hold (holders_v1 is
    // not in a backup) and starts its horizon from nothing.
    meta.remove(storage::META_HORIZON).map_err(StorageError::from)?;
    Ok(())
}

/// Whether `node` has an entry in the version vector, the log or the pending changes.
fn has_changes_of(txn: &redb::WriteTransaction, node: NodeId) -> Result<bool, StorageError> {
    let versions = txn.open_table(storage::VERSIONS)?;
    if versions.get(node.as_bytes().as_slice())?.is_some() {
        return Ok(true);
    }
    let (first, last) = (keys::log_key(node, 0), keys::log_key(node, u64::MAX));
    for table in [storage::LOG, storage::PENDING] {
        let table = txn.open_table(table)?;
        if table.range::<&[u8]>(first.as_slice()..=last.as_slice())?.next().is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
