//! Bounded multi-producer, single-consumer channels, within a core and
//! across cores.
//!
//! `send` waits while the channel is full, `recv` while it is empty; a
//! waiting thread lets its core's other threads run, and a core with
//! nothing to run halts until the other side notifies it. Messages from
//! one sender arrive in the order they were sent, each exactly once. The
//! queue is guarded by a spin lock held only to push or pop one message.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::sched::Waiters;

struct Shared<T> {
    queue: spin::Mutex<VecDeque<T>>,
    capacity: usize,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    /// The receiver's core, while it waits for a message.
    receiver_waits: Waiters,
    /// Senders' cores, while they wait for room.
    senders_wait: Waiters,
}

/// The sending side; clone it for more producers.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// The receiver is gone; the message comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<T>(pub T);

/// A channel holding at most `capacity` (≥ 1) messages.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        queue: spin::Mutex::new(VecDeque::with_capacity(capacity)),
        capacity,
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
        receiver_waits: Waiters::new(),
        senders_wait: Waiters::new(),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

impl<T> Sender<T> {
    /// Send `value`, waiting while the channel is full; fails when the
    /// receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut value = Some(value);
        let sh = &*self.shared;
        let r = sh.senders_wait.wait_for(|| {
            if !sh.receiver_alive.load(Ordering::Acquire) {
                return Some(Err(SendError(value.take().expect("unsent value"))));
            }
            let mut q = sh.queue.lock();
            (q.len() < sh.capacity).then(|| {
                q.push_back(value.take().expect("unsent value"));
                Ok(())
            })
        });
        if r.is_ok() {
            crate::note_progress();
            sh.receiver_waits.notify();
        }
        r
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.senders.fetch_sub(1, Ordering::AcqRel);
        crate::note_progress();
        self.shared.receiver_waits.notify();
    }
}

impl<T> Receiver<T> {
    /// The next message, waiting while there is none; `None` once every
    /// sender is gone and the channel is empty.
    pub fn recv(&self) -> Option<T> {
        let sh = &*self.shared;
        sh.receiver_waits.wait_for(|| {
            if let Some(v) = self.try_recv() {
                return Some(Some(v));
            }
            // Look at the queue again after seeing no sender: the last one
            // may have sent just before it went.
            (sh.senders.load(Ordering::Acquire) == 0).then(|| self.try_recv())
        })
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Option<T> {
        let v = self.shared.queue.lock().pop_front();
        if v.is_some() {
            crate::note_progress();
            self.shared.senders_wait.notify();
        }
        v
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        crate::note_progress();
        self.shared.senders_wait.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoreId;
    use crate::sched::tests::{fresh, machine};
    use alloc::vec::Vec;

    #[test]
    fn every_message_arrives_once_in_order_per_sender() {
        let _s = fresh();
        let (tx, rx) = bounded::<(u32, u32)>(4);
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let tx = tx.clone();
                crate::spawn(move || {
                    for i in 0..500 {
                        tx.send((p, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 3];
        let mut total = 0;
        while let Some((p, i)) = rx.recv() {
            assert_eq!(i, next[p as usize], "sender {p} out of order");
            next[p as usize] += 1;
            total += 1;
        }
        assert_eq!(total, 1500);
        for h in producers {
            h.join();
        }
    }

    #[test]
    fn across_cores_every_message_arrives_once_in_order_per_sender() {
        let (_sys, _cores) = machine(3);
        let (tx, rx) = bounded::<(u32, u32)>(8);
        let producers: Vec<_> = (0..6u32)
            .map(|p| {
                let tx = tx.clone();
                crate::spawn_on(CoreId(p % 3), move || {
                    for i in 0..5_000 {
                        tx.send((p, i)).unwrap();
                    }
                })
                .unwrap()
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 6];
        let mut total = 0;
        while let Some((p, i)) = rx.recv() {
            assert_eq!(i, next[p as usize], "sender {p} out of order");
            next[p as usize] += 1;
            total += 1;
        }
        assert_eq!(total, 30_000);
        for h in producers {
            h.join();
        }
    }

    #[test]
    fn ping_pong_between_two_threads() {
        let _s = fresh();
        let (to_b, from_a) = bounded::<u64>(1);
        let (to_a, from_b) = bounded::<u64>(1);
        let b = crate::spawn(move || {
            while let Some(v) = from_a.recv() {
                to_a.send(v + 1).unwrap();
            }
        });
        let mut v = 0;
        for _ in 0..10_000 {
            to_b.send(v).unwrap();
            v = from_b.recv().unwrap();
        }
        drop(to_b);
        b.join();
        assert_eq!(v, 10_000);
    }

    #[test]
    fn ping_pong_across_cores() {
        let (_sys, _cores) = machine(2);
        let (to_b, from_a) = bounded::<u64>(1);
        let (to_a, from_b) = bounded::<u64>(1);
        let b = crate::spawn_on(CoreId(1), move || {
            while let Some(v) = from_a.recv() {
                to_a.send(v + 1).unwrap();
            }
            crate::current_core()
        })
        .unwrap();
        // Few enough that a busy machine, where each hand-over between
        // the host threads standing in for cores may wait for a time
        // slice, still runs it in seconds.
        let mut v = 0;
        for _ in 0..5_000 {
            to_b.send(v).unwrap();
            v = from_b.recv().unwrap();
        }
        drop(to_b);
        assert_eq!(b.join(), CoreId(1));
        assert_eq!(v, 5_000);
    }

    #[test]
    fn send_fails_when_the_receiver_is_gone() {
        let _s = fresh();
        let (tx, rx) = bounded::<u8>(1);
        drop(rx);
        assert_eq!(tx.send(7), Err(SendError(7)));
    }
}
