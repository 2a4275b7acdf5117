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
//! Directories keep owner rwx on disk (every path beneath them must stay walkable for the
//! sync, and their entries changeable); their mode is not lifted here.
//!
//! Every change of a file's mode made by storage, lifted or asked for, holds the store's
//! stats off (`sys::unsettle_modes`): a lift never restores a mode over a change asked for
//! meanwhile, never takes a lifted mode for the file's own, and no stat reports a lifted mode.
//! A machine crash during a lift leaves the owner bits granted (what every file had before
//! modes were kept exactly); nothing else is lost.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys;

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
    fn an_open_needs_the_owner_bits_of_its_access_mode() {
        assert_eq!(owner_bits_for(libc::O_RDONLY | libc::O_NONBLOCK), 0o400);
        assert_eq!(owner_bits_for(libc::O_WRONLY), 0o200);
        assert_eq!(owner_bits_for(libc::O_RDWR | libc::O_CREAT), 0o600);
    }
}
