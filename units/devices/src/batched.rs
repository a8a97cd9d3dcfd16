//! virtio-mmio on the Torito monitor in a few exits: a [`Transport`] that
//! reads a device's fixed registers once, in one batch
//! (`torito_abi::mmio::MMIO_BATCH`), answers the driver's setup reads from
//! that snapshot, queues its setup writes and sends them as one batch when
//! the driver sets DRIVER_OK.
//!
//! Why: on a host where an exit costs 10–30 µs, `virtio-drivers` setting up
//! a virtio-net device made ~120 register accesses, ~3.3 ms of the kernel's
//! start; with this transport it makes three exits (the snapshot, the
//! setup, the first notification), two where the monitor ran the snapshot
//! batch itself at launch ([`Monitor::snapshot`]). The monitor performs the batched
//! accesses exactly as if they had been made one by one, so the device
//! sees the same sequence. Once the device runs, only QueueNotify, the
//! interrupt registers and the configuration space (which may then
//! change) are reached directly.

use alloc::vec::Vec;
use core::ptr::NonNull;

use torito_abi::mmio::{BATCH_OK, Batch, BatchOp};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Queues whose maximum size the snapshot holds.
const QUEUES: usize = 4;
/// Bytes of configuration space in the snapshot.
const CONFIG: usize = 64;
const MAGIC: u32 = 0x7472_6976;

// virtio-mmio (version 2) register offsets (those of the first batch:
// `torito_abi::mmio::snapshot_ops`).
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// How a batch reaches the monitor: one store of its guest-physical
/// address to the register page (the kernel's function).
pub type Submit = fn(u64);

/// The values of the device at `base`'s snapshot batch
/// (`torito_abi::mmio::snapshot_ops`) when the monitor ran it before the
/// guest started (the kernel's function: `torito_abi::boot_info::
/// DeviceSnapshot`).
pub type Snapshot = fn(u64) -> Option<[u32; torito_abi::mmio::SNAPSHOT_OPS]>;

/// What the Torito monitor offers the transport: batches, and the first
/// one already run for the first devices.
#[derive(Clone, Copy)]
pub struct Monitor {
    /// Sends a batch.
    pub submit: Submit,
    /// A device's first batch, run at launch.
    pub snapshot: Snapshot,
}

/// A virtio-mmio transport for the Torito monitor. See the module docs.
pub struct Batched {
    base: u64,
    submit: Submit,
    device_type: DeviceType,
    features: u64,
    queue_max: [u32; QUEUES],
    config: [u8; CONFIG],
    generation: u32,
    status: DeviceStatus,
    /// Queues set up (bit per queue).
    ready: u32,
    pending: Vec<BatchOp>,
    /// DRIVER_OK was set: the configuration is read from the device.
    live: bool,
}

fn read(addr: u64, size: u8) -> BatchOp {
    BatchOp { addr, size, ..Default::default() }
}

fn write(addr: u64, value: u32) -> BatchOp {
    BatchOp { addr, value, size: 4, write: 1, reserved: 0 }
}

/// Run `ops` as one batch; `None` when the monitor refused it.
fn run(submit: Submit, ops: &[BatchOp]) -> Option<Vec<BatchOp>> {
    let mut buf: Vec<u8> = Vec::with_capacity(8 + ops.len() * 16);
    buf.extend_from_slice(Batch { count: ops.len() as u32, status: u32::MAX }.as_bytes());
    buf.extend_from_slice(ops.as_bytes());
    // The kernel's memory is identity-mapped: the address is the
    // guest-physical one.
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    submit(buf.as_ptr() as u64);
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // The monitor wrote into `buf` during the exit: read it afresh.
    let back: Vec<u8> = buf
        .iter()
        .map(|b| {
            // SAFETY: `b` points into `buf`, alive and initialised.
            #[allow(unsafe_code)]
            unsafe {
                core::ptr::read_volatile(b)
            }
        })
        .collect();
    let head = Batch::read_from_bytes(&back[..8]).ok()?;
    (head.status == BATCH_OK)
        .then(|| <[BatchOp]>::ref_from_bytes(&back[8..]).map(|o| o.to_vec()).ok())
        .flatten()
}

/// Why [`Batched::new`] gave no transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotBatched {
    /// No virtio-mmio device there, or the monitor cannot batch: the
    /// caller uses the plain transport.
    Unavailable,
    /// A device of a type `virtio-drivers` does not know (virtio-fs), its
    /// ID read in the same batch: the caller drives it itself.
    OtherType(u32),
}

impl Batched {
    /// The device at `base`, its fixed registers read in one batch
    /// (`torito_abi::mmio::snapshot_ops`; the device's first exit, and its
    /// type with it), or taken from the batch the monitor ran at launch.
    pub fn new(base: u64, monitor: Monitor) -> core::result::Result<Self, NotBatched> {
        let v: Vec<u32> = match (monitor.snapshot)(base) {
            Some(values) => values.to_vec(),
            None => {
                let ops = torito_abi::mmio::snapshot_ops(base);
                let back = run(monitor.submit, &ops).ok_or(NotBatched::Unavailable)?;
                back.iter().map(|o| o.value).collect()
            }
        };
        let submit = monitor.submit;
        if v[0] != MAGIC || v[1] != 2 {
            return Err(NotBatched::Unavailable);
        }
        let device_type = DeviceType::try_from(v[2]).map_err(|_| NotBatched::OtherType(v[2]))?;
        let mut queue_max = [0; QUEUES];
        for (q, m) in queue_max.iter_mut().enumerate() {
            *m = v[8 + 2 * q];
        }
        let mut config = [0u8; CONFIG];
        for (i, c) in config.chunks_mut(4).enumerate() {
            c.copy_from_slice(&v[8 + 2 * QUEUES + i].to_le_bytes());
        }
        Ok(Self {
            base,
            submit,
            device_type,
            features: u64::from(v[4]) | (u64::from(v[6]) << 32),
            queue_max,
            config,
            generation: v[7 + 2 * QUEUES],
            status: DeviceStatus::empty(),
            ready: 0,
            pending: Vec::new(),
            live: false,
        })
    }

    /// Send the queued writes (and `reads` after them); the reads' values.
    fn flush(&mut self, reads: &[u64]) -> Vec<u32> {
        let mut ops = core::mem::take(&mut self.pending);
        let n = ops.len();
        ops.extend(reads.iter().map(|&off| read(self.base + off, 4)));
        if ops.is_empty() {
            return Vec::new();
        }
        match run(self.submit, &ops) {
            Some(back) => back[n..].iter().map(|o| o.value).collect(),
            None => alloc::vec![0; reads.len()],
        }
    }

    fn queue(&mut self, off: u64, value: u32) {
        self.pending.push(write(self.base + off, value));
    }

    fn mmio(&self, off: u64) -> *mut u32 {
        (self.base + off) as *mut u32
    }
}

impl Transport for Batched {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.features
    }

    fn write_driver_features(&mut self, f: u64) {
        self.queue(DRIVER_FEATURES_SEL, 0);
        self.queue(DRIVER_FEATURES, f as u32);
        self.queue(DRIVER_FEATURES_SEL, 1);
        self.queue(DRIVER_FEATURES, (f >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        match self.queue_max.get(usize::from(queue)) {
            Some(&m) => m,
            None => {
                self.queue(QUEUE_SEL, u32::from(queue));
                self.flush(&[QUEUE_NUM_MAX])[0]
            }
        }
    }

    fn notify(&mut self, queue: u16) {
        if !self.pending.is_empty() {
            self.flush(&[]);
        }
        // SAFETY: QueueNotify of this device's register window, which the
        // kernel maps and nothing else writes.
        #[allow(unsafe_code)]
        unsafe {
            self.mmio(QUEUE_NOTIFY).write_volatile(u32::from(queue))
        };
    }

    fn get_status(&self) -> DeviceStatus {
        self.status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.queue(STATUS, status.bits());
        self.status = status;
        if status.is_empty() {
            self.ready = 0;
            self.live = false;
        }
        if status.contains(DeviceStatus::DRIVER_OK) {
            // The whole setup goes now; the status the device took comes back.
            let got = self.flush(&[STATUS]);
            self.status = DeviceStatus::from_bits_truncate(got[0]);
            self.live = true;
        }
    }

    fn set_guest_page_size(&mut self, _size: u32) {
        // Version 2 devices have no page size register.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        self.queue(QUEUE_SEL, u32::from(queue));
        self.queue(QUEUE_NUM, size);
        for (off, a) in [(QUEUE_DESC, descriptors), (QUEUE_DRIVER, driver), (QUEUE_DEVICE, device)] {
            self.queue(off, a as u32);
            self.queue(off + 4, (a >> 32) as u32);
        }
        self.queue(QUEUE_READY, 1);
        self.ready |= 1 << (queue % 32);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.queue(QUEUE_SEL, u32::from(queue));
        self.queue(QUEUE_READY, 0);
        self.queue(QUEUE_NUM, 0);
        for off in [QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE] {
            self.queue(off, 0);
            self.queue(off + 4, 0);
        }
        self.flush(&[]);
        self.ready &= !(1 << (queue % 32));
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.ready & (1 << (queue % 32)) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // SAFETY: the interrupt registers of this device's window.
        #[allow(unsafe_code)]
        unsafe {
            let status = self.mmio(INTERRUPT_STATUS).read_volatile();
            if status != 0 {
                self.mmio(INTERRUPT_ACK).write_volatile(status);
            }
            InterruptStatus::from_bits_truncate(status)
        }
    }

    fn read_config_generation(&self) -> u32 {
        if !self.live {
            return self.generation;
        }
        // SAFETY: ConfigGeneration of this device's window.
        #[allow(unsafe_code)]
        unsafe {
            self.mmio(CONFIG_GENERATION).read_volatile()
        }
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T> {
        let size = core::mem::size_of::<T>();
        if !self.live && offset + size <= CONFIG {
            return T::read_from_bytes(&self.config[offset..offset + size])
                .map_err(|_| Error::ConfigSpaceTooSmall);
        }
        let mut bytes = Vec::with_capacity(size);
        for i in 0..size {
            let addr = NonNull::new((self.base + CONFIG_SPACE + (offset + i) as u64) as *mut u8)
                .ok_or(Error::ConfigSpaceMissing)?;
            // SAFETY: a byte of this device's configuration space, in its
            // mapped window (the window is 4 KiB; the offset is the
            // driver's, within its device's configuration layout).
            #[allow(unsafe_code)]
            bytes.push(unsafe { addr.as_ptr().read_volatile() });
        }
        T::read_from_bytes(&bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(&mut self, offset: usize, value: T) -> Result<()> {
        for (i, &b) in value.as_bytes().iter().enumerate() {
            let addr = self.base + CONFIG_SPACE + (offset + i) as u64;
            self.pending.push(BatchOp { addr, value: u32::from(b), size: 1, write: 1, reserved: 0 });
        }
        self.flush(&[]);
        Ok(())
    }
}
