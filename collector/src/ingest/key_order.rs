//! Attribute key orders remembered across the spans (or log records) of one export request.
//!
//! Converted attributes are sorted by key with their keys interned. Spans from one
//! instrumentation repeat the same keys in the same order, so the converter remembers, for
//! the last few attribute lists, the interned keys in arrival order and the permutation that
//! sorts them: a list whose keys match byte for byte takes its keys from there and is put in
//! order by that permutation, with no hashing and no comparison sort. Anything else is
//! interned and sorted as usual, and remembered in place of an older order.

use crate::{
    lookup::same_text,
    model::{Attributes, Key, key},
};

/// Orders remembered at most (instrumentations send a few shapes: server, client, database
/// spans; entries are looked up by their number of attributes, then told apart key by key).
const ENTRIES: usize = 4;

/// Longest attribute list remembered (its permutation is applied with a 64-bit mask).
const MAX_KEYS: usize = 64;

/// One remembered order.
#[derive(Debug)]
struct Entry {
    /// `KeyValue`s on the wire, values or not: what entries are looked up by.
    encoded: usize,
    /// The kept keys in arrival order.
    keys: Vec<Key>,
    /// Sorted position `j` holds arrival index `order[j]`.
    order: Vec<u8>,
}

/// The orders of recent attribute lists.
#[derive(Debug, Default)]
pub struct KeyOrders {
    entries: Vec<Entry>,
    /// The entry replaced next when none matches.
    next: usize,
}

impl KeyOrders {
    /// Starts converting one list of `encoded` `KeyValue`s.
    pub fn start(&mut self, encoded: usize) -> Run<'_> {
        let entry = self.entries.iter().position(|e| e.encoded == encoded);
        Run { orders: Some(self), encoded, entry, matching: entry.is_some() }
    }
}

impl Run<'static> {
    /// Converts a list with nothing remembered: keys interned, then sorted.
    pub fn plain() -> Self {
        Run { orders: None, encoded: 0, entry: None, matching: false }
    }
}

/// The conversion of one attribute list.
#[derive(Debug)]
pub struct Run<'a> {
    orders: Option<&'a mut KeyOrders>,
    encoded: usize,
    entry: Option<usize>,
    /// Every key so far was the remembered one.
    matching: bool,
}

impl Run<'_> {
    /// The interned key of the attribute kept at position `index`, from its encoded bytes:
    /// checked to be UTF-8 only when it is not a remembered key; `None` when it is not.
    #[inline]
    pub fn key(&mut self, index: usize, key: &[u8]) -> Option<Key> {
        if self.matching
            && let (Some(orders), Some(current)) = (&self.orders, self.entry)
        {
            let entries = &orders.entries;
            if let Some(known) = entries[current].keys.get(index).filter(|k| same_text(k.as_bytes(), key)) {
                return Some(known.clone());
            }
            // Another shape with as many attributes, the same so far and this key next
            // (a client span and a server span differ in a key or two).
            let kept = &entries[current].keys[..index.min(entries[current].keys.len())];
            let other = entries.iter().position(|e| {
                e.encoded == self.encoded
                    && e.keys.get(index).is_some_and(|k| same_text(k.as_bytes(), key))
                    && e.keys[..index].iter().zip(kept).all(|(a, b)| a == b)
            });
            if let Some(other) = other {
                self.entry = Some(other);
                return Some(entries[other].keys[index].clone());
            }
        }
        self.matching = false;
        std::str::from_utf8(key).ok().map(self::key)
    }

    /// Sorts the converted list by key (repeated keys keep their order): by the remembered
    /// permutation when every key matched, otherwise by sorting, remembering the new order.
    pub fn finish(self, attributes: &mut Attributes) {
        let n = attributes.len();
        let Some(orders) = self.orders.filter(|_| n <= MAX_KEYS) else {
            super::convert::sort_by_key(attributes);
            return;
        };
        if let Some(e) = self.entry
            && self.matching
            && orders.entries[e].keys.len() == n
        {
            permute(attributes, &orders.entries[e].order);
            return;
        }
        let keys: Vec<Key> = attributes.iter().map(|(k, _)| k.clone()).collect();
        let mut order: Vec<u8> = (0..n as u8).collect();
        order.sort_by(|&a, &b| keys[usize::from(a)].cmp(&keys[usize::from(b)]));
        permute(attributes, &order);
        let entry = Entry { encoded: self.encoded, keys, order };
        if orders.entries.len() < ENTRIES {
            orders.entries.push(entry);
        } else {
            orders.entries[orders.next] = entry;
            orders.next = (orders.next + 1) % ENTRIES;
        }
    }
}

/// Reorders `items` so position `j` holds what was at `order[j]` (`order` is a permutation of
/// at most [`MAX_KEYS`] positions), following its cycles with swaps.
fn permute<T>(items: &mut [T], order: &[u8]) {
    let mut placed = 0u64;
    for start in 0..items.len() {
        if placed & (1 << start) != 0 {
            continue;
        }
        let mut j = start;
        loop {
            placed |= 1 << j;
            let from = usize::from(order[j]);
            if from == start {
                break;
            }
            items.swap(j, from);
            j = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    fn convert(orders: &mut KeyOrders, keys: &[&str]) -> Attributes {
        let mut run = orders.start(keys.len());
        let mut out: Attributes = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let key = run.key(out.len(), k.as_bytes()).expect("UTF-8");
            out.push((key, Value::Int(i as i64)));
        }
        run.finish(&mut out);
        out
    }

    fn sorted(keys: &[&str]) -> Attributes {
        let mut out: Attributes = keys.iter().enumerate().map(|(i, k)| (Key::from(*k), Value::Int(i as i64))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn remembered_orders_sort_as_a_stable_sort_does() {
        let mut orders = KeyOrders::default();
        let shapes: [&[&str]; 6] = [
            &["c", "a", "b", "a"],
            &["c", "a", "b", "a"],
            &["c", "a", "x", "a"],
            &["z", "y"],
            &["c", "a", "b", "a"],
            &["b", "c", "d", "e", "a"],
        ];
        for round in 0..3 {
            for keys in shapes {
                assert_eq!(convert(&mut orders, keys), sorted(keys), "round {round}: {keys:?}");
            }
        }
        assert!(orders.entries.len() <= ENTRIES);
    }

    #[test]
    fn alternating_shapes_of_one_length_both_stay_remembered() {
        // A client and a server span with as many attributes, alternating: after the first
        // of each, every list matches a remembered order, so none is added (a miss adds one,
        // up to four).
        let mut orders = KeyOrders::default();
        let server = ["m", "r", "s", "a"];
        let client = ["m", "r", "p", "a"];
        for _ in 0..4 {
            assert_eq!(convert(&mut orders, &server), sorted(&server));
            assert_eq!(convert(&mut orders, &client), sorted(&client));
        }
        assert_eq!(orders.entries.len(), 2);
    }

    #[test]
    fn long_lists_are_sorted_without_being_remembered() {
        let keys: Vec<String> = (0..100).rev().map(|i| format!("k{i:03}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut orders = KeyOrders::default();
        assert_eq!(convert(&mut orders, &keys), sorted(&keys));
        assert!(orders.entries.is_empty());
    }

    #[test]
    fn permute_follows_cycles() {
        let mut items = vec!['a', 'b', 'c', 'd', 'e'];
        permute(&mut items, &[3, 0, 4, 1, 2]);
        assert_eq!(items, vec!['d', 'a', 'e', 'b', 'c']);
    }
}
