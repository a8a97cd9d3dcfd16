//! netload: a TCP client for the networking tests and the bench.
//!
//! ```text
//! netload ADDR:PORT conns N BYTES   # N connections at once, each echoes BYTES
//! netload ADDR:PORT rr N SECONDS    # N connections doing 64-byte request/response
//! netload ADDR:PORT stream SECONDS  # one connection, send and read back at once: MB/s
//! netload ADDR:PORT reset           # connect, send, reset (RST) without reading
//! netload ADDR:PORT idle BYTES      # connect, send BYTES, never read; hold 2 s
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
        eprintln!("usage: netload ADDR:PORT (conns N BYTES | rr N SECONDS | reset | idle BYTES)");
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
        _ => usage(),
    }
}
