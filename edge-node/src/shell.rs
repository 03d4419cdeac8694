//! `edge-node shell`: the field engineer's SQL shell on a node's data directory.
//!
//! Statements end with `;` and may span lines; dot-commands (`.help`) take one line.
//! Interactive sessions get line editing, a history file and completion of keywords,
//! tables and columns (rustyline). With `-c` or a non-terminal standard input the shell
//! runs the statements as a script and stops at the first error with exit code 1.
//!
//! The shell talks to the node running on the data directory through its local API
//! ([`Backend::Remote`]); with no node running it opens the data directory itself
//! ([`Backend::Local`]; redb allows one process per file, so the two never mix). Peer
//! commands (`.peers`, `.sync`) need a running node.

use std::borrow::Cow;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use edgestore::sql::{self, ExecOptions, Interrupt, InterruptCause, MemoryPool};
use edgestore::{Replica, Value};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Editor, Helper, Highlighter, Hinter, Validator};
use serde_json::{json, Value as Json};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::client::Client;
use crate::json::{as_text as text, from_json, to_json};
use crate::render::{self, Mode};

const HELP: &str = "\
Statements end with ';' and may span several lines. Dot-commands:
  .help                 this text
  .tables               list tables
  .schema [TABLE]       CREATE statements of all tables (or one) and their indexes
  .mode table|csv|json|line
                        how results are printed (default: table)
  .timer on|off         print how long each statement took
  .timeout MS           stop statements that run longer than MS milliseconds (0: no limit)
  .conflicts [TABLE]    concurrent values that conflict, with the node that wrote each,
                        rows sharing a value of a UNIQUE column (kind unique), and
                        append-only rows sharing a deduplication key (kind duplicate)
  .history TABLE KEY... who changed the row, when, and what, in causal order
                        (KEY: the primary key's values, e.g. .history sensors 10)
  .digest               the state digest (equal on two nodes iff they hold the same data)
  .status               node id, changes held, pending changes, MQTT ingest
  .peers                peers: connection state, lag, last contact, changes exchanged
  .sync                 this node's version vector, each peer's lag, the horizon
  .check                verify the store's integrity
  .storage              where the store's bytes and memory go, per redb table and user table
  .quit                 leave the shell (also Ctrl-D)
.peers and .sync need a running node (`edge-node run`).
";

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "JOIN",
    "LEFT",
    "INNER",
    "CROSS",
    "ON",
    "GROUP",
    "BY",
    "HAVING",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "DISTINCT",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "CREATE",
    "TABLE",
    "INDEX",
    "DROP",
    "PRIMARY",
    "KEY",
    "NOT",
    "NULL",
    "DEFAULT",
    "AND",
    "OR",
    "IN",
    "EXISTS",
    "BETWEEN",
    "LIKE",
    "IS",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "AS",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "EXPLAIN",
    "INTEGER",
    "REAL",
    "TEXT",
    "BOOLEAN",
    "BLOB",
    "TIMESTAMP",
    "COUNTER",
    "CONFLICT",
    "DO",
    "NOTHING",
    "IF",
];

/// Whether to keep reading after a statement.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next input.
    Continue,
    /// `.quit`.
    Quit,
}

/// Where statements go: a running node's API, or a data directory opened here.
#[derive(Debug)]
pub enum Backend {
    /// The node running on the data directory (or at `--url`).
    Remote(Client),
    /// The data directory itself, with no node running.
    Local(Box<Replica>),
}

/// A statement's answer: columns and rows for a query, rows affected for a write.
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    rows_affected: u64,
}

/// How the shell runs statements: its time limit and memory budget.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `.timeout`: none unless set.
    pub timeout_ms: Option<u64>,
    /// `sql.statement_memory_mib` of the config, for statements run here.
    pub statement_memory_bytes: usize,
}

impl Backend {
    fn execute(&mut self, text: &str, params: &[Value], limits: Limits) -> Result<Answer> {
        match self {
            Backend::Local(replica) => run_local(replica, text, params, limits),
            Backend::Remote(client) => {
                let params: Vec<Json> = params.iter().map(to_json).collect();
                let mut request = json!({ "sql": text, "params": params });
                if let Some(ms) = limits.timeout_ms {
                    request["timeout_ms"] = json!(ms);
                }
                decode_answer(&client.post("/v1/sql", &request)?)
            }
        }
    }

    fn node_id(&self) -> String {
        match self {
            Backend::Local(replica) => replica.node_id().to_string(),
            Backend::Remote(client) => client
                .get("/v1/status")
                .ok()
                .and_then(|s| s["node_id"].as_str().map(str::to_string))
                .unwrap_or_else(|| client.url()),
        }
    }

    fn remote(&self, command: &str) -> Result<&Client> {
        match self {
            Backend::Remote(client) => Ok(client),
            Backend::Local(_) => bail!(".{command} needs a running node (start it with `edge-node run`)"),
        }
    }
}

/// Runs a statement on the data directory, on a thread of its own with the stack the SQL
/// limits are measured for ([`sql::STATEMENT_STACK_BYTES`]); with a time limit, a timer
/// thread interrupts it when the limit passes.
fn run_local(replica: &mut Replica, text: &str, params: &[Value], limits: Limits) -> Result<Answer> {
    let interrupt = Interrupt::new();
    let options = ExecOptions {
        statement_memory_bytes_max: limits.statement_memory_bytes,
        pool: MemoryPool::unbounded(),
        interrupt: interrupt.clone(),
    };
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        if let Some(limit_ms) = limits.timeout_ms {
            scope.spawn(move || {
                let wait = std::time::Duration::from_millis(limit_ms);
                if finished.recv_timeout(wait) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    interrupt.interrupt(InterruptCause::TimeLimit { limit_ms });
                }
            });
        }
        let worker = std::thread::Builder::new()
            .name("statement".into())
            .stack_size(sql::STATEMENT_STACK_BYTES)
            .spawn_scoped(scope, || -> Result<Answer> {
                let result = sql::prepare(text)?.execute_with(replica, params, crate::clock::now_ms(), &options)?;
                let (columns, rows_affected) = (result.columns.clone(), result.rows_affected);
                Ok(Answer { columns, rows: result.collect_rows()?, rows_affected })
            });
        let answer = match worker {
            Ok(worker) => worker.join().unwrap_or_else(|_| Err(anyhow!("the statement's thread panicked"))),
            Err(e) => Err(anyhow!("starting the statement's thread: {e}")),
        };
        // Wakes the timer thread, which the scope then joins.
        drop(done);
        answer
    })
}

fn decode_answer(answer: &Json) -> Result<Answer> {
    let columns = answer["columns"]
        .as_array()
        .ok_or_else(|| anyhow!("the node's answer has no columns"))?
        .iter()
        .map(|c| c.as_str().map(str::to_string).ok_or_else(|| anyhow!("a column name is not text")))
        .collect::<Result<Vec<_>>>()?;
    let rows = answer["rows"]
        .as_array()
        .ok_or_else(|| anyhow!("the node's answer has no rows"))?
        .iter()
        .map(|row| {
            let cells = row.as_array().ok_or_else(|| anyhow!("a row is not an array"))?;
            Ok(cells.iter().map(from_json).collect::<Result<Vec<Value>, _>>()?)
        })
        .collect::<Result<Vec<Vec<Value>>>>()?;
    Ok(Answer { columns, rows, rows_affected: answer["rows_affected"].as_u64().unwrap_or(0) })
}

/// The shell's state: where statements go, output mode and timer.
pub struct Shell {
    backend: Backend,
    mode: Mode,
    timer: bool,
    limits: Limits,
}

impl Shell {
    /// A shell on a backend; statements run here get `statement_memory_bytes` each.
    pub fn new(backend: Backend, statement_memory_bytes: usize) -> Shell {
        Shell { backend, mode: Mode::Table, timer: false, limits: Limits { timeout_ms: None, statement_memory_bytes } }
    }

    /// Runs one complete input: a dot-command or one SQL statement. Output goes to `out`.
    pub fn run(&mut self, input: &str, out: &mut dyn Write) -> Result<Flow> {
        let input = input.trim();
        let started = Instant::now();
        let flow = if let Some(command) = input.strip_prefix('.') {
            self.dot_command(command, out)?
        } else if !is_blank(input) {
            self.statement(input, out)?;
            Flow::Continue
        } else {
            Flow::Continue
        };
        if self.timer {
            writeln!(out, "Run Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3)?;
        }
        Ok(flow)
    }

    fn statement(&mut self, sql: &str, out: &mut dyn Write) -> Result<()> {
        let answer = self.backend.execute(sql, &[], self.limits)?;
        if answer.columns.is_empty() {
            if self.mode == Mode::Table {
                writeln!(out, "({} row{} affected)", answer.rows_affected, plural(answer.rows_affected))?;
            }
            return Ok(());
        }
        self.print(&answer.columns, &answer.rows, out)
    }

    fn print(&self, columns: &[String], rows: &[Vec<Value>], out: &mut dyn Write) -> Result<()> {
        write!(out, "{}", render::render(self.mode, columns, rows)?)?;
        if self.mode == Mode::Table {
            writeln!(out, "({} row{})", rows.len(), plural(rows.len() as u64))?;
        }
        Ok(())
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        Ok(self.backend.execute(sql, params, self.limits)?.rows)
    }

    fn dot_command(&mut self, command: &str, out: &mut dyn Write) -> Result<Flow> {
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or("");
        let argument = words.next();
        match (name, argument) {
            ("help", _) => write!(out, "{HELP}")?,
            ("quit" | "exit", _) => return Ok(Flow::Quit),
            ("tables", _) => {
                for row in self.query("SELECT name FROM edgestore_tables ORDER BY name", &[])? {
                    writeln!(out, "{}", render::cell(&row[0]))?;
                }
            }
            ("schema", table) => self.schema(table, out)?,
            ("mode", Some(mode)) => {
                self.mode =
                    Mode::parse(mode).with_context(|| format!("unknown mode {mode:?}: table, csv, json, line"))?
            }
            ("timer", Some("on")) => self.timer = true,
            ("timer", Some("off")) => self.timer = false,
            ("timeout", Some(ms)) => {
                let ms: u64 =
                    ms.parse().with_context(|| format!(".timeout {ms:?}: give milliseconds, 0 for no limit"))?;
                self.limits.timeout_ms = (ms > 0).then_some(ms);
            }
            ("conflicts", table) => {
                let sql =
                    "SELECT kind, table_name, primary_key, column_name, value, node, is_winner FROM edgestore_conflicts \
                           WHERE ? IS NULL OR table_name = ? ORDER BY kind, table_name, column_name, primary_key, is_winner";
                let filter = table.map_or(Value::Null, |t| Value::from(t.to_ascii_lowercase()));
                let answer = self.backend.execute(sql, &[filter.clone(), filter], self.limits)?;
                self.print(&answer.columns, &answer.rows, out)?;
            }
            ("digest", _) => writeln!(out, "{}", self.digest()?)?,
            ("status", _) => self.status(out)?,
            ("check", _) => {
                let problems = self.check()?;
                if problems.is_empty() {
                    writeln!(out, "ok")?;
                } else {
                    for problem in &problems {
                        writeln!(out, "{problem}")?;
                    }
                    bail!("{} integrity problem(s)", problems.len());
                }
            }
            ("storage", _) => {
                let breakdown = match &mut self.backend {
                    Backend::Local(replica) => crate::storage::of_replica(replica)?,
                    Backend::Remote(client) => client.get("/v1/storage")?,
                };
                write!(out, "{}", crate::storage::render(&breakdown))?;
            }
            ("peers", _) => self.peers(out)?,
            ("sync", _) => self.sync(out)?,
            ("history", Some(table)) => {
                let key: Vec<&str> = words.collect();
                if key.is_empty() {
                    bail!("usage: .history TABLE KEY... (the primary key's values)");
                }
                self.history(table, &key, out)?;
            }
            _ => bail!("unknown or incomplete command .{command}; try .help"),
        }
        Ok(Flow::Continue)
    }

    fn schema(&mut self, table: Option<&str>, out: &mut dyn Write) -> Result<()> {
        let filter = table.map_or(Value::Null, |t| Value::from(t.to_ascii_lowercase()));
        let params = [filter.clone(), filter];
        let tables = self.query(
            "SELECT sql, lost_alters FROM edgestore_tables WHERE ? IS NULL OR name = ? ORDER BY name",
            &params,
        )?;
        if tables.is_empty() && table.is_some() {
            bail!("no such table: {}", table.unwrap_or_default());
        }
        let indexes =
            self.query("SELECT sql FROM edgestore_indexes WHERE ? IS NULL OR table_name = ? ORDER BY name", &params)?;
        for row in tables.iter().chain(&indexes) {
            writeln!(out, "{};", render::cell(&row[0]))?;
            // `ALTER`s that lost to concurrent ones, as comments under their table.
            if let Some(Value::Text(lost)) = row.get(1) {
                for line in lost.lines() {
                    writeln!(out, "-- lost: {line}")?;
                }
            }
        }
        Ok(())
    }

    fn digest(&mut self) -> Result<String> {
        match &mut self.backend {
            Backend::Local(replica) => Ok(replica.state_digest()?.to_string()),
            Backend::Remote(client) => Ok(text(&client.get("/v1/status")?["digest"])),
        }
    }

    fn status(&mut self, out: &mut dyn Write) -> Result<()> {
        match &mut self.backend {
            Backend::Local(replica) => {
                let vector = replica.version_vector();
                writeln!(out, "node id:  {} (data directory opened directly)", replica.node_id())?;
                writeln!(out, "changes:  {} from {} node(s)", vector.total_changes(), vector.len())?;
                writeln!(out, "pending:  {}", replica.pending_changes()?)?;
                let tables = crate::retention::to_json(&replica.append_tables_status()?);
                for table in tables.as_array().into_iter().flatten() {
                    writeln!(out, "append:   {}", crate::retention::line(table))?;
                }
            }
            Backend::Remote(client) => {
                let s = client.get("/v1/status")?;
                writeln!(out, "node id:  {} (running, up {} s, {})", text(&s["node_id"]), s["uptime_s"], client.url())?;
                writeln!(out, "changes:  {} from {} node(s)", s["changes"], s["origins"])?;
                writeln!(out, "pending:  {}", s["pending_changes"])?;
                writeln!(out, "peers:    {} connected", s["peers_connected"])?;
                writeln!(out, "health:   {}", crate::commands::health_line(&s["health"]))?;
                if !s["mqtt"].is_null() {
                    writeln!(out, "mqtt:     {}", crate::commands::mqtt_line(&s["mqtt"]))?;
                }
                for table in s["append_tables"].as_array().into_iter().flatten() {
                    writeln!(out, "append:   {}", crate::retention::line(table))?;
                }
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<Vec<String>> {
        match &mut self.backend {
            Backend::Local(replica) => Ok(replica.check_integrity()?.iter().map(ToString::to_string).collect()),
            Backend::Remote(client) => {
                let answer = client.post("/v1/check", &json!({}))?;
                Ok(answer["problems"].as_array().into_iter().flatten().map(text).collect())
            }
        }
    }

    fn peers(&mut self, out: &mut dyn Write) -> Result<()> {
        let answer = self.backend.remote("peers")?.get("/v1/peers")?;
        let columns: Vec<String> = [
            "node_id",
            "addr",
            "connected",
            "lag_changes",
            "last_contact_ms_ago",
            "changes_sent",
            "changes_received",
            "last_error",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<Value>> = answer["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|peer| {
                let cell = |column: &str| match column {
                    "last_error" => crate::peers::current_error(peer).map_or(Value::Null, Value::from),
                    _ => from_json(&peer[column]).unwrap_or(Value::Null),
                };
                columns.iter().map(|c| cell(c)).collect()
            })
            .collect();
        self.print(&columns, &rows, out)
    }

    fn sync(&mut self, out: &mut dyn Write) -> Result<()> {
        let client = self.backend.remote("sync")?;
        let status = client.get("/v1/status")?;
        let peers = client.get("/v1/peers")?;
        writeln!(out, "this node holds {} changes from {} node(s)", status["changes"], status["origins"])?;
        writeln!(out, "pending (waiting for dependencies): {}", status["pending_changes"])?;
        for peer in peers["peers"].as_array().into_iter().flatten() {
            let state = if peer["connected"].as_bool() == Some(true) { "connected" } else { "down" };
            let lag = peer["lag_changes"].as_u64().unwrap_or(0);
            let summary = if lag == 0 { "in sync".to_string() } else { format!("{lag} change(s) not yet sent") };
            writeln!(out, "{}  {state:<9}  {summary}", text(&peer["node_id"]))?;
        }
        if !status["horizon"].is_null() {
            write!(out, "{}", crate::horizon::render(&status["horizon"]))?;
        }
        Ok(())
    }

    fn history(&mut self, table: &str, key: &[&str], out: &mut dyn Write) -> Result<()> {
        let key: Vec<Value> = key.iter().map(|part| key_value(part)).collect();
        let history = match &mut self.backend {
            Backend::Local(replica) => crate::history::row_history(&replica.snapshot()?, table, &key)?,
            Backend::Remote(client) => {
                let key = serde_json::to_string(&key.iter().map(to_json).collect::<Vec<_>>())?;
                let path = format!("/v1/history?table={}&key={}", percent_encode(table), percent_encode(&key));
                client.get(&path)?
            }
        };
        let (columns, rows) = crate::history::table(&history)?;
        self.print(&columns, &rows, out)
    }

    /// Names for completion: keywords, tables and their columns.
    fn completion_words(&mut self) -> Vec<String> {
        let mut words: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
        let sql = "SELECT table_name, name FROM edgestore_columns";
        if let Ok(rows) = self.query(sql, &[]) {
            for row in rows {
                words.extend(row.iter().map(render::cell));
            }
        }
        words.sort();
        words.dedup();
        words
    }
}

/// A primary-key value typed in the shell: an integer if it parses as one, else text
/// (quotes optional).
fn key_value(part: &str) -> Value {
    match part.parse::<i64>() {
        Ok(n) => Value::Integer(n),
        Err(_) => Value::Text(part.trim_matches('\'').to_string()),
    }
}

/// What a query-string component keeps as it is: RFC 3986's unreserved characters.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a query-string component.
fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, QUERY_COMPONENT).to_string()
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Splits complete statements off `buffer`: the text up to each `;` that sqlparser's
/// tokenizer (SQLite dialect, the one the engine parses with) reads as a semicolon, so a
/// `;` or a quote inside a string, a quoted name or a comment is just text, as in SQLite.
/// A statement of nothing but comments is dropped. What is left (an unfinished statement,
/// or an unterminated string or comment still being typed) stays in the buffer.
pub fn take_statements(buffer: &mut String) -> Vec<String> {
    let mut tokens = Vec::new();
    // On an error (an unterminated string or comment) the tokens before it are complete.
    let _ = Tokenizer::new(&SQLiteDialect {}, buffer).tokenize_with_location_into_buf(&mut tokens);
    let mut offsets = Offsets::new(buffer);
    let (mut statements, mut start, mut has_content) = (Vec::new(), 0, false);
    for token in &tokens {
        match token.token {
            Token::SemiColon => {
                let end = offsets.at(token.span.end);
                if has_content {
                    statements.push(buffer[start..end].trim().to_string());
                }
                (start, has_content) = (end, false);
            }
            Token::Whitespace(_) => {}
            _ => has_content = true,
        }
    }
    *buffer = buffer[start..].trim_start().to_string();
    statements
}

/// Whether `sql` holds nothing but whitespace, comments and semicolons (as the tokenizer
/// reads it; text that does not tokenize is not blank: running it reports the error).
pub fn is_blank(sql: &str) -> bool {
    Tokenizer::new(&SQLiteDialect {}, sql)
        .tokenize()
        .is_ok_and(|tokens| tokens.iter().all(|t| matches!(t, Token::Whitespace(_) | Token::SemiColon)))
}

/// Byte offsets of the tokenizer's (line, column) locations, for locations in increasing
/// order: one pass over the text however many statements it holds.
struct Offsets<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    len: usize,
    line: u64,
    column: u64,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Offsets<'a> {
        Offsets { chars: text.char_indices().peekable(), len: text.len(), line: 1, column: 1 }
    }

    /// The byte offset of `at` (1-based line and column, in characters).
    fn at(&mut self, at: Location) -> usize {
        while (self.line, self.column) < (at.line, at.column) {
            match self.chars.next() {
                Some((_, '\n')) => (self.line, self.column) = (self.line + 1, 1),
                Some(_) => self.column += 1,
                None => return self.len,
            }
        }
        self.chars.peek().map_or(self.len, |(i, _)| *i)
    }
}

/// Runs a script: every statement and dot-command in `input`, stopping at the first error.
pub fn run_script(shell: &mut Shell, input: impl BufRead, out: &mut dyn Write) -> Result<()> {
    let mut buffer = String::new();
    for (number, line) in input.lines().enumerate() {
        let line = line.context("reading standard input")?;
        if buffer.trim().is_empty() && line.trim_start().starts_with('.') {
            let flow = shell.run(&line, out).with_context(|| format!("line {}", number + 1))?;
            if flow == Flow::Quit {
                return Ok(());
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        for statement in take_statements(&mut buffer) {
            shell.run(&statement, out).with_context(|| format!("statement ending on line {}", number + 1))?;
        }
    }
    if !is_blank(&buffer) {
        shell.run(&buffer, out).context("last statement")?;
    }
    Ok(())
}

#[derive(Helper, Hinter, Highlighter, Validator)]
struct ShellHelper {
    words: Vec<String>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.is_empty() {
            return Ok((start, Vec::new()));
        }
        let upper = prefix.chars().next().is_some_and(char::is_uppercase);
        let candidates = self
            .words
            .iter()
            .filter(|w| w.to_ascii_lowercase().starts_with(&prefix.to_ascii_lowercase()))
            .map(|w| {
                let shown: Cow<str> = if upper { Cow::Borrowed(w) } else { Cow::Owned(w.to_ascii_lowercase()) };
                Pair { display: shown.to_string(), replacement: shown.to_string() }
            })
            .collect();
        Ok((start, candidates))
    }
}

/// The interactive loop.
pub fn interactive(shell: &mut Shell, history: &Path) -> Result<()> {
    let mut editor: Editor<ShellHelper, FileHistory> = Editor::new().context("starting the line editor")?;
    editor.set_helper(Some(ShellHelper { words: shell.completion_words() }));
    let _ = editor.load_history(history);
    let place = match &shell.backend {
        Backend::Remote(client) => format!("running node at {}", client.url()),
        Backend::Local(_) => "data directory (no node running)".to_string(),
    };
    println!("edge-node shell on node {} ({place}).", shell.backend.node_id());
    println!("Enter \".help\" for help; statements end with ';'.");
    let mut buffer = String::new();
    let mut stdout = std::io::stdout();
    loop {
        let prompt = if buffer.is_empty() { "edge> " } else { "  ...> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        };
        let inputs = if buffer.is_empty() && line.trim_start().starts_with('.') {
            vec![line.clone()]
        } else {
            buffer.push_str(&line);
            buffer.push('\n');
            take_statements(&mut buffer)
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        for input in inputs {
            match shell.run(&input, &mut stdout) {
                Ok(Flow::Quit) => {
                    let _ = editor.save_history(history);
                    return Ok(());
                }
                Ok(Flow::Continue) => {}
                Err(e) => eprintln!("Error: {e:#}"),
            }
        }
        if let Some(helper) = editor.helper_mut() {
            helper.words = shell.completion_words();
        }
        stdout.flush()?;
    }
    let _ = editor.save_history(history);
    Ok(())
}

/// Entry point of `edge-node shell`.
pub fn main(backend: Backend, command: Option<String>, history: &Path, statement_memory_bytes: usize) -> Result<()> {
    let mut shell = Shell::new(backend, statement_memory_bytes);
    let mut stdout = std::io::stdout();
    if let Some(command) = command {
        return run_script(&mut shell, command.as_bytes(), &mut stdout);
    }
    if !std::io::stdin().is_terminal() {
        return run_script(&mut shell, std::io::stdin().lock(), &mut stdout);
    }
    interactive(&mut shell, history)
}

#[cfg(test)]
mod tests {
    use super::{is_blank, percent_encode, take_statements};

    #[test]
    fn query_components_keep_only_unreserved_characters() {
        assert_eq!(percent_encode("a-b_c.d~E9"), "a-b_c.d~E9");
        assert_eq!(percent_encode(r#"[1,"x y"]"#), "%5B1%2C%22x%20y%22%5D");
        assert_eq!(percent_encode("é&="), "%C3%A9%26%3D");
    }

    /// Splits `input` and returns the statements and what stays in the buffer.
    fn split(input: &str) -> (Vec<String>, String) {
        let mut buffer = input.to_string();
        let statements = take_statements(&mut buffer);
        (statements, buffer)
    }

    #[test]
    fn statements_split_on_semicolons_outside_quotes() {
        let (statements, rest) = split("SELECT 'a;b'; INSERT INTO t VALUES (1);\nSELECT");
        assert_eq!(statements, vec!["SELECT 'a;b';", "INSERT INTO t VALUES (1);"]);
        assert_eq!(rest, "SELECT");
    }

    #[test]
    fn quote_in_a_line_comment_does_not_swallow_the_next_statement() {
        let (statements, rest) = split("SELECT 1; -- don't\nSELECT 2;\n");
        assert_eq!(statements, vec!["SELECT 1;", "-- don't\nSELECT 2;"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn comments_quotes_and_names_hold_semicolons_as_text() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("/* a; 'b */ SELECT 1;", &["/* a; 'b */ SELECT 1;"], ""),
            ("SELECT 'it''s; fine';", &["SELECT 'it''s; fine';"], ""),
            ("SELECT \"a;b\" FROM t;", &["SELECT \"a;b\" FROM t;"], ""),
            ("SELECT 'unfinished; still", &[], "SELECT 'unfinished; still"),
            ("SELECT 1; /* open; comment", &["SELECT 1;"], "/* open; comment"),
            (";;  -- only a comment\n;", &[], ""),
            ("SELECT 'é;'; SELECT 2;", &["SELECT 'é;';", "SELECT 2;"], ""),
        ];
        for (input, statements, rest) in cases {
            assert_eq!(split(input), (statements.iter().map(|s| s.to_string()).collect(), rest.to_string()), "{input}");
        }
    }

    #[test]
    fn blank_means_only_comments_and_semicolons() {
        assert!(is_blank(" -- note\n /* c */ ;"));
        assert!(!is_blank("-- note\nSELECT 1"));
        assert!(!is_blank("SELECT 'open"), "text that does not tokenize runs and reports its error");
    }
}
