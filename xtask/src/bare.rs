//! A bare guest for the Torito monitor: an ELF whose first instruction
//! stops the VM through the monitor's exit register. Booting it measures
//! the monitor's own floor (everything but the kernel).
//!
//! It is generated here rather than built from a crate, because it must be
//! nothing but a Torito note, the descriptor tables the note names, and
//! three instructions.

use std::path::{Path, PathBuf};

const BASE: u64 = 0x10_0000;
const FILE_OFFSET: usize = 0x1000;
const NOTE_OFFSET: usize = 0x800;
const CODE: u64 = BASE;
const GDT: u64 = BASE + 0x100;
const TSS: u64 = BASE + 0x200;
const IDT: u64 = BASE + 0x300;
const STACK_TOP: u64 = BASE + 0x2000;
const IMAGE_SIZE: usize = 0x400;
const NOTE_DESC: usize = torito_abi::note::KERNEL_NOTE_SIZE; // ap_entry etc. stay 0: one core

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The bare guest's bytes.
pub fn image() -> Vec<u8> {
    let mut f = vec![0u8; FILE_OFFSET + IMAGE_SIZE];
    // ELF header.
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // x86-64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &CODE.to_le_bytes());
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &2u16.to_le_bytes());
    let ph =
        |f: &mut Vec<u8>, at: usize, t: u32, flags: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            put(f, at, &t.to_le_bytes());
            put(f, at + 4, &flags.to_le_bytes());
            put(f, at + 8, &off.to_le_bytes());
            put(f, at + 16, &addr.to_le_bytes());
            put(f, at + 24, &addr.to_le_bytes());
            put(f, at + 32, &filesz.to_le_bytes());
            put(f, at + 40, &memsz.to_le_bytes());
            put(f, at + 48, &0x1000u64.to_le_bytes());
        };
    ph(&mut f, 64, 1, 7, FILE_OFFSET as u64, BASE, IMAGE_SIZE as u64, STACK_TOP - BASE);
    ph(&mut f, 120, 4, 4, NOTE_OFFSET as u64, 0, 20 + NOTE_DESC as u64, 0);
    // Torito note (layout: torito_abi::note::KernelNote).
    let n = NOTE_OFFSET;
    put(&mut f, n, &7u32.to_le_bytes());
    put(&mut f, n + 4, &(NOTE_DESC as u32).to_le_bytes());
    put(&mut f, n + 8, &0x5430_0001u32.to_le_bytes());
    put(&mut f, n + 12, b"Torito\0");
    let d = n + 20;
    put(&mut f, d, &torito_abi::ABI_VERSION.to_le_bytes());
    put(&mut f, d + 8, &CODE.to_le_bytes());
    put(&mut f, d + 16, &STACK_TOP.to_le_bytes());
    put(&mut f, d + 24, &GDT.to_le_bytes());
    put(&mut f, d + 32, &IDT.to_le_bytes());
    put(&mut f, d + 40, &TSS.to_le_bytes());
    put(&mut f, d + 48, &(8u16 * 8 - 1).to_le_bytes()); // GDT limit
    put(&mut f, d + 50, &15u16.to_le_bytes()); // IDT limit: one empty gate
    put(&mut f, d + 52, &0x67u16.to_le_bytes());
    put(&mut f, d + 54, &0x30u16.to_le_bytes());
    put(&mut f, d + 56, &0x23u16.to_le_bytes());
    put(&mut f, d + 58, &0x1bu16.to_le_bytes());
    put(&mut f, d + 64, &STACK_TOP.to_le_bytes());
    // Code, at CPL3: movabs rax, 0xc0000008 (exit register); mov qword [rax], 0; jmp $.
    let code = FILE_OFFSET;
    put(&mut f, code, &[0x48, 0xb8, 0x08, 0, 0, 0xc0, 0, 0, 0, 0]);
    put(&mut f, code + 10, &[0x48, 0xc7, 0x00, 0, 0, 0, 0]);
    put(&mut f, code + 17, &[0xeb, 0xfe]);
    // GDT: the kernel's layout (null, kernel code/data, user data/code, 32-bit code, TSS).
    let gdt: [u64; 6] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
        0x00cf_9b00_0000_ffff,
    ];
    for (i, e) in gdt.iter().enumerate() {
        put(&mut f, FILE_OFFSET + 0x100 + i * 8, &e.to_le_bytes());
    }
    let tss_desc = 0x67 | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS >> 24) & 0xff) << 56);
    put(&mut f, FILE_OFFSET + 0x130, &tss_desc.to_le_bytes());
    // TSS: RSP0 at offset 4; no I/O bitmap.
    put(&mut f, FILE_OFFSET + 0x204, &STACK_TOP.to_le_bytes());
    put(&mut f, FILE_OFFSET + 0x200 + 102, &104u16.to_le_bytes());
    f
}

/// Write the bare guest under `dir`; returns its path.
pub fn write(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bare.elf");
    std::fs::write(&path, image())?;
    Ok(path)
}
