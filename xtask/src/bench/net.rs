//! The network section: `apps/echo` behind a TAP device in a network
//! namespace made for the run, driven by `netload` (stream, request/
//! response with 1 and 64 connections), on our monitor and QEMU microvm
//! side by side. Needs root; skipped otherwise.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{QemuMachine, Variant};

/// Network figures (`apps/echo` and the `netload` client): TCP stream
/// throughput and request/response rates with 1 and 64 connections, on our
/// monitor and QEMU microvm, through a TAP device in a network namespace
/// made for the run (needs root; skipped otherwise).
pub fn run(monitor: &Path) -> Result<(), String> {
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
        let mut figures: Vec<(&str, usize, f64)> = Vec::new();
        for (name, argv) in runs {
            // Its own process group: killing the wrappers (`ip netns exec`,
            // `timeout`) alone would leave the monitor running.
            let vm = crate::group::spawn(
                Command::new("ip")
                    .args(["netns", "exec", &ns, "timeout", "60"])
                    .args(&argv)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
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
            for (k, a) in
                [&["stream", "3"][..], &["rr", "1", "2"], &["rr", "64", "2"]].into_iter().enumerate()
            {
                let line = load(a);
                println!("  {name:<13} {line}");
                figures.extend(first_number(&line).map(|v| (name, k, v)));
            }
            vm.kill();
        }
        let of = |n: &str, k: usize| figures.iter().find(|f| f.0 == n && f.1 == k).map(|f| f.2);
        for (k, what) in
            ["stream", "round trips/s, 1 connection", "round trips/s, 64 connections"].iter().enumerate()
        {
            if let (Some(a), Some(b)) = (of("torito", k), of("qemu microvm", k)) {
                println!("  {what}, torito / qemu microvm, same run: {:.2}×", a / b);
            }
        }
        Ok(())
    })();
    ip(&["netns", "del", &ns]);
    result
}

/// The figure of a `netload` line: the number after the colon ("stream:
/// 19 MB/s …", "64 connection(s): 15309 round trips/s").
fn first_number(line: &str) -> Option<f64> {
    line.split(": ").nth(1)?.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_of_netload_lines() {
        assert_eq!(
            super::first_number("stream: 19 MB/s each way (61079552 of 61079552 bytes back)"),
            Some(19.0)
        );
        assert_eq!(super::first_number("64 connection(s): 15309 round trips/s"), Some(15309.0));
        assert_eq!(super::first_number("error"), None);
    }
}
