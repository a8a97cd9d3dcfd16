//! A transport wrapper that sets the device status one step at a time.
//!
//! `virtio-drivers` starts a device by writing ACKNOWLEDGE | DRIVER at
//! once after the reset; Firecracker accepts only ACKNOWLEDGE from a reset
//! device ("invalid virtio driver status transition: 0x0 -> 0x3") and
//! ignores the device from then on. This wrapper writes ACKNOWLEDGE first.
//!
//! It also leaves out the interrupt acknowledgement (a read of
//! InterruptStatus and a write of InterruptACK: two exits) where the
//! platform signals every interrupt as a message and needs none: the Torito
//! monitor. Everything else goes straight through, to `virtio-drivers`'
//! transport or, on the Torito monitor, to [`crate::batched`].

use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, SomeTransport, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The transport underneath: `virtio-drivers`' own, or batched register
/// access on the Torito monitor ([`crate::batched`]).
pub enum Inner {
    /// MMIO or PCI, one exit per register access.
    Plain(SomeTransport<'static>),
    /// The Torito monitor's batches.
    Batched(crate::batched::Batched),
}

/// Call `$call` on whichever transport `$inner` holds.
macro_rules! each {
    ($inner:expr, $t:ident => $call:expr) => {
        match $inner {
            Inner::Plain($t) => $call,
            Inner::Batched($t) => $call,
        }
    };
}

/// [`SomeTransport`] (or [`crate::batched::Batched`]), with status writes
/// split into the spec's steps.
pub struct Stepwise {
    inner: Inner,
    /// Acknowledge interrupts (a level line needs it to interrupt again).
    ack: bool,
}

impl Stepwise {
    /// Wrap `inner`; `ack`: whether interrupts must be acknowledged.
    pub fn new(inner: Inner, ack: bool) -> Self {
        Self { inner, ack }
    }
}

impl Transport for Stepwise {
    fn device_type(&self) -> DeviceType {
        each!(&self.inner, t => t.device_type())
    }
    fn read_device_features(&mut self) -> u64 {
        each!(&mut self.inner, t => t.read_device_features())
    }
    fn write_driver_features(&mut self, f: u64) {
        each!(&mut self.inner, t => t.write_driver_features(f))
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        each!(&mut self.inner, t => t.max_queue_size(queue))
    }
    fn notify(&mut self, queue: u16) {
        each!(&mut self.inner, t => t.notify(queue))
    }
    fn get_status(&self) -> DeviceStatus {
        each!(&self.inner, t => t.get_status())
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let both = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        if status.contains(both) && self.get_status().is_empty() {
            each!(&mut self.inner, t => t.set_status(DeviceStatus::ACKNOWLEDGE));
        }
        each!(&mut self.inner, t => t.set_status(status))
    }
    fn set_guest_page_size(&mut self, size: u32) {
        each!(&mut self.inner, t => t.set_guest_page_size(size))
    }
    fn requires_legacy_layout(&self) -> bool {
        each!(&self.inner, t => t.requires_legacy_layout())
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        each!(&mut self.inner, t => t.queue_set(queue, size, descriptors, driver, device))
    }
    fn queue_unset(&mut self, queue: u16) {
        each!(&mut self.inner, t => t.queue_unset(queue))
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        each!(&mut self.inner, t => t.queue_used(queue))
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        if self.ack { each!(&mut self.inner, t => t.ack_interrupt()) } else { InterruptStatus::empty() }
    }
    fn read_config_generation(&self) -> u32 {
        each!(&self.inner, t => t.read_config_generation())
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        each!(&self.inner, t => t.read_config_space(offset))
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        each!(&mut self.inner, t => t.write_config_space(offset, value))
    }
}
