//! Key derivation: scrypt for the passphrase, HKDF-SHA256 for the per-purpose keys.

use openssl::md::Md;
use openssl::pkey::Id;
use openssl::pkey_ctx::PkeyCtx;
use zeroize::Zeroizing;

use crate::{FormatError, Result, KEY_LEN};

/// HKDF "info" strings, byte for byte as gocryptfs internal/cryptocore/hkdf.go
/// (`hkdfInfoGCMContent`, `hkdfInfoEMENames`). Changing one makes every volume unreadable.
pub(crate) const HKDF_INFO_GCM_CONTENT: &[u8] = b"AES-GCM file content encryption";
pub(crate) const HKDF_INFO_EME_NAMES: &[u8] = b"EME filename encryption";

/// HKDF-SHA256 (RFC 5869) with no salt, as gocryptfs internal/cryptocore/hkdf.go `hkdfDerive`
/// (Go's hkdf.Key with a nil salt; OpenSSL's unset salt is the same all-zero HashLen salt).
pub(crate) fn hkdf_sha256(ikm: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_md(Md::sha256())?;
    ctx.set_hkdf_key(ikm)?;
    ctx.add_hkdf_info(info)?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    ctx.derive(Some(&mut out[..]))?;
    Ok(out)
}

/// scrypt parameters as stored in gocryptfs.conf (`ScryptObject`), after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScryptParams {
    pub salt: Vec<u8>,
    pub n: u64,
    pub r: u64,
    pub p: u64,
    pub key_len: usize,
}

/// gocryptfs internal/configfile/scrypt.go: `scryptMinLogN = 10`, `scryptMinR = 8`,
/// `scryptMinP = 1`, `scryptMinSaltLen = 32`. Lower values in a config are an attack
/// (a weakened config planted next to the data), so they are refused, as gocryptfs does.
pub const SCRYPT_MIN_LOG_N: u8 = 10;
const SCRYPT_MIN_R: u64 = 8;
const SCRYPT_MIN_P: u64 = 1;
const SCRYPT_MIN_SALT_LEN: usize = 32;
/// gocryptfs's default cost (`ScryptDefaultLogN = 16`, 64 MiB of memory).
pub const SCRYPT_DEFAULT_LOG_N: u8 = 16;
/// A hostile config could ask for terabytes; 2 GiB is 32 times gocryptfs's default and still
/// fits the smallest machine cloudstore runs on. Also bounds `-scryptn` up to 20 at r=8.
const SCRYPT_MAX_MEMORY: u64 = 2 << 30;
/// Upper bound on a salt: gocryptfs writes 32 bytes; anything huge is garbage.
const SCRYPT_MAX_SALT_LEN: usize = 1024;

impl ScryptParams {
    /// Fresh parameters with a random 32-byte salt, as gocryptfs `NewScryptKDF(logN)`.
    pub fn new_random(log_n: u8) -> Result<Self> {
        let mut salt = vec![0u8; SCRYPT_MIN_SALT_LEN];
        openssl::rand::rand_bytes(&mut salt)?;
        let p = Self {
            salt,
            n: 1u64.checked_shl(u32::from(log_n)).unwrap_or(0),
            r: 8,
            p: 1,
            key_len: KEY_LEN,
        };
        p.validate()?;
        Ok(p)
    }

    /// log2(N), as gocryptfs `ScryptKDF.LogN()`.
    pub fn log_n(&self) -> u8 {
        // validate() guarantees N is a power of two below 2^64.
        self.n.trailing_zeros() as u8
    }

    fn memory(&self) -> u64 {
        // scrypt's V array is 128*r*N bytes; B is 128*r*p.
        128u64
            .saturating_mul(self.r)
            .saturating_mul(self.n.saturating_add(self.p))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FormatError::ScryptParams(m));
        if self.n < (1 << SCRYPT_MIN_LOG_N) {
            return bad(format!(
                "N={} is below the minimum 2^{SCRYPT_MIN_LOG_N}",
                self.n
            ));
        }
        if !self.n.is_power_of_two() {
            return bad(format!("N={} is not a power of two", self.n));
        }
        if self.r < SCRYPT_MIN_R {
            return bad(format!("R={} is below the minimum {SCRYPT_MIN_R}", self.r));
        }
        if self.p < SCRYPT_MIN_P {
            return bad(format!("P={} is below the minimum {SCRYPT_MIN_P}", self.p));
        }
        if self.salt.len() < SCRYPT_MIN_SALT_LEN || self.salt.len() > SCRYPT_MAX_SALT_LEN {
            return bad(format!(
                "salt is {} bytes; {SCRYPT_MIN_SALT_LEN}..={SCRYPT_MAX_SALT_LEN} accepted",
                self.salt.len()
            ));
        }
        // gocryptfs internal/cryptocore/cryptocore.go New() panics unless the key is 32 bytes.
        if self.key_len != KEY_LEN {
            return bad(format!("KeyLen={} (must be {KEY_LEN})", self.key_len));
        }
        if self.memory() > SCRYPT_MAX_MEMORY {
            return bad(format!(
                "N={} R={} P={} needs {} MiB, more than the {} MiB limit",
                self.n,
                self.r,
                self.p,
                self.memory() >> 20,
                SCRYPT_MAX_MEMORY >> 20
            ));
        }
        Ok(())
    }

    /// The key-encryption key: scrypt(passphrase, salt, N, r, p, KeyLen),
    /// as gocryptfs internal/configfile/scrypt.go `DeriveKey`.
    pub(crate) fn derive(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        self.validate()?;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // maxmem must cover V and B plus OpenSSL's own slack.
        let maxmem = self.memory() + (1 << 20);
        openssl::pkcs5::scrypt(
            passphrase,
            &self.salt,
            self.n,
            self.r,
            self.p,
            maxmem,
            &mut out[..],
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_matches_rfc5869_case_3() {
        // RFC 5869 test case 3 (SHA-256, no salt, no info), first 32 bytes of OKM.
        let ikm = [0x0bu8; 22];
        let okm = hkdf_sha256(&ikm, b"").unwrap();
        let want = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d";
        assert_eq!(hex(&okm[..]), want);
    }

    #[test]
    fn scrypt_matches_rfc7914() {
        // RFC 7914 section 12, second vector (N=1024, r=8, p=16), first 32 bytes.
        // p=16 is fine for derive(); only validate() keeps N>=2^10 etc.
        let p = ScryptParams {
            salt: b"NaCl".to_vec(),
            n: 1024,
            r: 8,
            p: 16,
            key_len: 32,
        };
        let mut out = [0u8; 32];
        openssl::pkcs5::scrypt(
            b"password",
            &p.salt,
            p.n,
            p.r,
            p.p,
            p.memory() + (1 << 20),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            hex(&out),
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        );
        // The short salt is refused by validate(), as gocryptfs would.
        assert!(matches!(p.validate(), Err(FormatError::ScryptParams(_))));
    }

    #[test]
    fn hostile_scrypt_parameters_are_refused() {
        let ok = ScryptParams::new_random(10).unwrap();
        for (m, f) in [
            (
                "N low",
                ScryptParams {
                    n: 512,
                    ..ok.clone()
                },
            ),
            (
                "N not pow2",
                ScryptParams {
                    n: 1500,
                    ..ok.clone()
                },
            ),
            ("R low", ScryptParams { r: 1, ..ok.clone() }),
            ("P zero", ScryptParams { p: 0, ..ok.clone() }),
            (
                "huge",
                ScryptParams {
                    n: 1 << 40,
                    ..ok.clone()
                },
            ),
            (
                "keylen",
                ScryptParams {
                    key_len: 64,
                    ..ok.clone()
                },
            ),
        ] {
            assert!(f.validate().is_err(), "{m} accepted");
        }
    }

    pub(crate) fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
