//! virtio-vsock: stream sockets between the guest and its host, without an
//! IP network. The connection handling is `virtio-drivers`'
//! `VsockConnectionManager`; the networking unit builds its
//! `VsockListener`/`VsockStream` on [`Vsock`].

use virtio_drivers::device::socket::{VirtIOSocket, VsockConnectionManager};

use crate::hal::ToritoHal;
use crate::virtio::Location;

/// The connection manager type over our transports.
pub type Manager = VsockConnectionManager<ToritoHal, crate::stepwise::Stepwise>;

/// A virtio-vsock device.
pub struct Vsock {
    mgr: Manager,
    /// Where the device is.
    pub location: Location,
}

impl Vsock {
    /// Set up the device on `transport`.
    pub fn new(
        transport: crate::stepwise::Stepwise,
        location: Location,
    ) -> Result<Self, virtio_drivers::Error> {
        let driver = VirtIOSocket::<ToritoHal, _>::new(transport)?;
        Ok(Self { mgr: VsockConnectionManager::new(driver), location })
    }

    /// The guest's context ID.
    pub fn guest_cid(&mut self) -> u64 {
        self.mgr.guest_cid()
    }

    /// The connection manager.
    pub fn manager(&mut self) -> &mut Manager {
        &mut self.mgr
    }
}
