//! A transport wrapper that sets the device status one step at a time.
//!
//! `virtio-drivers` starts a device by writing ACKNOWLEDGE | DRIVER at
//! once after the reset; Firecracker accepts only ACKNOWLEDGE from a reset
//! device ("invalid virtio driver status transition: 0x0 -> 0x3") and
//! ignores the device from then on. This wrapper writes ACKNOWLEDGE first.
//! Everything else goes straight through.

use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, SomeTransport, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// [`SomeTransport`], with status writes split into the spec's steps.
pub struct Stepwise(pub SomeTransport<'static>);

impl Transport for Stepwise {
    fn device_type(&self) -> DeviceType {
        self.0.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.0.read_device_features()
    }
    fn write_driver_features(&mut self, f: u64) {
        self.0.write_driver_features(f)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.0.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.0.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.0.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let both = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        if status.contains(both) && self.0.get_status().is_empty() {
            self.0.set_status(DeviceStatus::ACKNOWLEDGE);
        }
        self.0.set_status(status)
    }
    fn set_guest_page_size(&mut self, size: u32) {
        self.0.set_guest_page_size(size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.0.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        self.0.queue_set(queue, size, descriptors, driver, device)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.0.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.0.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.0.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        self.0.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.0.write_config_space(offset, value)
    }
}
