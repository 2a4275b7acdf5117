//! File names and symlink targets (gocryptfs internal/nametransform/*.go,
//! internal/fusefrontend/root_node.go `encryptSymlinkTarget`).
//!
//! ```text
//! name      = base64url( EME(K_eme, tweak = dir IV, PKCS#7-pad16(plain name)) )   no '=' with Raw64
//! long name = "gocryptfs.longname." + base64url(SHA-256(name))  when name > 255 bytes (LongNameMax),
//!             the full name stored in "<long name>.name"
//! symlink   = base64url( content block 0 sealed without file ID )
//! ```

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::content::ContentCipher;
use crate::eme::{Eme, MAX_BLOCKS};
use crate::{FormatError, Result, KEY_LEN};

/// Per-directory IV file (nametransform/diriv.go `DirIVFilename`).
pub const DIRIV_NAME: &str = "gocryptfs.diriv";
/// The config file in the volume root (configfile/config_file.go `ConfDefaultName`).
pub const CONFIG_NAME: &str = "gocryptfs.conf";
/// nametransform/longnames.go `longNamePrefix` and `LongNameSuffix`.
pub const LONGNAME_PREFIX: &str = "gocryptfs.longname.";
pub const LONGNAME_SUFFIX: &str = ".name";
/// nametransform/names.go `NameMax`: like ext4, at most 255 bytes for a plaintext name, and
/// the default threshold above which an encrypted name is hashed.
pub const NAME_MAX: usize = 255;
/// nametransform/longnames.go `ReadLongNameAt`: 255 bytes padded to 256, base64 with
/// padding, is 344 bytes; a bigger .name file is corrupt.
pub const LONGNAME_FILE_MAX: usize = 344;
/// diriv.go `DirIVLen`.
pub const DIRIV_LEN: usize = 16;

/// A directory's name-encryption tweak, stored in its `gocryptfs.diriv`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DirIv(pub [u8; DIRIV_LEN]);

impl DirIv {
    /// The tweak of volumes without the DirIV flag (`-deterministic-names`): all zeros
    /// (diriv.go `ReadDirIVAt` with deterministicNames).
    pub const ZERO: DirIv = DirIv([0; DIRIV_LEN]);

    pub fn new_random() -> Result<Self> {
        let mut iv = [0u8; DIRIV_LEN];
        while iv == [0; DIRIV_LEN] {
            openssl::rand::rand_bytes(&mut iv)?;
        }
        Ok(Self(iv))
    }

    /// diriv.go `fdReadDirIV`: exactly 16 bytes, not all zero.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() != DIRIV_LEN || buf.iter().all(|&b| b == 0) {
            return Err(FormatError::DirIv(buf.len()));
        }
        let mut iv = [0u8; DIRIV_LEN];
        iv.copy_from_slice(buf);
        Ok(Self(iv))
    }
}

/// What an entry of a ciphertext directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameKind {
    /// `gocryptfs.conf` (meaningful in the root only).
    Config,
    /// `gocryptfs.diriv`.
    DirIv,
    /// `gocryptfs.longname.<hash>`: the entry itself, its name in the `.name` file beside it.
    LongContent,
    /// `gocryptfs.longname.<hash>.name`: holds the full encrypted name of the entry above.
    LongNameFile,
    /// An ordinary encrypted (or, with PlaintextNames, plain) name.
    Regular,
}

/// nametransform/longnames.go `NameType`, plus the two reserved names.
pub fn classify(cipher_name: &[u8]) -> NameKind {
    if cipher_name == CONFIG_NAME.as_bytes() {
        NameKind::Config
    } else if cipher_name == DIRIV_NAME.as_bytes() {
        NameKind::DirIv
    } else if cipher_name.starts_with(LONGNAME_PREFIX.as_bytes()) {
        if cipher_name.ends_with(LONGNAME_SUFFIX.as_bytes()) {
            NameKind::LongNameFile
        } else {
            NameKind::LongContent
        }
    } else {
        NameKind::Regular
    }
}

/// The on-disk form of a plaintext name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptedName {
    /// The directory entry is this name.
    Short(String),
    /// The directory entry is `hashed` (`gocryptfs.longname.…`), and `hashed + ".name"` holds
    /// `full`, the encrypted name that was too long.
    Long { hashed: String, full: String },
    /// PlaintextNames volumes store names as they are.
    Plain(Vec<u8>),
}

impl EncryptedName {
    /// The name of the directory entry.
    pub fn entry(&self) -> &[u8] {
        match self {
            Self::Short(s) | Self::Long { hashed: s, .. } => s.as_bytes(),
            Self::Plain(p) => p,
        }
    }
}

/// nametransform/valid.go `IsValidName`.
fn check_plain_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FormatError::NameTooLong(name.len()));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&0) || name.contains(&b'/')
    {
        return Err(FormatError::NameInvalid(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum B64 {
    /// Feature flag Raw64: base64url without padding.
    Raw,
    /// Pre-Raw64 volumes (gocryptfs 1.0 and 1.1): base64url with '=' padding.
    Padded,
}

impl B64 {
    pub(crate) fn encode(self, data: &[u8]) -> String {
        match self {
            Self::Raw => URL_SAFE_NO_PAD.encode(data),
            Self::Padded => URL_SAFE.encode(data),
        }
    }
    /// Strict like Go's `Encoding.Strict()`: canonical padding and no stray bits or newlines.
    pub(crate) fn decode(self, s: &[u8]) -> std::result::Result<Vec<u8>, String> {
        match self {
            Self::Raw => URL_SAFE_NO_PAD.decode(s),
            Self::Padded => URL_SAFE.decode(s),
        }
        .map_err(|e| e.to_string())
    }
}

/// Encrypts and decrypts names in one volume. Immutable; share it freely.
pub struct NameCipher {
    /// None with PlaintextNames.
    eme: Option<Eme>,
    b64: B64,
    /// Encrypted names longer than this are hashed; None without the LongNames flag.
    long_name_max: Option<usize>,
    dir_iv: bool,
}

impl NameCipher {
    pub(crate) fn new(
        eme_key: Option<&[u8; KEY_LEN]>,
        b64: B64,
        long_name_max: Option<usize>,
        dir_iv: bool,
    ) -> Self {
        Self {
            eme: eme_key.map(Eme::new),
            b64,
            long_name_max,
            dir_iv,
        }
    }

    /// Whether names are stored unencrypted (feature flag PlaintextNames).
    pub fn is_plaintext(&self) -> bool {
        self.eme.is_none()
    }

    /// Whether every directory carries a `gocryptfs.diriv` (feature flag DirIV). Without it,
    /// use [`DirIv::ZERO`].
    pub fn uses_dir_iv(&self) -> bool {
        self.dir_iv && self.eme.is_some()
    }

    /// Encrypts one plaintext name for the directory whose IV is `dir_iv`
    /// (names.go `EncryptAndHashName`).
    pub fn encrypt_name(&self, dir_iv: &DirIv, name: &[u8]) -> Result<EncryptedName> {
        check_plain_name(name)?;
        let Some(eme) = &self.eme else {
            // configfile: with PlaintextNames "gocryptfs.conf" in the root is reserved; the
            // caller knows which directory is the root, so all reserved names are refused.
            if name == CONFIG_NAME.as_bytes() {
                return Err(FormatError::ReservedName(CONFIG_NAME.into()));
            }
            return Ok(EncryptedName::Plain(name.to_vec()));
        };
        // pad16.go: PKCS#7 to a multiple of 16, always at least one byte of padding.
        let pad = 16 - name.len() % 16;
        let mut padded = zeroize::Zeroizing::new(Vec::with_capacity(name.len() + pad));
        padded.extend_from_slice(name);
        padded.resize(name.len() + pad, pad as u8);
        let full = self.b64.encode(&eme.encrypt(&dir_iv.0, &padded)?);
        match self.long_name_max {
            Some(max) if full.len() > max => Ok(EncryptedName::Long {
                hashed: self.hash_long_name(&full),
                full,
            }),
            None if full.len() > NAME_MAX => Err(FormatError::EncryptedNameTooLong(full.len())),
            _ => Ok(EncryptedName::Short(full)),
        }
    }

    /// longnames.go `HashLongName`.
    fn hash_long_name(&self, full: &str) -> String {
        let h = openssl::sha::sha256(full.as_bytes());
        format!("{LONGNAME_PREFIX}{}", self.b64.encode(&h))
    }

    /// Decrypts a regular directory entry name (names.go `DecryptName`). Reserved and
    /// long-name entries are not names: see [`classify`] and [`decrypt_long_name`](Self::decrypt_long_name).
    pub fn decrypt_name(&self, dir_iv: &DirIv, cipher_name: &[u8]) -> Result<Vec<u8>> {
        let Some(eme) = &self.eme else {
            check_plain_name(cipher_name)?;
            return Ok(cipher_name.to_vec());
        };
        let shown = || String::from_utf8_lossy(cipher_name).into_owned();
        let bin = self
            .b64
            .decode(cipher_name)
            .map_err(|reason| FormatError::NameBase64 {
                name: shown(),
                reason,
            })?;
        if bin.is_empty() || bin.len() % 16 != 0 || bin.len() / 16 > MAX_BLOCKS {
            return Err(FormatError::NameLength {
                name: shown(),
                len: bin.len(),
            });
        }
        let plain = zeroize::Zeroizing::new(eme.decrypt(&dir_iv.0, &bin)?);
        // pad16.go unPad16: 1..=16 identical padding bytes, shorter than the whole.
        let pad = usize::from(*plain.last().unwrap_or(&0));
        if pad == 0
            || pad > 16
            || pad >= plain.len()
            || plain[plain.len() - pad..]
                .iter()
                .any(|&b| usize::from(b) != pad)
        {
            return Err(FormatError::NamePadding { name: shown() });
        }
        let name = plain[..plain.len() - pad].to_vec();
        check_plain_name(&name)?;
        Ok(name)
    }

    /// Decrypts a long name: `hashed` is the `gocryptfs.longname.<hash>` entry, `name_file`
    /// the content of its `.name` file. The hash is checked, so a `.name` file moved from
    /// another entry is caught.
    pub fn decrypt_long_name(
        &self,
        dir_iv: &DirIv,
        hashed: &[u8],
        name_file: &[u8],
    ) -> Result<Vec<u8>> {
        if name_file.is_empty() || name_file.len() > LONGNAME_FILE_MAX {
            return Err(FormatError::LongNameFileSize(name_file.len()));
        }
        let full = std::str::from_utf8(name_file).map_err(|_| FormatError::NameBase64 {
            name: String::from_utf8_lossy(name_file).into_owned(),
            reason: "not ASCII".into(),
        })?;
        if self.hash_long_name(full).as_bytes() != hashed {
            return Err(FormatError::NamePadding {
                name: String::from_utf8_lossy(hashed).into_owned(),
            });
        }
        self.decrypt_name(dir_iv, name_file)
    }

    /// The on-disk target of a symlink (root_node.go `encryptSymlinkTarget`): the target
    /// sealed like content block 0 with no file ID, then base64url. Empty stays empty;
    /// PlaintextNames volumes store targets as they are (node.go `Symlink`).
    pub fn encrypt_symlink_target(&self, cc: &mut ContentCipher, target: &[u8]) -> Result<Vec<u8>> {
        if self.eme.is_none() || target.is_empty() {
            return Ok(target.to_vec());
        }
        if target.len() > crate::content::PLAIN_BS {
            return Err(FormatError::SymlinkTarget {
                target: String::from_utf8_lossy(target).into_owned(),
                reason: "longer than 4096 bytes (PATH_MAX)".into(),
            });
        }
        let mut out = vec![0u8; cc.sealed_len(target.len())];
        let n = cc.encrypt_block_ad(None, 0, target, &mut out)?;
        Ok(self.b64.encode(&out[..n]).into_bytes())
    }

    /// root_node.go `decryptSymlinkTarget`.
    pub fn decrypt_symlink_target(
        &self,
        cc: &mut ContentCipher,
        on_disk: &[u8],
    ) -> Result<Vec<u8>> {
        if self.eme.is_none() || on_disk.is_empty() {
            return Ok(on_disk.to_vec());
        }
        let bad = |reason: String| FormatError::SymlinkTarget {
            target: String::from_utf8_lossy(on_disk).into_owned(),
            reason,
        };
        let sealed = self.b64.decode(on_disk).map_err(bad)?;
        let mut out = vec![0u8; sealed.len()];
        let n = cc
            .decrypt_block_ad(None, 0, &sealed, &mut out, crate::content::PLAIN_BS)
            .map_err(|e| bad(e.to_string()))?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nc() -> NameCipher {
        NameCipher::new(Some(&[3u8; 32]), B64::Raw, Some(NAME_MAX), true)
    }

    #[test]
    fn names_round_trip_short_and_long() {
        let n = nc();
        let iv = DirIv::new_random().unwrap();
        for len in [1usize, 15, 16, 17, 175, 176, 255] {
            let name: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let e = n.encrypt_name(&iv, &name).unwrap();
            let back = match &e {
                EncryptedName::Short(s) => {
                    assert!(s.len() <= 255 && !s.contains('='));
                    n.decrypt_name(&iv, s.as_bytes()).unwrap()
                }
                EncryptedName::Long { hashed, full } => {
                    assert!(full.len() > 255, "{len}");
                    assert_eq!(classify(hashed.as_bytes()), NameKind::LongContent);
                    n.decrypt_long_name(&iv, hashed.as_bytes(), full.as_bytes())
                        .unwrap()
                }
                EncryptedName::Plain(_) => unreachable!(),
            };
            assert_eq!(back, name);
        }
        // 176..=191-byte names pad to 192 bytes = 256 base64 chars: the first long names.
        assert!(matches!(
            n.encrypt_name(&iv, &[b'x'; 176]).unwrap(),
            EncryptedName::Long { .. }
        ));
        assert!(matches!(
            n.encrypt_name(&iv, &[b'x'; 175]).unwrap(),
            EncryptedName::Short(_)
        ));
    }

    #[test]
    fn invalid_and_hostile_names() {
        let n = nc();
        let iv = DirIv::new_random().unwrap();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(matches!(
                n.encrypt_name(&iv, bad),
                Err(FormatError::NameInvalid(_))
            ));
        }
        assert!(matches!(
            n.encrypt_name(&iv, &[b'a'; 256]),
            Err(FormatError::NameTooLong(256))
        ));
        assert!(matches!(
            n.decrypt_name(&iv, b"not base64!"),
            Err(FormatError::NameBase64 { .. })
        ));
        assert!(matches!(
            n.decrypt_name(&iv, b"AAAA"),
            Err(FormatError::NameLength { .. })
        ));
        let e = n.encrypt_name(&iv, b"hello").unwrap();
        let other = DirIv::new_random().unwrap();
        // Under the wrong directory IV the padding check fails (with overwhelming probability).
        assert!(n.decrypt_name(&other, e.entry()).is_err());
        // A .name file that does not hash to its entry is refused.
        let EncryptedName::Long { hashed, .. } = n.encrypt_name(&iv, &[b'y'; 200]).unwrap() else {
            panic!()
        };
        let EncryptedName::Long { full: full2, .. } = n.encrypt_name(&iv, &[b'z'; 200]).unwrap()
        else {
            panic!()
        };
        assert!(n
            .decrypt_long_name(&iv, hashed.as_bytes(), full2.as_bytes())
            .is_err());
    }

    #[test]
    fn symlink_targets_round_trip() {
        let n = nc();
        let mut cc = ContentCipher::new(&[4u8; 32], 16).unwrap();
        for t in [&b"a"[..], b"../x/y", &[b'p'; 4096]] {
            let d = n.encrypt_symlink_target(&mut cc, t).unwrap();
            assert_eq!(n.decrypt_symlink_target(&mut cc, &d).unwrap(), t);
        }
        let mut d = n.encrypt_symlink_target(&mut cc, b"target").unwrap();
        d[5] = if d[5] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            n.decrypt_symlink_target(&mut cc, &d),
            Err(FormatError::SymlinkTarget { .. })
        ));
    }
}
