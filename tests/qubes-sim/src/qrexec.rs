//! The calling side of qrexec: a stand-in for `qrexec-client-vm`.
//!
//! Command line and exit status as QubesOS/qubes-core-qrexec `agent/qrexec-client-vm.c` and
//! its manual `agent/qrexec-client-vm.rst`:
//! `qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]`.
//! Without a local program our stdin/stdout are the service's stdout/stdin; with one, the
//! program's are. Exit status: the service's (0 for a socket service that closed the
//! stream) or the local program's, 128+signal when killed, 126 when the policy refuses the
//! call ("Request refused" on stderr, as the real client prints when the agent closes the
//! trigger socket without an answer), 125 when the call fails for another reason.
//!
//! How the call reaches the service in the target qube is what qrexec-agent does on the
//! service side (`libqrexec/exec.c`, `execute_parsed_qubes_rpc_command`): look up
//! `SERVICE+ARG`, then `SERVICE`, in the target's service directory; a UNIX socket there is
//! connected and sent the descriptor `"SERVICE+ARG SOURCE\0"` before the caller's bytes; an
//! executable is run with the caller's stream as its stdin/stdout.
//!
//! Two ways to reach the target:
//! - **direct mode** (`QUBES_SIM_QREXEC_DIR=DIR`, `QUBES_SIM_QUBE=CALLER`): the client itself
//!   evaluates the policy in `DIR/policy.d` (when that directory exists; without it every
//!   call is allowed, for unit tests of a single service) and opens
//!   `DIR/<target>/<service>`. The caller's name is whatever the environment says, so this
//!   mode is for tests that run in one trust domain.
//! - **dom0 mode** (`QUBES_SIM_QREXEC_SOCKET=PATH` or `--agent-socket=PATH`, what
//!   `qubes-sim up` gives every qube): the client sends the request to the qube's trigger
//!   socket, served by the stand-in's dom0 process, which knows the caller from the socket
//!   the request arrived on (so a qube cannot claim to be another), evaluates the policy,
//!   connects to the service and relays the stream.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::policy::{self, Decision};

/// Code run in a forked child before an executable service starts: enter the target
/// qube (namespaces, user). Must only make async-signal-safe calls.
pub type Enter = std::sync::Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// Exit status when dom0 refuses the call (qrexec-client-vm.rst, EXIT STATUS).
pub const EXIT_REFUSED: i32 = 126;
/// Exit status when the call fails for any other reason (qrexec-client-vm.rst).
pub const EXIT_FAILED: i32 = 125;

/// Directory holding `policy.d/` and one service directory per qube (direct mode).
pub const DIR_ENV: &str = "QUBES_SIM_QREXEC_DIR";
/// Name of the calling qube (direct mode).
pub const QUBE_ENV: &str = "QUBES_SIM_QUBE";
/// The qube `@default` means when no policy decides (direct mode without `policy.d`).
pub const DEFAULT_TARGET_ENV: &str = "QUBES_SIM_DEFAULT_TARGET";
/// The qube's trigger socket (dom0 mode), as `--agent-socket` of the real client.
pub const SOCKET_ENV: &str = "QUBES_SIM_QREXEC_SOCKET";
/// `@default` without a policy: the storage qube, the only service target cloudstore has.
pub const DEFAULT_TARGET: &str = "storage";

/// qrexec-client-vm.rst: the target "is limited to 31 characters".
pub const MAX_TARGET_LEN: usize = 31;
/// qrexec-client-vm.rst: the service "is limited to 63 characters" (the daemon's
/// MAX_SERVICE_NAME_LEN 64 including the NUL, libqrexec/qrexec.h).
pub const MAX_SERVICE_LEN: usize = 63;

/// One service call as the caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Requested target: a qube name or a keyword (`@default`, `@dispvm...`).
    pub target: String,
    /// Service name without the argument.
    pub service: String,
    /// The argument without the `+` (empty when none was given).
    pub argument: String,
}

impl Call {
    /// Parses the client's TARGET and SERVICE[+ARG] operands. `$` keywords become `@`
    /// (qrexec-client-vm.c `convert_target_name_keyword`), an empty target is `@default`.
    pub fn parse(target: &str, service_and_arg: &str) -> Result<Call, String> {
        let mut target = target.replace('$', "@");
        if target.is_empty() {
            target = "@default".into();
        }
        if target.len() > MAX_TARGET_LEN
            || !target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
        {
            return Err(format!(
                "invalid target {target:?}: at most {MAX_TARGET_LEN} characters of letters, digits and -_.@:"
            ));
        }
        if service_and_arg.len() > MAX_SERVICE_LEN
            || !service_and_arg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        {
            return Err(format!(
                "invalid service {service_and_arg:?}: at most {MAX_SERVICE_LEN} characters of letters, digits and -_.+"
            ));
        }
        let (service, argument) = match service_and_arg.split_once('+') {
            Some((s, a)) => (s, a),
            None => (service_and_arg, ""),
        };
        if service.is_empty() {
            return Err(format!(
                "invalid service {service_and_arg:?}: empty service name"
            ));
        }
        Ok(Call {
            target,
            service: service.into(),
            argument: argument.into(),
        })
    }

    /// `SERVICE+ARG`, always with the `+`: dom0 forwards `{service}{argument}` where the
    /// policy's argument is `+` when none was given (qrexec/policy/parser.py `Request`),
    /// so the service side sees `cloudstore.Sync+` for a call to `cloudstore.Sync`.
    pub fn full_name(&self) -> String {
        format!("{}+{}", self.service, self.argument)
    }
}

/// The descriptor qrexec-agent writes to a socket service before the caller's data:
/// `"SERVICE+ARG SOURCE\0"` (libqrexec/exec.c: `buffer_append(stdin_buffer,
/// service_descriptor, strlen(service_descriptor) + 1)`, where the descriptor is the
/// `QUBESRPC` command line after the keyword: service with argument, space, source qube).
pub fn descriptor(call: &Call, source: &str) -> Vec<u8> {
    let mut d = format!("{} {source}", call.full_name()).into_bytes();
    d.push(0);
    d
}

/// What the service side of a call is: a stream to pump and, for an executable service,
/// the process whose exit status is the call's.
pub struct Connected {
    pub stream: UnixStream,
    pub process: Option<Child>,
}

/// Why a call did not reach its service.
#[derive(Debug)]
pub enum CallError {
    /// Refused by the policy (or the target does not exist): exit 126.
    Refused(String),
    /// Any other failure: exit 125.
    Failed(String),
}

/// Opens the service `call` in the qube whose service directory is `service_dir`, as
/// qrexec-agent does: `SERVICE+ARG` first, then `SERVICE`; a socket is connected and sent
/// the descriptor; an executable is started with the qrexec environment
/// (`QREXEC_REMOTE_DOMAIN`, `QREXEC_SERVICE_FULL_NAME`, `QREXEC_SERVICE_ARGUMENT`, the
/// argument also as `$1`; qubes-core-agent-linux qubes-rpc/qubes-rpc-multiplexer).
/// `prepare` runs in an executable service's child before exec (entering the qube).
pub fn open_service(
    service_dir: &Path,
    call: &Call,
    source: &str,
    prepare: Option<Enter>,
) -> Result<Connected, CallError> {
    let full = call.full_name();
    let candidates = [service_dir.join(&full), service_dir.join(&call.service)];
    for path in &candidates {
        // metadata() follows the symlink, as connect() and execve() do: packages install
        // /etc/qubes-rpc/SERVICE as a symlink to the daemon's socket.
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(CallError::Failed(format!(
                    "service {}: {e}",
                    path.display()
                )))
            }
        };
        if meta.file_type().is_socket() {
            let mut stream = UnixStream::connect(path).map_err(|e| {
                CallError::Failed(format!(
                    "connecting to service socket {}: {e}",
                    path.display()
                ))
            })?;
            stream.write_all(&descriptor(call, source)).map_err(|e| {
                CallError::Failed(format!(
                    "writing the service descriptor to {}: {e}",
                    path.display()
                ))
            })?;
            return Ok(Connected {
                stream,
                process: None,
            });
        }
        return start_executable(path, call, source, prepare);
    }
    Err(CallError::Failed(format!(
        "service {full} not found in {} (neither {} nor {})",
        service_dir.display(),
        candidates[0].display(),
        candidates[1].display()
    )))
}

fn start_executable(
    path: &Path,
    call: &Call,
    source: &str,
    prepare: Option<Enter>,
) -> Result<Connected, CallError> {
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| CallError::Failed(format!("socketpair for {}: {e}", path.display())))?;
    let theirs_out = theirs
        .try_clone()
        .map_err(|e| CallError::Failed(format!("dup for {}: {e}", path.display())))?;
    let mut cmd = Command::new(path);
    if !call.argument.is_empty() {
        cmd.arg(&call.argument);
    }
    cmd.env("QREXEC_REMOTE_DOMAIN", source)
        .env("QREXEC_SERVICE_FULL_NAME", call.full_name())
        .env("QREXEC_SERVICE_ARGUMENT", &call.argument)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)));
    if let Some(prepare) = prepare {
        // SAFETY: the closure must only make async-signal-safe system calls between fork
        // and exec; the stand-in's is setns, setgroups, setgid, setuid (dom0.rs, qube.rs).
        unsafe {
            cmd.pre_exec(move || prepare());
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| CallError::Failed(format!("starting service {}: {e}", path.display())))?;
    Ok(Connected {
        stream: ours,
        process: Some(child),
    })
}

/// Exit status as a shell and qrexec report it: the code, or 128+signal.
pub fn status_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Copies `from` to `to` until end of file; then half-closes `to` (qrexec sends EOF to the
/// other side as `shutdown(SHUT_WR)` for sockets and closes pipes).
pub fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        total += n as u64;
    }
    Ok(total)
}

/// The client's parsed command line.
#[derive(Debug)]
struct Args {
    agent_socket: Option<PathBuf>,
    target: String,
    service: String,
    local: Vec<OsString>,
}

const USAGE: &str =
    "usage: qrexec-client-vm [options] target_vmname program_ident [local_program [local program arguments]]";

fn parse_args(args: &[OsString]) -> Result<Args, String> {
    let mut agent_socket = None;
    let mut i = 0;
    // getopt_long with "+": options stop at the first operand.
    while i < args.len() {
        let a = args[i].as_bytes();
        if a == b"--" {
            i += 1;
            break;
        }
        if !a.starts_with(b"-") || a == b"-" {
            break;
        }
        let text = String::from_utf8_lossy(a);
        match text.as_ref() {
            // Filtering escape characters and the vchan buffer size have no effect on a
            // socket; accepted so callers written for Qubes run unchanged.
            "-t"
            | "-T"
            | "--filter-escape-chars-stdout"
            | "--filter-escape-chars-stderr"
            | "--no-filter-escape-chars-stdout"
            | "--no-filter-escape-chars-stderr" => {}
            t if t.starts_with("--buffer-size=") => {}
            "--buffer-size" => i += 1,
            t if t.starts_with("--agent-socket=") => {
                agent_socket = Some(PathBuf::from(OsStr::from_bytes(&a[15..])));
            }
            "-a" | "--agent-socket" => {
                i += 1;
                let v = args.get(i).ok_or("option --agent-socket needs a value")?;
                agent_socket = Some(PathBuf::from(v));
            }
            other => return Err(format!("unknown option {other}")),
        }
        i += 1;
    }
    if args.len() < i + 2 {
        return Err(USAGE.into());
    }
    let utf8 = |s: &OsString, what: &str| {
        s.to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{what} {s:?} is not UTF-8"))
    };
    Ok(Args {
        agent_socket,
        target: utf8(&args[i], "target")?,
        service: utf8(&args[i + 1], "service")?,
        local: args[i + 2..].to_vec(),
    })
}

fn fail(code: i32, msg: impl std::fmt::Display) -> i32 {
    eprintln!("qrexec-client-vm: {msg}");
    code
}

fn refused(msg: impl std::fmt::Display) -> i32 {
    // The real client prints only "Request refused"; the reason is dom0's log. The
    // stand-in has no dom0 journal to read, so it says why on the line before.
    eprintln!("qrexec-client-vm: {msg}");
    eprintln!("Request refused");
    EXIT_REFUSED
}

/// `qrexec-client-vm` main: returns the process exit status.
pub fn client_main(args: &[OsString]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let call = match Call::parse(&args.target, &args.service) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let socket = args.agent_socket.clone().or_else(|| {
        std::env::var_os(SOCKET_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    let connected = if let Some(socket) = socket {
        match crate::broker::request(&socket, &call) {
            Ok(stream) => Connected {
                stream,
                process: None,
            },
            Err(CallError::Refused(m)) => return refused(m),
            Err(CallError::Failed(m)) => return fail(EXIT_FAILED, m),
        }
    } else {
        match direct(&call) {
            Ok(c) => c,
            Err(CallError::Refused(m)) => return refused(m),
            Err(CallError::Failed(m)) => return fail(EXIT_FAILED, m),
        }
    };
    run_call(connected, &args.local)
}

/// Direct mode: policy from `$QUBES_SIM_QREXEC_DIR/policy.d` (if present), then the
/// service in `$QUBES_SIM_QREXEC_DIR/<target>/`.
fn direct(call: &Call) -> Result<Connected, CallError> {
    let dir = std::env::var_os(DIR_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            CallError::Failed(format!(
                "not in a qube of the stand-in: set {SOCKET_ENV} (dom0 mode) or {DIR_ENV} and {QUBE_ENV} (direct mode)"
            ))
        })?;
    let source = std::env::var(QUBE_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            CallError::Failed(format!(
                "{DIR_ENV} is set but {QUBE_ENV} (the calling qube) is not"
            ))
        })?;
    let policy_dir = dir.join("policy.d");
    let target = if policy_dir.exists() {
        let policy = policy::Policy::load_dir(&policy_dir)
            .map_err(|e| CallError::Refused(format!("policy: {e}")))?;
        let qubes = qube_dirs(&dir);
        let system = policy::SystemInfo::new(qubes.iter().map(String::as_str));
        match policy.evaluate(
            &call.service,
            &call.argument,
            &source,
            &call.target,
            &system,
        ) {
            Decision::Allow { target, .. } => target,
            Decision::Deny { reason } => return Err(CallError::Refused(reason)),
        }
    } else if call.target == "@default" {
        std::env::var(DEFAULT_TARGET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_TARGET.into())
    } else {
        call.target.clone()
    };
    let service_dir = dir.join(&target);
    if target.starts_with('@') || !service_dir.is_dir() {
        return Err(CallError::Refused(format!(
            "target qube {target:?} does not exist (no {})",
            service_dir.display()
        )));
    }
    open_service(&service_dir, call, &source, None)
}

/// The qubes of a direct-mode directory: its subdirectories other than `policy.d`.
fn qube_dirs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(n) = e.file_name().to_str() {
                    if n != "policy.d" {
                        out.push(n.to_owned());
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Pumps the call's stream to our stdin/stdout or to a local program, and returns the
/// exit status qrexec-client-vm reports.
fn run_call(connected: Connected, local: &[OsString]) -> i32 {
    let Connected {
        stream,
        mut process,
    } = connected;
    let reader = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return fail(EXIT_FAILED, format!("dup of the service stream: {e}")),
    };
    let writer = stream;
    let status = if local.is_empty() {
        // stdin -> service; when stdin ends the service sees end of file (half-close).
        std::thread::spawn(move || {
            let _ = pump(io::stdin().lock(), &writer);
            let _ = writer.shutdown(Shutdown::Write);
        });
        // service -> stdout; when the service closes its side the call is over, even if
        // our stdin is still open (qrexec ends the call on the service's EOF and exit).
        let r = pump(&reader, io::stdout().lock());
        if let Err(e) = r {
            if e.kind() != io::ErrorKind::BrokenPipe {
                return fail(EXIT_FAILED, format!("copying the service's output: {e}"));
            }
        }
        match process.as_mut() {
            Some(p) => match p.wait() {
                Ok(s) => status_code(s),
                Err(e) => return fail(EXIT_FAILED, format!("waiting for the service: {e}")),
            },
            None => 0,
        }
    } else {
        match run_local(reader, writer, local) {
            Ok(code) => {
                if let Some(p) = process.as_mut() {
                    let _ = p.wait();
                }
                code
            }
            Err(e) => return fail(EXIT_FAILED, e),
        }
    };
    let _ = io::stdout().flush();
    status
}

/// Runs the local program with its stdin/stdout connected to the service; its exit status
/// is the call's (qrexec-client-vm.c). Like the real client, the program is exec'd by
/// path (`execv`, no PATH search) and finds our own stdin/stdout as `SAVED_FD_0`/`_1`.
fn run_local(reader: UnixStream, writer: UnixStream, local: &[OsString]) -> Result<i32, String> {
    let saved0 =
        nix::unistd::dup(io::stdin().as_raw_fd()).map_err(|e| format!("dup stdin: {e}"))?;
    let saved1 =
        nix::unistd::dup(io::stdout().as_raw_fd()).map_err(|e| format!("dup stdout: {e}"))?;
    let program = PathBuf::from(&local[0]);
    let mut cmd = Command::new(&program);
    if let Some(name) = program.file_name() {
        cmd.arg0(name);
    }
    let mut child = cmd
        .args(&local[1..])
        .env("SAVED_FD_0", saved0.to_string())
        .env("SAVED_FD_1", saved1.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("execv {}: {e}", program.display()))?;
    let _ = nix::unistd::close(saved0);
    let _ = nix::unistd::close(saved1);
    let child_in = child.stdin.take().expect("piped stdin");
    let child_out = child.stdout.take().expect("piped stdout");
    let up = std::thread::spawn(move || {
        let _ = pump(child_out, &writer);
        let _ = writer.shutdown(Shutdown::Write);
    });
    let _ = pump(&reader, child_in);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", program.display()))?;
    let _ = up.join();
    Ok(status_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_bytes_are_service_plus_arg_space_source_nul() {
        let c = Call::parse("@default", "cloudstore.Volume+work").unwrap();
        assert_eq!(
            descriptor(&c, "my-work"),
            b"cloudstore.Volume+work my-work\0"
        );
        let c = Call::parse("storage", "cloudstore.Sync").unwrap();
        assert_eq!(descriptor(&c, "transfer"), b"cloudstore.Sync+ transfer\0");
    }

    #[test]
    fn targets_keywords_and_limits() {
        assert_eq!(Call::parse("$default", "a").unwrap().target, "@default");
        assert_eq!(Call::parse("", "a").unwrap().target, "@default");
        assert!(Call::parse(&"x".repeat(32), "a").is_err());
        assert!(Call::parse("a/b", "a").is_err());
        assert!(Call::parse("t", &"s".repeat(64)).is_err());
        assert!(Call::parse("t", "a b").is_err());
        assert!(Call::parse("t", "+arg").is_err());
        let c = Call::parse("t", "svc+a+b").unwrap();
        assert_eq!((c.service.as_str(), c.argument.as_str()), ("svc", "a+b"));
    }

    #[test]
    fn options_stop_at_the_first_operand() {
        let a: Vec<OsString> = ["--buffer-size=100", "--", "t", "s", "/bin/x", "-v"]
            .iter()
            .map(OsString::from)
            .collect();
        let p = parse_args(&a).unwrap();
        assert_eq!((p.target.as_str(), p.service.as_str()), ("t", "s"));
        assert_eq!(
            p.local,
            vec![OsString::from("/bin/x"), OsString::from("-v")]
        );
        let a: Vec<OsString> = ["--bogus", "t", "s"].iter().map(OsString::from).collect();
        assert!(parse_args(&a).is_err());
    }
}
