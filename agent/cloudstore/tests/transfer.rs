//! The transfer role end to end: the real storage agent (confined, behind its qrexec
//! socket), the real `cloudstore agent` in the transfer role, real rclone against the local
//! backend and against `rclone serve webdav` on 127.0.0.1.
//!
//! This test binary is also the qrexec client stand-in the transfer agent runs
//! (`CLOUDSTORE_QREXEC_CLIENT` points at it): started as `<exe> @default SERVICE[+ARG]`, it
//! connects to `TRANSFER_TEST_SYNC_SOCKET` the way qrexec-agent does (descriptor, then the
//! bytes) and pumps stdin/stdout.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudstore_protocol::{Client, Expect, Request, Response};
use qubes_sim::qubesdb::QubesDbDaemon;
use support::*;

// ------------------------------------------------------------ qrexec client stand-in

/// `rclone` for a server the test runs: it dies with the test process, so a failed test
/// leaves no server behind.
fn rclone_server() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("rclone");
    // SAFETY: prctl with integer arguments only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

// ------------------------------------------------------------ the rig

/// The transfer qube: qubesdb stand-in, state and runtime directories, the running agent.
struct Transfer {
    child: Option<Child>,
    log: Option<LogReader>,
    db: QubesDbDaemon,
    dir: tempfile::TempDir,
    sync_socket: PathBuf,
    env: Vec<(String, String)>,
}

impl Transfer {
    fn start(storage: &StorageAgent, remote: &str, env: &[(&str, &str)]) -> Transfer {
        let dir = shared_tempdir();
        let db = QubesDbDaemon::start(
            &dir.path().join("qubesdb.sock"),
            [
                ("/cloudstore/role", b"transfer".as_slice()),
                ("/cloudstore/remote", remote.as_bytes()),
            ],
        )
        .unwrap();
        let mut t = Transfer {
            child: None,
            log: None,
            db,
            dir,
            sync_socket: storage.sync_socket(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        t.spawn();
        t
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CLOUDSTORE_QUBESDB_SOCKET", self.db.socket())
            .env("CLOUDSTORE_DATA_DIR", self.state_dir())
            .env("CLOUDSTORE_RUNTIME_DIR", self.runtime_dir())
            .env("CLOUDSTORE_QREXEC_CLIENT", std::env::current_exe().unwrap())
            .env("TRANSFER_TEST_SYNC_SOCKET", &self.sync_socket)
            .env("CLOUDSTORE_TRANSFER_POLL_SECS", "0.5")
            .env("CLOUDSTORE_LOG", "info");
        without_systemd_env(&mut c);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn spawn(&mut self) {
        let notify_path = self.dir.path().join("notify.sock");
        let notify = notify_socket(&notify_path);
        let mut child = self
            .command(&["agent"])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = LogReader::start(&mut child);
        self.child = Some(child);
        wait_ready(&notify, "transfer agent", &log);
        self.log = Some(log);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        self.log.as_ref().map(LogReader::text).unwrap_or_default()
    }

    fn status(&self) -> String {
        let out = self.command(&["status"]).output().unwrap();
        assert!(
            out.status.success(),
            "cloudstore status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("transfer agent log:\n{}", self.log_text());
        }
    }
}

fn sync_client(storage: &StorageAgent) -> Client {
    storage
        .client("cloudstore.Sync", "work", "transfer")
        .unwrap()
        .0
}

fn put(c: &Client, path: &str, content: &[u8]) {
    if let Some((parent, _)) = path.rsplit_once('/') {
        let mut acc = String::new();
        for comp in parent.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            let _ = c.call(Request::Mkdir {
                path: acc.clone(),
                mode: 0o700,
            });
        }
    }
    let mut up = c
        .upload(Request::Put {
            path: path.into(),
            expect: Expect::Any,
            mode: None,
            mtime: None,
        })
        .unwrap();
    up.write_all(content).unwrap();
    match up.finish().unwrap() {
        Response::Attr(_) => {}
        other => panic!("{other:?}"),
    }
}

fn delete(c: &Client, path: &str) {
    c.call(Request::Delete {
        path: path.into(),
        expect: Expect::Any,
    })
    .unwrap();
}

/// Every regular file beneath `root`, relative path → content.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                if let Ok(b) = fs::read(&p) {
                    out.insert(rel, b);
                }
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn parked_conflicts(storage: &StorageAgent) -> Vec<(String, Vec<u8>)> {
    let c = sync_client(storage);
    let list = match c.call(Request::ListConflicts).unwrap() {
        Response::Versions(v) => v.versions,
        other => panic!("{other:?}"),
    };
    let dir = storage
        .data_dir()
        .join("volumes")
        .join("work")
        .join("conflicts");
    list.into_iter()
        .map(|v| {
            let data = fs::read(dir.join(format!("{:016x}.data", v.id)))
                .or_else(|_| fs::read(dir.join(format!("{}.data", v.id))))
                .unwrap_or_default();
            (v.path, data)
        })
        .collect()
}

#[track_caller]
fn wait_converged(storage: &StorageAgent, cloud: &Path, what: &str) -> BTreeMap<String, Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let s = files(&storage.tree("work"));
        let c = files(cloud);
        if s == c {
            return s;
        }
        if Instant::now() > end {
            let sk: Vec<_> = s.keys().collect();
            let ck: Vec<_> = c.keys().collect();
            panic!("{what}: storage and cloud never converged\nstorage: {sk:?}\ncloud: {ck:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `secs` for `path` to hold exactly `want`.
fn wait_for_content(what: &str, secs: u64, path: &Path, want: &[u8]) {
    wait_for(what, secs, || fs::read(path).ok().as_deref() == Some(want));
}

fn cloud_dir() -> (tempfile::TempDir, PathBuf) {
    let d = shared_tempdir();
    let vol = d.path().join("cloud").join("work");
    fs::create_dir_all(&vol).unwrap();
    (d, vol)
}

fn write_cloud(vol: &Path, rel: &str, content: &[u8]) {
    let p = vol.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

// ------------------------------------------------------------ tests

/// First sync merges; then changes each way, conflicts, renames, delete-vs-edit.
fn two_way_sync() {
    let storage = StorageAgent::start("work");
    let (_cd, cloud) = cloud_dir();
    let remote = cloud.parent().unwrap().to_str().unwrap().to_owned();
    let c = sync_client(&storage);
    put(&c, "gocryptfs.conf", b"conf");
    put(&c, "only-storage", b"from storage");
    put(&c, "dir/deep/s", b"deep storage");
    put(&c, "both-same", b"same bytes");
    put(&c, "both-differ", b"storage side");
    write_cloud(&cloud, "gocryptfs.conf", b"conf");
    write_cloud(&cloud, "only-cloud", b"from the cloud");
    write_cloud(&cloud, "cdir/x", b"cloud deep");
    write_cloud(&cloud, "both-same", b"same bytes");
    write_cloud(&cloud, "both-differ", b"cloud side, longer");

    let t = Transfer::start(&storage, &remote, &[]);
    let got = wait_converged(&storage, &cloud, "first sync");
    assert_eq!(got["only-cloud"], b"from the cloud");
    assert_eq!(got["cdir/x"], b"cloud deep");
    assert_eq!(got["dir/deep/s"], b"deep storage");
    assert_eq!(
        got["both-differ"], b"storage side",
        "storage keeps the name"
    );
    let parked = parked_conflicts(&storage);
    assert_eq!(
        parked,
        vec![("both-differ".to_owned(), b"cloud side, longer".to_vec())],
        "only the differing pair is a conflict, its cloud side parked"
    );

    // Storage → cloud, through the journal and its push.
    put(&c, "only-storage", b"changed in storage");
    wait_for_content(
        "the storage change in the cloud",
        20,
        &cloud.join("only-storage"),
        b"changed in storage",
    );
    // Cloud → storage, through the poll; the file keeps the mode it has in storage (the
    // cloud carries none: a script edited elsewhere stays executable here).
    let in_storage = storage.tree("work").join("only-cloud");
    fs::set_permissions(&in_storage, fs::Permissions::from_mode(0o750)).unwrap();
    write_cloud(&cloud, "only-cloud", b"changed in the cloud");
    wait_for_content(
        "the cloud change in storage",
        20,
        &in_storage,
        b"changed in the cloud",
    );
    assert_eq!(
        fs::metadata(&in_storage).unwrap().permissions().mode() & 0o7777,
        0o750
    );

    // Both sides change while the agent is stopped: both kept.
    support::stop_process(t.pid());
    put(&c, "only-storage", b"storage edit 2");
    write_cloud(&cloud, "only-storage", b"cloud edit 2!");
    // Deleted in the cloud while edited in storage: the edit wins.
    fs::remove_file(cloud.join("dir/deep/s")).unwrap();
    put(&c, "dir/deep/s", b"edited while deleted");
    // Deleted in storage while edited in the cloud: the cloud's edit is parked.
    delete(&c, "cdir/x");
    write_cloud(&cloud, "cdir/x", b"cloud edit of a deleted file");
    // Renames, one on each side.
    c.call(Request::Delete {
        path: "both-same".into(),
        expect: Expect::Any,
    })
    .unwrap();
    put(&c, "renamed-in-storage", b"same bytes");
    fs::rename(cloud.join("only-cloud"), cloud.join("renamed-in-cloud")).unwrap();
    t.signal(nix::sys::signal::Signal::SIGCONT);

    let got = wait_converged(&storage, &cloud, "after the two-sided changes");
    assert_eq!(got["only-storage"], b"storage edit 2");
    assert_eq!(got["dir/deep/s"], b"edited while deleted");
    assert!(!got.contains_key("cdir/x"), "{:?}", got.keys());
    assert!(!got.contains_key("both-same") && !got.contains_key("only-cloud"));
    assert_eq!(got["renamed-in-storage"], b"same bytes");
    assert_eq!(got["renamed-in-cloud"], b"changed in the cloud");
    wait_for("the conflicts parked", 20, || {
        parked_conflicts(&storage).len() == 3
    });
    let parked = parked_conflicts(&storage);
    assert!(
        parked.contains(&("only-storage".into(), b"cloud edit 2!".to_vec())),
        "{parked:?}"
    );
    assert!(parked.contains(&("cdir/x".into(), b"cloud edit of a deleted file".to_vec())));

    let st = t.status();
    assert!(st.contains("volume work:"), "{st}");
    assert!(st.contains("conflicts:    "), "{st}");
    assert!(st.contains("last error:   none"), "{st}");
}

/// A pass deleting more than the limit stops until confirmed.
fn deletion_threshold() {
    let storage = StorageAgent::start("work");
    let (_cd, cloud) = cloud_dir();
    let remote = cloud.parent().unwrap().to_str().unwrap().to_owned();
    let c = sync_client(&storage);
    for i in 0..30 {
        put(&c, &format!("f{i:02}"), format!("file {i}").as_bytes());
    }
    let t = Transfer::start(&storage, &remote, &[]);
    wait_converged(&storage, &cloud, "first sync");
    for i in 0..20 {
        fs::remove_file(cloud.join(format!("f{i:02}"))).unwrap();
    }
    wait_for("the blocked status", 20, || {
        t.status().contains("BLOCKED:      20 deletions")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        files(&storage.tree("work")).len(),
        30,
        "nothing deleted before confirmation"
    );
    let out = t.command(&["sync", "--confirm-deletes"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = wait_converged(&storage, &cloud, "after confirmation");
    assert_eq!(got.len(), 10);
    wait_for("the flag consumed", 10, || {
        !t.state_dir().join("confirm-deletes").exists()
    });
    // The status file is rewritten every second.
    wait_for("the block lifted in the status", 5, || {
        !t.status().contains("BLOCKED")
    });
    // Versions keep what was deleted.
    let v = match c
        .call(Request::ListVersions { path: "f00".into() })
        .unwrap()
    {
        Response::Versions(v) => v.versions,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        v.len(),
        1,
        "the deleted file is kept as a version in storage"
    );
}

/// kill -9 of the agent (and with it rclone) mid-sync: a restart converges, no conflict is
/// made of the repeated work, and no cut upload shows under a real name.
fn agent_killed_mid_sync_resumes() {
    let storage = StorageAgent::start("work");
    let (_cd, cloud) = cloud_dir();
    let remote = cloud.parent().unwrap().to_str().unwrap().to_owned();
    let c = sync_client(&storage);
    let big = vec![7u8; 512 * 1024];
    for i in 0..120 {
        let mut b = big.clone();
        b[0] = i as u8;
        put(&c, &format!("d{}/f{i:03}", i % 4), &b);
    }
    for i in 0..40 {
        write_cloud(&cloud, &format!("down/g{i:02}"), &vec![i as u8; 300 * 1024]);
    }
    let mut t = Transfer::start(&storage, &remote, &[("CLOUDSTORE_RCLONE_FLAGS_TEST", "1")]);
    // Killed at a random moment after each step of progress (the seed is printed).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("kill delays from seed {seed}");
    for round in 0..3 {
        wait_for("some progress", 30, || {
            let n = files(&cloud).len();
            n > 45 + round * 30
        });
        let jitter = (seed >> (round * 8)) % 300;
        std::thread::sleep(Duration::from_millis(u64::from(jitter)));
        t.kill();
        // A cut upload may sit in the partial directory, never under a real name.
        for (p, b) in files(&cloud) {
            if p.starts_with('d') && !p.starts_with("down/") {
                assert_eq!(b.len(), 512 * 1024, "{p} is cut");
            }
        }
        t.spawn();
    }
    let got = wait_converged(&storage, &cloud, "after three kills");
    assert_eq!(got.len(), 160);
    assert!(
        parked_conflicts(&storage).is_empty(),
        "repeated work made conflicts"
    );
}

/// rclone serve webdav as the cloud: slowed down, stopped mid-transfer, back on: converges.
fn webdav_server_stopped_mid_transfer() {
    let storage = StorageAgent::start("work");
    let served = shared_tempdir();
    let cloud = served.path().join("CloudStore").join("work");
    fs::create_dir_all(&cloud).unwrap();
    let port = free_port();
    let serve = |dir: &Path| -> Child {
        let c = rclone_server()
            .args(["serve", "webdav", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--bwlimit", "1M"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port("the webdav server", port);
        c
    };
    let mut server = serve(served.path());
    let (_conf_dir, conf) = webdav_conf(port);
    let c = sync_client(&storage);
    for i in 0..30 {
        put(&c, &format!("f{i:02}"), &vec![i as u8; 256 * 1024]);
    }
    let t = Transfer::start(
        &storage,
        "dav:CloudStore",
        &[("CLOUDSTORE_RCLONE_CONFIG", conf.to_str().unwrap())],
    );
    wait_for("some uploads", 30, || files(&cloud).len() >= 3);
    server.kill().unwrap();
    server.wait().unwrap();
    let t0 = Instant::now();
    loop {
        let s = t.status();
        if s.contains("last error:") && !s.contains("last error:   none") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no error in the status a minute after the server stopped:\n{s}\nagent log:\n{}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut server = serve(served.path());
    let got = wait_converged(&storage, &cloud, "after the server came back");
    assert_eq!(got.len(), 30);
    for (p, b) in &got {
        assert_eq!(b.len(), 256 * 1024, "{p}");
    }
    // And back down: a cloud-side change arrives over webdav too.
    // The trees can match before the agent has recorded them (an upload cut by the server's
    // death may have landed; without a record, a change now would be a both-sides conflict):
    // wait for a pass without errors.
    wait_for("a clean pass", 30, || {
        t.status().contains("last error:   none")
    });
    // Through the server, as a cloud client would: `rclone serve` caches its listing, so a
    // write behind its back would be served with the old size.
    let mut rcat = Command::new("rclone")
        .args(["rcat", "dav:CloudStore/work/f00", "--config"])
        .arg(&conf)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    rcat.stdin
        .take()
        .unwrap()
        .write_all(b"edited on the server")
        .unwrap();
    assert!(rcat.wait().unwrap().success(), "rclone rcat to the server");
    wait_for_content(
        "the webdav change in storage",
        30,
        &storage.tree("work").join("f00"),
        b"edited on the server",
    );
    // Uploads cut by the server's death may sit in the partial directory, never under a
    // real name; the next start of the agent clears them.
    drop(t);
    let partial = served.path().join("CloudStore").join(".cloudstore-partial");
    let t = Transfer::start(
        &storage,
        "dav:CloudStore",
        &[("CLOUDSTORE_RCLONE_CONFIG", conf.to_str().unwrap())],
    );
    wait_for("the partial directory cleared", 20, || {
        files(&partial).is_empty()
    });
    drop(t);
    server.kill().unwrap();
    let _ = server.wait();
}

/// Directories new to the cloud are filled in the partial area and moved into place whole:
/// one MOVE per directory on webdav, where moving each file costs a MOVE per file (and the
/// requests around it). Counted in the server's own request log.
fn new_directories_move_into_place_whole() {
    let storage = StorageAgent::start("work");
    let served = shared_tempdir();
    let cloud = served.path().join("CloudStore").join("work");
    fs::create_dir_all(&cloud).unwrap();
    let port = free_port();
    let log_path = served.path().join("server.log");
    let mut server = rclone_server()
        .args(["serve", "webdav", "-v", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(served.path())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for_port("the webdav server", port);
    let (_conf_dir, conf) = webdav_conf(port);
    let c = sync_client(&storage);
    // Nested new directories (the deepest may finish first and must wait for its parent),
    // a large file among small ones, and an empty directory.
    let dirs = ["a", "a/b", "a/b/c", "d"];
    for (k, d) in dirs.iter().enumerate() {
        for i in 0..6 {
            put(&c, &format!("{d}/f{i}"), format!("{d} {i}").as_bytes());
        }
        put(&c, &format!("{d}/big"), &vec![k as u8; (2 << 20) + k]);
    }
    c.call(Request::Mkdir {
        path: "a/empty".into(),
        mode: 0o700,
    })
    .unwrap();
    let t = Transfer::start(
        &storage,
        "dav:CloudStore",
        &[("CLOUDSTORE_RCLONE_CONFIG", conf.to_str().unwrap())],
    );
    let got = wait_converged(&storage, &cloud, "new directories");
    assert_eq!(got.len(), dirs.len() * 7);
    wait_for("a clean pass", 30, || {
        t.status().contains("last error:   none")
    });
    // The files' arrival is not the end of the pass: the empty directory may come after.
    wait_for("the empty directory to be made", 30, || {
        cloud.join("a/empty").is_dir()
    });
    let log = fs::read_to_string(&log_path).unwrap();
    let moves: Vec<&str> = log.lines().filter(|l| l.contains(": MOVE from")).collect();
    assert_eq!(
        moves.len(),
        dirs.len(),
        "one MOVE per new directory, none per file:\n{}",
        moves.join("\n")
    );
    assert!(
        moves.iter().all(|m| m.contains("/.cloudstore-partial/")),
        "each moved from the partial area"
    );
    // Recorded: a deletion in storage afterwards reaches the cloud as one.
    delete(&c, "a/b/c/f0");
    wait_for("the deletion in the cloud", 30, || {
        !cloud.join("a/b/c/f0").exists()
    });
    assert!(
        parked_conflicts(&storage).is_empty(),
        "a recorded directory made conflicts"
    );
    drop(t);
    server.kill().unwrap();
    let _ = server.wait();
}

/// A flaky cloud in front of `rclone serve webdav`: every third connection is answered
/// 503 with Retry-After (a throttling cloud), the others are cut after a random time (a
/// network that drops). Returns the proxy's port and how many requests it refused; it runs
/// until the test process ends.
fn flaky_proxy(upstream: u16, seed: u64) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    use std::net::{Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut rng = seed | 1;
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            // xorshift: reproducible from the seed the test prints.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if n % 3 == 2 {
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = client.shutdown(Shutdown::Both);
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let life = Duration::from_millis(300 + rng % 2000);
            let ends = [client.try_clone().unwrap(), server.try_clone().unwrap()];
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = pump(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
            std::thread::spawn(move || {
                std::thread::sleep(life);
                for e in ends {
                    let _ = e.shutdown(Shutdown::Both);
                }
            });
        }
    });
    (port, refused)
}

/// The cloud throttles and drops connections, and storage shuts down mid-sync: everything
/// converges, nothing is cut, nothing is doubled as a conflict.
fn flaky_cloud_and_storage_restart() {
    let mut storage = StorageAgent::start("work");
    let served = shared_tempdir();
    let cloud = served.path().join("CloudStore").join("work");
    fs::create_dir_all(&cloud).unwrap();
    let upstream = free_port();
    let mut server = rclone_server()
        .args(["serve", "webdav", "--dir-cache-time", "0s", "--addr"])
        .arg(format!("127.0.0.1:{upstream}"))
        .arg(served.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port("the webdav server", upstream);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("flaky proxy seed {seed}");
    let (port, refused) = flaky_proxy(upstream, seed);
    let (_conf_dir, conf) = webdav_conf(port);
    {
        let c = sync_client(&storage);
        for i in 0..40 {
            put(&c, &format!("s/f{i:02}"), &vec![i as u8; 96 * 1024]);
        }
    }
    for i in 0..20 {
        write_cloud(
            &cloud,
            &format!("c/g{i:02}"),
            &vec![100 + i as u8; 64 * 1024],
        );
    }
    let t = Transfer::start(
        &storage,
        "dav:CloudStore",
        &[("CLOUDSTORE_RCLONE_CONFIG", conf.to_str().unwrap())],
    );
    wait_for("some uploads through the flaky proxy", 60, || {
        files(&cloud).keys().filter(|p| p.starts_with("s/")).count() >= 5
    });
    // Storage goes away mid-sync and comes back; more work is written meanwhile.
    storage.stop();
    std::thread::sleep(Duration::from_secs(1));
    storage.spawn();
    {
        let c = sync_client(&storage);
        for i in 40..50 {
            put(&c, &format!("s/f{i:02}"), &vec![i as u8; 96 * 1024]);
        }
    }
    let got = wait_converged(
        &storage,
        &cloud,
        "through the flaky cloud and a storage restart",
    );
    assert_eq!(got.len(), 70, "{:?}", got.keys());
    for (p, b) in &got {
        let want = if p.starts_with("s/") { 96 } else { 64 } * 1024;
        assert_eq!(b.len(), want, "{p} is cut");
    }
    assert!(
        parked_conflicts(&storage).is_empty(),
        "retried work made conflicts"
    );
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the proxy refused nothing: the faults were not injected"
    );
    drop(t);
    server.kill().unwrap();
    let _ = server.wait();
}

/// 10 000 small files, first sync.
/// The live `rclone` processes whose parent is `agent`.
fn rclone_children(agent: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            let state = rest.next();
            stat.contains("(rclone)")
                && state != Some("Z")
                && rest.next() == Some(agent.to_string().as_str())
        })
        .collect()
}

fn ten_thousand_files_initial_sync() {
    let mut storage = StorageAgent::start("work");
    // Written straight into the tree while storage is down: the first sync lists the tree.
    storage.stop();
    let tree = storage.tree("work");
    for d in 0..100 {
        let dir = tree.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:02}")), format!("{d}/{f}")).unwrap();
        }
    }
    storage.spawn();
    let (_cd, cloud) = cloud_dir();
    let remote = cloud.parent().unwrap().to_str().unwrap().to_owned();
    let t0 = Instant::now();
    // rclone is replaced whenever its Go heap is past 1 MiB when the agent looks (every 32
    // calls; it holds 10-16 MiB then), so the sync runs across several rclone processes.
    let t = Transfer::start(
        &storage,
        &remote,
        &[
            ("CLOUDSTORE_TRANSFER_WORKERS", "8"),
            ("CLOUDSTORE_RCLONE_RECYCLE_MIB", "1"),
        ],
    );
    wait_for("10 000 files in the cloud", 100, || {
        files(&cloud).len() == 10_000
    });
    eprintln!("10 000-file initial upload: {:.1?}", t0.elapsed());
    let got = wait_converged(&storage, &cloud, "10 000 files");
    assert_eq!(got["d42/f17"], b"42/17");
    let log = t.log_text();
    let recycled = log.matches("starting a fresh one").count();
    assert!(recycled >= 1, "rclone was never replaced:\n{log}");
    if std::env::var_os("TRANSFER_TEST_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    // Each replaced rclone ended after its last call: one child is left.
    wait_for("the replaced rclone processes to end", 10, || {
        rclone_children(t.pid()).len() == 1
    });
    eprintln!("rclone replaced {recycled} times");
    drop(t);
}

/// The running transfer agent is confined by roles/transfer/sandbox.json: forbidden accesses
/// fail inside it, /proc shows the sandbox on the agent and on its rclone child, and sync
/// still runs both ways through the confined rclone.
fn transfer_sandbox_holds() {
    let storage = StorageAgent::start("work");
    let (_cd, cloud) = cloud_dir();
    let remote = cloud.parent().unwrap().to_str().unwrap().to_owned();
    // Outside every path the policy grants, yet open to any user: only landlock refuses.
    let decoy = shared_tempdir();
    fs::set_permissions(decoy.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let secret = decoy.path().join("secret");
    fs::write(&secret, "outside the sandbox").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let planted = decoy.path().join("planted");
    let probes = [
        format!("open:{}", secret.display()),
        format!("write:{}", planted.display()),
        "write:/etc/cloudstore-probe".to_owned(),
        "exec:/bin/sh".to_owned(),
    ];
    let probe_env = probes.join(",");
    let t = Transfer::start(
        &storage,
        &remote,
        &[("CLOUDSTORE_SANDBOX_PROBE", probe_env.as_str())],
    );
    wait_for("the probe results in the log", 10, || {
        probes
            .iter()
            .all(|p| t.log_text().contains(&format!("sandbox probe {p}:")))
    });
    let log = t.log_text();
    for p in &probes {
        assert!(
            log.contains(&format!("sandbox probe {p}: refused")),
            "{p} was not refused:\n{log}"
        );
    }
    assert!(!log.contains("ALLOWED"), "{log}");
    assert!(!planted.exists() && !Path::new("/etc/cloudstore-probe").exists());
    assert!(log.contains("transfer role confined"), "{log}");

    // /proc: the sandbox user, no capabilities, no_new_privs and seccomp, on the agent and
    // inherited by rclone.
    let uid = nix::unistd::User::from_name("cloudstore")
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
        .to_string();
    let rclone = *rclone_children(t.pid())
        .first()
        .expect("the agent's rclone child");
    for (what, pid) in [("agent", t.pid()), ("rclone", rclone)] {
        assert_eq!(proc_status_field(pid, "Uid:"), uid, "{what}");
        assert_eq!(
            proc_status_field(pid, "CapEff:"),
            "0000000000000000",
            "{what}"
        );
        assert_eq!(
            proc_status_field(pid, "CapPrm:"),
            "0000000000000000",
            "{what}"
        );
        assert_eq!(proc_status_field(pid, "NoNewPrivs:"), "1", "{what}");
        assert_eq!(proc_status_field(pid, "Seccomp:"), "2", "{what}");
    }

    // Sync both ways through the confined rclone, with the status file in the runtime dir.
    let c = sync_client(&storage);
    put(&c, "from-storage", b"up through the sandbox");
    wait_for_content(
        "the storage file in the cloud",
        20,
        &cloud.join("from-storage"),
        b"up through the sandbox",
    );
    write_cloud(&cloud, "from-cloud", b"down through the sandbox");
    wait_for_content(
        "the cloud file in storage",
        20,
        &storage.tree("work").join("from-cloud"),
        b"down through the sandbox",
    );
    assert!(t.status().contains("volume work:"));
    let log = t.log_text();
    assert!(
        !log.contains("seccomp refused") && !log.contains("SIGSYS"),
        "{log}"
    );
    assert_eq!(proc_status_field(t.pid(), "Seccomp:"), "2");
    drop(t);

    // The network path of the confined rclone: `rclone serve webdav` reached by the name
    // localhost (resolved inside the sandbox) through an on-the-fly webdav remote.
    let served = shared_tempdir();
    let dav_vol = served.path().join("CloudStore").join("work");
    fs::create_dir_all(&dav_vol).unwrap();
    let port = free_port();
    let mut server = rclone_server()
        .args(["serve", "webdav", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(served.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port("the webdav server", port);
    let dav_remote = format!(":webdav,url='http://localhost:{port}/':CloudStore");
    let t = Transfer::start(&storage, &dav_remote, &[]);
    wait_for_content(
        "the storage files over webdav",
        30,
        &dav_vol.join("from-storage"),
        b"up through the sandbox",
    );
    assert!(!t.log_text().contains("seccomp refused"));
    drop(t);
    server.kill().unwrap();
    let _ = server.wait();

    // A syscall outside the allowlist (a netlink socket) ends the agent by seccomp's trap,
    // naming the syscall.
    let t = Transfer {
        child: None,
        log: None,
        db: QubesDbDaemon::start(
            &decoy.path().join("qubesdb.sock"),
            [
                ("/cloudstore/role", b"transfer".as_slice()),
                ("/cloudstore/remote", remote.as_bytes()),
            ],
        )
        .unwrap(),
        dir: shared_tempdir(),
        sync_socket: storage.sync_socket(),
        env: vec![("CLOUDSTORE_SANDBOX_PROBE".into(), "socket:netlink".into())],
    };
    let out = t.command(&["agent"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(159), "{err}");
    // 41 is socket(2) on x86_64, the one architecture the policy is written for.
    assert!(err.contains("seccomp refused syscall 41"), "{err}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("@default") {
        qrexec_client_stand_in(&args, "TRANSFER_TEST_SYNC_SOCKET");
    }
    let cases: &[(&str, fn())] = &[
        ("two_way_sync", two_way_sync),
        ("deletion_threshold", deletion_threshold),
        (
            "agent_killed_mid_sync_resumes",
            agent_killed_mid_sync_resumes,
        ),
        (
            "webdav_server_stopped_mid_transfer",
            webdav_server_stopped_mid_transfer,
        ),
        (
            "new_directories_move_into_place_whole",
            new_directories_move_into_place_whole,
        ),
        (
            "flaky_cloud_and_storage_restart",
            flaky_cloud_and_storage_restart,
        ),
        (
            "ten_thousand_files_initial_sync",
            ten_thousand_files_initial_sync,
        ),
        ("transfer_sandbox_holds", transfer_sandbox_holds),
    ];
    run_cases(cases);
}
