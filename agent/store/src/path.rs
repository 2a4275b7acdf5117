//! Validated relative ciphertext paths and volume names: the only way a peer's string
//! reaches a syscall.

use std::fmt;

use crate::error::{ErrorKind, Result, StoreError};

/// Longest name component, in bytes: NAME_MAX on Linux; gocryptfs long names
/// (`gocryptfs.longname.<hash>`) keep every ciphertext name below it.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Longest path, in bytes: PATH_MAX on Linux (4096 including the terminating NUL, so the
/// longest path the kernel accepts is 4095 bytes; one byte of slack is harmless).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest volume name: 32 bytes, short enough for a qrexec service argument
/// (`cloudstore.Volume+<name>`, arguments are limited to 64 bytes) with room to spare.
pub const MAX_VOLUME_NAME_LEN: usize = 32;

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathProblem {
    /// the path is empty
    #[error("the path is empty")]
    Empty,
    /// the path is absolute; paths are relative to the volume root
    #[error("the path is absolute; paths are relative to the volume root")]
    Absolute,
    /// component {index} is "..", which would leave its directory
    #[error("component {index} is \"..\", which would leave its directory")]
    DotDot { index: usize },
    /// component {index} is "."; paths must be canonical
    #[error("component {index} is \".\"; paths must be canonical")]
    Dot { index: usize },
    /// component {index} is empty (a doubled or trailing '/')
    #[error("component {index} is empty (a doubled or trailing '/')")]
    EmptyComponent { index: usize },
    /// the path contains a NUL byte at offset {offset}
    #[error("the path contains a NUL byte at offset {offset}")]
    Nul { offset: usize },
    /// component {index} is {len} bytes long; the limit is 255
    #[error("component {index} is {len} bytes long; the limit is 255")]
    ComponentTooLong { index: usize, len: usize },
    /// the path is {len} bytes long; the limit is 4096
    #[error("the path is {len} bytes long; the limit is 4096")]
    TooLong { len: usize },
    /// this operation cannot act on the volume root itself
    #[error("this operation cannot act on the volume root itself")]
    Root,
}

impl PathProblem {
    /// The errno-like kind of this problem.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PathProblem::ComponentTooLong { .. } | PathProblem::TooLong { .. } => {
                ErrorKind::NameTooLong
            }
            PathProblem::Root => ErrorKind::Busy,
            _ => ErrorKind::Invalid,
        }
    }
}

/// A relative ciphertext path beneath a volume root: components separated by '/', none empty,
/// "." or "..", no NUL, each at most 255 bytes, at most 4096 bytes in all. The volume root
/// itself is [`RelPath::root`] (it has no string form a peer can send; the protocol names it
/// explicitly).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s` as a path beneath the volume root.
    pub fn new(s: &str) -> Result<RelPath, PathProblem> {
        check_path(s)?;
        Ok(RelPath(s.to_owned()))
    }

    /// The volume root.
    pub fn root() -> RelPath {
        RelPath(String::new())
    }

    /// Whether this is the volume root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as a string ("" for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory and the final name; `None` for the root.
    pub fn split_last(&self) -> Option<(&str, &str)> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => ("", &self.0[..]),
        })
    }

    /// The parent directory; the root for a top-level name, `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        self.split_last().map(|(p, _)| RelPath(p.to_owned()))
    }

    /// The path of `name` inside this directory.
    pub fn join(&self, name: &str) -> Result<RelPath, PathProblem> {
        if self.is_root() {
            RelPath::new(name)
        } else {
            RelPath::new(&format!("{}/{}", self.0, name))
        }
    }

    /// Whether `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str("(volume root)")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl TryFrom<&str> for RelPath {
    type Error = PathProblem;
    fn try_from(s: &str) -> Result<RelPath, PathProblem> {
        RelPath::new(s)
    }
}

fn check_path(s: &str) -> Result<(), PathProblem> {
    if s.is_empty() {
        return Err(PathProblem::Empty);
    }
    if let Some(offset) = s.bytes().position(|b| b == 0) {
        return Err(PathProblem::Nul { offset });
    }
    if s.len() > MAX_PATH_LEN {
        return Err(PathProblem::TooLong { len: s.len() });
    }
    if s.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    for (index, c) in s.split('/').enumerate() {
        match c {
            "" => return Err(PathProblem::EmptyComponent { index }),
            "." => return Err(PathProblem::Dot { index }),
            ".." => return Err(PathProblem::DotDot { index }),
            _ if c.len() > MAX_COMPONENT_LEN => {
                return Err(PathProblem::ComponentTooLong {
                    index,
                    len: c.len(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates a peer's path string for `op`, turning a problem into a [`StoreError`] that
/// names both.
pub fn parse_path(op: &'static str, s: &str) -> Result<RelPath> {
    RelPath::new(s).map_err(|problem| StoreError::BadPath {
        op,
        path: s.to_owned(),
        problem,
    })
}

/// Checks a volume name: `[a-z0-9][a-z0-9_-]{0,31}`. Volume names become directory names and
/// qrexec service arguments, so nothing else is allowed.
pub fn validate_volume_name(name: &str) -> Result<()> {
    let bad = |problem| {
        Err(StoreError::BadVolumeName {
            name: name.to_owned(),
            problem,
        })
    };
    let b = name.as_bytes();
    if b.is_empty() {
        return bad("it is empty");
    }
    if b.len() > MAX_VOLUME_NAME_LEN {
        return bad("it is longer than 32 bytes");
    }
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return bad("it must start with a lowercase letter or a digit");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return bad("only a-z, 0-9, '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "a/b/c",
            "gocryptfs.diriv",
            "x.y",
            "...",
            "a/.b",
            &"n".repeat(255),
        ] {
            assert!(RelPath::new(p).is_ok(), "{p:?}");
        }
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.split_last(), Some(("a/b", "c")));
        assert_eq!(RelPath::new("c").unwrap().split_last(), Some(("", "c")));
        assert_eq!(RelPath::root().split_last(), None);
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc")
            .unwrap()
            .starts_with(&RelPath::new("a/b").unwrap()));
    }

    #[test]
    fn refuses_hostile_paths_naming_the_problem() {
        let cases: Vec<(String, PathProblem)> = vec![
            ("".into(), PathProblem::Empty),
            ("/etc/passwd".into(), PathProblem::Absolute),
            ("..".into(), PathProblem::DotDot { index: 0 }),
            ("a/../../b".into(), PathProblem::DotDot { index: 1 }),
            ("a/./b".into(), PathProblem::Dot { index: 1 }),
            (".".into(), PathProblem::Dot { index: 0 }),
            ("a//b".into(), PathProblem::EmptyComponent { index: 1 }),
            ("a/".into(), PathProblem::EmptyComponent { index: 1 }),
            ("a\0b".into(), PathProblem::Nul { offset: 1 }),
            (
                format!("a/{}", "x".repeat(256)),
                PathProblem::ComponentTooLong { index: 1, len: 256 },
            ),
            (
                vec!["y".repeat(200); 21].join("/"),
                PathProblem::TooLong { len: 200 * 21 + 20 },
            ),
        ];
        for (p, want) in cases {
            assert_eq!(RelPath::new(&p).unwrap_err(), want, "{p:?}");
        }
        let e = parse_path("unlink", "../x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("unlink \"../x\""), "{e}");
        assert!(e.to_string().contains("\"..\""), "{e}");
    }

    #[test]
    fn volume_names() {
        for ok in ["work", "a", "0", "my-photos_2", &"a".repeat(32)] {
            validate_volume_name(ok).unwrap();
        }
        for bad in [
            "",
            "Work",
            "-a",
            "_a",
            "a.b",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(33),
        ] {
            let e = validate_volume_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
            assert!(e.to_string().contains("volume name"), "{e}");
        }
    }
}
