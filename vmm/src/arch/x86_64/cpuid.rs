//! The guest's CPUID table.
//!
//! `KVM_GET_SUPPORTED_CPUID` costs 0.3–0.5 ms on some hosts, a quarter of a
//! whole launch. The guest needs little: the vendor, the basic feature bits
//! a 64-bit kernel may test, long mode, address sizes and the KVM signature.
//! So the table is built from the host's own CPUID (a few instructions),
//! masked down to features KVM supports on every x86-64 host. Leaves the
//! table does not list read as zero in the guest.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};

/// Feature bits of leaf 1 EDX kept from the host: FPU, TSC, MSR, PAE, CX8,
/// APIC, SEP, PGE, CMOV, PAT, CLFLUSH, FXSR, SSE, SSE2.
const LEAF1_EDX: u32 = (1 << 0)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 19)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
/// Leaf 1 ECX kept: SSE3, SSSE3, CX16, SSE4.1, SSE4.2, POPCNT.
const LEAF1_ECX: u32 = (1 << 0) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23);
/// Leaf 1 ECX bit 24: the LAPIC timer's TSC-deadline mode. KVM emulates it
/// in its in-kernel LAPIC (the split irqchip), whatever the host CPU has.
const TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x80000001 EDX kept: SYSCALL, NX, RDTSCP, LM.
const EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 27) | (1 << 29);
/// Leaf 0x80000001 ECX kept: LAHF/SAHF in 64-bit mode.
const EXT1_ECX: u32 = 1;

/// A CPUID result `(eax, ebx, ecx, edx)`.
pub type Regs = (u32, u32, u32, u32);

fn entry(function: u32, (eax, ebx, ecx, edx): Regs) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 { function, index: 0, flags: 0, eax, ebx, ecx, edx, ..Default::default() }
}

/// The entries of vCPU `apic_id`, computed from `host(leaf)`; `lapic`: the
/// VM has an in-kernel LAPIC (then its TSC-deadline mode is advertised).
pub fn entries(host: impl Fn(u32) -> Regs, lapic: bool, apic_id: u8) -> Vec<kvm_cpuid_entry2> {
    let (_, vb, vc, vd) = host(0);
    let (sig, _, c1, d1) = host(1);
    let max_ext = host(0x8000_0000).0;
    let (_, _, ec1, ed1) = if max_ext >= 0x8000_0001 { host(0x8000_0001) } else { (0, 0, 0, 0) };
    let sizes = if max_ext >= 0x8000_0008 { host(0x8000_0008).0 & 0xffff } else { 0x3028 };
    let kvm = u32::from_le_bytes(*b"KVMK");
    let vm = u32::from_le_bytes(*b"VMKV");
    let m = u32::from_le_bytes(*b"M\0\0\0");
    vec![
        entry(0, (1, vb, vc, vd)),
        // ebx: initial APIC ID, CLFLUSH line 64 bytes.
        entry(
            1,
            (
                sig,
                (u32::from(apic_id) << 24) | (8 << 8),
                (c1 & LEAF1_ECX) | HYPERVISOR | if lapic { TSC_DEADLINE } else { 0 },
                d1 & LEAF1_EDX,
            ),
        ),
        entry(0x4000_0000, (0x4000_0001, kvm, vm, m)),
        entry(0x4000_0001, (0, 0, 0, 0)),
        entry(0x8000_0000, (0x8000_0008, 0, 0, 0)),
        entry(0x8000_0001, (0, 0, ec1 & EXT1_ECX, (ed1 & EXT1_EDX) | (1 << 29))),
        entry(0x8000_0008, (sizes, 0, 0, 0)),
    ]
}

/// The table in the form `KVM_SET_CPUID2` takes.
pub fn table(host: impl Fn(u32) -> Regs, lapic: bool, apic_id: u8) -> CpuId {
    let e = entries(host, lapic, apic_id);
    debug_assert!(e.len() <= KVM_MAX_CPUID_ENTRIES);
    // The entry count is far below the wrapper's limit.
    CpuId::from_entries(&e).unwrap_or_else(|_| CpuId::new(0).expect("an empty CPUID table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(leaf: u32) -> Regs {
        match leaf {
            0 => (0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            1 => (0x00a0_0f11, 0x1234_5678, 0xffff_ffff, 0xffff_ffff),
            0x8000_0000 => (0x8000_0021, 0, 0, 0),
            0x8000_0001 => (0, 0, 0xffff_ffff, 0xffff_ffff),
            0x8000_0008 => (0x0000_3030, 0, 0, 0),
            _ => (0, 0, 0, 0),
        }
    }

    #[test]
    fn keeps_vendor_and_masks_features() {
        let e = entries(fake, true, 3);
        let find = |f: u32| *e.iter().find(|x| x.function == f).unwrap();
        assert_eq!(find(1).ebx >> 24, 3, "initial APIC ID");
        assert_eq!(find(0).eax, 1);
        assert_eq!(find(0).ebx, 0x6874_7541);
        assert_eq!(find(1).edx, LEAF1_EDX);
        assert_eq!(find(1).ecx, LEAF1_ECX | HYPERVISOR | TSC_DEADLINE);
        assert_ne!(find(0x8000_0001).edx & (1 << 29), 0, "long mode");
        assert_eq!(find(0x8000_0008).eax, 0x3030);
        assert_eq!(&find(0x4000_0000).ebx.to_le_bytes(), b"KVMK");
    }

    #[test]
    fn old_hosts_still_get_long_mode_and_sizes() {
        let e =
            entries(|leaf| if leaf == 0x8000_0000 { (0x8000_0000, 0, 0, 0) } else { fake(leaf) }, false, 0);
        let find = |f: u32| *e.iter().find(|x| x.function == f).unwrap();
        assert_ne!(find(0x8000_0001).edx & (1 << 29), 0);
        assert_eq!(find(0x8000_0008).eax, 0x3028);
        assert_eq!(table(fake, false, 0).as_slice().len(), e.len());
        assert_eq!(find(1).ecx & TSC_DEADLINE, 0, "no LAPIC, no TSC deadline");
    }
}
