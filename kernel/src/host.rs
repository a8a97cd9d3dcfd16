//! The kernel built for the host, where nothing boots.
//!
//! `cargo check --workspace` (what an IDE runs), `cargo build` in an app's
//! directory and an app's unit tests compile the kernel for the host. There
//! it links std, whose allocator and panic handler stand in for the guest's,
//! and the console writes to the process's standard output (captured by the
//! test harness like `std::print!`). The app's functions that do not touch
//! devices, threads or the network can be unit-tested this way; booting is
//! the monitor's job (`cargo xtask run`).

use std::io::Write;

/// Console output on the host: standard output.
pub(crate) fn write_bytes(bytes: &[u8]) {
    match core::str::from_utf8(bytes) {
        // Through `print!`, so that the test harness captures it.
        Ok(s) => std::print!("{s}"),
        Err(_) => {
            let _ = std::io::stdout().write_all(bytes);
        }
    }
}

/// Stop the process with `code`.
pub(crate) fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// The `main` of an app built for the host (`cargo build` without
/// `cargo xtask`): says how to boot it instead.
#[doc(hidden)]
pub fn main(app: &str) -> i32 {
    std::eprintln!(
        "{app}: this is a Torito appliance built for the host, where it cannot run; \
         boot it with `cargo xtask run {app}` (or build the bootable ELF with `cargo xtask build {app}`)"
    );
    2
}
