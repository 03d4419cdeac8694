//! Execution: a plan opens into a stream of rows (boxed iterators over one snapshot).
//!
//! Scans, filters, projections, lookup joins, the probe side of hash joins, limits and
//! `DISTINCT` stream row by row; only a hash join's build side, a nested loop's inner side,
//! the group table of an aggregate, a window operator's input and a sort's input are held
//! in memory. Every row is
//! read from the same redb snapshot, so a query never sees half of a concurrent write.
//!
//! Every operator that holds rows (sort, hash and nested-loop build sides, a join's matches
//! for one outer row, `DISTINCT`, group tables, index lookups, system tables) accounts their
//! bytes in a [`Reservation`] against the statement's budget, given back when the operator's
//! stream is dropped; every loop over rows checks the statement's interrupt.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use super::aggregate;
use super::expr::Expr;
use super::limits::{self, Limits, Reservation};
use super::plan::{Access, Join, JoinKind, JoinRight, LookupKind, Plan, Row, Scan, SetOp, SortKey};
use super::value::{self, KeyMap, KeyValue};
use super::{access, window, SqlError};
use crate::replica::Snapshot;
use crate::types::{ColumnType, Value};

/// A stream of rows.
pub(crate) type RowStream = Box<dyn Iterator<Item = Result<Row, SqlError>> + Send>;

fn from_vec(rows: Vec<Row>) -> RowStream {
    Box::new(rows.into_iter().map(Ok))
}

/// Streams rows held in memory, giving their bytes back to the budget as they are handed
/// out.
fn held(rows: Vec<Row>, mut reservation: Reservation) -> RowStream {
    Box::new(rows.into_iter().map(move |row| {
        reservation.shrink(limits::row_bytes(&row));
        Ok(row)
    }))
}

/// Rows read into memory (an index lookup, a system table), accounted.
fn materialized(rows: Vec<Row>, limits: &Limits) -> Result<RowStream, SqlError> {
    let mut reservation = limits.reservation();
    reservation.grow(rows.iter().map(|r| limits::row_bytes(r)).sum())?;
    Ok(held(rows, reservation))
}

/// A stream that fails once the statement is interrupted: every base-table read goes
/// through one, so every loop that pulls rows notices an interrupt within a row.
fn checked(input: RowStream, limits: &Limits) -> RowStream {
    let limits = limits.clone();
    Box::new(input.map(move |row| {
        limits.check()?;
        row
    }))
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

/// Opens a plan against a snapshot, under the statement's limits.
pub(crate) fn open(plan: Plan, snap: &Arc<Snapshot>, limits: &Limits) -> Result<RowStream, SqlError> {
    limits.check()?;
    Ok(match plan {
        Plan::Scan(scan) => open_scan(scan, snap, limits)?,
        Plan::System { table, filter, .. } => filtered(materialized(table.rows(snap)?, limits)?, filter),
        Plan::Values { rows } => from_vec(rows),
        Plan::JsonEach { args } => {
            let values = args.iter().map(|e| e.eval(&[])).collect::<Result<Vec<_>, _>>()?;
            materialized(super::json::each(&values)?, limits)?
        }
        Plan::CountRows { table, count } => {
            let rows = i64::try_from(snap.row_count(&table)?).map_err(|_| SqlError::IntegerOverflow)?;
            from_vec(vec![vec![Value::Integer(rows); count]])
        }
        Plan::Derived { input, .. } => open(*input, snap, limits)?,
        Plan::Filter { input, predicate, .. } => filtered(open(*input, snap, limits)?, Some(predicate)),
        Plan::Project { input, exprs } | Plan::Reordered { input, exprs, .. } => {
            let input = open(*input, snap, limits)?;
            Box::new(input.map(move |row| row.and_then(|row| exprs.iter().map(|e| e.eval(&row)).collect())))
        }
        Plan::Join(join) => open_join(*join, snap, limits)?,
        Plan::Aggregate { input, groups, aggs } => {
            let (rows, reservation) = aggregate::group(open(*input, snap, limits)?, &groups, &aggs, limits)?;
            held(rows, reservation)
        }
        Plan::Window { input, sorts, count } => {
            let (rows, reservation) = window::run(open(*input, snap, limits)?, &sorts, count, limits)?;
            held(rows, reservation)
        }
        Plan::Distinct { input } => distinct(open(*input, snap, limits)?, limits),
        Plan::Sort { input, keys, keep } => {
            let (rows, reservation) = sort(open(*input, snap, limits)?, &keys, keep, limits)?;
            held(rows, reservation)
        }
        Plan::Limit { input, offset, limit } => {
            let rows = open(*input, snap, limits)?.skip(offset);
            match limit {
                Some(limit) => Box::new(rows.take(limit)),
                None => Box::new(rows),
            }
        }
        Plan::Trim { input, width } => Box::new(open(*input, snap, limits)?.map(move |row| {
            row.map(|mut row| {
                row.truncate(width);
                row
            })
        })),
        Plan::Union { inputs, distinct: dedupe } => {
            // One flat sequence of inputs (not a chain of chains, which would nest one
            // `next` call per term).
            let streams = inputs.into_iter().map(|input| open(input, snap, limits)).collect::<Result<Vec<_>, _>>()?;
            let chained: RowStream = Box::new(streams.into_iter().flatten());
            if dedupe {
                distinct(chained, limits)
            } else {
                chained
            }
        }
        Plan::SetOp { op, left, right } => {
            // The right side is read whole first, as SQLite does.
            let right = open(*right, snap, limits)?;
            let (rows, reservation) = set_op(op, open(*left, snap, limits)?, right, limits)?;
            held(rows, reservation)
        }
        Plan::Recursive { anchor, step, distinct, work, .. } => {
            let current = open(*anchor, snap, limits)?;
            Box::new(Recursion {
                step: *step,
                work,
                distinct,
                snap: Arc::clone(snap),
                limits: limits.clone(),
                current,
                produced: Vec::new(),
                produced_bytes: 0,
                input_bytes: 0,
                seen: KeyMap::default(),
                reservation: limits.reservation(),
                done: false,
            })
        }
        // Only a recursive step reads it, and `Recursion` replaces it before each run: one
        // left is a read from elsewhere (a subquery of the step), which SQLite refuses too.
        Plan::Work { name, .. } => {
            return Err(SqlError::invalid(format!(
                "the recursive table {name} may be read only in the FROM clause of its recursive SELECT"
            )))
        }
    })
}

/// A recursive CTE running: the rows of the current run (the anchor first), kept for the
/// next run as they are handed out; the next run starts when the current one ends.
struct Recursion {
    step: Plan,
    work: usize,
    distinct: bool,
    snap: Arc<Snapshot>,
    limits: Limits,
    current: RowStream,
    /// The rows the current run has given: the next run's input, and their bytes.
    produced: Vec<Row>,
    produced_bytes: usize,
    /// Bytes of the current run's input (held by its plan), accounted until the run ends.
    input_bytes: usize,
    /// `UNION`: every row given so far.
    seen: KeyMap<Vec<KeyValue>, ()>,
    /// The rows kept (`produced` and `seen`), accounted while kept.
    reservation: Reservation,
    done: bool,
}

impl Recursion {
    /// The next row of the current run that is new; `None` when the run is over.
    fn next_of_run(&mut self) -> Option<Result<Row, SqlError>> {
        loop {
            let row = match self.current.next()? {
                Ok(row) => row,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = self.limits.check() {
                return Some(Err(e));
            }
            if self.distinct {
                match self.seen.entry(row_key(&row)) {
                    Entry::Occupied(_) => continue,
                    Entry::Vacant(slot) => {
                        if let Err(e) = self.reservation.grow(key_bytes(&row)) {
                            return Some(Err(e));
                        }
                        slot.insert(());
                    }
                }
            }
            let bytes = limits::row_bytes(&row);
            if let Err(e) = self.reservation.grow(bytes) {
                return Some(Err(e));
            }
            self.produced_bytes += bytes;
            self.produced.push(row.clone());
            return Some(Ok(row));
        }
    }

    /// Starts the next run on the rows the last one gave; false when it gave none.
    fn start_run(&mut self) -> Result<bool, SqlError> {
        if self.produced.is_empty() {
            return Ok(false);
        }
        // The last run's input is let go; this run's (the rows the last one gave, already
        // accounted as they came) is held by the run's plan until the next run starts.
        self.reservation.shrink(self.input_bytes);
        let input = std::mem::take(&mut self.produced);
        self.input_bytes = std::mem::take(&mut self.produced_bytes);
        let mut step = self.step.clone();
        let unread = step.fill_work(self.work, input);
        debug_assert!(unread.is_none(), "the planner checked that the step reads its CTE once");
        self.current = open(step, &self.snap, &self.limits)?;
        Ok(true)
    }
}

impl Iterator for Recursion {
    type Item = Result<Row, SqlError>;

    fn next(&mut self) -> Option<Result<Row, SqlError>> {
        while !self.done {
            if let Some(row) = self.next_of_run() {
                return Some(row);
            }
            match self.start_run() {
                Ok(true) => {}
                Ok(false) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The hash key of a row for `DISTINCT` and the set operations: NULLs equal, `1` = `1.0`,
/// TEXT by its bytes.
fn row_key(row: &[Value]) -> Vec<KeyValue> {
    row.iter().map(value::key_of).collect()
}

/// The distinct keys of `input`'s rows, accounted in the reservation returned.
fn key_set(input: RowStream, limits: &Limits) -> Result<(KeyMap<Vec<KeyValue>, ()>, Reservation), SqlError> {
    let mut set: KeyMap<Vec<KeyValue>, ()> = KeyMap::default();
    let mut reservation = limits.reservation();
    for row in input {
        let row = row?;
        limits.check()?;
        if let Entry::Vacant(slot) = set.entry(row_key(&row)) {
            reservation.grow(key_bytes(&row))?;
            slot.insert(());
        }
    }
    Ok((set, reservation))
}

/// `left INTERSECT right` / `left EXCEPT right`: the distinct left rows the right side has
/// (has not), in the order they first come, accounted in the reservation returned. Of equal
/// left rows the last one read is handed out, as in SQLite (which keeps the left rows in an
/// index, where an equal key replaces the one before): `SELECT 1 UNION ALL SELECT 1.0
/// INTERSECT SELECT 1` is `1.0`.
fn set_op(op: SetOp, left: RowStream, right: RowStream, limits: &Limits) -> Result<(Vec<Row>, Reservation), SqlError> {
    let (right, right_reservation) = key_set(right, limits)?;
    let wanted = op == SetOp::Intersect;
    let mut positions: KeyMap<Vec<KeyValue>, usize> = KeyMap::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut reservation = limits.reservation();
    for row in left {
        let row = row?;
        limits.check()?;
        let key = row_key(&row);
        if right.contains_key(&key) != wanted {
            continue;
        }
        match positions.entry(key) {
            // Equal keys account equal bytes (`1` and `1.0` are both one number).
            Entry::Occupied(slot) => rows[*slot.get()] = row,
            Entry::Vacant(slot) => {
                reservation.grow(key_bytes(&row) + limits::row_bytes(&row))?;
                slot.insert(rows.len());
                rows.push(row);
            }
        }
    }
    drop((right, right_reservation, positions));
    // What stays held is the rows, given back as they are handed out.
    reservation.resize(rows.iter().map(|r| limits::row_bytes(r)).sum())?;
    Ok((rows, reservation))
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

fn open_scan(scan: Scan, snap: &Arc<Snapshot>, limits: &Limits) -> Result<RowStream, SqlError> {
    let rows = match &scan.access {
        Access::Full => rows_of(snap.scan(&scan.table)?),
        Access::Empty => from_vec(Vec::new()),
        Access::Point(key) => from_vec(snap.get(&scan.table, key)?.into_iter().collect()),
        Access::Range { lower, upper } => rows_of(snap.range(&scan.table, as_slices(lower), as_slices(upper))?),
        Access::Index { name, values } => materialized(snap.index_lookup(name, values)?, limits)?,
        Access::TimeRange { lower, upper, .. } => {
            let times = crate::replica::TimeRange { lower: *lower, upper: *upper };
            rows_of(snap.append_scan(&scan.table, Some(times))?)
        }
    };
    // Checked before the filter: a filter that rejects every row still stops.
    Ok(filtered(checked(rows, limits), scan.filter))
}

/// Bytes a hash key of `row`'s values holds, as accounted.
fn key_bytes(row: &[Value]) -> usize {
    limits::row_bytes(row) + limits::HASH_ENTRY_OVERHEAD_BYTES
}

fn distinct(input: RowStream, limits: &Limits) -> RowStream {
    let mut seen: KeyMap<Vec<KeyValue>, ()> = KeyMap::default();
    let mut reservation = limits.reservation();
    Box::new(input.filter_map(move |row| match row {
        Ok(row) => {
            let key = row_key(&row);
            if seen.contains_key(&key) {
                return None;
            }
            if let Err(e) = reservation.grow(key_bytes(&row)) {
                return Some(Err(e));
            }
            seen.insert(key, ());
            Some(Ok(row))
        }
        Err(e) => Some(Err(e)),
    }))
}

pub(crate) fn compare_rows(a: &[Value], b: &[Value], keys: &[SortKey]) -> Ordering {
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
/// stays within twice that. The rows held are accounted; an interrupt also ends the sort
/// itself (its comparisons stop comparing, and the result is discarded).
fn sort(
    input: RowStream,
    keys: &[SortKey],
    keep: Option<usize>,
    limits: &Limits,
) -> Result<(Vec<Row>, Reservation), SqlError> {
    let mut rows = Vec::new();
    let mut reservation = limits.reservation();
    let comparisons = std::cell::Cell::new(0u32);
    let cmp = |a: &Row, b: &Row| {
        comparisons.set(comparisons.get().wrapping_add(1));
        if comparisons.get().is_multiple_of(1024) && limits.check().is_err() {
            return Ordering::Equal;
        }
        compare_rows(a, b, keys)
    };
    let truncate = |rows: &mut Vec<Row>, reservation: &mut Reservation, k: usize| {
        let dropped: usize = rows.iter().skip(k).map(|r| limits::row_bytes(r)).sum();
        rows.truncate(k);
        reservation.shrink(dropped);
    };
    for row in input {
        let row = row?;
        reservation.grow(limits::row_bytes(&row) + std::mem::size_of::<Row>())?;
        rows.push(row);
        if let Some(k) = keep {
            if rows.len() >= k.max(1024) * 2 {
                rows.sort_by(cmp);
                limits.check()?;
                truncate(&mut rows, &mut reservation, k);
            }
        }
    }
    rows.sort_by(cmp);
    limits.check()?;
    if let Some(k) = keep {
        truncate(&mut rows, &mut reservation, k);
    }
    Ok((rows, reservation))
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
    /// The inner rows, whether each joined an outer row yet (a FULL JOIN emits the others
    /// at the end), and the bytes they hold (given back when the join is dropped).
    All { rows: Vec<Row>, matched: Vec<bool>, _reservation: Reservation },
    /// The inner rows and, by join key, the positions of the rows with that key.
    Hash {
        rows: Vec<Row>,
        matched: Vec<bool>,
        table: KeyMap<Vec<KeyValue>, Vec<usize>>,
        left_keys: Vec<Expr>,
        scratch: Vec<KeyValue>,
        _reservation: Reservation,
    },
    Lookup {
        snap: Arc<Snapshot>,
        table: String,
        kind: LookupKind,
        keys: Vec<Expr>,
        types: Vec<ColumnType>,
        filter: Option<Expr>,
        /// The rows of one lookup, while they are tried.
        scratch: Reservation,
    },
}

/// Takes one candidate inner row; `true` when it joined (passed the join's residual).
type Out<'a> = &'a mut dyn FnMut(&[Value]) -> Result<bool, SqlError>;

/// Hands each of `rows` at `positions` to `out`, checking the interrupt before each (a
/// cross join's inner loop runs here, so this is what stops it), and marks those that
/// joined.
fn each(
    rows: &[Row],
    positions: impl Iterator<Item = usize>,
    matched: &mut [bool],
    limits: &Limits,
    out: Out<'_>,
) -> Result<(), SqlError> {
    for i in positions {
        limits.check()?;
        // Only a FULL JOIN tracks matches (`matched` is empty otherwise).
        if out(&rows[i])? {
            if let Some(m) = matched.get_mut(i) {
                *m = true;
            }
        }
    }
    Ok(())
}

impl Matcher {
    fn candidates(&mut self, left: &[Value], limits: &Limits, out: Out<'_>) -> Result<(), SqlError> {
        match self {
            Matcher::All { rows, matched, .. } => each(rows, 0..rows.len(), matched, limits, out),
            Matcher::Hash { rows, matched, table, left_keys, scratch, .. } => {
                if !eval_key(left_keys, left, scratch)? {
                    return Ok(());
                }
                match table.get(scratch.as_slice()) {
                    Some(positions) => each(rows, positions.iter().copied(), matched, limits, out),
                    None => Ok(()),
                }
            }
            Matcher::Lookup { snap, table, kind, keys, types, filter, scratch } => {
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
                scratch.resize(rows.iter().map(|r| limits::row_bytes(r)).sum())?;
                for row in rows {
                    limits.check()?;
                    if let Some(f) = filter {
                        if !f.passes(&row)? {
                            continue;
                        }
                    }
                    out(&row)?;
                }
                scratch.clear();
                Ok(())
            }
        }
    }

    /// The inner rows no outer row joined (a FULL JOIN's right-only rows); a lookup join
    /// has none to offer (a FULL JOIN is never planned as one).
    fn unmatched(&self) -> Vec<&Row> {
        match self {
            Matcher::All { rows, matched, .. } | Matcher::Hash { rows, matched, .. } => {
                rows.iter().zip(matched).filter(|(_, m)| !**m).map(|(r, _)| r).collect()
            }
            Matcher::Lookup { .. } => Vec::new(),
        }
    }
}

/// The inner side of a join; `full` keeps what a FULL JOIN needs at the end: whether each
/// inner row joined, and the rows whose key is NULL (they join nothing).
fn build_matcher(right: JoinRight, full: bool, snap: &Arc<Snapshot>, limits: &Limits) -> Result<Matcher, SqlError> {
    let matched = |rows: &Vec<Row>| if full { vec![false; rows.len()] } else { Vec::new() };
    let mut reservation = limits.reservation();
    Ok(match right {
        JoinRight::NestedLoop(plan) => {
            let mut rows = Vec::new();
            for row in open(plan, snap, limits)? {
                let row = row?;
                reservation.grow(limits::row_bytes(&row))?;
                rows.push(row);
            }
            Matcher::All { matched: matched(&rows), rows, _reservation: reservation }
        }
        JoinRight::Hash { build, left_keys, right_keys } => {
            let mut table: KeyMap<Vec<KeyValue>, Vec<usize>> = KeyMap::default();
            let mut rows = Vec::new();
            let mut key = Vec::new();
            for row in open(build, snap, limits)? {
                let row = row?;
                // A row whose key is NULL joins nothing, but a FULL JOIN still emits it.
                let keyed = eval_key(&right_keys, &row, &mut key)?;
                let bytes = limits::row_bytes(&row) + std::mem::size_of::<usize>();
                match table.get_mut(key.as_slice()).filter(|_| keyed) {
                    Some(positions) => {
                        reservation.grow(bytes)?;
                        positions.push(rows.len());
                    }
                    None if keyed => {
                        let key_bytes = std::mem::size_of::<Vec<KeyValue>>()
                            + key.iter().map(value::key_value_bytes).sum::<usize>()
                            + limits::HASH_ENTRY_OVERHEAD_BYTES;
                        reservation.grow(bytes + key_bytes)?;
                        table.insert(key.clone(), vec![rows.len()]);
                    }
                    None if full => reservation.grow(bytes)?,
                    None => continue,
                }
                rows.push(row);
            }
            Matcher::Hash {
                matched: matched(&rows),
                rows,
                table,
                left_keys,
                scratch: Vec::new(),
                _reservation: reservation,
            }
        }
        JoinRight::Lookup { table, kind, keys, key_types, filter, .. } => {
            let (snap, types) = (Arc::clone(snap), key_types);
            Matcher::Lookup { snap, table, kind, keys, types, filter, scratch: reservation }
        }
    })
}

/// Streams the join: each outer row's matches are buffered, then handed out.
struct JoinIter {
    left: RowStream,
    matcher: Matcher,
    kind: JoinKind,
    left_width: usize,
    right_width: usize,
    /// Whether the outer rows ran out (a FULL JOIN then emits the unmatched inner rows).
    left_done: bool,
    residual: Option<Expr>,
    pending: VecDeque<Row>,
    /// The bytes of `pending` (the matches of one outer row).
    pending_bytes: Reservation,
    limits: Limits,
}

impl JoinIter {
    fn join_row(&mut self, left: Row) -> Result<(), SqlError> {
        let JoinIter { matcher, residual, pending, pending_bytes, limits, .. } = self;
        let before = pending.len();
        matcher.candidates(&left, limits, &mut |right| {
            let mut row = Vec::with_capacity(left.len() + right.len());
            row.extend_from_slice(&left);
            row.extend_from_slice(right);
            if residual.as_ref().map_or(Ok(true), |r| r.passes(&row))? {
                pending_bytes.grow(limits::row_bytes(&row))?;
                pending.push_back(row);
                return Ok(true);
            }
            Ok(false)
        })?;
        if pending.len() == before && matches!(self.kind, JoinKind::Left | JoinKind::Full) {
            let mut row = left;
            row.resize(row.len() + self.right_width, Value::Null);
            self.pending.push_back(row);
        }
        Ok(())
    }
}

impl JoinIter {
    /// Queues the inner rows no outer row joined, padded on the left with NULLs.
    fn queue_unmatched(&mut self) -> Result<(), SqlError> {
        for right in self.matcher.unmatched() {
            self.limits.check()?;
            let mut row = vec![Value::Null; self.left_width];
            row.extend_from_slice(right);
            self.pending_bytes.grow(limits::row_bytes(&row))?;
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
                if self.pending.is_empty() {
                    self.pending_bytes.clear();
                }
                return Some(Ok(row));
            }
            if self.left_done {
                return None;
            }
            let left = match self.left.next() {
                Some(Ok(row)) => row,
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.left_done = true;
                    if self.kind == JoinKind::Full {
                        if let Err(e) = self.queue_unmatched() {
                            return Some(Err(e));
                        }
                    }
                    continue;
                }
            };
            if let Err(e) = self.join_row(left) {
                return Some(Err(e));
            }
        }
    }
}

fn open_join(join: Join, snap: &Arc<Snapshot>, limits: &Limits) -> Result<RowStream, SqlError> {
    let Join { left, kind, right, left_width, right_width, residual, .. } = join;
    let matcher = build_matcher(right, kind == JoinKind::Full, snap, limits)?;
    let left = open(left, snap, limits)?;
    let (pending, pending_bytes, limits) = (VecDeque::new(), limits.reservation(), limits.clone());
    Ok(Box::new(JoinIter {
        left,
        matcher,
        kind,
        left_width,
        right_width,
        left_done: false,
        residual,
        pending,
        pending_bytes,
        limits,
    }))
}
