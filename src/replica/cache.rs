//! The document cache: loaded row and catalog documents kept between transactions, bounded
//! by an estimate of the memory they hold rather than by their number (a row updated 64
//! times holds ten times what a row written once holds).
//!
//! A loaded automerge 0.6.1 document keeps its whole change history in memory, so its
//! size grows with the number of changes it holds, not with its compressed stored size
//! (a saved document of 64 changes is ~360 bytes on disk and ~87 KB in memory). A cached
//! document is charged [`DOC_CACHE_ENTRY_BYTES`] plus [`DOC_CACHE_CHANGE_BYTES`] per
//! change, plus its key. Both constants were fitted to `examples/doc_memory.rs` (the
//! resident-memory growth of loading thousands of `readings` row documents of 1 to 160
//! changes, in fresh processes): ~8.1 KB at 1 change, ~20 KB at 10, ~87 KB at 64,
//! ~172 KB at 128, ~219 KB at 160, i.e. ~6.75 KB + ~1.33 KB per change. The estimate
//! only has to be right in size: it bounds the cache, it does not account for every byte.

use lru::LruCache;

use super::WorkingDoc;

/// Memory charged per cached document besides its changes: the automerge document's fixed
/// structures (op tree, indexes, actor table) and the cache entry.
pub const DOC_CACHE_ENTRY_BYTES: usize = 6_750;
/// Memory charged per automerge change a cached document holds (the change itself, kept
/// in the document's history, and its ops).
pub const DOC_CACHE_CHANGE_BYTES: usize = 1_330;

/// The estimated memory of a cached document.
pub(crate) fn doc_memory_bytes(key: &[u8], working: &WorkingDoc) -> usize {
    let changes = usize::try_from(working.changes).unwrap_or(usize::MAX);
    DOC_CACHE_ENTRY_BYTES.saturating_add(key.len()).saturating_add(changes.saturating_mul(DOC_CACHE_CHANGE_BYTES))
}

/// Least-recently-used documents, at most `bytes_max` of them by estimated memory.
pub(crate) struct DocCache {
    docs: LruCache<Vec<u8>, (usize, WorkingDoc)>,
    bytes: usize,
    bytes_max: usize,
}

impl DocCache {
    /// An empty cache holding at most `bytes_max` estimated bytes.
    pub fn new(bytes_max: usize) -> DocCache {
        DocCache { docs: LruCache::unbounded(), bytes: 0, bytes_max }
    }

    /// Takes a document out of the cache.
    pub fn pop(&mut self, key: &[u8]) -> Option<WorkingDoc> {
        let (charged, working) = self.docs.pop(key)?;
        self.bytes -= charged;
        Some(working)
    }

    /// Puts a document (back) into the cache, evicting the least recently used ones until
    /// the budget holds; a document larger than the whole budget is not kept.
    pub fn put(&mut self, key: Vec<u8>, working: WorkingDoc) {
        let charged = doc_memory_bytes(&key, &working);
        if let Some((old, _)) = self.docs.pop(&key) {
            self.bytes -= old;
        }
        if charged > self.bytes_max {
            return;
        }
        while self.bytes + charged > self.bytes_max {
            let (_, (evicted, _)) = self.docs.pop_lru().expect("bytes > 0 means an entry is cached");
            self.bytes -= evicted;
        }
        self.bytes += charged;
        self.docs.put(key, (charged, working));
        debug_assert!(self.bytes <= self.bytes_max);
    }

    /// Whether a document is cached.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.docs.contains(key)
    }

    /// A cached document, to change how it is stored (its tail length) but not what it
    /// holds, so its charge stays right; its place in the eviction order does not move.
    pub fn peek_mut(&mut self, key: &[u8]) -> Option<&mut WorkingDoc> {
        self.docs.peek_mut(key).map(|(_, working)| working)
    }

    /// Drops every document.
    pub fn clear(&mut self) {
        self.docs.clear();
        self.bytes = 0;
    }

    /// Documents cached now.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Estimated bytes cached now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The budget.
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn working(changes: u64) -> WorkingDoc {
        let doc = Box::new(crate::doc::new_doc(NodeId([1; 16])));
        WorkingDoc { doc, tail_len: 0, created: false, changes, implicit: false }
    }

    #[test]
    fn the_budget_evicts_least_recently_used_documents() {
        let one = doc_memory_bytes(b"a", &working(100));
        let mut cache = DocCache::new(one * 2);
        cache.put(b"a".to_vec(), working(100));
        cache.put(b"b".to_vec(), working(100));
        assert!(cache.pop(b"a").is_some(), "both fit");
        cache.put(b"a".to_vec(), working(100));
        cache.put(b"c".to_vec(), working(100));
        assert_eq!(cache.len(), 2);
        assert!(cache.pop(b"b").is_none(), "b was the least recently used");
        assert_eq!(cache.bytes(), 2 * one);
        cache.put(b"huge".to_vec(), working(u64::MAX));
        assert!(cache.pop(b"huge").is_none(), "a document above the budget is not kept");
        assert!(cache.pop(b"c").is_some(), "and evicts nothing");
        cache.clear();
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }
}
