//! The virtio-mmio transport (version 2, virtio 1.2 §4.2.2) of the
//! monitor's devices: registers, feature negotiation, queues, interrupt
//! decisions. A [`Backend`] (block, network, vsock) says what the device is
//! and serves its queues; everything a device shares is written here once.
//!
//! Why by hand: the rust-vmm crate with this logic (`virtio-device`) is
//! not published; the register layout is short and fixed.
//!
//! Queues are `virtio-queue`'s. A queue whose rings do not fit guest RAM
//! is refused (DEVICE_NEEDS_RESET); nothing the driver writes here can make
//! the monitor fail. Whether a backend used buffers is read off each
//! queue's used index, so backends only serve and never decide interrupts.

use std::os::fd::RawFd;

use crate::vstate::sys::Want;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Offset of the QueueNotify register.
pub const QUEUE_NOTIFY: u64 = 0x050;

/// Size of a device's register window.
pub const MMIO_SIZE: u64 = 0x1000;

pub(crate) const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x4f54_5254; // "TRTO"
/// Feature: virtio 1.x.
pub(crate) const F_VERSION_1: u64 = 1 << 32;
pub(crate) const STATUS_FAILED: u32 = 0x80;
pub(crate) const NEEDS_RESET: u32 = 0x40;
/// Device status bit: the driver is ready.
pub(crate) const DRIVER_OK: u32 = 0x04;
/// Most queues a device may have.
const MAX_QUEUES: usize = 8;

/// What a device is and how it serves its queues. Host-side hooks default
/// to "none": a device without a host side (a disk served inline) writes
/// only the first five methods.
pub trait Backend: Send {
    /// virtio device type (1 network, 2 block, 19 vsock).
    fn device_id(&self) -> u32;
    /// Features offered (`F_VERSION_1` included).
    fn features(&self) -> u64;
    /// The device-specific configuration space.
    fn config(&self) -> Vec<u8>;
    /// Number of queues.
    fn queue_count(&self) -> usize;
    /// The driver notified queue `index`: serve what it offers.
    fn notify(&mut self, index: usize, queues: &mut Queues<'_>, mem: &GuestMemoryMmap);
    /// Largest size of each queue.
    fn queue_max(&self) -> u16 {
        256
    }
    /// Whether the device has host-side I/O, served by the device I/O
    /// thread through [`Backend::service_host`].
    fn has_host_io(&self) -> bool {
        false
    }
    /// The host descriptors the I/O thread should watch for this device,
    /// and for what.
    fn host_fds(&self, _fds: &mut Vec<(RawFd, Want)>) {}
    /// Serve the host side (the I/O thread saw a descriptor ready).
    fn service_host(&mut self, _queues: &mut Queues<'_>, _mem: &GuestMemoryMmap) {}
    /// Whether queue notifications should reach the device through an
    /// eventfd (KVM completes the guest's write without an exit; the I/O
    /// thread serves the queue) rather than inline at the exit.
    fn wants_notify_fd(&self) -> bool {
        false
    }
    /// The eventfd KVM signals at each notification (see
    /// [`Backend::wants_notify_fd`]).
    fn set_notify_fd(&mut self, _fd: EventFd) {}
    /// The driver set DRIVER_OK having accepted `features` (of those
    /// offered): the device may start (and, e.g., tell the driver which
    /// queues it need not notify).
    fn driver_ok(&mut self, _features: u64, _queues: &mut Queues<'_>, _mem: &GuestMemoryMmap) {}
    /// Whether [`Backend::host_fds`] changed since the last call in a way the
    /// I/O thread must see at once (a descriptor to watch again); the I/O
    /// thread otherwise looks again within its longest wait.
    fn take_rewatch(&mut self) -> bool {
        false
    }
    /// The driver reset the device: forget what it negotiated.
    fn reset(&mut self) {}
    /// Make what the guest wrote durable: the monitor is stopping (a disk
    /// calls `fdatasync`).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Descriptors whose last close is slow (a TAP device's waits for an
    /// RCU grace period): the monitor hands them to the kernel to close
    /// after it has exited (`vstate::Farewell`).
    fn slow_to_close(&self, _fds: &mut Vec<RawFd>) {}
}

/// A device's queues as its backend sees them: only those the driver made
/// ready, and none while the device needs a reset or has failed.
pub struct Queues<'a> {
    queues: &'a mut [Queue],
    usable: bool,
}

impl<'a> Queues<'a> {
    /// Every queue of `queues` usable (tests of a backend on its own).
    #[cfg(test)]
    pub(crate) fn for_tests(queues: &'a mut [Queue]) -> Self {
        Self { queues, usable: true }
    }

    /// Queue `index`, if the driver made it ready.
    pub fn get(&mut self, index: usize) -> Option<&mut Queue> {
        if !self.usable {
            return None;
        }
        self.queues.get_mut(index).filter(|q| q.ready())
    }
}

/// What a register access asks of the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Raise the device's interrupt.
    Interrupt,
}

/// A virtio-mmio device around a backend.
pub struct MmioDevice {
    backend: Box<dyn Backend>,
    queues: Vec<Queue>,
    status: u32,
    features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    interrupt_status: u32,
    /// Interrupts raised.
    pub interrupts: u64,
}

impl MmioDevice {
    /// A device in its reset state.
    pub fn new(backend: impl Backend + 'static) -> Self {
        let queues = (0..backend.queue_count().min(MAX_QUEUES))
            .map(|_| Queue::new(backend.queue_max()).expect("a valid queue size"))
            .collect();
        Self {
            backend: Box::new(backend),
            queues,
            status: 0,
            features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            interrupt_status: 0,
            interrupts: 0,
        }
    }

    /// See [`Backend::take_rewatch`].
    pub fn take_rewatch(&mut self) -> bool {
        self.backend.take_rewatch()
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// [`Backend::flush`].
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.backend.flush()
    }

    /// [`Backend::slow_to_close`].
    pub fn slow_to_close(&self, fds: &mut Vec<RawFd>) {
        self.backend.slow_to_close(fds);
    }

    /// Give the backend the eventfd for queue notifications it asked for.
    pub fn set_notify_fd(&mut self, fd: EventFd) {
        self.backend.set_notify_fd(fd);
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// A guest load at `offset` in the register window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            let cfg = self.backend.config();
            for (i, b) in data.iter_mut().enumerate() {
                *b = cfg.get((offset - 0x100) as usize + i).copied().unwrap_or(0);
            }
            return;
        }
        let features = self.backend.features();
        let v: u32 = match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.backend.device_id(),
            0x00c => VENDOR,
            0x010 => match self.features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            0x034 => self.selected().map_or(0, |q| u32::from(q.max_size())),
            0x044 => u32::from(self.selected().is_some_and(|q| q.ready())),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            // 0x0fc, config generation: the configuration never changes.
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// A guest store at `offset` in the register window.
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) -> Effect {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        let sel = self.queue_sel as usize;
        match offset {
            0x014 => self.features_sel = v,
            0x020 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            QUEUE_NOTIFY => {
                let index = v as usize;
                return self.serve(mem, |b, q, m| b.notify(index, q, m));
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if v == 0 {
                    self.reset();
                } else {
                    // The driver sets bits; DEVICE_NEEDS_RESET stays ours.
                    let started = v & DRIVER_OK != 0 && self.status & DRIVER_OK == 0;
                    self.status = v | (self.status & NEEDS_RESET);
                    if started {
                        let accepted = self.driver_features & self.backend.features();
                        return self.serve(mem, |b, q, m| b.driver_ok(accepted, q, m));
                    }
                }
            }
            _ => {
                let needs_reset = self.queues.get_mut(sel).is_some_and(|q| queue_register(q, offset, v, mem));
                if needs_reset {
                    self.status |= NEEDS_RESET;
                }
            }
        }
        Effect::None
    }

    fn reset(&mut self) {
        self.backend.reset();
        self.status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt_status = 0;
        self.driver_features = 0;
        self.features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }

    /// Serve the device's host side (the I/O thread's call).
    pub fn service_host(&mut self, mem: &GuestMemoryMmap) -> Effect {
        self.serve(mem, |b, q, m| b.service_host(q, m))
    }

    /// Let the backend work on the queues; then interrupt, as a
    /// notification does, when it used buffers of a queue whose driver
    /// wants to hear of it.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        f: impl FnOnce(&mut dyn Backend, &mut Queues<'_>, &GuestMemoryMmap),
    ) -> Effect {
        // (An array, not a Vec: this runs at every notification exit.)
        let mut before = [0u16; MAX_QUEUES];
        for (b, q) in before.iter_mut().zip(&self.queues) {
            *b = q.next_used();
        }
        let usable = self.status & (STATUS_FAILED | NEEDS_RESET) == 0;
        f(self.backend.as_mut(), &mut Queues { queues: &mut self.queues, usable }, mem);
        let interrupt =
            self.queues.iter().zip(before).any(|(q, used)| q.next_used() != used && wants_interrupt(q, mem));
        if interrupt {
            self.interrupt_status |= 1;
            self.interrupts += 1;
            Effect::Interrupt
        } else {
            Effect::None
        }
    }
}

/// Whether the driver wants an interrupt for buffers just used: not when
/// it set VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags (virtio
/// 1.2 §2.7.7; EVENT_IDX is not offered). virtio-queue's
/// `needs_notification` does not read that flag (it answers `true` without
/// EVENT_IDX), hence this look. A ring we cannot read gets the interrupt.
fn wants_interrupt(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    const NO_INTERRUPT: u16 = 1;
    // The used index was stored before the flags are read (the driver
    // stores the flags before it reads the used index).
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let flags: Result<u16, _> = mem.read_obj(GuestAddress(queue.avail_ring()));
    flags.map_or(true, |f| f & NO_INTERRUPT == 0)
}

/// A store to a register of the selected queue; `true` when the queue
/// was made ready but does not fit guest memory (and stays not ready).
fn queue_register(q: &mut Queue, offset: u64, v: u32, mem: &GuestMemoryMmap) -> bool {
    match offset {
        0x038 => q.set_size(v.min(u32::from(u16::MAX)) as u16),
        0x044 => {
            q.set_ready(v == 1);
            if v == 1 && !q.is_valid(mem) {
                q.set_ready(false);
                return true;
            }
        }
        0x080 => q.set_desc_table_address(Some(v), None),
        0x084 => q.set_desc_table_address(None, Some(v)),
        0x090 => q.set_avail_ring_address(Some(v), None),
        0x094 => q.set_avail_ring_address(None, Some(v)),
        0x0a0 => q.set_used_ring_address(Some(v), None),
        0x0a4 => q.set_used_ring_address(None, Some(v)),
        _ => {}
    }
    false
}
