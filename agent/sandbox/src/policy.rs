//! The policy document: what a role may do, as data kept beside the role's code.
//!
//! One JSON file per role (`agent/cloudstore/src/roles/<role>/sandbox.json`). Every grant
//! carries its reason (`why` for paths and capabilities, `comment` for syscalls), so a
//! reviewer reads the policy, not the code, to know what the role can reach. The `seccomp`
//! member is seccompiler's JSON format as-is (rust-vmm/seccompiler docs/json_format.md), the
//! format Firecracker keeps its filters in; it is mirrored here only to demand a `comment`
//! on every rule and to reject the combinations seccompiler silently accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use seccompiler::{BpfProgram, TargetArch};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Placeholders a landlock path may start with, filled by the role at apply time.
///
/// A closed list so that a typo (`{data_dri}`) fails the policy tests, not the agent.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "data_dir",
        "persistent data of the role, e.g. /var/lib/cloudstore",
    ),
    (
        "runtime_dir",
        "sockets and runtime state, e.g. /run/cloudstore",
    ),
    (
        "state_dir",
        "persistent state of a role that keeps no volume data",
    ),
    (
        "config_dir",
        "configuration the role reads, e.g. rclone's config directory",
    ),
    ("mountpoint", "a FUSE mountpoint served by the role"),
    ("home", "home directory of the qube's user"),
    (
        "connector",
        "the program a role runs to reach another qube (qrexec-client-vm), resolved at start",
    ),
];

/// Highest syscall argument index (seccomp passes six arguments, 0..=5).
const MAX_ARG_INDEX: u8 = 5;

/// Largest errno a refusal filter may return (the kernel caps SECCOMP_RET_DATA errno values
/// at MAX_ERRNO, include/linux/err.h).
const MAX_ERRNO: u32 = 4095;

/// What a landlock rule grants beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Read, write, create, remove, rename, link, truncate (no execute, no device nodes).
    ReadWrite,
    /// Execute and read (programs and the libraries the loader maps).
    Execute,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
            Access::Execute => "execute",
        }
    }
}

/// A user or group: a name looked up in the user database, or a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(u32),
    Name(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::Name(s) => f.write_str(s),
        }
    }
}

/// A capability the role keeps after the drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityRule {
    /// `CAP_*` name as in capabilities(7).
    pub name: String,
    pub why: String,
}

/// One landlock grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Absolute path, or one starting with a placeholder such as `{data_dir}`.
    pub path: String,
    pub access: Access,
    pub why: String,
    /// A missing optional path is skipped (and reported); a missing required one is an error.
    #[serde(default)]
    pub optional: bool,
}

/// TCP ports the role may use when landlock restricts TCP (ABI 4 and later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRule {
    #[serde(default)]
    pub connect: Vec<u16>,
    #[serde(default)]
    pub bind: Vec<u16>,
    pub why: String,
}

/// The landlock part of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Landlock {
    /// true: a kernel that enforces no landlock at all makes `apply` fail;
    /// false: it is a warning in the report.
    pub require: bool,
    /// Absent: landlock leaves TCP alone (seccomp may still forbid the socket family).
    /// Present: TCP bind/connect only to these ports.
    #[serde(default)]
    pub tcp: Option<TcpRule>,
    pub rules: Vec<PathRule>,
}

/// seccompiler's action, mirrored so the filter can be written back for compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Log,
    Trace(u32),
    Trap,
}

/// seccompiler's comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompOp {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
    MaskedEq(u64),
    Ne,
}

/// seccompiler's argument width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgLen {
    Dword,
    Qword,
}

/// One argument condition (seccompiler `JsonCondition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompCondition {
    pub index: u8,
    #[serde(rename = "type")]
    pub len: ArgLen,
    pub op: SeccompOp,
    pub val: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One syscall rule (seccompiler `JsonRule`); here the comment is mandatory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompRule {
    pub syscall: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<SeccompCondition>>,
    pub comment: String,
}

/// One filter (seccompiler `JsonFilter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompFilter {
    pub mismatch_action: SeccompAction,
    pub match_action: SeccompAction,
    pub filter: Vec<SeccompRule>,
}

/// What a filter does, by its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// Allows what it lists; anything else traps or kills.
    Allowlist,
    /// Makes what it lists fail with an errno; allows the rest (to the allowlist).
    Refusal,
}

impl SeccompFilter {
    fn kind(&self) -> Option<FilterKind> {
        use SeccompAction::*;
        match (self.match_action, self.mismatch_action) {
            (Allow, Trap | KillProcess) => Some(FilterKind::Allowlist),
            (Errno(n), Allow) if (1..=MAX_ERRNO).contains(&n) => Some(FilterKind::Refusal),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    role: String,
    /// Free text for the reader (what the policy is based on); not interpreted.
    #[serde(default, rename = "comment")]
    _comment: Vec<String>,
    arch: String,
    #[serde(default)]
    user: Option<Id>,
    #[serde(default)]
    group: Option<Id>,
    #[serde(default)]
    capabilities: Vec<CapabilityRule>,
    landlock: Landlock,
    seccomp: BTreeMap<String, SeccompFilter>,
}

/// A compiled seccomp filter, ready to install.
#[derive(Debug, Clone)]
pub(crate) struct CompiledFilter {
    pub name: String,
    pub kind: FilterKind,
    pub syscalls: usize,
    pub program: BpfProgram,
}

/// A validated sandbox policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) origin: String,
    pub(crate) role: String,
    pub(crate) arch_name: String,
    pub(crate) user: Option<Id>,
    pub(crate) group: Option<Id>,
    pub(crate) keep: Vec<caps::Capability>,
    pub(crate) landlock: Landlock,
    pub(crate) filters: Vec<CompiledFilter>,
}

impl Policy {
    /// Parses and validates a policy; `origin` (normally the file's path) names it in errors.
    ///
    /// The seccomp filters are compiled here, for the policy's own `arch`, so an unknown
    /// syscall name is an error of this call, not of [`crate::Sandbox::apply`].
    pub fn from_json_str(text: &str, origin: &str) -> Result<Policy, Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let doc: Document = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            Error::Parse {
                origin: origin.to_string(),
                field,
                line: inner.line(),
                column: inner.column(),
                message: strip_position(&inner.to_string()),
            }
        })?;
        de.end().map_err(|e| Error::Parse {
            origin: origin.to_string(),
            field: ".".into(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        validate(doc, origin)
    }

    /// Reads and validates the policy file at `path`.
    pub fn from_file(path: &Path) -> Result<Policy, Error> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            origin: origin.clone(),
            source,
        })?;
        Policy::from_json_str(&text, &origin)
    }

    /// The role the policy is for.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Where the policy came from (its file).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The user the sandbox switches to, if any.
    pub fn user(&self) -> Option<&Id> {
        self.user.as_ref()
    }

    /// Replaces the user and group to switch to (e.g. a test running the role's policy as
    /// `nobody` where the role's own system user does not exist).
    pub fn set_credentials(&mut self, user: Option<Id>, group: Option<Id>) {
        self.user = user;
        self.group = group;
    }

    /// The landlock rules.
    pub fn landlock(&self) -> &Landlock {
        &self.landlock
    }

    /// Capabilities kept after the drop.
    pub fn kept_capabilities(&self) -> &[caps::Capability] {
        &self.keep
    }

    /// The placeholders the landlock rules use: the role must give a value for each.
    pub fn placeholders(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for rule in &self.landlock.rules {
            if let Ok(Some(name)) = placeholder_of(&rule.path) {
                out.insert(name.to_string());
            }
        }
        out
    }

    /// Checks the running architecture is the one the filters were compiled for.
    pub(crate) fn check_arch(&self) -> Result<(), Error> {
        let running = std::env::consts::ARCH;
        if running != self.arch_name {
            return Err(Error::Arch {
                origin: self.origin.clone(),
                policy_arch: self.arch_name.clone(),
                running: running.to_string(),
            });
        }
        Ok(())
    }
}

/// Values for the placeholders of landlock paths.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, PathBuf>,
}

impl Vars {
    pub fn new() -> Vars {
        Vars::default()
    }

    /// Sets `{name}` to `value`; builder style.
    pub fn with(mut self, name: &str, value: impl Into<PathBuf>) -> Vars {
        self.set(name, value);
        self
    }

    pub fn set(&mut self, name: &str, value: impl Into<PathBuf>) {
        self.values.insert(name.to_string(), value.into());
    }

    /// Expands the placeholder a rule's path may start with.
    pub(crate) fn expand(&self, path: &str, origin: &str, field: &str) -> Result<PathBuf, Error> {
        let Some(name) = placeholder_of(path).map_err(|message| Error::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            message,
        })?
        else {
            return Ok(PathBuf::from(path));
        };
        let value = self.values.get(name).ok_or_else(|| Error::MissingVar {
            origin: origin.to_string(),
            field: field.to_string(),
            placeholder: name.to_string(),
        })?;
        if !value.is_absolute() || value.components().any(|c| c == Component::ParentDir) {
            return Err(Error::BadVar {
                placeholder: name.to_string(),
                value: value.clone(),
            });
        }
        let rest = &path[name.len() + 2..];
        let rest = rest.trim_start_matches('/');
        Ok(if rest.is_empty() {
            value.clone()
        } else {
            value.join(rest)
        })
    }
}

/// `Ok(Some(name))` when `path` starts with `{name}`; `Ok(None)` for a plain path.
fn placeholder_of(path: &str) -> Result<Option<&str>, String> {
    let Some(after) = path.strip_prefix('{') else {
        if path.contains(['{', '}']) {
            return Err(format!(
                "{path:?}: a placeholder may only start the path, as in {{data_dir}}/sub"
            ));
        }
        return Ok(None);
    };
    let Some(end) = after.find('}') else {
        return Err(format!("{path:?}: placeholder not closed with `}}`"));
    };
    let name = &after[..end];
    let rest = &after[end + 1..];
    if rest.contains(['{', '}']) {
        return Err(format!(
            "{path:?}: only one placeholder, at the start of the path"
        ));
    }
    if !rest.is_empty() && !rest.starts_with('/') {
        return Err(format!(
            "{path:?}: a placeholder must be followed by `/` or end the path"
        ));
    }
    if !PLACEHOLDERS.iter().any(|(n, _)| *n == name) {
        let known: Vec<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "{path:?}: unknown placeholder {{{name}}} (known: {})",
            known.join(", ")
        ));
    }
    Ok(Some(name))
}

/// serde_json appends " at line L column C"; the error already carries both.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn invalid(origin: &str, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid {
        origin: origin.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

fn require_reason(origin: &str, field: String, text: &str) -> Result<(), Error> {
    if text.trim().is_empty() {
        return Err(invalid(origin, field, "must say why (empty)"));
    }
    Ok(())
}

fn validate(doc: Document, origin: &str) -> Result<Policy, Error> {
    if doc.role.is_empty()
        || !doc
            .role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            origin,
            "role",
            format!("{:?}: must be lowercase letters, digits and `-`", doc.role),
        ));
    }
    let arch = TargetArch::try_from(doc.arch.as_str()).map_err(|_| {
        invalid(
            origin,
            "arch",
            format!(
                "{:?}: unknown (seccompiler knows x86_64, aarch64, riscv64)",
                doc.arch
            ),
        )
    })?;
    if let Some(Id::Name(n)) = &doc.user {
        if n.is_empty() {
            return Err(invalid(origin, "user", "empty name"));
        }
    }
    if let Some(Id::Name(n)) = &doc.group {
        if n.is_empty() {
            return Err(invalid(origin, "group", "empty name"));
        }
    }
    if doc.group.is_some() && doc.user.is_none() {
        return Err(invalid(
            origin,
            "group",
            "a group without a user: give the user to switch to as well",
        ));
    }

    let mut keep = Vec::new();
    for (i, c) in doc.capabilities.iter().enumerate() {
        let field = format!("capabilities[{i}]");
        let cap = caps::Capability::from_str(&c.name).map_err(|_| {
            invalid(
                origin,
                format!("{field}.name"),
                format!("{:?}: not a capability name (CAP_...)", c.name),
            )
        })?;
        require_reason(origin, format!("{field}.why"), &c.why)?;
        if keep.contains(&cap) {
            return Err(invalid(origin, format!("{field}.name"), "listed twice"));
        }
        keep.push(cap);
    }

    let mut seen = BTreeSet::new();
    for (i, r) in doc.landlock.rules.iter().enumerate() {
        let field = format!("landlock.rules[{i}].path");
        let placeholder = placeholder_of(&r.path).map_err(|m| invalid(origin, field.clone(), m))?;
        if placeholder.is_none() && !r.path.starts_with('/') {
            return Err(invalid(
                origin,
                field,
                format!("{:?}: must be absolute or start with a placeholder", r.path),
            ));
        }
        if Path::new(&r.path)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(invalid(
                origin,
                field,
                format!("{:?}: `..` not allowed", r.path),
            ));
        }
        if !seen.insert(r.path.clone()) {
            return Err(invalid(
                origin,
                field,
                format!("{:?}: listed twice", r.path),
            ));
        }
        require_reason(origin, format!("landlock.rules[{i}].why"), &r.why)?;
    }
    if let Some(tcp) = &doc.landlock.tcp {
        require_reason(origin, "landlock.tcp.why".into(), &tcp.why)?;
    }

    let mut filters = Vec::new();
    let mut allowlists = 0;
    if doc.seccomp.is_empty() {
        return Err(invalid(
            origin,
            "seccomp",
            "no filter: a role without seccomp is not sandboxed",
        ));
    }
    for (name, filter) in &doc.seccomp {
        let base = format!("seccomp.{name}");
        let kind = filter.kind().ok_or_else(|| {
            invalid(
                origin,
                base.clone(),
                "a filter is either an allowlist (match_action \"allow\", mismatch_action \
                 \"trap\" or \"kill_process\") or a refusal list (match_action {\"errno\": N} \
                 with 1 <= N <= 4095, mismatch_action \"allow\")",
            )
        })?;
        if kind == FilterKind::Allowlist {
            allowlists += 1;
        }
        if filter.filter.is_empty() {
            return Err(invalid(origin, format!("{base}.filter"), "empty filter"));
        }
        // seccompiler merges the rules of one syscall: an unconditional rule next to a
        // conditional one silently becomes conditional (frontend/json.rs make_seccomp_filter),
        // so that combination is refused here.
        let mut unconditional = BTreeSet::new();
        let mut conditional = BTreeSet::new();
        for (i, rule) in filter.filter.iter().enumerate() {
            let field = format!("{base}.filter[{i}]");
            require_reason(origin, format!("{field}.comment"), &rule.comment)?;
            match &rule.args {
                None => {
                    if !unconditional.insert(rule.syscall.as_str()) {
                        return Err(invalid(
                            origin,
                            format!("{field}.syscall"),
                            format!("{}: listed twice", rule.syscall),
                        ));
                    }
                }
                Some(args) => {
                    if args.is_empty() {
                        return Err(invalid(
                            origin,
                            format!("{field}.args"),
                            "empty: leave `args` out to match every call",
                        ));
                    }
                    for (j, a) in args.iter().enumerate() {
                        if a.index > MAX_ARG_INDEX {
                            return Err(invalid(
                                origin,
                                format!("{field}.args[{j}].index"),
                                format!("{}: syscalls have arguments 0 to 5", a.index),
                            ));
                        }
                    }
                    conditional.insert(rule.syscall.as_str());
                }
            }
            if unconditional.contains(rule.syscall.as_str())
                && conditional.contains(rule.syscall.as_str())
            {
                return Err(invalid(
                    origin,
                    format!("{field}.syscall"),
                    format!(
                        "{}: has both an unconditional rule and rules with args; \
                         seccompiler would keep only the conditional ones",
                        rule.syscall
                    ),
                ));
            }
        }
        let program = compile(origin, name, filter, arch)?;
        filters.push(CompiledFilter {
            name: name.clone(),
            kind,
            syscalls: unconditional.union(&conditional).count(),
            program,
        });
    }
    if allowlists != 1 {
        return Err(invalid(
            origin,
            "seccomp",
            format!("needs exactly one allowlist filter, found {allowlists}"),
        ));
    }
    // The kernel runs every filter and keeps the most severe verdict (trap before errno before
    // allow, Documentation/userspace-api/seccomp_filter.rst): a refused syscall the allowlist
    // does not list would trap instead of failing with the refusal's errno.
    let allowlist = doc
        .seccomp
        .values()
        .find(|f| f.kind() == Some(FilterKind::Allowlist))
        .expect("counted above");
    for (name, filter) in &doc.seccomp {
        if filter.kind() != Some(FilterKind::Refusal) {
            continue;
        }
        for (i, rule) in filter.filter.iter().enumerate() {
            if !allowlist
                .filter
                .iter()
                .any(|r| r.syscall == rule.syscall && r.args.is_none())
            {
                return Err(invalid(
                    origin,
                    format!("seccomp.{name}.filter[{i}].syscall"),
                    format!(
                        "{}: refused with an errno here but not allowed (unconditionally) by the \
                         allowlist, whose trap would take precedence; list it there too",
                        rule.syscall
                    ),
                ));
            }
        }
    }

    Ok(Policy {
        origin: origin.to_string(),
        role: doc.role,
        arch_name: doc.arch,
        user: doc.user,
        group: doc.group,
        keep,
        landlock: doc.landlock,
        filters,
    })
}

fn compile(
    origin: &str,
    name: &str,
    filter: &SeccompFilter,
    arch: TargetArch,
) -> Result<BpfProgram, Error> {
    let err = |message: String| Error::Seccomp {
        origin: origin.to_string(),
        filter: name.to_string(),
        message,
    };
    let mut one = BTreeMap::new();
    one.insert(name, filter);
    let json = serde_json::to_vec(&one).map_err(|e| err(e.to_string()))?;
    let mut map =
        seccompiler::compile_from_json(json.as_slice(), arch).map_err(|e| err(e.to_string()))?;
    map.remove(name)
        .ok_or_else(|| err("seccompiler returned no program".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "role": "sample",
        "comment": ["a policy for the unit tests"],
        "arch": "x86_64",
        "user": "nobody",
        "capabilities": [],
        "landlock": {
            "require": true,
            "rules": [
                {"path": "{data_dir}", "access": "read-write", "why": "volumes"},
                {"path": "/usr/lib", "access": "read-only", "why": "locale data", "optional": true}
            ]
        },
        "seccomp": {
            "main": {
                "mismatch_action": "trap",
                "match_action": "allow",
                "filter": [
                    {"syscall": "read", "comment": "requests"},
                    {"syscall": "clone3", "comment": "refused by `refuse`"},
                    {"syscall": "socket", "comment": "AF_UNIX only",
                     "args": [{"index": 0, "type": "dword", "op": "eq", "val": 1, "comment": "AF_UNIX"}]}
                ]
            },
            "refuse": {
                "mismatch_action": "allow",
                "match_action": {"errno": 38},
                "filter": [{"syscall": "clone3", "comment": "ENOSYS: glibc falls back to clone"}]
            }
        }
    }"#;

    fn err_of(text: &str) -> String {
        Policy::from_json_str(text, "test.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_policy_parses_and_compiles() {
        let p = Policy::from_json_str(GOOD, "test.json").unwrap();
        assert_eq!(p.role(), "sample");
        assert_eq!(p.filters.len(), 2);
        assert!(p.filters.iter().all(|f| !f.program.is_empty()));
        assert_eq!(
            p.placeholders().into_iter().collect::<Vec<_>>(),
            vec!["data_dir".to_string()]
        );
    }

    #[test]
    fn misspelt_field_is_named() {
        let e = err_of(&GOOD.replace("\"access\": \"read-write\"", "\"acess\": \"read-write\""));
        assert!(e.contains("test.json"), "{e}");
        assert!(e.contains("landlock.rules[0]"), "{e}");
        assert!(e.contains("acess"), "{e}");
    }

    #[test]
    fn bad_access_value_is_named_with_its_field() {
        let e = err_of(&GOOD.replace("\"read-only\"", "\"readonly\""));
        assert!(e.contains("landlock.rules[1].access"), "{e}");
        assert!(e.contains("readonly"), "{e}");
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn missing_why_is_named() {
        let e = err_of(&GOOD.replace(", \"why\": \"volumes\"", ""));
        assert!(e.contains("landlock.rules[0]"), "{e}");
        assert!(e.contains("missing field `why`"), "{e}");
        let e = err_of(&GOOD.replace("\"why\": \"volumes\"", "\"why\": \" \""));
        assert!(e.contains("landlock.rules[0].why"), "{e}");
    }

    #[test]
    fn missing_comment_on_a_syscall_is_named() {
        let e = err_of(&GOOD.replace(", \"comment\": \"requests\"", ""));
        assert!(e.contains("seccomp.main.filter[0]"), "{e}");
        assert!(e.contains("comment"), "{e}");
    }

    #[test]
    fn unknown_syscall_is_named() {
        let e = err_of(&GOOD.replace("\"read\"", "\"raed\""));
        assert!(e.contains("seccomp filter `main`"), "{e}");
        assert!(e.contains("raed"), "{e}");
    }

    #[test]
    fn unknown_placeholder_and_relative_paths_are_refused() {
        let e = err_of(&GOOD.replace("{data_dir}", "{data_dri}"));
        assert!(
            e.contains("landlock.rules[0].path") && e.contains("data_dri"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("\"/usr/lib\"", "\"usr/lib\""));
        assert!(
            e.contains("landlock.rules[1].path") && e.contains("absolute"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("\"/usr/lib\"", "\"/usr/../etc\""));
        assert!(e.contains("`..`"), "{e}");
        let e = err_of(&GOOD.replace("\"{data_dir}\"", "\"{data_dir}x\""));
        assert!(e.contains("followed by `/`"), "{e}");
    }

    #[test]
    fn bad_actions_are_refused() {
        let e = err_of(&GOOD.replace(
            "\"mismatch_action\": \"trap\"",
            "\"mismatch_action\": \"log\"",
        ));
        assert!(e.contains("seccomp.main") && e.contains("allowlist"), "{e}");
        let e = err_of(&GOOD.replace("{\"errno\": 38}", "{\"errno\": 0}"));
        assert!(e.contains("seccomp.refuse"), "{e}");
        let e = err_of(
            &GOOD
                .replace(
                    "\"mismatch_action\": \"allow\"",
                    "\"mismatch_action\": \"trap\"",
                )
                .replace("{\"errno\": 38}", "\"allow\""),
        );
        assert!(e.contains("exactly one allowlist"), "{e}");
    }

    #[test]
    fn unconditional_plus_conditional_rule_is_refused() {
        let e = err_of(&GOOD.replace(
            "{\"syscall\": \"read\", \"comment\": \"requests\"}",
            "{\"syscall\": \"socket\", \"comment\": \"any family\"}",
        ));
        assert!(e.contains("seccomp.main.filter[2].syscall"), "{e}");
        assert!(e.contains("unconditional"), "{e}");
    }

    #[test]
    fn refused_syscall_must_be_in_the_allowlist() {
        let e = err_of(&GOOD.replace(
            "{\"syscall\": \"clone3\", \"comment\": \"refused by `refuse`\"},",
            "",
        ));
        assert!(e.contains("seccomp.refuse.filter[0].syscall"), "{e}");
        assert!(e.contains("precedence"), "{e}");
    }

    #[test]
    fn bad_capability_and_arch_are_named() {
        let e = err_of(&GOOD.replace(
            "\"capabilities\": []",
            "\"capabilities\": [{\"name\": \"CAP_SYS_ADMN\", \"why\": \"x\"}]",
        ));
        assert!(
            e.contains("capabilities[0].name") && e.contains("CAP_SYS_ADMN"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("\"x86_64\"", "\"i386\""));
        assert!(e.contains("`arch`") && e.contains("i386"), "{e}");
    }

    #[test]
    fn trailing_garbage_and_truncation_are_errors() {
        let e = err_of(&format!("{GOOD} x"));
        assert!(e.contains("trailing"), "{e}");
        let e = err_of(&GOOD[..GOOD.len() / 2]);
        assert!(e.contains("EOF"), "{e}");
    }

    #[test]
    fn vars_expand_and_refuse_bad_values() {
        let v = Vars::new().with("data_dir", "/var/lib/cloudstore");
        assert_eq!(
            v.expand("{data_dir}/vols", "o", "f").unwrap(),
            PathBuf::from("/var/lib/cloudstore/vols")
        );
        assert_eq!(
            v.expand("{data_dir}", "o", "f").unwrap(),
            PathBuf::from("/var/lib/cloudstore")
        );
        let e = v.expand("{runtime_dir}", "o", "f").unwrap_err().to_string();
        assert!(e.contains("runtime_dir"), "{e}");
        let v = Vars::new().with("data_dir", "relative");
        assert!(v.expand("{data_dir}", "o", "f").is_err());
        let v = Vars::new().with("data_dir", "/a/../b");
        assert!(v.expand("{data_dir}", "o", "f").is_err());
    }
}
