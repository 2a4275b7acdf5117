//! A real storage agent for integration tests: the `cloudstore` binary with role storage,
//! configured through the stand-in qubesdb daemon, confined by its real sandbox, reached
//! through its real qrexec socket services exactly as qrexec-agent connects to them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use cloudstore_protocol::{Client, ClientConfig, Hello, Push, Role};
use qubes_sim::qubesdb::QubesDbDaemon;

pub const BIN: &str = env!("CARGO_BIN_EXE_cloudstore");
/// Generous for a loaded 2-core CI machine; nothing waits this long when things work.
pub const WAIT: Duration = Duration::from_secs(30);

/// The storage role drops to the `cloudstore` system user the package creates; on a test
/// machine we create it the same way (a system user without home or shell).
pub fn ensure_sandbox_user() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if nix::unistd::User::from_name("cloudstore")
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/var/lib/cloudstore",
                "--shell",
                "/usr/sbin/nologin",
                "cloudstore",
            ])
            .status()
            .expect("running useradd");
        // 9: created meanwhile by another test binary.
        assert!(
            st.success() || st.code() == Some(9),
            "useradd cloudstore failed: {st}"
        );
    });
}

/// Clears what systemd would have told the test process itself, so an agent started from
/// it sees no unit around it unless the caller says so.
pub fn without_systemd_env(c: &mut Command) -> &mut Command {
    c.env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
}

/// A fresh stand-in for systemd's notification socket at `path`, writable by everybody
/// like /run/systemd/notify: a confined agent sends from its sandbox user.
pub fn notify_socket(path: &Path) -> UnixDatagram {
    let _ = std::fs::remove_file(path);
    let notify = UnixDatagram::bind(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    notify
}

/// Waits for the notification carrying READY=1 and returns it; panics naming `agent` and
/// its log if none comes within [`WAIT`].
pub fn wait_ready(notify: &UnixDatagram, agent: &str, log: &LogReader) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("the {agent} sent no READY=1 ({e}); log:\n{}", log.text()));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") {
            return msg;
        }
    }
}

/// The first value of the line `name` (e.g. `"CapEff:"`) of /proc/PID/status.
pub fn proc_status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in {status}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The test harness of the binaries that are their own `main` (harness = false: each also
/// serves as a qrexec client stand-in): `--list` for cargo, an optional name filter, one
/// line per case, exit 101 if any failed.
pub fn run_cases(cases: &[(&str, fn())]) {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        for (n, _) in cases {
            println!("{n}: test");
        }
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = 0;
    for (name, f) in cases {
        if filter.is_some_and(|flt| !name.contains(flt.as_str())) {
            continue;
        }
        let t = Instant::now();
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok ({:.1?})", t.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED ({:.1?})", t.elapsed());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        std::process::exit(101);
    }
}

/// Waits up to `secs` for `cond`, looking every 50 ms; panics naming `what`.
#[track_caller]
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Waits for a server to accept connections on 127.0.0.1:`port`.
#[track_caller]
pub fn wait_for_port(what: &str, port: u16) {
    wait_for(what, 20, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An rclone configuration with the remote `dav:`, a WebDAV server on 127.0.0.1:`port`, in
/// a directory of its own (kept as long as the returned guard), readable by the sandbox
/// user.
pub fn webdav_conf(port: u16) -> (tempfile::TempDir, PathBuf) {
    let dir = shared_tempdir();
    let conf = dir.path().join("rclone.conf");
    std::fs::write(
        &conf,
        format!("[dav]\ntype = webdav\nurl = http://127.0.0.1:{port}/\nvendor = other\n"),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, conf)
}

/// A temporary directory the sandbox user can traverse (tempdir makes 0700 root-owned ones).
pub fn shared_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Collects a child's stderr as it comes.
pub struct LogReader {
    log: Arc<Mutex<String>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LogReader {
    pub fn start(child: &mut Child) -> LogReader {
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("stderr piped");
        let thread = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        LogReader {
            log,
            thread: Some(thread),
        }
    }

    pub fn text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn finish(&mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.text()
    }

    #[track_caller]
    pub fn wait_for(&self, needle: &str) {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.text().contains(needle) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("never logged {needle:?}; log so far:\n{}", self.text());
    }
}

/// A storage qube: qubesdb stand-in, data and runtime directories, the running agent.
/// Field order matters: the agent stops before the daemon, the daemon before the directory.
pub struct StorageAgent {
    child: Option<Child>,
    pub log: LogReader,
    pub db: QubesDbDaemon,
    pub dir: tempfile::TempDir,
}

impl StorageAgent {
    /// Starts an agent serving `volumes` (space-separated) and waits for READY=1.
    pub fn start(volumes: &str) -> StorageAgent {
        ensure_sandbox_user();
        let dir = shared_tempdir();
        let db = QubesDbDaemon::start(
            &dir.path().join("qubesdb.sock"),
            [
                ("/cloudstore/role", b"storage".as_slice()),
                ("/cloudstore/volumes", volumes.as_bytes()),
            ],
        )
        .unwrap();
        let mut s = StorageAgent {
            child: None,
            log: LogReader {
                log: Arc::default(),
                thread: None,
            },
            db,
            dir,
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn volume_socket(&self) -> PathBuf {
        self.runtime_dir().join("volume.sock")
    }

    pub fn sync_socket(&self) -> PathBuf {
        self.runtime_dir().join("sync.sock")
    }

    /// The volume's ciphertext tree as stored on disk.
    pub fn tree(&self, volume: &str) -> PathBuf {
        self.data_dir().join("volumes").join(volume).join("tree")
    }

    /// The environment a command needs to find this storage agent's pieces.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CLOUDSTORE_QUBESDB_SOCKET", self.db.socket())
            .env("CLOUDSTORE_DATA_DIR", self.data_dir())
            .env("CLOUDSTORE_RUNTIME_DIR", self.runtime_dir())
            .env("CLOUDSTORE_LOG", "info");
        without_systemd_env(&mut c);
        c
    }

    /// (Re)starts the agent and waits until it reports READY=1.
    pub fn spawn(&mut self) {
        let notify_path = self.dir.path().join("notify.sock");
        let notify = notify_socket(&notify_path);
        let mut child = self
            .command(&["agent"])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.log = LogReader::start(&mut child);
        self.child = Some(child);
        wait_ready(&notify, "storage agent", &self.log);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.log.finish();
        }
    }

    /// SIGTERM and wait; returns the exit code and the whole log.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = c.wait().unwrap();
        (st.code(), self.log.finish())
    }

    /// A raw connection as qrexec-agent makes it: connect, then the service descriptor.
    pub fn raw(&self, service: &str, argument: &str, source: &str) -> UnixStream {
        let socket = if service == "cloudstore.Sync" {
            self.sync_socket()
        } else {
            self.volume_socket()
        };
        cloudstore::qrexec::connect_socket_service(&socket, service, argument, source)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()))
    }

    /// A protocol client on `service+argument` called from qube `source`.
    pub fn client(
        &self,
        service: &str,
        argument: &str,
        source: &str,
    ) -> Result<(Client, Receiver<Push>), cloudstore_protocol::HandshakeError> {
        let role = if service == "cloudstore.Sync" {
            Role::Sync
        } else {
            Role::Volume
        };
        let stream = self.raw(service, argument, source);
        Client::connect_unix(stream, ClientConfig::new(Hello::new(role)))
    }
}

impl Drop for StorageAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `cond` holds or panics with `what`.
#[track_caller]
/// Stops process `pid` with SIGSTOP and returns once every thread of it has stopped: the
/// signal takes effect asynchronously, and a thread that was running may first serve one more
/// request (on a loaded machine, after the caller sent it).
pub fn stop_process(pid: i32) {
    let pid_t = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let all_stopped = || -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            // The state follows the parenthesised command name, which may hold spaces.
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(true)
        })
    };
    wait_until(&format!("process {pid} to stop"), all_stopped);
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

pub fn path_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Copies `from` to `to` until end of stream with plain reads and writes, as qrexec's relays
/// do. Not `std::io::copy`: between a socket and a pipe it picks splice(2), which was seen
/// holding small replies back (the transfer agent's handshake never completed).
pub fn pump(from: &mut dyn std::io::Read, to: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// The qrexec client stand-in the transfer agent runs (`CLOUDSTORE_QREXEC_CLIENT` names a
/// test or bench binary, started as `<exe> @default SERVICE[+ARG]`): connects to the sync
/// socket named by `socket_env` the way qrexec-agent does (descriptor, then the bytes) and
/// relays stdin/stdout. Exits 0 at end of stream, 125 on an error.
pub fn qrexec_client_stand_in(args: &[String], socket_env: &str) -> ! {
    let r = (|| -> std::io::Result<()> {
        let service = args
            .get(2)
            .ok_or_else(|| std::io::Error::other("no service argument"))?;
        let socket = std::env::var(socket_env)
            .map_err(|_| std::io::Error::other(format!("{socket_env} is not set")))?;
        let mut s = UnixStream::connect(&socket)?;
        std::io::Write::write_all(&mut s, format!("{service} transfer\0").as_bytes())?;
        let mut up = s.try_clone()?;
        // SAFETY: fds 0 and 1 are this process's stdin and stdout, owned by nothing else here.
        let (mut stdin, mut stdout) = unsafe {
            use std::os::fd::FromRawFd;
            (std::fs::File::from_raw_fd(0), std::fs::File::from_raw_fd(1))
        };
        thread::spawn(move || {
            let _ = pump(&mut stdin, &mut up);
            let _ = up.shutdown(std::net::Shutdown::Write);
        });
        pump(&mut s, &mut stdout)
    })();
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("qrexec-client stand-in: {e}");
            std::process::exit(125)
        }
    }
}
