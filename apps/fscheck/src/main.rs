//! fscheck: the filesystem test appliance.
//!
//! - `fscheck walk=DIR`: one line per regular file under `DIR`, sorted by
//!   path, in `sha256sum`'s format (`<hex>  <path relative to DIR>`), then
//!   `fscheck: N files, M bytes`. The test compares the lines with the
//!   host's `sha256sum` over the same tree.
//! - `fscheck write=DIR seed=S`: creates a deterministic tree under `DIR`
//!   (nested directories; files of 0 bytes to 4 MiB, written in pieces of
//!   odd sizes, some appended to; long and UTF-8 names), renames and
//!   deletes some, syncs, then walks `DIR` as above and checks that what
//!   it reads back is what it wrote. The test then reads the disk image
//!   on the host and compares.
//!
//! - `fscheck read=FILE`: reads FILE from start to end in 1 MiB pieces;
//!   prints MB/s (the bench's sequential read).
//! - `fscheck small=DIR [files=N]`: lists DIR, then opens, reads whole and
//!   closes its first N files (default: all); prints the time per file
//!   (the bench's small files; with `files=0`, the baseline whose exits
//!   the bench subtracts).
//!
//! It first lists the mounts. Any error is printed and makes the exit
//! status non-zero.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use kernel::fs::{self, FileType, io::Read};
use kernel::println;
use sha2::{Digest, Sha256};

kernel::entry!(main);

fn arg(key: &str) -> Option<&'static str> {
    kernel::args().find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
}

fn main() -> i32 {
    for m in fs::mounts() {
        println!("fscheck: mount {}", m.describe());
    }
    let result = match (arg("walk"), arg("write"), arg("read"), arg("small")) {
        (Some(dir), ..) => walk(dir).map(|_| ()),
        (_, Some(dir), ..) => {
            let seed = arg("seed").and_then(|s| s.parse().ok()).unwrap_or(1);
            write(dir, seed)
        }
        (_, _, Some(file), _) => read_through(file),
        (_, _, _, Some(dir)) => small_files(dir, arg("files").and_then(|n| n.parse().ok())),
        _ => Err(String::from("nothing to do: give walk=DIR, write=DIR seed=S, read=FILE or small=DIR")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            println!("fscheck: FAILED: {e}");
            1
        }
    }
}

/// Every regular file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut todo = alloc::vec![String::new()];
    while let Some(rel) = todo.pop() {
        let path = if rel.is_empty() {
            String::from(dir)
        } else {
            alloc::format!("{}/{rel}", dir.trim_end_matches('/'))
        };
        for e in fs::read_dir(&path).map_err(|e| alloc::format!("read_dir {path}: {e}"))? {
            let r = if rel.is_empty() {
                String::from(e.file_name())
            } else {
                alloc::format!("{rel}/{}", e.file_name())
            };
            match e.file_type() {
                FileType::Dir => todo.push(r),
                FileType::File => out.push(r),
                FileType::Symlink | FileType::Other => {}
            }
        }
    }
    // sha256sum's order when the host sorts its output: by bytes.
    out.sort();
    Ok(out)
}

/// Print the `sha256sum` lines of every file under `dir`; returns them.
fn walk(dir: &str) -> Result<Vec<String>, String> {
    let files = files_under(dir)?;
    let mut buf = alloc::vec![0u8; 64 * 1024];
    let mut text = String::new();
    let mut lines = Vec::new();
    let mut total = 0u64;
    for rel in &files {
        let path = alloc::format!("{}/{rel}", dir.trim_end_matches('/'));
        let mut f = fs::File::open(&path).map_err(|e| alloc::format!("open {path}: {e}"))?;
        let mut h = Sha256::new();
        loop {
            let n = f.read(&mut buf).map_err(|e| alloc::format!("read {path}: {e}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        let line = alloc::format!("{}  {rel}", hex(&h.finalize()));
        let _ = writeln!(text, "{line}");
        lines.push(line);
        // One console write per few KiB, not per line (each is an exit).
        if text.len() > 3500 {
            kernel::print!("{text}");
            text.clear();
        }
    }
    kernel::print!("{text}");
    println!("fscheck: {} files, {total} bytes", files.len());
    Ok(lines)
}

/// A stopwatch on the TSC: nanoseconds since `start`.
struct Watch {
    khz: u64,
    t0: u64,
}

impl Watch {
    fn start() -> Result<Self, String> {
        let khz = match kernel::boot_info().tsc_khz {
            0 => kernel::arch::tsc_khz_from_cpuid().or_else(|| kernel::arch::apic::init(0)).unwrap_or(0),
            k => k,
        };
        if khz == 0 {
            return Err(String::from("the TSC frequency is unknown"));
        }
        Ok(Self { khz, t0: kernel::arch::rdtsc() })
    }
    fn ns(&self) -> u64 {
        ((kernel::arch::rdtsc() - self.t0) * 1_000_000 / self.khz).max(1)
    }
}

/// `read=FILE`: the whole file in 1 MiB pieces.
fn read_through(path: &str) -> Result<(), String> {
    let mut f = fs::File::open(path).map_err(|e| alloc::format!("open {path}: {e}"))?;
    let mut buf = alloc::vec![0u8; 1 << 20];
    let w = Watch::start()?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| alloc::format!("read {path}: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let ns = w.ns();
    println!("fscheck: read {} MiB in 1 MiB pieces: {} MB/s", total >> 20, total * 1000 / ns);
    Ok(())
}

/// `small=DIR`: open, read whole and close the first `n` files of DIR.
fn small_files(dir: &str, n: Option<usize>) -> Result<(), String> {
    let base = dir.trim_end_matches('/');
    let dir = if base.is_empty() { "/" } else { base };
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| alloc::format!("read_dir {dir}: {e}"))?
        .filter(|e| e.file_type() == FileType::File)
        .map(|e| alloc::format!("{base}/{}", e.file_name()))
        .collect();
    names.sort();
    names.truncate(n.unwrap_or(usize::MAX));
    let w = Watch::start()?;
    let mut bytes = 0;
    for p in &names {
        bytes += fs::read(p).map_err(|e| alloc::format!("read {p}: {e}"))?.len();
    }
    let ns = w.ns();
    let each = if names.is_empty() { 0 } else { ns / names.len() as u64 };
    println!(
        "fscheck: {} small files ({bytes} bytes): open, read, close: {}.{:03} us each",
        names.len(),
        each / 1000,
        each % 1000
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Names for the tree: long, UTF-8, with spaces; none with characters FAT
/// refuses (`" * / : < > ? \ |`).
const NAMES: &[&str] = &[
    "report.txt",
    "données-été",
    "日本語のファイル名",
    "a file name that is rather long, to need several long-name entries in a FAT directory",
    "UPPER.DAT",
    "x",
    "ελληνικά και ελληνικά",
];

fn write_file(path: &str, data: &[u8], rng: &mut Rng) -> Result<(), String> {
    use kernel::fs::io::Write;
    let e = |e: fs::Error| alloc::format!("write {path}: {e}");
    // Half the files in one go, half in pieces of odd sizes, some of them
    // by appending.
    if rng.below(2) == 0 {
        return fs::write(path, data).map_err(e);
    }
    let mut f = fs::File::create(path).map_err(e)?;
    let mut at = 0;
    let cut = data.len() / 2;
    while at < cut {
        let n = (rng.below(70_000) as usize + 1).min(cut - at);
        f.write_all(&data[at..at + n]).map_err(e)?;
        at += n;
    }
    drop(f);
    let mut f = fs::OpenOptions::new().append(true).open(path).map_err(e)?;
    f.write_all(&data[cut..]).map_err(e)?;
    f.sync_all().map_err(e)
}

/// Make the tree under `dir` from `seed`, change it, check it.
fn write(dir: &str, seed: u64) -> Result<(), String> {
    let dir = dir.trim_end_matches('/');
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    fs::create_dir_all(dir).map_err(|e| alloc::format!("create_dir_all {dir}: {e}"))?;
    let mut dirs = alloc::vec![String::new()];
    // What should be there at the end: relative path → contents' hash.
    let mut want: alloc::collections::BTreeMap<String, String> = alloc::collections::BTreeMap::new();
    for i in 0..24 {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let name = alloc::format!("{} {i}", NAMES[rng.below(NAMES.len() as u64) as usize]);
        let rel = if parent.is_empty() { name } else { alloc::format!("{parent}/{name}") };
        if rng.below(4) == 0 {
            fs::create_dir(&alloc::format!("{dir}/{rel}"))
                .map_err(|e| alloc::format!("create_dir {rel}: {e}"))?;
            dirs.push(rel);
            continue;
        }
        let len = match rng.below(8) {
            0 => 0,
            1 => rng.below(4 << 20) as usize,
            _ => rng.below(40_000) as usize,
        };
        let mut data = alloc::vec![0u8; len];
        for chunk in data.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        write_file(&alloc::format!("{dir}/{rel}"), &data, &mut rng)?;
        want.insert(rel, hex(&Sha256::digest(&data)));
    }
    // Rename some files (into other directories too) and delete others.
    let names: Vec<String> = want.keys().cloned().collect();
    for (k, rel) in names.iter().enumerate() {
        match k % 5 {
            0 => {
                let to_dir = &dirs[k % dirs.len()];
                let to = if to_dir.is_empty() {
                    alloc::format!("renamed {k}")
                } else {
                    alloc::format!("{to_dir}/renamed {k}")
                };
                fs::rename(&alloc::format!("{dir}/{rel}"), &alloc::format!("{dir}/{to}"))
                    .map_err(|e| alloc::format!("rename {rel} to {to}: {e}"))?;
                let h = want.remove(rel).unwrap_or_default();
                want.insert(to, h);
            }
            1 => {
                fs::remove_file(&alloc::format!("{dir}/{rel}"))
                    .map_err(|e| alloc::format!("remove {rel}: {e}"))?;
                want.remove(rel);
            }
            _ => {}
        }
    }
    fs::sync_all().map_err(|e| alloc::format!("sync: {e}"))?;
    println!("fscheck: wrote {} files under {dir}", want.len());
    // What is there now is what should be.
    let got = walk(dir)?;
    let mut expected: Vec<String> = want.iter().map(|(p, h)| alloc::format!("{h}  {p}")).collect();
    expected.sort_by(|a, b| a[66..].cmp(&b[66..]));
    if got != expected {
        for line in expected.iter().filter(|l| !got.contains(l)) {
            println!("fscheck: missing or wrong: {line}");
        }
        return Err(String::from("what was read back differs from what was written"));
    }
    println!("fscheck: read back what was written");
    Ok(())
}
