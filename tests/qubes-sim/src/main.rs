//! `qubes-sim`: the Qubes stand-in's command line. Each subcommand is a thin wrapper over
//! a module of the `qubes_sim` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cloudstore_qubesdb::QubesDb;
use qubes_sim::qubesdb::QubesDbDaemon;

/// Stand-in for the parts of Qubes OS that cloudstore talks to.
#[derive(Debug, Parser)]
#[command(name = "qubes-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a qubesdb daemon on SOCKET until killed (SIGTERM/SIGINT).
    Qubesdb(DaemonArgs),
    /// Print the value of KEY, as qubesdb-read does (exit 2 if it does not exist).
    QubesdbRead(KeyArgs),
    /// Set KEY to VALUE, as qubesdb-write does (watches on KEY fire).
    QubesdbWrite(WriteArgs),
    /// Remove KEY (or everything beneath it if it ends with '/'), as qubesdb-rm does.
    QubesdbRm(KeyArgs),
    /// List the keys beginning with PREFIX, as qubesdb-list does.
    QubesdbList(KeyArgs),
    /// Wait for COUNT changes of KEY (or beneath it, ending with '/') and print each path.
    QubesdbWatch(WatchArgs),
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// Path of the listening UNIX socket (a real qube has /var/run/qubes/qubesdb.sock).
    #[arg(long)]
    socket: PathBuf,
    /// Initial entry, e.g. --set /cloudstore/role=storage (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Debug, Args)]
struct KeyArgs {
    #[arg(long)]
    socket: PathBuf,
    key: String,
}

#[derive(Debug, Args)]
struct WriteArgs {
    #[arg(long)]
    socket: PathBuf,
    key: String,
    value: String,
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[arg(long)]
    socket: PathBuf,
    /// Number of events to wait for.
    #[arg(long, short = 'n', default_value_t = 1)]
    count: u32,
    key: String,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qubes-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(socket: &PathBuf) -> Result<QubesDb> {
    Ok(QubesDb::open(socket)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Qubesdb(a) => {
            let mut entries = Vec::new();
            for kv in &a.set {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--set {kv:?}: expected KEY=VALUE");
                };
                entries.push((k.to_owned(), v.as_bytes().to_vec()));
            }
            let daemon = QubesDbDaemon::start(&a.socket, entries)
                .with_context(|| format!("starting qubesdb stand-in on {}", a.socket.display()))?;
            println!(
                "qubesdb stand-in listening on {}",
                daemon.socket().display()
            );
            // Serve until a signal ends the process; the socket file is removed on the
            // way out only when dropped, so a killed daemon leaves it (as the real one does)
            // and the next start replaces it.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Command::QubesdbRead(a) => match open(&a.socket)?.read(&a.key)? {
            Some(v) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&v)?;
                out.write_all(b"\n")?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("qubes-sim: qubesdb key {} does not exist", a.key);
                Ok(ExitCode::from(2))
            }
        },
        Command::QubesdbWrite(a) => {
            open(&a.socket)?.write(&a.key, a.value.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::QubesdbRm(a) => {
            if !open(&a.socket)?.rm(&a.key)? {
                eprintln!("qubes-sim: qubesdb key {} does not exist", a.key);
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::QubesdbList(a) => {
            for k in open(&a.socket)?.list(&a.key)? {
                println!("{k}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::QubesdbWatch(a) => {
            let mut db = open(&a.socket)?;
            db.watch(&a.key)?;
            for _ in 0..a.count {
                if let Some(p) = db.next_event(None)? {
                    println!("{p}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
