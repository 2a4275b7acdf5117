//! Command-line surface. Parsing only: each subcommand hands its arguments to the module
//! that owns it, and every error reaches the user with its full context chain.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Encrypted cloud storage for Qubes OS.
///
/// Each qube runs one role, chosen in dom0 with
/// `qvm-features QUBE cloudstore.role storage|transfer|consumer`:
/// the storage qube keeps ciphertext offline, the transfer qube syncs it with the cloud,
/// and each consumer qube mounts its own volumes as plain folders.
#[derive(Debug, Parser)]
#[command(name = "cloudstore", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the role configured for this qube in qubesdb (what the systemd unit starts).
    Agent(AgentArgs),
    /// Show this qube's role and the state of its volumes.
    Status(StatusArgs),
    /// Exit 0 if this qube's role is ROLE, 1 if another or none, 255 if invalid (ExecCondition= of each unit).
    RoleIs(crate::roles::RoleIsArgs),
    /// Create a new encrypted volume in directory DIR (a path, e.g. ./work).
    Init(crate::offline::InitArgs),
    /// Copy a plaintext tree SRC into the encrypted volume DIR.
    Encrypt(crate::offline::EncryptArgs),
    /// Export the encrypted volume DIR as plaintext into DEST.
    Decrypt(crate::offline::DecryptArgs),
    /// Change the passphrase of the volume DIR (the master key stays the same).
    Passwd(crate::offline::PasswdArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Keep printing live progress until interrupted.
    #[arg(long)]
    pub watch: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => crate::roles::agent_main(args),
        Command::Status(args) => crate::roles::status_main(args),
        Command::RoleIs(args) => crate::roles::role_is_main(args),
        Command::Init(args) => crate::offline::init(args),
        Command::Encrypt(args) => crate::offline::encrypt(args),
        Command::Decrypt(args) => crate::offline::decrypt(args),
        Command::Passwd(args) => crate::offline::passwd(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cloudstore: {err:#}");
            ExitCode::FAILURE
        }
    }
}
