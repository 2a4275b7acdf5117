//! A consumer mount for tests: a real storage agent (tests/support), a fresh gocryptfs
//! volume put on it the way `cloudstore init` does, and the consumer filesystem mounted
//! with real FUSE, talking to the agent through its qrexec socket service.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cloudstore::roles::consumer::fs::{
    mount, Connector, FsOptions, FsStatus, Streams, UnixSocketConnector,
};
use cloudstore_format::{Config, CreateOptions, DirIv, MasterKey};
use cloudstore_protocol::{Client, ClientConfig, Expect, Hello, Request, Role};

use super::support::{pump, StorageAgent};

pub const VOLUME: &str = "work";

static LOG: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects the filesystem's log (all mounts of this test binary) so tests can check
/// what it says.
pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogSink)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// Every log line so far.
pub fn log_text() -> String {
    LOG.lock().unwrap().clone()
}
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A volume on a running storage agent.
pub struct Volume {
    pub storage: StorageAgent,
    pub config: Config,
    pub key: MasterKey,
    /// Holds the passphrase for `gocryptfs -passfile`.
    pub passfile: PathBuf,
}

impl Volume {
    /// Starts storage and puts gocryptfs.conf and the root diriv on it (scrypt at the
    /// minimum cost: tests need speed, not a strong passphrase hash).
    pub fn create() -> Volume {
        Volume::create_with(|_| {})
    }

    /// A volume with other creation options (gocryptfs `-deterministic-names`,
    /// `-plaintextnames`, ...).
    pub fn create_with(tweak: impl FnOnce(&mut CreateOptions)) -> Volume {
        let storage = StorageAgent::start(VOLUME);
        let mut opts = CreateOptions {
            scrypt_log_n: 10,
            ..CreateOptions::default()
        };
        tweak(&mut opts);
        let (config, key) = Config::create(PASSPHRASE.as_bytes(), &opts).unwrap();
        let c = volume_client(&storage);
        put(&c, "gocryptfs.conf", &config.to_bytes(), 0o400);
        if !opts.deterministic_names && !opts.plaintext_names {
            put(
                &c,
                "gocryptfs.diriv",
                &DirIv::new_random().unwrap().0,
                0o440,
            );
        }
        let passfile = storage.dir.path().join("passfile");
        std::fs::write(&passfile, PASSPHRASE).unwrap();
        Volume {
            storage,
            config,
            key,
            passfile,
        }
    }

    pub fn tree(&self) -> PathBuf {
        self.storage.tree(VOLUME)
    }

    pub fn format_volume(&self) -> cloudstore_format::Volume {
        cloudstore_format::Volume::new(&self.config, &self.key).unwrap()
    }

    /// Mounts the volume with default options at a new directory.
    pub fn mount(&self) -> Mount {
        self.mount_with(|_| {})
    }

    pub fn mount_with(&self, tweak: impl FnOnce(&mut FsOptions)) -> Mount {
        self.mount_via(false, tweak)
    }

    /// Mounts with the stream carried over a pair of pipes, as qrexec-client-vm gives it
    /// (its stdin and stdout), relayed to the storage agent's socket service.
    pub fn mount_over_pipes(&self) -> Mount {
        self.mount_via(true, |_| {})
    }

    /// Mounts with every frame between the filesystem and storage recorded, in the order
    /// they passed, into the returned log. Every answer reaches the filesystem
    /// [`ANSWER_DELAY`] late.
    pub fn mount_recorded(&self) -> (Mount, FrameLog) {
        let log = FrameLog::default();
        let direct = self.direct_connector();
        let m = self.mount_connector(
            Arc::new(RecordingRelay {
                inner: direct,
                log: log.clone(),
                answer_delay: ANSWER_DELAY,
                hold: None,
            }),
            |_| {},
        );
        (m, log)
    }

    /// Mounts with every request of `op` held back `delay` on its way to storage while the
    /// frames after it pass: storage serves a connection's requests concurrently, so this
    /// is an order it may serve them in, made certain.
    pub fn mount_holding(&self, op: cloudstore_protocol::Op, delay: Duration) -> Mount {
        self.mount_connector(
            Arc::new(RecordingRelay {
                inner: self.direct_connector(),
                log: FrameLog::default(),
                answer_delay: Duration::ZERO,
                hold: Some((op, delay)),
            }),
            |_| {},
        )
    }

    fn direct_connector(&self) -> UnixSocketConnector {
        UnixSocketConnector {
            socket: self.storage.volume_socket(),
            volume: VOLUME.into(),
            source: "my-work".into(),
        }
    }

    fn mount_via(&self, pipes: bool, tweak: impl FnOnce(&mut FsOptions)) -> Mount {
        let direct = self.direct_connector();
        let connector: Arc<dyn Connector> = if pipes {
            Arc::new(PipeRelay(direct))
        } else {
            Arc::new(direct)
        };
        self.mount_connector(connector, tweak)
    }

    fn mount_connector(
        &self,
        connector: Arc<dyn Connector>,
        tweak: impl FnOnce(&mut FsOptions),
    ) -> Mount {
        init_log();
        let dir = tempfile::tempdir().unwrap();
        let mut opts = FsOptions::new(VOLUME, dir.path(), 0, 0);
        opts.request_timeout = Duration::from_secs(20);
        tweak(&mut opts);
        let fs = mount(opts, self.format_volume(), connector).unwrap();
        let status = fs.status();
        let thread = std::thread::spawn(move || fs.serve());
        let m = Mount {
            dir,
            thread: Some(thread),
            status,
        };
        m.wait_mounted();
        m
    }

    /// Mounts the same ciphertext with real gocryptfs.
    pub fn gocryptfs(&self) -> GocryptfsMount {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("gocryptfs")
            .arg("-q")
            .arg("-nosyslog")
            .arg("-passfile")
            .arg(&self.passfile)
            .arg(self.tree())
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "gocryptfs mount failed: {st}");
        GocryptfsMount { dir }
    }
}

pub fn volume_client(s: &StorageAgent) -> Client {
    let stream = s.raw("cloudstore.Volume", VOLUME, "my-work");
    Client::connect_unix(stream, ClientConfig::new(Hello::new(Role::Volume)))
        .unwrap()
        .0
}

pub fn sync_client(s: &StorageAgent) -> Client {
    let stream = s.raw("cloudstore.Sync", VOLUME, "sys-cloud");
    Client::connect_unix(stream, ClientConfig::new(Hello::new(Role::Sync)))
        .unwrap()
        .0
}

pub fn put(c: &Client, path: &str, data: &[u8], mode: u32) {
    let mut up = c
        .upload(Request::Put {
            path: path.into(),
            expect: Expect::Any,
            mode: Some(mode),
            mtime: None,
        })
        .unwrap();
    up.write_all(data).unwrap();
    up.finish().unwrap();
}

fn mounted_at(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

pub struct Mount {
    pub dir: tempfile::TempDir,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    pub status: Arc<FsStatus>,
}

impl Mount {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn wait_mounted(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while !mounted_at(self.path()) {
            assert!(Instant::now() < end, "the mount never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts and waits for the serving thread; panics if serving failed.
    pub fn unmount(mut self) {
        self.do_unmount();
    }

    fn do_unmount(&mut self) {
        if let Some(t) = self.thread.take() {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                let st = Command::new("fusermount3")
                    .arg("-u")
                    .arg(self.dir.path())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                if st.success() || !mounted_at(self.dir.path()) {
                    break;
                }
                if Instant::now() > end {
                    let _ = Command::new("umount")
                        .arg("-l")
                        .arg(self.dir.path())
                        .status();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let r = t.join().expect("the serving thread panicked");
            if !std::thread::panicking() {
                r.expect("serving failed");
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

pub struct GocryptfsMount {
    pub dir: tempfile::TempDir,
}

impl GocryptfsMount {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for GocryptfsMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status();
    }
}

/// Runs a shell command, panicking with its output if it fails.
#[track_caller]
pub fn sh(cmd: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names in directory `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every entry below `root` (relative path, kind, content or link target), sorted.
pub fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            out.push((
                rel,
                format!("link {}", std::fs::read_link(&p).unwrap().display()),
            ));
        } else if m.is_dir() {
            out.push((rel.clone(), "dir".into()));
            walk(root, &p, out);
        } else {
            let data = std::fs::read(&p).unwrap();
            let digest = openssl::sha::sha256(&data);
            out.push((rel, format!("file {} {}", data.len(), hex(&digest))));
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A connector whose streams are two pipes, pumped to and from the socket service by two
/// threads: what the filesystem sees is exactly a qrexec-client-vm child's stdin/stdout.
/// Close-on-exec: a process another test spawns meanwhile must not keep a pipe open, or the
/// filesystem would never see the end of a stream whose storage died.
struct PipeRelay(UnixSocketConnector);

impl Connector for PipeRelay {
    fn connect(&self) -> std::io::Result<Streams> {
        let (mut sock_r, mut sock_w) = self.0.connect()?;
        relay_over_pipes(
            move |down| pump(&mut sock_r, down),
            move |up| pump(up, &mut sock_w),
        )
    }
}

/// Two close-on-exec pipes as a connection's halves: `down` is run on a thread of its own
/// with the write end of what the filesystem reads, `up` with the read end of what it
/// writes.
fn relay_over_pipes(
    down: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
    up: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<Streams> {
    let (down_r, down_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (up_r, up_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut down_w = std::fs::File::from(down_w);
    let mut up_r = std::fs::File::from(up_r);
    std::thread::spawn(move || down(&mut down_w));
    std::thread::spawn(move || up(&mut up_r));
    Ok((
        Box::new(std::fs::File::from(down_r)),
        Box::new(std::fs::File::from(up_w)),
    ))
}

/// How long [`RecordingRelay`] holds each answer back.
pub const ANSWER_DELAY: Duration = Duration::from_millis(30);

/// One frame seen by [`RecordingRelay`]: `up` from the filesystem to storage, its type, its
/// request id, and for a request its operation.
#[derive(Clone, Debug)]
pub struct SeenFrame {
    pub up: bool,
    pub kind: cloudstore_protocol::FrameType,
    pub id: u64,
    pub op: Option<cloudstore_protocol::Op>,
}

/// The frames a recorded mount exchanged so far, in the order they passed the relay.
#[derive(Clone, Default)]
pub struct FrameLog(Arc<std::sync::Mutex<Vec<SeenFrame>>>);

impl FrameLog {
    pub fn frames(&self) -> Vec<SeenFrame> {
        self.0.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A connector relaying whole frames (after the handshake, which passes as bytes) and
/// recording each in a [`FrameLog`].
struct RecordingRelay {
    inner: UnixSocketConnector,
    log: FrameLog,
    /// How long each answer is held back.
    answer_delay: Duration,
    /// Requests of this operation are held back this long while later frames pass.
    hold: Option<(cloudstore_protocol::Op, Duration)>,
}

impl Connector for RecordingRelay {
    fn connect(&self) -> std::io::Result<Streams> {
        use cloudstore_protocol::{read_frame, write_frame, Op};
        use std::io::Read;
        let (mut sock_r, sock_w) = self.inner.connect()?;
        let sock_w = Arc::new(std::sync::Mutex::new(sock_w));
        let (log_up, log_down) = (self.log.clone(), self.log.clone());
        let (answer_delay, hold) = (self.answer_delay, self.hold);
        let relay = move |from: &mut dyn std::io::Read,
                          to: &mut dyn FnMut(
            cloudstore_protocol::Frame,
            Option<Op>,
        ) -> std::io::Result<()>,
                          up: bool,
                          log: FrameLog|
              -> std::io::Result<()> {
            while let Ok(f) = read_frame(from) {
                if !up {
                    // Each answer is held back and logged as it is passed on, so a request
                    // sent without waiting for the answer before it is logged before that
                    // answer whatever the threads' timing.
                    std::thread::sleep(answer_delay);
                }
                let op = (up && f.kind == cloudstore_protocol::FrameType::Request)
                    .then(|| Op::from_code(u16::from_le_bytes([f.payload[0], f.payload[1]])))
                    .flatten();
                log.0.lock().unwrap().push(SeenFrame {
                    up,
                    kind: f.kind,
                    id: f.id,
                    op,
                });
                to(f, op)?;
            }
            Ok(())
        };
        let send = |to: &Arc<std::sync::Mutex<Box<dyn Write + Send>>>,
                    f: &cloudstore_protocol::Frame|
         -> std::io::Result<()> {
            let mut w = to.lock().unwrap();
            write_frame(&mut *w, f.kind, f.flags, f.id, &f.payload)?;
            w.flush()
        };
        relay_over_pipes(
            move |down_w| {
                // The welcome: 26 bytes, then a message of the length its last two give.
                let mut head = [0u8; 26];
                sock_r.read_exact(&mut head)?;
                let mut msg = vec![0u8; u16::from_le_bytes([head[24], head[25]]) as usize];
                sock_r.read_exact(&mut msg)?;
                down_w.write_all(&head)?;
                down_w.write_all(&msg)?;
                relay(
                    &mut sock_r,
                    &mut |f, _| {
                        write_frame(&mut *down_w, f.kind, f.flags, f.id, &f.payload)?;
                        down_w.flush()
                    },
                    false,
                    log_down,
                )
            },
            move |up_r| {
                let mut hello = vec![0u8; Hello::new(Role::Volume).encode().len()];
                up_r.read_exact(&mut hello)?;
                sock_w.lock().unwrap().write_all(&hello)?;
                relay(
                    up_r,
                    &mut |f, op| match hold {
                        Some((held, delay)) if op == Some(held) => {
                            let to = sock_w.clone();
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                let _ = send(&to, &f);
                            });
                            Ok(())
                        }
                        _ => send(&sock_w, &f),
                    },
                    true,
                    log_up,
                )
            },
        )
    }
}
