//! The soak, only when asked for (`cargo xtask bench soak`: it takes over a
//! minute): httpd on our monitor under `wrk -t2 -c1000 -d60s`, then a look
//! at what is left. Verdicts: no socket error and no non-2xx answer, and
//! the guest heap back where it was before the load (from httpd's
//! `status=` page) once the connections have ended: memory stays flat.
//! The kill -9 half of the soak (every acknowledged key of an
//! `appendfsync=always` kvstore there after a restart) runs in the tests.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::report::Verdicts;
use crate::Variant;
use crate::netns::{GUEST, Netns};

fn heap(ns: &Netns) -> Option<u64> {
    let out = ns
        .exec("curl")
        .args(["-s", "--max-time", "5", &format!("http://{GUEST}/server-status")])
        .output()
        .ok()?;
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    page.lines().find_map(|l| l.strip_prefix("Heap used: "))?.split(' ').next()?.parse().ok()
}

/// Run the soak; verdicts into `v`.
pub fn run(monitor: &Path, out: &Path, v: &mut Verdicts) -> Result<(), String> {
    println!("\nsoak (httpd, wrk -t2 -c1000 -d60s):");
    for t in ["ip", "curl", "wrk"] {
        if !crate::have(t) {
            println!("  skipped: `{t}` is not installed");
            return Ok(());
        }
    }
    let Some(ns) = Netns::create("bench-soak") else {
        println!("  skipped: cannot create a network namespace (needs root)");
        return Ok(());
    };
    let dir = out.join("soak");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
    std::fs::write(www.join("index.html"), "x".repeat(612)).map_err(|e| e.to_string())?;
    let elf = crate::build_with_files("httpd", Variant::default(), &www, &dir.join("httpd.elf"))?;
    let mut c = ns.exec("timeout");
    c.arg("300").arg(monitor).args(["--cpus", "2", "--mem", "512M", "--net", "tap=tap0", "--timeline=json"]);
    c.arg(&elf).args(["--", "torito.ip=10.0.2.15/24", "root=/", "max_conns=2000", "backlog=1024"]);
    c.arg("status=/server-status");
    let vm = crate::group::spawn(c.stdout(Stdio::null()).stderr(Stdio::null())).map_err(|e| e.to_string())?;
    let mut first = None;
    crate::testing::poll(Duration::from_secs(10), || {
        first = heap(&ns);
        first.is_some()
    });
    let Some(before) = first else { return Err("soak: httpd never answered".into()) };
    let load = ns
        .exec("wrk")
        .args(["-t2", "-c1000", "-d60s", "--timeout", "10s", &format!("http://{GUEST}/")])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&load.stdout);
    for l in text.lines() {
        println!("    {l}");
    }
    // The connections end in the guest a moment after wrk closed them.
    let after = crate::testing::settle(before + (1 << 20), Duration::from_secs(10), || heap(&ns));
    vm.kill();
    let errors =
        text.lines().filter(|l| l.contains("Socket errors") || l.contains("Non-2xx")).collect::<Vec<_>>();
    v.check(
        errors.is_empty(),
        format!(
            "soak: wrk -c1000 60 s on httpd: {}",
            if errors.is_empty() { "no errors".into() } else { errors.join("; ") }
        ),
    );
    match after {
        Some(a) => v.check(
            a <= before + (1 << 20),
            format!("soak: guest heap in use {before} bytes before, {a} after the load (goal: within 1 MiB)"),
        ),
        None => v.check(false, "soak: httpd did not answer after the load".into()),
    }
    Ok(())
}
