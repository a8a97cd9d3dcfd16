//! The KVM device (`/dev/kvm` or `TORITO_KVM_DEVICE`).

use std::path::Path;

use kvm_ioctls::Kvm as KvmFd;

use super::Vm;
use crate::error::Error;

/// The KVM device.
pub struct Kvm {
    fd: KvmFd,
}

impl Kvm {
    /// Open the KVM device at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let open_err = |e: std::io::Error| Error::KvmOpen(path.to_owned(), e);
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| open_err(std::io::ErrorKind::InvalidInput.into()))?;
        let fd = KvmFd::new_with_path(&cpath)
            .map_err(|e| open_err(std::io::Error::from_raw_os_error(e.errno())))?;
        if fd.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(open_err(std::io::Error::other("not a KVM device (KVM_GET_API_VERSION failed)")));
        }
        Ok(Self { fd })
    }

    /// Create an empty VM.
    pub fn create_vm(&self) -> Result<Vm, Error> {
        let fd = self.fd.create_vm().map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
        Ok(Vm::new(fd))
    }
}
