//! Exit codes: what the guest reports and how each host carries it.

/// Exit code the kernel uses when the app panics.
pub const PANIC: i32 = 101;
/// Exit code base for CPU exceptions: the code is `EXCEPTION_BASE + vector`.
pub const EXCEPTION_BASE: i32 = 128;
/// Exit code when the kernel cannot continue booting (bad boot information).
pub const BOOT_FAILURE: i32 = 100;

/// QEMU's `isa-debug-exit` device: port, and how QEMU turns a written value
/// into its own exit status (`(value << 1) | 1`).
pub mod qemu {
    /// I/O port of `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
    pub const DEBUG_EXIT_PORT: u16 = 0xf4;

    /// QEMU's process exit status for a guest that wrote `code`.
    pub const fn status_for(code: i32) -> i32 {
        ((code << 1) | 1) & 0xff
    }

    /// The guest code that produced QEMU exit `status`, if it came from the
    /// debug-exit device (odd statuses only).
    pub const fn code_from_status(status: i32) -> Option<i32> {
        if status & 1 == 1 { Some(status >> 1) } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::qemu::*;

    #[test]
    fn qemu_status_round_trip() {
        for code in [0, 1, 42, 101, 127] {
            assert_eq!(code_from_status(status_for(code)), Some(code));
        }
        assert_eq!(code_from_status(0), None);
    }
}
