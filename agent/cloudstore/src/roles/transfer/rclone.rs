//! rclone as the cloud engine: one `rclone rcd` child (the remote-control server, rclone
//! `cmd/rcd`) on 127.0.0.1 with a random user and password, driven over plain HTTP/1.1 on
//! kept-alive connections. Its `operations/*` calls (rclone `fs/operations/rc.go`) list,
//! stat, move and delete; uploads are pulled: `sync/copy` fetches a batch of files from an
//! HTTP server of the agent's own that streams them from storage (see [`super::offer`]);
//! and `--rc-serve` streams an object back with `GET /[remote]/path`. So nothing is staged
//! on the transfer qube's disk, and one long-lived process serves thousands of small files
//! without a process start each.
//!
//! What a call costs rclone is mostly the call itself (measured on rclone v1.60 here, CPU
//! of the server per call: 0.29 ms for `rc/noop` without authentication, 0.54 ms with
//! `--rc-user/--rc-pass`, which runs an MD5-crypt of the password on every request, lib/http/
//! auth/basic.go `SingleAuth`); a whole `rclone copy` spends about 0.4 ms per small file. So
//! the password is checked against an htpasswd `{SHA}` entry (one SHA-1, as cheap as no
//! authentication), connections are reused, and small files travel many to a call.
//!
//! Uploads go to a fresh directory under `<remote>/.cloudstore-partial/` and are moved into
//! place server-side only once rclone reports them complete (the files of one call together,
//! with one `sync/move`): a cut upload (rclone killed, network lost) is never visible under
//! the real name on backends whose own uploads are not atomic (the local backend and
//! `rclone serve webdav` write in place).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

/// Where uploads are streamed before they are moved into place, beside the volume folders.
/// Its name is not valid base64url ciphertext, so gocryptfs would never mistake it for a file.
pub const PARTIAL_DIR: &str = ".cloudstore-partial";

/// How long rclone gets to start serving; a cold start on a loaded machine takes ~1 s.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// rc calls that fail at the transport level (rclone restarting, a dropped connection) are
/// retried this many times with exponential backoff from 200 ms before the error reaches the
/// sync engine, which then retries the whole path in a later pass.
const CALL_ATTEMPTS: u32 = 4;

/// Go's soft memory limit for the `rclone rcd` child: a collection target, not a cap (rclone
/// goes past it rather than fail). 256 MiB holds a 100 000-entry listing several times over.
const RCLONE_SOFT_MEMORY_LIMIT: &str = "256MiB";

/// Go heap in use past which `rclone rcd` is replaced by a fresh one, letting the old one
/// finish its calls. While uploads were pushed (`operations/uploadfile`), rclone v1.60 kept
/// memory alive for every call however its stats and jobs were pruned (8 000 uploads of
/// 8 KB left 920 MiB of heap in use after `core/gc`; a first sync of 100 000 files took it
/// to 7 GiB resident). Pulled uploads (offer.rs) leave it at 10-16 MiB in the 10 000-file
/// test; the limit stays as the guard a transfer qube's memory needs against growth in
/// another rclone version or backend. `CLOUDSTORE_RCLONE_RECYCLE_MIB` overrides it (tests).
const RCLONE_RECYCLE_MIB: u64 = 384;
const RECYCLE_ENV: &str = "CLOUDSTORE_RCLONE_RECYCLE_MIB";
/// Calls between two looks at rclone's heap (an rc call of its own).
const HEAP_CHECK_EVERY: u64 = 32;

/// rc options for moves into place: the uploaded object replaces the one there whatever
/// their sizes and times. rclone otherwise skips a move onto an object of the same size
/// and modification time and deletes the source (fs/operations `NeedTransfer`); an upload
/// carries its offer's `Last-Modified`, whole seconds, so a file changed to the same size
/// within a second of its last upload would have been dropped.
fn replace_always() -> Value {
    json!({"IgnoreTimes": true})
}

/// Largest rc answer we read into memory (a listing of 100 000 entries is ~25 MB of JSON
/// without hashes); more means something is wrong with the remote or with rclone.
const MAX_JSON_ANSWER: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// the rclone program could not be started
    #[error("starting {program}: {source}")]
    Start {
        program: String,
        #[source]
        source: io::Error,
    },
    /// rclone did not come up
    #[error("rclone rcd did not start serving: {0}")]
    NotServing(String),
    /// talking to rclone failed
    #[error("{op} {path:?}: talking to rclone failed: {source}")]
    Transport {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// rclone reported an error
    #[error("{op} {path:?}: rclone: {message}")]
    Remote {
        op: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    /// the object does not exist in the cloud
    #[error("{op} {path:?}: not found in the cloud")]
    NotFound { op: &'static str, path: String },
}

impl CloudError {
    /// rclone unreachable or restarting: worth retrying the same call at once. Errors
    /// rclone reports have already been through its own retries.
    fn transient(&self) -> bool {
        matches!(self, CloudError::Transport { .. })
    }
}

pub type Result<T> = std::result::Result<T, CloudError>;

/// One object of a cloud listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEntry {
    /// Relative to the listed directory, `/`-separated.
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    /// As rclone reports it (RFC 3339 with nanoseconds): compared as text, never parsed, so
    /// nothing is lost to rounding.
    pub modtime: String,
}

/// How to run rclone.
#[derive(Clone, Debug)]
pub struct RcloneOptions {
    /// The rclone program.
    pub program: PathBuf,
    /// `remote:path` or a local directory: each volume lives in `<remote>/<volume>`.
    pub remote: String,
    /// Extra flags for `rclone rcd` (e.g. `--tpslimit 10`, `--config FILE`).
    pub extra_args: Vec<String>,
    /// A directory only the agent (and its rclone) can read: the rc password's htpasswd
    /// file is written there.
    pub private_dir: PathBuf,
}

struct Server {
    child: Mutex<Child>,
    addr: SocketAddr,
    /// Connections whose last answer was read to its end, ready for the next request.
    idle: Mutex<Vec<TcpStream>>,
}

impl Server {
    fn id(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// An idle connection still open at the far end, or a new one. A connection the server
    /// closed while it sat idle reads as end-of-file at once; a live one has nothing to read.
    fn connection(&self, op: &'static str, path: &str) -> Result<TcpStream> {
        loop {
            let Some(s) = self.idle.lock().unwrap().pop() else {
                break;
            };
            let _ = s.set_nonblocking(true);
            let mut probe = [0u8; 1];
            let open =
                matches!(s.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if open && s.set_nonblocking(false).is_ok() {
                return Ok(s);
            }
        }
        let s =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(10)).map_err(|source| {
                CloudError::Transport {
                    op,
                    path: path.to_owned(),
                    source,
                }
            })?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// Keeps the connection of a response read to its end for the next request.
    fn reuse(&self, resp: Response) {
        if let Some(s) = resp.into_reusable() {
            self.idle.lock().unwrap().push(s);
        }
    }
}

/// A server ends with its last user: calls in flight hold it (`Arc<Server>`), so a
/// replaced server finishes them first.
impl Drop for Server {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running `rclone rcd`, restarted on demand when it dies.
pub struct Rclone {
    opts: RcloneOptions,
    auth: String,
    server: Mutex<Option<Arc<Server>>>,
    counter: AtomicU64,
    calls: AtomicU64,
    recycle_mib: u64,
    /// rclone is started by one long-lived thread: its death signal (`PR_SET_PDEATHSIG`)
    /// follows the thread that forked it, and the sync workers come and go.
    spawner: Mutex<std::sync::mpsc::Sender<std::sync::mpsc::Sender<Result<Server>>>>,
}

pub(super) fn random_token() -> String {
    let mut b = [0u8; 18];
    let _ = openssl::rand::rand_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn encode_component(p: &str) -> String {
    encode_path(p).replace('/', "%2F")
}

impl Rclone {
    /// Starts `rclone rcd`; fails if it does not serve within a few seconds.
    pub fn start(opts: RcloneOptions) -> Result<Rclone> {
        let user = random_token();
        let pass = random_token();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let htpasswd = write_htpasswd(&opts.private_dir, &user, &pass).map_err(|source| {
            CloudError::Start {
                program: format!(
                    "rclone (writing its rc password to {})",
                    opts.private_dir.join(HTPASSWD_FILE).display()
                ),
                source,
            }
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<Result<Server>>>();
        let o = opts.clone();
        std::thread::Builder::new()
            .name("rclone-spawner".into())
            .spawn(move || {
                for reply in rx {
                    let _ = reply.send(spawn(&o, &htpasswd));
                }
            })
            .map_err(|source| CloudError::Start {
                program: opts.program.display().to_string(),
                source,
            })?;
        let r = Rclone {
            opts,
            auth,
            server: Mutex::new(None),
            counter: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            recycle_mib: std::env::var(RECYCLE_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(RCLONE_RECYCLE_MIB),
            spawner: Mutex::new(tx),
        };
        r.ensure()?;
        Ok(r)
    }

    pub fn remote(&self) -> &str {
        &self.opts.remote
    }

    fn spawn(&self) -> Result<Server> {
        let (tx, rx) = std::sync::mpsc::channel();
        let gone = || CloudError::NotServing("the rclone spawner thread is gone".into());
        self.spawner.lock().unwrap().send(tx).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// The Go heap in use by `server` (rc `core/memstats`: rclone reports it itself, and
    /// the sandbox gives the agent no /proc of its child).
    fn heap_mib(&self, server: &Server) -> Option<u64> {
        let v = self
            .rc_once(server, "memstats", "core/memstats", "", &json!({}))
            .ok()?;
        Some(v.get("HeapInuse")?.as_u64()? >> 20)
    }

    /// A live server, (re)starting rclone if it is gone or has grown past
    /// [`RCLONE_RECYCLE_MIB`]. Hold it for the length of the call.
    fn ensure(&self) -> Result<Arc<Server>> {
        let mut g = self.server.lock().unwrap();
        if let Some(s) = g.as_ref() {
            let exited = s.child.lock().unwrap().try_wait();
            match exited {
                Ok(None) => {
                    let n = self.calls.fetch_add(1, Ordering::Relaxed);
                    let grown = (n % HEAP_CHECK_EVERY == HEAP_CHECK_EVERY - 1)
                        .then(|| self.heap_mib(s))
                        .flatten()
                        .filter(|&mib| mib > self.recycle_mib);
                    match grown {
                        None => return Ok(s.clone()),
                        Some(mib) => tracing::info!(
                            pid = s.id(),
                            "rclone rcd holds {mib} MiB of heap (limit {} MiB); starting a fresh one, the old one ends with its last call",
                            self.recycle_mib
                        ),
                    }
                }
                Ok(Some(st)) => tracing::warn!("rclone rcd exited ({st}); starting it again"),
                Err(e) => tracing::warn!("rclone rcd: {e}; starting it again"),
            }
            *g = None;
        }
        let s = Arc::new(self.spawn()?);
        *g = Some(s.clone());
        Ok(s)
    }

    fn with_retries<T>(&self, mut f: impl FnMut(&Arc<Server>) -> Result<T>) -> Result<T> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let r = self.ensure().and_then(|server| f(&server));
            match r {
                Err(e) if e.transient() && attempt < CALL_ATTEMPTS => {
                    tracing::debug!("rclone call failed ({e}); retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One rc call with a JSON body; the JSON answer.
    fn rc(&self, op: &'static str, method: &str, path: &str, args: Value) -> Result<Value> {
        self.with_retries(|server| self.rc_once(server, op, method, path, &args))
    }

    /// [`Rclone::rc`] on `server`, once.
    fn rc_once(
        &self,
        server: &Server,
        op: &'static str,
        method: &str,
        path: &str,
        args: &Value,
    ) -> Result<Value> {
        let tp = |source| CloudError::Transport {
            op,
            path: path.to_owned(),
            source,
        };
        let mut s = server.connection(op, path)?;
        let body = serde_json::to_vec(args).expect("JSON");
        let head = format!(
            "POST /{method} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            server.addr,
            self.auth,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        s.write_all(&request).map_err(tp)?;
        let mut resp = Response::read(s).map_err(tp)?;
        let mut text = Vec::new();
        (&mut resp)
            .take(MAX_JSON_ANSWER)
            .read_to_end(&mut text)
            .map_err(tp)?;
        let status = resp.status;
        server.reuse(resp);
        let v: Value = serde_json::from_slice(&text).map_err(|e| tp(io::Error::other(e)))?;
        if status != 200 {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned();
            // rclone's wording varies by backend: "object not found", "directory not
            // found", webdav's "Not Found: 404 Not Found", the local backend's ENOENT.
            let lower = message.to_ascii_lowercase();
            if lower.contains("not found") || lower.contains("no such file or directory") {
                return Err(CloudError::NotFound {
                    op,
                    path: path.to_owned(),
                });
            }
            return Err(CloudError::Remote {
                op,
                path: path.to_owned(),
                status,
                message,
            });
        }
        Ok(v)
    }

    /// Everything beneath `dir` (relative to the remote), recursively. A missing `dir` is an
    /// empty listing.
    pub fn list(&self, dir: &str) -> Result<Vec<CloudEntry>> {
        let v = match self.rc(
            "list",
            "operations/list",
            dir,
            json!({"fs": self.opts.remote, "remote": dir,
                   "opt": {"recurse": true, "noMimeType": true, "noModTime": false}}),
        ) {
            Ok(v) => v,
            Err(CloudError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let items = v
            .get("list")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        Ok(items.iter().filter_map(|i| entry(i, &prefix)).collect())
    }

    /// One object's state, `None` if absent.
    pub fn stat(&self, path: &str) -> Result<Option<CloudEntry>> {
        match self.rc(
            "stat",
            "operations/stat",
            path,
            json!({"fs": self.opts.remote, "remote": path, "opt": {"noMimeType": true}}),
        ) {
            Ok(v) => Ok(v.get("item").and_then(|i| entry(i, ""))),
            Err(CloudError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams the object at `path`.
    pub fn download(&self, path: &str) -> Result<Response> {
        self.with_retries(|server| {
            let tp = |source| CloudError::Transport {
                op: "download",
                path: path.to_owned(),
                source,
            };
            let mut s = server.connection("download", path)?;
            // The body goes to the engine as a stream; its connection is not reused.
            let head = format!(
                "GET /{}/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
                encode_component(&format!("[{}]", self.opts.remote)),
                encode_path(path),
                server.addr,
                self.auth
            );
            s.write_all(head.as_bytes()).map_err(tp)?;
            let mut resp = Response::read(s).map_err(tp)?;
            match resp.status {
                200 => {
                    // rclone serves the stream until the reader is done with it.
                    resp.server = Some(server.clone());
                    Ok(resp)
                }
                404 => Err(CloudError::NotFound {
                    op: "download",
                    path: path.to_owned(),
                }),
                st => {
                    let mut text = String::new();
                    let _ = (&mut resp).take(8192).read_to_string(&mut text);
                    Err(CloudError::Remote {
                        op: "download",
                        path: path.to_owned(),
                        status: st,
                        message: text.trim().to_owned(),
                    })
                }
            }
        })
    }

    /// A fresh directory name in the partial area, for [`Rclone::pull_into`] (created by
    /// the first upload into it).
    pub fn partial_dir(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{PARTIAL_DIR}/{}-{}-{n}",
            std::process::id(),
            random_token()
        )
    }

    /// Has rclone copy every file `url` lists (an offer of the agent's own, see
    /// [`super::offer`]) into `dir` of the partial area, with one `sync/copy` that fetches
    /// them one after the other: the sync workers run several such calls side by side, each
    /// file a storage stream. `dir` is not listed first (`NoCheckDest`; several calls may
    /// fill one directory) and no file is fetched in ranges by several streams.
    pub fn pull_into(&self, dir: &str, url: &str) -> Result<()> {
        self.rc(
            "upload",
            "sync/copy",
            dir,
            json!({"srcFs": format!(":http,url=\"{url}\":"), "dstFs": self.fs_at(dir),
                   "_config": {"Transfers": 1, "MultiThreadStreams": 0, "NoCheckDest": true}}),
        )
        .map(drop)
    }

    /// The files directly in `dir`, by name.
    pub fn files_in(&self, dir: &str) -> Result<BTreeMap<String, CloudEntry>> {
        Ok(self
            .list(dir)?
            .into_iter()
            .filter(|e| !e.is_dir && !e.path.contains('/'))
            .map(|e| (e.path.clone(), e))
            .collect())
    }

    /// Moves every file of directory `from` into directory `to` (created if missing),
    /// server-side, in one call (rc `sync/move`: where `to` does not exist and the backend
    /// can, `from` itself is renamed to `to` — one rename on the local backend, one MOVE on
    /// webdav — else a move per file inside rclone), then removes `from` if still there.
    pub fn move_files_of(&self, from: &str, to: &str) -> Result<()> {
        self.rc(
            "move",
            "sync/move",
            to,
            json!({"srcFs": self.fs_at(from), "dstFs": self.fs_at(to),
                   "deleteEmptySrcDirs": true, "_config": replace_always()}),
        )?;
        self.rmdir(from)
    }

    /// `<remote>/<path>` as an rclone fs string.
    fn fs_at(&self, path: &str) -> String {
        let r = &self.opts.remote;
        if path.is_empty() {
            r.clone()
        } else if r.ends_with(':') || r.ends_with('/') {
            format!("{r}{path}")
        } else {
            format!("{r}/{path}")
        }
    }

    /// Server-side move of one object (replacing the destination).
    pub fn move_file(&self, from: &str, to: &str) -> Result<()> {
        self.rc(
            "move",
            "operations/movefile",
            to,
            json!({"srcFs": self.opts.remote, "srcRemote": from,
                   "dstFs": self.opts.remote, "dstRemote": to, "_config": replace_always()}),
        )
        .map(drop)
    }

    /// An rc call on one path of the remote (`{"fs": REMOTE, "remote": PATH}`).
    fn rc_path(&self, op: &'static str, method: &str, path: &str) -> Result<Value> {
        self.rc(
            op,
            method,
            path,
            json!({"fs": self.opts.remote, "remote": path}),
        )
    }

    /// Deletes one object; an absent one is not an error.
    pub fn delete_file(&self, path: &str) -> Result<()> {
        absent_is_done(self.rc_path("delete", "operations/deletefile", path))
    }

    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.rc_path("mkdir", "operations/mkdir", path).map(drop)
    }

    /// Removes an empty directory; an absent one is not an error.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        absent_is_done(self.rc_path("rmdir", "operations/rmdir", path))
    }

    /// Removes `dir` and everything in it; an absent one is not an error.
    pub fn purge(&self, dir: &str) -> Result<()> {
        absent_is_done(self.rc_path("purge", "operations/purge", dir))
    }

    /// Removes what cut uploads left in the partial directory.
    pub fn clean_partial(&self) -> Result<()> {
        match self.purge(PARTIAL_DIR) {
            Err(CloudError::Remote { message, .. }) if message.contains("directory not found") => {
                Ok(())
            }
            other => other,
        }
    }

    /// Stops rclone (also done on drop).
    pub fn stop(&self) {
        if let Some(s) = self.server.lock().unwrap().take() {
            // Ended now even if a call still holds it.
            let mut child = s.child.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Rclone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The htpasswd file that holds the rc password (see [`write_htpasswd`]).
const HTPASSWD_FILE: &str = "rc.htpasswd";

/// Writes `user`'s password for `rclone rcd --rc-htpasswd` as a `{SHA}` entry (checked with
/// one SHA-1 per request, github.com/abbot/go-http-auth `CheckSecret`; `--rc-user/--rc-pass`
/// costs an MD5-crypt per request instead). The password is random and never leaves the
/// agent, so the hash only has to be one-way. Replaced, not rewritten in place: rclone reads
/// the file again whenever its modification time changes.
fn write_htpasswd(dir: &std::path::Path, user: &str, pass: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let digest = openssl::sha::sha1(pass.as_bytes());
    let line = format!(
        "{user}:{{SHA}}{}\n",
        base64::engine::general_purpose::STANDARD.encode(digest)
    );
    let path = dir.join(HTPASSWD_FILE);
    let tmp = dir.join(format!("{HTPASSWD_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(line.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn spawn(opts: &RcloneOptions, htpasswd: &std::path::Path) -> Result<Server> {
    let program = opts.program.display().to_string();
    let mut cmd = Command::new(&opts.program);
    // SAFETY: prctl in the child between fork and exec touches no memory of the parent;
    // rclone then dies with the agent instead of serving on as an orphan.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.arg("rcd")
        .arg("--rc-addr=127.0.0.1:0")
        .arg("--rc-serve")
        // rclone's own retry of low-level failures and its pacer (rate-limit answers such
        // as HTTP 429 back off there, honouring Retry-After) stay on, but short: with its
        // default of 10 a call against a server that is gone blocks for minutes, and the
        // pass-level backoff (engine::backoff) is the retry that keeps going.
        .arg("--low-level-retries=3")
        .args(&opts.extra_args)
        // Each rc call leaves garbage (a 100 KiB upload buffer, a job record) that Go's
        // collector, pacing itself on heap growth alone, let pile up to gigabytes over a
        // 100 000-file first sync; a soft limit makes it collect as it goes (Go >= 1.19),
        // and finished jobs are forgotten after 5 s instead of 60.
        .env("GOMEMLIMIT", RCLONE_SOFT_MEMORY_LIMIT)
        .arg("--rc-job-expire-duration=5s")
        // Every upload names a source of its own (its offer's address), which rclone keeps
        // in its cache of remotes for 5 minutes by default: thousands of them over a first
        // sync. The remote itself stays cached while it is in use.
        .arg("--fs-cache-expire-duration=20s")
        .arg("--fs-cache-expire-interval=10s")
        .arg(format!("--rc-htpasswd={}", htpasswd.display()))
        // `rclone rcd` sends its own READY=1 to $NOTIFY_SOCKET and exits 1 when that fails
        // (rclone v1.60 cmd/rcd/rcd.go: log.Fatalf after sysdnotify.Ready): the agent alone
        // speaks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CloudError::Start {
        program: program.clone(),
        source,
    })?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rclone-log".into())
        .spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(io::Result::ok) {
                if let Some(t) = &tx {
                    if let Some(rest) = line.split("Serving remote control on http://").nth(1) {
                        let addr = rest.trim_end_matches('/').to_owned();
                        let _ = t.send(Ok(addr));
                        tx = None;
                        continue;
                    }
                }
                // rclone logs every answer it gives as an error, including the "not found"
                // the engine expects (a volume whose cloud folder does not exist yet, a
                // partial directory already clean, the local backend's ENOENT for a partial
                // directory renamed into place whole); those would repeat every poll.
                let lower = line.to_ascii_lowercase();
                let expected =
                    lower.contains("not found") || lower.contains("no such file or directory");
                let serious = ["ERROR", "Failed", "CRITICAL", "Fatal", "NOTICE"]
                    .iter()
                    .any(|w| line.contains(w));
                if serious && !expected {
                    tracing::warn!(target: "rclone", "rclone: {line}");
                    if let Some(t) = &tx {
                        let _ = t.send(Err(line.clone()));
                    }
                } else {
                    tracing::debug!(target: "rclone", "rclone: {line}");
                }
            }
        })
        .map_err(|source| CloudError::Start {
            program: program.clone(),
            source,
        })?;
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(addr)) => {
            let addr = addr
                .parse()
                .map_err(|_| CloudError::NotServing(format!("unexpected rc address {addr:?}")))?;
            tracing::info!(pid = child.id(), %addr, "rclone rcd serving");
            Ok(Server {
                child: Mutex::new(child),
                addr,
                idle: Mutex::new(Vec::new()),
            })
        }
        Ok(Err(line)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(CloudError::NotServing(line))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(CloudError::NotServing(format!(
                "{program} rcd printed no address within {START_TIMEOUT:?}"
            )))
        }
    }
}

/// A removal whose object is already gone has nothing left to do.
fn absent_is_done(r: Result<Value>) -> Result<()> {
    match r {
        Ok(_) | Err(CloudError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn entry(i: &Value, prefix: &str) -> Option<CloudEntry> {
    let path = i.get("Path")?.as_str()?;
    let rel = path.strip_prefix(prefix).unwrap_or(path).to_owned();
    let is_dir = i.get("IsDir").and_then(Value::as_bool).unwrap_or(false);
    Some(CloudEntry {
        path: rel,
        is_dir,
        size: if is_dir {
            0
        } else {
            i.get("Size").and_then(Value::as_i64).unwrap_or(0).max(0) as u64
        },
        modtime: if is_dir {
            String::new()
        } else {
            i.get("ModTime")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        },
    })
}

/// An HTTP/1.1 response whose body is read as it arrives (Content-Length, chunked, or up to
/// the end of the connection).
pub struct Response {
    pub status: u16,
    body: BufReader<TcpStream>,
    mode: BodyMode,
    /// The server said it closes the connection after this answer.
    closing: bool,
    /// The server streaming a download, kept alive for as long as it is read.
    server: Option<Arc<Server>>,
}

enum BodyMode {
    Length(u64),
    Chunked { left: u64, done: bool },
    UntilClose,
}

/// Largest response header block we accept from rclone.
const MAX_HEADER: usize = 64 * 1024;

impl Response {
    fn read(s: TcpStream) -> io::Result<Response> {
        // rclone answers after the whole body is handled; a stalled server must not hang a
        // sync pass for ever.
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut r = BufReader::with_capacity(256 * 1024, s);
        let mut line = String::new();
        let mut total = 0;
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad HTTP status line {line:?}")))?;
        let mut mode = BodyMode::UntilClose;
        let mut closing = false;
        loop {
            line.clear();
            let n = r.read_line(&mut line)?;
            total += n;
            if n == 0 || total > MAX_HEADER {
                return Err(io::Error::other("truncated or oversized HTTP header"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    if let Ok(n) = v.parse() {
                        mode = BodyMode::Length(n);
                    }
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    mode = BodyMode::Chunked {
                        left: 0,
                        done: false,
                    };
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    closing = true;
                }
            }
        }
        Ok(Response {
            status,
            body: r,
            mode,
            closing,
            server: None,
        })
    }

    /// The connection, if this answer was read to its end and the server keeps it open.
    fn into_reusable(self) -> Option<TcpStream> {
        let complete = match self.mode {
            BodyMode::Length(left) => left == 0,
            BodyMode::Chunked { done, .. } => done,
            BodyMode::UntilClose => false,
        };
        (complete && !self.closing && self.body.buffer().is_empty()).then(|| self.body.into_inner())
    }
}

impl Read for Response {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.mode {
            BodyMode::UntilClose => self.body.read(out),
            BodyMode::Length(left) => {
                if *left == 0 {
                    return Ok(0);
                }
                let k = (*left).min(out.len() as u64) as usize;
                let n = self.body.read(&mut out[..k])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended {left} bytes early"),
                    ));
                }
                *left -= n as u64;
                Ok(n)
            }
            BodyMode::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    self.body.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        // The CRLF after a chunk's data.
                        line.clear();
                        self.body.read_line(&mut line)?;
                    }
                    let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
                    if size == 0 {
                        // Trailer lines up to an empty one end the body; the connection
                        // then carries the next answer.
                        loop {
                            line.clear();
                            if self.body.read_line(&mut line)? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let k = (*left).min(out.len() as u64) as usize;
                let n = self.body.read(&mut out[..k])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the chunked body ended early",
                    ));
                }
                *left -= n as u64;
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::offer::tests::Memory;
    use super::super::offer::{offer, Offered};
    use super::*;

    /// A real `rclone rcd` over a local folder as the cloud.
    fn rclone(dir: &std::path::Path) -> Rclone {
        let private_dir = dir.join("private");
        std::fs::create_dir_all(&private_dir).unwrap();
        std::fs::create_dir_all(dir.join("cloud")).unwrap();
        Rclone::start(RcloneOptions {
            program: "rclone".into(),
            remote: dir.join("cloud").display().to_string(),
            extra_args: vec![format!("--config={}", dir.join("rclone.conf").display())],
            private_dir,
        })
        .expect("rclone rcd starts")
    }

    fn post_noop(addr: SocketAddr, auth: &str) -> u16 {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /rc/noop HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .unwrap();
        Response::read(s).unwrap().status
    }

    #[test]
    fn the_rc_server_refuses_a_wrong_password_and_keeps_the_right_one_private() {
        let dir = tempfile::tempdir().unwrap();
        let r = rclone(dir.path());
        let addr = r.ensure().unwrap().addr;
        assert_eq!(post_noop(addr, &r.auth), 200);
        let wrong = base64::engine::general_purpose::STANDARD.encode("x:y");
        assert_eq!(post_noop(addr, &wrong), 401);
        assert_eq!(post_noop(addr, ""), 401);

        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join("private").join(HTPASSWD_FILE);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        let plain = base64::engine::general_purpose::STANDARD
            .decode(&r.auth)
            .unwrap();
        let pass = String::from_utf8(plain)
            .unwrap()
            .split_once(':')
            .unwrap()
            .1
            .to_owned();
        assert!(text.contains("{SHA}") && !text.contains(&pass), "{text}");
    }

    #[test]
    fn calls_share_one_connection_and_a_closed_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let r = rclone(dir.path());
        // A listing large enough to come back chunked, then more calls behind it.
        for i in 0..300 {
            std::fs::write(dir.path().join(format!("cloud/file-{i:03}")), b"x").unwrap();
        }
        for _ in 0..3 {
            assert_eq!(r.list("").unwrap().len(), 300);
            assert!(r.stat("file-007").unwrap().is_some());
        }
        let server = r.ensure().unwrap();
        assert_eq!(
            server.idle.lock().unwrap().len(),
            1,
            "one connection for every call"
        );
        // An idle connection the far end has closed (an idle timeout, a server gone) is
        // not used again.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        drop(listener.accept().unwrap());
        server.idle.lock().unwrap().push(closed);
        let s = server.connection("test", "").unwrap();
        assert_eq!(
            s.peer_addr().unwrap(),
            server.addr,
            "a connection to rclone"
        );
        assert!(
            server.idle.lock().unwrap().is_empty(),
            "the closed one dropped, the live one handed out"
        );
        drop(s);
        assert!(r.stat("file-008").unwrap().is_some());
    }

    /// Offers `files` (name, content) and has rclone pull them into `dir`; the call's result
    /// and which files were served whole.
    fn pull(
        r: &Rclone,
        dir: &str,
        files: &[(&str, Vec<u8>)],
        fail: &[usize],
    ) -> (Result<()>, Vec<bool>) {
        let content = Memory {
            files: files.iter().map(|f| f.1.clone()).collect(),
            fail: fail.to_vec(),
            grow: Vec::new(),
        };
        let offered: Vec<Offered> = files
            .iter()
            .map(|(name, data)| Offered {
                name,
                size: data.len() as u64,
            })
            .collect();
        offer(&offered, &content, |url| r.pull_into(dir, url)).unwrap()
    }

    #[test]
    fn a_pulled_batch_stores_each_file_and_never_a_cut_one() {
        let tmp = tempfile::tempdir().unwrap();
        let r = rclone(tmp.path());
        let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let dir = r.partial_dir();
        let files = [
            ("a", b"first".to_vec()),
            ("b", vec![7u8; 1000]),
            ("c", big.clone()),
            ("d", Vec::new()),
            ("say \"hi\" 100%?", b"q".to_vec()),
            ("caf\u{e9}", b"accent".to_vec()),
        ];
        let (copied, delivered) = pull(&r, &dir, &files, &[1]);
        let err = copied.expect_err("a file rclone could not fetch fails the call");
        assert!(matches!(err, CloudError::Remote { .. }), "{err}");
        assert_eq!(delivered, [true, false, true, true, true, true]);

        let stored = r.files_in(&dir).unwrap();
        let mut names: Vec<&str> = stored.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            ["a", "c", "caf\u{e9}", "d", "say \"hi\" 100%?"],
            "all but the cut one, each under its own name"
        );
        assert_eq!(stored["c"].size, big.len() as u64);
        assert_eq!(stored["d"].size, 0);
        // The rest moves with one call, into a directory that already has a file.
        let cloud = tmp.path().join("cloud/vol");
        std::fs::create_dir_all(&cloud).unwrap();
        std::fs::write(cloud.join("old"), b"old").unwrap();
        r.move_files_of(&dir, "vol").unwrap();
        assert_eq!(std::fs::read(cloud.join("c")).unwrap(), big);
        assert_eq!(std::fs::read(cloud.join("say \"hi\" 100%?")).unwrap(), b"q");
        assert_eq!(std::fs::read(cloud.join("old")).unwrap(), b"old");
        assert!(
            !tmp.path().join("cloud").join(&dir).exists(),
            "the partial directory is gone"
        );
        // The same connection carries the next call.
        assert_eq!(r.ensure().unwrap().idle.lock().unwrap().len(), 1);
    }

    #[test]
    fn an_upload_replaces_an_object_of_the_same_size_and_time() {
        let tmp = tempfile::tempdir().unwrap();
        let r = rclone(tmp.path());
        let cloud = tmp.path().join("cloud");
        std::fs::create_dir_all(cloud.join("vol")).unwrap();
        for f in ["a", "b", "c"] {
            std::fs::write(cloud.join("vol").join(f), b"old content").unwrap();
        }
        // The stored copies carry their offer's time, whole seconds; the old objects get the
        // same, as when a file is changed to the same size within a second of its upload.
        let same_time_as = |partial: &str, old: &str| {
            let t = std::fs::metadata(cloud.join(partial))
                .unwrap()
                .modified()
                .unwrap();
            std::fs::File::options()
                .write(true)
                .open(cloud.join(old))
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        // One file moved alone.
        let one = r.partial_dir();
        pull(&r, &one, &[("a", b"new content".to_vec())], &[])
            .0
            .unwrap();
        same_time_as(&format!("{one}/a"), "vol/a");
        r.move_file(&format!("{one}/a"), "vol/a").unwrap();
        // Several moved together into a directory that has them.
        let many = r.partial_dir();
        let files = [
            ("b", b"new b conte".to_vec()),
            ("c", b"new c conte".to_vec()),
        ];
        pull(&r, &many, &files, &[]).0.unwrap();
        same_time_as(&format!("{many}/b"), "vol/b");
        same_time_as(&format!("{many}/c"), "vol/c");
        r.move_files_of(&many, "vol").unwrap();
        assert_eq!(std::fs::read(cloud.join("vol/a")).unwrap(), b"new content");
        assert_eq!(std::fs::read(cloud.join("vol/b")).unwrap(), b"new b conte");
        assert_eq!(std::fs::read(cloud.join("vol/c")).unwrap(), b"new c conte");
    }

    #[test]
    fn calls_filling_one_directory_move_into_a_new_one_with_a_single_rename() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let r = rclone(tmp.path());
        let dir = r.partial_dir();
        for (names, content) in [(["a", "b"], &b"first call"[..]), (["c", "d"], b"second")] {
            let files: Vec<(&str, Vec<u8>)> =
                names.iter().map(|n| (*n, content.to_vec())).collect();
            let (copied, delivered) = pull(&r, &dir, &files, &[]);
            copied.unwrap();
            assert_eq!(delivered, [true, true]);
        }
        assert_eq!(
            r.files_in(&dir).unwrap().len(),
            4,
            "both calls filled one directory"
        );
        let partial_inode = std::fs::metadata(tmp.path().join("cloud").join(&dir))
            .unwrap()
            .ino();
        r.move_files_of(&dir, "vol/new").unwrap();
        let target = tmp.path().join("cloud/vol/new");
        assert_eq!(
            std::fs::metadata(&target).unwrap().ino(),
            partial_inode,
            "the directory itself was renamed into place, not its files one by one"
        );
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"first call");
        assert_eq!(std::fs::read(target.join("d")).unwrap(), b"second");
        assert!(!tmp.path().join("cloud").join(&dir).exists());
    }

    #[test]
    fn paths_are_percent_encoded_except_slashes() {
        assert_eq!(encode_path("a b/c+d"), "a%20b/c%2Bd");
        assert_eq!(encode_component("[/tmp/x]"), "%5B%2Ftmp%2Fx%5D");
        assert_eq!(encode_path("Zm9v-_.~"), "Zm9v-_.~");
    }
}
