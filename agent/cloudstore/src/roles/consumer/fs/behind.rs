//! Write-behind: an application's write is answered once its ciphertext is on its way to
//! storage, and storage's answer is collected by the next operation on the file.
//!
//! The kernel sends a file's writes one at a time (a FUSE mount without writeback caching
//! holds the inode lock across each), so a synchronous write costs the whole round trip to
//! storage and back before the application can hand over the next block. Here the round
//! trips of the writes before write N overlap the copy and encryption of write N; a
//! streaming write is bound by the slower of the two instead of their sum.
//!
//! The rules that keep it safe:
//! - A file's writes and attribute changes on their way (its *chain*) all go through one
//!   storage handle on one connection, and storage runs the changes through one handle in
//!   the order they arrived (its lane per handle, see the storage role's `Handler::lane`).
//!   At most [`MAX_CHAIN`] requests and [`MAX_CHAIN_BYTES`] of ciphertext are on their
//!   way per file. A write through another handle, and any other request about the file
//!   (a read, a stat, a truncate, an fsync), first waits for the whole chain
//!   ([`Core::settle`]): storage serves everything else on a connection concurrently.
//! - A write that has to read a block it only partly covers finds it in what the write
//!   before it sent (the file's partial last block is kept, `FileCache::tail`), or waits
//!   for the chain like any read.
//! - A connection lost with the chain on its way: each write and change is sent again on
//!   the next one, in the same order (the same bytes at the same offsets), as synchronous
//!   ones would be.
//! - A write storage refuses (a full disk, a timeout) is reported to the application by the
//!   file's next write or `fsync` ([`Core::write_error`]), and logged with the file's name
//!   (kept for `cloudstore status`) when the file is released; the cached size is dropped so
//!   nothing is assumed about the file. `close` does not wait for it, as on a local file
//!   system, where a writeback failure is not reported at close either: a close would
//!   otherwise wait on storage, and a close happens behind every `exec` of a process that
//!   inherited the descriptor.
//! - Until storage has answered, the write counts in the status's pending writes.
//!
//! An attribute change (`chmod`, `utimensat`) made while a write of the file is on its way
//! goes behind it the same way: `tar` and `cp -a` set a file's times and mode right after
//! writing it, and waiting for the write's answer and then the change's own would cost two
//! round trips a file. It is sent at once through the write's storage handle and answered
//! with the attributes it will leave: those storage last gave for the file, with the size
//! of the ciphertext written since, the times of the write or the change, and the change's
//! mode. Its failure is reported like a write's; its answer, when collected, replaces what
//! was predicted.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use cloudstore_protocol::{
    Attr, ErrorCode, FileRef, PendingCall, Request, Response, SetAttr, TimeSet, Timespec, MAX_IO,
};

use super::core::{expect_resp, Core, OpenFile};
use super::nodes::FileState;
use super::{Fail, FsStatus};

/// The most writes and changes of one file on their way at once.
const MAX_CHAIN: usize = 8;
/// The most ciphertext of one file on its way at once: two 1 MiB writes (each 1 MiB +
/// 8 KiB of ciphertext), which keeps the protocol's reused buffers enough for a stream.
const MAX_CHAIN_BYTES: usize = 2 * (MAX_IO + 8 * 1024) + 64 * 1024;

/// What one file has on its way to storage.
#[derive(Default)]
pub(crate) struct WriteBehind {
    /// Writes and attribute changes on their way, in the order sent, all through one
    /// storage handle on one connection (storage runs them in that order).
    chain: VecDeque<Sent>,
    /// The attributes the last attribute change in the chain will leave (the base for the
    /// next one; writes after it change only the size and times); none once the chain is
    /// done.
    expected: Option<Attr>,
    /// The failure of a write already answered to the application, until reported.
    failed: Option<Fail>,
}

enum Sent {
    Write(SentWrite),
    Attr(SentAttr),
}

impl Sent {
    fn through(&self) -> (&Arc<OpenFile>, u64) {
        match self {
            Sent::Write(w) => (&w.of, w.gen),
            Sent::Attr(a) => (&a.of, a.gen),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Sent::Write(w) => pieces_of(&w.requests).iter().map(|(_, d)| d.len()).sum(),
            Sent::Attr(_) => 0,
        }
    }
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("chain", &self.chain.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The pieces of one write (two for a 1 MiB write: 1 MiB + 8 KiB of ciphertext), sent on
/// connection `gen`.
struct SentWrite {
    ino: u64,
    of: Arc<OpenFile>,
    gen: u64,
    requests: Vec<Request>,
    calls: Vec<PendingCall>,
    /// The stamp under which the attributes its answer carries may be kept.
    stamp: Option<u64>,
    _pending: PendingWrite,
}

/// An attribute change sent behind a write, on connection `gen`.
struct SentAttr {
    ino: u64,
    of: Arc<OpenFile>,
    gen: u64,
    attr: SetAttr,
    call: PendingCall,
    stamp: Option<u64>,
    _pending: PendingWrite,
}

/// The pieces of a write: (offset in the ciphertext, bytes), each at most `MAX_IO`.
pub(crate) fn pieces(offset: u64, data: &[u8]) -> Vec<(u64, &[u8])> {
    data.chunks(MAX_IO)
        .enumerate()
        .map(|(i, p)| (offset + (i * MAX_IO) as u64, p))
        .collect()
}

/// The pieces a sent write carries.
fn pieces_of(requests: &[Request]) -> Vec<(u64, &[u8])> {
    requests
        .iter()
        .filter_map(|r| match r {
            Request::Write { offset, data, .. } => Some((*offset, data.as_slice())),
            _ => None,
        })
        .collect()
}

/// Counts a write as pending in the status until storage has answered it.
struct PendingWrite(Arc<FsStatus>);

impl PendingWrite {
    fn new(status: &Arc<FsStatus>) -> PendingWrite {
        status.write_started();
        PendingWrite(status.clone())
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.0.write_ended();
    }
}

/// Whether the file has no write in flight, found without waiting.
pub(crate) fn idle(state: &FileState) -> bool {
    match state.behind.try_lock() {
        Ok(wb) => wb.is_idle(),
        Err(_) => false,
    }
}

/// The file's count of changes if it has no write in flight, both read under its
/// write-behind lock (see [`Core::settle_then_count`]); `None` if a write is in flight or the
/// lock is busy.
pub(crate) fn changes_if_idle(state: &FileState) -> Option<u64> {
    let wb = state.behind.try_lock().ok()?;
    wb.is_idle().then(|| state.changes())
}

impl WriteBehind {
    fn is_idle(&self) -> bool {
        self.chain.is_empty()
    }
}

fn lock(state: &FileState) -> MutexGuard<'_, WriteBehind> {
    state.behind.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks storage's answers to the pieces of a write, and returns the file's attributes
/// after all of them if storage gave them (`ATTRS_AFTER`). Storage may serve the pieces
/// concurrently, so each answer's attributes may predate the other pieces; the answer
/// taken last saw every piece written, and its change time (or, within one tick of the
/// clock, its size: writes only grow a file) is the largest.
fn check_written(pieces: &[(u64, &[u8])], answers: Vec<Response>) -> Result<Option<Attr>, Fail> {
    let mut after: Option<Attr> = None;
    let mut every_answer_has_attrs = true;
    for (&(offset, data), answer) in pieces.iter().zip(answers) {
        let n = match answer {
            Response::Written(n) => {
                every_answer_has_attrs = false;
                n
            }
            Response::WrittenAttr { written, attr } => {
                let later = |a: &Attr| (a.ctime, a.size) > (attr.ctime, attr.size);
                if !after.as_ref().is_some_and(later) {
                    after = Some(attr);
                }
                written
            }
            r => return Err(expect_resp(r, "Written")),
        };
        if n as usize != data.len() {
            return Err(Fail::io(format!(
                "storage wrote {n} of {} bytes at {offset}",
                data.len()
            )));
        }
    }
    Ok(after.filter(|_| every_answer_has_attrs))
}

impl Core {
    /// Waits for the file's writes and changes on their way, if any. A failure is kept for
    /// [`Core::write_error`] rather than returned: the operation waiting here is not the
    /// one that failed.
    pub(crate) fn settle(&self, state: &FileState) {
        let mut wb = lock(state);
        self.settle_locked(state, &mut wb);
    }

    /// Waits for what is on its way and counts a change about to be asked of storage,
    /// under the file's write-behind lock. Apart, a write sent in between would be counted
    /// before the returned count, and an answer storage gave from before that write (it
    /// serves a connection's requests concurrently, so it may run them in either order)
    /// would pass for current: an open's size cached as the ciphertext's length made the
    /// next partial-block write drop the bytes that write had added.
    pub(crate) fn settle_then_count(&self, state: &FileState) -> u64 {
        let mut wb = lock(state);
        self.settle_locked(state, &mut wb);
        state.attrs_changing()
    }

    /// [`Core::settle_then_count`], as the stamp [`Core::stamp`] gives.
    pub(crate) fn settle_then_stamp(&self, state: &FileState) -> Option<u64> {
        let count = self.settle_then_count(state);
        self.status.following().then_some(count)
    }

    fn settle_locked(&self, state: &FileState, wb: &mut WriteBehind) {
        while self.finish_first(state, wb) {}
        // A directory's attributes, fsync and listing wait for its unlinks the same way.
        self.unlinks_settled(state);
    }

    /// Waits for the oldest write or change on its way, if any; false if there was none.
    fn finish_first(&self, state: &FileState, wb: &mut WriteBehind) -> bool {
        let Some(sent) = wb.chain.pop_front() else {
            return false;
        };
        let done = match sent {
            Sent::Write(w) => self.finish_write(w),
            Sent::Attr(a) => self.finish_attr(a),
        };
        if wb.chain.is_empty() {
            wb.expected = None;
        }
        if let Err(f) = done {
            state.forget_cached();
            wb.failed.get_or_insert(f);
        }
        true
    }

    /// Waits for what is on its way, and reports (once) a write of this file that failed
    /// after the application was told it succeeded.
    pub(crate) fn write_error(&self, state: &FileState) -> Result<(), Fail> {
        let mut wb = lock(state);
        self.settle_locked(state, &mut wb);
        match wb.failed.take() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Sends the pieces of a write through `of` and returns before storage answers. It
    /// goes behind what is on its way through the same handle, up to [`MAX_CHAIN`] requests
    /// and [`MAX_CHAIN_BYTES`] (the oldest are collected to make room); anything else on
    /// its way is collected first. A failure collected fails this write.
    pub(crate) fn write_behind(
        &self,
        ino: u64,
        of: &Arc<OpenFile>,
        pieces: &[(u64, &[u8])],
    ) -> Result<(), Fail> {
        let state = &of.file;
        let mut wb = lock(state);
        let timeout = self.opts.request_timeout;
        let deadline = Instant::now() + timeout;
        let (client, gen) = self.st.client(deadline)?;
        let same_way = wb.chain.back().is_some_and(|last| {
            let (o, g) = last.through();
            Arc::ptr_eq(o, of) && g == gen
        });
        if same_way {
            let bytes: usize = pieces.iter().map(|(_, d)| d.len()).sum();
            while wb.chain.len() >= MAX_CHAIN
                || wb.chain.iter().map(Sent::bytes).sum::<usize>() + bytes > MAX_CHAIN_BYTES
            {
                if !self.finish_first(state, &mut wb) {
                    break;
                }
            }
        } else {
            self.settle_locked(state, &mut wb);
        }
        if let Some(f) = wb.failed.take() {
            return Err(f);
        }
        let file = match self.handle_for(of, &client, gen, deadline) {
            Ok(f) => f,
            // Sent the ordinary way, which reconnects and retries.
            Err(f) if f.is(ErrorCode::ConnectionLost) => {
                self.settle_locked(state, &mut wb);
                return self.send_writes(ino, Some(of), pieces);
            }
            Err(f) => return Err(f),
        };
        let stamp = self.stamp(state);
        let requests: Vec<Request> = pieces
            .iter()
            .map(|&(offset, data)| Request::Write {
                file: file.clone(),
                offset,
                data: cloudstore_protocol::buffers::copy_of(data),
            })
            .collect();
        let mut calls = Vec::with_capacity(requests.len());
        for r in &requests {
            match client.begin(r, timeout) {
                Ok(c) => calls.push(c),
                // Whatever was sent is sent again, the same bytes at the same offsets, after
                // what went before it.
                Err(_) => {
                    self.settle_locked(state, &mut wb);
                    return self.send_writes(ino, Some(of), pieces);
                }
            }
        }
        wb.chain.push_back(Sent::Write(SentWrite {
            ino,
            of: of.clone(),
            gen,
            requests,
            calls,
            stamp,
            _pending: PendingWrite::new(&self.status),
        }));
        Ok(())
    }

    /// Sends the pieces of a write and waits for storage's answers, on whatever connection
    /// is up (retrying across reconnections), without waiting for the file's write in
    /// flight: the caller has settled it.
    pub(crate) fn send_writes(
        &self,
        ino: u64,
        of: Option<&OpenFile>,
        pieces: &[(u64, &[u8])],
    ) -> Result<(), Fail> {
        let (answers, _, stamp) =
            self.file_calls_stamped(ino, of, false, pieces.len(), |file, i| Request::Write {
                file,
                offset: pieces[i].0,
                data: pieces[i].1.to_vec(),
            })?;
        let attr = check_written(pieces, answers)?;
        self.keep_attr(&self.state_of(ino, of), attr, stamp);
        Ok(())
    }

    /// Sends an attribute change behind the file's write (and changes) in flight and
    /// returns the attributes it will leave, without waiting. `None`, with nothing sent, if
    /// nothing is in flight, the attributes before it are not known, or its connection is
    /// gone: the caller then makes the change the ordinary way.
    pub(crate) fn set_attr_behind(&self, state: &FileState, attr: SetAttr) -> Option<Attr> {
        if attr.size.is_some() || !self.status.following() {
            return None;
        }
        let mut wb = lock(state);
        if wb.failed.is_some() {
            return None;
        }
        let (of, gen) = {
            let (o, g) = wb.chain.back()?.through();
            (o.clone(), g)
        };
        // What the last change on its way leaves, or storage's last word before the chain.
        let base = match &wb.expected {
            Some(e) => e.clone(),
            None => state.base_attr()?,
        };
        let (client, current) = self.st.current()?;
        let handle = match *super::lock(&of.remote) {
            Some((g, h)) if g == gen && current == gen => h,
            _ => return None,
        };
        let clen = super::lock(&state.cache).clen?;
        let now = super::core::timespec_now();
        let time = |set: Option<TimeSet>, unset: Timespec| match set {
            Some(TimeSet::At(t)) => t,
            Some(TimeSet::Now) => now,
            None => unset,
        };
        let written = matches!(wb.chain.back(), Some(Sent::Write(_)));
        let expected = Attr {
            size: clen,
            blocks: clen.div_ceil(512),
            perm: attr.mode.map_or(base.perm, |m| m & 0o7777),
            atime: time(attr.atime, base.atime),
            mtime: time(attr.mtime, if written { now } else { base.mtime }),
            ctime: now,
            ..base
        };
        let stamp = self.stamp(state);
        let request = Request::SetAttr {
            file: FileRef::Handle(handle),
            attr,
        };
        let call = client.begin(&request, self.opts.request_timeout).ok()?;
        wb.chain.push_back(Sent::Attr(SentAttr {
            ino: of.ino,
            of,
            gen,
            attr,
            call,
            stamp,
            _pending: PendingWrite::new(&self.status),
        }));
        wb.expected = Some(expected.clone());
        Some(expected)
    }

    fn finish_attr(&self, sent: SentAttr) -> Result<(), Fail> {
        let answer = match sent.call.wait() {
            Ok(r) => r,
            Err(e) => {
                // Setting the same mode and times again is harmless if the first one landed.
                let mut maybe_sent = false;
                match self.st.retry_after(e, sent.gen, &mut maybe_sent) {
                    Some(f) => return Err(f),
                    None => self
                        .file_calls_stamped(sent.ino, Some(&sent.of), false, 1, |file, _| {
                            Request::SetAttr {
                                file,
                                attr: sent.attr,
                            }
                        })?
                        .0
                        .remove(0),
                }
            }
        };
        match answer {
            Response::Attr(a) => {
                // The base for what later changes leave, even if a write sent since makes
                // these attributes too old to answer a stat with.
                sent.of.file.keep_base(a.clone());
                self.keep_attr(&sent.of.file, Some(a), sent.stamp);
                Ok(())
            }
            r => Err(expect_resp(r, "Attr")),
        }
    }

    /// The attributes an ownership change leaves while attribute changes are in flight:
    /// those the last of them will leave (storage does not keep ownership).
    pub(crate) fn expected_attr(&self, state: &FileState) -> Option<Attr> {
        let wb = state.behind.try_lock().ok()?;
        match wb.chain.back() {
            Some(Sent::Attr(_)) => wb.expected.clone(),
            _ => None,
        }
    }

    fn finish_write(&self, sent: SentWrite) -> Result<(), Fail> {
        let pieces = pieces_of(&sent.requests);
        let mut answers = Vec::with_capacity(sent.calls.len());
        for call in sent.calls {
            match call.wait() {
                Ok(r) => answers.push(r),
                Err(e) => {
                    // A lost connection (None) sends the write again on the next one.
                    let mut maybe_sent = false;
                    return match self.st.retry_after(e, sent.gen, &mut maybe_sent) {
                        Some(f) => Err(f),
                        None => self.send_writes(sent.ino, Some(&sent.of), &pieces),
                    };
                }
            }
        }
        let attr = check_written(&pieces, answers)?;
        self.keep_attr(&sent.of.file, attr, sent.stamp);
        drop(pieces);
        for r in sent.requests {
            if let Request::Write { data, .. } = r {
                cloudstore_protocol::buffers::give_back(data);
            }
        }
        Ok(())
    }
}
