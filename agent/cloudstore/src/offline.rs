//! Offline volume commands for recovery and migration, usable without Qubes:
//! `init`, `encrypt`, `decrypt`, `passwd` on a volume directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of the new volume (created if missing; must be empty).
    pub dir: PathBuf,
    /// Read the passphrase from this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Plaintext tree to copy in.
    pub src: PathBuf,
    /// Encrypted volume directory.
    pub dir: PathBuf,
    /// Read the passphrase from this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Encrypted volume directory.
    pub dir: PathBuf,
    /// Destination for the plaintext tree (must not exist or be empty).
    pub dest: PathBuf,
    /// Read the passphrase from this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Encrypted volume directory.
    pub dir: PathBuf,
    /// Read the current passphrase from this file instead of the terminal.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Read the new passphrase from this file instead of the terminal.
    #[arg(long)]
    pub new_passphrase_file: Option<PathBuf>,
}

pub fn init(_args: InitArgs) -> anyhow::Result<ExitCode> {
    bail!("`cloudstore init` is not implemented yet")
}
pub fn encrypt(_args: EncryptArgs) -> anyhow::Result<ExitCode> {
    bail!("`cloudstore encrypt` is not implemented yet")
}
pub fn decrypt(_args: DecryptArgs) -> anyhow::Result<ExitCode> {
    bail!("`cloudstore decrypt` is not implemented yet")
}
pub fn passwd(_args: PasswdArgs) -> anyhow::Result<ExitCode> {
    bail!("`cloudstore passwd` is not implemented yet")
}
