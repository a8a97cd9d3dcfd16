//! The app's first listening socket and first accepted connection, told
//! once each to whoever set a hook (the kernel records them in its boot
//! trace, so the monitor's timeline shows `listening` and `first_accept`:
//! where a network appliance's cold start goes after its `main`).

use core::sync::atomic::{AtomicBool, Ordering};

/// A point in a network appliance's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    /// The first listening socket (TCP or vsock) is bound.
    Listening,
    /// The first connection is accepted.
    FirstAccept,
}

static HOOK: spin::Mutex<Option<fn(Milestone)>> = spin::Mutex::new(None);
static SEEN: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Call `f` at each milestone, the first time it is reached.
pub fn set_hook(f: fn(Milestone)) {
    *HOOK.lock() = Some(f);
}

/// `m` is reached: the hook hears of it the first time only (after that,
/// one atomic load).
pub(crate) fn reached(m: Milestone) {
    let seen = &SEEN[m as usize];
    if !seen.load(Ordering::Relaxed) && !seen.swap(true, Ordering::Relaxed) {
        let hook = *HOOK.lock();
        if let Some(f) = hook {
            f(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize;

    static HEARD: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

    #[test]
    fn each_milestone_is_told_once() {
        set_hook(|m| {
            HEARD[m as usize].fetch_add(1, Ordering::Relaxed);
        });
        for _ in 0..3 {
            reached(Milestone::Listening);
        }
        reached(Milestone::FirstAccept);
        reached(Milestone::FirstAccept);
        assert_eq!(HEARD[0].load(Ordering::Relaxed), 1);
        assert_eq!(HEARD[1].load(Ordering::Relaxed), 1);
    }
}
