//! Failpoints for crash, zombie and health tests: faults injected at named points of a batch's
//! transaction. They exist only in builds with the cargo feature `failpoints` (`make test` and
//! `make chaos` turn it on); a release build has none, and `ORDERFLOW_FAILPOINT` only earns it a
//! warning.
//!
//! `ORDERFLOW_FAILPOINT` holds one or more, separated by commas:
//! - `kill-before-commit:N` sends SIGKILL to this process after producing the N-th batch, before
//!   committing it;
//! - `stall-before-commit:N` blocks the processing loop there for good (a stuck loop);
//! - `abort-before-commit:N` fails the N-th batch's transaction once with an abortable error;
//! - `freeze-after-offsets:N:MS` stops the whole process (SIGSTOP, as a long GC pause or a frozen
//!   VM would) for MS milliseconds after the N-th batch's offsets were sent to its transaction and
//!   before it is committed;
//! - `redeliver-after-commit:N` moves the consumer back to the start of every owned partition
//!   after the N-th batch committed, as librdkafka once did after a rewind (the consumer then
//!   delivers records this instance decided already);
//! - `kill-before-store:N` sends SIGKILL to this process after the N-th batch committed, before
//!   its changes reach the local store (disk backend);
//! - `fail-store-write:N` makes the local store's write of the N-th batch fail, as a full disk
//!   would, after the batch committed;
//! - `hang-in-commit:N:MS` makes the N-th batch's commit a transactional call that does not return
//!   for MS milliseconds (as librdkafka's calls can when a coordinator's broker dies), for the
//!   watchdog to find.

#[cfg(feature = "failpoints")]
use std::time::Duration;

use crate::kafka::{CallWatch, TxnError};

/// The failpoints of one processor.
#[derive(Debug, Default)]
pub struct Failpoints {
    #[cfg(feature = "failpoints")]
    actions: Vec<(FailAction, u64)>,
    /// Whether the abort fired: the redone batch has the same number and must commit.
    #[cfg(feature = "failpoints")]
    aborted: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAction {
    Kill,
    Stall,
    Abort,
    Freeze(Duration),
    Hang(Duration),
    Redeliver,
    KillBeforeStore,
    FailStoreWrite,
}

impl Failpoints {
    /// The failpoints named by `ORDERFLOW_FAILPOINT`.
    pub fn from_env() -> Failpoints {
        Failpoints::parse(std::env::var("ORDERFLOW_FAILPOINT").ok().as_deref())
    }

    /// Failpoints from their text (see the module documentation); unknown ones are ignored.
    #[cfg(not(feature = "failpoints"))]
    pub fn parse(value: Option<&str>) -> Failpoints {
        if value.is_some_and(|v| !v.is_empty()) {
            tracing::warn!(
                "ORDERFLOW_FAILPOINT is set, but this build has no failpoints (cargo feature `failpoints`); ignored"
            );
        }
        Failpoints::default()
    }

    /// Runs after the batch's records were delivered, before its offsets are sent.
    #[cfg(not(feature = "failpoints"))]
    pub fn before_commit(&self, _batch_number: u64) -> Result<(), TxnError> {
        Ok(())
    }

    /// Runs after the batch's offsets were sent to its transaction, before it is committed.
    #[cfg(not(feature = "failpoints"))]
    pub fn after_offsets(&self, _batch_number: u64) {}

    /// Runs as the batch's commit starts, inside the transactional-call watch.
    #[cfg(not(feature = "failpoints"))]
    pub fn in_commit(&self, _batch_number: u64, _calls: &CallWatch) {}

    /// Whether to move the consumer back to its partitions' start after this batch committed.
    #[cfg(not(feature = "failpoints"))]
    pub fn redeliver_after_commit(&self, _batch_number: u64) -> bool {
        false
    }

    /// Runs after the batch committed, before its changes are written to the local store:
    /// true when that write is to fail.
    #[cfg(not(feature = "failpoints"))]
    pub fn before_store_write(&self, _batch_number: u64) -> bool {
        false
    }

    /// Failpoints from their text (see the module documentation); unknown ones are ignored.
    #[cfg(feature = "failpoints")]
    pub fn parse(value: Option<&str>) -> Failpoints {
        let parse_one = |v: &str| {
            let mut parts = v.split(':');
            let name = parts.next()?;
            let batch: u64 = parts.next()?.parse().ok()?;
            let millis = |ms: &str| ms.parse().ok().map(Duration::from_millis);
            let action = match (name, parts.next()) {
                ("kill-before-commit", None) => FailAction::Kill,
                ("stall-before-commit", None) => FailAction::Stall,
                ("abort-before-commit", None) => FailAction::Abort,
                ("freeze-after-offsets", Some(ms)) => FailAction::Freeze(millis(ms)?),
                ("hang-in-commit", Some(ms)) => FailAction::Hang(millis(ms)?),
                ("redeliver-after-commit", None) => FailAction::Redeliver,
                ("kill-before-store", None) => FailAction::KillBeforeStore,
                ("fail-store-write", None) => FailAction::FailStoreWrite,
                _ => return None,
            };
            parts.next().is_none().then_some((action, batch))
        };
        let actions: Vec<(FailAction, u64)> = value
            .into_iter()
            .flat_map(|v| v.split(','))
            .filter(|v| !v.is_empty())
            .filter_map(|v| {
                let parsed = parse_one(v);
                if parsed.is_none() {
                    tracing::warn!(failpoint = v, "unknown failpoint; ignored");
                }
                parsed
            })
            .collect();
        Failpoints {
            actions,
            aborted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[cfg(feature = "failpoints")]
    fn action(
        &self,
        batch_number: u64,
        wanted: impl Fn(&FailAction) -> bool,
    ) -> Option<FailAction> {
        self.actions
            .iter()
            .find(|(action, n)| *n == batch_number && wanted(action))
            .map(|(action, _)| *action)
    }

    /// Runs after the batch's records were delivered, before its offsets are sent.
    #[cfg(feature = "failpoints")]
    pub fn before_commit(&self, batch_number: u64) -> Result<(), TxnError> {
        use std::sync::atomic::Ordering;
        let action = self.action(batch_number, |a| {
            matches!(a, FailAction::Kill | FailAction::Stall | FailAction::Abort)
        });
        match action {
            Some(FailAction::Abort) if !self.aborted.swap(true, Ordering::Relaxed) => {
                tracing::warn!(batch_number, "failpoint abort-before-commit");
                return Err(TxnError {
                    operation: "failpoint abort-before-commit",
                    class: crate::kafka::ErrorClass::Abortable,
                    source: rdkafka::error::KafkaError::Canceled,
                });
            }
            Some(FailAction::Kill) => {
                tracing::warn!(batch_number, "failpoint kill-before-commit: SIGKILL");
                // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
            Some(FailAction::Stall) => {
                tracing::warn!(
                    batch_number,
                    "failpoint stall-before-commit: the loop stops here"
                );
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs after the batch's offsets were sent to its transaction, before it is committed.
    #[cfg(feature = "failpoints")]
    pub fn after_offsets(&self, batch_number: u64) {
        let Some(FailAction::Freeze(pause)) =
            self.action(batch_number, |a| matches!(a, FailAction::Freeze(_)))
        else {
            return;
        };
        tracing::warn!(
            batch_number,
            pause_ms = pause.as_millis() as u64,
            "failpoint freeze-after-offsets: SIGSTOP"
        );
        // A stopped process cannot wake itself: a child sends the SIGCONT.
        let waker = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {:.3}; kill -CONT {}",
                pause.as_secs_f64(),
                std::process::id()
            ))
            .spawn();
        match waker {
            Ok(mut waker) => {
                // SAFETY: raise(3) has no memory-safety preconditions.
                unsafe {
                    libc::raise(libc::SIGSTOP);
                }
                let _ = waker.wait();
                tracing::warn!(batch_number, "failpoint freeze-after-offsets: woke up");
            }
            Err(e) => tracing::error!(error = %e, "failpoint freeze-after-offsets: no waker"),
        }
    }

    /// Runs as the batch's commit starts, inside the transactional-call watch.
    #[cfg(feature = "failpoints")]
    pub fn in_commit(&self, batch_number: u64, calls: &CallWatch) {
        let Some(FailAction::Hang(hang)) =
            self.action(batch_number, |a| matches!(a, FailAction::Hang(_)))
        else {
            return;
        };
        tracing::warn!(
            batch_number,
            hang_ms = hang.as_millis() as u64,
            "failpoint hang-in-commit"
        );
        calls.enter("commit_transaction", crate::clock::wall_clock_ms());
        std::thread::sleep(hang);
        calls.leave();
    }
}

impl Failpoints {
    /// Whether to move the consumer back to its partitions' start after this batch committed.
    #[cfg(feature = "failpoints")]
    pub fn redeliver_after_commit(&self, batch_number: u64) -> bool {
        let fire = self
            .action(batch_number, |a| *a == FailAction::Redeliver)
            .is_some();
        if fire {
            tracing::warn!(
                batch_number,
                "failpoint redeliver-after-commit: the consumer goes back to its partitions' start"
            );
        }
        fire
    }

    /// Runs after the batch committed, before its changes are written to the local store:
    /// true when that write is to fail.
    #[cfg(feature = "failpoints")]
    pub fn before_store_write(&self, batch_number: u64) -> bool {
        if self
            .action(batch_number, |a| *a == FailAction::FailStoreWrite)
            .is_some()
        {
            tracing::warn!(
                batch_number,
                "failpoint fail-store-write: the store write fails"
            );
            return true;
        }
        if self
            .action(batch_number, |a| *a == FailAction::KillBeforeStore)
            .is_some()
        {
            tracing::warn!(batch_number, "failpoint kill-before-store: SIGKILL");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        false
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn the_abort_failpoint_fails_its_batch_once_so_the_redone_batch_commits() {
        let failpoint = Failpoints::parse(Some("abort-before-commit:2"));
        assert!(failpoint.before_commit(1).is_ok());
        let error = failpoint.before_commit(2).unwrap_err();
        assert_eq!(error.class, crate::kafka::ErrorClass::Abortable);
        assert!(failpoint.before_commit(2).is_ok(), "the redone batch 2");
    }

    #[test]
    fn failpoints_parse_their_action_and_batch_and_ignore_anything_else() {
        let actions = |v: &str| Failpoints::parse(Some(v)).actions;
        assert_eq!(actions("kill-before-commit:3"), vec![(FailAction::Kill, 3)]);
        assert_eq!(
            actions("stall-before-commit:1"),
            vec![(FailAction::Stall, 1)]
        );
        assert_eq!(
            actions("abort-before-commit:2"),
            vec![(FailAction::Abort, 2)]
        );
        assert_eq!(
            actions("redeliver-after-commit:5"),
            vec![(FailAction::Redeliver, 5)]
        );
        assert_eq!(
            actions("fail-store-write:3"),
            vec![(FailAction::FailStoreWrite, 3)]
        );
        assert_eq!(
            actions("freeze-after-offsets:4:7500,hang-in-commit:9:100"),
            vec![
                (FailAction::Freeze(Duration::from_millis(7500)), 4),
                (FailAction::Hang(Duration::from_millis(100)), 9)
            ]
        );
        for ignored in [
            "",
            "stall-before-commit",
            "nap:1",
            "kill-before-commit:x",
            "kill-before-commit:1:2",
            "freeze-after-offsets:4",
            "freeze-after-offsets:4:soon",
        ] {
            assert_eq!(actions(ignored), vec![], "{ignored:?}");
        }
        assert_eq!(Failpoints::parse(None).actions, vec![]);
    }

    #[test]
    fn a_freeze_or_hang_failpoint_fires_only_at_its_point_and_batch() {
        let failpoint =
            Failpoints::parse(Some("freeze-after-offsets:1:60000,hang-in-commit:1:60000"));
        // Elsewhere or in another batch each returns at once (firing would stop this test for a
        // minute).
        assert!(failpoint.before_commit(1).is_ok());
        failpoint.after_offsets(2);
        failpoint.in_commit(2, &CallWatch::new());
    }

    #[test]
    fn a_hang_in_commit_is_a_transactional_call_in_progress() {
        let calls = std::sync::Arc::new(CallWatch::new());
        let failpoint = Failpoints::parse(Some("hang-in-commit:3:300"));
        let watched = std::sync::Arc::clone(&calls);
        let hanging = std::thread::spawn(move || failpoint.in_commit(3, &watched));
        std::thread::sleep(Duration::from_millis(150));
        let now = crate::clock::wall_clock_ms();
        assert_eq!(
            calls.overdue(now, 50).map(|(operation, _)| operation),
            Some("commit_transaction")
        );
        hanging.join().unwrap();
        assert_eq!(calls.overdue(crate::clock::wall_clock_ms(), 50), None);
    }
}
