//! `SqlError`: everything a SQL statement can fail with.
//!
//! Messages are lower-case, name the table, column or function at fault, and for syntax
//! errors carry the line and column sqlparser reported, so a user can fix the statement
//! without reading our code. SQL outside the supported scope is [`SqlError::NotSupported`]:
//! we refuse rather than guess, because a wrong answer is worse than an error.

use crate::error::{ReadError, StorageError, WriteError};

/// A SQL statement was refused or failed; a refused write statement wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The text does not parse.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// What the parser expected or found.
        message: String,
        /// 1-based line of the error.
        line: u64,
        /// 1-based column of the error.
        column: u64,
    },
    /// Valid SQL, but outside what edgestore implements.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// No table (or system table) of that name.
    #[error("no such table: {0}")]
    UnknownTable(String),
    /// No column of that name in the tables in scope.
    #[error("no such column: {0}")]
    UnknownColumn(String),
    /// An unqualified column name that several tables in scope have.
    #[error("ambiguous column name: {0}")]
    AmbiguousColumn(String),
    /// No function of that name.
    #[error("no such function: {0}")]
    UnknownFunction(String),
    /// A function called with the wrong number of arguments.
    #[error("wrong number of arguments to function {function}()")]
    ArgumentCount {
        /// The function.
        function: String,
    },
    /// A `?N` / `$N` parameter without a bound value.
    #[error("parameter {0} is not bound ({1} values given)")]
    MissingParameter(usize, usize),
    /// The statement is well-formed but meaningless (e.g. an aggregate in `WHERE`).
    #[error("{0}")]
    Invalid(String),
    /// A local write made a `CHECK` constraint false; names the constraint, or its
    /// expression when it has no name (SQLite's wording).
    #[error("CHECK constraint failed: {0}")]
    CheckFailed(String),
    /// Integer arithmetic in `SUM` or `abs` overflowed 64 bits.
    #[error("integer overflow")]
    IntegerOverflow,
    /// An expression (or query) nests deeper than [`super::EXPR_DEPTH_MAX`].
    #[error("expression nested too deeply (limit {limit})")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The `WITH` clauses of a statement plan more CTE text than
    /// [`super::CTE_EXPANSION_BYTES_MAX`] (each reference plans its CTE's query again).
    #[error(
        "common table expressions expand to more than {} of SQL (each reference plans its CTE again)",
        mib(*limit_bytes)
    )]
    CteExpansion {
        /// The limit.
        limit_bytes: usize,
    },
    /// The statement's operators needed more memory than its budget.
    #[error("query exceeded its memory budget ({})", mib(*limit_bytes))]
    MemoryBudget {
        /// The statement's budget.
        limit_bytes: usize,
    },
    /// The node's memory pool for concurrent statements is exhausted.
    #[error("query exceeded the node's memory budget for running statements ({})", mib(*limit_bytes))]
    NodeMemoryBudget {
        /// The node-wide pool's size.
        limit_bytes: usize,
    },
    /// The statement was interrupted (time limit, client gone, shutdown).
    #[error("{0}")]
    Interrupted(super::InterruptCause),
    /// `'now'` (or a date function without a time value) in a statement that has no
    /// statement time: a read-only [`super::query`], a `DEFAULT` (evaluated once, at
    /// `CREATE TABLE`) or a `CHECK`. The node never reads its clock for SQL.
    #[error(
        "{function}() needs the statement time for 'now', and this statement has none \
         (sql::query and DEFAULT/CHECK expressions run without one): run it with sql::execute, \
         or pass the time as a parameter"
    )]
    NoStatementTime {
        /// The date function.
        function: &'static str,
    },
    /// The `'localtime'` or `'utc'` modifier: they need time zone rules, and an edgestore
    /// node has no time zone database; every time in SQL is UTC.
    #[error(
        "the '{modifier}' modifier is not supported: an edgestore node has no time zone database, all times are UTC"
    )]
    NoTimeZone {
        /// The modifier, as SQLite spells it.
        modifier: String,
    },
    /// A `time_bucket` width that is not a positive fixed duration.
    #[error(
        "time_bucket width {width:?} is not a positive number of milliseconds or 'N unit' \
         (ms, seconds, minutes, hours, days, weeks; months and years have no fixed width)"
    )]
    BucketWidth {
        /// The width given, as text.
        width: String,
    },
    /// The number of parameter values differs from the statement's placeholders.
    #[error("wrong number of parameters: the statement takes {expected}, {got} given{}", unbound(*expected, *got))]
    ParamCount {
        /// Parameters the statement reads (its highest `?N`).
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The replica refused the statement's write batch.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Reading the snapshot failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The replica's owner thread has stopped.
    #[error(transparent)]
    Stopped(#[from] crate::handle::Stopped),
}

impl SqlError {
    /// Builds [`SqlError::NotSupported`].
    pub(crate) fn unsupported(what: impl Into<String>) -> SqlError {
        SqlError::NotSupported(what.into())
    }

    /// Builds [`SqlError::Invalid`].
    pub(crate) fn invalid(what: impl Into<String>) -> SqlError {
        SqlError::Invalid(what.into())
    }

    /// Converts a parser error, extracting the position sqlparser puts in its message
    /// (`... at Line: 3, Column: 7`). Errors at the end of input carry no position, so
    /// they point just past the last character of `sql`.
    pub(crate) fn from_parser(error: sqlparser::parser::ParserError, sql: &str) -> SqlError {
        let text = match error {
            sqlparser::parser::ParserError::TokenizerError(m) | sqlparser::parser::ParserError::ParserError(m) => m,
            sqlparser::parser::ParserError::RecursionLimitExceeded => {
                return SqlError::TooDeep { limit: super::EXPR_DEPTH_MAX }
            }
        };
        if let Some((message, line, column)) = split_position(&text) {
            return SqlError::Syntax { message, line, column };
        }
        let line = sql.lines().count().max(1) as u64;
        let column = sql.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
        SqlError::Syntax { message: text, line, column }
    }
}

/// Which parameter is missing, when too few are given.
fn unbound(expected: usize, got: usize) -> String {
    if got < expected {
        format!(" (parameter {} is not bound)", got + 1)
    } else {
        String::new()
    }
}

/// A byte count in MiB for messages (`256 MiB`, `0.5 MiB`).
fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

fn split_position(text: &str) -> Option<(String, u64, u64)> {
    let at = text.rfind(" at Line: ")?;
    let rest = &text[at + " at Line: ".len()..];
    let (line, column) = rest.split_once(", Column: ")?;
    let column: String = column.chars().take_while(char::is_ascii_digit).collect();
    Some((text[..at].to_string(), line.trim().parse().ok()?, column.parse().ok()?))
}
