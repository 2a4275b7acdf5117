//! A full disk: the store lives on a 2 MiB tmpfs mounted in a private mount namespace (of the
//! test's own thread, so nothing leaks to the host); running out of space must be a clean
//! `NoSpace` error that changes nothing, and the store must work again once space is freed.

mod common;

use std::ffi::CString;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use cloudstore_store::*;
use common::*;

/// Mounts a tmpfs of `size` at `dir`, visible only to the calling thread (which must keep
/// running the test). Needs root, as CI runs.
fn private_tmpfs(dir: &std::path::Path, size: &str) {
    private_mount_namespace();
    let target = CString::new(dir.to_str().unwrap()).unwrap();
    let fstype = CString::new("tmpfs").unwrap();
    let opts = CString::new(format!("size={size},mode=0700")).unwrap();
    // SAFETY: valid C strings for the duration of the call.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
}

fn snapshot(v: &Volume) -> Vec<(String, Vec<u8>, usize)> {
    let mut out = Vec::new();
    for e in v.readdir(&RelPath::root(), 0, 1000).unwrap().entries {
        let mut b = Vec::new();
        v.get(&p(&e.name)).unwrap().read_to_end(&mut b).unwrap();
        let nv = v.list_versions(&p(&e.name)).len();
        out.push((e.name, b, nv));
    }
    out.sort();
    out
}

#[test]
fn a_full_disk_is_a_clean_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_owned();
    std::thread::spawn(move || {
        private_tmpfs(&mnt, "2m");
        let clock = FakeClock::new();
        let cfg = StoreConfig {
            clock: clock.clock(),
            ..StoreConfig::default()
        };
        let store = Arc::new(Store::open(mnt.join("data"), cfg).unwrap());
        let v = store.create_volume("work").unwrap();
        let chunk = vec![0x5Au8; 256 * 1024];
        put_bytes(&v, "v", b"version-one");
        put_bytes(&v, "v", b"version-two");
        let vid = v.list_versions(&p("v"))[0].id;
        // Fill the disk with puts until one fails.
        let mut i = 0;
        let err = loop {
            match v.put(&p(&format!("f{i}")), &mut &chunk[..], PutOptions::default()) {
                Ok(_) => i += 1,
                Err(e) => break e,
            }
            assert!(i < 100, "the 2 MiB filesystem never filled");
        };
        assert!(i >= 3, "only {i} puts fit");
        assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
        assert!(
            err.to_string().contains(&format!("f{i}")),
            "the error names the path: {err}"
        );
        assert_eq!(
            std::fs::read_dir(mnt.join("data/volumes/work/staging"))
                .unwrap()
                .count(),
            0
        );
        let before = snapshot(&v);
        let head = v.journal_head();

        // Every mutation now either works or fails with NoSpace, changing nothing.
        type Attempt<'a> = (&'static str, Box<dyn Fn() -> Result<()> + 'a>);
        let attempts: Vec<Attempt> = vec![
            (
                "put over",
                Box::new(|| {
                    v.put(&p("f0"), &mut &chunk[..], PutOptions::default())
                        .map(drop)
                }),
            ),
            (
                "write (needs a snapshot)",
                Box::new(|| v.write(&p("f1"), 0, &[1u8; 4096]).map(drop)),
            ),
            (
                "park conflict",
                Box::new(|| v.park_conflict(&p("f2"), &mut &chunk[..]).map(drop)),
            ),
            ("restore", Box::new(|| v.restore(&p("v"), vid).map(drop))),
        ];
        let mut refused = Vec::new();
        for (what, op) in &attempts {
            match op() {
                Ok(()) => {}
                Err(e) => {
                    refused.push(*what);
                    assert_eq!(e.kind(), ErrorKind::NoSpace, "{what}: {e}");
                    assert_eq!(snapshot(&v), before, "{what} failed but changed something");
                    assert_eq!(v.journal_head(), head, "{what} failed but was journaled");
                }
            }
        }
        drop(attempts);
        eprintln!("refused for lack of space: {refused:?}");
        assert!(
            refused.contains(&"put over"),
            "a put over a kept file needs new space: {refused:?}"
        );
        assert_eq!(
            std::fs::read_dir(mnt.join("data/volumes/work/staging"))
                .unwrap()
                .count(),
            0
        );
        for (name, body, _) in &before {
            if name.starts_with('f') && name != "f1" {
                assert_eq!(body, &chunk, "{name} damaged");
            }
        }
        // Deleting does not free space (the content is kept as a version) but must not fail
        // in a way that loses the file: either it is gone and versioned, or still there.
        match v.unlink(&p("f0")) {
            Ok(_) => assert_eq!(v.list_versions(&p("f0")).len(), before[0].2 + 1),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
                assert_eq!(get_bytes(&v, "f0"), chunk);
            }
        }
        // Once retention expires the kept versions, space comes back and puts work again.
        clock.advance(Duration::from_secs(31 * 24 * 3600));
        let r = v.prune_versions().unwrap();
        assert!(r.removed > 0 || v.stats().versions == 0, "{r:?}");
        for n in 0..i {
            let _ = v.unlink(&p(&format!("f{n}")));
        }
        clock.advance(Duration::from_secs(31 * 24 * 3600));
        v.prune_versions().unwrap();
        v.put(&p("again"), &mut &chunk[..], PutOptions::default())
            .unwrap();
        assert_eq!(get_bytes(&v, "again"), chunk);
        drop(v);
        drop(store);
    })
    .join()
    .unwrap();
}
