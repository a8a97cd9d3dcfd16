//! `cargo xtask start-order`: write `linker/start-order.ld`, the functions
//! an appliance's start runs, in the order it first runs them, as section
//! patterns the linker script places first in `.text`.
//!
//! Why: on a shadow-paging host each guest page's first touch is a fault
//! (an exit), and KVM maps a faulting page's neighbours with it only when
//! the host has them present, which the monitor's warm-up does from the
//! image's lowest page on while the guest starts. Spread over 0.5 MiB of
//! code, the ~190 functions a NIC appliance runs to its first answer
//! touched ~90 pages, most of them before the warm-up reached them; packed
//! in the order they run, they take ~60, reached first.
//!
//! How: httpd (with a page baked in) and kvstore, each on QEMU microvm with
//! TCG and `-d exec,nochain` (every block it runs, logged), in a network
//! namespace until a client's first answer (curl, redis-cli); each block's
//! address named with the ELF's symbols (`nm`), first runs kept in order,
//! httpd's then kvstore's. A pattern leaves out what changes from build to
//! build (legacy symbols' hashes, v0 symbols' crate hashes, LTO's `.llvm.N`
//! suffixes), so the file holds across builds, apps and features, and
//! matches every instance of a generic function. Needs root (the
//! namespace), QEMU and `nm`.
//! What runs only on the Torito monitor (its batched register path, the
//! devices' set-up as the devices unit starts) is not in QEMU's trace: it
//! goes where the devices unit's start ends, by module ([`TORITO_ONLY`]);
//! left where it fell, it cost a NIC appliance's start 3–4 faults on pages
//! of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::{GUEST, Netns};
use crate::{Result, Variant};

/// The guest's MAC address (the neighbour entry the namespace gets).
const MAC: &str = "06:54:52:54:4f:00";

/// Patterns of what runs only on the Torito monitor, as an appliance
/// starts: the kernel's batched register writes and the devices unit's
/// transport over them.
const TORITO_ONLY: &[&str] = &[
    "_ZN6kernel4arch6torito*",
    "_ZN12unit_devices7batched*",
    "_ZN*_$LT$unit_devices..batched..Batched$u20$as$u20$*",
];

/// An app to trace: its ELF, its command line, and whether a client got
/// its first answer.
type Run<'a> = (&'a Path, &'a str, &'a dyn Fn() -> bool);

/// Write the start order; returns the file written.
pub fn run() -> Result<PathBuf> {
    for tool in ["qemu-system-x86_64", "nm", "curl", "redis-cli", "ip"] {
        if !crate::have(tool) {
            return Err(format!("start-order needs `{tool}`"));
        }
    }
    let ns = Netns::create("start-order").ok_or("cannot create a network namespace (needs root)")?;
    if !ns.know_guest(MAC) {
        return Err("cannot add the guest's neighbour entry".into());
    }
    let dir = crate::root().join("target/start-order");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
    std::fs::write(www.join("index.html"), "<!DOCTYPE html>\n<html><body>start order</body></html>\n")
        .map_err(|e| e.to_string())?;
    let pvh = Variant { pvh_only: true, ..Default::default() };
    let httpd = crate::build_with_files("httpd", pvh, &www, &dir.join("httpd.elf"))?;
    let kvstore = crate::build("kvstore", pvh)?;
    let url = format!("http://{GUEST}/");
    let http_answered = || {
        ns.exec("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "2", &url])
            .status()
            .is_ok_and(|s| s.success())
    };
    let redis_answered = || {
        ns.exec("redis-cli").args(["-h", GUEST, "PING"]).output().is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    };
    let runs: [Run<'_>; 2] = [
        // One request, then its exit: the end of a run is traced too.
        (&httpd, "torito.ip=10.0.2.15/24 root=/ requests=1", &http_answered),
        (&kvstore, "torito.ip=10.0.2.15/24", &redis_answered),
    ];
    let mut patterns: Vec<String> = Vec::new();
    for (elf, args, answered) in &runs {
        // The QEMU before left its last close of the TAP device to the
        // kernel (~10 ms after it was reaped): the next one waits that out.
        std::thread::sleep(Duration::from_millis(200));
        let log = dir.join(format!("{}.log", elf.file_stem().unwrap_or_default().to_string_lossy()));
        trace(&ns, elf, args, &log, *answered)?;
        let symbols = symbols(elf)?;
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        for name in first_runs(&text, &symbols) {
            let p = pattern(&name);
            if !patterns.contains(&p) {
                patterns.push(p);
            }
        }
    }
    // As the devices unit starts: before the unit that starts next.
    let at = patterns.iter().position(|p| p.starts_with("_ZN7unit_fs")).unwrap_or(patterns.len());
    patterns.splice(at..at, TORITO_ONLY.iter().map(|p| p.to_string()));
    let out = crate::root().join("linker/start-order.ld");
    let mut file = String::from(
        "/* The functions an appliance's start runs, in the order it first runs them\n   \
         (httpd's, then kvstore's; what only the Torito monitor runs where the devices unit's\n   \
         start ends): written by `cargo xtask start-order`, do not edit. */\n",
    );
    for p in &patterns {
        file.push_str(&format!("*(.text*.{p})\n"));
    }
    std::fs::write(&out, file).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{} functions", patterns.len());
    Ok(out)
}

/// Run `elf` on QEMU microvm (TCG) with every executed block logged to
/// `log`, until `answered` (a client got its answer), then stop it.
fn trace(ns: &Netns, elf: &Path, args: &str, log: &Path, answered: &dyn Fn() -> bool) -> Result<()> {
    let mut q = ns.exec("qemu-system-x86_64");
    q.args(["-display", "none", "-no-reboot", "-nodefaults", "-serial", "null", "-m", "128M", "-smp", "2"]);
    q.args([
        "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=off",
        "-accel",
        "tcg",
    ]);
    q.args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device"]);
    q.arg(format!("virtio-net-device,netdev=n0,mac={MAC}"));
    q.arg("-kernel").arg(elf).args(["-append", args, "-d", "exec,nochain", "-D"]).arg(log);
    let mut vm = crate::group::spawn(q.stdout(Stdio::null()).stderr(Stdio::null()))
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let ok = crate::testing::poll(Duration::from_secs(60), answered);
    // An app that ends after its answer (httpd `requests=1`) is let end.
    crate::testing::poll(Duration::from_secs(5), || vm.has_ended());
    vm.kill();
    if ok { Ok(()) } else { Err(format!("{} never answered on QEMU (TCG)", elf.display())) }
}

/// The ELF's functions as `(address, size, name)`, by address.
fn symbols(elf: &Path) -> Result<Vec<(u64, u64, String)>> {
    let out = Command::new("nm").args(["-n", "-S"]).arg(elf).output().map_err(|e| format!("nm: {e}"))?;
    let mut syms: Vec<(u64, u64, String)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "ADDR SIZE KIND NAME", or "ADDR KIND NAME" for a symbol of no
        // size (assembly's, such as the context switch).
        let f: Vec<&str> = line.split_whitespace().collect();
        let (addr, size, kind, name) = match f[..] {
            [a, s, k, n] => (a, s, k, n),
            [a, k, n] => (a, "0", k, n),
            _ => continue,
        };
        if let (true, Ok(a), Ok(s)) = (
            matches!(kind, "t" | "T" | "w" | "W"),
            u64::from_str_radix(addr, 16),
            u64::from_str_radix(size, 16),
        ) {
            syms.push((a, s, name.to_string()));
        }
    }
    // A symbol of no size reaches the next one.
    for i in 0..syms.len() {
        if syms[i].1 == 0 {
            let next = syms[i..].iter().find(|s| s.0 > syms[i].0).map_or(syms[i].0 + 1, |s| s.0);
            syms[i].1 = next - syms[i].0;
        }
    }
    Ok(syms)
}

/// The functions whose code QEMU's `-d exec` log `text` shows running, in
/// the order of their first block.
fn first_runs(text: &str, symbols: &[(u64, u64, String)]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for line in text.lines() {
        // "Trace 0: 0x7f… [cs_base/pc/flags/cflags] …"
        let Some(pc) = line
            .strip_prefix("Trace ")
            .and_then(|l| l.split('[').nth(1))
            .and_then(|l| l.split('/').nth(1))
            .and_then(|pc| u64::from_str_radix(pc, 16).ok())
        else {
            continue;
        };
        // Every name of the function (identical functions are folded into
        // one, under several names: `memmove` is `memcpy`'s code, in
        // `memcpy`'s section).
        let end = symbols.partition_point(|s| s.0 <= pc);
        let Some(&(a, _, _)) = end.checked_sub(1).map(|i| &symbols[i]) else { continue };
        let names = &symbols[symbols.partition_point(|s| s.0 < a)..end];
        if names.iter().any(|&(_, size, _)| pc < a + size.max(1)) {
            for (_, _, name) in names {
                if seen.insert(name.as_str()) {
                    order.push(name.clone());
                }
            }
        }
    }
    order
}

/// A section-name pattern for symbol `name` that holds from build to
/// build: without LTO's `.llvm.N` suffix, a legacy symbol's hash
/// (`17h…E`), or a v0 symbol's crate hashes (`Cs…_`).
pub fn pattern(name: &str) -> String {
    let (name, suffixed) = match name.rfind(".llvm.") {
        Some(i) if name[i + 6..].bytes().all(|b| b.is_ascii_digit()) => (&name[..i], true),
        _ => (name, false),
    };
    if let Some(body) = name.strip_prefix("_ZN").filter(|b| b.len() > 2) {
        let body = match body.len().checked_sub(20).and_then(|i| Some((i, body.get(i..)?))) {
            Some((i, hash)) if hash.starts_with("17h") && hash.ends_with('E') => &body[..i],
            _ => body,
        };
        return format!("_ZN{body}*");
    }
    if name.starts_with("_R") {
        let mut out = String::new();
        let mut rest = name;
        while let Some(i) = rest.find("Cs") {
            out.push_str(&rest[..i + 2]);
            let after = &rest[i + 2..];
            match after.find('_') {
                Some(j) if j > 0 && after[..j].bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    out.push('*');
                    rest = &after[j..];
                }
                _ => rest = after,
            }
        }
        out.push_str(rest);
        return format!("{out}*");
    }
    // A plain name LTO suffixed keeps a wildcard for the suffix.
    if suffixed { format!("{name}*") } else { name.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_leave_out_what_changes_between_builds() {
        assert_eq!(pattern("kernel_main"), "kernel_main");
        assert_eq!(pattern("helper.llvm.123"), "helper*");
        assert_eq!(pattern("_ZN"), "_ZN");
        assert_eq!(pattern("_ZN3abc17hé"), "_ZN3abc17hé*");
        assert_eq!(pattern("_ZN6kernel4init3run17h9b3950315ed7e784E"), "_ZN6kernel4init3run*");
        assert_eq!(
            pattern("_ZN4spin4once17Once$LT$T$C$R$GT$18try_call_once_slow17hdeb318bdf57dcd09E"),
            "_ZN4spin4once17Once$LT$T$C$R$GT$18try_call_once_slow*"
        );
        assert_eq!(
            pattern("_RNvNtNtCsg3SjgaGcPXb_4core3str8converts9from_utf8"),
            "_RNvNtNtCs*_4core3str8converts9from_utf8*"
        );
        assert_eq!(
            pattern("_RNCNvNtNtCsegoZmTB8Y0R_17compiler_builtins3mem5impls13compare_bytess1_0B7_.llvm.1476"),
            "_RNCNvNtNtCs*_17compiler_builtins3mem5impls13compare_bytess1_0B7_*"
        );
    }

    #[test]
    fn first_runs_come_in_order_once_each() {
        let syms = vec![
            (0x1000, 0x10, "a".to_string()),
            (0x1010, 0x20, "b".to_string()),
            (0x1010, 0x20, "b_alias".to_string()),
        ];
        let log = "Trace 0: 0x7f00 [0/0000000000001010/0/0] b\n\
                   Trace 0: 0x7f00 [0/0000000000001004/0/0] a\n\
                   Trace 0: 0x7f00 [0/0000000000001012/0/0] b\n\
                   Trace 0: 0x7f00 [0/0000000000005000/0/0] \n";
        assert_eq!(first_runs(log, &syms), ["b", "b_alias", "a"]);
    }

    /// The file the linker script includes exists and holds only patterns
    /// of the form the script expects.
    #[test]
    fn the_start_order_is_well_formed() {
        let text = std::fs::read_to_string(crate::root().join("linker/start-order.ld")).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("*(")).collect();
        assert!(lines.len() > 50, "{} patterns", lines.len());
        for l in lines {
            assert!(l.starts_with("*(.text*.") && l.ends_with(')') && !l.contains(' '), "{l}");
        }
    }
}
