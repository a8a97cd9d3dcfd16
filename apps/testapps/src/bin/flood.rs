//! A hostile guest's console: prints N MiB (its argument, 256 by default)
//! in 60 KiB lines as fast as it can, then exits 0. The monitor must
//! stream it, not keep it.
#![no_std]
#![no_main]
extern crate alloc;

use alloc::string::String;

kernel::entry!(main);

fn main() -> i32 {
    let mib: usize = kernel::args().next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let mut line = String::with_capacity(60 * 1024);
    for i in 0..60 * 1024 - 1 {
        line.push((b'a' + (i % 26) as u8) as char);
    }
    line.push('\n');
    for _ in 0..mib * 1024 * 1024 / line.len() {
        kernel::print!("{line}");
    }
    0
}
