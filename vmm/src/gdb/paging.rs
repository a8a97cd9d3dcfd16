//! Guest-virtual to guest-physical addresses, by walking the guest's
//! 4-level page tables from CR3 as the CPU does (1 GiB and 2 MiB pages
//! included). gdb asks for memory by virtual address; the kernel
//! identity-maps most of it but not all (unmapped guard pages, the
//! per-core blocks), so the stub walks rather than assumes.
//!
//! KVM_TRANSLATE would do it in the kernel, but it is not implemented on
//! every KVM (paravirtual hosts among them): the walk is a dozen lines.

/// Bits 12–51 of an entry: the next table or the page.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;

/// The guest-physical address of `va` under the tables at `cr3`, reading
/// 8-byte table entries with `read` (a guest-physical address to its
/// value, `None` outside RAM). `None` when `va` is not mapped or not
/// canonical.
pub fn translate(read: impl Fn(u64) -> Option<u64>, cr3: u64, va: u64) -> Option<u64> {
    let canonical = ((va as i64) << 16 >> 16) as u64 == va;
    if !canonical {
        return None;
    }
    let mut table = cr3 & ADDR_MASK;
    // (shift of the level's index, whether the level may map a page)
    for (shift, leaf_ok) in [(39, false), (30, true), (21, true), (12, true)] {
        let index = (va >> shift) & 0x1ff;
        let entry = read(table + index * 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let base = entry & ADDR_MASK;
        if shift == 12 || (leaf_ok && entry & HUGE != 0) {
            let size = 1u64 << shift;
            return Some((base & !(size - 1)) | (va & (size - 1)));
        }
        table = base;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD), 0x4000 (PT).
    fn tables() -> HashMap<u64, u64> {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2000 | 3); // PML4[0]
        m.insert(0x2000, 0x3000 | 3); // PDPT[0] -> PD
        m.insert(0x2000 + 8, 0x4000_0000 | 0x83); // PDPT[1]: 1 GiB page
        m.insert(0x3000, 0x4000 | 3); // PD[0] -> PT
        m.insert(0x3000 + 8, 0x20_0000 | 0x83); // PD[1]: 2 MiB page
        m.insert(0x4000 + 8 * 0x10, 0x7_7000 | 3); // PT[0x10]: 4 KiB page
        m
    }

    #[test]
    fn each_page_size_translates() {
        let m = tables();
        let read = |a: u64| m.get(&a).copied().or(Some(0));
        assert_eq!(translate(read, 0x1000, 0x1_0123), Some(0x7_7123));
        assert_eq!(translate(read, 0x1000, 0x23_4567), Some(0x23_4567));
        assert_eq!(translate(read, 0x1000, 0x4123_4567), Some(0x4123_4567));
    }

    #[test]
    fn holes_and_non_canonical_addresses_are_none() {
        let m = tables();
        let read = |a: u64| m.get(&a).copied().or(Some(0));
        assert_eq!(translate(read, 0x1000, 0x1_1000), None); // PT entry absent
        assert_eq!(translate(read, 0x1000, 0x80_0000_0000), None); // PML4[1] absent
        assert_eq!(translate(read, 0x1000, 0x8000_0000_0000), None); // not canonical
        assert_eq!(translate(|_| None, 0x1000, 0x1000), None); // tables outside RAM
    }
}
