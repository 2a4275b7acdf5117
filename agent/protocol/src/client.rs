//! The client side: one stream, many concurrent calls. Any thread may call. Whoever reads the
//! stream matches answers to callers by request id, delivers push notifications to a channel
//! and feeds download streams: a caller waiting for its answer reads the stream itself when
//! nobody else does (so its answer needs no thread between the stream and the caller), and a
//! background reader serves callers waiting behind it and takes over once callers have left
//! the stream alone for a moment (see [`ReadSide`]). Calls are bounded in number (the
//! in-flight window) and in time (a per-call timeout); when the connection is lost every
//! waiter wakes with `ConnectionLost`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{
    self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError,
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{ErrorCode, RemoteError};
use crate::frame::{read_frame, write_frame, FrameError, FrameType, FLAG_FINAL, MAX_PAYLOAD};
use crate::handshake::{client_handshake, HandshakeError, Hello, Session};
use crate::message::{decode_error, Body, Op, Push, Request, Response};
use crate::server::{CHUNK_SIZE, DEFAULT_MAX_STREAMS, STREAM_WINDOW};
use crate::types::Attr;

/// How a client behaves.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    pub hello: Hello,
    /// Calls (and streams) outstanding at once; more wait for a slot. 64 keeps a FUSE
    /// layer's parallel requests flowing and matches the server's default queue, so a
    /// well-behaved client never meets the server's back-pressure.
    pub max_in_flight: usize,
    /// How long a call may take, waiting for a slot included; a stream's every chunk gets
    /// this long. 60 s covers an fsync of a large file on a slow disk; past it the caller
    /// gets `TimedOut` (EIO in the filesystem) instead of hanging.
    pub timeout: Duration,
    /// Push notifications queued for a slow reader before they are dropped and replaced by
    /// one `Push::Lagged`.
    pub push_queue: usize,
    /// Streams (`Get`, uploads) at once; more wait for one to end. The server refuses
    /// streams past its own limit with `Busy`, so this matches its default.
    pub max_streams: usize,
}

impl ClientConfig {
    pub fn new(hello: Hello) -> ClientConfig {
        ClientConfig {
            hello,
            max_in_flight: 64,
            timeout: Duration::from_secs(60),
            push_queue: 4096,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

type Answer = Result<Response, RemoteError>;

/// The read half of a connection: bytes in, and the descriptor they come from, which a
/// caller reading its own answer polls so that it can give up at its deadline.
pub trait ByteStream: Read + AsFd + Send {}

impl<T: Read + AsFd + Send> ByteStream for T {}

/// How long callers must have left the stream unread before the background reader takes
/// it. Calls closer together than this read their own answers; in between, a push or the
/// end of the connection waits at most this long to be read.
const READER_GRACE: Duration = Duration::from_millis(5);

enum Pending {
    Call(SyncSender<Answer>),
    Download {
        tx: Sender<DlMsg>,
        /// Chunks the server may still send.
        allowed: Arc<AtomicU64>,
    },
    Upload {
        ctl: Arc<UploadCtl>,
        tx: SyncSender<Answer>,
    },
}

enum DlMsg {
    Data(Vec<u8>),
    End(Answer),
}

struct UploadCtl {
    /// (credit, ended)
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

/// Who reads the stream. At most one thread reads at a time: the one that took `stream` out.
/// A caller alone reads its own answer; callers that find the stream taken wait for the
/// background reader to deliver theirs, which it does for as long as any waits (several
/// calls at once, a streaming read's pieces), the way a dedicated reader would: handing the
/// stream from caller to caller instead cost each a wake-up more, and a streaming read a
/// sixth of its speed.
struct ReadSide {
    /// The stream, while nobody reads it.
    stream: Option<Box<dyn ByteStream>>,
    /// Callers that found the stream taken and wait for their answers. An entry whose
    /// answer came meanwhile stays until the next [`Shared::callers_waiting`].
    waiting: Vec<u64>,
    /// When a reader last put the stream down.
    released: Instant,
    /// The connection is gone: nobody reads again.
    ended: bool,
}

struct Shared {
    writer: Mutex<Option<Box<dyn Write + Send>>>,
    read: Mutex<ReadSide>,
    /// Signalled when the background reader may have to take the stream.
    read_cv: Condvar,
    /// Push notifications; dropped when the connection ends, which tells the receiver.
    pushes: Mutex<Option<SyncSender<Push>>>,
    /// A push was dropped on a full queue; `Push::Lagged` goes out before the next one.
    lagged: AtomicBool,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Why the connection is gone, once it is.
    lost: Mutex<Option<String>>,
    /// The last connection-level error the server sent (id 0), for the lost message.
    notice: Mutex<Option<String>>,
    in_flight: Mutex<usize>,
    slot_freed: Condvar,
    streams: Mutex<usize>,
    stream_freed: Condvar,
    next_id: AtomicU64,
    session: Session,
    config: ClientConfig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lost_error(&self) -> RemoteError {
        let why = lock(&self.lost)
            .clone()
            .unwrap_or_else(|| "the connection is closed".into());
        RemoteError::new(ErrorCode::ConnectionLost, why)
    }

    fn write(
        &self,
        kind: FrameType,
        flags: u8,
        id: u64,
        payload: &[u8],
    ) -> Result<(), RemoteError> {
        let mut w = lock(&self.writer);
        let Some(out) = w.as_mut() else {
            return Err(self.lost_error());
        };
        if let Err(e) = write_frame(&mut **out, kind, flags, id, payload) {
            *w = None;
            drop(w);
            self.set_lost(format!("writing to the server failed: {e}"));
            return Err(self.lost_error());
        }
        Ok(())
    }

    fn set_lost(&self, why: String) {
        let mut l = lock(&self.lost);
        if l.is_none() {
            *l = Some(why);
        }
        drop(l);
        // Wake slot waiters so they see the loss.
        self.slot_freed.notify_all();
        self.stream_freed.notify_all();
    }

    /// Marks the connection lost and fails every waiter.
    fn fail_all(&self, why: String) {
        let why = match lock(&self.notice).take() {
            Some(n) => format!("{why}; the server said: {n}"),
            None => why,
        };
        self.set_lost(why);
        let err = self.lost_error();
        {
            let mut st = lock(&self.read);
            st.ended = true;
            st.stream = None;
        }
        self.read_cv.notify_all();
        *lock(&self.pushes) = None;
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, p) in pending {
            match p {
                Pending::Call(tx) => {
                    let _ = tx.try_send(Err(err.clone()));
                }
                Pending::Download { tx, .. } => {
                    let _ = tx.send(DlMsg::End(Err(err.clone())));
                }
                Pending::Upload { ctl, tx } => {
                    let _ = tx.try_send(Err(err.clone()));
                    lock(&ctl.state).1 = true;
                    ctl.cv.notify_all();
                }
            }
        }
        *lock(&self.writer) = None;
    }

    fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Permit, RemoteError> {
        let mut n = lock(&self.in_flight);
        loop {
            if lock(&self.lost).is_some() {
                return Err(self.lost_error());
            }
            if *n < self.config.max_in_flight {
                *n += 1;
                return Ok(Permit {
                    shared: self.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RemoteError::new(
                    ErrorCode::TimedOut,
                    format!(
                        "{} requests in flight and none finished within {:?}",
                        self.config.max_in_flight, self.config.timeout
                    ),
                ));
            }
            n = self
                .slot_freed
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A slot if more than `spare` are free now; never waits.
    fn try_acquire(self: &Arc<Self>, spare: usize) -> Result<Option<Permit>, RemoteError> {
        let mut n = lock(&self.in_flight);
        if lock(&self.lost).is_some() {
            return Err(self.lost_error());
        }
        if *n + spare >= self.config.max_in_flight {
            return Ok(None);
        }
        *n += 1;
        Ok(Some(Permit {
            shared: self.clone(),
        }))
    }

    fn forget(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Whether a download or upload is open: its frames must be read even when no call is.
    fn streams_open(&self) -> bool {
        *lock(&self.streams) > 0
    }

    /// Whether a caller still waits for an answer (those answered meanwhile are dropped
    /// from the list).
    fn callers_waiting(&self, st: &mut ReadSide) -> bool {
        let pending = lock(&self.pending);
        st.waiting.retain(|id| pending.contains_key(id));
        !st.waiting.is_empty()
    }

    /// Puts the stream down after a caller read; the background reader takes it at once
    /// for the callers that wait behind, or for an open stream.
    fn put_down(&self, stream: Box<dyn ByteStream>) {
        let mut st = lock(&self.read);
        if st.ended {
            return;
        }
        st.stream = Some(stream);
        st.released = Instant::now();
        if self.callers_waiting(&mut st) || self.streams_open() {
            drop(st);
            self.read_cv.notify_one();
        }
    }

    /// Waits for call `id`'s answer until `deadline`, reading the stream itself when nobody
    /// else does. `None`: the deadline passed.
    fn await_answer(&self, id: u64, rx: &Receiver<Answer>, deadline: Instant) -> Option<Answer> {
        match rx.try_recv() {
            Ok(a) => return Some(a),
            Err(TryRecvError::Disconnected) => return Some(Err(self.lost_error())),
            Err(TryRecvError::Empty) => {}
        }
        {
            let mut st = lock(&self.read);
            if !st.ended {
                if let Some(stream) = st.stream.take() {
                    drop(st);
                    return self.read_for(id, rx, stream, deadline);
                }
                st.waiting.push(id);
            }
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(a) => Some(a),
            Err(RecvTimeoutError::Disconnected) => Some(Err(self.lost_error())),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.read).waiting.retain(|&w| w != id);
                rx.try_recv().ok()
            }
        }
    }

    /// Reads the stream for call `id` until its answer comes (delivering every other frame
    /// on the way) or its deadline passes, then puts the stream down.
    fn read_for(
        &self,
        id: u64,
        rx: &Receiver<Answer>,
        mut stream: Box<dyn ByteStream>,
        deadline: Instant,
    ) -> Option<Answer> {
        // The reader before may have delivered the answer after this caller last looked and
        // before it took the stream; nobody else reads now, so one look settles it.
        if let Ok(a) = rx.try_recv() {
            self.put_down(stream);
            return Some(a);
        }
        loop {
            match poll_readable(
                stream.as_fd(),
                deadline.saturating_duration_since(Instant::now()),
            ) {
                Ok(true) => {}
                Ok(false) => {
                    self.put_down(stream);
                    return None;
                }
                Err(e) => {
                    drop(stream);
                    self.fail_all(format!("waiting for the server failed: {e}"));
                    return Some(Err(self.lost_error()));
                }
            }
            // The frame has begun: its rest gets the call timeout, not what is left of this
            // caller's, and a server that stops in the middle of it has lost the stream.
            let mut rest = FrameRest {
                stream: &mut *stream,
                limit: self.config.timeout,
                readable: true,
            };
            let why = match self.read_one(&mut rest, Some(id)) {
                Ok(Some(answer)) => {
                    self.put_down(stream);
                    return Some(answer);
                }
                Ok(None) => continue,
                Err(why) => why,
            };
            drop(stream);
            self.fail_all(why);
            return Some(Err(self.lost_error()));
        }
    }

    /// Reads and delivers one frame. `Ok(Some)`: the answer of call `own`; `Err`: why the
    /// connection is over.
    fn read_one(&self, reader: &mut dyn Read, own: Option<u64>) -> Result<Option<Answer>, String> {
        let frame = match read_frame(reader) {
            Ok(f) => f,
            Err(FrameError::Eof) => return Err("the server closed the connection".to_string()),
            Err(e) if !e.is_fatal() => {
                // Boundaries are intact: note it and go on.
                *lock(&self.notice) = Some(format!("received a bad frame: {e}"));
                return Ok(None);
            }
            Err(e) => return Err(format!("reading from the server failed: {e}")),
        };
        self.dispatch(frame, own)
    }
}

/// The stream while a caller reads one frame: a read that finds nothing for `limit` fails
/// instead of blocking the caller past every deadline.
struct FrameRest<'a> {
    stream: &'a mut dyn ByteStream,
    limit: Duration,
    /// The caller has just seen the stream readable: the first read needs no poll.
    readable: bool,
}

impl Read for FrameRest<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !std::mem::take(&mut self.readable) && !poll_readable(self.stream.as_fd(), self.limit)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the server sent nothing for {:?} within a frame",
                    self.limit
                ),
            ));
        }
        self.stream.read(buf)
    }
}

/// Whether `fd` has something to read (or its end) within `timeout`.
fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: a poll that returns early would spin on the last millisecond.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One of the connection's streams, freed on drop.
struct StreamPermit {
    shared: Arc<Shared>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        *lock(&self.shared.streams) -= 1;
        self.shared.stream_freed.notify_one();
    }
}

impl Shared {
    /// Waits for a free stream. No deadline: streams in progress end by themselves (each
    /// chunk has the call timeout), and a lost connection wakes the wait.
    fn acquire_stream(self: &Arc<Self>) -> Result<StreamPermit, RemoteError> {
        let mut n = lock(&self.streams);
        loop {
            if lock(&self.lost).is_some() {
                return Err(self.lost_error());
            }
            if *n < self.config.max_streams.max(1) {
                *n += 1;
                return Ok(StreamPermit {
                    shared: self.clone(),
                });
            }
            n = self.stream_freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One slot of the in-flight window, freed on drop.
/// A request sent by [`Client::begin`] whose answer has not been collected yet. Dropping it
/// unanswered discards the answer when it comes.
pub struct PendingCall {
    shared: Arc<Shared>,
    id: u64,
    op: Op,
    timeout: Duration,
    deadline: Instant,
    rx: Receiver<Answer>,
    /// The reader delivered the answer, and with it removed the request from the table.
    answered: bool,
    _permit: Permit,
}

impl PendingCall {
    /// The answer, or an error once the call's time limit has passed.
    pub fn wait(mut self) -> Result<Response, RemoteError> {
        let (shared, id, op) = (&self.shared, self.id, self.op);
        match shared.await_answer(id, &self.rx, self.deadline) {
            Some(answer) => {
                self.answered = true;
                answer
            }
            None => {
                // The server may still run it; the cancel lets it drop a stream early, and
                // the late answer is discarded here.
                let _ = shared.write(FrameType::Cancel, 0, id, &[]);
                Err(RemoteError::new(
                    ErrorCode::TimedOut,
                    format!(
                        "{op} (request {id}) got no answer within {:?}",
                        self.timeout
                    ),
                ))
            }
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        // Not taking the table's lock after an answer matters: the reader may still hold
        // it, and waiting for it costs this thread a second wake-up.
        if !self.answered {
            self.shared.forget(self.id);
        }
    }
}

struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        *lock(&self.shared.in_flight) -= 1;
        self.shared.slot_freed.notify_one();
    }
}

/// A connection to a cloudstore server. Cheap to clone; all clones share the stream. When
/// the last clone is dropped the write side is closed, which ends the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        *lock(&self.shared.writer) = None;
    }
}

/// Closes a socket both ways when the client's writer is dropped, which also wakes the
/// reader thread blocked on the other clone.
struct ShutdownOnDrop(UnixStream);

impl Write for ShutdownOnDrop {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl Client {
    /// Runs the handshake over `reader`/`writer` and starts the reader thread. Push
    /// notifications arrive on the returned receiver (it disconnects when the connection
    /// ends).
    pub fn connect<R, W>(
        mut reader: R,
        mut writer: W,
        config: ClientConfig,
    ) -> Result<(Client, Receiver<Push>), HandshakeError>
    where
        R: ByteStream + 'static,
        W: Write + Send + 'static,
    {
        let session = client_handshake(&mut reader, &mut writer, &config.hello)?;
        let (push_tx, push_rx) = mpsc::sync_channel(config.push_queue.max(1));
        let shared = Arc::new(Shared {
            writer: Mutex::new(Some(Box::new(writer))),
            read: Mutex::new(ReadSide {
                stream: Some(Box::new(reader)),
                waiting: Vec::new(),
                released: Instant::now(),
                ended: false,
            }),
            read_cv: Condvar::new(),
            pushes: Mutex::new(Some(push_tx)),
            lagged: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            lost: Mutex::new(None),
            notice: Mutex::new(None),
            in_flight: Mutex::new(0),
            slot_freed: Condvar::new(),
            streams: Mutex::new(0),
            stream_freed: Condvar::new(),
            next_id: AtomicU64::new(1),
            session,
            config,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("cloudstore-client-reader".into())
            .spawn(move || background_reader(&s))
            .map_err(HandshakeError::Io)?;
        Ok((
            Client {
                inner: Arc::new(Inner { shared }),
            },
            push_rx,
        ))
    }

    /// [`Client::connect`] over a UNIX socket; dropping the client shuts the socket down.
    pub fn connect_unix(
        stream: UnixStream,
        config: ClientConfig,
    ) -> Result<(Client, Receiver<Push>), HandshakeError> {
        let reader = stream.try_clone()?;
        Client::connect(reader, ShutdownOnDrop(stream), config)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// What the handshake agreed on.
    pub fn session(&self) -> Session {
        self.shared().session
    }

    /// Why the connection is gone, or `None` while it is up.
    pub fn lost(&self) -> Option<String> {
        lock(&self.shared().lost).clone()
    }

    /// Closes the write side: the server finishes what it has and ends the connection.
    pub fn close(&self) {
        *lock(&self.shared().writer) = None;
    }

    /// One request, one answer, within the configured timeout. Streaming operations (`Get`,
    /// `Put`, `ParkConflict`) go through [`Client::get`] and [`Client::upload`].
    pub fn call(&self, req: Request) -> Result<Response, RemoteError> {
        self.call_timeout(req, self.shared().config.timeout)
    }

    /// [`Client::call`] with its own time limit.
    pub fn call_timeout(&self, req: Request, timeout: Duration) -> Result<Response, RemoteError> {
        self.begin(&req, timeout)?.wait()
    }

    /// Sends a request without waiting for its answer, so that one thread can have several
    /// in flight (the pieces of one large read or write) and then collect them with
    /// [`PendingCall::wait`]. `timeout` counts from now. The request is encoded at once:
    /// the caller keeps it (to send again on another connection, say).
    pub fn begin(&self, req: &Request, timeout: Duration) -> Result<PendingCall, RemoteError> {
        Self::plain_call(req)?;
        let deadline = Instant::now() + timeout;
        let permit = self.shared().acquire(deadline)?;
        self.begin_with(req, timeout, deadline, permit)
    }

    /// [`Client::begin`] only if more than `spare` slots of the in-flight window are free:
    /// for work that may as well not be done (reading ahead), so that it never waits for a
    /// slot while holding others and leaves room for what must be done. `None` if not sent.
    pub fn begin_if_room(
        &self,
        req: &Request,
        timeout: Duration,
        spare: usize,
    ) -> Result<Option<PendingCall>, RemoteError> {
        Self::plain_call(req)?;
        let deadline = Instant::now() + timeout;
        match self.shared().try_acquire(spare)? {
            Some(permit) => self.begin_with(req, timeout, deadline, permit).map(Some),
            None => Ok(None),
        }
    }

    fn plain_call(req: &Request) -> Result<(), RemoteError> {
        let op = req.op();
        if op.body() != Body::None {
            return Err(RemoteError::new(
                ErrorCode::Invalid,
                format!("{op} streams data: use Client::get or Client::upload"),
            ));
        }
        Ok(())
    }

    fn begin_with(
        &self,
        req: &Request,
        timeout: Duration,
        deadline: Instant,
        permit: Permit,
    ) -> Result<PendingCall, RemoteError> {
        let op = req.op();
        let shared = self.shared();
        let (tx, rx) = mpsc::sync_channel(1);
        let id = self.start(req, Pending::Call(tx))?;
        Ok(PendingCall {
            shared: shared.clone(),
            id,
            op,
            timeout,
            deadline,
            rx,
            answered: false,
            _permit: permit,
        })
    }

    /// Registers the request and sends it; returns its id.
    fn start(&self, req: &Request, pending: Pending) -> Result<u64, RemoteError> {
        let shared = self.shared();
        let payload = req.encode();
        if payload.len() > MAX_PAYLOAD {
            return Err(RemoteError::new(
                ErrorCode::TooLarge,
                format!(
                    "{}: the request is {} bytes; the frame limit is {MAX_PAYLOAD}",
                    req.op(),
                    payload.len()
                ),
            ));
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            // Checked under the pending lock, which fail_all takes: a request registered
            // here is either failed by it or sees the loss now.
            let mut p = lock(&shared.pending);
            if lock(&shared.lost).is_some() {
                return Err(shared.lost_error());
            }
            p.insert(id, pending);
        }
        let sent = shared.write(FrameType::Request, 0, id, &payload);
        crate::buffers::give_back(payload);
        if let Err(e) = sent {
            shared.forget(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Starts a streaming `Get` of `path` (or of its kept version). Read the content from
    /// the returned [`Download`], then call [`Download::finish`] for the attributes.
    pub fn get(&self, path: &str, version: Option<u64>) -> Result<Download, RemoteError> {
        let shared = self.shared().clone();
        let stream = shared.acquire_stream()?;
        let deadline = Instant::now() + shared.config.timeout;
        let permit = shared.acquire(deadline)?;
        let (tx, rx) = mpsc::channel();
        let allowed = Arc::new(AtomicU64::new(STREAM_WINDOW as u64));
        let req = Request::Get {
            path: path.to_owned(),
            version,
        };
        let id = self.start(
            &req,
            Pending::Download {
                tx,
                allowed: allowed.clone(),
            },
        )?;
        // Its chunks must be read whether or not a call is.
        shared.read_cv.notify_one();
        Ok(Download {
            shared,
            id,
            rx,
            allowed,
            buf: Vec::new(),
            pos: 0,
            end: None,
            _permit: permit,
            _stream: stream,
        })
    }

    /// Starts an upload request (`Put` or `ParkConflict`): write the content to the returned
    /// [`Upload`], then [`Upload::finish`] for the answer. Dropping it unfinished cancels the
    /// upload, and the server discards what it received.
    pub fn upload(&self, req: Request) -> Result<Upload, RemoteError> {
        let op = req.op();
        if op.body() != Body::Upload {
            return Err(RemoteError::new(
                ErrorCode::Invalid,
                format!("{op} does not upload data"),
            ));
        }
        let shared = self.shared().clone();
        let stream = shared.acquire_stream()?;
        let deadline = Instant::now() + shared.config.timeout;
        let permit = shared.acquire(deadline)?;
        let ctl = Arc::new(UploadCtl {
            state: Mutex::new((STREAM_WINDOW as u64, false)),
            cv: Condvar::new(),
        });
        let (tx, rx) = mpsc::sync_channel(1);
        let id = self.start(
            &req,
            Pending::Upload {
                ctl: ctl.clone(),
                tx,
            },
        )?;
        // Its credits must be read whether or not a call is.
        shared.read_cv.notify_one();
        Ok(Upload {
            shared,
            id,
            ctl,
            rx,
            answer: None,
            buf: Vec::with_capacity(CHUNK_SIZE),
            finished: false,
            _permit: permit,
            _stream: stream,
        })
    }
}

/// A file being downloaded: implements [`Read`]. Dropping it before the end cancels the
/// stream.
pub struct Download {
    shared: Arc<Shared>,
    id: u64,
    rx: Receiver<DlMsg>,
    allowed: Arc<AtomicU64>,
    buf: Vec<u8>,
    pos: usize,
    end: Option<Answer>,
    _permit: Permit,
    _stream: StreamPermit,
}

impl Download {
    /// Reads (and discards) whatever was not read, then returns the attributes the server
    /// reports for the content it sent. Fails if the stream failed at any point.
    pub fn finish(mut self) -> Result<Attr, RemoteError> {
        let mut sink = [0u8; 64 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match self.end.take() {
            Some(Ok(Response::Got { attr })) => Ok(attr),
            Some(Ok(other)) => Err(RemoteError::new(
                ErrorCode::Malformed,
                format!("Get answered with {} instead of Got", other.name()),
            )),
            Some(Err(e)) => Err(e),
            None => Err(self.shared.lost_error()),
        }
    }
}

impl Read for Download {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if let Some(end) = &self.end {
                return match end {
                    Ok(_) => Ok(0),
                    Err(e) => Err(io::Error::other(e.clone())),
                };
            }
            match self.rx.recv_timeout(self.shared.config.timeout) {
                Ok(DlMsg::Data(d)) => {
                    self.allowed.fetch_add(1, Ordering::AcqRel);
                    if let Err(e) =
                        self.shared
                            .write(FrameType::Credit, 0, self.id, &1u32.to_le_bytes())
                    {
                        self.end = Some(Err(e));
                    }
                    crate::buffers::give_back(std::mem::replace(&mut self.buf, d));
                    self.pos = 0;
                }
                Ok(DlMsg::End(a)) => self.end = Some(a),
                Err(RecvTimeoutError::Timeout) => {
                    self.end = Some(Err(RemoteError::new(
                        ErrorCode::TimedOut,
                        format!(
                            "Get (request {}): no data within {:?}",
                            self.id, self.shared.config.timeout
                        ),
                    )));
                    self.shared.forget(self.id);
                    let _ = self.shared.write(FrameType::Cancel, 0, self.id, &[]);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.end = Some(Err(self.shared.lost_error()))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if self.end.is_none() {
            self.shared.forget(self.id);
            let _ = self.shared.write(FrameType::Cancel, 0, self.id, &[]);
        }
    }
}

/// A file being uploaded: implements [`Write`]. Nothing is visible on the server until
/// [`Upload::finish`] succeeds.
pub struct Upload {
    shared: Arc<Shared>,
    id: u64,
    ctl: Arc<UploadCtl>,
    rx: Receiver<Answer>,
    answer: Option<Answer>,
    buf: Vec<u8>,
    finished: bool,
    _permit: Permit,
    _stream: StreamPermit,
}

impl Upload {
    fn send(&mut self, last: bool) -> Result<(), RemoteError> {
        let deadline = Instant::now() + self.shared.config.timeout;
        {
            let mut st = lock(&self.ctl.state);
            loop {
                if st.1 {
                    drop(st);
                    return Err(self.early_answer());
                }
                if st.0 > 0 {
                    st.0 -= 1;
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(RemoteError::new(
                        ErrorCode::TimedOut,
                        format!(
                            "upload (request {}): the server took no data for {:?}",
                            self.id, self.shared.config.timeout
                        ),
                    ));
                }
                st = self
                    .ctl
                    .cv
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let flags = if last { FLAG_FINAL } else { 0 };
        let r = self
            .shared
            .write(FrameType::Chunk, flags, self.id, &self.buf);
        self.buf.clear();
        r
    }

    /// The server answered before the upload ended (an error, e.g. the path is refused).
    fn early_answer(&mut self) -> RemoteError {
        if self.answer.is_none() {
            self.answer = self.rx.try_recv().ok();
        }
        match &self.answer {
            Some(Err(e)) => e.clone(),
            Some(Ok(r)) => RemoteError::new(
                ErrorCode::UnexpectedFrame,
                format!("the server answered {} before the upload ended", r.name()),
            ),
            None => self.shared.lost_error(),
        }
    }

    /// Sends the last chunk and waits for the server's answer: for `Put`, the new file's
    /// attributes once it is on stable storage and in place.
    pub fn finish(mut self) -> Result<Response, RemoteError> {
        self.finished = true;
        self.send(true)?;
        match self.rx.recv_timeout(self.shared.config.timeout) {
            Ok(a) => a,
            Err(RecvTimeoutError::Timeout) => {
                self.shared.forget(self.id);
                Err(RemoteError::new(
                    ErrorCode::TimedOut,
                    format!(
                        "upload (request {}): no answer within {:?} after the last chunk",
                        self.id, self.shared.config.timeout
                    ),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.shared.lost_error()),
        }
    }

    /// Abandons the upload: the server discards what it received.
    pub fn abort(mut self) {
        self.cancel();
    }

    fn cancel(&mut self) {
        self.finished = true;
        self.shared.forget(self.id);
        let _ = self.shared.write(FrameType::Cancel, 0, self.id, &[]);
    }
}

impl Write for Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK_SIZE {
            self.send(false).map_err(io::Error::other)?;
        }
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Does nothing: data goes out in whole chunks, and the last one with `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel();
        }
    }
}

impl Shared {
    /// Delivers one frame to whoever waits for it (or drops it: a call that gave up).
    /// `Ok(Some)`: the answer of call `own`, returned instead; `Err`: the stream cannot be
    /// trusted any more, and why.
    fn dispatch(
        &self,
        frame: crate::frame::Frame,
        own: Option<u64>,
    ) -> Result<Option<Answer>, String> {
        let id = frame.id;
        match frame.kind {
            FrameType::Response | FrameType::Error => {
                let answer: Answer = if frame.kind == FrameType::Response {
                    Response::decode_owned(frame.payload).map_err(|e| {
                        RemoteError::new(
                            ErrorCode::Malformed,
                            format!("the server's answer to request {id} is malformed: {e}"),
                        )
                    })
                } else {
                    Err(decode_error(&frame.payload).unwrap_or_else(|e| {
                        RemoteError::new(
                            ErrorCode::Malformed,
                            format!("the server's error for request {id} is malformed: {e}"),
                        )
                    }))
                };
                if id == 0 {
                    if let Err(e) = answer {
                        *lock(&self.notice) = Some(e.to_string());
                    }
                    return Ok(None);
                }
                // A missing id is a call that timed out or was cancelled: drop the answer.
                match lock(&self.pending).remove(&id) {
                    Some(Pending::Call(_)) if Some(id) == own => return Ok(Some(answer)),
                    Some(Pending::Call(tx)) => {
                        let _ = tx.try_send(answer);
                    }
                    Some(Pending::Download { tx, .. }) => {
                        let _ = tx.send(DlMsg::End(answer));
                    }
                    Some(Pending::Upload { ctl, tx }) => {
                        let _ = tx.try_send(answer);
                        lock(&ctl.state).1 = true;
                        ctl.cv.notify_all();
                    }
                    None => {}
                }
            }
            FrameType::Chunk => {
                let pending = lock(&self.pending);
                if let Some(Pending::Download { tx, allowed }) = pending.get(&id) {
                    if allowed.load(Ordering::Acquire) == 0 {
                        return Err(format!(
                            "the server sent request {id} a chunk without credit"
                        ));
                    }
                    allowed.fetch_sub(1, Ordering::AcqRel);
                    let _ = tx.send(DlMsg::Data(frame.payload));
                }
            }
            FrameType::Credit => {
                let Ok(b) = <[u8; 4]>::try_from(frame.payload.as_slice()) else {
                    return Err(format!(
                        "the server sent a malformed credit frame for request {id}"
                    ));
                };
                let n = u32::from_le_bytes(b) as u64;
                if let Some(Pending::Upload { ctl, .. }) = lock(&self.pending).get(&id) {
                    let mut st = lock(&ctl.state);
                    st.0 = (st.0 + n).min(STREAM_WINDOW as u64 * 2);
                    ctl.cv.notify_all();
                }
            }
            FrameType::Push => {
                let p = match Push::decode(&frame.payload) {
                    Ok(p) => p,
                    Err(e) => {
                        *lock(&self.notice) = Some(format!("malformed push: {e}"));
                        return Ok(None);
                    }
                };
                let pushes = lock(&self.pushes);
                let Some(pushes) = pushes.as_ref() else {
                    return Ok(None);
                };
                if self.lagged.load(Ordering::Relaxed) {
                    match pushes.try_send(Push::Lagged) {
                        Ok(()) => self.lagged.store(false, Ordering::Relaxed),
                        Err(TrySendError::Full(_)) => return Ok(None),
                        Err(TrySendError::Disconnected(_)) => {}
                    }
                }
                if let Err(TrySendError::Full(_)) = pushes.try_send(p) {
                    self.lagged.store(true, Ordering::Relaxed);
                }
            }
            FrameType::Request | FrameType::Cancel => {
                return Err(format!(
                    "the server sent a {:?} frame, which only clients send",
                    frame.kind
                ))
            }
        }
        Ok(None)
    }
}

/// Reads the stream when no caller does: for the callers waiting behind another reader, for
/// an open download or upload, and, once callers have left the stream alone for
/// [`READER_GRACE`], for pushes and the end of the connection. Puts it down as soon as no
/// caller waits and no stream is open, so that the next call reads its own answer.
fn background_reader(shared: &Shared) {
    loop {
        let mut stream = {
            let mut st = lock(&shared.read);
            loop {
                if st.ended {
                    return;
                }
                if st.stream.is_some()
                    && (shared.callers_waiting(&mut st)
                        || shared.streams_open()
                        || st.released.elapsed() >= READER_GRACE)
                {
                    break st.stream.take().expect("checked above");
                }
                st = shared
                    .read_cv
                    .wait_timeout(st, READER_GRACE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        loop {
            if let Err(why) = shared.read_one(&mut *stream, None) {
                drop(stream);
                shared.fail_all(why);
                return;
            }
            let mut st = lock(&shared.read);
            if !shared.callers_waiting(&mut st) && !shared.streams_open() {
                st.stream = Some(stream);
                st.released = Instant::now();
                break;
            }
        }
    }
}
