//! A way to watch a role's confinement hold in the running agent, not just in a test
//! harness: with `CLOUDSTORE_SANDBOX_PROBE` set, the role tries the forbidden things it
//! names right after confining itself and logs what happened. Nothing else changes, so a
//! probe run is the production code path. Kinds (comma-separated):
//!
//! - `open:PATH` — open PATH for reading; landlock (or the file mode) must refuse it.
//! - `write:PATH` — create PATH; must be refused outside the role's directories.
//! - `socket:inet` — create an AF_INET socket; seccomp must stop it. The allowlist's
//!   mismatch action is a trap, so the process ends (exit 159, naming the syscall): the
//!   probe's proof is that death.
//! - `socket:netlink` — create an AF_NETLINK socket: the same proof for a role whose
//!   allowlist admits AF_INET (transfer).
//! - `exec:PATH` — run PATH; landlock must refuse it for a role that runs programs (transfer
//!   may execute only rclone, the qrexec client and their libraries). A role that never
//!   runs one has no execve in its allowlist, so its trap ends the process instead.
//!
//! Used by the confinement tests of each role; an administrator can run the same check on a
//! qube with `systemctl edit` or by hand.

use std::io;

/// The environment variable naming the probes.
pub const PROBE_ENV: &str = "CLOUDSTORE_SANDBOX_PROBE";

/// Runs the probes named in [`PROBE_ENV`], if any.
pub fn run_if_asked() {
    let Some(spec) = std::env::var_os(PROBE_ENV) else {
        return;
    };
    for probe in spec.to_string_lossy().split(',') {
        let outcome = match probe.split_once(':') {
            Some(("open", path)) => describe(std::fs::File::open(path).map(drop)),
            Some(("write", path)) => describe(std::fs::File::create(path).map(drop)),
            Some(("socket", "inet")) => {
                describe(std::net::UdpSocket::bind("127.0.0.1:0").map(drop))
            }
            Some(("socket", "netlink")) => {
                // SAFETY: socket(2) with integer arguments; the descriptor is closed at once.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_NETLINK,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        libc::NETLINK_ROUTE,
                    )
                };
                describe(if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
                    unsafe { libc::close(fd) };
                    Ok(())
                })
            }
            Some(("exec", path)) => describe(
                std::process::Command::new(path)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map(drop),
            ),
            _ => "unknown probe (kinds: open:PATH, write:PATH, exec:PATH, socket:inet, \
                  socket:netlink)"
                .to_owned(),
        };
        tracing::warn!(probe = %probe, "sandbox probe {probe}: {outcome}");
    }
}

fn describe(r: io::Result<()>) -> String {
    match r {
        Ok(()) => "ALLOWED".to_owned(),
        Err(e) => format!("refused: {e}"),
    }
}
