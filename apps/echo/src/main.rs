//! echo: a TCP echo server. Every byte a client sends comes back.
//!
//! Command line: `torito.ip=ADDR/PREFIX` (the interface; without it, the
//! address comes from DHCP), `port=N` (default
//! 7), `conns=N` (exit 0 after N connections have ended; default: serve for
//! ever), `backlog=N` (connections held not yet accepted, default the kernel's 511), `buf=BYTES`
//! (each connection's receive and send buffers, default 16 KiB). Each
//! connection gets a thread of its own. With the word `udp`: a UDP echo
//! of `conns` datagrams on the same port, then one more wait of 200 ms that
//! must time out. With the word `vsock`: the same echo over vsock port
//! `port` (connections from the host through the hypervisor's Unix
//! socket), no IP address needed. With `connect=ADDR:PORT`: a client
//! instead, which connects, sends a greeting, closes its side and prints
//! what comes back; `vconnect=PORT` does the same over vsock to the host's
//! port. With the word `lines`: a line protocol instead of bytes, each
//! line answered `N: line` (`kernel::io::BufReader` over the stream and
//! `write!` into it), `random` answered with a random number, and the
//! peer's address logged at `debug` level (`torito.log=debug`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use kernel::net::tcp::{TcpListener, TcpStream};
use kernel::println;
use kernel::process;

kernel::entry!(main);

fn arg(name: &str) -> Option<u64> {
    kernel::args().find_map(|a| a.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// `lines`: answer each line with its number, or a random number for
/// `random`; the bytes read.
fn serve_lines(s: TcpStream) -> u64 {
    use kernel::io::{BufReader, Write};
    if let Ok(peer) = s.peer_addr() {
        kernel::log::debug!("connection from {peer}");
    }
    let mut conn = BufReader::new(s);
    let (mut n, mut total) = (0u64, 0u64);
    let mut line = alloc::string::String::new();
    loop {
        line.clear();
        match conn.read_line(&mut line) {
            Ok(0) => break,
            Ok(len) => total += len as u64,
            Err(e) => {
                kernel::log::warn!("reading a line: {e}");
                break;
            }
        }
        n += 1;
        let text = line.trim_end_matches(['\r', '\n']);
        let sent = if text == "random" {
            writeln!(conn.get_mut(), "{n}: {:016x}", kernel::random::u64())
        } else {
            writeln!(conn.get_mut(), "{n}: {text}")
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = conn.get_mut().shutdown();
    total
}

fn serve(mut s: TcpStream) -> u64 {
    // As large as a segment the NIC may cut (64 KiB with TSO): each read
    // and write moves what the socket holds, not 4 KiB of it.
    let mut buf = alloc::vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
                total += n as u64;
            }
        }
    }
    let _ = s.shutdown();
    total
}

fn main() -> i32 {
    for line in kernel::devices::report_lines() {
        println!("echo: {line}");
    }
    if let Some(target) = kernel::args().find_map(|a| a.strip_prefix("connect=")) {
        return client(target);
    }
    if let Some(port) = arg("vconnect") {
        return vsock_client(port as u32);
    }
    if kernel::args().any(|a| a == "vsock") {
        return vsock(arg("port").unwrap_or(7) as u32, arg("conns"));
    }
    if !kernel::args().any(|a| a.starts_with("torito.ip=")) {
        match kernel::net::wait_for_address(core::time::Duration::from_secs(10)) {
            Ok(a) => {
                let [x, y, z, w] = a.ip;
                println!("echo: address {x}.{y}.{z}.{w}/{} from DHCP", a.prefix);
            }
            Err(e) => {
                println!("echo: no address from DHCP: {e}");
                return 1;
            }
        }
    }
    let port = arg("port").unwrap_or(7) as u16;
    let conns = arg("conns");
    let lines = kernel::args().any(|a| a == "lines");
    if kernel::args().any(|a| a == "udp") {
        return udp(port, conns.unwrap_or(1));
    }
    if let Some(b) = arg("buf") {
        kernel::net::tcp::set_buffer_size(b as usize);
    }
    let backlog = arg("backlog").unwrap_or(kernel::net::tcp::BACKLOG as u64) as usize;
    let mut listener = match TcpListener::bind_with_backlog(port, backlog) {
        Ok(l) => l,
        Err(e) => {
            println!("echo: cannot listen on port {port}: {e}");
            return 1;
        }
    };
    println!("echo: listening on port {port}");
    if lines {
        let how = if kernel::random::seeded_securely() { "the host or the CPU" } else { "the TSC only" };
        println!("echo: a line protocol; random numbers seeded from {how}");
    }
    match serve_all(|| listener.accept(), if lines { serve_lines } else { serve }, conns) {
        Some((accepted, total)) => {
            println!("echo: {accepted} connection(s), {total} bytes echoed");
            0
        }
        None => 1,
    }
}

/// Accept connections (all of them, or `conns`), serve each on a thread
/// of its own, wait for them; `(connections, bytes echoed)`, or `None`
/// when accepting failed.
fn serve_all<S: Send + 'static>(
    mut accept: impl FnMut() -> Result<S, kernel::net::Error>,
    serve: fn(S) -> u64,
    conns: Option<u64>,
) -> Option<(u64, u64)> {
    let mut handles = alloc::vec::Vec::new();
    let mut accepted = 0u64;
    while conns.is_none_or(|c| accepted < c) {
        match accept() {
            Ok(s) => {
                accepted += 1;
                handles.push(process::spawn(move || serve(s)));
            }
            Err(e) => {
                println!("echo: accept: {e}");
                return None;
            }
        }
    }
    println!("echo: {accepted} connection(s) accepted");
    Some((accepted, handles.into_iter().map(|h| h.join()).sum()))
}

fn udp(port: u16, datagrams: u64) -> i32 {
    use kernel::net::udp::UdpSocket;
    let mut sock = match UdpSocket::bind(port) {
        Ok(s) => s,
        Err(e) => {
            println!("echo: cannot bind UDP port {port}: {e}");
            return 1;
        }
    };
    println!("echo: UDP on port {port}");
    let mut buf = [0u8; 2048];
    for _ in 0..datagrams {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Err(e) = sock.send_to(&buf[..n], from) {
                    println!("echo: send_to: {e}");
                    return 1;
                }
            }
            Err(e) => {
                println!("echo: recv_from: {e}");
                return 1;
            }
        }
    }
    sock.set_read_timeout(Some(core::time::Duration::from_millis(200)));
    let t0 = process::clock::ticks();
    let r = sock.recv_from(&mut buf);
    let ms = process::clock::tsc_khz().map_or(0, |k| (process::clock::ticks() - t0) / k);
    match r {
        Err(kernel::net::Error::TimedOut) => {
            println!("echo: {datagrams} datagram(s) echoed; then timed out after {ms} ms");
            0
        }
        other => {
            println!("echo: expected a time-out, got {:?}", other.map(|(n, _)| n));
            1
        }
    }
}

fn vsock(port: u32, conns: Option<u64>) -> i32 {
    use kernel::net::vsock::{VsockListener, VsockStream};
    let mut listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            println!("echo: cannot listen on vsock port {port}: {e}");
            return 1;
        }
    };
    println!("echo: listening on vsock port {port}");
    fn serve(mut s: VsockStream) -> u64 {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
            total += n as u64;
        }
        let _ = s.shutdown();
        total
    }
    match serve_all(|| listener.accept(), serve, conns) {
        Some((accepted, total)) => {
            println!("echo: {accepted} vsock connection(s), {total} bytes echoed");
            0
        }
        None => 1,
    }
}

/// `connect=ADDR:PORT`: say hello to a server and print its answer.
fn client(target: &str) -> i32 {
    // Any `ToSocketAddr`: "10.0.2.1:7" as given, a `SocketAddrV4`, …
    let mut s = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(kernel::net::Error::InvalidInput) => {
            println!("echo: bad connect={target} (use ADDR:PORT)");
            return 2;
        }
        Err(e) => {
            println!("echo: connect to {target}: {e}");
            return 1;
        }
    };
    if let (Ok(me), Ok(peer)) = (s.local_addr(), s.peer_addr()) {
        println!("echo: {me} → {peer}");
    }
    if s.write_all(b"hello from the appliance\n").is_err() || s.shutdown().is_err() {
        println!("echo: sending failed");
        return 1;
    }
    let mut answer = alloc::vec::Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    println!("echo: connected to {target}, sent a greeting, got {} bytes back", answer.len());
    0
}

/// `vconnect=PORT`: say hello to the host's vsock port and print its answer.
fn vsock_client(port: u32) -> i32 {
    use kernel::net::vsock::VsockStream;
    let mut s = match VsockStream::connect(port) {
        Ok(s) => s,
        Err(e) => {
            println!("echo: vsock connect to host port {port}: {e}");
            return 1;
        }
    };
    if s.write_all(b"hello over vsock\n").is_err() {
        println!("echo: sending failed");
        return 1;
    }
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    println!("echo: vsock host port {port} answered {n} bytes");
    0
}
