//! `edge-node shell`: the field engineer's SQL shell on a node's data directory.
//!
//! Statements end with `;` and may span lines; dot-commands (`.help`) take one line.
//! Interactive sessions get line editing, a history file and completion of keywords,
//! tables and columns (rustyline). With `-c` or a non-terminal standard input the shell
//! runs the statements as a script and stops at the first error with exit code 1.
//!
//! This version opens the data directory directly (no node may be running on it: redb
//! allows one process per file). Talking to a running node through its local API comes
//! with the daemon.

use std::borrow::Cow;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use edgestore::{sql, Replica, Value};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Editor, Helper, Highlighter, Hinter, Validator};

use crate::render::{self, Mode};

const HELP: &str = "\
Statements end with ';' and may span several lines. Dot-commands:
  .help                 this text
  .tables               list tables
  .schema [TABLE]       CREATE statements of all tables (or one) and their indexes
  .mode table|csv|json|line
                        how results are printed (default: table)
  .timer on|off         print how long each statement took
  .conflicts [TABLE]    concurrent values that conflict, with the node that wrote each
  .digest               the state digest (equal on two nodes iff they hold the same data)
  .status               node id, changes held, pending changes
  .check                verify the store's integrity
  .quit                 leave the shell (also Ctrl-D)
Peer commands (.peers, .sync, .history) need the node daemon, which is not built yet.
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

/// The shell's state: the store, output mode and timer.
pub struct Shell {
    replica: Replica,
    mode: Mode,
    timer: bool,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Shell {
    /// A shell on an open replica.
    pub fn new(replica: Replica) -> Shell {
        Shell { replica, mode: Mode::Table, timer: false }
    }

    /// Runs one complete input: a dot-command or one SQL statement. Output goes to `out`.
    pub fn run(&mut self, input: &str, out: &mut dyn Write) -> Result<Flow> {
        let input = input.trim();
        let started = Instant::now();
        let flow = if let Some(command) = input.strip_prefix('.') {
            self.dot_command(command, out)?
        } else if !input.trim_end_matches(';').trim().is_empty() {
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
        let result = sql::execute(&mut self.replica, sql, &[], now_ms())?;
        if result.columns.is_empty() {
            if self.mode == Mode::Table {
                writeln!(out, "({} row{} affected)", result.rows_affected, plural(result.rows_affected))?;
            }
            return Ok(());
        }
        let columns = result.columns.clone();
        let rows = result.collect_rows()?;
        write!(out, "{}", render::render(self.mode, &columns, &rows))?;
        if self.mode == Mode::Table {
            writeln!(out, "({} row{})", rows.len(), plural(rows.len() as u64))?;
        }
        Ok(())
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        Ok(sql::execute(&mut self.replica, sql, params, now_ms())?.collect_rows()?)
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
            ("conflicts", table) => {
                let sql =
                    "SELECT table_name, primary_key, column_name, value, node, is_winner FROM edgestore_conflicts \
                           WHERE ? IS NULL OR table_name = ? ORDER BY table_name, primary_key, column_name, is_winner";
                let filter = table.map_or(Value::Null, |t| Value::from(t.to_ascii_lowercase()));
                let result = sql::execute(&mut self.replica, sql, &[filter.clone(), filter], now_ms())?;
                let columns = result.columns.clone();
                write!(out, "{}", render::render(self.mode, &columns, &result.collect_rows()?))?;
            }
            ("digest", _) => writeln!(out, "{}", self.replica.state_digest()?)?,
            ("status", _) => {
                let vector = self.replica.version_vector();
                writeln!(out, "node id:  {}", self.replica.node_id())?;
                writeln!(out, "changes:  {} from {} node(s)", vector.total_changes(), vector.len())?;
                writeln!(out, "pending:  {}", self.replica.pending_changes()?)?;
            }
            ("check", _) => {
                let problems = self.replica.check_integrity()?;
                if problems.is_empty() {
                    writeln!(out, "ok")?;
                } else {
                    for problem in &problems {
                        writeln!(out, "{problem}")?;
                    }
                    bail!("{} integrity problem(s)", problems.len());
                }
            }
            ("peers" | "sync" | "history", _) => bail!(".{name} needs the node daemon, which is not built yet"),
            _ => bail!("unknown or incomplete command .{command}; try .help"),
        }
        Ok(Flow::Continue)
    }

    fn schema(&mut self, table: Option<&str>, out: &mut dyn Write) -> Result<()> {
        let filter = table.map_or(Value::Null, |t| Value::from(t.to_ascii_lowercase()));
        let params = [filter.clone(), filter];
        let tables =
            self.query("SELECT sql FROM edgestore_tables WHERE ? IS NULL OR name = ? ORDER BY name", &params)?;
        if tables.is_empty() && table.is_some() {
            bail!("no such table: {}", table.unwrap_or_default());
        }
        let indexes =
            self.query("SELECT sql FROM edgestore_indexes WHERE ? IS NULL OR table_name = ? ORDER BY name", &params)?;
        for row in tables.iter().chain(&indexes) {
            writeln!(out, "{};", render::cell(&row[0]))?;
        }
        Ok(())
    }

    /// Names for completion: keywords, tables and their columns.
    fn completion_words(&mut self) -> Vec<String> {
        let mut words: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
        let sql = "SELECT table_name, name FROM edgestore_columns";
        if let Ok(rows) = sql::execute(&mut self.replica, sql, &[], 0).and_then(|r| r.collect_rows()) {
            for row in rows {
                words.extend(row.iter().map(render::cell));
            }
        }
        words.sort();
        words.dedup();
        words
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Splits complete statements off `buffer`: text up to each `;` outside quotes. What is
/// left (an unfinished statement) stays in the buffer.
pub fn take_statements(buffer: &mut String) -> Vec<String> {
    let mut statements = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in buffer.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                statements.push(buffer[start..=i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    *buffer = buffer[start..].trim_start().to_string();
    statements.into_iter().filter(|s| s != ";").collect()
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
    if !buffer.trim().is_empty() {
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
    println!("edge-node shell on node {}. Enter \".help\" for help; statements end with ';'.", shell.replica.node_id());
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
pub fn main(replica: Replica, command: Option<String>, history: &Path) -> Result<()> {
    let mut shell = Shell::new(replica);
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
    use super::take_statements;

    #[test]
    fn statements_split_on_semicolons_outside_quotes() {
        let mut buffer = "SELECT 'a;b'; INSERT INTO t VALUES (1);\nSELECT".to_string();
        assert_eq!(take_statements(&mut buffer), vec!["SELECT 'a;b';", "INSERT INTO t VALUES (1);"]);
        assert_eq!(buffer, "SELECT");
    }
}
