//! netload: a TCP client for the networking tests and the bench.
//!
//! ```text
//! netload ADDR:PORT conns N BYTES   # N connections at once, each echoes BYTES
//! netload ADDR:PORT rr N SECONDS    # N connections doing 64-byte request/response
//! netload ADDR:PORT stream SECONDS  # one connection, send and read back at once: MB/s
//! netload ADDR:PORT reset           # connect, send, read the echo's start, reset (RST)
//! netload reap -- PROGRAM ARGS...    # run PROGRAM as its subreaper; say what it left and when it ended
//! netload ADDR:PORT idle BYTES      # connect, send BYTES, never read; hold until stdin ends (60 s at most)
//! netload ADDR:PORT bulk BYTES MS   # one connection echoes BYTES, compared byte for
//!                                   # byte; the reader (32 KiB of socket buffer) first
//!                                   # stalls MS ms, so the guest meets a zero window
//! netload ADDR:PORT garbage IFACE N # N malformed frames to ADDR's MAC through IFACE
//! netload ADDR:PORT first-byte http|redis [--tap NAME] -- PROGRAM ARGS...
//!                                   # cold start to first response: spawn PROGRAM,
//!                                   # connect every 100 µs, time its first answer
//!                                   # (with --tap, once that TAP device is free);
//!                                   # the orphans it leaves are ours to reap
//! ```
//! Prints one line of results; exits non-zero on any mismatch or error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use xtask::mono_ns;

/// How long a connection of `rr` or `stream` may see no progress before
/// the load fails.
const STALL: Duration = Duration::from_secs(10);

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

/// One connection: a thread writes `len` bytes of pattern while this one
/// reads them back (after `stall`, with a 32 KiB receive buffer: the
/// peer's sending meets a zero window) and compares them.
fn bulk(addr: SocketAddr, len: usize, stall: Duration) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut s = connect(addr).map_err(|e| format!("connect: {e}"))?;
    let small: libc::c_int = 16 * 1024;
    // SAFETY: a plain setsockopt on our own socket with a c_int value.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_RCVBUF: {}", std::io::Error::last_os_error()));
    }
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let data = pattern(3, 1 << 20);
        let mut left = len;
        while left > 0 {
            let n = left.min(data.len());
            w.write_all(&data[..n]).map_err(|e| format!("write: {e}"))?;
            left -= n;
        }
        Ok(())
    });
    std::thread::sleep(stall);
    let data = pattern(3, 1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < len {
        let n = s.read(&mut buf).map_err(|e| format!("read after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("the connection ended after {got} of {len} bytes"));
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            if b != data[(got + i) % data.len()] {
                return Err(format!("byte {} differs", got + i));
            }
        }
        got += n;
    }
    writer.join().map_err(|_| "the writer panicked".to_string())??;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: netload ADDR:PORT (conns N BYTES | rr N SECONDS | reset | idle BYTES | bulk BYTES MS | garbage IFACE N | first-byte http|redis [--tap NAME] -- PROGRAM ARGS...)\n       netload reap -- PROGRAM ARGS..."
        );
        std::process::exit(2)
    };
    if args.get(1).map(String::as_str) == Some("reap") {
        if args.get(2).map(String::as_str) != Some("--") || args.len() < 4 {
            usage();
        }
        return reap(&args[3..]);
    }
    let Some(addr) = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()) else { usage() };
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| usage());
    match args.get(2).map(String::as_str) {
        Some("first-byte") => {
            let proto = args.get(3).map(String::as_str).unwrap_or_else(|| usage());
            // `--tap NAME`: start only once that TAP device is free (a VM
            // just ended leaves its last close of it to the kernel, some
            // milliseconds later, and a monitor started before then waits).
            let (tap, rest) = match args.get(4).map(String::as_str) {
                Some("--tap") => (args.get(5).cloned().or_else(|| usage()), 6),
                _ => (None, 4),
            };
            if args.get(rest).map(String::as_str) != Some("--") || args.len() < rest + 2 {
                usage();
            }
            if let Some(tap) = tap
                && !xtask::netns::wait_for_tap(&tap, Duration::from_secs(1))
            {
                eprintln!("netload: first-byte: TAP device '{tap}' not attachable (busy for 1 s, or absent)");
            }
            first_byte(addr, proto, &args[rest + 1..]);
        }
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
                        // A guest that stops answering fails the load, not
                        // hangs it (the bench waits for this process).
                        s.set_read_timeout(Some(STALL)).ok();
                        s.set_write_timeout(Some(STALL)).ok();
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
            // As for `rr`: a silent guest ends the stream short (an error).
            s.set_read_timeout(Some(STALL)).ok();
            s.set_write_timeout(Some(STALL)).ok();
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
            // Mid-stream: once the app has taken the connection and echoes.
            // Reset before the app takes it, a connection is closed by the
            // network unit and never reaches the app (which then counts one
            // connection fewer: the test waited for ever, now and then).
            let _ = s2.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s2.read(&mut [0u8; 64]);
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
        Some("bulk") => {
            let (len, stall) = (num(3), num(4) as u64);
            let t = Instant::now();
            match bulk(addr, len, Duration::from_millis(stall)) {
                Ok(()) => println!(
                    "netload: bulk: {len} bytes each way, byte for byte, in {} ms",
                    t.elapsed().as_millis()
                ),
                Err(e) => {
                    eprintln!("netload: bulk: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("idle") => {
            let len = num(3);
            let mut s = connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            s.set_write_timeout(Some(Duration::from_secs(2))).ok();
            let sent = s.write(&pattern(0, len)).unwrap_or(0);
            // Held until the caller closes our stdin (so that a test can
            // check the others were served meanwhile, however slow the
            // machine), 60 s at most.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(60));
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

/// Cold start to first response: spawn `argv` (its launch clock in
/// `TORITO_LAUNCH_NS`), try to connect every 100 µs (each try a new SYN: a
/// SYN lost before the guest listens would otherwise wait a second for its
/// retransmission), send one request and time the first byte of a good
/// answer (`HTTP/1.1 200`, or `+PONG`). Then wait for the program to end
/// by itself (the app was told to stop after one request), killing it 15 s
/// after its start. Prints `first-byte: US µs, reaped: US µs, tries: N,
/// pid: PID, orphans: N (NAME reaped at US µs with status S, ...)` (`reaped: -`
/// when it had to be killed; orphans are what the program's processes left
/// to us, their subreaper, such as a monitor's keeper); the program's output
/// (its console, a timeline) passes through.
fn first_byte(addr: SocketAddr, proto: &str, argv: &[String]) {
    let (request, good): (&[u8], &[u8]) = match proto {
        "http" => (b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n", b"HTTP/1.1 200"),
        "redis" => (b"*1\r\n$4\r\nPING\r\n", b"+PONG"),
        other => {
            eprintln!("netload: first-byte: unknown protocol '{other}' (http or redis)");
            std::process::exit(2);
        }
    };
    // Orphans of the program (a monitor's keeper process, which frees its
    // memory after the monitor exited) come to us, not to PID 1 (in a
    // container whose PID 1 never reaps, they would stay zombies).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // The watchdog is made before the program: a thread made as it ended
    // took the CPU the monitor's last steps ran on (traced: 64 µs).
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (arm, armed) = std::sync::mpsc::channel::<libc::pid_t>();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let dog = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            let Ok(pid) = armed.recv() else { return };
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watch.recv_timeout(Duration::from_secs(15))
            {
                killed.store(true, std::sync::atomic::Ordering::SeqCst);
                // SAFETY: kill(2) with the pid of our child, which is not
                // reaped before this thread is joined.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let t0 = mono_ns();
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("TORITO_LAUNCH_NS", t0.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("netload: cannot start {}: {e}", argv[0]);
            std::process::exit(1)
        });
    let mut tries = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dialer = Dialer::new(addr);
    let first = loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("netload: first-byte: no answer within 10 s ({tries} tries)");
            std::process::exit(1);
        }
        tries += 1;
        let started = Instant::now();
        let Some(mut s) = dialer.try_once(Duration::from_micros(100)) else {
            // A refusal ends the wait early: the next try still waits its turn.
            if let Some(rest) = Duration::from_micros(100).checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
            continue;
        };
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut head = vec![0u8; good.len()];
        if s.write_all(request).is_err() || s.read_exact(&mut head[..1]).is_err() {
            continue;
        }
        let at = mono_ns();
        if s.read_exact(&mut head[1..]).is_ok() && head == good {
            break at;
        }
        eprintln!("netload: first-byte: unexpected answer {:?}", String::from_utf8_lossy(&head));
        let _ = child.kill();
        let _ = child.wait();
        std::process::exit(1);
    };
    // A blocking wait, so that "reaped" is when the kernel says so (a
    // polling loop read it ~50-130 µs late); the watchdog kills the program
    // if it has not ended 15 s after its start.
    let pid = child.id();
    let _ = arm.send(pid as libc::pid_t);
    let _ = child.wait();
    let at = mono_ns();
    let _ = done.send(());
    let _ = dog.join();
    let reaped = (!killed.load(std::sync::atomic::Ordering::SeqCst)).then_some(at);
    let orphans = reap_orphans(t0);
    let us = |t: u64| format!("{:.1}", (t - t0) as f64 / 1000.0);
    println!(
        "first-byte: {} µs, reaped: {} µs, tries: {tries}, pid: {pid}, orphans: {}",
        us(first),
        reaped.map_or_else(|| "-".to_string(), us),
        orphans_text(&orphans)
    );
}

/// Run `argv` as its subreaper, its output passing through, then reap
/// what it left: prints `reap: status S, orphans: N (NAME reaped at US µs
/// with status S, ...)`, times after the program's end (`status` is
/// `signal N` for a program killed by a signal).
fn reap(argv: &[String]) {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let status = std::process::Command::new(&argv[0]).args(&argv[1..]).status().unwrap_or_else(|e| {
        eprintln!("netload: cannot start {}: {e}", argv[0]);
        std::process::exit(1)
    });
    let orphans = reap_orphans(mono_ns());
    let status = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("signal {s}"),
        _ => "?".into(),
    };
    println!("reap: status {status}, orphans: {}", orphans_text(&orphans));
}

/// `N (NAME reaped at US µs with status S, ...)`: what [`reap_orphans`]
/// found.
fn orphans_text(orphans: &[(String, f64, i32)]) -> String {
    let each: Vec<String> =
        orphans.iter().map(|(n, t, code)| format!("{n} reaped at {t:.1} µs with status {code}")).collect();
    if each.is_empty() { "0".into() } else { format!("{} ({})", each.len(), each.join(", ")) }
}

/// Wait for every child left, the orphans the program's processes left to
/// us as their subreaper (a monitor's keeper): `(name, µs after t0 it was
/// reaped, exit status)` each, in the order they ended. One still running
/// 5 s after the program ended is an error (exit 1).
fn reap_orphans(t0: u64) -> Vec<(String, f64, i32)> {
    extern "C" fn wake(_: libc::c_int) {}
    // SIGALRM interrupts the blocking wait (no SA_RESTART): a wait that
    // polled would read the times late, and take CPU from the keeper it
    // waits for.
    // SAFETY: a handler that does nothing; sigaction with a local.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        libc::alarm(5);
    }
    let mut orphans = Vec::new();
    loop {
        // SAFETY: an all-zero siginfo_t is valid for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // Its name first (a zombie's is still there), then reap it.
        // SAFETY: waitid and waitpid with pointers to locals.
        if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                eprintln!("netload: a process the program left is still running after 5 s");
                std::process::exit(1);
            }
            break;
        }
        // SAFETY: filled in by a successful waitid for a child.
        let pid = unsafe { info.si_pid() };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let mut status = 0;
        // SAFETY: as above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let code =
            if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
        orphans.push((name.trim().to_string(), (mono_ns() - t0) as f64 / 1000.0, code));
    }
    // SAFETY: cancels the alarm set above.
    unsafe { libc::alarm(0) };
    orphans
}

/// Connection attempts every 100 µs, several in flight: each try starts a
/// non-blocking connect (a new SYN) and waits up to the pause for any of
/// the attempts to finish. `std`'s `connect_timeout` cannot do this (its
/// wait is rounded up to a millisecond, and it waits for one SYN only).
struct Dialer {
    addr: libc::sockaddr_in,
    pending: Vec<i32>,
}

impl Dialer {
    /// Attempts kept in flight; older ones are dropped.
    const IN_FLIGHT: usize = 32;

    fn new(addr: SocketAddr) -> Self {
        let SocketAddr::V4(v4) = addr else {
            eprintln!("netload: first-byte needs an IPv4 address");
            std::process::exit(2);
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        Dialer { addr: sin, pending: Vec::new() }
    }

    /// Start one attempt, then wait up to `pause` for any attempt to
    /// connect: the connection, as a blocking stream.
    #[allow(unsafe_code)]
    fn try_once(&mut self, pause: Duration) -> Option<TcpStream> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on descriptors this struct owns; the
        // address is a valid sockaddr_in of the size given.
        unsafe {
            let fd =
                libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
            if fd >= 0 {
                let sa = (&raw const self.addr).cast::<libc::sockaddr>();
                libc::connect(fd, sa, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t);
                self.pending.push(fd);
            }
            while self.pending.len() > Self::IN_FLIGHT {
                libc::close(self.pending.remove(0));
            }
            let mut fds: Vec<libc::pollfd> = self
                .pending
                .iter()
                .map(|&fd| libc::pollfd { fd, events: libc::POLLOUT, revents: 0 })
                .collect();
            let ts = libc::timespec { tv_sec: 0, tv_nsec: pause.as_nanos() as libc::c_long };
            libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null());
            let mut won = None;
            for p in fds.iter().filter(|p| p.revents != 0) {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                libc::getsockopt(p.fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len);
                self.pending.retain(|&f| f != p.fd);
                if err == 0 && won.is_none() {
                    won = Some(p.fd);
                } else {
                    libc::close(p.fd);
                }
            }
            let fd = won?;
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            Some(TcpStream::from_raw_fd(fd))
        }
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        for &fd in &self.pending {
            // SAFETY: descriptors this struct opened and still owns.
            #[allow(unsafe_code)]
            unsafe {
                libc::close(fd)
            };
        }
    }
}
