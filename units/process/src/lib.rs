//! Torito process unit: threads, cooperative scheduling, synchronisation,
//! channels and a monotonic clock.
//!
//! Toro's model: each core runs its own queue of cooperative threads; a
//! thread is created on a chosen core and stays there; a thread runs until
//! it yields, blocks or ends. Everything here runs at CPL3 and never masks
//! interrupts.
//!
//! Status (steps 1–2 of the process issue): one core. Threads ([`spawn`],
//! [`JoinHandle::join`], [`yield_now`]), [`sleep`], a yielding
//! [`sync::Mutex`], bounded MPSC [`channel`]s, and a TSC-based [`clock`].
//! Blocking calls wait by yielding to the other threads; when none is
//! ready, the core halts until the next wake-up (with the kernel's timer,
//! see [`Platform`]). Still to come: several cores.
//!
//! ```ignore
//! let h = unit_process::spawn(|| 6 * 7);
//! assert_eq!(h.join(), 42);
//! ```

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

mod arch;
pub mod channel;
pub mod clock;
mod sched;
pub mod sync;

pub use sched::{JoinHandle, Scheduler, ThreadId};

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
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoSuchCore { core, cores } => {
                write!(f, "cannot spawn on core {}: this machine has {cores} core(s)", core.0)
            }
            SpawnError::NotInitialised => f.write_str("the process unit is not initialised"),
        }
    }
}

impl core::error::Error for SpawnError {}

/// The boot core's scheduler (one core for now).
static BOOT_CORE: Scheduler = Scheduler::new();

/// What the kernel provides for waiting without spinning.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// Arm a one-shot timer interrupt at a TSC value; `None` when there is
    /// no timer (waiting then spins on the clock).
    pub arm: Option<fn(u64)>,
    /// Halt until an interrupt; returns at once if the armed timer has
    /// already fired.
    pub idle: fn(),
}

impl Platform {
    /// No timer, no halting: waiting spins (host tests, hosts without a
    /// usable timer).
    pub const SPIN: Platform = Platform { arm: None, idle: core::hint::spin_loop };
}

static PLATFORM: spin::Once<Platform> = spin::Once::new();

pub(crate) fn platform() -> Platform {
    PLATFORM.get().copied().unwrap_or(Platform::SPIN)
}

/// Set the process unit up on the boot core; `tsc_khz` is the TSC
/// frequency (0 when unknown); `wall_clock` is `(ns since the Unix epoch,
/// TSC at that moment)` when the host gives the time. The calling code
/// becomes thread 0.
pub fn init(tsc_khz: u64, platform: Platform, wall_clock: Option<(u64, u64)>) {
    clock::set_tsc_khz(tsc_khz);
    if let Some((ns, tsc)) = wall_clock {
        clock::set_wall_clock(ns, tsc);
    }
    PLATFORM.call_once(|| platform);
    sched::install(&BOOT_CORE);
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
                core::hint::spin_loop();
            }
        }
    }
}

/// Number of cores threads can run on.
pub fn core_count() -> usize {
    1
}

/// The core the caller runs on.
pub fn current_core() -> CoreId {
    CoreId(0)
}

/// The calling thread's identifier (`None` before [`init`]).
pub fn current_thread() -> Option<ThreadId> {
    sched::current().map(|s| s.current_id())
}

/// Run `f` on a new thread of the current core.
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match sched::current() {
        Some(s) => s.spawn(f),
        None => panic!("unit_process::spawn called before unit_process::init"),
    }
}

/// Run `f` on a new thread of `core`.
pub fn spawn_on<F, T>(core: CoreId, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if core.0 as usize >= core_count() {
        return Err(SpawnError::NoSuchCore { core, cores: core_count() });
    }
    sched::current().map(|s| s.spawn(f)).ok_or(SpawnError::NotInitialised)
}

/// Let the other threads of this core run; returns when this thread is
/// scheduled again (at once when it is the only one ready).
pub fn yield_now() {
    match sched::current() {
        Some(s) => s.yield_now(),
        None => core::hint::spin_loop(),
    }
}

/// Record that something a waiting thread may wait for has happened (used
/// by the blocking primitives; see deadlock detection in [`Scheduler`]).
pub(crate) fn note_progress() {
    if let Some(s) = sched::current() {
        s.note_progress();
    }
}

/// Wait for something another thread will do (used by blocking calls):
/// like [`yield_now`], but when no thread is ready and some sleep, the core
/// halts until the first of them wakes.
pub(crate) fn wait() {
    match sched::current() {
        Some(s) => s.wait(),
        None => core::hint::spin_loop(),
    }
}
