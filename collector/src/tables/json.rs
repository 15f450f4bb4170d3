//! Attributes as JSON objects, the form the tables keep them in: written straight into a
//! byte buffer at ingest (no intermediate map, keys in arrival order, the first of
//! repeated keys wins) and read back, in the same order, when a stored span is rebuilt.
//!
//! Strings, booleans and numbers are themselves; arrays and maps (kept as JSON text in
//! [`Value::Json`]) are embedded as JSON; a non-finite double is `null`.

use std::{fmt, sync::Arc};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::{
    lookup::text_order,
    model::{Attributes, Key, Resource, Value},
};

/// Writes `attributes` as one JSON object into `out`, leaving out those `skip` accepts (it is
/// given each attribute's position, key and value; only the first of repeated keys is asked).
pub fn write_attributes(out: &mut Vec<u8>, attributes: &Attributes, skip: impl Fn(usize, &str, &Value) -> bool) {
    write_attributes_keyed(out, attributes, skip, |out, key| write_key(out, key));
}

/// A key as an object member's start: `"key":`.
pub fn write_key(out: &mut Vec<u8>, key: &str) {
    write_str(out, key);
    out.push(b':');
}

/// [`write_attributes`], with each member's start (`"key":`) written by `key`, which may
/// write it in a packed form (see [`TextPacker::append_attributes`](super::packed::TextPacker::append_attributes)).
pub fn write_attributes_keyed(
    out: &mut Vec<u8>,
    attributes: &Attributes,
    skip: impl Fn(usize, &str, &Value) -> bool,
    mut key_start: impl FnMut(&mut Vec<u8>, &Key),
) {
    out.push(b'{');
    let mut first = true;
    // Converted attributes are sorted by key, so a repeated key follows its first: one
    // comparison with the previous key tells both; keys out of order are looked for.
    let mut sorted = true;
    for (i, (key, value)) in attributes.iter().enumerate() {
        let repeated = match i.checked_sub(1).map(|p| &attributes[p].0) {
            None => false,
            Some(previous) if sorted && previous.same(key) => true,
            Some(previous) if sorted => match text_order(previous.as_bytes(), key.as_bytes()) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => true,
                std::cmp::Ordering::Greater => {
                    sorted = false;
                    attributes[..i].iter().any(|(k, _)| k == key)
                }
            },
            Some(_) => attributes[..i].iter().any(|(k, _)| k == key),
        };
        if repeated || skip(i, key, value) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        key_start(out, key);
        write_value(out, value);
    }
    out.push(b'}');
}

/// The JSON of the resource rows were last written for, kept while the next rows come from
/// the same resource (the items of one export request's resource entry share it).
#[derive(Debug, Default)]
pub struct ResourceJson {
    last: Option<(Arc<Resource>, String)>,
}

impl ResourceJson {
    /// `resource`'s attributes as a JSON object.
    pub fn of(&mut self, resource: &Arc<Resource>) -> &str {
        if !self.last.as_ref().is_some_and(|(r, _)| Arc::ptr_eq(r, resource)) {
            let mut out = Vec::with_capacity(256);
            write_attributes(&mut out, &resource.attributes, |_, _, _| false);
            self.last = Some((resource.clone(), String::from_utf8(out).unwrap_or_else(|_| "{}".into())));
        }
        self.last.as_ref().map_or("{}", |(_, json)| json.as_str())
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        // Nothing to escape (serde_json leaves other bytes, UTF-8 included, as they are).
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Whether JSON needs any byte of `s` escaped: a control byte, `"` or `\`. Checked eight
/// bytes at a time (attribute keys and values are a dozen bytes: a loop over bytes, vector
/// or not, took ~4 % of ingest CPU).
#[inline]
fn needs_escape(s: &[u8]) -> bool {
    let mut rest = s;
    while let Some((word, next)) = rest.split_first_chunk::<8>() {
        if word_needs_escape(u64::from_le_bytes(*word)) {
            return true;
        }
        rest = next;
    }
    match s.last_chunk::<8>() {
        // The last eight bytes, some checked already, cover the rest.
        Some(last) if !rest.is_empty() => word_needs_escape(u64::from_le_bytes(*last)),
        _ => rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\'),
    }
}

/// Whether any byte of `word` is below 0x20, `"` or `\` (the exact tests of "has a byte
/// less than n" and "has a zero byte", one subtraction each).
#[inline]
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    control | zero_byte(word ^ (ONES * u64::from(b'"'))) | zero_byte(word ^ (ONES * u64::from(b'\\'))) != 0
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) | Value::Bytes(s) => write_str(out, s),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => {
            let _ = serde_json::to_writer(&mut *out, i);
        }
        Value::Double(d) if d.is_finite() => {
            let _ = serde_json::to_writer(&mut *out, d);
        }
        Value::Double(_) => out.extend_from_slice(b"null"),
        Value::Json(s) => {
            if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() {
                out.extend_from_slice(s.as_bytes());
            } else {
                write_str(out, s);
            }
        }
    }
}

/// The attributes of a JSON object written by [`write_attributes`], in order. Text that is
/// not such an object gives no attributes.
pub fn read_attributes(text: &str) -> Attributes {
    serde_json::from_str::<Ordered>(text).map(|o| o.0).unwrap_or_default()
}

/// A JSON value back as an attribute value: strings, booleans, integers and doubles as
/// themselves, arrays and maps as JSON text.
pub fn value_of(json: serde_json::Value) -> Option<Value> {
    Some(match json {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Double(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::Str(s.into()),
        other => Value::Json(other.to_string().into()),
    })
}

/// A JSON object's members in document order.
struct Ordered(Attributes);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<std::borrow::Cow<'de, str>, serde_json::Value>()? {
                    if let Some(value) = value_of(value) {
                        out.push((crate::model::key(&key), value));
                    }
                }
                Ok(Ordered(out))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_check_finds_every_byte_json_escapes_and_no_other() {
        let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        // Each byte, at each position of texts of 1 to 24 bytes around it.
        for b in 0..=255u8 {
            for len in 1..=24 {
                for at in 0..len {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    assert_eq!(needs_escape(&text), escaped(b), "byte {b:#x} at {at} of {len}");
                    // Next to bytes just past the tested ranges, and UTF-8.
                    let mut mixed: Vec<u8> = (0..len).map(|i| [0x20, b'#', b']', 0xc3, 0xa9, 0x7f][i % 6]).collect();
                    mixed[at] = b;
                    assert_eq!(needs_escape(&mixed), escaped(b), "byte {b:#x} at {at} of {len}, mixed");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("ünïcödé text".as_bytes()));
    }

    #[test]
    fn attributes_round_trip_in_order_with_their_types() {
        let attributes: Attributes = vec![
            ("z.first".into(), Value::Str("a \"quoted\" <b>".into())),
            ("count".into(), Value::Int(-42)),
            ("ratio".into(), Value::Double(0.25)),
            ("whole".into(), Value::Double(2.0)),
            ("ok".into(), Value::Bool(true)),
            ("list".into(), Value::Json("[1,\"x\"]".into())),
            ("count".into(), Value::Int(7)),
            ("skipped".into(), Value::Str("gone".into())),
        ];
        let mut out = Vec::new();
        write_attributes(&mut out, &attributes, |_, k, _| k == "skipped");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text, r#"{"z.first":"a \"quoted\" <b>","count":-42,"ratio":0.25,"whole":2.0,"ok":true,"list":[1,"x"]}"#);
        let back = read_attributes(&text);
        assert_eq!(back, attributes[..6].to_vec(), "same keys, order and types; the repeated key and the skipped one are gone");
        assert!(read_attributes("not json").is_empty());
        assert!(read_attributes("[1]").is_empty());
    }

    #[test]
    fn unusual_values_stay_valid_json() {
        let attributes: Attributes =
            vec![("nan".into(), Value::Double(f64::NAN)), ("broken".into(), Value::Json("[1,".into())), ("b".into(), Value::Bytes("00ff".into()))];
        let mut out = Vec::new();
        write_attributes(&mut out, &attributes, |_, _, _| false);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{text}");
        assert_eq!(text, r#"{"nan":null,"broken":"[1,","b":"00ff"}"#);
    }

    #[test]
    fn sorted_attributes_drop_repeated_keys_and_escape_what_needs_it() {
        let attributes: Attributes = vec![
            ("a".into(), Value::Str("x\ty".into())),
            ("a".into(), Value::Str("second".into())),
            ("b".into(), Value::Str("é\u{1}\\".into())),
            ("c".into(), Value::Str("plain é".into())),
        ];
        let mut out = Vec::new();
        write_attributes(&mut out, &attributes, |_, _, _| false);
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text, r#"{"a":"x\ty","b":"é\u0001\\","c":"plain é"}"#);
        assert_eq!(read_attributes(&text), vec![attributes[0].clone(), attributes[2].clone(), attributes[3].clone()]);
    }
}
