//! `INSERT`, with SQLite's conflict clauses: `OR IGNORE`, `OR REPLACE`, `ON CONFLICT ...
//! DO NOTHING | DO UPDATE`, on the primary key and on unique indexes.
//!
//! Conflicts are found against the statement's snapshot and the rows the statement wrote
//! before (a later row of one statement conflicts with an earlier one as with a stored
//! row). A plain `INSERT` looks nothing up: the replica refuses a duplicate key or unique
//! value itself, for the whole batch (docs/design.md § Unique indexes).

use std::collections::HashMap;

use sqlparser::ast;

use super::bind::{self, Binder, PlanCtx};
use super::check::Checks;
use super::ddl_dml::{assigned, assignments, collect, conform, target_table, update_ops};
use super::expr::Expr;
use super::limits;
use super::plan::{Plan, Row, Scope};
use super::value::{self, KeyValue};
use super::{select, SqlError};
use crate::catalog::TableEntry;
use crate::replica::{Snapshot, WriteOp};
use crate::types::{ColumnType, Value};

/// Which conflicts a clause handles.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    /// Any: `OR IGNORE`, `OR REPLACE`, `ON CONFLICT` without columns.
    Any,
    /// The primary key.
    Key,
    /// One unique index, by position in [`Uniques`].
    Unique(usize),
}

/// What a conflict does.
enum OnConflict {
    Fail,
    Nothing(Target),
    Replace,
    Update { target: Target, assignments: Vec<(usize, Expr)>, filter: Option<Expr> },
}

/// The enforced unique indexes of the target table: name and column positions.
struct Uniques(Vec<(String, Vec<usize>)>);

impl Uniques {
    fn of(snap: &Snapshot, table: &TableEntry) -> Uniques {
        let catalog = snap.catalog();
        let schema = &table.schema;
        let list = catalog
            .indexes_of(&schema.name)
            .filter(|index| crate::replica::unique_enforced(index, table))
            .map(|index| {
                let positions = index.def.schema.columns.iter().map(|c| schema.column_index(c).expect("usable index"));
                (index.def.schema.name.clone(), positions.collect())
            })
            .collect();
        Uniques(list)
    }

    /// The value tuple `row` claims under unique index `u`; `None` with a NULL in it.
    fn tuple(&self, u: usize, row: &[Value]) -> Option<Vec<Value>> {
        let values: Vec<Value> = self.0[u].1.iter().map(|&i| row[i].clone()).collect();
        (!values.iter().any(Value::is_null)).then_some(values)
    }
}

/// An `INSERT` planned: the target, the columns filled, where the rows come from and what
/// a conflict does.
pub(super) struct InsertPlan {
    pub table: TableEntry,
    columns: Vec<usize>,
    pub source: Plan,
    on_conflict: OnConflict,
    uniques: Uniques,
    /// `INSERT OR IGNORE`: as in SQLite, a row that breaks `NOT NULL` or a `CHECK` is
    /// skipped too, not only one that conflicts (`ON CONFLICT DO NOTHING` skips conflicts
    /// only).
    skips_invalid: bool,
}

impl InsertPlan {
    /// How the plan handles conflicts, for `EXPLAIN`.
    pub fn conflict_handling(&self) -> &'static str {
        let uniques = !self.uniques.0.is_empty();
        match (&self.table.schema.append, self.table.schema.primary_key.is_empty(), &self.on_conflict) {
            (Some(_), true, _) => return "append-only: every row is new, no key conflicts",
            (Some(_), false, OnConflict::Fail) => {
                return "append-only with a deduplication key: a key that exists fails the statement"
            }
            (Some(_), false, _) => {
                return "append-only: each row's deduplication key looked up in append_keys_v1, an existing one skipped"
            }
            (None, ..) => {}
        }
        match (&self.on_conflict, self.table.schema.rowid, uniques) {
            (_, true, false) => "each row a new identity: no key conflicts",
            (OnConflict::Fail, _, false) => "a key that exists fails the statement",
            (OnConflict::Fail, _, true) => "a key or unique value that exists fails the statement",
            (OnConflict::Nothing(_), _, false) => "ON CONFLICT DO NOTHING: each row's key looked up by PRIMARY KEY",
            (OnConflict::Replace, _, false) => "OR REPLACE: each row's key looked up by PRIMARY KEY",
            (OnConflict::Update { .. }, _, false) => "ON CONFLICT DO UPDATE: each row's key looked up by PRIMARY KEY",
            (OnConflict::Nothing(_), _, true) => {
                "ON CONFLICT DO NOTHING: each row's key and unique values looked up by PRIMARY KEY and unique index"
            }
            (OnConflict::Replace, _, true) => {
                "OR REPLACE: each row's key and unique values looked up by PRIMARY KEY and unique index"
            }
            (OnConflict::Update { .. }, _, true) => {
                "ON CONFLICT DO UPDATE: each row's key and unique values looked up by PRIMARY KEY and unique index"
            }
        }
    }
}

pub(super) fn plan_insert(ctx: PlanCtx<'_>, ins: &ast::Insert) -> Result<InsertPlan, SqlError> {
    if ins.returning.is_some() || !ins.assignments.is_empty() || ins.partitioned.is_some() || ins.overwrite {
        return Err(SqlError::unsupported("INSERT with RETURNING, SET or PARTITION"));
    }
    let ast::TableObject::TableName(name) = &ins.table else {
        return Err(SqlError::unsupported("INSERT into a table function"));
    };
    let table = target_table(ctx.snap, name)?.clone();
    let schema = &table.schema;
    let columns: Vec<usize> = if ins.columns.is_empty() {
        // Not a key-less table's hidden identity, which the store assigns, nor a
        // dropped column.
        schema.visible_positions().collect()
    } else {
        ins.columns
            .iter()
            .map(|c| {
                let c = bind::object_name(c)?;
                schema.column_index(&c).ok_or_else(|| SqlError::UnknownColumn(format!("{}.{c}", schema.name)))
            })
            .collect::<Result<_, _>>()?
    };
    let Some(source) = &ins.source else { return Err(SqlError::unsupported("INSERT ... DEFAULT VALUES")) };
    let planned = select::plan_query(ctx, source)?;
    if planned.columns.len() != columns.len() {
        return Err(SqlError::invalid(format!(
            "table {} has {} columns to fill but {} values were supplied",
            schema.name,
            columns.len(),
            planned.columns.len()
        )));
    }
    let uniques = Uniques::of(ctx.snap, &table);
    let on_conflict = match (on_conflict(ctx, &table, &uniques, ins)?, table.schema.append.is_some()) {
        (OnConflict::Replace | OnConflict::Update { .. }, true) => {
            return Err(SqlError::invalid(format!("table {} is append-only: its rows cannot be updated", schema.name)));
        }
        // Without a key (append-only tables have no unique indexes) a new row conflicts
        // with nothing.
        (OnConflict::Nothing(_), true) if table.schema.primary_key.is_empty() => OnConflict::Fail,
        (on_conflict, _) => on_conflict,
    };
    let skips_invalid = ins.ignore || matches!(ins.or, Some(ast::SqliteOnConflict::Ignore));
    Ok(InsertPlan { table, columns, source: planned.plan, on_conflict, uniques, skips_invalid })
}

fn on_conflict(
    ctx: PlanCtx<'_>,
    table: &TableEntry,
    uniques: &Uniques,
    ins: &ast::Insert,
) -> Result<OnConflict, SqlError> {
    if ins.replace_into || matches!(ins.or, Some(ast::SqliteOnConflict::Replace)) {
        return Ok(OnConflict::Replace);
    }
    if ins.ignore || matches!(ins.or, Some(ast::SqliteOnConflict::Ignore)) {
        return Ok(OnConflict::Nothing(Target::Any));
    }
    if ins.or.is_some() {
        return Err(SqlError::unsupported("INSERT OR ROLLBACK/ABORT/FAIL"));
    }
    let Some(on) = &ins.on else { return Ok(OnConflict::Fail) };
    let ast::OnInsert::OnConflict(conflict) = on else {
        return Err(SqlError::unsupported("ON DUPLICATE KEY UPDATE"));
    };
    let target = match &conflict.conflict_target {
        None => Target::Any,
        Some(ast::ConflictTarget::Columns(names)) => {
            let names: Vec<String> = names.iter().map(bind::ident).collect();
            conflict_target(table, uniques, names)?
        }
        Some(other) => return Err(SqlError::unsupported(format!("ON CONFLICT {other}"))),
    };
    match &conflict.action {
        ast::OnConflictAction::DoNothing => Ok(OnConflict::Nothing(target)),
        ast::OnConflictAction::DoUpdate(update) => {
            let mut scope = Scope::default();
            let columns = table.schema.sql_names();
            scope.push_table(&table.schema.name, columns.clone())?;
            scope.mark_timestamps(&table.schema);
            scope.push_table("excluded", columns)?;
            scope.mark_timestamps(&table.schema);
            // As in SQLite, an unqualified name is the table's column: `excluded` is named.
            for column in scope.columns.iter_mut().filter(|c| c.table == "excluded") {
                column.in_star = false;
            }
            let assignments = assignments(ctx, &scope, table, &update.assignments)?;
            let filter = update.selection.as_ref().map(|s| Binder::new(ctx, &scope).bind(s)).transpose()?;
            Ok(OnConflict::Update { target, assignments, filter })
        }
    }
}

/// The key or unique index whose columns are `names`, in any order.
fn conflict_target(table: &TableEntry, uniques: &Uniques, mut names: Vec<String>) -> Result<Target, SqlError> {
    let schema = &table.schema;
    names.sort();
    let sorted = |positions: &[usize]| {
        let mut columns: Vec<String> = positions.iter().map(|&i| schema.columns[i].name.clone()).collect();
        columns.sort();
        columns
    };
    if !schema.rowid && sorted(&schema.primary_key_indexes()) == names {
        return Ok(Target::Key);
    }
    match uniques.0.iter().position(|(_, positions)| sorted(positions) == names) {
        Some(u) => Ok(Target::Unique(u)),
        None => Err(SqlError::invalid(format!(
            "ON CONFLICT ({}) matches neither the primary key nor a unique index of {}",
            names.join(", "),
            schema.name
        ))),
    }
}

/// A row the statement wrote: inserted, updated, or deleted by `OR REPLACE`.
struct Written {
    /// Its primary key; `None` for a new row of a key-less table (the store assigns it).
    pk: Option<Vec<Value>>,
    row: Row,
    alive: bool,
    /// The statement's `Insert` of it, if it inserted it.
    insert_op: Option<usize>,
}

/// Who holds a key or a unique value that a new row wants.
enum Holder {
    /// A row the statement wrote, by position.
    Written(usize),
    /// A stored row the statement has not touched: its key and its row.
    Stored(Vec<Value>, Row),
}

/// The state of one `INSERT`: the operations so far and the rows they wrote.
struct Insertion<'p> {
    plan: &'p InsertPlan,
    snap: &'p Snapshot,
    /// `None` where `OR REPLACE` took back an insert of an earlier row of the statement.
    ops: Vec<Option<WriteOp>>,
    written: Vec<Written>,
    by_key: HashMap<Vec<KeyValue>, usize>,
    /// (unique index, value tuple) → the live written row that holds it.
    claims: HashMap<(usize, Vec<KeyValue>), usize>,
    affected: u64,
}

pub(super) fn insert(ctx: PlanCtx<'_>, ins: &ast::Insert) -> Result<(Vec<WriteOp>, u64), SqlError> {
    let plan = plan_insert(ctx, ins)?;
    let checks = Checks::bind(ctx, &plan.table.schema)?;
    let source = plan.source.clone();
    let (rows, mut reservation) = collect(super::exec::open(source, ctx.snap, ctx.limits)?, ctx.limits)?;
    let mut insertion = Insertion {
        plan: &plan,
        snap: ctx.snap,
        ops: Vec::new(),
        written: Vec::new(),
        by_key: HashMap::new(),
        claims: HashMap::new(),
        affected: 0,
    };
    for values in rows {
        ctx.limits.check()?;
        // The operation written and the row remembered for later conflicts hold it twice.
        reservation.grow(2 * limits::row_bytes(&values))?;
        let full = full_row(&plan.table, &plan.columns, values);
        insertion.row(full, &checks)?;
    }
    Ok((insertion.ops.into_iter().flatten().collect(), insertion.affected))
}

impl Insertion<'_> {
    /// One row of the statement's source.
    fn row(&mut self, full: Row, checks: &Checks) -> Result<(), SqlError> {
        if self.plan.skips_invalid && !self.meets_constraints(&full, checks)? {
            return Ok(());
        }
        let on_conflict = &self.plan.on_conflict;
        let conflicts = match on_conflict {
            // The replica refuses a duplicate key or unique value.
            OnConflict::Fail => Vec::new(),
            _ => self.conflicts(&full)?,
        };
        let matching = |target: Target| conflicts.iter().position(|(on, _)| target == Target::Any || *on == target);
        match on_conflict {
            OnConflict::Nothing(target) if matching(*target).is_some() => Ok(()),
            OnConflict::Update { target, assignments, filter } => match matching(*target) {
                Some(i) => {
                    let holder = conflicts.into_iter().nth(i).expect("found above").1;
                    self.update(holder, full, assignments, filter.as_ref(), checks)
                }
                None => self.insert(full, checks),
            },
            OnConflict::Replace => {
                for (_, holder) in conflicts {
                    self.delete(holder);
                }
                self.insert(full, checks)
            }
            OnConflict::Fail | OnConflict::Nothing(_) => self.insert(full, checks),
        }
    }

    /// Whether a new row keeps the table's `NOT NULL` columns (not the hidden identity,
    /// which the store assigns) and `CHECK` constraints.
    fn meets_constraints(&self, full: &Row, checks: &Checks) -> Result<bool, SqlError> {
        let schema = &self.plan.table.schema;
        let null_refused = schema.visible_positions().any(|i| schema.columns[i].not_null && full[i].is_null());
        Ok(!null_refused && checks.passes(full)?)
    }

    /// Every row that holds `full`'s key or one of its unique values, with what it holds.
    fn conflicts(&self, full: &Row) -> Result<Vec<(Target, Holder)>, SqlError> {
        let table = &self.plan.table;
        let mut found: Vec<(Target, Holder)> = Vec::new();
        if !table.schema.rowid {
            let pk = pk_of(table, full);
            match self.by_key.get(&pk_key(&pk)) {
                Some(&w) if self.written[w].alive => found.push((Target::Key, Holder::Written(w))),
                Some(_) => {}
                None => {
                    if let Some(row) = stored_row(self.snap, table, &pk)? {
                        found.push((Target::Key, Holder::Stored(pk, row)));
                    }
                }
            }
        }
        let uniques = &self.plan.uniques;
        for u in 0..uniques.0.len() {
            let Some(tuple) = uniques.tuple(u, full) else { continue };
            if let Some(&w) = self.claims.get(&(u, pk_key(&tuple))) {
                found.push((Target::Unique(u), Holder::Written(w)));
            }
            for row in self.snap.index_lookup(&uniques.0[u].0, &tuple)? {
                let pk = pk_of(table, &row);
                // A stored row the statement wrote is judged by what it wrote.
                let known = self.by_key.contains_key(&pk_key(&pk))
                    || found.iter().any(|(_, h)| matches!(h, Holder::Stored(other, _) if *other == pk));
                if !known {
                    found.push((Target::Unique(u), Holder::Stored(pk, row)));
                }
            }
        }
        Ok(found)
    }

    fn insert(&mut self, full: Row, checks: &Checks) -> Result<(), SqlError> {
        checks.enforce(&full)?;
        let schema = &self.plan.table.schema;
        let values = self.plan.columns.iter().map(|&i| (schema.columns[i].name.clone(), full[i].clone())).collect();
        self.ops.push(Some(WriteOp::Insert { table: schema.name.clone(), values }));
        self.affected += 1;
        // A plain INSERT looks nothing up: the rows it wrote need not be remembered.
        if !matches!(self.plan.on_conflict, OnConflict::Fail) {
            let pk = (!schema.rowid).then(|| pk_of(&self.plan.table, &full));
            let insert_op = Some(self.ops.len() - 1);
            self.remember(Written { pk, row: full, alive: true, insert_op }, None);
        }
        Ok(())
    }

    /// `ON CONFLICT DO UPDATE` of the row `holder`, with `excluded` = `full`.
    fn update(
        &mut self,
        holder: Holder,
        full: Row,
        assignments: &[(usize, Expr)],
        filter: Option<&Expr>,
        checks: &Checks,
    ) -> Result<(), SqlError> {
        let (old, pk, at) = match holder {
            Holder::Written(w) => (self.written[w].row.clone(), self.written[w].pk.clone(), Some(w)),
            Holder::Stored(pk, row) => (row, Some(pk), None),
        };
        let mut both = old.clone();
        both.extend(full);
        if let Some(f) = filter {
            if !f.passes(&both)? {
                return Ok(());
            }
        }
        let table = &self.plan.table;
        let new = assigned(table, &old, assignments, &both)?;
        checks.enforce(&new)?;
        match (&pk, at) {
            (Some(pk), _) => {
                let ops = update_ops(table, pk, &old, &new)?;
                self.ops.extend(ops.into_iter().map(Some));
            }
            (None, Some(w)) => {
                // A key-less row inserted earlier by this statement: its insert takes the
                // new values (it has no key to update by until the store assigns one).
                let schema = &table.schema;
                let values =
                    schema.visible_positions().map(|i| (schema.columns[i].name.clone(), new[i].clone())).collect();
                let op = self.written[w].insert_op.expect("a key-less written row was inserted");
                self.ops[op] = Some(WriteOp::Insert { table: schema.name.clone(), values });
            }
            (None, None) => unreachable!("a stored row has a key"),
        }
        let insert_op = at.and_then(|w| self.written[w].insert_op);
        self.remember(Written { pk, row: new, alive: true, insert_op }, at);
        self.affected += 1;
        Ok(())
    }

    /// `OR REPLACE`: the row `holder` is deleted first.
    fn delete(&mut self, holder: Holder) {
        let table = &self.plan.table;
        let (pk, row, at) = match holder {
            Holder::Written(w) if !self.written[w].alive => return,
            Holder::Written(w) => (self.written[w].pk.clone(), self.written[w].row.clone(), Some(w)),
            Holder::Stored(pk, row) => (Some(pk), row, None),
        };
        match &pk {
            Some(pk) => self.ops.push(Some(WriteOp::Delete { table: table.schema.name.clone(), key: pk.clone() })),
            None => {
                // A key-less row this statement inserted: the insert is taken back.
                let w = at.expect("a key-less row to delete was written by the statement");
                let op = self.written[w].insert_op.expect("a key-less written row was inserted");
                self.ops[op] = None;
            }
        }
        self.remember(Written { pk, row, alive: false, insert_op: None }, at);
    }

    /// Records the state of a written row (replacing its earlier state at `at`) and the
    /// unique values it holds.
    fn remember(&mut self, written: Written, at: Option<usize>) {
        let w = match at {
            Some(w) => {
                let old = std::mem::replace(&mut self.written[w], written);
                if old.alive {
                    self.release_claims(&old.row);
                }
                w
            }
            None => {
                let w = self.written.len();
                if let Some(pk) = &written.pk {
                    // A key written before: deleted by `OR REPLACE` and now inserted, or,
                    // for a plain `INSERT`, a duplicate that the replica will refuse.
                    self.by_key.insert(pk_key(pk), w);
                }
                self.written.push(written);
                w
            }
        };
        if self.written[w].alive {
            let uniques = &self.plan.uniques;
            for u in 0..uniques.0.len() {
                if let Some(tuple) = uniques.tuple(u, &self.written[w].row) {
                    self.claims.insert((u, pk_key(&tuple)), w);
                }
            }
        }
    }

    fn release_claims(&mut self, row: &Row) {
        let uniques = &self.plan.uniques;
        for u in 0..uniques.0.len() {
            if let Some(tuple) = uniques.tuple(u, row) {
                self.claims.remove(&(u, pk_key(&tuple)));
            }
        }
    }
}

pub(super) fn pk_of(table: &TableEntry, row: &[Value]) -> Vec<Value> {
    table.schema.primary_key_indexes().into_iter().map(|i| row[i].clone()).collect()
}

fn pk_key(pk: &[Value]) -> Vec<KeyValue> {
    pk.iter().map(value::key_of).collect()
}

fn stored_row(snap: &Snapshot, table: &TableEntry, pk: &[Value]) -> Result<Option<Row>, SqlError> {
    let types: Vec<ColumnType> =
        table.schema.primary_key_indexes().into_iter().map(|i| table.schema.columns[i].ty).collect();
    let Some(key) = pk.iter().zip(types).map(|(v, ty)| super::access::key_value(v, ty)).collect::<Option<Vec<_>>>()
    else {
        // A key the column cannot hold: the insert itself will be refused with a type error.
        return Ok(None);
    };
    Ok(snap.get(&table.schema.name, &key)?)
}

/// The row an insert creates: named values, then defaults, then NULL (0 for counters).
fn full_row(table: &TableEntry, columns: &[usize], values: Row) -> Row {
    let schema = &table.schema;
    let mut row: Vec<Option<Value>> = vec![None; schema.columns.len()];
    for (&i, v) in columns.iter().zip(values) {
        row[i] = Some(conform(v, schema.columns[i].ty));
    }
    row.into_iter()
        .zip(&schema.columns)
        .map(|(v, c)| match v {
            Some(v) => v,
            // As the replica fills a dropped column's slot (`build_row`).
            None if c.dropped => Value::Null,
            None => {
                c.default.clone().unwrap_or(if c.ty == ColumnType::Counter { Value::Integer(0) } else { Value::Null })
            }
        })
        .collect()
}
