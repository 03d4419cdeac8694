//! SQLite's schema `PRAGMA`s that field engineers type, answered as queries over the
//! system tables (`system.rs`) with SQLite's column names, so the rest of the engine sees
//! an ordinary `SELECT` (read-only, kept plans, `EXPLAIN`):
//!
//! - `PRAGMA table_info(t)` — `cid, name, type, notnull, dflt_value, pk` (a key-less
//!   table's hidden identity is not listed);
//! - `PRAGMA index_list(t)` — `seq, name, unique, origin, partial`;
//! - `PRAGMA table_list` — `schema, name, type, ncol, wr, strict`.
//!
//! An unknown table gives no rows, as in SQLite. Every other pragma is refused by name:
//! pragmas that set something (`journal_mode`, `synchronous`, ...) have nothing to set
//! here (the store's durability is fixed) and say so.

use sqlparser::ast;

use super::SqlError;

/// The query a pragma stands for; `Ok(None)` for a statement that is not a pragma.
pub(crate) fn rewrite(statement: &ast::Statement) -> Result<Option<ast::Statement>, SqlError> {
    let ast::Statement::Pragma { name, value, is_eq } = statement else { return Ok(None) };
    let pragma = name.to_string().to_ascii_lowercase();
    let argument = match value.as_ref().map(|v| &v.value) {
        None => None,
        Some(ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let sql = match (pragma.as_str(), argument, is_eq) {
        ("table_info", Some(table), false) => format!(
            "SELECT position AS cid, name, type, CAST(not_null AS INTEGER) AS \"notnull\", \
             default_value AS dflt_value, coalesce(pk_position, 0) AS pk \
             FROM edgestore_columns WHERE table_name = lower({}) ORDER BY position",
            quoted(&table)
        ),
        ("index_list", Some(table), false) => format!(
            "SELECT row_number() OVER (ORDER BY name) - 1 AS seq, name, CAST(is_unique AS INTEGER) AS \"unique\", \
             'c' AS origin, 0 AS partial FROM edgestore_indexes WHERE table_name = lower({}) ORDER BY name",
            quoted(&table)
        ),
        ("table_list", None, false) => "SELECT 'main' AS schema, t.name, \
             CASE t.kind WHEN 'view' THEN 'view' ELSE 'table' END AS type, \
             (SELECT count(*) FROM edgestore_columns c WHERE c.table_name = t.name) AS ncol, 0 AS wr, 0 AS strict \
             FROM edgestore_tables t ORDER BY t.name"
            .to_string(),
        ("table_info" | "index_list", None, _) => {
            return Err(SqlError::invalid(format!("PRAGMA {pragma} names a table: PRAGMA {pragma}(t)")));
        }
        _ => {
            return Err(SqlError::unsupported(format!(
                "PRAGMA {pragma} (PRAGMA table_info(t), index_list(t) and table_list are answered; the system \
                 tables edgestore_tables, edgestore_columns, ... describe the rest; nothing is set by a pragma)"
            )));
        }
    };
    let parsed = super::parse::parse_one(&sql)?;
    debug_assert!(matches!(parsed.statement, ast::Statement::Query(_)), "a pragma is a query");
    Ok(Some(parsed.statement))
}

/// `text` as an SQL string literal.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(sql: &str) -> Result<Option<ast::Statement>, SqlError> {
        rewrite(&super::super::parse::parse_one(sql).expect("parses").statement)
    }

    #[test]
    fn schema_pragmas_become_queries_and_others_are_refused_by_name() {
        for sql in
            ["PRAGMA table_info(readings)", "PRAGMA table_info('it''s')", "PRAGMA index_list(t)", "PRAGMA table_list"]
        {
            assert!(matches!(pragma(sql), Ok(Some(ast::Statement::Query(_)))), "{sql}");
        }
        let refused = pragma("PRAGMA journal_mode = WAL").unwrap_err().to_string();
        assert!(refused.contains("PRAGMA journal_mode") && refused.contains("table_info"), "{refused}");
        assert!(pragma("PRAGMA table_info").unwrap_err().to_string().contains("names a table"));
        assert!(matches!(pragma("SELECT 1"), Ok(None)));
    }
}
