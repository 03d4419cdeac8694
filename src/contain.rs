//! Containment of automerge calls on untrusted bytes.
//!
//! automerge 0.6.1 (and 0.12) panic on some malformed inputs that carry a valid checksum
//! (BRIEF §7: ~0.3% of mutated documents). Every automerge call on bytes from a peer or
//! from disk goes through [`contain`], which turns a panic into an error. The caller then
//! discards every in-memory object the call touched, so nothing half-applied survives.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// An automerge call panicked; the input that caused it must be rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("automerge panicked during {0}")]
pub struct Panicked(pub &'static str);

/// Runs `f`, converting a panic into [`Panicked`].
///
/// `AssertUnwindSafe` is sound here because every caller drops (or evicts from the cache)
/// the objects `f` touched when this returns an error: no state observed across the panic
/// boundary is reused.
pub fn contain<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Panicked(what))
}
