//! The one long-lived protocol stream to storage, re-made when it breaks.
//!
//! Every call carries a deadline (the mount's request timeout). A call that meets a lost
//! connection waits for the next connection and is sent again, so a write the storage never
//! acknowledged is replayed rather than lost; only when the deadline passes does the
//! caller get an error (EIO). Reconnection backs off from 100 ms to 2 s so a storage qube
//! that is down costs a connection attempt every few seconds, not a busy loop.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cloudstore_protocol::{
    Client, ClientConfig, ErrorCode, Expect, Hello, Push, RemoteError, Request, Response, Role,
};

use super::{lock, Connector, Fail, FsStatus};

/// First pause after a failed connection attempt; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts: a restarted storage is found within 2 s.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Called with each new connection (its generation and push channel), outside every lock.
pub(crate) type ConnectHook =
    Box<dyn Fn(&Arc<Client>, u64, std::sync::mpsc::Receiver<Push>) + Send + Sync>;

struct State {
    client: Option<Arc<Client>>,
    /// Counts connections; handles are only valid on the generation that opened them.
    gen: u64,
    connecting: bool,
    next_try: Instant,
    backoff: Duration,
}

pub(crate) struct Storage {
    connector: Arc<dyn Connector>,
    pub(crate) timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
    pub(crate) status: Arc<FsStatus>,
    hook: Mutex<Option<Arc<ConnectHook>>>,
    volume: String,
}

/// Whether the error means "the stream is gone" (retry on the next connection).
fn is_lost(e: &RemoteError) -> bool {
    matches!(e.code, ErrorCode::ConnectionLost)
}

impl Storage {
    pub(crate) fn new(
        connector: Arc<dyn Connector>,
        volume: String,
        timeout: Duration,
        status: Arc<FsStatus>,
    ) -> Storage {
        Storage {
            connector,
            timeout,
            state: Mutex::new(State {
                client: None,
                gen: 0,
                connecting: false,
                next_try: Instant::now(),
                backoff: BACKOFF_MIN,
            }),
            changed: Condvar::new(),
            status,
            hook: Mutex::new(None),
            volume,
        }
    }

    pub(crate) fn set_hook(&self, hook: ConnectHook) {
        *lock(&self.hook) = Some(Arc::new(hook));
    }

    /// Drops the current connection (if it is still `gen`) so the next call reconnects.
    pub(crate) fn drop_connection(&self, gen: u64) {
        let mut st = lock(&self.state);
        if st.gen == gen {
            if let Some(c) = st.client.take() {
                c.close();
            }
            self.status.set_connected(false);
        }
    }

    /// The live connection if there is one; never connects.
    pub(crate) fn current(&self) -> Option<(Arc<Client>, u64)> {
        let st = lock(&self.state);
        st.client
            .as_ref()
            .filter(|c| c.lost().is_none())
            .map(|c| (c.clone(), st.gen))
    }

    /// The live connection, connecting (or waiting for another thread's attempt) until
    /// `deadline`.
    pub(crate) fn client(&self, deadline: Instant) -> Result<(Arc<Client>, u64), Fail> {
        let mut st = lock(&self.state);
        loop {
            if let Some(c) = &st.client {
                match c.lost() {
                    None => return Ok((c.clone(), st.gen)),
                    Some(why) => {
                        tracing::warn!(volume = %self.volume, "connection to storage lost: {why}");
                        self.status.set_connected(false);
                        self.status
                            .set_error(format!("connection to storage lost: {why}"));
                        st.client = None;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Fail::timeout(format!(
                    "storage unreachable for {:?}{}",
                    self.timeout,
                    self.status
                        .last_error()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )));
            }
            if st.connecting || now < st.next_try {
                let until = if st.connecting {
                    deadline
                } else {
                    st.next_try.min(deadline)
                };
                st = self
                    .changed
                    .wait_timeout(st, until.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            st.connecting = true;
            drop(st);
            let made = self.connect_once();
            st = lock(&self.state);
            st.connecting = false;
            match made {
                Ok((client, pushes)) => {
                    st.gen += 1;
                    st.backoff = BACKOFF_MIN;
                    st.client = Some(client.clone());
                    let gen = st.gen;
                    self.status.set_connected(true);
                    self.changed.notify_all();
                    drop(st);
                    tracing::info!(volume = %self.volume, generation = gen, "connected to storage");
                    let hook = lock(&self.hook).clone();
                    if let Some(h) = hook {
                        h(&client, gen, pushes);
                    }
                    st = lock(&self.state);
                }
                Err(e) => {
                    let msg = format!("cannot connect to storage: {e:#}");
                    if self.status.last_error().as_deref() != Some(msg.as_str()) {
                        tracing::warn!(volume = %self.volume, "{msg}");
                    }
                    self.status.set_error(msg);
                    st.next_try = Instant::now() + st.backoff;
                    st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                    self.changed.notify_all();
                }
            }
        }
    }

    fn connect_once(&self) -> anyhow::Result<(Arc<Client>, std::sync::mpsc::Receiver<Push>)> {
        let (r, w) = self.connector.connect()?;
        let mut cfg = ClientConfig::new(Hello::new(Role::Volume));
        cfg.timeout = self.timeout;
        // The handshake has no time limit of its own: a stream that opens but never
        // answers (a hung qrexec call) must not hold the reconnection forever.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("cloudstore-handshake".into())
            .spawn(move || {
                let _ = tx.send(Client::connect(r, w, cfg));
            })?;
        match rx.recv_timeout(self.timeout) {
            Ok(res) => {
                let (client, pushes) = res?;
                Ok((Arc::new(client), pushes))
            }
            Err(_) => anyhow::bail!(
                "storage did not answer the protocol handshake within {:?}",
                self.timeout
            ),
        }
    }

    /// Sends the request built for the current connection; retries on a lost connection
    /// until the deadline. `build` is called once per attempt with the connection and its
    /// generation (so it can re-open handles). Returns the answer and whether an earlier
    /// attempt may have reached storage (for operations that are not idempotent).
    pub(crate) fn call_with(
        &self,
        mut build: impl FnMut(&Arc<Client>, u64, Instant) -> Result<Request, Fail>,
    ) -> Result<(Response, bool, u64), Fail> {
        let (mut answers, maybe_sent, gen) =
            self.call_all(1, |client, gen, deadline, _| build(client, gen, deadline))?;
        Ok((answers.remove(0), maybe_sent, gen))
    }

    /// `n` requests sent together on one connection before any answer is awaited (the
    /// pieces of one large read or write: one round trip instead of `n`), answers in order.
    /// A lost connection sends them all again on the next one, so each must be safe to
    /// repeat. `build` makes request `i` for a connection, as in [`Storage::call_with`].
    pub(crate) fn call_all(
        &self,
        n: usize,
        build: impl FnMut(&Arc<Client>, u64, Instant, usize) -> Result<Request, Fail>,
    ) -> Result<(Vec<Response>, bool, u64), Fail> {
        self.call_all_by(Instant::now() + self.timeout, n, build)
    }

    /// [`Storage::call_all`], answered by `deadline` rather than within the time limit
    /// from now.
    pub(crate) fn call_all_by(
        &self,
        deadline: Instant,
        n: usize,
        mut build: impl FnMut(&Arc<Client>, u64, Instant, usize) -> Result<Request, Fail>,
    ) -> Result<(Vec<Response>, bool, u64), Fail> {
        let mut maybe_sent = false;
        'attempt: loop {
            let (client, gen) = self.client(deadline)?;
            let mut pending = Vec::with_capacity(n);
            for i in 0..n {
                let req = match build(&client, gen, deadline, i) {
                    Ok(r) => r,
                    Err(f) if f.is(ErrorCode::ConnectionLost) => {
                        self.drop_connection(gen);
                        continue 'attempt;
                    }
                    Err(f) => return Err(f),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match client.begin(&req, left.max(Duration::from_millis(1))) {
                    Ok(p) => pending.push(p),
                    Err(e) => match self.retry_after(e, gen, &mut maybe_sent) {
                        Some(f) => return Err(f),
                        None => continue 'attempt,
                    },
                }
            }
            let mut answers = Vec::with_capacity(n);
            for p in pending {
                match p.wait() {
                    Ok(r) => answers.push(r),
                    Err(e) => match self.retry_after(e, gen, &mut maybe_sent) {
                        Some(f) => return Err(f),
                        None => continue 'attempt,
                    },
                }
            }
            return Ok((answers, maybe_sent, gen));
        }
    }

    /// What a failed call means: `None` to try again on a new connection (this one is
    /// lost, and the request may have reached storage), or the failure to report.
    pub(crate) fn retry_after(
        &self,
        e: RemoteError,
        gen: u64,
        maybe_sent: &mut bool,
    ) -> Option<Fail> {
        if is_lost(&e) {
            *maybe_sent = true;
            self.drop_connection(gen);
            return None;
        }
        if e.code == ErrorCode::TimedOut {
            return Some(Fail::timeout(e.message));
        }
        Some(Fail::remote(e, *maybe_sent))
    }

    /// A path-only request, retried across reconnections.
    pub(crate) fn call(&self, req: Request) -> Result<Response, Fail> {
        self.call_with(|_, _, _| Ok(req.clone())).map(|(r, _, _)| r)
    }

    /// Replaces `path` with `data` atomically (small files: diriv, long-name files).
    pub(crate) fn put(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        expect: Expect,
    ) -> Result<(), Fail> {
        let deadline = Instant::now() + self.timeout;
        let mut maybe_sent = false;
        loop {
            let (client, gen) = self.client(deadline)?;
            let attempt = Self::put_once(&client, path, data, mode, expect);
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if is_lost(&e) => {
                    maybe_sent = true;
                    self.drop_connection(gen);
                    if Instant::now() >= deadline {
                        return Err(Fail::timeout(e.message));
                    }
                }
                Err(e) => return Err(Fail::remote(e, maybe_sent)),
            }
        }
    }

    fn put_once(
        client: &Client,
        path: &str,
        data: &[u8],
        mode: u32,
        expect: Expect,
    ) -> Result<Response, RemoteError> {
        let mut up = client.upload(Request::Put {
            path: path.to_owned(),
            expect,
            mode: Some(mode),
            mtime: None,
        })?;
        if let Err(e) = up.write_all(data) {
            let code = if client.lost().is_some() {
                ErrorCode::ConnectionLost
            } else {
                ErrorCode::Io
            };
            return Err(RemoteError::new(code, format!("uploading {path}: {e}")));
        }
        up.finish()
    }
}
