//! Liveness and readiness of the processing loop, for Kubernetes probes.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// What the probes read; the processing loop writes it.
#[derive(Debug, Default)]
pub struct Health {
    heartbeat_ms: AtomicI64,
    ready: AtomicBool,
    failed: AtomicBool,
}

impl Health {
    /// The loop is alive at `now_ms`.
    pub fn beat(&self, now_ms: i64) {
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether every assigned partition is restored and being processed.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The loop stopped with a fatal error.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Alive: not failed, and the loop beat within `max_silence_ms` of `now_ms`.
    pub fn is_alive(&self, now_ms: i64, max_silence_ms: i64) -> bool {
        !self.failed.load(Ordering::Relaxed)
            && now_ms - self.heartbeat_ms.load(Ordering::Relaxed) <= max_silence_ms
    }

    /// Ready: alive in spirit and all assigned partitions restored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stopped_beating_is_not_alive() {
        let h = Health::default();
        h.beat(1000);
        assert!(h.is_alive(1500, 1000));
        assert!(h.is_alive(2000, 1000));
        assert!(!h.is_alive(2001, 1000));
    }

    #[test]
    fn a_failed_loop_is_neither_alive_nor_ready() {
        let h = Health::default();
        h.beat(1000);
        h.set_ready(true);
        assert!(h.is_ready());
        h.set_failed();
        assert!(!h.is_alive(1000, 1000));
        assert!(!h.is_ready());
    }
}
