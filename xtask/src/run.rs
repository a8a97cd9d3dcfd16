//! `cargo xtask run`: build an app and boot it on the Torito monitor, on
//! QEMU (`--qemu MACHINE`) or on Firecracker (`--firecracker`), with the
//! monitor's device options translated for each (see [`crate::devopts`]).
//!
//! What a target cannot do is refused with one line before anything is
//! built. `-v` prints the command that boots the guest. While the guest
//! runs, `xtask` outlives Ctrl-C and SIGTERM (the guest's monitor gets
//! them, stops the guest and reports), then exits with its status.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::devopts::{self, Devices, Disk, Nic, Vsock};
use crate::{QemuMachine, Result, Variant};

/// Where to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The Torito monitor.
    Torito,
    /// QEMU with this machine.
    Qemu(QemuMachine),
    /// Firecracker (PVH entry).
    Firecracker,
}

/// One `cargo xtask run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The app's name.
    pub app: String,
    /// Its build variant.
    pub variant: Variant,
    /// `--files DIR`.
    pub files: Option<PathBuf>,
    /// Where to boot.
    pub target: Target,
    /// `--mem`, as given (`128M`).
    pub mem: String,
    /// `--cpus`.
    pub cpus: u32,
    /// `--disk`, as given.
    pub disks: Vec<String>,
    /// `--net`, as given.
    pub nets: Vec<String>,
    /// `--share`, as given.
    pub shares: Vec<String>,
    /// `--vsock`, as given.
    pub vsock: Option<String>,
    /// `--timeline` (`"text"`), `--timeline=json` or `--timeline=json-events`.
    pub timeline: Option<String>,
    /// `--timeout` in seconds.
    pub timeout: Option<f64>,
    /// `-v`: print the command that boots the guest.
    pub verbose: bool,
    /// `--core PATH` (the monitor's).
    pub core: Option<PathBuf>,
    /// `--gdb[=PORT]`: wait for gdb (the monitor, or QEMU with TCG).
    pub gdb: Option<u16>,
    /// The kernel command line's words.
    pub args: Vec<String>,
}

/// Check the options for `opts.target` and parse the devices, before any
/// build: every refusal is one line.
pub fn check(opts: &RunOptions) -> Result<Devices> {
    if let Some(t) = &opts.timeline
        && t != "text"
        && t != "json"
        && t != "json-events"
    {
        return Err(format!("--timeline={t}: use --timeline, --timeline=json or --timeline=json-events"));
    }
    if opts.timeout.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        return Err("--timeout takes a number of seconds above 0, e.g. --timeout 10".into());
    }
    if opts.cpus == 0 {
        return Err("--cpus: a guest needs at least 1 vCPU".into());
    }
    let devices = Devices {
        mem_mib: devopts::parse_mem_mib(&opts.mem)?,
        cpus: opts.cpus,
        disks: opts.disks.iter().map(|d| Disk::parse(d)).collect::<Result<_>>()?,
        nics: opts.nets.iter().map(|n| Nic::parse(n)).collect::<Result<_>>()?,
        vsock: opts.vsock.as_deref().map(Vsock::parse).transpose()?,
    };
    if opts.gdb.is_some()
        && matches!(opts.target, Target::Qemu(QemuMachine::MicrovmKvm) | Target::Firecracker)
    {
        return Err(
            "--gdb: breakpoints under QEMU with KVM never trigger on this kind of host and Firecracker has \
                    no gdb stub; use the Torito monitor (no target option) or QEMU with TCG (--qemu pc)"
                .into(),
        );
    }
    let name = match opts.target {
        Target::Torito => return Ok(devices),
        Target::Qemu(_) => "QEMU",
        Target::Firecracker => "Firecracker",
    };
    if opts.timeline.is_some() {
        return Err(format!(
            "--timeline is the Torito monitor's; {name} has none (leave out the target option)"
        ));
    }
    if opts.core.is_some() {
        return Err(format!(
            "--core is the Torito monitor's; {name} writes no core of the guest (leave out the target option)"
        ));
    }
    match opts.target {
        Target::Qemu(m) => {
            devopts::qemu_args(m, &devices)?;
        }
        Target::Firecracker => {
            if !opts.shares.is_empty() {
                return Err(
                    "--share: Firecracker has no virtio-fs; give the files as a --disk image (ext4 or \
                            FAT), bake them in with --files, or boot on the monitor or QEMU"
                        .into(),
                );
            }
        }
        Target::Torito => {}
    }
    Ok(devices)
}

/// Build and boot; returns the exit status to pass on.
pub fn run(opts: &RunOptions) -> Result<i32> {
    let devices = check(opts)?;
    let app = crate::find_app(&opts.app)?;
    let cmdline = opts.args.join(" ");
    match opts.target {
        Target::Torito => {
            // Progress on stderr: a fresh clone builds for about a minute.
            eprintln!("xtask: building the monitor (torito)…");
            let monitor = crate::build_monitor(true)?;
            eprintln!("xtask: building {}…", opts.app);
            let mut v = opts.variant;
            v.gdb = opts.gdb.is_some();
            let elf = crate::build_app_with_files(&app, v, opts.files.as_deref())?;
            let mut c = Command::new(monitor);
            if let Some(port) = opts.gdb {
                c.arg("--gdb").arg(format!("127.0.0.1:{port}"));
                eprintln!(
                    "xtask: the guest waits for gdb before its first instruction; attach with:\n  gdb {} -ex 'target remote :{port}'",
                    elf.display()
                );
            }
            c.arg("--mem").arg(&opts.mem).arg("--cpus").arg(opts.cpus.to_string());
            for (flag, values) in [("--disk", &opts.disks), ("--net", &opts.nets), ("--share", &opts.shares)]
            {
                for v in values {
                    c.arg(flag).arg(v);
                }
            }
            if let Some(v) = &opts.vsock {
                c.arg("--vsock").arg(v);
            }
            match opts.timeline.as_deref() {
                Some(json @ ("json" | "json-events")) => c.arg(format!("--timeline={json}")),
                Some(_) => c.arg("--timeline"),
                None => &mut c,
            };
            if let Some(t) = opts.timeout {
                c.arg("--timeout").arg(format!("{t}"));
            }
            if let Some(p) = &opts.core {
                c.arg("--core").arg(p);
            }
            c.arg(&elf);
            if !opts.args.is_empty() {
                c.arg("--").args(&opts.args);
            }
            boot(opts, c).map(exit_code)
        }
        Target::Qemu(machine) => {
            if !crate::have("qemu-system-x86_64") {
                return Err(
                    "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)".into()
                );
            }
            let mut v = opts.variant;
            v.gdb = opts.gdb.is_some();
            // qboot boots only PVH; microvm boots multiboot first, but
            // names its virtio-mmio devices only to a PVH (or Linux)
            // kernel's command line.
            if matches!(machine, QemuMachine::PcQbootTcg | QemuMachine::MicrovmKvm) {
                v.pvh_only = true;
            }
            eprintln!("xtask: building {}…", opts.app);
            let elf = crate::build_app_with_files(&app, v, opts.files.as_deref())?;
            let mut q = crate::qemu(machine, &elf, &cmdline);
            if let Some(port) = opts.gdb {
                q.args(["-gdb", &format!("tcp:127.0.0.1:{port}"), "-S"]);
                eprintln!(
                    "xtask: QEMU waits for gdb before the first instruction; attach with:\n  gdb {} -ex 'target remote :{port}'",
                    elf.display()
                );
            }
            q.args(["-smp", &opts.cpus.to_string(), "-m", &format!("{}M", devices.mem_mib)]);
            q.args(devopts::qemu_args(machine, &devices)?);
            // The daemons live until QEMU has stopped.
            let mut daemons = Vec::new();
            if !opts.shares.is_empty() {
                q.args(crate::virtiofsd::qemu_common_args(machine, &format!("{}M", devices.mem_mib)));
                let run_dir = crate::root().join("target/run");
                for (n, s) in opts.shares.iter().enumerate() {
                    let (dir, tag) = crate::virtiofsd::parse_share(s)?;
                    let d = crate::virtiofsd::Virtiofsd::start(&dir, &tag, &run_dir)?;
                    q.args(d.qemu_args(machine, n));
                    daemons.push(d);
                }
            }
            let status = boot(opts, q)?;
            drop(daemons);
            Ok(match status.code() {
                Some(124) if opts.timeout.is_some() => 124,
                // QEMU's isa-debug-exit reports (code << 1) | 1.
                Some(code) if code & 1 == 1 => code >> 1,
                _ => exit_code(status),
            })
        }
        Target::Firecracker => {
            if !crate::have("firecracker") {
                return Err("no `firecracker` on PATH (it is not a Debian package: see \
                            https://github.com/firecracker-microvm/firecracker/releases)"
                    .into());
            }
            eprintln!("xtask: building {} (PVH entry)…", opts.app);
            let v = Variant { pvh_only: true, ..opts.variant };
            let elf = crate::build_app_with_files(&app, v, opts.files.as_deref())?;
            let dir = crate::root().join("target/run").join(format!("firecracker-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let result = firecracker(opts, &elf, &cmdline, &devices, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    }
}

/// Boot on Firecracker with its configuration file in `dir`; its own log
/// goes to a file there (printed when it fails), so that the terminal
/// shows the guest's console only.
fn firecracker(opts: &RunOptions, elf: &Path, cmdline: &str, devices: &Devices, dir: &Path) -> Result<i32> {
    let cfg = dir.join("vm.json");
    let log = dir.join("firecracker.log");
    let write = |p: &Path, text: &str| std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()));
    write(&cfg, &devopts::firecracker_config(elf, cmdline, devices)?)?;
    write(&log, "")?;
    let mut c = Command::new("firecracker");
    c.arg("--no-api").arg("--config-file").arg(&cfg).arg("--log-path").arg(&log);
    let code = exit_code(boot(opts, c)?);
    if code != 0 && code != 124 {
        eprintln!("xtask: Firecracker's log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    } else if code == 0 {
        eprintln!("xtask: (Firecracker stops at the guest's exit but does not pass its exit code on)");
    }
    Ok(code)
}

/// Run `c` (under `timeout` for targets other than the monitor, which has
/// its own): print it with `-v`, outlive Ctrl-C while it runs, and return
/// how it ended.
fn boot(opts: &RunOptions, c: Command) -> Result<std::process::ExitStatus> {
    let mut c = match opts.timeout {
        Some(t) if opts.target != Target::Torito => {
            // `timeout` stops the VMM and reports 124, as the monitor does.
            let mut w = Command::new("timeout");
            w.arg(format!("{t}")).arg(c.get_program()).args(c.get_args());
            w
        }
        _ => c,
    };
    if opts.verbose {
        eprintln!("xtask: {}", shell_words(&c));
    }
    let _outlive = crate::group::OutliveStopSignals::new();
    c.status().map_err(|e| format!("cannot run {}: {e}", c.get_program().to_string_lossy()))
}

/// A process's status as a shell reports it: its exit code, or 128 + the
/// signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// `c` as a line a shell would run (words with odd characters quoted).
pub fn shell_words(c: &Command) -> String {
    let quote = |w: &str| {
        if !w.is_empty() && w.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_./=,:@%+".contains(ch)) {
            w.to_string()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    let mut words = vec![quote(&c.get_program().to_string_lossy())];
    words.extend(c.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(target: Target) -> RunOptions {
        RunOptions {
            app: "hello".into(),
            variant: Variant::default(),
            files: None,
            target,
            mem: "128M".into(),
            cpus: 1,
            disks: vec![],
            nets: vec![],
            shares: vec![],
            vsock: None,
            timeline: None,
            timeout: None,
            verbose: false,
            core: None,
            gdb: None,
            args: vec![],
        }
    }

    #[test]
    fn what_a_target_cannot_do_is_refused_in_one_line() {
        let mut o = opts(Target::Qemu(QemuMachine::MicrovmKvm));
        o.timeline = Some("text".into());
        assert!(check(&o).unwrap_err().contains("QEMU has none"));
        o.timeline = None;
        o.core = Some("x.core".into());
        assert!(check(&o).unwrap_err().contains("--core is the Torito monitor's"));
        o.core = None;
        o.gdb = Some(1234);
        assert!(check(&o).unwrap_err().contains("never trigger"), "microvm runs under KVM");
        o.target = Target::Firecracker;
        assert!(check(&o).unwrap_err().contains("Firecracker has no gdb stub"));
        o.target = Target::Qemu(QemuMachine::PcTcg);
        check(&o).unwrap();
        o.target = Target::Torito;
        check(&o).unwrap();
        o.gdb = None;
        o.target = Target::Qemu(QemuMachine::MicrovmKvm);
        o.vsock = Some("cid=3,uds=/tmp/v".into());
        assert!(check(&o).unwrap_err().contains("--vsock"));
        let mut o = opts(Target::Firecracker);
        o.shares = vec!["/tmp".into()];
        assert!(check(&o).unwrap_err().contains("Firecracker has no virtio-fs"));
        let mut o = opts(Target::Torito);
        o.timeline = Some("xml".into());
        assert!(check(&o).unwrap_err().contains("--timeline=xml"));
        o.timeline = None;
        o.nets = vec!["tap0".into()];
        assert!(check(&o).unwrap_err().contains("unknown NIC option 'tap0'"));
        o.nets = vec!["tap=tap0".into()];
        o.vsock = Some("cid=3,uds=/tmp/v".into());
        let d = check(&o).unwrap();
        assert_eq!((d.nics.len(), d.vsock.unwrap().cid, d.mem_mib), (1, 3, 128));
    }

    #[test]
    fn commands_print_as_a_shell_would_run_them() {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-append", "torito.ip=10.0.2.15/24 port=80", "-m", "128M", "it's"]);
        assert_eq!(
            shell_words(&c),
            r"qemu-system-x86_64 -append 'torito.ip=10.0.2.15/24 port=80' -m 128M 'it'\''s'"
        );
    }
}
