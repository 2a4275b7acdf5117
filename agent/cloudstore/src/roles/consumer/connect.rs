//! Reaching the storage qube: one `qrexec-client-vm @default cloudstore.Volume+VOL` child per
//! connection, its stdin and stdout being the stream (QubesOS/qubes-core-qrexec
//! doc/execution.rst: the caller's stdin/stdout are the service's stdout/stdin).

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use cloudstore_protocol::{Client, ClientConfig, Hello, Role};

use super::fs::{Connector, Streams};

/// Environment variable naming the qrexec client program (tests point it at a stand-in).
pub const QREXEC_CLIENT_ENV: &str = "CLOUDSTORE_QREXEC_CLIENT";
/// How long the storage may take to answer the protocol handshake: qrexec starts the call
/// in well under a second; a storage qube that is still booting gets a generous margin.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The program that makes a qrexec call from a qube (qubes-core-qrexec `qrexec-client-vm`).
pub const DEFAULT_QREXEC_CLIENT: &str = "qrexec-client-vm";

/// The qrexec client program: `$CLOUDSTORE_QREXEC_CLIENT`, else `qrexec-client-vm`.
pub fn client_program() -> OsString {
    match std::env::var_os(QREXEC_CLIENT_ENV) {
        Some(p) if !p.is_empty() => p,
        _ => OsString::from(DEFAULT_QREXEC_CLIENT),
    }
}

/// The absolute path of the qrexec client program, looked up in `$PATH` like `execvp` would.
/// The sandbox grants execute on exactly this file, so it is resolved before the sandbox.
pub fn resolve_program(program: &OsString) -> io::Result<PathBuf> {
    let p = PathBuf::from(program);
    if p.components().count() > 1 || p.is_absolute() {
        return std::fs::canonicalize(&p).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the qrexec client program {}: {e}", p.display()),
            )
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(&p);
        if let Ok(m) = std::fs::metadata(&cand) {
            if m.is_file() {
                return std::fs::canonicalize(&cand);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "the qrexec client program {} is not in PATH (is this a Qubes qube? set {QREXEC_CLIENT_ENV} otherwise)",
            p.display()
        ),
    ))
}

/// Opens streams to `cloudstore.Volume+VOLUME` on the default target (the storage qube,
/// chosen by dom0's qrexec policy). Each `connect` spawns a new client; the previous one is
/// killed and reaped first, so at most one child is alive per connector.
pub struct QrexecConnector {
    program: PathBuf,
    volume: String,
    child: Mutex<Option<Child>>,
}

impl QrexecConnector {
    pub fn new(program: PathBuf, volume: &str) -> QrexecConnector {
        QrexecConnector {
            program,
            volume: volume.to_owned(),
            child: Mutex::new(None),
        }
    }

    /// The qrexec service call this connector makes.
    pub fn service(&self) -> String {
        format!("cloudstore.Volume+{}", self.volume)
    }

    /// The process id of the live client, if any.
    pub fn child_pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Child::id)
    }

    fn reap(slot: &mut Option<Child>) {
        if let Some(mut old) = slot.take() {
            // Already exited is fine: kill then fails with InvalidInput and wait reaps it.
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// A protocol client over a fresh connection (handshake done, role Volume).
    pub fn client(&self, config: ClientConfig) -> anyhow::Result<Client> {
        use anyhow::Context;
        let (r, w) = self
            .connect()
            .with_context(|| format!("starting {} {}", self.program.display(), self.service()))?;
        // The handshake has no time limit of its own: a storage qube that accepts the call
        // and never answers would hold the caller (and the agent's lock) forever. Killing
        // the qrexec client closes the pipes, so the handshake fails instead.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let pid = self.child_pid();
        let watchdog = std::thread::spawn(move || {
            if let (Err(std::sync::mpsc::RecvTimeoutError::Timeout), Some(pid)) =
                (done_rx.recv_timeout(HANDSHAKE_TIMEOUT), pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
        let res = Client::connect(r, w, config);
        let _ = done_tx.send(());
        let _ = watchdog.join();
        let (client, _pushes) = res.with_context(|| {
            format!(
                "connecting to the storage qube through {} @default {}",
                self.program.display(),
                self.service()
            )
        })?;
        Ok(client)
    }
}

/// The client configuration of a consumer connection.
pub fn client_config() -> ClientConfig {
    ClientConfig::new(Hello::new(Role::Volume))
}

impl Connector for QrexecConnector {
    fn connect(&self) -> io::Result<Streams> {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        Self::reap(&mut slot);
        let mut child = Command::new(&self.program)
            .arg("@default")
            .arg(self.service())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "starting {} @default {}: {e}",
                        self.program.display(),
                        self.service()
                    ),
                )
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(
                "the qrexec client's pipes were not created",
            ));
        };
        *slot = Some(child);
        Ok((Box::new(stdout), Box::new(stdin)))
    }
}

impl Drop for QrexecConnector {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        Self::reap(slot);
    }
}
