//! Touches an MMIO address where no device lives: reads must return all
//! ones, writes must be ignored, and the guest must carry on.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    let p = 0xd000_0000usize as *mut u32;
    #[allow(unsafe_code)]
    // SAFETY: the address is in the identity-mapped MMIO window; no RAM is
    // there, so the accesses go to the host.
    let v = unsafe {
        p.write_volatile(0x1234_5678);
        p.read_volatile()
    };
    kernel::println!("mmio: read {v:#x} from an unmapped device address");
    if v == 0xffff_ffff { 0 } else { 1 }
}
