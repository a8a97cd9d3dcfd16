//! [`BootInfo`]: what the monitor tells the kernel at the direct 64-bit entry.
//!
//! The monitor writes one `BootInfo` at [`crate::layout::BOOT_INFO_ADDR`] and
//! starts the vCPU at the kernel's entry with its address in `rdi`. The
//! kernel builds the same structure itself from multiboot or PVH information,
//! so everything after the entry sees one format.
//!
//! The kernel also writes into it: the [`TraceLog`] holds TSC stamps of boot
//! milestones, which the monitor reads after the guest stops. Recording a
//! milestone therefore costs no VM exit.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `BootInfo::magic`: ASCII "TORITOBI".
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"TORITOBI");

/// Number of entries in [`BootInfo::mem_map`].
pub const MAX_MEM_REGIONS: usize = 32;
/// Number of entries in [`TraceLog::entries`].
pub const MAX_TRACE: usize = 16;

/// Which loader started the kernel.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// The Torito monitor, direct 64-bit entry at CPL3.
    Direct = 1,
    /// A multiboot1 loader (QEMU `-kernel`, GRUB).
    Multiboot = 2,
    /// The PVH entry (Firecracker, QEMU microvm, Cloud Hypervisor).
    Pvh = 3,
}

impl BootProtocol {
    /// Decode the raw value stored in [`BootInfo::protocol`].
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Direct),
            2 => Some(Self::Multiboot),
            3 => Some(Self::Pvh),
            _ => None,
        }
    }

    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Multiboot => "multiboot",
            Self::Pvh => "pvh",
        }
    }
}

/// Kind of a [`MemRegion`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// RAM the kernel may use (minus its own image and boot structures).
    Usable = 1,
    /// Anything else.
    Reserved = 2,
}

/// One range of guest-physical memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MemRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// A [`MemKind`] as `u32`.
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

impl MemRegion {
    /// A usable region.
    pub const fn usable(base: u64, len: u64) -> Self {
        Self { base, len, kind: MemKind::Usable as u32, reserved: 0 }
    }

    /// Whether the kernel may allocate from this region.
    pub const fn is_usable(&self) -> bool {
        self.kind == MemKind::Usable as u32
    }
}

/// Boot milestones recorded in the [`TraceLog`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceId {
    /// First line of `kernel_main`.
    KernelMain = 1,
    /// The kernel is about to call the app's `main`.
    AppMain = 2,
    /// The app's `main` returned (or the kernel is exiting for it).
    AppExit = 3,
    /// The app's first listening socket (TCP or vsock) was bound.
    Listening = 4,
    /// The app accepted its first connection.
    FirstAccept = 5,
    /// The memory unit is up (paging and the heap): the first step of
    /// `kernel_main` → `app_main`, as are the four below, each recorded
    /// when its unit's `init` returned, in the app's units only.
    MemoryUnit = 6,
    /// The process unit is up (timers, cores, the scheduler).
    ProcessUnit = 7,
    /// The devices unit is up (virtio devices found and set up).
    DevicesUnit = 8,
    /// The filesystem unit is up (its mounts).
    FsUnit = 9,
    /// The network unit is up (NICs and vsock devices handed to the stack).
    NetUnit = 10,
}

impl TraceId {
    /// Decode a raw id.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::KernelMain),
            2 => Some(Self::AppMain),
            3 => Some(Self::AppExit),
            4 => Some(Self::Listening),
            5 => Some(Self::FirstAccept),
            6 => Some(Self::MemoryUnit),
            7 => Some(Self::ProcessUnit),
            8 => Some(Self::DevicesUnit),
            9 => Some(Self::FsUnit),
            10 => Some(Self::NetUnit),
            _ => None,
        }
    }

    /// Name used in timelines.
    pub const fn name(self) -> &'static str {
        match self {
            Self::KernelMain => "kernel_main",
            Self::AppMain => "app_main",
            Self::AppExit => "app_exit",
            Self::Listening => "listening",
            Self::FirstAccept => "first_accept",
            Self::MemoryUnit => "memory_unit",
            Self::ProcessUnit => "process_unit",
            Self::DevicesUnit => "devices_unit",
            Self::FsUnit => "fs_unit",
            Self::NetUnit => "net_unit",
        }
    }
}

/// One trace record: a milestone and the guest TSC when it was reached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TraceEntry {
    /// A [`TraceId`] as `u32`.
    pub id: u32,
    /// Zero.
    pub reserved: u32,
    /// Guest TSC (`rdtsc`) at the milestone.
    pub tsc: u64,
}

/// Milestones the kernel records for the monitor, in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TraceLog {
    /// Number of valid entries (saturates at [`MAX_TRACE`]).
    pub count: u32,
    /// Zero.
    pub reserved: u32,
    /// The records, in the order they were made.
    pub entries: [TraceEntry; MAX_TRACE],
}

/// Everything the kernel needs to know at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`] of the writer.
    pub version: u32,
    /// `size_of::<BootInfo>()` of the writer.
    pub size: u32,
    /// A [`BootProtocol`] as `u32`.
    pub protocol: u32,
    /// Number of valid entries in `mem_map`.
    pub mem_map_len: u32,
    /// TSC frequency in kHz, 0 if unknown.
    pub tsc_khz: u64,
    /// Guest-physical address of the root page table the kernel runs on.
    pub page_table_root: u64,
    /// Guest-physical address of the command line (UTF-8, not necessarily
    /// NUL-terminated), 0 if none.
    pub cmdline_addr: u64,
    /// Length of the command line in bytes.
    pub cmdline_len: u64,
    /// Host `CLOCK_MONOTONIC` (ns) at launch, as the monitor knows it; 0 if
    /// not a Torito monitor.
    pub launch_ns: u64,
    /// Usable and reserved RAM ranges, sorted by base.
    pub mem_map: [MemRegion; MAX_MEM_REGIONS],
    /// Milestones written by the kernel.
    pub trace: TraceLog,
    /// Host `CLOCK_REALTIME` (ns since the Unix epoch) just before the vCPU
    /// first runs; 0 when the host gives no wall clock. The guest pairs it
    /// with its TSC at `kernel_main` (error: the time to enter the guest).
    pub boot_realtime_ns: u64,
    /// Number of CPUs the monitor provides (vCPU `i` has local APIC ID
    /// `i`); only core 0 runs at entry, the others start when the kernel
    /// writes [`crate::mmio::START_CORES`]. 0 or 1: one core.
    pub cpu_count: u32,
    /// Number of [`DeviceSnapshot`]s at [`DEVICE_SNAPSHOTS_OFFSET`] from
    /// this structure (the Torito monitor's; 0: none).
    pub device_snapshots: u32,
    /// 32 random bytes from the host (`getrandom`), to seed the guest's
    /// random numbers; all zero when the loader gives none (multiboot,
    /// PVH).
    pub entropy: [u64; 4],
    /// What the monitor set up that the kernel would otherwise do itself
    /// ([`PRESET_LAPIC`]); 0 when nothing is (multiboot, PVH).
    pub preset: u32,
    /// Zero.
    pub reserved: u32,
}

/// [`BootInfo::preset`]: every vCPU's local APIC is software-enabled
/// (spurious vector [`LAPIC_SPURIOUS_VECTOR`]) and its timer set to
/// one-shot on [`LAPIC_TIMER_VECTOR`], counting undivided, before the vCPU
/// first runs. Each of these is a register write the kernel would make,
/// and each such write is an emulated store, an exit, on a paravirtual
/// host; the kernel also skips the `cpuid` that looks for the LAPIC.
pub const PRESET_LAPIC: u32 = 1;

/// The local APIC's spurious-interrupt vector (its SVR's low byte).
pub const LAPIC_SPURIOUS_VECTOR: u8 = 0xff;

/// The vector of the local APIC timer's interrupt.
pub const LAPIC_TIMER_VECTOR: u8 = 0x40;

impl BootInfo {
    /// An empty `BootInfo` for `protocol`, with magic, version and size set.
    pub const fn new(protocol: BootProtocol) -> Self {
        Self {
            magic: BOOT_INFO_MAGIC,
            version: crate::ABI_VERSION,
            size: core::mem::size_of::<Self>() as u32,
            protocol: protocol as u32,
            mem_map_len: 0,
            tsc_khz: 0,
            page_table_root: 0,
            cmdline_addr: 0,
            cmdline_len: 0,
            launch_ns: 0,
            mem_map: [MemRegion { base: 0, len: 0, kind: 0, reserved: 0 }; MAX_MEM_REGIONS],
            trace: TraceLog {
                count: 0,
                reserved: 0,
                entries: [TraceEntry { id: 0, reserved: 0, tsc: 0 }; MAX_TRACE],
            },
            boot_realtime_ns: 0,
            cpu_count: 1,
            device_snapshots: 0,
            entropy: [0; 4],
            preset: 0,
            reserved: 0,
        }
    }

    /// Append a memory region; returns `false` when the map is full.
    pub fn push_region(&mut self, region: MemRegion) -> bool {
        let i = self.mem_map_len as usize;
        if i >= MAX_MEM_REGIONS {
            return false;
        }
        self.mem_map[i] = region;
        self.mem_map_len += 1;
        true
    }

    /// The valid part of the memory map.
    pub fn regions(&self) -> &[MemRegion] {
        let n = (self.mem_map_len as usize).min(MAX_MEM_REGIONS);
        &self.mem_map[..n]
    }

    /// Whether magic, version and size say this structure can be trusted.
    pub fn is_valid(&self) -> bool {
        self.magic == BOOT_INFO_MAGIC
            && self.version == crate::ABI_VERSION
            && self.size as usize == core::mem::size_of::<Self>()
            && BootProtocol::from_raw(self.protocol).is_some()
    }

    /// The recorded milestones.
    pub fn trace_entries(&self) -> &[TraceEntry] {
        let n = (self.trace.count as usize).min(MAX_TRACE);
        &self.trace.entries[..n]
    }
}

// The whole structure must fit the page the monitor reserves for it.
const _: () = assert!(core::mem::size_of::<BootInfo>() as u64 <= crate::layout::PAGE_SIZE);

/// A virtio-mmio device's snapshot batch ([`crate::mmio::snapshot_ops`])
/// as the Torito monitor ran it at launch, before the guest started: the
/// header's status is [`crate::mmio::BATCH_OK`] and each read holds its
/// value, exactly as if the guest had sent the batch (the same code runs
/// it). The kernel takes a device's from here instead of sending its first
/// batch: an exit fewer per device (~100–250 µs on a paravirtual host).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DeviceSnapshot {
    /// The batch's head: count [`crate::mmio::SNAPSHOT_OPS`], status.
    pub head: crate::mmio::Batch,
    /// The operations, reads answered.
    pub ops: [crate::mmio::BatchOp; crate::mmio::SNAPSHOT_OPS],
}

impl DeviceSnapshot {
    /// The values the batch read, if this is a complete snapshot of the
    /// device at `base` (every operation the one [`crate::mmio::snapshot_ops`]
    /// makes, the batch done).
    pub fn values_for(&self, base: u64) -> Option<[u32; crate::mmio::SNAPSHOT_OPS]> {
        let want = crate::mmio::snapshot_ops(base);
        let same = |a: &crate::mmio::BatchOp, b: &crate::mmio::BatchOp| {
            a.addr == b.addr && a.size == b.size && a.write == b.write && (a.write == 0 || a.value == b.value)
        };
        let ok = self.head.count as usize == crate::mmio::SNAPSHOT_OPS
            && self.head.status == crate::mmio::BATCH_OK
            && self.ops.iter().zip(want.iter()).all(|(a, b)| same(a, b));
        ok.then(|| self.ops.map(|o| o.value))
    }
}

/// Where the snapshots start, from the `BootInfo`: after it, 64-byte
/// aligned, in the same page.
pub const DEVICE_SNAPSHOTS_OFFSET: u64 = (core::mem::size_of::<BootInfo>() as u64).div_ceil(64) * 64;

/// Most snapshots the `BootInfo`'s page holds after it.
pub const MAX_DEVICE_SNAPSHOTS: usize = ((crate::layout::PAGE_SIZE - DEVICE_SNAPSHOTS_OFFSET)
    / core::mem::size_of::<DeviceSnapshot>() as u64) as usize;
const _: () = assert!(MAX_DEVICE_SNAPSHOTS >= 4);

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    /// Every milestone decodes from its number, and its timeline name is
    /// its own.
    #[test]
    fn trace_ids_round_trip_with_distinct_names() {
        let mut names = [""; 32];
        let mut n = 0;
        for raw in 0..32 {
            if let Some(id) = TraceId::from_raw(raw) {
                assert_eq!(id as u32, raw);
                assert!(!names[..n].contains(&id.name()), "{} twice", id.name());
                names[n] = id.name();
                n += 1;
            }
        }
        assert_eq!(n, 10);
        assert!(n < MAX_TRACE, "every milestone fits the log");
    }

    #[test]
    fn layout_is_stable() {
        assert_eq!(core::mem::size_of::<MemRegion>(), 24);
        assert_eq!(core::mem::size_of::<TraceEntry>(), 16);
        assert_eq!(core::mem::offset_of!(BootInfo, mem_map), 64);
        assert_eq!(core::mem::size_of::<BootInfo>(), 64 + 32 * 24 + 8 + 16 * 16 + 16 + 32 + 8);
        assert_eq!(core::mem::offset_of!(BootInfo, preset), 64 + 32 * 24 + 8 + 16 * 16 + 16 + 32);
        // The snapshots' place did not move with the field (v6).
        assert_eq!(DEVICE_SNAPSHOTS_OFFSET, 1152);
        assert_eq!(core::mem::offset_of!(BootInfo, boot_realtime_ns), 64 + 32 * 24 + 8 + 16 * 16);
        assert_eq!(core::mem::offset_of!(BootInfo, cpu_count), 64 + 32 * 24 + 8 + 16 * 16 + 8);
    }

    #[test]
    fn new_is_valid_and_round_trips_through_bytes() {
        let mut b = BootInfo::new(BootProtocol::Direct);
        assert!(b.push_region(MemRegion::usable(0x10_0000, 0x100_0000)));
        assert!(b.is_valid());
        let bytes = b.as_bytes().to_vec();
        let back = BootInfo::read_from_bytes(&bytes).unwrap();
        assert_eq!(back.regions(), &[MemRegion::usable(0x10_0000, 0x100_0000)]);
    }

    /// A snapshot is taken only when complete, done, and of the device
    /// asked for.
    #[test]
    fn a_device_snapshot_is_checked_before_use() {
        use crate::mmio::{BATCH_FAILED, BATCH_OK, Batch, SNAPSHOT_OPS, snapshot_ops};
        let base = 0xd000_0000;
        let mut ops = snapshot_ops(base);
        for (i, op) in ops.iter_mut().enumerate().filter(|(_, o)| o.write == 0) {
            op.value = i as u32;
        }
        let good = DeviceSnapshot { head: Batch { count: SNAPSHOT_OPS as u32, status: BATCH_OK }, ops };
        let values = good.values_for(base).unwrap();
        assert_eq!(values[0], 0);
        assert_eq!(values[31], 31);
        assert_eq!(good.values_for(base + 0x1000), None);
        let mut failed = good;
        failed.head.status = BATCH_FAILED | 3;
        assert_eq!(failed.values_for(base), None);
        let mut short = good;
        short.head.count = 3;
        assert_eq!(short.values_for(base), None);
        let mut other = good;
        other.ops[3].value = 5; // the features selector's write
        assert_eq!(other.values_for(base), None);
        const {
            assert!(
                DEVICE_SNAPSHOTS_OFFSET + MAX_DEVICE_SNAPSHOTS as u64 * size_of::<DeviceSnapshot>() as u64
                    <= 4096
            )
        };
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut b = BootInfo::new(BootProtocol::Pvh);
        b.magic = 0;
        assert!(!b.is_valid());
        let mut b = BootInfo::new(BootProtocol::Pvh);
        b.version += 1;
        assert!(!b.is_valid());
    }

    #[test]
    fn memory_map_is_bounded() {
        let mut b = BootInfo::new(BootProtocol::Direct);
        for i in 0..MAX_MEM_REGIONS as u64 {
            assert!(b.push_region(MemRegion::usable(i << 20, 1 << 20)));
        }
        assert!(!b.push_region(MemRegion::usable(0, 1)));
        assert_eq!(b.regions().len(), MAX_MEM_REGIONS);
    }
}
