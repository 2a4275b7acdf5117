//! Unlink-behind: an application's unlink of a file is answered once the request is on its
//! way to storage, and storage's answer is collected by a thread of its own.
//!
//! A synchronous unlink costs the whole round trip to storage, so `rm` of many files, or a
//! build cleaning its tree, pays one round trip per file; gocryptfs pays one `unlinkat`.
//! Here the unlinks of one directory overlap, up to [`UNLINKS_IN_FLIGHT`] at a time.
//!
//! The rules that keep it safe:
//! - Only a file's name with a short ciphertext name and a single known name goes this way:
//!   a long name has its `.name` file to remove after the entry, and a second hard link
//!   has a link count that must be right when it is next asked for. Directories are never
//!   unlinked (the kernel sends rmdir).
//! - Storage serves a connection's requests concurrently, so anything whose outcome an
//!   unlink in flight could change waits for the directory's unlinks to be answered first
//!   ([`Core::unlinks_settled`]): a lookup of a name whose unlink is on its way, any request
//!   that adds, removes or renames an entry of the directory, any rename (an unlink sent
//!   again after a lost connection names its file by path), its listing, a change of its
//!   attributes, its fsync, and the unmount. Lookups of other names, and everything about
//!   other directories and files, go on meanwhile: storage may serve them in either order
//!   with the same outcome.
//! - The name is gone from this mount's tables at once; the kernel dropped it too. The
//!   kernel asks for the directory's attributes after every unlink (its permission check
//!   for the next one needs them): while unlinks are on their way it is answered with the
//!   attributes the last answer left, with the time of the last unlink sent as modification
//!   and change time, which is what storage will have once they are done. Without such
//!   attributes (the first unlink after anything else changed the directory) the unlink
//!   goes the synchronous way, whose answer brings them. Once the last unlink in flight is
//!   answered, storage's attributes are kept if nothing else changed the directory since.
//! - A connection lost with the unlink in flight: it is sent again on the next one, and
//!   "no such file" then means the first one did it.
//! - An unlink storage refuses leaves the file where it was: nothing is lost. The failure is
//!   logged with the file's name and kept for `cloudstore status`, and the directory's
//!   entries are no longer taken as known, so the next lookup finds the file again.
//! - Until storage has answered, the unlink counts in the status's pending writes.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use cloudstore_protocol::{Attr, ErrorCode, PendingCall, Request, Response};

use cloudstore_format::EncryptedName;

use super::core::{expect_resp, join, Core};
use super::lock;
use super::nodes::FileState;

/// Unlinks of one directory on their way at once. Below the protocol client's window (64)
/// so that a mass delete leaves room for everything else.
pub(crate) const UNLINKS_IN_FLIGHT: usize = 32;

/// A directory's unlinks on their way to storage.
#[derive(Default, Debug)]
pub(crate) struct Unlinking {
    /// The entries whose unlink is on its way.
    entries: Vec<String>,
    /// The directory's attributes as they will be once those are done.
    expected: Option<Attr>,
    /// The count ([`FileState::attrs_changing`]) the last unlink sent took.
    last_sent: u64,
    /// The attributes of the latest answer so far (by change time).
    latest: Option<Attr>,
}

/// An unlink sent and not yet answered.
struct SentUnlink {
    dir: Arc<FileState>,
    dir_ino: u64,
    entry: String,
    cpath: String,
    /// The plaintext path, for the log.
    shown: String,
    call: PendingCall,
    gen: u64,
}

/// The mount's unlinks on their way, in the order they were sent.
pub(crate) struct UnlinkQueue {
    tx: Sender<SentUnlink>,
    rx: Mutex<Option<Receiver<SentUnlink>>>,
    pending: Mutex<usize>,
    answered: Condvar,
}

impl UnlinkQueue {
    pub(crate) fn new() -> UnlinkQueue {
        let (tx, rx) = std::sync::mpsc::channel();
        UnlinkQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(0),
            answered: Condvar::new(),
        }
    }
}

/// Collects the answers, one unlink after the other, until the mount is gone.
fn collect(core: Weak<Core>, rx: Receiver<SentUnlink>) {
    while let Ok(sent) = rx.recv() {
        let Some(core) = core.upgrade() else {
            return;
        };
        core.finish_unlink(sent);
    }
}

impl Core {
    /// Starts the thread that collects the answers to unlinks sent behind.
    pub(crate) fn start_unlink_collector(self: &Arc<Self>) {
        let Some(rx) = lock(&self.unlinks.rx).take() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("cloudstore-unlinks".into())
            .spawn(move || collect(weak, rx));
    }

    /// Sends the unlink of `name` in `parent` behind if that needs no wait, so on fuser's
    /// reading thread: the directory's IV is known, the name is short and the directory
    /// has room for another unlink in flight. `false`: run [`Core::unlink`] on a worker.
    pub(crate) fn unlink_now(&self, parent: u64, name: &[u8]) -> bool {
        let Some((en, entry)) = self.child_now(parent, name) else {
            return false;
        };
        if matches!(en, EncryptedName::Long { .. }) {
            return false;
        }
        let Ok(dir) = self.cpath(parent) else {
            return false;
        };
        let cpath = join(&dir, &entry);
        let shown = self.shown_child(parent, name);
        self.unlink_behind(parent, &entry, &cpath, shown, false)
            .is_some()
    }

    /// Sends the unlink of `entry` (ciphertext path `cpath`) in directory `parent` and
    /// returns without waiting for storage, or `None` when it must go the synchronous way
    /// (see the module's rules; no connection up, which the synchronous way waits for).
    /// With the directory's window full, waits for room if `wait_for_room`, else `None`.
    pub(crate) fn unlink_behind(
        &self,
        parent: u64,
        entry: &str,
        cpath: &str,
        shown: String,
        wait_for_room: bool,
    ) -> Option<()> {
        // Kept attributes are trusted only while pushes are followed.
        if !self.status.following() {
            return None;
        }
        {
            let nodes = lock(&self.nodes);
            if let Some(child) = nodes.children.get(&(parent, entry.to_owned())) {
                if nodes.map.get(child).is_some_and(|n| n.names.len() > 1) {
                    return None;
                }
            }
        }
        let dir = self.file_state(parent);
        let mut unlinking = lock(&dir.unlinking);
        if unlinking.entries.iter().any(|e| e == entry) {
            // The kernel unlinks a name it has looked up again: that lookup settled it.
            return None;
        }
        while unlinking.entries.len() >= UNLINKS_IN_FLIGHT {
            if !wait_for_room {
                return None;
            }
            unlinking = dir
                .unlinked
                .wait(unlinking)
                .unwrap_or_else(|p| p.into_inner());
        }
        let before = match &unlinking.expected {
            Some(a) => a.clone(),
            None => {
                let c = lock(&dir.cache);
                c.fresh
                    .clone()
                    .or_else(|| c.given.as_ref().map(|(a, _)| a.clone()))?
            }
        };
        let (client, gen) = self.st.current()?;
        self.entry_attrs_changing(parent, entry);
        let count = dir.attrs_changing();
        let request = Request::Unlink {
            path: cpath.to_owned(),
        };
        let call = client.begin(&request, self.opts.request_timeout).ok()?;
        unlinking.entries.push(entry.to_owned());
        unlinking.expected = Some(changed_now(before));
        unlinking.last_sent = count;
        drop(unlinking);
        *lock(&self.unlinks.pending) += 1;
        self.status.write_started();
        lock(&self.nodes).detach(parent, entry);
        let sent = SentUnlink {
            dir,
            dir_ino: parent,
            entry: entry.to_owned(),
            cpath: cpath.to_owned(),
            shown,
            call,
            gen,
        };
        if let Err(unsent) = self.unlinks.tx.send(sent) {
            // No collector (the mount is stopping): answered here.
            self.finish_unlink(unsent.0);
        }
        Some(())
    }

    /// Waits for storage's answer to an unlink sent behind and makes it count.
    fn finish_unlink(&self, sent: SentUnlink) {
        let outcome = match sent.call.wait() {
            Ok(Response::Unlinked { parent }) => Ok(Some(parent)),
            Ok(r) => Err(expect_resp(r, "Unlinked")),
            Err(e) => {
                let mut maybe_sent = false;
                match self.st.retry_after(e, sent.gen, &mut maybe_sent) {
                    Some(f) => Err(f),
                    None => self
                        .st
                        .call(Request::Unlink {
                            path: sent.cpath.clone(),
                        })
                        .map(|_| None),
                }
            }
        };
        let dir_after = match outcome {
            Ok(a) => a,
            // Gone either way: by this unlink (sent again after a lost connection) or by
            // someone else's before it.
            Err(f) if f.is(ErrorCode::NotFound) => None,
            Err(f) => {
                let shown = &sent.shown;
                tracing::error!(volume = %self.opts.volume_name, path = %shown, "unlink {shown}: failed after it was answered: {}; the file is still there", f.msg);
                self.status.set_error(format!(
                    "unlink {shown}: {}; the file is still there",
                    f.msg
                ));
                lock(&self.nodes).unknown_entries(sent.dir_ino);
                None
            }
        };
        {
            let mut unlinking = lock(&sent.dir.unlinking);
            unlinking.entries.retain(|e| *e != sent.entry);
            match dir_after {
                Some(a) => {
                    if !unlinking.latest.as_ref().is_some_and(|l| l.ctime > a.ctime) {
                        unlinking.latest = Some(a);
                    }
                }
                // Not known after this one: nothing kept from the others either.
                None => {
                    sent.dir.attrs_changing();
                }
            }
            if unlinking.entries.is_empty() {
                unlinking.expected = None;
                if let Some(a) = unlinking.latest.take() {
                    sent.dir.keep_attr(a, unlinking.last_sent);
                }
            }
        }
        sent.dir.unlinked.notify_all();
        *lock(&self.unlinks.pending) -= 1;
        self.unlinks.answered.notify_all();
        self.status.write_ended();
    }

    /// Waits until the unlinks sent behind in the directory whose state is `dir` are
    /// answered.
    pub(crate) fn unlinks_settled(&self, dir: &FileState) {
        let mut inflight = lock(&dir.unlinking);
        while !inflight.entries.is_empty() {
            inflight = dir
                .unlinked
                .wait(inflight)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// [`Core::unlinks_settled`] for the directory `dir`.
    pub(crate) fn dir_unlinks_settled(&self, dir: u64) {
        self.unlinks_settled(&self.file_state(dir));
    }

    /// Waits for the unlinks of `parent` if one of them is of `entry`: a lookup of a name
    /// whose unlink is on its way would find it still there.
    pub(crate) fn unlink_of_settled(&self, parent: u64, entry: &str) {
        let dir = self.file_state(parent);
        if lock(&dir.unlinking).entries.iter().any(|e| e == entry) {
            self.unlinks_settled(&dir);
        }
    }

    /// The attributes to answer for `dir` with while unlinks in it are on their way.
    pub(crate) fn attr_while_unlinking(&self, dir: &FileState) -> Option<Attr> {
        let unlinking = lock(&dir.unlinking);
        if unlinking.entries.is_empty() || !self.status.following() {
            return None;
        }
        unlinking.expected.clone()
    }

    /// Waits, at most `limit`, until every unlink sent behind is answered (the unmount, a
    /// rename).
    pub(crate) fn all_unlinks_settled(&self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut pending = lock(&self.unlinks.pending);
        while *pending > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(volume = %self.opts.volume_name, "gave up waiting for {} unlinks storage has not answered", *pending);
                return;
            }
            pending = self
                .unlinks
                .answered
                .wait_timeout(pending, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A directory's attributes after an entry was removed now: modified and changed now.
fn changed_now(mut a: Attr) -> Attr {
    let t = super::core::timespec_now();
    a.mtime = t;
    a.ctime = t;
    a
}
