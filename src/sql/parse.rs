//! Parsing: sqlparser with the SQLite dialect, after numbering anonymous parameters.
//!
//! SQLite numbers `?` by position, continuing after the largest `?N` seen so far
//! (`?2, ?` is `?2, ?3`). We rewrite every `?` token to its `?N` before parsing, so the
//! binder only ever sees numbered parameters, whatever order it binds clauses in.

use sqlparser::ast::Statement;
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::SqlError;

/// Longest SQL text accepted, in bytes.
pub const SQL_BYTES_MAX: usize = 1 << 20;

/// Parses exactly one statement.
pub(crate) fn parse_one(sql: &str) -> Result<Statement, SqlError> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(SqlError::invalid(format!("statement longer than {SQL_BYTES_MAX} bytes")));
    }
    let dialect = SQLiteDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| SqlError::Syntax {
        message: e.message,
        line: e.location.line,
        column: e.location.column,
    })?;
    number_parameters(&mut tokens);
    let mut statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| SqlError::from_parser(e, sql))?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        0 => Err(SqlError::invalid("empty statement")),
        n => Err(SqlError::unsupported(format!("{n} statements in one call (execute them one at a time)"))),
    }
}

fn number_parameters(tokens: &mut [sqlparser::tokenizer::TokenWithSpan]) {
    let mut highest = 0u64;
    for token in tokens {
        let Token::Placeholder(p) = &mut token.token else { continue };
        if p == "?" {
            highest += 1;
            *p = format!("?{highest}");
        } else if let Some(n) = p.strip_prefix(['?', '$']).and_then(|d| d.parse::<u64>().ok()) {
            highest = highest.max(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_parameters_continue_after_numbered_ones() {
        let statement = parse_one("SELECT ?, ?5, ?, $2").unwrap().to_string();
        assert_eq!(statement, "SELECT ?1, ?5, ?6, $2");
    }

    #[test]
    fn syntax_errors_carry_positions() {
        match parse_one("SELECT *\nFROM t WHERE a = = 1") {
            Err(SqlError::Syntax { line, column, .. }) => assert_eq!((line, column), (2, 18)),
            other => panic!("{other:?}"),
        }
        match parse_one("SELECT * FROM") {
            Err(SqlError::Syntax { line, column, .. }) => assert_eq!((line, column), (1, 14)),
            other => panic!("{other:?}"),
        }
    }
}
