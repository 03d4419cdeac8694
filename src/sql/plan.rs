//! The physical plan: a tree of operators with every name already resolved, ready to be
//! opened as streaming iterators (`exec.rs`) or rendered by `EXPLAIN` (`explain.rs`).
//!
//! Also the [`Scope`] that name resolution works against: the columns of the tables in a
//! `FROM` clause, laid out side by side in the order they are joined.

use std::ops::Bound;

use super::aggregate::AggSpec;
use super::expr::Expr;
use super::system::SystemTable;
use super::window::WindowSort;
use super::SqlError;
use crate::types::{ColumnType, Value};

/// A row flowing between operators.
pub(crate) type Row = Vec<Value>;

/// How a base table is read.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// Every row, in primary-key order.
    Full,
    /// Nothing can match (e.g. `id = NULL`).
    Empty,
    /// One row by its full primary key.
    Point(Vec<Value>),
    /// Rows whose primary key lies in a range (bounds may be key prefixes).
    Range { lower: Bound<Vec<Value>>, upper: Bound<Vec<Value>> },
    /// Rows whose indexed columns equal the values (a prefix of the index).
    Index { name: String, values: Vec<Value> },
    /// The rows of an append-only table in the buckets that can hold a time between the
    /// bounds (`Snapshot::append_scan`); the predicates stay in the filter.
    TimeRange { column: String, lower: Bound<i64>, upper: Bound<i64> },
}

/// A scan of one base table with the predicates pushed down to it.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    pub table: String,
    pub alias: String,
    pub access: Access,
    /// Evaluated on the table's own row.
    pub filter: Option<Expr>,
    pub filter_text: Vec<String>,
}

/// Inner or left outer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinKind {
    Inner,
    Left,
    /// `FULL [OUTER] JOIN`: a LEFT JOIN that also emits the inner rows no outer row joined,
    /// padded with NULLs on the left. Never planned as a lookup join.
    Full,
}

/// How the inner side of a join finds the rows matching one outer row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupKind {
    /// `Snapshot::get` with the full primary key.
    PrimaryKey,
    /// `Snapshot::range` over a primary-key prefix.
    PrimaryKeyPrefix,
    /// `Snapshot::index_lookup` on a secondary index.
    Index(String),
}

/// The inner side of a join and its algorithm.
#[derive(Debug, Clone)]
pub(crate) enum JoinRight {
    /// The inner side is read once into memory and tried against every outer row.
    NestedLoop(Plan),
    /// The inner side is read once into a hash table on its equi-join keys.
    Hash { build: Plan, left_keys: Vec<Expr>, right_keys: Vec<Expr> },
    /// Each outer row looks its matches up by key.
    Lookup {
        table: String,
        alias: String,
        kind: LookupKind,
        /// Evaluated on the outer row; one per key column.
        keys: Vec<Expr>,
        key_types: Vec<ColumnType>,
        /// Evaluated on the inner row alone.
        filter: Option<Expr>,
    },
}

/// A join step: the rows so far (left) joined with one more source (right).
#[derive(Debug, Clone)]
pub(crate) struct Join {
    pub left: Plan,
    pub kind: JoinKind,
    pub right: JoinRight,
    /// Columns of the left input (the right side's offset in the joined row).
    pub left_width: usize,
    pub right_width: usize,
    /// Evaluated on the combined row (left ++ right).
    pub residual: Option<Expr>,
    pub condition_text: Vec<String>,
}

/// A sort key: output position, descending, NULLs first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SortKey {
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

/// `INTERSECT` or `EXCEPT` (`UNION` is [`Plan::Union`]): both hold the distinct rows of
/// the right side in a hash set and stream the left side through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetOp {
    /// Distinct left rows that the right side also has.
    Intersect,
    /// Distinct left rows that the right side does not have.
    Except,
}

impl SetOp {
    /// The operator as written in SQL.
    pub fn name(self) -> &'static str {
        match self {
            SetOp::Intersect => "INTERSECT",
            SetOp::Except => "EXCEPT",
        }
    }
}

/// The operator tree. Cloned to run a correlated subquery's plan with new outer values.
#[derive(Debug, Clone)]
pub(crate) enum Plan {
    Scan(Scan),
    System {
        table: SystemTable,
        alias: String,
        filter: Option<Expr>,
        filter_text: Vec<String>,
    },
    Values {
        rows: Vec<Row>,
    },
    /// A subquery in `FROM`, or a common table expression (`cte`: its name) read there.
    Derived {
        input: Box<Plan>,
        alias: String,
        cte: Option<String>,
    },
    Filter {
        input: Box<Plan>,
        predicate: Expr,
        text: Vec<String>,
    },
    Project {
        input: Box<Plan>,
        exprs: Vec<Expr>,
    },
    /// Joins run in another order than written (`order`: the aliases as joined); `exprs`
    /// puts the columns back in the written order.
    Reordered {
        input: Box<Plan>,
        exprs: Vec<Expr>,
        order: Vec<String>,
    },
    Join(Box<Join>),
    /// `json_each(json[, path])` in `FROM`: its arguments (no columns: constants and
    /// parameters) are evaluated when it runs (`json::each`).
    JsonEach {
        args: Vec<Expr>,
    },
    /// `SELECT count(*) FROM t` without a filter: one row of `count` copies of the table's
    /// row count, read from the maintained digest instead of scanning (`Snapshot::row_count`).
    CountRows {
        table: String,
        count: usize,
    },
    Aggregate {
        input: Box<Plan>,
        groups: Vec<Expr>,
        aggs: Vec<AggSpec>,
    },
    Distinct {
        input: Box<Plan>,
    },
    /// Window functions (`window/`): each row of `input` followed by `count` window values.
    Window {
        input: Box<Plan>,
        sorts: Vec<WindowSort>,
        count: usize,
    },
    Sort {
        input: Box<Plan>,
        keys: Vec<SortKey>,
        keep: Option<usize>,
    },
    Limit {
        input: Box<Plan>,
        offset: usize,
        limit: Option<usize>,
    },
    Trim {
        input: Box<Plan>,
        width: usize,
    },
    Union {
        inputs: Vec<Plan>,
        distinct: bool,
    },
    /// `left INTERSECT right` or `left EXCEPT right`: the right side is read first.
    SetOp {
        op: SetOp,
        left: Box<Plan>,
        right: Box<Plan>,
    },
    /// `WITH RECURSIVE name AS (anchor UNION [ALL] step)` (`cte.rs`): the anchor's rows,
    /// then `step` run on the rows the run before it gave (its [`Plan::Work`] leaves
    /// numbered `work`), until a run gives none; `distinct` drops rows seen before.
    Recursive {
        anchor: Box<Plan>,
        step: Box<Plan>,
        distinct: bool,
        work: usize,
        name: String,
    },
    /// Inside a recursive step: the rows of the run before. Replaced by them (a
    /// [`Plan::Values`]) before each run; never opened as it is.
    Work {
        work: usize,
        name: String,
    },
}

/// A column visible to name resolution.
#[derive(Debug, Clone)]
pub(crate) struct ScopeColumn {
    /// The alias (or name) of the table it belongs to.
    pub table: String,
    pub name: String,
    /// Whether `*` shows it (the right-hand copy of a `USING` column does not).
    pub in_star: bool,
    /// A key-less table's hidden identity (`rowid`, `_origin`) or a dropped column: in neither `*` nor `t.*`,
    /// selected only by name.
    pub hidden: bool,
    /// A stored table's `TIMESTAMP` column: a text constant compared with it names an
    /// instant (`Binder::time_operand`).
    pub timestamp: bool,
}

/// A table in scope and where its columns start in the combined row.
#[derive(Debug, Clone)]
pub(crate) struct ScopeTable {
    pub alias: String,
    pub offset: usize,
    pub width: usize,
    /// Position of the column that `rowid`, `_rowid_` and `oid` name: a stored table's
    /// single INTEGER primary-key column, as SQLite's `INTEGER PRIMARY KEY` rowid alias.
    pub rowid: Option<usize>,
}

/// The names SQLite gives a table's rowid.
const ROWID_NAMES: [&str; 3] = ["rowid", "_rowid_", "oid"];

/// The columns of the `FROM` clause, side by side.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub columns: Vec<ScopeColumn>,
    pub tables: Vec<ScopeTable>,
}

impl Scope {
    /// Adds a table's columns at the end.
    pub fn push_table(&mut self, alias: &str, columns: Vec<String>) -> Result<(), SqlError> {
        if self.tables.iter().any(|t| t.alias == alias) {
            return Err(SqlError::invalid(format!("ambiguous table name: {alias} appears twice in FROM")));
        }
        let offset = self.columns.len();
        self.tables.push(ScopeTable { alias: alias.to_string(), offset, width: columns.len(), rowid: None });
        for name in columns {
            self.columns.push(ScopeColumn {
                table: alias.to_string(),
                name,
                in_star: true,
                hidden: false,
                timestamp: false,
            });
        }
        Ok(())
    }

    /// Marks the `TIMESTAMP` columns of the last table pushed, a stored table of
    /// `schema`, whose columns it holds in definition order.
    pub fn mark_timestamps(&mut self, schema: &crate::schema::TableSchema) {
        let table = self.tables.last().expect("a table was pushed");
        debug_assert_eq!(table.width, schema.columns.len(), "a stored table's columns");
        let offset = table.offset;
        for (i, column) in schema.columns.iter().enumerate() {
            self.columns[offset + i].timestamp = column.ty == crate::types::ColumnType::Timestamp;
        }
    }

    /// Hides the columns of the last table pushed that are not at `visible` positions
    /// (0-based in it): a key-less table's identity, which naming still selects, and
    /// dropped columns, whose names nothing can write.
    pub fn hide_except(&mut self, visible: &[usize]) {
        let table = self.tables.last().expect("a table was pushed");
        let (offset, width) = (table.offset, table.width);
        debug_assert!(visible.iter().all(|&i| i < width));
        for i in (0..width).filter(|i| !visible.contains(i)) {
            let column = &mut self.columns[offset + i];
            column.in_star = false;
            column.hidden = true;
        }
    }

    /// Makes `rowid` of the last table pushed name its column at `column` (0-based in it).
    pub fn set_rowid(&mut self, column: usize) {
        let table = self.tables.last_mut().expect("a table was pushed");
        debug_assert!(column < table.width);
        table.rowid = Some(table.offset + column);
    }

    /// The table (index into `tables`) a column position belongs to.
    pub fn table_of(&self, column: usize) -> usize {
        self.tables.iter().rposition(|t| t.offset <= column).unwrap_or(0)
    }

    /// Resolves `[table.]name` to a column position.
    pub fn resolve(&self, table: Option<&str>, name: &str) -> Result<usize, SqlError> {
        let mut found = None;
        for (i, column) in self.columns.iter().enumerate() {
            let table_matches = table.is_none_or(|t| t == column.table);
            let reachable = !column.name.starts_with(crate::schema::UNREACHABLE_NAME_MARK);
            if table_matches && reachable && column.name == name {
                // A USING column's right-hand copy never makes a name ambiguous.
                if found.is_some() && (column.in_star || column.hidden) {
                    return Err(SqlError::AmbiguousColumn(name.to_string()));
                }
                if found.is_none() {
                    found = Some(i);
                }
            }
        }
        if let Some(found) = found {
            return Ok(found);
        }
        if let Some(rowid) = self.resolve_rowid(table, name)? {
            return Ok(rowid);
        }
        Err(self.unknown_column(table, name))
    }

    fn unknown_column(&self, table: Option<&str>, name: &str) -> SqlError {
        if let Some(t) = table.filter(|t| !self.tables.iter().any(|s| s.alias == *t)) {
            return SqlError::UnknownColumn(format!("{t}.{name} (no table {t} in FROM)"));
        }
        SqlError::UnknownColumn(table.map_or_else(|| name.to_string(), |t| format!("{t}.{name}")))
    }

    /// `rowid` (also `_rowid_`, `oid`) when no column has that name: the rowid alias of the
    /// one table in reach that has one.
    fn resolve_rowid(&self, table: Option<&str>, name: &str) -> Result<Option<usize>, SqlError> {
        if !ROWID_NAMES.contains(&name) {
            return Ok(None);
        }
        let mut aliases = self.tables.iter().filter(|t| table.is_none_or(|a| a == t.alias)).filter_map(|t| t.rowid);
        match (aliases.next(), aliases.next()) {
            (Some(_), Some(_)) => Err(SqlError::AmbiguousColumn(name.to_string())),
            (found, _) => Ok(found),
        }
    }

    /// Whether a table alias is in scope.
    pub fn has_table(&self, alias: &str) -> bool {
        self.tables.iter().any(|t| t.alias == alias)
    }
}

impl Plan {
    /// A plan producing nothing but one empty row (`SELECT` without `FROM`).
    pub fn single_row() -> Plan {
        Plan::Values { rows: vec![Vec::new()] }
    }

    /// The operators directly below this one.
    fn inputs_mut(&mut self) -> Vec<&mut Plan> {
        match self {
            Plan::Scan(_)
            | Plan::System { .. }
            | Plan::Values { .. }
            | Plan::Work { .. }
            | Plan::CountRows { .. }
            | Plan::JsonEach { .. } => vec![],
            Plan::Derived { input, .. }
            | Plan::Filter { input, .. }
            | Plan::Project { input, .. }
            | Plan::Reordered { input, .. }
            | Plan::Aggregate { input, .. }
            | Plan::Window { input, .. }
            | Plan::Distinct { input }
            | Plan::Sort { input, .. }
            | Plan::Limit { input, .. }
            | Plan::Trim { input, .. } => vec![input],
            Plan::Union { inputs, .. } => inputs.iter_mut().collect(),
            Plan::SetOp { left, right, .. } => vec![left, right],
            Plan::Recursive { anchor, step, .. } => vec![anchor, step],
            Plan::Join(join) => {
                let Join { left, right, .. } = &mut **join;
                let mut inputs = vec![left];
                match right {
                    JoinRight::NestedLoop(inner) => inputs.push(inner),
                    JoinRight::Hash { build, .. } => inputs.push(build),
                    JoinRight::Lookup { .. } => {}
                }
                inputs
            }
        }
    }

    /// Calls `f` on every expression of this operator and of every operator below it (the
    /// root of each expression tree; `f` walks into it if it needs to).
    pub fn for_each_expr_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        match self {
            Plan::Scan(scan) => scan.filter.iter_mut().for_each(&mut *f),
            Plan::System { filter, .. } => filter.iter_mut().for_each(&mut *f),
            Plan::Filter { predicate, .. } => f(predicate),
            Plan::JsonEach { args } => args.iter_mut().for_each(&mut *f),
            Plan::Project { exprs, .. } | Plan::Reordered { exprs, .. } => exprs.iter_mut().for_each(&mut *f),
            Plan::Aggregate { groups, aggs, .. } => {
                groups.iter_mut().for_each(&mut *f);
                for agg in aggs {
                    agg.arg.iter_mut().chain(agg.separator.iter_mut()).chain(agg.filter.iter_mut()).for_each(&mut *f);
                }
            }
            Plan::Window { sorts, .. } => sorts.iter_mut().flat_map(WindowSort::exprs_mut).for_each(&mut *f),
            Plan::Join(join) => {
                join.residual.iter_mut().for_each(&mut *f);
                match &mut join.right {
                    JoinRight::Hash { left_keys, right_keys, .. } => {
                        left_keys.iter_mut().chain(right_keys.iter_mut()).for_each(&mut *f)
                    }
                    JoinRight::Lookup { keys, filter, .. } => {
                        keys.iter_mut().chain(filter.iter_mut()).for_each(&mut *f)
                    }
                    JoinRight::NestedLoop(_) => {}
                }
            }
            Plan::Values { .. }
            | Plan::CountRows { .. }
            | Plan::Derived { .. }
            | Plan::Distinct { .. }
            | Plan::Sort { .. }
            | Plan::Limit { .. }
            | Plan::Trim { .. }
            | Plan::Union { .. }
            | Plan::SetOp { .. }
            | Plan::Recursive { .. }
            | Plan::Work { .. } => {}
        }
        for input in self.inputs_mut() {
            input.for_each_expr_mut(f);
        }
    }

    /// Replaces the [`Plan::Work`] leaf numbered `work` (a step has at most one:
    /// [`Plan::work_reads`]) with `rows`, a recursive step's input for one run. Returns
    /// the rows if there was no such leaf.
    pub fn fill_work(&mut self, work: usize, rows: Vec<Row>) -> Option<Vec<Row>> {
        if matches!(self, Plan::Work { work: w, .. } if *w == work) {
            *self = Plan::Values { rows };
            return None;
        }
        let mut rows = Some(rows);
        for input in self.inputs_mut() {
            rows = input.fill_work(work, rows.take()?);
        }
        rows
    }

    /// How many [`Plan::Work`] leaves numbered `work` the tree has, and whether one is
    /// below an aggregate or a window (a recursive step may read its CTE once, and not
    /// aggregate it: SQLite refuses both).
    pub fn work_reads(&mut self, work: usize) -> (usize, bool) {
        if matches!(self, Plan::Work { work: w, .. } if *w == work) {
            return (1, false);
        }
        let grouping = matches!(self, Plan::Aggregate { .. } | Plan::Window { .. });
        let (mut count, mut aggregated) = (0, false);
        for input in self.inputs_mut() {
            let (n, below) = input.work_reads(work);
            count += n;
            aggregated |= below || (grouping && n > 0);
        }
        (count, aggregated)
    }

    /// Calls `f` on every base-table scan in the tree.
    pub fn for_each_scan_mut(&mut self, f: &mut dyn FnMut(&mut Scan)) {
        if let Plan::Scan(scan) = self {
            f(scan);
        }
        for input in self.inputs_mut() {
            input.for_each_scan_mut(f);
        }
    }
}
