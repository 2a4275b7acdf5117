use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::path::{check_path, check_value, PathKind, PathProblem, ValueProblem};
use crate::wire::{Header, MsgType, HEADER_LEN, MAX_DATA};

/// `QDB_DAEMON_LOCAL_RW_PATH` in `include/qubesdb.h`: the daemon's socket inside a qube.
pub const DEFAULT_SOCKET: &str = "/var/run/qubes/qubesdb.sock";

/// `QDB_DAEMON_LOCAL_RO_PATH`: the read-only socket `qdb_open` falls back to.
pub const DEFAULT_RO_SOCKET: &str = "/var/run/qubes/qubesdb.ro.sock";

/// Events set aside while waiting for replies, at most. The daemon fires one event per
/// matching watch per change; a caller that never drains them must not grow us without
/// bound, so past this the oldest are dropped and [`QubesDb::next_event`] reports the loss.
const MAX_PENDING_EVENTS: usize = 1024;

/// Failures of qubesdb operations. Each names the socket or the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect to the daemon's socket.
    #[error("cannot connect to qubesdb at {socket}: {source}")]
    Connect { socket: PathBuf, source: io::Error },
    /// The path breaks the daemon's rules; nothing was sent.
    #[error("invalid qubesdb path {path:?}: {problem}")]
    InvalidPath { path: String, problem: PathProblem },
    /// The value breaks the daemon's rules; nothing was sent.
    #[error("invalid value for qubesdb key {path}: {problem}")]
    InvalidValue { path: String, problem: ValueProblem },
    /// Reading from or writing to the socket failed.
    #[error("I/O error talking to qubesdb at {socket}: {source}")]
    Io { socket: PathBuf, source: io::Error },
    /// The daemon closed the connection (it restarted, or dropped us after a bad command).
    /// Watches registered on the old connection are gone.
    #[error("qubesdb at {socket} closed the connection")]
    Disconnected { socket: PathBuf },
    /// The daemon answered `QDB_RESP_ERROR`.
    #[error("qubesdb at {socket} refused {op} {path}")]
    Refused {
        socket: PathBuf,
        op: &'static str,
        path: String,
    },
    /// The daemon's answer does not follow the protocol; the connection is no longer usable.
    #[error("qubesdb at {socket} sent an unexpected answer to {op} {path}: {detail}")]
    Protocol {
        socket: PathBuf,
        op: &'static str,
        path: String,
        detail: String,
    },
    /// The value is not UTF-8 (from [`QubesDb::read_string`]).
    #[error("value of qubesdb key {path} is not UTF-8")]
    NotUtf8 { path: String },
    /// More watch events arrived than were collected; some were dropped. Re-read every
    /// watched key.
    #[error("qubesdb watch events were lost ({dropped} dropped); re-read the watched keys")]
    EventsLost { dropped: u64 },
}

/// A connection to the qubesdb daemon.
pub struct QubesDb {
    stream: UnixStream,
    socket: PathBuf,
    pending: VecDeque<String>,
    dropped: u64,
    broken: bool,
}

impl std::fmt::Debug for QubesDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QubesDb")
            .field("socket", &self.socket)
            .finish()
    }
}

impl QubesDb {
    /// Connects to the daemon listening at `socket`.
    pub fn open(socket: impl AsRef<Path>) -> Result<QubesDb, Error> {
        let socket = socket.as_ref().to_path_buf();
        let stream = UnixStream::connect(&socket).map_err(|source| Error::Connect {
            socket: socket.clone(),
            source,
        })?;
        Ok(QubesDb {
            stream,
            socket,
            pending: VecDeque::new(),
            dropped: 0,
            broken: false,
        })
    }

    /// Connects as `qdb_open(NULL)` does: the read-write socket, else the read-only one.
    pub fn open_default() -> Result<QubesDb, Error> {
        QubesDb::open(DEFAULT_SOCKET)
            .or_else(|first| QubesDb::open(DEFAULT_RO_SOCKET).map_err(|_| first))
    }

    /// The socket this connection uses.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The value of key `path`, or `None` if it does not exist.
    pub fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        const OP: &str = "read";
        self.checked(path, PathKind::Key)?;
        self.send(MsgType::CmdRead, path, &[])?;
        let hdr = self.reply(OP, path)?;
        match hdr.msg_type() {
            Some(MsgType::RespErrorNoent) => Ok(None),
            Some(MsgType::RespError) => Err(self.refused(OP, path)),
            Some(MsgType::RespRead) => self.data(&hdr, OP, path).map(Some),
            _ => Err(self.unexpected(OP, path, &hdr)),
        }
    }

    /// Like [`read`](Self::read), for text values.
    pub fn read_string(&mut self, path: &str) -> Result<Option<String>, Error> {
        match self.read(path)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v).map(Some).map_err(|_| Error::NotUtf8 {
                path: path.to_owned(),
            }),
        }
    }

    /// Paths of all keys beginning with `prefix` (a plain string prefix, as the daemon
    /// matches it: `/cloudstore` also matches `/cloudstore-x`; end it with `/` for a
    /// directory), sorted.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<String>, Error> {
        const OP: &str = "list";
        self.checked(prefix, PathKind::Prefix)?;
        self.send(MsgType::CmdList, prefix, &[])?;
        let mut out = Vec::new();
        loop {
            let hdr = self.reply(OP, prefix)?;
            match hdr.msg_type() {
                Some(MsgType::RespError) => return Err(self.refused(OP, prefix)),
                Some(MsgType::RespList) if hdr.data_len == 0 => {
                    if hdr.path.is_empty() {
                        return Ok(out);
                    }
                    out.push(self.path_text(&hdr, OP, prefix)?);
                }
                _ => return Err(self.unexpected(OP, prefix, &hdr)),
            }
        }
    }

    /// Every key beginning with `prefix` with its value, sorted by path.
    pub fn multiread(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        const OP: &str = "multiread";
        self.checked(prefix, PathKind::Prefix)?;
        self.send(MsgType::CmdMultiread, prefix, &[])?;
        let mut out = Vec::new();
        loop {
            let hdr = self.reply(OP, prefix)?;
            match hdr.msg_type() {
                Some(MsgType::RespError) => return Err(self.refused(OP, prefix)),
                Some(MsgType::RespMultiread) => {
                    if hdr.path.is_empty() {
                        if hdr.data_len != 0 {
                            return Err(self.unexpected(OP, prefix, &hdr));
                        }
                        return Ok(out);
                    }
                    let key = self.path_text(&hdr, OP, prefix)?;
                    let value = self.data(&hdr, OP, prefix)?;
                    out.push((key, value));
                }
                _ => return Err(self.unexpected(OP, prefix, &hdr)),
            }
        }
    }

    /// Sets key `path` to `value` (what `qubesdb-write` does). Watches on it fire.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Error> {
        const OP: &str = "write";
        self.checked(path, PathKind::Key)?;
        check_value(value).map_err(|problem| Error::InvalidValue {
            path: path.to_owned(),
            problem,
        })?;
        self.send(MsgType::CmdWrite, path, value)?;
        self.simple_reply(OP, path).map(|_| ())
    }

    /// Removes key `path`, or every key beneath it if it ends with `/`. Returns whether
    /// anything was removed.
    pub fn rm(&mut self, path: &str) -> Result<bool, Error> {
        self.checked(path, PathKind::Prefix)?;
        self.send(MsgType::CmdRm, path, &[])?;
        self.simple_reply("rm", path)
    }

    /// Registers a watch: every later write or removal of `path` (of anything beneath it,
    /// if it ends with `/`) produces an event. The key need not exist yet.
    pub fn watch(&mut self, path: &str) -> Result<(), Error> {
        self.checked(path, PathKind::Prefix)?;
        self.send(MsgType::CmdWatch, path, &[])?;
        self.simple_reply("watch", path).map(|_| ())
    }

    /// Removes one watch registered with the same path. Events for it may still arrive
    /// (the daemon may have sent them already).
    pub fn unwatch(&mut self, path: &str) -> Result<bool, Error> {
        self.checked(path, PathKind::Prefix)?;
        self.send(MsgType::CmdUnwatch, path, &[])?;
        self.simple_reply("unwatch", path)
    }

    /// Whether an event already received is waiting; the socket may not be readable then,
    /// so call [`next_event`](Self::next_event) before polling [`AsFd::as_fd`].
    pub fn has_pending_event(&self) -> bool {
        !self.pending.is_empty() || self.dropped > 0
    }

    /// The next watch event: the path that was written or removed (for a removal of a
    /// prefix, the prefix). Waits at most `timeout` (`None`: forever); `Ok(None)` when none
    /// arrived in time.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<String>, Error> {
        const OP: &str = "watch event";
        if self.dropped > 0 {
            let dropped = std::mem::take(&mut self.dropped);
            return Err(Error::EventsLost { dropped });
        }
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        self.usable()?;
        if !self.wait_readable(timeout)? {
            return Ok(None);
        }
        let hdr = self.read_header(OP, "")?;
        if hdr.msg_type() != Some(MsgType::RespWatch) || hdr.data_len != 0 {
            return Err(self.unexpected(OP, "", &hdr));
        }
        self.path_text(&hdr, OP, "").map(Some)
    }

    fn wait_readable(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let rem = d.saturating_duration_since(Instant::now());
                    // Round up so a sub-millisecond wait does not spin at timeout 0.
                    let ms = rem.as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, left) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                }
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(Error::Io {
                        socket: self.socket.clone(),
                        source: e.into(),
                    })
                }
            }
        }
    }

    fn checked(&self, path: &str, kind: PathKind) -> Result<(), Error> {
        check_path(path, kind).map_err(|problem| Error::InvalidPath {
            path: path.to_owned(),
            problem,
        })?;
        self.usable()
    }

    fn usable(&self) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Disconnected {
                socket: self.socket.clone(),
            });
        }
        Ok(())
    }

    fn io_err(&mut self, source: io::Error) -> Error {
        self.broken = true;
        if matches!(
            source.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
        ) {
            Error::Disconnected {
                socket: self.socket.clone(),
            }
        } else {
            Error::Io {
                socket: self.socket.clone(),
                source,
            }
        }
    }

    fn send(&mut self, kind: MsgType, path: &str, data: &[u8]) -> Result<(), Error> {
        // Checked by callers: path ≤ 63 bytes, data ≤ MAX_VALUE_LEN.
        let hdr = Header::new(kind, path.as_bytes(), data.len() as u32);
        let mut msg = Vec::with_capacity(HEADER_LEN + data.len());
        msg.extend_from_slice(&hdr.encode());
        msg.extend_from_slice(data);
        // One write per command: the daemon reads header then data from a stream, and a
        // single write keeps a command whole even if another thread shared the socket.
        self.stream.write_all(&msg).map_err(|e| self.io_err(e))
    }

    fn read_header(&mut self, _op: &'static str, _path: &str) -> Result<Header, Error> {
        let mut buf = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut buf)
            .map_err(|e| self.io_err(e))?;
        Ok(Header::decode(&buf))
    }

    /// The next header that is not a watch event, as `get_response()` in
    /// `client/qdb-client.c`: events that arrive first are queued for `next_event`.
    fn reply(&mut self, op: &'static str, path: &str) -> Result<Header, Error> {
        loop {
            let hdr = self.read_header(op, path)?;
            if hdr.msg_type() != Some(MsgType::RespWatch) {
                return Ok(hdr);
            }
            if hdr.data_len != 0 {
                return Err(self.unexpected(op, path, &hdr));
            }
            let ev = self.path_text(&hdr, op, path)?;
            if self.pending.len() >= MAX_PENDING_EVENTS {
                self.pending.pop_front();
                self.dropped += 1;
            }
            self.pending.push_back(ev);
        }
    }

    /// OK → true, NOENT → false (as `qdb__simple_cmd` treats it), ERROR → Refused.
    fn simple_reply(&mut self, op: &'static str, path: &str) -> Result<bool, Error> {
        let hdr = self.reply(op, path)?;
        match hdr.msg_type() {
            Some(MsgType::RespOk) if hdr.data_len == 0 => Ok(true),
            Some(MsgType::RespErrorNoent) if hdr.data_len == 0 => Ok(false),
            Some(MsgType::RespError) if hdr.data_len == 0 => Err(self.refused(op, path)),
            _ => Err(self.unexpected(op, path, &hdr)),
        }
    }

    fn data(&mut self, hdr: &Header, op: &'static str, path: &str) -> Result<Vec<u8>, Error> {
        let len = hdr.data_len as usize;
        // Bounded before allocating: the daemon never holds more than QDB_MAX_DATA.
        if len > MAX_DATA {
            return Err(self.unexpected(op, path, hdr));
        }
        let mut buf = vec![0u8; len];
        self.stream
            .read_exact(&mut buf)
            .map_err(|e| self.io_err(e))?;
        Ok(buf)
    }

    fn path_text(&mut self, hdr: &Header, op: &'static str, path: &str) -> Result<String, Error> {
        match std::str::from_utf8(&hdr.path) {
            Ok(s) if check_path(s, PathKind::Prefix).is_ok() => Ok(s.to_owned()),
            _ => Err(self.unexpected(op, path, hdr)),
        }
    }

    fn refused(&self, op: &'static str, path: &str) -> Error {
        Error::Refused {
            socket: self.socket.clone(),
            op,
            path: path.to_owned(),
        }
    }

    fn unexpected(&mut self, op: &'static str, path: &str, hdr: &Header) -> Error {
        // After a reply we cannot parse we no longer know where the next header starts.
        self.broken = true;
        Error::Protocol {
            socket: self.socket.clone(),
            op,
            path: path.to_owned(),
            detail: format!(
                "message type {} for path {:?} with {} data bytes",
                hdr.kind,
                hdr.path_lossy(),
                hdr.data_len
            ),
        }
    }
}

impl AsFd for QubesDb {
    /// The socket, for `poll`: readable when a watch event (or EOF) has arrived. Drain
    /// [`QubesDb::has_pending_event`] first; events read during commands are not signalled.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
