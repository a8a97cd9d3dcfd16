//! A connection httpd can serve: TCP or vsock (as Toro's StaticWebServer,
//! reached from the host through the hypervisor's vsock socket).

use core::time::Duration;

use kernel::net::Error;
use kernel::net::tcp::TcpStream;
use kernel::net::vsock::VsockStream;

/// The stream operations httpd uses.
pub trait Conn: Send + 'static {
    /// Read what has arrived; 0 at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error>;
    /// Write all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Error>;
    /// Give up reads after `t`.
    fn set_read_timeout(&mut self, t: Option<Duration>);
    /// Wait (at most `t`) until the peer has everything written.
    fn flush(&mut self, t: Duration) -> Result<(), Error>;
    /// Close the sending side.
    fn shutdown(&mut self) -> Result<(), Error>;
}

macro_rules! conn {
    ($t:ty) => {
        impl Conn for $t {
            fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
                <$t>::read(self, buf)
            }
            fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
                <$t>::write_all(self, buf)
            }
            fn set_read_timeout(&mut self, t: Option<Duration>) {
                <$t>::set_read_timeout(self, t)
            }
            fn flush(&mut self, t: Duration) -> Result<(), Error> {
                <$t>::flush(self, t)
            }
            fn shutdown(&mut self) -> Result<(), Error> {
                <$t>::shutdown(self)
            }
        }
    };
}

conn!(TcpStream);
conn!(VsockStream);
