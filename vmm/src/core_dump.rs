//! `torito --core PATH`: when the guest panics, faults or crashes, an ELF
//! core file of it that `gdb APP-ELF PATH` opens: guest RAM as loaded
//! segments (the guest's addresses are physical ones: the kernel
//! identity-maps RAM), and each vCPU's registers as an `NT_PRSTATUS` note,
//! which gdb shows as a thread (`info threads`; `bt` follows the frames).
//!
//! The layout is Linux's for x86_64 cores (`<linux/elfcore.h>`,
//! `user_regs_struct`); written by hand because the crates that write ELF
//! (`object`) have no core-file notes. Pages of zeros are left as holes (a
//! sparse file), so a 128 MiB guest that touched little makes a small file.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// A vCPU's registers, as a core file holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreRegs {
    /// The vCPU's index (gdb's thread `N + 1`).
    pub cpu: u32,
    /// General registers: rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8–r15.
    pub rax: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub rsp: u64,
    /// r8 to r15.
    pub r: [u64; 8],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// Segment selectors: cs, ss, ds, es, fs, gs.
    pub seg: [u64; 6],
    /// FS and GS bases.
    pub fs_base: u64,
    #[allow(missing_docs)]
    pub gs_base: u64,
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;
const NT_PRPSINFO: u32 = 3;
/// `sizeof(struct elf_prstatus)` on x86_64.
const PRSTATUS_SIZE: usize = 336;
/// `sizeof(struct elf_prpsinfo)` on x86_64.
const PRPSINFO_SIZE: usize = 136;
const EHDR: usize = 64;
const PHDR: usize = 56;
const PAGE: usize = 4096;

/// One note: name `CORE`, type, description; padded to 4 bytes.
fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    out.extend_from_slice(&5u32.to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(b"CORE\0\0\0\0");
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// `struct elf_prstatus` for `r`: the signal (SIGSEGV for a fault, SIGABRT
/// otherwise, as gdb reports it), the thread id, `user_regs_struct`.
fn prstatus(r: &CoreRegs, signal: u32) -> Vec<u8> {
    let mut d = vec![0u8; PRSTATUS_SIZE];
    d[0..4].copy_from_slice(&signal.to_le_bytes()); // si_signo
    d[12..14].copy_from_slice(&(signal as u16).to_le_bytes()); // pr_cursig
    d[32..36].copy_from_slice(&(r.cpu + 1).to_le_bytes()); // pr_pid: the thread
    // user_regs_struct, in its order.
    let regs = [
        r.r[7],
        r.r[6],
        r.r[5],
        r.r[4],
        r.rbp,
        r.rbx,
        r.r[3],
        r.r[2],
        r.r[1],
        r.r[0],
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX,
        r.rip,
        r.seg[0],
        r.rflags,
        r.rsp,
        r.seg[1],
        r.fs_base,
        r.gs_base,
        r.seg[2],
        r.seg[3],
        r.seg[4],
        r.seg[5],
    ];
    for (i, v) in regs.iter().enumerate() {
        d[112 + i * 8..120 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    d
}

/// `struct elf_prpsinfo`: state, the program's name and arguments.
fn prpsinfo(name: &str, args: &str) -> Vec<u8> {
    let mut d = vec![0u8; PRPSINFO_SIZE];
    d[1] = b'R';
    d[24..28].copy_from_slice(&1u32.to_le_bytes()); // pr_pid
    let n = name.len().min(15);
    d[40..40 + n].copy_from_slice(&name.as_bytes()[..n]);
    let a = args.len().min(79);
    d[56..56 + a].copy_from_slice(&args.as_bytes()[..a]);
    d
}

/// The headers and notes of a core of `regs` over the RAM `ranges`
/// (`(guest address, length)`), whose contents follow at the returned
/// offset, one range after the other.
fn headers(regs: &[CoreRegs], signal: u32, ranges: &[(u64, u64)], name: &str, args: &str) -> (Vec<u8>, u64) {
    let mut notes = Vec::new();
    let psargs = format!("{name} {args}");
    note(&mut notes, NT_PRPSINFO, &prpsinfo(name, psargs.trim()));
    for r in regs {
        note(&mut notes, NT_PRSTATUS, &prstatus(r, signal));
    }
    let phnum = 1 + ranges.len();
    let notes_at = EHDR + phnum * PHDR;
    let data_at = (notes_at + notes.len()).next_multiple_of(PAGE) as u64;
    let mut h = Vec::with_capacity(notes_at + notes.len());
    // ELF header.
    h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    h.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(EHDR as u16).to_le_bytes());
    h.extend_from_slice(&(PHDR as u16).to_le_bytes());
    h.extend_from_slice(&(phnum as u16).to_le_bytes());
    h.extend_from_slice(&[0; 6]); // no sections
    let phdr = |h: &mut Vec<u8>, kind: u32, flags: u32, off: u64, addr: u64, len: u64, align: u64| {
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
        h.extend_from_slice(&addr.to_le_bytes());
        h.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        h.extend_from_slice(&len.to_le_bytes()); // p_filesz
        h.extend_from_slice(&len.to_le_bytes()); // p_memsz
        h.extend_from_slice(&align.to_le_bytes());
    };
    phdr(&mut h, PT_NOTE, 0, notes_at as u64, 0, notes.len() as u64, 4);
    let mut off = data_at;
    for &(addr, len) in ranges {
        phdr(&mut h, PT_LOAD, 7, off, addr, len, PAGE as u64);
        off += len;
    }
    h.extend_from_slice(&notes);
    (h, data_at)
}

/// Write the core of a guest with RAM `mem` and vCPU registers `regs` to
/// `path`: `signal` 11 (SIGSEGV) for a CPU fault, 6 (SIGABRT) for a panic.
/// `name` and `args` are the app's (gdb prints them).
pub fn write(
    path: &Path,
    mem: &GuestMemoryMmap,
    regs: &[CoreRegs],
    signal: u32,
    name: &str,
    args: &str,
) -> std::io::Result<()> {
    let ranges: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let (head, data_at) = headers(regs, signal, &ranges, name, args);
    let mut f = File::create(path)?;
    f.write_all(&head)?;
    let mut at = data_at;
    let mut page = vec![0u8; PAGE];
    for &(addr, len) in &ranges {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE as u64) as usize;
            let buf = &mut page[..n];
            // A page not readable (not registered yet) stays a hole.
            if mem.read_slice(buf, GuestAddress(addr + done)).is_ok() && buf.iter().any(|&b| b != 0) {
                f.seek(SeekFrom::Start(at + done))?;
                f.write_all(buf)?;
            }
            done += n as u64;
        }
        at += len;
    }
    // Holes at the end still count.
    f.set_len(at)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_say_core_x86_64_with_notes_then_loads() {
        let regs =
            [CoreRegs { cpu: 0, rip: 0x10_1234, rsp: 0x20_0000, rbp: 0x20_0010, ..Default::default() }];
        let (h, data_at) = headers(&regs, 6, &[(0, 1 << 20), (2 << 20, 1 << 20)], "hello", "a b");
        assert_eq!(&h[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([h[16], h[17]]), 4, "ET_CORE");
        assert_eq!(u16::from_le_bytes([h[18], h[19]]), 62, "EM_X86_64");
        assert_eq!(u16::from_le_bytes([h[56], h[57]]), 3, "a note and two loads");
        assert_eq!(data_at % PAGE as u64, 0);
        let ph = |i: usize, f: usize| {
            let at = EHDR + i * PHDR + f;
            u64::from_le_bytes(h[at..at + 8].try_into().unwrap())
        };
        assert_eq!(ph(0, 0) as u32, PT_NOTE);
        assert_eq!(ph(1, 0) as u32, PT_LOAD);
        assert_eq!((ph(1, 8), ph(1, 16), ph(1, 32)), (data_at, 0, 1 << 20));
        assert_eq!((ph(2, 8), ph(2, 16)), (data_at + (1 << 20), 2 << 20));
        // The prstatus note holds rip at user_regs_struct's slot 16.
        let notes = &h[ph(0, 8) as usize..];
        let prpsinfo_len = 12 + 8 + PRPSINFO_SIZE;
        let pr = &notes[prpsinfo_len + 20..];
        let rip = u64::from_le_bytes(pr[112 + 16 * 8..112 + 17 * 8].try_into().unwrap());
        assert_eq!(rip, 0x10_1234);
        assert_eq!(u32::from_le_bytes(pr[32..36].try_into().unwrap()), 1, "thread 1");
    }
}
