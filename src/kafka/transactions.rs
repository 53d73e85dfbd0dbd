//! The transactional producer: one per processor instance, fenced by its stable `transactional.id`
//! and by the consumer group's metadata (EOS v2, KIP-447).
//!
//! Every call here blocks; the processor calls them from its own thread, never from an async worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::clock::wall_clock_ms;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Statistics, TopicPartitionList};

/// The librdkafka transactional call in progress and when it started, so a watchdog can tell a call
/// that never returns: `send_offsets_to_transaction` ignores its timeout when the group coordinator
/// goes away (librdkafka #5456/#5511, open in the bundled 2.12), and nothing inside the process can
/// interrupt a blocked C call.
#[derive(Debug)]
pub struct CallWatch {
    started_ms: AtomicI64,
    operation: Mutex<&'static str>,
}

impl CallWatch {
    /// A watch with no call in progress.
    pub const fn new() -> CallWatch {
        CallWatch {
            started_ms: AtomicI64::new(0),
            operation: Mutex::new(""),
        }
    }

    /// Marks `operation` as started at `now_ms`.
    pub fn enter(&self, operation: &'static str, now_ms: i64) {
        *self.operation.lock().unwrap_or_else(|e| e.into_inner()) = operation;
        self.started_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Marks the call as returned.
    pub fn leave(&self) {
        self.started_ms.store(0, Ordering::SeqCst);
    }

    /// The call in progress and how long it has run, when that is more than `limit_ms`.
    pub fn overdue(&self, now_ms: i64, limit_ms: i64) -> Option<(&'static str, i64)> {
        let started = self.started_ms.load(Ordering::SeqCst);
        let ran = now_ms - started;
        (started > 0 && ran > limit_ms).then(|| {
            (
                *self.operation.lock().unwrap_or_else(|e| e.into_inner()),
                ran,
            )
        })
    }
}

impl Default for CallWatch {
    fn default() -> CallWatch {
        CallWatch::new()
    }
}

/// Runs a blocking librdkafka transactional call under `calls`.
fn watched<T>(calls: &CallWatch, operation: &'static str, call: impl FnOnce() -> T) -> T {
    calls.enter(operation, wall_clock_ms());
    let result = call();
    calls.leave();
    result
}

/// What to do about a failed transactional call (librdkafka's classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same call again after a pause (e.g. a commit that timed out, a broker restarting).
    Retriable,
    /// Abort the transaction and redo the batch from the last committed offsets.
    Abortable,
    /// The producer is unusable (fenced by a newer instance, or a fatal idempotence error): stop.
    Fatal,
}

/// A transactional call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({class:?}): {source}")]
pub struct TxnError {
    /// The call that failed.
    pub operation: &'static str,
    /// What to do about it.
    pub class: ErrorClass,
    /// librdkafka's error.
    pub source: KafkaError,
}

/// Classifies a librdkafka error from a transactional call or a delivery report.
pub fn classify(error: &KafkaError) -> ErrorClass {
    if let KafkaError::Transaction(e) = error {
        if e.is_fatal() {
            return ErrorClass::Fatal;
        }
        if e.txn_requires_abort() {
            return ErrorClass::Abortable;
        }
        if e.is_retriable() {
            return ErrorClass::Retriable;
        }
    }
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal)
        | Some(RDKafkaErrorCode::ProducerFenced)
        | Some(RDKafkaErrorCode::InvalidProducerEpoch)
        | Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => ErrorClass::Fatal,
        _ => ErrorClass::Abortable,
    }
}

/// Whether a failure means a newer producer with the same transactional.id took over (or the
/// cluster refuses the id): then this instance must stop, not retry.
pub fn is_fenced(error: &TxnError) -> bool {
    let code = match &error.source {
        KafkaError::Transaction(e) => Some(e.code()),
        other => other.rdkafka_error_code(),
    };
    matches!(
        code,
        Some(RDKafkaErrorCode::ProducerFenced)
            | Some(RDKafkaErrorCode::InvalidProducerEpoch)
            | Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed)
    )
}

fn txn_error(operation: &'static str, source: KafkaError) -> TxnError {
    TxnError {
        operation,
        class: classify(&source),
        source,
    }
}

/// Counts records in flight and keeps the first delivery failure of the current transaction.
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    state: Mutex<Deliveries>,
    settled: Condvar,
}

#[derive(Debug, Default)]
struct Deliveries {
    in_flight: usize,
    first_error: Option<KafkaError>,
    /// Per partition of the watched topic, the highest offset delivered in this transaction.
    last_offsets: BTreeMap<i32, i64>,
}

impl DeliveryTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        // A poisoned lock only means a panic elsewhere; the counts are still meaningful.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Receives librdkafka's statistics (every `statistics.interval.ms`).
pub type StatsCallback = Arc<dyn Fn(&Statistics) + Send + Sync>;

/// The producer context: delivery reports settle the tracker; statistics go to the callback.
#[derive(Default)]
pub struct TrackingContext {
    tracker: DeliveryTracker,
    on_stats: Option<StatsCallback>,
    /// The topic whose delivered offsets are kept (the state topic: the local store's checkpoint).
    watched_topic: Option<String>,
}

impl ClientContext for TrackingContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(on_stats) = &self.on_stats {
            on_stats(&statistics);
        }
    }
}

impl ProducerContext for TrackingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.tracker.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        match result {
            Err((error, _)) => {
                if state.first_error.is_none() {
                    state.first_error = Some(error.clone());
                }
            }
            Ok(message) if self.watched_topic.as_deref() == Some(message.topic()) => {
                let last = state
                    .last_offsets
                    .entry(message.partition())
                    .or_insert(message.offset());
                *last = (*last).max(message.offset());
            }
            Ok(_) => {}
        }
        if state.in_flight == 0 {
            self.tracker.settled.notify_all();
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// Target topic.
    pub topic: String,
    /// Target partition (always the input's partition: co-partitioning).
    pub partition: i32,
    /// Record key; `None` for a record without one (a dead letter of a keyless input keeps none).
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A transactional producer that waits for its deliveries before committing.
pub struct TxnProducer {
    producer: ThreadedProducer<TrackingContext>,
    timeout: Duration,
    calls: Arc<CallWatch>,
}

impl TxnProducer {
    /// Creates the producer and initialises transactions, which fences any earlier instance with the
    /// same `transactional.id` and aborts its open transaction. Retries while the cluster is away.
    /// `on_stats` receives librdkafka's statistics when the config enables them.
    /// Its blocking calls are timed by `calls`, which a watchdog reads.
    pub fn create(
        config: &ClientConfig,
        timeout: Duration,
        on_stats: Option<StatsCallback>,
        calls: Arc<CallWatch>,
        watched_topic: Option<&str>,
    ) -> Result<TxnProducer, TxnError> {
        let context = TrackingContext {
            tracker: DeliveryTracker::default(),
            on_stats,
            watched_topic: watched_topic.map(str::to_string),
        };
        let producer: ThreadedProducer<TrackingContext> =
            config.create_with_context(context).map_err(|e| TxnError {
                operation: "create producer",
                class: ErrorClass::Fatal,
                source: e,
            })?;
        let producer = TxnProducer {
            producer,
            timeout,
            calls,
        };
        producer.retrying("init_transactions", || {
            watched(&producer.calls, "init_transactions", || {
                producer.producer.init_transactions(timeout)
            })
        })?;
        Ok(producer)
    }

    /// Repeats a call while it fails with a retriable error, backing off up to 5 s between tries.
    fn retrying(
        &self,
        operation: &'static str,
        mut call: impl FnMut() -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let error = txn_error(operation, e);
                    let timed_out = matches!(
                        error.source.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::OperationTimedOut)
                    );
                    if error.class != ErrorClass::Retriable && !timed_out {
                        return Err(error);
                    }
                    tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Starts a transaction.
    pub fn begin(&self) -> Result<(), TxnError> {
        {
            let mut state = self.producer.context().tracker.lock();
            state.first_error = None;
            state.last_offsets.clear();
        }
        self.producer
            .begin_transaction()
            .map_err(|e| txn_error("begin_transaction", e))
    }

    /// Per partition of the watched topic, the highest offset delivered in the current (or last)
    /// transaction.
    pub fn delivered_offsets(&self) -> BTreeMap<i32, i64> {
        self.producer.context().tracker.lock().last_offsets.clone()
    }

    /// Queues a record; waits while librdkafka's queue is full (back-pressure, not failure).
    pub fn send(&self, record: &OutgoingRecord) -> Result<(), TxnError> {
        let mut base = BaseRecord::<[u8], [u8]>::to(&record.topic).partition(record.partition);
        base.key = record.key.as_deref();
        // Most records carry no headers: an empty header list would still be allocated and freed
        // inside librdkafka for each of them.
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key,
                    value: Some(value.as_slice()),
                });
            }
            base = base.headers(headers);
        }
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        self.producer.context().tracker.lock().in_flight += 1;
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    base = returned;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => {
                    let mut state = self.producer.context().tracker.lock();
                    state.in_flight = state.in_flight.saturating_sub(1);
                    return Err(txn_error("send", error));
                }
            }
        }
    }

    /// Waits until every record sent in this transaction is acknowledged; reports the first failure.
    ///
    /// `commit_transaction` would flush too, but librdkafka's flush polls in ~100 ms steps; waiting
    /// on delivery reports here lets the commit start the moment the last record is acknowledged.
    pub fn wait_for_deliveries(&self) -> Result<(), TxnError> {
        let tracker = &self.producer.context().tracker;
        let deadline = Instant::now() + self.timeout;
        let mut state = tracker.lock();
        while state.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TxnError {
                    operation: "deliver",
                    class: ErrorClass::Abortable,
                    source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                });
            }
            state = tracker
                .settled
                .wait_timeout(state, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        match state.first_error.take() {
            None => Ok(()),
            Some(error) => Err(TxnError {
                operation: "deliver",
                class: match classify(&error) {
                    ErrorClass::Fatal => ErrorClass::Fatal,
                    _ => ErrorClass::Abortable,
                },
                source: error,
            }),
        }
    }

    /// Adds the consumer's next offsets to the transaction, fenced by the group's generation.
    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxnError> {
        watched(&self.calls, "send_offsets_to_transaction", || {
            self.producer
                .send_offsets_to_transaction(offsets, group, self.timeout)
        })
        .map_err(|e| txn_error("send_offsets_to_transaction", e))
    }

    /// Commits, retrying while the outcome is retriable (a timed-out commit may be retried).
    pub fn commit(&self) -> Result<(), TxnError> {
        self.retrying("commit_transaction", || {
            watched(&self.calls, "commit_transaction", || {
                self.producer.commit_transaction(self.timeout)
            })
        })
    }

    /// Aborts, retrying while the cluster is away (an abort must eventually happen).
    pub fn abort(&self) -> Result<(), TxnError> {
        self.retrying("abort_transaction", || {
            watched(&self.calls, "abort_transaction", || {
                self.producer.abort_transaction(self.timeout)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_overdue_only_while_in_progress_and_past_the_limit() {
        let watch = CallWatch::new();
        assert_eq!(
            watch.overdue(1_000_000, 30_000),
            None,
            "no call in progress"
        );
        watch.enter("send_offsets_to_transaction", 1_000_000);
        assert_eq!(
            watch.overdue(1_030_000, 30_000),
            None,
            "at the limit, not past it"
        );
        assert_eq!(
            watch.overdue(1_030_001, 30_000),
            Some(("send_offsets_to_transaction", 30_001))
        );
        watch.leave();
        assert_eq!(watch.overdue(2_000_000, 30_000), None, "returned");
    }

    fn failed(code: RDKafkaErrorCode) -> TxnError {
        TxnError {
            operation: "commit_transaction",
            class: ErrorClass::Fatal,
            source: KafkaError::MessageProduction(code),
        }
    }

    #[test]
    fn only_a_newer_owner_of_the_transactional_id_fences_this_instance() {
        assert!(is_fenced(&failed(RDKafkaErrorCode::ProducerFenced)));
        assert!(is_fenced(&failed(RDKafkaErrorCode::InvalidProducerEpoch)));
        assert!(is_fenced(&failed(
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        )));
        // After a broker restart: fatal for this producer, but a new one may take over.
        assert!(!is_fenced(&failed(
            RDKafkaErrorCode::InvalidTransactionalState
        )));
        assert!(!is_fenced(&failed(RDKafkaErrorCode::Fatal)));
    }
}
