//! Network devices: the [`NetDevice`] interface (Ethernet frames in and
//! out; the networking unit builds its TCP/IP stack on it and never sees
//! virtio) and the virtio-net driver behind it.
//!
//! Why a driver here rather than `virtio-drivers`' `VirtIONet`: that one
//! notifies the device for every frame it sends and then waits for the
//! device to use it, and switches the interrupts of both queues at once.
//! On a host where an exit costs 10–30 µs, the notifications are the cost
//! of the network. This driver keeps `virtio-drivers`' `VirtQueue` and
//! transports and decides the notifications itself:
//!
//! - **Transmit**: frames go into the ring as the stack makes them; one
//!   notification per stack poll ([`NetDevice::flush`]), and none while the
//!   device says it needs none (VRING_USED_F_NO_NOTIFY). Completions are
//!   reclaimed lazily, without interrupts (the transmit ring's
//!   VRING_AVAIL_F_NO_INTERRUPT stays set), except while the ring is full
//!   on a device that sends in its own time (QEMU, Firecracker).
//! - **Receive**: interrupts are masked while the stack drains the ring
//!   ([`NetDevice::mask_interrupts`], as Linux's NAPI does) and unmasked
//!   before its last look ([`NetDevice::frame_waiting`]); buffers go back
//!   to the ring as frames are taken, with one notification per poll when
//!   the device asks for them.
//!
//! `VIRTIO_F_EVENT_IDX` is not negotiated: the Torito monitor serves the
//! transmit ring inside the notification, so it is never busy when
//! notified, and `virtio-drivers`' `should_notify` under EVENT_IDX
//! compares indices without wrapping (it would stop notifying after 65,536
//! frames).
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

use crate::hal::ToritoHal;
use crate::virtio::Location;

/// Errors of network devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The transmit ring is full; try again later.
    WouldBlock,
    /// The frame is larger than the device takes.
    TooLarge,
    /// The device failed.
    Io,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::WouldBlock => "the transmit ring is full",
            Self::TooLarge => "frame too large",
            Self::Io => "network device error",
        })
    }
}

/// A network interface that sends and receives Ethernet frames.
pub trait NetDevice {
    /// The interface's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Largest IP packet, in bytes (the Ethernet MTU).
    fn mtu(&self) -> usize;
    /// Whether a frame can be queued now (frees what the device is done
    /// with first).
    fn can_send(&mut self) -> bool {
        true
    }
    /// Queue one frame for sending. It may wait in the ring until
    /// [`NetDevice::flush`].
    fn try_send(&mut self, frame: &[u8]) -> Result<(), NetError>;
    /// Tell the device about frames queued and buffers returned since the
    /// last flush (one notification for all of them, if the device wants
    /// one).
    fn flush(&mut self) {}
    /// Whether frames wait for [`NetDevice::flush`].
    fn unflushed(&self) -> bool {
        false
    }
    /// Take one received frame into `buf`; `Ok(None)` when none is waiting.
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;
    /// Acknowledge the device's interrupt if one came, so the next frame
    /// interrupts again (call before looking for frames); whether one came
    /// (always `true` for a device without interrupts: look anyway).
    fn service_interrupt(&mut self) -> bool {
        true
    }
    /// No interrupt for received frames until the next
    /// [`NetDevice::frame_waiting`]: the stack is taking them anyway.
    fn mask_interrupts(&mut self) {}
    /// Unmask received-frame interrupts, then say whether a received frame
    /// waits (one that came while they were masked did not interrupt: the
    /// stack polls again before it sleeps).
    fn frame_waiting(&mut self) -> bool {
        false
    }
    /// Whether a received frame waits, changing nothing (interrupts stay
    /// as they are): a look cheap enough for an idle core to repeat.
    fn frame_ready(&self) -> bool {
        false
    }
}

/// Ring size of each virtio-net queue.
const QUEUE: usize = 64;
/// Receive buffer size: an Ethernet frame and the virtio-net header.
pub const RX_BUF: usize = 2048;
/// Largest frame sent: an Ethernet header and 1500 bytes.
const MAX_FRAME: usize = 1514;
/// Transmit slot size: the header and the largest frame, rounded up.
const TX_SLOT: usize = 1536;
const QUEUE_RECEIVE: u16 = 0;
const QUEUE_TRANSMIT: u16 = 1;
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_VERSION_1: u64 = 1 << 32;
/// `virtio_net_hdr` with `num_buffers` (virtio 1.x), and without (legacy).
const HDR: usize = 12;
const HDR_LEGACY: usize = 10;
/// A token's slot is empty.
const NONE: u16 = u16::MAX;

/// An interrupt line and the function that says whether it fired.
type IrqTake = (u32, fn(u32) -> bool);

/// A virtio-net device.
pub struct VirtioNet {
    transport: crate::stepwise::Stepwise,
    rx: VirtQueue<ToritoHal, QUEUE>,
    tx: VirtQueue<ToritoHal, QUEUE>,
    /// Receive buffers, [`RX_BUF`] bytes each, all posted to the device
    /// but the one being read. One allocation: the allocator writes its
    /// bookkeeping beside each block it hands out, so buffers allocated one
    /// by one touched a page each at start-up (a first touch costs 4–8 µs
    /// on a paravirtual host); these pages are first touched by the device.
    rx_bufs: Box<[u8]>,
    /// Which receive buffer each token (descriptor head) stands for.
    rx_by_token: [u16; QUEUE],
    /// Transmit slots, [`TX_SLOT`] bytes each (header, then frame): one
    /// allocation, as the receive buffers, so a frame sent costs no
    /// allocation and no zeroing (under `redis-benchmark` a zeroed
    /// allocation per frame was a tenth of the guest's time).
    tx_bufs: Box<[u8]>,
    /// Slots not in the ring (as many as the ring has free descriptors:
    /// a frame takes one of each).
    tx_free: Vec<u16>,
    /// The slot and length of the frame each token (descriptor head) in
    /// the transmit ring stands for, until the device has used it.
    tx_by_token: [(u16, u16); QUEUE],
    /// Frames or receive buffers queued since the last notification.
    tx_unflushed: bool,
    rx_unflushed: bool,
    /// Transmit completions interrupt (only while the ring is full).
    tx_irq: bool,
    /// Header size: 12 bytes with virtio 1.x, 10 on a legacy device.
    hdr: usize,
    mac: [u8; 6],
    irq: Option<IrqTake>,
    /// Where the device is.
    pub location: Location,
}

// SAFETY: the queues point at DMA memory owned by this value and the
// buffers it holds (boxes that never move while posted); nothing else
// references them, and the value is only used through `&mut` (the
// network unit locks it).
unsafe impl Send for VirtioNet {}

impl VirtioNet {
    /// Set up the device on `transport` (virtio 1.2 §3.1.1).
    pub fn new(
        mut transport: crate::stepwise::Stepwise,
        location: Location,
    ) -> Result<Self, virtio_drivers::Error> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let features = transport.read_device_features() & (F_MAC | F_MRG_RXBUF | F_VERSION_1);
        // Mergeable buffers are taken only for their header size: every
        // receive buffer holds a whole frame, so a frame never spans two.
        transport.write_driver_features(features);
        let started = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        transport.set_status(started);
        transport.set_guest_page_size(virtio_drivers::PAGE_SIZE as u32);
        let mac = if features & F_MAC != 0 {
            transport.read_consistent(|| transport.read_config_space::<[u8; 6]>(0))?
        } else {
            [0x02, 0, 0, 0, 0, 1]
        };
        let tx = VirtQueue::new(&mut transport, QUEUE_TRANSMIT, false, false)?;
        let rx = VirtQueue::new(&mut transport, QUEUE_RECEIVE, false, false)?;
        let hdr = if features & (F_VERSION_1 | F_MRG_RXBUF) != 0 { HDR } else { HDR_LEGACY };
        let mut dev = Self {
            transport,
            rx,
            tx,
            // Zeroed through the allocator, which leaves fresh heap pages
            // untouched: the device fills them.
            rx_bufs: vec![0u8; QUEUE * RX_BUF].into_boxed_slice(),
            rx_by_token: [NONE; QUEUE],
            // Zeroed through the allocator, as the receive buffers; each
            // frame's header is written with the frame.
            tx_bufs: vec![0u8; QUEUE * TX_SLOT].into_boxed_slice(),
            tx_free: (0..QUEUE as u16).rev().collect(),
            tx_by_token: [(NONE, 0); QUEUE],
            tx_unflushed: false,
            rx_unflushed: false,
            tx_irq: false,
            hdr,
            mac,
            irq: None,
            location,
        };
        // No interrupt for transmit completions: they are reclaimed when
        // the ring is next used (the Torito monitor completes each frame
        // during the notification; an interrupt would cost the guest an
        // exit for nothing).
        dev.tx.set_dev_notify(false);
        dev.rx.set_dev_notify(false);
        for i in 0..QUEUE {
            dev.post_rx(i as u16)?;
        }
        dev.transport.finish_init();
        // The buffers are in the ring before DRIVER_OK: the device sees
        // them without a notification.
        dev.rx_unflushed = false;
        Ok(dev)
    }

    /// Give receive buffer `i` to the device.
    fn post_rx(&mut self, i: u16) -> Result<(), virtio_drivers::Error> {
        let at = usize::from(i) * RX_BUF;
        let buf = &mut self.rx_bufs[at..at + RX_BUF];
        // SAFETY: the buffer is a piece of a box this value owns and keeps,
        // unmoved and untouched, until `pop_used` hands it back
        // (`try_recv`); pieces do not overlap.
        let token = unsafe { self.rx.add(&[], &mut [&mut buf[..]])? };
        self.rx_by_token[usize::from(token) % QUEUE] = i;
        self.rx_unflushed = true;
        Ok(())
    }

    /// Free the frames the device has sent.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.tx.peek_used() {
            let Some(&(slot, len)) = self.tx_by_token.get(usize::from(token)) else { return };
            if slot == NONE {
                // A token never handed out: a broken device.
                return;
            }
            let at = usize::from(slot) * TX_SLOT;
            let frame = &self.tx_bufs[at..at + usize::from(len)];
            // SAFETY: `frame` is the buffer added with this token.
            if unsafe { self.tx.pop_used(token, &[frame], &mut []) }.is_err() {
                return;
            }
            self.tx_by_token[usize::from(token)] = (NONE, 0);
            self.tx_free.push(slot);
        }
    }

    /// Received frames interrupt on `line`; `take(line)` says whether one
    /// came since the last look.
    pub fn use_interrupts(&mut self, line: u32, take: fn(u32) -> bool) {
        self.rx.set_dev_notify(true);
        self.irq = Some((line, take));
    }

    /// Whether received frames interrupt.
    pub fn interrupts(&self) -> bool {
        self.irq.is_some()
    }
}

impl NetDevice for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn mtu(&self) -> usize {
        1500
    }

    fn can_send(&mut self) -> bool {
        self.reclaim_tx();
        if self.tx.available_desc() == 0 && self.tx_unflushed {
            // A full ring of frames not yet announced: announce them (the
            // Torito monitor sends them at once; QEMU soon after).
            self.flush();
            self.reclaim_tx();
        }
        if self.tx.available_desc() > 0 {
            if self.tx_irq {
                self.tx_irq = false;
                self.tx.set_dev_notify(false);
            }
            return true;
        }
        // Still full: the device sends in its own time (QEMU, Firecracker).
        // Let its completion interrupt, so the stack polls again then
        // rather than at its next timer; look once more after asking, in
        // case the device finished meanwhile.
        if self.irq.is_some() && !self.tx_irq {
            self.tx_irq = true;
            self.tx.set_dev_notify(true);
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            self.reclaim_tx();
        }
        self.tx.available_desc() > 0
    }

    fn try_send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() > MAX_FRAME {
            return Err(NetError::TooLarge);
        }
        if !self.can_send() {
            return Err(NetError::WouldBlock);
        }
        let Some(slot) = self.tx_free.pop() else { return Err(NetError::WouldBlock) };
        // The header (all zero: no offloads; `num_buffers` is the device's)
        // and the frame in one buffer, so one descriptor.
        let len = self.hdr + frame.len();
        let at = usize::from(slot) * TX_SLOT;
        let buf = &mut self.tx_bufs[at..at + len];
        buf[..self.hdr].fill(0);
        buf[self.hdr..].copy_from_slice(frame);
        // SAFETY: the slot is out of `tx_free` until `reclaim_tx` pops its
        // token, and nothing writes it meanwhile; `tx_bufs` never moves
        // (a boxed slice owned by this value).
        let token = match unsafe { self.tx.add(&[&self.tx_bufs[at..at + len]], &mut []) } {
            Ok(token) => token,
            Err(_) => {
                self.tx_free.push(slot);
                return Err(NetError::WouldBlock);
            }
        };
        match self.tx_by_token.get_mut(usize::from(token)) {
            Some(t) => *t = (slot, len as u16),
            None => return Err(NetError::Io),
        }
        self.tx_unflushed = true;
        Ok(())
    }

    fn unflushed(&self) -> bool {
        self.tx_unflushed
    }

    fn flush(&mut self) {
        // The available index was stored (by `add`) before the device's
        // "no notification" flag is read: a device finishing a round
        // re-enables notifications and then re-reads the index, so one of
        // the two sees the other (virtio 1.2 §2.7.10; x86 may otherwise
        // move this load before that store, and the frames would wait).
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if core::mem::take(&mut self.tx_unflushed) && self.tx.should_notify() {
            self.transport.notify(QUEUE_TRANSMIT);
        }
        if core::mem::take(&mut self.rx_unflushed) && self.rx.should_notify() {
            self.transport.notify(QUEUE_RECEIVE);
        }
    }

    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let Some(token) = self.rx.peek_used() else { return Ok(None) };
        let i = self.rx_by_token.get(usize::from(token)).copied().unwrap_or(NONE);
        let at = usize::from(i) * RX_BUF;
        let Some(rx) = self.rx_bufs.get_mut(at..at + RX_BUF) else { return Err(NetError::Io) };
        // SAFETY: `rx` is the buffer posted with this token.
        let len = unsafe { self.rx.pop_used(token, &[], &mut [&mut rx[..]]) }.map_err(|_| NetError::Io)?;
        self.rx_by_token[usize::from(token)] = NONE;
        // The device says how much it wrote: never trust it beyond the
        // buffer.
        let len = (len as usize).min(RX_BUF);
        let frame = rx.get(self.hdr..len).unwrap_or(&[]);
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        self.post_rx(i).map_err(|_| NetError::Io)?;
        Ok(Some(n))
    }

    fn service_interrupt(&mut self) -> bool {
        match self.irq {
            Some((line, take)) => {
                let came = take(line);
                if came {
                    self.transport.ack_interrupt();
                }
                came
            }
            None => true,
        }
    }

    fn mask_interrupts(&mut self) {
        if self.irq.is_some() {
            self.rx.set_dev_notify(false);
        }
    }

    fn frame_waiting(&mut self) -> bool {
        if self.irq.is_some() {
            self.rx.set_dev_notify(true);
        }
        // The flag store before the look at the used ring: a frame the
        // device adds after the look interrupts.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.rx.can_pop()
    }

    fn frame_ready(&self) -> bool {
        self.rx.can_pop()
    }
}
