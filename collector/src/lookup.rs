//! Looking up ingest's short texts quickly: attribute keys and dictionary values compared a
//! word at a time in place, a filter that rules keys out by their length, and a hasher for
//! maps keyed by what is already a hash.

use std::hash::Hasher;

/// Hashes a `u64` as itself, for maps keyed by what is already a keyed hash (the edge
/// matcher's span fingerprints, the dictionary columns' value hashes).
#[derive(Debug, Default, Clone, Copy)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the maps' keys are `u64`s); any other input still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Whether two short texts (attribute keys, dictionary values) are equal: compared a word at
/// a time in place, where `==` calls `memcmp` (that call took ~7 % of ingest CPU, for keys
/// and values of a dozen bytes). Longer texts are compared with `==`.
#[inline]
pub fn same_text(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        // Positions 0, n/2 and n-1 cover every byte of up to three.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        // Two words that overlap cover every byte.
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        // Four, two from each end (keys such as `http.request.method` are longer than 16).
        17..=32 => {
            word8(a, 0) == word8(b, 0)
                && word8(a, 8) == word8(b, 8)
                && word8(a, n - 16) == word8(b, n - 16)
                && word8(a, n - 8) == word8(b, n - 8)
        }
        _ => a == b,
    }
}

/// The order of two texts by their bytes, as `Ord` for `str` gives it, comparing eight bytes
/// at a time in place (see [`same_text`]).
#[inline]
pub fn text_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut a_rest, mut b_rest) = (a, b);
    while let (Some((x, a_next)), Some((y, b_next))) = (a_rest.split_first_chunk::<8>(), b_rest.split_first_chunk::<8>()) {
        // Big-endian words order as their bytes do.
        let (x, y) = (u64::from_be_bytes(*x), u64::from_be_bytes(*y));
        if x != y {
            return x.cmp(&y);
        }
        (a_rest, b_rest) = (a_next, b_next);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        if x != y {
            return x.cmp(y);
        }
    }
    a_rest.len().cmp(&b_rest.len())
}

fn word4(s: &[u8], at: usize) -> u32 {
    s.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_ne_bytes)
}

fn word8(s: &[u8], at: usize) -> u64 {
    s.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

/// The lengths of a fixed set of attribute keys: a key of another length is none of them,
/// which one shift tells, before comparing it with each (ingest reads a few well-known keys
/// out of every span's attributes, and most keys are none of them).
#[derive(Debug, Clone, Copy)]
pub struct KeyLengths(u64);

impl KeyLengths {
    /// No keys.
    pub const NONE: Self = Self(0);

    /// The lengths of `keys`.
    pub const fn of(keys: &[&str]) -> Self {
        let mut lengths = Self::NONE;
        let mut i = 0;
        while i < keys.len() {
            lengths = lengths.with(keys[i]);
            i += 1;
        }
        lengths
    }

    /// These lengths and `key`'s (a length past 63 is not kept: such keys are always
    /// compared).
    pub const fn with(self, key: &str) -> Self {
        if key.len() < 64 { Self(self.0 | 1 << key.len()) } else { self }
    }

    /// Whether `key` may be one of the keys: false only when no key has its length.
    #[inline]
    pub fn may_hold(self, key: &str) -> bool {
        key.len() >= 64 || self.0 >> key.len() & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lengths_rule_out_only_keys_of_other_lengths() {
        let long = "k".repeat(70);
        let lengths = KeyLengths::of(&["peer.service", "rpc.system"]).with(&long);
        for key in ["peer.service", "rpc.system", "bench.attr.8", "event.name", "k".repeat(90).as_str()] {
            assert!(lengths.may_hold(key), "{key}");
        }
        for key in ["", "url.path", "bench.attr.10", "http.request.method"] {
            assert!(!lengths.may_hold(key), "{key}");
        }
        assert!(!KeyLengths::NONE.may_hold("a"));
    }

    #[test]
    fn short_text_comparisons_agree_with_the_standard_ones() {
        let mut texts: Vec<Vec<u8>> = vec![Vec::new()];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for len in 1..40 {
            for _ in 0..6 {
                // Few distinct bytes, so texts often share prefixes and differ late.
                texts.push((0..len).map(|_| b"ab\xff"[next() as usize % 3]).collect());
            }
        }
        texts.push(b"bench.attr.10".to_vec());
        texts.push(b"bench.attr.11".to_vec());
        texts.push(b"bench.attr.1".to_vec());
        for a in &texts {
            for b in &texts {
                assert_eq!(same_text(a, b), a == b, "{a:?} {b:?}");
                assert_eq!(text_order(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }
}
