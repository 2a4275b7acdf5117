//! Reading a file's ciphertext ahead of a handle read front to back.
//!
//! The kernel reads ahead of a FUSE mount's reader by 128 KiB (a FUSE mount's readahead
//! window; only the system's administrator can widen it), so a streaming reader has one or
//! two 128 KiB reads in flight, and each waited for a whole round trip to storage: the
//! relay, storage's read, the relay back. A handle whose large reads follow each other
//! has the next [`DEPTH`] ranges asked of storage before the kernel asks for them; their
//! answers wait here, and the kernel's read finds its bytes arrived or arriving.
//!
//! What was asked ahead is only used while the file's content is what it was when it was
//! asked: every change of it made here (a write, a truncation) and every change pushed from
//! elsewhere moves the file's content count (`FileCache::content_count`), and answers asked
//! under another count are dropped unread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many ranges are asked ahead of one handle's reader: with the kernel's two in flight,
/// enough that storage always has the next reads queued while the consumer decrypts.
pub(crate) const DEPTH: usize = 4;

/// The smallest read that reads ahead: the kernel's readahead and streaming readers ask
/// for 128 KiB or more; small reads (random access, a small file's content) never do.
pub(crate) const MIN_READ: usize = 64 << 10;

/// The most ciphertext asked ahead across a mount, answers waiting included: what reading
/// ahead may add to the agent's memory however many files are read at once.
pub(crate) const BUDGET: usize = 2 << 20;

/// One range asked ahead: its offset and length in ciphertext, and the call bringing it.
struct Asked<C> {
    offset: u64,
    len: usize,
    call: C,
    _share: BudgetShare,
}

/// A range's share of [`BUDGET`] (of the bytes asked ahead across the mount, counted in
/// `asked`), given back when the range is taken or dropped.
struct BudgetShare {
    asked: Arc<AtomicUsize>,
    len: usize,
}

impl BudgetShare {
    fn take(asked: &Arc<AtomicUsize>, len: usize) -> Option<BudgetShare> {
        asked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + len <= BUDGET).then_some(held + len)
            })
            .ok()
            .map(|_| BudgetShare {
                asked: asked.clone(),
                len,
            })
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.asked.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// The ranges asked ahead of one handle's reader. `C` is the pending call that brings a
/// range (a protocol call; a plain value in tests).
pub(crate) struct Ahead<C> {
    asked: VecDeque<Asked<C>>,
    /// The end of the reader's last large read: a read starting near it continues the
    /// stream (the kernel's reads may be served, and so arrive here, out of order).
    last_end: u64,
    /// The end of the furthest range asked.
    asked_until: u64,
    /// What the ranges were asked under: the file's content count and the connection.
    asked_under: (u64, u64),
}

impl<C> Default for Ahead<C> {
    fn default() -> Self {
        Ahead {
            asked: VecDeque::new(),
            last_end: 0,
            asked_until: 0,
            asked_under: (0, 0),
        }
    }
}

impl<C> Ahead<C> {
    /// For a read of `len` bytes of ciphertext at `offset`, of a file `clen` bytes long,
    /// under `under` (the file's content count and the connection): the call bringing its
    /// bytes if the reader is streaming, else `None` (the caller reads as usual). A call
    /// asked ahead for exactly this range is taken; a streaming reader with none gets its
    /// own asked through `ask`, first, so that storage answers it before those that follow.
    /// Then up to [`DEPTH`] ranges after it are asked through `ask`, which may decline
    /// (`None`: no room in the connection's window), and only within the mount's [`BUDGET`]
    /// of bytes asked ahead, counted in `budget`.
    #[allow(clippy::too_many_arguments)] // the read, the file, and what asking depends on
    pub(crate) fn next(
        &mut self,
        offset: u64,
        len: usize,
        clen: u64,
        under: (u64, u64),
        budget: &Arc<AtomicUsize>,
        mut ask: impl FnMut(u64, usize) -> Option<C>,
    ) -> Option<C> {
        if len < MIN_READ {
            return None;
        }
        if under != self.asked_under {
            self.forget();
            self.asked_under = under;
        }
        let window = DEPTH as u64 * len as u64;
        let end = offset + len as u64;
        let taken = self
            .asked
            .iter()
            .position(|a| a.offset == offset && a.len == len)
            .and_then(|i| self.asked.remove(i));
        let streaming = taken.is_some() || offset.abs_diff(self.last_end) <= window;
        if !streaming {
            self.forget();
            self.last_end = end;
            return None;
        }
        self.last_end = self.last_end.max(end);
        // Ranges the reader went past without reading are not waited for any longer.
        let behind = offset.saturating_sub(window);
        self.asked.retain(|a| a.offset + a.len as u64 > behind);
        let own = match taken {
            Some(a) => a.call,
            None => ask(offset, len)?,
        };
        let mut from = self.asked_until.max(end);
        while self.asked.len() < DEPTH && from < clen {
            let l = (len as u64).min(clen - from) as usize;
            let Some(share) = BudgetShare::take(budget, l) else {
                break;
            };
            let Some(call) = ask(from, l) else {
                break;
            };
            self.asked.push_back(Asked {
                offset: from,
                len: l,
                call,
                _share: share,
            });
            from += l as u64;
        }
        self.asked_until = from;
        Some(own)
    }

    /// Drops every range asked (its answer is discarded when it comes).
    pub(crate) fn forget(&mut self) {
        self.asked.clear();
        self.asked_until = 0;
    }

    #[cfg(test)]
    fn asked(&self) -> Vec<(u64, usize)> {
        self.asked.iter().map(|a| (a.offset, a.len)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: usize = 132 << 10;
    const CLEN: u64 = 64 << 20;

    fn budget() -> Arc<AtomicUsize> {
        Arc::new(AtomicUsize::new(0))
    }

    /// Asks and records what was asked: a call is its range.
    fn asking(log: &mut Vec<(u64, usize)>) -> impl FnMut(u64, usize) -> Option<(u64, usize)> + '_ {
        |o, l| {
            log.push((o, l));
            Some((o, l))
        }
    }

    #[test]
    fn a_streaming_reader_finds_its_ranges_asked_and_the_next_ones_asked_after_its_own() {
        let (mut a, b) = (Ahead::default(), budget());
        let mut log = Vec::new();
        let own = a.next(0, R, CLEN, (0, 1), &b, asking(&mut log));
        assert_eq!(own, Some((0, R)));
        let r = R as u64;
        assert_eq!(
            log,
            vec![(0, R), (r, R), (2 * r, R), (3 * r, R), (4 * r, R)]
        );
        log.clear();
        // The next read takes its range, asks one more, and nothing twice.
        assert_eq!(
            a.next(r, R, CLEN, (0, 1), &b, asking(&mut log)),
            Some((r, R))
        );
        assert_eq!(log, vec![(5 * r, R)]);
        // Served out of order (two kernel reads on two workers): still taken.
        log.clear();
        assert_eq!(
            a.next(3 * r, R, CLEN, (0, 1), &b, asking(&mut log)),
            Some((3 * r, R))
        );
        assert_eq!(
            a.next(2 * r, R, CLEN, (0, 1), &b, asking(&mut log)),
            Some((2 * r, R))
        );
        assert_eq!(log, vec![(6 * r, R), (7 * r, R)]);
    }

    #[test]
    fn nothing_is_asked_past_the_end_and_the_last_range_is_cut_to_it() {
        let (mut a, b) = (Ahead::default(), budget());
        let mut log = Vec::new();
        let clen = 2 * R as u64 + 100;
        a.next(0, R, clen, (0, 1), &b, asking(&mut log));
        assert_eq!(log, vec![(0, R), (R as u64, R), (2 * R as u64, 100)]);
    }

    #[test]
    fn small_and_random_reads_ask_nothing_and_a_jump_drops_what_was_asked() {
        let (mut a, b) = (Ahead::default(), budget());
        let mut log = Vec::new();
        assert_eq!(a.next(0, 4128, CLEN, (0, 1), &b, asking(&mut log)), None);
        assert!(log.is_empty());
        a.next(0, R, CLEN, (0, 1), &b, asking(&mut log));
        assert_eq!(a.asked().len(), DEPTH);
        log.clear();
        assert_eq!(
            a.next(40 << 20, R, CLEN, (0, 1), &b, asking(&mut log)),
            None
        );
        assert!(log.is_empty(), "a jump is read as usual: {log:?}");
        assert!(a.asked().is_empty());
        // The read after the jump continues from it.
        let from = (40 << 20) + R as u64;
        assert_eq!(
            a.next(from, R, CLEN, (0, 1), &b, asking(&mut log)),
            Some((from, R))
        );
        assert_eq!(log.len(), 1 + DEPTH);
    }

    #[test]
    fn a_change_of_the_content_or_the_connection_drops_what_was_asked_before_it() {
        let (mut a, b) = (Ahead::default(), budget());
        let mut log = Vec::new();
        let r = R as u64;
        a.next(0, R, CLEN, (0, 1), &b, asking(&mut log));
        log.clear();
        // Written here (or changed elsewhere) since: the range is asked again.
        assert_eq!(
            a.next(r, R, CLEN, (1, 1), &b, asking(&mut log)),
            Some((r, R))
        );
        assert_eq!(log[0], (r, R));
        assert_eq!(log.len(), 1 + DEPTH);
        log.clear();
        // A new connection: the same.
        assert_eq!(
            a.next(2 * r, R, CLEN, (1, 2), &b, asking(&mut log)),
            Some((2 * r, R))
        );
        assert_eq!(log[0], (2 * r, R));
    }

    #[test]
    fn a_declined_ask_leaves_the_read_to_the_caller_and_stops_asking_ahead() {
        let (mut a, b): (Ahead<(u64, usize)>, _) = (Ahead::default(), budget());
        assert_eq!(a.next(0, R, CLEN, (0, 1), &b, |_, _| None), None);
        let mut n = 0;
        let own = a.next(R as u64, R, CLEN, (0, 1), &b, |o, l| {
            n += 1;
            (n <= 2).then_some((o, l))
        });
        assert_eq!(own, Some((R as u64, R)));
        assert_eq!(a.asked().len(), 1, "one range asked, then no room");
    }

    #[test]
    fn what_is_asked_across_the_mount_stays_within_the_budget() {
        let b = budget();
        let mut readers: Vec<Ahead<(u64, usize)>> = (0..64).map(|_| Ahead::default()).collect();
        for r in &mut readers {
            r.next(0, R, CLEN, (0, 1), &b, |o, l| Some((o, l)));
        }
        let asked: usize = readers.iter().map(|r| r.asked().len() * R).sum();
        assert!(asked <= BUDGET, "{asked} bytes asked ahead");
        assert!(asked + R > BUDGET, "the budget is used: {asked}");
        drop(readers);
        assert_eq!(b.load(Ordering::Acquire), 0);
    }
}
