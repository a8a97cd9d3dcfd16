//! `torito-oci`: the runc-compatible runtime containerd's runc shim drives
//! (its `BinaryName` option). Everything is in the library; see its docs.

fn main() -> std::process::ExitCode {
    torito_oci::main()
}
