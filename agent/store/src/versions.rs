//! Prior versions of files (and parked conflict copies): a flat directory of `<id>.data`
//! (the preserved file or symlink) and its record (what it was: path, time, size, mode) per
//! entry. Ids are hexadecimal, increasing per volume.
//!
//! Order of writes: data first (hard link, or a copy that is fsynced), then the record
//! (what it was), all before the caller is allowed to replace or modify the original. Where
//! the record lives depends on what the caller does next:
//!
//! - It changes names only (an unlink, a rename over the file; [`Then::ChangesNames`]): the
//!   record rides on the data, unflushed. ext4 with its journal (a qube's private volume)
//!   and XFS write changes to names and attributes to disk in the order they were made, so
//!   a crash that keeps the caller's change keeps the data's name and its record too.
//!   Flushing here cost an unlink two flushes of the disk's cache (record file, then
//!   directory), more than half of its time on this project's benchmark disk. Only where
//!   the store found such a file system at open (`StoreConfig::names_in_order`); elsewhere
//!   the record is a flushed file, below. A file kept by hard link carries its record in
//!   the data's own name, `<id>.r<record in base64url>`: one link makes both, at once and
//!   for good, where an attribute of over 50 bytes made ext4 allocate a block per version
//!   (a fifth of the CPU of a mass delete). A record too long for a name (255 bytes: a
//!   path of about 120 bytes) and a copy's record are the data's extended attribute
//!   `user.cloudstore.version` instead (a copy gets it only once it is whole and flushed,
//!   so one cut short by a crash has none and is removed at the next open).
//! - It writes into the file, or the entry is a parked conflict that only the transfer qube
//!   tracks ([`Then::ChangesContent`]): nothing orders file content after names, so the
//!   record is the file `<id>.meta`, written to `<id>.meta.tmp`, fsynced and renamed. The
//!   directory is not fsynced: on both, the fsync of a new file makes its name durable, so
//!   a crash that loses the rename leaves the whole record under its temporary name, and
//!   the next open takes it from there.
//!
//! Symlinks (which cannot carry user attributes) and records longer than the file system
//! lets an attribute be also go to `<id>.meta`. A crash leaves at worst data without a
//! record, which the next open removes (the original was not touched yet).
//!
//! Nothing in the public API removes an entry except retention pruning (versions) and
//! adoption (conflicts).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::Duration;

use crate::crc32::crc32;
use crate::error::{ErrorKind, IoContext, Result, StoreError};
use crate::modes;
use crate::sys;
use crate::types::{FileType, Timespec};

/// The longest file name the area's file systems take (ext4, XFS, btrfs).
const NAME_MAX: usize = 255;

/// Largest meta record: a 4096-byte path plus fixed fields; a bigger file is not ours.
const MAX_META: usize = 4096 + 128;

/// The data file's attribute that holds its record (module docs).
const RECORD_XATTR: &std::ffi::CStr = c"user.cloudstore.version";

/// What the caller does to the original once its version is recorded, which decides where
/// the record goes and whether it is flushed (module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Then {
    ChangesNames,
    ChangesContent,
}

/// Identifies one preserved version (or one parked conflict) within its volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId(pub u64);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for VersionId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<VersionId> {
        if s.len() != 16 {
            return Err(StoreError::refused(
                "parse version id",
                s,
                ErrorKind::Invalid,
                "a version id is 16 hexadecimal digits",
            ));
        }
        u64::from_str_radix(s, 16).map(VersionId).map_err(|_| {
            StoreError::refused(
                "parse version id",
                s,
                ErrorKind::Invalid,
                "a version id is 16 hexadecimal digits",
            )
        })
    }
}

/// Why a version was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionReason {
    /// The file was replaced as a whole (put, rename over it, restore over it).
    Overwrite,
    /// The file was deleted.
    Delete,
    /// The file was about to be modified in place (first write or truncate of a session).
    Modify,
    /// A conflicting copy parked by sync (conflict area only).
    Conflict,
}

impl VersionReason {
    fn code(self) -> u8 {
        match self {
            VersionReason::Overwrite => 1,
            VersionReason::Delete => 2,
            VersionReason::Modify => 3,
            VersionReason::Conflict => 4,
        }
    }
    fn from_code(c: u8) -> Option<VersionReason> {
        Some(match c {
            1 => VersionReason::Overwrite,
            2 => VersionReason::Delete,
            3 => VersionReason::Modify,
            4 => VersionReason::Conflict,
            _ => return None,
        })
    }
}

/// One preserved version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub id: VersionId,
    /// The path the content had when it was preserved.
    pub path: String,
    /// When it was preserved (storage clock).
    pub time: Timespec,
    pub size: u64,
    /// `File` or `Symlink`.
    pub kind: FileType,
    pub reason: VersionReason,
    /// Permission bits and modification time of the content when preserved.
    pub perm: u32,
    pub mtime: Timespec,
}

/// How long versions are kept and how much space they may take.
///
/// Pruning removes, oldest first: every version older than `max_age`; then, while the versions
/// take more than `max_bytes` on disk (allocated blocks, not lengths: a sparse file's version
/// costs what its data takes), versions at least `min_age` old. Versions younger than
/// `min_age` are removed for space only if `hard_cap` is set. The trade-off: with `hard_cap`
/// off (the default), a peer that floods the volume with rewrites cannot push recent history
/// out — the disk fills instead and further writes fail cleanly with `NoSpace`, losing
/// nothing; with it on, the disk stays usable but such a flood can erase all history older
/// than the flood itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_age: Duration,
    pub min_age: Duration,
    pub max_bytes: u64,
    pub hard_cap: bool,
}

impl Default for RetentionPolicy {
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            // The product promise: 30 days to notice a destructive change.
            max_age: Duration::from_secs(30 * 24 * 3600),
            // A day: enough for a user to notice a bad morning; older history yields to space.
            min_age: Duration::from_secs(24 * 3600),
            // 10 GiB: most personal volumes' history fits; the disk is the real limit.
            max_bytes: 10 << 30,
            hard_cap: false,
        }
    }
}

/// What a prune did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub removed: usize,
    pub freed_bytes: u64,
    pub kept: usize,
    pub kept_bytes: u64,
    /// The versions still take more than `max_bytes` (only young versions remain).
    pub over_cap: bool,
}

struct Index {
    by_id: BTreeMap<u64, VersionInfo>,
    /// What each entry's data takes on disk (allocated blocks): retention counts this, not
    /// the length, so a sparse file's version costs what its data does.
    disk: BTreeMap<u64, u64>,
    /// The data's name where it is not `<id>.data`: where it carries the record.
    named: BTreeMap<u64, String>,
    next_id: u64,
    total: u64,
}

impl Index {
    fn data_name(&self, id: u64) -> String {
        data_name_among(&self.named, id)
    }
}

pub(crate) struct Versions {
    dir: OwnedFd,
    label: String,
    /// Whether records may ride on the data unflushed (module docs).
    names_in_order: bool,
    index: Mutex<Index>,
}

fn data_name(id: u64) -> String {
    format!("{id:016x}.data")
}

/// Entry `id`'s data name: the one in `named` (which carries its record), else `<id>.data`.
fn data_name_among(named: &BTreeMap<u64, String>, id: u64) -> String {
    named.get(&id).cloned().unwrap_or_else(|| data_name(id))
}

/// The data's name that carries its record (module docs), if the record fits in a name.
fn recorded_name(v: &VersionInfo) -> Option<String> {
    use base64::Engine as _;
    let name = format!(
        "{:016x}.r{}",
        v.id.0,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(encode_meta(v))
    );
    (name.len() <= NAME_MAX).then_some(name)
}

/// The record a data name carries (`r<base64url>`, the part after the id's dot).
fn record_in_name(ext: &str) -> Option<VersionInfo> {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(ext.strip_prefix('r')?)
        .ok()?;
    decode_meta(&b)
}

/// The bytes the data named `name` has allocated on disk.
fn disk_bytes(dir: BorrowedFd<'_>, name: &str) -> Option<u64> {
    let st = sys::stat_at(dir, name).ok()?;
    Some(st.st_blocks as u64 * 512)
}

fn meta_name(id: u64) -> String {
    format!("{id:016x}.meta")
}

fn encode_meta(v: &VersionInfo) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&v.id.0.to_le_bytes());
    p.extend_from_slice(&v.time.secs.to_le_bytes());
    p.extend_from_slice(&v.time.nanos.to_le_bytes());
    p.extend_from_slice(&v.size.to_le_bytes());
    p.push(match v.kind {
        FileType::Symlink => 2,
        _ => 1,
    });
    p.push(v.reason.code());
    p.extend_from_slice(&v.perm.to_le_bytes());
    p.extend_from_slice(&v.mtime.secs.to_le_bytes());
    p.extend_from_slice(&v.mtime.nanos.to_le_bytes());
    p.extend_from_slice(&(v.path.len() as u16).to_le_bytes());
    p.extend_from_slice(v.path.as_bytes());
    let mut out = (p.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

fn decode_meta(b: &[u8]) -> Option<VersionInfo> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let p = b.get(8..)?;
    if p.len() != len || crc32(p) != crc || len < 48 {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().unwrap());
    let kind = match p[28] {
        1 => FileType::File,
        2 => FileType::Symlink,
        _ => return None,
    };
    let plen = u16::from_le_bytes(p[46..48].try_into().unwrap()) as usize;
    let path = String::from_utf8(p.get(48..48 + plen)?.to_vec()).ok()?;
    (p.len() == 48 + plen).then_some(VersionInfo {
        id: VersionId(u64_at(0)),
        time: Timespec::new(u64_at(8) as i64, u32_at(16)),
        size: u64_at(20),
        kind,
        reason: VersionReason::from_code(p[29])?,
        perm: u32_at(30),
        mtime: Timespec::new(u64_at(34) as i64, u32_at(42)),
        path,
    })
}

/// The record in `name`, `None` if it is not one (torn, too long, not ours).
fn read_meta(dir: BorrowedFd<'_>, name: &str, label: &str) -> Result<Option<VersionInfo>> {
    let at = || format!("{label}/{name}");
    let f = File::from(sys::open_at(dir, name, libc::O_RDONLY, 0).ctx("open", &at())?);
    let len = f.metadata().ctx("stat", &at())?.len() as usize;
    if len > MAX_META {
        return Ok(None);
    }
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, 0).ctx("read", &at())?;
    Ok(decode_meta(&b))
}

/// The record kept as an attribute of entry `id`'s data, if it has one that decodes.
fn read_data_record(dir: BorrowedFd<'_>, id: u64) -> Option<VersionInfo> {
    // A symlink's data cannot be opened without following it, nor carry the attribute.
    let fd = sys::open_at(
        dir,
        &data_name(id),
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )
    .ok()?;
    decode_meta(&sys::fget_xattr(fd.as_fd(), RECORD_XATTR, MAX_META).ok()??)
}

/// What entry `id` keeps of a file at `path` whose stat was `st`, kept at `now`.
fn version_info(
    id: u64,
    path: &str,
    st: &libc::stat,
    reason: VersionReason,
    now: Timespec,
) -> VersionInfo {
    VersionInfo {
        id: VersionId(id),
        path: path.to_owned(),
        time: now,
        size: st.st_size as u64,
        kind: FileType::from_mode(st.st_mode),
        reason,
        perm: st.st_mode & 0o7777,
        mtime: Timespec::new(st.st_mtime, st.st_mtime_nsec as u32),
    }
}

impl Versions {
    /// Opens the area in `dir`, loading its index and removing leftovers of a crash.
    pub(crate) fn open(dir: OwnedFd, label: String, names_in_order: bool) -> Result<Versions> {
        let mut names = Vec::new();
        let mut cookie = 0i64;
        let rd = sys::open_beneath(dir.as_fd(), ".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .ctx("open", &label)?;
        loop {
            let mut page = Vec::new();
            let end =
                sys::read_dir_from(rd.as_fd(), cookie, 4096, &mut page).ctx("list", &label)?;
            if let Some(last) = page.last() {
                cookie = last.off;
            }
            names.extend(page.into_iter().map(|d| d.name));
            if end {
                break;
            }
        }
        let mut by_id = BTreeMap::new();
        let mut named = BTreeMap::new();
        let mut datas = std::collections::HashSet::new();
        let mut stray = Vec::new();
        for n in &names {
            let Ok(s) = std::str::from_utf8(n) else {
                continue;
            };
            let parsed = s
                .split_once('.')
                .and_then(|(id, ext)| Some((u64::from_str_radix(id, 16).ok()?, ext)));
            match parsed {
                Some((id, "data")) => {
                    datas.insert(id);
                }
                Some((id, ext)) if ext.starts_with('r') => match record_in_name(ext) {
                    Some(v) if v.id.0 == id => {
                        datas.insert(id);
                        by_id.insert(id, v);
                        named.insert(id, s.to_owned());
                    }
                    _ => {
                        tracing::error!(file = %format!("{label}/{s}"), "version data whose name is not a record; leaving it in place");
                    }
                },
                Some((id, "meta")) => match read_meta(dir.as_fd(), s, &label)? {
                    Some(v) if v.id.0 == id => {
                        by_id.insert(id, v);
                    }
                    _ => {
                        tracing::error!(file = %format!("{label}/{s}"), "unreadable version record; leaving it and its data in place");
                    }
                },
                _ => stray.push(s.to_owned()),
            }
        }
        for s in stray.iter().filter(|s| s.ends_with(".tmp")) {
            // A whole record whose rename did not reach the disk (module docs): taken.
            let record = s
                .strip_suffix(".meta.tmp")
                .and_then(|id| u64::from_str_radix(id, 16).ok())
                .filter(|id| datas.contains(id) && !by_id.contains_key(id))
                .and_then(|id| Some((id, read_meta(dir.as_fd(), s, &label).ok()??)));
            if let Some((id, v)) = record {
                if v.id.0 == id
                    && sys::rename_at(dir.as_fd(), s, dir.as_fd(), &meta_name(id), 0).is_ok()
                {
                    tracing::info!(file = %format!("{label}/{s}"), "version record taken from under its temporary name (crash after it was written)");
                    by_id.insert(id, v);
                    continue;
                }
            }
            let _ = sys::unlink_at(dir.as_fd(), s, false);
        }
        let unrecorded: Vec<u64> = datas
            .iter()
            .copied()
            .filter(|id| !by_id.contains_key(id))
            .collect();
        for id in &unrecorded {
            let meta_exists = names.iter().any(|n| n == meta_name(*id).as_bytes());
            if meta_exists {
                continue;
            }
            match read_data_record(dir.as_fd(), *id) {
                Some(v) if v.id.0 == *id => {
                    by_id.insert(*id, v);
                }
                // Data without a record: a crash between the two, before the original was
                // touched.
                _ => {
                    tracing::info!(file = %format!("{label}/{}", data_name(*id)), "removing version data without a record (crash before the change it guarded)");
                    let _ = sys::unlink_at(dir.as_fd(), &data_name(*id), false);
                }
            }
        }
        by_id.retain(|id, _| datas.contains(id));
        // Data that still has another name was linked here before a change a crash then
        // prevented (the unlink or the rename over it never happened): the original is
        // intact, and this "copy" would follow its every later change. Copies are made of
        // files with other names, so a kept file's data has only its own.
        let name_of = |id: u64| data_name_among(&named, id);
        by_id.retain(|id, v| {
            let dname = name_of(*id);
            let shared = v.kind == FileType::File
                && sys::stat_at(dir.as_fd(), &dname).is_ok_and(|st| st.st_nlink > 1);
            if shared {
                tracing::info!(file = %format!("{label}/{dname}"), "removing a version whose file was never changed (crash before the change it guarded)");
                let _ = sys::unlink_at(dir.as_fd(), &meta_name(*id), false);
                let _ = sys::unlink_at(dir.as_fd(), &dname, false);
            }
            !shared
        });
        let disk: BTreeMap<u64, u64> = by_id
            .iter()
            .map(|(id, v)| {
                (
                    *id,
                    disk_bytes(dir.as_fd(), &name_of(*id)).unwrap_or(v.size),
                )
            })
            .collect();
        named.retain(|id, _| by_id.contains_key(id));
        let next_id = names
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok())
            .filter_map(|s| u64::from_str_radix(s.split('.').next()?, 16).ok())
            .max()
            .map_or(1, |m| m + 1);
        let total = disk.values().sum();
        Ok(Versions {
            dir,
            label,
            names_in_order,
            index: Mutex::new(Index {
                by_id,
                disk,
                named,
                next_id,
                total,
            }),
        })
    }

    fn file_label(&self, name: &str) -> String {
        format!("{}/{name}", self.label)
    }

    fn alloc(&self) -> u64 {
        let mut ix = self.index.lock().unwrap();
        let id = ix.next_id;
        ix.next_id += 1;
        id
    }

    /// Preserves the entry `name` in `parent` (about to be replaced or removed), as a hard
    /// link when it is the inode's only name (so the kept copy costs nothing and cannot be
    /// changed through the tree), else as a copy.
    pub(crate) fn preserve_entry(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        path: &str,
        st: &libc::stat,
        reason: VersionReason,
        now: Timespec,
    ) -> Result<Option<VersionId>> {
        let kind = FileType::from_mode(st.st_mode);
        if kind != FileType::File && kind != FileType::Symlink {
            return Ok(None);
        }
        let id = self.alloc();
        if kind == FileType::File && st.st_nlink == 1 && self.names_in_order {
            let v = version_info(id, path, st, reason, now);
            if let Some(rname) = recorded_name(&v) {
                match sys::link_at(parent, name, self.dir.as_fd(), &rname) {
                    Ok(()) => {
                        // The same inode: what it has allocated is known without a stat.
                        let disk = st.st_blocks as u64 * 512;
                        return Ok(Some(self.index_entry(v, disk, Some(rname))));
                    }
                    // A file system with shorter names: the record goes beside the data.
                    Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {}
                    Err(e) => return Err(StoreError::fs("keep version of", path, e)),
                }
            }
        }
        let dname = data_name(id);
        if kind == FileType::Symlink || st.st_nlink == 1 {
            sys::link_at(parent, name, self.dir.as_fd(), &dname).ctx("keep version of", path)?;
        } else {
            let src = File::from(
                modes::open_whatever_mode(parent, name, libc::O_RDONLY)
                    .ctx("keep version of", path)?,
            );
            self.copy_into(&src, &dname, st, path)?;
        }
        self.finish(id, path, st, reason, now, Then::ChangesNames)
            .map(Some)
    }

    /// Preserves the current content of an open file about to be modified in place (a copy,
    /// or a reflink where the filesystem shares extents).
    pub(crate) fn preserve_open(
        &self,
        src: &File,
        path: &str,
        st: &libc::stat,
        reason: VersionReason,
        now: Timespec,
    ) -> Result<VersionId> {
        let id = self.alloc();
        self.copy_into(src, &data_name(id), st, path)?;
        self.finish(id, path, st, reason, now, Then::ChangesContent)
    }

    /// Takes a finished, fsynced staged file (`name` in `staging`) into the area.
    pub(crate) fn adopt_staged(
        &self,
        staging: BorrowedFd<'_>,
        name: &str,
        path: &str,
        reason: VersionReason,
        now: Timespec,
    ) -> Result<VersionInfo> {
        let st = sys::stat_at(staging, name).ctx("stat", path)?;
        let id = self.alloc();
        sys::rename_at(
            staging,
            name,
            self.dir.as_fd(),
            &data_name(id),
            libc::RENAME_NOREPLACE,
        )
        .ctx("park", path)?;
        self.finish(id, path, &st, reason, now, Then::ChangesContent)?;
        Ok(self.get(VersionId(id)).expect("just inserted"))
    }

    fn copy_into(&self, src: &File, dname: &str, st: &libc::stat, path: &str) -> Result<()> {
        let dst = File::from(
            sys::open_at(
                self.dir.as_fd(),
                dname,
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )
            .ctx("keep version of", path)?,
        );
        let r = sys::clone_or_copy(src, &dst)
            .and_then(|_| sys::fchmod(dst.as_fd(), (st.st_mode & 0o7777) | 0o600))
            .and_then(|_| {
                sys::utimens_at(
                    dst.as_fd(),
                    "",
                    sys::UTIME_OMIT_TS,
                    sys::timespec(st.st_mtime, st.st_mtime_nsec as u32),
                )
            })
            .and_then(|_| sys::fsync(dst.as_fd()));
        if let Err(e) = r {
            let _ = sys::unlink_at(self.dir.as_fd(), dname, false);
            return Err(StoreError::fs("keep version of", path, e));
        }
        Ok(())
    }

    fn finish(
        &self,
        id: u64,
        path: &str,
        st: &libc::stat,
        reason: VersionReason,
        now: Timespec,
        then: Then,
    ) -> Result<VersionId> {
        let v = version_info(id, path, st, reason, now);
        let record = encode_meta(&v);
        if self.names_in_order
            && then == Then::ChangesNames
            && v.kind == FileType::File
            && self.record_on_data(id, &record)
        {
            return Ok(self.index_new(v));
        }
        let tmp = format!("{}.tmp", meta_name(id));
        let r = (|| {
            let f = File::from(sys::open_at(
                self.dir.as_fd(),
                &tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?);
            f.write_all_at(&record, 0)?;
            sys::fsync(f.as_fd())?;
            sys::rename_at(self.dir.as_fd(), &tmp, self.dir.as_fd(), &meta_name(id), 0)
        })();
        if let Err(e) = r {
            let _ = sys::unlink_at(self.dir.as_fd(), &tmp, false);
            let _ = sys::unlink_at(self.dir.as_fd(), &meta_name(id), false);
            let _ = sys::unlink_at(self.dir.as_fd(), &data_name(id), false);
            return Err(StoreError::fs("keep version of", path, e));
        }
        Ok(self.index_new(v))
    }

    /// Writes `record` as the data's attribute; false if the file system refuses it (no
    /// user attributes, or a record too long for one), for the caller to write a file.
    fn record_on_data(&self, id: u64, record: &[u8]) -> bool {
        sys::open_at(
            self.dir.as_fd(),
            &data_name(id),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .and_then(|fd| sys::fset_xattr(fd.as_fd(), RECORD_XATTR, record))
        .is_ok()
    }

    /// Indexes a new entry whose data is `<id>.data`, looking up what it takes on disk.
    fn index_new(&self, v: VersionInfo) -> VersionId {
        let disk = disk_bytes(self.dir.as_fd(), &data_name(v.id.0)).unwrap_or(v.size);
        self.index_entry(v, disk, None)
    }

    /// Indexes a new entry taking `disk` bytes on disk, whose data is named `named` (the
    /// name that carries its record), or `<id>.data` if `None`.
    fn index_entry(&self, v: VersionInfo, disk: u64, named: Option<String>) -> VersionId {
        let id = v.id;
        let mut ix = self.index.lock().unwrap();
        ix.total += disk;
        ix.disk.insert(id.0, disk);
        ix.by_id.insert(id.0, v);
        if let Some(n) = named {
            ix.named.insert(id.0, n);
        }
        id
    }

    /// What entry `id`'s data takes on disk (0 if it is not known).
    fn disk_of(&self, id: VersionId) -> u64 {
        self.index
            .lock()
            .unwrap()
            .disk
            .get(&id.0)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn get(&self, id: VersionId) -> Option<VersionInfo> {
        self.index.lock().unwrap().by_id.get(&id.0).cloned()
    }

    /// Versions of `path`, newest first.
    pub(crate) fn list(&self, path: &str) -> Vec<VersionInfo> {
        let ix = self.index.lock().unwrap();
        let mut v: Vec<_> = ix
            .by_id
            .values()
            .filter(|v| v.path == path)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    /// Every entry, oldest first.
    pub(crate) fn list_all(&self) -> Vec<VersionInfo> {
        self.index.lock().unwrap().by_id.values().cloned().collect()
    }

    /// (count, bytes they take on disk)
    pub(crate) fn usage(&self) -> (usize, u64) {
        let ix = self.index.lock().unwrap();
        (ix.by_id.len(), ix.total)
    }

    pub(crate) fn open_data(&self, id: VersionId) -> Result<File> {
        let dname = self.data_name(id);
        // An entry's data name is never given to other data, so it stays this file's.
        modes::open_whatever_mode(self.dir.as_fd(), &dname, libc::O_RDONLY)
            .map(File::from)
            .ctx("open", &self.file_label(&dname))
    }

    pub(crate) fn read_link(&self, id: VersionId) -> Result<Vec<u8>> {
        let dname = self.data_name(id);
        sys::readlink_at(self.dir.as_fd(), &dname).ctx("read", &self.file_label(&dname))
    }

    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The name of entry `id`'s data in the area.
    pub(crate) fn data_name(&self, id: VersionId) -> String {
        self.index.lock().unwrap().data_name(id.0)
    }

    /// Forgets an entry whose data was moved away (conflict adoption) or is to be removed.
    pub(crate) fn remove(&self, id: VersionId, data_too: bool) -> Result<()> {
        let mname = meta_name(id.0);
        match sys::unlink_at(self.dir.as_fd(), &mname, false) {
            // The record was the data's attribute (module docs): it goes with the data.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => r.ctx("remove", &self.file_label(&mname))?,
        }
        if data_too {
            let dname = self.data_name(id);
            match sys::unlink_at(self.dir.as_fd(), &dname, false) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(StoreError::fs("remove", &self.file_label(&dname), e))
                }
                _ => {}
            }
        }
        let mut ix = self.index.lock().unwrap();
        ix.by_id.remove(&id.0);
        ix.named.remove(&id.0);
        if let Some(d) = ix.disk.remove(&id.0) {
            ix.total -= d;
        }
        Ok(())
    }

    /// Applies `policy` at time `now`; see [`RetentionPolicy`].
    pub(crate) fn prune(&self, policy: &RetentionPolicy, now: Timespec) -> Result<PruneReport> {
        let age = |v: &VersionInfo| {
            let secs = now.secs.saturating_sub(v.time.secs);
            Duration::from_secs(secs.max(0) as u64)
        };
        let all = self.list_all();
        let disk = |v: &VersionInfo| self.disk_of(v.id);
        let mut total = self.usage().1;
        let mut doomed = Vec::new();
        for v in &all {
            if age(v) > policy.max_age {
                doomed.push(v.id);
                total -= disk(v);
            }
        }
        for v in &all {
            if total <= policy.max_bytes {
                break;
            }
            if doomed.contains(&v.id) {
                continue;
            }
            if age(v) >= policy.min_age || policy.hard_cap {
                doomed.push(v.id);
                total -= disk(v);
            }
        }
        let mut report = PruneReport::default();
        for id in doomed {
            let size = self.disk_of(id);
            self.remove(id, true)?;
            report.removed += 1;
            report.freed_bytes += size;
        }
        if report.removed > 0 {
            sys::fsync(self.dir.as_fd()).ctx("fsync", &self.label)?;
        }
        let (kept, kept_bytes) = self.usage();
        report.kept = kept;
        report.kept_bytes = kept_bytes;
        report.over_cap = kept_bytes > policy.max_bytes;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_damage() {
        let v = VersionInfo {
            id: VersionId(0x1234),
            path: "a/b".into(),
            time: Timespec::new(100, 5),
            size: 77,
            kind: FileType::Symlink,
            reason: VersionReason::Delete,
            perm: 0o640,
            mtime: Timespec::new(-1, 3),
        };
        let b = encode_meta(&v);
        assert_eq!(decode_meta(&b), Some(v));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert_eq!(decode_meta(&c), None, "flip at {i}");
            assert_eq!(decode_meta(&b[..i]), None, "prefix {i}");
        }
        assert_eq!(
            "0000000000001234".parse::<VersionId>().unwrap(),
            VersionId(0x1234)
        );
        assert!("12".parse::<VersionId>().is_err());
        assert!("zzzzzzzzzzzzzzzz".parse::<VersionId>().is_err());
    }
}
