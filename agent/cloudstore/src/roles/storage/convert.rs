//! The storage back end's types and the protocol's are kept apart on purpose (the protocol
//! crate knows nothing of the store, the store nothing of the wire); this is the one place
//! that maps between them, errors included.

use cloudstore_protocol as wire;
use cloudstore_store as store;
use store::{ErrorKind, StoreError};
use wire::{ErrorCode, RemoteError};

pub fn time(t: store::Timespec) -> wire::Timespec {
    wire::Timespec::new(t.secs, t.nanos)
}

pub fn time_in(t: wire::Timespec) -> store::Timespec {
    store::Timespec::new(t.secs, t.nanos)
}

pub fn kind(k: store::FileType) -> wire::FileType {
    match k {
        store::FileType::File => wire::FileType::File,
        store::FileType::Dir => wire::FileType::Dir,
        store::FileType::Symlink => wire::FileType::Symlink,
        store::FileType::Other => wire::FileType::Other,
    }
}

fn kind_in(k: wire::FileType) -> store::FileType {
    match k {
        wire::FileType::File => store::FileType::File,
        wire::FileType::Dir => store::FileType::Dir,
        wire::FileType::Symlink => store::FileType::Symlink,
        wire::FileType::Other => store::FileType::Other,
    }
}

pub fn attr(a: &store::Attr) -> wire::Attr {
    wire::Attr {
        kind: kind(a.kind),
        perm: a.perm,
        ino: a.ino,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
    }
}

pub fn expect_in(e: wire::Expect) -> store::Expect {
    match e {
        wire::Expect::Any => store::Expect::Any,
        wire::Expect::Absent => store::Expect::Absent,
        wire::Expect::State(s) => store::Expect::State(store::FileState {
            kind: kind_in(s.kind),
            size: s.size,
            mtime: time_in(s.mtime),
        }),
    }
}

fn timeset_in(t: wire::TimeSet) -> store::TimeSet {
    match t {
        wire::TimeSet::Now => store::TimeSet::Now,
        wire::TimeSet::At(t) => store::TimeSet::At(time_in(t)),
    }
}

pub fn setattr_in(a: &wire::SetAttr) -> store::SetAttr {
    store::SetAttr {
        mode: a.mode,
        size: a.size,
        atime: a.atime.map(timeset_in),
        mtime: a.mtime.map(timeset_in),
    }
}

pub fn rename_mode_in(m: wire::RenameMode) -> store::RenameMode {
    match m {
        wire::RenameMode::Replace => store::RenameMode::Replace,
        wire::RenameMode::NoReplace => store::RenameMode::NoReplace,
        wire::RenameMode::Exchange => store::RenameMode::Exchange,
    }
}

pub fn statfs(s: &store::StatFs) -> wire::StatFs {
    wire::StatFs {
        block_size: s.block_size,
        fragment_size: s.fragment_size,
        blocks: s.blocks,
        blocks_free: s.blocks_free,
        blocks_available: s.blocks_available,
        files: s.files,
        files_free: s.files_free,
        name_max: s.name_max,
    }
}

fn change_kind(k: store::ChangeKind) -> wire::ChangeKind {
    use store::ChangeKind as S;
    use wire::ChangeKind as W;
    match k {
        S::Create => W::Create,
        S::Mkdir => W::Mkdir,
        S::Symlink => W::Symlink,
        S::Link => W::Link,
        S::ModifyStart => W::ModifyStart,
        S::ModifyEnd => W::ModifyEnd,
        S::SetAttr => W::SetAttr,
        S::Unlink => W::Unlink,
        S::Rmdir => W::Rmdir,
        S::Rename => W::Rename,
        S::Exchange => W::Exchange,
        S::Put => W::Put,
        S::Restore => W::Restore,
        S::ConflictParked => W::ConflictParked,
        S::ConflictAdopted => W::ConflictAdopted,
        // The store's kinds are non-exhaustive; a new one must get a wire code first.
        other => unreachable!("journal kind {other:?} has no protocol code"),
    }
}

pub fn change(e: &store::ChangeEntry) -> wire::ChangeEntry {
    wire::ChangeEntry {
        seq: e.seq,
        kind: change_kind(e.kind),
        time: time(e.time),
        path: e.path.clone(),
        new_path: e.new_path.clone(),
        size: e.size,
        mtime: time(e.mtime),
    }
}

pub fn changes(c: &store::Changes) -> wire::Changes {
    match c {
        store::Changes::Entries { entries, next } => wire::Changes::Entries {
            entries: entries.iter().map(change).collect(),
            next: *next,
        },
        store::Changes::RescanNeeded { floor, head } => wire::Changes::RescanNeeded {
            floor: *floor,
            head: *head,
        },
    }
}

pub fn version(v: &store::VersionInfo) -> wire::VersionInfo {
    wire::VersionInfo {
        id: v.id.0,
        path: v.path.clone(),
        time: time(v.time),
        size: v.size,
        kind: kind(v.kind),
        reason: match v.reason {
            store::VersionReason::Overwrite => wire::VersionReason::Overwrite,
            store::VersionReason::Delete => wire::VersionReason::Delete,
            store::VersionReason::Modify => wire::VersionReason::Modify,
            store::VersionReason::Conflict => wire::VersionReason::Conflict,
        },
        perm: v.perm,
        mtime: time(v.mtime),
    }
}

/// Newest first, capped at what one answer may carry (`truncated` says more exist).
pub fn version_list(mut list: Vec<store::VersionInfo>) -> wire::VersionList {
    list.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let truncated = list.len() > wire::MAX_VERSION_LIST;
    list.truncate(wire::MAX_VERSION_LIST);
    wire::VersionList {
        versions: list.iter().map(version).collect(),
        truncated,
    }
}

pub fn error_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::Exists => ErrorCode::Exists,
        ErrorKind::NotEmpty => ErrorCode::NotEmpty,
        ErrorKind::NotDir => ErrorCode::NotDir,
        ErrorKind::IsDir => ErrorCode::IsDir,
        ErrorKind::Symlink => ErrorCode::Symlink,
        ErrorKind::Invalid => ErrorCode::Invalid,
        ErrorKind::NameTooLong => ErrorCode::NameTooLong,
        ErrorKind::NoSpace => ErrorCode::NoSpace,
        ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        ErrorKind::TooBig => ErrorCode::FileTooBig,
        ErrorKind::TooManyLinks => ErrorCode::TooManyLinks,
        ErrorKind::Unsupported => ErrorCode::Unsupported,
        ErrorKind::Busy => ErrorCode::Busy,
        ErrorKind::Conflict => ErrorCode::Conflict,
        ErrorKind::RescanNeeded => ErrorCode::RescanNeeded,
        ErrorKind::Corrupt => ErrorCode::Corrupt,
        _ => ErrorCode::Io,
    }
}

/// The store's message already names the operation and the ciphertext path.
pub fn error(e: &StoreError) -> RemoteError {
    let code = match e {
        StoreError::BadPath { problem, .. } if problem.kind() == ErrorKind::Invalid => {
            ErrorCode::InvalidPath
        }
        _ => error_code(e.kind()),
    };
    RemoteError::new(code, e.to_string())
}

/// An error on an open handle's descriptor, named by the handle's last known path.
pub fn io_error(op: &str, what: &str, e: &std::io::Error) -> RemoteError {
    RemoteError::new(
        error_code(ErrorKind::from_io(e)),
        format!("{op} {what:?} (open handle): {e}"),
    )
}
