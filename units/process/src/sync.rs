//! Synchronisation that waits instead of spinning: a [`Mutex`] and a
//! [`Condvar`], usable from threads on any core.
//!
//! A thread that waits lets the other threads of its core run; when none
//! can, the core halts until the holder (on whichever core) releases the
//! lock or signals the condition. The only spinning is on the short
//! internal locks.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sched::Waiters;

/// A mutual-exclusion lock. Waiting for it yields to the other threads of
/// the core (and halts the core when none can run), so a thread holding it
/// across a yield or a sleep does not stall anything but its contenders.
pub struct Mutex<T> {
    inner: spin::Mutex<T>,
    waiters: Waiters,
}

/// Access to the value of a locked [`Mutex`]; unlocks when dropped.
pub struct MutexGuard<'a, T> {
    /// `None` only while dropping.
    guard: Option<spin::MutexGuard<'a, T>>,
    mutex: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self { inner: spin::Mutex::new(value), waiters: Waiters::new() }
    }

    /// Lock, waiting while another thread holds the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.waiters.wait_for(|| self.try_lock())
    }

    /// Lock if free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.inner.try_lock().map(|guard| MutexGuard { guard: Some(guard), mutex: self })
    }

    /// The value, when no one else can hold the lock.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // Unlock first, then tell the waiters.
        drop(self.guard.take());
        crate::note_progress();
        self.mutex.waiters.notify();
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_deref().expect("a live guard")
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_deref_mut().expect("a live guard")
    }
}

/// A condition variable: threads wait for a condition on data guarded by a
/// [`Mutex`]; whoever changes it calls [`Condvar::notify_all`]. As
/// everywhere, a waiter re-checks its condition in a loop (wake-ups may be
/// spurious).
///
/// ```ignore
/// let mut ready = lock.lock();
/// while !*ready {
///     ready = cond.wait(ready);
/// }
/// ```
pub struct Condvar {
    sequence: AtomicU64,
    waiters: Waiters,
}

impl Default for Condvar {
    fn default() -> Self {
        Self::new()
    }
}

impl Condvar {
    /// A condition variable.
    pub const fn new() -> Self {
        Self { sequence: AtomicU64::new(0), waiters: Waiters::new() }
    }

    /// Unlock `guard`, wait for a notification, lock again.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let seen = self.sequence.load(Ordering::SeqCst);
        let mutex = guard.mutex;
        self.waiters.register();
        drop(guard);
        self.waiters.wait_for(|| (self.sequence.load(Ordering::SeqCst) != seen).then_some(()));
        mutex.lock()
    }

    /// Wake every waiter.
    pub fn notify_all(&self) {
        self.sequence.fetch_add(1, Ordering::SeqCst);
        crate::note_progress();
        self.waiters.notify();
    }

    /// Wake a waiter (this implementation wakes them all; each re-checks).
    pub fn notify_one(&self) {
        self.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoreId;
    use crate::sched::tests::{fresh, machine};
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    #[test]
    fn contended_counter_stays_exact() {
        let _s = fresh();
        let counter = Arc::new(Mutex::new(0u64));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = counter.clone();
                crate::spawn(move || {
                    for _ in 0..1000 {
                        let mut g = c.lock();
                        let v = *g;
                        // Hold the lock across a yield: the others must wait.
                        crate::yield_now();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join();
        }
        assert_eq!(*counter.lock(), 8000);
    }

    #[test]
    fn contended_counter_from_every_core_stays_exact() {
        let (_sys, _cores) = machine(3);
        let counter = Arc::new(Mutex::new(0u64));
        let hs: Vec<_> = (0..6u32)
            .map(|i| {
                let c = counter.clone();
                crate::spawn_on(CoreId(i % 3), move || {
                    for _ in 0..2000 {
                        let mut g = c.lock();
                        let v = *g;
                        if v.is_multiple_of(7) {
                            crate::yield_now();
                        }
                        *g = v + 1;
                    }
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join();
        }
        assert_eq!(*counter.lock(), 12_000);
    }

    #[test]
    fn condvar_wakes_a_waiter_on_another_core() {
        let (_sys, _cores) = machine(2);
        let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
        let p = pair.clone();
        let h = crate::spawn_on(CoreId(1), move || {
            let (lock, cond) = &*p;
            let mut v = lock.lock();
            while *v < 3 {
                v = cond.wait(v);
            }
            *v
        })
        .unwrap();
        for _ in 0..3 {
            let (lock, cond) = &*pair;
            *lock.lock() += 1;
            cond.notify_all();
            crate::yield_now();
        }
        assert_eq!(h.join(), 3);
    }
}
