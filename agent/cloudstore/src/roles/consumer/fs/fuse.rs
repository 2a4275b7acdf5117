//! The `fuser::Filesystem` adapter. fuser 0.15 reads the kernel's requests on one thread;
//! every request that may wait on storage is handed to the worker pool with its reply, so
//! many are in flight at once (the protocol client multiplexes them on one stream) and
//! block encryption runs on the workers. What is answered from memory stays on the reading
//! thread, which saves a thread wake-up per request (a good part of a local answer's cost):
//! `forget`, a lookup of a name known to be absent, and the stat (or ownership change)
//! after a change made here whose answer carried the attributes. So does a small read or
//! write while no worker has a job (see [`FuseFs::inline_io`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::consts::FOPEN_KEEP_CACHE;
use fuser::{
    FileType, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use super::core::{Core, DirItem, PlusEntry};
use super::Fail;

/// The largest write the kernel sends in one request: 1 MiB, the protocol's `MAX_IO`, so a
/// large sequential write is one protocol round trip per MiB.
const MAX_WRITE: u32 = 1 << 20;
/// The largest read or write run on fuser's reading thread when the workers are idle
/// (random I/O, a small file's content): handing it to a worker is one thread wake-up of
/// the few its round trip to storage costs. Larger ones (streaming, readahead) go to the
/// workers, where their encryption runs in parallel with the next request.
const INLINE_IO_MAX: u32 = 64 << 10;
/// Requests the kernel keeps in flight in the background (readahead, writeback): enough
/// to keep the workers busy.
const MAX_BACKGROUND: u16 = 64;

pub(crate) struct FuseFs {
    core: Arc<Core>,
}

impl FuseFs {
    pub(crate) fn new(core: Arc<Core>) -> FuseFs {
        FuseFs { core }
    }

    fn run(&self, job: impl FnOnce(&Core) + Send + 'static) {
        let core = self.core.clone();
        self.core.spawn(Box::new(move || job(&core)));
    }

    /// Whether a read or write of `size` bytes runs here rather than on a worker. Only when
    /// no worker has a job and storage is connected: a request that waits on storage blocks
    /// the reading of the next one, which is free only when nothing runs in parallel
    /// anyway. Nothing on the read or write path waits for the kernel (invalidations come
    /// from the push thread, which takes no lock while it calls the kernel), so the reading
    /// thread cannot wait on itself.
    fn inline_io(&self, size: usize) -> bool {
        size <= INLINE_IO_MAX as usize && self.core.idle_and_connected()
    }
}

/// Turns a failure into the errno the kernel gets; storage failures and corruption (EIO)
/// are logged at error level with the plaintext path and kept for `cloudstore status`.
fn errno(core: &Core, op: &str, path: &str, f: &Fail) -> i32 {
    if f.errno == libc::EIO {
        tracing::error!(volume = %core.opts.volume_name, op, path, "{op} {path}: {}", f.msg);
        core.status.set_error(format!("{op} {path}: {}", f.msg));
    } else {
        tracing::debug!(volume = %core.opts.volume_name, op, path, errno = f.errno, "{op} {path}: {}", f.msg);
    }
    f.errno
}

/// Attributes for `.` and `..` in a readdirplus answer: the kernel does not use them.
fn dot_attr(ino: u64) -> fuser::FileAttr {
    fuser::FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn kind(k: cloudstore_protocol::FileType) -> FileType {
    match k {
        cloudstore_protocol::FileType::Dir => FileType::Directory,
        cloudstore_protocol::FileType::Symlink => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

/// Adds the listed entries from index `from` to a readdirplus answer until it is full.
/// Without `may_wait`, stops at an entry that must be looked up and returns its index.
fn fill_plus(
    core: &Core,
    dir: u64,
    items: &[DirItem],
    from: usize,
    reply: &mut ReplyDirectoryPlus,
    may_wait: bool,
) -> Option<usize> {
    let ttl = core.ttl();
    let dir_state = core.file_state(dir);
    for (i, it) in items.iter().enumerate().skip(from) {
        let off = (i + 1) as i64;
        let name = OsStr::from_bytes(&it.name);
        let full = match core.plus_entry(dir, &dir_state, it, may_wait) {
            PlusEntry::Entry(child, attr) => {
                let full = reply.add(child, off, name, &ttl, &attr, 0);
                if full {
                    // Not sent: not a lookup the kernel will count.
                    core.forget(child, 1);
                }
                full
            }
            PlusEntry::Dots => reply.add(it.ino, off, name, &ttl, &dot_attr(it.ino), 0),
            PlusEntry::Gone => false,
            PlusEntry::Ask => return Some(i),
        };
        if full {
            break;
        }
    }
    None
}

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        // Lookups in one directory may run in parallel (a kernel ≥ 4.7 feature).
        let _ = config.add_capabilities(fuser::consts::FUSE_PARALLEL_DIROPS);
        // Listings carry attributes (storage sends them with each page), so `ls -l` needs
        // no lookup per entry; "auto" lets the kernel use it only when stats follow.
        let _ = config.add_capabilities(
            fuser::consts::FUSE_DO_READDIRPLUS | fuser::consts::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if self.core.known_absent_now(parent, name.as_bytes()) {
            reply.error(libc::ENOENT);
            return;
        }
        let name = name.as_bytes().to_vec();
        self.run(move |c| match c.lookup(parent, &name) {
            Ok(a) => reply.entry(&c.ttl(), &a, 0),
            Err(f) => reply.error(errno(c, "lookup", &c.shown_child(parent, &name), &f)),
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.core.forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        if let Some(a) = self.core.getattr_now(ino, fh) {
            reply.attr(&self.core.ttl(), &a);
            return;
        }
        self.run(move |c| match c.getattr(ino, fh) {
            Ok(a) => reply.attr(&c.ttl(), &a),
            Err(f) => reply.error(errno(c, "getattr", &c.shown(ino), &f)),
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // Ownership is not stored: every file belongs to the qube's user (chown succeeds
        // without effect, so `tar` and `cp -a` as root work). A chown alone is answered
        // here with the attributes the change before it left, when they are known.
        if mode.is_none() && size.is_none() && atime.is_none() && mtime.is_none() {
            if let Some(a) = self.core.chown_now(ino, fh) {
                reply.attr(&self.core.ttl(), &a);
                return;
            }
        }
        self.run(
            move |c| match c.setattr(ino, fh, mode, size, atime, mtime) {
                Ok(a) => reply.attr(&c.ttl(), &a),
                Err(f) => reply.error(errno(c, "setattr", &c.shown(ino), &f)),
            },
        );
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.run(move |c| match c.readlink(ino) {
            Ok(t) => reply.data(&t),
            Err(f) => reply.error(errno(c, "readlink", &c.shown(ino), &f)),
        });
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name.as_bytes().to_vec();
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Device nodes, FIFOs and sockets have no place in a synced cloud folder.
            reply.error(libc::EPERM);
            return;
        }
        self.run(
            move |c| match c.create(parent, &name, mode & !umask, libc::O_EXCL) {
                Ok((a, fh)) => {
                    c.release(fh);
                    reply.entry(&c.ttl(), &a, 0)
                }
                Err(f) => reply.error(errno(c, "mknod", &c.shown_child(parent, &name), &f)),
            },
        );
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.as_bytes().to_vec();
        self.run(move |c| match c.mkdir(parent, &name, mode & !umask) {
            Ok(a) => reply.entry(&c.ttl(), &a, 0),
            Err(f) => reply.error(errno(c, "mkdir", &c.shown_child(parent, &name), &f)),
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        if self.core.unlink_now(parent, name.as_bytes()) {
            reply.ok();
            return;
        }
        let name = name.as_bytes().to_vec();
        self.run(move |c| match c.unlink(parent, &name) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(c, "unlink", &c.shown_child(parent, &name), &f)),
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(move |c| match c.rmdir(parent, &name) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(c, "rmdir", &c.shown_child(parent, &name), &f)),
        });
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        self.run(move |c| match c.symlink(parent, &name, &target) {
            Ok(a) => reply.entry(&c.ttl(), &a, 0),
            Err(f) => reply.error(errno(c, "symlink", &c.shown_child(parent, &name), &f)),
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes().to_vec();
        let newname = newname.as_bytes().to_vec();
        self.run(
            move |c| match c.rename(parent, &name, newparent, &newname, flags) {
                Ok(()) => reply.ok(),
                Err(f) => reply.error(errno(c, "rename", &c.shown_child(parent, &name), &f)),
            },
        );
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.as_bytes().to_vec();
        self.run(move |c| match c.link(ino, newparent, &newname) {
            Ok(a) => reply.entry(&c.ttl(), &a, 0),
            Err(f) => reply.error(errno(c, "link", &c.shown_child(newparent, &newname), &f)),
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        self.run(move |c| match c.open(ino, flags) {
            Ok((fh, keep)) => reply.opened(fh, if keep { FOPEN_KEEP_CACHE } else { 0 }),
            Err(f) => reply.error(errno(c, "open", &c.shown(ino), &f)),
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let job = move |c: &Core| match c.read(fh, offset.max(0) as u64, size) {
            Ok(d) => {
                reply.data(&d);
                // The plaintext was decrypted in the buffer its ciphertext arrived in.
                cloudstore_protocol::buffers::give_back(d);
            }
            Err(f) => reply.error(errno(c, "read", &c.shown(ino), &f)),
        };
        if self.inline_io(size as usize) {
            job(&self.core);
        } else {
            self.run(job);
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let offset = offset.max(0) as u64;
        if self.inline_io(data.len()) {
            match self.core.write(fh, offset, data) {
                Ok(n) => reply.written(n),
                Err(f) => reply.error(errno(&self.core, "write", &self.core.shown(ino), &f)),
            }
            return;
        }
        // Handed to a worker: copied into a kept buffer (a fresh MiB per write was most of
        // a streaming write's CPU, in page faults).
        let data = cloudstore_protocol::buffers::copy_of(data);
        self.run(move |c| {
            match c.write(fh, offset, &data) {
                Ok(n) => reply.written(n),
                Err(f) => reply.error(errno(c, "write", &c.shown(ino), &f)),
            }
            cloudstore_protocol::buffers::give_back(data);
        });
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        // A close does not wait for a write still on its way to storage (see behind.rs):
        // its outcome is reported by the file's next write or fsync, and logged at release.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |c| {
            c.release(fh);
            reply.ok();
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        self.run(move |c| match c.fsync(fh, datasync) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(c, "fsync", &c.shown(ino), &f)),
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.run(move |c| match c.opendir(ino) {
            Ok(fh) => reply.opened(fh, 0),
            Err(f) => reply.error(errno(c, "opendir", &c.shown(ino), &f)),
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(items) = self.core.dir_items(fh) else {
            reply.error(libc::EBADF);
            return;
        };
        for (i, it) in items.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(
                it.ino,
                (i + 1) as i64,
                kind(it.kind),
                OsStr::from_bytes(&it.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(items) = self.core.dir_items(fh) else {
            reply.error(libc::EBADF);
            return;
        };
        // An entry that must be looked up sends the rest of the answer to a worker.
        match fill_plus(
            &self.core,
            ino,
            &items,
            offset.max(0) as usize,
            &mut reply,
            false,
        ) {
            None => reply.ok(),
            Some(from) => self.run(move |c| {
                fill_plus(c, ino, &items, from, &mut reply, true);
                reply.ok();
            }),
        }
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |c| match c.fsyncdir(ino, datasync) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(c, "fsyncdir", &c.shown(ino), &f)),
        });
    }

    fn statfs(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyStatfs) {
        self.run(move |c| match c.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size.min(u32::MAX as u64) as u32,
                255,
                s.fragment_size.min(u32::MAX as u64) as u32,
            ),
            Err(f) => reply.error(errno(c, "statfs", &c.shown(ino), &f)),
        });
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_bytes().to_vec();
        self.run(
            move |c| match c.create(parent, &name, mode & !umask, flags) {
                Ok((a, fh)) => reply.created(&c.ttl(), &a, 0, fh, 0),
                Err(f) => reply.error(errno(c, "create", &c.shown_child(parent, &name), &f)),
            },
        );
    }
}
