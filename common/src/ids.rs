//! Trace and span IDs: 16 and 8 bytes, never all zeroes, written as lower-case hex.

use std::fmt;

use crate::hex;

/// A 16-byte trace ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

/// Parses 1 to `2 * N` hex digits, left-padded with zeroes (Jaeger writes 64-bit trace IDs
/// as 16 digits).
fn parse_hex_padded<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim().as_bytes();
    if text.is_empty() || text.len() > N * 2 {
        return None;
    }
    if text.len() == N * 2 {
        return hex::decode(text);
    }
    let mut padded = vec![b'0'; N * 2];
    padded[N * 2 - text.len()..].copy_from_slice(text);
    hex::decode(&padded)
}

macro_rules! id {
    ($t:ident, $n:literal, $random:expr) => {
        impl $t {
            /// A random, non-zero ID.
            pub fn random() -> Self {
                loop {
                    let id: [u8; $n] = $random;
                    if id != [0; $n] {
                        return Self(id);
                    }
                }
            }

            /// Its length in bytes.
            pub const LEN: usize = $n;

            /// Its lower-case hex digits, on the stack.
            pub fn hex(&self) -> hex::Hex<{ $n * 2 }> {
                hex::Hex::new(&self.0)
            }

            /// From its bytes: exactly the right length, not all zero.
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                let id: [u8; $n] = bytes.try_into().ok()?;
                (id != [0; $n]).then_some(Self(id))
            }

            /// From 1 up to all of its hex digits (left-padded); not all zero.
            pub fn parse_hex(text: &str) -> Option<Self> {
                parse_hex_padded::<$n>(text).filter(|id| *id != [0; $n]).map(Self)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.hex().as_str())
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.hex().as_str())
            }
        }
    };
}

id!(TraceId, 16, fastrand::u128(..).to_be_bytes());
id!(SpanId, 8, fastrand::u64(..).to_be_bytes());

impl TraceId {
    /// Whether this trace falls within `ratio` of all traces. Decided from the ID alone, so
    /// every hop on the trace's path decides the same.
    pub fn within_ratio(&self, ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        if ratio <= 0.0 {
            return false;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        let value = u64::from_be_bytes(low) >> 1;
        (value as f64) < ratio * (u64::MAX >> 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_pads_and_rejects() {
        let id = TraceId::parse_hex("00f067aa0ba902b7").expect("64-bit id");
        assert_eq!(id.to_string(), "000000000000000000f067aa0ba902b7");
        assert_eq!(TraceId::parse_hex(&id.to_string()), Some(id));
        assert!(TraceId::parse_hex("0").is_none());
        assert!(TraceId::parse_hex("xyz").is_none());
        assert!(TraceId::parse_hex(&"a".repeat(33)).is_none());
        assert!(SpanId::from_bytes(&[0; 8]).is_none());
        assert!(SpanId::from_bytes(&[1; 7]).is_none());
        assert_ne!(SpanId::random(), SpanId::random());
    }

    #[test]
    fn ratio_sampling_is_deterministic_and_proportional() {
        let kept = (0..10_000).filter(|_| TraceId::random().within_ratio(0.25)).count();
        assert!((2_200..2_800).contains(&kept), "{kept}");
        let id = TraceId::random();
        assert_eq!(id.within_ratio(0.5), id.within_ratio(0.5));
        assert!(id.within_ratio(1.0) && !id.within_ratio(0.0));
    }
}
