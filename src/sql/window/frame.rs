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
    /// For a `RANGE` frame with an offset: each row's `ORDER BY` value, negated when
    /// descending so that they ascend (`None` for NULL, which sorts together at one end).
    pub values: Vec<Option<f64>>,
    /// The positions of `values` that are not NULL.
    pub numbers: std::ops::Range<usize>,
}

impl Peers {
    pub fn groups(&self) -> usize {
        self.starts.len() - 1
    }
}

/// An integral offset as a count (`as` saturates).
fn to_usize(n: f64) -> usize {
    n as usize
}

/// The positions `[start, end)` of row `i`'s frame in a partition of `n` rows (`end ≥
/// start`: an empty frame starts where it ends).
pub(super) fn bounds(frame: &Frame, i: usize, peers: &Peers, n: usize) -> (usize, usize) {
    let g = peers.group[i];
    let groups = peers.groups();
    let starts = &peers.starts;
    if frame.is_range_offset() {
        if let Some(Some(v)) = peers.values.get(i) {
            return range_bounds(frame, *v, peers, n);
        }
        // A NULL current row: its offset bounds are those of its peers (the NULLs).
    }
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

/// The frame of a row whose `ORDER BY` value is `v` in a `RANGE` frame with an offset:
/// rows whose value lies within the offsets, as SQLite finds them: a bound with an offset
/// is the first row past (or at) `v ± offset` among the non-NULL values; NULLs are inside
/// only when an unbounded end reaches them.
fn range_bounds(frame: &Frame, v: f64, peers: &Peers, n: usize) -> (usize, usize) {
    let values = &peers.values;
    let (low, high) = (peers.numbers.start, peers.numbers.end);
    // The first non-NULL position whose value passes `past` (values ascend there).
    let first = |past: &dyn Fn(f64) -> bool| low + values[low..high].partition_point(|x| !x.is_some_and(past));
    let start = match frame.start {
        FrameBound::UnboundedPreceding => 0,
        FrameBound::Preceding(k) => first(&|x| x >= v - k),
        FrameBound::CurrentRow => first(&|x| x >= v),
        FrameBound::Following(k) => first(&|x| x >= v + k),
        FrameBound::UnboundedFollowing => n,
    };
    let end = match frame.end {
        FrameBound::UnboundedPreceding => 0,
        FrameBound::Preceding(k) => first(&|x| x > v - k),
        FrameBound::CurrentRow => first(&|x| x > v),
        FrameBound::Following(k) => first(&|x| x > v + k),
        FrameBound::UnboundedFollowing => n,
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

/// An aggregate sliding over the frames of a partition's rows in order.
#[derive(Debug)]
pub(super) struct Slider {
    acc: Sliding,
    /// The rows `[low, high)` are in `acc`.
    low: usize,
    high: usize,
}

impl Slider {
    pub fn new(func: AggFunc) -> Slider {
        Slider { acc: Sliding::new(func), low: 0, high: 0 }
    }

    /// The aggregate of `args[start..end]`. Neither end may be before the previous call's:
    /// frames only move forward ([`bounds`]).
    pub fn frame_value(&mut self, args: &[Value], start: usize, end: usize) -> Result<Value, SqlError> {
        debug_assert!(start >= self.low && end >= self.high && end >= start && end <= args.len());
        let func = self.acc.func;
        if !invertible(func) && start != self.low {
            *self = Slider { acc: Sliding::new(func), low: start, high: start };
        }
        while self.high < end {
            self.acc.add(&args[self.high]);
            self.high += 1;
        }
        while self.low < start {
            self.acc.remove(&args[self.low]);
            self.low += 1;
        }
        self.acc.value()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Whether row `j` is in row `i`'s frame, by the definition: its distance from the
    /// current row in rows (ROWS) or peer groups (GROUPS, RANGE) lies between the bounds.
    fn in_frame(frame: &Frame, peers: &Peers, i: usize, j: usize) -> bool {
        let d = match frame.units {
            Units::Rows => j as i64 - i as i64,
            Units::Groups | Units::Range => peers.group[j] as i64 - peers.group[i] as i64,
        };
        let after_start = match frame.start {
            FrameBound::UnboundedPreceding => true,
            FrameBound::Preceding(k) => d >= -(k as i64),
            FrameBound::CurrentRow => d >= 0,
            FrameBound::Following(k) => d >= k as i64,
            FrameBound::UnboundedFollowing => false,
        };
        let before_end = match frame.end {
            FrameBound::UnboundedPreceding => false,
            FrameBound::Preceding(k) => d <= -(k as i64),
            FrameBound::CurrentRow => d <= 0,
            FrameBound::Following(k) => d <= k as i64,
            FrameBound::UnboundedFollowing => true,
        };
        after_start && before_end
    }

    fn random_bound(rng: &mut ChaCha8Rng) -> FrameBound {
        let k = f64::from(rng.random_range(0..4));
        match rng.random_range(0..5) {
            0 => FrameBound::UnboundedPreceding,
            1 => FrameBound::Preceding(k),
            2 => FrameBound::CurrentRow,
            3 => FrameBound::Following(k),
            _ => FrameBound::UnboundedFollowing,
        }
    }

    fn random_value(rng: &mut ChaCha8Rng) -> Value {
        match rng.random_range(0..4) {
            0 => Value::Null,
            1 => Value::Real(f64::from(rng.random_range(-8..8)) * 0.25),
            _ => Value::Integer(rng.random_range(-5..10)),
        }
    }

    /// The fast path against the slow one: frame bounds against the definition, and the
    /// sliding aggregates against each frame aggregated afresh.
    #[test]
    fn sliding_frames_match_frames_computed_afresh() {
        let seed = 0x5769_6e64_6f77;
        println!("frame property: seed {seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let funcs = [AggFunc::Count, AggFunc::Sum, AggFunc::Avg, AggFunc::Total, AggFunc::Min, AggFunc::Max];
        for _ in 0..2000 {
            let n = rng.random_range(1..12);
            let mut group = vec![0];
            for _ in 1..n {
                let next = group.last().copied().unwrap_or(0) + usize::from(rng.random_bool(0.5));
                group.push(next);
            }
            let mut starts: Vec<usize> = (0..n).filter(|&j| j == 0 || group[j] != group[j - 1]).collect();
            starts.push(n);
            let peers = Peers { group, starts, values: Vec::new(), numbers: 0..0 };
            let units = [Units::Rows, Units::Groups, Units::Range][rng.random_range(0..3)];
            let (start, end) = (random_bound(&mut rng), random_bound(&mut rng));
            let frame = Frame { units, start, end };
            if frame.is_range_offset() {
                continue;
            }
            let args: Vec<Value> = (0..n).map(|_| random_value(&mut rng)).collect();
            let func = funcs[rng.random_range(0..funcs.len())];
            let mut slider = Slider::new(func);
            for i in 0..n {
                let (s, e) = bounds(&frame, i, &peers, n);
                let members: Vec<usize> = (0..n).filter(|&j| in_frame(&frame, &peers, i, j)).collect();
                assert_eq!((s..e).collect::<Vec<_>>(), members, "{frame} row {i} of groups {:?}", peers.group);
                let mut fresh = Sliding::new(func);
                args[s..e].iter().for_each(|v| fresh.add(v));
                let (slid, fresh) = (slider.frame_value(&args, s, e).expect("slid"), fresh.value().expect("fresh"));
                let close = match (value::as_num(&slid), value::as_num(&fresh)) {
                    (Some(a), Some(b)) => (value::num_f64(a) - value::num_f64(b)).abs() < 1e-9,
                    _ => slid == fresh,
                };
                // A sliding sum may stay real after its real left (SQLite's too).
                assert!(close, "{} over {frame}, row {i} of {args:?}: {slid:?} != {fresh:?}", func.name());
            }
        }
    }
}
