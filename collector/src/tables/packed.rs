//! Compact columns for sealed batches. Hex ID columns are kept as their bytes (16 or 8 a row
//! instead of 32 or 16 characters and an offset), large text columns (JSON attributes,
//! events, bodies) zstd-compressed in blocks of [`BLOCK_ROWS`] rows, and dictionary columns
//! with 16-bit keys. A query that reads
//! such a column gets the ordinary Arrow text array back ([`Stored::array`]); a row lookup
//! decompresses only the block that holds the row ([`PackedText::block`]). The spans' and
//! logs' attributes are packed block by block as rows are written ([`TextPacker`]), each
//! key written once per block: its rows hold a two-byte mark in its place.

use std::{
    borrow::Cow,
    cell::{OnceCell, RefCell},
    collections::HashMap,
    sync::Arc,
};

use datafusion::arrow::{
    array::{
        Array, ArrayBuilder, ArrayRef, AsArray, DictionaryArray, FixedSizeBinaryArray, Int16Array, Int32Array, Int64Array,
        PrimitiveArray, StringArray, UInt32Array,
    },
    compute::{cast, take},
    buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer},
    datatypes::{ArrowDictionaryKeyType, DataType, Int8Type, Int16Type, Int32Type, Int64Type},
    error::ArrowError,
};

use meshlens_common::hex;

use super::schema::Storage;
use crate::model::{Attributes, Key, Value};

/// Rows per compressed block.
pub const BLOCK_ROWS: usize = 1024;

/// zstd's fastest regular level: sealing must not slow ingest much.
const LEVEL: i32 = 1;

thread_local! {
    /// A compression context per thread, kept: making one for each column of each sealed
    /// batch allocated and faulted in its tables every time.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// Marks a null row in a block's length list.
const NULL: u32 = u32::MAX;

/// Stands for an attribute key in the rows of a block written by
/// [`TextPacker::append_attributes`]: the byte after it is the key's place in the block's
/// key table, whose entry is the member's start (`"key":`). JSON text never holds this byte
/// unescaped, so it marks nothing else.
const KEY_MARK: u8 = 0x01;

/// Keys a block's table holds at most: a place is one byte below 0x80, so that rows with
/// their marks are still ASCII-compatible UTF-8 and can be read without expanding them.
const MAX_BLOCK_KEYS: usize = 128;

/// One column of a sealed batch.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Kept as its Arrow array.
    Plain(ArrayRef),
    /// Hex IDs kept as bytes.
    Hex(FixedSizeBinaryArray),
    /// Text kept compressed.
    Text(Arc<PackedText>),
    /// A dictionary column with 16-bit keys (the schema's are 32-bit).
    SmallKeys(DictionaryArray<Int16Type>),
    /// A dictionary column of at most 128 values, with 8-bit keys.
    TinyKeys(DictionaryArray<Int8Type>),
    /// A 64-bit integer column whose values fit 16 or 32 bits, kept as such.
    SmallInts(ArrayRef),
}

impl Stored {
    /// Packs a finished column as `storage` says, when its values allow it (hex IDs must be
    /// lower-case hex of one length); otherwise keeps it as it is.
    pub fn pack(array: ArrayRef, storage: Storage) -> Self {
        let packed = match storage {
            Storage::Plain => None,
            Storage::HexBytes => match array.as_fixed_size_binary_opt() {
                // Written as bytes: copied to their exact size (a builder's buffer has room
                // to spare).
                Some(bytes) => exact_bytes(bytes).map(Self::Hex),
                None => array.as_string_opt::<i32>().and_then(hex_bytes).map(Self::Hex),
            },
            Storage::Compressed => array.as_string_opt::<i32>().and_then(PackedText::pack).map(|p| Self::Text(Arc::new(p))),
            Storage::SmallKeys => array.as_dictionary_opt::<Int32Type>().and_then(narrow_keys),
            Storage::SmallInts => array.as_primitive_opt::<Int64Type>().and_then(narrow_ints).map(Self::SmallInts),
        };
        // Kept as it is: as sealing leaves it to the packing, copied to its exact size.
        packed.unwrap_or_else(|| Self::Plain(if storage == Storage::Plain { array } else { exact(array) }))
    }

    /// The column as its schema's Arrow type.
    pub fn array(&self) -> Result<ArrayRef, ArrowError> {
        match self {
            Self::Plain(array) => Ok(array.clone()),
            Self::Hex(bytes) => Ok(Arc::new(hex_text(bytes)?)),
            Self::Text(text) => Ok(Arc::new(text.unpack()?)),
            Self::SmallKeys(dict) => widen_keys(dict),
            Self::TinyKeys(dict) => widen_keys(dict),
            Self::SmallInts(ints) => cast(ints, &DataType::Int64),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Plain(array) => array.get_array_memory_size(),
            Self::Hex(bytes) => bytes.get_array_memory_size(),
            Self::Text(text) => text.bytes(),
            Self::SmallKeys(dict) => dict.get_array_memory_size(),
            Self::TinyKeys(dict) => dict.get_array_memory_size(),
            Self::SmallInts(ints) => ints.get_array_memory_size(),
        }
    }
}

/// `array` copied into buffers of its size: a builder's have room to spare, which a sealed
/// batch would keep.
pub fn exact(array: ArrayRef) -> ArrayRef {
    let Ok(rows) = u32::try_from(array.len()) else { return array };
    take(&array, &UInt32Array::from_iter_values(0..rows), None).unwrap_or(array)
}

/// A 32-bit-keyed dictionary column with 8-bit keys when its dictionary fits them, else
/// 16-bit keys when it fits those (a sealed batch rarely has more than a few distinct values
/// in a column: a key is most of what such a column stores per row).
fn narrow_keys(dict: &DictionaryArray<Int32Type>) -> Option<Stored> {
    // The values are copied into buffers of their size: a builder's are ~5 KiB however few
    // its values, which across a dozen columns was ~8 bytes per stored span.
    let rows = UInt32Array::from_iter_values(0..u32::try_from(dict.values().len()).ok()?);
    let values = take(dict.values(), &rows, None).ok()?;
    match with_keys::<Int8Type>(dict, &values) {
        Some(tiny) => Some(Stored::TinyKeys(tiny)),
        None => with_keys::<Int16Type>(dict, &values).map(Stored::SmallKeys),
    }
}

/// `dict`'s keys as `K`, over `values`; `None` if a key does not fit `K`.
fn with_keys<K>(dict: &DictionaryArray<Int32Type>, values: &ArrayRef) -> Option<DictionaryArray<K>>
where
    K: ArrowDictionaryKeyType,
    K::Native: TryFrom<i32>,
{
    let keys: PrimitiveArray<K> = dict.keys().unary_opt(|k| K::Native::try_from(k).ok());
    (keys.null_count() == dict.keys().null_count()).then_some(())?;
    DictionaryArray::try_new(keys, values.clone()).ok()
}

/// The schema's 32-bit-keyed form of a dictionary column kept with narrower keys.
fn widen_keys<K: ArrowDictionaryKeyType>(dict: &DictionaryArray<K>) -> Result<ArrayRef, ArrowError> {
    cast(dict, &DataType::Dictionary(Box::new(DataType::Int32), Box::new(dict.values().data_type().clone())))
}

/// A 64-bit integer column as 16- or 32-bit integers, when every value fits (durations
/// under two seconds in nanoseconds, status codes); `None` otherwise.
fn narrow_ints(ints: &Int64Array) -> Option<ArrayRef> {
    let valid = |i: usize| ints.is_valid(i).then(|| ints.value(i));
    let (min, max) = (0..ints.len()).filter_map(valid).fold((0, 0), |(lo, hi), v| (v.min(lo), v.max(hi)));
    if i16::try_from(min).is_ok() && i16::try_from(max).is_ok() {
        let narrow: Int16Array = ints.unary(|v| i16::try_from(v).unwrap_or_default());
        Some(Arc::new(narrow))
    } else if i32::try_from(min).is_ok() && i32::try_from(max).is_ok() {
        let narrow: Int32Array = ints.unary(|v| i32::try_from(v).unwrap_or_default());
        Some(Arc::new(narrow))
    } else {
        None
    }
}

/// The bytes of a column of lower-case hex IDs of one length; `None` if it has another
/// value (or only nulls).
fn hex_bytes(text: &StringArray) -> Option<FixedSizeBinaryArray> {
    let width = text.iter().flatten().next()?.len();
    if width == 0 || width % 2 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len() * width / 2);
    for row in 0..text.len() {
        if text.is_null(row) {
            bytes.resize(bytes.len() + width / 2, 0);
            continue;
        }
        let digits = text.value(row).as_bytes();
        if digits.len() != width {
            return None;
        }
        for pair in digits.chunks_exact(2) {
            bytes.push(hex::decode_lower::<1>(pair)?[0]);
        }
    }
    FixedSizeBinaryArray::try_new(i32::try_from(width / 2).ok()?, Buffer::from_vec(bytes), text.nulls().cloned()).ok()
}

/// `bytes` in buffers of their size.
fn exact_bytes(bytes: &FixedSizeBinaryArray) -> Option<FixedSizeBinaryArray> {
    let nulls = bytes.nulls().map(|n| {
        NullBuffer::new(BooleanBuffer::new(Buffer::from_slice_ref(n.inner().inner().as_slice()), n.offset(), n.len()))
    });
    FixedSizeBinaryArray::try_new(bytes.value_length(), Buffer::from_slice_ref(bytes.value_data()), nulls).ok()
}

/// The hex text of a column of IDs.
fn hex_text(bytes: &FixedSizeBinaryArray) -> Result<StringArray, ArrowError> {
    let width = usize::try_from(bytes.value_length()).unwrap_or(0) * 2;
    let mut text = vec![0u8; bytes.values().len() * 2];
    hex::encode_into(bytes.values(), &mut text);
    let offsets = (0..=bytes.len()).map(|i| i32::try_from(i * width)).collect::<Result<Vec<i32>, _>>();
    let offsets = offsets.map_err(|_| ArrowError::ComputeError("an ID column over 2 GiB".into()))?;
    StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(text), bytes.nulls().cloned())
}

/// A text column compressed in blocks of [`BLOCK_ROWS`] rows. A block, before
/// compression, is the rows' byte lengths (little-endian `u32`, `u32::MAX` for null)
/// followed by their text, in which `KEY_MARK`s stand for the entries of the block's key
/// table, if it has one.
#[derive(Debug, Clone, Default)]
pub struct PackedText {
    rows: usize,
    nulls: usize,
    blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
struct Block {
    /// Its size before compression.
    raw: usize,
    /// zstd's frame, or the block itself when compressing it failed.
    data: Box<[u8]>,
    compressed: bool,
    /// The key table: each entry's length (one byte), then its text; empty when the rows
    /// hold no [`KEY_MARK`]s.
    keys: Box<[u8]>,
}

impl Block {
    /// `raw` compressed with this thread's context (kept as it is if that fails).
    fn compress(raw: &[u8], keys: &[u8]) -> Self {
        let data = COMPRESSOR.with(|cell| {
            let mut compressor = cell.borrow_mut();
            if compressor.is_none() {
                *compressor = zstd::bulk::Compressor::new(LEVEL).ok();
            }
            compressor.as_mut()?.compress(raw).ok()
        });
        match data {
            Some(data) => Self { raw: raw.len(), data: data.into_boxed_slice(), compressed: true, keys: keys.into() },
            None => Self::stored(raw, keys),
        }
    }

    /// `raw` kept as it is.
    fn stored(raw: &[u8], keys: &[u8]) -> Self {
        Self { raw: raw.len(), data: raw.into(), compressed: false, keys: keys.into() }
    }

    /// The entries of the key table.
    fn key_table(&self) -> Result<Vec<&str>, ArrowError> {
        let mut table = Vec::new();
        let mut rest = &self.keys[..];
        while let [len, tail @ ..] = rest {
            let (entry, next) = tail.split_at_checked(usize::from(*len)).ok_or_else(|| corrupt("short key table"))?;
            table.push(std::str::from_utf8(entry).map_err(|_| corrupt("a key is not UTF-8"))?);
            rest = next;
        }
        Ok(table)
    }

    /// The block as it was before compression.
    fn raw(&self) -> Result<Vec<u8>, ArrowError> {
        if !self.compressed {
            return Ok(self.data.to_vec());
        }
        zstd::bulk::decompress(&self.data, self.raw).map_err(|e| corrupt(&e.to_string()))
    }
}

fn corrupt(what: &str) -> ArrowError {
    ArrowError::ComputeError(format!("a compressed column block is damaged: {what}"))
}

/// `row` with each [`KEY_MARK`] and the place after it replaced by that entry of `keys`;
/// borrowed when it has no marks.
fn expand_row<'r>(row: &'r str, keys: &[&str]) -> Result<Cow<'r, str>, ArrowError> {
    if !row.as_bytes().contains(&KEY_MARK) {
        return Ok(Cow::Borrowed(row));
    }
    let mut out = String::with_capacity(row.len() * 3);
    expand_into(row, keys, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Appends `row` to `out` with its key marks replaced (see [`expand_row`]).
fn expand_into(row: &str, keys: &[&str], out: &mut String) -> Result<(), ArrowError> {
    let mut rest = row;
    while let Some(mark) = rest.bytes().position(|b| b == KEY_MARK) {
        out.push_str(&rest[..mark]);
        // A place is below 0x80: one ASCII byte, so slicing after it keeps to characters.
        let place = rest.as_bytes().get(mark + 1).filter(|p| p.is_ascii()).ok_or_else(|| corrupt("a key mark ends a row"))?;
        out.push_str(keys.get(usize::from(*place)).ok_or_else(|| corrupt("a key mark past the key table"))?);
        rest = &rest[mark + 2..];
    }
    out.push_str(rest);
    Ok(())
}

impl PackedText {
    /// Compresses a text column; `None` if compression fails (the column is then kept as is).
    pub fn pack(text: &StringArray) -> Option<Self> {
        let mut blocks = Vec::with_capacity(text.len().div_ceil(BLOCK_ROWS));
        let mut raw = Vec::new();
        let offsets = text.value_offsets();
        let values = text.values().as_slice();
        for start in (0..text.len()).step_by(BLOCK_ROWS) {
            let end = (start + BLOCK_ROWS).min(text.len());
            raw.clear();
            for row in start..end {
                let len = if text.is_null(row) { NULL } else { u32::try_from(offsets[row + 1] - offsets[row]).ok()? };
                raw.extend_from_slice(&len.to_le_bytes());
            }
            for row in start..end {
                if text.is_valid(row) {
                    let (from, to) = (usize::try_from(offsets[row]).ok()?, usize::try_from(offsets[row + 1]).ok()?);
                    raw.extend_from_slice(values.get(from..to)?);
                }
            }
            blocks.push(Block::compress(&raw, &[]));
        }
        Some(Self { rows: text.len(), nulls: text.null_count(), blocks })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Null rows.
    pub fn null_count(&self) -> usize {
        self.nulls
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.blocks.iter().map(|b| b.data.len() + b.keys.len() + std::mem::size_of::<Block>()).sum::<usize>()
    }

    /// The rows of block `index` (rows `index * BLOCK_ROWS ..`), their keys in place.
    pub fn block(&self, index: usize) -> Result<StringArray, ArrowError> {
        let stored = self.stored_rows(index)?;
        if stored.keys.is_empty() {
            return Ok(stored.rows);
        }
        let rows = &stored.rows;
        let mut text = String::with_capacity(rows.values().len() * 3);
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        offsets.push(0i32);
        for row in 0..rows.len() {
            if rows.is_valid(row) {
                expand_into(rows.value(row), &stored.keys, &mut text)?;
            }
            offsets.push(i32::try_from(text.len()).map_err(|_| corrupt("a block over 2 GiB"))?);
        }
        StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(text.into_bytes()), rows.nulls().cloned())
    }

    /// The rows of block `index` as stored, key marks and all, with its key table.
    fn stored_rows(&self, index: usize) -> Result<StoredRows<'_>, ArrowError> {
        let block = self.blocks.get(index).ok_or_else(|| corrupt("no such block"))?;
        let raw = block.raw()?;
        let rows = (self.rows - index * BLOCK_ROWS).min(BLOCK_ROWS);
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut valid = Vec::with_capacity(rows);
        offsets.push(0i32);
        let mut at = 0i32;
        for row in 0..rows {
            let len = raw.get(row * 4..row * 4 + 4).ok_or_else(|| corrupt("short length list"))?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            valid.push(len != NULL);
            if len != NULL {
                at = i32::try_from(len).ok().and_then(|l| at.checked_add(l)).ok_or_else(|| corrupt("lengths overflow"))?;
            }
            offsets.push(at);
        }
        let header = rows * 4;
        if raw.len() != header + usize::try_from(at).unwrap_or(usize::MAX) {
            return Err(corrupt("lengths do not match the text"));
        }
        let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
        let values = Buffer::from_vec(raw).slice(header);
        let rows = StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), values, nulls)?;
        Ok(StoredRows { rows, keys: block.key_table()? })
    }

    /// The whole column.
    pub fn unpack(&self) -> Result<StringArray, ArrowError> {
        let mut values = Vec::with_capacity(self.blocks.iter().map(|b| b.raw).sum());
        let mut offsets = Vec::with_capacity(self.rows + 1);
        let mut valid = Vec::with_capacity(self.rows);
        offsets.push(0i32);
        for index in 0..self.blocks.len() {
            let block = self.block(index)?;
            let base = i32::try_from(values.len()).map_err(|_| corrupt("a text column over 2 GiB"))?;
            values.extend_from_slice(block.values().as_slice());
            let first = block.value_offsets()[0];
            for end in &block.value_offsets()[1..] {
                offsets.push(base + (end - first));
            }
            valid.extend((0..block.len()).map(|row| block.is_valid(row)));
        }
        let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
        StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(values), nulls)
    }
}

/// A block's rows as stored (key marks in them) and its key table.
#[derive(Debug)]
pub struct StoredRows<'a> {
    rows: StringArray,
    keys: Vec<&'a str>,
}

impl StoredRows<'_> {
    /// Row `i` of the block, its keys in place (`None` when null, past the end or damaged).
    fn get(&self, i: usize) -> Option<Cow<'_, str>> {
        if i >= self.rows.len() || self.rows.is_null(i) {
            return None;
        }
        expand_row(self.rows.value(i), &self.keys).map_err(|error| tracing::error!(%error, "a stored row cannot be read")).ok()
    }
}

/// A text column written straight into its packed form. A row's text is written into the
/// open block's buffer behind a slot for each row's length; every [`BLOCK_ROWS`] rows the
/// buffer is compressed as it stands and reused. A batch's text never sits whole and
/// uncompressed in a builder of megabytes, faulted in page by page for every batch and
/// copied again to be compressed at the seal (~5 % of ingest CPU, `meshlens bench ingest`).
#[derive(Debug, Clone)]
pub struct TextPacker {
    packed: PackedText,
    /// The open block: [`BLOCK_ROWS`] length slots, then its rows' text.
    open: Vec<u8>,
    /// Rows in the open block.
    open_rows: usize,
    /// The open block's key table.
    keys: BlockKeys,
}

impl Default for TextPacker {
    fn default() -> Self {
        Self { packed: PackedText::default(), open: vec![0; BLOCK_ROWS * 4], open_rows: 0, keys: BlockKeys::default() }
    }
}

/// The key table of a block being written, with each key's place by the key's address
/// (keys are shared, so a key is nearly always at the same place). The keys are held until
/// the block closes, so no other key takes an address while it is known. A key whose member
/// start is longer than 255 bytes, and keys past [`MAX_BLOCK_KEYS`], are written out in full.
#[derive(Debug, Clone, Default)]
struct BlockKeys {
    /// Each held key's place, `None` for a key written in full.
    places: HashMap<usize, Option<u8>, ahash::RandomState>,
    /// The table as a block stores it.
    table: Vec<u8>,
    /// Entries in `table`.
    entries: u8,
    held: Vec<Key>,
    /// The last row's keys by position, `(address, place)` (rows of one shape repeat their
    /// keys in order, so most are found here without hashing).
    recent: Vec<(usize, Option<u8>)>,
}

impl BlockKeys {
    /// The place of the key of a row's `n`th member in the table, entered if new; `None` to
    /// write the key in full.
    fn place_at(&mut self, n: usize, key: &Key) -> Option<u8> {
        let address = key.address();
        if let Some(&(recent, place)) = self.recent.get(n)
            && recent == address
        {
            return place;
        }
        let place = match self.places.get(&address) {
            Some(&place) => place,
            None if self.held.len() < MAX_BLOCK_KEYS => self.enter(address, key),
            None => None,
        };
        if n < self.recent.len() {
            self.recent[n] = (address, place);
        } else if n == self.recent.len() && n < MAX_BLOCK_KEYS {
            self.recent.push((address, place));
        }
        place
    }

    /// Enters a new key: its member start goes into the table if it fits.
    fn enter(&mut self, address: usize, key: &Key) -> Option<u8> {
        self.held.push(key.clone());
        let start = self.table.len();
        self.table.push(0);
        super::json::write_key(&mut self.table, key);
        let place = match u8::try_from(self.table.len() - start - 1) {
            Ok(len) => {
                self.table[start] = len;
                self.entries += 1;
                Some(self.entries - 1)
            }
            Err(_) => {
                self.table.truncate(start);
                None
            }
        };
        self.places.insert(address, place);
        place
    }

    fn clear(&mut self) {
        self.places.clear();
        self.table.clear();
        self.entries = 0;
        self.held.clear();
        // Addresses are told apart only while their keys are held.
        self.recent.clear();
    }
}

impl TextPacker {
    /// An empty packer whose open block has room for as much text as `like`'s (a batch's
    /// first block grew its buffer by doubling, copying and faulting in each size).
    pub fn like(like: &Self) -> Self {
        let mut open = Vec::with_capacity(like.open.capacity());
        open.resize(BLOCK_ROWS * 4, 0);
        Self { packed: PackedText::default(), open, open_rows: 0, keys: BlockKeys::default() }
    }

    /// Appends a row whose text `write` writes (it may only append). Text of 4 GiB or more
    /// (no export request is that large) is kept as an empty row.
    pub fn append_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.open.len();
        write(&mut self.open);
        self.end_written(start);
    }

    /// Appends `attributes` as a JSON object ([`write_attributes`](super::json::write_attributes),
    /// leaving out what `skip` accepts), each key as a mark for its entry in the block's key
    /// table. Rows of attributes repeat their keys: here the keys are written and escaped
    /// once a block, and compressing the block reads less than half the bytes.
    pub fn append_attributes(&mut self, attributes: &Attributes, skip: impl Fn(usize, &str, &Value) -> bool) {
        let start = self.open.len();
        let keys = &mut self.keys;
        let mut n = 0;
        super::json::write_attributes_keyed(&mut self.open, attributes, skip, |out, key| {
            match keys.place_at(n, key) {
                Some(place) => out.extend_from_slice(&[KEY_MARK, place]),
                None => super::json::write_key(out, key),
            }
            n += 1;
        });
        self.end_written(start);
    }

    /// Ends the row written since `start`.
    fn end_written(&mut self, start: usize) {
        let len = u32::try_from(self.open.len() - start).ok().filter(|&len| len != NULL).unwrap_or_else(|| {
            self.open.truncate(start);
            0
        });
        self.end_row(len);
    }

    /// Appends a row.
    pub fn append_option(&mut self, value: Option<&str>) {
        match value {
            Some(text) => self.append_with(|out| out.extend_from_slice(text.as_bytes())),
            None => {
                self.packed.nulls += 1;
                self.end_row(NULL);
            }
        }
    }

    fn end_row(&mut self, len: u32) {
        let slot = self.open_rows * 4;
        self.open[slot..slot + 4].copy_from_slice(&len.to_le_bytes());
        self.open_rows += 1;
        if self.open_rows == BLOCK_ROWS {
            self.close_block();
        }
    }

    /// Packs the open block (its unused length slots dropped) and empties its buffer.
    fn close_block(&mut self) {
        if self.open_rows == 0 {
            return;
        }
        self.open.drain(self.open_rows * 4..BLOCK_ROWS * 4);
        self.packed.blocks.push(Block::compress(&self.open, &self.keys.table));
        self.packed.rows += self.open_rows;
        self.empty_open_block();
    }

    fn empty_open_block(&mut self) {
        self.open.clear();
        self.open.resize(BLOCK_ROWS * 4, 0);
        self.open_rows = 0;
        self.keys.clear();
    }

    /// The rows so far, packed; the packer starts again empty (keeping its buffer).
    pub fn finish(&mut self) -> PackedText {
        self.close_block();
        std::mem::take(&mut self.packed)
    }

    /// A copy of the rows so far, packed: the closed blocks as they are, the open block
    /// stored uncompressed (a reader decompresses only the blocks it reads).
    pub fn snapshot(&self) -> PackedText {
        let mut packed = self.packed.clone();
        if self.open_rows > 0 {
            let mut raw = self.open[..self.open_rows * 4].to_vec();
            raw.extend_from_slice(&self.open[BLOCK_ROWS * 4..]);
            packed.blocks.push(Block::stored(&raw, &self.keys.table));
            packed.rows += self.open_rows;
        }
        packed
    }

    /// The rows so far as text (the open block is read as it is, not compressed first).
    fn text(&self) -> StringArray {
        let packed = self.snapshot();
        packed.unpack().unwrap_or_else(|error| {
            tracing::error!(%error, "packed rows cannot be read");
            StringArray::new_null(packed.rows)
        })
    }
}

impl ArrayBuilder for TextPacker {
    fn len(&self) -> usize {
        self.packed.rows + self.open_rows
    }

    fn finish(&mut self) -> ArrayRef {
        let text = self.text();
        self.packed = PackedText::default();
        self.empty_open_block();
        Arc::new(text)
    }

    fn finish_cloned(&self) -> ArrayRef {
        Arc::new(self.text())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn into_box_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// A text column of a sealed batch, read row by row: a packed block is decompressed the
/// first time one of its rows is read, and kept while the reader lives.
#[derive(Debug)]
pub enum TextColumn<'a> {
    /// Kept as text.
    Plain(&'a StringArray),
    /// Kept compressed.
    Packed {
        /// The column.
        text: &'a PackedText,
        /// Its blocks as stored, once read (`None` when damaged): a row's keys are put back
        /// in place when it is read, not the whole block's.
        blocks: Box<[OnceCell<Option<StoredRows<'a>>>]>,
    },
}

impl<'a> TextColumn<'a> {
    /// A reader of a stored text column; `None` if it is not text.
    pub fn new(stored: &'a Stored) -> Option<Self> {
        match stored {
            Stored::Plain(array) => array.as_string_opt::<i32>().map(Self::Plain),
            Stored::Text(text) => Some(Self::Packed { text, blocks: (0..text.blocks.len()).map(|_| OnceCell::new()).collect() }),
            Stored::Hex(_) | Stored::SmallKeys(_) | Stored::TinyKeys(_) | Stored::SmallInts(_) => None,
        }
    }

    /// Row `row`'s value (`None` when null, or unreadable). A column of nulls only is not
    /// read at all.
    pub fn get(&self, row: usize) -> Option<Cow<'_, str>> {
        match self {
            Self::Plain(array) => (row < array.len() && array.is_valid(row)).then(|| Cow::Borrowed(array.value(row))),
            Self::Packed { text, .. } if text.nulls == text.rows => None,
            Self::Packed { text, blocks } => blocks
                .get(row / BLOCK_ROWS)?
                .get_or_init(|| {
                    text.stored_rows(row / BLOCK_ROWS).map_err(|error| tracing::error!(%error, "stored rows cannot be read")).ok()
                })
                .as_ref()?
                .get(row % BLOCK_ROWS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_through_blocks_with_nulls() {
        let rows: Vec<Option<String>> =
            (0..2500).map(|i| (i % 7 != 3).then(|| if i % 11 == 0 { String::new() } else { format!("{{\"k\":\"v-{i}\"}}") })).collect();
        let text = StringArray::from(rows.clone());
        let packed = PackedText::pack(&text).expect("packs");
        assert_eq!(packed.blocks.len(), 3);
        assert!(packed.bytes() < text.get_array_memory_size() / 3, "{} vs {}", packed.bytes(), text.get_array_memory_size());
        assert_eq!(packed.unpack().expect("unpacks"), text);
        let stored = Stored::Text(Arc::new(packed));
        let reader = TextColumn::new(&stored).expect("text");
        for row in [0, 3, 1023, 1024, 2499, 11] {
            assert_eq!(reader.get(row).as_deref(), rows[row].as_deref(), "row {row}");
        }
        assert_eq!(reader.get(2500), None, "past the end");
        let nulls = Stored::Text(Arc::new(PackedText::pack(&StringArray::new_null(2500)).expect("packs")));
        let reader = TextColumn::new(&nulls).expect("text");
        assert_eq!((reader.get(0), reader.get(2499)), (None, None));
        let TextColumn::Packed { blocks, .. } = &reader else { panic!("packed") };
        assert!(blocks.iter().all(|b| b.get().is_none()), "no block read");
        let sliced = text.slice(5, 1500);
        assert_eq!(PackedText::pack(&sliced).expect("packs").unpack().expect("unpacks"), sliced, "offsets not from zero");
    }

    #[test]
    fn text_packed_as_written_is_the_text_packed_at_once() {
        // Rows across three blocks (the last one partial), nulls and empty rows; read before
        // the end (the open rows of a batch), at the end, and again after starting over.
        let rows: Vec<Option<String>> =
            (0..2500).map(|i| (i % 7 != 3).then(|| if i % 11 == 0 { String::new() } else { format!("{{\"k\":\"v-{i}\"}}") })).collect();
        let mut packer = TextPacker::default();
        for (i, row) in rows.iter().enumerate() {
            if i == 1500 {
                let so_far = packer.finish_cloned();
                assert_eq!(so_far.as_string::<i32>(), &StringArray::from(rows[..1500].to_vec()), "the open rows");
            }
            match row {
                Some(text) if i % 2 == 0 => packer.append_with(|out| out.extend_from_slice(text.as_bytes())),
                row => packer.append_option(row.as_deref()),
            }
        }
        assert_eq!(ArrayBuilder::len(&packer), 2500);
        let text = StringArray::from(rows.clone());
        let packed = packer.finish();
        let at_once = PackedText::pack(&text).expect("packs");
        assert_eq!((packed.len(), packed.null_count(), packed.blocks.len()), (2500, text.null_count(), 3));
        for (a, b) in packed.blocks.iter().zip(&at_once.blocks) {
            assert_eq!(a.raw().expect("raw"), b.raw().expect("raw"), "the same block layout");
        }
        assert_eq!(packed.unpack().expect("unpacks"), text);
        assert_eq!(ArrayBuilder::len(&packer), 0, "empty after finishing");
        packer.append_option(Some("again"));
        assert_eq!(packer.finish().unpack().expect("unpacks"), StringArray::from(vec!["again"]));
        for row in &rows {
            packer.append_option(row.as_deref());
        }
        assert_eq!(ArrayBuilder::finish(&mut packer).as_string::<i32>(), &text, "finished as an Arrow array");
        assert_eq!(ArrayBuilder::len(&packer), 0);

        // The next batch's packer starts with the room this one grew to, and packs alike.
        let mut next = TextPacker::like(&packer);
        assert!(next.open.capacity() >= packer.open.capacity() && next.open.capacity() >= 2 * BLOCK_ROWS * 4);
        for row in &rows {
            next.append_option(row.as_deref());
        }
        assert_eq!(next.finish().unpack().expect("unpacks"), text);
    }

    #[test]
    fn attributes_packed_with_key_marks_read_back_as_their_json() {
        use crate::model::{Key, key};
        // Keys that repeat (kept, and once as an `Arc` of the same text), a key to
        // escape, a key too long for the table, 300 distinct keys in one block (past the
        // table's 128), a value holding the mark byte, and rows with nothing left.
        let long = "k".repeat(300);
        let row = |i: usize| -> Attributes {
            let mut a: Attributes = vec![
                (key("http.route"), Value::Str(format!("/items/{i}").into())),
                (key("a \"quoted\" key"), Value::Int(i as i64)),
                (key(&long), Value::Bool(i.is_multiple_of(2))),
                (Key::Shared(Arc::new(Box::from("http.route"))), Value::Str("a second of the same key".into())),
                (key("mark"), Value::Str("\u{1}\u{1}x".into())),
            ];
            if (1100..1400).contains(&i) {
                a.push((key(&format!("distinct.{i}")), Value::Double(0.5)));
            }
            a
        };
        let mut packer = TextPacker::default();
        let mut expected = Vec::new();
        for i in 0..2500 {
            if i == 1300 {
                let so_far = packer.finish_cloned();
                assert_eq!(so_far.as_string::<i32>(), &StringArray::from(expected.clone()), "the open rows");
            }
            if i % 13 == 0 {
                packer.append_option(None);
                expected.push(None);
            }
            let attributes = row(i);
            let skip = |_: usize, key: &str, _: &Value| i % 5 == 0 || (i % 3 == 0 && key == "mark");
            let mut json = Vec::new();
            super::super::json::write_attributes(&mut json, &attributes, skip);
            expected.push(Some(String::from_utf8(json).expect("utf-8")));
            packer.append_attributes(&attributes, skip);
        }
        let text = StringArray::from(expected.clone());
        let packed = packer.finish();
        assert_eq!(packed.len(), text.len());
        assert!(packed.blocks.iter().all(|b| !b.keys.is_empty()), "every block has its key table");
        let written: usize = expected.iter().map(|r| 4 + r.as_ref().map_or(0, String::len)).sum();
        let raw: usize = packed.blocks.iter().map(|b| b.raw).sum();
        assert!(raw + 2500 * 20 < written, "keys are written once a block, not once a row: {raw} of {written} bytes");
        assert_eq!(packed.unpack().expect("unpacks"), text);
        let stored = Stored::Text(Arc::new(packed.clone()));
        let reader = TextColumn::new(&stored).expect("text");
        for row in [0, 13, 14, 1023, 1024, 1200, 2499, text.len() - 1] {
            assert_eq!(reader.get(row).as_deref(), expected[row].as_deref(), "row {row}");
        }

        // A damaged table or mark is an error, not a panic.
        let mut damaged = packed.clone();
        damaged.blocks[0].keys = vec![200, b'x'].into_boxed_slice();
        assert!(damaged.unpack().is_err());
        let mut damaged = packed;
        damaged.blocks[1].keys = damaged.blocks[1].keys[..damaged.blocks[1].keys[0] as usize + 1].into();
        assert!(damaged.unpack().is_err(), "marks past a one-entry table");
        let stored = Stored::Text(Arc::new(damaged));
        let reader = TextColumn::new(&stored).expect("text");
        assert_eq!(reader.get(1100), None, "a damaged row reads as none");
        assert_eq!(reader.get(0).as_deref(), expected[0].as_deref(), "other blocks read on");
    }

    #[test]
    fn hex_ids_are_kept_as_bytes_and_read_back_as_hex() {
        let ids = StringArray::from(vec![Some("00ff10ab00000000"), None, Some("0123456789abcdef")]);
        let stored = Stored::pack(Arc::new(ids.clone()), Storage::HexBytes);
        assert!(matches!(stored, Stored::Hex(_)));
        assert_eq!(stored.array().expect("array").as_string::<i32>(), &ids);
        for odd in [vec![Some("ABCD")], vec![Some("abcd"), Some("ab")], vec![Some("xyz0")], vec![None]] {
            let text = StringArray::from(odd);
            assert!(matches!(Stored::pack(Arc::new(text), Storage::HexBytes), Stored::Plain(_)), "kept as text");
        }
    }

    /// A dictionary column of `n` distinct values (and a null).
    fn dictionary_of(n: usize) -> ArrayRef {
        let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let dict: DictionaryArray<Int32Type> = values.iter().map(|v| Some(v.as_str())).chain([None]).collect();
        Arc::new(dict)
    }

    #[test]
    fn dictionary_keys_narrow_as_far_as_their_values_allow_and_widen_back() {
        for (n, narrowed) in [(1, "8"), (128, "8"), (129, "16"), (32_768, "16"), (32_769, "32")] {
            let array = dictionary_of(n);
            let stored = Stored::pack(array.clone(), Storage::SmallKeys);
            let bits = match stored {
                Stored::TinyKeys(_) => "8",
                Stored::SmallKeys(_) => "16",
                Stored::Plain(_) => "32",
                _ => "other",
            };
            assert_eq!(bits, narrowed, "{n} values");
            assert_eq!(&stored.array().expect("array"), &array, "{n} values read back");
        }
    }

    #[test]
    fn narrowed_dictionaries_keep_no_spare_capacity() {
        // A builder sized for many values, holding two: the sealed column keeps 1,000 keys
        // of 1 byte and two short values, not the builder's buffers.
        let mut builder = datafusion::arrow::array::StringDictionaryBuilder::<Int32Type>::with_capacity(1000, 4096, 65_536);
        for i in 0..1000 {
            builder.append_value(if i % 2 == 0 { "GET" } else { "POST" });
        }
        let stored = Stored::pack(Arc::new(builder.finish()), Storage::SmallKeys);
        assert!(matches!(stored, Stored::TinyKeys(_)));
        assert!(stored.bytes() < 1_000 + 512, "{} bytes", stored.bytes());
    }

    #[test]
    fn integers_narrow_as_far_as_their_values_allow_and_widen_back() {
        let cases: [(Vec<Option<i64>>, Option<DataType>); 5] = [
            (vec![Some(200), None, Some(503), Some(-1)], Some(DataType::Int16)),
            (vec![None, None], Some(DataType::Int16)),
            (vec![Some(1_500_000), Some(i64::from(i32::MIN))], Some(DataType::Int32)),
            (vec![Some(40_000), Some(3_000_000_000)], None),
            (vec![Some(i64::MIN), None], None),
        ];
        for (values, narrowed) in cases {
            let array: ArrayRef = Arc::new(Int64Array::from(values.clone()));
            let stored = Stored::pack(array.clone(), Storage::SmallInts);
            let kept = match &stored {
                Stored::SmallInts(ints) => Some(ints.data_type().clone()),
                Stored::Plain(_) => None,
                other => panic!("{other:?}"),
            };
            assert_eq!(kept, narrowed, "{values:?}");
            assert_eq!(&stored.array().expect("array"), &array, "{values:?} read back");
        }
        let floats: ArrayRef = Arc::new(datafusion::arrow::array::Float64Array::from(vec![1.5]));
        assert!(matches!(Stored::pack(floats, Storage::SmallInts), Stored::Plain(_)), "only 64-bit integers narrow");
    }

    #[test]
    fn a_column_kept_as_it_is_keeps_no_spare_capacity() {
        let mut builder = datafusion::arrow::array::Int64Builder::with_capacity(100_000);
        builder.append_slice(&[i64::MAX; 1000]);
        let stored = Stored::pack(Arc::new(builder.finish()), Storage::SmallInts);
        assert!(matches!(stored, Stored::Plain(_)), "too wide to narrow");
        assert!(stored.bytes() < 8 * 1000 + 512, "{} bytes", stored.bytes());
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let text = StringArray::from(vec!["a", "b"]);
        let mut packed = PackedText::pack(&text).expect("packs");
        packed.blocks[0].data = vec![1, 2, 3].into_boxed_slice();
        assert!(packed.unpack().is_err());
        let stored = Stored::Text(Arc::new(packed));
        assert_eq!(TextColumn::new(&stored).expect("text").get(0), None);
    }
}
