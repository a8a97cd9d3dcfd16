//! The call into the app and what its `main` may return.

use core::fmt::Debug;

unsafe extern "Rust" {
    /// Defined by [`crate::entry!`] in the app.
    fn __torito_app_main() -> i32;
    /// Defined by [`crate::entry!`] in an app that uses the filesystem
    /// unit: the archive of its files (`torito_linker::files`).
    #[cfg(feature = "fs")]
    fn __torito_app_files() -> &'static [u8];
}

/// Run the app's `main` and return its exit code.
pub(crate) fn main() -> i32 {
    // SAFETY: `entry!` defines the symbol with exactly this signature; an
    // app without `entry!` fails to link.
    unsafe { __torito_app_main() }
}

/// The archive of the app's files, baked into the ELF.
#[cfg(feature = "fs")]
pub(crate) fn files() -> &'static [u8] {
    // SAFETY: `entry!` defines the symbol with exactly this signature when
    // the kernel has the `fs` feature (`__torito_files!`).
    unsafe { __torito_app_files() }
}

/// Return types of an app's `main`, turned into an exit code.
pub trait Termination {
    /// The exit code.
    fn report(self) -> i32;
}

impl Termination for () {
    fn report(self) -> i32 {
        0
    }
}

impl Termination for i32 {
    fn report(self) -> i32 {
        self
    }
}

impl<E: Debug> Termination for Result<(), E> {
    fn report(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                crate::println!("Error: {e:?}");
                1
            }
        }
    }
}
