//! Progress of the transfer role: kept per volume in memory, written as
//! `$CLOUDSTORE_RUNTIME_DIR/transfer-status.json` (replaced atomically) for `cloudstore
//! status`, sent as `STATUS=` to systemd and logged as structured journald events.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The status file's name in the runtime directory.
pub const STATUS_FILE: &str = "transfer-status.json";
/// The flag file (in the state directory) that confirms a blocked mass deletion.
pub const CONFIRM_FLAG: &str = "confirm-deletes";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub pending_up_files: usize,
    pub pending_up_bytes: u64,
    pub pending_down_files: usize,
    pub pending_down_bytes: u64,
    /// Bytes moved so far in the current pass, each way.
    pub moved_up_bytes: u64,
    pub moved_down_bytes: u64,
    /// Bytes per second over the last pass that moved data.
    pub rate_bps: u64,
    /// Conflicts parked since the agent started.
    pub conflicts: usize,
    pub last_error: Option<String>,
    /// A pass stopped by the deletion limit: how many deletions wait for confirmation.
    pub blocked_deletions: Option<usize>,
    #[serde(with = "opt_time")]
    pub last_pass: Option<SystemTime>,
    pub connected: bool,
}

mod opt_time {
    use super::*;
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        t.map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
        .serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(|s| UNIX_EPOCH + std::time::Duration::from_secs(s)))
    }
}

impl VolumeStatus {
    pub fn set_pending(&mut self, (uf, ub, df, db): (usize, u64, usize, u64)) {
        self.pending_up_files = uf;
        self.pending_up_bytes = ub;
        self.pending_down_files = df;
        self.pending_down_bytes = db;
        self.moved_up_bytes = 0;
        self.moved_down_bytes = 0;
    }

    pub fn clear_pending(&mut self) {
        self.set_pending((0, 0, 0, 0));
    }

    pub fn moved(&mut self, up: bool, n: u64) {
        if up {
            self.moved_up_bytes += n;
        } else {
            self.moved_down_bytes += n;
        }
    }

    /// One line for `STATUS=`.
    pub fn line(&self, volume: &str) -> String {
        let mut s = format!(
            "{volume}: ↑{} files {} ↓{} files {}",
            self.pending_up_files,
            human(self.pending_up_bytes.saturating_sub(self.moved_up_bytes)),
            self.pending_down_files,
            human(
                self.pending_down_bytes
                    .saturating_sub(self.moved_down_bytes)
            ),
        );
        if let Some(n) = self.blocked_deletions {
            s.push_str(&format!(
                ", BLOCKED: {n} deletions need `cloudstore sync --confirm-deletes`"
            ));
        }
        if self.conflicts > 0 {
            s.push_str(&format!(", {} conflicts", self.conflicts));
        }
        if let Some(e) = &self.last_error {
            if self.blocked_deletions.is_none() {
                s.push_str(&format!(", error: {e}"));
            }
        }
        s
    }
}

/// Everything `cloudstore status` shows for the transfer role.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TransferStatus {
    pub remote: String,
    pub volumes: BTreeMap<String, VolumeStatus>,
    pub last_error: Option<String>,
}

pub fn status_path(runtime: &Path) -> PathBuf {
    runtime.join(STATUS_FILE)
}

/// Replaces the status file atomically (write, rename).
pub fn write(runtime: &Path, st: &TransferStatus) -> io::Result<()> {
    let path = status_path(runtime);
    let tmp = runtime.join(format!(".{STATUS_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    // Readable by the qube's user, who runs `cloudstore status` (the agent's umask is 077);
    // it holds counts, volume names and error messages, never a key or a plaintext name.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    serde_json::to_writer_pretty(&mut f, st)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The transfer part of `cloudstore status`.
pub fn print(out: &mut impl Write, runtime: &Path) -> io::Result<()> {
    let path = status_path(runtime);
    let st: TransferStatus = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| io::Error::other(format!("reading {}: {e}", path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            writeln!(out, "transfer:   not running (no {})", path.display())?;
            return Ok(());
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", path.display()),
            ))
        }
    };
    writeln!(out, "remote:     {}", st.remote)?;
    if let Some(e) = &st.last_error {
        writeln!(out, "error:      {e}")?;
    }
    for (v, s) in &st.volumes {
        writeln!(out, "volume {v}:")?;
        writeln!(
            out,
            "  pending up:   {} files, {}",
            s.pending_up_files,
            human(s.pending_up_bytes.saturating_sub(s.moved_up_bytes))
        )?;
        writeln!(
            out,
            "  pending down: {} files, {}",
            s.pending_down_files,
            human(s.pending_down_bytes.saturating_sub(s.moved_down_bytes))
        )?;
        writeln!(out, "  rate:         {}/s", human(s.rate_bps))?;
        writeln!(out, "  conflicts:    {}", s.conflicts)?;
        if let Some(n) = s.blocked_deletions {
            writeln!(
                out,
                "  BLOCKED:      {n} deletions wait for `cloudstore sync --confirm-deletes`"
            )?;
        }
        writeln!(
            out,
            "  last error:   {}",
            s.last_error.as_deref().unwrap_or("none")
        )?;
        if let Some(t) = s.last_pass {
            let ago = SystemTime::now().duration_since(t).unwrap_or_default();
            writeln!(out, "  last pass:    {}s ago", ago.as_secs())?;
        }
    }
    Ok(())
}
