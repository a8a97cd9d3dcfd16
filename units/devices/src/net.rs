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
//!   before its last look ([`NetDevice::frame_waiting`]), except on core 0,
//!   which they reach: there they stay masked while its threads run (its
//!   scheduler looks at the ring at each switch, [`NetDevice::frame_ready`])
//!   and are unmasked as it is about to halt; buffers go back to the ring
//!   as frames are taken, with one notification per poll when the device
//!   asks for them.
//!
//! - **Offloads** (when the device offers them and the command line does
//!   not say `net.offload=off`): checksums of sent TCP and UDP frames are
//!   completed by the host (`VIRTIO_NET_F_CSUM`), received ones come
//!   checked (`GUEST_CSUM`), and TCP over IPv4 moves in segments of up to
//!   64 KiB each way (`HOST_TSO4`, and `GUEST_TSO4` with mergeable receive
//!   buffers): one frame, one descriptor and one read or write of the host's
//!   TAP device instead of up to 45. smoltcp builds the large segments
//!   itself (its `segmentation-offload` feature); the networking unit
//!   fills in the [`TxOffload`] of each frame.
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

/// What a device does for the stack, beyond moving frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Received TCP and UDP frames say whether the host checked their
    /// checksums ([`RxFrame::checked`]); the stack checks the others.
    pub rx_csum: bool,
    /// The device completes the checksums of sent TCP and UDP frames
    /// ([`TxOffload::csum`]).
    pub tx_csum: bool,
    /// Largest TCP/IPv4 frame (Ethernet header included) the device cuts
    /// into segments itself ([`TxOffload::tso4`]); 0: none.
    pub tso4: usize,
}

/// A received frame.
#[derive(Debug)]
pub struct RxFrame {
    /// The Ethernet frame.
    pub data: Vec<u8>,
    /// Its TCP or UDP checksum was checked by the host, or is to be
    /// completed by none (a frame from the host's own stack): it needs no
    /// look. Meaningful with [`Offloads::rx_csum`].
    pub checked: bool,
}

/// What the device is to do to a frame it sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// Complete the checksum: sum from byte `.0` of the frame to its end
    /// and store the result at `.0 + .1` (where the stack left the
    /// pseudo-header's sum). Only with [`Offloads::tx_csum`].
    pub csum: Option<(u16, u16)>,
    /// Cut the TCP/IPv4 frame into segments of `.0` payload bytes, each
    /// with a copy of the first `.1` bytes (Ethernet, IP and TCP headers).
    /// Only with [`Offloads::tso4`], and with `csum`.
    pub tso4: Option<(u16, u16)>,
}

/// A network interface that sends and receives Ethernet frames.
pub trait NetDevice {
    /// The interface's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Largest IP packet, in bytes (the Ethernet MTU).
    fn mtu(&self) -> usize;
    /// The offloads negotiated with the device.
    fn offloads(&self) -> Offloads {
        Offloads::default()
    }
    /// Whether a frame can be queued now (frees what the device is done
    /// with first).
    fn can_send(&mut self) -> bool {
        true
    }
    /// Queue one frame of `len` bytes for sending: `fill` writes it into
    /// the device's buffer and says what the device is to do to it. It may
    /// wait in the ring until [`NetDevice::flush`]. `fill` is not called
    /// when the frame cannot be queued.
    fn try_send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> TxOffload) -> Result<(), NetError>;
    /// Tell the device about frames queued and buffers returned since the
    /// last flush (one notification for all of them, if the device wants
    /// one).
    fn flush(&mut self) {}
    /// Whether frames wait for [`NetDevice::flush`].
    fn unflushed(&self) -> bool {
        false
    }
    /// Take one received frame; `Ok(None)` when none is waiting (whole).
    fn try_recv(&mut self) -> Result<Option<RxFrame>, NetError>;
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

/// Whether drivers may negotiate offloads (`net.offload=off` on the
/// command line says no, before the devices are probed).
static OFFLOADS_ALLOWED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Let (or not) network drivers probed from now on negotiate offloads.
pub fn allow_offloads(yes: bool) {
    OFFLOADS_ALLOWED.store(yes, core::sync::atomic::Ordering::Relaxed);
}

/// Ring size of each virtio-net queue.
const QUEUE: usize = 64;
/// Receive buffer size: an Ethernet frame and the virtio-net header (a
/// larger frame spans several: mergeable receive buffers).
pub const RX_BUF: usize = 2048;
/// Largest frame sent without segmentation: an Ethernet header and 1500
/// bytes.
const MAX_FRAME: usize = 1514;
/// Largest frame received or sent with segmentation offload: a 64 KiB IP
/// packet and its Ethernet header.
const MAX_TSO_FRAME: usize = 65535 + 14;
/// Transmit slot size: the header and the largest frame, rounded up.
const TX_SLOT: usize = 1536;
const QUEUE_RECEIVE: u16 = 0;
const QUEUE_TRANSMIT: u16 = 1;
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_HOST_TSO4: u64 = 1 << 11;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_VERSION_1: u64 = 1 << 32;
/// `virtio_net_hdr` with `num_buffers` (virtio 1.x), and without (legacy).
const HDR: usize = 12;
const HDR_LEGACY: usize = 10;
/// `virtio_net_hdr.flags`: the checksum is to be completed; it was
/// checked.
const HDR_F_NEEDS_CSUM: u8 = 1;
const HDR_F_DATA_VALID: u8 = 2;
/// `virtio_net_hdr.gso_type` of a TCP/IPv4 segment to cut.
const HDR_GSO_TCPV4: u8 = 1;
/// A token's slot is empty; its frame is in [`VirtioNet::tx_big`].
const NONE: u16 = u16::MAX;
const BIG: u16 = u16::MAX - 1;

/// An interrupt line and the function that says whether it fired.
type IrqTake = (u32, fn(u32) -> bool);

/// A frame spread over several receive buffers, being gathered.
struct Partial {
    data: Vec<u8>,
    /// Buffers still to come.
    left: u16,
    checked: bool,
    /// Longer than any frame: dropped when whole.
    oversized: bool,
}

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
    /// The frame being gathered from several buffers.
    partial: Option<Partial>,
    /// Transmit slots, [`TX_SLOT`] bytes each (header, then frame): one
    /// allocation, as the receive buffers, so a frame sent costs no
    /// allocation (under `redis-benchmark` a zeroed allocation per frame
    /// was a tenth of the guest's time).
    tx_bufs: Box<[u8]>,
    /// Slots not in the ring (as many as the ring has free descriptors:
    /// a frame takes one of each).
    tx_free: Vec<u16>,
    /// The slot ([`BIG`]: see `tx_big`) and length of the frame each
    /// token (descriptor head) in the transmit ring stands for, until the
    /// device has used it.
    tx_by_token: [(u16, u32); QUEUE],
    /// Frames larger than a slot (segmentation offload), by token.
    tx_big: Vec<Option<Box<[u8]>>>,
    /// Frames or receive buffers queued since the last notification.
    tx_unflushed: bool,
    rx_unflushed: bool,
    /// Transmit completions interrupt (only while the ring is full).
    tx_irq: bool,
    /// Header size: 12 bytes with virtio 1.x, 10 on a legacy device.
    hdr: usize,
    /// Frames may span several receive buffers.
    merged: bool,
    offloads: Offloads,
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

/// The features to ask of a device that offers `offered`: offloads only
/// when allowed, each with what it depends on (virtio 1.2 §5.1.3.1), and
/// receive segmentation only with mergeable buffers (a 64 KiB frame would
/// otherwise need 64 KiB buffers).
fn wanted(offered: u64, offloads: bool) -> u64 {
    let mut want = F_MAC | F_MRG_RXBUF | F_VERSION_1;
    if offloads {
        want |= F_CSUM | F_GUEST_CSUM;
        if offered & F_CSUM != 0 {
            want |= F_HOST_TSO4;
        }
        if offered & (F_GUEST_CSUM | F_MRG_RXBUF) == F_GUEST_CSUM | F_MRG_RXBUF {
            want |= F_GUEST_TSO4;
        }
    }
    offered & want
}

impl VirtioNet {
    /// Set up the device on `transport` (virtio 1.2 §3.1.1).
    pub fn new(
        mut transport: crate::stepwise::Stepwise,
        location: Location,
    ) -> Result<Self, virtio_drivers::Error> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let features = wanted(
            transport.read_device_features(),
            OFFLOADS_ALLOWED.load(core::sync::atomic::Ordering::Relaxed),
        );
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
        let offloads = Offloads {
            rx_csum: features & F_GUEST_CSUM != 0,
            tx_csum: features & F_CSUM != 0,
            tso4: if features & F_HOST_TSO4 != 0 { MAX_TSO_FRAME } else { 0 },
        };
        let mut dev = Self {
            transport,
            rx,
            tx,
            // Zeroed through the allocator, which leaves fresh heap pages
            // untouched: the device fills them.
            rx_bufs: vec![0u8; QUEUE * RX_BUF].into_boxed_slice(),
            rx_by_token: [NONE; QUEUE],
            partial: None,
            // Zeroed through the allocator, as the receive buffers; each
            // frame's header is written with the frame.
            tx_bufs: vec![0u8; QUEUE * TX_SLOT].into_boxed_slice(),
            tx_free: (0..QUEUE as u16).rev().collect(),
            tx_by_token: [(NONE, 0); QUEUE],
            tx_big: (0..QUEUE).map(|_| None).collect(),
            tx_unflushed: false,
            rx_unflushed: false,
            tx_irq: false,
            hdr,
            merged: features & F_MRG_RXBUF != 0,
            offloads,
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
            let t = usize::from(token);
            let Some(&(slot, len)) = self.tx_by_token.get(t) else { return };
            let len = len as usize;
            let popped = if slot == BIG {
                // Freed only once the device has given it back.
                let Some(big) = self.tx_big.get(t).and_then(Option::as_ref) else { return };
                // SAFETY: `big` is the buffer added with this token.
                let popped = unsafe { self.tx.pop_used(token, &[&big[..len]], &mut []) };
                if popped.is_ok() {
                    self.tx_big[t] = None;
                }
                popped
            } else if slot == NONE {
                // A token never handed out: a broken device.
                return;
            } else {
                let at = usize::from(slot) * TX_SLOT;
                let frame = &self.tx_bufs[at..at + len];
                // SAFETY: `frame` is the buffer added with this token.
                unsafe { self.tx.pop_used(token, &[frame], &mut []) }
            };
            if popped.is_err() {
                return;
            }
            self.tx_by_token[t] = (NONE, 0);
            if slot != BIG {
                self.tx_free.push(slot);
            }
        }
    }

    /// Take the next used receive buffer: its index and the length the
    /// device wrote (never beyond the buffer).
    fn pop_rx(&mut self) -> Result<Option<(u16, usize)>, NetError> {
        let Some(token) = self.rx.peek_used() else { return Ok(None) };
        let i = self.rx_by_token.get(usize::from(token)).copied().unwrap_or(NONE);
        let at = usize::from(i) * RX_BUF;
        let Some(rx) = self.rx_bufs.get_mut(at..at + RX_BUF) else { return Err(NetError::Io) };
        // SAFETY: `rx` is the buffer posted with this token.
        let len = unsafe { self.rx.pop_used(token, &[], &mut [&mut rx[..]]) }.map_err(|_| NetError::Io)?;
        self.rx_by_token[usize::from(token)] = NONE;
        Ok(Some((i, (len as usize).min(RX_BUF))))
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

/// The `virtio_net_hdr` of a frame sent with `offload` (`num_buffers`, the
/// last two bytes of a 1.x header, is the device's).
fn tx_header(offload: TxOffload) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    if let Some((start, offset)) = offload.csum {
        h[0] = HDR_F_NEEDS_CSUM;
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        if let Some((mss, headers)) = offload.tso4 {
            h[1] = HDR_GSO_TCPV4;
            h[2..4].copy_from_slice(&headers.to_le_bytes());
            h[4..6].copy_from_slice(&mss.to_le_bytes());
        }
    }
    h
}

impl NetDevice for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn mtu(&self) -> usize {
        1500
    }

    fn offloads(&self) -> Offloads {
        self.offloads
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

    fn try_send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8]) -> TxOffload) -> Result<(), NetError> {
        let largest = if self.offloads.tso4 > 0 { self.offloads.tso4 } else { MAX_FRAME };
        if len > largest {
            return Err(NetError::TooLarge);
        }
        if !self.can_send() {
            return Err(NetError::WouldBlock);
        }
        // The header and the frame in one buffer, so one descriptor: a
        // slot, or for a frame larger than one (segmentation offload) a
        // buffer of its own, freed when the device has sent it.
        let total = self.hdr + len;
        let (slot, mut big) = if total <= TX_SLOT {
            let Some(slot) = self.tx_free.pop() else { return Err(NetError::WouldBlock) };
            (slot, None)
        } else {
            (BIG, Some(vec![0u8; total].into_boxed_slice()))
        };
        let buf = match &mut big {
            Some(b) => &mut b[..],
            None => {
                let at = usize::from(slot) * TX_SLOT;
                &mut self.tx_bufs[at..at + total]
            }
        };
        let offload = fill(&mut buf[self.hdr..]);
        // What was not negotiated is not asked for.
        let offload = TxOffload {
            csum: offload.csum.filter(|_| self.offloads.tx_csum),
            tso4: offload.tso4.filter(|_| self.offloads.tso4 > 0 && offload.csum.is_some()),
        };
        let hdr = self.hdr;
        buf[..hdr].copy_from_slice(&tx_header(offload)[..hdr]);
        let frame: &[u8] = match &big {
            Some(b) => &b[..],
            None => {
                let at = usize::from(slot) * TX_SLOT;
                &self.tx_bufs[at..at + total]
            }
        };
        // SAFETY: the slot is out of `tx_free` (or the box is kept in
        // `tx_big`) until `reclaim_tx` pops its token, and nothing writes
        // it meanwhile; neither `tx_bufs` nor a box moves.
        let token = match unsafe { self.tx.add(&[frame], &mut []) } {
            Ok(token) => token,
            Err(_) => {
                if slot != BIG {
                    self.tx_free.push(slot);
                }
                return Err(NetError::WouldBlock);
            }
        };
        let t = usize::from(token);
        match (self.tx_by_token.get_mut(t), big) {
            (Some(entry), big) => {
                *entry = (slot, total as u32);
                if let Some(b) = big {
                    self.tx_big[t] = Some(b);
                }
            }
            (None, big) => {
                // A token beyond the ring (never, from `VirtQueue`): the
                // device may still read the buffer, so it is never freed.
                core::mem::forget(big);
                return Err(NetError::Io);
            }
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

    fn try_recv(&mut self) -> Result<Option<RxFrame>, NetError> {
        // A frame spans `num_buffers` buffers (mergeable receive buffers),
        // the header in the first; those not yet used leave it gathered
        // here until they are.
        while let Some((i, len)) = self.pop_rx()? {
            let at = usize::from(i) * RX_BUF;
            let data = &self.rx_bufs[at..at + len];
            let done = match self.partial.as_mut() {
                Some(p) => {
                    // Never beyond the largest frame, whatever the device
                    // says: the excess is dropped with the frame.
                    if p.data.len() + data.len() <= MAX_TSO_FRAME {
                        p.data.extend_from_slice(data);
                    } else {
                        p.oversized = true;
                    }
                    p.left = p.left.saturating_sub(1);
                    p.left == 0
                }
                None => {
                    let header = data.get(..self.hdr).unwrap_or(&[]);
                    let flags = header.first().copied().unwrap_or(0);
                    let count = match header.get(10..12) {
                        Some(n) if self.merged => u16::from_le_bytes([n[0], n[1]]).max(1),
                        _ => 1,
                    };
                    let frame = data.get(self.hdr..).unwrap_or(&[]);
                    let mut v = Vec::with_capacity(if count > 1 { MAX_TSO_FRAME } else { frame.len() });
                    v.extend_from_slice(frame);
                    let checked = self.offloads.rx_csum && flags & (HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID) != 0;
                    self.partial = Some(Partial { data: v, left: count - 1, checked, oversized: false });
                    count == 1
                }
            };
            self.post_rx(i).map_err(|_| NetError::Io)?;
            if done {
                let Some(p) = self.partial.take() else { continue };
                if p.data.len() >= 14 && !p.oversized {
                    return Ok(Some(RxFrame { data: p.data, checked: p.checked }));
                }
            }
        }
        Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_come_with_what_they_need() {
        let all = F_CSUM | F_GUEST_CSUM | F_MAC | F_GUEST_TSO4 | F_HOST_TSO4 | F_MRG_RXBUF | F_VERSION_1;
        assert_eq!(wanted(all, true), all);
        assert_eq!(wanted(all, false), F_MAC | F_MRG_RXBUF | F_VERSION_1);
        // Receive segmentation needs mergeable buffers; send segmentation
        // needs the host's checksums.
        assert_eq!(wanted(all & !F_MRG_RXBUF, true) & F_GUEST_TSO4, 0);
        assert_eq!(wanted(all & !F_CSUM, true) & F_HOST_TSO4, 0);
        assert_eq!(wanted(all & !F_GUEST_CSUM, true) & F_GUEST_TSO4, 0);
    }

    #[test]
    fn headers_say_what_the_device_does() {
        assert_eq!(tx_header(TxOffload::default()), [0; HDR]);
        let h = tx_header(TxOffload { csum: Some((34, 16)), tso4: Some((1448, 66)) });
        assert_eq!(h, [1, 1, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0]);
        // Segmentation without a checksum to complete is not asked for.
        assert_eq!(tx_header(TxOffload { csum: None, tso4: Some((1448, 66)) }), [0; HDR]);
    }
}
