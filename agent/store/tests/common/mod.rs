//! Shared helpers for the store's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cloudstore_store::*;

/// A clock the test moves by hand.
#[derive(Clone)]
pub struct FakeClock(pub Arc<AtomicI64>);

impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock(Arc::new(AtomicI64::new(1_700_000_000)))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs() as i64, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let c = self.0.clone();
        Arc::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_secs(c.load(Ordering::SeqCst) as u64)
        })
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub vol: Arc<Volume>,
    pub clock: FakeClock,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut StoreConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new();
        let mut cfg = StoreConfig {
            clock: clock.clock(),
            ..StoreConfig::default()
        };
        tweak(&mut cfg);
        let store = Arc::new(Store::open(dir.path().join("data"), cfg).unwrap());
        let vol = store.create_volume("work").unwrap();
        Fixture {
            dir,
            store,
            vol,
            clock,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn tree(&self) -> PathBuf {
        self.data().join("volumes/work/tree")
    }

    /// The volume's version area.
    pub fn versions(&self) -> PathBuf {
        self.data().join("volumes/work/versions")
    }

    /// Entry `id`'s data in the version area, whatever its name: `<id>.data`, or the name
    /// that carries its record.
    pub fn version_data(&self, id: cloudstore_store::VersionId) -> PathBuf {
        version_data_in(&self.versions(), id)
    }

    /// Drops the store and opens it again from disk, as after a restart.
    pub fn reopen(self) -> Fixture {
        self.close_and_restart(|_| {}, |_| {})
    }

    /// A clean stop (everything dropped), `between` run on the data directory, then a start
    /// with `cfg` tweaked.
    pub fn close_and_restart(
        self,
        between: impl FnOnce(&std::path::Path),
        tweak: impl FnOnce(&mut StoreConfig),
    ) -> Fixture {
        self.restart(false, between, tweak)
    }

    /// The agent dying without closing anything (the volume is never dropped, so its
    /// journal stays open), `between` run on the data directory, then a start with `cfg`
    /// tweaked (e.g. another boot id: the machine restarted).
    pub fn die_and_restart(
        self,
        between: impl FnOnce(&std::path::Path),
        tweak: impl FnOnce(&mut StoreConfig),
    ) -> Fixture {
        self.restart(true, between, tweak)
    }

    fn restart(
        self,
        die: bool,
        between: impl FnOnce(&std::path::Path),
        tweak: impl FnOnce(&mut StoreConfig),
    ) -> Fixture {
        let Fixture {
            dir,
            store,
            vol,
            clock,
        } = self;
        let mut cfg = store.config().clone();
        if die {
            std::mem::forget(vol.clone());
            std::mem::forget(vol);
        } else {
            drop(vol);
        }
        drop(store);
        between(&dir.path().join("data"));
        tweak(&mut cfg);
        let store = Arc::new(Store::open(dir.path().join("data"), cfg).unwrap());
        let vol = store.volume("work").unwrap();
        Fixture {
            dir,
            store,
            vol,
            clock,
        }
    }
}

pub fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

pub fn put_bytes(vol: &Volume, path: &str, data: &[u8]) -> Attr {
    vol.put(&p(path), &mut &data[..], PutOptions::default())
        .unwrap()
}

pub fn get_bytes(vol: &Volume, path: &str) -> Vec<u8> {
    let mut r = vol.get(&p(path)).unwrap();
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut v).unwrap();
    v
}

pub fn all_changes(vol: &Volume, since: u64) -> Vec<ChangeEntry> {
    match vol.changes_since(since, usize::MAX).unwrap() {
        Changes::Entries { entries, .. } => entries,
        other => panic!("expected entries, got {other:?}"),
    }
}

pub fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Moves the calling thread into a mount namespace of its own whose mounts do not propagate
/// back, so that what the test mounts is seen by it (and its children) only. Needs root.
pub fn private_mount_namespace() {
    // SAFETY: unshare affects only this thread's mount namespace (CLONE_NEWNS implies
    // CLONE_FS, which Linux allows per thread).
    let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNS): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: valid C string; makes every mount private so ours do not propagate back.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "make mounts private: {}",
        std::io::Error::last_os_error()
    );
}

/// Entry `id`'s data in the version area `area` (see [`Fixture::version_data`]).
pub fn version_data_in(area: &std::path::Path, id: cloudstore_store::VersionId) -> PathBuf {
    let prefix = format!("{id}.");
    std::fs::read_dir(area)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| {
            n.starts_with(&prefix) && (n.ends_with(".data") || n[prefix.len()..].starts_with('r'))
        })
        .map_or_else(|| area.join(format!("{id}.data")), |n| area.join(n))
}
