//! Uploads are pulled, not pushed: for one batch the agent serves its files on 127.0.0.1
//! in the form rclone's `http` backend reads (rclone v1.60 backend/http/http.go: a
//! directory is an HTML page of links, `HEAD` gives a file's size and time, `GET` its
//! content), and one rc `sync/copy` from that server into the partial area fetches them all
//! ([`super::rclone::Rclone::pull_into`]). rclone then knows each file's size before its
//! first byte, so it stores it with a plain `Put`: no `Rcat` buffer per file and no spool on
//! disk for backends that cannot stream, and it reads plain response bodies instead of
//! scanning a multipart stream for its boundary, which cost it more CPU than a whole
//! `rclone copy` of the same tree (docs/performance.md, "Uploads pulled by rclone").
//!
//! A file's content is served as the caller's [`Content`] streams it from storage. The
//! response promises `Content-Length` bytes, and its last byte is held back until storage
//! has confirmed the content complete and unchanged: a file that storage could not finish,
//! or that grew or shrank since it was offered, ends its connection one byte short, so
//! rclone sees the body cut and never stores it as complete.
//!
//! Only requests under a random path token are answered (any local process can reach the
//! port); nothing but `GET` and `HEAD` of the offered names is served, and the listener
//! lives only as long as its one `sync/copy`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::rclone::{encode_component, random_token};

/// One file offered under `name` (a single path component), `size` bytes long.
pub struct Offered<'a> {
    pub name: &'a str,
    pub size: u64,
}

/// Where the content of offered files comes from.
pub trait Content: Sync {
    /// Writes all of file `index` into `out` and returns once its source has confirmed it
    /// complete and unchanged. An error leaves what was written unfinished for rclone.
    fn send(&self, index: usize, out: &mut dyn Write) -> io::Result<()>;
}

/// Longest request head read (rclone's are a few hundred bytes).
const MAX_HEAD: u64 = 16 * 1024;

/// Serves `files` while `pull(url)` runs, `url` being the directory rclone lists; returns
/// what `pull` returned and, for each file, whether a `GET` of it was answered in full.
/// Fails only if the server cannot be set up.
pub fn offer<T>(
    files: &[Offered],
    content: &dyn Content,
    pull: impl FnOnce(&str) -> T,
) -> io::Result<(T, Vec<bool>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let shop = Shop {
        prefix: format!("/{}/", random_token()),
        by_name: files.iter().enumerate().map(|(i, f)| (f.name, i)).collect(),
        files,
        content,
        delivered: files.iter().map(|_| AtomicBool::new(false)).collect(),
        modified: http_date(SystemTime::now()),
        open: Mutex::new(Vec::new()),
        closing: AtomicBool::new(false),
    };
    let url = format!("http://{addr}{}", shop.prefix);
    let pulled = std::thread::scope(|scope| -> io::Result<T> {
        let shop = &shop;
        let listener = &listener;
        let acceptor = std::thread::Builder::new()
            .name("upload-offer".into())
            .spawn_scoped(scope, move || shop.accept_all(listener, scope))?;
        let pulled = pull(&url);
        // rclone keeps its connections open for reuse; they end with the offer.
        shop.closing.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(addr);
        let _ = acceptor.join();
        for s in shop
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        Ok(pulled)
    })?;
    let delivered = shop
        .delivered
        .iter()
        .map(|d| d.load(Ordering::SeqCst))
        .collect();
    Ok((pulled, delivered))
}

struct Shop<'a> {
    /// `/TOKEN/`: the random path every request must start with.
    prefix: String,
    files: &'a [Offered<'a>],
    by_name: HashMap<&'a str, usize>,
    content: &'a dyn Content,
    delivered: Vec<AtomicBool>,
    /// `Last-Modified` of every file: rclone gives the stored object this time.
    modified: String,
    /// A handle on each accepted connection, to end it with the offer.
    open: Mutex<Vec<TcpStream>>,
    closing: AtomicBool,
}

/// What one request asks.
struct Request {
    method: String,
    target: String,
    ranged: bool,
    close: bool,
    has_body: bool,
}

impl Shop<'_> {
    fn accept_all<'scope>(
        &'scope self,
        listener: &TcpListener,
        scope: &'scope std::thread::Scope<'scope, '_>,
    ) {
        for conn in listener.incoming() {
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let Ok(handle) = conn.try_clone() else {
                continue;
            };
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle);
            let spawned = std::thread::Builder::new()
                .name("upload-offer".into())
                .spawn_scoped(scope, move || self.serve(conn));
            if let Err(e) = spawned {
                tracing::warn!("serving an upload to rclone: no thread for a connection: {e}");
            }
        }
    }

    /// Answers the requests of one connection until it ends or an answer cannot be whole.
    fn serve(&self, conn: TcpStream) {
        let _ = conn.set_nodelay(true);
        let Ok(reading) = conn.try_clone() else {
            return;
        };
        let mut r = BufReader::new(reading);
        let mut w = BufWriter::with_capacity(256 * 1024, conn);
        while let Ok(Some(req)) = read_request(&mut r) {
            let kept = self.answer(&req, &mut w).and_then(|keep| {
                w.flush()?;
                Ok(keep)
            });
            if !matches!(kept, Ok(true)) || req.close {
                break;
            }
        }
        let _ = w.get_ref().shutdown(Shutdown::Both);
    }

    /// Answers one request; `Ok(false)` if the connection must end after it.
    fn answer(&self, req: &Request, w: &mut impl Write) -> io::Result<bool> {
        let Some(rest) = req.target.strip_prefix(&self.prefix) else {
            // Not from the rclone this offer is for.
            simple(w, 404, "Not Found")?;
            return Ok(false);
        };
        if req.has_body {
            simple(w, 400, "Bad Request")?;
            return Ok(false);
        }
        let head_only = match req.method.as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => {
                simple(w, 405, "Method Not Allowed")?;
                return Ok(true);
            }
        };
        if rest.is_empty() {
            let page = self.listing();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                page.len()
            )?;
            if !head_only {
                w.write_all(page.as_bytes())?;
            }
            return Ok(true);
        }
        let Some(&index) = percent_decode(rest)
            .as_deref()
            .and_then(|name| self.by_name.get(name))
        else {
            simple(w, 404, "Not Found")?;
            return Ok(true);
        };
        let size = self.files[index].size;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nLast-Modified: {}\r\n\r\n",
            self.modified
        );
        if head_only {
            w.write_all(head.as_bytes())?;
            return Ok(true);
        }
        if req.ranged {
            // rclone asks for a range only to resume a read that failed; the whole copy
            // is tried again instead, from the start.
            simple(w, 501, "Not Implemented")?;
            return Ok(true);
        }
        let mut body = Body {
            w,
            head: Some(head),
            size,
            written: 0,
            last: None,
        };
        let sent = self.content.send(index, &mut body);
        match sent {
            Ok(()) if body.written == size => {
                body.finish()?;
                self.delivered[index].store(true, Ordering::SeqCst);
                Ok(true)
            }
            Ok(()) => Ok(false),
            Err(_) if body.head.is_some() => {
                // Nothing of it went out: a plain error, and the connection stays.
                simple(w, 500, "Internal Server Error")?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// The offer as the HTML page rclone's `http` backend parses: one link per file.
    fn listing(&self) -> String {
        let mut page = String::from("<!DOCTYPE html>\n<html><body>\n");
        for f in self.files {
            let href = encode_component(f.name);
            page.push_str(&format!("<a href=\"{href}\">{href}</a>\n"));
        }
        page.push_str("</body></html>\n");
        page
    }
}

/// A response body of `size` bytes whose last byte waits for [`Body::finish`]; the head goes
/// out with the first byte, so a file that fails before any can still be answered plainly.
struct Body<'w, W: Write> {
    w: &'w mut W,
    head: Option<String>,
    size: u64,
    written: u64,
    last: Option<u8>,
}

impl<W: Write> Body<'_, W> {
    fn start(&mut self) -> io::Result<()> {
        if let Some(head) = self.head.take() {
            self.w.write_all(head.as_bytes())?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.start()?;
        if let Some(b) = self.last.take() {
            self.w.write_all(&[b])?;
        }
        Ok(())
    }
}

impl<W: Write> Write for Body<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some((&last, before)) = buf.split_last() else {
            return Ok(0);
        };
        if self.written + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the file holds more than the {} bytes it was offered with",
                    self.size
                ),
            ));
        }
        self.start()?;
        self.written += buf.len() as u64;
        if self.written == self.size {
            self.w.write_all(before)?;
            self.last = Some(last);
        } else {
            self.w.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn simple(w: &mut impl Write, status: u16, reason: &str) -> io::Result<()> {
    write!(w, "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n")
}

/// The next request's head; `None` at a clean end of the connection.
fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut limited = r.take(MAX_HEAD);
    loop {
        let before = head.len();
        if limited.read_until(b'\n', &mut head)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a request head cut short or longer than 16 KiB",
            ));
        }
        if matches!(&head[before..], b"\r\n" | b"\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (first.next(), first.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a request line without a method and target",
        ));
    };
    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        ranged: false,
        close: false,
        has_body: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => req.ranged = true,
            "connection" => req.close = value.eq_ignore_ascii_case("close"),
            "content-length" => req.has_body |= value != "0",
            "transfer-encoding" => req.has_body = true,
            _ => {}
        }
    }
    Ok(Some(req))
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `t` as an HTTP date (RFC 9110 IMF-fixdate), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let (year, month, day) = crate::time::civil_from_days(days as i64);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http_dates_are_imf_fixdates() {
        let at = |s| http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_796_688_000), "Tue, 08 Dec 2026 00:00:00 GMT");
    }

    #[test]
    fn escapes_decode_and_malformed_ones_do_not() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    /// Content from memory; `fail` names files whose source breaks after half of them (a
    /// storage stream that went away), `grow` files whose source has one byte more than
    /// offered.
    pub(in crate::roles::transfer) struct Memory {
        pub files: Vec<Vec<u8>>,
        pub fail: Vec<usize>,
        pub grow: Vec<usize>,
    }

    impl Content for Memory {
        fn send(&self, i: usize, out: &mut dyn Write) -> io::Result<()> {
            let data = &self.files[i];
            if self.fail.contains(&i) {
                out.write_all(&data[..data.len() / 2])?;
                return Err(io::Error::other("storage went away"));
            }
            out.write_all(data)?;
            if self.grow.contains(&i) {
                out.write_all(b"+")?;
            }
            Ok(())
        }
    }

    /// One request on a fresh connection; the status and the body read until the server
    /// ends the connection or the promised length arrived.
    fn get(url: &str, method: &str, path: &str, extra: &str) -> (u16, Vec<u8>, bool) {
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.split('/').next())
            .unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&all[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        let length: Option<usize> = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map(|v| v.parse().unwrap());
        let body = all[split..].to_vec();
        let whole = method == "HEAD" || length == Some(body.len());
        (status, body, whole)
    }

    #[test]
    fn files_are_served_whole_only_when_their_source_confirms_them() {
        let names = ["plain", "cut", "grown", "empty", "say \"hi\" 100%?", "café"];
        let content = Memory {
            files: vec![
                (0..300_000u32).map(|i| (i % 251) as u8).collect(),
                vec![7; 1000],
                vec![1; 10],
                Vec::new(),
                b"q".to_vec(),
                b"accent".to_vec(),
            ],
            fail: vec![1],
            grow: vec![2],
        };
        let files: Vec<Offered> = names
            .iter()
            .zip(&content.files)
            .map(|(name, f)| Offered {
                name,
                size: f.len() as u64,
            })
            .collect();
        let ((), delivered) = offer(&files, &content, |url| {
            let prefix = url.split_once("127.0.0.1").unwrap().1;
            let prefix = &prefix[prefix.find('/').unwrap()..];
            let (status, page, _) = get(url, "GET", prefix, "");
            assert_eq!(status, 200);
            let page = String::from_utf8(page).unwrap();
            for n in names {
                assert!(
                    page.contains(&format!("href=\"{}\"", encode_component(n))),
                    "{n} listed: {page}"
                );
            }
            let path = |n: &str| format!("{prefix}{}", encode_component(n));

            let (status, body, whole) = get(url, "GET", &path("plain"), "");
            assert_eq!((status, whole), (200, true));
            assert_eq!(body, content.files[0]);
            let (status, body, _) = get(url, "HEAD", &path("plain"), "");
            assert_eq!((status, body.len()), (200, 0));

            let (status, body, whole) = get(url, "GET", &path("cut"), "");
            assert_eq!(status, 200);
            assert!(
                !whole,
                "a cut source ends the body short ({} bytes)",
                body.len()
            );
            let (_, body, whole) = get(url, "GET", &path("grown"), "");
            assert!(
                !whole,
                "a grown source ends the body short ({} bytes)",
                body.len()
            );
            assert_eq!(body.len(), 9, "its last offered byte held back");

            assert!(
                get(url, "GET", &path("empty"), "").2,
                "an empty file is served whole"
            );
            let (_, body, _) = get(url, "GET", &path("say \"hi\" 100%?"), "");
            assert_eq!(body, b"q");
            let (_, body, _) = get(url, "GET", &path("café"), "");
            assert_eq!(body, b"accent");

            let (status, _, _) = get(url, "GET", &path("plain"), "Range: bytes=10-\r\n");
            assert_eq!(status, 501, "no ranges");
            assert_eq!(get(url, "GET", &path("nothing"), "").0, 404);
            assert_eq!(get(url, "PUT", &path("plain"), "").0, 405);
            // Without the token nothing is served, not even the listing.
            assert_eq!(get(url, "GET", "/", "").0, 404);
            assert_eq!(get(url, "GET", "/plain", "").0, 404);
            assert_eq!(get(url, "GET", &format!("/x{}", &prefix[1..]), "").0, 404);
        })
        .unwrap();
        assert_eq!(delivered, [true, false, false, true, true, true]);
    }

    #[test]
    fn the_server_is_gone_with_its_offer() {
        let content = Memory {
            files: vec![b"x".to_vec()],
            fail: vec![],
            grow: vec![],
        };
        let files = [Offered { name: "x", size: 1 }];
        // A connection left open by the client ends with the offer.
        let (addr, kept) = offer(&files, &content, |url| {
            let addr = url[7..].split('/').next().unwrap().to_owned();
            let kept = TcpStream::connect(&addr).unwrap();
            (addr, kept)
        })
        .unwrap()
        .0;
        kept.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(
            (&kept).read(&mut [0u8; 1]).unwrap(),
            0,
            "the kept connection ends"
        );
        assert!(
            TcpStream::connect(addr).is_err(),
            "nothing listens any more"
        );
    }
}
