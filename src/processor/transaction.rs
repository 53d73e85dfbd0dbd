//! Running one Kafka transaction the way orderflow does: begin, send the records, wait for their
//! deliveries, send the consumer's offsets, commit. On an abortable failure it aborts and backs
//! off; when the producer became unusable (but was not fenced) a new one takes over. The
//! processor and the benchmark's exactly-once pipe both run their transactions through this, so
//! the floor the benchmark measures cannot drift from the thing it measures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::failpoint::Failpoints;
use crate::config::Settings;
use crate::kafka::{
    is_fenced, transactional_producer_config, CallWatch, ClientConfigError, ErrorClass,
    OutgoingRecord, StatsCallback, TxnError, TxnProducer,
};

/// How long each step of a committed transaction took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionSteps {
    /// Queueing the records.
    pub send: Duration,
    /// Waiting until every record was acknowledged.
    pub deliveries: Duration,
    /// Adding the consumer's offsets to the transaction.
    pub offsets: Duration,
    /// Committing.
    pub commit: Duration,
}

impl TransactionSteps {
    /// The step names, in order (the `step` label of the step-duration metric).
    pub const NAMES: [&'static str; 4] = crate::ops::metrics::TRANSACTION_STEPS;

    /// The steps' durations, in the order of [`TransactionSteps::NAMES`].
    pub fn durations(&self) -> [Duration; 4] {
        [self.send, self.deliveries, self.offsets, self.commit]
    }

    /// The whole transaction.
    pub fn total(&self) -> Duration {
        self.durations().iter().sum()
    }
}

/// How one transaction ended, unless its producer was fenced.
#[derive(Debug)]
pub enum Attempt {
    /// Committed.
    Committed(TransactionSteps),
    /// Aborted, or left to a new producer whose start aborted it: nothing of it is visible to
    /// read_committed readers; the caller redoes the work.
    Aborted {
        /// Why.
        error: TxnError,
        /// Whether the producer was replaced.
        producer_replaced: bool,
    },
}

/// The pause after an aborted transaction: `min(100 ms × 2^(n−1), 5 s)` for the n-th abort in a
/// row; a commit starts the count again. A broker that refuses a few transactions is given time
/// to recover without a pod that once saw many aborts sleeping long after each later one.
pub struct AbortBackoff {
    consecutive: u32,
    sleep: Box<dyn FnMut(Duration) + Send>,
}

impl AbortBackoff {
    /// The first pause after a commit.
    const FIRST: Duration = Duration::from_millis(100);
    /// The longest pause.
    const MAX: Duration = Duration::from_secs(5);

    /// A back-off that pauses with `sleep` (the thread's sleep outside tests).
    pub fn new(sleep: Box<dyn FnMut(Duration) + Send>) -> AbortBackoff {
        AbortBackoff {
            consecutive: 0,
            sleep,
        }
    }

    /// The pause after the n-th abort in a row.
    fn delay(consecutive: u32) -> Duration {
        let doublings = consecutive.saturating_sub(1).min(16);
        (AbortBackoff::FIRST * 2u32.pow(doublings)).min(AbortBackoff::MAX)
    }

    /// Pauses after an abort, longer the more aborts came in a row.
    pub fn aborted(&mut self) {
        self.consecutive = self.consecutive.saturating_add(1);
        (self.sleep)(AbortBackoff::delay(self.consecutive));
    }

    /// A commit ends the run of aborts.
    pub fn committed(&mut self) {
        self.consecutive = 0;
    }
}

impl std::fmt::Debug for AbortBackoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortBackoff")
            .field("consecutive", &self.consecutive)
            .finish()
    }
}

/// Runs transactions on one transactional producer, replacing it when it becomes unusable.
pub struct TransactionRunner {
    producer: TxnProducer,
    settings: Arc<Settings>,
    /// The producer's configuration, checked once; a replacement producer is made from it.
    config: ClientConfig,
    on_stats: Option<StatsCallback>,
    calls: Arc<CallWatch>,
    failpoints: Failpoints,
    backoff: AbortBackoff,
}

impl TransactionRunner {
    /// Creates the transactional producer of `settings` and initialises transactions (which
    /// fences an earlier producer with the same `transactional.id` and aborts its open
    /// transaction). Its blocking calls are timed by `calls`; `on_stats` receives librdkafka's
    /// statistics. Invalid client settings are a [`RunnerError::Config`], not a producer failure.
    pub fn new(
        settings: Arc<Settings>,
        on_stats: Option<StatsCallback>,
        calls: Arc<CallWatch>,
        failpoints: Failpoints,
    ) -> Result<TransactionRunner, RunnerError> {
        let config = transactional_producer_config(&settings)?;
        let producer = create_producer(&config, &settings, on_stats.clone(), &calls)?;
        Ok(TransactionRunner {
            producer,
            settings,
            config,
            on_stats,
            calls,
            failpoints,
            backoff: AbortBackoff::new(Box::new(std::thread::sleep)),
        })
    }

    /// Per partition of the state topic, the highest offset the last committed transaction wrote
    /// (the local store's checkpoint is one above it).
    pub fn state_offsets(&self) -> BTreeMap<i32, i64> {
        self.producer.delivered_offsets()
    }

    /// The faults this runner injects (the processor asks them about its consumer's too).
    pub fn failpoints(&self) -> &Failpoints {
        &self.failpoints
    }

    /// Runs transaction `number`: `records`, then the consumer's `next_offsets` of the requests
    /// topic under `group` (required when there are offsets). Fails only when the producer was
    /// fenced by a newer instance with the same `transactional.id`, or a new producer could not
    /// be created.
    pub fn run(
        &mut self,
        number: u64,
        records: &[OutgoingRecord],
        next_offsets: &BTreeMap<i32, i64>,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<Attempt, TxnError> {
        match self.attempt(number, records, next_offsets, group) {
            Ok(steps) => {
                self.backoff.committed();
                Ok(Attempt::Committed(steps))
            }
            Err(error) if error.class == ErrorClass::Fatal => self.replace_producer(error),
            Err(error) => {
                if let Err(abort_error) = self.producer.abort() {
                    if abort_error.class == ErrorClass::Fatal {
                        return self.replace_producer(abort_error);
                    }
                    tracing::warn!(error = %abort_error, "abort failed");
                }
                self.backoff.aborted();
                Ok(Attempt::Aborted {
                    error,
                    producer_replaced: false,
                })
            }
        }
    }

    /// After a fatal producer error: a fence by a newer instance with our transactional.id ends
    /// this one; anything else (e.g. an invalid transaction state after a broker restart) only
    /// made this producer unusable, so a new one takes over — its `init_transactions` aborts
    /// whatever the old one left open.
    fn replace_producer(&mut self, error: TxnError) -> Result<Attempt, TxnError> {
        if is_fenced(&error) {
            return Err(error);
        }
        self.producer = create_producer(
            &self.config,
            &self.settings,
            self.on_stats.clone(),
            &self.calls,
        )?;
        self.backoff.aborted();
        Ok(Attempt::Aborted {
            error,
            producer_replaced: true,
        })
    }

    fn attempt(
        &self,
        number: u64,
        records: &[OutgoingRecord],
        next_offsets: &BTreeMap<i32, i64>,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<TransactionSteps, TxnError> {
        let started = Instant::now();
        self.producer.begin()?;
        for record in records {
            self.producer.send(record)?;
        }
        let sent = started.elapsed();
        // Deliveries first, offsets after: sending the offsets while records were still being
        // acknowledged made transactions twice as long on average, with ~100 ms steps
        // (measured at 5,800 requests/s, docs/benchmarks.md).
        self.producer.wait_for_deliveries()?;
        let delivered = started.elapsed();
        self.failpoints.before_commit(number)?;
        if !next_offsets.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (&partition, &next) in next_offsets {
                offsets
                    .add_partition_offset(
                        &self.settings.topics.requests,
                        partition,
                        Offset::Offset(next),
                    )
                    .map_err(|source| TxnError {
                        operation: "build offsets",
                        class: ErrorClass::Abortable,
                        source,
                    })?;
            }
            let group = group.ok_or(TxnError {
                operation: "group_metadata",
                class: ErrorClass::Abortable,
                source: KafkaError::Canceled,
            })?;
            self.producer.send_offsets(&offsets, group)?;
        }
        self.failpoints.after_offsets(number);
        let offsets_sent = started.elapsed();
        self.failpoints.in_commit(number, &self.calls);
        self.producer.commit()?;
        let committed = started.elapsed();
        Ok(TransactionSteps {
            send: sent,
            deliveries: delivered - sent,
            offsets: offsets_sent - delivered,
            commit: committed - offsets_sent,
        })
    }
}

/// Why a transaction runner could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The producer's client settings are invalid.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// The producer could not be created or initialise transactions.
    #[error(transparent)]
    Producer(#[from] TxnError),
}

/// A transactional producer with `config`, its calls timed by `calls`.
fn create_producer(
    config: &ClientConfig,
    settings: &Settings,
    on_stats: Option<StatsCallback>,
    calls: &Arc<CallWatch>,
) -> Result<TxnProducer, TxnError> {
    let timeout = Duration::from_millis(settings.processor.transaction_timeout_ms);
    TxnProducer::create(
        config,
        timeout,
        on_stats,
        Arc::clone(calls),
        Some(&settings.topics.state),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn the_abort_backoff_doubles_per_abort_in_a_row_up_to_five_seconds_and_a_commit_resets_it() {
        let slept = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&slept);
        let mut backoff = AbortBackoff::new(Box::new(move |d: Duration| {
            record.lock().unwrap().push(d.as_millis() as u64)
        }));
        for _ in 0..8 {
            backoff.aborted();
        }
        backoff.committed();
        backoff.aborted();
        backoff.aborted();
        for _ in 0..100 {
            backoff.aborted();
        }
        let slept = slept.lock().unwrap();
        assert_eq!(
            slept[..10],
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 100, 200]
        );
        assert!(slept[10..].iter().all(|&ms| ms <= 5000), "capped");
        assert_eq!(slept.last(), Some(&5000));
    }

    #[test]
    fn steps_add_up_to_the_transaction() {
        let steps = TransactionSteps {
            send: Duration::from_millis(1),
            deliveries: Duration::from_millis(20),
            offsets: Duration::from_millis(3),
            commit: Duration::from_millis(4),
        };
        assert_eq!(steps.total(), Duration::from_millis(28));
        assert_eq!(steps.durations()[1], Duration::from_millis(20));
    }
}
