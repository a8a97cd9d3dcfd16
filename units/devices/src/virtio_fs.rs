//! virtio-fs (device ID 26): FUSE requests to a host that serves a
//! directory (the Torito monitor's `--share`, or QEMU with `virtiofsd`).
//!
//! `virtio-drivers` 0.13 has no driver for it, and its MMIO transport
//! refuses the device ID, so the register window is driven here
//! (virtio-mmio version 2, virtio 1.2 §4.2.2); on PCI its `PciTransport`
//! serves, once `pci.rs` has shown it a device ID it accepts. The driver
//! uses `virtio-drivers`' `VirtQueue` for the request queue (queue 1;
//! queue 0, FUSE's high-priority queue, is left unset). Requests whose
//! reply nobody waits for (RELEASE, FLUSH, FORGET) are posted: queued
//! without a notification, they reach the device with the next request.
//! The filesystem unit encodes and decodes FUSE itself; this module moves
//! its buffers.

#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result as VirtioResult};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::cmdline::MmioDevice;
use crate::hal::ToritoHal;

/// The virtio device ID of a filesystem device.
pub const DEVICE_ID: u32 = 26;
/// Descriptors of the request queue.
const REQUEST_QUEUE_SIZE: usize = 64;
/// The request queue's index (0 is FUSE's high-priority queue).
const REQUEST_QUEUE: u16 = 1;
const VERSION_1: u64 = 1 << 32;

/// A virtio-mmio (version 2) register window.
pub struct FsMmio {
    base: NonNull<u8>,
}

// SAFETY: the window is device memory the kernel maps for ever; the
// transport is only used through `&mut` (the filesystem unit locks it).
unsafe impl Send for FsMmio {}

impl FsMmio {
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is one of the window's registers (all below
        // 0x100 + config); `new`'s caller promised the window is mapped.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }

    fn write32(&mut self, offset: usize, v: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().write_volatile(v) }
    }

    /// The window at `d`, when it holds a version-2 virtio-fs device.
    ///
    /// # Safety
    /// `d` must be a register window the platform really has (the loader
    /// named it), identity-mapped, and used by nothing else from now on.
    /// Otherwise, why not (one line for the boot log).
    pub unsafe fn new(d: MmioDevice) -> Result<Self, &'static str> {
        let base = NonNull::new(d.base as *mut u8).ok_or("virtio-fs: no register window")?;
        let t = Self { base };
        if d.size < 0x200 || t.read32(0) != 0x7472_6976 || t.read32(8) != DEVICE_ID {
            return Err("virtio-fs: not a virtio-mmio register window");
        }
        if t.read32(4) != 2 {
            // virtio-fs has no legacy form; QEMU's virtio-mmio is legacy
            // unless told otherwise.
            return Err("virtio-fs needs virtio-mmio version 2, not legacy \
                        (QEMU: -global virtio-mmio.force-legacy=false)");
        }
        Ok(t)
    }

    /// The device ID in the window at `d` (0 if not a virtio window).
    ///
    /// # Safety
    /// As [`FsMmio::new`].
    pub unsafe fn device_id(d: MmioDevice) -> u32 {
        // SAFETY: forwarded from the caller.
        let base = d.base as *const u32;
        if base.is_null() || d.size < 0x100 {
            return 0;
        }
        // SAFETY: magic and device ID registers of a mapped window.
        unsafe {
            if base.read_volatile() != 0x7472_6976 {
                return 0;
            }
            base.add(2).read_volatile()
        }
    }
}

impl Transport for FsMmio {
    fn device_type(&self) -> DeviceType {
        // `DeviceType` has no filesystem variant; nothing reads this.
        DeviceType::_9P
    }
    fn read_device_features(&mut self) -> u64 {
        self.write32(0x014, 0);
        let lo = u64::from(self.read32(0x010));
        self.write32(0x014, 1);
        lo | (u64::from(self.read32(0x010)) << 32)
    }
    fn write_driver_features(&mut self, f: u64) {
        self.write32(0x024, 0);
        self.write32(0x020, f as u32);
        self.write32(0x024, 1);
        self.write32(0x020, (f >> 32) as u32);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write32(0x030, u32::from(queue));
        self.read32(0x034)
    }
    fn notify(&mut self, queue: u16) {
        self.write32(0x050, u32::from(queue));
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read32(0x070))
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.write32(0x070, status.bits());
    }
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        self.write32(0x030, u32::from(queue));
        self.write32(0x038, size);
        for (reg, addr) in [(0x080, descriptors), (0x090, driver), (0x0a0, device)] {
            self.write32(reg, addr as u32);
            self.write32(reg + 4, (addr >> 32) as u32);
        }
        self.write32(0x044, 1);
    }
    fn queue_unset(&mut self, queue: u16) {
        self.write32(0x030, u32::from(queue));
        self.write32(0x044, 0);
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.write32(0x030, u32::from(queue));
        self.read32(0x044) != 0
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        let s = self.read32(0x060);
        self.write32(0x064, s);
        InterruptStatus::from_bits_truncate(s)
    }
    fn read_config_generation(&self) -> u32 {
        self.read32(0x0fc)
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> VirtioResult<T> {
        // Word by word: each access is an exit to the host.
        let mut v = T::new_zeroed();
        for (i, chunk) in v.as_mut_bytes().chunks_mut(4).enumerate() {
            let word = self.read32(0x100 + offset + 4 * i).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(v)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> VirtioResult<()> {
        Err(virtio_drivers::Error::Unsupported)
    }
}

/// Where a virtio-fs device's registers are: a virtio-mmio window driven
/// here, or a PCI function through `virtio-drivers`' `PciTransport` (which
/// takes the function once `pci.rs` has shown it a device ID it knows).
pub enum FsTransport {
    /// virtio-mmio, version 2.
    Mmio(FsMmio),
    /// PCI (QEMU pc and q35: `vhost-user-fs-pci`).
    Pci(virtio_drivers::transport::pci::PciTransport),
}

/// `$e` with `$t` bound to whichever transport `$s` holds.
macro_rules! each {
    ($s:expr, $t:ident => $e:expr) => {
        match $s {
            FsTransport::Mmio($t) => $e,
            FsTransport::Pci($t) => $e,
        }
    };
}

impl Transport for FsTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::_9P
    }
    fn read_device_features(&mut self) -> u64 {
        each!(self, t => t.read_device_features())
    }
    fn write_driver_features(&mut self, f: u64) {
        each!(self, t => t.write_driver_features(f))
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        each!(self, t => t.max_queue_size(queue))
    }
    fn notify(&mut self, queue: u16) {
        each!(self, t => t.notify(queue))
    }
    fn get_status(&self) -> DeviceStatus {
        each!(self, t => t.get_status())
    }
    fn set_status(&mut self, status: DeviceStatus) {
        each!(self, t => t.set_status(status))
    }
    fn set_guest_page_size(&mut self, size: u32) {
        each!(self, t => t.set_guest_page_size(size))
    }
    fn requires_legacy_layout(&self) -> bool {
        each!(self, t => t.requires_legacy_layout())
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        each!(self, t => t.queue_set(queue, size, descriptors, driver, device))
    }
    fn queue_unset(&mut self, queue: u16) {
        each!(self, t => t.queue_unset(queue))
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        each!(self, t => t.queue_used(queue))
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        each!(self, t => t.ack_interrupt())
    }
    fn read_config_generation(&self) -> u32 {
        each!(self, t => t.read_config_generation())
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> VirtioResult<T> {
        each!(self, t => t.read_config_space(offset))
    }
    fn write_config_space<T: IntoBytes + Immutable>(&mut self, offset: usize, value: T) -> VirtioResult<()> {
        each!(self, t => t.write_config_space(offset, value))
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    /// The device refused the buffers or broke the protocol.
    Device,
}

/// How a device's requests complete by interrupt: its line, how to wait
/// for it, whether each interrupt must be acknowledged.
type Irq = (u32, fn(u32), bool);

/// A request whose reply nobody waits for (RELEASE, FLUSH, FORGET), on
/// the queue until the device hands it back.
struct Posted {
    token: u16,
    request: Box<[u8]>,
    reply: Box<[u8]>,
}

/// Most posted requests kept before they are pushed to the device.
const MAX_POSTED: usize = 16;

/// A virtio-fs device, ready for requests.
///
/// Only the request queue is set up: FUSE's high-priority queue exists
/// for FORGETs a kernel must send while its request queue is full, which
/// this driver never does (every request here goes to the request queue,
/// FORGET included), and leaving it unset saves ten register exits.
pub struct VirtioFs {
    transport: FsTransport,
    requests: VirtQueue<ToritoHal, REQUEST_QUEUE_SIZE>,
    posted: Vec<Posted>,
    tag: String,
    /// The interrupt line and how to wait for it, and whether interrupts
    /// must be acknowledged; `None`: requests are polled.
    irq: Option<Irq>,
}

impl VirtioFs {
    /// Set the device up (status steps, features, the request queue).
    pub fn new(mut t: FsTransport) -> VirtioResult<Self> {
        t.set_status(DeviceStatus::empty());
        t.set_status(DeviceStatus::ACKNOWLEDGE);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = t.read_device_features();
        t.write_driver_features(offered & VERSION_1);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        if !t.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(virtio_drivers::Error::Unsupported);
        }
        let mut requests = VirtQueue::new(&mut t, REQUEST_QUEUE, false, false)?;
        requests.set_dev_notify(false);
        t.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        // The tag, a word at a time (virtio-mmio: each word is an exit).
        let mut raw = [0u8; 36];
        for (i, w) in raw.chunks_mut(4).enumerate() {
            w.copy_from_slice(&t.read_config_space::<u32>(4 * i)?.to_le_bytes());
        }
        let tag = String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or(&[])).into_owned();
        Ok(Self { transport: t, requests, posted: Vec::new(), tag, irq: None })
    }

    /// The tag the host gave the share.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Complete requests by interrupt on `line` (waiting with `wait`;
    /// `ack`: acknowledge each, as level lines need).
    pub fn use_interrupts(&mut self, line: u32, wait: fn(u32), ack: bool) {
        self.irq = Some((line, wait, ack));
    }

    /// Whether requests complete by interrupt.
    pub fn interrupts(&self) -> bool {
        self.irq.is_some()
    }

    /// Send one request: the device reads `inputs` and writes `outputs`;
    /// returns the bytes it wrote. Posted requests go with it, in the same
    /// notification.
    pub fn request<'a>(
        &mut self,
        inputs: &'a [&'a [u8]],
        outputs: &'a mut [&'a mut [u8]],
    ) -> Result<usize, FsError> {
        if self.requests.available_desc() < inputs.len() + outputs.len() {
            self.flush()?;
        }
        // SAFETY: the buffers stay borrowed, untouched, until the same
        // token is popped below.
        let token = unsafe { self.requests.add(inputs, outputs) }.map_err(|_| FsError::Device)?;
        self.notify();
        self.complete(Some(token))?;
        // SAFETY: the buffers given to `add` with this token.
        let n = unsafe { self.requests.pop_used(token, inputs, outputs) }.map_err(|_| FsError::Device)?;
        Ok(n as usize)
    }

    /// Queue `request` (its header and body in one buffer) with room for a
    /// reply of `reply_len` bytes that nobody reads: the device sees it
    /// with the next request, or when [`VirtioFs::flush`] is called. Costs
    /// no exit of its own.
    pub fn post(&mut self, request: Box<[u8]>, reply_len: usize) -> Result<(), FsError> {
        if self.posted.len() >= MAX_POSTED || self.requests.available_desc() < 2 {
            self.flush()?;
        }
        let mut reply = alloc::vec![0u8; reply_len].into_boxed_slice();
        let token = {
            let inputs = [&*request];
            let mut room: [&mut [u8]; 1] = [&mut reply];
            let outputs: &mut [&mut [u8]] = if reply_len == 0 { &mut room[..0] } else { &mut room[..] };
            // SAFETY: both buffers are boxed and kept in `posted` (a move
            // of the box does not move its contents) until `reap` pops
            // this token.
            unsafe { self.requests.add(&inputs, outputs) }.map_err(|_| FsError::Device)?
        };
        self.posted.push(Posted { token, request, reply });
        Ok(())
    }

    /// Push every posted request to the device and wait until it has
    /// handed them all back.
    pub fn flush(&mut self) -> Result<(), FsError> {
        if self.posted.is_empty() {
            return Ok(());
        }
        self.notify();
        self.complete(None)
    }

    fn notify(&mut self) {
        if self.requests.should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
    }

    /// Wait until `token` is next in the used ring (`None`: until every
    /// posted request is back), taking back posted requests on the way.
    fn complete(&mut self, token: Option<u16>) -> Result<(), FsError> {
        let mut armed = false;
        let r = loop {
            if token.is_none() && self.posted.is_empty() {
                break Ok(());
            }
            match self.requests.peek_used() {
                Some(t) if Some(t) == token => break Ok(()),
                Some(t) => {
                    if let Err(e) = self.reap(t) {
                        break Err(e);
                    }
                }
                None => match self.irq {
                    Some((line, wait, ack)) => {
                        if !armed {
                            self.requests.set_dev_notify(true);
                            // The flag's store before the next look at the
                            // used ring.
                            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
                            armed = true;
                            continue;
                        }
                        wait(line);
                        if ack {
                            self.transport.ack_interrupt();
                        }
                    }
                    None => core::hint::spin_loop(),
                },
            }
        };
        if armed {
            self.requests.set_dev_notify(false);
        }
        r
    }

    /// Take back the posted request `token` (its reply is not read).
    fn reap(&mut self, token: u16) -> Result<(), FsError> {
        let i = self.posted.iter().position(|p| p.token == token).ok_or(FsError::Device)?;
        let mut p = self.posted.swap_remove(i);
        let inputs = [&*p.request];
        let empty = p.reply.is_empty();
        let mut room: [&mut [u8]; 1] = [&mut p.reply];
        let outputs: &mut [&mut [u8]] = if empty { &mut room[..0] } else { &mut room[..] };
        // SAFETY: the buffers given to `add` with this token in `post`.
        unsafe { self.requests.pop_used(token, &inputs, outputs) }.map_err(|_| FsError::Device)?;
        Ok(())
    }
}
