//! `torito-oci` under Debian's containerd, started by the test with a
//! private config (`xtask::containerd`): images written by `cargo xtask
//! image` are imported with `ctr` and run through containerd's own runc
//! v2 shim with `--runc-binary torito-oci` — output, exit codes, the
//! monitor's statuses for a missing or corrupt ELF, SIGTERM through `ctr
//! task kill`, a container that is not an appliance handed to runc, and
//! nothing left behind (containers, runtime state, cgroups).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use xtask::Variant;
use xtask::containerd::{Containerd, PodNet, nc_echo};
use xtask::image::ImageSpec;

/// Write `spec` as a tarball in `dir` and import it.
fn import(c: &Containerd, dir: &Path, spec: &ImageSpec) {
    let tarball = dir.join(format!("{}.tar", spec.name.replace(['/', ':'], "_")));
    xtask::image::write(spec, &tarball).unwrap();
    c.import(&tarball);
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What runc's state root holds for this namespace (the shim's `--root`).
fn runtime_state(namespace: &str) -> Vec<PathBuf> {
    std::fs::read_dir(Path::new("/run/containerd/runc").join(namespace))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn ctr_runs_appliance_images_through_torito_oci() {
    let Some(c) = Containerd::or_skip("ctr") else { return };
    let oci = xtask::build_oci(true).unwrap();
    let dir = xtask::root().join("target/tests").join(format!("oci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = |app: &str| std::fs::read(xtask::build(app, Variant::default()).unwrap()).unwrap();
    let (hello, exit42, spin) = (elf("hello"), elf("exit42"), elf("spin"));
    let cmd = vec!["from".to_string(), "image".to_string()];
    import(&c, &dir, &ImageSpec::appliance("docker.io/torito/hello:latest", Some(&hello), &cmd, "64M"));
    import(&c, &dir, &ImageSpec::appliance("docker.io/torito/exit42:latest", Some(&exit42), &[], "64M"));
    import(&c, &dir, &ImageSpec::appliance("docker.io/torito/spin:latest", Some(&spin), &[], "64M"));
    import(&c, &dir, &ImageSpec::appliance("docker.io/torito/missing:latest", None, &[], "64M"));
    import(
        &c,
        &dir,
        &ImageSpec::appliance("docker.io/torito/corrupt:latest", Some(b"\x7fELF but no more"), &[], "64M"),
    );
    // No mark in its environment: known by the note in its ELF alone.
    import(
        &c,
        &dir,
        &ImageSpec {
            name: "docker.io/torito/unmarked:latest",
            files: vec![("/bin/hello", &hello)],
            entrypoint: vec!["hello".into()],
            cmd: vec!["unmarked".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
        },
    );
    // Not an appliance: a static Linux program (the monitor itself), runc's.
    let monitor = std::fs::read(oci.with_file_name("torito")).unwrap();
    import(
        &c,
        &dir,
        &ImageSpec {
            name: "docker.io/torito/linux:latest",
            files: vec![("/torito", &monitor)],
            entrypoint: vec!["/torito".into()],
            cmd: vec!["--version".into()],
            env: vec![],
        },
    );

    let o = c.run_rm(&oci, "docker.io/torito/hello:latest", "hello-cmd", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Hello from Torito!") && out.contains("command line: from image"), "{}", text(&o));
    let o = c.run_rm(&oci, "docker.io/torito/hello:latest", "hello-args", &["a", "b=c"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("command line: a b=c"), "{}", text(&o));

    let o = c.run_rm(&oci, "docker.io/torito/unmarked:latest", "unmarked", &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("command line: unmarked"), "{}", text(&o));

    let o = c.run_rm(&oci, "docker.io/torito/exit42:latest", "exit42", &[]);
    assert_eq!(o.status.code(), Some(42), "a guest's exit code is the task's: {}", text(&o));
    let o = c.run_rm(&oci, "docker.io/torito/missing:latest", "missing", &[]);
    assert_eq!(o.status.code(), Some(66), "a missing ELF: the monitor's status: {}", text(&o));
    assert!(text(&o).contains("appliance.elf"), "{}", text(&o));
    let o = c.run_rm(&oci, "docker.io/torito/corrupt:latest", "corrupt", &[]);
    assert_eq!(o.status.code(), Some(65), "a corrupt ELF: the monitor's status: {}", text(&o));

    let o = c.run_rm(&oci, "docker.io/torito/linux:latest", "linux", &[]);
    assert_eq!(o.status.code(), Some(0), "runc runs what is not an appliance: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("torito"), "{}", text(&o));

    // SIGTERM through the shim: `ctr task kill` of a guest that never ends.
    let mut attached = xtask::group::spawn(
        c.ctr()
            .args(["run", "--rm", "--snapshotter", c.snapshotter(), "--runc-binary"])
            .arg(&oci)
            .args(["docker.io/torito/spin:latest", "spin"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let running = xtask::testing::poll(Duration::from_secs(30), || {
        c.ctr().args(["tasks", "ls"]).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("spin ") && l.contains("RUNNING"))
        })
    });
    assert!(running, "spin did not run: {}", c.log());
    let state =
        std::fs::read_to_string(Path::new("/run/containerd/runc/torito-ctr/spin/torito-oci.json")).unwrap();
    assert!(state.contains("\"pid\""), "{state}");
    let k = c.ctr().args(["tasks", "kill", "spin"]).output().unwrap();
    assert!(k.status.success(), "{}", text(&k));
    assert!(
        xtask::testing::poll(Duration::from_secs(30), || attached.has_ended()),
        "SIGTERM did not stop spin"
    );
    let o = attached.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "SIGTERM: the monitor's 143: {}", text(&o));

    // Nothing left: no container, no runtime state, no cgroup.
    let ls = c.ctr().args(["containers", "ls", "-q"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), "", "containers left");
    assert_eq!(runtime_state("torito-ctr"), Vec::<PathBuf>::new(), "runtime state left");
    let hierarchies: Vec<PathBuf> =
        std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|e| e.path()).collect();
    for id in ["hello-cmd", "exit42", "spin"] {
        for h in hierarchies.iter().chain([&PathBuf::from("/sys/fs/cgroup")]) {
            let cg = h.join("torito-ctr").join(id);
            assert!(!cg.exists(), "{} left", cg.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The host namespace's links and qdiscs, to compare before and after.
fn host_network() -> String {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Counters and timers change by themselves: names, addresses, flags only.
    let links = run(&["ip", "-o", "link", "show"]);
    let links: Vec<String> = links
        .lines()
        .map(|l| l.split(" link/").next().unwrap_or(l).split(" qlen").next().unwrap_or(l).into())
        .collect();
    format!("{}\n{}\n{}", links.join("\n"), run(&["ip", "-o", "addr", "show"]), run(&["tc", "qdisc", "show"]))
}

#[test]
fn a_detached_echo_answers_on_its_pod_address_and_leaves_nothing() {
    if !xtask::testing::need("nc") {
        return;
    }
    let Some(c) = Containerd::or_skip("net") else { return };
    let oci = xtask::build_oci(true).unwrap();
    let dir = xtask::root().join("target/tests").join(format!("oci-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let echo = std::fs::read(xtask::build("echo", Variant::default()).unwrap()).unwrap();
    let hello = std::fs::read(xtask::build("hello", Variant::default()).unwrap()).unwrap();
    import(
        &c,
        &dir,
        &ImageSpec::appliance("docker.io/torito/echo:latest", Some(&echo), &["port=7".into()], "64M"),
    );
    import(&c, &dir, &ImageSpec::appliance("docker.io/torito/hello:latest", Some(&hello), &[], "64M"));
    let net = PodNet::create("oci");
    // What a monitor killed before `delete` ran would leave: the TAP and
    // the redirect on eth0. The next container of the pod must not trip.
    for cmd in [
        &["ip", "tuntap", "add", "dev", "torito0", "mode", "tap"][..],
        &["tc", "qdisc", "add", "dev", "eth0", "ingress"],
    ] {
        let o = net.in_pod(cmd);
        assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    }

    let o = c
        .ctr()
        .args(["run", "-d", "--snapshotter", c.snapshotter(), "--memory-limit", "134217728", "--with-ns"])
        .arg(format!("network:{}", net.path()))
        .arg("--runc-binary")
        .arg(&oci)
        .args(["docker.io/torito/echo:latest", "echo"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let sent = b"through containerd, a TAP and tc mirred\n";
    let mut back = Vec::new();
    let answered = xtask::testing::poll(Duration::from_secs(30), || {
        back = nc_echo(Some(&net.client), "10.0.3.2", 7, sent);
        back == sent
    });
    assert!(
        answered,
        "no echo from 10.0.3.2:7 (got {:?}); containerd:\n{}",
        String::from_utf8_lossy(&back),
        c.log()
    );
    let tap = net.in_pod(&["ip", "link", "show", "torito0"]);
    assert!(tap.status.success(), "the TAP is in the pod's namespace: {}", text(&tap));
    // The monitor is the container's process, in its cgroup with its memory
    // limit, and the guest got the limit less the monitor's 8 MiB.
    let state = std::fs::read_to_string("/run/containerd/runc/torito-net/echo/torito-oci.json").unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("torito --mem 120M") && cmdline.contains("--net tap=torito0"), "{cmdline}");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroups.lines().find(|l| l.contains(":memory:") || l.starts_with("0::")).unwrap_or_default();
    assert!(memory.ends_with("/torito-net/echo"), "the monitor's cgroups: {cgroups}");
    let v1 = Path::new("/sys/fs/cgroup/memory/torito-net/echo");
    let limit_file = if v1.is_dir() {
        v1.join("memory.limit_in_bytes")
    } else {
        PathBuf::from("/sys/fs/cgroup/torito-net/echo/memory.max")
    };
    assert_eq!(std::fs::read_to_string(&limit_file).unwrap().trim(), "134217728", "{}", limit_file.display());

    let k = c.ctr().args(["tasks", "kill", "echo"]).output().unwrap();
    assert!(k.status.success(), "{}", text(&k));
    let stopped = xtask::testing::poll(Duration::from_secs(30), || {
        c.ctr().args(["tasks", "ls"]).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("echo ") && l.contains("STOPPED"))
        })
    });
    assert!(stopped, "SIGTERM did not stop echo");
    let rm = c.ctr().args(["tasks", "rm", "echo"]).output().unwrap();
    assert!(rm.status.success(), "{}", text(&rm));
    // ctr says a task's non-zero status when it removes it: SIGTERM, 143.
    assert!(String::from_utf8_lossy(&rm.stderr).contains("exit code 143"), "{}", text(&rm));
    let rm = c.ctr().args(["containers", "rm", "echo"]).output().unwrap();
    assert!(rm.status.success(), "{}", text(&rm));
    let tap = net.in_pod(&["ip", "link", "show", "torito0"]);
    assert!(!tap.status.success(), "the TAP is gone after delete");
    let qdiscs = net.in_pod(&["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!String::from_utf8_lossy(&qdiscs.stdout).contains("ingress"), "{}", text(&qdiscs));

    // The runtime's own namespace (hostNetwork, or named by path) is never rewired.
    let before = host_network();
    let mine = format!("network:/proc/{}/ns/net", std::process::id());
    for how in [vec!["--net-host"], vec!["--with-ns", mine.as_str()]] {
        let o = c
            .ctr()
            .args(["run", "--rm", "--snapshotter", c.snapshotter()])
            .args(&how)
            .arg("--runc-binary")
            .arg(&oci)
            .args(["docker.io/torito/hello:latest", "hello-host"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{how:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Hello from Torito!"), "{}", text(&o));
    }
    assert_eq!(host_network(), before, "the host's interfaces, addresses and qdiscs changed");
    let _ = std::fs::remove_dir_all(&dir);
}
