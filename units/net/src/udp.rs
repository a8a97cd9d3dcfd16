//! UDP: [`UdpSocket`], blocking, in the shape of `std::net`.

use alloc::vec;
use core::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{PacketBuffer, PacketMetadata, Socket};
use smoltcp::wire::IpEndpoint;

use core::net::SocketAddr;

use crate::stack::{Deadline, Stack, block_on, with};
use crate::{Error, ToSocketAddr};

/// Datagrams each direction can hold.
const DATAGRAMS: usize = 32;
/// Payload bytes each direction can hold.
const BYTES: usize = 64 * 1024;

/// A UDP socket bound to a port of the interface's address.
pub struct UdpSocket {
    handle: SocketHandle,
    read_timeout: Option<Duration>,
}

impl UdpSocket {
    /// Bind to `port`.
    pub fn bind(port: u16) -> Result<Self, Error> {
        if port == 0 {
            return Err(Error::AddrInUse);
        }
        let handle = with(|s| {
            let buf = || PacketBuffer::new(vec![PacketMetadata::EMPTY; DATAGRAMS], vec![0u8; BYTES]);
            let mut sock = Socket::new(buf(), buf());
            sock.bind(port).map_err(|_| Error::AddrInUse)?;
            s.dirty = true;
            Ok(s.sockets.add(sock))
        })??;
        Ok(Self { handle, read_timeout: None })
    }

    /// Make [`UdpSocket::recv_from`] give up after `t` (`None`: wait for
    /// ever). The wait ends within ~20 ms after the time.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Send `buf` as one datagram to `to` (see [`ToSocketAddr`]).
    pub fn send_to(&self, buf: &[u8], to: impl ToSocketAddr) -> Result<usize, Error> {
        let h = self.handle;
        let endpoint = IpEndpoint::from(to.to_socket_addr()?);
        block_on(Deadline::NONE, |s: &mut Stack| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if !sock.can_send() {
                return None;
            }
            let r = sock.send_slice(buf, endpoint).map(|_| buf.len()).map_err(|_| Error::NoBuffers);
            s.dirty = true;
            Some(r)
        })?
    }

    /// Wait for a datagram; copy it into `buf` (truncated to fit) and say
    /// who sent it.
    pub fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error> {
        let h = self.handle;
        block_on(Deadline::after(self.read_timeout), |s: &mut Stack| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if !sock.can_recv() {
                return None;
            }
            Some(match sock.recv_slice(buf) {
                Ok((n, meta)) => Ok((n, SocketAddr::from(meta.endpoint))),
                Err(_) => Err(Error::ConnectionReset),
            })
        })?
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let h = self.handle;
        let _ = with(|s| {
            s.sockets.remove(h);
        });
    }
}
