//! Bounded fuzz runs of the frame decoder and of request decoding + dispatch, on the checked-in
//! corpus (agent/protocol/fuzz/corpus/<target>/) and deterministic mutants of it.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cloudstore_protocol::*;
use common::handler::MemHandler;

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

/// Decodes a stream of frames and each frame's payload; whatever decodes must re-encode to
/// exactly the bytes it came from, and the streaming reader must agree with the slice decoder.
fn frame_target(data: &[u8]) {
    let mut rest = data;
    let mut reader: &[u8] = data;
    loop {
        let sliced = Frame::decode(rest);
        let streamed = read_frame(&mut reader);
        match (&sliced, &streamed) {
            (Ok((a, _)), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.is_fatal(), b.is_fatal(), "{a} vs {b}"),
            _ => panic!("slice and stream decoders disagree: {sliced:?} vs {streamed:?}"),
        }
        let Ok((frame, used)) = sliced else { break };
        assert_eq!(
            frame.encode(),
            &rest[..used],
            "frame re-encodes to its bytes"
        );
        let p = &frame.payload;
        let reencoded = match frame.kind {
            FrameType::Request => Request::decode(p).ok().map(|r| r.encode()),
            FrameType::Response => Response::decode(p).ok().map(|r| r.encode()),
            FrameType::Push => Push::decode(p).ok().map(|x| x.encode()),
            FrameType::Error => decode_error(p).ok().map(|e| encode_error(&e)),
            _ => None,
        };
        if let Some(b) = reencoded {
            assert_eq!(&b, p, "{:?} payload re-encodes to its bytes", frame.kind);
        }
        rest = &rest[used..];
    }
}

#[test]
fn fuzz_frame_decoder() {
    let s = cloudstore_fuzzkit::run("protocol-frame", &corpus("frame"), frame_target);
    assert!(s.corpus_entries >= 60, "{s:?}");
}

/// Collects what the server writes.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);
impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Feeds the bytes to a whole server as a client's side of the connection (hello, then
/// frames). The server must neither panic nor hang, and everything it writes must be a
/// well-formed welcome followed by well-formed server frames.
fn dispatch_target(data: &[u8]) {
    let role = if data.get(12) == Some(&2) {
        Role::Sync
    } else {
        Role::Volume
    };
    let mut cfg = ServerConfig::new(Accept::new(role));
    cfg.workers = 2;
    cfg.queue = 4;
    cfg.max_streams = 1;
    let handler = MemHandler {
        plain: true,
        ..Default::default()
    };
    let out = Out::default();
    let _ = serve(data, out.clone(), &cfg, &handler);
    let bytes = out.0.lock().unwrap().clone();
    if bytes.is_empty() {
        return; // the hello was cut short: nothing to answer
    }
    assert!(
        bytes.len() >= 26 && bytes[..8] == MAGIC,
        "welcome: {bytes:02x?}"
    );
    let msg_len = u16::from_le_bytes([bytes[24], bytes[25]]) as usize;
    let mut rest = &bytes[26 + msg_len..];
    while !rest.is_empty() {
        let (f, used) = Frame::decode(rest).expect("the server writes whole, valid frames");
        match f.kind {
            FrameType::Response => {
                Response::decode(&f.payload).expect("valid response");
            }
            FrameType::Error => {
                decode_error(&f.payload).expect("valid error");
            }
            FrameType::Push => {
                Push::decode(&f.payload).expect("valid push");
            }
            FrameType::Chunk | FrameType::Credit => {}
            FrameType::Request | FrameType::Cancel => panic!("server sent {:?}", f.kind),
        }
        rest = &rest[used..];
    }
}

#[test]
fn fuzz_request_dispatch() {
    let s = cloudstore_fuzzkit::run("protocol-dispatch", &corpus("dispatch"), dispatch_target);
    assert!(s.corpus_entries >= 4, "{s:?}");
}
