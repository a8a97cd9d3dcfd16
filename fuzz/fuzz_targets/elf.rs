//! Fuzz target: `torito_vmm::fuzzing::elf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torito_vmm::fuzzing::elf(data));
