//! blkcheck: the block device test appliance.
//!
//! The test fills the disk image with [`pattern_in`]; blkcheck reads the
//! first 64 KiB and checks it, writes [`pattern_out`] over the next 64 KiB,
//! flushes, reads it back, and exits 0 when all went well. With the word
//! `ro` it expects the disk to be read-only: the write must fail with
//! `ReadOnly`. The test then checks the image byte for byte on the host.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use alloc::vec;

use kernel::devices::{BlockError, block_devices};
use kernel::println;

kernel::entry!(main);

/// Bytes checked and bytes written.
const SPAN: usize = 64 * 1024;

/// The byte the test writes at offset `o` of the image.
fn pattern_in(o: usize) -> u8 {
    ((o / 512) as u8).wrapping_mul(31) ^ (o as u8)
}

/// The byte blkcheck writes at offset `o` (from `SPAN` on).
fn pattern_out(o: usize) -> u8 {
    ((o * 13) >> 3) as u8 ^ 0x5a
}

fn main() -> i32 {
    let readonly = kernel::args().any(|a| a == "ro");
    for line in kernel::devices::report_lines() {
        println!("blkcheck: {line}");
    }
    let mut disks = block_devices();
    println!("blkcheck: {} block device(s)", disks.len());
    let Some(disk) = disks.first_mut() else {
        println!("blkcheck: FAILED: no block device");
        return 1;
    };
    let bs = disk.block_size();
    println!("blkcheck: {} blocks of {bs} bytes", disk.num_blocks());
    if disk.num_blocks() * (bs as u64) < 2 * SPAN as u64 {
        println!("blkcheck: FAILED: the disk is smaller than {} bytes", 2 * SPAN);
        return 1;
    }
    let mut buf = vec![0u8; SPAN];
    if let Err(e) = disk.read_blocks(0, &mut buf) {
        println!("blkcheck: FAILED: read: {e}");
        return 1;
    }
    if let Some(o) = (0..SPAN).find(|&o| buf[o] != pattern_in(o)) {
        println!("blkcheck: FAILED: byte {o} is {:#x}, expected {:#x}", buf[o], pattern_in(o));
        return 1;
    }
    println!("blkcheck: read {SPAN} bytes, pattern ok");
    // Out of range and unaligned requests are refused, not sent.
    let end = disk.num_blocks();
    let refused = disk.read_blocks(end, &mut buf[..bs]) == Err(BlockError::OutOfRange)
        && disk.read_blocks(0, &mut buf[..bs - 1]) == Err(BlockError::Unaligned);
    println!("blkcheck: bad requests refused: {refused}");
    let out: alloc::vec::Vec<u8> = (SPAN..2 * SPAN).map(pattern_out).collect();
    let lba = (SPAN / bs) as u64;
    match disk.write_blocks(lba, &out) {
        Err(BlockError::ReadOnly) if readonly => {
            println!("blkcheck: write refused: {}", BlockError::ReadOnly);
            return if refused { 0 } else { 1 };
        }
        Err(e) => {
            println!("blkcheck: FAILED: write: {e}");
            return 1;
        }
        Ok(()) if readonly => {
            println!("blkcheck: FAILED: a read-only disk took a write");
            return 1;
        }
        Ok(()) => {}
    }
    if let Err(e) = disk.flush() {
        println!("blkcheck: FAILED: flush: {e}");
        return 1;
    }
    let mut back = vec![0u8; SPAN];
    if disk.read_blocks(lba, &mut back).is_err() || back != out {
        println!("blkcheck: FAILED: read back differs");
        return 1;
    }
    println!("blkcheck: wrote {SPAN} bytes at {SPAN}, flushed, read back");
    println!("blkcheck: {}", if refused { "ok" } else { "FAILED" });
    if refused { 0 } else { 1 }
}
