//! Order state per owned partition: the committed cache decisions read, and its restore from the
//! compacted state topic.

pub mod restore;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::machine::OrderState;

/// A map keyed by order ids: foldhash, seeded per process, instead of SipHash (a tenth of the
/// restore's time went into hashing ids), still not predictable from outside.
pub type OrderMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The committed state of every known order of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionCache {
    orders: OrderMap<OrderState>,
}

impl PartitionCache {
    /// An empty cache.
    pub fn new() -> PartitionCache {
        PartitionCache::default()
    }

    /// The committed state of an order.
    pub fn get(&self, order_id: &str) -> Option<&OrderState> {
        self.orders.get(order_id)
    }

    /// Records a committed state (`Some`) or forgets the order (`None`, a tombstone).
    pub fn apply(&mut self, order_id: String, state: Option<OrderState>) {
        match state {
            Some(state) => {
                self.orders.insert(order_id, state);
            }
            None => {
                self.orders.remove(&order_id);
            }
        }
    }

    /// How many orders are cached.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// True when no order is cached.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Every cached order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &OrderState)> {
        self.orders.iter()
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
