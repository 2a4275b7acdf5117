//! The plain data messages carry: attributes, directory entries, journal entries, versions.
//! Each type's byte layout is in docs/protocol.md ("Common types").

use crate::error::ErrorCode;
use crate::wire::{Dec, DecodeError, Enc};

/// Longest path: Linux PATH_MAX, the limit the storage's filesystem enforces anyway.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component: NAME_MAX. gocryptfs ciphertext names longer than this are stored
/// as `gocryptfs.longname.*`, so no valid ciphertext component exceeds it.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target: PATH_MAX less the terminating NUL (symlink(2)).
pub const MAX_LINK_TARGET: usize = 4095;

pub(crate) trait Wire: Sized {
    fn enc(&self, e: &mut Enc);
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError>;
}

/// Checks that `p` is a canonical path relative to the volume root: `""` is the root itself,
/// otherwise `/`-separated components that are not empty, `.` or `..`, with no NUL, each at
/// most [`MAX_NAME_LEN`] bytes and the whole at most [`MAX_PATH_LEN`]. The storage checks
/// again when it resolves the path; this check makes a hostile path fail at the door.
pub fn check_path(p: &str) -> Result<(), (ErrorCode, String)> {
    if p.len() > MAX_PATH_LEN {
        return Err((
            ErrorCode::NameTooLong,
            format!("the path is {} bytes; the limit is {MAX_PATH_LEN}", p.len()),
        ));
    }
    if p.is_empty() {
        return Ok(());
    }
    if p.as_bytes().contains(&0) {
        return Err((
            ErrorCode::InvalidPath,
            "the path contains a NUL byte".into(),
        ));
    }
    if p.starts_with('/') {
        return Err((
            ErrorCode::InvalidPath,
            "the path is absolute; paths are relative to the volume root".into(),
        ));
    }
    for (i, c) in p.split('/').enumerate() {
        let problem = match c {
            "" => "is empty (a doubled or trailing '/')",
            "." => "is \".\"",
            ".." => "is \"..\"",
            _ if c.len() > MAX_NAME_LEN => {
                return Err((
                    ErrorCode::NameTooLong,
                    format!(
                        "component {i} is {} bytes; the limit is {MAX_NAME_LEN}",
                        c.len()
                    ),
                ))
            }
            _ => continue,
        };
        return Err((ErrorCode::InvalidPath, format!("component {i} {problem}")));
    }
    Ok(())
}

pub(crate) fn enc_path(e: &mut Enc, p: &str) {
    e.str(p);
}

pub(crate) fn dec_path(d: &mut Dec<'_>, field: &'static str) -> Result<String, DecodeError> {
    let p = d.string(field, MAX_PATH_LEN).map_err(|e| {
        if e.code == ErrorCode::TooLarge {
            e.with_code(ErrorCode::NameTooLong)
        } else {
            e.with_code(ErrorCode::InvalidPath)
        }
    })?;
    check_path(&p).map_err(|(code, problem)| {
        DecodeError::new(field, format!("{p:?}: {problem}")).with_code(code)
    })?;
    Ok(p)
}

/// A point in time, nanosecond resolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// 0..1_000_000_000.
    pub nanos: u32,
}

impl Timespec {
    pub fn new(secs: i64, nanos: u32) -> Timespec {
        Timespec { secs, nanos }
    }
}

impl Wire for Timespec {
    fn enc(&self, e: &mut Enc) {
        e.i64(self.secs);
        e.u32(self.nanos);
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let secs = d.i64("time.secs")?;
        let nanos = d.u32("time.nanos")?;
        if nanos >= 1_000_000_000 {
            return Err(DecodeError::new(
                "time.nanos",
                format!("{nanos} is not below 10^9"),
            ));
        }
        Ok(Timespec { secs, nanos })
    }
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// Anything else (the storage never creates one).
    Other,
}

impl Wire for FileType {
    fn enc(&self, e: &mut Enc) {
        e.u8(match self {
            FileType::File => 1,
            FileType::Dir => 2,
            FileType::Symlink => 3,
            FileType::Other => 4,
        });
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("file type")? {
            1 => FileType::File,
            2 => FileType::Dir,
            3 => FileType::Symlink,
            4 => FileType::Other,
            t => return Err(DecodeError::new("file type", format!("unknown type {t}"))),
        })
    }
}

/// Attributes of an entry (of a symlink itself, never its target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: FileType,
    /// Permission bits (07777), without the type.
    pub perm: u32,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    /// Ciphertext size in bytes (a symlink: the length of its stored target).
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

/// Encoded size of an [`Attr`]: fixed.
pub(crate) const ATTR_LEN: usize = 1 + 4 + 8 + 8 + 4 + 4 + 8 + 8 + 3 * 12;

impl Wire for Attr {
    fn enc(&self, e: &mut Enc) {
        self.kind.enc(e);
        e.u32(self.perm);
        e.u64(self.ino);
        e.u64(self.nlink);
        e.u32(self.uid);
        e.u32(self.gid);
        e.u64(self.size);
        e.u64(self.blocks);
        self.atime.enc(e);
        self.mtime.enc(e);
        self.ctime.enc(e);
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let kind = FileType::dec(d)?;
        let perm = d.u32("attr.perm")?;
        if perm & !0o7777 != 0 {
            return Err(DecodeError::new(
                "attr.perm",
                format!("{perm:#o} has bits beyond 07777"),
            ));
        }
        Ok(Attr {
            kind,
            perm,
            ino: d.u64("attr.ino")?,
            nlink: d.u64("attr.nlink")?,
            uid: d.u32("attr.uid")?,
            gid: d.u32("attr.gid")?,
            size: d.u64("attr.size")?,
            blocks: d.u64("attr.blocks")?,
            atime: Timespec::dec(d)?,
            mtime: Timespec::dec(d)?,
            ctime: Timespec::dec(d)?,
        })
    }
}

/// The file an I/O request acts on: a path, or a handle from `Open`/`Create`. A handle keeps
/// naming the same file after it is renamed or unlinked (while it stays open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRef {
    Path(String),
    Handle(u64),
}

impl Wire for FileRef {
    fn enc(&self, e: &mut Enc) {
        match self {
            FileRef::Path(p) => {
                e.u8(0);
                enc_path(e, p);
            }
            FileRef::Handle(h) => {
                e.u8(1);
                e.u64(*h);
            }
        }
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("file ref")? {
            0 => FileRef::Path(dec_path(d, "file ref path")?),
            1 => FileRef::Handle(d.u64("file ref handle")?),
            t => {
                return Err(DecodeError::new(
                    "file ref",
                    format!("tag {t} is neither 0 (path) nor 1 (handle)"),
                ))
            }
        })
    }
}

/// How `Open` opens a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open for writing as well as reading (the consumer rewrites whole ciphertext blocks, so
    /// it always reads).
    pub write: bool,
    /// Truncate to zero length on open (O_TRUNC).
    pub truncate: bool,
}

const OPEN_WRITE: u32 = 1;
const OPEN_TRUNCATE: u32 = 2;

impl Wire for OpenFlags {
    fn enc(&self, e: &mut Enc) {
        e.u32(
            if self.write { OPEN_WRITE } else { 0 } | if self.truncate { OPEN_TRUNCATE } else { 0 },
        );
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let f = d.u32("open flags")?;
        if f & !(OPEN_WRITE | OPEN_TRUNCATE) != 0 {
            return Err(
                DecodeError::new("open flags", format!("unknown bits in {f:#x}"))
                    .with_code(ErrorCode::Invalid),
            );
        }
        Ok(OpenFlags {
            write: f & OPEN_WRITE != 0,
            truncate: f & OPEN_TRUNCATE != 0,
        })
    }
}

/// One time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The storage's current time.
    Now,
    At(Timespec),
}

impl Wire for TimeSet {
    fn enc(&self, e: &mut Enc) {
        match self {
            TimeSet::Now => e.u8(0),
            TimeSet::At(t) => {
                e.u8(1);
                t.enc(e);
            }
        }
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("time set")? {
            0 => TimeSet::Now,
            1 => TimeSet::At(Timespec::dec(d)?),
            t => return Err(DecodeError::new("time set", format!("unknown tag {t}"))),
        })
    }
}

/// Attributes to change; `None` leaves one alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (07777).
    pub mode: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

impl Wire for SetAttr {
    fn enc(&self, e: &mut Enc) {
        e.opt(&self.mode, |e, m| e.u32(*m));
        e.opt(&self.size, |e, s| e.u64(*s));
        e.opt(&self.atime, |e, t| t.enc(e));
        e.opt(&self.mtime, |e, t| t.enc(e));
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let mode = d.opt("setattr.mode", |d| dec_mode(d, "setattr.mode"))?;
        Ok(SetAttr {
            mode,
            size: d.opt("setattr.size", |d| d.u64("setattr.size"))?,
            atime: d.opt("setattr.atime", TimeSet::dec)?,
            mtime: d.opt("setattr.mtime", TimeSet::dec)?,
        })
    }
}

pub(crate) fn dec_mode(d: &mut Dec<'_>, field: &'static str) -> Result<u32, DecodeError> {
    let m = d.u32(field)?;
    if m & !0o7777 != 0 {
        return Err(
            DecodeError::new(field, format!("mode {m:#o} has bits beyond 07777"))
                .with_code(ErrorCode::Invalid),
        );
    }
    Ok(m)
}

/// How `Rename` treats an existing destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it atomically, like rename(2).
    #[default]
    Replace,
    /// Fail with `Exists` (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two entries; both must exist (RENAME_EXCHANGE).
    Exchange,
}

impl Wire for RenameMode {
    fn enc(&self, e: &mut Enc) {
        e.u8(match self {
            RenameMode::Replace => 0,
            RenameMode::NoReplace => 1,
            RenameMode::Exchange => 2,
        });
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("rename mode")? {
            0 => RenameMode::Replace,
            1 => RenameMode::NoReplace,
            2 => RenameMode::Exchange,
            m => {
                return Err(DecodeError::new("rename mode", format!("unknown mode {m}"))
                    .with_code(ErrorCode::Invalid))
            }
        })
    }
}

/// One directory entry; `attr` is present when the request asked for attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// One ciphertext name component.
    pub name: String,
    pub kind: FileType,
    pub ino: u64,
    pub attr: Option<Attr>,
}

impl Wire for DirEntry {
    fn enc(&self, e: &mut Enc) {
        e.str(&self.name);
        self.kind.enc(e);
        e.u64(self.ino);
        e.opt(&self.attr, |e, a| a.enc(e));
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let name = d.string("dirent.name", MAX_NAME_LEN)?;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(DecodeError::new(
                "dirent.name",
                format!("{name:?} is not a single name component"),
            ));
        }
        Ok(DirEntry {
            name,
            kind: FileType::dec(d)?,
            ino: d.u64("dirent.ino")?,
            attr: d.opt("dirent.attr", Attr::dec)?,
        })
    }
}

/// One page of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// The cookie for the next page; `None` at the end of the directory.
    pub next: Option<u64>,
}

/// Most entries in one readdir page (the store's page limit): 1024 entries with attributes
/// take at most ~380 KiB, well inside one frame.
pub const MAX_READDIR_PAGE: usize = 1024;

impl Wire for DirPage {
    fn enc(&self, e: &mut Enc) {
        e.list(&self.entries, |e, x| x.enc(e));
        e.opt(&self.next, |e, n| e.u64(*n));
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(DirPage {
            entries: d.list("dirpage.entries", MAX_READDIR_PAGE, 14, DirEntry::dec)?,
            next: d.opt("dirpage.next", |d| d.u64("dirpage.next"))?,
        })
    }
}

/// Filesystem usage where the volume is stored (statvfs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u64,
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u64,
}

impl Wire for StatFs {
    fn enc(&self, e: &mut Enc) {
        for v in [
            self.block_size,
            self.fragment_size,
            self.blocks,
            self.blocks_free,
            self.blocks_available,
            self.files,
            self.files_free,
            self.name_max,
        ] {
            e.u64(v);
        }
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(StatFs {
            block_size: d.u64("statfs.block_size")?,
            fragment_size: d.u64("statfs.fragment_size")?,
            blocks: d.u64("statfs.blocks")?,
            blocks_free: d.u64("statfs.blocks_free")?,
            blocks_available: d.u64("statfs.blocks_available")?,
            files: d.u64("statfs.files")?,
            files_free: d.u64("statfs.files_free")?,
            name_max: d.u64("statfs.name_max")?,
        })
    }
}

/// What a change-journal entry records (the store's journal kinds, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Create,
    Mkdir,
    Symlink,
    /// A hard link `path` was made to the existing entry `new_path`.
    Link,
    /// In-place modification of `path` began.
    ModifyStart,
    /// The modification session of `path` ended; size and mtime are final.
    ModifyEnd,
    SetAttr,
    Unlink,
    Rmdir,
    /// `path` was renamed to `new_path`.
    Rename,
    /// `path` and `new_path` were swapped.
    Exchange,
    /// `path` was replaced as a whole by an atomic put.
    Put,
    /// `path` was replaced by a restored version.
    Restore,
    /// A conflicting copy of `path` was parked; `new_path` holds the conflict id.
    ConflictParked,
    /// A parked conflict copy was moved into the tree at `path`.
    ConflictAdopted,
}

impl ChangeKind {
    /// Every kind in wire order: the code of `ALL[i]` is `i + 1`.
    pub const ALL: [ChangeKind; 15] = [
        ChangeKind::Create,
        ChangeKind::Mkdir,
        ChangeKind::Symlink,
        ChangeKind::Link,
        ChangeKind::ModifyStart,
        ChangeKind::ModifyEnd,
        ChangeKind::SetAttr,
        ChangeKind::Unlink,
        ChangeKind::Rmdir,
        ChangeKind::Rename,
        ChangeKind::Exchange,
        ChangeKind::Put,
        ChangeKind::Restore,
        ChangeKind::ConflictParked,
        ChangeKind::ConflictAdopted,
    ];

    /// The kind's number on the wire (1..=15).
    pub fn code(self) -> u8 {
        ChangeKind::ALL.iter().position(|&k| k == self).unwrap_or(0) as u8 + 1
    }

    pub fn from_code(c: u8) -> Option<ChangeKind> {
        (c as usize)
            .checked_sub(1)
            .and_then(|i| ChangeKind::ALL.get(i).copied())
    }
}

/// One change-journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Strictly increasing per volume, across restarts of the storage.
    pub seq: u64,
    pub kind: ChangeKind,
    /// When the entry was written (storage clock).
    pub time: Timespec,
    pub path: String,
    /// The rename/exchange destination, the existing entry of a link, the conflict id of a
    /// parked conflict (16 hex digits) — not always a path, so not checked as one.
    pub new_path: Option<String>,
    pub size: u64,
    pub mtime: Timespec,
}

impl Wire for ChangeEntry {
    fn enc(&self, e: &mut Enc) {
        e.u64(self.seq);
        e.u8(self.kind.code());
        self.time.enc(e);
        enc_path(e, &self.path);
        e.opt(&self.new_path, |e, p| e.str(p));
        e.u64(self.size);
        self.mtime.enc(e);
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        let seq = d.u64("change.seq")?;
        let k = d.u8("change.kind")?;
        let kind = ChangeKind::from_code(k)
            .ok_or_else(|| DecodeError::new("change.kind", format!("unknown kind {k}")))?;
        Ok(ChangeEntry {
            seq,
            kind,
            time: Timespec::dec(d)?,
            path: dec_path(d, "change.path")?,
            new_path: d.opt("change.new_path", |d| {
                d.string("change.new_path", MAX_PATH_LEN)
            })?,
            size: d.u64("change.size")?,
            mtime: Timespec::dec(d)?,
        })
    }
}

/// Most journal entries in one `ChangesSince` answer. With typical ciphertext paths (under
/// 200 bytes) 1024 entries take ~250 KiB; an answer that would not fit in a frame is refused
/// with `TooLarge` and the caller asks for fewer.
pub const MAX_CHANGES_PAGE: usize = 1024;

/// The answer to `ChangesSince`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Entries with `seq >= since`, in order; ask again from `next`.
    Entries {
        entries: Vec<ChangeEntry>,
        next: u64,
    },
    /// The journal was compacted past `since`: entries from `floor` on are complete. Rescan
    /// the tree, then continue from `head`.
    RescanNeeded { floor: u64, head: u64 },
}

impl Wire for Changes {
    fn enc(&self, e: &mut Enc) {
        match self {
            Changes::Entries { entries, next } => {
                e.u8(0);
                e.list(entries, |e, x| x.enc(e));
                e.u64(*next);
            }
            Changes::RescanNeeded { floor, head } => {
                e.u8(1);
                e.u64(*floor);
                e.u64(*head);
            }
        }
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("changes")? {
            0 => Changes::Entries {
                entries: d.list("changes.entries", MAX_CHANGES_PAGE, 46, ChangeEntry::dec)?,
                next: d.u64("changes.next")?,
            },
            1 => Changes::RescanNeeded {
                floor: d.u64("changes.floor")?,
                head: d.u64("changes.head")?,
            },
            t => return Err(DecodeError::new("changes", format!("unknown tag {t}"))),
        })
    }
}

/// What a sync peer last saw of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileState {
    pub kind: FileType,
    pub size: u64,
    pub mtime: Timespec,
}

/// A precondition on the current entry at a path for `Put` and `Delete`; if it does not
/// hold, the request fails with `Conflict` and changes nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    #[default]
    Any,
    /// The path must not exist.
    Absent,
    /// The path must hold an entry of this kind, size and mtime.
    State(FileState),
}

impl Wire for Expect {
    fn enc(&self, e: &mut Enc) {
        match self {
            Expect::Any => e.u8(0),
            Expect::Absent => e.u8(1),
            Expect::State(s) => {
                e.u8(2);
                s.kind.enc(e);
                e.u64(s.size);
                s.mtime.enc(e);
            }
        }
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("expect")? {
            0 => Expect::Any,
            1 => Expect::Absent,
            2 => Expect::State(FileState {
                kind: FileType::dec(d)?,
                size: d.u64("expect.size")?,
                mtime: Timespec::dec(d)?,
            }),
            t => {
                return Err(DecodeError::new("expect", format!("unknown tag {t}"))
                    .with_code(ErrorCode::Invalid))
            }
        })
    }
}

/// Why a version was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionReason {
    Overwrite,
    Delete,
    Modify,
    Conflict,
}

impl Wire for VersionReason {
    fn enc(&self, e: &mut Enc) {
        e.u8(match self {
            VersionReason::Overwrite => 1,
            VersionReason::Delete => 2,
            VersionReason::Modify => 3,
            VersionReason::Conflict => 4,
        });
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(match d.u8("version.reason")? {
            1 => VersionReason::Overwrite,
            2 => VersionReason::Delete,
            3 => VersionReason::Modify,
            4 => VersionReason::Conflict,
            r => {
                return Err(DecodeError::new(
                    "version.reason",
                    format!("unknown reason {r}"),
                ))
            }
        })
    }
}

/// One preserved version, or one parked conflict copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub id: u64,
    /// The path the content had when it was preserved.
    pub path: String,
    /// When it was preserved (storage clock).
    pub time: Timespec,
    pub size: u64,
    pub kind: FileType,
    pub reason: VersionReason,
    pub perm: u32,
    pub mtime: Timespec,
}

impl Wire for VersionInfo {
    fn enc(&self, e: &mut Enc) {
        e.u64(self.id);
        enc_path(e, &self.path);
        self.time.enc(e);
        e.u64(self.size);
        self.kind.enc(e);
        self.reason.enc(e);
        e.u32(self.perm);
        self.mtime.enc(e);
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(VersionInfo {
            id: d.u64("version.id")?,
            path: dec_path(d, "version.path")?,
            time: Timespec::dec(d)?,
            size: d.u64("version.size")?,
            kind: FileType::dec(d)?,
            reason: VersionReason::dec(d)?,
            perm: dec_mode(d, "version.perm")?,
            mtime: Timespec::dec(d)?,
        })
    }
}

/// Most versions or conflicts in one answer; the server sends the newest that fit and sets
/// `truncated`.
pub const MAX_VERSION_LIST: usize = 4096;

/// A list of versions or conflicts, newest last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionList {
    pub versions: Vec<VersionInfo>,
    /// Older entries exist that did not fit in the answer.
    pub truncated: bool,
}

impl Wire for VersionList {
    fn enc(&self, e: &mut Enc) {
        e.list(&self.versions, |e, x| x.enc(e));
        e.bool(self.truncated);
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(VersionList {
            versions: d.list("versions", MAX_VERSION_LIST, 50, VersionInfo::dec)?,
            truncated: d.bool("versions.truncated")?,
        })
    }
}

/// One entry of a whole-tree listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    pub attr: Attr,
}

/// Most entries in one `ListTree` page: with paths under 200 bytes ~300 KiB.
pub const MAX_TREE_PAGE: usize = 1024;

/// One page of a whole-tree listing in pre-order, siblings sorted by name bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreePage {
    pub entries: Vec<TreeEntry>,
    /// Pass as `after` to get the next page; `None` when the walk is complete.
    pub next: Option<String>,
}

impl Wire for TreePage {
    fn enc(&self, e: &mut Enc) {
        e.list(&self.entries, |e, x| {
            enc_path(e, &x.path);
            x.attr.enc(e);
        });
        e.opt(&self.next, |e, p| enc_path(e, p));
    }
    fn dec(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
        Ok(TreePage {
            entries: d.list("tree.entries", MAX_TREE_PAGE, 4 + ATTR_LEN, |d| {
                Ok(TreeEntry {
                    path: dec_path(d, "tree.path")?,
                    attr: Attr::dec(d)?,
                })
            })?,
            next: d.opt("tree.next", |d| dec_path(d, "tree.next"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in ["", "a", "a/b", "gocryptfs.diriv", "x/y/z.c"] {
            assert!(check_path(ok).is_ok(), "{ok:?}");
        }
        let long = "a".repeat(256);
        for (bad, code) in [
            ("/a", ErrorCode::InvalidPath),
            ("a//b", ErrorCode::InvalidPath),
            ("a/", ErrorCode::InvalidPath),
            ("..", ErrorCode::InvalidPath),
            ("a/../b", ErrorCode::InvalidPath),
            ("./a", ErrorCode::InvalidPath),
            ("a\0b", ErrorCode::InvalidPath),
            (long.as_str(), ErrorCode::NameTooLong),
        ] {
            assert_eq!(check_path(bad).unwrap_err().0, code, "{bad:?}");
        }
        let too_long = vec!["a"; 2049].join("/");
        assert_eq!(check_path(&too_long).unwrap_err().0, ErrorCode::NameTooLong);
    }

    #[test]
    fn change_kind_codes_match_the_store() {
        for (i, k) in ChangeKind::ALL.iter().enumerate() {
            assert_eq!(k.code() as usize, i + 1);
            assert_eq!(ChangeKind::from_code(k.code()), Some(*k));
        }
        assert_eq!(ChangeKind::from_code(0), None);
        assert_eq!(ChangeKind::from_code(16), None);
    }

    #[test]
    fn attr_len_is_what_is_encoded() {
        let a = Attr {
            kind: FileType::File,
            perm: 0o644,
            ino: 1,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
        };
        let mut e = Enc::new();
        a.enc(&mut e);
        assert_eq!(e.buf.len(), ATTR_LEN);
    }
}
