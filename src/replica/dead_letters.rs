//! Dead letters: what this node's ingest received and could not store (a payload that is
//! not JSON, a value of the wrong type, an unknown table), kept so that the operator can
//! see what was refused and why (`edgestore_dead_letters`).
//!
//! They are node-local, like `holders_v1`: a dead letter is a fact about what *this* node
//! received, so it is neither replicated nor copied by backups. `dead_letters_v1` keeps the
//! newest [`DEAD_LETTERS_MAX`] by sequence number (older ones are removed in the same
//! transaction that adds new ones), and a payload is kept up to
//! [`DEAD_LETTER_PAYLOAD_BYTES_MAX`] bytes, so the table is bounded however much is refused.
//! They are written in the caller's write transaction durability: inside a group commit
//! (`handle.rs`) they become durable with the group, so an ingest acknowledges a refused
//! message to its source only once its dead letter is durable.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::{Replica, Snapshot};
use crate::codec;
use crate::error::{Corruption, StorageError};
use crate::storage;

/// Dead letters kept, at most: the oldest go first.
pub const DEAD_LETTERS_MAX: u64 = 10_000;
/// Bytes of a refused payload kept, at most (the rest is cut; `payload_bytes` says how
/// long it was).
pub const DEAD_LETTER_PAYLOAD_BYTES_MAX: usize = 1024;
/// Bytes of a refusal's message kept, at most (and of its topic and table).
pub const DEAD_LETTER_ERROR_BYTES_MAX: usize = 1024;

/// One refused message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was received (ms since the Unix epoch, the node's clock).
    pub received_ms: i64,
    /// What received it, e.g. `mqtt`.
    pub source: String,
    /// Where it came from within the source, e.g. the MQTT topic.
    pub topic: String,
    /// The table it was meant for (empty when none matched).
    pub table: String,
    /// The payload's first [`DEAD_LETTER_PAYLOAD_BYTES_MAX`] bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The payload's whole length.
    pub payload_bytes: u64,
    /// Why it was refused.
    pub error: String,
}

impl DeadLetter {
    /// A dead letter of `payload`, cut to the kept length (and `error`, `topic` and
    /// `table` to [`DEAD_LETTER_ERROR_BYTES_MAX`]: an MQTT topic may be 64 KiB).
    pub fn new(received_ms: i64, source: &str, topic: &str, table: &str, payload: &[u8], error: &str) -> DeadLetter {
        DeadLetter {
            received_ms,
            source: source.to_string(),
            topic: cut_text(topic, DEAD_LETTER_ERROR_BYTES_MAX).to_string(),
            table: cut_text(table, DEAD_LETTER_ERROR_BYTES_MAX).to_string(),
            payload: payload[..payload.len().min(DEAD_LETTER_PAYLOAD_BYTES_MAX)].to_vec(),
            payload_bytes: payload.len() as u64,
            error: cut_text(error, DEAD_LETTER_ERROR_BYTES_MAX).to_string(),
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_text(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Replica {
    /// Stores `letters` under the next sequence numbers and removes the oldest beyond
    /// [`DEAD_LETTERS_MAX`], in one transaction of the current durability (deferred inside
    /// a group commit). Refused like a local write while the store is faulted or below
    /// its low-disk floor. Returns the sequence number of the first letter.
    pub fn record_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<u64, StorageError> {
        if let Some(refusal) = self.local_write_refusal() {
            return Err(refusal);
        }
        let mut first = 0;
        let outcome = (|| -> Result<(), StorageError> {
            let txn = self.begin_durable_write()?;
            {
                let mut table = txn.open_table(storage::DEAD_LETTERS)?;
                first = table.last()?.map_or(1, |(seq, _)| seq.value() + 1);
                for (seq, letter) in (first..).zip(letters) {
                    table.insert(seq, codec::encode(letter).as_slice())?;
                }
                let keep_from = (first + letters.len() as u64).saturating_sub(DEAD_LETTERS_MAX);
                table.retain_in(..keep_from, |_, _| false)?;
                debug_assert!(table.len()? <= DEAD_LETTERS_MAX, "the dead-letter table stays bounded");
            }
            txn.commit()?;
            Ok(())
        })();
        self.finish(outcome)?;
        Ok(first)
    }
}

impl Snapshot {
    /// Every kept dead letter with its sequence number, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, StorageError> {
        let table = self.txn().open_table(storage::DEAD_LETTERS)?;
        let mut letters = Vec::new();
        for entry in table.iter()? {
            let (seq, bytes) = entry?;
            let letter = codec::decode(bytes.value())
                .map_err(|source| Corruption::Value { table: "dead_letters_v1", source })?;
            letters.push((seq.value(), letter));
        }
        Ok(letters)
    }
}
