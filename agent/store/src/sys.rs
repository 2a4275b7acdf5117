//! Thin wrappers over the Linux `*at` syscalls the store is built on. Every `name` argument is
//! a single, already validated component (no '/'); multi-component paths go only through
//! [`open_beneath`], which is `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`, or the same rules walked one component at a time where `openat2`
//! is missing. Nothing here follows a symlink.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};

/// How many times to retry `openat2` when the kernel reports EAGAIN: it does so when a
/// concurrent rename might have let a resolution escape, and asks the caller to retry.
const OPENAT2_RETRIES: usize = 16;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// Set once `openat2` has answered ENOSYS: kernels before 5.6, and seccomp filters that do not
/// know the syscall (systemd-nspawn's container filter answers ENOSYS for it even when the
/// unit inside allows it), so that later calls go straight to the component walk.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens `path` (relative, may have several components; "." is the directory itself) beneath
/// `dir`, refusing to cross any symlink, magic link or the boundary of `dir`.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        match openat2_beneath(dir, path, flags, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                OPENAT2_MISSING.store(true, Ordering::Relaxed)
            }
            r => return r,
        }
    }
    walk_beneath(dir, path, flags, mode)
}

/// [`open_beneath`] without `openat2`: each component is opened with `O_NOFOLLOW` from the
/// descriptor of the one before, so nothing is resolved by the kernel beyond a single name.
/// The errors are those `openat2` gives for the same refusals: `..` → EXDEV (our paths never
/// need it, and RESOLVE_BENEATH would refuse any that climbs out), a symlink → ELOOP.
pub(crate) fn walk_beneath(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    if path.starts_with('/') {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let components: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.contains(&"..") {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let Some((last, parents)) = components.split_last() else {
        return open_at(dir, ".", flags, mode);
    };
    let mut held: Option<OwnedFd> = None;
    for name in parents {
        let at = held.as_ref().map_or(dir, |fd| fd.as_fd());
        let next = open_at(at, name, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| symlink_is_eloop(at, name, e))?;
        held = Some(next);
    }
    let at = held.as_ref().map_or(dir, |fd| fd.as_fd());
    // The last component keeps openat's own answers, which are openat2's too: ELOOP for a
    // symlink opened with O_NOFOLLOW, ENOTDIR when O_DIRECTORY meets one.
    open_at(at, last, flags, mode)
}

/// O_NOFOLLOW|O_DIRECTORY on a symlink in the middle of a path says ENOTDIR; openat2 with
/// RESOLVE_NO_SYMLINKS says ELOOP there, which is what the store's error mapping expects.
fn symlink_is_eloop(dir: BorrowedFd<'_>, name: &str, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENOTDIR) {
        if let Ok(st) = stat_at(dir, name) {
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return io::Error::from_raw_os_error(libc::ELOOP);
            }
        }
    }
    e
}

fn openat2_beneath(dir: BorrowedFd<'_>, path: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(if path.is_empty() { "." } else { path })?;
    // SAFETY: open_how is a plain C struct of integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        // SAFETY: `c` is a valid NUL-terminated string and `how` a valid open_how that both
        // outlive the call; the size passed is the size of the struct we pass.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a new file descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            _ => return Err(e),
        }
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)` for a single name.
pub fn open_at(dir: BorrowedFd<'_>, name: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    retry(|| {
        // SAFETY: `c` is a valid C string for the duration of the call.
        let fd = cvt(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: a fresh descriptor from openat, owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// Held shared by every stat here and exclusively while the `modes` module lifts a file's
/// mode for a moment, so no stat ever reports a lifted mode as the file's own.
static MODES_SETTLED: RwLock<()> = RwLock::new(());

/// Keeps every stat waiting while a file's mode is lifted (see `MODES_SETTLED`); stat with
/// [`stat_at_unsettled`] meanwhile.
pub(crate) fn unsettle_modes() -> RwLockWriteGuard<'static, ()> {
    MODES_SETTLED
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}

/// lstat of `name` in `dir` (`fstatat` with `AT_SYMLINK_NOFOLLOW`); an empty name stats `dir`.
/// A directory's mode is the one kept for it, which may differ from its mode on disk (see
/// the `modes` module).
pub fn stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<libc::stat> {
    let _settled = MODES_SETTLED.read().unwrap_or_else(PoisonError::into_inner);
    stat_at_unsettled(dir, name)
}

/// [`stat_at`] for the holder of [`unsettle_modes`].
pub(crate) fn stat_at_unsettled(dir: BorrowedFd<'_>, name: &str) -> io::Result<libc::stat> {
    let mut st = raw_stat_at(dir, name)?;
    crate::modes::report_kept_dir_mode(dir, name, &mut st);
    Ok(st)
}

fn raw_stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is a valid C string and `st` points to writable memory of the right size.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// fstat of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    stat_at(fd, "")
}

/// Like [`stat_at`], but `Ok(None)` when the name does not exist.
pub fn stat_at_opt(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<libc::stat>> {
    match stat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let t = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let c = cstr(name)?;
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    // PATH_MAX: the kernel never stores a longer target.
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for `buf.len()` bytes and `c` is a valid C string.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Hard link without following a symlink at `old` (flags 0: the link itself is linked).
pub fn link_at(
    olddir: BorrowedFd<'_>,
    old: &str,
    newdir: BorrowedFd<'_>,
    new: &str,
) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &str, rmdir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// renameat2; `flags` is 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
pub fn rename_at(
    olddir: BorrowedFd<'_>,
    old: &str,
    newdir: BorrowedFd<'_>,
    new: &str,
    flags: u32,
) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags as libc::c_uint,
        )
    })
    .map(drop)
}

/// Sets atime/mtime of `name` itself (a symlink's own times, never its target's).
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    name: &str,
    atime: libc::timespec,
    mtime: libc::timespec,
) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    let times = [atime, mtime];
    // SAFETY: `c` is a valid C string and `times` an array of two timespecs, as required.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` points to writable memory of the right size.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// Sets the extended attribute `name` of the open file `fd` to `value`.
pub fn fset_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` is valid for its length.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// The extended attribute `name` of the open file `fd` if it has one of at most `max`
/// bytes (`None` if it has none; ERANGE if it is longer).
pub fn fget_xattr(fd: BorrowedFd<'_>, name: &CStr, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    // SAFETY: `name` is NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Removes the extended attribute `name` of the open file `fd`; `Ok` if it had none (or the
/// file system keeps none).
pub fn fremove_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    match cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) }) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(()),
        r => r.map(drop),
    }
}

/// Whether the file system under `fd` writes changes to names and attributes to disk in
/// the order they were made, and what it is (for the log). ext4 does with its journal (the
/// default, and a qube's private volume has one), which shows as `/proc/fs/jbd2/<device>-*`;
/// XFS always journals; tmpfs keeps nothing over a crash, so there is no order to lose.
pub fn names_in_order(fd: BorrowedFd<'_>) -> (bool, String) {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const TMPFS: i64 = 0x0102_1994;
    let mut sfs = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `sfs` points to writable memory of the right size.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), sfs.as_mut_ptr()) } != 0 {
        return (false, "unknown file system".into());
    }
    // f_type's width is the architecture's (`__fsword_t`); the magic numbers fit in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    // SAFETY: fstatfs succeeded, so it filled `sfs`.
    let kind = unsafe { sfs.assume_init() }.f_type as i64;
    match kind {
        XFS => (true, "XFS".into()),
        TMPFS => (true, "tmpfs".into()),
        EXT4 => {
            let journaled = fstat(fd).ok().and_then(|st| {
                let (major, minor) = (libc::major(st.st_dev), libc::minor(st.st_dev));
                let dev = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
                let prefix = format!("{}-", dev.file_name()?.to_str()?);
                let jbd2 = std::fs::read_dir("/proc/fs/jbd2").ok()?;
                let found = jbd2
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
                Some(found)
            });
            match journaled {
                Some(true) => (true, "ext4 with a journal".into()),
                _ => (false, "ext4 without a journal".into()),
            }
        }
        other => (false, format!("file system {other:#x}")),
    }
}

/// fsync of a descriptor (directories included).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    retry(|| cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop))
}

pub fn fdatasync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    retry(|| cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(drop))
}

/// FICLONE (`_IOW(0x94, 9, int)`, linux/fs.h): share the extents of `src` with `dst` on
/// filesystems that can (btrfs, xfs); fails with EOPNOTSUPP/EXDEV/EINVAL elsewhere.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` (empty) a copy of `src`: a reflink where the filesystem supports it, else a
/// copy of the data `src` holds, its holes left holes. A peer can make a file of any
/// size out of holes (a truncate is cheap); copying the zeros would let it fill the disk
/// with one write.
pub fn clone_or_copy(src: &File, dst: &File) -> io::Result<u64> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        return Ok(src.metadata()?.len());
    }
    let len = src.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(src, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // A filesystem that cannot say where its holes are: all of it is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && pos == 0 => 0,
            Err(e) => return Err(e),
        };
        let end = match seek(src, data, libc::SEEK_HOLE) {
            Ok(h) => h.min(len),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => len,
            Err(e) => return Err(e),
        };
        copy_range(src, dst, data, end)?;
        pos = end;
    }
    dst.set_len(len)?;
    Ok(len)
}

fn seek(f: &File, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: plain syscall on an open descriptor; the offset is checked by the kernel.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Copies bytes `[from, to)` of `src` to the same offsets of `dst`, in the kernel where it
/// can (copy_file_range), else through a buffer.
fn copy_range(src: &File, dst: &File, from: u64, to: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (from as libc::loff_t, from as libc::loff_t);
    while (off_in as u64) < to {
        let want = ((to - off_in as u64) as usize).min(1 << 30);
        // SAFETY: both descriptors are open; the offsets are ours and updated by the kernel.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        match n {
            n if n > 0 => {}
            // The file shrank under us: what is left is gone.
            0 => return Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                        return copy_range_buffered(src, dst, off_in as u64, to)
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

fn copy_range_buffered(src: &File, dst: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let want = ((to - off) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// One directory entry as `getdents64` reports it.
pub struct RawDirent {
    pub ino: u64,
    /// The position after this entry, to resume reading with `lseek`.
    pub off: i64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// Reads entries of the open directory `fd` starting at position `cookie` (0 = start),
/// stopping after `max` entries or at the end; returns whether the end was reached.
pub fn read_dir_from(
    fd: BorrowedFd<'_>,
    cookie: i64,
    max: usize,
    out: &mut Vec<RawDirent>,
) -> io::Result<bool> {
    // SAFETY: plain lseek on a directory descriptor we borrow.
    if unsafe { libc::lseek(fd.as_raw_fd(), cookie, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // 32 KiB per getdents64 call: a few hundred entries, a fraction of a page-cache page set.
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(true);
        }
        let mut pos = 0usize;
        while pos < n as usize {
            // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let rec = &buf[pos..n as usize];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap());
            let off = i64::from_ne_bytes(rec[8..16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().unwrap()) as usize;
            let dtype = rec[18];
            let name_bytes = &rec[19..reclen];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = name_bytes[..end].to_vec();
            pos += reclen;
            if name != b"." && name != b".." {
                out.push(RawDirent {
                    ino,
                    off,
                    dtype,
                    name,
                });
                if out.len() >= max {
                    return Ok(false);
                }
            }
        }
    }
}

/// `flock(fd, LOCK_EX | LOCK_NB)`.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(drop)
}

pub fn timespec(secs: i64, nanos: u32) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    }
}

pub const UTIME_OMIT_TS: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

pub const UTIME_NOW_TS: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_NOW,
};
