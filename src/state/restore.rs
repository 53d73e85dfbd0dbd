//! Restoring a partition's cache from the compacted state topic.
//!
//! A restore reads the state partition from the beginning with read_committed up to its end (the
//! last stable offset: records of open or aborted transactions are never seen), and it ends only
//! once that last stable offset has reached the high watermark seen at assignment, so that a
//! transaction a previous owner left open is resolved and, if committed, read
//! ([`restore_partitions`]). Transaction markers are never delivered, so the end is detected by
//! librdkafka's end-of-partition event or by the consumer's position reaching the end offset,
//! never by counting records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::store::{distrust, DiskState, PartitionBounds, StoreChange, StoreError};
use super::PartitionCache;
use crate::clock::wall_clock_ms;
use crate::codec::{decode_order_state, CodecError};
use crate::config::Settings;
use crate::kafka::{restore_consumer_config, ClientConfigError, EndOfPartitionIsNews};
use crate::machine::{Decider, Definition};

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
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreWriteError),
}

/// The local store failed while a restore wrote to it (a full or failing disk).
#[derive(Debug, thiserror::Error)]
#[error("restoring partition {partition} into the local store: {source}")]
pub struct StoreWriteError {
    /// The partition.
    pub partition: i32,
    /// The store's error.
    pub source: StoreError,
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
    watermarks(consumer, topic, partition).map(|(_, end)| end)
}

/// The earliest and end offsets of a partition, retried as [`end_offset`] says.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(100);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(offsets) => return Ok(offsets),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, topic, partition, "offsets not known yet; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How often a restore waiting for an open transaction asks for the last stable offset again.
const STABLE_POLL: Duration = Duration::from_millis(100);
/// How often a restore that keeps waiting says so again.
const WAIT_REPORT: Duration = Duration::from_secs(15);

/// One partition's restore in progress.
struct PartitionRestore {
    partition: i32,
    cache: PartitionCache,
    /// State records read.
    records: u64,
    /// The high watermark seen at assignment: everything below it, open transactions included,
    /// must be resolved and read before the partition is restored.
    target: i64,
    /// The offset the restore reads up to: the last stable offset, once it reached `target`.
    /// `None` while a transaction below `target` is still open.
    end: Option<i64>,
    /// Since when the restore waits for the last stable offset, and when it last said so.
    waiting: Option<(Instant, Instant)>,
    /// The local store's checkpoint the restore started from.
    from_checkpoint: Option<i64>,
    /// Records read but not yet written to the local store (disk backend only).
    pending: Vec<PendingChange>,
    /// Whether it has waited longer than any transaction may stay open ([`hanging_after_ms`]).
    hanging: bool,
}

/// A state record read by a restore, waiting to be written to the local store.
struct PendingChange {
    order_id: String,
    value: Option<Vec<u8>>,
    deadline_before: Option<i64>,
    deadline_after: Option<i64>,
}

/// How many records a restore writes to the local store at once.
const STORE_BATCH: usize = 4096;

/// Writes a restore's pending records with the checkpoint `next_offset`.
fn flush_to_store(
    disk: &DiskState,
    partition: i32,
    pending: &mut Vec<PendingChange>,
    next_offset: i64,
) -> Result<(), RestoreError> {
    let changes: Vec<StoreChange<'_>> = pending
        .iter()
        .map(|p| StoreChange {
            partition,
            order_id: &p.order_id,
            value: p.value.as_deref(),
            deadline_before: p.deadline_before,
            deadline_after: p.deadline_after,
        })
        .collect();
    disk.store
        .write(
            &changes,
            &std::collections::BTreeMap::from([(partition, next_offset)]),
            wall_clock_ms(),
        )
        .map_err(|source| StoreWriteError { partition, source })?;
    pending.clear();
    Ok(())
}

/// Where a partition's restore starts: from its local store's checkpoint when the store can be
/// trusted (only the tail is read), else from the topic's beginning (the store, if any,
/// discarded with one log line saying why, and rebuilt as the topic is read).
pub fn starting_point(
    disk: &DiskState,
    topic: &str,
    partition: i32,
    bounds: &PartitionBounds,
) -> Result<(Offset, Option<i64>), RestoreError> {
    let store = &disk.store;
    let checkpoint = store.checkpoint(partition);
    let reason = match &checkpoint {
        Err(e) => Some(format!("it cannot be read ({e})")),
        Ok(c) => distrust(*c, bounds, wall_clock_ms()),
    };
    match (reason, checkpoint) {
        (None, Ok(Some(checkpoint))) => {
            tracing::info!(
                topic,
                partition,
                checkpoint = checkpoint.next_offset,
                end = bounds.end,
                "restoring from the local store's checkpoint: only the tail is read from the state topic"
            );
            Ok((
                Offset::Offset(checkpoint.next_offset),
                Some(checkpoint.next_offset),
            ))
        }
        (reason, checkpoint) => {
            if !matches!(checkpoint, Ok(None)) {
                tracing::warn!(
                    topic,
                    partition,
                    reason = %reason.unwrap_or_default(),
                    "the local store of this partition cannot be trusted; discarded, restoring from the state topic"
                );
            }
            store
                .discard(partition)
                .map_err(|source| StoreWriteError { partition, source })?;
            Ok((Offset::Beginning, None))
        }
    }
}

/// Restores `partitions` of the state topic on the calling thread, reporting each partition as
/// soon as it is complete. Stops early when `cancel` is set.
///
/// A partition is complete only once its last stable offset has reached the high watermark seen
/// at assignment. A previous owner frozen past its session timeout, but not past its transaction
/// timeout, may still commit a transaction it left open, and the offsets it sent to that
/// transaction become the new owner's starting point: ending at the last stable offset seen at
/// assignment would lose that transaction's state changes (and its request ids) while the
/// consumer starts after its inputs. The wait is bounded by the broker: the transaction commits,
/// or the coordinator aborts it after `transaction.timeout.ms`.
pub fn restore_partitions(
    job: u64,
    settings: &Settings,
    definition: &Arc<Definition>,
    partitions: &[i32],
    events: &Sender<RestoreEvent>,
    cancel: &AtomicBool,
    disk: Option<&Arc<DiskState>>,
) -> Result<(), RestoreError> {
    let topic = settings.topics.state.as_str();
    // Only a store needs deadlines at restore (the processor's in-memory index computes its own).
    let decider =
        disk.map(|_| Decider::new(Arc::clone(definition), settings.processor.recent_requests));
    let backed = |disk: &Arc<DiskState>, partition| {
        PartitionCache::backed(Arc::clone(disk), partition, Arc::clone(definition))
    };
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
    // ListOffsets answers with the last stable offset for read_committed clients and with the
    // high watermark for read_uncommitted ones.
    config.set("isolation.level", "read_uncommitted");
    let uncommitted: BaseConsumer<EndOfPartitionIsNews> = config
        .create_with_context(EndOfPartitionIsNews)
        .map_err(kafka(-1))?;
    let started = Instant::now();
    let mut restores: HashMap<i32, PartitionRestore> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &partition in partitions {
        let target = end_offset(&uncommitted, topic, partition).map_err(kafka(partition))?;
        let (earliest, stable) =
            watermarks(&consumer, topic, partition).map_err(kafka(partition))?;
        let (start, cache, from_checkpoint) = match disk {
            None => (Offset::Beginning, PartitionCache::new(), None),
            Some(disk) => {
                let bounds = PartitionBounds {
                    earliest,
                    end: target,
                    delete_retention_ms: disk.delete_retention_ms,
                };
                let (start, checkpoint) = starting_point(disk, topic, partition, &bounds)?;
                (start, backed(disk, partition), checkpoint)
            }
        };
        let mut restore = PartitionRestore {
            partition,
            cache,
            records: 0,
            target,
            end: None,
            waiting: None,
            from_checkpoint,
            pending: Vec::new(),
            hanging: false,
        };
        restore.stable_offset_is(stable, started, settings);
        restores.insert(partition, restore);
        tpl.add_partition_offset(topic, partition, start)
            .map_err(kafka(partition))?;
    }
    let finish = |partition: i32,
                  restores: &mut HashMap<i32, PartitionRestore>|
     -> Result<(), RestoreError> {
        if let Some(mut restore) = restores.remove(&partition) {
            if let (Some(disk), Some(end)) = (disk, restore.end) {
                // Everything below the end is applied; a store caught up already keeps its
                // checkpoint.
                if end > restore.start() {
                    flush_to_store(disk, partition, &mut restore.pending, end)?;
                }
                // The store holds every order now: memory starts empty in front of it.
                restore.cache = backed(disk, partition);
            }
            tracing::info!(
                partition,
                orders = restore.cache.len(),
                records = restore.records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partition restored"
            );
            let _ = events.send(RestoreEvent::Done(Restored {
                job,
                partition,
                cache: restore.cache,
                records: restore.records,
                elapsed: started.elapsed(),
            }));
        }
        Ok(())
    };
    let empty: Vec<i32> = restores
        .iter()
        .filter(|(_, r)| r.end.is_some_and(|end| end <= r.start()))
        .map(|(p, _)| *p)
        .collect();
    for partition in empty {
        finish(partition, &mut restores)?;
    }
    if restores.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(kafka(-1))?;
    let mut polls: u64 = 0;
    let mut stable_asked = Instant::now();
    while !restores.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        polls += 1;
        let polled = consumer.poll(Duration::from_millis(100));
        let idle = polled.is_none();
        match polled {
            None => {}
            // The end of what is stable now: complete only once that reaches the target.
            Some(Err(KafkaError::PartitionEOF(partition)))
                if restores.get(&partition).is_some_and(|r| r.end.is_some()) =>
            {
                finish(partition, &mut restores)?;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                // Broker away or leadership moving: librdkafka reconnects by itself; keep polling.
                tracing::warn!(error = %e, "restore consumer error; retrying");
            }
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(restore) = restores.get_mut(&partition) else {
                    continue;
                };
                restore.records += 1;
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
                let (order_id, state) = match message.payload() {
                    None => (key.to_string(), None),
                    Some(value) => {
                        let (order_id, state) =
                            decode_order_state(definition, value).map_err(corrupt)?;
                        (order_id, Some(state))
                    }
                };
                if let (Some(disk), Some(decider)) = (disk, &decider) {
                    let before = restore.cache.get(&order_id);
                    restore.pending.push(PendingChange {
                        deadline_before: before.as_ref().and_then(|s| decider.next_deadline(s)),
                        deadline_after: state.as_ref().and_then(|s| decider.next_deadline(s)),
                        value: message.payload().map(<[u8]>::to_vec),
                        order_id: order_id.clone(),
                    });
                    if restore.pending.len() >= STORE_BATCH {
                        flush_to_store(
                            disk,
                            partition,
                            &mut restore.pending,
                            message.offset() + 1,
                        )?;
                    }
                }
                restore.cache.apply(&order_id, state.as_ref());
            }
        }
        if stable_asked.elapsed() >= STABLE_POLL {
            stable_asked = Instant::now();
            let waiting: Vec<i32> = restores
                .iter()
                .filter(|(_, r)| r.end.is_none())
                .map(|(p, _)| *p)
                .collect();
            for partition in waiting {
                let Ok((_, stable)) =
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
                else {
                    continue;
                };
                let Some(restore) = restores.get_mut(&partition) else {
                    continue;
                };
                let resolved = restore.stable_offset_is(stable, started, settings);
                if let Some(disk) = disk.filter(|_| restore.holds_undecided_writes(stable)) {
                    // If an operator aborts the hanging transaction, a store that applied its
                    // writes would be ahead of the topic for good: start this partition over.
                    tracing::warn!(
                        topic,
                        partition,
                        checkpoint = restore.start(),
                        stable_offset = stable,
                        "the local store holds writes of the hanging transaction (its checkpoint is above the last stable offset); discarded, the partition will be restored from the state topic once the transaction is resolved"
                    );
                    disk.store
                        .discard(partition)
                        .map_err(|source| StoreWriteError { partition, source })?;
                    restore.from_checkpoint = None;
                    restore.pending.clear();
                    restore.records = 0;
                    restore.cache = backed(disk, partition);
                    consumer
                        .seek(topic, partition, Offset::Beginning, Duration::from_secs(10))
                        .map_err(kafka(partition))?;
                }
                if resolved {
                    // An end-of-partition event fetched before the transaction resolved may
                    // still be queued; seeking discards it, and the fetch goes on from where
                    // the restore stands.
                    let from = consumer
                        .position()
                        .ok()
                        .and_then(|list| {
                            list.find_partition(topic, partition)
                                .map(|element| element.offset())
                        })
                        .filter(|offset| matches!(offset, Offset::Offset(_)))
                        .unwrap_or(Offset::Beginning);
                    consumer
                        .seek(topic, partition, from, Duration::from_secs(10))
                        .map_err(kafka(partition))?;
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
                let end = restores.get(&partition).and_then(|r| r.end);
                if let (Offset::Offset(position), Some(end)) = (element.offset(), end) {
                    if position >= end {
                        finish(partition, &mut restores)?;
                    }
                }
            }
        }
    }
    Ok(())
}

impl PartitionRestore {
    /// The offset it reads from: its store's checkpoint, or the partition's beginning.
    fn start(&self) -> i64 {
        self.from_checkpoint.unwrap_or(0)
    }

    /// Whether it restores from a store whose checkpoint lies above `stable`, the last stable
    /// offset, while a hanging transaction holds that offset: the store then applied writes of a
    /// transaction the partition has not decided (the broker lost its markers after the commit).
    fn holds_undecided_writes(&self, stable: i64) -> bool {
        self.hanging && self.end.is_none() && self.from_checkpoint.is_some_and(|c| c > stable)
    }

    /// Takes note of the partition's last stable offset; true when it has just reached the
    /// target, so the restore now knows where it ends.
    fn stable_offset_is(&mut self, stable: i64, started: Instant, settings: &Settings) -> bool {
        if self.end.is_some() {
            return false;
        }
        if stable >= self.target {
            self.end = Some(stable);
            if let Some((since, _)) = self.waiting {
                tracing::info!(
                    partition = self.partition,
                    stable_offset = stable,
                    target = self.target,
                    waited_ms = since.elapsed().as_millis() as u64,
                    "the open transaction on the state partition resolved; the restore goes on"
                );
            }
            return true;
        }
        let now = Instant::now();
        let report = match self.waiting {
            None => {
                self.waiting = Some((now, now));
                true
            }
            Some((since, said)) if now.duration_since(said) >= WAIT_REPORT => {
                self.waiting = Some((since, now));
                true
            }
            Some(_) => false,
        };
        if report {
            let waited = self
                .waiting
                .map_or(0, |(since, _)| since.elapsed().as_millis() as u64);
            if waited > hanging_after_ms(settings) {
                self.hanging = true;
                tracing::error!(
                    partition = self.partition,
                    stable_offset = stable,
                    high_watermark_at_assignment = self.target,
                    waited_ms = waited,
                    transaction_timeout_ms = settings.processor.transaction_timeout_ms,
                    "{}",
                    hanging_transaction_advice(settings, self.partition, stable)
                );
                return false;
            }
            tracing::warn!(
                partition = self.partition,
                stable_offset = stable,
                high_watermark_at_assignment = self.target,
                waited_ms = waited,
                elapsed_ms = started.elapsed().as_millis() as u64,
                transaction_timeout_ms = settings.processor.transaction_timeout_ms,
                "restore waits: a transaction on the state partition is still open (a previous owner that froze may still commit it); the partition is processed once it commits or its coordinator aborts it, within the producer's transaction.timeout.ms plus the broker's abort interval"
            );
        }
        false
    }
}

/// How long a restore waits for an open transaction before it calls it hanging: the producer's
/// transaction timeout, the broker's abort interval (10 s by default) and a minute of margin for a
/// coordinator that is still loading after a restart.
pub fn hanging_after_ms(settings: &Settings) -> u64 {
    settings.processor.transaction_timeout_ms + 70_000
}

/// What an operator reads when a state partition's last stable offset stays below the high
/// watermark for longer than any transaction may stay open: a transaction whose markers were
/// never written (Kafka 4.4 skips them when a single broker stops or crashes in the middle of a
/// commit — the partitions have no known leader then — and an unclean leader election can drop
/// them).
/// Nothing a client does resolves it; the runbook is in docs/operations.md.
pub fn hanging_transaction_advice(settings: &Settings, partition: i32, stable: i64) -> String {
    format!(
        "a hanging transaction blocks state partition {topic}/{partition} at offset {stable}: it \
         has stayed open far longer than any producer's transaction.timeout.ms, so its commit \
         or abort markers were lost by the broker (a single broker stopped or crashed in the \
         middle of a commit, or an unclean leader election). Readers with read_committed stop \
         there until an operator resolves it; orderflow keeps the partition paused and decides \
         nothing for it. List the transaction's partitions with `kafka-transactions.sh \
         --bootstrap-server {bootstrap} find-hanging --topic {topic} --partition {partition} \
         --max-transaction-timeout {minutes}` (and `find-hanging --broker-id N` on each broker for \
         the outcome topics and __consumer_offsets), stop the processors, delete their local \
         stores (state.dir: a store may hold the hanging transaction's writes), abort it on \
         every partition listed with `kafka-transactions.sh --bootstrap-server {bootstrap} abort \
         --topic T --partition P --start-offset S` (here: --topic {topic} --partition \
         {partition} --start-offset {stable}), then start the processors again: they decide the \
         aborted transaction's requests anew (docs/operations.md, \"Hanging transactions\")",
        topic = settings.topics.state,
        bootstrap = settings.kafka.bootstrap_servers,
        minutes = settings
            .processor
            .transaction_timeout_ms
            .div_ceil(60_000)
            .max(1),
    )
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
    disk: Option<Arc<DiskState>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("orderflow-restore".into())
        .spawn(move || {
            if let Err(error) = restore_partitions(
                job,
                &settings,
                &definition,
                &partitions,
                &events,
                &cancel,
                disk.as_ref(),
            ) {
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

    fn waiting_restore(from_checkpoint: Option<i64>, waited: Duration) -> PartitionRestore {
        let now = Instant::now();
        PartitionRestore {
            partition: 3,
            cache: PartitionCache::new(),
            records: 0,
            target: 870,
            end: None,
            waiting: Some((now - waited, now - WAIT_REPORT)),
            from_checkpoint,
            pending: Vec::new(),
            hanging: false,
        }
    }

    #[test]
    fn a_transaction_open_longer_than_any_timeout_is_called_hanging_and_distrusts_a_store_above_it()
    {
        let settings = Settings::default();
        let long = Duration::from_millis(hanging_after_ms(&settings) + 1_000);
        let short = Duration::from_millis(settings.processor.transaction_timeout_ms);

        // Still within what a transaction may take: waiting, not hanging.
        let mut young = waiting_restore(Some(870), short);
        assert!(!young.stable_offset_is(800, Instant::now(), &settings));
        assert!(!young.hanging);
        assert!(!young.holds_undecided_writes(800));

        // Hanging, and the store's checkpoint lies inside the undecided range.
        let mut ahead = waiting_restore(Some(870), long);
        assert!(!ahead.stable_offset_is(800, Instant::now(), &settings));
        assert!(ahead.hanging);
        assert!(ahead.holds_undecided_writes(800));

        // Hanging, but the store stops before the hanging transaction: it stays.
        let mut behind = waiting_restore(Some(800), long);
        behind.stable_offset_is(800, Instant::now(), &settings);
        assert!(behind.hanging);
        assert!(!behind.holds_undecided_writes(800));

        // A restore from the topic has no store to distrust.
        let mut from_topic = waiting_restore(None, long);
        from_topic.stable_offset_is(800, Instant::now(), &settings);
        assert!(!from_topic.holds_undecided_writes(800));

        // Resolved: the restore knows its end and nothing is undecided any more.
        let mut resolved = waiting_restore(Some(870), long);
        assert!(resolved.stable_offset_is(871, Instant::now(), &settings));
        assert!(!resolved.holds_undecided_writes(871));
    }

    #[test]
    fn the_hanging_transaction_advice_names_the_partition_offset_and_commands() {
        let settings = Settings::default();
        let advice = hanging_transaction_advice(&settings, 4, 800);
        let topic = &settings.topics.state;
        assert!(
            advice.contains(&format!("{topic}/4 at offset 800")),
            "{advice}"
        );
        assert!(
            advice.contains(&format!("--topic {topic} --partition 4 --start-offset 800")),
            "{advice}"
        );
        assert!(advice.contains("find-hanging"), "{advice}");
        assert!(advice.contains("--max-transaction-timeout 1"), "{advice}");
    }
}
