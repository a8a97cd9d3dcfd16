//! `cargo xtask bench`: launch-to-KernelMain, measured honestly.
//!
//! Every launch is a fresh process with a fresh VM. Time zero is this
//! launcher's `CLOCK_MONOTONIC` just before it spawns the monitor; the
//! Torito monitor receives it in `TORITO_LAUNCH_NS` and reports its phases
//! and the guest's milestones on that clock (`--timeline=json`). Other
//! monitors are timed as whole processes running a `profile-boot` ELF,
//! which exits at the first line of `kernel_main`.
//!
//! Configurations run interleaved (A B C … A B C …) after warm-up rounds,
//! so drift hits all alike; ratios are taken round by round. Results go to
//! stdout, `launch.json` and `launch.svg` in the output directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use plotters::prelude::*;
use serde_json::{Value, json};

use crate::{QemuMachine, Variant};

/// Options of a bench run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Counted launches per configuration.
    pub runs: usize,
    /// Uncounted rounds first.
    pub warmup: usize,
    /// Where `launch.json` and `launch.svg` go.
    pub out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The Torito monitor with `--timeline=json`.
    Torito,
    /// Any process, timed whole.
    Process,
    /// Firecracker with `--boot-timer`: also its boot-timer log line.
    Firecracker,
}

struct Config {
    name: String,
    kind: Kind,
    program: PathBuf,
    args: Vec<OsString>,
}

#[derive(Clone, Debug, Default)]
struct Sample {
    /// Spawn to reaped, µs.
    whole_us: f64,
    /// Events in µs since spawn (Torito only).
    events: BTreeMap<String, f64>,
    stats: BTreeMap<String, u64>,
    kvm_runs: u64,
    touched_kib: Option<u64>,
    maxrss_kib: u64,
    status: i32,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Parse `YYYY-MM-DDTHH:MM:SS.fffffffff` (UTC) into ns since the epoch.
fn parse_utc_ns(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let digits = frac.chars().take_while(char::is_ascii_digit).collect::<String>();
    let ns: i64 = format!("{digits:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (proleptic Gregorian), after H. Hinnant.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000_000 + ns).ok()
}

/// Wait for `pid`; returns (exit status, peak RSS in KiB).
fn wait(pid: u32) -> Result<(i32, u64), String> {
    let mut status = 0;
    // SAFETY: plain syscall; `rusage` is zeroed plain data it fills in.
    #[allow(unsafe_code)]
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        (libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru), ru)
    };
    if rc < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Ok((code, ru.ru_maxrss as u64))
}

fn launch(c: &Config) -> Result<Sample, String> {
    let mut cmd = Command::new(&c.program);
    cmd.args(&c.args).stdin(Stdio::null());
    cmd.stdout(if c.kind == Kind::Firecracker { Stdio::piped() } else { Stdio::null() });
    cmd.stderr(if c.kind == Kind::Torito { Stdio::piped() } else { Stdio::null() });
    cmd.env("TZ", "UTC");
    let wall0 = realtime_ns();
    let t0 = now_ns();
    if c.kind == Kind::Torito {
        cmd.env("TORITO_LAUNCH_NS", t0.to_string());
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", c.program.display()))?;
    let (mut err, mut out) = (String::new(), String::new());
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let (status, maxrss_kib) = wait(child.id())?;
    let t1 = now_ns();
    let mut s = Sample { whole_us: (t1 - t0) as f64 / 1000.0, maxrss_kib, status, ..Default::default() };
    if c.kind == Kind::Firecracker {
        // "2026-11-21T21:04:49.043077183 [...] Guest-boot-time =   9331 us ..."
        if let Some(line) = out.lines().find(|l| l.contains("Guest-boot-time")) {
            if let Some(ts) = line.split_whitespace().next().and_then(parse_utc_ns) {
                s.events.insert("boot_timer".into(), ts.saturating_sub(wall0) as f64 / 1000.0);
            }
            let own = line.split('=').nth(1).and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok());
            if let Some(us) = own {
                s.events.insert("firecracker_boot_time".into(), us);
            }
        }
    }
    if c.kind == Kind::Torito {
        let line = err
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| format!("{}: no timeline in: {err}", c.name))?;
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}: bad timeline JSON: {e}", c.name))?;
        if v["time_zero"] != "launch" {
            return Err(format!("{}: the monitor did not take the launch time", c.name));
        }
        for e in v["events"].as_array().into_iter().flatten() {
            if let (Some(n), Some(us)) = (e["name"].as_str(), e["us"].as_f64()) {
                s.events.insert(n.to_string(), us);
            }
        }
        for (k, val) in v["vcpu_stats"].as_object().into_iter().flatten() {
            s.stats.insert(k.clone(), val.as_u64().unwrap_or(0));
        }
        s.kvm_runs = v["kvm_run_returns"].as_u64().unwrap_or(0);
        s.touched_kib = v["guest_touched_kib"].as_u64();
        // The monitor's own high-water mark: wait4's figure would include
        // the launcher's memory, which a spawned child shares until exec.
        if let Some(k) = v["peak_rss_kib"].as_u64() {
            s.maxrss_kib = k;
        }
    }
    Ok(s)
}

/// min, median, max.
fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((v[0], med, v[n - 1]))
}

fn fmt3(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((a, b, c)) => format!("{a:>9.1} {b:>9.1} {c:>9.1}"),
        None => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
    }
}

/// Host and guest points of a Torito launch, in order.
const POINTS: [&str; 11] = [
    "main",
    "kvm_ready",
    "memory_ready",
    "elf_loaded",
    "vcpu_ready",
    "first_run",
    "kernel_main",
    "app_main",
    "app_exit",
    "guest_stopped",
    "process_exit",
];

/// Consecutive segments `(from, to, µs)` of a Torito sample, ending at
/// "reaped" (the whole process).
fn segments(s: &Sample) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let mut prev = ("spawn".to_string(), 0.0);
    for p in POINTS {
        if let Some(&t) = s.events.get(p) {
            out.push((prev.0.clone(), p.to_string(), t - prev.1));
            prev = (p.to_string(), t);
        }
    }
    out.push((prev.0, "reaped".into(), s.whole_us - prev.1));
    out
}

fn torito_configs(
    monitor: &Path,
    hello: &Path,
    hello_profile: &Path,
    bare: &Path,
    disk: &Path,
) -> Vec<Config> {
    let t = |name: &str, elf: &Path, mem: &str| Config {
        name: name.to_string(),
        kind: Kind::Torito,
        program: monitor.to_path_buf(),
        args: vec!["--timeline=json".into(), "--mem".into(), mem.into(), elf.into()],
    };
    vec![
        t("torito hello profile-boot", hello_profile, "128M"),
        t("torito hello", hello, "128M"),
        // The same without --timeline: the whole process as a user runs it.
        Config {
            name: "torito hello, no timeline".into(),
            kind: Kind::Process,
            program: monitor.to_path_buf(),
            args: vec![hello.into()],
        },
        t("torito bare guest", bare, "128M"),
        t("torito hello profile-boot 1G", hello_profile, "1G"),
        t("torito hello profile-boot 4G", hello_profile, "4G"),
        // The cost of attaching a disk to a launch (the device is only
        // probed by apps that use the devices unit; this is the monitor's
        // side: opening the file, the device, the command line).
        Config {
            name: "torito hello profile-boot + disk".into(),
            kind: Kind::Torito,
            program: monitor.to_path_buf(),
            args: vec![
                "--timeline=json".into(),
                "--disk".into(),
                format!("{},ro", disk.display()).into(),
                hello_profile.into(),
            ],
        },
    ]
}

/// Run the benchmark.
pub fn run(opts: &Options) -> Result<bool, String> {
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    eprintln!("bench: building the monitor and the guests");
    let monitor = crate::build_monitor(true)?;
    let hello = crate::build("hello", Variant::default())?;
    let hello_profile = crate::build("hello", Variant { profile_boot: true, ..Default::default() })?;
    let hello_profile_pvh =
        crate::build("hello", Variant { profile_boot: true, pvh_only: true, ..Default::default() })?;
    let bare = crate::bare::write(&opts.out).map_err(|e| format!("writing the bare guest: {e}"))?;

    let disk = opts.out.join("disk-1M.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).map_err(|e| format!("{}: {e}", disk.display()))?;
    let mut configs = torito_configs(&monitor, &hello, &hello_profile, &bare, &disk);
    // A TAP device for a launch with a NIC (needs root; left out otherwise).
    let tap = format!("trtb{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    let have_tap = crate::have("ip") && ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    // Measured apart from the shuffled rounds, in pairs: closing a TAP
    // device disturbs the launch that follows it (measured: with the NIC
    // run among the others, "hello − bare guest" read +75…+88 µs; without,
    // −17 µs).
    let nic = have_tap.then(|| Config {
        name: "torito hello profile-boot + NIC".into(),
        kind: Kind::Torito,
        program: monitor.clone(),
        args: vec![
            "--timeline=json".into(),
            "--net".into(),
            format!("tap={tap}").into(),
            hello_profile.clone().into(),
        ],
    });
    let mut notes = Vec::new();
    if crate::have("qemu-system-x86_64") {
        for (name, machine, elf) in [
            ("qemu microvm kvm pvh profile-boot", QemuMachine::MicrovmKvm, &hello_profile_pvh),
            ("qemu pc tcg multiboot profile-boot", QemuMachine::PcTcg, &hello_profile),
        ] {
            let q = crate::qemu(machine, elf, "");
            configs.push(Config {
                name: name.into(),
                kind: Kind::Process,
                program: q.get_program().into(),
                args: q.get_args().map(Into::into).collect(),
            });
        }
    } else {
        notes.push("QEMU not installed: QEMU configurations skipped".to_string());
    }
    if crate::have("firecracker") {
        let cfg = opts.out.join("firecracker.json");
        let text = json!({
            "boot-source": { "kernel_image_path": hello_profile_pvh, "boot_args": "" },
            "drives": [],
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        });
        std::fs::write(&cfg, text.to_string()).map_err(|e| e.to_string())?;
        configs.push(Config {
            name: "firecracker pvh profile-boot".into(),
            kind: Kind::Firecracker,
            program: "firecracker".into(),
            args: vec!["--no-api".into(), "--boot-timer".into(), "--config-file".into(), cfg.into()],
        });
    } else {
        notes.push("no `firecracker` on PATH: Firecracker configuration skipped".to_string());
    }
    for n in &notes {
        eprintln!("bench: note: {n}");
    }

    let total = ((opts.warmup + opts.runs) * configs.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} launches {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut samples: Vec<Vec<Sample>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.warmup + opts.runs {
        // A new order each round, so no configuration always follows the
        // same one (a QEMU teardown slows whatever comes next). The Torito
        // configurations run as one block, in shuffled order inside it, so
        // the pairs compared round by round (hello vs bare guest, 4 GiB vs
        // 128 MiB) share their surroundings.
        for i in round_order(&configs, round as u64) {
            let c = &configs[i];
            bar.set_message(c.name.clone());
            let s = launch(c)?;
            if round >= opts.warmup {
                samples[i].push(s);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    // The NIC's launch cost: pairs of (hello profile-boot, the same + NIC),
    // in alternating order.
    let mut nic_cost = None;
    if let Some(nic) = &nic {
        let base = &configs[0];
        let km = |s: &Sample| s.events.get("kernel_main").copied();
        let mut d = Vec::new();
        for round in 0..opts.runs + opts.warmup {
            let (a, b) = if round % 2 == 0 {
                (launch(base)?, launch(nic)?)
            } else {
                let n = launch(nic)?;
                (launch(base)?, n)
            };
            if round >= opts.warmup
                && let (Some(x), Some(y)) = (km(&a), km(&b))
            {
                d.push(y - x);
            }
        }
        nic_cost = summary(&d).map(|s| s.1);
        ip(&["tuntap", "del", "dev", &tap, "mode", "tap"]);
    }

    let report = Report { configs: &configs, samples: &samples, opts, notes, nic_cost };
    let ok = report.print(&hello);
    process_figures(&monitor)?;
    block_figures(&monitor, &opts.out)?;
    net_figures(&monitor)?;
    report.write_json(&hello)?;
    report.write_svg()?;
    println!(
        "bench: wrote {} and {}",
        opts.out.join("launch.json").display(),
        opts.out.join("launch.svg").display()
    );
    Ok(ok)
}

/// The order of one round: the Torito block and every other configuration
/// shuffled, the block itself shuffled inside.
fn round_order(configs: &[Config], seed: u64) -> Vec<usize> {
    let torito: Vec<usize> = (0..configs.len()).filter(|&i| configs[i].kind == Kind::Torito).collect();
    let others: Vec<usize> = (0..configs.len()).filter(|&i| configs[i].kind != Kind::Torito).collect();
    let inner = shuffled(torito.len(), seed ^ 0x5bd1_e995);
    let mut order = Vec::with_capacity(configs.len());
    for g in shuffled(others.len() + 1, seed) {
        if g == others.len() {
            order.extend(inner.iter().map(|&k| torito[k]));
        } else {
            order.push(others[g]);
        }
    }
    order
}

/// `0..n` in an order that depends on `seed` (Fisher–Yates with xorshift;
/// reproducible from run to run).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// The process unit's figures (`threads bench`) on our monitor and, when
/// available, QEMU microvm: one core, then two (cross-core round trip,
/// waking a halted core, the heap from both cores) when the host has two.
fn process_figures(monitor: &Path) -> Result<(), String> {
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

/// Block device figures (`blkcheck bench`): sequential read and 4 KiB
/// random reads of a 256 MiB image, on our monitor (`--disk`) and QEMU
/// microvm (virtio-blk-device), and the exits each request costs on ours.
fn block_figures(monitor: &Path, out: &Path) -> Result<(), String> {
    println!("\nblock device (apps/blkcheck bench, 256 MiB image, read-only):");
    // A written (not sparse) image, kept between runs; each guest reads
    // it once to warm the host's page cache, then the second run counts.
    let img = out.join("disk-256M.img");
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if std::fs::metadata(&img).map_or(true, |m| m.len() != 256 << 20) {
        let data: Vec<u8> = (0..256usize << 20).map(|i| (i >> 12) as u8).collect();
        std::fs::write(&img, data).map_err(|e| format!("{}: {e}", img.display()))?;
    }
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
    for (name, mut cmd) in runs {
        cmd.output().map_err(|e| format!("{name}: {e}"))?;
        let o = cmd.output().map_err(|e| format!("{name}: {e}"))?;
        for line in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("bench: ")) {
            println!("  {name:<13} {}", line.trim_start_matches("bench: "));
        }
        let stderr = String::from_utf8_lossy(&o.stderr);
        if let Some(json) = stderr.lines().rev().find(|l| l.starts_with('{')) {
            let get = |k: &str| {
                json.find(&format!("\"{k}\":")).and_then(|i| {
                    json[i + k.len() + 3..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect::<String>()
                        .parse::<u64>()
                        .ok()
                })
            };
            if let (Some(mmio), Some(exits)) = (get("mmio_exits"), get("exits")) {
                let requests = 4096 + 2000;
                println!(
                    "  {name:<13} {mmio} MMIO exits, {exits} exits in all, for ~{requests} requests plus set-up"
                );
            }
        }
    }
    Ok(())
}

/// Network figures (`apps/echo` and the `netload` client): TCP stream
/// throughput and request/response rates with 1 and 64 connections, on our
/// monitor and QEMU microvm, through a TAP device in a network namespace
/// made for the run (needs root; skipped otherwise).
fn net_figures(monitor: &Path) -> Result<(), String> {
    println!("\nnetwork (apps/echo, TAP in a network namespace, netload client):");
    let ns = format!("torito-bench-{}", std::process::id());
    let ip = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    if !(crate::have("ip") && ip(&["netns", "add", &ns])) {
        println!("  skipped: cannot create a network namespace (needs root and iproute2)");
        return Ok(());
    }
    let result = (|| -> Result<(), String> {
        let ok = ip(&["-n", &ns, "tuntap", "add", "dev", "tap0", "mode", "tap"])
            && ip(&["-n", &ns, "addr", "add", "10.0.2.1/24", "dev", "tap0"])
            && ip(&["-n", &ns, "link", "set", "tap0", "up"]);
        if !ok {
            println!("  skipped: cannot create a TAP device");
            return Ok(());
        }
        let netload = crate::build_netload()?;
        let echo = crate::build("echo", Variant::default())?;
        let args = "torito.ip=10.0.2.15/24 port=7 buf=65536";
        let mut runs: Vec<(&str, Vec<String>)> = vec![(
            "torito",
            [
                monitor.display().to_string(),
                "--net".into(),
                "tap=tap0".into(),
                echo.display().to_string(),
                "--".into(),
            ]
            .into_iter()
            .chain(args.split(' ').map(String::from))
            .collect(),
        )];
        if crate::have("qemu-system-x86_64") && crate::kvm_usable() {
            let pvh = crate::build("echo", Variant { pvh_only: true, ..Default::default() })?;
            let q = crate::qemu(QemuMachine::MicrovmKvm, &pvh, args);
            let mut v: Vec<String> = std::iter::once(q.get_program().to_string_lossy().into_owned())
                .chain(q.get_args().map(|a| a.to_string_lossy().into_owned()))
                .collect();
            v.extend(
                ["-machine", "acpi=off", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]
                    .map(String::from),
            );
            v.extend(["-device", "virtio-net-device,netdev=n0"].map(String::from));
            runs.push(("qemu microvm", v));
        }
        for (name, argv) in runs {
            let mut vm = Command::new("ip")
                .args(["netns", "exec", &ns, "timeout", "60"])
                .args(&argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{name}: {e}"))?;
            let load = |a: &[&str]| {
                Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .arg(&netload)
                    .arg("10.0.2.15:7")
                    .args(a)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace("netload: ", ""))
                    .unwrap_or_default()
            };
            for a in [&["stream", "3"][..], &["rr", "1", "2"], &["rr", "64", "2"]] {
                println!("  {name:<13} {}", load(a));
            }
            let _ = vm.kill();
            let _ = vm.wait();
        }
        Ok(())
    })();
    ip(&["netns", "del", &ns]);
    result
}

struct Report<'a> {
    configs: &'a [Config],
    samples: &'a [Vec<Sample>],
    opts: &'a Options,
    notes: Vec<String>,
    /// Median of paired differences, exec → kernel_main, with a NIC − without.
    nic_cost: Option<f64>,
}

impl Report<'_> {
    fn index(&self, name: &str) -> Option<usize> {
        self.configs.iter().position(|c| c.name == name)
    }

    fn metric(&self, name: &str, f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
        self.index(name).map(|i| self.samples[i].iter().filter_map(&f).collect()).unwrap_or_default()
    }

    fn median(&self, name: &str, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        summary(&self.metric(name, f)).map(|s| s.1)
    }

    /// Round-by-round ratio of two configurations' metric.
    fn ratio(&self, a: &str, b: &str, f: impl Fn(&Sample) -> Option<f64>) -> Option<(f64, f64, f64)> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let r: Vec<f64> =
            self.samples[ia].iter().zip(&self.samples[ib]).filter_map(|(x, y)| Some(f(x)? / f(y)?)).collect();
        summary(&r)
    }

    /// Median of the round-by-round difference of two configurations.
    fn difference(&self, a: &str, b: &str, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let d: Vec<f64> =
            self.samples[ia].iter().zip(&self.samples[ib]).filter_map(|(x, y)| Some(f(x)? - f(y)?)).collect();
        summary(&d).map(|s| s.1)
    }

    fn print(&self, hello: &Path) -> bool {
        let ev = |n: &'static str| move |s: &Sample| s.events.get(n).copied();
        println!(
            "\nlaunch benchmark: {} launches per configuration after {} warm-up rounds, interleaved",
            self.opts.runs, self.opts.warmup
        );
        println!("time zero = the launcher's CLOCK_MONOTONIC just before spawn; µs; min / median / max\n");
        println!(
            "{:<38} {:>29} {:>29} {:>8} {:>8}",
            "configuration", "exec → kernel_main", "exec → process reaped", "RSS KiB", "touched"
        );
        for (c, s) in self.configs.iter().zip(self.samples) {
            let km: Vec<f64> = s.iter().filter_map(|x| x.events.get("kernel_main").copied()).collect();
            let whole: Vec<f64> = s.iter().map(|x| x.whole_us).collect();
            let rss = s.iter().map(|x| x.maxrss_kib).max().unwrap_or(0);
            let touched = s.iter().filter_map(|x| x.touched_kib).max().map_or("-".into(), |k| k.to_string());
            let bad = s.iter().filter(|x| x.status != expected_status(c)).count();
            println!(
                "{:<38} {} {} {:>8} {:>8}{}",
                c.name,
                fmt3(summary(&km)),
                fmt3(summary(&whole)),
                rss,
                touched,
                if bad > 0 { format!("  ({bad} runs exited unexpectedly)") } else { String::new() }
            );
        }
        println!(
            "* the monitor's own peak (VmHWM) for Torito runs with a timeline; otherwise wait4's figure, which"
        );
        println!(
            "  includes the launcher's memory the child shares until exec. 'touched': guest RAM resident, KiB."
        );
        if let Some(i) = self.index("firecracker pvh profile-boot") {
            let ev =
                |n: &str| self.samples[i].iter().filter_map(|s| s.events.get(n).copied()).collect::<Vec<_>>();
            println!(
                "\nfirecracker: exec → boot timer (the guest's write at kernel_main, from the log line's time) {}",
                fmt3(summary(&ev("boot_timer")))
            );
            println!(
                "firecracker: its own Guest-boot-time (from its VM build start)                        {}",
                fmt3(summary(&ev("firecracker_boot_time")))
            );
        }
        for name in ["torito hello profile-boot", "torito hello", "torito bare guest"] {
            let Some(i) = self.index(name) else { continue };
            println!("\nphases of '{name}' (µs):");
            let mut by_seg: Vec<((String, String), Vec<f64>)> = Vec::new();
            for s in &self.samples[i] {
                for (a, b, d) in segments(s) {
                    match by_seg.iter_mut().find(|(k, _)| k.0 == a && k.1 == b) {
                        Some((_, v)) => v.push(d),
                        None => by_seg.push(((a, b), vec![d])),
                    }
                }
            }
            for ((a, b), v) in by_seg {
                println!("  {:<34} {}", format!("{a} → {b}"), fmt3(summary(&v)));
            }
        }
        let stopped = |s: &Sample| s.events.get("guest_stopped").copied();
        let whole = |s: &Sample| Some(s.whole_us);
        println!("\nratios, round by round (min / median / max):");
        let ratios = [
            (
                "hello profile-boot / bare guest, exec → guest stopped",
                "torito hello profile-boot",
                "torito bare guest",
                true,
            ),
            (
                "hello profile-boot 4G / 128M, exec → kernel_main",
                "torito hello profile-boot 4G",
                "torito hello profile-boot",
                false,
            ),
            (
                "hello profile-boot 1G / 128M, exec → kernel_main",
                "torito hello profile-boot 1G",
                "torito hello profile-boot",
                false,
            ),
            (
                "torito / qemu microvm, whole process",
                "torito hello profile-boot",
                "qemu microvm kvm pvh profile-boot",
                true,
            ),
            (
                "torito / qemu pc tcg, whole process",
                "torito hello profile-boot",
                "qemu pc tcg multiboot profile-boot",
                true,
            ),
            (
                "torito / firecracker, whole process",
                "torito hello profile-boot",
                "firecracker pvh profile-boot",
                true,
            ),
        ];
        for (label, a, b, use_whole) in ratios {
            let r = if label.contains("guest stopped") {
                self.ratio(a, b, stopped)
            } else if use_whole {
                self.ratio(a, b, whole)
            } else {
                self.ratio(a, b, ev("kernel_main"))
            };
            if let Some((lo, med, hi)) = r {
                println!("  {label:<58} {lo:>7.3} {med:>7.3} {hi:>7.3}");
            }
        }
        // Targets (issue: launch-to-KernelMain).
        println!("\ntargets:");
        let mut ok = true;
        let mut check = |pass: bool, text: String| {
            println!("  [{}] {text}", if pass { " ok " } else { "MISS" });
            ok &= pass;
        };
        let hp = "torito hello profile-boot";
        if let (Some(d), Some(b)) =
            (self.difference(hp, "torito bare guest", stopped), self.median("torito bare guest", stopped))
        {
            check(
                d <= 50.0,
                format!(
                    "exec → guest stop: hello profile-boot − bare guest, same round, median {d:.0} µs ≤ 50 \
                     (bare guest {b:.0} µs)"
                ),
            );
        }
        if let Some(e) = self.median(hp, |s| s.stats.get("insn_emulation").map(|&v| v as f64)) {
            check(
                e <= 1.0,
                format!(
                    "profile-boot run emulates {e:.0} instruction(s) (the exit store): none before kernel_main"
                ),
            );
        }
        if let (Some(f), Some(k)) = (self.median(hp, ev("first_run")), self.median(hp, ev("kernel_main"))) {
            println!(
                "         first KVM_RUN → kernel_main {:.0} µs (entry into the guest; kernel_main is the first guest instruction)",
                k - f
            );
        }
        let kh = |s: &Sample| Some(s.events.get("app_main")? - s.events.get("kernel_main")?);
        if let Some(d) = self.median("torito hello", kh) {
            check(d <= 50.0, format!("kernel_main → app main {d:.1} µs ≤ 50"));
        }
        if let Some(r) = self.median("torito hello", |s| Some(s.kvm_runs as f64)) {
            check(r <= 10.0, format!("hello: {r:.0} returns from KVM_RUN ≤ 10"));
        }
        if let Some(e) = self.median("torito hello", |s| s.stats.get("insn_emulation").map(|&v| v as f64)) {
            check(e <= 100.0, format!("hello: {e:.0} emulated instructions ≤ 100"));
        }
        if let Some(d) = self.nic_cost {
            check(
                d <= 100.0,
                format!("attaching a NIC adds {d:.0} µs to exec → kernel_main, paired runs ≤ 100"),
            );
        }
        if let Some(d) = self.difference("torito hello profile-boot + disk", hp, ev("kernel_main")) {
            check(
                d <= 100.0,
                format!("attaching a disk adds {d:.0} µs to exec → kernel_main, same round ≤ 100"),
            );
        }
        if let Some((_, r, _)) = self.ratio("torito hello profile-boot 4G", hp, ev("kernel_main")) {
            check(r <= 1.10, format!("4 GiB guest launches at {r:.3}× the 128 MiB time ≤ 1.10"));
        }
        let size = std::fs::metadata(hello).map(|m| m.len()).unwrap_or(u64::MAX);
        check(size <= 200 * 1024, format!("hello ELF {size} bytes ≤ 200 KiB"));
        if let Some(i) = self.index("torito hello") {
            let rss = self.samples[i].iter().map(|s| s.maxrss_kib).max().unwrap_or(u64::MAX);
            check(rss <= 5 * 1024, format!("monitor peak RSS {rss} KiB ≤ 5 MiB"));
        }
        if let (Some(i), Some(j)) = (self.index(hp), self.index("firecracker pvh profile-boot")) {
            let r: Vec<f64> = self.samples[i]
                .iter()
                .zip(&self.samples[j])
                .filter_map(|(a, b)| Some(a.events.get("kernel_main")? / b.events.get("boot_timer")?))
                .collect();
            if let Some((_, r, _)) = summary(&r) {
                check(
                    r <= 0.2,
                    format!(
                        "exec → kernel_main {:.1}× faster than Firecracker's exec → boot timer (≥ 5×)",
                        1.0 / r
                    ),
                );
            }
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
        ok
    }

    fn write_json(&self, hello: &Path) -> Result<(), String> {
        let configs: Vec<Value> = self
            .configs
            .iter()
            .zip(self.samples)
            .map(|(c, s)| {
                let runs: Vec<Value> = s
                    .iter()
                    .map(|x| {
                        json!({"whole_us": x.whole_us, "events_us": x.events, "vcpu_stats": x.stats,
                               "kvm_run_returns": x.kvm_runs, "guest_touched_kib": x.touched_kib,
                               "monitor_peak_rss_kib": x.maxrss_kib, "status": x.status})
                    })
                    .collect();
                let whole: Vec<f64> = s.iter().map(|x| x.whole_us).collect();
                let km: Vec<f64> = s.iter().filter_map(|x| x.events.get("kernel_main").copied()).collect();
                let sm = |v: &[f64]| summary(v).map(|(a, b, c)| json!({"min": a, "median": b, "max": c}));
                json!({"name": c.name, "whole_us": sm(&whole), "kernel_main_us": sm(&km), "runs": runs})
            })
            .collect();
        let doc = json!({
            "runs": self.opts.runs, "warmup": self.opts.warmup,
            "time_zero": "launcher CLOCK_MONOTONIC before spawn",
            "hello_elf_bytes": std::fs::metadata(hello).map(|m| m.len()).ok(),
            "notes": self.notes, "configs": configs,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(self.opts.out.join("launch.json"), text).map_err(|e| e.to_string())
    }

    fn write_svg(&self) -> Result<(), String> {
        let path = self.opts.out.join("launch.svg");
        let root = SVGBackend::new(&path, (1280, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(680);
        let e = |e: &dyn std::fmt::Display| e.to_string();

        // Left: where the Torito monitor's time goes up to kernel_main (the
        // guest's stop for the bare guest): the median of each segment.
        let torito: Vec<usize> =
            (0..self.configs.len()).filter(|&i| self.configs[i].kind == Kind::Torito).collect();
        let stacks: Vec<Vec<(String, f64)>> = torito
            .iter()
            .map(|&i| {
                let mut segs: Vec<(String, Vec<f64>)> = Vec::new();
                for s in &self.samples[i] {
                    for (_, b, d) in segments(s) {
                        let pos = |n: &str| POINTS.iter().position(|p| *p == n).unwrap_or(usize::MAX);
                        if pos(&b) > pos("guest_stopped") {
                            continue;
                        }
                        match segs.iter_mut().find(|(k, _)| *k == b) {
                            Some((_, v)) => v.push(d),
                            None => segs.push((b, vec![d])),
                        }
                    }
                }
                let mut out: Vec<(String, f64)> =
                    segs.into_iter().map(|(k, v)| (k, summary(&v).map_or(0.0, |s| s.1))).collect();
                // Up to kernel_main when the guest has one.
                if let Some(k) = out.iter().position(|(n, _)| n == "kernel_main") {
                    out.truncate(k + 1);
                }
                out
            })
            .collect();
        let ymax =
            stacks.iter().map(|s| s.iter().map(|x| x.1).sum::<f64>()).fold(0.1, f64::max) / 1000.0 * 1.6;
        let names: Vec<String> =
            torito.iter().map(|&c| self.configs[c].name.trim_start_matches("torito ").to_string()).collect();
        let mut chart = ChartBuilder::on(&left)
            .caption("Torito: exec → kernel_main, median ms by phase", ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((0..torito.len().max(1) - 1).into_segmented(), 0f64..ymax)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(torito.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_style(("sans-serif", 11))
            .y_desc("ms since spawn")
            .draw()
            .map_err(|x| e(&x))?;
        let colors = [
            RGBColor(120, 120, 120),
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(23, 190, 207),
        ];
        let color_of =
            |k: &str| colors[POINTS.iter().position(|p| *p == k).unwrap_or(0).min(colors.len() - 1)];
        let label_of = |k: &str| match k {
            "main" => "exec → main()",
            "kvm_ready" => "ELF check, /dev/kvm",
            "memory_ready" => "VM + RAM",
            "elf_loaded" => "load ELF, page tables",
            "vcpu_ready" => "vCPU, CPUID, registers",
            "first_run" => "→ KVM_RUN",
            "kernel_main" => "enter guest → kernel_main",
            _ => "guest → stop",
        };
        let mut legend_done = std::collections::BTreeSet::new();
        for (x, stack) in stacks.iter().enumerate() {
            let mut y = 0.0;
            for (name, us) in stack {
                let (y0, y1) = (y, y + us / 1000.0);
                y = y1;
                let color = color_of(name);
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(x), y0), (SegmentValue::Exact(x + 1), y1)],
                    color.filled(),
                );
                bar.set_margin(0, 0, 10, 10);
                let series = chart.draw_series(std::iter::once(bar)).map_err(|x| e(&x))?;
                if legend_done.insert(name.clone()) {
                    series
                        .label(label_of(name))
                        .legend(move |(a, b)| Rectangle::new([(a, b - 5), (a + 10, b + 5)], color.filled()));
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;

        // Right: exec → process exit of every configuration (median).
        let whole: Vec<(String, f64)> = self
            .configs
            .iter()
            .zip(self.samples)
            .map(|(c, s)| {
                let v: Vec<f64> = s.iter().map(|x| x.whole_us).collect();
                (c.name.clone(), summary(&v).map_or(0.0, |m| m.1 / 1000.0))
            })
            .collect();
        let wmax = whole.iter().map(|w| w.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&right)
            .caption("exec → process exit, median ms", ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(250)
            .build_cartesian_2d(0f64..wmax, (0..whole.len().max(1) - 1).into_segmented())
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(whole.len())
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => whole.get(*i).map(|w| w.0.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("ms")
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(whole.iter().enumerate().map(|(i, (_, ms))| {
                let mut bar = Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (*ms, SegmentValue::Exact(i + 1))],
                    RGBColor(31, 119, 180).filled(),
                );
                bar.set_margin(6, 6, 0, 0);
                bar
            }))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(whole.iter().enumerate().map(|(i, (_, ms))| {
                Text::new(
                    format!("{ms:.1}"),
                    (*ms + wmax * 0.01, SegmentValue::CenterOf(i)),
                    ("sans-serif", 11),
                )
            }))
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    }
}

fn expected_status(c: &Config) -> i32 {
    match c.kind {
        Kind::Torito => 0,
        // QEMU's isa-debug-exit reports code 0 as 1; Firecracker exits 0.
        Kind::Process if c.name.starts_with("qemu") => 1,
        Kind::Process | Kind::Firecracker => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_that_vary() {
        let a = shuffled(8, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
        assert!((2..10).any(|seed| shuffled(8, seed) != a));
    }

    #[test]
    fn torito_runs_stay_together_in_a_round() {
        let mk = |name: &str, kind| Config { name: name.into(), kind, program: "x".into(), args: vec![] };
        let configs = vec![
            mk("a", Kind::Torito),
            mk("q", Kind::Process),
            mk("b", Kind::Torito),
            mk("f", Kind::Firecracker),
            mk("c", Kind::Torito),
        ];
        for seed in 0..20 {
            let order = round_order(&configs, seed);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
            let pos: Vec<usize> =
                [0, 2, 4].iter().map(|t| order.iter().position(|x| x == t).unwrap()).collect();
            assert_eq!(pos.iter().max().unwrap() - pos.iter().min().unwrap(), 2, "{order:?}");
        }
    }

    #[test]
    fn parses_firecracker_log_times() {
        assert_eq!(parse_utc_ns("1970-01-01T00:00:01.5"), Some(1_500_000_000));
        assert_eq!(parse_utc_ns("2000-03-01T00:00:00.000000000"), Some(951_868_800_000_000_000));
        assert_eq!(parse_utc_ns("2026-11-21T21:04:49.043077183"), Some(1_795_295_089_043_077_183));
        assert_eq!(parse_utc_ns("garbage"), None);
    }

    #[test]
    fn summary_is_min_median_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn segments_cover_the_whole_launch() {
        let mut s = Sample { whole_us: 100.0, ..Default::default() };
        s.events.insert("main".into(), 10.0);
        s.events.insert("kernel_main".into(), 60.0);
        let segs = segments(&s);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs.iter().map(|x| x.2).sum::<f64>(), 100.0);
        assert_eq!((segs[1].0.as_str(), segs[1].1.as_str()), ("main", "kernel_main"));
    }

    #[test]
    fn the_bare_guest_passes_the_monitors_checks() {
        let img = crate::bare::image();
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(img.len(), 0x1400);
    }
}
