//! Multiboot1 information → `BootInfo`.
//!
//! Reads the memory map (`mmap_*`, or `mem_lower`/`mem_upper` when the
//! loader gives no map) and the command line. Multiboot loaders put the
//! kernel's own path first on the command line (QEMU: "`<file> <-append>`",
//! GRUB: "`<path> <args>`"); that first word is dropped so the kernel sees
//! the same command line on every host.

use torito_abi::boot_info::BootInfo;

use super::{LoaderMem, add_usable};

const FLAG_MEM: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MMAP: u32 = 1 << 6;

/// Fill `bi` from the multiboot information at `mbi` (the loader's `ebx`).
pub(super) fn parse(mem: &LoaderMem, mbi: u64, bi: &mut BootInfo, cmd: &mut [u8]) -> bool {
    if mbi == 0 {
        return false;
    }
    let flags: u32 = mem.read(mbi);
    if flags & FLAG_MMAP != 0 {
        let addr = u64::from(mem.read::<u32>(mbi + 48));
        let len = u64::from(mem.read::<u32>(mbi + 44));
        let mut p = addr;
        while p + 24 <= addr + len {
            let size = u64::from(mem.read::<u32>(p));
            let base: u64 = mem.read(p + 4);
            let length: u64 = mem.read(p + 12);
            let kind: u32 = mem.read(p + 20);
            if kind == 1 && !add_usable(bi, base, length) {
                break;
            }
            if size == 0 {
                break;
            }
            p += size + 4;
        }
    } else if flags & FLAG_MEM != 0 {
        let lower = u64::from(mem.read::<u32>(mbi + 4));
        let upper = u64::from(mem.read::<u32>(mbi + 8));
        add_usable(bi, 0, lower * 1024);
        add_usable(bi, 0x10_0000, upper * 1024);
    } else {
        return false;
    }
    if flags & FLAG_CMDLINE != 0 {
        let addr = u64::from(mem.read::<u32>(mbi + 16));
        if addr != 0 {
            let n = mem.cstr(addr, cmd);
            let line = &cmd[..n];
            let skip = line.iter().position(|&c| c == b' ').map_or(n, |i| i + 1);
            bi.cmdline_addr = cmd.as_ptr() as u64 + skip as u64;
            bi.cmdline_len = (n - skip) as u64;
        }
    }
    true
}
