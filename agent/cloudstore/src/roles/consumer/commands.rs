//! The consumer's user commands: `unlock`, `lock`, `init VOLUME`, `versions`, `restore` and
//! the per-volume part of `status`. Each reads what it needs from the user (a passphrase on
//! the terminal or from a file) and asks the agent over its control socket.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use super::control::{self, Reply, Request, Secret, VolumeStatus};
use crate::config::validate_volume_name;
use crate::passphrase;
use crate::time;

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The volume to mount (one of this qube's configured volumes).
    pub volume: String,
    /// Read the passphrase from the first line of this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Also keep the passphrase in /rw/config/cloudstore/keys/VOLUME (root only, 0600) so
    /// that the agent unlocks the volume at every start. Weaker: whoever reads the qube's
    /// private volume as root gets the passphrase.
    #[arg(long)]
    pub keyfile: bool,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The volume to unmount; its keys are wiped from memory.
    pub volume: String,
    /// Also remove the volume's keyfile (no more automatic unlock at start).
    #[arg(long)]
    pub forget_keyfile: bool,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// A file inside an unlocked volume (it may have been deleted since).
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file inside an unlocked volume (it may have been deleted since).
    pub path: PathBuf,
    /// Restore the newest version kept at or before TIME: YYYY-MM-DD (end of that day),
    /// "YYYY-MM-DD HH:MM[:SS]" (UTC) or @UNIXSECONDS. Default: the newest version.
    #[arg(long, value_parser = time::parse_utc, conflicts_with = "id")]
    pub at: Option<i64>,
    /// Restore this version (an id from `cloudstore versions`).
    #[arg(long)]
    pub id: Option<u64>,
}

/// `cloudstore init VOLUME` (through the agent) and `cloudstore init --dir DIR` (offline).
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The volume to create on the storage qube (one of this qube's configured volumes).
    #[arg(required_unless_present = "dir", conflicts_with = "dir")]
    pub volume: Option<String>,
    /// Offline: create the volume in this local directory instead (created if missing;
    /// must be empty).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Read the passphrase from the first line of this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// scrypt cost as log2(N), like gocryptfs -scryptn (10 is fast and weak; 16 is the default).
    #[arg(long, default_value_t = cloudstore_format::SCRYPT_DEFAULT_LOG_N,
          value_parser = clap::value_parser!(u8).range(10..=20))]
    pub scryptn: u8,
}

fn socket() -> PathBuf {
    control::socket_path()
}

fn volume_arg(v: &str) -> anyhow::Result<String> {
    Ok(validate_volume_name(v)?.as_str().to_owned())
}

/// An absolute form of a user-supplied path: its directory resolved (symlinks such as a
/// linked home directory), its last name kept as given (the file may have been deleted, and
/// it may itself be a symlink whose versions are wanted).
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
            Ok(d) => Ok(d.join(name)),
            Err(_) => Ok(abs),
        },
        _ => Ok(abs),
    }
}

fn print_ok(reply: Reply) -> anyhow::Result<ExitCode> {
    match reply {
        Reply::Ok { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

pub fn unlock_main(args: UnlockArgs) -> anyhow::Result<ExitCode> {
    let volume = volume_arg(&args.volume)?;
    let pass = passphrase::existing(args.passphrase_file.as_deref(), &format!("volume {volume}"))?;
    print_ok(control::call(
        &socket(),
        &Request::Unlock {
            volume,
            passphrase: Secret::new(&pass),
            keyfile: args.keyfile,
        },
    )?)
}

pub fn lock_main(args: LockArgs) -> anyhow::Result<ExitCode> {
    let volume = volume_arg(&args.volume)?;
    print_ok(control::call(
        &socket(),
        &Request::Lock {
            volume,
            forget_keyfile: args.forget_keyfile,
        },
    )?)
}

pub fn init_main(args: InitArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.dir {
        return crate::offline::init(crate::offline::InitArgs {
            dir,
            passphrase_file: args.passphrase_file,
            scryptn: args.scryptn,
        });
    }
    let volume = volume_arg(args.volume.as_deref().unwrap_or_default())?;
    let pass = passphrase::new(args.passphrase_file.as_deref())?;
    print_ok(control::call(
        &socket(),
        &Request::Init {
            volume,
            passphrase: Secret::new(&pass),
            scrypt_log_n: args.scryptn,
        },
    )?)
}

pub fn versions_main(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let path = absolute(&args.path)?;
    match control::call_ok(&socket(), &Request::Versions { path: path.clone() })? {
        Reply::Versions {
            versions,
            truncated,
            ..
        } => {
            let mut out = io::stdout().lock();
            if versions.is_empty() {
                writeln!(out, "no versions kept of {}", path.display())?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<23}  {:>12}  {:<11}  path",
                    "id", "kept at", "size", "why"
                )?;
            }
            for v in &versions {
                writeln!(
                    out,
                    "{:>8}  {:<23}  {:>12}  {:<11}  {}",
                    v.id,
                    time::format_utc(v.time.0, v.time.1),
                    v.size,
                    v.reason,
                    v.path
                )?;
            }
            if truncated {
                writeln!(out, "(older versions exist that did not fit in the answer)")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

pub fn restore_main(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let path = absolute(&args.path)?;
    print_ok(control::call(
        &socket(),
        &Request::Restore {
            path,
            id: args.id,
            at: args.at,
        },
    )?)
}

/// One line per volume, for `cloudstore status` in a consumer qube.
pub fn write_volume_status(out: &mut impl Write, volumes: &[VolumeStatus]) -> io::Result<()> {
    for v in volumes {
        if v.unlocked {
            writeln!(
                out,
                "volume {}: unlocked at {}; {}; {} pending writes; last error: {}{}",
                v.volume,
                v.mountpoint.display(),
                match (v.connected, v.following) {
                    (Some(true), Some(true)) => "connected, following changes made elsewhere",
                    (Some(true), _) =>
                        "connected, NOT following changes made elsewhere (seen within a second)",
                    (Some(false), _) => "NOT connected to storage",
                    (None, _) => "connection unknown",
                },
                v.pending_writes.unwrap_or(0),
                v.last_error.as_deref().unwrap_or("none"),
                if v.keyfile { "; keyfile" } else { "" }
            )?;
        } else {
            writeln!(
                out,
                "volume {}: locked{}",
                v.volume,
                if v.keyfile { " (has a keyfile)" } else { "" }
            )?;
        }
    }
    Ok(())
}

/// The per-volume lines of `cloudstore status`, or why the agent could not be asked.
pub fn print_volume_status(out: &mut impl Write) -> io::Result<()> {
    match control::call_ok(&socket(), &Request::Status) {
        Ok(Reply::Status { volumes }) => write_volume_status(out, &volumes),
        Ok(other) => writeln!(
            out,
            "volumes:    unexpected answer from the agent: {other:?}"
        ),
        Err(e) => writeln!(out, "volumes:    state unknown: {e:#}"),
    }
}
