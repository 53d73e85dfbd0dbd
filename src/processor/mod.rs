//! The exactly-once processing loop: poll a batch → decide → produce → commit, one Kafka
//! transaction per batch.
//!
//! # Transaction boundaries
//! A transaction is open only between the end of a batch's polling and its commit; the consumer is
//! not polled meanwhile, so rebalance callbacks (which run inside `poll`) never see an open
//! transaction. Revoked partitions therefore have nothing to finish: their unprocessed records are
//! dropped from the batch being filled and the new owner reads them from the committed offsets.
//!
//! # State
//! Decisions read the committed cache of the record's partition through the batch's own overlay;
//! the overlay's changes reach the cache only after the commit succeeded, so an aborted batch
//! leaves no trace. Newly assigned partitions are paused until their restore finished.
//!
//! # Failures
//! Abortable errors abort the transaction and rewind the consumer to the batch's first offsets, so
//! the batch is read and decided again from the committed state: nothing skipped, nothing applied
//! twice, order within a partition (and so within an order) kept. Retriable calls are retried with
//! capped exponential backoff inside [`TxnProducer`]. Fatal errors (fenced by a newer instance with
//! the same id) end the loop with the reason; the process exits non-zero and is restarted.
//!
//! Everything here blocks and runs on a dedicated thread, never on an async runtime worker.

pub mod batch;
pub mod deadlines;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use self::batch::{
    decide_batch, expire_orders, BatchContext, BatchOutput, BatchStats, InputRecord,
};
use self::deadlines::DeadlineIndex;
use crate::clock::{Clock, SystemClock};
use crate::codec::headers::TRACEPARENT;
use crate::config::Settings;
use crate::kafka::group::describe_group;
use crate::kafka::{
    is_fenced, parse_processor_client_id, processor_consumer_config, transactional_id,
    transactional_producer_config, ClientConfigError, ErrorClass, StatsCallback, TxnError,
    TxnProducer,
};
use crate::machine::{Decider, Definition, OrderState, ParkingPolicy};
use crate::ops::metrics::{reason_label, TRANSACTION_STEPS};
use crate::ops::{Health, Metrics};
use crate::state::restore::{
    restore_threads, spawn_restore, split_partitions, RestoreError, RestoreEvent,
};
use crate::state::SharedCaches;

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// Client settings are invalid.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// The consumer could not be created or subscribed.
    #[error("consumer: {0}")]
    Consumer(#[source] KafkaError),
    /// A transactional call failed fatally (e.g. another instance with the same id fenced us).
    #[error("transactional producer {transactional_id}: {source}. Another instance may be running with the same instance_id, or the cluster refused the transactional id; the process exits so it can be restarted")]
    Fatal {
        /// The producer's transactional id.
        transactional_id: String,
        /// The failure.
        source: Box<TxnError>,
    },
    /// Other members of the group run another definition.
    #[error("group {group} has members running another state-machine definition: {others}; this instance runs {ours}. Instances of one group must decide with the same rules: roll a definition change out to all instances at once (stop the group, then start it with the new definition), or use a new group")]
    DefinitionMismatch {
        /// The consumer group.
        group: String,
        /// Our definition's short hash.
        ours: String,
        /// The other members as `instance (hash)`.
        others: String,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// Restoring state failed.
    #[error("restore failed: {0}")]
    Restore(#[from] RestoreError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// An owned partition has records waiting but the consumer never started fetching it.
    #[error("partition {partition} of {topic} was assigned and restored {waited_secs} s ago, but the consumer has not fetched it although records wait (committed offset {committed}, end {end}). The consumer lost its committed-offset lookup (seen after a group-coordinator move, librdkafka #5586); the process exits so that it restarts with a fresh assignment")]
    PartitionNotFetched {
        /// The requests topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Seconds since it was resumed.
        waited_secs: u64,
        /// The group's committed offset (or the partition's start).
        committed: i64,
        /// The partition's end (last stable offset for read_committed).
        end: i64,
    },
}

/// How long a restored partition may go without a known consumer position, while records wait,
/// before the processor gives up on it and exits (to be restarted).
const NOT_FETCHED_LIMIT: Duration = Duration::from_secs(60);

/// True when a partition whose consumer never got a position has records after the committed
/// offset: it is stuck, not idle.
fn records_wait(committed: Option<i64>, low: i64, end: i64) -> bool {
    end > committed.unwrap_or(low).max(low)
}

/// Rebalance events, recorded by the consumer context and handled by the loop after `poll`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context: pauses newly assigned partitions (they must be restored first) and records
/// assignment changes for the loop.
struct ProcessorContext {
    topic: String,
    events: Mutex<Vec<RebalanceEvent>>,
    metrics: Metrics,
    /// librdkafka's fetch state per partition of the requests topic, from its statistics.
    fetch_states: Mutex<HashMap<i32, String>>,
}

impl ProcessorContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }

    fn push(&self, event: RebalanceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    fn take(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The partition's fetch state as of the last statistics (`active` while its fetcher runs).
    fn fetch_state(&self, partition: i32) -> Option<String> {
        self.fetch_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .cloned()
    }
}

impl ClientContext for ProcessorContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics
            .record_kafka_statistics("consumer", &statistics);
        self.metrics.record_consumer_lag(&statistics, &self.topic);
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let states = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0)
                .map(|p| (p.partition, p.fetch_state.clone()))
                .collect();
            *self.fetch_states.lock().unwrap_or_else(|e| e.into_inner()) = states;
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = ?self.partitions(tpl), "partitions revoked");
            self.push(RebalanceEvent::Revoked(self.partitions(tpl)));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            tracing::info!(
                ?partitions,
                "partitions assigned; pausing them until restored"
            );
            if let Err(e) = consumer.pause(tpl) {
                tracing::error!(error = %e, "cannot pause assigned partitions");
            }
            self.push(RebalanceEvent::Assigned(partitions));
        }
    }
}

/// Failpoints for crash and health tests, from `ORDERFLOW_FAILPOINT` (several separated by commas):
/// `kill-before-commit:N` sends SIGKILL to this process after producing the N-th batch, before
/// committing it; `stall-before-commit:N` blocks the processing loop there for good (a stuck loop);
/// `abort-before-commit:N` fails the N-th batch's transaction once with an abortable error;
/// `freeze-after-offsets:N:MS` stops the whole process (SIGSTOP, as a long GC pause or a frozen
/// VM would) for MS milliseconds after the N-th batch's offsets were sent to its transaction and
/// before it is committed.
#[derive(Debug, Default)]
struct Failpoint {
    actions: Vec<(FailAction, u64)>,
    /// Whether the abort fired: the redone batch has the same number and must commit.
    aborted: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAction {
    Kill,
    Stall,
    Abort,
    Freeze(Duration),
}

impl Failpoint {
    fn from_env() -> Failpoint {
        Failpoint::parse(std::env::var("ORDERFLOW_FAILPOINT").ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Failpoint {
        let parse_one = |v: &str| {
            let mut parts = v.split(':');
            let name = parts.next()?;
            let batch: u64 = parts.next()?.parse().ok()?;
            let action = match (name, parts.next()) {
                ("kill-before-commit", None) => FailAction::Kill,
                ("stall-before-commit", None) => FailAction::Stall,
                ("abort-before-commit", None) => FailAction::Abort,
                ("freeze-after-offsets", Some(ms)) => {
                    FailAction::Freeze(Duration::from_millis(ms.parse().ok()?))
                }
                _ => return None,
            };
            parts.next().is_none().then_some((action, batch))
        };
        Failpoint {
            actions: value
                .into_iter()
                .flat_map(|v| v.split(','))
                .filter_map(parse_one)
                .collect(),
            aborted: AtomicBool::new(false),
        }
    }

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
    fn before_commit(&self, batch_number: u64) -> Result<(), TxnError> {
        let action = self.action(batch_number, |a| !matches!(a, FailAction::Freeze(_)));
        match action {
            Some(FailAction::Abort) if !self.aborted.swap(true, Ordering::Relaxed) => {
                tracing::warn!(batch_number, "failpoint abort-before-commit");
                return Err(TxnError {
                    operation: "failpoint abort-before-commit",
                    class: ErrorClass::Abortable,
                    source: KafkaError::Canceled,
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
    fn after_offsets(&self, batch_number: u64) {
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
}

/// The pause after an aborted transaction: `min(100 ms × 2^(n−1), 5 s)` for the n-th abort in a
/// row; a commit starts the count again. A broker that refuses a few transactions is given time
/// to recover without a pod that once saw many aborts sleeping long after each later one.
pub(crate) struct AbortBackoff {
    consecutive: u32,
    sleep: Box<dyn FnMut(Duration) + Send>,
}

impl AbortBackoff {
    /// The first pause after a commit.
    const FIRST: Duration = Duration::from_millis(100);
    /// The longest pause.
    const MAX: Duration = Duration::from_secs(5);

    /// A back-off that pauses with `sleep` (the thread's sleep outside tests).
    pub(crate) fn new(sleep: Box<dyn FnMut(Duration) + Send>) -> AbortBackoff {
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
    pub(crate) fn aborted(&mut self) {
        self.consecutive = self.consecutive.saturating_add(1);
        (self.sleep)(AbortBackoff::delay(self.consecutive));
    }

    /// A commit ends the run of aborts.
    pub(crate) fn committed(&mut self) {
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

/// How long a starting processor waits for its group's coordinator to become ready.
const GROUP_COORDINATOR_PATIENCE: Duration = Duration::from_secs(60);
/// A transaction taking longer than this is logged with the time each of its steps took.
const SLOW_TRANSACTION: Duration = Duration::from_millis(200);

/// Running totals, logged periodically.
#[derive(Debug, Default)]
struct Totals {
    batches: u64,
    aborts: u64,
    stats: BatchStats,
}

/// The processor of one instance.
pub struct Processor {
    settings: Arc<Settings>,
    decider: Decider,
    consumer: BaseConsumer<ProcessorContext>,
    producer: TxnProducer,
    caches: SharedCaches,
    /// Partitions being restored, with the job restoring them.
    restoring: HashMap<i32, u64>,
    restore_jobs: u64,
    /// Set on shutdown: running restores stop.
    restore_cancel: Arc<AtomicBool>,
    restore_tx: Sender<RestoreEvent>,
    restore_rx: Receiver<RestoreEvent>,
    batch: Vec<InputRecord>,
    failpoint: Failpoint,
    abort_backoff: AbortBackoff,
    totals: Totals,
    clock: Arc<dyn Clock>,
    deadlines: DeadlineIndex,
    metrics: Metrics,
    health: Arc<Health>,
    assigned_once: bool,
    /// Restored partitions the consumer has not delivered a record of yet, since their resume.
    unfetched: HashMap<i32, Instant>,
}

impl Processor {
    /// Creates the clients, initialises transactions (fencing an earlier instance with the same
    /// id) and subscribes to the requests topic.
    pub fn new(
        settings: Arc<Settings>,
        definition: Arc<Definition>,
    ) -> Result<Processor, ProcessorError> {
        Processor::with_clock(settings, definition, Arc::new(SystemClock))
    }

    /// Like [`Processor::new`], with the clock decisions and deadlines use (tests move time).
    pub fn with_clock(
        settings: Arc<Settings>,
        definition: Arc<Definition>,
        clock: Arc<dyn Clock>,
    ) -> Result<Processor, ProcessorError> {
        let metrics = Metrics::new(&definition).map_err(ProcessorError::Metrics)?;
        Processor::with_parts(
            settings,
            definition,
            clock,
            metrics,
            Arc::new(Health::default()),
            SharedCaches::default(),
        )
    }

    /// A processor reporting to `metrics` and `health` and publishing its committed state in
    /// `caches` (all shared with the ops server).
    pub fn with_parts(
        settings: Arc<Settings>,
        definition: Arc<Definition>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        health: Arc<Health>,
        caches: SharedCaches,
    ) -> Result<Processor, ProcessorError> {
        let decider = Decider::new(definition, settings.processor.recent_requests).with_parking(
            ParkingPolicy {
                max_per_order: settings.processor.parking_max_per_order,
                max_wait_ms: settings.processor.parking_max_wait_ms as i64,
            },
        );
        let producer = create_producer(&settings, &metrics)?;
        let context = ProcessorContext {
            topic: settings.topics.requests.clone(),
            events: Mutex::new(Vec::new()),
            metrics: metrics.clone(),
            fetch_states: Mutex::new(HashMap::new()),
        };
        let hash = decider.definition().short_hash().to_string();
        let consumer: BaseConsumer<ProcessorContext> = processor_consumer_config(&settings, &hash)?
            .create_with_context(context)
            .map_err(ProcessorError::Consumer)?;
        check_group_definition(&consumer, &settings, &hash)?;
        consumer
            .subscribe(&[&settings.topics.requests])
            .map_err(ProcessorError::Consumer)?;
        let (restore_tx, restore_rx) = channel();
        tracing::info!(
            transactional_id = %transactional_id(&settings),
            group = %settings.kafka.group_id,
            topic = %settings.topics.requests,
            "processor started"
        );
        Ok(Processor {
            settings,
            decider,
            consumer,
            producer,
            caches,
            restoring: HashMap::new(),
            restore_jobs: 0,
            restore_cancel: Arc::new(AtomicBool::new(false)),
            restore_tx,
            restore_rx,
            batch: Vec::new(),
            failpoint: Failpoint::from_env(),
            abort_backoff: AbortBackoff::new(Box::new(std::thread::sleep)),
            totals: Totals::default(),
            clock,
            deadlines: DeadlineIndex::new(),
            metrics,
            health,
            assigned_once: false,
            unfetched: HashMap::new(),
        })
    }

    /// Runs until `shutdown` is set (after finishing the batch in hand) or a fatal error.
    pub fn run(self, shutdown: &AtomicBool) -> Result<(), ProcessorError> {
        let health = Arc::clone(&self.health);
        let result = self.run_loop(shutdown);
        if result.is_err() {
            health.set_failed();
        }
        result
    }

    fn run_loop(mut self, shutdown: &AtomicBool) -> Result<(), ProcessorError> {
        let mut last_report = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            self.health.beat(SystemClock.now_ms());
            let ready = self.assigned_once && self.restoring.is_empty();
            self.health.set_ready(ready);
            self.metrics.ready.set(i64::from(ready));
            self.metrics
                .owned_partitions
                .set((self.caches.partitions() + self.restoring.len()) as i64);
            self.metrics
                .restoring_partitions
                .set(self.restoring.len() as i64);
            self.metrics.cached_orders.set(self.caches.orders() as i64);
            self.handle_rebalance_events()?;
            self.handle_restore_events()?;
            self.fill_batch(shutdown)?;
            self.expire_due()?;
            if !self.batch.is_empty() {
                self.commit_batch()?;
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                let t = &self.totals;
                tracing::info!(
                    batches = t.batches,
                    aborts = t.aborts,
                    accepted = t.stats.accepted,
                    rejected = t.stats.rejected,
                    duplicates = t.stats.duplicates,
                    dead_letters = t.stats.dead_letters,
                    parked = t.stats.parked,
                    expired = t.stats.expired,
                    forgotten = t.stats.forgotten,
                    partitions = self.caches.partitions(),
                    orders = self.caches.orders(),
                    "progress"
                );
                last_report = Instant::now();
                self.check_unfetched_partitions()?;
            }
        }
        tracing::info!("shutting down: no transaction is open; leaving the group");
        self.restore_cancel.store(true, Ordering::Relaxed);
        self.consumer.unsubscribe();
        Ok(())
    }

    fn handle_rebalance_events(&mut self) -> Result<(), ProcessorError> {
        for event in self.consumer.context().take() {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    for p in &partitions {
                        self.caches.write().remove(p);
                        self.deadlines.drop_partition(*p);
                        // A restore in progress finishes for its other partitions; this one's
                        // result will be dropped as stale.
                        self.restoring.remove(p);
                        self.unfetched.remove(p);
                    }
                    // Unprocessed records of revoked partitions: the new owner reads them again.
                    self.batch.retain(|r| !partitions.contains(&r.partition));
                }
                RebalanceEvent::Assigned(partitions) => {
                    self.assigned_once = true;
                    let partitions: Vec<i32> = partitions
                        .into_iter()
                        .filter(|p| !self.caches.owns(*p) && !self.restoring.contains_key(p))
                        .collect();
                    if partitions.is_empty() {
                        continue;
                    }
                    self.restore_jobs += 1;
                    let job = self.restore_jobs;
                    for p in &partitions {
                        self.restoring.insert(*p, job);
                    }
                    // Side by side: one consumer's poll loop, not decoding, bounds a restore.
                    for group in split_partitions(&partitions, restore_threads(&self.settings)) {
                        spawn_restore(
                            job,
                            Arc::clone(&self.settings),
                            Arc::clone(self.decider.definition()),
                            group,
                            self.restore_tx.clone(),
                            Arc::clone(&self.restore_cancel),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn handle_restore_events(&mut self) -> Result<(), ProcessorError> {
        while let Ok(event) = self.restore_rx.try_recv() {
            match event {
                RestoreEvent::Failed(error) => return Err(error.into()),
                RestoreEvent::Done(restored) => {
                    // A restore of a partition revoked meanwhile (and maybe assigned again, to a
                    // newer job) is stale: another instance may have written to it since.
                    if self.restoring.get(&restored.partition) != Some(&restored.job) {
                        continue;
                    }
                    self.restoring.remove(&restored.partition);
                    self.metrics.restored_records.inc_by(restored.records);
                    self.metrics
                        .restore_seconds
                        .observe(restored.elapsed.as_secs_f64());
                    tracing::info!(
                        partition = restored.partition,
                        orders = restored.cache.len(),
                        records = restored.records,
                        elapsed_ms = restored.elapsed.as_millis() as u64,
                        "partition ready"
                    );
                    for (order_id, state) in restored.cache.iter() {
                        let deadline = self.decider.next_deadline(&state);
                        self.deadlines
                            .update(restored.partition, order_id, None, deadline);
                    }
                    self.caches
                        .write()
                        .insert(restored.partition, restored.cache);
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&self.settings.topics.requests, restored.partition);
                    if let Err(e) = self.consumer.resume(&tpl) {
                        tracing::error!(error = %e, partition = restored.partition, "cannot resume partition");
                    }
                    self.unfetched.insert(restored.partition, Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Polls until the batch is full, its wait is over, or (while empty) a poll comes back empty.
    fn fill_batch(&mut self, shutdown: &AtomicBool) -> Result<(), ProcessorError> {
        let max_records = self.settings.processor.batch_max_records;
        let max_wait = Duration::from_millis(self.settings.processor.batch_max_wait_ms);
        let mut deadline: Option<Instant> = None;
        loop {
            let timeout = match deadline {
                None => Duration::from_millis(100),
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            let polled = self.consumer.poll(timeout).map(|m| m.map(|m| to_input(&m)));
            match polled {
                None => {}
                Some(Err(e)) => {
                    // librdkafka reconnects by itself (e.g. while a broker restarts).
                    tracing::warn!(error = %e, "consumer error");
                }
                Some(Ok(input)) => {
                    if self.caches.owns(input.partition) {
                        self.batch.push(input);
                        deadline.get_or_insert_with(|| Instant::now() + max_wait);
                    } else {
                        // Not restored yet: put the record back and keep the partition paused.
                        self.rewind(&BTreeMap::from([(input.partition, input.offset)]));
                        self.pause(input.partition);
                    }
                }
            }
            self.handle_rebalance_events()?;
            self.handle_restore_events()?;
            let full = self.batch.len() >= max_records;
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if full
                || due
                || (self.batch.is_empty()
                    && (deadline.is_none() || shutdown.load(Ordering::Relaxed)))
            {
                return Ok(());
            }
        }
    }

    /// Fails when a restored partition has had records waiting for [`NOT_FETCHED_LIMIT`] without
    /// the consumer ever delivering one while librdkafka's fetcher for it is not active. librdkafka can lose a partition's committed-offset lookup
    /// when the group coordinator moves (its fetcher then never starts, and nothing reports it);
    /// only a new assignment recovers it, so the process exits and is restarted.
    fn check_unfetched_partitions(&mut self) -> Result<(), ProcessorError> {
        if self.unfetched.is_empty() {
            return Ok(());
        }
        let topic = &self.settings.topics.requests;
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements_for_topic(topic) {
                if let Offset::Offset(_) = element.offset() {
                    self.unfetched.remove(&element.partition());
                }
            }
        }
        let overdue: Vec<(i32, Duration)> = self
            .unfetched
            .iter()
            .map(|(p, since)| (*p, since.elapsed()))
            .filter(|(_, waited)| *waited >= NOT_FETCHED_LIMIT)
            .collect();
        for (partition, waited) in overdue {
            // A running fetcher that delivers nothing (e.g. it skips aborted transactional
            // records of an upstream producer) is not stuck: only a fetcher that never started is.
            if self.consumer.context().fetch_state(partition).as_deref() == Some("active") {
                self.unfetched.insert(partition, Instant::now());
                continue;
            }
            let timeout = Duration::from_secs(5);
            let Ok((low, end)) = self.consumer.fetch_watermarks(topic, partition, timeout) else {
                continue;
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            let committed = match self.consumer.committed_offsets(tpl, timeout) {
                Ok(list) => list
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    }),
                Err(_) => continue,
            };
            if records_wait(committed, low, end) {
                return Err(ProcessorError::PartitionNotFetched {
                    topic: topic.clone(),
                    partition,
                    waited_secs: waited.as_secs(),
                    committed: committed.unwrap_or(low),
                    end,
                });
            }
            // Idle, not stuck: look again after another limit.
            self.unfetched.insert(partition, Instant::now());
        }
        Ok(())
    }

    fn pause(&self, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.settings.topics.requests, partition);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(error = %e, partition, "cannot pause partition");
        }
    }

    /// Moves the consumer back to the given offsets (the first of each partition's uncommitted records).
    fn rewind(&self, first_offsets: &BTreeMap<i32, i64>) {
        for (&partition, &offset) in first_offsets {
            if let Err(e) = self.consumer.seek(
                &self.settings.topics.requests,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                // A partition revoked meanwhile cannot be sought; its new owner starts at the
                // committed offset anyway.
                tracing::warn!(error = %e, partition, offset, "cannot rewind partition");
            }
        }
    }

    fn batch_context(&self) -> BatchContext<'_> {
        BatchContext {
            decider: &self.decider,
            topics: &self.settings.topics,
            limits: &self.settings.processor,
            group_id: &self.settings.kafka.group_id,
        }
    }

    /// Runs the expiry pass for orders whose deadline is due, in its own transaction.
    fn expire_due(&mut self) -> Result<(), ProcessorError> {
        let now = self.clock.now_ms();
        let due = self.deadlines.due(
            &self.caches.read(),
            now,
            self.settings.processor.batch_max_records,
        );
        if due.is_empty() {
            return Ok(());
        }
        let output = expire_orders(&self.batch_context(), &self.caches.read(), &due, now);
        if output.records.is_empty() {
            // Nothing to write (e.g. a deadline moved): recompute those orders' deadlines.
            for (partition, order_id) in due {
                let deadline = self
                    .caches
                    .read()
                    .get(&partition)
                    .and_then(|c| c.get(&order_id))
                    .and_then(|s| self.decider.next_deadline(&s));
                let future = deadline.filter(|d| *d > now);
                self.deadlines
                    .update(partition, &order_id, deadline, future);
            }
            return Ok(());
        }
        // If the transaction aborts, the orders stay due and are tried again on the next pass.
        self.run_transaction(output, 0)?;
        Ok(())
    }

    /// Decides the batch and writes it in one transaction; on an abortable failure, aborts and
    /// rewinds so the batch is read again.
    fn commit_batch(&mut self) -> Result<(), ProcessorError> {
        let output = decide_batch(
            &self.batch_context(),
            &self.caches.read(),
            &self.batch,
            self.clock.now_ms(),
        );
        let inputs = self.batch.len();
        if !self.run_transaction(output, inputs)? {
            let mut first: BTreeMap<i32, i64> = BTreeMap::new();
            for record in &self.batch {
                first.entry(record.partition).or_insert(record.offset);
            }
            self.rewind(&first);
        }
        self.batch.clear();
        Ok(())
    }

    /// Writes an output in one transaction and, once committed, applies its state changes.
    /// Returns false when the transaction was aborted (the caller redoes the work).
    fn run_transaction(
        &mut self,
        output: BatchOutput,
        inputs: usize,
    ) -> Result<bool, ProcessorError> {
        let batch_number = self.totals.batches + 1;
        let _span = tracing::debug_span!(
            "transaction",
            number = batch_number,
            inputs,
            records = output.records.len()
        )
        .entered();
        let started = Instant::now();
        match self.transaction(&output, batch_number) {
            Ok(steps) => {
                self.record_metrics(&output, inputs, started.elapsed());
                for (step, took) in TRANSACTION_STEPS.iter().zip(steps) {
                    self.metrics
                        .transaction_step_seconds
                        .with_label_values(&[step])
                        .observe(took.as_secs_f64());
                }
                let mut caches = self.caches.write();
                for change in output.changes {
                    let Some(cache) = caches.get_mut(&change.partition) else {
                        continue;
                    };
                    let new = change
                        .state
                        .as_ref()
                        .and_then(|s: &OrderState| self.decider.next_deadline(s));
                    self.deadlines.update(
                        change.partition,
                        &change.order_id,
                        change.deadline_before,
                        new,
                    );
                    cache.apply(&change.order_id, change.state.as_ref());
                }
                drop(caches);
                self.abort_backoff.committed();
                self.totals.batches += 1;
                self.totals.stats += output.stats;
                tracing::debug!(
                    records = output.records.len(),
                    commit_ms = started.elapsed().as_millis() as u64,
                    "transaction committed"
                );
                Ok(true)
            }
            Err(error) if error.class == ErrorClass::Fatal => self.replace_producer(error),
            Err(error) => {
                self.totals.aborts += 1;
                self.metrics
                    .transactions
                    .with_label_values(&["abort"])
                    .inc();
                tracing::warn!(%error, records = output.records.len(), "transaction failed; aborting");
                if let Err(abort_error) = self.producer.abort() {
                    if abort_error.class == ErrorClass::Fatal {
                        return self.replace_producer(abort_error);
                    }
                    tracing::warn!(error = %abort_error, "abort failed");
                }
                self.abort_backoff.aborted();
                Ok(false)
            }
        }
    }

    /// After a fatal producer error: a fence by a newer instance with our transactional.id ends
    /// this one; anything else (e.g. an invalid transaction state after a broker restart) only
    /// made this producer unusable, so a new one takes over — its `init_transactions` aborts
    /// whatever the old one left open — and the batch is redone (returns false).
    fn replace_producer(&mut self, error: TxnError) -> Result<bool, ProcessorError> {
        if is_fenced(&error) {
            return Err(ProcessorError::Fatal {
                transactional_id: transactional_id(&self.settings),
                source: Box::new(error),
            });
        }
        tracing::warn!(%error, "the transactional producer is unusable; replacing it and redoing the batch");
        self.totals.aborts += 1;
        self.metrics
            .transactions
            .with_label_values(&["abort"])
            .inc();
        self.producer = create_producer(&self.settings, &self.metrics)?;
        self.abort_backoff.aborted();
        Ok(false)
    }

    fn record_metrics(&self, output: &BatchOutput, inputs: usize, elapsed: Duration) {
        let m = &self.metrics;
        m.transactions.with_label_values(&["commit"]).inc();
        m.transaction_seconds.observe(elapsed.as_secs_f64());
        if inputs > 0 {
            m.batch_records.observe(inputs as f64);
            m.requests_consumed.inc_by(inputs as u64);
        }
        m.duplicates.inc_by(output.stats.duplicates);
        m.parked.inc_by(output.stats.parked);
        m.expired.inc_by(output.stats.expired);
        m.forgotten.inc_by(output.stats.forgotten);
        for (transition, n) in &output.accepted_by_transition {
            m.accepted
                .with_label_values(&[transition.as_str()])
                .inc_by(*n);
        }
        for (code, n) in &output.rejected_by_reason {
            m.rejected
                .with_label_values(&[reason_label(*code)])
                .inc_by(*n);
        }
        for (kind, n) in &output.dead_letters_by_kind {
            m.dead_letters.with_label_values(&[kind]).inc_by(*n);
        }
        for latency in &output.decision_latencies_ms {
            m.decision_latency_seconds
                .observe((*latency).max(0) as f64 / 1000.0);
        }
    }

    /// Runs the batch's transaction; returns how long each of its steps took
    /// (`metrics::TRANSACTION_STEPS`).
    fn transaction(
        &self,
        output: &BatchOutput,
        batch_number: u64,
    ) -> Result<[Duration; 4], TxnError> {
        let started = Instant::now();
        self.producer.begin()?;
        for record in &output.records {
            self.producer.send(record)?;
        }
        let sent = started.elapsed();
        // Deliveries first, offsets after: sending the offsets while records were still being
        // acknowledged made transactions twice as long on average, with ~100 ms steps
        // (measured at 5,800 requests/s, docs/benchmarks.md).
        self.producer.wait_for_deliveries()?;
        let delivered = started.elapsed();
        self.failpoint.before_commit(batch_number)?;
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in &output.next_offsets {
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
        if !output.next_offsets.is_empty() {
            let group = self.consumer.group_metadata().ok_or(TxnError {
                operation: "group_metadata",
                class: ErrorClass::Abortable,
                source: KafkaError::Canceled,
            })?;
            self.producer.send_offsets(&offsets, &group)?;
        }
        self.failpoint.after_offsets(batch_number);
        let offsets_sent = started.elapsed();
        self.producer.commit()?;
        let committed = started.elapsed();
        let steps = [
            sent,
            delivered - sent,
            offsets_sent - delivered,
            committed - offsets_sent,
        ];
        if committed >= SLOW_TRANSACTION {
            let [send, deliveries, offsets, commit] = steps.map(|d| d.as_millis() as u64);
            // Which step took the time tells a slow broker (deliveries), a slow group
            // coordinator (offsets) and a slow transaction coordinator (commit) apart.
            tracing::warn!(
                records = output.records.len(),
                send_ms = send,
                deliveries_ms = deliveries,
                offsets_ms = offsets,
                commit_ms = commit,
                "slow transaction"
            );
        }
        Ok(steps)
    }
}

/// The transactional producer, reporting librdkafka's statistics to `metrics`; initialising it
/// fences any earlier producer with the same transactional.id.
fn create_producer(settings: &Settings, metrics: &Metrics) -> Result<TxnProducer, ProcessorError> {
    let config = transactional_producer_config(settings)?;
    let timeout = Duration::from_millis(settings.processor.transaction_timeout_ms);
    let producer_metrics = metrics.clone();
    let on_stats: StatsCallback = Arc::new(move |statistics| {
        producer_metrics.record_kafka_statistics("producer", statistics)
    });
    TxnProducer::create(&config, timeout, Some(on_stats)).map_err(|source| ProcessorError::Fatal {
        transactional_id: transactional_id(settings),
        source: Box::new(source),
    })
}

/// Refuses to join a group whose other members decide with another definition (their consumer
/// client ids carry their definition's short hash). An earlier incarnation of this same instance
/// may still be listed until its session times out; it does not count.
fn check_group_definition(
    consumer: &BaseConsumer<ProcessorContext>,
    settings: &Settings,
    ours: &str,
) -> Result<(), ProcessorError> {
    // A broker that just started answers "coordinator load in progress" for a few seconds.
    let groups = describe_group(
        consumer.client(),
        &settings.kafka.group_id,
        GROUP_COORDINATOR_PATIENCE,
    )
    .map_err(ProcessorError::Consumer)?;
    let others: Vec<String> = groups
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .filter_map(|m| parse_processor_client_id(m.client_id()))
        .filter(|(instance, hash)| *hash != ours && *instance != settings.instance_id)
        .map(|(instance, hash)| format!("{instance} ({hash})"))
        .collect();
    if others.is_empty() {
        Ok(())
    } else {
        Err(ProcessorError::DefinitionMismatch {
            group: settings.kafka.group_id.clone(),
            ours: ours.to_string(),
            others: others.join(", "),
        })
    }
}

/// Copies what deciding needs out of a consumed record: key, value and, of the headers, only the
/// trace context (the one header carried onto outcomes).
fn to_input(message: &BorrowedMessage<'_>) -> InputRecord {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .filter(|header| header.key == TRACEPARENT)
                .map(|header| {
                    (
                        header.key.to_string(),
                        header.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    InputRecord {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_without_a_position_is_stuck_only_when_records_wait_after_the_commit() {
        // Nothing committed: records from the partition's start wait.
        assert!(records_wait(None, 0, 10));
        assert!(!records_wait(None, 0, 0));
        // Committed up to the end: idle, not stuck.
        assert!(!records_wait(Some(10), 0, 10));
        assert!(records_wait(Some(9), 0, 10));
        // Committed before retention deleted the start: what waits starts at the low watermark.
        assert!(!records_wait(Some(3), 10, 10));
        assert!(records_wait(Some(3), 10, 11));
    }

    #[test]
    fn the_abort_failpoint_fails_its_batch_once_so_the_redone_batch_commits() {
        let failpoint = Failpoint::parse(Some("abort-before-commit:2"));
        assert!(failpoint.before_commit(1).is_ok());
        let error = failpoint.before_commit(2).unwrap_err();
        assert_eq!(error.class, ErrorClass::Abortable);
        assert!(failpoint.before_commit(2).is_ok(), "the redone batch 2");
    }

    #[test]
    fn failpoints_parse_their_action_and_batch_and_ignore_anything_else() {
        let actions = |v: &str| Failpoint::parse(Some(v)).actions;
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
            actions("freeze-after-offsets:4:7500,freeze-after-offsets:9:100"),
            vec![
                (FailAction::Freeze(Duration::from_millis(7500)), 4),
                (FailAction::Freeze(Duration::from_millis(100)), 9)
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
        assert_eq!(Failpoint::parse(None).actions, vec![]);
    }

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
    fn a_freeze_failpoint_does_not_fire_before_the_offsets_are_sent() {
        let failpoint = Failpoint::parse(Some("freeze-after-offsets:1:60000"));
        assert!(failpoint.before_commit(1).is_ok());
        // Another batch: returns at once (a freeze would stop this test process for a minute).
        failpoint.after_offsets(2);
    }
}
