//! File content: the 18-byte header and 4096-byte blocks sealed with AES-256-GCM.
//!
//! gocryptfs Documentation/file-format.md and internal/contentenc/{content.go,file_header.go}:
//!
//! ```text
//! header  = version (u16 big-endian, 2) || file ID (16 random bytes)       18 bytes
//! block n = nonce (16 random bytes) || AES-256-GCM(plain n) || tag (16)    33..=4128 bytes
//! AAD n   = n (u64 big-endian) || file ID
//! ```
//!
//! An empty file has no header. A full-size block of zero bytes is a hole and reads as 4096
//! zero bytes (content.go `DecryptBlock`: "file hole passthrough").

use zeroize::Zeroizing;

use crate::aead::Gcm;
use crate::{FormatError, Result, KEY_LEN, TAG_LEN};

/// Plaintext block size (content.go `DefaultBS`).
pub const PLAIN_BS: usize = 4096;
/// Nonce length for content (128 bits, feature flag GCMIV128; content.go `DefaultIVBits`).
pub const NONCE_LEN: usize = 16;
/// Per-block overhead: nonce + tag.
pub const BLOCK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Ciphertext block size (4128).
pub const CIPHER_BS: usize = PLAIN_BS + BLOCK_OVERHEAD;
/// file_header.go `CurrentVersion`.
pub const HEADER_VERSION: u16 = 2;
/// file_header.go `HeaderLen` = 2 + 16.
pub const HEADER_LEN: usize = 2 + FILE_ID_LEN;
/// file_header.go `headerIDLen`.
pub const FILE_ID_LEN: usize = 16;

/// The random per-file ID that binds every block to its file.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct FileId(pub [u8; FILE_ID_LEN]);

/// The header at the start of every non-empty file (file_header.go).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileHeader {
    pub id: FileId,
}

impl FileHeader {
    /// A header with a fresh random file ID (file_header.go `RandomHeader`).
    pub fn new_random() -> Result<Self> {
        let mut id = [0u8; FILE_ID_LEN];
        loop {
            openssl::rand::rand_bytes(&mut id)?;
            // An all-zero ID is refused by parse(); 2^-128, but keep the invariant total.
            if id != [0; FILE_ID_LEN] {
                return Ok(Self { id: FileId(id) });
            }
        }
    }

    /// file_header.go `ParseHeader`: exactly 18 bytes, not all zero, version 2, ID not zero.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() != HEADER_LEN {
            return Err(FormatError::HeaderLength(buf.len()));
        }
        if buf.iter().all(|&b| b == 0) {
            return Err(FormatError::HeaderAllZero);
        }
        let version = u16::from_be_bytes([buf[0], buf[1]]);
        if version != HEADER_VERSION {
            return Err(FormatError::HeaderVersion(version));
        }
        let mut id = [0u8; FILE_ID_LEN];
        id.copy_from_slice(&buf[2..]);
        if id == [0; FILE_ID_LEN] {
            return Err(FormatError::HeaderZeroId);
        }
        Ok(Self { id: FileId(id) })
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..2].copy_from_slice(&HEADER_VERSION.to_be_bytes());
        out[2..].copy_from_slice(&self.id.0);
        out
    }
}

/// content.go `concatAD`: block number (big-endian u64) || file ID (absent for the config's
/// master key, symlink targets and xattr values).
fn aad(block_no: u64, file_id: Option<&FileId>, out: &mut [u8; 8 + FILE_ID_LEN]) -> usize {
    out[..8].copy_from_slice(&block_no.to_be_bytes());
    match file_id {
        Some(id) => {
            out[8..].copy_from_slice(&id.0);
            8 + FILE_ID_LEN
        }
        None => 8,
    }
}

/// Seals and opens content blocks. Holds two keyed OpenSSL contexts, so it is `&mut` per
/// call: give each thread its own (`Volume::content_cipher` makes one cheaply).
pub struct ContentCipher {
    gcm: Gcm,
    nonces: NoncePool,
}

/// Random nonces drawn from OpenSSL in batches: one `RAND_bytes` call per block costs about
/// as much as sealing the block itself, so a batch of 256 halves the cost of a block write.
/// Nonces are public, so the pool needs no zeroizing; it is refilled after a fork, so a
/// parent and child can never hand out the same nonces.
struct NoncePool {
    buf: Box<[u8; NONCE_POOL]>,
    pos: usize,
    pid: u32,
}

/// 256 nonces of 16 bytes: one page of randomness per refill.
const NONCE_POOL: usize = 4096;

impl NoncePool {
    fn new() -> Self {
        Self {
            buf: Box::new([0u8; NONCE_POOL]),
            pos: NONCE_POOL,
            pid: 0,
        }
    }

    fn take(&mut self, out: &mut [u8]) -> Result<()> {
        let pid = std::process::id();
        if self.pos + out.len() > NONCE_POOL || pid != self.pid {
            openssl::rand::rand_bytes(&mut self.buf[..])?;
            self.pos = 0;
            self.pid = pid;
        }
        out.copy_from_slice(&self.buf[self.pos..self.pos + out.len()]);
        // Never hand out the same bytes twice.
        self.buf[self.pos..self.pos + out.len()].fill(0);
        self.pos += out.len();
        Ok(())
    }
}

impl ContentCipher {
    /// `key` is the content key (HKDF-derived from the master key, or the master key itself
    /// on pre-HKDF volumes); `nonce_len` 16, or 12 for legacy master-key wrapping only.
    pub(crate) fn new(key: &[u8; KEY_LEN], nonce_len: usize) -> Result<Self> {
        Ok(Self {
            gcm: Gcm::new(key, nonce_len)?,
            nonces: NoncePool::new(),
        })
    }

    pub fn nonce_len(&self) -> usize {
        self.gcm.nonce_len()
    }

    /// Bytes of ciphertext for `plain_len` bytes of one block.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        plain_len + self.gcm.nonce_len() + TAG_LEN
    }

    /// Encrypts one block (1..=4096 bytes) with a fresh random nonce into `out`, which must
    /// hold `plain.len() + 32` bytes; returns that length. No allocation.
    /// (content.go `EncryptBlock`; an empty block stays empty and returns 0.)
    pub fn encrypt_block(
        &mut self,
        file_id: &FileId,
        block_no: u64,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        self.encrypt_block_ad(Some(file_id), block_no, plain, out)
    }

    pub(crate) fn encrypt_block_ad(
        &mut self,
        file_id: Option<&FileId>,
        block_no: u64,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        if plain.is_empty() {
            return Ok(0);
        }
        if plain.len() > PLAIN_BS {
            return Err(FormatError::BlockTooLong {
                block_no,
                len: plain.len(),
                max: PLAIN_BS,
            });
        }
        let mut nonce = [0u8; 24];
        let nonce = &mut nonce[..self.gcm.nonce_len()];
        loop {
            self.nonces.take(nonce)?;
            // decrypt_block refuses an all-zero nonce (content.go); never write one.
            if nonce.iter().any(|&b| b != 0) {
                break;
            }
        }
        let mut ad = [0u8; 8 + FILE_ID_LEN];
        let ad_len = aad(block_no, file_id, &mut ad);
        self.gcm.seal(nonce, &ad[..ad_len], plain, out)
    }

    /// Like [`encrypt_block`](Self::encrypt_block), into a new vector.
    pub fn encrypt_block_to_vec(
        &mut self,
        file_id: &FileId,
        block_no: u64,
        plain: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.sealed_len(plain.len())];
        let n = self.encrypt_block(file_id, block_no, plain, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Decrypts one block into `out` (room for `sealed.len() - 32` bytes, or 4096 for a hole)
    /// and returns the plaintext length. A full-size all-zero block is a hole: 4096 zeros.
    /// (content.go `DecryptBlock`.)
    pub fn decrypt_block(
        &mut self,
        file_id: &FileId,
        block_no: u64,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        self.decrypt_block_ad(Some(file_id), block_no, sealed, out, PLAIN_BS)
    }

    pub(crate) fn decrypt_block_ad(
        &mut self,
        file_id: Option<&FileId>,
        block_no: u64,
        sealed: &[u8],
        out: &mut [u8],
        max_plain: usize,
    ) -> Result<usize> {
        if sealed.is_empty() {
            return Ok(0);
        }
        let n = self.gcm.nonce_len();
        let max = max_plain + n + TAG_LEN;
        if sealed.len() > max {
            return Err(FormatError::BlockTooLong {
                block_no,
                len: sealed.len(),
                max,
            });
        }
        if sealed.len() == max && file_id.is_some() && sealed.iter().all(|&b| b == 0) {
            if out.len() < max_plain {
                return Err(FormatError::BufferTooSmall {
                    have: out.len(),
                    need: max_plain,
                });
            }
            out[..max_plain].fill(0);
            return Ok(max_plain);
        }
        // A block must carry at least one byte: 33 bytes (file-format.md "1-byte file").
        if sealed.len() <= n + TAG_LEN {
            return Err(FormatError::BlockTooShort {
                block_no,
                len: sealed.len(),
                min: n + TAG_LEN + 1,
            });
        }
        if sealed[..n].iter().all(|&b| b == 0) {
            return Err(FormatError::BlockZeroNonce { block_no });
        }
        let mut ad = [0u8; 8 + FILE_ID_LEN];
        let ad_len = aad(block_no, file_id, &mut ad);
        match self.gcm.open(&ad[..ad_len], sealed, out)? {
            Some(len) => Ok(len),
            None => Err(FormatError::BlockAuth { block_no }),
        }
    }

    /// Like [`decrypt_block`](Self::decrypt_block), into a new vector.
    pub fn decrypt_block_to_vec(
        &mut self,
        file_id: &FileId,
        block_no: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; PLAIN_BS.max(sealed.len())];
        let n = self.decrypt_block(file_id, block_no, sealed, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// A whole file's ciphertext: header with a fresh ID, then the blocks. Empty stays empty.
    pub fn encrypt_file(&mut self, plain: &[u8]) -> Result<Vec<u8>> {
        if plain.is_empty() {
            return Ok(Vec::new());
        }
        let header = FileHeader::new_random()?;
        let mut out =
            vec![0u8; crate::offsets::plain_size_to_cipher_size(plain.len() as u64) as usize];
        out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let mut pos = HEADER_LEN;
        for (i, chunk) in plain.chunks(PLAIN_BS).enumerate() {
            pos += self.encrypt_block(&header.id, i as u64, chunk, &mut out[pos..])?;
        }
        debug_assert_eq!(pos, out.len());
        Ok(out)
    }

    /// A whole file's plaintext; any damage is an error naming the block.
    pub fn decrypt_file(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let plain_len = crate::offsets::cipher_size_to_plain_size(sealed.len() as u64)?;
        let mut out = Zeroizing::new(vec![0u8; plain_len as usize]);
        if sealed.len() <= HEADER_LEN {
            if !sealed.is_empty() {
                FileHeader::parse(sealed)?;
            }
            return Ok(out);
        }
        let header = FileHeader::parse(&sealed[..HEADER_LEN])?;
        let mut pos = 0;
        for (i, block) in sealed[HEADER_LEN..].chunks(CIPHER_BS).enumerate() {
            pos += self.decrypt_block(&header.id, i as u64, block, &mut out[pos..])?;
        }
        debug_assert_eq!(pos as u64, plain_len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc() -> ContentCipher {
        ContentCipher::new(&[5u8; 32], NONCE_LEN).unwrap()
    }

    #[test]
    fn nonces_never_repeat() {
        let mut c = cc();
        let id = FileHeader::new_random().unwrap().id;
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let b = c.encrypt_block_to_vec(&id, i, b"x").unwrap();
            assert!(
                seen.insert(b[..NONCE_LEN].to_vec()),
                "nonce repeated at {i}"
            );
        }
    }

    #[test]
    fn header_round_trip_and_refusals() {
        let h = FileHeader::new_random().unwrap();
        assert_eq!(FileHeader::parse(&h.to_bytes()).unwrap(), h);
        assert!(matches!(
            FileHeader::parse(&[0; 18]),
            Err(FormatError::HeaderAllZero)
        ));
        assert!(matches!(
            FileHeader::parse(&[0; 17]),
            Err(FormatError::HeaderLength(17))
        ));
        let mut v1 = h.to_bytes();
        v1[1] = 1;
        assert!(matches!(
            FileHeader::parse(&v1),
            Err(FormatError::HeaderVersion(1))
        ));
        let mut zid = [0u8; 18];
        zid[1] = 2;
        assert!(matches!(
            FileHeader::parse(&zid),
            Err(FormatError::HeaderZeroId)
        ));
    }

    #[test]
    fn block_sizes_match_file_format_md() {
        let mut c = cc();
        // file-format.md: a 1-byte file is 18 + 33 = 51 bytes; 5000 bytes is 18 + 4128 + 936.
        assert_eq!(c.encrypt_file(&[1]).unwrap().len(), 51);
        assert_eq!(c.encrypt_file(&[1; 5000]).unwrap().len(), 5082);
        assert_eq!(c.encrypt_file(&[]).unwrap().len(), 0);
    }

    #[test]
    fn every_bit_flip_is_caught_with_its_block_number() {
        let mut c = cc();
        let plain: Vec<u8> = (0..3 * PLAIN_BS + 100).map(|i| i as u8).collect();
        let sealed = c.encrypt_file(&plain).unwrap();
        assert_eq!(&c.decrypt_file(&sealed).unwrap()[..], &plain[..]);
        for pos in (HEADER_LEN..sealed.len()).step_by(97) {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x10;
            let err = c.decrypt_file(&bad).unwrap_err();
            let want = ((pos - HEADER_LEN) / CIPHER_BS) as u64;
            assert_eq!(err.block_no(), Some(want), "flip at {pos}: {err}");
        }
        // A flipped file ID authenticates nothing: block 0 fails.
        let mut bad = sealed.clone();
        bad[5] ^= 1;
        assert!(matches!(
            c.decrypt_file(&bad),
            Err(FormatError::BlockAuth { block_no: 0 })
        ));
    }

    #[test]
    fn swapped_blocks_and_blocks_from_other_files_fail() {
        let mut c = cc();
        let a = c.encrypt_file(&[1u8; 2 * PLAIN_BS]).unwrap();
        let b = c.encrypt_file(&[1u8; 2 * PLAIN_BS]).unwrap();
        let blk = |f: &Vec<u8>, i: usize| {
            f[HEADER_LEN + i * CIPHER_BS..HEADER_LEN + (i + 1) * CIPHER_BS].to_vec()
        };
        // Swap within a file: block number in the AAD.
        let mut s = a.clone();
        s[HEADER_LEN..HEADER_LEN + CIPHER_BS].copy_from_slice(&blk(&a, 1));
        s[HEADER_LEN + CIPHER_BS..].copy_from_slice(&blk(&a, 0));
        assert!(matches!(
            c.decrypt_file(&s),
            Err(FormatError::BlockAuth { block_no: 0 })
        ));
        // Same position, other file: file ID in the AAD.
        let mut x = a.clone();
        x[HEADER_LEN + CIPHER_BS..].copy_from_slice(&blk(&b, 1));
        assert!(matches!(
            c.decrypt_file(&x),
            Err(FormatError::BlockAuth { block_no: 1 })
        ));
    }

    #[test]
    fn holes_truncation_and_zero_nonce() {
        let mut c = cc();
        let mut f = c.encrypt_file(&[7u8; 2 * PLAIN_BS]).unwrap();
        f[HEADER_LEN..HEADER_LEN + CIPHER_BS].fill(0);
        let p = c.decrypt_file(&f).unwrap();
        assert!(p[..PLAIN_BS].iter().all(|&b| b == 0));
        assert!(p[PLAIN_BS..].iter().all(|&b| b == 7));
        // Truncated inside the last block's overhead: impossible size.
        let t = &f[..HEADER_LEN + CIPHER_BS + 20];
        assert!(matches!(
            c.decrypt_file(t),
            Err(FormatError::CipherSize { .. })
        ));
        // Truncated inside the data: the tag no longer matches.
        let t = &f[..f.len() - 1];
        assert!(matches!(
            c.decrypt_file(t),
            Err(FormatError::BlockAuth { block_no: 1 })
        ));
        // A partial all-zero block is not a hole.
        let g = c.encrypt_file(&[7u8; 100]).unwrap();
        let mut z = g.clone();
        z[HEADER_LEN..].fill(0);
        assert!(matches!(
            c.decrypt_file(&z),
            Err(FormatError::BlockZeroNonce { block_no: 0 })
        ));
    }
}
