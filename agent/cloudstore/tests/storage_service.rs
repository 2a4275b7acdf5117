//! The storage role as it runs in a qube: the real `cloudstore agent` (role storage from the
//! stand-in qubesdb), confined by its real sandbox, serving its real qrexec socket services.
//! Clients connect exactly as qrexec does: the service descriptor, then the protocol; the
//! two-client test goes through pipes and a relay, the shape qrexec-agent gives a call.

mod support;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use cloudstore_protocol::{
    features, Changes, Client, ClientConfig, ErrorCode, Expect, FileRef, FileType, HandshakeError,
    Hello, OpenFlags, Push, RenameMode, Request, Response, Role,
};
use support::*;

fn opened(r: Response) -> u64 {
    match r {
        Response::Opened { handle, .. } | Response::Created { handle, .. } => handle,
        other => panic!("expected Opened or Created, got {other:?}"),
    }
}

fn data(r: Response) -> Vec<u8> {
    match r {
        Response::Data(d) => d,
        other => panic!("expected Data, got {other:?}"),
    }
}

fn names(c: &Client, dir: &str) -> Vec<String> {
    match c
        .call(Request::ReadDir {
            path: dir.into(),
            cookie: 0,
            max: 1000,
            with_attrs: true,
        })
        .unwrap()
    {
        Response::DirPage(p) => {
            let mut v: Vec<String> = p.entries.into_iter().map(|e| e.name).collect();
            v.sort();
            v
        }
        other => panic!("expected DirPage, got {other:?}"),
    }
}

fn write_file(c: &Client, path: &str, content: &[u8]) {
    let h = opened(
        c.call(Request::Create {
            path: path.into(),
            mode: 0o600,
            exclusive: false,
        })
        .unwrap(),
    );
    for (i, piece) in content.chunks(1 << 20).enumerate() {
        c.call(Request::Write {
            file: FileRef::Handle(h),
            offset: (i << 20) as u64,
            data: piece.to_vec(),
        })
        .unwrap();
    }
    c.call(Request::Fsync {
        file: FileRef::Handle(h),
        datasync: false,
    })
    .unwrap();
    c.call(Request::Close { handle: h }).unwrap();
}

/// A volume client that asks only for `features`, as a build from before the others would.
fn client_with(agent: &StorageAgent, features: u32) -> Client {
    let mut hello = Hello::new(Role::Volume);
    hello.features = features;
    Client::connect_unix(
        agent.raw("cloudstore.Volume", "work", "my-work"),
        ClientConfig::new(hello),
    )
    .unwrap()
    .0
}

fn read_path(c: &Client, path: &str) -> Vec<u8> {
    data(
        c.call(Request::Read {
            file: FileRef::Path(path.into()),
            offset: 0,
            len: 1 << 20,
        })
        .unwrap(),
    )
}

fn code(r: Result<Response, cloudstore_protocol::RemoteError>) -> ErrorCode {
    r.expect_err("the request must fail").code
}

/// A plain read/write loop, as qrexec's data pump does (and unlike `io::copy`, whose
/// splice fast path waits to fill a pipe buffer before passing anything on).
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// The caller's side of a qrexec call: the client reads and writes pipes; a relay (qrexec's
/// place) copies them to and from the service socket, half-closing on EOF.
fn over_pipes(stream: UnixStream, role: Role) -> Client {
    let (to_relay_r, to_relay_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (from_relay_r, from_relay_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut up_in = File::from(to_relay_r);
    let mut down_out = File::from(from_relay_w);
    let mut sock_w = stream.try_clone().unwrap();
    let mut sock_r = stream;
    thread::spawn(move || {
        let _ = pump(&mut up_in, &mut sock_w);
        let _ = sock_w.shutdown(std::net::Shutdown::Write);
    });
    thread::spawn(move || {
        let _ = pump(&mut sock_r, &mut down_out);
    });
    let (client, _pushes) = Client::connect(
        File::from(from_relay_r),
        File::from(to_relay_w),
        ClientConfig::new(Hello::new(role)),
    )
    .unwrap();
    client
}

#[test]
fn serves_two_volumes_to_two_clients_over_pipes_each_seeing_only_its_own() {
    let agent = StorageAgent::start("work photos");
    let work = over_pipes(
        agent.raw("cloudstore.Volume", "work", "my-work"),
        Role::Volume,
    );
    let photos = over_pipes(
        agent.raw("cloudstore.Volume", "photos", "my-photos"),
        Role::Volume,
    );
    // Both at once, interleaved, from two threads.
    let t = {
        let photos_dir = "album";
        thread::scope(|s| {
            s.spawn(|| {
                work.call(Request::Mkdir {
                    path: "docs".into(),
                    mode: 0o700,
                })
                .unwrap();
                for i in 0..20 {
                    write_file(&work, &format!("docs/w{i}"), format!("work {i}").as_bytes());
                }
            });
            s.spawn(|| {
                photos
                    .call(Request::Mkdir {
                        path: photos_dir.into(),
                        mode: 0o700,
                    })
                    .unwrap();
                for i in 0..20 {
                    write_file(
                        &photos,
                        &format!("{photos_dir}/p{i}"),
                        &vec![i as u8; 70_000],
                    );
                }
            });
        });
        photos_dir
    };
    assert_eq!(names(&work, ""), vec!["docs"]);
    assert_eq!(names(&photos, ""), vec![t]);
    assert_eq!(names(&work, "docs").len(), 20);
    assert_eq!(read_path(&work, "docs/w7"), b"work 7");
    assert_eq!(read_path(&photos, "album/p3"), vec![3u8; 70_000]);
    // Neither reaches the other's entries, not even by a crafted path.
    assert_eq!(
        code(work.call(Request::Stat {
            file: FileRef::Path("album".into())
        })),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(work.call(Request::Stat {
            file: FileRef::Path("../photos/tree/album".into())
        })),
        ErrorCode::InvalidPath
    );
    // On disk: each volume's tree holds exactly what its client wrote.
    assert!(agent.tree("work").join("docs/w19").is_file());
    assert!(agent.tree("photos").join("album/p19").is_file());
    assert!(!agent.tree("work").join("album").exists());
    // Data is owned by the sandbox user, not root.
    let uid = nix::unistd::User::from_name("cloudstore")
        .unwrap()
        .unwrap()
        .uid;
    let meta = std::fs::metadata(agent.tree("work").join("docs/w0")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid.as_raw());
}

fn refusal(
    r: Result<(Client, std::sync::mpsc::Receiver<Push>), HandshakeError>,
) -> (ErrorCode, String) {
    match r {
        Err(HandshakeError::Refused(e)) => (e.code, e.message),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("the call was accepted"),
    }
}

#[test]
fn refuses_calls_outside_its_configuration_with_a_clear_logged_error_and_keeps_serving() {
    let agent = StorageAgent::start("work");
    let (c, m) = refusal(agent.client("cloudstore.Volume", "photos", "my-photos"));
    assert_eq!(c, ErrorCode::VolumeRefused);
    assert!(
        m.contains("\"photos\" is not served by this storage qube"),
        "{m}"
    );
    let (c, m) = refusal(agent.client("cloudstore.Volume", "Work..", "my-work"));
    assert_eq!(c, ErrorCode::VolumeRefused);
    assert!(m.contains("Work.."), "{m}");
    // No argument on the Volume service: there is no volume "".
    let (c, _) = refusal(agent.client("cloudstore.Volume", "", "my-work"));
    assert_eq!(c, ErrorCode::VolumeRefused);
    // The Sync service on the Volume socket (a misrouted symlink) is refused.
    let stream = cloudstore::qrexec::connect_socket_service(
        &agent.volume_socket(),
        "cloudstore.Sync",
        "work",
        "transfer",
    )
    .unwrap();
    let (c, _) = refusal(Client::connect_unix(
        stream,
        ClientConfig::new(Hello::new(Role::Sync)),
    ));
    assert_eq!(c, ErrorCode::BadRole);
    // A garbage descriptor (not qrexec-agent): the connection is dropped.
    let mut s = UnixStream::connect(agent.volume_socket()).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n\0").unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing is served to a malformed call");
    // A descriptor that never ends: cut at its limit.
    let mut s = UnixStream::connect(agent.volume_socket()).unwrap();
    let _ = s.write_all(&[b'a'; 4096]);
    let _ = s.read_to_end(&mut rest);
    // The good call still works, and every refusal is in the log with peer and reason.
    let (ok, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    assert_eq!(ok.call(Request::Ping).unwrap(), Response::Ok);
    // The log reaches the test through a pipe and a reader thread: wait for each line, as a
    // refused connection is closed right after its line is written.
    agent
        .log
        .wait_for("refused cloudstore.Volume+photos from my-photos");
    agent
        .log
        .wait_for("qrexec service descriptor longer than 1024 bytes");
    agent
        .log
        .wait_for("malformed qrexec service descriptor \"GET / HTTP/1.0");
}

#[test]
fn changes_through_one_handle_run_in_the_order_sent() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    let timeout = Duration::from_secs(30);
    for round in 0..10u32 {
        let path = format!("f{round}");
        let h = opened(
            c.call(Request::Create {
                path: path.clone(),
                mode: 0o600,
                exclusive: true,
            })
            .unwrap(),
        );
        // Sent without waiting, as the consumer sends a file's times behind its last write:
        // the write takes longer, so run out of order the times would be the write's.
        let set = cloudstore_protocol::Timespec::new(1_000_000_000 + i64::from(round), 0);
        let mut calls = Vec::new();
        for piece in 0..4u64 {
            let write = Request::Write {
                file: FileRef::Handle(h),
                offset: piece << 20,
                data: vec![round as u8; 1 << 20],
            };
            calls.push(c.begin(&write, timeout).unwrap());
        }
        let times = Request::SetAttr {
            file: FileRef::Handle(h),
            attr: cloudstore_protocol::SetAttr {
                mode: Some(0o640),
                size: None,
                atime: None,
                mtime: Some(cloudstore_protocol::TimeSet::At(set)),
            },
        };
        calls.push(c.begin(&times, timeout).unwrap());
        calls.push(c.begin(&Request::Close { handle: h }, timeout).unwrap());
        let answers: Vec<Response> = calls.into_iter().map(|p| p.wait().unwrap()).collect();
        match &answers[4] {
            Response::Attr(a) => assert_eq!((a.mtime, a.size), (set, 4 << 20), "{path}"),
            other => panic!("{other:?}"),
        }
        let md = std::fs::metadata(agent.tree("work").join(&path)).unwrap();
        assert_eq!(md.len(), 4 << 20, "{path}");
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime(&md),
            set.secs,
            "{path}: the times were set before a write"
        );
    }
}

#[test]
fn hostile_requests_get_clear_errors_and_the_volume_root_is_never_left() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    write_file(&c, "inside", b"data");
    for bad in [
        "..",
        "../photos",
        "/etc/passwd",
        "a/../../x",
        "a//b",
        "a\0b",
    ] {
        let r = c.call(Request::Stat {
            file: FileRef::Path(bad.into()),
        });
        let e = r.expect_err(bad);
        assert!(
            matches!(e.code, ErrorCode::InvalidPath | ErrorCode::Malformed),
            "{bad:?}: {e:?}"
        );
    }
    assert_eq!(
        code(c.call(Request::Rename {
            from: "inside".into(),
            to: "../escaped".into(),
            mode: RenameMode::Replace
        })),
        ErrorCode::InvalidPath
    );
    // A symlink is stored, never followed: not as a directory, not as a file.
    c.call(Request::Symlink {
        path: "link".into(),
        target: b"/etc".to_vec(),
    })
    .unwrap();
    assert_eq!(
        c.call(Request::ReadLink {
            path: "link".into()
        })
        .unwrap(),
        Response::LinkTarget(b"/etc".to_vec())
    );
    assert_eq!(
        code(c.call(Request::Stat {
            file: FileRef::Path("link/passwd".into())
        })),
        ErrorCode::Symlink
    );
    assert_eq!(
        code(c.call(Request::Open {
            path: "link".into(),
            flags: OpenFlags::default()
        })),
        ErrorCode::Symlink
    );
    // A symlink planted on the storage side (a race or a compromised peer) is not followed
    // either.
    std::os::unix::fs::symlink("/etc", agent.tree("work").join("planted")).unwrap();
    assert_eq!(
        code(c.call(Request::Stat {
            file: FileRef::Path("planted/shadow".into())
        })),
        ErrorCode::Symlink
    );
    assert_eq!(
        code(c.call(Request::Close { handle: 999 })),
        ErrorCode::BadHandle
    );
    // A flood of pipelined requests is answered in full.
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..500 {
                    assert_eq!(c.call(Request::Ping).unwrap(), Response::Ok);
                }
            });
        }
    });
    assert_eq!(read_path(&c, "inside"), b"data");
}

#[test]
fn an_oversized_frame_ends_only_that_connection() {
    let agent = StorageAgent::start("work");
    let (good, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    let mut bad = agent.raw("cloudstore.Volume", "work", "my-work");
    let mut hello = Vec::new();
    hello.extend_from_slice(b"CSTORE\r\n");
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.push(1);
    hello.extend_from_slice(&[0; 3]);
    hello.extend_from_slice(&0u32.to_le_bytes());
    bad.write_all(&hello).unwrap();
    // A frame header claiming 1 GiB of payload.
    let mut header = vec![0u8; 16];
    header[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let _ = bad.write_all(&header);
    bad.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink);
    assert_eq!(good.call(Request::Ping).unwrap(), Response::Ok);
    agent.log.wait_for("connection from my-work ended");
}

#[test]
fn handles_keep_naming_their_file_through_rename_and_unlink() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    write_file(&c, "a", b"hello");
    let h = opened(
        c.call(Request::Open {
            path: "a".into(),
            flags: OpenFlags {
                write: true,
                truncate: false,
            },
        })
        .unwrap(),
    );
    c.call(Request::Rename {
        from: "a".into(),
        to: "b".into(),
        mode: RenameMode::Replace,
    })
    .unwrap();
    c.call(Request::Write {
        file: FileRef::Handle(h),
        offset: 0,
        data: b"J".to_vec(),
    })
    .unwrap();
    assert_eq!(read_path(&c, "b"), b"Jello");
    c.call(Request::Unlink { path: "b".into() }).unwrap();
    c.call(Request::Write {
        file: FileRef::Handle(h),
        offset: 5,
        data: b"!".to_vec(),
    })
    .unwrap();
    assert_eq!(
        data(
            c.call(Request::Read {
                file: FileRef::Handle(h),
                offset: 0,
                len: 100
            })
            .unwrap()
        ),
        b"Jello!"
    );
    assert_eq!(
        code(c.call(Request::Stat {
            file: FileRef::Path("b".into())
        })),
        ErrorCode::NotFound
    );
    c.call(Request::Close { handle: h }).unwrap();
    // The unlinked content is kept as a version.
    match c.call(Request::ListVersions { path: "b".into() }).unwrap() {
        Response::Versions(v) => assert!(!v.versions.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn changes_answer_with_the_attributes_they_left_only_to_a_client_that_asked() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    assert_ne!(c.session().features & features::ATTRS_AFTER, 0);
    c.call(Request::Mkdir {
        path: "d".into(),
        mode: 0o700,
    })
    .unwrap();
    let stat_of = |c: &Client, p: &str| match c
        .call(Request::Stat {
            file: FileRef::Path(p.into()),
        })
        .unwrap()
    {
        Response::Attr(a) | Response::AttrWith { attr: a, .. } => a,
        other => panic!("expected Attr, got {other:?}"),
    };
    // A create and an unlink carry their directory as a stat sees it after them.
    let before = stat_of(&c, "d");
    match c
        .call(Request::Create {
            path: "d/x".into(),
            mode: 0o600,
            exclusive: true,
        })
        .unwrap()
    {
        Response::Created {
            handle,
            attr,
            parent,
        } => {
            assert_eq!(attr, stat_of(&c, "d/x"));
            assert_eq!(parent, stat_of(&c, "d"));
            assert!(parent.ctime > before.ctime || parent.size != before.size);
            c.call(Request::Close { handle }).unwrap();
        }
        other => panic!("expected Created, got {other:?}"),
    }
    match c.call(Request::Unlink { path: "d/x".into() }).unwrap() {
        Response::Unlinked { parent } => assert_eq!(parent, stat_of(&c, "d")),
        other => panic!("expected Unlinked, got {other:?}"),
    }
    match c.call(Request::Unlink { path: "d".into() }) {
        Err(e) => assert_eq!(e.code, ErrorCode::IsDir),
        Ok(other) => panic!("unlink of a directory answered {other:?}"),
    }
    let h = opened(
        c.call(Request::Create {
            path: "a".into(),
            mode: 0o600,
            exclusive: true,
        })
        .unwrap(),
    );
    let stat = |c: &Client| stat_of(c, "a");
    let written = |r: Response| match r {
        Response::WrittenAttr { written, attr } => (written, attr),
        other => panic!("expected WrittenAttr, got {other:?}"),
    };
    let (n, attr) = written(
        c.call(Request::Write {
            file: FileRef::Handle(h),
            offset: 0,
            data: vec![7; 5000],
        })
        .unwrap(),
    );
    assert_eq!((n, attr.size), (5000, 5000));
    assert_eq!(
        attr,
        stat(&c),
        "the answer is the file as a stat sees it after the write"
    );
    // By path, past the end: the size the hole makes.
    let (n, attr) = written(
        c.call(Request::Write {
            file: FileRef::Path("a".into()),
            offset: 9999,
            data: vec![1],
        })
        .unwrap(),
    );
    assert_eq!((n, attr.size), (1, 10_000));
    assert_eq!(attr, stat(&c));
    c.call(Request::Close { handle: h }).unwrap();

    // A client from before the feature gets the answer it knows.
    let old = client_with(&agent, features::PUSH);
    assert_eq!(old.session().features, features::PUSH);
    assert_eq!(
        old.call(Request::Write {
            file: FileRef::Path("a".into()),
            offset: 0,
            data: b"xy".to_vec(),
        })
        .unwrap(),
        Response::Written(2)
    );
    let created = old
        .call(Request::Create {
            path: "b".into(),
            mode: 0o600,
            exclusive: true,
        })
        .unwrap();
    assert!(matches!(created, Response::Opened { .. }), "{created:?}");
    assert_eq!(
        old.call(Request::Unlink { path: "b".into() }).unwrap(),
        Response::Ok
    );
}

#[test]
fn a_small_file_opened_for_reading_comes_with_its_content_to_a_client_that_asked() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    assert_ne!(c.session().features & features::OPEN_HEAD, 0);
    let max = cloudstore_protocol::OPEN_HEAD_MAX as usize;
    let read_only = OpenFlags {
        write: false,
        truncate: false,
    };
    for (name, len) in [("empty", 0), ("one", 1), ("largest", max)] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        write_file(&c, name, &content);
        match c
            .call(Request::Open {
                path: name.into(),
                flags: read_only,
            })
            .unwrap()
        {
            Response::OpenedWith {
                handle,
                attr,
                content: got,
            } => {
                assert_eq!(attr.size, len as u64);
                assert!(got == content, "{name}: the content is the file's");
                c.call(Request::Close { handle }).unwrap();
            }
            other => panic!("{name}: expected OpenedWith, got {other:?}"),
        }
    }
    // Larger, opened for writing, or a client that did not ask: a plain answer.
    write_file(&c, "large", &vec![1; max + 1]);
    let open = |c: &Client, name: &str, write: bool| {
        c.call(Request::Open {
            path: name.into(),
            flags: OpenFlags {
                write,
                truncate: false,
            },
        })
        .unwrap()
    };
    assert!(matches!(open(&c, "large", false), Response::Opened { .. }));
    assert!(matches!(open(&c, "one", true), Response::Opened { .. }));
    let old = client_with(&agent, features::PUSH | features::ATTRS_AFTER);
    assert!(matches!(open(&old, "one", false), Response::Opened { .. }));
}

#[test]
fn a_small_file_looked_up_comes_with_its_content_to_a_consumer_that_asked() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    assert_ne!(c.session().features & features::STAT_HEAD, 0);
    let max = cloudstore_protocol::STAT_HEAD_MAX as usize;
    let stat = |c: &Client, name: &str| {
        c.call(Request::Stat {
            file: FileRef::Path(name.into()),
        })
        .unwrap()
    };
    for (name, len) in [("empty", 0), ("one", 1), ("largest", max)] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        write_file(&c, name, &content);
        match stat(&c, name) {
            Response::AttrWith { attr, content: got } => {
                assert_eq!(attr.size, len as u64);
                assert!(got == content, "{name}: the content is the file's");
            }
            other => panic!("{name}: expected AttrWith, got {other:?}"),
        }
    }
    // Larger, a directory, a stat by handle, a client that did not ask, or the sync role:
    // the attributes alone.
    write_file(&c, "large", &vec![1; max + 1]);
    assert!(matches!(stat(&c, "large"), Response::Attr(_)));
    c.call(Request::Mkdir {
        path: "d".into(),
        mode: 0o700,
    })
    .unwrap();
    assert!(matches!(stat(&c, "d"), Response::Attr(a) if a.kind == FileType::Dir));
    let h = opened(
        c.call(Request::Open {
            path: "one".into(),
            flags: OpenFlags {
                write: true,
                truncate: false,
            },
        })
        .unwrap(),
    );
    assert!(matches!(
        c.call(Request::Stat {
            file: FileRef::Handle(h)
        })
        .unwrap(),
        Response::Attr(_)
    ));
    let old = client_with(&agent, features::ALL & !features::STAT_HEAD);
    assert!(matches!(stat(&old, "one"), Response::Attr(_)));
    let (sync, _) = agent.client("cloudstore.Sync", "work", "transfer").unwrap();
    assert_ne!(sync.session().features & features::STAT_HEAD, 0);
    assert!(matches!(stat(&sync, "one"), Response::Attr(_)));
}

/// How many of the 4 KiB pages of `file` in `range` are in the page cache.
fn cached_pages(file: &std::path::Path, range: std::ops::Range<u64>) -> usize {
    use std::os::fd::AsRawFd;
    let f = File::open(file).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped below; mincore
    // writes one byte per page into a vector of that many.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let mut pages = vec![0u8; len.div_ceil(4096)];
        assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0);
        libc::munmap(map, len);
        pages[range.start as usize / 4096..range.end as usize / 4096]
            .iter()
            .filter(|p| *p & 1 == 1)
            .count()
    }
}

#[test]
fn a_handle_read_front_to_back_is_read_ahead_on_disk_and_one_read_here_and_there_is_not() {
    use std::os::fd::AsRawFd;
    const MIB: u64 = 1 << 20;
    const PIECE: u32 = 128 << 10;
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    write_file(&c, "big", &vec![7u8; 8 * MIB as usize]);
    let on_disk = agent.tree("work").join("big");
    let f = File::open(&on_disk).unwrap();
    // SAFETY: plain syscall on an open descriptor. The file was fsynced: its pages are clean
    // and leave the cache.
    assert_eq!(
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
        0
    );
    assert_eq!(cached_pages(&on_disk, 0..8 * MIB), 0, "evicted");
    let h = opened(
        c.call(Request::Open {
            path: "big".into(),
            flags: OpenFlags {
                write: false,
                truncate: false,
            },
        })
        .unwrap(),
    );
    let read = |offset: u64| {
        let d = data(
            c.call(Request::Read {
                file: FileRef::Handle(h),
                offset,
                len: PIECE,
            })
            .unwrap(),
        );
        assert!(d.len() == PIECE as usize && d.iter().all(|b| *b == 7));
    };
    // Reads here and there: the disk reads what they ask for (and the kernel's own 128 KiB
    // or so around it), nothing far beyond.
    read(5 * MIB);
    read(3 * MIB + MIB / 2);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(cached_pages(&on_disk, 6 * MIB..8 * MIB), 0);
    assert_eq!(cached_pages(&on_disk, 4 * MIB + MIB / 4..5 * MIB), 0);
    // Front to back: after two reads the next 2 MiB are on their way from the disk.
    read(0);
    read(PIECE as u64);
    let ahead = MIB..2 * MIB + 2 * PIECE as u64;
    let pages = ((ahead.end - ahead.start) / 4096) as usize;
    wait_for(
        "the 2 MiB after a sequential reader's second read in the page cache",
        10,
        || cached_pages(&on_disk, ahead.clone()) == pages,
    );
    c.call(Request::Close { handle: h }).unwrap();
}

/// Whether some of `file`'s bytes in `range` are written but have no place on disk yet
/// (ext4's delayed allocation, `FIEMAP_EXTENT_DELALLOC`): the kernel has not started writing
/// them out.
fn waits_for_writeback(file: &std::path::Path, range: std::ops::Range<u64>) -> bool {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; 64],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
    let f = File::open(file).unwrap();
    let mut map = Fiemap {
        start: range.start,
        length: range.end - range.start,
        flags: 0,
        mapped: 0,
        count: 64,
        reserved: 0,
        extents: [Extent::default(); 64],
    };
    // SAFETY: FS_IOC_FIEMAP fills at most `count` extents of the struct we pass.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map) };
    assert_eq!(r, 0, "FIEMAP: {}", io::Error::last_os_error());
    assert!(map.mapped < map.count, "more extents than asked for");
    map.extents[..map.mapped as usize]
        .iter()
        .any(|e| e.flags & FIEMAP_EXTENT_DELALLOC != 0)
}

#[test]
fn a_handle_written_front_to_back_goes_to_disk_behind_the_writer_and_one_written_here_and_there_waits(
) {
    const MIB: u64 = 1 << 20;
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    let write = |name: &str, offsets: &[u64]| {
        let h = opened(
            c.call(Request::Create {
                path: name.into(),
                mode: 0o600,
                exclusive: true,
            })
            .unwrap(),
        );
        for &offset in offsets {
            c.call(Request::Write {
                file: FileRef::Handle(h),
                offset,
                data: vec![5; MIB as usize],
            })
            .unwrap();
        }
        agent.tree("work").join(name)
    };
    // Here and there: left to the kernel's own schedule (pages 30 s old, or much memory
    // dirty), so still waiting a second later.
    let scattered = write(
        "scattered",
        &[0, 40 * MIB, 20 * MIB, 60 * MIB, 10 * MIB, 30 * MIB],
    );
    // Front to back: the first 8 MiB are handed to the disk as the writer goes on.
    let offsets: Vec<u64> = (0..16).map(|i| i * MIB).collect();
    let stream = write("stream", &offsets);
    wait_for(
        "the first 8 MiB of a sequential writer on their way to disk",
        10,
        || !waits_for_writeback(&stream, 0..8 * MIB),
    );
    thread::sleep(Duration::from_secs(1));
    assert!(waits_for_writeback(&scattered, 0..70 * MIB));
}

#[test]
fn sync_discovers_volumes_follows_the_journal_and_puts_atomically() {
    let agent = StorageAgent::start("work photos");
    let (disc, _) = agent.client("cloudstore.Sync", "", "transfer").unwrap();
    assert_eq!(names(&disc, ""), vec!["photos", "work"]);
    assert_eq!(
        code(disc.call(Request::JournalHead)),
        ErrorCode::PermissionDenied
    );

    let (vol, pushes) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    let head = match vol.call(Request::Subscribe).unwrap() {
        Response::Subscribed { head } => head,
        other => panic!("{other:?}"),
    };
    let (sync, _) = agent.client("cloudstore.Sync", "work", "transfer").unwrap();
    // Sync may not use the consumer's in-place operations.
    assert_eq!(
        code(sync.call(Request::Write {
            file: FileRef::Path("x".into()),
            offset: 0,
            data: vec![1]
        })),
        ErrorCode::PermissionDenied
    );
    let content = vec![7u8; 600_000];
    let mut up = sync
        .upload(Request::Put {
            path: "from-cloud".into(),
            expect: Expect::Absent,
            mode: Some(0o600),
            mtime: None,
        })
        .unwrap();
    up.write_all(&content).unwrap();
    // Nothing visible before the final chunk.
    assert!(!agent.tree("work").join("from-cloud").exists());
    up.finish().unwrap();
    let mut got = Vec::new();
    let mut dl = sync.get("from-cloud", None).unwrap();
    dl.read_to_end(&mut got).unwrap();
    assert_eq!(dl.finish().unwrap().size, content.len() as u64);
    assert_eq!(got, content);
    // The consumer was told.
    let push = pushes.recv_timeout(WAIT).expect("a change push");
    match push {
        Push::Change(e) => {
            assert!(e.seq >= head);
            assert_eq!(e.path, "from-cloud");
        }
        other => panic!("{other:?}"),
    }
    // The journal has it; the acknowledgement survives a restart.
    let next = match sync
        .call(Request::ChangesSince {
            since: 0,
            limit: 100,
        })
        .unwrap()
    {
        Response::Changes(Changes::Entries { entries, next }) => {
            assert!(entries.iter().any(|e| e.path == "from-cloud"));
            next
        }
        other => panic!("{other:?}"),
    };
    sync.call(Request::Ack { seq: next }).unwrap();
    // A put whose expectation fails changes nothing.
    let mut up = sync
        .upload(Request::Put {
            path: "from-cloud".into(),
            expect: Expect::Absent,
            mode: None,
            mtime: None,
        })
        .unwrap();
    up.write_all(b"other").unwrap();
    assert_eq!(up.finish().unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(read_path(&vol, "from-cloud"), content);
    // ListTree in small pages walks everything once, in order.
    for d in ["d1", "d1/e", "d2"] {
        vol.call(Request::Mkdir {
            path: d.into(),
            mode: 0o700,
        })
        .unwrap();
    }
    write_file(&vol, "d1/e/f", b"x");
    write_file(&vol, "d2/g", b"y");
    let mut all = Vec::new();
    let mut after = None;
    loop {
        match sync
            .call(Request::ListTree {
                after: after.clone(),
                limit: 2,
            })
            .unwrap()
        {
            Response::TreePage(p) => {
                all.extend(p.entries.into_iter().map(|e| e.path));
                match p.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(all, ["d1", "d1/e", "d1/e/f", "d2", "d2/g", "from-cloud"]);
    drop((vol, sync, disc));
    let mut agent = agent;
    agent.kill();
    agent.spawn();
    assert!(agent
        .data_dir()
        .join("volumes/work/journal/sync-ack")
        .exists());
    let (sync, _) = agent.client("cloudstore.Sync", "work", "transfer").unwrap();
    match sync
        .call(Request::ChangesSince {
            since: 0,
            limit: 100,
        })
        .unwrap()
    {
        Response::Changes(Changes::Entries { entries, .. }) => {
            assert!(
                entries.iter().any(|e| e.path == "from-cloud"),
                "the journal survives a kill -9"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_upload_cut_by_a_killed_agent_leaves_nothing_and_the_restarted_agent_serves() {
    let mut agent = StorageAgent::start("work");
    {
        let (sync, _) = agent.client("cloudstore.Sync", "work", "transfer").unwrap();
        let mut up = sync
            .upload(Request::Put {
                path: "big".into(),
                expect: Expect::Any,
                mode: None,
                mtime: None,
            })
            .unwrap();
        up.write_all(&vec![1u8; 3 << 20]).unwrap();
        agent.kill();
        assert!(up.finish().is_err());
    }
    agent.spawn();
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    assert_eq!(
        code(c.call(Request::Stat {
            file: FileRef::Path("big".into())
        })),
        ErrorCode::NotFound
    );
    let staging = std::fs::read_dir(agent.data_dir().join("volumes/work/staging")).unwrap();
    assert_eq!(staging.count(), 0, "the partial upload was cleaned up");
    write_file(&c, "after", b"ok");
    assert_eq!(read_path(&c, "after"), b"ok");
}

/// Journal records are not flushed one by one; a stopping agent flushes and closes each
/// journal (no `open` marker left, so even a later boot trusts it), a killed one leaves the
/// marker for the next start to judge (agent/store/src/journal.rs).
#[test]
fn a_stopped_agent_closes_its_journals_and_a_killed_one_leaves_them_open() {
    fn agent_marker(agent: &StorageAgent, v: &str) -> bool {
        agent
            .data_dir()
            .join(format!("volumes/{v}/journal/open"))
            .exists()
    }
    let mut agent = StorageAgent::start("work photos");
    {
        let (c, _) = agent
            .client("cloudstore.Volume", "work", "my-work")
            .unwrap();
        write_file(&c, "f", b"x");
    }
    assert!(
        agent_marker(&agent, "work") && agent_marker(&agent, "photos"),
        "open while serving"
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !agent_marker(&agent, "work") && !agent_marker(&agent, "photos"),
        "{log}"
    );
    agent.spawn();
    assert!(agent_marker(&agent, "work"));
    agent.kill();
    assert!(
        agent_marker(&agent, "work"),
        "a killed agent cannot close its journal"
    );
}

#[test]
fn the_running_agent_is_confined() {
    let dir = shared_tempdir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "outside the data directory").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut agent = StorageAgent::start("work");
    agent.kill();
    // Readable by any user, so only landlock can refuse it.
    std::env::set_var(
        cloudstore::sandbox_probe::PROBE_ENV,
        format!("open:{},write:{}/x", secret.display(), dir.path().display()),
    );
    agent.spawn();
    std::env::remove_var(cloudstore::sandbox_probe::PROBE_ENV);
    // READY comes on the notify socket, the log through a pipe: wait for the lines.
    agent
        .log
        .wait_for(&format!("sandbox probe open:{}: refused", secret.display()));
    agent.log.wait_for("/x: refused");
    let log = agent.log.text();
    assert!(!log.contains("ALLOWED"), "{log}");
    // /proc shows the rest: the sandbox user, no capabilities, no_new_privs, seccomp filter.
    let uid = nix::unistd::User::from_name("cloudstore")
        .unwrap()
        .unwrap()
        .uid;
    let field = |name: &str| proc_status_field(agent.pid(), name);
    assert_eq!(field("Uid:"), uid.as_raw().to_string());
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    // A network socket kills the agent: seccomp's trap, reported with the syscall number.
    agent.kill();
    let mut cmd = agent.command(&["agent"]);
    cmd.env(cloudstore::sandbox_probe::PROBE_ENV, "socket:inet")
        .stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(159), "{err}");
    // 41 is socket(2) on x86_64, the one architecture the policy is written for.
    assert!(err.contains("seccomp refused syscall 41"), "{err}");
}

#[test]
fn a_volume_added_in_qubesdb_is_served_and_a_removed_one_is_cut_off() {
    let agent = StorageAgent::start("work");
    let (c, _) = agent
        .client("cloudstore.Volume", "work", "my-work")
        .unwrap();
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Ok);
    let mut db = cloudstore_qubesdb::QubesDb::open(agent.db.socket()).unwrap();
    db.write("/cloudstore/volumes", b"photos").unwrap();
    agent.log.wait_for("configured volumes changed");
    let (p, _) = agent
        .client("cloudstore.Volume", "photos", "my-photos")
        .unwrap();
    assert_eq!(p.call(Request::Ping).unwrap(), Response::Ok);
    wait_until("the work connection to be closed", || {
        c.call_timeout(Request::Ping, Duration::from_secs(2))
            .is_err()
    });
    let (code, _) = refusal(agent.client("cloudstore.Volume", "work", "my-work"));
    assert_eq!(code, ErrorCode::VolumeRefused);
}
