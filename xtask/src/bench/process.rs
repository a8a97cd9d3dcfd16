//! The process section: `apps/threads bench` measures, inside the guest
//! with the TSC, a context switch, channel round trips, sleeps and, with
//! two cores, cross-core messages and the heap; on our monitor and QEMU
//! microvm side by side. Figures only: they depend on the host's CPU.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{QemuMachine, Variant};

/// The process unit's figures (`threads bench`) on our monitor and, when
/// available, QEMU microvm: one core, then two (cross-core round trip,
/// waking a halted core, the heap from both cores) when the host has two.
pub fn run(monitor: &Path) -> Result<(), String> {
    println!("\nprocess unit (apps/threads bench):");
    let threads = crate::build("threads", Variant::default())?;
    let two = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut runs: Vec<(String, Command)> = Vec::new();
    for cpus in if two { &["1", "2"][..] } else { &["1"][..] } {
        let mut c = Command::new(monitor);
        c.args(["--timeout", "60", "--cpus", cpus]).arg(&threads).args(["--", "bench"]);
        runs.push((format!("torito {cpus}c"), c));
    }
    if crate::have("qemu-system-x86_64") && crate::kvm_usable() {
        let pvh = crate::build("threads", Variant { pvh_only: true, ..Default::default() })?;
        runs.push(("microvm 1c".into(), crate::qemu(QemuMachine::MicrovmKvm, &pvh, "bench")));
        if two {
            let mut c = crate::qemu(QemuMachine::MicrovmKvm, &pvh, "bench");
            c.args(["-smp", "2"]);
            runs.push(("microvm 2c".into(), c));
        }
    }
    for (name, mut cmd) in runs {
        let out = cmd.stderr(Stdio::null()).output().map_err(|e| format!("{name}: {e}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("bench: ")) {
            println!("  {name:<11} {}", line.trim_start_matches("bench: "));
        }
    }
    Ok(())
}
