//! Bottom-k sampling: of everything offered, keep the `cap` items with the smallest keys. With a
//! seeded hash of each item's id as its key, that is a uniform sample without replacement that
//! is the same whatever order the items come in, on every rerun and every worker, in memory
//! bounded by `cap`.

use std::collections::{BinaryHeap, HashMap};

pub struct BottomK<T> {
    cap: usize,
    heap: BinaryHeap<(u64, usize)>,
    items: HashMap<usize, T>,
    next: usize,
}

impl<T> BottomK<T> {
    pub fn new(cap: usize) -> Self {
        BottomK { cap, heap: BinaryHeap::new(), items: HashMap::new(), next: 0 }
    }

    /// Keeps `item` if its key is among the `cap` smallest seen.
    pub fn offer(&mut self, key: u64, item: T) {
        if self.cap == 0 {
            return;
        }
        if self.heap.len() == self.cap {
            if self.heap.peek().is_some_and(|&(top, _)| key >= top) {
                return;
            }
            if let Some((_, slot)) = self.heap.pop() {
                self.items.remove(&slot);
            }
        }
        self.heap.push((key, self.next));
        self.items.insert(self.next, item);
        self.next += 1;
    }

    /// Whether an item of this key would be kept now.
    pub fn would_keep(&self, key: u64) -> bool {
        self.cap > 0 && (self.heap.len() < self.cap || self.heap.peek().is_some_and(|&(top, _)| key < top))
    }

    /// Offers every item of another sample (a part of the same stream, sampled apart).
    pub fn merge(&mut self, other: BottomK<T>) {
        for (key, item) in other.into_keyed() {
            self.offer(key, item);
        }
    }

    /// The kept items with their keys, smallest key first.
    pub fn into_keyed(self) -> Vec<(u64, T)> {
        let mut items = self.items;
        self.heap.into_sorted_vec().into_iter().filter_map(|(key, slot)| Some((key, items.remove(&slot)?))).collect()
    }

    /// The kept items, smallest key first.
    pub fn into_sorted(self) -> Vec<T> {
        self.into_keyed().into_iter().map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_smallest_keys_whatever_the_order_and_however_split() {
        let keys: Vec<u64> = (0..1000u64).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())).collect();
        let mut expected = keys.clone();
        expected.sort_unstable();
        expected.truncate(10);
        let mut forward = BottomK::new(10);
        keys.iter().for_each(|&k| forward.offer(k, k));
        let (mut left, mut right) = (BottomK::new(10), BottomK::new(10));
        keys.iter().rev().enumerate().for_each(|(i, &k)| if i % 3 == 0 { left.offer(k, k) } else { right.offer(k, k) });
        left.merge(right);
        assert_eq!(forward.into_sorted(), expected);
        assert_eq!(left.into_sorted(), expected);
        let mut none = BottomK::new(0);
        none.offer(1, 1);
        assert!(none.into_sorted().is_empty());
    }
}
