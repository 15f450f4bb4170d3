//! Lower-case hex: IDs are written and read this way on every hop (headers, OTLP/JSON,
//! Jaeger's API, the `spans` table), so encoding is table-driven and allocation-free.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out`, which must be twice as long.
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 15)];
    }
}

/// `N` bytes as `2 * N` lower-case hex digits, on the stack.
pub struct Hex<const W: usize>([u8; W]);

impl<const W: usize> Hex<W> {
    /// The digits of `bytes`, which must be `W / 2` long.
    pub fn new(bytes: &[u8]) -> Self {
        let mut out = [b'0'; W];
        encode_into(bytes, &mut out);
        Self(out)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // Every byte is one of `DIGITS`: ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Appends `bytes` as lower-case hex to `out`.
pub fn push(bytes: &[u8], out: &mut String) {
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
}

/// The value of one hex digit (either case).
pub fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Exactly `2 * N` hex digits (either case) as `N` bytes.
pub fn decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *slot = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Exactly `2 * N` lower-case hex digits as `N` bytes: the form [`encode_into`] writes,
/// so decoding and encoding again gives the same text.
pub fn decode_lower<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    text.iter().all(|c| !c.is_ascii_uppercase()).then(|| decode(text)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_both_ways() {
        let bytes = [0x00, 0x4b, 0xf9, 0x2f, 0xff];
        assert_eq!(Hex::<10>::new(&bytes).as_str(), "004bf92fff");
        let mut s = String::from("x");
        push(&bytes, &mut s);
        assert_eq!(s, "x004bf92fff");
        assert_eq!(decode::<5>(b"004BF92fff"), Some(bytes));
        assert_eq!(decode_lower::<5>(b"004BF92fff"), None, "upper case would not round-trip");
        assert_eq!(decode_lower::<5>(b"004bf92fff"), Some(bytes));
        assert_eq!(decode::<5>(b"004bf92ff"), None, "odd length");
        assert_eq!(decode::<5>(b"004bf92fffaa"), None, "too long");
        assert_eq!(decode::<2>(b"0g12"), None, "not hex");
    }
}
