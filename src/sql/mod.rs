//! SQL over the converged state: parse (sqlparser), plan, and execute over one redb read
//! snapshot of the materialized rows.
//!
//! - [`execute`] runs any supported statement against a [`SqlStore`] (a [`Replica`] or a
//!   [`ReplicaHandle`]): a query streams its rows from a snapshot; DDL and DML become one
//!   atomic, durable, replicated [`crate::WriteBatch`] each.
//! - [`query`] runs a read-only statement (`SELECT`, `VALUES`, `EXPLAIN`) on a snapshot.
//! - [`prepare`] parses once; the [`Statement`] runs many times with other parameters.
//!
//! Semantics follow SQLite (NULLs, three-valued logic, integer division, `ORDER BY` with
//! NULLs first) on strictly typed columns. What is outside the supported scope is refused
//! with [`SqlError::NotSupported`]. Time is a parameter (`now_ms`): this module never reads
//! a clock. Module map: `parse` → `select`/`from` (planning into a `plan` tree, with `bind`
//! for expressions and `access` for key and index choice) → `prune` (unused columns of
//! in-memory join sides) → `exec` (streaming operators, `aggregate`); `ddl_dml` for writes,
//! `system` for the system tables, `explain` for plans.

mod access;
mod aggregate;
mod bind;
mod ddl_dml;
mod error;
mod exec;
mod explain;
mod expr;
mod from;
mod func;
mod parse;
mod plan;
mod prune;
mod select;
mod subquery;
mod system;
mod value;

use std::sync::Arc;

use sqlparser::ast;

pub use error::SqlError;
pub use from::FROM_TABLES_MAX;
pub use parse::SQL_BYTES_MAX;
pub use system::SYSTEM_PREFIX;

use crate::handle::ReplicaHandle;
use crate::replica::{Replica, Snapshot};
use crate::types::Value;

/// A write statement, run where the replica lives (on its owner thread for a handle), so
/// that the statement's reads and its write see the same state.
pub type WriteJob = Box<dyn FnOnce(&mut Replica) -> Result<u64, SqlError> + Send>;

/// Something SQL can run against: it gives read snapshots and runs write jobs.
pub trait SqlStore {
    /// A consistent read snapshot of the materialized rows.
    fn sql_snapshot(&self) -> Result<Snapshot, SqlError>;
    /// Runs a write statement with exclusive access to the replica; returns rows affected.
    fn run_write(&mut self, job: WriteJob) -> Result<u64, SqlError>;
}

impl SqlStore for Replica {
    fn sql_snapshot(&self) -> Result<Snapshot, SqlError> {
        Ok(self.snapshot()?)
    }

    fn run_write(&mut self, job: WriteJob) -> Result<u64, SqlError> {
        job(self)
    }
}

impl SqlStore for ReplicaHandle {
    fn sql_snapshot(&self) -> Result<Snapshot, SqlError> {
        Ok(self.snapshot()?)
    }

    fn run_write(&mut self, job: WriteJob) -> Result<u64, SqlError> {
        self.call(job)?
    }
}

/// The rows of a query, streamed from its snapshot.
pub struct Rows {
    inner: exec::RowStream,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rows")
    }
}

impl Iterator for Rows {
    type Item = Result<Vec<Value>, SqlError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

/// What a statement returns: column names and streamed rows for a query, the number of
/// rows written for DML (0 for DDL).
#[derive(Debug)]
pub struct QueryResult {
    /// Output column names (empty for writes).
    pub columns: Vec<String>,
    /// The rows, read lazily (empty for writes).
    pub rows: Rows,
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
}

impl QueryResult {
    fn written(rows_affected: u64) -> QueryResult {
        QueryResult { columns: Vec::new(), rows: Rows { inner: Box::new(std::iter::empty()) }, rows_affected }
    }

    /// Reads every row into memory.
    pub fn collect_rows(self) -> Result<Vec<Vec<Value>>, SqlError> {
        self.rows.collect()
    }
}

/// Runs one statement. Queries read a fresh snapshot; writes run on the replica.
pub fn execute<S: SqlStore + ?Sized>(
    store: &mut S,
    sql: &str,
    params: &[Value],
    now_ms: i64,
) -> Result<QueryResult, SqlError> {
    prepare(sql)?.execute(store, params, now_ms)
}

/// Runs a read-only statement (`SELECT`, `VALUES`, `EXPLAIN`) on a snapshot.
pub fn query(snapshot: impl Into<Arc<Snapshot>>, sql: &str, params: &[Value]) -> Result<QueryResult, SqlError> {
    prepare(sql)?.query(snapshot, params)
}

/// Parses a statement once, to run it many times with different parameters.
pub fn prepare(sql: &str) -> Result<Statement, SqlError> {
    Ok(Statement { ast: parse::parse_one(sql)? })
}

/// A parsed statement. It is planned at each execution, against the catalog of the
/// snapshot it runs on, so it stays valid across DDL.
#[derive(Debug, Clone)]
pub struct Statement {
    ast: ast::Statement,
}

impl Statement {
    /// Whether the statement only reads (`SELECT`, `VALUES`, `EXPLAIN`).
    pub fn is_read_only(&self) -> bool {
        is_read(&self.ast)
    }

    /// Runs the statement; see [`execute`].
    pub fn execute<S: SqlStore + ?Sized>(
        &self,
        store: &mut S,
        params: &[Value],
        now_ms: i64,
    ) -> Result<QueryResult, SqlError> {
        if self.is_read_only() {
            let snap = Arc::new(store.sql_snapshot()?);
            return read(&snap, &self.ast, params);
        }
        let (statement, params) = (self.ast.clone(), params.to_vec());
        let job: WriteJob = Box::new(move |replica| ddl_dml::run(replica, &statement, &params, now_ms));
        Ok(QueryResult::written(store.run_write(job)?))
    }

    /// Runs a read-only statement on a snapshot; see [`query`].
    pub fn query(&self, snapshot: impl Into<Arc<Snapshot>>, params: &[Value]) -> Result<QueryResult, SqlError> {
        if !self.is_read_only() {
            return Err(SqlError::invalid(format!("{} writes: use sql::execute", ddl_dml::first_words(&self.ast))));
        }
        read(&snapshot.into(), &self.ast, params)
    }
}

fn is_read(statement: &ast::Statement) -> bool {
    matches!(statement, ast::Statement::Query(_) | ast::Statement::Explain { .. })
}

fn read(snap: &Arc<Snapshot>, statement: &ast::Statement, params: &[Value]) -> Result<QueryResult, SqlError> {
    let ctx = bind::PlanCtx { snap, params, outer: None };
    match statement {
        ast::Statement::Query(q) => {
            let planned = select::plan_query(ctx, q)?;
            let rows = Rows { inner: exec::open(planned.plan, snap)? };
            Ok(QueryResult { columns: planned.columns, rows, rows_affected: 0 })
        }
        ast::Statement::Explain { analyze: false, statement, .. } => {
            let ast::Statement::Query(q) = &**statement else {
                return Err(SqlError::unsupported("EXPLAIN of a statement other than a query"));
            };
            let planned = select::plan_query(ctx, q)?;
            let lines: Vec<Vec<Value>> =
                explain::explain(&planned.plan).into_iter().map(|l| vec![Value::Text(l)]).collect();
            let rows = Rows { inner: Box::new(lines.into_iter().map(Ok)) };
            Ok(QueryResult { columns: vec!["plan".into()], rows, rows_affected: 0 })
        }
        other => Err(SqlError::unsupported(format!("statement {}", ddl_dml::first_words(other)))),
    }
}
