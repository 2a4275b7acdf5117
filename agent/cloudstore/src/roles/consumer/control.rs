//! The consumer agent's control socket: `cloudstore unlock|lock|status|init|versions|restore`
//! talk to the agent (the parent of the workers) over `$RUNTIME/consumer.sock`.
//!
//! One request per connection, one JSON line each way. The socket is 0666 so that the
//! qube's user can reach it; who may do what is decided from the peer's kernel-checked
//! credentials (`SO_PEERCRED`), never from anything the peer says: root and the configured
//! user may unlock, lock, init, list and restore versions; anyone may read the status.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The socket's file name in the runtime directory.
pub const SOCKET_NAME: &str = "consumer.sock";
/// Environment variable of the runtime directory (the storage agent's too).
pub const RUNTIME_DIR_ENV: &str = "CLOUDSTORE_RUNTIME_DIR";
/// The runtime directory in a qube.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/cloudstore";

/// Largest request: a passphrase (rpassword reads at most a line), a path (PATH_MAX 4096)
/// and the JSON around them. 64 KiB bounds what an unprivileged peer can make us buffer.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// Largest answer: a version list (the protocol caps it at 10 000 entries of ~300 bytes).
pub const MAX_REPLY: u64 = 16 * 1024 * 1024;
/// How long the CLI waits for an answer: an unlock runs scrypt and mounts, a lock may wait
/// for the worker to finish pending writes; both well under this.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent waits for a request after accepting: a client has it ready.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime directory: `$CLOUDSTORE_RUNTIME_DIR`, else /run/cloudstore.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os(RUNTIME_DIR_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_RUNTIME_DIR),
    }
}

/// The control socket's path.
pub fn socket_path() -> PathBuf {
    runtime_dir().join(SOCKET_NAME)
}

/// A passphrase on the wire: base64, wiped on drop.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn bytes(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.0)
            .map(Zeroizing::new)
            .context("the passphrase in the request is not base64")
    }
}

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Mount `volume`; with `keyfile`, also keep the passphrase for unlock at start.
    Unlock {
        volume: String,
        passphrase: Secret,
        #[serde(default)]
        keyfile: bool,
    },
    /// Unmount `volume` and wipe its keys; with `forget_keyfile`, remove its keyfile too.
    Lock {
        volume: String,
        #[serde(default)]
        forget_keyfile: bool,
    },
    Status,
    /// Create `volume` on storage; refused if it already has a gocryptfs.conf or diriv.
    Init {
        volume: String,
        passphrase: Secret,
        scrypt_log_n: u8,
    },
    /// The kept versions of the plaintext file at `path` (absolute, inside a mount).
    Versions {
        path: PathBuf,
    },
    /// Put back version `id` of `path`, or the newest version kept at or before `at` (Unix
    /// seconds), or the newest version.
    Restore {
        path: PathBuf,
        #[serde(default)]
        id: Option<u64>,
        #[serde(default)]
        at: Option<i64>,
    },
    /// Self-test of the worker's sandbox (root only): opens each path and creates an
    /// AF_INET socket in a child of the worker, reporting what happened.
    Probe {
        volume: String,
        open: Vec<PathBuf>,
    },
}

/// One volume in a status answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeStatus {
    pub volume: String,
    pub unlocked: bool,
    pub mountpoint: PathBuf,
    pub keyfile: bool,
    /// From the worker; absent while locked.
    pub connected: Option<bool>,
    /// Whether changes made elsewhere are followed as storage pushes them.
    #[serde(default)]
    pub following: Option<bool>,
    pub pending_writes: Option<u64>,
    pub last_error: Option<String>,
}

/// One kept version, names decrypted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionLine {
    pub id: u64,
    /// When storage kept it (Unix seconds, nanoseconds).
    pub time: (i64, u32),
    pub size: u64,
    pub reason: String,
    /// The plaintext path it had, relative to the volume root.
    pub path: String,
    pub mtime: (i64, u32),
}

/// What the agent answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
    Status {
        volumes: Vec<VolumeStatus>,
    },
    Versions {
        path: String,
        versions: Vec<VersionLine>,
        truncated: bool,
    },
    Probe {
        results: Vec<String>,
    },
}

/// Sends one request to the agent at `socket` and returns its answer.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Reply> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the consumer agent at {} (is `cloudstore agent` running in this qube?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = Zeroizing::new(serde_json::to_vec(req)?);
    line.push(b'\n');
    s.write_all(&line)
        .with_context(|| format!("sending the request to {}", socket.display()))?;
    s.shutdown(std::net::Shutdown::Write).ok();
    let mut answer = Vec::new();
    BufReader::new(s.take(MAX_REPLY))
        .read_until(b'\n', &mut answer)
        .with_context(|| format!("reading the answer of {}", socket.display()))?;
    if answer.is_empty() {
        bail!(
            "the consumer agent at {} closed the connection without an answer",
            socket.display()
        );
    }
    serde_json::from_slice(&answer)
        .with_context(|| format!("malformed answer from {}", socket.display()))
}

/// [`call`] turning `Reply::Error` into an error.
pub fn call_ok(socket: &Path, req: &Request) -> anyhow::Result<Reply> {
    match call(socket, req)? {
        Reply::Error { message } => bail!("{message}"),
        r => Ok(r),
    }
}

/// Reads one request line (the agent side), at most [`MAX_REQUEST`] bytes.
pub fn read_request(s: &UnixStream) -> anyhow::Result<Request> {
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = Zeroizing::new(Vec::new());
    BufReader::new(s.take(MAX_REQUEST))
        .read_until(b'\n', &mut line)
        .context("reading the request")?;
    if line.last() != Some(&b'\n') {
        bail!("the request is not one line of at most {MAX_REQUEST} bytes");
    }
    serde_json::from_slice(&line).context("malformed request")
}

/// Writes one answer line.
pub fn write_reply(mut s: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    s.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_secrets_stay_out_of_debug() {
        let r = Request::Unlock {
            volume: "work".into(),
            passphrase: Secret::new(b"hunter2"),
            keyfile: false,
        };
        assert!(!format!("{r:?}").contains("hunter2"));
        let text = serde_json::to_string(&r).unwrap();
        match serde_json::from_str::<Request>(&text).unwrap() {
            Request::Unlock { passphrase, .. } => {
                assert_eq!(&passphrase.bytes().unwrap()[..], b"hunter2")
            }
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"lock","volume":"w","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format"}"#).is_err());
    }

    #[test]
    fn oversized_and_unterminated_requests_are_refused() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _ = b.write_all(&vec![b' '; MAX_REQUEST as usize + 10]);
        });
        let e = read_request(&a).unwrap_err();
        assert!(format!("{e:#}").contains("one line"), "{e:#}");
        t.join().unwrap();
    }
}
