//! Frames: the unit the byte stream is cut into after the handshake.
//!
//! ```text
//! offset size  field
//!      0    4  payload length, u32 little-endian (≤ MAX_PAYLOAD)
//!      4    1  frame type
//!      5    1  flags (only FLAG_FINAL on Chunk frames; 0 otherwise)
//!      6    2  reserved, 0
//!      8    8  request id, u64 little-endian (0 only on Push and connection-level Error)
//!     16    n  payload
//! ```

use std::io::{self, Read, Write};

use crate::message::MAX_IO;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;

/// Largest payload: one [`MAX_IO`] data block (a 1 MiB FUSE write, or a 1 MiB stream chunk)
/// plus 64 KiB for the rest of the message — a write's file reference (a path ≤ 4096 bytes)
/// and fixed fields need under 4.2 KiB, a full readdir page with attributes ~380 KiB fits
/// without the data. The reader checks the length against this before allocating, so a
/// hostile length costs nothing.
pub const MAX_PAYLOAD: usize = MAX_IO + 64 * 1024;

/// On a `Chunk` frame: the last chunk of an upload.
pub const FLAG_FINAL: u8 = 0x01;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Client → server: a [`crate::Request`].
    Request,
    /// Server → client: a [`crate::Response`], ending the request.
    Response,
    /// Server → client: error code and message, ending the request (id 0: about the
    /// connection, sent before the server closes it).
    Error,
    /// Server → client, id 0: a [`crate::Push`].
    Push,
    /// Either way: raw stream data of the request `id` (upload or download).
    Chunk,
    /// Either way: the receiver of a stream allows `u32` more chunks.
    Credit,
    /// Client → server: abandon request `id` (a stream, or a call that timed out).
    Cancel,
}

impl FrameType {
    pub fn code(self) -> u8 {
        match self {
            FrameType::Request => 1,
            FrameType::Response => 2,
            FrameType::Error => 3,
            FrameType::Push => 4,
            FrameType::Chunk => 5,
            FrameType::Credit => 6,
            FrameType::Cancel => 7,
        }
    }

    pub fn from_code(c: u8) -> Option<FrameType> {
        Some(match c {
            1 => FrameType::Request,
            2 => FrameType::Response,
            3 => FrameType::Error,
            4 => FrameType::Push,
            5 => FrameType::Chunk,
            6 => FrameType::Credit,
            7 => FrameType::Cancel,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub flags: u8,
    pub id: u64,
    pub payload: Vec<u8>,
}

/// Why a frame could not be read. [`FrameError::is_fatal`] says whether the stream is lost:
/// after a fatal error the frame boundaries are unknown and the connection must close; after
/// a recoverable one the bad frame was consumed whole and the next frame can be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// the stream ended cleanly between frames
    #[error("the stream ended cleanly between frames")]
    Eof,
    /// the stream ended inside a frame ({got} of {expected} bytes)
    #[error("the stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    /// frame payload of {len} bytes exceeds the limit of {max}
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    /// reading a frame failed: {0}
    #[error("reading a frame failed: {0}")]
    Io(#[from] io::Error),
    /// frame {id}: {problem}
    #[error("frame {id}: {problem}")]
    BadHeader { id: u64, problem: String },
}

impl FrameError {
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::BadHeader { .. })
    }
}

impl Frame {
    pub fn new(kind: FrameType, id: u64, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            flags: 0,
            id,
            payload,
        }
    }

    /// The header bytes of a frame with this payload length.
    pub fn header(kind: FrameType, flags: u8, id: u64, len: usize) -> [u8; HEADER_LEN] {
        // Every frame we build stays under MAX_PAYLOAD; a longer one is a programming error.
        assert!(len <= MAX_PAYLOAD, "frame payload {len} over MAX_PAYLOAD");
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        h[4] = kind.code();
        h[5] = flags;
        h[8..16].copy_from_slice(&id.to_le_bytes());
        h
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.extend_from_slice(&Frame::header(
            self.kind,
            self.flags,
            self.id,
            self.payload.len(),
        ));
        v.extend_from_slice(&self.payload);
        v
    }

    /// Writes the frame: header and payload, then flush. Callers serialise writers.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        write_frame(w, self.kind, self.flags, self.id, &self.payload)
    }

    /// Decodes one frame from the start of `buf`, returning it and the bytes it used.
    /// `Truncated` means `buf` holds only part of a frame.
    pub fn decode(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
        if buf.len() < HEADER_LEN {
            return Err(if buf.is_empty() {
                FrameError::Eof
            } else {
                FrameError::Truncated {
                    got: buf.len(),
                    expected: HEADER_LEN,
                }
            });
        }
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("length checked");
        let len = payload_len(&header)?;
        let total = HEADER_LEN + len;
        if buf.len() < total {
            return Err(FrameError::Truncated {
                got: buf.len(),
                expected: total,
            });
        }
        let frame = check_header(&header, buf[HEADER_LEN..total].to_vec())?;
        Ok((frame, total))
    }
}

fn payload_len(h: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as u64;
    if len > MAX_PAYLOAD as u64 {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(len as usize)
}

/// Checks the header fields other than the length once the payload was consumed, so a bad
/// header is recoverable.
fn check_header(h: &[u8; HEADER_LEN], payload: Vec<u8>) -> Result<Frame, FrameError> {
    let id = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let bad = |problem: String| Err(FrameError::BadHeader { id, problem });
    let Some(kind) = FrameType::from_code(h[4]) else {
        return bad(format!("unknown frame type {}", h[4]));
    };
    let flags = h[5];
    let allowed = if kind == FrameType::Chunk {
        FLAG_FINAL
    } else {
        0
    };
    if flags & !allowed != 0 {
        return bad(format!(
            "flags {flags:#04x} not allowed on a {kind:?} frame"
        ));
    }
    if h[6] != 0 || h[7] != 0 {
        return bad("reserved header bytes are not zero".into());
    }
    match kind {
        FrameType::Push if id != 0 => return bad("a Push frame must have id 0".into()),
        FrameType::Push | FrameType::Error => {}
        _ if id == 0 => return bad(format!("a {kind:?} frame needs a non-zero id")),
        _ => {}
    }
    Ok(Frame {
        kind,
        flags,
        id,
        payload,
    })
}

/// Reads one frame. The length is checked before the payload is allocated. The buffer is
/// reserved whole (one allocation instead of a dozen growing ones), but pages are touched
/// only as bytes arrive, so a peer that announces 1 MiB and sends 10 bytes costs 10 bytes
/// of memory (and one reader holds one frame at a time).
pub fn read_frame(r: &mut dyn Read) -> Result<Frame, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Err(FrameError::Eof);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            got,
            expected: HEADER_LEN,
        });
    }
    let len = payload_len(&header)?;
    let mut payload = crate::buffers::take(len);
    let n = r.take(len as u64).read_to_end(&mut payload)?;
    if n < len {
        return Err(FrameError::Truncated {
            got: HEADER_LEN + n,
            expected: HEADER_LEN + len,
        });
    }
    check_header(&header, payload)
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes one frame and flushes.
pub fn write_frame(
    w: &mut dyn Write,
    kind: FrameType,
    flags: u8,
    id: u64,
    payload: &[u8],
) -> io::Result<()> {
    let header = Frame::header(kind, flags, id, payload.len());
    // Small frames go out in one write so a frame is usually one pipe message; big ones
    // avoid copying the payload.
    if payload.len() <= 64 * 1024 {
        let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
        v.extend_from_slice(&header);
        v.extend_from_slice(payload);
        w.write_all(&v)?;
    } else {
        w.write_all(&header)?;
        w.write_all(payload)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        let mut h = Frame::header(FrameType::Request, 0, 1, 0);
        h[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r: &[u8] = &h;
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as u64
        ));
    }

    #[test]
    fn a_frame_round_trips() {
        let f = Frame {
            kind: FrameType::Chunk,
            flags: FLAG_FINAL,
            id: 7,
            payload: b"abc".to_vec(),
        };
        let bytes = f.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 3);
        let (g, used) = Frame::decode(&bytes).unwrap();
        assert_eq!((g, used), (f.clone(), bytes.len()));
        let mut r: &[u8] = &bytes;
        assert_eq!(read_frame(&mut r).unwrap(), f);
        assert!(matches!(read_frame(&mut r), Err(FrameError::Eof)));
    }
}
