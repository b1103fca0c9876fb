//! Two-way fork-join on a persistent helper thread.
//!
//! A decode splits its work in two six times (index scan, hashing, placing, peeling, check,
//! dense output). A scoped thread costs 50–100 µs per split on the 2-vCPU virtual machines
//! we measure on (create, first run on the other core, join): the 1 % bitmap decode of
//! `sketchreduce bench codec` went from 6.6 to 5.7 ms without them. Handing the half to a
//! thread that is already running costs a few µs. The helper
//! spins for a moment after each task, then yields, then sleeps, so an idle process does not
//! keep a core busy. One helper serves the process; a caller that finds it busy (another
//! decoder's split, or a split nested in one) uses a scoped thread instead.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

/// No task; the caller that holds the helper may post one.
const IDLE: u8 = 0;
/// A task is posted and not finished.
const POSTED: u8 = 1;
/// The posted task has finished; its result may be read.
const DONE: u8 = 2;

/// How long the helper busy-waits for its next task, then how long it yields the core
/// between checks, before it sleeps on the condition variable (splits within a decode come
/// well inside this; waking a sleeping thread costs about as much as creating one).
const SPIN: Duration = Duration::from_micros(50);
const YIELD: Duration = Duration::from_micros(500);

/// State shared by callers and the helper thread.
struct Shared {
    state: AtomicU8,
    /// The posted task: written by the caller holding `owner` while `state` is IDLE, read by
    /// the helper after it sees POSTED.
    task: UnsafeCell<Option<TaskRef>>,
    /// Whether the helper is (about to be) asleep on `wake`.
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Held by the caller that is using the helper.
    owner: Mutex<()>,
}

// SAFETY: `task` is only accessed under the protocol above (one writer while IDLE, one reader
// after POSTED, ordered by `state`).
unsafe impl Sync for Shared {}

/// A type-erased pointer to a [`StackJob`] on the caller's stack.
#[derive(Clone, Copy)]
struct TaskRef {
    data: *const (),
    run: unsafe fn(*const ()),
}

// SAFETY: the pointee outlives the task (the caller waits for DONE) and is `Send` (bounds on
// `join`).
unsafe impl Send for TaskRef {}

/// The helper's half of a join and its result, on the caller's stack.
struct StackJob<B, RB> {
    f: UnsafeCell<Option<B>>,
    result: UnsafeCell<Option<thread::Result<RB>>>,
}

impl<B: FnOnce() -> RB, RB> StackJob<B, RB> {
    /// Runs the job behind `data`.
    ///
    /// # Safety
    /// `data` must point to a live `StackJob<B, RB>` that nothing else accesses until the
    /// helper sets DONE.
    unsafe fn run(data: *const ()) {
        let job = &*(data as *const Self);
        if let Some(f) = (*job.f.get()).take() {
            *job.result.get() = Some(panic::catch_unwind(AssertUnwindSafe(f)));
        }
    }
}

/// The process's helper, started on first use; `None` if its thread could not be created.
fn helper() -> Option<&'static Shared> {
    static HELPER: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU8::new(IDLE),
            task: UnsafeCell::new(None),
            sleeping: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            owner: Mutex::new(()),
        }));
        thread::Builder::new()
            .name("sketchreduce-codec-helper".into())
            .spawn(move || serve(shared))
            .ok()
            .map(|_| shared)
    })
}

/// The helper thread: waits for a task, runs it, reports DONE; forever.
fn serve(shared: &'static Shared) {
    loop {
        let start = Instant::now();
        while shared.state.load(Ordering::SeqCst) != POSTED {
            let waited = start.elapsed();
            if waited < SPIN {
                std::hint::spin_loop();
            } else if waited < YIELD {
                thread::yield_now();
            } else {
                // `sleeping` is set before the state is read again, and a caller sets the
                // state before it reads `sleeping` (both SeqCst), so one of the two sees the
                // other: no lost wake-up.
                let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
                shared.sleeping.store(true, Ordering::SeqCst);
                while shared.state.load(Ordering::SeqCst) != POSTED {
                    guard = shared
                        .wake
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                shared.sleeping.store(false, Ordering::SeqCst);
            }
        }
        // SAFETY: POSTED was seen, so the caller wrote the task and waits for DONE.
        if let Some(task) = unsafe { (*shared.task.get()).take() } {
            // SAFETY: the caller keeps the job alive until DONE.
            unsafe { (task.run)(task.data) };
        }
        shared.state.store(DONE, Ordering::SeqCst);
    }
}

/// Runs `a` on this thread and `b` on the helper (or a scoped thread if the helper is busy
/// or missing), and returns both results. A panic in either is resumed here after both have
/// finished.
pub(crate) fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    let Some(shared) = helper() else {
        return scoped(a, b);
    };
    let _owner = match shared.owner.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return scoped(a, b),
    };
    let job = StackJob {
        f: UnsafeCell::new(Some(b)),
        result: UnsafeCell::new(None),
    };
    // SAFETY: this caller holds `owner` and the state is IDLE, so the helper does not read
    // `task` now; the job lives on this stack until the wait below has seen DONE.
    unsafe {
        *shared.task.get() = Some(TaskRef {
            data: &job as *const StackJob<B, RB> as *const (),
            run: StackJob::<B, RB>::run,
        });
    }
    shared.state.store(POSTED, Ordering::SeqCst);
    if shared.sleeping.load(Ordering::SeqCst) {
        let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
        shared.wake.notify_one();
    }
    // `a` may panic; the helper may still be using `job`, so catch, wait, then resume.
    let ra = panic::catch_unwind(AssertUnwindSafe(a));
    let start = Instant::now();
    while shared.state.load(Ordering::SeqCst) != DONE {
        if start.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
    shared.state.store(IDLE, Ordering::SeqCst);
    let rb = job.result.into_inner();
    match (ra, rb) {
        (Ok(ra), Some(Ok(rb))) => (ra, rb),
        (Err(p), _) | (_, Some(Err(p))) => panic::resume_unwind(p),
        (Ok(_), None) => unreachable!("the helper ran the posted task before reporting DONE"),
    }
}

/// [`join`] with a scoped thread for `b`.
fn scoped<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    thread::scope(|scope| {
        let hb = scope.spawn(b);
        let ra = panic::catch_unwind(AssertUnwindSafe(a));
        let rb = hb.join();
        match (ra, rb) {
            (Ok(ra), Ok(rb)) => (ra, rb),
            (Err(p), _) | (_, Err(p)) => panic::resume_unwind(p),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_run_on_disjoint_borrows() {
        let mut v: Vec<u64> = (0..100_000).collect();
        for round in 0..200u64 {
            let (lo, hi) = v.split_at_mut(40_000);
            let (a, b) = join(
                || {
                    lo.iter_mut().for_each(|x| *x += 1);
                    lo.iter().sum::<u64>()
                },
                || {
                    hi.iter_mut().for_each(|x| *x += 2);
                    hi.iter().sum::<u64>()
                },
            );
            let want_lo: u64 = (0..40_000u64).map(|x| x + round + 1).sum();
            let want_hi: u64 = (40_000..100_000u64).map(|x| x + 2 * (round + 1)).sum();
            assert_eq!((a, b), (want_lo, want_hi), "round {round}");
        }
    }

    #[test]
    fn the_second_half_runs_on_another_thread() {
        let here = thread::current().id();
        let (a, b) = join(|| thread::current().id(), || thread::current().id());
        assert_eq!(a, here);
        assert_ne!(b, here);
    }

    #[test]
    fn a_panic_in_either_half_reaches_the_caller_after_both_finish() {
        let other_ran = AtomicBool::new(false);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            join(
                || panic!("first half"),
                || {
                    thread::sleep(Duration::from_millis(20));
                    other_ran.store(true, Ordering::SeqCst);
                },
            )
        }));
        assert!(r.is_err());
        assert!(
            other_ran.load(Ordering::SeqCst),
            "join returned before the helper finished"
        );
        let r = panic::catch_unwind(|| join(|| 1, || -> u32 { panic!("second half") }));
        let msg = r.expect_err("the helper's panic is resumed");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"second half"));
        // The helper still works afterwards.
        assert_eq!(join(|| 3, || 4), (3, 4));
    }

    #[test]
    fn nested_and_concurrent_joins_fall_back_to_scoped_threads() {
        let (a, b) = join(|| join(|| 1, || 2), || join(|| 3, || 4));
        assert_eq!((a, b), ((1, 2), (3, 4)));
        thread::scope(|s| {
            for t in 0..4u64 {
                s.spawn(move || {
                    for i in 0..300u64 {
                        assert_eq!(join(|| t * i, || t + i), (t * i, t + i));
                    }
                });
            }
        });
    }

    #[test]
    fn the_helper_wakes_after_sleeping() {
        assert_eq!(join(|| 1, || 2), (1, 2));
        thread::sleep(YIELD * 4);
        // Long enough for an idle helper to fall asleep (other tests may keep it busy, so
        // this is not asserted); a lost wake-up would hang here.
        for _ in 0..3 {
            assert_eq!(join(|| 5, || 6), (5, 6));
            thread::sleep(YIELD * 3);
        }
    }
}
