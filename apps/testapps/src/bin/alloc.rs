//! Allocates 64 MiB in many `Vec`s, fills them with a pattern, checks every
//! byte, frees and does it again; also maps a fresh page at a high address
//! through the kernel's page tables and checks it aliases its frame.
#![no_std]
#![no_main]
extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

kernel::entry!(main);

const CHUNK: usize = 256 * 1024;
const TOTAL: usize = 64 * 1024 * 1024;

fn pattern(i: usize, j: usize) -> u8 {
    (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8
}

fn round(label: &str) -> usize {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..TOTAL / CHUNK {
        let v: Vec<u8> = (0..CHUNK).map(|j| pattern(i, j)).collect();
        chunks.push(v);
    }
    let mut bad = 0;
    for (i, v) in chunks.iter().enumerate() {
        bad += v.iter().enumerate().filter(|&(j, &b)| b != pattern(i, j)).count();
    }
    let s = kernel::memory::heap_stats();
    kernel::println!(
        "alloc: {label}: {} chunks, {} bytes checked, {} bad; heap {} / {} bytes",
        chunks.len(),
        chunks.len() * CHUNK,
        bad,
        s.used,
        s.size
    );
    bad
}

fn main() -> i32 {
    let mut bad = round("round 1");
    bad += round("round 2");
    let boxed: Box<[u64; 512]> = Box::new([7; 512]);
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(if i % 2 == 0 { "ab" } else { "c" });
    }
    if boxed.iter().sum::<u64>() != 7 * 512 || text.len() != 150 {
        bad += 1;
    }
    // A new mapping through the x86_64 page tables.
    let frame = kernel::memory::allocate_frame().expect("a free frame");
    let virt: u64 = 0x0000_4000_0000_0000;
    kernel::memory::map_page(virt, frame).expect("map a high page");
    let via_map = virt as *mut u64;
    let via_identity = frame as *const u64;
    #[allow(unsafe_code)]
    // SAFETY: `virt` was just mapped to `frame`, which the allocator gave to
    // this program alone; both addresses are 8-byte aligned.
    let seen = unsafe {
        via_map.write_volatile(0x5eed_cafe);
        via_identity.read_volatile()
    };
    let translated = kernel::memory::translate(virt + 8);
    kernel::println!(
        "alloc: page {virt:#x} -> frame {frame:#x}: read back {seen:#x}, translate {translated:x?}"
    );
    if seen != 0x5eed_cafe || translated != Some(frame + 8) {
        bad += 1;
    }
    kernel::memory::unmap_page(virt).expect("unmap");
    if kernel::memory::translate(virt).is_some() {
        bad += 1;
    }
    if bad == 0 {
        kernel::println!("alloc: ok");
        0
    } else {
        kernel::println!("alloc: {bad} errors");
        1
    }
}
