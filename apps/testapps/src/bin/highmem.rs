//! Writes and reads back a word in every 64 MiB of RAM, from the first
//! line of `main`: checks the memory map, the page tables above 4 GiB, and
//! the monitor's handling of RAM that is still being registered with KVM
//! when the guest touches it.
#![no_std]
#![no_main]
#![allow(unsafe_code)]

kernel::entry!(main);

const STEP: u64 = 64 << 20;

fn main() -> i32 {
    let regions: [(u64, u64); 32] = core::array::from_fn(|i| {
        kernel::boot_info().regions().get(i).filter(|r| r.is_usable()).map_or((0, 0), |r| (r.base, r.len))
    });
    let (mut checked, mut bad) = (0u64, 0u64);
    for (base, len) in regions {
        let mut addr = base.div_ceil(STEP) * STEP;
        while len > 0 && addr + 8 <= base + len {
            // Skip what the kernel owns (image and heap start low in RAM).
            if addr >= 0x1000_0000 {
                let p = addr as *mut u64;
                // SAFETY: `addr` is usable RAM from the boot map, above the
                // kernel image and heap start, identity-mapped; the frame
                // allocator hands out its top only after this runs.
                let v = unsafe {
                    p.write_volatile(addr ^ 0x5a5a);
                    p.read_volatile()
                };
                checked += 1;
                bad += u64::from(v != addr ^ 0x5a5a);
            }
            addr += STEP;
        }
    }
    kernel::println!("highmem: {checked} words checked, {bad} bad");
    if bad == 0 && checked > 0 { 0 } else { 1 }
}
