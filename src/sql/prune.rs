//! Column pruning for in-memory join sides: columns that no operator above a hash join or
//! nested loop reads are replaced by NULL as the inner side is loaded, so the rows held in
//! memory (and copied into every joined row) do not carry unused text or blobs.
//!
//! This never changes a result: a pruned column is one no expression above reads.

use super::aggregate::AggSpec;
use super::expr::Expr;
use super::plan::{Join, JoinRight, Plan};
use crate::types::Value;

/// Which input columns are read: `None` means all of them.
type Needed = Option<Vec<bool>>;

fn mark(needed: &mut Vec<bool>, column: usize) {
    if needed.len() <= column {
        needed.resize(column + 1, false);
    }
    needed[column] = true;
}

fn exprs_columns<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Vec<bool> {
    let mut needed = Vec::new();
    for e in exprs {
        e.visit_columns(&mut |c| mark(&mut needed, c));
    }
    needed
}

fn with(mut needed: Needed, exprs: &[&Expr]) -> Needed {
    if let Some(n) = &mut needed {
        for e in exprs {
            e.visit_columns(&mut |c| mark(n, c));
        }
    }
    needed
}

fn agg_exprs(aggs: &[AggSpec]) -> impl Iterator<Item = &Expr> {
    aggs.iter().flat_map(|a| a.arg.iter().chain(a.separator.iter()).chain(a.filter.iter()))
}

/// Prunes below `plan`, of whose output columns `needed` are read.
pub(crate) fn prune(plan: &mut Plan, needed: Needed) {
    match plan {
        Plan::Project { input, exprs } => prune(input, Some(exprs_columns(exprs.iter()))),
        // Only the columns read above are needed from the join below.
        Plan::Reordered { input, exprs, .. } => {
            let read = match &needed {
                Some(n) => {
                    exprs_columns(exprs.iter().enumerate().filter(|(i, _)| n.get(*i) == Some(&true)).map(|(_, e)| e))
                }
                None => exprs_columns(exprs.iter()),
            };
            prune(input, Some(read))
        }
        Plan::Aggregate { input, groups, aggs } => {
            prune(input, Some(exprs_columns(groups.iter().chain(agg_exprs(aggs)))))
        }
        Plan::Filter { input, predicate, .. } => prune(input, with(needed, &[predicate])),
        Plan::Sort { input, keys, .. } => {
            let needed = needed.map(|mut n| {
                keys.iter().for_each(|k| mark(&mut n, k.column));
                n
            });
            prune(input, needed)
        }
        Plan::Limit { input, .. } | Plan::Trim { input, .. } => prune(input, needed),
        Plan::Distinct { input } => prune(input, None),
        // The window terms read the input row; it is kept whole.
        Plan::Window { input, .. } => prune(input, None),
        Plan::Derived { input, .. } => prune(input, None),
        Plan::Union { inputs, .. } => inputs.iter_mut().for_each(|p| prune(p, None)),
        // Every column of both sides is compared.
        Plan::SetOp { left, right, .. } => {
            prune(left, None);
            prune(right, None);
        }
        Plan::Recursive { anchor, step, .. } => {
            prune(anchor, None);
            prune(step, None);
        }
        Plan::Join(join) => prune_join(join, needed),
        Plan::Scan(_)
        | Plan::System { .. }
        | Plan::Values { .. }
        | Plan::Work { .. }
        | Plan::CountRows { .. }
        | Plan::JsonEach { .. } => {}
    }
}

fn prune_join(join: &mut Join, needed: Needed) {
    let (left_width, right_width) = (join.left_width, join.right_width);
    let mut all = needed.unwrap_or_else(|| vec![true; left_width + right_width]);
    if let Some(r) = &join.residual {
        r.visit_columns(&mut |c| mark(&mut all, c));
    }
    all.resize(left_width + right_width, false);
    let (mut left, mut right) = (all[..left_width].to_vec(), all[left_width..].to_vec());
    match &mut join.right {
        JoinRight::Hash { build, left_keys, right_keys } => {
            left_keys.iter().for_each(|e| e.visit_columns(&mut |c| mark(&mut left, c)));
            right_keys.iter().for_each(|e| e.visit_columns(&mut |c| mark(&mut right, c)));
            mask(build, right, right_width);
        }
        JoinRight::NestedLoop(inner) => mask(inner, right, right_width),
        JoinRight::Lookup { keys, .. } => keys.iter().for_each(|e| e.visit_columns(&mut |c| mark(&mut left, c))),
    }
    prune(&mut join.left, Some(left));
}

fn mask(inner: &mut Plan, n: Vec<bool>, width: usize) {
    prune(inner, Some(n.clone()));
    if n.iter().take(width).filter(|b| **b).count() == width {
        return;
    }
    let exprs = (0..width)
        .map(|i| if n.get(i).copied().unwrap_or(false) { Expr::Column(i) } else { Expr::Literal(Value::Null) })
        .collect();
    let taken = std::mem::replace(inner, Plan::single_row());
    *inner = Plan::Project { input: Box::new(taken), exprs };
}
