//! Access-path selection: which of a table's keys can serve the predicates pushed down to
//! its scan (a primary-key point or range, or a secondary-index lookup).
//!
//! The chosen path only narrows what is read; every predicate is still evaluated on each
//! row read, so a path never changes a result, only its cost. A constant that does not
//! convert exactly to the key column's type (e.g. `id = 2.5` on an INTEGER key) selects no
//! path: the full scan and the filter then give the SQLite answer.

use std::ops::Bound;

use super::expr::{CmpOp, Expr};
use super::plan::{Access, LookupKind};
use crate::catalog::{Catalog, TableEntry};
use crate::types::{ColumnType, Value};

/// A value converted exactly to a key column's type, as it is stored in the key; `None`
/// when no stored value of that type can equal it.
pub(crate) fn key_value(v: &Value, ty: ColumnType) -> Option<Value> {
    use ColumnType as T;
    match (v, ty) {
        (Value::Null, _) => None,
        (Value::Integer(i) | Value::Timestamp(i), T::Integer | T::Counter) => Some(Value::Integer(*i)),
        (Value::Boolean(b), T::Integer | T::Counter) => Some(Value::Integer(i64::from(*b))),
        (Value::Real(r), T::Integer | T::Counter) if r.trunc() == *r && r.abs() < 9.2e18 => {
            Some(Value::Integer(*r as i64))
        }
        (Value::Integer(i) | Value::Timestamp(i), T::Timestamp) => Some(Value::Timestamp(*i)),
        (Value::Real(r), T::Timestamp) if r.trunc() == *r && r.abs() < 9.2e18 => Some(Value::Timestamp(*r as i64)),
        (Value::Integer(i) | Value::Timestamp(i), T::Real) if i.unsigned_abs() < (1 << 53) => {
            Some(Value::Real(*i as f64))
        }
        (Value::Real(r), T::Real) if !r.is_nan() => Some(Value::Real(*r)),
        (Value::Text(t), T::Text) => Some(Value::Text(t.clone())),
        (Value::Blob(b), T::Blob) => Some(Value::Blob(b.clone())),
        (Value::Boolean(b), T::Boolean) => Some(Value::Boolean(*b)),
        (Value::Integer(i @ (0 | 1)), T::Boolean) => Some(Value::Boolean(*i == 1)),
        _ => None,
    }
}

/// What the predicates say about one column.
#[derive(Debug, Default, Clone)]
struct ColumnFacts {
    eq: Option<Value>,
    lower: Option<(Value, bool)>,
    upper: Option<(Value, bool)>,
    /// Compared with NULL: nothing matches.
    null: bool,
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        other => other,
    }
}

/// The value of a literal, or of a parameter of a plan kept for re-execution (its value
/// in this execution: the path is chosen again when the plan runs with other values).
fn constant(e: &Expr, params: &[Value]) -> Option<Value> {
    match e {
        Expr::Literal(v) => Some(v.clone()),
        Expr::Param(n) => params.get(*n).cloned(),
        // A text parameter compared with a TIMESTAMP column (`Binder::time_operand`).
        Expr::Func(super::func::Func::Instant, args) => match args.as_slice() {
            [arg] => constant(arg, params).map(super::func::instant),
            _ => None,
        },
        _ => None,
    }
}

/// `(column, op, constant)` if the conjunct compares a column with a constant.
fn column_constant(e: &Expr, params: &[Value]) -> Vec<(usize, CmpOp, Value)> {
    match e {
        Expr::Cmp(op, a, b) => match (&**a, &**b) {
            (Expr::Column(c), v) => constant(v, params).map(|v| vec![(*c, *op, v)]).unwrap_or_default(),
            (v, Expr::Column(c)) => constant(v, params).map(|v| vec![(*c, flip(*op), v)]).unwrap_or_default(),
            _ => vec![],
        },
        Expr::Between(x, low, high, false) => match (&**x, constant(low, params), constant(high, params)) {
            (Expr::Column(c), Some(l), Some(h)) => vec![(*c, CmpOp::GtEq, l), (*c, CmpOp::LtEq, h)],
            _ => vec![],
        },
        _ => vec![],
    }
}

fn facts(columns: usize, conjuncts: &[&Expr], types: &[ColumnType], params: &[Value]) -> Vec<ColumnFacts> {
    let mut facts = vec![ColumnFacts::default(); columns];
    for e in conjuncts {
        for (c, op, v) in column_constant(e, params) {
            if v.is_null() {
                // Every comparison with NULL is NULL, which no row passes.
                facts[c].null = true;
                continue;
            }
            let Some(v) = key_value(&v, types[c]) else { continue };
            let f = &mut facts[c];
            match op {
                CmpOp::Eq => f.eq = Some(v),
                CmpOp::Gt | CmpOp::GtEq => f.lower = Some((v, op == CmpOp::GtEq)),
                CmpOp::Lt | CmpOp::LtEq => f.upper = Some((v, op == CmpOp::LtEq)),
                CmpOp::NotEq => {}
            }
        }
    }
    facts
}

/// Chooses how to read `table` given conjuncts over its own row (`params`: the values of
/// any [`Expr::Param`] in them).
pub(crate) fn choose(catalog: &Catalog, table: &TableEntry, conjuncts: &[&Expr], params: &[Value]) -> Access {
    let schema = &table.schema;
    let types: Vec<ColumnType> = schema.columns.iter().map(|c| c.ty).collect();
    let facts = facts(schema.columns.len(), conjuncts, &types, params);
    if facts.iter().any(|f| f.null) {
        return Access::Empty;
    }
    let pk = schema.primary_key_indexes();
    let prefix: Vec<Value> = pk.iter().map_while(|&c| facts[c].eq.clone()).collect();
    if schema.append.is_some() {
        // A deduplication key fixed whole reads the one row scans show for it
        // (`Snapshot::get`, from `append_keys_v1`).
        if !pk.is_empty() && prefix.len() == pk.len() {
            return Access::Point(prefix);
        }
        return time_range(schema, &facts);
    }
    if prefix.len() == pk.len() {
        return Access::Point(prefix);
    }
    let best_index = catalog
        .indexes_of(&schema.name)
        .map(|index| {
            let values: Vec<Value> = index
                .def
                .schema
                .columns
                .iter()
                .map_while(|name| schema.column_index(name).and_then(|c| facts[c].eq.clone()))
                .collect();
            (index.def.schema.name.clone(), values)
        })
        .filter(|(_, values)| !values.is_empty())
        .max_by_key(|(_, values)| values.len());
    let next = facts[pk[prefix.len()]].clone();
    let pk_has_range = next.lower.is_some() || next.upper.is_some();
    if let Some((name, values)) = best_index {
        if values.len() > prefix.len() {
            return Access::Index { name, values };
        }
    }
    if prefix.is_empty() && !pk_has_range {
        return Access::Full;
    }
    let bound = |side: Option<(Value, bool)>| match side {
        Some((v, inclusive)) => {
            let mut key = prefix.clone();
            key.push(v);
            if inclusive {
                Bound::Included(key)
            } else {
                Bound::Excluded(key)
            }
        }
        None if prefix.is_empty() => Bound::Unbounded,
        None => Bound::Included(prefix.clone()),
    };
    Access::Range { lower: bound(next.lower), upper: bound(next.upper) }
}

/// An append-only table is read whole, or by the buckets its time column's bounds allow.
fn time_range(schema: &crate::schema::TableSchema, facts: &[ColumnFacts]) -> Access {
    let Some(c) = schema.time_column_index() else { return Access::Full };
    let time = |v: &Value| match v {
        Value::Integer(t) | Value::Timestamp(t) => Some(*t),
        _ => None,
    };
    let f = &facts[c];
    let bound = |side: &Option<(Value, bool)>| match side {
        Some((v, true)) => time(v).map_or(Bound::Unbounded, Bound::Included),
        Some((v, false)) => time(v).map_or(Bound::Unbounded, Bound::Excluded),
        None => Bound::Unbounded,
    };
    let (lower, upper) = match f.eq.as_ref().and_then(time) {
        Some(t) => (Bound::Included(t), Bound::Included(t)),
        None => (bound(&f.lower), bound(&f.upper)),
    };
    if matches!((lower, upper), (Bound::Unbounded, Bound::Unbounded)) {
        return Access::Full;
    }
    Access::TimeRange { column: schema.columns[c].name.clone(), lower, upper }
}

/// The best way to look up rows of `table` matching an outer row, given which of its
/// columns the join condition equates with outer values: the key columns used, in order.
pub(crate) fn lookup(catalog: &Catalog, table: &TableEntry, equated: &[usize]) -> Option<(LookupKind, Vec<usize>)> {
    let schema = &table.schema;
    if schema.append.is_some() {
        return None;
    }
    let pk = schema.primary_key_indexes();
    let covered = pk.iter().take_while(|c| equated.contains(c)).count();
    if covered == pk.len() {
        return Some((LookupKind::PrimaryKey, pk));
    }
    let index = catalog
        .indexes_of(&schema.name)
        .map(|index| {
            let columns: Vec<usize> = index
                .def
                .schema
                .columns
                .iter()
                .map_while(|name| schema.column_index(name).filter(|c| equated.contains(c)))
                .collect();
            (index.def.schema.name.clone(), columns)
        })
        .filter(|(_, columns)| !columns.is_empty())
        .max_by_key(|(_, columns)| columns.len());
    match index {
        Some((name, columns)) if columns.len() > covered => Some((LookupKind::Index(name), columns)),
        _ if covered > 0 => Some((LookupKind::PrimaryKeyPrefix, pk[..covered].to_vec())),
        _ => None,
    }
}
