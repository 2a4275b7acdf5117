//! The real `cloudstore` binary against the stand-in qubesdb daemon (qubes-sim), which
//! speaks the real daemon's wire protocol: role selection, configuration errors and their
//! exit codes, the /vm-config fallback, run-time changes, sd_notify and `status`.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use qubes_sim::qubesdb::QubesDbDaemon;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_cloudstore");
/// Generous: a loaded 2-core CI machine. Nothing waits this long when things work.
const WAIT: Duration = Duration::from_secs(30);

// Field order matters: the daemon stops before its directory goes.
struct Sim {
    db: QubesDbDaemon,
    dir: tempfile::TempDir,
}

impl Sim {
    fn new(entries: &[(&str, &str)]) -> Sim {
        support::ensure_sandbox_user();
        let dir = support::shared_tempdir();
        let db = QubesDbDaemon::start(
            &dir.path().join("qubesdb.sock"),
            entries.iter().map(|(k, v)| (*k, v.as_bytes())),
        )
        .unwrap();
        Sim { db, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CLOUDSTORE_QUBESDB_SOCKET", self.db.socket())
            .env("CLOUDSTORE_DATA_DIR", self.dir.path().join("data"))
            .env("CLOUDSTORE_RUNTIME_DIR", self.dir.path().join("run"))
            .env("CLOUDSTORE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        c
    }

    fn notify_socket(&self) -> (PathBuf, UnixDatagram) {
        let p = self.dir.path().join("notify.sock");
        let s = UnixDatagram::bind(&p).unwrap();
        // Like systemd's notify socket: the confined agent sends as the sandbox user.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        (p, s)
    }
}

/// A running agent whose stderr is collected as it comes.
struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Agent {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_for_log(&self, needle: &str) {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("agent never logged {needle:?}; log so far:\n{}", self.log());
    }

    #[track_caller]
    fn wait_exit(&mut self) -> (ExitStatus, String) {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return (st, self.log());
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("agent did not exit; log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_to_end(cmd: Command) -> (ExitStatus, String) {
    Agent::spawn(cmd).wait_exit()
}

fn recv_notify(s: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("no sd_notify message arrived");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn storage_role_starts_logs_its_role_notifies_and_stops_on_sigterm() {
    let sim = Sim::new(&[
        ("/cloudstore/role", "storage"),
        ("/cloudstore/volumes", "work photos"),
    ]);
    let (notify_path, notify) = sim.notify_socket();
    let mut cmd = sim.command(&["agent"]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut agent = Agent::spawn(cmd);
    agent.wait_for_log("storage role serving cloudstore.Volume and cloudstore.Sync");
    let log = agent.log();
    assert!(
        log.contains("starting the storage role (role from qubesdb /cloudstore/role)"),
        "{log}"
    );
    assert!(
        log.contains("role=storage"),
        "every line carries the role field:\n{log}"
    );
    assert!(log.contains("volumes=work photos"), "{log}");

    // STATUS lines while starting, then READY=1 from the role itself.
    let mut messages = Vec::new();
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        messages.push(recv_notify(&notify));
    }
    let all = messages.join("|");
    assert!(
        all.contains("STATUS=reading configuration from qubesdb"),
        "{all}"
    );
    assert!(all.contains("STATUS=starting the storage role"), "{all}");
    assert!(all.contains("STATUS=serving volumes: work photos"), "{all}");

    agent.sigterm();
    let (st, log) = agent.wait_exit();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(
        log.contains("received SIGTERM; stopping the storage role"),
        "{log}"
    );
    assert!(log.contains("the storage role stopped"), "{log}");
    assert!(recv_notify(&notify).contains("STOPPING=1"));
}

#[test]
fn bogus_role_exits_78_naming_value_and_key() {
    let sim = Sim::new(&[
        ("/cloudstore/role", "bogus"),
        ("/vm-config/cloudstore.role", "storage"),
    ]);
    let (notify_path, notify) = sim.notify_socket();
    let mut cmd = sim.command(&["agent"]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let (st, log) = run_to_end(cmd);
    assert_eq!(st.code(), Some(78), "{log}");
    assert!(log.contains("\"bogus\""), "{log}");
    assert!(log.contains("/cloudstore/role"), "{log}");
    assert!(!log.contains("starting the"), "no role may start:\n{log}");
    let mut last = String::new();
    while !last.contains("configuration error") {
        last = recv_notify(&notify);
    }
    assert!(last.contains("bogus"), "{last}");
}

#[test]
fn missing_role_and_bad_fallback_are_config_errors() {
    let sim = Sim::new(&[("/name", "my-work")]);
    let (st, log) = run_to_end(sim.command(&["agent"]));
    assert_eq!(st.code(), Some(78), "{log}");
    assert!(
        log.contains("/cloudstore/role") && log.contains("/vm-config/cloudstore.role"),
        "{log}"
    );

    let sim = Sim::new(&[("/vm-config/cloudstore.role", "Storage ")]);
    let (st, log) = run_to_end(sim.command(&["agent"]));
    assert_eq!(st.code(), Some(78), "{log}");
    assert!(
        log.contains("/vm-config/cloudstore.role") && log.contains("\"Storage \""),
        "{log}"
    );

    let sim = Sim::new(&[
        ("/cloudstore/role", "storage"),
        ("/cloudstore/volumes", "work ../etc"),
    ]);
    let (st, log) = run_to_end(sim.command(&["agent"]));
    assert_eq!(st.code(), Some(78), "{log}");
    assert!(
        log.contains("/cloudstore/volumes") && log.contains("\"../etc\""),
        "{log}"
    );
}

#[test]
fn unreachable_qubesdb_is_a_retryable_failure_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    let (st, log) = run_to_end({
        let mut c = Command::new(BIN);
        c.arg("agent")
            .env("CLOUDSTORE_QUBESDB_SOCKET", &sock)
            .env_remove("INVOCATION_ID")
            .env_remove("JOURNAL_STREAM");
        c
    });
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains(&sock.display().to_string()), "{log}");
}

#[test]
fn vm_config_fallback_selects_the_role() {
    let sim = Sim::new(&[
        ("/vm-config/cloudstore.role", "storage"),
        ("/vm-config/cloudstore.volumes", "work"),
    ]);
    let mut agent = Agent::spawn(sim.command(&["agent"]));
    agent.wait_for_log("storage role serving");
    assert!(
        agent
            .log()
            .contains("role from qubesdb /vm-config/cloudstore.role"),
        "{}",
        agent.log()
    );
    agent.sigterm();
    assert_eq!(agent.wait_exit().0.code(), Some(0));
}

#[test]
fn run_time_changes_are_picked_up_or_reported() {
    let sim = Sim::new(&[
        ("/cloudstore/role", "storage"),
        ("/cloudstore/volumes", "work"),
    ]);
    let mut agent = Agent::spawn(sim.command(&["agent"]));
    agent.wait_for_log("storage role serving");

    // A new volume reaches the role.
    sim.db.write("/cloudstore/volumes", b"work photos").unwrap();
    agent.wait_for_log("configuration changed: volumes added: photos; removed: none");
    agent.wait_for_log("configured volumes changed volumes=work photos");

    // An invalid value is reported by key and the previous configuration kept.
    sim.db.write("/cloudstore/volumes", b"Bad/Name").unwrap();
    agent.wait_for_log("keeping the previous configuration");
    assert!(agent.log().contains("/cloudstore/volumes"));
    assert!(agent.child.try_wait().unwrap().is_none(), "still running");

    // A key on the fallback path is watched too.
    sim.db.write("/cloudstore/volumes", b"work").unwrap();
    sim.db
        .write("/vm-config/cloudstore.remote", b"onedrive:Other")
        .unwrap();
    agent.wait_for_log("configuration changed: remote onedrive:CloudStore -> onedrive:Other");

    // A changed role: the agent exits 75 so systemd restarts it under the new role.
    sim.db.write("/cloudstore/role", b"consumer").unwrap();
    let (st, log) = agent.wait_exit();
    assert_eq!(st.code(), Some(75), "{log}");
    assert!(
        log.contains("role changed from storage to consumer"),
        "{log}"
    );
    assert!(
        log.contains("the storage role stopped"),
        "the role was stopped first:\n{log}"
    );
}

#[test]
fn role_turning_invalid_or_removed_at_run_time_stops_with_78() {
    let sim = Sim::new(&[("/cloudstore/role", "storage")]);
    let mut agent = Agent::spawn(sim.command(&["agent"]));
    agent.wait_for_log("storage role serving");
    sim.db.write("/cloudstore/role", b"bogus").unwrap();
    let (st, log) = agent.wait_exit();
    assert_eq!(st.code(), Some(78), "{log}");
    assert!(
        log.contains("\"bogus\"") && log.contains("/cloudstore/role"),
        "{log}"
    );

    let sim = Sim::new(&[("/vm-config/cloudstore.role", "storage")]);
    let mut agent = Agent::spawn(sim.command(&["agent"]));
    agent.wait_for_log("storage role serving");
    assert!(sim.db.rm("/vm-config/cloudstore.role").unwrap());
    let (st, log) = agent.wait_exit();
    assert_eq!(st.code(), Some(78), "{log}");
    assert!(log.contains("no role configured"), "{log}");
}

#[test]
fn losing_qubesdb_exits_1() {
    let sim = Sim::new(&[("/cloudstore/role", "storage")]);
    let mut agent = Agent::spawn(sim.command(&["agent"]));
    agent.wait_for_log("storage role serving");
    drop(sim);
    let (st, log) = agent.wait_exit();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("lost the qubesdb connection"), "{log}");
}

#[test]
fn transfer_without_a_qrexec_client_says_so() {
    let sim = Sim::new(&[("/cloudstore/role", "transfer")]);
    let mut cmd = sim.command(&["agent"]);
    cmd.env("PATH", "/usr/bin:/bin")
        .env_remove("CLOUDSTORE_QREXEC_CLIENT");
    let (st, log) = run_to_end(cmd);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("qrexec-client-vm is not in PATH"), "{log}");
    assert!(log.contains("role=transfer"), "{log}");
}

#[test]
fn watchdog_is_pinged_when_the_unit_asks() {
    let sim = Sim::new(&[("/cloudstore/role", "storage")]);
    let (notify_path, notify) = sim.notify_socket();
    let mut cmd = sim.command(&["agent"]);
    // 200 ms: pings every 100 ms. WATCHDOG_PID is left unset, which sd_watchdog_enabled(3)
    // accepts (we cannot know the child's pid before it starts).
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000");
    let mut agent = Agent::spawn(cmd);
    let mut pings = 0;
    let end = Instant::now() + WAIT;
    while pings < 3 && Instant::now() < end {
        if recv_notify(&notify).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert_eq!(pings, 3, "{}", agent.log());
    agent.sigterm();
    assert_eq!(agent.wait_exit().0.code(), Some(0));
}

fn status(sock: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("status")
        .args(extra)
        .env("CLOUDSTORE_QUBESDB_SOCKET", sock)
        .output()
        .unwrap()
}

#[test]
fn status_prints_role_and_volumes() {
    let sim = Sim::new(&[
        ("/cloudstore/role", "storage"),
        ("/vm-config/cloudstore.volumes", "work photos"),
    ]);
    let out = status(sim.db.socket(), &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("role:       storage") && text.contains("(qubesdb /cloudstore/role)"),
        "{text}"
    );
    assert!(
        text.contains("volumes:    work photos") && text.contains("/vm-config/cloudstore.volumes"),
        "{text}"
    );

    sim.db.write("/cloudstore/role", b"bogus").unwrap();
    let out = status(sim.db.socket(), &[]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("\"bogus\"") && err.contains("/cloudstore/role"),
        "{err}"
    );
}

#[test]
fn status_watch_reports_changes() {
    let sim = Sim::new(&[("/cloudstore/role", "transfer")]);
    let runtime = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["status", "--watch"])
        .env("CLOUDSTORE_QUBESDB_SOCKET", sim.db.socket())
        .env("CLOUDSTORE_RUNTIME_DIR", runtime.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    assert!(next().starts_with("role:       transfer"));
    while !next().starts_with("qubesdb:") {}
    // The transfer qube's own part: no agent runs here.
    assert!(next().starts_with("transfer:   not running"));
    sim.db.write("/cloudstore/remote", b"/srv/cloud").unwrap();
    assert_eq!(next(), "changed: remote onedrive:CloudStore -> /srv/cloud");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn role_is_gates_units() {
    let code = |entries: &[(&str, &str)], role: &str| {
        let sim = Sim::new(entries);
        let out = sim.command(&["role-is", role]).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        code(&[("/cloudstore/role", "storage")], "storage").0,
        Some(0)
    );
    assert_eq!(
        code(&[("/vm-config/cloudstore.role", "storage")], "storage").0,
        Some(0)
    );
    let (c, err) = code(&[("/cloudstore/role", "consumer")], "storage");
    assert_eq!(c, Some(1));
    assert!(err.contains("consumer"), "{err}");
    assert_eq!(code(&[], "storage").0, Some(1), "no role: skip quietly");
    let (c, err) = code(&[("/cloudstore/role", "bogus")], "storage");
    assert_eq!(c, Some(255));
    assert!(
        err.contains("\"bogus\"") && err.contains("/cloudstore/role"),
        "{err}"
    );
    let sim = Sim::new(&[]);
    let out = sim.command(&["role-is", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}
