//! Hostile paths and symlinks: nothing outside the volume's tree is ever read, written,
//! created, linked or removed, including while a directory is swapped for a symlink.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudstore_store::*;
use common::*;

const SECRET: &[u8] = b"outside secret";

/// A directory outside the data directory with one file in it.
fn outside(f: &Fixture) -> std::path::PathBuf {
    let o = f.dir.path().join("outside");
    std::fs::create_dir_all(&o).unwrap();
    std::fs::write(o.join("secret"), SECRET).unwrap();
    o
}

fn assert_outside_intact(o: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(o)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["secret"],
        "something was created outside the volume"
    );
    assert_eq!(std::fs::read(o.join("secret")).unwrap(), SECRET);
}

#[test]
fn hostile_path_strings_never_become_paths() {
    let cases = [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("..", "\"..\""),
        ("a/../../etc", "\"..\""),
        ("./a", "\".\""),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\0/etc", "NUL"),
    ];
    for (s, word) in cases {
        let e = parse_path("rename", s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{s:?}");
        assert!(e.to_string().contains(word), "{s:?}: {e}");
    }
    let long = "a".repeat(256);
    assert_eq!(
        parse_path("put", &long).unwrap_err().kind(),
        ErrorKind::NameTooLong
    );
    let deep = vec!["b".repeat(255); 17].join("/");
    assert_eq!(
        parse_path("put", &deep).unwrap_err().kind(),
        ErrorKind::NameTooLong
    );
}

/// Every operation through a symlink in the middle of a path fails and touches nothing
/// outside — for a symlink made through the API and for one planted on disk.
#[test]
fn symlink_in_the_middle_is_never_crossed() {
    let f = Fixture::new();
    let o = outside(&f);
    let v = &f.vol;
    v.symlink(&p("api"), o.to_str().unwrap().as_bytes())
        .unwrap();
    v.symlink(&p("rel"), b"../../../../outside").unwrap();
    symlink(&o, f.tree().join("planted")).unwrap();
    symlink("/", f.tree().join("root")).unwrap();
    put_bytes(v, "mine", b"mine");
    for l in ["api", "rel", "planted", "root"] {
        let q = |s: &str| p(&format!("{l}/{s}"));
        let kinds = [
            v.stat(&q("secret")).map(drop).unwrap_err().kind(),
            v.read(&q("secret"), 0, 100).map(drop).unwrap_err().kind(),
            v.write(&q("secret"), 0, b"pwned")
                .map(drop)
                .unwrap_err()
                .kind(),
            v.truncate(&q("secret"), 0).unwrap_err().kind(),
            v.get(&q("secret")).map(drop).unwrap_err().kind(),
            v.readlink(&q("secret")).map(drop).unwrap_err().kind(),
            v.create(&q("new"), 0o600, true)
                .map(drop)
                .unwrap_err()
                .kind(),
            v.mkdir(&q("newdir"), 0o700).map(drop).unwrap_err().kind(),
            v.symlink(&q("newlink"), b"x").map(drop).unwrap_err().kind(),
            v.unlink(&q("secret")).unwrap_err().kind(),
            v.delete(&q("secret"), Expect::Any).unwrap_err().kind(),
            v.rename(&q("secret"), &p("stolen"), RenameMode::Replace)
                .unwrap_err()
                .kind(),
            v.rename(&p("mine"), &q("secret"), RenameMode::Replace)
                .unwrap_err()
                .kind(),
            v.link(&q("secret"), &p("stolen"))
                .map(drop)
                .unwrap_err()
                .kind(),
            v.link(&p("mine"), &q("planted"))
                .map(drop)
                .unwrap_err()
                .kind(),
            v.put(&q("secret"), &mut &b"pwned"[..], PutOptions::default())
                .map(drop)
                .unwrap_err()
                .kind(),
            v.readdir(&p(l), 0, 10).map(drop).unwrap_err().kind(),
            v.fsync(&q("secret"), false).unwrap_err().kind(),
            v.setattr(
                &q("secret"),
                &SetAttr {
                    mode: Some(0o777),
                    ..SetAttr::default()
                },
            )
            .map(drop)
            .unwrap_err()
            .kind(),
        ];
        for (i, k) in kinds.iter().enumerate() {
            assert!(
                matches!(
                    k,
                    ErrorKind::Symlink | ErrorKind::NotDir | ErrorKind::PermissionDenied
                ),
                "{l}: operation #{i} gave {k:?}"
            );
        }
        assert_eq!(
            v.stat(&p("stolen")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_outside_intact(&o);
    }
    // The final component being a symlink: stat and readlink see the link; unlink removes
    // the link (keeping it as a version), never the target.
    assert_eq!(v.stat(&p("planted")).unwrap().kind, FileType::Symlink);
    v.unlink(&p("planted")).unwrap();
    assert_outside_intact(&o);
    // Rename of the symlink itself moves the link, not its target.
    v.rename(&p("api"), &p("api2"), RenameMode::Replace)
        .unwrap();
    assert_eq!(
        v.readlink(&p("api2")).unwrap(),
        o.to_str().unwrap().as_bytes()
    );
    assert_outside_intact(&o);
}

/// A directory swapped for a symlink to the outside while operations run on paths through
/// it: every operation either acts on the real directory or fails; the outside never changes
/// and its secret is never read.
#[test]
fn concurrent_symlink_swap_never_escapes() {
    let f = Fixture::new();
    let o = outside(&f);
    let v = f.vol.clone();
    v.mkdir(&p("d"), 0o700).unwrap();
    put_bytes(&v, "d/secret", b"inside");
    // Prepare the swap on disk: "d" (a real dir) <-> "evil" (a symlink to outside).
    symlink(&o, f.tree().join("evil")).unwrap();
    let tree = f.tree();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let tree = tree.clone();
        std::thread::spawn(move || {
            let (a, b) = (
                std::ffi::CString::new(tree.join("d").to_str().unwrap()).unwrap(),
                std::ffi::CString::new(tree.join("evil").to_str().unwrap()).unwrap(),
            );
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: both are valid C strings; renameat2 with AT_FDCWD and absolute paths.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0, "exchange failed: {}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        })
    };
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut ok = 0u64;
    let mut refused = 0u64;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let name = format!("d/n{i}");
        let results: Vec<Result<(), StoreError>> = vec![
            v.read(&p("d/secret"), 0, 100)
                .map(|b| assert_ne!(b, SECRET, "read the outside secret")),
            v.get(&p("d/secret")).map(|mut r| {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut r, &mut b).unwrap();
                assert_ne!(b, SECRET, "got the outside secret");
            }),
            v.write(&p("d/secret"), 0, b"inside").map(drop),
            v.create(&p(&name), 0o600, true).map(drop),
            v.put(
                &p(&format!("{name}p")),
                &mut &b"x"[..],
                PutOptions::default(),
            )
            .map(drop),
            v.unlink(&p(&name)).map(drop),
            v.symlink(&p(&format!("{name}s")), b"x").map(drop),
            v.mkdir(&p(&format!("{name}d")), 0o700).map(drop),
            v.rename(&p("d/secret"), &p("d/secret2"), RenameMode::Replace)
                .and_then(|_| v.rename(&p("d/secret2"), &p("d/secret"), RenameMode::Replace)),
            v.link(&p("d/secret"), &p(&format!("{name}l"))).map(drop),
        ];
        for r in results {
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert!(
                        matches!(
                            e.kind(),
                            ErrorKind::Symlink
                                | ErrorKind::NotDir
                                | ErrorKind::NotFound
                                | ErrorKind::Exists
                                | ErrorKind::PermissionDenied
                        ),
                        "unexpected error {e}"
                    );
                    refused += 1
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "only {swaps} swaps");
    assert!(
        ok > 0 && refused > 0,
        "ok {ok}, refused {refused}: the race was not exercised"
    );
    assert_outside_intact(&o);
}
