//! torito-oci as the kubelet drives it: containerd's CRI plugin with a
//! runtime handler `torito` (`runtime_type = "io.containerd.runc.v2"`,
//! `BinaryName` = torito-oci), a CNI bridge network, and a CRI client
//! speaking gRPC on containerd's socket (`xtask/cri`: crictl is not
//! packaged in Debian). The pod's pause container runs under runc (handed
//! over), the echo appliance answers on the pod's IP from the host, its
//! output is in the CRI log, StopContainer gives 143; a hostNetwork pod
//! leaves the host's interfaces, addresses and qdiscs as they were.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use xtask::Variant;
use xtask::containerd::{BridgeGuard, Containerd, Cri, SleepImage, nc_echo};
use xtask::image::ImageSpec;

const BRIDGE: &str = "torito-cni0";
const SUBNET: &str = "10.0.4.0/24";
const PAUSE: &str = "docker.io/torito/pause:latest";

/// The CRI client on containerd `c`.
struct Client<'a> {
    bin: PathBuf,
    c: &'a Containerd,
}

impl Client<'_> {
    /// Run a verb; its one line of output (panics with why when it fails).
    fn call(&self, args: &[&str]) -> String {
        let o = Command::new(&self.bin).arg("--socket").arg(self.c.socket()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "torito-cri {}: {}\ncontainerd:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr),
            self.c.log()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// The host namespace's links (names and flags), addresses and qdiscs.
fn host_network() -> String {
    let run = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let links = run(&["ip", "-o", "link", "show"]);
    let links: Vec<&str> = links.lines().map(|l| l.split(" link/").next().unwrap_or(l)).collect();
    format!("{}\n{}\n{}", links.join("\n"), run(&["ip", "-o", "addr", "show"]), run(&["tc", "qdisc", "show"]))
}

/// A pod's flags for the client.
fn pod_args<'a>(name: &'a str, logs: &'a str, host: bool) -> Vec<&'a str> {
    let mut a = vec!["--pod-name", name, "--logs", logs];
    if host {
        a.push("--host-network");
    }
    a
}

#[test]
fn cri_pods_run_appliances_with_runtime_handler_torito() {
    if !xtask::testing::need("nc") || !xtask::testing::need("protoc") {
        return;
    }
    let oci = xtask::build_oci(true).unwrap();
    let cri =
        Cri { oci: oci.clone(), pause_image: PAUSE.into(), bridge: BRIDGE.into(), subnet: SUBNET.into() };
    let _bridge = BridgeGuard::new(BRIDGE);
    let Some(c) = Containerd::or_skip_with("cri", Some(&cri)) else { return };
    let client = Client { bin: xtask::build_cri_client().unwrap(), c: &c };
    let dir: PathBuf = c.dir().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let import = |spec: &ImageSpec| {
        let t = dir.join(format!("{}.tar", spec.name.replace(['/', ':'], "_")));
        xtask::image::write(spec, &t).unwrap();
        c.import(&t);
    };
    let sleep = SleepImage::from_host();
    import(&sleep.spec(PAUSE));
    let echo = std::fs::read(xtask::build("echo", Variant::default()).unwrap()).unwrap();
    let hello = std::fs::read(xtask::build("hello", Variant::default()).unwrap()).unwrap();
    import(&ImageSpec::appliance("docker.io/torito/echo:latest", Some(&echo), &["port=7".into()], "64M"));
    import(&ImageSpec::appliance("docker.io/torito/hello:latest", Some(&hello), &[], "64M"));
    let images = client.call(&["images"]);
    assert!(images.lines().any(|t| t == PAUSE), "images: {images}");
    let logs = c.dir().join("pods");
    let memory = (128u64 << 20).to_string();

    // A hostNetwork pod: hello, then the host's network as it was.
    let before = host_network();
    let host_logs = logs.join("host");
    std::fs::create_dir_all(&host_logs).unwrap();
    let hl = host_logs.display().to_string();
    let pod_flags = pod_args("host", &hl, true);
    let pod = client.call(&[&["runp", "--handler", "torito"][..], &pod_flags].concat());
    let create = [&["create", "--pod", &pod][..], &pod_flags, &["--name", "hello", "--image"]].concat();
    let id = client.call(&[&create[..], &["docker.io/torito/hello:latest", "--memory", &memory]].concat());
    client.call(&["start", &id]);
    let mut status = String::new();
    let ended = xtask::testing::poll(Duration::from_secs(30), || {
        status = client.call(&["inspect", &id]);
        status.contains("CONTAINER_EXITED")
    });
    assert!(ended, "hello did not end: {status}");
    assert!(status.contains("exit_code=0 "), "{status}");
    // The log is written by containerd's copier, which may finish after
    // the exit is reported.
    let log = cri_log(&host_logs.join("hello.log"), " stdout F Hello from Torito!");
    assert!(log.contains(" stdout F Hello from Torito!"), "the CRI log: {log}");
    client.call(&["rm", &id]);
    client.call(&["stopp", &pod]);
    client.call(&["rmp", &pod]);
    assert_eq!(host_network(), before, "a hostNetwork pod changed the host's network");

    // A pod on the CNI bridge: the echo appliance on the pod's IP.
    let netns_before = netns_names();
    let pod_logs = logs.join("echo");
    std::fs::create_dir_all(&pod_logs).unwrap();
    let pl = pod_logs.display().to_string();
    let pod_flags = pod_args("echo", &pl, false);
    let pod = client.call(&[&["runp", "--handler", "torito"][..], &pod_flags].concat());
    let ip = client.call(&["inspectp", &pod]);
    assert!(ip.starts_with("10.0.4."), "the pod's IP: {ip:?}");
    let create = [&["create", "--pod", &pod][..], &pod_flags, &["--name", "echo", "--image"]].concat();
    let id = client.call(&[&create[..], &["docker.io/torito/echo:latest", "--memory", &memory]].concat());
    client.call(&["start", &id]);
    let sent = b"pod to appliance, through CRI\n";
    let mut back = Vec::new();
    let answered = xtask::testing::poll(Duration::from_secs(30), || {
        back = nc_echo(None, &ip, 7, sent);
        back == sent
    });
    assert!(answered, "no echo from {ip}:7 (got {:?})", String::from_utf8_lossy(&back));
    let log = cri_log(&pod_logs.join("echo.log"), "stdout F echo: listening on port 7");
    assert!(log.contains("stdout F echo: listening on port 7"), "the CRI log: {log}");
    client.call(&["stop", &id, "--timeout", "10"]);
    let status = client.call(&["inspect", &id]);
    assert!(status.contains("exit_code=143 "), "StopContainer: SIGTERM, the monitor's 143: {status}");
    client.call(&["rm", &id]);
    client.call(&["stopp", &pod]);
    client.call(&["rmp", &pod]);
    assert_eq!(netns_names(), netns_before, "the pod's network namespace is gone");
}

/// The CRI log at `path` once it holds `line` (or after 10 s).
fn cri_log(path: &Path, line: &str) -> String {
    let mut log = String::new();
    xtask::testing::poll(Duration::from_secs(10), || {
        log = std::fs::read_to_string(path).unwrap_or_default();
        log.contains(line)
    });
    log
}

/// The network namespaces under /var/run/netns.
fn netns_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(Path::new("/var/run/netns"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}
