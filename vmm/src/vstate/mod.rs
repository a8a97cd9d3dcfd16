//! KVM state: every KVM ioctl and all of the monitor's `unsafe` code, each
//! block with its `// SAFETY:` comment. The rest of the monitor is safe
//! code over these types.
//!
//! - [`kvm`]: the KVM device.
//! - [`vm`]: a VM: its interrupt controller, ioeventfds, MSIs, vCPU creation.
//! - [`memory`]: guest RAM and its KVM memory slots (some deferred).
//! - [`vcpu`]: a vCPU: registers, `KVM_RUN`, statistics, and the signals
//!   that stop it (kicks between vCPUs, the timeout).
//! - [`sys`]: host calls that are not KVM's (clock, `poll`, `TUNSETIFF`,
//!   `mincore`).
//! - [`sigsys`]: a forbidden system call's one line, then `SIGSYS`.
//! - [`heap`]: the monitor's allocator (frees held back during a launch).
//! - [`keeper`]: the process that frees the address space after the
//!   monitor's exit.

pub mod heap;
pub mod keeper;
pub mod kvm;
pub mod memory;
pub mod sigsys;
pub mod sys;
pub mod vcpu;
pub mod vm;

pub use kvm::Kvm;
pub use memory::{BOOT_SLOT, DeferredRam, Pagemap, host_range, map_file, populate};
pub use vcpu::{Vcpu, VcpuThreads};
pub use vm::{Farewell, Vm};
