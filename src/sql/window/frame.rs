//! Frames and the aggregates over them.
//!
//! A partition's rows are in window order; peers (rows equal in every `ORDER BY` term)
//! form groups. Each row's frame is a range of positions `[start, end)`, and both ends
//! only move forward from one row to the next, so an aggregate slides over the partition:
//! rows entering the frame are added, rows leaving it removed. `count`, `sum`, `total` and
//! `avg` can remove a row; `min` and `max` cannot, and start again from the frame's first
//! row when it moves (as SQLite, which has no inverse for them, does).

use super::super::aggregate::AggFunc;
use super::super::value::{self, Num};
use super::super::SqlError;
use super::{Frame, FrameBound, Units};
use crate::types::Value;

/// The peer groups of a partition.
pub(super) struct Peers {
    /// Each row's group, counted from 0.
    pub group: Vec<usize>,
    /// Where each group starts, and the partition's length at the end.
    pub starts: Vec<usize>,
}

impl Peers {
    pub fn groups(&self) -> usize {
        self.starts.len() - 1
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The positions `[start, end)` of row `i`'s frame in a partition of `n` rows (`end ≥
/// start`: an empty frame starts where it ends).
pub(super) fn bounds(frame: &Frame, i: usize, peers: &Peers, n: usize) -> (usize, usize) {
    let g = peers.group[i];
    let groups = peers.groups();
    let starts = &peers.starts;
    // A RANGE offset is refused when the window binds; its peers are the current group.
    debug_assert!(
        frame.units != Units::Range
            || !matches!(frame.start, FrameBound::Preceding(_) | FrameBound::Following(_))
                && !matches!(frame.end, FrameBound::Preceding(_) | FrameBound::Following(_))
    );
    let start = match (frame.units, frame.start) {
        (_, FrameBound::UnboundedPreceding) => 0,
        (_, FrameBound::UnboundedFollowing) => n,
        (Units::Rows, FrameBound::Preceding(k)) => i.saturating_sub(to_usize(k)),
        (Units::Rows, FrameBound::CurrentRow) => i,
        (Units::Rows, FrameBound::Following(k)) => i.saturating_add(to_usize(k)).min(n),
        (Units::Groups, FrameBound::Preceding(k)) => starts[g.saturating_sub(to_usize(k))],
        (Units::Groups, FrameBound::Following(k)) => starts[g.saturating_add(to_usize(k)).min(groups)],
        (Units::Groups | Units::Range, _) => starts[g],
    };
    let end = match (frame.units, frame.end) {
        (_, FrameBound::UnboundedFollowing) => n,
        (_, FrameBound::UnboundedPreceding) => 0,
        (Units::Rows, FrameBound::Following(k)) => i.saturating_add(to_usize(k)).saturating_add(1).min(n),
        (Units::Rows, FrameBound::CurrentRow) => i + 1,
        (Units::Rows, FrameBound::Preceding(k)) => (i + 1).saturating_sub(to_usize(k)),
        (Units::Groups, FrameBound::Following(k)) => {
            starts[g.saturating_add(to_usize(k)).saturating_add(1).min(groups)]
        }
        (Units::Groups, FrameBound::Preceding(k)) => match g.checked_sub(to_usize(k)) {
            Some(h) => starts[h + 1],
            None => 0,
        },
        (Units::Groups | Units::Range, _) => starts[g + 1],
    };
    (start, end.max(start))
}

/// Whether the aggregate can take a row back out.
pub(super) fn invertible(func: AggFunc) -> bool {
    matches!(func, AggFunc::Count | AggFunc::CountStar | AggFunc::Sum | AggFunc::Avg | AggFunc::Total)
}

/// Neumaier's compensated sum, so that rows added and removed again leave (almost) no
/// rounding behind.
#[derive(Debug, Default, Clone, Copy)]
struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(self) -> f64 {
        self.sum + self.compensation
    }
}

/// One aggregate over the rows of a frame (not `group_concat`, which is rebuilt per row).
#[derive(Debug)]
pub(super) struct Sliding {
    func: AggFunc,
    count: i64,
    int_sum: i128,
    real_sum: CompensatedSum,
    /// Once a real was added the sum stays a real for the partition, even after that row
    /// left the frame: SQLite's `sum` keeps its approximate state the same way.
    saw_real: bool,
    best: Option<Value>,
}

impl Sliding {
    pub fn new(func: AggFunc) -> Sliding {
        Sliding { func, count: 0, int_sum: 0, real_sum: CompensatedSum::default(), saw_real: false, best: None }
    }

    /// Adds a row's argument (`count(*)` passes any non-NULL value).
    pub fn add(&mut self, v: &Value) {
        if v.is_null() {
            return;
        }
        self.count += 1;
        match self.func {
            AggFunc::Sum | AggFunc::Avg | AggFunc::Total => self.sum(v, 1),
            AggFunc::Min | AggFunc::Max => {
                let better = self.best.as_ref().is_none_or(|best| {
                    let order = value::compare(v, best);
                    if self.func == AggFunc::Min {
                        order.is_lt()
                    } else {
                        order.is_gt()
                    }
                });
                if better {
                    self.best = Some(v.clone());
                }
            }
            _ => {}
        }
    }

    /// Takes a row's argument back out (only for [`invertible`] aggregates).
    pub fn remove(&mut self, v: &Value) {
        debug_assert!(invertible(self.func));
        if v.is_null() {
            return;
        }
        self.count -= 1;
        if matches!(self.func, AggFunc::Sum | AggFunc::Avg | AggFunc::Total) {
            self.sum(v, -1);
        }
    }

    fn sum(&mut self, v: &Value, sign: i8) {
        match value::to_num(v) {
            Some(Num::Int(i)) => self.int_sum += i128::from(i) * i128::from(sign),
            Some(Num::Real(r)) => {
                self.saw_real = true;
                self.real_sum.add(r * f64::from(sign));
            }
            None => {}
        }
        // Non-numeric text counts as a real 0.0, as in SQLite (and `aggregate.rs`).
        if matches!(v, Value::Text(_) | Value::Blob(_)) && !matches!(value::to_num(v), Some(Num::Int(_))) {
            self.saw_real = true;
        }
    }

    /// The aggregate of the rows added and not removed.
    pub fn value(&self) -> Result<Value, SqlError> {
        let sum = || self.int_sum as f64 + self.real_sum.value();
        Ok(match self.func {
            AggFunc::Count | AggFunc::CountStar => Value::Integer(self.count),
            AggFunc::Sum | AggFunc::Avg if self.count == 0 => Value::Null,
            AggFunc::Sum if self.saw_real => Value::Real(sum()),
            AggFunc::Sum => Value::Integer(i64::try_from(self.int_sum).map_err(|_| SqlError::IntegerOverflow)?),
            AggFunc::Avg => Value::Real(sum() / self.count as f64),
            AggFunc::Total => Value::Real(sum()),
            AggFunc::Min | AggFunc::Max => self.best.clone().unwrap_or(Value::Null),
            AggFunc::GroupConcat | AggFunc::Any => Value::Null,
        })
    }
}
