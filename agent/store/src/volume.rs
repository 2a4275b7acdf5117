//! One volume: filesystem operations on its ciphertext tree, confined beneath the tree root,
//! each change journaled (write-ahead; see the journal module for what a crash keeps) and
//! each destructive change versioned first, durably.
//!
//! Confinement: a multi-component path is only ever opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` on the tree's directory descriptor; the
//! final component is then acted on with an `*at` syscall on the parent's descriptor with
//! `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW` (or none of the follow flags for linkat). A directory
//! swapped for a symlink between two calls therefore makes the second fail with `Symlink`,
//! it never leads outside: the parent descriptor is already pinned, and no lookup crosses a
//! symlink.
//!
//! Locking: namespace changes (create, mkdir, symlink, link, unlink, rmdir, rename, put,
//! delete, restore, conflicts) hold the volume's namespace lock exclusively, so "check,
//! version, journal, change" is atomic against each other; in-place writes and attribute
//! changes hold it shared; reads take no lock.
//!
//! Version-snapshot rule for in-place changes (write, truncate, setattr size): a *modification
//! session* of a file (keyed by its inode) begins at the first in-place change when none is
//! open; at that moment the file's current content is copied (reflinked where the filesystem
//! can) into the version area durably, and a `ModifyStart` entry is journaled, before the
//! change is made. The session ends when the consumer calls [`Volume::release`] (its last
//! handle closed), when the file is renamed, replaced or unlinked, or when no change arrived
//! for the quiet interval (default 5 s; checked by [`Volume::end_quiet_sessions`] and lazily
//! on the next change); its end journals `ModifyEnd` with the final size and mtime.
//! `fsync` does not end a session: a writer that fsyncs after every write would otherwise
//! copy the whole file for every write. An empty file is not snapshotted (nothing to lose).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::error::{ErrorKind, IoContext, Result, StoreError};
use crate::journal::{Journal, JournalOptions, Subscription};
use crate::modes;
use crate::path::RelPath;
use crate::store::StoreConfig;
use crate::sys;
use crate::types::*;
use crate::versions::{PruneReport, VersionId, VersionInfo, VersionReason, Versions};

/// Longest read served in one call: 1 MiB. FUSE reads are at most 1 MiB (max_read), and a
/// bigger answer would only make a bigger protocol frame; stream whole files with `get`.
pub const MAX_READ: usize = 1 << 20;

/// Most entries in one readdir page: bounds one answer's size (about 300 KiB of names).
pub const MAX_READDIR_PAGE: usize = 1024;

/// Longest symlink target: PATH_MAX less the terminating NUL.
pub const MAX_SYMLINK_TARGET: usize = 4095;

struct Session {
    file: Arc<File>,
    path: String,
    last: Timespec,
    /// Its `ModifyStart` is journaled. A session not started is one prepared by the
    /// file's creation: the first change through the creator's handle starts it with the
    /// descriptor the creation opened, with no lookup of the path.
    started: bool,
    /// Ended and removed from the table; a thread that finds this must look up again.
    dead: bool,
}

type InodeKey = (u64, u64);

/// Identity of a stored file (device, inode): ties a peer's handle to the file it opened.
pub type FileKey = (u64, u64);

/// A parked conflict copy (see [`Volume::park_conflict`]).
pub type ConflictInfo = VersionInfo;

/// Options of [`Volume::put`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Precondition on what the path holds now.
    pub expect: Expect,
    /// Permission bits of the new file (default: those of the file it replaces, so a
    /// script changed elsewhere stays executable; 0600 for a new file).
    pub mode: Option<u32>,
    /// Modification time of the new file (default: now).
    pub mtime: Option<Timespec>,
}

/// The mode a staged file takes into the tree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StagedMode {
    /// The one it was staged with.
    AsStaged,
    /// That of the regular file it replaces, if any (else as staged).
    OfReplaced,
}

/// A whole-file reader over a file opened once: a concurrent replace (put, rename) does not
/// affect what it reads. In-place writes by a consumer to the same inode would; check
/// [`FileReader::changed`] after reading.
pub struct FileReader {
    file: File,
    attr: Attr,
    pos: u64,
}

impl FileReader {
    /// The file's attributes when it was opened.
    pub fn attr(&self) -> &Attr {
        &self.attr
    }

    /// Whether the open file's size or mtime differ from when it was opened (its content was
    /// modified in place). Not ctime: keeping a replaced file as a version links it, which
    /// changes ctime but not content.
    pub fn changed(&self) -> io::Result<bool> {
        let now = Attr::from_stat(&sys::fstat(self.file.as_fd())?);
        Ok(now.size != self.attr.size || now.mtime != self.attr.mtime)
    }

    /// Reads at an offset without moving the stream position.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A file [`Volume::create_open`] made (or found, when not exclusive), open for reading and
/// writing.
#[derive(Debug)]
pub struct Created {
    pub file: File,
    pub attr: Attr,
    pub key: FileKey,
    /// Its directory's attributes after the creation.
    pub parent: Attr,
}

/// A directory [`Volume::mkdir_with_file`] made, and its parent's attributes after.
#[derive(Debug, Clone)]
pub struct Made {
    pub attr: Attr,
    pub parent: Attr,
}

/// Usage figures of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeStats {
    pub journal_floor: u64,
    pub journal_head: u64,
    pub journal_bytes: u64,
    pub journal_records: usize,
    pub versions: usize,
    pub version_bytes: u64,
    pub conflicts: usize,
    pub open_sessions: usize,
}

/// One volume of the store. All methods take `&self` and may be called from many threads
/// at once. Paths are [`RelPath`]s relative to the volume's tree root.
pub struct Volume {
    name: String,
    tree: OwnedFd,
    staging: OwnedFd,
    journal: Journal,
    versions: Versions,
    conflicts: Versions,
    ns: RwLock<()>,
    sessions: Mutex<HashMap<InodeKey, Arc<Mutex<Session>>>>,
    cfg: Arc<StoreConfig>,
    counter: AtomicU64,
}

fn key_of(st: &libc::stat) -> InodeKey {
    (st.st_dev, st.st_ino)
}

fn ts_mtime(st: &libc::stat) -> Timespec {
    Timespec::new(st.st_mtime, st.st_mtime_nsec as u32)
}

fn kind_of(st: &libc::stat) -> FileType {
    FileType::from_mode(st.st_mode)
}

fn root_refused(op: &'static str) -> StoreError {
    StoreError::BadPath {
        op,
        path: String::new(),
        problem: crate::path::PathProblem::Root,
    }
}

impl Volume {
    pub(crate) fn open(
        name: String,
        dir: BorrowedFd<'_>,
        label: &str,
        cfg: Arc<StoreConfig>,
    ) -> Result<Volume> {
        let sub = |n: &str, flags: i32| {
            sys::open_beneath(dir, n, flags | libc::O_DIRECTORY, 0)
                .ctx("open volume directory", &format!("{label}/{n}"))
        };
        let tree = sub("tree", libc::O_PATH)?;
        let staging = sub("staging", libc::O_RDONLY)?;
        // Leftovers in staging are puts that never completed: never visible, safe to drop.
        let mut left = Vec::new();
        sys::read_dir_from(staging.as_fd(), 0, usize::MAX, &mut left)
            .ctx("list", &format!("{label}/staging"))?;
        for d in left {
            if let Ok(n) = String::from_utf8(d.name) {
                let _ = sys::unlink_at(staging.as_fd(), &n, false);
            }
        }
        let journal = Journal::open(
            sub("journal", libc::O_RDONLY)?,
            format!("{label}/journal"),
            JournalOptions {
                max_bytes: cfg.journal_max_bytes,
                boot_id: cfg.boot_id.clone(),
                reservation: cfg.journal_reservation,
            },
        )?;
        let names_in_order = cfg.names_in_order.unwrap_or(false);
        let versions = Versions::open(
            sub("versions", libc::O_RDONLY)?,
            format!("{label}/versions"),
            names_in_order,
        )?;
        let conflicts = Versions::open(
            sub("conflicts", libc::O_RDONLY)?,
            format!("{label}/conflicts"),
            names_in_order,
        )?;
        let v = Volume {
            name,
            tree,
            staging,
            journal,
            versions,
            conflicts,
            ns: RwLock::new(()),
            sessions: Mutex::new(HashMap::new()),
            cfg,
            counter: AtomicU64::new(0),
        };
        v.close_crashed_sessions()?;
        Ok(v)
    }

    /// A modification session open when the agent died has no `ModifyEnd`; a reader that
    /// consumed the `ModifyStart` before the crash must still learn that the file changed.
    fn close_crashed_sessions(&self) -> Result<()> {
        let mut open: HashMap<String, u64> = HashMap::new();
        for e in self.journal.all_entries()? {
            match e.kind {
                ChangeKind::ModifyStart => {
                    open.insert(e.path.clone(), e.seq);
                }
                _ => {
                    open.remove(&e.path);
                    if let Some(n) = &e.new_path {
                        open.remove(n);
                    }
                }
            }
        }
        let mut paths: Vec<_> = open.into_iter().collect();
        paths.sort_by_key(|(_, s)| *s);
        for (p, _) in paths {
            let rp = match RelPath::new(&p) {
                Ok(rp) => rp,
                Err(_) => continue,
            };
            let (size, mtime) = match self.lstat(&rp) {
                Ok(st) => (st.st_size as u64, ts_mtime(&st)),
                Err(_) => (0, Timespec::default()),
            };
            self.journal
                .append(ChangeKind::ModifyEnd, &p, None, size, mtime, self.now())?;
        }
        Ok(())
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn now(&self) -> Timespec {
        Timespec::from_system_time((self.cfg.clock)())
    }

    // ---- resolution -------------------------------------------------------------------

    /// The parent directory of `p` (pinned, opened beneath the root without following any
    /// symlink) and `p`'s final name.
    fn parent<'p>(
        &self,
        op: &'static str,
        p: &'p RelPath,
        flags: i32,
    ) -> Result<(OwnedFd, &'p str)> {
        let (parent, name) = p.split_last().ok_or_else(|| root_refused(op))?;
        let fd = sys::open_beneath(self.tree.as_fd(), parent, flags | libc::O_DIRECTORY, 0)
            .ctx(op, p.as_str())?;
        Ok((fd, name))
    }

    /// Opens `p` (a final symlink not followed) whatever its permission bits say (see the
    /// `modes` module). The caller does not hold the namespace lock: a lift takes it, to
    /// keep the name from being replaced while its mode is lifted.
    fn open_obj(&self, op: &'static str, p: &RelPath, flags: i32) -> Result<File> {
        self.open_obj_with(op, p, flags, false)
    }

    /// [`Volume::open_obj`] for a caller that holds the namespace lock.
    fn open_obj_locked(&self, op: &'static str, p: &RelPath, flags: i32) -> Result<File> {
        self.open_obj_with(op, p, flags, true)
    }

    fn open_obj_with(
        &self,
        op: &'static str,
        p: &RelPath,
        flags: i32,
        ns_held: bool,
    ) -> Result<File> {
        match sys::open_beneath(self.tree.as_fd(), p.as_str(), flags | libc::O_NOFOLLOW, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && !p.is_root() => {
                let _g = (!ns_held).then(|| self.ns.read().unwrap());
                let (dir, name) = self.parent(op, p, libc::O_PATH)?;
                modes::open_whatever_mode(dir.as_fd(), name, flags)
            }
            r => r,
        }
        .map(File::from)
        .ctx(op, p.as_str())
    }

    fn lstat(&self, p: &RelPath) -> Result<libc::stat> {
        if p.is_root() {
            return sys::fstat(self.tree.as_fd()).ctx("stat", "");
        }
        let (dir, name) = self.parent("stat", p, libc::O_PATH)?;
        sys::stat_at(dir.as_fd(), name).ctx("stat", p.as_str())
    }

    // ---- reading ----------------------------------------------------------------------

    /// lstat: the attributes of the entry itself (a symlink's own). The root is allowed.
    pub fn stat(&self, p: &RelPath) -> Result<Attr> {
        self.lstat(p).map(|st| Attr::from_stat(&st))
    }

    /// One page of the directory `p` (the root allowed), starting at `cookie` (0 for the
    /// first page), at most `max` entries (capped at [`MAX_READDIR_PAGE`]). "." and ".." are
    /// not listed; names that are not UTF-8 (never written by cloudstore or gocryptfs) are
    /// skipped with a warning.
    pub fn readdir(&self, p: &RelPath, cookie: u64, max: usize) -> Result<DirPage> {
        let dir = sys::open_beneath(
            self.tree.as_fd(),
            p.as_str(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .ctx("readdir", p.as_str())?;
        let max = max.clamp(1, MAX_READDIR_PAGE);
        let mut raw = Vec::new();
        let end = sys::read_dir_from(dir.as_fd(), cookie as i64, max, &mut raw)
            .ctx("readdir", p.as_str())?;
        let next = if end {
            None
        } else {
            raw.last().map(|d| d.off as u64)
        };
        let mut entries = Vec::with_capacity(raw.len());
        for d in raw {
            let name = match String::from_utf8(d.name) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(volume = %self.name, dir = %p, name = ?String::from_utf8_lossy(e.as_bytes()), "skipping a name that is not UTF-8");
                    continue;
                }
            };
            let kind = match FileType::from_dtype(d.dtype) {
                Some(k) => k,
                None => sys::stat_at(dir.as_fd(), &name)
                    .map(|st| kind_of(&st))
                    .unwrap_or(FileType::Other),
            };
            entries.push(DirEntry {
                name,
                kind,
                ino: d.ino,
            });
        }
        Ok(DirPage { entries, next })
    }

    /// Reads up to `len` bytes (at most [`MAX_READ`]) at `offset`; shorter at end of file.
    pub fn read(&self, p: &RelPath, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(StoreError::refused(
                "read",
                p.as_str(),
                ErrorKind::Invalid,
                format!("{len} bytes asked; one read returns at most {MAX_READ}"),
            ));
        }
        let f = self.open_obj("read", p, libc::O_RDONLY)?;
        crate::sequential::read_upto(&f, offset, len)
            .map_err(|e| StoreError::fs("read", p.as_str(), e))
    }

    /// The target of the symlink `p`, as stored (never resolved).
    pub fn readlink(&self, p: &RelPath) -> Result<Vec<u8>> {
        let (dir, name) = self.parent("readlink", p, libc::O_PATH)?;
        sys::readlink_at(dir.as_fd(), name).ctx("readlink", p.as_str())
    }

    /// Filesystem usage of the volume's filesystem.
    pub fn statfs(&self) -> Result<StatFs> {
        let s = sys::fstatvfs(self.tree.as_fd()).ctx("statfs", "")?;
        Ok(StatFs {
            block_size: s.f_bsize as u64,
            fragment_size: s.f_frsize as u64,
            blocks: s.f_blocks as u64,
            blocks_free: s.f_bfree as u64,
            blocks_available: s.f_bavail as u64,
            files: s.f_files as u64,
            files_free: s.f_ffree as u64,
            name_max: s.f_namemax as u64,
        })
    }

    // ---- in-place modification --------------------------------------------------------

    /// Runs `f` on the open file inside its modification session (see the module docs).
    /// With `only_if` set, does nothing and returns `None` unless `p` still names that file
    /// (checked under the namespace lock, so a concurrent rename cannot slip in between).
    fn modify<T>(
        &self,
        op: &'static str,
        p: &RelPath,
        only_if: Option<FileKey>,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<Option<T>> {
        let _g = self.ns.read().unwrap();
        // A change through a peer's handle while the file's session is under way needs no
        // new descriptor: a session ends whenever its path stops naming its file (rename,
        // unlink, replace: all under the name lock this holds), so the session's own
        // descriptor is the file `p` names. Saves a random writer an open and a stat each.
        let live = only_if.and_then(|k| self.sessions.lock().unwrap().get(&k).cloned());
        if let Some(sess) = live {
            let mut s = sess.lock().unwrap();
            let now = self.now();
            if !s.dead && s.path == p.as_str() && !(s.started && self.quiet_for(&s, now)) {
                let file = s.file.clone();
                if !s.started {
                    self.start_session(op, p, &mut s, &file, now)?;
                }
                s.last = now;
                return f(&file).ctx(op, p.as_str()).map(Some);
            }
        }
        let file = match self.open_obj_locked(op, p, libc::O_RDWR) {
            Ok(f) => Arc::new(f),
            Err(e) if only_if.is_some() && e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = sys::fstat(file.as_fd()).ctx(op, p.as_str())?;
        let key = key_of(&st);
        if only_if.is_some_and(|k| k != key) {
            return Ok(None);
        }
        loop {
            let sess = {
                let mut table = self.sessions.lock().unwrap();
                table
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Session {
                            file: file.clone(),
                            path: String::new(),
                            last: Timespec::default(),
                            started: false,
                            dead: false,
                        }))
                    })
                    .clone()
            };
            let mut s = sess.lock().unwrap();
            if s.dead {
                continue;
            }
            let now = self.now();
            let quiet = s.started && self.quiet_for(&s, now);
            if quiet {
                self.journal_end(&s)?;
            }
            if !s.started || quiet {
                self.start_session(op, p, &mut s, &file, now)?;
            }
            s.last = now;
            return f(&file).ctx(op, p.as_str()).map(Some);
        }
    }

    /// Starts session `s` of `file` at `p`: keeps the content as a version (an empty file
    /// has nothing to keep) and journals `ModifyStart`.
    fn start_session(
        &self,
        op: &'static str,
        p: &RelPath,
        s: &mut Session,
        file: &Arc<File>,
        now: Timespec,
    ) -> Result<()> {
        let cur = sys::fstat(file.as_fd()).ctx(op, p.as_str())?;
        if cur.st_size > 0 {
            self.versions
                .preserve_open(file, p.as_str(), &cur, VersionReason::Modify, now)?;
        }
        self.journal.append(
            ChangeKind::ModifyStart,
            p.as_str(),
            None,
            cur.st_size as u64,
            ts_mtime(&cur),
            now,
        )?;
        s.path = p.as_str().to_owned();
        s.file = file.clone();
        s.started = true;
        Ok(())
    }

    fn quiet_for(&self, s: &Session, now: Timespec) -> bool {
        let quiet = self.cfg.quiet_interval;
        now.to_system_time()
            .duration_since(s.last.to_system_time())
            .is_ok_and(|d| d >= quiet)
    }

    fn journal_end(&self, s: &Session) -> Result<()> {
        let st = sys::fstat(s.file.as_fd()).ctx("end modification of", &s.path)?;
        self.journal.append(
            ChangeKind::ModifyEnd,
            &s.path,
            None,
            st.st_size as u64,
            ts_mtime(&st),
            self.now(),
        )?;
        Ok(())
    }

    /// Ends the session of inode `key` if one is open.
    fn end_session(&self, key: InodeKey) -> Result<()> {
        let sess = self.sessions.lock().unwrap().get(&key).cloned();
        if let Some(sess) = sess {
            let mut s = sess.lock().unwrap();
            if !s.dead {
                if s.started {
                    self.journal_end(&s)?;
                }
                s.dead = true;
                self.sessions.lock().unwrap().remove(&key);
            }
        }
        Ok(())
    }

    fn session_list(&self) -> Vec<(InodeKey, Arc<Mutex<Session>>)> {
        let table = self.sessions.lock().unwrap();
        table.iter().map(|(k, s)| (*k, s.clone())).collect()
    }

    /// Ends every session on a path at or beneath `p` (before it is renamed or replaced).
    fn end_sessions_under(&self, p: &RelPath) -> Result<()> {
        // Sessions are locked only after the table is released (end_session takes the
        // session, then the table).
        let all = self.session_list();
        let keys: Vec<InodeKey> = all
            .iter()
            .filter(|(_, s)| {
                let s = s.lock().unwrap();
                RelPath::new(&s.path).is_ok_and(|sp| sp.starts_with(p))
            })
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.end_session(k)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; returns the number of bytes written (all of them).
    pub fn write(&self, p: &RelPath, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_if(p, None, offset, data)
            .map(|n| n.expect("unconditional write"))
    }

    /// Sets the size of the file `p` (a modification: versioned per session).
    pub fn truncate(&self, p: &RelPath, size: u64) -> Result<()> {
        self.truncate_if(p, None, size)
            .map(|n| n.expect("unconditional truncate"))
    }

    /// [`Volume::write`] only if `p` still names the file `key` (see [`Volume::open_file`]);
    /// `None` if it no longer does (renamed away or unlinked): the caller then writes
    /// through its own descriptor, outside the tree and its journal.
    pub fn write_if(
        &self,
        p: &RelPath,
        key: Option<FileKey>,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<usize>> {
        self.modify("write", p, key, |f| {
            f.write_all_at(data, offset).map(|_| data.len())
        })
    }

    /// [`Volume::truncate`] only if `p` still names the file `key` (as [`Volume::write_if`]).
    pub fn truncate_if(&self, p: &RelPath, key: Option<FileKey>, size: u64) -> Result<Option<()>> {
        self.modify("truncate", p, key, |f| f.set_len(size))
    }

    /// Opens the regular file `p` for a peer's handle (read-only, or read-write with
    /// `write`), with its identity: a handle keeps naming the file after a rename or
    /// unlink, like an open descriptor.
    pub fn open_file(&self, p: &RelPath, write: bool) -> Result<(File, Attr, FileKey)> {
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_NONBLOCK;
        let f = self.open_obj("open", p, flags)?;
        let st = sys::fstat(f.as_fd()).ctx("open", p.as_str())?;
        match kind_of(&st) {
            FileType::File => Ok((f, Attr::from_stat(&st), key_of(&st))),
            FileType::Dir => Err(StoreError::fs(
                "open",
                p.as_str(),
                io::Error::from_raw_os_error(libc::EISDIR),
            )),
            _ => Err(StoreError::refused(
                "open",
                p.as_str(),
                ErrorKind::Invalid,
                "only regular files can be opened",
            )),
        }
    }

    /// Ends the modification session of the file `key` if one is open (the peer closed its
    /// handle), wherever the file is now.
    pub fn release_file(&self, key: FileKey) -> Result<()> {
        self.end_session(key)
    }

    /// Records that the sync peer has durably processed every journal entry below `seq`
    /// (shown by status; survives restarts). A value below the recorded one is ignored: a
    /// restarted peer may repeat an old acknowledgement.
    pub fn ack_sync(&self, seq: u64) -> Result<u64> {
        self.journal.ack(seq)
    }

    /// The last sequence number the sync peer acknowledged (0 if none).
    pub fn sync_acked(&self) -> u64 {
        self.journal.acked()
    }

    /// Ends the modification session of `p` (the consumer closed its last handle): the next
    /// write starts a new session and takes a new snapshot.
    pub fn release(&self, p: &RelPath) -> Result<()> {
        let st = self.lstat(p)?;
        self.end_session(key_of(&st))
    }

    /// Ends sessions idle for the quiet interval, journaling their end; call periodically
    /// (the store's maintenance thread does). Returns how many ended.
    pub fn end_quiet_sessions(&self) -> Result<usize> {
        let now = self.now();
        let keys: Vec<InodeKey> = self
            .session_list()
            .iter()
            .filter(|(_, s)| self.quiet_for(&s.lock().unwrap(), now))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.end_session(*k)?;
        }
        Ok(keys.len())
    }

    /// Flushes `p` (file or directory, the root allowed) to disk: `fdatasync` if `datasync`,
    /// else `fsync`. Fsync a directory to make the creation, removal or renaming of its
    /// entries durable.
    pub fn fsync(&self, p: &RelPath, datasync: bool) -> Result<()> {
        let f = self.open_obj("fsync", p, libc::O_RDONLY | libc::O_NONBLOCK)?;
        if datasync {
            sys::fdatasync(f.as_fd()).ctx("fsync", p.as_str())
        } else {
            sys::fsync(f.as_fd()).ctx("fsync", p.as_str())
        }
    }

    /// Changes mode, size and/or times of `p` (the root allowed, except for size). Mode
    /// changes on a symlink are refused (`Unsupported`: Linux symlinks have no mode).
    pub fn setattr(&self, p: &RelPath, a: &SetAttr) -> Result<Attr> {
        if let Some(size) = a.size {
            self.truncate(p, size)?;
        }
        if a.mode.is_none() && a.atime.is_none() && a.mtime.is_none() {
            return self.stat(p);
        }
        let _g = self.ns.read().unwrap();
        let st = self.lstat(p)?;
        let kind = kind_of(&st);
        if a.mode.is_some() && kind == FileType::Symlink {
            return Err(StoreError::refused(
                "chmod",
                p.as_str(),
                ErrorKind::Unsupported,
                "a symlink has no mode of its own",
            ));
        }
        let ts = |t: Option<TimeSet>| match t {
            None => sys::UTIME_OMIT_TS,
            Some(TimeSet::Now) => sys::UTIME_NOW_TS,
            Some(TimeSet::At(t)) => t.to_libc(),
        };
        let mtime = match a.mtime {
            Some(TimeSet::At(t)) => t,
            Some(TimeSet::Now) => self.now(),
            None => ts_mtime(&st),
        };
        self.journal.append(
            ChangeKind::SetAttr,
            p.as_str(),
            None,
            st.st_size as u64,
            mtime,
            self.now(),
        )?;
        if let Some(mode) = a.mode {
            let replaced = || {
                StoreError::refused(
                    "chmod",
                    p.as_str(),
                    ErrorKind::Conflict,
                    "the entry was replaced during the operation",
                )
            };
            if kind == FileType::Dir {
                let f = self.open_obj_locked("chmod", p, libc::O_RDONLY | libc::O_NONBLOCK)?;
                if key_of(&sys::fstat(f.as_fd()).ctx("chmod", p.as_str())?) != key_of(&st) {
                    return Err(replaced());
                }
                modes::set_dir_mode(f.as_fd(), mode).ctx("chmod", p.as_str())?;
            } else {
                // By name: a file whose mode refuses its owner cannot be opened to fchmod.
                let (dir, name) = self.parent("chmod", p, libc::O_PATH)?;
                let cur = sys::stat_at(dir.as_fd(), name).ctx("chmod", p.as_str())?;
                if key_of(&cur) != key_of(&st) || kind_of(&cur) != FileType::File {
                    return Err(replaced());
                }
                modes::set_file_mode(dir.as_fd(), name, mode).ctx("chmod", p.as_str())?;
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            if p.is_root() {
                sys::utimens_at(self.tree.as_fd(), "", ts(a.atime), ts(a.mtime))
            } else {
                let (dir, name) = self.parent("utimens", p, libc::O_PATH)?;
                sys::utimens_at(dir.as_fd(), name, ts(a.atime), ts(a.mtime))
            }
            .ctx("set times of", p.as_str())?;
        }
        self.stat(p)
    }

    // ---- namespace --------------------------------------------------------------------

    fn must_be_absent(
        &self,
        op: &'static str,
        dir: BorrowedFd<'_>,
        name: &str,
        p: &RelPath,
    ) -> Result<()> {
        if sys::stat_at_opt(dir, name).ctx(op, p.as_str())?.is_some() {
            return Err(StoreError::fs(
                op,
                p.as_str(),
                io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        Ok(())
    }

    /// Creates the regular file `p` with permission bits `mode`. If it exists: `Exists` when
    /// `exclusive`, else its attributes (a directory or symlink there is `IsDir` / `Exists`).
    pub fn create(&self, p: &RelPath, mode: u32, exclusive: bool) -> Result<Attr> {
        self.make_file(p, mode, exclusive, false).map(|c| c.attr)
    }

    /// [`Volume::create`], keeping the file open for reading and writing, with its
    /// directory's attributes after (all from the descriptors the creation holds anyway).
    /// The first change made with the key it returns (`write_if`, `truncate_if`) needs no
    /// lookup of the path; release the key when done (`release_file`).
    pub fn create_open(&self, p: &RelPath, mode: u32, exclusive: bool) -> Result<Created> {
        self.make_file(p, mode, exclusive, true)
    }

    fn make_file(
        &self,
        p: &RelPath,
        mode: u32,
        exclusive: bool,
        prepare_session: bool,
    ) -> Result<Created> {
        let _g = self.ns.write().unwrap();
        let (dir, name) = self.parent("create", p, libc::O_PATH)?;
        let created = |f: OwnedFd| -> Result<Created> {
            let st = sys::fstat(f.as_fd()).ctx("create", p.as_str())?;
            let parent = sys::fstat(dir.as_fd()).ctx("create", p.as_str())?;
            Ok(Created {
                file: File::from(f),
                attr: Attr::from_stat(&st),
                key: key_of(&st),
                parent: Attr::from_stat(&parent),
            })
        };
        if let Some(st) = sys::stat_at_opt(dir.as_fd(), name).ctx("create", p.as_str())? {
            let errno = match kind_of(&st) {
                FileType::File if !exclusive => {
                    let f = modes::open_whatever_mode(
                        dir.as_fd(),
                        name,
                        libc::O_RDWR | libc::O_NONBLOCK,
                    )
                    .ctx("create", p.as_str())?;
                    return created(f);
                }
                FileType::Dir if !exclusive => libc::EISDIR,
                _ => libc::EEXIST,
            };
            return Err(StoreError::fs(
                "create",
                p.as_str(),
                io::Error::from_raw_os_error(errno),
            ));
        }
        let now = self.now();
        self.journal
            .append(ChangeKind::Create, p.as_str(), None, 0, now, now)?;
        let f = sys::open_at(
            dir.as_fd(),
            name,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            mode & 0o7777,
        )
        .ctx("create", p.as_str())?;
        // The mode passed to open is filtered by the umask; set it exactly. The descriptor
        // stays open for writing whatever the mode (the creator's right, as in any open).
        sys::fchmod(f.as_fd(), mode & 0o7777).ctx("create", p.as_str())?;
        let made = created(f)?;
        if !prepare_session {
            return Ok(made);
        }
        // The creator's first write needs no lookup: the session waits here, with a
        // descriptor of its own (the creator's may close first).
        let file = Arc::new(made.file.try_clone().ctx("create", p.as_str())?);
        let prepared = Session {
            file,
            path: p.as_str().to_owned(),
            last: now,
            started: false,
            dead: false,
        };
        let mut table = self.sessions.lock().unwrap();
        table.insert(made.key, Arc::new(Mutex::new(prepared)));
        Ok(made)
    }

    /// Creates the directory `p` with mode `mode` (kept as the `modes` module says).
    pub fn mkdir(&self, p: &RelPath, mode: u32) -> Result<Attr> {
        let _g = self.ns.write().unwrap();
        let (dir, name) = self.parent("mkdir", p, libc::O_PATH)?;
        self.must_be_absent("mkdir", dir.as_fd(), name, p)?;
        let now = self.now();
        self.journal
            .append(ChangeKind::Mkdir, p.as_str(), None, 0, now, now)?;
        sys::mkdir_at(dir.as_fd(), name, (mode & 0o777) | 0o700).ctx("mkdir", p.as_str())?;
        let d = sys::open_at(dir.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .ctx("mkdir", p.as_str())?;
        modes::set_dir_mode(d.as_fd(), mode).ctx("mkdir", p.as_str())?;
        Ok(Attr::from_stat(
            &sys::fstat(d.as_fd()).ctx("mkdir", p.as_str())?,
        ))
    }

    /// Creates the directory `p` (mode `mode`, kept as the `modes` module says) with the file
    /// `file` inside holding `content` (mode `file_mode`), both journaled, in one step: a
    /// gocryptfs directory with its IV. The file is flushed before this returns, which on a
    /// journaling file system also makes the directory durable; the parent is not flushed,
    /// as a local `mkdir` is not. Anything made inside later is ordered after it by that
    /// journal, so the IV every name there depends on is never lost while they are kept. A
    /// failure after the directory was made removes what was made.
    pub fn mkdir_with_file(
        &self,
        p: &RelPath,
        mode: u32,
        file: &str,
        content: &[u8],
        file_mode: u32,
    ) -> Result<Made> {
        let inside = match p.join(file) {
            Ok(inside) if !file.contains('/') => inside,
            _ => {
                return Err(StoreError::refused(
                    "mkdir",
                    p.as_str(),
                    ErrorKind::Invalid,
                    format!("{file:?} is not a name for a file inside the new directory"),
                ))
            }
        };
        let _g = self.ns.write().unwrap();
        let (dir, name) = self.parent("mkdir", p, libc::O_PATH)?;
        self.must_be_absent("mkdir", dir.as_fd(), name, p)?;
        let now = self.now();
        self.journal
            .append(ChangeKind::Mkdir, p.as_str(), None, 0, now, now)?;
        self.journal.append(
            ChangeKind::Put,
            inside.as_str(),
            None,
            content.len() as u64,
            now,
            now,
        )?;
        sys::mkdir_at(dir.as_fd(), name, (mode & 0o777) | 0o700).ctx("mkdir", p.as_str())?;
        let made = (|| -> io::Result<Made> {
            let d = sys::open_at(dir.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            modes::set_dir_mode(d.as_fd(), mode)?;
            let mut f = File::from(sys::open_at(
                d.as_fd(),
                file,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )?);
            f.write_all(content)?;
            // The mode passed to open is filtered by the umask; set it exactly. The times
            // are the journal record's.
            sys::fchmod(f.as_fd(), file_mode & 0o7777)?;
            sys::utimens_at(f.as_fd(), "", now.to_libc(), now.to_libc())?;
            sys::fsync(f.as_fd())?;
            Ok(Made {
                attr: Attr::from_stat(&sys::fstat(d.as_fd())?),
                parent: Attr::from_stat(&sys::fstat(dir.as_fd())?),
            })
        })();
        made.map_err(|e| {
            if let Ok(d) = sys::open_at(dir.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                let _ = sys::unlink_at(d.as_fd(), file, false);
            }
            let _ = sys::unlink_at(dir.as_fd(), name, true);
            StoreError::fs("mkdir", p.as_str(), e)
        })
    }

    /// Creates the symlink `p` with `target` stored verbatim (never resolved by the store).
    pub fn symlink(&self, p: &RelPath, target: &[u8]) -> Result<Attr> {
        if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains(&0) {
            return Err(StoreError::refused(
                "symlink",
                p.as_str(),
                ErrorKind::Invalid,
                "a symlink target must be 1 to 4095 bytes without NUL",
            ));
        }
        let _g = self.ns.write().unwrap();
        let (dir, name) = self.parent("symlink", p, libc::O_PATH)?;
        self.must_be_absent("symlink", dir.as_fd(), name, p)?;
        let now = self.now();
        self.journal.append(
            ChangeKind::Symlink,
            p.as_str(),
            None,
            target.len() as u64,
            now,
            now,
        )?;
        sys::symlink_at(target, dir.as_fd(), name).ctx("symlink", p.as_str())?;
        Ok(Attr::from_stat(
            &sys::stat_at(dir.as_fd(), name).ctx("symlink", p.as_str())?,
        ))
    }

    /// Makes `new` a hard link to the existing file or symlink `existing` (both in this
    /// volume; directories cannot be linked).
    pub fn link(&self, existing: &RelPath, new: &RelPath) -> Result<Attr> {
        let _g = self.ns.write().unwrap();
        let (odir, oname) = self.parent("link", existing, libc::O_PATH)?;
        let (ndir, nname) = self.parent("link", new, libc::O_PATH)?;
        let st = sys::stat_at(odir.as_fd(), oname).ctx("link", existing.as_str())?;
        if kind_of(&st) == FileType::Dir {
            return Err(StoreError::refused(
                "link",
                existing.as_str(),
                ErrorKind::PermissionDenied,
                "directories cannot be hard-linked",
            ));
        }
        self.must_be_absent("link", ndir.as_fd(), nname, new)?;
        self.journal.append(
            ChangeKind::Link,
            new.as_str(),
            Some(existing.as_str()),
            st.st_size as u64,
            ts_mtime(&st),
            self.now(),
        )?;
        sys::link_at(odir.as_fd(), oname, ndir.as_fd(), nname).ctx("link", new.as_str())?;
        Ok(Attr::from_stat(
            &sys::stat_at(ndir.as_fd(), nname).ctx("link", new.as_str())?,
        ))
    }

    /// Removes the file or symlink `p`, keeping its content as a version; returns the
    /// attributes its directory has after.
    pub fn unlink(&self, p: &RelPath) -> Result<Attr> {
        let _g = self.ns.write().unwrap();
        self.unlink_locked("unlink", p, Expect::Any)
    }

    fn check_expect(
        &self,
        op: &'static str,
        p: &RelPath,
        cur: Option<&libc::stat>,
        expect: Expect,
    ) -> Result<()> {
        let found = cur.map(|st| Attr::from_stat(st).state());
        let ok = match expect {
            Expect::Any => true,
            Expect::Absent => found.is_none(),
            Expect::State(want) => found == Some(want),
        };
        if ok {
            return Ok(());
        }
        let show = |s: Option<FileState>| match s {
            None => "nothing".to_owned(),
            Some(s) => format!(
                "{:?} of {} bytes, mtime {}.{:09}",
                s.kind, s.size, s.mtime.secs, s.mtime.nanos
            ),
        };
        Err(StoreError::Conflict {
            op,
            path: p.as_str().to_owned(),
            expected: match expect {
                Expect::Absent => "nothing".into(),
                Expect::State(s) => show(Some(s)),
                Expect::Any => unreachable!(),
            },
            found: show(found),
        })
    }

    /// Returns the directory's attributes after the unlink (taken from the descriptor it
    /// already holds: an answer that carries them costs no second walk of the path).
    fn unlink_locked(&self, op: &'static str, p: &RelPath, expect: Expect) -> Result<Attr> {
        let (dir, name) = self.parent(op, p, libc::O_RDONLY)?;
        let st = sys::stat_at(dir.as_fd(), name).ctx(op, p.as_str())?;
        self.check_expect(op, p, Some(&st), expect)?;
        if kind_of(&st) == FileType::Dir {
            return Err(StoreError::fs(
                op,
                p.as_str(),
                io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        self.end_session(key_of(&st))?;
        self.versions.preserve_entry(
            dir.as_fd(),
            name,
            p.as_str(),
            &st,
            VersionReason::Delete,
            self.now(),
        )?;
        self.journal.append(
            ChangeKind::Unlink,
            p.as_str(),
            None,
            st.st_size as u64,
            ts_mtime(&st),
            self.now(),
        )?;
        sys::unlink_at(dir.as_fd(), name, false).ctx(op, p.as_str())?;
        let after = sys::fstat(dir.as_fd()).ctx(op, p.as_str())?;
        Ok(Attr::from_stat(&after))
    }

    /// Removes the empty directory `p`.
    pub fn rmdir(&self, p: &RelPath) -> Result<()> {
        let _g = self.ns.write().unwrap();
        self.rmdir_locked("rmdir", p, Expect::Any)
    }

    fn rmdir_locked(&self, op: &'static str, p: &RelPath, expect: Expect) -> Result<()> {
        let (dir, name) = self.parent(op, p, libc::O_PATH)?;
        let st = sys::stat_at(dir.as_fd(), name).ctx(op, p.as_str())?;
        self.check_expect(op, p, Some(&st), expect)?;
        if kind_of(&st) != FileType::Dir {
            return Err(StoreError::fs(
                op,
                p.as_str(),
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        self.must_be_empty(op, dir.as_fd(), name, p)?;
        self.journal.append(
            ChangeKind::Rmdir,
            p.as_str(),
            None,
            0,
            ts_mtime(&st),
            self.now(),
        )?;
        sys::unlink_at(dir.as_fd(), name, true).ctx(op, p.as_str())
    }

    fn must_be_empty(
        &self,
        op: &'static str,
        dir: BorrowedFd<'_>,
        name: &str,
        p: &RelPath,
    ) -> Result<()> {
        let d =
            sys::open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).ctx(op, p.as_str())?;
        let mut one = Vec::new();
        sys::read_dir_from(d.as_fd(), 0, 1, &mut one).ctx(op, p.as_str())?;
        if !one.is_empty() {
            return Err(StoreError::fs(
                op,
                p.as_str(),
                io::Error::from_raw_os_error(libc::ENOTEMPTY),
            ));
        }
        Ok(())
    }

    /// Renames `from` to `to` within the volume. With [`RenameMode::Replace`] an existing
    /// file or symlink at `to` is versioned, then replaced; an existing directory only if
    /// empty and `from` is a directory too.
    pub fn rename(&self, from: &RelPath, to: &RelPath, mode: RenameMode) -> Result<()> {
        let op = "rename";
        if to.starts_with(from) && to != from {
            return Err(StoreError::refused(
                op,
                from.as_str(),
                ErrorKind::Invalid,
                format!("cannot move a directory into itself ({to:?})"),
            ));
        }
        let _g = self.ns.write().unwrap();
        let (fdir, fname) = self.parent(op, from, libc::O_RDONLY)?;
        let (tdir, tname) = self.parent(op, to, libc::O_RDONLY)?;
        let fst = sys::stat_at(fdir.as_fd(), fname).ctx(op, from.as_str())?;
        let tst = sys::stat_at_opt(tdir.as_fd(), tname).ctx(op, to.as_str())?;
        let fkind = kind_of(&fst);
        let flags = match (mode, &tst) {
            (RenameMode::NoReplace, Some(_)) => {
                return Err(StoreError::fs(
                    op,
                    to.as_str(),
                    io::Error::from_raw_os_error(libc::EEXIST),
                ))
            }
            (RenameMode::Exchange, None) => {
                return Err(StoreError::fs(
                    op,
                    to.as_str(),
                    io::Error::from_raw_os_error(libc::ENOENT),
                ))
            }
            (RenameMode::NoReplace, None) => libc::RENAME_NOREPLACE,
            (RenameMode::Exchange, Some(_)) => libc::RENAME_EXCHANGE,
            (RenameMode::Replace, _) => 0,
        };
        if let (RenameMode::Replace, Some(t)) = (mode, &tst) {
            if key_of(t) == key_of(&fst) {
                // rename(2): two names of one inode, nothing happens.
                return Ok(());
            }
            let errno = match (fkind, kind_of(t)) {
                (FileType::Dir, FileType::Dir) => {
                    self.must_be_empty(op, tdir.as_fd(), tname, to)?;
                    0
                }
                (FileType::Dir, _) => libc::ENOTDIR,
                (_, FileType::Dir) => libc::EISDIR,
                _ => 0,
            };
            if errno != 0 {
                return Err(StoreError::fs(
                    op,
                    to.as_str(),
                    io::Error::from_raw_os_error(errno),
                ));
            }
        }
        self.end_sessions_under(from)?;
        if tst.is_some() {
            self.end_sessions_under(to)?;
        }
        if let (RenameMode::Replace, Some(t)) = (mode, &tst) {
            self.versions.preserve_entry(
                tdir.as_fd(),
                tname,
                to.as_str(),
                t,
                VersionReason::Overwrite,
                self.now(),
            )?;
        }
        let kind = if mode == RenameMode::Exchange {
            ChangeKind::Exchange
        } else {
            ChangeKind::Rename
        };
        self.journal.append(
            kind,
            from.as_str(),
            Some(to.as_str()),
            fst.st_size as u64,
            ts_mtime(&fst),
            self.now(),
        )?;
        sys::rename_at(fdir.as_fd(), fname, tdir.as_fd(), tname, flags).ctx(op, from.as_str())
    }

    // ---- sync: whole files ------------------------------------------------------------

    /// Opens the regular file `p` for streaming its whole content.
    pub fn get(&self, p: &RelPath) -> Result<FileReader> {
        let file = self.open_obj("get", p, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let attr = Attr::from_stat(&sys::fstat(file.as_fd()).ctx("get", p.as_str())?);
        if attr.kind != FileType::File {
            let errno = if attr.kind == FileType::Dir {
                libc::EISDIR
            } else {
                libc::EINVAL
            };
            return Err(StoreError::fs(
                "get",
                p.as_str(),
                io::Error::from_raw_os_error(errno),
            ));
        }
        Ok(FileReader { file, attr, pos: 0 })
    }

    fn stage(&self, op: &'static str, p: &RelPath) -> Result<(String, File)> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let f = sys::open_at(
            self.staging.as_fd(),
            &name,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .ctx(op, p.as_str())?;
        Ok((name, File::from(f)))
    }

    fn unstage(&self, name: &str) {
        let _ = sys::unlink_at(self.staging.as_fd(), name, false);
    }

    /// Streams `content` into a staged file and finishes it (mode, mtime, fsync).
    fn stage_stream(
        &self,
        op: &'static str,
        p: &RelPath,
        content: &mut dyn Read,
        mode: Option<u32>,
        mtime: Option<Timespec>,
    ) -> Result<String> {
        let (name, mut f) = self.stage(op, p)?;
        let r = (|| {
            io::copy(content, &mut f)?;
            f.flush()?;
            sys::fchmod(f.as_fd(), mode.unwrap_or(0o600) & 0o7777)?;
            if let Some(t) = mtime {
                sys::utimens_at(f.as_fd(), "", sys::UTIME_OMIT_TS, t.to_libc())?;
            }
            sys::fsync(f.as_fd())
        })();
        match r {
            Ok(()) => Ok(name),
            Err(e) => {
                self.unstage(&name);
                Err(StoreError::fs(op, p.as_str(), e))
            }
        }
    }

    /// Moves the staged `name` to `p` atomically after checking `expect`, versioning what
    /// was there and journaling `kind` first; then fsyncs the parent directory.
    fn commit_staged(
        &self,
        op: &'static str,
        p: &RelPath,
        name: &str,
        expect: Expect,
        kind: ChangeKind,
        mode: StagedMode,
    ) -> Result<Attr> {
        let _g = self.ns.write().unwrap();
        let (dir, fname) = self.parent(op, p, libc::O_RDONLY)?;
        let cur = sys::stat_at_opt(dir.as_fd(), fname).ctx(op, p.as_str())?;
        self.check_expect(op, p, cur.as_ref(), expect)?;
        if let Some(st) = &cur {
            if kind_of(st) == FileType::Dir {
                return Err(StoreError::fs(
                    op,
                    p.as_str(),
                    io::Error::from_raw_os_error(libc::EISDIR),
                ));
            }
            if mode == StagedMode::OfReplaced && kind_of(st) == FileType::File {
                // Taken under the namespace lock, so a chmod made meanwhile is not undone.
                modes::set_file_mode(self.staging.as_fd(), name, st.st_mode).ctx(op, p.as_str())?;
            }
            self.end_session(key_of(st))?;
            self.versions.preserve_entry(
                dir.as_fd(),
                fname,
                p.as_str(),
                st,
                VersionReason::Overwrite,
                self.now(),
            )?;
        }
        let staged = sys::stat_at(self.staging.as_fd(), name).ctx(op, p.as_str())?;
        self.journal.append(
            kind,
            p.as_str(),
            None,
            staged.st_size as u64,
            ts_mtime(&staged),
            self.now(),
        )?;
        sys::rename_at(self.staging.as_fd(), name, dir.as_fd(), fname, 0).ctx(op, p.as_str())?;
        sys::fsync(dir.as_fd()).ctx(op, p.as_str())?;
        Ok(Attr::from_stat(&staged))
    }

    /// Atomically replaces (or creates) the file `p` with everything `content` yields: the
    /// content is streamed into a staging file, fsynced, and renamed into place after
    /// `opts.expect` is checked; the parent directory is fsynced before this returns. A crash
    /// at any point leaves the old file or the new one, never a partial one. The replaced
    /// file is kept as a version.
    pub fn put(&self, p: &RelPath, content: &mut dyn Read, opts: PutOptions) -> Result<Attr> {
        // Fail early, before streaming, when the parent is missing.
        drop(self.parent("put", p, libc::O_PATH)?);
        let name = self.stage_stream("put", p, content, opts.mode, opts.mtime)?;
        let mode = match opts.mode {
            Some(_) => StagedMode::AsStaged,
            None => StagedMode::OfReplaced,
        };
        let r = self.commit_staged("put", p, &name, opts.expect, ChangeKind::Put, mode);
        if r.is_err() {
            self.unstage(&name);
        }
        r
    }

    /// Removes the file, symlink or empty directory `p` if `expect` holds (a file's content
    /// is kept as a version).
    pub fn delete(&self, p: &RelPath, expect: Expect) -> Result<()> {
        let _g = self.ns.write().unwrap();
        let st = self.lstat(p)?;
        if kind_of(&st) == FileType::Dir {
            self.rmdir_locked("delete", p, expect)
        } else {
            self.unlink_locked("delete", p, expect).map(drop)
        }
    }

    // ---- conflicts ----------------------------------------------------------------------

    /// Parks a conflicting copy of `p` (e.g. the cloud's side of a two-sided change) in the
    /// volume's conflict area, outside the tree: the tree stays a valid gocryptfs tree, and
    /// the consumer, which alone can encrypt a name like "NAME (conflict …)", adopts it into
    /// the tree with [`Volume::adopt_conflict`]. Journaled as `ConflictParked`.
    pub fn park_conflict(&self, p: &RelPath, content: &mut dyn Read) -> Result<ConflictInfo> {
        if p.is_root() {
            return Err(root_refused("park conflict"));
        }
        let name = self.stage_stream("park conflict", p, content, None, None)?;
        let _g = self.ns.write().unwrap();
        let staged = match sys::stat_at(self.staging.as_fd(), &name) {
            Ok(st) => st,
            Err(e) => {
                self.unstage(&name);
                return Err(StoreError::fs("park conflict", p.as_str(), e));
            }
        };
        let r = self.conflicts.adopt_staged(
            self.staging.as_fd(),
            &name,
            p.as_str(),
            VersionReason::Conflict,
            self.now(),
        );
        let info = match r {
            Ok(i) => i,
            Err(e) => {
                self.unstage(&name);
                return Err(e);
            }
        };
        self.journal.append(
            ChangeKind::ConflictParked,
            p.as_str(),
            Some(&info.id.to_string()),
            staged.st_size as u64,
            ts_mtime(&staged),
            self.now(),
        )?;
        Ok(info)
    }

    /// Parked conflict copies, oldest first.
    pub fn list_conflicts(&self) -> Vec<ConflictInfo> {
        self.conflicts.list_all()
    }

    /// Opens a parked conflict copy for reading.
    pub fn open_conflict(&self, id: VersionId) -> Result<FileReader> {
        self.conflicts
            .get(id)
            .ok_or_else(|| no_such("open conflict", "", id))?;
        let file = self.conflicts.open_data(id)?;
        let attr =
            Attr::from_stat(&sys::fstat(file.as_fd()).ctx("open conflict", &id.to_string())?);
        Ok(FileReader { file, attr, pos: 0 })
    }

    /// Moves the parked conflict `id` into the tree at `dest` (which must not exist).
    pub fn adopt_conflict(&self, id: VersionId, dest: &RelPath) -> Result<Attr> {
        let op = "adopt conflict";
        let _g = self.ns.write().unwrap();
        let info = self
            .conflicts
            .get(id)
            .ok_or_else(|| no_such(op, dest.as_str(), id))?;
        let (dir, name) = self.parent(op, dest, libc::O_RDONLY)?;
        self.must_be_absent(op, dir.as_fd(), name, dest)?;
        self.journal.append(
            ChangeKind::ConflictAdopted,
            dest.as_str(),
            Some(&info.path),
            info.size,
            info.mtime,
            self.now(),
        )?;
        sys::rename_at(
            self.conflicts.dir(),
            &self.conflicts.data_name(id),
            dir.as_fd(),
            name,
            libc::RENAME_NOREPLACE,
        )
        .ctx(op, dest.as_str())?;
        sys::fsync(dir.as_fd()).ctx(op, dest.as_str())?;
        self.conflicts.remove(id, false)?;
        let st = sys::stat_at(dir.as_fd(), name).ctx(op, dest.as_str())?;
        Ok(Attr::from_stat(&st))
    }

    // ---- journal ------------------------------------------------------------------------

    /// Journal entries with `seq >= since`, at most `limit`, or `RescanNeeded` if `since` is
    /// below the compaction floor (or beyond the head: the journal the reader knew is gone).
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Changes> {
        self.journal.changes_since(since, limit)
    }

    /// The sequence number the next entry will get.
    pub fn journal_head(&self) -> u64 {
        self.journal.head()
    }

    /// Compacts the journal now (it also compacts itself when it outgrows its budget).
    pub fn compact_journal(&self) -> Result<()> {
        self.journal.compact()
    }

    /// Subscribes to new journal entries of this volume, delivered after they are durable.
    pub fn subscribe(&self) -> Subscription {
        self.journal.subscribe(0)
    }

    /// The same, without the entries appended while acting for `origin` (non-zero; see
    /// [`crate::acting_for`]).
    pub fn subscribe_for(&self, origin: u64) -> Subscription {
        self.journal.subscribe(origin)
    }

    // ---- versions -----------------------------------------------------------------------

    /// Preserved versions of `p`, newest first.
    pub fn list_versions(&self, p: &RelPath) -> Vec<VersionInfo> {
        self.versions.list(p.as_str())
    }

    /// Opens a preserved file version for reading (symlink versions: [`Volume::read_version_link`]).
    pub fn open_version(&self, p: &RelPath, id: VersionId) -> Result<FileReader> {
        let info = self.version_of(p, id)?;
        if info.kind != FileType::File {
            return Err(StoreError::refused(
                "open version",
                p.as_str(),
                ErrorKind::Invalid,
                format!("version {id} is a symlink"),
            ));
        }
        let file = self.versions.open_data(id)?;
        let attr = Attr::from_stat(&sys::fstat(file.as_fd()).ctx("open version", p.as_str())?);
        Ok(FileReader { file, attr, pos: 0 })
    }

    /// The target of a preserved symlink version.
    pub fn read_version_link(&self, p: &RelPath, id: VersionId) -> Result<Vec<u8>> {
        self.version_of(p, id)?;
        self.versions.read_link(id)
    }

    fn version_of(&self, p: &RelPath, id: VersionId) -> Result<VersionInfo> {
        match self.versions.get(id) {
            Some(v) if v.path == p.as_str() => Ok(v),
            _ => Err(no_such("version", p.as_str(), id)),
        }
    }

    /// Puts version `id` of `p` back at `p` (atomically, like a put). What `p` holds now is
    /// itself kept as a version first; the restored version stays in the history.
    pub fn restore(&self, p: &RelPath, id: VersionId) -> Result<Attr> {
        let op = "restore";
        let info = self.version_of(p, id)?;
        let (name, _f) = match info.kind {
            FileType::Symlink => {
                let target = self.versions.read_link(id)?;
                let name = format!(
                    "{}-{}",
                    std::process::id(),
                    self.counter.fetch_add(1, Ordering::Relaxed)
                );
                sys::symlink_at(&target, self.staging.as_fd(), &name).ctx(op, p.as_str())?;
                (name, None)
            }
            _ => {
                let src = self.versions.open_data(id)?;
                let (name, dst) = self.stage(op, p)?;
                let r = sys::clone_or_copy(&src, &dst)
                    .and_then(|_| sys::fchmod(dst.as_fd(), info.perm & 0o7777))
                    .and_then(|_| {
                        sys::utimens_at(dst.as_fd(), "", sys::UTIME_OMIT_TS, info.mtime.to_libc())
                    })
                    .and_then(|_| sys::fsync(dst.as_fd()));
                if let Err(e) = r {
                    self.unstage(&name);
                    return Err(StoreError::fs(op, p.as_str(), e));
                }
                (name, Some(dst))
            }
        };
        let r = self.commit_staged(
            op,
            p,
            &name,
            Expect::Any,
            ChangeKind::Restore,
            StagedMode::AsStaged,
        );
        if r.is_err() {
            self.unstage(&name);
        }
        r
    }

    /// Applies the store's retention policy now.
    pub fn prune_versions(&self) -> Result<PruneReport> {
        self.versions.prune(&self.cfg.retention, self.now())
    }

    /// Usage figures.
    pub fn stats(&self) -> VolumeStats {
        let (journal_floor, journal_head, journal_bytes, journal_records) = self.journal.stats();
        let (versions, version_bytes) = self.versions.usage();
        VolumeStats {
            journal_floor,
            journal_head,
            journal_bytes,
            journal_records,
            versions,
            version_bytes,
            conflicts: self.conflicts.usage().0,
            open_sessions: self
                .session_list()
                .iter()
                .filter(|(_, s)| s.lock().unwrap().started)
                .count(),
        }
    }
}

fn no_such(op: &'static str, path: &str, id: VersionId) -> StoreError {
    StoreError::refused(
        op,
        path,
        ErrorKind::NotFound,
        format!("no version or conflict {id} here"),
    )
}

impl Drop for Volume {
    fn drop(&mut self) {
        let keys: Vec<InodeKey> = self.sessions.lock().unwrap().keys().copied().collect();
        for k in keys {
            if let Err(e) = self.end_session(k) {
                tracing::warn!(volume = %self.name, error = %e, "could not journal the end of a modification session");
            }
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Volume>();
    is::<Duration>();
}
