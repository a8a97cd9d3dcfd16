//! The hand-over: a container that is not an appliance (a pod's pause
//! container, any Linux image) is runc's, with the same arguments.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::Error;

/// The runc to hand over to: `$TORITO_OCI_RUNC`, else `runc` on `PATH`.
pub fn binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("TORITO_OCI_RUNC") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        // runc pointing back at torito-oci would hand over forever.
        .filter(|p| p.canonicalize().ok() != me)
        .ok_or_else(|| {
            Error::Runc(
                "this container is not a Torito appliance, and runc (which runs every other container) \
                 is not on PATH; install runc or set TORITO_OCI_RUNC"
                    .into(),
            )
        })
}

/// Become runc with `args`; returns only when that fails.
pub fn hand_over(args: &[OsString]) -> Result<u8, Error> {
    let runc = binary()?;
    let e = Command::new(&runc).args(args).exec();
    Err(Error::io(format!("cannot run {}", runc.display()), e))
}
