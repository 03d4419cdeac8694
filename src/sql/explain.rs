//! `EXPLAIN`: the plan as indented text, one line per operator, outermost first.
//!
//! A join shows its order (the left input is printed before the joined table), its
//! algorithm (`HASH JOIN`, `LOOKUP JOIN` by primary key or index, `NESTED LOOP JOIN`) and
//! its condition; a scan shows how it reads its table (full scan, primary-key point or
//! range, index) and the predicates pushed down to it. A compound query shows `UNION [ALL]`,
//! `INTERSECT` or `EXCEPT` over its terms, a common table expression `CTE name`.

use std::ops::Bound;

use sqlparser::ast;

use super::bind::PlanCtx;
use super::plan::{Access, JoinKind, JoinRight, LookupKind, Plan};
use super::system::render_key;
use super::{ddl_dml, select, SqlError};
use crate::types::Value;

/// The plan of a statement, as `EXPLAIN` shows it.
pub(crate) fn explain_statement(ctx: PlanCtx<'_>, statement: &ast::Statement) -> Result<Vec<String>, SqlError> {
    match statement {
        ast::Statement::Query(q) => Ok(explain(&select::plan_query(ctx, q)?.plan)),
        other => ddl_dml::explain(ctx, other),
    }
}

/// The lines of the plan.
pub(crate) fn explain(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    render(plan, 0, &mut lines);
    lines
}

fn filter_suffix(text: &[String]) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", text.join(" AND "))
    }
}

fn bound(b: &Bound<Vec<Value>>, lower: bool) -> String {
    match (b, lower) {
        (Bound::Unbounded, _) => String::new(),
        (Bound::Included(v), true) => format!("key >= {}", render_key(v)),
        (Bound::Excluded(v), true) => format!("key > {}", render_key(v)),
        (Bound::Included(v), false) => format!("key <= {}", render_key(v)),
        (Bound::Excluded(v), false) => format!("key < {}", render_key(v)),
    }
}

fn access_text(access: &Access) -> String {
    match access {
        Access::Full => "FULL SCAN".into(),
        Access::Empty => "EMPTY (a predicate compares with NULL)".into(),
        Access::Point(key) => format!("PRIMARY KEY LOOKUP {}", render_key(key)),
        Access::Range { lower, upper } => {
            let parts: Vec<String> =
                [bound(lower, true), bound(upper, false)].into_iter().filter(|s| !s.is_empty()).collect();
            format!("PRIMARY KEY RANGE {}", parts.join(" AND "))
        }
        Access::Index { name, values } => format!("INDEX LOOKUP {name} {}", render_key(values)),
        Access::TimeRange { column, lower, upper } => {
            let side = |b: &Bound<i64>, low: bool| match (b, low) {
                (Bound::Unbounded, _) => None,
                (Bound::Included(t), true) => Some(format!("{column} >= {t}")),
                (Bound::Excluded(t), true) => Some(format!("{column} > {t}")),
                (Bound::Included(t), false) => Some(format!("{column} <= {t}")),
                (Bound::Excluded(t), false) => Some(format!("{column} < {t}")),
            };
            let parts: Vec<String> = [side(lower, true), side(upper, false)].into_iter().flatten().collect();
            format!("APPEND SCAN BUCKETS OF {}", parts.join(" AND "))
        }
    }
}

fn render(plan: &Plan, depth: usize, out: &mut Vec<String>) {
    let pad = "  ".repeat(depth);
    let mut line = |s: String| out.push(format!("{pad}{s}"));
    match plan {
        Plan::Scan(scan) => {
            let alias = if scan.alias == scan.table { String::new() } else { format!(" AS {}", scan.alias) };
            line(format!(
                "SCAN {}{alias} {}{}",
                scan.table,
                access_text(&scan.access),
                filter_suffix(&scan.filter_text)
            ));
        }
        Plan::System { table, alias, filter_text, .. } => {
            line(format!("SYSTEM TABLE {} AS {alias}{}", table.name(), filter_suffix(filter_text)))
        }
        Plan::Values { rows } => line(format!("VALUES ({} rows)", rows.len())),
        Plan::JsonEach { args } => {
            line(if args.len() == 1 { "JSON_EACH (json)" } else { "JSON_EACH (json, path)" }.into())
        }
        Plan::CountRows { table, .. } => {
            line(format!("COUNT ROWS OF {table} (from the maintained row count, no scan)"))
        }
        Plan::Derived { input, alias, cte } => {
            line(match cte {
                Some(name) if name == alias => format!("CTE {name}"),
                Some(name) => format!("CTE {name} AS {alias}"),
                None => format!("SUBQUERY AS {alias}"),
            });
            render(input, depth + 1, out);
        }
        Plan::Filter { input, text, .. } => {
            line(format!("FILTER{}", filter_suffix(text)));
            render(input, depth + 1, out);
        }
        Plan::Reordered { input, order, .. } => {
            line(format!("JOIN ORDER {} (by estimated cost; columns back in written order)", order.join(", ")));
            render(input, depth + 1, out);
        }
        Plan::Project { input, exprs } => {
            line(format!("PROJECT {} columns", exprs.len()));
            render(input, depth + 1, out);
        }
        Plan::Join(join) => {
            let kind = match join.kind {
                JoinKind::Inner => "",
                JoinKind::Left => "LEFT ",
                JoinKind::Full => "FULL ",
            };
            let on = if join.condition_text.is_empty() {
                String::new()
            } else {
                format!(" ON {}", join.condition_text.join(" AND "))
            };
            match &join.right {
                JoinRight::Hash { .. } => line(format!("{kind}HASH JOIN{on}")),
                JoinRight::NestedLoop(_) => line(format!("{kind}NESTED LOOP JOIN{on}")),
                JoinRight::Lookup { table, alias, kind: lookup, .. } => {
                    let how = match lookup {
                        LookupKind::PrimaryKey => "PRIMARY KEY".to_string(),
                        LookupKind::PrimaryKeyPrefix => "PRIMARY KEY PREFIX".to_string(),
                        LookupKind::Index(name) => format!("INDEX {name}"),
                    };
                    line(format!("{kind}LOOKUP JOIN {table} AS {alias} BY {how}{on}"));
                }
            }
            render(&join.left, depth + 1, out);
            match &join.right {
                JoinRight::Hash { build, .. } => {
                    out.push(format!("{pad}  HASH TABLE ON"));
                    render(build, depth + 2, out);
                }
                JoinRight::NestedLoop(inner) => render(inner, depth + 1, out),
                JoinRight::Lookup { .. } => {}
            }
        }
        Plan::Aggregate { input, groups, aggs } => {
            let names: Vec<&str> = aggs.iter().map(|a| a.func.name()).collect();
            line(format!("HASH AGGREGATE {} group keys, aggregates: {}", groups.len(), names.join(", ")));
            render(input, depth + 1, out);
        }
        Plan::Window { input, sorts, .. } => {
            for sort in sorts {
                line(format!("WINDOW {}", sort.explain()));
            }
            render(input, depth + 1, out);
        }
        Plan::Distinct { input } => {
            line("DISTINCT".into());
            render(input, depth + 1, out);
        }
        Plan::Sort { input, keys, keep } => {
            let top = keep.map_or(String::new(), |k| format!(" (top {k})"));
            line(format!("SORT {} keys{top}", keys.len()));
            render(input, depth + 1, out);
        }
        Plan::Limit { input, offset, limit } => {
            let limit = limit.map_or("ALL".to_string(), |l| l.to_string());
            line(format!("LIMIT {limit} OFFSET {offset}"));
            render(input, depth + 1, out);
        }
        Plan::Trim { input, .. } => render(input, depth, out),
        Plan::Union { inputs, distinct } => {
            line(if *distinct { "UNION".into() } else { "UNION ALL".into() });
            for input in inputs {
                render(input, depth + 1, out);
            }
        }
        Plan::SetOp { op, left, right } => {
            line(format!("{} (hash set of the right side, then the distinct left rows)", op.name()));
            render(left, depth + 1, out);
            render(right, depth + 1, out);
        }
        Plan::Recursive { anchor, step, distinct, name, .. } => {
            let union = if *distinct { "UNION" } else { "UNION ALL" };
            line(format!("RECURSIVE CTE {name} ({union}: the anchor, then the step on each run's rows until none)"));
            render(anchor, depth + 1, out);
            render(step, depth + 1, out);
        }
        Plan::Work { name, .. } => line(format!("WORK TABLE {name} (the rows of the run before)")),
    }
}
