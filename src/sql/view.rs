//! Views (docs/design.md § Views): `CREATE VIEW` checked and turned into its write, and a
//! view named in `FROM` planned from its stored query, as a subquery, each time it is read.

use sqlparser::ast;

use super::bind::{self, PlanCtx};
use super::limits::SUBQUERY_DEPTH_COST;
use super::plan::Plan;
use super::select::{self, Planned};
use super::{parse, SqlError};
use crate::catalog::{ViewDef, VIEW_SQL_BYTES_MAX};
use crate::replica::WriteOp;

/// `CREATE [OR REPLACE] VIEW [IF NOT EXISTS] v [(a, ...)] AS SELECT ...`: the query must
/// bind now, read no view that reads `v` (nor `v`), take no parameters and give as many
/// columns as the list names. `OR REPLACE` drops a view of that name in the same batch.
pub(crate) fn create_view(ctx: PlanCtx<'_>, cv: &ast::CreateView) -> Result<Vec<WriteOp>, SqlError> {
    let refused = [
        (cv.or_alter, "CREATE OR ALTER VIEW"),
        (cv.or_replace && cv.if_not_exists, "CREATE OR REPLACE VIEW with IF NOT EXISTS"),
        (cv.materialized, "materialized views"),
        (cv.temporary, "temporary views"),
        (cv.secure || cv.comment.is_some() || !cv.cluster_by.is_empty(), "this CREATE VIEW option"),
        (!matches!(cv.options, ast::CreateTableOptions::None), "options on a view"),
        (
            cv.columns.iter().any(|c| c.data_type.is_some() || c.options.is_some()),
            "types or options in a view's column list",
        ),
    ];
    if let Some((_, feature)) = refused.iter().find(|(used, _)| *used) {
        return Err(SqlError::unsupported(*feature));
    }
    let name = bind::object_name(&cv.name)?;
    let query = cv.query.to_string();
    if query.len() > VIEW_SQL_BYTES_MAX {
        return Err(SqlError::invalid(format!("view {name}: its query is over {VIEW_SQL_BYTES_MAX} bytes")));
    }
    if parse::parse_one(&query)?.params > 0 {
        return Err(SqlError::invalid(format!("view {name}: a view's query takes no parameters")));
    }
    let columns: Vec<String> = cv.columns.iter().map(|c| bind::ident(&c.name)).collect();
    if let Some(twice) = columns.iter().enumerate().find(|(i, c)| columns[..*i].contains(c)) {
        return Err(SqlError::invalid(format!("view {name}: column {} named twice", twice.1)));
    }
    let def = ViewDef { name, query, columns };
    // Binds against the statement's snapshot: a view over what does not exist is refused,
    // and so is one that would read itself once written.
    let notes = bind::PlanNotes::new();
    plan(PlanCtx { notes: Some(&notes), ..ctx }, &def)?;
    if notes.views.borrow().contains(&def.name) {
        return Err(SqlError::invalid(format!("view {} would read itself", def.name)));
    }
    let name = def.name.clone();
    let create = WriteOp::CreateView { def, if_not_exists: cv.if_not_exists };
    Ok(match cv.or_replace {
        true => vec![WriteOp::DropView { name, if_exists: true }, create],
        false => vec![create],
    })
}

/// The plan of the view `name` read in `FROM`, with its columns; `None` if there is no
/// such view. Not kept: a later execution plans the view's current definition.
pub(crate) fn reference(ctx: PlanCtx<'_>, name: &str) -> Result<Option<(Plan, Vec<String>)>, SqlError> {
    let Some(view) = ctx.snap.catalog().view(name) else { return Ok(None) };
    if let Some(notes) = ctx.notes {
        notes.reusable.set(false);
        notes.views.borrow_mut().push(view.def.name.clone());
    }
    let planned = plan(ctx, &view.def)?;
    Ok(Some((planned.plan, planned.columns)))
}

/// Plans a view's query in a context of its own: no enclosing query, no `WITH` of the
/// statement that reads it, no parameters, one subquery level deeper (so views of views,
/// and a cycle of them, end at the depth limit).
fn plan(ctx: PlanCtx<'_>, def: &ViewDef) -> Result<Planned, SqlError> {
    let in_view = |e: SqlError| match e {
        SqlError::TooDeep { .. } => e,
        other => SqlError::invalid(format!("view {}: {other}", def.name)),
    };
    let parsed = parse::parse_one(&def.query).map_err(in_view)?;
    let ast::Statement::Query(query) = &parsed.statement else {
        return Err(SqlError::invalid(format!("view {}: its definition is not a query", def.name)));
    };
    let ctx =
        PlanCtx { outer: None, hidden_outer: None, ctes: None, params: &[], ..ctx }.deeper(SUBQUERY_DEPTH_COST)?;
    let mut planned = select::plan_query(ctx, query).map_err(in_view)?;
    if !def.columns.is_empty() {
        if def.columns.len() != planned.columns.len() {
            return Err(SqlError::invalid(format!(
                "view {}: its query gives {} columns for its {} names",
                def.name,
                planned.columns.len(),
                def.columns.len()
            )));
        }
        planned.columns = def.columns.clone();
    }
    Ok(planned)
}
