//! Client and server over a real socket pair, as qrexec connects them: many threads calling
//! at once, answers out of order, streams, pushes, timeouts, lost connections.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cloudstore_protocol::*;
use common::handler::*;

struct Setup {
    client: Client,
    pushes: Receiver<Push>,
    server: JoinHandle<Result<ServeStats, ServeError>>,
    /// The server's end, to cut the connection from the server side.
    server_end: UnixStream,
    handler: Arc<MemHandler>,
}

fn start_with(role: Role, server: ServerConfig, client: ClientConfig) -> Setup {
    start_handler(role, server, client, MemHandler::default())
}

fn start_handler(
    role: Role,
    server: ServerConfig,
    client: ClientConfig,
    handler: MemHandler,
) -> Setup {
    let (a, b) = UnixStream::pair().unwrap();
    let handler = Arc::new(handler);
    let h = handler.clone();
    let server_end = b.try_clone().unwrap();
    let r = b.try_clone().unwrap();
    let mut server = server;
    server.accept.role = role;
    let server = std::thread::spawn(move || serve(r, b, &server, &*h));
    let mut client = client;
    client.hello.role = role;
    let (client, pushes) = Client::connect_unix(a, client).unwrap();
    Setup {
        client,
        pushes,
        server,
        server_end,
        handler,
    }
}

fn start(role: Role) -> Setup {
    start_with(
        role,
        ServerConfig::new(Accept::new(role)),
        ClientConfig::new(Hello::new(role)),
    )
}

#[test]
fn handshake_agrees_on_version_role_and_features() {
    let s = start(Role::Volume);
    let sess = s.client.session();
    assert_eq!(sess.version, VERSION);
    assert_eq!(sess.role, Role::Volume);
    assert_eq!(sess.features, features::ALL);
    assert_eq!(sess.max_payload as usize, MAX_PAYLOAD);
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
}

#[test]
fn many_threads_share_one_stream() {
    let s = start(Role::Volume);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = s.client.clone();
            std::thread::spawn(move || {
                // Overlapping slow calls: the server must run them side by side.
                c.call(Request::Stat {
                    file: FileRef::Path("sleep/200".into()),
                })
                .unwrap();
                for i in 0..150u32 {
                    let path = format!("t{t}/f{}", i % 5);
                    let data = format!("thread {t} write {i}").into_bytes();
                    let w = c
                        .call(Request::Write {
                            file: FileRef::Path(path.clone()),
                            offset: 0,
                            data: data.clone(),
                        })
                        .unwrap();
                    assert_eq!(w, Response::Written(data.len() as u32));
                    let r = c
                        .call(Request::Read {
                            file: FileRef::Path(path.clone()),
                            offset: 0,
                            len: data.len() as u32,
                        })
                        .unwrap();
                    assert_eq!(r, Response::Data(data), "thread {t} call {i}");
                    if i % 10 == 0 {
                        let e = c
                            .call(Request::Stat {
                                file: FileRef::Path(format!("t{t}/missing{i}")),
                            })
                            .unwrap_err();
                        assert_eq!(e.code, ErrorCode::NotFound);
                        assert!(e.message.contains(&format!("t{t}/missing{i}")), "{e}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        s.handler.max_running.load(Ordering::SeqCst) > 1,
        "requests ran concurrently on the server"
    );
    assert!(
        s.handler.max_running.load(Ordering::SeqCst) <= 8,
        "at most `workers` at once"
    );
    drop(s.client);
    let stats = s.server.join().unwrap().unwrap();
    assert_eq!(stats.requests, 8 * (1 + 150 * 2 + 15));
    assert_eq!(s.handler.closed.load(Ordering::SeqCst), 1);
}

#[test]
fn a_slow_answer_does_not_hold_up_a_fast_one() {
    let s = start(Role::Volume);
    let c = s.client.clone();
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        c.call(Request::Stat {
            file: FileRef::Path("sleep/700".into()),
        })
        .unwrap();
        t.elapsed()
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    for _ in 0..20 {
        s.client.call(Request::Ping).unwrap();
    }
    let fast = t.elapsed();
    let slow = slow.join().unwrap();
    assert!(
        fast < slow,
        "20 pings ({fast:?}) finished while the slow call ({slow:?}) was still running"
    );
    assert!(slow >= Duration::from_millis(700));
}

#[test]
fn quick_requests_run_on_the_reading_thread_and_the_rest_on_workers() {
    for inline_stat in [false, true] {
        let s = start_handler(
            Role::Volume,
            ServerConfig::new(Accept::new(Role::Volume)),
            ClientConfig::new(Hello::new(Role::Volume)),
            MemHandler {
                inline_stat,
                ..MemHandler::default()
            },
        );
        let stat = || {
            s.client.call(Request::Stat {
                file: FileRef::Path("sleep/300".into()),
            })
        };
        stat().unwrap();
        s.client.call(Request::Ping).unwrap();
        // A ping sent while an inline stat runs waits for it: the reader is busy.
        let c = s.client.clone();
        let slow = std::thread::spawn(move || {
            c.call(Request::Stat {
                file: FileRef::Path("sleep/300".into()),
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        s.client.call(Request::Ping).unwrap();
        let ping = t.elapsed();
        slow.join().unwrap().unwrap();
        let reader = s.server.thread().id();
        let ran_on = s.handler.ran_on.lock().unwrap().clone();
        for (op, thread) in ran_on {
            let on_reader = thread == reader;
            let expected = inline_stat && op == Op::Stat;
            assert_eq!(
                on_reader, expected,
                "{op} ran on the reading thread: {on_reader} (inline stat: {inline_stat})"
            );
        }
        assert_eq!(
            ping >= Duration::from_millis(150),
            inline_stat,
            "a ping behind a 300 ms stat took {ping:?} (inline stat: {inline_stat})"
        );
    }
}

#[test]
fn requests_of_one_lane_run_in_the_order_sent_and_others_pass_them() {
    for laned_sleeps in [false, true] {
        let s = start_handler(
            Role::Volume,
            ServerConfig::new(Accept::new(Role::Volume)),
            ClientConfig::new(Hello::new(Role::Volume)),
            MemHandler {
                laned_sleeps,
                ..MemHandler::default()
            },
        );
        let sleep = |path: &str| {
            let req = Request::Stat {
                file: FileRef::Path(path.into()),
            };
            s.client.begin(&req, Duration::from_secs(10)).unwrap()
        };
        // Sent back to back without waiting, as a write and the attribute change behind it.
        let first = sleep("sleep/300/first");
        let second = sleep("sleep/0/second");
        let third = sleep("sleep/0/third");
        let t = Instant::now();
        s.client.call(Request::Ping).unwrap();
        let ping = t.elapsed();
        for call in [first, second, third] {
            call.wait().unwrap();
        }
        let slept = s.handler.slept.lock().unwrap().clone();
        if laned_sleeps {
            assert_eq!(
                slept,
                ["sleep/300/first", "sleep/0/second", "sleep/0/third"],
                "one lane runs in the order sent"
            );
        } else {
            assert_eq!(
                slept[2], "sleep/300/first",
                "without a lane the quick ones pass"
            );
        }
        assert!(
            ping < Duration::from_millis(250),
            "a request of no lane waited for the lane ({ping:?}, lane: {laned_sleeps})"
        );
        assert!(
            !s.handler
                .ran_on
                .lock()
                .unwrap()
                .iter()
                .any(|(_, t)| *t == s.server.thread().id()),
            "laned requests run on workers"
        );
    }
}

#[test]
fn a_call_times_out_and_the_connection_keeps_working() {
    let s = start(Role::Volume);
    let e = s
        .client
        .call_timeout(
            Request::Stat {
                file: FileRef::Path("sleep/1500".into()),
            },
            Duration::from_millis(200),
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TimedOut);
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    assert!(e.message.contains("Stat"), "{e}");
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
}

#[test]
fn a_caller_that_gives_up_while_reading_leaves_the_stream_to_those_waiting() {
    let s = start(Role::Volume);
    let c = s.client.clone();
    // Reads the stream for its own answer (nobody else does), then gives up.
    let gives_up = std::thread::spawn(move || {
        c.call_timeout(
            Request::Stat {
                file: FileRef::Path("sleep/1500".into()),
            },
            Duration::from_millis(150),
        )
    });
    std::thread::sleep(Duration::from_millis(50));
    // Waits behind it; its answer comes after the first caller left.
    let t = Instant::now();
    let attr = s.client.call(Request::Stat {
        file: FileRef::Path("sleep/400".into()),
    });
    let took = t.elapsed();
    assert_eq!(
        gives_up.join().unwrap().unwrap_err().code,
        ErrorCode::TimedOut
    );
    assert!(attr.is_ok(), "{attr:?}");
    assert!(
        took < Duration::from_millis(1200),
        "the second call took {took:?} for a 400 ms answer"
    );
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
}

#[test]
fn callers_giving_up_and_waiting_at_once_each_get_their_own_outcome() {
    let s = start(Role::Volume);
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let c = s.client.clone();
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    // Every third call gives up long before its answer; the others have
                    // time to spare. Whoever reads the stream changes all the time.
                    let give_up = (t + i) % 3 == 0;
                    let (ms, timeout) = if give_up {
                        (150, 10)
                    } else {
                        ((t * 7 + i) % 15, 5000)
                    };
                    let r = c.call_timeout(
                        Request::Stat {
                            file: FileRef::Path(format!("sleep/{ms}")),
                        },
                        Duration::from_millis(timeout),
                    );
                    match r {
                        Err(e) if give_up => assert_eq!(e.code, ErrorCode::TimedOut, "{e}"),
                        Ok(_) if !give_up => {}
                        other => panic!("thread {t} call {i} (give up: {give_up}): {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
}

#[test]
fn a_server_stopping_inside_an_answer_fails_the_call_instead_of_hanging_it() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut r = b.try_clone().unwrap();
        server_handshake(&mut r, &mut b, &Accept::new(Role::Volume)).unwrap();
        let req = read_frame(&mut r).unwrap();
        // The header of an answer, a tenth of its payload, then nothing.
        let mut frame = Vec::new();
        write_frame(&mut frame, FrameType::Response, 0, req.id, &[0u8; 100]).unwrap();
        b.write_all(&frame[..HEADER_LEN + 10]).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(b);
    });
    let mut config = ClientConfig::new(Hello::new(Role::Volume));
    config.timeout = Duration::from_millis(300);
    let (client, _pushes) = Client::connect_unix(a, config).unwrap();
    let t = Instant::now();
    let e = client.call(Request::Ping).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, ErrorCode::ConnectionLost, "{e}");
    assert!(e.message.contains("within a frame"), "{e}");
    assert!(took < Duration::from_secs(2), "the call took {took:?}");
    assert_eq!(
        client.call(Request::Ping).unwrap_err().code,
        ErrorCode::ConnectionLost
    );
    server.join().unwrap();
}

#[test]
fn no_answer_is_lost_while_callers_take_turns_reading() {
    // Each caller reads the stream itself when nobody else does: an answer delivered by
    // the reader before must still reach a caller who then takes the stream (a lost one
    // shows as a call that times out).
    let s = start(Role::Volume);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let c = s.client.clone();
            std::thread::spawn(move || {
                for _ in 0..1500 {
                    let r = c.call_timeout(Request::Ping, Duration::from_secs(5));
                    assert_eq!(r.unwrap(), Response::Ok);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_lost_connection_wakes_every_waiter() {
    let s = start(Role::Volume);
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let c = s.client.clone();
            std::thread::spawn(move || {
                c.call(Request::Stat {
                    file: FileRef::Path("hang".into()),
                })
            })
        })
        .collect();
    // Wait until all five are inside the handler, then cut the stream under them.
    let t = Instant::now();
    while s.handler.running.load(Ordering::SeqCst) < 5 {
        assert!(t.elapsed() < Duration::from_secs(10), "calls never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.server_end.shutdown(std::net::Shutdown::Both).unwrap();
    for w in waiters {
        let e = w.join().unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::ConnectionLost, "{e}");
        assert!(e.message.contains("closed"), "{e}");
    }
    let e = s.client.call(Request::Ping).unwrap_err();
    assert_eq!(e.code, ErrorCode::ConnectionLost);
    assert!(s.client.lost().is_some());
    s.handler.release_hung();
    s.server.join().unwrap().unwrap();
}

#[test]
fn the_in_flight_window_bounds_outstanding_calls() {
    let mut cc = ClientConfig::new(Hello::new(Role::Volume));
    cc.max_in_flight = 3;
    let s = start_with(
        Role::Volume,
        ServerConfig::new(Accept::new(Role::Volume)),
        cc,
    );
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let c = s.client.clone();
            std::thread::spawn(move || {
                c.call(Request::Stat {
                    file: FileRef::Path("sleep/50".into()),
                })
                .unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.handler.handled.load(Ordering::SeqCst), 10);
    assert!(s.handler.max_running.load(Ordering::SeqCst) <= 3);
}

#[test]
fn a_call_that_may_be_skipped_leaves_room_in_the_window() {
    let mut cc = ClientConfig::new(Hello::new(Role::Volume));
    cc.max_in_flight = 4;
    let s = start_with(
        Role::Volume,
        ServerConfig::new(Accept::new(Role::Volume)),
        cc,
    );
    let slow = Request::Stat {
        file: FileRef::Path("sleep/300".into()),
    };
    let t = Duration::from_secs(5);
    let mut held = Vec::new();
    while let Some(p) = s.client.begin_if_room(&slow, t, 1).unwrap() {
        held.push(p);
    }
    assert_eq!(held.len(), 3, "one slot of four left spare");
    // What must be sent still finds a slot, at once.
    let t0 = Instant::now();
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    for p in held {
        p.wait().unwrap();
    }
    assert!(s.client.begin_if_room(&slow, t, 1).unwrap().is_some());
}

#[test]
fn streamed_get_delivers_every_byte() {
    let s = start(Role::Sync);
    let size = 20 * 1024 * 1024 + 12345u64;
    let mut d = s.client.get(&format!("gen/{size}"), None).unwrap();
    let mut buf = vec![0u8; 100_000];
    let mut got = 0u64;
    loop {
        let n = d.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, gen_byte(got + k as u64), "byte {}", got + k as u64);
        }
        got += n as u64;
    }
    assert_eq!(got, size);
    assert_eq!(d.finish().unwrap().size, size);
    // Other calls go on while a stream runs, and after.
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
    let e = s.client.get("missing", None).unwrap().finish().unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[test]
fn a_dropped_download_is_cancelled_and_frees_its_stream() {
    let s = start(Role::Sync);
    for _ in 0..10 {
        let mut d = s.client.get("gen/50000000", None).unwrap();
        let mut b = [0u8; 1000];
        d.read_exact(&mut b).unwrap();
        drop(d);
    }
    // Cancelled streams ended on the server, or the stream limit (4) would refuse this one.
    let t = Instant::now();
    loop {
        match s.client.get("gen/10", None).unwrap().finish() {
            Ok(a) => {
                assert_eq!(a.size, 10);
                break;
            }
            Err(e) if e.code == ErrorCode::Busy && t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn streams_past_the_server_limit_wait_for_a_free_one_instead_of_failing() {
    let s = start(Role::Sync);
    // The server's limit (4) held open: a fifth stream waits, and starts once one ends.
    let mut open: Vec<_> = (0..4)
        .map(|_| {
            let mut d = s.client.get("gen/50000000", None).unwrap();
            let mut b = [0u8; 1000];
            d.read_exact(&mut b).unwrap();
            d
        })
        .collect();
    let client = s.client.clone();
    let fifth =
        std::thread::spawn(move || client.get("gen/1000", None).unwrap().finish().unwrap().size);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fifth.is_finished(), "a fifth stream ran beside four");
    // Dropping one (a cancel) frees its slot on both ends at once.
    drop(open.pop());
    assert_eq!(fifth.join().unwrap(), 1000);
    drop(open);
    // Twelve threads streaming at once over one connection: every one completes.
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let client = s.client.clone();
            std::thread::spawn(move || {
                let size = 100_000 + i * 1000;
                let mut d = client.get(&format!("gen/{size}"), None).unwrap();
                let mut all = Vec::new();
                d.read_to_end(&mut all).unwrap();
                assert_eq!(all.len() as u64, size);
                d.finish().unwrap().size
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), 100_000 + i as u64 * 1000);
    }
}

#[test]
fn uploads_arrive_whole_or_not_at_all() {
    let s = start(Role::Sync);
    let put = |path: &str| Request::Put {
        path: path.into(),
        expect: Expect::Absent,
        mode: None,
        mtime: None,
    };
    let size = 9 * 1024 * 1024 + 7;
    let mut u = s.client.upload(put("big")).unwrap();
    let mut h = FNV_START;
    let chunk: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        u.write_all(&chunk[..n]).unwrap();
        fnv(&mut h, &chunk[..n]);
        left -= n;
    }
    match u.finish().unwrap() {
        Response::Attr(a) => {
            assert_eq!(a.size, size as u64);
            assert_eq!(a.ino, h, "content hash");
        }
        other => panic!("{other:?}"),
    }
    // Empty upload.
    let u = s.client.upload(put("empty")).unwrap();
    assert!(matches!(u.finish().unwrap(), Response::Attr(a) if a.size == 0));

    // Aborted: the handler's read fails, nothing is stored.
    let mut u = s.client.upload(put("aborted")).unwrap();
    u.write_all(&vec![1u8; 3 * CHUNK_SIZE]).unwrap();
    u.abort();
    let t = Instant::now();
    while s.handler.aborted_uploads.load(Ordering::SeqCst) < 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "abort not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!s.handler.files.lock().unwrap().contains_key("aborted"));
    assert!(s.handler.files.lock().unwrap().contains_key("big"));

    // Streaming ops are refused by call().
    let e = s.client.call(put("x")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
}

#[test]
fn an_upload_cut_by_a_lost_connection_is_not_complete() {
    let s = start(Role::Sync);
    let mut u = s
        .client
        .upload(Request::Put {
            path: "cut".into(),
            expect: Expect::Any,
            mode: None,
            mtime: None,
        })
        .unwrap();
    u.write_all(&vec![2u8; 2 * CHUNK_SIZE + 1]).unwrap();
    s.server_end.shutdown(std::net::Shutdown::Read).unwrap();
    let t = Instant::now();
    while s.handler.aborted_uploads.load(Ordering::SeqCst) < 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "cut not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!s.handler.files.lock().unwrap().contains_key("cut"));
    drop(u);
    s.server.join().unwrap().unwrap();
}

#[test]
fn pushes_arrive_in_order() {
    let s = start(Role::Volume);
    assert_eq!(
        s.client.call(Request::Subscribe).unwrap(),
        Response::Subscribed { head: 1 }
    );
    for seq in 1..=100u64 {
        match s.pushes.recv_timeout(Duration::from_secs(10)).unwrap() {
            Push::Change(e) => assert_eq!((e.seq, e.path), (seq, format!("f{seq}"))),
            Push::Lagged => panic!("lagged with an empty queue"),
        }
    }
}

#[test]
fn a_slow_push_reader_gets_lagged_not_unbounded_memory() {
    let mut cc = ClientConfig::new(Hello::new(Role::Volume));
    cc.push_queue = 10;
    let s = start_with(
        Role::Volume,
        ServerConfig::new(Accept::new(Role::Volume)),
        cc,
    );
    s.client.call(Request::Subscribe).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Ping after the pushes: the reader has processed them all once this answers.
    s.client.call(Request::Ping).unwrap();
    let got: Vec<Push> = s.pushes.try_iter().collect();
    assert_eq!(got.len(), 10, "the queue holds what it can");
    assert!(got.iter().all(|p| matches!(p, Push::Change(_))));
    // The next push after the reader drained is preceded by Lagged... none come now, but a
    // second subscription produces more.
    s.client.call(Request::Subscribe).unwrap();
    match s.pushes.recv_timeout(Duration::from_secs(10)).unwrap() {
        Push::Lagged => {}
        other => panic!("expected Lagged first, got {other:?}"),
    }
}

#[test]
fn roles_limit_operations() {
    let s = start(Role::Sync);
    let e = s
        .client
        .call(Request::Write {
            file: FileRef::Path("f".into()),
            offset: 0,
            data: vec![1],
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(
        e.message
            .contains("Write is not allowed on a Sync connection"),
        "{e}"
    );
    let v = start(Role::Volume);
    let e = v.client.call(Request::Ack { seq: 1 }).unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
}

#[test]
fn a_panicking_handler_answers_internal_and_the_connection_survives() {
    let s = start(Role::Volume);
    let e = s
        .client
        .call(Request::Stat {
            file: FileRef::Path("panic".into()),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert_eq!(s.client.call(Request::Ping).unwrap(), Response::Ok);
}

#[test]
fn an_answer_too_big_for_a_frame_is_refused_cleanly() {
    let s = start(Role::Sync);
    let e = s
        .client
        .call(Request::ChangesSince {
            since: 1,
            limit: 1024,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(e.message.contains("ask for fewer"), "{e}");
    match s
        .client
        .call(Request::ChangesSince {
            since: 1,
            limit: 10,
        })
        .unwrap()
    {
        Response::Changes(Changes::Entries { entries, next }) => {
            assert_eq!((entries.len(), next), (10, 11))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_full_size_write_fits_in_a_frame() {
    let s = start(Role::Volume);
    let path = vec!["n".repeat(255); 16].join("/");
    let data = vec![7u8; MAX_IO];
    let r = s
        .client
        .call(Request::Write {
            file: FileRef::Path(path.clone()),
            offset: 0,
            data,
        })
        .unwrap();
    assert_eq!(r, Response::Written(MAX_IO as u32));
    let r = s
        .client
        .call(Request::Read {
            file: FileRef::Path(path),
            offset: 0,
            len: MAX_IO as u32,
        })
        .unwrap();
    assert!(matches!(r, Response::Data(d) if d.len() == MAX_IO));
}
