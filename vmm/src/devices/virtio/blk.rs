//! A virtio-blk device backed by a host file, on the virtio-mmio
//! transport ([`super::mmio`]).
//!
//! A write to `QueueNotify` makes the vCPU thread serve every available
//! request at once (read, write, flush, get-id) before the guest resumes.
//! Descriptor chains are walked with `virtio-queue`'s checks (a chain that
//! loops or is longer than the queue ends; every buffer is checked against
//! guest memory by its `Reader` and `Writer`, lengths included). A request
//! that does not make sense gets the status `IOERR`, or, when not even the
//! status byte can be written, is returned used with length 0; nothing a
//! guest puts in the queue can make the monitor read or write outside
//! guest RAM, or fail.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use crate::vstate::sys::Want;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use virtio_queue::{Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{Backend, F_VERSION_1, MmioDevice, Queues};
use super::queue::{Chain, serve_all};

/// Size of a sector: the unit of `capacity` and of request offsets.
pub const SECTOR: u64 = 512;
/// Largest queue the device offers.
pub const QUEUE_MAX: u16 = 256;
/// Largest data transfer in one request (bigger ones fail with IOERR).
pub const MAX_TRANSFER: usize = 4 << 20;
const DEVICE_BLOCK: u32 = 2;

const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// A disk as the command line names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskConfig {
    /// Host file.
    pub path: PathBuf,
    /// Refuse writes.
    pub readonly: bool,
    /// Serve requests on the device I/O thread, notified through an
    /// ioeventfd, instead of inline at the notification's exit. Faster
    /// for a guest that polls for completions (`devices.poll`), slower
    /// for one that sleeps until the interrupt, and KVM's teardown of a
    /// VM with an ioeventfd adds ~14 ms to the monitor's exit
    /// (docs/design.md §7).
    pub iothread: bool,
}

impl DiskConfig {
    /// Parse `PATH[,ro][,iothread]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut d = Self::default();
        let mut path = s;
        while let Some((p, opt)) = path.rsplit_once(',') {
            match opt {
                "ro" => d.readonly = true,
                "iothread" => d.iothread = true,
                // A comma inside the path, not an option.
                o if o.contains('/') => break,
                o => return Err(format!("unknown disk option '{o}' in '{s}' (options: ro, iothread)")),
            }
            path = p;
        }
        if path.is_empty() {
            return Err("a disk needs a file: --disk PATH[,ro][,iothread]".into());
        }
        d.path = PathBuf::from(path);
        Ok(d)
    }

    /// Open the file as the device will use it; every reason it cannot
    /// be used is one line for the user.
    pub fn open(&self) -> Result<(File, u64), String> {
        let p = &self.path;
        let meta = std::fs::metadata(p).map_err(|e| format!("disk {}: {e}", p.display()))?;
        if meta.is_dir() {
            return Err(format!("disk {}: is a directory", p.display()));
        }
        let file = std::fs::OpenOptions::new().read(true).write(!self.readonly).open(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied && !self.readonly {
                format!("disk {}: {e} (for a read-only disk, add ',ro')", p.display())
            } else {
                format!("disk {}: {e}", p.display())
            }
        })?;
        let len = file.metadata().map_err(|e| format!("disk {}: {e}", p.display()))?.len();
        if len < SECTOR {
            return Err(format!("disk {}: {len} bytes, smaller than one {SECTOR}-byte sector", p.display()));
        }
        // A disk is whole sectors: the tail would be out of the guest's
        // reach, and silently lost to it.
        if !len.is_multiple_of(SECTOR) {
            return Err(format!(
                "disk {}: {len} bytes is not a whole number of {SECTOR}-byte sectors (the last {} bytes would be \
                 out of reach); pad it: truncate -s %{SECTOR} {}",
                p.display(),
                len % SECTOR,
                p.display()
            ));
        }
        Ok((file, len))
    }
}

/// The block device behind the transport.
pub struct Blk {
    file: File,
    sectors: u64,
    readonly: bool,
    id: String,
    /// Requests completed (for tests and statistics).
    pub completed: u64,
    buf: Vec<u8>,
    /// Serve on the I/O thread (`,iothread`).
    iothread: bool,
    /// With `,iothread`: the ioeventfd KVM signals when the driver writes
    /// QueueNotify, which then never exits to the monitor; the I/O thread
    /// serves the queue.
    notify_fd: Option<EventFd>,
}

/// Open `cfg` and make its device (`index` names it: `torito-disk<index>`).
pub fn open(cfg: &DiskConfig, index: usize) -> Result<MmioDevice, String> {
    let (file, len) = cfg.open()?;
    let mut blk = Blk::new(file, len, cfg.readonly, format!("torito-disk{index}"));
    blk.iothread = cfg.iothread;
    Ok(MmioDevice::new(blk))
}

impl Blk {
    /// A device over `file` of `len` bytes (whole sectors are used).
    pub fn new(file: File, len: u64, readonly: bool, id: String) -> Self {
        Self {
            file,
            sectors: len / SECTOR,
            readonly,
            id,
            completed: 0,
            buf: Vec::new(),
            iothread: false,
            notify_fd: None,
        }
    }

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }
}

impl Backend for Blk {
    fn device_id(&self) -> u32 {
        DEVICE_BLOCK
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_FLUSH | F_BLK_SIZE | if self.readonly { F_RO } else { 0 }
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 0x18];
        c[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        // size_max 0x08, seg_max 0x0c, geometry 0x10: 0 (not offered).
        c[0x14..0x18].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn queue_max(&self) -> u16 {
        QUEUE_MAX
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        let Some(queue) = queues.get(index).filter(|_| index == 0) else { return };
        serve_all(queue, mem, |chain| {
            self.completed += 1;
            self.serve(chain, mem)
        });
    }

    fn wants_notify_fd(&self) -> bool {
        self.iothread
    }

    fn set_notify_fd(&mut self, fd: EventFd) {
        self.notify_fd = Some(fd);
    }

    fn has_host_io(&self) -> bool {
        self.notify_fd.is_some()
    }

    fn host_fds(&self, fds: &mut Vec<(RawFd, Want)>) {
        fds.extend(self.notify_fd.as_ref().map(|f| (f.as_raw_fd(), Want::Read)));
    }

    /// A notification KVM passed through the eventfd (a non-blocking
    /// eventfd reads as an error when none came).
    fn service_host(&mut self, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        if self.notify_fd.as_ref().is_some_and(|f| f.read().is_ok()) {
            self.notify(0, queues, mem);
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.readonly { Ok(()) } else { self.file.sync_data() }
    }
}

impl Blk {
    /// Serve one request; returns the bytes written into the chain.
    fn serve(&mut self, chain: Chain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem)) else {
            return 0;
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            return 0;
        }
        let Ok(mut status) = writer.split_at(writable - 1) else { return 0 };
        let code = self.execute(&mut reader, &mut writer);
        let written = writer.bytes_written();
        if status.write_all(&[code]).is_err() {
            return 0;
        }
        (written + 1) as u32
    }

    fn execute(&mut self, reader: &mut Reader<'_>, writer: &mut Writer<'_>) -> u8 {
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).is_err() {
            return S_IOERR;
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        match kind {
            T_IN | T_OUT => {
                // One buffer for the device's life: no allocation per
                // request (a 64 KiB allocation maps and unmaps memory with
                // musl's allocator, which cost 3–4× the throughput).
                let mut buf = std::mem::take(&mut self.buf);
                buf.clear();
                let code = self.transfer(kind, sector, &mut buf, reader, writer);
                self.buf = buf;
                code
            }
            T_FLUSH => {
                if self.file.sync_data().is_err() {
                    return S_IOERR;
                }
                S_OK
            }
            T_GET_ID => {
                let mut id = [0u8; 20];
                let n = self.id.len().min(20);
                id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
                let room = writer.available_bytes().min(20);
                if writer.write_all(&id[..room]).is_err() {
                    return S_IOERR;
                }
                S_OK
            }
            _ => S_UNSUPP,
        }
    }

    /// A read (`T_IN`) or write (`T_OUT`) at `sector`, through `buf`.
    fn transfer(
        &mut self,
        kind: u32,
        sector: u64,
        buf: &mut Vec<u8>,
        reader: &mut Reader<'_>,
        writer: &mut Writer<'_>,
    ) -> u8 {
        if kind == T_OUT {
            if self.readonly {
                return S_IOERR;
            }
            if reader.take(MAX_TRANSFER as u64 + 1).read_to_end(buf).is_err() {
                return S_IOERR;
            }
        }
        // The data part of an IN request is the writable space
        // before the status byte.
        let len = if kind == T_IN { writer.available_bytes() } else { buf.len() };
        if len > MAX_TRANSFER || !(len as u64).is_multiple_of(SECTOR) {
            return S_IOERR;
        }
        let Some(off) = sector.checked_mul(SECTOR) else { return S_IOERR };
        if sector.checked_add(len as u64 / SECTOR).is_none_or(|end| end > self.sectors) {
            return S_IOERR;
        }
        if kind == T_IN {
            buf.resize(len, 0);
            if self.file.read_exact_at(buf, off).is_err() || writer.write_all(buf).is_err() {
                return S_IOERR;
            }
        } else if self.file.write_all_at(buf, off).is_err() {
            return S_IOERR;
        }
        S_OK
    }
}

#[cfg(test)]
mod tests {
    use super::super::mmio::{Effect, MAGIC, NEEDS_RESET};
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const NEXT: u16 = 1; // VRING_DESC_F_NEXT

    fn disk(name: &str, readonly: bool) -> (MmioDevice, PathBuf) {
        let path = std::env::temp_dir().join(format!("torito-vblk-{name}-{}", std::process::id()));
        let data: Vec<u8> = (0..8 * SECTOR as usize).map(|i| (i / 512) as u8 + 1).collect();
        std::fs::write(&path, data).unwrap();
        let dev = open(&DiskConfig { path: path.clone(), readonly, ..Default::default() }, 0).unwrap();
        (dev, path)
    }

    fn reg(dev: &mut MmioDevice, off: u64, v: u32, mem: &GuestMemoryMmap) -> Effect {
        dev.write(off, &v.to_le_bytes(), mem)
    }

    /// Point the device's queue at the mock queue's rings, as a driver does.
    fn configure(dev: &mut MmioDevice, q: &MockSplitQueue<GuestMemoryMmap>, mem: &GuestMemoryMmap) {
        reg(dev, 0x038, 16, mem);
        reg(dev, 0x080, q.desc_table_addr().0 as u32, mem);
        reg(dev, 0x090, q.avail_addr().0 as u32, mem);
        reg(dev, 0x0a0, q.used_addr().0 as u32, mem);
        reg(dev, 0x044, 1, mem);
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// A request header for `kind` at `sector`, written at `at`.
    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    /// The used ring's entry `i`: (head, length).
    fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
        let at = q.used_addr().0 + 4 + 8 * i;
        (mem.read_obj(GuestAddress(at)).unwrap(), mem.read_obj(GuestAddress(at + 4)).unwrap())
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    /// What the monitor does at its stop: a writable disk is synced, a
    /// read-only one left alone; neither fails.
    #[test]
    fn a_disk_is_flushed_when_the_monitor_stops() {
        let path = std::env::temp_dir().join(format!("torito-flush-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        for readonly in [false, true] {
            let file = std::fs::OpenOptions::new().read(true).write(!readonly).open(&path).unwrap();
            let mut blk = Blk::new(file, 4096, readonly, "flush".into());
            blk.flush().unwrap();
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn registers_identify_a_block_device() {
        let (dev, path) = disk("regs", true);
        let mut b = [0u8; 4];
        let r = |off: u64, b: &mut [u8; 4]| {
            dev.read(off, b);
            u32::from_le_bytes(*b)
        };
        assert_eq!(r(0, &mut b), MAGIC);
        assert_eq!(r(4, &mut b), 2);
        assert_eq!(r(8, &mut b), DEVICE_BLOCK);
        assert_ne!(r(0x10, &mut b) as u64 & F_RO, 0, "read-only is offered");
        assert_eq!(r(0x100, &mut b), 8, "capacity in sectors");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_read_request_fills_the_buffer_and_interrupts() {
        let mem = memory();
        let (mut dev, path) = disk("read", false);
        let q = MockSplitQueue::new(&mem, 16);
        configure(&mut dev, &q, &mem);
        header(&mem, 0x10_0000, T_IN, 2);
        q.add_desc_chains(
            &[
                desc(0x10_0000, 16, NEXT, 1),
                desc(0x10_1000, 1024, WRITE | NEXT, 2),
                desc(0x10_2000, 1, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(reg(&mut dev, 0x050, 0, &mem), Effect::Interrupt);
        let mut data = [0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(0x10_1000)).unwrap();
        assert!(data[..512].iter().all(|&b| b == 3) && data[512..].iter().all(|&b| b == 4));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_2000)).unwrap(), S_OK);
        assert_eq!(used(&mem, &q, 0), (0, 1025));
        let mut b = [0u8; 4];
        dev.read(0x060, &mut b);
        assert_eq!(b[0], 1, "interrupt status");
        std::fs::remove_file(path).unwrap();
    }

    /// A driver that set VRING_AVAIL_F_NO_INTERRUPT gets its request done
    /// without an interrupt; when it clears the flag, the next one
    /// interrupts again.
    #[test]
    fn no_interrupt_flag_suppresses_the_interrupt() {
        let mem = memory();
        let (mut dev, path) = disk("noint", false);
        let q = MockSplitQueue::new(&mem, 16);
        configure(&mut dev, &q, &mem);
        header(&mem, 0x10_0000, T_IN, 0);
        let chain = |head: u16| {
            [
                desc(0x10_0000, 16, NEXT, head + 1),
                desc(0x10_1000, 512, WRITE | NEXT, head + 2),
                desc(0x10_2000, 1, WRITE, 0),
            ]
        };
        mem.write_obj(1u16, q.avail_addr()).unwrap(); // flags: NO_INTERRUPT
        q.add_desc_chains(&chain(0), 0).unwrap();
        assert_eq!(reg(&mut dev, 0x050, 0, &mem), Effect::None);
        assert_eq!(used(&mem, &q, 0), (0, 513), "the request was served");
        let mut b = [0u8; 4];
        dev.read(0x060, &mut b);
        assert_eq!(b[0], 0, "no interrupt status");
        mem.write_obj(0u16, q.avail_addr()).unwrap();
        q.add_desc_chains(&chain(3), 3).unwrap();
        assert_eq!(reg(&mut dev, 0x050, 0, &mem), Effect::Interrupt);
        assert_eq!(used(&mem, &q, 1), (3, 513));
        assert_eq!(dev.interrupts, 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_requests_fail_and_leave_the_file_alone() {
        let mem = memory();
        let (mut dev, path) = disk("bad", true);
        let before = std::fs::read(&path).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        configure(&mut dev, &q, &mem);
        // A write to a read-only disk; a read past the end; an unknown type.
        header(&mem, 0x10_0000, T_OUT, 0);
        header(&mem, 0x10_0100, T_IN, 7);
        header(&mem, 0x10_0200, 99, 0);
        q.add_desc_chains(
            &[
                desc(0x10_0000, 16, NEXT, 1),
                desc(0x10_1000, 512, NEXT, 2),
                desc(0x10_3000, 1, WRITE, 0),
                desc(0x10_0100, 16, NEXT, 4),
                desc(0x10_1000, 1024, WRITE | NEXT, 5),
                desc(0x10_3001, 1, WRITE, 0),
                desc(0x10_0200, 16, NEXT, 7),
                desc(0x10_3002, 1, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        reg(&mut dev, 0x050, 0, &mem);
        let status: [u8; 3] = mem.read_obj(GuestAddress(0x10_3000)).unwrap();
        assert_eq!(status, [S_IOERR, S_IOERR, S_UNSUPP]);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn chains_outside_memory_or_looping_cannot_hurt_the_monitor() {
        let mem = memory();
        let (mut dev, path) = disk("evil", false);
        let before = std::fs::read(&path).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        configure(&mut dev, &q, &mem);
        header(&mem, 0x10_0000, T_IN, 0);
        // Data far outside guest RAM; a length that wraps the address
        // space; a chain whose last descriptor points back at its first.
        q.add_desc_chains(
            &[
                desc(0x10_0000, 16, NEXT, 1),
                desc(0xffff_0000_0000, 512, WRITE | NEXT, 2),
                desc(0x10_3000, 1, WRITE, 0),
                desc(0x10_0000, 16, NEXT, 4),
                desc(u64::MAX - 8, u32::MAX, WRITE, 0),
                desc(0x10_0000, 16, NEXT, 5),
            ],
            0,
        )
        .unwrap();
        reg(&mut dev, 0x050, 0, &mem);
        // Every chain was returned, none with data the device wrote
        // outside RAM, and the monitor is still here.
        assert_eq!(used(&mem, &q, 0).1, 0);
        assert_eq!(used(&mem, &q, 1).1, 0);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_queue_outside_memory_is_refused() {
        let mem = memory();
        let (mut dev, path) = disk("q", false);
        reg(&mut dev, 0x038, 16, &mem);
        reg(&mut dev, 0x080, 0xfff0_0000, &mem);
        reg(&mut dev, 0x044, 1, &mem);
        let mut b = [0u8; 4];
        dev.read(0x044, &mut b);
        assert_eq!(b[0], 0, "not ready");
        dev.read(0x070, &mut b);
        assert_ne!(u32::from_le_bytes(b) & NEEDS_RESET, 0);
        assert_eq!(reg(&mut dev, 0x050, 0, &mem), Effect::None);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn disk_options_and_open_errors() {
        let d = |path: &str, readonly, iothread| Ok(DiskConfig { path: path.into(), readonly, iothread });
        assert_eq!(DiskConfig::parse("a.img,ro"), d("a.img", true, false));
        assert_eq!(DiskConfig::parse("a.img"), d("a.img", false, false));
        assert_eq!(DiskConfig::parse("a.img,iothread,ro"), d("a.img", true, true));
        assert_eq!(DiskConfig::parse("a.img,iothread"), d("a.img", false, true));
        assert!(DiskConfig::parse("a.img,rw").unwrap_err().contains("unknown disk option 'rw'"));
        assert!(DiskConfig::parse(",ro").is_err());
        let missing = DiskConfig { path: "/nonexistent/disk.img".into(), ..Default::default() };
        assert!(missing.open().unwrap_err().contains("/nonexistent/disk.img"));
        let dir = DiskConfig { path: std::env::temp_dir(), ..Default::default() };
        assert!(dir.open().unwrap_err().contains("is a directory"));
    }
}
