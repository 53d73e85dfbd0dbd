//! The one clock of the process: decisions, parking deadlines, retention, liveness and the
//! transactional-call watchdog all read time through it, so tests can move it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The time decisions, parking deadlines and retention are measured in (ms since the Unix epoch).
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// The wall clock now, in ms since the Unix epoch.
pub fn wall_clock_ms() -> i64 {
    SystemClock.now_ms()
}
