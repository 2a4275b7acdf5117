//! Where a version kept before a delete records itself depends on the file system under the
//! data directory, found out at open: as an unflushed attribute of its data where changes
//! to names reach the disk in order (ext4 with its journal), as a flushed file where they
//! may not (ext4 without one). Both are real ext4 file systems on loop devices, mounted in
//! the test thread's own mount namespace. Needs root, as CI runs.

mod common;

use std::path::Path;
use std::process::Command;

use cloudstore_store::*;
use common::*;

/// Makes a 64 MiB ext4 image with `features` and mounts it at `dir` (in this thread's
/// mount namespace; the loop device goes with the mount).
fn mount_ext4(image: &Path, dir: &Path, features: &str) {
    std::fs::File::create(image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", features])
        .arg(image)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4 -O {features}");
    std::fs::create_dir(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-o", "loop"])
        .arg(image)
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount -o loop {}", image.display());
}

#[test]
fn a_delete_s_version_records_itself_unflushed_only_where_a_journal_orders_names() {
    let scratch = tempfile::tempdir().unwrap();
    private_mount_namespace();
    for (features, journaled) in [("has_journal", true), ("^has_journal", false)] {
        let name = features.trim_start_matches('^');
        let dir = scratch.path().join(format!("{journaled}-{name}"));
        mount_ext4(
            &scratch.path().join(format!("{journaled}.img")),
            &dir,
            features,
        );
        let store = Store::open(dir.join("data"), StoreConfig::default()).unwrap();
        assert_eq!(store.config().names_in_order, Some(journaled), "{features}");
        let vol = store.create_volume("work").unwrap();
        put_bytes(&vol, "f", b"kept");
        vol.unlink(&p("f")).unwrap();
        let id = vol.list_versions(&p("f"))[0].id;
        let area = dir.join("data/volumes/work/versions");
        let record_file = area.join(format!("{id}.meta"));
        assert_eq!(record_file.exists(), !journaled, "{features}");
        // Where names are in order, the data's name is the record.
        let plain_data = area.join(format!("{id}.data"));
        assert_eq!(plain_data.exists(), !journaled, "{features}");
        drop(vol);
        drop(store);
        // Either way it is found again.
        let store = Store::open(dir.join("data"), StoreConfig::default()).unwrap();
        let vol = store.volume("work").unwrap();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut vol.open_version(&p("f"), id).unwrap(), &mut content)
            .unwrap();
        assert_eq!(content, b"kept", "{features}");
        drop(vol);
        drop(store);
        let ok = Command::new("umount").arg(&dir).status().unwrap().success();
        assert!(ok, "umount {}", dir.display());
    }
}
