//! A virtio-net device on the virtio-mmio transport, backed by a TAP
//! device.
//!
//! Queue 1 (transmit) is served at the driver's notification: each chain
//! is a 12-byte `virtio_net_hdr` and a frame, which go to the TAP device
//! together (the host's kernel completes checksums and cuts large TCP
//! segments as the header asks, when the guest negotiated those offloads;
//! a header that asks for more than was negotiated drops its frame).
//! Queue 0 (receive) holds empty buffers; frames from the TAP device fill
//! them when they arrive: the monitor's device I/O thread watches the TAP
//! descriptor and calls [`Net::deliver`] under the devices' lock, and a
//! notification on queue 0 (new buffers) delivers what was waiting. With
//! mergeable receive buffers a frame (up to 64 KiB with the guest's
//! segmentation offload) spans as many buffers as it needs. The TAP device
//! hands over only the offloads the guest negotiated (`TUNSETOFFLOAD` at
//! DRIVER_OK). The guest is untrusted: chains are read and written through
//! `virtio-queue`'s checked `Reader`/`Writer`; a chain that is too short
//! or points outside RAM is returned unused (length 0).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};

use crate::vstate::sys::Want;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::mmio::{Backend, F_VERSION_1, MmioDevice, Queues};
use super::queue::{Fill, fill_merged, read_all};
use crate::devices::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, VNET_HDR};

const DEVICE_NET: u32 = 1;
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_MRG_RXBUF: u64 = 1 << 15;
/// The offloads offered: checksums and TCP segmentation both ways.
const OFFLOADS: u64 = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6;
/// `virtio_net_hdr` with `num_buffers` (virtio 1.x), as the TAP device
/// reads and writes it.
const HDR: usize = VNET_HDR;
/// Largest frame without segmentation: Ethernet header and 1500 bytes.
pub const MAX_FRAME: usize = 1514;
/// Largest frame with segmentation offload (virtio 1.2 §5.1.6.3: 65,562
/// bytes of buffer, the header included).
pub const MAX_GSO_FRAME: usize = 65550;
/// `virtio_net_hdr.flags` a sent frame may carry: "complete my checksum".
const HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type`: none, TCP/IPv4, TCP/IPv6.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

/// A NIC as the command line names it: `tap=NAME[,mac=..]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP device.
    pub tap: String,
    /// The guest's MAC address (`None`: [`default_mac`] of its index).
    pub mac: Option<[u8; 6]>,
}

/// The MAC address given to NIC `index` when none is asked for
/// (locally administered, unicast).
pub fn default_mac(index: usize) -> [u8; 6] {
    [0x06, 0x54, 0x52, 0x54, 0x4f, index as u8]
}

impl NetConfig {
    /// Parse `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_string()),
                Some(("mac", v)) => {
                    mac = Some(parse_mac(v).ok_or_else(|| format!("'{v}' is not a MAC address"))?)
                }
                _ => return Err(format!("unknown NIC option '{part}' (use tap=NAME[,mac=..])")),
            }
        }
        let tap = tap.ok_or("a NIC needs a TAP device: --net tap=NAME")?;
        Ok(Self { tap, mac })
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// The network device behind the transport.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    /// The features the driver accepted (set at DRIVER_OK).
    features: u64,
    /// Where frames from the TAP device are read, header first
    /// ([`MAX_GSO_FRAME`], the header and a byte: made with the device, at
    /// launch, so that the guest's first exit maps nothing for it (the
    /// mapping waited behind the warm-up there: `sandbox::install`)).
    rx_buf: Vec<u8>,
    /// A frame (its length in `rx_buf`) read from the TAP device while
    /// the guest had no buffer.
    waiting: Option<usize>,
    /// Where each frame the guest sends is gathered (kept between frames).
    tx_buf: Vec<u8>,
    /// Setting the TAP device's offloads failed once (said then only).
    offload_warned: bool,

    /// Frames the guest sent and received.
    pub tx_frames: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// The TAP device is to be watched again (see `Backend::take_rewatch`).
    rewatch: bool,
    /// The TAP device failed for good (its namespace was deleted, say): it
    /// is no longer watched, so the I/O thread does not spin on its error.
    gone: bool,
    /// The driver is ready (DRIVER_OK): before that the TAP device is not
    /// watched, since frames could not go anywhere (a TAP device with
    /// frames queued is ready to read until they are read: the I/O thread
    /// would spin, and take the devices' lock, while the guest boots).
    ready: bool,
    /// Offloads (`TUN_F_*`) the TAP device is still to be told of: set by
    /// the I/O thread, not in the vCPU's DRIVER_OK exit (the ioctl takes
    /// 30–80 µs here; until it is done the TAP device hands over frames
    /// with no offloads, which every guest takes).
    offloads_pending: Option<u32>,
}

/// Open the TAP device of `cfg` and make NIC number `index`.
pub fn open(cfg: &NetConfig, index: usize) -> Result<MmioDevice, String> {
    let tap = Tap::open(&cfg.tap)?;
    let mac = cfg.mac.unwrap_or_else(|| default_mac(index));
    Ok(MmioDevice::new(Net::new(tap, mac)))
}

impl Net {
    /// A NIC on `tap` with address `mac`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap,
            mac,
            features: 0,
            // One byte more than the largest frame: a read that fills it
            // was cut short.
            rx_buf: vec![0u8; HDR + MAX_GSO_FRAME + 1],
            waiting: None,
            tx_buf: Vec::new(),
            offload_warned: false,
            tx_frames: 0,
            rx_frames: 0,
            rewatch: false,
            gone: false,
            ready: false,
            offloads_pending: None,
        }
    }

    /// The TAP device returned an error other than "no frame": say so once
    /// and stop watching it (a device gone with its namespace reports an
    /// error, and is ready to poll, for ever). The guest runs on, its
    /// frames dropped as a cable pulled out would.
    fn tap_failed(&mut self, e: &std::io::Error) {
        if !self.gone {
            self.gone = true;
            eprintln!(
                "torito: NIC on TAP device '{}' stopped: {e} (was the device or its namespace removed?); the \
                 guest runs on without it",
                self.tap.name()
            );
        }
    }

    /// Move frames from the TAP device into the receive queue while both
    /// have some.
    ///
    /// The driver is asked not to notify the receive queue
    /// (VRING_USED_F_NO_NOTIFY) while the device takes buffers as frames
    /// come: a notification is only needed when a frame waits for a
    /// buffer (then the TAP device is not watched). That saves an exit per
    /// buffer the driver posts: 64 at start, one per frame after.
    pub fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        if self.waiting.is_none() {
            let _ = queue.disable_notification(mem);
        }
        let merged = self.features & F_MRG_RXBUF != 0;
        // A buffer seen posted after the queue looked empty is tried once:
        // a hostile driver's ring can say "more" for ever (an index beyond
        // the queue's size, a used ring outside RAM) and hand out nothing.
        let mut retried = false;
        loop {
            let len = match self.waiting.take() {
                Some(n) => n,
                None => match self.tap.recv(&mut self.rx_buf) {
                    // Shorter than a header and an Ethernet header, or cut
                    // short, or with an offload the guest did not accept
                    // (one read before the TAP device was told): dropped.
                    Ok(Some(n))
                        if !(HDR + 14..=HDR + MAX_GSO_FRAME).contains(&n) || !self.fit_for_guest(n) =>
                    {
                        continue;
                    }
                    Ok(Some(n)) => n,
                    Ok(None) => return,
                    Err(e) => {
                        self.tap_failed(&e);
                        return;
                    }
                },
            };
            // The header as the TAP device wrote it (only the offloads the
            // guest negotiated), then the frame; `num_buffers` is ours.
            let frame = &mut self.rx_buf[..len];
            match fill_merged(queue, mem, frame, merged) {
                Fill::Done => {
                    self.rx_frames += 1;
                    retried = false;
                    continue;
                }
                // More than the whole ring holds: it never will.
                Fill::Never => continue,
                Fill::NoRoom => {}
            }
            // No room: keep the frame for the next buffers, and ask for a
            // notification when the driver posts some; buffers posted
            // meanwhile (before the driver could see the request) are
            // tried now.
            self.waiting = Some(len);
            match queue.enable_notification(mem) {
                Ok(true) if !retried => {
                    retried = true;
                    let _ = queue.disable_notification(mem);
                }
                _ => return,
            }
        }
    }

    /// [`Net::deliver`] on a vCPU's exit: a frame held back for want of a
    /// buffer that went in has the TAP device watched again, now (the I/O
    /// thread waits without it).
    fn deliver_on_exit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        let held = self.waiting.is_some();
        self.deliver(queue, mem);
        self.rewatch |= held && self.waiting.is_none();
    }

    /// Tell the TAP device which offloads it may hand over; a failure is
    /// said once (a guest resetting its device in a loop is not to fill
    /// the console).
    fn set_tap_offloads(&mut self, flags: u32) {
        if let Err(e) = self.tap.set_offload(flags)
            && !std::mem::replace(&mut self.offload_warned, true)
        {
            eprintln!("torito: TAP device '{}': cannot set its offloads: {e}", self.tap.name());
        }
    }

    /// Whether the frame of `len` bytes in `rx_buf` asks of the guest only
    /// what it accepted: a checksum flag only with `GUEST_CSUM` (the TAP
    /// device may mark frames checked even without), a segment only of a
    /// kind it takes. The flag is cleared; a segment it cannot take is
    /// refused.
    fn fit_for_guest(&mut self, len: usize) -> bool {
        let Some(hdr) = self.rx_buf.get_mut(..HDR).filter(|_| len >= HDR) else { return false };
        if self.features & F_GUEST_CSUM == 0 {
            hdr[0] = 0;
        }
        match hdr[1] {
            GSO_NONE => true,
            GSO_TCPV4 => self.features & F_GUEST_TSO4 != 0,
            GSO_TCPV6 => self.features & F_GUEST_TSO6 != 0,
            _ => false,
        }
    }

    /// Send every frame the guest queued, each with its header.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        let largest =
            HDR + if self.features & (F_HOST_TSO4 | F_HOST_TSO6) != 0 { MAX_GSO_FRAME } else { MAX_FRAME };
        let mut buf = std::mem::take(&mut self.tx_buf);
        let features = self.features;
        read_all(queue, mem, |r| {
            buf.clear();
            if r.take(largest as u64 + 1).read_to_end(&mut buf).is_ok()
                && (HDR + 14..=largest).contains(&buf.len())
                && header_allowed(features, &buf)
                && self.tap.send(&buf).is_ok()
            {
                self.tx_frames += 1;
            }
        });
        self.tx_buf = buf;
    }
}

/// Whether a sent frame's header (`frame`: the header, then the frame)
/// asks only for what the guest negotiated (`features`), with fields that
/// make sense: the checksum's place inside the frame (a TCP or UDP
/// checksum field), a segment size for a segment. The host's kernel checks
/// these too; a guest is not to reach its parser with what no device of
/// ours would send.
fn header_allowed(features: u64, frame: &[u8]) -> bool {
    let Some(h) = frame.get(..HDR) else { return false };
    let (flags, gso) = (h[0], h[1]);
    let field = |at: usize| usize::from(u16::from_le_bytes([h[at], h[at + 1]]));
    let (gso_size, csum_start, csum_offset) = (field(4), field(6), field(8));
    let csum_ok = match flags {
        0 => true,
        HDR_F_NEEDS_CSUM => {
            features & F_CSUM != 0
                && matches!(csum_offset, 6 | 16)
                && HDR + csum_start + csum_offset + 2 <= frame.len()
        }
        _ => false,
    };
    let gso_ok = match gso {
        GSO_NONE => true,
        GSO_TCPV4 => features & F_HOST_TSO4 != 0,
        GSO_TCPV6 => features & F_HOST_TSO6 != 0,
        _ => false,
    };
    csum_ok && gso_ok && (gso == GSO_NONE || (flags == HDR_F_NEEDS_CSUM && gso_size > 0))
}

/// The TAP device's offloads (`TUN_F_*`) for the guest's `features`.
fn tap_offloads(features: u64) -> u32 {
    let mut flags = 0;
    if features & F_GUEST_CSUM != 0 {
        flags |= TUN_F_CSUM;
        if features & F_GUEST_TSO4 != 0 {
            flags |= TUN_F_TSO4;
        }
        if features & F_GUEST_TSO6 != 0 {
            flags |= TUN_F_TSO6;
        }
    }
    flags
}

impl Backend for Net {
    fn device_id(&self) -> u32 {
        DEVICE_NET
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MAC | F_MRG_RXBUF | OFFLOADS
    }

    fn config(&self) -> Vec<u8> {
        let mut c = self.mac.to_vec();
        c.extend_from_slice(&[0, 0]); // status (not offered)
        c
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        match (index, queues.get(index)) {
            (0, Some(q)) => self.deliver_on_exit(q, mem),
            (1, Some(q)) => {
                self.transmit(q, mem);
                // What the frames just sent called for may already be
                // waiting: a peer on this host answers within the `write`
                // (the kernel's TCP acknowledges a SYN-ACK, a local client
                // sends its next request), so it goes in now, on the way
                // back to the guest, instead of after the I/O thread's
                // wake-up and an interrupt. Nothing there costs one `read`.
                if let Some(q) = queues.get(0) {
                    self.deliver_on_exit(q, mem);
                }
            }
            _ => {}
        }
    }

    fn has_host_io(&self) -> bool {
        true
    }

    /// The TAP device, unless a frame already waits for a guest buffer
    /// (then the guest's next notification delivers it).
    fn host_fds(&self, fds: &mut Vec<(RawFd, Want)>) {
        if self.ready && self.waiting.is_none() && !self.gone {
            fds.push((self.tap.as_raw_fd(), Want::Read));
        }
    }

    /// Detaching from the TAP device waits for an expedited RCU grace
    /// period (0.3–0.4 ms on the Intel development host).
    fn slow_to_close(&self, fds: &mut Vec<RawFd>) {
        fds.push(self.tap.as_raw_fd());
    }

    fn service_host(&mut self, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        if let Some(flags) = self.offloads_pending.take() {
            self.set_tap_offloads(flags);
        }
        if let Some(q) = queues.get(0) {
            self.deliver(q, mem);
        }
    }

    fn driver_ok(&mut self, features: u64, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        self.features = features;
        self.ready = true;
        // The TAP device hands over only offloads the guest accepted (a
        // partial checksum, a 64 KiB segment); the I/O thread tells it
        // (`service_host`), woken to watch the device now.
        let flags = tap_offloads(features);
        self.offloads_pending = (flags != 0).then_some(flags);
        self.rewatch = true;
        if let Some(q) = queues.get(0) {
            self.deliver(q, mem);
        }
    }

    fn take_rewatch(&mut self) -> bool {
        std::mem::take(&mut self.rewatch)
    }

    /// The driver reset the device: nothing it negotiated holds any more
    /// (no offloads from the TAP device, no frame held for it).
    fn reset(&mut self) {
        // The TAP device has none since it was opened unless the guest
        // took some: a driver's first reset (every boot) costs no ioctl.
        // Offloads not yet told are simply not told.
        let told = self.offloads_pending.take().is_none();
        if told && tap_offloads(self.features) != 0 {
            self.set_tap_offloads(0);
        }
        self.features = 0;
        self.ready = false;
        self.waiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// A TAP device that fails (here a descriptor that cannot be read) is
    /// said once and no longer watched: the I/O thread would otherwise
    /// wake on its error for ever.
    #[test]
    fn a_failing_tap_is_no_longer_watched() {
        let f = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
        let mut n = Net::new(Tap::for_tests(f), [0; 6]);
        let mut fds = Vec::new();
        n.host_fds(&mut fds);
        assert!(fds.is_empty(), "not watched before the driver is ready");
        n.ready = true;
        n.host_fds(&mut fds);
        assert_eq!(fds.len(), 1);
        let e = n.tap.recv(&mut [0u8; 64]).unwrap_err();
        n.tap_failed(&e);
        fds.clear();
        n.host_fds(&mut fds);
        assert!(fds.is_empty());
    }

    /// The TAP device is watched from DRIVER_OK on (the I/O thread is
    /// asked to look again), not before; its offloads are told by the I/O
    /// thread's next service, not in the vCPU's exit; a reset undoes both.
    #[test]
    fn the_tap_is_watched_from_driver_ok_and_told_its_offloads_later() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut n = Net::new(Tap::for_tests(std::fs::File::from(std::os::fd::OwnedFd::from(a))), [0; 6]);
        let watched = |n: &Net| {
            let mut fds = Vec::new();
            n.host_fds(&mut fds);
            fds.len()
        };
        assert_eq!(watched(&n), 0);
        n.driver_ok(F_GUEST_CSUM | F_GUEST_TSO4, &mut Queues::for_tests(&mut []), &mem);
        assert!(n.take_rewatch(), "the I/O thread is told to look again");
        assert_eq!(watched(&n), 1);
        assert_eq!(n.offloads_pending, Some(TUN_F_CSUM | TUN_F_TSO4), "not told in the exit");
        n.service_host(&mut Queues::for_tests(&mut []), &mem);
        assert_eq!(n.offloads_pending, None, "told by the I/O thread");
        n.reset();
        assert_eq!(watched(&n), 0);
    }

    /// Chains a guest may post on the transmit queue: a header too short,
    /// a frame outside RAM, a wrapping buffer, a self-loop, an oversized
    /// frame. Each is returned (used), nothing outside guest RAM is read,
    /// and nothing fails. (The `Net` writes to one end of a socket pair
    /// standing in for the TAP device.)
    #[test]
    fn malformed_transmit_chains_are_dropped() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        let d = |addr: u64, len: u32, flags: u16, next: u16| {
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        };
        q.add_desc_chains(
            &[
                d(0x10_0000, 4, 0, 0),           // header too short
                d(0x10_0000, 12, 1, 2),          // header, then
                d(0xffff_0000_0000, 64, 0, 0),   //   a frame outside RAM
                d(0x10_0000, 12, 1, 4),          // header, then
                d(u64::MAX - 4, u32::MAX, 0, 0), //   a wrapping buffer
                d(0x10_0000, 12, 1, 6),          // header, then
                d(0x10_1000, 60_000, 0, 0),      //   a 60 KB "frame"
                d(0x10_0000, 12, 1, 7),          // a self-loop (last)
            ],
            0,
        )
        .unwrap();
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let tap = Tap::for_tests(std::fs::File::from(std::os::fd::OwnedFd::from(a)));
        let mut net = Net::new(tap, default_mac(0));
        net.transmit(&mut queue, &mem);
        // The self-loop reads its own 12 bytes queue-size times (bounded by
        // virtio-queue), all inside guest RAM: at most that one odd frame
        // goes out, which a guest could send anyway.
        assert!(net.tx_frames <= 1, "{} frames were sent", net.tx_frames);
        let used: u16 = vm_memory::Bytes::read_obj(&mem, GuestAddress(q.used_addr().0 + 2)).unwrap();
        assert_eq!(used, 5, "every chain was returned");
    }

    /// A frame the host sent while the guest was transmitting (a peer on
    /// this host answers within the `write`) goes into the receive queue
    /// in the same notification, with no I/O thread involved.
    #[test]
    fn a_transmit_notification_delivers_what_waits() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        rx.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x10_0000, 2048, 2, 0))], 0).unwrap();
        tx.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x20_0000, (HDR + 60) as u32, 0, 0))], 0)
            .unwrap();
        let mut queues: [Queue; 2] = [rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut net = Net::new(Tap::for_tests(std::fs::File::from(std::os::fd::OwnedFd::from(a))), [0; 6]);
        // The answer is there before the guest's frame goes out.
        let answer = [[0u8; HDR].as_slice(), &[0xab; 60]].concat();
        b.send(&answer).unwrap();
        net.notify(1, &mut Queues::for_tests(&mut queues), &mem);
        let mut sent = [0u8; 128];
        assert_eq!(b.recv(&mut sent).unwrap(), HDR + 60, "the guest's frame went out");
        assert_eq!((net.tx_frames, net.rx_frames), (1, 1));
        let used: u16 = vm_memory::Bytes::read_obj(&mem, GuestAddress(rx.used_addr().0 + 2)).unwrap();
        assert_eq!(used, 1, "the answer is in the receive queue");
        let mut got = [0u8; 60];
        vm_memory::Bytes::read_slice(&mem, &mut got, GuestAddress(0x10_0000 + HDR as u64)).unwrap();
        assert_eq!(got, [0xab; 60]);
        // Nothing waiting: one read that finds nothing, no frame.
        net.notify(1, &mut Queues::for_tests(&mut queues), &mem);
        assert_eq!(net.rx_frames, 1);
    }

    /// A 5,000-byte frame goes into three 2,048-byte buffers, the first
    /// saying so; with two buffers posted it waits, and none is taken.
    #[test]
    fn a_large_frame_spans_mergeable_buffers() {
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = q.create_queue().unwrap();
        let d = |i: u64| RawDescriptor::from(Descriptor::new(0x10_0000 + i * 0x1000, 2048, 2, 0));
        q.add_desc_chains(&[d(0), d(1)], 0).unwrap();
        let mut frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        frame[..HDR].fill(0);
        assert_eq!(fill_merged(&mut queue, &mem, &mut frame, true), Fill::NoRoom, "two buffers are too few");
        assert_eq!(queue.next_avail(), 0, "none was taken");
        let q = MockSplitQueue::new(&mem, 16);
        q.add_desc_chains(&[d(0), d(1), d(2)], 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert_eq!(fill_merged(&mut queue, &mem, &mut frame, true), Fill::Done);
        let used: u16 = vm_memory::Bytes::read_obj(&mem, GuestAddress(q.used_addr().0 + 2)).unwrap();
        assert_eq!(used, 3);
        let n: u16 = vm_memory::Bytes::read_obj(&mem, GuestAddress(0x10_0000 + 10)).unwrap();
        assert_eq!(n, 3, "num_buffers");
        let mut back = vec![0u8; 5000 - 4096];
        vm_memory::Bytes::read_slice(&mem, &mut back, GuestAddress(0x10_2000)).unwrap();
        assert_eq!(back, frame[4096..]);
        // Without mergeable buffers a frame larger than the buffer is
        // dropped (returned with length 0), and the next one taken.
        let q = MockSplitQueue::new(&mem, 16);
        q.add_desc_chains(&[d(0), d(1)], 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert_eq!(fill_merged(&mut queue, &mem, &mut frame, false), Fill::Done);
        assert_eq!(queue.next_avail(), 1);
        // A ring of two buffers never holds 5,000 bytes: the frame is
        // given up, and no buffer taken.
        let q = MockSplitQueue::new(&mem, 2);
        q.add_desc_chains(&[d(0), d(1)], 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert_eq!(fill_merged(&mut queue, &mem, &mut frame, true), Fill::Never);
        assert_eq!(queue.next_avail(), 0);
    }

    /// A sent frame may ask the host only for the offloads negotiated.
    #[test]
    fn headers_ask_for_no_more_than_was_negotiated() {
        let all = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6;
        // A 100-byte frame after the header; the checksum at 34 + 16, a
        // segment size of 1,448 bytes where asked.
        let hdr = |flags: u8, gso: u8| {
            let mut f = vec![0u8; HDR + 100];
            f[..10].copy_from_slice(&[flags, gso, 0, 0, 0xa8, 5, 34, 0, 16, 0]);
            f
        };
        assert!(header_allowed(0, &hdr(0, 0)));
        assert!(!header_allowed(0, &hdr(1, 0)), "a checksum not negotiated");
        assert!(header_allowed(F_CSUM, &hdr(1, 0)));
        assert!(!header_allowed(F_CSUM, &hdr(1, GSO_TCPV4)), "segmentation not negotiated");
        assert!(header_allowed(all, &hdr(1, GSO_TCPV4)));
        assert!(header_allowed(all, &hdr(1, GSO_TCPV6)));
        assert!(!header_allowed(all, &hdr(0, GSO_TCPV4)), "segmentation without a checksum");
        assert!(!header_allowed(all, &hdr(1, 3)), "UDP");
        assert!(!header_allowed(all, &hdr(1, 0x81)), "ECN");
        assert!(!header_allowed(all, &hdr(2, 0)), "an unknown flag");
        let mut h = hdr(1, 0);
        h[6] = 90; // the checksum field beyond the frame
        assert!(!header_allowed(all, &h));
        let mut h = hdr(1, 0);
        h[8] = 7; // not a TCP or UDP checksum field
        assert!(!header_allowed(all, &h));
        let mut h = hdr(1, GSO_TCPV4);
        h[4..6].fill(0); // a segment of no size
        assert!(!header_allowed(all, &h));
        assert!(!header_allowed(all, &[1, 0]), "a short header");
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(F_GUEST_TSO4), 0, "segments need checksums");
        assert_eq!(tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4), TUN_F_CSUM | TUN_F_TSO4);
    }

    #[test]
    fn nic_options() {
        assert_eq!(NetConfig::parse("tap=tap0"), Ok(NetConfig { tap: "tap0".into(), mac: None }));
        assert_eq!(NetConfig::parse("tap=t1,mac=02:00:00:00:00:07").unwrap().mac, Some([2, 0, 0, 0, 0, 7]));
        assert!(NetConfig::parse("mac=02:00:00:00:00:07").is_err());
        assert!(NetConfig::parse("tap=t,mac=01:00:00:00:00:07").is_err(), "multicast");
        assert!(NetConfig::parse("tap=t,speed=10").unwrap_err().contains("unknown NIC option"));
        assert!(Tap::open("no-such-tap-dev").unwrap_err().contains("ip tuntap add dev no-such-tap-dev"));
    }
}
