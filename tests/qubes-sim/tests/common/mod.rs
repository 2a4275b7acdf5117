//! What the stand-in's integration tests share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

pub const SIM: &str = env!("CARGO_BIN_EXE_qubes-sim");

/// Builds the real `cloudstore` binary next to `qubes-sim` (a no-op when `cargo test
/// --workspace` has just built it), once per test run, so the stand-in never runs a stale
/// agent.
pub fn cloudstore() -> PathBuf {
    static BUILD: Once = Once::new();
    let dir = Path::new(SIM).parent().unwrap().to_owned();
    BUILD.call_once(|| {
        let mut c = Command::new(env!("CARGO"));
        c.args([
            "build",
            "--quiet",
            "-p",
            "cloudstore",
            "--bin",
            "cloudstore",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let st = c.status().expect("running cargo build -p cloudstore");
        assert!(st.success(), "cargo build -p cloudstore failed");
    });
    dir.join("cloudstore")
}
