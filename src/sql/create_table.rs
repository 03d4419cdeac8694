//! `CREATE TABLE` as SQLite DDL writes it, translated into a [`TableSchema`].
//!
//! SQLite DDL is accepted where its meaning carries over to a keyed, strictly typed,
//! multi-master store: any type name (SQLite's affinity rule,
//! [`ColumnType::from_declared`]), `CHECK` (enforced on local writes, `check.rs`), foreign
//! keys (stored and shown, not enforced), `COLLATE BINARY`, `PRIMARY KEY ASC|DESC`,
//! `WITHOUT ROWID`, `STRICT`. What does not carry over is refused by name: a table without
//! a primary key (so also `CREATE TABLE ... AS SELECT`), `UNIQUE`, `AUTOINCREMENT`, other
//! collations, conflict clauses other than the default `ABORT`.

use sqlparser::ast;

use super::bind::{self, Binder, PlanCtx};
use super::check::Checks;
use super::plan::Scope;
use super::system::SYSTEM_PREFIX;
use super::SqlError;
use crate::replica::WriteOp;
use crate::schema::{CheckDef, ColumnDef, ForeignKeyDef, TableSchema};
use crate::types::ColumnType;

/// Translates `CREATE TABLE`; its constraints are bound once here, so a `CHECK` that could
/// never run is refused before the table exists.
pub(super) fn create_table(ctx: PlanCtx<'_>, ct: &ast::CreateTable) -> Result<WriteOp, SqlError> {
    refuse_options(ct)?;
    let name = bind::object_name(&ct.name)?;
    check_name(&name)?;
    let mut draft = Draft { schema: TableSchema::new(&name), key: Vec::new() };
    for column in &ct.columns {
        draft.column(ctx, column)?;
    }
    for constraint in &ct.constraints {
        draft.table_constraint(constraint)?;
    }
    let schema = draft.finish()?;
    Checks::bind(ctx, &schema)?;
    Ok(WriteOp::CreateTable { schema, if_not_exists: ct.if_not_exists })
}

/// Refuses names the system tables own.
pub(super) fn check_name(name: &str) -> Result<(), SqlError> {
    if name.starts_with(SYSTEM_PREFIX) {
        return Err(SqlError::invalid(format!("names starting with {SYSTEM_PREFIX} are reserved: {name}")));
    }
    Ok(())
}

fn refuse_options(ct: &ast::CreateTable) -> Result<(), SqlError> {
    if ct.query.is_some() {
        // SQLite gives such a table no primary key; every edgestore row is keyed.
        return Err(SqlError::unsupported(
            "CREATE TABLE ... AS SELECT (the table would have no PRIMARY KEY, which every edgestore table \
             needs: create it with one, then INSERT INTO ... SELECT)",
        ));
    }
    if ct.or_replace || ct.temporary || ct.external || ct.like.is_some() || ct.clone.is_some() {
        return Err(SqlError::unsupported("CREATE TABLE options (OR REPLACE, TEMPORARY, LIKE, CLONE)"));
    }
    Ok(())
}

/// A table definition being assembled from the statement's clauses.
struct Draft {
    schema: TableSchema,
    key: Vec<String>,
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

    fn finish(self) -> Result<TableSchema, SqlError> {
        let Draft { schema, key } = self;
        if key.is_empty() {
            return Err(SqlError::unsupported(format!(
                "table {} without a PRIMARY KEY (every row is keyed)",
                schema.name
            )));
        }
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        Ok(schema.primary_key(&key))
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
