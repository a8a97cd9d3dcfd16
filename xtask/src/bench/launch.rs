//! The launch section: every launch is a fresh process with a fresh VM.
//! Time zero is this launcher's `CLOCK_MONOTONIC` just before it spawns
//! the monitor; the Torito monitor receives it in `TORITO_LAUNCH_NS` and
//! reports its phases, the guest's milestones and the vCPU's KVM counters
//! on that clock (`--timeline=json`). Other monitors are timed as whole
//! processes running a `profile-boot` ELF, which exits at the first line of
//! `kernel_main`.
//!
//! Configurations run interleaved (A B C … A B C …) after warm-up rounds,
//! so drift hits all alike; ratios are taken round by round.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{Options, summary};
use crate::{QemuMachine, Variant};

/// What the launch rounds measured.
pub struct Launch {
    /// The configurations.
    pub configs: Vec<Config>,
    /// Their samples, counted rounds only, in the same order.
    pub samples: Vec<Vec<Sample>>,
    /// Counted rounds.
    pub runs: usize,
    /// Warm-up rounds.
    pub warmup: usize,
    /// What was left out and why.
    pub notes: Vec<String>,
    /// exec → kernel_main with a NIC / without, paired runs (min, median, max).
    pub nic_ratio: Option<(f64, f64, f64)>,
    /// exec → kernel_main with the seccomp filters − without, paired runs
    /// (µs: min, median, max).
    pub seccomp_cost: Option<(f64, f64, f64)>,
    /// The hello ELF (its size is a target).
    pub hello: PathBuf,
}

/// How a configuration is timed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The Torito monitor with `--timeline=json`.
    Torito,
    /// Any process, timed whole.
    Process,
    /// Firecracker with `--boot-timer`: also its boot-timer log line.
    Firecracker,
}

/// One configuration: a command launched again and again.
#[derive(Clone)]
pub struct Config {
    /// Its name in the report.
    pub name: String,
    /// How it is timed.
    pub kind: Kind,
    program: PathBuf,
    args: Vec<OsString>,
}

/// One launch's figures.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Spawn to reaped, µs.
    pub whole_us: f64,
    /// Events in µs since spawn (Torito only).
    pub events: BTreeMap<String, f64>,
    /// The vCPU's KVM statistics (Torito only).
    pub stats: BTreeMap<String, u64>,
    /// Returns from `KVM_RUN` (Torito only).
    pub kvm_runs: u64,
    /// Guest RAM resident when it stopped, KiB (Torito only).
    pub touched_kib: Option<u64>,
    /// The monitor's peak RSS, KiB.
    pub maxrss_kib: u64,
    /// Exit status.
    pub status: i32,
}

impl Sample {
    /// The event `name`, µs since spawn.
    pub fn event(&self, name: &str) -> Option<f64> {
        self.events.get(name).copied()
    }

    /// The vCPU statistic `name`.
    pub fn stat(&self, name: &str) -> Option<f64> {
        self.stats.get(name).map(|&v| v as f64)
    }
}

use crate::mono_ns as now_ns;

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

/// Launch `c` once and collect its figures.
pub fn launch(c: &Config) -> Result<Sample, String> {
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

/// Host and guest points of a Torito launch, in order.
pub const POINTS: [&str; 11] = [
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
pub fn segments(s: &Sample) -> Vec<(String, String, f64)> {
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

/// What the launch configurations need besides the monitor.
struct Guests<'a> {
    hello: &'a Path,
    hello_profile: &'a Path,
    bare: &'a Path,
    disk: &'a Path,
    share: &'a Path,
    fscheck: &'a Path,
    fscheck_baked: &'a Path,
}

fn torito_configs(monitor: &Path, g: &Guests<'_>) -> Vec<Config> {
    let Guests { hello, hello_profile, bare, disk, .. } = *g;
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
        // The cost of attaching a share (the monitor opens the directory
        // and makes the device; the guest does not probe it).
        Config {
            name: SHARE.into(),
            kind: Kind::Torito,
            program: monitor.to_path_buf(),
            args: vec![
                "--timeline=json".into(),
                "--share".into(),
                format!("{},tag=s", g.share.display()).into(),
                hello_profile.into(),
            ],
        },
        // Baked-in files cost nothing until read: the same appliance with
        // 4 MiB of files and without, listing `/` and reading nothing.
        fscheck(monitor, FSCHECK, g.fscheck),
        fscheck(monitor, FSCHECK_BAKED, g.fscheck_baked),
    ]
}

/// `fscheck small=/ files=0` (list `/`, read nothing) on our monitor.
fn fscheck(monitor: &Path, name: &str, elf: &Path) -> Config {
    Config {
        name: name.into(),
        kind: Kind::Torito,
        program: monitor.to_path_buf(),
        args: vec!["--timeline=json".into(), elf.into(), "--".into(), "small=/".into(), "files=0".into()],
    }
}

/// Configuration names the report looks up.
pub const SHARE: &str = "torito hello profile-boot + share";
/// fscheck without baked-in files.
pub const FSCHECK: &str = "torito fscheck, no files";
/// fscheck with 4 MiB of baked-in files.
pub const FSCHECK_BAKED: &str = "torito fscheck, 4 MiB baked in";

/// Run the launch rounds on `monitor`, then the NIC pairs.
pub fn run(monitor: &Path, opts: &Options) -> Result<Launch, String> {
    eprintln!("bench: building the guests");
    let hello = crate::build("hello", Variant::default())?;
    let hello_profile = crate::build("hello", Variant { profile_boot: true, ..Default::default() })?;
    let hello_profile_pvh =
        crate::build("hello", Variant { profile_boot: true, pvh_only: true, ..Default::default() })?;
    let bare = crate::bare::write(&opts.out).map_err(|e| format!("writing the bare guest: {e}"))?;

    let disk = opts.out.join("disk-1M.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).map_err(|e| format!("{}: {e}", disk.display()))?;
    let share = opts.out.join("share-launch");
    std::fs::create_dir_all(&share).map_err(|e| format!("{}: {e}", share.display()))?;
    // 4 MiB of files to bake in (pseudo-random, so nothing compresses).
    let baked = opts.out.join("baked-4M");
    std::fs::create_dir_all(&baked).map_err(|e| format!("{}: {e}", baked.display()))?;
    let blob = crate::noise(4 << 20, 0x9e37_79b9_7f4a_7c15);
    // Written once: a new file would rebuild the appliance every run.
    if std::fs::metadata(baked.join("blob")).map_or(true, |m| m.len() != blob.len() as u64) {
        std::fs::write(baked.join("blob"), blob).map_err(|e| format!("{}: {e}", baked.display()))?;
    }
    let fscheck = crate::build("fscheck", Variant::default())?;
    let fscheck_baked =
        crate::build_with_files("fscheck", Variant::default(), &baked, &opts.out.join("fscheck-baked-4M"))?;
    let guests = Guests {
        hello: &hello,
        hello_profile: &hello_profile,
        bare: &bare,
        disk: &disk,
        share: &share,
        fscheck: &fscheck,
        fscheck_baked: &fscheck_baked,
    };
    let mut configs = torito_configs(monitor, &guests);
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
        program: monitor.to_path_buf(),
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

    // The TAP device goes whatever happens to the launches.
    let measured = rounds(&configs, nic.as_ref(), opts);
    if nic.is_some() {
        // Deleting it while the kernel still holds it would fail (EBUSY).
        crate::netns::wait_for_tap(&tap, std::time::Duration::from_secs(1));
        ip(&["tuntap", "del", "dev", &tap, "mode", "tap"]);
    }
    let (samples, nic_ratio) = measured?;
    let seccomp_cost = seccomp_pairs(&configs[0], opts)?;
    Ok(Launch {
        configs,
        samples,
        runs: opts.runs,
        warmup: opts.warmup,
        notes,
        nic_ratio,
        seccomp_cost,
        hello,
    })
}

/// The shuffled rounds, then the NIC's pairs: every configuration's
/// samples, and the paired ratio with a NIC / without.
#[allow(clippy::type_complexity)]
fn rounds(
    configs: &[Config],
    nic: Option<&Config>,
    opts: &Options,
) -> Result<(Vec<Vec<Sample>>, Option<(f64, f64, f64)>), String> {
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
        for i in round_order(configs, round as u64) {
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
    // in alternating order; the ratio of each pair.
    let mut nic_ratio = None;
    if let Some(nic) = nic {
        let base = &configs[0];
        let km = |s: &Sample| s.event("kernel_main");
        let mut r = Vec::new();
        // The last NIC launch's TAP device is released by the kernel some
        // milliseconds after its monitor exited (`vstate::Farewell`; ~8 ms
        // on the Intel host, 2026-12-04): waited for before each NIC
        // launch, so that the pair measures attaching, not that wait.
        let tap = |c: &Config| {
            if let Some(name) = c.args.iter().find_map(|a| a.to_str()?.strip_prefix("tap=")) {
                crate::netns::wait_for_tap(name, std::time::Duration::from_secs(1));
            }
        };
        for round in 0..opts.runs + opts.warmup {
            let (a, b) = if round % 2 == 0 {
                let a = launch(base)?;
                tap(nic);
                (a, launch(nic)?)
            } else {
                tap(nic);
                let n = launch(nic)?;
                (launch(base)?, n)
            };
            if round >= opts.warmup
                && let (Some(x), Some(y)) = (km(&a), km(&b))
            {
                r.push(y / x);
            }
        }
        nic_ratio = summary(&r);
    }
    Ok((samples, nic_ratio))
}

/// Pairs per counted run for the seccomp figure: its effect (tens of µs)
/// is smaller than this host's run-to-run noise (hundreds), so one median
/// of 30 pairs moved by ±50 µs between runs; 240 pairs take a few seconds.
const SECCOMP_PAIRS_PER_RUN: usize = 8;

/// What the seccomp filters cost the launch: pairs of (`base`, the same
/// with `--no-seccomp`), in alternating order; each pair's difference of
/// exec → kernel_main, in µs.
fn seccomp_pairs(base: &Config, opts: &Options) -> Result<Option<(f64, f64, f64)>, String> {
    let mut off = base.clone();
    off.name = format!("{} --no-seccomp", base.name);
    off.args.insert(0, "--no-seccomp".into());
    let km = |s: &Sample| s.event("kernel_main");
    let mut d = Vec::new();
    for round in 0..opts.runs * SECCOMP_PAIRS_PER_RUN + opts.warmup {
        let (on, without) = if round % 2 == 0 {
            (launch(base)?, launch(&off)?)
        } else {
            let o = launch(&off)?;
            (launch(base)?, o)
        };
        if round >= opts.warmup
            && let (Some(x), Some(y)) = (km(&on), km(&without))
        {
            d.push(x - y);
        }
    }
    Ok(summary(&d))
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

/// The exit status a healthy run of `c` has.
pub fn expected_status(c: &Config) -> i32 {
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
