//! Build-script helper that links a Torito app into one bootable ELF.
//!
//! An app's `build.rs` calls [`link`]; it passes `linker/torito.ld` to the
//! linker when (and only when) the app is built for `x86_64-unknown-none`.
//! The script places the boot section at a fixed address, lays the image out
//! so that file offsets and load addresses differ by a constant (what the
//! multiboot a.out-kludge fields need), and emits the `PT_NOTE` segment with
//! the PVH and Torito notes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::PathBuf;

/// Path of the linker script.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torito.ld")
}

/// Call from an app's `build.rs`.
pub fn link() {
    println!("cargo:rerun-if-changed={}", script().display());
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        println!("cargo:rustc-link-arg=-T{}", script().display());
        println!("cargo:rustc-link-arg=--gc-sections");
        println!("cargo:rustc-link-arg=-znoexecstack");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_exists_and_names_the_entries() {
        let text = std::fs::read_to_string(super::script()).unwrap();
        for sym in ["kernel_main", "_torito_pvh_entry", "__boot_start", "__bss_end"] {
            assert!(text.contains(sym), "linker script lacks {sym}");
        }
    }
}
