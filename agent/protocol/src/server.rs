//! The server side of a connection: handshake, then a reader loop on the calling thread that
//! decodes frames and hands requests to a small bounded pool of workers running the
//! [`Handler`] (or runs the ones the handler calls quick itself, see [`Handler::inline`]);
//! responses go out through one writer lock.
//!
//! Bounds: at most `workers + queue` requests are held at once; when the queue is full the
//! reader stops reading, so a flood fills the peer's pipe instead of our memory. Streams are
//! credit-limited (see [`STREAM_WINDOW`]) and at most `max_streams` run at once.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{ErrorCode, RemoteError};
use crate::frame::{read_frame, write_frame, FrameError, FrameType, FLAG_FINAL, MAX_PAYLOAD};
use crate::handshake::{features, server_handshake, Accept, HandshakeError, Session};
use crate::message::{encode_error, Body, Op, Push, Request, Response, MAX_IO};
use crate::queue::{Lanes, WorkQueue};

/// Chunks a stream's sender may have outstanding before the receiver grants more credit.
/// With [`CHUNK_SIZE`] chunks, 4 keep 1 MiB in flight per stream — enough to cover a pipe's
/// round trip — while a connection's stream buffers stay bounded (max_streams × 4 × at most
/// 1 MiB).
pub const STREAM_WINDOW: u32 = 4;

/// Size of the chunks this implementation sends: 256 KiB amortises the 16-byte header and
/// the per-frame syscalls without holding the writer lock for long.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Upload and download streams a connection runs at once unless configured otherwise
/// ([`ServerConfig::max_streams`]); the client keeps to it ([`crate::ClientConfig`]).
pub const DEFAULT_MAX_STREAMS: usize = 4;

/// The connection's read buffer: several small requests, or the head of a large one (whose
/// payload beyond it is read straight into its own buffer).
const READ_BUFFER: usize = 32 * 1024;

/// How a server runs one connection.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub accept: Accept,
    /// Threads running the handler (at least 2): requests of one connection run concurrently
    /// up to this.
    pub workers: usize,
    /// Requests decoded and waiting for a worker before the reader stops reading.
    pub queue: usize,
    /// Upload and download streams at once; more are refused with `Busy`. Clamped below
    /// `workers`: a stream's handler waits on the reader (for chunks or credit) while the
    /// reader may wait for a free worker, so at least one worker must never be streaming.
    pub max_streams: usize,
}

impl ServerConfig {
    pub fn new(accept: Accept) -> ServerConfig {
        ServerConfig {
            accept,
            // A consumer's FUSE layer issues a handful of requests at once; 8 workers keep
            // the disk busy without many idle threads per connection.
            workers: 8,
            // Matches the client's default in-flight window, so a well-behaved client never
            // meets the back-pressure.
            queue: 64,
            // Half the workers: four transfers at once saturate a disk, and the other half
            // stays free for requests that do not stream.
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// Serves one connection's requests. One handler per connection: per-connection state
/// (open handles, subscriptions) lives in it.
pub trait Handler: Sync {
    /// Handles one request. Called from several worker threads at once.
    fn handle(&self, req: Request, call: &mut Call<'_>) -> Result<Response, RemoteError>;

    /// Whether `req` is quick enough to run on the reading thread instead of a worker. A
    /// request handed to a worker pays a thread wake-up, which is most of the cost of a
    /// lookup; one run here delays the frames behind it, so only short requests that never
    /// wait on another request (a stream's chunks, a lock a streaming handler holds) belong.
    fn inline(&self, _req: &Request) -> bool {
        false
    }

    /// The lane `req` runs in, if it must run after the requests sent before it in the same
    /// lane: requests of one lane run one at a time in the order they arrived (on workers,
    /// never on the reading thread); others run as workers take them, in any order. Only
    /// for requests without a stream.
    fn lane(&self, _req: &Request) -> Option<u64> {
        None
    }

    /// Called once after the connection ended and every request finished: release handles,
    /// end sessions.
    fn closed(&self) {}
}

/// How a connection ended, for the caller's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub requests: u64,
    pub errors: u64,
    pub protocol_errors: u64,
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// handshake failed: {0}
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// connection closed after a protocol violation: {0}
    #[error("connection closed after a protocol violation: {0}")]
    Protocol(String),
    /// connection closed after an I/O error: {0}
    #[error("connection closed after an I/O error: {0}")]
    Io(io::Error),
}

/// One request being handled: its id, and its stream if it has one.
pub struct Call<'a> {
    id: u64,
    op: Op,
    conn: &'a Arc<Conn>,
    upload: Option<UploadReader>,
    download: Option<DownloadWriter>,
}

impl Call<'_> {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn op(&self) -> Op {
        self.op
    }

    pub fn session(&self) -> &Session {
        &self.conn.session
    }

    /// The uploaded content of a `Put` or `ParkConflict`: reads until the client's final
    /// chunk; fails if the client cancels or the connection ends first (so a partial upload
    /// is never taken for a whole one).
    pub fn upload(&mut self) -> Option<&mut UploadReader> {
        self.upload.as_mut()
    }

    /// Where a `Get` writes the file's content; each write blocks while the client has no
    /// credit. Return `Response::Got` when done.
    pub fn download(&mut self) -> Option<&mut DownloadWriter> {
        self.download.as_mut()
    }

    /// A handle for sending push notifications from any thread, for as long as the
    /// connection lasts.
    pub fn pusher(&self) -> Pusher {
        Pusher {
            conn: self.conn.clone(),
        }
    }
}

/// Sends [`Push`] frames on a connection.
#[derive(Clone)]
pub struct Pusher {
    conn: Arc<Conn>,
}

impl Pusher {
    /// Sends one notification. Fails with `Unsupported` if the client did not ask for pushes
    /// and with `ConnectionLost` once the connection ended.
    pub fn send(&self, p: &Push) -> Result<(), RemoteError> {
        if self.conn.session.features & features::PUSH == 0 {
            return Err(RemoteError::new(
                ErrorCode::Unsupported,
                "the client did not ask for push notifications",
            ));
        }
        self.conn.write(FrameType::Push, 0, 0, &p.encode())
    }

    pub fn is_closed(&self) -> bool {
        self.conn.closed.load(Ordering::Acquire)
    }
}

pub(crate) struct Conn {
    /// `None` once the connection ended: dropping the writer closes our side of the stream
    /// even while a [`Pusher`] is still held somewhere.
    writer: Mutex<Option<Box<dyn Write + Send>>>,
    session: Session,
    closed: AtomicBool,
    streams: Mutex<HashMap<u64, Stream>>,
    in_flight: Mutex<HashSet<u64>>,
}

enum Stream {
    Upload {
        tx: Sender<UploadMsg>,
        /// Chunks the client may still send.
        credit: Arc<AtomicU64>,
    },
    Download(Arc<DownloadCtl>),
}

enum UploadMsg {
    Data(Vec<u8>),
    Final(Vec<u8>),
    Cancelled,
}

struct DownloadCtl {
    state: Mutex<(u64, bool)>, // (credit, cancelled)
    cv: Condvar,
}

impl Conn {
    fn write(
        &self,
        kind: FrameType,
        flags: u8,
        id: u64,
        payload: &[u8],
    ) -> Result<(), RemoteError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(lost("the connection is closed"));
        }
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            return Err(lost("the connection is closed"));
        };
        write_frame(&mut **w, kind, flags, id, payload).map_err(|e| {
            self.closed.store(true, Ordering::Release);
            lost(&format!("writing a {kind:?} frame failed: {e}"))
        })
    }

    fn send_error(&self, id: u64, e: &RemoteError) {
        let _ = self.write(FrameType::Error, 0, id, &encode_error(e));
    }

    fn end_streams(&self) {
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, s) in streams {
            match s {
                Stream::Upload { tx, .. } => drop(tx),
                Stream::Download(ctl) => ctl.cancel(),
            }
        }
    }
}

fn lost(why: &str) -> RemoteError {
    RemoteError::new(ErrorCode::ConnectionLost, why)
}

impl DownloadCtl {
    fn cancel(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }
}

/// The content of an upload, as a [`Read`]. Each chunk consumed grants the client one more.
pub struct UploadReader {
    id: u64,
    conn: Arc<Conn>,
    rx: Receiver<UploadMsg>,
    credit: Arc<AtomicU64>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    bytes: u64,
}

impl UploadReader {
    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Read for UploadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let msg = self.rx.recv().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connection ended before the upload's final chunk",
                )
            })?;
            let data = match msg {
                UploadMsg::Data(d) => d,
                UploadMsg::Final(d) => {
                    self.done = true;
                    d
                }
                UploadMsg::Cancelled => {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "the client cancelled the upload",
                    ))
                }
            };
            if !self.done {
                self.credit.fetch_add(1, Ordering::AcqRel);
                self.conn
                    .write(FrameType::Credit, 0, self.id, &1u32.to_le_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))?;
            }
            crate::buffers::give_back(std::mem::replace(&mut self.buf, data));
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Where a download's content goes, as a [`Write`]: data is cut into [`CHUNK_SIZE`] chunks,
/// each sent when the client has credit.
pub struct DownloadWriter {
    id: u64,
    conn: Arc<Conn>,
    ctl: Arc<DownloadCtl>,
    buf: Vec<u8>,
    bytes: u64,
}

impl DownloadWriter {
    /// Bytes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        {
            let mut st = self.ctl.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if st.1 || self.conn.closed.load(Ordering::Acquire) {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client cancelled the download or the connection ended",
                    ));
                }
                if st.0 > 0 {
                    st.0 -= 1;
                    break;
                }
                // Woken by credit, cancel or the end of the connection; the timeout only
                // re-checks `closed`, which a failed write elsewhere sets without notifying.
                st = self
                    .ctl
                    .cv
                    .wait_timeout(st, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let r = self.conn.write(FrameType::Chunk, 0, self.id, &self.buf);
        self.buf.clear();
        r.map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))
    }
}

impl Write for DownloadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK_SIZE {
            self.send_chunk()?;
        }
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    /// Sends what is buffered as a chunk (waiting for credit).
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send_chunk()
        }
    }
}

struct Job {
    id: u64,
    req: Request,
    lane: Option<u64>,
    upload: Option<UploadReader>,
    download: Option<Arc<DownloadCtl>>,
}

/// Serves one connection until the client closes it: handshake, then requests. Returns when
/// the stream ended and every request finished; `Ok` for a clean end, an error naming the
/// violation or I/O failure otherwise (after an `Error` frame with id 0 telling the client,
/// when the stream still takes writes). Bad requests and malformed frames whose boundaries are
/// intact are answered with `Error` frames and the connection goes on.
pub fn serve<R, W, H>(
    reader: R,
    mut writer: W,
    config: &ServerConfig,
    handler: &H,
) -> Result<ServeStats, ServeError>
where
    R: Read,
    W: Write + Send + 'static,
    H: Handler,
{
    let workers = config.workers.max(2);
    let config = &ServerConfig {
        workers,
        max_streams: config.max_streams.clamp(1, workers - 1),
        ..*config
    };
    // A request is a frame head and a payload, most a few hundred bytes: read unbuffered,
    // each cost two `recv` calls, and requests sent together as many more.
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, reader);
    let session = server_handshake(&mut reader, &mut writer, &config.accept)?;
    let conn = Arc::new(Conn {
        writer: Mutex::new(Some(Box::new(writer))),
        session,
        closed: AtomicBool::new(false),
        streams: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashSet::new()),
    });
    let mut stats = ServeStats::default();
    let errors = AtomicU64::new(0);
    let jobs = WorkQueue::<Job>::new(config.queue);
    let lanes = Lanes::<Job>::new(config.queue);
    let result = std::thread::scope(|s| {
        for _ in 0..config.workers {
            let (jobs, lanes, conn, errors) = (&jobs, &lanes, &conn, &errors);
            s.spawn(move || {
                while let Some(mut job) = jobs.pop() {
                    loop {
                        let lane = job.lane;
                        if !run_job(conn, handler, job) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        // The lane's next request runs here, after this one, not queued
                        // behind requests that came after it.
                        match lane.and_then(|l| lanes.next(l)) {
                            Some(next) => job = next,
                            None => break,
                        }
                    }
                }
            });
        }
        let r = read_loop(
            &mut reader,
            &conn,
            config,
            handler,
            &jobs,
            &lanes,
            &mut stats,
        );
        lanes.close();
        jobs.close();
        conn.end_streams();
        r
    });
    // Every worker has finished; pushers fail from now on.
    conn.closed.store(true, Ordering::Release);
    drop(conn.writer.lock().unwrap_or_else(|p| p.into_inner()).take());
    handler.closed();
    stats.errors += errors.load(Ordering::Relaxed);
    result.map(|()| stats)
}

/// Runs one request; false if it ended in an error.
fn run_job<H: Handler>(conn: &Arc<Conn>, handler: &H, job: Job) -> bool {
    let op = job.req.op();
    let mut call = Call {
        id: job.id,
        op,
        conn,
        upload: job.upload,
        download: job.download.map(|ctl| DownloadWriter {
            id: job.id,
            conn: conn.clone(),
            ctl,
            buf: Vec::new(),
            bytes: 0,
        }),
    };
    let result = catch_unwind(AssertUnwindSafe(|| handler.handle(job.req, &mut call)))
        .unwrap_or_else(|_| {
            Err(RemoteError::new(
                ErrorCode::Internal,
                format!("the server failed internally handling {op}"),
            ))
        });
    let result = match (result, call.download.as_mut()) {
        (Ok(r), Some(d)) => match d.flush() {
            Ok(()) => Ok(r),
            Err(e) => Err(RemoteError::new(ErrorCode::Cancelled, format!("{op}: {e}"))),
        },
        (r, _) => r,
    };
    conn.streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&job.id);
    conn.in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&job.id);
    match result {
        Ok(resp) => {
            let payload = resp.encode();
            if payload.len() > MAX_PAYLOAD {
                conn.send_error(
                    job.id,
                    &RemoteError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "{op}: the answer ({} bytes) exceeds the frame limit of {MAX_PAYLOAD}; ask for fewer entries",
                            payload.len()
                        ),
                    ),
                );
                return false;
            }
            conn.write(FrameType::Response, 0, job.id, &payload).is_ok()
        }
        Err(e) => {
            conn.send_error(job.id, &e);
            false
        }
    }
}

fn read_loop<H: Handler>(
    reader: &mut dyn Read,
    conn: &Arc<Conn>,
    config: &ServerConfig,
    handler: &H,
    jobs: &WorkQueue<Job>,
    lanes: &Lanes<Job>,
    stats: &mut ServeStats,
) -> Result<(), ServeError> {
    loop {
        let frame = match read_frame(reader) {
            Ok(f) => f,
            Err(FrameError::Eof) => return Ok(()),
            Err(e @ FrameError::BadHeader { .. }) => {
                stats.protocol_errors += 1;
                conn.send_error(
                    0,
                    &RemoteError::new(ErrorCode::UnexpectedFrame, e.to_string()),
                );
                continue;
            }
            Err(FrameError::Io(e)) => return Err(ServeError::Io(e)),
            Err(e) => {
                let code = match e {
                    FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::Malformed,
                };
                let msg = format!("{e}; closing the connection");
                conn.send_error(0, &RemoteError::new(code, &msg));
                return Err(ServeError::Protocol(e.to_string()));
            }
        };
        let id = frame.id;
        match frame.kind {
            FrameType::Request => {
                stats.requests += 1;
                let req = match Request::decode(&frame.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        stats.errors += 1;
                        conn.send_error(id, &e.into());
                        continue;
                    }
                };
                let op = req.op();
                if !op.allowed(conn.session.role) {
                    stats.errors += 1;
                    conn.send_error(
                        id,
                        &RemoteError::new(
                            ErrorCode::PermissionDenied,
                            format!(
                                "{op} is not allowed on a {:?} connection",
                                conn.session.role
                            ),
                        ),
                    );
                    continue;
                }
                if !conn
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id)
                {
                    stats.protocol_errors += 1;
                    conn.send_error(
                        0,
                        &RemoteError::new(
                            ErrorCode::Invalid,
                            format!("request id {id} is already in use; {op} ignored"),
                        ),
                    );
                    continue;
                }
                let lane = if op.body() == Body::None {
                    handler.lane(&req)
                } else {
                    None
                };
                let mut job = Job {
                    id,
                    req,
                    lane,
                    upload: None,
                    download: None,
                };
                if op.body() != Body::None {
                    let mut streams = conn.streams.lock().unwrap_or_else(|p| p.into_inner());
                    if streams.len() >= config.max_streams {
                        drop(streams);
                        conn.in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                        stats.errors += 1;
                        conn.send_error(
                            id,
                            &RemoteError::new(
                                ErrorCode::Busy,
                                format!(
                                    "{op}: {} streams are already running on this connection",
                                    config.max_streams
                                ),
                            ),
                        );
                        continue;
                    }
                    if op.body() == Body::Upload {
                        let (tx, rx) = mpsc::channel();
                        let credit = Arc::new(AtomicU64::new(STREAM_WINDOW as u64));
                        streams.insert(
                            id,
                            Stream::Upload {
                                tx,
                                credit: credit.clone(),
                            },
                        );
                        job.upload = Some(UploadReader {
                            id,
                            conn: conn.clone(),
                            rx,
                            credit,
                            buf: Vec::new(),
                            pos: 0,
                            done: false,
                            bytes: 0,
                        });
                    } else {
                        let ctl = Arc::new(DownloadCtl {
                            state: Mutex::new((STREAM_WINDOW as u64, false)),
                            cv: Condvar::new(),
                        });
                        streams.insert(id, Stream::Download(ctl.clone()));
                        job.download = Some(ctl);
                    }
                }
                if let Some(lane) = job.lane {
                    match lanes.enter(lane, job) {
                        Some(free) => job = free,
                        // Run by the worker that finishes the lane's job before it.
                        None => continue,
                    }
                } else if job.upload.is_none() && job.download.is_none() && handler.inline(&job.req)
                {
                    if !run_job(conn, handler, job) {
                        stats.errors += 1;
                    }
                    continue;
                }
                // Blocks while the queue is full: the reader stops reading and the client's
                // writes back up, which is the flood control.
                if jobs.push(job).is_err() {
                    return Ok(());
                }
            }
            FrameType::Chunk => {
                if frame.payload.len() > MAX_IO {
                    conn.send_error(
                        0,
                        &RemoteError::new(
                            ErrorCode::TooLarge,
                            format!(
                                "chunk of request {id} is {} bytes; the limit is {MAX_IO}",
                                frame.payload.len()
                            ),
                        ),
                    );
                    return Err(ServeError::Protocol(format!(
                        "oversized chunk for request {id}"
                    )));
                }
                let mut streams = conn.streams.lock().unwrap_or_else(|p| p.into_inner());
                // Chunks for a stream that already ended (its handler failed early) are
                // dropped: the client learns the outcome from the request's answer.
                if let Some(Stream::Upload { tx, credit }) = streams.get(&id) {
                    let had = credit.load(Ordering::Acquire);
                    if had == 0 {
                        drop(streams);
                        let msg = format!("request {id}: chunk sent without credit");
                        conn.send_error(0, &RemoteError::new(ErrorCode::UnexpectedFrame, &msg));
                        return Err(ServeError::Protocol(msg));
                    }
                    credit.fetch_sub(1, Ordering::AcqRel);
                    let msg = if frame.flags & FLAG_FINAL != 0 {
                        UploadMsg::Final(frame.payload)
                    } else {
                        UploadMsg::Data(frame.payload)
                    };
                    let last = matches!(msg, UploadMsg::Final(_));
                    let _ = tx.send(msg);
                    if last {
                        // Later chunks for this id are ignored; the reader keeps its receiver.
                        streams.remove(&id);
                    }
                }
            }
            FrameType::Credit => {
                let n = match <[u8; 4]>::try_from(frame.payload.as_slice()) {
                    Ok(b) => u32::from_le_bytes(b),
                    Err(_) => {
                        stats.protocol_errors += 1;
                        conn.send_error(
                            0,
                            &RemoteError::new(
                                ErrorCode::Malformed,
                                format!("credit frame {id}: payload is not 4 bytes"),
                            ),
                        );
                        continue;
                    }
                };
                let streams = conn.streams.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(Stream::Download(ctl)) = streams.get(&id) {
                    let mut st = ctl.state.lock().unwrap_or_else(|p| p.into_inner());
                    // More than a window outstanding is a client bug; cap it so credit
                    // cannot be used to make us buffer.
                    st.0 = (st.0 + n as u64).min(STREAM_WINDOW as u64 * 2);
                    ctl.cv.notify_all();
                }
            }
            FrameType::Cancel => {
                let mut streams = conn.streams.lock().unwrap_or_else(|p| p.into_inner());
                match streams.get(&id) {
                    Some(Stream::Upload { tx, .. }) => {
                        let _ = tx.send(UploadMsg::Cancelled);
                        streams.remove(&id);
                    }
                    // Its slot is free from here on, as the client counts it: the client
                    // may start another stream right after this frame, and the cancelled
                    // handler sends no more chunks (it ends at its next write).
                    Some(Stream::Download(ctl)) => {
                        ctl.cancel();
                        streams.remove(&id);
                    }
                    // A request without a stream runs to its end; its answer is dropped by
                    // the client.
                    None => {}
                }
            }
            FrameType::Response | FrameType::Error | FrameType::Push => {
                stats.protocol_errors += 1;
                conn.send_error(
                    0,
                    &RemoteError::new(
                        ErrorCode::UnexpectedFrame,
                        format!("a client may not send {:?} frames (id {id})", frame.kind),
                    ),
                );
            }
        }
    }
}
