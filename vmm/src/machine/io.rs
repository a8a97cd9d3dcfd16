//! The device I/O thread and device interrupts.

use std::sync::atomic::Ordering;
use std::thread::Scope;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use super::{Machine, lock};
use crate::sandbox::Role;
use crate::vstate::sys::{Want, wait_ready};

/// The longest the I/O thread waits before it looks at the devices again
/// (bounds the wait of a NIC that holds a frame back until the guest
/// gives a buffer).
const IO_WAIT: Duration = Duration::from_millis(10);

impl<'a> Machine<'a> {
    /// Raise device line `line`: an MSI to vector `0x50 + line` on core 0
    /// (the contract in `torito_abi::layout::VIRTIO_MMIO_BASE`).
    pub(super) fn device_interrupt(&self, line: u32) {
        if let Err(e) = self.vm.signal_msi(0, 0x50 + line) {
            eprintln!("torito: warning: device interrupt not delivered: {e}");
        }
    }

    /// Start the device I/O thread, once, if a device has host-side I/O
    /// (NICs, vsock, disks in I/O-thread mode): it waits on their host
    /// descriptors and serves them (frames into the guest's receive
    /// buffers, queue notifications passed by ioeventfds) under the
    /// devices' lock, then interrupts. Started at the guest's first exit,
    /// like the RAM registration, so a launch does not pay for it before
    /// `kernel_main`.
    pub(super) fn start_io<'scope>(&'scope self, scope: &'scope Scope<'scope, 'a>) {
        if self.has_host_io && !self.io_started.swap(true, Ordering::SeqCst) {
            let started = self.spawn(scope, "io", move || {
                if self.confine(Role::Io) {
                    self.io_loop();
                }
            });
            if let Err(e) = started {
                self.finish(Some(Err(e)));
            }
        }
    }

    fn io_loop(&self) {
        // A device that wants a descriptor watched again says so here.
        let rewatch = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).ok();
        if let Some(fd) = rewatch.as_ref().and_then(|f| f.try_clone().ok()) {
            lock(&self.devices).set_rewatch(fd);
        }
        while !self.stop.load(Ordering::SeqCst) {
            let mut fds = lock(&self.devices).host_fds_to_watch();
            fds.push((self.stopped.as_raw_fd(), Want::Read));
            if let Some(r) = &rewatch {
                fds.push((r.as_raw_fd(), Want::Read));
            }
            if wait_ready(&fds, IO_WAIT) && !self.stop.load(Ordering::SeqCst) {
                if let Some(r) = &rewatch {
                    let _ = r.read();
                }
                let lines = lock(&self.devices).service_host(self.mem);
                for line in lines {
                    self.device_interrupt(line);
                }
            }
        }
    }

    /// Send the MSI the guest asked for through `TEST_INTERRUPT`, after
    /// `delay_us` (cut short if the guest stops).
    pub(super) fn test_interrupt(&self, vector: u8, apic: u8, delay_us: u32) {
        let until = Instant::now() + Duration::from_micros(u64::from(delay_us));
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if let Err(e) = self.vm.signal_msi(apic, u32::from(vector)) {
                    eprintln!("torito: warning: test interrupt not delivered: {e}");
                }
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }
}
