//! Offloads, the stack's side: what smoltcp is told it need not do (the
//! checksums of TCP and UDP, cutting TCP into segments), what each frame
//! sent asks of the device instead ([`TxOffload`]), and the look at
//! received frames the host did not check.
//!
//! A frame whose checksum the device is to complete carries, in its
//! checksum field, the sum of its pseudo-header (addresses, protocol,
//! length), not complemented: the device adds the rest and stores the
//! complement (virtio 1.2 §5.1.6.2, as Linux's `CHECKSUM_PARTIAL`). A
//! large TCP segment (smoltcp's `segmentation-offload`: its
//! `PacketMeta::segmentation_offload_size` is the segment size the peer
//! takes) carries the sum for its whole length; the host's segmentation
//! adjusts it per segment.

use core::num::NonZeroUsize;

use smoltcp::phy::{Checksum, DeviceCapabilities, PacketMeta};
use smoltcp::wire::{
    IpAddress, IpEndpoint, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, checksum,
};
use unit_devices::{Offloads, TxOffload};

/// Ethernet header.
const ETH: usize = 14;
/// EtherTypes of IPv4 and IPv6.
const IPV4: [u8; 2] = [0x08, 0x00];
const IPV6: [u8; 2] = [0x86, 0xdd];
/// Where the checksum field is in a TCP and a UDP header.
const TCP_CSUM_AT: u16 = 16;
const UDP_CSUM_AT: u16 = 6;

/// Tell smoltcp what the device does in its place.
pub(crate) fn capabilities(caps: &mut DeviceCapabilities, o: Offloads) {
    let l4 = match (o.rx_csum, o.tx_csum) {
        (true, true) => Checksum::None,
        (true, false) => Checksum::Tx,
        (false, true) => Checksum::Rx,
        (false, false) => Checksum::Both,
    };
    caps.checksum.tcp = l4;
    caps.checksum.udp = l4;
    // smoltcp hands the device segments larger than the peer takes only
    // when the device also completes their checksums.
    if o.tx_csum {
        caps.segmentation.tcpv4 = NonZeroUsize::new(o.tso4);
    }
}

/// The TCP or UDP packet in an Ethernet frame (IPv4, or IPv6 without
/// extension headers): where its transport header starts, its protocol,
/// its transport length, its addresses.
fn transport(frame: &[u8]) -> Option<(usize, IpProtocol, usize, IpAddress, IpAddress)> {
    let (start, proto, len, src, dst) = match [*frame.get(12)?, *frame.get(13)?] {
        IPV4 => {
            let ip = Ipv4Packet::new_checked(frame.get(ETH..)?).ok()?;
            // A fragment's checksum covers the whole datagram: not ours to
            // judge.
            if ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let len = usize::from(ip.total_len()).checked_sub(usize::from(ip.header_len()))?;
            let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
            (ETH + usize::from(ip.header_len()), ip.next_header(), len, src, dst)
        }
        IPV6 => {
            let ip = Ipv6Packet::new_checked(frame.get(ETH..)?).ok()?;
            let (src, dst) = (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()));
            (ETH + 40, ip.next_header(), usize::from(ip.payload_len()), src, dst)
        }
        _ => return None,
    };
    if !matches!(proto, IpProtocol::Tcp | IpProtocol::Udp) {
        return None;
    }
    (frame.len() >= start + len).then_some((start, proto, len, src, dst))
}

/// The port `frame` asks a TCP connection on, when it is a SYN without ACK
/// (the stack makes a listening socket for each such request).
pub(crate) fn syn_port(frame: &[u8]) -> Option<u16> {
    syn(frame).map(|(_, port)| port)
}

/// Who asks, and on which port, when `frame` is a SYN without ACK.
pub(crate) fn syn(frame: &[u8]) -> Option<(IpEndpoint, u16)> {
    match transport(frame) {
        Some((start, IpProtocol::Tcp, len, src, _)) => frame
            .get(start..start + len)
            .and_then(|t| TcpPacket::new_checked(t).ok())
            .filter(|t| t.syn() && !t.ack())
            .map(|t| (IpEndpoint::new(src, t.src_port()), t.dst_port())),
        _ => None,
    }
}

/// What the device is to do to `frame`, just written by smoltcp: complete
/// its TCP or UDP checksum (the pseudo-header's sum goes into the field
/// now), and cut it into segments when smoltcp asked.
pub(crate) fn tx(frame: &mut [u8], o: Offloads, meta: PacketMeta) -> TxOffload {
    if !o.tx_csum {
        return TxOffload::default();
    }
    let Some((start, proto, len, src, dst)) = transport(frame) else { return TxOffload::default() };
    let at = if proto == IpProtocol::Tcp { TCP_CSUM_AT } else { UDP_CSUM_AT };
    let sum = checksum::pseudo_header(&src, &dst, proto, len as u32);
    let field = start + usize::from(at);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    // smoltcp cuts TCP/IPv6 itself (no `tcpv6` capability is given).
    let tso4 = match (proto, meta.segmentation_offload_size, src) {
        (IpProtocol::Tcp, Some(mss), IpAddress::Ipv4(_)) => {
            let tcp_header = usize::from(frame[start + 12] >> 4) * 4;
            Some((mss.get(), (start + tcp_header) as u16))
        }
        _ => None,
    };
    TxOffload { csum: Some((start as u16, at)), tso4 }
}

/// Whether a received frame's TCP or UDP checksum is right (frames of
/// other kinds pass: smoltcp checks those itself, or drops them).
pub(crate) fn rx_checksum_ok(frame: &[u8]) -> bool {
    let Some((start, proto, len, src, dst)) = transport(frame) else { return true };
    let segment = &frame[start..start + len];
    match proto {
        IpProtocol::Tcp => TcpPacket::new_checked(segment).is_ok_and(|p| p.verify_checksum(&src, &dst)),
        _ => UdpPacket::new_checked(segment).is_ok_and(|p| p.verify_checksum(&src, &dst)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Ipv4Address, Ipv4Repr, TcpRepr,
    };

    /// A TCP/IPv4 frame with `payload`, its checksum computed or not.
    fn tcp_frame(payload: &[u8], compute: bool) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 0, 2, 15), Ipv4Address::new(10, 0, 2, 1));
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: smoltcp::wire::TcpControl::Psh,
            seq_number: smoltcp::wire::TcpSeqNumber(7),
            ack_number: Some(smoltcp::wire::TcpSeqNumber(9)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let mut v = vec![0u8; ETH + ip.buffer_len() + tcp.header_len() + payload.len()];
        let mut eth = EthernetFrame::new_unchecked(&mut v[..]);
        EthernetRepr {
            src_addr: EthernetAddress([6, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([6, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut caps = ChecksumCapabilities::default();
        if !compute {
            caps.tcp = Checksum::None;
        }
        let mut ipp = Ipv4Packet::new_unchecked(&mut v[ETH..]);
        ip.emit(&mut ipp, &caps);
        let mut tp = TcpPacket::new_unchecked(ipp.payload_mut());
        tcp.emit(&mut tp, &src.into(), &dst.into(), &caps);
        v
    }

    /// Complete the checksum as the device does: the complement of the sum
    /// from `start` to the end, stored at `start + at`.
    fn complete(frame: &mut [u8], start: u16, at: u16) {
        let (start, field) = (usize::from(start), usize::from(start + at));
        let sum = !checksum::data(&frame[start..]);
        frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn a_checksum_left_to_the_device_comes_out_right() {
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let good = tcp_frame(&payload, true);
        let mut frame = tcp_frame(&payload, false);
        let o = Offloads { rx_csum: true, tx_csum: true, tso4: 0 };
        let off = tx(&mut frame, o, PacketMeta::default());
        assert_eq!(off, TxOffload { csum: Some((34, 16)), tso4: None });
        complete(&mut frame, 34, 16);
        assert_eq!(frame, good);
        assert!(rx_checksum_ok(&frame));
        frame[60] ^= 1;
        assert!(!rx_checksum_ok(&frame), "a flipped bit is seen");
    }

    /// The same over IPv6 (compiled in for smoltcp's segmentation, unused
    /// today): the checksum is still completed right, and never cut.
    #[test]
    fn ipv6_checksums_are_completed_too() {
        use smoltcp::wire::{Ipv6Address, Ipv6Repr, UdpRepr};
        let (src, dst) =
            (Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 15), Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        let payload = b"over IPv6";
        let build = |compute: bool| {
            let udp = UdpRepr { src_port: 53, dst_port: 40000 };
            let ip = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Udp,
                payload_len: udp.header_len() + payload.len(),
                hop_limit: 64,
            };
            let mut v = vec![0u8; ETH + ip.buffer_len() + ip.payload_len];
            v[12..14].copy_from_slice(&IPV6);
            let mut ipp = Ipv6Packet::new_unchecked(&mut v[ETH..]);
            ip.emit(&mut ipp);
            let mut caps = ChecksumCapabilities::default();
            if !compute {
                caps.udp = Checksum::None;
            }
            let mut up = UdpPacket::new_unchecked(ipp.payload_mut());
            udp.emit(&mut up, &src.into(), &dst.into(), payload.len(), |b| b.copy_from_slice(payload), &caps);
            v
        };
        let good = build(true);
        let mut frame = build(false);
        let mut meta = PacketMeta::default();
        meta.segmentation_offload_size = core::num::NonZeroU16::new(1000);
        let o = Offloads { rx_csum: true, tx_csum: true, tso4: 65549 };
        assert_eq!(tx(&mut frame, o, meta), TxOffload { csum: Some((54, 6)), tso4: None });
        complete(&mut frame, 54, 6);
        assert_eq!(frame, good);
        assert!(rx_checksum_ok(&frame));
        frame[70] ^= 1;
        assert!(!rx_checksum_ok(&frame));
    }

    #[test]
    fn a_large_segment_asks_to_be_cut() {
        let mut frame = tcp_frame(&[1u8; 4000], false);
        let mut meta = PacketMeta::default();
        meta.segmentation_offload_size = core::num::NonZeroU16::new(1460);
        let o = Offloads { rx_csum: true, tx_csum: true, tso4: 65549 };
        let off = tx(&mut frame, o, meta);
        assert_eq!(off, TxOffload { csum: Some((34, 16)), tso4: Some((1460, 54)) });
        // Without the device's checksums nothing is asked (smoltcp then
        // computes them and never makes large segments).
        let o = Offloads { rx_csum: false, tx_csum: false, tso4: 0 };
        assert_eq!(tx(&mut tcp_frame(&[1u8; 40], true), o, meta), TxOffload::default());
    }

    #[test]
    fn smoltcp_is_told_what_it_need_not_do() {
        let mut caps = DeviceCapabilities::default();
        capabilities(&mut caps, Offloads { rx_csum: true, tx_csum: false, tso4: 65549 });
        assert!(!caps.checksum.tcp.rx() && caps.checksum.tcp.tx());
        assert_eq!(caps.segmentation.tcpv4, None, "no segmentation without checksums");
        capabilities(&mut caps, Offloads { rx_csum: true, tx_csum: true, tso4: 65549 });
        assert!(!caps.checksum.udp.rx() && !caps.checksum.udp.tx());
        assert_eq!(caps.segmentation.tcpv4, NonZeroUsize::new(65549));
        let mut caps = DeviceCapabilities::default();
        capabilities(&mut caps, Offloads::default());
        assert!(caps.checksum.tcp.rx() && caps.checksum.tcp.tx());
    }

    #[test]
    fn frames_of_other_kinds_pass_the_look() {
        assert!(rx_checksum_ok(&[0u8; 60]));
        let mut short = tcp_frame(b"abc", true);
        short.truncate(40);
        assert!(rx_checksum_ok(&short), "smoltcp drops what is cut short");
    }
}

#[cfg(test)]
mod syn_tests {
    use super::syn_port;

    /// Ethernet + IPv4 (no options) + a 20-byte TCP header with `flags`,
    /// to port 80.
    fn frame(ethertype: u16, protocol: u8, flags: u8) -> Vec<u8> {
        let mut v = vec![0u8; 14 + 20 + 20];
        v[12..14].copy_from_slice(&ethertype.to_be_bytes());
        v[14] = 0x45;
        v[16..18].copy_from_slice(&40u16.to_be_bytes());
        v[22] = 64;
        v[23] = protocol;
        v[34 + 2..34 + 4].copy_from_slice(&80u16.to_be_bytes());
        v[34 + 12] = 0x50;
        v[34 + 13] = flags;
        v
    }

    #[test]
    fn only_a_connection_request_counts_as_a_syn() {
        assert_eq!(syn_port(&frame(0x0800, 6, 0x02)), Some(80));
        assert_eq!(syn_port(&frame(0x0800, 6, 0x12)), None, "SYN-ACK");
        assert_eq!(syn_port(&frame(0x0800, 6, 0x10)), None, "ACK");
        assert_eq!(syn_port(&frame(0x0800, 17, 0x02)), None, "UDP");
        assert_eq!(syn_port(&frame(0x0806, 6, 0x02)), None, "ARP");
        assert_eq!(syn_port(&frame(0x0800, 6, 0x02)[..40]), None, "cut short");
        assert_eq!(syn_port(&[]), None);
    }
}
