//! The local write path: a batch of operations becomes one change envelope, applied in
//! one redb transaction, acknowledged after a durable commit.
//!
//! Each operation is first staged on in-memory documents (uncommitted automerge ops) and
//! checked against the catalog; the first error drops every staged document, so a refused
//! batch leaves nothing behind. Only a fully staged batch is committed into automerge and
//! written. Several batches can share one redb commit ([`Replica::write_group`]).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use automerge::transaction::CommitOptions;

use super::append_keys::{self, DedupKey};
use super::materialize::{Cause, ChangedDoc};
use super::unique;
use super::{take_or_create_cached_doc, DocCache, Replica, WorkingDoc, WriteTables};
use crate::append::{AppendBatch, RangeTombstone, APPEND_ROWS_MAX};
use crate::catalog::{self, IndexDef, IndexEntry, TableEntry};
use crate::change::{DocChange, DocKey, VerifiedChange, CHANGE_BYTES_MAX, CHANGE_DOCS_MAX};
use crate::doc;
use crate::error::{StorageError, WriteError};
use crate::keys;
use crate::schema::{ColumnDef, IndexSchema, TableSchema, ORIGIN_COLUMN, ROWID_COLUMN, ROWID_HIDDEN_COLUMNS};
use crate::types::{ColumnType, NodeId, Value};

/// One operation of a write batch.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WriteOp {
    /// `CREATE TABLE [IF NOT EXISTS]`.
    CreateTable {
        /// The definition.
        schema: TableSchema,
        /// Succeed without change if the table exists.
        if_not_exists: bool,
    },
    /// `DROP TABLE [IF EXISTS]`; also drops the table's indexes.
    DropTable {
        /// The table.
        name: String,
        /// Succeed without change if the table does not exist.
        if_exists: bool,
    },
    /// `CREATE INDEX [IF NOT EXISTS]`.
    CreateIndex {
        /// The definition.
        schema: IndexSchema,
        /// Succeed without change if the index exists.
        if_not_exists: bool,
    },
    /// `ALTER TABLE ... ADD COLUMN`: a column at the end of the table; rows written before
    /// read as its default.
    AddColumn {
        /// The table.
        table: String,
        /// The column (its name, type, `NOT NULL` and default).
        column: ColumnDef,
    },
    /// `ALTER TABLE ... RENAME COLUMN`.
    RenameColumn {
        /// The table.
        table: String,
        /// The column's name.
        from: String,
        /// Its new name.
        to: String,
    },
    /// `ALTER TABLE ... DROP COLUMN`: the column is no longer seen; its values are kept.
    DropColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// `CREATE VIEW [IF NOT EXISTS]` (docs/design.md § Views): the caller has checked that
    /// the query binds.
    CreateView {
        /// The definition.
        def: catalog::ViewDef,
        /// Succeed without change if a view of that name exists.
        if_not_exists: bool,
    },
    /// `DROP VIEW [IF EXISTS]`.
    DropView {
        /// The view.
        name: String,
        /// Succeed without change if the view does not exist.
        if_exists: bool,
    },
    /// `DROP INDEX [IF EXISTS]`.
    DropIndex {
        /// The index.
        name: String,
        /// Succeed without change if the index does not exist.
        if_exists: bool,
    },
    /// Insert a row; an existing row with the same primary key is an error.
    Insert {
        /// The table.
        table: String,
        /// Column values; unnamed columns take their default or NULL.
        values: Vec<(String, Value)>,
    },
    /// Insert a row, or update the named columns of the existing row.
    Upsert {
        /// The table.
        table: String,
        /// Column values, primary key included.
        values: Vec<(String, Value)>,
    },
    /// Update some columns of an existing row.
    Update {
        /// The table.
        table: String,
        /// The primary key.
        key: Vec<Value>,
        /// Columns to set.
        set: Vec<(String, Value)>,
    },
    /// Delete a row if it exists.
    Delete {
        /// The table.
        table: String,
        /// The primary key.
        key: Vec<Value>,
    },
    /// Delete the rows of an append-only table whose time lies in `[lo, hi)` (both
    /// `None`: every row, with a time or without), among those this node holds: a range
    /// tombstone, which never removes a row written concurrently elsewhere.
    DeleteRange {
        /// The table.
        table: String,
        /// The lowest time deleted; `None`: unbounded.
        lo: Option<i64>,
        /// The time just above the range; `None`: unbounded. Above `lo`.
        hi: Option<i64>,
    },
    /// Add `by` to a COUNTER column of an existing row.
    Increment {
        /// The table.
        table: String,
        /// The primary key.
        key: Vec<Value>,
        /// The COUNTER column.
        column: String,
        /// Amount to add (may be negative).
        by: i64,
    },
}

/// Operations applied atomically: all or nothing, one change envelope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// The operations, in order.
    pub ops: Vec<WriteOp>,
}

fn named(values: impl IntoIterator<Item = (impl Into<String>, Value)>) -> Vec<(String, Value)> {
    values.into_iter().map(|(name, value)| (name.into(), value)).collect()
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds `CREATE TABLE`.
    pub fn create_table(mut self, schema: TableSchema) -> WriteBatch {
        self.ops.push(WriteOp::CreateTable { schema, if_not_exists: false });
        self
    }

    /// Adds `DROP TABLE`.
    pub fn drop_table(mut self, name: &str) -> WriteBatch {
        self.ops.push(WriteOp::DropTable { name: name.into(), if_exists: false });
        self
    }

    /// Adds `CREATE INDEX`.
    pub fn create_index(mut self, schema: IndexSchema) -> WriteBatch {
        self.ops.push(WriteOp::CreateIndex { schema, if_not_exists: false });
        self
    }

    /// Adds `ALTER TABLE ... ADD COLUMN`.
    pub fn add_column(mut self, table: &str, column: ColumnDef) -> WriteBatch {
        self.ops.push(WriteOp::AddColumn { table: table.into(), column });
        self
    }

    /// Adds `ALTER TABLE ... RENAME COLUMN`.
    pub fn rename_column(mut self, table: &str, from: &str, to: &str) -> WriteBatch {
        self.ops.push(WriteOp::RenameColumn { table: table.into(), from: from.into(), to: to.into() });
        self
    }

    /// Adds `ALTER TABLE ... DROP COLUMN`.
    pub fn drop_column(mut self, table: &str, column: &str) -> WriteBatch {
        self.ops.push(WriteOp::DropColumn { table: table.into(), column: column.into() });
        self
    }

    /// Adds `DROP INDEX`.
    pub fn drop_index(mut self, name: &str) -> WriteBatch {
        self.ops.push(WriteOp::DropIndex { name: name.into(), if_exists: false });
        self
    }

    /// Adds an insert.
    pub fn insert(mut self, table: &str, values: impl IntoIterator<Item = (impl Into<String>, Value)>) -> WriteBatch {
        self.ops.push(WriteOp::Insert { table: table.into(), values: named(values) });
        self
    }

    /// Adds an upsert.
    pub fn upsert(mut self, table: &str, values: impl IntoIterator<Item = (impl Into<String>, Value)>) -> WriteBatch {
        self.ops.push(WriteOp::Upsert { table: table.into(), values: named(values) });
        self
    }

    /// Adds an update of some columns.
    pub fn update(
        mut self,
        table: &str,
        key: Vec<Value>,
        set: impl IntoIterator<Item = (impl Into<String>, Value)>,
    ) -> WriteBatch {
        self.ops.push(WriteOp::Update { table: table.into(), key, set: named(set) });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, table: &str, key: Vec<Value>) -> WriteBatch {
        self.ops.push(WriteOp::Delete { table: table.into(), key });
        self
    }

    /// Adds a range delete of an append-only table's rows with a time in `[lo, hi)`.
    pub fn delete_range(mut self, table: &str, lo: Option<i64>, hi: Option<i64>) -> WriteBatch {
        self.ops.push(WriteOp::DeleteRange { table: table.into(), lo, hi });
        self
    }

    /// Adds a counter increment.
    pub fn increment(mut self, table: &str, key: Vec<Value>, column: &str, by: i64) -> WriteBatch {
        self.ops.push(WriteOp::Increment { table: table.into(), key, column: column.into(), by });
        self
    }
}

/// What an acknowledged batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Sequence number of the change this batch became; `None` if it changed nothing
    /// (for instance a delete of a row that does not exist).
    pub seq: Option<u64>,
    /// Rows inserted, updated, deleted or incremented.
    pub rows_affected: u64,
}

/// A document staged by the current batch.
struct Staged {
    key: DocKey,
    working: WorkingDoc,
    /// The row a fresh insert staged, while nothing else touched the document
    /// (`ChangedDoc::inserted`).
    inserted: Option<super::Row>,
}

/// A range delete staged by the current batch: the time column's id (`None` for every
/// row) and the bounds.
struct StagedDelete {
    column: Option<String>,
    lo: Option<i64>,
    hi: Option<i64>,
}

/// State of one batch being staged: its view of the catalog (DDL earlier in the batch is
/// visible to later operations) and the documents it touched.
struct BatchCtx {
    /// The catalog as changed by DDL earlier in the batch; `None` until the batch has DDL,
    /// so that DML-only batches read the replica's catalog without copying it.
    catalog: Option<catalog::Catalog>,
    docs: BTreeMap<Vec<u8>, Staged>,
    /// Rows for append-only tables, one batch per table incarnation.
    appends: BTreeMap<(String, u64), AppendBatch>,
    /// Range deletes on append-only tables, one per table incarnation.
    deletes: BTreeMap<(String, u64), StagedDelete>,
    /// The deduplication keys the batch's appends hold (`append_keys::key_prefix`).
    append_keys: HashSet<Vec<u8>>,
    rows_affected: u64,
}

impl BatchCtx {
    /// The catalog this batch sees.
    fn catalog<'a>(&'a self, replica: &'a catalog::Catalog) -> &'a catalog::Catalog {
        self.catalog.as_ref().unwrap_or(replica)
    }

    /// The batch's own catalog, copied from the replica's on the first DDL operation.
    fn catalog_mut(&mut self, replica: &catalog::Catalog) -> &mut catalog::Catalog {
        self.catalog.get_or_insert_with(|| replica.clone())
    }
}

impl Replica {
    /// Applies one batch and commits it durably.
    pub fn write(&mut self, batch: WriteBatch, now_ms: i64) -> Result<WriteReceipt, WriteError> {
        self.write_group(vec![batch], now_ms).pop().expect("one result per batch")
    }

    /// Applies several independent batches in one durable commit (group commit). Each batch
    /// succeeds or fails on its own; a storage failure fails them all. While the store is
    /// faulted or below its free-space floor, every batch is refused with
    /// [`StorageError::Unavailable`] before anything is staged.
    pub fn write_group(&mut self, batches: Vec<WriteBatch>, now_ms: i64) -> Vec<Result<WriteReceipt, WriteError>> {
        let count = batches.len();
        let outcome = match self.local_write_refusal() {
            Some(refusal) => Err(refusal),
            None => {
                let mut results = Vec::with_capacity(count);
                let outcome = self.write_group_txn(batches, now_ms, &mut results);
                self.finish(outcome).map(|()| results)
            }
        };
        match outcome {
            Ok(results) => results,
            Err(StorageError::Unavailable(fault)) => {
                (0..count).map(|_| Err(WriteError::Storage(StorageError::Unavailable(fault.clone())))).collect()
            }
            Err(e) => {
                let cause = std::sync::Arc::new(e);
                let failed =
                    || Err(WriteError::Storage(StorageError::GroupCommitFailed(std::sync::Arc::clone(&cause))));
                (0..count).map(|_| failed()).collect()
            }
        }
    }

    fn write_group_txn(
        &mut self,
        batches: Vec<WriteBatch>,
        now_ms: i64,
        results: &mut Vec<Result<WriteReceipt, WriteError>>,
    ) -> Result<(), StorageError> {
        let txn = self.begin_durable_write()?;
        {
            let mut tables = WriteTables::open(&txn)?;
            for batch in batches {
                let result = self.write_batch(&mut tables, batch, now_ms);
                if let Err(WriteError::Storage(e)) = result {
                    return Err(e);
                }
                results.push(result);
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn write_batch(
        &mut self,
        tables: &mut WriteTables<'_>,
        batch: WriteBatch,
        now_ms: i64,
    ) -> Result<WriteReceipt, WriteError> {
        if batch.ops.is_empty() {
            return Err(WriteError::EmptyBatch);
        }
        let mut ctx = BatchCtx {
            catalog: None,
            docs: BTreeMap::new(),
            appends: BTreeMap::new(),
            deletes: BTreeMap::new(),
            append_keys: HashSet::new(),
            rows_affected: 0,
        };
        let row_n_before = self.next_row_n;
        for op in batch.ops {
            // On error `ctx` drops with the staged documents: nothing of the batch remains.
            // Counter values it took stay taken (a gap; a reload after a failed commit
            // reads the stored counter back).
            self.stage_op(tables, &mut ctx, op)?;
        }
        self.check_unique(tables, &ctx)?;
        if self.next_row_n != row_n_before {
            debug_assert!(self.next_row_n > row_n_before, "the insert counter never goes back");
            tables.meta.insert(crate::storage::META_NEXT_ROW_N, self.next_row_n.to_be_bytes().as_slice())?;
        }
        let rows_affected = ctx.rows_affected;
        let mut ops = Vec::new();
        let mut staged = Vec::new();
        for (key_bytes, mut doc) in ctx.docs {
            let options = CommitOptions::default().with_time(now_ms);
            if doc.working.doc.commit_with(options).is_none() {
                continue;
            }
            let change = doc.working.doc.get_last_local_change().expect("just committed").clone();
            ops.push(DocChange { key: doc.key, change });
            staged.push((key_bytes, doc.working, doc.inserted));
        }
        let appends: Vec<AppendBatch> = ctx.appends.into_values().collect();
        // What this node holds now: the rows a range delete removes (not the batch's own).
        let tombstones: Vec<RangeTombstone> = ctx
            .deletes
            .into_iter()
            .map(|((table, epoch), StagedDelete { column, lo, hi })| RangeTombstone {
                table,
                epoch,
                column,
                lo,
                hi,
                vector: self.versions.clone(),
            })
            .collect();
        if ops.is_empty() && appends.is_empty() && tombstones.is_empty() {
            return Ok(WriteReceipt { seq: None, rows_affected });
        }
        // Peers refuse a change beyond these limits, and every later change of this node
        // depends on it: refused here, before anything of the batch is stored, it costs the
        // writer a split instead of stalling replication.
        let largest_append = appends.iter().map(|a| a.rows.len()).max().unwrap_or(0);
        let op_count = ops.len() + appends.len() + tombstones.len();
        if op_count > CHANGE_DOCS_MAX || largest_append > APPEND_ROWS_MAX {
            return Err(WriteError::TooManyRows { docs: op_count.max(largest_append) });
        }
        let seq = self.versions.seq(self.node) + 1;
        let deps: Vec<_> = self
            .versions
            .iter()
            .filter(|(origin, seq)| *origin != self.node && *seq > self.announced.seq(*origin))
            .collect();
        let change = VerifiedChange::encode_local(self.node, seq, now_ms, &deps, ops, appends, tombstones);
        if change.bytes.len() > CHANGE_BYTES_MAX {
            return Err(WriteError::ChangeTooLarge { bytes: change.bytes.len() });
        }
        let cause = Cause::Change { origin: self.node, seq };
        let docs = staged
            .into_iter()
            .zip(change.ops.iter())
            .map(|((key_bytes, working, inserted), op)| ChangedDoc {
                key_bytes,
                key: op.key.clone(),
                working,
                new_changes: vec![op.change.raw_bytes()],
                cause,
                inserted,
            })
            .collect();
        let range_deleted = tables.range_deleted;
        self.record_changes(tables, docs, std::slice::from_ref(&change))
            .map_err(|e| WriteError::Storage(e.into_storage()))?;
        let rows_affected = rows_affected + (tables.range_deleted - range_deleted);
        self.announced = self.versions.clone();
        tables.meta.insert(crate::storage::META_ANNOUNCED, crate::codec::encode(&self.announced).as_slice())?;
        Ok(WriteReceipt { seq: Some(seq), rows_affected })
    }

    /// Refuses the batch if it gives two rows one value under a unique index
    /// (`unique.rs`); cheap when no table has one.
    fn check_unique(&self, tables: &WriteTables<'_>, ctx: &BatchCtx) -> Result<(), WriteError> {
        let catalog = ctx.catalog(&self.catalog);
        if !catalog.indexes.values().any(|i| i.def.schema.unique) {
            return Ok(());
        }
        let staged: Vec<unique::StagedRow<'_>> = ctx
            .docs
            .values()
            .filter_map(|staged| match &staged.key {
                DocKey::Row { table, epoch, pk } => {
                    Some(unique::StagedRow { table, epoch: *epoch, pk, doc: &staged.working.doc })
                }
                _ => None,
            })
            .collect();
        unique::check_batch(catalog, &self.catalog, tables, &staged)
    }

    /// Returns the staged document for `key`, loading or creating it on first use.
    fn stage_doc<'c>(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &'c mut BatchCtx,
        key: DocKey,
    ) -> Result<&'c mut WorkingDoc, WriteError> {
        Ok(&mut stage_doc_in(&mut self.cache, self.node, tables, &self.catalog, &mut ctx.docs, key)?.working)
    }

    fn stage_op(&mut self, tables: &WriteTables<'_>, ctx: &mut BatchCtx, op: WriteOp) -> Result<(), WriteError> {
        match op {
            WriteOp::CreateTable { schema, if_not_exists } => {
                self.stage_create_table(tables, ctx, schema, if_not_exists)
            }
            WriteOp::DropTable { name, if_exists } => self.stage_drop_table(tables, ctx, &name, if_exists),
            WriteOp::CreateIndex { schema, if_not_exists } => {
                self.stage_create_index(tables, ctx, schema, if_not_exists)
            }
            WriteOp::DropIndex { name, if_exists } => self.stage_drop_index(tables, ctx, &name, if_exists),
            WriteOp::AddColumn { table, column } => {
                let entry = alterable(ctx.catalog(&self.catalog), &table)?;
                let write = super::alter::add_column(entry, column)?;
                self.stage_alter(tables, ctx, &table, write)
            }
            WriteOp::RenameColumn { table, from, to } => {
                let entry = alterable(ctx.catalog(&self.catalog), &table)?;
                let write = super::alter::rename_column(entry, &from, &to)?;
                self.stage_alter(tables, ctx, &table, write)
            }
            WriteOp::DropColumn { table, column } => {
                let catalog = ctx.catalog(&self.catalog);
                let write = super::alter::drop_column(catalog, alterable(catalog, &table)?, &column)?;
                self.stage_alter(tables, ctx, &table, write)
            }
            WriteOp::CreateView { def, if_not_exists } => self.stage_create_view(tables, ctx, def, if_not_exists),
            WriteOp::DropView { name, if_exists } => self.stage_drop_view(tables, ctx, &name, if_exists),
            WriteOp::Insert { table, values } => self.stage_insert(tables, ctx, &table, values, false),
            WriteOp::Upsert { table, values } => self.stage_insert(tables, ctx, &table, values, true),
            WriteOp::Update { table, key, set } => self.stage_update(tables, ctx, &table, key, set),
            WriteOp::Delete { table, key } => self.stage_delete(tables, ctx, &table, key),
            WriteOp::DeleteRange { table, lo, hi } => stage_delete_range(ctx, &self.catalog, &table, lo, hi),
            WriteOp::Increment { table, key, column, by } => {
                self.stage_increment(tables, ctx, &table, key, &column, by)
            }
        }
    }

    fn stage_create_table(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        schema: TableSchema,
        if_not_exists: bool,
    ) -> Result<(), WriteError> {
        let schema = schema.validate()?;
        if ctx.catalog(&self.catalog).table(&schema.name).is_some() {
            return if if_not_exists { Ok(()) } else { Err(WriteError::TableExists(schema.name)) };
        }
        if ctx.catalog(&self.catalog).view(&schema.name).is_some() {
            return Err(WriteError::ViewExists(schema.name));
        }
        let working = self.stage_doc(tables, ctx, DocKey::Table(schema.name.clone()))?;
        let causal_length = bump(working, &schema.name)?;
        doc::put_definition(&mut working.doc, catalog::encode_table(&schema));
        let entry = TableEntry { schema: schema.clone(), causal_length, conflict: None };
        ctx.catalog_mut(&self.catalog).tables.insert(schema.name, entry);
        Ok(())
    }

    fn stage_create_view(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        def: catalog::ViewDef,
        if_not_exists: bool,
    ) -> Result<(), WriteError> {
        let name = crate::schema::normalize_name(&def.name)?;
        debug_assert_eq!(name, def.name, "the SQL layer lower-cases names");
        let catalog = ctx.catalog(&self.catalog);
        if catalog.view(&name).is_some() {
            return if if_not_exists { Ok(()) } else { Err(WriteError::ViewExists(name)) };
        }
        if catalog.table(&name).is_some() {
            return Err(WriteError::TableExists(name));
        }
        let def = catalog::ViewDef { name, ..def };
        let working = self.stage_doc(tables, ctx, DocKey::View(def.name.clone()))?;
        let causal_length = bump(working, &def.name)?;
        doc::put_definition(&mut working.doc, catalog::encode_view(&def));
        let entry = catalog::ViewEntry { def: def.clone(), causal_length, conflict: None };
        ctx.catalog_mut(&self.catalog).views.insert(def.name, entry);
        Ok(())
    }

    fn stage_drop_view(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        name: &str,
        if_exists: bool,
    ) -> Result<(), WriteError> {
        let name = name.to_ascii_lowercase();
        if ctx.catalog(&self.catalog).view(&name).is_none() {
            return if if_exists { Ok(()) } else { Err(WriteError::UnknownView(name)) };
        }
        let working = self.stage_doc(tables, ctx, DocKey::View(name.clone()))?;
        let causal_length = bump(working, &name)?;
        ctx.catalog_mut(&self.catalog).views.get_mut(&name).expect("checked alive above").causal_length = causal_length;
        Ok(())
    }

    fn stage_drop_table(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        name: &str,
        if_exists: bool,
    ) -> Result<(), WriteError> {
        let name = name.to_ascii_lowercase();
        if ctx.catalog(&self.catalog).table(&name).is_none() {
            return if if_exists { Ok(()) } else { Err(WriteError::UnknownTable(name)) };
        }
        let indexes: Vec<String> =
            ctx.catalog(&self.catalog).indexes_of(&name).map(|i| i.def.schema.name.clone()).collect();
        for index in indexes {
            self.stage_drop_index(tables, ctx, &index, false)?;
        }
        let working = self.stage_doc(tables, ctx, DocKey::Table(name.clone()))?;
        let causal_length = bump(working, &name)?;
        ctx.catalog_mut(&self.catalog).tables.get_mut(&name).expect("checked alive above").causal_length =
            causal_length;
        Ok(())
    }

    fn stage_create_index(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        schema: IndexSchema,
        if_not_exists: bool,
    ) -> Result<(), WriteError> {
        let table = ctx
            .catalog(&self.catalog)
            .table(&schema.table)
            .ok_or_else(|| WriteError::UnknownTable(schema.table.clone()))?;
        let table_epoch = table.causal_length;
        if table.schema.append.is_some() {
            return Err(append_only(&table.schema, "it has no secondary indexes (not built yet)"));
        }
        let schema = schema.validate(&table.schema)?;
        let existing = ctx.catalog(&self.catalog).indexes.get(&schema.name);
        if existing.is_some_and(|i| i.causal_length % 2 == 1) {
            return if if_not_exists { Ok(()) } else { Err(WriteError::IndexExists(schema.name)) };
        }
        let def = IndexDef { schema, table_epoch };
        let working = self.stage_doc(tables, ctx, DocKey::Index(def.schema.name.clone()))?;
        let causal_length = bump(working, &def.schema.name)?;
        doc::put_definition(&mut working.doc, catalog::encode_index(&def));
        ctx.catalog_mut(&self.catalog)
            .indexes
            .insert(def.schema.name.clone(), IndexEntry { def, causal_length, conflict: None });
        Ok(())
    }

    /// Writes an `ALTER` field into the table's catalog document and resolves the table
    /// again, so later operations of the batch see the altered definition.
    fn stage_alter(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        table: &str,
        write: super::alter::AlterWrite,
    ) -> Result<(), WriteError> {
        let name = table.to_ascii_lowercase();
        let epoch = alterable(ctx.catalog(&self.catalog), &name)?.causal_length;
        let working = self.stage_doc(tables, ctx, DocKey::Table(name.clone()))?;
        doc::put_alter(&mut working.doc, epoch, write.field, &write.column_id, write.bytes);
        // alter.rs validated what it writes against the resolved table, so this resolves;
        // refused rather than trusted (the batch and its staged document are dropped).
        let entry = catalog::resolve_table(&name, &working.doc).map_err(|e| {
            debug_assert!(false, "a checked ALTER does not resolve: {e}");
            crate::schema::SchemaError::BadConstraint { table: name.clone(), reason: e.reason }
        })?;
        let catalog = ctx.catalog_mut(&self.catalog);
        catalog.tables.insert(name.clone(), entry);
        catalog.rebind_indexes(&name);
        Ok(())
    }

    fn stage_drop_index(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        name: &str,
        if_exists: bool,
    ) -> Result<(), WriteError> {
        let name = name.to_ascii_lowercase();
        let alive = ctx.catalog(&self.catalog).indexes.get(&name).is_some_and(|i| i.causal_length % 2 == 1);
        if !alive {
            return if if_exists { Ok(()) } else { Err(WriteError::UnknownIndex(name)) };
        }
        let working = self.stage_doc(tables, ctx, DocKey::Index(name.clone()))?;
        let causal_length = bump(working, &name)?;
        ctx.catalog_mut(&self.catalog).indexes.get_mut(&name).expect("checked alive above").causal_length =
            causal_length;
        Ok(())
    }

    fn stage_insert(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        table: &str,
        values: Vec<(String, Value)>,
        upsert: bool,
    ) -> Result<(), WriteError> {
        let entry = live_table(ctx.catalog.as_ref().unwrap_or(&self.catalog), table)?;
        let schema = &entry.schema;
        if schema.append.is_some() {
            if upsert {
                return Err(append_only(schema, "its rows cannot be updated"));
            }
            if ctx.deletes.contains_key(&(schema.name.clone(), entry.causal_length)) {
                return Err(append_only(
                    schema,
                    "one batch cannot append to it and delete a range, nor delete two ranges",
                ));
            }
            let row = build_row(schema, &values)?;
            if let Some(dedup) = DedupKey::of(schema) {
                // A key some stored row holds, or a row earlier in the batch: as a
                // primary key on an ordinary table.
                let tuple = dedup.of_row(&row);
                let epoch = entry.causal_length;
                let stored = append_keys::shown_holder(&tables.append_keys, &schema.name, epoch, &tuple)?.is_some();
                if stored || !ctx.append_keys.insert(append_keys::key_prefix(&schema.name, epoch, &tuple)) {
                    return Err(WriteError::DuplicateKey { table: schema.name.clone(), key: show_key(&tuple) });
                }
            }
            let batch = ctx.appends.entry((schema.name.clone(), entry.causal_length)).or_insert_with(|| AppendBatch {
                table: schema.name.clone(),
                epoch: entry.causal_length,
                columns: schema.columns.iter().map(ColumnDef::id).collect(),
                rows: Vec::new(),
            });
            batch.rows.push(row);
            ctx.rows_affected += 1;
            return Ok(());
        }
        let mut values = values;
        if schema.rowid {
            values.extend(new_row_identity(&mut self.next_row_n, self.node, schema, &values)?);
        }
        let row = build_row(schema, &values)?;
        let pk: Vec<Value> = schema.primary_key_indexes().into_iter().map(|i| row[i].clone()).collect();
        let key = row_doc_key(entry, &pk);
        let staged = stage_doc_in(&mut self.cache, self.node, tables, &self.catalog, &mut ctx.docs, key)?;
        // A document that did not exist and that nothing has staged operations on yet:
        // what `new_row_doc` rebuilds.
        let working = &staged.working;
        let fresh = working.created && working.changes == 0 && !doc::has_staged_ops(&working.doc);
        let working = &mut staged.working;
        if doc::is_alive(&working.doc) {
            if !upsert {
                return Err(WriteError::DuplicateKey { table: schema.name.clone(), key: show_key(&pk) });
            }
            for (name, _) in &values {
                let i = schema.column_index(name).expect("build_row checked the column");
                if !schema.primary_key.contains(&schema.columns[i].name) {
                    doc::put_column(&mut working.doc, &schema.columns[i], &row[i]);
                }
            }
        } else {
            bump(working, &schema.name)?;
            doc::put_row(&mut working.doc, &schema.columns, &row);
            if fresh {
                staged.inserted = Some(row);
            }
        }
        ctx.rows_affected += 1;
        Ok(())
    }

    fn stage_update(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        table: &str,
        key: Vec<Value>,
        set: Vec<(String, Value)>,
    ) -> Result<(), WriteError> {
        let entry = live_table(ctx.catalog.as_ref().unwrap_or(&self.catalog), table)?;
        let schema = &entry.schema;
        if schema.append.is_some() {
            return Err(append_only(schema, "its rows cannot be updated"));
        }
        let pk = coerce_key(schema, key)?;
        let mut updates = Vec::with_capacity(set.len());
        for (name, value) in set {
            let i = column_position(schema, &name)?;
            let column = &schema.columns[i];
            if schema.primary_key.contains(&column.name) {
                return Err(WriteError::PrimaryKeyUpdate { table: schema.name.clone(), column: column.name.clone() });
            }
            updates.push((i, coerce_column(schema, i, value)?));
        }
        let key = row_doc_key(entry, &pk);
        let working = &mut stage_doc_in(&mut self.cache, self.node, tables, &self.catalog, &mut ctx.docs, key)?.working;
        if !doc::is_alive(&working.doc) {
            return Err(WriteError::RowNotFound { table: schema.name.clone(), key: show_key(&pk) });
        }
        for (i, value) in updates {
            doc::put_column(&mut working.doc, &schema.columns[i], &value);
        }
        ctx.rows_affected += 1;
        Ok(())
    }

    fn stage_delete(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        table: &str,
        key: Vec<Value>,
    ) -> Result<(), WriteError> {
        let entry = live_table(ctx.catalog.as_ref().unwrap_or(&self.catalog), table)?;
        if entry.schema.append.is_some() {
            return Err(append_only(&entry.schema, "its rows are deleted by a range of its time column, not by key"));
        }
        let pk = coerce_key(&entry.schema, key)?;
        let key = row_doc_key(entry, &pk);
        let working = &mut stage_doc_in(&mut self.cache, self.node, tables, &self.catalog, &mut ctx.docs, key)?.working;
        if doc::is_alive(&working.doc) {
            bump(working, &entry.schema.name)?;
            ctx.rows_affected += 1;
        }
        Ok(())
    }

    fn stage_increment(
        &mut self,
        tables: &WriteTables<'_>,
        ctx: &mut BatchCtx,
        table: &str,
        key: Vec<Value>,
        column: &str,
        by: i64,
    ) -> Result<(), WriteError> {
        let entry = live_table(ctx.catalog.as_ref().unwrap_or(&self.catalog), table)?;
        let schema = &entry.schema;
        if schema.append.is_some() {
            return Err(append_only(schema, "its rows cannot be updated"));
        }
        let i = column_position(schema, column)?;
        let not_a_counter =
            || WriteError::NotACounter { table: schema.name.clone(), column: schema.columns[i].name.clone() };
        if schema.columns[i].ty != ColumnType::Counter {
            return Err(not_a_counter());
        }
        let pk = coerce_key(schema, key)?;
        let key = row_doc_key(entry, &pk);
        let working = &mut stage_doc_in(&mut self.cache, self.node, tables, &self.catalog, &mut ctx.docs, key)?.working;
        if !doc::is_alive(&working.doc) {
            return Err(WriteError::RowNotFound { table: schema.name.clone(), key: show_key(&pk) });
        }
        doc::increment(&mut working.doc, &schema.columns[i], by).map_err(|e| match e {
            doc::IncrementError::NotACounter => not_a_counter(),
            doc::IncrementError::Overflow => WriteError::Overflow {
                table: schema.name.clone(),
                column: schema.columns[i].name.clone(),
                what: "counter would leave the i64 range",
            },
        })?;
        ctx.rows_affected += 1;
        Ok(())
    }
}

/// [`Replica::stage_doc`] on the fields it needs, so that row operations can borrow their
/// table's definition from the catalog meanwhile instead of copying it for every row.
fn stage_doc_in<'c>(
    cache: &mut DocCache,
    node: NodeId,
    tables: &WriteTables<'_>,
    catalog: &catalog::Catalog,
    docs: &'c mut BTreeMap<Vec<u8>, Staged>,
    key: DocKey,
) -> Result<&'c mut Staged, WriteError> {
    let key_bytes = key.encode();
    Ok(match docs.entry(key_bytes) {
        Entry::Occupied(entry) => {
            let staged = entry.into_mut();
            // Touched again: no longer just a fresh insert.
            staged.inserted = None;
            staged
        }
        Entry::Vacant(entry) => {
            let working = take_or_create_cached_doc(cache, node, tables, catalog, entry.key())?;
            entry.insert(Staged { key, working, inserted: None })
        }
    })
}

/// Bumps a document's causal length, or reports it exhausted.
fn bump(working: &mut WorkingDoc, object: &str) -> Result<u64, WriteError> {
    doc::bump_causal_length(&mut working.doc).ok_or_else(|| WriteError::Overflow {
        table: object.to_string(),
        column: "_cl".to_string(),
        what: "causal length exhausted",
    })
}

/// Stages a range delete: one per table per batch, not in a batch that appends to the
/// table (its tombstone would not cover the batch's own rows: the deleting node holds
/// only the envelopes before it).
fn stage_delete_range(
    ctx: &mut BatchCtx,
    replica_catalog: &catalog::Catalog,
    table: &str,
    lo: Option<i64>,
    hi: Option<i64>,
) -> Result<(), WriteError> {
    let entry = live_table(ctx.catalog(replica_catalog), table)?;
    let schema = &entry.schema;
    if schema.append.is_none() {
        return Err(WriteError::NotAppendOnly(schema.name.clone()));
    }
    let column = match (lo, hi) {
        (None, None) => None,
        _ => {
            let i = schema
                .time_column_index()
                .ok_or_else(|| append_only(schema, "it has no time column to delete a range of"))?;
            Some(schema.columns[i].id())
        }
    };
    if lo.zip(hi).is_some_and(|(lo, hi)| lo >= hi) {
        return Err(WriteError::EmptyRange { table: schema.name.clone() });
    }
    let key = (schema.name.clone(), entry.causal_length);
    if ctx.appends.contains_key(&key) || ctx.deletes.contains_key(&key) {
        return Err(append_only(schema, "one batch cannot append to it and delete a range, nor delete two ranges"));
    }
    ctx.deletes.insert(key, StagedDelete { column, lo, hi });
    Ok(())
}

fn append_only(schema: &TableSchema, what: &'static str) -> WriteError {
    WriteError::AppendOnly { table: schema.name.clone(), what }
}

/// A live table that `ALTER TABLE` may change (an append-only one too: its blocks map
/// values by column id, so an added column reads as its default in rows written before,
/// and a renamed or dropped one is found or hidden by id; `alter.rs` keeps its time
/// column).
fn alterable<'c>(catalog: &'c catalog::Catalog, table: &str) -> Result<&'c TableEntry, WriteError> {
    live_table(catalog, table)
}

fn live_table<'c>(catalog: &'c catalog::Catalog, table: &str) -> Result<&'c TableEntry, WriteError> {
    catalog.table(table).ok_or_else(|| WriteError::UnknownTable(table.to_ascii_lowercase()))
}

fn row_doc_key(entry: &TableEntry, pk: &[Value]) -> DocKey {
    DocKey::Row { table: entry.schema.name.clone(), epoch: entry.causal_length, pk: keys::encode_tuple(pk) }
}

fn column_position(schema: &TableSchema, name: &str) -> Result<usize, WriteError> {
    schema
        .column_index(name)
        .ok_or_else(|| WriteError::UnknownColumn { table: schema.name.clone(), column: name.to_ascii_lowercase() })
}

/// Converts a value for column `i`, enforcing type and NOT NULL.
fn coerce_column(schema: &TableSchema, i: usize, value: Value) -> Result<Value, WriteError> {
    let column = &schema.columns[i];
    let got = value.kind();
    let value = value.coerce(column.ty).ok_or_else(|| WriteError::TypeMismatch {
        table: schema.name.clone(),
        column: column.name.clone(),
        expected: column.ty,
        got,
    })?;
    if value.is_null() && (column.not_null || column.ty == ColumnType::Counter) {
        return Err(WriteError::NotNull { table: schema.name.clone(), column: column.name.clone() });
    }
    Ok(value)
}

/// A full row for an insert: named values, then defaults, then NULL (0 for counters).
fn build_row(schema: &TableSchema, values: &[(String, Value)]) -> Result<Vec<Value>, WriteError> {
    let mut row: Vec<Option<Value>> = vec![None; schema.columns.len()];
    for (name, value) in values {
        let i = column_position(schema, name)?;
        row[i] = Some(coerce_column(schema, i, value.clone())?);
    }
    let mut full = Vec::with_capacity(row.len());
    for (i, value) in row.into_iter().enumerate() {
        let column = &schema.columns[i];
        let value = match value {
            Some(value) => value,
            // A dropped column's slot: NULL, so that an implicit document's change is
            // still rebuilt from its record (docs/design.md § ALTER TABLE).
            None if column.dropped => Value::Null,
            None if column.default.is_some() => column.default.clone().expect("checked"),
            None if column.ty == ColumnType::Counter => Value::Integer(0),
            None => coerce_column(schema, i, Value::Null)?,
        };
        full.push(value);
    }
    Ok(full)
}

/// The hidden identity of a new row of a key-less table: `rowid` = the node's tag and
/// its next insert counter, `_origin` = the node (docs/design.md § Tables without a
/// primary key). Refuses values given for either.
fn new_row_identity(
    next_row_n: &mut u64,
    node: NodeId,
    schema: &TableSchema,
    values: &[(String, Value)],
) -> Result<[(String, Value); 2], WriteError> {
    if let Some(i) = values.iter().filter_map(|(name, _)| schema.column_index(name)).find(|&i| i < ROWID_HIDDEN_COLUMNS)
    {
        return Err(WriteError::IdentityAssigned {
            table: schema.name.clone(),
            column: schema.columns[i].name.clone(),
        });
    }
    let n = *next_row_n;
    if n >= ROW_N_LIMIT {
        return Err(WriteError::RowNumbersExhausted);
    }
    *next_row_n = n + 1;
    let rowid = (row_tag(node) << ROW_N_BITS) | n;
    let rowid = i64::try_from(rowid).expect("a 24-bit tag and a 39-bit counter fit 63 bits");
    Ok([
        (ROWID_COLUMN.to_string(), Value::Integer(rowid)),
        (ORIGIN_COLUMN.to_string(), Value::Blob(node.as_bytes().to_vec())),
    ])
}

/// Bits of a key-less row's `rowid` that hold the inserting node's counter.
const ROW_N_BITS: u32 = 39;
/// The first counter value a node can no longer give.
const ROW_N_LIMIT: u64 = 1 << ROW_N_BITS;

/// The 24-bit tag of a node in the `rowid`s it assigns: the first 3 bytes of the hash of
/// its id, so that nodes' rowids rarely share a tag (their ids never do).
fn row_tag(node: NodeId) -> u64 {
    let hash = blake3::hash(node.as_bytes());
    let [a, b, c, ..] = *hash.as_bytes();
    u64::from_be_bytes([0, 0, 0, 0, 0, a, b, c])
}

/// Converts a primary key given by a caller to the key columns' types.
fn coerce_key(schema: &TableSchema, key: Vec<Value>) -> Result<Vec<Value>, WriteError> {
    let positions = schema.primary_key_indexes();
    if key.len() != positions.len() {
        return Err(WriteError::KeyArity { table: schema.name.clone(), expected: positions.len(), got: key.len() });
    }
    positions.into_iter().zip(key).map(|(i, value)| coerce_column(schema, i, value)).collect()
}

/// A primary key or value tuple for messages: `(1, 'a')`.
pub(crate) fn show_key(pk: &[Value]) -> String {
    let parts: Vec<String> = pk.iter().map(catalog::sql_literal).collect();
    format!("({})", parts.join(", "))
}
