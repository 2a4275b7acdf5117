//! gocryptfs-compatible volume format: crypto core, content and name encryption, config file. No I/O.
//!
//! A volume is a directory that gocryptfs 2.x (and cppcryptfs, DroidFS) can mount with the
//! passphrase alone. This crate turns bytes into bytes; whoever holds the files does the I/O:
//!
//! - [`Config`]: parse / create / serialise `gocryptfs.conf`, [`Config::unlock`] the
//!   [`MasterKey`] with the passphrase, [`Config::change_passphrase`].
//! - [`Volume`]: the keys derived from the master key; hands out a [`ContentCipher`] per
//!   thread and the shared [`NameCipher`].
//! - [`content`]: [`FileHeader`] and per-block [`ContentCipher::encrypt_block`] /
//!   [`ContentCipher::decrypt_block`]; [`offsets`] maps plaintext ranges to blocks.
//! - [`file::CryptFile`]: random-access read / write / truncate of one file over any
//!   [`file::CipherStore`] (local file, remote object, memory).
//! - [`names`]: EME names, long names, diriv, reserved names, symlink targets.
//!
//! The spec is gocryptfs's Documentation/file-format.md and sources; each module cites the
//! files it follows. docs/format.md has the byte counts.
#![forbid(unsafe_code)]

mod aead;
pub mod config;
pub mod content;
mod eme;
mod error;
pub mod file;
mod kdf;
pub mod names;
pub mod offsets;

use zeroize::Zeroizing;

pub use config::{Config, CreateOptions, FeatureFlags};
pub use content::{ContentCipher, FileHeader, FileId, CIPHER_BS, HEADER_LEN, PLAIN_BS};
pub use error::{FormatError, Result};
pub use kdf::{ScryptParams, SCRYPT_DEFAULT_LOG_N, SCRYPT_MIN_LOG_N};
pub use names::{DirIv, EncryptedName, NameCipher, NameKind};

/// All keys are AES-256 (cryptocore.go `KeyLen`).
pub const KEY_LEN: usize = 32;
/// GCM tag (cryptocore.go `AuthTagLen`).
pub const TAG_LEN: usize = 16;

/// The volume's 32-byte master key. Zeroed on drop; `Debug` does not print it.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn new_random() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        openssl::rand::rand_bytes(&mut k[..])?;
        Ok(Self(k))
    }

    /// From raw bytes (gocryptfs `-masterkey`, or a key a trusted peer handed over).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = b
            .try_into()
            .map_err(|_| FormatError::MasterKeyLength(b.len()))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// An unlocked volume: the derived keys and name rules. Immutable and shareable; make one
/// [`ContentCipher`] per thread with [`Volume::content_cipher`].
pub struct Volume {
    content_key: Zeroizing<[u8; KEY_LEN]>,
    names: NameCipher,
    flags: FeatureFlags,
}

impl Volume {
    /// Derives the content and name keys (cryptocore.go `New`: HKDF-SHA256 of the master key
    /// with "AES-GCM file content encryption" and "EME filename encryption", or the master
    /// key itself on pre-HKDF volumes).
    pub fn new(config: &Config, key: &MasterKey) -> Result<Self> {
        let flags = config.flags().clone();
        let (content_key, eme_key) = if flags.hkdf {
            (
                kdf::hkdf_sha256(key.as_bytes(), kdf::HKDF_INFO_GCM_CONTENT)?,
                kdf::hkdf_sha256(key.as_bytes(), kdf::HKDF_INFO_EME_NAMES)?,
            )
        } else {
            (
                Zeroizing::new(*key.as_bytes()),
                Zeroizing::new(*key.as_bytes()),
            )
        };
        let b64 = if flags.raw64 {
            names::B64::Raw
        } else {
            names::B64::Padded
        };
        // names.go `New`: with LongNames, hash above LongNameMax (default 255); without, never.
        let long_max = flags
            .long_names
            .then(|| flags.long_name_max.map_or(names::NAME_MAX, usize::from));
        let eme = (!flags.plaintext_names).then_some(&*eme_key);
        let names = NameCipher::new(eme, b64, long_max, flags.dir_iv);
        Ok(Self {
            content_key,
            names,
            flags,
        })
    }

    /// Parses a config, unlocks it with the passphrase and derives the keys.
    pub fn open(config_bytes: &[u8], passphrase: &[u8]) -> Result<(Config, Self)> {
        let config = Config::parse(config_bytes)?;
        let key = config.unlock(passphrase)?;
        let vol = Self::new(&config, &key)?;
        Ok((config, vol))
    }

    /// A fresh content cipher (two keyed OpenSSL contexts) for one thread.
    pub fn content_cipher(&self) -> Result<ContentCipher> {
        ContentCipher::new(&self.content_key, content::NONCE_LEN)
    }

    pub fn names(&self) -> &NameCipher {
        &self.names
    }

    pub fn flags(&self) -> &FeatureFlags {
        &self.flags
    }
}
