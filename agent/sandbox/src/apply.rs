//! Applying a policy to the running process, in the jailer's order.

use std::fmt;
use std::path::PathBuf;

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};
use nix::unistd::{Gid, Group, Uid, User};

use crate::error::Error;
use crate::policy::{Access, FilterKind, Id, Policy, Vars};
use crate::sigsys;

/// The landlock ABI whose rights the policy's access levels map to: Linux 6.12 (ABI 6) has
/// file rights up to IOCTL_DEV, TCP bind/connect and the abstract-socket and signal scopes.
/// Newer ABIs add rights (UNIX socket resolution, UDP) that the access levels do not name
/// yet; an older kernel gets what it supports and the report says "partially enforced".
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// Entry point: `Sandbox::apply(&policy, &vars)`.
pub struct Sandbox;

/// How far landlock got on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockEnforcement {
    /// Every right of [`LANDLOCK_ABI`] is enforced.
    Full,
    /// The kernel is older than [`LANDLOCK_ABI`]: some rights are not enforced.
    Partial,
    /// The kernel enforces no landlock at all.
    None,
}

/// What landlock did.
#[derive(Debug, Clone)]
pub struct LandlockReport {
    pub enforcement: LandlockEnforcement,
    /// The kernel's landlock ABI (None: landlock not built in or not enabled).
    pub kernel_abi: Option<i32>,
    /// (expanded path, access) of each rule added.
    pub rules: Vec<(PathBuf, Access)>,
    /// Optional rules whose path does not exist.
    pub skipped: Vec<PathBuf>,
    /// Whether TCP is restricted to the policy's ports.
    pub tcp_restricted: bool,
}

/// One installed seccomp filter.
#[derive(Debug, Clone)]
pub struct FilterReport {
    pub name: String,
    pub kind: FilterKind,
    pub syscalls: usize,
    pub instructions: usize,
}

/// What `apply` did, for the role to log.
#[derive(Debug, Clone)]
pub struct Report {
    pub role: String,
    pub no_new_privs: bool,
    /// uid and gid the process runs as afterwards.
    pub uid: u32,
    pub gid: u32,
    /// True when the policy asked for a switch (and it happened).
    pub switched_user: bool,
    pub kept_capabilities: Vec<String>,
    /// False only when the process lacked CAP_SETPCAP and so could not empty it.
    pub bounding_set_cleared: bool,
    pub landlock: LandlockReport,
    pub seccomp: Vec<FilterReport>,
    /// Things short of the policy's intent that did not stop the role (e.g. landlock not
    /// enforced with `require: false`): log them as warnings.
    pub warnings: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sandbox of role {}: uid {} gid {}{}; capabilities kept: [{}]{}; landlock {:?} \
             (kernel ABI {}, {} rules, {} skipped{}); seccomp",
            self.role,
            self.uid,
            self.gid,
            if self.switched_user {
                " (switched)"
            } else {
                ""
            },
            self.kept_capabilities.join(", "),
            if self.bounding_set_cleared {
                ""
            } else {
                ", bounding set NOT cleared"
            },
            self.landlock.enforcement,
            self.landlock
                .kernel_abi
                .map_or("none".to_string(), |v| v.to_string()),
            self.landlock.rules.len(),
            self.landlock.skipped.len(),
            if self.landlock.tcp_restricted {
                ", TCP restricted"
            } else {
                ""
            },
        )?;
        for s in &self.seccomp {
            write!(
                f,
                " {}({:?}, {} syscalls, {} instructions)",
                s.name, s.kind, s.syscalls, s.instructions
            )?;
        }
        write!(f, "; no_new_privs {}", self.no_new_privs)
    }
}

/// Decides what a landlock outcome means for a policy: an error when it is required and
/// nothing is enforced, a warning when enforcement is partial or absent but tolerated.
pub fn landlock_verdict(
    role: &str,
    require: bool,
    enforcement: LandlockEnforcement,
    kernel_abi: Option<i32>,
) -> Result<Option<String>, Error> {
    let abi = kernel_abi.map_or("no landlock in this kernel".to_string(), |v| {
        format!("kernel landlock ABI {v}")
    });
    match enforcement {
        LandlockEnforcement::Full => Ok(None),
        LandlockEnforcement::Partial => Ok(Some(format!(
            "landlock only partially enforced: {abi}, policy rights need ABI {}",
            LANDLOCK_ABI as i32
        ))),
        LandlockEnforcement::None if require => Err(Error::LandlockRequired {
            role: role.to_string(),
            detail: abi,
        }),
        LandlockEnforcement::None => Ok(Some(format!(
            "landlock NOT enforced ({abi}); the role runs with capabilities and seccomp only"
        ))),
    }
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |e| Error::Sys {
        step,
        source: std::io::Error::from(e),
    }
}

fn caps_err(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> Error {
    move |e| Error::Caps {
        step,
        message: e.to_string(),
    }
}

fn landlock_err(step: &'static str) -> impl FnOnce(landlock::RulesetError) -> Error {
    move |e| Error::Landlock {
        step,
        message: e.to_string(),
    }
}

/// Threads of this process, from /proc/self/task.
fn thread_count() -> Result<usize, Error> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .map_err(|source| Error::Sys {
            step: "counting threads in /proc/self/task",
            source,
        })
}

fn access_rights(access: Access, is_dir: bool) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let rights = match access {
        Access::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
        Access::Execute => AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir,
        Access::ReadWrite => all & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock),
    };
    if is_dir {
        rights
    } else {
        rights & AccessFs::from_file(LANDLOCK_ABI)
    }
}

/// Credentials to switch to: (uid, gid, name for messages).
fn resolve_ids(policy: &Policy) -> Result<Option<(Uid, Gid)>, Error> {
    let Some(user) = &policy.user else {
        return Ok(None);
    };
    let entry = match user {
        Id::Name(name) => Some(
            User::from_name(name)
                .map_err(sys("looking up the user"))?
                .ok_or_else(|| Error::NoSuchId {
                    what: "user",
                    name: name.clone(),
                })?,
        ),
        Id::Number(n) => User::from_uid(Uid::from_raw(*n)).map_err(sys("looking up the uid"))?,
    };
    let uid = match user {
        Id::Number(n) => Uid::from_raw(*n),
        Id::Name(_) => entry.as_ref().map(|u| u.uid).expect("looked up above"),
    };
    let gid = match &policy.group {
        Some(Id::Number(n)) => Gid::from_raw(*n),
        Some(Id::Name(name)) => {
            Group::from_name(name)
                .map_err(sys("looking up the group"))?
                .ok_or_else(|| Error::NoSuchId {
                    what: "group",
                    name: name.clone(),
                })?
                .gid
        }
        None => entry.map(|u| u.gid).ok_or_else(|| Error::NoSuchId {
            what: "primary group of uid",
            name: user.to_string(),
        })?,
    };
    Ok(Some((uid, gid)))
}

/// A landlock ruleset with its paths opened, not yet enforced.
struct PreparedLandlock {
    ruleset: RulesetCreated,
    rules: Vec<(PathBuf, Access)>,
    skipped: Vec<PathBuf>,
}

/// Opens the landlock paths and builds the ruleset (nothing enforced yet).
fn build_ruleset(policy: &Policy, vars: &Vars) -> Result<PreparedLandlock, Error> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(landlock_err("handling file-system rights"))?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(landlock_err("scoping abstract sockets and signals"))?;
    if policy.landlock.tcp.is_some() {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(LANDLOCK_ABI))
            .map_err(landlock_err("handling TCP rights"))?;
    }
    let mut created = ruleset
        .create()
        .map_err(landlock_err("creating the ruleset"))?;
    let mut added = Vec::new();
    let mut skipped = Vec::new();
    for (i, rule) in policy.landlock.rules.iter().enumerate() {
        let field = format!("landlock.rules[{i}].path");
        let path = vars.expand(&rule.path, &policy.origin, &field)?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rule.optional => {
                skipped.push(path);
                continue;
            }
            Err(source) => {
                return Err(Error::Path {
                    origin: policy.origin.clone(),
                    field,
                    path,
                    source,
                })
            }
        };
        let fd = PathFd::new(&path).map_err(|e| Error::Path {
            origin: policy.origin.clone(),
            field: field.clone(),
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        created = created
            .add_rule(PathBeneath::new(
                fd,
                access_rights(rule.access, meta.is_dir()),
            ))
            .map_err(landlock_err("adding a path rule"))?;
        added.push((path, rule.access));
    }
    if let Some(tcp) = &policy.landlock.tcp {
        for port in &tcp.connect {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(landlock_err("adding a TCP connect rule"))?;
        }
        for port in &tcp.bind {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::BindTcp))
                .map_err(landlock_err("adding a TCP bind rule"))?;
        }
    }
    Ok(PreparedLandlock {
        ruleset: created,
        rules: added,
        skipped,
    })
}

fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    format!("[{}]", v.join(", "))
}

impl Sandbox {
    /// Confines the calling process for good: no_new_privs, user switch, capability drop,
    /// landlock, then seccomp — the order of Firecracker's jailer, each step needing the
    /// privilege the later ones take away.
    ///
    /// Call it after the role's privileged set-up (sockets bound, mounts made, files opened)
    /// and before the role starts any thread: capabilities and landlock domains belong to
    /// threads, so `apply` refuses to run in a multi-threaded process. Threads started
    /// afterwards inherit everything. Everything that can fail without changing the process
    /// (placeholders, user lookup, opening landlock paths, arch) is done first; an error after
    /// that leaves the process partly confined and the caller must exit.
    pub fn apply(policy: &Policy, vars: &Vars) -> Result<Report, Error> {
        // Preparation: nothing about the process changes yet.
        policy.check_arch()?;
        let threads = thread_count()?;
        if threads != 1 {
            return Err(Error::MultiThreaded { threads });
        }
        // Already running as the policy's user (systemd's User=, which may also have set
        // another primary group such as Group=qubes): nothing to switch, and without
        // CAP_SETGID the switch's setgroups would fail.
        let ids = resolve_ids(policy)?.filter(|(uid, _)| {
            !(Uid::current() == *uid && Uid::effective() == *uid && policy.group.is_none())
        });
        let PreparedLandlock {
            ruleset,
            rules,
            skipped,
        } = build_ruleset(policy, vars)?;
        let keep: CapsHashSet = policy.keep.iter().copied().collect();
        let mut warnings = Vec::new();

        // 1. no_new_privs: execve can no longer grant privileges (setuid bits, file
        //    capabilities); required by unprivileged landlock and seccomp.
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::Sys {
                step: "prctl(PR_SET_NO_NEW_PRIVS)",
                source: std::io::Error::last_os_error(),
            });
        }

        // 2. Bounding and ambient sets first: emptying the bounding set needs CAP_SETPCAP,
        //    which the user switch below takes away.
        let bounding_set_cleared =
            caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
        if bounding_set_cleared {
            for cap in caps::runtime::thread_all_supported() {
                if !keep.contains(&cap) {
                    caps::drop(None, CapSet::Bounding, cap)
                        .map_err(caps_err("dropping from the bounding set"))?;
                }
            }
        } else {
            warnings.push(
                "bounding capability set not emptied: the process lacks CAP_SETPCAP".to_string(),
            );
        }
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;

        // 3. User switch. Supplementary groups first, then gid, then uid (after which the
        //    process may no longer change groups). glibc applies these to every thread.
        let switched_user = ids.is_some();
        if let Some((uid, gid)) = ids {
            if !keep.is_empty() {
                // Keep the permitted set across the uid change (capabilities(7),
                // "Effect of user ID changes on capabilities"); effective is re-raised below.
                caps::securebits::set_keepcaps(true).map_err(caps_err("PR_SET_KEEPCAPS"))?;
            }
            nix::unistd::setgroups(&[]).map_err(sys("setgroups([])"))?;
            nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
            nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
            if !keep.is_empty() {
                caps::securebits::set_keepcaps(false).map_err(caps_err("PR_SET_KEEPCAPS"))?;
            }
        }

        // 4. Capabilities: inheritable empty (nothing passes through execve), permitted and
        //    effective exactly the kept ones. Order matters: effective must stay a subset of
        //    permitted at each capset.
        //    Sets that are already right are left alone: under a unit with
        //    CapabilityBoundingSet= empty and SystemCallFilter=~@privileged, capset itself is
        //    refused, and there is nothing to change.
        let read = |set, what| caps::read(None, set).map_err(caps_err(what));
        let effective_now = read(CapSet::Effective, "reading the effective set")?;
        let already_right = read(CapSet::Inheritable, "reading the inheritable set")?.is_empty()
            && read(CapSet::Permitted, "reading the permitted set")? == keep
            && effective_now == keep;
        if !already_right {
            caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
                .map_err(caps_err("clearing the inheritable set"))?;
            let shrink: CapsHashSet = effective_now.intersection(&keep).copied().collect();
            caps::set(None, CapSet::Effective, &shrink)
                .map_err(caps_err("shrinking the effective set"))?;
            caps::set(None, CapSet::Permitted, &keep)
                .map_err(caps_err("setting the permitted set"))?;
            caps::set(None, CapSet::Effective, &keep)
                .map_err(caps_err("setting the effective set"))?;
        }
        for (set, name, expected) in [
            (CapSet::Effective, "effective", &keep),
            (CapSet::Permitted, "permitted", &keep),
            (CapSet::Inheritable, "inheritable", &CapsHashSet::new()),
            (CapSet::Ambient, "ambient", &CapsHashSet::new()),
        ] {
            let now = caps::read(None, set).map_err(caps_err("reading back capabilities"))?;
            if !now.is_subset(expected) {
                return Err(Error::CapsLeft {
                    set: name,
                    found: names(&now),
                });
            }
        }
        if bounding_set_cleared {
            let now = caps::read(None, CapSet::Bounding)
                .map_err(caps_err("reading back the bounding set"))?;
            if !now.is_subset(&keep) {
                return Err(Error::CapsLeft {
                    set: "bounding",
                    found: names(&now),
                });
            }
        }

        // 5. Landlock: the ruleset built from the policy's paths becomes this process's domain.
        let status = ruleset
            .restrict_self()
            .map_err(landlock_err("restricting the process"))?;
        let kernel_abi = match status.landlock {
            LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => Some(kernel_abi.unwrap_or(effective_abi as i32)),
            _ => None,
        };
        let enforcement = match status.ruleset {
            RulesetStatus::FullyEnforced => LandlockEnforcement::Full,
            RulesetStatus::PartiallyEnforced => LandlockEnforcement::Partial,
            RulesetStatus::NotEnforced => LandlockEnforcement::None,
        };
        if let Some(w) = landlock_verdict(
            &policy.role,
            policy.landlock.require,
            enforcement,
            kernel_abi,
        )? {
            warnings.push(w);
        }

        // 6. Seccomp last: it also forbids the syscalls the steps above used. TSYNC puts the
        //    filters on every thread (there is one here; it guards against a thread a library
        //    started behind our back between the check and now).
        // Read before seccomp, which may well forbid getuid.
        let (uid, gid) = (Uid::current().as_raw(), Gid::current().as_raw());
        sigsys::install(&policy.role).map_err(|source| Error::Sys {
            step: "installing the SIGSYS handler",
            source,
        })?;
        // The allowlist goes in last: seccompiler's install calls prctl and seccomp, which
        // the allowlist itself forbids.
        let mut order: Vec<_> = policy.filters.iter().collect();
        order.sort_by_key(|f| f.kind == FilterKind::Allowlist);
        let mut seccomp = Vec::new();
        for f in order {
            seccompiler::apply_filter_all_threads(&f.program).map_err(|e| {
                Error::SeccompInstall {
                    filter: f.name.clone(),
                    message: e.to_string(),
                }
            })?;
            seccomp.push(FilterReport {
                name: f.name.clone(),
                kind: f.kind,
                syscalls: f.syscalls,
                instructions: f.program.len(),
            });
        }

        let mut kept: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
        kept.sort();
        Ok(Report {
            role: policy.role.clone(),
            no_new_privs: true,
            uid,
            gid,
            switched_user,
            kept_capabilities: kept,
            bounding_set_cleared,
            landlock: LandlockReport {
                enforcement,
                kernel_abi,
                rules,
                skipped,
                tcp_restricted: policy.landlock.tcp.is_some(),
            },
            seccomp,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_requires_or_warns() {
        assert!(
            landlock_verdict("r", true, LandlockEnforcement::Full, Some(6))
                .unwrap()
                .is_none()
        );
        let e = landlock_verdict("storage", true, LandlockEnforcement::None, None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("storage") && msg.contains("required"), "{msg}");
        let w = landlock_verdict("r", false, LandlockEnforcement::None, None)
            .unwrap()
            .unwrap();
        assert!(w.contains("NOT enforced"), "{w}");
        let w = landlock_verdict("r", true, LandlockEnforcement::Partial, Some(3))
            .unwrap()
            .unwrap();
        assert!(w.contains("partially") && w.contains("ABI 3"), "{w}");
    }

    #[test]
    fn access_levels_map_to_rights() {
        let ro = access_rights(Access::ReadOnly, true);
        assert!(ro.contains(AccessFs::ReadFile) && !ro.contains(AccessFs::WriteFile));
        assert!(!ro.contains(AccessFs::Execute));
        let rw = access_rights(Access::ReadWrite, true);
        assert!(rw.contains(AccessFs::WriteFile) && rw.contains(AccessFs::MakeSock));
        assert!(rw.contains(AccessFs::Refer) && rw.contains(AccessFs::Truncate));
        assert!(!rw.contains(AccessFs::Execute) && !rw.contains(AccessFs::MakeBlock));
        let file = access_rights(Access::ReadWrite, false);
        assert!(!file.contains(AccessFs::MakeDir) && file.contains(AccessFs::WriteFile));
        let x = access_rights(Access::Execute, false);
        assert!(x.contains(AccessFs::Execute) && !x.contains(AccessFs::ReadDir));
    }
}
