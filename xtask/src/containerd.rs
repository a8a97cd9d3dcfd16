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
}

impl Containerd {
    /// Start one for `tag`; why not, when it cannot be.
    pub fn start(tag: &str) -> Result<Self, String> {
        for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
            if !crate::have(tool) {
                return Err(format!("`{tool}` is not installed (Debian: containerd runc)"));
            }
        }
        let dir = crate::root().join("target/tests").join(format!("containerd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n",
            root = dir.join("root"),
            state = dir.join("state"),
            ttrpc = dir.join("containerd.ttrpc.sock"),
        );
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
        let snapshotter = if overlay_works(&dir) { "overlayfs" } else { "native" };
        let mut c =
            Containerd { dir, sock, namespace: format!("torito-{tag}"), snapshotter, daemon: Some(daemon) };
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
        if !crate::kvm_usable() {
            crate::testing::skip("/dev/kvm is not usable; containerd test not run");
            return None;
        }
        if !is_root() {
            crate::testing::skip("not root: containerd test not run");
            return None;
        }
        match Self::start(tag) {
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
