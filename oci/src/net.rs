//! Wiring an appliance into its pod's network namespace: the interface CNI
//! gave the pod (the one with the default route, else the only one with an
//! IPv4 address) keeps its address, and a TAP device `torito0` is joined to
//! it by two tc `mirred` redirects (every frame arriving on the interface
//! leaves through the TAP to the guest, and the other way round). The
//! guest takes the interface's MAC, address, prefix and gateway
//! (`--net tap=torito0,mac=…`, `torito.ip=`, `torito.gw=`), so the bridge,
//! the pod IP and every peer's ARP cache stay as CNI made them.
//!
//! This is done with iproute2 (`ip -j`, `tc`), present on every container
//! node; the namespace the runtime itself runs in is never touched (see
//! [`same_as_mine`]).

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The TAP device's name in the pod's namespace.
pub const TAP: &str = "torito0";

/// The pod's interface and what the guest takes from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// Its name (`eth0`).
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway through it, if any.
    pub gw: Option<Ipv4Addr>,
    /// Its MTU (the TAP gets the same).
    pub mtu: Option<u32>,
}

impl Uplink {
    /// The monitor's `--net` value.
    pub fn net_arg(&self) -> String {
        format!("tap={TAP},mac={}", self.mac)
    }

    /// The guest's command line words.
    pub fn guest_words(&self) -> Vec<String> {
        let mut w = vec![format!("torito.ip={}/{}", self.ip, self.prefix)];
        w.extend(self.gw.map(|g| format!("torito.gw={g}")));
        w
    }
}

/// What was wired, for `delete` (kept in the state directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wired {
    /// The namespace (a path to open).
    pub netns: PathBuf,
    /// The pod's interface.
    pub uplink: Uplink,
}

/// Is the namespace at `path` the one this process is in (the runtime's
/// own, as a hostNetwork pod's is)? Compared by device and inode.
pub fn same_as_mine(path: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    id(path).is_some_and(|theirs| id(Path::new("/proc/self/ns/net")) == Some(theirs))
}

/// An iproute2 program (`ip`, `tc`), wherever the distribution puts it.
fn tool(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("`{name}` (iproute2) is needed to wire an appliance into its network namespace")
        })
}

/// Run an iproute2 command; its stdout, or its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new(tool(program)?).args(args).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The pod's interface in the current namespace, if it has one.
pub fn find_uplink() -> Result<Option<Uplink>, String> {
    // Not `-4`: that leaves out the link type and the MAC address.
    let addrs = run("ip", &["-j", "addr", "show"])?;
    let routes = run("ip", &["-j", "-4", "route", "show", "default"])?;
    Ok(pick_uplink(&addrs, &routes))
}

/// [`find_uplink`] from `ip -j addr show` and `ip -j -4 route show
/// default`.
pub fn pick_uplink(addrs: &str, routes: &str) -> Option<Uplink> {
    let addrs: Vec<serde_json::Value> = serde_json::from_str(addrs).ok()?;
    let routes: Vec<serde_json::Value> = serde_json::from_str(routes).unwrap_or_default();
    let default = routes.iter().find(|r| r["dst"] == "default");
    let inet = |a: &serde_json::Value| -> Option<serde_json::Value> {
        a["addr_info"].as_array()?.iter().find(|i| i["family"] == "inet").cloned()
    };
    let candidates: Vec<&serde_json::Value> = addrs
        .iter()
        .filter(|a| a["ifname"] != "lo" && a["ifname"] != TAP && a["link_type"] == "ether")
        .filter(|a| inet(a).is_some())
        .collect();
    let chosen = match default.and_then(|d| d["dev"].as_str()) {
        Some(dev) => candidates.iter().find(|a| a["ifname"] == dev)?,
        None if candidates.len() == 1 => candidates[0],
        None => return None,
    };
    let info = inet(chosen)?;
    Some(Uplink {
        name: chosen["ifname"].as_str()?.to_string(),
        mac: chosen["address"].as_str()?.to_string(),
        ip: info["local"].as_str()?.parse().ok()?,
        prefix: u8::try_from(info["prefixlen"].as_u64()?).ok().filter(|&p| p <= 32)?,
        gw: default.and_then(|d| d["gateway"].as_str()).and_then(|g| g.parse().ok()),
        mtu: chosen["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
    })
}

/// Join a new TAP to `uplink` (in the current namespace). What an earlier
/// container of the pod left (a monitor that was killed) is removed first.
pub fn wire(uplink: &Uplink) -> Result<(), String> {
    unwire(uplink);
    let up = uplink.name.as_str();
    run("ip", &["tuntap", "add", "dev", TAP, "mode", "tap"])?;
    // (Not from /sys: after setns it still shows the host's devices.)
    if let Some(mtu) = uplink.mtu {
        run("ip", &["link", "set", "dev", TAP, "mtu", &mtu.to_string()])?;
    }
    run("ip", &["link", "set", "dev", TAP, "up"])?;
    for (from, to) in [(up, TAP), (TAP, up)] {
        run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
        run(
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
                "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// Undo [`wire`] (best effort: what is not there is not an error).
pub fn unwire(uplink: &Uplink) {
    let _ = run("tc", &["qdisc", "del", "dev", &uplink.name, "ingress"]);
    let _ = run("ip", &["link", "del", "dev", TAP]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[
        {"ifindex":1,"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00",
         "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":3,"ifname":"eth0","link_type":"ether","address":"0a:58:0a:58:00:05","mtu":1450,
         "addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16}]},
        {"ifindex":4,"ifname":"eth1","link_type":"ether","address":"0a:58:0a:59:00:07",
         "addr_info":[{"family":"inet","local":"10.89.0.7","prefixlen":24}]}
    ]"#;

    #[test]
    fn the_interface_with_the_default_route() {
        let routes = r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]}]"#;
        let u = pick_uplink(ADDRS, routes).unwrap();
        assert_eq!(u.name, "eth0");
        assert_eq!(u.mac, "0a:58:0a:58:00:05");
        assert_eq!(u.mtu, Some(1450));
        assert_eq!(u.guest_words(), ["torito.ip=10.88.0.5/16", "torito.gw=10.88.0.1"]);
        assert_eq!(u.net_arg(), "tap=torito0,mac=0a:58:0a:58:00:05");
    }

    #[test]
    fn without_a_route_only_a_single_interface_is_taken() {
        assert_eq!(pick_uplink(ADDRS, "[]"), None, "two candidates, no route: which one?");
        let one = r#"[{"ifname":"lo","link_type":"loopback","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                      {"ifname":"eth0","link_type":"ether","address":"aa:bb:cc:dd:ee:ff",
                       "addr_info":[{"family":"inet","local":"10.0.3.2","prefixlen":24}]}]"#;
        let u = pick_uplink(one, "[]").unwrap();
        assert_eq!((u.ip, u.prefix, u.gw), ("10.0.3.2".parse().unwrap(), 24, None));
        let only_lo = r#"[{"ifname":"lo","link_type":"loopback","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]}]"#;
        assert_eq!(pick_uplink(only_lo, "[]"), None);
        assert_eq!(pick_uplink("not json", "[]"), None);
        let v6_only = r#"[{"ifname":"eth0","link_type":"ether","address":"aa:bb:cc:dd:ee:ff",
                          "addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        assert_eq!(pick_uplink(v6_only, "[]"), None, "IPv6 only: not yet");
    }

    #[test]
    fn my_own_namespace_is_recognised() {
        assert!(same_as_mine(Path::new("/proc/self/ns/net")));
        assert!(!same_as_mine(Path::new("/nonexistent")));
    }
}
