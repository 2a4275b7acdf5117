//! Every message encodes and decodes to itself; malformed payloads fail with the right code.

mod common;

use std::collections::HashSet;

use cloudstore_protocol::*;
use common::*;

#[test]
fn every_request_round_trips() {
    for r in requests() {
        let b = r.encode();
        assert_eq!(Request::decode(&b).unwrap(), r, "{r:?}");
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), r.op().code());
    }
}

#[test]
fn every_op_has_a_sample() {
    let seen: HashSet<Op> = requests().iter().map(Request::op).collect();
    for op in Op::ALL {
        assert!(seen.contains(op), "no sample request for {op:?}");
        assert_eq!(Op::from_code(op.code()), Some(*op));
    }
}

#[test]
fn every_response_and_push_round_trips() {
    for r in responses() {
        assert_eq!(Response::decode(&r.encode()).unwrap(), r, "{r:?}");
        assert_eq!(Response::decode_owned(r.encode()).unwrap(), r, "{r:?}");
    }
    for p in pushes() {
        assert_eq!(Push::decode(&p.encode()).unwrap(), p, "{p:?}");
    }
    for c in ErrorCode::all().chain([ErrorCode::Unknown(4000)]) {
        let e = RemoteError::new(c, format!("stat \"a/b\": {c}"));
        assert_eq!(decode_error(&encode_error(&e)).unwrap(), e);
    }
}

#[test]
fn every_prefix_and_every_extension_is_refused() {
    let all: Vec<(Vec<u8>, &str)> = requests()
        .iter()
        .map(|r| (r.encode(), "request"))
        .chain(responses().iter().map(|r| (r.encode(), "response")))
        .chain(pushes().iter().map(|p| (p.encode(), "push")))
        .collect();
    for (b, what) in all {
        let decode = |x: &[u8]| match what {
            "request" => Request::decode(x).map(|_| ()),
            "response" => {
                let owned = Response::decode_owned(x.to_vec()).map(|_| ());
                let borrowed = Response::decode(x).map(|_| ());
                assert_eq!(
                    owned.as_ref().map_err(|e| e.to_string()),
                    borrowed.as_ref().map_err(|e| e.to_string()),
                    "decode_owned and decode disagree on {x:02x?}"
                );
                borrowed
            }
            _ => Push::decode(x).map(|_| ()),
        };
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "{what} {b:02x?} cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        let e = decode(&longer).unwrap_err();
        assert!(e.to_string().contains("unexpected bytes"), "{e}");
    }
}

#[test]
fn unknown_op_is_reported_as_such() {
    let e = Request::decode(&[0xff, 0x7f]).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownOp);
    assert!(e.to_string().contains("0x7fff"), "{e}");
}

fn path_request(path: &str) -> Vec<u8> {
    // Unlink: op 0x010c, then the path.
    let mut b = vec![0x0c, 0x01];
    b.extend_from_slice(&(path.len() as u32).to_le_bytes());
    b.extend_from_slice(path.as_bytes());
    b
}

#[test]
fn hostile_paths_are_refused_at_decode() {
    let long = "x".repeat(256);
    for (p, code) in [
        ("/etc/passwd", ErrorCode::InvalidPath),
        ("../other-volume/f", ErrorCode::InvalidPath),
        ("a/../../b", ErrorCode::InvalidPath),
        ("a/./b", ErrorCode::InvalidPath),
        ("a//b", ErrorCode::InvalidPath),
        ("a\0b", ErrorCode::InvalidPath),
        (long.as_str(), ErrorCode::NameTooLong),
    ] {
        let e = Request::decode(&path_request(p)).unwrap_err();
        assert_eq!(e.code, code, "{p:?}: {e}");
        assert!(e.to_string().starts_with("path:"), "{e}");
    }
    // Not UTF-8.
    let mut b = vec![0x0c, 0x01, 2, 0, 0, 0, 0xff, 0xfe];
    assert_eq!(
        Request::decode(&b).unwrap_err().code,
        ErrorCode::InvalidPath
    );
    // A path length beyond the limit is refused before the bytes are looked at.
    b.truncate(2);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        Request::decode(&b).unwrap_err().code,
        ErrorCode::NameTooLong
    );
}

#[test]
fn oversized_fields_are_refused() {
    // Write with a data length over MAX_IO.
    let mut b = Request::Write {
        file: FileRef::Handle(1),
        offset: 0,
        data: vec![],
    }
    .encode();
    let n = b.len();
    b[n - 4..].copy_from_slice(&((MAX_IO + 1) as u32).to_le_bytes());
    assert_eq!(Request::decode(&b).unwrap_err().code, ErrorCode::TooLarge);

    let r = Request::Read {
        file: FileRef::Handle(1),
        offset: 0,
        len: MAX_IO as u32 + 1,
    };
    assert_eq!(
        Request::decode(&r.encode()).unwrap_err().code,
        ErrorCode::TooLarge
    );
    let r = Request::ReadDir {
        path: String::new(),
        cookie: 0,
        max: 1025,
        with_attrs: false,
    };
    assert_eq!(
        Request::decode(&r.encode()).unwrap_err().code,
        ErrorCode::TooLarge
    );

    // Data over MAX_IO, in the answer that keeps its buffer too.
    let mut b = Response::Data(vec![]).encode();
    let n = b.len();
    b[n - 4..].copy_from_slice(&((MAX_IO + 1) as u32).to_le_bytes());
    b.resize(n + MAX_IO + 1, 7);
    assert_eq!(Response::decode(&b).unwrap_err().code, ErrorCode::TooLarge);
    assert_eq!(
        Response::decode_owned(b).unwrap_err().code,
        ErrorCode::TooLarge
    );

    // A directory page claiming 1000 entries in a few bytes: refused without allocating.
    let mut b = vec![3, 0];
    b.extend_from_slice(&1000u32.to_le_bytes());
    b.extend_from_slice(&[0; 10]);
    let e = Response::decode(&b).unwrap_err();
    assert!(e.to_string().contains("cannot fit"), "{e}");
}

#[test]
fn non_canonical_encodings_are_refused() {
    // A boolean 2 where 0 or 1 is expected.
    let mut b = Request::Fsync {
        file: FileRef::Handle(1),
        datasync: true,
    }
    .encode();
    *b.last_mut().unwrap() = 2;
    assert_eq!(Request::decode(&b).unwrap_err().code, ErrorCode::Malformed);
    // Nanoseconds of a whole second.
    let mut b = Response::Got {
        attr: attr(FileType::File, 0),
    }
    .encode();
    let n = b.len();
    b[n - 4..].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    assert!(Response::decode(&b).is_err());
    // Mode bits beyond 07777.
    let b = Request::Mkdir {
        path: "d".into(),
        mode: 0o40755,
    }
    .encode();
    assert_eq!(Request::decode(&b).unwrap_err().code, ErrorCode::Invalid);
    // Unknown open flag bits.
    let mut b = Request::Open {
        path: "f".into(),
        flags: OpenFlags::default(),
    }
    .encode();
    let n = b.len();
    b[n - 4] = 0x80;
    assert_eq!(Request::decode(&b).unwrap_err().code, ErrorCode::Invalid);
}

#[test]
fn every_frame_type_round_trips() {
    for (kind, flags, id) in [
        (FrameType::Request, 0, 1),
        (FrameType::Response, 0, u64::MAX),
        (FrameType::Error, 0, 0),
        (FrameType::Push, 0, 0),
        (FrameType::Chunk, FLAG_FINAL, 5),
        (FrameType::Chunk, 0, 5),
        (FrameType::Credit, 0, 5),
        (FrameType::Cancel, 0, 5),
    ] {
        let f = Frame {
            kind,
            flags,
            id,
            payload: vec![9; 3],
        };
        let b = f.encode();
        assert_eq!(&b[0..4], &3u32.to_le_bytes());
        assert_eq!(Frame::decode(&b).unwrap(), (f, b.len()));
    }
}

#[test]
fn bad_headers_are_recoverable_oversize_is_not() {
    let good = Frame::new(FrameType::Request, 1, Request::Ping.encode()).encode();
    let mut unknown_type = good.clone();
    unknown_type[4] = 99;
    let mut flags = good.clone();
    flags[5] = 1;
    let mut reserved = good.clone();
    reserved[7] = 1;
    let mut zero_id = good.clone();
    zero_id[8..16].fill(0);
    for b in [unknown_type, flags, reserved, zero_id] {
        let mut r: &[u8] = &b;
        let e = read_frame(&mut r).unwrap_err();
        assert!(!e.is_fatal(), "{e}");
        assert!(r.is_empty(), "the bad frame is consumed whole");
    }
    let mut huge = good.clone();
    huge[0..4].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_le_bytes());
    let mut r: &[u8] = &huge;
    let e = read_frame(&mut r).unwrap_err();
    assert!(
        e.is_fatal() && matches!(e, FrameError::TooLarge { .. }),
        "{e}"
    );
    let mut r: &[u8] = &good[..good.len() - 1];
    assert!(matches!(
        read_frame(&mut r),
        Err(FrameError::Truncated { .. })
    ));
}

#[test]
fn fuzz_corpus_holds_every_sample() {
    // Regenerate with CLOUDSTORE_REGEN_CORPUS=1 after adding a message.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let frames = corpus_frames();
    let streams = corpus_streams();
    if std::env::var_os("CLOUDSTORE_REGEN_CORPUS").is_some() {
        for (dir, items) in [("frame", &frames), ("dispatch", &streams)] {
            let d = root.join(dir);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            for (name, bytes) in items {
                std::fs::write(d.join(name), bytes).unwrap();
            }
        }
    }
    for (dir, items) in [("frame", &frames), ("dispatch", &streams)] {
        for (name, bytes) in items {
            let path = root.join(dir).join(name);
            let have = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run with CLOUDSTORE_REGEN_CORPUS=1",
                    path.display()
                )
            });
            assert_eq!(
                &have,
                bytes,
                "{} is stale; run with CLOUDSTORE_REGEN_CORPUS=1",
                path.display()
            );
        }
    }
}

/// Frame corpus: one frame per message, of the type it travels in.
fn corpus_frames() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (i, r) in requests().iter().enumerate() {
        let f = Frame::new(FrameType::Request, i as u64 + 1, r.encode());
        v.push((format!("request-{i:02}-{:?}", r.op()), f.encode()));
    }
    for (i, r) in responses().iter().enumerate() {
        let f = Frame::new(FrameType::Response, i as u64 + 1, r.encode());
        v.push((format!("response-{i:02}-{}", r.name()), f.encode()));
    }
    for (i, p) in pushes().iter().enumerate() {
        v.push((
            format!("push-{i:02}"),
            Frame::new(FrameType::Push, 0, p.encode()).encode(),
        ));
    }
    let err = RemoteError::new(ErrorCode::NotFound, "stat \"a\": no such file");
    v.push((
        "error".into(),
        Frame::new(FrameType::Error, 3, encode_error(&err)).encode(),
    ));
    let mut chunk = Frame::new(FrameType::Chunk, 4, b"data".to_vec());
    chunk.flags = FLAG_FINAL;
    v.push(("chunk-final".into(), chunk.encode()));
    v.push((
        "credit".into(),
        Frame::new(FrameType::Credit, 4, 8u32.to_le_bytes().to_vec()).encode(),
    ));
    v.push((
        "cancel".into(),
        Frame::new(FrameType::Cancel, 4, vec![]).encode(),
    ));
    v
}

/// Dispatch corpus: a client's whole side of a connection — hello, then requests (and the
/// chunks of uploads).
fn corpus_streams() -> Vec<(String, Vec<u8>)> {
    let hello = |role| Hello::new(role).encode().to_vec();
    let mut v = Vec::new();
    for role in [Role::Volume, Role::Sync] {
        let mut all = hello(role);
        for (i, r) in requests().iter().enumerate() {
            if r.op().allowed(role) {
                all.extend(Frame::new(FrameType::Request, i as u64 + 1, r.encode()).encode());
                if r.op().body() == Body::Upload {
                    let mut c = Frame::new(FrameType::Chunk, i as u64 + 1, b"ciphertext".to_vec());
                    c.flags = FLAG_FINAL;
                    all.extend(c.encode());
                }
            }
        }
        v.push((format!("session-{role:?}"), all));
    }
    let mut put = hello(Role::Sync);
    let req = Request::Put {
        path: "f".into(),
        expect: Expect::Any,
        mode: None,
        mtime: None,
    };
    put.extend(Frame::new(FrameType::Request, 1, req.encode()).encode());
    put.extend(Frame::new(FrameType::Chunk, 1, vec![7; 100]).encode());
    put.extend(Frame::new(FrameType::Cancel, 1, vec![]).encode());
    v.push(("put-cancelled".into(), put));
    let mut get = hello(Role::Volume);
    let req = Request::Get {
        path: "f".into(),
        version: None,
    };
    get.extend(Frame::new(FrameType::Request, 9, req.encode()).encode());
    get.extend(Frame::new(FrameType::Credit, 9, 4u32.to_le_bytes().to_vec()).encode());
    v.push(("get-credit".into(), get));
    v
}
