//! x86-64 specifics of the direct 64-bit entry: what the monitor writes
//! into the guest before it runs (page tables, boot information), the
//! vCPU's first registers, its CPUID table and its local APIC's set-up. Pure functions and data:
//! the KVM calls that apply them are in `vstate`.

pub mod boot_info;
pub mod cpuid;
pub mod lapic;
pub mod paging;
pub mod regs;
