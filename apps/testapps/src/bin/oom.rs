//! Allocates until the heap is exhausted: checks that out-of-memory is a
//! clear panic, not a hang.
#![no_std]
#![no_main]
extern crate alloc;

use alloc::vec::Vec;

kernel::entry!(main);

fn main() -> i32 {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(Vec::with_capacity(16 * 1024 * 1024));
    }
}
