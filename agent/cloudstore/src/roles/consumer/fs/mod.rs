//! The consumer's FUSE filesystem: a decrypted view of one volume whose ciphertext lives on
//! the storage qube, reached over one protocol stream.
//!
//! Layers (gocryptfs internal/fusefrontend does the same over a local directory):
//! - [`fuse`](self::fuse): the `fuser::Filesystem` adapter. The kernel's requests are read
//!   on one thread and run on a pool of workers, so slow storage round trips overlap
//!   (pipelining) and crypto runs off the FUSE thread.
//! - `core`: each operation as plaintext name → (directory IV, encrypted name) → protocol
//!   request; content through `cloudstore_format::file::CryptFile` per 4 KiB block.
//! - `nodes`: the inode table over ciphertext paths (names per parent, hard links by the
//!   storage inode number).
//! - `conn`: the stream to storage, reconnected with backoff; calls are replayed until the
//!   request timeout.
//! - `conflicts`: parked sync conflicts adopted as `NAME (conflict YYYY-MM-DD HHMM).EXT`.
//!
//! Errors become errno in one place ([`Fail`]); anything that turns into EIO is logged with
//! the plaintext path.

mod ahead;
mod behind;
mod conflicts;
mod conn;
mod core;
mod fuse;
mod nodes;
mod unlinks;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cloudstore_protocol::{ErrorCode, RemoteError};

/// Locks `m`, taking the data of a lock a panicking thread left: every structure these
/// locks guard stays consistent between statements, and the mount keeps serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's two halves: what storage sends (a descriptor the protocol client can
/// poll) and what goes to storage.
pub type Streams = (
    Box<dyn cloudstore_protocol::ByteStream>,
    Box<dyn Write + Send>,
);

/// How the filesystem reaches storage: each call yields a fresh byte stream to the
/// `cloudstore.Volume+VOLUME` service (the protocol handshake has not been sent yet).
pub trait Connector: Send + Sync {
    fn connect(&self) -> std::io::Result<Streams>;
}

/// Connects straight to the storage agent's `volume.sock`, writing the descriptor
/// `cloudstore.Volume+VOLUME SOURCE\0` first exactly as qrexec-agent does for a socket
/// service (qubes-core-qrexec doc/execution.rst). For tests and tools in the storage qube.
#[derive(Clone, Debug)]
pub struct UnixSocketConnector {
    pub socket: PathBuf,
    pub volume: String,
    /// The calling qube's name as storage sees it.
    pub source: String,
}

impl Connector for UnixSocketConnector {
    fn connect(&self) -> std::io::Result<Streams> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e}", self.socket.display()))
        })?;
        let mut d = format!("cloudstore.Volume+{} {}", self.volume, self.source).into_bytes();
        d.push(0);
        s.write_all(&d)?;
        let r = s.try_clone()?;
        Ok((Box::new(r), Box::new(ShutdownOnDrop(s))))
    }
}

/// The write half: shuts the socket down when dropped, so the reader thread sees the end.
struct ShutdownOnDrop(UnixStream);

impl Write for ShutdownOnDrop {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// How to mount one volume.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// The volume's name (for logs and the mount's source name).
    pub volume_name: String,
    pub mountpoint: PathBuf,
    /// Owner shown for every file (the qube's user).
    pub uid: u32,
    pub gid: u32,
    /// Let users other than the mounting one in (needs `user_allow_other` for non-root).
    pub allow_other: bool,
    /// Longest any operation may take, reconnection included; then EIO and a log entry.
    pub request_timeout: Duration,
    /// How long the kernel may trust attributes and names without asking, while storage's
    /// change pushes are not followed (before subscribing, after the stream is lost).
    pub attr_ttl: Duration,
    /// The same while they are followed: every change made elsewhere is then pushed and
    /// dropped from the kernel's caches as it comes (and everything once a lost stream is
    /// replaced), so the time only bounds how long a missed push could go unnoticed.
    pub followed_ttl: Duration,
    /// Worker threads serving requests.
    pub workers: usize,
}

impl FsOptions {
    /// Defaults: 1 s caches, 60 s while storage's pushes are followed, 30 s request timeout
    /// (a storage qube restart takes a few seconds), 16 workers (enough to keep the
    /// protocol's 64-request window busy with 1 MiB writes on two cores).
    pub fn new(volume_name: &str, mountpoint: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        FsOptions {
            volume_name: volume_name.to_owned(),
            mountpoint: mountpoint.into(),
            uid,
            gid,
            allow_other: false,
            request_timeout: Duration::from_secs(30),
            attr_ttl: Duration::from_secs(1),
            followed_ttl: Duration::from_secs(60),
            workers: 16,
        }
    }
}

/// What `cloudstore status` shows for a mounted volume; shared with the serving threads.
#[derive(Debug, Default)]
pub struct FsStatus {
    connected: AtomicBool,
    /// Storage's change pushes reach the mount (its subscription is answered).
    following: AtomicBool,
    pending_writes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl FsStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn following(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }
    /// Writes received from applications and not yet acknowledged by storage.
    pub fn pending_writes(&self) -> u64 {
        self.pending_writes.load(Ordering::Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }
    pub(crate) fn set_following(&self, yes: bool) {
        self.following.store(yes, Ordering::SeqCst);
    }
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }
    pub(crate) fn set_error(&self, e: String) {
        *lock(&self.last_error) = Some(e);
    }
    pub(crate) fn write_started(&self) {
        self.pending_writes.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn write_ended(&self) {
        self.pending_writes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an operation failed: the errno for the kernel and a message for the log.
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub errno: i32,
    pub msg: String,
    /// Set for remote errors after a lost connection: the request may have been applied.
    pub maybe_applied: bool,
    pub code: Option<ErrorCode>,
}

impl Fail {
    pub(crate) fn new(errno: i32, msg: impl Into<String>) -> Fail {
        Fail {
            errno,
            msg: msg.into(),
            maybe_applied: false,
            code: None,
        }
    }
    pub(crate) fn io(msg: impl Into<String>) -> Fail {
        Fail::new(libc::EIO, msg)
    }
    pub(crate) fn timeout(msg: impl Into<String>) -> Fail {
        Fail::new(libc::EIO, msg)
    }
    /// The one place protocol error codes become errno (docs/protocol.md "Error codes").
    pub(crate) fn remote(e: RemoteError, maybe_applied: bool) -> Fail {
        let errno = match e.code {
            // Local-only codes: to an application the storage simply failed.
            ErrorCode::TimedOut | ErrorCode::ConnectionLost => libc::EIO,
            // Storage refusing a symlink where it needs a file or directory means the
            // tree holds something gocryptfs would not have made.
            c => c.errno(),
        };
        Fail {
            errno,
            msg: e.to_string(),
            maybe_applied,
            code: Some(e.code),
        }
    }
    pub(crate) fn is(&self, code: ErrorCode) -> bool {
        self.code == Some(code)
    }
}

/// A mounted, not yet serving filesystem. Mounting needs privileges; serving does not, so
/// the caller can sandbox itself between [`mount`] and [`MountedFs::serve`].
pub struct MountedFs {
    session: fuser::Session<fuse::FuseFs>,
    core: Arc<core::Core>,
    status: Arc<FsStatus>,
}

impl MountedFs {
    /// The status shared with the serving threads.
    pub fn status(&self) -> Arc<FsStatus> {
        self.status.clone()
    }

    /// Connects to storage and serves the kernel until the filesystem is unmounted
    /// (`fusermount3 -u`). Starts the worker threads.
    pub fn serve(mut self) -> anyhow::Result<()> {
        let mountpoint = self.core.opts.mountpoint.clone();
        self.core.start();
        let res = self.session.run();
        self.core.stop();
        res.with_context(|| format!("serving the FUSE mount at {}", mountpoint.display()))
    }
}

/// Buffers at least this big get their own mapping, returned to the kernel when freed.
/// glibc raises its threshold to the largest block freed so far (up to 32 MiB), so after
/// the first 1 MiB FUSE request every worker thread's arena keeps its 1 MiB buffers (the
/// request, its ciphertext, the protocol frame) resident: about 35 MiB of the consumer's
/// 50 MiB peak in scripts/bench.sh. 128 KiB is glibc's own starting value (mallopt(3)).
/// The data path's own large buffers are reused instead (`cloudstore_protocol::buffers`),
/// so a streaming read or write does not map and unmap one per request.
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Pins glibc's mmap threshold (the worker process serves one volume; this is its heap).
fn limit_heap_retention() {
    // SAFETY: mallopt only changes allocator parameters; it is called before the serving
    // threads start, and glibc serialises it against allocations anyway.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        tracing::warn!(
            "mallopt(M_MMAP_THRESHOLD) refused; peak memory may grow with large requests"
        );
    }
}

/// Mounts an empty FUSE filesystem named `cloudstore:VOLUME` at `mountpoint` and returns
/// the /dev/fuse descriptor that serves it ([`attach`]). Needs CAP_SYS_ADMIN in the mount
/// namespace the mount is for: the consumer's mount helper calls it, never a worker. The
/// kernel queues requests (the first is INIT) until a server reads them.
pub fn mount_device(volume_name: &str, mountpoint: &Path) -> anyhow::Result<OwnedFd> {
    use std::os::unix::fs::PermissionsExt;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("opening /dev/fuse (is the fuse module loaded?)")?;
    let root_mode = std::fs::metadata(mountpoint)
        .with_context(|| format!("reading {}", mountpoint.display()))?
        .permissions()
        .mode();
    // user_id/group_id name the mount's owner, root; allow_other lets everybody in and
    // default_permissions has the kernel check the modes the filesystem reports.
    let options = format!(
        "fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions,allow_other,subtype=cloudstore",
        device.as_raw_fd()
    );
    nix::mount::mount(
        Some(format!("cloudstore:{volume_name}").as_str()),
        mountpoint,
        Some("fuse"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| format!("mounting FUSE at {}", mountpoint.display()))?;
    Ok(device.into())
}

/// [`mount_device`] and [`attach`] in one process, for one that is root in the mount
/// namespace the mount is for (tests and benchmarks; the consumer role splits the two
/// between its mount helper and a worker).
pub fn mount(
    opts: FsOptions,
    volume: cloudstore_format::Volume,
    connector: Arc<dyn Connector>,
) -> anyhow::Result<MountedFs> {
    let device = mount_device(&opts.volume_name, &opts.mountpoint)?;
    attach(opts, volume, connector, device)
}

/// Attaches the filesystem of `volume` (unlocked) to a mounted /dev/fuse descriptor. Starts
/// no thread and touches no network: the storage connection is made by
/// [`MountedFs::serve`].
pub fn attach(
    opts: FsOptions,
    volume: cloudstore_format::Volume,
    connector: Arc<dyn Connector>,
    device: OwnedFd,
) -> anyhow::Result<MountedFs> {
    limit_heap_retention();
    let status = Arc::new(FsStatus::default());
    let acl = if opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let core = Arc::new(core::Core::new(opts, volume, connector, status.clone()));
    let fs = fuse::FuseFs::new(core.clone());
    let session = fuser::Session::from_fd(fs, device, acl);
    core.set_notifier(session.notifier());
    Ok(MountedFs {
        session,
        core,
        status,
    })
}
