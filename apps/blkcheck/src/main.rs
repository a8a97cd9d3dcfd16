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
    if kernel::args().any(|a| a == "bench") {
        return bench();
    }
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
    match disk.device_id() {
        Ok(id) => println!("blkcheck: device id '{id}'"),
        Err(e) => println!("blkcheck: no device id: {e}"),
    }
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

/// `blkcheck bench [piece=KIB]`: sequential read of the whole first disk
/// in 64 KiB (or KIB) requests, then 2,000 reads of 4 KiB at random aligned offsets; MB/s
/// and IOPS from the TSC.
fn bench() -> i32 {
    // The TSC frequency: from the boot information, CPUID, or measured
    // against the local APIC timer.
    let khz = match kernel::boot_info().tsc_khz {
        0 => kernel::arch::tsc_khz_from_cpuid().or_else(|| kernel::arch::apic::init(0)).unwrap_or(0),
        k => k,
    };
    let mut disks = block_devices();
    let Some(disk) = disks.first_mut() else {
        println!("bench: no block device");
        return 1;
    };
    if khz == 0 {
        println!("bench: the TSC frequency is unknown");
        return 1;
    }
    let ns = |t: u64| t * 1_000_000 / khz;
    let bs = disk.block_size() as u64;
    let total = disk.num_blocks() * bs;
    // `piece=KIB`: the size of each sequential request (default 64 KiB).
    let piece = kernel::args()
        .find_map(|a| a.strip_prefix("piece=")?.parse::<usize>().ok())
        .unwrap_or(64)
        .clamp(4, 4096);
    let mut buf = vec![0u8; piece * 1024];
    let t0 = kernel::arch::rdtsc();
    let mut off = 0;
    while off + buf.len() as u64 <= total {
        if disk.read_blocks(off / bs, &mut buf).is_err() {
            println!("bench: read failed at {off}");
            return 1;
        }
        off += buf.len() as u64;
    }
    let t = ns(kernel::arch::rdtsc() - t0).max(1);
    println!("bench: sequential read {} MiB in {piece} KiB requests: {} MB/s", off >> 20, off * 1000 / t);
    const READS: u64 = 2000;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let pages = total / 4096;
    let t0 = kernel::arch::rdtsc();
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let lba = (x % pages) * 4096 / bs;
        if disk.read_blocks(lba, &mut buf[..4096]).is_err() {
            println!("bench: random read failed at block {lba}");
            return 1;
        }
    }
    let t = ns(kernel::arch::rdtsc() - t0).max(1);
    println!("bench: 4 KiB random reads: {} IOPS ({} us each)", READS * 1_000_000_000 / t, t / READS / 1000);
    0
}
