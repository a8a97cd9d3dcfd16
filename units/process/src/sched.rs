//! The per-core cooperative schedulers and the machine they make up.
//!
//! A [`Scheduler`] owns the threads of one core: the running one, a FIFO of
//! ready ones, sleepers, and finished ones whose stacks are freed by the
//! next thread to run (a thread cannot free the stack it stands on).
//! Switching happens only when a thread yields, waits, sleeps or ends; a
//! scheduler's lock is never held across a switch. A [`System`] is the set
//! of per-core schedulers.
//!
//! **Waiting.** A thread that cannot go on (an empty channel, a held lock,
//! a thread not finished) registers its core in the object's [`Waiters`],
//! re-checks, and calls [`Scheduler::wait`]: it stays in the ready queue
//! but is skipped until something is *notified* to its core. Whoever
//! changes such an object notifies the registered cores: a store on the
//! same core, plus a wake-up interrupt ([`crate::Platform::kick`]) for a
//! core that is halted. When no thread of a core can run, the core halts
//! until the next sleeper's deadline or a wake-up; on a machine of several
//! cores it first watches for a notification for [`SPIN_BEFORE_HALT_US`]
//! µs, since a reply from another core often comes sooner than a halted
//! core can be woken.
//!
//! **Deadlock.** A core with nothing to run and no sleeper is *stuck*; it
//! still wakes every [`DEADLOCK_CHECK_MS`] ms. When every core is stuck,
//! none has a pending notification and no thread anywhere has made
//! progress over a whole period, nothing can ever wake them: that is
//! reported as a panic instead of a silent hang.
//!
//! (A long file on purpose: the scheduler, the system of schedulers, the
//! waiting protocol and their host tests share private state and one
//! locking discipline, which is easier to check read together.)

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::stack::{self, Stack};
use crate::{CoreId, MAX_CORES, SpawnError, arch};

/// Stack size of a spawned thread (`Builder::stack_size` sets another).
/// Stacks come from the heap and are not zeroed, so only the pages a
/// thread really uses are ever touched.
pub const STACK_SIZE: usize = 64 * 1024;
/// The smallest stack a thread may ask for.
pub const MIN_STACK_SIZE: usize = 4 * 1024;

/// How often a stuck core (nothing to run, nothing sleeping) wakes to look
/// for a deadlock; also the longest a lost wake-up could delay a waiter.
pub const DEADLOCK_CHECK_MS: u64 = 20;
/// [`DEADLOCK_CHECK_MS`] in TSC ticks when the TSC frequency is unknown.
const DEADLOCK_CHECK_TICKS_UNKNOWN: u64 = 1 << 26;

/// Identifier of a thread, unique in the machine; each core's boot (or
/// idle) thread has an id below [`MAX_CORES`], equal to its core index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(pub u64);

type Entry = Box<dyn FnOnce() + Send>;

/// Marks a thread that is not waiting.
const NOT_WAITING: u64 = u64::MAX;

/// Stacks of spawned threads not yet freed (for tests and status pages).
pub(crate) static LIVE_STACKS: AtomicUsize = AtomicUsize::new(0);

#[cfg(test)]
std::thread_local! {
    /// [`LIVE_STACKS`] of the calling host thread's machine (tests run in
    /// parallel, each on its own one-core machine).
    static TEST_LIVE: core::cell::Cell<isize> = const { core::cell::Cell::new(0) };
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(stack) = self.stack.take() {
            stack.release();
            LIVE_STACKS.fetch_sub(1, Ordering::SeqCst);
            #[cfg(test)]
            TEST_LIVE.with(|c| c.set(c.get() - 1));
        }
    }
}

/// `(id, stack size)` when `t` ran past the bottom of its stack (its canary
/// is gone).
fn overflowed(t: &Thread) -> Option<(ThreadId, usize)> {
    let stack = t.stack.as_ref()?;
    (!arch::stack_intact(stack.base())).then_some((t.id, stack.size()))
}

/// Stop with a clear report, before the memory below the stack does more
/// harm.
#[cold]
fn stack_overflow(id: ThreadId, size: usize) -> ! {
    panic!(
        "stack overflow in thread {}: it ran past the bottom of its {size}-byte stack; give it more with \
         process::Builder::new().stack_size(BYTES)",
        id.0
    );
}

struct Thread {
    id: ThreadId,
    /// Saved stack pointer while the thread is not running.
    rsp: AtomicUsize,
    /// `None` for a core's boot thread, which runs on the boot stack.
    /// Its lowest bytes hold a canary ([`arch::stack_intact`]); a guard
    /// page lies below it.
    stack: Option<Stack>,
    entry: Mutex<Option<Entry>>,
    /// The scheduler generation in which the thread started waiting, or
    /// [`NOT_WAITING`]. Written under the scheduler's lock.
    waiting_since: AtomicU64,
}

struct Inner {
    current: Option<Arc<Thread>>,
    ready: VecDeque<Arc<Thread>>,
    /// Sleeping threads and the TSC value they wake at.
    sleepers: Vec<(u64, Arc<Thread>)>,
    zombies: Vec<Arc<Thread>>,
    /// Bumped by each notification: every waiting thread runs again once.
    generation: u64,
    /// Threads in `ready` waiting in the current generation.
    waiting: usize,
}

impl Inner {
    fn is_waiting(&self, t: &Thread) -> bool {
        t.waiting_since.load(Ordering::Relaxed) == self.generation
    }

    /// Take the first ready thread that is not waiting (waiting ones are
    /// rotated to the back); with `any`, a waiting one if that is all.
    fn pick(&mut self, any: bool) -> Option<Arc<Thread>> {
        if self.ready.len() > self.waiting {
            for _ in 0..self.ready.len() {
                let t = self.ready.pop_front()?;
                if !self.is_waiting(&t) {
                    t.waiting_since.store(NOT_WAITING, Ordering::Relaxed);
                    return Some(t);
                }
                self.ready.push_back(t);
            }
        }
        if any && let Some(t) = self.ready.pop_front() {
            if self.is_waiting(&t) {
                self.waiting -= 1;
            }
            t.waiting_since.store(NOT_WAITING, Ordering::Relaxed);
            return Some(t);
        }
        None
    }

    /// A notification arrived: every waiting thread runs again.
    fn wake_waiters(&mut self) {
        self.generation += 1;
        self.waiting = 0;
    }
}

/// Why the current thread stops running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// It can go on: run the others first.
    Yield,
    /// It waits for a notification (see the module documentation).
    Wait,
    /// It sleeps until the TSC reaches this value.
    Sleep(u64),
    /// It has ended.
    Exit,
}

/// The threads of one core.
#[repr(align(128))] // per-core state on cache lines of its own
pub struct Scheduler {
    core: usize,
    inner: Mutex<Inner>,
    switches: AtomicU64,
    /// Bumped whenever something a waiting thread could wait for happens
    /// on this core (a message sent or taken, a lock released, a thread
    /// started or ended, a sleeper woken).
    progress: AtomicU64,
    /// Something was notified to this core since it last looked.
    notified: AtomicBool,
    /// The core is about to halt or halted: notifying it needs a kick.
    idle: AtomicBool,
    /// The core has nothing to run and no sleeper.
    stuck: AtomicBool,
    /// Total progress when the core became stuck.
    stuck_progress: AtomicU64,
    /// The core runs its scheduler (its boot thread has been adopted).
    online: AtomicBool,
    /// How long to watch for a notification before halting, in ticks (0:
    /// the default); see [`Scheduler::adapt_spin`].
    spin: AtomicU64,
    /// Threads of this core waiting for an interrupt (`wait_for_event`).
    event_waiters: AtomicU32,
}

impl Scheduler {
    const fn new(core: usize) -> Self {
        Self {
            core,
            inner: Mutex::new(Inner {
                current: None,
                ready: VecDeque::new(),
                sleepers: Vec::new(),
                zombies: Vec::new(),
                generation: 0,
                waiting: 0,
            }),
            switches: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            notified: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
            stuck_progress: AtomicU64::new(0),
            online: AtomicBool::new(false),
            spin: AtomicU64::new(0),
            event_waiters: AtomicU32::new(0),
        }
    }

    /// Count a thread that starts (`1`) or stops (`-1`) waiting for an
    /// interrupt.
    pub(crate) fn event_waits(&self, delta: i32) {
        if delta > 0 {
            self.event_waiters.fetch_add(1, Ordering::SeqCst);
        } else {
            self.event_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn notified_flag(&self) -> *const AtomicBool {
        &self.notified
    }

    /// This scheduler's core.
    pub fn core(&self) -> CoreId {
        CoreId(self.core as u32)
    }

    /// Record that something happened that a waiting thread may wait for.
    /// Only the core itself counts its progress (one writer: no atomic
    /// read-modify-write needed); others only read it.
    pub fn note_progress(&self) {
        self.progress.store(self.progress.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    fn adopt_boot_thread(&self, inner: &mut Inner) {
        if inner.current.is_none() {
            inner.current = Some(Arc::new(Thread {
                id: ThreadId(self.core as u64),
                rsp: AtomicUsize::new(0),
                stack: None,
                entry: Mutex::new(None),
                waiting_since: AtomicU64::new(NOT_WAITING),
            }));
            self.online.store(true, Ordering::Release);
        }
    }

    /// The running thread's id.
    pub fn current_id(&self) -> ThreadId {
        let mut g = self.inner.lock();
        self.adopt_boot_thread(&mut g);
        g.current.as_ref().map_or(ThreadId(self.core as u64), |t| t.id)
    }

    /// Number of context switches so far.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Number of threads waiting to run (waiting threads included).
    pub fn ready_count(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// Number of threads sleeping.
    pub fn sleeping_count(&self) -> usize {
        self.inner.lock().sleepers.len()
    }

    fn enqueue(&self, thread: Arc<Thread>) {
        let mut g = self.inner.lock();
        g.ready.push_back(thread);
        drop(g);
        crate::note_progress();
    }

    /// Run the next ready thread, if any; the caller runs again after the
    /// threads ahead of it.
    pub fn yield_now(&self) {
        // A thread that yields is busy, not blocked: that is progress.
        self.note_progress();
        self.switch_away(Leave::Yield);
    }

    /// Wait for a notification (the caller has registered in the
    /// `Waiters` of what it waits for, and re-checked): other threads run
    /// meanwhile; when none can, the core halts. Returns after a
    /// notification, or at the latest after [`DEADLOCK_CHECK_MS`]; the
    /// caller re-checks its condition either way. Panics with a clear
    /// message when every thread of every core waits and nothing can wake
    /// any of them (a deadlock).
    pub fn wait(&self) {
        self.switch_away(Leave::Wait);
    }

    /// Sleep until the TSC reaches `deadline`.
    pub fn sleep_until(&self, deadline: u64) {
        if arch::rdtsc() < deadline {
            self.switch_away(Leave::Sleep(deadline));
        }
    }

    /// Leave the current thread as `leave` says and run the next one; when
    /// none can run, either return (the current thread goes on) or halt
    /// until a deadline or a notification.
    fn switch_away(&self, leave: Leave) {
        let p = crate::platform();
        loop {
            (p.clear_wake)();
            // The device's work counts as a notification (its interrupts may
            // be off while this core runs threads: `IdleHooks::pending`).
            if self.core == DEVICE_CORE
                && !self.notified.load(Ordering::Relaxed)
                && crate::idle_hooks().is_some_and(|h| (h.pending)())
            {
                self.notified.store(true, Ordering::SeqCst);
            }
            let now = arch::rdtsc();
            let mut g = self.inner.lock();
            self.adopt_boot_thread(&mut g);
            if let Some((id, size)) = g.current.as_deref().and_then(overflowed) {
                // Reported without the lock: the panic names the thread.
                drop(g);
                stack_overflow(id, size);
            }
            let mut woke = false;
            // Wake the sleepers whose time has come, earliest first.
            if g.sleepers.iter().any(|(d, _)| *d <= now) {
                woke = true;
                g.sleepers.sort_by_key(|(d, _)| *d);
                while g.sleepers.first().is_some_and(|(d, _)| *d <= now) {
                    let (_, t) = g.sleepers.remove(0);
                    g.ready.push_back(t);
                }
            }
            if self.notified.load(Ordering::Relaxed) && self.notified.swap(false, Ordering::SeqCst) {
                woke = true;
                g.wake_waiters();
            }
            if woke {
                self.note_progress();
                self.unstick();
            }
            // A notification consumed here may be the one the current
            // thread waits for: it must look again, not wait on.
            let leave = if woke && leave == Leave::Wait { Leave::Yield } else { leave };
            if let Some(next) = g.pick(leave == Leave::Exit) {
                self.unstick();
                let prev = g.current.replace(next.clone()).expect("a current thread");
                let save = prev.rsp.as_ptr();
                match leave {
                    Leave::Yield => g.ready.push_back(prev),
                    Leave::Wait => {
                        prev.waiting_since.store(g.generation, Ordering::Relaxed);
                        g.waiting += 1;
                        g.ready.push_back(prev);
                    }
                    Leave::Sleep(d) => g.sleepers.push((d, prev)),
                    Leave::Exit => g.zombies.push(prev),
                }
                let next_rsp = next.rsp.load(Ordering::Relaxed);
                if let Some(st) = &next.stack {
                    st.ready_on(self.core);
                }
                stack::set_running(self.core, next.id.0, next.stack.as_ref());
                // No reference may stay on this stack across the switch: an
                // ending thread's frame is never unwound, and a clone of
                // `next` left here would keep the next thread (and its
                // stack) alive for ever once it ends too.
                drop(next);
                drop(g);
                self.switch_to(save, next_rsp);
                return;
            }
            // Nothing else can run.
            match leave {
                Leave::Yield => return,
                Leave::Sleep(d) if d <= now => return,
                Leave::Exit if g.sleepers.is_empty() && self.core == 0 => {
                    panic!("the last thread of core 0 ended with nothing left to run")
                }
                _ => {}
            }
            let own = match leave {
                Leave::Sleep(d) => Some(d),
                _ => None,
            };
            let deadline = own.into_iter().chain(g.sleepers.iter().map(|(d, _)| *d)).min();
            drop(g);
            // The core goes idle: free the stacks of the threads that ended
            // here (the running thread is not among them). Without this a
            // core that ran a thousand short threads and then nothing held
            // their stacks until its next switch (64 MiB after a load of
            // 1,000 connections on httpd).
            self.reap();
            let hooks = crate::idle_hooks();
            let sent = hooks.is_some_and(|h| (h.flush)());
            // The device's hooks run on the core its interrupts reach.
            let device = hooks.filter(|_| self.core == DEVICE_CORE);
            let stuck = deadline.is_none();
            let until = deadline.unwrap_or_else(|| now.saturating_add(deadlock_check_ticks()));
            if stuck && !self.stuck.load(Ordering::SeqCst) {
                self.stuck_progress.store(crate::total_progress(), Ordering::SeqCst);
                self.stuck.store(true, Ordering::SeqCst);
            }
            // Before halting, watch for a notification for a while: waking a
            // halted core costs an interrupt and a host wake-up (~65 µs
            // here, sometimes several hundred), and a reply from another
            // core, or an answer to what the idle hook just sent to a
            // device, often comes sooner. With a device's idle hooks the
            // core also polls the device meanwhile (its interrupts are off):
            // a frame that comes costs no interrupt. See
            // `SPIN_BEFORE_HALT_US`.
            let multi = crate::core_count() > 1 || sent;
            if multi {
                let spin_until = now.saturating_add(self.spin_ticks()).min(until);
                let mut first = true;
                while arch::rdtsc() < spin_until && !self.notified.load(Ordering::Relaxed) {
                    if device.is_some_and(|h| (h.poll)(first)) {
                        self.notified.store(true, Ordering::SeqCst);
                        break;
                    }
                    first = false;
                    core::hint::spin_loop();
                }
            }
            // Halt, unless a notification slipped in: a notifier sets
            // `notified` and then looks at `idle` (and kicks); this core sets
            // `idle` and then looks at `notified`. One of them sees the other.
            // The device's interrupts go back on first, and what came while
            // they were off counts as a notification.
            self.idle.store(true, Ordering::SeqCst);
            if device.is_some_and(|h| (h.arm)()) {
                self.notified.store(true, Ordering::SeqCst);
            }
            let halted = arch::rdtsc();
            if !self.notified.load(Ordering::SeqCst) {
                match p.arm {
                    Some(arm) => {
                        arm(until);
                        if arch::rdtsc() < until {
                            (p.idle)();
                        }
                    }
                    None => {
                        while arch::rdtsc() < until && !self.notified.load(Ordering::SeqCst) {
                            (p.idle)();
                        }
                    }
                }
            }
            self.idle.store(false, Ordering::SeqCst);
            if multi {
                self.adapt_spin(arch::rdtsc() - halted, self.notified.load(Ordering::Relaxed));
            }
            if stuck && arch::rdtsc() >= until {
                if let Some(threads) = crate::deadlocked(self) {
                    panic!(
                        "deadlock: all {threads} thread(s) on {} core(s) are blocked and nothing can wake them",
                        crate::core_count()
                    );
                }
                // A waiter re-checks now and then, whatever happened.
                if leave == Leave::Wait {
                    return;
                }
            }
        }
    }

    /// The current spin window, in TSC ticks.
    fn spin_ticks(&self) -> u64 {
        match self.spin.load(Ordering::Relaxed) {
            0 => us_to_ticks(SPIN_BEFORE_HALT_US),
            t => t,
        }
    }

    /// Adapt the spin window after a halt of `halted` ticks: a core woken
    /// by another soon after it halted (a message exchange whose replies
    /// take longer than the window) watches twice that long next time, up
    /// to [`SPIN_MAX_US`]; a long halt brings the window back to
    /// [`SPIN_BEFORE_HALT_US`].
    fn adapt_spin(&self, halted: u64, notified: bool) {
        let max = us_to_ticks(SPIN_MAX_US);
        let next = if notified && halted < max {
            halted.saturating_mul(2).clamp(us_to_ticks(SPIN_BEFORE_HALT_US), max)
        } else {
            0
        };
        self.spin.store(next, Ordering::Relaxed);
    }

    fn unstick(&self) {
        if self.stuck.load(Ordering::Relaxed) {
            self.stuck.store(false, Ordering::SeqCst);
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

    /// Threads of this core, the running one included.
    fn thread_count(&self) -> usize {
        let g = self.inner.lock();
        g.ready.len() + g.sleepers.len() + usize::from(g.current.is_some())
    }

    /// Body of every spawned thread (called from `arch`).
    fn run_thread(&self, thread: &Thread) -> ! {
        self.reap();
        let entry = thread.entry.lock().take();
        if let Some(f) = entry {
            f();
        }
        self.note_progress();
        self.switch_away(Leave::Exit);
        unreachable!("an ended thread was resumed");
    }
}

/// First Rust code of a new thread: `sched` and `thread` come from the
/// registers `arch::prepare` set up.
pub(crate) extern "C" fn thread_start(sched: usize, thread: usize) -> ! {
    // `spawn` passed a `&'static Scheduler` and a pointer to the thread,
    // which the scheduler keeps alive (ready queue, then `current`) while
    // it runs.
    let sched = arch::deref::<Scheduler>(sched);
    let thread = arch::deref::<Thread>(thread);
    sched.run_thread(thread)
}

/// All cores' schedulers.
pub struct System {
    cores: [Scheduler; MAX_CORES],
    count: AtomicUsize,
    next_id: AtomicU64,
    /// Deadlock checks made and deadlocks declared (the tests look).
    #[cfg(test)]
    checks: (AtomicU32, AtomicU32),
}

impl Default for System {
    fn default() -> Self {
        Self::new()
    }
}

impl System {
    /// A machine with one core (see [`System::set_core_count`]).
    pub const fn new() -> Self {
        let mut cores = [const { Scheduler::new(0) }; MAX_CORES];
        let mut i = 0;
        while i < MAX_CORES {
            cores[i].core = i;
            i += 1;
        }
        Self {
            cores,
            count: AtomicUsize::new(1),
            next_id: AtomicU64::new(MAX_CORES as u64),
            #[cfg(test)]
            checks: (AtomicU32::new(0), AtomicU32::new(0)),
        }
    }

    /// Set the number of cores (1 to [`MAX_CORES`]).
    pub fn set_core_count(&self, n: usize) {
        self.count.store(n.clamp(1, MAX_CORES), Ordering::Relaxed);
    }

    /// Number of cores.
    pub fn core_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The scheduler of `core`.
    pub fn core(&self, core: usize) -> &Scheduler {
        &self.cores[core]
    }

    fn cores(&self) -> &[Scheduler] {
        &self.cores[..self.core_count()]
    }

    /// Start `f` on a new thread of `core`; it runs when that core's
    /// current thread yields, waits or sleeps.
    pub fn spawn_on<F, T>(&'static self, core: CoreId, f: F) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_with(core, STACK_SIZE, f)
    }

    /// [`Self::spawn_on`] with a stack of `stack_size` bytes (at least
    /// [`MIN_STACK_SIZE`]).
    pub fn spawn_with<F, T>(
        &'static self,
        core: CoreId,
        stack_size: usize,
        f: F,
    ) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_named(core, stack_size, None, f)
    }

    /// [`Self::spawn_with`], the thread named `name` (in its stack
    /// overflow report).
    pub fn spawn_named<F, T>(
        &'static self,
        core: CoreId,
        stack_size: usize,
        name: Option<Box<str>>,
        f: F,
    ) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let stack_size = stack_size.max(MIN_STACK_SIZE);
        let c = core.0 as usize;
        if c >= self.core_count() {
            return Err(SpawnError::NoSuchCore { core, cores: self.core_count() });
        }
        let target = &self.cores[c];
        let shared = Arc::new(Joint {
            result: Mutex::new(None),
            done: AtomicBool::new(false),
            waiters: Waiters::new(),
        });
        let s = shared.clone();
        let entry: Entry = Box::new(move || {
            let v = f();
            *s.result.lock() = Some(v);
            s.done.store(true, Ordering::Release);
            s.waiters.notify();
        });
        let id = ThreadId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut stack = Stack::new(stack_size).ok_or(SpawnError::OutOfMemory)?;
        stack.name = name;
        LIVE_STACKS.fetch_add(1, Ordering::SeqCst);
        #[cfg(test)]
        TEST_LIVE.with(|c| c.set(c.get() + 1));
        // Moving the stack into the thread does not move its memory.
        let (base, stack_size) = (stack.base(), stack.size());
        let thread = Arc::new(Thread {
            id,
            rsp: AtomicUsize::new(0),
            stack: Some(stack),
            entry: Mutex::new(Some(entry)),
            waiting_since: AtomicU64::new(NOT_WAITING),
        });
        let sp = arch::prepare(
            base,
            stack_size,
            target as *const Scheduler as usize,
            Arc::as_ptr(&thread) as usize,
        );
        thread.rsp.store(sp, Ordering::Relaxed);
        target.enqueue(thread);
        self.notify(c);
        Ok(JoinHandle { id, core, shared })
    }

    /// Tell `core` that something it may wait for happened; kick it out of
    /// a halt when it is not the caller's core.
    pub(crate) fn notify(&self, core: usize) {
        let t = &self.cores[core];
        if Some(core) == crate::current_core_index() {
            // The core itself: it looks at the flag before it halts.
            t.notified.store(true, Ordering::Relaxed);
            return;
        }
        t.notified.store(true, Ordering::SeqCst);
        if !t.online.load(Ordering::SeqCst)
            && let Some(start) = crate::platform().start_cores
        {
            // A core not started yet looks at its work when it starts.
            start();
        }
        if t.idle.load(Ordering::SeqCst) {
            (crate::platform().kick)(core);
        }
    }

    /// Sum of every core's progress counter.
    pub(crate) fn total_progress(&self) -> u64 {
        self.cores().iter().map(|c| c.progress.load(Ordering::SeqCst)).fold(0, u64::wrapping_add)
    }

    /// Called by a stuck core whose check period passed: the number of
    /// threads when every core is stuck, none has a notification pending,
    /// and nothing progressed since `me` got stuck.
    pub(crate) fn deadlocked(&self, me: &Scheduler) -> Option<usize> {
        #[cfg(test)]
        self.checks.0.fetch_add(1, Ordering::SeqCst);
        let cores = self.cores();
        // A core that has not used its scheduler yet holds no thread, but
        // the boot core is then busy with the kernel's own start-up (which
        // takes what the host gives it: more than a check period on a
        // loaded host), not stuck.
        let all_stuck = cores.iter().all(|c| {
            (c.stuck.load(Ordering::SeqCst) || (!c.online.load(Ordering::SeqCst) && c.core != 0))
                && !c.notified.load(Ordering::SeqCst)
                && c.event_waiters.load(Ordering::SeqCst) == 0
        });
        if !all_stuck || self.total_progress() != me.stuck_progress.load(Ordering::SeqCst) {
            me.stuck_progress.store(self.total_progress(), Ordering::SeqCst);
            return None;
        }
        let threads: usize =
            cores.iter().filter(|c| c.online.load(Ordering::SeqCst)).map(|c| c.thread_count()).sum();
        // Secondary cores' idle threads are not the app's.
        let idle = cores.iter().skip(1).filter(|c| c.online.load(Ordering::SeqCst)).count();
        #[cfg(test)]
        self.checks.1.fetch_add(1, Ordering::SeqCst);
        Some(threads.saturating_sub(idle))
    }
}

/// The core device interrupts reach (the kernel routes them to core 0):
/// the one that runs a device's idle hooks ([`crate::IdleHooks`]).
pub(crate) const DEVICE_CORE: usize = 0;

/// How long a core with nothing to run watches for a notification before
/// it halts. It must exceed what waking a halted core costs (41–101 µs
/// measured on the paravirtual development host, `threads bench`):
/// otherwise two cores that pass messages fall into step, each halting
/// before the other's wake-up completes, and every round trip costs two
/// wake-ups (~150 µs instead of ~0.3 µs; seen with 30 µs).
pub const SPIN_BEFORE_HALT_US: u64 = 200;
/// The longest spin window (see `Scheduler::adapt_spin`): a wake-up of
/// the host's vCPU thread took up to ~0.6 ms on the development host.
pub const SPIN_MAX_US: u64 = 2000;

fn us_to_ticks(us: u64) -> u64 {
    crate::clock::tsc_khz().map_or(us << 11, |k| k * us / 1000)
}

fn deadlock_check_ticks() -> u64 {
    crate::clock::tsc_khz().map_or(DEADLOCK_CHECK_TICKS_UNKNOWN, |k| k * DEADLOCK_CHECK_MS)
}

/// The cores that wait for something: a bit per core. A waiter registers
/// its core, re-checks its condition, then waits; whoever changes the
/// condition calls [`Waiters::notify`] afterwards. One of the two sees the
/// other's write, so no wake-up is lost.
pub(crate) struct Waiters(AtomicU32);

const _: () = assert!(MAX_CORES <= 32);

impl Waiters {
    pub(crate) const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// Register the calling core.
    pub(crate) fn register(&self) {
        if let Some(c) = crate::current_core_index() {
            self.0.fetch_or(1 << c, Ordering::SeqCst);
        }
    }

    /// Notify every registered core.
    pub(crate) fn notify(&self) {
        // One locked exchange both orders the caller's change before the
        // look at the mask and takes the mask.
        let mut mask = self.0.swap(0, Ordering::SeqCst);
        if mask == 0 {
            return;
        }
        let Some(sys) = system() else { return };
        while mask != 0 {
            let c = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            sys.notify(c);
        }
    }

    /// Wait until `poll` returns `Some`, registering before each re-check.
    pub(crate) fn wait_for<T>(&self, mut poll: impl FnMut() -> Option<T>) -> T {
        loop {
            if let Some(v) = poll() {
                return v;
            }
            self.register();
            if let Some(v) = poll() {
                return v;
            }
            crate::wait();
        }
    }
}

/// What a thread and its [`JoinHandle`] share.
struct Joint<T> {
    result: Mutex<Option<T>>,
    done: AtomicBool,
    waiters: Waiters,
}

/// Owner of a spawned thread's result.
pub struct JoinHandle<T> {
    id: ThreadId,
    core: CoreId,
    shared: Arc<Joint<T>>,
}

impl<T> JoinHandle<T> {
    /// The thread's id.
    pub fn id(&self) -> ThreadId {
        self.id
    }

    /// The core the thread runs on.
    pub fn core(&self) -> CoreId {
        self.core
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Wait for the thread to end (letting the others run) and take its
    /// result.
    pub fn join(self) -> T {
        self.shared.waiters.wait_for(|| self.is_finished().then_some(()));
        self.shared.result.lock().take().expect("a finished thread left its result")
    }
}

/// The machine and the calling core. In the guest, one static machine and
/// the core from the platform; in host tests, per test thread.
#[cfg(not(test))]
mod here {
    use super::System;

    pub(crate) static SYSTEM: System = System::new();

    pub(crate) fn system() -> Option<&'static System> {
        crate::initialised().then_some(&SYSTEM)
    }

    pub(crate) fn core_index() -> Option<usize> {
        crate::initialised().then(|| (crate::platform().core)())
    }
}

#[cfg(test)]
mod here {
    use std::cell::Cell;

    use super::System;

    std::thread_local! {
        static HERE: Cell<Option<(&'static System, usize)>> = const { Cell::new(None) };
    }

    /// Make the calling test thread core `core` of `sys`.
    pub(crate) fn install(sys: &'static System, core: usize) {
        HERE.with(|c| c.set(Some((sys, core))));
    }

    pub(crate) fn system() -> Option<&'static System> {
        HERE.with(|c| c.get()).map(|(s, _)| s)
    }

    pub(crate) fn core_index() -> Option<usize> {
        HERE.with(|c| c.get()).map(|(_, i)| i)
    }
}

#[cfg(not(test))]
pub(crate) use here::SYSTEM;
#[cfg(test)]
pub(crate) use here::install;
pub(crate) use here::{core_index, system};

/// The scheduler of the calling core.
pub(crate) fn current() -> Option<&'static Scheduler> {
    let sys = system()?;
    Some(sys.core(core_index()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool as StdBool;

    /// A fresh one-core machine for the calling test thread.
    pub(crate) fn fresh() -> &'static Scheduler {
        let sys: &'static System = Box::leak(Box::new(System::new()));
        install(sys, 0);
        sys.core(0)
    }

    /// A fresh machine of `n` cores: the calling thread is core 0, and a
    /// host thread runs each other core's scheduler until the returned
    /// guard is dropped.
    pub(crate) fn machine(n: usize) -> (&'static System, Cores) {
        let sys: &'static System = Box::leak(Box::new(System::new()));
        sys.set_core_count(n);
        install(sys, 0);
        let stop: &'static StdBool = Box::leak(Box::new(StdBool::new(false)));
        let threads = (1..n)
            .map(|c| {
                std::thread::spawn(move || {
                    install(sys, c);
                    while !stop.load(Ordering::SeqCst) {
                        sys.core(c).wait();
                    }
                })
            })
            .collect();
        // Wait until every core runs its scheduler.
        while !(1..n).all(|c| sys.core(c).online.load(Ordering::SeqCst)) {
            std::thread::yield_now();
        }
        (sys, Cores { stop, threads })
    }

    /// The host threads standing in for secondary cores.
    pub(crate) struct Cores {
        stop: &'static StdBool,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Drop for Cores {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn spawned_threads_run_and_return_results() {
        let s = fresh();
        let handles: Vec<_> = (0..10u64).map(|i| crate::spawn(move || i * i)).collect();
        let sum: u64 = handles.into_iter().map(|h| h.join()).sum();
        assert_eq!(sum, (0..10).map(|i| i * i).sum());
        assert_eq!(s.ready_count(), 0);
    }

    #[test]
    fn yield_interleaves_threads_in_order() {
        let _s = fresh();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mk = |name: &'static str| {
            let log = log.clone();
            crate::spawn(move || {
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
        let outer = crate::spawn(move || {
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
            let hs: Vec<_> = (0..20u64).map(|i| crate::spawn(move || round + i)).collect();
            for (i, h) in hs.into_iter().enumerate() {
                assert_eq!(h.join(), round + i as u64);
            }
        }
        assert!(s.switches() >= 1000);
        s.yield_now();
        assert!(s.inner.lock().zombies.is_empty());
    }

    #[test]
    fn detached_threads_ending_together_free_their_stacks() {
        let s = fresh();
        let live = || TEST_LIVE.with(|c| c.get());
        let before = live();
        let go = Arc::new(StdBool::new(false));
        for _ in 0..10 {
            let go = go.clone();
            // Detached, as a server's connection threads.
            drop(crate::spawn(move || {
                while !go.load(Ordering::SeqCst) {
                    crate::yield_now();
                }
            }));
        }
        s.yield_now();
        assert_eq!(live(), before + 10);
        // Ending together: each hands the core to the next.
        go.store(true, Ordering::SeqCst);
        for _ in 0..20 {
            s.yield_now();
        }
        assert_eq!(live(), before, "stacks of ended threads still held");
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
                crate::spawn(move || {
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

    std::thread_local! {
        /// What the idle hooks saw on this host thread (each test's core).
        static IDLE: core::cell::Cell<[usize; 4]> = const { core::cell::Cell::new([0; 4]) };
        /// Work the stand-in device has for the idle poll.
        static DEVICE_WORK: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
        /// What the stand-in's flush says: more may come soon.
        static SOON: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
        /// Work the stand-in device has for the switch's look.
        static PENDING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
        /// How often the switch's look took work.
        static SWITCH_TAKEN: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }
    const FLUSHES: usize = 0;
    const FIRST_POLLS: usize = 1;
    const TAKEN: usize = 2;
    const ARMS: usize = 3;

    fn count(i: usize) -> usize {
        IDLE.with(|c| c.get()[i])
    }

    fn bump(i: usize) {
        IDLE.with(|c| {
            let mut v = c.get();
            v[i] += 1;
            c.set(v);
        });
    }

    /// Hooks of a stand-in device, counting per host thread (the hooks are
    /// global: every test's core runs them); its flush says `soon`.
    fn stand_in_device(soon: bool) {
        SOON.with(|s| s.set(soon));
        crate::set_idle_hooks(crate::IdleHooks {
            flush: || {
                bump(FLUSHES);
                SOON.with(|s| s.get())
            },
            poll: |first| {
                if first {
                    bump(FIRST_POLLS);
                }
                let work = DEVICE_WORK.with(|w| w.replace(false));
                if work {
                    bump(TAKEN);
                }
                work
            },
            arm: || {
                bump(ARMS);
                false
            },
            pending: || {
                let work = PENDING.with(|p| p.replace(false));
                if work {
                    SWITCH_TAKEN.with(|t| t.set(t.get() + 1));
                }
                work
            },
        });
    }

    /// A core about to halt runs the idle hooks first (a driver's batched
    /// notifications go out before the core sleeps), polls the device
    /// while it watches, and turns the device's interrupts back on before
    /// it halts.
    #[test]
    fn a_core_going_idle_runs_the_idle_hooks() {
        stand_in_device(true);
        let s = fresh();
        let before = [count(FLUSHES), count(FIRST_POLLS), count(ARMS)];
        s.sleep_until(arch::rdtsc() + 100_000);
        assert!(count(FLUSHES) > before[0], "the flush hook did not run");
        assert!(count(FIRST_POLLS) > before[1], "the core did not poll the device");
        assert!(count(ARMS) > before[2], "the core halted without re-arming the device");
    }

    /// A device that expects nothing soon lets its core halt at once (an
    /// idle appliance does not spin), interrupts back on.
    #[test]
    fn a_quiet_device_lets_its_core_halt_at_once() {
        stand_in_device(false);
        let s = fresh();
        let before = [count(FIRST_POLLS), count(ARMS)];
        s.sleep_until(arch::rdtsc() + 100_000);
        assert_eq!(count(FIRST_POLLS), before[0], "the core polled a quiet device");
        assert!(count(ARMS) > before[1], "the core halted without re-arming the device");
    }

    /// Work the device has when its core watches is taken by the poll hook,
    /// and the thread waiting for it looks again at once: no interrupt.
    #[test]
    fn an_idle_core_takes_device_work_and_wakes_its_waiter_without_an_interrupt() {
        stand_in_device(true);
        let _s = fresh();
        let taken = count(TAKEN);
        let mut looks = 0;
        crate::wait_for_event(|| {
            looks += 1;
            if looks == 1 {
                // The device gets work after the waiter's first look.
                DEVICE_WORK.with(|w| w.set(true));
                return None;
            }
            (count(TAKEN) > taken).then_some(())
        });
        assert_eq!(count(TAKEN), taken + 1);
        assert_eq!(looks, 2, "the waiter looked once before and once after the idle poll");
    }

    /// While the device's core runs threads (it never goes idle), work the
    /// device has wakes the thread waiting for it at the next switch: the
    /// device's interrupts may stay off while the core is busy.
    #[test]
    fn a_busy_core_looks_at_the_device_at_each_switch() {
        stand_in_device(true);
        let _s = fresh();
        let first_polls = count(FIRST_POLLS);
        let done = Arc::new(AtomicBool::new(false));
        let busy = {
            let done = done.clone();
            crate::spawn(move || {
                let mut switches = 0;
                while !done.load(Ordering::SeqCst) {
                    switches += 1;
                    if switches == 10 {
                        PENDING.with(|p| p.set(true));
                    }
                    crate::yield_now();
                }
                switches
            })
        };
        let taken = SWITCH_TAKEN.with(|t| t.get());
        // The waiter looks again once the switch's look took the work.
        crate::wait_for_event(|| (SWITCH_TAKEN.with(|t| t.get()) > taken).then_some(()));
        done.store(true, Ordering::SeqCst);
        assert!(busy.join() >= 10);
        assert_eq!(count(FIRST_POLLS), first_polls, "the core went idle");
    }

    /// Work the device has that no thread waits for is taken by the hook
    /// once: it does not keep the core from going idle (a core whose every
    /// thread waits on something else halts as before).
    #[test]
    fn device_work_nobody_waits_for_does_not_keep_the_core_busy() {
        stand_in_device(false);
        let s = fresh();
        PENDING.with(|p| p.set(true));
        let arms = count(ARMS);
        s.sleep_until(arch::rdtsc() + 100_000);
        assert!(!PENDING.with(|p| p.get()), "the switch did not take the work");
        assert_eq!(SWITCH_TAKEN.with(|t| t.get()), 1);
        assert!(count(ARMS) > arms, "the core never went idle");
    }

    fn deadlock_message(r: std::thread::Result<u8>) -> String {
        let err = r.expect_err("the deadlock must panic");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_deadlock_is_reported_not_a_hang() {
        let result = std::thread::spawn(|| {
            let _s = fresh();
            let (tx_a, rx_a) = crate::channel::bounded::<u8>(1);
            let (tx_b, rx_b) = crate::channel::bounded::<u8>(1);
            // Each waits for the other's message first: neither sends.
            let a = crate::spawn(move || {
                let v = rx_b.recv();
                let _ = tx_a.send(1);
                v
            });
            let _ = rx_a.recv();
            drop(tx_b);
            a.join().unwrap_or(0)
        })
        .join();
        let msg = deadlock_message(result);
        assert!(msg.contains("deadlock: all 2 thread(s) on 1 core(s) are blocked"), "{msg}");
    }

    #[test]
    fn a_deadlock_across_cores_is_reported() {
        let result = std::thread::spawn(|| {
            let (_sys, _cores) = machine(2);
            let (tx_a, rx_a) = crate::channel::bounded::<u8>(1);
            let (tx_b, rx_b) = crate::channel::bounded::<u8>(1);
            let a = crate::spawn_on(CoreId(1), move || {
                let v = rx_b.recv();
                let _ = tx_a.send(1);
                v
            })
            .unwrap();
            let _ = rx_a.recv();
            drop(tx_b);
            a.join().unwrap_or(0)
        })
        .join();
        let msg = deadlock_message(result);
        assert!(msg.contains("deadlock: all 2 thread(s) on 2 core(s) are blocked"), "{msg}");
    }

    /// The boot core busy with work that is no scheduler's business yet
    /// (the kernel's initialisation; on a loaded host it took more than
    /// the check period) while a secondary core idles: no deadlock. Seen
    /// as "deadlock: all 0 thread(s) on 2 core(s)" on a kvstore boot while
    /// both host CPUs were busy.
    #[test]
    fn a_boot_core_busy_before_its_scheduler_is_no_deadlock() {
        let (sys, _cores) = machine(2);
        assert!(!sys.core(0).online.load(Ordering::SeqCst), "core 0 has not used its scheduler yet");
        // Several check periods (20 ms, or 2^26 TSC ticks here).
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(sys.checks.0.load(Ordering::SeqCst) > 0, "core 1 looked for a deadlock");
        assert_eq!(sys.checks.1.load(Ordering::SeqCst), 0, "a deadlock was declared");
    }

    #[test]
    fn long_waits_with_progress_are_not_deadlocks() {
        let _s = fresh();
        let (tx, rx) = crate::channel::bounded::<u32>(1);
        let p = crate::spawn(move || {
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

    #[test]
    fn threads_run_on_the_core_they_were_spawned_on() {
        let (_sys, _cores) = machine(3);
        let hs: Vec<_> = (0..3u32)
            .map(|c| crate::spawn_on(CoreId(c), move || (crate::current_core(), c)).unwrap())
            .collect();
        for (c, h) in hs.into_iter().enumerate() {
            assert_eq!(h.core(), CoreId(c as u32));
            let (ran_on, asked) = h.join();
            assert_eq!(ran_on, CoreId(asked));
        }
        assert!(matches!(
            crate::spawn_on(CoreId(3), || ()),
            Err(SpawnError::NoSuchCore { core: CoreId(3), cores: 3 })
        ));
    }

    #[test]
    fn a_thread_that_waits_for_another_core_sleeps_meanwhile() {
        let (_sys, _cores) = machine(2);
        let t0 = arch::rdtsc();
        let h = crate::spawn_on(CoreId(1), move || {
            crate::sleep_until_ticks(t0 + 5_000_000);
            7
        })
        .unwrap();
        assert_eq!(h.join(), 7);
        assert!(arch::rdtsc() >= t0 + 5_000_000);
    }
}
