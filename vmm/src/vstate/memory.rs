//! Guest RAM: mapped in the monitor (lazily: a page costs nothing until
//! the guest or the monitor touches it) and registered with KVM as memory
//! slots, the first [`BOOT_SLOT`] bytes before the vCPU starts and the rest
//! later ([`DeferredRam`], registered by `machine::PendingRam`).

use std::time::Duration;

use kvm_bindings::kvm_userspace_memory_region;
use torito_abi::layout::ram_ranges;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::Vm;
use crate::error::Error;

/// RAM registered with KVM before the vCPU starts; the rest follows once the
/// guest runs. The kernel's image, boot data and heap start lie in it.
pub const BOOT_SLOT: u64 = 128 << 20;

/// Guest RAM not yet registered with KVM.
#[derive(Debug, Default)]
pub struct DeferredRam {
    slots: Vec<kvm_userspace_memory_region>,
}

impl DeferredRam {
    /// Whether there is nothing to register.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The guest-physical ranges `(start, size)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.slots.iter().map(|s| (s.guest_phys_addr, s.memory_size)).collect()
    }
}

/// Map `len` bytes of `file` from `offset` over guest RAM at `gpa`,
/// copy-on-write: the guest reads the file's pages (from the host's page
/// cache) as it first touches them, and its writes stay its own. All three
/// must be page-aligned and the range inside one region of `mem`, before
/// the guest or any device uses it. Returns whether it was mapped (when not,
/// the caller copies).
pub fn map_file(mem: &GuestMemoryMmap, gpa: u64, file: &std::fs::File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    const PAGE: u64 = 4096;
    if !gpa.is_multiple_of(PAGE) || !offset.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
        return false;
    }
    let Some(region) = mem.find_region(GuestAddress(gpa)) else { return false };
    let start = region.start_addr().0;
    if gpa.checked_add(len).is_none_or(|end| end > start + region.len()) {
        return false;
    }
    let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(gpa - start)) else { return false };
    let (Ok(len), Ok(off)) = (usize::try_from(len), libc::off_t::try_from(offset)) else { return false };
    // SAFETY: `host..host + len` lies inside the mapping that `mem` owns
    // (checked against the region above) and is page-aligned; MAP_FIXED
    // replaces those pages of our own mapping and nothing else. Nothing
    // refers to them yet: the guest has not started and no device has
    // been given guest memory. The new pages are readable and writable as
    // the old ones were, private (the file is never written), and live
    // until `mem` unmaps its whole range.
    let p = unsafe {
        libc::mmap(
            host.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            off,
        )
    };
    p == host.cast()
}

/// Make the `len` bytes of this process's memory at host address `addr`
/// present and writable now, as a write to each page would
/// (`MADV_POPULATE_WRITE`, Linux 5.14): fresh pages are zeroed, pages
/// mapped from a file copied, and no byte changes. Whether the kernel did
/// it (an older kernel, or a range not mapped, says no and changes
/// nothing).
///
/// For guest RAM this runs while the guest runs: a page the guest already
/// uses is left as it is, or (a page still shared with the file) replaced
/// by its copy, which KVM notices (its MMU notifier) and maps anew at the
/// guest's next touch.
pub fn populate(addr: u64, len: u64) -> bool {
    let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else { return false };
    // SAFETY: MADV_POPULATE_WRITE neither maps nor unmaps anything and
    // changes no byte that the process can see (it faults pages in, as a
    // write would, without writing); no reference anywhere is
    // invalidated. A range that is not mapped, or not writable, is an
    // error and changes nothing.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) == 0 }
}

/// Which pages of this process are mapped, from `/proc/self/pagemap`.
pub struct Pagemap(std::fs::File);

/// A pagemap entry's bits: the page is present; it is a page of a file
/// (or shared memory).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;

impl Pagemap {
    /// This process's page map (`None` where `/proc` does not give it).
    pub fn open() -> Option<Self> {
        std::fs::File::open("/proc/self/pagemap").ok().map(Pagemap)
    }

    /// [`populate`] the pages of `[addr, addr + len)` (page-aligned) but
    /// those still shared with a file and mapped already: copying one of
    /// those under a running guest replaces a page it may use, and the
    /// TLB flush that goes with each such copy interrupts the guest (an
    /// exit per page). Everything, if the map cannot be read.
    pub fn populate_unmapped(&self, addr: u64, len: u64) {
        use std::os::unix::fs::FileExt;
        const PAGE: u64 = 4096;
        let pages = (len / PAGE) as usize;
        let mut raw = [0u8; 8 * 64];
        if pages == 0 || pages > 64 || self.0.read_exact_at(&mut raw[..8 * pages], addr / PAGE * 8).is_err() {
            populate(addr, len);
            return;
        }
        let skip = |i: usize| {
            let e = u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().unwrap_or_default());
            e & PM_PRESENT != 0 && e & PM_FILE != 0
        };
        let mut i = 0;
        while i < pages {
            if skip(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && !skip(i) {
                i += 1;
            }
            populate(addr + start as u64 * PAGE, (i - start) as u64 * PAGE);
        }
    }
}

/// The host range `(address, bytes)` of the guest RAM at `gpa`, at most
/// `len` bytes of it (not beyond its region); `None` outside RAM.
pub fn host_range(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<(u64, u64)> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let offset = gpa - region.start_addr().0;
    let host = region.get_host_address(vm_memory::MemoryRegionAddress(offset)).ok()? as u64;
    Some((host, len.min(region.len() - offset)))
}

impl Vm {
    /// Map `ram` bytes of guest RAM and register the first [`BOOT_SLOT`]
    /// bytes with KVM. The rest is returned as [`DeferredRam`], to be
    /// registered with [`Vm::register`] once the guest runs: registering a
    /// slot costs time in proportion to its size on shadow-paging hosts
    /// (~1.4 ms for 4 GiB).
    pub fn add_memory(&self, ram: u64) -> Result<(GuestMemoryMmap, DeferredRam), Error> {
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(ram)
            .iter()
            .filter(|(_, len)| *len > 0)
            .map(|&(base, len)| (GuestAddress(base), len as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory(ram, e.to_string()))?;
        let mut slots = Vec::new();
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::Memory(ram, e.to_string()))? as u64;
            let (start, len) = (region.start_addr().0, region.len());
            let mut piece = |gpa: u64, size: u64, hva: u64| {
                let slot = slots.len() as u32;
                slots.push(kvm_userspace_memory_region {
                    slot,
                    flags: 0,
                    guest_phys_addr: gpa,
                    memory_size: size,
                    userspace_addr: hva,
                });
            };
            if start == 0 && len > BOOT_SLOT {
                piece(0, BOOT_SLOT, host);
                piece(BOOT_SLOT, len - BOOT_SLOT, host + BOOT_SLOT);
            } else {
                piece(start, len, host);
            }
        }
        let deferred = DeferredRam { slots: slots.split_off(1) };
        self.register_slots(&slots)?;
        Ok((mem, deferred))
    }

    /// Register RAM whose registration was deferred. For tests and
    /// debugging, `TORITO_DEBUG_DEFER_RAM_MS` delays it by that many
    /// milliseconds, so that the guest surely touches unregistered RAM.
    pub fn register(&self, d: &DeferredRam) -> Result<(), Error> {
        if let Some(ms) = std::env::var("TORITO_DEBUG_DEFER_RAM_MS").ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.register_slots(&d.slots)
    }

    fn register_slots(&self, slots: &[kvm_userspace_memory_region]) -> Result<(), Error> {
        for r in slots {
            // SAFETY: each slot is a part of one live mapping owned by the
            // `GuestMemoryMmap` made in `add_memory`, which `run` keeps until
            // the vCPU has stopped and this registration has finished; slots
            // do not overlap.
            unsafe { self.fd.set_user_memory_region(*r) }
                .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// Pages of `len` bytes at `addr` resident in the process (`mincore`).
    fn resident(addr: u64, len: usize) -> usize {
        let mut v = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `v` has one byte per page of the range, as mincore(2)
        // writes; the range is mapped (the caller's guest memory).
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// Populating guest RAM makes its pages resident and changes no byte:
    /// fresh pages read zero, pages mapped from a file read the file (which
    /// stays as it was, and the guest's pages its own).
    #[test]
    fn populated_pages_are_resident_and_unchanged() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("torito-populate-{}", std::process::id()));
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(map_file(&mem, 0x1_0000, &file, 0, 8192));
        assert_eq!(resident(host + 0x2_0000, 128 << 10), 0, "nothing touched yet");
        assert!(populate(host, 256 << 10));
        assert_eq!(resident(host, 1 << 20), 64);
        let mut got = vec![0u8; 8192];
        mem.read_slice(&mut got, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(got, content);
        mem.read_slice(&mut got, GuestAddress(0x2_0000)).unwrap();
        assert!(got.iter().all(|&b| b == 0));
        mem.write_slice(b"guest", GuestAddress(0x1_0000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content, "the file is never written");
        let _ = std::fs::remove_file(&path);
        assert!(!populate(0, 4096), "an unmapped range is refused");
        assert_eq!(host_range(&mem, 0x1000, 8192), Some((host + 0x1000, 8192)));
        assert_eq!(host_range(&mem, 0xf_f000, 8192), Some((host + 0xf_f000, 4096)), "clipped to RAM");
        assert_eq!(host_range(&mem, 1 << 20, 4096), None);
    }

    /// Beside a running guest, a page still shared with the file and
    /// mapped already is left as it is; the others are made present (and
    /// copied, for the file's): read from the page map.
    #[test]
    fn pages_of_the_file_already_mapped_are_not_copied() {
        let Some(map) = Pagemap::open() else { return };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let path = std::env::temp_dir().join(format!("torito-pagemap-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 64 * 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(map_file(&mem, 0x4_0000, &file, 0, 64 * 4096));
        let _ = std::fs::remove_file(&path);
        let entry = |page: u64| {
            use std::os::unix::fs::FileExt;
            let mut b = [0u8; 8];
            map.0.read_exact_at(&mut b, (host + page * 4096) / 4096 * 8).unwrap();
            u64::from_le_bytes(b)
        };
        // The second page of the file read (mapped from the file, shared).
        let mut one = [0u8; 1];
        mem.read_slice(&mut one, GuestAddress(0x4_1000)).unwrap();
        assert_eq!(one, [7]);
        let shared = |p| entry(p) & PM_PRESENT != 0 && entry(p) & PM_FILE != 0;
        assert!(shared(0x41), "a file page mapped by the read");
        // (The kernel maps the read's neighbours with it, up to 64 KiB, and
        // at times maps more of the file as the chunks before are made
        // present: what the last chunk finds mapped from the file is to be
        // left so, the rest copied.)
        let mut before = Vec::new();
        for chunk in 0..4 {
            if chunk == 3 {
                before = [0x70, 0x7f].map(|p| (p, shared(p))).to_vec();
            }
            map.populate_unmapped(host + 0x4_0000 + chunk * 0x1_0000, 0x1_0000);
        }
        assert!(shared(0x41), "left shared with the file");
        for (p, was_shared) in before {
            assert!(entry(p) & PM_PRESENT != 0, "page {p:#x} present");
            assert_eq!(entry(p) & PM_FILE != 0, was_shared, "page {p:#x} copied unless mapped from the file");
        }
        map.populate_unmapped(host, 64 * 4096);
        assert!(entry(0) & PM_PRESENT != 0, "fresh pages made present");
        mem.read_slice(&mut one, GuestAddress(0x4_2000)).unwrap();
        assert_eq!(one, [7], "no byte changed");
    }
}
