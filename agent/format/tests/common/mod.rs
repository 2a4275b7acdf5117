//! Shared by the vector and fuzz tests: the gocryptfs-made volumes are checked in as tar
//! archives, because git keeps no empty directory and a volume made with -plaintextnames or
//! -deterministic-names has empty directories (no gocryptfs.diriv inside) that must survive
//! a fresh clone unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Unpacks vector volume `name` into a fresh temporary directory; the volume root is
/// `<returned dir>/cipher`.
pub fn unpack_volume(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("creating a temporary directory");
    let archive = vectors().join(name).join("cipher.tar");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("running tar");
    assert!(status.success(), "unpacking {} failed", archive.display());
    tmp
}
