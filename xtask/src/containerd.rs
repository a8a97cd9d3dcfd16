//! A private containerd for one test or bench run: Debian's `containerd`
//! with its own config, root, state and socket under `target/tests/`,
//! driven with `ctr` in a namespace of its own; stopped (its tasks killed
//! and removed first) and its directories removed on drop, even when the
//! test failed. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::group::GroupChild;

/// A running containerd.
pub struct Containerd {
    dir: PathBuf,
    sock: PathBuf,
    namespace: String,
    snapshotter: &'static str,
    daemon: Option<GroupChild>,
    /// Network namespaces there before it started (CRI's `cni-*` ones made
    /// since are removed with it).
    netns_before: Vec<String>,
}

/// The CRI plugin's settings: a runtime `torito` whose `BinaryName` is
/// `torito-oci`, a locally made pause image, and a CNI bridge without
/// masquerading (`bridge` on the host side, pods in `subnet`).
#[derive(Debug, Clone)]
pub struct Cri {
    /// `torito-oci`.
    pub oci: PathBuf,
    /// The pause image's name (imported before pods run).
    pub pause_image: String,
    /// The CNI bridge's name.
    pub bridge: String,
    /// The pods' subnet, e.g. `10.0.4.0/24`.
    pub subnet: String,
}

/// CRI's containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";

impl Containerd {
    /// Start one for `tag` (CRI disabled); why not, when it cannot be.
    pub fn start(tag: &str) -> Result<Self, String> {
        Self::start_with(tag, None)
    }

    /// Start one for `tag`, with CRI as `cri` says when given.
    pub fn start_with(tag: &str, cri: Option<&Cri>) -> Result<Self, String> {
        for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
            if !crate::have(tool) {
                return Err(format!("`{tool}` is not installed (Debian: containerd runc)"));
            }
        }
        let dir = crate::root().join("target/tests").join(format!("containerd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let sock = dir.join("containerd.sock");
        let snapshotter = if overlay_works(&dir) { "overlayfs" } else { "native" };
        let mut config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n{disabled}\
             [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n",
            root = dir.join("root"),
            state = dir.join("state"),
            ttrpc = dir.join("containerd.ttrpc.sock"),
            disabled =
                if cri.is_some() { "" } else { "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" },
        );
        if let Some(cri) = cri {
            config += &cri_config(&dir, cri, snapshotter)?;
        }
        std::fs::write(dir.join("config.toml"), config)
            .map_err(|e| format!("cannot write the config: {e}"))?;
        let log =
            std::fs::File::create(dir.join("containerd.log")).map_err(|e| format!("containerd.log: {e}"))?;
        let daemon = crate::group::spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml"))
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log),
        )
        .map_err(|e| format!("cannot start containerd: {e}"))?;
        let namespace = if cri.is_some() { CRI_NAMESPACE.to_string() } else { format!("torito-{tag}") };
        let netns_before = netns_names();
        let mut c = Containerd { dir, sock, namespace, snapshotter, daemon: Some(daemon), netns_before };
        let up = crate::testing::poll(Duration::from_secs(20), || {
            c.ctr().arg("version").output().is_ok_and(|o| o.status.success())
        });
        if !up {
            let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
            c.stop();
            return Err(format!("containerd did not answer within 20 s; its log:\n{log}"));
        }
        Ok(c)
    }

    /// Start one, or record why not as a skip (a failure under `CI=true`).
    pub fn or_skip(tag: &str) -> Option<Self> {
        Self::or_skip_with(tag, None)
    }

    /// [`Self::or_skip`] with CRI as `cri` says.
    pub fn or_skip_with(tag: &str, cri: Option<&Cri>) -> Option<Self> {
        if !crate::kvm_usable() {
            crate::testing::skip("/dev/kvm is not usable; containerd test not run");
            return None;
        }
        if !is_root() {
            crate::testing::skip("not root: containerd test not run");
            return None;
        }
        match Self::start_with(tag, cri) {
            Ok(c) => Some(c),
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("under CI=true: {why}"),
            Err(why) => {
                crate::testing::skip(&format!("{why}; containerd test not run"));
                None
            }
        }
    }

    /// `ctr` for this containerd and namespace.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.sock).arg("--namespace").arg(&self.namespace);
        c
    }

    /// The daemon's socket (for a CRI client).
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Its scratch directory (pod logs may go there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshotter in use (`overlayfs`, or `native` where overlay
    /// mounts fail).
    pub fn snapshotter(&self) -> &str {
        self.snapshotter
    }

    /// Import an image tarball; panics with ctr's words when it fails.
    pub fn import(&self, tarball: &Path) {
        let out = self
            .ctr()
            .args(["images", "import", "--snapshotter", self.snapshotter])
            .arg(tarball)
            .output()
            .expect("run ctr");
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `ctr run --rm` of `image` as `id` with `args`, through `runtime`
    /// (a runc-compatible binary); its output.
    pub fn run_rm(&self, runtime: &Path, image: &str, id: &str, args: &[&str]) -> Output {
        self.ctr()
            .args(["run", "--rm", "--snapshotter", self.snapshotter, "--runc-binary"])
            .arg(runtime)
            .args([image, id])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        // Tasks first (their shims are daemons of their own), then the
        // containers, then containerd.
        if let Ok(out) = self.ctr().args(["tasks", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr().args(["tasks", "kill", "-s", "SIGKILL", id]).output();
                let _ = self.ctr().args(["tasks", "rm", "-f", id]).output();
            }
        }
        if let Ok(out) = self.ctr().args(["containers", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr().args(["containers", "rm", id]).output();
            }
        }
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
        // Pods' namespaces CRI made and did not remove (a test that failed).
        for ns in netns_names() {
            if ns.starts_with("cni-") && !self.netns_before.contains(&ns) {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
        // Mounts containerd left (a rootfs of a task that was killed).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespace's directories the shim and the runtimes made (empty
        // now; a non-empty one is left for the test to see).
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
        let hierarchies =
            std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path());
        for h in hierarchies.chain([PathBuf::from("/sys/fs/cgroup")]) {
            let _ = std::fs::remove_dir(h.join(&self.namespace));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The names under /var/run/netns.
fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// The CRI part of the config, and the CNI network it names (written
/// under `dir/cni`, its address book under `dir/cni-ipam`).
fn cri_config(dir: &Path, cri: &Cri, snapshotter: &str) -> Result<String, String> {
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).map_err(|e| format!("cannot create {}: {e}", cni.display()))?;
    let network = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "torito-test",
        "plugins": [{
            "type": "bridge",
            "bridge": cri.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": cri.subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni-ipam"),
            },
        }],
    });
    std::fs::write(cni.join("10-torito-test.conflist"), network.to_string())
        .map_err(|e| format!("cannot write the CNI config: {e}"))?;
    let cni_bin =
        ["/usr/lib/cni", "/opt/cni/bin"].into_iter().find(|d| Path::new(d).join("bridge").is_file());
    let cni_bin = cni_bin.ok_or("the CNI plugins are not installed (Debian: containernetworking-plugins)")?;
    let section = "plugins.\"io.containerd.grpc.v1.cri\"";
    Ok(format!(
        "[{cri}]\n  sandbox_image = {pause:?}\n  restrict_oom_score_adj = true\n  disable_tcp_service = true\n\
         \x20 stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
         [{cri}.containerd]\n  snapshotter = {snapshotter:?}\n  default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.torito]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.torito.options]\n  BinaryName = {oci:?}\n\
         [{cri}.cni]\n  bin_dir = {cni_bin:?}\n  conf_dir = {conf:?}\n",
        cri = section,
        pause = cri.pause_image,
        oci = cri.oci,
        conf = cni,
    ))
}

/// A pod's network as CNI would leave it, in miniature: two namespaces
/// joined by a veth pair, the pod's `eth0` at 10.0.3.2/24 with its default
/// route through the client's end at 10.0.3.1. Removed on drop.
pub struct PodNet {
    /// The pod's namespace.
    pub pod: String,
    /// The client's namespace (10.0.3.1).
    pub client: String,
}

impl PodNet {
    /// Make it (panics with ip's words when it cannot).
    pub fn create(tag: &str) -> PodNet {
        let pid = std::process::id();
        let net =
            PodNet { pod: format!("torito-{tag}-pod-{pid}"), client: format!("torito-{tag}-cli-{pid}") };
        let ip = |args: &[&str]| {
            let o = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
        };
        let (p, c) = (net.pod.as_str(), net.client.as_str());
        ip(&["netns", "add", p]);
        ip(&["netns", "add", c]);
        ip(&["-n", p, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", c]);
        ip(&["-n", p, "addr", "add", "10.0.3.2/24", "dev", "eth0"]);
        ip(&["-n", c, "addr", "add", "10.0.3.1/24", "dev", "peer0"]);
        for (ns, dev) in [(p, "eth0"), (p, "lo"), (c, "peer0"), (c, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", p, "route", "add", "default", "via", "10.0.3.1"]);
        net
    }

    /// The pod's namespace as a path.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.pod)
    }

    /// What `cmd` prints in the pod's namespace.
    pub fn in_pod(&self, cmd: &[&str]) -> std::process::Output {
        std::process::Command::new("ip").args(["netns", "exec", &self.pod]).args(cmd).output().unwrap()
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.client] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A pause image made from the host's `sleep` and the libraries it needs
/// (no registry here): `sleep infinity`, killed when the pod stops. Also
/// the native long-running program the bench gives runc.
pub struct SleepImage {
    files: Vec<(String, Vec<u8>)>,
}

impl SleepImage {
    /// Read `/bin/sleep` and what `ldd` says it loads.
    pub fn from_host() -> Self {
        let ldd = Command::new("ldd").arg("/bin/sleep").output().map(|o| o.stdout).unwrap_or_default();
        let libs: Vec<String> = String::from_utf8_lossy(&ldd)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_string)
            .collect();
        let files = std::iter::once("/bin/sleep".to_string())
            .chain(libs)
            .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
            .collect();
        SleepImage { files }
    }

    /// The files: path in the image, bytes.
    pub fn files(&self) -> Vec<(&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect()
    }

    /// The image `name`: `sleep infinity`.
    pub fn spec<'a>(&'a self, name: &'a str) -> crate::image::ImageSpec<'a> {
        crate::image::ImageSpec {
            name,
            files: self.files(),
            entrypoint: vec!["/bin/sleep".into()],
            cmd: vec!["infinity".into()],
            env: vec![],
        }
    }
}

/// While alive, the CNI bridge `name` may exist; dropped, it is removed
/// and `ip_forward` (the bridge plugin turns it on for a gateway) is
/// restored.
pub struct BridgeGuard {
    name: String,
    ip_forward: String,
}

impl BridgeGuard {
    /// Remember `ip_forward` for bridge `name`.
    pub fn new(name: &str) -> Self {
        let ip_forward =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_else(|_| "0".into());
        BridgeGuard { name: name.into(), ip_forward }
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ =
            Command::new("ip").args(["link", "del", &self.name]).stderr(std::process::Stdio::null()).status();
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
    }
}

/// One TCP exchange with `nc`: send `msg` to `ip:port` (from network
/// namespace `netns`, else from here), close our side, return what came
/// back (empty when nothing could be run or reached).
pub fn nc_echo(netns: Option<&str>, ip: &str, port: u16, msg: &[u8]) -> Vec<u8> {
    let port = port.to_string();
    let nc = ["nc", "-N", "-w", "3", ip, port.as_str()];
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(nc);
            c
        }
        None => {
            let mut c = Command::new(nc[0]);
            c.args(&nc[1..]);
            c
        }
    };
    use std::process::Stdio;
    let Ok(mut child) = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() else {
        return Vec::new();
    };
    use std::io::Write;
    let _ = child.stdin.take().map(|mut s| s.write_all(msg));
    child.wait_with_output().map(|o| o.stdout).unwrap_or_default()
}

/// Is this process root?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Can an overlay file system be mounted in `dir` (not on every file
/// system, nor in every container)?
fn overlay_works(dir: &Path) -> bool {
    let t = dir.join("overlay-probe");
    let [l, u, w, m] = ["l", "u", "w", "m"].map(|s| t.join(s));
    for d in [&l, &u, &w, &m] {
        if std::fs::create_dir_all(d).is_err() {
            return false;
        }
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", l.display(), u.display(), w.display());
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&m)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("umount").arg(&m).status();
    }
    let _ = std::fs::remove_dir_all(&t);
    ok
}
