//! Planning queries: `SELECT` lists, `GROUP BY` / aggregates / `HAVING`, `DISTINCT`,
//! `ORDER BY`, `LIMIT` / `OFFSET`, `VALUES`, compound queries (`UNION [ALL]`, `INTERSECT`,
//! `EXCEPT`, left to right with equal precedence as in SQLite) and `WITH` (`cte.rs`).
//!
//! The plan of a `SELECT` is: FROM/WHERE (`from.rs`) → aggregate → HAVING → window
//! functions (`window/`) → projection of the visible columns plus any `ORDER BY` keys that
//! are not visible → DISTINCT → sort → limit → trim the hidden keys. Output rows always
//! have exactly `columns.len()` values.

use sqlparser::ast;

use super::bind::{self, AggCtx, Binder, PlanCtx};
use super::expr::Expr;
use super::limits::EXPR_DEPTH_MAX;
use super::plan::{Plan, Scope, SetOp, SortKey};
use super::window::WinCtx;
use super::SqlError;
use super::{cte, from, prune};
use crate::types::Value;

/// A planned query and its output column names.
#[derive(Debug)]
pub(crate) struct Planned {
    pub plan: Plan,
    pub columns: Vec<String>,
}

/// `LIMIT` and `OFFSET`, evaluated.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    offset: usize,
    limit: Option<usize>,
}

enum Item {
    Ast(Box<ast::Expr>),
    Position(usize),
}

/// A constant expression (`LIMIT`, a window frame's offset), evaluated now.
pub(crate) fn constant(ctx: PlanCtx<'_>, e: &ast::Expr) -> Result<Value, SqlError> {
    let scope = Scope::default();
    // A LIMIT is fixed before any row is read: it cannot depend on an enclosing row, and a
    // parameter in it makes the plan one execution's.
    if bind::has_placeholder(e) {
        ctx.not_reusable();
    }
    Binder::new(PlanCtx { outer: None, notes: None, ..ctx }, &scope).bind(e)?.eval(&[])
}

fn count(ctx: PlanCtx<'_>, e: &ast::Expr, what: &str) -> Result<Option<usize>, SqlError> {
    match constant(ctx, e)? {
        Value::Integer(i) if i < 0 => Ok(None),
        Value::Integer(i) => Ok(Some(usize::try_from(i).unwrap_or(usize::MAX))),
        other => Err(SqlError::invalid(format!("{what} must be an integer, got {other}"))),
    }
}

fn window(ctx: PlanCtx<'_>, clause: Option<&ast::LimitClause>) -> Result<Window, SqlError> {
    let (limit, offset) = match clause {
        None => return Ok(Window::default()),
        Some(ast::LimitClause::LimitOffset { limit, offset, limit_by }) => {
            if !limit_by.is_empty() {
                return Err(SqlError::unsupported("LIMIT ... BY"));
            }
            (limit.as_ref(), offset.as_ref().map(|o| &o.value))
        }
        Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => (Some(limit), Some(offset)),
    };
    let limit = match limit {
        Some(e) => count(ctx, e, "LIMIT")?,
        None => None,
    };
    let offset = match offset {
        Some(e) => count(ctx, e, "OFFSET")?.unwrap_or(0),
        None => 0,
    };
    Ok(Window { offset, limit })
}

fn order_terms(q: &ast::Query) -> Result<Vec<ast::OrderByExpr>, SqlError> {
    match &q.order_by {
        None => Ok(Vec::new()),
        Some(ast::OrderBy { kind: ast::OrderByKind::Expressions(terms), interpolate: None }) => {
            if terms.iter().any(|t| t.with_fill.is_some()) {
                return Err(SqlError::unsupported("ORDER BY ... WITH FILL"));
            }
            Ok(terms.clone())
        }
        Some(_) => Err(SqlError::unsupported("ORDER BY ALL or INTERPOLATE")),
    }
}

/// Plans a query; the rows of the plan have exactly `columns.len()` values.
pub(crate) fn plan_query(ctx: PlanCtx<'_>, q: &ast::Query) -> Result<Planned, SqlError> {
    ctx.limits.check()?;
    let extra = [
        (q.fetch.is_some(), "FETCH FIRST (use LIMIT)"),
        (!q.locks.is_empty(), "FOR UPDATE/FOR SHARE locking clauses"),
        (q.for_clause.is_some(), "FOR XML/FOR JSON clauses"),
        (q.settings.is_some(), "SETTINGS clauses"),
        (q.format_clause.is_some(), "FORMAT clauses"),
        (!q.pipe_operators.is_empty(), "pipe operators (|>)"),
    ];
    if let Some((_, what)) = extra.iter().find(|(present, _)| *present) {
        return Err(SqlError::unsupported(*what));
    }
    match &q.with {
        Some(with) => cte::with_scope(ctx, with, |ctx| plan_query_body(ctx, q)),
        None => plan_query_body(ctx, q),
    }
}

/// A query without its `WITH` clause (already in `ctx`).
fn plan_query_body(ctx: PlanCtx<'_>, q: &ast::Query) -> Result<Planned, SqlError> {
    let terms = order_terms(q)?;
    let window = window(ctx, q.limit_clause.as_ref())?;
    if let ast::SetExpr::Select(select) = &*q.body {
        return plan_select(ctx, select, &terms, window);
    }
    let planned = plan_compound(ctx, &q.body)?;
    let mut keys = Vec::new();
    for term in &terms {
        let column = output_position(&term.expr, &planned.columns, &[])?.ok_or_else(|| {
            SqlError::unsupported(
                "ORDER BY an expression on a compound query (UNION/INTERSECT/EXCEPT) or VALUES: \
                 order by a result column's name or number",
            )
        })?;
        keys.push(sort_key(term, column));
    }
    Ok(Planned { plan: finish(planned.plan, keys, window, None), columns: planned.columns })
}

/// A compound operator as written: `UNION` (`distinct`: without `ALL`), `INTERSECT`,
/// `EXCEPT`.
#[derive(Clone, Copy)]
enum Compound {
    Union { distinct: bool },
    Set(SetOp),
}

impl Compound {
    fn name(self) -> &'static str {
        match self {
            Compound::Union { .. } => "UNION",
            Compound::Set(op) => op.name(),
        }
    }
}

fn compound(op: &ast::SetOperator, quantifier: &ast::SetQuantifier) -> Result<Compound, SqlError> {
    use ast::SetQuantifier as Q;
    let name = match op {
        ast::SetOperator::Union => "UNION",
        ast::SetOperator::Intersect => "INTERSECT",
        ast::SetOperator::Except => "EXCEPT",
        ast::SetOperator::Minus => return Err(SqlError::unsupported("MINUS (write EXCEPT)")),
    };
    match (op, quantifier) {
        (ast::SetOperator::Union, Q::All) => Ok(Compound::Union { distinct: false }),
        (ast::SetOperator::Union, Q::None | Q::Distinct) => Ok(Compound::Union { distinct: true }),
        (ast::SetOperator::Intersect, Q::None | Q::Distinct) => Ok(Compound::Set(SetOp::Intersect)),
        (ast::SetOperator::Except, Q::None | Q::Distinct) => Ok(Compound::Set(SetOp::Except)),
        (_, Q::All) => {
            Err(SqlError::unsupported(format!("{name} ALL (SQLite has only {name}, which removes duplicates)")))
        }
        (_, Q::ByName | Q::AllByName | Q::DistinctByName) => Err(SqlError::unsupported(format!("{name} BY NAME"))),
        (_, other) => Err(SqlError::unsupported(format!("{name} {other}"))),
    }
}

/// The terms of a compound query in written order, each with the operator before it.
/// sqlparser binds `INTERSECT` tighter than `UNION`/`EXCEPT` (standard SQL); SQLite gives
/// them all equal precedence, left to right, so the tree is flattened and refolded. Each
/// level of the tree costs one level of depth, as a `UNION` term always has.
fn flatten<'q>(
    ctx: PlanCtx<'_>,
    body: &'q ast::SetExpr,
    lead: Option<Compound>,
    depth: usize,
    out: &mut Vec<(Option<Compound>, &'q ast::SetExpr)>,
) -> Result<(), SqlError> {
    match body {
        ast::SetExpr::SetOperation { left, op, set_quantifier, right } => {
            if ctx.depth + depth > EXPR_DEPTH_MAX {
                return Err(SqlError::TooDeep { limit: EXPR_DEPTH_MAX });
            }
            let op = compound(op, set_quantifier)?;
            flatten(ctx, left, lead, depth + 1, out)?;
            flatten(ctx, right, Some(op), depth + 1, out)
        }
        term => {
            out.push((lead, term));
            Ok(())
        }
    }
}

/// Plans a compound query (or a single `VALUES` / parenthesized query) left to right.
fn plan_compound(ctx: PlanCtx<'_>, body: &ast::SetExpr) -> Result<Planned, SqlError> {
    let mut terms = Vec::new();
    flatten(ctx, body, None, 0, &mut terms)?;
    let mut planned: Option<Planned> = None;
    for (i, (op, term)) in terms.into_iter().enumerate() {
        // The i-th term sits i levels deep in a left-nested chain.
        let right = plan_term(ctx.deeper(i)?, term)?;
        planned = Some(match (planned, op) {
            (Some(left), Some(op)) => combine(left, op, right)?,
            (None, _) => right,
            (Some(_), None) => unreachable!("every term after the first has an operator"),
        });
    }
    Ok(planned.expect("a compound query has a term"))
}

fn plan_term(ctx: PlanCtx<'_>, term: &ast::SetExpr) -> Result<Planned, SqlError> {
    match term {
        ast::SetExpr::Select(select) => plan_select(ctx, select, &[], Window::default()),
        ast::SetExpr::Query(q) => plan_query(ctx, q),
        ast::SetExpr::Values(values) => plan_values(ctx, values),
        ast::SetExpr::Insert(_) | ast::SetExpr::Update(_) | ast::SetExpr::Delete(_) | ast::SetExpr::Merge(_) => {
            Err(SqlError::unsupported("WITH before INSERT, UPDATE or DELETE (WITH is supported on SELECT)"))
        }
        ast::SetExpr::Table(_) => Err(SqlError::unsupported("TABLE t as a query (write SELECT * FROM t)")),
        ast::SetExpr::SetOperation { .. } => unreachable!("flattened"),
    }
}

/// `left op right`. A chain of `UNION`s stays one flat union (`(a UNION b) UNION c`, and
/// `ALL` within `ALL`), so that a long chain is not a deep plan.
fn combine(left: Planned, op: Compound, right: Planned) -> Result<Planned, SqlError> {
    if left.columns.len() != right.columns.len() {
        return Err(SqlError::invalid(format!(
            "SELECTs to the left and right of {} do not have the same number of result columns",
            op.name()
        )));
    }
    let plan = match op {
        Compound::Union { distinct } => {
            let inputs = match left.plan {
                Plan::Union { inputs, distinct: left_distinct } if distinct || !left_distinct => {
                    let mut inputs = inputs;
                    inputs.push(right.plan);
                    inputs
                }
                other => vec![other, right.plan],
            };
            Plan::Union { inputs, distinct }
        }
        Compound::Set(op) => Plan::SetOp { op, left: Box::new(left.plan), right: Box::new(right.plan) },
    };
    Ok(Planned { plan, columns: left.columns })
}

fn plan_values(ctx: PlanCtx<'_>, values: &ast::Values) -> Result<Planned, SqlError> {
    let scope = Scope::default();
    let mut rows = Vec::with_capacity(values.rows.len());
    if values.rows.iter().flat_map(|r| r.iter()).any(bind::has_placeholder) {
        ctx.not_reusable();
    }
    let ctx = PlanCtx { notes: None, ..ctx };
    for row in &values.rows {
        let row = row.iter().map(|e| Binder::new(ctx, &scope).bind(e)?.eval(&[])).collect::<Result<Vec<_>, _>>()?;
        if rows.first().is_some_and(|first: &Vec<Value>| first.len() != row.len()) {
            return Err(SqlError::invalid("all VALUES must have the same number of terms"));
        }
        rows.push(row);
    }
    let width = rows.first().map_or(0, Vec::len);
    Ok(Planned { plan: Plan::Values { rows }, columns: (1..=width).map(|i| format!("column{i}")).collect() })
}

fn check_select(s: &ast::Select) -> Result<(), SqlError> {
    let extra = [
        (s.top.is_some(), "SELECT TOP (use LIMIT)"),
        (s.into.is_some(), "SELECT ... INTO (use INSERT ... SELECT)"),
        (!s.lateral_views.is_empty(), "LATERAL VIEW"),
        (s.prewhere.is_some(), "PREWHERE"),
        (!s.connect_by.is_empty(), "CONNECT BY"),
        (
            !s.cluster_by.is_empty() || !s.distribute_by.is_empty() || !s.sort_by.is_empty(),
            "CLUSTER/DISTRIBUTE/SORT BY",
        ),
        (s.qualify.is_some(), "QUALIFY"),
        (s.exclude.is_some(), "SELECT * EXCLUDE"),
        (s.value_table_mode.is_some(), "SELECT AS STRUCT/VALUE"),
        (!matches!(s.flavor, ast::SelectFlavor::Standard), "FROM before SELECT"),
    ];
    if let Some((_, what)) = extra.iter().find(|(present, _)| *present) {
        return Err(SqlError::unsupported(*what));
    }
    if matches!(s.distinct, Some(ast::Distinct::On(_))) {
        return Err(SqlError::unsupported("DISTINCT ON"));
    }
    Ok(())
}

/// The select list with wildcards expanded: each item and its output name.
fn expand(s: &ast::Select, scope: &Scope) -> Result<Vec<(Item, String, Option<String>)>, SqlError> {
    let mut items = Vec::new();
    for item in &s.projection {
        match item {
            ast::SelectItem::UnnamedExpr(e) => {
                let name = match e {
                    ast::Expr::Identifier(i) => i.value.clone(),
                    ast::Expr::CompoundIdentifier(parts) => parts.last().map_or_else(String::new, |i| i.value.clone()),
                    other => other.to_string(),
                };
                items.push((Item::Ast(Box::new(e.clone())), name, None));
            }
            ast::SelectItem::ExprWithAlias { expr, alias } => {
                items.push((Item::Ast(Box::new(expr.clone())), alias.value.clone(), Some(bind::ident(alias))))
            }
            ast::SelectItem::Wildcard(_) => {
                if scope.tables.is_empty() {
                    return Err(SqlError::invalid("no tables specified for *"));
                }
                for (i, c) in scope.columns.iter().enumerate().filter(|(_, c)| c.in_star) {
                    items.push((Item::Position(i), c.name.clone(), None));
                }
            }
            ast::SelectItem::QualifiedWildcard(ast::SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let table = bind::object_name(name)?;
                if !scope.has_table(&table) {
                    return Err(SqlError::UnknownTable(table));
                }
                for (i, c) in scope.columns.iter().enumerate().filter(|(_, c)| c.table == table && !c.hidden) {
                    items.push((Item::Position(i), c.name.clone(), None));
                }
            }
            other => return Err(SqlError::unsupported(format!("this select item: {other}"))),
        }
    }
    Ok(items)
}

/// An output column named or numbered by an ORDER BY / GROUP BY term, if it is one.
fn output_position(e: &ast::Expr, names: &[String], aliases: &[Option<String>]) -> Result<Option<usize>, SqlError> {
    if let ast::Expr::Value(v) = e {
        if let ast::Value::Number(text, _) = &v.value {
            let k: usize = text.parse().map_err(|_| SqlError::invalid(format!("bad term number {text}")))?;
            if k == 0 || k > names.len() {
                return Err(SqlError::invalid(format!(
                    "term number {k} out of range - should be between 1 and {}",
                    names.len()
                )));
            }
            return Ok(Some(k - 1));
        }
    }
    if let ast::Expr::Identifier(i) = e {
        let name = bind::ident(i);
        if let Some(p) = aliases.iter().position(|a| a.as_deref() == Some(name.as_str())) {
            return Ok(Some(p));
        }
        if aliases.is_empty() {
            return Ok(names.iter().position(|n| n.eq_ignore_ascii_case(&name)));
        }
    }
    Ok(None)
}

fn sort_key(term: &ast::OrderByExpr, column: usize) -> SortKey {
    let descending = matches!(term.options.sort, Some(ast::OrderBySort::Desc));
    SortKey { column, descending, nulls_first: term.options.nulls_first.unwrap_or(!descending) }
}

fn uses_aggregates(s: &ast::Select, terms: &[ast::OrderByExpr]) -> bool {
    let in_items = s.projection.iter().any(|i| match i {
        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => bind::has_aggregate(e),
        _ => false,
    });
    in_items || s.having.as_ref().is_some_and(bind::has_aggregate) || terms.iter().any(|t| bind::has_aggregate(&t.expr))
}

fn group_by(s: &ast::Select) -> Result<&[ast::Expr], SqlError> {
    match &s.group_by {
        ast::GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => Ok(exprs),
        _ => Err(SqlError::unsupported("GROUP BY ALL, ROLLUP, CUBE or GROUPING SETS")),
    }
}

fn plan_select(
    ctx: PlanCtx<'_>,
    s: &ast::Select,
    terms: &[ast::OrderByExpr],
    window: Window,
) -> Result<Planned, SqlError> {
    check_select(s)?;
    let (input, scope) = if s.from.is_empty() {
        let scope = Scope::default();
        let plan = match &s.selection {
            Some(w) => {
                let predicate = Binder::new(ctx, &scope).bind(w)?;
                Plan::Filter { input: Box::new(Plan::single_row()), predicate, text: vec![w.to_string()] }
            }
            None => Plan::single_row(),
        };
        (plan, scope)
    } else {
        from::plan_from(ctx, &s.from, s.selection.as_ref())?
    };
    let items = expand(s, &scope)?;
    let group_exprs = group_by(s)?;
    let aggregate = !group_exprs.is_empty() || uses_aggregates(s, terms);
    let names: Vec<String> = items.iter().map(|(_, n, _)| n.clone()).collect();
    let aliases: Vec<Option<String>> = items.iter().map(|(_, _, a)| a.clone()).collect();
    let mut binder = Binder::new(ctx, &scope);
    binder.win = Some(WinCtx::new(&s.named_window));
    if aggregate {
        binder.agg = Some(group_context(ctx, &scope, group_exprs, &items, &names, &aliases)?);
    } else if s.having.is_some() {
        return Err(SqlError::invalid("a GROUP BY clause is required before HAVING"));
    }
    let mut exprs = Vec::with_capacity(items.len());
    for (item, _, _) in &items {
        exprs.push(match item {
            Item::Ast(e) => binder.bind(e)?,
            Item::Position(p) => bind_position(&mut binder, &scope, *p)?,
        });
    }
    // HAVING runs before the windows: a window function in it is a misuse.
    let win = binder.win.take();
    let having = s.having.as_ref().map(|h| binder.bind(h).map(|e| (e, h.to_string()))).transpose()?;
    binder.win = win;
    let visible = exprs.len();
    let mut keys = Vec::new();
    for term in terms {
        let column = match output_position(&term.expr, &names, &aliases)? {
            Some(c) => c,
            None => match items.iter().position(|(i, _, _)| matches!(i, Item::Ast(e) if **e == term.expr)) {
                Some(c) => c,
                None => {
                    let bound = binder.bind(&term.expr)?;
                    let same_column = |e: &Expr| matches!((e, &bound), (Expr::Column(a), Expr::Column(b)) if a == b);
                    match exprs[..visible].iter().position(same_column) {
                        Some(c) => c,
                        None => {
                            exprs.push(bound);
                            exprs.len() - 1
                        }
                    }
                }
            },
        };
        keys.push(sort_key(term, column));
    }
    let mut plan = input;
    // The width of the rows above the aggregate (or of the FROM clause's rows).
    let width = binder.agg.as_ref().map_or(scope.columns.len(), |a| a.groups.len() + a.aggs.len());
    if let Some(agg) = binder.agg.take() {
        plan = counted_rows(Plan::Aggregate { input: Box::new(plan), groups: agg.groups, aggs: agg.aggs });
    }
    if let Some((predicate, text)) = having {
        plan = Plan::Filter { input: Box::new(plan), predicate, text: vec![text] };
    }
    if let Some(win) = binder.win.take().filter(|w| w.count > 0) {
        // The window values follow the operator's input row.
        for e in &mut exprs {
            e.for_each_child_mut(&mut |e| {
                if let Expr::WindowResult(k) = e {
                    *e = Expr::Column(width + *k);
                }
            });
        }
        plan = Plan::Window { input: Box::new(plan), sorts: win.sorts, count: win.count };
    }
    plan = Plan::Project { input: Box::new(plan), exprs };
    if matches!(s.distinct, Some(ast::Distinct::Distinct)) {
        if keys.iter().any(|k| k.column >= visible) {
            return Err(SqlError::unsupported("ORDER BY a term that is not in the select list of a DISTINCT query"));
        }
        plan = Plan::Distinct { input: Box::new(plan) };
    }
    let trim = (keys.iter().any(|k| k.column >= visible)).then_some(visible);
    let mut plan = finish(plan, keys, window, trim);
    prune::prune(&mut plan, None);
    Ok(Planned { plan, columns: names })
}

/// Sort, limit and trim hidden sort keys.
fn finish(mut plan: Plan, keys: Vec<SortKey>, window: Window, trim: Option<usize>) -> Plan {
    if !keys.is_empty() {
        let keep = window.limit.map(|l| l.saturating_add(window.offset));
        plan = Plan::Sort { input: Box::new(plan), keys, keep };
    }
    if window.offset > 0 || window.limit.is_some() {
        plan = Plan::Limit { input: Box::new(plan), offset: window.offset, limit: window.limit };
    }
    if let Some(width) = trim {
        plan = Plan::Trim { input: Box::new(plan), width };
    }
    plan
}

/// The scope column at `position` as a qualified name (`table.column`).
fn column_ast(scope: &Scope, position: usize) -> ast::Expr {
    let column = &scope.columns[position];
    ast::Expr::CompoundIdentifier(vec![ast::Ident::new(column.table.clone()), ast::Ident::new(column.name.clone())])
}

fn bind_position(binder: &mut Binder<'_>, scope: &Scope, position: usize) -> Result<Expr, SqlError> {
    binder.bind(&column_ast(scope, position))
}

/// Resolves `GROUP BY` terms (positions and aliases name select items) and binds them.
fn group_context(
    ctx: PlanCtx<'_>,
    scope: &Scope,
    exprs: &[ast::Expr],
    items: &[(Item, String, Option<String>)],
    names: &[String],
    aliases: &[Option<String>],
) -> Result<AggCtx, SqlError> {
    let mut agg = AggCtx::default();
    for e in exprs {
        let resolved = match e {
            ast::Expr::Identifier(i) if scope.resolve(None, &bind::ident(i)).is_ok() => e.clone(),
            _ => match output_position(e, names, aliases)? {
                Some(p) => match &items[p].0 {
                    Item::Ast(a) => (**a).clone(),
                    Item::Position(col) => column_ast(scope, *col),
                },
                None => e.clone(),
            },
        };
        if bind::has_aggregate(&resolved) {
            return Err(SqlError::invalid(format!("aggregate functions are not allowed in GROUP BY: {e}")));
        }
        agg.groups.push(Binder::new(ctx, scope).bind(&resolved)?);
        agg.group_asts.push(resolved);
    }
    Ok(agg)
}

/// `count(*)` (any number of times, nothing else) over a whole base table without a
/// filter: the table's maintained row count instead of a scan (issue 14: it took 122-214
/// ms over a million rows, SQLite 6-12 ms).
fn counted_rows(plan: Plan) -> Plan {
    let Plan::Aggregate { input, groups, aggs } = &plan else { return plan };
    let only_count_star = aggs.iter().all(|a| {
        a.func == super::aggregate::AggFunc::CountStar && a.filter.is_none() && !a.distinct && a.arg.is_none()
    });
    if !groups.is_empty() || aggs.is_empty() || !only_count_star {
        return plan;
    }
    match &**input {
        Plan::Scan(scan) if matches!(scan.access, super::plan::Access::Full) && scan.filter.is_none() => {
            Plan::CountRows { table: scan.table.clone(), count: aggs.len() }
        }
        _ => plan,
    }
}
