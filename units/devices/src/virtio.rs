//! virtio devices through `virtio-drivers`: probing a virtio-mmio register
//! window, and the block driver behind [`BlockDevice`].
//!
//! Reads and writes complete by interrupt when the kernel routed the
//! device's line (the thread sleeps; on wake-up the driver acknowledges
//! the interrupt first, then looks at the used ring, so no completion is
//! missed), else by polling the used ring (memory reads, no exit). Flush
//! and get-id always poll (`virtio-drivers` has no non-blocking form).
#![allow(unsafe_code)]

use core::ptr::NonNull;

use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};

use crate::cmdline::MmioDevice;
use crate::hal::ToritoHal;
use crate::{BlockDevice, BlockError, check_request};

/// A virtio block device on the MMIO transport.
pub struct VirtioBlock {
    dev: VirtIOBlk<ToritoHal, crate::stepwise::Stepwise>,
    blocks: u64,
    readonly: bool,
    /// The interrupt line and how to wait for it, when routed.
    irq: Option<(u32, fn(u32))>,
    /// Where the device is.
    pub location: Location,
}

/// Where a device was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// A virtio-mmio window from the command line.
    Mmio(MmioDevice),
    /// A PCI function: bus, device, function.
    Pci(u8, u8, u8),
}

/// What a virtio-mmio window holds.
pub enum Probed {
    /// A block device, ready.
    Block(alloc::boxed::Box<VirtioBlock>),
    /// A network device, ready.
    Net(alloc::boxed::Box<crate::net::VirtioNet>),
    /// A socket (vsock) device, ready.
    Vsock(alloc::boxed::Box<crate::vsock::Vsock>),
    /// A filesystem (virtio-fs) device, ready.
    Fs(alloc::boxed::Box<crate::virtio_fs::VirtioFs>),
    /// A device this unit has no driver for (yet).
    Other(DeviceType),
}

/// Why a window could not be used.
#[derive(Debug)]
pub enum ProbeError {
    /// Not a virtio-mmio window, or a version `virtio-drivers` does not know.
    Transport(MmioError),
    /// A virtio PCI function `virtio-drivers` cannot use.
    Pci(virtio_drivers::transport::pci::VirtioPciError),
    /// The driver could not set the device up.
    Driver(virtio_drivers::Error),
    /// A device this unit drives, in a form it cannot use (the reason).
    Unsupported(&'static str),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProbeError::Transport(e) => write!(f, "not a usable virtio-mmio device: {e}"),
            ProbeError::Pci(e) => write!(f, "not a usable virtio PCI device: {e}"),
            ProbeError::Driver(e) => write!(f, "driver set-up failed: {e}"),
            ProbeError::Unsupported(why) => f.write_str(why),
        }
    }
}

/// Set up the device in the virtio-mmio window `d`.
///
/// # Safety
/// `d` must describe a register window the platform really has (the
/// loader named it), identity-mapped, and not used by anything else for
/// the rest of the program.
pub unsafe fn probe_mmio(
    d: MmioDevice,
    ack: bool,
    batch: Option<crate::batched::Monitor>,
) -> Result<Probed, ProbeError> {
    // The Torito monitor: the device's setup in three exits, the first of
    // which also tells its type.
    let mut fs = false;
    if let Some(monitor) = batch {
        match crate::batched::Batched::new(d.base, monitor) {
            Ok(b) => return attach(crate::stepwise::Inner::Batched(b), Location::Mmio(d), ack),
            Err(crate::batched::NotBatched::OtherType(id)) => fs = id == crate::virtio_fs::DEVICE_ID,
            Err(crate::batched::NotBatched::Unavailable) => {}
        }
    }
    // virtio-fs, which `virtio-drivers`' transport refuses: driven here.
    // SAFETY: forwarded from the caller.
    if fs || unsafe { crate::virtio_fs::FsMmio::device_id(d) } == crate::virtio_fs::DEVICE_ID {
        // SAFETY: forwarded from the caller.
        let t = unsafe { crate::virtio_fs::FsMmio::new(d) }.map_err(ProbeError::Unsupported)?;
        return crate::virtio_fs::VirtioFs::new(crate::virtio_fs::FsTransport::Mmio(t))
            .map(|f| Probed::Fs(alloc::boxed::Box::new(f)))
            .map_err(ProbeError::Driver);
    }
    let header = NonNull::new(d.base as *mut VirtIOHeader)
        .ok_or(ProbeError::Transport(MmioError::MmioRegionTooSmall))?;
    // SAFETY: forwarded from the caller; the window lasts for ever.
    let transport = unsafe { MmioTransport::new(header, d.size as usize) }.map_err(ProbeError::Transport)?;
    attach(crate::stepwise::Inner::Plain(SomeTransport::from(transport)), Location::Mmio(d), ack)
}

/// Put the driver for its type on a transport.
/// `ack`: whether the device's interrupts must be acknowledged.
pub(crate) fn attach(
    transport: crate::stepwise::Inner,
    location: Location,
    ack: bool,
) -> Result<Probed, ProbeError> {
    let transport = crate::stepwise::Stepwise::new(transport, ack);
    match transport.device_type() {
        DeviceType::Block => {
            let dev = VirtIOBlk::<ToritoHal, _>::new(transport).map_err(ProbeError::Driver)?;
            let (blocks, readonly) = (dev.capacity(), dev.readonly());
            Ok(Probed::Block(alloc::boxed::Box::new(VirtioBlock {
                dev,
                blocks,
                readonly,
                irq: None,
                location,
            })))
        }
        DeviceType::Network => crate::net::VirtioNet::new(transport, location)
            .map(|n| Probed::Net(alloc::boxed::Box::new(n)))
            .map_err(ProbeError::Driver),
        DeviceType::Socket => crate::vsock::Vsock::new(transport, location)
            .map(|v| Probed::Vsock(alloc::boxed::Box::new(v)))
            .map_err(ProbeError::Driver),
        other => Ok(Probed::Other(other)),
    }
}

fn io(e: virtio_drivers::Error) -> BlockError {
    match e {
        virtio_drivers::Error::Unsupported => BlockError::Unsupported,
        _ => BlockError::Io,
    }
}

impl VirtioBlock {
    /// Complete requests by interrupt on `line`, waiting with `wait`.
    /// Interrupts stay suppressed (the avail ring's NO_INTERRUPT flag)
    /// except while a thread waits: a device that completes a request
    /// during the notification's exit (the Torito monitor does) needs
    /// none, and each costs the guest an interrupt.
    pub fn use_interrupts(&mut self, line: u32, wait: fn(u32)) {
        self.dev.disable_interrupts();
        self.irq = Some((line, wait));
    }

    /// Whether requests complete by interrupt.
    pub fn interrupts(&self) -> bool {
        self.irq.is_some()
    }

    /// Sleep until request `token` is in the used ring.
    fn wait_for(&mut self, token: u16, (line, wait): (u32, fn(u32))) {
        if self.dev.peek_used() == Some(token) {
            return;
        }
        self.dev.enable_interrupts();
        // The flag store before the look at the used ring: a device that
        // completes after the look sees the flag and interrupts.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        while self.dev.peek_used() != Some(token) {
            wait(line);
            // Acknowledge before looking again: a completion after this
            // raises the line anew.
            self.dev.ack_interrupt();
        }
        self.dev.disable_interrupts();
    }

    /// Whether the device refuses writes.
    pub fn readonly(&self) -> bool {
        self.readonly
    }
}

impl BlockDevice for VirtioBlock {
    fn block_size(&self) -> usize {
        SECTOR_SIZE
    }

    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(self, lba, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let Some(irq) = self.irq else { return self.dev.read_blocks(lba as usize, buf).map_err(io) };
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        // SAFETY: `req`, `buf` and `resp` stay borrowed here, untouched,
        // until the request is completed below with the same buffers.
        let token = unsafe { self.dev.read_blocks_nb(lba as usize, &mut req, buf, &mut resp) }.map_err(io)?;
        self.wait_for(token, irq);
        // SAFETY: the same buffers as `read_blocks_nb` got; the device is
        // done with them (the token is in the used ring).
        unsafe { self.dev.complete_read_blocks(token, &req, buf, &mut resp) }.map_err(io)
    }

    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_request(self, lba, buf.len())?;
        if self.readonly {
            return Err(BlockError::ReadOnly);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let Some(irq) = self.irq else { return self.dev.write_blocks(lba as usize, buf).map_err(io) };
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        // SAFETY: as in `read_blocks`.
        let token =
            unsafe { self.dev.write_blocks_nb(lba as usize, &mut req, buf, &mut resp) }.map_err(io)?;
        self.wait_for(token, irq);
        // SAFETY: as in `read_blocks`.
        unsafe { self.dev.complete_write_blocks(token, &req, buf, &mut resp) }.map_err(io)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.dev.flush().map_err(io)
    }

    fn read_only(&self) -> bool {
        self.readonly
    }

    fn device_id(&mut self) -> Result<alloc::string::String, BlockError> {
        let mut buf = [0u8; 20];
        let n = self.dev.device_id(&mut buf).map_err(io)?;
        Ok(alloc::string::String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl core::fmt::Display for Location {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Location::Mmio(d) => write!(f, "{:#x}", d.base),
            Location::Pci(b, d, func) => write!(f, "PCI {b:02x}:{d:02x}.{func}"),
        }
    }
}
