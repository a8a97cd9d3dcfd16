//! Panics: checks that the message, the location and a backtrace naming
//! this file's functions are printed, and the exit code is non-zero.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    let answer = kernel::args().count() + 41;
    check_the_answer(core::hint::black_box(answer))
}

/// A function of its own, so that the backtrace has a frame to name.
#[inline(never)]
fn check_the_answer(answer: usize) -> i32 {
    if answer >= 41 {
        panic!("deliberate panic, answer={answer}");
    }
    0
}
