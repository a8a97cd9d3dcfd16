//! For the gdb tests (`torito --gdb`): a function to stop in whose
//! argument gdb changes, and a counter to watch; the app prints what it
//! got and exits 0 only if gdb made the answer 42.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU32, Ordering};

kernel::entry!(main);

/// Calls of `report` (a variable for `watch`).
static CALLS: AtomicU32 = AtomicU32::new(0);

fn main() -> i32 {
    let answer = core::hint::black_box(41u32);
    report(answer)
}

/// gdb stops here and sets `answer` to 42.
#[inline(never)]
fn report(answer: u32) -> i32 {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    kernel::println!("answer={answer} calls={calls}");
    if answer == 42 { 0 } else { 7 }
}
