//! Returns 42 from `main`: checks that exit codes reach the host.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    kernel::println!("exit42: returning 42");
    42
}
