//! Correlated subqueries: `EXISTS`, `IN (SELECT ...)` and scalar subqueries whose `WHERE`
//! (or select list) reads columns of the enclosing query's row.
//!
//! The subquery is planned once, with each outer column as a placeholder
//! ([`Expr::Outer`]). For each outer row, the outer values are computed from that row
//! (`SubqueryCall::args`), substituted into a copy of the plan as constants — which lets
//! the scans pick a primary-key or index path for them — and the plan runs on the query's
//! snapshot. Answers are memoised by the exact outer values (type included: `1` and `1.0`
//! may give different answers, e.g. under `typeof`), so an outer query with few distinct
//! correlated values runs the subquery few times. Uncorrelated subqueries never get here:
//! the binder runs them once at planning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::exec;
use super::expr::{self, Expr, InSet};
use super::limits::{self, Limits, Reservation};
use super::plan::Plan;
use super::value::{self, KeyValue};
use super::SqlError;
use crate::replica::Snapshot;
use crate::types::Value;

/// Distinct outer values whose answers are remembered; past it, answers are recomputed
/// (the memo is a cache: results never depend on it).
pub(crate) const SUBQUERY_MEMO_ENTRIES_MAX: usize = 4096;

/// What the enclosing expression asks of the subquery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubqueryKind {
    /// `[NOT] EXISTS`: whether it returns a row.
    Exists { negated: bool },
    /// `lhs [NOT] IN (SELECT ...)`: the set of its values.
    In { negated: bool },
    /// `(SELECT ...)`: the first column of its first row, or NULL.
    Scalar,
}

/// A subquery's answer for one set of outer values.
#[derive(Debug)]
enum Answer {
    Exists(bool),
    Set(InSet),
    Scalar(Value),
}

/// Answers by outer values; the type tag keeps 1 and 1.0 apart, which `KeyValue` alone
/// equates.
type Memo = HashMap<Vec<(u8, KeyValue)>, Arc<Answer>>;

/// One correlated subquery: its plan (with [`Expr::Outer`] placeholders), the snapshot of
/// the query it belongs to, and the memo of answers.
pub(crate) struct Subquery {
    kind: SubqueryKind,
    plan: Plan,
    snap: Arc<Snapshot>,
    limits: Limits,
    /// The memo, and the bytes its keys and scalar answers hold (an `IN` set's answer holds
    /// its own reservation).
    memo: Mutex<(Memo, Reservation)>,
}

impl std::fmt::Debug for Subquery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subquery").field("kind", &self.kind).field("plan", &self.plan).finish_non_exhaustive()
    }
}

/// A use of a correlated subquery in an expression.
#[derive(Debug, Clone)]
pub(crate) struct SubqueryCall {
    /// The left-hand side of `IN`.
    pub lhs: Option<Box<Expr>>,
    /// The outer values, evaluated on the enclosing row: `Expr::Outer(k)` in the
    /// subquery's plan stands for `args[k]`.
    pub args: Vec<Expr>,
    pub sub: Arc<Subquery>,
}

impl Subquery {
    pub fn new(kind: SubqueryKind, plan: Plan, snap: &Arc<Snapshot>, limits: &Limits) -> Subquery {
        let memo = Mutex::new((Memo::new(), limits.reservation()));
        Subquery { kind, plan, snap: Arc::clone(snap), limits: limits.clone(), memo }
    }

    fn answer(&self, args: &[Value]) -> Result<Arc<Answer>, SqlError> {
        let key: Vec<(u8, KeyValue)> = args.iter().map(|v| (type_tag(v), value::key_of(v))).collect();
        if let Some(answer) = self.memo().0.get(&key) {
            return Ok(Arc::clone(answer));
        }
        let answer = Arc::new(self.run(args)?);
        let mut memo = self.memo();
        let (memo, reservation) = &mut *memo;
        if memo.len() < SUBQUERY_MEMO_ENTRIES_MAX {
            let scalar = match &*answer {
                Answer::Scalar(v) => limits::value_bytes(v),
                Answer::Exists(_) | Answer::Set(_) => 0,
            };
            let key_bytes: usize = args.iter().map(limits::value_bytes).sum();
            // The memo is a cache: past the budget, answers are recomputed instead.
            if reservation.grow(key_bytes + scalar + limits::HASH_ENTRY_OVERHEAD_BYTES).is_ok() {
                memo.insert(key, Arc::clone(&answer));
            }
        }
        Ok(answer)
    }

    /// The memo holds only finished answers, so one poisoned by a panic elsewhere is
    /// still consistent.
    fn memo(&self) -> std::sync::MutexGuard<'_, (Memo, Reservation)> {
        self.memo.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run(&self, args: &[Value]) -> Result<Answer, SqlError> {
        let mut plan = self.plan.clone();
        exec::bind_constants(&mut plan, &self.snap, &|e| match e {
            Expr::Outer(k) => Some(args.get(*k).cloned().unwrap_or(Value::Null)),
            _ => None,
        });
        collect(self.kind, exec::open(plan, &self.snap, &self.limits)?, &self.limits)
    }
}

/// Reads a subquery's rows into its answer (only as many rows as the answer needs); an
/// `IN` set holds the bytes of its values against the statement's budget.
fn collect(kind: SubqueryKind, mut rows: exec::RowStream, limits: &Limits) -> Result<Answer, SqlError> {
    Ok(match kind {
        SubqueryKind::Exists { .. } => Answer::Exists(rows.next().transpose()?.is_some()),
        SubqueryKind::Scalar => {
            Answer::Scalar(rows.next().transpose()?.and_then(|r| r.into_iter().next()).unwrap_or(Value::Null))
        }
        SubqueryKind::In { .. } => {
            let mut set = InSet { reservation: Some(limits.reservation()), ..InSet::default() };
            for row in rows {
                limits.check()?;
                set.insert(row?.into_iter().next().unwrap_or(Value::Null))?;
            }
            Answer::Set(set)
        }
    })
}

/// An uncorrelated subquery's rows, read once at planning, as a constant expression (a
/// literal, or the set of an `IN`).
pub(crate) fn constant(
    kind: SubqueryKind,
    rows: exec::RowStream,
    lhs: Option<Box<Expr>>,
    limits: &Limits,
) -> Result<Expr, SqlError> {
    Ok(match (collect(kind, rows, limits)?, kind, lhs) {
        (Answer::Exists(found), SubqueryKind::Exists { negated }, _) => {
            Expr::Literal(value::from_truth(Some(found != negated)))
        }
        (Answer::Scalar(v), _, _) => Expr::Literal(v),
        (Answer::Set(set), SubqueryKind::In { negated }, Some(lhs)) => Expr::InSet(lhs, Arc::new(set), negated),
        _ => return Err(SqlError::invalid("internal error: subquery answer does not match its use")),
    })
}

fn type_tag(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Integer(_) => 1,
        Value::Real(_) => 2,
        Value::Text(_) => 3,
        Value::Blob(_) => 4,
        Value::Boolean(_) => 5,
        Value::Timestamp(_) => 6,
    }
}

impl SubqueryCall {
    pub fn eval(&self, row: &[Value]) -> Result<Value, SqlError> {
        let args = self.args.iter().map(|a| a.eval(row)).collect::<Result<Vec<_>, _>>()?;
        let answer = self.sub.answer(&args)?;
        Ok(match (self.sub.kind, &*answer, &self.lhs) {
            (SubqueryKind::Exists { negated }, Answer::Exists(found), _) => value::from_truth(Some(*found != negated)),
            (SubqueryKind::In { negated }, Answer::Set(set), Some(lhs)) => expr::in_set(&lhs.eval(row)?, set, negated),
            (SubqueryKind::Scalar, Answer::Scalar(v), _) => v.clone(),
            _ => return Err(SqlError::invalid("internal error: subquery answer does not match its use")),
        })
    }
}
