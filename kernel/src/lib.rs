//! The Torito kernel.
//!
//! An app links this crate and its selected units into one ELF that boots
//! on the Torito monitor (direct 64-bit entry at CPL3), on QEMU (multiboot1,
//! or PVH with the `no-multiboot` feature) and on Firecracker (PVH).
//!
//! ```ignore
//! #![cfg_attr(not(test), no_std)]
//! #![no_main]
//! kernel::entry!(main);
//! fn main() -> i32 {
//!     kernel::println!("hello");
//!     0
//! }
//! ```
//!
//! Units are chosen with this crate's Cargo features (Toro's `uses` clause):
//! `memory` is always in; `process`, `fs`, `net` and `devices` only when
//! named. `unsafe` code lives in [`arch`], `boot`, `memory` and `app` only.

#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[allow(unsafe_code)]
mod app;
#[allow(unsafe_code)]
pub mod arch;
#[allow(unsafe_code)]
mod boot;
pub mod console;
pub mod exit;
mod init;
pub mod io;
mod logger;
#[allow(unsafe_code)]
pub mod memory;
mod panic;
pub mod random;

pub use app::Termination;
pub use boot::{cmdline, kernel_main};
pub use exit::exit;
#[doc(inline)]
pub use torito_abi as abi;

#[cfg(feature = "devices")]
#[doc(inline)]
pub use unit_devices as devices;
#[cfg(feature = "fs")]
#[doc(inline)]
pub use unit_fs as fs;
#[cfg(feature = "net")]
#[doc(inline)]
pub use unit_net as net;
#[cfg(feature = "process")]
#[doc(inline)]
pub use unit_process as process;

pub extern crate alloc;

/// Logging with levels (`kernel::log::info!(…)`), printed on the console;
/// `torito.log=LEVEL` on the command line sets the level (default `info`).
pub use log;

// On the host (`cargo check`, an IDE, an app's unit tests) the kernel links
// std: its allocator, its panic handler and its console stand in for the
// guest's. Nothing boots there; see `host`.
#[cfg(not(target_os = "none"))]
extern crate std;
#[cfg(not(target_os = "none"))]
#[doc(hidden)]
pub mod host;

/// How this kernel was booted.
pub fn boot_protocol() -> abi::boot_info::BootProtocol {
    boot::protocol()
}

/// The boot information: memory map, command line, TSC frequency.
pub fn boot_info() -> &'static abi::boot_info::BootInfo {
    boot::info()
}

/// The words of the command line.
pub fn args() -> impl Iterator<Item = &'static str> {
    cmdline().split_ascii_whitespace()
}

/// Declare the app's entry point: `kernel::entry!(main)` where `main` is a
/// `fn() -> T` and `T` is `()`, `i32` or `Result<(), E: Debug>`. With the
/// filesystem unit it also bakes the app's files into the ELF (see
/// `torito_linker::files`).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        extern "Rust" fn __torito_app_main() -> i32 {
            $crate::Termination::report($main())
        }
        $crate::__torito_files!();
        /// Built for the host (`cargo build` outside `cargo xtask`): say
        /// how to boot the app.
        #[cfg(all(not(target_os = "none"), not(test)))]
        const _: () = {
            #[allow(unsafe_code)]
            #[unsafe(no_mangle)]
            extern "C" fn main() -> i32 {
                $crate::host::main(env!("CARGO_PKG_NAME"))
            }
        };
    };
}

/// The app's files, as `torito_linker::link` packed them into the build
/// script's `OUT_DIR` (with the filesystem unit only).
#[cfg(feature = "fs")]
#[doc(hidden)]
#[macro_export]
macro_rules! __torito_files {
    () => {
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        extern "Rust" fn __torito_app_files() -> &'static [u8] {
            include_bytes!(concat!(env!("OUT_DIR"), "/torito-files.cpio"))
        }
    };
}

/// Nothing: the app does not use the filesystem unit.
#[cfg(not(feature = "fs"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __torito_files {
    () => {};
}
