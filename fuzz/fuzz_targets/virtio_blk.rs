//! Fuzz target: `torito_vmm::fuzzing::device` with `Kind::Blk`.
#![no_main]

use torito_vmm::fuzzing::{Kind, device};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    device(Kind::Blk, data);
});
