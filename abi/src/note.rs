//! The Torito ELF note: how the monitor finds the kernel's direct entry.
//!
//! The kernel carries a note named [`NOTE_NAME`] of type [`NOTE_TYPE`] in a
//! `PT_NOTE` segment. Its descriptor is a [`KernelNote`]. The descriptor
//! tables it names (GDT, IDT, TSS) are laid out by the kernel at link time;
//! the monitor only points the vCPU's registers at them and builds the page
//! tables (whose size depends on the guest RAM).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Note name, without the terminating NUL.
pub const NOTE_NAME: &[u8] = b"Torito";
/// Note type of the [`KernelNote`].
pub const NOTE_TYPE: u32 = 0x5430_0001;

/// Descriptor of the Torito note. Offsets are part of the ABI (the kernel
/// writes this structure from assembly).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct KernelNote {
    /// [`crate::ABI_VERSION`] the kernel was built against.
    pub abi_version: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// Direct 64-bit entry, entered at CPL3 with `rdi` = BootInfo address.
    pub entry: u64,
    /// Initial CPL3 stack pointer (16-byte aligned top of stack).
    pub stack_top: u64,
    /// GDT base address.
    pub gdt_base: u64,
    /// IDT base address.
    pub idt_base: u64,
    /// TSS base address.
    pub tss_base: u64,
    /// GDT limit (size - 1).
    pub gdt_limit: u16,
    /// IDT limit (size - 1).
    pub idt_limit: u16,
    /// TSS limit (size - 1).
    pub tss_limit: u16,
    /// Selector of the TSS descriptor in the GDT.
    pub tss_selector: u16,
    /// Selector of the 64-bit CPL3 code segment (RPL 3 included).
    pub user_cs: u16,
    /// Selector of the CPL3 data/stack segment (RPL 3 included).
    pub user_ss: u16,
    /// Guest-physical address of a `PT_LOAD` segment that only the 32-bit
    /// entries (multiboot, PVH) use: their link-time page tables. The
    /// direct entry does not need it and the monitor does not load it.
    /// 0: none.
    pub boot_tables: u32,
    /// End of the kernel image in memory (end of `.bss`).
    pub image_end: u64,
    /// Entry of secondary cores (ABI v3), entered at CPL3 like `entry` with
    /// `rdi` = BootInfo address and `rsi` = core index; the kernel loads its
    /// own stack there. 0: the kernel runs on one core only.
    pub ap_entry: u64,
    /// Address of core 0's per-core block; core `i`'s is at
    /// `percpu_base + i * percpu_stride`. The monitor points each vCPU's GS
    /// base at its block.
    pub percpu_base: u64,
    /// Bytes between per-core blocks.
    pub percpu_stride: u32,
    /// Number of cores the kernel has per-core state (TSS, stacks) for.
    pub max_cores: u16,
    /// Bytes between per-core TSSs (core `i`'s TSS is at
    /// `tss_base + i * tss_stride`, its GDT selector
    /// `tss_selector + 16 * i`).
    pub tss_stride: u16,
    /// Guest-physical address of a table of `stack_guard_count` `u64`s
    /// (ABI v5): the pages below the kernel's static stacks (boot, fault
    /// report, each core's CPL0 and double-fault stacks), which must stay
    /// unmapped so that an overflow faults. The monitor leaves them out of
    /// the page tables it builds (the kernel does nothing about them on the
    /// direct entry). 0: none.
    pub stack_guards: u64,
    /// Entries in the `stack_guards` table (at most [`MAX_STACK_GUARDS`]).
    pub stack_guard_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Most entries a `stack_guards` table may have.
pub const MAX_STACK_GUARDS: u32 = 64;

/// Size of the descriptor in bytes.
pub const KERNEL_NOTE_SIZE: usize = core::mem::size_of::<KernelNote>();

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offsets_match_the_assembly_writer() {
        assert_eq!(offset_of!(KernelNote, entry), 8);
        assert_eq!(offset_of!(KernelNote, stack_top), 16);
        assert_eq!(offset_of!(KernelNote, gdt_base), 24);
        assert_eq!(offset_of!(KernelNote, idt_base), 32);
        assert_eq!(offset_of!(KernelNote, tss_base), 40);
        assert_eq!(offset_of!(KernelNote, gdt_limit), 48);
        assert_eq!(offset_of!(KernelNote, user_ss), 58);
        assert_eq!(offset_of!(KernelNote, boot_tables), 60);
        assert_eq!(offset_of!(KernelNote, image_end), 64);
        assert_eq!(offset_of!(KernelNote, ap_entry), 72);
        assert_eq!(offset_of!(KernelNote, percpu_base), 80);
        assert_eq!(offset_of!(KernelNote, percpu_stride), 88);
        assert_eq!(offset_of!(KernelNote, max_cores), 92);
        assert_eq!(offset_of!(KernelNote, tss_stride), 94);
        assert_eq!(offset_of!(KernelNote, stack_guards), 96);
        assert_eq!(offset_of!(KernelNote, stack_guard_count), 104);
        assert_eq!(KERNEL_NOTE_SIZE, 112);
    }
}
