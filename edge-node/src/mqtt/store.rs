//! MQTT ingest, the write: one batch of messages becomes rows, and dead letters for the
//! messages that give none, in one job of a group commit (`ReplicaHandle::write_job`), so
//! all of it is durable before the batcher acknowledges any message to the broker.
//!
//! Messages for the same table with the same columns share multi-row
//! `INSERT ... ON CONFLICT DO NOTHING` statements (through the SQL engine, so defaults,
//! CHECKs, foreign keys, unique indexes and key-less tables behave as for any insert). A
//! row whose key exists is skipped and counted as a duplicate: a message the broker
//! delivers again after a crash or a reconnect adds nothing to a keyed table. When a
//! shared statement fails, its messages are inserted one by one, so only the bad ones
//! become dead letters. A failure of the store itself (an I/O error, the low-disk floor, the
//! node's memory budget) stops the batch: what is stored so far is acknowledged, and the
//! batcher retries the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use edgestore::sql::{self, ExecOptions, SqlError};
use edgestore::{Catalog, DeadLetter, Replica, Value};

use super::rows::{self, MessageRows};
use super::MqttConfig;

/// Rows one statement inserts, at most (a message has at most
/// [`rows::ROWS_PER_MESSAGE_MAX`], so a message always fits in one).
pub const ROWS_PER_STATEMENT_MAX: usize = 1000;
const _: () = assert!(rows::ROWS_PER_MESSAGE_MAX <= ROWS_PER_STATEMENT_MAX);
/// Insert statements kept parsed (one per table, column set and row count seen).
const STATEMENTS_KEPT_MAX: usize = 256;
/// Bytes of SQL text the kept statements hold, at most. A parsed statement takes tens of
/// times its text (a node per placeholder), and batches of varying fill each make their
/// own row count's statement, so the count alone does not bound the memory.
const STATEMENT_TEXT_KEPT_MAX: usize = 512 * 1024;

/// One received message.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it was received (ms since the Unix epoch).
    pub received_ms: i64,
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows inserted.
    pub rows: u64,
    /// Rows skipped because a row of the same key (or unique value) existed.
    pub duplicates: u64,
    /// Messages refused (stored as dead letters).
    pub refused: u64,
}

/// What a batch's job wrote: its figures, which messages are stored (as rows or as dead
/// letters, durable with the job's group), and the store failure that stopped it early.
#[derive(Debug)]
pub struct Written {
    /// The figures of what is stored.
    pub outcome: BatchOutcome,
    /// Per message of the batch: whether it is stored.
    pub stored: Vec<bool>,
    /// Why the rest is not stored: a failure of the store, not of a message.
    pub failure: Option<SqlError>,
}

/// Dead-letter warnings logged per batch, at most (the rest are counted in one line).
const REFUSALS_LOGGED_MAX: usize = 10;

/// Parsed insert statements by text, shared by the batches of one node.
#[derive(Default)]
pub struct Statements(Mutex<Kept>);

/// The statements and the bytes of their text.
#[derive(Default)]
struct Kept {
    by_text: HashMap<String, sql::Statement>,
    text_bytes: usize,
}

impl Statements {
    fn get(&self, text: &str) -> Result<sql::Statement, SqlError> {
        let mut kept = self.0.lock().expect("statement cache poisoned");
        if let Some(statement) = kept.by_text.get(text) {
            return Ok(statement.clone());
        }
        let statement = sql::prepare(text)?;
        if text.len() > STATEMENT_TEXT_KEPT_MAX {
            return Ok(statement); // Used once, not kept.
        }
        if kept.by_text.len() >= STATEMENTS_KEPT_MAX || kept.text_bytes + text.len() > STATEMENT_TEXT_KEPT_MAX {
            *kept = Kept::default();
        }
        kept.text_bytes += text.len();
        kept.by_text.insert(text.to_string(), statement.clone());
        debug_assert_eq!(kept.text_bytes, kept.by_text.keys().map(String::len).sum::<usize>());
        Ok(statement)
    }
}

/// Writes `messages` as rows and dead letters. Runs as a write job on the replica's owner
/// thread. A failure of the store stops it early: what it stored until then stays stored
/// (it commits with the group), and [`Written`] says which messages those are, so that the
/// batcher acknowledges them and retries only the others. An `Err` means nothing is stored.
pub fn write_batch(
    replica: &mut Replica,
    config: &MqttConfig,
    messages: &[Incoming],
    statements: &Statements,
    options: &ExecOptions,
) -> Result<Written, SqlError> {
    let now_ms = crate::clock::now_ms();
    let mut outcome = BatchOutcome::default();
    let mut stored = vec![false; messages.len()];
    let mut failure = None;
    // Dead letters in the order their messages arrived: (index in the batch, letter).
    let mut letters = Vec::new();
    let mut refuse = |(index, message): (usize, &Incoming), table: &str, error: &str| {
        letters.push((
            index,
            DeadLetter::new(message.received_ms, "mqtt", &message.topic, table, &message.payload, error),
        ));
    };
    type Member<'m> = ((usize, &'m Incoming), MessageRows);
    let mut groups: BTreeMap<(String, Vec<String>), Vec<Member<'_>>> = BTreeMap::new();
    {
        let snapshot = replica.snapshot()?;
        for (index, message) in messages.iter().enumerate() {
            match parse(config, snapshot.catalog(), message) {
                Ok((table, rows)) => {
                    groups.entry((table, rows.columns.clone())).or_default().push(((index, message), rows))
                }
                Err((table, error)) => refuse((index, message), &table, &error),
            }
        }
    }
    let mut insert = Insert { replica: &mut *replica, statements, options, now_ms };
    'groups: for ((table, columns), members) in &groups {
        for chunk in chunks(members) {
            match insert.run(table, columns, chunk.iter().map(|(_, rows)| rows)) {
                Ok(done) => {
                    outcome.add(done);
                    chunk.iter().for_each(|((index, _), _)| stored[*index] = true);
                }
                Err(error) if store_failure(&error) => {
                    failure = Some(error);
                    break 'groups;
                }
                Err(_) if chunk.len() > 1 => {
                    for (message, rows) in chunk {
                        match insert.run(table, columns, std::iter::once(rows)) {
                            Ok(done) => {
                                outcome.add(done);
                                stored[message.0] = true;
                            }
                            Err(error) if store_failure(&error) => {
                                failure = Some(error);
                                break 'groups;
                            }
                            Err(error) => refuse(*message, table, &error.to_string()),
                        }
                    }
                }
                Err(error) => refuse(chunk[0].0, table, &error.to_string()),
            }
        }
    }
    if !letters.is_empty() {
        letters.sort_by_key(|(index, _)| *index);
        log_refusals(&letters);
        let (indexes, letters): (Vec<usize>, Vec<DeadLetter>) = letters.into_iter().unzip();
        match replica.record_dead_letters(&letters) {
            Ok(_) => {
                outcome.refused = letters.len() as u64;
                indexes.into_iter().for_each(|index| stored[index] = true);
            }
            Err(error) => failure = failure.or(Some(error.into())),
        }
    }
    debug_assert!(failure.is_some() || stored.iter().all(|s| *s), "without a failure every message is stored");
    Ok(Written { outcome, stored, failure })
}

/// Logs the first refusals of a batch one by one and the rest as a count, so a publisher
/// of bad messages cannot flood the log.
fn log_refusals(letters: &[(usize, DeadLetter)]) {
    for (_, letter) in letters.iter().take(REFUSALS_LOGGED_MAX) {
        tracing::warn!(topic = %letter.topic, table = %letter.table, error = %letter.error,
            "MQTT message refused (see edgestore_dead_letters)");
    }
    if letters.len() > REFUSALS_LOGGED_MAX {
        tracing::warn!(more = letters.len() - REFUSALS_LOGGED_MAX, "more MQTT messages of the batch refused");
    }
}

/// The table and rows of `message`, or the table (empty if none) and why it has none.
fn parse(
    config: &MqttConfig,
    catalog: &Catalog,
    message: &Incoming,
) -> Result<(String, MessageRows), (String, String)> {
    if message.payload.len() > config.payload_bytes_max {
        let error = format!(
            "the payload is {} bytes, more than mqtt.payload_bytes_max ({})",
            message.payload.len(),
            config.payload_bytes_max
        );
        return Err((String::new(), error));
    }
    let route = rows::route_of(&config.routes, &message.topic)
        .ok_or_else(|| (String::new(), "no [[mqtt.ingest]] filter matches the topic".to_string()))?;
    let table =
        catalog.table(&route.table).ok_or_else(|| (route.table.clone(), format!("no such table: {}", route.table)))?;
    let rows = rows::message_rows(route, &table.schema, &message.topic, &message.payload)
        .map_err(|error| (route.table.clone(), error))?;
    Ok((table.schema.name.clone(), rows))
}

/// `members` in runs of whole messages of at most [`ROWS_PER_STATEMENT_MAX`] rows.
fn chunks<T>(members: &[(T, MessageRows)]) -> Vec<&[(T, MessageRows)]> {
    let mut runs = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, (_, message)) in members.iter().enumerate() {
        if rows + message.rows.len() > ROWS_PER_STATEMENT_MAX && i > start {
            runs.push(&members[start..i]);
            (start, rows) = (i, 0);
        }
        rows += message.rows.len();
    }
    if start < members.len() {
        runs.push(&members[start..]);
    }
    runs
}

/// Whether an insert failed because of the store, not the message: the batch must then
/// not be acknowledged.
fn store_failure(error: &SqlError) -> bool {
    matches!(
        error,
        SqlError::Storage(_)
            | SqlError::Stopped(_)
            | SqlError::Write(edgestore::WriteError::Storage(_))
            | SqlError::Read(edgestore::ReadError::Storage(_))
            | SqlError::NodeMemoryBudget { .. }
            | SqlError::Interrupted(_)
    )
}

impl BatchOutcome {
    fn add(&mut self, (inserted, given): (u64, u64)) {
        debug_assert!(inserted <= given, "an insert adds at most the rows it is given");
        self.rows += inserted;
        self.duplicates += given - inserted;
    }
}

/// Runs the insert statements of a batch.
struct Insert<'a> {
    replica: &'a mut Replica,
    statements: &'a Statements,
    options: &'a ExecOptions,
    now_ms: i64,
}

impl Insert<'_> {
    /// Inserts the rows of `messages` into `table` in one statement: (rows inserted,
    /// rows given).
    fn run<'m>(
        &mut self,
        table: &str,
        columns: &[String],
        messages: impl Iterator<Item = &'m MessageRows> + Clone,
    ) -> Result<(u64, u64), SqlError> {
        let params: Vec<Value> = messages.clone().flat_map(|m| m.rows.iter().flatten().cloned()).collect();
        let row_count = messages.map(|m| m.rows.len()).sum::<usize>();
        debug_assert_eq!(params.len(), row_count * columns.len(), "every row has a value for each column");
        let statement = self.statements.get(&insert_sql(table, columns, row_count))?;
        let result = statement.execute_with(self.replica, &params, self.now_ms, self.options)?;
        Ok((result.rows_affected, row_count as u64))
    }
}

/// `INSERT INTO "table" ("a", "b") VALUES (?, ?), ... ON CONFLICT DO NOTHING`.
fn insert_sql(table: &str, columns: &[String], row_count: usize) -> String {
    let names: Vec<String> = columns.iter().map(|c| quoted(c)).collect();
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let rows = vec![row.as_str(); row_count].join(", ");
    format!("INSERT INTO {} ({}) VALUES {rows} ON CONFLICT DO NOTHING", quoted(table), names.join(", "))
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> ((), MessageRows) {
        ((), MessageRows { columns: vec!["a".into()], rows: vec![vec![Value::Integer(1)]; n] })
    }

    #[test]
    fn chunks_hold_whole_messages_up_to_the_row_limit() {
        let members = [rows(600), rows(400), rows(1), rows(1000), rows(3)];
        let sizes: Vec<usize> = chunks(&members).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [2, 1, 1, 1]);
        assert!(chunks::<()>(&[]).is_empty());
    }

    #[test]
    fn insert_text_quotes_names() {
        assert_eq!(
            insert_sql("t", &["a".into(), "b\"c".into()], 2),
            r#"INSERT INTO "t" ("a", "b""c") VALUES (?, ?), (?, ?) ON CONFLICT DO NOTHING"#
        );
    }
}
