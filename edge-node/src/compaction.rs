//! The daemon's log compaction driver (docs/design.md § "Log compaction"), which also
//! runs the background document save (§ "Document save") after the log steps.
//!
//! Every [`COMPACT_INTERVAL`] it runs bounded steps on the replica's owner thread: each
//! step removes at most [`COMPACT_STEP_ENTRIES`] log entries in one short durable
//! transaction, and is its own request to the owner, so writes and applies queued
//! meanwhile run between two steps and never wait for more than one. At most
//! [`COMPACT_STEPS_PER_TICK`] steps run per tick, so a long log is worked off over several
//! seconds while the owner stays mostly free for writers.
//!
//! After the log steps of a tick come at most [`EXPIRE_STEPS_PER_TICK`] retention steps
//! of at most [`EXPIRE_STEP_BLOCKS`] blocks each (append-only tables' rows older than
//! their retention or over their `max_bytes`, on the wall clock), then at most [`SAVE_STEPS_PER_TICK`] document-save
//! steps of at most [`SAVE_STEP_DOCS`] documents each, again one owner request and one
//! durable transaction per step; once a pass found nothing left to save they return at
//! once until a document's tail grows again.
//!
//! The target is computed on the owner thread from the replica: its causal-stability
//! horizon (`Replica::horizon`, docs/design.md § "Causal-stability horizon"), on the sync
//! node's clock (the one its held vectors' last-heard times are in), with the configured
//! `lifecycle.peer_horizon`. The fault-injection route (`POST /v1/debug/compact`) sets
//! the step size and "up to the node's own vector" (safe only for a node alone), for the
//! end-to-end tests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgestore::{CompactReport, Replica, ReplicaHandle, StorageError, VersionVector};

/// How often the driver wakes.
pub const COMPACT_INTERVAL: Duration = Duration::from_secs(1);
/// Log entries removed per step, at most: the longest a queued writer waits behind
/// compaction is one such step (README "Storage and memory" has the measured pause).
pub const COMPACT_STEP_ENTRIES: usize = 256;
/// Steps per tick, at most.
pub const COMPACT_STEPS_PER_TICK: usize = 64;

/// Blocks removed per retention step, at most (docs/design.md § "Retention, the budget
/// and the floor"): a bucket removed whole costs no decoding, a bucket cut by the bound
/// has each removed block taken out of the digest.
pub const EXPIRE_STEP_BLOCKS: usize = 256;
/// Retention steps per tick, at most.
pub const EXPIRE_STEPS_PER_TICK: usize = 16;

/// Documents saved per document-save step, at most.
pub const SAVE_STEP_DOCS: usize = 128;
/// Document-save steps per tick, at most.
pub const SAVE_STEPS_PER_TICK: usize = 16;

/// The clock the horizon is asked with.
type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// The driver's settings and what it did, shared with the API (metrics, debug route).
pub struct Compaction {
    /// The sync node's clock, ms.
    clock: Clock,
    /// Members unheard for longer stop holding the horizon back.
    peer_horizon_ms: u64,
    /// Compact up to the node's own vector (fault-injection route only).
    to_vector: AtomicBool,
    /// Entries per step.
    step_entries: AtomicUsize,
    /// Log entries removed since the node started.
    pub entries: AtomicU64,
    /// Bytes of the removed envelopes.
    pub bytes: AtomicU64,
    /// Steps that removed something.
    pub steps: AtomicU64,
    /// Steps that failed (other than on a faulted store, which the store health reports).
    pub failures: AtomicU64,
    /// Documents saved whole by the background document save.
    pub docs_saved: AtomicU64,
    /// Bytes those saves freed: tails and old snapshots removed minus snapshots written.
    pub docs_saved_bytes_freed: AtomicU64,
    /// The longest step so far, in microseconds, measured around the owner thread's
    /// round trip: what a writer queued behind a step waits at most, roughly.
    pub step_us_max: AtomicU64,
    /// Rows of append-only tables removed by retention or `max_bytes`.
    pub expired_rows: AtomicU64,
    /// Bytes of the blocks removed.
    pub expired_bytes: AtomicU64,
    /// The longest retention step so far, in microseconds (as `step_us_max`).
    pub expire_step_us_max: AtomicU64,
}

impl std::fmt::Debug for Compaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compaction").field("peer_horizon_ms", &self.peer_horizon_ms).finish_non_exhaustive()
    }
}

impl Compaction {
    /// A driver that compacts up to the horizon at `clock()` (the sync node's clock).
    pub fn new(clock: impl Fn() -> u64 + Send + Sync + 'static, peer_horizon_ms: u64) -> Compaction {
        Compaction {
            clock: Box::new(clock),
            peer_horizon_ms,
            to_vector: AtomicBool::new(false),
            step_entries: AtomicUsize::new(COMPACT_STEP_ENTRIES),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            docs_saved: AtomicU64::new(0),
            docs_saved_bytes_freed: AtomicU64::new(0),
            step_us_max: AtomicU64::new(0),
            expired_rows: AtomicU64::new(0),
            expired_bytes: AtomicU64::new(0),
            expire_step_us_max: AtomicU64::new(0),
        }
    }

    /// Fault injection: compact up to the node's own version vector, `step_entries` per
    /// step. Safe only for a node alone (no member can lack anything it holds).
    pub fn compact_to_vector(&self, step_entries: usize) {
        assert!(step_entries > 0, "a step removes at least one entry");
        self.step_entries.store(step_entries, Ordering::Relaxed);
        self.to_vector.store(true, Ordering::Relaxed);
    }

    /// The target of a step, computed on the owner thread.
    fn target(&self, replica: &Replica) -> VersionVector {
        if self.to_vector.load(Ordering::Relaxed) {
            replica.version_vector().clone()
        } else {
            replica.horizon((self.clock)(), self.peer_horizon_ms).vector
        }
    }

    /// Log steps, then retention steps, then document-save steps. `Err` only when the
    /// owner thread has stopped.
    fn tick(self: &Arc<Compaction>, handle: &ReplicaHandle) -> Result<(), StorageError> {
        self.log_steps(handle)?;
        self.expire_steps(handle)?;
        self.save_steps(handle)
    }

    /// Runs up to [`EXPIRE_STEPS_PER_TICK`] retention steps at the wall clock's time,
    /// until nothing is left below any append-only table's floor.
    fn expire_steps(&self, handle: &ReplicaHandle) -> Result<(), StorageError> {
        for _ in 0..EXPIRE_STEPS_PER_TICK {
            let started = Instant::now();
            let outcome = handle.expire_append_step(crate::clock::now_ms(), EXPIRE_STEP_BLOCKS);
            let step_us = started.elapsed().as_micros() as u64;
            match outcome {
                Ok(report) => {
                    if report.blocks_removed > 0 {
                        self.expired_rows.fetch_add(report.rows_removed, Ordering::Relaxed);
                        self.expired_bytes.fetch_add(report.bytes_removed, Ordering::Relaxed);
                        self.expire_step_us_max.fetch_max(step_us, Ordering::Relaxed);
                        tracing::debug!(
                            blocks = report.blocks_removed,
                            rows = report.rows_removed,
                            bytes = report.bytes_removed,
                            step_us,
                            "append-only rows expired"
                        );
                    }
                    if report.complete {
                        return Ok(());
                    }
                }
                Err(error) => return self.failed(error, "retention failed"),
            }
        }
        Ok(())
    }

    /// Runs up to [`COMPACT_STEPS_PER_TICK`] steps, until the log holds nothing at or
    /// below the target.
    fn log_steps(self: &Arc<Compaction>, handle: &ReplicaHandle) -> Result<(), StorageError> {
        for _ in 0..COMPACT_STEPS_PER_TICK {
            let compaction = Arc::clone(self);
            let started = Instant::now();
            let outcome = handle
                .compact_log_step(move |replica| compaction.target(replica), self.step_entries.load(Ordering::Relaxed));
            let step_us = started.elapsed().as_micros() as u64;
            match outcome {
                Ok(report) => {
                    self.record(&report, step_us);
                    if report.complete {
                        return Ok(());
                    }
                }
                Err(error) => return self.failed(error, "log compaction failed"),
            }
        }
        Ok(())
    }

    /// Runs up to [`SAVE_STEPS_PER_TICK`] document-save steps, until nothing is left to save.
    fn save_steps(&self, handle: &ReplicaHandle) -> Result<(), StorageError> {
        for _ in 0..SAVE_STEPS_PER_TICK {
            match handle.save_docs_step(SAVE_STEP_DOCS) {
                Ok(report) => {
                    self.docs_saved.fetch_add(report.docs_saved, Ordering::Relaxed);
                    let freed = report.bytes_before.saturating_sub(report.bytes_after);
                    self.docs_saved_bytes_freed.fetch_add(freed, Ordering::Relaxed);
                    if report.complete {
                        return Ok(());
                    }
                }
                Err(error) => return self.failed(error, "document save failed"),
            }
        }
        Ok(())
    }

    /// A step failed: `Err` if the owner stopped; a faulted or low-disk store is reported
    /// by the store health, and the next tick tries again; anything else is counted.
    fn failed(&self, error: StorageError, what: &'static str) -> Result<(), StorageError> {
        match error {
            StorageError::Stopped => Err(StorageError::Stopped),
            StorageError::Unavailable(_) => Ok(()),
            error => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the 1st, 2nd, 4th, 8th... failure: a lasting one does not
                // flood the log once a second.
                if failures.is_power_of_two() {
                    tracing::error!(%error, failures, "{what}");
                }
                Ok(())
            }
        }
    }

    fn record(&self, report: &CompactReport, step_us: u64) {
        if report.entries_removed == 0 {
            return;
        }
        self.entries.fetch_add(report.entries_removed, Ordering::Relaxed);
        self.bytes.fetch_add(report.bytes_removed, Ordering::Relaxed);
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_us_max.fetch_max(step_us, Ordering::Relaxed);
        tracing::debug!(
            entries = report.entries_removed,
            bytes = report.bytes_removed,
            floor_changes = report.floor.total_changes(),
            step_us,
            "log compacted"
        );
    }
}

/// Steps compaction every [`COMPACT_INTERVAL`] until the owner thread stops.
pub async fn drive(handle: ReplicaHandle, compaction: Arc<Compaction>) {
    let mut interval = tokio::time::interval(COMPACT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (handle, compaction) = (handle.clone(), Arc::clone(&compaction));
        match tokio::task::spawn_blocking(move || compaction.tick(&handle)).await {
            Ok(Ok(())) => {}
            // The owner thread stopped, or the runtime is shutting down.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}
