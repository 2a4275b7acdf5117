//! Proof that a sandboxed process cannot do what its policy forbids.
//!
//! Each case forks a child that applies a policy to itself and then tries allowed and
//! forbidden things; the parent (this harness, never confined) checks the child's exit
//! status and what it wrote. The harness is its own `main` (harness = false) so that it has
//! one thread when it forks. Run as root: the capability and user-switch cases need it.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use cloudstore_sandbox::{
    Error, Id, LandlockEnforcement, Policy, Sandbox, Vars, SECCOMP_VIOLATION_EXIT_CODE,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

const SAMPLE: &str = include_str!("data/sample.json");
const STORAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../cloudstore/src/roles/storage/sandbox.json"
);

/// x86_64 syscall numbers the trap messages must name (arch/x86/entry/syscalls/syscall_64.tbl).
const NR_SOCKET: i64 = 41;
const NR_CLONE: i64 = 56;
const NR_PTRACE: i64 = 101;
const NR_MOUNT: i64 = 165;

/// uid/gid of `nobody`/`nogroup` on Debian.
const NOBODY: u32 = 65534;

type CaseResult = Result<(), String>;
/// `--nocapture`: show what each child wrote (the sandbox reports), as libtest would.
static SHOW_OUTPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Case = (&'static str, fn() -> CaseResult);

struct Outcome {
    status: WaitStatus,
    output: String,
}

impl Outcome {
    fn exited_ok(&self) -> CaseResult {
        match self.status {
            WaitStatus::Exited(_, 0) => Ok(()),
            s => Err(format!("child ended with {s:?}; it said:\n{}", self.output)),
        }
    }

    /// The child was stopped by the seccomp trap for syscall `nr`.
    fn trapped(&self, nr: i64) -> CaseResult {
        match self.status {
            WaitStatus::Exited(_, c) if c == SECCOMP_VIOLATION_EXIT_CODE => {}
            s => {
                return Err(format!(
                    "expected exit {SECCOMP_VIOLATION_EXIT_CODE} (seccomp trap), got {s:?}; \
                     child said:\n{}",
                    self.output
                ))
            }
        }
        let want = format!("seccomp refused syscall {nr} ");
        if !self.output.contains(&want) {
            return Err(format!("trap message lacks {want:?}:\n{}", self.output));
        }
        Ok(())
    }
}

/// Runs `f` in a forked child with stderr on a pipe; the child exits 0 on Ok, 1 on Err.
fn in_child(f: impl FnOnce() -> CaseResult) -> Outcome {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: this harness is single-threaded (harness = false, no thread started), so the
    // child may run arbitrary code after fork.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(r);
            // SAFETY: dup2 onto fd 2; both descriptors are open.
            unsafe { libc::dup2(w.as_raw_fd(), 2) };
            drop(w);
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(Ok(())) => 0,
                Ok(Err(msg)) => {
                    eprintln!("{msg}");
                    1
                }
                Err(_) => 101,
            };
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut output = String::new();
            fs::File::from(r).read_to_string(&mut output).ok();
            let status = waitpid(child, None).expect("waitpid");
            if SHOW_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
                print!("{output}");
            }
            Outcome { status, output }
        }
    }
}

/// Directories of one case: `ro` read-only, `rw` read-write, `outside` not in the policy.
struct Dirs {
    _tmp: tempfile::TempDir,
    ro: PathBuf,
    rw: PathBuf,
    outside: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Traversable by `nobody` for the user-switch cases.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let ro = tmp.path().join("ro");
    let rw = tmp.path().join("rw");
    let outside = tmp.path().join("outside");
    for d in [&ro, &rw, &outside] {
        fs::create_dir(d).unwrap();
    }
    fs::write(ro.join("readable.txt"), "hello").unwrap();
    fs::write(outside.join("secret.txt"), "secret").unwrap();
    fs::write(rw.join("zero"), "locked").unwrap();
    fs::set_permissions(rw.join("zero"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(ro.join("readable.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    Dirs {
        _tmp: tmp,
        ro,
        rw,
        outside,
    }
}

fn vars(d: &Dirs) -> Vars {
    Vars::new()
        .with("config_dir", &d.ro)
        .with("data_dir", &d.rw)
}

fn sample() -> Policy {
    Policy::from_json_str(SAMPLE, "tests/data/sample.json").expect("sample policy")
}

/// The sample policy with a JSON edit applied.
fn sample_with(edit: impl FnOnce(&mut serde_json::Value)) -> Policy {
    let mut v: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
    edit(&mut v);
    Policy::from_json_str(&v.to_string(), "edited sample").expect("edited sample policy")
}

fn apply(policy: &Policy, vars: &Vars) -> Result<cloudstore_sandbox::Report, String> {
    Sandbox::apply(policy, vars).map_err(|e| format!("apply: {e}"))
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn expect_errno<T>(r: std::io::Result<T>, errno: i32, what: &str) -> CaseResult {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected errno {errno}")),
        Err(e) if errno_of(&e) == errno => Ok(()),
        Err(e) => Err(format!("{what}: failed with {e}, expected errno {errno}")),
    }
}

fn check(cond: bool, what: impl Into<String>) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn no_new_privs() -> i32 {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }
}

fn socket(family: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn require_root() -> CaseResult {
    check(
        nix::unistd::Uid::effective().is_root(),
        "this test must run as root (capability and user-switch cases)",
    )
}

// ---------------------------------------------------------------------------------------

fn landlock_confines_paths() -> CaseResult {
    let d = dirs();
    in_child(|| {
        let report = apply(&sample(), &vars(&d))?;
        check(
            report.landlock.enforcement != LandlockEnforcement::None,
            format!("landlock not enforced: {report}"),
        )?;
        let s = fs::read_to_string(d.ro.join("readable.txt")).map_err(|e| e.to_string())?;
        check(s == "hello", "allowed read returned wrong content")?;
        expect_errno(
            fs::read(d.outside.join("secret.txt")),
            libc::EACCES,
            "read outside the policy",
        )?;
        expect_errno(
            fs::read(d.rw.join("../outside/secret.txt")),
            libc::EACCES,
            "read outside through ..",
        )?;
        expect_errno(fs::read_dir(&d.outside), libc::EACCES, "list outside")?;
        expect_errno(
            fs::OpenOptions::new()
                .append(true)
                .open(d.ro.join("readable.txt")),
            libc::EACCES,
            "write to a read-only file",
        )?;
        expect_errno(
            fs::write(d.ro.join("new.txt"), "x"),
            libc::EACCES,
            "create in a read-only dir",
        )?;
        fs::write(d.rw.join("new.txt"), "written").map_err(|e| format!("allowed write: {e}"))?;
        let back = fs::read_to_string(d.rw.join("new.txt")).map_err(|e| e.to_string())?;
        check(back == "written", "read back of the allowed write")?;
        eprintln!("{report}");
        Ok(())
    })
    .exited_ok()?;
    check(
        !d.ro.join("new.txt").exists(),
        "file appeared in the read-only dir",
    )
}

fn seccomp_refuses_inet_socket() -> CaseResult {
    let d = dirs();
    in_child(|| {
        apply(&sample(), &vars(&d))?;
        socket(libc::AF_UNIX).map_err(|e| format!("AF_UNIX socket refused: {e}"))?;
        let r = socket(libc::AF_INET);
        Err(format!("AF_INET socket returned {r:?} instead of trapping"))
    })
    .trapped(NR_SOCKET)
}

fn seccomp_refuses_ptrace() -> CaseResult {
    let d = dirs();
    in_child(|| {
        apply(&sample(), &vars(&d))?;
        // SAFETY: PTRACE_TRACEME takes no pointers.
        let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        Err(format!("ptrace returned {r} instead of trapping"))
    })
    .trapped(NR_PTRACE)
}

fn seccomp_refuses_mount() -> CaseResult {
    let d = dirs();
    in_child(|| {
        apply(&sample(), &vars(&d))?;
        let r = nix::mount::mount(
            Some("tmpfs"),
            &d.rw,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        Err(format!("mount returned {r:?} instead of trapping"))
    })
    .trapped(NR_MOUNT)
}

fn threads_inherit_the_sandbox() -> CaseResult {
    let d = dirs();
    in_child(|| {
        apply(&sample(), &vars(&d))?;
        // The refusal filter turns clone3 into ENOSYS...
        // SAFETY: clone3 with a null argument; refused before the kernel reads it.
        let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
        let e = std::io::Error::last_os_error();
        check(
            r == -1 && errno_of(&e) == libc::ENOSYS,
            format!("clone3 gave {r} ({e}), expected ENOSYS"),
        )?;
        // ...and glibc falls back to clone, which the allowlist permits for threads.
        let mut handles = Vec::new();
        for i in 0..4 {
            let ro = d.ro.clone();
            let outside = d.outside.clone();
            handles.push(std::thread::spawn(move || -> CaseResult {
                let s = fs::read_to_string(ro.join("readable.txt")).map_err(|e| e.to_string())?;
                check(s == "hello", format!("thread {i}: wrong content"))?;
                expect_errno(
                    fs::read(outside.join("secret.txt")),
                    libc::EACCES,
                    "read outside from a thread",
                )?;
                check(no_new_privs() == 1, "thread without no_new_privs")
            }));
        }
        for h in handles {
            h.join().map_err(|_| "thread panicked".to_string())??;
        }
        // A clone that asks for a new user namespace is not a thread: trapped.
        // SAFETY: raw clone; it traps before the kernel acts on it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        Err(format!(
            "clone(CLONE_NEWUSER) returned {r} instead of trapping"
        ))
    })
    .trapped(NR_CLONE)
}

fn trap_in_a_thread_ends_the_process() -> CaseResult {
    let d = dirs();
    in_child(|| {
        apply(&sample(), &vars(&d))?;
        let h = std::thread::spawn(|| socket(libc::AF_INET6).map(drop));
        let r = h.join();
        Err(format!(
            "AF_INET6 socket in a thread returned {r:?} instead of trapping"
        ))
    })
    .trapped(NR_SOCKET)
}

fn capabilities_dropped_as_root() -> CaseResult {
    require_root()?;
    let d = dirs();
    in_child(|| {
        // Control: root reads a mode-0000 file through CAP_DAC_OVERRIDE...
        fs::read(d.rw.join("zero")).map_err(|e| format!("control read as root: {e}"))?;
        let report = apply(&sample(), &vars(&d))?;
        // ...and no longer can once the capabilities are gone (landlock allows the path).
        expect_errno(
            fs::read(d.rw.join("zero")),
            libc::EACCES,
            "root reading a mode-0000 file after the drop",
        )?;
        check(
            nix::unistd::Uid::current().is_root(),
            "uid changed though no user was asked",
        )?;
        for (set, name) in [
            (CapSet::Effective, "effective"),
            (CapSet::Permitted, "permitted"),
            (CapSet::Inheritable, "inheritable"),
            (CapSet::Ambient, "ambient"),
            (CapSet::Bounding, "bounding"),
        ] {
            let now = caps::read(None, set).map_err(|e| e.to_string())?;
            check(now.is_empty(), format!("{name} set not empty: {now:?}"))?;
        }
        check(no_new_privs() == 1, "no_new_privs not set")?;
        check(
            report.bounding_set_cleared,
            "report: bounding set not cleared",
        )?;
        check(
            report.kept_capabilities.is_empty(),
            "report: capabilities kept",
        )?;
        Ok(())
    })
    .exited_ok()
}

fn user_switch() -> CaseResult {
    require_root()?;
    let d = dirs();
    let policy = {
        let mut p = sample();
        p.set_credentials(Some(Id::Number(NOBODY)), Some(Id::Number(NOBODY)));
        p
    };
    in_child(|| {
        nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(4)]).map_err(|e| e.to_string())?;
        let report = apply(&policy, &vars(&d))?;
        let u = nix::unistd::getresuid().map_err(|e| e.to_string())?;
        let g = nix::unistd::getresgid().map_err(|e| e.to_string())?;
        for (what, id) in [
            ("real uid", u.real.as_raw()),
            ("effective uid", u.effective.as_raw()),
            ("saved uid", u.saved.as_raw()),
            ("real gid", g.real.as_raw()),
            ("effective gid", g.effective.as_raw()),
            ("saved gid", g.saved.as_raw()),
        ] {
            check(id == NOBODY, format!("{what} is {id}, expected {NOBODY}"))?;
        }
        let groups = nix::unistd::getgroups().map_err(|e| e.to_string())?;
        check(
            groups.is_empty(),
            format!("supplementary groups left: {groups:?}"),
        )?;
        check(
            report.switched_user && report.uid == NOBODY,
            format!("report: {report}"),
        )?;
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Bounding] {
            let now = caps::read(None, set).map_err(|e| e.to_string())?;
            check(
                now.is_empty(),
                format!("{set:?} not empty after switch: {now:?}"),
            )?;
        }
        // DAC now applies as nobody: world-readable works, root-owned private files do not.
        fs::read(d.ro.join("readable.txt")).map_err(|e| format!("read as nobody: {e}"))?;
        expect_errno(
            fs::read(d.rw.join("zero")),
            libc::EACCES,
            "mode-0000 file as nobody",
        )?;
        expect_errno(
            fs::write(d.rw.join("x"), "x"),
            libc::EACCES,
            "create in root's 0755 dir as nobody",
        )
    })
    .exited_ok()
}

fn kept_capability_survives_user_switch() -> CaseResult {
    require_root()?;
    let d = dirs();
    let policy = sample_with(|v| {
        v["user"] = NOBODY.into();
        v["group"] = NOBODY.into();
        v["capabilities"] = serde_json::json!([
            {"name": "CAP_DAC_OVERRIDE", "why": "the test checks a kept capability works"}
        ]);
    });
    in_child(|| {
        let report = apply(&policy, &vars(&d))?;
        check(report.uid == NOBODY, format!("report: {report}"))?;
        fs::read(d.rw.join("zero")).map_err(|e| format!("kept CAP_DAC_OVERRIDE unused: {e}"))?;
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Bounding] {
            let now = caps::read(None, set).map_err(|e| e.to_string())?;
            check(
                now.len() == 1 && now.contains(&Capability::CAP_DAC_OVERRIDE),
                format!("{set:?} is {now:?}, expected only CAP_DAC_OVERRIDE"),
            )?;
        }
        // The capability does not open what landlock closes.
        expect_errno(
            fs::read(d.outside.join("secret.txt")),
            libc::EACCES,
            "outside read with CAP_DAC_OVERRIDE",
        )
    })
    .exited_ok()
}

fn multithreaded_process_is_refused_unchanged() -> CaseResult {
    let d = dirs();
    in_child(|| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || rx.recv().ok());
        let r = Sandbox::apply(&sample(), &vars(&d));
        drop(tx);
        h.join().ok();
        match r {
            Err(Error::MultiThreaded { threads: 2 }) => {}
            other => return Err(format!("expected MultiThreaded(2), got {other:?}")),
        }
        check(no_new_privs() == 0, "a refused apply changed no_new_privs")
    })
    .exited_ok()
}

fn bad_vars_and_paths_change_nothing() -> CaseResult {
    let d = dirs();
    in_child(|| {
        let e = Sandbox::apply(&sample(), &Vars::new().with("config_dir", &d.ro))
            .err()
            .ok_or("apply without data_dir succeeded")?;
        let msg = e.to_string();
        check(
            msg.contains("data_dir") && msg.contains("landlock.rules[1].path"),
            format!("missing placeholder error: {msg}"),
        )?;
        let e = Sandbox::apply(&sample(), &vars(&d).with("data_dir", d.rw.join("nope")))
            .err()
            .ok_or("apply with a missing required path succeeded")?;
        let msg = e.to_string();
        check(
            msg.contains("nope") && msg.contains("landlock.rules[1].path"),
            format!("missing path error: {msg}"),
        )?;
        check(no_new_privs() == 0, "a refused apply set no_new_privs")?;
        if nix::unistd::Uid::effective().is_root() {
            let eff = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
            check(
                eff.contains(&Capability::CAP_SYS_ADMIN),
                "a refused apply dropped capabilities",
            )?;
        }
        Ok(())
    })
    .exited_ok()
}

fn optional_missing_path_is_skipped() -> CaseResult {
    let d = dirs();
    let policy = sample_with(|v| {
        v["landlock"]["rules"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"path": "/nonexistent/cloudstore-test", "access": "read-only",
                 "why": "absent on purpose", "optional": true}
            ));
    });
    in_child(|| {
        let report = apply(&policy, &vars(&d))?;
        check(
            report.landlock.skipped == vec![PathBuf::from("/nonexistent/cloudstore-test")],
            format!("skipped: {:?}", report.landlock.skipped),
        )?;
        check(report.landlock.rules.len() == 2, "rules added")
    })
    .exited_ok()
}

// --- the storage role's policy, on a workload like the role's --------------------------

fn cvt(r: libc::c_long, what: &str) -> Result<libc::c_long, String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

struct StorageDirs {
    d: Dirs,
    data: PathBuf,
    run: PathBuf,
}

fn storage_dirs() -> StorageDirs {
    let d = dirs();
    let data = d.rw.join("lib-cloudstore");
    let run = d.rw.join("run-cloudstore");
    for p in [&data, &run] {
        fs::create_dir(p).unwrap();
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    StorageDirs { d, data, run }
}

fn storage_policy() -> Result<Policy, String> {
    let mut p = Policy::from_file(Path::new(STORAGE)).map_err(|e| e.to_string())?;
    // The role's own system user exists only where the package is installed.
    p.set_credentials(Some(Id::Number(NOBODY)), Some(Id::Number(NOBODY)));
    Ok(p)
}

fn storage_vars(s: &StorageDirs) -> Vars {
    Vars::new()
        .with("data_dir", &s.data)
        .with("runtime_dir", &s.run)
}

/// The file operations of the store and a served UNIX connection, under the real policy.
fn storage_policy_allows_the_storage_workload() -> CaseResult {
    require_root()?;
    let s = storage_dirs();
    let policy = storage_policy()?;
    in_child(|| {
        // Privileged set-up: the listening socket exists before the sandbox.
        let sock = s.run.join("volume.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&sock, Some(NOBODY), Some(NOBODY)).map_err(|e| e.to_string())?;
        let mut client =
            std::os::unix::net::UnixStream::connect(&sock).map_err(|e| e.to_string())?;
        let report = apply(&policy, &storage_vars(&s))?;
        check(report.uid == NOBODY, format!("{report}"))?;
        eprintln!("{report}");

        // Serve the connection from a worker thread.
        let server = std::thread::spawn(move || -> CaseResult {
            let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf)
                .map_err(|e| format!("recv: {e}"))?;
            conn.write_all(b"pong").map_err(|e| format!("send: {e}"))?;
            Ok(())
        });
        client.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).map_err(|e| e.to_string())?;
        check(&buf == b"pong", "reply")?;
        server.join().map_err(|_| "server panicked".to_string())??;

        // *at file operations beneath the data directory, as the store does them.
        let root = fs::File::open(&s.data).map_err(|e| e.to_string())?;
        let dfd = root.as_raw_fd();
        let name = |n: &str| CString::new(n).unwrap();
        // SAFETY (all calls below): C strings outlive the calls; descriptors are open.
        unsafe {
            cvt(
                libc::mkdirat(dfd, name("vol").as_ptr(), 0o700) as _,
                "mkdirat",
            )?;
            let mut how: libc::open_how = std::mem::zeroed();
            how.flags = (libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC) as u64;
            how.mode = 0o600;
            how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
            let fd = cvt(
                libc::syscall(
                    libc::SYS_openat2,
                    dfd,
                    name("vol/f.tmp").as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                ),
                "openat2",
            )? as i32;
            let mut f = fs::File::from_raw_fd(fd);
            f.write_all(b"ciphertext").map_err(|e| e.to_string())?;
            cvt(libc::ftruncate(fd, 64) as _, "ftruncate")?;
            cvt(libc::fsync(fd) as _, "fsync")?;
            cvt(libc::fdatasync(fd) as _, "fdatasync")?;
            cvt(libc::fchmod(fd, 0o640) as _, "fchmod")?;
            cvt(libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) as _, "flock")?;
            let mut st: libc::statfs = std::mem::zeroed();
            cvt(libc::fstatfs(fd, &mut st) as _, "fstatfs")?;
            let mut stx: libc::statx = std::mem::zeroed();
            cvt(
                libc::statx(
                    dfd,
                    name("vol/f.tmp").as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    libc::STATX_ALL,
                    &mut stx,
                ) as _,
                "statx",
            )?;
            cvt(
                libc::renameat2(
                    dfd,
                    name("vol/f.tmp").as_ptr(),
                    dfd,
                    name("vol/f").as_ptr(),
                    0,
                ) as _,
                "renameat2",
            )?;
            cvt(
                libc::linkat(
                    dfd,
                    name("vol/f").as_ptr(),
                    dfd,
                    name("vol/hard").as_ptr(),
                    0,
                ) as _,
                "linkat",
            )?;
            cvt(
                libc::symlinkat(name("f").as_ptr(), dfd, name("vol/link").as_ptr()) as _,
                "symlinkat",
            )?;
            let mut lb = [0u8; 16];
            let n = cvt(
                libc::readlinkat(
                    dfd,
                    name("vol/link").as_ptr(),
                    lb.as_mut_ptr().cast(),
                    lb.len(),
                ) as _,
                "readlinkat",
            )?;
            check(&lb[..n as usize] == b"f", "readlinkat content")?;
            let times = [libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            }; 2];
            cvt(
                libc::utimensat(
                    dfd,
                    name("vol/f").as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ) as _,
                "utimensat",
            )?;
            let copy = fs::File::create(s.data.join("vol/copy")).map_err(|e| e.to_string())?;
            let mut src = fs::File::open(s.data.join("vol/f")).map_err(|e| e.to_string())?;
            std::io::copy(&mut src, &mut &copy).map_err(|e| format!("copy: {e}"))?;
            cvt(
                libc::unlinkat(dfd, name("vol/hard").as_ptr(), 0) as _,
                "unlinkat",
            )?;
        }
        let names: Vec<String> = fs::read_dir(s.data.join("vol"))
            .map_err(|e| e.to_string())?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        check(names.len() == 3, format!("directory listing: {names:?}"))?;
        // journald: a datagram to a socket path (the test's own stand-in).
        let j = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
        let _ = j.send_to(b"MESSAGE=x\n", s.run.join("no-journal"));
        expect_errno(
            fs::read(s.d.outside.join("secret.txt")),
            libc::EACCES,
            "storage role reading outside its directories",
        )?;
        check(
            fs::metadata(s.data.join("vol/f"))
                .map_err(|e| e.to_string())?
                .mode()
                & 0o777
                == 0o640,
            "mode",
        )
    })
    .exited_ok()
}

fn storage_policy_refuses_inet() -> CaseResult {
    require_root()?;
    let s = storage_dirs();
    let policy = storage_policy()?;
    in_child(|| {
        apply(&policy, &storage_vars(&s))?;
        let r = socket(libc::AF_INET);
        Err(format!(
            "AF_INET socket returned {r:?} under the storage policy"
        ))
    })
    .trapped(NR_SOCKET)
}

fn main() {
    let cases: &[Case] = &[
        ("landlock_confines_paths", landlock_confines_paths),
        ("seccomp_refuses_inet_socket", seccomp_refuses_inet_socket),
        ("seccomp_refuses_ptrace", seccomp_refuses_ptrace),
        ("seccomp_refuses_mount", seccomp_refuses_mount),
        ("threads_inherit_the_sandbox", threads_inherit_the_sandbox),
        (
            "trap_in_a_thread_ends_the_process",
            trap_in_a_thread_ends_the_process,
        ),
        ("capabilities_dropped_as_root", capabilities_dropped_as_root),
        ("user_switch", user_switch),
        (
            "kept_capability_survives_user_switch",
            kept_capability_survives_user_switch,
        ),
        (
            "multithreaded_process_is_refused_unchanged",
            multithreaded_process_is_refused_unchanged,
        ),
        (
            "bad_vars_and_paths_change_nothing",
            bad_vars_and_paths_change_nothing,
        ),
        (
            "optional_missing_path_is_skipped",
            optional_missing_path_is_skipped,
        ),
        (
            "storage_policy_allows_the_storage_workload",
            storage_policy_allows_the_storage_workload,
        ),
        ("storage_policy_refuses_inet", storage_policy_refuses_inet),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in cases {
            println!("{name}: test");
        }
        return;
    }
    if args.iter().any(|a| a == "--nocapture") {
        SHOW_OUTPUT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        match case() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed.push(*name);
            }
        }
    }
    println!(
        "\nconfinement: {} passed, {} failed",
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
