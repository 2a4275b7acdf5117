//! The consumer's FUSE filesystem under stress and failure, on real mounts against a real
//! storage agent: large sparse files, concurrent writers, mmap, tampered ciphertext, the
//! storage agent killed mid-write, changes arriving from elsewhere, parked conflicts.

#[path = "fs_harness/mod.rs"]
mod fs_harness;
#[path = "support/mod.rs"]
mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use cloudstore_format::{DirIv, PLAIN_BS};
use cloudstore_protocol::{Op, Request, Response};
use fs_harness::*;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The ciphertext entry name of a file in the volume root.
fn root_entry(v: &Volume, name: &str) -> String {
    entry_in(v, "", name)
}

/// The ciphertext entry name of `name` in the ciphertext directory `dir` ("" for the root).
fn entry_in(v: &Volume, dir: &str, name: &str) -> String {
    let iv = DirIv::parse(&fs::read(v.tree().join(dir).join("gocryptfs.diriv")).unwrap()).unwrap();
    let en = v
        .format_volume()
        .names()
        .encrypt_name(&iv, name.as_bytes())
        .unwrap();
    String::from_utf8(en.entry().to_vec()).unwrap()
}

#[test]
fn large_sparse_files_and_large_writes() {
    let v = Volume::create();
    let m = v.mount();
    // Throughput of large sequential writes and reads (a figure, not a test). 128 MiB, not
    // GiBs: 2 GiB this way took 40 s here (write 93 MiB/s, read 119 MiB/s, debug build);
    // the multi-GiB file below is written at offsets past 4 GiB instead.
    let t = Instant::now();
    sh(
        "dd if=/dev/zero of=seq bs=1M count=128 conv=fsync status=none",
        m.path(),
    );
    let w = t.elapsed();
    // Remount so the read comes from storage, not the page cache.
    m.unmount();
    let m = v.mount();
    let t = Instant::now();
    sh("dd if=seq of=/dev/null bs=1M status=none", m.path());
    let r = t.elapsed();
    eprintln!(
        "128 MiB: write {:.0} MiB/s, read {:.0} MiB/s",
        128.0 / w.as_secs_f64(),
        128.0 / r.as_secs_f64()
    );
    assert_eq!(fs::metadata(m.p("seq")).unwrap().len(), 128 << 20);

    // A file of several GiB: data at the start, past 4 GiB (beyond 32-bit offsets) and at
    // an unaligned end; the gaps are holes on storage too.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("big"))
        .unwrap();
    let head = pattern(1, 3 << 20);
    let far = pattern(2, (2 << 20) + 123);
    let far_off: u64 = (5 << 30) - 777;
    f.write_all_at(&head, 0).unwrap();
    f.write_all_at(&far, far_off)
        .unwrap_or_else(|e| panic!("{e}\n{}", log_text()));
    f.sync_all().unwrap();
    let size = far_off + far.len() as u64;
    assert_eq!(f.metadata().unwrap().len(), size);
    let mut buf = vec![0u8; far.len()];
    f.read_exact_at(&mut buf, far_off)
        .unwrap_or_else(|e| panic!("{e}\n{}", log_text()));
    assert!(buf == far, "the data past 4 GiB reads back");
    let mut hole = vec![1u8; 1 << 20];
    f.read_exact_at(&mut hole, 3 << 30).unwrap();
    assert!(hole.iter().all(|&b| b == 0), "a hole reads as zeros");
    let entry = root_entry(&v, "big");
    let meta = fs::metadata(v.tree().join(&entry)).unwrap();
    assert_eq!(
        meta.len(),
        cloudstore_format::offsets::plain_size_to_cipher_size(size)
    );
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "the ciphertext is sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    // Shrinking cuts at an unaligned size and keeps the bytes before it (through the
    // same handle: storage's modification session is still open, so it keeps no second
    // copy of the big file).
    f.set_len(1_000_001)
        .unwrap_or_else(|e| panic!("{e}\n{}", log_text()));
    drop(f);
    let got = fs::read(m.p("big")).unwrap();
    assert!(got == head[..1_000_001]);
}

/// Opens `path` for reading with O_DIRECT: each read reaches the filesystem as asked,
/// bypassing the kernel's page cache and readahead.
fn open_direct(path: &std::path::Path) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

/// A page-aligned part of `v` of `len` bytes (O_DIRECT wants aligned buffers).
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len + 4096, 0);
    let skip = v.as_ptr().align_offset(4096);
    &mut v[skip..skip + len]
}

#[test]
fn a_mib_read_in_one_request_comes_back_whole() {
    // With O_DIRECT the kernel sends the application's 1 MiB as one read (the readahead
    // window would cut it into 128 KiB ones): 1 MiB + 8 KiB of ciphertext, two protocol
    // reads whose answers make one buffer, decrypted in place.
    let v = Volume::create();
    let m = v.mount();
    let data = pattern(7, (3 << 20) + 5);
    fs::write(m.p("f"), &data).unwrap();
    m.unmount();
    let m = v.mount();
    let f = open_direct(&m.p("f"));
    let mut backing = Vec::new();
    for off in [0usize, 1 << 20, 3 << 20, (2 << 20) + 4096 * 3] {
        let buf = aligned(&mut backing, 1 << 20);
        let n = f
            .read_at(buf, off as u64)
            .unwrap_or_else(|e| panic!("read at {off}: {e}\n{}", log_text()));
        let want = &data[off..(off + (1 << 20)).min(data.len())];
        assert_eq!(n, want.len(), "bytes read at {off}");
        assert!(buf[..n] == *want, "the MiB at {off} reads back");
    }
}

#[test]
fn a_streaming_reader_reads_what_was_written_after_its_next_reads_were_asked_for() {
    // 128 KiB reads with O_DIRECT reach the consumer as the kernel's readahead would: after
    // the first ones, the next ranges are asked of storage ahead of the reader. A change
    // made after that, through another handle here or by another mount, is what the reader
    // must then read.
    const STEP: usize = 128 << 10;
    let v = Volume::create();
    // Long cache times: the kernel shows the other mount's change only once storage's
    // push of it was taken in here.
    let here = v.mount_with(|o| {
        o.attr_ttl = Duration::from_secs(600);
        o.followed_ttl = Duration::from_secs(600);
    });
    let there = v.mount();
    let mut data = pattern(11, 16 * STEP);
    fs::write(here.p("f"), &data).unwrap();
    let reader = open_direct(&here.p("f"));
    let mut backing = Vec::new();
    let mut read_step = |step: usize, data: &[u8]| {
        let buf = aligned(&mut backing, STEP);
        let n = reader
            .read_at(buf, (step * STEP) as u64)
            .unwrap_or_else(|e| panic!("read of step {step}: {e}\n{}", log_text()));
        assert_eq!(n, STEP, "bytes read at step {step}");
        assert!(
            buf[..n] == data[step * STEP..(step + 1) * STEP],
            "step {step} reads what was last written there"
        );
    };
    for step in 0..3 {
        read_step(step, &data);
    }

    let writer = OpenOptions::new().write(true).open(here.p("f")).unwrap();
    writer.write_all_at(&[0xaa; STEP], 5 * STEP as u64).unwrap();
    data[5 * STEP..6 * STEP].fill(0xaa);
    for step in 3..6 {
        read_step(step, &data);
    }

    // A page the kernel keeps here until storage's push of the other mount's change is
    // taken in: the push drops it after dropping what the consumer keeps of the file.
    let watcher = File::open(here.p("f")).unwrap();
    let mut page = [0u8; 4096];
    let watched = 12 * STEP as u64;
    watcher.read_exact_at(&mut page, watched).unwrap();
    let other = OpenOptions::new().write(true).open(there.p("f")).unwrap();
    other.write_all_at(&[0xbb; STEP], 9 * STEP as u64).unwrap();
    other.write_all_at(&[0xcc; 4096], watched).unwrap();
    drop(other);
    data[9 * STEP..10 * STEP].fill(0xbb);
    data[watched as usize..][..4096].fill(0xcc);
    support::wait_until("the other mount's change to reach this one", || {
        watcher.read_exact_at(&mut page, watched).is_ok() && page == [0xcc; 4096]
    });
    for step in 6..10 {
        read_step(step, &data);
    }
}

#[test]
fn a_streaming_reader_on_a_storage_that_stops_answering_fails_within_the_time_limit() {
    // The reader's next ranges are asked ahead; storage then stops (SIGSTOP: the
    // connection stays up, nothing is answered). The read that waits on a range asked
    // ahead fails when that call's time limit ends, without asking again and waiting a
    // second time limit; the mount serves again once storage does.
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const STEP: usize = 128 << 10;
    const LIMIT: Duration = Duration::from_secs(3);
    let v = Volume::create();
    let m = v.mount_with(|o| o.request_timeout = LIMIT);
    let data = pattern(5, 64 * STEP);
    fs::write(m.p("f"), &data).unwrap();
    let reader = open_direct(&m.p("f"));
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, STEP);
    for step in 0..3 {
        reader.read_exact_at(buf, (step * STEP) as u64).unwrap();
    }
    let storage = Pid::from_raw(v.storage.pid());
    kill(storage, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let mut failed = None;
    for step in 3..64 {
        if let Err(e) = reader.read_exact_at(buf, (step * STEP) as u64) {
            failed = Some((step, e, stopped.elapsed()));
            break;
        }
        assert!(buf == &data[step * STEP..(step + 1) * STEP], "step {step}");
    }
    kill(storage, Signal::SIGCONT).unwrap();
    let (step, err, waited) = failed.expect("a read fails while storage is stopped");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        waited < LIMIT + LIMIT / 2,
        "the read failed {waited:?} after storage stopped, with a time limit of {LIMIT:?}"
    );
    // Storage stopped between frames: the call gets no answer; stopped inside one: the
    // connection is found lost and no new one comes up in time.
    let log = log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("read /f: ")
            && (l.contains("no answer") || l.contains("unreachable for 3s"))),
        "the error names the file and the silence:\n{log}"
    );
    support::wait_until("the reader to read again", || {
        reader.read_exact_at(buf, (step * STEP) as u64).is_ok()
            && *buf == data[step * STEP..(step + 1) * STEP]
    });
}

const STRIPE: usize = 3_000; // not a block multiple: neighbours share blocks
const ROUNDS: usize = 60;

/// Four threads, each with its own handle (a new one for every write with `reopen`),
/// write interleaved unaligned stripes of the new file `path`; every byte must land.
fn stripes_from_four_handles(path: &std::path::Path, reopen: bool) {
    File::create(path).unwrap();
    let open = || OpenOptions::new().write(true).open(path).unwrap();
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                let mut f = open();
                for r in 0..ROUNDS {
                    if reopen {
                        f = open();
                    }
                    let off = ((r * 4 + t) * STRIPE) as u64;
                    f.write_all_at(&vec![(t * 50 + r % 50) as u8 + 1; STRIPE], off)
                        .unwrap();
                }
            });
        }
    });
    let got = fs::read(path).unwrap();
    assert_eq!(got.len(), ROUNDS * 4 * STRIPE);
    for r in 0..ROUNDS {
        for t in 0..4 {
            let off = (r * 4 + t) * STRIPE;
            let want = (t * 50 + r % 50) as u8 + 1;
            assert!(
                got[off..off + STRIPE].iter().all(|&b| b == want),
                "stripe {t} of round {r} is damaged"
            );
        }
    }
}

#[test]
fn a_file_opened_while_another_handle_writes_it_stays_whole() {
    // An open answered with the size from before a write another handle sent meanwhile
    // once made the next partial-block write rewrite a block as the file's last, shorter
    // one: a block that failed authentication, or a stripe lost. A new handle for every
    // write gives the race many chances.
    let v = Volume::create();
    let m = v.mount();
    for i in 0..3 {
        stripes_from_four_handles(&m.p(&format!("shared-{i}")), true);
    }
}

#[test]
fn concurrent_writers_and_mmap() {
    let v = Volume::create();
    let m = v.mount();
    // Four threads write interleaved unaligned stripes of one file, four more write their
    // own files; every byte must land.
    let shared = m.p("shared");
    std::thread::scope(|s| {
        s.spawn(|| stripes_from_four_handles(&shared, false));
        for t in 0..4u64 {
            let p = m.p(&format!("own-{t}"));
            s.spawn(move || {
                let mut f = File::create(&p).unwrap();
                for c in 0..16 {
                    f.write_all(&pattern(t * 100 + c, 100_000)).unwrap();
                }
                f.sync_all().unwrap();
            });
        }
    });
    for t in 0..4u64 {
        let want: Vec<u8> = (0..16)
            .flat_map(|c| pattern(t * 100 + c, 100_000))
            .collect();
        assert!(
            fs::read(m.p(&format!("own-{t}"))).unwrap() == want,
            "own-{t}"
        );
    }

    // mmap: write through a shared mapping, msync, read with read(2) and after a remount.
    let len = 3 * PLAIN_BS + 100;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("mapped"))
        .unwrap();
    f.set_len(len as u64).unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of `len` bytes of an open file, unmapped below
        // before the file is closed; no other reference into it exists.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(
                p,
                libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            let s = std::slice::from_raw_parts_mut(p as *mut u8, len);
            for (i, b) in s.iter_mut().enumerate().step_by(97) {
                *b = (i % 251) as u8 + 1;
            }
            s[len - 1] = 0xEE;
            assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
            assert_eq!(libc::munmap(p, len), 0);
        }
    }
    drop(f);
    let check = |data: &[u8]| {
        assert_eq!(data.len(), len);
        for (i, &b) in data.iter().enumerate() {
            let want = if i == len - 1 {
                0xEE
            } else if i % 97 == 0 {
                (i % 251) as u8 + 1
            } else {
                0
            };
            assert_eq!(b, want, "byte {i}");
        }
    };
    check(&fs::read(m.p("mapped")).unwrap());
    m.unmount();
    let m = v.mount();
    check(&fs::read(m.p("mapped")).unwrap());
    // And a read-only mapping of a file written with write(2).
    let f = File::open(m.p("own-1")).unwrap();
    {
        use std::os::fd::AsRawFd;
        let n = 1_600_000;
        // SAFETY: a private read-only mapping of an open file, unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let s = std::slice::from_raw_parts(p as *const u8, n);
            let want: Vec<u8> = (0..16).flat_map(|c| pattern(100 + c, 100_000)).collect();
            assert!(s == &want[..]);
            libc::munmap(p, n);
        }
    }
}

#[test]
fn tampered_ciphertext_gives_eio_and_names_the_file() {
    let v = Volume::create();
    let m = v.mount();
    let content = pattern(7, 3 * PLAIN_BS);
    fs::write(m.p("secret-plans.txt"), &content).unwrap();
    fs::write(m.p("innocent.txt"), b"still fine").unwrap();
    m.unmount();
    // Flip one bit inside block 1's ciphertext.
    let cipher = v.tree().join(root_entry(&v, "secret-plans.txt"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cipher)
        .unwrap();
    let off = (cloudstore_format::HEADER_LEN + cloudstore_format::CIPHER_BS + 100) as u64;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], off).unwrap();
    drop(f);
    // A name that was tampered with: the entry is left out of listings, not shown garbled.
    let bad_name = v.tree().join(root_entry(&v, "innocent.txt"));
    // Names are not authenticated (EME, as in gocryptfs): one changed block decrypts to
    // random bytes, refused only by their padding, which about one in 256 passes. The
    // first change that is refused is the one made, so the test means the same each run.
    let iv = DirIv::parse(&fs::read(v.tree().join("gocryptfs.diriv")).unwrap()).unwrap();
    let names = v.format_volume();
    let original = root_entry(&v, "innocent.txt");
    let mangled = ["AA", "BB", "CC", "DD", "EE", "FF"]
        .iter()
        .map(|head| format!("{head}{}", &original[2..]))
        .find(|m| *m != original && names.names().decrypt_name(&iv, m.as_bytes()).is_err())
        .expect("a change of the name that its decryption refuses");
    fs::copy(&bad_name, v.tree().join(&mangled)).unwrap();

    let m = v.mount();
    let err = fs::read(m.p("secret-plans.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The untouched block still reads; only the damaged one fails.
    let f = File::open(m.p("secret-plans.txt")).unwrap();
    let mut first = vec![0u8; PLAIN_BS];
    f.read_exact_at(&mut first, 0).unwrap();
    assert!(first == content[..PLAIN_BS]);
    let mut second = vec![0u8; PLAIN_BS];
    assert_eq!(
        f.read_exact_at(&mut second, PLAIN_BS as u64)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EIO)
    );
    let log = log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("/secret-plans.txt")
            && l.contains("block 1: authentication failed")),
        "the log names the file and the block:\n{log}"
    );
    let mut names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["innocent.txt", "secret-plans.txt"]);
    assert_eq!(fs::read(m.p("innocent.txt")).unwrap(), b"still fine");
}

#[test]
fn storage_killed_and_restarted_mid_writes_loses_nothing() {
    let mut v = Volume::create();
    // Over a pipe pair, as qrexec-client-vm connects the consumer to storage.
    let m = v.mount_over_pipes();
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: u64 = 48;
    let path = m.p("journal.bin");
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut f = File::create(&path).unwrap();
            for c in 0..CHUNKS {
                f.write_all(&pattern(c, CHUNK)).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            f.sync_all().unwrap();
        })
    };
    // Kill the agent (SIGKILL) once the writer is under way; it is back 700 ms later.
    support::wait_until("the writer to start", || {
        fs::metadata(&path)
            .map(|m| m.len() > 4 * CHUNK as u64)
            .unwrap_or(false)
    });
    v.storage.kill();
    // Meanwhile, namespace operations wait for storage too.
    let other = {
        let p = m.p("made-while-down");
        std::thread::spawn(move || fs::create_dir(&p))
    };
    // The writer's next write waits for storage: the status shows it pending.
    support::wait_until("a write waiting for storage", || {
        m.status.pending_writes() > 0
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(!m.status.connected(), "the loss is visible in the status");
    assert!(m.status.pending_writes() > 0);
    v.storage.spawn();
    writer.join().expect("the writer saw an error");
    other.join().unwrap().unwrap();
    assert!(m.status.connected());
    assert_eq!(m.status.pending_writes(), 0);
    let want: Vec<u8> = (0..CHUNKS).flat_map(|c| pattern(c, CHUNK)).collect();
    assert!(
        fs::read(&path).unwrap() == want,
        "every byte written arrived"
    );
    assert!(m.p("made-while-down").is_dir());
    m.unmount();
    // And storage really has it: gocryptfs reads the same from the ciphertext.
    let g = v.gocryptfs();
    assert!(fs::read(g.path().join("journal.bin")).unwrap() == want);
}

#[test]
fn writes_and_changes_on_their_way_when_storage_dies_are_sent_again_in_order() {
    let mut v = Volume::create();
    let m = v.mount();
    support::wait_until("the mount to follow storage's changes", || {
        m.status.following()
    });
    let then = std::time::UNIX_EPOCH + Duration::from_secs(1_400_000_000);
    let records = pattern(9, 5 * 10_240 + 123);
    let mut f = File::create(m.p("f")).unwrap();
    // Storage stops answering: the records, the time and the mode all go out behind each
    // other, answered here without it.
    support::stop_process(v.storage.pid());
    for r in records.chunks(10_240) {
        f.write_all(r).unwrap();
    }
    f.set_modified(then).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    assert!(m.status.pending_writes() > 0, "the chain is on its way");
    // It dies with all of them unanswered, and comes back.
    v.storage.kill();
    v.storage.spawn();
    // The fsync collects the chain: each one sent again on the new connection, in order.
    f.sync_all().expect("nothing was lost with the connection");
    drop(f);
    assert_eq!(m.status.pending_writes(), 0);
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!(
        md.modified().unwrap(),
        then,
        "the time is the change's, not a write's"
    );
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert!(fs::read(m.p("f")).unwrap() == records);
    m.unmount();
    let g = v.gocryptfs();
    let md = fs::metadata(g.path().join("f")).unwrap();
    assert_eq!(md.modified().unwrap(), then);
    assert!(fs::read(g.path().join("f")).unwrap() == records);
}

#[test]
fn an_operation_storage_cannot_serve_in_time_fails_with_eio() {
    let mut v = Volume::create();
    let m = v.mount_with(|o| o.request_timeout = Duration::from_secs(2));
    let f = File::create(m.p("timed-out.txt")).unwrap();
    v.storage.kill();
    let t = Instant::now();
    let err = f.write_all_at(b"y", 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(f);
    let log = log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("write /timed-out.txt: ")
            && l.contains("storage unreachable")),
        "the error names the plaintext path:\n{log}"
    );
    assert!(!m.status.connected());
    v.storage.spawn();
    // The mount reconnects by itself (status shows it) and then serves at once.
    support::wait_until("the mount to reconnect", || m.status.connected());
    fs::write(m.p("g"), b"y").unwrap();
    assert_eq!(fs::read(m.p("g")).unwrap(), b"y");
}

/// close(2) of `f`, with its result (dropping a `File` ignores it).
fn close(f: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is ours alone, taken out of the File.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn writes_answered_before_storage_are_ordered_and_their_failures_reported() {
    let v = Volume::create();
    let m = v.mount_with(|o| o.request_timeout = Duration::from_secs(2));
    // Small unaligned writes: each rewrites the block the one before it wrote, so each
    // must see it; a second handle reads them back before the first is closed.
    let mut f = File::create(m.p("log.txt")).unwrap();
    let mut want = Vec::new();
    for i in 0..300 {
        let line = format!("line {i:04} of an unaligned log\n");
        f.write_all(line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
        if i % 50 == 49 {
            assert_eq!(
                fs::read(m.p("log.txt")).unwrap(),
                want,
                "after {} lines",
                i + 1
            );
            assert_eq!(
                fs::metadata(m.p("log.txt")).unwrap().len(),
                want.len() as u64
            );
        }
    }
    close(f).unwrap();
    // Truncated and rewritten at once: the truncate waits for the write before it.
    let big = pattern(7, 3 << 20);
    let mut f = File::create(m.p("big.bin")).unwrap();
    f.write_all(&big).unwrap();
    let mut g = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.p("big.bin"))
        .unwrap();
    g.write_all(b"short").unwrap();
    close(g).unwrap();
    close(f).unwrap();
    assert_eq!(fs::read(m.p("big.bin")).unwrap(), b"short");

    // Storage stops answering after the write was answered: fsync reports it. A close
    // does not wait for it (as on a local file system); the failure is logged with the
    // file's name when the handle is released.
    let pid = nix::unistd::Pid::from_raw(v.storage.pid());
    for how in ["fsync", "close"] {
        let name = format!("{how}.bin");
        let mut f = File::create(m.p(&name)).unwrap();
        f.write_all(&pattern(1, 1 << 20)).unwrap();
        f.sync_all().unwrap();
        support::stop_process(pid.as_raw());
        // Nothing is in flight before it, so it is answered as soon as it is sent (small
        // enough to fit the socket's buffer: a stopped reader blocks larger ones there).
        f.write_all(&pattern(2, 4096)).unwrap();
        if how == "fsync" {
            let err = f.sync_all().unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{how}: {err}");
        } else {
            // Waiting for the write would end in the 2 s timeout and fail the close with
            // EIO; the margin is for a loaded machine.
            let t = Instant::now();
            close(f).unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(1900),
                "close waited for storage: {:?}",
                t.elapsed()
            );
        }
        // The release runs after the close; its wait ends with the 2 s timeout. Storage
        // stays stopped until then: an answer it gave first would be taken.
        support::wait_until("the failure in the log", || {
            log_text()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(&format!("/{name}")))
        });
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    // Storage is back: the mount serves, and a failure was reported once, not forever.
    support::wait_until("the mount to serve again", || {
        fs::write(m.p("after.txt"), b"after").is_ok()
    });
    let mut f = OpenOptions::new()
        .write(true)
        .open(m.p("fsync.bin"))
        .unwrap();
    f.write_all(b"again").unwrap();
    f.sync_all().unwrap();
    close(f).unwrap();
}

#[test]
fn changes_from_elsewhere_show_without_remount_and_conflicts_are_adopted() {
    let v = Volume::create();
    // Long cache times: only storage's change notifications can make the change visible.
    let m = v.mount_with(|o| {
        o.attr_ttl = Duration::from_secs(600);
        o.followed_ttl = Duration::from_secs(600);
    });
    fs::write(m.p("note.txt"), b"version one").unwrap();
    for _ in 0..2 {
        let mut s = String::new();
        File::open(m.p("note.txt"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "version one");
    }
    let vol = v.format_volume();
    let mut cc = vol.content_cipher().unwrap();
    let sync = sync_client(&v.storage);
    let entry = root_entry(&v, "note.txt");
    // The transfer puts the cloud's newer version in place (as a download does).
    put(
        &sync,
        &entry,
        &cc.encrypt_file(b"version two from the cloud").unwrap(),
        0o600,
    );
    support::wait_until("the new content to show", || {
        fs::read(m.p("note.txt")).ok().as_deref() == Some(b"version two from the cloud".as_slice())
    });

    // A conflict parked by the transfer is adopted beside the original under its
    // decrypted name.
    let mut up = sync
        .upload(Request::ParkConflict {
            path: entry.clone(),
        })
        .unwrap();
    up.write_all(&cc.encrypt_file(b"the other side's edit").unwrap())
        .unwrap();
    let parked = match up.finish().unwrap() {
        Response::Version(v) => v,
        r => panic!("expected Version, got {r:?}"),
    };
    let stamp = {
        let out = sh(
            &format!("date -u -d @{} '+%Y-%m-%d %H%M'", parked.time.secs),
            m.path(),
        );
        out.trim().to_owned()
    };
    let name = format!("note (conflict {stamp}).txt");
    support::wait_until("the conflict copy to appear", || m.p(&name).exists());
    assert_eq!(fs::read(m.p(&name)).unwrap(), b"the other side's edit");
    assert_eq!(
        fs::read(m.p("note.txt")).unwrap(),
        b"version two from the cloud"
    );
    match sync.call(Request::ListConflicts).unwrap() {
        Response::Versions(l) => assert!(l.versions.is_empty(), "nothing stays parked"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn names_and_attributes_the_kernel_keeps_long_follow_changes_made_by_another_mount() {
    let v = Volume::create();
    // This mount's kernel may keep what it was told for ten minutes while it follows
    // storage's pushes; the other mount changes things behind its back.
    let here = v.mount_with(|o| o.followed_ttl = Duration::from_secs(600));
    let there = v.mount();
    fs::create_dir(here.p("dir")).unwrap();
    for name in ["stays", "goes", "moves", "grows", "dir/inner"] {
        fs::write(here.p(name), name.as_bytes()).unwrap();
    }
    support::wait_until("the other mount to see the files", || {
        there.p("dir/inner").exists()
    });
    let looked_at = |m: &Mount| {
        for name in ["stays", "goes", "moves", "grows", "dir/inner"] {
            fs::metadata(m.p(name)).unwrap();
        }
    };
    looked_at(&here);
    looked_at(&there);
    fs::remove_file(there.p("goes")).unwrap();
    fs::rename(there.p("moves"), there.p("dir/moved")).unwrap();
    fs::write(there.p("grows"), b"grown by the other mount").unwrap();
    fs::set_permissions(there.p("stays"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::remove_file(there.p("dir/inner")).unwrap();
    support::wait_until("the deletion to show", || !here.p("goes").exists());
    support::wait_until("the rename to show", || {
        !here.p("moves").exists()
            && fs::read(here.p("dir/moved")).ok().as_deref() == Some(b"moves".as_slice())
    });
    support::wait_until("the new size to show", || {
        fs::metadata(here.p("grows")).map(|m| m.len()).ok() == Some(24)
    });
    assert_eq!(
        fs::read(here.p("grows")).unwrap(),
        b"grown by the other mount"
    );
    support::wait_until("the new mode to show", || {
        fs::metadata(here.p("stays"))
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
            == Some(0o640)
    });
    support::wait_until("the deletion inside a directory to show", || {
        !here.p("dir/inner").exists()
    });
    let mut names: Vec<String> = fs::read_dir(here.p("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["moved"]);
}

/// A mount whose kernel keeps no names or attributes (so each stat reaches the mount),
/// once it follows storage's changes.
fn mount_keeping_nothing(v: &Volume) -> Mount {
    let m = v.mount_with(|o| o.followed_ttl = Duration::ZERO);
    support::wait_until("the mount to follow storage's changes", || {
        m.status.following()
    });
    m
}

#[test]
fn the_stat_after_a_write_is_answered_from_the_write_until_anything_may_have_changed_it() {
    let v = Volume::create();
    let m = mount_keeping_nothing(&v);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all(&pattern(1, 4096)).unwrap();
    // Once storage has written it, its ciphertext's mtime is changed behind storage's back:
    // a stat that asks storage shows it, one answered from the write's answer does not.
    let cipher = v.tree().join(root_entry(&v, "f"));
    support::wait_until("storage to write the file", || {
        fs::metadata(&cipher).map(|m| m.len()).ok() == Some(18 + 4096 + 32)
    });
    sh(
        &format!("touch -m -d 2001-01-01T00:00:00Z {}", cipher.display()),
        v.tree().as_path(),
    );
    let first = f.metadata().unwrap();
    assert_eq!(first.len(), 4096);
    assert!(
        first.mtime() > 1_600_000_000,
        "the stat after the write is the write's own answer, not a new question to storage: mtime {}",
        first.mtime()
    );
    let second = f.metadata().unwrap();
    assert_eq!(
        (second.len(), second.mtime()),
        (4096, 978_307_200),
        "the next stat asks storage"
    );
    // Any other request about the file may change it: the attributes the write left are
    // not used after an fsync.
    f.write_all_at(b"x", 10).unwrap();
    f.sync_all().unwrap();
    sh(
        &format!("touch -m -d 2001-01-01T00:00:00Z {}", cipher.display()),
        v.tree().as_path(),
    );
    assert_eq!(f.metadata().unwrap().mtime(), 978_307_200);
    drop(f);

    // A change made elsewhere after this mount's write is what a stat shows, although the
    // kernel may keep what it is told for ten minutes.
    let here = v.mount_with(|o| o.followed_ttl = Duration::from_secs(600));
    let there = v.mount();
    support::wait_until("both mounts to follow storage's changes", || {
        here.status.following() && there.status.following()
    });
    fs::write(here.p("g"), b"first").unwrap();
    // Held open so the mount keeps the file's node (and what it knows of it) throughout.
    let held = File::open(here.p("g")).unwrap();
    let mut writer = OpenOptions::new().write(true).open(here.p("g")).unwrap();
    writer.write_all(&pattern(2, 100)).unwrap();
    drop(writer);
    let cipher = v.tree().join(root_entry(&v, "g"));
    support::wait_until("storage to write g", || {
        fs::metadata(&cipher).map(|m| m.len()).ok() == Some(18 + 100 + 32)
    });
    fs::write(there.p("g"), pattern(3, 300)).unwrap();
    support::wait_until("storage to write the other mount's g", || {
        fs::metadata(&cipher).map(|m| m.len()).ok() == Some(18 + 300 + 32)
    });
    // Time for the push to reach this mount, so the stat below comes after it.
    std::thread::sleep(Duration::from_millis(500));
    support::wait_until("the other mount's size to show", || {
        held.metadata().map(|m| m.len()).ok() == Some(300)
    });
    assert_eq!(fs::read(here.p("g")).unwrap(), pattern(3, 300));
}

#[test]
fn an_ownership_change_after_a_change_made_here_is_answered_without_storage() {
    use std::os::unix::fs::fchown;
    let v = Volume::create();
    let m = v.mount_with(|o| {
        o.followed_ttl = Duration::ZERO;
        o.request_timeout = Duration::from_secs(2);
    });
    support::wait_until("the mount to follow storage's changes", || {
        m.status.following()
    });
    // What tar does for each file it unpacks as root: content, times, owner, mode.
    let f = File::create(m.p("f")).unwrap();
    f.write_all_at(&pattern(4, 4096), 0).unwrap();
    // Nothing in flight, so storage answers the times (a change sent behind a write is
    // answered at once, and so is every ownership change after it until it lands: see
    // `times_and_mode_set_after_a_write_go_behind_it_and_land_in_order`).
    f.sync_all().unwrap();
    let then = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    f.set_modified(then).unwrap();
    let stopped = nix::unistd::Pid::from_raw(v.storage.pid());
    support::stop_process(stopped.as_raw());
    // Storage cannot answer now: the owner change that follows the times is answered from
    // the times' own answer...
    let t = Instant::now();
    let first = fchown(&f, Some(0), Some(0));
    let took = t.elapsed();
    // ...once: the next one asks storage, and fails when it does not answer in time.
    let second = fchown(&f, Some(0), Some(0));
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
    first.unwrap();
    assert!(
        took < Duration::from_secs(1),
        "answered at once, took {took:?}"
    );
    assert_eq!(second.unwrap_err().raw_os_error(), Some(libc::EIO));
    // Storage answers again: the owner change is one more no-op, the times are kept.
    fchown(&f, Some(0), Some(0)).unwrap();
    assert_eq!(f.metadata().unwrap().modified().unwrap(), then);
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o640);
}

#[test]
fn a_directory_stat_after_an_entry_made_or_removed_here_is_answered_from_that_change() {
    let v = Volume::create();
    let m = mount_keeping_nothing(&v);
    fs::create_dir(m.p("d")).unwrap();
    let dir = File::open(m.p("d")).unwrap();
    let cdir = v.tree().join(root_entry(&v, "d"));
    // Changed behind storage's back: a stat that asks storage shows this mtime.
    let backdate = || {
        sh(
            &format!("touch -m -d 2001-01-01T00:00:00Z {}", cdir.display()),
            v.tree().as_path(),
        );
    };
    let cname = entry_in(&v, &root_entry(&v, "d"), "x");
    drop(File::create(m.p("d/x")).unwrap());
    assert!(cdir.join(&cname).exists());
    backdate();
    let first = dir.metadata().unwrap();
    assert!(
        first.mtime() > 1_600_000_000,
        "the stat after a create is the create's own answer: mtime {}",
        first.mtime()
    );
    assert_eq!(
        dir.metadata().unwrap().mtime(),
        978_307_200,
        "the next one asks storage"
    );

    fs::remove_file(m.p("d/x")).unwrap();
    assert!(!cdir.join(&cname).exists());
    backdate();
    assert!(
        dir.metadata().unwrap().mtime() > 1_600_000_000,
        "after an unlink"
    );
    assert_eq!(dir.metadata().unwrap().mtime(), 978_307_200);

    // A mkdir's answer carries the directory too.
    fs::create_dir(m.p("d/sub")).unwrap();
    backdate();
    assert!(
        dir.metadata().unwrap().mtime() > 1_600_000_000,
        "after a mkdir"
    );
    assert_eq!(dir.metadata().unwrap().mtime(), 978_307_200);

    // A change whose answer does not carry the directory (a symlink) leaves it to storage.
    drop(File::create(m.p("d/y")).unwrap());
    std::os::unix::fs::symlink("y", m.p("d/link")).unwrap();
    backdate();
    assert_eq!(
        dir.metadata().unwrap().mtime(),
        978_307_200,
        "after a symlink"
    );
}

/// The operations of the requests a recorded mount sent, in order.
fn requests_seen(log: &FrameLog) -> Vec<Op> {
    log.frames()
        .iter()
        .filter(|f| f.up && f.kind == cloudstore_protocol::FrameType::Request)
        .filter_map(|f| f.op)
        .collect()
}

/// A mount whose frames are recorded, once it follows storage's changes (before that,
/// nothing it knows is kept, and so every answer is asked for).
fn recorded_mount_following(v: &Volume) -> (Mount, FrameLog) {
    let (m, log) = v.mount_recorded();
    support::wait_until("the mount to follow storage's changes", || {
        m.status.following()
    });
    (m, log)
}

/// Of the requests of `op` that went up, how many were sent before the answer to the one
/// before them came back.
fn sent_before_the_last_answer(frames: &[SeenFrame], op: Op) -> (usize, usize) {
    let (mut sent, mut behind) = (0, 0);
    let mut last: Option<u64> = None;
    for (at, f) in frames.iter().enumerate() {
        if !(f.up && f.op == Some(op)) {
            continue;
        }
        sent += 1;
        if let Some(id) = last {
            if !frames[..at].iter().any(|a| !a.up && a.id == id) {
                behind += 1;
            }
        }
        last = Some(f.id);
    }
    (sent, behind)
}

#[test]
fn appends_go_behind_the_write_before_them_even_inside_a_block() {
    let v = Volume::create();
    let (m, log) = recorded_mount_following(&v);
    // As tar writes a file: 10 KiB records, each ending inside a 4 KiB block the next
    // one completes; then as a stream, 1 MiB at a time.
    let records = pattern(7, 10 * 10_240 + 777);
    let stream = pattern(8, 4 << 20);
    for (name, data, chunk) in [("records", &records, 10_240), ("stream", &stream, 1 << 20)] {
        log.clear();
        let mut f = File::create(m.p(name)).unwrap();
        for piece in data.chunks(chunk) {
            f.write_all(piece).unwrap();
        }
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
        drop(f);
        // The relay records frames on its own threads: read them once nothing is on its
        // way (a stat of the file waits for its writes).
        let _ = fs::metadata(m.p(name)).unwrap();
        let frames = log.frames();
        let created = frames
            .iter()
            .position(|f| f.op == Some(Op::Create))
            .expect("the create");
        let frames = &frames[created..];
        let ops: Vec<Op> = frames
            .iter()
            .filter(|f| f.up)
            .filter_map(|f| f.op)
            .collect();
        assert!(
            !ops.contains(&Op::Read),
            "{name}: the block each append completes came from the write before it: {ops:?}"
        );
        let (writes, behind) = sent_before_the_last_answer(frames, Op::Write);
        // Answers come 30 ms late through this relay.
        assert!(
            behind * 2 >= writes,
            "{name}: {behind} of {writes} writes went behind the one before them: {ops:?}"
        );
    }
    m.unmount();
    let fresh = v.mount();
    let g = v.gocryptfs();
    for (name, data) in [("records", &records), ("stream", &stream)] {
        assert!(fs::read(fresh.p(name)).unwrap() == *data, "{name} here");
        assert!(
            fs::read(g.path().join(name)).unwrap() == *data,
            "{name} in gocryptfs"
        );
    }
    drop(g);
    fresh.unmount();
}

#[test]
fn times_and_mode_set_after_a_write_go_behind_it_and_land_in_order() {
    let v = Volume::create();
    let (m, log) = recorded_mount_following(&v);
    fs::create_dir(m.p("x")).unwrap();
    let mtime = |i: u64| std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000 + i * 86_400);
    let mode = |i: u64| if i % 2 == 0 { 0o640 } else { 0o750 };
    log.clear();
    // As `tar x` unpacks a file: create, write, set the times, the owner, then the mode.
    for i in 0..10 {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.p(&format!("x/f{i}")))
            .unwrap();
        f.write_all(&pattern(i, 5_000 + i as usize)).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(mtime(i)))
            .unwrap();
        std::os::unix::fs::fchown(&f, Some(0), Some(0)).unwrap();
        f.set_permissions(fs::Permissions::from_mode(mode(i)))
            .unwrap();
        // What the application sees at once is what it asked for.
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), 5_000 + i, "f{i}");
        assert_eq!(md.modified().unwrap(), mtime(i), "f{i}");
        assert_eq!(md.mode() & 0o7777, mode(i), "f{i}");
    }
    // Each change went to storage before the answer to the write before it came back.
    // (Read once the mount is gone: the relay records frames on its own threads.)
    m.unmount();
    let frames = log.frames();
    let mut behind = 0;
    let mut setattrs = 0;
    for (at, f) in frames.iter().enumerate() {
        if !(f.up && f.op == Some(Op::SetAttr)) {
            continue;
        }
        setattrs += 1;
        let write = frames[..at]
            .iter()
            .rev()
            .find(|w| w.up && w.op == Some(Op::Write))
            .expect("a write before the change");
        let answered_before = frames[..at].iter().any(|a| !a.up && a.id == write.id);
        if !answered_before {
            behind += 1;
        }
    }
    let ops: Vec<Op> = frames
        .iter()
        .filter(|f| f.up)
        .filter_map(|f| f.op)
        .collect();
    assert_eq!(
        setattrs, 20,
        "a time and a mode change per file, the owner kept here: {ops:?}"
    );
    // Answers come 30 ms late through this relay: only a stalled test machine lets a
    // write's answer pass before the change after it is made (then sent the ordinary way).
    assert!(
        behind >= 16,
        "{behind} of 20 changes were sent behind the write"
    );
    // Storage ran each change after its write: the times are not the write's, in a fresh
    // mount and through gocryptfs.
    let fresh = v.mount();
    let g = v.gocryptfs();
    for i in 0..10 {
        for view in [
            fresh.p(&format!("x/f{i}")),
            g.path().join(format!("x/f{i}")),
        ] {
            let md = fs::metadata(&view).unwrap();
            assert_eq!(md.modified().unwrap(), mtime(i), "{}", view.display());
            assert_eq!(md.mode() & 0o7777, mode(i), "{}", view.display());
            assert_eq!(fs::read(&view).unwrap(), pattern(i, 5_000 + i as usize));
        }
    }
    drop(g);
    fresh.unmount();
}

#[test]
fn a_directory_is_made_with_its_iv_in_one_request() {
    let v = Volume::create();
    let (m, log) = recorded_mount_following(&v);
    fs::create_dir(m.p("top")).unwrap();
    log.clear();
    fs::create_dir(m.p("top/sub")).unwrap();
    // The stat of its parent the kernel sends after it is answered from the same answer.
    assert!(fs::metadata(m.p("top")).unwrap().is_dir());
    assert_eq!(requests_seen(&log), [Op::MkdirWith]);
    // A mode without the owner's bits goes with it too: storage writes the IV whatever
    // the mode.
    log.clear();
    fs::DirBuilder::new()
        .mode(0o555)
        .create(m.p("top/locked"))
        .unwrap();
    assert_eq!(requests_seen(&log), [Op::MkdirWith]);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&m.p("top/locked")), 0o555);
    fs::write(m.p("top/locked/by-root"), b"root writes anyway").unwrap();
    fs::write(m.p("top/sub/f"), b"inside").unwrap();
    m.unmount();
    // gocryptfs finds the IVs and decrypts the names made with them.
    let g = v.gocryptfs();
    assert_eq!(fs::read(g.path().join("top/sub/f")).unwrap(), b"inside");
    assert_eq!(listing(&g.path().join("top")), ["locked", "sub"]);
    assert_eq!(
        fs::read(g.path().join("top/locked/by-root")).unwrap(),
        b"root writes anyway"
    );
    assert_eq!(mode(&v.mount().p("top/locked")), 0o555);
}

#[test]
fn a_small_file_looked_up_is_opened_and_read_without_another_round_trip() {
    let v = Volume::create();
    let m = v.mount();
    fs::write(m.p("small.txt"), b"small content").unwrap();
    fs::write(m.p("changes.txt"), b"before").unwrap();
    let big = pattern(3, 64 * 1024);
    fs::write(m.p("big.bin"), &big).unwrap();
    let (other, log) = recorded_mount_following(&v);
    let asked = requests_seen;
    // The root directory's IV, dropped when pushes began to be followed, asked again.
    assert!(fs::metadata(other.p("absent")).is_err());
    log.clear();
    assert_eq!(fs::read(other.p("small.txt")).unwrap(), b"small content");
    assert_eq!(asked(&log), [Op::Stat], "the lookup alone");
    // Read again: the content went with the first read; the handle is opened now.
    log.clear();
    let f = File::open(other.p("small.txt")).unwrap();
    let mut back = vec![0u8; 5];
    f.read_exact_at(&mut back, 6).unwrap();
    assert_eq!(back, b"conte");
    assert!(asked(&log).contains(&Op::Open), "{:?}", asked(&log));
    drop(f);
    log.clear();
    assert!(fs::read(other.p("big.bin")).unwrap() == big);
    assert!(asked(&log).contains(&Op::Open), "a larger file is opened");
    // Content from lookups is held for the newest few hundred files only: a `find` or an
    // `ls` of many files holds no more than that.
    fs::create_dir(m.p("many")).unwrap();
    for i in 0..300 {
        fs::write(m.p(&format!("many/{i}")), format!("file {i}")).unwrap();
    }
    support::wait_until("the files to show in the other mount", || {
        fs::metadata(other.p("many/299")).is_ok()
    });
    for i in 0..299 {
        fs::metadata(other.p(&format!("many/{i}"))).unwrap();
    }
    log.clear();
    assert_eq!(fs::read(other.p("many/298")).unwrap(), b"file 298");
    assert!(!asked(&log).contains(&Op::Open), "{:?}", asked(&log));
    assert_eq!(fs::read(other.p("many/0")).unwrap(), b"file 0");
    assert!(asked(&log).contains(&Op::Open), "the oldest gave way");
    // Changed elsewhere between the lookup and the open: the change's push drops the content
    // the lookup brought, and the open reads the new one.
    assert_eq!(fs::metadata(other.p("changes.txt")).unwrap().len(), 6);
    fs::write(m.p("changes.txt"), b"after, and longer").unwrap();
    support::wait_until("the change to show in the other mount", || {
        fs::read(other.p("changes.txt")).unwrap() == b"after, and longer"
    });
    other.unmount();
    m.unmount();
}

#[test]
fn files_opened_in_listing_order_are_read_ahead() {
    let v = Volume::create();
    let m = v.mount();
    fs::create_dir(m.p("tree")).unwrap();
    // Small files, every tenth too large to come with a `Stat`.
    let content = |i: u64| {
        pattern(
            i,
            if i % 10 == 9 {
                40_000
            } else {
                (i * 157 % 16_000) as usize
            },
        )
    };
    for i in 0..100 {
        fs::write(m.p(&format!("tree/f{i:03}")), content(i)).unwrap();
    }
    let (other, log) = recorded_mount_following(&v);
    // As `tar c` goes: all names first, then each file in that order. The listing gives the
    // kernel each entry's attributes, so no lookup brings content.
    let names: Vec<String> = fs::read_dir(other.p("tree"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 100);
    log.clear();
    for n in &names {
        let i: u64 = n[1..].parse().unwrap();
        // As tar reads a file: open, read it all, then check its attributes.
        let mut f = File::open(other.p(&format!("tree/{n}"))).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(got == content(i), "{n}");
        assert_eq!(f.metadata().unwrap().len(), got.len() as u64, "{n}");
    }
    let seen = requests_seen(&log);
    let count = |op: Op| seen.iter().filter(|&&o| o == op).count();
    assert_eq!(
        count(Op::Read),
        0,
        "every read served by what came ahead or with the open"
    );
    // One `Stat` per small file read ahead; the attributes checked after each read are
    // answered with what the read-ahead or the open brought (188 `Stat` without).
    assert!(count(Op::Stat) <= 90, "{} stats", count(Op::Stat));
    let opens = count(Op::Open);
    // The ten large files, and each open that had to ask fetched the small ones after it.
    assert!(
        (10..=20).contains(&opens),
        "{opens} opens for 90 small and 10 large files"
    );
    other.unmount();
    // In a fresh mount, read ahead and then changed elsewhere before the open: the change's
    // push drops what was fetched, and the open reads the new content. Written here after
    // being read ahead: read back as written.
    let fresh = v.mount();
    support::wait_until("the fresh mount to follow storage's changes", || {
        fresh.status.following()
    });
    let names: Vec<String> = fs::read_dir(fresh.p("tree"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with('9'))
        .collect();
    let at = |n: &String| format!("tree/{n}");
    let _ = fs::read(fresh.p(&at(&names[0]))).unwrap();
    fs::write(m.p(&at(&names[1])), b"changed elsewhere").unwrap();
    support::wait_until("the change to show in the fresh mount", || {
        fs::read(fresh.p(&at(&names[1]))).unwrap() == b"changed elsewhere"
    });
    fs::write(fresh.p(&at(&names[2])), b"written here").unwrap();
    assert_eq!(fs::read(fresh.p(&at(&names[2]))).unwrap(), b"written here");
    fresh.unmount();
    m.unmount();
}

#[test]
fn a_small_file_is_read_with_its_open() {
    let v = Volume::create();
    let m = v.mount();
    let sizes = [
        0,
        1,
        4095,
        4096,
        4097,
        128 * 1024 - 1,
        128 * 1024,
        128 * 1024 + 1,
        300_000,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        fs::write(m.p(&format!("s{i}")), pattern(i as u64, n)).unwrap();
    }
    // Another mount: nothing of these files in its kernel's cache or its own.
    let other = v.mount();
    support::wait_until("the other mount to follow storage's changes", || {
        other.status.following()
    });
    for (i, &n) in sizes.iter().enumerate() {
        let want = pattern(i as u64, n);
        assert!(fs::read(other.p(&format!("s{i}"))).unwrap() == want, "s{i}");
        if n > 10 {
            let mut mid = vec![0u8; 10];
            File::open(other.p(&format!("s{i}")))
                .unwrap()
                .read_exact_at(&mut mid, n as u64 / 2)
                .unwrap();
            assert_eq!(mid, want[n / 2..n / 2 + 10], "s{i} from its middle");
        }
    }
    // The first read is served by what came with the open: damage done to the ciphertext
    // behind storage's back after the open is not met by it; a later open meets it.
    let third = v.mount();
    support::wait_until("the third mount to follow storage's changes", || {
        third.status.following()
    });
    let f = File::open(third.p("s2")).unwrap();
    let cipher = v.tree().join(root_entry(&v, "s2"));
    OpenOptions::new()
        .write(true)
        .open(&cipher)
        .unwrap()
        .write_all_at(b"\xff\xff\xff\xff", 18 + 16 + 100)
        .unwrap();
    let mut got = Vec::new();
    (&f).read_to_end(&mut got).unwrap();
    assert!(got == pattern(2, 4095), "the content the open brought");
    drop(f);
    let fourth = v.mount();
    let e = fs::read(fourth.p("s2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
fn a_directory_made_here_answers_for_missing_names_until_a_change_comes_from_elsewhere() {
    let v = Volume::create();
    let m = v.mount();
    support::wait_until("the mount to follow storage's changes", || {
        m.status.following()
    });
    fs::create_dir(m.p("made-here")).unwrap();
    fs::write(m.p("made-here/mine.txt"), b"mine").unwrap();
    let cc = v
        .format_volume()
        .content_cipher()
        .unwrap()
        .encrypt_file(b"ghost")
        .unwrap();
    // Files put straight into the ciphertext tree, behind storage's back: storage pushes
    // nothing about them, so the mount only sees them where it asks storage.
    let dir = root_entry(&v, "made-here");
    let ghost = format!("{dir}/{}", entry_in(&v, &dir, "ghost.txt"));
    let owner = fs::metadata(v.tree()).unwrap();
    for p in [
        v.tree().join(&ghost),
        v.tree().join(root_entry(&v, "ghost.txt")),
    ] {
        fs::write(&p, &cc).unwrap();
        std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    assert_eq!(
        fs::read(m.p("ghost.txt")).unwrap(),
        b"ghost",
        "the root was not made by this mount: its lookups reach storage"
    );
    let e = fs::metadata(m.p("made-here/ghost.txt")).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::NotFound,
        "a name this mount never made in its own directory is answered without storage"
    );
    assert_eq!(fs::read(m.p("made-here/mine.txt")).unwrap(), b"mine");

    // A change from elsewhere in that directory (a download) is pushed: from then on its
    // names are asked about again, the unannounced one included.
    let sync = sync_client(&v.storage);
    let downloaded = format!("{dir}/{}", entry_in(&v, &dir, "downloaded.txt"));
    put(&sync, &downloaded, &cc, 0o600);
    support::wait_until("the downloaded file to show", || {
        m.p("made-here/downloaded.txt").exists()
    });
    assert_eq!(fs::read(m.p("made-here/ghost.txt")).unwrap(), b"ghost");

    // Deleted and made again here, the directory is known again, and a removal made here
    // keeps it right.
    fs::remove_dir_all(m.p("made-here")).unwrap();
    fs::create_dir(m.p("made-here")).unwrap();
    fs::write(m.p("made-here/a"), b"a").unwrap();
    fs::rename(m.p("made-here/a"), m.p("made-here/b")).unwrap();
    assert!(!m.p("made-here/a").exists());
    assert_eq!(fs::read(m.p("made-here/b")).unwrap(), b"a");
    fs::remove_file(m.p("made-here/b")).unwrap();
    assert!(!m.p("made-here/b").exists());
}

#[test]
fn hostile_ciphertext_is_refused_with_eio_never_garbage() {
    let v = Volume::create();
    let m = v.mount();
    symlink_in(&m, "target-of-link", "link");
    fs::create_dir(m.p("dir")).unwrap();
    fs::write(m.p("dir/inner"), b"inner").unwrap();
    fs::write(m.p("cut"), vec![5u8; 10_000]).unwrap();
    let long_a = "a".repeat(200);
    let long_b = "b".repeat(200);
    fs::write(m.p(&long_a), b"A").unwrap();
    fs::write(m.p(&long_b), b"B").unwrap();
    m.unmount();
    let tree = v.tree();
    // A symlink target replaced by something that does not decrypt.
    let link = tree.join(root_entry(&v, "link"));
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &link).unwrap();
    // A directory that lost its IV.
    fs::remove_file(tree.join(root_entry(&v, "dir")).join("gocryptfs.diriv")).unwrap();
    // A file cut inside a block (no size gocryptfs writes).
    let cut = OpenOptions::new()
        .write(true)
        .open(tree.join(root_entry(&v, "cut")))
        .unwrap();
    cut.set_len(18 + 4128 + 20).unwrap();
    drop(cut);
    // Two long names' .name files swapped: the hashes no longer match.
    let (ea, eb) = (root_entry(&v, &long_a), root_entry(&v, &long_b));
    let (na, nb) = (
        tree.join(format!("{ea}.name")),
        tree.join(format!("{eb}.name")),
    );
    let (ca, cb) = (fs::read(&na).unwrap(), fs::read(&nb).unwrap());
    fs::write(&na, cb).unwrap();
    fs::write(&nb, ca).unwrap();

    let m = v.mount();
    let eio = |r: std::io::Result<Vec<u8>>| r.unwrap_err().raw_os_error();
    assert_eq!(
        fs::read_link(m.p("link")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(
        fs::read_dir(m.p("dir"))
            .map(|_| ())
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(eio(fs::read(m.p("cut"))), Some(libc::EIO));
    // The swapped long names are left out of the listing, everything else is listed.
    let mut names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cut", "dir", "link"]);
    let log = log_text();
    for needle in [
        "readlink /link: the symlink target is corrupt",
        "opendir /dir: the directory IV",
        "read /cut: ",
    ] {
        assert!(log.contains(needle), "no {needle:?} in the log:\n{log}");
    }
}

fn symlink_in(m: &Mount, target: &str, name: &str) {
    std::os::unix::fs::symlink(target, m.p(name)).unwrap();
}

#[test]
fn a_directory_the_mount_does_not_know_is_listed_in_one_round_trip() {
    let v = Volume::create();
    {
        let m = v.mount();
        fs::create_dir_all(m.path().join("a/b")).unwrap();
        for i in 0..5 {
            fs::write(m.path().join(format!("a/b/f{i}")), b"x").unwrap();
        }
        m.unmount();
    }
    // A new mount knows no directory below the root: listing a/b needs its IV and its
    // entries, which do not depend on each other.
    let (m, log) = v.mount_recorded();
    fs::metadata(m.path().join("a/b")).unwrap();
    log.clear();
    let mut names: Vec<_> = fs::read_dir(m.path().join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["f0", "f1", "f2", "f3", "f4"]);
    let frames = log.frames();
    let sent = |op: Op| {
        frames
            .iter()
            .position(|f| f.up && f.op == Some(op))
            .unwrap_or_else(|| panic!("no {op} request among {frames:?}"))
    };
    let (listing, iv) = (sent(Op::ReadDir), sent(Op::Read));
    let first_answer = frames
        .iter()
        .position(|f| !f.up && [frames[listing].id, frames[iv].id].contains(&f.id))
        .expect("answers");
    assert!(
        listing < first_answer && iv < first_answer,
        "the listing and the IV were asked one after the other: {frames:?}"
    );
}

/// The ciphertext entries of `dir` (a path below the tree), `gocryptfs.diriv` left out.
fn ciphertext_entries(v: &Volume, dir: &str) -> Vec<String> {
    let mut names = listing(&v.tree().join(dir));
    names.retain(|n| n != "gocryptfs.diriv");
    names
}

#[test]
fn unlinks_overlap_and_what_depends_on_them_waits_for_them() {
    let v = Volume::create();
    let (m, log) = v.mount_recorded();
    fs::create_dir(m.p("d")).unwrap();
    const FILES: usize = 8;
    for i in 0..FILES {
        fs::write(m.p(&format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    log.clear();
    // Every answer is held back 30 ms: unlinks that waited for theirs would take that long
    // each, one after the other.
    for i in 0..FILES {
        fs::remove_file(m.p(&format!("d/f{i}"))).unwrap();
    }
    // Listed at once: the listing waits for the unlinks, so none of them shows.
    let listed = listing(&m.p("d"));
    assert!(listed.is_empty(), "listed after the unlinks: {listed:?}");
    let d = root_entry(&v, "d");
    assert!(ciphertext_entries(&v, &d).is_empty());
    let frames = log.frames();
    let unlinks: Vec<u64> = frames
        .iter()
        .filter(|f| f.up && f.op == Some(Op::Unlink))
        .map(|f| f.id)
        .collect();
    assert_eq!(unlinks.len(), FILES, "{frames:?}");
    let first_answer = frames
        .iter()
        .position(|f| !f.up && unlinks.contains(&f.id))
        .expect("the unlinks' answers");
    let sent_before = frames[..first_answer]
        .iter()
        .filter(|f| f.up && f.op == Some(Op::Unlink))
        .count();
    assert!(
        sent_before > 1,
        "each unlink waited for the one before: {frames:?}"
    );
    let last_answer = frames
        .iter()
        .rposition(|f| !f.up && unlinks.contains(&f.id))
        .unwrap();
    let listing = frames
        .iter()
        .position(|f| f.up && f.op == Some(Op::ReadDir))
        .expect("the listing");
    assert!(
        listing > last_answer,
        "the listing went out before the unlinks were answered: {frames:?}"
    );
    // A name made again right after its unlink: the create waits for the unlink's answer
    // (storage could otherwise serve the create first, and the unlink would remove the new
    // file).
    fs::write(m.p("d/again"), b"old").unwrap();
    log.clear();
    fs::remove_file(m.p("d/again")).unwrap();
    let err = fs::metadata(m.p("d/again")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    fs::write(m.p("d/again"), b"new").unwrap();
    let frames = log.frames();
    let unlink = frames
        .iter()
        .find(|f| f.up && f.op == Some(Op::Unlink))
        .expect("the unlink");
    let answered = frames
        .iter()
        .position(|f| !f.up && f.id == unlink.id)
        .expect("its answer");
    let create = frames
        .iter()
        .position(|f| f.up && f.op == Some(Op::Create))
        .expect("the create");
    assert!(
        create > answered,
        "the create went out before the unlink was answered: {frames:?}"
    );
    assert_eq!(fs::read(m.p("d/again")).unwrap(), b"new");
    assert_eq!(ciphertext_entries(&v, &d).len(), 1);
}

#[test]
fn a_listing_served_before_a_write_in_flight_does_not_shrink_the_file() {
    let v = Volume::create();
    // Storage serves the listing before the writes, as it may: they run concurrently.
    let m = v.mount_holding(Op::Write, Duration::from_millis(300));
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/old"), b"written before").unwrap();
    fs::write(m.p("d/new"), b"written just now").unwrap();
    // The listing carries every entry's attributes (readdirplus), which the kernel takes.
    assert_eq!(listing(&m.p("d")), ["new", "old"]);
    assert_eq!(fs::metadata(m.p("d/new")).unwrap().len(), 16);
    assert_eq!(fs::read(m.p("d/new")).unwrap(), b"written just now");
    assert_eq!(fs::read(m.p("d/old")).unwrap(), b"written before");
    // A file written while its directory is open, listed after the write was answered.
    let mut dir = fs::read_dir(m.p("d")).unwrap();
    fs::write(m.p("d/old"), b"written again, longer").unwrap();
    assert_eq!(dir.by_ref().count(), 2);
    drop(dir);
    assert_eq!(fs::read(m.p("d/old")).unwrap(), b"written again, longer");
    m.unmount();
}

#[test]
fn a_name_unlinked_and_made_again_at_once_is_always_the_new_file() {
    let v = Volume::create();
    let m = v.mount();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/keep"), b"kept").unwrap();
    for i in 0..200 {
        let name = format!("d/n{}", i % 7);
        let _ = fs::remove_file(m.p(&name));
        fs::write(m.p(&name), format!("round {i}")).unwrap();
        assert_eq!(
            fs::read_to_string(m.p(&name)).unwrap(),
            format!("round {i}")
        );
        fs::remove_file(m.p(&name)).unwrap();
        // Looked up at once: the lookup waits for the unlink of that name.
        let err = fs::metadata(m.p(&name)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "round {i}");
        fs::write(m.p(&name), format!("again {i}")).unwrap();
    }
    assert_eq!(
        listing(&m.p("d")),
        ["keep", "n0", "n1", "n2", "n3", "n4", "n5", "n6"]
    );
    for (k, i) in (193..200).enumerate() {
        let want = format!("again {i}");
        assert_eq!(
            fs::read_to_string(m.p(&format!("d/n{}", i % 7))).unwrap(),
            want,
            "{k}"
        );
    }
    m.unmount();
    // Storage holds the same, as gocryptfs reads it.
    let g = v.gocryptfs();
    assert_eq!(fs::read_dir(g.path().join("d")).unwrap().count(), 8);
    assert_eq!(fs::read(g.path().join("d/keep")).unwrap(), b"kept");
}

#[test]
fn an_unlink_storage_refuses_after_it_was_answered_leaves_the_file_and_says_so() {
    let v = Volume::create();
    let m = v.mount();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/kept.txt"), b"still here").unwrap();
    fs::write(m.p("d/other.txt"), b"other").unwrap();
    // Storage may not remove entries of the directory any more.
    let cdir = v.tree().join(root_entry(&v, "d"));
    fs::set_permissions(&cdir, fs::Permissions::from_mode(0o555)).unwrap();
    fs::remove_file(m.p("d/kept.txt")).expect("answered before storage refused it");
    assert_eq!(
        listing(&m.p("d")),
        ["kept.txt", "other.txt"],
        "the file is listed again"
    );
    assert_eq!(fs::read(m.p("d/kept.txt")).unwrap(), b"still here");
    let log = log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("unlink /d/kept.txt: failed after it was answered")
            && l.contains("the file is still there")),
        "the failure is logged with the plaintext path:\n{log}"
    );
    let last = m.status.last_error().expect("the failure in the status");
    assert!(last.contains("unlink /d/kept.txt"), "{last}");
    assert_eq!(m.status.pending_writes(), 0);
    fs::set_permissions(&cdir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(m.p("d/kept.txt")).unwrap();
    assert_eq!(ciphertext_entries(&v, &root_entry(&v, "d")).len(), 1);
}

#[test]
fn unlinks_in_flight_when_storage_dies_are_sent_again_and_a_rename_waits_for_them() {
    let mut v = Volume::create();
    let m = v.mount_over_pipes();
    fs::create_dir(m.p("d")).unwrap();
    for i in 0..6 {
        fs::write(m.p(&format!("d/f{i}")), b"x").unwrap();
    }
    fs::write(m.p("d/stays"), b"stays").unwrap();
    // Stopped, storage reads nothing: the unlinks are answered here and wait there.
    let pid = nix::unistd::Pid::from_raw(v.storage.pid());
    support::stop_process(pid.as_raw());
    for i in 0..6 {
        fs::remove_file(m.p(&format!("d/f{i}"))).unwrap();
    }
    assert!(
        m.status.pending_writes() > 0,
        "the unlinks count as pending"
    );
    let renamed = {
        let (from, to) = (m.p("d"), m.p("e"));
        std::thread::spawn(move || fs::rename(from, to))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !renamed.is_finished(),
        "the rename did not wait for the unlinks"
    );
    // Killed without having read them, and back: they go again on the new connection.
    v.storage.kill();
    v.storage.spawn();
    renamed.join().unwrap().unwrap();
    assert_eq!(listing(&m.p("e")), ["stays"]);
    assert_eq!(m.status.pending_writes(), 0);
    assert_eq!(ciphertext_entries(&v, &root_entry(&v, "e")).len(), 1);
    assert!(!v.tree().join(root_entry(&v, "d")).exists());
}

#[test]
fn a_file_keeps_the_mode_set_on_it_and_storage_still_reads_and_writes_it() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Command;
    let v = Volume::create();
    let m = v.mount();
    let mode = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    // Made read-only and written through the descriptor its creation returned, as git
    // writes its objects and `cp -p` a read-only file.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(m.p("ro"))
        .unwrap();
    f.write_all(&pattern(1, 70_000)).unwrap();
    drop(f);
    fs::write(m.p("locked"), b"nobody but root reads this").unwrap();
    fs::set_permissions(m.p("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(m.p("d")).unwrap();
    fs::set_permissions(m.p("d"), fs::Permissions::from_mode(0o555)).unwrap();
    m.unmount();
    // On disk, for gocryptfs and every other tool, the modes are the ones set.
    assert_eq!(mode(&v.tree().join(root_entry(&v, "ro"))), 0o444);
    assert_eq!(mode(&v.tree().join(root_entry(&v, "locked"))), 0o000);
    // A directory keeps owner rwx on disk, so that storage can always walk and change it.
    assert_eq!(mode(&v.tree().join(root_entry(&v, "d"))), 0o1755);
    // A fresh mount (nothing remembered here) shows the modes set.
    let fresh = v.mount();
    assert_eq!(mode(&fresh.p("ro")), 0o444);
    assert_eq!(mode(&fresh.p("locked")), 0o000);
    assert_eq!(mode(&fresh.p("d")), 0o555);
    // The kernel checks them: the owner without the capability that overrides modes may
    // neither write the read-only file nor read the locked one.
    let owner_without_override = |script: &str| {
        Command::new("setpriv")
            .args([
                "--bounding-set",
                "-dac_override,-dac_read_search,-fowner",
                "--",
            ])
            .args(["sh", "-c", script])
            .current_dir(fresh.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert_eq!(
        fs::metadata(fresh.p("ro")).unwrap().uid(),
        0,
        "files are root's here"
    );
    assert!(
        owner_without_override("cat ro > /dev/null"),
        "a read-only file is readable"
    );
    assert!(
        !owner_without_override("echo x >> ro"),
        "a read-only file was written"
    );
    assert!(!owner_without_override("cat locked"), "a 000 file was read");
    assert!(
        !owner_without_override("touch d/new"),
        "a read-only directory was written"
    );
    assert!(
        owner_without_override("ls d"),
        "a read-only directory is listed"
    );
    // Storage runs without that capability too, yet root here reads and writes anything.
    assert_eq!(
        fs::read(fresh.p("locked")).unwrap(),
        b"nobody but root reads this"
    );
    let mut w = OpenOptions::new().append(true).open(fresh.p("ro")).unwrap();
    w.write_all(b"root's line").unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(fs::read(fresh.p("ro")).unwrap().len(), 70_000 + 11);
    assert_eq!(
        mode(&fresh.p("ro")),
        0o444,
        "the write lifted the mode for good"
    );
    fs::write(fresh.p("d/root's"), b"root writes anywhere").unwrap();
    assert_eq!(mode(&fresh.p("d")), 0o555);
    fs::set_permissions(fresh.p("locked"), fs::Permissions::from_mode(0o640)).unwrap();
    fresh.unmount();
    let g = v.gocryptfs();
    assert_eq!(mode(&g.path().join("locked")), 0o640);
    assert_eq!(mode(&g.path().join("ro")), 0o444);
    let mut want = pattern(1, 70_000);
    want.extend_from_slice(b"root's line");
    assert_eq!(fs::read(g.path().join("ro")).unwrap(), want);
}
