//! Socket addresses: `core::net`'s types, and [`ToSocketAddr`], what
//! `TcpStream::connect` and `UdpSocket::send_to` accept (as `std::net`'s
//! `ToSocketAddrs`, without name resolution: the unit has no DNS).

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::Error;

/// Something that names one IPv4 socket address: a `SocketAddrV4`, a
/// `SocketAddr` (IPv4), `(Ipv4Addr, u16)`, `([u8; 4], u16)`, or a string
/// such as `"10.0.2.1:80"`.
pub trait ToSocketAddr {
    /// The address; `Error::InvalidInput` when it is not one, or not IPv4
    /// (the stack speaks IPv4 only).
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error>;
}

impl ToSocketAddr for SocketAddrV4 {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        Ok(*self)
    }
}

impl ToSocketAddr for SocketAddr {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        match self {
            SocketAddr::V4(a) => Ok(*a),
            SocketAddr::V6(_) => Err(Error::InvalidInput),
        }
    }
}

impl ToSocketAddr for (Ipv4Addr, u16) {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        Ok(SocketAddrV4::new(self.0, self.1))
    }
}

impl ToSocketAddr for (IpAddr, u16) {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        SocketAddr::new(self.0, self.1).to_socket_addr()
    }
}

impl ToSocketAddr for ([u8; 4], u16) {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        Ok(SocketAddrV4::new(Ipv4Addr::from(self.0), self.1))
    }
}

impl ToSocketAddr for str {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        self.parse::<SocketAddrV4>().map_err(|_| Error::InvalidInput)
    }
}

impl<T: ToSocketAddr + ?Sized> ToSocketAddr for &T {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        (**self).to_socket_addr()
    }
}

impl ToSocketAddr for alloc::string::String {
    fn to_socket_addr(&self) -> Result<SocketAddrV4, Error> {
        self.as_str().to_socket_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_names_the_same_address() {
        let want = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 80);
        assert_eq!("10.0.2.1:80".to_socket_addr(), Ok(want));
        assert_eq!(([10, 0, 2, 1], 80).to_socket_addr(), Ok(want));
        assert_eq!((Ipv4Addr::new(10, 0, 2, 1), 80).to_socket_addr(), Ok(want));
        assert_eq!(SocketAddr::V4(want).to_socket_addr(), Ok(want));
        assert_eq!(alloc::string::String::from("10.0.2.1:80").to_socket_addr(), Ok(want));
        assert_eq!("10.0.2.1".to_socket_addr(), Err(Error::InvalidInput));
        assert_eq!("[::1]:80".to_socket_addr(), Err(Error::InvalidInput));
        assert_eq!(
            (IpAddr::from(core::net::Ipv6Addr::LOCALHOST), 80).to_socket_addr(),
            Err(Error::InvalidInput)
        );
    }
}
