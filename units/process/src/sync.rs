//! Synchronisation that yields instead of spinning.

use core::ops::{Deref, DerefMut};

/// A mutual-exclusion lock. Waiting for it yields to the other threads of
/// the core, so a thread holding it across a yield does not stall them.
pub struct Mutex<T> {
    inner: spin::Mutex<T>,
}

/// Access to the value of a locked [`Mutex`]; unlocks when dropped.
pub struct MutexGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self { inner: spin::Mutex::new(value) }
    }

    /// Lock, yielding while another thread holds the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        loop {
            if let Some(guard) = self.inner.try_lock() {
                return MutexGuard { guard };
            }
            crate::wait();
        }
    }

    /// Lock if free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.inner.try_lock().map(|guard| MutexGuard { guard })
    }

    /// The value, when no one else can hold the lock.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // The lock is released right after this (when `guard` drops).
        crate::note_progress();
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::tests::fresh;
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    #[test]
    fn contended_counter_stays_exact() {
        let s = fresh();
        let counter = Arc::new(Mutex::new(0u64));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = counter.clone();
                s.spawn(move || {
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
}
