//! The per-volume change journal: an append-only file of checksummed records, each written
//! before the change it records is made, compacted in place by an atomic rewrite.
//!
//! Records reach the disk lazily (no flush per record): a killed process loses none of them,
//! since the kernel keeps every completed write, and only a machine that stops without
//! flushing (power loss, kernel crash, a VM killed) can lose the last ones. That case is
//! detected and turned into a rescan rather than a silently missed change. While the
//! journal is open, the file `open` records the kernel's boot id and a sequence number
//! reserved ahead (`reserved`: numbers below it may have been handed out); a clean close
//! flushes the journal and removes it. At open, an `open` file from the same boot means the
//! process died and nothing was lost; from another boot (or unreadable), the journal may
//! have lost records that readers already saw, so numbering continues from `reserved` and
//! the floor is raised to it: every reader rescans, and no number is ever given twice.
//!
//! File layout (`journal/journal.log`, little-endian):
//!
//! ```text
//! header  (32 bytes): "CSJOURN1" | floor u64 | base u64 | crc32(first 24 bytes) u32 | 0u32
//! record  (repeated): len u32 | crc32(payload) u32 | payload (len bytes)
//! payload:            seq u64 | kind u8 | time i64,u32 | size u64 | mtime i64,u32
//!                     | path_len u16 | path | has_new u8 | [new_len u16 | new_path]
//! ```
//!
//! `floor`: entries with a smaller sequence number may have been dropped by compaction;
//! `base`: the next sequence number when the file was last rewritten, so numbering survives a
//! compaction that kept nothing. A record whose length or checksum does not hold is a torn
//! append from a crash: it and everything after it are cut off at open. If valid-looking data
//! follows a bad record (damage, not a tear), the floor is raised to the head so every reader
//! rescans instead of missing changes.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::crc32::crc32;
use crate::error::{IoContext, Result, StoreError};
use crate::sys;
use crate::types::{ChangeEntry, ChangeKind, Changes, Timespec};

const MAGIC: &[u8; 8] = b"CSJOURN1";
const HEADER_LEN: u64 = 32;
/// Largest record: two paths of at most 4096 bytes plus the fixed fields (58 bytes), rounded
/// up. Anything claiming more is garbage, rejected before allocating.
const MAX_RECORD: usize = 2 * 4096 + 128;
/// Entries a slow subscriber may have queued before it is told it lagged: enough for a burst
/// of a few thousand changes, small enough that a stuck consumer costs little memory.
const SUBSCRIBER_QUEUE: usize = 1024;
const FILE_NAME: &str = "journal.log";
const TMP_NAME: &str = "journal.log.tmp";
/// The sync peer's acknowledgement: seq u64 | crc32 of it u32, replaced atomically.
const ACK_NAME: &str = "sync-ack";
const ACK_TMP_NAME: &str = "sync-ack.tmp";
/// Present while the journal is open (see the module comment): boot id length u8 | boot id
/// | reserved u64 | crc32 of what precedes u32, replaced atomically.
const OPEN_NAME: &str = "open";
const OPEN_TMP_NAME: &str = "open.tmp";

/// How a journal is opened.
pub(crate) struct JournalOptions {
    /// Size at which it compacts itself.
    pub max_bytes: u64,
    /// The running kernel's boot id; empty if unknown.
    pub boot_id: String,
    /// Sequence numbers reserved ahead at a time.
    pub reservation: u64,
}

/// A notice to a change subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A new entry, written to the journal.
    Change(ChangeEntry),
    /// The subscriber fell behind and entries were not queued for it: read them with
    /// `changes_since` from the last sequence number it saw plus one.
    Lagged,
}

/// A live feed of a volume's new journal entries (see [`crate::Volume::subscribe`]). Dropping
/// it unsubscribes.
pub struct Subscription {
    rx: Receiver<ChangeEntry>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// Waits up to `timeout` for the next notice; `None` on timeout or when the volume is gone.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Notice> {
        if self.lagged.swap(false, Ordering::AcqRel) {
            return Some(Notice::Lagged);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Some(Notice::Change(e)),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                if self.lagged.swap(false, Ordering::AcqRel) {
                    Some(Notice::Lagged)
                } else {
                    None
                }
            }
        }
    }

    /// The next notice if one is waiting.
    pub fn try_recv(&self) -> Option<Notice> {
        self.recv_timeout(Duration::ZERO)
    }
}

struct Subscriber {
    tx: SyncSender<ChangeEntry>,
    lagged: Arc<AtomicBool>,
    /// Entries appended on behalf of this origin are not sent (see [`acting_for`]); 0: none.
    origin: u64,
}

thread_local! {
    static ACTING_FOR: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the journal entries it appends on this thread attributed to `origin`
/// (non-zero): a subscription made for the same origin is not sent them. A storage
/// connection acts for itself, so its own changes are not pushed back to it and every
/// change it is told of was made elsewhere.
pub fn acting_for<R>(origin: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTING_FOR.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTING_FOR.with(|a| a.replace(origin)));
    f()
}

struct State {
    file: File,
    len: u64,
    next: u64,
    /// Numbers below this may be handed out without a new `open` record.
    reserved: u64,
    floor: u64,
    /// (seq, offset of the record) for every record in the file, in order.
    index: Vec<(u64, u64)>,
}

pub(crate) struct Journal {
    dir: OwnedFd,
    label: String,
    max_bytes: u64,
    boot_id: String,
    reservation: u64,
    state: Mutex<State>,
    subs: Mutex<Vec<Subscriber>>,
    acked: Mutex<u64>,
}

fn encode(e: &ChangeEntry) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + e.path.len());
    p.extend_from_slice(&e.seq.to_le_bytes());
    p.push(e.kind.code());
    p.extend_from_slice(&e.time.secs.to_le_bytes());
    p.extend_from_slice(&e.time.nanos.to_le_bytes());
    p.extend_from_slice(&e.size.to_le_bytes());
    p.extend_from_slice(&e.mtime.secs.to_le_bytes());
    p.extend_from_slice(&e.mtime.nanos.to_le_bytes());
    p.extend_from_slice(&(e.path.len() as u16).to_le_bytes());
    p.extend_from_slice(e.path.as_bytes());
    match &e.new_path {
        Some(n) => {
            p.push(1);
            p.extend_from_slice(&(n.len() as u16).to_le_bytes());
            p.extend_from_slice(n.as_bytes());
        }
        None => p.push(0),
    }
    let mut rec = Vec::with_capacity(8 + p.len());
    rec.extend_from_slice(&(p.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32(&p).to_le_bytes());
    rec.extend_from_slice(&p);
    rec
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn ts(&mut self) -> Option<Timespec> {
        let s = self.u64()? as i64;
        let n = self.u32()?;
        (n < 1_000_000_000).then_some(Timespec::new(s, n))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode_payload(p: &[u8]) -> Option<ChangeEntry> {
    let mut r = Reader(p);
    let seq = r.u64()?;
    let kind = ChangeKind::from_code(r.u8()?)?;
    let time = r.ts()?;
    let size = r.u64()?;
    let mtime = r.ts()?;
    let path = r.string()?;
    let new_path = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return None,
    };
    r.0.is_empty().then_some(ChangeEntry {
        seq,
        kind,
        time,
        path,
        new_path,
        size,
        mtime,
    })
}

fn header(floor: u64, base: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&floor.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let c = crc32(&h[..24]);
    h[24..28].copy_from_slice(&c.to_le_bytes());
    h
}

/// What the `open` file says about the last close.
enum OpenMarker {
    /// No file: closed cleanly.
    Closed,
    Open {
        boot_id: String,
        reserved: u64,
    },
    Unreadable,
}

fn read_open_marker(dir: &OwnedFd) -> OpenMarker {
    let fd = match sys::open_at(dir.as_fd(), OPEN_NAME, libc::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return OpenMarker::Closed,
        Err(_) => return OpenMarker::Unreadable,
    };
    let mut b = vec![0u8; 1 + 255 + 12];
    let n = match File::from(fd).read_at(&mut b, 0) {
        Ok(n) => n,
        Err(_) => return OpenMarker::Unreadable,
    };
    let b = &b[..n];
    let Some(&idn) = b.first() else {
        return OpenMarker::Unreadable;
    };
    let body = 1 + idn as usize + 8;
    if b.len() != body + 4 || crc32(&b[..body]).to_le_bytes() != b[body..] {
        return OpenMarker::Unreadable;
    }
    OpenMarker::Open {
        boot_id: String::from_utf8_lossy(&b[1..1 + idn as usize]).into_owned(),
        reserved: u64::from_le_bytes(b[body - 8..body].try_into().unwrap()),
    }
}

/// A clean close: everything on disk, then the `open` file removed. If any step fails the
/// file stays, and the next open treats the close as unclean (safe, at worst a rescan).
impl Drop for Journal {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let r = sys::fdatasync(st.file.as_fd())
            .and_then(|_| sys::unlink_at(self.dir.as_fd(), OPEN_NAME, false))
            .and_then(|_| sys::fsync(self.dir.as_fd()));
        if let Err(e) = r {
            tracing::warn!(file = %self.fname(), "closing the journal: {e}");
        }
    }
}

/// Reads the record at `off`: `Ok(Some((entry, record_len)))`, `Ok(None)` if it is torn or
/// damaged.
fn read_record(file: &File, off: u64, file_len: u64) -> io::Result<Option<(ChangeEntry, u64)>> {
    if file_len < off + 8 {
        return Ok(None);
    }
    let mut h = [0u8; 8];
    file.read_exact_at(&mut h, off)?;
    let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(h[4..].try_into().unwrap());
    if len == 0 || len > MAX_RECORD || off + 8 + len as u64 > file_len {
        return Ok(None);
    }
    let mut p = vec![0u8; len];
    file.read_exact_at(&mut p, off + 8)?;
    if crc32(&p) != crc {
        return Ok(None);
    }
    Ok(decode_payload(&p).map(|e| (e, 8 + len as u64)))
}

impl Journal {
    /// Opens (creating if needed) the journal in directory `dir`, cutting off a torn tail;
    /// after a machine crash, asks every reader to rescan (see the module comment).
    pub(crate) fn open(dir: OwnedFd, label: String, opts: JournalOptions) -> Result<Journal> {
        let fname = format!("{label}/{FILE_NAME}");
        let file = match sys::open_at(dir.as_fd(), FILE_NAME, libc::O_RDWR, 0) {
            Ok(fd) => File::from(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Self::write_new_file(&dir, &label, 1, 1, &[])?;
                File::from(
                    sys::open_at(dir.as_fd(), FILE_NAME, libc::O_RDWR, 0)
                        .ctx("open journal", &fname)?,
                )
            }
            Err(e) => return Err(StoreError::fs("open journal", &fname, e)),
        };
        let file_len = file.metadata().ctx("stat journal", &fname)?.len();
        let mut h = [0u8; HEADER_LEN as usize];
        if file_len < HEADER_LEN {
            return Err(StoreError::Corrupt {
                what: "journal",
                file: fname,
                reason: format!("{file_len} bytes is shorter than the 32-byte header"),
            });
        }
        file.read_exact_at(&mut h, 0).ctx("read journal", &fname)?;
        if &h[..8] != MAGIC || crc32(&h[..24]).to_le_bytes() != h[24..28] {
            return Err(StoreError::Corrupt {
                what: "journal",
                file: fname,
                reason: "the header's magic or checksum is wrong".into(),
            });
        }
        let mut floor = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let base = u64::from_le_bytes(h[16..24].try_into().unwrap());
        let mut index = Vec::new();
        let mut off = HEADER_LEN;
        let mut last = 0u64;
        let mut damaged = false;
        while off < file_len {
            match read_record(&file, off, file_len).ctx("read journal", &fname)? {
                Some((e, n)) if e.seq > last && e.seq >= floor.min(base) => {
                    last = e.seq;
                    index.push((e.seq, off));
                    off += n;
                }
                _ => {
                    // A torn append leaves a prefix of the last record, possibly followed by
                    // zeros from a partly written page; anything else after it is damage.
                    let mut rest = vec![0u8; (file_len - off).min(1 << 20) as usize];
                    file.read_exact_at(&mut rest, off)
                        .ctx("read journal", &fname)?;
                    let claimed =
                        u32::from_le_bytes(rest.get(..4).map_or([0; 4], |b| b.try_into().unwrap()))
                            as u64;
                    let torn_tail = off + 8 + claimed >= file_len
                        || rest[8.min(rest.len())..].iter().all(|&b| b == 0);
                    damaged = !torn_tail;
                    if damaged {
                        // Keep numbering above every sequence number that may have been
                        // handed out: walk the records after the damaged one by their lengths.
                        let mut o = off + 8 + claimed;
                        while let Ok(Some((e, n))) = read_record(&file, o, file_len) {
                            last = last.max(e.seq);
                            o += n;
                        }
                        tracing::error!(file = %fname, offset = off, "journal damaged mid-file; cutting it here and asking every reader to rescan");
                    } else {
                        tracing::warn!(file = %fname, offset = off, bytes = file_len - off, "dropping a torn journal record left by a crash");
                    }
                    file.set_len(off).ctx("truncate journal", &fname)?;
                    sys::fsync(file.as_fd()).ctx("fsync journal", &fname)?;
                    break;
                }
            }
        }
        let len = off;
        let mut next = base.max(last + 1);
        let lost = match read_open_marker(&dir) {
            OpenMarker::Closed => false,
            OpenMarker::Open { boot_id, .. } if !boot_id.is_empty() && boot_id == opts.boot_id => {
                tracing::info!(file = %fname, "journal left open by a process that stopped; the kernel kept every record");
                false
            }
            OpenMarker::Open { reserved, .. } => {
                next = next.max(reserved);
                true
            }
            OpenMarker::Unreadable => {
                // A reservation is only recorded after the journal is flushed, so the one in
                // force began at or below the records on disk.
                next = next.saturating_add(opts.reservation);
                true
            }
        };
        if lost {
            tracing::warn!(file = %fname, next, "journal not closed before the machine stopped: its last records may be lost, so every reader rescans");
        }
        let j = Journal {
            dir,
            label,
            max_bytes: opts.max_bytes,
            boot_id: opts.boot_id,
            reservation: opts.reservation.max(1),
            state: Mutex::new(State {
                file,
                len,
                next,
                reserved: next,
                floor,
                index,
            }),
            subs: Mutex::new(Vec::new()),
            acked: Mutex::new(0),
        };
        *j.acked.lock().unwrap() = j.read_ack();
        let mut st = j.state.lock().unwrap();
        if damaged || lost {
            floor = next;
            st.floor = floor;
            // Everything below the new floor is unreachable; keep nothing.
            j.rewrite_entries(&mut st, Vec::new())?;
        }
        j.reserve(&mut st)?;
        drop(st);
        Ok(j)
    }

    /// Records in the `open` file that numbers up to `next + reservation` may be handed out,
    /// the journal flushed first (see `OpenMarker::Unreadable`).
    fn reserve(&self, st: &mut State) -> Result<()> {
        let reserved = st.next.saturating_add(self.reservation);
        let id = self.boot_id.as_bytes();
        let mut b = Vec::with_capacity(1 + id.len() + 12);
        b.push(id.len().min(255) as u8);
        b.extend_from_slice(&id[..id.len().min(255)]);
        b.extend_from_slice(&reserved.to_le_bytes());
        b.extend_from_slice(&crc32(&b).to_le_bytes());
        sys::fdatasync(st.file.as_fd())
            .and_then(|_| self.replace_file(OPEN_TMP_NAME, OPEN_NAME, &b))
            .map_err(|e| {
                StoreError::fs("reserve journal numbers", &self.path_of(OPEN_TMP_NAME), e)
            })?;
        st.reserved = reserved;
        Ok(())
    }

    fn write_new_file(
        dir: &OwnedFd,
        label: &str,
        floor: u64,
        base: u64,
        records: &[u8],
    ) -> Result<()> {
        let tname = format!("{label}/{TMP_NAME}");
        let _ = sys::unlink_at(dir.as_fd(), TMP_NAME, false);
        let f = File::from(
            sys::open_at(
                dir.as_fd(),
                TMP_NAME,
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )
            .ctx("create journal", &tname)?,
        );
        let mut data = header(floor, base).to_vec();
        data.extend_from_slice(records);
        let r = f
            .write_all_at(&data, 0)
            .and_then(|_| sys::fsync(f.as_fd()))
            .and_then(|_| sys::rename_at(dir.as_fd(), TMP_NAME, dir.as_fd(), FILE_NAME, 0))
            .and_then(|_| sys::fsync(dir.as_fd()));
        if let Err(e) = r {
            let _ = sys::unlink_at(dir.as_fd(), TMP_NAME, false);
            return Err(StoreError::fs("write journal", &tname, e));
        }
        Ok(())
    }

    fn fname(&self) -> String {
        format!("{}/{FILE_NAME}", self.label)
    }

    /// A missing or damaged acknowledgement reads as 0: the peer then simply resends.
    fn read_ack(&self) -> u64 {
        let mut b = [0u8; 12];
        let Ok(fd) = sys::open_at(self.dir.as_fd(), ACK_NAME, libc::O_RDONLY, 0) else {
            return 0;
        };
        match File::from(fd).read_exact_at(&mut b, 0) {
            Ok(()) if crc32(&b[..8]).to_le_bytes() == b[8..12] => {
                u64::from_le_bytes(b[..8].try_into().unwrap())
            }
            _ => {
                tracing::warn!(file = %format!("{}/{ACK_NAME}", self.label), "sync acknowledgement unreadable; treating it as 0");
                0
            }
        }
    }

    /// Records the sync peer's acknowledgement durably; returns the value now recorded.
    pub(crate) fn ack(&self, seq: u64) -> Result<u64> {
        let mut acked = self.acked.lock().unwrap();
        let seq = seq.min(self.head());
        if seq <= *acked {
            return Ok(*acked);
        }
        // What is acknowledged goes to disk first, so an acknowledgement never points past
        // the journal's end on disk.
        {
            let st = self.state.lock().unwrap();
            sys::fdatasync(st.file.as_fd()).map_err(|e| {
                StoreError::fs("flush journal before acknowledgement", &self.fname(), e)
            })?;
        }
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&crc32(&b).to_le_bytes());
        self.replace_file(ACK_TMP_NAME, ACK_NAME, &b).map_err(|e| {
            StoreError::fs(
                "record sync acknowledgement",
                &self.path_of(ACK_TMP_NAME),
                e,
            )
        })?;
        *acked = seq;
        Ok(seq)
    }

    /// Replaces the small file `name` with `bytes` durably: written to `tmp`, flushed,
    /// renamed, the directory flushed.
    fn replace_file(&self, tmp: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        let _ = sys::unlink_at(self.dir.as_fd(), tmp, false);
        let r = sys::open_at(
            self.dir.as_fd(),
            tmp,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .map(File::from)
        .and_then(|f| f.write_all_at(bytes, 0).and_then(|_| sys::fsync(f.as_fd())))
        .and_then(|_| sys::rename_at(self.dir.as_fd(), tmp, self.dir.as_fd(), name, 0))
        .and_then(|_| sys::fsync(self.dir.as_fd()));
        if r.is_err() {
            let _ = sys::unlink_at(self.dir.as_fd(), tmp, false);
        }
        r
    }

    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.label)
    }

    /// The last acknowledged sequence number.
    pub(crate) fn acked(&self) -> u64 {
        *self.acked.lock().unwrap()
    }

    /// The next sequence number to be assigned.
    pub(crate) fn head(&self) -> u64 {
        self.state.lock().unwrap().next
    }

    /// Appends an entry (written, not flushed: see the module comment); returns it with its
    /// sequence number. On failure (e.g. ENOSPC) the file is cut back, nothing is recorded,
    /// and the caller must not make the change.
    pub(crate) fn append(
        &self,
        kind: ChangeKind,
        path: &str,
        new_path: Option<&str>,
        size: u64,
        mtime: Timespec,
        time: Timespec,
    ) -> Result<ChangeEntry> {
        let mut st = self.state.lock().unwrap();
        if st.next >= st.reserved {
            self.reserve(&mut st)?;
        }
        let e = ChangeEntry {
            seq: st.next,
            kind,
            time,
            path: path.to_owned(),
            new_path: new_path.map(str::to_owned),
            size,
            mtime,
        };
        let rec = encode(&e);
        let off = st.len;
        if let Err(err) = st.file.write_all_at(&rec, off) {
            let _ = st.file.set_len(off);
            return Err(StoreError::fs("append to journal", &self.fname(), err));
        }
        st.len += rec.len() as u64;
        st.next += 1;
        st.index.push((e.seq, off));
        // Notified under the state lock so that subscribers see entries in sequence order.
        let origin = ACTING_FOR.with(|a| a.get());
        let mut subs = self.subs.lock().unwrap();
        subs.retain(|s| {
            if origin != 0 && s.origin == origin {
                return true;
            }
            match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Release);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        drop(subs);
        let over = st.len > self.max_bytes;
        drop(st);
        if over {
            if let Err(err) = self.compact() {
                tracing::warn!(file = %self.fname(), error = %err, "journal compaction failed; will retry on the next append");
            }
        }
        Ok(e)
    }

    pub(crate) fn subscribe(&self, origin: u64) -> Subscription {
        let (tx, rx) = mpsc::sync_channel(SUBSCRIBER_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subs.lock().unwrap().push(Subscriber {
            tx,
            lagged: lagged.clone(),
            origin,
        });
        Subscription { rx, lagged }
    }

    pub(crate) fn changes_since(&self, since: u64, limit: usize) -> Result<Changes> {
        let st = self.state.lock().unwrap();
        // Sequence numbers start at 1: a peer that has seen nothing asks from 0, and a floor
        // of 1 means nothing was ever dropped, so that is no reason to rescan.
        let missed = since < st.floor && st.floor > 1;
        if missed || since > st.next {
            return Ok(Changes::RescanNeeded {
                floor: st.floor,
                head: st.next,
            });
        }
        let start = st.index.partition_point(|&(s, _)| s < since);
        let mut entries = Vec::new();
        for &(_, off) in st.index[start..].iter().take(limit.max(1)) {
            match read_record(&st.file, off, st.len).ctx("read journal", &self.fname())? {
                Some((e, _)) => entries.push(e),
                None => {
                    return Err(StoreError::Corrupt {
                        what: "journal",
                        file: self.fname(),
                        reason: format!("the record at offset {off} no longer checks out"),
                    })
                }
            }
        }
        let next = match entries.last() {
            Some(e) if entries.len() < st.index.len() - start => e.seq + 1,
            _ => st.next,
        };
        Ok(Changes::Entries { entries, next })
    }

    /// All entries currently in the journal, oldest first.
    pub(crate) fn all_entries(&self) -> Result<Vec<ChangeEntry>> {
        let st = self.state.lock().unwrap();
        self.read_all(&st)
    }

    fn read_all(&self, st: &State) -> Result<Vec<ChangeEntry>> {
        let mut out = Vec::with_capacity(st.index.len());
        for &(_, off) in &st.index {
            if let Some((e, _)) =
                read_record(&st.file, off, st.len).ctx("read journal", &self.fname())?
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// (floor, head, bytes in the file, records)
    pub(crate) fn stats(&self) -> (u64, u64, u64, usize) {
        let st = self.state.lock().unwrap();
        (st.floor, st.next, st.len, st.index.len())
    }

    /// Drops entries superseded by a later entry for the same path, and if the journal is
    /// still over half its size budget, drops the oldest entries and raises the floor.
    pub(crate) fn compact(&self) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        let entries = self.read_all(&st)?;
        let mut latest: HashMap<&str, u64> = HashMap::new();
        for e in &entries {
            latest.insert(&e.path, e.seq);
            if let Some(n) = &e.new_path {
                if e.kind != ChangeKind::ConflictParked {
                    latest.insert(n, e.seq);
                }
            }
        }
        let mut keep: Vec<&ChangeEntry> = entries
            .iter()
            .filter(|e| {
                latest.get(e.path.as_str()) == Some(&e.seq)
                    || e.new_path.as_deref().and_then(|n| latest.get(n)) == Some(&e.seq)
            })
            .collect();
        let budget = self.max_bytes / 2;
        let mut total: u64 = keep.iter().map(|e| encode(e).len() as u64).sum();
        let mut drop_n = 0;
        while total > budget && drop_n < keep.len() {
            total -= encode(keep[drop_n]).len() as u64;
            drop_n += 1;
        }
        if drop_n > 0 {
            st.floor = keep.get(drop_n).map_or(st.next, |e| e.seq);
            keep.drain(..drop_n);
        }
        let kept = keep.len();
        self.rewrite_entries(&mut st, keep.into_iter().cloned().collect())?;
        tracing::info!(file = %self.fname(), floor = st.floor, kept, "journal compacted");
        Ok(())
    }

    fn rewrite_entries(&self, st: &mut State, entries: Vec<ChangeEntry>) -> Result<()> {
        let mut data = Vec::new();
        let mut index = Vec::with_capacity(entries.len());
        for e in &entries {
            index.push((e.seq, HEADER_LEN + data.len() as u64));
            data.extend_from_slice(&encode(e));
        }
        Self::write_new_file(&self.dir, &self.label, st.floor, st.next, &data)?;
        st.file = File::from(
            sys::open_at(self.dir.as_fd(), FILE_NAME, libc::O_RDWR, 0)
                .ctx("open journal", &self.fname())?,
        );
        st.len = HEADER_LEN + data.len() as u64;
        st.index = index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, path: &str) -> ChangeEntry {
        ChangeEntry {
            seq,
            kind: ChangeKind::Put,
            time: Timespec::new(1, 2),
            path: path.into(),
            new_path: Some("x/y".into()),
            size: 7,
            mtime: Timespec::new(-3, 999_999_999),
        }
    }

    #[test]
    fn record_round_trip() {
        let e = entry(42, "a/b");
        let rec = encode(&e);
        assert_eq!(decode_payload(&rec[8..]), Some(e));
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::from_code(k.code()), Some(k));
        }
        assert_eq!(ChangeKind::from_code(0), None);
        assert_eq!(ChangeKind::from_code(200), None);
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        let rec = encode(&entry(1, "p"));
        for n in 0..rec.len() - 8 {
            assert_eq!(decode_payload(&rec[8..8 + n]), None, "prefix {n}");
        }
        let mut bad = rec[8..].to_vec();
        bad.push(0);
        assert_eq!(decode_payload(&bad), None);
    }
}
