//! The edge matcher's set of settled spans' fingerprints (keyed 64-bit hashes of their IDs):
//! open addressing with linear probing in one array, so that adding or finding a fingerprint
//! reads one cache line, where a general hash set reads its control bytes and then its slot,
//! two cache misses apart in a table of millions (the set's insert was ~7 % of ingest, perf).
//! Zero marks an empty slot; a fingerprint of zero is kept as one.

/// Slots of the smallest non-empty table.
const MIN_SLOTS: usize = 16;

/// A set of fingerprints, at most three quarters full.
#[derive(Debug, Default)]
pub struct Fingerprints {
    /// A power of two of them, or none.
    slots: Vec<u64>,
    len: usize,
}

impl Fingerprints {
    /// Fingerprints held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fingerprints it can hold before it grows.
    pub fn capacity(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// Adds `fingerprint`; false if it was there.
    pub fn insert(&mut self, fingerprint: u64) -> bool {
        if self.len >= self.capacity() {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        let fingerprint = fingerprint.max(1);
        let mask = self.slots.len() - 1;
        let mut at = fingerprint as usize & mask;
        loop {
            match self.slots[at] {
                0 => {
                    self.slots[at] = fingerprint;
                    self.len += 1;
                    return true;
                }
                held if held == fingerprint => return false,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Whether `fingerprint` is held.
    pub fn contains(&self, fingerprint: u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let fingerprint = fingerprint.max(1);
        let mask = self.slots.len() - 1;
        let mut at = fingerprint as usize & mask;
        loop {
            match self.slots[at] {
                0 => return false,
                held if held == fingerprint => return true,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Reads the slot where `fingerprint` is or would go: an insert or lookup soon after finds
    /// it in cache. The slots of many fingerprints read one after another are fetched from
    /// memory together, where inserting them one at a time waits for each in turn.
    pub fn touch(&self, fingerprint: u64) {
        if let Some(mask) = self.slots.len().checked_sub(1) {
            std::hint::black_box(self.slots[fingerprint.max(1) as usize & mask]);
        }
    }

    /// Removes every fingerprint, keeping the table.
    pub fn clear(&mut self) {
        self.slots.fill(0);
        self.len = 0;
    }

    /// Gives back memory beyond what `held` fingerprints (at least those held) need.
    pub fn shrink_to(&mut self, held: usize) {
        let needed = held.max(self.len);
        let slots = if needed == 0 { 0 } else { (needed * 4).div_ceil(3).next_power_of_two().max(MIN_SLOTS) };
        if slots < self.slots.len() {
            self.resize(slots);
        }
    }

    /// Moves the fingerprints into a table of `slots` slots (a power of two, or zero when
    /// none are held).
    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        self.len = 0;
        for fingerprint in old.into_iter().filter(|&f| f != 0) {
            self.insert(fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn holds_what_a_set_holds_through_growth_clearing_and_shrinking() {
        let mut set = Fingerprints::default();
        let mut model = HashSet::new();
        set.touch(7);
        assert!(!set.contains(7), "an empty set can be read ahead and looked in");
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..3 {
            for i in 0..5_000u64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Zero, repeats and values sharing their low bits (one probe run) included.
                let fingerprint = match i % 5 {
                    0 => i << 20,
                    1 => rng % 300,
                    _ => rng,
                };
                assert_eq!(set.insert(fingerprint), model.insert(fingerprint.max(1)), "round {round}, {fingerprint}");
                assert_eq!(set.len(), model.len());
            }
            set.touch(rng);
            for probe in (0..2_000u64).chain(model.iter().copied().take(2_000).collect::<Vec<_>>()) {
                assert_eq!(set.contains(probe), model.contains(&probe.max(1)), "{probe}");
            }
            assert!(set.len() <= set.capacity());
            set.shrink_to(0);
            assert!(model.iter().all(|&f| set.contains(f)), "shrinking keeps what is held");
            set.clear();
            model.clear();
            assert!(set.is_empty() && !set.contains(rng));
        }
        set.shrink_to(10);
        assert_eq!(set.capacity(), 12);
        set.shrink_to(0);
        assert_eq!(set.capacity(), 0);
        assert!(set.insert(0) && set.contains(0) && !set.insert(1), "zero is kept as one");
    }
}
