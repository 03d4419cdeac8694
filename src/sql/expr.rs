//! Bound scalar expressions and their evaluation with SQLite's NULL semantics.
//!
//! The binder (`bind.rs`) turns sqlparser's AST into [`Expr`], resolving every column to a
//! position in the input row and every parameter to its value, so evaluation is a plain
//! recursive walk with no name lookups. Three-valued logic: comparisons with NULL are NULL,
//! `AND`/`OR` follow Kleene logic, and a row passes a filter only when it is true.

use std::collections::HashSet;
use std::sync::Arc;

use super::func::{self, Func};
use super::limits::{self, Reservation};
use super::subquery::SubqueryCall;
use super::value::{self, ArithOp, KeyValue};
use super::SqlError;
use crate::types::Value;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// Target of `CAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastType {
    Integer,
    Real,
    Text,
    Blob,
    Numeric,
    Boolean,
    Timestamp,
}

/// A bound expression over one input row.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Literal(Value),
    Column(usize),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Concat(Box<Expr>, Box<Expr>),
    IsNull(Box<Expr>, bool),
    /// `a IS b` (NULL-safe equality), negated for `IS NOT`.
    Is(Box<Expr>, Box<Expr>, bool),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    InList(Box<Expr>, Vec<Expr>, bool),
    /// `IN (subquery)`, evaluated once: the set of values and whether it held a NULL.
    InSet(Box<Expr>, Arc<InSet>, bool),
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        escape: Option<Box<Expr>>,
        negated: bool,
    },
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast(Box<Expr>, CastType),
    Func(Func, Vec<Expr>),
    /// A column of the enclosing query's row, in a correlated subquery's plan: replaced by
    /// its value before the plan runs (`subquery.rs`).
    Outer(usize),
    /// Bound parameter `?N` (0-based) of a plan kept for re-execution (`Statement`):
    /// replaced by its value before the plan runs.
    Param(usize),
    /// The statement time (a TIMESTAMP, or NULL when the statement has none), the first
    /// argument of every date function in a plan kept for re-execution: replaced by its
    /// value before the plan runs, like a parameter.
    StatementTime,
    /// A correlated subquery, run (or looked up in its memo) for each row.
    Subquery(SubqueryCall),
    /// The value of the query's `k`th window function: replaced by the column the window
    /// operator puts it in once the operator's input width is known (`select.rs`).
    WindowResult(usize),
}

/// The result of an `IN (SELECT ...)`.
#[derive(Debug, Default)]
pub(crate) struct InSet {
    pub values: HashSet<KeyValue>,
    pub has_null: bool,
    /// The bytes the set holds, against the statement's budget, for as long as it lives.
    pub reservation: Option<Reservation>,
}

impl InSet {
    /// Adds one value the subquery returned.
    pub fn insert(&mut self, v: Value) -> Result<(), SqlError> {
        if let Some(r) = &mut self.reservation {
            r.grow(limits::value_bytes(&v) + limits::HASH_ENTRY_OVERHEAD_BYTES)?;
        }
        match v {
            Value::Null => self.has_null = true,
            v => {
                self.values.insert(value::key_of_owned(v));
            }
        }
        Ok(())
    }
}

impl Expr {
    pub fn eval(&self, row: &[Value]) -> Result<Value, SqlError> {
        Ok(match self {
            Expr::Literal(v) => v.clone(),
            Expr::Column(i) => row[*i].clone(),
            Expr::Not(e) => value::from_truth(value::truth(&e.eval(row)?).map(|b| !b)),
            Expr::Neg(e) => negate(e.eval(row)?),
            Expr::Arith(op, a, b) => value::arith(*op, &a.eval(row)?, &b.eval(row)?)?,
            // Columns and literals compare in place: no clone of a text per row.
            Expr::Cmp(op, a, b) => match (a.borrowed(row), b.borrowed(row)) {
                (Some(x), Some(y)) => value::from_truth(compare_op(*op, x, y)),
                _ => value::from_truth(compare_op(*op, &a.eval(row)?, &b.eval(row)?)),
            },
            Expr::And(a, b) => value::from_truth(and(a.truth(row)?, || b.truth(row))?),
            Expr::Or(a, b) => value::from_truth(or(a.truth(row)?, || b.truth(row))?),
            Expr::Concat(a, b) => concat(&a.eval(row)?, &b.eval(row)?)?,
            Expr::IsNull(e, negated) => {
                let null = match e.borrowed(row) {
                    Some(v) => v.is_null(),
                    None => e.eval(row)?.is_null(),
                };
                value::from_truth(Some(null != *negated))
            }
            Expr::Is(a, b, negated) => {
                let (a, b) = (a.eval(row)?, b.eval(row)?);
                let same = match (a.is_null(), b.is_null()) {
                    (true, true) => true,
                    (false, false) => value::compare(&a, &b).is_eq(),
                    _ => false,
                };
                value::from_truth(Some(same != *negated))
            }
            Expr::Between(e, low, high, negated) => between(&e.eval(row)?, &low.eval(row)?, &high.eval(row)?, *negated),
            Expr::InList(e, list, negated) => in_list(&e.eval(row)?, list, row, *negated)?,
            Expr::InSet(e, set, negated) => in_set(&e.eval(row)?, set, *negated),
            Expr::Like { expr, pattern, escape, negated } => {
                let escape = match escape {
                    Some(e) => Some(e.eval(row)?),
                    None => None,
                };
                func::like(&expr.eval(row)?, &pattern.eval(row)?, escape.as_ref(), *negated)?
            }
            Expr::Case { operand, whens, otherwise } => self.eval_case(operand.as_deref(), whens, otherwise, row)?,
            Expr::Cast(e, ty) => func::cast(e.eval(row)?, *ty)?,
            Expr::Func(f, args) => {
                let args = args.iter().map(|a| a.eval(row)).collect::<Result<Vec<_>, _>>()?;
                func::call(*f, args)?
            }
            Expr::Subquery(call) => call.eval(row)?,
            Expr::Outer(_) => {
                return Err(SqlError::invalid("internal error: an outer column evaluated outside its subquery"))
            }
            Expr::Param(_) => return Err(SqlError::invalid("internal error: a parameter evaluated before binding")),
            Expr::WindowResult(_) => {
                return Err(SqlError::invalid("internal error: a window value evaluated before planning placed it"))
            }
            Expr::StatementTime => {
                return Err(SqlError::invalid("internal error: the statement time evaluated before binding"))
            }
        })
    }

    /// The value of a column or literal without evaluating (or cloning) it.
    fn borrowed<'r>(&'r self, row: &'r [Value]) -> Option<&'r Value> {
        match self {
            Expr::Column(i) => Some(&row[*i]),
            Expr::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// Evaluates as a condition: `Some(true)` only when the value is true. Comparisons and
    /// logic give their truth directly, without a 1/0/NULL value in between: filters on
    /// scans run this once per row read.
    pub fn truth(&self, row: &[Value]) -> Result<Option<bool>, SqlError> {
        match self {
            Expr::Cmp(op, a, b) => Ok(match (a.borrowed(row), b.borrowed(row)) {
                (Some(x), Some(y)) => compare_op(*op, x, y),
                _ => compare_op(*op, &a.eval(row)?, &b.eval(row)?),
            }),
            Expr::And(a, b) => and(a.truth(row)?, || b.truth(row)),
            Expr::Or(a, b) => or(a.truth(row)?, || b.truth(row)),
            Expr::Not(e) => Ok(e.truth(row)?.map(|b| !b)),
            _ => Ok(value::truth(&self.eval(row)?)),
        }
    }

    /// Whether a row passes this filter (NULL does not).
    pub fn passes(&self, row: &[Value]) -> Result<bool, SqlError> {
        Ok(self.truth(row)? == Some(true))
    }

    fn eval_case(
        &self,
        operand: Option<&Expr>,
        whens: &[(Expr, Expr)],
        otherwise: &Option<Box<Expr>>,
        row: &[Value],
    ) -> Result<Value, SqlError> {
        let operand = match operand {
            Some(e) => Some(e.eval(row)?),
            None => None,
        };
        for (when, then) in whens {
            let hit = match &operand {
                Some(v) => compare_op(CmpOp::Eq, v, &when.eval(row)?) == Some(true),
                None => when.passes(row)?,
            };
            if hit {
                return then.eval(row);
            }
        }
        otherwise.as_ref().map_or(Ok(Value::Null), |e| e.eval(row))
    }

    /// Calls `f` on every column position this expression reads.
    pub fn visit_columns(&self, f: &mut dyn FnMut(usize)) {
        self.for_each_child(&mut |e| {
            if let Expr::Column(i) = e {
                f(*i);
            }
        });
    }

    /// Rewrites every column position (e.g. to make a right-side filter relative to the
    /// right table's own row).
    pub fn remap(&mut self, f: &dyn Fn(usize) -> usize) {
        self.for_each_child_mut(&mut |e| {
            if let Expr::Column(i) = e {
                *i = f(*i);
            }
        });
    }

    /// Splits a conjunction (`a AND b AND c`) into its conjuncts.
    pub fn conjuncts(&self) -> Vec<&Expr> {
        match self {
            Expr::And(a, b) => {
                let mut all = a.conjuncts();
                all.extend(b.conjuncts());
                all
            }
            other => vec![other],
        }
    }

    /// Whether the expression reads a column of an enclosing query.
    pub fn has_outer(&self) -> bool {
        let mut found = false;
        self.for_each_child(&mut |e| found |= matches!(e, Expr::Outer(_)));
        found
    }

    fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Literal(_)
            | Expr::Column(_)
            | Expr::Outer(_)
            | Expr::Param(_)
            | Expr::StatementTime
            | Expr::WindowResult(_) => vec![],
            Expr::Subquery(call) => call.lhs.as_deref().into_iter().chain(&call.args).collect(),
            Expr::Not(e) | Expr::Neg(e) | Expr::IsNull(e, _) | Expr::Cast(e, _) | Expr::InSet(e, _, _) => vec![e],
            Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => vec![a, b],
            Expr::Concat(a, b) | Expr::Is(a, b, _) => vec![a, b],
            Expr::Between(a, b, c, _) => vec![a, b, c],
            Expr::InList(e, list, _) => std::iter::once(&**e).chain(list).collect(),
            Expr::Like { expr, pattern, escape, .. } => {
                std::iter::once(&**expr).chain(Some(&**pattern)).chain(escape.as_deref()).collect()
            }
            Expr::Case { operand, whens, otherwise } => operand
                .as_deref()
                .into_iter()
                .chain(whens.iter().flat_map(|(w, t)| [w, t]))
                .chain(otherwise.as_deref())
                .collect(),
            Expr::Func(_, args) => args.iter().collect(),
        }
    }

    fn for_each_child(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        for child in self.children() {
            child.for_each_child(f);
        }
    }

    /// Calls `f` on this expression and every expression below it, outermost first (not
    /// inside a subquery's own plan: its outer values are its `args`).
    pub fn for_each_child_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        f(self);
        match self {
            Expr::Literal(_)
            | Expr::Column(_)
            | Expr::Outer(_)
            | Expr::Param(_)
            | Expr::StatementTime
            | Expr::WindowResult(_) => {}
            Expr::Subquery(call) => {
                call.lhs.iter_mut().for_each(|e| e.for_each_child_mut(f));
                call.args.iter_mut().for_each(|e| e.for_each_child_mut(f));
            }
            Expr::Not(e) | Expr::Neg(e) | Expr::IsNull(e, _) | Expr::Cast(e, _) | Expr::InSet(e, _, _) => {
                e.for_each_child_mut(f)
            }
            Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.for_each_child_mut(f);
                b.for_each_child_mut(f);
            }
            Expr::Concat(a, b) | Expr::Is(a, b, _) => {
                a.for_each_child_mut(f);
                b.for_each_child_mut(f);
            }
            Expr::Between(a, b, c, _) => {
                for e in [a, b, c] {
                    e.for_each_child_mut(f);
                }
            }
            Expr::InList(e, list, _) => {
                e.for_each_child_mut(f);
                list.iter_mut().for_each(|e| e.for_each_child_mut(f));
            }
            Expr::Like { expr, pattern, escape, .. } => {
                expr.for_each_child_mut(f);
                pattern.for_each_child_mut(f);
                if let Some(e) = escape {
                    e.for_each_child_mut(f);
                }
            }
            Expr::Case { operand, whens, otherwise } => {
                operand.iter_mut().for_each(|e| e.for_each_child_mut(f));
                for (w, t) in whens {
                    w.for_each_child_mut(f);
                    t.for_each_child_mut(f);
                }
                otherwise.iter_mut().for_each(|e| e.for_each_child_mut(f));
            }
            Expr::Func(_, args) => args.iter_mut().for_each(|e| e.for_each_child_mut(f)),
        }
    }
}

fn negate(v: Value) -> Value {
    match value::to_num(&v) {
        None => Value::Null,
        Some(value::Num::Int(i)) => i.checked_neg().map_or(Value::Real(-(i as f64)), Value::Integer),
        Some(value::Num::Real(r)) => Value::Real(-r),
    }
}

pub(crate) fn compare_op(op: CmpOp, a: &Value, b: &Value) -> Option<bool> {
    let ord = value::compare_sql(a, b)?;
    Some(match op {
        CmpOp::Eq => ord.is_eq(),
        CmpOp::NotEq => ord.is_ne(),
        CmpOp::Lt => ord.is_lt(),
        CmpOp::LtEq => ord.is_le(),
        CmpOp::Gt => ord.is_gt(),
        CmpOp::GtEq => ord.is_ge(),
    })
}

fn and(a: Option<bool>, b: impl FnOnce() -> Result<Option<bool>, SqlError>) -> Result<Option<bool>, SqlError> {
    if a == Some(false) {
        return Ok(Some(false));
    }
    Ok(match (a, b()?) {
        (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    })
}

fn or(a: Option<bool>, b: impl FnOnce() -> Result<Option<bool>, SqlError>) -> Result<Option<bool>, SqlError> {
    if a == Some(true) {
        return Ok(Some(true));
    }
    Ok(match (a, b()?) {
        (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    })
}

fn concat(a: &Value, b: &Value) -> Result<Value, SqlError> {
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    limits::check_result_bytes(func::text_len(a).saturating_add(func::text_len(b)))?;
    Ok(match (value::to_text(a), value::to_text(b)) {
        (Some(a), Some(b)) => Value::Text(a + &b),
        _ => Value::Null,
    })
}

fn between(v: &Value, low: &Value, high: &Value, negated: bool) -> Value {
    let ge = compare_op(CmpOp::GtEq, v, low);
    let le = compare_op(CmpOp::LtEq, v, high);
    let both = match (ge, le) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    };
    value::from_truth(both.map(|b| b != negated))
}

fn in_list(v: &Value, list: &[Expr], row: &[Value], negated: bool) -> Result<Value, SqlError> {
    if list.is_empty() {
        return Ok(value::from_truth(Some(negated)));
    }
    if v.is_null() {
        return Ok(Value::Null);
    }
    let mut saw_null = false;
    for item in list {
        match compare_op(CmpOp::Eq, v, &item.eval(row)?) {
            Some(true) => return Ok(value::from_truth(Some(!negated))),
            None => saw_null = true,
            Some(false) => {}
        }
    }
    Ok(if saw_null { Value::Null } else { value::from_truth(Some(negated)) })
}

pub(crate) fn in_set(v: &Value, set: &InSet, negated: bool) -> Value {
    if set.values.is_empty() && !set.has_null {
        return value::from_truth(Some(negated));
    }
    if v.is_null() {
        return Value::Null;
    }
    if set.values.contains(&value::key_of(v)) {
        return value::from_truth(Some(!negated));
    }
    if set.has_null {
        Value::Null
    } else {
        value::from_truth(Some(negated))
    }
}
