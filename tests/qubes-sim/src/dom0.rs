//! `up`, `down` and the stand-in's dom0: the process that outlives `up` and holds every
//! qube's qubesdb daemon, the qrexec broker, and the qubes' init processes.
//!
//! What dom0 does at a qube's start is done here the way Qubes does it:
//! - qubesdb: the standard entries core-admin writes (qubes/vm/qubesvm.py
//!   `create_qdb_entries`: `/name`, `/type`, `/qubes-vm-type`, `/qubes-vm-updateable`,
//!   `/qubes-vm-persistence`, `/default-user`) and the `cloudstore.*` features mapped by
//!   the cloudstore dom0 package's own code (`python3 -m cloudstore_dom0.mapping qubesdb`);
//! - qrexec policy: `/etc/qubes/policy.d/70-cloudstore.policy` as `cloudstore-admin policy
//!   --write` writes it (`python3 -m cloudstore_dom0.mapping policy`), evaluated per call;
//! - the qubes start in order: the storage qube first (its sockets must exist before a
//!   call is routed to it), then the others.
//!
//! Layout of `DIR`: `dom0/` (policy.d, the mapping's input and output, `dom0.log`,
//! `dom0.pid`), `qubes/NAME/` (see [`crate::qube`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, Endpoint, EnterFactory};
use crate::config::SimConfig;
use crate::qube::{drop_to, event, Namespaces, QubeState};
use crate::qubesdb::QubesDbDaemon;

/// What `up` hands to the dom0 process.
#[derive(Debug, Serialize, Deserialize)]
pub struct SimState {
    /// Qube names in start order.
    pub order: Vec<String>,
    /// The qubes whose start the others wait for (the storage role).
    pub first: Vec<String>,
    pub tags: BTreeMap<String, Vec<String>>,
    /// The dom0 package's source directory (for `feature` and `policy`).
    pub dom0_src: PathBuf,
}

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub config: PathBuf,
    pub dir: PathBuf,
    /// The `cloudstore` binary; default: beside `qubes-sim`, then `$PATH`.
    pub cloudstore: Option<PathBuf>,
    /// The `dom0/` directory of the source tree (holds `cloudstore_dom0`).
    pub dom0_src: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub restart_delay: Duration,
}

fn dom0_dir(dir: &Path) -> PathBuf {
    dir.join("dom0")
}
fn pid_file(dir: &Path) -> PathBuf {
    dom0_dir(dir).join("dom0.pid")
}
pub fn log_file(dir: &Path) -> PathBuf {
    dom0_dir(dir).join("dom0.log")
}
fn sim_file(dir: &Path) -> PathBuf {
    dom0_dir(dir).join("sim.json")
}
fn entries_file(dir: &Path, qube: &str) -> PathBuf {
    dom0_dir(dir).join("qubesdb").join(format!("{qube}.json"))
}
pub fn policy_dir(dir: &Path) -> PathBuf {
    dom0_dir(dir).join("policy.d")
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

/// PID of the dom0 process running for `dir`, if any (checked against its command line, so
/// a reused PID is not mistaken for it).
pub fn running_dom0(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    (args.iter().any(|a| *a == b"dom0")).then_some(pid)
}

/// Every ancestor of `path` must let other users through, or the qubes' users (and the
/// sandboxed agents) cannot reach their directories or binaries.
fn check_traversable(path: &Path, what: &str) -> Result<()> {
    let mut p = path.parent();
    while let Some(dir) = p {
        let m = fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        if m.mode() & 0o001 == 0 {
            bail!(
                "{what} {} is below {} (mode {:o}), which other users cannot enter: the qubes' \
                 users could not reach it; use a directory under /tmp or /var/tmp, or chmod o+x {}",
                path.display(),
                dir.display(),
                m.mode() & 0o7777,
                dir.display()
            );
        }
        p = dir.parent();
    }
    Ok(())
}

fn find_binary(explicit: Option<&Path>, env: &str, name: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
            candidates.push(p.into());
        }
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
        {
            candidates.push(d.join(name));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
        }
    }
    for c in candidates {
        if c.is_file() {
            return fs::canonicalize(&c).with_context(|| format!("resolving {}", c.display()));
        }
        tried.push(c.display().to_string());
    }
    bail!(
        "cannot find the {name} binary (tried {}); build it with `cargo build -p {}` or pass its path",
        tried.join(", "),
        if name == "cloudstore" { "cloudstore" } else { "qubes-sim" }
    )
}

fn find_dom0_src(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_owned()],
        None => {
            let mut v = Vec::new();
            if let Some(p) = std::env::var_os("QUBES_SIM_DOM0").filter(|p| !p.is_empty()) {
                v.push(PathBuf::from(p));
            }
            v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dom0"));
            v
        }
    };
    for c in &candidates {
        if c.join("cloudstore_dom0/mapping.py").is_file() {
            return fs::canonicalize(c).with_context(|| format!("resolving {}", c.display()));
        }
    }
    bail!(
        "cannot find the cloudstore dom0 package (cloudstore_dom0/mapping.py) in {}; pass --dom0-src",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Runs `python3 -m cloudstore_dom0.mapping COMMAND FILE`: (stdout, stderr).
fn mapping(dom0_src: &Path, command: &str, input: &Path) -> Result<(String, String)> {
    let out = Command::new("python3")
        .args(["-m", "cloudstore_dom0.mapping", command])
        .arg(input)
        .env("PYTHONPATH", dom0_src)
        .stdin(Stdio::null())
        .output()
        .context("running python3 -m cloudstore_dom0.mapping (is python3 installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "the dom0 mapping refused the configuration (cloudstore_dom0.mapping {command}, {}):\n{}",
            out.status,
            stderr.trim_end()
        );
    }
    Ok((stdout, stderr))
}

#[derive(Deserialize)]
struct QdbMapping {
    entries: BTreeMap<String, String>,
    rejected: Vec<Rejected>,
}

#[derive(Deserialize)]
struct Rejected {
    feature: String,
    reason: String,
}

/// Host account names: `qs-NAME` for the qube's user, `qsc-NAME` for its cloudstore
/// user; a name useradd would refuse (uppercase, '.', too long) becomes a hash.
fn account_name(prefix: &str, qube: &str) -> String {
    // useradd's default NAME_REGEX (Debian adduser.conf) and 32-character limit.
    let plain = qube
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let name = format!("{prefix}{qube}");
    if plain && name.len() <= 32 {
        return name;
    }
    // FNV-1a: stable across runs and versions.
    let mut h: u32 = 0x811c9dc5;
    for b in qube.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("{prefix}{h:08x}")
}

/// Serialises account creation between concurrent `up`s (parallel tests share the host's
/// accounts): without it two `useradd`s race for /etc/passwd's lock or the same name.
fn accounts_lock() -> Result<fs::File> {
    let path = Path::new("/run/lock/qubes-sim-accounts.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .or_else(|_| {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open("/tmp/qubes-sim-accounts.lock")
        })
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the accounts lock file");
    }
    Ok(f)
}

/// Attempts at a user or group creation: useradd fails while anyone else (another
/// program) holds /etc/passwd's lock, so a few retries.
const ACCOUNT_TRIES: u32 = 20;

fn run_account_tool(args: &[&str], exists: &dyn Fn() -> Result<bool>) -> Result<()> {
    let mut last = String::new();
    for _ in 0..ACCOUNT_TRIES {
        if exists()? {
            return Ok(());
        }
        let out = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", args[0]))?;
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{last}")
}

fn ensure_group(name: &str) -> Result<u32> {
    let _lock = accounts_lock()?;
    run_account_tool(&["groupadd", "--system", name], &|| {
        Ok(nix::unistd::Group::from_name(name)?.is_some())
    })?;
    Ok(nix::unistd::Group::from_name(name)?
        .ok_or_else(|| anyhow!("group {name} missing after groupadd"))?
        .gid
        .as_raw())
}

fn ensure_user(name: &str, comment: &str) -> Result<(u32, u32)> {
    let _lock = accounts_lock()?;
    run_account_tool(
        &[
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            comment,
            name,
        ],
        &|| Ok(nix::unistd::User::from_name(name)?.is_some()),
    )?;
    let u = nix::unistd::User::from_name(name)?
        .ok_or_else(|| anyhow!("user {name} missing after useradd"))?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

/// The qube's /etc/passwd and /etc/group: the host's, with the qube's own accounts named
/// `user` and `cloudstore` and its group `qubes` (as in every Qubes qube).
fn write_accounts(s: &QubeState) -> Result<()> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let group = fs::read_to_string("/etc/group").context("reading /etc/group")?;
    let field = |l: &str, i: usize| l.split(':').nth(i).map(str::to_owned).unwrap_or_default();
    let ours_u = [s.uid.to_string(), s.cs_uid.to_string()];
    let ours_g = [
        s.gid.to_string(),
        s.cs_gid.to_string(),
        s.qubes_gid.to_string(),
    ];
    let mut p = String::new();
    for l in passwd.lines() {
        let name = field(l, 0);
        if name == "user" || name == "cloudstore" || ours_u.contains(&field(l, 2)) {
            continue;
        }
        p.push_str(l);
        p.push('\n');
    }
    p.push_str(&format!(
        "user:x:{}:{}:user:/home/user:/bin/bash\ncloudstore:x:{}:{}:cloudstore agent:/var/lib/cloudstore:/usr/sbin/nologin\n",
        s.uid, s.gid, s.cs_uid, s.cs_gid
    ));
    let mut g = String::new();
    for l in group.lines() {
        let name = field(l, 0);
        if ["user", "cloudstore", "qubes"].contains(&name.as_str()) || ours_g.contains(&field(l, 2))
        {
            continue;
        }
        g.push_str(l);
        g.push('\n');
    }
    g.push_str(&format!(
        "user:x:{}:\ncloudstore:x:{}:\nqubes:x:{}:user,cloudstore\n",
        s.gid, s.cs_gid, s.qubes_gid
    ));
    let etc = s.etc();
    mkdir(&etc, 0o755)?;
    for (name, text) in [("passwd", p), ("group", g)] {
        let path = etc.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn symlink_fresh(target: &Path, link: &Path) -> Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlink {} -> {}", link.display(), target.display()))
}

/// `cloudstore-admin policy --write`: the policy from the qubes' features (`dom0/qubes.json`)
/// into `dom0/policy.d/70-cloudstore.policy`. Returns the mapping's warnings.
fn write_policy(dir: &Path, dom0_src: &Path) -> Result<Vec<String>> {
    let (policy, warnings) = mapping(dom0_src, "policy", &dom0_dir(dir).join("qubes.json"))?;
    let pd = policy_dir(dir);
    mkdir(&pd, 0o755)?;
    let policy_path = pd.join("70-cloudstore.policy");
    let tmp = pd.join(".70-cloudstore.policy.new");
    fs::write(&tmp, &policy).with_context(|| format!("writing {}", tmp.display()))?;
    // Renamed into place: a call evaluated meanwhile sees the old or the new file whole.
    fs::rename(&tmp, &policy_path)
        .with_context(|| format!("replacing {}", policy_path.display()))?;
    Ok(warnings
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// `qubes-sim policy`: writes the policy again from the current features.
pub fn policy(dir: &Path) -> Result<Vec<String>> {
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let sim = load_sim(&dir)?;
    write_policy(&dir, &sim.dom0_src)
}

fn load_sim(dir: &Path) -> Result<SimState> {
    let path = sim_file(dir);
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "{} is not a qubes-sim directory (no {})",
            dir.display(),
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// `qvm-features QUBE NAME VALUE` (or `--delete`) while the stand-in is up: checked as the
/// dom0 extension's `domain-feature-pre-set` does, written to (or removed from) the qube's
/// live qubesdb as its `domain-feature-set` / `-delete` handlers do, and kept for the
/// qube's restarts and for `qubes-sim policy` until the next `up`, which reads the
/// configuration file again.
pub fn feature(dir: &Path, qube: &str, name: &str, value: Option<&str>) -> Result<String> {
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let sim = load_sim(&dir)?;
    if running_dom0(&dir).is_none() {
        bail!(
            "the stand-in is not up in {}; change the features in the configuration file instead",
            dir.display()
        );
    }
    if !sim.order.iter().any(|q| q == qube) {
        bail!("no qube {qube:?} in the stand-in in {}", dir.display());
    }
    let qubes_json = dom0_dir(&dir).join("qubes.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&qubes_json)?)
        .with_context(|| format!("parsing {}", qubes_json.display()))?;
    let features = doc["qube"][qube]["features"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("{}: no features object for {qube}", qubes_json.display()))?;
    let cloudstore = name.starts_with("cloudstore.");
    if let (Some(v), true) = (value, cloudstore) {
        // The extension's pre-set check, with the package's own function.
        let out = Command::new("python3")
            .args([
                "-c",
                concat!(
                    "import sys\n",
                    "from cloudstore_dom0.mapping import check_feature, MappingError\n",
                    "try:\n",
                    "    check_feature(sys.argv[1], sys.argv[2])\n",
                    "except MappingError as e:\n",
                    "    print(e, file=sys.stderr)\n",
                    "    sys.exit(1)\n",
                ),
                name,
                v,
            ])
            .env("PYTHONPATH", &sim.dom0_src)
            .output()
            .context("running python3 for the feature check")?;
        if !out.status.success() {
            bail!(
                "dom0 refuses the feature: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    match value {
        Some(v) => {
            features.insert(name.to_owned(), serde_json::Value::String(v.to_owned()));
        }
        None => {
            if features.remove(name).is_none() {
                bail!("qube {qube} has no feature {name}");
            }
        }
    }
    // The qubesdb entry: the mapping of this one feature (its path even when deleting).
    let one = dom0_dir(&dir)
        .join("qubesdb")
        .join(format!("{qube}.one.json"));
    fs::write(
        &one,
        serde_json::to_vec(&serde_json::json!({ name: value.unwrap_or("") }))?,
    )?;
    let (out, _) = mapping(&sim.dom0_src, "qubesdb", &one)?;
    let m: QdbMapping = serde_json::from_str(&out).with_context(|| format!("parsing {out}"))?;
    fs::write(&qubes_json, serde_json::to_vec_pretty(&doc)?)?;
    if !cloudstore {
        return Ok(format!(
            "{qube}: {name} {}",
            if value.is_some() { "set" } else { "deleted" }
        ));
    }
    if let Some(r) = m.rejected.first() {
        return Ok(format!(
            "{qube}: {name} kept, not written to qubesdb: {}",
            r.reason
        ));
    }
    let Some((path, qvalue)) = m.entries.into_iter().next() else {
        bail!("the mapping gave no qubesdb entry for {name}");
    };
    let entries_path = entries_file(&dir, qube);
    let mut entries: BTreeMap<String, String> = serde_json::from_slice(&fs::read(&entries_path)?)?;
    let command = match value {
        Some(_) => {
            entries.insert(path.clone(), qvalue.clone());
            format!(
                "qdb-write {qube} {path} {}",
                serde_json::to_string(&qvalue)?
            )
        }
        None => {
            entries.remove(&path);
            format!("qdb-rm {qube} {path}")
        }
    };
    fs::write(&entries_path, serde_json::to_vec_pretty(&entries)?)?;
    control(&dir, &command)?;
    Ok(format!(
        "{qube}: {name} {}; qubesdb {path} updated",
        if value.is_some() { "set" } else { "deleted" }
    ))
}

/// `qubes-sim up`: prepares everything, starts dom0, and reports each qube. Returns
/// whether every qube came up.
pub fn up(opts: &UpOptions) -> Result<bool> {
    let config = SimConfig::load(&opts.config)?;
    mkdir(&opts.dir, 0o755)?;
    let dir =
        fs::canonicalize(&opts.dir).with_context(|| format!("resolving {}", opts.dir.display()))?;
    if let Some(pid) = running_dom0(&dir) {
        bail!(
            "the stand-in is already up in {} (dom0 PID {pid}); run `qubes-sim down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    // Qubes left behind by a dom0 that died without stopping them would hold the
    // directories and sockets the new ones need.
    kill_leftovers(&dir);
    let cloudstore = find_binary(
        opts.cloudstore.as_deref(),
        "QUBES_SIM_CLOUDSTORE",
        "cloudstore",
    )?;
    let qrexec_client = find_binary(None, "QUBES_SIM_QREXEC_CLIENT", "qrexec-client-vm")?;
    let dom0_src = find_dom0_src(opts.dom0_src.as_deref())?;
    check_traversable(&dir.join("x"), "the stand-in directory")?;
    check_traversable(&cloudstore, "the cloudstore binary")?;
    check_traversable(&qrexec_client, "the qrexec-client-vm stand-in")?;

    // dom0: the policy, exactly as `cloudstore-admin policy --write` produces it.
    let d0 = dom0_dir(&dir);
    mkdir(&d0, 0o700)?;
    mkdir(&d0.join("qubesdb"), 0o700)?;
    let qubes_json = d0.join("qubes.json");
    fs::write(
        &qubes_json,
        serde_json::to_vec_pretty(&config.mapping_json())?,
    )
    .with_context(|| format!("writing {}", qubes_json.display()))?;
    for w in write_policy(&dir, &dom0_src)? {
        println!("dom0: {w}");
    }

    let qubes_gid = ensure_group("qs-qubes")?;
    mkdir(&dir.join("qubes"), 0o755)?;
    let mut tags = BTreeMap::new();
    for (name, q) in &config.qube {
        // qubesdb: core-admin's standard entries, then the cloudstore features.
        let features_path = d0.join("qubesdb").join(format!("{name}.features.json"));
        fs::write(&features_path, serde_json::to_vec(&q.features)?)
            .with_context(|| format!("writing {}", features_path.display()))?;
        let (out, _) = mapping(&dom0_src, "qubesdb", &features_path)?;
        let m: QdbMapping = serde_json::from_str(&out)
            .with_context(|| format!("parsing the mapping's output for {name}: {out}"))?;
        for r in &m.rejected {
            println!(
                "dom0: {name}: feature {} not written to qubesdb: {}",
                r.feature, r.reason
            );
        }
        let mut entries: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in [
            ("/name", name.as_str()),
            ("/type", "AppVM"),
            ("/qubes-vm-type", "AppVM"),
            ("/qubes-vm-updateable", "False"),
            ("/qubes-vm-persistence", "rw-only"),
            ("/default-user", "user"),
        ] {
            entries.insert(k.into(), v.into());
        }
        entries.extend(m.entries);
        fs::write(
            entries_file(&dir, name),
            serde_json::to_vec_pretty(&entries)?,
        )?;

        let (uid, gid) = ensure_user(
            &account_name("qs-", name),
            &format!("qubes-sim user of qube {name}"),
        )?;
        let (cs_uid, cs_gid) = ensure_user(
            &account_name("qsc-", name),
            &format!("qubes-sim cloudstore user of qube {name}"),
        )?;
        let s = QubeState {
            name: name.clone(),
            dir: dir.clone(),
            network: q.has_network(),
            uid,
            gid,
            cs_uid,
            cs_gid,
            qubes_gid,
            cloudstore: cloudstore.clone(),
            qrexec_client: qrexec_client.clone(),
            ready_timeout_ms: opts.ready_timeout.as_millis() as u64,
            restart_ms: opts.restart_delay.as_millis() as u64,
            binds: qube_binds(&cloudstore, &qrexec_client, q),
            unit_env: q.env.clone(),
        };
        prepare_qube(&s)?;
        if q.role() == Some("transfer") {
            if let Some(w) = prepare_local_cloud(&s, q.features.get("cloudstore.remote"))? {
                println!("dom0: {name}: {w}");
            }
        }
        s.save()?;
        tags.insert(name.clone(), q.tags.clone());
    }
    let order: Vec<String> = config
        .start_order()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let first = order
        .iter()
        .filter(|n| config.qube[*n].role() == Some("storage"))
        .cloned()
        .collect();
    let sim = SimState {
        order,
        first,
        tags,
        dom0_src: dom0_src.clone(),
    };
    fs::write(sim_file(&dir), serde_json::to_vec_pretty(&sim)?)?;

    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(&dir))
        .with_context(|| format!("opening {}", log_file(&dir).display()))?;
    let exe = std::env::current_exe().context("locating qubes-sim itself")?;
    let mut cmd = Command::new(exe);
    cmd.args(["dom0", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe; dom0 leaves our session so it outlives `up`.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("starting the stand-in's dom0 process")?;
    let out = child.stdout.take().expect("piped");
    let mut all_ready = true;
    let mut done = false;
    for line in BufReader::new(out).lines() {
        let line = line.context("reading dom0's progress")?;
        let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match kind {
            "ready" => {
                let (q, role) = rest.split_once(' ').unwrap_or((rest, "-"));
                if role == "-" {
                    println!("{q}: up (no cloudstore role)");
                } else {
                    println!("{q}: up, cloudstore {role} agent ready");
                }
            }
            "failed" => {
                all_ready = false;
                let (q, why) = rest.split_once(' ').unwrap_or((rest, ""));
                println!("{q}: FAILED: {}", why.replace(" | ", "\n    "));
            }
            "done" => {
                done = true;
                break;
            }
            _ => println!("{line}"),
        }
    }
    if !done {
        let status = child.wait().ok();
        bail!(
            "the stand-in's dom0 process ended during start-up ({}); its log {} ends:\n{}",
            status.map(|s| s.to_string()).unwrap_or_default(),
            log_file(&dir).display(),
            crate::qube::tail(&log_file(&dir))
        );
    }
    // dom0 keeps running; it is not our child to wait for (it reparents when we exit).
    std::mem::forget(child);
    Ok(all_ready)
}

/// The host directories a qube keeps seeing under its private /tmp: where its binaries
/// are, and a local cloud folder of the transfer qube.
fn qube_binds(
    cloudstore: &Path,
    qrexec_client: &Path,
    q: &crate::config::QubeConfig,
) -> Vec<PathBuf> {
    let mut binds: Vec<PathBuf> = Vec::new();
    let exe = std::env::current_exe().ok();
    for bin in [Some(cloudstore), Some(qrexec_client), exe.as_deref()]
        .into_iter()
        .flatten()
    {
        if let Some(d) = bin.parent() {
            if !binds.iter().any(|b| b == d) {
                binds.push(d.to_owned());
            }
        }
    }
    if q.role() == Some("transfer") {
        if let Some(r) = q.features.get("cloudstore.remote").map(|r| r.trim()) {
            if r.starts_with('/') {
                binds.push(PathBuf::from(r));
            }
        }
    }
    binds
}

/// A local folder as the transfer qube's cloud (`cloudstore.remote` = an absolute path):
/// it stands for the transfer's account at the provider, so it belongs to that qube's
/// `cloudstore` user, the sandbox user of the transfer agent. Created if missing; an
/// existing one is left as it is, with a warning when the agent could not write to it.
fn prepare_local_cloud(s: &QubeState, remote: Option<&String>) -> Result<Option<String>> {
    let Some(remote) = remote.map(|r| r.trim()).filter(|r| r.starts_with('/')) else {
        return Ok(None);
    };
    let path = Path::new(remote);
    if !path.exists() {
        mkdir(path, 0o700)?;
        nix::unistd::chown(path, Some(s.cs_uid.into()), Some(s.cs_gid.into()))
            .with_context(|| format!("chown {}", path.display()))?;
        return Ok(None);
    }
    let m = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    check_traversable(path, "the cloud folder")?;
    if m.uid() != s.cs_uid {
        return Ok(Some(format!(
            "the cloud folder {} belongs to uid {}, not to the transfer qube's cloudstore user (uid {}); \
             its agent may not be able to write there (chown -R {}:{} {})",
            path.display(),
            m.uid(),
            s.cs_uid,
            s.cs_uid,
            s.cs_gid,
            path.display()
        )));
    }
    Ok(None)
}

/// Directories, accounts, service links and helper links of one qube.
fn prepare_qube(s: &QubeState) -> Result<()> {
    mkdir(&s.root(), 0o755)?;
    mkdir(&s.rw(), 0o755)?;
    mkdir(&s.home(), 0o755)?;
    let user_home = s.home().join("user");
    if !user_home.exists() {
        mkdir(&user_home, 0o700)?;
    }
    nix::unistd::chown(&user_home, Some(s.uid.into()), Some(s.gid.into()))
        .with_context(|| format!("chown {}", user_home.display()))?;
    if let Some(parent) = s.data_dir().parent() {
        mkdir(parent, 0o755)?;
    }
    // /rw/config: root's persistent configuration (the consumer keeps keyfiles there).
    mkdir(&s.rw().join("config"), 0o755)?;
    mkdir(&s.log_dir(), 0o755)?;
    // run/ is volatile: a fresh one at each start.
    let _ = fs::remove_dir_all(s.run());
    mkdir(&s.run(), 0o755)?;
    mkdir(s.trigger_socket().parent().expect("has a parent"), 0o755)?;
    write_accounts(s)?;
    mkdir(&s.bin(), 0o755)?;
    symlink_fresh(&s.qrexec_client, &s.bin().join("qrexec-client-vm"))?;
    symlink_fresh(&s.cloudstore, &s.bin().join("cloudstore"))?;
    // qubesdb-read, -write, -rm, -list, -watch, as every qube has them (qubes-core-qubesdb
    // client/), talking to this qube's daemon.
    let exe = std::env::current_exe().context("locating qubes-sim itself")?;
    for tool in [
        "qubesdb-read",
        "qubesdb-write",
        "qubesdb-rm",
        "qubesdb-list",
        "qubesdb-watch",
    ] {
        let path = s.bin().join(tool);
        let script = format!(
            "#!/bin/sh\nexec '{}' {tool} --socket '{}' \"$@\"\n",
            exe.display(),
            s.qubesdb_socket().display()
        );
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    // /etc/qubes-rpc as the package installs it (packaging/install.sh): the services are
    // symlinks to the storage agent's sockets (dangling in qubes without that role).
    let _ = fs::remove_dir_all(s.rpc_dir());
    mkdir(&s.rpc_dir(), 0o755)?;
    symlink_fresh(
        &s.runtime_dir().join("volume.sock"),
        &s.rpc_dir().join("cloudstore.Volume"),
    )?;
    symlink_fresh(
        &s.runtime_dir().join("sync.sock"),
        &s.rpc_dir().join("cloudstore.Sync"),
    )?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
struct QubeInfo {
    agent: String,
    status: String,
}

enum Msg {
    Line(String, String),
    Exited(String),
    Stop,
    /// A command on the control socket and where its one-line answer goes.
    Control(String, mpsc::Sender<String>),
}

fn control_socket(dir: &Path) -> PathBuf {
    dom0_dir(dir).join("control.sock")
}

/// How long a control command waits for a qube to stop or come up.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(90);

/// Serves `qubes-sim shutdown|start` (qvm-shutdown and qvm-start): one command line per
/// connection, one answer line.
fn serve_control(listener: UnixListener, tx: mpsc::Sender<Msg>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { return };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let Ok(reader) = conn.try_clone() else { return };
            if BufReader::new(reader.take(4096))
                .read_line(&mut line)
                .is_err()
            {
                return;
            }
            let (rtx, rrx) = mpsc::channel();
            if tx.send(Msg::Control(line.trim().to_owned(), rtx)).is_err() {
                return;
            }
            let answer = rrx
                .recv_timeout(CONTROL_TIMEOUT)
                .unwrap_or_else(|_| "error dom0 did not answer in time".into());
            let mut conn = conn;
            let _ = writeln!(conn, "{answer}");
        });
    }
}

/// `qubes-sim ls`: the qubes, like `qvm-ls`, with each agent's last status.
pub fn list(dir: &Path) -> Result<String> {
    let answer = control(dir, "list")?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&answer).with_context(|| format!("parsing dom0's answer {answer}"))?;
    let mut out = format!(
        "{:<20} {:<8} {:<8} {:<20} {}\n",
        "NAME", "STATE", "NETWORK", "AGENT", "STATUS"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        out.push_str(&format!(
            "{:<20} {:<8} {:<8} {:<20} {}\n",
            s("name"),
            if r["running"].as_bool() == Some(true) {
                "Running"
            } else {
                "Halted"
            },
            if r["network"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            if s("agent").is_empty() {
                "-".into()
            } else {
                s("agent")
            },
            s("status")
        ));
    }
    Ok(out)
}

/// Client side of the control socket: sends `command`, returns dom0's answer.
pub fn control(dir: &Path, command: &str) -> Result<String> {
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    if running_dom0(&dir).is_none() {
        bail!("the stand-in is not up in {}", dir.display());
    }
    let path = control_socket(&dir);
    let mut conn = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to {}", path.display()))?;
    writeln!(conn, "{command}")?;
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer)?;
    let answer = answer.trim().to_owned();
    match answer.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim().to_owned()),
        None => bail!("{}", answer.strip_prefix("error ").unwrap_or(&answer)),
    }
}

fn log(text: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    eprintln!("[{now:.3}] {text}");
}

/// Status line to `up` (our stdout until start-up is over).
fn tell_up(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `qubes-sim dom0`: runs until SIGTERM, then stops the qubes and exits.
pub fn dom0_main(dir: &Path) -> Result<()> {
    let dir = fs::canonicalize(dir)?;
    // Every thread inherits this mask; one thread takes the signals with sigwait.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block()?;
    fs::write(pid_file(&dir), std::process::id().to_string())?;
    let sim: SimState = serde_json::from_slice(&fs::read(sim_file(&dir))?)
        .with_context(|| format!("parsing {}", sim_file(&dir).display()))?;
    let mut states = BTreeMap::new();
    for name in &sim.order {
        states.insert(name.clone(), QubeState::load(&dir, name)?);
    }
    log(&format!(
        "dom0 starting {} qubes in {}",
        states.len(),
        dir.display()
    ));

    let (tx, rx) = mpsc::channel::<Msg>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if mask.wait().is_ok() {
                let _ = tx.send(Msg::Stop);
            }
        });
    }

    // qubesdb, one daemon per qube.
    let mut qubesdbs: BTreeMap<String, QubesDbDaemon> = BTreeMap::new();
    for (name, s) in &states {
        let entries: BTreeMap<String, String> =
            serde_json::from_slice(&fs::read(entries_file(&dir, name))?)?;
        let sock = s.qubesdb_socket();
        let d = QubesDbDaemon::start(&sock, entries.into_iter().map(|(k, v)| (k, v.into_bytes())))
            .with_context(|| format!("starting qubesdb of {name} on {}", sock.display()))?;
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o666))?;
        qubesdbs.insert(name.clone(), d);
    }

    // qrexec: the broker and one trigger socket per qube.
    let mut endpoints = BTreeMap::new();
    for (name, s) in &states {
        let st = s.clone();
        let factory: EnterFactory = Arc::new(move |user: Option<&str>| {
            let ns = Namespaces::open(&st).map_err(std::io::Error::other)?;
            let (uid, gid, groups) = if user == Some("root") {
                (0, 0, vec![0])
            } else {
                (st.uid, st.gid, vec![st.gid, st.qubes_gid])
            };
            let enter: crate::qrexec::Enter = Arc::new(move || {
                ns.enter()?;
                drop_to(uid, gid, &groups)
            });
            Ok(enter)
        });
        endpoints.insert(
            name.clone(),
            Endpoint {
                service_dir: s.rpc_dir(),
                enter: Some(factory),
            },
        );
    }
    let broker = Arc::new(Broker::new(
        policy_dir(&dir),
        endpoints,
        Box::new(|l: &str| log(l)),
    ));
    for (name, s) in &states {
        let path = s.trigger_socket();
        let _ = fs::remove_file(&path);
        let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
        broker.serve(name.clone(), l);
    }

    let cpath = control_socket(&dir);
    let _ = fs::remove_file(&cpath);
    let cl = UnixListener::bind(&cpath).with_context(|| format!("binding {}", cpath.display()))?;
    fs::set_permissions(&cpath, fs::Permissions::from_mode(0o600))?;
    {
        let tx = tx.clone();
        std::thread::spawn(move || serve_control(cl, tx));
    }
    let mut stop_waiters: BTreeMap<String, mpsc::Sender<String>> = BTreeMap::new();
    // What `qubes-sim ls` shows: the agent's state and its last STATUS= line.
    let mut infos: BTreeMap<String, QubeInfo> = BTreeMap::new();
    let mut start_waiters: BTreeMap<String, mpsc::Sender<String>> = BTreeMap::new();

    // The qubes: storage first, the rest once it has reported.
    let mut children: BTreeMap<String, Child> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    let mut outcome: BTreeMap<String, bool> = BTreeMap::new();
    let mut waiting_first: Vec<String> = sim.first.clone();
    let rest: Vec<String> = sim
        .order
        .iter()
        .filter(|n| !sim.first.contains(n))
        .cloned()
        .collect();
    let mut rest_started = false;
    for name in &sim.first {
        children.insert(name.clone(), start_qube(&states[name], &tx)?);
        pending.push(name.clone());
    }
    let mut startup_over = false;
    let mut stop = false;
    // Each start-up phase (storage, then the rest) waits for the agents' own ready
    // timeout, plus time for the qube's set-up and a restart.
    let ready_ms = states
        .values()
        .map(|s| s.ready_timeout_ms + s.restart_ms)
        .max()
        .unwrap_or(0);
    let startup_limit = Duration::from_millis(2 * ready_ms) + Duration::from_secs(20);
    let startup_deadline = Instant::now() + startup_limit;
    loop {
        if !rest_started && waiting_first.is_empty() {
            for name in &rest {
                match start_qube(&states[name], &tx) {
                    Ok(c) => {
                        children.insert(name.clone(), c);
                        pending.push(name.clone());
                    }
                    Err(e) => {
                        tell_up(&format!(
                            "failed {name} {}",
                            format!("{e:#}").replace('\n', " | ")
                        ));
                        outcome.insert(name.clone(), false);
                    }
                }
            }
            rest_started = true;
        }
        if !startup_over && rest_started && pending.is_empty() {
            tell_up("done");
            // Start-up is over: `up` stops reading; later output would hit a closed pipe.
            if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
            }
            startup_over = true;
            log("all qubes started");
        }
        if stop {
            break;
        }
        let msg = if startup_over {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(startup_deadline.saturating_duration_since(Instant::now())) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // A qube that never reports (its init stuck before the agent) must
                    // not keep `up` waiting for ever.
                    for name in std::mem::take(&mut pending) {
                        waiting_first.retain(|n| n != &name);
                        outcome.insert(name.clone(), false);
                        tell_up(&format!(
                            "failed {name} did not report within {} s of the start",
                            startup_limit.as_secs()
                        ));
                    }
                    waiting_first.clear();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        match msg {
            Msg::Stop => stop = true,
            Msg::Control(cmd, reply) => {
                let (verb, args) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
                let (q, args) = args.split_once(' ').unwrap_or((args, ""));
                let known = states.contains_key(q);
                match verb {
                    "list" => {
                        let rows: Vec<serde_json::Value> = sim
                            .order
                            .iter()
                            .map(|n| {
                                let info = infos.get(n).cloned().unwrap_or_default();
                                serde_json::json!({
                                    "name": n,
                                    "running": children.contains_key(n),
                                    "network": states[n].network,
                                    "agent": info.agent,
                                    "status": info.status,
                                })
                            })
                            .collect();
                        let _ = reply.send(format!("ok {}", serde_json::Value::Array(rows)));
                    }
                    _ if !known => {
                        let _ = reply.send(format!("error no qube {q:?} in this stand-in"));
                    }
                    "shutdown" => match children.get(q) {
                        None => {
                            let _ = reply.send("ok not running".into());
                        }
                        Some(c) => {
                            log(&format!("{q}: shutdown requested"));
                            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                            stop_waiters.insert(q.to_owned(), reply);
                        }
                    },
                    "start" => {
                        if children.contains_key(q) {
                            let _ = reply.send("ok already running".into());
                        } else {
                            log(&format!("{q}: start requested"));
                            match start_qube(&states[q], &tx) {
                                Ok(c) => {
                                    children.insert(q.to_owned(), c);
                                    start_waiters.insert(q.to_owned(), reply);
                                }
                                Err(e) => {
                                    let _ = reply.send(format!("error {e:#}").replace('\n', " | "));
                                }
                            }
                        }
                    }
                    "qdb-write" | "qdb-rm" => {
                        let (path, value) = args.split_once(' ').unwrap_or((args, ""));
                        let db = &qubesdbs[q];
                        let result = if verb == "qdb-rm" {
                            db.rm(path).map(|_| ())
                        } else {
                            match serde_json::from_str::<String>(value) {
                                Ok(v) => db.write(path, v.as_bytes()),
                                Err(e) => {
                                    let _ = reply.send(format!("error bad value: {e}"));
                                    continue;
                                }
                            }
                        };
                        log(&format!("{q}: qubesdb {verb} {path}"));
                        let _ = reply.send(match result {
                            Ok(()) => "ok".into(),
                            Err(e) => format!("error {e}"),
                        });
                    }
                    _ => {
                        let _ = reply.send(format!("error unknown command {verb:?}"));
                    }
                }
            }
            Msg::Line(name, line) => {
                let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match kind {
                    event::PID => {
                        let _ = fs::write(states[&name].init_pid_file(), rest);
                    }
                    event::READY | event::FAILED => {
                        let ok = kind == event::READY;
                        log(&format!("{name}: {line}"));
                        let info = infos.entry(name.clone()).or_default();
                        info.agent = if ok {
                            if rest == "-" {
                                "-".into()
                            } else {
                                format!("{rest} (ready)")
                            }
                        } else {
                            "failed".into()
                        };
                        if pending.contains(&name) {
                            pending.retain(|n| n != &name);
                            waiting_first.retain(|n| n != &name);
                            outcome.insert(name.clone(), ok);
                            tell_up(&format!("{kind} {name} {rest}"));
                        }
                        if let Some(r) = start_waiters.remove(&name) {
                            let _ = r.send(if ok {
                                format!("ok ready {rest}")
                            } else {
                                format!("error {rest}")
                            });
                        }
                    }
                    event::AGENT => {
                        let (role, state) = rest.split_once(' ').unwrap_or((rest, ""));
                        infos.entry(name.clone()).or_default().agent = format!("{role} ({state})");
                    }
                    _ => {
                        if let Some(st) = rest.strip_prefix("status: ") {
                            infos.entry(name.clone()).or_default().status = st.to_owned();
                        }
                        log(&format!("{name}: {rest}"))
                    }
                }
            }
            Msg::Exited(name) => {
                infos.remove(&name);
                log(&format!("{name}: the qube's init ended"));
                if pending.contains(&name) {
                    pending.retain(|n| n != &name);
                    waiting_first.retain(|n| n != &name);
                    outcome.insert(name.clone(), false);
                    tell_up(&format!(
                        "failed {name} the qube's init ended during start-up; see {}",
                        log_file(&dir).display()
                    ));
                }
                if let Some(mut c) = children.remove(&name) {
                    let _ = c.wait();
                }
                let _ = fs::remove_file(states[&name].init_pid_file());
                if let Some(r) = stop_waiters.remove(&name) {
                    let _ = r.send("ok stopped".into());
                }
                if let Some(r) = start_waiters.remove(&name) {
                    let _ = r.send(format!(
                        "error the qube's init ended during start-up; see {}",
                        log_file(&dir).display()
                    ));
                }
            }
        }
    }
    if !startup_over {
        tell_up("done");
    }
    log("stopping the qubes");
    // Consumers and transfer first (they flush to storage), the storage qubes last.
    let later: Vec<String> = sim.first.clone();
    let earlier: Vec<String> = children
        .keys()
        .filter(|n| !later.contains(n))
        .cloned()
        .collect();
    for group in [earlier, later] {
        stop_group(&group, &mut children, &rx, &states);
    }
    drop(qubesdbs);
    for s in states.values() {
        let _ = fs::remove_file(s.trigger_socket());
        let _ = fs::remove_file(s.init_pid_file());
    }
    let _ = fs::remove_file(control_socket(&dir));
    let _ = fs::remove_file(pid_file(&dir));
    log("dom0 stopped");
    Ok(())
}

/// Stop timeout of a qube: its agent gets TimeoutStopSec=30s, plus a margin.
const QUBE_STOP_TIMEOUT: Duration = Duration::from_secs(40);

fn stop_group(
    group: &[String],
    children: &mut BTreeMap<String, Child>,
    rx: &mpsc::Receiver<Msg>,
    states: &BTreeMap<String, QubeState>,
) {
    let mut left: Vec<String> = Vec::new();
    for name in group {
        if let Some(c) = children.get(name) {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            left.push(name.clone());
        }
    }
    let deadline = Instant::now() + QUBE_STOP_TIMEOUT;
    while !left.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(Msg::Exited(name)) => {
                left.retain(|n| n != &name);
                if let Some(mut c) = children.remove(&name) {
                    let _ = c.wait();
                }
                log(&format!("{name}: stopped"));
            }
            Ok(Msg::Line(name, line)) => log(&format!("{name}: {line}")),
            Ok(Msg::Stop) => {}
            Ok(Msg::Control(_, reply)) => {
                let _ = reply.send("error dom0 is stopping".into());
            }
            Err(_) => break,
        }
    }
    for name in left {
        log(&format!("{name}: did not stop in time; killing it"));
        if let Some(pid) = states[&name].init_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(mut c) = children.remove(&name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `qubes-sim qube-init` in the qube's new namespaces and forwards its events.
fn start_qube(s: &QubeState, tx: &mpsc::Sender<Msg>) -> Result<Child> {
    use nix::sched::CloneFlags as F;
    let mut flags = F::CLONE_NEWNS | F::CLONE_NEWPID | F::CLONE_NEWUTS | F::CLONE_NEWIPC;
    if !s.network {
        flags |= F::CLONE_NEWNET;
    }
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["qube-init", "--dir"])
        .arg(&s.dir)
        .args(["--qube", &s.name])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for pass in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(pass) {
            cmd.env(pass, v);
        }
    }
    // SAFETY: unshare and prctl are plain system calls, safe between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::unshare(flags)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting qube {} in new namespaces", s.name))?;
    let out = child.stdout.take().expect("piped");
    let tx = tx.clone();
    let name = s.name.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(Msg::Line(name.clone(), line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::Exited(name));
    });
    log(&format!("{}: started (PID {})", s.name, child.id()));
    Ok(child)
}

/// How long `down` waits for dom0 to stop every qube.
const DOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// `qubes-sim down`: stops dom0 (which stops the qubes); the data stays.
pub fn down(dir: &Path) -> Result<()> {
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let Some(pid) = running_dom0(&dir) else {
        // Nothing to stop; leftovers of a crashed dom0 are killed.
        kill_leftovers(&dir);
        println!("nothing is running in {}", dir.display());
        return Ok(());
    };
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .with_context(|| format!("signalling dom0 (PID {pid})"))?;
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while Path::new(&format!("/proc/{pid}")).exists() {
        // dom0 is not our child; /proc tells when it is gone (a zombie has no cmdline
        // and is reaped by init).
        if running_dom0(&dir).is_none() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            kill_leftovers(&dir);
            bail!(
                "dom0 (PID {pid}) did not stop within {} s; killed it and the qubes (see {})",
                DOWN_TIMEOUT.as_secs(),
                log_file(&dir).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped; data kept in {}", dir.display());
    Ok(())
}

fn kill_leftovers(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir.join("qubes")) else {
        return;
    };
    for e in rd.flatten() {
        if let Some(name) = e.file_name().to_str() {
            if let Ok(s) = QubeState::load(dir, name) {
                if let Some(pid) = s.init_pid() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = fs::remove_file(s.init_pid_file());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_fit_useradd() {
        assert_eq!(account_name("qs-", "my-work"), "qs-my-work");
        let long = account_name("qsc-", &"a".repeat(31));
        assert!(long.len() <= 32 && long.starts_with("qsc-"), "{long}");
        let upper = account_name("qs-", "My.Qube");
        assert!(upper.starts_with("qs-") && upper.len() == 11, "{upper}");
        assert_ne!(account_name("qs-", "A"), account_name("qs-", "B"));
    }
}
