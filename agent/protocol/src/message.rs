//! Requests, responses and push notifications: what travels inside frames.
//!
//! A request payload is `op: u16` followed by the operation's fields; a response payload is
//! `kind: u16` followed by its fields; a push payload is `kind: u8` and its fields. Layouts
//! are in docs/protocol.md ("Operations").

use crate::error::ErrorCode;
use crate::handshake::Role;
use crate::types::*;
use crate::wire::{Dec, DecodeError, Enc};

/// Most bytes one `Read` returns or one `Write` carries: 1 MiB, the largest FUSE read or
/// write request (256 pages of 4 KiB, the kernel's FUSE_MAX_MAX_PAGES), so one kernel request
/// is one protocol request.
pub const MAX_IO: usize = 1 << 20;

/// The largest file whose content comes with a read-only `Open` (`features::OPEN_HEAD`):
/// 128 KiB of plaintext in gocryptfs's 4 KiB blocks (header, and 16 + 16 bytes per block),
/// the kernel's default readahead, so a file this small is usually read whole at once.
pub const OPEN_HEAD_MAX: u64 = 18 + 32 * (4096 + 32);

/// The largest file whose content comes with a `Stat` by path (`features::STAT_HEAD`):
/// 16 KiB of plaintext. Smaller than [`OPEN_HEAD_MAX`]: every lookup pays for it, whether
/// or not the file is then read.
pub const STAT_HEAD_MAX: u64 = 18 + 4 * (4096 + 32);

/// The most bytes the file `MkdirWith` puts in the new directory may hold (a gocryptfs
/// directory IV is 16).
pub const MAX_MKDIR_FILE: usize = 4096;

/// Whether an operation carries a data stream besides its request and response frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    /// The client sends `Chunk` frames after the request, the last flagged final.
    Upload,
    /// The server sends `Chunk` frames before its response.
    Download,
}

macro_rules! ops {
    ($( $(#[$doc:meta])* $name:ident = $code:expr, $body:ident, volume: $v:expr, sync: $s:expr; )*) => {
        /// An operation code: the first two bytes of a request payload.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Op { $( $(#[$doc])* $name, )* }

        impl Op {
            /// Every operation, in code order.
            pub const ALL: &'static [Op] = &[$(Op::$name,)*];

            /// The operation's number on the wire.
            pub fn code(self) -> u16 { match self { $(Op::$name => $code,)* } }

            pub fn from_code(c: u16) -> Option<Op> {
                match c { $($code => Some(Op::$name),)* _ => None }
            }

            /// Whether the operation streams data (see [`Body`]).
            pub fn body(self) -> Body { match self { $(Op::$name => Body::$body,)* } }

            /// Whether a connection of `role` may use the operation; the server refuses the
            /// others with `PermissionDenied` before its handler sees them.
            pub fn allowed(self, role: Role) -> bool {
                match role {
                    Role::Volume => match self { $(Op::$name => $v,)* },
                    Role::Sync => match self { $(Op::$name => $s,)* },
                }
            }
        }
    };
}

ops! {
    /// Liveness check; answered with `Ok`.
    Ping = 0x0001, None, volume: true, sync: true;
    Stat = 0x0101, None, volume: true, sync: true;
    ReadDir = 0x0102, None, volume: true, sync: true;
    Open = 0x0103, None, volume: true, sync: false;
    Close = 0x0104, None, volume: true, sync: false;
    Read = 0x0105, None, volume: true, sync: false;
    Write = 0x0106, None, volume: true, sync: false;
    Create = 0x0107, None, volume: true, sync: false;
    Mkdir = 0x0108, None, volume: true, sync: true;
    Symlink = 0x0109, None, volume: true, sync: true;
    ReadLink = 0x010A, None, volume: true, sync: true;
    Link = 0x010B, None, volume: true, sync: false;
    Unlink = 0x010C, None, volume: true, sync: false;
    Rmdir = 0x010D, None, volume: true, sync: true;
    Rename = 0x010E, None, volume: true, sync: false;
    Truncate = 0x010F, None, volume: true, sync: false;
    SetAttr = 0x0110, None, volume: true, sync: false;
    Fsync = 0x0111, None, volume: true, sync: false;
    StatFs = 0x0112, None, volume: true, sync: true;
    Subscribe = 0x0113, None, volume: true, sync: true;
    Unsubscribe = 0x0114, None, volume: true, sync: true;
    /// `Mkdir` with a first file inside (`features::MKDIR_WITH`).
    MkdirWith = 0x0115, None, volume: true, sync: false;
    ListVersions = 0x0201, None, volume: true, sync: true;
    Restore = 0x0202, None, volume: true, sync: false;
    ListConflicts = 0x0203, None, volume: true, sync: true;
    AdoptConflict = 0x0204, None, volume: true, sync: false;
    ChangesSince = 0x0301, None, volume: true, sync: true;
    JournalHead = 0x0302, None, volume: true, sync: true;
    ListTree = 0x0303, None, volume: true, sync: true;
    Get = 0x0304, Download, volume: true, sync: true;
    Put = 0x0305, Upload, volume: true, sync: true;
    Delete = 0x0306, None, volume: true, sync: true;
    ParkConflict = 0x0307, Upload, volume: false, sync: true;
    Ack = 0x0308, None, volume: false, sync: true;
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A request from the client. Paths are ciphertext paths relative to the volume root (`""`
/// is the root); see [`check_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    /// lstat of a path, or fstat of a handle → `Attr`.
    Stat {
        file: FileRef,
    },
    /// A page of a directory listing from `cookie` (0 = start), at most `max` entries
    /// (≤ [`MAX_READDIR_PAGE`]), with each entry's attributes if `with_attrs` → `DirPage`.
    ReadDir {
        path: String,
        cookie: u64,
        max: u32,
        with_attrs: bool,
    },
    /// Opens a regular file → `Opened`. The handle is valid on this connection until `Close`.
    Open {
        path: String,
        flags: OpenFlags,
    },
    Close {
        handle: u64,
    },
    /// Up to `len` (≤ [`MAX_IO`]) bytes at `offset`; fewer only at end of file → `Data`.
    Read {
        file: FileRef,
        offset: u64,
        len: u32,
    },
    /// Writes all of `data` (≤ [`MAX_IO`]) at `offset` → `Written`, or `WrittenAttr` on a
    /// connection granted `features::ATTRS_AFTER`.
    Write {
        file: FileRef,
        offset: u64,
        data: Vec<u8>,
    },
    /// Creates and opens a regular file; `exclusive` fails with `Exists` if the name is
    /// taken → `Opened`.
    Create {
        path: String,
        mode: u32,
        exclusive: bool,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    /// A directory with the file `file` inside, holding `content` (at most
    /// [`MAX_MKDIR_FILE`] bytes) with mode `file_mode`, made in one step and the file flushed
    /// (a gocryptfs directory and its IV) → `Made`.
    MkdirWith {
        path: String,
        mode: u32,
        file: String,
        content: Vec<u8>,
        file_mode: u32,
    },
    /// A symlink at `path` holding `target` (stored, never followed) → `Attr`.
    Symlink {
        path: String,
        target: Vec<u8>,
    },
    ReadLink {
        path: String,
    },
    /// A new name `new` for the existing file `existing` → `Attr`.
    Link {
        existing: String,
        new: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        mode: RenameMode,
    },
    Truncate {
        file: FileRef,
        size: u64,
    },
    SetAttr {
        file: FileRef,
        attr: SetAttr,
    },
    /// Returns once the file's data (and with `datasync` false, its metadata) is on stable
    /// storage.
    Fsync {
        file: FileRef,
        datasync: bool,
    },
    StatFs,
    /// Starts `Push` frames for this volume's new journal entries → `Subscribed`.
    Subscribe,
    Unsubscribe,
    ListVersions {
        path: String,
    },
    /// Puts version `id` of `path` back at `path` (the current content is kept as a version)
    /// → `Attr`.
    Restore {
        path: String,
        id: u64,
    },
    ListConflicts,
    /// Moves parked conflict `id` into the tree at `dest` (which must not exist) → `Attr`.
    AdoptConflict {
        id: u64,
        dest: String,
    },
    /// Journal entries with `seq >= since`, at most `limit` (≤ [`MAX_CHANGES_PAGE`]) →
    /// `Changes`.
    ChangesSince {
        since: u64,
        limit: u32,
    },
    JournalHead,
    /// The next page of the whole tree in pre-order after path `after` (`None`: from the
    /// start), at most `limit` (≤ [`MAX_TREE_PAGE`]) entries → `TreePage`.
    ListTree {
        after: Option<String>,
        limit: u32,
    },
    /// Streams a whole file (or its kept version `version`) as chunks, then → `Got`.
    Get {
        path: String,
        version: Option<u64>,
    },
    /// Replaces `path` atomically with the uploaded chunks once the final chunk arrived and
    /// the content is on stable storage; nothing is visible before → `Attr`.
    Put {
        path: String,
        expect: Expect,
        mode: Option<u32>,
        mtime: Option<Timespec>,
    },
    /// Removes a file or symlink (kept as a version) if `expect` holds.
    Delete {
        path: String,
        expect: Expect,
    },
    /// Keeps the uploaded chunks as a conflict copy of `path`, outside the tree → `Version`.
    ParkConflict {
        path: String,
    },
    /// The sync peer has durably processed every entry below `seq`.
    Ack {
        seq: u64,
    },
}

impl Request {
    pub fn op(&self) -> Op {
        match self {
            Request::Ping => Op::Ping,
            Request::Stat { .. } => Op::Stat,
            Request::ReadDir { .. } => Op::ReadDir,
            Request::Open { .. } => Op::Open,
            Request::Close { .. } => Op::Close,
            Request::Read { .. } => Op::Read,
            Request::Write { .. } => Op::Write,
            Request::Create { .. } => Op::Create,
            Request::Mkdir { .. } => Op::Mkdir,
            Request::MkdirWith { .. } => Op::MkdirWith,
            Request::Symlink { .. } => Op::Symlink,
            Request::ReadLink { .. } => Op::ReadLink,
            Request::Link { .. } => Op::Link,
            Request::Unlink { .. } => Op::Unlink,
            Request::Rmdir { .. } => Op::Rmdir,
            Request::Rename { .. } => Op::Rename,
            Request::Truncate { .. } => Op::Truncate,
            Request::SetAttr { .. } => Op::SetAttr,
            Request::Fsync { .. } => Op::Fsync,
            Request::StatFs => Op::StatFs,
            Request::Subscribe => Op::Subscribe,
            Request::Unsubscribe => Op::Unsubscribe,
            Request::ListVersions { .. } => Op::ListVersions,
            Request::Restore { .. } => Op::Restore,
            Request::ListConflicts => Op::ListConflicts,
            Request::AdoptConflict { .. } => Op::AdoptConflict,
            Request::ChangesSince { .. } => Op::ChangesSince,
            Request::JournalHead => Op::JournalHead,
            Request::ListTree { .. } => Op::ListTree,
            Request::Get { .. } => Op::Get,
            Request::Put { .. } => Op::Put,
            Request::Delete { .. } => Op::Delete,
            Request::ParkConflict { .. } => Op::ParkConflict,
            Request::Ack { .. } => Op::Ack,
        }
    }

    /// The request's payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = match self {
            // A MiB of data: into a kept buffer (see buffers.rs), not one grown by copying.
            Request::Write { data, .. } => Enc {
                buf: crate::buffers::take(data.len() + 4096 + 64),
            },
            _ => Enc::new(),
        };
        e.u16(self.op().code());
        match self {
            Request::Ping
            | Request::StatFs
            | Request::Subscribe
            | Request::Unsubscribe
            | Request::ListConflicts
            | Request::JournalHead => {}
            Request::Stat { file } => file.enc(&mut e),
            Request::ReadDir {
                path,
                cookie,
                max,
                with_attrs,
            } => {
                enc_path(&mut e, path);
                e.u64(*cookie);
                e.u32(*max);
                e.bool(*with_attrs);
            }
            Request::Open { path, flags } => {
                enc_path(&mut e, path);
                flags.enc(&mut e);
            }
            Request::Close { handle } => e.u64(*handle),
            Request::Read { file, offset, len } => {
                file.enc(&mut e);
                e.u64(*offset);
                e.u32(*len);
            }
            Request::Write { file, offset, data } => {
                file.enc(&mut e);
                e.u64(*offset);
                e.bytes(data);
            }
            Request::Create {
                path,
                mode,
                exclusive,
            } => {
                enc_path(&mut e, path);
                e.u32(*mode);
                e.bool(*exclusive);
            }
            Request::Mkdir { path, mode } => {
                enc_path(&mut e, path);
                e.u32(*mode);
            }
            Request::MkdirWith {
                path,
                mode,
                file,
                content,
                file_mode,
            } => {
                enc_path(&mut e, path);
                e.u32(*mode);
                enc_path(&mut e, file);
                e.bytes(content);
                e.u32(*file_mode);
            }
            Request::Symlink { path, target } => {
                enc_path(&mut e, path);
                e.bytes(target);
            }
            Request::ReadLink { path }
            | Request::Unlink { path }
            | Request::Rmdir { path }
            | Request::ListVersions { path }
            | Request::ParkConflict { path } => enc_path(&mut e, path),
            Request::Link { existing, new } => {
                enc_path(&mut e, existing);
                enc_path(&mut e, new);
            }
            Request::Rename { from, to, mode } => {
                enc_path(&mut e, from);
                enc_path(&mut e, to);
                mode.enc(&mut e);
            }
            Request::Truncate { file, size } => {
                file.enc(&mut e);
                e.u64(*size);
            }
            Request::SetAttr { file, attr } => {
                file.enc(&mut e);
                attr.enc(&mut e);
            }
            Request::Fsync { file, datasync } => {
                file.enc(&mut e);
                e.bool(*datasync);
            }
            Request::Restore { path, id } => {
                enc_path(&mut e, path);
                e.u64(*id);
            }
            Request::AdoptConflict { id, dest } => {
                e.u64(*id);
                enc_path(&mut e, dest);
            }
            Request::ChangesSince { since, limit } => {
                e.u64(*since);
                e.u32(*limit);
            }
            Request::ListTree { after, limit } => {
                e.opt(after, |e, p| enc_path(e, p));
                e.u32(*limit);
            }
            Request::Get { path, version } => {
                enc_path(&mut e, path);
                e.opt(version, |e, v| e.u64(*v));
            }
            Request::Put {
                path,
                expect,
                mode,
                mtime,
            } => {
                enc_path(&mut e, path);
                expect.enc(&mut e);
                e.opt(mode, |e, m| e.u32(*m));
                e.opt(mtime, |e, t| t.enc(e));
            }
            Request::Delete { path, expect } => {
                enc_path(&mut e, path);
                expect.enc(&mut e);
            }
            Request::Ack { seq } => e.u64(*seq),
        }
        e.buf
    }

    /// Decodes a request payload. The error's code says what the server answers:
    /// `UnknownOp`, `InvalidPath`, `NameTooLong`, `TooLarge`, `Invalid` or `Malformed`.
    pub fn decode(payload: &[u8]) -> Result<Request, DecodeError> {
        let mut d = Dec::new(payload);
        let code = d.u16("op")?;
        let op = Op::from_code(code).ok_or_else(|| {
            DecodeError::new("op", format!("unknown operation {code:#06x}"))
                .with_code(ErrorCode::UnknownOp)
        })?;
        let d = &mut d;
        let req = match op {
            Op::Ping => Request::Ping,
            Op::StatFs => Request::StatFs,
            Op::Subscribe => Request::Subscribe,
            Op::Unsubscribe => Request::Unsubscribe,
            Op::ListConflicts => Request::ListConflicts,
            Op::JournalHead => Request::JournalHead,
            Op::Stat => Request::Stat {
                file: FileRef::dec(d)?,
            },
            Op::ReadDir => {
                let path = dec_path(d, "path")?;
                let cookie = d.u64("cookie")?;
                let max = d.u32("max")?;
                if max as usize > MAX_READDIR_PAGE {
                    return Err(too_large("max", max, MAX_READDIR_PAGE));
                }
                Request::ReadDir {
                    path,
                    cookie,
                    max,
                    with_attrs: d.bool("with_attrs")?,
                }
            }
            Op::Open => Request::Open {
                path: dec_path(d, "path")?,
                flags: OpenFlags::dec(d)?,
            },
            Op::Close => Request::Close {
                handle: d.u64("handle")?,
            },
            Op::Read => {
                let file = FileRef::dec(d)?;
                let offset = d.u64("offset")?;
                let len = d.u32("len")?;
                if len as usize > MAX_IO {
                    return Err(too_large("len", len, MAX_IO));
                }
                Request::Read { file, offset, len }
            }
            Op::Write => Request::Write {
                file: FileRef::dec(d)?,
                offset: d.u64("offset")?,
                data: d.bytes("data", MAX_IO)?.to_vec(),
            },
            Op::Create => Request::Create {
                path: dec_path(d, "path")?,
                mode: dec_mode(d, "mode")?,
                exclusive: d.bool("exclusive")?,
            },
            Op::Mkdir => Request::Mkdir {
                path: dec_path(d, "path")?,
                mode: dec_mode(d, "mode")?,
            },
            Op::MkdirWith => Request::MkdirWith {
                path: dec_path(d, "path")?,
                mode: dec_mode(d, "mode")?,
                file: dec_path(d, "file")?,
                content: d.bytes("content", MAX_MKDIR_FILE)?.to_vec(),
                file_mode: dec_mode(d, "file_mode")?,
            },
            Op::Symlink => Request::Symlink {
                path: dec_path(d, "path")?,
                target: d.bytes("target", MAX_LINK_TARGET)?.to_vec(),
            },
            Op::ReadLink => Request::ReadLink {
                path: dec_path(d, "path")?,
            },
            Op::Link => Request::Link {
                existing: dec_path(d, "existing")?,
                new: dec_path(d, "new")?,
            },
            Op::Unlink => Request::Unlink {
                path: dec_path(d, "path")?,
            },
            Op::Rmdir => Request::Rmdir {
                path: dec_path(d, "path")?,
            },
            Op::Rename => Request::Rename {
                from: dec_path(d, "from")?,
                to: dec_path(d, "to")?,
                mode: RenameMode::dec(d)?,
            },
            Op::Truncate => Request::Truncate {
                file: FileRef::dec(d)?,
                size: d.u64("size")?,
            },
            Op::SetAttr => Request::SetAttr {
                file: FileRef::dec(d)?,
                attr: SetAttr::dec(d)?,
            },
            Op::Fsync => Request::Fsync {
                file: FileRef::dec(d)?,
                datasync: d.bool("datasync")?,
            },
            Op::ListVersions => Request::ListVersions {
                path: dec_path(d, "path")?,
            },
            Op::Restore => Request::Restore {
                path: dec_path(d, "path")?,
                id: d.u64("id")?,
            },
            Op::AdoptConflict => Request::AdoptConflict {
                id: d.u64("id")?,
                dest: dec_path(d, "dest")?,
            },
            Op::ChangesSince => {
                let since = d.u64("since")?;
                let limit = d.u32("limit")?;
                if limit as usize > MAX_CHANGES_PAGE {
                    return Err(too_large("limit", limit, MAX_CHANGES_PAGE));
                }
                Request::ChangesSince { since, limit }
            }
            Op::ListTree => {
                let after = d.opt("after", |d| dec_path(d, "after"))?;
                let limit = d.u32("limit")?;
                if limit as usize > MAX_TREE_PAGE {
                    return Err(too_large("limit", limit, MAX_TREE_PAGE));
                }
                Request::ListTree { after, limit }
            }
            Op::Get => Request::Get {
                path: dec_path(d, "path")?,
                version: d.opt("version", |d| d.u64("version"))?,
            },
            Op::Put => Request::Put {
                path: dec_path(d, "path")?,
                expect: Expect::dec(d)?,
                mode: d.opt("mode", |d| dec_mode(d, "mode"))?,
                mtime: d.opt("mtime", Timespec::dec)?,
            },
            Op::Delete => Request::Delete {
                path: dec_path(d, "path")?,
                expect: Expect::dec(d)?,
            },
            Op::ParkConflict => Request::ParkConflict {
                path: dec_path(d, "path")?,
            },
            Op::Ack => Request::Ack { seq: d.u64("seq")? },
        };
        d.end("request")?;
        Ok(req)
    }
}

fn too_large(field: &'static str, v: u32, max: usize) -> DecodeError {
    DecodeError::new(field, format!("{v} is above the limit of {max}"))
        .with_code(ErrorCode::TooLarge)
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done; nothing to report (Ping, Close, Unlink, Rmdir, Rename, Truncate, Fsync, Delete,
    /// Unsubscribe, Ack).
    Ok,
    Attr(Attr),
    DirPage(DirPage),
    /// A handle for `Read`/`Write`/…, and the file's attributes.
    Opened {
        handle: u64,
        attr: Attr,
    },
    Data(Vec<u8>),
    Written(u32),
    LinkTarget(Vec<u8>),
    StatFs(StatFs),
    /// Push frames follow for every journal entry from `head` on.
    Subscribed {
        head: u64,
    },
    Changes(Changes),
    /// The next sequence number to be written, and the oldest still in the journal.
    Head {
        head: u64,
        floor: u64,
    },
    TreePage(TreePage),
    Versions(VersionList),
    Version(VersionInfo),
    /// The end of a `Get` stream: the attributes of the file as it was read. The chunks
    /// before it hold exactly `attr.size` bytes.
    Got {
        attr: Attr,
    },
    /// The bytes written and the file's attributes taken after writing them.
    WrittenAttr {
        written: u32,
        attr: Attr,
    },
    /// `Opened`, and the attributes of the directory the file was created in, taken after.
    Created {
        handle: u64,
        attr: Attr,
        parent: Attr,
    },
    /// Done; the attributes of the directory the entry was removed from, taken after.
    Unlinked {
        parent: Attr,
    },
    /// `Opened`, with the file's whole content (`attr.size` bytes).
    OpenedWith {
        handle: u64,
        attr: Attr,
        content: Vec<u8>,
    },
    /// `Attr`, with the file's whole content (`attr.size` bytes).
    AttrWith {
        attr: Attr,
        content: Vec<u8>,
    },
    /// The directory `MkdirWith` made, and its parent's attributes, both taken after.
    Made {
        attr: Attr,
        parent: Attr,
    },
}

impl Response {
    fn tag(&self) -> u16 {
        match self {
            Response::Ok => 1,
            Response::Attr(_) => 2,
            Response::DirPage(_) => 3,
            Response::Opened { .. } => 4,
            Response::Data(_) => 5,
            Response::Written(_) => 6,
            Response::LinkTarget(_) => 7,
            Response::StatFs(_) => 8,
            Response::Subscribed { .. } => 9,
            Response::Changes(_) => 10,
            Response::Head { .. } => 11,
            Response::TreePage(_) => 12,
            Response::Versions(_) => 13,
            Response::Version(_) => 14,
            Response::Got { .. } => 15,
            Response::WrittenAttr { .. } => 16,
            Response::Created { .. } => 17,
            Response::Unlinked { .. } => 18,
            Response::OpenedWith { .. } => 19,
            Response::AttrWith { .. } => 20,
            Response::Made { .. } => 21,
        }
    }

    /// A short name for error messages ("expected Attr, got Ok").
    pub fn name(&self) -> &'static str {
        match self {
            Response::Ok => "Ok",
            Response::Attr(_) => "Attr",
            Response::DirPage(_) => "DirPage",
            Response::Opened { .. } => "Opened",
            Response::Data(_) => "Data",
            Response::Written(_) => "Written",
            Response::LinkTarget(_) => "LinkTarget",
            Response::StatFs(_) => "StatFs",
            Response::Subscribed { .. } => "Subscribed",
            Response::Changes(_) => "Changes",
            Response::Head { .. } => "Head",
            Response::TreePage(_) => "TreePage",
            Response::Versions(_) => "Versions",
            Response::Version(_) => "Version",
            Response::Got { .. } => "Got",
            Response::WrittenAttr { .. } => "WrittenAttr",
            Response::Created { .. } => "Created",
            Response::Unlinked { .. } => "Unlinked",
            Response::OpenedWith { .. } => "OpenedWith",
            Response::AttrWith { .. } => "AttrWith",
            Response::Made { .. } => "Made",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u16(self.tag());
        match self {
            Response::Ok => {}
            Response::Attr(a) | Response::Got { attr: a } => a.enc(&mut e),
            Response::DirPage(p) => p.enc(&mut e),
            Response::Opened { handle, attr } => {
                e.u64(*handle);
                attr.enc(&mut e);
            }
            Response::Data(b) | Response::LinkTarget(b) => e.bytes(b),
            Response::Written(n) => e.u32(*n),
            Response::StatFs(s) => s.enc(&mut e),
            Response::Subscribed { head } => e.u64(*head),
            Response::Changes(c) => c.enc(&mut e),
            Response::Head { head, floor } => {
                e.u64(*head);
                e.u64(*floor);
            }
            Response::TreePage(p) => p.enc(&mut e),
            Response::Versions(v) => v.enc(&mut e),
            Response::Version(v) => v.enc(&mut e),
            Response::WrittenAttr { written, attr } => {
                e.u32(*written);
                attr.enc(&mut e);
            }
            Response::Created {
                handle,
                attr,
                parent,
            } => {
                e.u64(*handle);
                attr.enc(&mut e);
                parent.enc(&mut e);
            }
            Response::Unlinked { parent } => parent.enc(&mut e),
            Response::OpenedWith {
                handle,
                attr,
                content,
            } => {
                e.u64(*handle);
                attr.enc(&mut e);
                e.bytes(content);
            }
            Response::AttrWith { attr, content } => {
                attr.enc(&mut e);
                e.bytes(content);
            }
            Response::Made { attr, parent } => {
                attr.enc(&mut e);
                parent.enc(&mut e);
            }
        }
        e.buf
    }

    pub fn decode(payload: &[u8]) -> Result<Response, DecodeError> {
        let mut d = Dec::new(payload);
        let d = &mut d;
        let r = match d.u16("response")? {
            1 => Response::Ok,
            2 => Response::Attr(Attr::dec(d)?),
            3 => Response::DirPage(DirPage::dec(d)?),
            4 => Response::Opened {
                handle: d.u64("handle")?,
                attr: Attr::dec(d)?,
            },
            5 => Response::Data(d.bytes("data", MAX_IO)?.to_vec()),
            6 => Response::Written(d.u32("written")?),
            7 => Response::LinkTarget(d.bytes("target", MAX_LINK_TARGET)?.to_vec()),
            8 => Response::StatFs(StatFs::dec(d)?),
            9 => Response::Subscribed {
                head: d.u64("head")?,
            },
            10 => Response::Changes(Changes::dec(d)?),
            11 => Response::Head {
                head: d.u64("head")?,
                floor: d.u64("floor")?,
            },
            12 => Response::TreePage(TreePage::dec(d)?),
            13 => Response::Versions(VersionList::dec(d)?),
            14 => Response::Version(VersionInfo::dec(d)?),
            15 => Response::Got {
                attr: Attr::dec(d)?,
            },
            16 => Response::WrittenAttr {
                written: d.u32("written")?,
                attr: Attr::dec(d)?,
            },
            17 => Response::Created {
                handle: d.u64("handle")?,
                attr: Attr::dec(d)?,
                parent: Attr::dec(d)?,
            },
            18 => Response::Unlinked {
                parent: Attr::dec(d)?,
            },
            19 => Response::OpenedWith {
                handle: d.u64("handle")?,
                attr: Attr::dec(d)?,
                content: d.bytes("content", OPEN_HEAD_MAX as usize)?.to_vec(),
            },
            20 => Response::AttrWith {
                attr: Attr::dec(d)?,
                content: d.bytes("content", STAT_HEAD_MAX as usize)?.to_vec(),
            },
            21 => Response::Made {
                attr: Attr::dec(d)?,
                parent: Attr::dec(d)?,
            },
            t => return Err(DecodeError::new("response", format!("unknown kind {t}"))),
        };
        d.end("response")?;
        Ok(r)
    }

    /// Decodes like [`Response::decode`], except that a `Data` answer keeps `payload`'s
    /// buffer (its bytes moved to the front) instead of copying up to a MiB into a new
    /// one: the read path's largest cost was allocating and faulting in fresh buffers.
    pub fn decode_owned(mut payload: Vec<u8>) -> Result<Response, DecodeError> {
        let mut d = Dec::new(&payload);
        if d.u16("response")? != 5 {
            return Response::decode(&payload);
        }
        let data_len = d.bytes("data", MAX_IO)?.len();
        d.end("response")?;
        payload.drain(..payload.len() - data_len);
        Ok(Response::Data(payload))
    }
}

/// A notification the server sends without a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// A new journal entry of the subscribed volume, written on storage.
    Change(ChangeEntry),
    /// Entries were not pushed because the subscriber fell behind: read them with
    /// `ChangesSince` from the last seen `seq + 1`.
    Lagged,
}

impl Push {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        match self {
            Push::Change(c) => {
                e.u8(1);
                c.enc(&mut e);
            }
            Push::Lagged => e.u8(2),
        }
        e.buf
    }

    pub fn decode(payload: &[u8]) -> Result<Push, DecodeError> {
        let mut d = Dec::new(payload);
        let p = match d.u8("push")? {
            1 => Push::Change(ChangeEntry::dec(&mut d)?),
            2 => Push::Lagged,
            t => return Err(DecodeError::new("push", format!("unknown kind {t}"))),
        };
        d.end("push")?;
        Ok(p)
    }
}

/// The payload of an `Error` frame: code and message.
pub fn encode_error(e: &crate::RemoteError) -> Vec<u8> {
    let mut enc = Enc::new();
    enc.u16(e.code.to_u16());
    enc.str(&e.message);
    enc.buf
}

pub fn decode_error(payload: &[u8]) -> Result<crate::RemoteError, DecodeError> {
    let mut d = Dec::new(payload);
    let code = ErrorCode::from_u16(d.u16("error code")?);
    let message = d.string("error message", crate::error::MAX_ERROR_MESSAGE)?;
    d.end("error")?;
    Ok(crate::RemoteError { code, message })
}
