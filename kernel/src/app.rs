//! The call into the app and what its `main` may return.

use core::fmt::Debug;

unsafe extern "Rust" {
    /// Defined by [`crate::entry!`] in the app.
    fn __torito_app_main() -> i32;
}

/// Run the app's `main` and return its exit code.
pub(crate) fn main() -> i32 {
    // SAFETY: `entry!` defines the symbol with exactly this signature; an
    // app without `entry!` fails to link.
    unsafe { __torito_app_main() }
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
