//! TCP: [`TcpListener`] and [`TcpStream`], blocking, in the shape of
//! `std::net`.

use alloc::vec;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};

use core::net::SocketAddr;

use crate::stack::{Deadline, Listening, Stack, block_on, with};
use crate::{Error, ToSocketAddr};

use core::sync::atomic::{AtomicUsize, Ordering};

/// Default receive and send buffer of each connection, in bytes.
pub const BUFFER: usize = 16 * 1024;
/// Default number of connections a listener holds not yet accepted (as
/// nginx's 511; Linux's own default is 4096). Listening sockets are made
/// as connections come, so an unused backlog costs nothing.
pub const BACKLOG: usize = 511;
/// A full TCP segment on Ethernet: reads and writes this large are sent
/// on at once; smaller ones wait for the core to go idle, together.
const SEGMENT: usize = 1460;

/// Whether a read or write that moved `moved` bytes, with `queued` of a
/// buffer's `capacity` in it, is one the peer may be waiting for (a
/// segment's worth, or a buffer half full): the stack polls at once
/// rather than as the core goes idle.
fn pressing(moved: &Result<usize, Error>, queued: usize, capacity: usize) -> bool {
    moved.as_ref().is_ok_and(|&n| n >= SEGMENT) || 2 * queued >= capacity
}

static BUFFER_SIZE: AtomicUsize = AtomicUsize::new(BUFFER);

/// Set the receive and send buffer size of connections made from now on
/// (at least 1 KiB): memory per connection is twice this.
pub fn set_buffer_size(bytes: usize) {
    BUFFER_SIZE.store(bytes.max(1024), Ordering::Relaxed);
}

/// The buffer size new connections get.
pub fn buffer_size() -> usize {
    BUFFER_SIZE.load(Ordering::Relaxed)
}

pub(crate) fn new_socket() -> Socket<'static> {
    let n = buffer_size();
    Socket::new(SocketBuffer::new(vec![0; n]), SocketBuffer::new(vec![0; n]))
}

/// A TCP socket waiting for connections on a port.
pub struct TcpListener {
    port: u16,
    /// Its slot in the stack's listeners.
    id: usize,
}

impl TcpListener {
    /// Listen on `port` of the interface's address, holding up to
    /// [`BACKLOG`] (511) connections not yet accepted; beyond that, new
    /// connections get resets. [`TcpListener::bind_with_backlog`] sets
    /// another bound.
    pub fn bind(port: u16) -> Result<Self, Error> {
        Self::bind_with_backlog(port, BACKLOG)
    }

    /// Listen on `port`, holding up to `backlog` (at least 1) connections
    /// not yet accepted. A listening socket is made for each connection
    /// request that comes, not ahead; beyond the backlog, connections get
    /// resets (clients retry).
    pub fn bind_with_backlog(port: u16, backlog: usize) -> Result<Self, Error> {
        if port == 0 {
            return Err(Error::AddrInUse);
        }
        let id = with(|s| {
            if s.listeners.iter().flatten().any(|l| l.port == port) {
                return Err(Error::AddrInUse);
            }
            let l = Listening::new(port, backlog);
            let id = match s.listeners.iter().position(Option::is_none) {
                Some(i) => {
                    s.listeners[i] = Some(l);
                    i
                }
                None => {
                    s.listeners.push(Some(l));
                    s.listeners.len() - 1
                }
            };
            // A look now: SYNs already waiting get their sockets at once.
            s.dirty = true;
            s.poll();
            Ok(id)
        })??;
        crate::milestone::reached(crate::milestone::Milestone::Listening);
        Ok(Self { port, id })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Hand over a connection only once its peer has sent something, or
    /// once it has waited `wait` since `accept` first found it established
    /// (`None`, the default: at once), as Linux's `TCP_DEFER_ACCEPT` and
    /// nginx's `listen … deferred`; unlike Linux, one its peer closes
    /// having sent nothing is closed by the stack, never handed over. For a
    /// protocol whose clients speak
    /// first (HTTP, Redis): a connection opened ahead and left idle (a
    /// browser's preconnect, a client racing several connects) costs no
    /// thread until it is used, and a burst of them does not hold up the
    /// one whose request came. The wait is noticed within ~20 ms.
    pub fn set_defer_accept(&mut self, wait: Option<core::time::Duration>) -> Result<(), Error> {
        let id = self.id;
        let ticks = wait.map(crate::stack::ticks_in);
        with(|s| {
            if let Some(l) = s.listeners.get_mut(id).and_then(Option::as_mut) {
                l.defer = ticks;
                l.quiet.clear();
            }
        })
    }

    /// Wait for a connection and take it.
    pub fn accept(&mut self) -> Result<TcpStream, Error> {
        let id = self.id;
        let accepted = block_on(Deadline::NONE, |s: &mut Stack| {
            let l = s.listeners.get_mut(id)?.as_mut()?;
            let now = unit_process::clock::ticks();
            let sockets = &s.sockets;
            // Those left for their first bytes that closed or went back to
            // listening are forgotten.
            l.quiet.retain(|&(h, _)| sockets.get::<Socket>(h).state() == State::Established);
            // With a deferred accept, a connection with bytes to read goes
            // before one that waited its time; one its peer closed having
            // sent nothing is closed here (there is nothing to answer, and a
            // thread made for it only to read the end would delay the
            // others: a client racing several connects closes the losers).
            let (mut ready, mut other) = (None, None);
            for (i, &h) in l.held.iter().enumerate() {
                let sock = sockets.get::<Socket>(h);
                match (sock.state(), l.defer) {
                    // Closed: reset before it was taken; it listens again
                    // at the next top-up. LastAck: closed here (below).
                    (State::Listen | State::SynReceived | State::Closed | State::LastAck, _) => continue,
                    (_, Some(_)) if sock.recv_queue() > 0 => {}
                    (State::Established, Some(wait)) => match l.quiet.iter().find(|&&(q, _)| q == h) {
                        Some(&(_, since)) if now.saturating_sub(since) >= wait => {
                            other = other.or(Some(i));
                            continue;
                        }
                        Some(_) => continue,
                        None => {
                            l.quiet.push((h, now));
                            continue;
                        }
                    },
                    (State::CloseWait, Some(_)) => continue,
                    (_, Some(_)) => {
                        other = other.or(Some(i));
                        continue;
                    }
                    _ => {}
                }
                ready = Some(i);
                break;
            }
            if l.defer.is_some() {
                for &h in &l.held {
                    let sock = s.sockets.get_mut::<Socket>(h);
                    if sock.state() == State::CloseWait && sock.recv_queue() == 0 {
                        // Its socket listens again once the close is done
                        // (the top-up).
                        sock.close();
                        s.dirty = true;
                    }
                }
            }
            let handle = l.held.remove(ready.or(other)?);
            l.quiet.retain(|&(q, _)| q != handle);
            Some(Ok(TcpStream { handle, read_timeout: None }))
        })?;
        if accepted.is_ok() {
            crate::milestone::reached(crate::milestone::Milestone::FirstAccept);
        }
        accepted
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let id = self.id;
        let _ = with(|s| {
            let held = s.listeners.get_mut(id).and_then(Option::take).map(|l| l.held).unwrap_or_default();
            for h in held {
                s.sockets.get_mut::<Socket>(h).abort();
                s.retire(h);
            }
        });
    }
}

/// A TCP connection.
pub struct TcpStream {
    handle: SocketHandle,
    read_timeout: Option<core::time::Duration>,
}

/// Local ports for outgoing connections.
static NEXT_PORT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(49152);

fn ephemeral_port() -> u16 {
    let p = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    if p < 49152 {
        NEXT_PORT.store(49153, Ordering::Relaxed);
        49152
    } else {
        p
    }
}

impl TcpStream {
    /// Connect to `addr` (`"10.0.2.1:80"`, a `SocketAddrV4`, `([10, 0, 2,
    /// 1], 80)`: see [`ToSocketAddr`]), waiting up to 10 s for the
    /// handshake.
    pub fn connect(addr: impl ToSocketAddr) -> Result<TcpStream, Error> {
        let remote = smoltcp::wire::IpEndpoint::from(addr.to_socket_addr()?);
        let handle = with(|s| {
            let mut sock = new_socket();
            sock.connect(s.iface.context(), remote, ephemeral_port())
                .map_err(|_| Error::ConnectionRefused)?;
            s.dirty = true;
            Ok::<_, Error>(s.sockets.add(sock))
        })??;
        let stream = TcpStream { handle, read_timeout: None };
        block_on(Deadline::after(Some(core::time::Duration::from_secs(10))), |s: &mut Stack| {
            match s.sockets.get::<Socket>(handle).state() {
                State::Established => Some(Ok(())),
                State::Closed => Some(Err(Error::ConnectionRefused)),
                _ => None,
            }
        })??;
        Ok(stream)
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> Result<SocketAddr, Error> {
        let h = self.handle;
        with(|s| {
            s.sockets.get::<Socket>(h).remote_endpoint().map(SocketAddr::from).ok_or(Error::NotConnected)
        })?
    }

    /// This end's address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        let h = self.handle;
        with(|s| {
            s.sockets.get::<Socket>(h).local_endpoint().map(SocketAddr::from).ok_or(Error::NotConnected)
        })?
    }

    /// Make [`TcpStream::read`] give up after `t` with `Error::TimedOut`
    /// (`None`: wait for ever). The wait ends within ~20 ms after the time.
    pub fn set_read_timeout(&mut self, t: Option<core::time::Duration>) {
        self.read_timeout = t;
    }

    /// Read what has arrived into `buf` (waiting until something has);
    /// 0 when the peer has closed its side.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let h = self.handle;
        block_on(Deadline::after(self.read_timeout), |s: &mut Stack| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if sock.can_recv() {
                // The window opens: the peer should hear of it, at once if
                // it may be waiting for room (the buffer was half full) or
                // a segment's worth was taken.
                let (queued, capacity) = (sock.recv_queue(), sock.recv_capacity());
                let r = sock.recv_slice(buf).map_err(|_| Error::ConnectionReset);
                s.dirty = true;
                s.urgent |= pressing(&r, queued, capacity);
                Some(r)
            } else if !sock.may_recv() {
                Some(if sock.state() == State::Closed { Err(Error::ConnectionReset) } else { Ok(0) })
            } else {
                None
            }
        })?
    }

    /// Write some of `buf` (waiting for room); returns how much.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let h = self.handle;
        block_on(Deadline::NONE, |s: &mut Stack| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if !sock.may_send() {
                Some(Err(Error::ConnectionReset))
            } else if sock.can_send() {
                let r = sock.send_slice(buf).map_err(|_| Error::ConnectionReset);
                // Sent as the core goes idle (with what the core's other
                // threads wrote), or at once when a segment's worth was
                // written or half the buffer waits (a stream keeps the wire
                // busy).
                s.dirty = true;
                s.urgent |= pressing(&r, sock.send_queue(), sock.send_capacity());
                Some(r)
            } else {
                None
            }
        })?
    }

    /// Write all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Wait until the peer has acknowledged everything written (at most
    /// `t`; `Error::TimedOut` then): before the appliance stops, so its last
    /// answer is not lost with the machine.
    pub fn flush(&mut self, t: core::time::Duration) -> Result<(), Error> {
        let h = self.handle;
        block_on(Deadline::after(Some(t)), |s: &mut Stack| {
            let sock = s.sockets.get::<Socket>(h);
            if sock.send_queue() == 0 {
                Some(Ok(()))
            } else if sock.state() == State::Closed {
                Some(Err(Error::ConnectionReset))
            } else {
                None
            }
        })?
    }

    /// Close the sending side (the peer reads end of stream).
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let h = self.handle;
        with(|s| {
            s.sockets.get_mut::<Socket>(h).close();
            s.dirty = true;
        })
    }
}

impl Drop for TcpStream {
    /// Close the connection; with unread data it is reset instead (as
    /// Linux does), so a peer still sending learns at once.
    fn drop(&mut self) {
        let h = self.handle;
        let _ = with(|s| {
            let sock = s.sockets.get_mut::<Socket>(h);
            if sock.recv_queue() > 0 {
                sock.abort()
            } else {
                sock.close()
            }
            s.retire(h);
        });
    }
}

impl embedded_io::ErrorType for TcpStream {
    type Error = Error;
}

/// `embedded_io::Read`: as [`TcpStream::read`] (with `read_exact` and the
/// rest of the trait, and `kernel::io::BufReader` on top).
impl embedded_io::Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        TcpStream::read(self, buf)
    }
}

/// `embedded_io::Write`: as [`TcpStream::write`]; `write!(stream, …)`
/// formats straight into the connection. Its `flush` waits (up to 10 s)
/// until the peer has acknowledged everything.
impl embedded_io::Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        TcpStream::write(self, buf)
    }

    fn flush(&mut self) -> Result<(), Error> {
        TcpStream::flush(self, core::time::Duration::from_secs(10))
    }
}
