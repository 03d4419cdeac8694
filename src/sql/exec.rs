//! Execution: a plan opens into a stream of rows (boxed iterators over one snapshot).
//!
//! Scans, filters, projections, lookup joins, the probe side of hash joins, limits and
//! `DISTINCT` stream row by row; only a hash join's build side, a nested loop's inner side,
//! the group table of an aggregate and a sort's input are held in memory. Every row is
//! read from the same redb snapshot, so a query never sees half of a concurrent write.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use super::aggregate;
use super::expr::Expr;
use super::plan::{Access, Join, JoinKind, JoinRight, LookupKind, Plan, Row, Scan, SortKey};
use super::value::{self, KeyMap, KeyValue};
use super::{access, SqlError};
use crate::replica::Snapshot;
use crate::types::{ColumnType, Value};

/// A stream of rows.
pub(crate) type RowStream = Box<dyn Iterator<Item = Result<Row, SqlError>> + Send>;

fn from_vec(rows: Vec<Row>) -> RowStream {
    Box::new(rows.into_iter().map(Ok))
}

fn filtered(input: RowStream, predicate: Option<Expr>) -> RowStream {
    let Some(predicate) = predicate else { return input };
    Box::new(input.filter_map(move |row| match row {
        Ok(row) => match predicate.passes(&row) {
            Ok(true) => Some(Ok(row)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        },
        Err(e) => Some(Err(e)),
    }))
}

/// Replaces the placeholders of a kept plan (a correlated subquery's outer columns, a
/// statement's parameters) by this execution's values: `value_of` gives the value of a
/// placeholder expression. Every scan whose predicates gained constants chooses its access
/// path again (`o.customer = c.id` becomes an index lookup, `id = ?1` a point read); paths
/// only narrow what is read, so this never changes a result.
pub(crate) fn bind_constants(plan: &mut Plan, snap: &Snapshot, value_of: &dyn Fn(&Expr) -> Option<Value>) {
    let substitute = |e: &mut Expr| {
        let mut changed = false;
        e.for_each_child_mut(&mut |e| {
            if let Some(v) = value_of(e) {
                *e = Expr::Literal(v);
                changed = true;
            }
        });
        changed
    };
    plan.for_each_scan_mut(&mut |scan| {
        let Some(filter) = &mut scan.filter else { return };
        if !substitute(filter) {
            return;
        }
        let catalog = snap.catalog();
        if let Some(table) = catalog.table(&scan.table) {
            scan.access = access::choose(catalog, table, &filter.conjuncts(), &[]);
        }
    });
    plan.for_each_expr_mut(&mut |e| {
        substitute(e);
    });
}

/// Opens a plan against a snapshot.
pub(crate) fn open(plan: Plan, snap: &Arc<Snapshot>) -> Result<RowStream, SqlError> {
    Ok(match plan {
        Plan::Scan(scan) => open_scan(scan, snap)?,
        Plan::System { table, filter, .. } => filtered(from_vec(table.rows(snap)?), filter),
        Plan::Values { rows } => from_vec(rows),
        Plan::Derived { input, .. } => open(*input, snap)?,
        Plan::Filter { input, predicate, .. } => filtered(open(*input, snap)?, Some(predicate)),
        Plan::Project { input, exprs } | Plan::Reordered { input, exprs, .. } => {
            let input = open(*input, snap)?;
            Box::new(input.map(move |row| row.and_then(|row| exprs.iter().map(|e| e.eval(&row)).collect())))
        }
        Plan::Join(join) => open_join(*join, snap)?,
        Plan::Aggregate { input, groups, aggs } => from_vec(aggregate::group(open(*input, snap)?, &groups, &aggs)?),
        Plan::Distinct { input } => distinct(open(*input, snap)?),
        Plan::Sort { input, keys, keep } => from_vec(sort(open(*input, snap)?, &keys, keep)?),
        Plan::Limit { input, offset, limit } => {
            let rows = open(*input, snap)?.skip(offset);
            match limit {
                Some(limit) => Box::new(rows.take(limit)),
                None => Box::new(rows),
            }
        }
        Plan::Trim { input, width } => Box::new(open(*input, snap)?.map(move |row| {
            row.map(|mut row| {
                row.truncate(width);
                row
            })
        })),
        Plan::Union { inputs, distinct: dedupe } => {
            let mut chained: RowStream = Box::new(std::iter::empty());
            for input in inputs {
                chained = Box::new(chained.chain(open(input, snap)?));
            }
            if dedupe {
                distinct(chained)
            } else {
                chained
            }
        }
    })
}

fn rows_of(iter: crate::replica::RowIter) -> RowStream {
    Box::new(iter.map(|r| r.map_err(SqlError::from)))
}

fn as_slices(bound: &Bound<Vec<Value>>) -> Bound<&[Value]> {
    match bound {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn open_scan(scan: Scan, snap: &Arc<Snapshot>) -> Result<RowStream, SqlError> {
    let rows = match &scan.access {
        Access::Full => rows_of(snap.scan(&scan.table)?),
        Access::Empty => from_vec(Vec::new()),
        Access::Point(key) => from_vec(snap.get(&scan.table, key)?.into_iter().collect()),
        Access::Range { lower, upper } => rows_of(snap.range(&scan.table, as_slices(lower), as_slices(upper))?),
        Access::Index { name, values } => from_vec(snap.index_lookup(name, values)?),
    };
    Ok(filtered(rows, scan.filter))
}

fn distinct(input: RowStream) -> RowStream {
    let mut seen: KeyMap<Vec<KeyValue>, ()> = KeyMap::default();
    Box::new(input.filter(move |row| match row {
        Ok(row) => seen.insert(row.iter().map(value::key_of).collect(), ()).is_none(),
        Err(_) => true,
    }))
}

fn compare_rows(a: &[Value], b: &[Value], keys: &[SortKey]) -> Ordering {
    for key in keys {
        let (x, y) = (&a[key.column], &b[key.column]);
        let order = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if key.nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if key.nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) if key.descending => value::compare(y, x),
            (false, false) => value::compare(x, y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

/// Sorts; with `keep` (LIMIT + OFFSET) only the first `keep` rows are kept, and memory
/// stays within twice that.
fn sort(input: RowStream, keys: &[SortKey], keep: Option<usize>) -> Result<Vec<Row>, SqlError> {
    let mut rows = Vec::new();
    let cmp = |a: &Row, b: &Row| compare_rows(a, b, keys);
    for row in input {
        rows.push(row?);
        if let Some(k) = keep {
            if rows.len() >= k.max(1024) * 2 {
                rows.sort_by(cmp);
                rows.truncate(k);
            }
        }
    }
    rows.sort_by(cmp);
    if let Some(k) = keep {
        rows.truncate(k);
    }
    Ok(rows)
}

/// Evaluates join keys into `key`; `false` when one is NULL (NULL never equals anything).
fn eval_key(exprs: &[Expr], row: &[Value], key: &mut Vec<KeyValue>) -> Result<bool, SqlError> {
    key.clear();
    for e in exprs {
        let v = e.eval(row)?;
        if v.is_null() {
            return Ok(false);
        }
        key.push(value::key_of_owned(v));
    }
    Ok(true)
}

/// What a join does with each outer row: the inner rows that may match it.
enum Matcher {
    All(Vec<Row>),
    Hash {
        table: KeyMap<Vec<KeyValue>, Vec<Row>>,
        left_keys: Vec<Expr>,
        scratch: Vec<KeyValue>,
    },
    Lookup {
        snap: Arc<Snapshot>,
        table: String,
        kind: LookupKind,
        keys: Vec<Expr>,
        types: Vec<ColumnType>,
        filter: Option<Expr>,
    },
}

type Out<'a> = &'a mut dyn FnMut(&[Value]) -> Result<(), SqlError>;

impl Matcher {
    fn candidates(&mut self, left: &[Value], out: Out<'_>) -> Result<(), SqlError> {
        match self {
            Matcher::All(rows) => rows.iter().try_for_each(|r| out(r)),
            Matcher::Hash { table, left_keys, scratch } => {
                if !eval_key(left_keys, left, scratch)? {
                    return Ok(());
                }
                table.get(scratch.as_slice()).map_or(Ok(()), |rows| rows.iter().try_for_each(|r| out(r)))
            }
            Matcher::Lookup { snap, table, kind, keys, types, filter } => {
                let mut values = Vec::with_capacity(keys.len());
                for (e, ty) in keys.iter().zip(types.iter()) {
                    // A key that cannot equal any stored value of the column matches nothing.
                    let Some(v) = access::key_value(&e.eval(left)?, *ty) else { return Ok(()) };
                    values.push(v);
                }
                let rows: Vec<Row> = match kind {
                    LookupKind::PrimaryKey => snap.get(table, &values)?.into_iter().collect(),
                    LookupKind::PrimaryKeyPrefix => {
                        let bound = Bound::Included(values.as_slice());
                        snap.range(table, bound, bound)?.collect::<Result<_, _>>()?
                    }
                    LookupKind::Index(index) => snap.index_lookup(index, &values)?,
                };
                for row in rows {
                    if let Some(f) = filter {
                        if !f.passes(&row)? {
                            continue;
                        }
                    }
                    out(&row)?;
                }
                Ok(())
            }
        }
    }
}

fn build_matcher(right: JoinRight, snap: &Arc<Snapshot>) -> Result<Matcher, SqlError> {
    Ok(match right {
        JoinRight::NestedLoop(plan) => Matcher::All(open(plan, snap)?.collect::<Result<_, _>>()?),
        JoinRight::Hash { build, left_keys, right_keys } => {
            let mut table: KeyMap<Vec<KeyValue>, Vec<Row>> = KeyMap::default();
            let mut key = Vec::new();
            for row in open(build, snap)? {
                let row = row?;
                if eval_key(&right_keys, &row, &mut key)? {
                    match table.get_mut(key.as_slice()) {
                        Some(rows) => rows.push(row),
                        None => {
                            table.insert(key.clone(), vec![row]);
                        }
                    }
                }
            }
            Matcher::Hash { table, left_keys, scratch: Vec::new() }
        }
        JoinRight::Lookup { table, kind, keys, key_types, filter, .. } => {
            Matcher::Lookup { snap: Arc::clone(snap), table, kind, keys, types: key_types, filter }
        }
    })
}

/// Streams the join: each outer row's matches are buffered, then handed out.
struct JoinIter {
    left: RowStream,
    matcher: Matcher,
    kind: JoinKind,
    right_width: usize,
    residual: Option<Expr>,
    pending: VecDeque<Row>,
}

impl JoinIter {
    fn join_row(&mut self, left: Row) -> Result<(), SqlError> {
        let JoinIter { matcher, residual, pending, .. } = self;
        let before = pending.len();
        matcher.candidates(&left, &mut |right| {
            let mut row = Vec::with_capacity(left.len() + right.len());
            row.extend_from_slice(&left);
            row.extend_from_slice(right);
            if residual.as_ref().map_or(Ok(true), |r| r.passes(&row))? {
                pending.push_back(row);
            }
            Ok(())
        })?;
        if pending.len() == before && self.kind == JoinKind::Left {
            let mut row = left;
            row.resize(row.len() + self.right_width, Value::Null);
            self.pending.push_back(row);
        }
        Ok(())
    }
}

impl Iterator for JoinIter {
    type Item = Result<Row, SqlError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(Ok(row));
            }
            let left = match self.left.next()? {
                Ok(row) => row,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = self.join_row(left) {
                return Some(Err(e));
            }
        }
    }
}

fn open_join(join: Join, snap: &Arc<Snapshot>) -> Result<RowStream, SqlError> {
    let Join { left, kind, right, right_width, residual, .. } = join;
    let matcher = build_matcher(right, snap)?;
    let left = open(left, snap)?;
    Ok(Box::new(JoinIter { left, matcher, kind, right_width, residual, pending: VecDeque::new() }))
}
