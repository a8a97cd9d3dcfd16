//! Helpers the boot tests share: skipping loudly when a tool or KVM is
//! missing (a failure under `CI=true`, where `.ci/run` installs them), and
//! booting an ELF on QEMU or on the release monitor.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::QemuMachine;

/// Say that (part of) the running test could not run, and why; `cargo
/// xtask test` counts it as skipped, not passed (through the file named by
/// [`SKIP_LOG`], one line per skip: the test's name, a tab, the reason).
pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os(SKIP_LOG) {
        use std::io::Write;
        let name = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            // One write of the whole line: O_APPEND keeps it whole among
            // tests writing at once.
            let _ = f.write_all(format!("{name}\t{why}\n").as_bytes());
        }
    }
}

/// Look at `probe` every 50 ms until it holds (`true`) or `within` passed
/// (`false`).
pub fn poll(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if probe() {
            return true;
        }
        if t.elapsed() >= within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read a figure (a guest's heap in use, say) until it is at most `limit`
/// or `within` passed: the last value read (`None` if none could be). For
/// what a guest gives back a moment after its clients went.
pub fn settle(limit: u64, within: Duration, mut read: impl FnMut() -> Option<u64>) -> Option<u64> {
    let mut last = None;
    poll(within, || {
        last = read().or(last);
        last.is_some_and(|v| v <= limit)
    });
    last
}

/// The environment variable naming the file where skips are recorded.
pub const SKIP_LOG: &str = "TORITO_SKIP_LOG";

/// Whether `tool` is on `PATH`; says so when not, and panics under
/// `CI=true` (where `.ci/run` should have installed it).
pub fn need(tool: &str) -> bool {
    if crate::have(tool) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is missing under CI=true; .ci/run should have installed it");
    }
    skip(&format!("{tool} is not installed; test not run"));
    false
}

/// Whether `/dev/kvm` is usable; says so when not.
pub fn kvm() -> bool {
    let ok = crate::kvm_usable();
    if !ok {
        skip("/dev/kvm is not usable; KVM test not run");
    }
    ok
}

/// Boot `elf` on QEMU `machine` with `extra` arguments (at most 60 s);
/// returns (the guest's exit code, its console output). Panics unless
/// the guest stopped through `isa-debug-exit`.
pub fn qemu_boot(machine: QemuMachine, elf: &Path, cmdline: &str, extra: &[&str]) -> (i32, String) {
    let qemu = crate::qemu(machine, elf, cmdline);
    let out = Command::new("timeout")
        .arg("60")
        .arg(qemu.get_program())
        .args(qemu.get_args())
        .args(extra)
        .output()
        .expect("run qemu");
    let status = out.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "--- {machine:?} {} -> status {status}\n{text}{}",
        elf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // isa-debug-exit makes QEMU exit with (code << 1) | 1.
    assert_eq!(status & 1, 1, "QEMU did not stop through isa-debug-exit (status {status})");
    (status >> 1, text)
}

/// Boot `elf` on the release monitor with `args` and the kernel command
/// line `cmdline` (at most 60 s); returns (exit status, stdout, stderr).
pub fn torito(args: &[&str], elf: &Path, cmdline: &[&str]) -> (i32, String, String) {
    let monitor = crate::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(monitor)
        .args(["--timeout", "60"])
        .args(args)
        .arg(elf)
        .arg("--")
        .args(cmdline)
        .output()
        .expect("run torito");
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("--- torito {args:?} {} -> {}\n{}{}", elf.display(), r.0, r.1, r.2);
    r
}

/// The monitor's peak RSS in KiB, from what `--timeline=json` printed on
/// its standard error.
pub fn peak_rss_kib(stderr: &str) -> u64 {
    let key = "\"peak_rss_kib\":";
    let at = stderr.find(key).unwrap_or_else(|| panic!("no peak RSS in the timeline:\n{stderr}")) + key.len();
    let digits: String = stderr[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("peak RSS '{digits}' is not a number"))
}
