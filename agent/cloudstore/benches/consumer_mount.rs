//! The consumer mount that scripts/bench.sh measures: a real storage agent (the release
//! `cloudstore` binary, confined by its sandbox, reached through its qrexec socket service)
//! and the consumer filesystem mounted with real FUSE, its stream carried over a pair of
//! pipes exactly as qrexec-client-vm hands it to the consumer worker.
//!
//! Prints `MOUNT <dir>`, `CONSUMER_PID <pid>` and `STORAGE_PID <pid>` on stdout, then
//! serves until stdin reaches its end, and unmounts. Temporary directories follow TMPDIR,
//! so the benchmark puts the storage qube's data on the disk it measures.

#[path = "../tests/fs_harness/mod.rs"]
mod fs_harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};

fn main() {
    // Warnings only, to stderr: the harness's own subscriber (which keeps every line in
    // memory for tests to read) would then not be installed, and would not inflate the
    // measured RSS.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let volume = fs_harness::Volume::create();
    let mount = volume.mount_over_pipes();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "MOUNT {}", mount.path().display()).unwrap();
        writeln!(out, "CONSUMER_PID {}", std::process::id()).unwrap();
        writeln!(out, "STORAGE_PID {}", volume.storage.pid()).unwrap();
        writeln!(out, "CIPHERTEXT {}", volume.tree().display()).unwrap();
        out.flush().unwrap();
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    mount.unmount();
}
