//! A network namespace for one test or bench run: a TAP device `tap0` at
//! 10.0.2.1/24, where the guest is 10.0.2.15. Traffic stays inside it; the
//! clients (ping, nc, curl, wrk, redis-cli…) run in it too. Needs root.

use std::process::Command;
use std::time::{Duration, Instant};

/// The guest's address in every namespace made here.
pub const GUEST: &str = "10.0.2.15";

/// A network namespace with `tap0`; removed on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A namespace named after `tag` and this process, or `None`.
    pub fn create(tag: &str) -> Option<Self> {
        remove_orphans();
        let name = format!("torito-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns { name };
        let n = ns.name.as_str();
        let ok = ip(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"])
            && ip(&["-n", n, "addr", "add", "10.0.2.1/24", "dev", "tap0"])
            && ip(&["-n", n, "link", "set", "tap0", "up"])
            && ip(&["-n", n, "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }

    /// A namespace for a test that also needs `tools` and KVM, or `None`
    /// with the reason recorded as a skip.
    pub fn or_skip(tag: &str, tools: &[&str]) -> Option<Self> {
        for tool in tools {
            if !crate::have(tool) {
                crate::testing::skip(&format!("`{tool}` is not installed; network test not run"));
                return None;
            }
        }
        if !crate::kvm_usable() {
            crate::testing::skip("/dev/kvm is not usable; network test not run");
            return None;
        }
        let ns = Self::create(tag);
        if ns.is_none() {
            crate::testing::skip("cannot create a network namespace with a TAP device (needs root)");
        }
        ns
    }

    /// Tell the namespace the guest's MAC address ahead (a permanent
    /// neighbour entry for [`GUEST`] on `tap0`), so that no client waits
    /// for ARP; whether it took.
    pub fn know_guest(&self, mac: &str) -> bool {
        self.exec("ip")
            .args(["neigh", "replace", GUEST, "lladdr", mac, "dev", "tap0", "nud", "permanent"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The namespace's name (for `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A TCP session with the guest's `port` through `nc` (at most 10 s
    /// idle): `write` sends on nc's standard input, which is closed after
    /// it (nc then shuts its side down); returns what the guest sent back.
    pub fn nc_session(&self, port: u16, write: impl FnOnce(&mut dyn std::io::Write)) -> Vec<u8> {
        use std::process::Stdio;
        let mut nc = self
            .exec("nc")
            .args(["-N", "-w", "10", GUEST, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run nc");
        if let Some(mut stdin) = nc.stdin.take() {
            write(&mut stdin);
        }
        nc.wait_with_output().expect("nc's output").stdout
    }

    /// Wait until the guest answers ping (at most 10 s).
    pub fn wait_for_ping(&self) -> bool {
        self.wait_for_ping_within(Duration::from_secs(10))
    }

    /// Wait until the guest answers ping, at most `within` (longer for a
    /// guest that `cargo xtask run` builds first, maybe waiting for
    /// cargo's lock while other tests build).
    pub fn wait_for_ping_within(&self, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            let ok = self
                .exec("ping")
                .args(["-c", "1", "-W", "1", GUEST])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return true;
            }
        }
        false
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Wait (at most `within`) until the TAP device `name`, of this network
/// namespace, can be attached: a monitor that has just exited leaves its
/// last close of the device to the kernel, some milliseconds later (the
/// monitor's `vstate::Farewell`), and a monitor started before then waits
/// for it. Whether it can. (An absent device is made by the probe and is
/// gone with it.)
pub fn wait_for_tap(name: &str, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        match tap_attachable(name) {
            Some(true) => return true,
            Some(false) if start.elapsed() < within => std::thread::sleep(Duration::from_micros(200)),
            _ => return false,
        }
    }
}

/// Whether `name` can be attached now (`TUNSETIFF` on a new descriptor,
/// closed at once): `Some(false)` while another descriptor holds it,
/// `None` when it cannot be tried (no such device, no `/dev/net/tun`).
fn tap_attachable(name: &str) -> Option<bool> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP_NO_PI_VNET_HDR: libc::c_short = 0x0002 | 0x1000 | 0x4000;
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").ok()?;
    // struct ifreq: the name (16 bytes, NUL-terminated), then the flags.
    let mut req = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        return None;
    }
    req[..bytes.len()].copy_from_slice(bytes);
    req[16..18].copy_from_slice(&IFF_TAP_NO_PI_VNET_HDR.to_ne_bytes());
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes on
    // x86_64) at the pointer, which is `req`'s, alive and that long; the
    // descriptor is `tun`'s, open.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) };
    if r == 0 {
        return Some(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EBUSY) => Some(false),
        _ => None,
    }
}

/// Remove the namespaces made here by processes that no longer exist
/// (killed before their `Drop` ran): `torito-TAG-PID` with no process PID.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["-j", "netns", "list"]).output() else { return };
    let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) else { return };
    for name in list.iter().filter_map(|n| n["name"].as_str()) {
        if let Some(pid) = orphan_pid(name)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The pid in a name this module makes (`torito-TAG-PID`), if it is one.
fn orphan_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("torito-")?;
    let (tag, pid) = rest.rsplit_once('-')?;
    (!tag.is_empty() && !tag.contains("-pod") && !tag.contains("-cli")).then_some(())?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_names_made_here_are_orphan_candidates() {
        assert_eq!(super::orphan_pid("torito-kv-27831"), Some(27831));
        assert_eq!(super::orphan_pid("torito-net-echo-12"), Some(12));
        assert_eq!(super::orphan_pid("torito-echo-pod-12"), None);
        assert_eq!(super::orphan_pid("cni-1234"), None);
        assert_eq!(super::orphan_pid("torito-kv-x"), None);
    }
}
