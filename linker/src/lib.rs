//! Build-script helper that links a Torito app into one bootable ELF.
//!
//! An app's `build.rs` calls [`link`]; it passes `linker/torito.ld` to the
//! linker when (and only when) the app is built for `x86_64-unknown-none`.
//! The script places the boot section at a fixed address, lays the image out
//! so that file offsets and load addresses differ by a constant (what the
//! multiboot a.out-kludge fields need), and emits the `PT_NOTE` segment with
//! the PVH and Torito notes.
//!
//! It also packs the app's files ([`files`]) into `OUT_DIR`, where the
//! kernel's `entry!` macro finds them when the app uses the filesystem
//! unit.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod files;

use std::path::PathBuf;

/// Path of the linker script.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torito.ld")
}

/// Path of the start order the script includes: patterns of the functions
/// an appliance's start runs, in the order it first runs them (written by
/// `cargo xtask start-order`).
pub fn start_order() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("start-order.ld")
}

/// Call from an app's `build.rs`.
pub fn link() {
    println!("cargo:rerun-if-changed={}", script().display());
    println!("cargo:rerun-if-changed={}", start_order().display());
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        // The script's INCLUDE finds `start-order.ld` beside it.
        println!("cargo:rustc-link-arg=-L{}", env!("CARGO_MANIFEST_DIR"));
        println!("cargo:rustc-link-arg=-T{}", script().display());
        println!("cargo:rustc-link-arg=--gc-sections");
        println!("cargo:rustc-link-arg=-znoexecstack");
    }
    if let Err(e) = pack_files() {
        // A build script's way to fail with a message.
        panic!("torito: baking the app's files: {e}");
    }
}

/// Write the app's archive (possibly empty) into `OUT_DIR`.
fn pack_files() -> Result<(), String> {
    let (Some(out), Some(manifest)) = (std::env::var_os("OUT_DIR"), std::env::var_os("CARGO_MANIFEST_DIR"))
    else {
        return Ok(());
    };
    println!("cargo:rerun-if-env-changed={}", files::FILES_ENV);
    let manifest = PathBuf::from(manifest);
    println!("cargo:rerun-if-changed={}", manifest.join("Cargo.toml").display());
    let env = std::env::var(files::FILES_ENV).ok();
    let archive = PathBuf::from(out).join(files::ARCHIVE);
    let mut bytes = Vec::new();
    match files::source_dir(&manifest, env.as_deref())? {
        Some(dir) => {
            // Cargo rescans a directory named here when anything in it changes.
            println!("cargo:rerun-if-changed={}", dir.display());
            files::pack(&dir, &mut bytes).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        None => println!("cargo:rerun-if-changed={}", manifest.join("files").display()),
    }
    std::fs::write(&archive, bytes).map_err(|e| format!("{}: {e}", archive.display()))
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
