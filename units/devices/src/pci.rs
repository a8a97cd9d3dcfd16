//! virtio devices on PCI (QEMU pc and q35): bus 0 scanned through the
//! legacy configuration ports (0xCF8/0xCFC), which the kernel reaches
//! through its CPL0 gate; `virtio-drivers` reads the virtio capabilities
//! and maps the BARs the firmware assigned.
//!
//! Interrupts: none yet (INTx needs the ACPI routing table, MSI-X a table
//! in a BAR): PCI devices complete by polling.
#![allow(unsafe_code)] // implementing `ConfigurationAccess::unsafe_clone`

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

/// The virtio devices on PCI bus 0, set up. Nothing when there is no PCI
/// (the configuration ports read all ones).
pub fn probe(io: PortIo) -> alloc::vec::Vec<(Location, Result<Probed, ProbeError>)> {
    let mut root = PciRoot::new(PortCam(io));
    let found: alloc::vec::Vec<_> = root
        .enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info).is_some())
        .map(|(df, _)| df)
        .collect();
    found
        .into_iter()
        .map(|df| {
            // Memory decoding for the BARs, bus mastering for the queues.
            root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
            let location = Location::Pci(df.bus, df.device, df.function);
            let probed = PciTransport::new::<ToritoHal, _>(&mut root, df)
                .map_err(ProbeError::Pci)
                .and_then(|t| attach(SomeTransport::from(t), location));
            (location, probed)
        })
        .collect()
}
