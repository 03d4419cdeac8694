//! The SQL dialect: sqlparser's SQLite dialect with SQLite's own operator precedence and
//! the operators it lacks (`<<`, `>>`, `NOT GLOB`), the table form of `IN` (`x IN t`) and
//! identifiers as pragma values (`PRAGMA table_info(t)`).
//!
//! sqlparser's SQLite dialect parses with PostgreSQL-like precedence: `||` binds like `*`,
//! `&` `|` `<<` `>>` each on its own level, and unary `-` `~` below `||`. SQLite's
//! (<https://www.sqlite.org/lang_expr.html#operators>), highest first: unary `~ + -`;
//! `|| -> ->>`; `* / %`; `+ -`; `& | << >>` (one level, left to right); comparisons. The
//! levels here sit between sqlparser's so that everything else parses as before.
//!
//! The wrapper reports itself as [`SQLiteDialect`] (`Dialect::dialect`), so every place
//! where sqlparser asks "is this SQLite?" still answers yes, and delegates every method
//! the SQLite dialect overrides.

use std::any::TypeId;

use sqlparser::ast::{BinaryOperator, Expr, Ident, ObjectName, Statement, UnaryOperator, Value};
use sqlparser::dialect::{Dialect, SQLiteDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// Unary `~`, `+`, `-`: above every binary operator (sqlparser's `*` is 40).
const UNARY: u8 = 50;
/// `||`, `->`, `->>`: above `*`.
const CONCAT: u8 = 45;
/// `&`, `|`, `<<`, `>>`: below `+ -` (30), above comparisons (20).
const BITWISE: u8 = 25;

/// SQLite as SQLite parses it; see the module comment.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EdgeDialect {
    sqlite: SQLiteDialect,
}

/// The one dialect every statement is parsed with.
pub(crate) static DIALECT: EdgeDialect = EdgeDialect { sqlite: SQLiteDialect {} };

impl Dialect for EdgeDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<SQLiteDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.sqlite.is_delimited_identifier_start(ch)
    }

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.sqlite.identifier_quote_style(identifier)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.sqlite.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.sqlite.is_identifier_part(ch)
    }

    fn supports_filter_during_aggregation(&self) -> bool {
        self.sqlite.supports_filter_during_aggregation()
    }

    fn supports_start_transaction_modifier(&self) -> bool {
        self.sqlite.supports_start_transaction_modifier()
    }

    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        if let Some(pragma) = pragma_with_identifier(parser) {
            return Some(Ok(pragma));
        }
        self.sqlite.parse_statement(parser)
    }

    fn supports_in_empty_list(&self) -> bool {
        self.sqlite.supports_in_empty_list()
    }

    fn supports_limit_comma(&self) -> bool {
        self.sqlite.supports_limit_comma()
    }

    fn supports_asc_desc_in_column_definition(&self) -> bool {
        self.sqlite.supports_asc_desc_in_column_definition()
    }

    fn supports_dollar_placeholder(&self) -> bool {
        self.sqlite.supports_dollar_placeholder()
    }

    fn supports_notnull_operator(&self) -> bool {
        self.sqlite.supports_notnull_operator()
    }

    fn supports_comma_separated_trim(&self) -> bool {
        self.sqlite.supports_comma_separated_trim()
    }

    fn supports_numeric_literal_underscores(&self) -> bool {
        self.sqlite.supports_numeric_literal_underscores()
    }

    fn supports_bitwise_shift_operators(&self) -> bool {
        true
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        let precedence = match &parser.peek_token_ref().token {
            Token::StringConcat | Token::Arrow | Token::LongArrow => CONCAT,
            Token::Ampersand | Token::Pipe | Token::ShiftLeft | Token::ShiftRight => BITWISE,
            _ => return None,
        };
        Some(Ok(precedence))
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        let op = match parser.peek_token_ref().token {
            Token::Tilde => UnaryOperator::BitwiseNot,
            Token::Minus => UnaryOperator::Minus,
            Token::Plus => UnaryOperator::Plus,
            _ => return None,
        };
        parser.advance_token();
        Some(parser.parse_subexpr(UNARY).map(|expr| Expr::UnaryOp { op, expr: Box::new(expr) }))
    }

    fn parse_infix(&self, parser: &mut Parser, expr: &Expr, precedence: u8) -> Option<Result<Expr, ParserError>> {
        if let Some(negated) = in_table_ahead(parser) {
            return Some(self.parse_in_table(parser, expr, negated));
        }
        if parser.parse_keywords(&[Keyword::NOT, Keyword::GLOB]) {
            let glob = parser.parse_subexpr(precedence).map(|right| Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr: Box::new(Expr::BinaryOp {
                    left: Box::new(expr.clone()),
                    op: BinaryOperator::Glob,
                    right: Box::new(right),
                }),
            });
            return Some(glob);
        }
        self.sqlite.parse_infix(parser, expr, precedence)
    }
}

impl EdgeDialect {
    /// `x [NOT] IN t`, SQLite's table form of `IN`: read as `x [NOT] IN (SELECT * FROM t)`
    /// (so a table of more than one column is refused as that subquery would be).
    fn parse_in_table(&self, parser: &mut Parser, expr: &Expr, negated: bool) -> Result<Expr, ParserError> {
        if negated {
            parser.expect_keyword(Keyword::NOT)?;
        }
        parser.expect_keyword(Keyword::IN)?;
        let table = parser.parse_object_name(false)?;
        // The name as it was written (quoted or not), parsed again inside a query.
        let subquery = Parser::new(self).try_with_sql(&format!("SELECT * FROM {table}"))?.parse_query()?;
        Ok(Expr::InSubquery { expr: Box::new(expr.clone()), subquery, negated })
    }
}

/// Whether `[NOT] IN name` follows, a name not opening a call (`IN f(...)`, a table-valued
/// function, is not read here); `Some(negated)` if it does.
fn in_table_ahead(parser: &Parser) -> Option<bool> {
    let keyword =
        |n: usize, k: Keyword| matches!(&parser.peek_nth_token_ref(n).token, Token::Word(w) if w.keyword == k);
    let negated = keyword(0, Keyword::NOT);
    let at = usize::from(negated);
    if !keyword(at, Keyword::IN) || !matches!(parser.peek_nth_token_ref(at + 1).token, Token::Word(_)) {
        return None;
    }
    let mut next = at + 2;
    while matches!(parser.peek_nth_token_ref(next).token, Token::Period) {
        next += 2;
    }
    (!matches!(parser.peek_nth_token_ref(next).token, Token::LParen)).then_some(negated)
}

/// `PRAGMA name(identifier)` and `PRAGMA name = identifier`, as SQLite writes them
/// (`PRAGMA table_info(readings)`, `PRAGMA journal_mode = WAL`), which sqlparser 0.63
/// refuses (its pragma value is a number or a string): the identifier becomes a string
/// value. `None`, consuming nothing, for any other statement.
fn pragma_with_identifier(parser: &mut Parser) -> Option<Statement> {
    let word = |n: usize| match &parser.peek_nth_token_ref(n).token {
        Token::Word(w) => Some(w.clone()),
        _ => None,
    };
    if word(0)?.keyword != Keyword::PRAGMA {
        return None;
    }
    let name = word(1)?;
    let (value, is_eq, tokens) = match &parser.peek_nth_token_ref(2).token {
        Token::LParen if parser.peek_nth_token_ref(4).token == Token::RParen => (word(3)?, false, 5),
        Token::Eq => (word(3)?, true, 4),
        _ => return None,
    };
    for _ in 0..tokens {
        parser.next_token();
    }
    Some(Statement::Pragma {
        name: ObjectName::from(vec![Ident::new(name.value)]),
        value: Some(Value::SingleQuotedString(value.value).with_empty_span()),
        is_eq,
    })
}
