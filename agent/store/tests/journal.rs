//! The change journal: one entry per mutation, numbering across restarts, paging, torn-record
//! recovery, compaction with a floor, subscribers, and what a process or machine crash
//! leaves.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use cloudstore_store::*;
use common::*;

/// Cuts `file` to `len` bytes, as a disk that lost the writes past it.
fn cut(file: &std::path::Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap()
}

fn journal_file(f: &Fixture) -> std::path::PathBuf {
    f.data().join("volumes/work/journal/journal.log")
}

fn kinds(entries: &[ChangeEntry]) -> Vec<(ChangeKind, String, Option<String>)> {
    entries
        .iter()
        .map(|e| (e.kind, e.path.clone(), e.new_path.clone()))
        .collect()
}

#[test]
fn a_file_written_through_its_creation_is_journaled_as_any_modification() {
    use ChangeKind::*;
    let f = Fixture::new();
    let v = &f.vol;
    v.mkdir(&p("d"), 0o700).unwrap();
    let start = v.journal_head();
    // Created and written through the creation's handle, whose descriptor is closed first.
    let c = v.create_open(&p("d/new"), 0o644, true).unwrap();
    drop(c.file);
    assert_eq!(v.stats().open_sessions, 0, "nothing modified yet");
    assert_eq!(
        v.write_if(&p("d/new"), Some(c.key), 0, b"first").unwrap(),
        Some(5)
    );
    assert_eq!(v.stats().open_sessions, 1);
    v.write_if(&p("d/new"), Some(c.key), 5, b" second").unwrap();
    v.release_file(c.key).unwrap();
    assert_eq!(get_bytes(v, "d/new"), b"first second");
    let e = all_changes(v, start);
    assert_eq!(
        kinds(&e),
        vec![
            (Create, "d/new".to_string(), None),
            (ModifyStart, "d/new".to_string(), None),
            (ModifyEnd, "d/new".to_string(), None),
        ]
    );
    assert_eq!((e[1].size, e[2].size), (0, 12));
    // Created, then renamed before its first write: the write goes to the file where it
    // is now, and is journaled there.
    let start = v.journal_head();
    let c = v.create_open(&p("d/a"), 0o644, true).unwrap();
    v.rename(&p("d/a"), &p("d/b"), RenameMode::NoReplace)
        .unwrap();
    assert_eq!(v.write_if(&p("d/a"), Some(c.key), 0, b"x").unwrap(), None);
    assert_eq!(
        v.write_if(&p("d/b"), Some(c.key), 0, b"y").unwrap(),
        Some(1)
    );
    v.release_file(c.key).unwrap();
    assert_eq!(get_bytes(v, "d/b"), b"y");
    let e = all_changes(v, start);
    assert_eq!(
        kinds(&e)[2..],
        [
            (ModifyStart, "d/b".to_string(), None),
            (ModifyEnd, "d/b".to_string(), None),
        ]
    );
    // Created and closed unwritten: nothing but the creation.
    let start = v.journal_head();
    let c = v.create_open(&p("d/empty"), 0o644, true).unwrap();
    v.release_file(c.key).unwrap();
    assert_eq!(
        kinds(&all_changes(v, start)),
        vec![(Create, "d/empty".to_string(), None)]
    );
}

#[test]
fn a_directory_made_with_a_file_inside_is_journaled_as_both_and_refuses_other_names() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let v = &f.vol;
    v.mkdir(&p("d"), 0o700).unwrap();
    let start = v.journal_head();
    let made = v
        .mkdir_with_file(&p("d/e"), 0o751, "gocryptfs.diriv", &[7; 16], 0o440)
        .unwrap();
    let dir = f.tree().join("d/e");
    assert_eq!(std::fs::read(dir.join("gocryptfs.diriv")).unwrap(), [7; 16]);
    let meta = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap();
    assert_eq!(
        meta(&dir.join("gocryptfs.diriv")).permissions().mode() & 0o7777,
        0o440
    );
    assert_eq!(meta(&dir).permissions().mode() & 0o7777, 0o751);
    // Its attributes and its parent's are as a stat sees them after.
    assert_eq!(made.attr, v.stat(&p("d/e")).unwrap());
    assert_eq!(made.parent, v.stat(&p("d")).unwrap());
    let e = all_changes(v, start);
    use ChangeKind::*;
    assert_eq!(
        kinds(&e),
        vec![
            (Mkdir, "d/e".to_string(), None),
            (Put, "d/e/gocryptfs.diriv".to_string(), None),
        ]
    );
    // The journal's size and time are the file's.
    let file = meta(&dir.join("gocryptfs.diriv"));
    assert_eq!(e[1].size, 16);
    assert_eq!(
        (e[1].mtime.secs, e[1].mtime.nanos as i64),
        (
            std::os::unix::fs::MetadataExt::mtime(&file),
            std::os::unix::fs::MetadataExt::mtime_nsec(&file)
        )
    );
    // A name that is not one entry inside, or a directory already there: refused, and
    // nothing made.
    for bad in ["", ".", "..", "../x", "a/b", "a\0b"] {
        let err = v
            .mkdir_with_file(&p("d/g"), 0o700, bad, b"x", 0o600)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{bad:?}: {err}");
        assert!(!f.tree().join("d/g").exists(), "{bad:?}");
    }
    let err = v
        .mkdir_with_file(&p("d/e"), 0o700, "other", b"x", 0o600)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exists);
    assert!(!dir.join("other").exists());
}

#[test]
fn every_mutation_is_journaled_in_order() {
    let f = Fixture::new();
    let v = &f.vol;
    let start = v.journal_head();
    assert_eq!(start, 1);
    v.mkdir(&p("d"), 0o700).unwrap();
    v.create(&p("d/f"), 0o600, true).unwrap();
    v.write(&p("d/f"), 0, b"abc").unwrap();
    v.release(&p("d/f")).unwrap();
    v.setattr(
        &p("d/f"),
        &cloudstore_store::SetAttr {
            mode: Some(0o644),
            ..Default::default()
        },
    )
    .unwrap();
    v.symlink(&p("s"), b"t").unwrap();
    v.link(&p("d/f"), &p("h")).unwrap();
    v.rename(&p("h"), &p("h2"), RenameMode::Replace).unwrap();
    put_bytes(v, "h2", b"put");
    v.unlink(&p("h2")).unwrap();
    v.delete(&p("s"), Expect::Any).unwrap();
    v.rmdir(&p("d")).unwrap_err(); // not empty: no entry
    v.unlink(&p("d/f")).unwrap();
    v.rmdir(&p("d")).unwrap();
    let e = all_changes(v, start);
    use ChangeKind::*;
    let s = |x: &str| x.to_string();
    assert_eq!(
        kinds(&e),
        vec![
            (Mkdir, s("d"), None),
            (Create, s("d/f"), None),
            (ModifyStart, s("d/f"), None),
            (ModifyEnd, s("d/f"), None),
            (SetAttr, s("d/f"), None),
            (Symlink, s("s"), None),
            (Link, s("h"), Some(s("d/f"))),
            (Rename, s("h"), Some(s("h2"))),
            (Put, s("h2"), None),
            (Unlink, s("h2"), None),
            (Unlink, s("s"), None),
            (Unlink, s("d/f"), None),
            (Rmdir, s("d"), None),
        ]
    );
    for w in e.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert_eq!(e[3].size, 3, "ModifyEnd carries the final size");
    assert_eq!(e[8].size, 3, "Put carries the staged size");
    // Failed or refused operations leave no entry.
    let head = v.journal_head();
    v.unlink(&p("missing")).unwrap_err();
    v.mkdir(&p("missing/x"), 0o700).unwrap_err();
    v.rmdir(&p("nothere")).unwrap_err();
    v.rename(&p("nothere"), &p("x"), RenameMode::Replace)
        .unwrap_err();
    assert_eq!(v.journal_head(), head);
}

#[test]
fn paging_and_positions() {
    let f = Fixture::new();
    let v = &f.vol;
    for i in 0..25 {
        v.create(&p(&format!("f{i}")), 0o600, true).unwrap();
    }
    let mut since = 1;
    let mut got = Vec::new();
    loop {
        match v.changes_since(since, 10).unwrap() {
            Changes::Entries { entries, next } => {
                assert!(entries.len() <= 10);
                if entries.is_empty() {
                    assert_eq!(next, v.journal_head());
                    break;
                }
                got.extend(entries);
                since = next;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.len(), 25);
    assert_eq!(got[24].path, "f24");
    // A position beyond the head is from a journal that no longer exists: rescan.
    assert!(matches!(
        v.changes_since(v.journal_head() + 5, 10).unwrap(),
        Changes::RescanNeeded { .. }
    ));
}

#[test]
fn numbering_survives_restarts() {
    let mut f = Fixture::new();
    for i in 0..5 {
        f.vol.create(&p(&format!("f{i}")), 0o600, true).unwrap();
    }
    let head = f.vol.journal_head();
    f = f.reopen();
    assert_eq!(f.vol.journal_head(), head);
    f.vol.create(&p("after"), 0o600, true).unwrap();
    let e = all_changes(&f.vol, 1);
    assert_eq!(e.len(), 6);
    assert_eq!(e.last().unwrap().seq, head);
    assert_eq!(e.last().unwrap().path, "after");
}

#[test]
fn torn_last_record_is_dropped_at_every_cut() {
    let mut f = Fixture::new();
    for i in 0..3 {
        f.vol.create(&p(&format!("f{i}")), 0o600, true).unwrap();
    }
    let full = std::fs::read(journal_file(&f)).unwrap();
    f.vol.create(&p("last"), 0o600, true).unwrap();
    let with_last = std::fs::read(journal_file(&f)).unwrap();
    assert!(with_last.len() > full.len());
    // Cut the last record at every byte, and also fill its tail with zeros (a page written
    // only in part): each time the first three entries survive and numbering goes on.
    let variants: Vec<Vec<u8>> = (full.len()..with_last.len())
        .map(|n| with_last[..n].to_vec())
        .chain((full.len() + 8..with_last.len()).map(|n| {
            let mut b = with_last.clone();
            b[n..].iter_mut().for_each(|x| *x = 0);
            b
        }))
        .chain(std::iter::once({
            let mut b = with_last.clone();
            b.extend_from_slice(&[0xff; 5]);
            b
        }))
        .collect();
    for (i, bytes) in variants.iter().enumerate() {
        let f2 = f;
        let Fixture {
            dir,
            store,
            vol,
            clock,
        } = f2;
        let cfg = store.config().clone();
        drop(vol);
        drop(store);
        std::fs::write(
            dir.path().join("data/volumes/work/journal/journal.log"),
            bytes,
        )
        .unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path().join("data"), cfg).unwrap());
        let vol = store.volume("work").unwrap();
        f = Fixture {
            dir,
            store,
            vol,
            clock,
        };
        let e = all_changes(&f.vol, 1);
        let complete = bytes.len() >= with_last.len() && bytes[..with_last.len()] == with_last[..];
        let want = if complete { 4 } else { 3 };
        assert_eq!(e.len(), want, "variant {i} ({} bytes)", bytes.len());
        assert_eq!(f.vol.journal_head(), want as u64 + 1, "variant {i}");
        assert_eq!(
            std::fs::metadata(journal_file(&f)).unwrap().len(),
            if complete {
                with_last.len()
            } else {
                full.len()
            } as u64
        );
    }
}

#[test]
fn damage_mid_file_forces_a_rescan_instead_of_missing_changes() {
    let f = Fixture::new();
    for i in 0..4 {
        f.vol.create(&p(&format!("f{i}")), 0o600, true).unwrap();
    }
    let head = f.vol.journal_head();
    let jf = journal_file(&f);
    let Fixture {
        dir,
        store,
        vol,
        clock,
    } = f;
    let cfg = store.config().clone();
    drop(vol);
    drop(store);
    let mut b = std::fs::read(&jf).unwrap();
    b[32 + 8 + 2] ^= 0x55; // inside the first record's payload
    std::fs::write(&jf, &b).unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path().join("data"), cfg).unwrap());
    let vol = store.volume("work").unwrap();
    match vol.changes_since(1, 100).unwrap() {
        Changes::RescanNeeded { floor, head: h } => {
            assert_eq!(floor, head);
            assert_eq!(h, head);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        vol.journal_head(),
        head,
        "numbering continues past the damage"
    );
    vol.create(&p("new"), 0o600, true).unwrap();
    assert_eq!(all_changes(&vol, head).len(), 1);
    drop((clock, dir));
}

#[test]
fn compaction_keeps_latest_per_path_and_raises_a_floor() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "a", b"1");
    put_bytes(v, "b", b"1");
    put_bytes(v, "a", b"2");
    v.rename(&p("b"), &p("c"), RenameMode::Replace).unwrap();
    v.compact_journal().unwrap();
    let e = all_changes(v, 1);
    assert_eq!(
        kinds(&e),
        vec![
            (ChangeKind::Put, "a".into(), None),
            (ChangeKind::Rename, "b".into(), Some("c".into()))
        ]
    );
    assert_eq!(e[0].seq, 3);
    // Readers from any position still learn every path that changed after it.
    assert_eq!(all_changes(v, 2).len(), 2);
    assert_eq!(all_changes(v, 4).len(), 1);

    // A tiny budget: the journal stays bounded; old positions get RescanNeeded.
    let f = Fixture::with(|c| c.journal_max_bytes = 4096);
    let v = &f.vol;
    for i in 0..400 {
        put_bytes(v, &format!("distinct-{i:04}"), b"x");
    }
    let stats = v.stats();
    assert!(stats.journal_bytes <= 4096, "{stats:?}");
    assert!(stats.journal_floor > 1, "{stats:?}");
    match v.changes_since(1, 10).unwrap() {
        Changes::RescanNeeded { floor, head } => {
            assert_eq!(floor, stats.journal_floor);
            assert_eq!(head, v.journal_head());
        }
        other => panic!("{other:?}"),
    }
    let tail = all_changes(v, stats.journal_floor);
    assert_eq!(tail.last().unwrap().path, "distinct-0399");
    assert_eq!(tail.first().unwrap().seq, stats.journal_floor);
    // Numbering and the floor survive a restart.
    let head = v.journal_head();
    let f = f.reopen();
    assert_eq!(f.vol.journal_head(), head);
    assert_eq!(f.vol.stats().journal_floor, stats.journal_floor);
}

#[test]
fn subscribers_get_entries_in_order_and_lag_notices() {
    let f = Fixture::new();
    let v = f.vol.clone();
    let sub = v.subscribe();
    assert_eq!(sub.try_recv(), None);
    let writer = std::thread::spawn(move || {
        for i in 0..50 {
            v.create(&p(&format!("f{i}")), 0o600, true).unwrap();
        }
    });
    let mut seqs = Vec::new();
    while seqs.len() < 50 {
        match sub.recv_timeout(Duration::from_secs(10)) {
            Some(Notice::Change(e)) => {
                assert_eq!(e.kind, ChangeKind::Create);
                seqs.push(e.seq);
            }
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    // A subscriber that does not read is told it lagged, and can catch up from the journal.
    let slow = f.vol.subscribe();
    for i in 0..1100 {
        f.vol.create(&p(&format!("g{i}")), 0o600, true).unwrap();
    }
    assert_eq!(slow.try_recv(), Some(Notice::Lagged));
    let mut n = 0;
    while let Some(Notice::Change(_)) = slow.try_recv() {
        n += 1;
    }
    assert_eq!(n, 1024);
    drop(slow);
    f.vol.create(&p("after-drop"), 0o600, true).unwrap();
}

#[test]
fn a_subscriber_is_not_sent_what_was_done_for_its_own_origin() {
    let f = Fixture::new();
    let mine = f.vol.subscribe_for(7);
    let other = f.vol.subscribe_for(8);
    let everything = f.vol.subscribe();
    acting_for(7, || f.vol.create(&p("by-7"), 0o600, true)).unwrap();
    f.vol.create(&p("by-nobody"), 0o600, true).unwrap();
    let paths = |s: &Subscription| {
        let mut out = Vec::new();
        while let Some(n) = s.try_recv() {
            match n {
                Notice::Change(e) => out.push(e.path),
                Notice::Lagged => panic!("lagged"),
            }
        }
        out
    };
    assert_eq!(paths(&mine), ["by-nobody"]);
    assert_eq!(paths(&other), ["by-7", "by-nobody"]);
    assert_eq!(paths(&everything), ["by-7", "by-nobody"]);
    // The attribution ends with the call, panicking or not.
    let _ = std::panic::catch_unwind(|| acting_for(7, || panic!("inside")));
    f.vol.create(&p("after"), 0o600, true).unwrap();
    assert_eq!(paths(&mine), ["after"]);
}

#[test]
fn a_session_open_at_a_crash_is_closed_on_reopen() {
    let f = Fixture::new();
    put_bytes(&f.vol, "f", b"before");
    f.vol.write(&p("f"), 0, b"AFTER!").unwrap();
    let head = f.vol.journal_head();
    // The agent dying: the volume is never dropped, so no ModifyEnd is written.
    let f = f.die_and_restart(|_| {}, |_| {});
    let e = all_changes(&f.vol, head);
    assert_eq!(kinds(&e), vec![(ChangeKind::ModifyEnd, "f".into(), None)]);
    assert_eq!(e[0].size, 6);
}

#[test]
fn a_session_end_lost_in_a_crash_is_written_again_on_reopen() {
    // Records are appended without waiting for the disk; a session end missing from the
    // journal's tail (cut here by hand) must leave the next start to end the session.
    let f = Fixture::new();
    put_bytes(&f.vol, "f", b"before");
    f.vol.write(&p("f"), 0, b"AFTER!!").unwrap();
    let head = f.vol.journal_head();
    let jf = journal_file(&f);
    let before_end = std::fs::metadata(&jf).unwrap().len();
    f.vol.release(&p("f")).unwrap();
    assert!(std::fs::metadata(&jf).unwrap().len() > before_end);
    let f = f.die_and_restart(|_| cut(&jf, before_end), |_| {});
    let e = all_changes(&f.vol, head);
    assert_eq!(kinds(&e), vec![(ChangeKind::ModifyEnd, "f".into(), None)]);
    assert_eq!(e[0].size, 7);
}

#[test]
fn journal_append_is_the_only_writer_and_file_is_exact() {
    // The journal on disk holds exactly the header and the records: appending a garbage byte
    // by hand makes the next open cut it, proving the length checks run.
    let f = Fixture::new();
    f.vol.create(&p("x"), 0o600, true).unwrap();
    let jf = journal_file(&f);
    let len = std::fs::metadata(&jf).unwrap().len();
    let f = {
        let mut h = OpenOptions::new().append(true).open(&jf).unwrap();
        h.write_all(&[7]).unwrap();
        f.reopen()
    };
    assert_eq!(std::fs::metadata(&jf).unwrap().len(), len);
    assert_eq!(all_changes(&f.vol, 1).len(), 1);
}

fn open_marker(f: &Fixture) -> std::path::PathBuf {
    f.data().join("volumes/work/journal/open")
}

fn create_n(f: &Fixture, prefix: &str, n: usize) {
    for i in 0..n {
        f.vol
            .create(&p(&format!("{prefix}{i}")), 0o600, true)
            .unwrap();
    }
}

#[test]
fn a_clean_close_is_trusted_even_by_the_next_boot() {
    let f = Fixture::new();
    create_n(&f, "f", 5);
    assert!(
        open_marker(&f).exists(),
        "the journal is marked open while in use"
    );
    let head = f.vol.journal_head();
    let f = f.close_and_restart(
        |data| {
            assert!(
                !data.join("volumes/work/journal/open").exists(),
                "a clean close removes the open marker"
            )
        },
        |cfg| cfg.boot_id = "a-later-boot".into(),
    );
    assert_eq!(f.vol.journal_head(), head);
    assert_eq!(
        all_changes(&f.vol, 1).len(),
        5,
        "no rescan after a clean close"
    );
}

#[test]
fn a_killed_process_loses_no_entry() {
    // Appends are not flushed one by one, but a process that dies leaves its completed
    // writes to the kernel: the same boot finds every entry, and no reader rescans.
    let f = Fixture::new();
    create_n(&f, "f", 7);
    let head = f.vol.journal_head();
    let f = f.die_and_restart(|_| {}, |_| {});
    assert_eq!(f.vol.journal_head(), head);
    let e = all_changes(&f.vol, 1);
    assert_eq!(e.len(), 7);
    assert_eq!(e.last().unwrap().path, "f6");
}

#[test]
fn a_machine_crash_makes_every_reader_rescan_and_never_reuses_a_number() {
    let f = Fixture::with(|cfg| cfg.journal_reservation = 8);
    create_n(&f, "f", 20);
    // A reader (the transfer role) has seen every entry handed out.
    let seen = f.vol.journal_head();
    let jf = journal_file(&f);
    let len_after_5 = {
        let f5 = Fixture::with(|_| {});
        create_n(&f5, "f", 5);
        std::fs::metadata(journal_file(&f5)).unwrap().len()
    };
    // The machine stops: the disk kept only the first 5 records; the next boot has
    // another id.
    let f = f.die_and_restart(
        |_| cut(&jf, len_after_5),
        |cfg| cfg.boot_id = "the-next-boot".into(),
    );
    let head = f.vol.journal_head();
    assert!(
        head >= seen,
        "numbering goes on past every number handed out ({head} < {seen})"
    );
    for since in [1, 5, seen - 1, seen] {
        match f.vol.changes_since(since, 100).unwrap() {
            Changes::RescanNeeded { floor, .. } => assert!(floor >= seen),
            Changes::Entries { entries, .. } if since >= seen => {
                assert!(entries.is_empty(), "nothing new yet")
            }
            other => panic!("a reader at {since} must rescan: {other:?}"),
        }
    }
    f.vol.create(&p("after"), 0o600, true).unwrap();
    let e = all_changes(&f.vol, head);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].seq >= seen,
        "a number handed out before the crash is not given again"
    );
}

#[test]
fn an_unreadable_open_marker_counts_as_a_machine_crash() {
    let f = Fixture::new();
    create_n(&f, "f", 3);
    let seen = f.vol.journal_head();
    let marker = open_marker(&f);
    let f = f.die_and_restart(|_| std::fs::write(&marker, b"garbage").unwrap(), |_| {});
    assert!(f.vol.journal_head() >= seen);
    assert!(matches!(
        f.vol.changes_since(1, 10).unwrap(),
        Changes::RescanNeeded { .. }
    ));
}
