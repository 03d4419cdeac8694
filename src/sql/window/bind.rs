//! Binding window calls: `f(args) OVER (...)` or `OVER name` in a select list or
//! `ORDER BY` becomes a [`WindowFunc`] of the query's window operator, and the expression
//! that reads its value ([`Expr::WindowResult`]).
//!
//! SQLite's rules: a named window may be refined by `OVER (name ORDER BY ...)` only where it
//! has no `ORDER BY`, never in its partition or frame; window functions nested in window or
//! aggregate arguments, or outside the select list and `ORDER BY`, are a misuse; `DISTINCT`
//! is refused. Frame offsets are constants, checked here as SQLite checks them when the
//! statement starts.

use sqlparser::ast;

use super::super::aggregate::AggFunc;
use super::super::bind::{self, Binder};
use super::super::expr::Expr;
use super::super::func::Func;
use super::super::{select, SqlError};
use super::{Frame, FrameBound, OrderTerm, Units, WinKind, WindowFunc, WindowSort};
use crate::types::Value;

/// The window functions of one query, found while its select list and `ORDER BY` bind.
#[derive(Debug, Default)]
pub(crate) struct WinCtx {
    /// `WINDOW name AS (...)` definitions, in written order.
    named: Vec<(String, ast::NamedWindowExpr)>,
    pub sorts: Vec<WindowSort>,
    /// Window values registered so far.
    pub count: usize,
}

/// Longest chain of `WINDOW a AS b` references followed (a loop is an error, not a hang).
const NAMED_WINDOW_CHAIN_MAX: usize = 64;

impl WinCtx {
    /// The context of a query with these `WINDOW` definitions.
    pub fn new(named: &[ast::NamedWindowDefinition]) -> WinCtx {
        let named = named.iter().map(|d| (bind::ident(&d.0), d.1.clone())).collect();
        WinCtx { named, ..WinCtx::default() }
    }

    /// The specification a `WINDOW` name stands for (`hops`: names followed so far).
    fn named_spec(&self, name: &ast::Ident, hops: usize) -> Result<ast::WindowSpec, SqlError> {
        if hops > NAMED_WINDOW_CHAIN_MAX {
            return Err(SqlError::invalid(format!("window {name} refers to windows in a loop")));
        }
        let wanted = bind::ident(name);
        match self.named.iter().find(|(n, _)| *n == wanted) {
            Some((_, ast::NamedWindowExpr::WindowSpec(spec))) => self.refine(spec, hops + 1),
            Some((_, ast::NamedWindowExpr::NamedWindow(next))) => self.named_spec(next, hops + 1),
            None => Err(SqlError::invalid(format!("no such window: {wanted}"))),
        }
    }

    /// The specification of an `OVER` clause, with the named window it refines merged in.
    fn resolve(&self, over: &ast::WindowType) -> Result<ast::WindowSpec, SqlError> {
        match over {
            ast::WindowType::NamedWindow(name) => self.named_spec(name, 0),
            ast::WindowType::WindowSpec(spec) => self.refine(spec, 0),
        }
    }

    /// `spec` with the named window it starts with (`(name ORDER BY ...)`) merged in.
    fn refine(&self, spec: &ast::WindowSpec, hops: usize) -> Result<ast::WindowSpec, SqlError> {
        let Some(name) = &spec.window_name else { return Ok(spec.clone()) };
        let base = self.named_spec(name, hops)?;
        let cannot = |what: &str| Err(SqlError::invalid(format!("cannot override {what} of window: {name}")));
        if !spec.partition_by.is_empty() {
            return cannot("PARTITION clause");
        }
        if !spec.order_by.is_empty() && !base.order_by.is_empty() {
            return cannot("ORDER BY clause");
        }
        if base.window_frame.is_some() {
            return cannot("frame specification");
        }
        let order_by = if spec.order_by.is_empty() { base.order_by.clone() } else { spec.order_by.clone() };
        Ok(ast::WindowSpec {
            window_name: None,
            partition_by: base.partition_by,
            order_by,
            window_frame: spec.window_frame.clone(),
        })
    }
}

/// The kind of a window function by name, checking its argument count.
fn kind(name: &str, args: usize) -> Result<WinKind, SqlError> {
    let (kind, min, max) = match name {
        "row_number" => (WinKind::RowNumber, 0, 0),
        "rank" => (WinKind::Rank, 0, 0),
        "dense_rank" => (WinKind::DenseRank, 0, 0),
        "percent_rank" => (WinKind::PercentRank, 0, 0),
        "cume_dist" => (WinKind::CumeDist, 0, 0),
        "ntile" => (WinKind::Ntile, 1, 1),
        "lag" => (WinKind::Lag, 1, 3),
        "lead" => (WinKind::Lead, 1, 3),
        "first_value" => (WinKind::FirstValue, 1, 1),
        "last_value" => (WinKind::LastValue, 1, 1),
        "nth_value" => (WinKind::NthValue, 2, 2),
        "count" => (WinKind::Agg(AggFunc::Count), 0, 1),
        "sum" | "total" | "avg" => (WinKind::Agg(AggFunc::from_name(name)), 1, 1),
        "min" | "max" if args != 1 => {
            return Err(SqlError::invalid(format!("{name}() may not be used as a window function")))
        }
        "min" | "max" => (WinKind::Agg(AggFunc::from_name(name)), 1, 1),
        "group_concat" => (WinKind::Agg(AggFunc::GroupConcat), 1, 2),
        "string_agg" => (WinKind::Agg(AggFunc::GroupConcat), 2, 2),
        _ => {
            // A scalar function is known, just not as a window function.
            Func::lookup(name, args)?;
            return Err(SqlError::invalid(format!("{name}() may not be used as a window function")));
        }
    };
    if args < min || args > max {
        return Err(SqlError::ArgumentCount { function: name.to_string() });
    }
    Ok(kind)
}

/// Whether `name` is a function that exists only as a window function.
pub(crate) fn is_window_only(name: &str) -> bool {
    matches!(
        name,
        "row_number"
            | "rank"
            | "dense_rank"
            | "percent_rank"
            | "cume_dist"
            | "ntile"
            | "lag"
            | "lead"
            | "first_value"
            | "last_value"
            | "nth_value"
    )
}

/// Binds `f(...) OVER ...` in `binder`'s query; the result reads the function's value.
pub(crate) fn bind_call(binder: &mut Binder<'_>, f: &ast::Function, over: &ast::WindowType) -> Result<Expr, SqlError> {
    let name = bind::object_name(&f.name)?;
    let Some(win) = binder.win.take() else {
        return Err(SqlError::invalid(format!(
            "misuse of window function {name}(): window functions are allowed only in the select list and ORDER BY"
        )));
    };
    // Arguments and the window's terms bind without the window context: a window function
    // inside them is a misuse, as in SQLite.
    let bound = bind_parts(binder, &win, f, &name, over);
    binder.win = Some(win);
    let (func, spec) = bound?;
    let win = binder.win.as_mut().expect("restored above");
    let slot = win.count;
    win.count += 1;
    let text = spec_text(&spec);
    let func = WindowFunc { slot, ..func };
    match win.sorts.iter_mut().find(|s| s.text == text) {
        Some(sort) => sort.funcs.push(func),
        None => {
            let (partition, order) = bind_sort(binder, &spec)?;
            let win = binder.win.as_mut().expect("restored above");
            win.sorts.push(WindowSort { partition, order, funcs: vec![func], text });
        }
    }
    Ok(Expr::WindowResult(slot))
}

/// `PARTITION BY ... ORDER BY ...` as written: windows with the same text share a sort.
fn spec_text(spec: &ast::WindowSpec) -> String {
    let mut parts = Vec::new();
    if !spec.partition_by.is_empty() {
        let terms: Vec<String> = spec.partition_by.iter().map(ToString::to_string).collect();
        parts.push(format!("PARTITION BY {}", terms.join(", ")));
    }
    if !spec.order_by.is_empty() {
        let terms: Vec<String> = spec.order_by.iter().map(ToString::to_string).collect();
        parts.push(format!("ORDER BY {}", terms.join(", ")));
    }
    parts.join(" ")
}

/// The function (slot not yet set) and its resolved window specification.
fn bind_parts(
    binder: &mut Binder<'_>,
    win: &WinCtx,
    f: &ast::Function,
    name: &str,
    over: &ast::WindowType,
) -> Result<(WindowFunc, ast::WindowSpec), SqlError> {
    if !f.within_group.is_empty() || f.null_treatment.is_some() {
        return Err(SqlError::unsupported(format!("WITHIN GROUP or IGNORE/RESPECT NULLS on {name}()")));
    }
    let (args, distinct) = bind::call_args(f)?;
    if distinct {
        return Err(SqlError::unsupported(format!("DISTINCT in a window function ({name}(DISTINCT ...) OVER ...)")));
    }
    let star = matches!(args.as_slice(), [ast::FunctionArgExpr::Wildcard]);
    let kind = kind(name, if star { 0 } else { args.len() })?;
    if star && kind != WinKind::Agg(AggFunc::Count) {
        return Err(SqlError::invalid(format!("* is not an argument of {name}()")));
    }
    let mut bound = Vec::with_capacity(args.len());
    for a in args.iter().filter(|_| !star) {
        match a {
            ast::FunctionArgExpr::Expr(e) => bound.push(binder.bind(e)?),
            _ => return Err(SqlError::invalid(format!("bad arguments to {name}()"))),
        }
    }
    let kind = match kind {
        WinKind::Agg(AggFunc::Count) if star => WinKind::Agg(AggFunc::CountStar),
        WinKind::Agg(AggFunc::Count) if bound.is_empty() => {
            return Err(SqlError::ArgumentCount { function: name.to_string() })
        }
        other => other,
    };
    // `FILTER (WHERE ...)` binds in the input scope, as the arguments do; SQLite allows
    // it on aggregates only.
    let filter = match (&f.filter, kind) {
        (None, _) => None,
        (Some(e), WinKind::Agg(_)) => Some(binder.bind(e)?),
        (Some(_), _) => {
            return Err(SqlError::invalid("FILTER clause may only be used with aggregate window functions"))
        }
    };
    let spec = win.resolve(over)?;
    let frame = frame(binder, spec.window_frame.as_ref())?;
    if frame.is_range_offset() && spec.order_by.len() != 1 {
        return Err(SqlError::invalid("RANGE with offset PRECEDING/FOLLOWING requires one ORDER BY expression"));
    }
    Ok((WindowFunc { kind, args: bound, filter, frame, slot: 0 }, spec))
}

fn bind_sort(binder: &mut Binder<'_>, spec: &ast::WindowSpec) -> Result<(Vec<Expr>, Vec<OrderTerm>), SqlError> {
    let win = binder.win.take();
    let result = (|| {
        let partition = spec.partition_by.iter().map(|e| binder.bind(e)).collect::<Result<Vec<_>, _>>()?;
        let mut order = Vec::with_capacity(spec.order_by.len());
        for term in &spec.order_by {
            if term.with_fill.is_some() {
                return Err(SqlError::unsupported("ORDER BY ... WITH FILL"));
            }
            let descending = matches!(term.options.sort, Some(ast::OrderBySort::Desc));
            let nulls_first = term.options.nulls_first.unwrap_or(!descending);
            order.push(OrderTerm { expr: binder.bind(&term.expr)?, descending, nulls_first });
        }
        Ok((partition, order))
    })();
    binder.win = win;
    result
}

/// The frame of a window (SQLite's default without one).
fn frame(binder: &Binder<'_>, frame: Option<&ast::WindowFrame>) -> Result<Frame, SqlError> {
    let Some(frame) = frame else { return Ok(Frame::DEFAULT) };
    let units = match frame.units {
        ast::WindowFrameUnits::Rows => Units::Rows,
        ast::WindowFrameUnits::Groups => Units::Groups,
        ast::WindowFrameUnits::Range => Units::Range,
    };
    let start = bound(binder, &frame.start_bound, "starting", units)?;
    let end = match &frame.end_bound {
        Some(b) => bound(binder, b, "ending", units)?,
        None => FrameBound::CurrentRow,
    };
    if start == FrameBound::UnboundedFollowing || end == FrameBound::UnboundedPreceding {
        return Err(SqlError::invalid(format!(
            "unsupported frame specification: a frame cannot start at {start} or end at {end}"
        )));
    }
    // SQLite's order of bounds: a frame may not end in a kind of bound before the one it
    // starts with (CURRENT ROW AND 1 PRECEDING, 1 FOLLOWING AND CURRENT ROW).
    let rank = |b: FrameBound| match b {
        FrameBound::UnboundedPreceding => 0,
        FrameBound::Preceding(_) => 1,
        FrameBound::CurrentRow => 2,
        FrameBound::Following(_) => 3,
        FrameBound::UnboundedFollowing => 4,
    };
    if rank(end) < rank(start) {
        return Err(SqlError::invalid(format!("unsupported frame specification: BETWEEN {start} AND {end}")));
    }
    Ok(Frame { units, start, end })
}

fn bound(binder: &Binder<'_>, b: &ast::WindowFrameBound, which: &str, units: Units) -> Result<FrameBound, SqlError> {
    Ok(match b {
        ast::WindowFrameBound::CurrentRow => FrameBound::CurrentRow,
        ast::WindowFrameBound::Preceding(None) => FrameBound::UnboundedPreceding,
        ast::WindowFrameBound::Following(None) => FrameBound::UnboundedFollowing,
        ast::WindowFrameBound::Preceding(Some(e)) => FrameBound::Preceding(offset(binder, e, which, units)?),
        ast::WindowFrameBound::Following(Some(e)) => FrameBound::Following(offset(binder, e, which, units)?),
    })
}

/// A frame offset, a constant: a non-negative integer for `ROWS` and `GROUPS` (an integral
/// real counts, as in SQLite), a non-negative number for `RANGE`.
fn offset(binder: &Binder<'_>, e: &ast::Expr, which: &str, units: Units) -> Result<f64, SqlError> {
    let value = select::constant(binder.ctx, e)?;
    let n = match (value, units) {
        (Value::Integer(i), _) if i >= 0 => Some(i as f64),
        (Value::Real(r), Units::Range) if r >= 0.0 && r.is_finite() => Some(r),
        (Value::Real(r), _) if r >= 0.0 && r.fract() == 0.0 && r.is_finite() => Some(r),
        _ => None,
    };
    let kind = if units == Units::Range { "number" } else { "integer" };
    n.ok_or_else(|| SqlError::invalid(format!("frame {which} offset must be a non-negative {kind}")))
}
