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
//! monitor. Everything else goes straight through.

use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, SomeTransport, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// [`SomeTransport`], with status writes split into the spec's steps.
pub struct Stepwise {
    inner: SomeTransport<'static>,
    /// Acknowledge interrupts (a level line needs it to interrupt again).
    ack: bool,
}

impl Stepwise {
    /// Wrap `inner`; `ack`: whether interrupts must be acknowledged.
    pub fn new(inner: SomeTransport<'static>, ack: bool) -> Self {
        Self { inner, ack }
    }
}

impl Transport for Stepwise {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, f: u64) {
        self.inner.write_driver_features(f)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let both = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        if status.contains(both) && self.inner.get_status().is_empty() {
            self.inner.set_status(DeviceStatus::ACKNOWLEDGE);
        }
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, size: u32) {
        self.inner.set_guest_page_size(size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        self.inner.queue_set(queue, size, descriptors, driver, device)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        if self.ack { self.inner.ack_interrupt() } else { InterruptStatus::empty() }
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
