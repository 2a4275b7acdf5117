//! Storage role: keeps the ciphertext of every configured volume and serves it over the
//! qrexec socket services `cloudstore.Volume+VOL` (consumers) and `cloudstore.Sync[+VOL]`
//! (the transfer qube).
//!
//! Two phases. [`prepare`] runs while the agent is still single-threaded: it opens the store,
//! creates missing volumes, binds the two service sockets and then confines the process for
//! good (`sandbox.json` beside this file). [`run`] serves: one thread accepts on each socket,
//! one thread per connection reads the qrexec descriptor, re-checks the call against this
//! qube's own configuration and runs the protocol server (`cloudstore_protocol::serve`) with
//! a [`service::Connection`] handler.
//!
//! Why socket services (ARCHITECTURE.md, decisions): an executable service would start a
//! fresh, unconfined process per call as root; a socket lets the one long-running, already
//! sandboxed agent serve every call, keep the store's locks and journal in one place, and
//! push change notifications.

mod convert;
pub mod service;
mod tree;

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use cloudstore_protocol::{self as wire, Accept, ErrorCode, Role as WireRole, ServerConfig};
use cloudstore_sandbox::{Policy, Sandbox, Vars};
use cloudstore_store::{Store, StoreConfig};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{error, info, warn};

use super::setup::{ensure_dir, hand_over, sandbox_owner};
use super::RoleContext;
use crate::config::{self, Config};
use crate::qrexec::{self, ServiceCall};
use service::{Connection, Scope};

/// The storage role's sandbox, compiled in so the binary and its policy never disagree.
pub const SANDBOX_POLICY: &str = include_str!("sandbox.json");

pub const VOLUME_SERVICE: &str = "cloudstore.Volume";
pub const SYNC_SERVICE: &str = "cloudstore.Sync";
/// Socket file names in the runtime directory; `/etc/qubes-rpc/cloudstore.Volume` and
/// `cloudstore.Sync` are symlinks to them (packaging/qubes).
pub const VOLUME_SOCKET: &str = "volume.sock";
pub const SYNC_SOCKET: &str = "sync.sock";

/// qrexec-agent writes the descriptor right after connecting; a peer that does not within
/// this long is not qrexec-agent and loses its slot.
const DESCRIPTOR_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer that stops reading its answers must not hold a worker forever: past this a write
/// fails and the connection ends. Generous: a consumer's machine may be busy swapping.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections served at once: each consumer holds one per volume and the transfer qube one
/// per volume plus a short discovery call; 128 is far beyond a real setup and bounds the
/// threads a flood of calls can start.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a stop waits for open connections to wind down after their sockets are shut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the store ends quiet modification sessions (and prunes versions hourly).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

/// Everything [`prepare`] set up for [`run`].
pub struct Prepared {
    store: Arc<Store>,
    volume_listener: UnixListener,
    sync_listener: UnixListener,
    runtime_dir: PathBuf,
    confinement: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("runtime_dir", &self.runtime_dir)
            .finish_non_exhaustive()
    }
}

fn bind(
    dir: &Path,
    name: &str,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> anyhow::Result<UnixListener> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing the stale socket {}", path.display()))
        }
    }
    let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    // qrexec-agent connects as root or as the qube's default user (group qubes), so the
    // socket is 0660 with group qubes where that group exists (execution.rst: socket
    // services are root:qubes 0660).
    let qubes = nix::unistd::Group::from_name("qubes")
        .ok()
        .flatten()
        .map(|g| g.gid);
    let want_uid = owner.map(|o| o.0);
    let want_gid = qubes.or(owner.map(|o| o.1));
    // Under the shipped unit the socket is born right (User=cloudstore, Group=qubes) and
    // chown is not even allowed (SystemCallFilter=~@privileged), so only fix what differs.
    let meta =
        std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    let uid_differs = want_uid.is_some_and(|u| u.as_raw() != meta.uid());
    let gid_differs = want_gid.is_some_and(|g| g.as_raw() != meta.gid());
    if uid_differs || gid_differs {
        nix::unistd::chown(&path, want_uid, want_gid)
            .with_context(|| format!("chown {}", path.display()))?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    l.set_nonblocking(true)
        .with_context(|| format!("making {} non-blocking", path.display()))?;
    Ok(l)
}

/// Privileged set-up, then confinement. Must run before the agent starts any thread.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let data_dir = config::data_dir();
    let runtime_dir = config::runtime_dir();
    let policy = Policy::from_json_str(SANDBOX_POLICY, "roles/storage/sandbox.json")
        .context("loading the storage sandbox policy")?;
    ensure_dir(&data_dir, 0o700)?;
    ensure_dir(&runtime_dir, 0o750)?;
    let owner = sandbox_owner(&policy)?;
    if let Some((uid, gid)) = owner {
        hand_over(&data_dir, (uid, gid))?;
        nix::unistd::chown(&runtime_dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", runtime_dir.display()))?;
    }
    let store = Store::open(&data_dir, StoreConfig::default())
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    for v in &config.volumes.value {
        store
            .open_or_create_volume(v.as_str())
            .with_context(|| format!("opening volume {v} in {}", data_dir.display()))?;
    }
    if let Some((uid, gid)) = owner {
        // Volumes created just now belong to root.
        hand_over(&data_dir, (uid, gid))?;
    }
    let volume_listener = bind(&runtime_dir, VOLUME_SOCKET, owner)?;
    let sync_listener = bind(&runtime_dir, SYNC_SOCKET, owner)?;
    let vars = Vars::new()
        .with("data_dir", &data_dir)
        .with("runtime_dir", &runtime_dir);
    let report = Sandbox::apply(&policy, &vars).context("confining the storage role")?;
    for w in &report.warnings {
        warn!("sandbox: {w}");
    }
    let confinement = report.to_string();
    info!(sandbox = %confinement, "storage role confined");
    crate::sandbox_probe::run_if_asked();
    Ok(Prepared {
        store: Arc::new(store),
        volume_listener,
        sync_listener,
        runtime_dir,
        confinement,
    })
}

/// One open connection, as the role tracks it to stop it.
struct Live {
    stream: UnixStream,
    volume: String,
}

struct Shared {
    store: Arc<Store>,
    volumes: RwLock<Vec<String>>,
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
}

impl Shared {
    fn configured(&self, name: &str) -> bool {
        self.volumes.read().unwrap().iter().any(|v| v == name)
    }
}

/// Serves until the agent stops.
pub fn run(prepared: Prepared, ctx: RoleContext) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        store: prepared.store.clone(),
        volumes: RwLock::new(names(&ctx.config)),
        live: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    let _maintenance = prepared.store.spawn_maintenance(MAINTENANCE_EVERY);
    let mut acceptors = Vec::new();
    for (listener, kind) in [
        (prepared.volume_listener, WireRole::Volume),
        (prepared.sync_listener, WireRole::Sync),
    ] {
        let shared = shared.clone();
        let shutdown = ctx.shutdown.clone();
        acceptors.push(
            thread::Builder::new()
                .name(format!("accept-{kind:?}").to_lowercase())
                .spawn(move || accept_loop(listener, kind, &shared, &shutdown))
                .context("starting an accept thread")?,
        );
    }
    let volumes = ctx.config.volumes_text();
    info!(volumes = %volumes, runtime_dir = %prepared.runtime_dir.display(), "storage role serving cloudstore.Volume and cloudstore.Sync");
    ctx.ready(&format!("serving volumes: {volumes}"));
    for update in ctx.updates.iter() {
        let wanted = names(&update.config);
        for v in &wanted {
            if let Err(e) = shared.store.open_or_create_volume(v) {
                error!(volume = %v, "cannot open the newly configured volume: {e}");
            }
        }
        *shared.volumes.write().unwrap() = wanted.clone();
        // Connections to volumes no longer configured end now.
        for l in shared.live.lock().unwrap().values() {
            if !l.volume.is_empty() && !wanted.contains(&l.volume) {
                warn!(volume = %l.volume, "volume removed from the configuration; closing its connection");
                let _ = l.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        info!(volumes = %update.config.volumes_text(), "configured volumes changed");
        ctx.status(&format!(
            "serving volumes: {}",
            update.config.volumes_text()
        ));
    }
    for a in acceptors {
        let _ = a.join();
    }
    for l in shared.live.lock().unwrap().values() {
        let _ = l.stream.shutdown(std::net::Shutdown::Both);
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !shared.live.lock().unwrap().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = shared.live.lock().unwrap().len();
    if left > 0 {
        warn!("{left} connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    info!(confinement = %prepared.confinement, "storage role stopped");
    Ok(())
}

fn names(config: &Config) -> Vec<String> {
    config
        .volumes
        .value
        .iter()
        .map(|v| v.as_str().to_owned())
        .collect()
}

fn accept_loop(
    listener: UnixListener,
    kind: WireRole,
    shared: &Arc<Shared>,
    shutdown: &super::Shutdown,
) {
    loop {
        let (listen_ready, stop) = {
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(shutdown.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    error!("poll on the {kind:?} socket failed: {e}; no longer accepting");
                    return;
                }
            }
            let r = |f: &PollFd| f.revents().is_some_and(|e| !e.is_empty());
            (r(&fds[0]), r(&fds[1]))
        };
        if stop {
            return;
        }
        if !listen_ready {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accepting a {kind:?} connection failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("storage-conn".into())
            .spawn(move || connection(stream, kind, &shared));
        if let Err(e) = spawned {
            warn!("cannot start a thread for a {kind:?} connection: {e}");
        }
    }
}

/// Why a call is refused, before any protocol byte is served.
struct Refusal {
    code: ErrorCode,
    message: String,
}

fn refused(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message }
}

/// Re-checks a call against this qube's configuration: dom0's policy let it through, but the
/// storage agent trusts only what it was told to serve.
fn admit(call: &ServiceCall, kind: WireRole, shared: &Shared) -> Result<Scope, Refusal> {
    let expected = match kind {
        WireRole::Volume => VOLUME_SERVICE,
        WireRole::Sync => SYNC_SERVICE,
    };
    if call.service != expected {
        return Err(refused(
            ErrorCode::BadRole,
            format!("service {:?} called on the {expected} socket", call.service),
        ));
    }
    if !qrexec::is_valid_qube_name(&call.source) {
        return Err(refused(
            ErrorCode::PermissionDenied,
            format!(
                "calling qube name {:?} is not a valid qube name",
                call.source
            ),
        ));
    }
    if kind == WireRole::Sync && call.argument.is_empty() {
        return Ok(Scope::Discovery(shared.volumes.read().unwrap().clone()));
    }
    if let Err(e) = config::validate_volume_name(&call.argument) {
        return Err(refused(ErrorCode::VolumeRefused, e.to_string()));
    }
    if !shared.configured(&call.argument) {
        return Err(refused(
            ErrorCode::VolumeRefused,
            format!(
                "volume {:?} is not served by this storage qube (its cloudstore.volumes: {})",
                call.argument,
                shared.volumes.read().unwrap().join(" ")
            ),
        ));
    }
    match shared.store.volume(&call.argument) {
        Ok(v) => Ok(Scope::Volume(v)),
        Err(e) => Err(refused(
            ErrorCode::Io,
            format!("volume {:?} cannot be opened: {e}", call.argument),
        )),
    }
}

struct Unregister<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.shared.live.lock().unwrap().remove(&self.id);
    }
}

fn connection(mut stream: UnixStream, kind: WireRole, shared: &Shared) {
    let peer_cred =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .map(|c| format!("pid {} uid {}", c.pid(), c.uid()))
            .unwrap_or_else(|_| "unknown".into());
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(DESCRIPTOR_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let call = match qrexec::read_descriptor(&mut stream) {
        Ok(c) => c,
        Err(e) => {
            warn!(local_peer = %peer_cred, "refused a {kind:?} connection: {e}");
            return;
        }
    };
    let span = tracing::info_span!("call", peer = %call.source, volume = %call.argument);
    let _entered = span.enter();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let registered = {
        let mut live = shared.live.lock().unwrap();
        if live.len() >= MAX_CONNECTIONS {
            false
        } else {
            if let Ok(clone) = stream.try_clone() {
                live.insert(
                    id,
                    Live {
                        stream: clone,
                        volume: call.argument.clone(),
                    },
                );
            }
            true
        }
    };
    let _unregister = Unregister { shared, id };
    let admitted = if registered {
        admit(&call, kind, shared)
    } else {
        Err(refused(
            ErrorCode::Busy,
            format!("the storage agent already serves {MAX_CONNECTIONS} connections"),
        ))
    };
    let scope = match admitted {
        Ok(s) => s,
        Err(r) => {
            warn!(
                PEER = %call.source,
                VOLUME = %call.argument,
                code = ?r.code,
                "refused {}+{} from {}: {}",
                call.service,
                call.argument,
                call.source,
                r.message
            );
            let mut reader = stream.try_clone().ok();
            if let Some(reader) = reader.as_mut() {
                let _ = wire::refuse_connection(
                    reader as &mut dyn Read,
                    &mut stream,
                    r.code,
                    &r.message,
                );
            }
            return;
        }
    };
    // A consumer's connection is idle for long stretches; only the descriptor had a deadline.
    let _ = stream.set_read_timeout(None);
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            warn!("cannot duplicate the connection socket: {e}");
            return;
        }
    };
    info!(PEER = %call.source, VOLUME = %call.argument, "{}{}{} from {} connected", call.service, if call.argument.is_empty() { "" } else { "+" }, call.argument, call.source);
    let handler = Connection::new(scope, call.source.clone());
    let config = ServerConfig::new(Accept::new(kind));
    match wire::serve(reader, stream, &config, &handler) {
        Ok(stats) => info!(
            PEER = %call.source,
            VOLUME = %call.argument,
            requests = stats.requests,
            errors = stats.errors,
            "connection from {} closed",
            call.source
        ),
        Err(e) => {
            warn!(PEER = %call.source, VOLUME = %call.argument, "connection from {} ended: {e}", call.source)
        }
    }
}
