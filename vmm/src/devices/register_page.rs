//! The Torito register page (`torito_abi::mmio`): the direct-entry
//! guest's way to the monitor. One exit carries a whole console buffer,
//! the exit code, a trace mark, a request for more cores or a test
//! interrupt. Reads return 0.

use std::io::Write;

use torito_abi::mmio;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Action;
use crate::symbolize::Symbolizer;

/// The register page's devices: the console, the host's trace marks and
/// the backtrace symbolizer.
pub struct RegisterPage {
    console: Box<dyn Write + Send>,
    /// Trace marks the guest sent: `(id, host ns)`.
    pub host_marks: Vec<(u32, u64)>,
    /// The app's ELF, read at the first backtrace.
    symbolizer: Option<Symbolizer>,
    /// Backtraces printed (a guest may not make the monitor print for
    /// ever: one per vCPU and a few more).
    backtraces: u32,
}

impl RegisterPage {
    /// A page whose console writes go to `console`.
    pub fn new(console: Box<dyn Write + Send>) -> Self {
        Self { console, host_marks: Vec::new(), symbolizer: None, backtraces: 0 }
    }

    /// Symbolize backtraces with the ELF at `elf`.
    pub fn symbolize_with(&mut self, elf: &std::path::Path) {
        self.symbolizer = Some(Symbolizer::new(elf));
    }

    /// A [`mmio::BACKTRACE`]: the addresses, from guest memory, printed
    /// with their functions and lines (raw without a symbolizer).
    fn backtrace(&mut self, mem: &GuestMemoryMmap, value: u64) -> Option<()> {
        let (gpa, count, exact) = mmio::backtrace_decode(value);
        self.backtraces += 1;
        if self.backtraces > 32 {
            return Some(());
        }
        let count = count.min(mmio::BACKTRACE_MAX);
        let mut raw = vec![0u8; count * 8];
        mem.read_slice(&mut raw, GuestAddress(gpa)).ok()?;
        let addrs: Vec<u64> =
            raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        let lines = match &mut self.symbolizer {
            Some(s) => s.backtrace(&addrs, exact),
            None => addrs.iter().enumerate().map(|(i, a)| format!("#{i:<2} {a:#018x}")).collect(),
        };
        let mut text = String::new();
        for l in lines {
            text.push_str("[torito]   ");
            text.push_str(&l);
            text.push('\n');
        }
        let _ = self.console.write_all(text.as_bytes());
        let _ = self.console.flush();
        Some(())
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
            mmio::BACKTRACE => {
                self.backtrace(mem, value)?;
                Action::Continue
            }
            mmio::DEBUG_TRAP => Action::DebugTrap(value),
            mmio::TRACE => {
                self.host_marks.push((value as u32, crate::vstate::sys::now_ns()));
                Action::Continue
            }
            _ => return None,
        })
    }
}
