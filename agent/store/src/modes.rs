//! A file's permission bits are kept exactly as the consumer set them: the consumer's kernel
//! checks them against its own users (`default_permissions`), so `chmod 444` must leave a
//! file the owner cannot write. Storage itself must still open any file whatever its mode:
//! the sync reads every file to upload it, a file created read-only (`open(O_CREAT, 0444)`,
//! as git and `cp -p` do) is written through the handle its creation returned, and root in
//! the consumer reads and writes what it likes, as on any file system. Storage runs without
//! CAP_DAC_OVERRIDE, so where a regular file's mode refuses its owner, the owner bits the open
//! needs are granted for the moment of the open and taken back on the descriptor it returned
//! (gocryptfs does the same for write-only files it must read).
//!
//! Directories keep owner rwx on disk instead: every path beneath one must stay walkable and
//! its entries changeable (the sync brings changes into a directory made read-only here).
//! A directory whose mode lacks any owner bit, or has the sticky, setgid or setuid bit, is
//! marked on disk with the sticky bit (which means nothing to storage, the owner of
//! everything in the tree), and its mode is kept in its extended attribute
//! `user.cloudstore.mode` (octal text). Setgid and setuid never reach the disk: the storage
//! unit forbids setting them (`RestrictSUIDSGID=`), and a shared directory made setgid
//! (`chmod 2775`) must not fail for it. Every
//! stat of the store reports that mode for a marked directory (`sys::stat_at`), so no other
//! code knows of the difference; an unmarked directory costs nothing. The attribute is
//! written before the mark and removed after it, so a crash between leaves the mode before
//! or after the change, never another. Where the file system keeps no user attributes, a
//! directory keeps owner rwx and shows it.
//!
//! Every change of a file's mode made by storage, lifted or asked for, holds the store's
//! stats off (`sys::unsettle_modes`): a lift never restores a mode over a change asked for
//! meanwhile, never takes a lifted mode for the file's own, and no stat reports a lifted mode.
//! A machine crash during a lift leaves the owner bits granted (what every file had before
//! modes were kept exactly); nothing else is lost.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys;

const DIR_MODE_XATTR: &CStr = c"user.cloudstore.mode";

/// The mode a directory whose kept mode is `mode` has on disk: owner rwx, and the sticky bit
/// as the mark of a mode kept apart.
fn dir_mode_on_disk(mode: u32) -> u32 {
    let mode = mode & 0o7777;
    if mode & 0o700 == 0o700 && mode & 0o7000 == 0 {
        mode
    } else {
        (mode & 0o777) | 0o700 | libc::S_ISVTX
    }
}

/// Sets the mode of the directory open as `dir` (not `O_PATH`) to `mode`, as it is kept.
pub(crate) fn set_dir_mode(dir: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let mode = mode & 0o7777;
    let on_disk = dir_mode_on_disk(mode);
    if on_disk & libc::S_ISVTX == 0 {
        // Unmarked first: from then on the attribute is not read.
        sys::fchmod(dir, mode)?;
        return sys::fremove_xattr(dir, DIR_MODE_XATTR);
    }
    match sys::fset_xattr(dir, DIR_MODE_XATTR, format!("{mode:o}").as_bytes()) {
        Ok(()) => sys::fchmod(dir, on_disk),
        // No user attributes here: owner rwx, shown as it is (a mark without an attribute).
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            sys::fchmod(dir, (mode & 0o1777) | 0o700)
        }
        Err(e) => Err(e),
    }
}

/// Puts the kept mode of the directory `name` in `dir` (`dir` itself for an empty name) into
/// `st`, its stat, if it is a marked directory with a kept mode; leaves `st` as it is else.
pub(crate) fn report_kept_dir_mode(dir: BorrowedFd<'_>, name: &str, st: &mut libc::stat) {
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_mode & libc::S_ISVTX == 0 {
        return;
    }
    let at = if name.is_empty() { "." } else { name };
    let Ok(d) = sys::open_at(
        dir,
        at,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK,
        0,
    ) else {
        return;
    };
    let kept = sys::fget_xattr(d.as_fd(), DIR_MODE_XATTR, 8)
        .ok()
        .flatten()
        .and_then(|v| u32::from_str_radix(std::str::from_utf8(&v).ok()?, 8).ok())
        .filter(|m| *m <= 0o7777);
    if let Some(mode) = kept {
        st.st_mode = (st.st_mode & !0o7777) | mode;
    }
}

/// The owner bits an open with `flags` needs.
fn owner_bits_for(flags: i32) -> u32 {
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => 0o400,
        libc::O_WRONLY => 0o200,
        _ => 0o600,
    }
}

fn chmod_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid C string for the duration of the call. The callers have checked
    // that `name` is a regular file and keep it from being replaced, so nothing is followed.
    let r = unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens `name` in `dir` with `flags` (never following it), granting its owner the bits the
/// open needs for the moment of the open if the file's mode refuses them. Answers as
/// `openat` does for anything else (a refusal that is not the mode's, a directory, a
/// symlink). The caller keeps `name` from being renamed or replaced until this returns.
pub(crate) fn open_whatever_mode(
    dir: BorrowedFd<'_>,
    name: &str,
    flags: i32,
) -> io::Result<OwnedFd> {
    let refused = match sys::open_at(dir, name, flags, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => e,
        r => return r,
    };
    let _g = sys::unsettle_modes();
    let st = sys::stat_at_unsettled(dir, name)?;
    let mode = st.st_mode & 0o7777;
    let need = owner_bits_for(flags);
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused);
    }
    if mode & need == need {
        // The mode allows it: another lift has just ended, or the refusal is not the mode's
        // (a sandbox); one more try answers which.
        return sys::open_at(dir, name, flags, 0);
    }
    chmod_at(dir, name, mode | need)?;
    let opened = sys::open_at(dir, name, flags, 0);
    let restored = match &opened {
        Ok(fd) => sys::fchmod(fd.as_fd(), mode),
        Err(_) => chmod_at(dir, name, mode),
    };
    let fd = opened?;
    restored?;
    Ok(fd)
}

/// Sets the mode of the regular file `name` in `dir` to `mode` exactly. The caller has
/// checked that `name` is a regular file and keeps it from being replaced meanwhile.
pub(crate) fn set_file_mode(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let _g = sys::unsettle_modes();
    chmod_at(dir, name, mode & 0o7777)
}

/// The attributes of the open file `file` (never a mode lifted for a moment).
pub fn stat_descriptor(file: &std::fs::File) -> io::Result<crate::Attr> {
    sys::fstat(file.as_fd()).map(|st| crate::Attr::from_stat(&st))
}

/// Sets the mode of the open regular file `fd` to `mode` exactly (a file that has left the
/// tree, changed through a handle still open on it).
pub fn set_descriptor_mode(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let _g = sys::unsettle_modes();
    sys::fchmod(fd, mode & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_on_disk_keeps_owner_rwx_and_is_marked_when_its_mode_differs() {
        assert_eq!(dir_mode_on_disk(0o755), 0o755);
        assert_eq!(dir_mode_on_disk(0o770), 0o770);
        assert_eq!(dir_mode_on_disk(0o2775), 0o1775);
        assert_eq!(dir_mode_on_disk(0o4700), 0o1700);
        assert_eq!(dir_mode_on_disk(0o555), 0o1755);
        assert_eq!(dir_mode_on_disk(0o000), 0o1700);
        assert_eq!(dir_mode_on_disk(0o1777), 0o1777);
        assert_eq!(dir_mode_on_disk(0o1555), 0o1755);
        assert_eq!(dir_mode_on_disk(0o40555), 0o1755);
    }

    #[test]
    fn an_open_needs_the_owner_bits_of_its_access_mode() {
        assert_eq!(owner_bits_for(libc::O_RDONLY | libc::O_NONBLOCK), 0o400);
        assert_eq!(owner_bits_for(libc::O_WRONLY), 0o200);
        assert_eq!(owner_bits_for(libc::O_RDWR | libc::O_CREAT), 0o600);
    }
}
