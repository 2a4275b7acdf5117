//! The store: a data directory holding one directory per volume.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{ErrorKind, IoContext, Result, StoreError};
use crate::path::validate_volume_name;
use crate::sys;
use crate::versions::RetentionPolicy;
use crate::volume::Volume;

/// Where the storage qube keeps its data (persisted across reboots by a bind-dirs snippet).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cloudstore";

/// The directories of one volume, beneath `<data>/volumes/<volume>/`.
pub const VOLUME_SUBDIRS: [&str; 5] = ["tree", "journal", "versions", "conflicts", "staging"];

/// A source of wall-clock time (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Tunables of a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// How long and how much history is kept.
    pub retention: RetentionPolicy,
    /// Size at which a volume's journal compacts itself (down to half of it).
    pub journal_max_bytes: u64,
    /// A modification session with no change for this long ends (see [`Volume`]).
    pub quiet_interval: Duration,
    /// Wall clock.
    pub clock: Clock,
    /// The running kernel's boot id (`/proc/sys/kernel/random/boot_id`). Journal records
    /// reach the disk lazily; a journal still open from an earlier process of the same boot
    /// lost nothing (the kernel kept every write), one left open under another boot may have
    /// (see the journal's `open` marker). Empty if unknown: every unclean close then counts
    /// as a lost one.
    pub boot_id: String,
    /// Sequence numbers a journal may hand out beyond the one its `open` marker records
    /// before it records a new one (a flush and a small file write).
    pub journal_reservation: u64,
    /// Whether the data directory's file system writes changes to names and attributes to
    /// disk in the order they were made (a journaled one), so that the record of a version
    /// kept before an unlink need not be flushed first (versions.rs). `None`: found out at
    /// open (ext4 with its journal, XFS, tmpfs: yes; ext4 without one, anything else: no).
    pub names_in_order: Option<bool>,
}

/// The running kernel's boot id, empty if it cannot be read.
pub fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            retention: RetentionPolicy::default(),
            // 64 MiB: about half a million entries, weeks of heavy use between two syncs;
            // compaction rewrites it in well under a second.
            journal_max_bytes: 64 << 20,
            // 5 s: an editor's save is a burst of writes well within it; a file left idle
            // this long is a finished change worth one snapshot.
            quiet_interval: Duration::from_secs(5),
            clock: Arc::new(SystemTime::now),
            boot_id: current_boot_id(),
            // 65 536: a new reservation every few hours of heavy use; after a machine crash
            // numbering jumps by at most this much.
            journal_reservation: 1 << 16,
            names_in_order: None,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("retention", &self.retention)
            .field("journal_max_bytes", &self.journal_max_bytes)
            .field("quiet_interval", &self.quiet_interval)
            .field("boot_id", &self.boot_id)
            .field("journal_reservation", &self.journal_reservation)
            .finish_non_exhaustive()
    }
}

/// A data directory and its volumes. Thread-safe; share it in an `Arc`. Only one `Store`
/// (one process) may have a data directory open at a time (an exclusive `flock` on
/// `<data>/lock`).
pub struct Store {
    label: String,
    volumes_dir: OwnedFd,
    cfg: Arc<StoreConfig>,
    open: Mutex<HashMap<String, Arc<Volume>>>,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the data directory `data_dir`.
    pub fn open(data_dir: impl AsRef<Path>, cfg: StoreConfig) -> Result<Store> {
        let dir = data_dir.as_ref();
        let label = dir.display().to_string();
        std::fs::create_dir_all(dir).ctx("create data directory", &label)?;
        let fd: OwnedFd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
            .ctx("open data directory", &label)?
            .into();
        Store::from_fd(fd, label, cfg)
    }

    /// Opens the data directory already open as `dir` (for an agent that is handed the
    /// descriptor before it is sandboxed); `label` names it in messages.
    pub fn from_fd(dir: OwnedFd, label: String, mut cfg: StoreConfig) -> Result<Store> {
        if cfg.names_in_order.is_none() {
            let (ordered, fs) = sys::names_in_order(dir.as_fd());
            if ordered {
                tracing::info!(dir = %label, "{fs}: versions kept before a delete record themselves without a flush");
            } else {
                tracing::info!(dir = %label, "{fs}: versions kept before a delete are flushed before it (no journal orders them)");
            }
            cfg.names_in_order = Some(ordered);
        }
        let lock = File::from(
            sys::open_at(dir.as_fd(), "lock", libc::O_RDWR | libc::O_CREAT, 0o600)
                .ctx("open lock file", &format!("{label}/lock"))?,
        );
        sys::lock_exclusive(lock.as_fd()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::refused(
                    "lock",
                    &format!("{label}/lock"),
                    ErrorKind::Busy,
                    "another process has this data directory open",
                )
            } else {
                StoreError::fs("lock", &format!("{label}/lock"), e)
            }
        })?;
        match sys::mkdir_at(dir.as_fd(), "volumes", 0o700) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(StoreError::fs("create", &format!("{label}/volumes"), e))
            }
            _ => {}
        }
        let volumes_dir = sys::open_beneath(
            dir.as_fd(),
            "volumes",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .ctx("open", &format!("{label}/volumes"))?;
        // A volume creation interrupted by a crash leaves ".new-<name>"; it was never visible.
        let mut names = Vec::new();
        sys::read_dir_from(volumes_dir.as_fd(), 0, usize::MAX, &mut names)
            .ctx("list", &format!("{label}/volumes"))?;
        for n in names {
            if let Ok(n) = String::from_utf8(n.name) {
                if n.starts_with(".new-") {
                    remove_tree(volumes_dir.as_fd(), &n)
                        .ctx("remove", &format!("{label}/volumes/{n}"))?;
                }
            }
        }
        Ok(Store {
            label,
            volumes_dir,
            cfg: Arc::new(cfg),
            open: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Creates volume `name` (its directories, with an empty tree); `Exists` if it exists.
    pub fn create_volume(&self, name: &str) -> Result<Arc<Volume>> {
        validate_volume_name(name)?;
        let mut open = self.open.lock().unwrap();
        let vlabel = format!("{}/volumes/{name}", self.label);
        let tmp = format!(".new-{name}");
        let vd = self.volumes_dir.as_fd();
        let made = (|| {
            sys::mkdir_at(vd, &tmp, 0o700)?;
            let d = sys::open_at(vd, &tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            for s in VOLUME_SUBDIRS {
                sys::mkdir_at(d.as_fd(), s, 0o700)?;
            }
            sys::fsync(d.as_fd())?;
            sys::rename_at(vd, &tmp, vd, name, libc::RENAME_NOREPLACE)?;
            sys::fsync(vd)
        })();
        if let Err(e) = made {
            let _ = remove_tree(vd, &tmp);
            return Err(StoreError::fs("create volume", &vlabel, e));
        }
        let v = Arc::new(self.load(name)?);
        open.insert(name.to_owned(), v.clone());
        tracing::info!(volume = name, "volume created");
        Ok(v)
    }

    fn load(&self, name: &str) -> Result<Volume> {
        let vlabel = format!("{}/volumes/{name}", self.label);
        let d = match sys::open_beneath(
            self.volumes_dir.as_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        ) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(StoreError::NoVolume {
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(StoreError::fs("open volume", &vlabel, e)),
        };
        Volume::open(name.to_owned(), d.as_fd(), &vlabel, self.cfg.clone())
    }

    /// The open volume `name`, opening it on first use; `NoVolume` if it does not exist.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        validate_volume_name(name)?;
        let mut open = self.open.lock().unwrap();
        if let Some(v) = open.get(name) {
            return Ok(v.clone());
        }
        let v = Arc::new(self.load(name)?);
        open.insert(name.to_owned(), v.clone());
        Ok(v)
    }

    /// The volume `name`, created if it does not exist yet.
    pub fn open_or_create_volume(&self, name: &str) -> Result<Arc<Volume>> {
        match self.volume(name) {
            Err(StoreError::NoVolume { .. }) => match self.create_volume(name) {
                Err(e) if e.kind() == ErrorKind::Exists => self.volume(name),
                r => r,
            },
            r => r,
        }
    }

    /// Names of the volumes in the data directory, sorted.
    pub fn volume_names(&self) -> Result<Vec<String>> {
        let mut raw = Vec::new();
        sys::read_dir_from(self.volumes_dir.as_fd(), 0, usize::MAX, &mut raw)
            .ctx("list", &format!("{}/volumes", self.label))?;
        let mut names: Vec<String> = raw
            .into_iter()
            .filter_map(|d| String::from_utf8(d.name).ok())
            .filter(|n| validate_volume_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// One round of upkeep on every open volume: ends quiet modification sessions and
    /// applies the retention policy. Errors are logged and the round goes on.
    pub fn maintain(&self) {
        let vols: Vec<Arc<Volume>> = self.open.lock().unwrap().values().cloned().collect();
        for v in vols {
            if let Err(e) = v.end_quiet_sessions() {
                tracing::warn!(volume = v.name(), error = %e, "ending quiet sessions failed");
            }
            match v.prune_versions() {
                Ok(r) if r.over_cap => {
                    tracing::warn!(volume = v.name(), kept_bytes = r.kept_bytes, "versions exceed the size cap; only versions younger than the minimum age remain")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(volume = v.name(), error = %e, "pruning versions failed"),
            }
        }
    }

    /// Starts a thread that ends quiet sessions every `every` and prunes versions hourly;
    /// it stops when the store is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let weak: Weak<Store> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("store-maintenance".into())
            .spawn(move || {
                // Pruning scans every version record; hourly is plenty at a 30-day retention.
                let prune_every = Duration::from_secs(3600);
                let mut last_prune: Option<Instant> = None;
                loop {
                    std::thread::sleep(every);
                    let Some(store) = weak.upgrade() else { return };
                    let vols: Vec<Arc<Volume>> = store.open.lock().unwrap().values().cloned().collect();
                    for v in &vols {
                        if let Err(e) = v.end_quiet_sessions() {
                            tracing::warn!(volume = v.name(), error = %e, "ending quiet sessions failed");
                        }
                    }
                    if last_prune.map_or(true, |t| t.elapsed() >= prune_every) {
                        store.maintain();
                        last_prune = Some(Instant::now());
                    }
                }
            })
            .expect("spawning the store maintenance thread")
    }
}

/// Removes `name` in `dir` and everything beneath it, without following symlinks.
fn remove_tree(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    let st = sys::stat_at(dir, name)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::unlink_at(dir, name, false);
    }
    let d = sys::open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut ents = Vec::new();
    sys::read_dir_from(d.as_fd(), 0, usize::MAX, &mut ents)?;
    for e in ents {
        let n = String::from_utf8(e.name)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        remove_tree(d.as_fd(), &n)?;
    }
    sys::unlink_at(dir, name, true)
}
