//! The consumer role as it runs in a qube: the real `cloudstore agent` (role consumer, from
//! the stand-in qubesdb) with its parent, control socket and sandboxed workers serving real
//! FUSE mounts, against a real storage agent reached the way qrexec connects them. As under
//! units/: the mount helper (`cloudstore consumer-mounts`) runs in this test's mount
//! namespace with the helper unit's capabilities, and the agent in a mount namespace of its
//! own (slave propagation, as systemd sets one up) without CAP_SYS_ADMIN, so every mount it
//! shows the user has come through the helper. Run as root (mounts, user switches).
//!
//! This test binary is also the `qrexec-client-vm` the agent runs (`CLOUDSTORE_QREXEC_CLIENT`
//! points at it): started as `<exe> @default SERVICE+ARG`, it runs the Qubes stand-in's client
//! (`qubes_sim::qrexec::client_main`, direct mode), which connects to the storage's socket
//! service, writes the descriptor as qrexec-agent does (QubesOS/qubes-core-qrexec
//! doc/execution.rst) and pumps stdin/stdout. So the client runs inside the worker's
//! sandbox, as the real one would. That is why the harness is our own `main`
//! (harness = false in Cargo.toml).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cloudstore::roles::consumer::control::{self, Reply, Request};
use qubes_sim::qubesdb::QubesDbDaemon;
use support::{
    notify_socket, proc_status_field, run_cases, wait_ready, without_systemd_env, LogReader,
    StorageAgent, BIN, WAIT,
};

const PASS: &str = "correct horse battery staple";
/// The consumer qube's configured user: an account every Debian has, not root.
const USER: &str = "daemon";
/// The capability bounding set of units/cloudstore-consumer.service, in setpriv's syntax.
const UNIT_CAPS: &str = "-all,+setuid,+setgid,+ipc_lock";
/// The same for units/cloudstore-consumer-mounts.service.
const HELPER_CAPS: &str = "-all,+sys_admin,+dac_override,+chown";
/// A local account that is neither root nor the configured user.
const OTHER_UID: &str = "65534";

// ------------------------------------------------------------ qrexec client stand-in

// ------------------------------------------------------------ the consumer qube

struct Consumer {
    child: Option<Child>,
    log: LogReader,
    helper: Child,
    helper_log: LogReader,
    _db: QubesDbDaemon,
    dir: tempfile::TempDir,
}

impl Consumer {
    fn start(storage: &StorageAgent) -> Consumer {
        let dir = support::shared_tempdir();
        let mnt = dir.path().join("mnt");
        let db = QubesDbDaemon::start(
            &dir.path().join("qubesdb.sock"),
            [
                ("/cloudstore/role", b"consumer".as_slice()),
                ("/cloudstore/volumes", b"work photos".as_slice()),
                ("/cloudstore/user", USER.as_bytes()),
                ("/cloudstore/mountpoint", mnt.to_str().unwrap().as_bytes()),
            ],
        )
        .unwrap();
        // The storage qube's services as the stand-in's qrexec finds them: the socket
        // service cloudstore.Volume of qube `storage` (the @default target).
        let services = dir.path().join("qrexec").join("storage");
        fs::create_dir_all(&services).unwrap();
        std::os::unix::fs::symlink(storage.volume_socket(), services.join("cloudstore.Volume"))
            .unwrap();
        // In a qube, qrexec-agent (root with every capability) connects to the service
        // socket; here the stand-in client does it directly from the consumer agent, which
        // runs with the unit's reduced capabilities (no CAP_DAC_OVERRIDE). The socket is
        // opened up for that, as qrexec-agent's own privilege would.
        fs::set_permissions(storage.runtime_dir(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(storage.volume_socket(), fs::Permissions::from_mode(0o666)).unwrap();
        let mut helper = Command::new("setpriv")
            .args(["--bounding-set", HELPER_CAPS, "--"])
            .arg(BIN)
            .arg("consumer-mounts")
            .envs(command_env(dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let helper_log = LogReader::start(&mut helper);
        helper_log.wait_for("consumer mount helper listening");
        let mut c = Consumer {
            child: None,
            log: LogReader::start(
                &mut Command::new("true").stderr(Stdio::piped()).spawn().unwrap(),
            ),
            helper,
            helper_log,
            _db: db,
            dir,
        };
        c.spawn();
        c
    }

    /// Starts the agent and waits for READY=1; returns the READY message.
    fn spawn(&mut self) -> String {
        let notify_path = self.dir.path().join("notify.sock");
        let notify = notify_socket(&notify_path);
        // With the capability bounding set of units/cloudstore-consumer.service, in a mount
        // namespace of its own, so the agent is tested with only what the unit lets it have.
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "--"])
            .args(["setpriv", "--bounding-set", UNIT_CAPS, "--"])
            .arg(BIN)
            .arg("agent")
            .envs(
                self.command(&[])
                    .get_envs()
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
            );
        let mut child = cmd
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.log = LogReader::start(&mut child);
        self.child = Some(child);
        let msg = wait_ready(&notify, "consumer agent", &self.log);
        assert!(msg.contains("STATUS=consumer: control socket"), "{msg}");
        msg
    }

    /// SIGTERM and wait; returns the exit status and the whole log.
    fn stop(&mut self) -> (Option<std::process::ExitStatus>, String) {
        let Some(mut c) = self.child.take() else {
            return (None, self.log.text());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                return (Some(st), self.log.finish());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        (None, self.log.finish())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .envs(command_env(self.dir.path()))
            .env_remove("NOTIFY_SOCKET");
        without_systemd_env(&mut c);
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("consumer.sock")
    }

    fn mountpoint(&self, volume: &str) -> PathBuf {
        self.dir.path().join("mnt").join(volume)
    }

    fn passfile(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, format!("{text}\n")).unwrap();
        // Readable by the other local user of the refusal test.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `cloudstore init VOLUME` with the passphrase in `passfile` (a fast scrypt cost).
    fn init(&self, volume: &str, passfile: &Path) -> Output {
        self.run(&[
            "init",
            volume,
            "--scryptn",
            "10",
            "--passphrase-file",
            passfile.to_str().unwrap(),
        ])
    }

    /// `cloudstore unlock VOLUME` with the passphrase in `passfile`.
    fn unlock(&self, volume: &str, passfile: &Path) -> Output {
        self.run(&[
            "unlock",
            volume,
            "--passphrase-file",
            passfile.to_str().unwrap(),
        ])
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("consumer agent log:\n{}", self.log.text());
            eprintln!("mount helper log:\n{}", self.helper_log.text());
        }
        self.stop();
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

/// The environment of every cloudstore process of the consumer qube in `dir`.
fn command_env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("CLOUDSTORE_QUBESDB_SOCKET", dir.join("qubesdb.sock")),
        ("CLOUDSTORE_RUNTIME_DIR", dir.join("run")),
        (
            "CLOUDSTORE_MOUNTS_SOCKET",
            dir.join("mounts").join("mounts.sock"),
        ),
        ("CLOUDSTORE_KEYFILE_DIR", dir.join("keys")),
        ("CLOUDSTORE_QREXEC_CLIENT", std::env::current_exe().unwrap()),
        ("QUBES_SIM_QREXEC_DIR", dir.join("qrexec")),
        ("QUBES_SIM_QUBE", PathBuf::from("my-work")),
        ("CLOUDSTORE_LOG", PathBuf::from("info")),
    ]
}

/// `program` run as the local user [`OTHER_UID`], neither root nor the qube's user.
fn as_other_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        OTHER_UID,
        "--regid",
        OTHER_UID,
        "--clear-groups",
        "--",
    ])
    .arg(program);
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(o.status.success(), "command failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn fails(o: Output) -> String {
    assert!(!o.status.success(), "command succeeded: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The source of the mount at `p` (`cloudstore:VOLUME` for ours).
fn mount_type(p: &Path) -> Option<String> {
    cloudstore::roles::consumer::mounts::mount_at(p).map(|(_, src)| src)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The worker pid an unlock or lock message names ("worker pid N").
fn worker_pid(msg: &str) -> u32 {
    let i = msg
        .find("worker pid ")
        .unwrap_or_else(|| panic!("no worker pid in {msg:?}"));
    msg[i + 11..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// ------------------------------------------------------------ the cases

fn whole_life_cycle() {
    let storage = StorageAgent::start("work photos");
    let mut qube = Consumer::start(&storage);
    let pass = qube.passfile("pass", PASS);
    let wrong = qube.passfile("wrong", "not the passphrase");
    let mp = qube.mountpoint("work");

    // status before anything: both volumes locked.
    let st = ok(qube.run(&["status"]));
    assert!(
        st.contains("volume work: locked") && st.contains("volume photos: locked"),
        "{st}"
    );

    // unlock before init: the volume has no gocryptfs.conf yet.
    let e = fails(qube.unlock("work", &pass));
    assert!(e.contains("cloudstore init work"), "{e}");

    // init through the agent, then again: refused, and the first config survives.
    let out = ok(qube.init("work", &pass));
    assert!(out.contains("created volume work"), "{out}");
    let conf = storage.tree("work").join("gocryptfs.conf");
    let first = fs::read(&conf).expect("gocryptfs.conf on storage");
    assert!(storage.tree("work").join("gocryptfs.diriv").exists());
    let e = fails(qube.init("work", &wrong));
    assert!(
        e.contains("already exists") && e.contains("refusing to overwrite"),
        "{e}"
    );
    assert_eq!(
        fs::read(&conf).unwrap(),
        first,
        "the existing config was changed"
    );
    let e = fails(qube.init("nope", &pass));
    assert!(e.contains("not configured"), "{e}");

    // A wrong passphrase: a clear error, nothing mounted.
    let e = fails(qube.unlock("work", &wrong));
    assert!(e.contains("wrong passphrase for volume work"), "{e}");
    assert_eq!(mount_type(&mp), None, "mounted despite a wrong passphrase");

    // Another local user may read the status but not unlock.
    let o = as_other_user(BIN)
        .args([
            "unlock",
            "work",
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
        .envs(
            qube.command(&[])
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = fails(o);
    assert!(
        e.contains("permission denied") && e.contains("uid 65534"),
        "{e}"
    );
    assert_eq!(mount_type(&mp), None);
    qube.log.wait_for("refused unlock a volume from uid 65534");

    // Unlock: the mount appears and works.
    let msg = ok(qube.unlock("work", &pass));
    assert_eq!(mount_type(&mp).as_deref(), Some("cloudstore:work"), "{msg}");
    // ... here, in the qube's namespace, while the agent runs in its own without the
    // capability to mount: the helper made it.
    let agent_pid = qube.child.as_ref().unwrap().id();
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(
        ns(&agent_pid.to_string()),
        ns("self"),
        "the agent shares our mount namespace"
    );
    let bounding =
        u64::from_str_radix(&proc_status_field(agent_pid as i32, "CapBnd:"), 16).unwrap();
    assert_eq!(bounding & (1 << 21), 0, "the agent holds CAP_SYS_ADMIN");
    qube.helper_log.wait_for("mounted for the consumer agent");
    let pid1 = worker_pid(&msg);
    fs::write(mp.join("hello.txt"), b"first").unwrap();
    assert_eq!(fs::read(mp.join("hello.txt")).unwrap(), b"first");
    // The qube's user, not only root, works in the mount.
    let o = Command::new("setpriv")
        .args(["--reuid", "1", "--regid", "1", "--clear-groups", "sh", "-c"])
        .arg("echo mine > \"$1\"/by-user && cat \"$1\"/hello.txt")
        .arg("sh")
        .arg(&mp)
        .output()
        .unwrap();
    assert_eq!(ok(o), "first");
    assert_eq!(fs::read(mp.join("by-user")).unwrap(), b"mine\n");
    fs::remove_file(mp.join("by-user")).unwrap();
    let names: Vec<_> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("hello.txt")]);
    let e = fails(qube.unlock("work", &pass));
    assert!(e.contains("already unlocked"), "{e}");

    // status: one line per volume with the worker's view.
    let st = ok(qube.run(&["status"]));
    assert!(
        st.contains(&format!(
            "volume work: unlocked at {}; connected, following changes made elsewhere; 0 pending writes; last error: none",
            mp.display()
        )),
        "{st}"
    );
    assert!(st.contains("volume photos: locked"), "{st}");

    // Versions: replace the file (an editor's save), list, restore the first content.
    fs::write(mp.join(".hello.tmp"), b"second").unwrap();
    fs::rename(mp.join(".hello.tmp"), mp.join("hello.txt")).unwrap();
    let hello = mp.join("hello.txt");
    let vs = ok(qube.run(&["versions", hello.to_str().unwrap()]));
    assert!(vs.contains("hello.txt") && vs.contains("UTC"), "{vs}");
    let e = fails(qube.run(&["restore", hello.to_str().unwrap(), "--at", "1999-12-31"]));
    assert!(
        e.contains("no version kept at or before 1999-12-31 23:59:59 UTC"),
        "{e}"
    );
    let e = fails(qube.run(&["restore", hello.to_str().unwrap(), "--at", "yesterday"]));
    assert!(e.contains("is not a time"), "{e}");
    let out = ok(qube.run(&["restore", hello.to_str().unwrap(), "--at", "2999-01-01"]));
    assert!(out.contains("restored"), "{out}");
    let restored = (0..100).find_map(|_| {
        let c = fs::read(&hello).unwrap();
        if c == b"first" {
            Some(c)
        } else {
            std::thread::sleep(Duration::from_millis(50));
            None
        }
    });
    assert_eq!(
        restored.as_deref(),
        Some(&b"first"[..]),
        "versions were:\n{vs}"
    );
    let e = fails(qube.run(&["versions", "/etc/passwd"]));
    assert!(e.contains("not inside an unlocked volume"), "{e}");

    // The sandbox, probed inside the running worker: a forbidden open (the shadow file, the
    // storage role's data, which the worker's uid could read by its mode) and an AF_INET socket.
    let other_role = storage.tree("work").join("gocryptfs.conf");
    match control::call(
        &qube.socket(),
        &Request::Probe {
            volume: "work".into(),
            open: vec![
                "/etc/shadow".into(),
                other_role.clone(),
                std::env::current_exe().unwrap(),
            ],
        },
    )
    .unwrap()
    {
        Reply::Probe { results } => {
            let all = results.join("\n");
            assert!(results[0].starts_with("open /etc/shadow: refused"), "{all}");
            assert!(
                results[1].contains("refused") && results[1].contains("ermission denied"),
                "{all}"
            );
            assert!(
                results[2].ends_with("allowed"),
                "the connector must stay readable: {all}"
            );
            assert!(results[3].contains("child exited 159"), "{all}");
        }
        other => panic!("{other:?}"),
    }
    support::wait_until("the trap message in the log", || {
        qube.log.text().contains("seccomp refused syscall 41 ")
    });
    // The mount survived the probe.
    assert_eq!(fs::read(&hello).unwrap(), b"first");

    // Lock while a process holds a file open: refused, naming it.
    // The holder is the qube's user's process, which the agent (without CAP_SYS_PTRACE, as
    // under its unit) finds through a scan of /proc made as that user.
    let mut holder = Command::new("setpriv")
        .args(["--reuid", "1", "--regid", "1", "--clear-groups", "sh"])
        .arg("-c")
        .arg("exec 3<\"$1\"; exec sleep 60")
        .arg("sh")
        .arg(&hello)
        .spawn()
        .unwrap();
    support::wait_until("the holder to open the file", || {
        cloudstore::roles::consumer::busy::holders(&mp, &[])
            .iter()
            .any(|h| h.pid == holder.id() && h.name == "sleep")
    });
    let e = fails(qube.run(&["lock", "work"]));
    assert!(
        e.contains("in use by sleep (pid ")
            && e.contains(&holder.id().to_string())
            && e.contains("hello.txt"),
        "{e}"
    );
    assert_eq!(mount_type(&mp).as_deref(), Some("cloudstore:work"));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = ok(qube.run(&["lock", "work"]));
    assert!(out.contains("keys wiped"), "{out}");
    assert_eq!(mount_type(&mp), None, "still mounted after lock");
    assert!(!pid_alive(pid1), "the worker {pid1} survived the lock");
    // The worker said so before it exited; the log reader may lag behind a little.
    qube.log.wait_for("keys wiped; worker exiting");
    let st = ok(qube.run(&["status"]));
    assert!(st.contains("volume work: locked"), "{st}");
    let e = fails(qube.run(&["lock", "work"]));
    assert!(e.contains("not unlocked"), "{e}");

    // Unlock again: works, the content is there.
    let msg = ok(qube.unlock("work", &pass));
    let pid2 = worker_pid(&msg);
    assert_ne!(pid2, pid1);
    assert_eq!(fs::read(mp.join("hello.txt")).unwrap(), b"first");

    // A worker that dies (here: killed) takes its keys with it; the parent notices, detaches
    // the dead mount and reports the volume locked.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid2 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    support::wait_until("the parent to notice the dead worker", || {
        mount_type(&mp).is_none() && ok(qube.run(&["status"])).contains("volume work: locked")
    });
    qube.log
        .wait_for("the worker of volume work ended on its own");

    // What the volume holds on storage is a gocryptfs volume: gocryptfs itself reads it.
    let gmnt = qube.dir.path().join("gocryptfs-view");
    fs::create_dir(&gmnt).unwrap();
    let o = Command::new("gocryptfs")
        .args(["-ro", "-q", "-passfile"])
        .arg(&pass)
        .arg(storage.tree("work"))
        .arg(&gmnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "gocryptfs: {}", text(&o));
    let seen = fs::read(gmnt.join("hello.txt"));
    let _ = Command::new("fusermount3").arg("-u").arg(&gmnt).status();
    assert_eq!(seen.unwrap(), b"first");

    // A keyfile: unlocked again at every start, until forgotten.
    let out = ok(qube.run(&[
        "unlock",
        "work",
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--keyfile",
    ]));
    assert!(out.contains("automatic unlock"), "{out}");
    let kf = qube.dir.path().join("keys").join("work");
    assert_eq!(
        fs::metadata(&kf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (st, log) = qube.stop();
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{log}");
    assert!(log.contains("locked for shutdown"), "{log}");
    assert_eq!(mount_type(&mp), None, "the agent's stop left the mount");
    let ready = qube.spawn();
    assert!(ready.contains("unlocked at start: work"), "{ready}");
    assert_eq!(mount_type(&mp).as_deref(), Some("cloudstore:work"));
    assert_eq!(fs::read(mp.join("hello.txt")).unwrap(), b"first");
    let out = ok(qube.run(&["lock", "work", "--forget-keyfile"]));
    assert!(out.contains("keyfile") && out.contains("removed"), "{out}");
    assert!(!kf.exists());
    // A keyfile others could read is refused, and nothing is mounted.
    fs::write(&kf, format!("{PASS}\n")).unwrap();
    fs::set_permissions(&kf, fs::Permissions::from_mode(0o644)).unwrap();
    qube.stop();
    let ready = qube.spawn();
    assert!(ready.contains("unlocked at start: none"), "{ready}");
    qube.log.wait_for("refusing the keyfile");
    assert_eq!(mount_type(&mp), None);
    fs::remove_file(&kf).unwrap();
}

/// One request line to the mount helper at `socket`; its answer line.
fn ask_helper(socket: &Path, line: &[u8]) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(line).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer).unwrap();
    answer
}

fn mount_helper_refuses_what_is_not_its_job() {
    let storage = StorageAgent::start("work");
    let qube = Consumer::start(&storage);
    let socket = qube.dir.path().join("mounts").join("mounts.sock");
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the helper's socket is open to others");
    let refused = |line: &str, needle: &str| {
        let a = ask_helper(&socket, line.as_bytes());
        assert!(
            a.contains("\"reply\":\"error\"") && a.contains(needle),
            "{line} -> {a}"
        );
    };
    refused("{\"op\":\"mount\",\"volume\":\"../etc\"}\n", "volume name");
    refused(
        "{\"op\":\"mount\",\"volume\":\"other\"}\n",
        "not configured",
    );
    refused("{\"op\":\"mount\",\"volume\":\"\"}\n", "volume name");
    refused("not json\n", "malformed request");
    refused(&format!("{}\n", "x".repeat(5000)), "longer than");
    // Unmounting what is not a cloudstore mount of that volume: nothing happens.
    for (volume, path) in [("work", "/proc"), ("work", "/"), ("work", "relative/path")] {
        let a = ask_helper(
            &socket,
            format!("{{\"op\":\"unmount\",\"volume\":\"{volume}\",\"mountpoint\":\"{path}\",\"detach\":true}}\n").as_bytes(),
        );
        assert!(
            a.contains("not_mounted") || a.contains("not an absolute path"),
            "{path} -> {a}"
        );
    }
    assert!(
        Path::new("/proc/self/status").exists(),
        "/proc was unmounted"
    );
    // Another local user may not even ask.
    let o = as_other_user(std::env::current_exe().unwrap())
        .args(["@ask-helper"])
        .arg(&socket)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // The socket is root's 0600: the kernel refuses the connection before the helper's own
    // check (peer uid 0 only) would.
    assert!(
        !o.status.success() && err.contains("Permission denied"),
        "{out}{err}"
    );
    // The helper served all of this and still mounts for the agent.
    let pass = qube.passfile("pass", PASS);
    ok(qube.init("work", &pass));
    ok(qube.unlock("work", &pass));
    assert_eq!(
        mount_type(&qube.mountpoint("work")).as_deref(),
        Some("cloudstore:work")
    );
    qube.helper_log.wait_for("not configured");
    qube.helper_log.wait_for("mounted for the consumer agent");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("@default") {
        // The stand-in's qrexec-client-vm, in direct mode (see Consumer::command).
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        std::process::exit(qubes_sim::qrexec::client_main(&args));
    }
    if args.get(1).map(String::as_str) == Some("@ask-helper") {
        print!(
            "{}",
            ask_helper(
                Path::new(&args[2]),
                b"{\"op\":\"mount\",\"volume\":\"work\"}\n"
            )
        );
        return;
    }
    run_cases(&[
        ("whole_life_cycle", whole_life_cycle),
        (
            "mount_helper_refuses_what_is_not_its_job",
            mount_helper_refuses_what_is_not_its_job,
        ),
    ]);
}
