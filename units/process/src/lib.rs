//! Torito process unit: threads, per-core cooperative scheduling, time, SMP.
//!
//! Status: not started (the process issue). The design is Toro's: each core
//! runs its own queue of cooperative threads, threads are created on a chosen
//! core and stay there, cores exchange messages without locks, and an idle
//! core halts until an interrupt. Nothing here pretends to schedule yet; the
//! only item is the core identifier type the API will use.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Identifier of a CPU core, 0 for the boot core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub u32);
