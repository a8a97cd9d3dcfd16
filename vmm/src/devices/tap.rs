//! A TAP device (Ethernet frames to and from the host's network stack),
//! opened by name. `vmm-sys-util` has no TAP helper; the one `ioctl`
//! (TUNSETIFF) is `vstate::sys::tun_set_iff`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::vstate::sys::{IFNAMSIZ, interface_index, tun_set_iff};

const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;

/// An open TAP device, non-blocking, frames without a packet-info header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to the existing TAP device `name`; every reason it cannot be
    /// used is one line for the user.
    pub fn open(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('/') {
            return Err(format!("'{name}' is not a network interface name"));
        }
        // Looked up in this process's network namespace: TUNSETIFF alone
        // would create a TAP device of that name where none exists.
        if interface_index(name).is_none() {
            return Err(format!(
                "no network device '{name}': create a TAP device first, e.g. \
                 `ip tuntap add dev {name} mode tap user $USER && ip link set {name} up`"
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
        tun_set_iff(&file, name, IFF_TAP | IFF_NO_PI).map_err(|e| {
            format!("cannot attach to TAP device '{name}': {e} (is it a TAP device, owned by this user, not in use?)")
        })?;
        Ok(Self { file, name: name.to_string() })
    }

    /// A stand-in over any file (a socket pair's end), for tests.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn for_tests(file: File) -> Self {
        Self { file, name: "test".into() }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame into `buf`; `Ok(None)` when none is waiting.
    pub fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Send one frame (dropped when the host's queue is full, as a wire
    /// would).
    pub fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
