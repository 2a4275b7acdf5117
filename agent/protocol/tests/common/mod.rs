//! One sample of every message, shared by the codec tests and the fuzz corpus.
#![allow(dead_code)]

pub mod handler;

use cloudstore_protocol::*;

pub fn ts(secs: i64, nanos: u32) -> Timespec {
    Timespec::new(secs, nanos)
}

pub fn attr(kind: FileType, size: u64) -> Attr {
    Attr {
        kind,
        perm: 0o640,
        ino: 0x1122_3344_5566_7788,
        nlink: 2,
        uid: 1000,
        gid: 1000,
        size,
        blocks: 8,
        atime: ts(1_700_000_000, 1),
        mtime: ts(-5, 999_999_999),
        ctime: ts(0, 0),
    }
}

pub fn change(seq: u64, kind: ChangeKind) -> ChangeEntry {
    ChangeEntry {
        seq,
        kind,
        time: ts(1_700_000_123, 456),
        path: "dir/Zm9vYmFy".into(),
        new_path: (kind == ChangeKind::Rename).then(|| "dir/YmF6".to_string()),
        size: 4096,
        mtime: ts(1_700_000_000, 0),
    }
}

pub fn version(id: u64) -> VersionInfo {
    VersionInfo {
        id,
        path: "a/b".into(),
        time: ts(10, 20),
        size: 51,
        kind: FileType::File,
        reason: VersionReason::Modify,
        perm: 0o600,
        mtime: ts(30, 40),
    }
}

pub fn requests() -> Vec<Request> {
    let p = |s: &str| s.to_string();
    vec![
        Request::Ping,
        Request::Stat {
            file: FileRef::Path(p("")),
        },
        Request::Stat {
            file: FileRef::Handle(7),
        },
        Request::ReadDir {
            path: p("d"),
            cookie: 42,
            max: 1024,
            with_attrs: true,
        },
        Request::Open {
            path: p("f"),
            flags: OpenFlags {
                write: true,
                truncate: false,
            },
        },
        Request::Close { handle: 3 },
        Request::Read {
            file: FileRef::Handle(3),
            offset: 1 << 40,
            len: 4096,
        },
        Request::Write {
            file: FileRef::Path(p("x/y")),
            offset: 18,
            data: b"ciphertext\0bytes".to_vec(),
        },
        Request::Create {
            path: p("new"),
            mode: 0o644,
            exclusive: true,
        },
        Request::Mkdir {
            path: p("d2"),
            mode: 0o755,
        },
        Request::Symlink {
            path: p("l"),
            target: b"dGFyZ2V0".to_vec(),
        },
        Request::ReadLink { path: p("l") },
        Request::Link {
            existing: p("f"),
            new: p("g"),
        },
        Request::Unlink { path: p("g") },
        Request::Rmdir { path: p("d2") },
        Request::Rename {
            from: p("a"),
            to: p("b"),
            mode: RenameMode::Replace,
        },
        Request::Rename {
            from: p("a"),
            to: p("b"),
            mode: RenameMode::Exchange,
        },
        Request::Truncate {
            file: FileRef::Handle(1),
            size: 0,
        },
        Request::SetAttr {
            file: FileRef::Path(p("f")),
            attr: SetAttr {
                mode: Some(0o600),
                size: Some(5),
                atime: Some(TimeSet::Now),
                mtime: Some(TimeSet::At(ts(1, 2))),
            },
        },
        Request::SetAttr {
            file: FileRef::Handle(9),
            attr: SetAttr::default(),
        },
        Request::Fsync {
            file: FileRef::Handle(1),
            datasync: true,
        },
        Request::StatFs,
        Request::Subscribe,
        Request::Unsubscribe,
        Request::ListVersions { path: p("f") },
        Request::Restore {
            path: p("f"),
            id: 0xabc,
        },
        Request::ListConflicts,
        Request::AdoptConflict {
            id: 5,
            dest: p("f2"),
        },
        Request::ChangesSince {
            since: 100,
            limit: 500,
        },
        Request::JournalHead,
        Request::ListTree {
            after: None,
            limit: 1000,
        },
        Request::ListTree {
            after: Some(p("a/b")),
            limit: 1,
        },
        Request::Get {
            path: p("f"),
            version: None,
        },
        Request::Get {
            path: p("f"),
            version: Some(12),
        },
        Request::Put {
            path: p("f"),
            expect: Expect::State(FileState {
                kind: FileType::File,
                size: 10,
                mtime: ts(3, 4),
            }),
            mode: Some(0o600),
            mtime: Some(ts(5, 6)),
        },
        Request::Put {
            path: p("g"),
            expect: Expect::Absent,
            mode: None,
            mtime: None,
        },
        Request::Delete {
            path: p("f"),
            expect: Expect::Any,
        },
        Request::ParkConflict { path: p("f") },
        Request::Ack { seq: 99 },
        Request::MkdirWith {
            path: p("d3"),
            mode: 0o755,
            file: "gocryptfs.diriv".into(),
            content: vec![9; 16],
            file_mode: 0o400,
        },
    ]
}

pub fn responses() -> Vec<Response> {
    vec![
        Response::Ok,
        Response::Attr(attr(FileType::File, 51)),
        Response::DirPage(DirPage {
            entries: vec![
                DirEntry {
                    name: "gocryptfs.diriv".into(),
                    kind: FileType::File,
                    ino: 5,
                    attr: Some(attr(FileType::File, 16)),
                },
                DirEntry {
                    name: "c3ViZGly".into(),
                    kind: FileType::Dir,
                    ino: 6,
                    attr: None,
                },
            ],
            next: Some(2),
        }),
        Response::DirPage(DirPage {
            entries: vec![],
            next: None,
        }),
        Response::Opened {
            handle: 77,
            attr: attr(FileType::File, 0),
        },
        Response::Data(vec![1, 2, 3]),
        Response::Written(4096),
        Response::LinkTarget(b"dGFyZ2V0".to_vec()),
        Response::StatFs(StatFs {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 100,
            blocks_free: 50,
            blocks_available: 40,
            files: 1000,
            files_free: 900,
            name_max: 255,
        }),
        Response::Subscribed { head: 17 },
        Response::Changes(Changes::Entries {
            entries: vec![change(1, ChangeKind::Create), change(2, ChangeKind::Rename)],
            next: 3,
        }),
        Response::Changes(Changes::RescanNeeded {
            floor: 10,
            head: 20,
        }),
        Response::Head {
            head: 20,
            floor: 10,
        },
        Response::TreePage(TreePage {
            entries: vec![TreeEntry {
                path: "a".into(),
                attr: attr(FileType::Dir, 4096),
            }],
            next: Some("a".into()),
        }),
        Response::Versions(VersionList {
            versions: vec![version(1), version(2)],
            truncated: true,
        }),
        Response::Version(version(3)),
        Response::Got {
            attr: attr(FileType::File, 3),
        },
        Response::WrittenAttr {
            written: 4096,
            attr: attr(FileType::File, 4096),
        },
        Response::Created {
            handle: 7,
            attr: attr(FileType::File, 0),
            parent: attr(FileType::Dir, 4096),
        },
        Response::Unlinked {
            parent: attr(FileType::Dir, 4096),
        },
        Response::OpenedWith {
            handle: 8,
            attr: attr(FileType::File, 5),
            content: b"hello".to_vec(),
        },
        Response::AttrWith {
            attr: attr(FileType::File, 5),
            content: b"world".to_vec(),
        },
        Response::Made {
            attr: attr(FileType::Dir, 4096),
            parent: attr(FileType::Dir, 4096),
        },
    ]
}

pub fn pushes() -> Vec<Push> {
    let mut v: Vec<Push> = ChangeKind::ALL
        .iter()
        .enumerate()
        .map(|(i, k)| Push::Change(change(i as u64 + 1, *k)))
        .collect();
    v.push(Push::Lagged);
    v
}
