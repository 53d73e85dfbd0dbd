//! Order state per owned partition: the committed cache decisions read, and its restore from the
//! compacted state topic.

pub(crate) mod block;
pub mod packed;
pub mod restore;
pub mod store;

use std::collections::HashMap;
use std::hash::BuildHasher;
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
/// backend the cache holds the orders written since the partition was assigned, in front of the
/// partition's local store, which holds them all: a read that misses memory reads the store.
#[derive(Debug, Default, Clone)]
pub struct PartitionCache {
    orders: HashTable<PackedOrder>,
    scratch: Vec<u8>,
    backing: Option<Backing>,
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
        self.orders
            .find(order_hash(key), |packed| packed.key_bytes() == key)
    }

    /// The cached orders whose id has this [`order_hash`] (one, but two ids may share a hash).
    pub fn ids_with_hash(&self, hash: u64) -> impl Iterator<Item = &str> {
        self.orders
            .iter_hash(hash)
            .filter(move |packed| order_hash(packed.key_bytes()) == hash)
            .map(PackedOrder::order_id)
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
        let key = order_id.as_bytes();
        let entry = self.orders.entry(
            order_hash(key),
            |packed| packed.key_bytes() == key,
            |packed| order_hash(packed.key_bytes()),
        );
        match (entry, state) {
            (hashbrown::hash_table::Entry::Occupied(mut slot), Some(state)) => {
                *slot.get_mut() = PackedOrder::pack(order_id, state, &mut self.scratch);
            }
            (hashbrown::hash_table::Entry::Vacant(slot), Some(state)) => {
                slot.insert(PackedOrder::pack(order_id, state, &mut self.scratch));
            }
            (hashbrown::hash_table::Entry::Occupied(slot), None) => {
                slot.remove();
            }
            (hashbrown::hash_table::Entry::Vacant(_), None) => {}
        }
    }

    /// How many orders are in memory (with a local store behind, not all the partition's).
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// True when no order is cached.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Every cached order, unpacked one at a time.
    pub fn iter(&self) -> impl Iterator<Item = (&str, OrderState)> {
        self.orders
            .iter()
            .map(|packed| (packed.order_id(), packed.unpack()))
    }

    /// The state every cached order is in (in memory only; see [`PartitionCache::each_state`]).
    pub fn states(&self) -> impl Iterator<Item = StateId> + '_ {
        self.orders.iter().map(PackedOrder::state_id)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
}
