//! The direct 64-bit entry: page tables, boot information and the vCPU's
//! initial registers.
//!
//! The monitor writes only what depends on the run (page tables sized to
//! the RAM, the `BootInfo`, the command line). The GDT, IDT and TSS are the
//! kernel's own, laid out at link time and named by its ELF note; the vCPU
//! starts at CPL3 at the note's entry, so no guest instruction runs at CPL0
//! before `kernel_main`.

use torito_abi::boot_info::{BootInfo, BootProtocol, MemRegion, TraceEntry};
use torito_abi::layout::{
    BOOT_INFO_ADDR, CMDLINE_ADDR, CMDLINE_MAX, LARGE_PAGE_SIZE, PAGE_SIZE, PD_BASE_ADDR, PDPT_ADDR,
    PML4_ADDR, PT0_ADDR, mapped_end, ram_ranges,
};
use torito_abi::note::KernelNote;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::Error;

/// Present, writable, user-accessible.
const PTE_PWU: u64 = 0x7;
/// Large page (in a page directory).
const PTE_PS: u64 = 0x80;

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

/// The page tables for `ram` bytes: an identity map of
/// `[0, mapped_end(ram))`, 2 MiB pages except the first 2 MiB (4 KiB pages
/// with page 0 absent). Returns `(guest address, table)` pairs.
pub fn page_tables(ram: u64) -> Vec<(u64, Vec<u64>)> {
    let gib = mapped_end(ram).div_ceil(1 << 30);
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_ADDR | PTE_PWU;
    let mut pdpt = vec![0u64; 512];
    let mut tables = Vec::with_capacity(3 + gib as usize);
    for g in 0..gib {
        let pd_addr = PD_BASE_ADDR + g * PAGE_SIZE;
        pdpt[g as usize] = pd_addr | PTE_PWU;
        let pd: Vec<u64> =
            (0..512u64).map(|i| ((g << 30) + i * LARGE_PAGE_SIZE) | PTE_PWU | PTE_PS).collect();
        tables.push((pd_addr, pd));
    }
    tables[0].1[0] = PT0_ADDR | PTE_PWU;
    let pt0: Vec<u64> = (0..512u64).map(|i| if i == 0 { 0 } else { (i * PAGE_SIZE) | PTE_PWU }).collect();
    tables.push((PML4_ADDR, pml4));
    tables.push((PDPT_ADDR, pdpt));
    tables.push((PT0_ADDR, pt0));
    tables
}

/// Write [`page_tables`] into guest memory.
pub fn write_page_tables(mem: &GuestMemoryMmap, ram: u64) -> Result<(), Error> {
    for (addr, table) in page_tables(ram) {
        mem.write_slice(table.as_bytes(), GuestAddress(addr))
            .map_err(|e| Error::GuestWrite(e.to_string()))?;
    }
    Ok(())
}

/// The `BootInfo` for a guest with `ram` bytes and `cpus` vCPUs.
pub fn boot_info(ram: u64, cmdline: &str, tsc_khz: u64, launch_ns: u64, cpus: u32) -> BootInfo {
    let mut bi = BootInfo::new(BootProtocol::Direct);
    bi.cpu_count = cpus;
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

/// Write the `BootInfo` and the command line into guest memory.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    ram: u64,
    cmdline: &str,
    tsc_khz: u64,
    launch_ns: u64,
    cpus: u32,
) -> Result<(), Error> {
    let mut bi = boot_info(ram, cmdline, tsc_khz, launch_ns, cpus);
    bi.boot_realtime_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
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

/// A segment register as KVM wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Type field.
    pub type_: u8,
    /// Privilege level.
    pub dpl: u8,
    /// Code/data (1) or system (0).
    pub s: u8,
    /// 64-bit code.
    pub l: u8,
    /// Default operand size.
    pub db: u8,
    /// Granularity.
    pub g: u8,
}

/// Initial vCPU state for the direct entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRegisters {
    /// Instruction pointer: the note's entry (`kernel_main`).
    pub rip: u64,
    /// Stack pointer: as if `kernel_main` had been called.
    pub rsp: u64,
    /// First argument: the `BootInfo` address.
    pub rdi: u64,
    /// Second argument: the core index.
    pub rsi: u64,
    /// GS base: the core's per-core block (0 if the kernel has none).
    pub gs_base: u64,
    /// Flags: IF set, so interrupts reach CPL3 once a source is set up.
    pub rflags: u64,
    /// CS: 64-bit code at DPL3.
    pub cs: Segment,
    /// SS, DS, ES, FS, GS: data at DPL3.
    pub data: Segment,
    /// TR: the kernel's TSS (RSP0 for CPL3 → CPL0 entries).
    pub tr: Segment,
    /// GDTR base and limit.
    pub gdt: (u64, u16),
    /// IDTR base and limit.
    pub idt: (u64, u16),
    /// CR0: PE, MP, ET, NE, WP, PG.
    pub cr0: u64,
    /// CR3: the PML4.
    pub cr3: u64,
    /// CR4: PAE.
    pub cr4: u64,
    /// EFER: LME, LMA.
    pub efer: u64,
}

/// The registers of vCPU `core` for the direct 64-bit entry described by
/// `note`: core 0 starts at `entry` on the note's stack, the others at
/// `ap_entry` (which loads its own stack); each has its own TSS and GS base.
pub fn registers(note: &KernelNote, core: u32) -> BootRegisters {
    let c = u64::from(core);
    let (rip, rsp) = if core == 0 { (note.entry, note.stack_top - 8) } else { (note.ap_entry, 0) };
    BootRegisters {
        rip,
        rsp,
        rdi: BOOT_INFO_ADDR,
        rsi: c,
        gs_base: if note.percpu_base == 0 { 0 } else { note.percpu_base + c * u64::from(note.percpu_stride) },
        rflags: 0x202,
        cs: Segment {
            selector: note.user_cs,
            base: 0,
            limit: 0xffff_ffff,
            type_: 0xb,
            dpl: 3,
            s: 1,
            l: 1,
            db: 0,
            g: 1,
        },
        data: Segment {
            selector: note.user_ss,
            base: 0,
            limit: 0xffff_ffff,
            type_: 0x3,
            dpl: 3,
            s: 1,
            l: 0,
            db: 1,
            g: 1,
        },
        tr: Segment {
            selector: note.tss_selector + 16 * core as u16,
            base: note.tss_base + c * u64::from(note.tss_stride),
            limit: u32::from(note.tss_limit),
            type_: 0xb,
            dpl: 0,
            s: 0,
            l: 0,
            db: 0,
            g: 0,
        },
        gdt: (note.gdt_base, note.gdt_limit),
        idt: (note.idt_base, note.idt_limit),
        cr0: 0x8001_0033,
        cr3: PML4_ADDR,
        cr4: 0x20,
        efer: 0x500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tables: &[(u64, Vec<u64>)], addr: u64, i: usize) -> u64 {
        tables.iter().find(|(a, _)| *a == addr).unwrap().1[i]
    }

    /// Walk the tables like the MMU does.
    fn translate(tables: &[(u64, Vec<u64>)], va: u64) -> Option<u64> {
        let pml4e = entry(tables, PML4_ADDR, ((va >> 39) & 511) as usize);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = entry(tables, pml4e & !0xfff, ((va >> 30) & 511) as usize);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = entry(tables, pdpte & !0xfff, ((va >> 21) & 511) as usize);
        if pde & 1 == 0 {
            return None;
        }
        assert_eq!(pde & 4, 4, "user bit");
        if pde & PTE_PS != 0 {
            return Some((pde & !0x1f_ffff & !PTE_PS & !0xfff) + (va & 0x1f_ffff));
        }
        let pte = entry(tables, pde & !0xfff, ((va >> 12) & 511) as usize);
        if pte & 1 == 0 { None } else { Some((pte & !0xfff) + (va & 0xfff)) }
    }

    #[test]
    fn identity_map_with_a_null_guard() {
        let t = page_tables(128 << 20);
        assert_eq!(translate(&t, 0), None);
        assert_eq!(translate(&t, 0xfff), None);
        for va in [0x1000, 0x10_0123, 0x20_0000, 0x7ff_ffff, 0xc000_0008, 0xffff_f000] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 1 << 32), None);
    }

    #[test]
    fn large_guests_map_ram_above_4g() {
        let t = page_tables(4 << 30);
        assert_eq!(translate(&t, (5 << 30) - 8), Some((5 << 30) - 8));
        assert_eq!(translate(&t, 5 << 30), None);
        // Every table fits below the kernel.
        assert!(t.iter().all(|(a, v)| a + v.len() as u64 * 8 <= torito_abi::layout::KERNEL_BASE));
    }

    #[test]
    fn boot_info_describes_ram_and_cmdline() {
        let bi = boot_info(4 << 30, "a b", 2_500_000, 7, 2);
        assert_eq!(bi.cpu_count, 2);
        assert!(bi.is_valid());
        assert_eq!(bi.regions(), &[MemRegion::usable(0, 3 << 30), MemRegion::usable(4 << 30, 1 << 30)]);
        assert_eq!((bi.cmdline_addr, bi.cmdline_len), (CMDLINE_ADDR, 3));
        assert_eq!(bi.tsc_khz, 2_500_000);
        let bi = boot_info(64 << 20, "", 0, 0, 1);
        assert_eq!(bi.cmdline_addr, 0);
        assert_eq!(bi.regions().len(), 1);
    }

    #[test]
    fn cmdline_limits() {
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX)).is_ok());
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX + 1)).is_err());
        assert!(check_cmdline("a\0b").is_err());
    }

    #[test]
    fn registers_start_at_cpl3() {
        let note = crate::loader::check(&crate::loader::tests::tiny_elf()[..], 16 << 20).unwrap().note;
        let r = registers(&note, 0);
        assert_eq!(r.cs.dpl, 3);
        assert_eq!(r.cs.selector & 3, 3);
        assert_eq!(r.data.selector & 3, 3);
        assert_eq!(r.cs.l, 1);
        assert_eq!(r.rip, note.entry);
        assert_eq!(r.rsp % 16, 8);
        assert_eq!(r.rdi, BOOT_INFO_ADDR);
        assert_eq!(r.cr0 & 0x8000_0001, 0x8000_0001);
        assert_eq!(r.efer, 0x500);
    }

    #[test]
    fn secondary_cores_get_their_own_tss_and_block() {
        let mut note = crate::loader::check(&crate::loader::tests::tiny_elf()[..], 16 << 20).unwrap().note;
        note.ap_entry = 0x10_2000;
        note.percpu_base = 0x10_3000;
        note.percpu_stride = 64;
        note.tss_stride = 128;
        let r = registers(&note, 2);
        assert_eq!((r.rip, r.rsi), (0x10_2000, 2));
        assert_eq!(r.gs_base, 0x10_3000 + 128);
        assert_eq!(r.tr.selector, note.tss_selector + 32);
        assert_eq!(r.tr.base, note.tss_base + 256);
        assert_eq!(registers(&note, 0).gs_base, 0x10_3000);
    }
}
