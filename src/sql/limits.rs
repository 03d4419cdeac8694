//! The limits one statement runs under: expression depth, a memory budget shared by its
//! operators (and, across statements, a node-wide [`MemoryPool`]), and cooperative
//! cancellation ([`Interrupt`]).
//!
//! SQLite's `SQLITE_LIMIT_EXPR_DEPTH` and `sqlite3_interrupt`, DataFusion's `MemoryPool` /
//! `MemoryReservation`: every buffer an operator grows reserves its bytes first, every
//! operator loop checks the interrupt flag, and recursion over expressions is bounded so
//! that no statement text can overflow the stack of a thread with
//! [`STATEMENT_STACK_BYTES`]. The library never reads a clock: a time limit is the caller's
//! timer calling [`Interrupt::interrupt`] with [`InterruptCause::TimeLimit`].

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::SqlError;
use crate::types::Value;

/// Deepest expression nesting accepted (operators chained or nested, function calls,
/// `CASE`, parentheses), counted as SQLite counts `SQLITE_MAX_EXPR_DEPTH` (whose default is
/// also 1000). A subquery counts as [`SUBQUERY_DEPTH_COST`] levels, a `UNION` term as one.
pub const EXPR_DEPTH_MAX: usize = 1000;

/// Depth levels one nested query (a subquery, a derived table) costs: planning and running
/// a query level takes about this many times the stack of an expression level (measured
/// in `tests/sql_limits.rs`), so that the stack a statement needs has one bound.
pub const SUBQUERY_DEPTH_COST: usize = 20;

/// Stack a thread needs to plan and run any statement the limits accept, with margin: run
/// statements (and read their rows) on threads with at least this much stack. The deepest
/// accepted statement (1000 nested function calls) needs 4.6 MiB in debug and release
/// builds, less than a third of it (measured by `measure_stack` in `tests/sql_limits.rs`;
/// figures in docs/design.md § SQL "Limits").
pub const STATEMENT_STACK_BYTES: usize = 16 << 20;

/// Default of [`ExecOptions::statement_memory_bytes_max`]: 256 MiB.
pub const STATEMENT_MEMORY_BYTES_DEFAULT: usize = 256 << 20;

/// Bytes a reservation takes from its budget at a time: operators growing row by row touch
/// the shared counters once per chunk, not once per row.
const RESERVATION_CHUNK_BYTES: usize = 64 << 10;

/// A node-wide memory budget shared by concurrent statements (clones share it).
#[derive(Clone, Debug)]
pub struct MemoryPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    bytes_max: usize,
    reserved: AtomicUsize,
}

impl MemoryPool {
    /// A pool of `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> MemoryPool {
        MemoryPool { inner: Arc::new(PoolInner { bytes_max, reserved: AtomicUsize::new(0) }) }
    }

    /// A pool without a bound (it still counts what is reserved).
    pub fn unbounded() -> MemoryPool {
        MemoryPool::new(usize::MAX)
    }

    /// Bytes the statements using this pool hold now.
    pub fn reserved_bytes(&self) -> usize {
        self.inner.reserved.load(Ordering::Relaxed)
    }

    /// The pool's bound in bytes.
    pub fn bytes_max(&self) -> usize {
        self.inner.bytes_max
    }

    fn reserve(&self, bytes: usize) -> Result<(), SqlError> {
        reserve_from(&self.inner.reserved, self.inner.bytes_max, bytes)
            .map_err(|()| SqlError::NodeMemoryBudget { limit_bytes: self.inner.bytes_max })
    }

    fn release(&self, bytes: usize) {
        let before = self.inner.reserved.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "pool released {bytes} bytes of {before}");
    }
}

/// Adds `bytes` to `counter` unless that passes `max`.
fn reserve_from(counter: &AtomicUsize, max: usize, bytes: usize) -> Result<(), ()> {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(bytes).filter(|n| *n <= max))
        .map(drop)
        .map_err(drop)
}

/// Why a statement was interrupted.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptCause {
    /// It ran longer than the caller allows.
    TimeLimit {
        /// The limit, in milliseconds.
        limit_ms: u64,
    },
    /// The client that sent it went away.
    ClientGone,
    /// The node is shutting down.
    Shutdown,
}

impl std::fmt::Display for InterruptCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterruptCause::TimeLimit { limit_ms } => write!(f, "statement exceeded its time limit ({limit_ms} ms)"),
            InterruptCause::ClientGone => f.write_str("statement cancelled: the client went away"),
            InterruptCause::Shutdown => f.write_str("statement cancelled: the node is shutting down"),
        }
    }
}

/// Cooperative cancellation of a statement, settable from any thread (clones share it).
/// The statement's operators check it in every loop and fail with
/// [`SqlError::Interrupted`] soon after [`Interrupt::interrupt`].
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    inner: Arc<InterruptInner>,
}

#[derive(Debug, Default)]
struct InterruptInner {
    /// Set once a cause is stored: the only thing the operators' loops read.
    raised: AtomicBool,
    cause: Mutex<Option<InterruptCause>>,
}

impl Interrupt {
    /// An interrupt not raised yet.
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Asks the statement to stop; the first cause given is the one reported.
    pub fn interrupt(&self, cause: InterruptCause) {
        // A poisoned lock still holds a valid Option: the cause is a plain value.
        let mut slot = self.inner.cause.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(cause);
        self.inner.raised.store(true, Ordering::Release);
    }

    /// The cause, once interrupted.
    pub fn cause(&self) -> Option<InterruptCause> {
        if !self.inner.raised.load(Ordering::Acquire) {
            return None;
        }
        *self.inner.cause.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(Interrupted)` once interrupted: what every operator loop calls.
    #[inline]
    pub(crate) fn check(&self) -> Result<(), SqlError> {
        if self.inner.raised.load(Ordering::Relaxed) {
            return Err(SqlError::Interrupted(self.cause().unwrap_or(InterruptCause::Shutdown)));
        }
        Ok(())
    }
}

/// How a statement runs: its memory budget, the node's pool, and its interrupt.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Bytes the statement's operators may hold at once (sort buffers, hash tables, group
    /// state, `DISTINCT` sets, subquery results and memos, large string results).
    pub statement_memory_bytes_max: usize,
    /// The node-wide pool the statement's bytes are also taken from.
    pub pool: MemoryPool,
    /// Cancels the statement when raised.
    pub interrupt: Interrupt,
}

impl Default for ExecOptions {
    fn default() -> ExecOptions {
        ExecOptions {
            statement_memory_bytes_max: STATEMENT_MEMORY_BYTES_DEFAULT,
            pool: MemoryPool::unbounded(),
            interrupt: Interrupt::new(),
        }
    }
}

/// The limits in force for one execution of a statement, shared by its operators (and by
/// the rows it streams, for as long as they are read).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    budget: Arc<Budget>,
    pub interrupt: Interrupt,
}

#[derive(Debug)]
struct Budget {
    limit_bytes: usize,
    used: AtomicUsize,
    pool: MemoryPool,
}

impl Drop for Budget {
    fn drop(&mut self) {
        // Every reservation holds the budget, so none is alive here.
        debug_assert_eq!(*self.used.get_mut(), 0, "a statement's budget dropped with bytes reserved");
    }
}

impl Limits {
    pub fn new(opts: &ExecOptions) -> Limits {
        let budget =
            Budget { limit_bytes: opts.statement_memory_bytes_max, used: AtomicUsize::new(0), pool: opts.pool.clone() };
        Limits { budget: Arc::new(budget), interrupt: opts.interrupt.clone() }
    }

    /// Fails once the statement is interrupted.
    #[inline]
    pub fn check(&self) -> Result<(), SqlError> {
        self.interrupt.check()
    }

    /// An empty reservation against the statement's budget.
    pub fn reservation(&self) -> Reservation {
        Reservation { budget: Arc::clone(&self.budget), bytes: 0, held: 0 }
    }

    /// Fails unless a value of `bytes` could still be held: called before building a large
    /// string or blob, so that a result past the budget is never allocated.
    pub fn check_value_bytes(&self, bytes: usize) -> Result<(), SqlError> {
        let budget = &self.budget;
        let used = budget.used.load(Ordering::Relaxed);
        if used.saturating_add(bytes) > budget.limit_bytes {
            return Err(SqlError::MemoryBudget { limit_bytes: budget.limit_bytes });
        }
        let pool = &budget.pool;
        if pool.reserved_bytes().saturating_add(bytes) > pool.bytes_max() {
            return Err(SqlError::NodeMemoryBudget { limit_bytes: pool.bytes_max() });
        }
        Ok(())
    }
}

thread_local! {
    /// The limits of the statement this thread is running, if any (see [`Limits::enter`]).
    static CURRENT: RefCell<Option<Limits>> = const { RefCell::new(None) };
}

/// While alive, this thread runs the statement whose limits were entered.
pub(crate) struct Entered {
    previous: Option<Limits>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

impl Limits {
    /// Makes these the limits that scalar functions check their results against on this
    /// thread, until the guard drops. Scalar expressions are evaluated deep inside the
    /// operators, which pass rows, not a context; every entry into a statement's work
    /// (planning and opening, writing, each `Rows::next`) enters its limits, so a function
    /// result is always checked against the statement that computes it.
    pub fn enter(&self) -> Entered {
        Entered { previous: CURRENT.with(|c| c.replace(Some(self.clone()))) }
    }
}

/// Fails unless a function result of `bytes` fits the budget of the statement running on
/// this thread: called before the result is allocated.
pub(crate) fn check_result_bytes(bytes: usize) -> Result<(), SqlError> {
    CURRENT.with(|c| match &*c.borrow() {
        Some(limits) => limits.check_value_bytes(bytes),
        // Evaluation outside a statement's entry points does not happen; a value is still
        // never larger than the default budget.
        None if bytes > STATEMENT_MEMORY_BYTES_DEFAULT => {
            Err(SqlError::MemoryBudget { limit_bytes: STATEMENT_MEMORY_BYTES_DEFAULT })
        }
        None => Ok(()),
    })
}

impl Budget {
    fn reserve(&self, bytes: usize) -> Result<(), SqlError> {
        reserve_from(&self.used, self.limit_bytes, bytes)
            .map_err(|()| SqlError::MemoryBudget { limit_bytes: self.limit_bytes })?;
        if let Err(e) = self.pool.reserve(bytes) {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn release(&self, bytes: usize) {
        self.pool.release(bytes);
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "statement released {bytes} bytes of {before}");
    }
}

/// Bytes an operator holds, taken from the statement's budget and the node's pool and given
/// back when it is dropped (RAII). It takes whole chunks, so growing by one row rarely
/// touches the shared counters.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    /// Bytes the operator says it holds.
    bytes: usize,
    /// Bytes taken from the budget (≥ `bytes`).
    held: usize,
}

impl Reservation {
    /// Accounts `bytes` more; fails (holding what it held) past the budget or the pool.
    pub fn grow(&mut self, bytes: usize) -> Result<(), SqlError> {
        let wanted = self.bytes.saturating_add(bytes);
        if wanted > self.held {
            // A chunk ahead when the budget has room for it, else exactly what is wanted.
            // The chunk is small next to the budget, so that what the statement's other
            // operators hold ahead never decides whether one of them fits.
            let chunk = RESERVATION_CHUNK_BYTES.min(self.budget.limit_bytes / 64);
            let ahead = wanted.saturating_add(chunk) - self.held;
            let exact = wanted - self.held;
            let take =
                if self.budget.reserve(ahead).is_ok() { ahead } else { self.budget.reserve(exact).map(|()| exact)? };
            self.held += take;
        }
        self.bytes = wanted;
        debug_assert!(self.bytes <= self.held);
        Ok(())
    }

    /// Accounts `bytes` fewer (the operator let them go).
    pub fn shrink(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.bytes, "shrink by {bytes} of {}", self.bytes);
        self.bytes -= bytes.min(self.bytes);
        // Give back what is well past the chunk kept in hand.
        let chunk = RESERVATION_CHUNK_BYTES.min(self.budget.limit_bytes / 64);
        let spare = self.held - self.bytes;
        if spare > 2 * chunk {
            let give = spare - chunk;
            self.budget.release(give);
            self.held -= give;
        }
    }

    /// Accounts nothing any more (the operator let everything go).
    pub fn clear(&mut self) {
        self.shrink(self.bytes);
    }

    /// Makes the reservation account `bytes` in all.
    pub fn resize(&mut self, bytes: usize) -> Result<(), SqlError> {
        if bytes >= self.bytes {
            self.grow(bytes - self.bytes)
        } else {
            self.shrink(self.bytes - bytes);
            Ok(())
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.release(self.held);
        }
    }
}

/// Bytes a value holds, as accounted (the enum itself plus its text or blob).
pub(crate) fn value_bytes(v: &Value) -> usize {
    std::mem::size_of::<Value>()
        + match v {
            Value::Text(t) => t.len(),
            Value::Blob(b) => b.len(),
            _ => 0,
        }
}

/// Bytes a row holds, as accounted.
pub(crate) fn row_bytes(row: &[Value]) -> usize {
    std::mem::size_of::<Vec<Value>>() + row.iter().map(value_bytes).sum::<usize>()
}

/// Bytes a hash-table entry costs beyond its key and value (control bytes, load factor).
pub(crate) const HASH_ENTRY_OVERHEAD_BYTES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_return_their_bytes_when_dropped() {
        let pool = MemoryPool::new(1 << 20);
        let opts = ExecOptions { statement_memory_bytes_max: 200_000, pool: pool.clone(), ..ExecOptions::default() };
        let limits = Limits::new(&opts);
        let mut a = limits.reservation();
        a.grow(100_000).expect("within the budget");
        let mut b = limits.reservation();
        assert!(matches!(b.grow(150_000), Err(SqlError::MemoryBudget { limit_bytes: 200_000 })));
        b.grow(50_000).expect("what is left");
        assert!(pool.reserved_bytes() >= 150_000);
        a.shrink(100_000);
        drop((a, b));
        assert_eq!(pool.reserved_bytes(), 0);
    }

    #[test]
    fn the_pool_bounds_statements_together() {
        let pool = MemoryPool::new(100_000);
        let opts = ExecOptions { statement_memory_bytes_max: 80_000, pool: pool.clone(), ..ExecOptions::default() };
        let (one, two) = (Limits::new(&opts), Limits::new(&opts));
        let mut a = one.reservation();
        a.grow(60_000).expect("first statement");
        let mut b = two.reservation();
        assert!(matches!(b.grow(60_000), Err(SqlError::NodeMemoryBudget { limit_bytes: 100_000 })));
        drop(a);
        b.grow(60_000).expect("the first one is done");
    }

    #[test]
    fn the_first_cause_is_reported() {
        let interrupt = Interrupt::new();
        assert!(interrupt.check().is_ok());
        interrupt.interrupt(InterruptCause::ClientGone);
        interrupt.interrupt(InterruptCause::Shutdown);
        assert_eq!(interrupt.cause(), Some(InterruptCause::ClientGone));
        assert!(matches!(interrupt.check(), Err(SqlError::Interrupted(InterruptCause::ClientGone))));
    }
}
