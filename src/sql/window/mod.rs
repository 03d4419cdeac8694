//! Window functions (`f(...) OVER (PARTITION BY ... ORDER BY ... frame)`), as SQLite
//! computes them: the window operator runs after `WHERE`/`GROUP BY`/`HAVING` and before
//! the projection, `DISTINCT`, `ORDER BY` and `LIMIT` of its query.
//!
//! - `bind`: window calls in a select list (and `ORDER BY`) become [`WindowFunc`]s, grouped
//!   by their `PARTITION BY`/`ORDER BY` into [`WindowSort`]s (one sort serves them all);
//!   named windows (`WINDOW w AS (...)`) resolve here.
//! - `frame`: which rows of a partition each row's frame holds (`ROWS`, `GROUPS`, `RANGE`),
//!   and the sliding accumulators of the aggregates over it.
//! - `exec`: the operator. It holds its whole input (accounted against the statement's
//!   budget, checking the interrupt per row), sorts it once per [`WindowSort`] and
//!   appends one value per window function to every row.
//!
//! Output rows are the input row followed by the window values, in slot order.

mod bind;
mod exec;
mod frame;

pub(crate) use bind::{bind_call, is_window_only, WinCtx};
pub(crate) use exec::run;

use super::aggregate::AggFunc;
use super::expr::Expr;

/// What a window function computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WinKind {
    RowNumber,
    Rank,
    DenseRank,
    PercentRank,
    CumeDist,
    /// `ntile(n)`: `n` is evaluated on the partition's first row.
    Ntile,
    /// `lag(x [, offset [, default]])`: offset and default are evaluated per row.
    Lag,
    Lead,
    FirstValue,
    LastValue,
    /// `nth_value(x, n)`, `n` evaluated per row.
    NthValue,
    /// An aggregate over the frame (`count`, `sum`, `total`, `avg`, `min`, `max`,
    /// `group_concat`).
    Agg(AggFunc),
}

impl WinKind {
    pub fn name(self) -> &'static str {
        match self {
            WinKind::RowNumber => "row_number",
            WinKind::Rank => "rank",
            WinKind::DenseRank => "dense_rank",
            WinKind::PercentRank => "percent_rank",
            WinKind::CumeDist => "cume_dist",
            WinKind::Ntile => "ntile",
            WinKind::Lag => "lag",
            WinKind::Lead => "lead",
            WinKind::FirstValue => "first_value",
            WinKind::LastValue => "last_value",
            WinKind::NthValue => "nth_value",
            WinKind::Agg(func) => func.name(),
        }
    }

    /// Whether the frame decides the result (SQLite's ranking functions and lag/lead
    /// ignore it).
    pub fn uses_frame(self) -> bool {
        matches!(self, WinKind::FirstValue | WinKind::LastValue | WinKind::NthValue | WinKind::Agg(_))
    }
}

/// How a frame counts: by rows, by peer groups, or by peers of the current row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Units {
    Rows,
    Groups,
    /// By the value of the one `ORDER BY` term when a bound has an offset (numbers only),
    /// by peers otherwise.
    Range,
}

/// One end of a frame, its offset already checked: a non-negative integer for `ROWS` and
/// `GROUPS`, a non-negative number for `RANGE`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FrameBound {
    UnboundedPreceding,
    Preceding(f64),
    CurrentRow,
    Following(f64),
    UnboundedFollowing,
}

impl FrameBound {
    /// Whether the bound has an offset (`N PRECEDING`, `N FOLLOWING`).
    pub fn has_offset(self) -> bool {
        matches!(self, FrameBound::Preceding(_) | FrameBound::Following(_))
    }
}

/// A window frame. SQLite's default (`RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT
/// ROW`) holds the partition up to the current row's last peer; without `ORDER BY` every
/// row is a peer, so it is the whole partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Frame {
    pub units: Units,
    pub start: FrameBound,
    pub end: FrameBound,
}

impl Frame {
    pub const DEFAULT: Frame =
        Frame { units: Units::Range, start: FrameBound::UnboundedPreceding, end: FrameBound::CurrentRow };

    /// Whether the frame is a `RANGE` with an offset: it needs the order values.
    pub fn is_range_offset(&self) -> bool {
        self.units == Units::Range && (self.start.has_offset() || self.end.has_offset())
    }
}

impl std::fmt::Display for FrameBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameBound::UnboundedPreceding => f.write_str("UNBOUNDED PRECEDING"),
            FrameBound::Preceding(n) => write!(f, "{n} PRECEDING"),
            FrameBound::CurrentRow => f.write_str("CURRENT ROW"),
            FrameBound::Following(n) => write!(f, "{n} FOLLOWING"),
            FrameBound::UnboundedFollowing => f.write_str("UNBOUNDED FOLLOWING"),
        }
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = match self.units {
            Units::Rows => "ROWS",
            Units::Groups => "GROUPS",
            Units::Range => "RANGE",
        };
        write!(f, "{units} BETWEEN {} AND {}", self.start, self.end)
    }
}

/// One window function call.
#[derive(Debug, Clone)]
pub(crate) struct WindowFunc {
    pub kind: WinKind,
    /// Evaluated on the operator's input row; `count(*)` has none.
    pub args: Vec<Expr>,
    /// `FILTER (WHERE ...)` of an aggregate: a row it does not make true counts as a NULL
    /// argument, which every aggregate skips.
    pub filter: Option<Expr>,
    pub frame: Frame,
    /// Its value's position among the operator's window values.
    pub slot: usize,
}

/// An `ORDER BY` term of a window.
#[derive(Debug, Clone)]
pub(crate) struct OrderTerm {
    pub expr: Expr,
    pub descending: bool,
    pub nulls_first: bool,
}

/// The window functions that share one `PARTITION BY` and `ORDER BY`, and so one sort.
#[derive(Debug, Clone)]
pub(crate) struct WindowSort {
    pub partition: Vec<Expr>,
    pub order: Vec<OrderTerm>,
    pub funcs: Vec<WindowFunc>,
    /// `PARTITION BY ... ORDER BY ...` as written, for `EXPLAIN`.
    pub text: String,
}

impl WindowSort {
    /// Every expression of the sort and its functions (for parameter binding).
    pub fn exprs_mut(&mut self) -> impl Iterator<Item = &mut Expr> {
        let funcs = self.funcs.iter_mut().flat_map(|f| f.args.iter_mut());
        self.partition.iter_mut().chain(self.order.iter_mut().map(|t| &mut t.expr)).chain(funcs)
    }

    /// The sort and its functions as `EXPLAIN` shows them.
    pub fn explain(&self) -> String {
        let funcs: Vec<String> = self
            .funcs
            .iter()
            .map(|f| {
                if f.kind.uses_frame() {
                    format!("{}() {}", f.kind.name(), f.frame)
                } else {
                    format!("{}()", f.kind.name())
                }
            })
            .collect();
        let over = if self.text.is_empty() { "()".to_string() } else { format!("({})", self.text) };
        format!("OVER {over}: {}", funcs.join(", "))
    }
}
