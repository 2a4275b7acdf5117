//! Which processes keep a mount busy: open files, working or root directories, and memory
//! mappings beneath it, read from /proc like `fuser -m` (psmisc src/fuser.c) does.
//!
//! Only link *texts* are compared (readlink), never stat: a stat would go through the
//! mount, and a mount whose server is stuck would stall the lock command itself.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// One process holding something beneath the mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `comm` of the process (its name, at most 15 bytes).
    pub name: String,
    /// What it holds: `cwd`, `root`, `fd 3 /path`, `mapped /path`.
    pub what: Vec<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {}): {}",
            self.name,
            self.pid,
            self.what.join(", ")
        )
    }
}

/// Whether the link text `target` names `mount` or something beneath it. `(deleted)`
/// suffixes of unlinked files still count: the file keeps the mount busy.
fn beneath(target: &Path, mount: &Path) -> bool {
    target.starts_with(mount)
}

/// Every process (other than `skip`, e.g. the FUSE server itself) that holds `mount` busy.
pub fn holders(mount: &Path, skip: &[u32]) -> Vec<Holder> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if skip.contains(&pid) {
            continue;
        }
        let base = entry.path();
        let mut what = Vec::new();
        for link in ["cwd", "root", "exe"] {
            if let Ok(t) = fs::read_link(base.join(link)) {
                if beneath(&t, mount) {
                    what.push(format!("{link} {}", t.display()));
                }
            }
        }
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(t) = fs::read_link(fd.path()) {
                    if beneath(&t, mount) {
                        what.push(format!(
                            "fd {} {}",
                            fd.file_name().to_string_lossy(),
                            t.display()
                        ));
                    }
                }
            }
        }
        if let Ok(maps) = fs::read_to_string(base.join("maps")) {
            let mut seen: Vec<PathBuf> = Vec::new();
            for line in maps.lines() {
                // The path is the sixth field and may contain spaces.
                let Some(p) = line.splitn(6, ' ').nth(5).map(str::trim_start) else {
                    continue;
                };
                let p = PathBuf::from(p);
                if p.is_absolute() && beneath(&p, mount) && !seen.contains(&p) {
                    what.push(format!("mapped {}", p.display()));
                    seen.push(p);
                }
            }
        }
        if !what.is_empty() {
            let name = fs::read_to_string(base.join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_else(|_| "?".into());
            out.push(Holder { pid, name, what });
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

/// Environment variable by which the parent hands the mountpoint to the scan it runs as the
/// qube's user (`cloudstore consumer-holders`).
const SCAN_ENV: &str = "CLOUDSTORE_HOLDERS_OF";

/// [`holders`] as seen by `uid:gid`: the `cloudstore` binary re-executed with the hidden
/// subcommand `consumer-holders`, running as that user, prints one line per holder.
pub fn holders_as(mount: &Path, skip: u32, uid: u32, gid: u32) -> anyhow::Result<Vec<Holder>> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    // The running image itself: after a package upgrade or rebuild the path
    // current_exe() names is "…/cloudstore (deleted)" and cannot be started.
    let exe = std::path::Path::new("/proc/self/exe");
    let out = std::process::Command::new(exe)
        .arg0("cloudstore")
        .arg("consumer-holders")
        .arg(skip.to_string())
        .env(SCAN_ENV, mount)
        .uid(uid)
        .gid(gid)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the scan of /proc as the qube's user")?;
    if !out.status.success() {
        anyhow::bail!("the scan of /proc as uid {uid} ended with {}", out.status);
    }
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(pid), Some(name), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse() else { continue };
        v.push(Holder {
            pid,
            name: name.to_owned(),
            what: what.split('\t').map(str::to_owned).collect(),
        });
    }
    Ok(v)
}

/// Arguments of the hidden `cloudstore consumer-holders` subcommand.
#[derive(Debug, clap::Args)]
pub struct HoldersArgs {
    /// A pid to leave out (the FUSE server).
    pub skip: u32,
}

/// `cloudstore consumer-holders SKIP`: prints `pid\tname\twhat…` for each holder of the
/// mount named by the environment (set by the consumer agent; never run by hand).
pub fn holders_main(args: HoldersArgs) -> anyhow::Result<std::process::ExitCode> {
    let Some(mount) = std::env::var_os(SCAN_ENV) else {
        anyhow::bail!("consumer-holders is run by the consumer agent only");
    };
    for h in holders(Path::new(&mount), &[args.skip]) {
        // Tabs cannot be told apart from a tab in a path; the text is for a message only.
        println!("{}\t{}\t{}", h.pid, h.name, h.what.join("\t"));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_open_file_and_cwd_of_a_child() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("held file");
        let _f = fs::File::create(&file).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let hs = holders(dir.path(), &[]);
        let me = hs.iter().find(|h| h.pid == std::process::id()).expect("us");
        assert!(
            me.what
                .iter()
                .any(|w| w.starts_with("fd ") && w.ends_with("held file")),
            "{me}"
        );
        let c = hs.iter().find(|h| h.pid == child.id()).expect("the child");
        assert_eq!(c.name, "sleep");
        assert!(c.what.iter().any(|w| w.starts_with("cwd ")), "{c}");
        let skipped = holders(dir.path(), &[child.id()]);
        assert!(skipped.iter().all(|h| h.pid != child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        let other = tempfile::tempdir().unwrap();
        assert!(holders(other.path(), &[]).is_empty());
    }
}
