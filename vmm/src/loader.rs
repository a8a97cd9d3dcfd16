//! Checking and loading the kernel ELF.
//!
//! [`check`] validates the file before anything is created, so a bad image
//! fails fast with a precise message: class, byte order, machine, type,
//! truncation, segments outside guest RAM, and the Torito note (entry,
//! stack and descriptor tables inside the image, ABI version). It reads
//! only the headers and notes. [`load`] then copies the segments straight
//! from the file into guest memory, skipping the one the note marks as
//! needed by the 32-bit entries only (their link-time page tables, about
//! half of a small image).
//!
//! Both are written here rather than taken from a crate: linux-loader's
//! `Elf` loader checks neither class nor machine, reads only the PVH note
//! and cannot skip a segment, and the few fields we need are cheaper to
//! read directly than to pull a general ELF reader onto the launch path.
//! Guest memory is written through vm-memory, which bounds-checks it.

use std::io::{Seek, SeekFrom};

use torito_abi::layout::{KERNEL_BASE, ram_ranges};
use torito_abi::note::{KERNEL_NOTE_SIZE, KernelNote, NOTE_NAME, NOTE_TYPE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};
use zerocopy::FromBytes;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address.
    pub paddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Size in the file.
    pub file_size: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Whether it is executable.
    pub exec: bool,
    /// Whether it is writable (neither this nor `exec`: read-only data,
    /// such as the app's baked-in files).
    pub writable: bool,
}

/// What [`inspect`] found.
#[derive(Clone, Debug)]
pub struct ElfInfo {
    /// The Torito note.
    pub note: KernelNote,
    /// `PT_LOAD` segments.
    pub segments: Vec<Segment>,
}

/// Random access to a kernel image: a file (read in a few small pieces) or,
/// in tests, bytes in memory.
pub trait Image {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// `len` bytes at `offset`, or `None` past the end or on a read error.
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>>;
}

impl Image for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        self.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

impl Image for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }
}

fn rd<const N: usize>(b: &[u8], off: u64) -> Option<[u8; N]> {
    let off = usize::try_from(off).ok()?;
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: u64) -> Option<u16> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

/// Validate `file` for a guest with `mem` bytes of RAM, reading only its
/// headers and notes. Errors are messages without the file name (the
/// caller adds it).
pub fn check<I: Image + ?Sized>(file: &I, mem: u64) -> Result<ElfInfo, String> {
    let size = file.size();
    if size < 64 {
        return Err(format!("too short to be an ELF file ({size} bytes)"));
    }
    let header = file.read(0, 64).ok_or("cannot read the ELF header")?;
    let image = &header[..];
    if image[..4] != *b"\x7fELF" {
        return Err("not an ELF file (bad magic)".into());
    }
    if image[4] != 2 {
        return Err("a 32-bit ELF; Torito kernels are 64-bit x86-64 ELF executables".into());
    }
    if image[5] != 1 {
        return Err("a big-endian ELF; expected little-endian x86-64".into());
    }
    let machine = u16_at(image, 18).unwrap_or(0);
    if machine != EM_X86_64 {
        return Err(format!(
            "an ELF for another machine (e_machine {machine}); expected x86-64 ({EM_X86_64})"
        ));
    }
    let etype = u16_at(image, 16).unwrap_or(0);
    if etype != ET_EXEC {
        return Err(format!("not an executable ELF (e_type {etype}); expected ET_EXEC"));
    }
    let phoff = u64_at(image, 32).unwrap_or(0);
    let phentsize = u64::from(u16_at(image, 54).unwrap_or(0));
    let phnum = u64::from(u16_at(image, 56).unwrap_or(0));
    if phentsize != 56 || phnum == 0 {
        return Err(format!("bad program header table (entry size {phentsize}, {phnum} entries)"));
    }
    let ph_end = phnum.checked_mul(56).and_then(|n| n.checked_add(phoff));
    if ph_end.is_none_or(|end| end > size) {
        return Err(format!("truncated: program headers end beyond the file's {size} bytes"));
    }
    let phdrs = file.read(phoff, (phnum * 56) as usize).ok_or("cannot read the program headers")?;
    let low_end = ram_ranges(mem)[0].1;
    let mut segments = Vec::new();
    let mut note = None;
    for i in 0..phnum {
        let ph = i * 56;
        let field = |o: u64| u64_at(&phdrs, ph + o).unwrap_or(0);
        let ptype = u32_at(&phdrs, ph).unwrap_or(0);
        let flags = u32_at(&phdrs, ph + 4).unwrap_or(0);
        let (offset, paddr, filesz, memsz) = (field(8), field(24), field(32), field(40));
        let file_end = offset.checked_add(filesz);
        if (ptype == PT_LOAD || ptype == PT_NOTE) && file_end.is_none_or(|e| e > size) {
            return Err(format!(
                "truncated: segment {i} needs bytes up to {:#x}, the file has {size:#x}",
                file_end.unwrap_or(u64::MAX),
            ));
        }
        match ptype {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(format!("segment {i} is larger in the file than in memory"));
                }
                let end = paddr.saturating_add(memsz);
                if paddr < KERNEL_BASE {
                    return Err(format!(
                        "segment {i} at {paddr:#x} lies below {KERNEL_BASE:#x}, where the monitor keeps boot data"
                    ));
                }
                if end > low_end {
                    return Err(format!(
                        "segment {i} [{paddr:#x}, {end:#x}) lies outside guest RAM (which ends at {low_end:#x}); \
                         give the guest more memory with --mem"
                    ));
                }
                segments.push(Segment {
                    paddr,
                    memsz,
                    file_size: filesz,
                    offset,
                    exec: flags & PF_X != 0,
                    writable: flags & PF_W != 0,
                });
            }
            PT_NOTE if filesz <= 1 << 20 => {
                let data = file.read(offset, filesz as usize).ok_or("cannot read a note segment")?;
                if let Some(n) = find_note(&data) {
                    note = Some(n);
                }
            }
            _ => {}
        }
    }
    let note = note.ok_or_else(|| {
        "no Torito ELF note: not a Torito kernel (other kernels boot with QEMU or Firecracker)".to_string()
    })?;
    if note.abi_version != torito_abi::ABI_VERSION {
        return Err(format!(
            "built for Torito boot ABI v{}, this monitor speaks v{}; rebuild the app or the monitor",
            note.abi_version,
            torito_abi::ABI_VERSION
        ));
    }
    let inside = |addr: u64, len: u64, exec: bool| {
        segments
            .iter()
            .any(|s| (!exec || s.exec) && addr >= s.paddr && addr.saturating_add(len) <= s.paddr + s.memsz)
    };
    let checks = [
        ("entry point", note.entry, 1, true),
        ("stack", note.stack_top.saturating_sub(16), 16, false),
        ("GDT", note.gdt_base, u64::from(note.gdt_limit) + 1, false),
        ("IDT", note.idt_base, u64::from(note.idt_limit) + 1, false),
        ("TSS", note.tss_base, u64::from(note.tss_limit) + 1, false),
    ];
    let cores = u64::from(note.max_cores.max(1));
    let smp = [
        ("secondary entry", note.ap_entry, 1, true),
        ("per-core blocks", note.percpu_base, cores * u64::from(note.percpu_stride), false),
        ("TSSs", note.tss_base, cores * u64::from(note.tss_stride), false),
    ];
    let smp = if note.ap_entry != 0 && note.max_cores > 1 { &smp[..] } else { &[] };
    for &(what, addr, len, exec) in checks.iter().chain(smp) {
        if !inside(addr, len, exec) {
            return Err(format!("the Torito note's {what} ({addr:#x}) is not inside a loaded segment"));
        }
    }
    Ok(ElfInfo { note, segments })
}

/// The note's stack guard pages, read from the image's file (`read_at`:
/// from its bytes at `offset`): page-aligned, non-zero addresses only, at
/// most `MAX_STACK_GUARDS` (an ELF's table is not trusted beyond that). A
/// table outside the segments' file bytes (zeros in memory) names none.
///
/// Not from guest memory: where the image is mapped from its file, a read
/// there maps the file's pages around it read-only (the kernel's
/// fault-around, 64 KiB), and the warm-up's copy of each then costs a
/// TLB flush on every CPU the monitor runs on.
pub fn stack_guards(info: &ElfInfo, read_at: &mut dyn FnMut(&mut [u8], u64) -> bool) -> Vec<u64> {
    let note = &info.note;
    let n = note.stack_guard_count.min(torito_abi::note::MAX_STACK_GUARDS) as usize;
    if note.stack_guards == 0 || n == 0 {
        return Vec::new();
    }
    let len = n as u64 * 8;
    let Some(offset) = info.segments.iter().find_map(|s| {
        let at = note.stack_guards.checked_sub(s.paddr)?;
        (at.checked_add(len)? <= s.file_size).then(|| s.offset.checked_add(at)).flatten()
    }) else {
        return Vec::new();
    };
    // At most 512 bytes: on the stack, no heap block to free.
    let mut raw = [0u8; torito_abi::note::MAX_STACK_GUARDS as usize * 8];
    let raw = &mut raw[..n * 8];
    if !read_at(raw, offset) {
        return Vec::new();
    }
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .filter(|&a| a != 0 && a.is_multiple_of(4096))
        .collect()
}

/// Find the Torito note in the contents of a `PT_NOTE` segment.
fn find_note(data: &[u8]) -> Option<KernelNote> {
    let mut off = 0u64;
    let align4 = |x: u64| (x + 3) & !3;
    while let (Some(namesz), Some(descsz), Some(ntype)) =
        (u32_at(data, off), u32_at(data, off + 4), u32_at(data, off + 8))
    {
        let name_off = off + 12;
        let desc_off = name_off + align4(u64::from(namesz));
        let next = desc_off + align4(u64::from(descsz));
        let name = data.get(name_off as usize..(name_off + u64::from(namesz)) as usize)?;
        if ntype == NOTE_TYPE
            && name.strip_suffix(b"\0") == Some(NOTE_NAME)
            && descsz as usize >= KERNEL_NOTE_SIZE
        {
            let desc = data.get(desc_off as usize..desc_off as usize + KERNEL_NOTE_SIZE)?;
            return KernelNote::read_from_bytes(desc).ok();
        }
        off = next;
    }
    None
}

/// Segments at least this large are mapped from the file rather than
/// copied (see [`load`]): baked-in files cost nothing until they are read,
/// and an appliance's code (~630 KiB for httpd) only as the guest first
/// touches each page, instead of every page at launch. Copying httpd's
/// took ~450 µs of its launch here (each page a first touch of the
/// monitor's mapping, then the copy); mapped, exec → `kernel_main` fell
/// 430–560 µs and the first response 240–480 µs sooner (the pages the
/// guest touches cost a little more at their first touch). Smaller
/// segments (hello's code, 40 KiB) are copied, as before.
pub const MAP_MIN: u64 = 64 << 10;
const PAGE: u64 = 4096;

/// How much of the image's code and data [`warm_ranges`] names (httpd's
/// take 1.1 MiB with `.bss`; the linker script puts data first, then the code in start order).
pub const WARM_IMAGE: u64 = 1 << 20;
/// How much of the heap [`warm_ranges`] names: a NIC appliance's cold start
/// (httpd under a client retrying every 100 µs) used ~1.2 MiB of it.
pub const WARM_HEAP: u64 = 1 << 20;
/// How much of the boot stack, below its top, [`warm_ranges`] names first
/// (httpd's start reaches ~36 KiB down).
pub const WARM_STACK: u64 = 64 << 10;
/// How much of a writable segment that holds no code [`warm_ranges`]
/// names, from its start: the kernel's data and the first core's CPL0
/// stack. The rest of it is the static stacks of the other cores (and
/// their double-fault stacks), touched only when those run: made present,
/// they were ~300 KiB of pages the process's exit freed too.
pub const WARM_DATA: u64 = 64 << 10;

/// The guest memory a start touches first, `(address, bytes)`, for the
/// monitor to make present once the guest runs (`Installer::warm_up`),
/// in that order:
/// - the top [`WARM_STACK`] bytes of the boot stack and the kernel's
///   statics above it, up to the end of their segment: the first pages
///   the guest writes (its stack grows down a page at a time, each page a
///   fault of its own where the host has none to map beside it);
/// - the image's code and data (its executable segments, and the first
///   [`WARM_DATA`] bytes of its other writable ones, in order, from their
///   lowest page, [`WARM_IMAGE`] bytes at most in all; not the read-only
///   segment of baked-in files, read from the file as the guest needs
///   them);
/// - the [`WARM_HEAP`] bytes after the image, where the kernel's heap
///   starts.
///
/// Ranges may reach beyond RAM; the caller clips them.
pub fn warm_ranges(info: &ElfInfo) -> Vec<(u64, u64)> {
    let Some(end) = image_end(info) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    let stack = boot_stack_top(info);
    if let Some((start, stop)) = stack {
        ranges.push((start, stop - start));
    }
    let mut code_and_data: Vec<&Segment> = info.segments.iter().filter(|s| s.exec || s.writable).collect();
    code_and_data.sort_by_key(|s| s.paddr);
    let mut left = WARM_IMAGE.saturating_sub(ranges.first().map_or(0, |r| r.1));
    for s in code_and_data {
        let start = s.paddr / PAGE * PAGE;
        let stop = s.paddr.saturating_add(s.memsz).div_ceil(PAGE).saturating_mul(PAGE);
        let most = if s.exec { left } else { left.min(WARM_DATA) };
        let len = stop.saturating_sub(start).min(most);
        // What the stack's range holds already is left out.
        let pieces = match stack {
            Some((a, b)) if a < start + len && start < b => {
                [(start, a.max(start)), (b.min(start + len), start + len)]
            }
            _ => [(start, start + len), (0, 0)],
        };
        for (a, b) in pieces {
            if b > a {
                ranges.push((a, b - a));
                left -= b - a;
            }
        }
    }
    ranges.push((end.div_ceil(PAGE).saturating_mul(PAGE), WARM_HEAP));
    ranges
}

/// The pages from [`WARM_STACK`] below the boot stack's top to the end of
/// the writable segment that holds it, `[start, stop)`; `None` when the
/// note's stack top lies in no writable segment.
fn boot_stack_top(info: &ElfInfo) -> Option<(u64, u64)> {
    let top = info.note.stack_top;
    let seg = info
        .segments
        .iter()
        .find(|s| s.writable && s.paddr < top && top <= s.paddr.saturating_add(s.memsz))?;
    let start = top.saturating_sub(WARM_STACK).max(seg.paddr) / PAGE * PAGE;
    let stop = seg.paddr.saturating_add(seg.memsz).div_ceil(PAGE).saturating_mul(PAGE);
    Some((start, stop.min(top.div_ceil(PAGE) * PAGE + WARM_STACK)))
}

/// How much of the heap [`heap_start`] names: the first thread stacks of
/// an appliance (64 KiB each by default) with room to spare.
pub const SMALL_PAGE_HEAP: u64 = 4 << 20;

/// Where the kernel's heap starts (right after the image), [`SMALL_PAGE_HEAP`]
/// bytes of it: mapped with 4 KiB pages from the start
/// (`paging::page_tables`). Empty for an image without segments.
pub fn heap_start(info: &ElfInfo) -> std::ops::Range<u64> {
    image_end(info).map_or(0..0, |end| {
        let start = end.div_ceil(PAGE).saturating_mul(PAGE);
        start..start.saturating_add(SMALL_PAGE_HEAP)
    })
}

/// The end of the image's highest segment in memory.
fn image_end(info: &ElfInfo) -> Option<u64> {
    info.segments.iter().map(|s| s.paddr.saturating_add(s.memsz)).max()
}

/// Put the segments of a checked image into guest memory, straight from
/// `src` (a file: no intermediate buffer). Bytes beyond a segment's file
/// size are left as they are: fresh guest memory is zero.
///
/// A segment of [`MAP_MIN`] bytes or more whose file offset and address
/// agree modulo the page size has its whole pages offered to `map(gpa,
/// offset, len)`, which maps them from the file copy-on-write (and says
/// whether it did); only the partial pages at its ends are copied. So a
/// large archive of baked-in files is read from the page cache page by
/// page as the guest touches it, not copied at launch.
pub fn load<R: ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    src: &mut R,
    info: &ElfInfo,
    map: &mut dyn FnMut(u64, u64, u64) -> bool,
) -> Result<(), String> {
    let copy = |src: &mut R, paddr: u64, offset: u64, len: u64| -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        src.seek(SeekFrom::Start(offset)).map_err(|e| format!("loading failed: {e}"))?;
        mem.read_exact_volatile_from(GuestAddress(paddr), src, len as usize)
            .map_err(|e| format!("loading the segment at {paddr:#x} failed: {e}"))
    };
    for seg in &info.segments {
        if info.note.boot_tables != 0 && seg.paddr == u64::from(info.note.boot_tables) {
            continue;
        }
        let head = (PAGE - seg.paddr % PAGE) % PAGE;
        let whole = seg.file_size.saturating_sub(head) / PAGE * PAGE;
        if seg.file_size >= MAP_MIN
            && (seg.offset + head).is_multiple_of(PAGE)
            && whole > 0
            && map(seg.paddr + head, seg.offset + head, whole)
        {
            copy(src, seg.paddr, seg.offset, head)?;
            let tail = head + whole;
            copy(src, seg.paddr + tail, seg.offset + tail, seg.file_size - tail)?;
        } else {
            copy(src, seg.paddr, seg.offset, seg.file_size)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    /// The boot stack's top first, then the code and data from their
    /// lowest page, at most `WARM_IMAGE` in all, not the baked-in files'
    /// read-only segment, then the heap's start after the image's highest
    /// byte (`.bss` included).
    #[test]
    fn the_image_and_the_heap_start_are_warmed() {
        let seg =
            |paddr, memsz, exec, writable| Segment { paddr, memsz, file_size: 0, offset: 0, exec, writable };
        let info = |segments| ElfInfo { note: KernelNote::default(), segments };
        assert!(warm_ranges(&info(vec![])).is_empty());
        // httpd: code and data, its 860-byte site, page tables and .bss.
        let httpd = info(vec![
            seg(0x10_0000, 0x9_96ab, true, true),
            seg(0x19_96b0, 0x35c, false, false),
            seg(0x19_a000, 0x8_3000, false, true),
        ]);
        assert_eq!(
            warm_ranges(&httpd),
            vec![(0x10_0000, 0x9_a000), (0x19_a000, WARM_DATA), (0x21_d000, WARM_HEAP)]
        );
        // With its boot stack's top (0x21_b000, statics up to 0x21_d000):
        // that first, then the rest within the budget.
        let mut with_stack = httpd.clone();
        with_stack.note.stack_top = 0x21_b000;
        assert_eq!(
            warm_ranges(&with_stack),
            vec![
                (0x20_b000, 0x12_000),
                (0x10_0000, 0x9_a000),
                (0x19_a000, WARM_DATA),
                (0x21_d000, WARM_HEAP)
            ]
        );
        // Within the budget: a large code segment leaves less for data.
        let mut big = with_stack.clone();
        big.segments[0].memsz = WARM_IMAGE - 0x12_000 - 0x4000;
        let code = WARM_IMAGE - 0x12_000 - 0x4000;
        assert_eq!(warm_ranges(&big)[..3], [(0x20_b000, 0x12_000), (0x10_0000, code), (0x19_a000, 0x4000)]);
        // A small image: the stack's range is cut out of its segment's.
        let mut small =
            info(vec![seg(0x10_0000, 0x1_0000, true, false), seg(0x11_0000, 0x3_0000, false, true)]);
        small.note.stack_top = 0x12_8000;
        assert_eq!(
            warm_ranges(&small),
            vec![(0x11_8000, 0x2_0000), (0x10_0000, 0x1_0000), (0x11_0000, 0x8000), (0x14_0000, WARM_HEAP)]
        );
        // A stack top outside every writable segment: as without one.
        let mut odd = httpd.clone();
        odd.note.stack_top = 0x30_0000;
        assert_eq!(warm_ranges(&odd), warm_ranges(&httpd));
        // 4 MiB of baked-in files: skipped; the heap after them.
        let files = info(vec![
            seg(0x10_0000, 0x7_abab, true, true),
            seg(0x17_abb0, 0x40_00f0, false, false),
            seg(0x57_b000, 0x8_3000, false, true),
        ]);
        assert_eq!(
            warm_ranges(&files),
            vec![(0x10_0000, 0x7_b000), (0x57_b000, WARM_DATA), (0x5f_e000, WARM_HEAP)]
        );
    }

    /// The guard table is read from the file bytes of the segment that
    /// holds it; a table beyond them, or none, names no guard.
    #[test]
    fn stack_guards_are_read_from_the_file() {
        let mut file = vec![0u8; 0x3000];
        for (i, g) in [0x15_0000u64, 0x15_0123, 0, 0x16_3000].iter().enumerate() {
            file[0x2000 + i * 8..0x2008 + i * 8].copy_from_slice(&g.to_le_bytes());
        }
        let seg = Segment {
            paddr: 0x10_0000,
            memsz: 0x4000,
            file_size: 0x2000,
            offset: 0x1000,
            exec: true,
            writable: true,
        };
        let info = |at, count| {
            let note = KernelNote { stack_guards: at, stack_guard_count: count, ..KernelNote::default() };
            ElfInfo { note, segments: vec![seg] }
        };
        let mut read = |buf: &mut [u8], at: u64| {
            let at = at as usize;
            file.get(at..at + buf.len()).map(|b| buf.copy_from_slice(b)).is_some()
        };
        // Unaligned and zero entries are dropped.
        assert_eq!(stack_guards(&info(0x10_1000, 4), &mut read), vec![0x15_0000, 0x16_3000]);
        assert_eq!(stack_guards(&info(0x10_1000, 0), &mut read), Vec::<u64>::new());
        // In the segment's zero-filled tail: none.
        assert_eq!(stack_guards(&info(0x10_2000, 1), &mut read), Vec::<u64>::new());
        assert_eq!(stack_guards(&info(0x10_1ff8, 2), &mut read), Vec::<u64>::new());
    }

    /// The heap starts at the page after the image's highest byte.
    #[test]
    fn the_heap_starts_after_the_image() {
        let seg =
            |paddr, memsz| Segment { paddr, memsz, file_size: 0, offset: 0, exec: true, writable: true };
        let info = |segments| ElfInfo { note: KernelNote::default(), segments };
        assert_eq!(heap_start(&info(vec![])), 0..0);
        let httpd = info(vec![seg(0x10_0000, 0x9_96ab), seg(0x19_a000, 0x8_2f01)]);
        assert_eq!(heap_start(&httpd), 0x21_d000..0x21_d000 + SMALL_PAGE_HEAP);
    }

    /// A minimal valid Torito ELF: one executable segment at 1 MiB and the note.
    pub(crate) fn tiny_elf() -> Vec<u8> {
        let mut f = vec![0u8; 0x2000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph =
            |f: &mut Vec<u8>, at: usize, t: u32, flags: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
                f[at..at + 4].copy_from_slice(&t.to_le_bytes());
                f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
                f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
                f[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
                f[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
                f[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
                f[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
            };
        ph(&mut f, 64, PT_LOAD, 7, 0x1000, 0x10_0000, 0x1000, 0x4000);
        ph(&mut f, 120, PT_NOTE, 4, 0x1800, 0x10_0800, 20 + KERNEL_NOTE_SIZE as u64, 0);
        let note = KernelNote {
            abi_version: torito_abi::ABI_VERSION,
            entry: 0x10_0000,
            stack_top: 0x10_4000,
            gdt_base: 0x10_0100,
            idt_base: 0x10_0200,
            tss_base: 0x10_0300,
            gdt_limit: 0x3f,
            idt_limit: 0xfff,
            tss_limit: 0x67,
            tss_selector: 0x30,
            user_cs: 0x23,
            user_ss: 0x1b,
            image_end: 0x10_4000,
            ..Default::default()
        };
        let n = 0x1800;
        f[n..n + 4].copy_from_slice(&7u32.to_le_bytes());
        f[n + 4..n + 8].copy_from_slice(&(KERNEL_NOTE_SIZE as u32).to_le_bytes());
        f[n + 8..n + 12].copy_from_slice(&NOTE_TYPE.to_le_bytes());
        f[n + 12..n + 19].copy_from_slice(b"Torito\0");
        f[n + 20..n + 20 + KERNEL_NOTE_SIZE].copy_from_slice(note.as_bytes());
        // Code at the entry: `out 0xf4, al; hlt`.
        f[0x1000..0x1003].copy_from_slice(&[0xe6, 0xf4, 0xf4]);
        f
    }

    const MEM: u64 = 16 << 20;

    #[test]
    fn accepts_a_valid_image() {
        let f = tiny_elf();
        let info = check(&f[..], MEM).unwrap();
        assert_eq!(info.note.entry, 0x10_0000);
        assert_eq!(
            info.segments,
            [Segment {
                paddr: 0x10_0000,
                memsz: 0x4000,
                file_size: 0x1000,
                offset: 0x1000,
                exec: true,
                writable: true
            }]
        );
    }

    fn err(f: &[u8]) -> String {
        check(f, MEM).unwrap_err()
    }

    #[test]
    fn loads_segments_at_their_addresses() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let f = tiny_elf();
        load(&mem, &mut std::io::Cursor::new(&f[..]), &check(&f[..], MEM).unwrap(), &mut |_, _, _| false)
            .unwrap();
        let mut code = [0u8; 3];
        mem.read_slice(&mut code, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(code, [0xe6, 0xf4, 0xf4]);
    }

    /// A segment of MAP_MIN bytes or more: its whole pages are offered to
    /// `map` and its partial ends copied; with the real `map_file` the
    /// guest sees the file's bytes, and its writes do not reach the file.
    #[test]
    fn large_segments_are_mapped_and_their_ends_copied() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let size = MAP_MIN + 5000;
        let mut f = vec![0u8; 0x3000 + size as usize];
        for (i, b) in f.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let path = std::env::temp_dir().join(format!("torito-loader-map-{}", std::process::id()));
        std::fs::write(&path, &f).unwrap();
        // Offset 0x2800 at address 0x20_0800: agree modulo the page.
        let seg = Segment {
            paddr: 0x20_0800,
            memsz: size,
            file_size: size,
            offset: 0x2800,
            exec: false,
            writable: false,
        };
        let info = ElfInfo { note: KernelNote::default(), segments: vec![seg] };
        let mut offered = Vec::new();
        let file = std::fs::File::open(&path).unwrap();
        let mut map = |gpa, offset, len| {
            offered.push((gpa, offset, len));
            crate::vstate::map_file(&mem, gpa, &file, offset, len)
        };
        load(&mem, &mut std::fs::File::open(&path).unwrap(), &info, &mut map).unwrap();
        let whole = (size - 0x800) / 4096 * 4096;
        assert_eq!(offered, vec![(0x20_1000, 0x3000, whole)]);
        let mut got = vec![0u8; size as usize];
        mem.read_slice(&mut got, GuestAddress(0x20_0800)).unwrap();
        assert!(got == f[0x2800..0x2800 + size as usize], "head, mapped pages and tail as in the file");
        mem.write_slice(b"guest", GuestAddress(0x20_1000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), f, "the file is never written");
        // A segment whose offset and address disagree is copied whole.
        let odd = Segment {
            paddr: 0x40_0800,
            memsz: size,
            file_size: size,
            offset: 0x2000,
            exec: false,
            writable: false,
        };
        offered.clear();
        let info = ElfInfo { note: KernelNote::default(), segments: vec![odd] };
        let mut map = |gpa, offset, len| {
            offered.push((gpa, offset, len));
            false
        };
        load(&mem, &mut std::fs::File::open(&path).unwrap(), &info, &mut map).unwrap();
        assert!(offered.is_empty());
        mem.read_slice(&mut got, GuestAddress(0x40_0800)).unwrap();
        assert!(got == f[0x2000..0x2000 + size as usize]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_32_bit_boot_tables_segment_is_skipped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let f = tiny_elf();
        let mut info = check(&f[..], MEM).unwrap();
        info.note.boot_tables = 0x10_0000;
        load(&mem, &mut std::io::Cursor::new(&f[..]), &info, &mut |_, _, _| false).unwrap();
        let mut code = [0u8; 3];
        mem.read_slice(&mut code, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(code, [0, 0, 0]);
    }

    #[test]
    fn files_and_bytes_read_the_same() {
        let dir = std::env::temp_dir().join(format!("torito-loader-{}", std::process::id()));
        std::fs::write(&dir, tiny_elf()).unwrap();
        let file = std::fs::File::open(&dir).unwrap();
        assert_eq!(check(&file, MEM).unwrap().note, check(&tiny_elf()[..], MEM).unwrap().note);
        assert_eq!(Image::read(&file, 0x2000, 1), None);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(err(b"hello").contains("too short"));
        assert!(err(&[0u8; 100]).contains("not an ELF"));
        let mut f = tiny_elf();
        f[4] = 1;
        assert!(err(&f).contains("32-bit"));
        let mut f = tiny_elf();
        f[18] = 40; // ARM
        assert!(err(&f).contains("another machine"));
        let mut f = tiny_elf();
        f[16] = 3; // ET_DYN
        assert!(err(&f).contains("not an executable"));
        let f = tiny_elf();
        assert!(err(&f[..0x1100]).contains("truncated"));
        assert!(err(&f[..100]).contains("truncated"));
    }

    #[test]
    fn rejects_segments_outside_ram_and_below_the_kernel_base() {
        let f = tiny_elf();
        assert!(check(&f[..], 1 << 20).unwrap_err().contains("outside guest RAM"));
        let mut f = tiny_elf();
        f[64 + 24..64 + 32].copy_from_slice(&0x8000u64.to_le_bytes());
        assert!(err(&f).contains("below"));
    }

    #[test]
    fn requires_the_note_and_its_version() {
        let mut f = tiny_elf();
        f[0x1808..0x180c].copy_from_slice(&1u32.to_le_bytes());
        assert!(err(&f).contains("no Torito ELF note"));
        let mut f = tiny_elf();
        f[0x1800 + 20] = 99;
        assert!(err(&f).contains("ABI v99"));
    }

    #[test]
    fn requires_entry_inside_an_executable_segment() {
        let mut f = tiny_elf();
        let e = 0x1800 + 20 + 8;
        f[e..e + 8].copy_from_slice(&0x90_0000u64.to_le_bytes());
        assert!(err(&f).contains("entry point"));
    }

    #[test]
    fn note_parsing_survives_garbage() {
        assert!(find_note(&[0xff; 64]).is_none());
        assert!(find_note(&[]).is_none());
        let mut d = vec![0u8; 12];
        d[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(find_note(&d).is_none());
    }
}
