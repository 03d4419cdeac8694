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
//! for expressions, `access` for key and index choice and `cte` for `WITH`) → `prune`
//! (unused columns of in-memory join sides) → `exec` (streaming operators, `aggregate`,
//! `window` for window functions);
//! `ddl_dml` for writes (`create_table` for SQLite DDL, `check` for `CHECK`), `system` for the system tables, `explain` for plans.

mod access;
mod aggregate;
mod alter_table;
mod bind;
mod check;
mod create_table;
mod cte;
mod datetime;
mod ddl_dml;
mod dialect;
mod error;
mod exec;
mod explain;
mod expr;
mod from;
mod func;
mod insert;
mod join_order;
mod json;
mod limits;
mod math;
mod parse;
mod plan;
mod pragma;
mod printf;
mod prune;
mod range_delete;
mod realfmt;
mod select;
mod subquery;
mod system;
mod value;
mod view;
mod window;

use std::sync::{Arc, Mutex};

use sqlparser::ast;

pub use cte::CTE_EXPANSION_BYTES_MAX;
pub use error::SqlError;
pub use from::FROM_TABLES_MAX;
pub use limits::{
    ExecOptions, Interrupt, InterruptCause, MemoryPool, EXPR_DEPTH_MAX, STATEMENT_MEMORY_BYTES_DEFAULT,
    STATEMENT_STACK_BYTES, SUBQUERY_DEPTH_COST,
};
pub use parse::SQL_BYTES_MAX;
pub use system::SYSTEM_PREFIX;

use crate::catalog::{IndexEntry, TableEntry};
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
        // A member of a group commit: concurrent statements share one durable commit.
        self.write_job(job)
    }
}

/// The rows of a query, streamed from its snapshot. The statement's limits stay in force
/// while they are read: an interrupt stops the stream with [`SqlError::Interrupted`], and the
/// memory its operators hold is returned to the budget when it is dropped.
pub struct Rows {
    inner: exec::RowStream,
    /// `None` for the rows of a write (there are none).
    limits: Option<limits::Limits>,
    done: bool,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rows")
    }
}

impl Iterator for Rows {
    type Item = Result<Vec<Value>, SqlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let _entered = self.limits.as_ref().map(limits::Limits::enter);
        let next = match self.limits.as_ref().map(limits::Limits::check) {
            Some(Err(e)) => Some(Err(e)),
            _ => self.inner.next(),
        };
        // After the last row or the first error there is nothing more to read.
        self.done = !matches!(next, Some(Ok(_)));
        next
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
        let rows = Rows { inner: Box::new(std::iter::empty()), limits: None, done: true };
        QueryResult { columns: Vec::new(), rows, rows_affected }
    }

    /// Reads every row into memory; the rows count against the statement's memory budget
    /// while they are read.
    pub fn collect_rows(self) -> Result<Vec<Vec<Value>>, SqlError> {
        let mut rows = self.rows;
        let mut reservation = rows.limits.as_ref().map(limits::Limits::reservation);
        let mut all = Vec::new();
        for row in rows.by_ref() {
            let row = row?;
            if let Some(r) = &mut reservation {
                r.grow(limits::row_bytes(&row))?;
            }
            all.push(row);
        }
        Ok(all)
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
    let parsed = parse::parse_one(sql)?;
    // A schema PRAGMA is the query over the system tables it stands for.
    let ast = pragma::rewrite(&parsed.statement)?.unwrap_or(parsed.statement);
    Ok(Statement { ast, params: parsed.params, kept: Arc::default() })
}

/// A parsed statement. A query is planned at its first execution against the catalog of
/// the snapshot it runs on; the plan is kept and reused, with the new parameters, while the
/// tables it reads keep their definitions and indexes, so the statement stays valid across
/// DDL and repeated executions skip planning. (A plan that holds rows of one execution —
/// an uncorrelated subquery's result, a parameter in `LIMIT` — is not kept.)
#[derive(Debug, Clone)]
pub struct Statement {
    ast: ast::Statement,
    /// Parameters it takes: its highest `?N`.
    params: usize,
    /// The kept plan of a query, shared by clones of the statement.
    kept: Arc<Mutex<Option<Arc<KeptPlan>>>>,
}

/// A query plan kept for re-execution, and what it was made against.
#[derive(Debug)]
struct KeptPlan {
    plan: plan::Plan,
    columns: Vec<String>,
    /// Parameters the plan reads (as `Expr::Param`): at least this many must be given.
    params_max: usize,
    /// Whether the plan reads the statement time (as `Expr::StatementTime`).
    reads_now: bool,
    /// Each base table read, with its definition and indexes when planned.
    tables: Vec<(String, TableEntry, Vec<IndexEntry>)>,
}

impl KeptPlan {
    fn valid(&self, snap: &Snapshot, params: &[Value]) -> bool {
        let catalog = snap.catalog();
        params.len() >= self.params_max
            && self.tables.iter().all(|(name, table, indexes)| {
                catalog.table(name) == Some(table) && catalog.indexes_of(name).eq(indexes.iter())
            })
    }
}

impl Statement {
    /// Whether the statement only reads (`SELECT`, `VALUES`, `EXPLAIN`).
    pub fn is_read_only(&self) -> bool {
        is_read(&self.ast)
    }

    /// Parameters the statement takes (its highest `?N`); exactly this many must be given.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Runs the statement with the default limits; see [`execute`] and
    /// [`Statement::execute_with`].
    pub fn execute<S: SqlStore + ?Sized>(
        &self,
        store: &mut S,
        params: &[Value],
        now_ms: i64,
    ) -> Result<QueryResult, SqlError> {
        self.execute_with(store, params, now_ms, &ExecOptions::default())
    }

    /// Runs the statement under `opts`: its memory budget and pool, and its interrupt
    /// (checked while the rows are read, too). A write statement plans and runs on the
    /// store's owner thread, under the same limits.
    pub fn execute_with<S: SqlStore + ?Sized>(
        &self,
        store: &mut S,
        params: &[Value],
        now_ms: i64,
        opts: &ExecOptions,
    ) -> Result<QueryResult, SqlError> {
        self.check_params(params)?;
        let limits = limits::Limits::new(opts);
        if self.is_read_only() {
            let snap = Arc::new(store.sql_snapshot()?);
            return self.read(&snap, params, limits, Some(now_ms));
        }
        let (statement, params) = (self.ast.clone(), params.to_vec());
        let job: WriteJob = Box::new(move |replica| {
            let _entered = limits.enter();
            limits.check()?;
            ddl_dml::run(replica, &statement, &params, now_ms, &limits)
        });
        Ok(QueryResult::written(store.run_write(job)?))
    }

    /// Runs a read-only statement on a snapshot with the default limits; see [`query`].
    pub fn query(&self, snapshot: impl Into<Arc<Snapshot>>, params: &[Value]) -> Result<QueryResult, SqlError> {
        self.query_with(snapshot, params, &ExecOptions::default())
    }

    /// Runs a read-only statement on a snapshot under `opts`; see [`Statement::execute_with`].
    pub fn query_with(
        &self,
        snapshot: impl Into<Arc<Snapshot>>,
        params: &[Value],
        opts: &ExecOptions,
    ) -> Result<QueryResult, SqlError> {
        if !self.is_read_only() {
            return Err(SqlError::invalid(format!("{} writes: use sql::execute", ddl_dml::first_words(&self.ast))));
        }
        self.check_params(params)?;
        // A snapshot alone carries no statement time: 'now' is refused, the clock never read.
        self.read(&snapshot.into(), params, limits::Limits::new(opts), None)
    }

    fn check_params(&self, params: &[Value]) -> Result<(), SqlError> {
        if params.len() != self.params {
            return Err(SqlError::ParamCount { expected: self.params, got: params.len() });
        }
        Ok(())
    }

    fn read(
        &self,
        snap: &Arc<Snapshot>,
        params: &[Value],
        limits: limits::Limits,
        now_ms: Option<i64>,
    ) -> Result<QueryResult, SqlError> {
        let _entered = limits.enter();
        limits.check()?;
        let limits_ref = &limits;
        match &self.ast {
            ast::Statement::Query(q) => {
                let kept = self.plan(snap, q, params, limits_ref, now_ms)?;
                let mut plan = kept.plan.clone();
                if kept.params_max > 0 || kept.reads_now {
                    let now = now_ms.map_or(Value::Null, Value::Timestamp);
                    exec::bind_constants(&mut plan, snap, &|e| match e {
                        expr::Expr::Param(n) => params.get(*n).cloned(),
                        expr::Expr::StatementTime => Some(now.clone()),
                        _ => None,
                    });
                }
                let inner = exec::open(plan, snap, limits_ref)?;
                drop(_entered);
                let rows = Rows { inner, limits: Some(limits), done: false };
                Ok(QueryResult { columns: kept.columns.clone(), rows, rows_affected: 0 })
            }
            ast::Statement::Explain { analyze: false, statement, .. } => {
                let ctx = bind::PlanCtx::new(snap, params, limits_ref).at(now_ms);
                let lines = explain::explain_statement(ctx, statement)?;
                let inner = Box::new(lines.into_iter().map(|l| Ok(vec![Value::Text(l)])));
                drop(_entered);
                let rows = Rows { inner, limits: Some(limits), done: false };
                Ok(QueryResult { columns: vec!["plan".into()], rows, rows_affected: 0 })
            }
            other => Err(SqlError::unsupported(ddl_dml::statement_feature(other))),
        }
    }

    /// The kept plan if it is still valid, else a new one (kept if it may be reused).
    fn plan(
        &self,
        snap: &Arc<Snapshot>,
        q: &ast::Query,
        params: &[Value],
        limits: &limits::Limits,
        now_ms: Option<i64>,
    ) -> Result<Arc<KeptPlan>, SqlError> {
        let slot = |m: &Mutex<Option<Arc<KeptPlan>>>| {
            // The slot holds only complete plans, so a poisoned one is still consistent.
            m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        };
        if let Some(kept) = slot(&self.kept).filter(|k| k.valid(snap, params)) {
            return Ok(kept);
        }
        let notes = bind::PlanNotes::new();
        let ctx = bind::PlanCtx { notes: Some(&notes), ..bind::PlanCtx::new(snap, params, limits).at(now_ms) };
        let planned = select::plan_query(ctx, q)?;
        let catalog = snap.catalog();
        let tables = notes
            .tables
            .take()
            .into_iter()
            .filter_map(|name| {
                let table = catalog.table(&name)?.clone();
                let indexes = catalog.indexes_of(&name).cloned().collect();
                Some((name, table, indexes))
            })
            .collect();
        let kept = Arc::new(KeptPlan {
            plan: planned.plan,
            columns: planned.columns,
            params_max: notes.params_max.get(),
            reads_now: notes.reads_now.get(),
            tables,
        });
        if notes.reusable.get() {
            *self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&kept));
        }
        Ok(kept)
    }
}

fn is_read(statement: &ast::Statement) -> bool {
    matches!(statement, ast::Statement::Query(_) | ast::Statement::Explain { .. })
}
