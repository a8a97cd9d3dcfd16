//! The same ELF on stock QEMU: multiboot on pc and q35 (TCG), PVH on
//! microvm (KVM) and on pc with qboot (TCG), and the multiboot header
//! checked with GRUB's own tool.
//!
//! Missing tools (`qemu-system-x86_64`, `grub-file`) or `/dev/kvm` are
//! reported loudly and the test is skipped, except under `CI=true`, where
//! `.ci/run` installs the tools and a missing one is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::{QemuMachine, Variant};

use xtask::testing::{kvm, need};

fn elf(app: &str, pvh_only: bool) -> PathBuf {
    xtask::build(app, Variant { pvh_only, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"))
}

/// Boot `elf` on `machine` (at most 60 s); returns (guest exit code,
/// console output).
fn boot(machine: QemuMachine, elf: &Path, cmdline: &str) -> (i32, String) {
    boot_with(machine, elf, cmdline, &[])
}

/// [`boot`] with more QEMU arguments.
fn boot_with(machine: QemuMachine, elf: &Path, cmdline: &str, extra: &[&str]) -> (i32, String) {
    xtask::testing::qemu_boot(machine, elf, cmdline, extra)
}

#[test]
fn multiboot_header_is_valid_for_grub_and_absent_in_the_pvh_variant() {
    if !need("grub-file") {
        return;
    }
    let mb = Command::new("grub-file").arg("--is-x86-multiboot").arg(elf("hello", false)).status().unwrap();
    assert!(mb.success(), "grub-file rejects the multiboot header");
    let pvh = Command::new("grub-file").arg("--is-x86-multiboot").arg(elf("hello", true)).status().unwrap();
    assert!(!pvh.success(), "the PVH variant still has a multiboot header");
}

#[test]
fn multiboot_on_pc_and_q35_with_tcg() {
    if !need("qemu-system-x86_64") {
        return;
    }
    for m in [QemuMachine::PcTcg, QemuMachine::Q35Tcg] {
        let (code, out) = boot(m, &elf("hello", false), "one two");
        assert_eq!(code, 0);
        assert!(out.contains("Hello from Torito! (booted via multiboot)"));
        assert!(out.contains("command line: one two"), "the kernel path must be stripped: {out}");
    }
}

#[test]
fn test_apps_on_pc_with_tcg() {
    if !need("qemu-system-x86_64") {
        return;
    }
    let (code, out) = boot(QemuMachine::PcTcg, &elf("exit42", false), "");
    assert_eq!((code, out.contains("returning 42")), (42, true));
    let (code, out) = boot(QemuMachine::PcTcg, &elf("panics", false), "");
    assert_eq!(code, 101);
    assert!(out.contains("panicked at apps/testapps/src/bin/panics.rs:"));
    // Raw addresses here; `torito --symbolize` (what `cargo xtask
    // symbolize` runs) names them from the same ELF.
    assert!(out.contains("[torito]   #1  0x"), "{out}");
    let named = symbolize(&elf("panics", false), &out);
    assert!(named.contains("panics::check_the_answer at ") && named.contains("kernel_main at "), "{named}");
    let (code, out) = boot(QemuMachine::PcTcg, &elf("alloc", false), "");
    assert_eq!(code, 0);
    assert!(out.contains("alloc: ok"));
    // 128 + vector does not fit QEMU's 8-bit status: it arrives modulo 128.
    let (code, out) = boot(QemuMachine::PcTcg, &elf("fault", false), "pf");
    assert_eq!(code, 14);
    assert!(out.contains("page fault (#PF) (vector 14)"));
    assert!(out.contains("cr2=0x0000000000000008"), "page 0 must be unmapped after boot");
    let (code, out) = boot(QemuMachine::PcTcg, &elf("fault", false), "df");
    assert_eq!(code, 8);
    assert!(out.contains("double fault (#DF) (vector 8)"));
    // The kernel unmaps the boot stack's guard page itself here.
    let (code, out) = boot(QemuMachine::PcTcg, &elf("fault", false), "stack");
    assert_eq!(code, 14, "{out}");
    assert!(out.contains("stack overflow: the boot stack of core 0 ran into its guard page"), "{out}");
}

#[test]
fn pvh_on_pc_with_seabios_and_qboot() {
    if !need("qemu-system-x86_64") {
        return;
    }
    // SeaBIOS boots PVH through QEMU's option ROM, which leaves the
    // start_info in page 0.
    let (code, out) = boot(QemuMachine::PcTcg, &elf("hello", true), "pvh seabios");
    assert_eq!(code, 0);
    assert!(out.contains("Hello from Torito! (booted via pvh)"));
    assert!(out.contains("command line: pvh seabios"));
    if !Path::new("/usr/share/qemu/qboot.rom").exists() {
        xtask::testing::skip("/usr/share/qemu/qboot.rom is missing");
        return;
    }
    let (code, out) = boot(QemuMachine::PcQbootTcg, &elf("hello", true), "pvh here");
    assert_eq!(code, 0);
    assert!(out.contains("Hello from Torito! (booted via pvh)"));
    assert!(out.contains("command line: pvh here"));
}

#[test]
fn microvm_with_kvm_boots_both_variants() {
    if !need("qemu-system-x86_64") || !kvm() {
        return;
    }
    let (code, out) = boot(QemuMachine::MicrovmKvm, &elf("hello", true), "x=1");
    assert_eq!(code, 0);
    assert!(out.contains("Hello from Torito! (booted via pvh)"));
    assert!(out.contains("command line: x=1"));
    let (code, out) = boot(QemuMachine::MicrovmKvm, &elf("hello", false), "");
    assert_eq!(code, 0);
    assert!(out.contains("Hello from Torito! (booted via multiboot)"));
    let (code, out) = boot(QemuMachine::MicrovmKvm, &elf("exit42", true), "");
    assert_eq!((code, out.contains("returning 42")), (42, true));
}

#[test]
fn without_debug_exit_the_guest_stops_through_the_i8042_reset() {
    if !need("qemu-system-x86_64") {
        return;
    }
    // Firecracker's way to stop: no isa-debug-exit, so the kernel's exit
    // falls through to the i8042 reset, which QEMU (-no-reboot) turns into
    // a clean exit with status 0 instead of a hang.
    let qemu = xtask::qemu_with(QemuMachine::PcTcg, &elf("exit42", false), "", false);
    let out =
        Command::new("timeout").arg("60").arg(qemu.get_program()).args(qemu.get_args()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("exit42: returning 42"), "{text}");
    assert_eq!(out.status.code(), Some(0), "QEMU did not stop by itself: {text}");
}

#[test]
fn threads_on_qemu() {
    if !need("qemu-system-x86_64") {
        return;
    }
    // On QEMU the TSC frequency is calibrated against the LAPIC timer.
    let (code, out) = boot(QemuMachine::PcTcg, &elf("threads", false), "20000");
    assert_eq!(code, 0);
    assert!(out.contains("counter 4000 (expected 4000)"));
    assert!(out.contains("(timer: true)"), "{out}");
    assert!(out.contains("sleepers woke in the order [10, 20, 30]"));
    assert!(out.contains("threads: ok"));
    // QEMU pc has a CMOS RTC: the guest reads the time of day from it.
    xtask::assert_guest_wall_clock(&out);
    if kvm() {
        let (code, out) = boot(QemuMachine::MicrovmKvm, &elf("threads", true), "20000");
        assert_eq!(code, 0);
        assert!(out.contains("sleepers woke in the order [10, 20, 30]"));
        assert!(out.contains("threads: ok"));
        // microvm has no RTC here; the time of day comes from kvmclock.
        xtask::assert_guest_wall_clock(&out);
    }
}

/// `-smp 2`: the second core is found in ACPI's MADT and started with
/// INIT-SIPI (multiboot on pc, PVH on pc with qboot under TCG, PVH on
/// microvm under KVM); threads, locks and channels work across the cores.
#[test]
fn two_cores_on_qemu() {
    if !need("qemu-system-x86_64") {
        return;
    }
    let smp = ["-smp", "2"];
    // Few round trips: each may cost a host time slice on a busy machine
    // (see the boot test `two_cores_share_threads_locks_and_channels`).
    let mut runs = vec![
        (QemuMachine::PcTcg, elf("threads", false), "2000"),
        (QemuMachine::PcQbootTcg, elf("threads", true), "2000"),
    ];
    if kvm() {
        runs.push((QemuMachine::MicrovmKvm, elf("threads", true), "2000"));
    }
    for (machine, elf, rounds) in runs {
        let (code, out) = boot_with(machine, &elf, rounds, &smp);
        assert_eq!(code, 0, "{machine:?}");
        assert!(out.contains("threads: 2 core(s)"), "{machine:?}: {out}");
        assert_eq!(out.matches(" on core 1\n").count(), 3, "{machine:?}: {out}");
        assert!(out.contains("counter 4000 (expected 4000)"));
        assert!(out.contains("40000 messages from 4 senders on 2 core(s), each once and in order"));
        assert!(out.contains("on core 1, slept 10 ms"), "{out}");
        assert!(out.contains("ping-pong core 0 <-> core 1"), "{out}");
        assert!(out.contains("threads: ok"), "{machine:?}: {out}");
    }
    // A panic on core 1 says so.
    let (code, out) = boot_with(QemuMachine::PcTcg, &elf("threads", false), "panic", &smp);
    assert_eq!(code, 101);
    assert!(out.contains("[torito] thread 16 on core 1 panicked"), "{out}");
}

/// virtio-blk over virtio-mmio on QEMU microvm (devices named on the
/// command line, as QEMU does with `acpi=off`; completion by interrupt
/// through the IOAPIC): blkcheck reads the pattern,
/// writes its own, flushes; the image is checked byte for byte. A
/// read-only drive refuses the write and stays as it was.
#[test]
fn virtio_blk_on_microvm() {
    if !need("qemu-system-x86_64") || !kvm() {
        return;
    }
    let elf = elf("blkcheck", true);
    for readonly in [false, true] {
        let img = xtask::blkcheck_image(if readonly { "ro" } else { "rw" }, 4 << 20);
        let before = std::fs::read(&img).unwrap();
        let drive = format!(
            "file={},if=none,id=d0,format=raw{}",
            img.display(),
            if readonly { ",readonly=on" } else { "" }
        );
        let extra = ["-machine", "acpi=off", "-drive", &drive, "-device", "virtio-blk-device,drive=d0"];
        let (code, out) = boot_with(QemuMachine::MicrovmKvm, &elf, if readonly { "ro" } else { "" }, &extra);
        assert_eq!(code, 0, "{out}");
        // Requests complete by interrupt (the IOAPIC pin QEMU named).
        assert!(out.contains("virtio-blk at 0xfeb00e00 (irq 12, interrupts): 8192 blocks"), "{out}");
        assert!(out.contains("read 65536 bytes, pattern ok"), "{out}");
        assert!(out.contains("bad requests refused: true"), "{out}");
        let after = std::fs::read(&img).unwrap();
        std::fs::remove_file(&img).unwrap();
        if readonly {
            assert!(out.contains("write refused: device is read-only"), "{out}");
            assert!(after == before, "a read-only image changed");
        } else {
            assert!(out.contains("blkcheck: ok"), "{out}");
            xtask::assert_blkcheck_wrote(&before, &after);
        }
    }
}

/// `devices.poll`: the same device completes by polling.
#[test]
fn virtio_blk_polled_on_microvm() {
    if !need("qemu-system-x86_64") || !kvm() {
        return;
    }
    let img = xtask::blkcheck_image("poll", 4 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let extra = ["-machine", "acpi=off", "-drive", &drive, "-device", "virtio-blk-device,drive=d0"];
    let (code, out) = boot_with(QemuMachine::MicrovmKvm, &elf("blkcheck", true), "devices.poll", &extra);
    std::fs::remove_file(&img).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(irq 12, polled)") && out.contains("blkcheck: ok"), "{out}");
}

/// virtio-blk over PCI on QEMU pc and q35 (TCG, multiboot): found by
/// scanning bus 0, completing by MSI-X, the same ELF as on microvm and our
/// monitor.
#[test]
fn virtio_blk_pci_on_pc_and_q35() {
    if !need("qemu-system-x86_64") {
        return;
    }
    let elf = elf("blkcheck", false);
    for machine in [QemuMachine::PcTcg, QemuMachine::Q35Tcg] {
        let img = xtask::blkcheck_image("pci", 4 << 20);
        let before = std::fs::read(&img).unwrap();
        let drive = format!("file={},if=none,id=d0,format=raw", img.display());
        let extra = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
        let (code, out) = boot_with(machine, &elf, "", &extra);
        let after = std::fs::read(&img).unwrap();
        std::fs::remove_file(&img).unwrap();
        assert_eq!(code, 0, "{machine:?}: {out}");
        // Completion by MSI-X, set up by the devices unit.
        assert!(out.contains("virtio-blk at PCI 00:") && out.contains("(MSI-X): 8192 blocks"), "{out}");
        assert!(out.contains("blkcheck: ok"), "{out}");
        xtask::assert_blkcheck_wrote(&before, &after);
    }
}

/// One ELF (the PVH build of blkcheck) finds its disk on QEMU microvm
/// (virtio-mmio), QEMU pc (virtio-pci) and the Torito monitor.
#[test]
fn one_blkcheck_elf_finds_its_disk_everywhere() {
    if !need("qemu-system-x86_64") || !kvm() {
        return;
    }
    let elf = elf("blkcheck", true);
    let img = xtask::blkcheck_image("everywhere", 4 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let mmio = ["-machine", "acpi=off", "-drive", &drive, "-device", "virtio-blk-device,drive=d0"];
    let pci = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
    for (machine, extra) in [(QemuMachine::MicrovmKvm, &mmio[..]), (QemuMachine::PcTcg, &pci[..])] {
        let (code, out) = boot_with(machine, &elf, "", extra);
        assert_eq!(code, 0, "{machine:?}: {out}");
        assert!(out.contains("blkcheck: ok"), "{machine:?}: {out}");
    }
    let monitor = xtask::build_monitor(true).unwrap();
    let out = Command::new(monitor).arg("--disk").arg(&img).arg(&elf).output().unwrap();
    std::fs::remove_file(&img).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("virtio-blk at 0xd0000000") && text.contains("blkcheck: ok"), "{text}");
}

/// `torito --symbolize ELF` over `log`.
fn symbolize(elf: &std::path::Path, log: &str) -> String {
    use std::io::Write;
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let mut c = std::process::Command::new(monitor)
        .arg("--symbolize")
        .arg(elf)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(log.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask run --qemu pc --gdb=PORT`: QEMU (TCG) waits before the
/// first instruction; real gdb attaches, stops at the app's `main` with
/// the frames below it (full debug information in the optimised build),
/// and lets the guest run to its exit.
#[test]
fn gdb_attaches_through_xtask_run_on_qemu_tcg() {
    if !need("qemu-system-x86_64") || !need("gdb") {
        return;
    }
    gdb_through_xtask_run(&["--qemu", "pc"], 20_000);
}

/// The same on the Torito monitor (`torito --gdb`).
#[test]
fn gdb_attaches_through_xtask_run_on_the_monitor() {
    if !xtask::testing::kvm() || !need("gdb") {
        return;
    }
    gdb_through_xtask_run(&[], 40_000);
}

fn gdb_through_xtask_run(target: &[&str], base_port: u32) {
    use std::io::BufRead;
    let port = base_port + std::process::id() % 20_000;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(["run", "hello"]).args(target).args([&format!("--gdb={port}"), "--timeout", "120"]);
    let mut vm =
        xtask::group::spawn(c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()))
            .expect("start xtask run");
    // The build's lines, then the gdb command to run.
    let err = vm.take_stderr().expect("piped");
    let mut lines = std::io::BufReader::new(err).lines();
    let elf = loop {
        let l = lines.next().expect("xtask's stderr ended early").unwrap();
        if let Some(cmd) = l.trim().strip_prefix("gdb ") {
            break cmd.split_whitespace().next().unwrap().to_string();
        }
    };
    // Drain the rest, so that the monitor never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let out = std::process::Command::new("timeout")
        .args(["60", "gdb", "-batch", "-nx", "-ex", &format!("target remote :{port}")])
        .args(["-ex", "break hello::main", "-ex", "continue", "-ex", "bt", "-ex", "continue", &elf])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // The optimised build inlines `main`'s first calls: the stop may name
    // one of them, with `hello::main` among the frames below.
    assert!(text.contains("Breakpoint 1, "), "{text}");
    assert!(text.contains("hello::main () at apps/hello/src/main.rs:"), "{text}");
    assert!(text.contains("kernel::boot::kernel_main"), "{text}");
    let done = vm.wait_with_output_within(std::time::Duration::from_secs(60)).unwrap();
    assert!(String::from_utf8_lossy(&done.stdout).contains("Hello from Torito!"));
    assert_eq!(done.status.code(), Some(0));
}
