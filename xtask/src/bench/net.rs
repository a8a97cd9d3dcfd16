//! The network section: `apps/echo` behind a TAP device in a network
//! namespace made for the run, driven by `netload` (stream, request/
//! response with 1 and 64 connections), on our monitor, QEMU microvm and
//! (when on PATH) Firecracker side by side. Needs root; skipped otherwise.

use std::path::Path;
use std::process::{Command, Stdio};

use super::report::Verdicts;
use crate::{QemuMachine, Variant};

/// Network figures (`apps/echo` and the `netload` client): TCP stream
/// throughput and request/response rates with 1 and 64 connections, on our
/// monitor and QEMU microvm, through a TAP device in a network namespace
/// made for the run (needs root; skipped otherwise).
pub fn run(monitor: &Path, v: &mut Verdicts) -> Result<(), String> {
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
        // Each load gets a fresh guest told how many connections it will
        // serve (`conns=`), which then stops: our monitor's timeline gives
        // the exits of that load alone (boot included).
        let loads: [(&[&str], u32); 3] =
            [(&["stream", "3"], 1), (&["rr", "1", "2"], 1), (&["rr", "64", "2"], 64)];
        let argv_of = |name: &str, conns: u32| -> Result<Vec<String>, String> {
            let mut args = format!("{args} conns={conns}");
            // The same guest, told to negotiate no offloads (checksums and
            // segmentation in smoltcp, every frame ≤ 1,514 bytes): what the
            // offloads bring, side by side.
            if name == NO_OFFLOADS {
                args.push_str(" net.offload=off");
            }
            if name.starts_with("torito") {
                return Ok([
                    monitor.display().to_string(),
                    "--timeline=json".into(),
                    "--net".into(),
                    "tap=tap0".into(),
                ]
                .into_iter()
                .chain([echo.display().to_string(), "--".into()])
                .chain(args.split(' ').map(String::from))
                .collect());
            }
            let pvh = crate::build("echo", Variant { pvh_only: true, ..Default::default() })?;
            if name == "firecracker" {
                // Its configuration file, as `cargo xtask run --firecracker`
                // writes it: 1 vCPU and 128 MiB like the others.
                let devices = crate::devopts::Devices {
                    mem_mib: 128,
                    cpus: 1,
                    nics: vec![crate::devopts::Nic { tap: "tap0".into(), mac: None }],
                    ..Default::default()
                };
                let dir = std::env::temp_dir();
                let cfg = dir.join(format!("torito-bench-fc-{}-{conns}.json", std::process::id()));
                let log = dir.join(format!("torito-bench-fc-{}-{conns}.log", std::process::id()));
                std::fs::write(&cfg, crate::devopts::firecracker_config(&pvh, &args, &devices)?)
                    .and_then(|()| std::fs::write(&log, ""))
                    .map_err(|e| format!("{}: {e}", cfg.display()))?;
                return Ok(["firecracker", "--no-api", "--config-file"]
                    .map(String::from)
                    .into_iter()
                    .chain([cfg.display().to_string(), "--log-path".into(), log.display().to_string()])
                    .collect());
            }
            let q = crate::qemu(QemuMachine::MicrovmKvm, &pvh, &args);
            let mut v: Vec<String> = std::iter::once(q.get_program().to_string_lossy().into_owned())
                .chain(q.get_args().map(|a| a.to_string_lossy().into_owned()))
                .collect();
            v.extend(
                ["-machine", "acpi=off", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]
                    .map(String::from),
            );
            v.extend(["-device", "virtio-net-device,netdev=n0"].map(String::from));
            Ok(v)
        };
        let mut hosts = vec!["torito", NO_OFFLOADS];
        if crate::have("qemu-system-x86_64") && crate::kvm_usable() {
            hosts.push("qemu microvm");
        }
        if crate::have("firecracker") && crate::kvm_usable() {
            hosts.push("firecracker");
        }
        let mut figures: Vec<(&str, usize, f64)> = Vec::new();
        let mut exits_per: [Option<f64>; 3] = [None; 3];
        for name in hosts {
            for (k, (load, conns)) in loads.iter().enumerate() {
                // Its own process group: killing the wrappers (`ip netns
                // exec`, `timeout`) alone would leave the monitor running.
                let vm = crate::group::spawn(
                    Command::new("ip")
                        .args(["netns", "exec", &ns, "timeout", "60"])
                        .args(argv_of(name, *conns)?)
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped()),
                )
                .map_err(|e| format!("{name}: {e}"))?;
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .arg(&netload)
                    .arg("10.0.2.15:7")
                    .args(*load)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace("netload: ", ""))
                    .unwrap_or_default();
                let figure = first_number(&out);
                figures.extend(figure.map(|v| (name, k, v)));
                // The guest stops after its connections; a load that failed
                // may leave it waiting, hence the kill after a grace time.
                let guest = vm
                    .wait_with_output_within(std::time::Duration::from_secs(5))
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                let exits = name
                    .starts_with("torito")
                    .then(|| {
                        crate::bench::json_number(
                            guest.lines().find(|l| l.starts_with("{\"time_zero\""))?,
                            "exits",
                        )
                    })
                    .flatten();
                let per = match (exits, figure, k) {
                    // Bytes moved both ways: twice those echoed back.
                    (Some(e), Some(_), 0) => {
                        stream_bytes(&out).map(|b| e as f64 / (b as f64 * 2.0 / 65536.0))
                    }
                    (Some(e), Some(rate), _) => Some(e as f64 / (rate * 2.0)),
                    _ => None,
                };
                let shown = match (per, k) {
                    (Some(p), 0) => format!(", {p:.2} exits per 64 KiB moved"),
                    (Some(p), _) => format!(", {p:.3} exits per round trip"),
                    (None, _) => String::new(),
                };
                if name == "torito" {
                    exits_per[k] = per;
                }
                println!("  {name:<20} {out}{shown}");
            }
        }
        let of = |n: &str, k: usize| figures.iter().find(|f| f.0 == n && f.1 == k).map(|f| f.2);
        for (k, what) in
            ["stream", "round trips/s, 1 connection", "round trips/s, 64 connections"].iter().enumerate()
        {
            for peer in [NO_OFFLOADS, "qemu microvm", "firecracker"] {
                if let (Some(a), Some(b)) = (of("torito", k), of(peer, k)) {
                    println!("  {what}, torito / {peer}, same run: {:.2}×", a / b);
                }
            }
        }
        // The targets: counts, and the stream against QEMU.
        match exits_per[0] {
            Some(p) => v.check(p <= 2.0, format!("network stream: {p:.2} exits per 64 KiB moved (goal ≤ 2)")),
            None => v.check(false, "network stream: no exit count from our monitor".into()),
        }
        match exits_per[2] {
            Some(p) => {
                v.check(p <= 1.5, format!("64-connection request/response: {p:.3} exits each (goal ≤ 1.5)"))
            }
            None => v.check(false, "64-connection request/response: no exit count from our monitor".into()),
        }
        if let (Some(a), Some(b)) = (of("torito", 0), of("qemu microvm", 0)) {
            v.check(
                a / b >= 5.0,
                format!("network stream, torito / qemu microvm: {:.2}× (goal ≥ 5×)", a / b),
            );
        }
        Ok(())
    })();
    ip(&["netns", "del", &ns]);
    result
}

/// Our monitor with a guest that negotiates no offloads.
const NO_OFFLOADS: &str = "torito, offloads off";

/// The figure of a `netload` line: the number after the colon ("stream:
/// 19 MB/s …", "64 connection(s): 15309 round trips/s").
fn first_number(line: &str) -> Option<f64> {
    line.split(": ").nth(1)?.split(' ').next()?.parse().ok()
}

/// The bytes a `netload` stream line says came back ("… (N of M bytes
/// back)").
fn stream_bytes(line: &str) -> Option<u64> {
    line.split('(').nth(1)?.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_of_netload_lines() {
        assert_eq!(
            super::stream_bytes("stream: 19 MB/s each way (61079552 of 61079552 bytes back)"),
            Some(61079552)
        );
        assert_eq!(super::stream_bytes("64 connection(s): 15309 round trips/s"), None);
        assert_eq!(
            super::first_number("stream: 19 MB/s each way (61079552 of 61079552 bytes back)"),
            Some(19.0)
        );
        assert_eq!(super::first_number("64 connection(s): 15309 round trips/s"), Some(15309.0));
        assert_eq!(super::first_number("error"), None);
    }
}
