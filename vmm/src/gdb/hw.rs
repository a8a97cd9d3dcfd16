//! gdb's hardware breakpoints and watchpoints as the guest's own debug
//! registers (DR0–DR3 and DR7): their #DB reaches the guest's IDT and the
//! kernel's debug stub hands it over, like a single step.
//!
//! On hardware virtualization KVM loads a guest's debug registers while
//! it runs. On a paravirtual KVM (PVM) they never fire — neither the
//! guest's nor `KVM_SET_GUEST_DEBUG`'s (tried on this project's machine,
//! docs/debugging.md) — so there the stub refuses them and gdb says so
//! at once instead of never stopping; software watchpoints (`set
//! can-use-hw-watchpoints 0`) work everywhere.

use gdbstub::target::ext::breakpoints::WatchKind;

/// What one debug register watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The address.
    pub addr: u64,
    /// Bytes watched: 1, 2, 4 or 8 (1 for an instruction).
    pub len: u64,
    /// `None`: an instruction breakpoint.
    pub watch: Option<WatchKind>,
}

/// The four debug registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slots(pub [Option<Slot>; 4]);

/// Whether this host's KVM is the paravirtual one, where debug registers
/// never fire.
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

impl Slots {
    /// Take a free register for `slot`; `false` when all four are used or
    /// the length or alignment is one x86 cannot watch.
    pub fn add(&mut self, slot: Slot) -> bool {
        if !matches!(slot.len, 1 | 2 | 4 | 8) || !slot.addr.is_multiple_of(slot.len) {
            return false;
        }
        if self.0.contains(&Some(slot)) {
            return true;
        }
        match self.0.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    /// Free the register holding `slot`.
    pub fn remove(&mut self, slot: Slot) -> bool {
        match self.0.iter_mut().find(|s| **s == Some(slot)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// DR0–DR3.
    pub fn addrs(&self) -> [u64; 4] {
        self.0.map(|s| s.map_or(0, |s| s.addr))
    }

    /// DR7: each used register enabled (L*), with its access type and
    /// length; LE/GE for exact data breakpoints.
    pub fn dr7(&self) -> u64 {
        let mut dr7 = 0;
        for (i, s) in self.0.iter().enumerate() {
            let Some(s) = s else { continue };
            let rw: u64 = match s.watch {
                None => 0b00,
                Some(WatchKind::Write) => 0b01,
                // x86 has no read-only watch: reads and writes.
                Some(WatchKind::Read | WatchKind::ReadWrite) => 0b11,
            };
            let len: u64 = match (s.watch, s.len) {
                (None, _) | (_, 1) => 0b00,
                (_, 2) => 0b01,
                (_, 8) => 0b10,
                _ => 0b11,
            };
            dr7 |= 1 << (2 * i) | rw << (16 + 4 * i) | len << (18 + 4 * i);
        }
        if dr7 != 0 {
            dr7 |= 0b11 << 8;
        }
        dr7
    }

    /// The register that fired, from DR6.
    pub fn hit(&self, dr6: u64) -> Option<Slot> {
        (0..4).find(|i| dr6 & (1 << i) != 0).and_then(|i| self.0[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_encodes_each_kind_and_length() {
        let mut s = Slots::default();
        assert_eq!(s.dr7(), 0);
        assert!(s.add(Slot { addr: 0x1000, len: 1, watch: None }));
        assert_eq!(s.dr7(), 0x301);
        assert!(s.add(Slot { addr: 0x2000, len: 4, watch: Some(WatchKind::Write) }));
        // DR1: L1, RW=01, LEN=11.
        assert_eq!(s.dr7(), 0x301 | 1 << 2 | 0b01 << 20 | 0b11 << 22);
        assert!(s.add(Slot { addr: 0x3000, len: 8, watch: Some(WatchKind::Read) }));
        assert_eq!(s.dr7() >> 24 & 0xf, 0b1011);
        assert_eq!(s.addrs(), [0x1000, 0x2000, 0x3000, 0]);
        assert_eq!(s.hit(0b100), s.0[2]);
        assert_eq!(s.hit(0), None);
    }

    #[test]
    fn four_registers_and_aligned_lengths_only() {
        let mut s = Slots::default();
        for i in 0..4 {
            assert!(s.add(Slot { addr: 0x1000 + 8 * i, len: 8, watch: Some(WatchKind::Write) }));
        }
        assert!(!s.add(Slot { addr: 0x2000, len: 1, watch: None }), "a fifth");
        assert!(s.remove(Slot { addr: 0x1008, len: 8, watch: Some(WatchKind::Write) }));
        assert!(!s.add(Slot { addr: 0x2001, len: 2, watch: Some(WatchKind::Write) }), "unaligned");
        assert!(!s.add(Slot { addr: 0x2000, len: 3, watch: Some(WatchKind::Write) }), "odd length");
        assert!(s.add(Slot { addr: 0x2000, len: 2, watch: Some(WatchKind::Write) }));
        assert_eq!(s.0[1].map(|s| s.addr), Some(0x2000), "the freed register is reused");
    }
}
