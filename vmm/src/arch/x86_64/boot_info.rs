//! The boot information of the direct entry: the `BootInfo` (memory map,
//! TSC frequency, launch time, cores, command line) written into guest
//! memory, and the milestones the guest leaves in it.

use torito_abi::boot_info::{BootInfo, BootProtocol, MemRegion, TraceEntry};
use torito_abi::layout::{BOOT_INFO_ADDR, CMDLINE_ADDR, CMDLINE_MAX, PML4_ADDR, ram_ranges};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::Error;

/// Check the command line's length.
pub fn check_cmdline(cmdline: &str) -> Result<&str, Error> {
    if cmdline.len() > CMDLINE_MAX {
        return Err(Error::Config(format!(
            "the kernel command line is {} bytes; the limit is {CMDLINE_MAX}",
            cmdline.len()
        )));
    }
    if cmdline.contains('\0') {
        return Err(Error::Config("the kernel command line contains a NUL byte".into()));
    }
    Ok(cmdline)
}

/// The guest's vCPUs, as its `BootInfo` tells of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    /// How many.
    pub count: u32,
    /// Whether each one's local APIC is set up before it runs
    /// (`arch::lapic`, `PRESET_LAPIC`).
    pub lapic_preset: bool,
}

/// The `BootInfo` for a guest with `ram` bytes and `cpus`.
pub fn boot_info(ram: u64, cmdline: &str, tsc_khz: u64, launch_ns: u64, cpus: Cpus) -> BootInfo {
    let mut bi = BootInfo::new(BootProtocol::Direct);
    bi.cpu_count = cpus.count;
    if cpus.lapic_preset {
        bi.preset |= torito_abi::boot_info::PRESET_LAPIC;
    }
    for (base, len) in ram_ranges(ram) {
        if len > 0 {
            bi.push_region(MemRegion::usable(base, len));
        }
    }
    bi.tsc_khz = tsc_khz;
    bi.page_table_root = PML4_ADDR;
    bi.launch_ns = launch_ns;
    if !cmdline.is_empty() {
        bi.cmdline_addr = CMDLINE_ADDR;
        bi.cmdline_len = cmdline.len() as u64;
    }
    bi
}

/// Write the `BootInfo` and the command line into guest memory;
/// `device_snapshots` follow the `BootInfo` already
/// (`devices::Devices::write_snapshots`).
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    ram: u64,
    cmdline: &str,
    tsc_khz: u64,
    launch_ns: u64,
    cpus: Cpus,
    device_snapshots: u32,
) -> Result<(), Error> {
    let mut bi = boot_info(ram, cmdline, tsc_khz, launch_ns, cpus);
    bi.device_snapshots = device_snapshots;
    bi.boot_realtime_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // Seeds the guest's random numbers (zero if the host gives none: the
    // guest then mixes its TSC and RDRAND/RDSEED alone).
    bi.entropy = crate::vstate::sys::random_u64s().unwrap_or_default();
    let w = |bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at)).map_err(|e| Error::GuestWrite(e.to_string()))
    };
    w(bi.as_bytes(), BOOT_INFO_ADDR)?;
    if !cmdline.is_empty() {
        w(cmdline.as_bytes(), CMDLINE_ADDR)?;
    }
    Ok(())
}

/// Read the milestones the guest recorded (empty if it wrote garbage).
pub fn read_trace(mem: &GuestMemoryMmap) -> Vec<TraceEntry> {
    let mut buf = vec![0u8; std::mem::size_of::<BootInfo>()];
    if mem.read_slice(&mut buf, GuestAddress(BOOT_INFO_ADDR)).is_err() {
        return Vec::new();
    }
    match BootInfo::read_from_bytes(&buf) {
        Ok(bi) if bi.is_valid() => bi.trace_entries().to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_describes_ram_and_cmdline() {
        let bi = boot_info(4 << 30, "a b", 2_500_000, 7, Cpus { count: 2, lapic_preset: true });
        assert_eq!(bi.cpu_count, 2);
        assert_eq!(bi.preset, torito_abi::boot_info::PRESET_LAPIC);
        assert!(bi.is_valid());
        assert_eq!(bi.regions(), &[MemRegion::usable(0, 3 << 30), MemRegion::usable(4 << 30, 1 << 30)]);
        assert_eq!((bi.cmdline_addr, bi.cmdline_len), (CMDLINE_ADDR, 3));
        assert_eq!(bi.tsc_khz, 2_500_000);
        let bi = boot_info(64 << 20, "", 0, 0, Cpus { count: 1, lapic_preset: false });
        assert_eq!(bi.cmdline_addr, 0);
        assert_eq!(bi.preset, 0, "no LAPIC, nothing preset");
        assert_eq!(bi.regions().len(), 1);
    }

    /// Each launch hands the guest 32 fresh random bytes.
    #[test]
    fn every_launch_gets_fresh_entropy() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let read = || {
            write_boot_info(&mem, 16 << 20, "", 0, 0, Cpus { count: 1, lapic_preset: false }, 0).unwrap();
            let mut buf = vec![0u8; std::mem::size_of::<BootInfo>()];
            mem.read_slice(&mut buf, GuestAddress(BOOT_INFO_ADDR)).unwrap();
            BootInfo::read_from_bytes(&buf).unwrap().entropy
        };
        let (a, b) = (read(), read());
        assert_ne!(a, [0; 4]);
        assert_ne!(a, b);
    }

    #[test]
    fn cmdline_limits() {
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX)).is_ok());
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX + 1)).is_err());
        assert!(check_cmdline("a\0b").is_err());
    }
}
