//! The local order store: each owned partition's committed orders, their deadlines and a
//! checkpoint on local disk, in an embedded LSM engine (fjall; docs/benchmarks.md says why).
//!
//! The store is a cache of the compacted state topic, never a source of truth: it only ever
//! receives committed state (it is written after the Kafka transaction commits), and a store that
//! is missing, corrupt or cannot be trusted is discarded and rebuilt from the topic. Each Kafka
//! partition is one fjall partition holding
//! - `o` + order id → the order's state record, exactly as the state topic holds it;
//! - `d` + deadline (big-endian ms) + order id → nothing: the order's next deadline;
//! - `c` → the checkpoint: the state-topic offset the partition reflects (every record below it
//!   is applied) and when it was written.
//!
//! A transaction's changes and the checkpoints of the partitions it touched are one atomic write
//! batch (fjall's journal is shared by all partitions), without fsync: a crash may lose the last
//! batches, never leave a partition's orders and checkpoint out of step, and the lost tail is
//! replayed from the topic. One directory per instance id, locked while the process runs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fjall::{AbstractTree, Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use serde::{Deserialize, Serialize};

/// The layout of the store's keys and values; a store of another version is discarded.
pub const FORMAT_VERSION: u32 = 1;

const ORDER: u8 = b'o';
const DEADLINE: u8 = b'd';
const CHECKPOINT: &[u8] = b"c";
const META_PARTITION: &str = "meta";
const IDENTITY_KEY: &[u8] = b"identity";
const LOCK_FILE: &str = "LOCK";
const ENGINE_DIR: &str = "fjall";

/// What a store was written for; a store written for anything else is discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdentity {
    /// [`FORMAT_VERSION`] of the code that wrote it.
    pub format: u32,
    /// The Kafka cluster's id.
    pub cluster_id: String,
    /// The state topic's name.
    pub state_topic: String,
    /// The state topic's id, when the broker told it.
    pub topic_id: Option<String>,
    /// The hash of the state-machine definition its states were decided under.
    pub definition_hash: String,
}

impl StoreIdentity {
    /// Whether a store written for `stored` may serve `self`: the same format, state topic and
    /// definition, and the same cluster and topic id where both are known (a transient failure
    /// to read them at start must not throw a good store away).
    fn admits(&self, stored: &StoreIdentity) -> bool {
        let same_if_known = |a: &str, b: &str| a.is_empty() || b.is_empty() || a == b;
        self.format == stored.format
            && self.state_topic == stored.state_topic
            && self.definition_hash == stored.definition_hash
            && same_if_known(&self.cluster_id, &stored.cluster_id)
            && same_if_known(
                self.topic_id.as_deref().unwrap_or_default(),
                stored.topic_id.as_deref().unwrap_or_default(),
            )
    }

    /// `self`, with what it does not know taken from `stored`.
    fn completed_from(&self, stored: &StoreIdentity) -> StoreIdentity {
        let mut merged = self.clone();
        if merged.cluster_id.is_empty() {
            merged.cluster_id.clone_from(&stored.cluster_id);
        }
        if merged.topic_id.is_none() {
            merged.topic_id.clone_from(&stored.topic_id);
        }
        merged
    }
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds this instance's state directory.
    #[error(
        "state directory {path} is in use by another process (its lock is held): two processes \
         with instance id {instance_id} share state.dir; give each its own instance id or state.dir"
    )]
    Locked {
        /// The instance's directory.
        path: PathBuf,
        /// The instance id.
        instance_id: String,
    },
    /// The file system refused.
    #[error("state directory {path}: {source} (check that state.dir is writable and has space)")]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The engine failed (a disk error, corruption found while reading, a full disk).
    #[error("local store {path}: {source}")]
    Engine {
        /// The instance's store directory.
        path: PathBuf,
        /// fjall's error.
        source: fjall::Error,
    },
    /// A stored value is not what this code writes.
    #[error("local store {path}, partition {partition}: {what}")]
    Corrupt {
        /// The instance's store directory.
        path: PathBuf,
        /// The partition.
        partition: i32,
        /// What is wrong.
        what: String,
    },
}

/// Where a partition's store stands: every state record below `next_offset` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The state-topic offset to read from to catch up.
    pub next_offset: i64,
    /// When it was written (wall clock, ms): a tombstone older than the topic's
    /// `delete.retention.ms` may have been compacted away since.
    pub written_at_ms: i64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.next_offset.to_be_bytes());
        bytes[8..].copy_from_slice(&self.written_at_ms.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let next = bytes.get(..8)?.try_into().ok()?;
        let at = bytes.get(8..16)?.try_into().ok()?;
        (bytes.len() == 16).then(|| Checkpoint {
            next_offset: i64::from_be_bytes(next),
            written_at_ms: i64::from_be_bytes(at),
        })
    }
}

/// What the broker says about a state partition, for judging its store's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    /// The earliest offset (log start).
    pub earliest: i64,
    /// The end offset (high watermark).
    pub end: i64,
    /// The topic's `delete.retention.ms`.
    pub delete_retention_ms: i64,
}

/// How much older than `delete.retention.ms` a checkpoint may not be, for clock skew between
/// this machine and the brokers.
pub const RETENTION_MARGIN_MS: i64 = 10 * 60 * 1000;

/// Why a partition's store cannot be trusted, or `None` when its checkpoint can be caught up from.
pub fn distrust(
    checkpoint: Option<Checkpoint>,
    bounds: &PartitionBounds,
    now_ms: i64,
) -> Option<String> {
    let Some(c) = checkpoint else {
        return Some("it has no checkpoint".into());
    };
    if c.next_offset > bounds.end {
        return Some(format!(
            "its checkpoint {} is above the partition's end offset {} (the topic was recreated or \
             truncated)",
            c.next_offset, bounds.end
        ));
    }
    if c.next_offset < bounds.earliest {
        return Some(format!(
            "its checkpoint {} is below the partition's earliest offset {} (records it never saw \
             were deleted)",
            c.next_offset, bounds.earliest
        ));
    }
    let age = now_ms.saturating_sub(c.written_at_ms);
    let limit = bounds
        .delete_retention_ms
        .saturating_sub(RETENTION_MARGIN_MS);
    if c.next_offset < bounds.end && age > limit {
        return Some(format!(
            "its checkpoint is {} s old, more than the topic's delete.retention.ms ({} s) less {} s \
             for clock skew: a tombstone written since may have been compacted away",
            age / 1000,
            bounds.delete_retention_ms / 1000,
            RETENTION_MARGIN_MS / 1000
        ));
    }
    None
}

/// The disk backend: the instance's store and what judging its checkpoints needs.
#[derive(Debug)]
pub struct DiskState {
    /// The store.
    pub store: LocalStore,
    /// The state topic's `delete.retention.ms`, read from the broker.
    pub delete_retention_ms: i64,
    /// The memory the partitions' hot orders may take.
    pub hot: super::HotBudget,
}

/// One changed order of a committed transaction, as the store records it.
#[derive(Debug, Clone, Copy)]
pub struct StoreChange<'a> {
    /// Its partition.
    pub partition: i32,
    /// Its id.
    pub order_id: &'a str,
    /// Its state record (the state topic's value), or `None` for a forgotten order.
    pub value: Option<&'a [u8]>,
    /// The deadline entry it had before.
    pub deadline_before: Option<i64>,
    /// Its next deadline now.
    pub deadline_after: Option<i64>,
}

/// The instance's local store: one fjall keyspace in `state.dir/<instance id>/`.
pub struct LocalStore {
    path: PathBuf,
    keyspace: Keyspace,
    /// The memtable size of each partition.
    memtable_bytes: u32,
    partitions: std::sync::Mutex<BTreeMap<i32, PartitionHandle>>,
    /// Held for the life of the store: a second process with the same instance id fails.
    _lock: File,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A store opened, and what was thrown away on the way.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: LocalStore,
    /// Why the previous store was discarded, if it was.
    pub discarded: Option<String>,
}

impl LocalStore {
    /// Opens (creating it if needed) the store of `instance_id` under `root` for `identity`.
    /// A store that cannot be opened (corrupt) or was written for another identity or format is
    /// discarded and a new one created; a directory locked by another process is an error. The
    /// engine's caches and write buffers take at most about `engine_bytes`.
    pub fn open(
        root: &Path,
        instance_id: &str,
        identity: &StoreIdentity,
        engine_bytes: u64,
    ) -> Result<Opened, StoreError> {
        let path = root.join(instance_id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        let lock = lock_dir(&path, instance_id)?;
        let engine_dir = path.join(ENGINE_DIR);
        let mut discarded = None;
        let keyspace = match open_keyspace(&engine_dir, engine_bytes) {
            Ok(keyspace) => keyspace,
            Err(e) => {
                discarded = Some(format!("it cannot be opened ({e})"));
                std::fs::remove_dir_all(&engine_dir).map_err(io(&engine_dir))?;
                open_keyspace(&engine_dir, engine_bytes).map_err(|source| StoreError::Engine {
                    path: engine_dir.clone(),
                    source,
                })?
            }
        };
        let engine = |source| StoreError::Engine {
            path: engine_dir.clone(),
            source,
        };
        let meta = keyspace
            .open_partition(META_PARTITION, PartitionCreateOptions::default())
            .map_err(engine)?;
        let stored: Option<StoreIdentity> = meta
            .get(IDENTITY_KEY)
            .map_err(engine)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let partitions: Vec<_> = keyspace
            .list_partitions()
            .into_iter()
            .filter(|name| name.as_ref() != META_PARTITION)
            .collect();
        let reason = match &stored {
            Some(s) if identity.admits(s) => None,
            Some(s) if s.format != identity.format => Some(format!(
                "it is of store format {}, this build writes {}",
                s.format, identity.format
            )),
            Some(s) => Some(format!(
                "it was written for cluster {} topic {} ({}) definition {}, not cluster {} topic {} \
                 ({}) definition {}",
                s.cluster_id,
                s.state_topic,
                s.topic_id.as_deref().unwrap_or("id unknown"),
                s.definition_hash,
                identity.cluster_id,
                identity.state_topic,
                identity.topic_id.as_deref().unwrap_or("id unknown"),
                identity.definition_hash
            )),
            None if partitions.is_empty() => None,
            None => Some("it has no identity record".into()),
        };
        let kept = reason.is_none();
        if let Some(reason) = reason {
            for name in partitions {
                let handle = keyspace
                    .open_partition(&name, PartitionCreateOptions::default())
                    .map_err(engine)?;
                keyspace.delete_partition(handle).map_err(engine)?;
            }
            discarded.get_or_insert(reason);
        }
        let identity = match &stored {
            Some(s) if kept => identity.completed_from(s),
            _ => identity.clone(),
        };
        if stored.as_ref() != Some(&identity) {
            let bytes = serde_json::to_vec(&identity).unwrap_or_default();
            meta.insert(IDENTITY_KEY, bytes).map_err(engine)?;
            keyspace.persist(PersistMode::SyncAll).map_err(engine)?;
        }
        let store = LocalStore {
            path: engine_dir,
            memtable_bytes: memtable_bytes(engine_bytes),
            keyspace,
            partitions: std::sync::Mutex::new(BTreeMap::new()),
            _lock: lock,
        };
        // Opening a partition recovers its segments' metadata from disk: done here, at process
        // start, rather than on the partition's assignment.
        for partition in store.stored_partitions() {
            store.handle(partition)?;
        }
        Ok(Opened { store, discarded })
    }

    fn engine(&self) -> impl Fn(fjall::Error) -> StoreError + '_ {
        |source| StoreError::Engine {
            path: self.path.clone(),
            source,
        }
    }

    fn handle(&self, partition: i32) -> Result<PartitionHandle, StoreError> {
        let mut handles = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = handles.get(&partition) {
            return Ok(handle.clone());
        }
        let handle = self
            .keyspace
            .open_partition(
                &partition_name(partition),
                PartitionCreateOptions::default().max_memtable_size(self.memtable_bytes),
            )
            .map_err(self.engine())?;
        handles.insert(partition, handle.clone());
        Ok(handle)
    }

    /// The partitions that have a store here, in order.
    pub fn stored_partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self
            .keyspace
            .list_partitions()
            .iter()
            .filter_map(|name| name.strip_prefix('p')?.parse().ok())
            .collect();
        partitions.sort_unstable();
        partitions
    }

    /// The partition's checkpoint, if it has one. A checkpoint that is not what this code writes
    /// is corrupt.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, StoreError> {
        match self
            .handle(partition)?
            .get(CHECKPOINT)
            .map_err(self.engine())?
        {
            None => Ok(None),
            Some(bytes) => Checkpoint::decode(&bytes)
                .map(Some)
                .ok_or_else(|| self.corrupt(partition, "its checkpoint is not 16 bytes")),
        }
    }

    fn corrupt(&self, partition: i32, what: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            partition,
            what: what.to_string(),
        }
    }

    /// An order's state record, if the partition's store has the order.
    pub fn get(&self, partition: i32, order_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .handle(partition)?
            .get(order_key(order_id))
            .map_err(self.engine())?
            .map(|v| v.to_vec()))
    }

    /// Up to `limit` orders of the partition whose deadline is at or before `now_ms`, earliest first.
    pub fn due(
        &self,
        partition: i32,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let handle = self.handle(partition)?;
        let mut end = vec![DEADLINE];
        end.extend_from_slice(&deadline_bytes(now_ms.saturating_add(1)));
        let mut due = Vec::new();
        for item in handle.range(vec![DEADLINE]..end).take(limit) {
            let (key, _) = item.map_err(self.engine())?;
            let parsed = key
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(|b: [u8; 8]| (u64::from_be_bytes(b) ^ SIGN) as i64)
                .zip(key.get(9..).and_then(|id| std::str::from_utf8(id).ok()));
            let Some((deadline, order_id)) = parsed else {
                return Err(
                    self.corrupt(partition, "a deadline entry is not what this code writes")
                );
            };
            due.push((deadline, order_id.to_string()));
        }
        Ok(due)
    }

    /// Every order of the partition with its state record, in id order.
    pub fn orders(
        &self,
        partition: i32,
    ) -> Result<impl Iterator<Item = Result<(String, Vec<u8>), StoreError>> + '_, StoreError> {
        let handle = self.handle(partition)?;
        Ok(handle.prefix([ORDER]).map(move |item| {
            let (key, value) = item.map_err(self.engine())?;
            let id = std::str::from_utf8(&key[1..])
                .map_err(|_| self.corrupt(partition, "an order id is not UTF-8"))?;
            Ok((id.to_string(), value.to_vec()))
        }))
    }

    /// Writes committed changes and the new checkpoints of the partitions they touched as one
    /// atomic batch.
    pub fn write(
        &self,
        changes: &[StoreChange<'_>],
        checkpoints: &BTreeMap<i32, i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        for change in changes {
            let handle = self.handle(change.partition)?;
            if change.deadline_before != change.deadline_after {
                if let Some(before) = change.deadline_before {
                    batch.remove(&handle, deadline_key(before, change.order_id));
                }
            }
            if let Some(after) = change.deadline_after {
                batch.insert(&handle, deadline_key(after, change.order_id), []);
            }
            match change.value {
                Some(value) => batch.insert(&handle, order_key(change.order_id), value),
                None => batch.remove(&handle, order_key(change.order_id)),
            }
        }
        for (&partition, &next_offset) in checkpoints {
            let checkpoint = Checkpoint {
                next_offset,
                written_at_ms: now_ms,
            };
            batch.insert(&self.handle(partition)?, CHECKPOINT, checkpoint.encode());
        }
        batch.commit().map_err(self.engine())
    }

    /// Moves an order's deadline entry (without a checkpoint: the order itself is unchanged).
    pub fn move_deadline(
        &self,
        partition: i32,
        order_id: &str,
        from: i64,
        to: Option<i64>,
    ) -> Result<(), StoreError> {
        let handle = self.handle(partition)?;
        let mut batch = self.keyspace.batch();
        batch.remove(&handle, deadline_key(from, order_id));
        if let Some(to) = to {
            batch.insert(&handle, deadline_key(to, order_id), []);
        }
        batch.commit().map_err(self.engine())
    }

    /// Throws a partition's store away (it cannot be trusted, or the partition is long gone).
    pub fn discard(&self, partition: i32) -> Result<(), StoreError> {
        let handle = self.handle(partition)?;
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        self.keyspace
            .delete_partition(handle)
            .map_err(self.engine())
    }

    /// Removes the stores of partitions not `owned` here whose checkpoint is older than
    /// `max_age_ms` at `now_ms`, or missing: were the partition assigned here again, the store
    /// could not be trusted (see [`distrust`]). Younger ones are kept: the partition may come back,
    /// and then only the tail is read. Returns the partitions removed.
    pub fn remove_unowned(
        &self,
        owned: impl Fn(i32) -> bool,
        max_age_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<i32>, StoreError> {
        let mut removed = Vec::new();
        for partition in self.stored_partitions() {
            if owned(partition) {
                continue;
            }
            let stale = match self.checkpoint(partition) {
                Ok(Some(c)) => now_ms.saturating_sub(c.written_at_ms) > max_age_ms,
                Ok(None) | Err(StoreError::Corrupt { .. }) => true,
                Err(e) => return Err(e),
            };
            if stale {
                self.discard(partition)?;
                removed.push(partition);
            }
        }
        Ok(removed)
    }

    /// Makes everything written so far durable (on shutdown: a clean stop replays nothing).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.keyspace
            .persist(PersistMode::SyncAll)
            .map_err(self.engine())
    }
}

/// The engine's memory, `engine_bytes`: half its block cache, half its write buffers. fjall's
/// own limit on all write buffers together is set out of reach: its counter can drift upwards
/// (a flush that frees a memtable before the batch that wrote into it has counted itself
/// saturates at zero) and a store held to it then halts every write for good — after a restart
/// that recovered a large journal it did so within seconds (`sustained_batch_writes_never_halt`).
/// The write buffers are bounded instead by each partition's memtable size
/// ([`memtable_bytes`], flushed when full) and by the journal ([`journal_bytes`]: all data not yet
/// flushed is in it, and fjall flushes the partitions holding the oldest of it as it fills).
fn open_keyspace(dir: &Path, engine_bytes: u64) -> Result<Keyspace, fjall::Error> {
    let keyspace = Config::new(dir)
        .cache_size(engine_bytes / 2)
        .max_write_buffer_size(u64::MAX / 4)
        .max_journaling_size(journal_bytes(engine_bytes))
        .flush_workers(FLUSHES_PER_WAKE_UP)
        .open()?;
    flush_recovered_memtables(&keyspace)?;
    Ok(keyspace)
}

/// How many queued memtables fjall's flush worker flushes each time it wakes up (fjall's
/// default on two cores is one).
const FLUSHES_PER_WAKE_UP: usize = 4;

/// How long opening waits for the memtables recovered from the journal to be flushed.
const RECOVERED_FLUSH_PATIENCE: Duration = Duration::from_secs(120);

/// The key [`flush_recovered_memtables`] writes to wake fjall's flush worker.
const FLUSH_PUMP_KEY: &[u8] = b"flush-pump";

/// Flushes the memtables fjall 2.11 recovered from sealed journals. It queues one per partition
/// and journal but wakes its flush worker only once per partition, and each wake-up flushes
/// [`FLUSHES_PER_WAKE_UP`]; later wake-ups come one per new memtable, so what was left queued
/// stays queued for good. Its journals are then never deleted, and once the journal reaches its
/// limit every write halts while fjall waits for a flush that no one asks for (seen: a restart
/// with a smaller memory budget after a clean stop, the processing thread asleep in
/// `check_journal_size`). Each rotation of a one-key memtable in the meta partition wakes the
/// worker once more and queues one memtable, so the backlog shrinks by three per round.
fn flush_recovered_memtables(keyspace: &Keyspace) -> Result<(), fjall::Error> {
    let partitions = keyspace
        .list_partitions()
        .iter()
        .map(|name| keyspace.open_partition(name, PartitionCreateOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let sealed = || -> usize {
        partitions
            .iter()
            .map(|p| p.tree.sealed_memtable_count())
            .sum()
    };
    if sealed() == 0 {
        return Ok(());
    }
    let pump = keyspace.open_partition(META_PARTITION, PartitionCreateOptions::default())?;
    let started = Instant::now();
    let mut rounds = 0u32;
    while sealed() > 0 {
        if started.elapsed() > RECOVERED_FLUSH_PATIENCE {
            tracing::warn!(
                left = sealed(),
                "the local store's recovered memtables are not all flushed; writes may stall"
            );
            break;
        }
        pump.insert(FLUSH_PUMP_KEY, [])?;
        pump.rotate_memtable()?;
        rounds += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    pump.remove(FLUSH_PUMP_KEY)?;
    tracing::info!(
        rounds,
        took_ms = started.elapsed().as_millis() as u64,
        "flushed the memtables the local store recovered from its journal"
    );
    Ok(())
}

/// The journal's limit: the write buffers' half of the engine's memory, at least
/// [`MIN_JOURNAL_BYTES`].
fn journal_bytes(engine_bytes: u64) -> u64 {
    (engine_bytes / 2).max(MIN_JOURNAL_BYTES)
}

/// The smallest journal limit: two of the 32 MiB files fjall's journal grows by (fjall itself
/// accepts 24 MiB, which one file already fills).
pub const MIN_JOURNAL_BYTES: u64 = 64 << 20;

/// One partition's memtable: an eighth of the write buffers, between 1 MiB and fjall's default
/// of 16 MiB (more than eight partitions written at once may hold more than the write buffers'
/// half until the journal's limit flushes them).
fn memtable_bytes(engine_bytes: u64) -> u32 {
    u32::try_from((engine_bytes / 2 / 8).clamp(1 << 20, 16 << 20)).unwrap_or(16 << 20)
}

/// Takes the directory's lock file (`flock`, released by the kernel when the process dies).
fn lock_dir(path: &Path, instance_id: &str) -> Result<File, StoreError> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StoreError::Io {
            path: lock_path.clone(),
            source,
        })?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(StoreError::Locked {
            path: path.to_path_buf(),
            instance_id: instance_id.to_string(),
        });
    }
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

fn partition_name(partition: i32) -> String {
    format!("p{partition}")
}

fn order_key(order_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + order_id.len());
    key.push(ORDER);
    key.extend_from_slice(order_id.as_bytes());
    key
}

/// Flipping the sign bit makes big-endian bytes of an i64 sort as the numbers do.
const SIGN: u64 = 1 << 63;

fn deadline_bytes(deadline_ms: i64) -> [u8; 8] {
    ((deadline_ms as u64) ^ SIGN).to_be_bytes()
}

fn deadline_key(deadline_ms: i64, order_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + order_id.len());
    key.push(DEADLINE);
    key.extend_from_slice(&deadline_bytes(deadline_ms));
    key.extend_from_slice(order_id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> StoreIdentity {
        StoreIdentity {
            format: FORMAT_VERSION,
            cluster_id: "cluster-a".into(),
            state_topic: "orders.state".into(),
            topic_id: Some("topic-id-1".into()),
            definition_hash: "abc".into(),
        }
    }

    fn open(root: &Path, identity: &StoreIdentity) -> Opened {
        LocalStore::open(root, "orderflow-0", identity, 8 << 20).unwrap()
    }

    fn change<'a>(
        order_id: &'a str,
        value: Option<&'a [u8]>,
        before: Option<i64>,
        after: Option<i64>,
    ) -> StoreChange<'a> {
        StoreChange {
            partition: 3,
            order_id,
            value,
            deadline_before: before,
            deadline_after: after,
        }
    }

    /// Sustained batches over many partitions, as a processor under load writes them: every
    /// batch must go through. fjall 2.11's write-buffer counter can drift upwards when a flush
    /// frees a memtable before the batch that wrote into it has counted itself (its `free`
    /// saturates at zero), and a store limited by that counter then halts every write for good
    /// (seen in `make bench-aged`: the processing thread waited in `check_write_buffer_size`
    /// with nothing left to flush). The race is timing-dependent: with the former configuration
    /// (write buffers limited to 16 MiB, 4 MiB memtables) a larger version of this test (2,000
    /// orders per batch, 200 batches a run) halted after the first reopen in one of three runs.
    #[test]
    fn sustained_batch_writes_never_halt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let (done, finished) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let value = vec![7u8; 200];
            let ids: Vec<String> = (0..1_000).map(|n| format!("order-{n:08}")).collect();
            // Three runs of the same store, as a processor restarted under load has.
            for run in 0..3i64 {
                let store = LocalStore::open(&path, "orderflow-0", &identity(), 2 << 20)
                    .unwrap()
                    .store;
                for step in 0..100i64 {
                    let batch = run * 100 + step;
                    let partition = (batch % 12) as i32;
                    let changes: Vec<StoreChange<'_>> = ids
                        .iter()
                        .enumerate()
                        .map(|(n, id)| StoreChange {
                            partition,
                            order_id: id,
                            value: Some(&value),
                            deadline_before: Some(batch * 10 + n as i64),
                            deadline_after: Some(batch * 10 + 10 + n as i64),
                        })
                        .collect();
                    store
                        .write(&changes, &BTreeMap::from([(partition, batch)]), 0)
                        .unwrap();
                    let _ = done.send(batch);
                }
                store.persist().unwrap();
            }
        });
        let mut last = -1;
        while last < 299 {
            match finished.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(batch) => last = batch,
                Err(_) => {
                    panic!("the store halted after batch {last}: no write went through in 60 s")
                }
            }
        }
        writer.join().unwrap();
    }

    /// fjall 2.11 queues every memtable it recovers from sealed journals but wakes its flush
    /// worker only once per partition: the rest stayed queued for good, the journal never
    /// shrank, and writes halted once it reached its limit (`make bench-aged`, a restart with a
    /// smaller budget). Opening now flushes them all.
    #[test]
    fn memtables_recovered_from_many_sealed_journals_are_all_flushed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), &identity()));
        let engine_dir = dir.path().join("orderflow-0").join(ENGINE_DIR);
        {
            // Without a flush worker every rotated memtable stays in its sealed journal, as a
            // stop right after a burst of writes leaves them.
            let keyspace = Config::new(&engine_dir).flush_workers(0).open().unwrap();
            let partitions: Vec<PartitionHandle> = (0..4)
                .map(|p| {
                    keyspace
                        .open_partition(&partition_name(p), PartitionCreateOptions::default())
                        .unwrap()
                })
                .collect();
            for round in 0..10 {
                for (n, partition) in partitions.iter().enumerate() {
                    partition
                        .insert(order_key(&format!("order-{round}-{n}")), vec![1u8; 100])
                        .unwrap();
                }
                partitions[round % 4].rotate_memtable().unwrap();
            }
            keyspace.persist(PersistMode::SyncAll).unwrap();
            assert!(
                keyspace.journal_count() > 10,
                "{}",
                keyspace.journal_count()
            );
        }
        let store = open(dir.path(), &identity()).store;
        let sealed: usize = (0..4)
            .map(|p| store.handle(p).unwrap().tree.sealed_memtable_count())
            .sum();
        assert_eq!(sealed, 0, "every recovered memtable is flushed");
        let started = Instant::now();
        while store.keyspace.journal_count() > 1 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            store.keyspace.journal_count(),
            1,
            "the sealed journals are deleted"
        );
        for round in 0..10 {
            for n in 0..4 {
                let found = store.get(n, &format!("order-{round}-{n}")).unwrap();
                assert_eq!(found, Some(vec![1u8; 100]), "order-{round}-{n}");
            }
        }
    }

    #[test]
    fn committed_changes_and_their_checkpoint_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opened = open(dir.path(), &identity());
            assert_eq!(opened.discarded, None, "a new store discards nothing");
            let store = opened.store;
            assert_eq!(store.checkpoint(3).unwrap(), None);
            store
                .write(
                    &[
                        change("a", Some(b"state-a"), None, Some(500)),
                        change("b", Some(b"state-b"), None, Some(-20)),
                    ],
                    &BTreeMap::from([(3, 7)]),
                    1_000,
                )
                .unwrap();
            store
                .write(
                    &[change("a", None, Some(500), None)],
                    &BTreeMap::from([(3, 9)]),
                    2_000,
                )
                .unwrap();
        }
        let opened = open(dir.path(), &identity());
        assert_eq!(opened.discarded, None);
        let store = opened.store;
        assert_eq!(
            store.checkpoint(3).unwrap(),
            Some(Checkpoint {
                next_offset: 9,
                written_at_ms: 2_000
            })
        );
        assert_eq!(store.get(3, "a").unwrap(), None, "forgotten");
        assert_eq!(store.get(3, "b").unwrap().as_deref(), Some(&b"state-b"[..]));
        assert_eq!(store.stored_partitions(), vec![3]);
        let orders: Vec<_> = store.orders(3).unwrap().map(Result::unwrap).collect();
        assert_eq!(orders, vec![("b".to_string(), b"state-b".to_vec())]);
    }

    #[test]
    fn deadlines_come_back_in_time_order_and_moved_ones_only_at_their_new_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &identity()).store;
        store
            .write(
                &[
                    change("late", Some(b"x"), None, Some(300)),
                    change("early", Some(b"x"), None, Some(-5)),
                    change("mid", Some(b"x"), None, Some(100)),
                    change("none", Some(b"x"), None, None),
                ],
                &BTreeMap::from([(3, 1)]),
                0,
            )
            .unwrap();
        assert_eq!(
            store.due(3, 100, 10).unwrap(),
            vec![(-5, "early".to_string()), (100, "mid".to_string())]
        );
        assert_eq!(
            store.due(3, 1_000, 1).unwrap(),
            vec![(-5, "early".to_string())]
        );
        store
            .write(
                &[change("early", Some(b"y"), Some(-5), Some(200))],
                &BTreeMap::from([(3, 2)]),
                0,
            )
            .unwrap();
        assert_eq!(
            store.due(3, 100, 10).unwrap(),
            vec![(100, "mid".to_string())]
        );
        assert_eq!(store.due(3, 250, 10).unwrap().len(), 2);
    }

    /// Writes order "a" to partition 3 with checkpoint 1.
    fn write_order_a(store: &LocalStore) {
        store
            .write(
                &[change("a", Some(b"x"), None, None)],
                &BTreeMap::from([(3, 1)]),
                0,
            )
            .unwrap();
    }

    #[test]
    fn stores_of_partitions_not_owned_are_removed_once_their_checkpoint_is_too_old_to_trust() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &identity()).store;
        let day = 86_400_000;
        for (partition, written_at) in [(1, 0), (2, day), (3, 0)] {
            store
                .write(
                    &[StoreChange {
                        partition,
                        ..change("a", Some(b"x"), None, None)
                    }],
                    &BTreeMap::from([(partition, 1)]),
                    written_at,
                )
                .unwrap();
        }
        let owned = |p: i32| p == 3;
        assert_eq!(
            store.remove_unowned(owned, day, day).unwrap(),
            Vec::<i32>::new(),
            "exactly max_age old: kept"
        );
        assert_eq!(
            store.remove_unowned(owned, day, day + 1).unwrap(),
            vec![1],
            "2 is younger, 3 is owned"
        );
        assert_eq!(store.stored_partitions(), vec![2, 3]);
        assert_eq!(store.remove_unowned(owned, day, 3 * day).unwrap(), vec![2]);
        assert_eq!(store.stored_partitions(), vec![3]);
        assert_eq!(store.get(3, "a").unwrap().as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn a_store_of_another_topic_id_is_discarded_but_an_id_unknown_at_start_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        write_order_a(&open(dir.path(), &identity()).store);
        let unknown = StoreIdentity {
            topic_id: None,
            cluster_id: String::new(),
            ..identity()
        };
        let opened = open(dir.path(), &unknown);
        assert_eq!(opened.discarded, None, "ids unknown at this start");
        assert!(opened.store.get(3, "a").unwrap().is_some());
        drop(opened);
        let opened = open(dir.path(), &identity());
        assert_eq!(opened.discarded, None, "the recorded ids were kept");
        drop(opened);
        let recreated = StoreIdentity {
            topic_id: Some("topic-id-2".into()),
            ..identity()
        };
        let opened = open(dir.path(), &recreated);
        let reason = opened.discarded.expect("another topic id");
        assert!(reason.contains("topic-id-1"), "{reason}");
        assert_eq!(opened.store.get(3, "a").unwrap(), None);
    }

    #[test]
    fn a_store_of_another_identity_or_format_is_discarded_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        write_order_a(&open(dir.path(), &identity()).store);
        let mut other = identity();
        other.definition_hash = "def".into();
        let opened = open(dir.path(), &other);
        let reason = opened.discarded.expect("discarded");
        assert!(reason.contains("definition abc"), "{reason}");
        assert_eq!(opened.store.get(3, "a").unwrap(), None);
        assert_eq!(opened.store.checkpoint(3).unwrap(), None);
        drop(opened.store);
        let mut newer = other.clone();
        newer.format = FORMAT_VERSION + 1;
        let reason = open(dir.path(), &newer).discarded.expect("discarded");
        assert!(reason.contains("store format"), "{reason}");
    }

    #[test]
    fn a_second_process_for_the_same_instance_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), &identity());
        let second = LocalStore::open(dir.path(), "orderflow-0", &identity(), 8 << 20);
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "{second:?}"
        );
        let other_instance = LocalStore::open(dir.path(), "orderflow-1", &identity(), 8 << 20);
        assert!(other_instance.is_ok());
    }

    #[test]
    fn a_store_whose_files_are_garbled_is_discarded_and_rebuilt_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), &identity()).store;
            write_order_a(&store);
            store.persist().unwrap();
        }
        garble(&dir.path().join("orderflow-0").join(ENGINE_DIR));
        let opened = open(dir.path(), &identity());
        assert!(opened.discarded.is_some(), "garbled files are noticed");
        assert_eq!(opened.store.checkpoint(3).unwrap(), None);
    }

    /// Overwrites the middle of every file under `dir` with junk.
    fn garble(dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                garble(&path);
            } else {
                let mut bytes = std::fs::read(&path).unwrap();
                let mid = bytes.len() / 2;
                for b in bytes.iter_mut().skip(mid.saturating_sub(8)).take(16) {
                    *b ^= 0x5a;
                }
                if bytes.is_empty() {
                    bytes = b"junk".to_vec();
                }
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }

    #[test]
    fn a_checkpoint_is_trusted_only_inside_the_partition_and_younger_than_delete_retention() {
        let day = 86_400_000;
        let bounds = PartitionBounds {
            earliest: 10,
            end: 100,
            delete_retention_ms: day,
        };
        let at = |next_offset, written_at_ms| {
            Some(Checkpoint {
                next_offset,
                written_at_ms,
            })
        };
        let now = 10 * day;
        assert_eq!(distrust(at(50, now - 1000), &bounds, now), None);
        assert_eq!(distrust(at(100, now), &bounds, now), None, "at the end");
        assert!(distrust(None, &bounds, now)
            .unwrap()
            .contains("no checkpoint"));
        assert!(distrust(at(101, now), &bounds, now)
            .unwrap()
            .contains("above"));
        assert!(distrust(at(9, now), &bounds, now)
            .unwrap()
            .contains("below"));
        let old = now - day + RETENTION_MARGIN_MS - 1;
        assert!(distrust(at(50, old), &bounds, now)
            .unwrap()
            .contains("delete.retention.ms"));
        assert_eq!(
            distrust(at(50, old + 2), &bounds, now),
            None,
            "just inside retention less the margin"
        );
        assert_eq!(
            distrust(at(100, now - 5 * day), &bounds, now),
            None,
            "an old checkpoint at the end misses nothing"
        );
    }
}
