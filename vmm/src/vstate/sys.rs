//! Host calls the monitor makes besides KVM's: the clock, waiting on
//! descriptors, the TAP device's `TUNSETIFF`, positioned reads into guest
//! memory, its own memory figures and CPU affinity.
//! `vmm-sys-util` has no safe form of these (its `poll` module is epoll
//! with registration, heavier than one `poll` over a changing set), so the
//! few `unsafe` calls are here, beside the KVM ones.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile, VolatileMemoryError, VolatileSlice,
};

/// A file read from `offset` on with `pread`, which leaves the file's own
/// position alone: the virtio-fs server reads one file from two threads
/// at once (`devices::virtio::fs::copier`). vm-memory reads a `File` with
/// `read` only.
pub struct ReadAt<'a> {
    /// The file.
    pub file: &'a std::fs::File,
    /// Where the next read starts; each read moves it on.
    pub offset: u64,
}

impl ReadVolatile for ReadAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = i64::try_from(self.offset)
            .map_err(|_| VolatileMemoryError::IOError(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the descriptor is the open file `self.file` borrows; the
        // destination is valid for writes of `buf.len()` bytes, which
        // `VolatileSlice`'s constructor guarantees for the guard's life.
        let n = unsafe { libc::pread64(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), offset) };
        if n < 0 {
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        let n = n as usize;
        buf.bitmap().mark_dirty(0, n);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Random bytes from the kernel's generator (`getrandom`, which does not
/// block once the host has booted); `None` when it fails.
pub fn random_u64s<const N: usize>() -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let len = std::mem::size_of_val(&out);
    // The system call itself: the static musl build has no `getrandom`
    // function to link (the weak symbol stays null).
    // SAFETY: `out` is a valid, writable buffer of `len` bytes.
    let n = unsafe { libc::syscall(libc::SYS_getrandom, out.as_mut_ptr(), len, 0) };
    (n == len as libc::c_long).then_some(out)
}

/// How many CPUs this thread may run on (`sched_getaffinity`): one
/// system call, where std's `available_parallelism` also reads the
/// cgroup's files (~30 calls); 1 if it fails.
pub fn cpus_allowed() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and writable for `size_of_val(&set)` bytes.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return 1;
    }
    // SAFETY: `set` was filled in by the kernel.
    (unsafe { libc::CPU_COUNT(&set) }).max(1) as usize
}

/// Keep `thread` off the CPU the calling thread runs on now, on the other
/// CPUs this process may use: that CPU, or `None` if nothing changed (one
/// CPU, or a failed call; the thread then runs where the kernel puts it).
pub fn keep_off_this_cpu(thread: std::os::unix::thread::RawPthread) -> Option<usize> {
    // SAFETY: no arguments; -1 on failure.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of_val(&set);
    // SAFETY: `set` is valid and writable for `size` bytes.
    if cpu >= libc::CPU_SETSIZE as usize || unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return None;
    }
    // SAFETY: `cpu` is within the set (checked above).
    unsafe { libc::CPU_CLR(cpu, &mut set) };
    // SAFETY: `set` is a valid set of `size` bytes; `thread` is the handle
    // of a thread of this process that the caller holds, so it has not
    // been joined or detached away.
    let moved =
        unsafe { libc::CPU_COUNT(&set) > 0 && libc::pthread_setaffinity_np(thread as _, size, &set) == 0 };
    moved.then_some(cpu)
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Have the C library's allocator keep one arena for all threads, where
/// that library is glibc (the static musl build needs nothing). glibc
/// gives each thread an arena of its own, and the first time it shrinks
/// such an arena (a thread freed a lot: the I/O thread after a vsock
/// flood) it reads `/proc/sys/vm/overcommit_memory` — an `openat` the
/// thread's seccomp filter forbids, so the monitor stopped with SIGSYS.
/// With one arena, memory goes back with `brk` and `munmap`, which the
/// filters allow. The threads that allocate are few (vCPUs, I/O), so the
/// shared arena's lock costs little.
pub fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` changes a setting of the allocator; called before
    // the monitor starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// What to wait for on a host descriptor. Its hang-up and errors are
/// reported whatever is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Something to read.
    Read,
    /// Room to write.
    Write,
    /// Either.
    ReadWrite,
    /// Only its hang-up or an error (its input waits until wanted).
    Hangup,
}

impl Want {
    /// The interest of a descriptor to be read when `read`, written when
    /// `write`.
    pub fn of(read: bool, write: bool) -> Self {
        match (read, write) {
            (true, true) => Want::ReadWrite,
            (true, false) => Want::Read,
            (false, true) => Want::Write,
            (false, false) => Want::Hangup,
        }
    }

    fn events(self) -> libc::c_short {
        match self {
            Want::Read => libc::POLLIN,
            Want::Write => libc::POLLOUT,
            Want::ReadWrite => libc::POLLIN | libc::POLLOUT,
            Want::Hangup => 0,
        }
    }
}

/// Wait until one of `fds` is ready for what is wanted of it, at most
/// `timeout`. Returns whether any is ready.
pub fn wait_ready(fds: &[(RawFd, Want)], timeout: Duration) -> bool {
    !ready_fds(fds, timeout).is_empty()
}

/// [`wait_ready`], saying which: the indices in `fds` of the descriptors
/// that are ready (or closed, or in error).
pub fn ready_fds(fds: &[(RawFd, Want)], timeout: Duration) -> Vec<usize> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&(fd, want)| libc::pollfd { fd, events: want.events(), revents: 0 }).collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures for
    // the call's duration. A descriptor closed meanwhile reads as POLLNVAL,
    // which is harmless.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return Vec::new();
    }
    pfds.iter().enumerate().filter(|(_, p)| p.revents != 0).map(|(i, _)| i).collect()
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFNAMSIZ`.
pub const IFNAMSIZ: usize = 16;

/// Attach the open `/dev/net/tun` descriptor `tun` to the interface `name`
/// (shorter than [`IFNAMSIZ`]) with `flags` (`IFF_TAP`, `IFF_NO_PI`, …).
pub fn tun_set_iff(tun: &impl AsRawFd, name: &str, flags: u16) -> std::io::Result<()> {
    if name.len() >= IFNAMSIZ {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // struct ifreq: the name, then the flags (a short) in the union.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes on
    // x86-64) at the pointer; `ifr` is that large and lives across the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Frames on the TAP descriptor `tun` (opened with `IFF_VNET_HDR`) carry a
/// `virtio_net_hdr` of `size` bytes.
pub fn tun_set_vnet_hdr_size(tun: &impl AsRawFd, size: i32) -> std::io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads an `int` at the pointer, which points
    // at `size` for the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ as _, &size as *const i32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Which offloads (`TUN_F_*`) the TAP descriptor `tun` may use in the
/// frames it hands the monitor.
pub fn tun_set_offload(tun: &impl AsRawFd, flags: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags as the argument's value and
    // touches no memory of ours.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The index of network interface `name` in this thread's network
/// namespace (`if_nametoindex`: a query on a socket of the namespace),
/// `None` when it has none. Not `/sys/class/net`, which shows the
/// namespace `/sys` was mounted in: a process that joined a namespace with
/// `setns()`, as a container runtime does, still sees the host's there.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which
    // only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Guest RAM resident in this process, in KiB (`mincore` over each region).
pub fn resident_kib(mem: &GuestMemoryMmap) -> Option<u64> {
    let mut pages = 0u64;
    for region in mem.iter() {
        let host = region.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `host..host + len` is one live mapping owned by `mem`;
        // `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        pages += vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
    }
    Some(pages * 4)
}

/// This process's peak resident memory in KiB (`VmHWM`). One `read` of
/// `/proc/self/status` (the kernel makes the whole text on the first
/// one; a growing buffer cost eight). Not `getrusage`: its `ru_maxrss`
/// counts the launcher's memory this process shared until `exec`.
pub fn peak_rss_kib() -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let n = std::fs::File::open("/proc/self/status").ok()?.read(&mut buf).ok()?;
    let status = std::str::from_utf8(&buf[..n]).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raise this process's soft limit on open descriptors towards `want`
/// (never above the hard limit). Best effort.
pub fn raise_fd_limit(want: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let target = match l.maximum {
        Some(max) => want.min(max),
        None => want,
    };
    if l.current.is_some_and(|c| c < target) {
        l.current = Some(target);
        let _ = setrlimit(Resource::Nofile, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;

    /// A thread kept off the caller's CPU may run on every other CPU the
    /// process may use, and not on that one; with one CPU nothing changes.
    #[test]
    fn a_thread_is_kept_off_the_callers_cpu() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let kept_off = keep_off_this_cpu(t.as_pthread_t());
        // SAFETY: as in `keep_off_this_cpu`; `t` is held until joined.
        let (mine, theirs) = unsafe {
            let mut mine: libc::cpu_set_t = std::mem::zeroed();
            let mut theirs: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut mine), 0);
            assert_eq!(libc::pthread_getaffinity_np(t.as_pthread_t() as _, size, &mut theirs), 0);
            (mine, theirs)
        };
        tx.send(()).unwrap();
        t.join().unwrap();
        let cpus = |set: &libc::cpu_set_t| {
            // SAFETY: `set` is a valid set; `c` is below CPU_SETSIZE.
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
                .collect::<Vec<_>>()
        };
        let (mine, theirs) = (cpus(&mine), cpus(&theirs));
        match kept_off {
            Some(cpu) => {
                let rest: Vec<usize> = mine.iter().copied().filter(|&c| c != cpu).collect();
                assert_eq!(theirs, rest, "kept off CPU {cpu}");
            }
            None => {
                assert_eq!(cpus_allowed(), 1, "only one CPU leaves the thread where it is");
                assert_eq!(theirs, mine);
            }
        }
    }
}
