//! From a bundle's `config.json` (the OCI runtime spec) to what the monitor
//! is started with: a [`Launch`], or `None` when the container is not an
//! appliance (runc's).
//!
//! What an appliance takes from the spec: `process.args` (the ELF, then
//! the guest's command line), `root.path`, the network namespace (joined
//! when it has a path, a new one otherwise; none in the spec: the
//! runtime's own), `linux.resources.memory.limit` (guest RAM leaves
//! [`MONITOR_HEADROOM`] of it to the monitor), `linux.cgroupsPath` with the
//! memory, pids and CPU limits, and
//! from the environment `TORITO_MEM` (guest RAM when there is no limit),
//! `TORITO_CPUS` and `TORITO_APPLIANCE` (with which a command that names
//! no appliance — `ctr run IMAGE ID a b` replaces the entrypoint — gives
//! its words to the image's `/appliance.elf`). Everything else (mounts, users,
//! capabilities, other namespaces) is about a Linux process the appliance
//! does not have.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::{Error, appliance};

/// What the monitor process needs beyond guest RAM, out of a memory limit.
pub const MONITOR_HEADROOM: u64 = 8 << 20;

/// Guest RAM when neither the spec nor the image says (the monitor's own
/// default).
pub const DEFAULT_MEM: u64 = 128 << 20;

/// The least guest RAM an appliance is given.
pub const MIN_MEM: u64 = 16 << 20;

/// Where `cargo xtask image` puts the ELF in an image's root.
pub const IMAGE_ELF: &str = "appliance.elf";

/// CRI's annotation naming a pod's sandbox (pause) container.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The network namespace of an appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetNs {
    /// The runtime's own (no network namespace in the spec).
    Host,
    /// A new, empty one.
    New,
    /// The one at this path (a pod's).
    Join(PathBuf),
}

/// How to start the monitor for an appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The appliance ELF, a host path inside the root file system.
    pub elf: PathBuf,
    /// The guest's command line words (`args[1..]`).
    pub guest_args: Vec<String>,
    /// Guest RAM, bytes.
    pub mem: u64,
    /// vCPUs.
    pub cpus: u32,
    /// The network namespace.
    pub net: NetNs,
    /// `linux.cgroupsPath`, when given.
    pub cgroups_path: Option<String>,
    /// The cgroup limits of `linux.resources`.
    pub limits: crate::cgroup::Limits,
    /// The root file system (host path).
    pub rootfs: PathBuf,
}

/// Read `bundle/config.json`; the launch of an appliance, `None` for any
/// other container.
pub fn plan(bundle: &Path) -> Result<Option<Launch>, Error> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| Error::Bundle { path: path.clone(), why: e.to_string() })?;
    plan_spec(&spec, bundle).map_err(|why| Error::Bundle { path, why })
}

/// [`plan`] of a parsed spec; errors are reasons.
pub fn plan_spec(spec: &Spec, bundle: &Path) -> Result<Option<Launch>, String> {
    let sandbox =
        spec.annotations().as_ref().and_then(|a| a.get(CRI_CONTAINER_TYPE)).is_some_and(|t| t == "sandbox");
    let (Some(process), Some(root)) = (spec.process(), spec.root()) else { return Ok(None) };
    let Some(args) = process.args().as_ref().filter(|a| !a.is_empty() && !sandbox) else { return Ok(None) };
    let env = |name: &str| {
        process.env().as_ref().and_then(|env| {
            env.iter().rev().find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        })
    };
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    let marked = env("TORITO_APPLIANCE").is_some_and(|v| v == "1");
    let resolved = appliance::resolve(&rootfs, &args[0], env("PATH"));
    let image_elf = rootfs.join(IMAGE_ELF);
    let (elf, guest_args) = match resolved {
        Some(elf) if appliance::has_note(&elf) => (elf, &args[1..]),
        // `ctr run IMAGE ID a b` replaces the whole command (Docker and
        // Kubernetes keep the entrypoint): the image's ELF, `a b` for it.
        _ if marked && appliance::has_note(&image_elf) => (image_elf, &args[..]),
        // The image says it is one: the monitor names what is wrong with
        // its ELF (missing: status 66, not an appliance: 65).
        resolved if marked => {
            (resolved.unwrap_or_else(|| rootfs.join(args[0].trim_start_matches('/'))), &args[1..])
        }
        _ => return Ok(None),
    };
    if process.terminal() == Some(true) {
        return Err(
            "a terminal (ctr run -t, kubectl run -it) is not supported for appliances; run without one"
                .into(),
        );
    }
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let memory_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok())
        .filter(|&l| l > 0);
    let image_mem = env("TORITO_MEM")
        .map(|v| parse_size(v).ok_or(format!("TORITO_MEM={v}: not a size like 128M")))
        .transpose()?;
    let mem = guest_mem(memory_limit, image_mem)?;
    let cpus = match env("TORITO_CPUS") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|&n| (1..=64).contains(&n))
            .ok_or(format!("TORITO_CPUS={v}: not 1 to 64"))?,
        None => 1,
    };
    let net = match linux
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
    {
        None => NetNs::Host,
        // The runtime's own namespace (a hostNetwork pod's) is never rewired.
        Some(n) => match n.path() {
            Some(p) if crate::net::same_as_mine(p) => NetNs::Host,
            Some(p) => NetNs::Join(p.clone()),
            None => NetNs::New,
        },
    };
    Ok(Some(Launch {
        elf,
        guest_args: guest_args.to_vec(),
        mem,
        cpus,
        net,
        cgroups_path: linux.and_then(|l| l.cgroups_path().as_ref()).map(|p| p.to_string_lossy().into_owned()),
        limits: crate::cgroup::Limits {
            memory: memory_limit,
            pids: resources.and_then(|r| r.pids().as_ref()).map(|p| p.limit()),
            cpu_quota: resources.and_then(|r| r.cpu().as_ref()).and_then(|c| c.quota()),
            cpu_period: resources.and_then(|r| r.cpu().as_ref()).and_then(|c| c.period()),
        },
        rootfs,
    }))
}

/// Guest RAM: with a memory limit, the limit less the monitor's headroom
/// (what the user asked the pod to have); without, the image's default
/// (`TORITO_MEM`) or the monitor's.
pub fn guest_mem(limit: Option<u64>, image: Option<u64>) -> Result<u64, String> {
    let Some(limit) = limit else { return Ok(image.unwrap_or(DEFAULT_MEM).max(MIN_MEM)) };
    let room = limit.saturating_sub(MONITOR_HEADROOM);
    if room < MIN_MEM {
        return Err(format!(
            "memory limit {} MiB leaves less than {} MiB for the guest after the monitor's {} MiB",
            limit >> 20,
            MIN_MEM >> 20,
            MONITOR_HEADROOM >> 20
        ));
    }
    // Whole MiB, as the monitor's --mem wants them.
    Ok(room & !((1 << 20) - 1))
}

/// `128M`, `1G`, `65536K` or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 10),
        'M' | 'm' => (&s[..s.len() - 1], 20),
        'G' | 'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl Launch {
    /// The monitor's arguments (after its path), with a NIC on the pod's
    /// interface when there is one.
    pub fn monitor_args(&self, nic: Option<&crate::net::Uplink>) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--mem".into(),
            format!("{}M", self.mem >> 20).into(),
            "--cpus".into(),
            self.cpus.to_string().into(),
        ];
        if let Some(nic) = nic {
            a.extend(["--net".into(), nic.net_arg().into()]);
        }
        a.push(self.elf.clone().into());
        let words: Vec<String> =
            self.guest_args.iter().cloned().chain(nic.map(|n| n.guest_words()).unwrap_or_default()).collect();
        if !words.is_empty() {
            a.push("--".into());
            a.extend(words.into_iter().map(Into::into));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn bundle_with(tag: &str, file: &[u8]) -> PathBuf {
        let b = std::env::temp_dir().join(format!("torito-oci-bundle-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("rootfs/appliance.elf"), file).unwrap();
        b
    }

    fn base(env: &[&str], extra: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": ["/appliance.elf", "a", "b=c"], "cwd": "/", "env": env, "user": { "uid": 0, "gid": 0 } },
            "root": { "path": "rootfs" },
            "linux": { "namespaces": [{ "type": "pid" }, { "type": "network" }] },
        });
        if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in x {
                o.insert(k.clone(), val.clone());
            }
        }
        spec(v)
    }

    #[test]
    fn a_marked_image_is_an_appliance_even_with_a_broken_elf() {
        let b = bundle_with("marked", b"not an elf");
        let l = plan_spec(&base(&["TORITO_APPLIANCE=1", "TORITO_MEM=64M"], serde_json::json!({})), &b)
            .unwrap()
            .expect("an appliance");
        assert_eq!(l.elf, b.join("rootfs/appliance.elf"));
        assert_eq!(l.guest_args, ["a", "b=c"]);
        assert_eq!(l.mem, 64 << 20);
        assert_eq!(l.net, NetNs::New);
        let args: Vec<_> = l.monitor_args(None).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args[..4], ["--mem", "64M", "--cpus", "1"]);
        assert_eq!(args[5..], ["--", "a", "b=c"]);
        let _ = std::fs::remove_dir_all(&b);
    }

    #[test]
    fn other_containers_and_pause_are_runcs() {
        let b = bundle_with("plain", b"#!/bin/sh\n");
        assert_eq!(plan_spec(&base(&[], serde_json::json!({})), &b).unwrap(), None);
        let pause = base(
            &["TORITO_APPLIANCE=1"],
            serde_json::json!({ "annotations": { "io.kubernetes.cri.container-type": "sandbox" } }),
        );
        assert_eq!(plan_spec(&pause, &b).unwrap(), None);
        let _ = std::fs::remove_dir_all(&b);
    }

    #[test]
    fn a_pod_namespace_is_joined_and_the_limit_bounds_guest_ram() {
        let b = bundle_with("pod", b"x");
        let s = base(
            &["TORITO_APPLIANCE=1", "TORITO_CPUS=2"],
            serde_json::json!({ "linux": {
                "namespaces": [{ "type": "network", "path": "/var/run/netns/cni-1" }],
                "cgroupsPath": "/kubepods/pod1/c1",
                "resources": { "memory": { "limit": 64 << 20 }, "pids": { "limit": 32 }, "cpu": { "quota": 50000, "period": 100000 } },
            }}),
        );
        let l = plan_spec(&s, &b).unwrap().unwrap();
        assert_eq!(l.net, NetNs::Join("/var/run/netns/cni-1".into()));
        assert_eq!(l.mem, 56 << 20);
        assert_eq!(l.cpus, 2);
        assert_eq!(l.cgroups_path.as_deref(), Some("/kubepods/pod1/c1"));
        let limits = crate::cgroup::Limits {
            memory: Some(64 << 20),
            pids: Some(32),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
        };
        assert_eq!(l.limits, limits);
        let host = base(&["TORITO_APPLIANCE=1"], serde_json::json!({ "linux": { "namespaces": [] } }));
        assert_eq!(plan_spec(&host, &b).unwrap().unwrap().net, NetNs::Host);
        let mine = base(
            &["TORITO_APPLIANCE=1"],
            serde_json::json!({ "linux": { "namespaces": [{ "type": "network", "path": "/proc/self/ns/net" }] } }),
        );
        assert_eq!(
            plan_spec(&mine, &b).unwrap().unwrap().net,
            NetNs::Host,
            "the runtime's own is never joined"
        );
        let nic = crate::net::Uplink {
            name: "eth0".into(),
            mac: "0a:58:0a:58:00:05".into(),
            ip: "10.88.0.5".parse().unwrap(),
            prefix: 16,
            gw: None,
            mtu: None,
        };
        let args: Vec<_> = l.monitor_args(Some(&nic)).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args[4..6], ["--net", "tap=torito0,mac=0a:58:0a:58:00:05"]);
        assert_eq!(args.last().unwrap(), "torito.ip=10.88.0.5/16");
        let _ = std::fs::remove_dir_all(&b);
    }

    #[test]
    fn bad_settings_are_said() {
        let b = bundle_with("bad", b"x");
        let e = plan_spec(&base(&["TORITO_APPLIANCE=1", "TORITO_MEM=lots"], serde_json::json!({})), &b);
        assert!(e.unwrap_err().contains("TORITO_MEM=lots"));
        let tty = base(&["TORITO_APPLIANCE=1"], serde_json::json!({}));
        let mut tty = tty;
        if let Some(p) = tty.process_mut() {
            p.set_terminal(Some(true));
        }
        assert!(plan_spec(&tty, &b).unwrap_err().contains("terminal"));
        assert!(guest_mem(Some(20 << 20), None).unwrap_err().contains("memory limit 20 MiB"));
        assert_eq!(guest_mem(None, None).unwrap(), 128 << 20);
        assert_eq!(guest_mem(Some(1 << 30), Some(256 << 20)).unwrap(), 1016 << 20, "the limit wins");
        assert_eq!(guest_mem(None, Some(256 << 20)).unwrap(), 256 << 20);
        assert_eq!(guest_mem(Some((64 << 20) + 12345), None).unwrap(), 56 << 20, "whole MiB");
        let _ = std::fs::remove_dir_all(&b);
    }
}
