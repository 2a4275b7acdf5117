//! One worker process per unlocked volume: it receives the volume's key from the parent,
//! mounts, confines itself (capabilities dropped, landlock, seccomp) and serves the FUSE
//! mount until the parent unmounts it, then wipes its keys and exits.
//!
//! The worker is the `cloudstore` binary itself, re-executed with the hidden subcommand
//! `consumer-worker`. Its fd 3 is one end of a socketpair whose other end the parent keeps:
//! the key material arrives there (never in argv or the environment, which /proc shows to
//! others), then JSON lines: the worker's "mounted" report and the parent's requests
//! (status, versions, restore, probe) with their answers.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cloudstore_format::{Config, Volume};
use cloudstore_sandbox::{Id, Policy, Sandbox, Vars};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::connect::{self, QrexecConnector};
use super::control::VersionLine;
use super::fs;
use super::keys::{self, KeyMaterial};

/// The worker's end of the socketpair.
const CHANNEL_FD: i32 = 3;
/// The mount's /dev/fuse descriptor, made by the mount helper ([`super::mounts`]).
const DEVICE_FD: i32 = 4;
/// The worker's sandbox policy, compiled in.
const POLICY: &str = include_str!("sandbox.json");
const POLICY_ORIGIN: &str = "agent/cloudstore/src/roles/consumer/sandbox.json";
/// How long the parent waits for the worker to mount: scrypt is done already, so this is
/// the exec, the mount and the sandbox; a loaded machine needs well under this.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker request (versions over a fresh qrexec connection) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the worker gets to finish after its mount is gone (flushing, wiping keys).
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// Uid of `nobody` (Debian, Fedora): the worker's user when the `cloudstore` system user
/// of the policy does not exist (a qube without the sysusers snippet applied).
const NOBODY: u32 = 65534;
/// The group of the qrexec client's sockets and devices in a Qubes qube.
const QUBES_GROUP: &str = "qubes";

/// Arguments of the hidden `cloudstore consumer-worker` subcommand.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub volume: String,
    #[arg(long)]
    pub mountpoint: PathBuf,
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WorkerRequest {
    Status,
    Versions {
        rel: PathBuf,
    },
    Restore {
        rel: PathBuf,
        id: Option<u64>,
        at: Option<i64>,
    },
    Probe {
        open: Vec<PathBuf>,
    },
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum WorkerReply {
    Mounted {
        sandbox: String,
    },
    Failed {
        message: String,
    },
    Status {
        connected: bool,
        /// Storage's change pushes are followed (changes made elsewhere show at once).
        #[serde(default)]
        following: bool,
        pending_writes: u64,
        last_error: Option<String>,
    },
    Versions {
        path: String,
        versions: Vec<VersionLine>,
        truncated: bool,
    },
    Restored {
        version: VersionLine,
    },
    Probe {
        results: Vec<String>,
    },
    Error {
        message: String,
    },
}

fn send(mut s: &UnixStream, reply: &WorkerReply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    s.write_all(&line)
}

fn recv<T: for<'a> Deserialize<'a>, R: BufRead>(r: &mut R) -> anyhow::Result<Option<T>> {
    let mut line = Vec::new();
    // A worker answer is at most a version list; see control::MAX_REPLY.
    let n = std::io::Read::take(&mut *r, super::control::MAX_REPLY).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_slice(&line).context("malformed message")?,
    ))
}

// ---------------------------------------------------------------- parent side

/// The parent's handle on a running worker.
pub struct Worker {
    pub volume: String,
    pub mountpoint: PathBuf,
    pub pid: u32,
    child: Mutex<Child>,
    chan: Mutex<(UnixStream, BufReader<UnixStream>)>,
}

impl Worker {
    /// Starts the worker for `volume`, hands it the mount's /dev/fuse descriptor and the
    /// key, and waits until it has confined itself and serves. On error the worker is gone;
    /// the caller unmounts.
    pub fn start(
        volume: &str,
        mountpoint: &Path,
        uid: u32,
        gid: u32,
        device: OwnedFd,
        keys: &KeyMaterial,
    ) -> anyhow::Result<Worker> {
        let (ours, theirs) = UnixStream::pair().context("creating the worker's socketpair")?;
        // The running image itself: after a package upgrade or rebuild the path
        // current_exe() names is "…/cloudstore (deleted)" and cannot be started.
        let exe = std::path::Path::new("/proc/self/exe");
        let theirs_fd = theirs.as_raw_fd();
        let device_fd = device.as_raw_fd();
        let mut cmd = Command::new(exe);
        cmd.arg0("cloudstore")
            .arg("consumer-worker")
            .arg("--volume")
            .arg(volume)
            .arg("--mountpoint")
            .arg(mountpoint)
            .arg("--uid")
            .arg(uid.to_string())
            .arg("--gid")
            .arg(gid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: fcntl and dup2 are async-signal-safe; they run in the forked child before
        // exec and only touch descriptors. dup2 clears FD_CLOEXEC on fds 3 and 4, so exactly
        // this end of the socketpair and the device cross the exec (other descriptors keep
        // their O_CLOEXEC).
        unsafe {
            cmd.pre_exec(move || {
                // Copies above both targets first: dup2 onto itself would keep O_CLOEXEC.
                let channel_tmp = libc::fcntl(theirs_fd, libc::F_DUPFD_CLOEXEC, 10);
                let device_tmp = libc::fcntl(device_fd, libc::F_DUPFD_CLOEXEC, 10);
                if channel_tmp < 0
                    || device_tmp < 0
                    || libc::dup2(channel_tmp, CHANNEL_FD) < 0
                    || libc::dup2(device_tmp, DEVICE_FD) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the worker {} consumer-worker", exe.display()))?;
        drop(theirs);
        drop(device);
        let pid = child.id();
        let reader = BufReader::new(ours.try_clone()?);
        let mut w = Worker {
            volume: volume.to_owned(),
            mountpoint: mountpoint.to_owned(),
            pid,
            child: Mutex::new(child),
            chan: Mutex::new((ours, reader)),
        };
        match w.handshake(keys) {
            Ok(sandbox) => {
                info!(volume, pid, mountpoint = %mountpoint.display(), "worker mounted the volume; {sandbox}");
                Ok(w)
            }
            Err(e) => {
                w.kill_now();
                Err(e)
            }
        }
    }

    fn handshake(&mut self, keys: &KeyMaterial) -> anyhow::Result<String> {
        let chan = self.chan.get_mut().unwrap_or_else(|p| p.into_inner());
        keys.send(&mut chan.0)
            .context("handing the key to the worker")?;
        chan.1.get_ref().set_read_timeout(Some(MOUNT_TIMEOUT))?;
        let reply: Option<WorkerReply> =
            recv(&mut chan.1).context("waiting for the worker to mount")?;
        match reply {
            Some(WorkerReply::Mounted { sandbox }) => Ok(sandbox),
            Some(WorkerReply::Failed { message }) => Err(anyhow!("{message}")),
            Some(other) => bail!("the worker answered {other:?} instead of reporting its mount"),
            None => {
                let status = self.wait_timeout(Duration::from_secs(2));
                bail!(
                    "the worker ended before mounting ({}); see the journal",
                    status.map_or("still running".into(), |s| s.to_string())
                )
            }
        }
    }

    /// One request, one answer.
    pub fn request(&self, req: &WorkerRequest) -> anyhow::Result<WorkerReply> {
        let mut chan = self.chan.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        chan.0.write_all(&line).with_context(|| {
            format!(
                "asking the worker of volume {} (pid {})",
                self.volume, self.pid
            )
        })?;
        chan.1.get_ref().set_read_timeout(Some(REQUEST_TIMEOUT))?;
        match recv::<WorkerReply, _>(&mut chan.1)? {
            Some(WorkerReply::Error { message }) => Err(anyhow!("{message}")),
            Some(r) => Ok(r),
            None => bail!(
                "the worker of volume {} (pid {}) is gone",
                self.volume,
                self.pid
            ),
        }
    }

    /// The worker's exit status if it has ended (reaping it).
    pub fn try_exited(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    /// Waits up to `limit` for the worker to exit.
    pub fn wait_timeout(&self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the mount is gone: waits for the worker to wipe its keys and exit; kills it
    /// if it does not within the grace period (the kernel frees its memory either way).
    pub fn finish(&self) -> ExitStatus {
        // The worker sees its mount end and exits by itself (keys wiped on the way).
        if let Some(s) = self.wait_timeout(EXIT_GRACE) {
            return s;
        }
        // Closing our end makes its control thread wipe the keys and exit.
        if let Ok(chan) = self.chan.lock() {
            let _ = chan.0.shutdown(std::net::Shutdown::Both);
        }
        match self.wait_timeout(Duration::from_secs(2)) {
            Some(s) => s,
            None => {
                warn!(volume = %self.volume, pid = self.pid, "the worker did not exit within {EXIT_GRACE:?} of the unmount; killing it");
                self.kill_now()
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill_now(&self) -> ExitStatus {
        let killed = self.child.lock().unwrap_or_else(|p| p.into_inner()).kill();
        if let Err(e) = &killed {
            // Without CAP_KILL (not in the unit's bounding set) root cannot signal a worker
            // running as another user; closing the channel makes it exit by itself.
            warn!(volume = %self.volume, pid = self.pid, "cannot kill the worker ({e}); closing its channel");
            if let Ok(chan) = self.chan.lock() {
                let _ = chan.0.shutdown(std::net::Shutdown::Both);
            }
        }
        self.wait_timeout(EXIT_GRACE)
            .unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9))
    }
}

// ---------------------------------------------------------------- worker side

/// `cloudstore consumer-worker`: never run by hand; the consumer agent starts it.
pub fn worker_main(args: WorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    crate::logging::init();
    // SAFETY: fd 3 was set up by the parent's pre_exec (dup2 of its socketpair end) and
    // nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .context("fd 3 is not open: consumer-worker is started by the consumer agent only")?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("fd 3 is not a socket: consumer-worker is started by the consumer agent only");
    }
    let chan = UnixStream::from(fd);
    // SAFETY: as fd 3, fd 4 was set up by the parent's pre_exec and is ours alone.
    let device = unsafe { OwnedFd::from_raw_fd(DEVICE_FD) };
    nix::sys::stat::fstat(device.as_raw_fd())
        .context("fd 4 is not open: consumer-worker is started by the consumer agent only")?;
    let span = tracing::info_span!("worker", volume = %args.volume);
    let _e = span.enter();
    match prepare(&args, &chan, device) {
        Ok((mounted, ctl)) => {
            let status = mounted.status();
            let report = ctl.report.clone();
            send(&chan, &WorkerReply::Mounted { sandbox: report })?;
            let ctl = Arc::new(ctl);
            let c2 = ctl.clone();
            let ctl_chan = chan.try_clone()?;
            std::thread::Builder::new()
                .name("worker-control".into())
                .spawn(move || control_loop(&c2, ctl_chan, status))
                .context("starting the worker's control thread")?;
            let res = mounted.serve();
            ctl.wipe();
            match res {
                Ok(()) => {
                    info!("the mount is gone; keys wiped; worker exiting");
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Err(e) => {
                    error!("{e:#}");
                    Ok(std::process::ExitCode::FAILURE)
                }
            }
        }
        Err(e) => {
            let message = format!("{e:#}");
            error!("{message}");
            let _ = send(&chan, &WorkerReply::Failed { message });
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// What the control thread needs: its own copy of the volume keys (wiped with
/// [`Control::wipe`]) and the way to reach storage.
struct Control {
    vol: Mutex<Option<Volume>>,
    program: PathBuf,
    volume: String,
    report: String,
}

impl Control {
    fn wipe(&self) {
        // Volume's keys are Zeroizing: dropping it wipes them.
        drop(self.vol.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

fn prepare(
    args: &WorkerArgs,
    chan: &UnixStream,
    device: OwnedFd,
) -> anyhow::Result<(fs::MountedFs, Control)> {
    keys::lock_process_memory()?;
    let mut r = chan;
    let km = KeyMaterial::receive(&mut r)?;
    let config = Config::parse(&km.config).context("the gocryptfs.conf from the parent")?;
    let fs_vol = Volume::new(&config, &km.key).context("deriving the volume keys")?;
    let ctl_vol = Volume::new(&config, &km.key).context("deriving the volume keys")?;
    drop(km);
    let program = connect::resolve_program(&connect::client_program())?;
    let connector = Arc::new(QrexecConnector::new(program.clone(), &args.volume));
    let mut opts = fs::FsOptions::new(&args.volume, &args.mountpoint, args.uid, args.gid);
    opts.allow_other = true;
    let mounted = fs::attach(opts, fs_vol, connector, device)?;

    let mut policy = Policy::from_json_str(POLICY, POLICY_ORIGIN)?;
    if let Some(Id::Name(name)) = policy.user() {
        if nix::unistd::User::from_name(name).ok().flatten().is_none() {
            warn!(
                "the system user {name:?} of the worker's sandbox does not exist; running the worker as nobody ({NOBODY})"
            );
            policy.set_credentials(Some(Id::Number(NOBODY)), Some(Id::Number(NOBODY)));
        }
    }
    // In a qube, qrexec-client-vm needs group `qubes` (the qrexec agent's socket and the
    // /dev/xen devices it opens are root:qubes 0660), so the worker runs with it as its
    // group where it exists; the sandbox leaves no supplementary groups.
    if let Ok(Some(g)) = nix::unistd::Group::from_name(QUBES_GROUP) {
        let user = policy.user().cloned();
        policy.set_credentials(user, Some(Id::Number(g.gid.as_raw())));
    }
    let vars = Vars::new().with("connector", &program);
    let report = Sandbox::apply(&policy, &vars)
        .with_context(|| format!("confining the worker with {POLICY_ORIGIN}"))?;
    for w in &report.warnings {
        warn!("{w}");
    }
    info!("{report}");
    Ok((
        mounted,
        Control {
            vol: Mutex::new(Some(ctl_vol)),
            program,
            volume: args.volume.clone(),
            report: report.to_string(),
        },
    ))
}

fn control_loop(ctl: &Control, chan: UnixStream, status: Arc<fs::FsStatus>) {
    let mut reader = BufReader::new(match chan.try_clone() {
        Ok(c) => c,
        Err(e) => {
            error!("cloning the control channel: {e}");
            return;
        }
    });
    loop {
        let req: WorkerRequest = match recv(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => {
                // The parent is gone (or finished with us): it alone can unmount, so the
                // keys have no further use here. Exiting aborts the FUSE connection.
                ctl.wipe();
                warn!("the consumer agent closed the worker's channel; keys wiped; worker exiting");
                std::process::exit(0);
            }
            Err(e) => {
                error!("bad request from the parent: {e:#}");
                ctl.wipe();
                std::process::exit(1);
            }
        };
        let reply = match handle(ctl, &status, req) {
            Ok(r) => r,
            Err(e) => WorkerReply::Error {
                message: format!("{e:#}"),
            },
        };
        if send(&chan, &reply).is_err() {
            ctl.wipe();
            std::process::exit(0);
        }
    }
}

fn handle(ctl: &Control, status: &fs::FsStatus, req: WorkerRequest) -> anyhow::Result<WorkerReply> {
    match req {
        WorkerRequest::Status => Ok(WorkerReply::Status {
            connected: status.connected(),
            following: status.following(),
            pending_writes: status.pending_writes(),
            last_error: status.last_error(),
        }),
        WorkerRequest::Versions { rel } => {
            let guard = ctl.vol.lock().unwrap_or_else(|p| p.into_inner());
            let vol = guard
                .as_ref()
                .ok_or_else(|| anyhow!("the volume is being locked"))?;
            let conn = QrexecConnector::new(ctl.program.clone(), &ctl.volume);
            let client = conn.client(connect::client_config())?;
            let (_, list, truncated) = super::versions::list(&client, vol, &rel)?;
            Ok(WorkerReply::Versions {
                path: rel.display().to_string(),
                versions: list.into_iter().map(|(_, l)| l).collect(),
                truncated,
            })
        }
        WorkerRequest::Restore { rel, id, at } => {
            let guard = ctl.vol.lock().unwrap_or_else(|p| p.into_inner());
            let vol = guard
                .as_ref()
                .ok_or_else(|| anyhow!("the volume is being locked"))?;
            let conn = QrexecConnector::new(ctl.program.clone(), &ctl.volume);
            let client = conn.client(connect::client_config())?;
            let version = super::versions::restore(&client, vol, &rel, id, at)?;
            Ok(WorkerReply::Restored { version })
        }
        WorkerRequest::Probe { open } => Ok(WorkerReply::Probe {
            results: probe(&open),
        }),
    }
}

/// The sandbox self-test: what happens when this worker opens each path, and when a child
/// of it (so that a seccomp trap ends the child, not the mount) creates an AF_INET socket.
fn probe(paths: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        out.push(match std::fs::File::open(p) {
            Ok(_) => format!("open {}: allowed", p.display()),
            Err(e) => format!("open {}: refused: {e}", p.display()),
        });
    }
    // SAFETY: the child only calls socket(2) and _exit(2), both async-signal-safe, so
    // forking a multi-threaded process is sound here.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain syscalls in the forked child; see above.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            libc::_exit(if fd >= 0 { 0 } else { 1 });
        }
    }
    if pid < 0 {
        out.push(format!(
            "socket AF_INET: fork failed: {}",
            std::io::Error::last_os_error()
        ));
        return out;
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    out.push(if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => "socket AF_INET: allowed".to_owned(),
            1 => "socket AF_INET: refused with an error".to_owned(),
            c => format!(
                "socket AF_INET: child exited {c} (seccomp trap exits {})",
                cloudstore_sandbox::SECCOMP_VIOLATION_EXIT_CODE
            ),
        }
    } else {
        format!(
            "socket AF_INET: child ended by signal {}",
            libc::WTERMSIG(status)
        )
    });
    out
}
