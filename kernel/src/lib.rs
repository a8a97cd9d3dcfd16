//! The Torito kernel.
//!
//! An app links this crate and its selected units into one ELF that boots
//! on the Torito monitor (direct 64-bit entry at CPL3), on QEMU (multiboot1,
//! or PVH with the `no-multiboot` feature) and on Firecracker (PVH).
//!
//! ```ignore
//! #![no_std]
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

/// Logging with levels, printed on the console: `kernel::log::info!(…)`
/// and `error!`, `warn!`, `debug!`, `trace!` (over the `log` crate).
/// `torito.log=LEVEL` on the command line sets the most detailed level
/// shown (default `info`). The logger is set up at the first message, so an
/// app that never logs pays nothing at boot; an app whose libraries log
/// through the `log` crate themselves calls [`log::init`] first.
pub mod log {
    #[doc(hidden)]
    pub use ::log as __log;
    pub use ::log::{Level, LevelFilter};

    pub use crate::{
        __log_debug as debug, __log_error as error, __log_info as info, __log_trace as trace,
        __log_warn as warn,
    };

    /// Set the console logger up now (the first `kernel::log` message
    /// does it otherwise): for libraries that call the `log` crate directly.
    pub fn init() {
        crate::logger::ensure();
    }

    #[doc(hidden)]
    pub fn __ensure() {
        crate::logger::ensure();
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:ident, $($arg:tt)+) => {{
        $crate::log::__ensure();
        $crate::log::__log::$level!($($arg)+)
    }};
}

/// An error message (see [`log`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error { ($($arg:tt)+) => { $crate::__log_at!(error, $($arg)+) }; }
/// A warning (see [`log`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn { ($($arg:tt)+) => { $crate::__log_at!(warn, $($arg)+) }; }
/// An informative message (see [`log`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info { ($($arg:tt)+) => { $crate::__log_at!(info, $($arg)+) }; }
/// A debugging message (see [`log`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug { ($($arg:tt)+) => { $crate::__log_at!(debug, $($arg)+) }; }
/// A tracing message (see [`log`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace { ($($arg:tt)+) => { $crate::__log_at!(trace, $($arg)+) }; }

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
            // In a segment of their own (`linker/torito.ld`), after the
            // code and data: the monitor warms up the image, not these.
            #[cfg_attr(target_os = "none", unsafe(link_section = ".torito_files"))]
            static FILES: [u8; include_bytes!(concat!(env!("OUT_DIR"), "/torito-files.cpio")).len()] =
                *include_bytes!(concat!(env!("OUT_DIR"), "/torito-files.cpio"));
            &FILES
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
