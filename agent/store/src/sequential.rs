//! Help for a peer that reads or writes a file front to back: reads of a file's bytes with
//! the disk's reads started ahead of the reader, and the disk's writes started behind a
//! writer.
//!
//! Reading: the kernel reads ahead of a sequential reader by the disk's `read_ahead_kb`
//! (128 KiB by default), and a consumer's FUSE mount asks for 128 KiB at a time (the kernel
//! caps a FUSE mount's readahead at that too), about one protocol read of ciphertext. With
//! one or two such reads in flight, each read of a file not in the page cache waited for
//! the disk while the rest of the round trip (relay, consumer, decryption) waited for it.
//! Asking the kernel for the next [`AHEAD`] bytes once a handle is read sequentially lets
//! the disk work while the previous answer travels.
//!
//! Writing: the kernel leaves written pages in memory until they are 30 s old or a tenth of
//! memory is dirty, so a file written whole and then fsynced (a save, `dd conv=fsync`, the
//! benchmark's streaming write) reached the disk only at the fsync, all of it then, after the
//! whole transfer. Starting the disk's writes every [`WRITE_OUT_EVERY`] bytes of a
//! sequential writer overlaps the two; the fsync then waits for the last few megabytes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How far ahead of a sequential reader the disk is asked to read: 16 of a consumer's
/// 128 KiB reads, enough to cover a round trip's worth of disk latency at a disk's
/// sequential rate, little enough that a reader that stops early wastes a few
/// milliseconds of disk time. The pages are page cache, not the agent's memory.
pub const AHEAD: u64 = 2 << 20;

/// Reads up to `len` bytes at `offset`, short only at the end of the file.
pub fn read_upto(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Follows the reads of one open file and starts the disk's reads ahead of them while they
/// go front to back. A read that does not start where the previous one ended is taken for
/// random access and starts nothing, so random reads (and the header read of a file opened
/// and closed) cost no extra disk time.
#[derive(Debug)]
pub struct ReadAhead {
    /// Where the next read starts if the reader is sequential (`u64::MAX` before the first).
    next: AtomicU64,
    /// The end of what the disk was last asked to read ahead.
    asked_until: AtomicU64,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead {
            next: AtomicU64::new(u64::MAX),
            asked_until: AtomicU64::new(0),
        }
    }
}

impl ReadAhead {
    /// Reads up to `len` bytes at `offset` (short only at the end of the file), then starts
    /// the reads ahead if this read continued the previous one.
    pub fn read(&self, file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let data = read_upto(file, offset, len)?;
        if let Some((from, count)) = self.after_read(offset, len, data.len()) {
            // A hint: the kernel may drop it (memory pressure), and the read that follows is
            // correct either way, so its failure is not the reader's.
            let _ = advise_willneed(file, from, count);
        }
        Ok(data)
    }

    /// The range to read ahead after `got` of `asked` bytes were read at `offset`, if any:
    /// only for a read that continued the previous one and did not reach the end of the
    /// file, and only once less than half of [`AHEAD`] is left ahead of it.
    pub fn after_read(&self, offset: u64, asked: usize, got: usize) -> Option<(u64, u64)> {
        let end = offset + got as u64;
        let sequential = self.next.swap(end, Ordering::Relaxed) == offset;
        if !sequential {
            self.asked_until.store(0, Ordering::Relaxed);
            return None;
        }
        let until = self.asked_until.load(Ordering::Relaxed);
        if got < asked || until >= end + AHEAD / 2 {
            return None;
        }
        let from = until.max(end);
        self.asked_until.store(end + AHEAD, Ordering::Relaxed);
        Some((from, end + AHEAD - from))
    }
}

/// How much a writer going front to back writes before the disk is asked to start writing
/// it: large enough that the disk gets long runs, small enough that the fsync at the end
/// waits for little.
pub const WRITE_OUT_EVERY: u64 = 8 << 20;

/// A write landing within this of the furthest end written so far continues the run: a
/// consumer sends a 1 MiB write as two pieces at once, which storage's workers may take in
/// either order.
const WRITE_SLACK: u64 = 2 << 20;

/// Follows the writes of one open file and starts the disk's writes behind them while they
/// go front to back. Writes here and there (random writes, a header rewritten) start
/// nothing.
#[derive(Debug)]
pub struct WriteOut {
    /// The furthest end of the current run of writes (`u64::MAX` before the first).
    run_end: AtomicU64,
    /// Where the part of the run not yet handed to the disk starts.
    not_started: AtomicU64,
}

impl Default for WriteOut {
    fn default() -> Self {
        WriteOut {
            run_end: AtomicU64::new(u64::MAX),
            not_started: AtomicU64::new(0),
        }
    }
}

impl WriteOut {
    /// Called after `len` bytes were written at `offset` through `file`.
    pub fn after_write(&self, file: &File, offset: u64, len: usize) {
        if let Some((from, count)) = self.range_after(offset, len) {
            // A hint like the read-ahead one: the fsync that follows is what makes the data
            // durable, whether or not this started it.
            let _ = start_writeback(file, from, count);
        }
    }

    /// The range whose writing to disk should start after `len` bytes were written at
    /// `offset`, if any.
    pub fn range_after(&self, offset: u64, len: usize) -> Option<(u64, u64)> {
        let end = offset + len as u64;
        let run_end = self.run_end.load(Ordering::Relaxed);
        let not_started = self.not_started.load(Ordering::Relaxed);
        let continues = run_end != u64::MAX
            && offset <= run_end.saturating_add(WRITE_SLACK)
            && end.saturating_add(WRITE_SLACK) >= not_started;
        if !continues {
            self.run_end.store(end, Ordering::Relaxed);
            self.not_started.store(offset, Ordering::Relaxed);
            return None;
        }
        let run_end = run_end.max(end);
        self.run_end.store(run_end, Ordering::Relaxed);
        if run_end - not_started.min(run_end) < WRITE_OUT_EVERY {
            return None;
        }
        self.not_started.store(run_end, Ordering::Relaxed);
        Some((not_started, run_end - not_started))
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writing the range's dirty pages to disk
/// without waiting for them (it may wait for room in the disk's queue).
fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow; it touches no memory of ours.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `posix_fadvise(POSIX_FADV_WILLNEED)`: the kernel starts reading the range into the page
/// cache and returns without waiting for it.
fn advise_willneed(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow; it touches no memory of ours.
    let r = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    // posix_fadvise returns the error number instead of setting errno.
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: usize = 128 << 10;

    #[test]
    fn a_sequential_reader_gets_the_disk_ahead_of_it_and_a_random_one_does_not() {
        let ra = ReadAhead::default();
        // The first read of a handle may be its only one (a header, a thumbnail).
        assert_eq!(ra.after_read(0, READ, READ), None);
        let r = READ as u64;
        assert_eq!(ra.after_read(r, READ, READ), Some((2 * r, AHEAD)));
        // Nothing more until less than half of it is left ahead.
        let mut off = 2 * r;
        while off + r + AHEAD / 2 <= 2 * r + AHEAD {
            assert_eq!(ra.after_read(off, READ, READ), None, "at {off}");
            off += r;
        }
        // Then it asks for what follows what it asked for already, never again for it.
        let end = off + r;
        assert_eq!(
            ra.after_read(off, READ, READ),
            Some((2 * r + AHEAD, end + AHEAD - (2 * r + AHEAD)))
        );
        // A jump is random access: nothing, and the next read continuing it starts over.
        assert_eq!(ra.after_read(100 * r, READ, READ), None);
        assert_eq!(
            ra.after_read(101 * r, READ, READ),
            Some((102 * r, AHEAD)),
            "a reader going on from where it jumped to is read ahead again"
        );
        assert_eq!(ra.after_read(7 * r, READ, READ), None);
        assert_eq!(ra.after_read(3 * r, READ, READ), None);
        // The end of the file: nothing to read ahead.
        assert_eq!(ra.after_read(4 * r, READ, 10), None);
    }

    #[test]
    fn a_sequential_writer_gets_the_disk_behind_it_and_a_random_one_does_not() {
        const MIB: u64 = 1 << 20;
        let w = WriteOut::default();
        let mut started = Vec::new();
        // 1 MiB writes sent as a 1 MiB and an 8 KiB piece, taken in either order.
        let mut off = 0;
        for i in 0..20 {
            let (big, small) = ((off, MIB as usize), (off + MIB, 8 << 10));
            let order = if i % 3 == 1 {
                [small, big]
            } else {
                [big, small]
            };
            for (o, l) in order {
                started.extend(w.range_after(o, l));
            }
            off += MIB + (8 << 10);
        }
        // Every byte up to the last 8 MiB boundary crossed handed to the disk once, in order.
        assert_eq!(started.len(), 2, "{started:?}");
        assert_eq!(started[0].0, 0);
        assert_eq!(started[1].0, started[0].0 + started[0].1);
        assert!(started.iter().all(|(_, n)| *n >= WRITE_OUT_EVERY));
        // Random 4 KiB writes far apart: nothing.
        let w = WriteOut::default();
        for i in 0..10_000u64 {
            let o = (i * 7_919 % 1_000) * 3 * MIB;
            assert_eq!(w.range_after(o, 4096), None, "write {i} at {o}");
        }
    }

    #[test]
    fn reads_are_whole_or_short_only_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(read_upto(&f, 2, 4).unwrap(), b"2345");
        assert_eq!(read_upto(&f, 8, 4).unwrap(), b"89");
        assert_eq!(read_upto(&f, 20, 4).unwrap(), b"");
        let ra = ReadAhead::default();
        assert_eq!(ra.read(&f, 0, 4).unwrap(), b"0123");
        assert_eq!(ra.read(&f, 4, 4).unwrap(), b"4567");
    }
}
