//! The per-core cooperative scheduler.
//!
//! A [`Scheduler`] owns the threads of one core: the running one, a FIFO of
//! ready ones, and finished ones whose stacks are freed by the next thread
//! to run (a thread cannot free the stack it stands on). Switching happens
//! only in [`Scheduler::yield_now`] and when a thread ends; the lock is
//! never held across a switch.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::arch;

/// Stack size of a spawned thread. Stacks come from the heap and are not
/// zeroed, so only the pages a thread really uses are ever touched.
pub const STACK_SIZE: usize = 64 * 1024;

/// Identifier of a thread, unique on its core; the boot thread is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(pub u64);

type Entry = Box<dyn FnOnce() + Send>;

struct Thread {
    id: ThreadId,
    // Read only through `rsp` and `arch::prepare`; owned so that it is
    // freed with the thread.
    /// Saved stack pointer while the thread is not running.
    rsp: AtomicUsize,
    /// `None` for the boot thread, which runs on the boot stack.
    #[allow(dead_code)]
    stack: Option<Box<[MaybeUninit<u8>]>>,
    entry: Mutex<Option<Entry>>,
    finished: AtomicBool,
}

struct Inner {
    current: Option<Arc<Thread>>,
    ready: VecDeque<Arc<Thread>>,
    /// Sleeping threads and the TSC value they wake at.
    sleepers: Vec<(u64, Arc<Thread>)>,
    zombies: Vec<Arc<Thread>>,
}

/// Why the current thread stops running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// It can go on: run the others first.
    Yield,
    /// It waits for another thread; when none is ready, halt until a
    /// sleeper wakes.
    Wait,
    /// It sleeps until the TSC reaches this value.
    Sleep(u64),
    /// It has ended.
    Exit,
}

/// The threads of one core.
pub struct Scheduler {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    switches: AtomicU64,
    /// Bumped whenever something a waiting thread could be waiting for
    /// happens (a message sent or taken, a lock released, a thread started
    /// or ended, a sleeper woken).
    progress: AtomicU64,
    /// `progress` as the last failed wait saw it, and how many failed waits
    /// in a row saw it unchanged.
    wait_epoch: AtomicU64,
    wait_streak: AtomicU64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// A scheduler whose only thread is the caller of its first operation.
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                current: None,
                ready: VecDeque::new(),
                sleepers: Vec::new(),
                zombies: Vec::new(),
            }),
            next_id: AtomicU64::new(1),
            switches: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            wait_epoch: AtomicU64::new(u64::MAX),
            wait_streak: AtomicU64::new(0),
        }
    }

    /// Record that something happened that a waiting thread may wait for.
    pub fn note_progress(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a failed wait; returns the number of threads when every
    /// thread has failed its wait at least twice in a row with nothing
    /// happening meanwhile and nothing sleeps: then nothing can ever wake
    /// them (no device can either, yet).
    fn deadlocked(&self) -> Option<usize> {
        let now = self.progress.load(Ordering::Relaxed);
        let streak = if self.wait_epoch.swap(now, Ordering::Relaxed) == now {
            self.wait_streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.wait_streak.store(1, Ordering::Relaxed);
            1
        };
        // Short streaks are the common case: look at the queues only after.
        if streak <= 2 {
            return None;
        }
        let g = self.inner.lock();
        let threads = g.ready.len() + 1;
        (g.sleepers.is_empty() && streak > 2 * threads as u64).then_some(threads)
    }

    fn adopt_boot_thread(inner: &mut Inner) {
        if inner.current.is_none() {
            inner.current = Some(Arc::new(Thread {
                id: ThreadId(0),
                rsp: AtomicUsize::new(0),
                stack: None,
                entry: Mutex::new(None),
                finished: AtomicBool::new(false),
            }));
        }
    }

    /// The running thread's id.
    pub fn current_id(&self) -> ThreadId {
        let mut g = self.inner.lock();
        Self::adopt_boot_thread(&mut g);
        g.current.as_ref().map_or(ThreadId(0), |t| t.id)
    }

    /// Number of context switches so far.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Number of threads waiting to run.
    pub fn ready_count(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// Start `f` on a new thread of this core; it runs when the current
    /// thread yields.
    pub fn spawn<F, T>(&'static self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let result: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        let (r, d) = (result.clone(), done.clone());
        let entry: Entry = Box::new(move || {
            let v = f();
            *r.lock() = Some(v);
            d.store(true, Ordering::Release);
        });
        let id = ThreadId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut stack = Box::<[u8]>::new_uninit_slice(STACK_SIZE);
        // Moving the box into the thread does not move the stack itself.
        let base = stack.as_mut_ptr().cast::<u8>();
        let thread = Arc::new(Thread {
            id,
            rsp: AtomicUsize::new(0),
            stack: Some(stack),
            entry: Mutex::new(Some(entry)),
            finished: AtomicBool::new(false),
        });
        let sp =
            arch::prepare(base, STACK_SIZE, self as *const Scheduler as usize, Arc::as_ptr(&thread) as usize);
        thread.rsp.store(sp, Ordering::Relaxed);
        let mut g = self.inner.lock();
        Self::adopt_boot_thread(&mut g);
        g.ready.push_back(thread);
        self.note_progress();
        JoinHandle { id, result, done }
    }

    /// Run the next ready thread, if any; the caller runs again after the
    /// threads ahead of it.
    pub fn yield_now(&self) {
        // A thread that yields is busy, not blocked: that is progress.
        self.note_progress();
        self.switch_away(Leave::Yield);
    }

    /// Let the others run while waiting for one of them; halt when nothing
    /// is ready but a sleeper will wake. Panics with a clear message when
    /// every thread waits and nothing can wake any of them (a deadlock).
    pub fn wait(&self) {
        if let Some(threads) = self.deadlocked() {
            panic!("deadlock: all {threads} thread(s) of core 0 are blocked and nothing can wake them");
        }
        self.switch_away(Leave::Wait);
    }

    /// Sleep until the TSC reaches `deadline`.
    pub fn sleep_until(&self, deadline: u64) {
        if arch::rdtsc() < deadline {
            self.switch_away(Leave::Sleep(deadline));
        }
    }

    /// Number of threads sleeping.
    pub fn sleeping_count(&self) -> usize {
        self.inner.lock().sleepers.len()
    }

    /// Leave the current thread as `leave` says and run the next one; when
    /// none is ready, either return (the current thread goes on) or halt
    /// until the earliest sleeper's deadline.
    fn switch_away(&self, leave: Leave) {
        loop {
            let now = arch::rdtsc();
            let earliest = {
                let mut g = self.inner.lock();
                Self::adopt_boot_thread(&mut g);
                // Wake the sleepers whose time has come, earliest first.
                if g.sleepers.iter().any(|(d, _)| *d <= now) {
                    self.note_progress();
                    g.sleepers.sort_by_key(|(d, _)| *d);
                    while g.sleepers.first().is_some_and(|(d, _)| *d <= now) {
                        let (_, t) = g.sleepers.remove(0);
                        g.ready.push_back(t);
                    }
                }
                if let Some(next) = g.ready.pop_front() {
                    let prev = g.current.replace(next.clone()).expect("a current thread");
                    let save = prev.rsp.as_ptr();
                    match leave {
                        Leave::Yield | Leave::Wait => g.ready.push_back(prev),
                        Leave::Sleep(d) => g.sleepers.push((d, prev)),
                        Leave::Exit => g.zombies.push(prev),
                    }
                    let next_rsp = next.rsp.load(Ordering::Relaxed);
                    drop(g);
                    self.switch_to(save, next_rsp);
                    return;
                }
                let own = match leave {
                    Leave::Sleep(d) if d <= now => return,
                    Leave::Sleep(d) => Some(d),
                    _ => None,
                };
                let first_sleeper = g.sleepers.iter().map(|(d, _)| *d).min();
                match (leave, first_sleeper) {
                    (Leave::Yield, _) | (Leave::Wait, None) => return,
                    (Leave::Exit, None) => panic!("the last thread of core 0 ended with nothing left to run"),
                    _ => {}
                }
                own.into_iter().chain(first_sleeper).min().expect("a deadline")
            };
            // Nothing can run before `earliest`: halt until then.
            let p = crate::platform();
            match p.arm {
                Some(arm) => {
                    arm(earliest);
                    if arch::rdtsc() < earliest {
                        (p.idle)();
                    }
                }
                None => {
                    while arch::rdtsc() < earliest {
                        (p.idle)();
                    }
                }
            }
        }
    }

    fn switch_to(&self, save: *mut usize, next: usize) {
        self.switches.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `save` points into a thread kept alive by the ready queue,
        // the sleepers or the zombie list; `next` was saved by a switch or
        // prepared by `arch::prepare`, and its thread is not running (it was
        // queued). The one `unsafe` outside `arch`: only the scheduler knows
        // these.
        #[allow(unsafe_code)]
        unsafe {
            arch::switch(save, next)
        };
        self.reap();
    }

    /// Free the stacks of threads that ended (none of them is running).
    fn reap(&self) {
        let zombies = core::mem::take(&mut self.inner.lock().zombies);
        drop(zombies);
    }

    /// Body of every spawned thread (called from `arch`).
    fn run_thread(&self, thread: &Thread) -> ! {
        self.reap();
        let entry = thread.entry.lock().take();
        if let Some(f) = entry {
            f();
        }
        thread.finished.store(true, Ordering::Release);
        self.note_progress();
        self.switch_away(Leave::Exit);
        unreachable!("an ended thread was resumed");
    }
}

/// First Rust code of a new thread: `sched` and `thread` come from the
/// registers `arch::prepare` set up.
pub(crate) extern "C" fn thread_start(sched: usize, thread: usize) -> ! {
    // SAFETY of the casts: `spawn` passed a `&'static Scheduler` and a
    // pointer to the thread, which the scheduler keeps alive (ready queue,
    // then `current`) while it runs.
    let sched = arch::deref::<Scheduler>(sched);
    let thread = arch::deref::<Thread>(thread);
    sched.run_thread(thread)
}

/// Owner of a spawned thread's result.
pub struct JoinHandle<T> {
    id: ThreadId,
    result: Arc<Mutex<Option<T>>>,
    done: Arc<AtomicBool>,
}

impl<T> JoinHandle<T> {
    /// The thread's id.
    pub fn id(&self) -> ThreadId {
        self.id
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Wait for the thread to end (letting the others run) and take its
    /// result.
    pub fn join(self) -> T {
        while !self.is_finished() {
            crate::wait();
        }
        self.result.lock().take().expect("a finished thread left its result")
    }
}

/// The scheduler of the calling core. In the guest, one static per core;
/// in host tests, one per test thread.
#[cfg(not(test))]
mod current_core {
    use core::sync::atomic::{AtomicPtr, Ordering};

    use super::Scheduler;

    static CURRENT: AtomicPtr<Scheduler> = AtomicPtr::new(core::ptr::null_mut());

    pub(crate) fn install(s: &'static Scheduler) {
        CURRENT.store(s as *const Scheduler as *mut Scheduler, Ordering::Release);
    }

    pub(crate) fn current() -> Option<&'static Scheduler> {
        crate::arch::deref_opt(CURRENT.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod current_core {
    use std::cell::Cell;

    use super::Scheduler;

    std::thread_local! {
        static CURRENT: Cell<Option<&'static Scheduler>> = const { Cell::new(None) };
    }

    pub(crate) fn install(s: &'static Scheduler) {
        CURRENT.with(|c| c.set(Some(s)));
    }

    pub(crate) fn current() -> Option<&'static Scheduler> {
        CURRENT.with(|c| c.get())
    }
}

pub(crate) use current_core::{current, install};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh scheduler for the calling test thread.
    pub(crate) fn fresh() -> &'static Scheduler {
        let s: &'static Scheduler = Box::leak(Box::new(Scheduler::new()));
        install(s);
        s
    }

    #[test]
    fn spawned_threads_run_and_return_results() {
        let s = fresh();
        let handles: Vec<_> = (0..10u64).map(|i| s.spawn(move || i * i)).collect();
        let sum: u64 = handles.into_iter().map(|h| h.join()).sum();
        assert_eq!(sum, (0..10).map(|i| i * i).sum());
        assert_eq!(s.ready_count(), 0);
    }

    #[test]
    fn yield_interleaves_threads_in_order() {
        let s = fresh();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mk = |name: &'static str| {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..3 {
                    log.lock().push((name, i));
                    crate::yield_now();
                }
            })
        };
        let (a, b) = (mk("a"), mk("b"));
        a.join();
        b.join();
        let got = log.lock().clone();
        assert_eq!(got, [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]);
    }

    #[test]
    fn threads_can_spawn_threads_and_ids_are_distinct() {
        let s = fresh();
        let outer = s.spawn(move || {
            let inner = crate::spawn(|| crate::current_thread().unwrap());
            (crate::current_thread().unwrap(), inner.join())
        });
        let (o, i) = outer.join();
        assert_ne!(o, i);
        assert_ne!(o, ThreadId(0));
        assert_eq!(s.current_id(), ThreadId(0));
    }

    #[test]
    fn many_threads_and_switches_free_their_stacks() {
        let s = fresh();
        for round in 0..50u64 {
            let hs: Vec<_> = (0..20u64).map(|i| s.spawn(move || round + i)).collect();
            for (i, h) in hs.into_iter().enumerate() {
                assert_eq!(h.join(), round + i as u64);
            }
        }
        assert!(s.switches() >= 1000);
        s.yield_now();
        assert!(s.inner.lock().zombies.is_empty());
    }

    #[test]
    fn sleepers_wake_in_deadline_order_and_joiners_wait_for_them() {
        let s = fresh();
        let log = Arc::new(Mutex::new(Vec::new()));
        let t0 = arch::rdtsc();
        let hs: Vec<_> = [3_000_000u64, 1_000_000, 2_000_000]
            .into_iter()
            .map(|ticks| {
                let log = log.clone();
                s.spawn(move || {
                    crate::sleep_until_ticks(t0 + ticks);
                    assert!(arch::rdtsc() >= t0 + ticks, "woke early");
                    log.lock().push(ticks);
                })
            })
            .collect();
        for h in hs {
            h.join();
        }
        assert_eq!(*log.lock(), [1_000_000, 2_000_000, 3_000_000]);
        assert_eq!(s.sleeping_count(), 0);
    }

    #[test]
    fn the_only_thread_can_sleep() {
        let s = fresh();
        let t0 = arch::rdtsc();
        s.sleep_until(t0 + 100_000);
        assert!(arch::rdtsc() >= t0 + 100_000);
    }

    #[test]
    fn a_deadlock_is_reported_not_a_hang() {
        let result = std::thread::spawn(|| {
            let s = fresh();
            let (tx_a, rx_a) = crate::channel::bounded::<u8>(1);
            let (tx_b, rx_b) = crate::channel::bounded::<u8>(1);
            // Each waits for the other's message first: neither sends.
            let a = s.spawn(move || {
                let v = rx_b.recv();
                let _ = tx_a.send(1);
                v
            });
            let _ = rx_a.recv();
            drop(tx_b);
            a.join()
        })
        .join();
        let err = result.expect_err("the deadlock must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("deadlock: all 2 thread(s) of core 0 are blocked"), "{msg}");
    }

    #[test]
    fn long_waits_with_progress_are_not_deadlocks() {
        let s = fresh();
        let (tx, rx) = crate::channel::bounded::<u32>(1);
        let p = s.spawn(move || {
            for i in 0..10_000 {
                tx.send(i).unwrap();
            }
        });
        let mut n = 0;
        while rx.recv().is_some() {
            n += 1;
        }
        p.join();
        assert_eq!(n, 10_000);
    }

    #[test]
    fn yield_alone_returns_at_once() {
        let s = fresh();
        s.yield_now();
        assert_eq!(s.switches(), 0);
    }
}
