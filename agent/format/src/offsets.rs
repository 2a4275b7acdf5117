//! Block maths between plaintext and ciphertext offsets (gocryptfs internal/contentenc/offsets.go).
//!
//! Plaintext block n covers `[n*4096, (n+1)*4096)`; its ciphertext starts at `18 + n*4128`.

use crate::content::{BLOCK_OVERHEAD, CIPHER_BS, HEADER_LEN, PLAIN_BS};
use crate::{FormatError, Result};

const PBS: u64 = PLAIN_BS as u64;
const CBS: u64 = CIPHER_BS as u64;
const HDR: u64 = HEADER_LEN as u64;
const OVH: u64 = BLOCK_OVERHEAD as u64;

/// offsets.go `PlainOffToBlockNo`.
pub fn plain_off_to_block_no(plain_off: u64) -> u64 {
    plain_off / PBS
}

/// offsets.go `BlockNoToPlainOff`.
pub fn block_no_to_plain_off(block_no: u64) -> u64 {
    block_no * PBS
}

/// offsets.go `BlockNoToCipherOff`: where block `block_no` starts in the ciphertext file.
pub fn block_no_to_cipher_off(block_no: u64) -> u64 {
    HDR + block_no * CBS
}

/// offsets.go `PlainSizeToCipherSize`. 0 stays 0.
pub fn plain_size_to_cipher_size(plain_size: u64) -> u64 {
    if plain_size == 0 {
        return 0;
    }
    let full = plain_size / PBS;
    let rest = plain_size % PBS;
    HDR + full * CBS + if rest > 0 { rest + OVH } else { 0 }
}

/// offsets.go `CipherSizeToPlainSize`, strict: where gocryptfs guesses (and logs a warning)
/// for impossible sizes, this returns an error, so a truncated file is reported, not padded.
/// 0 and a lone header (18, an interrupted first write, harmless in gocryptfs) are 0.
pub fn cipher_size_to_plain_size(cipher_size: u64) -> Result<u64> {
    if cipher_size == 0 || cipher_size == HDR {
        return Ok(0);
    }
    if cipher_size < HDR {
        return Err(FormatError::CipherSize {
            size: cipher_size,
            reason: "shorter than the 18-byte header",
        });
    }
    let body = cipher_size - HDR;
    let last = body % CBS;
    if last > 0 && last <= OVH {
        return Err(FormatError::CipherSize {
            size: cipher_size,
            reason: "the last block is no longer than its 32-byte overhead",
        });
    }
    let blocks = body / CBS + u64::from(last > 0);
    Ok(body - blocks * OVH)
}

/// Number of blocks in a file of `plain_size` bytes.
pub fn block_count(plain_size: u64) -> u64 {
    plain_size.div_ceil(PBS)
}

/// One block's share of a plaintext byte range (offsets.go `IntraBlock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub block_no: u64,
    /// Offset of the range inside the block.
    pub skip: usize,
    /// Bytes of the range inside the block.
    pub len: usize,
}

impl BlockSpan {
    /// Whether the span covers the whole 4096-byte block (a write needs no read-modify-write).
    pub fn is_full(&self) -> bool {
        self.skip == 0 && self.len == PLAIN_BS
    }
    pub fn plain_off(&self) -> u64 {
        block_no_to_plain_off(self.block_no) + self.skip as u64
    }
    pub fn cipher_off(&self) -> u64 {
        block_no_to_cipher_off(self.block_no)
    }
}

/// offsets.go `ExplodePlainRange`: the blocks a plaintext range touches, in order.
pub fn explode_plain_range(offset: u64, len: u64) -> impl Iterator<Item = BlockSpan> {
    let mut off = offset;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let block_no = plain_off_to_block_no(off);
        let skip = (off - block_no_to_plain_off(block_no)) as usize;
        let n = left.min((PLAIN_BS - skip) as u64);
        off += n;
        left -= n;
        Some(BlockSpan {
            block_no,
            skip,
            len: n as usize,
        })
    })
}

/// The ciphertext byte range `(offset, len)` holding blocks `first..=last` of a file of
/// `plain_size` bytes (the last block may be short). What a reader fetches from the store.
pub fn cipher_range_for_blocks(first: u64, last: u64, plain_size: u64) -> (u64, u64) {
    let start = block_no_to_cipher_off(first);
    let end = block_no_to_cipher_off(last + 1).min(plain_size_to_cipher_size(plain_size));
    (start, end.saturating_sub(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_trip_around_every_boundary() {
        for base in [0u64, 4096, 8192, 40960, 1 << 30] {
            for d in 0..40u64 {
                for p in [base + d, base.saturating_sub(d)] {
                    let c = plain_size_to_cipher_size(p);
                    assert_eq!(cipher_size_to_plain_size(c).unwrap(), p, "plain {p}");
                }
            }
        }
        assert_eq!(plain_size_to_cipher_size(1), 51);
        assert_eq!(plain_size_to_cipher_size(4096), 18 + 4128);
        assert_eq!(plain_size_to_cipher_size(4097), 18 + 4128 + 33);
    }

    #[test]
    fn impossible_sizes_are_errors() {
        for c in [1u64, 17, 19, 50, 18 + 4128 + 32, 18 + 4128 + 1] {
            assert!(cipher_size_to_plain_size(c).is_err(), "{c}");
        }
        assert_eq!(cipher_size_to_plain_size(18).unwrap(), 0);
    }

    #[test]
    fn explode_covers_the_range_exactly() {
        let spans: Vec<_> = explode_plain_range(4000, 5000).collect();
        assert_eq!(
            spans,
            vec![
                BlockSpan {
                    block_no: 0,
                    skip: 4000,
                    len: 96
                },
                BlockSpan {
                    block_no: 1,
                    skip: 0,
                    len: 4096
                },
                BlockSpan {
                    block_no: 2,
                    skip: 0,
                    len: 808
                },
            ]
        );
        assert!(spans[1].is_full());
        assert_eq!(explode_plain_range(10, 0).count(), 0);
        assert_eq!(
            cipher_range_for_blocks(0, 2, 9000),
            (18, 2 * 4128 + 808 + 32)
        );
    }
}
