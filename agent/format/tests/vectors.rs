//! Volumes made by real gocryptfs 2.3 (checked in under tests/vectors/) must decrypt to the
//! plaintext gocryptfs itself showed when they were made (expected.json), forever; the
//! `fail_*` vectors must fail with the listed error.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cloudstore_format::file::CryptFile;
use cloudstore_format::names::{classify, LONGNAME_SUFFIX};
use cloudstore_format::{Config, DirIv, FormatError, NameKind, Volume};
use serde_json::Value;

mod common;
use common::{unpack_volume, vectors};

fn passphrase() -> Vec<u8> {
    let p = fs::read(vectors().join("passphrase")).unwrap();
    // First line, as gocryptfs -passfile reads it.
    p.split(|&b| b == b'\n').next().unwrap().to_vec()
}

#[derive(Debug, PartialEq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

fn walk(vol: &Volume, cdir: &Path, rel: &str, root: bool, out: &mut BTreeMap<String, Entry>) {
    let names = vol.names();
    let iv = if names.uses_dir_iv() {
        DirIv::parse(&fs::read(cdir.join("gocryptfs.diriv")).unwrap()).unwrap()
    } else {
        DirIv::ZERO
    };
    let mut cc = vol.content_cipher().unwrap();
    for e in fs::read_dir(cdir).unwrap() {
        let e = e.unwrap();
        let cname = e.file_name();
        let cname = cname.as_bytes();
        let plain = if names.is_plaintext() {
            if root && cname == b"gocryptfs.conf" {
                continue;
            }
            names.decrypt_name(&iv, cname).unwrap()
        } else {
            match classify(cname) {
                NameKind::Config if root => continue,
                NameKind::DirIv | NameKind::LongNameFile => continue,
                NameKind::LongContent => {
                    let mut nf = cname.to_vec();
                    nf.extend_from_slice(LONGNAME_SUFFIX.as_bytes());
                    let full = fs::read(cdir.join(std::ffi::OsStr::from_bytes(&nf))).unwrap();
                    names.decrypt_long_name(&iv, cname, &full).unwrap()
                }
                _ => names.decrypt_name(&iv, cname).unwrap(),
            }
        };
        let plain = String::from_utf8(plain).unwrap();
        let path = if rel.is_empty() {
            plain
        } else {
            format!("{rel}/{plain}")
        };
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.insert(path.clone(), Entry::Dir);
            walk(vol, &e.path(), &path, false, out);
        } else if ft.is_symlink() {
            let t = fs::read_link(e.path()).unwrap();
            let t = names
                .decrypt_symlink_target(&mut cc, t.as_os_str().as_bytes())
                .unwrap();
            out.insert(path, Entry::Symlink(t));
        } else {
            let data = fs::read(e.path()).unwrap();
            // Both reader paths: whole-file and the random-access CryptFile.
            let whole = cc.decrypt_file(&data).unwrap().to_vec();
            let mut f = CryptFile::open(data).unwrap();
            let mut ra = vec![0u8; f.plain_size().unwrap() as usize];
            let mut off = 0;
            while off < ra.len() {
                // Odd-sized reads cross every block boundary.
                let end = (off + 1000).min(ra.len());
                off += f.read(&mut cc, off as u64, &mut ra[off..end]).unwrap();
            }
            assert_eq!(whole, ra, "{path}");
            out.insert(path, Entry::File(whole));
        }
    }
}

fn sha256_hex(d: &[u8]) -> String {
    openssl::sha::sha256(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_volume(name: &str) {
    let dir = vectors().join(name);
    let unpacked = unpack_volume(name);
    let conf = fs::read(unpacked.path().join("cipher/gocryptfs.conf")).unwrap();
    let (cfg, vol) = Volume::open(&conf, &passphrase()).unwrap();
    assert!(cfg.creator.starts_with("gocryptfs 2."), "{}", cfg.creator);
    // Parse → serialise gives gocryptfs's own bytes back (same field order and indentation).
    assert_eq!(
        String::from_utf8(cfg.to_bytes()).unwrap(),
        String::from_utf8(conf).unwrap()
    );
    let mut got = BTreeMap::new();
    walk(&vol, &unpacked.path().join("cipher"), "", true, &mut got);
    let expected: Vec<Value> =
        serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(
        got.len(),
        expected.len(),
        "{name}: entries {:?}",
        got.keys().collect::<Vec<_>>()
    );
    for e in &expected {
        let path = e["path"].as_str().unwrap();
        let entry = got
            .get(path)
            .unwrap_or_else(|| panic!("{name}: {path} missing"));
        match (e["type"].as_str().unwrap(), entry) {
            ("dir", Entry::Dir) => {}
            ("symlink", Entry::Symlink(t)) => {
                assert_eq!(t, e["target"].as_str().unwrap().as_bytes(), "{path}")
            }
            ("file", Entry::File(d)) => {
                assert_eq!(d.len() as u64, e["size"].as_u64().unwrap(), "{path}");
                assert_eq!(sha256_hex(d), e["sha256"].as_str().unwrap(), "{path}");
            }
            (t, got) => panic!("{name}: {path}: expected {t}, got {got:?}"),
        }
    }
}

#[test]
fn gocryptfs_default_volume_scryptn10() {
    check_volume("v2_default_scryptn10");
}

#[test]
fn gocryptfs_default_volume_default_scrypt_cost() {
    check_volume("v2_default_scryptn16");
}

#[test]
fn gocryptfs_plaintextnames_volume() {
    check_volume("v2_plaintextnames");
}

#[test]
fn gocryptfs_deterministic_names_longnamemax_100_volume() {
    check_volume("v2_deterministic_longnamemax");
}

fn variant(e: &FormatError) -> String {
    format!("{e:?}")
        .split(['(', ' ', '{'])
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn fail_vectors_fail_with_the_expected_error() {
    let dir = vectors().join("fail");
    let unpacked = unpack_volume("v2_default_scryptn10");
    let conf = fs::read(unpacked.path().join("cipher/gocryptfs.conf")).unwrap();
    let (_, vol) = Volume::open(&conf, &passphrase()).unwrap();
    let mut cc = vol.content_cipher().unwrap();
    let expected: Vec<Value> =
        serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    assert!(expected.len() >= 20);
    for e in &expected {
        let file = e["file"].as_str().unwrap();
        let data = fs::read(dir.join(file)).unwrap();
        let err = match e["kind"].as_str().unwrap() {
            "config" => Config::parse(&data)
                .and_then(|c| c.unlock(&passphrase()))
                .unwrap_err(),
            _ => {
                // Every reader path must refuse it: whole file, and CryptFile open + read.
                let whole = cc.decrypt_file(&data).unwrap_err();
                let ra = CryptFile::open(data).and_then(|mut f| {
                    let mut buf = vec![0u8; 1 << 16];
                    f.read(&mut cc, 0, &mut buf)
                });
                let ra = ra.unwrap_err();
                assert_eq!(variant(&ra), variant(&whole), "{file}: {ra} vs {whole}");
                whole
            }
        };
        assert_eq!(variant(&err), e["error"].as_str().unwrap(), "{file}: {err}");
        if let Some(b) = e.get("block") {
            assert_eq!(err.block_no(), b.as_u64(), "{file}: {err}");
            assert!(
                err.to_string().contains(&format!("block {}", b)),
                "{file}: {err}"
            );
        }
    }
}
