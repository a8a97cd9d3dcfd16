//! Torito devices unit: the devices the loader names, behind interfaces
//! the other units build on.
//!
//! - [`BlockDevice`]: blocks of a fixed size, typed errors; the filesystem
//!   unit depends on this, never on virtio.
//! - [`cmdline`]: virtio-mmio devices from the kernel command line
//!   (`virtio_mmio.device=<size>@<base>:<irq>`), the way QEMU microvm,
//!   Firecracker and the Torito monitor describe them.
//! - [`virtio`]: drivers from the `virtio-drivers` crate (block now; net and
//!   vsock with the networking unit) over a HAL for identity-mapped guests.
//! - [`init`] probes every device once and keeps them in one list,
//!   [`block_devices`].
//!
//! Status: virtio-blk, virtio-net, virtio-vsock and virtio-fs over
//! virtio-mmio (plain, or in register batches on the Torito monitor) and
//! PCI, completion by interrupt or inside the notification's exit; used on
//! the Torito monitor, QEMU (microvm, pc, q35) and Firecracker.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod batched;
pub mod cmdline;
mod hal;
pub mod net;
pub mod pci;
mod stepwise;
pub mod virtio;
pub mod virtio_fs;
pub mod vsock;

pub use net::{NetDevice, NetError, Offloads, RxFrame, TxOffload};

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Errors of block devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// Block index or length beyond the device.
    OutOfRange,
    /// Buffer length is not a whole number of blocks.
    Unaligned,
    /// The device refuses writes.
    ReadOnly,
    /// The device reported an I/O error.
    Io,
    /// The device does not support the request.
    Unsupported,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfRange => "block out of range",
            Self::Unaligned => "buffer is not a whole number of blocks",
            Self::ReadOnly => "device is read-only",
            Self::Io => "device I/O error",
            Self::Unsupported => "request not supported by the device",
        })
    }
}

impl core::error::Error for BlockError {}

/// A device of fixed-size blocks. Each call carries its own position.
pub trait BlockDevice {
    /// Size of a block in bytes.
    fn block_size(&self) -> usize;
    /// Number of blocks.
    fn num_blocks(&self) -> u64;
    /// Read whole blocks starting at block `lba` into `buf`.
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Write whole blocks starting at block `lba` from `buf`.
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Make completed writes durable.
    fn flush(&mut self) -> Result<(), BlockError>;
    /// The device's identifier (a serial number, up to 20 bytes), when it
    /// has one.
    fn device_id(&mut self) -> Result<String, BlockError> {
        Err(BlockError::Unsupported)
    }
    /// Whether the device refuses writes.
    fn read_only(&self) -> bool {
        false
    }
}

/// The block devices found at [`init`], in the order the loader named them.
static BLOCKS: spin::Mutex<Vec<Box<dyn BlockDevice + Send>>> = spin::Mutex::new(Vec::new());

/// What [`init`] reported, kept for apps that want to list it.
static REPORT: spin::Mutex<Option<Report>> = spin::Mutex::new(None);

/// The lines of [`init`]'s report (devices set up, then problems).
pub fn report_lines() -> Vec<String> {
    REPORT.lock().as_ref().map(|r| r.found.iter().chain(&r.problems).cloned().collect()).unwrap_or_default()
}

/// The block devices (lock held while the guard lives). Disks the
/// filesystem unit mounted are not in it.
pub fn block_devices() -> spin::MutexGuard<'static, Vec<Box<dyn BlockDevice + Send>>> {
    BLOCKS.lock()
}

/// Take every block device (the filesystem unit looks at each; what it
/// does not mount it gives back with [`give_back_block_devices`]).
pub fn take_block_devices() -> Vec<Box<dyn BlockDevice + Send>> {
    core::mem::take(&mut *BLOCKS.lock())
}

/// Put block devices back into [`block_devices`], in this order.
pub fn give_back_block_devices(devs: Vec<Box<dyn BlockDevice + Send>>) {
    BLOCKS.lock().extend(devs);
}

/// What [`init`] found, one line each, for the kernel to print when asked.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Devices set up.
    pub found: Vec<String>,
    /// Entries that could not be used, and why.
    pub problems: Vec<String>,
}

/// How devices' interrupts reach their drivers (the kernel provides it).
#[derive(Clone, Copy, Debug)]
pub struct Irq {
    /// Route interrupt line `n` (the command line's `:irq`) to the calling
    /// core; `false` when it cannot be (the driver then polls).
    pub route: fn(u32) -> bool,
    /// Wait until line `n` has interrupted (the waiting thread sleeps).
    pub wait: fn(u32),
    /// The MSI `(address, data)` that interrupts line `n` (for devices
    /// that signal with messages: PCI MSI-X), if the platform takes MSIs.
    pub msi: fn(u32) -> Option<(u64, u32)>,
    /// Whether line `n` interrupted since the last call (consumes it).
    pub take: fn(u32) -> bool,
    /// Whether virtio-mmio interrupts must be acknowledged (InterruptStatus
    /// read, InterruptACK written: two exits) for the line to interrupt
    /// again: on QEMU and Firecracker, whose lines are level. The Torito
    /// monitor sends each interrupt as a message and needs none.
    pub mmio_ack: bool,
}

/// The network devices found at [`init`], for the networking unit to take.
static NETS: spin::Mutex<Vec<Box<dyn NetDevice + Send>>> = spin::Mutex::new(Vec::new());

/// The vsock devices found at [`init`].
static VSOCKS: spin::Mutex<Vec<vsock::Vsock>> = spin::Mutex::new(Vec::new());

/// The filesystem (virtio-fs) devices found at [`init`].
static FSS: spin::Mutex<Vec<virtio_fs::VirtioFs>> = spin::Mutex::new(Vec::new());

/// Take the virtio-fs devices (the filesystem unit owns them from then on).
pub fn take_fs_devices() -> Vec<virtio_fs::VirtioFs> {
    core::mem::take(&mut *FSS.lock())
}

/// Take the vsock devices (the networking unit owns them from then on).
pub fn take_vsock_devices() -> Vec<vsock::Vsock> {
    core::mem::take(&mut *VSOCKS.lock())
}

/// Take the network devices (the networking unit owns them from then on).
pub fn take_net_devices() -> Vec<Box<dyn NetDevice + Send>> {
    core::mem::take(&mut *NETS.lock())
}

/// Probe every virtio-mmio device named in `cmdline` and, with `pci`, the
/// virtio devices on PCI bus 0; keep the block devices. Called once by the
/// kernel, before the app runs. With `irq`, virtio-mmio requests complete
/// by interrupt where the line can be routed; otherwise by polling. With
/// `batch` (the Torito monitor), virtio-mmio devices are set up through
/// register batches ([`batched`]).
pub fn init(
    cmdline: &str,
    irq: Option<Irq>,
    pci: Option<pci::PortIo>,
    batch: Option<batched::Monitor>,
) -> Report {
    use alloc::format;
    let mut report = Report::default();
    net::allow_offloads(!cmdline.split_ascii_whitespace().any(|w| w == "net.offload=off"));
    let mut blocks = BLOCKS.lock();
    for entry in cmdline::mmio_devices(cmdline) {
        let d = match entry {
            Ok(d) => d,
            Err(text) => {
                report.problems.push(format!("malformed virtio_mmio.device={text}"));
                continue;
            }
        };
        // SAFETY: the loader named this window on the command line; the
        // kernel identity-maps the MMIO range and probes each entry once.
        #[allow(unsafe_code)]
        match unsafe { virtio::probe_mmio(d, irq.is_none_or(|i| i.mmio_ack), batch) } {
            Ok(virtio::Probed::Block(mut b)) => {
                if let Some(irq) = irq.filter(|i| (i.route)(d.irq)) {
                    b.use_interrupts(d.irq, irq.wait);
                }
                report.found.push(format!(
                    "virtio-blk at {:#x} (irq {}, {}): {} blocks{}",
                    d.base,
                    d.irq,
                    if b.interrupts() { "interrupts" } else { "polled" },
                    b.num_blocks(),
                    if b.readonly() { ", read-only" } else { "" }
                ));
                blocks.push(b);
            }
            Ok(virtio::Probed::Net(mut n)) => {
                if let Some(irq) = irq.filter(|i| (i.route)(d.irq)) {
                    n.use_interrupts(d.irq, irq.take);
                }
                report.found.push(format!(
                    "virtio-net at {:#x} (irq {}, {}): MAC {}{}",
                    d.base,
                    d.irq,
                    if n.interrupts() { "interrupts" } else { "polled" },
                    mac_text(n.mac()),
                    offload_text(n.offloads())
                ));
                NETS.lock().push(n);
            }
            Ok(virtio::Probed::Vsock(mut v)) => {
                if let Some(irq) = irq {
                    (irq.route)(d.irq);
                }
                report.found.push(format!(
                    "virtio-vsock at {:#x} (irq {}): guest CID {}",
                    d.base,
                    d.irq,
                    v.guest_cid()
                ));
                VSOCKS.lock().push(*v);
            }
            Ok(virtio::Probed::Fs(mut f)) => {
                if let Some(irq) = irq.filter(|i| (i.route)(d.irq)) {
                    f.use_interrupts(d.irq, irq.wait, irq.mmio_ack);
                }
                report.found.push(format!(
                    "virtio-fs at {:#x} (irq {}, {}): tag '{}'",
                    d.base,
                    d.irq,
                    if f.interrupts() { "interrupts" } else { "polled" },
                    f.tag()
                ));
                FSS.lock().push(*f);
            }
            Ok(virtio::Probed::Other(t)) => report.found.push(format!("{t:?} at {:#x}: no driver", d.base)),
            Err(e) => report.problems.push(format!("virtio-mmio at {:#x}: {e}", d.base)),
        }
    }
    for (location, probed) in pci.map(|io| pci::probe(io, irq)).unwrap_or_default() {
        match probed {
            Ok(virtio::Probed::Block(b)) => {
                report.found.push(format!(
                    "virtio-blk at {location} ({}): {} blocks{}",
                    if b.interrupts() { "MSI-X" } else { "polled" },
                    b.num_blocks(),
                    if b.readonly() { ", read-only" } else { "" }
                ));
                blocks.push(b);
            }
            Ok(virtio::Probed::Net(n)) => {
                report.found.push(format!(
                    "virtio-net at {location} ({}): MAC {}{}",
                    if n.interrupts() { "MSI-X" } else { "polled" },
                    mac_text(n.mac()),
                    offload_text(n.offloads())
                ));
                NETS.lock().push(n);
            }
            Ok(virtio::Probed::Vsock(mut v)) => {
                report.found.push(format!("virtio-vsock at {location}: guest CID {}", v.guest_cid()));
                VSOCKS.lock().push(*v);
            }
            Ok(virtio::Probed::Fs(f)) => {
                report.found.push(format!(
                    "virtio-fs at {location} ({}): tag '{}'",
                    if f.interrupts() { "MSI-X" } else { "polled" },
                    f.tag()
                ));
                FSS.lock().push(*f);
            }
            Ok(virtio::Probed::Other(t)) => report.found.push(format!("{t:?} at {location}: no driver")),
            Err(e) => report.problems.push(format!("{location}: {e}")),
        }
    }
    *REPORT.lock() = Some(report.clone());
    report
}

/// The offloads a NIC negotiated, for its boot line ("" when none).
fn offload_text(o: net::Offloads) -> String {
    let mut parts = alloc::vec::Vec::new();
    if o.tx_csum || o.rx_csum {
        parts.push("checksums");
    }
    if o.tso4 > 0 {
        parts.push("TSO");
    }
    if parts.is_empty() { String::new() } else { alloc::format!(", offloads: {}", parts.join(", ")) }
}

fn mac_text(m: [u8; 6]) -> String {
    alloc::format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Check a request against a device's geometry; drivers call this first.
pub fn check_request(dev: &dyn BlockDevice, lba: u64, len: usize) -> Result<(), BlockError> {
    let bs = dev.block_size();
    if bs == 0 || !len.is_multiple_of(bs) {
        return Err(BlockError::Unaligned);
    }
    let blocks = (len / bs) as u64;
    match lba.checked_add(blocks) {
        Some(end) if end <= dev.num_blocks() => Ok(()),
        _ => Err(BlockError::OutOfRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Geometry;
    impl BlockDevice for Geometry {
        fn block_size(&self) -> usize {
            512
        }
        fn num_blocks(&self) -> u64 {
            8
        }
        fn read_blocks(&mut self, _: u64, _: &mut [u8]) -> Result<(), BlockError> {
            Err(BlockError::Io)
        }
        fn write_blocks(&mut self, _: u64, _: &[u8]) -> Result<(), BlockError> {
            Err(BlockError::ReadOnly)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
    }

    #[test]
    fn requests_are_checked() {
        assert_eq!(check_request(&Geometry, 0, 4096), Ok(()));
        assert_eq!(check_request(&Geometry, 7, 1024), Err(BlockError::OutOfRange));
        assert_eq!(check_request(&Geometry, u64::MAX, 512), Err(BlockError::OutOfRange));
        assert_eq!(check_request(&Geometry, 0, 100), Err(BlockError::Unaligned));
    }
}
