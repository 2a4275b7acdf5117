//! The store's one error type, with an errno-like kind the protocol maps to its error codes.

use std::fmt;
use std::io;

use crate::path::PathProblem;

/// What kind of failure an error is, independent of its message: the protocol turns this into
/// an error code and the consumer into an errno (see [`ErrorKind::errno`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such file, directory, volume or version (ENOENT).
    NotFound,
    /// The name is already taken (EEXIST).
    Exists,
    /// The directory is not empty (ENOTEMPTY).
    NotEmpty,
    /// A path component, or the operand, is not a directory (ENOTDIR).
    NotDir,
    /// The operand is a directory where a file was expected (EISDIR).
    IsDir,
    /// A symlink where a directory or file had to be opened; symlinks are never followed (ELOOP).
    Symlink,
    /// The request is malformed: a bad path, name, flag or argument (EINVAL).
    Invalid,
    /// A name component is longer than 255 bytes or a path longer than 4096 (ENAMETOOLONG).
    NameTooLong,
    /// The filesystem (or the version area's share of it) is full (ENOSPC).
    NoSpace,
    /// The storage agent may not do this (EACCES / EPERM).
    PermissionDenied,
    /// The file is too large for the filesystem (EFBIG).
    TooBig,
    /// Too many hard links to one file (EMLINK).
    TooManyLinks,
    /// The operation is not supported on this object or filesystem (EOPNOTSUPP).
    Unsupported,
    /// The object is busy (EBUSY), e.g. the volume root.
    Busy,
    /// The file changed since the caller last saw it (a put's or delete's expectation failed).
    Conflict,
    /// The change journal no longer holds entries that old: the reader must rescan the tree.
    RescanNeeded,
    /// Stored state is damaged (a journal or version record failed its checksum) (EIO).
    Corrupt,
    /// Any other I/O failure (EIO).
    Io,
}

impl ErrorKind {
    /// The errno a filesystem frontend should report for this kind.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Exists => libc::EEXIST,
            ErrorKind::NotEmpty => libc::ENOTEMPTY,
            ErrorKind::NotDir => libc::ENOTDIR,
            ErrorKind::IsDir => libc::EISDIR,
            ErrorKind::Symlink => libc::ELOOP,
            ErrorKind::Invalid => libc::EINVAL,
            ErrorKind::NameTooLong => libc::ENAMETOOLONG,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::PermissionDenied => libc::EACCES,
            ErrorKind::TooBig => libc::EFBIG,
            ErrorKind::TooManyLinks => libc::EMLINK,
            ErrorKind::Unsupported => libc::EOPNOTSUPP,
            ErrorKind::Busy => libc::EBUSY,
            ErrorKind::Conflict => libc::EAGAIN,
            ErrorKind::RescanNeeded => libc::ERANGE,
            ErrorKind::Corrupt | ErrorKind::Io => libc::EIO,
        }
    }

    /// The kind of an operating-system error.
    pub fn from_io(e: &io::Error) -> ErrorKind {
        match e.raw_os_error() {
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::EEXIST) => ErrorKind::Exists,
            Some(libc::ENOTEMPTY) => ErrorKind::NotEmpty,
            Some(libc::ENOTDIR) => ErrorKind::NotDir,
            Some(libc::EISDIR) => ErrorKind::IsDir,
            Some(libc::ELOOP) => ErrorKind::Symlink,
            Some(libc::EINVAL) => ErrorKind::Invalid,
            Some(libc::ENAMETOOLONG) => ErrorKind::NameTooLong,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            // EXDEV from openat2 means the resolution tried to leave the volume root.
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EXDEV) | Some(libc::EROFS) => {
                ErrorKind::PermissionDenied
            }
            Some(libc::EFBIG) => ErrorKind::TooBig,
            Some(libc::EMLINK) => ErrorKind::TooManyLinks,
            Some(libc::EOPNOTSUPP) => ErrorKind::Unsupported,
            Some(libc::EBUSY) => ErrorKind::Busy,
            _ => match e.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::AlreadyExists => ErrorKind::Exists,
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => ErrorKind::Invalid,
                io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                io::ErrorKind::StorageFull => ErrorKind::NoSpace,
                _ => ErrorKind::Io,
            },
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Everything that can go wrong in the store. Every variant names the operation and the
/// ciphertext path (relative to the volume root) or the store file it failed on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// {op} {path:?}: the path is not acceptable: {problem}
    #[error("{op} {path:?}: the path is not acceptable: {problem}")]
    BadPath {
        op: &'static str,
        path: String,
        problem: PathProblem,
    },
    /// volume name {name:?} is not acceptable: {problem}
    #[error("volume name {name:?} is not acceptable: {problem}")]
    BadVolumeName { name: String, problem: &'static str },
    /// volume {name:?} does not exist in the store
    #[error("volume {name:?} does not exist in the store")]
    NoVolume { name: String },
    /// {op} {path:?}: {source}
    #[error("{op} {path:?}: {source}")]
    Fs {
        op: &'static str,
        path: String,
        kind: ErrorKind,
        #[source]
        source: io::Error,
    },
    /// {op} {path:?}: {reason}
    #[error("{op} {path:?}: {reason}")]
    Refused {
        op: &'static str,
        path: String,
        kind: ErrorKind,
        reason: String,
    },
    /// {op} {path:?}: the file changed since the caller saw it (expected {expected}, found {found})
    #[error("{op} {path:?}: the file changed since the caller saw it (expected {expected}, found {found})")]
    Conflict {
        op: &'static str,
        path: String,
        expected: String,
        found: String,
    },
    /// {what} {file}: {reason}
    #[error("{what} {file}: {reason}")]
    Corrupt {
        what: &'static str,
        file: String,
        reason: String,
    },
}

impl StoreError {
    /// The errno-like kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::BadPath { problem, .. } => problem.kind(),
            StoreError::BadVolumeName { .. } => ErrorKind::Invalid,
            StoreError::NoVolume { .. } => ErrorKind::NotFound,
            StoreError::Fs { kind, .. } | StoreError::Refused { kind, .. } => *kind,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
        }
    }

    /// An operating-system error on `path` during `op`.
    pub(crate) fn fs(op: &'static str, path: &str, source: io::Error) -> StoreError {
        let kind = ErrorKind::from_io(&source);
        StoreError::Fs {
            op,
            path: path.to_owned(),
            kind,
            source,
        }
    }

    /// A request the store refuses on its own account.
    pub(crate) fn refused(
        op: &'static str,
        path: &str,
        kind: ErrorKind,
        reason: impl Into<String>,
    ) -> StoreError {
        StoreError::Refused {
            op,
            path: path.to_owned(),
            kind,
            reason: reason.into(),
        }
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &str) -> Result<T> {
        self.map_err(|e| StoreError::fs(op, path, e))
    }
}
