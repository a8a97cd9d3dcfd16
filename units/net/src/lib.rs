//! Torito networking unit: a TCP/IP stack (smoltcp) over the devices
//! unit's [`NetDevice`], and a blocking socket API in the style of
//! `std::net`.
//!
//! - [`init`] takes the first network device and the address from the
//!   kernel command line (`torito.ip=ADDR/PREFIX`, `torito.gw=ADDR`), or
//!   asks DHCP for one when none is given ([`wait_for_address`]).
//! - [`tcp::TcpListener`] / [`tcp::TcpStream`]: blocking calls that let the
//!   core's other threads run and sleep until the device interrupts (the
//!   process unit's event wait), never a busy spin. ICMP echo requests are
//!   answered by the stack.
//!
//! - [`udp::UdpSocket`]: datagrams, the same way; reads can time out
//!   (`set_read_timeout`, TCP too).
//!
//! - [`vsock::VsockListener`] / [`vsock::VsockStream`]: streams to the
//!   host over virtio-vsock, the same way.
//!
//! Status (networking issue): IPv4 (static or DHCP), TCP, UDP, vsock.
//! Threads that use sockets run on core 0, where the device interrupts;
//! elsewhere they still progress, woken every 20 ms.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod addr;
pub mod config;
pub mod milestone;
mod offload;
mod stack;
pub mod tcp;
pub mod udp;
pub mod vsock;

pub use addr::ToSocketAddr;
pub use config::NetConfig;
pub use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
/// The I/O traits the streams implement (`embedded-io`): `use kernel::net::io::{Read, Write}`;
/// `Write` gives `write!` on a stream.
pub use embedded_io as io;
pub use stack::{address, drain_closed, flush, init, socket_counts, wait_for_address};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unit_devices::{NetDevice, NetError};

use core::fmt;

/// Errors of the socket API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The appliance has no network interface (no device, or no address).
    NoInterface,
    /// The port is taken or invalid.
    AddrInUse,
    /// The peer reset the connection, or it is closed for this operation.
    ConnectionReset,
    /// The stack has no room for another socket or datagram.
    NoBuffers,
    /// The time given to the call ran out.
    TimedOut,
    /// The peer refused the connection.
    ConnectionRefused,
    /// Not a socket address, or not an IPv4 one.
    InvalidInput,
    /// The socket is not connected.
    NotConnected,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoInterface => "no network interface (is a NIC attached and torito.ip= set?)",
            Self::AddrInUse => "address in use",
            Self::ConnectionReset => "connection reset or closed",
            Self::NoBuffers => "no room for another socket or datagram",
            Self::TimedOut => "timed out",
            Self::ConnectionRefused => "connection refused",
            Self::InvalidInput => "not an IPv4 socket address (e.g. 10.0.2.1:80)",
            Self::NotConnected => "not connected",
        })
    }
}

impl core::error::Error for Error {}

impl embedded_io::Error for Error {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind as K;
        match self {
            Self::NoInterface => K::AddrNotAvailable,
            Self::AddrInUse => K::AddrInUse,
            Self::ConnectionReset => K::ConnectionReset,
            Self::NoBuffers => K::OutOfMemory,
            Self::TimedOut => K::TimedOut,
            Self::ConnectionRefused => K::ConnectionRefused,
            Self::InvalidInput => K::InvalidInput,
            Self::NotConnected => K::NotConnected,
        }
    }
}
