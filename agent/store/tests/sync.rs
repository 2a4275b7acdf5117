//! What sync needs: whole-file get that a replace cannot tear, atomic put with a
//! precondition, delete with a precondition, conflict parking; and many threads at once.

mod common;

use std::io::Read;

use cloudstore_store::*;
use common::*;

#[test]
fn get_is_not_torn_by_a_concurrent_put() {
    let f = Fixture::new();
    let v = f.vol.clone();
    let a = vec![b'a'; 3 << 20];
    let b = vec![b'b'; 3 << 20];
    put_bytes(&v, "big", &a);
    let mut r = v.get(&p("big")).unwrap();
    let mut first = vec![0u8; 1 << 20];
    r.read_exact(&mut first).unwrap();
    // Replace the file completely while the reader is in the middle.
    put_bytes(&v, "big", &b);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert_eq!(first, a, "the reader saw only the file it opened");
    assert!(
        !r.changed().unwrap(),
        "a replace does not change the opened inode"
    );
    assert_eq!(get_bytes(&v, "big"), b);
    // An in-place write to the opened inode is detectable.
    let r = v.get(&p("big")).unwrap();
    v.write(&p("big"), 0, b"X").unwrap();
    assert!(r.changed().unwrap());
    assert_eq!(
        v.get(&p("nothing")).err().unwrap().kind(),
        ErrorKind::NotFound
    );
    v.mkdir(&p("d"), 0o700).unwrap();
    assert_eq!(v.get(&p("d")).err().unwrap().kind(), ErrorKind::IsDir);
}

#[test]
fn a_put_without_a_mode_keeps_the_mode_of_the_file_it_replaces() {
    let f = Fixture::new();
    let v = &f.vol;
    let mode_of = |path: &str| v.stat(&p(path)).unwrap().perm;
    // New from elsewhere: private to the owner.
    assert_eq!(put_bytes(v, "script", b"#!/bin/sh\n").perm, 0o600);
    v.setattr(
        &p("script"),
        &SetAttr {
            mode: Some(0o755),
            ..SetAttr::default()
        },
    )
    .unwrap();
    // Changed elsewhere and brought back: still executable, as the answer says too.
    assert_eq!(put_bytes(v, "script", b"#!/bin/sh\necho\n").perm, 0o755);
    assert_eq!(mode_of("script"), 0o755);
    assert_eq!(get_bytes(v, "script"), b"#!/bin/sh\necho\n");
    // A mode given is the mode taken.
    let given = PutOptions {
        mode: Some(0o640),
        ..PutOptions::default()
    };
    v.put(&p("script"), &mut &b"x"[..], given).unwrap();
    assert_eq!(mode_of("script"), 0o640);
    // The replaced version keeps its own.
    let kept = v.list_versions(&p("script"));
    assert_eq!(kept[0].perm, 0o755);
}

#[test]
fn put_with_expectations_detects_concurrent_change() {
    let f = Fixture::new();
    let v = &f.vol;
    let opts = |expect| PutOptions {
        expect,
        ..PutOptions::default()
    };
    // Absent: only if nothing is there.
    let a1 = v
        .put(&p("f"), &mut &b"one"[..], opts(Expect::Absent))
        .unwrap();
    let e = v
        .put(&p("f"), &mut &b"two"[..], opts(Expect::Absent))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(
        e.to_string().contains("\"f\"") && e.to_string().contains("expected nothing"),
        "{e}"
    );
    // State: only if unchanged since seen.
    let seen = a1.state();
    v.write(&p("f"), 0, b"ONE").unwrap(); // a consumer changes it
    let before = v.journal_head();
    let e = v
        .put(&p("f"), &mut &b"two"[..], opts(Expect::State(seen)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(get_bytes(v, "f"), b"ONE", "a refused put changes nothing");
    assert_eq!(v.journal_head(), before, "and journals nothing");
    assert_eq!(
        std::fs::read_dir(f.data().join("volumes/work/staging"))
            .unwrap()
            .count(),
        0
    );
    let now = v.stat(&p("f")).unwrap().state();
    let a2 = v
        .put(
            &p("f"),
            &mut &b"two"[..],
            PutOptions {
                expect: Expect::State(now),
                mode: Some(0o640),
                mtime: Some(Timespec::new(1_600_000_000, 7)),
            },
        )
        .unwrap();
    assert_eq!(
        (a2.size, a2.perm, a2.mtime),
        (3, 0o640, Timespec::new(1_600_000_000, 7))
    );
    assert_eq!(v.stat(&p("f")).unwrap().mtime, a2.mtime);
    // Missing parent: fails before anything is streamed.
    assert_eq!(
        v.put(&p("no/f"), &mut &b"x"[..], PutOptions::default())
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // A put over a directory is refused.
    v.mkdir(&p("d"), 0o700).unwrap();
    assert_eq!(
        v.put(&p("d"), &mut &b"x"[..], PutOptions::default())
            .unwrap_err()
            .kind(),
        ErrorKind::IsDir
    );
    // A stream that fails midway leaves nothing behind.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "peer went away",
                ));
            }
            self.0 -= 1;
            buf[0] = b'z';
            Ok(1)
        }
    }
    let e = v
        .put(&p("f"), &mut Failing(1000), PutOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("peer went away"), "{e}");
    assert_eq!(get_bytes(v, "f"), b"two");
    assert_eq!(
        std::fs::read_dir(f.data().join("volumes/work/staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn delete_with_expectations() {
    let f = Fixture::new();
    let v = &f.vol;
    let a = put_bytes(v, "f", b"x");
    put_bytes(v, "f", b"y");
    assert_eq!(
        v.delete(&p("f"), Expect::State(a.state()))
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(get_bytes(v, "f"), b"y");
    let now = v.stat(&p("f")).unwrap().state();
    v.delete(&p("f"), Expect::State(now)).unwrap();
    assert_eq!(contents_of_latest(v, "f"), b"y");
    v.mkdir(&p("d"), 0o700).unwrap();
    v.create(&p("d/x"), 0o600, true).unwrap();
    assert_eq!(
        v.delete(&p("d"), Expect::Any).unwrap_err().kind(),
        ErrorKind::NotEmpty
    );
    v.delete(&p("d/x"), Expect::Any).unwrap();
    v.delete(&p("d"), Expect::Any).unwrap();
    assert_eq!(
        v.delete(&p("d"), Expect::Any).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

fn contents_of_latest(v: &Volume, path: &str) -> Vec<u8> {
    let id = v.list_versions(&p(path))[0].id;
    let mut b = Vec::new();
    v.open_version(&p(path), id)
        .unwrap()
        .read_to_end(&mut b)
        .unwrap();
    b
}

#[test]
fn conflicts_are_parked_outside_the_tree_and_adopted_by_the_consumer() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "doc", b"local side");
    let head = v.journal_head();
    let c = v.park_conflict(&p("doc"), &mut &b"cloud side"[..]).unwrap();
    assert_eq!(
        (c.path.as_str(), c.size, c.reason),
        ("doc", 10, VersionReason::Conflict)
    );
    // The tree is untouched (it stays a valid gocryptfs tree); the journal says what happened.
    assert_eq!(get_bytes(v, "doc"), b"local side");
    assert_eq!(std::fs::read_dir(f.tree()).unwrap().count(), 1);
    let e = &all_changes(v, head)[0];
    assert_eq!(
        (e.kind, e.path.as_str(), e.new_path.clone()),
        (ChangeKind::ConflictParked, "doc", Some(c.id.to_string()))
    );
    assert_eq!(v.list_conflicts(), std::slice::from_ref(&c));
    let mut b = Vec::new();
    v.open_conflict(c.id).unwrap().read_to_end(&mut b).unwrap();
    assert_eq!(b, b"cloud side");
    // Survives a restart.
    let f = f.reopen();
    let v = &f.vol;
    assert_eq!(v.list_conflicts().len(), 1);
    // Adoption under a name the consumer chose; never over an existing entry.
    assert_eq!(
        v.adopt_conflict(c.id, &p("doc")).unwrap_err().kind(),
        ErrorKind::Exists
    );
    v.adopt_conflict(c.id, &p("doc-conflict")).unwrap();
    assert_eq!(get_bytes(v, "doc-conflict"), b"cloud side");
    assert!(v.list_conflicts().is_empty());
    assert_eq!(
        v.adopt_conflict(c.id, &p("again")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// Many threads on one volume: distinct files, shared files, renames and readers. Every
/// operation either succeeds or fails with an expected kind; the journal's numbers are
/// unique and dense; every file holds one complete put.
#[test]
fn many_threads_at_once() {
    let f = Fixture::new();
    let v = f.vol.clone();
    v.mkdir(&p("shared"), 0o700).unwrap();
    let head = v.journal_head();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                for i in 0..60 {
                    let own = format!("t{t}-{i}");
                    let payload = vec![t as u8; 1000 + i];
                    v.put(&p(&own), &mut &payload[..], PutOptions::default())
                        .unwrap();
                    v.write(&p(&own), 0, &[t as u8; 10]).unwrap();
                    v.release(&p(&own)).unwrap();
                    let shared = format!("shared/s{}", i % 5);
                    let body = vec![b'0' + t as u8; 4096];
                    v.put(&p(&shared), &mut &body[..], PutOptions::default())
                        .unwrap();
                    if let Ok(mut r) = v.get(&p(&shared)) {
                        let mut got = Vec::new();
                        r.read_to_end(&mut got).unwrap();
                        assert_eq!(got.len(), 4096);
                        assert!(got.iter().all(|&c| c == got[0]), "a torn file");
                    }
                    match v.rename(
                        &p(&shared),
                        &p(&format!("shared/r{t}")),
                        RenameMode::Replace,
                    ) {
                        Ok(()) => {}
                        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
                    }
                    let _ = v.readdir(&p("shared"), 0, 100).unwrap();
                    assert_eq!(v.read(&p(&own), 0, 10).unwrap(), vec![t as u8; 10]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let e = all_changes(&v, head);
    for w in e.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert_eq!(e.len() as u64, v.journal_head() - head);
    assert_eq!(v.stats().open_sessions, 0);
}

#[test]
fn sync_acknowledgement_is_durable_and_never_goes_back() {
    let f = Fixture::new();
    put_bytes(&f.vol, "a", b"1");
    put_bytes(&f.vol, "b", b"2");
    let head = f.vol.journal_head();
    assert_eq!(f.vol.sync_acked(), 0);
    assert_eq!(f.vol.ack_sync(head).unwrap(), head);
    // A restarted peer repeating an older acknowledgement does not move it back, and an
    // acknowledgement beyond the head is capped at the head.
    assert_eq!(f.vol.ack_sync(1).unwrap(), head);
    assert_eq!(f.vol.ack_sync(head + 1000).unwrap(), head);
    let f = f.reopen();
    assert_eq!(
        f.vol.sync_acked(),
        head,
        "the acknowledgement survives a restart"
    );
}

#[test]
fn handle_writes_follow_the_file_not_the_name() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "doc", b"hello");
    let (_file, attr, key) = v.open_file(&p("doc"), true).unwrap();
    assert_eq!(attr.size, 5);
    assert_eq!(v.write_if(&p("doc"), Some(key), 0, b"J").unwrap(), Some(1));
    assert_eq!(get_bytes(v, "doc"), b"Jello");
    // Once the name is replaced by another file, a conditional write does nothing there.
    put_bytes(v, "doc", b"other");
    assert_eq!(v.write_if(&p("doc"), Some(key), 0, b"X").unwrap(), None);
    assert_eq!(v.truncate_if(&p("doc"), Some(key), 0).unwrap(), None);
    assert_eq!(get_bytes(v, "doc"), b"other");
    v.unlink(&p("doc")).unwrap();
    assert_eq!(v.write_if(&p("doc"), Some(key), 0, b"X").unwrap(), None);
    v.release_file(key).unwrap();
    v.mkdir(&p("dir"), 0o700).unwrap();
    assert_eq!(
        v.open_file(&p("dir"), false).err().unwrap().kind(),
        ErrorKind::IsDir
    );
    // The same while the file's session is under way (the writes after the first one go
    // through the session's own descriptor): a rename of the file or of a directory above
    // it ends the session, and the old name no longer reaches the file.
    put_bytes(v, "dir/f", b"abc");
    let (_file, _, key) = v.open_file(&p("dir/f"), true).unwrap();
    assert_eq!(
        v.write_if(&p("dir/f"), Some(key), 0, b"A").unwrap(),
        Some(1)
    );
    assert_eq!(
        v.write_if(&p("dir/f"), Some(key), 1, b"B").unwrap(),
        Some(1)
    );
    v.rename(&p("dir/f"), &p("dir/g"), RenameMode::Replace)
        .unwrap();
    assert_eq!(v.write_if(&p("dir/f"), Some(key), 2, b"X").unwrap(), None);
    assert_eq!(
        v.write_if(&p("dir/g"), Some(key), 2, b"C").unwrap(),
        Some(1)
    );
    assert_eq!(
        v.write_if(&p("dir/g"), Some(key), 3, b"D").unwrap(),
        Some(1)
    );
    v.rename(&p("dir"), &p("moved"), RenameMode::Replace)
        .unwrap();
    assert_eq!(v.write_if(&p("dir/g"), Some(key), 0, b"X").unwrap(), None);
    assert_eq!(get_bytes(v, "moved/g"), b"ABCD");
}
