//! The read side (CQRS): `orderflow serve`, a query-only replica of the whole state topic.
//!
//! The processors own partitions and answer only for orders they hold; a replica reads every
//! partition of the compacted state topic with read_committed from the beginning and keeps
//! following it, so it answers `GET /orders/{id}` and `GET /states` for any order, and scales
//! independently of the processors (it joins no group and writes nothing). It is as fresh as the
//! last state record it applied: `orderflow_replica_lag_records` counts records not yet applied and
//! `orderflow_replica_apply_delay_seconds` the time from a record's write to its application.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::codec::decode_order_state;
use crate::config::Settings;
use crate::kafka::{committed_reader_config, read_in_bulk, ClientConfigError};
use crate::machine::Definition;
use crate::ops::{Health, Metrics};
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

/// Materializes every partition of the state topic into `caches` until `shutdown` is set. Ready
/// (`health`) once every partition has been read to the end it had at start.
pub fn run(
    settings: &Settings,
    definition: &Definition,
    partitions: i32,
    caches: &SharedCaches,
    metrics: &Metrics,
    health: &Health,
    shutdown: &AtomicBool,
) -> Result<(), ReplicaError> {
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
    let mut assignment = TopicPartitionList::new();
    {
        let mut caches = caches.write();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .map_err(ReplicaError::Consumer)?;
            caches.insert(partition, PartitionCache::new());
        }
    }
    consumer
        .assign(&assignment)
        .map_err(ReplicaError::Consumer)?;
    tracing::info!(topic, partitions, "replica: reading the state topic");
    let started = Instant::now();
    let mut loading: BTreeSet<i32> = (0..partitions).collect();
    let mut undecodable = 0u64;
    let mut last_report = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        let now_ms = SystemClock.now_ms();
        health.beat(now_ms);
        match consumer.poll(Duration::from_millis(100)) {
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
                if let Some(cache) = caches.write().get_mut(&message.partition()) {
                    cache.apply(order_id, state.as_ref());
                }
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
            tracing::info!(
                orders = caches.orders(),
                undecodable,
                loading = loading.len(),
                "replica progress"
            );
            last_report = Instant::now();
        }
    }
    Ok(())
}
