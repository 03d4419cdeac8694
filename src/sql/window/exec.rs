//! The window operator: holds its input, sorts it once per [`WindowSort`], and computes
//! every window function partition by partition.
//!
//! Memory: the rows held (with room for the window values, and the text of any value a
//! window function copies in), each sort's keys, and one partition's argument values are
//! reserved against the statement's budget before they are built; the interrupt is checked
//! for every row read and every value computed, and during the sorts.

use std::cmp::Ordering;

use super::super::aggregate::AggFunc;
use super::super::exec::compare_rows;
use super::super::limits::{self, Limits, Reservation};
use super::super::plan::{Row, SortKey};
use super::super::value::{self, Num};
use super::super::SqlError;
use super::frame::{self, Peers, Slider};
use super::{WinKind, WindowFunc, WindowSort};
use crate::types::Value;

/// Runs the window functions of `sorts` (`count` values in all) over `input`: each output
/// row is its input row followed by the window values. Rows come out in the order of the
/// last sort, as in SQLite. The reservation holds the rows' bytes.
pub(crate) fn run(
    input: impl Iterator<Item = Result<Row, SqlError>>,
    sorts: &[WindowSort],
    count: usize,
    limits: &Limits,
) -> Result<(Vec<Row>, Reservation), SqlError> {
    let mut reservation = limits.reservation();
    let mut rows: Vec<Row> = Vec::new();
    let mut width = None;
    for row in input {
        limits.check()?;
        let mut row = row?;
        let width = *width.get_or_insert(row.len());
        debug_assert_eq!(row.len(), width, "the rows of one input have one width");
        // The row as it will be held: with its window values (NULL until computed).
        reservation.grow(limits::row_bytes(&row) + count * std::mem::size_of::<Value>())?;
        row.resize(width + count, Value::Null);
        rows.push(row);
    }
    let width = width.unwrap_or(0);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for sort in sorts {
        order = run_sort(&mut rows, width, sort, &mut reservation, limits)?;
    }
    let out: Vec<Row> = order.iter().map(|&i| std::mem::take(&mut rows[i])).collect();
    reservation.resize(out.iter().map(|r| limits::row_bytes(r)).sum())?;
    Ok((out, reservation))
}

/// Computes the functions of one sort into their slots (after the first `width` values of
/// each row); returns the row positions in the sort's order.
fn run_sort(
    rows: &mut [Row],
    width: usize,
    sort: &WindowSort,
    reservation: &mut Reservation,
    limits: &Limits,
) -> Result<Vec<usize>, SqlError> {
    let (order, keys, _keys_reservation) = sorted(rows, sort, limits)?;
    let sort_keys = sort_keys(sort);
    let (partition_keys, order_keys) = sort_keys.split_at(sort.partition.len());
    let range_values = sort.funcs.iter().any(|f| f.frame.is_range_offset());
    let mut scratch = limits.reservation();
    let mut at = 0;
    while at < order.len() {
        let mut end = at + 1;
        while end < order.len() && compare_rows(&keys[order[at]], &keys[order[end]], partition_keys).is_eq() {
            end += 1;
        }
        let partition = &order[at..end];
        let peers = peers(&keys, partition, order_keys, range_values, limits)?;
        for func in &sort.funcs {
            let part = Partition { rows, positions: partition, peers: &peers, limits };
            let values = compute(func, &part, &mut scratch)?;
            for (&i, v) in partition.iter().zip(values) {
                // What the value holds beyond the slot already reserved for it.
                reservation.grow(limits::value_bytes(&v) - std::mem::size_of::<Value>())?;
                rows[i][width + func.slot] = v;
            }
            scratch.clear();
        }
        at = end;
    }
    Ok(order)
}

/// The sort keys of a window: the partition terms ascending (NULLs first), then its
/// `ORDER BY` terms, over the values of [`sort_row_keys`].
fn sort_keys(sort: &WindowSort) -> Vec<SortKey> {
    let partition = (0..sort.partition.len()).map(|column| SortKey { column, descending: false, nulls_first: true });
    let order = sort.order.iter().enumerate().map(|(i, t)| SortKey {
        column: sort.partition.len() + i,
        descending: t.descending,
        nulls_first: t.nulls_first,
    });
    partition.chain(order).collect()
}

/// A row's partition and order values.
fn sort_row_keys(row: &[Value], sort: &WindowSort) -> Result<Row, SqlError> {
    sort.partition.iter().chain(sort.order.iter().map(|t| &t.expr)).map(|e| e.eval(row)).collect()
}

/// The positions of `rows` in window order (stable: equal rows keep their input order),
/// with every row's key values and the reservation that holds them.
fn sorted(rows: &[Row], sort: &WindowSort, limits: &Limits) -> Result<(Vec<usize>, Vec<Row>, Reservation), SqlError> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut reservation = limits.reservation();
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        limits.check()?;
        let key = sort_row_keys(row, sort)?;
        reservation.grow(limits::row_bytes(&key) + std::mem::size_of::<usize>())?;
        keys.push(key);
    }
    let sort_keys = sort_keys(sort);
    if !sort_keys.is_empty() {
        let comparisons = std::cell::Cell::new(0u32);
        order.sort_by(|&a, &b| {
            comparisons.set(comparisons.get().wrapping_add(1));
            // An interrupt ends the sort early; the check after it reports the interrupt.
            if comparisons.get().is_multiple_of(1024) && limits.check().is_err() {
                return Ordering::Equal;
            }
            compare_rows(&keys[a], &keys[b], &sort_keys)
        });
        limits.check()?;
    }
    Ok((order, keys, reservation))
}

/// The peer groups of a partition (rows equal in every `ORDER BY` term).
fn peers(
    keys: &[Row],
    partition: &[usize],
    order_keys: &[SortKey],
    range_values: bool,
    limits: &Limits,
) -> Result<Peers, SqlError> {
    let mut group = Vec::with_capacity(partition.len());
    let mut starts = vec![0];
    for (j, &i) in partition.iter().enumerate() {
        limits.check()?;
        if j > 0 && !compare_rows(&keys[partition[j - 1]], &keys[i], order_keys).is_eq() {
            starts.push(j);
        }
        group.push(starts.len() - 1);
    }
    starts.push(partition.len());
    let values = if range_values { range_values_of(keys, partition, order_keys)? } else { Vec::new() };
    // NULLs sort together at one end: the numbers lie between.
    let low = values.iter().position(Option::is_some).unwrap_or(0);
    let high = values.iter().rposition(Option::is_some).map_or(low, |p| p + 1);
    Ok(Peers { group, starts, values, numbers: low..high })
}

/// The one `ORDER BY` value of each row, ascending (negated when descending), for a
/// `RANGE` frame with an offset. SQLite's arithmetic on text there has rules of its own:
/// refused.
fn range_values_of(keys: &[Row], partition: &[usize], order_keys: &[SortKey]) -> Result<Vec<Option<f64>>, SqlError> {
    // The binder refuses a RANGE offset without exactly one ORDER BY term.
    let key = order_keys.first().copied().ok_or_else(|| SqlError::invalid("internal error: RANGE without ORDER BY"))?;
    partition
        .iter()
        .map(|&i| match &keys[i][key.column] {
            Value::Null => Ok(None),
            v => match value::as_num(v) {
                Some(n) if key.descending => Ok(Some(-value::num_f64(n))),
                Some(n) => Ok(Some(value::num_f64(n))),
                None => Err(SqlError::unsupported("a RANGE frame with an offset over a non-numeric ORDER BY value")),
            },
        })
        .collect()
}

/// One partition of the operator's rows, in window order.
struct Partition<'a> {
    rows: &'a [Row],
    /// Positions in `rows`, in window order.
    positions: &'a [usize],
    peers: &'a Peers,
    limits: &'a Limits,
}

/// A function's value for every row of a partition, in partition order.
fn compute(func: &WindowFunc, part: &Partition<'_>, scratch: &mut Reservation) -> Result<Vec<Value>, SqlError> {
    let Partition { rows, positions: partition, peers, limits } = *part;
    let n = partition.len();
    let arg = |k: usize, j: usize| -> Result<Value, SqlError> {
        func.args.get(k).map_or(Ok(Value::Null), |e| e.eval(&rows[partition[j]]))
    };
    let mut values = Vec::with_capacity(n);
    scratch.grow(n * std::mem::size_of::<Value>())?;
    match func.kind {
        WinKind::Agg(agg) => return aggregate(func, agg, part, scratch),
        WinKind::Ntile => {
            let buckets = ntile_buckets(&arg(0, 0)?)?;
            values.extend((0..n).map(|j| Value::Integer(ntile(buckets, n as i64, j as i64))));
        }
        _ => {
            for j in 0..n {
                limits.check()?;
                values.push(ranked(func, j, n, peers, &arg)?);
            }
        }
    }
    Ok(values)
}

/// A function other than an aggregate or `ntile`, at position `j` of `n`.
fn ranked(
    func: &WindowFunc,
    j: usize,
    n: usize,
    peers: &Peers,
    arg: &dyn Fn(usize, usize) -> Result<Value, SqlError>,
) -> Result<Value, SqlError> {
    let g = peers.group[j];
    let position = |p: usize| Value::Integer(i64::try_from(p).unwrap_or(i64::MAX));
    Ok(match func.kind {
        WinKind::RowNumber => position(j + 1),
        WinKind::Rank => position(peers.starts[g] + 1),
        WinKind::DenseRank => position(g + 1),
        WinKind::PercentRank if n > 1 => Value::Real(peers.starts[g] as f64 / (n - 1) as f64),
        WinKind::PercentRank => Value::Real(0.0),
        WinKind::CumeDist => Value::Real(peers.starts[g + 1] as f64 / n as f64),
        WinKind::Lag | WinKind::Lead => {
            let offset = if func.args.len() > 1 { row_offset(&arg(1, j)?) } else { Some(1) };
            let signed = if func.kind == WinKind::Lag { offset.and_then(i64::checked_neg) } else { offset };
            let target = signed.and_then(|o| i64::try_from(j).ok()?.checked_add(o));
            match target.and_then(|t| usize::try_from(t).ok()).filter(|t| *t < n) {
                Some(t) => arg(0, t)?,
                None => arg(2, j)?,
            }
        }
        WinKind::FirstValue | WinKind::LastValue | WinKind::NthValue => {
            let (start, end) = frame::bounds(&func.frame, j, peers, n);
            let at = match func.kind {
                WinKind::FirstValue => Some(start),
                WinKind::LastValue => end.checked_sub(1),
                _ => start.checked_add(nth(&arg(1, j)?)? - 1),
            };
            match at.filter(|a| *a >= start && *a < end) {
                Some(a) => arg(0, a)?,
                None => Value::Null,
            }
        }
        WinKind::Ntile | WinKind::Agg(_) => unreachable!("computed by compute()"),
    })
}

/// `lag`/`lead`'s offset as SQLite reads it: an integer (or integral real); anything else
/// finds no row, so the default is returned. Text converts as a number, as SQLite's
/// arithmetic on it does.
fn row_offset(v: &Value) -> Option<i64> {
    match value::to_num(v)? {
        Num::Int(i) => Some(i),
        Num::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e18 => Some(r as i64),
        Num::Real(_) => None,
    }
}

/// `nth_value`'s `n`: a positive integer.
fn nth(v: &Value) -> Result<usize, SqlError> {
    let n = match value::as_num(v) {
        Some(Num::Int(i)) => Some(i),
        Some(Num::Real(r)) if r.fract() == 0.0 && r.abs() < 9.0e18 => Some(r as i64),
        _ => None,
    };
    n.filter(|n| *n > 0)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .ok_or_else(|| SqlError::invalid("second argument to nth_value must be a positive integer"))
}

/// `ntile`'s argument (on the partition's first row): a positive integer, a real
/// truncated to one.
fn ntile_buckets(v: &Value) -> Result<i64, SqlError> {
    let n = match value::to_num(v) {
        Some(Num::Int(i)) => i,
        Some(Num::Real(r)) if r.is_finite() => r as i64,
        _ => 0,
    };
    if n <= 0 {
        return Err(SqlError::invalid("argument of ntile must be a positive integer"));
    }
    Ok(n)
}

/// SQLite's `ntile`: `total` rows in `buckets` groups, the larger groups first.
fn ntile(buckets: i64, total: i64, row: i64) -> i64 {
    let size = total / buckets;
    if size == 0 {
        return row + 1;
    }
    let large = total - buckets * size;
    let small_from = large * (size + 1);
    if row < small_from {
        1 + row / (size + 1)
    } else {
        1 + large + (row - small_from) / size
    }
}

/// An aggregate over each row's frame.
fn aggregate(
    func: &WindowFunc,
    agg: AggFunc,
    part: &Partition<'_>,
    scratch: &mut Reservation,
) -> Result<Vec<Value>, SqlError> {
    let Partition { rows, positions: partition, peers, limits } = *part;
    let n = partition.len();
    // The argument of every row, once (count(*) counts any row: a non-NULL stand-in).
    let mut args = Vec::with_capacity(n);
    let mut separators = Vec::new();
    for &i in partition {
        limits.check()?;
        let passes = func.filter.as_ref().map_or(Ok(true), |f| f.truth(&rows[i]).map(|t| t == Some(true)))?;
        let v = match passes {
            true => func.args.first().map_or(Ok(Value::Integer(1)), |e| e.eval(&rows[i]))?,
            false => Value::Null,
        };
        scratch.grow(limits::value_bytes(&v))?;
        args.push(v);
        if let (AggFunc::GroupConcat, Some(s)) = (agg, func.args.get(1)) {
            let s = s.eval(&rows[i])?;
            scratch.grow(limits::value_bytes(&s))?;
            separators.push(s);
        }
    }
    let mut values = Vec::with_capacity(n);
    let mut slider = Slider::new(agg);
    for j in 0..n {
        limits.check()?;
        let (start, end) = frame::bounds(&func.frame, j, peers, n);
        if agg == AggFunc::GroupConcat {
            let text = concat(&args[start..end], separators.get(start..end))?;
            scratch.grow(limits::value_bytes(&text))?;
            values.push(text);
            continue;
        }
        values.push(slider.frame_value(&args, start, end)?);
    }
    Ok(values)
}

/// `group_concat` of a frame's values: NULLs skipped, each separator (`,` by default) the
/// one of the value it comes before.
fn concat(args: &[Value], separators: Option<&[Value]>) -> Result<Value, SqlError> {
    let mut text: Option<String> = None;
    for (k, v) in args.iter().enumerate() {
        if v.is_null() {
            continue;
        }
        let piece = value::to_text(v).unwrap_or_default();
        let separator = match (&text, separators) {
            (None, _) => String::new(),
            (Some(_), Some(s)) => value::to_text(&s[k]).unwrap_or_default(),
            (Some(_), None) => ",".to_string(),
        };
        let grown = text.as_ref().map_or(0, String::len) + separator.len() + piece.len();
        // Checked before the text grows: a huge concatenation fails, never allocates.
        limits::check_result_bytes(grown)?;
        let t = text.get_or_insert_with(String::new);
        t.push_str(&separator);
        t.push_str(&piece);
    }
    Ok(text.map_or(Value::Null, Value::Text))
}
