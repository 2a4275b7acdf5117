//! Role sandboxes: capability drop, landlock and seccomp built from per-role policy data.
//!
//! Each role of the `cloudstore` agent keeps a `sandbox.json` beside its code
//! (`agent/cloudstore/src/roles/<role>/sandbox.json`): the user to run as, the capabilities it
//! keeps, the paths it may reach (landlock) and the syscalls it may make (seccomp, in
//! seccompiler's JSON format), each with the reason it is needed. The role does its
//! privileged set-up, then calls [`Sandbox::apply`], which confines the process in
//! Firecracker's jailer order and returns a [`Report`] for the role to log.
//!
//! ```no_run
//! use cloudstore_sandbox::{Policy, Sandbox, Vars};
//! let policy = Policy::from_json_str(include_str!("../tests/data/sample.json"), "sample.json")?;
//! let vars = Vars::new().with("data_dir", "/var/lib/cloudstore");
//! let report = Sandbox::apply(&policy, &vars)?;
//! for w in &report.warnings { eprintln!("warning: {w}"); }
//! eprintln!("{report}");
//! # Ok::<(), cloudstore_sandbox::Error>(())
//! ```

mod apply;
mod error;
mod policy;
mod sigsys;

pub use apply::{
    landlock_verdict, FilterReport, LandlockEnforcement, LandlockReport, Report, Sandbox,
    LANDLOCK_ABI,
};
pub use error::Error;
pub use policy::{
    Access, ArgLen, CapabilityRule, FilterKind, Id, Landlock, PathRule, Policy, SeccompAction,
    SeccompCondition, SeccompFilter, SeccompOp, SeccompRule, TcpRule, Vars, PLACEHOLDERS,
};
pub use sigsys::SECCOMP_VIOLATION_EXIT_CODE;

/// Reads and validates every `sandbox.json` directly under the role directories of `roles`
/// (`roles/<role>/sandbox.json`), checking each names its own directory as its role.
///
/// For a test of the crate that holds the roles: a typo in a role policy then fails the
/// tests, not the agent at start-up. Returns the policies, sorted by role.
pub fn check_role_policies(roles: &std::path::Path) -> Result<Vec<Policy>, Error> {
    let entries = std::fs::read_dir(roles).map_err(|source| Error::Read {
        origin: roles.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            origin: roles.display().to_string(),
            source,
        })?;
        let file = entry.path().join("sandbox.json");
        if !file.is_file() {
            continue;
        }
        let policy = Policy::from_file(&file)?;
        let dir = entry.file_name().to_string_lossy().into_owned();
        if policy.role() != dir {
            return Err(Error::Invalid {
                origin: file.display().to_string(),
                field: "role".into(),
                message: format!(
                    "{:?} but the file lives in the directory of role {dir:?}",
                    policy.role()
                ),
            });
        }
        out.push(policy);
    }
    out.sort_by(|a, b| a.role().cmp(b.role()));
    Ok(out)
}
