//! A job queue shared by a pool of worker threads.
//!
//! It exists for one reason: std's `mpsc` receiver shared behind a mutex (the usual way to
//! share it) wakes two threads per job. The worker parked in `recv` while holding the mutex
//! takes the job, and releasing the mutex wakes the next worker, which takes the mutex only
//! to park in `recv` again. On a 2-core machine that extra wake-up competes with the
//! threads that carry the request on (a perf sched trace of one storage round trip showed
//! it in both the consumer's and storage's pools). Here idle workers wait on a condition
//! variable and each job wakes exactly one.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled once per job pushed, and to everyone at close.
    ready: Condvar,
    /// Signalled when a job is taken from a full queue.
    space: Condvar,
    capacity: usize,
}

struct State<T> {
    jobs: VecDeque<T>,
    closed: bool,
}

impl<T> WorkQueue<T> {
    /// A queue holding at most `capacity` jobs (at least one) not yet taken by a worker.
    pub fn new(capacity: usize) -> WorkQueue<T> {
        WorkQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            space: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job, waiting while the queue is full. Gives the job back once the queue is
    /// closed.
    pub fn push(&self, job: T) -> Result<(), T> {
        let mut st = self.lock();
        while !st.closed && st.jobs.len() >= self.capacity {
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            return Err(job);
        }
        st.jobs.push_back(job);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                let was_full = st.jobs.len() + 1 >= self.capacity;
                drop(st);
                if was_full {
                    self.space.notify_one();
                }
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Refuses new jobs; workers finish what is queued, then `pop` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.space.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn every_job_runs_once_and_workers_end_after_close() {
        let q = Arc::new(WorkQueue::new(4));
        let sum = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (q, sum) = (q.clone(), sum.clone());
                std::thread::spawn(move || {
                    while let Some(n) = q.pop() {
                        sum.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for n in 1..=1000 {
            q.push(n).unwrap();
        }
        q.close();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(sum.load(Ordering::Relaxed), 500_500);
        assert_eq!(q.push(7), Err(7), "a closed queue gives the job back");
    }

    #[test]
    fn a_full_queue_makes_the_producer_wait_until_a_job_is_taken() {
        let q = Arc::new(WorkQueue::new(2));
        q.push(1).unwrap();
        q.push(2).unwrap();
        let pushed = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (q, pushed) = (q.clone(), pushed.clone());
            std::thread::spawn(move || {
                q.push(3).unwrap();
                pushed.store(1, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pushed.load(Ordering::SeqCst), 0, "the third job waited");
        assert_eq!(q.pop(), Some(1));
        producer.join().unwrap();
        assert_eq!(pushed.load(Ordering::SeqCst), 1);
        assert_eq!(
            (q.pop(), q.pop()),
            (Some(2), Some(3)),
            "jobs keep their order"
        );
    }

    #[test]
    fn close_releases_a_waiting_producer_and_leaves_queued_jobs_to_the_workers() {
        let q = Arc::new(WorkQueue::new(1));
        q.push("queued").unwrap();
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.push("late"))
        };
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        assert_eq!(producer.join().unwrap(), Err("late"));
        assert_eq!(q.pop(), Some("queued"));
        assert_eq!(q.pop(), None);
    }
}
