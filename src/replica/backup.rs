//! Consistent backups: a copy of every table from one redb read transaction.
//!
//! A backup is an ordinary store file, so it opens, checks and restores with the same code
//! as a live store. It is taken from a [`Snapshot`] (a redb read transaction), so the node
//! keeps writing meanwhile: redb readers never block the writer. The copy is written under
//! a temporary name in the destination's directory, made durable, checked
//! (`check_integrity`), and only then linked under the final name, so a crash never leaves
//! a partial backup where a complete one is expected. The final name is never overwritten.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{IntegrityProblem, Replica, Snapshot};
use crate::error::{Corruption, OpenError, StorageError};
use crate::storage;
use crate::types::NodeId;
use crate::version_vector::VersionVector;

/// Entries copied per write transaction of the copy; bounds the copy's memory.
pub const BACKUP_TXN_ENTRIES_MAX: u64 = 50_000;

/// Every table `write_copy` copies, by name.
const COPIED_TABLES: [&str; 15] = [
    "meta_v1",
    "catalog_v1",
    "docs_v1",
    "doc_tail_v1",
    "doc_heads_v1",
    "rows_v1",
    "index_v1",
    "conflicts_v1",
    "log_v1",
    "versions_v1",
    "pending_v1",
    "digest_v1",
    "append_blocks_v1",
    "append_tombstones_v1",
    "append_keys_v1",
];

/// Tables a backup leaves out on purpose: a restored store is a new member (a new node
/// id) and learns again what the others hold; `holders_v1` of the old node says nothing
/// about what it will hear; `dead_letters_v1` is what the old node's ingest refused.
const NOT_COPIED_TABLES: [&str; 2] = ["holders_v1", "dead_letters_v1"];

/// Why a backup or a restore failed. Nothing is left under the destination name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The destination exists; backups and restores never overwrite a file.
    #[error("{0} already exists")]
    DestinationExists(PathBuf),
    /// The temporary file of the destination exists: an interrupted or concurrent backup.
    #[error("temporary file {0} exists (an interrupted or concurrent backup or restore); remove it and retry")]
    TemporaryExists(PathBuf),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file to restore is not a store this build reads.
    #[error("{path} is not a valid store: {reason}")]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The copy failed `check_integrity`; the problems are listed.
    #[error("the copy failed its integrity check: {}", first_problem(.0))]
    Integrity(Vec<IntegrityProblem>),
    /// A restore was asked to keep the backup's own node id.
    #[error("a restored store needs a new node id; {0} is the backup's own")]
    SameIdentity(NodeId),
    /// The new node id already has changes in the backup: it was used before.
    #[error("node {0} already has changes in the backup; a node id is never reused")]
    IdentityInUse(NodeId),
    /// The store has a table this build does not know how to copy.
    #[error("table {0} is not known to the backup; refusing an incomplete copy")]
    UnknownTable(String),
    /// The copy could not be opened as a replica.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn first_problem(problems: &[IntegrityProblem]) -> String {
    let first = problems.first().map(ToString::to_string).unwrap_or_default();
    format!("{first} ({} problems)", problems.len())
}

impl From<redb::Error> for BackupError {
    fn from(e: redb::Error) -> BackupError {
        BackupError::Storage(e.into())
    }
}

/// What a backup copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The final file.
    pub path: PathBuf,
    /// Size of the file, in bytes.
    pub bytes: u64,
    /// The node whose store was copied.
    pub node_id: NodeId,
    /// Materialized rows copied (`rows_v1` entries).
    pub rows: u64,
    /// Logged changes copied (`log_v1` entries).
    pub changes: u64,
    /// Changes waiting for dependencies copied (`pending_v1` entries).
    pub pending_changes: u64,
    /// Documents copied (`doc_heads_v1` entries).
    pub documents: u64,
    /// Entries copied across all tables.
    pub entries: u64,
    /// The version vector of the copy: exactly the changes it holds.
    pub version_vector: VersionVector,
}

impl Snapshot {
    /// Writes a complete copy of this snapshot's state to a new store file at `dest`.
    ///
    /// Refuses an existing `dest`. Writes `dest` + `.partial` first (refused if present),
    /// commits durably, opens the copy and runs `check_integrity` on it, then links it
    /// under `dest` and syncs the directory. The live node keeps writing meanwhile.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupReport, BackupError> {
        let node_id = self.node_id()?;
        let temp = claim_temporary(dest)?;
        let outcome = self.write_copy(&temp).and_then(|report| {
            verify_copy(&temp, node_id)?;
            place(&temp, dest)?;
            Ok(report)
        });
        // On success the temporary name is already gone; on failure it is ours to remove.
        let _ = std::fs::remove_file(&temp);
        let mut report = outcome?;
        report.node_id = node_id;
        report.path = dest.to_path_buf();
        report.bytes = std::fs::metadata(dest).map_err(|source| io(dest, source))?.len();
        Ok(report)
    }

    fn node_id(&self) -> Result<NodeId, StorageError> {
        let meta = self.txn().open_table(storage::META)?;
        let stored = meta.get(storage::META_NODE_ID)?;
        stored.and_then(|v| NodeId::from_slice(v.value())).ok_or_else(|| StorageError::Corrupt(Corruption::NodeId))
    }

    /// Refuses a store with a table not copied below, so that a table added later cannot
    /// be silently left out of backups.
    fn check_tables_known(&self) -> Result<(), BackupError> {
        for table in self.txn().list_tables().map_err(StorageError::from)? {
            let name = redb::TableHandle::name(&table);
            if !COPIED_TABLES.contains(&name) && !NOT_COPIED_TABLES.contains(&name) {
                return Err(BackupError::UnknownTable(name.to_string()));
            }
        }
        Ok(())
    }

    /// Copies every table into a new database at `temp`; the last commit is durable.
    fn write_copy(&self, temp: &Path) -> Result<BackupReport, BackupError> {
        self.check_tables_known()?;
        let db = Database::create(temp).map_err(StorageError::from)?;
        let txn = self.txn();
        let mut report = BackupReport {
            path: temp.to_path_buf(),
            bytes: 0,
            node_id: NodeId([0; 16]),
            rows: copy_table(txn, &db, storage::ROWS)?,
            changes: copy_table(txn, &db, storage::LOG)?,
            pending_changes: copy_table(txn, &db, storage::PENDING)?,
            documents: copy_table(txn, &db, storage::DOC_HEADS)?,
            entries: 0,
            version_vector: Snapshot::version_vector_of(txn)?,
        };
        report.entries = report.rows + report.changes + report.pending_changes + report.documents;
        for table in [
            storage::CATALOG,
            storage::DOCS,
            storage::DOC_TAIL,
            storage::CONFLICTS,
            storage::DIGEST,
            storage::APPEND_BLOCKS,
            storage::APPEND_TOMBSTONES,
            storage::APPEND_KEYS,
        ] {
            report.entries += copy_table(txn, &db, table)?;
        }
        report.entries += copy_table(txn, &db, storage::INDEXES)?;
        report.entries += copy_table(txn, &db, storage::VERSIONS)?;
        // The meta table last, in the one durable commit: it is small, and a copy without
        // it does not open as a store.
        let mut last = db.begin_write().map_err(StorageError::from)?;
        last.set_durability(redb::Durability::Immediate).map_err(StorageError::from)?;
        storage::create_tables(&last)?;
        {
            let from = txn.open_table(storage::META).map_err(StorageError::from)?;
            let mut to = last.open_table(storage::META).map_err(StorageError::from)?;
            for item in from.iter().map_err(StorageError::from)? {
                let (key, value) = item.map_err(StorageError::from)?;
                to.insert(key.value(), value.value()).map_err(StorageError::from)?;
                report.entries += 1;
            }
        }
        last.commit().map_err(StorageError::from)?;
        drop(db);
        sync_file(temp)?;
        Ok(report)
    }
}

/// Copies one table keyed by bytes, [`BACKUP_TXN_ENTRIES_MAX`] entries per commit. The
/// intermediate commits are not durable; the final durable commit makes them so, and the
/// file is not under its final name before that.
fn copy_table<V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &Database,
    table: TableDefinition<&'static [u8], V>,
) -> Result<u64, StorageError> {
    let source = from.open_table(table)?;
    let total = source.len()?;
    let mut copied = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let mut txn = to.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let mut chunk = 0u64;
        {
            let mut target = txn.open_table(table)?;
            let lower = match &after {
                Some(key) => Bound::Excluded(key.as_slice()),
                None => Bound::Unbounded,
            };
            for item in source.range::<&[u8]>((lower, Bound::Unbounded))? {
                let (key, value) = item?;
                target.insert(key.value(), value.value())?;
                chunk += 1;
                if chunk == BACKUP_TXN_ENTRIES_MAX {
                    after = Some(key.value().to_vec());
                    break;
                }
            }
        }
        txn.commit()?;
        copied += chunk;
        if chunk < BACKUP_TXN_ENTRIES_MAX {
            break;
        }
    }
    assert_eq!(copied, total, "a read transaction's table does not change while it is copied");
    Ok(copied)
}

/// Opens the copy as a replica of `node` and runs the integrity check on it.
pub(super) fn verify_copy(path: &Path, node: NodeId) -> Result<(), BackupError> {
    let replica = Replica::open(path, node)?;
    let problems = replica.check_integrity()?;
    if !problems.is_empty() {
        return Err(BackupError::Integrity(problems));
    }
    Ok(())
}

/// The temporary name of `dest`: `dest` + `.partial`, in the same directory (so the final
/// link is within one file system). Created empty here; refused if it exists.
pub(super) fn claim_temporary(dest: &Path) -> Result<PathBuf, BackupError> {
    if dest.exists() {
        return Err(BackupError::DestinationExists(dest.to_path_buf()));
    }
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    if name.is_empty() {
        return Err(io(dest, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")));
    }
    name.push(".partial");
    let temp = dest.with_file_name(name);
    match OpenOptions::new().write(true).create_new(true).open(&temp) {
        Ok(_) => Ok(temp),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(BackupError::TemporaryExists(temp)),
        Err(e) => Err(io(&temp, e)),
    }
}

/// Moves a complete, durable file to its final name without ever replacing a file there:
/// a hard link fails if the name exists (a rename would replace it), then the temporary
/// name is removed and the directory synced so the new name survives a crash.
pub(super) fn place(temp: &Path, dest: &Path) -> Result<(), BackupError> {
    match std::fs::hard_link(temp, dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BackupError::DestinationExists(dest.to_path_buf()))
        }
        Err(e) => return Err(io(dest, e)),
    }
    std::fs::remove_file(temp).map_err(|e| io(temp, e))?;
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    sync_file(dir)
}

/// fsync of a file or directory.
pub(super) fn sync_file(path: &Path) -> Result<(), BackupError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| io(path, e))
}

pub(super) fn io(path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io { path: path.to_path_buf(), source }
}
