//! Three-way sync of one volume: storage (through a `cloudstore.Sync+VOL` protocol client)
//! against the cloud folder `<remote>/<volume>` (through rclone), with the state database as
//! the common base.
//!
//! Which paths to look at: on the storage side the journal names them (`ChangesSince` from
//! the saved position; `RescanNeeded` or a first sync lists the whole tree); on the cloud
//! side a full pass lists the folder and compares each object with the base. A quick pass
//! (after a storage push) stats just the storage-changed paths in the cloud.
//!
//! What to do per path, with `S`/`C` the current states and `B` the base:
//! - only one side differs from `B`: copy it over (or delete on the other side);
//! - both differ: equal sizes are compared byte for byte (equal: just recorded, so a first
//!   sync of two copies of a tree, or a pass repeated after a crash, costs no conflict);
//!   otherwise the cloud's version is parked in storage (`ParkConflict`) and storage's
//!   version goes to the cloud; a storage edit beats a cloud deletion (re-uploaded); a cloud
//!   edit against a storage deletion is parked and the cloud copy then removed. Nothing is
//!   dropped.
//! - more deletions in one pass than the limits allow: nothing is done until the user
//!   confirms (`cloudstore sync --confirm-deletes`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cloudstore_protocol::{
    Attr, ChangeKind, Changes, Client, ErrorCode, Expect, FileState, FileType, RemoteError,
    Request, Response, Timespec,
};
use tracing::{debug, info, warn};

use super::newdirs::{NewDirs, Ready, Sent};
use super::offer::{offer, Content, Offered};
use super::rclone::{CloudEntry, CloudError, Rclone};
use super::statedb::{CloudSig, Entry, StateDb, StoreSig};
use super::status::VolumeStatus;

/// When a pass deletes more than this many files, or more than `share` of the files it
/// tracks (once at least `min_for_share` are to go), it stops for confirmation. 100 files /
/// 25 %: an ordinary clean-up passes, a wiped folder or a detached cloud drive does not.
#[derive(Clone, Copy, Debug)]
pub struct DeleteLimits {
    pub max_count: usize,
    pub share: f64,
    /// Below this many deletions the share rule does not apply (deleting 2 of 5 files is
    /// ordinary work, not a wipe).
    pub min_for_share: usize,
}

impl Default for DeleteLimits {
    fn default() -> Self {
        DeleteLimits {
            max_count: 100,
            share: 0.25,
            min_for_share: 10,
        }
    }
}

/// A journal page: the protocol's largest.
const PAGE: u32 = 1024;

/// Records made durable at least every this many actions, so a crash repeats little work.
const COMMIT_EVERY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("storage: {0}")]
    Storage(#[from] RemoteError),
    #[error("cloud: {0}")]
    Cloud(#[from] super::rclone::CloudError),
    #[error(transparent)]
    Db(#[from] super::statedb::DbError),
    #[error("{op} {path:?}: {why}")]
    Other {
        op: &'static str,
        path: String,
        why: String,
    },
}

type Result<T> = std::result::Result<T, SyncError>;

/// Cloud errors in a row after which a pass stops (see `execute`): a few, so one bad file
/// does not stop the others, while a dead server stops the pass within seconds.
const CLOUD_FAILURES_TO_STOP: usize = 3;

/// Small files cost rclone more per call than per byte (rclone.rs), so uploads of files up
/// to `UPLOAD_BATCH_FILE_MAX` share one call, up to `UPLOAD_BATCH_FILES` files and
/// `UPLOAD_BATCH_BYTES` bytes; larger files go one to a call.
const UPLOAD_BATCH_FILE_MAX: u64 = 1 << 20;
const UPLOAD_BATCH_FILES: usize = 64;
const UPLOAD_BATCH_BYTES: u64 = 16 << 20;

/// What a pass did.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub uploaded: usize,
    pub downloaded: usize,
    pub deleted_cloud: usize,
    pub deleted_store: usize,
    pub conflicts: usize,
    pub bytes: u64,
    pub errors: Vec<String>,
    /// Deletions waiting for confirmation (nothing was done).
    pub blocked_deletions: Option<usize>,
}

#[derive(Debug, Clone)]
enum Action {
    Upload {
        path: String,
        size: u64,
    },
    Download {
        path: String,
        c: CloudEntry,
        s: Option<StoreSig>,
    },
    DeleteCloud {
        path: String,
        dir: bool,
    },
    DeleteStore {
        path: String,
        s: StoreSig,
    },
    MkdirCloud {
        path: String,
        s: StoreSig,
        /// The cloud has nothing under this name (see newdirs.rs).
        fresh: bool,
    },
    MkdirStore {
        path: String,
        c: CloudEntry,
    },
    /// Both present, no agreement on record: compare, then record or conflict.
    Compare {
        path: String,
        s: StoreSig,
        c: CloudEntry,
    },
    Conflict {
        path: String,
        s: Option<StoreSig>,
        c: CloudEntry,
    },
    Record {
        path: String,
        e: Entry,
    },
    Forget {
        path: String,
    },
}

impl Action {
    fn path(&self) -> &str {
        match self {
            Action::Upload { path, .. }
            | Action::Download { path, .. }
            | Action::DeleteCloud { path, .. }
            | Action::DeleteStore { path, .. }
            | Action::MkdirCloud { path, .. }
            | Action::MkdirStore { path, .. }
            | Action::Compare { path, .. }
            | Action::Conflict { path, .. }
            | Action::Record { path, .. }
            | Action::Forget { path } => path,
        }
    }
}

fn ts_ns(t: Timespec) -> i128 {
    t.secs as i128 * 1_000_000_000 + t.nanos as i128
}

fn ns_ts(n: i128) -> Timespec {
    Timespec::new(
        n.div_euclid(1_000_000_000) as i64,
        n.rem_euclid(1_000_000_000) as u32,
    )
}

/// The state of a storage entry as the base records it; `None` for what sync ignores
/// (symlinks and special files: a cloud folder cannot hold them).
fn store_sig(a: &Attr) -> Option<StoreSig> {
    match a.kind {
        FileType::File => Some(StoreSig {
            dir: false,
            size: a.size,
            mtime: ts_ns(a.mtime),
        }),
        FileType::Dir => Some(StoreSig::DIR),
        _ => None,
    }
}

fn cloud_sig(c: &CloudEntry) -> CloudSig {
    CloudSig {
        dir: c.is_dir,
        size: c.size,
        modtime: c.modtime.clone(),
    }
}

fn is_not_found(e: &RemoteError) -> bool {
    matches!(e.code, ErrorCode::NotFound | ErrorCode::NotDir)
}

/// One volume's sync.
pub struct VolumeSync {
    pub volume: String,
    store: Client,
    cloud: Arc<Rclone>,
    db: Mutex<StateDb>,
    limits: DeleteLimits,
    workers: usize,
    status: Arc<Mutex<VolumeStatus>>,
    /// The flag file `cloudstore sync --confirm-deletes` creates.
    confirm_flag: PathBuf,
}

/// Storage-side findings of a pass.
struct StoreScan {
    /// Current state of every path to look at (`None`: absent or ignored).
    current: BTreeMap<String, Option<StoreSig>>,
    /// The journal position to save once every path is handled.
    next_seq: u64,
    /// The whole tree was listed (so absent paths are absent).
    complete: bool,
}

impl VolumeSync {
    #[allow(clippy::too_many_arguments)] // one call site; each is a distinct part of the rig
    pub fn new(
        volume: &str,
        store: Client,
        cloud: Arc<Rclone>,
        db: StateDb,
        limits: DeleteLimits,
        workers: usize,
        status: Arc<Mutex<VolumeStatus>>,
        confirm_flag: PathBuf,
    ) -> VolumeSync {
        VolumeSync {
            volume: volume.to_owned(),
            store,
            cloud,
            db: Mutex::new(db),
            limits,
            workers: workers.max(1),
            status,
            confirm_flag,
        }
    }

    fn cloud_path(&self, p: &str) -> String {
        format!("{}/{p}", self.volume)
    }

    fn stat_store(&self, p: &str) -> Result<Option<StoreSig>> {
        match self.store.call(Request::Stat {
            file: cloudstore_protocol::FileRef::Path(p.to_owned()),
        }) {
            Ok(Response::Attr(a)) => Ok(store_sig(&a)),
            Ok(other) => Err(SyncError::Other {
                op: "stat",
                path: p.to_owned(),
                why: format!("storage answered {} instead of Attr", other.name()),
            }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every entry of the storage tree.
    fn list_store_tree(&self) -> Result<BTreeMap<String, Option<StoreSig>>> {
        let mut out = BTreeMap::new();
        let mut after = None;
        loop {
            let page = match self.store.call(Request::ListTree {
                after: after.clone(),
                limit: PAGE,
            })? {
                Response::TreePage(p) => p,
                other => {
                    return Err(SyncError::Other {
                        op: "list tree",
                        path: String::new(),
                        why: format!("storage answered {} instead of TreePage", other.name()),
                    })
                }
            };
            for e in page.entries {
                if e.path.is_empty() {
                    continue;
                }
                out.insert(e.path, store_sig(&e.attr));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Every entry beneath the storage directory `dir` (a renamed directory's new contents).
    fn walk_store(&self, dir: &str, out: &mut BTreeSet<String>) -> Result<()> {
        let mut cookie = 0;
        loop {
            let page = match self.store.call(Request::ReadDir {
                path: dir.to_owned(),
                cookie,
                max: PAGE,
                with_attrs: false,
            }) {
                Ok(Response::DirPage(p)) => p,
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for e in page.entries {
                let p = format!("{dir}/{}", e.name);
                if e.kind == FileType::Dir {
                    self.walk_store(&p, out)?;
                }
                out.insert(p);
            }
            match page.next {
                Some(c) => cookie = c,
                None => return Ok(()),
            }
        }
    }

    fn journal_head(&self) -> Result<u64> {
        match self.store.call(Request::JournalHead)? {
            Response::Head { head, .. } => Ok(head),
            other => Err(SyncError::Other {
                op: "journal head",
                path: String::new(),
                why: format!("storage answered {}", other.name()),
            }),
        }
    }

    fn full_store_scan(&self) -> Result<StoreScan> {
        // The head first: a change made while listing is read again from the journal.
        let head = self.journal_head()?;
        let current = self.list_store_tree()?;
        let mut current = current;
        for p in self.db.lock().unwrap().entries.keys() {
            current.entry(p.clone()).or_insert(None);
        }
        Ok(StoreScan {
            current,
            next_seq: head,
            complete: true,
        })
    }

    /// The paths the journal names since the saved position, with their current state.
    fn scan_store(&self) -> Result<StoreScan> {
        // The guard must be gone before a full scan, which locks the database again.
        let saved = self.db.lock().unwrap().seq;
        let since = match saved {
            None => return self.full_store_scan(),
            Some(s) => s,
        };
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut renamed_dirs: Vec<(String, String)> = Vec::new();
        // Paths in an unfinished in-place modification: left for a later pass (the journal
        // position stays before their start), so a half-written file is not uploaded.
        let mut open_sessions: BTreeMap<String, u64> = BTreeMap::new();
        let mut pos = since;
        loop {
            let changes = match self.store.call(Request::ChangesSince {
                since: pos,
                limit: PAGE,
            })? {
                Response::Changes(c) => c,
                other => {
                    return Err(SyncError::Other {
                        op: "changes since",
                        path: String::new(),
                        why: format!("storage answered {}", other.name()),
                    })
                }
            };
            let (entries, next) = match changes {
                Changes::RescanNeeded { floor, head } => {
                    info!(volume = %self.volume, since = pos, floor, head, "the storage journal no longer reaches back to our position; rescanning the tree");
                    return self.full_store_scan();
                }
                Changes::Entries { entries, next } => (entries, next),
            };
            let done = entries.is_empty();
            for e in entries {
                match e.kind {
                    ChangeKind::ModifyStart => {
                        open_sessions.entry(e.path.clone()).or_insert(e.seq);
                    }
                    ChangeKind::ModifyEnd => {
                        open_sessions.remove(&e.path);
                        dirty.insert(e.path);
                    }
                    ChangeKind::ConflictParked => {}
                    ChangeKind::Rename | ChangeKind::Exchange => {
                        if let Some(n) = &e.new_path {
                            dirty.insert(n.clone());
                            renamed_dirs.push((e.path.clone(), n.clone()));
                        }
                        dirty.insert(e.path);
                    }
                    _ => {
                        dirty.insert(e.path);
                    }
                }
            }
            pos = next;
            if done {
                break;
            }
        }
        // A renamed directory: what the base knew under either name, and what is there now.
        for (a, b) in &renamed_dirs {
            let db = self.db.lock().unwrap();
            for side in [a, b] {
                let prefix = format!("{side}/");
                for p in db.entries.range(prefix.clone()..) {
                    if !p.0.starts_with(&prefix) {
                        break;
                    }
                    dirty.insert(p.0.clone());
                }
            }
            drop(db);
            for side in [a, b] {
                if matches!(self.stat_store(side)?, Some(StoreSig { dir: true, .. })) {
                    self.walk_store(side, &mut dirty)?;
                }
            }
        }
        let mut current = BTreeMap::new();
        for p in dirty {
            if p.is_empty() || open_sessions.contains_key(&p) {
                continue;
            }
            let s = self.stat_store(&p)?;
            current.insert(p, s);
        }
        let next_seq = open_sessions
            .values()
            .copied()
            .min()
            .unwrap_or(pos)
            .min(pos);
        Ok(StoreScan {
            current,
            next_seq,
            complete: false,
        })
    }

    /// One pass. `full`: list the cloud folder (the poll); otherwise only the paths storage
    /// changed are looked at, each statted in the cloud.
    pub fn pass(&self, full: bool) -> Result<PassReport> {
        let started = Instant::now();
        let store = self.scan_store()?;
        let full = full || store.complete;
        let mut cloud: BTreeMap<String, Option<CloudEntry>> = BTreeMap::new();
        let mut store_now = store.current;
        if full {
            let listing = self.cloud.list(&self.volume)?;
            let db = self.db.lock().unwrap();
            let mut seen = BTreeMap::new();
            for c in listing {
                if c.path.is_empty() {
                    continue;
                }
                seen.insert(c.path.clone(), c);
            }
            // Cloud-side changes: objects that differ from the base, and base paths gone.
            let mut cloud_dirty = Vec::new();
            for (p, c) in &seen {
                if db.get(p).map(|e| &e.c) != Some(&cloud_sig(c)) {
                    cloud_dirty.push(p.clone());
                }
            }
            for p in db.entries.keys() {
                if !seen.contains_key(p) {
                    cloud_dirty.push(p.clone());
                }
            }
            drop(db);
            for p in &cloud_dirty {
                if !store_now.contains_key(p) {
                    let s = if store.complete {
                        None
                    } else {
                        self.stat_store(p)?
                    };
                    store_now.insert(p.clone(), s);
                }
            }
            for p in store_now.keys() {
                cloud.insert(p.clone(), seen.get(p).cloned());
            }
        } else {
            for p in store_now.keys() {
                cloud.insert(p.clone(), self.cloud.stat(&self.cloud_path(p))?);
            }
        }

        let plan = self.plan(&store_now, &cloud);
        let mut report = PassReport::default();
        let deletions = plan
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::DeleteCloud { dir: false, .. }
                        | Action::DeleteStore {
                            s: StoreSig { dir: false, .. },
                            ..
                        }
                )
            })
            .count();
        let tracked = self.db.lock().unwrap().entries.len();
        let over = deletions > self.limits.max_count
            || (deletions >= self.limits.min_for_share
                && deletions as f64 > self.limits.share * tracked as f64);
        let mut confirmed = false;
        if over {
            if self.confirm_flag.exists() {
                warn!(volume = %self.volume, deletions, tracked, "deleting {deletions} files as confirmed with `cloudstore sync --confirm-deletes`");
                confirmed = true;
            } else {
                warn!(volume = %self.volume, deletions, tracked, "this pass would delete {deletions} of {tracked} files; sync of {} stopped until `cloudstore sync --confirm-deletes`", self.volume);
                report.blocked_deletions = Some(deletions);
                let mut st = self.status.lock().unwrap();
                st.blocked_deletions = Some(deletions);
                st.last_error = Some(format!(
                    "{deletions} deletions of {tracked} files wait for `cloudstore sync --confirm-deletes`"
                ));
                return Ok(report);
            }
        }
        {
            let mut st = self.status.lock().unwrap();
            st.blocked_deletions = None;
            st.set_pending(plan_summary(&plan));
        }
        self.execute(plan, &mut report);
        let mut db = self.db.lock().unwrap();
        if report.errors.is_empty() {
            db.set_seq(store.next_seq)?;
            if full {
                db.set_initialized()?;
            }
        }
        db.commit()?;
        drop(db);
        if report.errors.is_empty() {
            // Storage may now forget journal entries below this position.
            let _ = self.store.call(Request::Ack {
                seq: store.next_seq,
            });
        }
        if confirmed && report.errors.is_empty() {
            let _ = std::fs::remove_file(&self.confirm_flag);
        }
        let secs = started.elapsed().as_secs_f64();
        let mut st = self.status.lock().unwrap();
        st.clear_pending();
        st.conflicts += report.conflicts;
        if report.bytes > 0 && secs > 0.0 {
            st.rate_bps = (report.bytes as f64 / secs) as u64;
        }
        st.last_pass = Some(SystemTime::now());
        match report.errors.first() {
            Some(e) => st.last_error = Some(e.clone()),
            None if st.blocked_deletions.is_none() => st.last_error = None,
            None => {}
        }
        Ok(report)
    }

    fn plan(
        &self,
        store: &BTreeMap<String, Option<StoreSig>>,
        cloud: &BTreeMap<String, Option<CloudEntry>>,
    ) -> Vec<Action> {
        let db = self.db.lock().unwrap();
        let mut plan = Vec::new();
        for (p, s) in store {
            let c = cloud.get(p).cloned().flatten();
            let b = db.get(p);
            let s = *s;
            let cs = c.as_ref().map(cloud_sig);
            let s_changed = s != b.map(|e| e.s);
            let c_changed = cs.as_ref() != b.map(|e| &e.c);
            let path = p.clone();
            let a = match (s_changed, c_changed) {
                (false, false) => continue,
                (true, false) => match (s, &c) {
                    (Some(s @ StoreSig { dir: true, .. }), _) => Action::MkdirCloud {
                        path,
                        s,
                        fresh: c.is_none(),
                    },
                    (Some(s), _) => Action::Upload { path, size: s.size },
                    (None, Some(c)) => Action::DeleteCloud {
                        path,
                        dir: c.is_dir,
                    },
                    (None, None) => Action::Forget { path },
                },
                (false, true) => match (&c, s) {
                    (Some(c), _) if c.is_dir => Action::MkdirStore { path, c: c.clone() },
                    (Some(c), s) => Action::Download {
                        path,
                        c: c.clone(),
                        s,
                    },
                    (None, Some(s)) => Action::DeleteStore { path, s },
                    (None, None) => Action::Forget { path },
                },
                (true, true) => match (s, c) {
                    (None, None) => Action::Forget { path },
                    (Some(s), Some(c)) if s.dir && c.is_dir => Action::Record {
                        path,
                        e: Entry {
                            s,
                            c: cloud_sig(&c),
                        },
                    },
                    (Some(s), Some(c)) if !s.dir && !c.is_dir => {
                        if s.size == c.size {
                            Action::Compare { path, s, c }
                        } else {
                            Action::Conflict {
                                path,
                                s: Some(s),
                                c,
                            }
                        }
                    }
                    (Some(s), Some(c)) if !c.is_dir => Action::Conflict {
                        path,
                        s: Some(s),
                        c,
                    },
                    (Some(_), Some(_)) => {
                        warn!(volume = %self.volume, path = %p, "a directory in the cloud where storage has a file; left alone");
                        continue;
                    }
                    (Some(s), None) if s.dir => Action::MkdirCloud {
                        path,
                        s,
                        fresh: true,
                    },
                    // Edited in storage, deleted in the cloud: the edit wins.
                    (Some(s), None) => Action::Upload { path, size: s.size },
                    (None, Some(c)) if c.is_dir => Action::MkdirStore { path, c },
                    // Deleted in storage, edited in the cloud: the edit is parked.
                    (None, Some(c)) => Action::Conflict { path, s: None, c },
                },
            };
            plan.push(a);
        }
        plan
    }

    fn execute(&self, plan: Vec<Action>, report: &mut PassReport) {
        let mut dirs_first: Vec<Action> = Vec::new();
        let mut files: VecDeque<Action> = VecDeque::new();
        let mut dirs_last: Vec<Action> = Vec::new();
        let mut fresh_dirs: BTreeMap<String, StoreSig> = BTreeMap::new();
        for a in plan {
            match &a {
                Action::MkdirCloud {
                    path,
                    s,
                    fresh: true,
                } => {
                    fresh_dirs.insert(path.clone(), *s);
                }
                Action::MkdirCloud { .. } | Action::MkdirStore { .. } => dirs_first.push(a),
                Action::DeleteCloud { dir: true, .. }
                | Action::DeleteStore {
                    s: StoreSig { dir: true, .. },
                    ..
                } => dirs_last.push(a),
                _ => files.push_back(a),
            }
        }
        dirs_last.sort_by(|a, b| b.path().cmp(a.path()));
        let uploads: Vec<(String, u64)> = files
            .iter()
            .filter_map(|a| match a {
                Action::Upload { path, size } => Some((path.clone(), *size)),
                _ => None,
            })
            .collect();
        let (new_dirs, create_first) =
            NewDirs::choose(&fresh_dirs, &uploads, || self.cloud.partial_dir());
        dirs_first.extend(create_first.into_iter().map(|path| Action::MkdirCloud {
            s: fresh_dirs[&path],
            path,
            fresh: true,
        }));
        let report_m = Mutex::new(std::mem::take(report));
        let made_dirs = Mutex::new(BTreeSet::new());
        // Cloud failures in a row: past CLOUD_FAILURES_TO_STOP the cloud is taken to be down
        // and the rest of the plan waits for the next pass (the journal position does not
        // move, so nothing is forgotten) instead of each file sitting through rclone's
        // retries against a server that is gone.
        let cloud_failures = AtomicUsize::new(0);
        let settle = |what: &str, r: Result<()>| {
            match r {
                Ok(()) => cloud_failures.store(0, Ordering::Relaxed),
                Err(e) => {
                    warn!(volume = %self.volume, path = %what, "{e}");
                    if matches!(&e, SyncError::Cloud(c) if !matches!(c, super::rclone::CloudError::NotFound { .. }))
                    {
                        cloud_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    // Shown at once: a pass against an unreachable cloud can take a while.
                    self.status.lock().unwrap().last_error = Some(e.to_string());
                    report_m.lock().unwrap().errors.push(e.to_string());
                }
            }
        };
        let run = |a: Action| {
            let what = format!("{:?}", a.path());
            settle(&what, self.apply(a, &made_dirs, &report_m));
        };
        let cloud_down = || cloud_failures.load(Ordering::Relaxed) >= CLOUD_FAILURES_TO_STOP;
        let uploaded = |o: Outcome| {
            let r = o.result.and_then(|e| {
                self.record(&o.path, Some(e))?;
                let mut rep = report_m.lock().unwrap();
                rep.uploaded += 1;
                rep.bytes += o.size;
                Ok(())
            });
            settle(&format!("{:?}", o.path), r);
        };
        // New directories whose files have all arrived, and those they let go after them.
        let place = |ready: Vec<Ready>| {
            let mut ready = ready;
            while let Some(r) = ready.pop() {
                let n = r.sent.len();
                let outcomes = self.place_files(&r.partial, &r.dir, r.sent);
                let in_place = outcomes.iter().any(|o| o.result.is_ok());
                if in_place && n > 1 {
                    debug!(volume = %self.volume, path = %r.dir, files = n, "new directory moved into place");
                }
                outcomes.into_iter().for_each(uploaded);
                // In place with its files, or made empty (nothing of it arrived).
                let made = if in_place {
                    Ok(())
                } else {
                    self.cloud
                        .mkdir(&self.cloud_path(&r.dir))
                        .map_err(SyncError::from)
                };
                let dir_entry = Entry {
                    s: r.sig,
                    c: CloudSig::DIR,
                };
                settle(
                    &format!("{:?}", r.dir),
                    made.and_then(|()| self.record(&r.dir, Some(dir_entry))),
                );
                ready.extend(new_dirs.moved(&r.dir));
            }
        };
        for a in dirs_first {
            run(a);
        }
        place(new_dirs.start());
        let queue = Mutex::new(files);
        // Files into a new directory go to its partial directory and are counted there.
        let send_into = |dir: &str, partial: &str, files: &[(String, u64)]| -> Result<()> {
            let (failed, sent) = self.send_files(partial, files)?;
            failed.into_iter().for_each(uploaded);
            place(new_dirs.arrived(dir, sent, files.len()));
            Ok(())
        };
        let run_uploads = |files: Vec<(String, u64)>| {
            let dir = parent_dir(&files[0].0).to_owned();
            let partial = new_dirs.partial_of(&dir);
            let sent = match &partial {
                Some(partial) => send_into(&dir, partial, &files),
                None => self
                    .upload_files(&files)
                    .map(|outcomes| outcomes.into_iter().for_each(uploaded)),
            };
            let Err(e) = sent else { return };
            // One file rclone refuses fails the whole call: each goes again on its own, so
            // only that one fails; a cloud that is down shows in a few single failures and
            // stops the pass.
            warn!(volume = %self.volume, files = files.len(), "upload of several files failed, sending them one by one: {e}");
            cloud_failures.fetch_add(1, Ordering::Relaxed);
            // Shown at once: against a cloud that has gone, each of the retries below can
            // sit through rclone's own retries before it fails.
            self.status.lock().unwrap().last_error = Some(e.to_string());
            let mut files = files.into_iter();
            for (path, size) in files.by_ref() {
                match &partial {
                    Some(partial) => {
                        let one = [(path, size)];
                        if let Err(e) = send_into(&dir, partial, &one) {
                            let [(path, size)] = one;
                            uploaded(Outcome {
                                path,
                                size,
                                result: Err(e),
                            });
                            place(new_dirs.arrived(&dir, Vec::new(), 1));
                        }
                    }
                    None => run(Action::Upload { path, size }),
                }
                if cloud_down() {
                    break;
                }
            }
            let mut q = queue.lock().unwrap();
            for (path, size) in files.rev() {
                q.push_front(Action::Upload { path, size });
            }
        };
        std::thread::scope(|sc| {
            for _ in 0..self.workers {
                sc.spawn(|| loop {
                    if cloud_down() {
                        break;
                    }
                    let next = next_work(&mut queue.lock().unwrap(), self.workers);
                    match next {
                        Some(Work::One(Action::Upload { path, size }))
                            if new_dirs.partial_of(parent_dir(&path)).is_some() =>
                        {
                            run_uploads(vec![(path, size)])
                        }
                        Some(Work::One(a)) => run(a),
                        Some(Work::Uploads(files)) => run_uploads(files),
                        None => break,
                    }
                });
            }
        });
        let left = queue.into_inner().unwrap().len();
        if left > 0 {
            let msg = format!(
                "the cloud failed {CLOUD_FAILURES_TO_STOP} times in a row; {left} transfers wait for the next attempt"
            );
            warn!(volume = %self.volume, PENDING = left, "{msg}");
            report_m.lock().unwrap().errors.push(msg);
        } else {
            for a in dirs_last {
                run(a);
            }
        }
        // A pass that stopped early leaves new directories unmoved: what arrived of them is
        // not recorded (the next pass sends it again) and is removed now while the cloud
        // answers, else at the agent's next start.
        let unfinished = new_dirs.unfinished();
        if !unfinished.is_empty() {
            info!(volume = %self.volume, dirs = unfinished.len(), "new directories not moved into place: the pass stopped early");
            if !cloud_down() {
                for (_, partial) in unfinished {
                    let _ = self.cloud.purge(&partial);
                }
            }
        }
        *report = report_m.into_inner().unwrap();
    }

    fn record(&self, p: &str, e: Option<Entry>) -> Result<()> {
        let mut db = self.db.lock().unwrap();
        match e {
            Some(e) => db.set(p, e)?,
            None => db.remove(p)?,
        }
        if db_dirty_count(&db) {
            db.commit()?;
        }
        Ok(())
    }

    /// Creates `dir` and its missing ancestors in storage.
    fn mkdir_store(&self, dir: &str, made: &Mutex<BTreeSet<String>>) -> Result<()> {
        if dir.is_empty() || made.lock().unwrap().contains(dir) {
            return Ok(());
        }
        if let Some((parent, _)) = dir.rsplit_once('/') {
            self.mkdir_store(parent, made)?;
        }
        match self.store.call(Request::Mkdir {
            path: dir.to_owned(),
            mode: 0o700,
        }) {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::Exists => {}
            Err(e) => return Err(e.into()),
        }
        made.lock().unwrap().insert(dir.to_owned());
        Ok(())
    }

    fn parent_in_store(&self, p: &str, made: &Mutex<BTreeSet<String>>) -> Result<()> {
        match p.rsplit_once('/') {
            Some((parent, _)) => self.mkdir_store(parent, made),
            None => Ok(()),
        }
    }

    /// Storage's file → cloud. Returns the recorded entry.
    fn upload(&self, p: &str, size: u64) -> Result<Entry> {
        let mut r = self.upload_files(&[(p.to_owned(), size)])?;
        r.pop().expect("one outcome per file").result
    }

    /// Storage's files (path, size), all of one directory, → cloud: sent with one rclone
    /// call into a fresh directory of the partial area, then moved into place (see
    /// [`VolumeSync::place_files`]). The outcome of each file; `Err` if the call failed as a
    /// whole (no file is known to have arrived).
    fn upload_files(&self, files: &[(String, u64)]) -> Result<Vec<Outcome>> {
        let dir = self.cloud.partial_dir();
        let (mut outcomes, sent) = self.send_files(&dir, files)?;
        outcomes.extend(self.place_files(&dir, parent_dir(&files[0].0), sent));
        Ok(outcomes)
    }

    /// Has rclone pull `files` (path, size) from storage into `dir` of the partial area,
    /// each under its own name, with one call (see `UPLOAD_BATCH_*` and [`super::offer`]).
    /// Returns the files that failed, and those served whole; `Err` if the call failed for
    /// a reason other than storage failing some files (no file is then known to have
    /// arrived).
    fn send_files(&self, dir: &str, files: &[(String, u64)]) -> Result<(Vec<Outcome>, Vec<Sent>)> {
        let offered: Vec<Offered> = files
            .iter()
            .map(|(p, size)| Offered {
                name: file_name(p),
                size: *size,
            })
            .collect();
        let from_store = FromStore {
            sync: self,
            files,
            read: files.iter().map(|_| Mutex::new(None)).collect(),
        };
        let (copied, delivered) =
            offer(&offered, &from_store, |url| self.cloud.pull_into(dir, url)).map_err(
                |source| CloudError::Transport {
                    op: "upload",
                    path: dir.to_owned(),
                    source,
                },
            )?;
        let mut failed = Vec::new();
        let mut sent = Vec::new();
        let mut cut: Vec<String> = Vec::new();
        let mut unexplained = Vec::new();
        let read = from_store.read.into_iter().map(|r| r.into_inner().unwrap());
        for (((p, size), read), delivered) in files.iter().zip(read).zip(delivered) {
            let partial = format!("{dir}/{}", file_name(p));
            match (read, delivered) {
                (Some(Ok(attr)), true) => sent.push(Sent {
                    path: p.clone(),
                    size: *size,
                    partial,
                    s: store_sig(&attr).expect("a file"),
                }),
                (Some(Err(e)), _) => {
                    failed.push(Outcome {
                        path: p.clone(),
                        size: *size,
                        result: Err(e),
                    });
                    cut.push(partial);
                }
                _ => unexplained.push((p, *size, partial)),
            }
        }
        match copied {
            // rclone failed the call for files storage could not give it: those fail, the
            // rest arrived.
            Err(e) if !unexplained.is_empty() || matches!(e, CloudError::Transport { .. }) => {
                return Err(e.into())
            }
            _ => {}
        }
        for (p, size, partial) in unexplained {
            // Listed yet never fetched whole, and the call did not fail: rclone skips a
            // file whose `HEAD` failed.
            failed.push(Outcome {
                path: p.clone(),
                size,
                result: Err(SyncError::Other {
                    op: "upload",
                    path: p.clone(),
                    why: "rclone did not fetch all of it".into(),
                }),
            });
            cut.push(partial);
        }
        for partial in &cut {
            let _ = self.cloud.delete_file(partial);
        }
        Ok((failed, sent))
    }

    /// Moves files stored complete in `dir` of the partial area into the volume directory
    /// `target`, after checking them against one listing of `dir`: with one `sync/move`
    /// while `dir` holds nothing else (a rename of `dir` itself where `target` does not
    /// exist yet), else one by one. Removes `dir`. The outcome of each file.
    fn place_files(&self, dir: &str, target: &str, sent: Vec<Sent>) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        if sent.is_empty() {
            let _ = self.cloud.rmdir(dir);
            return outcomes;
        }
        // What rclone stored, read back in one listing rather than a stat per file; a
        // server-side move keeps size and modification time (rclone's Move contract, checked
        // by its backend tests), so the listing also describes each object once in place.
        let stored = match self.cloud.files_in(dir) {
            Ok(stored) => stored,
            Err(e) => {
                // The next pass sends them again.
                outcomes.extend(all_failed(sent, "reading back what arrived", e));
                return outcomes;
            }
        };
        // The directory moves as a whole only while it holds nothing but complete files
        // under their own names: a cut file still there, anything unexpected, a file that
        // failed its check, and every file moves alone.
        let prefix = format!("{dir}/");
        let expected: BTreeSet<&str> = sent
            .iter()
            .filter_map(|x| x.partial.strip_prefix(&prefix))
            .collect();
        let mut whole_dir = stored.keys().all(|n| expected.contains(n.as_str()));
        drop(expected);
        let mut together: Vec<(Sent, Entry)> = Vec::new();
        for x in sent {
            let name = x.partial.rsplit('/').next().unwrap_or_default().to_owned();
            let checked = match stored.get(&name) {
                None => Err(SyncError::Other {
                    op: "upload",
                    path: x.path.clone(),
                    why: format!(
                        "rclone reported it stored, yet {} is not in the cloud",
                        x.partial
                    ),
                }),
                Some(c) if c.size != x.s.size => {
                    if self.cloud.delete_file(&x.partial).is_err() {
                        whole_dir = false;
                    }
                    Err(SyncError::Other {
                        op: "upload",
                        path: x.path.clone(),
                        why: format!(
                            "the cloud holds {} bytes after the upload of {} bytes",
                            c.size, x.s.size
                        ),
                    })
                }
                Some(c) => Ok(Entry {
                    s: x.s,
                    c: cloud_sig(c),
                }),
            };
            match checked {
                Ok(e) => together.push((x, e)),
                Err(e) => outcomes.push(x.outcome(Err(e))),
            }
        }
        if together.len() > 1 && whole_dir {
            let target = self.cloud_path(target);
            let target = target.trim_end_matches('/');
            match self.cloud.move_files_of(dir, target) {
                Ok(()) => outcomes.extend(together.into_iter().map(|(x, e)| x.outcome(Ok(e)))),
                Err(err) => {
                    // Some may have moved; not asking the cloud which just after it failed,
                    // each counts as not uploaded. The next pass compares a moved one with
                    // storage and records it; the others go again.
                    let files = together.into_iter().map(|(x, _)| x);
                    outcomes.extend(all_failed(files, "moving it into place", err));
                }
            }
        } else {
            // One file (a `sync/move` would list the target directory for it), or a
            // directory that cannot move as a whole.
            for (x, e) in together {
                let moved = self.cloud.move_file(&x.partial, &self.cloud_path(&x.path));
                outcomes.push(x.outcome(moved.map(|()| e).map_err(Into::into)));
            }
            let _ = self.cloud.rmdir(dir);
        }
        outcomes
    }

    /// Streams the cloud object into `put`.
    fn stream_down(
        &self,
        p: &str,
        c: &CloudEntry,
        up: &mut cloudstore_protocol::Upload,
    ) -> Result<()> {
        let mut body = self.cloud.download(&self.cloud_path(p))?;
        let mut counted = Counting {
            inner: &mut body,
            status: &self.status,
            up: false,
        };
        let n = io::copy(&mut counted, up).map_err(|e| SyncError::Other {
            op: "download",
            path: p.to_owned(),
            why: e.to_string(),
        })?;
        if n != c.size {
            return Err(SyncError::Other {
                op: "download",
                path: p.to_owned(),
                why: format!(
                    "got {n} bytes where the listing said {}; the object changed, trying again later",
                    c.size
                ),
            });
        }
        Ok(())
    }

    fn download(
        &self,
        p: &str,
        c: &CloudEntry,
        s: Option<StoreSig>,
        made: &Mutex<BTreeSet<String>>,
    ) -> Result<Entry> {
        self.parent_in_store(p, made)?;
        let expect = match s {
            None => Expect::Absent,
            Some(s) => Expect::State(FileState {
                kind: FileType::File,
                size: s.size,
                mtime: ns_ts(s.mtime),
            }),
        };
        let mut up = self.store.upload(Request::Put {
            path: p.to_owned(),
            expect,
            mode: None,
            mtime: None,
        })?;
        if let Err(e) = self.stream_down(p, c, &mut up) {
            up.abort();
            return Err(e);
        }
        let attr = match up.finish()? {
            Response::Attr(a) => a,
            other => {
                return Err(SyncError::Other {
                    op: "put",
                    path: p.to_owned(),
                    why: format!("storage answered {}", other.name()),
                })
            }
        };
        Ok(Entry {
            s: store_sig(&attr).expect("a file"),
            c: cloud_sig(c),
        })
    }

    /// Parks the cloud's version of `p` in storage as a conflict copy.
    fn park(&self, p: &str, c: &CloudEntry) -> Result<()> {
        let mut up = self
            .store
            .upload(Request::ParkConflict { path: p.to_owned() })?;
        if let Err(e) = self.stream_down(p, c, &mut up) {
            up.abort();
            return Err(e);
        }
        up.finish()?;
        info!(volume = %self.volume, path = %p, size = c.size, "sync conflict: the cloud's version is parked in storage beside the original");
        Ok(())
    }

    fn same_content(&self, p: &str) -> Result<bool> {
        let mut a = self.store.get(p, None)?;
        let mut b = self.cloud.download(&self.cloud_path(p))?;
        let mut ba = vec![0u8; 64 * 1024];
        let mut bb = vec![0u8; 64 * 1024];
        let io_err = |e: io::Error| SyncError::Other {
            op: "compare",
            path: p.to_owned(),
            why: e.to_string(),
        };
        loop {
            let n = read_full(&mut a, &mut ba).map_err(io_err)?;
            let m = read_full(&mut b, &mut bb[..n.max(1)]).map_err(io_err)?;
            if n != m || ba[..n] != bb[..m] {
                drop(a);
                return Ok(false);
            }
            if n == 0 {
                break;
            }
        }
        a.finish()?;
        Ok(true)
    }

    fn apply(
        &self,
        a: Action,
        made: &Mutex<BTreeSet<String>>,
        report: &Mutex<PassReport>,
    ) -> Result<()> {
        match a {
            Action::Upload { path, size } => {
                let e = self.upload(&path, size)?;
                self.record(&path, Some(e))?;
                let mut r = report.lock().unwrap();
                r.uploaded += 1;
                r.bytes += size;
            }
            Action::Download { path, c, s } => {
                let e = self.download(&path, &c, s, made)?;
                self.record(&path, Some(e))?;
                let mut r = report.lock().unwrap();
                r.downloaded += 1;
                r.bytes += c.size;
            }
            Action::DeleteCloud { path, dir } => {
                if dir {
                    if let Err(e) = self.cloud.rmdir(&self.cloud_path(&path)) {
                        // Not empty: the cloud gained files there; they come down and the
                        // directory with them.
                        info!(volume = %self.volume, path = %path, "cloud directory kept: {e}");
                        return Ok(());
                    }
                } else {
                    self.cloud.delete_file(&self.cloud_path(&path))?;
                }
                self.record(&path, None)?;
                report.lock().unwrap().deleted_cloud += 1;
            }
            Action::DeleteStore { path, s } => {
                let r = if s.dir {
                    self.store.call(Request::Rmdir { path: path.clone() })
                } else {
                    self.store.call(Request::Delete {
                        path: path.clone(),
                        expect: Expect::State(FileState {
                            kind: FileType::File,
                            size: s.size,
                            mtime: ns_ts(s.mtime),
                        }),
                    })
                };
                match r {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) if s.dir && e.code == ErrorCode::NotEmpty => {
                        info!(volume = %self.volume, path = %path, "storage directory kept: it is not empty");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
                self.record(&path, None)?;
                report.lock().unwrap().deleted_store += 1;
            }
            Action::MkdirCloud { path, s, .. } => {
                self.cloud.mkdir(&self.cloud_path(&path))?;
                self.record(
                    &path,
                    Some(Entry {
                        s,
                        c: CloudSig::DIR,
                    }),
                )?;
            }
            Action::MkdirStore { path, c } => {
                self.mkdir_store(&path, made)?;
                self.record(
                    &path,
                    Some(Entry {
                        s: StoreSig::DIR,
                        c: cloud_sig(&c),
                    }),
                )?;
            }
            Action::Compare { path, s, c } => {
                if self.same_content(&path)? {
                    self.record(
                        &path,
                        Some(Entry {
                            s,
                            c: cloud_sig(&c),
                        }),
                    )?;
                } else {
                    return self.apply(
                        Action::Conflict {
                            path,
                            s: Some(s),
                            c,
                        },
                        made,
                        report,
                    );
                }
            }
            Action::Conflict { path, s, c } => {
                self.park(&path, &c)?;
                report.lock().unwrap().conflicts += 1;
                match s {
                    Some(s) if !s.dir => {
                        let e = self.upload(&path, s.size)?;
                        self.record(&path, Some(e))?;
                        let mut r = report.lock().unwrap();
                        r.uploaded += 1;
                        r.bytes += s.size;
                    }
                    Some(s) => {
                        // A directory in storage where the cloud had a file.
                        self.cloud.delete_file(&self.cloud_path(&path))?;
                        self.cloud.mkdir(&self.cloud_path(&path))?;
                        self.record(
                            &path,
                            Some(Entry {
                                s,
                                c: CloudSig::DIR,
                            }),
                        )?;
                    }
                    None => {
                        self.cloud.delete_file(&self.cloud_path(&path))?;
                        self.record(&path, None)?;
                    }
                }
            }
            Action::Record { path, e } => self.record(&path, Some(e))?,
            Action::Forget { path } => self.record(&path, None)?,
        }
        Ok(())
    }
}

/// The directory `p` is in (`""` at the top of the volume).
pub(super) fn parent_dir(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

/// The last component of `p`.
fn file_name(p: &str) -> &str {
    p.rsplit_once('/').map_or(p, |(_, n)| n)
}

/// How the upload of one file ended.
struct Outcome {
    path: String,
    /// The size the pass planned with (for its report).
    size: u64,
    result: Result<Entry>,
}

/// `files` not uploaded because one cloud call for all of them failed (`doing` it): the
/// first carries the call's own error, so that it counts once towards the cloud being
/// down; the others say why.
fn all_failed(
    files: impl IntoIterator<Item = Sent>,
    doing: &str,
    err: super::rclone::CloudError,
) -> Vec<Outcome> {
    let why = format!("{doing}: {err}");
    let mut first = Some(SyncError::from(err));
    files
        .into_iter()
        .map(|x| {
            let e = first.take().unwrap_or_else(|| SyncError::Other {
                op: "upload",
                path: x.path.clone(),
                why: why.clone(),
            });
            x.outcome(Err(e))
        })
        .collect()
}

impl Sent {
    fn outcome(self, result: Result<Entry>) -> Outcome {
        Outcome {
            path: self.path,
            size: self.size,
            result,
        }
    }
}

/// What a sync worker does next.
enum Work {
    One(Action),
    /// Small files to upload in one call.
    Uploads(Vec<(String, u64)>),
}

/// Takes the next piece of work off `queue`: consecutive small uploads into one directory
/// together, up to the `UPLOAD_BATCH_*` limits and a fair share of what is left, so that
/// `workers` workers all have some.
fn next_work(queue: &mut VecDeque<Action>, workers: usize) -> Option<Work> {
    let small =
        |a: &Action| matches!(a, Action::Upload { size, .. } if *size <= UPLOAD_BATCH_FILE_MAX);
    if !queue.front().is_some_and(small) {
        return queue.pop_front().map(Work::One);
    }
    let share = queue.len().div_ceil(workers.max(1)).min(UPLOAD_BATCH_FILES);
    let (mut files, mut bytes): (Vec<(String, u64)>, u64) = (Vec::new(), 0);
    while files.len() < share {
        match queue.front() {
            Some(Action::Upload { size, path })
                if *size <= UPLOAD_BATCH_FILE_MAX
                    && !files
                        .first()
                        .is_some_and(|(first, _)| parent_dir(first) != parent_dir(path))
                    && (files.is_empty() || bytes + size <= UPLOAD_BATCH_BYTES) =>
            {
                let Some(Action::Upload { path, size }) = queue.pop_front() else {
                    unreachable!("just matched")
                };
                bytes += size;
                files.push((path, size));
            }
            _ => break,
        }
    }
    Some(Work::Uploads(files))
}

fn db_dirty_count(db: &StateDb) -> bool {
    db.pending_records() >= COMMIT_EVERY
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Counts bytes moved into the status as they pass.
struct Counting<'a, R> {
    inner: &'a mut R,
    status: &'a Mutex<VolumeStatus>,
    up: bool,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.status.lock().unwrap().moved(self.up, n as u64);
        Ok(n)
    }
}

/// The content of an upload's files, streamed from storage as rclone fetches them; what
/// storage said of each file's last attempt is kept for the outcome.
struct FromStore<'a> {
    sync: &'a VolumeSync,
    files: &'a [(String, u64)],
    /// `None`: not read to its end (not fetched, or rclone stopped reading).
    read: Vec<Mutex<Option<Result<Attr>>>>,
}

impl Content for FromStore<'_> {
    fn send(&self, i: usize, out: &mut dyn Write) -> io::Result<()> {
        let path = &self.files[i].0;
        let outcome = |r: Result<Attr>| {
            let e = r.as_ref().err().map(|e| io::Error::other(e.to_string()));
            *self.read[i].lock().unwrap() = Some(r);
            e.map_or(Ok(()), Err)
        };
        *self.read[i].lock().unwrap() = None;
        let mut dl = match self.sync.store.get(path, None) {
            Ok(dl) => dl,
            Err(e) => return outcome(Err(e.into())),
        };
        let mut counted = Counting {
            inner: &mut dl,
            status: &self.sync.status,
            up: true,
        };
        let size = self.files[i].1;
        let changed = |total| SyncError::Other {
            op: "upload",
            path: path.clone(),
            why: format!("it changed while it was uploaded ({total} bytes read of {size} planned)"),
        };
        let mut total = 0u64;
        let mut buf = vec![0u8; (size as usize).clamp(4096, 256 * 1024)];
        loop {
            let k = match counted.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // What storage said is the better explanation (e.g. the file changed).
                    return outcome(match dl.finish() {
                        Err(e) => Err(e.into()),
                        Ok(_) => Err(SyncError::Other {
                            op: "upload",
                            path: path.clone(),
                            why: format!("reading it from storage: {source}"),
                        }),
                    });
                }
            };
            total += k as u64;
            if let Err(e) = out.write_all(&buf[..k]) {
                let _ = dl.finish();
                if e.kind() == io::ErrorKind::InvalidData {
                    // More than offered: a fresh pass plans it again.
                    return outcome(Err(changed(total)));
                }
                // rclone stopped reading.
                return Err(e);
            }
        }
        match dl.finish() {
            Ok(_) if total != size => outcome(Err(changed(total))),
            r => outcome(r.map_err(Into::into)),
        }
    }
}

/// (files up, bytes up, files down, bytes down) a plan will move.
fn plan_summary(plan: &[Action]) -> (usize, u64, usize, u64) {
    let mut s = (0, 0, 0, 0);
    for a in plan {
        match a {
            Action::Upload { size, .. } => {
                s.0 += 1;
                s.1 += size;
            }
            Action::Download { c, .. } | Action::Conflict { c, .. } => {
                s.2 += 1;
                s.3 += c.size;
            }
            Action::Compare { s: st, .. } => {
                s.0 += 1;
                s.1 += st.size;
            }
            _ => {}
        }
    }
    s
}

/// How long to wait before the next try after `failures` failed passes in a row: 1 s
/// doubling, capped at `cap` (the poll interval).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let d = Duration::from_secs(1) * 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    d.min(cap).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(path: &str, size: u64) -> Action {
        Action::Upload {
            path: path.into(),
            size,
        }
    }

    fn take(q: &mut VecDeque<Action>, workers: usize) -> Vec<String> {
        match next_work(q, workers) {
            Some(Work::Uploads(files)) => files.into_iter().map(|(p, _)| p).collect(),
            Some(Work::One(a)) => vec![format!("one:{}", a.path())],
            None => vec![],
        }
    }

    #[test]
    fn small_uploads_are_shared_among_the_workers_and_large_ones_go_alone() {
        let mut q: VecDeque<Action> = (0..10).map(|i| upload(&format!("s{i}"), 100)).collect();
        q.push_back(upload("big", UPLOAD_BATCH_FILE_MAX + 1));
        q.push_back(upload("s10", 100));
        q.push_back(Action::Forget { path: "f".into() });
        // 13 left for 4 workers: 4 to a call.
        assert_eq!(take(&mut q, 4), ["s0", "s1", "s2", "s3"]);
        // 9 left: 3.
        assert_eq!(take(&mut q, 4), ["s4", "s5", "s6"]);
        assert_eq!(
            take(&mut q, 1),
            ["s7", "s8", "s9"],
            "a batch stops at a large file"
        );
        assert_eq!(take(&mut q, 1), ["one:big"]);
        assert_eq!(
            take(&mut q, 1),
            ["s10"],
            "and at anything that is not an upload"
        );
        assert_eq!(take(&mut q, 1), ["one:f"]);
        assert!(next_work(&mut q, 1).is_none());
    }

    #[test]
    fn a_batch_stays_in_one_directory() {
        let mut q: VecDeque<Action> = ["a/1", "a/2", "a/b/3", "a/b/4", "c", "d"]
            .into_iter()
            .map(|p| upload(p, 10))
            .collect();
        assert_eq!(take(&mut q, 1), ["a/1", "a/2"]);
        assert_eq!(take(&mut q, 1), ["a/b/3", "a/b/4"]);
        assert_eq!(take(&mut q, 1), ["c", "d"]);
        assert_eq!(parent_dir("a/b/3"), "a/b");
        assert_eq!(parent_dir("c"), "");
        assert_eq!(file_name("a/b/3"), "3");
        assert_eq!(file_name("c"), "c");
    }

    #[test]
    fn a_batch_holds_at_most_its_file_count_and_bytes() {
        let mut q: VecDeque<Action> = (0..200).map(|i| upload(&format!("s{i}"), 10)).collect();
        assert_eq!(take(&mut q, 1).len(), UPLOAD_BATCH_FILES);
        let per = UPLOAD_BATCH_FILE_MAX;
        let mut q: VecDeque<Action> = (0..40).map(|i| upload(&format!("m{i}"), per)).collect();
        assert_eq!(
            take(&mut q, 1).len() as u64,
            UPLOAD_BATCH_BYTES / per,
            "files of {per} bytes"
        );
    }
}
