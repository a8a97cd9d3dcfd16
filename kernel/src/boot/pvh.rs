//! PVH `hvm_start_info` → `BootInfo`.
//!
//! The layout is Xen's `arch-x86/hvm/start_info.h` (version 1 adds the
//! memory map). Used by Firecracker, Cloud Hypervisor and QEMU.

use torito_abi::boot_info::BootInfo;

use super::{LoaderMem, add_usable};

const MAGIC: u32 = 0x336e_c578;
const RAM: u32 = 1;

/// Fill `bi` from the start_info at `si` (the loader's `ebx`).
pub(super) fn parse(mem: &LoaderMem, si: u64, bi: &mut BootInfo, cmd: &mut [u8]) -> bool {
    if si == 0 {
        return false;
    }
    let magic: u32 = mem.read(si);
    let version: u32 = mem.read(si + 4);
    if magic != MAGIC || version < 1 {
        return false;
    }
    let cmdline: u64 = mem.read(si + 24);
    let memmap: u64 = mem.read(si + 40);
    let entries = mem.read::<u32>(si + 48).min(128);
    for i in 0..u64::from(entries) {
        let e = memmap + i * 24;
        let addr: u64 = mem.read(e);
        let size: u64 = mem.read(e + 8);
        let kind: u32 = mem.read(e + 16);
        if kind == RAM && !add_usable(bi, addr, size) {
            break;
        }
    }
    if cmdline != 0 {
        let n = mem.cstr(cmdline, cmd);
        bi.cmdline_addr = cmd.as_ptr() as u64;
        bi.cmdline_len = n as u64;
    }
    bi.mem_map_len > 0
}

/// The RSDP address the loader gives (0: none), from a start_info that
/// [`parse`] accepted.
#[cfg(feature = "process")]
pub(super) fn rsdp(mem: &LoaderMem, si: u64) -> u64 {
    mem.read(si + 32)
}
