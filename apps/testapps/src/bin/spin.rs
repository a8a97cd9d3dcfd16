//! Loops forever: checks the monitor's `--timeout`.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    kernel::println!("spin: looping forever");
    loop {
        core::hint::spin_loop();
    }
}
