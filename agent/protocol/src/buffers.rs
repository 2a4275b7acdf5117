//! Large buffers of the data path (frame payloads, stream chunks, and what the consumer
//! seals, queues and encodes its writes in), kept for reuse.
//!
//! A payload of hundreds of KiB is bigger than the threshold at which glibc gives an
//! allocation its own mapping (the consumer pins that threshold to keep its peak memory
//! down), so each such frame used to cost an `mmap`, a page fault per 4 KiB as the bytes
//! arrived, and an `munmap` that interrupts every other thread of the process. On a
//! sequential read that was about half of the mount's CPU time. Whoever is done with a
//! large buffer hands it back with [`give_back`] (a stream reader with each chunk it has
//! consumed); the next large frame is read into it.
//! At most [`KEPT`] buffers are kept, so what this holds is bounded. A kept buffer still
//! holds the bytes of its last use (ciphertext, or in the consumer plaintext, which the
//! consumer qube's page cache holds anyway) until it is reused: [`take`] hands it out
//! empty, so nothing reads them.

use std::sync::Mutex;

use crate::frame::MAX_PAYLOAD;

/// Buffers at least this big come from this module (with capacity [`MAX_PAYLOAD`], so a
/// kept one fits any frame); smaller ones come from the heap, where malloc already reuses
/// memory.
pub const LARGE: usize = 128 * 1024;
/// Buffers kept: about as many as are in use at once on a busy connection (a 1 MiB read's
/// two answers, a write's request copy, sealed blocks and frame, a stream's chunks in
/// flight); about 4.3 MiB at most.
const KEPT: usize = 4;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `len` bytes: a kept one when `len` is large.
pub fn take(len: usize) -> Vec<u8> {
    if len < LARGE {
        return Vec::with_capacity(len);
    }
    let kept = FREE.lock().unwrap_or_else(|p| p.into_inner()).pop();
    match kept {
        Some(v) if v.capacity() >= len => v,
        _ => Vec::with_capacity(MAX_PAYLOAD.max(len)),
    }
}

/// `data` copied into a buffer of [`take`].
pub fn copy_of(data: &[u8]) -> Vec<u8> {
    let mut v = take(data.len());
    v.extend_from_slice(data);
    v
}

/// Keeps a buffer of at least [`LARGE`] bytes (a payload, or any buffer of that size
/// class) for the next large frame; anything smaller or far bigger is simply freed.
pub fn give_back(mut v: Vec<u8>) {
    if v.capacity() < LARGE || v.capacity() > 2 * MAX_PAYLOAD {
        return;
    }
    v.clear();
    let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
    if free.len() < KEPT {
        free.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_small_ones_do_not() {
        let big = take(MAX_PAYLOAD);
        assert!(big.capacity() >= MAX_PAYLOAD);
        let small = take(LARGE - 1);
        assert!(small.capacity() < MAX_PAYLOAD);
        let p = big.as_ptr();
        give_back(small);
        give_back(big);
        // Other tests may share the pool: ours is found among what is handed out.
        let mut got = Vec::new();
        for _ in 0..=KEPT {
            let v = take(LARGE);
            assert!(v.is_empty() && v.capacity() >= MAX_PAYLOAD);
            got.push(v);
        }
        assert!(
            got.iter().any(|v| v.as_ptr() == p),
            "the large buffer was not reused"
        );
        for v in got {
            give_back(v);
        }
        assert!(
            FREE.lock().unwrap().len() <= KEPT,
            "more kept than the bound"
        );
    }
}
