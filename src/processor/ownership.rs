//! Which partitions of the requests topic this instance owns, as an explicit state machine:
//! assigned → restoring → owned → revoked or lost (gone from the map). Pure: the processor feeds
//! it the consumer's rebalance events and the restores' results, and asks it what to do.
//!
//! "Restoring" is whatever makes a partition's state current before its requests are decided
//! (today: reading the state topic from its beginning under the restore rule); "owned" partitions
//! are decided in one transaction per batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where one assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Assigned and paused while restore job `job` makes its state current.
    Restoring {
        /// The restore job; a result of any other job is stale.
        job: u64,
        /// The next offset this instance committed for it, when it is catching up a partition
        /// it owned (its local store fell behind); `None` for a new assignment.
        committed: Option<i64>,
    },
    /// Restored and resumed: its requests are decided.
    Owned {
        /// When it was resumed, until the consumer is known to fetch it (`None` once it does).
        unfetched_since: Option<Instant>,
        /// The next offset this instance committed for it since it owns it (`None` before its
        /// first commit): a record below it was decided already.
        committed: Option<i64>,
    },
}

/// The partitions this instance was assigned and what each is doing.
#[derive(Debug, Default)]
pub struct Ownership {
    partitions: BTreeMap<i32, PartitionState>,
    jobs: u64,
    assigned_once: bool,
}

impl Ownership {
    /// Nothing assigned yet.
    pub fn new() -> Ownership {
        Ownership::default()
    }

    /// Partitions were assigned: those not already restoring or owned start restoring under a
    /// new job, returned with them (`None` when there is nothing new to restore).
    pub fn assigned(&mut self, partitions: &[i32]) -> Option<(u64, Vec<i32>)> {
        self.assigned_once = true;
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        if new.is_empty() {
            return None;
        }
        self.jobs += 1;
        for p in &new {
            self.partitions.insert(
                *p,
                PartitionState::Restoring {
                    job: self.jobs,
                    committed: None,
                },
            );
        }
        Some((self.jobs, new))
    }

    /// Owned partitions whose local store fell behind their committed state (a store write
    /// failed): they restore again, from their store's checkpoint, under a new job returned with
    /// them (`None` when none of them is owned). What this instance committed is remembered.
    pub fn catch_up(&mut self, partitions: &[i32]) -> Option<(u64, Vec<i32>)> {
        let job = self.jobs + 1;
        let mut caught = Vec::new();
        for p in partitions {
            if let Some(state) = self.partitions.get_mut(p) {
                if let PartitionState::Owned { committed, .. } = *state {
                    *state = PartitionState::Restoring { job, committed };
                    caught.push(*p);
                }
            }
        }
        if caught.is_empty() {
            return None;
        }
        self.jobs = job;
        Some((job, caught))
    }

    /// The next offset this instance committed for the partition since it was assigned.
    pub fn committed_offset(&self, partition: i32) -> Option<i64> {
        match self.partitions.get(&partition)? {
            PartitionState::Restoring { committed, .. }
            | PartitionState::Owned { committed, .. } => *committed,
        }
    }

    /// Partitions were revoked or lost: they are forgotten, whatever they were doing (a restore
    /// still running for them will be stale).
    pub fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// Restore job `job` finished `partition`: true when that is still current, and the partition
    /// is now owned (resumed at `now`); false for a stale result (the partition was revoked, or
    /// assigned again to a newer job, and another instance may have written to it since).
    pub fn restored(&mut self, partition: i32, job: u64, now: Instant) -> bool {
        match self.partitions.get_mut(&partition) {
            Some(state) => match *state {
                PartitionState::Restoring {
                    job: current,
                    committed,
                } if current == job => {
                    *state = PartitionState::Owned {
                        unfetched_since: Some(now),
                        committed,
                    };
                    true
                }
                _ => false,
            },
            None => false,
        }
    }

    /// Whether the partition's requests are decided here now.
    pub fn owns(&self, partition: i32) -> bool {
        matches!(
            self.partitions.get(&partition),
            Some(PartitionState::Owned { .. })
        )
    }

    /// The partition's state, if assigned.
    pub fn state(&self, partition: i32) -> Option<PartitionState> {
        self.partitions.get(&partition).copied()
    }

    /// Partitions being restored.
    pub fn restoring(&self) -> usize {
        self.partitions
            .values()
            .filter(|s| matches!(s, PartitionState::Restoring { .. }))
            .count()
    }

    /// Partitions assigned (restoring or owned).
    pub fn assigned_count(&self) -> usize {
        self.partitions.len()
    }

    /// Ready to serve: an assignment came, and nothing assigned is still restoring.
    pub fn is_ready(&self) -> bool {
        self.assigned_once && self.restoring() == 0
    }

    /// A transaction committed these next offsets of owned partitions.
    pub fn committed(&mut self, next_offsets: &BTreeMap<i32, i64>) {
        for (partition, &next) in next_offsets {
            if let Some(PartitionState::Owned { committed, .. }) =
                self.partitions.get_mut(partition)
            {
                *committed = Some(committed.map_or(next, |c| c.max(next)));
            }
        }
    }

    /// Whether a record at `offset` of an owned partition was decided in a transaction this
    /// instance committed. The consumer should never deliver one; librdkafka can, when a seek
    /// or a pause meets an assignment still starting, and deciding it again would answer twice.
    pub fn already_decided(&self, partition: i32, offset: i64) -> bool {
        matches!(
            self.partitions.get(&partition),
            Some(PartitionState::Owned { committed: Some(next), .. }) if offset < *next
        )
    }

    /// The consumer has a position for the partition: it fetches it.
    pub fn fetched(&mut self, partition: i32) {
        if let Some(PartitionState::Owned {
            unfetched_since, ..
        }) = self.partitions.get_mut(&partition)
        {
            *unfetched_since = None;
        }
    }

    /// Whether any owned partition is not yet known to be fetched.
    pub fn any_unfetched(&self) -> bool {
        self.partitions.values().any(|s| {
            matches!(
                s,
                PartitionState::Owned {
                    unfetched_since: Some(_),
                    ..
                }
            )
        })
    }

    /// Owned partitions not known to be fetched for at least `limit` at `now`, with how long.
    pub fn unfetched_for(&self, limit: Duration, now: Instant) -> Vec<(i32, Duration)> {
        self.partitions
            .iter()
            .filter_map(|(p, s)| match s {
                PartitionState::Owned {
                    unfetched_since: Some(since),
                    ..
                } => Some((*p, now.saturating_duration_since(*since))),
                _ => None,
            })
            .filter(|(_, waited)| *waited >= limit)
            .collect()
    }

    /// Looks at an unfetched partition again after another `limit` (it was idle, not stuck).
    pub fn recheck_later(&mut self, partition: i32, now: Instant) {
        if let Some(PartitionState::Owned {
            unfetched_since, ..
        }) = self.partitions.get_mut(&partition)
        {
            if unfetched_since.is_some() {
                *unfetched_since = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_partitions_restore_under_a_new_job_then_are_owned() {
        let mut ownership = Ownership::new();
        assert!(!ownership.is_ready(), "nothing assigned yet");
        let (job, partitions) = ownership.assigned(&[0, 1]).unwrap();
        assert_eq!(partitions, vec![0, 1]);
        assert_eq!(ownership.restoring(), 2);
        assert!(!ownership.owns(0));
        assert!(!ownership.is_ready());
        let now = Instant::now();
        assert!(ownership.restored(0, job, now));
        assert!(ownership.owns(0));
        assert!(!ownership.is_ready(), "1 still restoring");
        assert!(ownership.restored(1, job, now));
        assert!(ownership.is_ready());
        assert_eq!(ownership.assigned_count(), 2);
    }

    #[test]
    fn an_assignment_of_partitions_already_held_starts_no_restore() {
        let mut ownership = Ownership::new();
        let (job, _) = ownership.assigned(&[0]).unwrap();
        assert_eq!(ownership.assigned(&[0]), None, "still restoring");
        ownership.restored(0, job, Instant::now());
        assert_eq!(ownership.assigned(&[0]), None, "owned");
        let (second, new) = ownership.assigned(&[0, 2]).unwrap();
        assert_eq!(new, vec![2]);
        assert!(second > job);
    }

    #[test]
    fn a_restore_of_a_revoked_or_reassigned_partition_is_stale() {
        let mut ownership = Ownership::new();
        let (first, _) = ownership.assigned(&[3]).unwrap();
        ownership.revoked(&[3]);
        assert!(!ownership.restored(3, first, Instant::now()), "revoked");
        assert!(!ownership.owns(3));
        let (second, _) = ownership.assigned(&[3]).unwrap();
        assert!(
            !ownership.restored(3, first, Instant::now()),
            "an older job's result"
        );
        assert!(ownership.restored(3, second, Instant::now()));
        assert!(!ownership.restored(3, second, Instant::now()), "only once");
        ownership.revoked(&[3]);
        assert_eq!(ownership.state(3), None);
        assert!(ownership.is_ready(), "assigned once, nothing restoring");
    }

    #[test]
    fn a_record_below_the_offset_this_owner_committed_was_decided_already() {
        let mut ownership = Ownership::new();
        let (job, _) = ownership.assigned(&[0, 1]).unwrap();
        ownership.restored(0, job, Instant::now());
        assert!(!ownership.already_decided(0, 0), "nothing committed yet");
        ownership.committed(&BTreeMap::from([(0, 40), (1, 7)]));
        assert!(ownership.already_decided(0, 0));
        assert!(ownership.already_decided(0, 39));
        assert!(!ownership.already_decided(0, 40), "the next record");
        assert!(
            !ownership.already_decided(1, 0),
            "1 is restoring, not owned"
        );
        ownership.committed(&BTreeMap::from([(0, 30)]));
        assert!(
            ownership.already_decided(0, 39),
            "a commit never moves it back"
        );
        ownership.revoked(&[0]);
        let (again, _) = ownership.assigned(&[0]).unwrap();
        ownership.restored(0, again, Instant::now());
        assert!(
            !ownership.already_decided(0, 0),
            "owned anew: its committed offset is where the consumer starts"
        );
    }

    #[test]
    fn a_partition_caught_up_restores_under_a_new_job_and_keeps_what_it_committed() {
        let mut ownership = Ownership::new();
        let (job, _) = ownership.assigned(&[0, 1, 2]).unwrap();
        ownership.restored(0, job, Instant::now());
        ownership.restored(1, job, Instant::now());
        ownership.committed(&BTreeMap::from([(0, 40)]));
        assert_eq!(
            ownership.catch_up(&[0, 2, 7]),
            Some((job + 1, vec![0])),
            "only owned partitions catch up (2 restores already, 7 is not assigned)"
        );
        assert!(!ownership.owns(0));
        assert!(!ownership.is_ready());
        assert_eq!(ownership.committed_offset(0), Some(40));
        assert!(
            !ownership.restored(0, job, Instant::now()),
            "the old job is stale"
        );
        assert!(ownership.restored(0, job + 1, Instant::now()));
        assert!(
            ownership.already_decided(0, 39),
            "what it committed before the catch-up stays decided"
        );
        assert_eq!(ownership.catch_up(&[2]), None);
    }

    #[test]
    fn an_owned_partition_is_unfetched_until_the_consumer_has_a_position_for_it() {
        let mut ownership = Ownership::new();
        let (job, _) = ownership.assigned(&[0, 1]).unwrap();
        let start = Instant::now();
        ownership.restored(0, job, start);
        ownership.restored(1, job, start);
        assert!(ownership.any_unfetched());
        ownership.fetched(0);
        let later = start + Duration::from_secs(61);
        assert_eq!(
            ownership.unfetched_for(Duration::from_secs(60), later),
            vec![(1, Duration::from_secs(61))]
        );
        ownership.recheck_later(1, later);
        assert_eq!(
            ownership.unfetched_for(Duration::from_secs(60), later),
            vec![]
        );
        ownership.fetched(1);
        assert!(!ownership.any_unfetched());
        ownership.recheck_later(1, later);
        assert!(
            !ownership.any_unfetched(),
            "a fetched partition stays fetched"
        );
    }
}
