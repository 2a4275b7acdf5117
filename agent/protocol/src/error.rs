//! Error codes (stable numbers on the wire) and the error every call returns.

use std::fmt;

/// An error code. The numbers are part of the protocol: never renumber, only add
/// (docs/protocol.md, "Error codes"). A code this build does not know decodes as
/// [`ErrorCode::Unknown`] and is treated as an I/O error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No such file, directory, handle target, version or volume (ENOENT).
    NotFound,
    /// The name is taken (EEXIST).
    Exists,
    /// The directory is not empty (ENOTEMPTY).
    NotEmpty,
    /// A path component or the operand is not a directory (ENOTDIR).
    NotDir,
    /// A directory where a file was expected (EISDIR).
    IsDir,
    /// The path is not relative and canonical: absolute, `.`/`..`, empty component, NUL
    /// (EINVAL).
    InvalidPath,
    /// A component over 255 bytes or a path over 4096 (ENAMETOOLONG).
    NameTooLong,
    /// The storage is full (ENOSPC).
    NoSpace,
    /// Not allowed: by the storage's own permissions or because the connection's role may
    /// not use this operation (EACCES).
    PermissionDenied,
    /// Any other I/O failure on the storage side (EIO).
    Io,
    /// The file changed since the caller saw it: a put's or delete's precondition failed.
    Conflict,
    /// The change journal no longer reaches back that far: rescan the tree.
    RescanNeeded,
    /// A frame, field or answer is larger than the protocol allows (EFBIG / E2BIG).
    TooLarge,
    /// The operation code is not known to the server (ENOSYS).
    UnknownOp,
    /// The handshake found no protocol version both sides speak.
    BadVersion,
    /// Too many requests or streams at once; retry later (EAGAIN).
    Busy,
    /// The storage refused the volume (not configured for the calling qube).
    VolumeRefused,
    /// A symlink where a file or directory had to be opened; symlinks are never followed
    /// (ELOOP).
    Symlink,
    /// A malformed argument other than a path: bad flag, mode, length (EINVAL).
    Invalid,
    /// The file would exceed the filesystem's size limit (EFBIG).
    FileTooBig,
    /// Too many hard links (EMLINK).
    TooManyLinks,
    /// Not supported on this object or by this server (EOPNOTSUPP).
    Unsupported,
    /// Stored state is damaged (EIO).
    Corrupt,
    /// The handle is not open on this connection (EBADF).
    BadHandle,
    /// The message could not be decoded (EPROTO).
    Malformed,
    /// A frame of a type that may not be sent in this direction or at this point (EPROTO).
    UnexpectedFrame,
    /// The caller cancelled the request or stream.
    Cancelled,
    /// Local: no answer within the call's time limit (ETIMEDOUT). Never sent on the wire by
    /// this implementation.
    TimedOut,
    /// Local: the connection closed or failed before the answer came (ENOTCONN).
    ConnectionLost,
    /// The handshake did not start with the protocol's magic bytes.
    BadMagic,
    /// The connection's role (Volume or Sync) is not the one this service serves.
    BadRole,
    /// The server failed internally while handling the request (EIO).
    Internal,
    /// A code this build does not know.
    Unknown(u16),
}

impl ErrorCode {
    const TABLE: [(ErrorCode, u16); 32] = [
        (ErrorCode::NotFound, 1),
        (ErrorCode::Exists, 2),
        (ErrorCode::NotEmpty, 3),
        (ErrorCode::NotDir, 4),
        (ErrorCode::IsDir, 5),
        (ErrorCode::InvalidPath, 6),
        (ErrorCode::NameTooLong, 7),
        (ErrorCode::NoSpace, 8),
        (ErrorCode::PermissionDenied, 9),
        (ErrorCode::Io, 10),
        (ErrorCode::Conflict, 11),
        (ErrorCode::RescanNeeded, 12),
        (ErrorCode::TooLarge, 13),
        (ErrorCode::UnknownOp, 14),
        (ErrorCode::BadVersion, 15),
        (ErrorCode::Busy, 16),
        (ErrorCode::VolumeRefused, 17),
        (ErrorCode::Symlink, 18),
        (ErrorCode::Invalid, 19),
        (ErrorCode::FileTooBig, 20),
        (ErrorCode::TooManyLinks, 21),
        (ErrorCode::Unsupported, 22),
        (ErrorCode::Corrupt, 23),
        (ErrorCode::BadHandle, 24),
        (ErrorCode::Malformed, 25),
        (ErrorCode::UnexpectedFrame, 26),
        (ErrorCode::Cancelled, 27),
        (ErrorCode::TimedOut, 28),
        (ErrorCode::ConnectionLost, 29),
        (ErrorCode::BadMagic, 30),
        (ErrorCode::BadRole, 31),
        (ErrorCode::Internal, 32),
    ];

    /// Every known code, for tests and documentation.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        ErrorCode::TABLE.iter().map(|&(c, _)| c)
    }

    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        if let ErrorCode::Unknown(n) = self {
            return n;
        }
        ErrorCode::TABLE
            .iter()
            .find(|&&(c, _)| c == self)
            .map(|&(_, n)| n)
            .expect("every known code is in the table")
    }

    /// The code of a number from the wire.
    pub fn from_u16(n: u16) -> ErrorCode {
        ErrorCode::TABLE
            .iter()
            .find(|&&(_, m)| m == n)
            .map(|&(c, _)| c)
            .unwrap_or(ErrorCode::Unknown(n))
    }

    /// The errno a filesystem frontend reports for this code (Linux numbers).
    pub fn errno(self) -> i32 {
        match self {
            ErrorCode::NotFound => libc::ENOENT,
            ErrorCode::Exists => libc::EEXIST,
            ErrorCode::NotEmpty => libc::ENOTEMPTY,
            ErrorCode::NotDir => libc::ENOTDIR,
            ErrorCode::IsDir => libc::EISDIR,
            ErrorCode::InvalidPath | ErrorCode::Invalid => libc::EINVAL,
            ErrorCode::NameTooLong => libc::ENAMETOOLONG,
            ErrorCode::NoSpace => libc::ENOSPC,
            ErrorCode::PermissionDenied | ErrorCode::VolumeRefused | ErrorCode::BadRole => {
                libc::EACCES
            }
            ErrorCode::Conflict | ErrorCode::Busy => libc::EAGAIN,
            ErrorCode::RescanNeeded => libc::ERANGE,
            ErrorCode::TooLarge => libc::E2BIG,
            ErrorCode::FileTooBig => libc::EFBIG,
            ErrorCode::UnknownOp => libc::ENOSYS,
            ErrorCode::Symlink => libc::ELOOP,
            ErrorCode::TooManyLinks => libc::EMLINK,
            ErrorCode::Unsupported => libc::EOPNOTSUPP,
            ErrorCode::BadHandle => libc::EBADF,
            ErrorCode::Malformed
            | ErrorCode::UnexpectedFrame
            | ErrorCode::BadMagic
            | ErrorCode::BadVersion => libc::EPROTO,
            ErrorCode::Cancelled => libc::ECANCELED,
            ErrorCode::TimedOut => libc::ETIMEDOUT,
            ErrorCode::ConnectionLost => libc::ENOTCONN,
            ErrorCode::Io | ErrorCode::Corrupt | ErrorCode::Internal | ErrorCode::Unknown(_) => {
                libc::EIO
            }
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(n) => write!(f, "unknown error code {n}"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

/// Longest error message carried on the wire; longer ones are cut at a character boundary.
/// A message names an operation and one or two paths (each ≤ 4096 bytes), so 8 KiB keeps
/// every useful message whole while bounding an error frame.
pub const MAX_ERROR_MESSAGE: usize = 8192;

/// The error of a call: a code for programs, a short message for people (naming the
/// operation and the path). Errors made locally (timeout, lost connection) use the same type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    /// An error with a message cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        RemoteError { code, message }
    }

    /// The errno for a filesystem frontend.
    pub fn errno(&self) -> i32 {
        self.code.errno()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::all() {
            let n = c.to_u16();
            assert!(seen.insert(n), "{c:?} reuses {n}");
            assert_eq!(ErrorCode::from_u16(n), c);
        }
        assert_eq!(ErrorCode::NotFound.to_u16(), 1);
        assert_eq!(ErrorCode::Internal.to_u16(), 32);
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown(999));
        assert_eq!(ErrorCode::Unknown(999).to_u16(), 999);
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown(0));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let e = RemoteError::new(ErrorCode::Io, "é".repeat(MAX_ERROR_MESSAGE));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE);
        assert!(e.message.len() >= MAX_ERROR_MESSAGE - 1);
    }
}
