//! A TAP device (Ethernet frames to and from the host's network stack),
//! opened by name, each frame after a 12-byte `virtio_net_hdr` (so that
//! checksums and segmentation can be left to the host's kernel, as the
//! guest negotiates). `vmm-sys-util` has no TAP helper; the `ioctl`s
//! (TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD) are in `vstate::sys`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::vstate::sys::{IFNAMSIZ, interface_index, tun_set_iff, tun_set_offload, tun_set_vnet_hdr_size};

const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
/// The `virtio_net_hdr` before each frame: virtio 1.x's, `num_buffers`
/// included (the TAP device leaves it alone), so it is the guest's as is.
pub const VNET_HDR: usize = 12;
/// `TUNSETOFFLOAD` flag: the TAP device may hand over frames whose
/// checksum is to be completed.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD` flag: TCP/IPv4 segments of up to 64 KiB.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD` flag: TCP/IPv6 segments of up to 64 KiB.
pub const TUN_F_TSO6: u32 = 0x04;

/// How long a TAP device in use is waited for: a monitor that has just
/// exited leaves its last close of the device to the kernel
/// (`vstate::Farewell`), which does it within a few milliseconds.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// `TUNSETIFF` on `file`, again every millisecond while the device is in
/// use (`EBUSY`), for at most [`BUSY_WAIT`].
fn attach(file: &File, name: &str) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match tun_set_iff(file, name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < BUSY_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// An open TAP device, non-blocking, frames after a `virtio_net_hdr` and
/// without a packet-info header.
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
        attach(&file, name).map_err(|e| {
            format!("cannot attach to TAP device '{name}': {e} (is it a TAP device, owned by this user, not in use?)")
        })?;
        // Both stay set on the device after it is closed: whatever the last
        // user (another monitor, QEMU) chose is undone here. No offloads
        // until the guest has negotiated them.
        tun_set_vnet_hdr_size(&file, VNET_HDR as i32)
            .and_then(|()| tun_set_offload(&file, 0))
            .map_err(|e| format!("cannot set up TAP device '{name}': {e}"))?;
        Ok(Self { file, name: name.to_string() })
    }

    /// Let the TAP device hand over frames with the offloads `flags`
    /// (`TUN_F_*`): those the guest negotiated.
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        tun_set_offload(&self.file, flags)
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
