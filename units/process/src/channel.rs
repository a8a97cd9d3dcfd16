//! Bounded multi-producer, single-consumer channels.
//!
//! `send` waits (yielding) while the channel is full, `recv` while it is
//! empty. Messages from one sender arrive in the order they were sent.
//! Within one core this needs no more than a short lock; the cross-core
//! version comes with several cores.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Shared<T> {
    queue: spin::Mutex<VecDeque<T>>,
    capacity: usize,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
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
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

impl<T> Sender<T> {
    /// Send `value`, waiting while the channel is full.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut value = Some(value);
        loop {
            if !self.shared.receiver_alive.load(Ordering::Acquire) {
                return Err(SendError(value.take().expect("unsent value")));
            }
            {
                let mut q = self.shared.queue.lock();
                if q.len() < self.shared.capacity {
                    q.push_back(value.take().expect("unsent value"));
                    crate::note_progress();
                    return Ok(());
                }
            }
            crate::wait();
        }
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
    }
}

impl<T> Receiver<T> {
    /// The next message, waiting while there is none; `None` once every
    /// sender is gone and the channel is empty.
    pub fn recv(&self) -> Option<T> {
        loop {
            if let Some(v) = self.try_recv() {
                return Some(v);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return self.try_recv();
            }
            crate::wait();
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Option<T> {
        let v = self.shared.queue.lock().pop_front();
        if v.is_some() {
            crate::note_progress();
        }
        v
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        crate::note_progress();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::tests::fresh;
    use alloc::vec::Vec;

    #[test]
    fn every_message_arrives_once_in_order_per_sender() {
        let s = fresh();
        let (tx, rx) = bounded::<(u32, u32)>(4);
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let tx = tx.clone();
                s.spawn(move || {
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
    fn ping_pong_between_two_threads() {
        let s = fresh();
        let (to_b, from_a) = bounded::<u64>(1);
        let (to_a, from_b) = bounded::<u64>(1);
        let b = s.spawn(move || {
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
    fn send_fails_when_the_receiver_is_gone() {
        let _s = fresh();
        let (tx, rx) = bounded::<u8>(1);
        drop(rx);
        assert_eq!(tx.send(7), Err(SendError(7)));
    }
}
