//! A qubesdb daemon for tests and the demo: the local-socket half of the real one.
//!
//! Behaviour follows QubesOS/qubes-core-qubesdb `daemon/db-cmds.c` (header checks, one
//! handler per command, when a client is answered `QDB_RESP_ERROR` and when it is dropped)
//! and `daemon/db-core.c` (entries sorted by `strcmp`, prefix matching, removal of a prefix,
//! watch matching and firing). What the real daemon does over vchan with dom0 (replicating
//! writes, the initial full dump) has no counterpart here: this daemon *is* the whole
//! database, and [`QubesDbDaemon::write`] stands in for dom0 (the core-admin extension)
//! changing a key.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use cloudstore_qubesdb::wire::{Header, MsgType, HEADER_LEN, MAX_DATA, MAX_PATH_LEN};

type ClientId = u64;

struct Watch {
    client: ClientId,
    path: Vec<u8>,
    /// `qubesdb_add_watch()`: a path ending with `/` matches as a prefix, any other path
    /// only exactly (the comparison includes the terminating NUL).
    prefix: bool,
}

impl Watch {
    fn matches(&self, changed: &[u8]) -> bool {
        if self.prefix {
            changed.starts_with(&self.path)
        } else {
            changed == self.path.as_slice()
        }
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Newest first, as the daemon's linked list (`db->watches`).
    watches: Vec<Watch>,
    clients: HashMap<ClientId, Client>,
}

struct Client {
    out: Sender<Vec<u8>>,
    stream: UnixStream,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in one client thread must not take the whole stand-in down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why an in-process change was refused (the same rules the daemon applies to clients).
#[derive(Debug, PartialEq, Eq)]
pub enum ChangeError {
    InvalidPath(String),
    InvalidValue(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::InvalidPath(p) => write!(f, "qubesdb refuses path {p:?}"),
            ChangeError::InvalidValue(p) => write!(f, "qubesdb refuses the value for {p}"),
        }
    }
}

impl std::error::Error for ChangeError {}

/// A running stand-in daemon. Dropping it stops it and removes its socket.
pub struct QubesDbDaemon {
    shared: Arc<Shared>,
    socket: PathBuf,
    /// A second handle on the listening socket, to wake `accept()` at shutdown even when
    /// the socket's path is already gone (its directory removed first).
    listener: UnixListener,
    accept: Option<JoinHandle<()>>,
}

impl QubesDbDaemon {
    /// Listens on `socket` (replacing a stale socket file, as the real daemon unlinks its
    /// path before binding) with the given initial entries; serves in background threads.
    pub fn start<I, K, V>(socket: &Path, initial: I) -> io::Result<QubesDbDaemon>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut state = State::default();
        for (k, v) in initial {
            let (k, v) = (k.as_ref(), v.as_ref());
            if !insertable(k.as_bytes()) || !valid_data(v) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("qubesdb stand-in: invalid initial entry {k:?}"),
                ));
            }
            state.entries.insert(k.as_bytes().to_vec(), v.to_vec());
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(socket)?;
        let waker = listener.try_clone()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("qubesdb-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(QubesDbDaemon {
            shared,
            socket: socket.to_path_buf(),
            listener: waker,
            accept: Some(accept),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Writes an entry as dom0 would, firing the matching watches.
    pub fn write(&self, path: &str, value: &[u8]) -> Result<(), ChangeError> {
        if !verify_path(path.as_bytes()) || !insertable(path.as_bytes()) {
            return Err(ChangeError::InvalidPath(path.to_owned()));
        }
        if value.len() >= MAX_DATA || !valid_data(value) {
            return Err(ChangeError::InvalidValue(path.to_owned()));
        }
        let mut st = self.shared.lock();
        st.entries.insert(path.as_bytes().to_vec(), value.to_vec());
        fire_watches(&st, path.as_bytes());
        Ok(())
    }

    /// Removes an entry (or, ending with `/`, everything beneath), firing watches.
    /// Returns whether anything was removed.
    pub fn rm(&self, path: &str) -> Result<bool, ChangeError> {
        if !verify_path(path.as_bytes()) {
            return Err(ChangeError::InvalidPath(path.to_owned()));
        }
        let mut st = self.shared.lock();
        let removed = remove(&mut st.entries, path.as_bytes());
        if removed {
            fire_watches(&st, path.as_bytes());
        }
        Ok(removed)
    }

    /// The current value of an entry.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.shared.lock().entries.get(path.as_bytes()).cloned()
    }

    /// How many watches clients hold now (for tests of watch bookkeeping).
    pub fn watch_count(&self) -> usize {
        self.shared.lock().watches.len()
    }

    /// How many clients are connected now.
    pub fn client_count(&self) -> usize {
        self.shared.lock().clients.len()
    }
}

impl Drop for QubesDbDaemon {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(): shutdown() of a listening socket makes it fail.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let mut st = self.shared.lock();
        for (_, c) in st.clients.drain() {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        st.watches.clear();
        drop(st);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            // EINTR or a client that gave up before we accepted it: keep serving.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (Ok(writer), Ok(registered)) = (stream.try_clone(), stream.try_clone()) else {
            continue;
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        // Writes go through a queue and a thread per client, as the real daemon buffers
        // non-blocking writes: a client that does not read its events must not stall the
        // others.
        let _ = thread::Builder::new()
            .name(format!("qubesdb-out-{id}"))
            .spawn(move || {
                let mut w = writer;
                for msg in rx {
                    if w.write_all(&msg).is_err() {
                        break;
                    }
                }
                // The queue is closed once the client is dropped; what was queued before
                // (the answer that ended it) has gone out, so now close the connection.
                let _ = w.shutdown(std::net::Shutdown::Both);
            });
        shared.lock().clients.insert(
            id,
            Client {
                out: tx,
                stream: registered,
            },
        );
        let client_shared = Arc::clone(&shared);
        let _ = thread::Builder::new()
            .name(format!("qubesdb-in-{id}"))
            .spawn(move || {
                let mut s = stream;
                serve_client(&client_shared, id, &mut s);
                // handle_client_disconnect(): its watches go with it.
                let mut st = client_shared.lock();
                st.watches.retain(|w| w.client != id);
                st.clients.remove(&id);
            });
    }
}

/// `verify_path()` of `daemon/db-cmds.c`: allowed bytes, no leading `-`, under 64 bytes.
fn verify_path(path: &[u8]) -> bool {
    path.len() <= MAX_PATH_LEN
        && path.iter().enumerate().all(|(i, &b)| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'/' | b'.' | b':' | b'@')
                || (b == b'-' && i > 0)
        })
}

/// `qubesdb_insert()` of `daemon/db-core.c`: starts with `/`, does not end with `/`.
fn insertable(path: &[u8]) -> bool {
    path.first() == Some(&b'/') && !path.ends_with(b"/") && path.len() <= MAX_PATH_LEN
}

/// `verify_data()`: no NUL bytes.
fn valid_data(data: &[u8]) -> bool {
    !data.contains(&0)
}

/// `qubesdb_remove()`: exact, or every entry beneath a path ending with `/`.
fn remove(entries: &mut BTreeMap<Vec<u8>, Vec<u8>>, path: &[u8]) -> bool {
    if path.is_empty() {
        return false;
    }
    if path.ends_with(b"/") {
        let doomed: Vec<Vec<u8>> = entries
            .range(path.to_vec()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            entries.remove(k);
        }
        !doomed.is_empty()
    } else {
        entries.remove(path).is_some()
    }
}

/// `qubesdb_fire_watches()`: one event per matching watch, carrying the changed path.
fn fire_watches(st: &State, changed: &[u8]) {
    let ev = Header::new(MsgType::RespWatch, changed, 0)
        .encode()
        .to_vec();
    for w in st.watches.iter().filter(|w| w.matches(changed)) {
        if let Some(c) = st.clients.get(&w.client) {
            let _ = c.out.send(ev.clone());
        }
    }
}

fn send(shared: &Shared, id: ClientId, msg: Vec<u8>) {
    if let Some(c) = shared.lock().clients.get(&id) {
        let _ = c.out.send(msg);
    }
}

fn reply(kind: MsgType, path: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Header::new(kind, path, data.len() as u32).encode().to_vec();
    m.extend_from_slice(data);
    m
}

fn discard(stream: &mut UnixStream, n: u32) -> bool {
    io::copy(&mut stream.take(u64::from(n)), &mut io::sink()).is_ok_and(|got| got == u64::from(n))
}

/// Serves one client until it disconnects or breaks the protocol badly enough that the
/// real daemon drops it (`handle_client_data()` returning 0).
fn serve_client(shared: &Shared, id: ClientId, stream: &mut UnixStream) {
    loop {
        let mut buf = [0u8; HEADER_LEN];
        if stream.read_exact(&mut buf).is_err() {
            return;
        }
        let mut hdr = Header::decode(&buf);
        // "ensure path is null terminated": the daemon overwrites the last byte with NUL.
        hdr.path.truncate(MAX_PATH_LEN);
        let kind = hdr.msg_type();
        let local_cmd = matches!(
            kind,
            Some(
                MsgType::CmdRead
                    | MsgType::CmdWrite
                    | MsgType::CmdMultiread
                    | MsgType::CmdList
                    | MsgType::CmdRm
                    | MsgType::CmdWatch
                    | MsgType::CmdUnwatch
            )
        );
        if !local_cmd || !verify_path(&hdr.path) || hdr.data_len as usize >= MAX_DATA {
            // verify_hdr() failed: discard the data, answer QDB_RESP_ERROR, keep the client.
            if !discard(stream, hdr.data_len) {
                return;
            }
            send(shared, id, reply(MsgType::RespError, &hdr.path, &[]));
            continue;
        }
        let path = hdr.path.clone();
        let keep = match kind {
            Some(MsgType::CmdRead) => {
                if hdr.data_len > 0 {
                    false
                } else {
                    let value = shared.lock().entries.get(&path).cloned();
                    let msg = match value {
                        Some(v) => reply(MsgType::RespRead, &path, &v),
                        None => reply(MsgType::RespErrorNoent, &path, &[]),
                    };
                    send(shared, id, msg);
                    true
                }
            }
            Some(MsgType::CmdWrite) => {
                let mut data = vec![0u8; hdr.data_len as usize];
                if stream.read_exact(&mut data).is_err() {
                    return;
                }
                if !valid_data(&data) {
                    send(shared, id, reply(MsgType::RespError, &path, &[]));
                    true
                } else if !insertable(&path) {
                    // qubesdb_write() failed: the real daemon answers ERROR and drops us.
                    send(shared, id, reply(MsgType::RespError, &path, &[]));
                    false
                } else {
                    let mut st = shared.lock();
                    st.entries.insert(path.clone(), data);
                    if let Some(c) = st.clients.get(&id) {
                        let _ = c.out.send(reply(MsgType::RespOk, &path, &[]));
                    }
                    fire_watches(&st, &path);
                    true
                }
            }
            Some(k @ (MsgType::CmdMultiread | MsgType::CmdList)) => {
                if hdr.data_len > 0 {
                    if !discard(stream, hdr.data_len) {
                        return;
                    }
                    send(shared, id, reply(MsgType::RespError, &path, &[]));
                } else {
                    let multi = k == MsgType::CmdMultiread;
                    let resp = if multi {
                        MsgType::RespMultiread
                    } else {
                        MsgType::RespList
                    };
                    let mut out = Vec::new();
                    {
                        let st = shared.lock();
                        let matching = st.entries.iter().filter(|(p, _)| p.starts_with(&path));
                        let items: Vec<_> = if multi && path.is_empty() {
                            // A full dump goes in reverse order (handle_multiread()).
                            matching.rev().collect()
                        } else {
                            matching.collect()
                        };
                        for (p, v) in items {
                            out.extend(reply(resp, p, if multi { v } else { &[] }));
                        }
                    }
                    out.extend(reply(resp, b"", &[]));
                    send(shared, id, out);
                }
                true
            }
            Some(MsgType::CmdRm) => {
                if hdr.data_len > 0 {
                    if !discard(stream, hdr.data_len) {
                        return;
                    }
                    send(shared, id, reply(MsgType::RespError, &path, &[]));
                } else {
                    let mut st = shared.lock();
                    let removed = remove(&mut st.entries, &path);
                    let kind = if removed {
                        MsgType::RespOk
                    } else {
                        MsgType::RespErrorNoent
                    };
                    if let Some(c) = st.clients.get(&id) {
                        let _ = c.out.send(reply(kind, &path, &[]));
                    }
                    if removed {
                        fire_watches(&st, &path);
                    }
                }
                true
            }
            Some(MsgType::CmdWatch) => {
                // The real daemon neither checks nor discards data_len here; a client that
                // sends data with WATCH desynchronises itself. We do the same.
                let mut st = shared.lock();
                let prefix = path.ends_with(b"/");
                st.watches.insert(
                    0,
                    Watch {
                        client: id,
                        path: path.clone(),
                        prefix,
                    },
                );
                if let Some(c) = st.clients.get(&id) {
                    let _ = c.out.send(reply(MsgType::RespOk, &path, &[]));
                }
                true
            }
            Some(MsgType::CmdUnwatch) => {
                let mut st = shared.lock();
                let pos = st
                    .watches
                    .iter()
                    .position(|w| w.client == id && w.path == path);
                let kind = match pos {
                    Some(i) => {
                        st.watches.remove(i);
                        MsgType::RespOk
                    }
                    None => MsgType::RespErrorNoent,
                };
                if let Some(c) = st.clients.get(&id) {
                    let _ = c.out.send(reply(kind, &path, &[]));
                }
                true
            }
            _ => unreachable!("non-commands were answered above"),
        };
        if !keep {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_path_rules() {
        assert!(verify_path(b"/cloudstore/role"));
        assert!(verify_path(b""), "empty prefix lists everything");
        assert!(verify_path(b"a-b"));
        assert!(!verify_path(b"-a"), "leading dash is forbidden");
        assert!(!verify_path(b"/a b"));
        assert!(!verify_path(&[b'/'; 64]));
        assert!(insertable(b"/a"));
        assert!(!insertable(b"/a/"));
        assert!(!insertable(b"a"));
    }

    #[test]
    fn watch_matching_is_exact_or_prefix() {
        let exact = Watch {
            client: 1,
            path: b"/cloudstore/role".to_vec(),
            prefix: false,
        };
        assert!(exact.matches(b"/cloudstore/role"));
        assert!(!exact.matches(b"/cloudstore/roles"));
        assert!(!exact.matches(b"/cloudstore/"));
        let dir = Watch {
            client: 1,
            path: b"/cloudstore/".to_vec(),
            prefix: true,
        };
        assert!(dir.matches(b"/cloudstore/role"));
        assert!(dir.matches(b"/cloudstore/"));
        assert!(!dir.matches(b"/cloudstore"));
    }

    #[test]
    fn remove_prefix_and_exact() {
        let mut e = BTreeMap::new();
        for k in ["/a/x", "/a/y", "/ab", "/b"] {
            e.insert(k.as_bytes().to_vec(), b"v".to_vec());
        }
        assert!(remove(&mut e, b"/a/"));
        assert_eq!(e.len(), 2);
        assert!(!remove(&mut e, b"/a"));
        assert!(remove(&mut e, b"/ab"));
        assert!(!remove(&mut e, b""));
    }
}
