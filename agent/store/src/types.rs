//! Plain data the store's API takes and returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time with nanosecond resolution, as the filesystem keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds, 0..1_000_000_000.
    pub nanos: u32,
}

impl Timespec {
    /// A timespec from seconds and nanoseconds.
    pub fn new(secs: i64, nanos: u32) -> Timespec {
        Timespec { secs, nanos }
    }

    /// The time as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(self.nanos as u64)
        }
    }

    /// The timespec of a `SystemTime`.
    pub fn from_system_time(t: SystemTime) -> Timespec {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec::new(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timespec::new(secs, nanos)
            }
        }
    }

    pub(crate) fn to_libc(self) -> libc::timespec {
        crate::sys::timespec(self.secs, self.nanos)
    }
}

/// What an entry is. Anything other than these three is never created by the store and is
/// reported as `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

impl FileType {
    pub(crate) fn from_mode(mode: u32) -> FileType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        }
    }

    pub(crate) fn from_dtype(t: u8) -> Option<FileType> {
        match t {
            libc::DT_REG => Some(FileType::File),
            libc::DT_DIR => Some(FileType::Dir),
            libc::DT_LNK => Some(FileType::Symlink),
            libc::DT_UNKNOWN => None,
            _ => Some(FileType::Other),
        }
    }
}

/// The attributes of an entry (lstat: a symlink's own attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: FileType,
    /// Permission bits (07777), without the file type.
    pub perm: u32,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

impl Attr {
    pub(crate) fn from_stat(st: &libc::stat) -> Attr {
        Attr {
            kind: FileType::from_mode(st.st_mode),
            perm: st.st_mode & 0o7777,
            ino: st.st_ino,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: Timespec::new(st.st_atime, st.st_atime_nsec as u32),
            mtime: Timespec::new(st.st_mtime, st.st_mtime_nsec as u32),
            ctime: Timespec::new(st.st_ctime, st.st_ctime_nsec as u32),
        }
    }

    /// The state a sync peer remembers to detect a later change: see [`Expect`].
    pub fn state(&self) -> FileState {
        FileState {
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
        }
    }
}

/// What a sync peer last saw of a file, to detect a concurrent change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileState {
    pub kind: FileType,
    pub size: u64,
    pub mtime: Timespec,
}

/// A precondition on the current entry at a path for [`crate::Volume::put`] and
/// [`crate::Volume::delete`]: if it does not hold, the operation fails with
/// [`crate::ErrorKind::Conflict`] and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Expect {
    /// No precondition.
    #[default]
    Any,
    /// The path must not exist.
    Absent,
    /// The path must hold an entry of this kind, size and modification time.
    State(FileState),
}

/// One time in a [`SetAttr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time.
    Now,
    /// This time.
    At(Timespec),
}

/// Attributes to change; `None` leaves one alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (07777). The owner's read and write bits (and search on
    /// directories) are always kept, because the storage agent must keep reading what it
    /// stores; the consumer keeps the plaintext modes it shows.
    pub mode: Option<u32>,
    /// New size (a truncate or extension; a modification, so versioned).
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// How [`crate::Volume::rename`] treats an existing destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace it (its previous content is versioned first), like rename(2).
    #[default]
    Replace,
    /// Fail with `Exists` (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two entries atomically; both must exist (RENAME_EXCHANGE).
    Exchange,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileType,
    pub ino: u64,
}

/// One page of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// Pass this as the cookie to read the next page; `None` at the end of the directory.
    pub next: Option<u64>,
}

/// Filesystem usage, as statvfs reports it for the filesystem holding the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// What a change-journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A file was created (empty).
    Create,
    Mkdir,
    Symlink,
    /// A hard link `path` was made to the existing entry `new_path`.
    Link,
    /// In-place modification of `path` begins (first write or truncate of a session).
    ModifyStart,
    /// The modification session of `path` ended; size and mtime are final.
    ModifyEnd,
    /// Mode or times changed.
    SetAttr,
    Unlink,
    Rmdir,
    /// `path` was renamed to `new_path` (replacing what was there).
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
    pub(crate) const ALL: [ChangeKind; 15] = [
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

    pub(crate) fn code(self) -> u8 {
        ChangeKind::ALL.iter().position(|&k| k == self).unwrap() as u8 + 1
    }

    pub(crate) fn from_code(c: u8) -> Option<ChangeKind> {
        (c as usize)
            .checked_sub(1)
            .and_then(|i| ChangeKind::ALL.get(i).copied())
    }
}

/// One change-journal entry. It is written before the change it describes is made
/// (write-ahead), so a crash can leave an entry for a change that did not happen — never a
/// change without its entry (after a machine crash, a rescan: see the journal module). `size` and `mtime` are those the change produces, where known in advance (the
/// staged file of a put, the current file before a modification starts), else zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Sequence number: strictly increasing per volume, across restarts.
    pub seq: u64,
    pub kind: ChangeKind,
    /// When the entry was written (wall clock of the storage qube).
    pub time: Timespec,
    pub path: String,
    /// The destination of a rename/exchange, the link target's existing path for `Link`
    /// (`path` is the new link), the conflict id for `ConflictParked`.
    pub new_path: Option<String>,
    pub size: u64,
    pub mtime: Timespec,
}

/// The answer of [`crate::Volume::changes_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Entries with `seq >= since` in order, at most `limit`; ask again from `next`.
    Entries {
        entries: Vec<ChangeEntry>,
        next: u64,
    },
    /// The journal was compacted past `since`: entries from `floor` on are complete, older
    /// ones are gone. Rescan the tree, then continue from `head` (the next sequence number at
    /// the time of this answer).
    RescanNeeded { floor: u64, head: u64 },
}
