//! The primitive encoding every message is built from: little-endian integers, length-prefixed
//! byte strings, one-byte tags. Decoding is strict so that any accepted input re-encodes to
//! the same bytes (a bool is 0 or 1, an option tag 0 or 1, nanoseconds below 10^9, nothing
//! left over at the end of a message).

use crate::error::{ErrorCode, RemoteError};

/// Why bytes could not be decoded. Always names the field, so a peer's bug report says where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DecodeError {
    /// The message field being decoded.
    pub field: &'static str,
    /// What was wrong with it.
    pub problem: String,
    /// The error code a server answers with.
    pub code: ErrorCode,
}

impl DecodeError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            field,
            problem: problem.into(),
            code: ErrorCode::Malformed,
        }
    }

    pub(crate) fn with_code(mut self, code: ErrorCode) -> DecodeError {
        self.code = code;
        self
    }
}

impl From<DecodeError> for RemoteError {
    fn from(e: DecodeError) -> RemoteError {
        RemoteError::new(e.code, e.to_string())
    }
}

/// Appends encoded values to a buffer.
#[derive(Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Enc {
        Enc { buf: Vec::new() }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    /// A byte string: u32 length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        // Callers keep every byte string far below 4 GiB (frames are ~1 MiB), so this cannot
        // truncate; a bigger one is a programming error.
        let len = u32::try_from(v.len()).expect("byte string longer than 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut Enc, &T)) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                f(self, x);
            }
        }
    }
    pub fn list<T>(&mut self, v: &[T], mut f: impl FnMut(&mut Enc, &T)) {
        let len = u32::try_from(v.len()).expect("list longer than 4 Gi entries");
        self.u32(len);
        for x in v {
            f(self, x);
        }
    }
}

/// Reads encoded values from a message, failing on anything short, oversized or
/// non-canonical.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::new(
                field,
                format!(
                    "needs {n} more bytes, the message has {} left",
                    self.buf.len()
                ),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::new(
                field,
                format!("a boolean is 0 or 1, not {b}"),
            )),
        }
    }

    /// A byte string of at most `max` bytes. The length is checked against `max` and against
    /// what is left before anything is copied.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(
                DecodeError::new(field, format!("{len} bytes long; the limit is {max}"))
                    .with_code(ErrorCode::TooLarge),
            );
        }
        self.take(len, field)
    }

    pub fn string(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        String::from_utf8(b.to_vec())
            .map_err(|e| DecodeError::new(field, format!("not valid UTF-8: {e}")))
    }

    pub fn opt<T>(
        &mut self,
        field: &'static str,
        f: impl FnOnce(&mut Dec<'a>) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => f(self).map(Some),
            b => Err(DecodeError::new(
                field,
                format!("an option tag is 0 or 1, not {b}"),
            )),
        }
    }

    /// A list of at most `max` items, each at least `min_item` bytes long: a count that the
    /// remaining bytes cannot hold is refused before any allocation.
    pub fn list<T>(
        &mut self,
        field: &'static str,
        max: usize,
        min_item: usize,
        mut f: impl FnMut(&mut Dec<'a>) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(
                DecodeError::new(field, format!("{n} entries; the limit is {max}"))
                    .with_code(ErrorCode::TooLarge),
            );
        }
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(DecodeError::new(
                field,
                format!(
                    "{n} entries cannot fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }

    /// Fails unless every byte was consumed: trailing bytes would make two encodings of one
    /// message.
    pub fn end(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::new(
                what,
                format!("{} unexpected bytes after the message", self.buf.len()),
            ))
        }
    }
}
