//! Filesystem operations on a volume's ciphertext tree: semantics and error kinds.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use cloudstore_store::*;
use common::*;

#[test]
fn create_write_read_stat() {
    let f = Fixture::new();
    let v = &f.vol;
    let a = v.create(&p("f"), 0o640, true).unwrap();
    assert_eq!(a.kind, FileType::File);
    assert_eq!(a.perm, 0o640);
    assert_eq!(a.size, 0);
    assert_eq!(v.write(&p("f"), 0, b"hello world").unwrap(), 11);
    assert_eq!(v.write(&p("f"), 6, b"WORLD").unwrap(), 5);
    assert_eq!(v.read(&p("f"), 0, 100).unwrap(), b"hello WORLD");
    assert_eq!(v.read(&p("f"), 6, 3).unwrap(), b"WOR");
    assert_eq!(v.read(&p("f"), 50, 3).unwrap(), b"");
    // Sparse write past the end.
    v.write(&p("f"), 20, b"x").unwrap();
    assert_eq!(v.stat(&p("f")).unwrap().size, 21);
    assert_eq!(
        v.read(&p("f"), 11, 10).unwrap(),
        [&[0u8; 9][..], b"x"].concat()
    );
    // What is on disk is exactly the bytes written: the tree is the ciphertext as is.
    assert_eq!(read_file(&f.tree().join("f")).len(), 21);
    // Exclusive create of an existing name fails; non-exclusive returns it unchanged.
    assert_eq!(
        v.create(&p("f"), 0o600, true).unwrap_err().kind(),
        ErrorKind::Exists
    );
    assert_eq!(v.create(&p("f"), 0o600, false).unwrap().size, 21);
    // The mode is the one asked, even one that refuses the owner (storage reads regardless).
    assert_eq!(v.create(&p("g"), 0o000, true).unwrap().perm, 0o000);
    assert_eq!(v.read(&p("g"), 0, 10).unwrap(), b"");
    assert!(v
        .read(&p("f"), 0, MAX_READ + 1)
        .unwrap_err()
        .to_string()
        .contains("at most"));
}

#[test]
fn a_create_or_unlink_answers_with_what_it_left() {
    use std::os::unix::fs::FileExt;
    let f = Fixture::new();
    let v = &f.vol;
    v.mkdir(&p("d"), 0o700).unwrap();
    let c = v.create_open(&p("d/new"), 0o644, true).unwrap();
    assert_eq!(
        (c.attr.kind, c.attr.perm, c.attr.size),
        (FileType::File, 0o644, 0)
    );
    // Open for writing: what goes through the descriptor is the file's content.
    c.file.write_all_at(b"through the handle", 0).unwrap();
    assert_eq!(v.read(&p("d/new"), 0, 100).unwrap(), b"through the handle");
    let dir = v.stat(&p("d")).unwrap();
    assert_eq!(c.parent, dir, "the directory's attributes after the create");
    // Not exclusive, an existing file is opened as it is.
    let again = v.create_open(&p("d/new"), 0o600, false).unwrap();
    assert_eq!((again.attr.ino, again.attr.size), (c.attr.ino, 18));
    let mut buf = [0u8; 7];
    again.file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"through");
    // Never through a symlink planted under the name.
    v.symlink(&p("d/link"), b"new").unwrap();
    assert_eq!(
        v.create_open(&p("d/link"), 0o600, false)
            .unwrap_err()
            .kind(),
        ErrorKind::Exists
    );
    let after = v.unlink(&p("d/new")).unwrap();
    assert_eq!(
        after,
        v.stat(&p("d")).unwrap(),
        "the directory after the unlink"
    );
}

#[test]
fn directories_and_readdir_paging() {
    let f = Fixture::new();
    let v = &f.vol;
    let d = v.mkdir(&p("d"), 0o755).unwrap();
    assert_eq!((d.kind, d.perm), (FileType::Dir, 0o755));
    assert_eq!(
        v.mkdir(&p("d"), 0o755).unwrap_err().kind(),
        ErrorKind::Exists
    );
    assert_eq!(
        v.mkdir(&p("nope/d"), 0o755).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let n = 2500;
    for i in 0..n {
        v.create(&p(&format!("d/file-{i:05}")), 0o600, true)
            .unwrap();
    }
    v.mkdir(&p("d/sub"), 0o700).unwrap();
    v.symlink(&p("d/link"), b"target").unwrap();
    let mut seen = BTreeSet::new();
    let mut cookie = 0;
    let mut pages = 0;
    loop {
        let page = v.readdir(&p("d"), cookie, 1000).unwrap();
        pages += 1;
        assert!(page.entries.len() <= MAX_READDIR_PAGE);
        for e in &page.entries {
            let kind = match e.name.as_str() {
                "sub" => FileType::Dir,
                "link" => FileType::Symlink,
                _ => FileType::File,
            };
            assert_eq!(e.kind, kind, "{}", e.name);
            assert!(seen.insert(e.name.clone()), "{} listed twice", e.name);
        }
        match page.next {
            Some(c) => cookie = c,
            None => break,
        }
    }
    assert_eq!(seen.len(), n + 2);
    assert!(pages >= 3, "{pages} pages");
    // The root lists too.
    let root = v.readdir(&RelPath::root(), 0, 10).unwrap();
    assert_eq!(
        root.entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["d"]
    );
    assert_eq!(root.next, None);
    // A symlink is not a directory to the store (it is never followed).
    assert_eq!(
        v.readdir(&p("d/link"), 0, 10).unwrap_err().kind(),
        ErrorKind::NotDir
    );
    assert_eq!(
        v.readdir(&p("d/file-00001"), 0, 10).unwrap_err().kind(),
        ErrorKind::NotDir
    );
    // rmdir: not empty, not a dir, then fine.
    assert_eq!(v.rmdir(&p("d")).unwrap_err().kind(), ErrorKind::NotEmpty);
    assert_eq!(
        v.rmdir(&p("d/file-00001")).unwrap_err().kind(),
        ErrorKind::NotDir
    );
    v.rmdir(&p("d/sub")).unwrap();
    assert_eq!(v.stat(&p("d/sub")).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        v.rmdir(&RelPath::root()).unwrap_err().kind(),
        ErrorKind::Busy
    );
}

#[test]
fn symlinks_are_stored_and_read_never_followed() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "real", b"data");
    let a = v.symlink(&p("ln"), b"real").unwrap();
    assert_eq!(a.kind, FileType::Symlink);
    assert_eq!(a.size, 4);
    assert_eq!(v.readlink(&p("ln")).unwrap(), b"real");
    assert_eq!(v.stat(&p("ln")).unwrap().kind, FileType::Symlink);
    // Reading, writing, getting, fsyncing through it all refuse.
    assert_eq!(
        v.read(&p("ln"), 0, 4).unwrap_err().kind(),
        ErrorKind::Symlink
    );
    assert_eq!(
        v.write(&p("ln"), 0, b"x").unwrap_err().kind(),
        ErrorKind::Symlink
    );
    assert_eq!(v.get(&p("ln")).err().unwrap().kind(), ErrorKind::Symlink);
    assert_eq!(
        v.truncate(&p("ln"), 0).unwrap_err().kind(),
        ErrorKind::Symlink
    );
    assert_eq!(
        v.readlink(&p("real")).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    let e = v.symlink(&p("bad"), b"a\0b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(
        v.symlink(&p("bad"), b"").unwrap_err().kind(),
        ErrorKind::Invalid
    );
    // An absolute target is only a string to the store.
    v.symlink(&p("abs"), b"/etc/passwd").unwrap();
    assert_eq!(v.readlink(&p("abs")).unwrap(), b"/etc/passwd");
    assert_eq!(
        v.read(&p("abs"), 0, 10).unwrap_err().kind(),
        ErrorKind::Symlink
    );
    // A symlink's own times can be set; its mode cannot.
    let t = Timespec::new(1_000_000, 5);
    let a = v
        .setattr(
            &p("ln"),
            &SetAttr {
                mtime: Some(TimeSet::At(t)),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(a.mtime, t);
    assert_ne!(v.stat(&p("real")).unwrap().mtime, t);
    let e = v
        .setattr(
            &p("ln"),
            &SetAttr {
                mode: Some(0o644),
                ..SetAttr::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[test]
fn link_unlink_rename() {
    let f = Fixture::new();
    let v = &f.vol;
    v.mkdir(&p("a"), 0o700).unwrap();
    v.mkdir(&p("b"), 0o700).unwrap();
    put_bytes(v, "a/x", b"xx");
    let l = v.link(&p("a/x"), &p("b/y")).unwrap();
    assert_eq!(l.nlink, 2);
    assert_eq!(l.ino, v.stat(&p("a/x")).unwrap().ino);
    assert_eq!(
        v.link(&p("a"), &p("b/z")).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        v.link(&p("a/x"), &p("b/y")).unwrap_err().kind(),
        ErrorKind::Exists
    );
    v.unlink(&p("b/y")).unwrap();
    assert_eq!(v.unlink(&p("b/y")).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(v.unlink(&p("a")).unwrap_err().kind(), ErrorKind::IsDir);
    // Rename with replace.
    put_bytes(v, "b/old", b"old");
    v.rename(&p("a/x"), &p("b/old"), RenameMode::Replace)
        .unwrap();
    assert_eq!(get_bytes(v, "b/old"), b"xx");
    assert_eq!(v.stat(&p("a/x")).unwrap_err().kind(), ErrorKind::NotFound);
    // No-replace and exchange.
    put_bytes(v, "a/p", b"P");
    put_bytes(v, "a/q", b"Q");
    assert_eq!(
        v.rename(&p("a/p"), &p("a/q"), RenameMode::NoReplace)
            .unwrap_err()
            .kind(),
        ErrorKind::Exists
    );
    v.rename(&p("a/p"), &p("a/q"), RenameMode::Exchange)
        .unwrap();
    assert_eq!(get_bytes(v, "a/p"), b"Q");
    assert_eq!(get_bytes(v, "a/q"), b"P");
    assert_eq!(
        v.rename(&p("a/p"), &p("a/none"), RenameMode::Exchange)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    v.rename(&p("a/p"), &p("a/new"), RenameMode::NoReplace)
        .unwrap();
    // Directories: into itself refused, over a non-empty dir refused, over a file refused.
    v.mkdir(&p("a/sub"), 0o700).unwrap();
    assert_eq!(
        v.rename(&p("a"), &p("a/sub/a"), RenameMode::Replace)
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        v.rename(&p("a/sub"), &p("b"), RenameMode::Replace)
            .unwrap_err()
            .kind(),
        ErrorKind::NotEmpty
    );
    assert_eq!(
        v.rename(&p("a/sub"), &p("b/old"), RenameMode::Replace)
            .unwrap_err()
            .kind(),
        ErrorKind::NotDir
    );
    assert_eq!(
        v.rename(&p("b/old"), &p("a/sub"), RenameMode::Replace)
            .unwrap_err()
            .kind(),
        ErrorKind::IsDir
    );
    v.rename(&p("a"), &p("b/moved"), RenameMode::Replace)
        .unwrap();
    assert_eq!(get_bytes(v, "b/moved/q"), b"P");
    // Renaming a name onto another name of the same inode is a no-op, as rename(2) says.
    v.link(&p("b/old"), &p("b/old2")).unwrap();
    v.rename(&p("b/old"), &p("b/old2"), RenameMode::Replace)
        .unwrap();
    assert_eq!(v.stat(&p("b/old")).unwrap().nlink, 2);
    assert!(v
        .rename(&RelPath::root(), &p("x"), RenameMode::Replace)
        .is_err());
}

#[test]
fn setattr_truncate_fsync_statfs() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "f", b"0123456789");
    let a = v
        .setattr(
            &p("f"),
            &SetAttr {
                mode: Some(0o604),
                size: Some(4),
                atime: Some(TimeSet::At(Timespec::new(100, 1))),
                mtime: Some(TimeSet::At(Timespec::new(200, 2))),
            },
        )
        .unwrap();
    assert_eq!(
        (a.perm, a.size, a.atime, a.mtime),
        (0o604, 4, Timespec::new(100, 1), Timespec::new(200, 2))
    );
    assert_eq!(
        std::fs::metadata(f.tree().join("f")).unwrap().mode() & 0o7777,
        0o604
    );
    v.truncate(&p("f"), 100).unwrap();
    assert_eq!(v.stat(&p("f")).unwrap().size, 100);
    v.fsync(&p("f"), false).unwrap();
    v.fsync(&p("f"), true).unwrap();
    v.fsync(&RelPath::root(), false).unwrap();
    let root_before = v.stat(&RelPath::root()).unwrap();
    assert_eq!(root_before.kind, FileType::Dir);
    v.setattr(
        &RelPath::root(),
        &SetAttr {
            mtime: Some(TimeSet::At(Timespec::new(5, 0))),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(v.stat(&RelPath::root()).unwrap().mtime, Timespec::new(5, 0));
    let s = v.statfs().unwrap();
    assert!(
        s.blocks > 0 && s.block_size > 0 && s.name_max >= 255,
        "{s:?}"
    );
    assert_eq!(
        v.truncate(&p("missing"), 0).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        v.fsync(&p("missing"), false).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn errors_name_operation_and_path() {
    let f = Fixture::new();
    let e = f.vol.unlink(&p("dir/none")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unlink") && msg.contains("dir/none"), "{msg}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.kind().errno(), libc::ENOENT);
    let e = f.store.volume("Bad Name").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    let e = f.store.volume("other").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("other"), "{e}");
    assert_eq!(
        f.store.create_volume("work").err().unwrap().kind(),
        ErrorKind::Exists
    );
    assert_eq!(f.store.volume_names().unwrap(), ["work"]);
    // A second process (here: a second Store) cannot open the same data directory.
    let e = Store::open(f.data(), StoreConfig::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("another process"), "{e}");
}

#[test]
fn volumes_are_separate_trees_on_disk() {
    let f = Fixture::new();
    let photos = f.store.create_volume("photos").unwrap();
    put_bytes(&f.vol, "same", b"work");
    put_bytes(&photos, "same", b"photos");
    assert_eq!(get_bytes(&f.vol, "same"), b"work");
    assert_eq!(
        read_file(&f.data().join("volumes/photos/tree/same")),
        b"photos"
    );
    for d in VOLUME_SUBDIRS {
        assert!(f.data().join("volumes/photos").join(d).is_dir(), "{d}");
    }
    assert_eq!(f.store.volume_names().unwrap(), ["photos", "work"]);
}
