//! The block section: `apps/blkcheck bench` reads a 256 MiB image
//! sequentially and at random on our monitor (inline and `,iothread`, by
//! interrupt and polled) and QEMU microvm, side by side; the exits each
//! request costs on ours are counted.

use std::path::Path;
use std::process::Command;

use super::json_number;
use super::report::Verdicts;
use crate::{QemuMachine, Variant};

/// The 256 MiB image the block and filesystem sections read: written (not
/// sparse), kept in `out` between runs.
pub fn image_256m(out: &Path) -> Result<std::path::PathBuf, String> {
    let img = out.join("disk-256M.img");
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if std::fs::metadata(&img).map_or(true, |m| m.len() != 256 << 20) {
        let data: Vec<u8> = (0..256usize << 20).map(|i| (i >> 12) as u8).collect();
        std::fs::write(&img, data).map_err(|e| format!("{}: {e}", img.display()))?;
    }
    Ok(img)
}

/// Block device figures (`blkcheck bench`): sequential read and 4 KiB
/// random reads of a 256 MiB image, on our monitor (`--disk`) and QEMU
/// microvm (virtio-blk-device), and the exits each request costs on ours.
pub fn run(monitor: &Path, out: &Path, verdicts: &mut Verdicts) -> Result<(), String> {
    println!("\nblock device (apps/blkcheck bench, 256 MiB image, read-only):");
    // Each guest reads the image once to warm the host's page cache, then
    // the second run counts.
    let img = image_256m(out)?;
    let elf = crate::build("blkcheck", Variant::default())?;
    let mut runs: Vec<(&str, Command)> = Vec::new();
    // Ours by default (requests served inline at the notification's exit)
    // and with `,iothread` (an ioeventfd, the device I/O thread), each with
    // completion by interrupt and by polling (`devices.poll`).
    for (name, iothread, cmdline) in [
        ("torito", false, "bench"),
        ("torito poll", false, "bench devices.poll"),
        ("I/O thread", true, "bench"),
        ("I/O thr. poll", true, "bench devices.poll"),
    ] {
        let mut c = Command::new(monitor);
        c.args(["--timeout", "120", "--timeline=json", "--disk"])
            .arg(format!("{},ro{}", img.display(), if iothread { ",iothread" } else { "" }))
            .arg(&elf)
            .arg("--")
            .args(cmdline.split(' '));
        runs.push((name, c));
    }
    if crate::have("qemu-system-x86_64") && crate::kvm_usable() {
        let pvh = crate::build("blkcheck", Variant { pvh_only: true, ..Default::default() })?;
        for (name, cmdline) in [("qemu microvm", "bench"), ("microvm poll", "bench devices.poll")] {
            let mut q = crate::qemu(QemuMachine::MicrovmKvm, &pvh, cmdline);
            q.args(["-machine", "acpi=off", "-drive"])
                .arg(format!("file={},if=none,id=d0,format=raw,readonly=on", img.display()))
                .args(["-device", "virtio-blk-device,drive=d0"]);
            runs.push((name, q));
        }
    }
    // Requests of one `blkcheck bench` run: 256 MiB in 64 KiB, then 2,000
    // random 4 KiB reads.
    const REQUESTS: u64 = 4096 + 2000;
    let mut iops: Vec<(&str, f64)> = Vec::new();
    for (name, mut cmd) in runs {
        cmd.output().map_err(|e| format!("{name}: {e}"))?;
        let o = cmd.output().map_err(|e| format!("{name}: {e}"))?;
        for line in String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.strip_prefix("bench: ")) {
            println!("  {name:<13} {line}");
            if let Some(n) = line.strip_prefix("4 KiB random reads: ").and_then(|r| r.split(' ').next()) {
                iops.extend(n.parse::<f64>().ok().map(|n| (name, n)));
            }
        }
        let stderr = String::from_utf8_lossy(&o.stderr);
        if let Some(json) = stderr.lines().rev().find(|l| l.starts_with('{'))
            && let (Some(mmio), Some(exits)) = (json_number(json, "mmio_exits"), json_number(json, "exits"))
        {
            println!(
                "  {name:<13} {mmio} MMIO exits, {exits} exits in all, for ~{REQUESTS} requests plus set-up"
            );
            if name == "torito" {
                let per = mmio as f64 / REQUESTS as f64;
                verdicts.check(
                    per <= 1.05,
                    format!("disk served inline: {per:.3} exits to the monitor per request ≤ 1.05 (the notification)"),
                );
            }
        }
    }
    let of = |n: &str| iops.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    for (a, b) in [("torito", "qemu microvm"), ("I/O thr. poll", "microvm poll")] {
        if let (Some(x), Some(y)) = (of(a), of(b)) {
            println!("  4 KiB random reads, {a} / {b}, same run: {:.2}×", x / y);
        }
    }
    Ok(())
}
