//! Torito process unit: threads, cooperative scheduling on every core,
//! synchronisation, channels and a monotonic clock.
//!
//! Toro's model: each core runs its own queue of cooperative threads; a
//! thread is created on a chosen core ([`spawn_on`]) and stays there; a
//! thread runs until it yields, blocks or ends. Everything here runs at
//! CPL3 and never masks interrupts.
//!
//! - Threads: [`spawn`], [`spawn_on`], [`JoinHandle::join`], [`yield_now`],
//!   [`sleep`], [`current_thread`], [`current_core`], [`core_count`].
//! - Synchronisation: [`sync::Mutex`], [`sync::Condvar`], bounded MPSC
//!   [`channel`]s; all of them work across cores.
//! - Per-core data: [`PerCore`].
//! - Time: [`clock`] (TSC, wall clock when the host gives it).
//!
//! Blocking calls let the core's other threads run; when none can, the
//! core halts until a sleeper's deadline or until another core notifies it
//! (a wake-up interrupt, see [`Platform`]). Cores share nothing but the
//! objects threads hand each other; a short spin lock guards each of them.
//!
//! ```ignore
//! let h = unit_process::spawn_on(unit_process::CoreId(1), || 6 * 7)?;
//! assert_eq!(h.join(), 42);
//! ```

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

mod arch;
pub mod channel;
pub mod clock;
mod percore;
mod sched;
mod stack;
pub mod sync;

pub use percore::{CacheLine, PerCore};
pub use sched::{
    DEADLOCK_CHECK_MS, JoinHandle, MIN_STACK_SIZE, SPIN_BEFORE_HALT_US, SPIN_MAX_US, STACK_SIZE, Scheduler,
    System, ThreadId,
};
pub use stack::{Overflow, stack_overflow_at};

/// The most cores the process unit (and the kernel's per-core tables)
/// support.
pub const MAX_CORES: usize = 16;

use core::fmt;

/// Identifier of a CPU core, 0 for the boot core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub u32);

/// Why a thread could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// The core does not exist.
    NoSuchCore {
        /// The core asked for.
        core: CoreId,
        /// How many cores there are.
        cores: usize,
    },
    /// The process unit was not initialised.
    NotInitialised,
    /// The heap has no room for the thread's stack.
    OutOfMemory,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoSuchCore { core, cores } => {
                write!(f, "cannot spawn on core {}: this machine has {cores} core(s)", core.0)
            }
            SpawnError::NotInitialised => f.write_str("the process unit is not initialised"),
            SpawnError::OutOfMemory => f.write_str("no memory left for the thread's stack"),
        }
    }
}

impl core::error::Error for SpawnError {}

/// What the kernel provides for waiting without spinning and for
/// several cores.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// Arm this core's one-shot timer interrupt at a TSC value; `None`
    /// when there is no timer (waiting then spins on the clock).
    pub arm: Option<fn(u64)>,
    /// Halt until an interrupt; returns at once if a wake-up (timer or
    /// [`Platform::kick`]) arrived since the last [`Platform::clear_wake`].
    pub idle: fn(),
    /// The calling core's index.
    pub core: fn() -> usize,
    /// Forget this core's pending wake-ups (before looking for work).
    pub clear_wake: fn(),
    /// Interrupt core `i` so that it leaves [`Platform::idle`].
    pub kick: fn(usize),
    /// Unmap the 4 KiB page at this address (a thread stack's guard page)
    /// and flush it from the calling core's TLB; the frame it mapped, or
    /// `None` when it could not (`None`: stacks get no guard page).
    pub guard: Option<fn(usize) -> Option<u64>>,
    /// Map a guard page back to its frame.
    pub unguard: Option<fn(usize, u64)>,
    /// Drop the calling core's translation of a page (`invlpg`).
    pub flush: Option<fn(usize)>,
    /// Start the secondary cores, if the kernel left that for later (does
    /// nothing after the first call): called before anything is handed to
    /// a core that is not running yet, which takes it as it starts. An app
    /// that never gives another core work never starts one.
    pub start_cores: Option<fn()>,
}

impl Platform {
    /// One core, no timer, no halting: waiting spins (host tests, hosts
    /// without a usable timer); no guard pages.
    pub const SPIN: Platform = Platform {
        arm: None,
        idle: core::hint::spin_loop,
        core: || 0,
        clear_wake: || {},
        kick: |_| {},
        guard: None,
        unguard: None,
        flush: None,
        start_cores: None,
    };
}

static PLATFORM: spin::Once<Platform> = spin::Once::new();

pub(crate) fn platform() -> Platform {
    PLATFORM.get().copied().unwrap_or(UNSET)
}

/// The platform before [`init`]: [`Platform::SPIN`]. In host tests, whose
/// cores are host threads, an idle core gives its host CPU away instead
/// of spinning on it: with more such threads than free CPUs (a busy
/// machine), a spinning idle core kept the thread it waited for off the
/// CPU for a whole time slice at each hand-over, and a 20,000-message
/// ping-pong across two cores took minutes instead of a second.
#[cfg(not(test))]
const UNSET: Platform = Platform::SPIN;
#[cfg(test)]
const UNSET: Platform = Platform { idle: std::thread::yield_now, ..Platform::SPIN };

/// A wait without a scheduler: spin (in host tests, give the CPU away,
/// as [`UNSET`] says why).
fn relax() {
    #[cfg(test)]
    std::thread::yield_now();
    #[cfg(not(test))]
    core::hint::spin_loop();
}

#[cfg(not(test))]
pub(crate) fn initialised() -> bool {
    PLATFORM.is_completed()
}

/// Set the process unit up, on the boot core: `tsc_khz` is the TSC
/// frequency (0 when unknown); `wall_clock` is `(ns since the Unix epoch,
/// TSC at that moment)` when the host gives the time; `cores` is the
/// number of cores (each other core then calls [`run_secondary`]). The
/// calling code becomes thread 0 of core 0.
pub fn init(tsc_khz: u64, platform: Platform, wall_clock: Option<(u64, u64)>, cores: usize) {
    clock::set_tsc_khz(tsc_khz);
    if let Some((ns, tsc)) = wall_clock {
        clock::set_wall_clock(ns, tsc);
    }
    #[cfg(not(test))]
    sched::SYSTEM.set_core_count(cores);
    #[cfg(test)]
    let _ = cores;
    PLATFORM.call_once(|| platform);
}

/// The scheduler loop of a secondary core (after [`init`] on core 0): its
/// boot thread becomes the idle thread, which waits for ever while the
/// threads spawned on this core run.
pub fn run_secondary() -> ! {
    let s = sched::current().expect("unit_process::run_secondary before unit_process::init");
    loop {
        s.wait();
    }
}

/// Whether waiting halts the core (a timer is available) rather than spins.
pub fn has_timer() -> bool {
    platform().arm.is_some()
}

/// Sleep for `d`: other threads run meanwhile; when none can, the core
/// halts until the earliest wake-up.
///
/// Panics when the TSC frequency is unknown (see [`clock::tsc_khz`]).
pub fn sleep(d: core::time::Duration) {
    let khz = clock::tsc_khz().expect("sleep needs the TSC frequency, which this host does not give");
    let ticks = (d.as_nanos() * u128::from(khz) / 1_000_000).min(u128::from(u64::MAX / 2)) as u64;
    sleep_until_ticks(clock::ticks().saturating_add(ticks));
}

/// Sleep until the TSC reaches `deadline`.
pub fn sleep_until_ticks(deadline: u64) {
    match sched::current() {
        Some(s) => s.sleep_until(deadline),
        None => {
            while clock::ticks() < deadline {
                relax();
            }
        }
    }
}

/// Number of cores threads can run on.
pub fn core_count() -> usize {
    sched::system().map_or(1, |s| s.core_count())
}

/// The core the caller runs on.
pub fn current_core() -> CoreId {
    CoreId(current_core_index().unwrap_or(0) as u32)
}

pub(crate) fn current_core_index() -> Option<usize> {
    sched::core_index()
}

/// The calling thread's identifier (`None` before [`init`]).
pub fn current_thread() -> Option<ThreadId> {
    sched::current().map(|s| s.current_id())
}

/// Threads spawned whose stacks are not freed yet (running, waiting, or
/// ended and not yet reaped): for status pages and leak checks.
pub fn live_threads() -> usize {
    sched::LIVE_STACKS.load(core::sync::atomic::Ordering::Relaxed)
}

/// Run `f` on a new thread of the current core, with a stack of
/// [`STACK_SIZE`] (64 KiB; [`Builder::stack_size`] for more). A thread
/// that runs past the bottom of its stack stops the machine with "stack
/// overflow in thread N" at its next switch.
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match spawn_on(current_core(), f) {
        Ok(h) => h,
        Err(e) => panic!("unit_process::spawn: {e}"),
    }
}

/// Run `f` on a new thread of `core`. The thread stays on that core; it
/// runs once the core's current thread yields, waits or sleeps (a halted
/// core is woken).
pub fn spawn_on<F, T>(core: CoreId, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    sched::system().ok_or(SpawnError::NotInitialised)?.spawn_on(core, f)
}

/// Threads with settings, as `std::thread::Builder`:
/// `Builder::new().stack_size(256 * 1024).spawn(f)`.
#[derive(Clone, Debug)]
pub struct Builder {
    stack_size: usize,
    core: Option<CoreId>,
    name: Option<alloc::string::String>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A thread on the current core with a [`STACK_SIZE`] stack.
    pub fn new() -> Self {
        Builder { stack_size: STACK_SIZE, core: None, name: None }
    }

    /// Name it (its stack overflow report says the name).
    pub fn name(mut self, name: impl Into<alloc::string::String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Its stack, in bytes (at least [`MIN_STACK_SIZE`], rounded up to whole
    /// 4 KiB pages; only the pages it uses are touched). An unmapped guard
    /// page lies below it: running past its bottom stops the machine with
    /// "stack overflow in thread N on core C".
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// Run it on `core` (default: the current one).
    pub fn core(mut self, core: CoreId) -> Self {
        self.core = Some(core);
        self
    }

    /// Start the thread.
    pub fn spawn<F, T>(self, f: F) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let core = self.core.unwrap_or_else(current_core);
        let name = self.name.map(alloc::string::String::into_boxed_str);
        sched::system().ok_or(SpawnError::NotInitialised)?.spawn_named(core, self.stack_size, name, f)
    }
}

/// Let the other threads of this core run; returns when this thread is
/// scheduled again (at once when it is the only one ready).
pub fn yield_now() {
    match sched::current() {
        Some(s) => s.yield_now(),
        None => relax(),
    }
}

/// What a device driver does for a core that is about to go idle (no
/// thread of its own can run): see [`set_idle_hooks`].
#[derive(Clone, Copy, Debug)]
pub struct IdleHooks {
    /// Run by every core as it goes idle, before it watches or halts: send
    /// what was held back (the network unit's transmit ring). Returns
    /// whether work may come soon (it sent something that may be answered,
    /// or work came lately): only then does a core alone watch before it
    /// halts (on a machine of several cores, every core does).
    pub flush: fn() -> bool,
    /// Run again and again by the core that device interrupts reach (core
    /// 0: the kernel routes them there) while it watches before halting,
    /// the first time with `true`: keep the device from interrupting and
    /// do the work it has (take the frames it received), so that waiting
    /// threads find it done. Returns whether there was work. It must be
    /// cheap when there is none.
    pub poll: fn(first: bool) -> bool,
    /// Run by that core just before it halts: let the device interrupt
    /// again, then say whether work came meanwhile (then it does not halt).
    pub arm: fn() -> bool,
    /// Run by that core at each switch between its threads: do the work
    /// the device has (as `poll` does) and say whether there was some. A
    /// driver may keep the device from interrupting for as long as the
    /// core runs threads (an interrupt cannot take the core from a running
    /// thread anyway, it only makes the waiting threads look again at the
    /// next switch): this look stands for the interrupt, and `arm` lets it
    /// interrupt again before the core halts. It must take the work, not
    /// only see it (work no waiting thread takes, seen at every switch,
    /// would keep the core from ever going idle), be cheap when there is
    /// none, and not block.
    pub pending: fn() -> bool,
}

/// Whether the caller runs on the core device interrupts reach (core 0),
/// whose switches and idle times run the device's [`IdleHooks`].
pub fn on_device_core() -> bool {
    current_core_index().unwrap_or(0) == sched::DEVICE_CORE
}

/// Register the idle hooks of a device driver that batches its
/// notifications and interrupts (the network unit's). A core going idle
/// runs `flush`, watches for a while, then halts; the core device
/// interrupts reach polls the device with `poll` while it watches, with
/// the device's interrupts off, and turns them on with `arm` before it
/// halts: work that comes while it watches costs no interrupt (on a
/// paravirtual host an interrupt costs a few exits, a halted core a
/// wake-up of ~65 µs), and work that comes while it is halted still wakes
/// it. While that core runs threads, it asks `pending` at each switch, so
/// the device's interrupts may stay off then too. The hooks run on the
/// thread that is leaving, outside the scheduler's locks; they must not
/// block. One set of hooks; a second registration is ignored.
pub fn set_idle_hooks(hooks: IdleHooks) {
    IDLE_HOOKS.call_once(|| hooks);
}

static IDLE_HOOKS: spin::Once<IdleHooks> = spin::Once::new();

/// The registered idle hooks.
pub(crate) fn idle_hooks() -> Option<&'static IdleHooks> {
    IDLE_HOOKS.get()
}

/// Wait until `poll` returns `Some`, for an event that an interrupt
/// signals to the calling core (a device's): the interrupt must mark the
/// core notified (see [`notification_flag`]). Other threads run meanwhile;
/// the core halts when none can. A core waiting so is never taken for
/// deadlocked: the device may take its time.
pub fn wait_for_event<T>(mut poll: impl FnMut() -> Option<T>) -> T {
    let s = sched::current();
    if let Some(s) = s {
        s.event_waits(1);
    }
    let v = loop {
        if let Some(v) = poll() {
            break v;
        }
        wait();
    };
    if let Some(s) = s {
        s.event_waits(-1);
    }
    note_progress();
    v
}

/// The address of core `core`'s "notified" flag, for interrupt handlers
/// that wake threads waiting in [`wait_for_event`]: storing a non-zero byte
/// there (and waking the core from its halt) makes them look again.
/// `None` before [`init`] or for a core that does not exist.
pub fn notification_flag(core: CoreId) -> Option<*const core::sync::atomic::AtomicBool> {
    let sys = sched::system()?;
    ((core.0 as usize) < sys.core_count()).then(|| sys.core(core.0 as usize).notified_flag())
}

/// Record that something a waiting thread may wait for has happened (used
/// by the blocking primitives; see deadlock detection in [`Scheduler`]).
pub(crate) fn note_progress() {
    if let Some(s) = sched::current() {
        s.note_progress();
    }
}

/// Wait for a notification (used by blocking calls, after registering in
/// the object's waiters): see [`Scheduler::wait`].
pub(crate) fn wait() {
    match sched::current() {
        Some(s) => s.wait(),
        None => relax(),
    }
}

pub(crate) fn total_progress() -> u64 {
    sched::system().map_or(0, |s| s.total_progress())
}

pub(crate) fn deadlocked(me: &Scheduler) -> Option<usize> {
    sched::system()?.deadlocked(me)
}
