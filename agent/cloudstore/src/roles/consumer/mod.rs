//! Consumer role: each configured volume as a decrypted folder, `~USER/CloudStore/<volume>`.
//!
//! Process structure: this role's `run` is a small parent (root). It owns the control
//! socket `$RUNTIME/consumer.sock` ([`control`]), through which
//! `cloudstore unlock|lock|status|init|versions|restore` reach it. Unlocking a volume reads
//! its gocryptfs.conf from storage, unwraps the master key with the passphrase, has the
//! mount helper ([`mounts`], its own unit) mount the volume and hand over the /dev/fuse
//! descriptor, and starts a [`worker`] process with it: the worker receives the key over
//! an inherited socketpair, confines itself (capabilities dropped, landlock, seccomp:
//! `sandbox.json` beside this file) and serves the FUSE filesystem ([`fs`]). Locking has
//! the helper unmount; the worker then sees its mount end, wipes its keys and exits. So
//! neither the agent nor a worker ever mounts or unmounts, and a later unlock starts
//! afresh.
//!
//! Keyfiles (automatic unlock at start): `cloudstore unlock VOLUME --keyfile` stores the
//! passphrase in `/rw/config/cloudstore/keys/VOLUME` (root, 0600; /rw/config survives an
//! AppVM's reboot). At start the agent unlocks every volume that has one. This weakens the
//! protection: anyone who can read the qube's private volume as root (a compromised qube,
//! a backup of it) gets the passphrase, and the volume is open whenever the qube runs.
//! `cloudstore lock VOLUME --forget-keyfile` removes it.

pub mod busy;
pub mod commands;
pub mod connect;
pub mod control;
pub mod fs;
pub mod keys;
pub mod mounts;
pub mod versions;
pub mod worker;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use cloudstore_format::names::{CONFIG_NAME, DIRIV_NAME};
use cloudstore_format::{CreateOptions, DirIv, FormatError};
use cloudstore_protocol::{Client, ErrorCode, Expect, Request as PRequest};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{error, info, warn};
use zeroize::Zeroizing;

use super::RoleContext;
use crate::config::Config;
use crate::notify;
use control::{Reply, Request, VolumeStatus};
use keys::KeyMaterial;
use worker::{Worker, WorkerReply, WorkerRequest};

/// How often the parent looks for workers that ended on their own (a crash, a seccomp
/// trap): a dead mount is reported and cleaned up within this.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Control connections served at once: a user runs one command at a time; 32 leaves room
/// for scripts while a local process cannot make the agent start threads without bound.
const MAX_CONNECTIONS: usize = 32;
/// gocryptfs.conf mode on storage (config_file.go `WriteFile`: 0400).
const CONFIG_MODE: u32 = 0o400;
/// gocryptfs.diriv mode (diriv.go `dirivPerms`: 0444).
const DIRIV_MODE: u32 = 0o444;

/// The consumer role's entry point (see `roles` for the contract).
pub fn run(ctx: RoleContext) -> anyhow::Result<()> {
    keys::lock_process_memory()?;
    let socket = control::socket_path();
    let listener = bind_control_socket(&socket)?;
    let mounter = mounts::Mounter::from_env()?;
    info!("{}", mounter.describe());
    let agent = Arc::new(Agent {
        config: Mutex::new(ctx.config.clone()),
        mounter,
        workers: Mutex::new(BTreeMap::new()),
        ops: Mutex::new(()),
        connections: AtomicUsize::new(0),
    });
    // Mounts left behind by an agent that died: their workers are gone with it.
    for v in &ctx.config.volumes.value {
        if let Ok(mp) = agent.mountpoint_of(v.as_str()) {
            agent.mounter.unmount_stale(v.as_str(), &mp);
        }
    }
    let mut auto = Vec::new();
    for v in ctx.config.volumes.value.clone() {
        let v = v.as_str().to_owned();
        match keys::read_keyfile(&v) {
            Ok(None) => {}
            Ok(Some(pass)) => match agent.unlock(&v, &pass, false) {
                Ok(msg) => {
                    info!(volume = %v, "{msg} (keyfile {})", keys::keyfile_path(&v).display());
                    auto.push(v);
                }
                Err(e) => {
                    error!(volume = %v, "automatic unlock with the keyfile {} failed: {e:#}", keys::keyfile_path(&v).display())
                }
            },
            Err(e) => error!(volume = %v, "{e:#}"),
        }
    }
    info!(socket = %socket.display(), "consumer role listening");
    ctx.ready(&format!(
        "consumer: control socket {}; volumes: {}; unlocked at start: {}",
        socket.display(),
        ctx.config.volumes_text(),
        if auto.is_empty() {
            "none".into()
        } else {
            auto.join(" ")
        }
    ));

    listener.set_nonblocking(true)?;
    loop {
        let (conn_ready, stop) = {
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(ctx.shutdown.as_fd(), PollFlags::POLLIN),
            ];
            match poll(
                &mut fds,
                PollTimeout::try_from(REAP_INTERVAL.as_millis() as u32).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll on the control socket"),
            }
            let r = |f: &PollFd| f.revents().is_some_and(|e| !e.is_empty());
            (r(&fds[0]), r(&fds[1]))
        };
        if stop || ctx.shutdown.is_triggered() {
            break;
        }
        while let Ok(update) = ctx.updates.try_recv() {
            for c in &update.changes {
                info!("configuration changed: {c}");
            }
            *agent.config.lock().unwrap_or_else(|p| p.into_inner()) = update.config;
        }
        agent.reap_dead();
        if conn_ready {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if agent.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                            warn!("{MAX_CONNECTIONS} control connections already open; refusing one more");
                            let _ = control::write_reply(
                                &stream,
                                &Reply::Error {
                                    message: "the consumer agent is busy; try again".into(),
                                },
                            );
                            continue;
                        }
                        agent.connections.fetch_add(1, Ordering::Relaxed);
                        let a = agent.clone();
                        let spawned = std::thread::Builder::new()
                            .name("consumer-control".into())
                            .spawn(move || {
                                a.serve_connection(stream);
                                a.connections.fetch_sub(1, Ordering::Relaxed);
                            });
                        if let Err(e) = spawned {
                            agent.connections.fetch_sub(1, Ordering::Relaxed);
                            error!("cannot start a thread for a control connection: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!("accept on {}: {e}", socket.display());
                        break;
                    }
                }
            }
        }
    }
    notify::stopping("consumer: locking every volume");
    agent.lock_all_for_shutdown();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn bind_control_socket(socket: &Path) -> anyhow::Result<UnixListener> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if UnixStream::connect(socket).is_ok() {
        bail!(
            "another consumer agent already listens on {}",
            socket.display()
        );
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing the stale {}", socket.display()))
        }
    }
    let l = UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    // 0666: every local user may connect; SO_PEERCRED decides what each may do.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    Ok(l)
}

/// The configured user's uid, gid and home.
pub(crate) fn user_entry(name: &str) -> anyhow::Result<nix::unistd::User> {
    nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up the user {name:?}"))?
        .ok_or_else(|| {
            anyhow!("the configured user {name:?} does not exist in this qube (qubesdb key `user`)")
        })
}

/// `/home/USER/CloudStore/VOLUME`, or `MOUNTPOINT/VOLUME` when configured.
pub fn mountpoint_of(config: &Config, volume: &str) -> anyhow::Result<PathBuf> {
    let base = match &config.mountpoint.value {
        Some(b) => b.clone(),
        None => user_entry(&config.user.value)?.dir.join("CloudStore"),
    };
    Ok(base.join(volume))
}

/// Lexically normalised absolute path (no `.`/`..`), as the CLI sends it.
fn normalise(p: &Path) -> anyhow::Result<PathBuf> {
    if !p.is_absolute() {
        bail!("{} is not an absolute path", p.display());
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => bail!("{} is not a Unix path", p.display()),
        }
    }
    Ok(out)
}

struct Agent {
    config: Mutex<Config>,
    mounter: mounts::Mounter,
    workers: Mutex<BTreeMap<String, Arc<Worker>>>,
    /// Serialises unlock, lock and init: each changes mounts or storage as a whole.
    ops: Mutex<()>,
    /// Control connections being served (one thread each).
    connections: AtomicUsize,
}

impl Agent {
    fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn worker(&self, volume: &str) -> Option<Arc<Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(volume)
            .cloned()
    }

    fn check_configured(&self, volume: &str) -> anyhow::Result<()> {
        let c = self.config();
        if !c.volumes.value.iter().any(|v| v.as_str() == volume) {
            bail!(
                "volume {volume:?} is not configured for this qube (configured: {}); add it in dom0 with qvm-features QUBE cloudstore.volumes",
                if c.volumes.value.is_empty() { "none".into() } else { c.volumes_text() }
            );
        }
        Ok(())
    }

    fn mountpoint_of(&self, volume: &str) -> anyhow::Result<PathBuf> {
        mountpoint_of(&self.config(), volume)
    }

    fn storage(&self, volume: &str) -> anyhow::Result<(connect::QrexecConnector, Client)> {
        let program = connect::resolve_program(&connect::client_program())?;
        let conn = connect::QrexecConnector::new(program, volume);
        let client = conn.client(connect::client_config())?;
        Ok((conn, client))
    }

    fn unlock(&self, volume: &str, pass: &[u8], keyfile: bool) -> anyhow::Result<String> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        self.check_configured(volume)?;
        if let Some(w) = self.worker(volume) {
            if w.try_exited().is_none() {
                bail!(
                    "volume {volume} is already unlocked at {}",
                    w.mountpoint.display()
                );
            }
        }
        notify::status(&format!("consumer: unlocking {volume}"));
        let conf_bytes = {
            let (_conn, client) = self.storage(volume)?;
            // Stat first: a volume never created is the common mistake, and deserves its
            // own message before any download starts.
            match client.call(PRequest::Stat {
                file: cloudstore_protocol::FileRef::Path(CONFIG_NAME.into()),
            }) {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => bail!(
                    "volume {volume} has no {CONFIG_NAME} on storage: it was never created; run `cloudstore init {volume}`"
                ),
                Err(e) => bail!("asking storage for {CONFIG_NAME} of volume {volume}: {e}"),
            }
            let dl = client.get(CONFIG_NAME, None).map_err(|e| {
                if e.code == ErrorCode::NotFound {
                    anyhow!("volume {volume} has no {CONFIG_NAME} on storage: it was never created; run `cloudstore init {volume}`")
                } else {
                    anyhow!("fetching {CONFIG_NAME} of volume {volume} from storage: {e}")
                }
            })?;
            let mut data = Zeroizing::new(Vec::new());
            let mut limited = dl.take(keys::MAX_CONFIG_LEN as u64 + 1);
            limited.read_to_end(&mut data).with_context(|| {
                format!("fetching {CONFIG_NAME} of volume {volume} from storage")
            })?;
            if data.len() > keys::MAX_CONFIG_LEN {
                bail!(
                    "{CONFIG_NAME} of volume {volume} is larger than {} bytes",
                    keys::MAX_CONFIG_LEN
                );
            }
            limited.into_inner().finish().map_err(|e| {
                anyhow!("fetching {CONFIG_NAME} of volume {volume} from storage: {e}")
            })?;
            data
        };
        let config = cloudstore_format::Config::parse(&conf_bytes)
            .with_context(|| format!("{CONFIG_NAME} of volume {volume} on storage"))?;
        let key = config.unlock(pass).map_err(|e| match e {
            FormatError::WrongPassphrase => {
                anyhow!("wrong passphrase for volume {volume}; nothing was mounted")
            }
            e => anyhow!(e).context(format!("unlocking volume {volume}")),
        })?;
        let km = KeyMaterial {
            config: conf_bytes,
            key,
        };
        let m = self.mounter.mount(&self.config(), volume)?;
        let mp = m.mountpoint.clone();
        let started = Worker::start(volume, &mp, m.uid, m.gid, m.device, &km);
        drop(km);
        let w = match started {
            Ok(w) => w,
            Err(e) => {
                self.mounter.unmount_stale(volume, &mp);
                return Err(e.context(format!("mounting volume {volume} at {}", mp.display())));
            }
        };
        let pid = w.pid;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(volume.to_owned(), Arc::new(w));
        let mut msg = format!("unlocked {volume} at {} (worker pid {pid})", mp.display());
        if keyfile {
            let p = keys::save_keyfile(volume, pass)?;
            msg.push_str(&format!(
                "; passphrase kept in {} for automatic unlock at start (remove with `cloudstore lock {volume} --forget-keyfile`)",
                p.display()
            ));
        }
        info!(volume, "{msg}");
        self.status_line();
        Ok(msg)
    }

    fn lock(&self, volume: &str, forget: bool) -> anyhow::Result<String> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = self.worker(volume) else {
            if forget && keys::remove_keyfile(volume)? {
                return Ok(format!(
                    "volume {volume} is not unlocked; its keyfile was removed"
                ));
            }
            bail!("volume {volume} is not unlocked");
        };
        let mp = w.mountpoint.clone();
        let holders = self.holders(&mp, w.pid);
        if !holders.is_empty() {
            bail!(
                "cannot lock {volume}: {} is in use by {}; close these and try again",
                mp.display(),
                holders
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if w.try_exited().is_none() {
            if self.mounter.unmount(volume, &mp, false)? == mounts::Unmounted::Busy {
                let again = self.holders(&mp, w.pid);
                bail!(
                    "cannot lock {volume}: {} is busy{}",
                    mp.display(),
                    if again.is_empty() {
                        " (a mount beneath it, or a process that just opened it); try again"
                            .to_owned()
                    } else {
                        format!(
                            ": in use by {}",
                            again
                                .iter()
                                .map(|h| h.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    }
                );
            }
        } else {
            self.mounter.unmount_stale(volume, &mp);
        }
        let status = w.finish();
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(volume);
        let mut msg = format!(
            "locked {volume}: {} unmounted, keys wiped (worker pid {} {status})",
            mp.display(),
            w.pid
        );
        if forget && keys::remove_keyfile(volume)? {
            msg.push_str(&format!(
                "; keyfile {} removed",
                keys::keyfile_path(volume).display()
            ));
        }
        info!(volume, "{msg}");
        self.status_line();
        Ok(msg)
    }

    /// The processes keeping `mp` busy: what root sees in /proc, and what the qube's user
    /// sees there. Without CAP_SYS_PTRACE (the unit does not grant it) root may not read
    /// another user's /proc/PID/fd, but the user may read its own, and those are the
    /// processes that normally hold the mount.
    fn holders(&self, mp: &Path, worker: u32) -> Vec<busy::Holder> {
        let mut all = busy::holders(mp, &[worker]);
        if let Ok(user) = user_entry(&self.config().user.value) {
            match busy::holders_as(mp, worker, user.uid.as_raw(), user.gid.as_raw()) {
                Ok(more) => {
                    for h in more {
                        if !all.iter().any(|a| a.pid == h.pid) {
                            all.push(h);
                        }
                    }
                }
                Err(e) => warn!(
                    "listing the processes of user {} that hold {}: {e:#}",
                    user.name,
                    mp.display()
                ),
            }
        }
        all.sort_by_key(|h| h.pid);
        all
    }

    fn lock_all_for_shutdown(&self) {
        let ws: Vec<(String, Arc<Worker>)> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (v, w) in ws {
            let holders = self.holders(&w.mountpoint, w.pid);
            if !holders.is_empty() {
                warn!(volume = %v, "stopping: {} still in use by {}; detaching it", w.mountpoint.display(),
                    holders.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("; "));
            }
            match self.mounter.unmount(&v, &w.mountpoint, !holders.is_empty()) {
                Ok(mounts::Unmounted::Busy) => {
                    warn!(volume = %v, "{} is busy; detaching it", w.mountpoint.display());
                    self.mounter.unmount_stale(&v, &w.mountpoint);
                }
                Ok(_) => {}
                Err(e) => warn!(volume = %v, "unmounting {}: {e:#}", w.mountpoint.display()),
            }
            let st = w.finish();
            info!(volume = %v, "locked for shutdown (worker {st})");
        }
    }

    fn reap_dead(&self) {
        let dead: Vec<(String, Arc<Worker>, std::process::ExitStatus)> = {
            let ws = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            ws.iter()
                .filter_map(|(v, w)| w.try_exited().map(|s| (v.clone(), w.clone(), s)))
                .collect()
        };
        if dead.is_empty() {
            return;
        }
        let Ok(_op) = self.ops.try_lock() else {
            return; // a lock or unlock in progress deals with its own worker
        };
        for (v, w, status) in dead {
            error!(volume = %v, pid = w.pid, "the worker of volume {v} ended on its own ({status}); its mount is gone and the volume is locked");
            self.mounter.unmount_stale(&v, &w.mountpoint);
            self.workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&v);
        }
        self.status_line();
    }

    fn status_line(&self) {
        let ws = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<&str> = ws.keys().map(String::as_str).collect();
        notify::status(&format!(
            "consumer: unlocked: {}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(" ")
            }
        ));
    }

    fn status(&self) -> Vec<VolumeStatus> {
        let c = self.config();
        let mut out = Vec::new();
        for v in &c.volumes.value {
            let v = v.as_str();
            let keyfile = keys::keyfile_path(v).exists();
            let w = self.worker(v).filter(|w| w.try_exited().is_none());
            let mut st = VolumeStatus {
                volume: v.to_owned(),
                unlocked: w.is_some(),
                mountpoint: w
                    .as_ref()
                    .map(|w| w.mountpoint.clone())
                    .or_else(|| self.mountpoint_of(v).ok())
                    .unwrap_or_default(),
                keyfile,
                connected: None,
                following: None,
                pending_writes: None,
                last_error: None,
            };
            if let Some(w) = w {
                match w.request(&WorkerRequest::Status) {
                    Ok(WorkerReply::Status {
                        connected,
                        following,
                        pending_writes,
                        last_error,
                    }) => {
                        st.connected = Some(connected);
                        st.following = Some(following);
                        st.pending_writes = Some(pending_writes);
                        st.last_error = last_error;
                    }
                    Ok(other) => {
                        st.last_error = Some(format!("unexpected worker answer {other:?}"))
                    }
                    Err(e) => st.last_error = Some(format!("{e:#}")),
                }
            }
            out.push(st);
        }
        out
    }

    fn init(&self, volume: &str, pass: &[u8], log_n: u8) -> anyhow::Result<String> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        self.check_configured(volume)?;
        let opts = CreateOptions {
            scrypt_log_n: log_n,
            ..Default::default()
        };
        let (config, _key) = cloudstore_format::Config::create(pass, &opts)?;
        let (_conn, client) = self.storage(volume)?;
        let exists = |what: &str| {
            anyhow!("volume {volume} already exists on storage (it has a {what}); refusing to overwrite it")
        };
        put_new(&client, CONFIG_NAME, &config.to_bytes(), CONFIG_MODE).map_err(|e| match e {
            PutError::Exists => exists(CONFIG_NAME),
            PutError::Other(e) => e.context(format!(
                "creating {CONFIG_NAME} of volume {volume} on storage"
            )),
        })?;
        let iv = DirIv::new_random()?;
        put_new(&client, DIRIV_NAME, &iv.0, DIRIV_MODE).map_err(|e| match e {
            PutError::Exists => anyhow!(
                "volume {volume} on storage already had a {DIRIV_NAME} but no {CONFIG_NAME}; the new {CONFIG_NAME} was written but the volume is inconsistent: inspect it on storage"
            ),
            PutError::Other(e) => e.context(format!("creating {DIRIV_NAME} of volume {volume} on storage")),
        })?;
        let msg = format!("created volume {volume} on storage (gocryptfs-compatible); unlock it with `cloudstore unlock {volume}`");
        info!(volume, "{msg}");
        Ok(msg)
    }

    /// The worker whose mount holds `path`, and `path` relative to its mountpoint.
    fn worker_for(&self, path: &Path) -> anyhow::Result<(Arc<Worker>, PathBuf)> {
        let path = normalise(path)?;
        let ws = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for w in ws.values() {
            if let Ok(rel) = path.strip_prefix(&w.mountpoint) {
                return Ok((w.clone(), rel.to_owned()));
            }
        }
        bail!(
            "{} is not inside an unlocked volume (unlocked: {})",
            path.display(),
            if ws.is_empty() {
                "none".to_owned()
            } else {
                ws.values()
                    .map(|w| w.mountpoint.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }

    fn serve_connection(&self, stream: UnixStream) {
        let reply = match self.answer(&stream) {
            Ok(r) => r,
            Err(e) => Reply::Error {
                message: format!("{e:#}"),
            },
        };
        if let Err(e) = control::write_reply(&stream, &reply) {
            warn!("writing the answer on the control socket: {e}");
        }
    }

    fn answer(&self, stream: &UnixStream) -> anyhow::Result<Reply> {
        let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .context("reading the peer's credentials (SO_PEERCRED)")?;
        let uid = cred.uid();
        let req = control::read_request(stream)?;
        let user = self.config().user.value;
        let allowed = uid == 0
            || user_entry(&user)
                .map(|u| u.uid.as_raw() == uid)
                .unwrap_or(false);
        let refuse = |what: &str| {
            warn!(
                uid,
                pid = cred.pid(),
                "refused {what} from uid {uid}: only root and {user} may"
            );
            anyhow!("permission denied: only root and the qube's user {user:?} may {what} (you are uid {uid})")
        };
        match req {
            Request::Status => Ok(Reply::Status {
                volumes: self.status(),
            }),
            Request::Unlock {
                volume,
                passphrase,
                keyfile,
            } => {
                if !allowed {
                    return Err(refuse("unlock a volume"));
                }
                let pass = passphrase.bytes()?;
                Ok(Reply::Ok {
                    message: self.unlock(&volume, &pass, keyfile)?,
                })
            }
            Request::Lock {
                volume,
                forget_keyfile,
            } => {
                if !allowed {
                    return Err(refuse("lock a volume"));
                }
                Ok(Reply::Ok {
                    message: self.lock(&volume, forget_keyfile)?,
                })
            }
            Request::Init {
                volume,
                passphrase,
                scrypt_log_n,
            } => {
                if !allowed {
                    return Err(refuse("create a volume"));
                }
                if !(cloudstore_format::SCRYPT_MIN_LOG_N..=20).contains(&scrypt_log_n) {
                    bail!(
                        "scrypt cost {scrypt_log_n} is outside {}..=20",
                        cloudstore_format::SCRYPT_MIN_LOG_N
                    );
                }
                let pass = passphrase.bytes()?;
                Ok(Reply::Ok {
                    message: self.init(&volume, &pass, scrypt_log_n)?,
                })
            }
            Request::Versions { path } => {
                if !allowed {
                    return Err(refuse("list versions"));
                }
                let (w, rel) = self.worker_for(&path)?;
                match w.request(&WorkerRequest::Versions { rel })? {
                    WorkerReply::Versions {
                        path,
                        versions,
                        truncated,
                    } => Ok(Reply::Versions {
                        path,
                        versions,
                        truncated,
                    }),
                    other => bail!("unexpected worker answer {other:?}"),
                }
            }
            Request::Restore { path, id, at } => {
                if !allowed {
                    return Err(refuse("restore versions"));
                }
                let (w, rel) = self.worker_for(&path)?;
                match w.request(&WorkerRequest::Restore {
                    rel: rel.clone(),
                    id,
                    at,
                })? {
                    WorkerReply::Restored { version } => Ok(Reply::Ok {
                        message: format!(
                            "restored {} to version {} (kept {}, {} bytes)",
                            path.display(),
                            version.id,
                            crate::time::format_utc(version.time.0, version.time.1),
                            version.size
                        ),
                    }),
                    other => bail!("unexpected worker answer {other:?}"),
                }
            }
            Request::Probe { volume, open } => {
                if uid != 0 {
                    return Err(refuse("probe a worker's sandbox (root only)"));
                }
                let w = self
                    .worker(&volume)
                    .ok_or_else(|| anyhow!("volume {volume} is not unlocked"))?;
                match w.request(&WorkerRequest::Probe { open })? {
                    WorkerReply::Probe { results } => Ok(Reply::Probe { results }),
                    other => bail!("unexpected worker answer {other:?}"),
                }
            }
        }
    }
}

enum PutError {
    Exists,
    Other(anyhow::Error),
}

/// Creates `path` on storage with `data`, only if nothing is there (`Expect::Absent`).
fn put_new(client: &Client, path: &str, data: &[u8], mode: u32) -> Result<(), PutError> {
    use std::io::Write;
    let is_exists = |c: ErrorCode| matches!(c, ErrorCode::Conflict | ErrorCode::Exists);
    let mut up = client
        .upload(PRequest::Put {
            path: path.to_owned(),
            expect: Expect::Absent,
            mode: Some(mode),
            mtime: None,
        })
        .map_err(|e| {
            if is_exists(e.code) {
                PutError::Exists
            } else {
                PutError::Other(anyhow!("{e}"))
            }
        })?;
    if let Err(e) = up.write_all(data) {
        return Err(PutError::Other(anyhow!(e)));
    }
    up.finish().map(|_| ()).map_err(|e| {
        if is_exists(e.code) {
            PutError::Exists
        } else {
            PutError::Other(anyhow!("{e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalise(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert!(normalise(Path::new("rel")).is_err());
    }
}
