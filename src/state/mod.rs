//! Order state per owned partition: the committed cache decisions read, and its restore from the
//! compacted state topic.

pub(crate) mod block;
pub mod packed;
pub mod restore;
pub mod store;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use crate::machine::{Definition, OrderState, StateId};
use packed::PackedOrder;
use store::DiskState;

// foldhash, seeded once per process, instead of SipHash (a tenth of the restore's time went into
// hashing ids), still not predictable from outside. One seed for every cache, so an order's hash
// can stand for its id elsewhere (the processor's deadline index).
static ORDER_HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

/// The hash the caches file an order id under (stable for the life of the process).
pub fn order_hash(order_id: &[u8]) -> u64 {
    ORDER_HASHER.hash_one(order_id)
}

/// The committed state of every known order of one partition, each order packed into one heap
/// block that also holds its id (a table slot is one pointer; see [`packed`]). With the disk
/// backend the cache holds only the hot orders, in front of the partition's local store, which
/// holds them all: a read that misses memory reads the store. The hot orders are two
/// generations: every write goes to the young one; when the young one has used half of the
/// partition's share of the memory budget ([`HotBudget`]), the old generation is dropped (its
/// orders are in the store: the store is written before the cache) and the young one becomes
/// old. Memory stays within the share, an order written recently stays in memory, and nothing is
/// tracked per order.
#[derive(Debug, Default, Clone)]
pub struct PartitionCache {
    orders: HashTable<PackedOrder>,
    /// The old generation (backed caches only; empty otherwise).
    older: HashTable<PackedOrder>,
    /// Resident bytes of the blocks in `orders` and in `older`.
    young_block_bytes: usize,
    older_block_bytes: usize,
    scratch: Vec<u8>,
    backing: Option<Backing>,
}

/// Bytes a table slot costs: the block pointer and its control byte.
const SLOT_BYTES: usize = std::mem::size_of::<PackedOrder>() + 1;

/// What the allocator hands out for a block of `heap` bytes (glibc: an 8-byte header, 16-byte
/// granules, 32 bytes at least).
fn resident(packed: &PackedOrder) -> usize {
    (packed.heap_bytes() + 8).next_multiple_of(16).max(32)
}

/// The memory the disk backend's hot orders may take in the whole process, shared by the owned
/// partitions; and how many orders left memory for it.
#[derive(Debug)]
pub struct HotBudget {
    limit_bytes: usize,
    partitions: AtomicUsize,
    evicted: AtomicU64,
    store_reads: AtomicU64,
}

impl HotBudget {
    /// A budget of `limit_bytes` for every partition's hot orders together.
    pub fn new(limit_bytes: usize) -> HotBudget {
        HotBudget {
            limit_bytes,
            partitions: AtomicUsize::new(1),
            evicted: AtomicU64::new(0),
            store_reads: AtomicU64::new(0),
        }
    }

    /// The budget in bytes.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// How many partitions share the budget now (the assigned ones); true when that changed.
    pub fn set_partitions(&self, partitions: usize) -> bool {
        self.partitions.swap(partitions.max(1), Ordering::Relaxed) != partitions.max(1)
    }

    /// The bytes one partition's hot orders may take.
    pub fn share(&self) -> usize {
        self.limit_bytes / self.partitions.load(Ordering::Relaxed).max(1)
    }

    /// Orders dropped from memory so far (they stay in the store).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Reads that missed memory and went to the store so far (found there or not).
    pub fn store_reads(&self) -> u64 {
        self.store_reads.load(Ordering::Relaxed)
    }
}

/// The local store behind a partition's cache.
#[derive(Debug, Clone)]
struct Backing {
    disk: Arc<DiskState>,
    partition: i32,
    definition: Arc<Definition>,
    /// The first failed store read: the processor must not decide on it (the order may exist).
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl PartitionCache {
    /// An empty cache.
    pub fn new() -> PartitionCache {
        PartitionCache::default()
    }

    /// An empty cache in front of `partition`'s local store, whose records `definition` reads.
    pub fn backed(
        disk: Arc<DiskState>,
        partition: i32,
        definition: Arc<Definition>,
    ) -> PartitionCache {
        PartitionCache {
            backing: Some(Backing {
                disk,
                partition,
                definition,
                failure: Arc::default(),
            }),
            ..PartitionCache::default()
        }
    }

    /// Whether a local store stands behind this cache (it then holds only recent orders).
    pub fn is_backed(&self) -> bool {
        self.backing.is_some()
    }

    /// Why a read of the local store failed, if one did: the decisions taken since must not be
    /// committed.
    pub fn store_failure(&self) -> Option<String> {
        self.backing
            .as_ref()
            .and_then(|b| b.failure.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The order from the local store (a miss in memory).
    fn stored(&self, order_id: &str) -> Option<OrderState> {
        let backing = self.backing.as_ref()?;
        backing.disk.hot.store_reads.fetch_add(1, Ordering::Relaxed);
        let read = backing
            .disk
            .store
            .get(backing.partition, order_id)
            .map_err(|e| e.to_string())
            .and_then(|bytes| match bytes {
                None => Ok(None),
                Some(bytes) => crate::codec::decode_order_state(&backing.definition, &bytes)
                    .map_err(|e| format!("order {order_id}: {e}"))
                    .and_then(|(id, state)| {
                        if id == order_id {
                            Ok(Some(state))
                        } else {
                            Err(format!("order {order_id} holds the state of {id}"))
                        }
                    }),
            });
        match read {
            Ok(state) => state,
            Err(what) => {
                tracing::error!(partition = backing.partition, error = %what, "cannot read the local store");
                backing
                    .failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(what);
                None
            }
        }
    }

    fn find(&self, order_id: &str) -> Option<&PackedOrder> {
        let key = order_id.as_bytes();
        let hash = order_hash(key);
        self.orders
            .find(hash, |packed| packed.key_bytes() == key)
            .or_else(|| self.older.find(hash, |packed| packed.key_bytes() == key))
    }

    /// The cached orders whose id has this [`order_hash`] (one, but two ids may share a hash).
    pub fn ids_with_hash(&self, hash: u64) -> impl Iterator<Item = &str> {
        self.orders
            .iter_hash(hash)
            .chain(self.older.iter_hash(hash))
            .filter(move |packed| order_hash(packed.key_bytes()) == hash)
            .map(PackedOrder::order_id)
    }

    /// The memory the cached orders take: their blocks and their tables' slots.
    pub fn memory_bytes(&self) -> usize {
        self.young_block_bytes
            + self.older_block_bytes
            + SLOT_BYTES * (self.orders.capacity() + self.older.capacity())
    }

    /// With a local store behind: once the young generation has used half the partition's share
    /// of the budget, or both together more than the share (it shrank: more partitions share the
    /// budget now), drops the old one (every order in it is in the store) and ages the young.
    fn age_if_full(&mut self) {
        let Some(backing) = &self.backing else {
            return;
        };
        let share = backing.disk.hot.share();
        let young = self.young_block_bytes + SLOT_BYTES * self.orders.capacity();
        if young <= share / 2 && self.memory_bytes() <= share {
            return;
        }
        let dropped = self.older.len() as u64;
        self.older = std::mem::take(&mut self.orders);
        self.older_block_bytes = std::mem::take(&mut self.young_block_bytes);
        backing
            .disk
            .hot
            .evicted
            .fetch_add(dropped, Ordering::Relaxed);
    }

    /// Brings the cache back within its share of the budget (after the share shrank): at most
    /// two agings, the second dropping what the first aged if that is still too much.
    pub fn fit_budget(&mut self) {
        self.age_if_full();
        self.age_if_full();
    }

    /// Whether the order is in memory (a read of it does not go to the store).
    pub fn in_memory(&self, order_id: &str) -> bool {
        self.find(order_id).is_some()
    }

    /// The committed state of an order (unpacked: a copy).
    pub fn get(&self, order_id: &str) -> Option<OrderState> {
        match self.find(order_id) {
            Some(packed) => Some(packed.unpack()),
            None => self.stored(order_id),
        }
    }

    /// The state an order is in, without unpacking the rest of it.
    pub fn state_of(&self, order_id: &str) -> Option<StateId> {
        match self.find(order_id) {
            Some(packed) => Some(packed.state_id()),
            None => self.stored(order_id).map(|s| s.state),
        }
    }

    /// Records a committed state (`Some`) or forgets the order (`None`, a tombstone).
    pub fn apply(&mut self, order_id: &str, state: Option<&OrderState>) {
        use hashbrown::hash_table::Entry;
        let key = order_id.as_bytes();
        let hash = order_hash(key);
        // The newer write lives in the young generation only.
        if let Ok(old) = self
            .older
            .find_entry(hash, |packed| packed.key_bytes() == key)
        {
            self.older_block_bytes -= resident(old.get());
            old.remove();
        }
        let entry = self.orders.entry(
            hash,
            |packed| packed.key_bytes() == key,
            |packed| order_hash(packed.key_bytes()),
        );
        match (entry, state) {
            (Entry::Occupied(mut slot), Some(state)) => {
                let packed = PackedOrder::pack(order_id, state, &mut self.scratch);
                self.young_block_bytes += resident(&packed);
                self.young_block_bytes -= resident(slot.get());
                *slot.get_mut() = packed;
            }
            (Entry::Vacant(slot), Some(state)) => {
                let packed = PackedOrder::pack(order_id, state, &mut self.scratch);
                self.young_block_bytes += resident(&packed);
                slot.insert(packed);
            }
            (Entry::Occupied(slot), None) => {
                self.young_block_bytes -= resident(slot.get());
                slot.remove();
            }
            (Entry::Vacant(_), None) => {}
        }
        self.age_if_full();
    }

    /// How many orders are in memory (with a local store behind, not all the partition's).
    pub fn len(&self) -> usize {
        self.orders.len() + self.older.len()
    }

    /// True when no order is cached.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.older.is_empty()
    }

    /// Every cached order, unpacked one at a time.
    pub fn iter(&self) -> impl Iterator<Item = (&str, OrderState)> {
        self.orders
            .iter()
            .chain(self.older.iter())
            .map(|packed| (packed.order_id(), packed.unpack()))
    }

    /// The state every cached order is in (in memory only; see [`PartitionCache::each_state`]).
    pub fn states(&self) -> impl Iterator<Item = StateId> + '_ {
        self.orders
            .iter()
            .chain(self.older.iter())
            .map(PackedOrder::state_id)
    }

    /// Calls `f` with the state of every order of the partition: from memory, or with a local
    /// store behind, from the store (which holds them all; O(orders), read from disk).
    pub fn each_state(&self, mut f: impl FnMut(StateId)) {
        let Some(backing) = &self.backing else {
            self.states().for_each(f);
            return;
        };
        let orders = match backing.disk.store.orders(backing.partition) {
            Ok(orders) => orders,
            Err(e) => {
                tracing::warn!(partition = backing.partition, error = %e, "cannot list the local store's orders");
                return;
            }
        };
        for item in orders {
            let state = item.ok().and_then(|(_, bytes)| {
                crate::codec::decode_order_state(&backing.definition, &bytes).ok()
            });
            if let Some((_, state)) = state {
                f(state.state);
            }
        }
    }
}

/// The committed caches of every owned partition, shared between the processing loop (the only
/// writer, after each commit) and the ops server's order queries.
#[derive(Debug, Default, Clone)]
pub struct SharedCaches(Arc<RwLock<HashMap<i32, PartitionCache>>>);

impl SharedCaches {
    /// Read access (a poisoned lock is still read: writers replace whole entries).
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<i32, PartitionCache>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access.
    pub fn write(&self) -> RwLockWriteGuard<'_, HashMap<i32, PartitionCache>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this instance owns (and has restored) a partition.
    pub fn owns(&self, partition: i32) -> bool {
        self.read().contains_key(&partition)
    }

    /// Owned, restored partitions.
    pub fn partitions(&self) -> usize {
        self.read().len()
    }

    /// Cached orders over all partitions.
    pub fn orders(&self) -> usize {
        self.read().values().map(PartitionCache::len).sum()
    }

    /// The memory the cached orders of all partitions take.
    pub fn memory_bytes(&self) -> usize {
        self.read().values().map(PartitionCache::memory_bytes).sum()
    }

    /// Reads the orders of `wanted` that are neither in memory nor unknown from their
    /// partitions' local stores, on up to `threads` threads, and keeps the ones found in memory;
    /// returns how many were read. A batch about to be decided reads its cold orders this way:
    /// side by side instead of one after the other on the processing thread. What the store
    /// holds is committed state, as the cache is, so warming changes no decision; a failed read
    /// is recorded as a read during deciding would be ([`PartitionCache::store_failure`]).
    pub fn load_cold(&self, wanted: &mut Vec<(i32, &str)>, threads: usize) -> usize {
        wanted.sort_unstable();
        wanted.dedup();
        let found: Vec<(i32, &str, OrderState)> = {
            let caches = self.read();
            let cold: Vec<(&PartitionCache, i32, &str)> = wanted
                .iter()
                .filter_map(|&(partition, order_id)| {
                    let cache = caches.get(&partition)?;
                    (cache.is_backed() && !cache.in_memory(order_id))
                        .then_some((cache, partition, order_id))
                })
                .collect();
            fn read<'a>(
                part: &[(&PartitionCache, i32, &'a str)],
            ) -> Vec<(i32, &'a str, OrderState)> {
                part.iter()
                    .filter_map(|&(cache, partition, order_id)| {
                        cache.stored(order_id).map(|s| (partition, order_id, s))
                    })
                    .collect()
            }
            // Below this many reads a thread costs more than it saves.
            const READS_PER_THREAD: usize = 32;
            let threads = threads.clamp(1, cold.len().div_ceil(READS_PER_THREAD).max(1));
            let chunk = cold.len().div_ceil(threads).max(1);
            let mut parts = cold.chunks(chunk);
            let first = parts.next().unwrap_or_default();
            std::thread::scope(|scope| {
                let helpers: Vec<_> = parts.map(|part| scope.spawn(move || read(part))).collect();
                let mut found = read(first);
                for helper in helpers {
                    // A helper that panicked read nothing into memory: deciding reads those orders itself.
                    found.extend(helper.join().unwrap_or_default());
                }
                found
            })
        };
        let mut caches = self.write();
        for (partition, order_id, state) in &found {
            if let Some(cache) = caches.get_mut(partition) {
                cache.apply(order_id, Some(state));
            }
        }
        found.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn order(state: u16, version: u64) -> OrderState {
        OrderState {
            state: StateId(state),
            version,
            created_at_ms: 1_764_000_000_000,
            updated_at_ms: 1_764_000_000_000 + version as i64,
            recent: Vec::new(),
            parked: Vec::new(),
        }
    }

    /// A disk backend in `dir` whose hot orders may take `hot_bytes` in all.
    fn disk(dir: &std::path::Path, hot_bytes: usize) -> Arc<DiskState> {
        let identity = store::StoreIdentity {
            format: store::FORMAT_VERSION,
            cluster_id: "c".into(),
            state_topic: "orders.state".into(),
            topic_id: None,
            definition_hash: "h".into(),
        };
        let store = store::LocalStore::open(dir, "test", &identity, 8 << 20)
            .unwrap()
            .store;
        Arc::new(DiskState {
            store,
            delete_retention_ms: 86_400_000,
            hot: HotBudget::new(hot_bytes),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Writes and tombstones through a backed cache whose budget holds a few dozen orders,
        /// each written to the store first as the processor does: every order reads back as last
        /// written (from memory or, once evicted, from the store), and memory stays within the
        /// partition's share of the budget.
        #[test]
        fn a_backed_cache_stays_in_its_share_and_reads_evicted_orders_from_the_store(
            writes in proptest::collection::vec((0u32..400, proptest::option::of((0u16..5, 1u64..9))), 1..1500)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let definition = crate::machine::lifecycle_for_tests();
            let disk = disk(dir.path(), 16 << 10);
            let _ = disk.hot.set_partitions(2);
            let mut cache = PartitionCache::backed(Arc::clone(&disk), 0, Arc::clone(&definition));
            let mut model: std::collections::HashMap<String, OrderState> = Default::default();
            let mut peak = 0;
            for (n, (id, write)) in writes.into_iter().enumerate() {
                let order_id = format!("order-{id}");
                let state = write.map(|(s, v)| order(s, v));
                let mut value = Vec::new();
                if let Some(state) = &state {
                    crate::codec::encode_order_state(&definition, &order_id, state, &mut value);
                }
                let change = store::StoreChange {
                    partition: 0,
                    order_id: &order_id,
                    value: state.as_ref().map(|_| value.as_slice()),
                    deadline_before: None,
                    deadline_after: None,
                };
                disk.store.write(&[change], &BTreeMap::from([(0, n as i64 + 1)]), 0).unwrap();
                cache.apply(&order_id, state.as_ref());
                match state {
                    Some(state) => { model.insert(order_id, state); }
                    None => { model.remove(&order_id); }
                }
                peak = peak.max(cache.memory_bytes());
            }
            prop_assert!(peak <= disk.hot.share(), "peak {} over the share {}", peak, disk.hot.share());
            for id in 0..400 {
                let order_id = format!("order-{id}");
                prop_assert_eq!(cache.get(&order_id), model.get(&order_id).cloned());
                prop_assert_eq!(cache.state_of(&order_id), model.get(&order_id).map(|o| o.state));
            }
            prop_assert_eq!(cache.store_failure(), None);
        }
    }

    #[test]
    fn orders_leave_memory_once_the_young_generation_fills_half_the_share() {
        let dir = tempfile::tempdir().unwrap();
        let definition = crate::machine::lifecycle_for_tests();
        let disk = disk(dir.path(), 32 << 10);
        let mut cache = PartitionCache::backed(Arc::clone(&disk), 0, definition);
        for id in 0..2_000 {
            cache.apply(&format!("order-{id}"), Some(&order(1, 1)));
        }
        assert!(cache.memory_bytes() <= 32 << 10, "{}", cache.memory_bytes());
        assert!(cache.len() < 2_000, "some orders left memory");
        assert_eq!(
            disk.hot.evicted() + cache.len() as u64,
            2_000,
            "each counted once"
        );
        assert!(
            cache.find("order-1999").is_some(),
            "the last written stays in memory"
        );
        assert!(cache.find("order-0").is_none(), "the first written left");
        assert_eq!(disk.hot.store_reads(), 0, "no lookup missed memory yet");
        cache.get("order-1999");
        assert_eq!(disk.hot.store_reads(), 0, "a hot order is read from memory");
        cache.get("order-0");
        cache.state_of("order-never-written");
        assert_eq!(
            disk.hot.store_reads(),
            2,
            "a cold order and an unknown one are looked up in the store"
        );
        assert!(
            disk.hot.set_partitions(4),
            "a quarter of the budget each now"
        );
        assert!(!disk.hot.set_partitions(4));
        cache.fit_budget();
        assert!(
            cache.memory_bytes() <= disk.hot.share(),
            "{} over the smaller share {}",
            cache.memory_bytes(),
            disk.hot.share()
        );
        let unbacked = {
            let mut c = PartitionCache::new();
            for id in 0..2_000 {
                c.apply(&format!("order-{id}"), Some(&order(1, 1)));
            }
            c
        };
        assert_eq!(
            unbacked.len(),
            2_000,
            "the memory backend keeps every order"
        );
    }

    proptest! {
        /// Puts, replacements and tombstones over few ids (so they collide often) and enough
        /// of them to grow the table several times: the cache answers like a plain map.
        #[test]
        fn the_cache_answers_like_a_map_of_its_last_writes(
            writes in proptest::collection::vec((0u32..300, proptest::option::of((0u16..7, 1u64..9))), 0..2000)
        ) {
            let mut cache = PartitionCache::new();
            let mut model: std::collections::HashMap<String, OrderState> = Default::default();
            for (id, write) in writes {
                let order_id = format!("order-{id}");
                let state = write.map(|(s, v)| order(s, v));
                cache.apply(&order_id, state.as_ref());
                match state {
                    Some(state) => { model.insert(order_id, state); }
                    None => { model.remove(&order_id); }
                }
            }
            prop_assert_eq!(cache.len(), model.len());
            for id in 0..300 {
                let order_id = format!("order-{id}");
                prop_assert_eq!(cache.get(&order_id), model.get(&order_id).cloned());
                prop_assert_eq!(cache.state_of(&order_id), model.get(&order_id).map(|o| o.state));
            }
            let listed: std::collections::HashMap<String, OrderState> =
                cache.iter().map(|(id, state)| (id.to_string(), state)).collect();
            prop_assert_eq!(&listed, &model);
            let mut states: Vec<StateId> = cache.states().collect();
            let mut expected: Vec<StateId> = model.values().map(|o| o.state).collect();
            states.sort();
            expected.sort();
            prop_assert_eq!(states, expected);
        }
    }

    /// Writes `orders` of partition `partition` to the store only (as if evicted long ago).
    fn store_only(
        disk: &DiskState,
        definition: &Definition,
        partition: i32,
        orders: &[(String, OrderState)],
    ) {
        let values: Vec<Vec<u8>> = orders
            .iter()
            .map(|(id, state)| {
                let mut value = Vec::new();
                crate::codec::encode_order_state(definition, id, state, &mut value);
                value
            })
            .collect();
        let changes: Vec<store::StoreChange<'_>> = orders
            .iter()
            .zip(&values)
            .map(|((id, _), value)| store::StoreChange {
                partition,
                order_id: id,
                value: Some(value),
                deadline_before: None,
                deadline_after: None,
            })
            .collect();
        disk.store
            .write(
                &changes,
                &BTreeMap::from([(partition, orders.len() as i64)]),
                0,
            )
            .unwrap();
    }

    #[test]
    fn cold_orders_of_a_batch_are_read_side_by_side_into_memory() {
        let dir = tempfile::tempdir().unwrap();
        let definition = crate::machine::lifecycle_for_tests();
        let disk = disk(dir.path(), 8 << 20);
        let caches = SharedCaches::default();
        let mut stored = BTreeMap::new();
        for partition in [0, 1] {
            let orders: Vec<(String, OrderState)> = (0..200)
                .map(|n| {
                    (
                        format!("order-{partition}-{n}"),
                        order(1 + partition as u16, n),
                    )
                })
                .collect();
            store_only(&disk, &definition, partition, &orders);
            stored.insert(partition, orders);
            caches.write().insert(
                partition,
                PartitionCache::backed(Arc::clone(&disk), partition, Arc::clone(&definition)),
            );
        }
        caches
            .write()
            .get_mut(&0)
            .unwrap()
            .apply("order-0-7", Some(&order(4, 99)));
        let ids: Vec<String> = (0..150).map(|n| format!("order-0-{n}")).collect();
        let mut wanted: Vec<(i32, &str)> = ids.iter().map(|id| (0, id.as_str())).collect();
        wanted.extend(ids.iter().map(|id| (0, id.as_str())));
        wanted.push((1, "order-1-3"));
        wanted.push((1, "order-1-never-written"));
        wanted.push((7, "order-of-a-partition-not-owned"));

        let read = caches.load_cold(&mut wanted, 3);

        assert_eq!(
            read,
            149 + 1,
            "each cold order read once; the hot one and the unknown ones not kept"
        );
        assert_eq!(
            disk.hot.store_reads(),
            149 + 2,
            "the unknown order was looked up too"
        );
        let caches = caches.read();
        for (n, id) in ids.iter().enumerate() {
            assert!(caches[&0].in_memory(id), "{id} is in memory");
            let expected = if n == 7 {
                order(4, 99)
            } else {
                stored[&0][n].1.clone()
            };
            assert_eq!(
                caches[&0].find(id).map(PackedOrder::unpack),
                Some(expected),
                "{id}"
            );
        }
        assert!(
            caches[&0].find("order-0-150").is_none(),
            "an order not wanted stays on disk"
        );
        assert_eq!(
            caches[&1].find("order-1-3").map(PackedOrder::unpack),
            Some(stored[&1][3].1.clone())
        );
        assert!(!caches[&1].in_memory("order-1-never-written"));
        assert_eq!(caches[&0].store_failure(), None);
    }
}
