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
//! capped exponential backoff inside the transactional producer; an aborted transaction is
//! followed by a back-off that grows with consecutive aborts ([`transaction::TransactionRunner`]).
//! Fatal errors (fenced by a newer instance with the same id) end the loop with the reason; the
//! service ends with it and the process exits non-zero, to be restarted.
//!
//! Everything here blocks and runs on a dedicated thread, never on an async runtime worker.

pub mod deadlines;
pub mod decide;
pub(crate) mod events;
pub(crate) mod failpoint;
pub(crate) mod output;
pub mod ownership;
pub mod poll;
pub mod traces;
pub mod transaction;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use self::deadlines::DeadlineIndex;
use self::decide::{
    decide_batch, expire_orders, BatchContext, BatchOutput, BatchStats, InputRecord,
};
use self::events::{
    PartitionRestored, RecordRedelivered, StoreFellBehind, TransactionAborted, TransactionCommitted,
};
pub use self::failpoint::Failpoints;
use self::ownership::Ownership;
use self::poll::{to_input, BatchWindow, ProcessorContext, RebalanceEvent};
use self::traces::BatchSpans;
use self::transaction::{Attempt, RunnerError, TransactionRunner};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::kafka::group::describe_group;
use crate::kafka::{
    parse_processor_client_id, processor_consumer_config, transactional_id, CallWatch,
    ClientConfigError, StatsCallback, TxnError,
};
use crate::machine::{Decider, Definition, OrderState, ParkingPolicy};
use crate::ops::{Health, Metrics};
use crate::state::restore::{
    restore_threads, spawn_restore, split_partitions, RestoreError, RestoreEvent,
};
use crate::state::store::{DiskState, StoreChange, StoreError, RETENTION_MARGIN_MS};
use crate::state::SharedCaches;
use crate::telemetry::context::Sampling;

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
    /// A read of a partition's local store failed; the batch is not committed and the store of
    /// the partition is discarded, so the restart restores it from the state topic.
    #[error("the local store of partition {partition} cannot be read ({why}); discarded it, the restart restores the partition from the state topic")]
    StoreUnreadable {
        /// The partition.
        partition: i32,
        /// What failed.
        why: String,
    },
    /// The local store refused a committed transaction's changes (a full or failing disk). The
    /// process stops; its restart catches the store up from its checkpoint, so nothing is lost.
    #[error("writing committed changes to the local store: {0} (the restart catches up from the store's checkpoint; free or fix the disk under state.dir)")]
    Store(#[source] StoreError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// An owned partition has records waiting but the consumer never started fetching it.
    #[error("partition {partition} of {topic} was assigned and restored {waited_secs} s ago, but the consumer has not fetched it although records wait (committed offset {committed}, end {end}). The consumer lost its committed-offset lookup (seen after a group-coordinator move, librdkafka #5586); the process exits so that it restarts with a fresh assignment. If this repeats after restarts, a hanging transaction may hold the group's offsets (`kafka-transactions.sh find-hanging --broker-id N` lists __consumer_offsets partitions; docs/operations.md, \"Hanging transactions\")")]
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

/// Threads that read a batch's cold orders from the local store side by side before deciding.
const COLD_READ_THREADS: usize = 2;

/// How long a restored partition may go without a known consumer position, while records wait,
/// before the processor gives up on it and exits (to be restarted).
const NOT_FETCHED_LIMIT: Duration = Duration::from_secs(60);

/// True when a partition whose consumer never got a position has records after the committed
/// offset: it is stuck, not idle.
fn records_wait(committed: Option<i64>, low: i64, end: i64) -> bool {
    end > committed.unwrap_or(low).max(low)
}

/// How long a starting processor waits for its group's coordinator to become ready.
const GROUP_COORDINATOR_PATIENCE: Duration = Duration::from_secs(60);

/// Running totals, logged periodically.
#[derive(Debug, Default)]
struct Totals {
    batches: u64,
    aborts: u64,
    stats: BatchStats,
}

/// What a processor shares with the rest of the service (and what tests inject).
pub struct Parts {
    /// The time decisions, deadlines and retention use.
    pub clock: Arc<dyn Clock>,
    /// The metrics it reports to.
    pub metrics: Metrics,
    /// Its liveness and readiness.
    pub health: Arc<Health>,
    /// Where it publishes its committed state (read by `GET /orders/{id}`).
    pub caches: SharedCaches,
    /// Times the producer's blocking calls for the watchdog.
    pub calls: Arc<CallWatch>,
    /// Faults to inject (builds with the `failpoints` feature only).
    pub failpoints: Failpoints,
    /// The local store, with the disk backend.
    pub disk: Option<Arc<DiskState>>,
}

impl Parts {
    /// Fresh parts on the wall clock, for `definition`'s metrics, with the failpoints of
    /// `ORDERFLOW_FAILPOINT`.
    pub fn new(definition: &Definition) -> Result<Parts, ProcessorError> {
        Ok(Parts {
            clock: Arc::new(SystemClock),
            metrics: Metrics::new(definition).map_err(ProcessorError::Metrics)?,
            health: Arc::new(Health::default()),
            caches: SharedCaches::default(),
            calls: Arc::new(CallWatch::new()),
            failpoints: Failpoints::from_env(),
            disk: None,
        })
    }
}

/// The processor of one instance.
pub struct Processor {
    settings: Arc<Settings>,
    decider: Decider,
    consumer: BaseConsumer<ProcessorContext>,
    transactions: TransactionRunner,
    caches: SharedCaches,
    /// Which partitions are restoring and which are owned.
    ownership: Ownership,
    /// Set on shutdown: running restores stop.
    restore_cancel: Arc<AtomicBool>,
    restore_tx: Sender<RestoreEvent>,
    restore_rx: Receiver<RestoreEvent>,
    batch: Vec<InputRecord>,
    totals: Totals,
    clock: Arc<dyn Clock>,
    deadlines: DeadlineIndex,
    metrics: Metrics,
    health: Arc<Health>,
    /// The local store (disk backend): written after each commit, restored from its checkpoint.
    disk: Option<Arc<DiskState>>,
    /// Which requests get spans (`traces`).
    sampling: Sampling,
}

impl Processor {
    /// Creates the clients, initialises transactions (fencing an earlier instance with the same
    /// id) and subscribes to the requests topic.
    pub fn new(
        settings: Arc<Settings>,
        definition: Arc<Definition>,
        parts: Parts,
    ) -> Result<Processor, ProcessorError> {
        let Parts {
            clock,
            metrics,
            health,
            caches,
            calls,
            failpoints,
            disk,
        } = parts;
        let decider = Decider::new(definition, settings.processor.recent_requests).with_parking(
            ParkingPolicy {
                max_per_order: settings.processor.parking_max_per_order,
                max_wait_ms: settings.processor.parking_max_wait_ms as i64,
            },
        );
        let producer_metrics = metrics.clone();
        let on_stats: StatsCallback = Arc::new(move |statistics| {
            producer_metrics.record_kafka_statistics("producer", statistics)
        });
        let transactions =
            TransactionRunner::new(Arc::clone(&settings), Some(on_stats), calls, failpoints)
                .map_err(|error| match error {
                    RunnerError::Config(error) => ProcessorError::Config(error),
                    RunnerError::Producer(source) => ProcessorError::Fatal {
                        transactional_id: transactional_id(&settings),
                        source: Box::new(source),
                    },
                })?;
        let context = ProcessorContext::new(settings.topics.requests.clone(), metrics.clone());
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
            sampling: Sampling::of(&settings.traces),
            settings,
            decider,
            consumer,
            transactions,
            caches,
            ownership: Ownership::new(),
            restore_cancel: Arc::new(AtomicBool::new(false)),
            restore_tx,
            restore_rx,
            batch: Vec::new(),
            totals: Totals::default(),
            clock,
            deadlines: DeadlineIndex::new(),
            metrics,
            disk,
            health,
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
            let ready = self.ownership.is_ready();
            self.health.set_ready(ready);
            self.metrics.ready.set(i64::from(ready));
            self.metrics
                .owned_partitions
                .set(self.ownership.assigned_count() as i64);
            self.metrics
                .restoring_partitions
                .set(self.ownership.restoring() as i64);
            self.metrics.cached_orders.set(self.caches.orders() as i64);
            self.metrics
                .cached_order_bytes
                .set(self.caches.memory_bytes() as i64);
            if let Some(disk) = &self.disk {
                // Restoring partitions count too: their orders arrive soon.
                if disk.hot.set_partitions(self.ownership.assigned_count()) {
                    for cache in self.caches.write().values_mut() {
                        cache.fit_budget();
                    }
                }
                self.metrics.evicted_orders_are(disk.hot.evicted());
                self.metrics.store_reads_are(disk.hot.store_reads());
            }
            self.metrics.spans_are(
                crate::telemetry::spans_exported(),
                crate::telemetry::spans_dropped(),
            );
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
                self.remove_unowned_stores();
            }
        }
        tracing::info!("shutting down: no transaction is open; leaving the group");
        if let Some(disk) = &self.disk {
            // A clean stop leaves nothing for the next start to replay.
            if let Err(e) = disk.store.persist() {
                tracing::warn!(error = %e, "cannot flush the local store; the next start replays more of the tail");
            }
        }
        self.restore_cancel.store(true, Ordering::Relaxed);
        self.consumer.unsubscribe();
        Ok(())
    }

    fn handle_rebalance_events(&mut self) -> Result<(), ProcessorError> {
        for event in self.consumer.context().take() {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    // A restore in progress finishes for its other partitions; these ones'
                    // results will be stale.
                    self.ownership.revoked(&partitions);
                    for p in &partitions {
                        self.caches.write().remove(p);
                        self.deadlines.drop_partition(*p);
                    }
                    // Unprocessed records of revoked partitions: the new owner reads them again.
                    self.batch.retain(|r| !partitions.contains(&r.partition));
                }
                RebalanceEvent::Assigned(partitions) => {
                    let Some((job, partitions)) = self.ownership.assigned(&partitions) else {
                        continue;
                    };
                    self.start_restore(job, &partitions)?;
                }
            }
        }
        Ok(())
    }

    /// Starts restore job `job` for `partitions` (paused meanwhile).
    fn start_restore(&self, job: u64, partitions: &[i32]) -> Result<(), ProcessorError> {
        // Side by side: one consumer's poll loop, not decoding, bounds a restore.
        for group in split_partitions(partitions, restore_threads(&self.settings)) {
            spawn_restore(
                job,
                Arc::clone(&self.settings),
                Arc::clone(self.decider.definition()),
                group,
                self.restore_tx.clone(),
                Arc::clone(&self.restore_cancel),
                self.disk.clone(),
            )?;
        }
        Ok(())
    }

    /// The local store of `partitions` fell behind their committed state (a store write failed
    /// after the commit): they stop deciding, forget their cache, and restore from their store's
    /// checkpoint — reading the state topic's tail, the failed write's records included — before
    /// the consumer resumes them where this instance's commits left them. The processor never
    /// decides with a cache ahead of its store, nor writes on top of a store that missed a write.
    fn catch_up(&mut self, partitions: &[i32], error: &StoreError) -> Result<(), ProcessorError> {
        StoreFellBehind { partitions, error }.emit(&self.metrics);
        let Some((job, partitions)) = self.ownership.catch_up(partitions) else {
            return Ok(());
        };
        let positions = self.consumer.position().ok();
        let mut resume_at = BTreeMap::new();
        for &partition in &partitions {
            let first_in_batch = self
                .batch
                .iter()
                .find(|r| r.partition == partition)
                .map(|r| r.offset);
            let position = || {
                positions
                    .as_ref()?
                    .find_partition(&self.settings.topics.requests, partition)?
                    .offset()
                    .to_raw()
                    .filter(|o| *o >= 0)
            };
            if let Some(offset) = self
                .ownership
                .committed_offset(partition)
                .or(first_in_batch)
                .or_else(position)
            {
                resume_at.insert(partition, offset);
            }
            self.caches.write().remove(&partition);
            self.deadlines.drop_partition(partition);
        }
        self.batch.retain(|r| !partitions.contains(&r.partition));
        self.rewind(&resume_at);
        for &partition in &partitions {
            self.pause(partition);
        }
        self.start_restore(job, &partitions)
    }

    fn handle_restore_events(&mut self) -> Result<(), ProcessorError> {
        while let Ok(event) = self.restore_rx.try_recv() {
            match event {
                RestoreEvent::Failed(error) => return Err(error.into()),
                RestoreEvent::Done(restored) => {
                    // A restore of a partition revoked meanwhile (and maybe assigned again, to a
                    // newer job) is stale: another instance may have written to it since.
                    if !self
                        .ownership
                        .restored(restored.partition, restored.job, Instant::now())
                    {
                        continue;
                    }
                    PartitionRestored {
                        partition: restored.partition,
                        orders: restored.cache.len(),
                        records: restored.records,
                        elapsed: restored.elapsed,
                    }
                    .emit(&self.metrics);
                    // A local store keeps its own deadline entries; memory holds only recent orders.
                    if !restored.cache.is_backed() {
                        for (order_id, state) in restored.cache.iter() {
                            let deadline = self.decider.next_deadline(&state);
                            self.deadlines
                                .update(restored.partition, order_id, None, deadline);
                        }
                    }
                    self.caches
                        .write()
                        .insert(restored.partition, restored.cache);
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&self.settings.topics.requests, restored.partition);
                    if let Err(e) = self.consumer.resume(&tpl) {
                        tracing::error!(error = %e, partition = restored.partition, "cannot resume partition");
                    }
                }
            }
        }
        Ok(())
    }

    /// Polls until the batch is full, its wait is over, or (while empty) a poll comes back empty.
    fn fill_batch(&mut self, shutdown: &AtomicBool) -> Result<(), ProcessorError> {
        let mut window = BatchWindow::new(
            self.settings.processor.batch_max_records,
            Duration::from_millis(self.settings.processor.batch_max_wait_ms),
        );
        loop {
            let polled = self
                .consumer
                .poll(window.poll_timeout())
                .map(|m| m.map(|m| to_input(&m)));
            match polled {
                None => {}
                Some(Err(e)) => {
                    // librdkafka reconnects by itself (e.g. while a broker restarts).
                    tracing::warn!(error = %e, "consumer error");
                }
                Some(Ok(input)) => {
                    if self
                        .ownership
                        .already_decided(input.partition, input.offset)
                    {
                        RecordRedelivered {
                            partition: input.partition,
                            offset: input.offset,
                        }
                        .emit(&self.metrics);
                    } else if self.ownership.owns(input.partition) {
                        self.batch.push(input);
                        window.took();
                    } else {
                        // Not restored yet: put the record back and keep the partition paused.
                        tracing::info!(
                            partition = input.partition,
                            offset = input.offset,
                            "a record of a partition not yet restored arrived; putting it back"
                        );
                        self.rewind(&BTreeMap::from([(input.partition, input.offset)]));
                        self.pause(input.partition);
                    }
                }
            }
            self.handle_rebalance_events()?;
            self.handle_restore_events()?;
            if window.done(self.batch.len(), shutdown.load(Ordering::Relaxed)) {
                return Ok(());
            }
        }
    }

    /// Fails when a restored partition has had records waiting for [`NOT_FETCHED_LIMIT`] without
    /// the consumer ever delivering one while librdkafka's fetcher for it is not active. librdkafka can lose a partition's committed-offset lookup
    /// when the group coordinator moves (its fetcher then never starts, and nothing reports it);
    /// only a new assignment recovers it, so the process exits and is restarted.
    fn check_unfetched_partitions(&mut self) -> Result<(), ProcessorError> {
        if !self.ownership.any_unfetched() {
            return Ok(());
        }
        let topic = &self.settings.topics.requests;
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements_for_topic(topic) {
                if let Offset::Offset(_) = element.offset() {
                    self.ownership.fetched(element.partition());
                }
            }
        }
        let overdue = self
            .ownership
            .unfetched_for(NOT_FETCHED_LIMIT, Instant::now());
        for (partition, waited) in overdue {
            // A running fetcher that delivers nothing (e.g. it skips aborted transactional
            // records of an upstream producer) is not stuck: only a fetcher that never started is.
            if self.consumer.context().fetch_state(partition).as_deref() == Some("active") {
                self.ownership.recheck_later(partition, Instant::now());
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
            self.ownership.recheck_later(partition, Instant::now());
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
            sampling: self.sampling,
        }
    }

    /// Runs the expiry pass for orders whose deadline is due, in its own transaction.
    fn expire_due(&mut self) -> Result<(), ProcessorError> {
        let now = self.clock.now_ms();
        let limit = self.settings.processor.batch_max_records;
        let mut due = self.deadlines.due(&self.caches.read(), now, limit);
        // The local store's due entries, by order: their deadline as stored.
        let mut stored_deadlines: std::collections::HashMap<(i32, String), i64> =
            Default::default();
        if let Some(disk) = &self.disk {
            let backed: Vec<i32> = self
                .caches
                .read()
                .iter()
                .filter(|(_, cache)| cache.is_backed())
                .map(|(p, _)| *p)
                .collect();
            for partition in backed {
                let left = limit.saturating_sub(due.len());
                if left == 0 {
                    break;
                }
                let stored = disk
                    .store
                    .due(partition, now, left)
                    .map_err(ProcessorError::Store)?;
                for (deadline, id) in stored {
                    stored_deadlines.insert((partition, id.clone()), deadline);
                    due.push((partition, id));
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let output = expire_orders(&self.batch_context(), &self.caches.read(), &due, now);
        self.check_store_reads()?;
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
                match (
                    &self.disk,
                    stored_deadlines.get(&(partition, order_id.clone())),
                ) {
                    (Some(disk), Some(&stored)) => disk
                        .store
                        .move_deadline(partition, &order_id, stored, future)
                        .map_err(ProcessorError::Store)?,
                    _ => self
                        .deadlines
                        .update(partition, &order_id, deadline, future),
                }
            }
            return Ok(());
        }
        // If the transaction aborts, the orders stay due and are tried again on the next pass.
        self.run_transaction(output, 0)?;
        Ok(())
    }

    /// Removes the local stores of partitions this instance no longer owns once their checkpoint
    /// is too old to be trusted if they came back (the state topic's `delete.retention.ms` less
    /// the clock-skew margin); younger ones are kept, for a partition that comes back reads only
    /// its tail. Only while nothing restores, so no restore of this instance still writes to one.
    fn remove_unowned_stores(&self) {
        let Some(disk) = &self.disk else {
            return;
        };
        if !self.ownership.is_ready() {
            return;
        }
        let max_age_ms = disk.delete_retention_ms.saturating_sub(RETENTION_MARGIN_MS);
        let owned = |p: i32| self.ownership.state(p).is_some();
        match disk
            .store
            .remove_unowned(owned, max_age_ms, crate::clock::wall_clock_ms())
        {
            Ok(removed) if !removed.is_empty() => tracing::info!(
                partitions = ?removed,
                max_age_s = max_age_ms / 1000,
                "removed the local stores of partitions not owned here: their checkpoint is older \
                 than the state topic's delete.retention.ms less the clock-skew margin, so they \
                 could not be trusted if the partitions came back"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "cannot remove the local stores of partitions not owned here; trying again later"
            ),
        }
    }

    /// Decides the batch and writes it in one transaction; on an abortable failure, aborts and
    /// rewinds so the batch is read again.
    fn commit_batch(&mut self) -> Result<(), ProcessorError> {
        if self.disk.is_some() {
            let mut wanted: Vec<(i32, &str)> = self
                .batch
                .iter()
                .filter_map(|r| Some((r.partition, std::str::from_utf8(r.key.as_deref()?).ok()?)))
                .collect();
            self.caches.load_cold(&mut wanted, COLD_READ_THREADS);
        }
        let output = decide_batch(
            &self.batch_context(),
            &self.caches.read(),
            &self.batch,
            self.clock.now_ms(),
        );
        let inputs = self.batch.len();
        self.check_store_reads()?;
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

    /// Stops before committing decisions taken while a read of the local store failed (an order
    /// may have looked unknown): the partition's store is discarded, so the restart rebuilds it
    /// from the state topic and decides the batch again. Nothing was committed, nothing is lost.
    fn check_store_reads(&self) -> Result<(), ProcessorError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let failed = self
            .caches
            .read()
            .iter()
            .find_map(|(p, cache)| cache.store_failure().map(|why| (*p, why)));
        let Some((partition, why)) = failed else {
            return Ok(());
        };
        if let Err(e) = disk.store.discard(partition) {
            tracing::error!(partition, error = %e, "cannot discard the local store of the partition");
        }
        Err(ProcessorError::StoreUnreadable { partition, why })
    }

    /// Writes a committed transaction's changes to the local store (disk backend), with each
    /// touched state partition's checkpoint one above the last state record the transaction
    /// wrote there, in one atomic batch.
    fn write_to_store(&self, output: &BatchOutput) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        if output.changes.is_empty() {
            return Ok(());
        }
        // The store keeps the state record the transaction wrote, byte for byte.
        let changes: Vec<StoreChange<'_>> = output
            .changes
            .iter()
            .map(|change| StoreChange {
                partition: change.partition,
                order_id: &change.order_id,
                value: output.records[change.record].value.as_deref(),
                deadline_before: change.deadline_before,
                deadline_after: change
                    .state
                    .as_ref()
                    .and_then(|s| self.decider.next_deadline(s)),
            })
            .collect();
        let checkpoints: BTreeMap<i32, i64> = self
            .transactions
            .state_offsets()
            .into_iter()
            .map(|(partition, last)| (partition, last + 1))
            .collect();
        disk.store
            .write(&changes, &checkpoints, crate::clock::wall_clock_ms())
    }

    /// Writes an output in one transaction and, once committed, applies its state changes.
    /// Returns false when the transaction was aborted (the caller redoes the work).
    fn run_transaction(
        &mut self,
        mut output: BatchOutput,
        inputs: usize,
    ) -> Result<bool, ProcessorError> {
        let number = self.totals.batches + 1;
        let spans = BatchSpans::start(number, inputs, &mut output, &self.settings);
        let _span = tracing::debug_span!(
            "transaction",
            number,
            inputs,
            records = output.records.len()
        )
        .entered();
        let group = if output.next_offsets.is_empty() {
            None
        } else {
            self.consumer.group_metadata()
        };
        let attempt = self
            .transactions
            .run(
                number,
                &output.records,
                &output.next_offsets,
                group.as_ref(),
            )
            .map_err(|source| ProcessorError::Fatal {
                transactional_id: transactional_id(&self.settings),
                source: Box::new(source),
            })?;
        match attempt {
            Attempt::Committed(steps) => {
                TransactionCommitted {
                    number,
                    inputs,
                    output: &output,
                    steps,
                }
                .emit(&self.metrics);
                if let Some(spans) = spans {
                    spans.committed();
                }
                let written = if self.transactions.failpoints().before_store_write(number) {
                    Err(StoreError::Io {
                        path: "failpoint fail-store-write".into(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::StorageFull,
                            "no space left on device",
                        ),
                    })
                } else {
                    self.write_to_store(&output)
                };
                if let Err(error) = written {
                    // Its outcomes stand; the caches must not run ahead of the store.
                    self.ownership.committed(&output.next_offsets);
                    let mut touched: Vec<i32> =
                        output.changes.iter().map(|c| c.partition).collect();
                    touched.sort_unstable();
                    touched.dedup();
                    self.catch_up(&touched, &error)?;
                    self.totals.batches += 1;
                    self.totals.stats += output.stats;
                    return Ok(true);
                }
                let mut caches = self.caches.write();
                for change in output.changes {
                    let Some(cache) = caches.get_mut(&change.partition) else {
                        continue;
                    };
                    if !cache.is_backed() {
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
                    }
                    cache.apply(&change.order_id, change.state.as_ref());
                }
                drop(caches);
                self.ownership.committed(&output.next_offsets);
                if self
                    .transactions
                    .failpoints()
                    .redeliver_after_commit(number)
                {
                    let start: BTreeMap<i32, i64> =
                        output.next_offsets.keys().map(|&p| (p, 0)).collect();
                    self.rewind(&start);
                }
                self.totals.batches += 1;
                self.totals.stats += output.stats;
                Ok(true)
            }
            Attempt::Aborted {
                error,
                producer_replaced,
            } => {
                TransactionAborted {
                    error: &error,
                    records: output.records.len(),
                    producer_replaced,
                }
                .emit(&self.metrics);
                if let Some(spans) = spans {
                    spans.aborted(&error.to_string());
                }
                self.totals.aborts += 1;
                Ok(false)
            }
        }
    }
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
}
