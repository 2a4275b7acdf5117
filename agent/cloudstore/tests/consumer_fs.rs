//! The consumer's FUSE filesystem on real mounts, against a real storage agent reached
//! through its qrexec socket service; real gocryptfs as the oracle for the format and for
//! errors, and everyday programs (tar, diff, git, sqlite3) as users.

#[path = "fs_harness/mod.rs"]
mod fs_harness;
#[path = "support/mod.rs"]
mod support;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::Path;

use fs_harness::*;

fn res<T>(r: io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(n) => io::Error::from_raw_os_error(n).to_string(),
            None => e.to_string(),
        },
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD with absolute paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The same operations, in the same order, with each outcome recorded: run on our mount
/// and on gocryptfs's, the lists must be equal.
fn error_script(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut rec = |what: &str, r: String| out.push(format!("{what}: {r}"));
    let p = |s: &str| d.join(s);
    rec("mkdir d", res(fs::create_dir_all(p("d"))));
    rec("mkdir d again", res(fs::create_dir(p("d"))));
    rec("rmdir missing", res(fs::remove_dir(p("missing"))));
    rec("write d/f", res(fs::write(p("d/f"), b"first file")));
    rec("rmdir non-empty d", res(fs::remove_dir(p("d"))));
    rec("create over dir", res(File::create(p("d"))));
    rec("unlink dir", res(fs::remove_file(p("d"))));
    rec("rmdir file", res(fs::remove_dir(p("d/f"))));
    rec("mkdir below file", res(fs::create_dir(p("d/f/x"))));
    rec("open missing", res(File::open(p("d/missing"))));
    rec("rename below file", res(fs::rename(p("d/f"), p("d/f/x"))));
    rec("mkdir e", res(fs::create_dir(p("e"))));
    rec("write e/g", res(fs::write(p("e/g"), b"gee")));
    rec("mkdir d2", res(fs::create_dir(p("d2"))));
    rec(
        "rename dir over non-empty dir",
        res(fs::rename(p("d2"), p("e"))),
    );
    rec("mkdir empty", res(fs::create_dir(p("empty"))));
    rec(
        "rename dir over empty dir",
        res(fs::rename(p("d2"), p("empty"))),
    );
    rec("d2 gone", res(fs::metadata(p("d2"))));
    rec("rename file over dir", res(fs::rename(p("d/f"), p("e"))));
    rec("rename dir over file", res(fs::rename(p("e"), p("d/f"))));
    rec("hard link a dir", res(fs::hard_link(p("e"), p("d/l"))));
    rec("symlink over a file", res(symlink("x", p("d/f"))));
    rec("readlink a file", res(fs::read_link(p("d/f"))));
    rec("name of 256 bytes", res(File::create(p(&"a".repeat(256)))));
    rec(
        "name of 255 bytes",
        res(fs::write(p(&"b".repeat(255)), b"long")),
    );
    rec("read long", res(fs::read(p(&"b".repeat(255)))));
    rec(
        "noreplace onto existing",
        res(renameat2(&p("d/f"), &p("e/g"), libc::RENAME_NOREPLACE)),
    );
    rec(
        "noreplace onto free name",
        res(renameat2(&p("d/f"), &p("d/f1"), libc::RENAME_NOREPLACE)),
    );
    rec(
        "exchange",
        res(renameat2(&p("d/f1"), &p("e/g"), libc::RENAME_EXCHANGE)),
    );
    rec(
        "after exchange",
        format!(
            "{:?} {:?}",
            fs::read_to_string(p("d/f1")).ok(),
            fs::read_to_string(p("e/g")).ok()
        ),
    );
    rec(
        "exchange with missing",
        res(renameat2(
            &p("d/f1"),
            &p("d/missing"),
            libc::RENAME_EXCHANGE,
        )),
    );
    rec(
        "rename long to long",
        res(fs::rename(p(&"b".repeat(255)), p(&"c".repeat(200)))),
    );
    rec("old long gone", res(fs::metadata(p(&"b".repeat(255)))));
    rec("write long d", res(fs::write(p(&"d".repeat(220)), b"old")));
    rec("write short", res(fs::write(p("short"), b"new")));
    rec(
        "rename short over long",
        res(fs::rename(p("short"), p(&"d".repeat(220)))),
    );
    rec(
        "long after replace",
        format!("{:?}", fs::read_to_string(p(&"d".repeat(220))).ok()),
    );
    rec(
        "rename long over short",
        res(fs::rename(p(&"d".repeat(220)), p("e/g"))),
    );
    rec(
        "long gone after move",
        res(fs::metadata(p(&"d".repeat(220)))),
    );
    rec("new long", res(fs::read(p(&"c".repeat(200)))));
    rec("link", res(fs::hard_link(p("d/f1"), p("d/f2"))));
    rec(
        "nlink",
        format!("{:?}", fs::metadata(p("d/f2")).map(|m| m.nlink()).ok()),
    );
    rec(
        "link onto existing",
        res(fs::hard_link(p("d/f1"), p("e/g"))),
    );
    rec(
        "truncate up",
        res(OpenOptions::new()
            .write(true)
            .open(p("d/f1"))
            .and_then(|f| f.set_len(10_000))),
    );
    rec(
        "size",
        format!("{:?}", fs::metadata(p("d/f1")).map(|m| m.len()).ok()),
    );
    rec("unlink missing", res(fs::remove_file(p("d/missing"))));
    rec("rmdir non-empty again", res(fs::remove_dir(p("d"))));
    rec("remove tree", res(fs::remove_dir_all(p("d"))));
    rec("d gone", res(fs::metadata(p("d"))));
    rec(
        "exclusive create of existing",
        res(OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("e/g"))),
    );
    rec("readdir missing", res(fs::read_dir(p("missing"))));
    rec("readdir a file", res(fs::read_dir(p("e/g"))));
    out
}

/// Files of every interesting size, long names, nested directories, links.
fn build_sample(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper/deepest")).unwrap();
    for (i, n) in [
        0usize,
        1,
        4095,
        4096,
        4097,
        5000,
        20000,
        1 << 20,
        (1 << 20) + 3,
    ]
    .iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..*n).map(|j| (j * 31 + i) as u8).collect();
        fs::write(root.join(format!("size-{n}")), &data).unwrap();
    }
    let long = "λ".repeat(100); // 200 bytes: a long name on disk
    fs::write(root.join(&long), b"long name content").unwrap();
    fs::create_dir(root.join(format!("dir-{long}"))).unwrap();
    fs::write(
        root.join(format!("dir-{long}/inside")),
        b"inside a long dir",
    )
    .unwrap();
    fs::write(root.join("sub/deeper/deepest/file.txt"), b"deep").unwrap();
    fs::create_dir(root.join("empty dir")).unwrap();
    symlink("sub/deeper/deepest/file.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/absolute/target", root.join("link-abs")).unwrap();
    symlink("x".repeat(3000), root.join("link-long")).unwrap();
    fs::hard_link(root.join("size-5000"), root.join("sub/hardlink")).unwrap();
}

#[test]
fn same_listing_content_and_errors_as_gocryptfs_on_the_same_ciphertext() {
    let v = Volume::create();
    let m = v.mount();
    build_sample(m.path());
    let a = fs::metadata(m.p("size-5000")).unwrap();
    let b = fs::metadata(m.p("sub/hardlink")).unwrap();
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hard links share an inode"
    );
    assert_eq!(
        fs::symlink_metadata(m.p("link-long")).unwrap().len(),
        3000,
        "a symlink's size is its target's length"
    );
    let ours_errors = error_script(&m.p("ours"));
    let ours = snapshot(m.path());
    m.unmount();
    // No long-name file is left without its entry (renames and unlinks took them along).
    let orphans = sh(
        "find . -name 'gocryptfs.longname.*.name' | while read f; do \
         [ -e \"${f%.name}\" ] || echo \"$f\"; done",
        &v.tree(),
    );
    assert_eq!(orphans, "", "orphaned .name files");
    assert!(
        sh(
            "find . -name 'gocryptfs.longname.*.name' | wc -l",
            &v.tree()
        )
        .trim()
            != "0",
        "the sample has long names"
    );

    let g = v.gocryptfs();
    assert_eq!(snapshot(g.path()), ours, "gocryptfs sees what we wrote");
    let theirs_errors = error_script(&g.path().join("theirs"));
    assert_eq!(
        ours_errors, theirs_errors,
        "the same operations give the same results"
    );
    // And we read what gocryptfs writes.
    build_sample(&g.path().join("from-gocryptfs"));
    let theirs = snapshot(g.path());
    drop(g);
    let m = v.mount();
    assert_eq!(snapshot(m.path()), theirs, "we see what gocryptfs wrote");
}

#[test]
fn deterministic_and_plaintext_name_volumes_match_gocryptfs() {
    for (what, det, plain) in [
        ("deterministic names", true, false),
        ("plaintext names", false, true),
    ] {
        let v = Volume::create_with(|o| {
            o.deterministic_names = det;
            o.plaintext_names = plain;
        });
        let m = v.mount();
        build_sample(m.path());
        let ours_errors = error_script(&m.p("ours"));
        let ours = snapshot(m.path());
        m.unmount();
        let diriv = sh("find . -name gocryptfs.diriv | wc -l", &v.tree());
        assert_eq!(diriv.trim(), "0", "{what}: no directory IVs");
        let g = v.gocryptfs();
        assert_eq!(
            snapshot(g.path()),
            ours,
            "{what}: gocryptfs sees what we wrote"
        );
        assert_eq!(
            error_script(&g.path().join("theirs")),
            ours_errors,
            "{what}: the same results"
        );
    }
}

#[test]
fn editors_tar_git_and_sqlite_work() {
    let v = Volume::create();
    let m = v.mount();
    let work = tempfile::tempdir().unwrap();

    // An editor's atomic save: write a temporary file, fsync, rename over the original.
    // A reader that had the old file open keeps reading the old content.
    fs::write(m.p("doc.txt"), b"version 1").unwrap();
    let mut old = File::open(m.p("doc.txt")).unwrap();
    {
        let mut t = File::create(m.p(".doc.txt.swp")).unwrap();
        t.write_all(b"version 2, longer than the first").unwrap();
        t.sync_all().unwrap();
    }
    fs::rename(m.p(".doc.txt.swp"), m.p("doc.txt")).unwrap();
    assert_eq!(
        fs::read(m.p("doc.txt")).unwrap(),
        b"version 2, longer than the first"
    );
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "version 1");
    assert!(!m.p(".doc.txt.swp").exists());

    // untar + diff -r.
    let src = work.path().join("src");
    build_sample(&src);
    for i in 0..150 {
        let d = src.join(format!("many/d{}", i % 7));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}.txt")), format!("file {i}\n").repeat(i)).unwrap();
    }
    sh(
        &format!("tar cf {0}/a.tar -C {0}/src .", work.path().display()),
        work.path(),
    );
    sh(
        &format!(
            "mkdir x && tar xf {}/a.tar -C x && diff -r --no-dereference {} x",
            work.path().display(),
            src.display()
        ),
        m.path(),
    );

    // git clone of a local repository (no hard links: a real pack transfer), fsck, commit.
    let repo = work.path().join("repo");
    sh(
        &format!(
            "git init -q {0} && cd {0} && git config user.email t@e && git config user.name t && \
             cp -r {1}/many . && git add -A && git commit -qm one && \
             echo more >> many/d1/f1.txt && git commit -qam two",
            repo.display(),
            src.display()
        ),
        work.path(),
    );
    sh(
        &format!("git clone -q --no-local {} clone", repo.display()),
        m.path(),
    );
    sh(
        "git fsck --full --strict && git config user.email t@e && git config user.name t && \
         echo change > new.txt && git add new.txt && git commit -qm three && git gc -q && \
         git fsck --full && git status --porcelain | wc -l | grep -qx 0",
        &m.p("clone"),
    );
    assert_eq!(sh("git log --oneline | wc -l", &m.p("clone")).trim(), "3");

    // sqlite: rollback journal and WAL, many transactions, then an integrity check.
    for (db, mode) in [("rollback.db", "DELETE"), ("wal.db", "WAL")] {
        let mut sql = format!(
            "PRAGMA journal_mode={mode};\nCREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n"
        );
        for t in 0..20 {
            sql.push_str("BEGIN;\n");
            for i in 0..100 {
                sql.push_str(&format!(
                    "INSERT INTO t(v) VALUES ('{}');\n",
                    format!("row {t}-{i} ").repeat(i % 13 + 1)
                ));
            }
            sql.push_str(&format!(
                "UPDATE t SET v = v || 'x' WHERE id % 7 = {};\nCOMMIT;\n",
                t % 7
            ));
        }
        sql.push_str("DELETE FROM t WHERE id % 3 = 0;\nVACUUM;\n");
        fs::write(work.path().join("script.sql"), sql).unwrap();
        sh(
            &format!("sqlite3 {db} < {}/script.sql", work.path().display()),
            m.path(),
        );
        assert_eq!(
            sh(&format!("sqlite3 {db} 'PRAGMA integrity_check;'"), m.path()).trim(),
            "ok"
        );
        assert_eq!(
            sh(&format!("sqlite3 {db} 'SELECT count(*) FROM t;'"), m.path()).trim(),
            "1334"
        );
    }
}

#[test]
fn open_files_survive_rename_and_unlink_and_links_work() {
    let v = Volume::create();
    let m = v.mount();
    // Unlinked while open: reads and writes through the handle keep working.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("scratch"))
        .unwrap();
    f.write_all(&vec![1u8; 10_000]).unwrap();
    fs::remove_file(m.p("scratch")).unwrap();
    assert!(!m.p("scratch").exists());
    f.write_all_at(b"after unlink", 9_000).unwrap();
    let mut buf = vec![0u8; 12];
    f.read_exact_at(&mut buf, 9_000).unwrap();
    assert_eq!(&buf, b"after unlink");
    assert_eq!(f.metadata().unwrap().len(), 10_000);
    drop(f);

    // Renamed (to another directory) while open for writing.
    fs::create_dir(m.p("other")).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("moving"))
        .unwrap();
    f.write_all_at(b"before ", 0).unwrap();
    fs::rename(m.p("moving"), m.p("other/moved")).unwrap();
    f.write_all_at(b"after", 7).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("other/moved")).unwrap(), b"before after");
    // The directory itself renamed while a file in it is open.
    let f = OpenOptions::new()
        .write(true)
        .open(m.p("other/moved"))
        .unwrap();
    fs::rename(m.p("other"), m.p("renamed-dir")).unwrap();
    f.write_all_at(b"!", 12).unwrap();
    drop(f);
    assert_eq!(
        fs::read(m.p("renamed-dir/moved")).unwrap(),
        b"before after!"
    );

    // Inode numbers stay put after the file is closed and the kernel's cache times out
    // (tar's placeholder check for delayed symlinks relies on it).
    let placeholder = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.p("ph"))
        .unwrap();
    let ino = placeholder.metadata().unwrap().ino();
    drop(placeholder);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(fs::symlink_metadata(m.p("ph")).unwrap().ino(), ino);

    // Hard links.
    fs::write(m.p("a"), b"shared").unwrap();
    fs::hard_link(m.p("a"), m.p("renamed-dir/b")).unwrap();
    OpenOptions::new()
        .append(true)
        .open(m.p("renamed-dir/b"))
        .unwrap()
        .write_all(b" content")
        .unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"shared content");
    assert_eq!(fs::metadata(m.p("a")).unwrap().nlink(), 2);
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(fs::read(m.p("renamed-dir/b")).unwrap(), b"shared content");
    assert_eq!(fs::metadata(m.p("renamed-dir/b")).unwrap().nlink(), 1);

    // Symlinks: followed by the kernel, targets stored encrypted.
    symlink("renamed-dir/b", m.p("to-b")).unwrap();
    assert_eq!(fs::read(m.p("to-b")).unwrap(), b"shared content");
    assert_eq!(
        fs::read_link(m.p("to-b")).unwrap(),
        Path::new("renamed-dir/b")
    );
    symlink("missing", m.p("dangling")).unwrap();
    assert_eq!(
        fs::read(m.p("dangling")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    m.unmount();
    // Nothing of the plaintext names or targets is on storage.
    let tree = v.tree();
    let all = sh("find . | sort; find . -type l -exec readlink {} \\;", &tree);
    for word in [
        "renamed-dir",
        "moved",
        "to-b",
        "dangling",
        "scratch",
        "missing",
    ] {
        assert!(!all.contains(word), "{word} appears on storage:\n{all}");
    }
}

/// fsync of a directory goes to storage (which makes the directory's entries durable), so
/// an application that syncs a directory learns of a failure instead of a blind success.
#[test]
fn fsync_of_a_directory_reaches_storage() {
    let v = Volume::create();
    let m = v.mount();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"x").unwrap();
    let dir = File::open(m.p("d")).unwrap();
    dir.sync_all().unwrap();
    dir.sync_data().unwrap();
    // The ciphertext directory taken away behind the mount's back.
    let encrypted = sh("find . -mindepth 1 -maxdepth 1 -type d", &v.tree());
    let encrypted = encrypted.trim();
    assert!(
        !encrypted.is_empty() && !encrypted.contains('\n'),
        "{encrypted:?}"
    );
    fs::remove_dir_all(v.tree().join(encrypted)).unwrap();
    let e = dir.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
}

#[test]
fn ten_thousand_entries_in_one_directory() {
    let v = Volume::create();
    let m = v.mount();
    fs::create_dir(m.p("big")).unwrap();
    let t = std::time::Instant::now();
    for i in 0..10_000 {
        File::create(m.p(&format!("big/entry-{i:05}"))).unwrap();
    }
    let created = t.elapsed();
    let t = std::time::Instant::now();
    let mut names: Vec<String> = fs::read_dir(m.p("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let listed = t.elapsed();
    names.sort();
    assert_eq!(names.len(), 10_000);
    assert_eq!(names[0], "entry-00000");
    assert_eq!(names[9_999], "entry-09999");
    assert_eq!(fs::metadata(m.p("big/entry-04242")).unwrap().len(), 0);
    // `ls -l`: names and attributes of every entry (readdirplus: no lookup per entry).
    let t = std::time::Instant::now();
    let long = sh("ls -l big | grep -c '^-rw'", m.path());
    let long_listed = t.elapsed();
    assert_eq!(long.trim(), "10000");
    eprintln!(
        "10 000 entries: created in {created:?}, listed in {listed:?}, ls -l in {long_listed:?}"
    );
}
