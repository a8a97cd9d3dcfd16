//! Console output: `print!` and `println!`.
//!
//! On the Torito monitor a formatted message is gathered in a buffer on the
//! stack and handed over in one MMIO write (one VM exit per message, not per
//! byte). Elsewhere it goes to COM1 (port 0x3f8) with one `rep outsb`
//! through the CPL0 gate; QEMU's and Firecracker's 16550 accept bytes
//! without waiting for the transmitter.

use core::fmt::{self, Write};

const BUFFER: usize = 512;

/// Write raw bytes to the console now.
pub fn write_bytes(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    #[cfg(target_os = "none")]
    write_guest(bytes);
    #[cfg(not(target_os = "none"))]
    crate::host::write_bytes(bytes);
}

#[cfg(target_os = "none")]
fn write_guest(bytes: &[u8]) {
    use crate::arch::{gate, torito};
    use torito_abi::boot_info::BootProtocol;
    const COM1: u16 = 0x3f8;
    /// Serialises serial-port writes of different cores (a monitor console
    /// write is one exit, whole already).
    static SERIAL: spin::Mutex<()> = spin::Mutex::new(());
    match crate::boot::protocol() {
        BootProtocol::Direct => torito::console_write(bytes),
        BootProtocol::Multiboot | BootProtocol::Pvh => {
            let _g = SERIAL.lock();
            gate::outsb(COM1, bytes)
        }
    }
}

/// A stack buffer that flushes to the console when full and when dropped.
struct Buffered {
    buf: [u8; BUFFER],
    len: usize,
}

impl Buffered {
    fn flush(&mut self) {
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for Buffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == BUFFER {
                self.flush();
            }
            let n = bytes.len().min(BUFFER - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut out = Buffered { buf: [0; BUFFER], len: 0 };
    // Writing to the buffer cannot fail.
    let _ = out.write_fmt(args);
}

/// Print to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Print to the console, with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
