//! Avro binary encoding primitives (zig-zag varints, length-prefixed strings, blocked arrays and maps).
//!
//! The records orderflow reads and writes millions of times a second have fixed, shipped schemas, so
//! they are encoded field by field here rather than through a generic `Value` tree. Tests prove the
//! bytes equal what apache-avro (and Java's Avro) write and read for the same schema.

use super::CodecError;

/// Appends Avro binary values to a buffer.
#[derive(Debug)]
pub struct AvroWriter<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> AvroWriter<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> AvroWriter<'a> {
        AvroWriter { buf }
    }

    fn out(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    /// An Avro `long` (zig-zag varint).
    pub fn long(&mut self, value: i64) {
        let mut n = ((value << 1) ^ (value >> 63)) as u64;
        let out = self.out();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// An Avro `int`.
    pub fn int(&mut self, value: i32) {
        self.long(i64::from(value));
    }

    /// An Avro `boolean`.
    pub fn boolean(&mut self, value: bool) {
        self.out().push(u8::from(value));
    }

    /// An Avro `string`.
    pub fn string(&mut self, value: &str) {
        self.long(value.len() as i64);
        self.out().extend_from_slice(value.as_bytes());
    }

    /// An Avro `fixed` of the slice's size.
    pub fn fixed(&mut self, value: &[u8]) {
        self.out().extend_from_slice(value);
    }

    /// A `["null", T]` union's branch index: 0 for null, 1 for a value.
    pub fn union_index(&mut self, present: bool) {
        self.long(i64::from(present));
    }

    /// The start of an array or map block of `count` items (nothing for an empty one).
    pub fn block_start(&mut self, count: usize) {
        if count > 0 {
            self.long(count as i64);
        }
    }

    /// The end of an array or map.
    pub fn block_end(&mut self) {
        self.long(0);
    }

    /// An optional long as a `["null", "long"]` union.
    pub fn optional_long(&mut self, value: Option<i64>) {
        self.union_index(value.is_some());
        if let Some(v) = value {
            self.long(v);
        }
    }

    /// An optional string as a `["null", "string"]` union.
    pub fn optional_string(&mut self, value: Option<&str>) {
        self.union_index(value.is_some());
        if let Some(v) = value {
            self.string(v);
        }
    }

    /// A `map<string>` from sorted pairs.
    pub fn string_map<'k>(&mut self, entries: impl ExactSizeIterator<Item = (&'k str, &'k str)>) {
        self.block_start(entries.len());
        for (k, v) in entries {
            self.string(k);
            self.string(v);
        }
        self.block_end();
    }
}

/// Reads Avro binary values from a byte slice, never panicking on bad input.
#[derive(Debug, Clone)]
pub struct AvroReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The most items one array or map may hold; protects against corrupt counts allocating gigabytes.
const MAX_ITEMS: i64 = 1 << 20;

impl<'a> AvroReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> AvroReader<'a> {
        AvroReader { bytes, pos: 0 }
    }

    /// True when every byte was read.
    pub fn is_at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated { field });
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// An Avro `long`.
    pub fn long(&mut self, field: &'static str) -> Result<i64, CodecError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or(CodecError::Truncated { field })?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(CodecError::Corrupt {
            field,
            problem: "varint longer than 10 bytes".into(),
        })
    }

    /// An Avro `int`.
    pub fn int(&mut self, field: &'static str) -> Result<i32, CodecError> {
        let v = self.long(field)?;
        i32::try_from(v).map_err(|_| CodecError::Corrupt {
            field,
            problem: format!("{v} does not fit an int"),
        })
    }

    /// A non-negative long, e.g. a version.
    pub fn unsigned(&mut self, field: &'static str) -> Result<u64, CodecError> {
        let v = self.long(field)?;
        u64::try_from(v).map_err(|_| CodecError::Corrupt {
            field,
            problem: format!("negative value {v}"),
        })
    }

    /// An Avro `boolean`.
    pub fn boolean(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.take(1, field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(CodecError::Corrupt {
                field,
                problem: format!("boolean byte {b}"),
            }),
        }
    }

    /// An Avro `string` or `bytes` as raw bytes, borrowed from the input (no UTF-8 check: for
    /// comparing against known names).
    pub fn raw(&mut self, field: &'static str) -> Result<&'a [u8], CodecError> {
        let len = self.long(field)?;
        let len = usize::try_from(len).map_err(|_| CodecError::Corrupt {
            field,
            problem: format!("negative length {len}"),
        })?;
        self.take(len, field)
    }

    /// An Avro `string`, borrowed from the input.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, CodecError> {
        let len = self.long(field)?;
        let len = usize::try_from(len).map_err(|_| CodecError::Corrupt {
            field,
            problem: format!("negative length {len}"),
        })?;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::InvalidUtf8 { field })
    }

    /// An Avro `string`, owned.
    pub fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        self.str(field).map(str::to_owned)
    }

    /// An Avro `fixed` of `N` bytes.
    pub fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// An enum symbol index below `symbols`.
    pub fn enum_index(&mut self, field: &'static str, symbols: usize) -> Result<usize, CodecError> {
        let i = self.int(field)?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < symbols)
            .ok_or(CodecError::Corrupt {
                field,
                problem: format!("enum index {i} out of range"),
            })
    }

    /// A `["null", T]` union: true when a value follows.
    pub fn union_present(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(CodecError::Corrupt {
                field,
                problem: format!("union index {i}"),
            }),
        }
    }

    /// An optional long from a `["null", "long"]` union.
    pub fn optional_long(&mut self, field: &'static str) -> Result<Option<i64>, CodecError> {
        if self.union_present(field)? {
            self.long(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An optional string from a `["null", "string"]` union.
    pub fn optional_str(&mut self, field: &'static str) -> Result<Option<&'a str>, CodecError> {
        if self.union_present(field)? {
            self.str(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The item count of the next array or map block (0 ends it); skips a block's byte size.
    pub fn block_count(&mut self, field: &'static str) -> Result<usize, CodecError> {
        let mut count = self.long(field)?;
        if count < 0 {
            count = count.checked_neg().ok_or(CodecError::Corrupt {
                field,
                problem: "block count overflow".into(),
            })?;
            self.long(field)?; // block size in bytes, not needed
        }
        if count > MAX_ITEMS || count as usize > self.remaining() {
            return Err(CodecError::Corrupt {
                field,
                problem: format!("block of {count} items in {} bytes", self.remaining()),
            });
        }
        Ok(count as usize)
    }

    /// Reads a whole array or map, calling `item` once per element.
    pub fn blocks(
        &mut self,
        field: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        loop {
            let count = self.block_count(field)?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut AvroWriter)) -> Vec<u8> {
        let mut buf = Vec::new();
        f(&mut AvroWriter::new(&mut buf));
        buf
    }

    #[test]
    fn longs_use_the_zig_zag_varints_of_the_avro_spec() {
        // Examples from the Avro specification.
        for (value, bytes) in [
            (0i64, vec![0x00]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-2, vec![0x03]),
            (2, vec![0x04]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            assert_eq!(encoded(|w| w.long(value)), bytes, "{value}");
            assert_eq!(AvroReader::new(&bytes).long("x").unwrap(), value);
        }
    }

    #[test]
    fn extreme_longs_round_trip() {
        for value in [i64::MIN, i64::MAX, i64::MIN + 1, 1 << 40] {
            let bytes = encoded(|w| w.long(value));
            assert_eq!(AvroReader::new(&bytes).long("x").unwrap(), value);
        }
    }

    #[test]
    fn an_endless_varint_is_corrupt_not_a_panic() {
        let bytes = [0xffu8; 12];
        assert!(matches!(
            AvroReader::new(&bytes).long("x"),
            Err(CodecError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_string_longer_than_the_input_is_truncated() {
        let mut bytes = encoded(|w| w.long(10));
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            AvroReader::new(&bytes).str("name"),
            Err(CodecError::Truncated { field: "name" })
        ));
    }

    #[test]
    fn invalid_utf8_is_reported_by_field() {
        let bytes = [0x04, 0xff, 0xfe];
        assert!(matches!(
            AvroReader::new(&bytes).str("order_id"),
            Err(CodecError::InvalidUtf8 { field: "order_id" })
        ));
    }

    #[test]
    fn a_huge_block_count_is_refused_before_allocating() {
        let bytes = encoded(|w| w.long(1 << 40));
        assert!(AvroReader::new(&bytes).block_count("a").is_err());
    }

    #[test]
    fn negative_block_counts_carry_a_byte_size() {
        // -2 items, then 4 bytes, then two ints, then the end.
        let bytes = encoded(|w| {
            w.long(-2);
            w.long(2);
            w.int(5);
            w.int(6);
            w.block_end();
        });
        let mut r = AvroReader::new(&bytes);
        let mut items = vec![];
        r.blocks("a", |r| {
            items.push(r.int("i")?);
            Ok(())
        })
        .unwrap();
        assert_eq!(items, vec![5, 6]);
        assert!(r.is_at_end());
    }
}
