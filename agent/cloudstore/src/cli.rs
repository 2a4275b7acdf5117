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
    /// Create the new volume VOLUME on the storage qube (refuses an existing one), or with
    /// --dir DIR a new encrypted volume in a local directory.
    Init(crate::roles::consumer::commands::InitArgs),
    /// Mount VOLUME at ~/CloudStore/VOLUME (asks for its passphrase).
    Unlock(crate::roles::consumer::commands::UnlockArgs),
    /// Unmount VOLUME and wipe its keys (names the processes that keep it busy).
    Lock(crate::roles::consumer::commands::LockArgs),
    /// List the versions storage keeps of a file in an unlocked volume.
    Versions(crate::roles::consumer::commands::VersionsArgs),
    /// Put back an earlier version of a file in an unlocked volume.
    Restore(crate::roles::consumer::commands::RestoreArgs),
    /// Internal: one volume's sandboxed FUSE server, started by the consumer agent.
    #[command(hide = true)]
    ConsumerWorker(crate::roles::consumer::worker::WorkerArgs),
    /// Internal: the consumer role's mount helper (cloudstore-consumer-mounts.service).
    #[command(hide = true)]
    ConsumerMounts(crate::roles::consumer::mounts::MountsArgs),
    /// Internal: lists the processes holding a mount, run by the consumer agent as the user.
    #[command(hide = true)]
    ConsumerHolders(crate::roles::consumer::busy::HoldersArgs),
    /// Copy a plaintext tree SRC into the encrypted volume DIR.
    Encrypt(crate::offline::EncryptArgs),
    /// Export the encrypted volume DIR as plaintext into DEST.
    Decrypt(crate::offline::DecryptArgs),
    /// Change the passphrase of the volume DIR (the master key stays the same).
    Passwd(crate::offline::PasswdArgs),
    /// Transfer qube: act on the running sync (e.g. let a mass deletion go ahead).
    Sync(SyncArgs),
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Let a sync stopped by the deletion limit delete what it found deleted on the other side.
    #[arg(long, required = true)]
    pub confirm_deletes: bool,
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
        Command::Init(args) => crate::roles::consumer::commands::init_main(args),
        Command::Unlock(args) => crate::roles::consumer::commands::unlock_main(args),
        Command::Lock(args) => crate::roles::consumer::commands::lock_main(args),
        Command::Versions(args) => crate::roles::consumer::commands::versions_main(args),
        Command::Restore(args) => crate::roles::consumer::commands::restore_main(args),
        Command::ConsumerWorker(args) => crate::roles::consumer::worker::worker_main(args),
        Command::ConsumerMounts(args) => crate::roles::consumer::mounts::helper_main(args),
        Command::ConsumerHolders(args) => crate::roles::consumer::busy::holders_main(args),
        Command::Encrypt(args) => crate::offline::encrypt(args),
        Command::Decrypt(args) => crate::offline::decrypt(args),
        Command::Passwd(args) => crate::offline::passwd(args),
        Command::Sync(_) => crate::roles::transfer::confirm_deletes().map(|()| {
            println!("deletions confirmed; the transfer agent goes on within a second");
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cloudstore: {err:#}");
            ExitCode::FAILURE
        }
    }
}
