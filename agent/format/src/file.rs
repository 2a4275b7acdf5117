//! Random-access read, write and truncate of one encrypted file over a ciphertext store.
//!
//! The store does the I/O (a local file, a remote object, a buffer in memory); this module
//! does what gocryptfs internal/fusefrontend/file.go (`doRead`, `doWrite`),
//! file_holes.go (`writePadHole`, `zeroPad`) and file_allocate_truncate.go (`truncate`,
//! `truncateGrowFile`) do, so files written here have the holes gocryptfs would make.

use std::io;

use crate::content::{ContentCipher, FileHeader, CIPHER_BS, HEADER_LEN, PLAIN_BS};
use crate::offsets::{self, explode_plain_range};
use crate::{FormatError, Result};

/// Where a file's ciphertext lives. Offsets are ciphertext offsets.
pub trait CipherStore {
    /// Current length of the ciphertext.
    fn cipher_len(&mut self) -> io::Result<u64>;
    /// Reads into `buf` from `offset`; returns the bytes read, short only at the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`. Writing past the end extends the store and the gap
    /// reads as zeros (pwrite semantics: that gap is how holes are made).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cuts or zero-extends the store to `len` bytes (ftruncate semantics).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `offset` into a new buffer (short only at the end). A
    /// store that receives its bytes in a buffer of its own hands that buffer over instead
    /// of copying it.
    fn read_vec(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self.read_at(offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
    /// An empty buffer with room for `len` bytes, for blocks to be sealed into and then
    /// passed to [`CipherStore::write_vec`]. A store that keeps buffers for reuse lends one.
    fn lend(&mut self, len: usize) -> Vec<u8> {
        Vec::with_capacity(len)
    }
    /// [`CipherStore::write_at`] of a buffer the store may keep afterwards.
    fn write_vec(&mut self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        self.write_at(offset, &data)
    }
}

/// A store in memory: for tests, and for callers that fetch whole objects.
impl CipherStore for Vec<u8> {
    fn cipher_len(&mut self) -> io::Result<u64> {
        Ok(Vec::len(self) as u64)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(Vec::len(self));
        let n = buf.len().min(Vec::len(self) - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let end = start + data.len();
        if Vec::len(self) < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(data);
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.resize(
            usize::try_from(len).map_err(|_| io::Error::other("length too large"))?,
            0,
        );
        Ok(())
    }
}

fn cipher_ended(offset: u64, wanted: usize, got: usize) -> FormatError {
    FormatError::Store(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "ciphertext ended at {} while reading {wanted} bytes at {offset}",
            offset + got as u64
        ),
    ))
}

/// One encrypted file, opened over its store. Caches the header (the file ID).
pub struct CryptFile<S> {
    store: S,
    header: Option<FileHeader>,
}

impl<S: CipherStore> CryptFile<S> {
    /// Opens the file; reads and checks the header unless the file is empty.
    pub fn open(mut store: S) -> Result<Self> {
        let len = store.cipher_len()?;
        offsets::cipher_size_to_plain_size(len)?;
        let header = if len == 0 {
            None
        } else {
            let mut h = [0u8; HEADER_LEN];
            let n = store.read_at(0, &mut h)?;
            Some(FileHeader::parse(&h[..n])?)
        };
        Ok(Self { store, header })
    }

    pub fn into_inner(self) -> S {
        self.store
    }

    pub fn header(&self) -> Option<&FileHeader> {
        self.header.as_ref()
    }

    /// The plaintext size, from the ciphertext size. A size no gocryptfs file can have
    /// (cut inside a header or a block's overhead) is an error.
    pub fn plain_size(&mut self) -> Result<u64> {
        offsets::cipher_size_to_plain_size(self.store.cipher_len()?)
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.store.read_at(offset, buf)?;
        if n != buf.len() {
            return Err(cipher_ended(offset, buf.len(), n));
        }
        Ok(())
    }

    /// Reads plaintext at `offset` into `buf`; returns the bytes read (short at end of file).
    pub fn read(&mut self, cc: &mut ContentCipher, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let plain = self.read_vec(cc, offset, buf.len())?;
        buf[..plain.len()].copy_from_slice(&plain);
        Ok(plain.len())
    }

    /// Reads up to `len` bytes of plaintext at `offset` (short at end of file), decrypted
    /// in the buffer the ciphertext arrived in: a large sequential read then costs no
    /// buffer of its own. Same result as [`CryptFile::read`].
    pub fn read_vec(&mut self, cc: &mut ContentCipher, offset: u64, len: usize) -> Result<Vec<u8>> {
        let size = self.plain_size()?;
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let want = (len as u64).min(size - offset);
        let spans: Vec<_> = explode_plain_range(offset, want).collect();
        let (first, last) = (spans[0].block_no, spans[spans.len() - 1].block_no);
        let (coff, clen) = offsets::cipher_range_for_blocks(first, last, size);
        let mut buf = self.store.read_vec(coff, clen as usize)?;
        if buf.len() as u64 != clen {
            return Err(cipher_ended(coff, clen as usize, buf.len()));
        }
        let id = self.file_id()?;
        let mut plain = zeroize::Zeroizing::new([0u8; PLAIN_BS]);
        let mut done = 0usize;
        for (i, s) in spans.iter().enumerate() {
            let from = i * CIPHER_BS;
            let to = (from + CIPHER_BS).min(buf.len());
            let n = cc.decrypt_block(&id, s.block_no, &buf[from..to], &mut plain[..])?;
            let end = (s.skip + s.len).min(n);
            let got = end.saturating_sub(s.skip);
            // Block i's plaintext lands below (i + 1) * PLAIN_BS, before block i + 1's
            // ciphertext starts at (i + 1) * CIPHER_BS: nothing still to be read is
            // overwritten.
            buf[done..done + got].copy_from_slice(&plain[s.skip..end]);
            done += got;
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn file_id(&self) -> Result<crate::FileId> {
        self.header.map(|h| h.id).ok_or(FormatError::CipherSize {
            size: 0,
            reason: "a non-empty file without a header",
        })
    }

    /// Reads one whole block's plaintext (zeros for a hole); empty past the end.
    fn read_block(
        &mut self,
        cc: &mut ContentCipher,
        block_no: u64,
        size: u64,
        out: &mut [u8; PLAIN_BS],
    ) -> Result<usize> {
        if block_no >= offsets::block_count(size) {
            return Ok(0);
        }
        let (coff, clen) = offsets::cipher_range_for_blocks(block_no, block_no, size);
        let mut sealed = [0u8; CIPHER_BS];
        self.read_exact_at(coff, &mut sealed[..clen as usize])?;
        let id = self.file_id()?;
        cc.decrypt_block(&id, block_no, &sealed[..clen as usize], &mut out[..])
    }

    /// Writes `data` at plaintext `offset`, read-modify-writing partial blocks. Writing past
    /// the end pads the old last block with zeros and leaves whole blocks in between as holes.
    pub fn write(&mut self, cc: &mut ContentCipher, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut size = self.plain_size()?;
        if self.header.is_none() || size == 0 {
            // file.go `createHeader`: an empty file gets its header with the first write.
            let h = FileHeader::new_random()?;
            self.store.set_len(0)?;
            self.store.write_at(0, &h.to_bytes())?;
            self.header = Some(h);
            size = 0;
        }
        // file_holes.go `writePadHole`.
        let next_block = offsets::plain_off_to_block_no(size);
        if offsets::plain_off_to_block_no(offset) > next_block && size % PLAIN_BS as u64 != 0 {
            let pad = vec![0u8; PLAIN_BS - (size % PLAIN_BS as u64) as usize];
            self.write_blocks(cc, size, &pad, size)?;
            size = self.plain_size()?;
        }
        self.write_blocks(cc, offset, data, size)
    }

    fn write_blocks(
        &mut self,
        cc: &mut ContentCipher,
        offset: u64,
        data: &[u8],
        size: u64,
    ) -> Result<()> {
        let id = self.file_id()?;
        let spans: Vec<_> = explode_plain_range(offset, data.len() as u64).collect();
        let mut sealed = self.store.lend(spans.len() * CIPHER_BS);
        sealed.resize(spans.len() * CIPHER_BS, 0);
        let mut block = zeroize::Zeroizing::new([0u8; PLAIN_BS]);
        let mut used = 0usize;
        let mut consumed = 0usize;
        for s in &spans {
            let mut len = if s.is_full() {
                0
            } else {
                // file.go `doWrite`: read the old block, merge (content.go `MergeBlocks`).
                self.read_block(cc, s.block_no, size, &mut block)?
            };
            block[len.min(s.skip)..s.skip].fill(0);
            block[s.skip..s.skip + s.len].copy_from_slice(&data[consumed..consumed + s.len]);
            consumed += s.len;
            len = len.max(s.skip + s.len);
            used += cc.encrypt_block(&id, s.block_no, &block[..len], &mut sealed[used..])?;
        }
        sealed.truncate(used);
        self.store.write_vec(spans[0].cipher_off(), sealed)?;
        Ok(())
    }

    /// Sets the plaintext size (file_allocate_truncate.go `truncate`): shrinking re-encrypts
    /// the new last block; growing pads the old last block and leaves holes.
    pub fn truncate(&mut self, cc: &mut ContentCipher, new_size: u64) -> Result<()> {
        if new_size == 0 {
            self.store.set_len(0)?;
            self.header = None;
            return Ok(());
        }
        let old = self.plain_size()?;
        if new_size == old {
            return Ok(());
        }
        let pbs = PLAIN_BS as u64;
        if new_size > old {
            // truncateGrowFile.
            if old > 0
                && offsets::plain_off_to_block_no(old - 1)
                    == offsets::plain_off_to_block_no(new_size - 1)
            {
                return self.write(cc, new_size - 1, &[0]);
            }
            if old % pbs != 0 {
                let pad = vec![0u8; (pbs - old % pbs) as usize];
                self.write(cc, old, &pad)?;
            }
            if new_size % pbs == 0 {
                if self.header.is_none() || old == 0 {
                    let h = FileHeader::new_random()?;
                    self.store.set_len(0)?;
                    self.store.write_at(0, &h.to_bytes())?;
                    self.header = Some(h);
                }
                self.store
                    .set_len(offsets::plain_size_to_cipher_size(new_size))?;
                return Ok(());
            }
            return self.write(cc, new_size - 1, &[0]);
        }
        // Shrink: keep the partial last block's data, cut, write it back.
        let block_no = offsets::plain_off_to_block_no(new_size);
        let plain_off = offsets::block_no_to_plain_off(block_no);
        let keep = (new_size - plain_off) as usize;
        let mut tail = zeroize::Zeroizing::new([0u8; PLAIN_BS]);
        if keep > 0 {
            let n = self.read_block(cc, block_no, old, &mut tail)?;
            debug_assert!(n >= keep);
        }
        self.store
            .set_len(offsets::block_no_to_cipher_off(block_no))?;
        if keep > 0 {
            self.write_blocks(cc, plain_off, &tail[..keep], plain_off)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::CIPHER_BS;

    fn cc() -> ContentCipher {
        ContentCipher::new(&[8u8; 32], 16).unwrap()
    }

    /// A tiny deterministic generator so the model check is repeatable.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_writes_reads_and_truncates_match_a_plain_model() {
        let mut c = cc();
        let mut f = CryptFile::open(Vec::new()).unwrap();
        let mut model: Vec<u8> = Vec::new();
        let mut seed = 0x1234_5678_9abc_def1u64;
        for step in 0..400 {
            let op = rng(&mut seed) % 10;
            let off = rng(&mut seed) % (6 * PLAIN_BS as u64);
            let len = (rng(&mut seed) % (2 * PLAIN_BS as u64 + 10)) as usize;
            if op < 6 {
                let data: Vec<u8> = (0..len).map(|_| (rng(&mut seed) % 255 + 1) as u8).collect();
                f.write(&mut c, off, &data).unwrap();
                let end = off as usize + len;
                if len > 0 && model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..off as usize + len].copy_from_slice(&data);
            } else if op < 8 {
                f.truncate(&mut c, off).unwrap();
                model.resize(off as usize, 0);
            } else {
                let mut buf = vec![0u8; len];
                let n = f.read(&mut c, off, &mut buf).unwrap();
                let want = model
                    .get(off as usize..)
                    .map_or(&[][..], |m| &m[..m.len().min(len)]);
                assert_eq!(&buf[..n], want, "step {step}");
            }
            assert_eq!(f.plain_size().unwrap(), model.len() as u64, "step {step}");
        }
        let mut all = vec![0u8; model.len()];
        assert_eq!(f.read(&mut c, 0, &mut all).unwrap(), model.len());
        assert_eq!(all, model);
        let sealed = f.into_inner();
        assert_eq!(&c.decrypt_file(&sealed).unwrap()[..], &model[..]);
    }

    #[test]
    fn writing_far_past_the_end_leaves_holes_like_gocryptfs() {
        let mut c = cc();
        let mut f = CryptFile::open(Vec::new()).unwrap();
        f.write(&mut c, 0, b"abc").unwrap();
        f.write(&mut c, 5 * PLAIN_BS as u64, b"z").unwrap();
        let raw = f.into_inner();
        // Block 0 padded to 4096 and sealed; blocks 1..=4 are all-zero holes; block 5 is 1 byte.
        assert_eq!(raw.len(), HEADER_LEN + 5 * CIPHER_BS + 33);
        for b in 1..5 {
            let s = HEADER_LEN + b * CIPHER_BS;
            assert!(
                raw[s..s + CIPHER_BS].iter().all(|&x| x == 0),
                "block {b} not a hole"
            );
        }
        let plain = c.decrypt_file(&raw).unwrap();
        assert_eq!(&plain[..3], b"abc");
        assert!(plain[3..5 * PLAIN_BS].iter().all(|&x| x == 0));
        assert_eq!(plain[5 * PLAIN_BS], b'z');
    }
}
