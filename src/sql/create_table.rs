//! `CREATE TABLE` as SQLite DDL writes it, translated into a [`TableSchema`].
//!
//! SQLite DDL is accepted where its meaning carries over to a keyed, strictly typed,
//! multi-master store: any type name (SQLite's affinity rule,
//! [`ColumnType::from_declared`]), `CHECK` (enforced on local writes, `check.rs`), foreign
//! keys (stored and shown, not enforced), `COLLATE BINARY`, `PRIMARY KEY ASC|DESC`,
//! `WITHOUT ROWID`, `STRICT`, tables without a primary key (keyed by a hidden identity,
//! docs/design.md § Tables without a primary key) and so `CREATE TABLE ... AS SELECT`
//! (typed by the values it copies), `UNIQUE` (a unique index created with the table,
//! docs/design.md § Unique indexes). What does not carry over is refused by name:
//! `AUTOINCREMENT`, other collations, conflict clauses other than the default `ABORT`.

use sqlparser::ast;

use super::bind::{self, Binder, PlanCtx};
use super::check::Checks;
use super::plan::Scope;
use super::system::SYSTEM_PREFIX;
use super::SqlError;
use crate::replica::WriteOp;
use crate::schema::{
    self, AppendOptions, CheckDef, ColumnDef, ForeignKeyDef, IndexSchema, TableSchema, NAME_BYTES_MAX, ORIGIN_COLUMN,
    ROWID_COLUMN,
};
use crate::types::{ColumnType, Value};

/// Translates `CREATE TABLE`, with the rows of `AS SELECT` if it has one, and the number
/// of rows written; constraints are bound once here, so a `CHECK` that could never run is
/// refused before the table exists.
pub(super) fn create_table(ctx: PlanCtx<'_>, ct: &ast::CreateTable) -> Result<(Vec<WriteOp>, u64), SqlError> {
    refuse_options(ct)?;
    let name = bind::object_name(&ct.name)?;
    check_name(&name)?;
    if let Some(query) = &ct.query {
        if !matches!(ct.table_options, ast::CreateTableOptions::None) {
            return Err(SqlError::unsupported(
                "CREATE TABLE ... WITH (...) AS SELECT (create the table, then INSERT ... SELECT)",
            ));
        }
        return create_table_as(ctx, ct, name, query);
    }
    // SQLite leaves an existing table as it is; so do its unique indexes here.
    if ct.if_not_exists && ctx.snap.catalog().table(&name).is_some() {
        return Ok((Vec::new(), 0));
    }
    let mut draft = Draft { schema: TableSchema::new(&name), key: Vec::new(), uniques: Vec::new() };
    for column in &ct.columns {
        draft.column(ctx, column)?;
    }
    for constraint in &ct.constraints {
        draft.table_constraint(constraint)?;
    }
    let uniques = std::mem::take(&mut draft.uniques);
    if let Some(options) = append_options(ct, &draft.schema)? {
        return create_append_table(ctx, ct, draft, uniques, options);
    }
    let schema = draft.finish(ct.without_rowid)?;
    Checks::bind(ctx, &schema)?;
    let indexes = unique_indexes(&schema, uniques)?;
    // The constraints' indexes are new with the table: one of that name existing is an
    // error, never a reason to go without the constraint.
    let mut ops = vec![WriteOp::CreateTable { schema, if_not_exists: ct.if_not_exists }];
    ops.extend(indexes.into_iter().map(|schema| WriteOp::CreateIndex { schema, if_not_exists: false }));
    Ok((ops, 0))
}

/// `CREATE TABLE ... WITH (append_only = true, ...)`: a `PRIMARY KEY` is a deduplication
/// key; no unique constraint, no `WITHOUT ROWID` (docs/design.md § Append-only tables and
/// retention).
fn create_append_table(
    ctx: PlanCtx<'_>,
    ct: &ast::CreateTable,
    draft: Draft,
    uniques: Vec<Vec<String>>,
    options: AppendOptions,
) -> Result<(Vec<WriteOp>, u64), SqlError> {
    let name = draft.schema.name.clone();
    if !uniques.is_empty() || ct.without_rowid {
        return Err(SqlError::unsupported(format!("UNIQUE or WITHOUT ROWID on append-only table {name}")));
    }
    let mut schema = draft.schema;
    // A declared key deduplicates; the rows' identity is the change that wrote them.
    schema.primary_key = draft.key;
    schema.append = Some(options);
    Checks::bind(ctx, &schema)?;
    Ok((vec![WriteOp::CreateTable { schema, if_not_exists: ct.if_not_exists }], 0))
}

/// The column of `ALTER TABLE ... ADD COLUMN`: a column definition as `CREATE TABLE` reads
/// it, without the constraints SQLite refuses there (`PRIMARY KEY`, `UNIQUE`) or that a
/// column added later cannot keep here (`CHECK` and `REFERENCES` live in the table's
/// definition, which an `ALTER` never rewrites).
pub(super) fn added_column(ctx: PlanCtx<'_>, table: &str, column: &ast::ColumnDef) -> Result<ColumnDef, SqlError> {
    let mut draft = Draft { schema: TableSchema::new(table), key: Vec::new(), uniques: Vec::new() };
    draft.column(ctx, column)?;
    if !draft.key.is_empty() {
        return Err(SqlError::invalid("Cannot add a PRIMARY KEY column"));
    }
    if !draft.uniques.is_empty() {
        return Err(SqlError::invalid("Cannot add a UNIQUE column"));
    }
    if !draft.schema.checks.is_empty() || !draft.schema.foreign_keys.is_empty() {
        return Err(SqlError::unsupported("CHECK or REFERENCES on a column added by ALTER TABLE"));
    }
    Ok(draft.schema.columns.pop().expect("Draft::column adds the column"))
}

/// The unique indexes of a table's `UNIQUE` constraints, named as SQLite names them. One
/// on exactly the primary-key columns is met by the key itself and makes none.
fn unique_indexes(schema: &TableSchema, uniques: Vec<Vec<String>>) -> Result<Vec<IndexSchema>, SqlError> {
    let mut key = schema.primary_key.clone();
    key.sort();
    let mut indexes = Vec::new();
    for columns in uniques {
        let mut sorted = columns.clone();
        sorted.sort();
        if !schema.rowid && sorted == key {
            continue;
        }
        let name = format!("sqlite_autoindex_{}_{}", schema.name, indexes.len() + 1);
        if name.len() > NAME_BYTES_MAX {
            return Err(SqlError::invalid(format!(
                "table name {} is too long for the name of its UNIQUE constraint's index ({name}: at most \
                 {NAME_BYTES_MAX} bytes); shorten it or create the table without UNIQUE and \
                 CREATE UNIQUE INDEX by name",
                schema.name
            )));
        }
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        indexes.push(IndexSchema::new(&name, &schema.name, &columns).unique());
    }
    Ok(indexes)
}

/// The columns of a `UNIQUE` constraint; refuses what it cannot mean here.
fn unique_columns(unique: &ast::UniqueConstraint) -> Result<Vec<String>, SqlError> {
    let plain = unique.index_type.is_none()
        && unique.include.is_empty()
        && unique.index_options.is_empty()
        && unique.characteristics.is_none()
        && !matches!(unique.nulls_distinct, ast::NullsDistinctOption::NotDistinct);
    if !plain {
        return Err(SqlError::unsupported(format!("{unique} (USING, INCLUDE, DEFERRABLE or NULLS NOT DISTINCT)")));
    }
    unique.columns.iter().map(super::ddl_dml::index_column).collect()
}

/// `CREATE TABLE t AS SELECT ...`: a table without a primary key, as SQLite makes it,
/// with the query's column names and its rows, in one batch. A column that copies a
/// column of the one table read (`*`, `t.*`, `c`, `t.c`, with or without `AS`) has its type
/// (INTEGER for a COUNTER); any other has the type its values hold (INTEGER and REAL
/// together make REAL; only NULLs, or no rows, make TEXT), since columns here are strictly
/// typed where SQLite's CTAS columns take any value.
fn create_table_as(
    ctx: PlanCtx<'_>,
    ct: &ast::CreateTable,
    name: String,
    query: &ast::Query,
) -> Result<(Vec<WriteOp>, u64), SqlError> {
    if !ct.columns.is_empty() || !ct.constraints.is_empty() || ct.without_rowid {
        return Err(SqlError::unsupported("column definitions, constraints or WITHOUT ROWID with AS SELECT"));
    }
    // SQLite leaves an existing table as it is, rows included.
    if ctx.snap.catalog().table(&name).is_some() && ct.if_not_exists {
        return Ok((Vec::new(), 0));
    }
    let planned = super::select::plan_query(ctx, query)?;
    let (rows, _reservation) =
        super::ddl_dml::collect(super::exec::open(planned.plan, ctx.snap, ctx.limits)?, ctx.limits)?;
    let mut copied = copied_types(ctx, query);
    if copied.len() != planned.columns.len() {
        // Not a projection this reading understands: the values decide every type.
        copied.clear();
    }
    let mut schema = TableSchema::without_key(&name);
    for (i, column) in planned.columns.iter().enumerate() {
        let ty = match copied.get(i).copied().flatten() {
            Some(ty) => ty,
            None => column_type_of(column, rows.iter().map(|row| &row[i]))?,
        };
        let name = crate::schema::normalize_name(column).map_err(|_| {
            SqlError::invalid(format!(
                "column {column:?} of CREATE TABLE ... AS SELECT is not a valid column name: give it one with AS"
            ))
        })?;
        schema.columns.push(ColumnDef::new(&name, ty));
    }
    let visible: Vec<(String, ColumnType)> = schema.visible_columns().map(|c| (c.name.clone(), c.ty)).collect();
    let mut ops = Vec::with_capacity(rows.len() + 1);
    ops.push(WriteOp::CreateTable { schema, if_not_exists: false });
    let count = rows.len() as u64;
    for row in rows {
        ctx.limits.check()?;
        let values = visible.iter().zip(row).map(|((name, ty), v)| (name.clone(), super::ddl_dml::conform(v, *ty)));
        ops.push(WriteOp::Insert { table: name.clone(), values: values.collect() });
    }
    Ok((ops, count))
}

/// For a query that reads one stored table, the type of each result column that copies
/// one of its columns; empty for any other query (the values decide).
fn copied_types(ctx: PlanCtx<'_>, query: &ast::Query) -> Vec<Option<ColumnType>> {
    let ast::SetExpr::Select(select) = &*query.body else { return Vec::new() };
    let [from] = select.from.as_slice() else { return Vec::new() };
    let ast::TableFactor::Table { name, alias, args: None, .. } = &from.relation else { return Vec::new() };
    let Ok(table_name) = bind::object_name(name) else { return Vec::new() };
    // A CTE of the same name hides the table; its columns have no declared types.
    if !from.joins.is_empty() || query.with.is_some() || ctx.ctes.is_some() {
        return Vec::new();
    }
    let Some(table) = ctx.snap.catalog().table(&table_name) else { return Vec::new() };
    let schema = &table.schema;
    let alias = alias.as_ref().map_or(table_name.clone(), |a| bind::ident(&a.name));
    let copy_type = |c: &crate::schema::ColumnDef| match c.ty {
        ColumnType::Counter => ColumnType::Integer,
        ty => ty,
    };
    let column_of = |e: &ast::Expr| -> Option<ColumnType> {
        let name = match e {
            ast::Expr::Identifier(i) => bind::ident(i),
            ast::Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [t, c] if bind::ident(t) == alias => bind::ident(c),
                _ => return None,
            },
            _ => return None,
        };
        schema.column_index(&name).map(|i| copy_type(&schema.columns[i]))
    };
    let mut types = Vec::new();
    for item in &select.projection {
        match item {
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..) => {
                types.extend(schema.visible_columns().map(|c| Some(copy_type(c))));
            }
            ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => {
                types.push(column_of(e))
            }
            ast::SelectItem::ExprWithAliases { .. } => types.push(None),
        }
    }
    types
}

/// The type of a `CREATE TABLE ... AS SELECT` column that holds `values`.
fn column_type_of<'v>(column: &str, values: impl Iterator<Item = &'v Value>) -> Result<ColumnType, SqlError> {
    let mut found: Option<ColumnType> = None;
    for value in values {
        let ty = match value {
            Value::Null => continue,
            Value::Integer(_) => ColumnType::Integer,
            Value::Real(_) => ColumnType::Real,
            Value::Text(_) => ColumnType::Text,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::Blob(_) => ColumnType::Blob,
            Value::Timestamp(_) => ColumnType::Timestamp,
        };
        found = match (found, ty) {
            (None, ty) => Some(ty),
            (Some(a), b) if a == b => Some(a),
            (Some(ColumnType::Integer | ColumnType::Real), ColumnType::Integer | ColumnType::Real) => {
                Some(ColumnType::Real)
            }
            (Some(a), b) => {
                return Err(SqlError::invalid(format!(
                    "column {column} of CREATE TABLE ... AS SELECT holds both {a} and {b} values, and a column \
                     here has one type: create the table first, then INSERT INTO ... SELECT"
                )))
            }
        };
    }
    Ok(found.unwrap_or(ColumnType::Text))
}

/// Refuses names the system tables own.
pub(super) fn check_name(name: &str) -> Result<(), SqlError> {
    if name.starts_with(SYSTEM_PREFIX) {
        return Err(SqlError::invalid(format!("names starting with {SYSTEM_PREFIX} are reserved: {name}")));
    }
    // As in SQLite: the indexes of UNIQUE constraints are named sqlite_autoindex_*.
    if name.starts_with(SQLITE_PREFIX) {
        return Err(SqlError::invalid(format!("object name reserved for internal use: {name}")));
    }
    Ok(())
}

/// Names starting with this are SQLite's (and here the indexes of `UNIQUE` constraints).
pub(super) const SQLITE_PREFIX: &str = "sqlite_";

fn refuse_options(ct: &ast::CreateTable) -> Result<(), SqlError> {
    if ct.or_replace || ct.temporary || ct.external || ct.like.is_some() || ct.clone.is_some() {
        return Err(SqlError::unsupported("CREATE TABLE options (OR REPLACE, TEMPORARY, LIKE, CLONE)"));
    }
    // Other dialects' table options: refused rather than ignored. `WITH (...)` is read by
    // `append_options`.
    if !matches!(ct.table_options, ast::CreateTableOptions::None | ast::CreateTableOptions::With(_)) {
        return Err(SqlError::unsupported(format!("CREATE TABLE options {}", ct.table_options)));
    }
    Ok(())
}

/// The options of `CREATE TABLE ... WITH (append_only = true, time_column = 'ts',
/// bucket = '1 hour', retention = '30 days', max_bytes = N)`; `None` without `WITH`.
/// Unknown options, and options without `append_only = true`, are refused by name, so a
/// table the user believes expires its rows is never created as an ordinary one.
fn append_options(ct: &ast::CreateTable, schema: &TableSchema) -> Result<Option<AppendOptions>, SqlError> {
    let ast::CreateTableOptions::With(options) = &ct.table_options else { return Ok(None) };
    let mut given: Vec<(String, &ast::Expr)> = Vec::new();
    for option in options {
        let ast::SqlOption::KeyValue { key, value } = option else {
            return Err(SqlError::unsupported(format!("table option {option} (write name = value)")));
        };
        let name = key.value.to_ascii_lowercase();
        if !APPEND_OPTIONS.contains(&name.as_str()) {
            return Err(SqlError::unsupported(format!("table option {name} (known: {})", APPEND_OPTIONS.join(", "))));
        }
        if given.iter().any(|(n, _)| *n == name) {
            return Err(SqlError::invalid(format!("table option {name} given twice")));
        }
        given.push((name, value));
    }
    let get = |name: &str| given.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    if !get("append_only").is_some_and(|v| option_text(v).eq_ignore_ascii_case("true")) {
        return Err(SqlError::invalid(format!(
            "table options {} need append_only = true (ordinary tables take no options)",
            ct.table_options
        )));
    }
    let time_column = get("time_column").map(option_text);
    if time_column.is_none() && (get("retention").is_some() || get("max_bytes").is_some()) {
        return Err(SqlError::invalid("retention and max_bytes need a time_column"));
    }
    let time_type = match &time_column {
        Some(name) => match schema.column_index(name) {
            Some(i) => Some(schema.columns[i].ty),
            None => return Err(SqlError::invalid(format!("time_column {name} is not a column of {}", schema.name))),
        },
        None => None,
    };
    let duration = |name: &str| -> Result<Option<i64>, SqlError> {
        let Some(value) = get(name) else { return Ok(None) };
        let text = option_text(value);
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Some(n));
        }
        if time_type != Some(ColumnType::Timestamp) {
            return Err(SqlError::invalid(format!(
                "{name} = '{text}': a duration needs a TIMESTAMP time_column; give {name} in the time column's unit"
            )));
        }
        Ok(Some(super::datetime::bucket_width_ms(&Value::Text(text))?))
    };
    let retention = duration("retention")?;
    let bucket = match (duration("bucket")?, time_type, retention) {
        (Some(bucket), _, _) => bucket,
        (None, Some(ColumnType::Integer), _) => {
            return Err(SqlError::invalid("an INTEGER time_column needs bucket = N, in the column's unit"));
        }
        (None, Some(ColumnType::Timestamp), Some(retention)) => default_bucket(retention),
        // Other types are refused by the definition's check, by name.
        (None, _, _) => schema::APPEND_BUCKET_DEFAULT,
    };
    let max_bytes = match get("max_bytes").map(option_text) {
        Some(text) => {
            Some(text.parse::<u64>().map_err(|_| SqlError::invalid(format!("max_bytes = {text}: a byte count")))?)
        }
        None => None,
    };
    Ok(Some(AppendOptions { time_column, bucket, retention, max_bytes }))
}

/// The options an append-only table takes.
const APPEND_OPTIONS: &[&str] = &["append_only", "time_column", "bucket", "retention", "max_bytes"];

/// The bucket of a `TIMESTAMP` table with a retention and no bucket: the widest of
/// 1 hour, 10 minutes, 1 minute, 10 seconds and 1 second that divides the retention
/// into at least 64 buckets, else 1 second (and a retention of no whole seconds is
/// refused by the definition's check).
fn default_bucket(retention: i64) -> i64 {
    const WIDTHS: [i64; 5] = [schema::APPEND_BUCKET_DEFAULT, 600_000, 60_000, 10_000, 1_000];
    WIDTHS.into_iter().find(|w| retention % w == 0 && retention / w >= 64).unwrap_or(1_000)
}

/// An option's value as text: a quoted string's contents, else the expression as written.
fn option_text(value: &ast::Expr) -> String {
    match value {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// A table definition being assembled from the statement's clauses.
struct Draft {
    schema: TableSchema,
    key: Vec<String>,
    /// The columns of each `UNIQUE` constraint, in definition order.
    uniques: Vec<Vec<String>>,
}

impl Draft {
    fn column(&mut self, ctx: PlanCtx<'_>, column: &ast::ColumnDef) -> Result<(), SqlError> {
        let name = bind::ident(&column.name);
        let mut def = ColumnDef::new(&name, ColumnType::from_declared(&column.data_type.to_string()));
        for option in &column.options {
            self.column_option(ctx, &mut def, option)?;
        }
        self.schema.columns.push(def);
        Ok(())
    }

    fn column_option(
        &mut self,
        ctx: PlanCtx<'_>,
        def: &mut ColumnDef,
        option: &ast::ColumnOptionDef,
    ) -> Result<(), SqlError> {
        match &option.option {
            ast::ColumnOption::Null => {}
            ast::ColumnOption::NotNull => def.not_null = true,
            ast::ColumnOption::Default(e) => {
                // Evaluated once, here: 'now' would freeze the CREATE TABLE time into every
                // row, so a DEFAULT has no statement time (SQLite evaluates it per insert).
                let v = Binder::new(ctx.at(None), &Scope::default()).bind(e)?.eval(&[])?;
                def.default = Some(super::ddl_dml::conform(v, def.ty));
            }
            ast::ColumnOption::PrimaryKey(pk) if pk.columns.is_empty() => self.set_key(vec![def.name.clone()])?,
            ast::ColumnOption::Unique(unique) if unique.columns.is_empty() => {
                unique_columns(unique)?;
                self.uniques.push(vec![def.name.clone()]);
            }
            ast::ColumnOption::Check(check) => self.check(option.name.as_ref().or(check.name.as_ref()), check)?,
            ast::ColumnOption::ForeignKey(fk) => {
                self.foreign_key(option.name.as_ref().or(fk.name.as_ref()), vec![def.name.clone()], fk)?
            }
            ast::ColumnOption::Collation(name) => collation(name)?,
            ast::ColumnOption::OnConflict(keyword) => on_conflict(*keyword)?,
            ast::ColumnOption::DialectSpecific(tokens) => dialect_option(tokens)?,
            other => return Err(SqlError::unsupported(format!("column constraint {other}"))),
        }
        Ok(())
    }

    fn table_constraint(&mut self, constraint: &ast::TableConstraint) -> Result<(), SqlError> {
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => {
                let key = pk.columns.iter().map(super::ddl_dml::index_column).collect::<Result<_, _>>()?;
                self.set_key(key)
            }
            ast::TableConstraint::Check(check) => self.check(check.name.as_ref(), check),
            ast::TableConstraint::Unique(unique) => {
                self.uniques.push(unique_columns(unique)?);
                Ok(())
            }
            ast::TableConstraint::ForeignKey(fk) => {
                let columns = fk.columns.iter().map(bind::ident).collect();
                self.foreign_key(fk.name.as_ref(), columns, fk)
            }
            other => Err(SqlError::unsupported(format!("table constraint {other}"))),
        }
    }

    fn set_key(&mut self, key: Vec<String>) -> Result<(), SqlError> {
        if !self.key.is_empty() {
            return Err(SqlError::invalid(format!("table {} has more than one primary key", self.schema.name)));
        }
        self.key = key;
        Ok(())
    }

    fn check(&mut self, name: Option<&ast::Ident>, check: &ast::CheckConstraint) -> Result<(), SqlError> {
        if check.no_inherit || check.enforced.is_some() {
            return Err(SqlError::unsupported(format!("{check} (NO INHERIT, [NOT] ENFORCED)")));
        }
        self.schema.checks.push(CheckDef { name: name.map(bind::ident), expr_sql: check.expr.to_string() });
        Ok(())
    }

    fn foreign_key(
        &mut self,
        name: Option<&ast::Ident>,
        columns: Vec<String>,
        fk: &ast::ForeignKeyConstraint,
    ) -> Result<(), SqlError> {
        if fk.match_kind.is_some() {
            return Err(SqlError::unsupported(format!("MATCH in a foreign key: {fk}")));
        }
        self.schema.foreign_keys.push(ForeignKeyDef {
            name: name.map(bind::ident),
            columns,
            foreign_table: bind::object_name(&fk.foreign_table)?,
            referred_columns: fk.referred_columns.iter().map(bind::ident).collect(),
            on_delete: fk.on_delete.map(|a| a.to_string()),
            on_update: fk.on_update.map(|a| a.to_string()),
        });
        Ok(())
    }

    /// The definition: keyed by the declared primary key, or, without one, by the hidden
    /// identity of a key-less table (docs/design.md § Tables without a primary key).
    fn finish(self, without_rowid: bool) -> Result<TableSchema, SqlError> {
        let Draft { schema, key, .. } = self;
        if !key.is_empty() {
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            return Ok(schema.primary_key(&key));
        }
        if without_rowid {
            return Err(SqlError::invalid(format!("PRIMARY KEY missing on table {} (WITHOUT ROWID)", schema.name)));
        }
        let mut keyless = TableSchema::without_key(&schema.name);
        for column in schema.columns {
            if keyless.column_index(&column.name).is_some() {
                return Err(SqlError::invalid(format!(
                    "column {} of table {}: a table without a PRIMARY KEY keeps its row identity in the \
                     hidden columns {ROWID_COLUMN} and {ORIGIN_COLUMN}; rename the column or declare a key",
                    column.name, schema.name
                )));
            }
            keyless.columns.push(column);
        }
        keyless.checks = schema.checks;
        keyless.foreign_keys = schema.foreign_keys;
        Ok(keyless)
    }
}

/// `COLLATE BINARY` is how every comparison works here; the others would change results.
fn collation(name: &ast::ObjectName) -> Result<(), SqlError> {
    if name.to_string().eq_ignore_ascii_case("binary") {
        return Ok(());
    }
    Err(SqlError::unsupported(format!("COLLATE {name} on a column (comparisons are binary: only COLLATE BINARY)")))
}

/// A column's `ON CONFLICT` clause; `ABORT` is what every statement does anyway.
fn on_conflict(keyword: sqlparser::keywords::Keyword) -> Result<(), SqlError> {
    if keyword == sqlparser::keywords::Keyword::ABORT {
        return Ok(());
    }
    Err(SqlError::unsupported(format!(
        "ON CONFLICT {keyword:?} in a column constraint (write INSERT OR IGNORE / OR REPLACE / ON CONFLICT)"
    )))
}

/// Words sqlparser leaves to the dialect: `ASC`/`DESC` after `PRIMARY KEY` (the key order
/// of storage, which no result depends on) and `AUTOINCREMENT`.
fn dialect_option(tokens: &[sqlparser::tokenizer::Token]) -> Result<(), SqlError> {
    let words: Vec<String> = tokens.iter().map(|t| t.to_string().to_ascii_uppercase()).collect();
    if words.iter().all(|w| w == "ASC" || w == "DESC") {
        return Ok(());
    }
    if words.iter().any(|w| w == "AUTOINCREMENT") {
        return Err(SqlError::unsupported(
            "AUTOINCREMENT (nodes write concurrently, so there is no store-wide counter to draw keys from: \
             give each row its key)",
        ));
    }
    Err(SqlError::unsupported(format!("column constraint {}", words.join(" "))))
}
