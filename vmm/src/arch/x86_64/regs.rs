//! The vCPU's registers at the direct 64-bit entry: long mode at CPL3 at
//! the kernel's entry, with the kernel's own GDT, IDT and TSS, laid out at
//! link time and named by its ELF note. No guest instruction runs at CPL0
//! before `kernel_main`.

use torito_abi::layout::{BOOT_INFO_ADDR, PML4_ADDR};
use torito_abi::note::KernelNote;

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
