//! Version history: what is kept on overwrite, delete, rename-over and in-place change (the
//! session rule), restore, and retention.

mod common;

use std::time::Duration;

use cloudstore_store::*;
use common::*;

fn version_bytes(v: &Volume, path: &str, id: VersionId) -> Vec<u8> {
    let mut r = v.open_version(&p(path), id).unwrap();
    let mut b = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut b).unwrap();
    b
}

fn contents(v: &Volume, path: &str) -> Vec<Vec<u8>> {
    v.list_versions(&p(path))
        .iter()
        .map(|i| version_bytes(v, path, i.id))
        .collect()
}

#[test]
fn overwrite_delete_and_rename_over_keep_the_old_content() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "f", b"one");
    assert!(
        v.list_versions(&p("f")).is_empty(),
        "a new file has no history"
    );
    put_bytes(v, "f", b"two");
    put_bytes(v, "g", b"gee");
    v.rename(&p("g"), &p("f"), RenameMode::Replace).unwrap();
    v.unlink(&p("f")).unwrap();
    // Newest first.
    assert_eq!(
        contents(v, "f"),
        [b"gee".to_vec(), b"two".to_vec(), b"one".to_vec()]
    );
    let reasons: Vec<_> = v.list_versions(&p("f")).iter().map(|i| i.reason).collect();
    assert_eq!(
        reasons,
        [
            VersionReason::Delete,
            VersionReason::Overwrite,
            VersionReason::Overwrite
        ]
    );
    // A symlink is kept as a symlink.
    v.symlink(&p("s"), b"target-1").unwrap();
    v.unlink(&p("s")).unwrap();
    let sv = v.list_versions(&p("s"));
    assert_eq!(sv[0].kind, FileType::Symlink);
    assert_eq!(v.read_version_link(&p("s"), sv[0].id).unwrap(), b"target-1");
    // A version of one path cannot be fetched under another.
    assert_eq!(
        v.open_version(&p("other"), sv[0].id).err().unwrap().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_hard_linked_file_is_copied_so_the_version_cannot_change() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "a", b"original");
    v.link(&p("a"), &p("b")).unwrap();
    v.unlink(&p("a")).unwrap();
    // Writing through the remaining link must not alter the kept version of "a".
    v.write(&p("b"), 0, b"CHANGED!").unwrap();
    assert_eq!(contents(&f.vol, "a"), [b"original".to_vec()]);
    // A version made by hard link is the only name of its inode.
    put_bytes(v, "c", b"cc");
    put_bytes(v, "c", b"dd");
    let id = v.list_versions(&p("c"))[0].id;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(f.version_data(id)).unwrap().nlink(), 1);
}

#[test]
fn in_place_changes_snapshot_once_per_session() {
    let f = Fixture::with(|c| c.quiet_interval = Duration::from_secs(5));
    let v = &f.vol;
    put_bytes(v, "f", b"v1");
    // Session 1: several writes and a truncate, one snapshot of "v1".
    v.write(&p("f"), 0, b"v2").unwrap();
    v.write(&p("f"), 2, b"-more").unwrap();
    v.truncate(&p("f"), 4).unwrap();
    v.fsync(&p("f"), false).unwrap(); // fsync does not end a session
    v.write(&p("f"), 0, b"v2").unwrap();
    assert_eq!(contents(v, "f"), [b"v1".to_vec()]);
    // Release ends the session: the next write snapshots "v2-m".
    v.release(&p("f")).unwrap();
    v.write(&p("f"), 0, b"v3").unwrap();
    assert_eq!(contents(v, "f"), [b"v2-m".to_vec(), b"v1".to_vec()]);
    // Quiet interval: a write after 5 s of silence starts a new session.
    f.clock.advance(Duration::from_secs(4));
    v.write(&p("f"), 0, b"v4").unwrap();
    assert_eq!(v.list_versions(&p("f")).len(), 2);
    f.clock.advance(Duration::from_secs(6));
    v.write(&p("f"), 0, b"v5").unwrap();
    assert_eq!(contents(v, "f")[0], b"v4-m");
    // The maintenance pass ends quiet sessions and journals their end.
    let head = v.journal_head();
    f.clock.advance(Duration::from_secs(6));
    assert_eq!(v.end_quiet_sessions().unwrap(), 1);
    let e = all_changes(v, head);
    assert_eq!((e[0].kind, e[0].size), (ChangeKind::ModifyEnd, 4));
    // An empty file has nothing to lose: no snapshot.
    v.create(&p("e"), 0o600, true).unwrap();
    v.write(&p("e"), 0, b"x").unwrap();
    assert!(v.list_versions(&p("e")).is_empty());
    // The snapshot keeps mode and mtime of the content it preserves.
    let old = v.stat(&p("f")).unwrap();
    v.release(&p("f")).unwrap();
    v.write(&p("f"), 0, b"zz").unwrap();
    let info = &v.list_versions(&p("f"))[0];
    assert_eq!(
        (info.perm, info.mtime, info.size),
        (old.perm, old.mtime, old.size)
    );
}

#[test]
fn restore_brings_back_a_version_and_keeps_the_current_one() {
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "f", b"first");
    put_bytes(v, "f", b"second");
    let first = v.list_versions(&p("f"))[0].clone();
    let head = v.journal_head();
    let a = v.restore(&p("f"), first.id).unwrap();
    assert_eq!(a.size, 5);
    assert_eq!(get_bytes(v, "f"), b"first");
    let all = contents(v, "f");
    assert_eq!(
        all,
        [b"second".to_vec(), b"first".to_vec()],
        "restoring versioned the current content; the restored version stays"
    );
    assert_eq!(all_changes(v, head)[0].kind, ChangeKind::Restore);
    // Restoring a deleted file, and a deleted symlink.
    v.unlink(&p("f")).unwrap();
    let id = v.list_versions(&p("f"))[0].id;
    v.restore(&p("f"), id).unwrap();
    assert_eq!(get_bytes(v, "f"), b"first");
    v.symlink(&p("s"), b"tgt").unwrap();
    v.unlink(&p("s")).unwrap();
    let sid = v.list_versions(&p("s"))[0].id;
    v.restore(&p("s"), sid).unwrap();
    assert_eq!(v.readlink(&p("s")).unwrap(), b"tgt");
    // An unknown id is NotFound.
    assert_eq!(
        v.restore(&p("f"), VersionId(999_999)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // History survives a restart.
    let n = v.list_versions(&p("f")).len();
    let f = f.reopen();
    assert_eq!(f.vol.list_versions(&p("f")).len(), n);
}

/// Retention counts what versions take on disk, in blocks of this size (every file system
/// these tests run on allocates 4 KiB at a time).
const BLOCK: u64 = 4096;

/// What one version of a `blocks`-block file takes on disk here: its blocks, and the block
/// its record may take (an attribute too long to fit in the inode gets one on ext4).
fn version_cost(blocks: usize) -> u64 {
    let f = Fixture::new();
    put_bytes(&f.vol, "f", &vec![1; blocks * BLOCK as usize]);
    put_bytes(&f.vol, "f", b"");
    let cost = f.vol.stats().version_bytes;
    assert!(
        (blocks as u64 * BLOCK..=(blocks as u64 + 1) * BLOCK).contains(&cost),
        "{cost} bytes for a version of {blocks} blocks"
    );
    cost
}

#[test]
fn retention_by_age_cap_and_minimum_age() {
    let day = Duration::from_secs(24 * 3600);
    let one = version_cost(3);
    // Three versions fit, four do not.
    let cap = 3 * one + BLOCK;
    let policy = RetentionPolicy {
        max_age: 30 * day,
        min_age: day,
        max_bytes: cap,
        hard_cap: false,
    };
    let f = Fixture::with(|c| c.retention = policy);
    let v = &f.vol;
    let big = vec![7u8; 3 * BLOCK as usize];
    // Day 0: three 3-block versions of "old".
    put_bytes(v, "old", &big);
    for _ in 0..3 {
        put_bytes(v, "old", &big);
    }
    f.clock.advance(10 * day);
    // Day 10: two more of "new".
    put_bytes(v, "new", &big);
    for _ in 0..2 {
        put_bytes(v, "new", &big);
    }
    assert_eq!(v.stats().version_bytes, 5 * one);
    // Over the cap: the oldest go first, until the rest fits.
    let r = v.prune_versions().unwrap();
    assert_eq!(
        (r.removed, r.kept, r.kept_bytes, r.over_cap),
        (2, 3, 3 * one, false)
    );
    assert_eq!(v.list_versions(&p("old")).len(), 1);
    assert_eq!(v.list_versions(&p("new")).len(), 2);
    // Young versions are not removed for space: a flood within a day overruns the cap.
    for _ in 0..5 {
        put_bytes(v, "new", &big);
    }
    let r = v.prune_versions().unwrap();
    assert_eq!(v.list_versions(&p("new")).len(), 7, "{r:?}");
    assert!(r.over_cap, "{r:?}");
    assert_eq!(
        v.list_versions(&p("old")).len(),
        0,
        "older versions went first"
    );
    // A day later they are fair game for the cap.
    f.clock.advance(day);
    let r = v.prune_versions().unwrap();
    assert_eq!((r.kept_bytes <= cap, r.over_cap), (true, false), "{r:?}");
    // Age: past 30 days everything goes, cap or not.
    f.clock.advance(31 * day);
    let r = v.prune_versions().unwrap();
    assert_eq!(r.kept, 0, "{r:?}");
    assert_eq!(
        f.data()
            .join("volumes/work/versions")
            .read_dir()
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_hard_cap_evicts_even_young_versions() {
    let one = version_cost(2);
    let f = Fixture::with(|c| {
        c.retention = RetentionPolicy {
            // Two versions fit, three do not.
            max_bytes: 2 * one + BLOCK,
            hard_cap: true,
            ..RetentionPolicy::default()
        }
    });
    let v = &f.vol;
    let two_blocks = 2 * BLOCK as usize;
    for i in 0..6 {
        put_bytes(v, "f", &vec![i as u8; two_blocks]);
    }
    let r = v.prune_versions().unwrap();
    assert_eq!((r.kept, r.over_cap), (2, false), "{r:?}");
    // The newest survive.
    assert_eq!(
        contents(v, "f"),
        [vec![4u8; two_blocks], vec![3u8; two_blocks]]
    );
}

#[test]
fn a_sparse_file_costs_its_versions_what_its_data_takes_on_disk() {
    // A 1 GiB file of one written block: by its length it would be over any small cap
    // and pruned (or, young, leave the versions over the cap); by its blocks it fits.
    let f = Fixture::with(|c| {
        c.retention = RetentionPolicy {
            max_bytes: 64 * BLOCK,
            min_age: Duration::ZERO,
            ..RetentionPolicy::default()
        }
    });
    let v = &f.vol;
    v.create(&p("sparse"), 0o600, true).unwrap();
    v.write(&p("sparse"), 1 << 30, &[9u8; BLOCK as usize])
        .unwrap();
    v.release(&p("sparse")).unwrap();
    v.unlink(&p("sparse")).unwrap();
    let kept = v.list_versions(&p("sparse"));
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0].size,
        (1 << 30) + BLOCK,
        "the version keeps its length"
    );
    let used = v.stats().version_bytes;
    assert!(used <= 4 * BLOCK, "the version takes {used} bytes on disk");
    let r = v.prune_versions().unwrap();
    assert_eq!((r.removed, r.kept, r.over_cap), (0, 1, false), "{r:?}");
    // Counted the same after a restart (the index is rebuilt from the files).
    let f = f.reopen();
    assert_eq!(f.vol.stats().version_bytes, used);
}

#[test]
fn no_api_call_destroys_a_version() {
    // Everything a consumer or sync can do to a path leaves its history in place.
    let f = Fixture::new();
    let v = &f.vol;
    put_bytes(v, "f", b"precious");
    put_bytes(v, "f", b"junk");
    let id = v.list_versions(&p("f"))[0].id;
    v.unlink(&p("f")).unwrap();
    put_bytes(v, "f", b"junk2");
    v.delete(&p("f"), Expect::Any).unwrap();
    v.create(&p("f"), 0o600, true).unwrap();
    v.truncate(&p("f"), 0).unwrap();
    v.rename(&p("f"), &p("g"), RenameMode::Replace).unwrap();
    v.restore(&p("f"), id).unwrap();
    v.prune_versions().unwrap(); // within retention: nothing goes
    assert_eq!(version_bytes(v, "f", id), b"precious");
    assert_eq!(get_bytes(v, "f"), b"precious");
}

#[test]
fn the_maintenance_thread_ends_quiet_sessions() {
    let f = Fixture::with(|c| c.quiet_interval = Duration::from_secs(5));
    put_bytes(&f.vol, "f", b"abc");
    f.vol.write(&p("f"), 0, b"x").unwrap();
    assert_eq!(f.vol.stats().open_sessions, 1);
    let _t = f.store.spawn_maintenance(Duration::from_millis(10));
    f.clock.advance(Duration::from_secs(6));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.vol.stats().open_sessions != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session was never ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = all_changes(&f.vol, 1);
    assert_eq!(e.last().unwrap().kind, ChangeKind::ModifyEnd);
}

#[test]
fn a_file_made_of_holes_is_kept_without_writing_them_out() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let f = Fixture::new();
    let v = &f.vol;
    // 64 GiB that is almost all hole, as one cheap truncate makes it: copying the zeros
    // would fill the disk.
    const BIG: u64 = 64 << 30;
    put_bytes(v, "sparse", b"head");
    v.truncate(&p("sparse"), BIG).unwrap();
    v.write(&p("sparse"), BIG - 4, b"tail").unwrap();
    v.write(&p("sparse"), 1 << 30, b"middle").unwrap();
    v.release(&p("sparse")).unwrap();
    v.write(&p("sparse"), 0, b"HEAD").unwrap();
    let versions = v.list_versions(&p("sparse"));
    let kept = versions
        .iter()
        .find(|i| i.size == BIG)
        .expect("the 64 GiB state kept");
    // The version's own file, as it lies in the version area.
    let file = std::fs::File::open(
        f.data()
            .join(format!("volumes/work/versions/{:016x}.data", kept.id.0)),
    )
    .unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), BIG);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "the holes stayed holes: {} bytes allocated",
        meta.blocks() * 512
    );
    let at = |off: u64, n: usize| {
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, off).unwrap();
        b
    };
    assert_eq!(at(0, 4), b"head");
    assert_eq!(at(1 << 30, 6), b"middle");
    assert_eq!(at(BIG - 4, 4), b"tail");
    assert_eq!(at(4096, 8), [0u8; 8], "a hole reads as zeros");
}

#[test]
fn a_record_whose_rename_was_lost_is_taken_and_a_torn_one_goes_with_its_data() {
    // Symlinks cannot carry the record as an attribute: theirs are files.
    let f = Fixture::new();
    f.vol.symlink(&p("kept"), b"kept target").unwrap();
    f.vol.symlink(&p("torn"), b"torn target").unwrap();
    f.vol.unlink(&p("kept")).unwrap();
    f.vol.unlink(&p("torn")).unwrap();
    let kept = f.vol.list_versions(&p("kept"))[0].id;
    let torn = f.vol.list_versions(&p("torn"))[0].id;
    let area = f.data().join("volumes/work/versions");
    // What a crash may leave: a whole record still under its temporary name, and one
    // torn while being written (the change it guarded was then never made).
    for id in [kept, torn] {
        std::fs::rename(
            area.join(format!("{id}.meta")),
            area.join(format!("{id}.meta.tmp")),
        )
        .unwrap();
    }
    let torn_tmp = area.join(format!("{torn}.meta.tmp"));
    let len = std::fs::metadata(&torn_tmp).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&torn_tmp)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let f = f.reopen();
    assert_eq!(
        f.vol.read_version_link(&p("kept"), kept).unwrap(),
        b"kept target"
    );
    assert!(area.join(format!("{kept}.meta")).exists());
    assert!(f.vol.list_versions(&p("torn")).is_empty());
    for leftover in [format!("{torn}.meta.tmp"), format!("{torn}.data")] {
        assert!(!area.join(&leftover).exists(), "{leftover} removed");
    }
}

#[test]
fn a_deleted_file_s_record_rides_in_its_data_s_name_or_attribute_or_beside_it_if_too_long() {
    let day = Duration::from_secs(24 * 3600);
    let f = Fixture::with(|c| {
        c.retention = RetentionPolicy {
            max_age: day,
            min_age: Duration::ZERO,
            ..RetentionPolicy::default()
        };
        // As on a journaled file system (tests/record_order.rs finds out for real).
        c.names_in_order = Some(true);
    });
    // A record of a path up to about 120 bytes fits in a name; 16 directories of 250
    // characters do not fit in an attribute either.
    let medium_dir = "m".repeat(200);
    f.vol.mkdir(&p(&medium_dir), 0o700).unwrap();
    let (medium, lost) = (format!("{medium_dir}/medium"), format!("{medium_dir}/lost"));
    let mut long = String::new();
    for i in 0..16 {
        long.push_str(&format!("{i:x}").repeat(250));
        f.vol.mkdir(&p(&long), 0o700).unwrap();
        long.push('/');
    }
    long.push_str("file");
    let names = ["short", medium.as_str(), lost.as_str(), long.as_str()];
    for name in names {
        put_bytes(&f.vol, name, format!("{name} content").as_bytes());
        f.vol.unlink(&p(name)).unwrap();
    }
    let id = |f: &Fixture, name: &str| f.vol.list_versions(&p(name))[0].id;
    let [short, medium_id, lost_id, long_id] = names.map(|n| id(&f, n));
    let area = f.versions();
    let file_record = |id: VersionId| area.join(format!("{id}.meta")).exists();
    let plain_data = |id: VersionId| area.join(format!("{id}.data")).exists();
    assert!(
        !file_record(short) && !plain_data(short),
        "the record is the name"
    );
    let named = f.version_data(short);
    let name = named.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("{short}.r")) && name.len() <= 255,
        "{name}"
    );
    assert!(
        !file_record(medium_id) && plain_data(medium_id),
        "an attribute"
    );
    assert!(file_record(long_id) && plain_data(long_id), "a file");
    // A crash after the data was linked and before its attribute was set: no record.
    let data = std::ffi::CString::new(format!("{}/{lost_id}.data", area.display())).unwrap();
    // SAFETY: both strings are NUL-terminated.
    let r = unsafe { libc::removexattr(data.as_ptr(), c"user.cloudstore.version".as_ptr()) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let f = f.reopen();
    for name in ["short", medium.as_str(), long.as_str()] {
        assert_eq!(
            contents(&f.vol, name),
            [format!("{name} content").into_bytes()]
        );
    }
    assert!(f.vol.list_versions(&p(&lost)).is_empty());
    assert!(!plain_data(lost_id), "removed");
    // Retention removes every kind.
    f.clock.advance(2 * day);
    let r = f.vol.prune_versions().unwrap();
    assert_eq!(r.kept, 0, "{r:?}");
    assert_eq!(area.read_dir().unwrap().count(), 0);
}

#[test]
fn a_data_name_that_is_not_a_record_is_left_alone_and_not_listed() {
    let f = Fixture::with(|c| c.names_in_order = Some(true));
    put_bytes(&f.vol, "a", b"a content");
    put_bytes(&f.vol, "b", b"b content");
    f.vol.unlink(&p("a")).unwrap();
    f.vol.unlink(&p("b")).unwrap();
    let [a, b] = ["a", "b"].map(|n| f.vol.list_versions(&p(n))[0].id);
    // One character of a's record changed: its checksum no longer matches.
    let named = f.version_data(a);
    let mut damaged = named.file_name().unwrap().to_str().unwrap().to_owned();
    let last = damaged.pop().unwrap();
    damaged.push(if last == 'A' { 'B' } else { 'A' });
    let damaged = f.versions().join(damaged);
    std::fs::rename(&named, &damaged).unwrap();
    let f = f.reopen();
    assert!(f.vol.list_versions(&p("a")).is_empty());
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        b"a content",
        "kept for a person to look at"
    );
    assert_eq!(contents(&f.vol, "b"), [b"b content".to_vec()]);
    // New versions do not take the damaged one's id.
    put_bytes(&f.vol, "c", b"c");
    f.vol.unlink(&p("c")).unwrap();
    let c = f.vol.list_versions(&p("c"))[0].id;
    assert!(c > a && c > b, "{c} after {a} and {b}");
}

#[test]
fn a_version_kept_before_a_change_a_crash_prevented_is_dropped_and_the_file_kept() {
    for names_in_order in [true, false] {
        let f = Fixture::with(|c| c.names_in_order = Some(names_in_order));
        put_bytes(&f.vol, "f", b"the file");
        f.vol.unlink(&p("f")).unwrap();
        let id = f.vol.list_versions(&p("f"))[0].id;
        let area = f.versions();
        let data = f.version_data(id);
        // The state a crash between keeping the version and the unlink leaves: the file
        // still in the tree, its data also linked (and recorded) as a version.
        std::fs::hard_link(&data, f.tree().join("f")).unwrap();
        let f = f.reopen();
        assert!(f.vol.list_versions(&p("f")).is_empty(), "{names_in_order}");
        assert!(!data.exists(), "{}", data.display());
        assert!(!area.join(format!("{id}.meta")).exists());
        // The file is whole, and a change to it now is kept as a version of its own.
        assert_eq!(std::fs::read(f.tree().join("f")).unwrap(), b"the file");
        put_bytes(&f.vol, "f", b"new");
        assert_eq!(contents(&f.vol, "f"), [b"the file".to_vec()]);
    }
}
