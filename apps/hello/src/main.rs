//! hello: the smallest Torito appliance.
//!
//! Prints a greeting, the boot protocol and the command line, and exits 0.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

kernel::entry!(main);

fn main() -> i32 {
    kernel::println!("Hello from Torito! (booted via {})", kernel::boot_protocol().name());
    let cmdline = kernel::cmdline();
    if !cmdline.is_empty() {
        kernel::println!("command line: {cmdline}");
    }
    0
}
