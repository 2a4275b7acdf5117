//! One error type for every way a volume, a file or a name can be unreadable.
//!
//! The format crate knows block numbers but not paths: callers add the path (anyhow context).

/// Everything that can go wrong reading or writing the gocryptfs format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// the config file is empty
    #[error("the config file is empty")]
    ConfigEmpty,
    /// the config file is not a gocryptfs config (JSON): {0}
    #[error("the config file is not a gocryptfs config (JSON): {0}")]
    ConfigSyntax(String),
    /// the config has on-disk format version {0}; only version 2 (gocryptfs 1.0 and later) is supported
    #[error("the config has on-disk format version {0}; only version 2 (gocryptfs 1.0 and later) is supported")]
    ConfigVersion(u64),
    /// the config names feature flag {0:?}, which gocryptfs does not define
    #[error("the config names feature flag {0:?}, which gocryptfs does not define")]
    UnknownFlag(String),
    /// the volume uses feature flag {0}, which cloudstore does not support
    #[error("the volume uses feature flag {0}, which cloudstore does not support")]
    UnsupportedFlag(&'static str),
    /// the config's feature flags contradict each other: {0}
    #[error("the config's feature flags contradict each other: {0}")]
    FlagConflict(&'static str),
    /// the config's scrypt parameters are unacceptable: {0}
    #[error("the config's scrypt parameters are unacceptable: {0}")]
    ScryptParams(String),
    /// the encrypted master key in the config is {0} bytes long; a wrapped 32-byte key is 60 or 64
    #[error("the encrypted master key in the config is {0} bytes long; a wrapped 32-byte key is 60 or 64")]
    EncryptedKeyLength(usize),
    /// wrong passphrase (or the config's EncryptedKey was altered)
    #[error("wrong passphrase (or the config's EncryptedKey was altered)")]
    WrongPassphrase,
    /// a master key must be 32 bytes, got {0}
    #[error("a master key must be 32 bytes, got {0}")]
    MasterKeyLength(usize),

    /// file header is {0} bytes; a header is 18 bytes (2 version + 16 file ID)
    #[error("file header is {0} bytes; a header is 18 bytes (2 version + 16 file ID)")]
    HeaderLength(usize),
    /// file header is all zeros (the file was being written when the system stopped?)
    #[error("file header is all zeros (the file was being written when the system stopped?)")]
    HeaderAllZero,
    /// file header has version {0}; only version 2 exists
    #[error("file header has version {0}; only version 2 exists")]
    HeaderVersion(u16),
    /// file header has an all-zero file ID
    #[error("file header has an all-zero file ID")]
    HeaderZeroId,
    /// ciphertext size {size} is impossible (a truncated file?): {reason}
    #[error("ciphertext size {size} is impossible (a truncated file?): {reason}")]
    CipherSize { size: u64, reason: &'static str },
    /// block {block_no}: {len} bytes is too short for a block (nonce + tag is {min})
    #[error("block {block_no}: {len} bytes is too short for a block (nonce + tag is {min})")]
    BlockTooShort {
        block_no: u64,
        len: usize,
        min: usize,
    },
    /// block {block_no}: {len} bytes is longer than a full block ({max})
    #[error("block {block_no}: {len} bytes is longer than a full block ({max})")]
    BlockTooLong {
        block_no: u64,
        len: usize,
        max: usize,
    },
    /// block {block_no}: all-zero nonce (a corrupted block; gocryptfs refuses it too)
    #[error("block {block_no}: all-zero nonce (a corrupted block; gocryptfs refuses it too)")]
    BlockZeroNonce { block_no: u64 },
    /// block {block_no}: authentication failed (altered, truncated, or moved from another file or position)
    #[error("block {block_no}: authentication failed (altered, truncated, or moved from another file or position)")]
    BlockAuth { block_no: u64 },
    /// the output buffer has {have} bytes; {need} are needed
    #[error("the output buffer has {have} bytes; {need} are needed")]
    BufferTooSmall { have: usize, need: usize },

    /// encrypted name {name:?} is not valid base64: {reason}
    #[error("encrypted name {name:?} is not valid base64: {reason}")]
    NameBase64 { name: String, reason: String },
    /// encrypted name {name:?} decodes to {len} bytes; EME needs 16..=2048 in steps of 16
    #[error("encrypted name {name:?} decodes to {len} bytes; EME needs 16..=2048 in steps of 16")]
    NameLength { name: String, len: usize },
    /// encrypted name {name:?} does not decrypt to a validly padded name (wrong directory IV or altered)
    #[error("encrypted name {name:?} does not decrypt to a validly padded name (wrong directory IV or altered)")]
    NamePadding { name: String },
    /// name {0:?} is not a valid file name (empty, ".", "..", or contains '/' or NUL)
    #[error("name {0:?} is not a valid file name (empty, \".\", \"..\", or contains '/' or NUL)")]
    NameInvalid(String),
    /// name of {0} bytes is longer than the 255-byte limit
    #[error("name of {0} bytes is longer than the 255-byte limit")]
    NameTooLong(usize),
    /// encrypted name is {0} bytes and this volume has no LongNames flag to shorten it
    #[error("encrypted name is {0} bytes and this volume has no LongNames flag to shorten it")]
    EncryptedNameTooLong(usize),
    /// a .name file holds {0} bytes; a long encrypted name is at most 344
    #[error("a .name file holds {0} bytes; a long encrypted name is at most 344")]
    LongNameFileSize(usize),
    /// the name {0:?} is reserved by the volume format
    #[error("the name {0:?} is reserved by the volume format")]
    ReservedName(String),
    /// directory IV must be 16 non-zero bytes, got {0} bytes
    #[error("directory IV must be 16 non-zero bytes, got {0} bytes")]
    DirIv(usize),
    /// symlink target {target:?}: {reason}
    #[error("symlink target {target:?}: {reason}")]
    SymlinkTarget { target: String, reason: String },

    /// ciphertext store: {0}
    #[error("ciphertext store: {0}")]
    Store(#[from] std::io::Error),
    /// OpenSSL failed: {0}
    #[error("OpenSSL failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

impl FormatError {
    /// The block number the error is about, if there is one.
    pub fn block_no(&self) -> Option<u64> {
        match self {
            Self::BlockTooShort { block_no, .. }
            | Self::BlockTooLong { block_no, .. }
            | Self::BlockZeroNonce { block_no }
            | Self::BlockAuth { block_no } => Some(*block_no),
            _ => None,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
