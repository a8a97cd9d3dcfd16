//! Writes through a null pointer: checks that a page fault is reported with
//! vector, error code, RIP and CR2.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    let p = core::hint::black_box(0x8usize) as *mut u64;
    #[allow(unsafe_code)]
    // SAFETY: none; the write faults on purpose (page 0 is never mapped).
    unsafe {
        p.write_volatile(1)
    };
    0
}
