//! The guest's devices, as seen from VM exits.
//!
//! - The Torito register page (`torito_abi::mmio`): console writes of a
//!   whole buffer per exit, exit code, trace marks, starting cores, test
//!   interrupts.
//! - COM1 (a 16550 from vm-superio) for guests that use the serial port.
//! - Port 0xf4 (QEMU's `isa-debug-exit`): exit code, for compatibility.
//! - The i8042 reset command (port 0x64, 0xfe).
//!
//! Anything else is a guest touching a device that is not there: the write
//! is ignored, a read returns all ones, and one warning per address goes to
//! stderr (at most [`MAX_WARNINGS`] in all). Nothing a guest does here can
//! fail the monitor.

use std::collections::BTreeSet;
use std::io::Write;

use torito_abi::exit::qemu::DEBUG_EXIT_PORT;
use torito_abi::layout::TORITO_MMIO_BASE;
use torito_abi::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE};
use torito_abi::mmio;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_superio::Trigger;

use crate::virtio_blk::VirtioBlk;
use crate::virtio_mmio::Effect;
use crate::virtio_net::VirtioNet;
use crate::virtio_vsock::VirtioVsock;
use vm_superio::serial::{NoEvents, Serial};

/// Distinct unmapped-access warnings printed before the rest are dropped.
pub const MAX_WARNINGS: usize = 16;

const COM1: u16 = 0x3f8;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

/// What a device asks of the run loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep running.
    Continue,
    /// The guest asked to exit with this code.
    Exit(i32),
    /// The guest asked for a reset.
    Reset,
    /// The guest asked for this many cores to run in all.
    StartCores(u32),
    /// The guest asked for a test MSI: `(vector, APIC ID, delay in µs)`.
    TestInterrupt(u8, u8, u32),
    /// Virtio device `n` (disks, then NICs) raises its interrupt line `n`.
    Interrupt(u32),
}

/// The serial port raises no interrupt: this monitor has no interrupt
/// controller yet, and the kernel polls.
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// All devices of a guest.
pub struct Devices {
    console: Box<dyn Write + Send>,
    serial: Serial<NoInterrupt, NoEvents, Box<dyn Write + Send>>,
    warned: BTreeSet<(bool, u64)>,
    /// Virtio block devices, at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE`.
    pub disks: Vec<VirtioBlk>,
    /// Virtio network devices, in the windows after the disks'.
    pub nets: Vec<VirtioNet>,
    /// The vsock device, in the window after the NICs'.
    pub vsock: Option<VirtioVsock>,
    /// Trace marks the guest sent through the register page: `(id, host ns)`.
    pub host_marks: Vec<(u32, u64)>,
}

fn value_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl Devices {
    /// Devices writing guest output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::with_serial(out, Box::new(std::io::stdout()))
    }

    /// Devices with separate console and serial writers.
    pub fn with_serial(console: Box<dyn Write + Send>, serial: Box<dyn Write + Send>) -> Self {
        Self {
            console,
            serial: Serial::new(NoInterrupt, serial),
            warned: BTreeSet::new(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            host_marks: Vec::new(),
        }
    }

    fn warn(&mut self, mmio: bool, write: bool, addr: u64) {
        if self.warned.len() > MAX_WARNINGS || !self.warned.insert((mmio, addr)) {
            return;
        }
        if self.warned.len() > MAX_WARNINGS {
            eprintln!("torito: warning: more unmapped device accesses; no further warnings");
            return;
        }
        let what = if mmio { "MMIO address" } else { "I/O port" };
        let how = if write { "wrote to" } else { "read from" };
        eprintln!("torito: warning: guest {how} unmapped {what} {addr:#x} (ignored; reads return all ones)");
    }

    /// Virtio devices: disks, NICs, vsock.
    pub fn virtio_count(&self) -> usize {
        self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some())
    }

    /// The virtio device whose window holds `addr` (its index: disks
    /// first, then NICs, then vsock), and the offset in it.
    fn virtio_at(&self, addr: u64) -> Option<(usize, u64)> {
        let rel = addr.checked_sub(VIRTIO_MMIO_BASE)?;
        let i = (rel / VIRTIO_MMIO_STRIDE) as usize;
        (i < self.virtio_count()).then_some((i, rel % VIRTIO_MMIO_STRIDE))
    }

    /// A guest store to MMIO address `addr`.
    pub fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> Action {
        if let Some((i, off)) = self.virtio_at(addr) {
            let (d, n) = (self.disks.len(), self.nets.len());
            let effect = if i < d {
                self.disks[i].write(off, data, mem)
            } else if i < d + n {
                self.nets[i - d].write(off, data, mem)
            } else if let Some(v) = self.vsock.as_mut() {
                let e = v.write(off, data, mem);
                // After a notification, answers and host bytes go out.
                let d = if off == 0x050 { v.with_queue(0, mem, |v, q, m| v.service(Some(q), m)) } else { e };
                if e == Effect::Interrupt || d == Effect::Interrupt {
                    Effect::Interrupt
                } else {
                    Effect::None
                }
            } else {
                Effect::None
            };
            return match effect {
                Effect::Interrupt => Action::Interrupt(i as u32),
                Effect::None => Action::Continue,
            };
        }
        let value = value_of(data);
        match addr.wrapping_sub(TORITO_MMIO_BASE) {
            mmio::CONSOLE_WRITE => {
                let (gpa, len) = mmio::console_decode(value);
                let mut buf = vec![0u8; len];
                if mem.read_slice(&mut buf, GuestAddress(gpa)).is_ok() {
                    let _ = self.console.write_all(&buf);
                    let _ = self.console.flush();
                } else {
                    self.warn(true, true, addr);
                }
                Action::Continue
            }
            mmio::EXIT => Action::Exit(value as u32 as i32),
            mmio::START_CORES => Action::StartCores(value.min(u64::from(u32::MAX)) as u32),
            mmio::TEST_INTERRUPT => {
                let (vector, apic, delay) = mmio::test_interrupt_decode(value);
                Action::TestInterrupt(vector, apic, delay.min(1_000_000))
            }
            mmio::TRACE => {
                self.host_marks.push((value as u32, crate::timeline::now_ns()));
                Action::Continue
            }
            _ => {
                self.warn(true, true, addr);
                Action::Continue
            }
        }
    }

    /// A guest load from MMIO address `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if let Some((i, off)) = self.virtio_at(addr) {
            let (d, n) = (self.disks.len(), self.nets.len());
            if i < d {
                self.disks[i].read(off, data)
            } else if i < d + n {
                self.nets[i - d].read(off, data)
            } else if let Some(v) = self.vsock.as_ref() {
                v.read(off, data)
            }
        } else if (TORITO_MMIO_BASE..TORITO_MMIO_BASE + mmio::SIZE).contains(&addr) {
            data.fill(0);
        } else {
            self.warn(true, false, addr);
            data.fill(0xff);
        }
    }

    /// A guest `out` to `port`.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Action {
        match port {
            DEBUG_EXIT_PORT => Action::Exit(value_of(data) as u32 as i32),
            I8042_COMMAND if data.first() == Some(&I8042_RESET) => Action::Reset,
            p if (COM1..COM1 + 8).contains(&p) => {
                if let Some(&b) = data.first() {
                    // The serial model's only error is a failed write to
                    // stdout, which must not stop the guest.
                    let _ = self.serial.write((p - COM1) as u8, b);
                }
                Action::Continue
            }
            _ => {
                self.warn(false, true, u64::from(port));
                Action::Continue
            }
        }
    }

    /// A guest `in` from `port`.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        if (COM1..COM1 + 8).contains(&port) {
            let v = self.serial.read((port - COM1) as u8);
            data.fill(0);
            if let Some(b) = data.first_mut() {
                *b = v;
            }
        } else {
            self.warn(false, false, u64::from(port));
            data.fill(0xff);
        }
    }
}

/// A `Write` into shared memory, for tests and for capturing output.
#[derive(Clone, Default)]
pub struct SharedBuffer(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuffer {
    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }
}

impl Devices {
    /// The host descriptors to watch, and whether for writing too: disks'
    /// queue-notify eventfds (I/O-thread mode), TAP devices of NICs holding
    /// no frame back (a NIC whose guest gave no buffer waits for the guest
    /// instead), the vsock device's sockets.
    pub fn host_fds_to_watch(&self) -> Vec<(std::os::fd::RawFd, bool)> {
        use std::os::fd::AsRawFd;
        let disks =
            self.disks.iter().filter_map(|d| d.backend.notify_fd.as_ref()).map(|f| (f.as_raw_fd(), false));
        let taps = self
            .nets
            .iter()
            .filter(|n| !n.backend.holds_frame())
            .map(|n| (n.backend.tap().as_raw_fd(), false));
        disks.chain(taps).chain(self.vsock.iter().flat_map(|v| v.backend.fds())).collect()
    }

    /// Whether any device has host-side I/O (a thread must watch it).
    pub fn has_host_io(&self) -> bool {
        !self.nets.is_empty()
            || self.vsock.is_some()
            || self.disks.iter().any(|d| d.backend.notify_fd.is_some())
    }

    /// Serve the host side of the devices (queue notifications KVM passed
    /// through ioeventfds, frames from TAP devices, vsock connections);
    /// returns the interrupt lines to raise.
    pub fn service_host(&mut self, mem: &GuestMemoryMmap) -> Vec<u32> {
        let d = self.disks.len();
        let mut lines = Vec::new();
        for (i, disk) in self.disks.iter_mut().enumerate() {
            // A non-blocking eventfd reads as an error when nothing came.
            if disk.backend.notify_fd.as_ref().is_some_and(|f| f.read().is_ok())
                && disk.with_queue(0, mem, |b, q, m| crate::virtio_mmio::Backend::notify(b, 0, q, m))
                    == Effect::Interrupt
            {
                lines.push(i as u32);
            }
        }
        for (j, nic) in self.nets.iter_mut().enumerate() {
            if nic.with_queue(0, mem, |net, q, m| net.deliver(q, m)) == Effect::Interrupt {
                lines.push((d + j) as u32);
            }
        }
        let line = (d + self.nets.len()) as u32;
        if let Some(v) = self.vsock.as_mut() {
            let mut served = false;
            let e = v.with_queue(0, mem, |v, q, m| {
                served = true;
                v.service(Some(q), m)
            });
            if !served {
                // The guest has not set its receive queue up yet.
                v.backend.service(None, mem);
            }
            if e == Effect::Interrupt {
                lines.push(line);
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Devices, SharedBuffer, SharedBuffer, GuestMemoryMmap) {
        let con = SharedBuffer::default();
        let ser = SharedBuffer::default();
        let d = Devices::with_serial(Box::new(con.clone()), Box::new(ser.clone()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        (d, con, ser, mem)
    }

    #[test]
    fn console_write_takes_a_whole_buffer() {
        let (mut d, con, _, mem) = setup();
        mem.write_slice(b"hello, world\n", GuestAddress(0x5000)).unwrap();
        let v = mmio::console_value(0x5000, 13);
        assert_eq!(d.mmio_write(&mem, TORITO_MMIO_BASE, &v.to_le_bytes()), Action::Continue);
        assert_eq!(con.text(), "hello, world\n");
    }

    #[test]
    fn console_write_outside_ram_is_ignored() {
        let (mut d, con, _, mem) = setup();
        let v = mmio::console_value(0xff000, 0xffff);
        assert_eq!(d.mmio_write(&mem, TORITO_MMIO_BASE, &v.to_le_bytes()), Action::Continue);
        assert_eq!(con.text(), "");
    }

    #[test]
    fn exit_register_and_debug_port_carry_the_code() {
        let (mut d, _, _, mem) = setup();
        assert_eq!(d.mmio_write(&mem, TORITO_MMIO_BASE + mmio::EXIT, &42u64.to_le_bytes()), Action::Exit(42));
        assert_eq!(
            d.mmio_write(&mem, TORITO_MMIO_BASE + mmio::EXIT, &(-3i32 as u32 as u64).to_le_bytes()),
            Action::Exit(-3)
        );
        assert_eq!(d.pio_write(0xf4, &[7, 0, 0, 0]), Action::Exit(7));
        assert_eq!(d.pio_write(0x64, &[0xfe]), Action::Reset);
        assert_eq!(d.pio_write(0x64, &[0x01]), Action::Continue);
    }

    #[test]
    fn serial_bytes_reach_the_writer() {
        let (mut d, _, ser, _) = setup();
        for b in b"ok\n" {
            assert_eq!(d.pio_write(0x3f8, &[*b]), Action::Continue);
        }
        assert_eq!(ser.text(), "ok\n");
        let mut lsr = [0u8];
        d.pio_read(0x3fd, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }

    #[test]
    fn unmapped_accesses_read_all_ones_and_never_fail() {
        let (mut d, _, _, mem) = setup();
        let mut buf = [0u8; 4];
        d.mmio_read(0xd000_0000, &mut buf);
        assert_eq!(buf, [0xff; 4]);
        d.pio_read(0x80, &mut buf);
        assert_eq!(buf, [0xff; 4]);
        for a in 0..100u64 {
            assert_eq!(d.mmio_write(&mem, 0xd000_0000 + a * 8, &[1]), Action::Continue);
        }
        assert!(d.warned.len() <= MAX_WARNINGS + 1);
        assert_eq!(d.mmio_write(&mem, 0, &[]), Action::Continue);
    }
}
