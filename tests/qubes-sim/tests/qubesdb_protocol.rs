//! The qubesdb stand-in against the real client code (cloudstore-qubesdb), and against
//! raw bytes where the client would refuse to send them (hostile peers).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use cloudstore_qubesdb::wire::{Header, MsgType, HEADER_LEN};
use cloudstore_qubesdb::{Error, PathProblem, QubesDb, ValueProblem};
use qubes_sim::qubesdb::QubesDbDaemon;

const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(10);

fn daemon(entries: &[(&str, &str)]) -> (tempfile::TempDir, QubesDbDaemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qubesdb.sock");
    let d = QubesDbDaemon::start(&sock, entries.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
    (dir, d, sock)
}

#[test]
fn read_list_multiread() {
    let (_dir, _d, sock) = daemon(&[
        ("/name", "storage"),
        ("/cloudstore/role", "storage"),
        ("/cloudstore/volumes", "work photos"),
        ("/cloudstore-other", "x"),
        ("/vm-config/cloudstore.role", "consumer"),
    ]);
    let mut db = QubesDb::open(&sock).unwrap();
    assert_eq!(
        db.read("/cloudstore/role").unwrap(),
        Some(b"storage".to_vec())
    );
    assert_eq!(
        db.read_string("/cloudstore/volumes").unwrap().as_deref(),
        Some("work photos")
    );
    assert_eq!(db.read("/cloudstore/remote").unwrap(), None);
    assert_eq!(
        db.list("/cloudstore/").unwrap(),
        vec!["/cloudstore/role", "/cloudstore/volumes"]
    );
    // A prefix without '/' is a plain string prefix, as the daemon matches it.
    assert_eq!(
        db.list("/cloudstore").unwrap(),
        vec![
            "/cloudstore-other",
            "/cloudstore/role",
            "/cloudstore/volumes"
        ]
    );
    assert_eq!(
        db.multiread("/cloudstore/").unwrap(),
        vec![
            ("/cloudstore/role".to_owned(), b"storage".to_vec()),
            ("/cloudstore/volumes".to_owned(), b"work photos".to_vec()),
        ]
    );
    assert!(db.list("/nothing/").unwrap().is_empty());
}

#[test]
fn write_rm_and_limits() {
    let (_dir, d, sock) = daemon(&[]);
    let mut db = QubesDb::open(&sock).unwrap();
    db.write("/k", b"").unwrap();
    assert_eq!(
        db.read("/k").unwrap(),
        Some(Vec::new()),
        "empty value is a value"
    );
    let big = vec![b'v'; 3071];
    db.write("/big", &big).unwrap();
    assert_eq!(db.read("/big").unwrap(), Some(big));
    assert!(matches!(
        db.write("/big", &[b'v'; 3072]),
        Err(Error::InvalidValue {
            problem: ValueProblem::TooLong(3072),
            ..
        })
    ));
    assert!(matches!(
        db.write("/nul", b"a\0b"),
        Err(Error::InvalidValue {
            problem: ValueProblem::Nul,
            ..
        })
    ));
    assert!(matches!(
        db.read("/bad key"),
        Err(Error::InvalidPath {
            problem: PathProblem::BadChar(' '),
            ..
        })
    ));
    let err = db.read(&format!("/{}", "a".repeat(63))).unwrap_err();
    assert!(err.to_string().contains("at most 63"), "{err}");
    assert!(db.rm("/k").unwrap());
    assert!(!db.rm("/k").unwrap(), "second removal finds nothing");
    db.write("/dir/a", b"1").unwrap();
    db.write("/dir/b", b"2").unwrap();
    assert!(db.rm("/dir/").unwrap());
    assert!(db.list("/dir/").unwrap().is_empty());
    assert_eq!(d.read("/big").map(|v| v.len()), Some(3071));
    // The connection is still good after every refusal above.
    assert_eq!(db.read("/k").unwrap(), None);
}

#[test]
fn watch_fires_on_write_and_rm_and_interleaves_with_replies() {
    let (_dir, d, sock) = daemon(&[("/cloudstore/role", "storage")]);
    let mut watcher = QubesDb::open(&sock).unwrap();
    watcher.watch("/cloudstore/").unwrap();
    watcher.watch("/vm-config/cloudstore.role").unwrap();
    assert_eq!(
        watcher.next_event(Some(SHORT)).unwrap(),
        None,
        "no change, no event"
    );

    let mut writer = QubesDb::open(&sock).unwrap();
    writer.write("/cloudstore/volumes", b"work").unwrap();
    assert_eq!(
        watcher.next_event(Some(LONG)).unwrap().as_deref(),
        Some("/cloudstore/volumes")
    );

    // An event that arrives while the watcher waits for a reply is kept, not lost.
    writer.write("/cloudstore/remote", b"x:y").unwrap();
    d.write("/vm-config/cloudstore.role", b"consumer").unwrap();
    // Give the daemon a moment so both events are queued ahead of our next reply.
    std::thread::sleep(SHORT);
    assert_eq!(
        watcher.read_string("/cloudstore/role").unwrap().as_deref(),
        Some("storage")
    );
    assert!(watcher.has_pending_event());
    assert_eq!(
        watcher.next_event(Some(LONG)).unwrap().as_deref(),
        Some("/cloudstore/remote")
    );
    assert_eq!(
        watcher.next_event(Some(LONG)).unwrap().as_deref(),
        Some("/vm-config/cloudstore.role")
    );

    // Unrelated keys and near-misses of an exact watch do not fire.
    writer.write("/vm-config/cloudstore.roles", b"x").unwrap();
    writer.write("/other", b"x").unwrap();
    assert_eq!(watcher.next_event(Some(SHORT)).unwrap(), None);

    // Removal fires with the removed path.
    assert!(writer.rm("/cloudstore/volumes").unwrap());
    assert_eq!(
        watcher.next_event(Some(LONG)).unwrap().as_deref(),
        Some("/cloudstore/volumes")
    );

    assert!(watcher.unwatch("/cloudstore/").unwrap());
    assert!(
        !watcher.unwatch("/cloudstore/").unwrap(),
        "only one was registered"
    );
    writer.write("/cloudstore/volumes", b"again").unwrap();
    assert_eq!(watcher.next_event(Some(SHORT)).unwrap(), None);
    assert_eq!(d.watch_count(), 1);
    drop(watcher);
    // The daemon forgets a client's watches when it goes.
    for _ in 0..100 {
        if d.watch_count() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.watch_count(), 0);
}

#[test]
fn duplicate_watches_fire_once_each() {
    let (_dir, d, sock) = daemon(&[]);
    let mut w = QubesDb::open(&sock).unwrap();
    w.watch("/k").unwrap();
    w.watch("/k").unwrap();
    d.write("/k", b"1").unwrap();
    assert_eq!(w.next_event(Some(LONG)).unwrap().as_deref(), Some("/k"));
    assert_eq!(w.next_event(Some(LONG)).unwrap().as_deref(), Some("/k"));
    assert_eq!(w.next_event(Some(SHORT)).unwrap(), None);
}

#[test]
fn daemon_going_away_is_reported() {
    let (_dir, d, sock) = daemon(&[]);
    let mut w = QubesDb::open(&sock).unwrap();
    w.watch("/k").unwrap();
    drop(d);
    assert!(matches!(
        w.next_event(Some(LONG)),
        Err(Error::Disconnected { .. })
    ));
    assert!(matches!(w.read("/k"), Err(Error::Disconnected { .. })));
    let err = QubesDb::open(&sock).unwrap_err();
    assert!(
        err.to_string().contains(&sock.display().to_string()),
        "{err}"
    );
}

fn raw_send(s: &mut UnixStream, kind: u8, path: &[u8], data_len: u32, data: &[u8]) {
    let mut h = Header {
        kind,
        path: path.to_vec(),
        data_len,
    }
    .encode()
    .to_vec();
    h.extend_from_slice(data);
    s.write_all(&h).unwrap();
}

#[track_caller]
fn raw_recv(s: &mut UnixStream) -> Header {
    let mut buf = [0u8; HEADER_LEN];
    s.read_exact(&mut buf).unwrap();
    Header::decode(&buf)
}

#[test]
fn hostile_client_gets_errors_and_others_are_unharmed() {
    let (_dir, d, sock) = daemon(&[("/a", "1")]);
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    // A response type sent as a command: QDB_RESP_ERROR, connection kept.
    raw_send(&mut s, MsgType::RespOk as u8, b"/a", 0, &[]);
    assert_eq!(raw_recv(&mut s).msg_type(), Some(MsgType::RespError));
    // An unknown type with data: the data is discarded, then ERROR.
    raw_send(&mut s, 200, b"/a", 5, b"hello");
    assert_eq!(raw_recv(&mut s).msg_type(), Some(MsgType::RespError));
    // A forbidden character in the path.
    raw_send(&mut s, MsgType::CmdRead as u8, b"/a b", 0, &[]);
    assert_eq!(raw_recv(&mut s).msg_type(), Some(MsgType::RespError));
    // A path filling all 64 bytes is cut to 63 by the daemon, as the real one does.
    let mut long = vec![b'/'];
    long.extend(std::iter::repeat_n(b'x', 63));
    raw_send(&mut s, MsgType::CmdRead as u8, &long, 0, &[]);
    let h = raw_recv(&mut s);
    assert_eq!(h.msg_type(), Some(MsgType::RespErrorNoent));
    assert_eq!(h.path.len(), 63);
    // An oversized write: refused without reading a value.
    raw_send(&mut s, MsgType::CmdWrite as u8, b"/a", 3072, &[b'x'; 3072]);
    assert_eq!(raw_recv(&mut s).msg_type(), Some(MsgType::RespError));
    // A value with NUL: refused, connection kept.
    raw_send(&mut s, MsgType::CmdWrite as u8, b"/a", 3, b"x\0y");
    assert_eq!(raw_recv(&mut s).msg_type(), Some(MsgType::RespError));
    assert_eq!(d.read("/a").as_deref(), Some(&b"1"[..]));
    // Still served.
    raw_send(&mut s, MsgType::CmdRead as u8, b"/a", 0, &[]);
    let h = raw_recv(&mut s);
    assert_eq!((h.msg_type(), h.data_len), (Some(MsgType::RespRead), 1));
    let mut v = [0u8; 1];
    s.read_exact(&mut v).unwrap();
    assert_eq!(&v, b"1");
    // A write to a directory path: ERROR and dropped (qubesdb_write failure in db-cmds.c).
    raw_send(&mut s, MsgType::CmdWrite as u8, b"/dir/", 1, b"x");
    assert_eq!(raw_recv(&mut s).msg_type(), Some(MsgType::RespError));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "connection closed");
    // Half a header, then gone: the daemon must not care.
    let mut s2 = UnixStream::connect(&sock).unwrap();
    s2.write_all(&[0u8; 10]).unwrap();
    drop(s2);
    let mut db = QubesDb::open(&sock).unwrap();
    assert_eq!(db.read("/a").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn full_multiread_dumps_in_reverse_order() {
    let (_dir, _d, sock) = daemon(&[("/a", "1"), ("/b", "2")]);
    let mut s = UnixStream::connect(&sock).unwrap();
    raw_send(&mut s, MsgType::CmdMultiread as u8, b"", 0, &[]);
    let mut seen = Vec::new();
    loop {
        let h = raw_recv(&mut s);
        assert_eq!(h.msg_type(), Some(MsgType::RespMultiread));
        if h.path.is_empty() {
            break;
        }
        let mut v = vec![0u8; h.data_len as usize];
        s.read_exact(&mut v).unwrap();
        seen.push(h.path_lossy());
    }
    assert_eq!(seen, vec!["/b", "/a"]);
}

#[test]
fn client_rejects_a_lying_daemon() {
    // A fake daemon that answers a read with an oversized length: the client must refuse
    // before allocating, and report the socket.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("liar.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let _ = raw_recv(&mut c);
        raw_send(&mut c, MsgType::RespRead as u8, b"/a", u32::MAX, &[]);
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        rest
    });
    let mut db = QubesDb::open(&sock).unwrap();
    let err = db.read("/a").unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("liar.sock"), "{err}");
    assert!(
        matches!(db.read("/a"), Err(Error::Disconnected { .. })),
        "connection abandoned"
    );
    drop(db);
    assert!(
        t.join().unwrap().is_empty(),
        "nothing sent after the bad answer"
    );
}

#[test]
fn daemon_stops_even_when_its_socket_path_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qubesdb.sock");
    let d = QubesDbDaemon::start(&sock, [("/a", "1")]).unwrap();
    let _client = QubesDb::open(&sock).unwrap();
    drop(dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(d);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(LONG).expect("dropping the daemon hung");
}
