//! AES-256-GCM with a caller-chosen nonce length, on reusable OpenSSL contexts.
//!
//! gocryptfs internal/cryptocore/cryptocore.go: `cipher.NewGCMWithNonceSize(aes, IVBitLen/8)`,
//! 128-bit nonces for content (feature flag GCMIV128), 96-bit only for master keys wrapped
//! by gocryptfs 1.2 and older (no HKDF flag). The tag is always 16 bytes.
//!
//! Both contexts are keyed once; each block only re-initialises the nonce, which keeps the
//! AES key schedule and GHASH table and costs no allocation.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

use crate::{FormatError, Result, KEY_LEN, TAG_LEN};

pub(crate) struct Gcm {
    enc: CipherCtx,
    dec: CipherCtx,
    nonce_len: usize,
}

impl Gcm {
    pub(crate) fn new(key: &[u8; KEY_LEN], nonce_len: usize) -> Result<Self> {
        let mut enc = CipherCtx::new()?;
        enc.encrypt_init(Some(Cipher::aes_256_gcm()), None, None)?;
        enc.set_iv_length(nonce_len)?;
        enc.encrypt_init(None, Some(key), None)?;
        let mut dec = CipherCtx::new()?;
        dec.decrypt_init(Some(Cipher::aes_256_gcm()), None, None)?;
        dec.set_iv_length(nonce_len)?;
        dec.decrypt_init(None, Some(key), None)?;
        Ok(Self {
            enc,
            dec,
            nonce_len,
        })
    }

    pub(crate) fn nonce_len(&self) -> usize {
        self.nonce_len
    }

    /// Seals `plain` into `out` = nonce || ciphertext || tag; `out` must be exactly
    /// `nonce_len + plain.len() + 16` bytes. Returns that length.
    pub(crate) fn seal(
        &mut self,
        nonce: &[u8],
        aad: &[u8],
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        let n = self.nonce_len;
        let total = n + plain.len() + TAG_LEN;
        if out.len() < total {
            return Err(FormatError::BufferTooSmall {
                have: out.len(),
                need: total,
            });
        }
        out[..n].copy_from_slice(nonce);
        self.enc.encrypt_init(None, None, Some(nonce))?;
        self.enc.cipher_update(aad, None)?;
        let body = &mut out[n..n + plain.len()];
        body.copy_from_slice(plain);
        self.enc.cipher_update_inplace(body, plain.len())?;
        self.enc.cipher_final(&mut [])?;
        self.enc.tag(&mut out[n + plain.len()..total])?;
        Ok(total)
    }

    /// Opens nonce || ciphertext || tag into `out` (at least `sealed.len() - nonce - 16`
    /// bytes). `Ok(None)` means the tag did not verify; `out` then holds garbage the caller
    /// must not use (the callers zero it).
    pub(crate) fn open(
        &mut self,
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<Option<usize>> {
        let n = self.nonce_len;
        debug_assert!(sealed.len() >= n + TAG_LEN);
        let body_len = sealed.len() - n - TAG_LEN;
        if out.len() < body_len {
            return Err(FormatError::BufferTooSmall {
                have: out.len(),
                need: body_len,
            });
        }
        let (nonce, rest) = sealed.split_at(n);
        let (body, tag) = rest.split_at(body_len);
        self.dec.decrypt_init(None, None, Some(nonce))?;
        self.dec.cipher_update(aad, None)?;
        let dst = &mut out[..body_len];
        dst.copy_from_slice(body);
        self.dec.cipher_update_inplace(dst, body_len)?;
        self.dec.set_tag(tag)?;
        if self.dec.cipher_final(&mut []).is_err() {
            // Drop OpenSSL's queued error so it does not surface in a later unrelated call.
            let _ = openssl::error::ErrorStack::get();
            out[..body_len].fill(0);
            return Ok(None);
        }
        Ok(Some(body_len))
    }
}
