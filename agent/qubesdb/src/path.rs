//! Checks on paths and values before they go to the daemon, so that a bad key is reported
//! by name here instead of as a bare `QDB_RESP_ERROR` (or a dropped connection) there.
//!
//! The rules are the daemon's: `verify_path()` and `verify_data()` in
//! QubesOS/qubes-core-qubesdb `daemon/db-cmds.c`, `qubesdb_insert()` in `daemon/db-core.c`,
//! and the client's own `verify_path()` in `client/qdb-client.c` (paths start with `/`).

use crate::wire::{MAX_PATH_LEN, MAX_VALUE_LEN};

/// What a path names: one entry, or a prefix ("directory") of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// read and write: the daemon never stores an entry whose path ends with `/`
    /// (`qubesdb_insert()` refuses it; a read of it is always "not found").
    Key,
    /// list, multiread, watch, rm: a trailing `/` means "everything beneath".
    Prefix,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    /// The path does not start with `/`.
    #[error("it does not start with '/'")]
    NotAbsolute,
    /// Longer than the 63 bytes the 64-byte path field holds with its NUL.
    #[error("it is {0} bytes long; qubesdb paths have at most 63")]
    TooLong(usize),
    /// A byte outside `[a-zA-Z0-9_/.:@-]`.
    #[error("it contains {0:?}; qubesdb paths allow only a-z A-Z 0-9 and _ / . : @ -")]
    BadChar(char),
    /// A key (not a prefix) ends with `/`.
    #[error("it ends with '/', which names a prefix, not a key")]
    TrailingSlash,
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    /// Over the daemon's limit (`data_len >= QDB_MAX_DATA` is refused).
    #[error("it is {0} bytes long; qubesdb values have at most 3071")]
    TooLong(usize),
    /// `verify_data()` forbids NUL bytes in values.
    #[error("it contains a NUL byte, which qubesdb refuses")]
    Nul,
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'.' | b':' | b'@' | b'-')
}

/// Checks `path` against the daemon's rules for the given use.
pub fn check_path(path: &str, kind: PathKind) -> Result<(), PathProblem> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathProblem::NotAbsolute);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathProblem::TooLong(bytes.len()));
    }
    if let Some(c) = path.chars().find(|&c| !c.is_ascii() || !allowed(c as u8)) {
        return Err(PathProblem::BadChar(c));
    }
    if kind == PathKind::Key && bytes.len() > 1 && bytes.ends_with(b"/") {
        return Err(PathProblem::TrailingSlash);
    }
    if kind == PathKind::Key && bytes.len() == 1 {
        return Err(PathProblem::TrailingSlash);
    }
    Ok(())
}

/// Checks a value against the daemon's rules for writes.
pub fn check_value(value: &[u8]) -> Result<(), ValueProblem> {
    if value.len() > MAX_VALUE_LEN {
        return Err(ValueProblem::TooLong(value.len()));
    }
    if value.contains(&0) {
        return Err(ValueProblem::Nul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_keys() {
        for p in [
            "/name",
            "/qubes-vm-type",
            "/cloudstore/role",
            "/vm-config/cloudstore.volumes",
            "/qubes-service/cloudstore",
            "/a:b@c_d.e-f/9",
        ] {
            assert_eq!(check_path(p, PathKind::Key), Ok(()), "{p}");
        }
        assert_eq!(check_path("/cloudstore/", PathKind::Prefix), Ok(()));
        assert_eq!(check_path("/", PathKind::Prefix), Ok(()));
    }

    #[test]
    fn refuses_hostile_paths() {
        assert_eq!(
            check_path("", PathKind::Prefix),
            Err(PathProblem::NotAbsolute)
        );
        assert_eq!(
            check_path("name", PathKind::Key),
            Err(PathProblem::NotAbsolute)
        );
        assert_eq!(
            check_path("/a b", PathKind::Key),
            Err(PathProblem::BadChar(' '))
        );
        assert_eq!(
            check_path("/a\0b", PathKind::Key),
            Err(PathProblem::BadChar('\0'))
        );
        assert_eq!(
            check_path("/a\nb", PathKind::Key),
            Err(PathProblem::BadChar('\n'))
        );
        assert_eq!(
            check_path("/é", PathKind::Key),
            Err(PathProblem::BadChar('é'))
        );
        assert_eq!(
            check_path("/a*", PathKind::Prefix),
            Err(PathProblem::BadChar('*'))
        );
        assert_eq!(
            check_path("/dir/", PathKind::Key),
            Err(PathProblem::TrailingSlash)
        );
        assert_eq!(
            check_path("/", PathKind::Key),
            Err(PathProblem::TrailingSlash)
        );
    }

    #[test]
    fn length_limit_is_63_bytes() {
        let ok = format!("/{}", "a".repeat(62));
        assert_eq!(ok.len(), 63);
        assert_eq!(check_path(&ok, PathKind::Key), Ok(()));
        let long = format!("/{}", "a".repeat(63));
        assert_eq!(
            check_path(&long, PathKind::Key),
            Err(PathProblem::TooLong(64))
        );
    }

    #[test]
    fn value_limits() {
        assert_eq!(check_value(b""), Ok(()));
        assert_eq!(check_value(&vec![b'x'; 3071]), Ok(()));
        assert_eq!(
            check_value(&vec![b'x'; 3072]),
            Err(ValueProblem::TooLong(3072))
        );
        assert_eq!(check_value(b"a\0b"), Err(ValueProblem::Nul));
    }
}
