//! edgestore: a multi-master, CRDT-replicated store for edge gateways.
//!
//! This crate is the store itself, without any network or clock: the catalog, rows as
//! automerge documents, durable redb storage, the change log and version vectors, and the
//! state digest. Time and node identity are parameters. See `ARCHITECTURE.md` for the map
//! and `docs/design.md` for every on-disk and wire format.
//!
//! ```no_run
//! use edgestore::{ColumnDef, ColumnType, NodeId, Replica, TableSchema, Value, WriteBatch};
//!
//! let node = NodeId::from_public_key(b"example");
//! let mut replica = Replica::open("store.redb", node)?;
//! let sensors = TableSchema::new("sensors")
//!     .column(ColumnDef::new("id", ColumnType::Integer))
//!     .column(ColumnDef::new("name", ColumnType::Text))
//!     .primary_key(&["id"]);
//! replica.write(WriteBatch::new().create_table(sensors), 0)?;
//! replica.write(WriteBatch::new().insert("sensors", [("id", Value::from(1)), ("name", "pump".into())]), 0)?;
//! let row = replica.snapshot()?.get("sensors", &[Value::from(1)])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod append;
pub mod catalog;
pub mod change;
mod codec;
mod contain;
mod doc;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handle;
pub mod keys;
mod record;
pub mod replica;
pub mod schema;
pub mod sql;
mod storage;
pub mod types;
pub mod version_vector;

pub use catalog::{Catalog, DdlConflict, IndexEntry, TableEntry};
pub use change::{ChangeError, DocKey, VerifiedChange};
pub use error::{AlterRefusal, ApplyError, OpenError, ReadError, StorageError, WriteError};
pub use handle::ReplicaHandle;
pub use replica::{AppendTableStatus, CompactReport, ExpireReport, SaveReport, SAVE_TAIL_CHANGES_MIN};
pub use replica::{
    ApplyReport, BackupError, BackupReport, ChangeBatch, ColumnConflict, HistoryEntry, IntegrityProblem, Replica, Row,
    RowConflicts, RowEffect, RowIter, Snapshot, StateDigest, UniqueConflict, WriteBatch, WriteOp, WriteReceipt,
    PENDING_CHANGES_MAX,
};
pub use replica::{CacheFigures, OpenOptions, RedbTableStats, StorageStats, UserTableStats};
pub use replica::{DeadLetter, DEAD_LETTERS_MAX, DEAD_LETTER_ERROR_BYTES_MAX, DEAD_LETTER_PAYLOAD_BYTES_MAX};
pub use replica::{DocHeads, HeadsTree, RepairReport, HEADS_TREE_DEPTH, REPAIR_DOCS_MAX};
pub use replica::{HeldClaim, HeldPage, HoldersCounters, Horizon, MemberHold};
pub use replica::{TransferBatch, TransferDoc, TransferProgress, TransferReport, TRANSFER_DOCS_MAX};
pub use schema::{ColumnDef, IndexSchema, SchemaError, TableSchema};
pub use types::{ColumnType, NodeId, Value};
pub use version_vector::VersionVector;
