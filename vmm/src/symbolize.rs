//! Return addresses of the guest's code to `function at file:line`, from
//! the app's ELF (its line tables and symbols), with the frames the
//! compiler inlined: for the backtraces the kernel hands over at a panic
//! or a CPU fault (`torito_abi::mmio::BACKTRACE`), and for
//! `torito --symbolize ELF`, which does the same for a log on stdin (a
//! guest that ran on QEMU or Firecracker prints the raw addresses).
//!
//! The ELF is read only when a first address is asked for: a run without a
//! panic pays nothing.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Looks addresses up in one ELF, loaded at first use.
pub struct Symbolizer {
    elf: PathBuf,
    loader: Option<Result<addr2line::Loader, String>>,
}

impl Symbolizer {
    /// A symbolizer for the ELF at `elf` (not read yet).
    pub fn new(elf: &Path) -> Self {
        Self { elf: elf.to_path_buf(), loader: None }
    }

    fn loader(&mut self) -> Result<&addr2line::Loader, &str> {
        let elf = &self.elf;
        self.loader
            .get_or_insert_with(|| addr2line::Loader::new(elf).map_err(|e| format!("{}: {e}", elf.display())))
            .as_ref()
            .map_err(String::as_str)
    }

    /// The lines that describe the code at `pc` (an instruction's address:
    /// callers subtract 1 from a return address), innermost frame first:
    /// `function at file:line`, a frame inlined into the next marked
    /// `(inlined)`. A bare symbol name, or `??`, when the ELF has no line
    /// for it.
    pub fn describe(&mut self, pc: u64) -> Vec<String> {
        let loader = match self.loader() {
            Ok(l) => l,
            Err(e) => return vec![format!("?? (cannot read {e})")],
        };
        let mut found: Vec<(Option<String>, String)> = Vec::new();
        if let Ok(mut frames) = loader.find_frames(pc) {
            while let Ok(Some(f)) = frames.next() {
                let name =
                    f.function.as_ref().and_then(|n| n.demangle().ok().map(|d| strip_hash(&d).to_string()));
                let at = match &f.location {
                    Some(l) => format!(" at {}:{}", l.file.unwrap_or("??"), l.line.unwrap_or(0)),
                    None => String::new(),
                };
                found.push((name, at));
            }
        }
        // Line tables name inlined functions only: the function the
        // address is in comes from the symbol table.
        let symbol = || {
            loader.find_symbol(pc).map(|s| strip_hash(&addr2line::demangle_auto(s.into(), None)).to_string())
        };
        if found.is_empty() {
            return vec![symbol().unwrap_or_else(|| "??".into())];
        }
        // Innermost first: every frame but the last was inlined into the
        // one after it.
        let last = found.len() - 1;
        found
            .into_iter()
            .enumerate()
            .map(|(i, (name, at))| {
                // The symbol table's name is the qualified one.
                let name = if i == last { symbol().or(name) } else { name }.unwrap_or_else(|| "??".into());
                if i < last { format!("{name}{at} (inlined)") } else { format!("{name}{at}") }
            })
            .collect()
    }

    /// A backtrace: `#N 0xADDR function at file:line` for each return
    /// address (looked up at `addr - 1`, inside the call) and the inlined
    /// frames under it. With `exact_first`, the first address is an
    /// instruction's own (a faulting RIP), looked up as is.
    pub fn backtrace(&mut self, addrs: &[u64], exact_first: bool) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, &a) in addrs.iter().enumerate() {
            let pc = if i == 0 && exact_first { a } else { a.saturating_sub(1) };
            for (j, d) in self.describe(pc).into_iter().enumerate() {
                lines.push(if j == 0 {
                    format!("#{i:<2} {a:#018x} {d}")
                } else {
                    format!("    {:18} {d}", "")
                });
            }
        }
        lines
    }
}

/// `name` without rustc's `::h0123…` hash suffix.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => head,
        _ => name,
    }
}

/// `torito --symbolize ELF`: copy `input` to `out`, and after each line
/// that carries a backtrace frame (`#N 0x…`, as the kernel prints them off
/// the Torito monitor) or a faulting `rip=0x…`, the lines that describe
/// the address.
pub fn filter(elf: &Path, input: impl BufRead, mut out: impl Write) -> std::io::Result<()> {
    let mut s = Symbolizer::new(elf);
    for line in input.lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        let found =
            frame_address(&line).map(|a| (a, false)).or_else(|| rip_address(&line).map(|a| (a, true)));
        if let Some((addr, exact)) = found {
            let pc = if exact { addr } else { addr.saturating_sub(1) };
            for d in s.describe(pc) {
                writeln!(out, "[torito]       {d}")?;
            }
        }
    }
    out.flush()
}

/// The address of a frame line: `… #N 0xHEX` (the kernel's raw form).
fn frame_address(line: &str) -> Option<u64> {
    let rest = &line[line.find('#')? + 1..];
    let (n, rest) = rest.split_once(' ')?;
    n.parse::<u32>().ok()?;
    hex(rest.split_whitespace().next()?)
}

/// The address in a fault report's `rip=0xHEX`.
fn rip_address(line: &str) -> Option<u64> {
    let rest = &line[line.find("rip=")? + 4..];
    hex(rest.split_whitespace().next()?)
}

fn hex(word: &str) -> Option<u64> {
    u64::from_str_radix(word.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_rip_lines_are_recognised() {
        assert_eq!(frame_address("[torito]   #3 0x0000000000102a4f"), Some(0x102a4f));
        assert_eq!(frame_address("[torito]   #12 0x10 tail"), Some(0x10));
        assert_eq!(frame_address("issue #3 is fixed"), None);
        assert_eq!(frame_address("#x 0x10"), None);
        assert_eq!(rip_address("[torito]   rip=0x0000000000104abc cs=0x2b"), Some(0x104abc));
        assert_eq!(rip_address("no rip here"), None);
        assert_eq!(strip_hash("app::main::h0123456789abcdef"), "app::main");
        assert_eq!(strip_hash("app::hint"), "app::hint");
    }

    /// This test binary symbolizes its own code: a function's address
    /// names the function and this file.
    #[test]
    fn an_address_names_its_function_and_line() {
        let me = std::env::current_exe().unwrap();
        let mut s = Symbolizer::new(&me);
        // Its link-time address: the run-time one less where the
        // (position-independent) executable was mapped.
        let run_time = an_address_names_its_function_and_line as fn() as usize as u64;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = me.canonicalize().unwrap();
        let base = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()) && l.split_whitespace().nth(2) == Some("00000000"))
            .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
            .unwrap();
        let pc = run_time - base;
        let d = s.describe(pc).join("\n");
        assert!(d.contains("an_address_names_its_function_and_line"), "{d}");
        assert!(d.contains("symbolize.rs"), "{d}");
        let mut missing = Symbolizer::new(Path::new("/nonexistent/elf"));
        assert!(missing.describe(1).join("").contains("cannot read"));
    }
}
