//! The `qrexec-client-vm` stand-in in direct mode, against real socket and executable
//! services: descriptor bytes, stream pumping with half-close, exit statuses, policy.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;

const CLIENT: &str = env!("CARGO_BIN_EXE_qrexec-client-vm");

/// A socket service that records the descriptor and the caller's bytes (read to end of
/// file, so it proves the half-close), then answers and closes.
fn echo_service(sock: &Path) -> thread::JoinHandle<(Vec<u8>, Vec<u8>)> {
    let listener = UnixListener::bind(sock).unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let nul = all.iter().position(|&b| b == 0).expect("descriptor NUL");
        let desc = all[..=nul].to_vec();
        let data = all[nul + 1..].to_vec();
        s.write_all(b"got: ").unwrap();
        s.write_all(&data).unwrap();
        (desc, data)
    })
}

fn run(dir: &Path, caller: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(CLIENT)
        .args(args)
        .env("QUBES_SIM_QREXEC_DIR", dir)
        .env("QUBES_SIM_QUBE", caller)
        .env_remove("QUBES_SIM_QREXEC_SOCKET")
        .env_remove("QUBES_SIM_DEFAULT_TARGET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused call ends before reading its input: a broken pipe here is expected.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

#[test]
fn socket_service_gets_the_agents_descriptor_and_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("storage")).unwrap();
    let svc = echo_service(&dir.path().join("storage/cloudstore.Volume"));
    let out = run(
        dir.path(),
        "my-work",
        &["@default", "cloudstore.Volume+work"],
        b"hello",
    );
    let (desc, data) = svc.join().unwrap();
    assert_eq!(desc, b"cloudstore.Volume+work my-work\0");
    assert_eq!(data, b"hello");
    assert_eq!(out.stdout, b"got: hello");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn service_with_argument_is_found_first_and_empty_argument_is_plus() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("other")).unwrap();
    // SERVICE+ARG wins over SERVICE (libqrexec/exec.c looks it up first).
    let specific = echo_service(&dir.path().join("other/cloudstore.Sync+"));
    let _generic = UnixListener::bind(dir.path().join("other/cloudstore.Sync")).unwrap();
    let out = Command::new(CLIENT)
        .args(["other", "cloudstore.Sync"])
        .env("QUBES_SIM_QREXEC_DIR", dir.path())
        .env("QUBES_SIM_QUBE", "transfer")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (desc, data) = specific.join().unwrap();
    assert_eq!(desc, b"cloudstore.Sync+ transfer\0");
    assert!(data.is_empty());
    assert_eq!(out.stdout, b"got: ");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn default_target_follows_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("vault")).unwrap();
    let svc = echo_service(&dir.path().join("vault/a.B"));
    let mut child = Command::new(CLIENT)
        .args(["@default", "a.B+x"])
        .env("QUBES_SIM_QREXEC_DIR", dir.path())
        .env("QUBES_SIM_QUBE", "me")
        .env("QUBES_SIM_DEFAULT_TARGET", "vault")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (desc, _) = svc.join().unwrap();
    assert_eq!(desc, b"a.B+x me\0");
    assert!(child.wait().unwrap().success());
}

#[test]
fn local_program_is_connected_to_the_service_and_gives_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("storage")).unwrap();
    let svc = echo_service(&dir.path().join("storage/a.B"));
    let out = run(
        dir.path(),
        "me",
        &[
            "storage",
            "a.B",
            "/bin/sh",
            "-c",
            "echo ping; exec >&-; cat >&2; exit 7",
        ],
        b"",
    );
    let (_, data) = svc.join().unwrap();
    assert_eq!(data, b"ping\n");
    assert_eq!(out.stderr, b"got: ping\n");
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn executable_service_runs_with_the_qrexec_environment() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("storage")).unwrap();
    let script = dir.path().join("storage/test.Exec");
    fs::write(
        &script,
        "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN $QREXEC_SERVICE_FULL_NAME $QREXEC_SERVICE_ARGUMENT $1\"\ncat\nexit 3\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(
        dir.path(),
        "my-work",
        &["storage", "test.Exec+arg1"],
        b"data",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "my-work test.Exec+arg1 arg1 arg1\ndata"
    );
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn refusals_exit_126_and_failures_125() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("storage")).unwrap();
    // No such qube: dom0 refuses.
    let out = run(dir.path(), "me", &["nowhere", "a.B"], b"");
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with("Request refused\n"));
    // An invalid service name never reaches a qube.
    let out = run(dir.path(), "me", &["storage", "a b"], b"");
    assert_eq!(out.status.code(), Some(126));
    // The qube exists but has no such service.
    let out = run(dir.path(), "me", &["storage", "no.Such+x"], b"");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.Such+x not found"));
    // Not inside a qube at all.
    let out = Command::new(CLIENT)
        .args(["storage", "a.B"])
        .env_remove("QUBES_SIM_QREXEC_DIR")
        .env_remove("QUBES_SIM_QREXEC_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    // Usage error.
    let out = Command::new(CLIENT).arg("storage").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn policy_in_the_directory_decides() {
    let dir = tempfile::tempdir().unwrap();
    for q in ["storage", "my-work", "my-photos"] {
        fs::create_dir(dir.path().join(q)).unwrap();
    }
    fs::create_dir(dir.path().join("policy.d")).unwrap();
    fs::write(
        dir.path().join("policy.d/70-cloudstore.policy"),
        "cloudstore.Volume +work my-work @default allow target=storage\n\
         cloudstore.Volume * @anyvm @anyvm deny\n",
    )
    .unwrap();
    let svc = echo_service(&dir.path().join("storage/cloudstore.Volume"));
    let out = run(
        dir.path(),
        "my-photos",
        &["@default", "cloudstore.Volume+work"],
        b"x",
    );
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("denied by policy") && err.contains("70-cloudstore.policy:2"),
        "{err}"
    );
    assert!(err.ends_with("Request refused\n"), "{err}");
    assert!(out.stdout.is_empty());
    // Naming the storage qube directly does not get around it.
    let out = run(
        dir.path(),
        "my-photos",
        &["storage", "cloudstore.Volume+work"],
        b"x",
    );
    assert_eq!(out.status.code(), Some(126));
    // my-work is allowed, and @default goes where the policy says.
    let out = run(
        dir.path(),
        "my-work",
        &["@default", "cloudstore.Volume+work"],
        b"x",
    );
    assert_eq!(out.status.code(), Some(0));
    let (desc, _) = svc.join().unwrap();
    assert_eq!(desc, b"cloudstore.Volume+work my-work\0");
    // A broken policy refuses everything.
    fs::write(dir.path().join("policy.d/30-user.policy"), "garbage\n").unwrap();
    let out = run(
        dir.path(),
        "my-work",
        &["@default", "cloudstore.Volume+work"],
        b"x",
    );
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("30-user.policy:1"));
}

#[test]
fn the_call_ends_when_the_service_closes_even_if_stdin_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("storage")).unwrap();
    let listener = UnixListener::bind(dir.path().join("storage/a.B")).unwrap();
    let svc = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut d = [0u8; 8]; // "a.B+ me\0"
        s.read_exact(&mut d).unwrap();
        s.write_all(b"bye").unwrap();
    });
    // stdin is a pipe we never close.
    let mut child = Command::new(CLIENT)
        .args(["storage", "a.B"])
        .env("QUBES_SIM_QREXEC_DIR", dir.path())
        .env("QUBES_SIM_QUBE", "me")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    svc.join().unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"bye");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    drop(child.stdin.take());
}
