//! One qrexec call, served: the protocol's requests mapped onto one volume of the store.
//!
//! A connection is one of three kinds, fixed by the qrexec service and argument it came in
//! on: `cloudstore.Volume+VOL` (a consumer's filesystem on VOL), `cloudstore.Sync+VOL` (the
//! transfer qube syncing VOL) and `cloudstore.Sync` with no argument (the transfer qube
//! discovering which volumes exist: `ReadDir("")` and `Ping` only). The protocol server has
//! already refused the operations the role may not use (`Op::allowed`).
//!
//! Per-connection state lives here: open handles (a handle keeps naming its file after a
//! rename or unlink, like a descriptor) and the change subscription.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cloudstore_protocol::{
    self as wire, features, Call, ErrorCode, FileRef, Handler, Push, RemoteError, Request,
    Response, Role, OPEN_HEAD_MAX, STAT_HEAD_MAX,
};
use cloudstore_store::{self as store, parse_path, FileKey, RelPath, Volume};
use tracing::{debug, warn};

use super::convert;
use super::tree;

/// What a connection may reach.
pub enum Scope {
    /// One volume, for a consumer (`Volume`) or the transfer qube (`Sync`).
    Volume(Arc<Volume>),
    /// The list of volumes, for the transfer qube's discovery call.
    Discovery(Vec<String>),
}

/// Handles one connection may hold open: a FUSE layer keeps one per open file, and a
/// desktop session rarely has more than a few thousand files open. The cap stops a peer from
/// exhausting the storage agent's descriptors.
pub const MAX_HANDLES: usize = 4096;

/// How often the subscription thread checks whether it should stop.
const PUSH_POLL: Duration = Duration::from_millis(200);

struct OpenFile {
    file: File,
    key: FileKey,
    writable: bool,
    /// Where the file is in the tree as far as this connection knows (renames made through
    /// this connection update it); `None` once unlinked through it. Writes through the
    /// store's path API happen only while this still names the file (checked by identity),
    /// so they are journaled; otherwise they go to the descriptor, outside the tree.
    path: Mutex<Option<RelPath>>,
    /// The disk's reads started ahead of this handle's reader while it reads front to back.
    ahead: store::ReadAhead,
    /// The disk's writes started behind this handle's writer while it writes front to back.
    write_out: store::WriteOut,
}

pub struct Connection {
    /// What the journal entries this connection causes are attributed to, so that its
    /// change subscription is not sent them (`store::acting_for`).
    id: u64,
    scope: Scope,
    peer: String,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_handle: AtomicU64,
    subscription: Mutex<Option<Arc<AtomicBool>>>,
}

fn path(op: &'static str, s: &str) -> Result<RelPath, RemoteError> {
    if s.is_empty() {
        return Ok(RelPath::root());
    }
    parse_path(op, s).map_err(|e| convert::error(&e))
}

fn st<T>(r: store::Result<T>) -> Result<T, RemoteError> {
    r.map_err(|e| convert::error(&e))
}

/// Whether the connection asked for `feature` (and was granted it).
fn granted(call: &Call<'_>, feature: u32) -> bool {
    call.session().features & feature != 0
}

/// The whole content of `file`, if it is `size` bytes long.
fn read_whole(file: &std::fs::File, size: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; size as usize + 1];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got as u64 != size {
        return Ok(None);
    }
    buf.truncate(got);
    Ok(Some(buf))
}

/// The attributes of the directory holding `p`, after a change to its entries.
fn bad_handle(h: u64) -> RemoteError {
    RemoteError::new(
        ErrorCode::BadHandle,
        format!("handle {h} is not open on this connection"),
    )
}

impl Connection {
    pub fn new(scope: Scope, peer: String) -> Connection {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            scope,
            peer,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            subscription: Mutex::new(None),
        }
    }

    fn volume(&self) -> Result<&Arc<Volume>, RemoteError> {
        match &self.scope {
            Scope::Volume(v) => Ok(v),
            Scope::Discovery(_) => Err(RemoteError::new(
                ErrorCode::PermissionDenied,
                "this is a discovery connection (cloudstore.Sync without argument): it only \
                 lists volumes; call cloudstore.Sync+VOLUME to sync one",
            )),
        }
    }

    fn handle(&self, h: u64) -> Result<Arc<OpenFile>, RemoteError> {
        self.handles
            .lock()
            .unwrap()
            .get(&h)
            .cloned()
            .ok_or_else(|| bad_handle(h))
    }

    fn register(&self, file: OpenFile) -> Result<u64, RemoteError> {
        let mut table = self.handles.lock().unwrap();
        if table.len() >= MAX_HANDLES {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("this connection already holds {MAX_HANDLES} open handles; close some"),
            ));
        }
        let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
        table.insert(h, Arc::new(file));
        Ok(h)
    }

    fn open(
        &self,
        vol: &Volume,
        p: &RelPath,
        write: bool,
    ) -> Result<(u64, wire::Attr), RemoteError> {
        let (file, attr, key) = st(vol.open_file(p, write))?;
        let h = self.hold(file, key, write, p)?;
        Ok((h, convert::attr(&attr)))
    }

    /// Registers an open file under a new handle.
    fn hold(
        &self,
        file: std::fs::File,
        key: store::FileKey,
        writable: bool,
        p: &RelPath,
    ) -> Result<u64, RemoteError> {
        self.register(OpenFile {
            file,
            key,
            writable,
            path: Mutex::new(Some(p.clone())),
            ahead: store::ReadAhead::default(),
            write_out: store::WriteOut::default(),
        })
    }

    /// The whole content of a small file just opened, if it is still `size` bytes long (a
    /// file changed meanwhile is left to the reads).
    fn whole(&self, of: &OpenFile, size: u64) -> Result<Option<Vec<u8>>, RemoteError> {
        read_whole(&of.file, size)
            .map_err(|e| convert::io_error("read", &Connection::label(of), &e))
    }

    /// `AttrWith` for the small regular file `p` (`features::STAT_HEAD`): its attributes and
    /// content taken from one descriptor, so they agree. `None` when it cannot be opened
    /// (its mode, or it changed kind since it was looked at) or changed size while read:
    /// the plain attributes do then.
    fn stat_with_content(&self, vol: &Volume, p: &RelPath) -> Option<Response> {
        let (file, attr, _) = vol.open_file(p, false).ok()?;
        let attr = convert::attr(&attr);
        if attr.size > STAT_HEAD_MAX {
            return None;
        }
        let content = read_whole(&file, attr.size).ok()??;
        Some(Response::AttrWith { attr, content })
    }

    fn fstat(&self, of: &OpenFile) -> Result<wire::Attr, RemoteError> {
        let a = store::stat_descriptor(&of.file)
            .map_err(|e| convert::io_error("stat", &Connection::label(of), &e))?;
        Ok(convert::attr(&a))
    }

    fn label(of: &OpenFile) -> String {
        of.path
            .lock()
            .unwrap()
            .as_ref()
            .map_or_else(|| "(unlinked)".to_owned(), |p| p.as_str().to_owned())
    }

    fn writable(&self, h: u64, of: &OpenFile) -> Result<(), RemoteError> {
        if of.writable {
            Ok(())
        } else {
            Err(RemoteError::new(
                ErrorCode::BadHandle,
                format!(
                    "handle {h} ({}) was opened read-only",
                    Connection::label(of)
                ),
            ))
        }
    }

    /// Runs `through_tree` while the handle's path still names its file, else `direct` on
    /// the descriptor.
    fn modify_handle<T>(
        &self,
        vol: &Volume,
        of: &OpenFile,
        through_tree: impl FnOnce(&RelPath, FileKey) -> store::Result<Option<T>>,
        direct: impl FnOnce(&File) -> io::Result<T>,
        op: &str,
    ) -> Result<T, RemoteError> {
        let known = of.path.lock().unwrap().clone();
        if let Some(p) = known {
            if let Some(v) = st(through_tree(&p, of.key))? {
                return Ok(v);
            }
        }
        let _ = vol;
        direct(&of.file).map_err(|e| convert::io_error(op, &Connection::label(of), &e))
    }

    /// Keeps handle paths in step with a rename made through this connection.
    fn renamed(&self, from: &RelPath, to: &RelPath, exchange: bool) {
        let table = self.handles.lock().unwrap();
        for of in table.values() {
            let mut p = of.path.lock().unwrap();
            let Some(cur) = p.as_ref() else { continue };
            let moved = |cur: &RelPath, a: &RelPath, b: &RelPath| -> Option<RelPath> {
                if cur == a {
                    return Some(b.clone());
                }
                if cur.starts_with(a) && !a.is_root() {
                    let rest = &cur.as_str()[a.as_str().len() + 1..];
                    return RelPath::new(&format!("{}/{rest}", b.as_str())).ok();
                }
                None
            };
            if let Some(n) = moved(cur, from, to) {
                *p = Some(n);
            } else if exchange {
                if let Some(n) = moved(cur, to, from) {
                    *p = Some(n);
                }
            }
        }
    }

    fn unlinked(&self, gone: &RelPath) {
        let table = self.handles.lock().unwrap();
        for of in table.values() {
            let mut p = of.path.lock().unwrap();
            if p.as_ref() == Some(gone) {
                *p = None;
            }
        }
    }

    fn read(
        &self,
        vol: &Volume,
        file: FileRef,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, RemoteError> {
        let len = len as usize;
        match file {
            FileRef::Path(s) => st(vol.read(&path("read", &s)?, offset, len)),
            FileRef::Handle(h) => {
                let of = self.handle(h)?;
                of.ahead
                    .read(&of.file, offset, len)
                    .map_err(|e| convert::io_error("read", &Connection::label(&of), &e))
            }
        }
    }

    fn subscribe(&self, vol: &Arc<Volume>, call: &Call<'_>) -> Result<Response, RemoteError> {
        let mut slot = self.subscription.lock().unwrap();
        if let Some(stop) = slot.take() {
            stop.store(true, Ordering::Release);
        }
        // Subscribe before reading the head: an entry written in between is pushed, and the
        // client ignores entries below the head it was given.
        let sub = vol.subscribe_for(self.id);
        let head = vol.journal_head();
        let stop = Arc::new(AtomicBool::new(false));
        let pusher = call.pusher();
        let stop2 = stop.clone();
        let peer = self.peer.clone();
        thread::Builder::new()
            .name("storage-push".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) && !pusher.is_closed() {
                    let push = match sub.recv_timeout(PUSH_POLL) {
                        None => continue,
                        Some(store::Notice::Change(e)) => Push::Change(convert::change(&e)),
                        Some(store::Notice::Lagged) => Push::Lagged,
                    };
                    if pusher.send(&push).is_err() {
                        break;
                    }
                }
                debug!(peer = %peer, "change subscription ended");
            })
            .map_err(|e| {
                RemoteError::new(
                    ErrorCode::Busy,
                    format!("cannot start the change subscription: {e}"),
                )
            })?;
        *slot = Some(stop);
        Ok(Response::Subscribed { head })
    }

    fn unsubscribe(&self) {
        if let Some(stop) = self.subscription.lock().unwrap().take() {
            stop.store(true, Ordering::Release);
        }
    }

    fn get(
        &self,
        vol: &Volume,
        p: &RelPath,
        version: Option<u64>,
        call: &mut Call<'_>,
    ) -> Result<Response, RemoteError> {
        let mut reader = match version {
            None => st(vol.get(p))?,
            Some(id) => st(vol.open_version(p, store::VersionId(id)))?,
        };
        let attr = convert::attr(reader.attr());
        let out = call.download().ok_or_else(|| {
            RemoteError::new(ErrorCode::Internal, "Get without a download stream")
        })?;
        let sent = copy(&mut reader, out).map_err(|e| convert::io_error("get", p.as_str(), &e))?;
        if sent != attr.size
            || (version.is_none()
                && reader
                    .changed()
                    .map_err(|e| convert::io_error("get", p.as_str(), &e))?)
        {
            return Err(RemoteError::new(
                ErrorCode::Conflict,
                format!(
                    "get {:?}: the file was modified in place while it was read ({} of {} bytes sent); read it again",
                    p.as_str(),
                    sent,
                    attr.size
                ),
            ));
        }
        Ok(Response::Got { attr })
    }
}

/// io::copy with a buffer the size of a protocol chunk, counting bytes.
fn copy(r: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; wire::CHUNK_SIZE];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
    w.flush()?;
    Ok(total)
}

fn no_upload() -> RemoteError {
    RemoteError::new(
        ErrorCode::Internal,
        "upload request without an upload stream",
    )
}

impl Handler for Connection {
    /// Lookups, listings and reads run on the connection's reading thread: each is a few
    /// syscalls, cheaper than waking a worker for it, and none takes a lock that a
    /// modification (which may copy a whole file into the version area) or a stream holds.
    fn inline(&self, req: &Request) -> bool {
        match req {
            Request::Ping
            | Request::Stat { .. }
            | Request::ReadDir { .. }
            | Request::ReadLink { .. }
            | Request::Read { .. }
            | Request::StatFs => true,
            Request::Open { flags, .. } => !flags.write && !flags.truncate,
            _ => false,
        }
    }

    /// Changes through one handle run in the order they were sent: the consumer sends an
    /// attribute change after a write without waiting for the write's answer (behind.rs),
    /// and a write's two pieces, or a close after them, must not pass each other either.
    /// Reads and stats by handle are not laned: the consumer sends them only after every
    /// change of the file was answered.
    fn lane(&self, req: &Request) -> Option<u64> {
        match req {
            Request::Write {
                file: FileRef::Handle(h),
                ..
            }
            | Request::SetAttr {
                file: FileRef::Handle(h),
                ..
            }
            | Request::Truncate {
                file: FileRef::Handle(h),
                ..
            }
            | Request::Fsync {
                file: FileRef::Handle(h),
                ..
            }
            | Request::Close { handle: h } => Some(*h),
            _ => None,
        }
    }

    fn handle(&self, req: Request, call: &mut Call<'_>) -> Result<Response, RemoteError> {
        store::acting_for(self.id, || self.serve(req, call))
    }

    fn closed(&self) {
        self.end();
    }
}

impl Connection {
    fn serve(&self, req: Request, call: &mut Call<'_>) -> Result<Response, RemoteError> {
        if let Scope::Discovery(names) = &self.scope {
            return match req {
                Request::Ping => Ok(Response::Ok),
                Request::ReadDir { path, cookie, .. } if path.is_empty() => {
                    let entries = names
                        .iter()
                        .skip(cookie as usize)
                        .map(|n| wire::DirEntry {
                            name: n.clone(),
                            kind: wire::FileType::Dir,
                            ino: 0,
                            attr: None,
                        })
                        .collect();
                    Ok(Response::DirPage(wire::DirPage {
                        entries,
                        next: None,
                    }))
                }
                _ => Err(self.volume().err().expect("discovery scope")),
            };
        }
        let vol = self.volume()?;
        match req {
            Request::Ping => Ok(Response::Ok),
            Request::Stat { file } => match file {
                FileRef::Path(s) => {
                    let p = path("stat", &s)?;
                    let attr = convert::attr(&st(vol.stat(&p))?);
                    let small = attr.kind == wire::FileType::File && attr.size <= STAT_HEAD_MAX;
                    // For a consumer's lookup only: the sync role stats to compare.
                    if small
                        && call.session().role == Role::Volume
                        && granted(call, features::STAT_HEAD)
                    {
                        if let Some(with) = self.stat_with_content(vol, &p) {
                            return Ok(with);
                        }
                    }
                    Ok(Response::Attr(attr))
                }
                FileRef::Handle(h) => Ok(Response::Attr(self.fstat(&*self.handle(h)?)?)),
            },
            Request::ReadDir {
                path: s,
                cookie,
                max,
                with_attrs,
            } => {
                let p = path("readdir", &s)?;
                let page = st(vol.readdir(&p, cookie, max as usize))?;
                let entries = page
                    .entries
                    .into_iter()
                    .map(|e| {
                        let attr = if with_attrs {
                            // An entry removed since the listing simply has no attributes.
                            p.join(&e.name)
                                .ok()
                                .and_then(|c| vol.stat(&c).ok())
                                .map(|a| convert::attr(&a))
                        } else {
                            None
                        };
                        wire::DirEntry {
                            name: e.name,
                            kind: convert::kind(e.kind),
                            ino: e.ino,
                            attr,
                        }
                    })
                    .collect();
                Ok(Response::DirPage(wire::DirPage {
                    entries,
                    next: page.next,
                }))
            }
            Request::Open { path: s, flags } => {
                let p = path("open", &s)?;
                let (h, mut attr) = self.open(vol, &p, flags.write || flags.truncate)?;
                if flags.truncate {
                    let of = self.handle(h)?;
                    self.modify_handle(
                        vol,
                        &of,
                        |p, k| vol.truncate_if(p, Some(k), 0),
                        |f| f.set_len(0),
                        "truncate",
                    )?;
                    attr.size = 0;
                }
                let small = attr.kind == wire::FileType::File && attr.size <= OPEN_HEAD_MAX;
                if !flags.write && small && granted(call, features::OPEN_HEAD) {
                    if let Some(content) = self.whole(&*self.handle(h)?, attr.size)? {
                        return Ok(Response::OpenedWith {
                            handle: h,
                            attr,
                            content,
                        });
                    }
                }
                Ok(Response::Opened { handle: h, attr })
            }
            Request::Close { handle } => {
                let of = self
                    .handles
                    .lock()
                    .unwrap()
                    .remove(&handle)
                    .ok_or_else(|| bad_handle(handle))?;
                if of.writable {
                    st(vol.release_file(of.key))?;
                }
                Ok(Response::Ok)
            }
            Request::Read { file, offset, len } => {
                Ok(Response::Data(self.read(vol, file, offset, len)?))
            }
            Request::Write { file, offset, data } => {
                let with_attr = granted(call, features::ATTRS_AFTER);
                let (n, attr) = match file {
                    FileRef::Path(s) => {
                        let p = path("write", &s)?;
                        let n = st(vol.write(&p, offset, &data))?;
                        let attr = with_attr.then(|| st(vol.stat(&p))).transpose()?;
                        (n, attr.map(|a| convert::attr(&a)))
                    }
                    FileRef::Handle(h) => {
                        let of = self.handle(h)?;
                        self.writable(h, &of)?;
                        let n = self.modify_handle(
                            vol,
                            &of,
                            |p, k| vol.write_if(p, Some(k), offset, &data),
                            |f| f.write_all_at(&data, offset).map(|_| data.len()),
                            "write",
                        )?;
                        of.write_out.after_write(&of.file, offset, n);
                        // The descriptor names the file written whichever way the write
                        // went (through the tree only while the path is still this file).
                        (n, with_attr.then(|| self.fstat(&of)).transpose()?)
                    }
                };
                Ok(match attr {
                    Some(attr) => Response::WrittenAttr {
                        written: n as u32,
                        attr,
                    },
                    None => Response::Written(n as u32),
                })
            }
            Request::Create {
                path: s,
                mode,
                exclusive,
            } => {
                let p = path("create", &s)?;
                let created = st(vol.create_open(&p, mode, exclusive))?;
                let (attr, parent) = (convert::attr(&created.attr), convert::attr(&created.parent));
                let handle = self.hold(created.file, created.key, true, &p)?;
                match granted(call, features::ATTRS_AFTER) {
                    true => Ok(Response::Created {
                        handle,
                        attr,
                        parent,
                    }),
                    false => Ok(Response::Opened { handle, attr }),
                }
            }
            Request::Mkdir { path: s, mode } => Ok(Response::Attr(convert::attr(&st(
                vol.mkdir(&path("mkdir", &s)?, mode)
            )?))),
            Request::MkdirWith {
                path: s,
                mode,
                file,
                content,
                file_mode,
            } => {
                let made =
                    st(vol.mkdir_with_file(&path("mkdir", &s)?, mode, &file, &content, file_mode))?;
                Ok(Response::Made {
                    attr: convert::attr(&made.attr),
                    parent: convert::attr(&made.parent),
                })
            }
            Request::Symlink { path: s, target } => Ok(Response::Attr(convert::attr(&st(
                vol.symlink(&path("symlink", &s)?, &target)
            )?))),
            Request::ReadLink { path: s } => Ok(Response::LinkTarget(st(
                vol.readlink(&path("readlink", &s)?)
            )?)),
            Request::Link { existing, new } => Ok(Response::Attr(convert::attr(&st(
                vol.link(&path("link", &existing)?, &path("link", &new)?)
            )?))),
            Request::Unlink { path: s } => {
                let p = path("unlink", &s)?;
                let dir_after = st(vol.unlink(&p))?;
                self.unlinked(&p);
                match granted(call, features::ATTRS_AFTER) {
                    true => Ok(Response::Unlinked {
                        parent: convert::attr(&dir_after),
                    }),
                    false => Ok(Response::Ok),
                }
            }
            Request::Rmdir { path: s } => {
                st(vol.rmdir(&path("rmdir", &s)?))?;
                Ok(Response::Ok)
            }
            Request::Rename { from, to, mode } => {
                let (from, to) = (path("rename", &from)?, path("rename", &to)?);
                st(vol.rename(&from, &to, convert::rename_mode_in(mode)))?;
                if mode != wire::RenameMode::Exchange {
                    self.unlinked(&to);
                }
                self.renamed(&from, &to, mode == wire::RenameMode::Exchange);
                Ok(Response::Ok)
            }
            Request::Truncate { file, size } => {
                match file {
                    FileRef::Path(s) => st(vol.truncate(&path("truncate", &s)?, size))?,
                    FileRef::Handle(h) => {
                        let of = self.handle(h)?;
                        self.writable(h, &of)?;
                        self.modify_handle(
                            vol,
                            &of,
                            |p, k| vol.truncate_if(p, Some(k), size),
                            |f| f.set_len(size),
                            "truncate",
                        )?
                    }
                }
                Ok(Response::Ok)
            }
            Request::SetAttr { file, attr } => {
                let a = convert::setattr_in(&attr);
                match file {
                    FileRef::Path(s) => Ok(Response::Attr(convert::attr(&st(
                        vol.setattr(&path("setattr", &s)?, &a)
                    )?))),
                    FileRef::Handle(h) => {
                        let of = self.handle(h)?;
                        if a.size.is_some() {
                            self.writable(h, &of)?;
                        }
                        let known = of.path.lock().unwrap().clone();
                        let same = known.as_ref().and_then(|p| {
                            vol.stat(p).ok().filter(|at| at.ino == of.key.1).map(|_| p)
                        });
                        match same {
                            Some(p) => Ok(Response::Attr(convert::attr(&st(vol.setattr(p, &a))?))),
                            None => set_attr_on_descriptor(&of, &attr),
                        }
                    }
                }
            }
            Request::Fsync { file, datasync } => {
                match file {
                    FileRef::Path(s) => st(vol.fsync(&path("fsync", &s)?, datasync))?,
                    FileRef::Handle(h) => {
                        let of = self.handle(h)?;
                        let r = if datasync {
                            of.file.sync_data()
                        } else {
                            of.file.sync_all()
                        };
                        r.map_err(|e| convert::io_error("fsync", &Connection::label(&of), &e))?;
                    }
                }
                Ok(Response::Ok)
            }
            Request::StatFs => Ok(Response::StatFs(convert::statfs(&st(vol.statfs())?))),
            Request::Subscribe => self.subscribe(vol, call),
            Request::Unsubscribe => {
                self.unsubscribe();
                Ok(Response::Ok)
            }
            Request::ListVersions { path: s } => Ok(Response::Versions(convert::version_list(
                vol.list_versions(&path("list versions of", &s)?),
            ))),
            Request::Restore { path: s, id } => Ok(Response::Attr(convert::attr(&st(
                vol.restore(&path("restore", &s)?, store::VersionId(id))
            )?))),
            Request::ListConflicts => Ok(Response::Versions(convert::version_list(
                vol.list_conflicts(),
            ))),
            Request::AdoptConflict { id, dest } => Ok(Response::Attr(convert::attr(&st(
                vol.adopt_conflict(store::VersionId(id), &path("adopt conflict", &dest)?)
            )?))),
            Request::ChangesSince { since, limit } => Ok(Response::Changes(convert::changes(&st(
                vol.changes_since(since, limit as usize),
            )?))),
            Request::JournalHead => {
                let s = vol.stats();
                Ok(Response::Head {
                    head: s.journal_head,
                    floor: s.journal_floor,
                })
            }
            Request::ListTree { after, limit } => {
                let after = match after {
                    Some(a) => Some(path("list tree", &a)?),
                    None => None,
                };
                Ok(Response::TreePage(st(tree::page(
                    vol,
                    after.as_ref(),
                    (limit as usize).min(wire::MAX_TREE_PAGE),
                ))?))
            }
            Request::Get { path: s, version } => self.get(vol, &path("get", &s)?, version, call),
            Request::Put {
                path: s,
                expect,
                mode,
                mtime,
            } => {
                let p = path("put", &s)?;
                let opts = store::PutOptions {
                    expect: convert::expect_in(expect),
                    mode,
                    mtime: mtime.map(convert::time_in),
                };
                let up = call.upload().ok_or_else(no_upload)?;
                Ok(Response::Attr(convert::attr(&st(vol.put(&p, up, opts))?)))
            }
            Request::Delete { path: s, expect } => {
                let p = path("delete", &s)?;
                st(vol.delete(&p, convert::expect_in(expect)))?;
                self.unlinked(&p);
                Ok(Response::Ok)
            }
            Request::ParkConflict { path: s } => {
                let p = path("park conflict", &s)?;
                let up = call.upload().ok_or_else(no_upload)?;
                Ok(Response::Version(convert::version(&st(
                    vol.park_conflict(&p, up)
                )?)))
            }
            Request::Ack { seq } => {
                st(vol.ack_sync(seq))?;
                Ok(Response::Ok)
            }
        }
    }

    /// The connection is over: its subscription ends and its open handles are released.
    fn end(&self) {
        self.unsubscribe();
        let open: Vec<Arc<OpenFile>> = self
            .handles
            .lock()
            .unwrap()
            .drain()
            .map(|(_, f)| f)
            .collect();
        if let Scope::Volume(vol) = &self.scope {
            for of in open.iter().filter(|f| f.writable) {
                if let Err(e) = vol.release_file(of.key) {
                    warn!(peer = %self.peer, path = %Connection::label(of), error = %e, "ending the modification session of a handle left open failed");
                }
            }
        }
    }
}

/// setattr on a handle whose file has left the tree: applied to the descriptor directly.
fn set_attr_on_descriptor(of: &OpenFile, a: &wire::SetAttr) -> Result<Response, RemoteError> {
    let label = Connection::label(of);
    let fail = |op: &str, e: io::Error| convert::io_error(op, &label, &e);
    if let Some(size) = a.size {
        of.file.set_len(size).map_err(|e| fail("truncate", e))?;
    }
    if let Some(mode) = a.mode {
        store::set_descriptor_mode(of.file.as_fd(), mode).map_err(|e| fail("chmod", e))?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        let ts = |t: Option<wire::TimeSet>| match t {
            None => nix::sys::time::TimeSpec::new(0, libc::UTIME_OMIT),
            Some(wire::TimeSet::Now) => nix::sys::time::TimeSpec::new(0, libc::UTIME_NOW),
            Some(wire::TimeSet::At(t)) => nix::sys::time::TimeSpec::new(t.secs, t.nanos as i64),
        };
        nix::sys::stat::futimens(of.file.as_raw_fd(), &ts(a.atime), &ts(a.mtime))
            .map_err(|e| fail("set times of", e.into()))?;
    }
    let a = store::stat_descriptor(&of.file).map_err(|e| fail("stat", e))?;
    Ok(Response::Attr(convert::attr(&a)))
}
