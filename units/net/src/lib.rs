//! Torito networking unit.
//!
//! Status: API sketch. The smoltcp interface, the socket API
//! (`TcpListener`, `TcpStream`, `UdpSocket`, vsock streams) and the virtio-net
//! and virtio-vsock drivers arrive with the networking issue. What is here is
//! the device-side interface, so that drivers never depend on smoltcp.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Errors of network devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The transmit ring is full; try again later.
    WouldBlock,
    /// The frame is larger than the device's MTU.
    TooLarge,
    /// The device failed.
    Io,
}

/// A network interface that sends and receives Ethernet frames.
pub trait NetDevice {
    /// The interface's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Largest frame payload, in bytes.
    fn mtu(&self) -> usize;
    /// Queue one frame for sending.
    fn try_send(&mut self, frame: &[u8]) -> Result<(), NetError>;
    /// Take one received frame into `buf`; `Ok(None)` when none is waiting.
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;
}
