//! Panics: checks that the message and location are printed and the exit
//! code is non-zero.
#![no_std]
#![no_main]
kernel::entry!(main);

fn main() -> i32 {
    let answer = kernel::args().count() + 41;
    panic!("deliberate panic, answer={answer}");
}
