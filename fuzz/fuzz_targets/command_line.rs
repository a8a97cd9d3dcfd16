//! Fuzz target: `torito_vmm::fuzzing::command_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torito_vmm::fuzzing::command_line(data));
