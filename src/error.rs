//! Typed errors, one enum per operation family (open, write, apply, read).
//!
//! Messages are lower-case without a trailing period, and name the table, column or change
//! at fault so that a field engineer can act on them.

use std::sync::Arc;

use crate::catalog::CatalogError;
use crate::change::{ChangeError, Malformation};
pub use crate::codec::CodecError;
pub use crate::contain::Panicked;
pub use crate::doc::DocError;
use crate::keys::KeyError;
pub use crate::record::RecordError;
use crate::schema::SchemaError;
use crate::types::NodeId;

/// The storage layer failed (I/O, corruption, or a stored value that does not decode).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// redb reported an error.
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    /// A stored value does not decode or contradicts another: the file is corrupt or from
    /// an incompatible build.
    #[error("corrupt store: {0}")]
    Corrupt(Corruption),
    /// A stored value has a length its table's format does not allow.
    #[error("corrupt store: a {table} value has a bad length ({len} bytes)")]
    BadLength {
        /// The redb table.
        table: &'static str,
        /// The value's length.
        len: usize,
    },
    /// A commit shared by several write batches or jobs failed; none of them was written.
    /// Every member gets the group's one failure (redb's errors are not `Clone`).
    #[error("commit failed: {0}")]
    GroupCommitFailed(Arc<StorageError>),
    /// A write panicked (a bug): its open transaction was aborted and the in-memory state
    /// reloaded; the node goes on. A write job keeps what it had committed before (a job
    /// may commit several times within its group).
    #[error("the write stopped on an internal error: {0}")]
    WritePanicked(String),
    /// The thread that owns the replica has stopped (see `ReplicaHandle`).
    #[error("the replica's owner thread has stopped")]
    Stopped,
    /// The store cannot write now: an I/O error is being recovered from, or the disk is
    /// below its free-space floor. Nothing was written; the same request may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(StoreFault),
    /// Changes a caller asked for were removed from the log by compaction: the log holds
    /// `origin`'s changes from `floor + 1` on, and the caller lacks `needed..=floor`. Not a
    /// storage failure: a peer that far behind catches up by state transfer.
    #[error("changes of {origin} from seq {needed} were compacted out of the log (it holds seq {} on)", floor + 1)]
    BelowLogFloor {
        /// The origin whose changes are missing.
        origin: NodeId,
        /// The first seq the caller lacks.
        needed: u64,
        /// The log floor of `origin`: the highest seq compacted away.
        floor: u64,
    },
    /// The store file cannot be shrunk while something else reads it (a snapshot, another
    /// handle on the database, or a transaction): shrinking needs it alone.
    #[error("the store is in use ({0}); shrinking the file needs it alone (stop the node first)")]
    InUse(&'static str),
    /// A document is too large to be sent whole in one state-transfer batch.
    #[error("document {doc} is {bytes} bytes, too large for a state transfer batch")]
    DocTooLargeToTransfer {
        /// The document, as described for messages.
        doc: String,
        /// Its stored bytes (snapshot and tail).
        bytes: usize,
    },
}

/// What is corrupt in a store (see [`StorageError::Corrupt`]): the table, and what about
/// its key or value is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// `meta_v1` holds no valid node id.
    #[error("meta_v1 has no valid node id")]
    NodeId,
    /// A stored CBOR value does not decode.
    #[error("{table}: {source}")]
    Value {
        /// The redb table, with the `meta_v1` key where there is one.
        table: &'static str,
        /// Why it does not decode.
        source: CodecError,
    },
    /// A `rows_v1` record does not decode.
    #[error("{table}: {source}")]
    Record {
        /// The redb table.
        table: &'static str,
        /// Why it does not decode.
        source: RecordError,
    },
    /// A stored range tombstone (`append_tombstones_v1`) does not decode.
    #[error("append_tombstones_v1: {0}")]
    Tombstone(crate::append::AppendFault),
    /// A key does not decode.
    #[error("{table} key: {source}")]
    Key {
        /// The redb table.
        table: &'static str,
        /// Why it does not decode.
        source: KeyError,
    },
    /// A key has a length its table's format does not allow.
    #[error("{table} key has a bad length")]
    KeyLength {
        /// The redb table (and part).
        table: &'static str,
    },
    /// A key that holds a node id holds something else.
    #[error("bad node id in a {table} key")]
    NodeIdKey {
        /// The redb table.
        table: &'static str,
    },
    /// A value is shorter than its table's format allows.
    #[error("{table}: value too short")]
    ShortValue {
        /// The redb table.
        table: &'static str,
    },
    /// A stored document does not load.
    #[error("document {doc}: {source}")]
    Document {
        /// The document, as described for messages.
        doc: String,
        /// Why.
        source: DocError,
    },
    /// A document's heads count a tail entry that is not stored.
    #[error("document {doc}: tail entry {position} missing")]
    TailMissing {
        /// The document, as described for messages.
        doc: String,
        /// The missing entry's position.
        position: u32,
    },
    /// A document's stored heads are not the heads of its stored changes.
    #[error("document {doc}: stored heads differ from its changes")]
    HeadsDiffer {
        /// The document, as described for messages.
        doc: String,
    },
    /// An implicit document cannot be rebuilt from its row.
    #[error("implicit document {doc}: {fault}")]
    Implicit {
        /// The document, as described for messages.
        doc: String,
        /// Why.
        fault: ImplicitFault,
    },
    /// An index entry names a row `rows_v1` does not hold.
    #[error("an entry of index {index} has no row")]
    IndexEntryWithoutRow {
        /// The index.
        index: String,
    },
    /// `log_v1` lacks a change the version vector (or log floor) says it holds.
    #[error("log_v1 lacks {origin} seq {seq} below the vector")]
    LogGap {
        /// The origin.
        origin: NodeId,
        /// The first missing seq.
        seq: u64,
    },
    /// A `pending_v1` change no longer verifies.
    #[error("pending_v1: {0}")]
    Pending(ChangeError),
    /// A `digest_v1` part would count fewer than zero entries or bytes.
    #[error("digest_v1 part {key:02x?} would go negative")]
    DigestNegative {
        /// The part's key.
        key: Vec<u8>,
    },
    /// A `digest_v1` part counts no entries but its hash is not zero.
    #[error("digest_v1 part {key:02x?} is empty but not zero")]
    DigestNotZero {
        /// The part's key.
        key: Vec<u8>,
    },
    /// A `digest_v1` heads part names a bucket beyond the tree.
    #[error("digest_v1 heads bucket {bucket} is out of range")]
    DigestBucket {
        /// The bucket.
        bucket: usize,
    },
    /// `catalog_v1` holds a row document's key.
    #[error("catalog_v1 holds a row key")]
    RowKeyInCatalog,
    /// This node's own documents contradict its catalog (a local write was refused).
    #[error("{0}")]
    Inconsistent(Inconsistency),
}

/// Why an implicit document cannot be rebuilt (see [`Corruption::Implicit`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImplicitFault {
    /// Its key is not a row document's.
    #[error("not a row document")]
    NotARow,
    /// Its table is dropped or at another incarnation.
    #[error("its table is not live at the row's incarnation")]
    TableNotLive,
    /// `rows_v1` holds no record for it.
    #[error("its row is missing")]
    RowMissing,
    /// Its record does not decode.
    #[error(transparent)]
    Record(RecordError),
    /// Its record has another number of values than the table has columns.
    #[error("its record does not match the table definition")]
    RecordArity,
    /// The rebuilt change's hash is not the stored head.
    #[error("its row does not rebuild the stored change")]
    RebuildDiffers,
}

/// How a change contradicts the replica's state (see [`ApplyError::Inconsistent`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// A row document of a table (incarnation) the catalog does not hold.
    #[error("row of unknown table {table} (epoch {epoch})")]
    RowOfUnknownTable {
        /// The table.
        table: String,
        /// The row's table incarnation.
        epoch: u64,
    },
    /// An index on a table (incarnation) the catalog does not hold.
    #[error("index {index} on unknown table {table}")]
    IndexOnUnknownTable {
        /// The index.
        index: String,
        /// The table it names.
        table: String,
    },
    /// A catalog document's winning definition does not decode.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// automerge refused the change, or the document lacks its dependencies.
    #[error(transparent)]
    Doc(#[from] DocError),
}

impl From<Panicked> for Inconsistency {
    fn from(e: Panicked) -> Inconsistency {
        Inconsistency::Doc(e.into())
    }
}

impl From<Corruption> for StorageError {
    fn from(e: Corruption) -> StorageError {
        StorageError::Corrupt(e)
    }
}

/// Why the store cannot write now (see [`StorageError::Unavailable`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreFault {
    /// An I/O error failed a transaction; the store refuses writes until it is reopened.
    #[error("i/o error, the store is being reopened: {reason}")]
    Io {
        /// The error, as the operating system or redb gave it.
        reason: String,
    },
    /// The filesystem ran out of space (ENOSPC or EDQUOT) under a transaction; the store
    /// refuses writes until it is reopened, which waits for free space.
    #[error("disk full, the store is being reopened: {reason}")]
    DiskFull {
        /// The error, as the operating system gave it.
        reason: String,
    },
    /// Free space is below the configured floor: new local writes are refused so that
    /// replicated changes keep the headroom.
    #[error("low disk: {free_bytes} bytes free, below the floor of {floor_bytes} bytes")]
    LowDisk {
        /// Free bytes the caller last measured.
        free_bytes: u64,
        /// The floor.
        floor_bytes: u64,
    },
}

impl StoreFault {
    /// Whether the cause is a lack of disk space (HTTP 507), rather than another I/O error.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StoreFault::DiskFull { .. } | StoreFault::LowDisk { .. })
    }

    /// The fault an error of a write or read transaction puts the store in, if any: every
    /// I/O error does (redb latches it, and only a reopen clears it); a corrupt value, a
    /// value too large or a logical error does not.
    pub fn of(error: &StorageError) -> Option<StoreFault> {
        let StorageError::Redb(error) = error else { return None };
        match error {
            redb::Error::Io(io) => {
                let reason = io.to_string();
                // ENOSPC and EDQUOT on Linux (28, 122); `StorageFull` where std maps them.
                let full = io.kind() == std::io::ErrorKind::StorageFull || matches!(io.raw_os_error(), Some(28 | 122));
                Some(if full { StoreFault::DiskFull { reason } } else { StoreFault::Io { reason } })
            }
            redb::Error::PreviousIo | redb::Error::DatabaseClosed => Some(StoreFault::Io { reason: error.to_string() }),
            _ => None,
        }
    }
}

macro_rules! redb_into_storage {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> StorageError {
                StorageError::Redb(e.into())
            }
        }
    )*};
}
redb_into_storage!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Opening a replica failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store could not be read or created.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The file belongs to another node.
    #[error("store belongs to node {stored}, not {requested}")]
    NodeIdMismatch {
        /// Node id recorded in the file.
        stored: NodeId,
        /// Node id the caller asked for.
        requested: NodeId,
    },
    /// The file's format version is not one this build reads.
    #[error("store format version {found} is not supported (expected {expected})")]
    UnsupportedFormat {
        /// Version in the file.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The memory budget is below what a replica needs to work.
    #[error("cache budget of {bytes} bytes is below the minimum of {min_bytes} bytes")]
    CacheTooSmall {
        /// The budget asked for.
        bytes: usize,
        /// The smallest budget accepted.
        min_bytes: usize,
    },
}

/// Why an `ALTER TABLE` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AlterRefusal {
    /// `ADD COLUMN` of a name the table has.
    #[error("the table has a column of that name")]
    ColumnExists,
    /// `ADD COLUMN ... COUNTER`: rows written before would need their counter created on
    /// first increment, and two nodes creating it at once would lose one's increments.
    #[error("a COUNTER column can only be declared in CREATE TABLE")]
    CounterAdded,
    /// `ADD COLUMN ... NOT NULL` without a non-NULL default.
    #[error("cannot add a NOT NULL column with default value NULL")]
    NotNullWithoutDefault,
    /// A column a `CHECK` or foreign key names: their SQL is not rewritten.
    #[error("a CHECK constraint or foreign key names the column")]
    UsedByConstraint,
    /// The hidden identity of a table without a primary key.
    #[error("the column is the hidden identity of a table without a primary key")]
    HiddenColumn,
    /// `DROP COLUMN` of a primary-key column.
    #[error("cannot drop a PRIMARY KEY column")]
    KeyColumn,
    /// `DROP COLUMN` of a column an index covers (drop the index first, as in SQLite).
    #[error("an index covers the column; drop the index first")]
    Indexed,
    /// `DROP COLUMN` of the table's last column.
    #[error("no other columns exist")]
    LastColumn,
    /// The table has the most columns it can.
    #[error("the table has the most columns a table can have")]
    TooManyColumns,
    /// `RENAME` or `DROP COLUMN` of an append-only table's time column: its blocks are
    /// split and ranged by it, and its options name it.
    #[error("the column is the append-only table's time_column")]
    TimeColumn,
}

/// A write batch was refused; nothing of it was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// An `ALTER TABLE` that cannot be applied.
    #[error("cannot alter {table}.{column}: {reason}")]
    AlterRefused {
        /// The table.
        table: String,
        /// The column added or renamed.
        column: String,
        /// Why.
        reason: AlterRefusal,
    },
    /// The batch holds no operation.
    #[error("empty write batch")]
    EmptyBatch,
    /// No such table.
    #[error("no such table: {0}")]
    UnknownTable(String),
    /// No such column.
    #[error("no such column: {table}.{column}")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// No such index.
    #[error("no such index: {0}")]
    UnknownIndex(String),
    /// A table of that name exists.
    #[error("table {0} already exists")]
    TableExists(String),
    /// An index of that name exists.
    #[error("index {0} already exists")]
    IndexExists(String),
    /// A view of that name exists (tables and views share names).
    #[error("view {0} already exists")]
    ViewExists(String),
    /// No such view.
    #[error("no such view: {0}")]
    UnknownView(String),
    /// The definition is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A value does not fit its column.
    #[error("type mismatch: {table}.{column} is {expected}, got {got}")]
    TypeMismatch {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The column type.
        expected: crate::ColumnType,
        /// The kind of value given.
        got: &'static str,
    },
    /// NULL for a NOT NULL column.
    #[error("NOT NULL constraint failed: {table}.{column}")]
    NotNull {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An insert hit an existing row.
    #[error("duplicate primary key in {table}: {key}")]
    DuplicateKey {
        /// The table.
        table: String,
        /// The key, displayed.
        key: String,
    },
    /// A write would give two rows one value under a unique index (docs/design.md
    /// § Unique indexes). SQLite's words first, so that messages match.
    #[error("UNIQUE constraint failed: {columns}: {value} is held by the row {holder} (index {index})")]
    UniqueViolation {
        /// The table.
        table: String,
        /// The unique index.
        index: String,
        /// Its columns as SQLite names them: `t.a, t.b`.
        columns: String,
        /// The value tuple, displayed.
        value: String,
        /// The primary key of the row that holds it (another row of the batch, or a stored one).
        holder: String,
    },
    /// A write gave a value for a hidden identity column of a table without a primary key.
    #[error("{table}.{column} is assigned by the store in a table without a primary key; leave it out")]
    IdentityAssigned {
        /// The table.
        table: String,
        /// The column (`rowid` or `_origin`).
        column: String,
    },
    /// This node has used every insert counter value of key-less tables (2^39).
    #[error("this node has assigned all 2^39 row identities of tables without a primary key")]
    RowNumbersExhausted,
    /// An update or increment named a row that does not exist.
    #[error("no row in {table} with primary key {key}")]
    RowNotFound {
        /// The table.
        table: String,
        /// The key, displayed.
        key: String,
    },
    /// The primary key has the wrong number of values.
    #[error("primary key of {table} has {expected} columns, got {got} values")]
    KeyArity {
        /// The table.
        table: String,
        /// Columns in the key.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// An operation an append-only table does not take: its rows are never updated or
    /// deleted one by one (docs/design.md § Append-only tables and retention).
    #[error("table {table} is append-only: {what}")]
    AppendOnly {
        /// The table.
        table: String,
        /// What it refuses.
        what: &'static str,
    },
    /// A range delete of a table that is not append-only.
    #[error("table {0} is not append-only: delete its rows by key or with DELETE ... WHERE")]
    NotAppendOnly(String),
    /// A range delete whose range holds no time.
    #[error("the range deleted from {table} is empty")]
    EmptyRange {
        /// The table.
        table: String,
    },
    /// An update tried to change a primary-key column.
    #[error("cannot update primary-key column {table}.{column}; delete and insert instead")]
    PrimaryKeyUpdate {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An increment named a column that is not a COUNTER.
    #[error("{table}.{column} is not a COUNTER column")]
    NotACounter {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A counter increment would leave the i64 range, or a row's causal length (its
    /// liveness counter) is exhausted.
    #[error("overflow in {table}.{column}: {what}")]
    Overflow {
        /// The table.
        table: String,
        /// The column, or `_cl` for the causal length.
        column: String,
        /// What overflowed.
        what: &'static str,
    },
    /// The batch would change more rows and catalog entries than one replicated change may
    /// carry ([`crate::change::CHANGE_DOCS_MAX`]): peers would refuse it.
    #[error(
        "write batch changes {docs} rows, more than the {} one replicated change may carry; split it",
        crate::change::CHANGE_DOCS_MAX
    )]
    TooManyRows {
        /// Documents (rows and catalog entries) the batch changes.
        docs: usize,
    },
    /// The batch's change would be larger than a peer accepts
    /// ([`crate::change::CHANGE_BYTES_MAX`]).
    #[error(
        "write batch makes a {bytes}-byte change, more than the {} bytes a replicated change may have; split it",
        crate::change::CHANGE_BYTES_MAX
    )]
    ChangeTooLarge {
        /// The encoded change's bytes.
        bytes: usize,
    },
    /// Storage failed; the whole commit group was rolled back.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A batch of remote changes was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A change failed decoding or verification.
    #[error("change {index} of the batch: {source}")]
    Invalid {
        /// Position in the batch.
        index: usize,
        /// Why.
        source: ChangeError,
    },
    /// Two different changes claim the same `(origin, seq)`.
    #[error("conflicting change for {origin} seq {seq}: a different change is already held")]
    Equivocation {
        /// Origin.
        origin: NodeId,
        /// Sequence number.
        seq: u64,
    },
    /// A peer sent a change in this node's name that this node never made.
    #[error("change {seq} claims to come from this node, which never made it")]
    ForgedLocalOrigin {
        /// Sequence number.
        seq: u64,
    },
    /// A change contradicts the replica's state: an unknown table or index, a row of a
    /// table incarnation that does not exist, or automerge rejected it.
    #[error("inconsistent change {origin} seq {seq}: {reason}")]
    Inconsistent {
        /// Origin.
        origin: NodeId,
        /// Sequence number.
        seq: u64,
        /// What is wrong.
        reason: Inconsistency,
    },
    /// Documents sent whole (a repair or a state transfer) contradict the replica's state;
    /// no change envelope is to blame.
    #[error("inconsistent document from {node}: {reason}")]
    InconsistentDocument {
        /// The donor of a state transfer, or the author of a repaired document's first
        /// change (a repair does not name its sender).
        node: NodeId,
        /// What is wrong.
        reason: Inconsistency,
    },
    /// A repair or transfer batch is malformed as a whole (no one change is to blame).
    #[error("malformed batch: {0}")]
    MalformedBatch(Malformation),
    /// The changes that wait for dependencies would exceed [`crate::PENDING_CHANGES_MAX`].
    #[error("too many changes waiting for dependencies (limit {0})")]
    PendingFull(usize),
    /// Storage failed; nothing was applied.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No such table.
    #[error("no such table: {0}")]
    UnknownTable(String),
    /// No such index.
    #[error("no such index: {0}")]
    UnknownIndex(String),
    /// No change ever touched this row (asked for its history).
    #[error("no row {key} in {table}, now or ever")]
    UnknownRow {
        /// The table.
        table: String,
        /// The primary key, displayed.
        key: String,
    },
    /// The key has the wrong number of values or types.
    #[error("bad key for {table}: {reason}")]
    BadKey {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

macro_rules! storage_into {
    ($($t:ty),*) => {$(
        impl From<redb::StorageError> for $t {
            fn from(e: redb::StorageError) -> $t {
                <$t>::Storage(e.into())
            }
        }
        impl From<redb::TableError> for $t {
            fn from(e: redb::TableError) -> $t {
                <$t>::Storage(e.into())
            }
        }
    )*};
}
storage_into!(WriteError, ApplyError, ReadError);
