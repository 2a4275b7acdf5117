//! The three roles. Each is one module with one entry function, and its sandbox policy
//! lives beside it as data.
//!
//! Every role's entry function has the same signature:
//!
//! ```ignore
//! pub fn run(ctx: RoleContext) -> anyhow::Result<()>
//! ```
//!
//! It runs on its own thread. `agent_main` (below) supervises it: it owns the qubesdb
//! connection and its watches, handles SIGTERM/SIGINT, pings the systemd watchdog, and
//! passes configuration changes to the role through [`RoleContext::updates`]. The role
//! sends READY (with [`RoleContext::ready`]) once it serves, and returns when
//! [`RoleContext::shutdown`] fires (the `updates` channel closes at the same moment).
//!
//! Exit codes of `cloudstore agent` (see [`exit_code`]): 0 after a clean stop, 1 when the
//! role or qubesdb failed (systemd may retry), 75 when the role key changed (systemd
//! restarts the agent, which then reads the new role), 78 for a configuration mistake
//! (units set `RestartPreventExitStatus=78`: no restart loop; fix the feature in dom0 and
//! start the unit again).

use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use cloudstore_qubesdb::QubesDb;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{debug, error, info, warn};

use crate::cli::{AgentArgs, StatusArgs};
use crate::config::{self, Change, Config, ConfigError, KeySource, Role};
use crate::{logging, notify};

pub mod consumer;
mod setup;
pub mod storage;
pub mod transfer;

/// Exit codes of `cloudstore agent` and `cloudstore status`.
pub mod exit_code {
    /// Clean stop (SIGTERM, or the role finished).
    pub const OK: u8 = 0;
    /// The role failed, or qubesdb is unreachable or went away. Worth a retry.
    pub const FAILURE: u8 = 1;
    /// `EX_TEMPFAIL`: the role key changed at run time; the agent exits so that systemd
    /// (`Restart=on-failure`) starts it again and it reads the new role.
    pub const ROLE_CHANGED: u8 = 75;
    /// `EX_CONFIG` (sysexits.h): missing or invalid configuration. Not worth a retry until
    /// the user changes it; units set `RestartPreventExitStatus=78`.
    pub const CONFIG: u8 = 78;
}

/// How long a role gets to stop after SIGTERM before the agent exits anyway. Below
/// systemd's default `TimeoutStopSec` (90 s), so our own message, not a SIGKILL, ends it.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A one-shot, pollable event: set once, seen by every clone, its fd readable once set.
#[derive(Clone, Debug)]
pub struct Shutdown {
    inner: Arc<LatchInner>,
}

#[derive(Debug)]
struct LatchInner {
    fired: Mutex<bool>,
    cv: Condvar,
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl Shutdown {
    pub fn new() -> io::Result<Shutdown> {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Shutdown {
            inner: Arc::new(LatchInner {
                fired: Mutex::new(false),
                cv: Condvar::new(),
                read_end,
                write_end,
            }),
        })
    }

    /// Asks everyone holding a clone to stop. Idempotent.
    pub fn trigger(&self) {
        let mut fired = self.inner.fired.lock().unwrap_or_else(|p| p.into_inner());
        if !*fired {
            *fired = true;
            // One byte, never read: the read end stays readable for every poller.
            let _ = nix::unistd::write(&self.inner.write_end, &[1]);
            self.inner.cv.notify_all();
        }
    }

    pub fn is_triggered(&self) -> bool {
        *self.inner.fired.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until triggered or `timeout` passes; returns whether it was triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = self.inner.fired.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .inner
            .cv
            .wait_timeout_while(guard, timeout, |fired| !*fired)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

impl AsFd for Shutdown {
    /// Readable once triggered: put it in the role's own poll set.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.read_end.as_fd()
    }
}

/// A configuration change handed to the running role.
#[derive(Debug, Clone)]
pub struct ConfigUpdate {
    /// The whole new configuration (same role as before).
    pub config: Config,
    /// What changed, role never among them (a role change restarts the agent).
    pub changes: Vec<Change>,
}

/// What a role's `run` receives.
#[derive(Debug)]
pub struct RoleContext {
    /// The configuration at start.
    pub config: Config,
    /// Later changes of any key but `role`. Closed when the agent stops.
    pub updates: Receiver<ConfigUpdate>,
    /// Fires on SIGTERM/SIGINT or when the agent must restart; the role then returns.
    pub shutdown: Shutdown,
}

impl RoleContext {
    /// Tells systemd the role is serving (`READY=1`) and what it is doing.
    pub fn ready(&self, status: &str) {
        notify::ready(status);
    }

    /// Updates the status line `systemctl status` shows.
    pub fn status(&self, status: &str) {
        notify::status(status);
    }
}

/// What to do about a qubesdb watch event, decided from the keys as they are now.
#[derive(Debug)]
pub enum Action {
    /// Nothing that matters changed (the event was for an equal value).
    Nothing,
    /// Pass these changes to the role.
    Update(ConfigUpdate),
    /// The role changed to another valid role: restart under it.
    RoleChanged {
        from: Role,
        to: Role,
        origin: config::Origin,
    },
    /// The role is now missing or invalid: stop without restart.
    Stop(ConfigError),
    /// Another key is now invalid: report it and keep the last good configuration.
    KeepOld(ConfigError),
    /// qubesdb failed while re-reading.
    Fail(ConfigError),
}

/// Re-reads the configuration after a watch event and decides what to do.
pub fn decide(current: &Config, db: &mut impl KeySource) -> Action {
    let role = match config::load_role(db) {
        Ok(r) => r,
        Err(e) if e.is_config_mistake() => return Action::Stop(e),
        Err(e) => return Action::Fail(e),
    };
    if role.value != current.role.value {
        return Action::RoleChanged {
            from: current.role.value,
            to: role.value,
            origin: role.origin,
        };
    }
    match Config::load(db) {
        // Changed between the two reads: still a change of role, never an update.
        Ok(new) if new.role.value != current.role.value => Action::RoleChanged {
            from: current.role.value,
            to: new.role.value,
            origin: new.role.origin,
        },
        Ok(new) => {
            let changes = config::diff(current, &new);
            if changes.is_empty() {
                Action::Nothing
            } else {
                Action::Update(ConfigUpdate {
                    config: new,
                    changes,
                })
            }
        }
        Err(e) if e.is_config_mistake() => Action::KeepOld(e),
        Err(e) => Action::Fail(e),
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    let code = if e.is_config_mistake() {
        exit_code::CONFIG
    } else {
        exit_code::FAILURE
    };
    error!(exit_code = code, "configuration error: {e}");
    notify::status(&format!("configuration error: {e}"));
    ExitCode::from(code)
}

/// `cloudstore agent`: run the role configured in qubesdb until stopped.
pub fn agent_main(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    logging::init();
    notify::status("reading configuration from qubesdb");
    let socket = config::qubesdb_socket();
    let mut db = match QubesDb::open(&socket) {
        Ok(db) => db,
        Err(e) => {
            error!(exit_code = exit_code::FAILURE, "{e}");
            notify::status(&format!("qubesdb unreachable: {e}"));
            return Ok(ExitCode::from(exit_code::FAILURE));
        }
    };
    // Watch first, then read: a change in between produces an event, never a miss.
    if let Err(e) = config::watch(&mut db) {
        return Ok(config_failure(&e));
    }
    let config = match Config::load(&mut db) {
        Ok(c) => c,
        Err(e) => return Ok(config_failure(&e)),
    };
    let role = config.role.value;
    let span = tracing::info_span!("agent", role = %role);
    let _entered = span.enter();
    let role_key = match &config.role.origin {
        config::Origin::Qubesdb(p) => p.clone(),
        config::Origin::Default => String::new(),
    };
    info!(
        key = %role_key,
        volumes = %config.volumes_text(),
        "starting the {role} role (role from {})",
        config.role.origin
    );
    notify::status(&format!("starting the {role} role"));

    // SIGTERM and SIGINT arrive through a signalfd in the supervision loop. They are
    // blocked before any thread starts, so every thread inherits the mask and none is
    // killed by them mid-write.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().context("blocking SIGTERM/SIGINT")?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("creating the signalfd for SIGTERM/SIGINT")?;

    // Roles that confine themselves do their privileged set-up and apply their sandbox here,
    // while this is the only thread (capabilities and landlock domains are per thread).
    let mut storage_prepared = None;
    if role == Role::Storage {
        notify::status("setting up and confining the storage role");
        match storage::prepare(&config) {
            Ok(p) => storage_prepared = Some(p),
            Err(e) => {
                error!(
                    exit_code = exit_code::FAILURE,
                    "cannot set up the storage role: {e:#}"
                );
                notify::status(&format!("storage set-up failed: {e:#}"));
                return Ok(ExitCode::from(exit_code::FAILURE));
            }
        }
    }
    let mut transfer_prepared = None;
    if role == Role::Transfer {
        notify::status("setting up and confining the transfer role");
        match transfer::prepare(&config) {
            Ok(p) => transfer_prepared = Some(p),
            Err(e) => {
                error!(
                    exit_code = exit_code::FAILURE,
                    "cannot set up the transfer role: {e:#}"
                );
                notify::status(&format!("transfer set-up failed: {e:#}"));
                return Ok(ExitCode::from(exit_code::FAILURE));
            }
        }
    }

    let shutdown = Shutdown::new().context("creating the shutdown pipe")?;
    let finished = Shutdown::new().context("creating the role-finished pipe")?;
    let (tx, rx) = mpsc::channel();
    let ctx = RoleContext {
        config: config.clone(),
        updates: rx,
        shutdown: shutdown.clone(),
    };
    let role_span = span.clone();
    let role_done = finished.clone();
    let handle = thread::Builder::new()
        .name(format!("role-{role}"))
        .spawn(move || {
            let _entered = role_span.enter();
            let result = match role {
                Role::Storage => match storage_prepared {
                    Some(p) => storage::run(p, ctx),
                    None => Err(anyhow::anyhow!("the storage role was not set up")),
                },
                Role::Transfer => match transfer_prepared {
                    Some(p) => transfer::run(p, ctx),
                    None => Err(anyhow::anyhow!("the transfer role was not set up")),
                },
                Role::Consumer => consumer::run(ctx),
            };
            role_done.trigger();
            result
        })
        .context("starting the role thread")?;

    let sup = Supervisor {
        db,
        config,
        updates: Some(tx),
        shutdown,
        finished,
        sigfd,
        watchdog: notify::Watchdog::from_env(),
    };
    let code = sup.run(handle);
    Ok(ExitCode::from(code))
}

struct Supervisor {
    db: QubesDb,
    config: Config,
    updates: Option<Sender<ConfigUpdate>>,
    shutdown: Shutdown,
    finished: Shutdown,
    sigfd: SignalFd,
    watchdog: Option<notify::Watchdog>,
}

impl Supervisor {
    fn run(mut self, handle: thread::JoinHandle<anyhow::Result<()>>) -> u8 {
        let role = self.config.role.value;
        let stop_code = loop {
            if let Some(w) = self.watchdog.as_mut() {
                w.ping_if_due();
            }
            let mut timeout = self.watchdog.as_ref().map(|w| w.until_due());
            if self.db.has_pending_event() {
                timeout = Some(Duration::ZERO);
            }
            let poll_timeout = match timeout {
                None => PollTimeout::NONE,
                Some(t) => PollTimeout::try_from(t.as_millis().max(1)).unwrap_or(PollTimeout::MAX),
            };
            let (sig_ready, db_ready, done_ready) = {
                let mut fds = [
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.db.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.finished.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, poll_timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        error!("poll failed in the supervision loop: {e}");
                        break exit_code::FAILURE;
                    }
                }
                let r = |f: &PollFd| f.revents().is_some_and(|e| !e.is_empty());
                (r(&fds[0]), r(&fds[1]), r(&fds[2]))
            };
            if done_ready {
                // The role returned on its own; its result decides the exit code below.
                break exit_code::OK;
            }
            if sig_ready {
                if let Ok(Some(si)) = self.sigfd.read_signal() {
                    let name = Signal::try_from(si.ssi_signo as i32)
                        .map(|s| s.as_str())
                        .unwrap_or("signal");
                    info!("received {name}; stopping the {role} role");
                    notify::stopping(&format!("stopping ({name})"));
                    break exit_code::OK;
                }
            }
            if db_ready || self.db.has_pending_event() {
                if let Some(code) = self.drain_events() {
                    break code;
                }
            }
        };
        self.shutdown.trigger();
        self.updates = None;
        let role_result = if self.finished.wait_timeout(STOP_GRACE) {
            Some(handle.join())
        } else {
            warn!("the {role} role did not stop within {STOP_GRACE:?}; exiting anyway");
            None
        };
        match role_result {
            Some(Ok(Ok(()))) => {
                info!("the {role} role stopped");
                stop_code
            }
            Some(Ok(Err(e))) => {
                error!(
                    exit_code = exit_code::FAILURE,
                    "the {role} role failed: {e:#}"
                );
                notify::status(&format!("{role} role failed: {e:#}"));
                if stop_code == exit_code::OK {
                    exit_code::FAILURE
                } else {
                    stop_code
                }
            }
            Some(Err(_)) => {
                error!(exit_code = exit_code::FAILURE, "the {role} role panicked");
                exit_code::FAILURE
            }
            None => stop_code,
        }
    }

    /// Handles every qubesdb event available now; `Some(code)` means the agent must stop.
    fn drain_events(&mut self) -> Option<u8> {
        loop {
            match self.db.next_event(Some(Duration::ZERO)) {
                Ok(None) => return None,
                Ok(Some(path)) => {
                    debug!(key = %path, "qubesdb watch fired");
                    if let Some(code) = self.reconsider(&path) {
                        return Some(code);
                    }
                }
                Err(cloudstore_qubesdb::Error::EventsLost { dropped }) => {
                    warn!("{dropped} qubesdb events were dropped; re-reading the configuration");
                    if let Some(code) = self.reconsider("(lost events)") {
                        return Some(code);
                    }
                }
                Err(e) => {
                    error!(
                        exit_code = exit_code::FAILURE,
                        "lost the qubesdb connection: {e}; exiting so that systemd restarts the agent and its watches"
                    );
                    return Some(exit_code::FAILURE);
                }
            }
        }
    }

    fn reconsider(&mut self, path: &str) -> Option<u8> {
        match decide(&self.config, &mut self.db) {
            Action::Nothing => None,
            Action::Update(update) => {
                for c in &update.changes {
                    info!(key = %path, "configuration changed: {c}");
                }
                notify::status(&format!(
                    "{} role; configuration changed ({})",
                    self.config.role.value,
                    update
                        .changes
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                self.config = update.config.clone();
                if let Some(tx) = &self.updates {
                    let _ = tx.send(update);
                }
                None
            }
            Action::RoleChanged { from, to, origin } => {
                warn!(
                    key = %path,
                    exit_code = exit_code::ROLE_CHANGED,
                    "role changed from {from} to {to} ({origin}); exiting so that systemd starts the agent again as {to}"
                );
                notify::stopping(&format!("role changed to {to}; restarting"));
                Some(exit_code::ROLE_CHANGED)
            }
            Action::Stop(e) => {
                error!(key = %path, exit_code = exit_code::CONFIG, "configuration error: {e}; stopping");
                notify::stopping(&format!("configuration error: {e}"));
                Some(exit_code::CONFIG)
            }
            Action::KeepOld(e) => {
                error!(key = %path, "configuration error: {e}; keeping the previous configuration until it is fixed");
                notify::status(&format!(
                    "configuration error (previous configuration kept): {e}"
                ));
                None
            }
            Action::Fail(e) => {
                error!(exit_code = exit_code::FAILURE, "{e}");
                Some(exit_code::FAILURE)
            }
        }
    }
}

/// Arguments of `cloudstore role-is`.
#[derive(Debug, clap::Args)]
pub struct RoleIsArgs {
    /// storage, transfer or consumer.
    #[arg(value_parser = parse_role_arg)]
    pub role: Role,
}

fn parse_role_arg(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|()| format!("{s:?} is not a role; use storage, transfer or consumer"))
}

/// `cloudstore role-is ROLE`, the `ExecCondition=` of each role's unit: exit 0 when the
/// qube's role is ROLE; 1 when it is another valid role or unset (systemd skips the unit
/// quietly); 255 when the role is set but invalid, or qubesdb cannot be read (systemd
/// fails the unit, and this message in the journal says why).
pub fn role_is_main(args: RoleIsArgs) -> anyhow::Result<ExitCode> {
    const SKIP: u8 = 1;
    const FAIL: u8 = 255;
    let socket = config::qubesdb_socket();
    let mut db = match QubesDb::open(&socket) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("cloudstore: {e}");
            return Ok(ExitCode::from(FAIL));
        }
    };
    match config::load_role(&mut db) {
        Ok(r) if r.value == args.role => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!(
                "cloudstore: this qube's role is {} ({}), not {}",
                r.value, r.origin, args.role
            );
            Ok(ExitCode::from(SKIP))
        }
        Err(ConfigError::MissingRole { .. }) => {
            eprintln!(
                "cloudstore: no role configured for this qube; not starting the {} role",
                args.role
            );
            Ok(ExitCode::from(SKIP))
        }
        Err(e) => {
            eprintln!("cloudstore: {e}");
            Ok(ExitCode::from(FAIL))
        }
    }
}

fn print_status(out: &mut impl io::Write, c: &Config, socket: &std::path::Path) -> io::Result<()> {
    let volumes = if c.volumes.value.is_empty() {
        "(none)".to_owned()
    } else {
        c.volumes_text()
    };
    writeln!(
        out,
        "role:       {:<24} ({})",
        c.role.value.as_str(),
        c.role.origin
    )?;
    writeln!(out, "volumes:    {volumes:<24} ({})", c.volumes.origin)?;
    match c.role.value {
        Role::Transfer => writeln!(
            out,
            "remote:     {:<24} ({})",
            c.remote.value, c.remote.origin
        )?,
        Role::Consumer => {
            writeln!(out, "user:       {:<24} ({})", c.user.value, c.user.origin)?;
            let mp = c
                .mountpoint
                .value
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("~{}/CloudStore", c.user.value));
            writeln!(out, "mountpoint: {mp:<24} ({})", c.mountpoint.origin)?;
        }
        Role::Storage => {}
    }
    writeln!(out, "qubesdb:    {}", socket.display())?;
    Ok(())
}

/// `cloudstore status`: this qube's role and configured volumes (`--watch`: again after
/// every configuration change).
pub fn status_main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = config::qubesdb_socket();
    let mut db = QubesDb::open(&socket)?;
    if args.watch {
        config::watch(&mut db)?;
    }
    let mut current = match Config::load(&mut db) {
        Ok(c) => c,
        Err(e) if e.is_config_mistake() => {
            eprintln!("cloudstore: configuration error: {e}");
            return Ok(ExitCode::from(exit_code::CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = io::stdout().lock();
    print_status(&mut out, &current, &socket)?;
    if current.role.value == Role::Consumer {
        consumer::commands::print_volume_status(&mut out)?;
    }
    if current.role.value == Role::Transfer {
        transfer::print_status(&mut out)?;
    }

    out.flush()?;
    drop(out);
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        db.next_event(None)?;
        // Coalesce a burst of events (dom0 writes keys one by one) into one report.
        let settle = Instant::now() + Duration::from_millis(100);
        while let Some(left) = settle.checked_duration_since(Instant::now()) {
            if db.next_event(Some(left))?.is_none() {
                break;
            }
        }
        let mut out = io::stdout().lock();
        match decide(&current, &mut db) {
            Action::Nothing => continue,
            Action::Update(u) => {
                for c in &u.changes {
                    writeln!(out, "changed: {c}")?;
                }
                current = u.config;
            }
            Action::RoleChanged { from, to, .. } => {
                writeln!(out, "changed: role {from} -> {to}")?;
                current = Config::load(&mut db)?;
            }
            Action::Stop(e) | Action::KeepOld(e) => writeln!(out, "configuration error: {e}")?,
            Action::Fail(e) => return Err(e.into()),
        }
        print_status(&mut out, &current, &socket)?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fake_db as db;

    /// Answers the role key with each of `roles` in turn, as if it changed between reads.
    struct RoleChangingBetweenReads {
        keys: std::collections::BTreeMap<String, String>,
        roles: std::collections::VecDeque<&'static str>,
    }

    impl crate::config::KeySource for RoleChangingBetweenReads {
        fn read_key(&mut self, path: &str) -> Result<Option<Vec<u8>>, cloudstore_qubesdb::Error> {
            if path == "/cloudstore/role" {
                let role = if self.roles.len() > 1 {
                    self.roles.pop_front()
                } else {
                    self.roles.front().copied()
                };
                return Ok(role.map(|r| r.as_bytes().to_vec()));
            }
            self.keys.read_key(path)
        }
    }

    #[test]
    fn a_role_changed_between_the_reads_of_one_decision_is_a_role_change() {
        let mut m = db(&[
            ("/cloudstore/role", "storage"),
            ("/cloudstore/volumes", "work"),
        ]);
        let cur = Config::load(&mut m).unwrap();
        let mut changing = RoleChangingBetweenReads {
            keys: m,
            roles: ["storage", "consumer"].into(),
        };
        match decide(&cur, &mut changing) {
            Action::RoleChanged { from, to, .. } => {
                assert_eq!(
                    (from.to_string(), to.to_string()),
                    ("storage".into(), "consumer".into())
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decide_covers_each_kind_of_change() {
        let mut m = db(&[
            ("/cloudstore/role", "storage"),
            ("/cloudstore/volumes", "work"),
        ]);
        let cur = Config::load(&mut m).unwrap();
        assert!(matches!(decide(&cur, &mut m), Action::Nothing));

        m.insert("/cloudstore/volumes".into(), "work photos".into());
        match decide(&cur, &mut m) {
            Action::Update(u) => {
                assert_eq!(u.config.volumes_text(), "work photos");
                assert_eq!(u.changes.len(), 1);
            }
            other => panic!("{other:?}"),
        }

        m.insert("/cloudstore/volumes".into(), "Work!".into());
        match decide(&cur, &mut m) {
            Action::KeepOld(e) => assert!(e.to_string().contains("/cloudstore/volumes"), "{e}"),
            other => panic!("{other:?}"),
        }

        m.insert("/cloudstore/role".into(), "consumer".into());
        assert!(matches!(
            decide(&cur, &mut m),
            Action::RoleChanged {
                from: Role::Storage,
                to: Role::Consumer,
                ..
            }
        ));

        m.insert("/cloudstore/role".into(), "bogus".into());
        match decide(&cur, &mut m) {
            Action::Stop(e) => assert!(e.to_string().contains("bogus"), "{e}"),
            other => panic!("{other:?}"),
        }

        m.remove("/cloudstore/role");
        assert!(matches!(
            decide(&cur, &mut m),
            Action::Stop(ConfigError::MissingRole { .. })
        ));

        // Primary removed, the same role remains through the fallback: only the origin moved.
        m.insert("/vm-config/cloudstore.role".into(), "storage".into());
        m.insert("/cloudstore/volumes".into(), "work".into());
        match decide(&cur, &mut m) {
            Action::Update(u) => assert!(matches!(u.changes[0], Change::Origin { .. })),
            other => panic!("{other:?}"),
        }
    }

    /// Watch handling through the real client and the stand-in daemon: every key path is
    /// watched (primary directory and each fallback key), events arrive for changes and
    /// removals, and `decide` turns them into the right action.
    #[test]
    fn watch_events_drive_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = qubes_sim::qubesdb::QubesDbDaemon::start(
            &dir.path().join("qdb.sock"),
            [
                ("/cloudstore/role", "storage"),
                ("/vm-config/cloudstore.volumes", "work"),
            ]
            .map(|(k, v)| (k, v.as_bytes())),
        )
        .unwrap();
        let mut qdb = QubesDb::open(daemon.socket()).unwrap();
        config::watch(&mut qdb).unwrap();
        let cur = Config::load(&mut qdb).unwrap();
        let wait = Some(Duration::from_secs(10));

        daemon.write("/name", b"unrelated").unwrap();
        daemon
            .write("/vm-config/cloudstore.volumes", b"work photos")
            .unwrap();
        assert_eq!(
            qdb.next_event(wait).unwrap().as_deref(),
            Some("/vm-config/cloudstore.volumes")
        );
        assert!(
            matches!(decide(&cur, &mut qdb), Action::Update(ref u) if u.config.volumes_text() == "work photos")
        );

        daemon.write("/cloudstore/volumes", b"notes").unwrap();
        assert_eq!(
            qdb.next_event(wait).unwrap().as_deref(),
            Some("/cloudstore/volumes")
        );
        match decide(&cur, &mut qdb) {
            Action::Update(u) => assert_eq!(
                u.config.volumes.origin,
                config::Origin::Qubesdb("/cloudstore/volumes".into())
            ),
            other => panic!("{other:?}"),
        }

        // dom0's extension removing its whole directory fires the directory watch.
        assert!(daemon.rm("/cloudstore/").unwrap());
        assert_eq!(
            qdb.next_event(wait).unwrap().as_deref(),
            Some("/cloudstore/")
        );
        assert!(matches!(
            decide(&cur, &mut qdb),
            Action::Stop(ConfigError::MissingRole { .. })
        ));

        daemon
            .write("/vm-config/cloudstore.role", b"transfer")
            .unwrap();
        assert_eq!(
            qdb.next_event(wait).unwrap().as_deref(),
            Some("/vm-config/cloudstore.role")
        );
        assert!(matches!(
            decide(&cur, &mut qdb),
            Action::RoleChanged {
                to: Role::Transfer,
                ..
            }
        ));
        assert_eq!(
            qdb.next_event(Some(Duration::from_millis(100))).unwrap(),
            None,
            "/name fired nothing"
        );
    }

    #[test]
    fn shutdown_latch_is_pollable_and_shared() {
        let s = Shutdown::new().unwrap();
        let c = s.clone();
        assert!(!c.is_triggered());
        assert!(!c.wait_timeout(Duration::from_millis(10)));
        let t = thread::spawn(move || c.wait_timeout(Duration::from_secs(10)));
        s.trigger();
        s.trigger();
        assert!(t.join().unwrap());
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 1);
    }
}
