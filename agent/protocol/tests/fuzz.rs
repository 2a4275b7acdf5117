//! Bounded fuzz runs of the frame decoder and of request decoding + dispatch, on the checked-in
//! corpus (agent/protocol/fuzz/corpus/<target>/) and deterministic mutants of it.

use std::path::PathBuf;

use cloudstore_protocol::*;

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
