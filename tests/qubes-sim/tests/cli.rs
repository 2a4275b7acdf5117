//! The `qubes-sim` binary: the daemon subcommand and the qubesdb-* client subcommands.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_qubes-sim");

#[test]
fn daemon_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qdb.sock");
    let mut daemon = Command::new(BIN)
        .args(["qubesdb", "--socket"])
        .arg(&sock)
        .args([
            "--set",
            "/cloudstore/role=storage",
            "--set",
            "/cloudstore/volumes=a=b c",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg(args[0])
            .arg("--socket")
            .arg(&sock)
            .args(&args[1..])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&["qubesdb-read", "/cloudstore/volumes"]).1,
        "a=b c\n",
        "split at the first '='"
    );
    assert_eq!(
        run(&["qubesdb-write", "/cloudstore/role", "consumer"]).0,
        Some(0)
    );
    assert_eq!(run(&["qubesdb-read", "/cloudstore/role"]).1, "consumer\n");
    assert_eq!(
        run(&["qubesdb-list", "/cloudstore/"]).1,
        "/cloudstore/role\n/cloudstore/volumes\n"
    );
    let (code, _, err) = run(&["qubesdb-read", "/nope"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nope"), "{err}");
    let (code, _, err) = run(&["qubesdb-write", "/bad key", "x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("\"/bad key\""), "{err}");
    assert_eq!(run(&["qubesdb-rm", "/cloudstore/"]).0, Some(0));
    assert_eq!(run(&["qubesdb-rm", "/cloudstore/"]).0, Some(2));
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let out = Command::new(BIN)
        .args(["qubesdb", "--socket"])
        .arg(&sock)
        .args(["--set", "novalue"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
}
