//! Torito process unit: threads, cooperative scheduling, synchronisation,
//! channels and a monotonic clock.
//!
//! Toro's model: each core runs its own queue of cooperative threads; a
//! thread is created on a chosen core and stays there; a thread runs until
//! it yields, blocks or ends. Everything here runs at CPL3 and never masks
//! interrupts.
//!
//! Status (first step of the process issue): one core. Threads ([`spawn`],
//! [`JoinHandle::join`], [`yield_now`]), a yielding [`sync::Mutex`], bounded
//! MPSC [`channel`]s, and a TSC-based [`clock`]. Blocking calls wait by
//! yielding to other threads. Still to come: sleeping with a timer and
//! idling with `hlt`, interrupts, several cores.
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

/// Set the process unit up on the boot core; `tsc_khz` is the TSC
/// frequency (0 when unknown). The calling code becomes thread 0.
pub fn init(tsc_khz: u64) {
    clock::set_tsc_khz(tsc_khz);
    sched::install(&BOOT_CORE);
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
/// scheduled again (at once when it is the only one).
pub fn yield_now() {
    match sched::current() {
        Some(s) => s.yield_now(),
        None => core::hint::spin_loop(),
    }
}
