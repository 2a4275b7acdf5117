//! `qubes-sim exec`: run a command inside a running qube, as its user (or root), the way
//! `qvm-run --pass-io` does: standard input, output and error pass through, and the exit
//! status is the command's (128+signal when it is killed).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::qube::{drop_to, Namespaces, QubeState};

/// Runs `cmd` in qube `qube` of the stand-in in `dir` as `user` (`None` or `"user"`: the
/// qube's user; `"root"`). Returns the exit status to pass on.
pub fn exec(dir: &Path, qube: &str, user: Option<&str>, cmd: &[OsString]) -> Result<i32> {
    let Some((program, args)) = cmd.split_first() else {
        bail!("no command given: qubes-sim exec --dir DIR QUBE -- COMMAND [ARGS...]");
    };
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let state = QubeState::load(&dir, qube)?;
    let (uid, gid, groups, home, name) = match user {
        None | Some("user") => (
            state.uid,
            state.gid,
            vec![state.gid, state.qubes_gid],
            "/home/user",
            "user",
        ),
        Some("root") => (0, 0, vec![0], "/root", "root"),
        Some(other) => bail!("unknown user {other:?} in qube {qube}: use user or root"),
    };
    let ns = Namespaces::open(&state)?;
    // This process is single-threaded here, as setns into a mount namespace requires.
    ns.enter()
        .with_context(|| format!("entering the namespaces of qube {qube}"))?;
    let cwd = if Path::new(home).is_dir() { home } else { "/" };
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .envs(state.base_env())
        .env("HOME", home)
        .env("USER", name)
        .env("LOGNAME", name)
        .env("SHELL", "/bin/bash")
        .current_dir(cwd);
    if let Some(term) = std::env::var_os("TERM") {
        c.env("TERM", term);
    }
    // SAFETY: drop_to makes only setgroups/setgid/setuid calls on captured values.
    unsafe {
        c.pre_exec(move || drop_to(uid, gid, &groups));
    }
    let status = c
        .status()
        .with_context(|| format!("running {} in qube {qube}", program.to_string_lossy()))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
