//! Architecture-specific boot set-up. Torito runs on x86-64 only; the
//! layer is here so that the rest of the monitor names no register.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;
