//! Logging: journald with structured fields under systemd, readable stderr otherwise.
//!
//! Field names every role uses, so `journalctl -u cloudstore-storage VOLUME=work` works
//! (journald shows them upper-cased, without prefix):
//! - `role`: storage | transfer | consumer (set once on the agent's span, so every event
//!   of the agent and its role thread carries it);
//! - `volume`: the volume name an event concerns;
//! - `peer`: the calling or called qube (qrexec `QREXEC_REMOTE_DOMAIN`);
//! - `op`: the operation (`read`, `write`, `sync`, `mount`, …);
//! - `path`: the path concerned (ciphertext path in storage and transfer, plaintext path
//!   only in the consumer);
//! - `key`: a qubesdb key path (configuration events).
//!
//! The filter comes from `CLOUDSTORE_LOG` (tracing-subscriber `EnvFilter` syntax),
//! default `info`.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Environment variable holding the log filter.
pub const FILTER_ENV: &str = "CLOUDSTORE_LOG";

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Whether we run under systemd with our stderr connected to the journal, following
/// systemd.exec(5): `JOURNAL_STREAM` is `DEVICE:INODE` of the stream stderr should match;
/// `INVOCATION_ID` is set for every process a unit starts.
pub fn under_systemd(
    journal_stream: Option<&str>,
    invocation_id: Option<&str>,
    stderr_dev_ino: Option<(u64, u64)>,
) -> bool {
    if let (Some(js), Some((dev, ino))) = (journal_stream, stderr_dev_ino) {
        if let Some((d, i)) = js.trim().split_once(':') {
            if d.parse() == Ok(dev) && i.parse() == Ok(ino) {
                return true;
            }
        }
    }
    invocation_id.is_some_and(|s| !s.is_empty())
}

fn stderr_dev_ino() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()).ok()?;
    #[allow(clippy::useless_conversion)] // dev_t/ino_t widths differ between targets
    Some((u64::from(st.st_dev), u64::from(st.st_ino)))
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber; returns where events go. Calling it twice is harmless
/// (the second call keeps the first subscriber).
pub fn init() -> Sink {
    let systemd = under_systemd(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        std::env::var("INVOCATION_ID").ok().as_deref(),
        stderr_dev_ino(),
    );
    let journald_err = if systemd {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("cloudstore".to_owned())
                    .with_filter(filter());
                if tracing_subscriber::registry()
                    .with(layer)
                    .try_init()
                    .is_ok()
                {
                    return Sink::Journald;
                }
                None
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter());
    let _ = tracing_subscriber::registry().with(fmt).try_init();
    if let Some(e) = journald_err {
        tracing::warn!(error = %e, "running under systemd but journald is unreachable; logging to stderr");
    }
    Sink::Stderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(under_systemd(Some("8:1234"), None, Some((8, 1234))));
        assert!(
            !under_systemd(Some("8:1234"), None, Some((8, 1235))),
            "stderr redirected elsewhere"
        );
        assert!(!under_systemd(Some("garbage"), None, Some((8, 1234))));
        assert!(!under_systemd(None, None, Some((8, 1234))));
        assert!(!under_systemd(Some("8:1234"), None, None));
    }

    #[test]
    fn invocation_id_means_systemd() {
        assert!(under_systemd(None, Some("0123abcd"), None));
        assert!(!under_systemd(None, Some(""), None));
    }
}
