//! virtio devices on PCI (QEMU pc and q35): bus 0 scanned through the
//! legacy configuration ports (0xCF8/0xCFC), which the kernel reaches
//! through its CPL0 gate; `virtio-drivers` reads the virtio capabilities
//! and maps the BARs the firmware assigned.
//!
//! Interrupts: MSI-X, which `virtio-drivers` does not set up: this module
//! finds the MSI-X table and the virtio common configuration from the
//! function's capabilities, points table entry 0 at the kernel's vector
//! for the device, enables MSI-X and tells the device to signal the
//! completions of the queue that matters on entry 0 (a disk's queue 0, a
//! network device's receive queue 0, virtio-fs's request queue 1). A
//! function without MSI-X is polled.
//!
//! virtio-fs (device ID 0x105a) is driven too: `virtio-drivers` 0.13
//! refuses IDs it has no type for, so its transport is made through
//! `AliasCam`, which shows it an ID it knows.
#![allow(unsafe_code)] // `ConfigurationAccess::unsafe_clone`, MSI-X table stores

use virtio_drivers::transport::SomeTransport;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};

use crate::hal::ToritoHal;
use crate::virtio::{Location, ProbeError, Probed, attach};

/// Port I/O the kernel provides (the configuration ports trap at CPL3).
#[derive(Clone, Copy, Debug)]
pub struct PortIo {
    /// `outl(port, value)`.
    pub outl: fn(u16, u32),
    /// `inl(port)`.
    pub inl: fn(u16) -> u32,
}

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Configuration access mechanism #1.
struct PortCam(PortIo);

impl PortCam {
    fn select(&self, df: DeviceFunction, offset: u8) {
        let addr = 0x8000_0000
            | (u32::from(df.bus) << 16)
            | (u32::from(df.device) << 11)
            | (u32::from(df.function) << 8)
            | u32::from(offset & 0xfc);
        (self.0.outl)(CONFIG_ADDRESS, addr);
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        self.select(df, offset);
        (self.0.inl)(CONFIG_DATA)
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        self.select(df, offset);
        (self.0.outl)(CONFIG_DATA, data);
    }

    // SAFETY (of the contract): a clone only holds the same two functions;
    // concurrent use cannot break anything beyond the PCI protocol itself,
    // and `virtio-drivers` uses clones only to read read-only fields.
    unsafe fn unsafe_clone(&self) -> Self {
        PortCam(self.0)
    }
}

/// virtio's PCI vendor, and the modern device ID of virtio-fs (0x1040 +
/// 26), which `virtio-drivers` 0.13 does not know.
const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_FS: u16 = 0x1040 + 26;
/// A device ID `virtio-drivers` knows and drives nothing for (9P).
const ALIAS: u16 = 0x1040 + 9;

/// [`PortCam`], except that function `fs` shows the device ID [`ALIAS`]:
/// `PciTransport::new` refuses IDs it has no `DeviceType` for, and the
/// transport (capabilities, BARs, queues, notifications) is the same for
/// every modern virtio device. The virtio-fs driver never asks the
/// transport for its type.
struct AliasCam {
    cam: PortCam,
    fs: DeviceFunction,
}

impl ConfigurationAccess for AliasCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let w = self.cam.read_word(df, offset);
        if df == self.fs && offset == 0 { (w & 0xffff) | u32::from(ALIAS) << 16 } else { w }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        self.cam.write_word(df, offset, data);
    }

    // SAFETY (of the contract): as for `PortCam`.
    unsafe fn unsafe_clone(&self) -> Self {
        AliasCam { cam: PortCam(self.cam.0), fs: self.fs }
    }
}

/// Whether `info` is a virtio-fs function.
fn is_fs(info: &virtio_drivers::transport::pci::bus::DeviceFunctionInfo) -> bool {
    info.vendor_id == VIRTIO_VENDOR && info.device_id == VIRTIO_FS
}

const CAP_POINTER: u8 = 0x34;
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;

/// The memory address BAR `bar` decodes (as the firmware assigned it).
fn bar_address(cam: &PortCam, df: DeviceFunction, bar: u8) -> Option<u64> {
    if bar > 5 {
        return None;
    }
    let low = cam.read_word(df, 0x10 + 4 * bar);
    if low & 1 != 0 {
        return None; // an I/O BAR
    }
    let high = if (low >> 1) & 3 == 2 && bar < 5 { u64::from(cam.read_word(df, 0x14 + 4 * bar)) } else { 0 };
    Some((high << 32) | u64::from(low & !0xf)).filter(|&a| a != 0)
}

fn store32(addr: u64, v: u32) {
    // SAFETY: `addr` lies in a BAR the firmware assigned to this function
    // (identity-mapped MMIO), at an MSI-X table entry or a register of the
    // virtio common configuration, found from the function's capabilities.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn store16(addr: u64, v: u16) {
    // SAFETY: as in `store32`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

fn load16(addr: u64) -> u16 {
    // SAFETY: as in `store32`.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// Route queue `queue` of function `df` to the MSI `(address, data)`;
/// whether the device accepted it.
fn enable_msix(cam: &mut PortCam, df: DeviceFunction, (address, data): (u64, u32), queue: u16) -> bool {
    let (mut msix, mut common) = (None, None);
    let mut off = (cam.read_word(df, CAP_POINTER) & 0xfc) as u8;
    for _ in 0..48 {
        if off == 0 {
            break;
        }
        let head = cam.read_word(df, off);
        match head as u8 {
            CAP_MSIX => msix = Some(off),
            CAP_VENDOR if (head >> 24) as u8 == VIRTIO_PCI_CAP_COMMON_CFG => {
                let bar = cam.read_word(df, off + 4) as u8;
                common = bar_address(cam, df, bar).map(|b| b + u64::from(cam.read_word(df, off + 8)));
            }
            _ => {}
        }
        off = ((head >> 8) & 0xfc) as u8;
    }
    let (Some(msix), Some(common)) = (msix, common) else { return false };
    let table = cam.read_word(df, msix + 4);
    let Some(bar) = bar_address(cam, df, (table & 7) as u8) else { return false };
    let entry = bar + u64::from(table & !7);
    store32(entry, address as u32);
    store32(entry + 4, (address >> 32) as u32);
    store32(entry + 8, data);
    store32(entry + 12, 0); // unmasked
    // Message control is the upper half of the capability's first word:
    // enable (bit 15), no function mask (bit 14).
    let head = cam.read_word(df, msix);
    cam.write_word(df, msix, (head | 1 << 31) & !(1 << 30));
    // virtio_pci_common_cfg: msix_config at 0x10, queue_select 0x16,
    // queue_msix_vector 0x1a. No configuration-change interrupts.
    store16(common + 0x10, 0xffff);
    store16(common + 0x16, queue);
    store16(common + 0x1a, 0);
    load16(common + 0x1a) == 0
}

/// The virtio devices on PCI bus 0, set up. Nothing when there is no PCI
/// (the configuration ports read all ones). With `irq`, block devices
/// complete by MSI-X: `irq.msi(line)` gives the message for interrupt line
/// `line` (16 and up, one per function), `irq.wait` waits for it.
pub fn probe(io: PortIo, irq: Option<crate::Irq>) -> alloc::vec::Vec<(Location, Result<Probed, ProbeError>)> {
    // Configuration mechanism #1 is there when its address register reads
    // back what was written (QEMU pc/q35); a machine without PCI
    // (Firecracker, QEMU microvm) answers all ones or nothing, and is not
    // scanned: 2 port accesses instead of 64, each a trap from CPL3.
    (io.outl)(CONFIG_ADDRESS, 0x8000_0000);
    if (io.inl)(CONFIG_ADDRESS) != 0x8000_0000 {
        return alloc::vec::Vec::new();
    }
    let mut root = PciRoot::new(PortCam(io));
    let found: alloc::vec::Vec<_> = root
        .enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info).is_some() || is_fs(info))
        .map(|(df, info)| (df, is_fs(&info)))
        .collect();
    found
        .into_iter()
        .map(|(df, fs)| {
            // Memory decoding for the BARs, bus mastering for the queues.
            root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
            let location = Location::Pci(df.bus, df.device, df.function);
            let mut probed = if fs {
                let mut alias = PciRoot::new(AliasCam { cam: PortCam(io), fs: df });
                PciTransport::new::<ToritoHal, _>(&mut alias, df).map_err(ProbeError::Pci).and_then(|t| {
                    crate::virtio_fs::VirtioFs::new(crate::virtio_fs::FsTransport::Pci(t))
                        .map(|f| Probed::Fs(alloc::boxed::Box::new(f)))
                        .map_err(ProbeError::Driver)
                })
            } else {
                PciTransport::new::<ToritoHal, _>(&mut root, df).map_err(ProbeError::Pci).and_then(|t| {
                    attach(crate::stepwise::Inner::Plain(SomeTransport::from(t)), location, true)
                })
            };
            // The queue that completes requests (a block device's requests,
            // a network device's receive queue: 0; virtio-fs's request
            // queue: 1) interrupts through MSI-X entry 0.
            let line = 16 + u32::from(df.device);
            let queue = if fs { 1 } else { 0 };
            if let (Ok(p @ (Probed::Block(_) | Probed::Net(_) | Probed::Fs(_))), Some(irq)) =
                (&mut probed, irq)
                && let Some(m) = (irq.msi)(line)
                && enable_msix(&mut PortCam(io), df, m, queue)
            {
                match p {
                    Probed::Block(b) => b.use_interrupts(line, irq.wait),
                    Probed::Net(n) => n.use_interrupts(line, irq.take),
                    Probed::Fs(f) => f.use_interrupts(line, irq.wait, false),
                    Probed::Other(_) | Probed::Vsock(_) => {}
                }
            }
            (location, probed)
        })
        .collect()
}
