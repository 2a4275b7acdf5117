//! Each filesystem operation over the protocol: plaintext name → (directory IV, encrypted
//! name) → ciphertext path → request; file content through `CryptFile` one 4 KiB block at a
//! time. Follows gocryptfs internal/fusefrontend (node.go, node_dir.go, file.go): long
//! names write their `.name` file before the entry, directories get their
//! `gocryptfs.diriv` right after mkdir, rmdir removes the diriv first.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudstore_format::file::{CipherStore, CryptFile};
use cloudstore_format::names::{classify, DIRIV_NAME, LONGNAME_SUFFIX};
use cloudstore_format::{
    offsets, ContentCipher, DirIv, EncryptedName, FormatError, NameKind, HEADER_LEN,
};
use cloudstore_protocol::queue::WorkQueue;
use cloudstore_protocol::{
    features, Attr, ChangeEntry, ChangeKind, Client, ErrorCode, Expect, FileRef, FileType,
    OpenFlags, PendingCall, Push, RenameMode, Request, Response, SetAttr, TimeSet, Timespec,
    MAX_IO, STAT_HEAD_MAX,
};
use fuser::{FileAttr, TimeOrNow};

use super::ahead::Ahead;
use super::conn::Storage;
use super::nodes::{change_clock, FileState, Held, Nodes, ROOT};
use super::{lock, Connector, Fail, FsOptions, FsStatus};

/// Longest `.name` file: a 255-byte plaintext name encrypts to 344 base64 characters.
const LONGNAME_FILE_READ: u32 = 4096;

/// A mode for the `.name` files of long names and `gocryptfs.diriv` (gocryptfs uses 0400
/// and 0440; storage keeps owner read/write in any case).
const NAME_FILE_MODE: u32 = 0o400;
const DIRIV_MODE: u32 = 0o440;

pub(crate) type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct OpenFile {
    pub ino: u64,
    write: bool,
    /// (connection generation, storage handle)
    pub remote: Mutex<Option<(u64, u64)>>,
    pub file: Arc<FileState>,
    /// The ciphertext asked of storage ahead of this handle's reader (ahead.rs).
    ahead: Mutex<Ahead<PendingCall>>,
}

pub(crate) struct DirItem {
    pub name: Vec<u8>,
    pub kind: FileType,
    pub ino: u64,
    /// The ciphertext entry and its attributes (none for `.` and `..`), for readdirplus.
    pub cname: String,
    pub attr: Option<Attr>,
    /// The [`change_clock`] when the page it came in was asked for.
    pub asked_at: u64,
}

/// How a listed entry goes into a readdirplus answer.
pub(crate) enum PlusEntry {
    /// The entry, counted as a lookup, and its attributes.
    Entry(u64, FileAttr),
    /// `.` or `..`: the kernel takes no attributes for them.
    Dots,
    /// The listing's attributes may be older than what the kernel was told since: the entry
    /// must be looked up, which may wait for storage.
    Ask,
    /// Looked up, and gone meanwhile.
    Gone,
}

pub(crate) struct Core {
    pub opts: FsOptions,
    vol: cloudstore_format::Volume,
    pub st: Storage,
    pub nodes: Mutex<Nodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirItem>>>>,
    next_fh: AtomicU64,
    ciphers: Mutex<Vec<ContentCipher>>,
    notifier: Mutex<Option<fuser::Notifier>>,
    pub status: Arc<FsStatus>,
    /// Requests for the workers; closed at stop, after which jobs run on the caller.
    jobs: Arc<WorkQueue<Job>>,
    /// Jobs queued or running on the workers.
    busy: Arc<AtomicUsize>,
    /// One conflict adoption at a time (at connect and on each parked-conflict push).
    pub adopting: Mutex<()>,
    started: AtomicBool,
    stopping: AtomicBool,
    /// Bytes of small files' content held from their open for their first read.
    held: Arc<AtomicUsize>,
    /// The same for content a lookup brought (`STAT_HEAD`), budgeted apart so that lookups
    /// never read (a `find`, an `ls`) cannot crowd out what opens bring.
    held_looked_up: Arc<AtomicUsize>,
    /// The files holding such content, oldest first: the oldest gives way to the newest.
    looked_up_order: Mutex<std::collections::VecDeque<Weak<FileState>>>,
    /// The last directories listed, newest last, kept past their handles for reading ahead
    /// (see [`Core::read_ahead`]).
    listings: Mutex<std::collections::VecDeque<Arc<Listing>>>,
    /// Unlinks sent and not yet answered (unlinks.rs).
    pub(crate) unlinks: super::unlinks::UnlinkQueue,
    /// Bytes of ciphertext asked ahead of streaming readers and not yet read (ahead.rs).
    asked_ahead: Arc<AtomicUsize>,
}

/// The most content a mount holds from read-only opens for the reads that follow: enough
/// for a few dozen small files opened at once, whatever is opened and never read.
const HELD_MAX: usize = 4 << 20;

/// The most content a mount holds from lookups, and for how many files: the open follows its
/// lookup at once where it follows at all, so this need only cover files looked up together.
const LOOKED_UP_MAX: usize = 1 << 20;
const LOOKED_UP_FILES: usize = 256;

/// Directories whose listing is kept for reading ahead: a program walking a tree lists a
/// directory, closes it, and then opens its files (GNU tar reads all the names first).
/// Only listings of at most `LISTING_KEPT_ENTRIES` entries are kept (a few hundred KiB
/// each), so that listing huge directories leaves nothing behind.
const LISTINGS_KEPT: usize = 8;
const LISTING_KEPT_ENTRIES: usize = 4096;

/// Entries after an opened file whose content an open that had to ask storage fetches
/// after it (the small regular files among them), from the budget lookups use.
const READ_AHEAD_ENTRIES: usize = 32;
/// Slots of the client's in-flight window reading ahead leaves to others.
const READ_AHEAD_SPARE: usize = 16;

/// A directory's listing kept past its handle, in the order it was given to the kernel.
pub(crate) struct Listing {
    dir: u64,
    items: Arc<Vec<DirItem>>,
    /// Each entry's position by its name on storage, built at the first open from it.
    at: std::sync::OnceLock<HashMap<String, usize>>,
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn to_time(t: Timespec) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(t.nanos.into())
    }
}

fn to_timespec(t: SystemTime) -> Timespec {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    Timespec::new(secs, nanos)
}

/// This machine's time now, for attributes answered before storage gives its own.
pub(crate) fn timespec_now() -> Timespec {
    to_timespec(SystemTime::now())
}

fn to_timeset(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => TimeSet::At(to_timespec(st)),
    }
}

/// The plaintext length of a symlink target from its on-disk length: base64url without
/// padding of nonce (16) + target + tag (16).
fn symlink_plain_len(on_disk: u64, plaintext_names: bool) -> u64 {
    if plaintext_names {
        return on_disk;
    }
    (on_disk * 3 / 4).saturating_sub(32)
}

/// What a name-encryption error means to an application.
fn name_fail(e: FormatError, shown: &str) -> Fail {
    let errno = match e {
        FormatError::NameTooLong(_) | FormatError::EncryptedNameTooLong(_) => libc::ENAMETOOLONG,
        FormatError::ReservedName(_) => libc::EPERM,
        FormatError::NameInvalid(_) => libc::EINVAL,
        _ => libc::EIO,
    };
    Fail::new(errno, format!("{shown}: {e}"))
}

pub(crate) fn expect_resp(r: Response, want: &str) -> Fail {
    Fail::io(format!(
        "storage answered {} where {want} was expected",
        r.name()
    ))
}

/// The ciphertext of one file, reached by handle (or by path) over the protocol: what
/// `CryptFile` reads and writes. The length and header are cached per file.
struct Remote<'a> {
    core: &'a Core,
    ino: u64,
    handle: Option<&'a OpenFile>,
    /// Writes go out through this handle without waiting for storage (see behind.rs).
    behind: Option<&'a Arc<OpenFile>>,
    clen: u64,
    header: Option<[u8; HEADER_LEN]>,
    /// The storage failure behind an I/O error, kept for its errno.
    err: Option<Fail>,
    /// The start of the ciphertext, fetched with the header: a small file is read in one
    /// round trip instead of two.
    pre: Option<Vec<u8>>,
    /// A new file's header, sent together with its first blocks.
    pending_header: Option<[u8; HEADER_LEN]>,
    /// The file's partial last block as written here (see [`FileCache::tail`]).
    tail: Option<(u64, Vec<u8>)>,
    /// A read through a handle, which may read ahead of a streaming reader (ahead.rs).
    read_ahead: bool,
}

/// How much of a file is fetched with its header: 32 blocks covers most small files.
const PREFETCH: u64 = 32 * cloudstore_format::CIPHER_BS as u64;

impl Remote<'_> {
    fn fail(&mut self, f: Fail) -> io::Error {
        let e = io::Error::other(f.msg.clone());
        self.err = Some(f);
        e
    }

    fn call(&self, build: impl Fn(FileRef) -> Request) -> Result<Response, Fail> {
        self.core
            .file_call(self.ino, self.handle, build)
            .map(|(r, _)| r)
    }

    /// Requests for the pieces of one large read or write, sent at once, answered by
    /// `deadline` (retried across reconnections until then).
    fn calls_by(
        &self,
        deadline: Instant,
        n: usize,
        build: impl Fn(FileRef, usize) -> Request,
    ) -> Result<Vec<Response>, Fail> {
        self.core
            .file_calls_by(self.ino, self.handle, true, deadline, n, build)
            .map(|(r, _, _)| r)
    }

    fn new<'a>(
        core: &'a Core,
        ino: u64,
        handle: Option<&'a OpenFile>,
        clen: u64,
        header: Option<[u8; HEADER_LEN]>,
    ) -> Remote<'a> {
        Remote {
            core,
            ino,
            handle,
            behind: None,
            clen,
            header,
            err: None,
            pre: None,
            pending_header: None,
            tail: None,
            read_ahead: false,
        }
    }

    /// Reads the header (and the first blocks) unless cached; storage failures are kept
    /// in `err`.
    fn load_header(&mut self) -> Result<(), Fail> {
        if self.clen == 0 || self.header.is_some() {
            return Ok(());
        }
        let want = self.clen.min(PREFETCH) as usize;
        let d = self.read_piece(0, want)?;
        if d.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&d[..HEADER_LEN]);
            self.header = Some(h);
        }
        self.pre = Some(d);
        Ok(())
    }

    /// Sends a header still held back (before any other change to the file).
    fn flush_header(&mut self) -> Result<(), Fail> {
        if let Some(h) = self.pending_header.take() {
            self.write_pieces(0, &h)?;
        }
        Ok(())
    }

    /// Writes in protocol-sized pieces; a 1 MiB FUSE write is 1 MiB + 8 KiB of ciphertext,
    /// so its two pieces are sent at once.
    fn write_pieces(&self, offset: u64, data: &[u8]) -> Result<(), Fail> {
        let pieces = super::behind::pieces(offset, data);
        if let Some(of) = self.behind {
            return self.core.write_behind(self.ino, of, &pieces);
        }
        self.core.settle_file(self.ino, self.handle);
        self.core.send_writes(self.ino, self.handle, &pieces)
    }

    /// What was fetched with the header of the `len` bytes at `offset`, if it covers them
    /// (short only at the end of the file).
    fn prefetched(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let pre = self.pre.as_ref()?;
        let end = offset + len as u64;
        let whole_file = pre.len() as u64 >= self.clen;
        if end <= pre.len() as u64 || whole_file || (pre.len() as u64) < PREFETCH.min(self.clen) {
            // Inside what was fetched, or past the end of a file no longer than that.
            let from = (offset as usize).min(pre.len());
            let n = len.min(pre.len() - from);
            return Some(&pre[from..from + n]);
        }
        None
    }

    /// The `len` bytes at `offset` if they lie in the partial last block written here.
    fn in_tail(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let (start, bytes) = self.tail.as_ref()?;
        let end = start + bytes.len() as u64;
        (end == self.clen && offset >= *start && offset + len as u64 <= end)
            .then(|| &bytes[(offset - start) as usize..][..len])
    }

    /// After a write of `data` at `offset`, which succeeded: keeps the file's last block if
    /// the write made it and it is partial (the next append rewrites it), else forgets it
    /// if the write touched it.
    fn track_tail(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let block = cloudstore_format::CIPHER_BS as u64;
        let last_start = if self.clen > HEADER_LEN as u64 {
            offsets::block_no_to_cipher_off((self.clen - HEADER_LEN as u64 - 1) / block)
        } else {
            self.clen
        };
        if end == self.clen && last_start >= offset && self.clen - last_start < block {
            self.tail = Some((last_start, data[(last_start - offset) as usize..].to_vec()));
        } else if self
            .tail
            .as_ref()
            .is_some_and(|(start, bytes)| end > *start && offset < start + bytes.len() as u64)
        {
            self.tail = None;
        }
    }

    /// Reads `len` bytes of ciphertext at `offset` from storage (short only at the end),
    /// in the buffer the first answer arrived in. One FUSE read of 1 MiB is 1 MiB + 8 KiB
    /// of ciphertext: two protocol reads, sent at once.
    fn fetch(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let pieces: Vec<(u64, usize)> = (0..len)
            .step_by(MAX_IO)
            .map(|s| (offset + s as u64, MAX_IO.min(len - s)))
            .collect();
        // One time limit for the read, however it goes: asked ahead, or asked again.
        let deadline = Instant::now() + self.core.st.timeout;
        let asked = match (self.read_ahead, self.handle, &pieces[..]) {
            (true, Some(of), [_]) => self.core.read_streaming(of, offset, len, self.clen),
            _ => None,
        };
        let answers = match asked {
            Some(answer) => vec![answer],
            None => self
                .calls_by(deadline, pieces.len(), |file, i| Request::Read {
                    file,
                    offset: pieces[i].0,
                    len: pieces[i].1 as u32,
                })
                .map_err(|f| self.fail(f))?,
        };
        let mut out: Option<Vec<u8>> = None;
        for (r, (_, want)) in answers.into_iter().zip(pieces) {
            let d = match r {
                Response::Data(d) => d,
                r => return Err(self.fail(expect_resp(r, "Data"))),
            };
            let short = d.len() < want;
            match &mut out {
                None => out = Some(d),
                Some(o) => o.extend_from_slice(&d),
            }
            if short {
                break;
            }
        }
        let out = out.unwrap_or_default();
        if offset == 0 && out.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&out[..HEADER_LEN]);
            self.header = Some(h);
        }
        Ok(out)
    }

    fn read_piece(&self, off: u64, len: usize) -> Result<Vec<u8>, Fail> {
        match self.call(|file| Request::Read {
            file,
            offset: off,
            len: len as u32,
        })? {
            Response::Data(d) => Ok(d),
            r => Err(expect_resp(r, "Data")),
        }
    }
}

impl CipherStore for Remote<'_> {
    fn cipher_len(&mut self) -> io::Result<u64> {
        Ok(self.clen)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset == 0 && buf.len() == HEADER_LEN {
            if let Some(h) = self.header {
                buf.copy_from_slice(&h);
                return Ok(HEADER_LEN);
            }
        }
        if let Some(pre) = self
            .in_tail(offset, buf.len())
            .or_else(|| self.prefetched(offset, buf.len()))
        {
            buf[..pre.len()].copy_from_slice(pre);
            return Ok(pre.len());
        }
        let d = self.fetch(offset, buf.len())?;
        buf[..d.len()].copy_from_slice(&d);
        Ok(d.len())
    }

    fn read_vec(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match self.prefetched(offset, len) {
            Some(pre) => Ok(pre.to_vec()),
            None => self.fetch(offset, len),
        }
    }

    fn lend(&mut self, len: usize) -> Vec<u8> {
        cloudstore_protocol::buffers::take(len)
    }

    fn write_vec(&mut self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        let res = self.write_at(offset, &data);
        cloudstore_protocol::buffers::give_back(data);
        res
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.pre = None;
        if offset == 0 && data.len() == HEADER_LEN && self.clen == 0 {
            // A new file's header: held back to travel with the first blocks.
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(data);
            self.pending_header = Some(h);
            self.header = Some(h);
            self.clen = HEADER_LEN as u64;
            return Ok(());
        }
        let res = match self.pending_header.take() {
            Some(h) if offset == HEADER_LEN as u64 => {
                let mut all = Vec::with_capacity(HEADER_LEN + data.len());
                all.extend_from_slice(&h);
                all.extend_from_slice(data);
                self.write_pieces(0, &all)
            }
            Some(h) => self
                .write_pieces(0, &h)
                .and_then(|()| self.write_pieces(offset, data)),
            None => self.write_pieces(offset, data),
        };
        res.map_err(|f| self.fail(f))?;
        self.clen = self.clen.max(offset + data.len() as u64);
        self.track_tail(offset, data);
        if offset == 0 && data.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&data[..HEADER_LEN]);
            self.header = Some(h);
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.pre = None;
        self.tail = None;
        if len == 0 {
            self.pending_header = None;
        }
        if len == self.clen && self.pending_header.is_none() {
            return Ok(());
        }
        self.flush_header().map_err(|f| self.fail(f))?;
        if let Err(f) = self.call(|file| Request::Truncate { file, size: len }) {
            return Err(self.fail(f));
        }
        self.clen = len;
        if len < HEADER_LEN as u64 {
            self.header = None;
        }
        Ok(())
    }
}

impl Core {
    pub(crate) fn new(
        opts: FsOptions,
        vol: cloudstore_format::Volume,
        connector: Arc<dyn Connector>,
        status: Arc<FsStatus>,
    ) -> Core {
        Core {
            st: Storage::new(
                connector,
                opts.volume_name.clone(),
                opts.request_timeout,
                status.clone(),
            ),
            opts,
            vol,
            nodes: Mutex::new(Nodes::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ciphers: Mutex::new(Vec::new()),
            notifier: Mutex::new(None),
            status,
            jobs: Arc::new(WorkQueue::new(usize::MAX)),
            busy: Arc::new(AtomicUsize::new(0)),
            adopting: Mutex::new(()),
            started: AtomicBool::new(false),
            held: Arc::new(AtomicUsize::new(0)),
            held_looked_up: Arc::new(AtomicUsize::new(0)),
            looked_up_order: Mutex::new(std::collections::VecDeque::new()),
            listings: Mutex::new(std::collections::VecDeque::new()),
            stopping: AtomicBool::new(false),
            unlinks: super::unlinks::UnlinkQueue::new(),
            asked_ahead: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn set_notifier(&self, n: fuser::Notifier) {
        *lock(&self.notifier) = Some(n);
    }

    /// Starts the workers, the storage connection and its push listener.
    pub(crate) fn start(self: &Arc<Self>) {
        assert!(!self.started.swap(true, Ordering::Relaxed), "started twice");
        for i in 0..self.opts.workers.max(1) {
            let jobs = self.jobs.clone();
            let busy = self.busy.clone();
            let _ = std::thread::Builder::new()
                .name(format!("cloudstore-fs-{i}"))
                .spawn(move || {
                    while let Some(job) = jobs.pop() {
                        job();
                        busy.fetch_sub(1, Ordering::Release);
                    }
                });
        }
        self.start_unlink_collector();
        let weak: Weak<Core> = Arc::downgrade(self);
        self.st.set_hook(Box::new(move |client, gen, pushes| {
            if let Some(core) = weak.upgrade() {
                core.connected(client.clone(), gen, pushes);
            }
        }));
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("cloudstore-connect".into())
            .spawn(move || {
                let _ = me.st.client(Instant::now() + me.opts.request_timeout);
            });
    }

    pub(crate) fn stop(&self) {
        self.all_unlinks_settled(self.opts.request_timeout);
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs.close();
        if let Some((c, gen)) = self.st.current() {
            c.close();
            self.st.drop_connection(gen);
        }
    }

    pub(crate) fn spawn(&self, job: Job) {
        self.busy.fetch_add(1, Ordering::Acquire);
        if let Err(job) = self.jobs.push(job) {
            job();
            self.busy.fetch_sub(1, Ordering::Release);
        }
    }

    /// Whether no worker has a job and storage is connected: then nothing else is waiting
    /// on storage, and a short request run on fuser's reading thread delays no other (one
    /// that had to wait for a reconnection would hold up even what is answered from memory).
    pub(crate) fn idle_and_connected(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && self.st.current().is_some()
    }

    /// A new connection: subscribe to changes, drop caches that may have missed changes
    /// while disconnected, adopt parked conflicts, then follow the pushes.
    fn connected(self: Arc<Self>, client: Arc<Client>, gen: u64, pushes: Receiver<Push>) {
        let me = self;
        let _ = std::thread::Builder::new()
            .name("cloudstore-push".into())
            .spawn(move || {
                match client.call(Request::Subscribe) {
                    Ok(_) => me.status.set_following(true),
                    Err(e) => {
                        tracing::warn!(volume = %me.opts.volume_name, "subscribing to storage changes failed: {e}; changes made elsewhere show after the cache times out");
                    }
                }
                if gen > 1 {
                    me.invalidate_all();
                }
                super::conflicts::adopt_all(&me);
                while let Ok(p) = pushes.recv() {
                    if me.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    match p {
                        Push::Change(c) => me.on_change(&c),
                        Push::Lagged => me.invalidate_all(),
                    }
                }
                // The stream ended: say so at once (status), and reconnect in the
                // background so changes are followed again before the next operation. What
                // the kernel was allowed to keep on the strength of the stream is dropped
                // once the new one is up (above), not now: dropping a file's pages waits for
                // its write in flight, which waits for the new connection.
                me.status.set_following(false);
                me.forget_followed();
                me.st.drop_connection(gen);
                while !me.stopping.load(Ordering::Relaxed) {
                    if me.st.client(Instant::now() + me.opts.request_timeout).is_ok() {
                        break;
                    }
                }
            });
    }

    fn notify(&self, f: impl FnOnce(&fuser::Notifier) -> io::Result<()>) {
        let n = lock(&self.notifier).clone();
        if let Some(n) = n {
            // ENOENT: the kernel no longer has that inode or entry, nothing to drop.
            let _ = f(&n);
        }
    }

    /// The directory at ciphertext path `dir` may hold entries this mount did not make.
    pub(crate) fn entries_unknown_in(&self, dir: &str) {
        let mut nodes = lock(&self.nodes);
        if let (_, Some(ino)) = nodes.resolve(dir) {
            nodes.unknown_entries(ino);
            if let Some(n) = nodes.map.get(&ino) {
                n.file.attrs_changing();
            }
        }
    }

    /// The push stream ended: every directory listing known so far may be out of date,
    /// and the attributes kept from changes made here may have been changed elsewhere since.
    fn forget_followed(&self) {
        for n in lock(&self.nodes).map.values_mut() {
            n.entries = None;
            n.file.forget_attrs();
        }
    }

    /// How long the kernel may keep the names and attributes it is given now.
    pub(crate) fn ttl(&self) -> Duration {
        if self.status.following() {
            self.opts.followed_ttl
        } else {
            self.opts.attr_ttl
        }
    }

    /// Drops everything cached here and in the kernel (names, attributes, pages): changes
    /// may have been missed.
    fn invalidate_all(&self) {
        let (inos, names): (Vec<u64>, Vec<(u64, Vec<u8>)>) = {
            let mut nodes = lock(&self.nodes);
            let mut names = Vec::new();
            for n in nodes.map.values_mut() {
                n.entries = None;
                n.diriv = None;
                n.file.forget_cached();
                names.extend(n.names.iter().map(|x| (x.parent, x.pname.clone())));
            }
            (nodes.map.keys().copied().collect(), names)
        };
        for ino in inos {
            self.notify(|n| n.inval_inode(ino, 0, 0));
        }
        for (parent, name) in names {
            use std::os::unix::ffi::OsStrExt;
            self.notify(|n| n.inval_entry(parent, std::ffi::OsStr::from_bytes(&name)));
        }
    }

    fn on_change(self: &Arc<Self>, c: &ChangeEntry) {
        if c.kind == ChangeKind::ConflictParked {
            let me = self.clone();
            self.spawn(Box::new(move || super::conflicts::adopt_all(&me)));
            return;
        }
        // Storage does not push a connection's own changes back to it: this one was made
        // elsewhere (another mount, the transfer, a restore).
        self.invalidate_path(&c.path);
        if let Some(np) = &c.new_path {
            if matches!(
                c.kind,
                ChangeKind::Rename | ChangeKind::Exchange | ChangeKind::Link
            ) {
                self.invalidate_path(np);
            }
        }
    }

    /// Drops what the kernel and we cache about a ciphertext path changed elsewhere, the
    /// listings around it included.
    fn invalidate_path(&self, cpath: &str) {
        let (dir, last) = match cpath.rsplit_once('/') {
            Some((d, l)) => (d, l),
            None => ("", cpath),
        };
        let target = match classify(last.as_bytes()) {
            NameKind::DirIv | NameKind::Config => dir.to_owned(),
            NameKind::LongNameFile => cpath[..cpath.len() - LONGNAME_SUFFIX.len()].to_owned(),
            _ => cpath.to_owned(),
        };
        let (parent, ino, pname) = {
            let mut nodes = lock(&self.nodes);
            let (parent, ino) = nodes.resolve(&target);
            let last = target.rsplit('/').next().unwrap_or("").to_owned();
            let mut pname = None;
            if let Some(p) = parent {
                nodes.unknown_entries(p);
            }
            if let Some(i) = ino {
                if let Some(n) = nodes.map.get_mut(&i) {
                    n.entries = None;
                    n.diriv = None;
                    n.file.forget_cached();
                    pname = n
                        .names
                        .iter()
                        .find(|x| Some(x.parent) == parent && x.cname == last)
                        .map(|x| x.pname.clone());
                }
            }
            if pname.is_none() {
                if let Some(p) = parent {
                    if let Some(iv) = nodes.map.get(&p).and_then(|n| n.diriv) {
                        pname = self.vol.names().decrypt_name(&iv, last.as_bytes()).ok();
                    }
                }
            }
            (parent, ino, pname)
        };
        if let Some(i) = ino {
            self.notify(|n| n.inval_inode(i, 0, 0));
        }
        if let Some(p) = parent {
            self.notify(|n| n.inval_inode(p, -1, 0));
            if let Some(name) = pname {
                use std::os::unix::ffi::OsStrExt;
                self.notify(|n| n.inval_entry(p, std::ffi::OsStr::from_bytes(&name)));
            }
        }
    }

    // ---- helpers ----

    pub(crate) fn names(&self) -> &cloudstore_format::NameCipher {
        self.vol.names()
    }

    pub(crate) fn shown(&self, ino: u64) -> String {
        lock(&self.nodes).shown(ino)
    }

    pub(crate) fn shown_child(&self, parent: u64, name: &[u8]) -> String {
        let p = self.shown(parent);
        let n = String::from_utf8_lossy(name);
        if p == "/" {
            format!("/{n}")
        } else {
            format!("{p}/{n}")
        }
    }

    pub(crate) fn cpath(&self, ino: u64) -> Result<String, Fail> {
        lock(&self.nodes)
            .cpath(ino)
            .ok_or_else(|| Fail::new(libc::ENOENT, format!("inode {ino} has no name any more")))
    }

    fn with_cc<T>(&self, f: impl FnOnce(&mut ContentCipher) -> T) -> Result<T, Fail> {
        let cc = lock(&self.ciphers).pop();
        let mut cc = match cc {
            Some(c) => c,
            None => self
                .vol
                .content_cipher()
                .map_err(|e| Fail::io(format!("setting up the content cipher: {e}")))?,
        };
        let r = f(&mut cc);
        lock(&self.ciphers).push(cc);
        Ok(r)
    }

    pub(crate) fn attr_of(&self, ino: u64, a: &Attr) -> FileAttr {
        let (kind, size) = match a.kind {
            // A ciphertext size no gocryptfs file has (cut inside a block): shown as an
            // upper bound, never 0, so reading it meets the damage (EIO, logged) instead
            // of finding a file that looks empty.
            FileType::File => (
                fuser::FileType::RegularFile,
                offsets::cipher_size_to_plain_size(a.size)
                    .unwrap_or_else(|_| a.size.saturating_sub(HEADER_LEN as u64).max(1)),
            ),
            FileType::Dir => (fuser::FileType::Directory, a.size),
            FileType::Symlink => (
                fuser::FileType::Symlink,
                symlink_plain_len(a.size, self.vol.names().is_plaintext()),
            ),
            FileType::Other => (fuser::FileType::RegularFile, 0),
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: to_time(a.atime),
            mtime: to_time(a.mtime),
            ctime: to_time(a.ctime),
            crtime: to_time(a.mtime),
            kind,
            perm: (a.perm & 0o7777) as u16,
            nlink: a.nlink.min(u32::MAX as u64) as u32,
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The IV of directory `ino` if it is known without asking storage.
    pub(crate) fn known_dir_iv(&self, ino: u64) -> Option<DirIv> {
        if !self.vol.names().uses_dir_iv() {
            return Some(DirIv::ZERO);
        }
        lock(&self.nodes).map.get(&ino).and_then(|n| n.diriv)
    }

    fn dir_iv(&self, ino: u64) -> Result<DirIv, Fail> {
        if let Some(iv) = self.known_dir_iv(ino) {
            return Ok(iv);
        }
        let cpath = lock(&self.nodes)
            .cpath(ino)
            .ok_or_else(|| Fail::new(libc::ENOENT, format!("directory inode {ino} is gone")))?;
        let iv = self.read_diriv(&cpath)?;
        if let Some(n) = lock(&self.nodes).map.get_mut(&ino) {
            n.diriv = Some(iv);
        }
        Ok(iv)
    }

    fn read_diriv_request(dir_cpath: &str) -> Request {
        Request::Read {
            file: FileRef::Path(join(dir_cpath, DIRIV_NAME)),
            offset: 0,
            len: 64,
        }
    }

    pub(crate) fn read_diriv(&self, dir_cpath: &str) -> Result<DirIv, Fail> {
        let p = join(dir_cpath, DIRIV_NAME);
        match self.st.call(Self::read_diriv_request(dir_cpath)) {
            Ok(Response::Data(d)) => DirIv::parse(&d)
                .map_err(|e| Fail::io(format!("the directory IV {p} is unusable: {e}"))),
            Ok(r) => Err(expect_resp(r, "Data")),
            Err(f) if f.is(ErrorCode::NotFound) => Err(Fail::io(format!(
                "the directory IV {p} is missing (a damaged or foreign ciphertext directory)"
            ))),
            Err(f) => Err(f),
        }
    }

    pub(crate) fn read_small(&self, cpath: &str) -> Result<Vec<u8>, Fail> {
        match self.st.call(Request::Read {
            file: FileRef::Path(cpath.to_owned()),
            offset: 0,
            len: LONGNAME_FILE_READ,
        })? {
            Response::Data(d) => Ok(d),
            r => Err(expect_resp(r, "Data")),
        }
    }

    pub(crate) fn encrypt_name(
        &self,
        iv: &DirIv,
        name: &[u8],
        shown: &str,
    ) -> Result<EncryptedName, Fail> {
        self.vol
            .names()
            .encrypt_name(iv, name)
            .map_err(|e| name_fail(e, shown))
    }

    /// (encrypted name, its entry, the child's ciphertext path) of `parent/name`.
    fn child(&self, parent: u64, name: &[u8]) -> Result<(EncryptedName, String, String), Fail> {
        let iv = self.dir_iv(parent)?;
        let en = self.encrypt_name(&iv, name, &self.shown_child(parent, name))?;
        let entry = String::from_utf8(en.entry().to_vec()).map_err(|_| {
            Fail::new(
                libc::EINVAL,
                format!(
                    "{}: not UTF-8 on a plaintext-names volume",
                    self.shown_child(parent, name)
                ),
            )
        })?;
        let cpath = join(&self.cpath(parent)?, &entry);
        Ok((en, entry, cpath))
    }

    /// Writes the `.name` file of a long name (before the entry, like gocryptfs
    /// nametransform/longnames.go `WriteLongNameAt`).
    pub(crate) fn write_long_name(&self, en: &EncryptedName, cpath: &str) -> Result<(), Fail> {
        if let EncryptedName::Long { full, .. } = en {
            // The content follows from the name, so one already there (the name exists, or
            // a retry) is the same: keep it rather than make storage version a copy.
            match self.st.put(
                &format!("{cpath}{LONGNAME_SUFFIX}"),
                full.as_bytes(),
                NAME_FILE_MODE,
                Expect::Absent,
            ) {
                Ok(()) => {}
                Err(f) if f.is(ErrorCode::Conflict) => {}
                Err(f) => return Err(f),
            }
        }
        Ok(())
    }

    fn remove_long_name(&self, en: &EncryptedName, cpath: &str) {
        if let EncryptedName::Long { .. } = en {
            let _ = self.st.call(Request::Unlink {
                path: format!("{cpath}{LONGNAME_SUFFIX}"),
            });
        }
    }

    /// A call on a file: by handle when one is open (on this connection, re-opened after a
    /// reconnection), else by path.
    fn file_call(
        &self,
        ino: u64,
        of: Option<&OpenFile>,
        build: impl Fn(FileRef) -> Request,
    ) -> Result<(Response, bool), Fail> {
        self.file_calls(ino, of, 1, |file, _| build(file))
            .map(|(mut r, m)| (r.remove(0), m))
    }

    /// `n` requests on one file sent at once (see [`Storage::call_all`]), after the
    /// file's write in flight, if any, is answered.
    fn file_calls(
        &self,
        ino: u64,
        of: Option<&OpenFile>,
        n: usize,
        build: impl Fn(FileRef, usize) -> Request,
    ) -> Result<(Vec<Response>, bool), Fail> {
        self.file_calls_stamped(ino, of, true, n, build)
            .map(|(r, m, _)| (r, m))
    }

    /// Waits for the write in flight on `ino` (through `of`, for a file that may have lost
    /// its name).
    fn settle_file(&self, ino: u64, of: Option<&OpenFile>) {
        self.settle(&self.state_of(ino, of));
    }

    /// The state of the file `ino`, through `of` for a file that may have lost its name.
    pub(crate) fn state_of(&self, ino: u64, of: Option<&OpenFile>) -> Arc<FileState> {
        match of {
            Some(of) => of.file.clone(),
            None => self.file_state(ino),
        }
    }

    /// [`Core::file_calls`], also returning the stamp under which attributes the answers
    /// carry may be kept ([`Core::stamp`]). `settle: false` for a write in flight's own
    /// sending, whose caller holds or has just settled the file's write-behind.
    pub(crate) fn file_calls_stamped(
        &self,
        ino: u64,
        of: Option<&OpenFile>,
        settle: bool,
        n: usize,
        build: impl Fn(FileRef, usize) -> Request,
    ) -> Result<(Vec<Response>, bool, Option<u64>), Fail> {
        let deadline = Instant::now() + self.st.timeout;
        self.file_calls_by(ino, of, settle, deadline, n, build)
    }

    /// [`Core::file_calls_stamped`], answered by `deadline`.
    fn file_calls_by(
        &self,
        ino: u64,
        of: Option<&OpenFile>,
        settle: bool,
        deadline: Instant,
        n: usize,
        build: impl Fn(FileRef, usize) -> Request,
    ) -> Result<(Vec<Response>, bool, Option<u64>), Fail> {
        let state = self.state_of(ino, of);
        let stamp = if settle {
            self.settle_then_stamp(&state)
        } else {
            self.stamp(&state)
        };
        let mut file = None;
        self.st
            .call_all_by(deadline, n, |client, gen, deadline, i| {
                if i == 0 {
                    file = Some(match of {
                        Some(of) => self.handle_for(of, client, gen, deadline)?,
                        None => FileRef::Path(self.cpath(ino)?),
                    });
                }
                Ok(build(
                    file.clone().expect("resolved for the first piece"),
                    i,
                ))
            })
            .map(|(r, m, _)| (r, m, stamp))
    }

    /// Marks the attributes of a file or directory as changing (a request about it is on its
    /// way) and returns the stamp under which those its answer carries may be kept: none
    /// unless storage's pushes are followed, as only they tell of changes made elsewhere.
    pub(crate) fn stamp(&self, state: &FileState) -> Option<u64> {
        let s = state.attrs_changing();
        self.status.following().then_some(s)
    }

    /// Keeps attributes an answer carried (see [`Core::stamp`]).
    pub(crate) fn keep_attr(&self, state: &FileState, attr: Option<Attr>, stamp: Option<u64>) {
        state.answered();
        if let (Some(attr), Some(stamp)) = (attr, stamp) {
            state.keep_attr(attr, stamp);
        }
    }

    pub(crate) fn handle_for(
        &self,
        of: &OpenFile,
        client: &Arc<Client>,
        gen: u64,
        deadline: Instant,
    ) -> Result<FileRef, Fail> {
        let mut r = lock(&of.remote);
        if let Some((g, h)) = *r {
            if g == gen {
                return Ok(FileRef::Handle(h));
            }
        }
        let path = lock(&self.nodes).cpath(of.ino).ok_or_else(|| {
            Fail::io("the file was deleted while open, and its storage handle was lost with the connection")
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        match client.call_timeout(
            Request::Open {
                path,
                flags: OpenFlags {
                    write: of.write,
                    truncate: false,
                },
            },
            left.max(Duration::from_millis(1)),
        ) {
            Ok(Response::Opened { handle, .. }) => {
                *r = Some((gen, handle));
                Ok(FileRef::Handle(handle))
            }
            Ok(other) => Err(expect_resp(other, "Opened")),
            Err(e) => Err(Fail::remote(e, false)),
        }
    }

    fn stat_ref(&self, ino: u64, of: Option<&OpenFile>) -> Result<Attr, Fail> {
        match self.file_call(ino, of, |file| Request::Stat { file })?.0 {
            Response::Attr(a) | Response::AttrWith { attr: a, .. } => Ok(a),
            r => Err(expect_resp(r, "Attr")),
        }
    }

    fn stat_path(&self, cpath: &str) -> Result<Attr, Fail> {
        self.stat_path_with_content(cpath).map(|(a, _)| a)
    }

    /// The attributes of `cpath`, and the content of a small file (`STAT_HEAD`).
    fn stat_path_with_content(&self, cpath: &str) -> Result<(Attr, Option<Vec<u8>>), Fail> {
        match self.st.call(Request::Stat {
            file: FileRef::Path(cpath.to_owned()),
        })? {
            Response::Attr(a) => Ok((a, None)),
            Response::AttrWith { attr, content } => Ok((attr, Some(content))),
            r => Err(expect_resp(r, "Attr")),
        }
    }

    fn open_file(&self, fh: u64) -> Result<Arc<OpenFile>, Fail> {
        lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| Fail::new(libc::EBADF, format!("no open file {fh}")))
    }

    fn new_fh(&self, of: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(of));
        fh
    }

    pub(crate) fn file_state(&self, ino: u64) -> Arc<FileState> {
        lock(&self.nodes)
            .map
            .get(&ino)
            .map(|n| n.file.clone())
            .unwrap_or_default()
    }

    // ---- operations ----

    pub(crate) fn lookup(&self, parent: u64, name: &[u8]) -> Result<FileAttr, Fail> {
        let (_, entry, cpath) = self.child(parent, name)?;
        self.unlink_of_settled(parent, &entry);
        // Only while storage's pushes are followed: they are what keeps a listing right.
        if self.status.following() && lock(&self.nodes).known_absent(parent, &entry) {
            return Err(Fail::new(
                libc::ENOENT,
                "no such file (its directory's entries are known)",
            ));
        }
        let known = lock(&self.nodes)
            .children
            .get(&(parent, entry.clone()))
            .copied();
        // Its size is only right once its write in flight is answered (`fresh_attr`
        // waits for it).
        if let Some(a) = known.and_then(|child| self.fresh_attr(child, None)) {
            let ino = lock(&self.nodes).register(parent, &entry, name, a.kind, a.ino);
            return Ok(self.attr_of(ino, &a));
        }
        let before = known.map_or(0, |child| self.file_state(child).changes());
        let (a, content) = self.stat_path_with_content(&cpath)?;
        // Counted as the kernel counts its lookups, whoever answered.
        let ino = lock(&self.nodes).register(parent, &entry, name, a.kind, a.ino);
        if let Some(content) = content {
            // A node new with this lookup has counted no change yet.
            let unchanged = if Some(ino) == known { before } else { 0 };
            self.hold_looked_up(ino, &a, content, unchanged);
        }
        Ok(self.attr_of(ino, &a))
    }

    /// Holds the content a lookup brought for the open and read that usually follow, if
    /// nothing changed the file since the lookup was sent (its count still `unchanged`) and
    /// pushes are followed (they drop it on a change made elsewhere).
    fn hold_looked_up(&self, ino: u64, a: &Attr, content: Vec<u8>, unchanged: u64) {
        if !self.status.following() {
            return;
        }
        self.make_room_for_looked_up(content.len());
        let state = self.file_state(ino);
        {
            let _g = state.io.write().unwrap_or_else(|p| p.into_inner());
            let mut c = lock(&state.cache);
            if c.changes != unchanged || c.content.is_some() {
                return;
            }
            c.content = Held::new(content, &self.held_looked_up, LOOKED_UP_MAX);
            if c.content.is_none() {
                return;
            }
            c.looked_up = Some((a.size, a.mtime.secs, a.mtime.nanos));
            // Answers the stat the kernel sends after the read (a read drops its atime,
            // and `tar` checks each file's attributes after reading it), under the same
            // rules as the content.
            c.fresh = Some(a.clone());
        }
        lock(&self.looked_up_order).push_back(Arc::downgrade(&state));
    }

    /// Drops the content the oldest lookups brought until `len` more bytes fit. One file's
    /// cache lock at a time: the caller holds none.
    fn make_room_for_looked_up(&self, len: usize) {
        loop {
            let full = self.held_looked_up.load(Ordering::Relaxed) + len > LOOKED_UP_MAX;
            let oldest = {
                let mut order = lock(&self.looked_up_order);
                if !full && order.len() < LOOKED_UP_FILES {
                    return;
                }
                match order.pop_front() {
                    Some(w) => w,
                    None => return,
                }
            };
            if let Some(state) = oldest.upgrade() {
                let mut c = lock(&state.cache);
                // Still the lookup's, not yet taken by an open.
                if c.looked_up.take().is_some() {
                    c.content = None;
                }
            }
        }
    }

    /// Opens a file for reading without asking storage, if its lookup brought its content
    /// and nothing changed it since: the handle is opened on storage only if a read goes
    /// past that content. The kernel drops its pages (they may be of an older version).
    fn open_looked_up(&self, ino: u64, state: &Arc<FileState>) -> Option<u64> {
        if !self.status.following() || !super::behind::idle(state) {
            return None;
        }
        {
            let _g = state.io.write().unwrap_or_else(|p| p.into_inner());
            let mut c = lock(&state.cache);
            let seen = c.looked_up.take()?;
            let header = c.content.as_ref()?.header();
            c.clen = Some(seen.0);
            c.header = header;
            c.seen = Some(seen);
        }
        Some(self.new_fh(OpenFile {
            ino,
            write: false,
            remote: Mutex::new(None),
            file: state.clone(),
            ahead: Mutex::default(),
        }))
    }

    /// Whether `name` in `parent` can be answered "no such file" at once, without waiting
    /// for storage or for a lock held across a request (so on fuser's reading thread): its
    /// directory's IV is known and so are its entries.
    pub(crate) fn known_absent_now(&self, parent: u64, name: &[u8]) -> bool {
        if !self.status.following() {
            return false;
        }
        match self.child_now(parent, name) {
            Some((_, entry)) => lock(&self.nodes).known_absent(parent, &entry),
            None => false,
        }
    }

    /// The encrypted name and entry of `parent/name` if the directory's IV is known, so
    /// without asking storage (see [`Core::child`]).
    pub(crate) fn child_now(&self, parent: u64, name: &[u8]) -> Option<(EncryptedName, String)> {
        let iv = self.known_dir_iv(parent)?;
        let en = self.vol.names().encrypt_name(&iv, name).ok()?;
        let entry = String::from_utf8(en.entry().to_vec()).ok()?;
        Some((en, entry))
    }

    /// The attributes the last change made here left, if they can be given at once
    /// (see [`Core::known_absent_now`]): no write of the file is in flight.
    pub(crate) fn getattr_now(&self, ino: u64, fh: Option<u64>) -> Option<FileAttr> {
        self.attr_now(ino, fh, FileState::take_attr)
    }

    /// The attributes to answer an ownership change with at once (see
    /// [`Core::getattr_now`]): storage does not keep ownership, so nothing changes.
    pub(crate) fn chown_now(&self, ino: u64, fh: Option<u64>) -> Option<FileAttr> {
        self.attr_now(ino, fh, FileState::attr_for_unkept_change)
    }

    fn attr_now(
        &self,
        ino: u64,
        fh: Option<u64>,
        kept: fn(&FileState) -> Option<Attr>,
    ) -> Option<FileAttr> {
        if !self.status.following() {
            return None;
        }
        let of = fh.and_then(|fh| lock(&self.files).get(&fh).cloned());
        let state = self.state_of(ino, of.as_deref());
        // Attribute changes in flight (behind.rs) leave what they were answered with.
        if let Some(a) = self.expected_attr(&state) {
            return Some(self.attr_of(ino, &a));
        }
        if !super::behind::idle(&state) {
            return None;
        }
        if let Some(a) = self.attr_while_unlinking(&state) {
            return Some(self.attr_of(ino, &a));
        }
        let a = kept(&state)?;
        Some(self.attr_of(ino, &a))
    }

    pub(crate) fn forget(&self, ino: u64, n: u64) {
        lock(&self.nodes).forget(ino, n);
    }

    /// An open handle of `ino`: the kernel sends fstat without one, and a file unlinked
    /// while open is only reachable through its handle.
    fn any_handle(&self, ino: u64) -> Option<Arc<OpenFile>> {
        lock(&self.files).values().find(|f| f.ino == ino).cloned()
    }

    pub(crate) fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Fail> {
        let mut of = fh.and_then(|fh| lock(&self.files).get(&fh).cloned());
        if of.is_none() && lock(&self.nodes).cpath(ino).is_none() {
            of = self.any_handle(ino);
        }
        if let Some(a) = self.fresh_attr(ino, of.as_deref()) {
            return Ok(self.attr_of(ino, &a));
        }
        let a = self.stat_ref(ino, of.as_deref())?;
        Ok(self.attr_of(ino, &a))
    }

    /// The attributes the last change made here left (a write to a file; an entry made or
    /// removed in a directory), if nothing may have changed them since: the kernel drops a
    /// file's attributes after every write and a directory's after every such change, and
    /// asks again at the next stat or permission check. Only while pushes are followed,
    /// which drop them on a change made elsewhere.
    fn fresh_attr(&self, ino: u64, of: Option<&OpenFile>) -> Option<Attr> {
        let state = self.state_of(ino, of);
        if let Some(a) = self.attr_while_unlinking(&state) {
            return Some(a);
        }
        self.settle(&state);
        let a = state.take_attr()?;
        self.status.following().then_some(a)
    }

    /// Requests about the entry `entry` of `parent` (an unlink, a rename) change the
    /// attributes of the file it names (its link count, its ctime).
    pub(crate) fn entry_attrs_changing(&self, parent: u64, entry: &str) {
        let child = lock(&self.nodes)
            .children
            .get(&(parent, entry.to_owned()))
            .copied();
        if let Some(ino) = child {
            self.file_state(ino).attrs_changing();
        }
    }

    pub(crate) fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Fail> {
        let mut of = fh.and_then(|fh| lock(&self.files).get(&fh).cloned());
        if of.is_none() && lock(&self.nodes).cpath(ino).is_none() {
            of = self.any_handle(ino);
        }
        if let Some(size) = size {
            self.truncate(ino, of.as_deref(), size)?;
        }
        let mut last = None;
        if mode.is_some() || atime.is_some() || mtime.is_some() {
            let sa = SetAttr {
                mode: mode.map(|m| m & 0o7777),
                size: None,
                atime: atime.map(to_timeset),
                mtime: mtime.map(to_timeset),
            };
            if size.is_none() {
                if let Some(a) = self.set_attr_behind(&self.state_of(ino, of.as_deref()), sa) {
                    return Ok(self.attr_of(ino, &a));
                }
            }
            let (mut answers, _, stamp) =
                self.file_calls_stamped(ino, of.as_deref(), true, 1, |file, _| Request::SetAttr {
                    file,
                    attr: sa,
                })?;
            match answers.remove(0) {
                Response::Attr(a) => {
                    // Kept for what follows at once when a file is unpacked or copied
                    // with its metadata (`tar`, `cp -a` as root): an ownership change,
                    // which storage does not keep and so need not be asked about.
                    self.keep_attr(&self.state_of(ino, of.as_deref()), Some(a.clone()), stamp);
                    last = Some(a);
                }
                r => return Err(expect_resp(r, "Attr")),
            }
        }
        let a = match last {
            Some(a) => a,
            // An ownership change alone (not kept by storage; see [`Core::chown_now`]).
            None => {
                let state = self.state_of(ino, of.as_deref());
                self.settle(&state);
                match state
                    .attr_for_unkept_change()
                    .filter(|_| self.status.following())
                {
                    Some(a) => a,
                    None => self.stat_ref(ino, of.as_deref())?,
                }
            }
        };
        Ok(self.attr_of(ino, &a))
    }

    /// Runs `f` over the file's ciphertext with its cached length and header; the cache is
    /// refreshed once if the ciphertext turned out shorter than cached (changed elsewhere).
    /// `reading`: a read, after which content held whole is held again for the next read
    /// of the same handle (the kernel reads a small file's partial last page on its own).
    #[allow(clippy::too_many_arguments)] // each is a distinct part of one file operation
    fn with_crypt<T>(
        &self,
        ino: u64,
        of: Option<&OpenFile>,
        behind: Option<&Arc<OpenFile>>,
        state: &FileState,
        reading: bool,
        mut f: impl FnMut(&mut CryptFile<Remote<'_>>, &mut ContentCipher) -> Result<T, FormatError>,
    ) -> Result<T, Fail> {
        for attempt in 0..2 {
            let (clen, header, content, tail, changes, forgotten) = {
                let mut c = lock(&state.cache);
                if !reading {
                    // Whatever this does to the content, bytes read ahead of it are stale.
                    c.content_changed += 1;
                }
                let content = if attempt == 0 { c.content.take() } else { None };
                let tail = if attempt == 0 { c.tail.take() } else { None };
                (c.clen, c.header, content, tail, c.changes, c.forgotten)
            };
            let clen = match clen {
                Some(l) if attempt == 0 => l,
                _ => self.stat_ref(ino, of)?.size,
            };
            let mut remote = Remote::new(
                self,
                ino,
                of,
                clen,
                if attempt == 0 { header } else { None },
            );
            remote.behind = behind;
            remote.tail = tail;
            remote.read_ahead = reading;
            if let Some(held) = content.filter(|h| h.len() as u64 == clen) {
                remote.pre = Some(held.into_bytes());
            }
            // Storage is only reached outside CryptFile::open, so its failures keep their
            // errno; what CryptFile reports after this is about the bytes.
            if let Err(f) = remote.load_header() {
                lock(&state.cache).clen = None;
                return Err(f);
            }
            let (res, mut remote) = match CryptFile::open(remote) {
                Ok(mut cf) => {
                    let r = self.with_cc(|cc| f(&mut cf, cc))?;
                    let mut remote = cf.into_inner();
                    let r = match r {
                        Ok(v) => match remote.flush_header() {
                            Ok(()) => Ok(v),
                            Err(fail) => {
                                remote.err = Some(fail);
                                Err(FormatError::Store(io::Error::other("header write failed")))
                            }
                        },
                        e => e,
                    };
                    (r, remote)
                }
                Err(e) => (Err(e), Remote::new(self, ino, of, clen, None)),
            };
            match res {
                Ok(v) => {
                    let mut c = lock(&state.cache);
                    c.put_back(forgotten, remote.clen, remote.header, remote.tail.take());
                    let whole = remote.pre.take().filter(|p| p.len() as u64 == remote.clen);
                    let read_only = of.is_some_and(|o| !o.write);
                    if let Some(bytes) =
                        whole.filter(|_| reading && read_only && c.changes == changes)
                    {
                        if c.content.is_none() {
                            // Dropped at the handle's release like content from the open.
                            c.content = Held::new(bytes, &self.held, HELD_MAX);
                        }
                    }
                    return Ok(v);
                }
                Err(e) => {
                    {
                        let mut c = lock(&state.cache);
                        c.clen = None;
                        c.header = None;
                    }
                    if let Some(fail) = remote.err {
                        return Err(fail);
                    }
                    // The cached size may be stale (the file changed elsewhere): look
                    // again once before calling the ciphertext corrupt.
                    if attempt == 0 {
                        continue;
                    }
                    return Err(Fail::io(format!(
                        "the ciphertext is corrupt or was tampered with: {e}"
                    )));
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn truncate(&self, ino: u64, of: Option<&OpenFile>, size: u64) -> Result<(), Fail> {
        let state = self.file_state(ino);
        let _g = state.io.write().unwrap_or_else(|p| p.into_inner());
        self.with_crypt(ino, of, None, &state, false, |cf, cc| cf.truncate(cc, size))?;
        Ok(())
    }

    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>, Fail> {
        let cpath = self.cpath(ino)?;
        let t = match self.st.call(Request::ReadLink { path: cpath })? {
            Response::LinkTarget(t) => t,
            r => return Err(expect_resp(r, "LinkTarget")),
        };
        self.with_cc(|cc| self.vol.names().decrypt_symlink_target(cc, &t))?
            .map_err(|e| {
                Fail::io(format!(
                    "the symlink target is corrupt or was tampered with: {e}"
                ))
            })
    }

    /// Runs an operation that adds an entry to `dir`; when it fails, the entry may exist on
    /// storage anyway (an answer lost with the connection), so the listing is no longer known.
    fn adding_entry<T>(&self, dir: u64, op: impl FnOnce() -> Result<T, Fail>) -> Result<T, Fail> {
        let state = self.file_state(dir);
        self.unlinks_settled(&state);
        state.attrs_changing();
        let r = op();
        if r.is_err() {
            lock(&self.nodes).unknown_entries(dir);
        }
        r
    }

    pub(crate) fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> Result<FileAttr, Fail> {
        self.adding_entry(parent, || self.make_dir(parent, name, mode))
    }

    fn make_dir(&self, parent: u64, name: &[u8], mode: u32) -> Result<FileAttr, Fail> {
        let (en, entry, cpath) = self.child(parent, name)?;
        self.write_long_name(&en, &cpath)?;
        let mode = mode & 0o7777;
        let (a, iv) = if self.vol.names().uses_dir_iv() && self.storage_has(features::MKDIR_WITH) {
            self.mkdir_with_iv(parent, &en, &cpath, mode)?
        } else {
            self.mkdir_then_iv(&en, &cpath, mode)?
        };
        let following = self.status.following();
        let ino = {
            let mut nodes = lock(&self.nodes);
            let ino = nodes.register(parent, &entry, name, a.kind, a.ino);
            // Made while pushes were not followed, a change from elsewhere could already
            // be missed.
            if following {
                nodes.know_entries(ino);
            }
            // The IV it was made with: the first name made inside needs no round trip.
            if let (Some(iv), Some(n)) = (iv, nodes.map.get_mut(&ino)) {
                n.diriv = Some(iv);
            }
            ino
        };
        Ok(self.attr_of(ino, &a))
    }

    /// Whether the storage connection up now has `feature`.
    fn storage_has(&self, feature: u32) -> bool {
        self.st
            .current()
            .is_some_and(|(client, _)| client.session().features & feature != 0)
    }

    /// Makes the directory and its IV in one request (`MkdirWith`): one round trip and one
    /// flush instead of a `Mkdir`, a `Put` (whose staged file and parent directory are both
    /// flushed) and a `Stat`. Returns its attributes and, if this request made it, its IV.
    fn mkdir_with_iv(
        &self,
        parent: u64,
        en: &EncryptedName,
        cpath: &str,
        mode: u32,
    ) -> Result<(Attr, Option<DirIv>), Fail> {
        let iv = DirIv::new_random().map_err(|e| Fail::io(format!("random IV: {e}")))?;
        let dir = self.file_state(parent);
        let stamp = self.stamp(&dir);
        let made = self.st.call_with(|_, _, _| {
            Ok(Request::MkdirWith {
                path: cpath.to_owned(),
                mode,
                file: DIRIV_NAME.into(),
                content: iv.0.to_vec(),
                file_mode: DIRIV_MODE,
            })
        });
        let (a, made_here) = match made {
            Ok((Response::Made { attr, parent }, _, _)) => {
                self.keep_attr(&dir, Some(parent), stamp);
                (attr, Some(iv))
            }
            Ok((r, _, _)) => return Err(expect_resp(r, "Made")),
            // Made by this request before the connection was lost (one step, so with its IV),
            // or by someone else meanwhile: its IV is read when needed.
            Err(f) if f.maybe_applied && f.is(ErrorCode::Exists) => (self.stat_path(cpath)?, None),
            Err(f) => {
                if !f.is(ErrorCode::Exists) {
                    self.remove_long_name(en, cpath);
                }
                return Err(f);
            }
        };
        Ok((a, made_here))
    }

    /// Makes the directory, then its IV (gocryptfs node_dir.go `Mkdir`), for a storage
    /// agent without `MkdirWith`.
    fn mkdir_then_iv(
        &self,
        en: &EncryptedName,
        cpath: &str,
        mode: u32,
    ) -> Result<(Attr, Option<DirIv>), Fail> {
        match self.st.call_with(|_, _, _| {
            Ok(Request::Mkdir {
                path: cpath.to_owned(),
                mode,
            })
        }) {
            Ok(_) => {}
            Err(f) if f.maybe_applied && f.is(ErrorCode::Exists) => {}
            Err(f) => {
                if !f.is(ErrorCode::Exists) {
                    self.remove_long_name(en, cpath);
                }
                return Err(f);
            }
        }
        match self.finish_mkdir(cpath) {
            Ok(made) => Ok(made),
            Err(f) => {
                // gocryptfs node_dir.go Mkdir: a directory without its IV is unusable.
                let _ = self.st.call(Request::Unlink {
                    path: join(cpath, DIRIV_NAME),
                });
                let _ = self.st.call(Request::Rmdir {
                    path: cpath.to_owned(),
                });
                self.remove_long_name(en, cpath);
                Err(f)
            }
        }
    }

    /// The new directory's IV (gocryptfs node_dir.go `Mkdir`) and its attributes. gocryptfs
    /// makes the directory 0700 so that the IV can be written, then gives it its mode; the
    /// mode is given at once here, since storage keeps every directory writable to itself
    /// on disk whatever its mode (every storage agent has: older ones showed owner rwx).
    fn finish_mkdir(&self, cpath: &str) -> Result<(Attr, Option<DirIv>), Fail> {
        // Volumes with deterministic or plaintext names have no per-directory IV.
        let mut made_here = None;
        if self.vol.names().uses_dir_iv() {
            let iv = DirIv::new_random().map_err(|e| Fail::io(format!("random IV: {e}")))?;
            match self
                .st
                .put(&join(cpath, DIRIV_NAME), &iv.0, DIRIV_MODE, Expect::Absent)
            {
                Ok(()) => made_here = Some(iv),
                // Put before the connection was lost, or by someone else: read when needed.
                Err(f) if f.maybe_applied && f.is(ErrorCode::Conflict) => {}
                Err(f) => return Err(f),
            }
        }
        Ok((self.stat_path(cpath)?, made_here))
    }

    pub(crate) fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Fail> {
        self.adding_entry(parent, || self.create_file(parent, name, mode, flags))
    }

    fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Fail> {
        let (en, entry, cpath) = self.child(parent, name)?;
        self.write_long_name(&en, &cpath)?;
        let exclusive = flags & libc::O_EXCL != 0;
        let dir = self.file_state(parent);
        let stamp = self.stamp(&dir);
        let (resp, gen) = match self.st.call_with(|_, _, _| {
            Ok(Request::Create {
                path: cpath.clone(),
                mode: mode & 0o7777,
                exclusive,
            })
        }) {
            Ok((r, _, gen)) => (r, gen),
            Err(f) if f.maybe_applied && f.is(ErrorCode::Exists) => {
                let (r, _, gen) = self.st.call_with(|_, _, _| {
                    Ok(Request::Open {
                        path: cpath.clone(),
                        flags: OpenFlags {
                            write: true,
                            truncate: false,
                        },
                    })
                })?;
                (r, gen)
            }
            Err(f) => return Err(f),
        };
        let (handle, a) = match resp {
            Response::Opened { handle, attr } => (handle, attr),
            Response::Created {
                handle,
                attr,
                parent: dir_attr,
            } => {
                self.keep_attr(&dir, Some(dir_attr), stamp);
                (handle, attr)
            }
            r => return Err(expect_resp(r, "Opened")),
        };
        let ino = lock(&self.nodes).register(parent, &entry, name, a.kind, a.ino);
        let file = self.file_state(ino);
        {
            let mut c = lock(&file.cache);
            c.clen = Some(a.size);
            c.header = None;
            c.seen = None;
            c.base = Some(a.clone());
        }
        let fh = self.new_fh(OpenFile {
            ino,
            write: true,
            remote: Mutex::new(Some((gen, handle))),
            file,
            ahead: Mutex::default(),
        });
        Ok((self.attr_of(ino, &a), fh))
    }

    /// Opens a file; the flag says whether the kernel may keep its cached pages (the file
    /// is unchanged since it was last seen).
    pub(crate) fn open(&self, ino: u64, flags: i32) -> Result<(u64, bool), Fail> {
        // A truncating open must not overtake a write still on its way.
        let state = self.file_state(ino);
        let read_only = flags & (libc::O_ACCMODE | libc::O_TRUNC) == libc::O_RDONLY;
        if read_only {
            if let Some(fh) = self.open_looked_up(ino, &state) {
                return Ok((fh, false));
            }
        }
        let stamp = self.settle_then_count(&state);
        let cpath = self.cpath(ino)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        let (resp, _, gen) = self.st.call_with(|_, _, _| {
            Ok(Request::Open {
                path: cpath.clone(),
                flags: OpenFlags { write, truncate },
            })
        })?;
        let (handle, a, content) = match resp {
            Response::Opened { handle, attr } => (handle, attr, None),
            Response::OpenedWith {
                handle,
                attr,
                content,
            } => (handle, attr, Some(content)),
            r => return Err(expect_resp(r, "Opened")),
        };
        let file = state;
        let keep = {
            let _g = file.io.write().unwrap_or_else(|p| p.into_inner());
            let mut c = lock(&file.cache);
            if c.changes != stamp {
                // A write through another handle of the file went out while this open was
                // on its way, so the size the answer carries may be from before it: cached
                // as the ciphertext's length, the next partial-block write would have
                // rewritten a block as the file's shorter last one. Left unknown, to be
                // asked once that write is answered.
                c.clen = None;
                c.header = None;
                c.seen = None;
                false
            } else {
                let now = (a.size, a.mtime.secs, a.mtime.nanos);
                let keep = c.seen == Some(now) && !truncate;
                if !keep {
                    c.clen = Some(a.size);
                    c.header = None;
                    // The kernel will read: the content that came with the open serves the
                    // first read (were the kernel to keep its pages, it would be dead weight).
                    let whole = content.filter(|d| d.len() as u64 == a.size);
                    c.content = whole.and_then(|d| Held::new(d, &self.held, HELD_MAX));
                    if let Some(h) = c.content.as_ref().and_then(|h| h.header()) {
                        c.header = Some(h);
                    }
                }
                c.seen = Some(now);
                if !write {
                    // For the stat the kernel sends after a read (see `hold_looked_up`).
                    c.fresh = Some(a.clone());
                }
                keep
            }
        };
        let fh = self.new_fh(OpenFile {
            ino,
            write,
            remote: Mutex::new(Some((gen, handle))),
            file,
            ahead: Mutex::default(),
        });
        if read_only {
            self.read_ahead(ino);
        }
        Ok((fh, keep))
    }

    /// Fetches the content of the small files listed after `ino` in its directory's kept
    /// listing, after an open of `ino` that had to ask storage: a program going through a
    /// directory in listing order then opens the next ones without a round trip each
    /// ([`Core::open_looked_up`]), and this open waits one more round trip, not one per
    /// file. Each is a `Stat` with content (`STAT_HEAD`), held as a lookup's would be, so
    /// the same rules keep it right: nothing changed here since it was asked for, pushes
    /// followed. Files with a write in flight or content already held are skipped, and only
    /// free slots of the in-flight window are used, leaving [`READ_AHEAD_SPARE`] to others.
    fn read_ahead(&self, ino: u64) {
        if !self.status.following() || !self.storage_has(features::STAT_HEAD) {
            return;
        }
        let Some((parent, cname)) = lock(&self.nodes)
            .map
            .get(&ino)
            .and_then(|n| n.names.last())
            .map(|n| (n.parent, n.cname.clone()))
        else {
            return;
        };
        let Some(listing) = lock(&self.listings)
            .iter()
            .rev()
            .find(|l| l.dir == parent)
            .cloned()
        else {
            return;
        };
        let at = listing.at.get_or_init(|| {
            listing
                .items
                .iter()
                .enumerate()
                .filter(|(_, it)| !it.cname.is_empty())
                .map(|(i, it)| (it.cname.clone(), i))
                .collect()
        });
        let (Some(&pos), Ok(dir_cpath), Some((client, _))) =
            (at.get(&cname), self.cpath(parent), self.st.current())
        else {
            return;
        };
        // The small regular files among the next entries that the mount knows, with their
        // state, under one lock of the inode table.
        let candidates: Vec<(u64, &str, Arc<FileState>)> = {
            let nodes = lock(&self.nodes);
            let mut key = (parent, String::new());
            listing
                .items
                .iter()
                .skip(pos + 1)
                .take(READ_AHEAD_ENTRIES)
                .filter(|it| {
                    it.kind == FileType::File
                        && it.attr.as_ref().is_some_and(|a| a.size <= STAT_HEAD_MAX)
                })
                .filter_map(|it| {
                    it.cname.clone_into(&mut key.1);
                    let child = *nodes.children.get(&key)?;
                    let state = nodes.map.get(&child)?.file.clone();
                    Some((child, it.cname.as_str(), state))
                })
                .collect()
        };
        let mut started = Vec::new();
        for (child, cname, state) in candidates {
            if lock(&state.cache).content.is_some() {
                continue;
            }
            let Some(unchanged) = super::behind::changes_if_idle(&state) else {
                continue;
            };
            let stat = Request::Stat {
                file: FileRef::Path(join(&dir_cpath, cname)),
            };
            match client.begin_if_room(&stat, self.st.timeout, READ_AHEAD_SPARE) {
                Ok(Some(pending)) => started.push((child, pending, unchanged)),
                _ => break,
            }
        }
        for (child, pending, unchanged) in started {
            if let Ok(Response::AttrWith { attr, content }) = pending.wait() {
                if attr.kind == FileType::File {
                    self.hold_looked_up(child, &attr, content, unchanged);
                }
            }
        }
    }

    /// The answer to a read of `len` bytes of ciphertext at `offset` through `of` (a file
    /// `clen` bytes long) if its reader streams (ahead.rs): asked ahead, or asked now with
    /// the ranges after it. `None` for any other read, and for anything gone wrong on the
    /// way: the caller then reads as usual, with its retries and its errors, by the
    /// deadline the read started with (a call asked ahead that timed out or lost its
    /// connection does not give the read a second time limit).
    fn read_streaming(
        &self,
        of: &OpenFile,
        offset: u64,
        len: usize,
        clen: u64,
    ) -> Option<Response> {
        if len < super::ahead::MIN_READ {
            return None;
        }
        // As any read: after the writes on their way, counted as a request about the file.
        self.settle_then_count(&of.file);
        let count = lock(&of.file.cache).content_count();
        let (client, gen) = self.st.current()?;
        let deadline = Instant::now() + self.st.timeout;
        let file = self.handle_for(of, &client, gen, deadline).ok()?;
        let call = lock(&of.ahead).next(
            offset,
            len,
            clen,
            (count, gen),
            &self.asked_ahead,
            |offset, len| {
                let read = Request::Read {
                    file: file.clone(),
                    offset,
                    len: len as u32,
                };
                client
                    .begin_if_room(&read, self.st.timeout, READ_AHEAD_SPARE)
                    .ok()
                    .flatten()
            },
        )?;
        call.wait().ok().filter(|r| matches!(r, Response::Data(_)))
    }

    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Fail> {
        let of = self.open_file(fh)?;
        let _g = of.file.io.read().unwrap_or_else(|p| p.into_inner());
        self.with_crypt(of.ino, Some(&of), None, &of.file, true, |cf, cc| {
            cf.read_vec(cc, offset, size as usize)
        })
    }

    pub(crate) fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Fail> {
        let of = self.open_file(fh)?;
        self.status.write_started();
        let res = {
            let _g = of.file.io.write().unwrap_or_else(|p| p.into_inner());
            self.with_crypt(of.ino, Some(&of), Some(&of), &of.file, false, |cf, cc| {
                cf.write(cc, offset, data)
            })
        };
        self.status.write_ended();
        res?;
        // Our own write changes size and mtime: the pages in the kernel are still right.
        Ok(data.len() as u32)
    }

    pub(crate) fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Fail> {
        let of = self.open_file(fh)?;
        self.write_error(&of.file)?;
        self.file_call(of.ino, Some(&of), |file| Request::Fsync { file, datasync })?;
        Ok(())
    }

    /// Makes the entries of directory `ino` durable: storage fsyncs the directory (it
    /// flushes namespace changes lazily, like a local filesystem).
    pub(crate) fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<(), Fail> {
        self.file_call(ino, None, |file| Request::Fsync { file, datasync })?;
        Ok(())
    }

    pub(crate) fn release(&self, fh: u64) {
        let Some(of) = lock(&self.files).remove(&fh) else {
            return;
        };
        // Content from the open that no read took is not held past the handle, nor the
        // last block a writer kept for its next append.
        if of.write {
            lock(&of.file.cache).tail = None;
        } else {
            lock(&of.file.cache).content = None;
        }
        // Not reported to the application unless it wrote again or called fsync: the
        // handle is gone, so the log and the status say it (see behind.rs).
        if let Err(f) = self.write_error(&of.file) {
            let shown = self.shown(of.ino);
            tracing::error!(volume = %self.opts.volume_name, path = %shown, "write {shown}: failed after it was answered: {}", f.msg);
            self.status.set_error(format!("write {shown}: {}", f.msg));
        }
        let Some((g, h)) = *lock(&of.remote) else {
            return;
        };
        // A handle of an earlier connection died with it; nothing to close. Nothing waits
        // for the answer either (a close has nothing to report, and the kernel does not
        // wait for a release): the call is dropped once sent, and its answer with it.
        if let Some((client, gen)) = self.st.current() {
            if gen == g {
                drop(client.begin(&Request::Close { handle: h }, self.opts.request_timeout));
            }
        }
    }

    pub(crate) fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), Fail> {
        let (en, entry, cpath) = self.child(parent, name)?;
        if !matches!(en, EncryptedName::Long { .. })
            && self
                .unlink_behind(parent, &entry, &cpath, self.shown_child(parent, name), true)
                .is_some()
        {
            return Ok(());
        }
        self.entry_attrs_changing(parent, &entry);
        let dir = self.file_state(parent);
        self.unlinks_settled(&dir);
        let stamp = self.stamp(&dir);
        match self.st.call_with(|_, _, _| {
            Ok(Request::Unlink {
                path: cpath.clone(),
            })
        }) {
            // A long name's `.name` file goes next, which changes the directory again.
            Ok((Response::Unlinked { parent: dir_attr }, _, _))
                if !matches!(en, EncryptedName::Long { .. }) =>
            {
                self.keep_attr(&dir, Some(dir_attr), stamp)
            }
            Ok(_) => {}
            Err(f) if f.maybe_applied && f.is(ErrorCode::NotFound) => {}
            Err(f) => return Err(f),
        }
        self.remove_long_name(&en, &cpath);
        lock(&self.nodes).detach(parent, &entry);
        Ok(())
    }

    /// Removes an empty ciphertext directory: its diriv first (gocryptfs node_dir.go
    /// `Rmdir`), put back if the directory turns out not to be empty.
    fn rmdir_cpath(&self, cpath: &str) -> Result<(), Fail> {
        let page = match self.st.call(Request::ReadDir {
            path: cpath.to_owned(),
            cookie: 0,
            max: 4,
            with_attrs: false,
        })? {
            Response::DirPage(p) => p,
            r => return Err(expect_resp(r, "DirPage")),
        };
        if page.entries.iter().any(|e| e.name != DIRIV_NAME) {
            return Err(Fail::new(libc::ENOTEMPTY, format!("{cpath} is not empty")));
        }
        let ivp = join(cpath, DIRIV_NAME);
        let iv = if page.entries.is_empty() {
            None
        } else {
            let d = self.read_small(&ivp)?;
            match self
                .st
                .call_with(|_, _, _| Ok(Request::Unlink { path: ivp.clone() }))
            {
                Ok(_) => {}
                Err(f) if f.maybe_applied && f.is(ErrorCode::NotFound) => {}
                Err(f) => return Err(f),
            }
            Some(d)
        };
        match self.st.call_with(|_, _, _| {
            Ok(Request::Rmdir {
                path: cpath.to_owned(),
            })
        }) {
            Ok(_) => Ok(()),
            Err(f) if f.maybe_applied && f.is(ErrorCode::NotFound) => Ok(()),
            Err(f) => {
                if let Some(d) = iv {
                    let _ = self.st.put(&ivp, &d, DIRIV_MODE, Expect::Absent);
                }
                Err(f)
            }
        }
    }

    pub(crate) fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), Fail> {
        let (en, entry, cpath) = self.child(parent, name)?;
        let dir = self.file_state(parent);
        self.unlinks_settled(&dir);
        let child = lock(&self.nodes)
            .children
            .get(&(parent, entry.clone()))
            .copied();
        if let Some(child) = child {
            self.dir_unlinks_settled(child);
        }
        dir.attrs_changing();
        self.rmdir_cpath(&cpath)?;
        self.remove_long_name(&en, &cpath);
        lock(&self.nodes).detach(parent, &entry);
        Ok(())
    }

    pub(crate) fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<FileAttr, Fail> {
        self.adding_entry(parent, || self.make_symlink(parent, name, target))
    }

    fn make_symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<FileAttr, Fail> {
        let (en, entry, cpath) = self.child(parent, name)?;
        let enc = self
            .with_cc(|cc| self.vol.names().encrypt_symlink_target(cc, target))?
            .map_err(|e| Fail::new(libc::ENAMETOOLONG, format!("symlink target: {e}")))?;
        self.write_long_name(&en, &cpath)?;
        match self.st.call_with(|_, _, _| {
            Ok(Request::Symlink {
                path: cpath.clone(),
                target: enc.clone(),
            })
        }) {
            Ok(_) => {}
            Err(f) if f.maybe_applied && f.is(ErrorCode::Exists) => {}
            Err(f) => {
                if !f.is(ErrorCode::Exists) {
                    self.remove_long_name(&en, &cpath);
                }
                return Err(f);
            }
        }
        let a = self.stat_path(&cpath)?;
        let ino = lock(&self.nodes).register(parent, &entry, name, a.kind, a.ino);
        Ok(self.attr_of(ino, &a))
    }

    pub(crate) fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<FileAttr, Fail> {
        self.adding_entry(newparent, || self.make_link(ino, newparent, newname))
    }

    fn make_link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<FileAttr, Fail> {
        let existing = self.cpath(ino)?;
        self.file_state(ino).attrs_changing();
        let (en, entry, cpath) = self.child(newparent, newname)?;
        self.write_long_name(&en, &cpath)?;
        match self.st.call_with(|_, _, _| {
            Ok(Request::Link {
                existing: existing.clone(),
                new: cpath.clone(),
            })
        }) {
            Ok(_) => {}
            Err(f) if f.maybe_applied && f.is(ErrorCode::Exists) => {}
            Err(f) => {
                if !f.is(ErrorCode::Exists) {
                    self.remove_long_name(&en, &cpath);
                }
                return Err(f);
            }
        }
        let a = self.stat_path(&cpath)?;
        let ino = lock(&self.nodes).register(newparent, &entry, newname, a.kind, a.ino);
        Ok(self.attr_of(ino, &a))
    }

    pub(crate) fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Fail> {
        // An unlink on its way names its file by path, and is sent by that path again
        // after a lost connection: the rename of a directory above it must wait for it.
        self.all_unlinks_settled(self.opts.request_timeout * 2);
        self.adding_entry(newparent, || {
            self.rename_entry(parent, name, newparent, newname, flags)
        })
    }

    fn rename_entry(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Fail> {
        let mode = match flags {
            0 => RenameMode::Replace,
            libc::RENAME_NOREPLACE => RenameMode::NoReplace,
            libc::RENAME_EXCHANGE => RenameMode::Exchange,
            _ => {
                return Err(Fail::new(
                    libc::EINVAL,
                    format!("rename flags {flags:#x} are not supported"),
                ))
            }
        };
        let (from_en, from_entry, from) = self.child(parent, name)?;
        let (to_en, to_entry, to) = self.child(newparent, newname)?;
        self.entry_attrs_changing(parent, &from_entry);
        self.entry_attrs_changing(newparent, &to_entry);
        self.file_state(parent).attrs_changing();
        self.write_long_name(&to_en, &to)?;
        let attempt = || {
            let mut sent = false;
            self.st.call_with(|_, _, _| {
                // An exchange sent again would undo itself if the first one was applied
                // before the connection broke: fail instead of guessing.
                if sent && mode == RenameMode::Exchange {
                    return Err(Fail::io(
                        "the storage connection broke during an exchange; it may or may not have happened",
                    ));
                }
                sent = true;
                Ok(Request::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    mode,
                })
            })
        };
        match attempt() {
            Ok(_) => {}
            Err(f) if f.maybe_applied && f.is(ErrorCode::NotFound) => {}
            // A directory over an empty directory: storage sees the target's diriv, so
            // remove the target first (gocryptfs node.go `Rename` does the same).
            Err(f)
                if mode == RenameMode::Replace
                    && (f.is(ErrorCode::NotEmpty) || f.is(ErrorCode::Exists)) =>
            {
                let src = self.stat_path(&from)?;
                let dst = self.stat_path(&to)?;
                if src.kind != FileType::Dir || dst.kind != FileType::Dir {
                    return Err(f);
                }
                self.rmdir_cpath(&to)?;
                attempt()?;
            }
            Err(f) => {
                if !matches!(to_en, EncryptedName::Long { .. }) || f.is(ErrorCode::Exists) {
                    return Err(f);
                }
                // The target's .name file is only ours if the target did not exist.
                if self.stat_path(&to).is_err() {
                    self.remove_long_name(&to_en, &to);
                }
                return Err(f);
            }
        }
        let mut nodes = lock(&self.nodes);
        if mode == RenameMode::Exchange {
            nodes.exchange((parent, &from_entry, name), (newparent, &to_entry, newname));
        } else {
            nodes.rename((parent, &from_entry), (newparent, &to_entry), newname);
            drop(nodes);
            if from != to {
                self.remove_long_name(&from_en, &from);
            }
        }
        Ok(())
    }

    pub(crate) fn statfs(&self) -> Result<cloudstore_protocol::StatFs, Fail> {
        match self.st.call(Request::StatFs)? {
            Response::StatFs(s) => Ok(s),
            r => Err(expect_resp(r, "StatFs")),
        }
    }

    /// The directory's IV and the first page of its listing, asked for together (one round
    /// trip where the IV is not known yet, as after the kernel forgot the directory). `None`
    /// when either fails: the caller asks again one at a time, for the precise error.
    fn dir_iv_and_first_page(
        &self,
        ino: u64,
        cpath: &str,
    ) -> Option<(DirIv, cloudstore_protocol::DirPage)> {
        let (mut answers, _, _) = self
            .st
            .call_all(2, |_, _, _, i| {
                Ok(match i {
                    0 => Self::read_dir_request(cpath, 0),
                    _ => Self::read_diriv_request(cpath),
                })
            })
            .ok()?;
        let (Response::Data(d), Response::DirPage(page)) = (answers.pop()?, answers.pop()?) else {
            return None;
        };
        let iv = DirIv::parse(&d).ok()?;
        if let Some(n) = lock(&self.nodes).map.get_mut(&ino) {
            n.diriv = Some(iv);
        }
        Some((iv, page))
    }

    fn read_dir_request(cpath: &str, cookie: u64) -> Request {
        Request::ReadDir {
            path: cpath.to_owned(),
            cookie,
            max: cloudstore_protocol::MAX_READDIR_PAGE as u32,
            with_attrs: true,
        }
    }

    /// Lists a directory whole at opendir (pages of 1024 from storage), names decrypted;
    /// undecryptable names are logged and left out, as gocryptfs does.
    pub(crate) fn opendir(&self, ino: u64) -> Result<u64, Fail> {
        self.dir_unlinks_settled(ino);
        let cpath = self.cpath(ino)?;
        let mut asked_at = change_clock();
        let (iv, mut first_page) = match self.known_dir_iv(ino) {
            Some(iv) => (iv, None),
            None => match self.dir_iv_and_first_page(ino, &cpath) {
                Some((iv, page)) => (iv, Some(page)),
                None => (self.dir_iv(ino)?, None),
            },
        };
        let parent = lock(&self.nodes)
            .map
            .get(&ino)
            .and_then(|n| n.names.last().map(|x| x.parent))
            .unwrap_or(ROOT);
        let mut items = vec![
            DirItem {
                name: b".".to_vec(),
                kind: FileType::Dir,
                ino,
                cname: String::new(),
                attr: None,
                asked_at,
            },
            DirItem {
                name: b"..".to_vec(),
                kind: FileType::Dir,
                ino: parent,
                cname: String::new(),
                attr: None,
                asked_at,
            },
        ];
        let mut cookie = 0;
        loop {
            let page = match first_page.take() {
                Some(p) => p,
                None => {
                    asked_at = change_clock();
                    match self.st.call(Self::read_dir_request(&cpath, cookie))? {
                        Response::DirPage(p) => p,
                        r => return Err(expect_resp(r, "DirPage")),
                    }
                }
            };
            for e in page.entries {
                let plain = match classify(e.name.as_bytes()) {
                    NameKind::DirIv | NameKind::LongNameFile => continue,
                    NameKind::Config if ino == ROOT => continue,
                    NameKind::LongContent if !self.vol.names().is_plaintext() => self
                        .read_small(&join(&cpath, &format!("{}{LONGNAME_SUFFIX}", e.name)))
                        .and_then(|full| {
                            self.vol
                                .names()
                                .decrypt_long_name(&iv, e.name.as_bytes(), &full)
                                .map_err(|err| Fail::io(err.to_string()))
                        }),
                    _ => self
                        .vol
                        .names()
                        .decrypt_name(&iv, e.name.as_bytes())
                        .map_err(|err| Fail::io(err.to_string())),
                };
                match plain {
                    Ok(name) => {
                        let known = lock(&self.nodes)
                            .children
                            .get(&(ino, e.name.clone()))
                            .copied();
                        items.push(DirItem {
                            name,
                            kind: e.kind,
                            // Not a lookup: an inode number the kernel only shows in d_ino.
                            ino: known.unwrap_or_else(|| Nodes::stable_ino(e.ino)),
                            cname: e.name.clone(),
                            attr: e.attr,
                            asked_at,
                        })
                    }
                    Err(f) => tracing::warn!(
                        volume = %self.opts.volume_name,
                        path = %self.shown(ino),
                        "skipping the undecryptable entry {}/{}: {}", cpath, e.name, f.msg
                    ),
                }
            }
            match page.next {
                Some(n) => cookie = n,
                None => break,
            }
        }
        let items = Arc::new(items);
        {
            let mut kept = lock(&self.listings);
            kept.retain(|l| l.dir != ino);
        }
        if items.len() <= LISTING_KEPT_ENTRIES {
            let mut kept = lock(&self.listings);
            if kept.len() == LISTINGS_KEPT {
                kept.pop_front();
            }
            kept.push_back(Arc::new(Listing {
                dir: ino,
                items: items.clone(),
                at: std::sync::OnceLock::new(),
            }));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, items);
        Ok(fh)
    }

    /// A listed entry for readdirplus (which saves `ls -l` one lookup round trip per
    /// entry): its inode, counted as a kernel lookup, and attributes. The kernel takes
    /// them over what it holds unless a change it made was answered after it asked for
    /// this page, so they must not be older than any change this mount answered before:
    /// a listing taken at opendir, or served by storage while a write answered before it
    /// was on its way, would shrink a file the kernel had just grown, and its next read
    /// would come back short. Such entries are looked up instead ([`PlusEntry::Ask`]),
    /// and only if `may_wait`, as that may wait for storage.
    /// `dir_state` is the directory's [`FileState`], taken once for the whole answer.
    pub(crate) fn plus_entry(
        &self,
        dir: u64,
        dir_state: &FileState,
        it: &DirItem,
        may_wait: bool,
    ) -> PlusEntry {
        if it.cname.is_empty() {
            return PlusEntry::Dots;
        }
        let now = it
            .attr
            .as_ref()
            .and_then(|listed| self.listed_attr_now(dir, dir_state, it, listed));
        if let Some(a) = now {
            let ino = lock(&self.nodes).register(dir, &it.cname, &it.name, a.kind, a.ino);
            return PlusEntry::Entry(ino, self.attr_of(ino, &a));
        }
        if !may_wait {
            return PlusEntry::Ask;
        }
        match self.lookup(dir, &it.name) {
            Ok(attr) => PlusEntry::Entry(attr.ino, attr),
            Err(f) => {
                if f.errno != libc::ENOENT {
                    tracing::warn!(volume = %self.opts.volume_name, path = %self.shown_child(dir, &it.name), "leaving a listed entry out: {}", f.msg);
                }
                PlusEntry::Gone
            }
        }
    }

    /// The attributes a listed entry can be given with at once, if they are sure to be
    /// current (see [`Core::plus_entry`]): the listing's if nothing was changed here since
    /// the page was asked for, else those the last change left, if known.
    fn listed_attr_now(
        &self,
        dir: u64,
        dir_state: &FileState,
        it: &DirItem,
        listed: &Attr,
    ) -> Option<Attr> {
        let known = {
            let nodes = lock(&self.nodes);
            nodes
                .children
                .get(&(dir, it.cname.clone()))
                .and_then(|c| nodes.map.get(c).map(|n| (n.sino, n.file.clone())))
        };
        let Some((sino, state)) = known else {
            // Not known here: nothing changed it here, unless it was made or removed here
            // after the listing was asked for.
            return (!dir_state.touched_since(it.asked_at)).then(|| listed.clone());
        };
        if sino != listed.ino || !super::behind::idle(&state) {
            return None;
        }
        if self.status.following() {
            if let Some(a) = self.attr_while_unlinking(&state) {
                return Some(a);
            }
            if let Some(a) = state.known_attr() {
                return Some(a);
            }
        }
        (!state.touched_since(it.asked_at)).then(|| listed.clone())
    }

    pub(crate) fn dir_items(&self, fh: u64) -> Option<Arc<Vec<DirItem>>> {
        lock(&self.dirs).get(&fh).cloned()
    }

    pub(crate) fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }
}
