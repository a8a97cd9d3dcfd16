//! The Torito register page (`torito_abi::mmio`): the direct-entry
//! guest's way to the monitor. One exit carries a whole console buffer,
//! the exit code, a trace mark, a request for more cores or a test
//! interrupt. Reads return 0.

use std::io::Write;

use torito_abi::mmio;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Action;

/// The register page's devices: the console and the host's trace marks.
pub struct RegisterPage {
    console: Box<dyn Write + Send>,
    /// Trace marks the guest sent: `(id, host ns)`.
    pub host_marks: Vec<(u32, u64)>,
}

impl RegisterPage {
    /// A page whose console writes go to `console`.
    pub fn new(console: Box<dyn Write + Send>) -> Self {
        Self { console, host_marks: Vec::new() }
    }

    /// A guest store of `value` at `offset`; `None` for an offset that is
    /// not a register (or a console buffer outside RAM).
    pub fn write(&mut self, mem: &GuestMemoryMmap, offset: u64, value: u64) -> Option<Action> {
        Some(match offset {
            mmio::CONSOLE_WRITE => {
                let (gpa, len) = mmio::console_decode(value);
                let mut buf = vec![0u8; len];
                mem.read_slice(&mut buf, GuestAddress(gpa)).ok()?;
                let _ = self.console.write_all(&buf);
                let _ = self.console.flush();
                Action::Continue
            }
            mmio::EXIT => Action::Exit(value as u32 as i32),
            mmio::START_CORES => Action::StartCores(value.min(u64::from(u32::MAX)) as u32),
            mmio::TEST_INTERRUPT => {
                let (vector, apic, delay) = mmio::test_interrupt_decode(value);
                Action::TestInterrupt(vector, apic, delay.min(1_000_000))
            }
            mmio::TRACE => {
                self.host_marks.push((value as u32, crate::vstate::sys::now_ns()));
                Action::Continue
            }
            _ => return None,
        })
    }
}
