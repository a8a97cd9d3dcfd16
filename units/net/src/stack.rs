//! The stack: one smoltcp interface over one [`NetDevice`], its sockets,
//! and the waiting that the socket API does.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use unit_devices::{NetDevice, Offloads, RxFrame};

use crate::{Error, NetConfig, offload};

/// The device as smoltcp sees it.
struct Phy {
    dev: Box<dyn NetDevice + Send>,
    /// Frames the current `Interface::poll` may still take ([`ROUND`]
    /// while something listens).
    budget: usize,
    /// What each listening port can take this round (see
    /// [`Stack::top_up`]).
    rooms: Vec<Room>,
    /// Connection requests (TCP SYNs) that came when no socket listened
    /// for them: the next round's top-up makes theirs, then they go first.
    held: VecDeque<RxFrame>,
    /// How many at the front of `held` go first in this round.
    replay: usize,
    /// When (TSC) the last frame came.
    last_rx: u64,
}

/// Frames one `Interface::poll` takes while a listener exists (then the
/// listening sockets are topped up and the next round goes on).
const ROUND: usize = 16;

/// A received frame.
pub(crate) struct RxToken(Vec<u8>);

/// Room to send one frame.
pub(crate) struct TxToken<'a> {
    dev: &'a mut (dyn NetDevice + Send),
    offloads: Offloads,
    meta: phy::PacketMeta,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let mut out = None;
        let (offloads, meta) = (self.offloads, self.meta);
        // smoltcp writes the frame straight into the device's buffer.
        let _ = self.dev.try_send(len, &mut |frame| {
            if let Some(f) = f.take() {
                out = Some(f(frame));
            }
            offload::tx(frame, offloads, meta)
        });
        match (out, f) {
            (Some(r), _) => r,
            // A full ring drops the frame (TCP sends it again); smoltcp
            // still wants its answer.
            (None, Some(f)) => f(&mut vec![0u8; len]),
            (None, None) => unreachable!("the frame was written"),
        }
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.meta = meta;
    }
}

impl Phy {
    fn tx_token(&mut self) -> TxToken<'_> {
        let offloads = self.dev.offloads();
        TxToken { dev: &mut *self.dev, offloads, meta: phy::PacketMeta::default() }
    }
}

impl phy::Device for Phy {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        loop {
            let frame = if self.replay > 0 {
                // Held in the last round: counted against that round's
                // budget, and its checksum checked, then.
                self.replay -= 1;
                self.held.pop_front()?
            } else {
                if self.budget == 0 {
                    return None;
                }
                let frame = self.dev.try_recv().ok()??;
                self.budget -= 1;
                self.last_rx = unit_process::clock::ticks();
                // With the host checking checksums, smoltcp checks none: a
                // frame the host did not check is checked here (and
                // dropped, as smoltcp would, when wrong).
                if self.dev.offloads().rx_csum && !frame.checked && !offload::rx_checksum_ok(&frame.data) {
                    continue;
                }
                frame
            };
            if let Some(port) = offload::syn_port(&frame.data)
                && let Some(room) = self.rooms.iter_mut().find(|r| r.port == port)
            {
                if room.listening > 0 {
                    room.listening -= 1;
                } else if room.backlog > 0 {
                    // Its socket is made at the next round's top-up. (A
                    // full backlog: smoltcp refuses it, as Linux does.)
                    room.backlog -= 1;
                    self.held.push_back(frame);
                    continue;
                }
            }
            return Some((RxToken(frame.data), self.tx_token()));
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        // A full ring: smoltcp keeps the data and sends at the next poll.
        if self.dev.can_send() { Some(self.tx_token()) } else { None }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.dev.mtu() + 14;
        offload::capabilities(&mut caps, self.dev.offloads());
        caps
    }
}

/// What one listening port can take in a round: SYNs its listening
/// sockets answer, and SYNs held for sockets the next top-up makes.
struct Room {
    port: u16,
    /// Sockets listening.
    listening: usize,
    /// Sockets it may still make (its backlog less those it holds).
    backlog: usize,
}

/// A listening port and the sockets held for it: listening, or holding a
/// connection not yet accepted (at most `backlog`).
pub(crate) struct Listening {
    pub(crate) port: u16,
    pub(crate) backlog: usize,
    pub(crate) held: Vec<SocketHandle>,
    /// How long (TSC ticks) `accept` leaves a connection whose peer has
    /// sent nothing yet (`TcpListener::set_defer_accept`).
    pub(crate) defer: Option<u64>,
    /// Connections left so: when `accept` first found each established.
    pub(crate) quiet: Vec<(SocketHandle, u64)>,
}

impl Listening {
    pub(crate) fn new(port: u16, backlog: usize) -> Self {
        Listening { port, backlog: backlog.max(1), held: Vec::new(), defer: None, quiet: Vec::new() }
    }
}

/// The interface, its sockets and its device.
pub(crate) struct Stack {
    /// Listeners by id (`None`: a dropped one's slot).
    pub(crate) listeners: Vec<Option<Listening>>,
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    phy: Phy,
    /// Sockets closed by their owner, removed once the connection is over.
    closing: Vec<SocketHandle>,
    /// A socket changed (data queued, closed, created): the interface
    /// needs a poll, as the core next goes idle (see [`Stack::poll_if_due`]).
    pub(crate) dirty: bool,
    /// A change the peer may be waiting for (a segment's worth read or
    /// written, a buffer half full or half emptied): poll at once.
    pub(crate) urgent: bool,
    /// When (TSC) a look first found the stack dirty.
    dirty_at: Option<u64>,
    /// When smoltcp's timers next need a poll.
    next_poll: Instant,
    /// When (TSC) frames began to wait for [`Stack::flush`].
    queued_at: Option<u64>,
    /// The DHCP client, when the address is not given.
    dhcp: Option<SocketHandle>,
    /// The address in use, `None` until DHCP has one.
    pub(crate) address: Option<NetConfig>,
}

static STACK: spin::Mutex<Option<Stack>> = spin::Mutex::new(None);

/// An idle core found the stack locked: whoever holds it flushes.
static FLUSH_WANTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Longest a sent frame waits unannounced while the stack is in use.
const FLUSH_AFTER_US: u64 = 200;

/// Send at once what the transmit ring holds (the kernel calls this as
/// the appliance exits, so its last frames are not lost with it).
pub fn flush() {
    flush_on_idle();
}

/// How recent a received frame makes more likely soon (the idle core then
/// watches, and polls the NIC, before it halts).
const RECENT_RX_US: u64 = 2000;

/// The process unit's idle hook: announce what the transmit ring holds
/// before the core spins or halts; whether more may come soon (there was
/// something to send, or frames came lately). An appliance without
/// traffic lets its core halt at once.
fn flush_on_idle() -> bool {
    match STACK.try_lock() {
        Some(mut g) => g.as_mut().is_some_and(|s| {
            if s.dirty {
                s.poll();
            }
            let sent = s.flush();
            let khz = unit_process::clock::tsc_khz().unwrap_or(1_000_000);
            let recent =
                unit_process::clock::ticks().saturating_sub(s.phy.last_rx) < RECENT_RX_US * khz / 1000;
            sent || recent
        }),
        None => {
            FLUSH_WANTED.store(true, core::sync::atomic::Ordering::Release);
            false
        }
    }
}

/// The process unit's idle poll, on the core device interrupts reach while
/// it watches before halting: received-frame interrupts off (the first
/// time), and frames that came taken at once, so that the threads waiting
/// for them find them (each interrupt costs the guest a few exits and its
/// entry stubs, emulated on a paravirtual host). A stack in use by another
/// core is left alone: that core takes the frames.
fn poll_on_idle(first: bool) -> bool {
    if STACK.is_locked() {
        return false;
    }
    let Some(mut g) = STACK.try_lock() else { return false };
    let Some(s) = g.as_mut() else { return false };
    if first {
        s.phy.dev.mask_interrupts();
    }
    if !s.phy.dev.frame_ready() {
        return false;
    }
    // What the frames call for (acknowledgements, answers the threads
    // write next) goes out as the core next goes idle, in one notification.
    s.poll();
    s.phy.dev.mask_interrupts();
    true
}

/// The process unit's last look before that core halts: received-frame
/// interrupts on again; whether a frame came meanwhile. With the stack in
/// use elsewhere, "yes": the core looks again rather than halt with the
/// interrupts perhaps still off.
fn arm_on_idle() -> bool {
    match STACK.try_lock() {
        Some(mut g) => g.as_mut().is_some_and(|s| s.phy.dev.frame_waiting()),
        None => true,
    }
}

/// The process unit's look at each switch of the core device interrupts
/// reach. That core keeps received-frame interrupts off while it runs
/// threads ([`Stack::poll`]), so this look stands for them: frames that
/// came are taken now (as the idle poll does), and the answer "yes" makes
/// the threads waiting for them look again. Taken, not only seen: frames
/// no waiting thread takes (a stray ARP request while every thread of the
/// core waits on something else) would otherwise be seen at every switch,
/// and the core would never go idle. A stack in use elsewhere: "no", its
/// user takes the frames. (The idle poll's work, without its first
/// masking: the interrupts are already off while the core runs threads.)
fn frame_pending() -> bool {
    poll_on_idle(false)
}

fn now() -> Instant {
    Instant::from_micros(unit_process::clock::now_ns().map_or(0, |n| n / 1000) as i64)
}

impl Stack {
    /// Poll the interface if anything may have happened: a device
    /// interrupt, a socket change, a timer due. A look that finds nothing
    /// new costs no walk over the sockets, so many threads waiting on many
    /// sockets stay cheap.
    pub(crate) fn poll_if_needed(&mut self) {
        let interrupted = self.phy.dev.service_interrupt();
        if interrupted || self.phy.dev.frame_ready() || now() >= self.next_poll {
            self.poll();
        } else {
            self.poll_if_due();
        }
    }

    /// Poll for what the threads changed (data written, sockets closed)
    /// when it is urgent, has waited [`FLUSH_AFTER_US`], or an idle core
    /// asked. Otherwise it waits for the core to go idle: one walk over every
    /// socket then sends what all of the core's threads wrote, where a
    /// poll per write walked them all for each (with 32 connections, a
    /// quarter of httpd's guest time).
    fn poll_if_due(&mut self) {
        if !self.dirty {
            return;
        }
        let khz = unit_process::clock::tsc_khz().unwrap_or(1_000_000);
        let now = unit_process::clock::ticks();
        let since = *self.dirty_at.get_or_insert(now);
        if self.urgent
            || now.saturating_sub(since) >= FLUSH_AFTER_US * khz / 1000
            || FLUSH_WANTED.load(core::sync::atomic::Ordering::Acquire)
        {
            self.poll();
        }
    }

    /// Set up one `Interface::poll`: the top-up; the SYNs held in the last
    /// round first; frames [`ROUND`] while a listener exists, unbounded
    /// otherwise.
    fn new_round(&mut self) {
        self.top_up();
        self.phy.replay = self.phy.held.len();
        let listens = self.listeners.iter().flatten().next().is_some();
        self.phy.budget = if listens { ROUND } else { usize::MAX };
    }

    /// Make a listening socket for each SYN held in the last round (never
    /// more than a listener's backlog held in all), and say in
    /// [`Phy::rooms`] what each listening port can take in this one. A SYN
    /// that finds no socket listening on its port waits in [`Phy::held`]
    /// for the next round (other frames pass; a round goes on); a SYN for
    /// a port nothing listens on, or whose backlog is full, goes to
    /// smoltcp, which refuses it.
    ///
    /// Why not sockets ahead: each costs its buffers' first touches (a
    /// guest page fault of ~25 µs on a PVM host; 2 ms of httpd's start when
    /// it made its backlog of 128 at `bind`), and sockets kept ready ahead
    /// were made again as soon as SYNs took them: httpd's cold start with
    /// 4 ahead made 8 sockets for its first 4 connections (8 faults more
    /// than with 1 ahead, measured). Made for the SYNs that came, a burst
    /// costs one round more (no exit) and no reset.
    fn top_up(&mut self) {
        use smoltcp::socket::tcp::{Socket, State};
        let sockets = &mut self.sockets;
        let (held, rooms) = (&mut self.phy.held, &mut self.phy.rooms);
        rooms.clear();
        // A SYN sent again for a connection already half open (its SYN-ACK
        // was lost or late) is dropped: a socket made for it could take it
        // before the connection's own (smoltcp offers a segment to its
        // sockets in order) and open a second one for the same peer. The
        // connection's own socket sends its SYN-ACK again in its time.
        let listeners = &self.listeners;
        held.retain(|f| {
            let Some((peer, port)) = offload::syn(&f.data) else { return true };
            !listeners.iter().flatten().filter(|l| l.port == port).flat_map(|l| &l.held).any(|&h| {
                let sock = sockets.get::<Socket>(h);
                sock.state() == State::SynReceived && sock.remote_endpoint() == Some(peer)
            })
        });
        for l in self.listeners.iter_mut().flatten() {
            // A connection reset before it was accepted (a half-open one
            // the client gave up) listens again rather than reach the app
            // as a dead stream (Linux drops those from its queue too).
            for &h in &l.held {
                let sock = sockets.get_mut::<Socket>(h);
                if sock.state() == State::Closed {
                    let _ = sock.listen(l.port);
                }
            }
            let mut listening =
                l.held.iter().filter(|&&h| sockets.get::<Socket>(h).state() == State::Listen).count();
            let wanted = held.iter().filter(|f| offload::syn_port(&f.data) == Some(l.port)).count();
            let mut failed = false;
            while listening < wanted && l.held.len() < l.backlog {
                let mut sock = crate::tcp::new_socket();
                if sock.listen(l.port).is_err() {
                    failed = true;
                    break;
                }
                l.held.push(sockets.add(sock));
                listening += 1;
            }
            // Room to hold SYNs for the next round: none when a socket
            // could not be made (they go to smoltcp, not round after round).
            let backlog = if failed { 0 } else { l.backlog - l.held.len() };
            rooms.push(Room { port: l.port, listening, backlog });
        }
    }

    /// Move frames in and out, advance timers, retire closed sockets.
    ///
    /// Received-frame interrupts are masked while the interface drains the
    /// ring. On the core they reach they stay masked after it, until that
    /// core is about to halt (`arm_on_idle`): while it runs threads, its
    /// scheduler looks for frames at each switch (`frame_pending`), and an
    /// interrupt would only have made the waiting threads look at the next
    /// switch, at the cost of the entry stubs (emulated on a paravirtual
    /// host) and a few exits. On another core they are unmasked before the
    /// last look, as Linux's NAPI does. Frames sent wait in the transmit
    /// ring for [`Stack::flush`].
    pub(crate) fn poll(&mut self) {
        let t = now();
        self.dirty = false;
        self.urgent = false;
        self.dirty_at = None;
        self.phy.dev.mask_interrupts();
        self.new_round();
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        self.note_queued();
        // Frames that came meanwhile (interrupts were masked), or a SYN
        // held for want of a listening socket: a few more rounds, bounded;
        // if frames still wait, the stack stays dirty and the next look
        // polls.
        let device_core = unit_process::on_device_core();
        let mut rounds = 0;
        while !self.phy.held.is_empty()
            || if device_core { self.phy.dev.frame_ready() } else { self.phy.dev.frame_waiting() }
        {
            if rounds == 8 {
                self.dirty = true;
                break;
            }
            self.phy.dev.mask_interrupts();
            self.new_round();
            self.iface.poll(now(), &mut self.phy, &mut self.sockets);
            self.note_queued();
            rounds += 1;
        }
        self.dhcp_events();
        self.next_poll = match self.iface.poll_delay(t, &self.sockets) {
            Some(d) => t + d,
            None => t + smoltcp::time::Duration::from_secs(1),
        };
        let sockets = &mut self.sockets;
        self.closing.retain(|&h| {
            let sock = sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
            // Data for a socket nobody will read again: reset the
            // connection, as Linux does, rather than let the peer fill the
            // window and wait for ever.
            if sock.recv_queue() > 0 {
                sock.abort();
            }
            let done = sock.state() == smoltcp::socket::tcp::State::Closed;
            if done {
                sockets.remove(h);
            }
            !done
        });
    }

    /// Remember when frames first waited unannounced in the transmit ring.
    fn note_queued(&mut self) {
        if self.queued_at.is_none() && self.phy.dev.unflushed() {
            self.queued_at = Some(unit_process::clock::ticks());
        }
    }

    /// Announce the frames sent since the last flush to the device: one
    /// notification (an exit, 10–30 µs on a PVM host) for all of them.
    ///
    /// When: as the core goes idle (the idle hook, [`flush_on_idle`]),
    /// when the transmit ring is full (the driver), and at any entry to
    /// the stack once frames have waited [`FLUSH_AFTER_US`] (a thread that
    /// computes after writing, without waiting, holds nothing up longer).
    /// A thread answering a request therefore sends its answer as it next
    /// waits, together with those of the other threads of its core.
    ///
    /// Returns whether there was something to send.
    pub(crate) fn flush(&mut self) -> bool {
        self.queued_at = None;
        let had = self.phy.dev.unflushed();
        self.phy.dev.flush();
        had
    }

    /// Flush if frames have waited long enough, or an idle core asked.
    fn flush_if_due(&mut self) {
        let wanted = FLUSH_WANTED.swap(false, core::sync::atomic::Ordering::AcqRel);
        let due = self.queued_at.is_some_and(|t| {
            let khz = unit_process::clock::tsc_khz().unwrap_or(1_000_000);
            unit_process::clock::ticks().saturating_sub(t) >= FLUSH_AFTER_US * khz / 1000
        });
        if wanted || due {
            self.flush();
        }
    }

    /// Apply what the DHCP client learned.
    fn dhcp_events(&mut self) {
        let Some(h) = self.dhcp else { return };
        let event = match self.sockets.get_mut::<smoltcp::socket::dhcpv4::Socket>(h).poll() {
            None => return,
            Some(smoltcp::socket::dhcpv4::Event::Configured(c)) => Some((c.address, c.router)),
            Some(smoltcp::socket::dhcpv4::Event::Deconfigured) => None,
        };
        self.iface.update_ip_addrs(|addrs| addrs.clear());
        self.iface.routes_mut().remove_default_ipv4_route();
        self.address = None;
        if let Some((cidr, router)) = event {
            self.iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::Ipv4(cidr));
            });
            if let Some(r) = router {
                let _ = self.iface.routes_mut().add_default_ipv4_route(r);
            }
            self.address = Some(NetConfig {
                ip: cidr.address().octets(),
                prefix: cidr.prefix_len(),
                gateway: router.map(|r| r.octets()),
            });
        }
        self.dirty = true;
    }

    /// Hand a socket over for removal once its connection has ended.
    pub(crate) fn retire(&mut self, h: SocketHandle) {
        self.closing.push(h);
        self.dirty = true;
    }
}

/// What [`init`] set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface4 {
    /// The configuration given (`None`: DHCP).
    pub config: Option<NetConfig>,
    /// The device's MAC address.
    pub mac: [u8; 6],
}

/// An ARP announcement of `ip` at `mac` (RFC 5227 §3: a broadcast
/// request whose sender and target address are both `ip`). A host that
/// was resolving the address updates its entry; others ignore it.
fn announcement(mac: [u8; 6], ip: [u8; 4]) -> [u8; 42] {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr};
    let (me, addr) = (EthernetAddress(mac), Ipv4Address::from(ip));
    let mut buf = [0u8; 42];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr { src_addr: me, dst_addr: EthernetAddress::BROADCAST, ethertype: EthernetProtocol::Arp }
        .emit(&mut frame);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: me,
        source_protocol_addr: addr,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: addr,
    }
    .emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// Bring the stack up on the first of `devices`, with the address from
/// `cmdline` (`torito.ip=`), or from DHCP when none is given. `Ok(None)`:
/// no device.
pub fn init(
    cmdline: &str,
    devices: Vec<Box<dyn NetDevice + Send>>,
) -> Result<Option<Interface4>, alloc::string::String> {
    let cfg = NetConfig::from_cmdline(cmdline).map_err(|w| alloc::format!("bad network setting '{w}'"))?;
    let Some(dev) = devices.into_iter().next() else { return Ok(None) };
    let mac = dev.mac();
    let mut phy =
        Phy { dev, budget: usize::MAX, rooms: Vec::new(), held: VecDeque::new(), replay: 0, last_rx: 0 };
    let seed = unit_process::clock::ticks();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = seed;
    let mut iface = Interface::new(config, &mut phy, now());
    let mut sockets = SocketSet::new(Vec::new());
    let dhcp = match cfg {
        Some(cfg) => {
            let [a, b, c, d] = cfg.ip;
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(Ipv4Address::new(a, b, c, d).into(), cfg.prefix));
            });
            if let Some([a, b, c, d]) = cfg.gateway {
                iface
                    .routes_mut()
                    .add_default_ipv4_route(Ipv4Address::new(a, b, c, d))
                    .map_err(|_| alloc::string::String::from("cannot add the default route"))?;
            }
            // Announced: a client that asked for this address before the
            // NIC was up (its ARP request lost) learns it now, not at its
            // next try a second later. It leaves with the first flush (the
            // stack's first idle): no exit of its own.
            let frame = announcement(mac, cfg.ip);
            let _ = phy.dev.try_send(frame.len(), &mut |buf| {
                buf.copy_from_slice(&frame);
                unit_devices::TxOffload::default()
            });
            None
        }
        None => Some(sockets.add(smoltcp::socket::dhcpv4::Socket::new())),
    };
    unit_process::set_idle_hooks(unit_process::IdleHooks {
        flush: flush_on_idle,
        poll: poll_on_idle,
        arm: arm_on_idle,
        pending: frame_pending,
    });
    *STACK.lock() = Some(Stack {
        iface,
        sockets,
        phy,
        closing: Vec::new(),
        listeners: Vec::new(),
        dirty: true,
        urgent: false,
        dirty_at: None,
        next_poll: now(),
        queued_at: None,
        dhcp,
        address: cfg,
    });
    Ok(Some(Interface4 { config: cfg, mac }))
}

/// The interface's address, once known (`None` without a NIC, or while
/// DHCP is still asking).
pub fn address() -> Option<NetConfig> {
    STACK.lock().as_mut().and_then(|s| {
        s.poll_if_needed();
        s.address
    })
}

/// Sockets the stack holds, and of them those closed by their owner and
/// not yet over (`(0, 0)` without a NIC): for status pages.
pub fn socket_counts() -> (usize, usize) {
    STACK.lock().as_ref().map_or((0, 0), |s| (s.sockets.iter().count(), s.closing.len()))
}

/// Let the connections the app closed send what they still hold, for at
/// most `t`: the machine stops when the app's `main` returns, and with it
/// whatever a closed socket had not sent yet (a peer saw the end of an
/// echoed stream cut off). Returns at once when nothing is left.
pub fn drain_closed(t: core::time::Duration) {
    let _ = block_on(Deadline::after(Some(t)), |s| {
        let sockets = &s.sockets;
        let pending =
            s.closing.iter().any(|&h| sockets.get::<smoltcp::socket::tcp::Socket>(h).send_queue() > 0);
        (!pending).then_some(())
    });
}

/// Wait until the interface has an address (DHCP may take a moment);
/// `Err(TimedOut)` after `t`.
pub fn wait_for_address(t: core::time::Duration) -> Result<NetConfig, Error> {
    block_on(Deadline::after(Some(t)), |s| s.address)
}

/// Run `f` on the stack now (after polling if needed; again after `f` if
/// it changed a socket, with what other threads changed), and send what
/// it made at once (a close, a connection attempt: the thread may end
/// next); `Err` when there is no stack.
pub(crate) fn with<T>(f: impl FnOnce(&mut Stack) -> T) -> Result<T, Error> {
    enter(true, f)
}

/// [`with`], polling for what `f` changed and flushing only when `flush`
/// says so, or when changes or frames are due (see [`Stack::poll_if_due`]
/// and [`Stack::flush`]).
fn enter<T>(flush: bool, f: impl FnOnce(&mut Stack) -> T) -> Result<T, Error> {
    let mut g = STACK.lock();
    let s = g.as_mut().ok_or(Error::NoInterface)?;
    s.poll_if_needed();
    let r = f(s);
    if flush {
        if s.dirty {
            s.poll();
        }
        s.flush();
    } else {
        s.poll_if_due();
        s.flush_if_due();
    }
    Ok(r)
}

/// When a blocking call gives up: a TSC value, or never.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<u64>);

/// TSC ticks in `t` (at most `u64::MAX / 2`).
pub(crate) fn ticks_in(t: core::time::Duration) -> u64 {
    let khz = unit_process::clock::tsc_khz().unwrap_or(1_000_000);
    (t.as_nanos() * u128::from(khz) / 1_000_000).min(u128::from(u64::MAX / 2)) as u64
}

impl Deadline {
    /// Wait for ever.
    pub(crate) const NONE: Deadline = Deadline(None);

    /// `t` from now (`None`: for ever).
    pub(crate) fn after(t: Option<core::time::Duration>) -> Self {
        Deadline(t.map(|t| unit_process::clock::ticks().saturating_add(ticks_in(t))))
    }

    pub(crate) fn passed(self) -> bool {
        self.0.is_some_and(|d| unit_process::clock::ticks() >= d)
    }
}

/// Wait until `f` (run on the freshly polled stack) gives an answer, or
/// `deadline` passes (`Error::TimedOut`); the core's other threads run
/// meanwhile, and the core sleeps until the device interrupts or a
/// notification comes (at the latest every 20 ms, which bounds how late a
/// deadline is noticed).
pub(crate) fn block_on<T>(
    deadline: Deadline,
    mut f: impl FnMut(&mut Stack) -> Option<T>,
) -> Result<T, Error> {
    if STACK.lock().is_none() {
        return Err(Error::NoInterface);
    }
    // Reads, writes and accepts leave what they sent in the ring: the
    // thread either goes on (and sends more) or waits, and its core,
    // idle, flushes for all its threads at once.
    unit_process::wait_for_event(|| match enter(false, &mut f) {
        Ok(Some(v)) => Some(Ok(v)),
        Ok(None) if deadline.passed() => Some(Err(Error::TimedOut)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol,
        Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    use unit_devices::{NetError, TxOffload};

    /// A NIC whose received frames are given up front; what is sent is
    /// dropped.
    struct Fake(VecDeque<Vec<u8>>);

    impl NetDevice for Fake {
        fn mac(&self) -> [u8; 6] {
            [0x06, 0x54, 0x52, 0x54, 0x4f, 0x00]
        }
        fn mtu(&self) -> usize {
            1500
        }
        fn try_send(
            &mut self,
            len: usize,
            fill: &mut dyn FnMut(&mut [u8]) -> TxOffload,
        ) -> Result<(), NetError> {
            fill(&mut vec![0; len]);
            Ok(())
        }
        fn try_recv(&mut self) -> Result<Option<RxFrame>, NetError> {
            Ok(self.0.pop_front().map(|data| RxFrame { data, checked: false }))
        }
    }

    /// A TCP SYN from 10.0.2.1:`from` to 10.0.2.15:`port`.
    fn syn(from: u16, port: u16) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 0, 2, 1), Ipv4Address::new(10, 0, 2, 15));
        let tcp = TcpRepr {
            src_port: from,
            dst_port: port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 64240,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([0x02, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress(Fake(VecDeque::new()).mac()),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let caps = ChecksumCapabilities::default();
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &caps);
        tcp.emit(&mut TcpPacket::new_unchecked(packet.payload_mut()), &src.into(), &dst.into(), &caps);
        buf
    }

    /// A SYN held for a listener dropped since goes through (to smoltcp,
    /// which refuses it) in the next round, whatever its budget: no
    /// listener means an unbounded one.
    #[test]
    fn a_held_syn_goes_through_once_nothing_listens() {
        let held: VecDeque<RxFrame> =
            [RxFrame { data: syn(40000, 80), checked: false }].into_iter().collect();
        let mut phy = Phy {
            dev: Box::new(Fake(VecDeque::new())),
            budget: usize::MAX,
            rooms: Vec::new(),
            held,
            replay: 1,
            last_rx: 0,
        };
        let (rx, _tx) = phy::Device::receive(&mut phy, Instant::from_millis(0)).expect("the held SYN");
        phy::RxToken::consume(rx, |f| assert_eq!(offload::syn_port(f), Some(80)));
        assert!(phy.held.is_empty());
        assert_eq!(phy.budget, usize::MAX);
    }

    /// Listening sockets are made for the SYNs that came, no more than
    /// the backlog allows; a SYN for a port nothing listens on is not
    /// held. (One test owns the stack, a global.)
    #[test]
    fn listening_sockets_are_made_for_the_syns_that_came() {
        use smoltcp::socket::tcp::{Socket, State};
        let frames = [syn(40000, 80), syn(40001, 81), syn(40002, 80), syn(40003, 80)];
        let dev: Box<dyn NetDevice + Send> = Box::new(Fake(VecDeque::new()));
        init("torito.ip=10.0.2.15/24", vec![dev]).unwrap();
        with(|s| {
            s.listeners.push(Some(Listening::new(80, 2)));
            s.phy.dev = Box::new(Fake(frames.into_iter().collect()));
            s.poll();
            let l = s.listeners[0].as_ref().unwrap();
            assert_eq!(l.held.len(), 2, "a socket for each SYN, up to the backlog");
            for &h in &l.held {
                assert_eq!(s.sockets.get::<Socket>(h).state(), State::SynReceived);
            }
            assert!(s.phy.held.is_empty(), "the third SYN went to smoltcp (a full backlog), port 81's too");
            assert_eq!(s.sockets.iter().count(), 2, "no socket made ahead");
            // A SYN later on: its socket is made in the look that takes it.
            s.phy.dev = Box::new(Fake([syn(40004, 80)].into_iter().collect()));
            s.listeners[0].as_mut().unwrap().backlog = 3;
            s.poll();
            assert_eq!(s.listeners[0].as_ref().unwrap().held.len(), 3);
            assert!(s.phy.held.is_empty());
            // The same SYN again (the client's SYN-ACK lost): no second
            // connection for it.
            s.phy.dev = Box::new(Fake([syn(40004, 80)].into_iter().collect()));
            s.listeners[0].as_mut().unwrap().backlog = 8;
            s.poll();
            assert_eq!(s.listeners[0].as_ref().unwrap().held.len(), 3, "no socket for a SYN sent again");
            assert!(s.phy.held.is_empty());
        })
        .unwrap();
    }

    /// The announcement reads back as a broadcast ARP request from `mac`
    /// for its own address.
    #[test]
    fn the_announcement_is_a_gratuitous_arp_request() {
        let mac = [0x06, 0x54, 0x52, 0x54, 0x4f, 0x00];
        let frame = announcement(mac, [10, 0, 2, 15]);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(eth.src_addr(), EthernetAddress(mac));
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ip = Ipv4Address::new(10, 0, 2, 15);
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(mac),
                source_protocol_addr: ip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: ip,
            }
        );
    }
}
