//! Errors of policy loading and of applying a sandbox.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading a policy or applying it.
///
/// Policy errors (`Parse`, `Invalid`, `Seccomp`) name the policy's origin (its file) and the
/// field; apply errors name the step. An apply error leaves the process partly confined:
/// the caller must exit, not continue unconfined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file could not be read.
    #[error("sandbox policy {origin}: cannot read it: {source}")]
    Read {
        origin: String,
        #[source]
        source: io::Error,
    },

    /// The policy is not well-formed JSON of the expected shape.
    #[error("sandbox policy {origin}: field `{field}` (line {line}, column {column}): {message}")]
    Parse {
        origin: String,
        field: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// The policy is well-formed but breaks a rule of the policy format.
    #[error("sandbox policy {origin}: field `{field}`: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },

    /// seccompiler refused a filter.
    #[error("sandbox policy {origin}: seccomp filter `{filter}` does not compile: {message}")]
    Seccomp {
        origin: String,
        filter: String,
        message: String,
    },

    /// The policy was written for another architecture (syscall names and numbers differ).
    #[error(
        "sandbox policy {origin}: written for arch {policy_arch}, this process runs on {running}"
    )]
    Arch {
        origin: String,
        policy_arch: String,
        running: String,
    },

    /// A landlock path uses a placeholder the caller gave no value for.
    #[error("sandbox policy {origin}: field `{field}`: no value given for placeholder {{{placeholder}}}")]
    MissingVar {
        origin: String,
        field: String,
        placeholder: String,
    },

    /// A placeholder value is not an absolute, `..`-free path.
    #[error("sandbox: value of placeholder {{{placeholder}}} must be an absolute path without `..`, got {value:?}")]
    BadVar { placeholder: String, value: PathBuf },

    /// A landlock rule's path cannot be opened.
    #[error(
        "sandbox policy {origin}: field `{field}`: cannot open landlock path {path:?}: {source}"
    )]
    Path {
        origin: String,
        field: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Landlock and capabilities (and no_new_privs) are per thread: a thread started before
    /// the sandbox would keep running unconfined.
    #[error("sandbox: the process has {threads} threads; apply the sandbox before starting any thread (capabilities and landlock are per thread)")]
    MultiThreaded { threads: usize },

    /// The user or group to switch to does not exist.
    #[error("sandbox: {what} {name:?} not found in the user database")]
    NoSuchId { what: &'static str, name: String },

    /// A system call of the sandbox set-up failed.
    #[error("sandbox: {step} failed: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: io::Error,
    },

    /// A capability operation failed.
    #[error("sandbox: {step} failed: {message}")]
    Caps { step: &'static str, message: String },

    /// After dropping, a capability set still holds more than the policy keeps.
    #[error("sandbox: after dropping capabilities the {set} set still holds {found}")]
    CapsLeft { set: &'static str, found: String },

    /// The landlock library refused the ruleset.
    #[error("sandbox: landlock {step} failed: {message}")]
    Landlock { step: &'static str, message: String },

    /// The policy requires landlock and the kernel enforces none of it.
    #[error("sandbox policy of role {role}: landlock is required but not enforced ({detail})")]
    LandlockRequired { role: String, detail: String },

    /// Installing a seccomp filter failed.
    #[error("sandbox: installing seccomp filter `{filter}` failed: {message}")]
    SeccompInstall { filter: String, message: String },
}
