//! Transfer role: two-way sync of every storage volume with a cloud folder through rclone.
//!
//! The transfer qube has network and no keys. For each volume it holds one
//! `cloudstore.Sync+VOL` stream to storage (`qrexec-client-vm @default cloudstore.Sync+VOL`
//! as a child whose stdin/stdout are the stream), found through one discovery call
//! (`cloudstore.Sync` without argument: `ReadDir("")` lists the volumes). The cloud side is
//! one `rclone rcd` child ([`rclone`]); each volume is the plain gocryptfs folder
//! `<remote>/<volume>`. The sync itself ([`engine`]) is three-way against a state database
//! per volume ([`statedb`]) in the state directory (`$CLOUDSTORE_DATA_DIR`, default
//! `/var/lib/cloudstore`).
//!
//! Settings: the remote from qubesdb (`cloudstore.remote`, default `onedrive:CloudStore`);
//! from the environment (the unit's `Environment=`, tests):
//! - `CLOUDSTORE_RCLONE`: the rclone program (default `rclone`);
//! - `CLOUDSTORE_RCLONE_CONFIG`, else `RCLONE_CONFIG` (the unit's): rclone's config file
//!   (default `<state>/rclone.conf`, where
//!   `sudo -u cloudstore rclone config --config /var/lib/cloudstore/rclone.conf` puts it);
//! - `CLOUDSTORE_TRANSFER_POLL_SECS`: cloud poll interval (default 60);
//! - `CLOUDSTORE_TRANSFER_WORKERS`: files moved at once (default 4, rclone's `--transfers`);
//! - `CLOUDSTORE_TRANSFER_TPSLIMIT`: rclone `--tpslimit` (default: rclone's pacer alone);
//! - `CLOUDSTORE_TRANSFER_DELETE_MAX`, `CLOUDSTORE_TRANSFER_DELETE_SHARE`: deletion limits.
//!
//! A pass that would delete more than the limits allow stops the volume's sync; `cloudstore
//! sync --confirm-deletes` creates the flag file `<state>/confirm-deletes`, which the agent
//! notices within a second, and removes once the deletions are done.
//!
//! Two phases, as for storage. [`prepare`] runs while the agent is still single-threaded:
//! it resolves the programs the role runs, creates its directories (handing them to the
//! sandbox user when started as root) and confines the process for good (`sandbox.json`
//! beside this file), so rclone and every qrexec client inherit the sandbox. [`run`] syncs.

pub mod engine;
mod newdirs;
mod offer;
pub mod rclone;
pub mod statedb;
pub mod status;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use cloudstore_protocol::{Client, ClientConfig, Hello, Push, Request, Response, Role};
use cloudstore_sandbox::{Policy, Sandbox, Vars};
use tracing::{error, info, warn};

use super::setup::{ensure_dir, hand_over, sandbox_owner};
use super::{RoleContext, Shutdown};
use crate::config::{self, Config};
use engine::{DeleteLimits, VolumeSync};
use rclone::{Rclone, RcloneOptions};
use status::{TransferStatus, VolumeStatus};

/// The transfer role's sandbox, compiled in so the binary and its policy never disagree.
pub const SANDBOX_POLICY: &str = include_str!("sandbox.json");
const POLICY_ORIGIN: &str = "roles/transfer/sandbox.json";

/// rclone's spool directory in the state directory (`--temp-dir`, rclone's `$TMPDIR`:
/// fs/config/config.go SetTempDir): uploads tell rclone each size (offer.rs), so nothing is
/// spooled for them, but whatever else in rclone needs a temporary file finds it here, the
/// only writable place the sandbox gives it. Emptied at every start. The rc password's htpasswd file
/// lives there too (rclone.rs `write_htpasswd`).
pub const RCLONE_TEMP_DIR: &str = "rclone-tmp";

/// The qrexec service storage serves the transfer qube on.
pub const SYNC_SERVICE: &str = "cloudstore.Sync";

/// After a storage push, wait this long for more before a pass: a consumer saving a file
/// makes several journal entries in a few milliseconds.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Settings of the transfer role.
#[derive(Clone, Debug)]
pub struct Settings {
    pub remote: String,
    pub rclone: PathBuf,
    pub rclone_config: PathBuf,
    pub poll: Duration,
    pub workers: usize,
    pub tpslimit: Option<f64>,
    pub limits: DeleteLimits,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub qrexec_client: OsString,
}

fn env_parse<T: std::str::FromStr>(key: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{key}={v:?} is not a valid value")),
        _ => Ok(None),
    }
}

impl Settings {
    pub fn load(remote: &str) -> anyhow::Result<Settings> {
        let state_dir = config::data_dir();
        let mut limits = DeleteLimits::default();
        if let Some(n) = env_parse("CLOUDSTORE_TRANSFER_DELETE_MAX")? {
            limits.max_count = n;
        }
        if let Some(s) = env_parse::<f64>("CLOUDSTORE_TRANSFER_DELETE_SHARE")? {
            anyhow::ensure!(
                (0.0..=1.0).contains(&s),
                "CLOUDSTORE_TRANSFER_DELETE_SHARE={s} is not a share between 0 and 1"
            );
            limits.share = s;
        }
        let poll = env_parse::<f64>("CLOUDSTORE_TRANSFER_POLL_SECS")?.unwrap_or(60.0);
        anyhow::ensure!(
            poll > 0.0 && poll.is_finite(),
            "CLOUDSTORE_TRANSFER_POLL_SECS={poll} must be a positive number of seconds"
        );
        Ok(Settings {
            remote: remote.to_owned(),
            rclone: std::env::var_os("CLOUDSTORE_RCLONE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| "rclone".into()),
            rclone_config: ["CLOUDSTORE_RCLONE_CONFIG", "RCLONE_CONFIG"]
                .into_iter()
                .find_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
                .map(PathBuf::from)
                .unwrap_or_else(|| state_dir.join("rclone.conf")),
            poll: Duration::from_secs_f64(poll),
            workers: env_parse("CLOUDSTORE_TRANSFER_WORKERS")?.unwrap_or(4),
            tpslimit: env_parse("CLOUDSTORE_TRANSFER_TPSLIMIT")?,
            limits,
            state_dir,
            runtime_dir: config::runtime_dir(),
            qrexec_client: crate::qrexec::client_program(),
        })
    }

    pub fn rclone_options(&self) -> RcloneOptions {
        let mut extra = vec![
            format!("--config={}", self.rclone_config.display()),
            format!(
                "--temp-dir={}",
                self.state_dir.join(RCLONE_TEMP_DIR).display()
            ),
        ];
        if let Some(t) = self.tpslimit {
            extra.push(format!("--tpslimit={t}"));
        }
        RcloneOptions {
            program: self.rclone.clone(),
            remote: self.remote.clone(),
            extra_args: extra,
            private_dir: self.state_dir.join(RCLONE_TEMP_DIR),
        }
    }
}

/// A qrexec call to storage: the client program as a child, its stdin/stdout the stream.
pub struct StorageLink {
    pub client: Client,
    pub pushes: Receiver<Push>,
    child: Child,
}

impl StorageLink {
    /// Calls `cloudstore.Sync[+VOLUME]` on the default target (dom0 policy names storage).
    pub fn connect(program: &OsString, volume: &str) -> anyhow::Result<StorageLink> {
        let service = if volume.is_empty() {
            SYNC_SERVICE.to_owned()
        } else {
            format!("{SYNC_SERVICE}+{volume}")
        };
        let mut child = Command::new(program)
            .arg("@default")
            .arg(&service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} @default {service}",
                    Path::new(program).display()
                )
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        match Client::connect(stdout, stdin, ClientConfig::new(Hello::new(Role::Sync))) {
            Ok((client, pushes)) => Ok(StorageLink {
                client,
                pushes,
                child,
            }),
            Err(e) => {
                let _ = child.kill();
                let st = child.wait();
                Err(anyhow::anyhow!(
                    "calling {service} on storage: {e} (qrexec client {})",
                    match st {
                        Ok(s) if s.code() == Some(126) =>
                            "refused by dom0's qrexec policy (126)".to_owned(),
                        Ok(s) => format!("ended with {s}"),
                        Err(e) => e.to_string(),
                    }
                ))
            }
        }
    }
}

impl Drop for StorageLink {
    fn drop(&mut self) {
        self.client.close();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The volumes storage offers, through the discovery call.
pub fn discover(link: &StorageLink) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut cookie = 0;
    loop {
        match link.client.call(Request::ReadDir {
            path: String::new(),
            cookie,
            max: 1024,
            with_attrs: false,
        })? {
            Response::DirPage(p) => {
                names.extend(p.entries.into_iter().map(|e| e.name));
                match p.next {
                    Some(c) => cookie = c,
                    None => return Ok(names),
                }
            }
            other => anyhow::bail!("discovery answered {} instead of DirPage", other.name()),
        }
    }
}

/// Everything [`prepare`] set up for [`run`].
#[derive(Debug)]
pub struct Prepared {
    settings: Settings,
    /// The sandbox report, as logged.
    pub confinement: String,
}

/// The directory of a remote that is a local path: `/abs/path`, `:local:/abs/path` (rclone's
/// on-the-fly backend) or `local:/abs/path` (a configured remote named `local`). Its
/// volumes and rclone's partial directory live beneath it, so the sandbox must reach it.
pub fn local_remote_dir(remote: &str) -> Option<PathBuf> {
    let path = if remote.starts_with('/') {
        remote
    } else {
        remote
            .strip_prefix(":local:")
            .or_else(|| remote.strip_prefix("local:"))?
    };
    let p = Path::new(path);
    p.is_absolute().then(|| p.to_path_buf())
}

/// The absolute, symlink-free path of `program`, looked up in `$PATH` like `execvp` would:
/// the sandbox grants execute on exactly that file, so it is resolved before the sandbox.
fn resolve_program(program: &Path, what: &str) -> anyhow::Result<PathBuf> {
    if program.components().count() > 1 {
        return std::fs::canonicalize(program)
            .with_context(|| format!("{what} {}", program.display()));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(program);
        if std::fs::metadata(&cand).is_ok_and(|m| m.is_file()) {
            return std::fs::canonicalize(&cand)
                .with_context(|| format!("{what} {}", cand.display()));
        }
    }
    anyhow::bail!(
        "{what} {} is not in PATH ({})",
        program.display(),
        path.to_string_lossy()
    )
}

/// The policy of `sandbox.json` plus landlock rules for paths known only at start.
fn policy_with(extra: &[(&Path, &str, &str)]) -> anyhow::Result<Policy> {
    let mut doc: serde_json::Value =
        serde_json::from_str(SANDBOX_POLICY).with_context(|| format!("parsing {POLICY_ORIGIN}"))?;
    let rules = doc
        .pointer_mut("/landlock/rules")
        .and_then(serde_json::Value::as_array_mut)
        .with_context(|| format!("{POLICY_ORIGIN}: no landlock.rules list"))?;
    for (path, access, why) in extra {
        let path = path.to_str().with_context(|| {
            format!(
                "{}: not UTF-8, cannot name it in the sandbox",
                path.display()
            )
        })?;
        rules.push(serde_json::json!({"path": path, "access": access, "why": why}));
    }
    Policy::from_json_str(&doc.to_string(), POLICY_ORIGIN)
        .context("loading the transfer sandbox policy")
}

/// Set-up, then confinement. Must run before the agent starts any thread: rclone and the
/// qrexec clients started later inherit the sandbox.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let mut settings = Settings::load(&config.remote.value)?;
    settings.rclone = resolve_program(&settings.rclone, "the rclone program")?;
    let connector = resolve_program(Path::new(&settings.qrexec_client), "the qrexec client")?;
    settings.qrexec_client = connector.clone().into_os_string();
    let cwd = std::env::current_dir().context("reading the current directory")?;
    settings.rclone_config = cwd.join(&settings.rclone_config);
    let config_dir = settings
        .rclone_config
        .parent()
        .context("rclone's config file has no directory")?
        .to_path_buf();
    let remote_dir = local_remote_dir(&settings.remote);

    let base = Policy::from_json_str(SANDBOX_POLICY, POLICY_ORIGIN)
        .context("loading the transfer sandbox policy")?;
    let owner = sandbox_owner(&base)?;
    ensure_dir(&settings.state_dir, 0o700)?;
    // `cloudstore status` reads the status file as the qube's user.
    ensure_dir(&settings.runtime_dir, 0o755)?;
    let temp = settings.state_dir.join(RCLONE_TEMP_DIR);
    match std::fs::remove_dir_all(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("emptying {}", temp.display())),
    }
    ensure_dir(&temp, 0o700)?;
    let config_dir_existed = config_dir.is_dir();
    ensure_dir(&config_dir, 0o700)?;
    if let Some(dir) = &remote_dir {
        ensure_dir(dir, 0o700)?;
    }
    if let Some(owner) = owner {
        hand_over(&settings.state_dir, owner)?;
        nix::unistd::chown(&settings.runtime_dir, Some(owner.0), Some(owner.1))
            .with_context(|| format!("chown {}", settings.runtime_dir.display()))?;
        if !config_dir_existed {
            nix::unistd::chown(&config_dir, Some(owner.0), Some(owner.1))
                .with_context(|| format!("chown {}", config_dir.display()))?;
        }
        // A local "cloud" is the role's own directory: rclone writes it as the sandbox user.
        // Never a top-level directory such as /home or /srv, which are not ours to give.
        if let Some(dir) = &remote_dir {
            if dir.components().count() > 2 {
                hand_over(dir, owner)?;
            } else {
                warn!(
                    "the local remote {} is a top-level directory: not handing it to the sandbox user",
                    dir.display()
                );
            }
        }
    }

    let mut extra: Vec<(&Path, &str, &str)> = vec![(
        &settings.rclone,
        "execute",
        "the rclone program, resolved at start",
    )];
    if let Some(dir) = &remote_dir {
        extra.push((
            dir,
            "read-write",
            "the remote is a local directory (tests, demo): rclone's local backend writes the volumes there",
        ));
    }
    let policy = policy_with(&extra)?;
    let vars = Vars::new()
        .with("data_dir", &settings.state_dir)
        .with("runtime_dir", &settings.runtime_dir)
        .with("config_dir", &config_dir)
        .with("connector", &connector);
    let report = Sandbox::apply(&policy, &vars).context("confining the transfer role")?;
    for w in &report.warnings {
        warn!("sandbox: {w}");
    }
    let confinement = report.to_string();
    info!(sandbox = %confinement, "transfer role confined");
    crate::sandbox_probe::run_if_asked();
    Ok(Prepared {
        settings,
        confinement,
    })
}

type SharedStatus = Arc<Mutex<BTreeMap<String, Arc<Mutex<VolumeStatus>>>>>;

/// The transfer role's entry point (see `roles` for the contract), after [`prepare`].
pub fn run(prepared: Prepared, ctx: RoleContext) -> anyhow::Result<()> {
    let settings = prepared.settings;
    let _lock = lock_state_dir(&settings.state_dir)?;
    let cloud = Arc::new(
        Rclone::start(settings.rclone_options())
            .with_context(|| format!("starting rclone for {}", settings.remote))?,
    );
    if let Err(e) = cloud.clean_partial() {
        warn!("removing cut uploads from {}: {e}", settings.remote);
    }
    info!(remote = %settings.remote, poll_secs = settings.poll.as_secs_f64(), "transfer role syncing");
    ctx.ready(&format!("syncing with {}", settings.remote));

    let statuses: SharedStatus = Arc::default();
    let mut threads: BTreeMap<String, thread::JoinHandle<()>> = BTreeMap::new();
    let mut discovery: Option<StorageLink> = None;
    let mut next_discovery = Instant::now();
    let mut global_error: Option<String> = None;
    let mut failures = 0u32;
    loop {
        if ctx.shutdown.is_triggered() {
            break;
        }
        while let Ok(update) = ctx.updates.try_recv() {
            if update.config.remote.value != settings.remote {
                ctx.shutdown.trigger();
                for (_, t) in std::mem::take(&mut threads) {
                    let _ = t.join();
                }
                anyhow::bail!(
                    "the remote changed from {} to {}; restarting to sync with the new one",
                    settings.remote,
                    update.config.remote.value
                );
            }
        }
        if Instant::now() >= next_discovery {
            let r = (|| -> anyhow::Result<Vec<String>> {
                if !discovery
                    .as_ref()
                    .is_some_and(|d| d.client.lost().is_none())
                {
                    discovery = None;
                    discovery = Some(StorageLink::connect(&settings.qrexec_client, "")?);
                }
                discover(discovery.as_ref().expect("connected"))
            })();
            match r {
                Ok(volumes) => {
                    failures = 0;
                    global_error = None;
                    for v in volumes {
                        if threads.contains_key(&v) {
                            continue;
                        }
                        let st = Arc::new(Mutex::new(VolumeStatus::default()));
                        statuses.lock().unwrap().insert(v.clone(), st.clone());
                        let (s, sd, vol) = (settings.clone(), ctx.shutdown.clone(), v.clone());
                        let c = cloud.clone();
                        let h = thread::Builder::new()
                            .name(format!("sync-{v}"))
                            .spawn(move || volume_loop(&s, &vol, c, st, &sd))
                            .context("starting a volume sync thread")?;
                        info!(volume = %v, "syncing volume {v} with {}/{v}", settings.remote);
                        threads.insert(v, h);
                    }
                    next_discovery = Instant::now() + settings.poll;
                }
                Err(e) => {
                    failures += 1;
                    discovery = None;
                    let msg = format!("storage discovery failed: {e:#}");
                    if global_error.as_deref() != Some(&msg) {
                        error!("{msg}");
                    }
                    global_error = Some(msg);
                    next_discovery = Instant::now() + engine::backoff(failures, settings.poll);
                }
            }
        }
        publish(&settings, &statuses, global_error.clone(), &ctx);
        ctx.shutdown.wait_timeout(Duration::from_secs(1));
    }
    for (_, t) in threads {
        let _ = t.join();
    }
    publish(&settings, &statuses, global_error, &ctx);
    cloud.stop();
    Ok(())
}

fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let p = dir.join("transfer.lock");
    let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        anyhow::bail!(
            "{} is locked: another transfer agent uses this state directory",
            p.display()
        );
    }
    Ok(f)
}

fn publish(
    settings: &Settings,
    statuses: &SharedStatus,
    global: Option<String>,
    ctx: &RoleContext,
) {
    let mut st = TransferStatus {
        remote: settings.remote.clone(),
        volumes: BTreeMap::new(),
        last_error: global.clone(),
    };
    let mut lines = Vec::new();
    for (v, s) in statuses.lock().unwrap().iter() {
        let s = s.lock().unwrap().clone();
        lines.push(s.line(v));
        st.volumes.insert(v.clone(), s);
    }
    if let Err(e) = status::write(&settings.runtime_dir, &st) {
        warn!(
            "writing the status file in {}: {e}",
            settings.runtime_dir.display()
        );
    }
    let line = match global {
        Some(e) => format!("{e}; {}", lines.join("; ")),
        None if lines.is_empty() => format!("syncing with {}: no volumes yet", settings.remote),
        None => lines.join("; "),
    };
    ctx.status(&line);
}

/// One volume: connect, pass, wait for a push or the poll, again; reconnect with backoff.
fn volume_loop(
    s: &Settings,
    volume: &str,
    cloud: Arc<Rclone>,
    status: Arc<Mutex<VolumeStatus>>,
    shutdown: &Shutdown,
) {
    let mut failures = 0u32;
    let confirm = s.state_dir.join(status::CONFIRM_FLAG);
    while !shutdown.is_triggered() {
        let link = match StorageLink::connect(&s.qrexec_client, volume) {
            Ok(l) => l,
            Err(e) => {
                failures += 1;
                let msg = format!("{e:#}");
                warn!(volume = %volume, "{msg}");
                let mut st = status.lock().unwrap();
                st.connected = false;
                st.last_error = Some(msg);
                drop(st);
                shutdown.wait_timeout(engine::backoff(failures, s.poll));
                continue;
            }
        };
        status.lock().unwrap().connected = true;
        if let Err(e) = link.client.call(Request::Subscribe) {
            warn!(volume = %volume, "subscribing to storage changes: {e}; relying on the poll");
        }
        let db = match statedb::StateDb::open(&s.state_dir, volume) {
            Ok(db) => db,
            Err(e) => {
                error!(volume = %volume, "{e}");
                status.lock().unwrap().last_error = Some(e.to_string());
                shutdown.wait_timeout(s.poll);
                continue;
            }
        };
        let sync = VolumeSync::new(
            volume,
            link.client.clone(),
            cloud.clone(),
            db,
            s.limits,
            s.workers,
            status.clone(),
            confirm.clone(),
        );
        let mut full = true;
        let mut next_poll = Instant::now();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let t0 = Instant::now();
            match sync.pass(full) {
                Ok(r) => {
                    if r.blocked_deletions.is_none() && !r.errors.is_empty() {
                        failures += 1;
                    } else {
                        failures = 0;
                    }
                    if r.uploaded + r.downloaded + r.deleted_cloud + r.deleted_store + r.conflicts
                        > 0
                        || !r.errors.is_empty()
                    {
                        info!(
                            volume = %volume,
                            UPLOADED = r.uploaded,
                            DOWNLOADED = r.downloaded,
                            DELETED_CLOUD = r.deleted_cloud,
                            DELETED_STORAGE = r.deleted_store,
                            CONFLICTS = r.conflicts,
                            BYTES = r.bytes,
                            ERRORS = r.errors.len(),
                            ELAPSED_MS = t0.elapsed().as_millis() as u64,
                            "sync pass of {volume}: {} up, {} down, {} deleted in the cloud, {} in storage, {} conflicts, {} errors",
                            r.uploaded, r.downloaded, r.deleted_cloud, r.deleted_store, r.conflicts, r.errors.len()
                        );
                    }
                }
                Err(e) => {
                    failures += 1;
                    let msg = e.to_string();
                    warn!(volume = %volume, "sync pass failed: {msg}");
                    status.lock().unwrap().last_error = Some(msg);
                }
            }
            if link.client.lost().is_some() {
                warn!(volume = %volume, "lost the storage stream; reconnecting");
                status.lock().unwrap().connected = false;
                break;
            }
            if full {
                next_poll = Instant::now() + s.poll;
            }
            let retry_at =
                (failures > 0).then(|| Instant::now() + engine::backoff(failures, s.poll));
            // Wait for a push (storage changed), the poll, a confirmation, or a retry.
            full = loop {
                if shutdown.is_triggered() {
                    return;
                }
                let now = Instant::now();
                if now >= next_poll {
                    break true;
                }
                if retry_at.is_some_and(|t| now >= t) {
                    break true;
                }
                let blocked = status.lock().unwrap().blocked_deletions.is_some();
                if blocked && confirm.exists() {
                    break true;
                }
                match link.pushes.recv_timeout(Duration::from_millis(250)) {
                    Ok(_) => {
                        // Let the burst settle, then one quick pass.
                        let until = Instant::now() + DEBOUNCE;
                        while let Some(left) = until.checked_duration_since(Instant::now()) {
                            if link.pushes.recv_timeout(left).is_err() {
                                break;
                            }
                        }
                        break blocked;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        if link.client.lost().is_some() {
                            break false;
                        }
                        shutdown.wait_timeout(Duration::from_millis(250));
                    }
                }
            };
            if link.client.lost().is_some() {
                status.lock().unwrap().connected = false;
                break;
            }
        }
    }
}

/// `cloudstore sync --confirm-deletes`: lets a sync stopped by the deletion limit go on.
pub fn confirm_deletes() -> anyhow::Result<()> {
    let dir = config::data_dir();
    let p = dir.join(status::CONFIRM_FLAG);
    std::fs::write(&p, b"confirmed\n").with_context(|| format!("creating {}", p.display()))?;
    // The agent runs as the sandbox user and removes the flag once done.
    if let Ok(m) = std::fs::metadata(&dir) {
        use std::os::unix::fs::MetadataExt;
        let _ = nix::unistd::chown(
            &p,
            Some(nix::unistd::Uid::from_raw(m.uid())),
            Some(nix::unistd::Gid::from_raw(m.gid())),
        );
    }
    Ok(())
}

/// The transfer part of `cloudstore status`.
pub fn print_status(out: &mut impl std::io::Write) -> std::io::Result<()> {
    status::print(out, &config::runtime_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_remote_dir_only_for_absolute_local_paths() {
        let p = |s: &str| local_remote_dir(s).map(|p| p.display().to_string());
        assert_eq!(p("/srv/cloud").as_deref(), Some("/srv/cloud"));
        assert_eq!(p(":local:/srv/cloud").as_deref(), Some("/srv/cloud"));
        assert_eq!(p("local:/srv/cloud").as_deref(), Some("/srv/cloud"));
        // A cloud remote, a relative local path and a remote merely named like a path are
        // not given a landlock rule.
        assert_eq!(p("onedrive:CloudStore"), None);
        assert_eq!(p(":local:relative/dir"), None);
        assert_eq!(p("local:"), None);
        assert_eq!(p("cloud"), None);
        assert_eq!(p(":webdav,url='http://localhost:8080/':/x"), None);
    }

    #[test]
    fn the_policy_takes_the_rules_known_at_start() {
        let prog = Path::new("/usr/bin/rclone");
        let dir = Path::new("/srv/cloud");
        let p = policy_with(&[(prog, "execute", "rclone"), (dir, "read-write", "cloud")]).unwrap();
        let rules = &p.landlock().rules;
        assert!(rules.iter().any(
            |r| r.path == "/usr/bin/rclone" && r.access == cloudstore_sandbox::Access::Execute
        ));
        assert!(rules.iter().any(|r| r.path == "/srv/cloud"));
        assert_eq!(p.role(), "transfer");
        assert!(p.kept_capabilities().is_empty());
        // A path the policy already lists is refused by name rather than silently merged.
        let e = policy_with(&[(Path::new("/etc"), "read-write", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("transfer sandbox policy"), "{e}");
    }
}
