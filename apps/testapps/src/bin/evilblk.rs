//! A guest that misuses the Torito monitor's virtio-blk device on purpose
//! (driving the registers itself, without a driver crate): a queue outside
//! RAM, then chains whose buffers lie outside RAM, wrap the address space,
//! loop, name a descriptor past the table, or write past the disk's end,
//! and last a good read. The monitor must refuse or fail each bad request
//! and still serve the good one. Exits 0 when it did.
#![no_std]
#![no_main]
#![allow(unsafe_code)] // raw MMIO and a hand-made virtqueue are the point
kernel::entry!(main);

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

const DEV: usize = 0xd000_0000;
const QSIZE: u16 = 8;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn reg_write(off: usize, v: u32) {
    // SAFETY: the device's register window (4 KiB at DEV, identity-mapped
    // MMIO); each store is one exit the monitor serves.
    unsafe { write_volatile((DEV + off) as *mut u32, v) }
}

fn reg_read(off: usize) -> u32 {
    // SAFETY: as in `reg_write`.
    unsafe { read_volatile((DEV + off) as *const u32) }
}

/// The queue and buffers, one page each, identity-mapped RAM.
#[repr(C, align(4096))]
struct Area([u8; 3 * 4096]);
static mut AREA: Area = Area([0; 3 * 4096]);

/// AREA's address (only raw pointers to it are ever made).
fn area() -> *mut u8 {
    addr_of_mut!(AREA).cast::<u8>()
}

fn put<T: Copy>(off: usize, v: T) {
    assert!(off + core::mem::size_of::<T>() <= 3 * 4096);
    // SAFETY: inside AREA (checked above); unaligned-safe write.
    unsafe { area().add(off).cast::<T>().write_unaligned(v) }
}

fn get<T: Copy>(off: usize) -> T {
    assert!(off + core::mem::size_of::<T>() <= 3 * 4096);
    // SAFETY: as in `put`; volatile, since the device writes here.
    unsafe { area().add(off).cast::<T>().read_volatile() }
}

const DESC: usize = 0;
const AVAIL: usize = 0x100;
const USED: usize = 0x200;
const HDR: usize = 0x400;
const STATUS: usize = 0x500;
const DATA: usize = 0x1000;

fn desc(i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let o = DESC + 16 * i as usize;
    put(o, addr);
    put(o + 8, len);
    put(o + 12, flags);
    put(o + 14, next);
}

fn header(slot: usize, kind: u32, sector: u64) -> u64 {
    let o = HDR + 16 * slot;
    put(o, kind);
    put(o + 4, 0u32);
    put(o + 8, sector);
    area() as u64 + o as u64
}

fn init_device() -> bool {
    reg_write(0x70, 0); // reset
    reg_write(0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    reg_write(0x24, 1);
    reg_write(0x20, 1); // VIRTIO_F_VERSION_1
    reg_write(0x70, 1 | 2 | 8); // FEATURES_OK
    reg_write(0x30, 0);
    reg_write(0x38, u32::from(QSIZE));
    reg_read(0x70) & 8 != 0
}

fn set_queue(base: u64) {
    reg_write(0x80, (base + DESC as u64) as u32);
    reg_write(0x84, ((base + DESC as u64) >> 32) as u32);
    reg_write(0x90, (base + AVAIL as u64) as u32);
    reg_write(0x94, ((base + AVAIL as u64) >> 32) as u32);
    reg_write(0xa0, (base + USED as u64) as u32);
    reg_write(0xa4, ((base + USED as u64) >> 32) as u32);
    reg_write(0x44, 1);
}

/// The used ring's index once it reaches `n`, or what it is after ~2 s:
/// the monitor serves requests inline at the notification, or (`--disk
/// …,iothread`) a moment later on its I/O thread.
fn wait_used(n: u16) -> u16 {
    for _ in 0..200_000_000u32 {
        let idx: u16 = get(USED + 2);
        if idx == n {
            return idx;
        }
        core::hint::spin_loop();
    }
    get(USED + 2)
}

fn main() -> i32 {
    if reg_read(0) != 0x7472_6976 || reg_read(8) != 2 {
        kernel::println!("evilblk: FAILED: no virtio-blk device at {DEV:#x}");
        return 1;
    }
    // 1. A queue outside guest RAM: refused.
    init_device();
    set_queue(0xfff0_0000);
    let refused = reg_read(0x44) == 0 && reg_read(0x70) & 0x40 != 0;
    kernel::println!("evilblk: queue outside RAM refused: {refused}");

    // 2. Bad chains, then a good read.
    init_device();
    let base = area() as u64;
    set_queue(base);
    let status = |slot: usize| base + (STATUS + slot) as u64;
    let data = base + DATA as u64;
    for s in 0..8 {
        put::<u8>(STATUS + s, 0xee);
    }
    // Chain 0 (descs 0-2): data outside guest RAM.
    desc(0, header(0, 0, 0), 16, F_NEXT, 1);
    desc(1, 0xffff_0000_0000, 512, F_NEXT | F_WRITE, 2);
    desc(2, status(0), 1, F_WRITE, 0);
    // Chain 1 (3-4): a buffer whose end wraps the address space.
    desc(3, header(1, 0, 0), 16, F_NEXT, 4);
    desc(4, u64::MAX - 8, u32::MAX, F_WRITE, 0);
    // Chain 2 (5): a descriptor that is its own successor.
    desc(5, header(2, 0, 0), 16, F_NEXT, 5);
    // Chain 3 (6): a successor beyond the table.
    desc(6, header(3, 0, 0), 16, F_NEXT, 200);
    let avail = |i: u16, head: u16| put(AVAIL + 4 + 2 * i as usize, head);
    avail(0, 0);
    avail(1, 3);
    avail(2, 5);
    avail(3, 6);
    put(AVAIL, 0u16); // flags
    put(AVAIL + 2, 4u16); // idx
    reg_write(0x50, 0);
    let used_after_bad = wait_used(4);
    kernel::println!("evilblk: {used_after_bad} bad chains returned");

    // A write past the end, then a good read of sector 1.
    desc(0, header(4, 1, u64::MAX / 512), 16, F_NEXT, 1);
    desc(1, data, 512, F_NEXT, 2);
    desc(2, status(4), 1, F_WRITE, 0);
    desc(3, header(5, 0, 1), 16, F_NEXT, 4);
    desc(4, data + 512, 512, F_NEXT | F_WRITE, 7);
    desc(7, status(5), 1, F_WRITE, 0);
    avail(4, 0);
    avail(5, 3);
    put(AVAIL + 2, 6u16);
    reg_write(0x50, 0);
    let used = wait_used(6);
    let (past_end, good): (u8, u8) = (get(STATUS + 4), get(STATUS + 5));
    let data_ok = (0..512).all(|i| get::<u8>(DATA + 512 + i) == ((512 + i) as u8) ^ 31);
    kernel::println!(
        "evilblk: write past the end: status {past_end}; good read: status {good}, data {}",
        if data_ok { "ok" } else { "WRONG" }
    );
    let ok = refused && used_after_bad == 4 && used == 6 && past_end == 1 && good == 0 && data_ok;
    kernel::println!("evilblk: {}", if ok { "ok" } else { "FAILED" });
    if ok { 0 } else { 1 }
}
