//! A virtio-vsock device whose host side is a Unix domain socket
//! ("hybrid vsock", Firecracker's convention), on the virtio-mmio
//! transport.
//!
//! Host → guest: a program connects to the socket at `PATH` and writes
//! `CONNECT <port>\n`; the monitor asks the guest for a connection to that
//! port and answers `OK <host port>\n` once the guest accepts (or closes
//! the Unix connection if it refuses). Guest → host: a connection to host
//! port P reaches the Unix socket `PATH_<P>`. Bytes then flow both ways,
//! within the credit each side advertises.
//!
//! Queues: 0 receive (packets to the guest), 1 transmit (packets from the
//! guest), 2 events (unused). Packets from the guest are read through
//! `virtio-queue`'s checked `Reader`; a malformed one is dropped (or
//! answered with a reset), never trusted.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use crate::vstate::sys::Want;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::mmio::{Backend, F_VERSION_1, MmioDevice, Queues};
use super::queue::{fill_next, read_all};

const DEVICE_VSOCK: u32 = 19;
/// The host's context ID.
const HOST_CID: u64 = 2;
const HDR: usize = 44;
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
/// What the host side can hold per connection before the guest must wait.
const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload of one packet to the guest.
const MAX_PAYLOAD: usize = 4096;
/// Packets waiting for the guest's receive buffers, at most: a guest that
/// posts none while it provokes answers (resets for packets to no
/// connection, say) must not make the monitor grow. Beyond, answers are
/// dropped and host data waits in its socket (read no more).
pub const MAX_RX: usize = 1024;
/// Connections at most, host- and guest-initiated together; beyond, a
/// host program's connection is closed at once and a guest's request
/// reset.
pub const MAX_CONNS: usize = 1024;
/// Host ports given to connections the host opens.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// `--vsock cid=N,uds=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The host-side Unix socket.
    pub uds: PathBuf,
}

impl VsockConfig {
    /// Parse `cid=N,uds=PATH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = v.parse::<u64>().ok().filter(|&c| c >= 3 && c < u64::from(u32::MAX))
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown vsock option '{part}' (use cid=N,uds=PATH)")),
            }
        }
        let cid = cid.ok_or("a vsock device needs cid=N with N ≥ 3 (0–2 are reserved)")?;
        let uds = uds.ok_or("a vsock device needs uds=PATH (the host-side Unix socket)")?;
        Ok(Self { cid, uds })
    }
}

/// A packet header, as the wire has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn parse(b: &[u8; HDR]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        let kind = u16::from_le_bytes([b[28], b[29]]);
        (kind == TYPE_STREAM).then(|| Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// The host program has not sent its `CONNECT` line yet.
    AwaitingLine,
    /// Waiting for the guest's answer.
    Connecting,
    Connected,
    /// The guest closed it: the bytes it sent before are still written to
    /// the host program as it reads them (never waiting for it), then the
    /// connection is dropped. It still counts against [`MAX_CONNS`].
    Closing,
}

struct Conn {
    stream: UnixStream,
    state: State,
    host_port: u32,
    guest_port: u32,
    /// The `CONNECT` line as it comes; once it is whole, the bytes that
    /// followed it in the same read, not yet sent to the guest.
    line: Vec<u8>,
    /// Bytes from the guest not yet written to the host program.
    out: Vec<u8>,
    /// Bytes sent to the guest; the guest's last `fwd_cnt` and `buf_alloc`.
    tx_cnt: u32,
    peer_fwd_cnt: u32,
    peer_buf_alloc: u32,
    /// Bytes written to the host program (our `fwd_cnt`).
    fwd_cnt: u32,
    /// The host program's end of stream was read (a closing connection
    /// then waits only to write).
    eof: bool,
}

impl Conn {
    fn credit(&self) -> usize {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt)) as usize
    }

    /// What to wait for on the host program's socket: its input only when
    /// the device would read it now (the guest has credit and room for it),
    /// so that input that must wait — for a guest that does not answer or
    /// does not read, or after the end of the stream — does not keep the
    /// I/O thread's `poll` ready, and the thread spinning, for ever.
    /// `Hangup`: nothing to do now (the socket is not watched).
    fn want(&self, rx_full: bool) -> Want {
        let write = !self.out.is_empty();
        match self.state {
            State::AwaitingLine => Want::Read,
            State::Connecting => Want::of(false, write),
            State::Connected => Want::of(self.credit() > 0 && !rx_full, write),
            State::Closing => Want::of(!self.eof, write),
        }
    }
}

/// The vsock device behind the transport.
pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    conns: Vec<Conn>,
    next_port: u32,
    /// Packets waiting for a receive buffer of the guest.
    rx: VecDeque<(Hdr, Vec<u8>)>,
    /// What the I/O thread waits for changed (see `Backend::take_rewatch`).
    rewatch: bool,
}

/// Listen on the Unix socket of `cfg` (a stale socket file there is
/// replaced) and make the device.
pub fn open(cfg: &VsockConfig) -> Result<MmioDevice, String> {
    Vsock::listen(cfg).map(MmioDevice::new)
}

impl Vsock {
    /// The device's host side, listening on the Unix socket of `cfg` (a
    /// stale socket file there is replaced; one in use is refused).
    pub fn listen(cfg: &VsockConfig) -> Result<Self, String> {
        crate::devices::claim_socket_path(&cfg.uds).map_err(|e| format!("vsock: {e}"))?;
        let listener = UnixListener::bind(&cfg.uds)
            .map_err(|e| format!("vsock: cannot listen on {}: {e}", cfg.uds.display()))?;
        listener.set_nonblocking(true).map_err(|e| format!("vsock: {e}"))?;
        Ok(Vsock {
            cid: cfg.cid,
            uds: cfg.uds.clone(),
            listener,
            conns: Vec::new(),
            rewatch: false,
            next_port: FIRST_HOST_PORT,
            rx: VecDeque::new(),
        })
    }

    fn header(&self, c: &Conn, op: u16, len: usize) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: c.host_port,
            dst_port: c.guest_port,
            len: len as u32,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
    }

    /// Serve the host side: new connections, `CONNECT` lines, bytes to
    /// forward both ways. Then move waiting packets into the guest's
    /// buffers.
    pub fn service(&mut self, queue: Option<&mut Queue>, mem: &GuestMemoryMmap) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.conns.len() >= MAX_CONNS {
                drop(stream);
                continue;
            }
            if stream.set_nonblocking(true).is_ok() {
                let host_port = self.next_port;
                self.next_port = self.next_port.wrapping_add(1).max(FIRST_HOST_PORT);
                self.conns.push(Conn {
                    stream,
                    state: State::AwaitingLine,
                    host_port,
                    guest_port: 0,
                    line: Vec::new(),
                    out: Vec::new(),
                    tx_cnt: 0,
                    peer_fwd_cnt: 0,
                    peer_buf_alloc: 0,
                    fwd_cnt: 0,
                    eof: false,
                });
            }
        }
        // Only the connections with something to do: a descriptor ready
        // (one `poll` for all of them), or bytes that came with a CONNECT
        // line waiting in memory. Trying each connection in turn cost two
        // system calls per connection at every notification, so a guest
        // with a thousand connections slowed each of its packets to a
        // millisecond.
        let watched = self.watched();
        let fds: Vec<(RawFd, Want)> = watched.iter().map(|&(_, fd, want)| (fd, want)).collect();
        let mut due = vec![false; self.conns.len()];
        for k in crate::vstate::sys::ready_fds(&fds, std::time::Duration::ZERO) {
            due[watched[k].0] = true;
        }
        for (i, c) in self.conns.iter().enumerate() {
            due[i] |= c.state == State::Connected && !c.line.is_empty();
        }
        let mut i = 0;
        while i < self.conns.len() {
            if !due[i] || self.service_conn(i) {
                i += 1;
            } else {
                self.conns.swap_remove(i);
                due.swap_remove(i);
            }
        }
        if let Some(q) = queue {
            self.deliver(q, mem);
        }
    }

    /// The connections to watch: index, socket, what to wait for. Those
    /// the device would neither read nor write now are left out (even
    /// their hang-up: it is seen when they are read again).
    fn watched(&self) -> Vec<(usize, RawFd, Want)> {
        let rx_full = self.rx.len() >= MAX_RX;
        self.conns
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.stream.as_raw_fd(), c.want(rx_full)))
            .filter(|&(_, _, want)| want != Want::Hangup)
            .collect()
    }

    /// One connection's host side; `false` when it is over.
    fn service_conn(&mut self, i: usize) -> bool {
        let mut buf = [0u8; MAX_PAYLOAD];
        // Bytes for the host program first.
        let c = &mut self.conns[i];
        if !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    if c.state != State::Closing {
                        let h = self.header(&self.conns[i], OP_CREDIT_UPDATE, 0);
                        self.push(h, Vec::new());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) if c.state == State::Closing => return false,
                Err(_) => return self.reset(i),
            }
        }
        let c = &mut self.conns[i];
        match c.state {
            State::AwaitingLine => match c.stream.read(&mut buf[..64]) {
                Ok(0) => false,
                Ok(n) => {
                    c.line.extend_from_slice(&buf[..n]);
                    let Some(end) = c.line.iter().position(|&b| b == b'\n') else { return c.line.len() < 64 };
                    let text = String::from_utf8_lossy(&c.line[..end]).into_owned();
                    let Some(port) = text.strip_prefix("CONNECT ").and_then(|p| p.trim().parse::<u32>().ok())
                    else {
                        return false;
                    };
                    // What came after the line is the program's first
                    // bytes for the guest: kept, sent once connected.
                    c.line.drain(..=end);
                    c.guest_port = port;
                    c.state = State::Connecting;
                    let h = self.header(&self.conns[i], OP_REQUEST, 0);
                    self.push(h, Vec::new());
                    true
                }
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            },
            State::Connecting => true,
            // Nothing more for the guest; gone once the host program has
            // taken the last bytes (or gone itself: an error above). What
            // it still sends is read and dropped, so that it does not keep
            // the I/O thread's `poll` ready for ever. (A program that has
            // shut its side down and reads nothing does: its end of stream
            // stays readable until it takes the bytes or closes.)
            State::Closing => loop {
                match c.stream.read(&mut buf) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        c.eof = true;
                        break !c.out.is_empty();
                    }
                    _ => break !c.out.is_empty(),
                }
            },
            State::Connected => {
                let room = c.credit().min(MAX_PAYLOAD);
                if room == 0 || self.rx.len() >= MAX_RX {
                    return true;
                }
                if !c.line.is_empty() {
                    // Bytes that arrived with the CONNECT line go first.
                    let n = room.min(c.line.len());
                    let data: Vec<u8> = c.line.drain(..n).collect();
                    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                    let h = self.header(&self.conns[i], OP_RW, n);
                    self.push(h, data);
                    return true;
                }
                match c.stream.read(&mut buf[..room]) {
                    Ok(0) => {
                        let mut h = self.header(&self.conns[i], OP_SHUTDOWN, 0);
                        h.flags = 3;
                        self.push(h, Vec::new());
                        false
                    }
                    Ok(n) => {
                        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                        let h = self.header(&self.conns[i], OP_RW, n);
                        self.push(h, buf[..n].to_vec());
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                    Err(_) => self.reset(i),
                }
            }
        }
    }

    /// Queue a packet for the guest, unless [`MAX_RX`] already wait (then
    /// it is dropped: only answers come here once the queue is that long,
    /// host data waits in its socket).
    fn push(&mut self, h: Hdr, data: Vec<u8>) {
        if self.rx.len() < MAX_RX {
            self.rx.push_back((h, data));
        }
    }

    /// Tell the guest connection `i` is gone; `false` (drop it).
    fn reset(&mut self, i: usize) -> bool {
        if self.conns[i].state != State::AwaitingLine {
            let h = self.header(&self.conns[i], OP_RST, 0);
            self.push(h, Vec::new());
        }
        false
    }

    /// Waiting packets into the guest's receive buffers.
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        while !self.rx.is_empty() {
            let rx = &mut self.rx;
            let filled = fill_next(queue, mem, |w| {
                let (mut h, mut data) = rx.pop_front().unwrap_or_default();
                if w.available_bytes() <= HDR {
                    return 0;
                }
                // The guest's buffers may be smaller than the payload
                // (virtio-drivers posts 512 bytes): split data packets.
                let room = w.available_bytes() - HDR;
                if h.op == OP_RW && data.len() > room {
                    let rest = data.split_off(room);
                    let mut rh = h;
                    rh.len = rest.len() as u32;
                    rx.push_front((rh, rest));
                    h.len = data.len() as u32;
                }
                if data.len() <= room && w.write_all(&h.bytes()).is_ok() && w.write_all(&data).is_ok() {
                    (HDR + data.len()) as u32
                } else {
                    0
                }
            });
            if !filled {
                break;
            }
        }
    }

    /// Packets from the guest.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        read_all(queue, mem, |mut r| {
            let mut hb = [0u8; HDR];
            if r.read_exact(&mut hb).is_ok()
                && let Some(h) = Hdr::parse(&hb)
            {
                let mut data = Vec::new();
                let want = (h.len as usize).min(64 * 1024);
                if (&mut r).take(want as u64).read_to_end(&mut data).is_ok() && data.len() == want {
                    self.handle_guest_packet(h, data);
                }
            }
        });
    }

    fn handle_guest_packet(&mut self, h: Hdr, data: Vec<u8>) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            return;
        }
        let found = self.conns.iter().position(|c| c.host_port == h.dst_port && c.guest_port == h.src_port);
        let Some(i) = found else {
            match h.op {
                OP_REQUEST => self.guest_connects(h),
                OP_RST => {}
                _ => self.push(self.reply(&h, OP_RST), Vec::new()),
            }
            return;
        };
        let c = &mut self.conns[i];
        if c.state == State::Closing {
            // The guest is done with it; whatever it says now is moot.
            return;
        }
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Connected;
                let ok = format!("OK {}\n", c.host_port);
                c.out.extend_from_slice(ok.as_bytes());
                // These bytes are not the guest's: keep `fwd_cnt` honest.
                c.fwd_cnt = c.fwd_cnt.wrapping_sub(ok.len() as u32);
            }
            OP_RW if c.state == State::Connected && c.out.len() + data.len() <= BUF_ALLOC as usize => {
                c.out.extend_from_slice(&data);
            }
            OP_CREDIT_REQUEST => {
                let r = self.header(&self.conns[i], OP_CREDIT_UPDATE, 0);
                self.push(r, Vec::new());
            }
            OP_CREDIT_UPDATE => {}
            OP_SHUTDOWN | OP_RST => {
                // Close once what is left has reached the host program:
                // now, or as it reads ([`State::Closing`]). Never waiting
                // for it here: a guest closing a thousand connections to a
                // program that reads nothing must not stall the device.
                if h.op == OP_SHUTDOWN {
                    let r = self.header(&self.conns[i], OP_RST, 0);
                    self.push(r, Vec::new());
                }
                let c = &mut self.conns[i];
                while !c.out.is_empty() {
                    match c.stream.write(&c.out) {
                        Ok(n) if n > 0 => drop(c.out.drain(..n)),
                        _ => break,
                    }
                }
                if c.out.is_empty() {
                    self.conns.swap_remove(i);
                } else {
                    c.state = State::Closing;
                }
            }
            _ => {
                // A packet that breaks the protocol: reset.
                let r = self.header(&self.conns[i], OP_RST, 0);
                self.push(r, Vec::new());
                self.conns.swap_remove(i);
            }
        }
    }

    fn reply(&self, h: &Hdr, op: u16) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// The guest connects to host port `h.dst_port`: the Unix socket
    /// `PATH_<port>`.
    fn guest_connects(&mut self, h: Hdr) {
        if self.conns.len() >= MAX_CONNS {
            self.push(self.reply(&h, OP_RST), Vec::new());
            return;
        }
        let path = guest_target(&self.uds, h.dst_port);
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(stream) => {
                self.conns.push(Conn {
                    stream,
                    state: State::Connected,
                    host_port: h.dst_port,
                    guest_port: h.src_port,
                    line: Vec::new(),
                    out: Vec::new(),
                    tx_cnt: 0,
                    peer_fwd_cnt: h.fwd_cnt,
                    peer_buf_alloc: h.buf_alloc,
                    fwd_cnt: 0,
                    eof: false,
                });
                self.push(self.reply(&h, OP_RESPONSE), Vec::new());
            }
            Err(_) => self.push(self.reply(&h, OP_RST), Vec::new()),
        }
    }
}

/// Where a guest connection to host port `port` goes.
fn guest_target(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

impl Backend for Vsock {
    fn device_id(&self) -> u32 {
        DEVICE_VSOCK
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn config(&self) -> Vec<u8> {
        self.cid.to_le_bytes().to_vec()
    }

    fn queue_count(&self) -> usize {
        3
    }

    /// Packets from the guest on the transmit queue; then answers, freed
    /// credit and host bytes go out on the receive queue (after any
    /// notification: new receive buffers let waiting packets through).
    fn notify(&mut self, index: usize, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        let before = self.watched();
        if index == 1
            && let Some(q) = queues.get(1)
        {
            self.transmit(q, mem);
        }
        self.service(queues.get(0), mem);
        // The guest gave credit or buffers, or connections came or went:
        // the I/O thread is to wait for the new set at once.
        self.rewatch |= self.watched() != before;
    }

    fn has_host_io(&self) -> bool {
        true
    }

    /// The listening socket, and each connection (for writing too when
    /// bytes wait for the host program).
    fn host_fds(&self, fds: &mut Vec<(RawFd, Want)>) {
        fds.push((self.listener.as_raw_fd(), Want::Read));
        fds.extend(self.watched().into_iter().map(|(_, fd, want)| (fd, want)));
    }

    fn take_rewatch(&mut self) -> bool {
        std::mem::take(&mut self.rewatch)
    }

    fn service_host(&mut self, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        self.service(queues.get(0), mem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A device listening on a Unix socket of its own (named after `tag`),
    /// with a host program's socket for guest port 5; both files go when
    /// it is dropped.
    struct Fixture {
        v: Vsock,
        uds: PathBuf,
        target: std::os::unix::net::UnixListener,
    }

    fn fixture(tag: &str) -> Fixture {
        let uds = std::env::temp_dir().join(format!("torito-vsock-{tag}-{}.sock", std::process::id()));
        let v = Vsock::listen(&VsockConfig { cid: 3, uds: uds.clone() }).unwrap();
        let target = std::os::unix::net::UnixListener::bind(guest_target(&uds, 5)).unwrap();
        Fixture { v, uds, target }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(guest_target(&self.uds, 5));
            let _ = std::fs::remove_file(&self.uds);
        }
    }

    /// Packets a guest may post: a header cut short, a wrong type, a
    /// length beyond the buffer, a buffer outside RAM, a packet from
    /// another CID, data for a connection that does not exist. All are
    /// returned; only the last earns a reset (nothing else is answered).
    #[test]
    fn malformed_packets_are_dropped_or_reset() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        let put = |at: u64, h: Hdr| mem.write_slice(&h.bytes(), GuestAddress(at)).unwrap();
        let ok =
            Hdr { src_cid: 3, dst_cid: 2, src_port: 7, dst_port: 99, len: 0, op: OP_RW, ..Hdr::default() };
        put(0x10_0000, ok);
        let mut bad_type = ok.bytes();
        bad_type[28] = 9;
        mem.write_slice(&bad_type, GuestAddress(0x10_0100)).unwrap();
        put(0x10_0200, Hdr { len: 4000, ..ok });
        put(0x10_0300, Hdr { src_cid: 77, ..ok });
        put(0x10_0400, Hdr { len: 5, ..ok });
        let d = |addr: u64, len: u32, flags: u16, next: u16| {
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        };
        q.add_desc_chains(
            &[
                d(0x10_0000, 20, 0, 0),        // header cut short
                d(0x10_0100, 44, 0, 0),        // not a stream packet
                d(0x10_0200, 44, 0, 0),        // says 4000 bytes, has none
                d(0xffff_0000_0000, 44, 0, 0), // outside RAM
                d(0x10_0300, 44, 0, 0),        // from another CID
                d(0x10_0400, 44, 1, 6),        // data for no connection
                d(0x10_1000, 5, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut f = fixture("unit");
        let v = &mut f.v;
        v.transmit(&mut queue, &mem);
        let used: u16 = mem.read_obj(GuestAddress(q.used_addr().0 + 2)).unwrap();
        assert_eq!(used, 6, "every packet was returned");
        assert_eq!(v.rx.len(), 1, "one answer");
        assert_eq!(v.rx[0].0.op, OP_RST);
        assert!(v.conns.is_empty());
    }

    /// A guest that sends packets to no connection and posts no receive
    /// buffer earns one reset each, but the monitor keeps at most
    /// `MAX_RX` of them; guest connection requests beyond `MAX_CONNS`
    /// are reset, not kept.
    #[test]
    fn a_guest_cannot_make_the_device_grow() {
        let mut f = fixture("bound");
        let v = &mut f.v;
        let rw = Hdr { src_cid: 3, dst_cid: 2, src_port: 7, dst_port: 99, op: OP_RW, ..Hdr::default() };
        for port in 0..3 * MAX_RX as u32 {
            v.handle_guest_packet(Hdr { src_port: port, ..rw }, Vec::new());
        }
        assert_eq!(v.rx.len(), MAX_RX);
        // Connections: the guest's targets exist (a listener per port is
        // not needed: a refused connect is a reset too); the table stays
        // bounded whatever the guest asks.
        v.rx.clear();
        let req = Hdr { op: OP_REQUEST, dst_port: 5, buf_alloc: 4096, ..rw };
        for port in 0..MAX_CONNS as u32 + 10 {
            v.handle_guest_packet(Hdr { src_port: 10_000 + port, ..req }, Vec::new());
        }
        assert_eq!(v.conns.len(), MAX_CONNS);
    }

    /// A guest that closes connections whose host program reads nothing:
    /// the device does not wait for the program (it once did, 200 ms per
    /// connection), yet the program, when it reads, gets every byte the
    /// guest sent and then the end of the stream.
    #[test]
    fn a_close_never_waits_for_the_host_program_and_loses_nothing() {
        use std::io::Read;
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut f = fixture("close");
        let v = &mut f.v;
        let g =
            Hdr { src_cid: 3, dst_cid: 2, src_port: 40_000, dst_port: 5, buf_alloc: 4096, ..Hdr::default() };
        v.handle_guest_packet(Hdr { op: OP_REQUEST, ..g }, Vec::new());
        let (mut program, _) = f.target.accept().unwrap();
        // All the credit, in 64 KiB packets: more than the socket holds.
        let sent: Vec<u8> = (0..BUF_ALLOC as usize).map(|i| (i % 251) as u8).collect();
        for piece in sent.chunks(64 << 10) {
            v.handle_guest_packet(Hdr { op: OP_RW, len: piece.len() as u32, ..g }, piece.to_vec());
            v.service(None, &mem);
        }
        v.handle_guest_packet(Hdr { op: OP_SHUTDOWN, flags: 3, ..g }, Vec::new());
        assert_eq!(v.conns.len(), 1, "kept while its bytes wait");
        assert_eq!(v.conns[0].state, State::Closing);
        // The program reads; the device writes the rest as it does.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            program.read_to_end(&mut got).unwrap();
            got
        });
        for _ in 0..1000 {
            if v.conns.is_empty() {
                break;
            }
            v.service(None, &mem);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(v.conns.is_empty(), "dropped once flushed");
        assert!(reader.join().unwrap() == sent, "every byte, in order, then the end");
    }

    /// Input the device would not read now — from a program whose guest
    /// gave no credit, or after a closing connection's end of stream —
    /// is not waited for: a socket ready for ever kept the I/O thread
    /// spinning. The wait comes back with the credit.
    #[test]
    fn input_that_must_wait_does_not_keep_the_io_thread_busy() {
        use std::io::Write;
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut f = fixture("idle");
        let v = &mut f.v;
        // The guest connects with no room for data.
        let g = Hdr { src_cid: 3, dst_cid: 2, src_port: 40_001, dst_port: 5, buf_alloc: 0, ..Hdr::default() };
        v.handle_guest_packet(Hdr { op: OP_REQUEST, ..g }, Vec::new());
        let (mut program, _) = f.target.accept().unwrap();
        program.write_all(b"for the guest, later").unwrap();
        let ready = |v: &Vsock| {
            let fds: Vec<(RawFd, Want)> = v.watched().iter().map(|&(_, fd, w)| (fd, w)).collect();
            crate::vstate::sys::ready_fds(&fds, std::time::Duration::ZERO).len()
        };
        assert!(v.watched().is_empty(), "no credit: its input is not waited for");
        assert_eq!(ready(v), 0);
        // Credit: waited for again, and read.
        v.handle_guest_packet(Hdr { op: OP_CREDIT_UPDATE, buf_alloc: 4096, ..g }, Vec::new());
        assert_eq!(v.watched().first().map(|w| w.2), Some(Want::Read));
        assert_eq!(ready(v), 1);
        v.rx.clear();
        v.service(None, &mem);
        assert!(v.rx.iter().any(|(h, d)| h.op == OP_RW && d == b"for the guest, later"));
        // The guest closes with bytes the program does not read, and the
        // program shuts its own side: after its end of stream is read, only
        // room to write is waited for (none comes: nothing is ready).
        let big = vec![7u8; 64 << 10];
        for _ in 0..4 {
            v.handle_guest_packet(
                Hdr { op: OP_RW, len: big.len() as u32, buf_alloc: 4096, ..g },
                big.clone(),
            );
            v.service(None, &mem);
        }
        program.shutdown(std::net::Shutdown::Write).unwrap();
        v.handle_guest_packet(Hdr { op: OP_SHUTDOWN, flags: 3, ..g }, Vec::new());
        v.service(None, &mem);
        assert_eq!(v.conns.len(), 1, "kept while its bytes wait");
        assert!(v.conns[0].eof);
        assert_eq!(v.watched().first().map(|w| w.2), Some(Want::Write));
        assert_eq!(ready(v), 0, "a socket whose end of stream was read is not ready for ever");
        drop(program);
    }

    /// A host program that writes its first bytes in the same write as
    /// its `CONNECT` line: the guest gets them once connected, in order,
    /// before what the program writes later.
    #[test]
    fn bytes_after_the_connect_line_reach_the_guest() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut f = fixture("line");
        let v = &mut f.v;
        let mut host = std::os::unix::net::UnixStream::connect(&f.uds).unwrap();
        host.write_all(b"CONNECT 7\nfirst bytes").unwrap();
        let wait = || std::thread::sleep(std::time::Duration::from_millis(20));
        wait();
        v.service(None, &mem);
        let (req, _) = v.rx.pop_front().expect("a connection request");
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, 7));
        // The guest accepts, with room for data.
        let accept = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 7,
            dst_port: req.src_port,
            op: OP_RESPONSE,
            buf_alloc: 4096,
            ..Hdr::default()
        };
        v.handle_guest_packet(accept, Vec::new());
        host.write_all(b", then more").unwrap();
        let mut got = Vec::new();
        for _ in 0..10 {
            wait();
            v.service(None, &mem);
            while let Some((h, data)) = v.rx.pop_front() {
                if h.op == OP_RW {
                    got.extend_from_slice(&data);
                }
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), "first bytes, then more");
    }

    #[test]
    fn options_and_headers() {
        assert_eq!(
            VsockConfig::parse("cid=3,uds=/tmp/v.sock"),
            Ok(VsockConfig { cid: 3, uds: "/tmp/v.sock".into() })
        );
        assert!(VsockConfig::parse("cid=2,uds=/x").is_err(), "reserved CID");
        assert!(VsockConfig::parse("cid=5").is_err());
        assert!(VsockConfig::parse("cid=5,uds=/x,mtu=9").is_err());
        let h = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 7,
            dst_port: 1 << 30,
            len: 9,
            op: OP_RW,
            flags: 0,
            buf_alloc: 1,
            fwd_cnt: 2,
        };
        assert_eq!(Hdr::parse(&h.bytes()), Some(Hdr { ..h }));
        assert_eq!(guest_target(Path::new("/tmp/v.sock"), 52), PathBuf::from("/tmp/v.sock_52"));
    }
}
