//! A hostile guest for the monitor's vsock device: it opens connections
//! to host port `port=P` (default 5000) until it has asked for `conns=N`
//! (default 1,500, beyond the monitor's cap of 1,024), writes `kib=K`
//! KiB on each (default 256: all the credit the monitor grants, so no
//! write waits), and keeps every one open, reading nothing, while the
//! host program reads nothing either. The monitor must hold its caps
//! (connections refused beyond them) and stay within its stated memory
//! bound. Prints `vflood: N asked, C connected, R refused` and exits 0.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use kernel::net::vsock::VsockStream;
use kernel::println;

kernel::entry!(main);

fn arg(key: &str) -> Option<usize> {
    kernel::args().find_map(|a| a.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() -> i32 {
    let port = arg("port").unwrap_or(5000) as u32;
    let conns = arg("conns").unwrap_or(1_500);
    let kib = arg("kib").unwrap_or(256);
    let chunk = vec![0x5au8; 1024];
    let (mut held, mut refused, mut failed) = (Vec::new(), 0usize, 0usize);
    for _ in 0..conns {
        match VsockStream::connect(port) {
            Ok(mut s) => {
                if (0..kib).all(|_| s.write_all(&chunk).is_ok()) {
                    held.push(s);
                } else {
                    failed += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    println!("vflood: {conns} asked, {} connected, {refused} refused, {failed} failed writing", held.len());
    0
}
