//! Wipes the IDT and raises an exception: the CPU cannot deliver it, nor
//! the double fault that follows, and shuts down (triple fault). Checks that
//! the monitor reports it clearly.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    kernel::println!("triplefault: clearing the IDT");
    #[allow(unsafe_code)]
    // SAFETY: none; breaking the IDT is the point of this program.
    unsafe {
        core::ptr::write_bytes(kernel::arch::idt_base() as *mut u8, 0, 4096);
        core::arch::asm!("int3");
    }
    0
}
