//! `qubes-sim`: the Qubes stand-in's command line. Each subcommand is a thin wrapper over
//! a module of the `qubes_sim` library: `up`, `exec`, `down` (whole qubes), and the
//! qubesdb daemon and client commands.

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
    /// Start every qube of the configuration and return once each is up (its cloudstore
    /// agent has sent READY=1). Exit status 1 if a qube failed; the others keep running.
    Up(UpArgs),
    /// Run a command inside a running qube as its user (like `qvm-run --pass-io`); the
    /// exit status is the command's.
    Exec(ExecArgs),
    /// Stop every qube (agents get SIGTERM, mounts go away with the qube); the qubes'
    /// persistent data and the cloud folder stay.
    Down(DirArgs),
    /// List the qubes, as qvm-ls does, with each cloudstore agent's state and last status.
    Ls(DirArgs),
    /// Shut one qube down, as qvm-shutdown does (its agent gets SIGTERM, its processes
    /// end, its mounts go away); its data stays.
    Shutdown(QubeArgs),
    /// Start one qube again, as qvm-start does; returns once its agent is ready.
    Start(QubeArgs),
    /// Set (or with --delete remove) a qube's feature, as `qvm-features QUBE NAME VALUE`:
    /// checked, kept, and written live to the qube's qubesdb.
    Feature(FeatureArgs),
    /// Write the qrexec policy again from the current features, as `cloudstore-admin
    /// policy --write` does.
    Policy(DirArgs),
    /// The stand-in's dom0 process (started by `up`).
    #[command(hide = true)]
    Dom0(DirArgs),
    /// A qube's init (started by dom0 in the qube's new namespaces).
    #[command(hide = true)]
    QubeInit(QubeInitArgs),
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
struct UpArgs {
    /// The qubes and their qvm-features (TOML; see the README of tests/qubes-sim).
    #[arg(long)]
    config: PathBuf,
    /// Where the stand-in keeps its state (created if missing; reused by a later `up`).
    #[arg(long)]
    dir: PathBuf,
    /// The cloudstore binary (default: beside qubes-sim, then $PATH).
    #[arg(long)]
    cloudstore: Option<PathBuf>,
    /// The source tree's dom0/ directory (holds the cloudstore_dom0 package).
    #[arg(long)]
    dom0_src: Option<PathBuf>,
    /// Seconds an agent may take to send READY=1.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Milliseconds before a failed agent is restarted (the units say 5 s).
    #[arg(long, default_value_t = 1000)]
    restart_delay_ms: u64,
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[arg(long)]
    dir: PathBuf,
    /// `user` (default, the qube's user) or `root`.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The qube to run in.
    qube: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct DirArgs {
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct FeatureArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    delete: bool,
    qube: String,
    name: String,
    #[arg(required_unless_present = "delete", conflicts_with = "delete")]
    value: Option<String>,
}

#[derive(Debug, Args)]
struct QubeArgs {
    #[arg(long)]
    dir: PathBuf,
    qube: String,
}

#[derive(Debug, Args)]
struct QubeInitArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    qube: String,
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

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(255))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up(a) => {
            let opts = qubes_sim::dom0::UpOptions {
                config: a.config,
                dir: a.dir.clone(),
                cloudstore: a.cloudstore,
                dom0_src: a.dom0_src,
                ready_timeout: Duration::from_secs(a.ready_timeout),
                restart_delay: Duration::from_millis(a.restart_delay_ms),
            };
            if qubes_sim::dom0::up(&opts)? {
                println!(
                    "all qubes are up. Work in one with: qubes-sim exec --dir {} QUBE -- COMMAND; stop with: qubes-sim down --dir {}",
                    a.dir.display(),
                    a.dir.display()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "qubes-sim: some qubes failed (above); the others keep running. Logs: {}/qubes/QUBE/log/agent.log and {}; stop with: qubes-sim down --dir {}",
                    a.dir.display(),
                    qubes_sim::dom0::log_file(&a.dir).display(),
                    a.dir.display()
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Exec(a) => Ok(code(qubes_sim::exec::exec(
            &a.dir,
            &a.qube,
            a.user.as_deref(),
            &a.command,
        )?)),
        Command::Down(a) => {
            qubes_sim::dom0::down(&a.dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls(a) => {
            print!("{}", qubes_sim::dom0::list(&a.dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Shutdown(a) => {
            let answer = qubes_sim::dom0::control(&a.dir, &format!("shutdown {}", a.qube))?;
            println!("{}: {answer}", a.qube);
            Ok(ExitCode::SUCCESS)
        }
        Command::Start(a) => {
            let answer = qubes_sim::dom0::control(&a.dir, &format!("start {}", a.qube))?;
            println!("{}: {answer}", a.qube);
            Ok(ExitCode::SUCCESS)
        }
        Command::Feature(a) => {
            let msg = qubes_sim::dom0::feature(&a.dir, &a.qube, &a.name, a.value.as_deref())?;
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(a) => {
            for w in qubes_sim::dom0::policy(&a.dir)? {
                println!("dom0: {w}");
            }
            println!(
                "policy written to {}",
                qubes_sim::dom0::policy_dir(&a.dir).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dom0(a) => {
            qubes_sim::dom0::dom0_main(&a.dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::QubeInit(a) => Ok(code(qubes_sim::qube::outer_main(&a.dir, &a.qube)?)),
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
