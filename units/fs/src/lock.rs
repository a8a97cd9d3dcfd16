//! Locks that let other threads of the same core run while they wait.
//!
//! The scheduler is cooperative: a thread that holds a lock across a
//! device wait (a disk request sleeps until its interrupt) must not be
//! waited for by a thread that spins on the same core without yielding,
//! or neither ever runs again. So a waiting thread calls the relax hook,
//! which the kernel sets to the process unit's `yield_now` when the app
//! has that unit (and which spins otherwise: then there is one thread).

use spin::Once;
use spin::relax::RelaxStrategy;

static RELAX: Once<fn()> = Once::new();

/// Set what a thread waiting for a lock does (once; later calls are
/// ignored).
pub fn set_relax(f: fn()) {
    RELAX.call_once(|| f);
}

/// Yield to other threads while waiting, where there are threads.
pub struct Yield;

impl RelaxStrategy for Yield {
    fn relax() {
        match RELAX.get() {
            Some(f) => f(),
            None => core::hint::spin_loop(),
        }
    }
}

/// A mutex whose waiters yield.
pub type Mutex<T> = spin::mutex::SpinMutex<T, Yield>;
/// A reader-writer lock whose waiters yield.
pub type RwLock<T> = spin::rwlock::RwLock<T, Yield>;
