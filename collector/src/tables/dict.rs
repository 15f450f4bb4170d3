//! The builder of the tables' dictionary columns (service, operation, resource, scope…). It
//! writes what Arrow's string dictionary builder writes, and remembers the key of the value it
//! wrote last: the spans of one resource come one after another and repeat its service,
//! resource and scope, which then cost a comparison instead of a hash lookup. Values are
//! found by their hash and told apart by comparing their text where the values are kept, so
//! no second copy of each value is kept for the lookup.

use std::{
    any::Any,
    collections::{HashMap, hash_map::Entry},
    hash::BuildHasherDefault,
    sync::Arc,
};

use datafusion::arrow::{
    array::{ArrayBuilder, ArrayRef, DictionaryArray, Int32Array, Int32Builder, StringBuilder, new_null_array},
    datatypes::{DataType, Int32Type},
};

use super::columnar::with_headroom;
use crate::lookup::{Prehashed, same_text};

/// A string column with 32-bit dictionary keys.
#[derive(Debug)]
pub struct Dict {
    keys: Int32Builder,
    values: StringBuilder,
    /// The key of the first value with each hash.
    index: HashMap<u64, i32, BuildHasherDefault<Prehashed>>,
    /// Keys of values whose hash an earlier value has (64-bit hashes: next to never).
    collided: Vec<(u64, i32)>,
    hasher: ahash::RandomState,
    /// The key written last.
    last: Option<i32>,
}

impl Default for Dict {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Dict {
    /// An empty column.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty column with room for `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Int32Builder::with_capacity(rows),
            values: StringBuilder::with_capacity(256, 4096),
            index: HashMap::default(),
            collided: Vec::new(),
            hasher: ahash::RandomState::new(),
            last: None,
        }
    }

    /// An empty column with room for `like`'s rows (its distinct values are few).
    pub fn like(like: &Self) -> Self {
        Self::with_capacity(with_headroom(like.len()))
    }

    /// Appends `value`.
    pub fn append_value(&mut self, value: &str) {
        if let Some(key) = self.last
            && same_text(self.value(key), value.as_bytes())
        {
            self.keys.append_value(key);
            return;
        }
        self.append_hashed(self.hasher.hash_one(value), value);
    }

    /// Appends `value`, whose hash is `hash`.
    fn append_hashed(&mut self, hash: u64, value: &str) {
        let key = match self.find(hash, value) {
            Some(key) => key,
            None => {
                // More distinct values than 32-bit keys can name: the row is left empty.
                let Ok(key) = i32::try_from(self.values.len()) else {
                    self.keys.append_null();
                    return;
                };
                self.values.append_value(value);
                match self.index.entry(hash) {
                    Entry::Occupied(_) => self.collided.push((hash, key)),
                    Entry::Vacant(slot) => {
                        slot.insert(key);
                    }
                }
                key
            }
        };
        self.last = Some(key);
        self.keys.append_value(key);
    }

    /// The key of `value`, whose hash is `hash`, if it was written before.
    fn find(&self, hash: u64, value: &str) -> Option<i32> {
        let is_value = |key: i32| same_text(self.value(key), value.as_bytes());
        match self.index.get(&hash) {
            Some(&key) if is_value(key) => Some(key),
            Some(_) => self.collided.iter().find(|&&(h, key)| h == hash && is_value(key)).map(|&(_, key)| key),
            None => None,
        }
    }

    /// Appends `value`, or a null.
    pub fn append_option(&mut self, value: Option<impl AsRef<str>>) {
        match value {
            Some(value) => self.append_value(value.as_ref()),
            None => self.append_null(),
        }
    }

    /// Appends a null.
    pub fn append_null(&mut self) {
        self.keys.append_null();
    }

    /// The text of `key`'s value.
    fn value(&self, key: i32) -> &[u8] {
        let (offsets, bytes) = (self.values.offsets_slice(), self.values.values_slice());
        let at = key as usize;
        &bytes[offsets[at] as usize..offsets[at + 1] as usize]
    }

    fn array(keys: Int32Array, values: ArrayRef) -> ArrayRef {
        let rows = keys.len();
        match DictionaryArray::<Int32Type>::try_new(keys, values) {
            Ok(array) => Arc::new(array),
            // Every key is one the values hold, so this does not happen; an empty column
            // is the answer if it did.
            Err(_) => new_null_array(&DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), rows),
        }
    }
}

impl ArrayBuilder for Dict {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn finish(&mut self) -> ArrayRef {
        self.index.clear();
        self.collided.clear();
        self.last = None;
        Self::array(self.keys.finish(), Arc::new(self.values.finish()))
    }

    fn finish_cloned(&self) -> ArrayRef {
        Self::array(self.keys.finish_cloned(), Arc::new(self.values.finish_cloned()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn into_box_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, StringArray, StringDictionaryBuilder};

    use super::*;

    fn texts(array: &ArrayRef) -> Vec<Option<String>> {
        let dict = array.as_dictionary::<Int32Type>();
        let values = dict.downcast_dict::<StringArray>().expect("string values");
        values.into_iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn writes_what_arrows_dictionary_builder_writes() {
        let rows = [Some("web"), Some("web"), None, Some("cart"), Some("web"), Some(""), Some(""), None, Some("cart")];
        let mut ours = Dict::new();
        let mut arrows = StringDictionaryBuilder::<Int32Type>::new();
        for row in rows {
            ours.append_option(row);
            arrows.append_option(row);
        }
        assert_eq!(ours.len(), rows.len());
        let cloned = ours.finish_cloned();
        let finished = ours.finish();
        let want: ArrayRef = Arc::new(arrows.finish());
        assert_eq!(finished.to_data(), want.to_data());
        assert_eq!(cloned.to_data(), want.to_data());
        assert_eq!(texts(&finished), rows.map(|r| r.map(str::to_string)));
    }

    #[test]
    fn values_whose_hashes_collide_keep_their_own_keys() {
        // Every value given one hash.
        let mut dict = Dict::new();
        for value in ["web", "cart", "web", "payments", "cart", "cart"] {
            dict.append_hashed(7, value);
        }
        assert_eq!((dict.index.len(), dict.collided.len()), (1, 2));
        assert_eq!(dict.find(7, "payments"), Some(2));
        assert_eq!(dict.find(7, "search"), None);
        let array = dict.finish();
        assert_eq!(array.as_dictionary::<Int32Type>().keys().values().to_vec(), [0, 1, 0, 2, 1, 1]);
        assert_eq!(texts(&array)[3].as_deref(), Some("payments"));
    }

    #[test]
    fn a_finished_column_starts_again_empty() {
        let mut dict = Dict::new();
        dict.append_value("web");
        dict.finish();
        assert_eq!(dict.len(), 0);
        dict.append_value("cart");
        dict.append_value("web");
        let array = dict.finish();
        assert_eq!(texts(&array), [Some("cart".to_string()), Some("web".to_string())]);
        assert_eq!(array.as_dictionary::<Int32Type>().values().len(), 2);
    }
}
