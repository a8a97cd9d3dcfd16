//! netload: a TCP client for the networking tests and the bench.
//!
//! ```text
//! netload ADDR:PORT conns N BYTES   # N connections at once, each echoes BYTES
//! netload ADDR:PORT rr N SECONDS    # N connections doing 64-byte request/response
//! netload ADDR:PORT stream SECONDS  # one connection, send and read back at once: MB/s
//! netload ADDR:PORT reset           # connect, send, reset (RST) without reading
//! netload ADDR:PORT idle BYTES      # connect, send BYTES, never read; hold 2 s
//! netload ADDR:PORT garbage IFACE N # N malformed frames to ADDR's MAC through IFACE
//! ```
//! Prints one line of results; exits non-zero on any mismatch or error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn pattern(conn: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ (conn as u8)).collect()
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    // The guest refuses connections beyond its backlog while it accepts
    // the others: retry with a growing pause (20 ms to 1 s), for ~30 s.
    let mut last = None;
    let mut pause = Duration::from_millis(20);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no attempt")))
}

fn echo(addr: SocketAddr, conn: usize, len: usize, hold: &std::sync::Barrier) -> Result<(), String> {
    let connected = connect(addr);
    // Every connection is open (or has failed) before any data flows.
    hold.wait();
    let mut s = connected.map_err(|e| format!("conn {conn}: connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let data = pattern(conn, len);
    s.write_all(&data).map_err(|e| format!("conn {conn}: write: {e}"))?;
    let mut back = vec![0u8; len];
    s.read_exact(&mut back).map_err(|e| format!("conn {conn}: read: {e}"))?;
    if back != data {
        return Err(format!("conn {conn}: echoed bytes differ"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: netload ADDR:PORT (conns N BYTES | rr N SECONDS | reset | idle BYTES | garbage IFACE N)"
        );
        std::process::exit(2)
    };
    let Some(addr) = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()) else { usage() };
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| usage());
    match args.get(2).map(String::as_str) {
        Some("conns") => {
            let (n, len) = (num(3), num(4));
            let t = Instant::now();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
            let hs: Vec<_> = (0..n)
                .map(|c| {
                    let b = barrier.clone();
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || echo(addr, c, len, &b))
                        .expect("a thread")
                })
                .collect();
            let errors: Vec<String> =
                hs.into_iter().filter_map(|h| h.join().ok().and_then(|r| r.err())).collect();
            println!("netload: {n} connections, {} ok, in {} ms", n - errors.len(), t.elapsed().as_millis());
            if let Some(e) = errors.first() {
                eprintln!("netload: {} failed; first: {e}", errors.len());
                std::process::exit(1);
            }
        }
        Some("rr") => {
            let (n, secs) = (num(3), num(4));
            let deadline = Instant::now() + Duration::from_secs(secs as u64);
            let hs: Vec<_> = (0..n)
                .map(|c| {
                    std::thread::spawn(move || -> Result<u64, String> {
                        let mut s = connect(addr).map_err(|e| e.to_string())?;
                        s.set_nodelay(true).ok();
                        let (msg, mut back, mut count) = (pattern(c, 64), [0u8; 64], 0u64);
                        while Instant::now() < deadline {
                            s.write_all(&msg).map_err(|e| e.to_string())?;
                            s.read_exact(&mut back).map_err(|e| e.to_string())?;
                            count += 1;
                        }
                        Ok(count)
                    })
                })
                .collect();
            let mut total = 0;
            for h in hs {
                match h.join() {
                    Ok(Ok(c)) => total += c,
                    other => {
                        eprintln!("netload: a connection failed: {other:?}");
                        std::process::exit(1);
                    }
                }
            }
            println!("netload: {n} connection(s): {} round trips/s", total / secs.max(1) as u64);
        }
        Some("stream") => {
            let secs = num(3) as u64;
            let mut s = connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            let mut w = s.try_clone().expect("clone");
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let st = stop.clone();
            let writer = std::thread::spawn(move || {
                let chunk = pattern(1, 64 * 1024);
                let mut sent = 0u64;
                while !st.load(std::sync::atomic::Ordering::Relaxed) {
                    if w.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len() as u64;
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
                sent
            });
            let t = Instant::now();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            let mut stopped = false;
            loop {
                if !stopped && t.elapsed() >= Duration::from_secs(secs) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    stopped = true;
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            let sent = writer.join().unwrap_or(0);
            let el = t.elapsed().as_secs_f64();
            println!(
                "netload: stream: {} MB/s each way ({got} of {sent} bytes back)",
                (got as f64 / el / 1e6) as u64
            );
            if got != sent {
                std::process::exit(1);
            }
        }
        Some("reset") => {
            let s = connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            let mut s2 = s.try_clone().expect("clone");
            let _ = s2.write_all(b"half a message, then a reset");
            // SO_LINGER 0: close sends RST.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid socket descriptor and a `linger` of the size
            // passed, alive for the call.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            drop(s);
            drop(s2);
            println!("netload: reset sent");
        }
        Some("idle") => {
            let len = num(3);
            let mut s = connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            s.set_write_timeout(Some(Duration::from_secs(2))).ok();
            let sent = s.write(&pattern(0, len)).unwrap_or(0);
            std::thread::sleep(Duration::from_secs(2));
            println!("netload: idle peer sent {sent} bytes and read nothing");
        }
        Some("garbage") => {
            let iface = args.get(3).unwrap_or_else(|| usage());
            let n = num(4);
            match garbage::send(addr, iface, n) {
                Ok(sent) => println!("netload: garbage: {sent} malformed frames sent to {}", addr.ip()),
                Err(e) => {
                    eprintln!("netload: garbage: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => usage(),
    }
}

/// Malformed traffic at the link layer, for the "peer that sends garbage"
/// tests: frames of random length and content, IPv4 headers with wrong
/// lengths, versions, checksums and fragment fields, TCP segments to the
/// port with random flags, sequence numbers and header lengths (half of
/// them with a correct checksum, so they reach the TCP state machine),
/// truncated ICMP and ARP. Sent through a packet socket on the host side
/// of the TAP device, from the host's own addresses.
mod garbage {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

    /// A small deterministic generator (xorshift64*): runs are repeatable.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        /// Fewer than `max` random bytes.
        fn some_bytes(&mut self, max: u64) -> Vec<u8> {
            let n = self.below(max) as usize;
            self.bytes(n)
        }
    }

    fn checksum(data: &[u8], mut sum: u32) -> u16 {
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn parse_mac(s: &str) -> Option<[u8; 6]> {
        let v: Vec<u8> = s.trim().split(':').filter_map(|x| u8::from_str_radix(x, 16).ok()).collect();
        v.try_into().ok()
    }

    /// The guest's MAC from the host's ARP table (the test pings first).
    fn guest_mac(ip: Ipv4Addr) -> Result<[u8; 6], String> {
        let arp = std::fs::read_to_string("/proc/net/arp").map_err(|e| format!("/proc/net/arp: {e}"))?;
        arp.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&ip.to_string().as_str())).then(|| f.get(3).and_then(|m| parse_mac(m)))?
            })
            .find(|m| *m != [0; 6])
            .ok_or_else(|| format!("{ip} is not in the ARP table (ping it first)"))
    }

    /// Ethernet header + IPv4 header (`total` bytes after it, protocol
    /// `proto`), with the header checksum right unless `bad_sum`.
    fn ipv4(eth: &[u8; 14], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8], r: &mut Rng) -> Vec<u8> {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        let total = (20 + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&(r.next() as u16).to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        // One field in three made wrong: version, header length, total
        // length, fragment bits/offset, TTL 0.
        match r.below(9) {
            0 => h[0] = (r.below(16) as u8) << 4 | 5,
            1 => h[0] = 0x40 | r.below(16) as u8,
            2 => h[2..4].copy_from_slice(&(r.next() as u16).to_be_bytes()),
            3 => h[6..8].copy_from_slice(&(r.next() as u16).to_be_bytes()),
            4 => h[8] = 0,
            _ => {}
        }
        let sum = checksum(&h, 0);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        if r.below(8) == 0 {
            h[10] ^= 0x5a;
        }
        let mut f = eth.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(payload);
        f
    }

    /// A TCP segment to `port` with random flags, numbers, header length
    /// and data; its checksum right half of the time.
    fn tcp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, r: &mut Rng) -> Vec<u8> {
        let data = r.some_bytes(64);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&(40_000 + r.below(20_000) as u16).to_be_bytes());
        t[2..4].copy_from_slice(&port.to_be_bytes());
        t[4..8].copy_from_slice(&(r.next() as u32).to_be_bytes());
        t[8..12].copy_from_slice(&(r.next() as u32).to_be_bytes());
        t[12] = if r.below(4) == 0 { (r.below(16) as u8) << 4 } else { 5 << 4 };
        t[13] = r.next() as u8; // any combination of flags
        t[14..16].copy_from_slice(&(r.next() as u16).to_be_bytes());
        t[18..20].copy_from_slice(&(r.next() as u16).to_be_bytes());
        t.extend_from_slice(&data);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
        let sum = checksum(&t, u32::from(!checksum(&pseudo, 0)));
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        if r.below(2) == 0 {
            t[16] ^= 0xa5;
        }
        t
    }

    /// Send `n` malformed frames to `addr`'s host through `iface`.
    pub fn send(addr: SocketAddr, iface: &str, n: usize) -> Result<usize, String> {
        let IpAddr::V4(dst) = addr.ip() else { return Err("IPv4 only".into()) };
        // The host's address towards the guest: what a UDP socket picks.
        let probe = UdpSocket::bind("0.0.0.0:0").and_then(|u| u.connect(addr).and(u.local_addr()));
        let Ok(SocketAddr::V4(local)) = probe else { return Err("no route to the guest".into()) };
        let src = *local.ip();
        let guest = guest_mac(dst)?;
        let host = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
            .ok()
            .and_then(|m| parse_mac(&m))
            .ok_or_else(|| format!("{iface}: no such interface"))?;
        let mut eth = [0u8; 14];
        eth[0..6].copy_from_slice(&guest);
        eth[6..12].copy_from_slice(&host);
        eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let sock = PacketSocket::open(iface)?;
        let mut r = Rng(0x746f_7269_746f_0001);
        let mut sent = 0;
        for i in 0..n {
            let frame = match i % 6 {
                // Random bytes of any length, random EtherType.
                0 => {
                    let mut f = eth[..12].to_vec();
                    let len = r.below(1500) as usize;
                    f.extend(r.bytes(len + 2));
                    f
                }
                // IPv4 with random protocol and payload.
                1 => {
                    let payload = r.some_bytes(200);
                    ipv4(&eth, src, dst, r.next() as u8, &payload, &mut r)
                }
                // TCP to the port.
                2 | 3 => {
                    let seg = tcp(src, dst, addr.port(), &mut r);
                    ipv4(&eth, src, dst, 6, &seg, &mut r)
                }
                // Truncated ICMP echo requests and UDP headers.
                4 => {
                    let proto = if r.below(2) == 0 { 1 } else { 17 };
                    let payload = r.some_bytes(8);
                    ipv4(&eth, src, dst, proto, &payload, &mut r)
                }
                // ARP with wrong sizes, opcodes and lengths.
                _ => {
                    let mut f = eth.to_vec();
                    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                    f.extend(r.some_bytes(40));
                    f
                }
            };
            sock.send(&frame)?;
            sent += 1;
            // A pause now and then, so the TAP queue does not overflow and
            // the frames reach the guest rather than the floor.
            if i % 32 == 31 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        Ok(sent)
    }

    /// An `AF_PACKET` socket bound to one interface (std has none).
    struct PacketSocket(std::os::fd::OwnedFd, i32);

    impl PacketSocket {
        fn open(iface: &str) -> Result<Self, String> {
            let name = std::ffi::CString::new(iface).map_err(|_| "bad interface name".to_string())?;
            // SAFETY: `name` is a NUL-terminated string alive for the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(format!("{iface}: {}", std::io::Error::last_os_error()));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain system call; the result is checked.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            if fd < 0 {
                return Err(format!("packet socket (needs root): {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            Ok(Self(fd, index as i32))
        }

        fn send(&self, frame: &[u8]) -> Result<(), String> {
            use std::os::fd::AsRawFd;
            // SAFETY: all-zero bytes are a valid `sockaddr_ll`.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = self.1;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: `frame` and `to` are valid for the lengths passed,
            // for the duration of the call.
            let n = unsafe {
                libc::sendto(
                    self.0.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(format!("sending a frame: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }
    }
}
