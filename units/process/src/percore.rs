//! Per-core data: one slot per core, each on its own cache line, so cores
//! never contend for a line they do not share.

use crate::{CoreId, MAX_CORES};

/// A value alone on its cache line(s).
#[repr(align(128))]
pub struct CacheLine<T>(pub T);

impl<T> CacheLine<T> {
    /// `value`, padded.
    pub const fn new(value: T) -> Self {
        Self(value)
    }
}

/// A value per core. The calling core reaches its own with [`PerCore::get`];
/// any core can read another's with [`PerCore::of`] (for statistics, say:
/// use atomics or locks inside `T` for what several cores write).
///
/// ```ignore
/// static HITS: PerCore<AtomicU64> =
///     PerCore::new([const { CacheLine::new(AtomicU64::new(0)) }; MAX_CORES]);
/// HITS.get().fetch_add(1, Ordering::Relaxed);
/// let total: u64 = HITS.iter().map(|h| h.load(Ordering::Relaxed)).sum();
/// ```
pub struct PerCore<T> {
    slots: [CacheLine<T>; MAX_CORES],
}

impl<T> PerCore<T> {
    /// One value per possible core.
    pub const fn new(slots: [CacheLine<T>; MAX_CORES]) -> Self {
        Self { slots }
    }

    /// The calling core's value.
    pub fn get(&self) -> &T {
        &self.slots[crate::current_core().0 as usize % MAX_CORES].0
    }

    /// Core `core`'s value.
    pub fn of(&self, core: CoreId) -> &T {
        &self.slots[core.0 as usize % MAX_CORES].0
    }

    /// The values of the cores that exist.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots[..crate::core_count()].iter().map(|s| &s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::tests::machine;
    use core::sync::atomic::{AtomicU64, Ordering};

    static COUNTS: PerCore<AtomicU64> =
        PerCore::new([const { CacheLine::new(AtomicU64::new(0)) }; MAX_CORES]);

    #[test]
    fn each_core_sees_its_own_slot() {
        let (_sys, _cores) = machine(2);
        let h = crate::spawn_on(CoreId(1), || {
            COUNTS.get().fetch_add(5, Ordering::Relaxed);
        })
        .unwrap();
        COUNTS.get().fetch_add(1, Ordering::Relaxed);
        h.join();
        assert_eq!(COUNTS.of(CoreId(0)).load(Ordering::Relaxed), 1);
        assert_eq!(COUNTS.of(CoreId(1)).load(Ordering::Relaxed), 5);
        assert_eq!(COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>(), 6);
        let v: PerCore<u8> = PerCore::new([const { CacheLine::new(7) }; MAX_CORES]);
        assert_eq!(*v.of(CoreId(15)), 7);
    }
}
