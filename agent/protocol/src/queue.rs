//! A job queue shared by a pool of worker threads.
//!
//! It exists for one reason: std's `mpsc` receiver shared behind a mutex (the usual way to
//! share it) wakes two threads per job. The worker parked in `recv` while holding the mutex
//! takes the job, and releasing the mutex wakes the next worker, which takes the mutex only
//! to park in `recv` again. On a 2-core machine that extra wake-up competes with the
//! threads that carry the request on (a perf sched trace of one storage round trip showed
//! it in both the consumer's and storage's pools). Here idle workers wait on a condition
//! variable and each job wakes exactly one.

use std::collections::{HashMap, VecDeque};
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

/// Jobs that must run one after another in the order they came, while others run in
/// parallel: a job given a lane already busy waits behind the lane's running job, and the
/// worker that finishes a job of a lane takes the lane's next one itself.
///
/// Why: a server runs a connection's requests concurrently, so two requests about one file
/// sent back to back may run in either order. A client that must send a change after a
/// write without waiting for the write's answer (an attribute change behind a write) asks
/// for both in one lane.
pub struct Lanes<T> {
    state: Mutex<LaneState<T>>,
    /// Signalled when a job waiting in a lane is taken.
    space: Condvar,
    /// Jobs that may wait in lanes at once before [`Lanes::enter`] waits.
    capacity: usize,
}

struct LaneState<T> {
    /// The busy lanes, each with the jobs waiting behind its running one.
    busy: HashMap<u64, VecDeque<T>>,
    waiting: usize,
    closed: bool,
}

impl<T> Lanes<T> {
    pub fn new(capacity: usize) -> Lanes<T> {
        Lanes {
            state: Mutex::new(LaneState {
                busy: HashMap::new(),
                waiting: 0,
                closed: false,
            }),
            space: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job back if `lane` was free (the lane is now busy until [`Lanes::next`] finds it
    /// empty: run the job), or `None` if it waits behind the lane's running job. Waits while
    /// `capacity` jobs wait in lanes (a client that ignores its window cannot make the
    /// server hold more), except once closed.
    pub fn enter(&self, lane: u64, job: T) -> Option<T> {
        let mut st = self.lock();
        while !st.closed && st.waiting >= self.capacity && st.busy.contains_key(&lane) {
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let st = &mut *st;
        match st.busy.get_mut(&lane) {
            Some(queue) => {
                queue.push_back(job);
                st.waiting += 1;
                None
            }
            None => {
                st.busy.insert(lane, VecDeque::new());
                Some(job)
            }
        }
    }

    /// After a job of `lane` finished: the lane's next job, to run now, or `None` and the
    /// lane is free.
    pub fn next(&self, lane: u64) -> Option<T> {
        let mut st = self.lock();
        let next = st.busy.get_mut(&lane).and_then(VecDeque::pop_front);
        match next {
            Some(job) => {
                st.waiting -= 1;
                drop(st);
                self.space.notify_one();
                Some(job)
            }
            None => {
                st.busy.remove(&lane);
                None
            }
        }
    }

    /// Releases a producer waiting in [`Lanes::enter`]; jobs waiting in lanes still run.
    pub fn close(&self) {
        self.lock().closed = true;
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

    #[test]
    fn jobs_of_one_lane_run_in_order_one_at_a_time_and_others_pass_them() {
        let lanes = Lanes::new(8);
        assert_eq!(
            lanes.enter(1, "write"),
            Some("write"),
            "a free lane runs at once"
        );
        assert_eq!(lanes.enter(1, "chmod"), None, "behind the running job");
        assert_eq!(lanes.enter(1, "utimens"), None);
        assert_eq!(lanes.enter(2, "other file"), Some("other file"));
        assert_eq!(lanes.next(1), Some("chmod"));
        assert_eq!(lanes.next(2), None, "lane 2 is free again");
        assert_eq!(lanes.enter(2, "again"), Some("again"));
        assert_eq!(lanes.next(1), Some("utimens"));
        assert_eq!(lanes.next(1), None);
        assert_eq!(
            lanes.enter(1, "later"),
            Some("later"),
            "lane 1 is free again"
        );
    }

    #[test]
    fn a_producer_waits_while_lanes_hold_their_capacity_until_one_job_is_taken() {
        let lanes = Arc::new(Lanes::new(2));
        assert!(lanes.enter(5, 0).is_some());
        assert!(lanes.enter(5, 1).is_none());
        assert!(lanes.enter(5, 2).is_none());
        let entered = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (lanes, entered) = (lanes.clone(), entered.clone());
            std::thread::spawn(move || {
                let r = lanes.enter(5, 3);
                entered.store(1, Ordering::SeqCst);
                r
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            entered.load(Ordering::SeqCst),
            0,
            "the third waiting job waited"
        );
        assert!(lanes.enter(6, 9).is_some(), "a free lane never waits");
        assert_eq!(lanes.next(5), Some(1));
        assert_eq!(producer.join().unwrap(), None);
        assert_eq!((lanes.next(5), lanes.next(5)), (Some(2), Some(3)));
        lanes.close();
    }
}
