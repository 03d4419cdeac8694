//! The API's cache of parsed statements, bounded by the SQL text it holds.
//!
//! A parsed statement costs memory in proportion to its text: a cache bounded by entries
//! alone held 256 bulk inserts (1000-row `INSERT ... VALUES` of ~45 KB each) and ~400 MiB
//! of an idle node's RSS after a load, ~1.6 MB per statement (inferred from that RSS, not
//! measured per statement). Entries are
//! charged their text length against `TEXT_BYTES_MAX`, and a statement whose text is longer
//! than `ENTRY_TEXT_BYTES_MAX` is not kept at all: statements with that much text carry
//! their values as literals and are seldom sent twice, and parsing them again costs about
//! as much as the work they do.

use edgestore::sql;

/// Text bytes of every kept statement together, at most (at the ~36 bytes of syntax tree
/// per byte of text inferred above: ~9 MiB).
pub const TEXT_BYTES_MAX: usize = 256 * 1024;
/// A statement longer than this is parsed for each request and not kept.
pub const ENTRY_TEXT_BYTES_MAX: usize = 16 * 1024;
/// Statements kept, at most, however short.
pub const ENTRIES_MAX: usize = 256;

/// Parsed statements by SQL text, least recently used evicted first.
#[derive(Debug)]
pub struct StatementCache {
    entries: lru::LruCache<String, sql::Statement>,
    text_bytes: usize,
}

impl Default for StatementCache {
    fn default() -> Self {
        StatementCache { entries: lru::LruCache::unbounded(), text_bytes: 0 }
    }
}

impl StatementCache {
    /// The statement kept for `text`, marked as recently used.
    pub fn get(&mut self, text: &str) -> Option<sql::Statement> {
        self.entries.get(text).cloned()
    }

    /// Keeps `statement` for `text` unless the text is too long to keep, evicting the least
    /// recently used entries until the bounds hold.
    pub fn put(&mut self, text: &str, statement: sql::Statement) {
        if text.len() > ENTRY_TEXT_BYTES_MAX {
            return;
        }
        if self.entries.put(text.to_string(), statement).is_none() {
            self.text_bytes += text.len();
        }
        while self.text_bytes > TEXT_BYTES_MAX || self.entries.len() > ENTRIES_MAX {
            let (evicted, _) = self.entries.pop_lru().expect("bounds exceeded only with entries");
            self.text_bytes -= evicted.len();
        }
        debug_assert_eq!(self.text_bytes, self.entries.iter().map(|(k, _)| k.len()).sum::<usize>());
    }

    /// Statements kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Text bytes of the statements kept now.
    #[cfg(test)]
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(text: &str) -> sql::Statement {
        sql::prepare(text).expect("a valid statement")
    }

    /// `SELECT <n>` padded with spaces to `len` bytes.
    fn select_of_len(n: usize, len: usize) -> String {
        let text = format!("SELECT {n}");
        format!("{text}{}", " ".repeat(len - text.len()))
    }

    #[test]
    fn a_statement_longer_than_the_entry_bound_is_not_kept() {
        let mut cache = StatementCache::default();
        let long = select_of_len(1, ENTRY_TEXT_BYTES_MAX + 1);
        cache.put(&long, prepared(&long));
        assert!(cache.get(&long).is_none());
        assert_eq!((cache.len(), cache.text_bytes()), (0, 0));
        let at_bound = select_of_len(2, ENTRY_TEXT_BYTES_MAX);
        cache.put(&at_bound, prepared(&at_bound));
        assert!(cache.get(&at_bound).is_some());
    }

    #[test]
    fn text_bytes_stay_within_the_bound_and_the_least_recently_used_goes_first() {
        let mut cache = StatementCache::default();
        let texts: Vec<String> = (0..40).map(|n| select_of_len(n, ENTRY_TEXT_BYTES_MAX)).collect();
        cache.put(&texts[0], prepared(&texts[0]));
        for text in &texts[1..] {
            assert!(cache.get(&texts[0]).is_some(), "the entry used before each put stays");
            cache.put(text, prepared(text));
            assert!(cache.text_bytes() <= TEXT_BYTES_MAX);
        }
        assert_eq!(cache.len(), TEXT_BYTES_MAX / ENTRY_TEXT_BYTES_MAX);
        assert!(cache.get(&texts[1]).is_none(), "the least recently used was evicted");
        assert!(cache.get(&texts[39]).is_some());
    }

    #[test]
    fn short_statements_are_bounded_by_count_and_a_second_put_is_charged_once() {
        let mut cache = StatementCache::default();
        for n in 0..ENTRIES_MAX + 10 {
            let text = format!("SELECT {n}");
            cache.put(&text, prepared(&text));
        }
        assert_eq!(cache.len(), ENTRIES_MAX);
        let bytes = cache.text_bytes();
        let last = format!("SELECT {}", ENTRIES_MAX + 9);
        cache.put(&last, prepared(&last));
        assert_eq!(cache.text_bytes(), bytes);
    }
}
