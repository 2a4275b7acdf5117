//! EME (ECB-Mix-ECB), the wide-block tweakable cipher gocryptfs uses for file names.
//!
//! Halevi & Rogaway, "A Parallelizable Enciphering Mode" (2003), as implemented by
//! github.com/rfjakob/eme eme.go (`Transform`, `tabulateL`, `multByTwo`); the step
//! comments below carry that file's names so the two can be read side by side.
//! AES-256 single blocks come from OpenSSL in ECB mode without padding.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use zeroize::Zeroizing;

use crate::{Result, KEY_LEN};

const B: usize = 16;
/// eme.go: "EME operates on 1 to 128 block-cipher blocks" (2048 bytes).
pub(crate) const MAX_BLOCKS: usize = 16 * 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

pub(crate) struct Eme {
    key: Zeroizing<[u8; KEY_LEN]>,
}

/// eme.go `multByTwo`: doubling in GF(2^128) with the EME-32 draft's little-endian layout.
fn mult_by_two(x: &mut [u8; B]) {
    let carry_out = x[15] >= 128;
    let mut carry = false;
    for b in x.iter_mut() {
        let c = *b >= 128;
        *b = b.wrapping_mul(2) | u8::from(carry);
        carry = c;
    }
    if carry_out {
        x[0] ^= 135;
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

impl Eme {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            key: Zeroizing::new(*key),
        }
    }

    fn ctx(&self, dir: Direction) -> Result<CipherCtx> {
        let mut c = CipherCtx::new()?;
        match dir {
            Direction::Encrypt => {
                c.encrypt_init(Some(Cipher::aes_256_ecb()), Some(&self.key[..]), None)?
            }
            Direction::Decrypt => {
                c.decrypt_init(Some(Cipher::aes_256_ecb()), Some(&self.key[..]), None)?
            }
        }
        c.set_padding(false);
        Ok(c)
    }

    /// AES over whole 16-byte blocks of `buf`, in place.
    fn aes(ctx: &mut CipherCtx, buf: &mut [u8]) -> Result<()> {
        // ECB without padding emits every complete block at once; the extra block of room
        // is what the openssl crate's size check asks for.
        let mut tmp = Zeroizing::new(vec![0u8; buf.len() + B]);
        let n = ctx.cipher_update(buf, Some(&mut tmp[..]))?;
        debug_assert_eq!(n, buf.len());
        buf.copy_from_slice(&tmp[..buf.len()]);
        Ok(())
    }

    pub(crate) fn encrypt(&self, tweak: &[u8; B], data: &[u8]) -> Result<Vec<u8>> {
        self.transform(tweak, data, Direction::Encrypt)
    }

    pub(crate) fn decrypt(&self, tweak: &[u8; B], data: &[u8]) -> Result<Vec<u8>> {
        self.transform(tweak, data, Direction::Decrypt)
    }

    /// eme.go `Transform`. Callers guarantee `data.len()` is 16..=2048 and a multiple of 16.
    fn transform(&self, t: &[u8; B], p: &[u8], dir: Direction) -> Result<Vec<u8>> {
        assert!(
            !p.is_empty() && p.len() % B == 0 && p.len() / B <= MAX_BLOCKS,
            "EME input length {} (caller must check)",
            p.len()
        );
        let m = p.len() / B;
        let mut enc = self.ctx(Direction::Encrypt)?;
        let mut ctx = if dir == Direction::Encrypt {
            None
        } else {
            Some(self.ctx(dir)?)
        };

        // tabulateL: L0 = 2*AESenc(K; 0), L_i = 2*L_{i-1}; always the *encryption* of zero.
        let mut l = [0u8; B];
        Self::aes(&mut enc, &mut l)?;
        let mut l_table = Zeroizing::new(vec![[0u8; B]; m]);
        for li in l_table.iter_mut() {
            mult_by_two(&mut l);
            *li = l;
        }
        let ctx = ctx.as_mut().unwrap_or(&mut enc);

        // PPj = 2**(j-1)*L xor Pj ; PPPj = AES(K; PPj)
        let mut c = p.to_vec();
        for (j, cj) in c.chunks_exact_mut(B).enumerate() {
            xor_into(cj, &l_table[j]);
        }
        Self::aes(ctx, &mut c)?;

        // MP = (xorSum PPPj) xor T
        let mut mp = *t;
        for cj in c.chunks_exact(B) {
            xor_into(&mut mp, cj);
        }
        // MC = AES(K; MP)
        let mut mc = mp;
        Self::aes(ctx, &mut mc)?;
        // M = MP xor MC
        let mut mm = mp;
        xor_into(&mut mm, &mc);
        // CCCj = 2**(j-1)*M xor PPPj, for j >= 1
        for cj in c.chunks_exact_mut(B).skip(1) {
            mult_by_two(&mut mm);
            xor_into(cj, &mm);
        }
        // CCC1 = (xorSum CCCj) xor T xor MC
        let mut ccc1 = mc;
        xor_into(&mut ccc1, t);
        for cj in c.chunks_exact(B).skip(1) {
            xor_into(&mut ccc1, cj);
        }
        c[..B].copy_from_slice(&ccc1);
        // CCj = AES(K; CCCj) ; Cj = 2**(j-1)*L xor CCj
        Self::aes(ctx, &mut c)?;
        for (j, cj) in c.chunks_exact_mut(B).enumerate() {
            xor_into(cj, &l_table[j]);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_and_depends_on_tweak() {
        let e = Eme::new(&[7u8; 32]);
        let t1 = [1u8; 16];
        let t2 = [2u8; 16];
        for m in 1..=MAX_BLOCKS {
            let p: Vec<u8> = (0..m * 16).map(|i| (i * 31 % 251) as u8).collect();
            let c = e.encrypt(&t1, &p).unwrap();
            assert_ne!(c, p);
            assert_eq!(e.decrypt(&t1, &c).unwrap(), p, "m={m}");
            assert_ne!(e.encrypt(&t2, &p).unwrap(), c);
        }
    }

    #[test]
    fn one_changed_byte_changes_every_block() {
        // The wide-block property that makes EME fit for names: no shared prefixes leak.
        let e = Eme::new(&[9u8; 32]);
        let t = [3u8; 16];
        let p = vec![0x41u8; 64];
        let mut q = p.clone();
        q[63] ^= 1;
        let (a, b) = (e.encrypt(&t, &p).unwrap(), e.encrypt(&t, &q).unwrap());
        for j in 0..4 {
            assert_ne!(a[j * 16..j * 16 + 16], b[j * 16..j * 16 + 16]);
        }
    }
}
