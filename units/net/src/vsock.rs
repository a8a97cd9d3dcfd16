//! vsock streams between the appliance and its host, without an IP
//! network: [`VsockListener`] and [`VsockStream`], blocking like their TCP
//! counterparts. The host side is the hypervisor's (Firecracker's and the
//! Torito monitor's "hybrid vsock": a Unix socket on the host).

use alloc::vec::Vec;

use unit_devices::vsock::Vsock;
use virtio_drivers::device::socket::{SocketError, VsockAddr, VsockEventType};

use crate::Error;
use crate::stack::Deadline;

struct State {
    dev: Vsock,
    /// Connections the manager accepted, waiting for `accept`: (peer,
    /// local port).
    pending: Vec<(VsockAddr, u32)>,
    /// Connections the peer closed.
    closed: Vec<(VsockAddr, u32)>,
    /// Connections we opened that the peer accepted.
    connected: Vec<(VsockAddr, u32)>,
    next_port: u32,
}

static VSOCK: spin::Mutex<Option<State>> = spin::Mutex::new(None);

/// Take the first vsock device; returns the guest's CID.
pub fn init(devices: Vec<Vsock>) -> Option<u64> {
    let mut dev = devices.into_iter().next()?;
    let cid = dev.guest_cid();
    *VSOCK.lock() =
        Some(State { dev, pending: Vec::new(), closed: Vec::new(), connected: Vec::new(), next_port: 49152 });
    Some(cid)
}

/// Collect the device's events: new connections, closed ones.
fn pump(st: &mut State) {
    while let Ok(Some(ev)) = st.dev.manager().poll() {
        let key = (ev.source, ev.destination.port);
        match ev.event_type {
            VsockEventType::ConnectionRequest => st.pending.push(key),
            VsockEventType::Disconnected { .. } => st.closed.push(key),
            VsockEventType::Connected => st.connected.push(key),
            _ => {}
        }
    }
}

/// Wait until `f` answers (the thread sleeps between looks).
fn block<T>(f: impl FnMut(&mut State) -> Option<T>) -> Result<T, Error> {
    block_until(Deadline::NONE, f)
}

/// [`block`], giving up with `Error::TimedOut` once `deadline` passed (it is
/// looked at whenever the thread wakes: within ~20 ms).
fn block_until<T>(deadline: Deadline, mut f: impl FnMut(&mut State) -> Option<T>) -> Result<T, Error> {
    if VSOCK.lock().is_none() {
        return Err(Error::NoInterface);
    }
    unit_process::wait_for_event(|| {
        let mut g = VSOCK.lock();
        let st = g.as_mut()?;
        pump(st);
        match f(st) {
            Some(v) => Some(Ok(v)),
            None if deadline.passed() => Some(Err(Error::TimedOut)),
            None => None,
        }
    })
}

/// A vsock port waiting for the host's connections.
pub struct VsockListener {
    port: u32,
}

impl VsockListener {
    /// Listen on vsock `port`.
    pub fn bind(port: u32) -> Result<Self, Error> {
        let mut g = VSOCK.lock();
        let st = g.as_mut().ok_or(Error::NoInterface)?;
        st.dev.manager().listen(port);
        drop(g);
        crate::milestone::reached(crate::milestone::Milestone::Listening);
        Ok(Self { port })
    }

    /// Wait for a connection and take it.
    pub fn accept(&mut self) -> Result<VsockStream, Error> {
        let port = self.port;
        let accepted = block(|st| {
            let i = st.pending.iter().position(|&(_, p)| p == port)?;
            let (peer, port) = st.pending.remove(i);
            st.closed.retain(|&k| k != (peer, port));
            Some(VsockStream { peer, port, read_timeout: None })
        });
        if accepted.is_ok() {
            crate::milestone::reached(crate::milestone::Milestone::FirstAccept);
        }
        accepted
    }
}

/// A vsock connection.
pub struct VsockStream {
    peer: VsockAddr,
    port: u32,
    read_timeout: Option<core::time::Duration>,
}

/// Largest piece sent at once (the peer's credit must cover it).
const CHUNK: usize = 4096;

impl VsockStream {
    /// Connect to `port` on the host (CID 2); with the Torito monitor that
    /// reaches the Unix socket `PATH_<port>`.
    pub fn connect(port: u32) -> Result<VsockStream, Error> {
        let peer = VsockAddr { cid: virtio_drivers::device::socket::VMADDR_CID_HOST, port };
        let local = {
            let mut g = VSOCK.lock();
            let st = g.as_mut().ok_or(Error::NoInterface)?;
            let local = st.next_port;
            st.next_port = st.next_port.wrapping_add(1).max(49152);
            st.dev.manager().connect(peer, local).map_err(|_| Error::ConnectionRefused)?;
            local
        };
        block(|st| {
            if let Some(i) = st.connected.iter().position(|&k| k == (peer, local)) {
                st.connected.remove(i);
                Some(Ok(VsockStream { peer, port: local, read_timeout: None }))
            } else if let Some(i) = st.closed.iter().position(|&k| k == (peer, local)) {
                st.closed.remove(i);
                Some(Err(Error::ConnectionRefused))
            } else {
                None
            }
        })?
    }

    /// Make [`VsockStream::read`] give up after `t` with `Error::TimedOut`
    /// (`None`: wait for ever), as `TcpStream::set_read_timeout`.
    pub fn set_read_timeout(&mut self, t: Option<core::time::Duration>) {
        self.read_timeout = t;
    }

    /// Everything written is in the device's queue at once (there is no
    /// acknowledgement to wait for, as TCP has): returns at once.
    pub fn flush(&mut self, _t: core::time::Duration) -> Result<(), Error> {
        Ok(())
    }

    /// Read what has arrived (waiting until something has); 0 once the
    /// peer has closed and everything was read.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let (peer, port) = (self.peer, self.port);
        block_until(Deadline::after(self.read_timeout), |st| {
            let closed = st.closed.contains(&(peer, port));
            match st.dev.manager().recv(peer, port, buf) {
                Ok(n) if n > 0 => {
                    let _ = st.dev.manager().update_credit(peer, port);
                    Some(Ok(n))
                }
                Ok(_) if closed => Some(Ok(0)),
                Ok(_) => None,
                Err(_) => Some(Ok(0)),
            }
        })?
    }

    /// Write all of `buf` (waiting for the peer's credit).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        let (peer, port) = (self.peer, self.port);
        for piece in buf.chunks(CHUNK) {
            block(|st| match st.dev.manager().send(peer, port, piece) {
                Ok(()) => Some(Ok(())),
                Err(virtio_drivers::Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => {
                    None
                }
                Err(_) => Some(Err(Error::ConnectionReset)),
            })??;
        }
        Ok(())
    }

    /// Close the connection (the peer reads end of stream).
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let mut g = VSOCK.lock();
        let st = g.as_mut().ok_or(Error::NoInterface)?;
        st.dev.manager().shutdown(self.peer, self.port).map_err(|_| Error::ConnectionReset)
    }
}

impl Drop for VsockStream {
    fn drop(&mut self) {
        let mut g = VSOCK.lock();
        if let Some(st) = g.as_mut() {
            let _ = st.dev.manager().force_close(self.peer, self.port);
            st.closed.retain(|&k| k != (self.peer, self.port));
        }
    }
}

impl embedded_io::ErrorType for VsockStream {
    type Error = Error;
}

/// `embedded_io::Read`: as [`VsockStream::read`].
impl embedded_io::Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        VsockStream::read(self, buf)
    }
}

/// `embedded_io::Write`: every write is whole (as
/// [`VsockStream::write_all`]); `write!(stream, …)` works.
impl embedded_io::Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
}
