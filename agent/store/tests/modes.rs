//! A file's mode is kept exactly as set, and storage opens every file whatever its mode says,
//! as the storage agent runs: without the capabilities that let root ignore modes.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use caps::{CapSet, Capability};
use cloudstore_store::*;
use common::*;

/// Runs `f` on a thread that, like the storage agent, has no capability to ignore modes.
/// Capabilities are per thread, so the rest of the test process keeps its own.
fn as_storage_runs<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            for c in [
                Capability::CAP_DAC_OVERRIDE,
                Capability::CAP_DAC_READ_SEARCH,
                Capability::CAP_FOWNER,
            ] {
                caps::drop(None, CapSet::Effective, c).unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    })
}

fn mode_on_disk(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(v: &Volume, path: &str, mode: u32) -> Attr {
    v.setattr(
        &p(path),
        &SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        },
    )
    .unwrap()
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut b = Vec::new();
    r.read_to_end(&mut b).unwrap();
    b
}

#[test]
fn storage_opens_any_file_whatever_its_mode_and_leaves_the_mode_as_set() {
    let f = Fixture::new();
    let v = &f.vol;
    as_storage_runs(|| {
        // Created read-only, then written through its handle (as git writes its objects).
        let c = v.create_open(&p("ro"), 0o444, true).unwrap();
        assert_eq!(c.attr.perm, 0o444);
        drop(c.file);
        assert_eq!(
            v.write_if(&p("ro"), Some(c.key), 0, b"object").unwrap(),
            Some(6)
        );
        assert_eq!(v.read(&p("ro"), 0, 100).unwrap(), b"object");
        assert_eq!(mode_on_disk(&f.tree().join("ro")), 0o444);
        v.release_file(c.key).unwrap();
        // A non-exclusive create of it opens it as it is.
        assert_eq!(v.create_open(&p("ro"), 0o600, false).unwrap().attr.size, 6);

        put_bytes(v, "locked", b"secret");
        assert_eq!(chmod(v, "locked", 0o000).perm, 0o000);
        // This thread really is refused by the mode: what follows goes through the lift.
        let refused = std::fs::read(f.tree().join("locked")).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(v.read(&p("locked"), 0, 100).unwrap(), b"secret");
        assert_eq!(get_bytes(v, "locked"), b"secret");
        v.fsync(&p("locked"), false).unwrap();
        let (handle, attr, key) = v.open_file(&p("locked"), true).unwrap();
        assert_eq!(attr.perm, 0o000);
        drop(handle);
        v.write_if(&p("locked"), Some(key), 6, b"!").unwrap();
        v.release_file(key).unwrap();
        assert_eq!(v.stat(&p("locked")).unwrap().perm, 0o000);
        assert_eq!(mode_on_disk(&f.tree().join("locked")), 0o000);
        // The mode is changed back from one that refuses even reading.
        assert_eq!(chmod(v, "locked", 0o200).perm, 0o200);
        assert_eq!(chmod(v, "locked", 0o000).perm, 0o000);

        // Its versions are read and restored with their mode, whether the data was kept by
        // a link (the only name) or a copy (another name still links it).
        v.unlink(&p("locked")).unwrap();
        let gone = v.list_versions(&p("locked"));
        let id = gone[0].id;
        assert_eq!(gone[0].perm, 0o000);
        assert_eq!(
            read_all(v.open_version(&p("locked"), id).unwrap()),
            b"secret!"
        );
        v.restore(&p("locked"), id).unwrap();
        assert_eq!(v.stat(&p("locked")).unwrap().perm, 0o000);
        assert_eq!(v.read(&p("locked"), 0, 100).unwrap(), b"secret!");
        v.link(&p("locked"), &p("also")).unwrap();
        v.unlink(&p("locked")).unwrap();
        let copied = v.list_versions(&p("locked"))[0].id;
        assert_ne!(copied, id);
        assert_eq!(
            read_all(v.open_version(&p("locked"), copied).unwrap()),
            b"secret!"
        );
        assert_eq!(mode_on_disk(&f.tree().join("also")), 0o000);

        // A directory shows its mode while it keeps owner rwx on disk, so storage walks and
        // changes it whatever its mode.
        let dir_on_disk = |path: &str| mode_on_disk(&f.tree().join(path));
        assert_eq!(v.mkdir(&p("d"), 0o555).unwrap().perm, 0o555);
        assert_eq!(dir_on_disk("d"), 0o1755, "owner rwx, marked");
        put_bytes(v, "d/brought", b"by the sync");
        assert_eq!(chmod(v, "d", 0o000).perm, 0o000);
        v.create(&p("d/made"), 0o600, true).unwrap();
        assert_eq!(v.readdir(&p("d"), 0, 10).unwrap().entries.len(), 2);
        assert_eq!(v.stat(&p("d")).unwrap().perm, 0o000);
        // Back to a mode the disk says by itself: unmarked, nothing kept apart.
        assert_eq!(chmod(v, "d", 0o750).perm, 0o750);
        assert_eq!(dir_on_disk("d"), 0o750);
        // The sticky bit is the user's own too.
        assert_eq!(chmod(v, "d", 0o1777).perm, 0o1777);
        assert_eq!(chmod(v, "d", 0o1555).perm, 0o1555);
        assert_eq!(dir_on_disk("d"), 0o1755);
        assert_eq!(chmod(v, "d", 0o1777).perm, 0o1777);
        assert_eq!(dir_on_disk("d"), 0o1777);
        // A shared directory's setgid bit is kept apart: it never reaches the disk, where
        // the storage unit forbids it.
        assert_eq!(chmod(v, "d", 0o2775).perm, 0o2775);
        assert_eq!(dir_on_disk("d"), 0o1775);
        assert_eq!(v.mkdir(&p("d/shared"), 0o2770).unwrap().perm, 0o2770);
        assert_eq!(dir_on_disk("d/shared"), 0o1770);
        assert_eq!(chmod(v, "d", 0o1777).perm, 0o1777);
        // Made in one step with its first file (a gocryptfs directory and its IV), and
        // renamed: the mode goes with the directory.
        let made = v
            .mkdir_with_file(&p("e"), 0o500, "gocryptfs.diriv", &[7; 16], 0o440)
            .unwrap();
        assert_eq!(made.attr.perm, 0o500);
        v.rename(&p("e"), &p("d/e"), RenameMode::NoReplace).unwrap();
        assert_eq!(v.stat(&p("d/e")).unwrap().perm, 0o500);
        assert_eq!(v.read(&p("d/e/gocryptfs.diriv"), 0, 16).unwrap(), [7; 16]);
    });
    // Through a restart, from what is on disk alone.
    let f = f.reopen();
    assert_eq!(f.vol.stat(&p("d/e")).unwrap().perm, 0o500);
    assert_eq!(f.vol.stat(&p("d")).unwrap().perm, 0o1777);
}

#[test]
fn a_mode_set_while_storage_lifts_it_is_the_mode_kept() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "f", b"content");
    chmod(v, "f", 0o000);
    // One thread reads the file over and over (each read lifts the owner's read bit for a
    // moment) while another changes the mode: no lift may put back the mode it found over a
    // change made meanwhile. None of these modes has the owner's read bit, so a lift under
    // way is told apart from a mode put back.
    let modes = [0o000, 0o004, 0o040, 0o200, 0o020, 0o002, 0o100];
    let reads = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    as_storage_runs(|| {
        std::thread::scope(|s| {
            // Stops the reader however the loop below ends (a failed assertion included).
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _done = Done(&done);
            let reader = s.spawn(|| {
                as_storage_runs(|| {
                    while !done.load(Ordering::SeqCst) {
                        assert_eq!(v.read(&p("f"), 0, 100).unwrap(), b"content");
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                })
            });
            for i in 0..300 {
                let m = modes[i % modes.len()];
                assert_eq!(chmod(v, "f", m).perm, m);
                // Two whole reads later, any lift begun before the change has ended.
                let seen = reads.load(Ordering::SeqCst);
                while reads.load(Ordering::SeqCst) < seen + 2 && !reader.is_finished() {
                    std::thread::yield_now();
                }
                let now = mode_on_disk(&f.tree().join("f"));
                assert_eq!(
                    now & !0o400,
                    m,
                    "round {i}: {now:o} on disk after setting {m:o}"
                );
            }
        });
    });
    assert_eq!(mode_on_disk(&f.tree().join("f")), modes[299 % modes.len()]);
}
