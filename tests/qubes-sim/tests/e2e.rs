//! End to end (issue 8): the real `cloudstore` agent in every role, in the Qubes stand-in,
//! with a local folder as the cloud and real gocryptfs as "another OS".
//!
//! Two worlds, each its own `qubes-sim` directory (storage, transfer, my-work, my-photos):
//! - [`walkthrough`]: a file written in my-work reaches the cloud as ciphertext only, which
//!   gocryptfs opens with the passphrase alone, byte for byte; a file written into the
//!   cloud with gocryptfs appears in my-work; my-photos is refused the work volume and
//!   holds nothing of it; conflicting edits in the cloud and in my-work both stay visible;
//!   no plaintext byte or name is anywhere in storage, transfer, the cloud or dom0.
//! - [`nothing_is_lost`]: while a writer in my-work keeps creating files (each fsynced
//!   before it counts), storage and transfer are shut down and started again, and every
//!   role's agent is killed with SIGKILL at random moments, and another machine adds files
//!   to the cloud; afterwards every counted file is intact in my-work and in the cloud, and
//!   every file added to the cloud is in my-work.
//!
//! The random moments come from a seed printed at the start (`E2E_SEED=N` repeats a run).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{cloudstore, SIM};

/// How long any one step may take to show its effect. The transfer agent polls the cloud
/// every second here; everything else reacts to pushes, so a step normally settles in a
/// few seconds. Generous because CI machines are slow and shared.
const SETTLE: Duration = Duration::from_secs(60);

/// The demo passphrase's scrypt cost (log2 N): the lowest the tool takes, so unlocking
/// (and every gocryptfs mount of the cloud copy) costs milliseconds.
const SCRYPT_LOG_N: &str = "10";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// xorshift64*: the random moments and the test data, repeatable from the seed.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> (Rng, u64) {
        let seed = std::env::var("E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    ^ u64::from(std::process::id())
            });
        (Rng(seed | 1), seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {SETTLE:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// One stand-in: storage (work, photos), transfer (the cloud: a local folder), my-work,
/// my-photos.
struct World {
    tmp: tempfile::TempDir,
    /// A marker unique to this run, inside every plaintext name and content, so a search
    /// for it can only find this run's plaintext.
    tok: String,
    pass: String,
    rng: Rng,
}

impl World {
    fn new(label: &str) -> World {
        let (mut rng, seed) = Rng::from_env_or_clock();
        eprintln!("{label}: seed {seed} (E2E_SEED={seed} repeats this run)");
        let tok = format!("{:016x}", rng.next());
        let tmp = tempfile::Builder::new()
            .prefix("qubes-sim-e2e")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A private copy of the agent: a rebuild of target/debug/cloudstore while the test
        // runs must not replace the binary the consumer starts its workers from.
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(cloudstore(), bin.join("cloudstore")).unwrap();
        let w = World {
            pass: format!("e2e passphrase {tok}"),
            tok,
            tmp,
            rng,
        };
        std::fs::write(w.pass_file(), format!("{}\n", w.pass)).unwrap();
        std::fs::set_permissions(w.pass_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
        w
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn d(&self) -> PathBuf {
        self.root().join("d")
    }
    fn cloud(&self) -> PathBuf {
        self.root().join("cloud")
    }
    fn pass_file(&self) -> PathBuf {
        self.root().join("passphrase")
    }
    fn qube_dir(&self, q: &str) -> PathBuf {
        self.d().join("qubes").join(q)
    }

    fn config(&self) -> String {
        format!(
            r#"
[qube.storage]
features = {{ "cloudstore.role" = "storage", "cloudstore.volumes" = "work photos" }}
[qube.transfer]
netvm = true
features = {{ "cloudstore.role" = "transfer", "cloudstore.remote" = "{}" }}
env = {{ "CLOUDSTORE_TRANSFER_POLL_SECS" = "1" }}
[qube.my-work]
features = {{ "cloudstore.role" = "consumer", "cloudstore.volumes" = "work" }}
[qube.my-photos]
features = {{ "cloudstore.role" = "consumer", "cloudstore.volumes" = "photos" }}
"#,
            self.cloud().display()
        )
    }

    fn up(&self) {
        let cfg = self.root().join("sim.toml");
        std::fs::write(&cfg, self.config()).unwrap();
        let out = Command::new(SIM)
            .args(["up", "--config"])
            .arg(&cfg)
            .arg("--dir")
            .arg(self.d())
            .arg("--cloudstore")
            .arg(self.root().join("bin/cloudstore"))
            .args(["--ready-timeout", "30", "--restart-delay-ms", "200"])
            .output()
            .unwrap();
        let so = text(&out.stdout);
        assert!(out.status.success(), "{so}{}", text(&out.stderr));
        for q in ["storage", "transfer", "my-work", "my-photos"] {
            assert!(so.contains(&format!("{q}: up, cloudstore")), "{so}");
        }
    }

    fn sim(&self, args: &[&str]) -> Output {
        Command::new(SIM)
            .arg(args[0])
            .arg("--dir")
            .arg(self.d())
            .args(&args[1..])
            .output()
            .unwrap()
    }

    fn sim_ok(&self, args: &[&str]) -> String {
        let out = self.sim(args);
        assert!(
            out.status.success(),
            "qubes-sim {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn exec(&self, user: &str, qube: &str, cmd: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(SIM)
            .args(["exec", "--user", user, "--dir"])
            .arg(self.d())
            .arg(qube)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that does not read its input may exit before we write it.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    }

    /// `sh -c SCRIPT` in QUBE as its user, with INPUT on stdin; must succeed.
    fn sh_in(&self, qube: &str, script: &str, input: &[u8]) -> Vec<u8> {
        let out = self.exec("user", qube, &["sh", "-c", script], input);
        assert!(
            out.status.success(),
            "in {qube}: {script}: exit {:?}: {}",
            out.status.code(),
            text(&out.stderr)
        );
        out.stdout
    }

    fn sh(&self, qube: &str, script: &str) -> String {
        text(&self.sh_in(qube, script, b""))
    }

    /// `cloudstore init` and `unlock` of the work volume in my-work, with the passphrase.
    fn create_work_volume(&self, keyfile: bool) {
        let unlock = if keyfile { "--keyfile " } else { "" };
        let out = self.sh_in(
            "my-work",
            &format!(
                "cat > /tmp/pass && cloudstore init work --scryptn {SCRYPT_LOG_N} --passphrase-file /tmp/pass \
                 && cloudstore unlock work {unlock}--passphrase-file /tmp/pass && rm /tmp/pass"
            ),
            format!("{}\n", self.pass).as_bytes(),
        );
        assert!(
            text(&out).contains("unlocked work at /home/user/CloudStore/work"),
            "{}",
            text(&out)
        );
    }

    /// Mounts the cloud copy of the work volume with real gocryptfs and the passphrase
    /// alone, as another machine would.
    fn cloud_view(&self, writable: bool) -> GocryptfsMount {
        let mnt = self
            .root()
            .join(if writable { "laptop-rw" } else { "laptop-ro" });
        std::fs::create_dir_all(&mnt).unwrap();
        let mut c = Command::new("gocryptfs");
        c.arg("-q");
        if !writable {
            c.arg("-ro");
        }
        let out = c
            .arg("-passfile")
            .arg(self.pass_file())
            .arg(self.cloud().join("work"))
            .arg(&mnt)
            .output()
            .expect("running gocryptfs (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "gocryptfs could not open the cloud copy {}: {}{}",
            self.cloud().join("work").display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        GocryptfsMount {
            mnt,
            cloud: writable.then(|| self.cloud()),
        }
    }

    /// Waits until the cloud copy, opened with gocryptfs, holds each (path, bytes).
    fn wait_in_cloud(&self, what: &str, files: &[(String, Vec<u8>)]) {
        wait_for(what, || {
            if !self.cloud().join("work/gocryptfs.conf").exists() {
                return Err("no gocryptfs.conf in the cloud yet".into());
            }
            let view = self.cloud_view(false);
            for (p, want) in files {
                match std::fs::read(view.path(p)) {
                    Ok(got) if &got == want => {}
                    Ok(got) => {
                        return Err(format!(
                            "{p}: {} bytes, not the {} written",
                            got.len(),
                            want.len()
                        ))
                    }
                    Err(e) => return Err(format!("{p}: {e}")),
                }
            }
            Ok(())
        })
    }

    /// Number of lines "ready again" for QUBE in dom0's log: agent restarts seen so far.
    fn restarts(&self, qube: &str) -> usize {
        let log = std::fs::read_to_string(self.d().join("dom0/dom0.log")).unwrap_or_default();
        let needle = format!("] {qube}: cloudstore-");
        log.lines()
            .filter(|l| l.contains(&needle) && l.ends_with("ready again"))
            .count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Never leave qubes or mounts behind after a failed assertion.
        for m in ["laptop-rw", "laptop-ro"] {
            let _ = Command::new("fusermount3")
                .args(["-u", "-q"])
                .arg(self.root().join(m))
                .status();
        }
        let _ = self.sim(&["down"]);
    }
}

/// A gocryptfs mount of the cloud copy; a writable one gives what it wrote to the cloud
/// folder's owner when unmounted, as everything in an account at a provider belongs to
/// that account (gocryptfs runs as root here, the transfer agent as its sandbox user).
struct GocryptfsMount {
    mnt: PathBuf,
    cloud: Option<PathBuf>,
}

impl GocryptfsMount {
    fn path(&self, p: &str) -> PathBuf {
        self.mnt.join(p)
    }
}

impl Drop for GocryptfsMount {
    fn drop(&mut self) {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(
            st.success() || std::thread::panicking(),
            "unmounting {}",
            self.mnt.display()
        );
        if let Some(cloud) = &self.cloud {
            give_to_owner_of(cloud);
        }
    }
}

/// Gives everything under the cloud folder to the folder's owner; files the transfer agent
/// renames or removes meanwhile are skipped.
fn give_to_owner_of(cloud: &Path) {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, uid: u32, gid: u32) {
        let m = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("stat {}: {e}", p.display()),
        };
        if m.uid() != uid || m.gid() != gid {
            match std::os::unix::fs::lchown(p, Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => panic!("chown {}: {e}", p.display()),
            }
        }
        if m.is_dir() {
            let Ok(rd) = std::fs::read_dir(p) else {
                return;
            };
            for e in rd.flatten() {
                walk(&e.path(), uid, gid);
            }
        }
    }
    let m = std::fs::metadata(cloud).unwrap();
    walk(cloud, m.uid(), m.gid());
}

/// Every place under ROOTS where a needle occurs, in a name or in a regular file's bytes.
fn find_plaintext(roots: &[PathBuf], needles: &[(String, Vec<u8>)]) -> Vec<String> {
    fn walk(p: &Path, needles: &[(String, Vec<u8>)], hits: &mut Vec<String>, files: &mut usize) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return; // gone meanwhile (a transfer's partial file)
        };
        let name = p
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default();
        for (label, n) in needles {
            if contains(&name, n) {
                hits.push(format!("{label} in the name {}", p.display()));
            }
        }
        if m.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .unwrap_or_else(|e| panic!("listing {}: {e}", p.display()))
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, needles, hits, files);
            }
        } else if m.is_file() {
            *files += 1;
            let bytes = match std::fs::read(p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => panic!("reading {}: {e}", p.display()),
            };
            for (label, n) in needles {
                if contains(&bytes, n) {
                    hits.push(format!("{label} in the bytes of {}", p.display()));
                }
            }
        }
    }
    let mut hits = Vec::new();
    for r in roots {
        let mut files = 0;
        walk(r, needles, &mut hits, &mut files);
        assert!(files > 0, "nothing to search in {}", r.display());
    }
    hits
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The protocol's client hello (docs/protocol.md): magic, versions 1..1, role consumer.
fn hello() -> Vec<u8> {
    let mut h = b"CSTORE\r\n".to_vec();
    h.extend_from_slice(&[1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    h
}

#[test]
fn walkthrough() {
    let mut w = World::new("walkthrough");
    w.up();
    w.create_work_volume(false);
    let tok = w.tok.clone();

    // Work in my-work: a text file in a folder, and a binary file, through the mount.
    let dir = format!("quarterly-{tok}");
    let plan = format!("{dir}/plan-{tok}.txt");
    let plan_text = format!("Confidential plan {tok}: buy low, sell high.\n").into_bytes();
    let photo = format!("raw-{tok}.bin");
    let photo_bytes = w.rng.bytes(300_000);
    w.sh_in(
        "my-work",
        &format!("mkdir ~/CloudStore/work/{dir} && cat > ~/CloudStore/work/{plan}"),
        &plan_text,
    );
    w.sh_in(
        "my-work",
        &format!("cat > ~/CloudStore/work/{photo}"),
        &photo_bytes,
    );
    let back = w.sh_in("my-work", &format!("cat ~/CloudStore/work/{photo}"), b"");
    assert!(back == photo_bytes, "my-work reads back what it wrote");

    // The cloud: gocryptfs opens it with the passphrase alone; identical bytes.
    w.wait_in_cloud(
        "my-work's files in the cloud, opened with gocryptfs",
        &[
            (plan.clone(), plan_text.clone()),
            (photo.clone(), photo_bytes.clone()),
        ],
    );
    // ... and the cloud folder itself is a gocryptfs volume: config, IVs, encrypted names,
    // each file's ciphertext the size gocryptfs gives it (18-byte header, 32 bytes per
    // 4 KiB block; gocryptfs internal/contentenc/content.go).
    let top: Vec<String> = std::fs::read_dir(w.cloud().join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(top.iter().any(|n| n == "gocryptfs.conf"), "{top:?}");
    assert!(top.iter().any(|n| n == "gocryptfs.diriv"), "{top:?}");
    let enc_size = |n: u64| n + 18 + n.div_ceil(4096) * 32;
    let sizes: Vec<u64> = std::fs::read_dir(w.cloud().join("work"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        sizes.contains(&enc_size(photo_bytes.len() as u64)),
        "a file of the ciphertext size of {photo}: {sizes:?}"
    );

    // Another OS writes into the cloud with gocryptfs; it appears in my-work.
    let laptop_dir = format!("from-laptop-{tok}");
    let laptop_file = format!("{laptop_dir}/notes-{tok}.md");
    let laptop_text = format!("# Written elsewhere {tok}\n").into_bytes();
    {
        let view = w.cloud_view(true);
        std::fs::create_dir(view.path(&laptop_dir)).unwrap();
        std::fs::write(view.path(&laptop_file), &laptop_text).unwrap();
    }
    wait_for(
        "the file written with gocryptfs to appear in my-work",
        || {
            let out = w.exec(
                "user",
                "my-work",
                &["cat", &format!("/home/user/CloudStore/work/{laptop_file}")],
                b"",
            );
            if out.stdout == laptop_text {
                Ok(())
            } else {
                Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
            }
        },
    );

    // my-photos asks storage for the work volume: refused by dom0's policy, nothing of it
    // reaches my-photos.
    for target in ["@default", "storage"] {
        let out = w.exec(
            "user",
            "my-photos",
            &["qrexec-client-vm", target, "cloudstore.Volume+work"],
            &hello(),
        );
        assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{:?}", out.stdout);
        assert!(
            text(&out.stderr).contains("Request refused"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = w.exec(
        "user",
        "my-photos",
        &[
            "sh",
            "-c",
            "echo x > /tmp/p; cloudstore unlock work --passphrase-file /tmp/p",
        ],
        b"",
    );
    assert!(!out.status.success(), "my-photos unlocked work");
    // Searched as root inside my-photos, everything it can see: no trace of work's files
    // (while the same search does find my-photos' own note).
    let d = w.d().display().to_string();
    let search = |marker: &str| {
        w.exec(
            "root",
            "my-photos",
            &[
                "grep", "-r", "-l", "-s", "-F", "-e", marker, "/home", "/tmp", "/var/tmp", "/root",
                &d,
            ],
            b"",
        )
    };
    let own: String = tok.chars().rev().collect();
    w.sh_in(
        "my-photos",
        "cat > ~/own-note",
        format!("own {own}\n").as_bytes(),
    );
    let out = search(&own);
    assert!(
        text(&out.stdout).starts_with("/home/user/own-note\n"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = search(&tok);
    assert!(
        out.stdout.is_empty() && out.status.code() != Some(0),
        "my-photos sees work's plaintext: {}",
        text(&out.stdout)
    );
    let log = std::fs::read_to_string(w.d().join("dom0/dom0.log")).unwrap();
    assert!(
        log.contains("cloudstore.Volume+work: my-photos -> @default: denied"),
        "{log}"
    );

    // In my-work the mount came from the consumer's mount helper, as under systemd.
    let log = std::fs::read_to_string(w.qube_dir("my-work").join("log/agent.log")).unwrap();
    assert!(
        log.contains("mounts made by the helper on")
            && log.contains("mounted for the consumer agent volume=\"work\""),
        "{log}"
    );

    // The configuration's `env` reaches the transfer agent (its unit's Environment=), not
    // the qube's other processes.
    let pid = std::fs::read_to_string(w.qube_dir("transfer").join("run/agent.pid")).unwrap();
    let environ = w.exec(
        "root",
        "transfer",
        &["cat", &format!("/proc/{}/environ", pid.trim())],
        b"",
    );
    assert!(environ.status.success(), "{}", text(&environ.stderr));
    assert!(
        environ
            .stdout
            .split(|b| *b == 0)
            .any(|v| v == b"CLOUDSTORE_TRANSFER_POLL_SECS=1"),
        "{}",
        text(&environ.stdout)
    );
    let env = w.sh("transfer", "env");
    assert!(!env.contains("CLOUDSTORE_TRANSFER_POLL_SECS"), "{env}");

    // The transfer qube's status, as the qube's own user reads it.
    let out = w.exec("user", "transfer", &["cloudstore", "status"], b"");
    let st = text(&out.stdout);
    assert!(out.status.success(), "{st}{}", text(&out.stderr));
    assert!(st.contains("role:       transfer"), "{st}");
    assert!(st.contains("volume work:"), "{st}");
    assert!(st.contains(&w.cloud().display().to_string()), "{st}");

    // Conflicting edits: the same file changed in my-work and in the cloud while the
    // transfer qube is down. Both versions must be visible in my-work afterwards, the
    // cloud's under a conflict name.
    assert_eq!(w.sim_ok(&["shutdown", "transfer"]), "transfer: stopped\n");
    let mine = format!("my-work's edit {tok}\n").into_bytes();
    let theirs = format!("the cloud's edit {tok}\n").into_bytes();
    w.sh_in(
        "my-work",
        &format!("dd of=$HOME/CloudStore/work/{plan} conv=fsync status=none"),
        &mine,
    );
    {
        let view = w.cloud_view(true);
        std::fs::write(view.path(&plan), &theirs).unwrap();
    }
    assert_eq!(
        w.sim_ok(&["start", "transfer"]),
        "transfer: ready transfer\n"
    );
    let conflict = wait_for("both versions of the edited file in my-work", || {
        let ls = w.sh("my-work", &format!("ls -1 ~/CloudStore/work/{dir}"));
        let names: Vec<&str> = ls.lines().collect();
        let c = names
            .iter()
            .find(|n| n.starts_with(&format!("plan-{tok} (conflict ")));
        match c {
            Some(c) if names.contains(&format!("plan-{tok}.txt").as_str()) => {
                Ok(format!("{dir}/{c}"))
            }
            _ => Err(ls),
        }
    });
    // NAME (conflict YYYY-MM-DD HHMM).EXT
    let stamp = conflict
        .strip_prefix(&format!("{dir}/plan-{tok} (conflict "))
        .and_then(|s| s.strip_suffix(").txt"))
        .unwrap_or_else(|| panic!("conflict name {conflict:?}"));
    assert!(
        stamp.len() == 15
            && stamp
                .chars()
                .enumerate()
                .all(|(i, c)| if [4, 7].contains(&i) {
                    c == '-'
                } else if i == 10 {
                    c == ' '
                } else {
                    c.is_ascii_digit()
                }),
        "{conflict:?}"
    );
    let cat = |p: &str| {
        w.sh_in(
            "my-work",
            &format!("cat \"$HOME/CloudStore/work/{p}\""),
            b"",
        )
    };
    assert_eq!(text(&cat(&plan)), text(&mine), "my-work keeps its own edit");
    assert_eq!(
        text(&cat(&conflict)),
        text(&theirs),
        "the cloud's edit, beside it"
    );
    // ... and the cloud ends with both as well.
    w.wait_in_cloud(
        "both versions in the cloud",
        &[
            (plan.clone(), mine.clone()),
            (conflict.clone(), theirs.clone()),
        ],
    );

    // No plaintext byte or name anywhere in storage, transfer, the cloud, dom0, or
    // my-photos: the marker, every name, every content, slices of the binary file, the
    // passphrase.
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("the run's marker".into(), tok.clone().into_bytes()),
        ("the passphrase".into(), w.pass.clone().into_bytes()),
    ];
    for n in [&dir, &plan, &photo, &laptop_dir, &laptop_file] {
        let base = n.rsplit('/').next().unwrap();
        needles.push((format!("the name {base:?}"), base.as_bytes().to_vec()));
    }
    for (label, c) in [
        ("plan", &plan_text),
        ("laptop note", &laptop_text),
        ("my-work's edit", &mine),
        ("the cloud's edit", &theirs),
    ] {
        needles.push((format!("the content of {label}"), c.clone()));
    }
    for off in [0, 4096, 150_001, 300_000 - 48] {
        needles.push((
            format!("bytes {off}.. of {photo}"),
            photo_bytes[off..off + 48].to_vec(),
        ));
    }
    let roots = [
        w.qube_dir("storage"),
        w.qube_dir("transfer"),
        w.cloud(),
        w.d().join("dom0"),
        w.qube_dir("my-photos"),
    ];
    let hits = find_plaintext(&roots, &needles);
    assert!(hits.is_empty(), "plaintext found: {hits:#?}");
    // The search does find plaintext where there is some (the test's passphrase file).
    let hits = find_plaintext(&[w.pass_file()], &needles);
    assert!(!hits.is_empty(), "the search cannot find plaintext");

    let out = w.sim(&["down"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The size of the writer's file number `i`, as a shell arithmetic expression: mostly a
/// few KiB, every 40th 1.5 MB (long enough that a kill may come in the middle of its
/// upload).
const LOAD_SIZE: &str = "(i % 40 == 0 ? 1500000 : (i % 7) * 3000 + 100)";

/// The writer that runs in my-work: creates load/f1, f2, … with content from
/// [`load_content`], each through `dd conv=fsync`; the number of each file whose fsync
/// succeeded goes to /tmp/acked. Failures (while a mount is being replaced) are counted,
/// not fatal. Stops when /tmp/stop exists, then writes /tmp/writer.done.
const WRITER: &str = r#"
tok=$1
size=$2
i=0
while [ ! -e /tmp/stop ]; do
    i=$((i+1))
    if yes "file $i $tok" 2>/dev/null | head -c $(( $size )) |
        dd of="$HOME/CloudStore/work/load/f$i" conv=fsync status=none 2>/dev/null; then
        echo $i >> /tmp/acked
    else
        echo $i >> /tmp/failed
        sleep 0.05
    fi
done
touch /tmp/writer.done
"#;

fn load_content(i: u64, tok: &str) -> Vec<u8> {
    let line = format!("file {i} {tok}\n");
    let len = if i % 40 == 0 {
        1_500_000
    } else {
        ((i % 7) * 3000 + 100) as usize
    };
    line.bytes().cycle().take(len).collect()
}

#[test]
fn nothing_is_lost() {
    let mut w = World::new("nothing_is_lost");
    w.up();
    // With a keyfile, as a user who wants the volume open at every start: a restarted
    // consumer agent mounts it again by itself.
    w.create_work_volume(true);
    let tok = w.tok.clone();
    w.sh("my-work", "mkdir ~/CloudStore/work/load");
    w.sh_in(
        "my-work",
        &format!("cat > /tmp/writer.sh && : > /tmp/acked && : > /tmp/failed || exit 1; setsid sh /tmp/writer.sh {tok} '{LOAD_SIZE}' </dev/null >/dev/null 2>&1 &"),
        WRITER.as_bytes(),
    );
    let acked = |w: &World| -> Vec<u64> {
        w.sh("my-work", "cat /tmp/acked")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    // Until the writer has counted N more files than now: the system works again.
    let progress = |w: &World, what: &str| {
        let from = acked(w).len();
        wait_for(&format!("the writer to go on after {what}"), || {
            let n = acked(w).len();
            if n >= from + 10 {
                Ok(())
            } else {
                Err(format!("{n} files counted, {from} before"))
            }
        });
    };
    progress(&w, "the start");

    // Clean shutdowns mid-work: storage alone, then storage and transfer together.
    let pause = |w: &mut World| std::thread::sleep(Duration::from_millis(200 + w.rng.below(800)));
    w.sim_ok(&["shutdown", "storage"]);
    pause(&mut w);
    w.sim_ok(&["start", "storage"]);
    progress(&w, "storage's restart");
    w.sim_ok(&["shutdown", "transfer"]);
    w.sim_ok(&["shutdown", "storage"]);
    pause(&mut w);
    w.sim_ok(&["start", "storage"]);
    w.sim_ok(&["start", "transfer"]);
    progress(&w, "storage's and transfer's restart");

    // kill -9 of each role's agent, twice, in random order at random moments.
    let mut kills: Vec<&str> = ["storage", "transfer", "my-work"].repeat(2);
    for i in (1..kills.len()).rev() {
        kills.swap(i, w.rng.below(i as u64 + 1) as usize);
    }
    // Meanwhile another machine adds a file to the cloud before each kill.
    let mut from_cloud: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, q) in kills.into_iter().enumerate() {
        let name = format!("from-cloud/c{k}.txt");
        let content = format!("cloud file {k} {tok}\n")
            .repeat(k * 500 + 1)
            .into_bytes();
        {
            let view = w.cloud_view(true);
            std::fs::create_dir_all(view.path("from-cloud")).unwrap();
            std::fs::write(view.path(&name), &content).unwrap();
        }
        from_cloud.push((name, content));
        std::thread::sleep(Duration::from_millis(w.rng.below(1500)));
        let before = w.restarts(q);
        let pid = std::fs::read_to_string(w.qube_dir(q).join("run/agent.pid")).unwrap();
        let out = w.exec("root", q, &["kill", "-9", pid.trim()], b"");
        assert!(
            out.status.success(),
            "kill -9 in {q}: {}",
            text(&out.stderr)
        );
        wait_for(&format!("{q}'s agent to come back"), || {
            if w.restarts(q) > before {
                Ok(())
            } else {
                Err(format!("{} restarts", w.restarts(q)))
            }
        });
        progress(&w, &format!("kill -9 of {q}'s agent"));
    }

    w.sh("my-work", "touch /tmp/stop");
    wait_for("the writer to stop", || {
        let out = w.exec("user", "my-work", &["test", "-e", "/tmp/writer.done"], b"");
        if out.status.success() {
            Ok(())
        } else {
            Err("running".into())
        }
    });
    let done = acked(&w);
    let failed = w.sh("my-work", "cat /tmp/failed").lines().count();
    eprintln!(
        "nothing_is_lost: {} files written and synced, {failed} attempts failed during restarts",
        done.len()
    );
    assert!(done.len() >= 90, "{done:?}");

    // Every counted file is intact in my-work (checked inside the qube) ...
    let bad = w.sh(
        "my-work",
        &format!(
            "cd ~/CloudStore/work/load && for i in $(cat /tmp/acked); do \
               yes \"file $i {tok}\" 2>/dev/null | head -c $(( {LOAD_SIZE} )) | cmp -s - f$i || echo \"f$i\"; \
             done"
        ),
    );
    assert!(bad.is_empty(), "files lost or damaged in my-work: {bad}");
    // ... and in the cloud.
    let mut files: Vec<(String, Vec<u8>)> = done
        .iter()
        .map(|i| (format!("load/f{i}"), load_content(*i, &tok)))
        .collect();
    w.wait_in_cloud("every counted file in the cloud", &files);
    // The files added to the cloud meanwhile reached my-work, and are still in the cloud.
    wait_for("the cloud's files in my-work", || {
        for (name, content) in &from_cloud {
            let out = w.exec(
                "user",
                "my-work",
                &["cat", &format!("/home/user/CloudStore/work/{name}")],
                b"",
            );
            if &out.stdout != content {
                return Err(format!("{name}: {}", text(&out.stderr)));
            }
        }
        Ok(())
    });
    files.extend(from_cloud);
    w.wait_in_cloud("all files still in the cloud", &files);

    let needles = vec![("the run's marker".to_owned(), tok.clone().into_bytes())];
    let roots = [
        w.qube_dir("storage"),
        w.qube_dir("transfer"),
        w.cloud(),
        w.d().join("dom0"),
    ];
    let hits = find_plaintext(&roots, &needles);
    assert!(hits.is_empty(), "plaintext found: {hits:#?}");
}
