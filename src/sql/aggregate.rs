//! Aggregates and the hash group-by operator.
//!
//! The operator consumes its input once and holds only the group table: one entry per
//! group with the group's key values and one accumulator per aggregate (plus the set of
//! values seen, for `DISTINCT` aggregates). SQLite's rules: `COUNT` of nothing is 0, `SUM`
//! of nothing is NULL, `SUM` of integers is an integer (overflow is an error), `AVG` is a
//! real, `TOTAL` is a real that is 0.0 for nothing, `MIN`/`MAX` ignore NULLs.
//!
//! The group table is accounted against the statement's budget: each group's key, values
//! and accumulators, every value a `DISTINCT` aggregate remembers, and every byte a
//! `group_concat` text grows by (reserved before it grows).

use std::collections::HashSet;

use super::expr::Expr;
use super::limits::{self, Limits, Reservation};
use super::plan::Row;
use super::value::{self, KeyMap, KeyValue, Num};
use super::SqlError;
use crate::types::Value;

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggFunc {
    Count,
    CountStar,
    Sum,
    Avg,
    Total,
    Min,
    Max,
    GroupConcat,
    /// A bare column in an aggregate query: the value from the group's first row.
    Any,
}

impl AggFunc {
    pub fn from_name(name: &str) -> AggFunc {
        match name {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "total" => AggFunc::Total,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            // `group_concat` and `string_agg`, the only other names `is_aggregate` lets by.
            _ => AggFunc::GroupConcat,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count | AggFunc::CountStar => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Total => "total",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::GroupConcat => "group_concat",
            AggFunc::Any => "any_value",
        }
    }
}

/// One aggregate of a query.
#[derive(Debug, Clone)]
pub(crate) struct AggSpec {
    pub func: AggFunc,
    /// `None` for `COUNT(*)`.
    pub arg: Option<Expr>,
    pub distinct: bool,
    /// `group_concat(x, sep)`'s separator, evaluated per row.
    pub separator: Option<Expr>,
    /// `FILTER (WHERE ...)`: only rows for which it is true are aggregated.
    pub filter: Option<Expr>,
}

/// The running state of one aggregate in one group.
#[derive(Debug, Clone)]
struct Acc {
    count: i64,
    int_sum: i128,
    real_sum: f64,
    saw_real: bool,
    best: Option<Value>,
    text: Option<String>,
    seen: Option<HashSet<KeyValue>>,
}

impl Acc {
    fn new(spec: &AggSpec) -> Acc {
        Acc {
            count: 0,
            int_sum: 0,
            real_sum: 0.0,
            saw_real: false,
            best: None,
            text: None,
            seen: spec.distinct.then(HashSet::new),
        }
    }

    fn update(&mut self, spec: &AggSpec, row: &[Value], reservation: &mut Reservation) -> Result<(), SqlError> {
        if let Some(filter) = &spec.filter {
            if !filter.passes(row)? {
                return Ok(());
            }
        }
        let Some(arg) = &spec.arg else {
            self.count += 1;
            return Ok(());
        };
        let v = arg.eval(row)?;
        if spec.func == AggFunc::Any {
            if self.count == 0 {
                self.best = Some(v);
            }
            self.count += 1;
            return Ok(());
        }
        if v.is_null() {
            return Ok(());
        }
        if let Some(seen) = &mut self.seen {
            let key = value::key_of(&v);
            if seen.contains(&key) {
                return Ok(());
            }
            reservation.grow(value::key_value_bytes(&key) + limits::HASH_ENTRY_OVERHEAD_BYTES)?;
            seen.insert(key);
        }
        self.count += 1;
        match spec.func {
            AggFunc::Sum | AggFunc::Avg | AggFunc::Total => self.add(&v),
            AggFunc::Min | AggFunc::Max => self.keep_best(spec.func, v),
            AggFunc::GroupConcat => self.concat(spec, row, &v, reservation)?,
            AggFunc::Count | AggFunc::CountStar | AggFunc::Any => {}
        }
        Ok(())
    }

    fn add(&mut self, v: &Value) {
        match value::to_num(v) {
            Some(Num::Int(i)) => self.int_sum += i128::from(i),
            Some(Num::Real(r)) => {
                self.saw_real = true;
                self.real_sum += r;
            }
            None => {}
        }
        // Non-numeric text counts as a real 0.0, as in SQLite.
        if matches!(v, Value::Text(_) | Value::Blob(_)) && !matches!(value::to_num(v), Some(Num::Int(_))) {
            self.saw_real = true;
        }
    }

    fn keep_best(&mut self, func: AggFunc, v: Value) {
        let replace = match &self.best {
            None => true,
            Some(best) => {
                let order = value::compare(&v, best);
                if func == AggFunc::Min {
                    order.is_lt()
                } else {
                    order.is_gt()
                }
            }
        };
        if replace {
            self.best = Some(v);
        }
    }

    fn concat(
        &mut self,
        spec: &AggSpec,
        row: &[Value],
        v: &Value,
        reservation: &mut Reservation,
    ) -> Result<(), SqlError> {
        let piece = value::to_text(v).unwrap_or_default();
        match &mut self.text {
            None => {
                reservation.grow(piece.len())?;
                self.text = Some(piece);
            }
            Some(text) => {
                let separator = match &spec.separator {
                    Some(s) => value::to_text(&s.eval(row)?).unwrap_or_default(),
                    None => ",".to_string(),
                };
                // Reserved before the text grows: a huge concatenation fails, never allocates.
                reservation.grow(separator.len() + piece.len())?;
                limits::check_result_bytes(text.len() + separator.len() + piece.len())?;
                text.push_str(&separator);
                text.push_str(&piece);
            }
        }
        Ok(())
    }

    fn finish(self, func: AggFunc) -> Result<Value, SqlError> {
        let sum = || self.int_sum as f64 + self.real_sum;
        Ok(match func {
            AggFunc::Count | AggFunc::CountStar => Value::Integer(self.count),
            AggFunc::Sum if self.count == 0 => Value::Null,
            AggFunc::Sum if self.saw_real => Value::Real(sum()),
            AggFunc::Sum => Value::Integer(i64::try_from(self.int_sum).map_err(|_| SqlError::IntegerOverflow)?),
            AggFunc::Avg if self.count == 0 => Value::Null,
            AggFunc::Avg => Value::Real(sum() / self.count as f64),
            AggFunc::Total => Value::Real(sum()),
            AggFunc::Min | AggFunc::Max | AggFunc::Any => self.best.unwrap_or(Value::Null),
            AggFunc::GroupConcat => self.text.map_or(Value::Null, Value::Text),
        })
    }
}

/// Groups `input` by `groups` and computes `aggs` per group. Output rows are the group
/// values followed by the aggregate values. Without `GROUP BY` there is exactly one group,
/// even for empty input.
pub(crate) fn group(
    input: impl Iterator<Item = Result<Row, SqlError>>,
    groups: &[Expr],
    aggs: &[AggSpec],
    limits: &Limits,
) -> Result<(Vec<Row>, Reservation), SqlError> {
    let mut reservation = limits.reservation();
    let group_bytes = |values: &Row| {
        limits::row_bytes(values) * 2 + aggs.len() * std::mem::size_of::<Acc>() + limits::HASH_ENTRY_OVERHEAD_BYTES
    };
    let mut index: KeyMap<Vec<KeyValue>, usize> = KeyMap::default();
    let mut states: Vec<(Row, Vec<Acc>)> = Vec::new();
    if groups.is_empty() {
        states.push((Vec::new(), aggs.iter().map(Acc::new).collect()));
    }
    // Reused for every row: looking a group up allocates nothing.
    let (mut values, mut key): (Row, Vec<KeyValue>) = (Vec::new(), Vec::new());
    for row in input {
        limits.check()?;
        let row = row?;
        let slot = if groups.is_empty() {
            0
        } else {
            values.clear();
            key.clear();
            for g in groups {
                let v = g.eval(&row)?;
                key.push(value::key_of(&v));
                values.push(v);
            }
            match index.get(key.as_slice()) {
                Some(&slot) => slot,
                None => {
                    // The key and the values, both held, and the accumulators.
                    reservation.grow(group_bytes(&values))?;
                    index.insert(key.clone(), states.len());
                    states.push((values.clone(), aggs.iter().map(Acc::new).collect()));
                    states.len() - 1
                }
            }
        };
        let accs = &mut states[slot].1;
        for (acc, spec) in accs.iter_mut().zip(aggs) {
            acc.update(spec, &row, &mut reservation)?;
        }
    }
    drop(index);
    let rows = states
        .into_iter()
        .map(|(mut values, accs)| {
            for (acc, spec) in accs.into_iter().zip(aggs) {
                values.push(acc.finish(spec.func)?);
            }
            Ok(values)
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    // What the output rows hold now (the key table and accumulators are gone).
    reservation.resize(rows.iter().map(|r| limits::row_bytes(r)).sum())?;
    Ok((rows, reservation))
}
