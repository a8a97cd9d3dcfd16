//! Fuzz target: `torito_vmm::fuzzing::device` with `Kind::Net`.
#![no_main]

use torito_vmm::fuzzing::{Kind, device};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    device(Kind::Net, data);
});
