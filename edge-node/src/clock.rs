//! The wall clock: the library takes the time as a parameter (STYLE.md); the binary
//! passes it this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the commit time of writes made here.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
