//! The offline commands against real gocryptfs 2.x over real FUSE mounts, both directions:
//! what `cloudstore encrypt` writes, gocryptfs reads identically; what gocryptfs writes,
//! `cloudstore decrypt` reads identically. Plus passwd and hostile input.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASS: &str = "correct horse battery staple";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cloudstore")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

fn ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fail(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "{cmd:?} succeeded but should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn passfile(dir: &Path, name: &str, pass: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("{pass}\n")).unwrap();
    p
}

/// A gocryptfs mount, unmounted on drop so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Mount {
    fn new(cipher: &Path, mnt: &Path, pass: &Path, extra: &[&str]) -> Self {
        fs::create_dir_all(mnt).unwrap();
        ok(Command::new("gocryptfs")
            .args(["-q", "-passfile"])
            .arg(pass)
            .args(extra)
            .arg(cipher)
            .arg(mnt));
        Mount(mnt.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let st = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

struct Rng(u64);
impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}

/// The corpus of the issue: block-boundary sizes, MiBs of random data, sparse files, names of
/// 1..=255 bytes with UTF-8 and spaces, long names, a 10-deep tree, empty dirs, symlinks,
/// hard links.
fn make_corpus(root: &Path) {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    fs::create_dir_all(root).unwrap();
    let sizes = [
        0usize, 1, 15, 16, 17, 4095, 4096, 4097, 8191, 8192, 8193, 12287, 12288, 12289, 65537,
        131072,
    ];
    fs::create_dir(root.join("sizes")).unwrap();
    for s in sizes {
        fs::write(root.join(format!("sizes/size {s}")), rng.bytes(s)).unwrap();
    }
    fs::write(root.join("random 3MiB"), rng.bytes(3 * 1024 * 1024 + 123)).unwrap();
    // Sparse: data far past a hole, a hole at the end, and a file that is all hole.
    let f = fs::File::create(root.join("sparse middle")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&rng.bytes(5000), 1_000_000).unwrap();
    let f = fs::File::create(root.join("sparse tail")).unwrap();
    f.write_all_at(&rng.bytes(10), 0).unwrap();
    f.set_len(2_000_000).unwrap();
    fs::File::create(root.join("sparse only"))
        .unwrap()
        .set_len(40960)
        .unwrap();
    // Names: every length class up to 255 bytes; short and long ciphertext names.
    fs::create_dir(root.join("names")).unwrap();
    for len in [
        1usize, 2, 15, 16, 17, 31, 32, 100, 175, 176, 190, 200, 254, 255,
    ] {
        let name: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        fs::write(root.join("names").join(&name), name.as_bytes()).unwrap();
    }
    let utf8 = "é".repeat(127); // 254 bytes
    fs::write(root.join("names").join(&utf8), b"utf8 long").unwrap();
    fs::write(root.join("names/Grüße, 世界 — with spaces .txt"), b"utf8").unwrap();
    fs::write(root.join("names/ leading and trailing space "), b"sp").unwrap();
    fs::create_dir(root.join("names").join("d".repeat(240))).unwrap();
    fs::write(
        root.join("names")
            .join("d".repeat(240))
            .join("inside long dir"),
        b"x",
    )
    .unwrap();
    // 10-deep tree and empty directories.
    let mut deep = root.join("deep");
    for i in 0..10 {
        deep = deep.join(format!("level {i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"bottom of the tree\n").unwrap();
    fs::create_dir_all(root.join("empty/nested empty")).unwrap();
    // Symlinks: relative, absolute, dangling, to a directory, a long target.
    symlink("sizes/size 1", root.join("link rel")).unwrap();
    symlink("/etc/hostname", root.join("link abs")).unwrap();
    symlink("does/not/exist", root.join("link dangling")).unwrap();
    symlink("deep", root.join("link dir")).unwrap();
    symlink("t".repeat(1000), root.join("link long target")).unwrap();
    // Hard links, within a directory and across directories.
    fs::write(root.join("hard a"), rng.bytes(5000)).unwrap();
    fs::hard_link(root.join("hard a"), root.join("hard b")).unwrap();
    fs::hard_link(root.join("hard a"), root.join("empty/hard c")).unwrap();
    // Modes.
    fs::write(root.join("mode 0600"), b"m").unwrap();
    fs::set_permissions(root.join("mode 0600"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("mode 0755"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("mode 0755"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        data_sha: [u8; 32],
        size: u64,
        links: usize,
    },
    Link(PathBuf),
}

/// Every entry under `root` with what must survive a round trip; hard links as groups.
fn snapshot(root: &Path) -> (BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>) {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<PathBuf, Node>,
        inos: &mut BTreeMap<u64, Vec<PathBuf>>,
    ) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let m = fs::symlink_metadata(&p).unwrap();
            let node = if m.file_type().is_symlink() {
                Node::Link(fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                walk(root, &p, out, inos);
                Node::Dir {
                    mode: m.mode() & 0o7777,
                }
            } else {
                inos.entry(m.ino()).or_default().push(rel.clone());
                Node::File {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                    data_sha: openssl::sha::sha256(&fs::read(&p).unwrap()),
                    size: m.len(),
                    links: m.nlink() as usize,
                }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    let mut inos = BTreeMap::new();
    walk(root, root, &mut out, &mut inos);
    let mut groups: Vec<Vec<PathBuf>> = inos.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    (out, groups)
}

fn assert_same_tree(want: &Path, got: &Path) {
    let (a, ga) = snapshot(want);
    let (b, gb) = snapshot(got);
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(
        ka,
        kb,
        "entry names differ between {} and {}",
        want.display(),
        got.display()
    );
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{} differs", k.display());
    }
    assert_eq!(ga, gb, "hard link groups differ");
    assert!(!ga.is_empty(), "the corpus has hard links");
}

fn cs(args: &[&str], dirs: &[&Path]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    for d in dirs {
        c.arg(d);
    }
    c
}

fn cloudstore_init(vol: &Path, pass: &Path) {
    ok(
        cs(&["init", "--scryptn", "10", "--passphrase-file"], &[pass])
            .arg("--dir")
            .arg(vol),
    );
}

#[test]
fn cloudstore_encrypt_then_gocryptfs_reads_identically() {
    let t = tempfile::tempdir().unwrap();
    let pass = passfile(t.path(), "pass", PASS);
    let corpus = t.path().join("corpus");
    make_corpus(&corpus);
    let vol = t.path().join("vol");
    cloudstore_init(&vol, &pass);
    // init refuses a non-empty directory.
    let e = fail(
        cs(&["init", "--scryptn", "10", "--passphrase-file"], &[&pass])
            .arg("--dir")
            .arg(&vol),
    );
    assert!(
        e.contains("not empty") && e.contains(&vol.display().to_string()),
        "{e}"
    );
    ok(&mut cs(
        &["encrypt", "--passphrase-file"],
        &[&pass, &corpus, &vol],
    ));
    let m = Mount::new(&vol, &t.path().join("mnt"), &pass, &["-ro"]);
    assert_same_tree(&corpus, &m.0);
    // The sparse file is sparse in the ciphertext too (gocryptfs reports the cipher blocks).
    let sp = fs::metadata(m.0.join("sparse tail")).unwrap();
    assert!(
        sp.blocks() * 512 < sp.len() / 4,
        "sparse tail uses {} blocks",
        sp.blocks()
    );
}

fn gocryptfs_writes_cloudstore_decrypts(vol: &Path, t: &Path, pass: &Path) {
    let corpus = t.join("corpus");
    make_corpus(&corpus);
    {
        let m = Mount::new(vol, &t.join("mnt"), pass, &[]);
        ok(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", corpus.display()))
            .arg(&m.0));
    }
    let out = t.join("out");
    ok(&mut cs(
        &["decrypt", "--passphrase-file"],
        &[pass, vol, &out],
    ));
    assert_same_tree(&corpus, &out);
    let sp = fs::metadata(out.join("sparse tail")).unwrap();
    assert!(
        sp.blocks() * 512 < sp.len() / 4,
        "holes were filled: {} blocks",
        sp.blocks()
    );
}

#[test]
fn gocryptfs_init_volume_written_by_gocryptfs_decrypts_identically() {
    let t = tempfile::tempdir().unwrap();
    let pass = passfile(t.path(), "pass", PASS);
    let vol = t.path().join("vol");
    fs::create_dir(&vol).unwrap();
    ok(Command::new("gocryptfs")
        .args(["-q", "-init", "-scryptn", "10", "-passfile"])
        .arg(&pass)
        .arg(&vol));
    gocryptfs_writes_cloudstore_decrypts(&vol, t.path(), &pass);
}

#[test]
fn cloudstore_init_volume_written_by_gocryptfs_decrypts_identically() {
    let t = tempfile::tempdir().unwrap();
    let pass = passfile(t.path(), "pass", PASS);
    let vol = t.path().join("vol");
    cloudstore_init(&vol, &pass);
    gocryptfs_writes_cloudstore_decrypts(&vol, t.path(), &pass);
}

#[test]
fn passwd_rewraps_for_gocryptfs_and_refuses_the_old_passphrase() {
    let t = tempfile::tempdir().unwrap();
    let pass = passfile(t.path(), "pass", PASS);
    let new = passfile(t.path(), "new", "a different passphrase");
    let vol = t.path().join("vol");
    cloudstore_init(&vol, &pass);
    {
        let m = Mount::new(&vol, &t.path().join("mnt"), &pass, &[]);
        fs::write(m.0.join("kept"), b"still here").unwrap();
    }
    ok(cs(&["passwd", "--passphrase-file"], &[&pass])
        .arg("--new-passphrase-file")
        .arg(&new)
        .arg(&vol));
    assert!(!vol.join("gocryptfs.conf.tmp").exists() && !vol.join("gocryptfs.conf.bak").exists());
    assert_eq!(
        fs::metadata(vol.join("gocryptfs.conf")).unwrap().mode() & 0o777,
        0o400
    );
    let o = run(Command::new("gocryptfs")
        .args(["-q", "-passfile"])
        .arg(&pass)
        .arg(&vol)
        .arg(t.path().join("mnt")));
    assert!(!o.status.success(), "gocryptfs accepted the old passphrase");
    let m = Mount::new(&vol, &t.path().join("mnt"), &new, &["-ro"]);
    assert_eq!(fs::read(m.0.join("kept")).unwrap(), b"still here");
    drop(m);
    let e = fail(&mut cs(
        &["decrypt", "--passphrase-file"],
        &[&pass, &vol, &t.path().join("o")],
    ));
    assert!(
        e.contains("wrong passphrase") && e.contains("gocryptfs.conf"),
        "{e}"
    );
}

/// Ciphertext path of a top-level plaintext file, found through a gocryptfs mount's inode.
fn cipher_of(vol: &Path, mnt: &Path, name: &str) -> PathBuf {
    let ino = fs::metadata(mnt.join(name)).unwrap().ino();
    fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::metadata(p).unwrap().ino() == ino)
        .unwrap_or_else(|| panic!("no ciphertext for {name}"))
}

#[test]
fn hostile_volumes_fail_naming_the_file_and_block() {
    let t = tempfile::tempdir().unwrap();
    let pass = passfile(t.path(), "pass", PASS);
    let vol = t.path().join("vol");
    cloudstore_init(&vol, &pass);
    let (a, b) = {
        let m = Mount::new(&vol, &t.path().join("mnt"), &pass, &[]);
        fs::write(m.0.join("a"), vec![1u8; 3 * 4096]).unwrap();
        fs::write(m.0.join("b"), vec![2u8; 3 * 4096]).unwrap();
        (cipher_of(&vol, &m.0, "a"), cipher_of(&vol, &m.0, "b"))
    };
    let good_a = fs::read(&a).unwrap();
    let good_b = fs::read(&b).unwrap();
    let conf = fs::read(vol.join("gocryptfs.conf")).unwrap();
    let mut n = 0;
    let mut expect_fail = |what: &str, must: &[&str]| {
        n += 1;
        let out = t.path().join(format!("out{n}"));
        let e = fail(&mut cs(
            &["decrypt", "--passphrase-file"],
            &[&pass, &vol, &out],
        ));
        for m in must {
            assert!(e.contains(m), "{what}: {m:?} missing from: {e}");
        }
        assert!(!e.contains("panicked"), "{what}: {e}");
    };
    let an = a.display().to_string();
    let bn = b.display().to_string();
    let h = 18;
    let c = 4128;

    let wrong = passfile(t.path(), "wrong", "wrong");
    let e = fail(&mut cs(
        &["decrypt", "--passphrase-file"],
        &[&wrong, &vol, &t.path().join("w")],
    ));
    assert!(e.contains("wrong passphrase"), "{e}");

    let mut x = good_a.clone();
    x[h + c + 100] ^= 1;
    fs::write(&a, &x).unwrap();
    expect_fail("flipped bit", &[&an, "block 1", "authentication failed"]);

    let mut x = good_a.clone();
    x[h + 2 * c + 5] ^= 0x40; // in the nonce of the last block
    fs::write(&a, &x).unwrap();
    expect_fail("flipped nonce", &[&an, "block 2"]);

    fs::write(&a, &good_a[..good_a.len() - 10]).unwrap();
    expect_fail("truncated in data", &[&an, "block 2"]);

    fs::write(&a, &good_a[..h + 2 * c + 7]).unwrap();
    expect_fail("truncated in overhead", &[&an, "impossible"]);

    let mut x = good_a.clone();
    x[1] = 9;
    fs::write(&a, &x).unwrap();
    expect_fail("bad header", &[&an, "version 9"]);

    let mut x = good_a.clone();
    x[h..h + c].copy_from_slice(&good_a[h + c..h + 2 * c]);
    x[h + c..h + 2 * c].copy_from_slice(&good_a[h..h + c]);
    fs::write(&a, &x).unwrap();
    expect_fail("swapped blocks", &[&an, "block 0"]);

    let mut x = good_b.clone();
    x[h + c..h + 2 * c].copy_from_slice(&good_a[h + c..h + 2 * c]);
    fs::write(&a, &good_a).unwrap();
    fs::write(&b, &x).unwrap();
    expect_fail("block from another file", &[&bn, "block 1"]);
    fs::write(&b, &good_b).unwrap();

    let cp = vol.join("gocryptfs.conf");
    fs::set_permissions(&cp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&cp, &conf[..conf.len() / 2]).unwrap();
    expect_fail(
        "truncated config",
        &["gocryptfs.conf", "not a gocryptfs config"],
    );
    fs::write(
        &cp,
        String::from_utf8_lossy(&conf).replace("\"Raw64\"", "\"Raw64\",\"AESSIV\""),
    )
    .unwrap();
    expect_fail("unsupported flag", &["gocryptfs.conf", "AESSIV"]);
    fs::write(&cp, &conf).unwrap();

    // Intact again: the export works.
    ok(&mut cs(
        &["decrypt", "--passphrase-file"],
        &[&pass, &vol, &t.path().join("final")],
    ));
    assert_eq!(
        fs::read(t.path().join("final/a")).unwrap(),
        vec![1u8; 3 * 4096]
    );
}
