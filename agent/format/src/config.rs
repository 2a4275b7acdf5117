//! `gocryptfs.conf`: JSON with the scrypt parameters, the wrapped master key and the feature
//! flags (gocryptfs internal/configfile/{config_file.go,feature_flags.go,validate.go,scrypt.go}).
//!
//! ```text
//! KEK          = scrypt(passphrase, Salt, N, R, P, KeyLen=32)
//! wrap key     = HKDF-SHA256(KEK, "AES-GCM file content encryption")   (KEK itself without HKDF)
//! EncryptedKey = nonce(16; 12 without HKDF) || AES-256-GCM(master key, AAD = 0u64 BE) || tag(16)
//! ```
//! (config_file.go `getKeyEncrypter`: the key is sealed as content block 0 with no file ID.)

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::content::ContentCipher;
use crate::kdf::{hkdf_sha256, ScryptParams, HKDF_INFO_GCM_CONTENT};
use crate::{FormatError, MasterKey, Result, KEY_LEN, TAG_LEN};

/// config files are a few hundred bytes; 64 KiB leaves room for any FIDO2 blob and stops a
/// hostile multi-gigabyte "config" before JSON parsing.
pub const CONFIG_MAX_LEN: usize = 64 * 1024;
/// contentenc `CurrentVersion`, the only on-disk format version since gocryptfs 1.0.
pub const CONFIG_VERSION: u64 = 2;

/// Every flag gocryptfs 2.x defines (feature_flags.go `knownFlags`).
const KNOWN_FLAGS: &[&str] = &[
    "PlaintextNames",
    "DirIV",
    "EMENames",
    "GCMIV128",
    "LongNames",
    "LongNameMax",
    "AESSIV",
    "Raw64",
    "HKDF",
    "FIDO2",
    "XChaCha20Poly1305",
];
/// Flags that change the format in ways this crate does not implement.
const UNSUPPORTED_FLAGS: &[&str] = &["AESSIV", "XChaCha20Poly1305", "FIDO2"];

/// The parsed feature flags (feature_flags.go), validated as validate.go does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFlags {
    pub hkdf: bool,
    pub plaintext_names: bool,
    pub dir_iv: bool,
    pub eme_names: bool,
    pub long_names: bool,
    pub raw64: bool,
    /// With the LongNameMax flag: encrypted names longer than this are hashed (default 255).
    pub long_name_max: Option<u8>,
    /// The flags as listed in the file, kept in order for rewriting.
    names: Vec<String>,
}

impl FeatureFlags {
    fn from_list(list: &[String], long_name_max: u8) -> Result<Self> {
        for f in list {
            if !KNOWN_FLAGS.contains(&f.as_str()) {
                return Err(FormatError::UnknownFlag(f.clone()));
            }
        }
        for u in UNSUPPORTED_FLAGS {
            if list.iter().any(|f| f == u) {
                return Err(FormatError::UnsupportedFlag(u));
            }
        }
        let has = |n: &str| list.iter().any(|f| f == n);
        // validate.go: AES-GCM (the only backend left once AESSIV/XChaCha are refused)
        // requires GCMIV128.
        if !has("GCMIV128") {
            return Err(FormatError::FlagConflict(
                "AES-GCM requires the GCMIV128 feature flag",
            ));
        }
        let plaintext = has("PlaintextNames");
        if plaintext {
            for (f, msg) in [
                ("EMENames", "PlaintextNames conflicts with EMENames"),
                ("DirIV", "PlaintextNames conflicts with DirIV"),
                ("LongNames", "PlaintextNames conflicts with LongNames"),
                ("Raw64", "PlaintextNames conflicts with Raw64"),
                ("LongNameMax", "PlaintextNames conflicts with LongNameMax"),
            ] {
                if has(f) {
                    return Err(FormatError::FlagConflict(msg));
                }
            }
        } else if !has("EMENames") {
            // Names encrypted with CBC (gocryptfs 0.x); gocryptfs 2.x cannot read them either.
            return Err(FormatError::FlagConflict(
                "names are encrypted but the EMENames flag is missing (a gocryptfs 0.x volume)",
            ));
        }
        if long_name_max != 0 && !has("LongNameMax") {
            return Err(FormatError::FlagConflict(
                "LongNameMax is set but the LongNameMax flag is not",
            ));
        }
        if long_name_max == 0 && has("LongNameMax") {
            return Err(FormatError::FlagConflict(
                "the LongNameMax flag is set but LongNameMax is 0",
            ));
        }
        Ok(Self {
            hkdf: has("HKDF"),
            plaintext_names: plaintext,
            dir_iv: has("DirIV"),
            eme_names: has("EMENames"),
            long_names: has("LongNames"),
            raw64: has("Raw64"),
            long_name_max: (long_name_max != 0).then_some(long_name_max),
            names: list.to_vec(),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// How to create a volume (gocryptfs `-init` options).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// scrypt cost log2(N) (`-scryptn`); gocryptfs's default 16, minimum 10.
    pub scrypt_log_n: u8,
    /// Shown in the config for people; gocryptfs writes its version here.
    pub creator: String,
    /// `-plaintextnames`.
    pub plaintext_names: bool,
    /// `-deterministic-names`: no gocryptfs.diriv files, all-zero tweak.
    pub deterministic_names: bool,
    /// `-longnamemax N` (62..=255; 255 is the default and not stored).
    pub long_name_max: Option<u8>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            scrypt_log_n: crate::kdf::SCRYPT_DEFAULT_LOG_N,
            creator: format!("cloudstore {}", env!("CARGO_PKG_VERSION")),
            plaintext_names: false,
            deterministic_names: false,
            long_name_max: None,
        }
    }
}

// JSON shape of config_file.go `ConfFile` and scrypt.go `ScryptKDF`. Go encodes []byte as
// standard base64 with padding and int as a JSON number.
#[derive(Serialize, Deserialize)]
struct ScryptJson {
    #[serde(rename = "Salt", with = "b64")]
    salt: Vec<u8>,
    #[serde(rename = "N")]
    n: i64,
    #[serde(rename = "R")]
    r: i64,
    #[serde(rename = "P")]
    p: i64,
    #[serde(rename = "KeyLen")]
    key_len: i64,
}

#[derive(Serialize, Deserialize)]
struct ConfJson {
    #[serde(rename = "Creator", default)]
    creator: String,
    #[serde(rename = "EncryptedKey", with = "b64")]
    encrypted_key: Vec<u8>,
    #[serde(rename = "ScryptObject")]
    scrypt: ScryptJson,
    #[serde(rename = "Version")]
    version: u64,
    #[serde(rename = "FeatureFlags", default)]
    feature_flags: Option<Vec<String>>,
    #[serde(rename = "FIDO2", default, skip_serializing_if = "Option::is_none")]
    fido2: Option<serde_json::Value>,
    #[serde(rename = "LongNameMax", default, skip_serializing_if = "is_zero")]
    long_name_max: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A parsed, validated `gocryptfs.conf`. Holds no secret: the master key stays wrapped.
#[derive(Debug, Clone)]
pub struct Config {
    pub creator: String,
    encrypted_key: Vec<u8>,
    scrypt: ScryptParams,
    flags: FeatureFlags,
}

fn i64_param(name: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| FormatError::ScryptParams(format!("{name}={v} is negative")))
}

/// The wrapping cipher: config_file.go `getKeyEncrypter`.
fn key_encrypter(kek: &[u8; KEY_LEN], hkdf: bool) -> Result<ContentCipher> {
    if hkdf {
        let k = hkdf_sha256(kek, HKDF_INFO_GCM_CONTENT)?;
        ContentCipher::new(&k, 16)
    } else {
        // gocryptfs 1.2 and older: the KEK directly, 96-bit nonce.
        ContentCipher::new(kek, 12)
    }
}

impl Config {
    /// Parses and validates a config (config_file.go `Load` + validate.go `Validate`), and
    /// refuses flags this crate cannot honour, naming them.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(FormatError::ConfigEmpty);
        }
        if bytes.len() > CONFIG_MAX_LEN {
            return Err(FormatError::ConfigSyntax(format!(
                "{} bytes, more than the {CONFIG_MAX_LEN}-byte limit",
                bytes.len()
            )));
        }
        let j: ConfJson =
            serde_json::from_slice(bytes).map_err(|e| FormatError::ConfigSyntax(e.to_string()))?;
        if j.version != CONFIG_VERSION {
            return Err(FormatError::ConfigVersion(j.version));
        }
        let flags =
            FeatureFlags::from_list(j.feature_flags.as_deref().unwrap_or(&[]), j.long_name_max)?;
        let scrypt = ScryptParams {
            salt: j.scrypt.salt,
            n: i64_param("N", j.scrypt.n)?,
            r: i64_param("R", j.scrypt.r)?,
            p: i64_param("P", j.scrypt.p)?,
            key_len: usize::try_from(j.scrypt.key_len).unwrap_or(usize::MAX),
        };
        scrypt.validate()?;
        let nonce = if flags.hkdf { 16 } else { 12 };
        if j.encrypted_key.len() != nonce + KEY_LEN + TAG_LEN {
            return Err(FormatError::EncryptedKeyLength(j.encrypted_key.len()));
        }
        Ok(Self {
            creator: j.creator,
            encrypted_key: j.encrypted_key,
            scrypt,
            flags,
        })
    }

    /// A new config wrapping a fresh random master key (config_file.go `Create`).
    pub fn create(passphrase: &[u8], opts: &CreateOptions) -> Result<(Self, MasterKey)> {
        let key = MasterKey::new_random()?;
        let cfg = Self::create_with_key(&key, passphrase, opts)?;
        Ok((cfg, key))
    }

    /// A new config wrapping `key` (gocryptfs `-init -masterkey`).
    pub fn create_with_key(
        key: &MasterKey,
        passphrase: &[u8],
        opts: &CreateOptions,
    ) -> Result<Self> {
        // Same flags in the same order as config_file.go `Create` with AES-GCM.
        let mut list = vec!["HKDF", "GCMIV128"];
        let mut lnm = 0;
        if opts.plaintext_names {
            list.push("PlaintextNames");
        } else {
            if !opts.deterministic_names {
                list.push("DirIV");
            }
            if let Some(m) = opts.long_name_max.filter(|&m| m != 255) {
                // cli_args.go refuses -longnamemax below 62: hashed names are 62 bytes.
                if m < 62 {
                    return Err(FormatError::FlagConflict(
                        "LongNameMax below 62 is not allowed",
                    ));
                }
                lnm = m;
                list.push("LongNameMax");
            }
            list.extend(["EMENames", "LongNames", "Raw64"]);
        }
        let list: Vec<String> = list.into_iter().map(String::from).collect();
        let mut cfg = Self {
            creator: opts.creator.clone(),
            encrypted_key: Vec::new(),
            scrypt: ScryptParams::new_random(opts.scrypt_log_n)?,
            flags: FeatureFlags::from_list(&list, lnm)?,
        };
        cfg.change_passphrase(key, passphrase, Some(opts.scrypt_log_n))?;
        Ok(cfg)
    }

    pub fn flags(&self) -> &FeatureFlags {
        &self.flags
    }

    pub fn scrypt(&self) -> &ScryptParams {
        &self.scrypt
    }

    /// Unwraps the master key (config_file.go `DecryptMasterKey`). Costs one scrypt run.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<MasterKey> {
        let kek = self.scrypt.derive(passphrase)?;
        let mut ce = key_encrypter(&kek, self.flags.hkdf)?;
        let mut out = Zeroizing::new([0u8; KEY_LEN + 16]);
        let n = match ce.decrypt_block_ad(None, 0, &self.encrypted_key, &mut out[..], KEY_LEN) {
            Ok(n) => n,
            Err(FormatError::BlockAuth { .. }) | Err(FormatError::BlockZeroNonce { .. }) => {
                return Err(FormatError::WrongPassphrase)
            }
            Err(e) => return Err(e),
        };
        MasterKey::from_bytes(&out[..n])
    }

    /// Rewraps `key` under `new_passphrase` with a fresh salt (config_file.go `EncryptKey`);
    /// `log_n` None keeps the current scrypt cost, as `gocryptfs -passwd` does. The key
    /// itself, and so every file, stays the same.
    pub fn change_passphrase(
        &mut self,
        key: &MasterKey,
        new_passphrase: &[u8],
        log_n: Option<u8>,
    ) -> Result<()> {
        let scrypt = ScryptParams::new_random(log_n.unwrap_or(self.scrypt.log_n()))?;
        let kek = scrypt.derive(new_passphrase)?;
        // gocryptfs 2.x always sets HKDF; a legacy config being rewrapped keeps its flags,
        // so its wrapping stays what those flags say.
        let mut ce = key_encrypter(&kek, self.flags.hkdf)?;
        let mut out = vec![0u8; ce.sealed_len(KEY_LEN)];
        ce.encrypt_block_ad(None, 0, key.as_bytes(), &mut out)?;
        self.scrypt = scrypt;
        self.encrypted_key = out;
        Ok(())
    }

    /// The file as gocryptfs writes it: `json.MarshalIndent(cf, "", "\t")` plus a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let j = ConfJson {
            creator: self.creator.clone(),
            encrypted_key: self.encrypted_key.clone(),
            scrypt: ScryptJson {
                salt: self.scrypt.salt.clone(),
                n: self.scrypt.n as i64,
                r: self.scrypt.r as i64,
                p: self.scrypt.p as i64,
                key_len: self.scrypt.key_len as i64,
            },
            version: CONFIG_VERSION,
            feature_flags: Some(self.flags.names.clone()),
            fido2: None,
            long_name_max: self.flags.long_name_max.unwrap_or(0),
        };
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        j.serialize(&mut ser)
            .expect("serialising plain data to memory cannot fail");
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> CreateOptions {
        CreateOptions {
            scrypt_log_n: 10,
            ..Default::default()
        }
    }

    #[test]
    fn create_unlock_rewrap() {
        let (mut cfg, key) = Config::create(b"pw1", &fast()).unwrap();
        let text = String::from_utf8(cfg.to_bytes()).unwrap();
        assert!(
            text.contains("\"FeatureFlags\": [\n\t\t\"HKDF\",\n\t\t\"GCMIV128\",\n\t\t\"DirIV\""),
            "{text}"
        );
        let parsed = Config::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.unlock(b"pw1").unwrap().as_bytes(), key.as_bytes());
        assert!(matches!(
            parsed.unlock(b"pw2"),
            Err(FormatError::WrongPassphrase)
        ));
        cfg.change_passphrase(&key, b"pw2", None).unwrap();
        let re = Config::parse(&cfg.to_bytes()).unwrap();
        assert_eq!(re.scrypt().log_n(), 10);
        assert_eq!(re.unlock(b"pw2").unwrap().as_bytes(), key.as_bytes());
        assert!(matches!(
            re.unlock(b"pw1"),
            Err(FormatError::WrongPassphrase)
        ));
    }

    #[test]
    fn flags_are_checked_and_named() {
        let (cfg, _) = Config::create(b"pw", &fast()).unwrap();
        let text = String::from_utf8(cfg.to_bytes()).unwrap();
        let with = |from: &str, to: &str| Config::parse(text.replacen(from, to, 1).as_bytes());
        match with("\"Raw64\"", "\"AESSIV\"") {
            Err(e @ FormatError::UnsupportedFlag("AESSIV")) => {
                assert!(e.to_string().contains("AESSIV"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            with("\"Raw64\"", "\"XChaCha20Poly1305\""),
            Err(FormatError::UnsupportedFlag(_))
        ));
        assert!(
            matches!(with("\"Raw64\"", "\"Turbo\""), Err(FormatError::UnknownFlag(f)) if f == "Turbo")
        );
        assert!(matches!(
            with("\"GCMIV128\",", ""),
            Err(FormatError::FlagConflict(_))
        ));
        assert!(matches!(
            with("\"Version\": 2", "\"Version\": 3"),
            Err(FormatError::ConfigVersion(3))
        ));
        assert!(matches!(
            with("\"N\": 1024", "\"N\": 512"),
            Err(FormatError::ScryptParams(_))
        ));
        assert!(matches!(
            with("\"EncryptedKey\": \"", "\"EncryptedKey\": \"AAAA"),
            Err(FormatError::EncryptedKeyLength(_))
        ));
        assert!(matches!(Config::parse(b""), Err(FormatError::ConfigEmpty)));
        assert!(matches!(
            Config::parse(b"{"),
            Err(FormatError::ConfigSyntax(_))
        ));
    }

    #[test]
    fn other_gocryptfs_flag_sets() {
        for opts in [
            CreateOptions {
                plaintext_names: true,
                ..fast()
            },
            CreateOptions {
                deterministic_names: true,
                ..fast()
            },
            CreateOptions {
                long_name_max: Some(100),
                ..fast()
            },
        ] {
            let (cfg, key) = Config::create(b"pw", &opts).unwrap();
            let re = Config::parse(&cfg.to_bytes()).unwrap();
            assert_eq!(re.flags(), cfg.flags());
            assert_eq!(re.unlock(b"pw").unwrap().as_bytes(), key.as_bytes());
        }
    }
}
