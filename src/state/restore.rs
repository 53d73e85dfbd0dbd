//! Restoring a partition's cache from the compacted state topic.
//!
//! A restore reads the state partition from the beginning with read_committed up to its end (the
//! last stable offset: records of open or aborted transactions are never seen). Transaction markers
//! are never delivered, so the end is detected by librdkafka's end-of-partition event or by the
//! consumer's position reaching the end offset, never by counting records.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::PartitionCache;
use crate::codec::{decode_order_state, CodecError};
use crate::config::Settings;
use crate::kafka::{restore_consumer_config, ClientConfigError, EndOfPartitionIsNews};
use crate::machine::Definition;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Client settings are invalid.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// Kafka failed in a way retrying will not fix.
    #[error("restoring partition {partition} of {topic}: {source}")]
    Kafka {
        /// The state topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A state record cannot be read: the state topic holds data this definition cannot interpret.
    #[error("state record at {topic}/{partition}@{offset} cannot be read: {source}")]
    Corrupt {
        /// The state topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// The codec's error.
        source: CodecError,
    },
}

/// A finished restore of one partition.
#[derive(Debug)]
pub struct Restored {
    /// The restore job that produced it (a partition revoked and assigned again gets a new job;
    /// results of older jobs are stale).
    pub job: u64,
    /// The partition.
    pub partition: i32,
    /// Its committed state.
    pub cache: PartitionCache,
    /// State records read (including superseded ones and tombstones).
    pub records: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// What a restore worker reports to the processor.
#[derive(Debug)]
pub enum RestoreEvent {
    /// A partition is restored and can be processed.
    Done(Restored),
    /// A restore failed; the processor stops (restarting restores again).
    Failed(RestoreError),
}

/// The end offset of a partition (with read_committed: the last stable offset). Retries for up to
/// a minute while leadership is unknown or moving (e.g. right after a topic was created or while a
/// broker restarts).
pub fn end_offset<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<i64, KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(100);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, topic, partition, "end offset not known yet; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Restores `partitions` of the state topic on the calling thread, reporting each partition as
/// soon as it is complete. Stops early when `cancel` is set.
pub fn restore_partitions(
    job: u64,
    settings: &Settings,
    definition: &Definition,
    partitions: &[i32],
    events: &Sender<RestoreEvent>,
    cancel: &AtomicBool,
) -> Result<(), RestoreError> {
    let topic = settings.topics.state.as_str();
    let kafka = |partition: i32| {
        move |source: KafkaError| RestoreError::Kafka {
            topic: topic.to_string(),
            partition,
            source,
        }
    };
    let mut config = restore_consumer_config(settings)?;
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<EndOfPartitionIsNews> = config
        .create_with_context(EndOfPartitionIsNews)
        .map_err(kafka(-1))?;
    let started = Instant::now();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut caches: HashMap<i32, (PartitionCache, u64)> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &partition in partitions {
        let high = end_offset(&consumer, topic, partition).map_err(kafka(partition))?;
        ends.insert(partition, high);
        caches.insert(partition, (PartitionCache::new(), 0));
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka(partition))?;
    }
    let mut pending: HashSet<i32> = partitions.iter().copied().collect();
    let finish = |partition: i32, caches: &mut HashMap<i32, (PartitionCache, u64)>| {
        if let Some((cache, records)) = caches.remove(&partition) {
            tracing::info!(
                partition,
                orders = cache.len(),
                records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partition restored"
            );
            let _ = events.send(RestoreEvent::Done(Restored {
                job,
                partition,
                cache,
                records,
                elapsed: started.elapsed(),
            }));
        }
    };
    for (&partition, &end) in &ends {
        if end <= 0 {
            pending.remove(&partition);
            finish(partition, &mut caches);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(kafka(-1))?;
    let mut polls: u64 = 0;
    while !pending.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        polls += 1;
        let polled = consumer.poll(Duration::from_millis(100));
        let idle = polled.is_none();
        match polled {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) if pending.remove(&partition) => {
                finish(partition, &mut caches);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                // Broker away or leadership moving: librdkafka reconnects by itself; keep polling.
                tracing::warn!(error = %e, "restore consumer error; retrying");
            }
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some((cache, records)) = caches.get_mut(&partition) else {
                    continue;
                };
                *records += 1;
                let corrupt = |source| RestoreError::Corrupt {
                    topic: topic.to_string(),
                    partition,
                    offset: message.offset(),
                    source,
                };
                let key = message
                    .key()
                    .ok_or(CodecError::MissingKey)
                    .and_then(|k| std::str::from_utf8(k).map_err(|_| CodecError::KeyNotUtf8))
                    .map_err(corrupt)?;
                match message.payload() {
                    None => cache.apply(key, None),
                    Some(value) => {
                        let (order_id, state) =
                            decode_order_state(definition, value).map_err(corrupt)?;
                        cache.apply(&order_id, Some(&state));
                    }
                }
            }
        }
        // End offsets are compared with positions, not counts: markers are never delivered.
        // Asking for positions allocates, so only when idle or every few thousand records.
        if !(idle || polls % 4096 == 0) {
            continue;
        }
        if let Ok(positions) = consumer.position() {
            for element in positions.elements() {
                let partition = element.partition();
                if let (Offset::Offset(position), Some(end)) =
                    (element.offset(), ends.get(&partition))
                {
                    if position >= *end && pending.remove(&partition) {
                        finish(partition, &mut caches);
                    }
                }
            }
        }
    }
    Ok(())
}

/// How many restore consumers run side by side: `processor.restore_threads`, or when that is 0
/// the CPUs this process may use (cgroup limits included), at most 4.
pub fn restore_threads(settings: &Settings) -> usize {
    match settings.processor.restore_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    }
}

/// Splits `partitions` into at most `threads` groups of nearly equal size (none empty).
pub fn split_partitions(partitions: &[i32], threads: usize) -> Vec<Vec<i32>> {
    let threads = threads.clamp(1, partitions.len().max(1));
    let mut groups = vec![Vec::new(); threads];
    for (i, partition) in partitions.iter().enumerate() {
        groups[i % threads].push(*partition);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// Runs [`restore_partitions`] on a new thread, reporting a failure as an event too.
pub fn spawn_restore(
    job: u64,
    settings: Arc<Settings>,
    definition: Arc<Definition>,
    partitions: Vec<i32>,
    events: Sender<RestoreEvent>,
    cancel: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("orderflow-restore".into())
        .spawn(move || {
            if let Err(error) =
                restore_partitions(job, &settings, &definition, &partitions, &events, &cancel)
            {
                let _ = events.send(RestoreEvent::Failed(error));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_split_evenly_without_empty_groups() {
        assert_eq!(
            split_partitions(&[0, 1, 2, 3, 4], 2),
            vec![vec![0, 2, 4], vec![1, 3]]
        );
        assert_eq!(split_partitions(&[7], 4), vec![vec![7]]);
        assert_eq!(split_partitions(&[1, 2], 0), vec![vec![1, 2]]);
        assert!(split_partitions(&[], 3).is_empty());
        let all: Vec<i32> = (0..48).collect();
        let groups = split_partitions(&all, 3);
        assert_eq!(groups.len(), 3);
        assert!(groups.iter().all(|g| g.len() == 16));
    }
}
