//! A handler for protocol tests: files kept in memory, with paths that make a request slow,
//! panic, or answer too much, so ordering, timeouts and failure paths can be exercised.
//! The storage back end itself is tested in agent/store; this handler only needs to answer
//! in a way the tests can check.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use cloudstore_protocol::*;

#[derive(Default)]
pub struct MemHandler {
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    /// Uploads that ended without their final chunk.
    pub aborted_uploads: AtomicUsize,
    /// Requests being handled now, and the most at once.
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub handled: AtomicUsize,
    /// `hang` requests wait until this is set.
    pub release: (Mutex<bool>, Condvar),
    pub closed: AtomicUsize,
    /// Turns off the special paths (sleep, hang, panic) for fuzzing.
    pub plain: bool,
    /// `Stat` requests run on the server's reading thread ([`Handler::inline`]).
    pub inline_stat: bool,
    /// The thread each request ran on, by operation.
    pub ran_on: Mutex<Vec<(Op, std::thread::ThreadId)>>,
    /// `Stat`s of `sleep/` paths run in one lane ([`Handler::lane`]).
    pub laned_sleeps: bool,
    /// The `sleep/` paths in the order their requests finished.
    pub slept: Mutex<Vec<String>>,
}

/// Deterministic content for `Get` of `gen/<size>`.
pub fn gen_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// FNV-1a, to compare streamed content without keeping it.
pub fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

pub fn attr_of(kind: FileType, size: u64) -> Attr {
    Attr {
        kind,
        perm: 0o600,
        ino: 1,
        nlink: 1,
        uid: 0,
        gid: 0,
        size,
        blocks: 0,
        atime: Timespec::default(),
        mtime: Timespec::default(),
        ctime: Timespec::default(),
    }
}

fn not_found(p: &str) -> RemoteError {
    RemoteError::new(ErrorCode::NotFound, format!("stat {p:?}: no such file"))
}

impl MemHandler {
    pub fn release_hung(&self) {
        *self.release.0.lock().unwrap() = true;
        self.release.1.notify_all();
    }

    fn special(&self, path: &str) -> Option<Result<Response, RemoteError>> {
        if self.plain {
            return None;
        }
        if let Some(ms) = path.strip_prefix("sleep/") {
            let ms = ms.split('/').next().unwrap_or_default();
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            self.slept.lock().unwrap().push(path.to_owned());
            return Some(Ok(Response::Attr(attr_of(FileType::File, 0))));
        }
        match path {
            "panic" => panic!("handler panics on purpose"),
            "hang" => {
                let mut r = self.release.0.lock().unwrap();
                while !*r {
                    r = self.release.1.wait(r).unwrap();
                }
                Some(Ok(Response::Ok))
            }
            _ => None,
        }
    }
}

impl Handler for MemHandler {
    fn inline(&self, req: &Request) -> bool {
        self.inline_stat && matches!(req, Request::Stat { .. })
    }

    fn lane(&self, req: &Request) -> Option<u64> {
        match req {
            Request::Stat {
                file: FileRef::Path(p),
            } if self.laned_sleeps && p.starts_with("sleep/") => Some(7),
            _ => None,
        }
    }

    fn handle(&self, req: Request, call: &mut Call<'_>) -> Result<Response, RemoteError> {
        self.ran_on
            .lock()
            .unwrap()
            .push((req.op(), std::thread::current().id()));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let r = self.dispatch(req, call);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.handled.fetch_add(1, Ordering::SeqCst);
        r
    }

    fn closed(&self) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

impl MemHandler {
    fn dispatch(&self, req: Request, call: &mut Call<'_>) -> Result<Response, RemoteError> {
        match req {
            Request::Ping => Ok(Response::Ok),
            Request::Stat {
                file: FileRef::Path(p),
            } => {
                if let Some(r) = self.special(&p) {
                    return r;
                }
                let files = self.files.lock().unwrap();
                let f = files.get(&p).ok_or_else(|| not_found(&p))?;
                Ok(Response::Attr(attr_of(FileType::File, f.len() as u64)))
            }
            Request::Write {
                file: FileRef::Path(p),
                offset,
                data,
            } => {
                // Memory is the test's disk: refuse what it cannot hold.
                let end = offset.saturating_add(data.len() as u64);
                if end > 64 << 20 {
                    return Err(RemoteError::new(
                        ErrorCode::FileTooBig,
                        format!("write {p:?}: the test handler keeps files under 64 MiB"),
                    ));
                }
                let end = end as usize;
                let mut files = self.files.lock().unwrap();
                let f = files.entry(p).or_default();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[offset as usize..end].copy_from_slice(&data);
                Ok(Response::Written(data.len() as u32))
            }
            Request::Read {
                file: FileRef::Path(p),
                offset,
                len,
            } => {
                let files = self.files.lock().unwrap();
                let f = files.get(&p).ok_or_else(|| not_found(&p))?;
                let start = (offset as usize).min(f.len());
                let end = start.saturating_add(len as usize).min(f.len());
                Ok(Response::Data(f[start..end].to_vec()))
            }
            Request::ChangesSince { since, limit } => {
                // An answer too big for a frame: `limit` entries with 4 KiB paths.
                let path = vec!["p".repeat(200); 20].join("/");
                let entries = (0..limit as u64)
                    .map(|i| ChangeEntry {
                        seq: since + i,
                        kind: ChangeKind::Put,
                        time: Timespec::default(),
                        path: path.clone(),
                        new_path: Some(path.clone()),
                        size: 0,
                        mtime: Timespec::default(),
                    })
                    .collect();
                Ok(Response::Changes(Changes::Entries {
                    entries,
                    next: since + limit as u64,
                }))
            }
            Request::Subscribe => {
                let pusher = call.pusher();
                let count = if self.plain { 3 } else { 100 };
                std::thread::spawn(move || {
                    for seq in 1..=count {
                        let e = ChangeEntry {
                            seq,
                            kind: ChangeKind::Create,
                            time: Timespec::default(),
                            path: format!("f{seq}"),
                            new_path: None,
                            size: 0,
                            mtime: Timespec::default(),
                        };
                        if pusher.send(&Push::Change(e)).is_err() {
                            return;
                        }
                    }
                });
                Ok(Response::Subscribed { head: 1 })
            }
            Request::Get { path, .. } => {
                let size: u64 = path
                    .strip_prefix("gen/")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| not_found(&path))?;
                let w = call.download().expect("Get has a download");
                let mut block = vec![0u8; 100_000];
                let mut i = 0u64;
                while i < size {
                    let n = (size - i).min(block.len() as u64) as usize;
                    for (k, b) in block[..n].iter_mut().enumerate() {
                        *b = gen_byte(i + k as u64);
                    }
                    w.write_all(&block[..n]).map_err(|e| {
                        RemoteError::new(ErrorCode::Cancelled, format!("get {path:?}: {e}"))
                    })?;
                    i += n as u64;
                }
                Ok(Response::Got {
                    attr: attr_of(FileType::File, size),
                })
            }
            Request::Put { path, .. } | Request::ParkConflict { path } => {
                let r = call.upload().expect("Put has an upload");
                // Hash the stream instead of keeping it: nothing here holds a whole file.
                let mut h = FNV_START;
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0u64;
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => {
                            fnv(&mut h, &buf[..k]);
                            n += k as u64;
                        }
                        Err(e) => {
                            self.aborted_uploads.fetch_add(1, Ordering::SeqCst);
                            return Err(RemoteError::new(
                                ErrorCode::Cancelled,
                                format!("put {path:?}: {e}"),
                            ));
                        }
                    }
                }
                self.files
                    .lock()
                    .unwrap()
                    .insert(path, h.to_le_bytes().to_vec());
                let mut a = attr_of(FileType::File, n);
                a.ino = h;
                Ok(Response::Attr(a))
            }
            other => Err(RemoteError::new(
                ErrorCode::Unsupported,
                format!("{} is not supported by the test handler", other.op()),
            )),
        }
    }
}
