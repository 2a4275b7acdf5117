//! Block throughput beside OpenSSL's and gocryptfs's own figures, in one run:
//! `cargo bench -p cloudstore-format --bench blocks` (or scripts/bench-format.sh).
//!
//! Ours: one core, 4 KiB blocks, one reused `ContentCipher`, caller-provided buffers (what
//! the FUSE consumer does per block). OpenSSL: `openssl speed -evp aes-256-gcm -bytes 4096`.
//! gocryptfs: `gocryptfs -speed` (it encrypts 4 KiB blocks too; Go's GCM and OpenSSL's).
//! Goal: our encrypt and decrypt at >= 70 % of OpenSSL's raw AES-256-GCM.

use std::process::Command;
use std::time::{Duration, Instant};

use cloudstore_format::{
    Config, ContentCipher, CreateOptions, FileHeader, MasterKey, Volume, CIPHER_BS, PLAIN_BS,
};

/// Long enough to swamp timer and frequency-ramp noise, short enough for a quick run.
const SECONDS: u64 = 2;

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn bench(mut f: impl FnMut(u64)) -> f64 {
    for i in 0..2000 {
        f(i); // warm up caches and the CPU clock
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(SECONDS) {
        for _ in 0..256 {
            f(n);
            n += 1;
        }
    }
    mb_s(n * PLAIN_BS as u64, start.elapsed())
}

fn openssl_speed() -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-mr",
            "-evp",
            "aes-256-gcm",
            "-bytes",
            "4096",
            "-seconds",
            &SECONDS.to_string(),
        ])
        .output()
        .ok()?;
    // Machine-readable line: "+F:<n>:AES-256-GCM:<bytes per second>".
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.starts_with("+F:"))?;
    line.rsplit(':')
        .next()?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|b| b / 1e6)
}

fn gocryptfs_speed() -> Vec<(String, f64)> {
    let Ok(out) = Command::new("gocryptfs").arg("-speed").output() else {
        return Vec::new();
    };
    // Lines like "AES-GCM-256-OpenSSL       \t1540.27 MB/s".
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?.to_string();
            let v = it.next()?.parse::<f64>().ok()?;
            (it.next() == Some("MB/s")).then_some((name, v))
        })
        .collect()
}

fn main() {
    let (cfg, _) = Config::create(
        b"bench",
        &CreateOptions {
            scrypt_log_n: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let vol = Volume::new(&cfg, &MasterKey::new_random().unwrap()).unwrap();
    let mut cc: ContentCipher = vol.content_cipher().unwrap();
    let id = FileHeader::new_random().unwrap().id;
    let plain = vec![0x5au8; PLAIN_BS];
    let mut sealed = vec![0u8; CIPHER_BS];
    let mut back = vec![0u8; PLAIN_BS];

    let enc = bench(|i| {
        cc.encrypt_block(&id, i, &plain, &mut sealed).unwrap();
    });
    cc.encrypt_block(&id, 7, &plain, &mut sealed).unwrap();
    let dec = bench(|_| {
        cc.decrypt_block(&id, 7, &sealed, &mut back).unwrap();
    });
    assert_eq!(back, plain);

    println!("4 KiB blocks, one core, release build");
    println!("{:<34} {:>10.1} MB/s", "cloudstore encrypt_block", enc);
    println!("{:<34} {:>10.1} MB/s", "cloudstore decrypt_block", dec);
    match openssl_speed() {
        Some(o) => {
            println!("{:<34} {:>10.1} MB/s", "openssl speed -evp aes-256-gcm", o);
            println!(
                "encrypt / openssl: {:.0} %   decrypt / openssl: {:.0} %   (goal >= 70 %)",
                100.0 * enc / o,
                100.0 * dec / o
            );
        }
        None => println!("openssl speed: not available"),
    }
    for (name, v) in gocryptfs_speed() {
        println!(
            "{:<34} {:>10.1} MB/s   (cloudstore encrypt = {:.0} %)",
            format!("gocryptfs -speed {name}"),
            v,
            100.0 * enc / v
        );
    }
}
