//! Bounded, deterministic fuzzing of the parsers that read untrusted bytes: the config,
//! the file header, and a whole file's ciphertext. Longer runs: CLOUDSTORE_FUZZ_ITERS.

mod common;

use std::path::{Path, PathBuf};

use cloudstore_format::file::CryptFile;
use cloudstore_format::{Config, FileHeader, Volume};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

#[test]
fn fuzz_config_parser() {
    let s = cloudstore_fuzzkit::run("config", &corpus("config"), |data| {
        if let Ok(cfg) = Config::parse(data) {
            // What parses must serialise to something that parses to the same bytes.
            let out = cfg.to_bytes();
            let again = Config::parse(&out).expect("re-parse of serialised config");
            assert_eq!(again.to_bytes(), out);
        }
    });
    assert!(s.corpus_entries >= 3);
}

#[test]
fn fuzz_header_parser() {
    cloudstore_fuzzkit::run("header", &corpus("header"), |data| {
        if let Ok(h) = FileHeader::parse(data) {
            assert_eq!(&h.to_bytes()[..], data);
        }
    });
}

#[test]
fn fuzz_file_decryption() {
    // The corpus files belong to tests/vectors/v2_default_scryptn10, so mutants reach every
    // block, not only the first tag check; they must be refused or decrypt, never panic.
    let unpacked = common::unpack_volume("v2_default_scryptn10");
    let conf = std::fs::read(unpacked.path().join("cipher/gocryptfs.conf")).unwrap();
    let (_, vol) = Volume::open(&conf, b"vector-passphrase").unwrap();
    let cc = std::cell::RefCell::new(vol.content_cipher().unwrap());
    cloudstore_fuzzkit::run("file", &corpus("file"), |data| {
        let mut cc = cc.borrow_mut();
        let _ = cc.decrypt_file(data);
        if let Ok(mut f) = CryptFile::open(data.to_vec()) {
            let mut buf = vec![0u8; 9000];
            let _ = f.read(&mut cc, 100, &mut buf);
        }
    });
}
