//! The contract between the Torito kernel and the Torito monitor.
//!
//! Both sides depend on this crate, so the layout of every structure that
//! crosses the boundary is defined exactly once. All types are `repr(C)`,
//! fixed-size and free of pointers (guest-physical addresses are `u64`), and
//! derive `zerocopy` traits so the monitor can read and write them in guest
//! memory without `unsafe`.
//!
//! The contract is versioned by [`ABI_VERSION`]: the kernel states the version
//! it was built against in its ELF note ([`note::KernelNote`]), the monitor
//! states its own in [`boot_info::BootInfo`]; each side refuses a version it
//! does not understand. See `docs/design.md` for the whole boot flow.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod boot_info;
pub mod exit;
pub mod layout;
pub mod mmio;
pub mod note;

/// Version of this contract. Bump on any incompatible change.
///
/// v3: several cores (the note's per-core fields, `BootInfo::cpu_count`,
/// the `START_CORES` register). v4: `BootInfo::entropy`. v5: the note's
/// stack guard pages. v6: `BootInfo::preset` (the local APICs set up by
/// the monitor).
pub const ABI_VERSION: u32 = 6;
