//! The guest's devices, and the one table of which guest address or port
//! belongs to which of them.
//!
//! | where | device |
//! |---|---|
//! | MMIO `TORITO_MMIO_BASE`, one page | the Torito register page ([`register_page`]) |
//! | MMIO `VIRTIO_MMIO_BASE + i · VIRTIO_MMIO_STRIDE` | virtio device `i`: disks, then NICs, then vsock, then shares ([`virtio`]); interrupt line `i` |
//! | ports `0x3f8`–`0x3ff` | COM1 ([`legacy`]) |
//! | port `0xf4` | QEMU's `isa-debug-exit`: exit code |
//! | port `0x64` | the i8042's reset command |
//!
//! Anything else is a guest touching a device that is not there: the write
//! is ignored, a read returns all ones, and one warning per address goes to
//! stderr (at most [`MAX_WARNINGS`] in all). Nothing a guest does here can
//! fail the monitor.
//!
//! [`attach`] opens every device of a configuration before the VM exists,
//! so a bad `--disk`, `--net` or `--vsock` costs no KVM work.

pub mod legacy;
pub mod register_page;
pub mod tap;
pub mod virtio;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::RawFd;

use crate::vstate::sys::Want;

use torito_abi::exit::qemu::DEBUG_EXIT_PORT;
use torito_abi::layout::{TORITO_MMIO_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_MAX, VIRTIO_MMIO_STRIDE};
use torito_abi::mmio;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::error::Error;
use legacy::{COM1, COM1_PORTS, Com1, I8042_COMMAND};
use register_page::RegisterPage;
use virtio::{Effect, MmioDevice};

/// Distinct unmapped-access warnings printed before the rest are dropped.
pub const MAX_WARNINGS: usize = 16;

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
    /// The kernel's #BP/#DB stub stopped for the debugger; the value is
    /// the guest-virtual address of its `DebugFrame`.
    DebugTrap(u64),
}

/// A device of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    RegisterPage,
    Virtio(usize),
    Com1,
    DebugExit,
    I8042,
}

/// A range of guest addresses or ports and the device that answers there.
#[derive(Clone, Copy, Debug)]
struct Window {
    base: u64,
    size: u64,
    owner: Owner,
}

/// The I/O ports.
const PORTS: [Window; 3] = [
    Window { base: COM1 as u64, size: COM1_PORTS as u64, owner: Owner::Com1 },
    Window { base: DEBUG_EXIT_PORT as u64, size: 1, owner: Owner::DebugExit },
    Window { base: I8042_COMMAND as u64, size: 1, owner: Owner::I8042 },
];

/// The device whose window in `table` holds `addr`, and the offset in it.
fn find(table: &[Window], addr: u64) -> Option<(Owner, u64)> {
    table.iter().find(|w| addr.wrapping_sub(w.base) < w.size).map(|w| (w.owner, addr - w.base))
}

/// The little-endian value of an access's bytes.
pub(crate) fn value_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// All devices of a guest.
pub struct Devices {
    /// The MMIO windows: the register page, then one per virtio device.
    mmio: Vec<Window>,
    register_page: RegisterPage,
    com1: Com1,
    virtio: Vec<MmioDevice>,
    warned: BTreeSet<(bool, u64)>,
    /// Signalled when a device has a host descriptor to watch again (the
    /// I/O thread waits on it too).
    rewatch: Option<EventFd>,
}

/// Open the devices `cfg` asks for (disks, then NICs, then vsock: the
/// order of their windows and interrupt lines); every reason one cannot
/// be used is one line for the user. Threads a device starts later run
/// under `sandbox`'s filters.
pub fn attach(cfg: &VmConfig, sandbox: &crate::sandbox::Sandbox) -> Result<Devices, Error> {
    let count =
        (cfg.disks.len() + cfg.nets.len() + usize::from(cfg.vsock.is_some()) + cfg.shares.len()) as u64;
    if count > VIRTIO_MMIO_MAX {
        return Err(Error::Config(format!(
            "{count} disks, NICs and shares: the monitor offers at most {VIRTIO_MMIO_MAX}"
        )));
    }
    for (i, s) in cfg.shares.iter().enumerate() {
        if cfg.shares[..i].iter().any(|o| o.tag == s.tag) {
            return Err(Error::Config(format!("two shares are tagged '{}' (give one tag=NAME)", s.tag)));
        }
    }
    let mut d = Devices::new(cfg.console_out());
    d.register_page.symbolize_with(&cfg.kernel);
    for (i, disk) in cfg.disks.iter().enumerate() {
        d.add_virtio(virtio::blk::open(disk, i).map_err(Error::Disk)?);
    }
    for (i, nic) in cfg.nets.iter().enumerate() {
        d.add_virtio(virtio::net::open(nic, i).map_err(Error::Net)?);
    }
    if let Some(v) = &cfg.vsock {
        d.add_virtio(virtio::vsock::open(v).map_err(Error::Net)?);
    }
    if !cfg.shares.is_empty() {
        // Each node the guest looks up holds a descriptor: room for them.
        crate::vstate::sys::raise_fd_limit(65_536);
    }
    for s in &cfg.shares {
        let dev = virtio::fs::open(s, sandbox).map_err(|e| {
            let denied = e.contains("ermission denied");
            Error::Share(e, denied)
        })?;
        d.add_virtio(dev);
    }
    Ok(d)
}

impl Devices {
    /// Devices writing guest output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::with_serial(out, Box::new(std::io::stdout()))
    }

    /// Devices with separate console and serial writers.
    pub fn with_serial(console: Box<dyn Write + Send>, serial: Box<dyn Write + Send>) -> Self {
        Self {
            mmio: vec![Window { base: TORITO_MMIO_BASE, size: mmio::SIZE, owner: Owner::RegisterPage }],
            register_page: RegisterPage::new(console),
            com1: Com1::new(serial),
            virtio: Vec::new(),
            warned: BTreeSet::new(),
            rewatch: None,
        }
    }

    /// Add a virtio device in the next window (and interrupt line).
    pub fn add_virtio(&mut self, dev: MmioDevice) {
        let i = self.virtio.len();
        self.mmio.push(Window {
            base: VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_STRIDE,
            size: VIRTIO_MMIO_STRIDE,
            owner: Owner::Virtio(i),
        });
        self.virtio.push(dev);
    }

    /// How the guest finds the virtio devices: `virtio_mmio.device=` words
    /// for its command line, one per device (the form QEMU's microvm uses).
    pub fn cmdline(&self) -> String {
        let mut s = String::new();
        for w in &self.mmio {
            if let Owner::Virtio(i) = w.owner {
                s.push_str(&format!(" virtio_mmio.device=4K@{:#x}:{i}", w.base));
            }
        }
        s
    }

    /// Give each device that wants its queue notifications through an
    /// eventfd (`--disk …,iothread`) the one `register` makes for the
    /// address of its QueueNotify register.
    pub fn connect_notifiers(
        &mut self,
        mut register: impl FnMut(u64) -> Result<EventFd, Error>,
    ) -> Result<(), Error> {
        for (w, dev) in self.mmio.iter().skip(1).zip(&mut self.virtio) {
            if dev.backend().wants_notify_fd() {
                dev.set_notify_fd(register(w.base + virtio::mmio::QUEUE_NOTIFY)?);
            }
        }
        Ok(())
    }

    /// Trace marks the guest sent through the register page: `(id, host ns)`.
    pub fn host_marks(&self) -> &[(u32, u64)] {
        &self.register_page.host_marks
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

    /// The eventfd to signal when a device has a host descriptor to watch
    /// again (the I/O thread's).
    pub fn set_rewatch(&mut self, fd: EventFd) {
        self.rewatch = Some(fd);
    }

    /// Wake the I/O thread if virtio device `i` has a host descriptor to
    /// watch again (a write just made it so: DRIVER_OK, buffers for a
    /// frame held back), whether the write came alone or in a batch.
    fn pass_rewatch(&mut self, i: usize) {
        if self.virtio[i].take_rewatch()
            && let Some(fd) = &self.rewatch
        {
            let _ = fd.write(1);
        }
    }

    /// A guest store to MMIO address `addr`.
    pub fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> Action {
        let action = match find(&self.mmio, addr) {
            Some((Owner::Virtio(i), off)) => {
                let effect = self.virtio[i].write(off, data, mem);
                self.pass_rewatch(i);
                Some(match effect {
                    Effect::Interrupt => Action::Interrupt(i as u32),
                    Effect::None => Action::Continue,
                })
            }
            Some((Owner::RegisterPage, mmio::MMIO_BATCH)) => Some(self.run_batch(mem, value_of(data))),
            Some((Owner::RegisterPage, off)) => self.register_page.write(mem, off, value_of(data)),
            _ => None,
        };
        action.unwrap_or_else(|| {
            self.warn(true, true, addr);
            Action::Continue
        })
    }

    /// A register batch at guest-physical `gpa` (`torito_abi::mmio::Batch`):
    /// each operation done on its virtio device in order, reads written
    /// back, the outcome in the header. Only virtio windows are reachable;
    /// a bad count, address or size stops the batch there (the guest reads
    /// which in `status`); a header outside RAM is ignored. The interrupt
    /// of the first write that raised one is passed on.
    fn run_batch(&mut self, mem: &GuestMemoryMmap, gpa: u64) -> Action {
        use vm_memory::{Bytes, GuestAddress};
        let op_size = std::mem::size_of::<mmio::BatchOp>() as u64;
        let Ok(head) = mem.read_obj::<[u8; 8]>(GuestAddress(gpa)) else { return Action::Continue };
        let count = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let mut action = Action::Continue;
        let mut status = mmio::BATCH_OK;
        if count > mmio::BATCH_MAX_OPS {
            status = mmio::BATCH_FAILED | mmio::BATCH_MAX_OPS;
        }
        for i in 0..u64::from(count.min(mmio::BATCH_MAX_OPS)) {
            if status != mmio::BATCH_OK {
                break;
            }
            let at = GuestAddress(gpa.wrapping_add(8).wrapping_add(i * op_size));
            let Ok(raw) = mem.read_obj::<[u8; 16]>(at) else {
                status = mmio::BATCH_FAILED | i as u32;
                break;
            };
            let addr = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
            let value = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let (size, write) = (usize::from(raw[12]), raw[13] != 0);
            let Some((Owner::Virtio(d), off)) = find(&self.mmio, addr).filter(|_| matches!(size, 1 | 2 | 4))
            else {
                status = mmio::BATCH_FAILED | i as u32;
                break;
            };
            if write {
                let effect = self.virtio[d].write(off, &value.to_le_bytes()[..size], mem);
                self.pass_rewatch(d);
                if effect == Effect::Interrupt && matches!(action, Action::Continue) {
                    action = Action::Interrupt(d as u32);
                }
            } else {
                let mut b = [0u8; 4];
                self.virtio[d].read(off, &mut b[..size]);
                if mem.write_obj(b, GuestAddress(at.0.wrapping_add(8))).is_err() {
                    status = mmio::BATCH_FAILED | i as u32;
                }
            }
        }
        let _ = mem.write_obj(status.to_le_bytes(), GuestAddress(gpa.wrapping_add(4)));
        action
    }

    /// Run the first virtio-mmio devices' snapshot batches now, before the
    /// guest starts (`torito_abi::boot_info::DeviceSnapshot`), into the
    /// page after the `BootInfo` at guest-physical `info`, through
    /// [`Devices::run_batch`] as if the guest had sent them: the kernel
    /// then takes each device's registers from there, an exit fewer per
    /// device. Returns how many were written (for the `BootInfo`).
    pub fn write_snapshots(&mut self, mem: &GuestMemoryMmap, info: u64) -> u32 {
        use torito_abi::boot_info::{DEVICE_SNAPSHOTS_OFFSET, DeviceSnapshot, MAX_DEVICE_SNAPSHOTS};
        use vm_memory::{Bytes, GuestAddress};
        use zerocopy::IntoBytes;
        let mut bases: Vec<u64> =
            self.mmio.iter().filter(|w| matches!(w.owner, Owner::Virtio(_))).map(|w| w.base).collect();
        bases.sort_unstable();
        let mut written = 0u32;
        for (i, base) in bases.into_iter().take(MAX_DEVICE_SNAPSHOTS).enumerate() {
            let at = info + DEVICE_SNAPSHOTS_OFFSET + (i * std::mem::size_of::<DeviceSnapshot>()) as u64;
            let snap = DeviceSnapshot {
                head: mmio::Batch { count: mmio::SNAPSHOT_OPS as u32, status: u32::MAX },
                ops: mmio::snapshot_ops(base),
            };
            if mem.write_slice(snap.as_bytes(), GuestAddress(at)).is_err() {
                break;
            }
            // Reads and selector writes only: no interrupt to pass on.
            let _ = self.run_batch(mem, at);
            written += 1;
        }
        written
    }

    /// A guest load from MMIO address `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match find(&self.mmio, addr) {
            Some((Owner::Virtio(i), off)) => self.virtio[i].read(off, data),
            Some((Owner::RegisterPage, _)) => data.fill(0),
            _ => {
                self.warn(true, false, addr);
                data.fill(0xff);
            }
        }
    }

    /// A guest `out` to `port`.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Action {
        let action = match find(&PORTS, u64::from(port)) {
            Some((Owner::Com1, off)) => {
                self.com1.write(off as u16, data);
                Some(Action::Continue)
            }
            Some((Owner::DebugExit, _)) => Some(legacy::debug_exit(data)),
            Some((Owner::I8042, _)) => legacy::i8042_command(data),
            _ => None,
        };
        action.unwrap_or_else(|| {
            self.warn(false, true, u64::from(port));
            Action::Continue
        })
    }

    /// A guest `in` from `port`.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match find(&PORTS, u64::from(port)) {
            Some((Owner::Com1, off)) => self.com1.read(off as u16, data),
            _ => {
                self.warn(false, false, u64::from(port));
                data.fill(0xff);
            }
        }
    }

    /// The host descriptors to watch, and for what (see each backend's
    /// `host_fds`).
    pub fn host_fds_to_watch(&self) -> Vec<(RawFd, Want)> {
        let mut fds = Vec::new();
        for dev in &self.virtio {
            dev.backend().host_fds(&mut fds);
        }
        fds
    }

    /// Make what the guest wrote durable, device by device (the monitor is
    /// stopping); one line per device that could not.
    pub fn flush(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for (i, dev) in self.virtio.iter_mut().enumerate() {
            if let Err(e) = dev.flush() {
                failed.push(format!("virtio device {i}: cannot flush: {e}"));
            }
        }
        failed
    }

    /// Descriptors of the devices whose last close is slow
    /// ([`virtio::mmio::Backend::slow_to_close`]).
    pub fn slow_to_close(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        for dev in &self.virtio {
            dev.slow_to_close(&mut fds);
        }
        fds
    }

    /// Whether any device has host-side I/O (a thread must watch it).
    pub fn has_host_io(&self) -> bool {
        self.virtio.iter().any(|d| d.backend().has_host_io())
    }

    /// Serve the host side of the devices (queue notifications KVM passed
    /// through ioeventfds, frames from TAP devices, vsock connections);
    /// returns the interrupt lines to raise.
    pub fn service_host(&mut self, mem: &GuestMemoryMmap) -> Vec<u32> {
        let mut lines = Vec::new();
        for (i, dev) in self.virtio.iter_mut().enumerate() {
            if dev.backend().has_host_io() && dev.service_host(mem) == Effect::Interrupt {
                lines.push(i as u32);
            }
        }
        lines
    }
}

/// Make `path` free for a listening Unix socket: a socket file a killed
/// monitor left behind (nobody accepts on it) is removed, so a restart does
/// not trip over it; a socket a live process listens on, or a file of
/// another kind, is refused.
pub fn claim_socket_path(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(m) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !m.file_type().is_socket() {
        return Err(format!("{} exists and is not a socket", path.display()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!("{} is in use by another process (a running monitor?)", path.display()));
    }
    std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a restart finds on a socket path: nothing, a stale socket (a
    /// killed monitor's: replaced), a live one (refused), a plain file
    /// (refused).
    #[test]
    fn socket_paths_are_claimed_only_when_stale() {
        let dir = std::env::temp_dir().join(format!("torito-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.sock");
        claim_socket_path(&p).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(claim_socket_path(&p).unwrap_err().contains("in use"));
        drop(live);
        assert!(p.exists(), "a closed listener leaves its file");
        claim_socket_path(&p).unwrap();
        assert!(!p.exists());
        std::fs::write(&p, b"x").unwrap();
        assert!(claim_socket_path(&p).unwrap_err().contains("not a socket"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use vm_memory::{Bytes, GuestAddress};

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

    /// Write a batch of `ops` at 0x8000; run it; (status, ops as read back).
    fn batch(
        d: &mut Devices,
        mem: &GuestMemoryMmap,
        count: u32,
        ops: &[mmio::BatchOp],
    ) -> (u32, Vec<mmio::BatchOp>) {
        use zerocopy::{FromBytes, IntoBytes};
        mem.write_slice(mmio::Batch { count, status: 77 }.as_bytes(), GuestAddress(0x8000)).unwrap();
        mem.write_slice(ops.as_bytes(), GuestAddress(0x8008)).unwrap();
        assert_eq!(
            d.mmio_write(mem, TORITO_MMIO_BASE + mmio::MMIO_BATCH, &0x8000u64.to_le_bytes()),
            Action::Continue
        );
        let mut head = [0u8; 8];
        mem.read_slice(&mut head, GuestAddress(0x8000)).unwrap();
        let mut back = vec![0u8; std::mem::size_of_val(ops)];
        mem.read_slice(&mut back, GuestAddress(0x8008)).unwrap();
        (
            mmio::Batch::read_from_bytes(&head).unwrap().status,
            <[mmio::BatchOp]>::ref_from_bytes(&back).unwrap().to_vec(),
        )
    }

    /// The snapshots written at launch hold what the guest's own first
    /// batch would read, for each device in address order, and the kernel's
    /// check accepts each for its device only.
    #[test]
    fn device_snapshots_are_the_first_batch_run_ahead() {
        use torito_abi::boot_info::{DEVICE_SNAPSHOTS_OFFSET, DeviceSnapshot};
        use zerocopy::FromBytes;
        let (mut d, _, _, mem) = setup();
        let path = std::env::temp_dir().join(format!("torito-snap-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        for name in ["a", "b"] {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            d.add_virtio(MmioDevice::new(virtio::blk::Blk::new(file, 1 << 20, false, name.into())));
        }
        std::fs::remove_file(&path).unwrap();
        let info = 0x1000;
        assert_eq!(d.write_snapshots(&mem, info), 2);
        let size = std::mem::size_of::<DeviceSnapshot>() as u64;
        for (i, base) in [VIRTIO_MMIO_BASE, VIRTIO_MMIO_BASE + 0x1000].into_iter().enumerate() {
            let mut raw = vec![0u8; size as usize];
            mem.read_slice(&mut raw, GuestAddress(info + DEVICE_SNAPSHOTS_OFFSET + i as u64 * size)).unwrap();
            let snap = DeviceSnapshot::read_from_bytes(&raw).unwrap();
            let ahead = snap.values_for(base).expect("a complete snapshot of this device");
            assert_eq!(snap.values_for(base ^ 0x1000), None, "not another device's");
            // The same batch sent by the guest now reads the same values.
            let (status, back) = batch(&mut d, &mem, mmio::SNAPSHOT_OPS as u32, &mmio::snapshot_ops(base));
            assert_eq!(status, mmio::BATCH_OK);
            assert_eq!(back.iter().map(|o| o.value).collect::<Vec<_>>(), ahead.to_vec());
            // Magic "virt", version 2, device 2 (block); 2048 sectors.
            assert_eq!(ahead[..3], [0x7472_6976, 2, 2]);
            assert_eq!(ahead[16], 2048);
        }
    }

    #[test]
    fn a_register_batch_does_each_access_in_order() {
        let (mut d, _, _, mem) = setup();
        let path = std::env::temp_dir().join(format!("torito-batch-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        d.add_virtio(MmioDevice::new(virtio::blk::Blk::new(file, 1 << 20, false, "b".into())));
        std::fs::remove_file(&path).unwrap();
        let base = VIRTIO_MMIO_BASE;
        let r = |off: u64, size: u8| mmio::BatchOp { addr: base + off, size, ..Default::default() };
        let w =
            |off: u64, value: u32| mmio::BatchOp { addr: base + off, value, size: 4, write: 1, reserved: 0 };
        let ops =
            [r(0, 4), r(8, 4), w(0x30, 0), r(0x34, 4), w(0x70, 1), r(0x70, 4), r(0x100, 4), r(0x100, 1)];
        let (status, back) = batch(&mut d, &mem, ops.len() as u32, &ops);
        assert_eq!(status, mmio::BATCH_OK);
        let values: Vec<u32> = back.iter().map(|o| o.value).collect();
        // Magic "virt", device 2 (block), a queue, the status just written,
        // the capacity in sectors (2048), its low byte.
        assert_eq!(values[..2], [0x7472_6976, 2]);
        assert!(values[3] > 0);
        assert_eq!(values[5..], [1, 2048, 0]);
        // A bad address, a bad size and a bad count stop the batch there.
        let bad = [r(0, 4), mmio::BatchOp { addr: TORITO_MMIO_BASE, size: 4, ..Default::default() }, r(0, 4)];
        assert_eq!(batch(&mut d, &mem, 3, &bad).0, mmio::BATCH_FAILED | 1);
        assert_eq!(batch(&mut d, &mem, 1, &[r(0, 3)]).0, mmio::BATCH_FAILED);
        assert_eq!(batch(&mut d, &mem, 100_000, &[r(0, 4)]).0, mmio::BATCH_FAILED | mmio::BATCH_MAX_OPS);
        // A batch running past the end of RAM stops there, nothing breaks.
        let end = (1u64 << 20) - 8 - 16;
        mem.write_slice(mmio::Batch { count: 2, status: 0 }.as_bytes(), GuestAddress(end)).unwrap();
        use zerocopy::IntoBytes;
        mem.write_slice(r(0, 4).as_bytes(), GuestAddress(end + 8)).unwrap();
        assert_eq!(
            d.mmio_write(&mem, TORITO_MMIO_BASE + mmio::MMIO_BATCH, &end.to_le_bytes()),
            Action::Continue
        );
        let mut st = [0u8; 4];
        mem.read_slice(&mut st, GuestAddress(end + 4)).unwrap();
        assert_eq!(u32::from_le_bytes(st), mmio::BATCH_FAILED | 1);
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
