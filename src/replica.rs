//! The read side (CQRS): `orderflow serve`, a query-only replica of the whole state topic.
//!
//! The processors own partitions and answer only for orders they hold; a replica reads every
//! partition of the compacted state topic with read_committed from the beginning and keeps
//! following it, so it answers `GET /orders/{id}` and `GET /states` for any order, and scales
//! independently of the processors (it joins no group and writes nothing). It is as fresh as the
//! last state record it applied: `orderflow_replica_lag_records` counts records not yet applied and
//! `orderflow_replica_apply_delay_seconds` the time from a record's write to its application.
//!
//! With `state.backend = "disk"` the replica keeps every order in its own local store
//! (`state.dir/replica-<instance id>/`) behind hot orders bounded by `state.memory_budget_mb`,
//! as a processor does: each batch of state records read is written to the store with the
//! partitions' checkpoints, then to memory, and a restart reads only what follows the
//! checkpoints. The replica never expires anything, so its store keeps no deadline entries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::codec::decode_order_state;
use crate::config::Settings;
use crate::kafka::{committed_reader_config, read_in_bulk, ClientConfigError};
use crate::machine::{Definition, OrderState};
use crate::ops::{Health, Metrics};
use crate::state::restore::{starting_point, watermarks, RestoreError};
use crate::state::store::{DiskState, PartitionBounds, StoreChange, StoreError};
use crate::state::{PartitionCache, SharedCaches};

/// Why the replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Client settings are invalid.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// The reader could not be created or assigned.
    #[error(
        "state topic reader: {0} (check kafka.bootstrap_servers and that topics.state exists)"
    )]
    Consumer(#[source] KafkaError),
    /// The local store's checkpoint could not be judged or the store not prepared.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// Writing the local store failed (e.g. a full disk): the replica stops rather than serve
    /// from memory what its store lacks; restarted, it reads from its checkpoints.
    #[error("replica: writing the local store failed: {0} (check the disk under state.dir)")]
    Store(#[from] StoreError),
}

/// A state record read, waiting to be written to the store and applied to memory.
struct Applied {
    partition: i32,
    offset: i64,
    order_id: String,
    value: Option<Vec<u8>>,
    state: Option<OrderState>,
}

/// How many records the replica applies at most in one store write.
const APPLY_BATCH: usize = 4096;
/// How long a record may wait for its batch to fill.
const APPLY_WAIT: Duration = Duration::from_millis(20);

/// Writes `pending` to the store (with each partition's checkpoint after its last record), then
/// to the caches: the store first, so an order dropped from memory is always in the store.
fn apply(
    pending: &mut Vec<Applied>,
    caches: &SharedCaches,
    disk: Option<&DiskState>,
    metrics: &Metrics,
    now_ms: i64,
) -> Result<(), ReplicaError> {
    if pending.is_empty() {
        return Ok(());
    }
    if let Some(disk) = disk {
        let changes: Vec<StoreChange<'_>> = pending
            .iter()
            .map(|a| StoreChange {
                partition: a.partition,
                order_id: &a.order_id,
                value: a.value.as_deref(),
                deadline_before: None,
                deadline_after: None,
            })
            .collect();
        let checkpoints: BTreeMap<i32, i64> = pending
            .iter()
            .map(|a| (a.partition, a.offset + 1))
            .collect();
        disk.store.write(&changes, &checkpoints, now_ms)?;
    }
    let mut caches = caches.write();
    for a in pending.drain(..) {
        if let Some(cache) = caches.get_mut(&a.partition) {
            cache.apply(&a.order_id, a.state.as_ref());
        }
    }
    drop(caches);
    if let Some(disk) = disk {
        metrics.evicted_orders_are(disk.hot.evicted());
        metrics.store_reads_are(disk.hot.store_reads());
    }
    Ok(())
}

/// The reader's client context: lag metrics from librdkafka statistics, end of partition as news.
struct ReplicaContext {
    metrics: Metrics,
    topic: String,
}

impl ClientContext for ReplicaContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.record_replica_lag(&statistics, &self.topic);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(%error, reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "state topic reader");
        }
    }
}

impl ConsumerContext for ReplicaContext {}

/// The replica's shared parts: where it serves from and what it reports to.
pub struct ReplicaParts<'a> {
    /// The orders it serves (every partition).
    pub caches: &'a SharedCaches,
    /// Its metrics.
    pub metrics: &'a Metrics,
    /// Its health (ready once loaded).
    pub health: &'a Health,
    /// Its local store (`state.backend = "disk"`), or none to hold every order in memory.
    pub disk: Option<Arc<DiskState>>,
}

/// Materializes every partition of the state topic into `caches` (and the local store, if any)
/// until `shutdown` is set. Ready (`health`) once every partition has been read to the end it had
/// at start.
pub fn run(
    settings: &Settings,
    definition: &Arc<Definition>,
    partitions: i32,
    parts: ReplicaParts<'_>,
    shutdown: &AtomicBool,
) -> Result<(), ReplicaError> {
    let ReplicaParts {
        caches,
        metrics,
        health,
        disk,
    } = parts;
    let topic = settings.topics.state.clone();
    let mut config = committed_reader_config(
        &settings.kafka,
        &format!("orderflow-replica.{}", settings.instance_id),
        &format!("orderflow-replica-{}", Uuid::new_v4().simple()),
    )?;
    // The first load reads the whole state topic, as a processor's restore does.
    read_in_bulk(&mut config);
    let consumer: BaseConsumer<ReplicaContext> = config
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "1000")
        .create_with_context(ReplicaContext {
            metrics: metrics.clone(),
            topic: topic.clone(),
        })
        .map_err(ReplicaError::Consumer)?;
    if let Some(disk) = &disk {
        disk.hot
            .set_partitions(usize::try_from(partitions).unwrap_or(1));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (start, cache) = match &disk {
            None => (Offset::Beginning, PartitionCache::new()),
            Some(disk) => {
                let (earliest, end) =
                    watermarks(&consumer, &topic, partition).map_err(ReplicaError::Consumer)?;
                let bounds = PartitionBounds {
                    earliest,
                    end,
                    delete_retention_ms: disk.delete_retention_ms,
                };
                let (start, _) = starting_point(disk, &topic, partition, &bounds)?;
                let cache =
                    PartitionCache::backed(Arc::clone(disk), partition, Arc::clone(definition));
                (start, cache)
            }
        };
        assignment
            .add_partition_offset(&topic, partition, start)
            .map_err(ReplicaError::Consumer)?;
        caches.write().insert(partition, cache);
    }
    consumer
        .assign(&assignment)
        .map_err(ReplicaError::Consumer)?;
    tracing::info!(topic, partitions, "replica: reading the state topic");
    let started = Instant::now();
    let mut loading: BTreeSet<i32> = (0..partitions).collect();
    let mut undecodable = 0u64;
    let mut last_report = Instant::now();
    let mut pending: Vec<Applied> = Vec::new();
    let mut oldest_pending = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        let now_ms = SystemClock.now_ms();
        health.beat(now_ms);
        let polled = consumer.poll(if pending.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        });
        // A batch is applied when full, when nothing more waits, when it is old enough, and
        // before a partition's end is taken as loaded.
        if pending.len() >= APPLY_BATCH
            || (!pending.is_empty()
                && (polled.is_none()
                    || oldest_pending.elapsed() >= APPLY_WAIT
                    || matches!(polled, Some(Err(KafkaError::PartitionEOF(_))))))
        {
            apply(&mut pending, caches, disk.as_deref(), metrics, now_ms)?;
        }
        match polled {
            None => {}
            Some(Ok(message)) => {
                let Some(order_id) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    undecodable += 1;
                    continue;
                };
                let state = match message.payload() {
                    None => None,
                    Some(value) => match decode_order_state(definition, value) {
                        Ok((_, state)) => Some(state),
                        Err(e) => {
                            // E.g. written under a newer definition: skipped, not fatal, so the
                            // other orders stay served; counted in the periodic report.
                            undecodable += 1;
                            tracing::debug!(error = %e, partition = message.partition(), offset = message.offset(), "replica: undecodable state record");
                            continue;
                        }
                    },
                };
                if pending.is_empty() {
                    oldest_pending = Instant::now();
                }
                pending.push(Applied {
                    partition: message.partition(),
                    offset: message.offset(),
                    order_id: order_id.to_string(),
                    value: message.payload().map(<[u8]>::to_vec),
                    state,
                });
                if let Some(written_ms) = message.timestamp().to_millis() {
                    metrics
                        .replica_apply_delay_seconds
                        .observe((now_ms - written_ms).max(0) as f64 / 1000.0);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition)))
                if loading.remove(&partition) && loading.is_empty() =>
            {
                health.set_ready(true);
                metrics.ready.set(1);
                tracing::info!(
                    orders = caches.orders(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "replica: state topic loaded; serving"
                );
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "replica: state topic reader"),
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            metrics.cached_orders.set(caches.orders() as i64);
            metrics.cached_order_bytes.set(caches.memory_bytes() as i64);
            tracing::info!(
                orders = caches.orders(),
                undecodable,
                loading = loading.len(),
                "replica progress"
            );
            last_report = Instant::now();
        }
    }
    apply(
        &mut pending,
        caches,
        disk.as_deref(),
        metrics,
        SystemClock.now_ms(),
    )?;
    if let Some(disk) = &disk {
        disk.store.persist()?;
    }
    Ok(())
}
