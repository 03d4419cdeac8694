//! Parsing: sqlparser with our SQLite dialect (`dialect.rs`), after numbering anonymous parameters.
//!
//! SQLite numbers `?` by position, continuing after the largest `?N` seen so far
//! (`?2, ?` is `?2, ?3`). We rewrite every `?` token to its `?N` before parsing, so the
//! binder only ever sees numbered parameters, whatever order it binds clauses in.
//!
//! Before parsing, the tokens bound how deeply the statement can nest (see
//! [`nesting_bound`]): sqlparser builds an operator chain like `1+1+1+…` in a loop, so its
//! own recursion limit does not see it, but the tree it builds is as deep as the chain is
//! long, and dropping, comparing or printing such a tree recurses once per level. Only
//! statements whose bound is within [`TEXT_DEPTH_MAX`] are parsed; the binder then counts
//! the exact depth against [`EXPR_DEPTH_MAX`].

use super::dialect::DIALECT;
use sqlparser::ast::Statement;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{SqlError, EXPR_DEPTH_MAX};

/// Longest SQL text accepted, in bytes.
pub const SQL_BYTES_MAX: usize = 1 << 20;

/// Largest nesting bound of a statement's tokens accepted for parsing: the bound counts
/// every operator token (`x = -1 AND` is three), so it may exceed the exact depth the
/// binder checks against [`EXPR_DEPTH_MAX`] a few times over; past this, the tree is
/// certainly too deep, and is never built.
pub(crate) const TEXT_DEPTH_MAX: usize = 4 * EXPR_DEPTH_MAX;

/// sqlparser's own recursion limit (it recurses about twice per parenthesis level, which
/// [`nesting_bound`] counts once).
const PARSER_RECURSION_MAX: usize = 2 * TEXT_DEPTH_MAX + 16;

/// A statement parsed, with the number of parameters it takes (its highest `?N`).
#[derive(Debug)]
pub(crate) struct Parsed {
    pub statement: Statement,
    pub params: usize,
}

/// Parses exactly one statement.
pub(crate) fn parse_one(sql: &str) -> Result<Parsed, SqlError> {
    let mut tokens = bounded_tokens(sql, "statement")?;
    let params = number_parameters(&mut tokens);
    let frame_exclude = has_frame_exclude(&tokens);
    let mut statements = Parser::new(&DIALECT)
        .with_recursion_limit(PARSER_RECURSION_MAX)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| match frame_exclude {
            // sqlparser has no EXCLUDE clause in window frames: name the feature instead
            // of reporting its syntax error.
            true => SqlError::unsupported("EXCLUDE in a window frame"),
            false => SqlError::from_parser(e, sql),
        })?;
    match statements.len() {
        1 => Ok(Parsed { statement: statements.remove(0), params }),
        0 => Err(SqlError::invalid("empty statement")),
        n => Err(SqlError::unsupported(format!("{n} statements in one call (execute them one at a time)"))),
    }
}

/// A lone expression parsed (a stored `CHECK`), with what the token stream shows.
#[derive(Debug)]
pub(crate) struct ParsedExpr {
    pub expr: sqlparser::ast::Expr,
    /// Whether it has a parameter (`?`, `?N`, `$N`).
    pub has_params: bool,
    /// Whether it has a query (`SELECT`, `VALUES`): seen in the tokens, so no subquery
    /// escapes, however deeply it hides in the tree.
    pub has_query: bool,
}

/// Parses exactly one expression, under the same limits as a statement.
pub(crate) fn parse_expr(sql: &str) -> Result<ParsedExpr, SqlError> {
    let tokens = bounded_tokens(sql, "expression")?;
    let has_params = tokens.iter().any(|t| matches!(t.token, Token::Placeholder(_)));
    let has_query = tokens
        .iter()
        .any(|t| matches!(&t.token, Token::Word(w) if matches!(w.keyword, Keyword::SELECT | Keyword::VALUES)));
    let mut parser =
        Parser::new(&DIALECT).with_recursion_limit(PARSER_RECURSION_MAX).with_tokens_with_locations(tokens);
    let expr = parser.parse_expr().map_err(|e| SqlError::from_parser(e, sql))?;
    if parser.peek_token().token != Token::EOF {
        return Err(SqlError::invalid(format!("text after the expression: {sql}")));
    }
    Ok(ParsedExpr { expr, has_params, has_query })
}

/// The tokens of `sql` (a `what`), refused before the parser builds anything too long or
/// certainly too deep.
fn bounded_tokens(sql: &str, what: &str) -> Result<Vec<TokenWithSpan>, SqlError> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(SqlError::invalid(format!("{what} longer than {SQL_BYTES_MAX} bytes")));
    }
    let tokens = Tokenizer::new(&DIALECT, sql).tokenize_with_location().map_err(|e| SqlError::Syntax {
        message: e.message,
        line: e.location.line,
        column: e.location.column,
    })?;
    if nesting_bound(&tokens) > TEXT_DEPTH_MAX {
        return Err(SqlError::TooDeep { limit: EXPR_DEPTH_MAX });
    }
    let mut tokens = tokens;
    hex_integers(sql, &mut tokens)?;
    Ok(tokens)
}

/// SQLite reads `0x41` as the INTEGER 65 (the 64 bits of up to 16 hex digits, so
/// `0xffffffffffffffff` is -1) and `X'41'` as a BLOB; sqlparser gives both as one token
/// kind, so the source text tells them apart and the integers become numbers here.
fn hex_integers(sql: &str, tokens: &mut [TokenWithSpan]) -> Result<(), SqlError> {
    let line_starts: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    for token in tokens {
        let Token::HexStringLiteral(digits) = &token.token else { continue };
        let start = token.span.start;
        let line_start = line_starts.get(start.line.saturating_sub(1) as usize).copied().unwrap_or(0);
        let text = &sql[line_start..];
        let offset = text.char_indices().nth(start.column.saturating_sub(1) as usize).map_or(text.len(), |(i, _)| i);
        if !text[offset..].starts_with("0x") && !text[offset..].starts_with("0X") {
            continue;
        }
        if digits.len() > 16 {
            return Err(SqlError::invalid(format!("hex literal too big: 0x{digits}")));
        }
        let bits = u64::from_str_radix(digits, 16)
            .map_err(|_| SqlError::invalid(format!("malformed hex literal 0x{digits}")))?;
        token.token = Token::Number((bits as i64).to_string(), false);
    }
    Ok(())
}

/// Whether the tokens have `EXCLUDE` right after a frame bound (`... CURRENT ROW EXCLUDE
/// TIES`, `... 1 PRECEDING EXCLUDE GROUP`).
fn has_frame_exclude(tokens: &[TokenWithSpan]) -> bool {
    let words = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_)));
    let mut previous_ends_bound = false;
    for t in words {
        let Token::Word(w) = &t.token else {
            previous_ends_bound = false;
            continue;
        };
        if previous_ends_bound && w.value.eq_ignore_ascii_case("exclude") {
            return true;
        }
        previous_ends_bound = matches!(w.keyword, Keyword::ROW | Keyword::PRECEDING | Keyword::FOLLOWING);
    }
    false
}

/// Numbers every `?`; returns the highest parameter number (the count SQLite reports).
fn number_parameters(tokens: &mut [TokenWithSpan]) -> usize {
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
    usize::try_from(highest).unwrap_or(usize::MAX)
}

/// One parenthesis (or `CASE … END`) level of [`nesting_bound`]'s scan.
#[derive(Default)]
struct Level {
    /// `UNION` / `EXCEPT` / `INTERSECT` so far: each nests the terms before it one deeper.
    set_ops: usize,
    /// Operator tokens since the last separator: a chain of them nests at most this deep.
    ops: usize,
    /// The deepest level closed inside the current segment.
    child: usize,
    /// The deepest segment of this level so far.
    deepest: usize,
}

impl Level {
    fn end_segment(&mut self) {
        self.deepest = self.deepest.max(self.ops + 1 + self.child);
        self.ops = 0;
        self.child = 0;
    }

    fn depth(mut self) -> usize {
        self.end_segment();
        self.set_ops + self.deepest
    }
}

/// An upper bound of the nesting of the trees the parser would build from `tokens`. Within
/// a parenthesis level, the expressions between separators (`,`, clause keywords, `WHEN`…)
/// are independent; a run of operators and operands nests at most one level per operator
/// (every operator token counts, keywords like `AND`, `NOT`, `IS` included), plus the
/// deepest parenthesised part inside it, plus one. One pass, no recursion.
pub(crate) fn nesting_bound(tokens: &[TokenWithSpan]) -> usize {
    let mut levels = vec![Level::default()];
    for token in tokens {
        match &token.token {
            Token::LParen | Token::LBracket | Token::LBrace => levels.push(Level::default()),
            Token::RParen | Token::RBracket | Token::RBrace => close(&mut levels),
            Token::Comma | Token::SemiColon => top(&mut levels).end_segment(),
            Token::Word(w) => match w.keyword {
                Keyword::CASE => levels.push(Level::default()),
                Keyword::END => close(&mut levels),
                Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT => {
                    let level = top(&mut levels);
                    level.end_segment();
                    level.set_ops += 1;
                }
                k if SEPARATOR_KEYWORDS.contains(&k) => top(&mut levels).end_segment(),
                k if OPERATOR_KEYWORDS.contains(&k) => top(&mut levels).ops += 1,
                _ => {}
            },
            t if is_operand(t) => {}
            _ => top(&mut levels).ops += 1,
        }
    }
    while levels.len() > 1 {
        close(&mut levels);
    }
    levels.pop().map_or(0, Level::depth)
}

fn top(levels: &mut [Level]) -> &mut Level {
    levels.last_mut().expect("the outermost level is never closed")
}

/// Ends the innermost level (an unmatched closer is left for the parser to report).
fn close(levels: &mut Vec<Level>) {
    if levels.len() > 1 {
        let depth = levels.pop().map_or(0, Level::depth);
        let parent = top(levels);
        // The segment's own `+ 1` counts the node (`Nested`, a call) the level becomes.
        parent.child = parent.child.max(depth);
    }
}

/// Tokens that are values or names, never operators.
fn is_operand(token: &Token) -> bool {
    matches!(
        token,
        Token::EOF
            | Token::Number(..)
            | Token::Char(_)
            | Token::Whitespace(_)
            | Token::Period
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::HexStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
    )
}

/// Keywords that start an independent expression (a clause, a `CASE` branch).
const SEPARATOR_KEYWORDS: &[Keyword] = &[
    Keyword::SELECT,
    Keyword::FROM,
    Keyword::WHERE,
    Keyword::GROUP,
    Keyword::HAVING,
    Keyword::ORDER,
    Keyword::BY,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::ON,
    Keyword::USING,
    Keyword::JOIN,
    Keyword::VALUES,
    Keyword::SET,
    Keyword::AS,
    Keyword::WHEN,
    Keyword::THEN,
    Keyword::ELSE,
    Keyword::RETURNING,
    Keyword::DEFAULT,
];

/// Keywords that combine expressions (each may nest one level).
const OPERATOR_KEYWORDS: &[Keyword] = &[
    Keyword::AND,
    Keyword::OR,
    Keyword::NOT,
    Keyword::IS,
    Keyword::IN,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::GLOB,
    Keyword::REGEXP,
    Keyword::MATCH,
    Keyword::BETWEEN,
    Keyword::ESCAPE,
    Keyword::COLLATE,
    Keyword::NOTNULL,
    Keyword::EXISTS,
    Keyword::DISTINCT,
    Keyword::SIMILAR,
    Keyword::DIV,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_parameters_continue_after_numbered_ones() {
        let parsed = parse_one("SELECT ?, ?5, ?, $2").unwrap();
        assert_eq!(parsed.statement.to_string(), "SELECT ?1, ?5, ?6, $2");
        assert_eq!(parsed.params, 6);
    }

    fn bound(sql: &str) -> usize {
        let tokens = Tokenizer::new(&DIALECT, sql).tokenize_with_location().unwrap();
        nesting_bound(&tokens)
    }

    #[test]
    fn the_nesting_bound_covers_chains_and_parentheses() {
        assert_eq!(bound("SELECT 1"), 1);
        assert_eq!(bound("SELECT 1 + 2 + 3"), 3);
        assert_eq!(bound("SELECT (((1)))"), 4);
        assert_eq!(bound("SELECT (1 + 2) * 3"), 4);
        // Independent expressions do not add up.
        assert_eq!(bound("SELECT a + b, c + d FROM t WHERE x = 1"), 2);
        assert_eq!(bound("SELECT x IN (1, 2, 3, 4, 5)"), 3);
        assert_eq!(bound("SELECT CASE WHEN a THEN b ELSE c + d END"), 3);
        assert_eq!(bound("SELECT 1 UNION SELECT 2 UNION SELECT 3"), 3);
        let chain = format!("SELECT {}", vec!["1"; 5000].join(" + "));
        assert_eq!(bound(&chain), 5000);
        let nested = format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300));
        assert_eq!(bound(&nested), 301);
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
