//! The binder: sqlparser expressions → [`Expr`] over a [`Scope`].
//!
//! Columns resolve to row positions, parameters to their values, literals to [`Value`]s.
//! In an aggregate query the binder also rewrites aggregate calls and `GROUP BY`
//! expressions into references to the aggregate operator's output ([`AggCtx`]).
//! Uncorrelated subqueries are planned and run here, once, against the same snapshot; a
//! correlated one (reading columns of an enclosing query) becomes an [`Expr::Subquery`]
//! that runs per outer row (`subquery.rs`).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use sqlparser::ast;

use super::aggregate::{AggFunc, AggSpec};
use super::cte::CteScope;
use super::datetime;
use super::expr::{CastType, CmpOp, Expr};
use super::func::Func;
use super::limits::{Limits, EXPR_DEPTH_MAX, SUBQUERY_DEPTH_COST};
use super::math::MathFunc;
use super::plan::Scope;
use super::subquery::{self, Subquery, SubqueryCall, SubqueryKind};
use super::value::ArithOp;
use super::window::{self, WinCtx};
use super::{exec, select, SqlError};
use crate::replica::Snapshot;
use crate::types::Value;

/// What planning needs besides the statement: the snapshot and the bound parameters.
#[derive(Clone, Copy)]
pub(crate) struct PlanCtx<'a> {
    pub snap: &'a Arc<Snapshot>,
    pub params: &'a [Value],
    /// The enclosing query, when planning a subquery.
    pub outer: Option<&'a Outer<'a>>,
    /// Set when the plan is to be kept and re-run with other parameters: parameters then
    /// bind as [`Expr::Param`], and what the plan depends on is noted here.
    pub notes: Option<&'a PlanNotes>,
    /// The statement's limits (subqueries run during planning, under them).
    pub limits: &'a Limits,
    /// Expression depth of the enclosing queries: a nested query starts deeper.
    pub depth: usize,
    /// The common table expressions in scope (`WITH`), innermost first.
    pub ctes: Option<&'a CteScope<'a>>,
    /// The enclosing query of a subquery in `FROM` or a CTE's body, which they may not read
    /// (they are not correlated); kept only to name that in the error.
    pub hidden_outer: Option<&'a Outer<'a>>,
    /// The statement time in milliseconds since the Unix epoch (`'now'`), if the statement
    /// has one: a read-only `sql::query`, a `DEFAULT` and a `CHECK` do not.
    pub now_ms: Option<i64>,
}

impl<'a> PlanCtx<'a> {
    /// The context of a statement's outermost query.
    pub fn new(snap: &'a Arc<Snapshot>, params: &'a [Value], limits: &'a Limits) -> PlanCtx<'a> {
        PlanCtx {
            snap,
            params,
            outer: None,
            notes: None,
            limits,
            depth: 0,
            ctes: None,
            hidden_outer: None,
            now_ms: None,
        }
    }

    /// This context with the statement time `now_ms` (or without one).
    pub fn at(self, now_ms: Option<i64>) -> PlanCtx<'a> {
        PlanCtx { now_ms, ..self }
    }

    /// The context of a subquery in `FROM` or a CTE's body: it sees no enclosing query.
    pub fn uncorrelated(self) -> PlanCtx<'a> {
        PlanCtx { outer: None, hidden_outer: self.outer.or(self.hidden_outer), ..self }
    }

    /// The context of a query nested `levels` deeper (a subquery costs
    /// [`SUBQUERY_DEPTH_COST`]); refused past [`EXPR_DEPTH_MAX`].
    pub fn deeper(self, levels: usize) -> Result<PlanCtx<'a>, SqlError> {
        let depth = self.depth + levels;
        if depth > EXPR_DEPTH_MAX {
            return Err(SqlError::TooDeep { limit: EXPR_DEPTH_MAX });
        }
        Ok(PlanCtx { depth, ..self })
    }
}

/// What a reusable plan depends on, noted while planning it.
#[derive(Debug, Default)]
pub(crate) struct PlanNotes {
    /// Cleared when the plan embeds values of this execution (a subquery's rows, a
    /// parameter in `LIMIT` or `VALUES`): such a plan is not reused.
    pub reusable: Cell<bool>,
    /// The highest parameter number used.
    pub params_max: Cell<usize>,
    /// The base tables read (their definitions and indexes decide the plan).
    pub tables: RefCell<Vec<String>>,
    /// The views read, nested ones included (`view.rs`).
    pub views: RefCell<Vec<String>>,
    /// Whether the plan holds [`Expr::StatementTime`] (a date function).
    pub reads_now: Cell<bool>,
}

impl PlanNotes {
    pub fn new() -> PlanNotes {
        PlanNotes { reusable: Cell::new(true), ..PlanNotes::default() }
    }
}

impl PlanCtx<'_> {
    /// Notes that the plan embeds values of this execution.
    pub fn not_reusable(&self) {
        if let Some(notes) = self.notes {
            notes.reusable.set(false);
        }
    }
}

/// The enclosing query of a subquery being planned, and the outer columns the subquery
/// has referred to so far (`Expr::Outer(k)` is the `k`th).
pub(crate) struct Outer<'a> {
    pub scope: &'a Scope,
    pub parent: Option<&'a Outer<'a>>,
    refs: RefCell<Vec<(Option<String>, String)>>,
}

impl Outer<'_> {
    /// Whether `[table.]name` names a column of an enclosing query (at any depth).
    fn resolves(&self, table: Option<&str>, name: &str) -> Result<bool, SqlError> {
        match self.scope.resolve(table, name) {
            Ok(_) => Ok(true),
            Err(SqlError::UnknownColumn(_)) => self.parent.map_or(Ok(false), |p| p.resolves(table, name)),
            Err(e) => Err(e),
        }
    }

    /// The placeholder number of an outer column, registering it on first use.
    fn reference(&self, table: Option<&str>, name: &str) -> usize {
        let mut refs = self.refs.borrow_mut();
        let key = (table.map(str::to_string), name.to_string());
        match refs.iter().position(|r| *r == key) {
            Some(k) => k,
            None => {
                refs.push(key);
                refs.len() - 1
            }
        }
    }
}

/// Aggregation state of the binder: the `GROUP BY` expressions and the aggregates found.
#[derive(Debug, Default)]
pub(crate) struct AggCtx {
    pub group_asts: Vec<ast::Expr>,
    pub groups: Vec<Expr>,
    pub aggs: Vec<AggSpec>,
    agg_asts: Vec<ast::Expr>,
}

pub(crate) struct Binder<'a> {
    pub ctx: PlanCtx<'a>,
    pub scope: &'a Scope,
    pub agg: Option<AggCtx>,
    /// The query's window functions, while its select list and `ORDER BY` bind (a window
    /// call anywhere else is a misuse).
    pub win: Option<WinCtx>,
    /// Depth of the expression being bound (starting at the query's own depth).
    depth: usize,
}

/// Lower-cases an identifier (names are case-insensitive, as in SQLite).
pub(crate) fn ident(i: &ast::Ident) -> String {
    i.value.to_ascii_lowercase()
}

/// The single identifier of an object name (`t`, not `schema.t`).
pub(crate) fn object_name(name: &ast::ObjectName) -> Result<String, SqlError> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(i)] => Ok(ident(i)),
        _ => Err(SqlError::unsupported(format!("schema-qualified names like {name} (there is one database)"))),
    }
}

pub(crate) fn is_aggregate(name: &str, args: usize) -> bool {
    matches!(name, "count" | "sum" | "avg" | "total" | "group_concat" | "string_agg")
        || (matches!(name, "min" | "max") && args == 1)
}

/// `-9223372036854775808`: the digits alone overflow an INTEGER (they would read as a
/// REAL), but with the minus they are `i64::MIN`, as SQLite reads them.
fn is_min_integer_digits(expr: &ast::Expr) -> bool {
    matches!(expr, ast::Expr::Value(v) if matches!(&v.value, ast::Value::Number(n, _) if n == "9223372036854775808"))
}

fn function_name(f: &ast::Function) -> Result<String, SqlError> {
    object_name(&f.name)
}

fn function_args(f: &ast::Function) -> Result<(Vec<&ast::FunctionArgExpr>, bool), SqlError> {
    let name = &f.name;
    if f.over.is_some() {
        // A window call is bound by `window::bind_call`, never as a plain call.
        return Err(SqlError::invalid(format!("misuse of window function {name}()")));
    }
    if !f.within_group.is_empty() {
        return Err(SqlError::unsupported(format!("WITHIN GROUP on {name}()")));
    }
    if f.null_treatment.is_some() {
        return Err(SqlError::unsupported(format!("IGNORE/RESPECT NULLS on {name}()")));
    }
    call_args(f)
}

/// A call's arguments and whether it says `DISTINCT`.
pub(crate) fn call_args(f: &ast::Function) -> Result<(Vec<&ast::FunctionArgExpr>, bool), SqlError> {
    let name = &f.name;
    match &f.args {
        ast::FunctionArguments::None => Ok((Vec::new(), false)),
        ast::FunctionArguments::Subquery(_) => {
            Err(SqlError::unsupported(format!("a subquery as the argument list of {name}()")))
        }
        ast::FunctionArguments::List(list) => {
            if !list.clauses.is_empty() {
                return Err(SqlError::unsupported(format!("ORDER BY, LIMIT or other clauses inside {name}(...)")));
            }
            let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
            let args = list
                .args
                .iter()
                .map(|a| match a {
                    ast::FunctionArg::Unnamed(e) => Ok(e),
                    _ => Err(SqlError::unsupported(format!("named arguments (name => value) in {name}()"))),
                })
                .collect::<Result<_, _>>()?;
            Ok((args, distinct))
        }
    }
}

/// Whether an AST expression contains an aggregate call (outside subqueries).
pub(crate) fn has_aggregate(e: &ast::Expr) -> bool {
    let mut found = false;
    walk(e, &mut |e| {
        if let ast::Expr::Function(f) = e {
            if let (Ok(name), Ok((args, _))) = (function_name(f), function_args(f)) {
                found |= is_aggregate(&name, args.len());
            }
        }
    });
    found
}

/// Visits an expression tree (not entering subqueries).
fn walk(e: &ast::Expr, f: &mut dyn FnMut(&ast::Expr)) {
    f(e);
    use ast::Expr as E;
    let children: Vec<&ast::Expr> = match e {
        E::BinaryOp { left, right, .. } => vec![left, right],
        E::UnaryOp { expr, .. } | E::Nested(expr) | E::IsNull(expr) | E::IsNotNull(expr) => vec![expr],
        E::IsTrue(expr) | E::IsFalse(expr) | E::IsNotTrue(expr) | E::IsNotFalse(expr) => vec![expr],
        E::Cast { expr, .. } | E::InSubquery { expr, .. } => vec![expr],
        E::IsDistinctFrom(a, b) | E::IsNotDistinctFrom(a, b) => vec![a, b],
        E::InList { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
        E::Between { expr, low, high, .. } => vec![expr, low, high],
        E::Like { expr, pattern, .. } | E::ILike { expr, pattern, .. } => vec![expr, pattern],
        E::Case { operand, conditions, else_result, .. } => operand
            .as_deref()
            .into_iter()
            .chain(conditions.iter().flat_map(|c| [&c.condition, &c.result]))
            .chain(else_result.as_deref())
            .collect(),
        E::Function(func) => {
            let args: Vec<&ast::Expr> = match &func.args {
                ast::FunctionArguments::List(l) => l
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Some(e),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            };
            // An aggregate in a window's terms makes the query an aggregate query.
            let terms: Vec<&ast::Expr> = match &func.over {
                Some(ast::WindowType::WindowSpec(spec)) => {
                    spec.partition_by.iter().chain(spec.order_by.iter().map(|t| &t.expr)).collect()
                }
                _ => vec![],
            };
            args.into_iter().chain(terms).collect()
        }
        E::Substring { expr, substring_from, substring_for, .. } => {
            std::iter::once(&**expr).chain(substring_from.as_deref()).chain(substring_for.as_deref()).collect()
        }
        _ => vec![],
    };
    for child in children {
        walk(child, f);
    }
}

/// Converts a literal.
pub(crate) fn literal(v: &ast::Value, params: &[Value]) -> Result<Value, SqlError> {
    Ok(match v {
        ast::Value::Number(text, _) => match text.parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Real(text.parse().map_err(|_| SqlError::invalid(format!("bad number {text}")))?),
        },
        ast::Value::SingleQuotedString(s) => Value::Text(s.clone()),
        ast::Value::HexStringLiteral(h) => Value::Blob(decode_hex(h)?),
        ast::Value::Boolean(b) => Value::Integer(i64::from(*b)),
        ast::Value::Null => Value::Null,
        ast::Value::Placeholder(p) => parameter(p, params)?,
        ast::Value::DoubleQuotedString(s) => {
            return Err(SqlError::unsupported(format!("double-quoted string \"{s}\" as a value (write '{s}')")))
        }
        other => return Err(SqlError::unsupported(format!("this kind of literal: {other}"))),
    })
}

fn decode_hex(h: &str) -> Result<Vec<u8>, SqlError> {
    hex::decode(h).map_err(|_| SqlError::invalid(format!("malformed blob literal x'{h}'")))
}

/// A placeholder's value; `parse.rs` has already numbered every `?` as `?N`.
fn parameter(p: &str, params: &[Value]) -> Result<Value, SqlError> {
    Ok(params[parameter_number(p, params)? - 1].clone())
}

/// A placeholder's 1-based number, checked against the values given.
fn parameter_number(p: &str, params: &[Value]) -> Result<usize, SqlError> {
    let digits = p.trim_start_matches(['?', '$']);
    let n: usize =
        digits.parse().map_err(|_| SqlError::unsupported(format!("named parameter {p} (use ?, ?N or $N)")))?;
    if n == 0 {
        return Err(SqlError::invalid("parameter numbers start at 1"));
    }
    if n > params.len() {
        return Err(SqlError::MissingParameter(n, params.len()));
    }
    Ok(n)
}

/// Whether an expression mentions a parameter, reads the statement time (a date
/// function) or calls `random()`/`randomblob()`, outside subqueries: its value is one
/// execution's.
pub(crate) fn has_placeholder(e: &ast::Expr) -> bool {
    let mut found = false;
    walk(e, &mut |e| {
        found |= match e {
            ast::Expr::Value(v) => matches!(v.value, ast::Value::Placeholder(_)),
            ast::Expr::Function(f) => function_name(f)
                .is_ok_and(|name| datetime::reads_statement_time(&name) || super::func::is_random(&name)),
            _ => false,
        }
    });
    found
}

pub(crate) fn cast_type(ty: &ast::DataType) -> Result<CastType, SqlError> {
    let name = ty.to_string().to_ascii_uppercase();
    let base = name.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "INTEGER" | "INT" | "BIGINT" | "SMALLINT" | "TINYINT" => CastType::Integer,
        "REAL" | "DOUBLE" | "FLOAT" | "DOUBLE PRECISION" => CastType::Real,
        "TEXT" | "VARCHAR" | "CHAR" | "STRING" => CastType::Text,
        "BLOB" | "BYTEA" => CastType::Blob,
        "NUMERIC" | "DECIMAL" => CastType::Numeric,
        "BOOLEAN" | "BOOL" => CastType::Boolean,
        "TIMESTAMP" => CastType::Timestamp,
        _ => return Err(SqlError::unsupported(format!("CAST to {ty}"))),
    })
}

/// The elements of a row value `(a, b, ...)` (two or more), looking through parentheses.
fn row_value(e: &ast::Expr) -> Option<&[ast::Expr]> {
    match e {
        ast::Expr::Tuple(items) => Some(items),
        ast::Expr::Nested(inner) => row_value(inner),
        _ => None,
    }
}

fn binary_ast(left: ast::Expr, op: ast::BinaryOperator, right: ast::Expr) -> ast::Expr {
    ast::Expr::BinaryOp { left: Box::new(left), op, right: Box::new(right) }
}

fn row_misused(what: &str) -> SqlError {
    SqlError::invalid(format!("row value misused: {what}"))
}

/// Most values in a row value: an ordering comparison is written out as deep as the row
/// is long.
const ROW_VALUE_MAX: usize = 64;

/// `items` joined by `op` as a balanced tree (as deep as the log of their count, so a
/// long `IN` list of row values does not make a deep expression).
fn balanced(mut items: Vec<ast::Expr>, op: &ast::BinaryOperator) -> ast::Expr {
    assert!(!items.is_empty(), "at least one operand");
    while items.len() > 1 {
        let mut next = Vec::with_capacity(items.len().div_ceil(2));
        let mut operands = items.into_iter();
        while let Some(left) = operands.next() {
            next.push(match operands.next() {
                Some(right) => binary_ast(left, op.clone(), right),
                None => left,
            });
        }
        items = next;
    }
    items.pop().expect("one left")
}

/// A comparison of two row values as SQLite defines it, written out over their elements
/// (so each pair binds as a comparison of its own, NULLs included): `=` is every pair
/// equal, `<>` its negation, and `<`, `<=`, `>`, `>=` are decided by the first pair that
/// is not equal — `(a, b) < (x, y)` is `a < x OR (a = x AND b < y)`, NULL where that pair
/// holds a NULL. Keyset pagination (`WHERE (sensor, ts) > (?1, ?2)`) reads this way.
fn row_comparison(
    left: Option<&[ast::Expr]>,
    op: &ast::BinaryOperator,
    right: Option<&[ast::Expr]>,
    right_expr: &ast::Expr,
) -> Result<ast::Expr, SqlError> {
    use ast::BinaryOperator as B;
    let (Some(left), Some(right)) = (left, right) else {
        if matches!(right_expr, ast::Expr::Subquery(_)) {
            return Err(SqlError::unsupported("a row value compared with a subquery"));
        }
        return Err(row_misused("a row value is compared only with another of as many values"));
    };
    if left.len() != right.len() {
        return Err(row_misused(&format!("{} values compared with {}", left.len(), right.len())));
    }
    if left.len() > ROW_VALUE_MAX {
        return Err(SqlError::unsupported(format!("row values of more than {ROW_VALUE_MAX} values")));
    }
    let pairs = || left.iter().cloned().zip(right.iter().cloned());
    let all_equal = || balanced(pairs().map(|(l, r)| binary_ast(l, B::Eq, r)).collect(), &B::And);
    let strict = match op {
        B::Eq => return Ok(all_equal()),
        B::NotEq => return Ok(ast::Expr::UnaryOp { op: ast::UnaryOperator::Not, expr: Box::new(all_equal()) }),
        B::Lt | B::LtEq => B::Lt,
        B::Gt | B::GtEq => B::Gt,
        other => return Err(row_misused(&format!("the operator {other} on row values"))),
    };
    // From the last pair back: its own operator, then `strict OR (equal AND rest)`.
    let mut pairs: Vec<(ast::Expr, ast::Expr)> = pairs().collect();
    let (l, r) = pairs.pop().expect("two or more");
    let mut rest = binary_ast(l, op.clone(), r);
    while let Some((l, r)) = pairs.pop() {
        let decided = binary_ast(l.clone(), strict.clone(), r.clone());
        let tied = binary_ast(binary_ast(l, B::Eq, r), B::And, rest);
        rest = binary_ast(decided, B::Or, tied);
    }
    Ok(rest)
}

/// `(a, b) [NOT] IN ((x, y), ...)`: whether some listed row value equals it, NULL where
/// none does and a comparison was NULL, as SQLite.
fn row_in_list(expr: &ast::Expr, list: &[ast::Expr], negated: bool) -> Result<ast::Expr, SqlError> {
    if list.is_empty() {
        return Err(row_misused("a row value IN an empty list"));
    }
    let equal = |item| row_comparison(row_value(expr), &ast::BinaryOperator::Eq, row_value(item), item);
    let any = balanced(list.iter().map(equal).collect::<Result<_, _>>()?, &ast::BinaryOperator::Or);
    Ok(match negated {
        true => ast::Expr::UnaryOp { op: ast::UnaryOperator::Not, expr: Box::new(any) },
        false => any,
    })
}

/// The feature an unsupported expression uses, named as SQL writes it.
fn expression_feature(e: &ast::Expr) -> String {
    use ast::Expr as E;
    let named = match e {
        E::Collate { .. } => "COLLATE",
        E::Tuple(_) => "row values like (a, b) outside a comparison or IN list",
        E::Interval(_) => "INTERVAL",
        E::Extract { .. } => "EXTRACT (use strftime-style arithmetic on TIMESTAMP integers)",
        E::TypedString(_) => "typed literals like DATE '...'",
        E::AnyOp { .. } | E::AllOp { .. } => "comparisons with ANY/ALL (...)",
        E::SimilarTo { .. } | E::RLike { .. } => "SIMILAR TO/REGEXP (use LIKE)",
        E::InUnnest { .. } => "IN UNNEST(...)",
        E::Array(_) => "array literals",
        E::Ceil { .. } | E::Floor { .. } => "ceil/floor with a scale or a date field",
        E::Position { .. } => "POSITION(... IN ...) (use instr)",
        E::Overlay { .. } => "OVERLAY",
        E::IsUnknown(_) | E::IsNotUnknown(_) => "IS UNKNOWN",
        E::Wildcard(_) | E::QualifiedWildcard(..) => "* outside a select list or count(*)",
        _ => {
            let text: String = e.to_string().chars().take(60).collect();
            return format!("the expression {text}");
        }
    };
    named.to_string()
}

fn boxed(e: Expr) -> Box<Expr> {
    Box::new(e)
}

impl<'a> Binder<'a> {
    pub fn new(ctx: PlanCtx<'a>, scope: &'a Scope) -> Binder<'a> {
        Binder { ctx, scope, agg: None, win: None, depth: ctx.depth }
    }

    /// Binds an expression, one level deeper than the one binding it: every recursion over
    /// the bound expression (evaluation, rewriting, dropping) is then at most
    /// [`EXPR_DEPTH_MAX`] deep.
    pub fn bind(&mut self, e: &ast::Expr) -> Result<Expr, SqlError> {
        self.nested(1, |binder| binder.bind_node(e))
    }

    /// Runs `f` `levels` deeper.
    fn nested<T>(&mut self, levels: usize, f: impl FnOnce(&mut Self) -> Result<T, SqlError>) -> Result<T, SqlError> {
        if self.depth + levels > EXPR_DEPTH_MAX {
            return Err(SqlError::TooDeep { limit: EXPR_DEPTH_MAX });
        }
        self.depth += levels;
        let result = f(self);
        self.depth -= levels;
        result
    }

    fn bind_node(&mut self, e: &ast::Expr) -> Result<Expr, SqlError> {
        if let Some(agg) = &self.agg {
            if let Some(i) = agg.group_asts.iter().position(|g| g == e) {
                return Ok(Expr::Column(i));
            }
        }
        use ast::Expr as E;
        match e {
            E::Identifier(i) => self.column(None, i),
            E::CompoundIdentifier(parts) => match parts.as_slice() {
                [t, c] => self.column(Some(&ident(t)), c),
                _ => Err(SqlError::unsupported(format!("schema-qualified column names like {e}"))),
            },
            E::Value(v) => match (&v.value, self.ctx.notes) {
                (ast::Value::Placeholder(p), Some(notes)) => {
                    let n = parameter_number(p, self.ctx.params)?;
                    notes.params_max.set(notes.params_max.get().max(n));
                    Ok(Expr::Param(n - 1))
                }
                (v, _) => Ok(Expr::Literal(literal(v, self.ctx.params)?)),
            },
            E::Nested(inner) => self.bind(inner),
            E::BinaryOp { left, op, right } => match (row_value(left), row_value(right)) {
                (None, None) => self.binary(left, op, right),
                (l, r) => self.bind(&row_comparison(l, op, r, right)?),
            },
            E::UnaryOp { op, expr } => match op {
                ast::UnaryOperator::Not => Ok(Expr::Not(boxed(self.bind(expr)?))),
                ast::UnaryOperator::Minus if is_min_integer_digits(expr) => Ok(Expr::Literal(Value::Integer(i64::MIN))),
                ast::UnaryOperator::Minus => Ok(Expr::Neg(boxed(self.bind(expr)?))),
                ast::UnaryOperator::Plus => self.bind(expr),
                ast::UnaryOperator::BitwiseNot => Ok(Expr::Func(Func::BitNot, vec![self.bind(expr)?])),
                _ => Err(SqlError::unsupported(format!("the unary operator {op}"))),
            },
            E::IsNull(x) => Ok(Expr::IsNull(boxed(self.bind(x)?), false)),
            E::IsNotNull(x) => Ok(Expr::IsNull(boxed(self.bind(x)?), true)),
            E::IsTrue(x) => self.is_truth(x, true, false),
            E::IsNotTrue(x) => self.is_truth(x, true, true),
            E::IsFalse(x) => self.is_truth(x, false, false),
            E::IsNotFalse(x) => self.is_truth(x, false, true),
            E::IsDistinctFrom(a, b) => Ok(Expr::Is(boxed(self.bind(a)?), boxed(self.bind(b)?), true)),
            E::IsNotDistinctFrom(a, b) => Ok(Expr::Is(boxed(self.bind(a)?), boxed(self.bind(b)?), false)),
            E::Between { expr, negated, low, high } => {
                let expr = self.bind(expr)?;
                let (low, high) = (self.bind(low)?, self.bind(high)?);
                let (low, high) = (self.time_operand(&expr, low), self.time_operand(&expr, high));
                Ok(Expr::Between(boxed(expr), boxed(low), boxed(high), *negated))
            }
            E::InList { expr, list, negated } if row_value(expr).is_some() => {
                self.bind(&row_in_list(expr, list, *negated)?)
            }
            E::InList { expr, list, negated } => {
                let expr = self.bind(expr)?;
                let list = list
                    .iter()
                    .map(|x| {
                        let item = self.bind(x)?;
                        Ok(self.time_operand(&expr, item))
                    })
                    .collect::<Result<_, SqlError>>()?;
                Ok(Expr::InList(boxed(expr), list, *negated))
            }
            E::InSubquery { expr, subquery, negated } => {
                let lhs = boxed(self.bind(expr)?);
                self.subquery(subquery, SubqueryKind::In { negated: *negated }, Some(lhs))
            }
            E::Exists { subquery, negated } => {
                self.subquery(subquery, SubqueryKind::Exists { negated: *negated }, None)
            }
            E::Subquery(q) => self.subquery(q, SubqueryKind::Scalar, None),
            E::Like { negated, any, expr, pattern, escape_char }
            | E::ILike { negated, any, expr, pattern, escape_char } => {
                if *any {
                    return Err(SqlError::unsupported("LIKE ANY (...)"));
                }
                let escape = escape_char.as_ref().map(|e| self.bind(e)).transpose()?.map(boxed);
                Ok(Expr::Like {
                    expr: boxed(self.bind(expr)?),
                    pattern: boxed(self.bind(pattern)?),
                    escape,
                    negated: *negated,
                })
            }
            E::Case { operand, conditions, else_result, .. } => {
                let operand = operand.as_ref().map(|o| self.bind(o)).transpose()?.map(boxed);
                let whens = conditions
                    .iter()
                    .map(|c| Ok((self.bind(&c.condition)?, self.bind(&c.result)?)))
                    .collect::<Result<_, SqlError>>()?;
                let otherwise = else_result.as_ref().map(|o| self.bind(o)).transpose()?.map(boxed);
                Ok(Expr::Case { operand, whens, otherwise })
            }
            E::Cast { kind, expr, data_type, format } => {
                if !matches!(kind, ast::CastKind::Cast | ast::CastKind::DoubleColon) {
                    return Err(SqlError::unsupported("TRY_CAST/SAFE_CAST (write CAST)"));
                }
                if format.is_some() {
                    return Err(SqlError::unsupported("CAST ... FORMAT"));
                }
                Ok(Expr::Cast(boxed(self.bind(expr)?), cast_type(data_type)?))
            }
            E::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.bind(expr)?];
                let from = substring_from.as_ref().ok_or(SqlError::ArgumentCount { function: "substr".into() })?;
                args.push(self.bind(from)?);
                if let Some(f) = substring_for {
                    args.push(self.bind(f)?);
                }
                Ok(Expr::Func(Func::Substr, args))
            }
            E::Function(f) => self.function(f),
            // sqlparser gives CEIL(x) and FLOOR(x) their own nodes (for CEIL(x TO field)).
            E::Ceil { expr, field: ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime) } => {
                Ok(Expr::Func(Func::Math(MathFunc::Ceil), vec![self.bind(expr)?]))
            }
            E::Floor { expr, field: ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime) } => {
                Ok(Expr::Func(Func::Math(MathFunc::Floor), vec![self.bind(expr)?]))
            }
            E::Trim { trim_where, trim_what, expr, trim_characters } => {
                let func = match trim_where {
                    Some(ast::TrimWhereField::Leading) => Func::Ltrim,
                    Some(ast::TrimWhereField::Trailing) => Func::Rtrim,
                    _ => Func::Trim,
                };
                let mut args = vec![self.bind(expr)?];
                let chars = trim_what.as_deref().or(trim_characters.as_ref().and_then(|c| c.first()));
                if let Some(chars) = chars {
                    args.push(self.bind(chars)?);
                }
                Ok(Expr::Func(func, args))
            }
            _ => Err(SqlError::unsupported(expression_feature(e))),
        }
    }

    fn is_truth(&mut self, x: &ast::Expr, want: bool, negated: bool) -> Result<Expr, SqlError> {
        // `x IS TRUE` is NULL-safe: the truth of x (1, 0 or NULL) IS 1; the two NOTs are
        // two levels more.
        let truth = Expr::Not(boxed(Expr::Not(boxed(self.nested(2, |b| b.bind(x))?))));
        Ok(Expr::Is(boxed(truth), boxed(Expr::Literal(Value::Integer(i64::from(want)))), negated))
    }

    fn column(&mut self, table: Option<&str>, name: &ast::Ident) -> Result<Expr, SqlError> {
        self.column_named(table, &ident(name))
    }

    fn column_named(&mut self, table: Option<&str>, name: &str) -> Result<Expr, SqlError> {
        let position = match self.scope.resolve(table, name) {
            Ok(p) => p,
            Err(SqlError::UnknownColumn(message)) => {
                // Not ours: a column of an enclosing query is a constant for this one.
                if let Some(outer) = self.ctx.outer {
                    if outer.resolves(table, name)? {
                        return Ok(Expr::Outer(outer.reference(table, name)));
                    }
                }
                if let Some(hidden) = self.ctx.hidden_outer {
                    if hidden.resolves(table, name)? {
                        let column = table.map_or_else(|| name.to_string(), |t| format!("{t}.{name}"));
                        return Err(SqlError::unsupported(format!(
                            "correlated subqueries in FROM and CTEs (reading {column} of the enclosing query)"
                        )));
                    }
                }
                return Err(SqlError::UnknownColumn(message));
            }
            Err(e) => return Err(e),
        };
        let Some(agg) = &mut self.agg else { return Ok(Expr::Column(position)) };
        if let Some(i) = agg.groups.iter().position(|g| matches!(g, Expr::Column(p) if *p == position)) {
            return Ok(Expr::Column(i));
        }
        // A bare column in an aggregate query takes its value from some row of the group,
        // as SQLite allows.
        let spec = AggSpec {
            func: AggFunc::Any,
            arg: Some(Expr::Column(position)),
            distinct: false,
            separator: None,
            filter: None,
        };
        Ok(Expr::Column(agg.register(spec, None)))
    }

    /// `other`, compared with `column_side`: a text constant compared with a stored
    /// `TIMESTAMP` column stands for the instant it spells in ISO-8601 (as storing it into
    /// the column would read it), so `ts >= '2026-12-08 09:00'` compares times, not a
    /// number with a text (which SQLite's order puts after every number). A literal is
    /// converted here; a parameter is wrapped in [`Func::Instant`], converted once its value
    /// is known. Other text, other operands and other contexts (an aggregate's or window's
    /// output, a subquery's column, an expression over the column) compare as they are.
    fn time_operand(&self, column_side: &Expr, other: Expr) -> Expr {
        let timestamp = match column_side {
            Expr::Column(c) if self.agg.is_none() && self.win.is_none() => {
                self.scope.columns.get(*c).is_some_and(|column| column.timestamp)
            }
            _ => false,
        };
        if !timestamp {
            return other;
        }
        match other {
            Expr::Literal(Value::Text(text)) => match datetime::iso_timestamp_ms(&text) {
                Some(ms) => Expr::Literal(Value::Timestamp(ms)),
                None => Expr::Literal(Value::Text(text)),
            },
            Expr::Param(n) => Expr::Func(Func::Instant, vec![Expr::Param(n)]),
            other => other,
        }
    }

    fn binary(&mut self, left: &ast::Expr, op: &ast::BinaryOperator, right: &ast::Expr) -> Result<Expr, SqlError> {
        use ast::BinaryOperator as B;
        let (l, r) = (self.bind(left)?, self.bind(right)?);
        let (l, r) = match op {
            B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq => {
                let r = self.time_operand(&l, r);
                (self.time_operand(&r, l), r)
            }
            _ => (l, r),
        };
        let (l, r) = (boxed(l), boxed(r));
        Ok(match op {
            B::Plus => Expr::Arith(ArithOp::Add, l, r),
            B::Minus => Expr::Arith(ArithOp::Sub, l, r),
            B::Multiply => Expr::Arith(ArithOp::Mul, l, r),
            B::Divide => Expr::Arith(ArithOp::Div, l, r),
            B::Modulo => Expr::Arith(ArithOp::Rem, l, r),
            B::StringConcat => Expr::Concat(l, r),
            B::Eq => Expr::Cmp(CmpOp::Eq, l, r),
            B::NotEq => Expr::Cmp(CmpOp::NotEq, l, r),
            B::Lt => Expr::Cmp(CmpOp::Lt, l, r),
            B::LtEq => Expr::Cmp(CmpOp::LtEq, l, r),
            B::Gt => Expr::Cmp(CmpOp::Gt, l, r),
            B::GtEq => Expr::Cmp(CmpOp::GtEq, l, r),
            B::And => Expr::And(l, r),
            B::Or => Expr::Or(l, r),
            B::Spaceship => Expr::Is(l, r, false),
            B::Arrow => Expr::Func(Func::JsonArrow, vec![*l, *r]),
            B::LongArrow => Expr::Func(Func::JsonLongArrow, vec![*l, *r]),
            B::BitwiseAnd => Expr::Func(Func::BitAnd, vec![*l, *r]),
            B::BitwiseOr => Expr::Func(Func::BitOr, vec![*l, *r]),
            B::PGBitwiseShiftLeft => Expr::Func(Func::ShiftLeft, vec![*l, *r]),
            B::PGBitwiseShiftRight => Expr::Func(Func::ShiftRight, vec![*l, *r]),
            B::Glob => Expr::Func(Func::Glob, vec![*r, *l]),
            B::Regexp | B::Match => return Err(SqlError::unsupported(format!("{op} (use LIKE)"))),
            other => return Err(SqlError::unsupported(format!("the operator {other}"))),
        })
    }

    fn function(&mut self, f: &ast::Function) -> Result<Expr, SqlError> {
        if let Some(over) = &f.over {
            return window::bind_call(self, f, over);
        }
        let name = function_name(f)?;
        if window::is_window_only(&name) {
            return Err(SqlError::invalid(format!("misuse of window function {name}(): it needs an OVER clause")));
        }
        let (args, distinct) = function_args(f)?;
        if is_aggregate(&name, args.len()) {
            return self.aggregate(f, &name, &args, distinct);
        }
        if distinct {
            return Err(SqlError::invalid(format!("DISTINCT in non-aggregate function {name}()")));
        }
        if f.filter.is_some() {
            return Err(SqlError::invalid(format!("FILTER may not be used with non-aggregate {name}()")));
        }
        let func = Func::lookup(&name, args.len())?;
        let mut bound = Vec::with_capacity(args.len() + 1);
        if matches!(func, Func::Date(_)) {
            bound.push(self.statement_time());
        }
        for a in args {
            match a {
                ast::FunctionArgExpr::Expr(e) => bound.push(self.bind(e)?),
                _ => return Err(SqlError::invalid(format!("* is not an argument of {name}()"))),
            }
        }
        let func = func.mark_json_args(&mut bound);
        Ok(Expr::Func(func, bound))
    }

    /// The statement time for a date function: a placeholder in a plan to be kept (each
    /// execution has its own time), else this execution's value.
    fn statement_time(&self) -> Expr {
        match self.ctx.notes {
            Some(notes) => {
                notes.reads_now.set(true);
                Expr::StatementTime
            }
            None => Expr::Literal(self.ctx.now_ms.map_or(Value::Null, Value::Timestamp)),
        }
    }

    fn aggregate(
        &mut self,
        f: &ast::Function,
        name: &str,
        args: &[&ast::FunctionArgExpr],
        distinct: bool,
    ) -> Result<Expr, SqlError> {
        let Some(mut agg) = self.agg.take() else {
            return Err(SqlError::invalid(format!("misuse of aggregate function {name}()")));
        };
        // Arguments bind in the input scope, where a nested aggregate (or a window function)
        // is a misuse.
        let win = self.win.take();
        let spec = self.aggregate_spec(name, args, distinct, f.filter.as_deref());
        self.win = win;
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                self.agg = Some(agg);
                return Err(e);
            }
        };
        let slot = agg.register(spec, Some(ast::Expr::Function(f.clone())));
        self.agg = Some(agg);
        Ok(Expr::Column(slot))
    }

    fn aggregate_spec(
        &mut self,
        name: &str,
        args: &[&ast::FunctionArgExpr],
        distinct: bool,
        filter: Option<&ast::Expr>,
    ) -> Result<AggSpec, SqlError> {
        let func = AggFunc::from_name(name);
        // `FILTER (WHERE ...)` binds in the input scope, as the arguments do.
        let filter = filter.map(|e| self.bind(e)).transpose()?;
        if filter.as_ref().is_some_and(Expr::has_outer) {
            return Err(SqlError::unsupported(format!(
                "FILTER of {name}() over a column of an enclosing query, inside a subquery"
            )));
        }
        let mut bound = Vec::new();
        for a in args {
            match a {
                ast::FunctionArgExpr::Expr(e) => {
                    let e = self.bind(e)?;
                    if e.has_outer() {
                        // SQLite would aggregate such an argument in the outer query.
                        return Err(SqlError::unsupported(format!(
                            "{name}() over a column of an enclosing query, inside a subquery"
                        )));
                    }
                    bound.push(e);
                }
                ast::FunctionArgExpr::Wildcard if func == AggFunc::Count && args.len() == 1 && !distinct => {
                    return Ok(AggSpec {
                        func: AggFunc::CountStar,
                        arg: None,
                        distinct: false,
                        separator: None,
                        filter,
                    });
                }
                _ => return Err(SqlError::invalid(format!("bad arguments to {name}()"))),
            }
        }
        match (func, bound.len()) {
            // `string_agg(X, Y)` is SQLite's (3.44) other name of `group_concat(X, Y)`.
            (AggFunc::GroupConcat, 2) if name == "string_agg" && !distinct => {}
            (AggFunc::GroupConcat, _) if name == "string_agg" => {
                return Err(SqlError::ArgumentCount { function: name.to_string() })
            }
            (AggFunc::GroupConcat, 1 | 2) if !(distinct && bound.len() == 2) => {}
            (_, 1) => {}
            _ => return Err(SqlError::ArgumentCount { function: name.to_string() }),
        }
        let separator = if bound.len() == 2 { bound.pop() } else { None };
        Ok(AggSpec { func, arg: bound.pop(), distinct, separator, filter })
    }

    /// Plans a subquery. Uncorrelated, it runs now, once, and becomes a constant (so that
    /// `id = (SELECT ...)` can still choose a key path); correlated, it becomes an
    /// [`Expr::Subquery`] whose outer values are bound here, in this query's scope.
    fn subquery(&mut self, q: &ast::Query, kind: SubqueryKind, lhs: Option<Box<Expr>>) -> Result<Expr, SqlError> {
        let outer = Outer { scope: self.scope, parent: self.ctx.outer, refs: RefCell::default() };
        // A plan holding a subquery's rows (or its snapshot) is for this execution only; the
        // subquery's parameters bind as values.
        self.ctx.not_reusable();
        let ctx =
            PlanCtx { outer: Some(&outer), notes: None, depth: self.depth, ..self.ctx }.deeper(SUBQUERY_DEPTH_COST)?;
        let planned = select::plan_query(ctx, q)?;
        let width = planned.columns.len();
        if !matches!(kind, SubqueryKind::Exists { .. }) && width != 1 {
            return Err(SqlError::invalid(format!("sub-select returns {width} columns - expected 1")));
        }
        let refs = outer.refs.into_inner();
        if refs.is_empty() {
            let limits = self.ctx.limits;
            return subquery::constant(kind, exec::open(planned.plan, self.ctx.snap, limits)?, lhs, limits);
        }
        let args =
            refs.iter().map(|(table, name)| self.column_named(table.as_deref(), name)).collect::<Result<_, _>>()?;
        let sub = Arc::new(Subquery::new(kind, planned.plan, self.ctx.snap, self.ctx.limits));
        Ok(Expr::Subquery(SubqueryCall { lhs, args, sub }))
    }
}

impl AggCtx {
    /// Adds an aggregate (reusing an identical one) and returns its output position.
    fn register(&mut self, spec: AggSpec, ast: Option<ast::Expr>) -> usize {
        if let Some(ast) = &ast {
            if let Some(i) = self.agg_asts.iter().position(|a| a == ast) {
                return self.groups.len() + i;
            }
        }
        self.aggs.push(spec);
        self.agg_asts.push(ast.unwrap_or(ast::Expr::Value(ast::Value::Null.into())));
        self.groups.len() + self.aggs.len() - 1
    }
}
