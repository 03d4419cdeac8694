//! Planning the `FROM` clause: the join tree, where each predicate is evaluated, and which
//! algorithm joins each table.
//!
//! The tables before the first `LEFT JOIN` (all of them without one) are joined in an order
//! chosen by estimated cost (`join_order.rs`); from the first `LEFT JOIN` on, tables join
//! in the order written, so outer-join semantics never change. `a RIGHT JOIN b` as the first
//! join runs as `b LEFT JOIN a` with the written column order restored; parenthesized joins
//! are opened where that keeps their meaning (`flatten`). A reordered join tree ends
//! in a projection back to the written column order. Every `WHERE` conjunct and every
//! `ON` conjunct of an inner join is placed at the earliest step where its tables are
//! joined (a conjunct on one table alone becomes part of that table's scan, where it can
//! select a key range or index); conjuncts on the right side of a `LEFT JOIN` stay after
//! that join. Each step then picks: a key lookup per outer row when the inner table has a
//! primary key or index on the equated columns and the outer side is expected to be small,
//! a hash join on the equated expressions otherwise, and a nested loop without equalities.

use std::ops::Bound;

use sqlparser::ast;

use super::bind::{self, Binder, PlanCtx};
use super::expr::{CmpOp, Expr};
use super::join_order::{self, Link};
use super::limits::SUBQUERY_DEPTH_COST;
use super::plan::{Access, Join, JoinKind, JoinRight, LookupKind, Plan, Scan, Scope};
use super::select;
use super::system::SystemTable;
use super::SqlError;
use super::{access, cte};
use crate::catalog::TableEntry;
use crate::types::ColumnType;

/// Most tables in one `FROM` clause (table sets are 64-bit masks).
pub const FROM_TABLES_MAX: usize = 64;
/// Expected outer rows below which a keyed lookup beats building a hash table.
pub(crate) const LOOKUP_OUTER_ROWS_MAX: f64 = 10_000.0;
/// What we assume a table holds when nothing narrows the scan (there are no statistics).
const TABLE_ROWS_GUESS: f64 = 100_000.0;

enum Source {
    Table(TableEntry),
    System(SystemTable),
    Derived(Plan),
}

struct Item {
    source: Source,
    alias: String,
    kind: JoinKind,
}

/// A predicate with the tables it reads.
struct Conjunct {
    expr: Expr,
    tables: u64,
    text: String,
}

#[derive(Default)]
struct Step {
    /// On the step's table alone (pushed into its scan).
    pre: Vec<Conjunct>,
    /// The join condition (combined row).
    cond: Vec<Conjunct>,
    /// After the join (the right side of a LEFT JOIN, from WHERE).
    post: Vec<Conjunct>,
}

/// Splits `a AND b AND c` into its conjuncts.
pub(crate) fn split_and(e: &ast::Expr, out: &mut Vec<ast::Expr>) {
    match e {
        ast::Expr::BinaryOp { left, op: ast::BinaryOperator::And, right } => {
            split_and(left, out);
            split_and(right, out);
        }
        ast::Expr::Nested(inner) if matches!(**inner, ast::Expr::BinaryOp { op: ast::BinaryOperator::And, .. }) => {
            split_and(inner, out)
        }
        other => out.push(other.clone()),
    }
}

fn and_all(conjuncts: Vec<Conjunct>) -> (Option<Expr>, Vec<String>) {
    let text = conjuncts.iter().map(|c| c.text.clone()).collect();
    let expr = conjuncts.into_iter().map(|c| c.expr).reduce(|a, b| Expr::And(Box::new(a), Box::new(b)));
    (expr, text)
}

fn shifted(mut e: Expr, offset: usize) -> Expr {
    e.remap(&|c| c - offset);
    e
}

fn table_ref(
    ctx: PlanCtx<'_>,
    factor: &ast::TableFactor,
    position: usize,
) -> Result<(Source, String, Vec<String>), SqlError> {
    match factor {
        ast::TableFactor::Table { name, alias, args: None, with_hints, .. } if with_hints.is_empty() => {
            let name = bind::object_name(name)?;
            let alias = alias.as_ref().map_or_else(|| name.clone(), |a| bind::ident(&a.name));
            // A common table expression hides a table of the same name, as in SQLite.
            if let Some((plan, columns)) = cte::reference(ctx, &name)? {
                let plan = Plan::Derived { input: Box::new(plan), alias: alias.clone(), cte: Some(name) };
                return Ok((Source::Derived(plan), alias, columns));
            }
            if let Some(system) = SystemTable::by_name(&name) {
                let columns = system.columns().iter().map(|(n, _)| n.to_string()).collect();
                return Ok((Source::System(system), alias, columns));
            }
            let Some(table) = ctx.snap.catalog().table(&name) else {
                // A table name wins over a view's (concurrent DDL can make both).
                let (plan, columns) =
                    super::view::reference(ctx, &name)?.ok_or_else(|| SqlError::UnknownTable(name.clone()))?;
                let plan = Plan::Derived { input: Box::new(plan), alias: alias.clone(), cte: None };
                return Ok((Source::Derived(plan), alias, columns));
            };
            if let Some(notes) = ctx.notes {
                notes.tables.borrow_mut().push(name.clone());
            }
            let columns = table.schema.sql_names();
            Ok((Source::Table(table.clone()), alias, columns))
        }
        ast::TableFactor::Derived { lateral: false, subquery, alias, .. } => {
            let planned = select::plan_query(ctx.uncorrelated().deeper(SUBQUERY_DEPTH_COST)?, subquery)?;
            let alias = alias.as_ref().map_or_else(|| format!("(subquery-{})", position + 1), |a| bind::ident(&a.name));
            let columns = planned.columns;
            let plan = Plan::Derived { input: Box::new(planned.plan), alias: alias.clone(), cte: None };
            Ok((Source::Derived(plan), alias, columns))
        }
        ast::TableFactor::Table { name, args: Some(args), alias, with_hints, .. }
            if with_hints.is_empty() && bind::object_name(name).is_ok_and(|n| n == "json_each") =>
        {
            let alias = alias.as_ref().map_or_else(|| "json_each".to_string(), |a| bind::ident(&a.name));
            let plan = Plan::JsonEach { args: json_each_args(ctx, &args.args)? };
            let columns = super::json::EACH_COLUMNS.iter().map(|c| c.to_string()).collect();
            Ok((
                Source::Derived(Plan::Derived { input: Box::new(plan), alias: alias.clone(), cte: None }),
                alias,
                columns,
            ))
        }
        ast::TableFactor::Table { name, args: Some(_), .. } => {
            Err(SqlError::unsupported(format!("table-valued functions ({name}(...) in FROM; json_each is one)")))
        }
        ast::TableFactor::Table { .. } => Err(SqlError::unsupported("index hints (INDEXED BY, USE INDEX)")),
        ast::TableFactor::Derived { .. } => Err(SqlError::unsupported("LATERAL subqueries")),
        ast::TableFactor::Function { .. } | ast::TableFactor::TableFunction { .. } => {
            Err(SqlError::unsupported("table-valued functions in FROM"))
        }
        // `flatten` opens every parenthesized join before tables are resolved.
        ast::TableFactor::NestedJoin { .. } => Err(SqlError::unsupported("this parenthesized join")),
        ast::TableFactor::Pivot { .. } | ast::TableFactor::Unpivot { .. } => {
            Err(SqlError::unsupported("PIVOT/UNPIVOT"))
        }
        other => {
            let text: String = other.to_string().chars().take(60).collect();
            Err(SqlError::unsupported(format!("this kind of FROM item: {text}")))
        }
    }
}

/// `json_each`'s one or two arguments, bound without columns: constants, parameters and
/// uncorrelated subqueries. Reading a column of another table of the `FROM` clause (a
/// lateral call, `FROM t, json_each(t.doc)`) is refused by name.
fn json_each_args(ctx: PlanCtx<'_>, args: &[ast::FunctionArg]) -> Result<Vec<Expr>, SqlError> {
    if !(1..=2).contains(&args.len()) {
        return Err(SqlError::ArgumentCount { function: "json_each".into() });
    }
    let scope = Scope::default();
    let mut binder = Binder::new(ctx.uncorrelated(), &scope);
    args.iter()
        .map(|arg| match arg {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => binder.bind(e).map_err(|e| match e {
                SqlError::UnknownColumn(c) => SqlError::unsupported(format!(
                    "json_each over a column ({c}) of another table (a lateral call); give the JSON as a value or parameter"
                )),
                other => other,
            }),
            _ => Err(SqlError::invalid("json_each takes JSON and an optional path")),
        })
        .collect()
}

/// The column `rowid` names in a stored table: its primary key when that is one INTEGER
/// column (SQLite's `INTEGER PRIMARY KEY` rowid alias; `INT PRIMARY KEY` maps to INTEGER
/// too, so it aliases here), or a key-less table's hidden `rowid`. Other tables have no
/// rowid.
fn rowid_alias(source: &Source) -> Option<usize> {
    let Source::Table(table) = source else { return None };
    if table.schema.rowid {
        return Some(0);
    }
    let [key] = table.schema.primary_key_indexes()[..] else { return None };
    (table.schema.columns[key].ty == ColumnType::Integer).then_some(key)
}

fn join_kind(op: &ast::JoinOperator) -> Result<(JoinKind, Option<&ast::JoinConstraint>), SqlError> {
    use ast::JoinOperator as J;
    match op {
        J::Join(c) | J::Inner(c) => Ok((JoinKind::Inner, Some(c))),
        J::Left(c) | J::LeftOuter(c) => Ok((JoinKind::Left, Some(c))),
        J::CrossJoin(c) => Ok((JoinKind::Inner, Some(c))),
        // `flatten_right` takes the one RIGHT JOIN the planner runs.
        J::Right(_) | J::RightOuter(_) => Err(SqlError::unsupported("RIGHT JOIN here")),
        J::FullOuter(_) => Err(SqlError::unsupported("FULL JOIN here")),
        J::Semi(_) | J::LeftSemi(_) | J::RightSemi(_) => Err(SqlError::unsupported("SEMI JOIN (write EXISTS or IN)")),
        J::Anti(_) | J::LeftAnti(_) | J::RightAnti(_) => Err(SqlError::unsupported("ANTI JOIN (write NOT EXISTS)")),
        J::CrossApply | J::OuterApply => Err(SqlError::unsupported("CROSS APPLY/OUTER APPLY")),
        J::AsOf { .. } => Err(SqlError::unsupported("ASOF JOIN")),
        J::StraightJoin(_) => Err(SqlError::unsupported("STRAIGHT_JOIN")),
        J::ArrayJoin | J::LeftArrayJoin | J::InnerArrayJoin => Err(SqlError::unsupported("ARRAY JOIN")),
    }
}

/// One table of a FROM clause, in the flat join order the planner works on, with the
/// join constraints evaluated where it joins (more than one where a parenthesized join
/// was opened, below).
struct Factor<'a> {
    factor: &'a ast::TableFactor,
    kind: JoinKind,
    constraints: Vec<&'a ast::JoinConstraint>,
    /// Joined by `RIGHT JOIN` (only ever the second table: [`flatten_right`]).
    right: bool,
}

/// Flattens `table` into `out`: its first table, then each join.
fn flatten<'a>(table: &'a ast::TableWithJoins, out: &mut Vec<Factor<'a>>) -> Result<(), SqlError> {
    flatten_factor(&table.relation, None, out)?;
    for join in &table.joins {
        flatten_factor(&join.relation, Some(&join.join_operator), out)?;
    }
    Ok(())
}

/// Flattens `factor`, joined by `op` to what precedes it if anything does, into `out`,
/// opening parenthesized joins where that keeps their meaning. A parenthesized join that
/// comes first means what its joins mean without the parentheses (joins associate to the
/// left). One on the right of an inner join, holding only inner joins, may be opened too:
/// inner joins commute and associate when every condition is a filter over the joined
/// tables; the outer ON then applies at the group's last table, once all its tables are
/// joined. Anything else (an outer join on either side of such a group) is refused by name.
fn flatten_factor<'a>(
    factor: &'a ast::TableFactor,
    op: Option<&'a ast::JoinOperator>,
    out: &mut Vec<Factor<'a>>,
) -> Result<(), SqlError> {
    if let Some(ast::JoinOperator::Right(constraint) | ast::JoinOperator::RightOuter(constraint)) = op {
        return flatten_sole_join(factor, constraint, "RIGHT JOIN", out);
    }
    if let Some(ast::JoinOperator::FullOuter(constraint)) = op {
        return flatten_sole_join(factor, constraint, "FULL JOIN", out);
    }
    let (kind, constraint) = match op {
        Some(op) => join_kind(op)?,
        None => (JoinKind::Inner, None),
    };
    let constraint = constraint.filter(|c| is_constraint(c));
    match factor {
        ast::TableFactor::NestedJoin { alias: Some(_), .. } => {
            return Err(SqlError::unsupported("an alias on a parenthesized join, like FROM (a JOIN b) AS x"));
        }
        ast::TableFactor::NestedJoin { table_with_joins, alias: None } => {
            let first = out.len();
            flatten(table_with_joins, out)?;
            if op.is_some() {
                if kind != JoinKind::Inner || out[first + 1..].iter().any(|f| f.kind != JoinKind::Inner) {
                    return Err(SqlError::unsupported(
                        "an outer join beside a parenthesized join on the right, like a LEFT JOIN (b JOIN c)",
                    ));
                }
                if matches!(constraint, Some(ast::JoinConstraint::Using(_) | ast::JoinConstraint::Natural)) {
                    return Err(SqlError::unsupported("USING or NATURAL with a parenthesized join on its right"));
                }
                out.last_mut().expect("a parenthesized join holds a table").constraints.extend(constraint);
            }
        }
        relation => {
            out.push(Factor { factor: relation, kind, constraints: constraint.into_iter().collect(), right: false })
        }
    }
    Ok(())
}

/// Whether a join constraint constrains anything (`JoinConstraint::None` is a bare join).
fn is_constraint(constraint: &ast::JoinConstraint) -> bool {
    !matches!(constraint, ast::JoinConstraint::None)
}

/// `a RIGHT JOIN b ON ...` as the first join of the FROM clause, which the planner runs
/// as `b LEFT JOIN a ON ...` (`plan_from`). A right join after other joins would make
/// everything before it the optional side, which the flat join order cannot express.
fn flatten_sole_join<'a>(
    factor: &'a ast::TableFactor,
    constraint: &'a ast::JoinConstraint,
    join: &str,
    out: &mut Vec<Factor<'a>>,
) -> Result<(), SqlError> {
    let full = join == "FULL JOIN";
    if out.len() != 1 {
        let advice = if full { "" } else { " (write it as a LEFT JOIN with the tables in the other order)" };
        return Err(SqlError::unsupported(format!("{join} after another join{advice}")));
    }
    match (factor, constraint) {
        (ast::TableFactor::NestedJoin { .. }, _) => {
            Err(SqlError::unsupported(format!("{join} of a parenthesized join")))
        }
        (_, ast::JoinConstraint::Using(_) | ast::JoinConstraint::Natural) => {
            Err(SqlError::unsupported(format!("{join} with USING or NATURAL (write ON)")))
        }
        (factor, constraint) => {
            let constraints = Some(constraint).filter(|c| is_constraint(c)).into_iter().collect();
            let kind = if full { JoinKind::Full } else { JoinKind::Inner };
            out.push(Factor { factor, kind, constraints, right: !full });
            Ok(())
        }
    }
}

/// Plans `FROM ... WHERE ...`; returns the plan (rows laid out as the scope) and the scope.
pub(crate) fn plan_from(
    ctx: PlanCtx<'_>,
    from: &[ast::TableWithJoins],
    selection: Option<&ast::Expr>,
) -> Result<(Plan, Scope), SqlError> {
    let mut scope = Scope::default();
    let mut items = Vec::new();
    let mut on_clauses: Vec<(usize, Vec<ast::Expr>)> = Vec::new();
    let mut using: Vec<(usize, Vec<String>)> = Vec::new();
    let mut factors = Vec::new();
    for table in from {
        flatten(table, &mut factors)?;
    }
    let right_join = factors.get(1).is_some_and(|f| f.right);
    let full_join = factors.get(1).is_some_and(|f| f.kind == JoinKind::Full);
    if full_join && factors.len() > 2 {
        return Err(SqlError::unsupported("a join after a FULL JOIN"));
    }
    for Factor { factor, kind, constraints, .. } in factors {
        let position = items.len();
        if position >= FROM_TABLES_MAX {
            return Err(SqlError::unsupported(format!("more than {FROM_TABLES_MAX} tables in FROM")));
        }
        let (source, alias, columns) = table_ref(ctx, factor, position)?;
        scope.push_table(&alias, columns)?;
        if let Source::Table(table) = &source {
            let visible: Vec<usize> = table.schema.visible_positions().collect();
            scope.hide_except(&visible);
            scope.mark_timestamps(&table.schema);
        }
        if let Some(column) = rowid_alias(&source) {
            scope.set_rowid(column);
        }
        for constraint in constraints {
            match constraint {
                ast::JoinConstraint::On(e) => {
                    let mut parts = Vec::new();
                    split_and(e, &mut parts);
                    on_clauses.push((position, parts));
                }
                ast::JoinConstraint::Using(names) => {
                    using.push((position, names.iter().map(bind::object_name).collect::<Result<_, _>>()?));
                }
                ast::JoinConstraint::Natural => using.push((position, natural_columns(&scope))),
                ast::JoinConstraint::None => {}
            }
        }
        items.push(Item { source, alias, kind });
    }
    let (mut inner_like, wheres) = bind_conjuncts(ctx, &mut scope, on_clauses, using, selection)?;
    let order = match right_join {
        // `a RIGHT JOIN b ON c` is `b LEFT JOIN a ON c`: b's rows drive, a is the optional
        // side, and c moves with a; the projection below restores the written columns.
        true => {
            items[0].kind = JoinKind::Left;
            for (position, _) in &mut inner_like {
                if *position == 1 {
                    *position = 0;
                }
            }
            (0..items.len()).map(|i| [1, 0].get(i).copied().unwrap_or(i)).collect()
        }
        false if full_join => (0..items.len()).collect(),
        false => choose_order(ctx, &scope, &items, &inner_like, &wheres),
    };
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        let steps = place_conjuncts(&items, inner_like, wheres);
        return Ok((build(ctx, &scope, items, steps)?, scope));
    }
    // Join in `order`: lay the tables out in that order, bind the conjuncts to that layout,
    // and project back to the written layout that names resolve against.
    let mut physical = Scope::default();
    let mut column_at = vec![0; scope.columns.len()];
    let mut position_of = vec![0; items.len()];
    for (new, &old) in order.iter().enumerate() {
        let table = &scope.tables[old];
        position_of[old] = new;
        let names = scope.columns[table.offset..table.offset + table.width].iter().map(|c| c.name.clone()).collect();
        let offset = physical.columns.len();
        physical.push_table(&table.alias, names)?;
        for i in 0..table.width {
            column_at[table.offset + i] = offset + i;
            physical.columns[offset + i].in_star = scope.columns[table.offset + i].in_star;
            physical.columns[offset + i].hidden = scope.columns[table.offset + i].hidden;
            physical.columns[offset + i].timestamp = scope.columns[table.offset + i].timestamp;
        }
    }
    let relayout = |c: Conjunct| {
        let mut expr = c.expr;
        expr.remap(&|i| column_at[i]);
        Conjunct { tables: tables_of(&physical, &expr), expr, text: c.text }
    };
    let inner_like: Vec<(usize, Conjunct)> =
        inner_like.into_iter().map(|(p, c)| (position_of[p], relayout(c))).collect();
    let wheres: Vec<Conjunct> = wheres.into_iter().map(relayout).collect();
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    let items: Vec<Item> = order.iter().map(|&old| slots[old].take().expect("order is a permutation")).collect();
    let steps = place_conjuncts(&items, inner_like, wheres);
    let order = items.iter().map(|i| i.alias.clone()).collect();
    let joined = build(ctx, &physical, items, steps)?;
    let exprs = column_at.iter().map(|&c| Expr::Column(c)).collect();
    Ok((Plan::Reordered { input: Box::new(joined), exprs, order }, scope))
}

/// The join order: a permutation of the FROM items' positions. Only the items before the
/// first LEFT JOIN move; the first of them must keep its kind (it has no join).
fn choose_order(
    ctx: PlanCtx<'_>,
    scope: &Scope,
    items: &[Item],
    inner_like: &[(usize, Conjunct)],
    wheres: &[Conjunct],
) -> Vec<usize> {
    let movable = items.iter().position(|i| i.kind == JoinKind::Left).unwrap_or(items.len());
    if movable < 2 {
        return (0..items.len()).collect();
    }
    let prefix_mask = if movable == 64 { u64::MAX } else { (1u64 << movable) - 1 };
    // Inner joins' ON conjuncts are WHERE conjuncts; only those within the prefix matter.
    let usable: Vec<&Conjunct> =
        inner_like.iter().map(|(_, c)| c).chain(wheres).filter(|c| c.tables & !prefix_mask == 0).collect();
    let rows: Vec<f64> = (0..movable)
        .map(|i| {
            let own: Vec<Expr> = usable
                .iter()
                .filter(|c| c.tables == 1 << i)
                .map(|c| shifted(c.expr.clone(), scope.tables[i].offset))
                .collect();
            estimate_rows(ctx, &items[i].source, &own)
        })
        .collect();
    let link = |joined: u64, candidate: usize| -> Link {
        let offset = scope.tables[candidate].offset;
        let own = 1u64 << candidate;
        let mut equated = Vec::new();
        for c in &usable {
            let Expr::Cmp(CmpOp::Eq, a, b) = &c.expr else { continue };
            for (mine, other) in [(a, b), (b, a)] {
                let (m, o) = (tables_of(scope, mine), tables_of(scope, other));
                if m == own && o != 0 && o & !joined == 0 {
                    equated.push(match &**mine {
                        Expr::Column(col) => Some(col - offset),
                        _ => None,
                    });
                }
            }
        }
        if equated.is_empty() {
            return Link::None;
        }
        let columns: Vec<usize> = equated.into_iter().flatten().collect();
        match &items[candidate].source {
            Source::Table(table) => match access::lookup(ctx.snap.catalog(), table, &columns) {
                Some((LookupKind::PrimaryKey, _)) => Link::Lookup { rows_per_outer: 1.0 },
                Some(_) => Link::Lookup { rows_per_outer: 10.0 },
                None => Link::Hash,
            },
            _ => Link::Hash,
        }
    };
    let mut order = join_order::choose(&rows, &link);
    order.extend(movable..items.len());
    order
}

/// Estimated rows of a source after its own predicates (`own`, on its own row).
fn estimate_rows(ctx: PlanCtx<'_>, source: &Source, own: &[Expr]) -> f64 {
    let selectivity = selectivity(own.iter());
    match source {
        Source::Table(table) => {
            let exprs: Vec<&Expr> = own.iter().collect();
            access_rows(&access::choose(ctx.snap.catalog(), table, &exprs, ctx.params), selectivity)
        }
        Source::System(_) => 1000.0 * selectivity,
        Source::Derived(_) => TABLE_ROWS_GUESS * selectivity,
    }
}

/// The fraction of rows a set of predicates is taken to keep (there are no statistics).
fn selectivity<'a>(conjuncts: impl Iterator<Item = &'a Expr>) -> f64 {
    conjuncts.map(|e| if matches!(e, Expr::Cmp(CmpOp::Eq, _, _)) { 0.1 } else { 0.33 }).product()
}

/// Estimated rows read through an access path.
fn access_rows(access: &Access, selectivity: f64) -> f64 {
    match access {
        Access::Empty => 0.0,
        Access::Point(_) => 1.0,
        Access::Index { .. } => 10.0,
        // A range bounded on both sides (or a key prefix) is taken to be narrow.
        Access::Range { lower, upper } if !matches!(lower, Bound::Unbounded) && !matches!(upper, Bound::Unbounded) => {
            (TABLE_ROWS_GUESS * selectivity).min(1000.0)
        }
        Access::Range { .. } | Access::Full | Access::TimeRange { .. } => TABLE_ROWS_GUESS * selectivity,
    }
}

fn tables_of(scope: &Scope, e: &Expr) -> u64 {
    let mut mask = 0u64;
    e.visit_columns(&mut |c| mask |= 1 << scope.table_of(c));
    mask
}

fn highest(mask: u64) -> usize {
    if mask == 0 {
        0
    } else {
        63 - mask.leading_zeros() as usize
    }
}

/// The columns a `NATURAL JOIN` of the last table pushed joins on, as SQLite's: its
/// columns (those `*` shows) whose name a column `*` shows of the tables before it has.
/// None makes it a cross join.
fn natural_columns(scope: &Scope) -> Vec<String> {
    let table = scope.tables.last().expect("the joined table was pushed");
    let (left, right) = scope.columns.split_at(table.offset);
    right[..table.width]
        .iter()
        .filter(|c| c.in_star && !c.hidden)
        .filter(|c| left.iter().any(|l| l.in_star && l.name == c.name))
        .map(|c| c.name.clone())
        .collect()
}

/// `ON`/`USING` conjuncts (with the position of the join they belong to) and `WHERE`
/// conjuncts, bound against the scope.
type BoundConjuncts = (Vec<(usize, Conjunct)>, Vec<Conjunct>);

fn bind_conjuncts(
    ctx: PlanCtx<'_>,
    scope: &mut Scope,
    on_clauses: Vec<(usize, Vec<ast::Expr>)>,
    using: Vec<(usize, Vec<String>)>,
    selection: Option<&ast::Expr>,
) -> Result<BoundConjuncts, SqlError> {
    let mut inner_like = Vec::new();
    for (position, names) in using {
        for name in names {
            if name.starts_with(crate::schema::UNREACHABLE_NAME_MARK) {
                return Err(SqlError::UnknownColumn(format!("{name} in USING")));
            }
            let right = scope.tables[position].offset
                + scope.columns[scope.tables[position].offset..]
                    .iter()
                    .take(scope.tables[position].width)
                    .position(|c| c.name == name)
                    .ok_or_else(|| SqlError::UnknownColumn(format!("{name} in USING")))?;
            let left = scope.columns[..scope.tables[position].offset]
                .iter()
                .position(|c| c.name == name && c.in_star)
                .ok_or_else(|| SqlError::UnknownColumn(format!("{name} in USING")))?;
            scope.columns[right].in_star = false;
            let expr = Expr::Cmp(CmpOp::Eq, Box::new(Expr::Column(left)), Box::new(Expr::Column(right)));
            let text = format!("{}.{name} = {}.{name}", scope.columns[left].table, scope.columns[right].table);
            inner_like.push((position, Conjunct { tables: tables_of(scope, &expr), expr, text }));
        }
    }
    let scope: &Scope = scope;
    for (position, parts) in on_clauses {
        for part in parts {
            let expr = Binder::new(ctx, scope).bind(&part)?;
            let conjunct = Conjunct { tables: tables_of(scope, &expr), expr, text: part.to_string() };
            if highest(conjunct.tables) > position {
                return Err(SqlError::invalid(format!("ON clause references a table joined later: {part}")));
            }
            inner_like.push((position, conjunct));
        }
    }
    let mut wheres = Vec::new();
    if let Some(selection) = selection {
        let mut parts = Vec::new();
        split_and(selection, &mut parts);
        for part in parts {
            let expr = Binder::new(ctx, scope).bind(&part)?;
            wheres.push(Conjunct { tables: tables_of(scope, &expr), expr, text: part.to_string() });
        }
    }
    Ok((inner_like, wheres))
}

/// Assigns each conjunct to the join step (table position) where it is evaluated.
fn place_conjuncts(items: &[Item], inner_like: Vec<(usize, Conjunct)>, wheres: Vec<Conjunct>) -> Vec<Step> {
    let mut steps: Vec<Step> = items.iter().map(|_| Step::default()).collect();
    if let Some(full) = items.iter().position(|i| i.kind == JoinKind::Full) {
        // Both sides are optional: no conjunct can filter either input. ON decides the
        // pairs; WHERE filters the joined rows, NULL-padded ones included.
        for (_, c) in inner_like {
            steps[full].cond.push(c);
        }
        steps[full].post.extend(wheres);
        return steps;
    }
    for (position, c) in inner_like {
        if items[position].kind == JoinKind::Left {
            let own = c.tables & !(1u64 << position) == 0;
            if own {
                steps[position].pre.push(c);
            } else {
                steps[position].cond.push(c);
            }
        } else {
            place_where(&mut steps, items, c);
        }
    }
    for c in wheres {
        place_where(&mut steps, items, c);
    }
    steps
}

fn place_where(steps: &mut [Step], items: &[Item], c: Conjunct) {
    let last = highest(c.tables);
    if last == 0 {
        steps[0].pre.push(c);
    } else if items[last].kind == JoinKind::Left {
        steps[last].post.push(c);
    } else if c.tables == 1 << last {
        steps[last].pre.push(c);
    } else {
        steps[last].cond.push(c);
    }
}

/// A scan (or system table / derived table) of one item with its own predicates.
fn source_plan(ctx: PlanCtx<'_>, item: Item, offset: usize, pre: Vec<Conjunct>) -> (Plan, f64) {
    let conjuncts: Vec<Conjunct> =
        pre.into_iter().map(|c| Conjunct { expr: shifted(c.expr, offset), tables: c.tables, text: c.text }).collect();
    let selectivity = selectivity(conjuncts.iter().map(|c| &c.expr));
    match item.source {
        Source::Table(table) => {
            let exprs: Vec<&Expr> = conjuncts.iter().map(|c| &c.expr).collect();
            let access = access::choose(ctx.snap.catalog(), &table, &exprs, ctx.params);
            let rows = access_rows(&access, selectivity);
            let (filter, filter_text) = and_all(conjuncts);
            let scan = Scan { table: table.schema.name.clone(), alias: item.alias, access, filter, filter_text };
            (Plan::Scan(scan), rows)
        }
        Source::System(table) => {
            let (filter, filter_text) = and_all(conjuncts);
            (Plan::System { table, alias: item.alias, filter, filter_text }, 1000.0 * selectivity)
        }
        Source::Derived(plan) => {
            let (filter, text) = and_all(conjuncts);
            let plan = match filter {
                Some(predicate) => Plan::Filter { input: Box::new(plan), predicate, text },
                None => plan,
            };
            (plan, TABLE_ROWS_GUESS * selectivity)
        }
    }
}

fn with_filter(plan: Plan, conjuncts: Vec<Conjunct>) -> Plan {
    match and_all(conjuncts) {
        (Some(predicate), text) => Plan::Filter { input: Box::new(plan), predicate, text },
        (None, _) => plan,
    }
}

fn build(ctx: PlanCtx<'_>, scope: &Scope, items: Vec<Item>, steps: Vec<Step>) -> Result<Plan, SqlError> {
    let mut plan = None;
    let mut outer_rows = 1.0;
    for (position, (item, step)) in items.into_iter().zip(steps).enumerate() {
        let offset = scope.tables[position].offset;
        let Some(left) = plan.take() else {
            let (base, rows) = source_plan(ctx, item, offset, step.pre);
            outer_rows = rows;
            plan = Some(with_filter(base, step.post));
            continue;
        };
        let (joined, rows) = join_step(ctx, scope, left, outer_rows, item, position, step.pre, step.cond)?;
        outer_rows = rows;
        plan = Some(with_filter(joined, step.post));
    }
    Ok(plan.unwrap_or_else(Plan::single_row))
}

#[allow(clippy::too_many_arguments)]
fn join_step(
    ctx: PlanCtx<'_>,
    scope: &Scope,
    left: Plan,
    outer_rows: f64,
    item: Item,
    position: usize,
    pre: Vec<Conjunct>,
    cond: Vec<Conjunct>,
) -> Result<(Plan, f64), SqlError> {
    let offset = scope.tables[position].offset;
    let width = scope.tables[position].width;
    let kind = item.kind;
    let own = 1u64 << position;
    let side = |e: &Expr| tables_of(scope, e);
    // Equalities between the step's table and earlier tables, oriented (right, left).
    let mut keys: Vec<(usize, Expr, Expr)> = Vec::new();
    for (i, c) in cond.iter().enumerate() {
        let Expr::Cmp(CmpOp::Eq, a, b) = &c.expr else { continue };
        let (ma, mb) = (side(a), side(b));
        if ma == own && mb != 0 && mb & own == 0 {
            keys.push((i, (**a).clone(), (**b).clone()));
        } else if mb == own && ma != 0 && ma & own == 0 {
            keys.push((i, (**b).clone(), (**a).clone()));
        }
    }
    let lookup = match &item.source {
        // A lookup cannot tell which inner rows no outer row joined.
        Source::Table(table) if outer_rows <= LOOKUP_OUTER_ROWS_MAX && kind != JoinKind::Full => {
            let equated: Vec<usize> = keys
                .iter()
                .filter_map(|(_, r, _)| match r {
                    Expr::Column(c) => Some(c - offset),
                    _ => None,
                })
                .collect();
            access::lookup(ctx.snap.catalog(), table, &equated).map(|(kind, columns)| (table.clone(), kind, columns))
        }
        _ => None,
    };
    if let Some((table, lookup_kind, columns)) = lookup {
        let key_exprs = columns
            .iter()
            .map(|col| {
                keys.iter()
                    .find(|(_, r, _)| matches!(r, Expr::Column(c) if *c == col + offset))
                    .map(|(_, _, l)| l.clone())
                    .expect("lookup columns come from the equated keys")
            })
            .collect();
        let key_types = columns.iter().map(|c| table.schema.columns[*c].ty).collect();
        let pre = pre.into_iter().map(|c| Conjunct { expr: shifted(c.expr, offset), ..c }).collect();
        let (filter, _) = and_all(pre);
        let rows = outer_rows * if lookup_kind == LookupKind::PrimaryKey { 1.0 } else { 10.0 };
        let (residual, condition_text) = and_all(cond);
        let right = JoinRight::Lookup {
            table: table.schema.name.clone(),
            alias: item.alias,
            kind: lookup_kind,
            keys: key_exprs,
            key_types,
            filter,
        };
        let join = Join { left, kind, right, left_width: offset, right_width: width, residual, condition_text };
        return Ok((Plan::Join(Box::new(join)), rows));
    }
    let (right_plan, right_rows) = source_plan(ctx, item, offset, pre);
    let rows = outer_rows.max(right_rows);
    if keys.is_empty() {
        let (residual, condition_text) = and_all(cond);
        let join = Join {
            left,
            kind,
            right: JoinRight::NestedLoop(right_plan),
            left_width: offset,
            right_width: width,
            residual,
            condition_text,
        };
        return Ok((Plan::Join(Box::new(join)), outer_rows * right_rows.max(1.0)));
    }
    let used: Vec<usize> = keys.iter().map(|(i, _, _)| *i).collect();
    let condition_text = cond.iter().map(|c| c.text.clone()).collect();
    let rest: Vec<Conjunct> = cond.into_iter().enumerate().filter(|(i, _)| !used.contains(i)).map(|(_, c)| c).collect();
    let (residual, _) = and_all(rest);
    let (right_keys, left_keys) = keys.into_iter().map(|(_, r, l)| (shifted(r, offset), l)).unzip();
    let right = JoinRight::Hash { build: right_plan, left_keys, right_keys };
    let join = Join { left, kind, right, left_width: offset, right_width: width, residual, condition_text };
    Ok((Plan::Join(Box::new(join)), rows))
}
