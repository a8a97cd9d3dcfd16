//! The appliances section: what `apps/httpd` and `apps/kvstore` deliver to
//! clients nobody here wrote, on our monitor, on QEMU microvm (the same
//! ELF) and against the native servers (nginx, redis-server) on the host
//! side of the same network namespace, one after the other in one run:
//!
//! - httpd: `wrk -t2 -c32 -d10s` on a 612-byte page (the Unikraft EuroSys'21
//!   nginx workload scaled to 2 cores);
//! - kvstore: `redis-benchmark -t get,set -n 100000 -c 30 -d 3 -P 16`
//!   (Unikraft's redis workload);
//! - exits per HTTP request and per Redis command under that load, from the
//!   monitor's timeline (the appliance stops itself after a known count);
//! - cold start to first response: `netload first-byte` spawns the monitor
//!   and connects every 100 µs; spawn → first byte of an HTTP 200, where
//!   the time goes (launch, kernel_main → app main, app main → first byte),
//!   and spawn → monitor reaped (the app stops after that one answer;
//!   the monitor hands its teardown to a keeper process, `--teardown=keeper`,
//!   which netload reaps as their subreaper);
//!   against QEMU microvm (and Firecracker where installed), and
//!   kernel_main → app main with a NIC against hello's, paired. Each start
//!   waits, untimed, until the TAP device is free: the VM before (ours,
//!   QEMU's or Firecracker's) leaves its last close to the kernel, several
//!   milliseconds after its process is reaped, and whoever came next waited
//!   for it inside its launch.
//!
//! With `firecracker` on PATH, the same ELF runs on Firecracker too (its
//! configuration written by `crate::devopts`, as `cargo xtask run
//! --firecracker` does), for the throughputs and the cold start.
//!
//! The guests get 2 vCPUs and 128 MiB. The clients print their own lines.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::report::Verdicts;
use super::{json_number, summary};
use crate::netns::{GUEST, Netns};
use crate::{QemuMachine, Variant};

/// The guest's MAC on both monitors (so the namespace can know it ahead:
/// a cold-start client must not wait for ARP).
const MAC: &str = "06:54:52:54:4f:00";
/// Cold starts per configuration (9 until 2026-12-04: this host's hour-to-hour
/// spread moved a median of 9 by up to ~0.5 ms).
const COLD_RUNS: usize = 15;

/// A way to run a guest ELF with a NIC on `tap0`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Torito,
    Qemu,
    Firecracker,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Torito => "torito",
            Vmm::Qemu => "qemu microvm",
            Vmm::Firecracker => "firecracker",
        }
    }
}

/// Firecracker configuration files written so far (each run gets its own).
static FC_CONFIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The command line running `elf` with `args` on `vmm` (2 vCPUs, 128 MiB,
/// NIC on tap0), and extra monitor flags for ours. Firecracker's
/// configuration file and log go to `dir`.
fn argv(vmm: Vmm, monitor: &Path, elf: &Path, args: &str, extra: &[&str], dir: &Path) -> Vec<String> {
    match vmm {
        Vmm::Firecracker => {
            let n = FC_CONFIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (cfg, log) =
                (dir.join(format!("firecracker-{n}.json")), dir.join(format!("firecracker-{n}.log")));
            let devices = crate::devopts::Devices {
                mem_mib: 128,
                cpus: 2,
                nics: vec![crate::devopts::Nic { tap: "tap0".into(), mac: Some(MAC.into()) }],
                ..Default::default()
            };
            let json = crate::devopts::firecracker_config(elf, args, &devices).unwrap_or_default();
            let _ = std::fs::write(&cfg, json);
            let _ = std::fs::write(&log, "");
            ["firecracker", "--no-api", "--config-file", &cfg.display().to_string()]
                .into_iter()
                .map(String::from)
                .chain(["--log-path".to_string(), log.display().to_string()])
                .collect()
        }
        Vmm::Torito => {
            let mut v = vec![monitor.display().to_string()];
            v.extend(["--cpus", "2", "--mem", "128M", "--net", "tap=tap0"].map(String::from));
            v.extend(extra.iter().map(|s| s.to_string()));
            v.push(elf.display().to_string());
            v.push("--".into());
            v.extend(args.split(' ').map(String::from));
            v
        }
        Vmm::Qemu => {
            let q = crate::qemu(QemuMachine::MicrovmKvm, elf, args);
            let mut v: Vec<String> = std::iter::once(q.get_program().to_string_lossy().into_owned())
                .chain(q.get_args().map(|a| a.to_string_lossy().into_owned()))
                .collect();
            v.extend(["-smp", "2", "-machine", "acpi=off"].map(String::from));
            v.extend(
                ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device"].map(String::from),
            );
            v.push(format!("virtio-net-device,netdev=n0,mac={MAC}"));
            v
        }
    }
}

/// Start `argv` in `ns`, in a process group of its own.
fn start(ns: &Netns, argv: &[String]) -> Result<crate::group::GroupChild, String> {
    let mut c = ns.exec("timeout");
    c.arg("120").args(argv).stdout(Stdio::null()).stderr(Stdio::piped());
    crate::group::spawn(&mut c).map_err(|e| format!("{}: {e}", argv[0]))
}

/// Wait until `probe` succeeds (10 s at most).
fn ready(probe: impl Fn() -> bool) -> bool {
    crate::testing::poll(Duration::from_secs(10), probe)
}

fn http_ok(ns: &Netns, url: &str) -> bool {
    ns.exec("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url])
        .output()
        .is_ok_and(|o| o.stdout == b"200")
}

fn pong(ns: &Netns, host: &str, port: &str) -> bool {
    ns.exec("redis-cli")
        .args(["-h", host, "-p", port, "PING"])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
}

/// Run the section; targets into `v`.
pub fn run(monitor: &Path, out: &Path, v: &mut Verdicts) -> Result<(), String> {
    println!("\nappliances (httpd with wrk, kvstore with redis-benchmark, cold start to first response):");
    let tools = ["ip", "curl", "wrk", "redis-cli", "redis-benchmark"];
    if let Some(t) = tools.iter().find(|t| !crate::have(t)) {
        println!("  skipped: `{t}` is not installed");
        return Ok(());
    }
    if !crate::kvm_usable() {
        println!("  skipped: /dev/kvm is not usable");
        return Ok(());
    }
    let Some(ns) = Netns::create("bench-app") else {
        println!("  skipped: cannot create a network namespace (needs root)");
        return Ok(());
    };
    if !ns.know_guest(MAC) {
        return Err("cannot add the guest's neighbour entry".into());
    }
    let dir = out.join("appliances");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
    // 612 bytes, like nginx's default index page.
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>Torito</title></head><body>\n{}\n</body></html>\n",
        "x".repeat(548)
    );
    std::fs::write(www.join("index.html"), &page[..612]).map_err(|e| e.to_string())?;
    let pvh = Variant { pvh_only: true, ..Default::default() };
    let httpd = crate::build_with_files("httpd", pvh, &www, &dir.join("httpd.elf"))?;
    let kvstore = crate::build("kvstore", pvh)?;
    let mut vmms = vec![Vmm::Torito];
    if crate::have("qemu-system-x86_64") {
        vmms.push(Vmm::Qemu);
    }
    if crate::have("firecracker") {
        vmms.push(Vmm::Firecracker);
    }
    let ip = "torito.ip=10.0.2.15/24";

    // httpd under wrk.
    let mut rps: Vec<(&str, f64)> = Vec::new();
    for &vmm in &vmms {
        let vm = start(&ns, &argv(vmm, monitor, &httpd, &format!("{ip} root=/"), &[], &dir))?;
        if !ready(|| http_ok(&ns, &format!("http://{GUEST}/"))) {
            println!("  {}: httpd never answered", vmm.name());
            continue;
        }
        rps.extend(wrk(&ns, vmm.name(), &format!("http://{GUEST}/")).map(|r| (vmm.name(), r)));
        vm.kill();
    }
    if crate::have("nginx") {
        match nginx(&ns, &dir, &www) {
            Ok(server) => {
                if ready(|| http_ok(&ns, "http://10.0.2.1:8080/")) {
                    rps.extend(wrk(&ns, "nginx (native)", "http://10.0.2.1:8080/").map(|r| ("nginx", r)));
                }
                server.kill();
            }
            Err(e) => println!("  nginx: {e}"),
        }
    }
    ratios(v, "httpd, wrk requests/s", &rps, Some(2.0), "nginx", None);

    // kvstore under redis-benchmark.
    let mut ops: Vec<(&str, f64)> = Vec::new();
    for &vmm in &vmms {
        let vm = start(&ns, &argv(vmm, monitor, &kvstore, ip, &[], &dir))?;
        if !ready(|| pong(&ns, GUEST, "6379")) {
            println!("  {}: kvstore never answered", vmm.name());
            continue;
        }
        ops.extend(redis_bench(&ns, vmm.name(), GUEST, "6379").map(|r| (vmm.name(), r)));
        vm.kill();
    }
    if crate::have("redis-server") {
        let mut c = ns.exec("redis-server");
        c.args(["--bind", "10.0.2.1", "--port", "6380", "--save", "", "--appendonly", "no"]);
        c.args(["--protected-mode", "no", "--daemonize", "no", "--dir"]).arg(&dir);
        match crate::group::spawn(c.stdout(Stdio::null()).stderr(Stdio::null())) {
            Ok(server) => {
                if ready(|| pong(&ns, "10.0.2.1", "6380")) {
                    ops.extend(
                        redis_bench(&ns, "redis-server (native)", "10.0.2.1", "6380").map(|r| ("redis", r)),
                    );
                }
                server.kill();
            }
            Err(e) => println!("  redis-server: {e}"),
        }
    }
    ratios(v, "kvstore, redis-benchmark GET+SET/s", &ops, Some(2.0), "redis", Some(0.5));

    exits_per_request(&ns, monitor, &httpd, &kvstore, v, &dir)?;
    cold_start(&ns, monitor, &httpd, &vmms, v, &dir)
}

/// `wrk -t2 -c32 -d10s URL`: its lines printed (errors pointed out),
/// requests/s returned.
fn wrk(ns: &Netns, name: &str, url: &str) -> Option<f64> {
    let out = ns.exec("wrk").args(["-t2", "-c32", "-d10s", url]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("  {name}: wrk -t2 -c32 -d10s {url}");
    for l in text.lines() {
        println!("    {l}");
    }
    if text.contains("Socket errors") || text.contains("Non-2xx") {
        println!("    ^ {name} had errors (counted all the same; the tests hold ours to none)");
    }
    text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|n| n.trim().parse().ok())
}

/// redis-benchmark of the issue's workload: its lines printed, the mean
/// of its SET and GET rates returned.
fn redis_bench(ns: &Netns, name: &str, host: &str, port: &str) -> Option<f64> {
    let out = ns
        .exec("redis-benchmark")
        .args([
            "-h", host, "-p", port, "-t", "get,set", "-n", "100000", "-c", "30", "-d", "3", "-P", "16", "-q",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    println!("  {name}: redis-benchmark -t get,set -n 100000 -c 30 -d 3 -P 16 -q");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("requests per second")).collect();
    for l in &lines {
        println!("    {}", l.trim());
    }
    let rates: Vec<f64> =
        lines.iter().filter_map(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    (rates.len() == 2).then(|| (rates[0] + rates[1]) / 2.0)
}

/// Same-run ratios of `figures`: ours against QEMU (target `vs_qemu`) and
/// against the native server `native` (target `vs_native`, else a note).
fn ratios(
    v: &mut Verdicts,
    what: &str,
    figures: &[(&str, f64)],
    vs_qemu: Option<f64>,
    native: &str,
    vs_native: Option<f64>,
) {
    let of = |n: &str| figures.iter().find(|f| f.0 == n).map(|f| f.1);
    let Some(ours) = of("torito") else {
        v.check(false, format!("{what}: no figure from our monitor"));
        return;
    };
    match (of("qemu microvm"), vs_qemu) {
        (Some(q), Some(goal)) => v.check(
            ours / q >= goal,
            format!("{what}: torito / qemu microvm = {:.2}× (goal ≥ {goal}×; {ours:.0} vs {q:.0})", ours / q),
        ),
        _ => v.note(format!("{what}: no QEMU figure ({ours:.0} on ours)")),
    }
    if let Some(f) = of("firecracker") {
        v.note(format!("{what}: torito / firecracker = {:.2}× ({ours:.0} vs {f:.0})", ours / f));
    }
    match (of(native), vs_native) {
        (Some(n), Some(goal)) => v.check(
            ours / n >= goal,
            format!("{what}: torito / native {native} = {:.2}× (goal ≥ {goal}×; {n:.0} native)", ours / n),
        ),
        (Some(n), None) => {
            v.note(format!("{what}: torito / native {native} = {:.2}× ({n:.0} native)", ours / n))
        }
        (None, _) => v.note(format!("{what}: native {native} not measured")),
    }
}

/// nginx serving `www` on 10.0.2.1:8080 in `ns` (2 workers, no log).
fn nginx(ns: &Netns, dir: &Path, www: &Path) -> Result<crate::group::GroupChild, String> {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    let text = format!(
        "daemon off; master_process on; worker_processes 2; user root; pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; keepalive_requests 1000000;\n\
           client_body_temp_path {d}/nginx-tmp; proxy_temp_path {d}/nginx-tmp;\n\
           fastcgi_temp_path {d}/nginx-tmp; uwsgi_temp_path {d}/nginx-tmp; scgi_temp_path {d}/nginx-tmp;\n\
           server {{ listen 10.0.2.1:8080; root {}; }} }}\n",
        www.display()
    );
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let mut c = ns.exec("nginx");
    c.arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
    crate::group::spawn(&mut c).map_err(|e| e.to_string())
}

/// The monitor's `--timeline=json` line among `stderr`'s lines.
fn timeline(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with("{\"time_zero\""))
}

/// The `"us"` of the timeline event `name`.
fn event_us(json: &str, name: &str) -> Option<f64> {
    let key = format!("\"name\":\"{name}\",\"us\":");
    let i = json.find(&key)? + key.len();
    json[i..].split([',', '}']).next()?.parse().ok()
}

/// Exits per request under load, from the timeline of a run the app ends
/// itself: httpd after 20,000 responses to wrk -c32; kvstore at SHUTDOWN
/// after redis-benchmark's 200,000 commands.
fn exits_per_request(
    ns: &Netns,
    monitor: &Path,
    httpd: &Path,
    kvstore: &Path,
    v: &mut Verdicts,
    dir: &Path,
) -> Result<(), String> {
    let n = 20_000;
    let args = format!("torito.ip=10.0.2.15/24 root=/ requests={n}");
    let vm = start(ns, &argv(Vmm::Torito, monitor, httpd, &args, &["--timeline=json"], dir))?;
    if ready(|| http_ok(ns, &format!("http://{GUEST}/"))) {
        let mut load = ns.exec("wrk");
        load.args(["-t2", "-c32", "-d60s", &format!("http://{GUEST}/")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let load = crate::group::spawn(&mut load).map_err(|e| e.to_string())?;
        let out = vm.wait_with_output().map_err(|e| e.to_string())?;
        load.kill();
        let err = String::from_utf8_lossy(&out.stderr);
        match timeline(&err).and_then(|j| json_number(j, "exits").map(|e| (e, json_number(j, "mmio_exits"))))
        {
            Some((exits, mmio)) => v.note(format!(
                "httpd: {:.2} exits per request ({:.2} MMIO) over {n} responses to wrk -c32, boot included",
                exits as f64 / n as f64,
                mmio.unwrap_or(0) as f64 / n as f64
            )),
            None => v.note("httpd: no timeline: exits per request not measured".into()),
        }
    }
    let vm =
        start(ns, &argv(Vmm::Torito, monitor, kvstore, "torito.ip=10.0.2.15/24", &["--timeline=json"], dir))?;
    if ready(|| pong(ns, GUEST, "6379")) {
        let _ = ns
            .exec("redis-benchmark")
            .args(["-h", GUEST, "-t", "get,set", "-n", "100000", "-c", "30", "-d", "3", "-P", "16", "-q"])
            .output();
        let _ = ns.exec("timeout").args(["10", "redis-cli", "-h", GUEST, "SHUTDOWN"]).output();
        let out = vm.wait_with_output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        match timeline(&err).and_then(|j| json_number(j, "exits")) {
            Some(exits) => v.note(format!(
                "kvstore: {:.3} exits per command over 200,000 commands (redis-benchmark -c 30 -P 16), boot included",
                exits as f64 / 200_000.0
            )),
            None => v.note("kvstore: no timeline: exits per command not measured".into()),
        }
    }
    Ok(())
}

/// The kernel's unit milestones between `kernel_main` and app main, in
/// the order `kernel/src/init.rs` brings the units up, and how the
/// report names each step.
const UNITS: [(&str, &str); 5] = [
    ("memory_unit", "memory unit up"),
    ("process_unit", "process unit up (timers, cores)"),
    ("devices_unit", "devices unit up (the NIC)"),
    ("fs_unit", "filesystem unit up"),
    ("net_unit", "network unit up"),
];

/// One `netload first-byte` run.
struct ColdStart {
    /// Spawn → first byte of the answer, µs.
    first_byte: f64,
    /// Spawn → the monitor reaped, µs (`None`: it had to be killed).
    reaped: Option<f64>,
    /// The monitor's keeper (`--teardown=keeper`), reaped by netload as
    /// its subreaper: spawn → reaped, µs.
    keeper: Option<f64>,
    /// The monitor's JSON timeline.
    timeline: Option<String>,
}

fn first_byte(ns: &Netns, netload: &Path, argv: &[String]) -> Option<ColdStart> {
    let out = ns
        .exec(&netload.display().to_string())
        .args([&format!("{GUEST}:80"), "first-byte", "http", "--tap", "tap0", "--"])
        .args(argv)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("first-byte:"))?;
    let num = |key: &str| line.split(key).nth(1)?.split_whitespace().next()?.parse::<f64>().ok();
    let err = String::from_utf8_lossy(&out.stderr);
    let keeper = line
        .split("torito-exit reaped at ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    Some(ColdStart {
        first_byte: num("first-byte: ")?,
        reaped: num("reaped: "),
        keeper,
        timeline: timeline(&err).map(String::from),
    })
}

/// Cold start to first response, ours against QEMU (and Firecracker),
/// interleaved; kernel_main → app main with the NIC against hello's.
fn cold_start(
    ns: &Netns,
    monitor: &Path,
    httpd: &Path,
    vmms: &[Vmm],
    v: &mut Verdicts,
    dir: &Path,
) -> Result<(), String> {
    let netload = crate::build_netload()?;
    let hello = crate::build("hello", Variant { pvh_only: true, ..Default::default() })?;
    let args = "torito.ip=10.0.2.15/24 root=/ requests=1";
    let mut first: Vec<Vec<f64>> = vec![Vec::new(); vmms.len()];
    let (mut reaped, mut launch, mut kmain, mut to_first, mut stopped, mut after_stop) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // app main → listening → first accept → first byte (the guest's
    // milestones, where its kernel records them).
    let (mut to_listen, mut to_accept, mut to_byte) = (vec![], vec![], vec![]);
    // kernel_main → app main, unit by unit (each unit's end is a milestone).
    let mut units: Vec<Vec<f64>> = vec![Vec::new(); UNITS.len()];
    let mut hello_kmain = Vec::new();
    let (mut keeper_after, mut stop_to_exit) = (vec![], vec![]);
    for _ in 0..COLD_RUNS {
        for (i, &vmm) in vmms.iter().enumerate() {
            // The keeper, as where orphans are reaped: netload, its
            // subreaper, reaps it (this container's PID 1 would not).
            // The events alone: the figures' collection (~0.1 ms) would
            // come between the guest's stop and the exit measured here.
            let extra: &[&str] =
                if vmm == Vmm::Torito { &["--timeline=json-events", "--teardown=keeper"] } else { &[] };
            let Some(ColdStart { first_byte: fb, reaped: r, keeper, timeline: tl }) =
                first_byte(ns, &netload, &argv(vmm, monitor, httpd, args, extra, dir))
            else {
                println!("  {}: a cold start failed", vmm.name());
                continue;
            };
            first[i].push(fb);
            if vmm == Vmm::Torito {
                reaped.extend(r);
                if let (Some(k), Some(r)) = (keeper, r) {
                    keeper_after.push(k - r);
                }
                if let Some(tl) = tl {
                    let (k, a, s) = (
                        event_us(&tl, "kernel_main"),
                        event_us(&tl, "app_main"),
                        event_us(&tl, "guest_stopped"),
                    );
                    if let (Some(k), Some(a), Some(s)) = (k, a, s) {
                        launch.push(k);
                        kmain.push(a - k);
                        let mut prev = k;
                        for (i, (name, _)) in UNITS.iter().enumerate() {
                            if let Some(t) = event_us(&tl, name) {
                                units[i].push(t - prev);
                                prev = t;
                            }
                        }
                        to_first.push(fb - a);
                        stopped.push(s);
                        // Paired: this run's reaped − this run's stop.
                        after_stop.extend(r.map(|r| r - s));
                        // Of which the monitor's steps up to its last
                        // timeline mark (joins, disks, the timeline's own
                        // figures, which a run without it does not collect).
                        if let Some(e) = event_us(&tl, "process_exit") {
                            stop_to_exit.push(e - s);
                        }
                        if let (Some(l), Some(f)) =
                            (event_us(&tl, "listening"), event_us(&tl, "first_accept"))
                        {
                            to_listen.push(l - a);
                            to_accept.push(f - l);
                            to_byte.push(fb - f);
                        }
                    }
                }
            }
        }
        // hello on the same monitor, for kernel_main → app main without a NIC.
        let out = Command::new(monitor)
            .args(["--cpus", "2", "--mem", "128M", "--timeline=json"])
            .arg(&hello)
            .output();
        if let Ok(o) = out
            && let Some(tl) = timeline(&String::from_utf8_lossy(&o.stderr))
            && let (Some(k), Some(a)) = (event_us(tl, "kernel_main"), event_us(tl, "app_main"))
        {
            hello_kmain.push(a - k);
        }
    }
    let med = |x: &[f64]| summary(x).map_or(f64::NAN, |s| s.1);
    let show =
        |x: &[f64]| summary(x).map_or("-".into(), |(a, b, c)| format!("{b:.0} µs (min {a:.0}, max {c:.0})"));
    println!(
        "  cold start to first response (spawn → first byte of HTTP 200; {COLD_RUNS} runs each, interleaved):"
    );
    for (i, vmm) in vmms.iter().enumerate() {
        println!("    {:<13} {}", vmm.name(), show(&first[i]));
    }
    println!("    torito, where the time goes: spawn → kernel_main {}", show(&launch));
    println!(
        "                                 kernel_main → app main {} (hello: {})",
        show(&kmain),
        show(&hello_kmain)
    );
    for ((_, what), x) in UNITS.iter().zip(&units) {
        if !x.is_empty() {
            println!("                                   → {what}: {}", show(x));
        }
    }
    println!("                                 app main → first byte {}", show(&to_first));
    if !to_listen.is_empty() {
        println!("                                   app main → listening {}", show(&to_listen));
        println!(
            "                                   listening → first connection accepted {}",
            show(&to_accept)
        );
        println!("                                   accepted → first byte at the client {}", show(&to_byte));
    }
    println!(
        "                                 spawn → guest stopped {}; spawn → monitor reaped {}",
        show(&stopped),
        show(&reaped)
    );
    let ours = med(&first[0]);
    v.note(format!(
        "cold start to first response on ours: {ours:.0} µs median (goal on this host ≤ 3,000 µs)"
    ));
    if let Some(i) = vmms.iter().position(|&m| m == Vmm::Qemu) {
        let q = med(&first[i]);
        v.check(
            q / ours >= 15.0,
            format!("cold start to first response: qemu microvm / torito = {:.1}× (goal ≥ 15×)", q / ours),
        );
    }
    match vmms.iter().position(|&m| m == Vmm::Firecracker) {
        Some(i) => v.check(
            med(&first[i]) / ours >= 5.0,
            format!(
                "cold start to first response: firecracker / torito = {:.1}× (goal ≥ 5×; {:.0} vs {ours:.0} µs)",
                med(&first[i]) / ours,
                med(&first[i])
            ),
        ),
        None => v.note("cold start on Firecracker: not measured (no `firecracker` on PATH)".into()),
    }
    let (k, h) = (med(&kmain), med(&hello_kmain));
    v.check(
        k / h <= 3.0,
        format!(
            "kernel_main → app main, NIC appliance / hello = {:.1}× (goal ≤ 3×; {k:.0} vs {h:.0} µs)",
            k / h
        ),
    );
    println!(
        "                                 guest stopped → the monitor's last mark {} (then its exit)",
        show(&stop_to_exit)
    );
    println!("                                 its keeper reaped after the monitor {}", show(&keeper_after));
    if !keeper_after.is_empty() {
        let k = summary(&keeper_after).map_or(f64::NAN, |s| s.2);
        v.check(
            keeper_after.len() == reaped.len() && k <= 50_000.0,
            format!(
                "the keeper of each run reaped within 50 ms of its monitor ({} of {}; at most {k:.0} µs after)",
                keeper_after.len(),
                reaped.len()
            ),
        );
    }
    let gap = med(&after_stop);
    let (lo, hi) = summary(&after_stop).map_or((f64::NAN, f64::NAN), |(a, _, c)| (a, c));
    v.check(
        gap <= 150.0,
        format!(
            "spawn → reaped minus spawn → guest stopped = {gap:.0} µs (goal ≤ 150 µs; paired median, min {lo:.0}, max {hi:.0})"
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timeline_events() {
        let j = r#"{"time_zero":"launch","events":[{"name":"main","us":255.713,"side":"host"},{"name":"kernel_main","us":1634.858,"side":"guest"}]}"#;
        assert_eq!(super::event_us(j, "kernel_main"), Some(1634.858));
        assert_eq!(super::event_us(j, "main"), Some(255.713));
        assert_eq!(super::event_us(j, "app_main"), None);
        assert_eq!(super::timeline(&format!("noise\n{j}\n")), Some(j));
    }
}
