//! One qube: its directories, its namespaces, and its init, which runs the cloudstore unit
//! the way systemd runs it in a real qube.
//!
//! A qube is a process tree of its own: the stand-in's dom0 starts `qubes-sim qube-init`
//! in new mount, PID, UTS and IPC namespaces (and a new network namespace unless the qube
//! has a netvm). That process forks the qube's PID 1, which
//! - sets the host name to the qube's name and, without a netvm, brings up loopback only;
//! - makes the qube's file system view: the whole stand-in directory is hidden under an
//!   empty tmpfs except the qube's own directory (so no qube sees another's data, dom0's
//!   policy or logs); `/home` is the qube's persistent `rw/home` (Qubes binds `/rw/home`
//!   there, qubes-core-agent-linux `qubes-mount-dirs`); `/etc/passwd` and `/etc/group`
//!   name the qube's own accounts `user` and `cloudstore` (each qube has its own host
//!   uids, like separate VMs); `/dev/fuse` is mode 0666 as in a Qubes template; `/proc`
//!   is the qube's;
//! - runs the three cloudstore units as their unit files say (`units/*.service`):
//!   `ExecCondition=cloudstore role-is ROLE`, then `cloudstore agent` with `NOTIFY_SOCKET`
//!   (our own datagram socket: READY, STATUS, WATCHDOG), `UMask=0077`, a fresh
//!   `RuntimeDirectory=`, and the restart rules `Restart=on-abnormal`,
//!   `RestartForceExitStatus=1 75`, `RestartPreventExitStatus=78`, `StartLimitBurst=5`,
//!   `WatchdogSec=60s`, `TimeoutStopSec=30s`;
//! - reports to dom0 on its standard output, one event per line.
//!
//! The persistent directory of a qube is `DIR/qubes/NAME/rw` (the qube's `/rw`): its home
//! and `bind-dirs/var/lib/cloudstore`, the agent's data (the package's bind-dirs snippet
//! persists `/var/lib/cloudstore`). `run/` is volatile, recreated at each start.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What dom0 and `exec` know about a qube (written by `up` as `DIR/qubes/NAME/qube.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QubeState {
    pub name: String,
    /// The stand-in's directory (absolute).
    pub dir: PathBuf,
    pub network: bool,
    /// Host uid/gid of the qube's `user`.
    pub uid: u32,
    pub gid: u32,
    /// Host uid/gid of the qube's `cloudstore` system user (the sandbox user).
    pub cs_uid: u32,
    pub cs_gid: u32,
    /// Host gid of the qube's `qubes` group.
    pub qubes_gid: u32,
    /// The `cloudstore` binary.
    pub cloudstore: PathBuf,
    /// The `qrexec-client-vm` stand-in.
    pub qrexec_client: PathBuf,
    /// How long a starting agent may take to send READY=1.
    pub ready_timeout_ms: u64,
    /// Pause before a restart (the units say RestartSec=5s; tests want it shorter).
    pub restart_ms: u64,
    /// Host directories the qube needs whatever its private `/tmp` hides: the directories
    /// of the binaries it runs and, for the transfer qube, a local cloud folder.
    #[serde(default)]
    pub binds: Vec<PathBuf>,
    /// The agent's extra environment (the configuration's `env`, a unit drop-in's
    /// `Environment=`); the qube's other processes do not get it.
    #[serde(default)]
    pub unit_env: std::collections::BTreeMap<String, String>,
}

/// The unit files' stop timeout (TimeoutStopSec=30s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The unit files' watchdog (WatchdogSec=60s).
const WATCHDOG: Duration = Duration::from_secs(60);
/// StartLimitBurst=5 within StartLimitIntervalSec=10min.
const START_LIMIT_BURST: usize = 5;
const START_LIMIT_INTERVAL: Duration = Duration::from_secs(600);
/// The roles, in the order their units are considered.
pub const ROLES: [&str; 3] = ["storage", "transfer", "consumer"];
/// Lines of the agent's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 12;

impl QubeState {
    pub fn root(&self) -> PathBuf {
        self.dir.join("qubes").join(&self.name)
    }
    pub fn rw(&self) -> PathBuf {
        self.root().join("rw")
    }
    pub fn home(&self) -> PathBuf {
        self.rw().join("home")
    }
    /// `/var/lib/cloudstore` of the qube, persisted under `/rw/bind-dirs`.
    pub fn data_dir(&self) -> PathBuf {
        self.rw().join("bind-dirs/var/lib/cloudstore")
    }
    pub fn run(&self) -> PathBuf {
        self.root().join("run")
    }
    /// `/run/cloudstore` of the qube.
    pub fn runtime_dir(&self) -> PathBuf {
        self.run().join("cloudstore")
    }
    /// `/var/run/qubes/qubesdb.sock` of the qube.
    pub fn qubesdb_socket(&self) -> PathBuf {
        self.run().join("qubesdb.sock")
    }
    /// `/var/run/qubes/qrexec-agent` of the qube: its qrexec trigger socket.
    pub fn trigger_socket(&self) -> PathBuf {
        self.run().join("qrexec/agent.sock")
    }
    pub fn notify_socket(&self) -> PathBuf {
        self.run().join("notify.sock")
    }
    /// `/etc/qubes-rpc` of the qube.
    pub fn rpc_dir(&self) -> PathBuf {
        self.root().join("rpc")
    }
    pub fn etc(&self) -> PathBuf {
        self.run().join("etc")
    }
    pub fn bin(&self) -> PathBuf {
        self.run().join("bin")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root().join("log")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.log_dir().join("agent.log")
    }
    /// PID (in the qube) of the running agent, like systemd's MainPID.
    pub fn agent_pid_file(&self) -> PathBuf {
        self.run().join("agent.pid")
    }
    /// Host PID of the qube's PID 1, written by dom0.
    pub fn init_pid_file(&self) -> PathBuf {
        self.run().join("init.pid")
    }
    pub fn state_file(dir: &Path, name: &str) -> PathBuf {
        dir.join("qubes").join(name).join("qube.json")
    }

    pub fn load(dir: &Path, name: &str) -> Result<QubeState> {
        let path = QubeState::state_file(dir, name);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "qube {name} is not part of the stand-in in {} (no {})",
                dir.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self) -> Result<()> {
        let path = QubeState::state_file(&self.dir, &self.name);
        fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// PATH inside the qube: the stand-in's `qrexec-client-vm` and `cloudstore` first.
    pub fn path_env(&self) -> String {
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.bin().display()
        )
    }

    /// The environment every process of the qube gets: where the qube's services are.
    pub fn base_env(&self) -> Vec<(String, String)> {
        let d = |p: PathBuf| p.display().to_string();
        let mut env = vec![
            ("PATH".into(), self.path_env()),
            ("LANG".into(), "C.UTF-8".into()),
            (crate::qrexec::SOCKET_ENV.into(), d(self.trigger_socket())),
            ("CLOUDSTORE_QUBESDB_SOCKET".into(), d(self.qubesdb_socket())),
            ("CLOUDSTORE_DATA_DIR".into(), d(self.data_dir())),
            ("CLOUDSTORE_RUNTIME_DIR".into(), d(self.runtime_dir())),
            (
                "CLOUDSTORE_QREXEC_CLIENT".into(),
                d(self.bin().join("qrexec-client-vm")),
            ),
            // The consumer's keyfiles: /rw/config/cloudstore/keys in a qube.
            (
                "CLOUDSTORE_KEYFILE_DIR".into(),
                d(self.rw().join("config/cloudstore/keys")),
            ),
        ];
        for pass in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(pass) {
                env.push((pass.into(), v));
            }
        }
        env
    }

    /// Host PID of the qube's PID 1, if it is running.
    /// Checked against the process's command line, so a PID reused by another program is
    /// never taken for the qube (and never signalled).
    pub fn init_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.init_pid_file()).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let dir = self.dir.as_os_str().as_encoded_bytes();
        let ours = args.contains(&&b"qube-init"[..])
            && args.contains(&self.name.as_bytes())
            && args.contains(&dir);
        ours.then_some(pid)
    }
}

/// The namespaces of a running qube, opened from its PID 1.
pub struct Namespaces {
    fds: Vec<(OwnedFd, nix::sched::CloneFlags)>,
}

impl Namespaces {
    pub fn open(state: &QubeState) -> Result<Namespaces> {
        let pid = state.init_pid().ok_or_else(|| {
            anyhow!(
                "qube {} is not running (no live PID in {}); start it with qubes-sim up",
                state.name,
                state.init_pid_file().display()
            )
        })?;
        use nix::sched::CloneFlags as F;
        let mut kinds = vec![
            ("pid", F::CLONE_NEWPID),
            ("uts", F::CLONE_NEWUTS),
            ("ipc", F::CLONE_NEWIPC),
        ];
        if !state.network {
            kinds.push(("net", F::CLONE_NEWNET));
        }
        // The mount namespace last: entering it changes how later paths resolve.
        kinds.push(("mnt", F::CLONE_NEWNS));
        let mut fds = Vec::new();
        for (name, flag) in kinds {
            let path = format!("/proc/{pid}/ns/{name}");
            let f = fs::File::open(&path)
                .with_context(|| format!("opening {path} of qube {}", state.name))?;
            fds.push((OwnedFd::from(f), flag));
        }
        Ok(Namespaces { fds })
    }

    /// Enters every namespace (the PID namespace takes effect for children). Only
    /// `setns`: async-signal-safe, usable between fork and exec.
    pub fn enter(&self) -> io::Result<()> {
        for (fd, flag) in &self.fds {
            // SAFETY: setns on a namespace fd we own; no memory is touched.
            if unsafe { libc::setns(fd.as_raw_fd(), flag.bits()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Drops to `uid`/`gid` with `groups` as supplementary groups, between fork and exec.
pub fn drop_to(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: plain system calls on values; no allocation.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// qube-init: the outer process (host PID namespace) and the qube's PID 1.

/// Events PID 1 reports to dom0, one per line on its standard output.
pub mod event {
    /// `pid N`: host PID of the qube's PID 1 (from the outer process).
    pub const PID: &str = "pid";
    /// `ready ROLE|-`: the qube is up (the agent sent READY=1, or there is no agent).
    pub const READY: &str = "ready";
    /// `failed REASON`: the unit failed before it was ever ready.
    pub const FAILED: &str = "failed";
    /// `agent ROLE STATE`: the agent's state changed after start-up (ready, restarting,
    /// stopped).
    pub const AGENT: &str = "agent";
    /// `log TEXT`: anything else worth dom0's log.
    pub const LOG: &str = "log";
}

/// `qubes-sim qube-init`: started by dom0 already inside the qube's new namespaces (the
/// PID namespace applies to children), so it forks the qube's PID 1 and relays signals.
pub fn outer_main(dir: &Path, name: &str) -> Result<i32> {
    let state = QubeState::load(dir, name)?;
    // SAFETY: called from main before any thread exists, so the child may run anything.
    let child = match unsafe { nix::unistd::fork() }.context("fork of the qube's PID 1")? {
        nix::unistd::ForkResult::Child => {
            let code = match init_main(&state) {
                Ok(c) => c,
                Err(e) => {
                    report(event::FAILED, &format!("{e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    report(event::PID, &child.to_string());
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    loop {
        match mask.wait().context("waiting for signals")? {
            Signal::SIGCHLD => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                _ => {}
            },
            s => {
                let _ = kill(child, s);
            }
        }
    }
}

fn report(kind: &str, text: &str) {
    let text = text.replace('\n', " | ");
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{kind} {text}");
    let _ = out.flush();
}

/// The qube's PID 1.
fn init_main(state: &QubeState) -> Result<i32> {
    // If the outer process dies, so does the qube (and with PID 1 every process in it).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    // SAFETY: the name is a valid buffer of the given length.
    if unsafe { libc::sethostname(state.name.as_ptr().cast(), state.name.len()) } != 0 {
        return Err(io::Error::last_os_error()).context("setting the host name");
    }
    if !state.network {
        loopback_up().context("bringing up loopback in the qube's network namespace")?;
    }
    make_mounts(state)?;
    // SIGTERM to PID 1 is ignored unless handled: block and read them from a signalfd.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    let notify = bind_notify(&state.notify_socket())?;
    let mut init = Init {
        state: state.clone(),
        sfd,
        notify,
        unit: None,
        mount_helper: None,
        reported: false,
    };
    init.run()
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket for the interface ioctls, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> Result<()> {
    nix::mount::mount(src, target, fstype, flags, data).with_context(|| {
        format!(
            "mount {} on {} ({})",
            src.map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into()),
            target.display(),
            fstype.unwrap_or("bind")
        )
    })
}

/// The qube's view of the file system (see the module documentation).
fn make_mounts(state: &QubeState) -> Result<()> {
    use nix::mount::MsFlags as M;
    // Nothing we mount may leak back to the host.
    mount(None, Path::new("/"), None, M::MS_REC | M::MS_PRIVATE, None)?;
    // Descriptors of what must stay visible, opened before anything is hidden; each is
    // bound back at its own path from its descriptor afterwards.
    let own = state.root();
    let mut keep = vec![(own.clone(), true)];
    keep.extend(state.binds.iter().map(|b| (b.clone(), false)));
    let mut fds = Vec::new();
    for (path, required) in &keep {
        match fs::File::open(path) {
            Ok(f) => fds.push((path.clone(), f)),
            Err(e) if !required => report(
                event::LOG,
                &format!("{} stays out of the qube: {e}", path.display()),
            ),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    // A qube's own /tmp and /var/tmp (Qubes: fresh at each boot).
    for t in ["/tmp", "/var/tmp"] {
        mount(
            Some(Path::new("tmpfs")),
            Path::new(t),
            Some("tmpfs"),
            M::MS_NOSUID | M::MS_NODEV,
            Some("mode=1777"),
        )?;
    }
    // The stand-in's directory: empty but for the qube's own part.
    mkdir_p(&state.dir)?;
    mount(
        Some(Path::new("tmpfs")),
        &state.dir,
        Some("tmpfs"),
        M::MS_NOSUID,
        Some("mode=0755,size=1m"),
    )?;
    for (path, f) in &fds {
        mkdir_p(path)?;
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        mount(Some(&by_fd), path, None, M::MS_BIND | M::MS_REC, None)?;
    }
    drop(fds);
    // /dev/fuse usable by the qube's user, as in a Qubes template (mode 0666): a node of
    // our own on the tmpfs, bound over the host's, which stays as it is.
    let fuse = state.dir.join(".fuse");
    nix::sys::stat::mknod(
        &fuse,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(10, 229),
    )
    .with_context(|| format!("mknod {}", fuse.display()))?;
    fs::set_permissions(&fuse, fs::Permissions::from_mode(0o666))?;
    mount(Some(&fuse), Path::new("/dev/fuse"), None, M::MS_BIND, None)?;
    mount(
        Some(&state.home()),
        Path::new("/home"),
        None,
        M::MS_BIND,
        None,
    )?;
    for f in ["passwd", "group"] {
        let target = Path::new("/etc").join(f);
        mount(Some(&state.etc().join(f)), &target, None, M::MS_BIND, None)?;
    }
    mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        M::MS_NOSUID | M::MS_NODEV | M::MS_NOEXEC,
        None,
    )?;
    Ok(())
}

fn mkdir_p(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .with_context(|| format!("creating {} in the qube", path.display()))
}

fn bind_notify(path: &Path) -> Result<UnixDatagram> {
    let _ = fs::remove_file(path);
    let sock = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // The agent sends READY after dropping to its sandbox user.
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    sock.set_nonblocking(true)?;
    // SO_PASSCRED: NotifyAccess=main, only the unit's main process is heard.
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
        .context("SO_PASSCRED on the notify socket")?;
    Ok(sock)
}

enum Condition {
    Role(String),
    NoRole,
    /// An ExecCondition failed (already reported).
    Failed,
}

enum Phase {
    Starting { since: Instant },
    Running,
    RestartAt(Instant),
    Stopped,
}

struct Unit {
    role: String,
    child: Option<Child>,
    phase: Phase,
    starts: VecDeque<Instant>,
    last_watchdog: Instant,
    status: String,
}

struct Init {
    state: QubeState,
    sfd: SignalFd,
    notify: UnixDatagram,
    unit: Option<Unit>,
    /// The consumer's `cloudstore-consumer-mounts.service`: required by the consumer unit,
    /// started before it and stopped after it; it outlives the agent's restarts.
    mount_helper: Option<Child>,
    /// Whether dom0 has heard `ready` or `failed`.
    reported: bool,
}

impl Init {
    fn run(&mut self) -> Result<i32> {
        match self.condition()? {
            Condition::Failed => {}
            Condition::Role(role) => {
                self.unit = Some(Unit {
                    role,
                    child: None,
                    phase: Phase::Stopped,
                    starts: VecDeque::new(),
                    last_watchdog: Instant::now(),
                    status: String::new(),
                });
                self.start();
            }
            Condition::NoRole => {
                report(event::READY, "-");
                self.reported = true;
            }
        }
        loop {
            let timeout = self.next_deadline();
            let mut fds = [
                nix::poll::PollFd::new(self.sfd.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(self.notify.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            let t = timeout
                .map(|d| nix::poll::PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1))
                .transpose()
                .ok()
                .flatten()
                .unwrap_or(nix::poll::PollTimeout::NONE);
            match nix::poll::poll(&mut fds, t) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => bail!("poll: {e}"),
            }
            while let Ok(Some(info)) = self.sfd.read_signal() {
                let sig = Signal::try_from(info.ssi_signo as i32).ok();
                match sig {
                    Some(Signal::SIGCHLD) => self.reap(),
                    Some(_) => return Ok(self.stop()),
                    None => {}
                }
            }
            self.read_notify();
            self.timers();
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.state.base_env();
        env.push(("HOME".into(), "/root".into()));
        env.extend(self.state.unit_env.clone());
        env
    }

    /// The units' `ExecCondition=cloudstore role-is ROLE`: which unit, if any, runs here.
    fn condition(&mut self) -> Result<Condition> {
        let mut found = Condition::NoRole;
        for role in ROLES {
            let out = Command::new(&self.state.cloudstore)
                .args(["role-is", role])
                .env_clear()
                .envs(self.env())
                .stdin(Stdio::null())
                .output()
                .with_context(|| {
                    format!("running {} role-is {role}", self.state.cloudstore.display())
                })?;
            match out.status.code() {
                Some(0) => found = Condition::Role(role.to_owned()),
                Some(1) => {}
                other => {
                    let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                    let msg = format!(
                        "cloudstore-{role}.service: ExecCondition `cloudstore role-is {role}` {}: {why}",
                        match other {
                            Some(c) => format!("exited {c}"),
                            None => "was killed".into(),
                        }
                    );
                    report(event::FAILED, &msg);
                    self.reported = true;
                    return Ok(Condition::Failed);
                }
            }
        }
        Ok(found)
    }

    fn start(&mut self) {
        let env = self.env();
        let state = self.state.clone();
        let Some(unit) = self.unit.as_mut() else {
            return;
        };
        let now = Instant::now();
        while unit
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > START_LIMIT_INTERVAL)
        {
            unit.starts.pop_front();
        }
        if unit.starts.len() >= START_LIMIT_BURST {
            let msg = format!(
                "cloudstore-{}.service: start request repeated too quickly ({START_LIMIT_BURST} starts within {} s); giving up",
                unit.role,
                START_LIMIT_INTERVAL.as_secs()
            );
            unit.phase = Phase::Stopped;
            self.failed(&msg);
            return;
        }
        unit.starts.push_back(now);
        let consumer = unit.role == "consumer";
        if consumer {
            if let Err(msg) = start_mount_helper(&state, &env, &mut self.mount_helper) {
                if let Some(unit) = self.unit.as_mut() {
                    unit.phase = Phase::Stopped;
                }
                self.failed(&msg);
                return;
            }
        }
        let Some(unit) = self.unit.as_mut() else {
            return;
        };
        // RuntimeDirectory=cloudstore: created afresh for each start, removed at stop.
        let rt = state.runtime_dir();
        let _ = fs::remove_dir_all(&rt);
        // The units' RuntimeDirectoryMode=: storage's sockets are for qrexec (group qubes)
        // only; the consumer's control socket and the transfer's status file are for the
        // qube's user.
        let mode = if unit.role == "storage" { 0o750 } else { 0o755 };
        if let Err(e) = fs::DirBuilder::new().mode(mode).create(&rt) {
            let msg = format!("creating the runtime directory {}: {e}", rt.display());
            unit.phase = Phase::Stopped;
            self.failed(&msg);
            return;
        }
        let _ = fs::set_permissions(&rt, fs::Permissions::from_mode(mode));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.agent_log());
        let log = match log {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("opening {}: {e}", state.agent_log().display());
                unit.phase = Phase::Stopped;
                self.failed(&msg);
                return;
            }
        };
        let mut f = &log;
        let _ = writeln!(
            f,
            "--- qubes-sim: starting cloudstore-{}.service in {} ---",
            unit.role, state.name
        );
        let err = log.try_clone();
        let mut cmd = Command::new(&state.cloudstore);
        cmd.arg("agent").env_clear().envs(env);
        if consumer {
            cmd.env(MOUNTS_SOCKET_ENV, mount_helper_socket(&state));
        }
        cmd.env("NOTIFY_SOCKET", state.notify_socket())
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .current_dir("/");
        if let Ok(e) = err {
            cmd.stderr(Stdio::from(e));
        }
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                // WATCHDOG_PID would be the child's PID; sd-notify checks it only if set.
                let _ = fs::write(state.agent_pid_file(), child.id().to_string());
                unit.child = Some(child);
                unit.phase = Phase::Starting { since: now };
                unit.last_watchdog = now;
            }
            Err(e) => {
                let msg = format!("starting {} agent: {e}", state.cloudstore.display());
                unit.phase = Phase::Stopped;
                self.failed(&msg);
            }
        }
    }

    fn failed(&mut self, msg: &str) {
        if self.reported {
            report(event::LOG, msg);
        } else {
            report(event::FAILED, msg);
            self.reported = true;
        }
    }

    fn read_notify(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let msg = match nix::sys::socket::recvmsg::<()>(
                self.notify.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => m,
                Err(_) => return,
            };
            let mut sender = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let nix::sys::socket::ControlMessageOwned::ScmCredentials(cred) = c {
                        sender = Some(cred.pid());
                    }
                }
            }
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            self.handle_notify(sender, &text);
        }
    }

    fn handle_notify(&mut self, sender: Option<i32>, text: &str) {
        let Some(unit) = self.unit.as_mut() else {
            return;
        };
        let main = unit.child.as_ref().map(|c| c.id() as i32);
        if sender.is_none() || sender != main {
            report(
                event::LOG,
                &format!("ignored a notification from PID {sender:?}, not the main process {main:?} (NotifyAccess=main)"),
            );
            return;
        }
        let mut became_ready = false;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => became_ready = true,
                Some(("WATCHDOG", "1")) => unit.last_watchdog = Instant::now(),
                Some(("STATUS", s)) => {
                    unit.status = s.to_owned();
                    report(event::LOG, &format!("status: {s}"));
                }
                _ => {}
            }
        }
        if became_ready && matches!(unit.phase, Phase::Starting { .. }) {
            unit.phase = Phase::Running;
            let role = unit.role.clone();
            if self.reported {
                report(
                    event::LOG,
                    &format!("cloudstore-{role}.service ready again"),
                );
            } else {
                report(event::READY, &role);
                self.reported = true;
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { return };
                    let is_main = self
                        .unit
                        .as_ref()
                        .and_then(|u| u.child.as_ref())
                        .is_some_and(|c| c.id() as i32 == pid.as_raw());
                    if is_main {
                        self.main_exited(status);
                    }
                }
            }
        }
    }

    fn main_exited(&mut self, status: WaitStatus) {
        let restart_ms = self.state.restart_ms;
        let log = self.state.agent_log();

        let Some(unit) = self.unit.as_mut() else {
            return;
        };
        unit.child = None;
        let _ = fs::remove_file(self.state.agent_pid_file());
        let was_ready = matches!(unit.phase, Phase::Running);
        // Restart=on-abnormal (unclean signal, watchdog) plus RestartForceExitStatus=1 75;
        // never 78 (RestartPreventExitStatus) nor a clean exit (systemd.service(5)).
        let (desc, restart) = match status {
            WaitStatus::Exited(_, 0) => ("exited 0".to_owned(), false),
            WaitStatus::Exited(_, c) => (format!("exited {c}"), c == 1 || c == 75),
            WaitStatus::Signaled(_, s, _) => (
                format!("was killed by {s:?}"),
                !matches!(
                    s,
                    Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGPIPE
                ),
            ),
            other => (format!("{other:?}"), false),
        };
        let msg = format!(
            "cloudstore-{}.service: the agent {desc}{}",
            unit.role,
            if restart {
                format!("; restarting in {restart_ms} ms")
            } else {
                "; not restarted".into()
            }
        );
        unit.phase = if restart {
            Phase::RestartAt(Instant::now() + Duration::from_millis(restart_ms))
        } else {
            Phase::Stopped
        };
        let role = unit.role.clone();
        if was_ready || self.reported {
            report(event::LOG, &msg);
            report(
                event::AGENT,
                &format!("{role} {}", if restart { "restarting" } else { "stopped" }),
            );
        } else {
            self.failed(&format!(
                "{msg}; its log {} ends:\n{}",
                log.display(),
                tail(&log)
            ));
        }
    }

    fn next_deadline(&self) -> Option<Duration> {
        let unit = self.unit.as_ref()?;
        let now = Instant::now();
        let at = match unit.phase {
            Phase::Starting { since } => since + Duration::from_millis(self.state.ready_timeout_ms),
            Phase::Running => unit.last_watchdog + WATCHDOG,
            Phase::RestartAt(t) => t,
            Phase::Stopped => return None,
        };
        Some(at.saturating_duration_since(now))
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let ready_timeout = Duration::from_millis(self.state.ready_timeout_ms);
        let Some(unit) = self.unit.as_mut() else {
            return;
        };
        match unit.phase {
            Phase::Starting { since } if now >= since + ready_timeout => {
                let msg = format!(
                    "cloudstore-{}.service: no READY=1 within {} ms; killing it",
                    unit.role,
                    ready_timeout.as_millis()
                );
                if let Some(c) = unit.child.as_mut() {
                    let _ = c.kill();
                }
                // Killed: reap() sees SIGKILL, an abnormal end, and restarts it.
                unit.phase = Phase::Running;
                unit.last_watchdog = now;
                self.failed(&msg);
            }
            Phase::Running if now >= unit.last_watchdog + WATCHDOG => {
                if let Some(c) = unit.child.as_ref() {
                    let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGABRT);
                }
                unit.last_watchdog = now;
                let msg = format!(
                    "cloudstore-{}.service: watchdog timeout; aborting it",
                    unit.role
                );
                report(event::LOG, &msg);
            }
            Phase::RestartAt(t) if now >= t => self.start(),
            _ => {}
        }
    }

    /// SIGTERM to the agent, SIGKILL after TimeoutStopSec; returns PID 1's exit code.
    fn stop(&mut self) -> i32 {
        let Some(unit) = self.unit.as_mut() else {
            return 0;
        };
        let Some(mut child) = unit.child.take() else {
            return 0;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    report(event::LOG, "the agent did not stop within 30 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = fs::remove_dir_all(self.state.runtime_dir());
        // The helper unit stops after the consumer unit, which is ordered after it.
        if let Some(mut helper) = self.mount_helper.take() {
            let _ = kill(Pid::from_raw(helper.id() as i32), Signal::SIGTERM);
            let _ = helper.wait();
        }
        0
    }
}

/// `CLOUDSTORE_MOUNTS_SOCKET` (roles/consumer/mounts.rs): the helper's socket.
const MOUNTS_SOCKET_ENV: &str = "CLOUDSTORE_MOUNTS_SOCKET";

/// `/run/cloudstore-mounts/mounts.sock` of the qube (`RuntimeDirectory=cloudstore-mounts`).
fn mount_helper_socket(state: &QubeState) -> PathBuf {
    state
        .runtime_dir()
        .with_file_name("cloudstore-mounts")
        .join("mounts.sock")
}

/// Starts `cloudstore consumer-mounts` unless it runs, and waits for its socket (systemd
/// waits for its READY=1 before starting the unit ordered after it).
fn start_mount_helper(
    state: &QubeState,
    env: &[(String, String)],
    helper: &mut Option<Child>,
) -> std::result::Result<(), String> {
    if let Some(h) = helper.as_mut() {
        if matches!(h.try_wait(), Ok(None)) {
            return Ok(());
        }
    }
    let socket = mount_helper_socket(state);
    let _ = fs::remove_file(&socket);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.agent_log())
        .map_err(|e| format!("opening {}: {e}", state.agent_log().display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", state.agent_log().display()))?;
    let child = Command::new(&state.cloudstore)
        .arg("consumer-mounts")
        .env_clear()
        .envs(env.iter().cloned())
        .env(MOUNTS_SOCKET_ENV, &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .current_dir("/")
        .spawn()
        .map_err(|e| {
            format!(
                "cloudstore-consumer-mounts.service: starting {} consumer-mounts: {e}",
                state.cloudstore.display()
            )
        })?;
    *helper = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() >= deadline {
            return Err(format!(
                "cloudstore-consumer-mounts.service: no socket at {} within 10 s; its log {} ends:\n{}",
                socket.display(),
                state.agent_log().display(),
                tail(&state.agent_log())
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The last lines of a log file, for a failure report.
pub fn tail(path: &Path) -> String {
    let Ok(f) = fs::File::open(path) else {
        return "(no log)".into();
    };
    let mut lines: VecDeque<String> = VecDeque::new();
    for l in io::BufReader::new(f).lines().map_while(Result::ok) {
        if l.starts_with("--- qubes-sim: starting") {
            lines.clear();
            continue;
        }
        lines.push_back(l);
        if lines.len() > LOG_TAIL_LINES {
            lines.pop_front();
        }
    }
    if lines.is_empty() {
        "(empty)".into()
    } else {
        Vec::from(lines).join("\n")
    }
}
