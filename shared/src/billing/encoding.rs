//! The byte encoding of what billing stores in bulk (per-CDR pricings,
//! `billing::pricings`, and rating checkpoints, `billing::calculation::state`):
//! LEB128 varints, zigzag for signed values and deltas, length-prefixed
//! byte strings, compressed with lz4. PostgreSQL only stores the bytes, so
//! a million CDRs are one memcpy for it instead of millions of values to
//! convert.

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Each column as its length and bytes, after `head`, compressed.
pub(crate) fn seal(mut head: Vec<u8>, columns: &[&[u8]]) -> Vec<u8> {
    for column in columns {
        put_bytes(&mut head, column);
    }
    lz4_flex::compress_prepend_size(&head)
}

pub(crate) fn unseal(compressed: &[u8]) -> Result<Vec<u8>, String> {
    lz4_flex::decompress_size_prepended(compressed).map_err(|e| format!("not lz4: {e}"))
}

/// A cursor over encoded bytes; every read says what was cut short, none
/// panics.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where `bytes` starts in the buffer the first reader was made on.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            base: 0,
        }
    }

    pub fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("a number is cut short")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("a number is longer than 64 bits".into())
    }

    pub fn signed(&mut self) -> Result<i64, String> {
        self.varint().map(unzigzag)
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.varint()?).map_err(|_| "a number is too big".into())
    }

    pub fn usize(&mut self) -> Result<usize, String> {
        usize::try_from(self.varint()?).map_err(|_| "a number is too big".into())
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("a length overflows")?;
        let slice = self.bytes.get(self.at..end).ok_or("a value is cut short")?;
        self.at = end;
        Ok(slice)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.usize()?;
        self.take(n)
    }

    /// `N` length-prefixed columns, each as a reader of its own.
    pub fn columns<const N: usize>(&mut self) -> Result<[Reader<'a>; N], String> {
        let mut columns = Vec::with_capacity(N);
        for _ in 0..N {
            let n = self.usize()?;
            let base = self.base + self.at;
            let bytes = self.take(n)?;
            columns.push(Reader { bytes, at: 0, base });
        }
        columns
            .try_into()
            .map_err(|_| "a column is missing".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written_and_truncated_input_is_an_error() {
        let values = [0i64, 1, -1, 63, -64, 300, i64::MAX, i64::MIN];
        let mut column = Vec::new();
        for v in values {
            put_varint(&mut column, zigzag(v));
        }
        put_bytes(&mut column, b"+31612345678");
        let sealed = seal(b"HEAD".to_vec(), &[&column, b"x"]);
        let raw = unseal(&sealed).unwrap();
        let mut reader = Reader::new(&raw);
        assert_eq!(reader.take(4).unwrap(), b"HEAD");
        let [mut first, mut second] = reader.columns::<2>().unwrap();
        for v in values {
            assert_eq!(first.signed().unwrap(), v);
        }
        assert_eq!(first.bytes().unwrap(), b"+31612345678");
        assert!(first.varint().is_err(), "the column is used up");
        assert_eq!(second.take(1).unwrap(), b"x");
        assert!(unseal(&sealed[..sealed.len() - 3]).is_err());
        assert!(Reader::new(&[0xff, 0xff]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
    }
}
