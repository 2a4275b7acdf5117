//! Fuzz target for the storage role's request dispatch: mutated client sessions (hello, then
//! request frames) are served by the real `service::Connection` over a real store. It must
//! never panic or hang, must answer with well-formed frames only, and must never create,
//! change or reach anything outside the volume's own directory — the sentinel files beside
//! the data directory and the other volume stay untouched whatever a session asks.
//!
//! The corpus (`agent/cloudstore/fuzz/corpus/storage-dispatch`) holds sessions that walk
//! every operation with valid and hostile paths; `regenerate_corpus` (ignored) rewrites it
//! from the list below.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cloudstore::roles::storage::service::{Connection, Scope};
use cloudstore_protocol::{
    serve, Accept, Expect, FileRef, Frame, FrameType, Hello, OpenFlags, RenameMode, Request, Role,
    ServerConfig, SetAttr, TimeSet, Timespec, FLAG_FINAL,
};
use cloudstore_store::{Store, StoreConfig};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/storage-dispatch")
}

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

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Store,
}

const SENTINEL: &[u8] = b"must never change";

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        std::fs::write(root.join("outside"), SENTINEL).unwrap();
        let store = Store::open(root.join("data"), StoreConfig::default()).unwrap();
        store.create_volume("work").unwrap();
        let other = store.create_volume("other").unwrap();
        other
            .put(
                &cloudstore_store::parse_path("t", "secret").unwrap(),
                &mut &SENTINEL[..],
                Default::default(),
            )
            .unwrap();
        World {
            _dir: dir,
            root,
            store,
        }
    }

    fn check_untouched(&self) {
        assert_eq!(std::fs::read(self.root.join("outside")).unwrap(), SENTINEL);
        let names: Vec<_> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "nothing new beside the data directory: {names:?}"
        );
        assert_eq!(
            std::fs::read(self.root.join("data/volumes/other/tree/secret")).unwrap(),
            SENTINEL
        );
    }
}

fn target(world: &World, data: &[u8]) {
    let role = if data.get(12) == Some(&2) {
        Role::Sync
    } else {
        Role::Volume
    };
    let mut cfg = ServerConfig::new(Accept::new(role));
    cfg.workers = 2;
    cfg.queue = 4;
    cfg.max_streams = 1;
    let conn = Connection::new(
        Scope::Volume(world.store.volume("work").unwrap()),
        "fuzz".into(),
    );
    let out = Out::default();
    let _ = serve(data, out.clone(), &cfg, &conn);
    let bytes = out.0.lock().unwrap().clone();
    if bytes.len() > 26 {
        let msg_len = u16::from_le_bytes([bytes[24], bytes[25]]) as usize;
        let mut rest = &bytes[26 + msg_len..];
        while !rest.is_empty() {
            let (f, used) = Frame::decode(rest).expect("the server writes whole, valid frames");
            assert!(
                !matches!(f.kind, FrameType::Request | FrameType::Cancel),
                "server sent {:?}",
                f.kind
            );
            rest = &rest[used..];
        }
    }
}

#[test]
fn fuzz_storage_request_dispatch() {
    let world = World::new();
    // Each input does real file-system work; 3 000 mutants keep the run to seconds.
    let s = cloudstore_fuzzkit::run_bounded("storage-dispatch", &corpus_dir(), 3_000, |d| {
        target(&world, d)
    });
    assert!(s.corpus_entries >= 4, "{s:?}");
    world.check_untouched();
}

fn session(role: Role, reqs: &[Request]) -> Vec<u8> {
    let mut v = Hello::new(role).encode().to_vec();
    for (i, r) in reqs.iter().enumerate() {
        let id = i as u64 + 1;
        v.extend(Frame::new(FrameType::Request, id, r.encode()).encode());
        if matches!(r, Request::Put { .. } | Request::ParkConflict { .. }) {
            let mut chunk = Frame::new(FrameType::Chunk, id, b"ciphertext bytes".to_vec());
            chunk.flags = FLAG_FINAL;
            v.extend(chunk.encode());
        }
    }
    v
}

fn path(s: &str) -> FileRef {
    FileRef::Path(s.into())
}

#[test]
#[ignore = "rewrites the checked-in corpus"]
fn regenerate_corpus() {
    let t = Timespec::new(1_700_000_000, 5);
    let volume = vec![
        Request::Mkdir {
            path: "d".into(),
            mode: 0o755,
        },
        Request::MkdirWith {
            path: "d/e".into(),
            mode: 0o755,
            file: "gocryptfs.diriv".into(),
            content: vec![9; 16],
            file_mode: 0o400,
        },
        Request::MkdirWith {
            path: "d/x".into(),
            mode: 0o755,
            file: "../../escape".into(),
            content: vec![1],
            file_mode: 0o600,
        },
        Request::Create {
            path: "d/f".into(),
            mode: 0o644,
            exclusive: true,
        },
        Request::Write {
            file: FileRef::Handle(1),
            offset: 0,
            data: vec![7; 100],
        },
        Request::Write {
            file: path("d/f"),
            offset: 4096,
            data: vec![1; 10],
        },
        Request::Read {
            file: path("d/f"),
            offset: 0,
            len: 200,
        },
        Request::Open {
            path: "d/f".into(),
            flags: OpenFlags {
                write: true,
                truncate: true,
            },
        },
        Request::Rename {
            from: "d/f".into(),
            to: "d/g".into(),
            mode: RenameMode::Replace,
        },
        Request::Truncate {
            file: FileRef::Handle(2),
            size: 3,
        },
        Request::SetAttr {
            file: path("d/g"),
            attr: SetAttr {
                mode: Some(0o600),
                size: Some(1),
                atime: Some(TimeSet::Now),
                mtime: Some(TimeSet::At(t)),
            },
        },
        Request::Link {
            existing: "d/g".into(),
            new: "h".into(),
        },
        Request::Symlink {
            path: "s".into(),
            target: b"../../outside".to_vec(),
        },
        Request::ReadLink { path: "s".into() },
        Request::Fsync {
            file: FileRef::Handle(2),
            datasync: true,
        },
        Request::Close { handle: 2 },
        Request::Unlink { path: "h".into() },
        Request::ListVersions { path: "h".into() },
        Request::Restore {
            path: "h".into(),
            id: 1,
        },
        Request::Rmdir { path: "d".into() },
        Request::StatFs,
        Request::Stat { file: path("") },
    ];
    let hostile = vec![
        Request::Stat {
            file: path("../other/tree/secret"),
        },
        Request::Open {
            path: "s/x".into(),
            flags: OpenFlags::default(),
        },
        Request::Rename {
            from: "s".into(),
            to: "../../x".into(),
            mode: RenameMode::Exchange,
        },
        Request::Create {
            path: "/tmp/x".into(),
            mode: 0o777,
            exclusive: false,
        },
        Request::Link {
            existing: "../outside".into(),
            new: "l".into(),
        },
        Request::ReadDir {
            path: "..".into(),
            cookie: 0,
            max: 5,
            with_attrs: true,
        },
        Request::Read {
            file: FileRef::Handle(99),
            offset: u64::MAX - 1,
            len: 1 << 20,
        },
        Request::Write {
            file: path("s"),
            offset: u64::MAX - 3,
            data: vec![0; 8],
        },
        Request::AdoptConflict {
            id: 5,
            dest: "../x".into(),
        },
        Request::Rmdir { path: "".into() },
    ];
    let sync = vec![
        Request::JournalHead,
        Request::ChangesSince {
            since: 0,
            limit: 10,
        },
        Request::Put {
            path: "p".into(),
            expect: Expect::Absent,
            mode: Some(0o600),
            mtime: Some(t),
        },
        Request::ListTree {
            after: None,
            limit: 3,
        },
        Request::ListTree {
            after: Some("p".into()),
            limit: 3,
        },
        Request::Get {
            path: "p".into(),
            version: None,
        },
        Request::ParkConflict { path: "p".into() },
        Request::ListConflicts,
        Request::Delete {
            path: "p".into(),
            expect: Expect::Any,
        },
        Request::Ack { seq: 3 },
        Request::Subscribe,
        Request::Unsubscribe,
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in [
        ("volume-ops", session(Role::Volume, &volume)),
        ("volume-hostile", session(Role::Volume, &hostile)),
        ("sync-ops", session(Role::Sync, &sync)),
        ("sync-hostile", session(Role::Sync, &hostile)),
    ] {
        std::fs::write(dir.join(name), data).unwrap();
    }
}
