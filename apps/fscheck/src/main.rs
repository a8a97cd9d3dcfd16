//! fscheck: the filesystem test appliance.
//!
//! - `fscheck walk=DIR`: one line per regular file under `DIR`, sorted by
//!   path, in `sha256sum`'s format (`<hex>  <path relative to DIR>`), then
//!   `fscheck: N files, M bytes`. The test compares the lines with the
//!   host's `sha256sum` over the same tree.
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
    let result = match arg("walk") {
        Some(dir) => walk(dir),
        None => Err(String::from("nothing to do: give walk=DIR")),
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

fn walk(dir: &str) -> Result<(), String> {
    let files = files_under(dir)?;
    let mut buf = alloc::vec![0u8; 64 * 1024];
    let mut text = String::new();
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
        for b in h.finalize() {
            let _ = write!(text, "{b:02x}");
        }
        let _ = writeln!(text, "  {rel}");
        // One console write per few KiB, not per line (each is an exit).
        if text.len() > 3500 {
            kernel::print!("{text}");
            text.clear();
        }
    }
    kernel::print!("{text}");
    println!("fscheck: {} files, {total} bytes", files.len());
    Ok(())
}
