//! The transfer role's benchmark, run by `scripts/bench.sh` (`--only transfer`) or on its
//! own (`cargo bench -p cloudstore --bench transfer_sync [-- --quick]`, as root). Not a
//! test: it prints figures, it asserts only that every run ended with the right bytes in
//! the cloud.
//!
//! Everything is real: the release `cloudstore` binary as the storage agent (confined,
//! behind its qrexec socket services) and as the transfer agent (confined, driving its own
//! `rclone rcd`), real rclone for the cloud and for the plain copies it is compared with.
//! The transfer agent reaches storage through this very binary started as its qrexec
//! client (`<exe> @default cloudstore.Sync+VOL`), which connects to storage's sync socket
//! the way qrexec-agent does and pumps the bytes.
//!
//! 1. Initial upload: a ciphertext tree shaped like gocryptfs's (`gocryptfs.conf`, a
//!    `gocryptfs.diriv` per directory, base64url names, sizes of 18-byte header plus 32
//!    bytes per 4 KiB block, mixed small/medium/large files) is written into the storage
//!    volume while storage is stopped; then, against a local-folder remote and against
//!    `rclone serve webdav` on 127.0.0.1, the transfer agent's first sync (agent start to
//!    the pass logged complete) is timed against plain `rclone copy` of the same tree to
//!    the same kind of remote, both with rclone's default 4 transfers.
//! 2. One change: for trees of 1 000 and 100 000 small files (10 000 with `--quick`), once
//!    the first sync has converged, one file is replaced through the consumer's service
//!    (`cloudstore.Volume`), and the time until the cloud holds the new bytes is measured,
//!    several times. For scale, plain `rclone copy` of the whole tree after one change.
//!
//! TMPDIR decides where the storage data and the "clouds" go (scripts/bench.sh puts them on
//! the disk it measures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudstore_protocol::{Client, Expect, Request, Response};
use qubes_sim::qubesdb::QubesDbDaemon;
use support::*;

/// The variable that tells this binary, started as the transfer agent's qrexec client,
/// where storage's sync socket is.
const SOCKET_ENV: &str = "TRANSFER_BENCH_SYNC_SOCKET";

/// rclone's default `--transfers`, and the agent's default worker count: both sides move
/// the same number of files at once.
const TRANSFERS: usize = 4;

/// Changes measured per tree: enough for a median on a shared machine, few enough that the
/// run stays short.
const CHANGES: usize = 7;

/// Files per directory in the one-change trees (a typical photo or source folder).
const FILES_PER_DIR: usize = 1000;

// ------------------------------------------------------------ qrexec client stand-in

// ------------------------------------------------------------ the ciphertext tree

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).expect("random bytes");
    b
}

/// A gocryptfs-style name: base64url of 16 bytes (one AES block of EME output).
fn cipher_name() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random(16))
}

/// gocryptfs's ciphertext size for `plain` bytes: an 18-byte header, then 4096-byte blocks
/// each carrying a 16-byte nonce and a 16-byte tag (gocryptfs internal/contentenc).
fn cipher_size(plain: u64) -> u64 {
    if plain == 0 {
        0
    } else {
        18 + plain + 32 * plain.div_ceil(4096)
    }
}

/// A small deterministic sequence (for sizes), so every run builds the same shape.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Default)]
struct TreeInfo {
    /// Regular files, gocryptfs.conf and the diriv files included.
    files: usize,
    bytes: u64,
    /// Relative paths of the data files (the ones a change may pick).
    data: Vec<String>,
}

/// Writes a gocryptfs-shaped tree of `n` data files into `root` (which exists), `per_dir`
/// to a directory; `size(i)` gives the plaintext size of file `i`.
fn build_tree(
    root: &Path,
    n: usize,
    per_dir: usize,
    mut size: impl FnMut(usize) -> u64,
) -> TreeInfo {
    let mut info = TreeInfo::default();
    let put = |p: &Path, content: &[u8], info: &mut TreeInfo| {
        fs::write(p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        info.files += 1;
        info.bytes += content.len() as u64;
    };
    put(&root.join("gocryptfs.conf"), &random(600), &mut info);
    put(&root.join("gocryptfs.diriv"), &random(16), &mut info);
    // One pool of random bytes, sliced at varying offsets: ciphertext is incompressible,
    // and drawing 100 000 small buffers one by one would dominate the set-up.
    let pool = random(16 << 20);
    let mut off = 0usize;
    let mut dir = String::new();
    for i in 0..n {
        if i % per_dir == 0 {
            dir = cipher_name();
            fs::create_dir(root.join(&dir)).unwrap();
            put(
                &root.join(&dir).join("gocryptfs.diriv"),
                &random(16),
                &mut info,
            );
        }
        let len = cipher_size(size(i)) as usize;
        let rel = format!("{dir}/{}", cipher_name());
        let mut f = fs::File::create(root.join(&rel)).unwrap();
        let mut left = len;
        while left > 0 {
            if off >= pool.len() {
                off = 0;
            }
            let k = left.min(pool.len() - off);
            f.write_all(&pool[off..off + k]).unwrap();
            off = (off + k + 4099) % pool.len();
            left -= k;
        }
        info.files += 1;
        info.bytes += len as u64;
        info.data.push(rel);
    }
    info
}

/// Gives everything beneath `root` to `root`'s owner: storage runs as its sandbox user and
/// must be able to replace the files we wrote as root.
fn chown_tree(root: &Path) {
    let m = fs::metadata(root).unwrap();
    fn walk(p: &Path, uid: u32, gid: u32) {
        for e in fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&path, uid, gid);
            }
        }
    }
    walk(root, m.uid(), m.gid());
}

/// (relative path, size) of every regular file beneath `root`, sorted.
fn listing(root: &Path) -> Vec<(String, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Panics unless `cloud` holds exactly the files of `src` with the same bytes.
fn verify_same(src: &Path, cloud: &Path, what: &str) {
    let a = listing(src);
    let b = listing(cloud);
    if a != b {
        let missing = a
            .iter()
            .filter(|x| !b.contains(x))
            .take(5)
            .collect::<Vec<_>>();
        let extra = b
            .iter()
            .filter(|x| !a.contains(x))
            .take(5)
            .collect::<Vec<_>>();
        panic!(
            "{what}: the cloud differs from the tree ({} vs {} files); missing e.g. {missing:?}, unexpected e.g. {extra:?}",
            a.len(),
            b.len()
        );
    }
    for (rel, _) in &a {
        let x = fs::read(src.join(rel)).unwrap();
        let y = fs::read(cloud.join(rel)).unwrap();
        assert!(x == y, "{what}: {rel} differs in the cloud");
    }
}

// ------------------------------------------------------------ the clouds

/// Where the data goes: a local folder, or a folder served by `rclone serve webdav`.
enum Cloud {
    Local {
        _dir: tempfile::TempDir,
        root: PathBuf,
    },
    Webdav {
        _dir: tempfile::TempDir,
        root: PathBuf,
        server: Child,
        _conf_dir: tempfile::TempDir,
        conf: PathBuf,
    },
}

impl Cloud {
    fn local() -> Cloud {
        let d = shared_tempdir();
        let root = d.path().join("cloud");
        fs::create_dir(&root).unwrap();
        Cloud::Local { _dir: d, root }
    }

    fn webdav() -> Cloud {
        let d = shared_tempdir();
        let root = d.path().join("served");
        fs::create_dir_all(root.join("CloudStore")).unwrap();
        let port = free_port();
        let server = Command::new("rclone")
            .args(["serve", "webdav", "--config", "/dev/null", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rclone serve webdav");
        wait_for_port("rclone serve webdav", port);
        let (conf_dir, conf) = webdav_conf(port);
        Cloud::Webdav {
            _dir: d,
            root,
            server,
            _conf_dir: conf_dir,
            conf,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Cloud::Local { .. } => "local folder",
            Cloud::Webdav { .. } => "webdav 127.0.0.1",
        }
    }

    /// The transfer agent's `remote` setting; each volume goes to `<remote>/<volume>`.
    fn remote(&self) -> String {
        match self {
            Cloud::Local { root, .. } => root.to_str().unwrap().to_owned(),
            Cloud::Webdav { .. } => "dav:CloudStore".to_owned(),
        }
    }

    /// The folder on this machine where the volume's objects end up.
    fn volume_dir(&self) -> PathBuf {
        match self {
            Cloud::Local { root, .. } => root.join("work"),
            Cloud::Webdav { root, .. } => root.join("CloudStore").join("work"),
        }
    }

    fn conf(&self) -> Option<&Path> {
        match self {
            Cloud::Local { .. } => None,
            Cloud::Webdav { conf, .. } => Some(conf),
        }
    }

    /// `rclone copy SRC <remote>/work` with rclone's defaults; returns its wall time and
    /// the CPU time it used.
    fn rclone_copy(&self, src: &Path) -> (Duration, Duration) {
        let mut c = Command::new("rclone");
        c.arg("copy")
            .arg(format!("--transfers={TRANSFERS}"))
            .arg("--config")
            .arg(self.conf().unwrap_or(Path::new("/dev/null")))
            .arg(src)
            .arg(format!("{}/work", self.remote()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let out = c.output().expect("running rclone copy");
        let t = t0.elapsed();
        assert!(
            out.status.success(),
            "rclone copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (t, children_cpu().saturating_sub(cpu0))
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Cloud::Webdav { server, .. } = self {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

// ------------------------------------------------------------ the transfer agent

/// The transfer qube: qubesdb stand-in, state and runtime directories, the running agent.
struct Transfer {
    child: Child,
    log: LogReader,
    /// Highest peak RSS (KiB) seen of any rclone the agent ran: it replaces rclone when it
    /// grows (roles/transfer/rclone.rs), and a replaced one's peak leaves with it.
    rclone_peak: std::cell::Cell<u64>,
    _db: QubesDbDaemon,
    _dir: tempfile::TempDir,
}

impl Transfer {
    fn start(storage: &StorageAgent, cloud: &Cloud) -> Transfer {
        let dir = shared_tempdir();
        let remote = cloud.remote();
        let db = QubesDbDaemon::start(
            &dir.path().join("qubesdb.sock"),
            [
                ("/cloudstore/role", b"transfer".as_slice()),
                ("/cloudstore/remote", remote.as_bytes()),
            ],
        )
        .unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = notify_socket(&notify_path);
        let mut c = Command::new(BIN);
        c.arg("agent")
            .env("CLOUDSTORE_QUBESDB_SOCKET", db.socket())
            .env("CLOUDSTORE_DATA_DIR", dir.path().join("state"))
            .env("CLOUDSTORE_RUNTIME_DIR", dir.path().join("run"))
            .env("CLOUDSTORE_QREXEC_CLIENT", std::env::current_exe().unwrap())
            .env(SOCKET_ENV, storage.sync_socket())
            // Only the storage push starts a pass while measuring: the cloud poll (a full
            // listing) would otherwise land in some measurements and not others.
            .env("CLOUDSTORE_TRANSFER_POLL_SECS", "86400")
            .env("CLOUDSTORE_TRANSFER_WORKERS", TRANSFERS.to_string())
            .env("CLOUDSTORE_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        without_systemd_env(&mut c);
        if let Some(conf) = cloud.conf() {
            c.env("CLOUDSTORE_RCLONE_CONFIG", conf);
        }
        let mut child = c.spawn().expect("starting the transfer agent");
        let log = LogReader::start(&mut child);
        wait_ready(&notify, "transfer agent", &log);
        Transfer {
            child,
            log,
            rclone_peak: std::cell::Cell::new(0),
            _db: db,
            _dir: dir,
        }
    }

    /// The completed passes so far: (files uploaded, the pass's own time in ms).
    fn passes(&self) -> Vec<(usize, u64)> {
        let field = |line: &str, key: &str| -> Option<u64> {
            let at = line.find(key)? + key.len();
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        self.log
            .text()
            .lines()
            .filter(|l| l.contains("sync pass of work:"))
            .map(|l| {
                (
                    field(l, "UPLOADED=").unwrap_or(0) as usize,
                    field(l, "ELAPSED_MS=").unwrap_or(0),
                )
            })
            .collect()
    }

    /// Waits until the passes logged have uploaded `files` in all; returns the time of the
    /// pass that got there.
    fn wait_uploaded(&self, files: usize, timeout: Duration) -> Duration {
        let end = Instant::now() + timeout;
        loop {
            let p = self.passes();
            if p.iter().map(|x| x.0).sum::<usize>() >= files {
                return Duration::from_millis(p.last().unwrap().1);
            }
            let log = self.log.text();
            assert!(
                Instant::now() < end,
                "the transfer agent did not upload {files} files within {timeout:?}; log tail:\n{}",
                tail(&log)
            );
            self.sample_rclone_peak();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The agent's child processes: (pid, command name).
    fn children(&self) -> Vec<(u32, String)> {
        let pid = self.child.id();
        fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .map(|c| {
                let comm = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                (c, comm.trim().to_owned())
            })
            .collect()
    }

    fn sample_rclone_peak(&self) {
        for (c, comm) in self.children() {
            if comm == "rclone" {
                self.rclone_peak.set(self.rclone_peak.get().max(vmhwm(c)));
            }
        }
    }

    /// Peak RSS in KiB of the agent and of its rclone children (the highest of them).
    fn peak_rss(&self) -> (u64, u64) {
        self.sample_rclone_peak();
        (vmhwm(self.child.id()), self.rclone_peak.get())
    }

    /// CPU time so far of the agent, of its rclone, and of its qrexec client stand-ins
    /// (the relay a vchan would be in Qubes).
    fn cpu(&self) -> Cpu {
        let mut c = Cpu {
            agent: proc_cpu(self.child.id()),
            ..Cpu::default()
        };
        for (pid, comm) in self.children() {
            if comm == "rclone" {
                c.rclone += proc_cpu(pid);
            } else {
                c.relay += proc_cpu(pid);
            }
        }
        c
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) by process, for one run.
#[derive(Clone, Copy, Default)]
struct Cpu {
    agent: Duration,
    rclone: Duration,
    relay: Duration,
    storage: Duration,
}

impl Cpu {
    fn total(&self) -> Duration {
        self.agent + self.rclone + self.relay + self.storage
    }
}

/// User + system time of a live process, from /proc/PID/stat (fields 14 and 15).
fn proc_cpu(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are plain numbers.
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / hz)
}

/// User + system time of every waited-for child of this process so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn vmhwm(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A storage agent serving volume `work` whose tree `build` filled while it was stopped.
fn storage_with(build: impl FnOnce(&Path) -> TreeInfo) -> (StorageAgent, TreeInfo) {
    let mut storage = StorageAgent::start("work");
    storage.stop();
    let tree = storage.tree("work");
    let info = build(&tree);
    chown_tree(&tree);
    storage.spawn();
    (storage, info)
}

/// Replaces `path` through the consumer's service, as a consumer saving a file does.
fn replace(c: &Client, path: &str, content: &[u8]) {
    let mut up = c
        .upload(Request::Put {
            path: path.into(),
            expect: Expect::Any,
            mode: None,
            mtime: None,
        })
        .unwrap_or_else(|e| panic!("put {path}: {e}"));
    up.write_all(content).unwrap();
    match up.finish() {
        Ok(Response::Attr(_)) => {}
        other => panic!("put {path}: {other:?}"),
    }
}

fn flush_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ------------------------------------------------------------ the measurements

struct UploadRow {
    cloud: &'static str,
    plain: Duration,
    plain_cpu: Duration,
    agent: Duration,
    pass: Duration,
    agent_cpu: Cpu,
}

/// Part 1: the first sync against plain `rclone copy`, on each kind of cloud.
fn initial_upload(files: usize, reps: usize) -> (TreeInfo, Vec<UploadRow>) {
    let mut sizes = Lcg(7);
    let (storage, info) = storage_with(|tree| {
        build_tree(tree, files, 100, |i| match i % 20 {
            0 => sizes.range(1 << 20, 4 << 20),
            1..=5 => sizes.range(64 << 10, 512 << 10),
            _ => sizes.range(256, 16 << 10),
        })
    });
    let tree = storage.tree("work");
    eprintln!(
        "transfer bench: initial upload of {} files, {:.1} MiB",
        info.files,
        mib(info.bytes)
    );
    let mut rows = Vec::new();
    // Every run's cloud is kept until all are done: on an ext4 without a journal, creating
    // files within seconds of deleting thousands scans past each recently deleted inode
    // (ext4 `recently_deleted`), which took a third of rclone's CPU in a run that followed
    // the deletion of the previous run's cloud, so whichever run came second paid for it.
    let mut done = Vec::new();
    for kind in ["local", "webdav"] {
        let fresh = || {
            if kind == "local" {
                Cloud::local()
            } else {
                Cloud::webdav()
            }
        };
        let mut plain = Vec::new();
        let mut agent = Vec::new();
        let mut pass = Vec::new();
        // CPU of the run with the median wall time would be best; the last run's is close
        // enough to show where the time goes.
        let mut plain_cpu = Duration::ZERO;
        let mut agent_cpu = Cpu::default();
        let mut name = "";
        for rep in 0..reps {
            let cloud = fresh();
            name = cloud.name();
            flush_disks();
            eprintln!("transfer bench: {name}: rclone copy ({}/{reps})", rep + 1);
            let (t, cpu) = cloud.rclone_copy(&tree);
            plain.push(t);
            plain_cpu = cpu;
            verify_same(&tree, &cloud.volume_dir(), "rclone copy");
            done.push(cloud);

            let cloud = fresh();
            flush_disks();
            eprintln!(
                "transfer bench: {name}: transfer agent ({}/{reps})",
                rep + 1
            );
            let storage_cpu = proc_cpu(storage.pid() as u32);
            let t0 = Instant::now();
            let t = Transfer::start(&storage, &cloud);
            // Data files plus every diriv and the conf: all regular files.
            let p = t.wait_uploaded(info.files, Duration::from_secs(1800));
            agent.push(t0.elapsed());
            pass.push(p);
            agent_cpu = t.cpu();
            agent_cpu.storage = proc_cpu(storage.pid() as u32).saturating_sub(storage_cpu);
            drop(t);
            verify_same(&tree, &cloud.volume_dir(), "transfer agent");
            done.push(cloud);
        }
        rows.push(UploadRow {
            cloud: name,
            plain: median(&mut plain),
            plain_cpu,
            agent: median(&mut agent),
            pass: median(&mut pass),
            agent_cpu,
        });
    }
    (info, rows)
}

struct ChangeRow {
    files: usize,
    initial: Duration,
    changes: Vec<Duration>,
    plain_after_change: Duration,
    rss: (u64, u64),
}

/// Part 2: the time one changed file takes to reach the cloud, in a tree of `n` files.
fn one_change(n: usize) -> ChangeRow {
    let mut sizes = Lcg(11);
    let (storage, info) =
        storage_with(|tree| build_tree(tree, n, FILES_PER_DIR, |_| sizes.range(100, 8 << 10)));
    let tree = storage.tree("work");
    let cloud = Cloud::local();
    eprintln!(
        "transfer bench: one change in {} files: first sync",
        thousands(info.files)
    );
    flush_disks();
    let t0 = Instant::now();
    let t = Transfer::start(&storage, &cloud);
    t.wait_uploaded(info.files, Duration::from_secs(3600));
    let initial = t0.elapsed();
    let got = listing(&cloud.volume_dir());
    assert_eq!(
        got,
        listing(&tree),
        "the first sync of {n} files is incomplete"
    );

    let (consumer, _pushes) = storage
        .client("cloudstore.Volume", "work", "work-consumer")
        .expect("connecting as the consumer");
    let mut changes = Vec::new();
    for k in 0..CHANGES {
        let rel = &info.data[(k * 7919 + 13) % info.data.len()];
        let len = fs::metadata(tree.join(rel)).unwrap().len() as usize;
        let new = random(len);
        let before = t.passes().len();
        flush_disks();
        let target = cloud.volume_dir().join(rel);
        let t0 = Instant::now();
        replace(&consumer, rel, &new);
        let end = t0 + Duration::from_secs(60);
        loop {
            if fs::read(&target).is_ok_and(|b| b == new) {
                break;
            }
            assert!(
                Instant::now() < end,
                "change {k} ({rel}) never reached the cloud; log tail:\n{}",
                tail(&t.log.text())
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        changes.push(t0.elapsed());
        // The pass is over (logged) before the next change, so each is measured alone.
        let end = Instant::now() + Duration::from_secs(60);
        while t.passes().len() <= before {
            assert!(Instant::now() < end, "the pass of change {k} never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let rss = t.peak_rss();
    drop(t);

    // For scale: plain `rclone copy` after one more change compares every file.
    let rel = &info.data[info.data.len() / 2];
    let len = fs::metadata(tree.join(rel)).unwrap().len() as usize;
    replace(&consumer, rel, &random(len));
    flush_disks();
    eprintln!(
        "transfer bench: one change in {} files: rclone copy",
        thousands(info.files)
    );
    let (plain_after_change, _) = cloud.rclone_copy(&tree);
    assert_eq!(
        fs::read(cloud.volume_dir().join(rel)).unwrap(),
        fs::read(tree.join(rel)).unwrap()
    );
    ChangeRow {
        files: info.files,
        initial,
        changes,
        plain_after_change,
        rss,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("@default") {
        qrexec_client_stand_in(&args, SOCKET_ENV);
    }
    let mut quick = false;
    for a in &args[1..] {
        match a.as_str() {
            "--quick" => quick = true,
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => {
                eprintln!("transfer_sync: unknown argument {other} (use --quick)");
                std::process::exit(2);
            }
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("transfer_sync: run as root (the agents drop to the cloudstore user)");
        std::process::exit(1);
    }
    let rclone_version = Command::new("rclone")
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| {
            eprintln!("transfer_sync: rclone is missing; run scripts/install-deps.sh");
            std::process::exit(1)
        });
    let (upload_files, reps, trees) = if quick {
        (300, 1, [1_000, 10_000])
    } else {
        (2_000, 2, [1_000, 100_000])
    };

    let (info, rows) = initial_upload(upload_files, reps);
    let changes: Vec<ChangeRow> = trees.iter().map(|&n| one_change(n)).collect();

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "transfer benchmark{}: {rclone_version}, {cpus} CPUs, {TRANSFERS} transfers at once",
        if quick { " (--quick)" } else { "" }
    );
    println!();
    println!(
        "Initial upload: {} files, {:.1} MiB (median of {reps})",
        thousands(info.files),
        mib(info.bytes)
    );
    println!("| cloud | plain rclone copy | transfer agent (start to synced) | its sync pass alone | agent / rclone copy |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let rate = |d: Duration| mib(info.bytes) / d.as_secs_f64();
        println!(
            "| {} | {} ({:.1} MiB/s) | {} ({:.1} MiB/s) | {} | {:.2}× |",
            r.cloud,
            secs(r.plain),
            rate(r.plain),
            secs(r.agent),
            rate(r.agent),
            secs(r.pass),
            r.agent.as_secs_f64() / r.plain.as_secs_f64()
        );
    }
    println!();
    println!("CPU time of the last run of each (seconds, user + system):");
    println!("| cloud | rclone copy | agent run: total | transfer agent | its rclone rcd | qrexec relay | storage agent |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let c = r.agent_cpu;
        let s = |d: Duration| format!("{:.2}", d.as_secs_f64());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.cloud,
            s(r.plain_cpu),
            s(c.total()),
            s(c.agent),
            s(c.rclone),
            s(c.relay),
            s(c.storage)
        );
    }
    println!();
    println!("One changed file, local-folder cloud ({CHANGES} changes per tree):");
    println!("| tree | first sync | one change: median (min–max) | plain rclone copy after one change | peak RSS agent + rclone |");
    println!("|---|---|---|---|---|");
    for c in &changes {
        let mut v = c.changes.clone();
        let med = median(&mut v);
        println!(
            "| {} files | {} | {} ({}–{}) | {} | {:.1} + {:.1} MiB |",
            thousands(c.files),
            secs(c.initial),
            ms(med),
            ms(v[0]),
            ms(*v.last().unwrap()),
            secs(c.plain_after_change),
            c.rss.0 as f64 / 1024.0,
            c.rss.1 as f64 / 1024.0
        );
    }
    let med = |c: &ChangeRow| {
        let mut v = c.changes.clone();
        median(&mut v).as_secs_f64()
    };
    println!();
    println!(
        "one-change time, {} files / {} files: {:.2}×",
        thousands(changes[1].files),
        thousands(changes[0].files),
        med(&changes[1]) / med(&changes[0])
    );
    println!("Goals: initial upload within 1.2× of plain rclone copy; one-change time independent of tree size.");
}
