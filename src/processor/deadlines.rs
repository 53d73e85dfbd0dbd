//! When each cached order next needs an expiry pass (a parked request's deadline or the end of its
//! state's retention), ordered by time.
//!
//! Most cached orders have a deadline (a delivered order is kept for its return window), so this
//! index is as large as the cache. It files orders under their [`order_hash`] instead of their id
//! (24-byte entries, no heap block per order) and turns hashes back into ids through the
//! partition's cache when they fall due. Two ids of one partition sharing a 64-bit hash and a
//! deadline share an entry: the second is expired when next touched or after the next restore.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::state::{order_hash, PartitionCache};

/// Deadlines of cached orders, ordered by time. An order's current deadline is not stored twice:
/// callers know it from the order's cached state (`Decider::next_deadline`) when they change it.
#[derive(Debug, Default)]
pub struct DeadlineIndex {
    by_time: BTreeSet<(i64, i32, u64)>,
}

impl DeadlineIndex {
    /// An empty index.
    pub fn new() -> DeadlineIndex {
        DeadlineIndex::default()
    }

    /// Moves an order's deadline from `old` (what its previous state gave, if any) to `new`.
    pub fn update(&mut self, partition: i32, order_id: &str, old: Option<i64>, new: Option<i64>) {
        if old == new {
            return;
        }
        let hash = order_hash(order_id.as_bytes());
        if let Some(old) = old {
            self.by_time.remove(&(old, partition, hash));
        }
        if let Some(new) = new {
            self.by_time.insert((new, partition, hash));
        }
    }

    /// Forgets every deadline of a partition (revoked).
    pub fn drop_partition(&mut self, partition: i32) {
        self.by_time.retain(|(_, p, _)| *p != partition);
    }

    /// How many deadlines are held.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// True when no order has a deadline.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    /// Orders due at `now`, from at most `limit` entries, as (partition, order id). An entry whose
    /// order is no longer cached is dropped instead of being returned on every pass.
    pub fn due(
        &mut self,
        caches: &HashMap<i32, PartitionCache>,
        now: i64,
        limit: usize,
    ) -> Vec<(i32, String)> {
        let due: Vec<(i64, i32, u64)> = self
            .by_time
            .iter()
            .take_while(|(deadline, _, _)| *deadline <= now)
            .take(limit)
            .copied()
            .collect();
        let mut orders: Vec<(i32, String)> = Vec::with_capacity(due.len());
        let mut listed = HashSet::new();
        for entry @ (_, partition, hash) in due {
            // Two ids sharing a hash, each due at its own time, are listed once.
            if !listed.insert((partition, hash)) {
                continue;
            }
            let ids: Vec<&str> = caches
                .get(&partition)
                .map(|cache| cache.ids_with_hash(hash).collect())
                .unwrap_or_default();
            if ids.is_empty() {
                self.by_time.remove(&entry);
            }
            orders.extend(ids.into_iter().map(|id| (partition, id.to_string())));
        }
        orders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{OrderState, StateId};

    fn cached(orders: &[&str]) -> HashMap<i32, PartitionCache> {
        let mut cache = PartitionCache::new();
        let state = OrderState {
            state: StateId(0),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            recent: Vec::new(),
            parked: Vec::new(),
        };
        for order_id in orders {
            cache.apply(order_id, Some(&state));
        }
        HashMap::from([(3, cache)])
    }

    #[test]
    fn due_orders_come_back_by_id_in_deadline_order_up_to_the_limit() {
        let caches = cached(&["a", "b", "c"]);
        let mut index = DeadlineIndex::new();
        index.update(3, "a", None, Some(30));
        index.update(3, "b", None, Some(10));
        index.update(3, "c", None, Some(20));
        assert_eq!(
            index.due(&caches, 25, 10),
            vec![(3, "b".to_string()), (3, "c".to_string())]
        );
        assert_eq!(index.due(&caches, 25, 1), vec![(3, "b".to_string())]);
        assert!(index.due(&caches, 5, 10).is_empty());
    }

    #[test]
    fn a_new_deadline_replaces_the_old_and_none_clears_it() {
        let caches = cached(&["a"]);
        let mut index = DeadlineIndex::new();
        index.update(3, "a", None, Some(10));
        index.update(3, "a", Some(10), Some(50));
        assert!(index.due(&caches, 20, 10).is_empty());
        assert_eq!(index.len(), 1);
        index.update(3, "a", Some(50), None);
        assert!(index.due(&caches, 100, 10).is_empty());
        assert!(index.is_empty());
    }

    #[test]
    fn an_entry_whose_order_is_not_cached_is_dropped_not_returned() {
        let caches = cached(&["a"]);
        let mut index = DeadlineIndex::new();
        index.update(3, "gone", None, Some(10));
        index.update(7, "a", None, Some(10)); // partition 7 is not owned
        index.update(3, "a", None, Some(20));
        assert_eq!(index.due(&caches, 30, 10), vec![(3, "a".to_string())]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn dropping_a_partition_forgets_only_its_deadlines() {
        let mut caches = cached(&["a"]);
        caches.insert(4, caches[&3].clone());
        let mut index = DeadlineIndex::new();
        index.update(3, "a", None, Some(10));
        index.update(4, "a", None, Some(10));
        index.drop_partition(3);
        assert_eq!(index.due(&caches, 30, 10), vec![(4, "a".to_string())]);
    }
}
