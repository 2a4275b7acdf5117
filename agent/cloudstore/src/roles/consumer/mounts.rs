//! The consumer role's mount helper: the one part of the role that mounts and unmounts.
//!
//! A FUSE mount has to be made in the qube's own mount namespace for the user's programs to
//! see it, and every systemd option that narrows a service's view of the filesystem
//! (`ProtectSystem=`, `ProtectHome=`, `PrivateDevices=`, `PrivateTmp=`, ...) gives the
//! service a mount namespace of its own, whose mounts never propagate back
//! (systemd.exec(5), `PrivateMounts=`, `MountFlags=`). So the role is two units:
//! `cloudstore-consumer-mounts.service` runs `cloudstore consumer-mounts` (this module's
//! [`helper_main`]) in the qube's namespace with `CAP_SYS_ADMIN`, and
//! `cloudstore-consumer.service` runs the agent with all of those options, no mount
//! syscalls and no device but what it is handed: the helper sends it each mount's
//! /dev/fuse descriptor (SCM_RIGHTS) over `/run/cloudstore-mounts/mounts.sock`.
//!
//! The helper is told only a volume name. It reads the qube's configuration from qubesdb
//! itself, mounts only a configured volume and only at that volume's mount point, and
//! unmounts only a `cloudstore:VOLUME` FUSE mount; only root may connect. A compromised
//! agent can thus do through it what fusermount3 lets any user do with their own
//! directories, and nothing more.
//!
//! The Qubes stand-in runs the helper as systemd does and names its socket in
//! `CLOUDSTORE_MOUNTS_SOCKET`. Outside systemd and without it, the agent is root in the
//! machine's namespace and calls the same functions in process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::user_entry;
use crate::config::{self, Config};

/// Overrides [`DEFAULT_SOCKET`] (tests, the Qubes stand-in).
pub const SOCKET_ENV: &str = "CLOUDSTORE_MOUNTS_SOCKET";
/// In `RuntimeDirectory=cloudstore-mounts` (root, 0700) of the helper's unit.
pub const DEFAULT_SOCKET: &str = "/run/cloudstore-mounts/mounts.sock";
/// A request or reply is a short JSON line; anything longer is not ours.
const MAX_LINE: u64 = 4096;
/// A mount or unmount is quick; the helper never waits on the FUSE server.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Agent → helper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum MountRequest {
    Mount {
        volume: String,
    },
    Unmount {
        volume: String,
        mountpoint: PathBuf,
        detach: bool,
    },
}

/// Helper → agent. `Mounted` carries the /dev/fuse descriptor beside it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
enum MountReply {
    Mounted {
        mountpoint: PathBuf,
        uid: u32,
        gid: u32,
    },
    Unmounted {
        outcome: Unmounted,
    },
    Error {
        message: String,
    },
}

/// A fresh mount, not yet served: the kernel queues requests on `device` until a worker
/// serves them.
pub struct Mounted {
    pub mountpoint: PathBuf,
    /// The qube's user, who owns the mount point.
    pub uid: u32,
    pub gid: u32,
    pub device: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmounted {
    Done,
    /// Something still uses the mount (only without `detach`).
    Busy,
    /// No cloudstore mount of this volume was there.
    NotMounted,
}

/// How the agent reaches the mount helper.
pub enum Mounter {
    /// The agent is root in the qube's own mount namespace (no systemd unit around it).
    InProcess,
    /// The helper's socket (`cloudstore-consumer-mounts.service`).
    Socket(PathBuf),
}

impl Mounter {
    /// The helper's socket if one is configured or present; in-process mounting outside
    /// systemd; an error under systemd without the helper, whose namespace would hide every
    /// mount the agent made itself.
    pub fn from_env() -> anyhow::Result<Mounter> {
        let path = socket_path();
        if std::env::var_os(SOCKET_ENV).is_some() || path.exists() {
            return Ok(Mounter::Socket(path));
        }
        if std::env::var_os("INVOCATION_ID").is_some() {
            bail!(
                "no mount helper listens on {}: cloudstore-consumer-mounts.service is not running (cloudstore-consumer.service requires it; see `systemctl status cloudstore-consumer-mounts`)",
                path.display()
            );
        }
        Ok(Mounter::InProcess)
    }

    pub fn describe(&self) -> String {
        match self {
            Mounter::InProcess => "mounts made by the agent itself".into(),
            Mounter::Socket(p) => format!("mounts made by the helper on {}", p.display()),
        }
    }

    /// Mounts `volume` at its mount point (the agent's `config` names it in process; the
    /// helper reads its own from qubesdb).
    pub fn mount(&self, config: &Config, volume: &str) -> anyhow::Result<Mounted> {
        match self {
            Mounter::InProcess => mount_volume(config, volume),
            Mounter::Socket(p) => {
                let (reply, fd) = ask(
                    p,
                    &MountRequest::Mount {
                        volume: volume.to_owned(),
                    },
                )?;
                match reply {
                    MountReply::Mounted {
                        mountpoint,
                        uid,
                        gid,
                    } => Ok(Mounted {
                        mountpoint,
                        uid,
                        gid,
                        device: fd.ok_or_else(|| {
                            anyhow!("the mount helper reported a mount but sent no /dev/fuse descriptor")
                        })?,
                    }),
                    MountReply::Error { message } => Err(anyhow!("{message}")),
                    other => bail!("the mount helper answered {other:?} to a mount request"),
                }
            }
        }
    }

    /// Unmounts the cloudstore mount of `volume` at `mountpoint`; `detach` leaves it to the
    /// kernel to finish once unused (MNT_DETACH).
    pub fn unmount(
        &self,
        volume: &str,
        mountpoint: &Path,
        detach: bool,
    ) -> anyhow::Result<Unmounted> {
        match self {
            Mounter::InProcess => unmount_volume(volume, mountpoint, detach),
            Mounter::Socket(p) => {
                let (reply, _) = ask(
                    p,
                    &MountRequest::Unmount {
                        volume: volume.to_owned(),
                        mountpoint: mountpoint.to_owned(),
                        detach,
                    },
                )?;
                match reply {
                    MountReply::Unmounted { outcome } => Ok(outcome),
                    MountReply::Error { message } => Err(anyhow!("{message}")),
                    other => bail!("the mount helper answered {other:?} to an unmount request"),
                }
            }
        }
    }

    /// Detaches a cloudstore mount of `volume` left at `mountpoint` (its worker is gone),
    /// logging what happened.
    pub fn unmount_stale(&self, volume: &str, mountpoint: &Path) {
        match self.unmount(volume, mountpoint, true) {
            Ok(Unmounted::Done) => {
                warn!(volume, mountpoint = %mountpoint.display(), "detached a cloudstore mount whose worker is gone")
            }
            Ok(_) => {}
            Err(e) => {
                error!(volume, mountpoint = %mountpoint.display(), "cannot detach the stale cloudstore mount: {e:#}")
            }
        }
    }
}

/// One request on a fresh connection, its reply and the descriptor sent with it.
fn ask(socket: &Path, req: &MountRequest) -> anyhow::Result<(MountReply, Option<OwnedFd>)> {
    let what = || format!("the mount helper on {}", socket.display());
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is cloudstore-consumer-mounts.service running?)",
            what()
        )
    })?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)
        .with_context(|| format!("writing to {}", what()))?;
    let (reply, fd) = recv_line_with_fd(&s).with_context(|| format!("reading {}", what()))?;
    let reply: MountReply = serde_json::from_slice(&reply)
        .with_context(|| format!("malformed answer from {}", what()))?;
    Ok((reply, fd))
}

/// Reads one line; a descriptor sent with any part of it is returned beside it.
fn recv_line_with_fd(s: &UnixStream) -> anyhow::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fd = None;
    loop {
        let mut buf = [0u8; 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in this process for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            bail!("the connection closed before a complete answer");
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() as u64 > MAX_LINE {
            bail!("an answer longer than {MAX_LINE} bytes");
        }
        if line.ends_with(b"\n") {
            line.pop();
            return Ok((line, fd));
        }
    }
}

fn send_reply(s: &UnixStream, reply: &MountReply, fd: Option<&OwnedFd>) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    let iov = [IoSlice::new(&line)];
    let fds = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = fds
        .as_ref()
        .map(|f| ControlMessage::ScmRights(f))
        .into_iter()
        .collect();
    let sent = sendmsg::<()>(s.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)?;
    if sent < line.len() {
        (&*s).write_all(&line[sent..])?;
    }
    Ok(())
}

// ---------------------------------------------------------------- the mounting itself

/// Parses /proc/self/mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// `(filesystem type, source)` of the mount exactly at `path`, if `path` is a mount point.
pub fn mount_at(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() > 4 && unescape_mountinfo(fields[4]) == path {
            // The last mount at a path is the visible one.
            found = Some((
                fields.get(sep + 1).copied().unwrap_or("").to_owned(),
                fields.get(sep + 2).copied().unwrap_or("").to_owned(),
            ));
        }
    }
    found
}

/// The filesystem type of the mount exactly at `path`, if `path` is a mount point.
fn mount_type_at(path: &Path) -> Option<String> {
    mount_at(path).map(|(t, _)| t)
}

/// Whether the cloudstore FUSE mount of `volume` (source `cloudstore:VOLUME`, see
/// `fs::mount_device`) is at `path`.
fn is_cloudstore_mount_of(path: &Path, volume: &str) -> bool {
    mount_at(path).is_some_and(|(t, src)| {
        t.starts_with("fuse") && src.strip_prefix("cloudstore:") == Some(volume)
    })
}

/// Makes `dir` exist as a real directory (no symlink anywhere we create or check), owned by
/// `uid:gid` if we create it.
fn ensure_dir(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symbolic link; refusing to mount through it (remove it, cloudstore creates the directory)",
            dir.display()
        ),
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", dir.display()),
        Ok(m) if m.uid() != 0 && m.uid() != uid => bail!(
            "{} belongs to uid {}, neither root nor the qube's user; refusing to mount there",
            dir.display(),
            m.uid()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            match nix::unistd::chown(dir, Some(uid.into()), Some(gid.into())) {
                Ok(()) => {}
                // Without CAP_CHOWN the directory stays root's, open to the user for
                // reading and entering (a mount covers it anyway).
                Err(nix::errno::Errno::EPERM) => {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("setting the mode of {}", dir.display()))?;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("giving {} to uid {uid}", dir.display()))
                }
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

/// The mount point of `volume`, made ready: the directories exist and are ours or the
/// user's, a stale cloudstore mount is detached, nothing else is mounted there.
fn prepare_mountpoint(config: &Config, volume: &str) -> anyhow::Result<(PathBuf, u32, u32)> {
    let user = user_entry(&config.user.value)?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let base = match &config.mountpoint.value {
        Some(b) => {
            if !b.exists() {
                std::fs::create_dir_all(b).with_context(|| format!("creating {}", b.display()))?;
            }
            b.clone()
        }
        None => {
            let home = &user.dir;
            if !home.is_dir() {
                bail!(
                    "the home directory {} of user {} does not exist",
                    home.display(),
                    config.user.value
                );
            }
            let base = home.join("CloudStore");
            ensure_dir(&base, uid, gid)?;
            base
        }
    };
    let base =
        std::fs::canonicalize(&base).with_context(|| format!("resolving {}", base.display()))?;
    let mp = base.join(volume);
    if is_cloudstore_mount_of(&mp, volume) {
        unmount_volume(volume, &mp, true)?;
        warn!(volume, mountpoint = %mp.display(), "detached a cloudstore mount whose worker is gone");
    }
    ensure_dir(&mp, uid, gid)?;
    if let Some(t) = mount_type_at(&mp) {
        bail!(
            "{} is already a mount point ({t}); unmount it first",
            mp.display()
        );
    }
    Ok((mp, uid, gid))
}

/// Checks, prepares and mounts `volume`; the caller serves the returned descriptor.
pub fn mount_volume(config: &Config, volume: &str) -> anyhow::Result<Mounted> {
    config::validate_volume_name(volume)?;
    if !config.volumes.value.iter().any(|v| v.as_str() == volume) {
        bail!(
            "volume {volume:?} is not configured for this qube (configured: {}); add it in dom0 with qvm-features QUBE cloudstore.volumes",
            if config.volumes.value.is_empty() { "none".into() } else { config.volumes_text() }
        );
    }
    let (mountpoint, uid, gid) = prepare_mountpoint(config, volume)?;
    let device = super::fs::mount_device(volume, &mountpoint)?;
    Ok(Mounted {
        mountpoint,
        uid,
        gid,
        device,
    })
}

/// Unmounts the `cloudstore:VOLUME` FUSE mount at `mountpoint`, and nothing else.
pub fn unmount_volume(volume: &str, mountpoint: &Path, detach: bool) -> anyhow::Result<Unmounted> {
    config::validate_volume_name(volume)?;
    if !mountpoint.is_absolute() {
        bail!("{} is not an absolute path", mountpoint.display());
    }
    if !is_cloudstore_mount_of(mountpoint, volume) {
        return Ok(Unmounted::NotMounted);
    }
    let mut flags = nix::mount::MntFlags::UMOUNT_NOFOLLOW;
    if detach {
        flags |= nix::mount::MntFlags::MNT_DETACH;
    }
    match nix::mount::umount2(mountpoint, flags) {
        Ok(()) => Ok(Unmounted::Done),
        Err(nix::errno::Errno::EBUSY) => Ok(Unmounted::Busy),
        // Gone between the check and the call.
        Err(nix::errno::Errno::EINVAL) => Ok(Unmounted::NotMounted),
        Err(e) => Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}

// ---------------------------------------------------------------- the helper process

/// Arguments of the hidden `cloudstore consumer-mounts` subcommand.
#[derive(Debug, clap::Args)]
pub struct MountsArgs {}

/// `cloudstore consumer-mounts`: what `cloudstore-consumer-mounts.service` runs.
pub fn helper_main(_args: MountsArgs) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let path = socket_path();
    let listener = bind(&path)?;
    info!(socket = %path.display(), "consumer mount helper listening");
    crate::notify::ready(&format!("consumer mounts: listening on {}", path.display()));
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                if let Err(e) = serve(&s) {
                    warn!("mount helper connection: {e:#}");
                }
            }
            Err(e) => warn!("accept on {}: {e}", path.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if UnixStream::connect(path).is_ok() {
        bail!("another mount helper already listens on {}", path.display());
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale {}", path.display())),
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

/// One connection: requests in order until the agent closes it.
fn serve(s: &UnixStream) -> anyhow::Result<()> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the peer's credentials (SO_PEERCRED)")?;
    if cred.uid() != 0 {
        warn!(
            uid = cred.uid(),
            pid = cred.pid(),
            "refused a connection: only root (the consumer agent) may ask for mounts"
        );
        return send_reply(
            s,
            &MountReply::Error {
                message: format!(
                    "permission denied: only root may ask the mount helper (you are uid {})",
                    cred.uid()
                ),
            },
            None,
        );
    }
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut reader = BufReader::new(s);
    loop {
        let mut line = Vec::new();
        let n = std::io::Read::take(&mut reader, MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            let message = format!("a request longer than {MAX_LINE} bytes, or cut short");
            send_reply(
                s,
                &MountReply::Error {
                    message: message.clone(),
                },
                None,
            )?;
            bail!(message);
        }
        let (reply, fd) = match serde_json::from_slice::<MountRequest>(&line) {
            Ok(req) => answer(req),
            Err(e) => (
                MountReply::Error {
                    message: format!("malformed request: {e}"),
                },
                None,
            ),
        };
        send_reply(s, &reply, fd.as_ref())?;
    }
}

fn answer(req: MountRequest) -> (MountReply, Option<OwnedFd>) {
    let result = match req {
        MountRequest::Mount { volume } => (|| {
            let mut db = config::open_qubesdb()?;
            let config = Config::load(&mut db).context("reading this qube's configuration")?;
            let m = mount_volume(&config, &volume)
                .with_context(|| format!("mounting volume {volume}"))?;
            info!(volume, mountpoint = %m.mountpoint.display(), "mounted for the consumer agent");
            Ok((
                MountReply::Mounted {
                    mountpoint: m.mountpoint,
                    uid: m.uid,
                    gid: m.gid,
                },
                Some(m.device),
            ))
        })(),
        MountRequest::Unmount {
            volume,
            mountpoint,
            detach,
        } => unmount_volume(&volume, &mountpoint, detach).map(|outcome| {
            info!(volume, mountpoint = %mountpoint.display(), ?outcome, detach, "unmount for the consumer agent");
            (MountReply::Unmounted { outcome }, None)
        }),
    };
    result.unwrap_or_else(|e: anyhow::Error| {
        error!("{e:#}");
        (
            MountReply::Error {
                message: format!("{e:#}"),
            },
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_and_mount_lookup() {
        assert_eq!(
            unescape_mountinfo("/home/user/Cloud\\040Store"),
            PathBuf::from("/home/user/Cloud Store")
        );
        assert_eq!(unescape_mountinfo("/a\\134b"), PathBuf::from("/a\\b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(mount_type_at(Path::new("/proc")).as_deref(), Some("proc"));
        assert!(!is_cloudstore_mount_of(Path::new("/proc"), "work"));
    }
}
