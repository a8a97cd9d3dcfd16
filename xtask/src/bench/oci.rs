//! The oci section: torito-oci under containerd (a private one, started
//! here). Side by side in one run: `ctr run --rm` of hello through
//! torito-oci against `ctr run --rm` of a static native program through
//! runc (the monitor's `--version`, one line, exit 0); each runtime verb
//! timed on its own (`create`, `start`, `state`, `kill`, `delete`) for
//! torito-oci and runc on the same bundle layout; and a detached echo
//! appliance in a pod-like network namespace, from `ctr run -d` to the
//! first TCP echo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::report::Verdicts;
use super::{fmt3, summary};
use crate::Variant;
use crate::containerd::{BridgeGuard, Containerd, Cri, PodNet, SleepImage, nc_echo};
use crate::image::ImageSpec;

/// What each torito-oci verb may cost of its own (the bound).
const VERB_MS: f64 = 2.0;

/// Milliseconds `c` takes to run (and whether it succeeded).
fn timed(c: &mut Command) -> (f64, bool) {
    let t = Instant::now();
    let ok = c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    (t.elapsed().as_secs_f64() * 1e3, ok)
}

/// Run the section; skipped (said) without root, KVM or containerd.
pub fn run(out: &Path, runs: usize, warmup: usize, verdicts: &mut Verdicts) -> Result<(), String> {
    println!("\nOCI runtime (torito-oci under containerd {}):", containerd_version());
    if !crate::containerd::is_root() || !crate::kvm_usable() {
        println!("  skipped: needs root and /dev/kvm");
        return Ok(());
    }
    let c = match Containerd::start("bench") {
        Ok(c) => c,
        Err(why) => {
            println!("  skipped: {why}");
            return Ok(());
        }
    };
    let oci = crate::build_oci(true)?;
    let monitor = oci.with_file_name("torito");
    let dir = out.join("oci");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let hello = read(&crate::build("hello", Variant::default())?)?;
    let echo = read(&crate::build("echo", Variant::default())?)?;
    let spin = read(&crate::build("spin", Variant::default())?)?;
    let native = read(&monitor)?;
    let import = |spec: &ImageSpec| -> Result<(), String> {
        let t = dir.join(format!("{}.tar", spec.name.replace(['/', ':'], "_")));
        crate::image::write(spec, &t)?;
        c.import(&t);
        Ok(())
    };
    import(&ImageSpec::appliance("docker.io/torito/hello:latest", Some(&hello), &[], "64M"))?;
    import(&ImageSpec::appliance("docker.io/torito/echo:latest", Some(&echo), &["port=7".into()], "64M"))?;
    import(&ImageSpec {
        name: "docker.io/torito/native:latest",
        files: vec![("/torito", &native)],
        entrypoint: vec!["/torito".into()],
        cmd: vec!["--version".into()],
        env: vec![],
    })?;

    // ctr run --rm, alternating.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..warmup + runs {
        let (a, a_ok) = timed(
            c.ctr()
                .args(["run", "--rm", "--snapshotter", c.snapshotter(), "--runc-binary"])
                .arg(&oci)
                .args(["docker.io/torito/hello:latest", &format!("bench-t-{i}")]),
        );
        let (b, b_ok) = timed(
            c.ctr()
                .args(["run", "--rm", "--snapshotter", c.snapshotter()])
                .args(["docker.io/torito/native:latest", &format!("bench-n-{i}")]),
        );
        if !a_ok || !b_ok {
            return Err(format!(
                "ctr run failed (torito-oci ok: {a_ok}, runc ok: {b_ok}); containerd:\n{}",
                c.log()
            ));
        }
        if i >= warmup {
            ours.push(a);
            theirs.push(b);
        }
    }
    println!("  {:<44} {:>9} {:>9} {:>9}", "ctr run --rm, ms", "min", "median", "max");
    println!("  {:<44} {}", "hello appliance through torito-oci", fmt3(summary(&ours)));
    println!("  {:<44} {}", "static native program through runc", fmt3(summary(&theirs)));
    if let (Some((_, a, _)), Some((_, b, _))) = (summary(&ours), summary(&theirs)) {
        println!("  torito-oci / runc, medians, same run: {:.2}×", a / b);
    }

    verbs(&oci, &dir, &spin, runs.min(20), verdicts)?;
    echo_start(&c, &oci, runs.min(10))?;
    drop(c);
    pod_start(&oci, &dir, &echo, runs.min(10))?;
    Ok(())
}

fn containerd_version() -> String {
    Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "(not installed)".into())
}

/// A bundle from `runc spec` (runc's defaults: new namespaces, /proc…)
/// running `args` with `env`, whose root holds `files`; without a network
/// namespace unless `netns`.
fn bundle(
    dir: &Path,
    files: &[(&str, &[u8])],
    args: &[&str],
    env: &[&str],
    netns: bool,
) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("rootfs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ok = Command::new("runc").arg("spec").arg("--bundle").arg(dir).status().is_ok_and(|s| s.success());
    if !ok {
        return Err("runc spec failed".into());
    }
    for (path, bytes) in files {
        let p = dir.join("rootfs").join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap_or(dir)).map_err(|e| e.to_string())?;
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    let mut e: Vec<serde_json::Value> = spec["process"]["env"].as_array().cloned().unwrap_or_default();
    e.extend(env.iter().map(|v| serde_json::json!(v)));
    spec["process"]["env"] = serde_json::Value::Array(e);
    if !netns && let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    std::fs::write(&path, spec.to_string()).map_err(|e| e.to_string())?;
    Ok(dir.to_path_buf())
}

/// Each verb of torito-oci and runc, timed on its own: create, start,
/// state, kill, delete of a container that runs until killed; with runc's
/// default spec (a new network namespace, which both runtimes make at
/// create) and without it (what the runtime costs of its own).
fn verbs(oci: &Path, dir: &Path, spin: &[u8], runs: usize, verdicts: &mut Verdicts) -> Result<(), String> {
    let sleep = crate::containerd::SleepImage::from_host();
    let sleep_refs = sleep.files();
    let appliance = |name: &str, netns: bool| {
        bundle(
            &dir.join(name),
            &[("/appliance.elf", spin)],
            &["/appliance.elf"],
            &["TORITO_APPLIANCE=1", "TORITO_MEM=64M"],
            netns,
        )
    };
    let native = |name: &str, netns: bool| {
        bundle(&dir.join(name), &sleep_refs, &["/bin/sleep", "infinity"], &[], netns)
    };
    let runc = Path::new("runc");
    let configs: [(&str, &Path, PathBuf); 4] = [
        ("torito-oci", oci, appliance("bundle-torito", true)?),
        ("runc", runc, native("bundle-runc", true)?),
        ("torito-oci, no netns", oci, appliance("bundle-torito-nonet", false)?),
        ("runc, no netns", runc, native("bundle-runc-nonet", false)?),
    ];
    let root = dir.join("state");
    const VERBS: [&str; 5] = ["create", "start", "state", "kill", "delete"];
    let mut times: Vec<[Vec<f64>; 5]> = configs.iter().map(|_| Default::default()).collect();
    for i in 0..runs + 1 {
        for (k, (_, runtime, bundle)) in configs.iter().enumerate() {
            let id = format!("bench-verbs-{k}-{i}");
            let rt = || {
                let mut c = Command::new(runtime);
                c.arg("--root").arg(&root);
                c
            };
            let steps: [Vec<String>; 5] = [
                vec!["create".into(), "--bundle".into(), bundle.display().to_string(), id.clone()],
                vec!["start".into(), id.clone()],
                vec!["state".into(), id.clone()],
                vec!["kill".into(), id.clone(), "KILL".into()],
                vec!["delete".into(), id.clone()],
            ];
            for (v, args) in steps.iter().enumerate() {
                if v == 4 {
                    // delete wants the process gone: wait for `stopped`.
                    crate::testing::poll(Duration::from_secs(10), || {
                        rt().args(["state", &id])
                            .output()
                            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("stopped"))
                    });
                }
                let (ms, ok) = timed(rt().args(args));
                if !ok {
                    let _ = rt().args(["delete", "--force", &id]).status();
                    return Err(format!("{} {} failed", runtime.display(), args.join(" ")));
                }
                // The first round warms the caches.
                if i > 0 {
                    times[k][v].push(ms);
                }
            }
        }
    }
    println!("  {:<44} {:>9} {:>9} {:>9}", "runtime verbs on their own, ms", "min", "median", "max");
    for (v, verb) in VERBS.iter().enumerate() {
        for (k, (name, _, _)) in configs.iter().enumerate() {
            println!("  {:<44} {}", format!("{verb:<7} {name}"), fmt3(summary(&times[k][v])));
        }
        // The runtime's own cost: without the namespace the spec asks both
        // runtimes to create (it is printed above).
        if let (Some((_, a, _)), Some((_, b, _))) = (summary(&times[2][v]), summary(&times[3][v])) {
            verdicts.check(
                a <= VERB_MS,
                format!("torito-oci {verb} (no netns): median {a:.2} ms ≤ {VERB_MS} ms of its own (runc's: {b:.2} ms, same run)"),
            );
        }
    }
    Ok(())
}

/// `ctr run -d` of the echo appliance in a pod-like namespace, to the
/// first TCP echo from outside it.
fn echo_start(c: &Containerd, oci: &Path, runs: usize) -> Result<(), String> {
    if !crate::have("nc") {
        println!("  (no nc: the echo start is not measured)");
        return Ok(());
    }
    let net = PodNet::create("bench");
    let mut ms = Vec::new();
    for i in 0..runs {
        let id = format!("bench-echo-{i}");
        let t = Instant::now();
        let o = c
            .ctr()
            .args(["run", "-d", "--snapshotter", c.snapshotter(), "--with-ns"])
            .arg(format!("network:{}", net.path()))
            .arg("--runc-binary")
            .arg(oci)
            .args(["docker.io/torito/echo:latest", &id])
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("ctr run -d: {}", String::from_utf8_lossy(&o.stderr)));
        }
        let answered = crate::testing::poll(Duration::from_secs(30), || {
            nc_echo(Some(&net.client), "10.0.3.2", 7, b"ping\n") == b"ping\n"
        });
        let took = t.elapsed().as_secs_f64() * 1e3;
        let _ = c.ctr().args(["tasks", "kill", "-s", "SIGKILL", &id]).output();
        crate::testing::poll(Duration::from_secs(10), || {
            c.ctr().args(["tasks", "rm", &id]).output().is_ok_and(|o| o.status.success())
        });
        let _ = c.ctr().args(["containers", "rm", &id]).output();
        if !answered {
            return Err(format!("the echo appliance did not answer; containerd:\n{}", c.log()));
        }
        ms.push(took);
    }
    println!("  {:<44} {}", "ctr run -d echo → first TCP echo, ms", fmt3(summary(&ms)));
    Ok(())
}

/// A pod as the kubelet starts one, through CRI (`xtask/cri`): RunPodSandbox
/// (the pause container under runc, a CNI bridge) → CreateContainer →
/// StartContainer of the echo appliance → the first TCP echo on the pod's
/// IP from the host.
fn pod_start(oci: &Path, dir: &Path, echo: &[u8], runs: usize) -> Result<(), String> {
    let client = match crate::build_cri_client() {
        Ok(c) => c,
        Err(why) => {
            println!("  (pod start through CRI not measured: {why})");
            return Ok(());
        }
    };
    const PAUSE: &str = "docker.io/torito/pause:latest";
    let cri = Cri {
        oci: oci.to_path_buf(),
        pause_image: PAUSE.into(),
        bridge: "torito-bench0".into(),
        subnet: "10.0.5.0/24".into(),
    };
    let _bridge = BridgeGuard::new(&cri.bridge);
    let c = Containerd::start_with("bench-cri", Some(&cri))?;
    let sleep = SleepImage::from_host();
    for spec in [
        sleep.spec(PAUSE),
        ImageSpec::appliance("docker.io/torito/echo:latest", Some(echo), &["port=7".into()], "64M"),
    ] {
        let t = dir.join(format!("cri-{}.tar", spec.name.replace(['/', ':'], "_")));
        crate::image::write(&spec, &t)?;
        c.import(&t);
    }
    let call = |args: &[&str]| -> Result<String, String> {
        let o = Command::new(&client)
            .arg("--socket")
            .arg(c.socket())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("torito-cri {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr)));
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let memory = (128u64 << 20).to_string();
    let mut ms = Vec::new();
    for i in 0..runs {
        let name = format!("echo-{i}");
        let logs = c.dir().join("pods").join(&name);
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let logs = logs.display().to_string();
        let pod_flags = ["--pod-name", name.as_str(), "--logs", logs.as_str()];
        let t = Instant::now();
        let pod = call(&[&["runp", "--handler", "torito"][..], &pod_flags].concat())?;
        let ip = call(&["inspectp", &pod])?;
        let create = [&["create", "--pod", &pod][..], &pod_flags, &["--name", "echo", "--image"]].concat();
        let id = call(&[&create[..], &["docker.io/torito/echo:latest", "--memory", &memory]].concat())?;
        call(&["start", &id])?;
        let answered =
            crate::testing::poll(Duration::from_secs(30), || nc_echo(None, &ip, 7, b"ping\n") == b"ping\n");
        let took = t.elapsed().as_secs_f64() * 1e3;
        let _ = call(&["stop", &id, "--timeout", "0"]);
        let _ = call(&["rm", &id]);
        let _ = call(&["stopp", &pod]);
        let _ = call(&["rmp", &pod]);
        if !answered {
            return Err(format!("the echo pod did not answer on {ip}; containerd:\n{}", c.log()));
        }
        ms.push(took);
    }
    println!("  {:<44} {}", "CRI pod start → first TCP echo on its IP, ms", fmt3(summary(&ms)));
    Ok(())
}
