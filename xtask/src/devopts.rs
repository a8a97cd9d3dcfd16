//! The monitor's device options (`--disk`, `--net`, `--vsock`, `--mem`,
//! `--cpus`) for the other targets of `cargo xtask run`: QEMU's arguments
//! and Firecracker's configuration file.
//!
//! The syntax is the monitor's (`torito --help`), so one command line works
//! on every target; what a target cannot do is refused with one line that
//! says so. Pure functions: tested on the host, below.

use std::path::{Path, PathBuf};

use crate::{QemuMachine, Result};

/// A `--disk PATH[,ro][,iothread]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The image file.
    pub path: PathBuf,
    /// `,ro`: the guest may not write.
    pub readonly: bool,
    /// `,iothread`: the monitor serves it on an I/O thread.
    pub iothread: bool,
}

impl Disk {
    /// Parse the monitor's `--disk` syntax.
    pub fn parse(s: &str) -> Result<Self> {
        let mut path = s;
        let (mut readonly, mut iothread) = (false, false);
        while let Some((p, opt)) = path.rsplit_once(',') {
            match opt {
                "ro" => readonly = true,
                "iothread" => iothread = true,
                _ => break,
            }
            path = p;
        }
        if path.is_empty() {
            return Err(format!("--disk {s}: a disk needs a file: PATH[,ro][,iothread]"));
        }
        Ok(Disk { path: PathBuf::from(path), readonly, iothread })
    }
}

/// A `--net tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The host's TAP device.
    pub tap: String,
    /// The guest's MAC address (`aa:bb:cc:dd:ee:ff`), if given.
    pub mac: Option<String>,
}

impl Nic {
    /// Parse the monitor's `--net` syntax.
    pub fn parse(s: &str) -> Result<Self> {
        let (mut tap, mut mac) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_string()),
                Some(("mac", v)) if is_mac(v) => mac = Some(v.to_ascii_lowercase()),
                Some(("mac", v)) => return Err(format!("--net {s}: '{v}' is not a unicast MAC address")),
                _ => return Err(format!("--net {s}: unknown NIC option '{part}' (use tap=NAME[,mac=MAC])")),
            }
        }
        let tap = tap.ok_or_else(|| format!("--net {s}: a NIC needs a TAP device: tap=NAME[,mac=MAC]"))?;
        Ok(Nic { tap, mac })
    }
}

/// Six hexadecimal bytes separated by `:`, not a multicast address.
fn is_mac(s: &str) -> bool {
    let bytes: Vec<&str> = s.split(':').collect();
    bytes.len() == 6
        && bytes.iter().all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
        && u8::from_str_radix(bytes[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// A `--vsock cid=N,uds=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vsock {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The host side: a Unix socket (Firecracker's convention).
    pub uds: PathBuf,
}

impl Vsock {
    /// Parse the monitor's `--vsock` syntax.
    pub fn parse(s: &str) -> Result<Self> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = Some(v.parse::<u32>().ok().filter(|&c| c >= 3).ok_or_else(|| {
                        format!("--vsock {s}: the guest's cid must be a number of 3 or more")
                    })?)
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => return Err(format!("--vsock {s}: unknown vsock option '{part}' (use cid=N,uds=PATH)")),
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(Vsock { cid, uds }),
            _ => Err(format!("--vsock {s}: give both: cid=N,uds=PATH")),
        }
    }
}

/// The devices and resources of one `cargo xtask run`.
#[derive(Clone, Debug, Default)]
pub struct Devices {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Disks, in order (`/disk0`, `/disk1`, … in the guest).
    pub disks: Vec<Disk>,
    /// NICs, in order.
    pub nics: Vec<Nic>,
    /// A vsock device.
    pub vsock: Option<Vsock>,
}

/// `128M`, `1G`, `512` (MiB) → MiB.
pub fn parse_mem_mib(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("--mem {s}: not a size (e.g. 128M, 1G)"))?;
    let mib = match unit.trim_end_matches(['b', 'B']).trim_end_matches('i') {
        "" | "m" | "M" => Some(n),
        "g" | "G" => n.checked_mul(1024),
        _ => return Err(format!("--mem {s}: use M or G (e.g. 128M, 1G)")),
    };
    mib.filter(|&m| m > 0).ok_or_else(|| format!("--mem {s}: out of range"))
}

/// QEMU's arguments for `devices` on `machine` (beyond `-m` and `-smp`,
/// which [`crate::qemu`]'s callers add): virtio-mmio devices on microvm
/// (named on the kernel command line, where the kernel looks for them:
/// `acpi=off`), virtio-pci elsewhere.
pub fn qemu_args(machine: QemuMachine, devices: &Devices) -> Result<Vec<String>> {
    let mmio = machine == QemuMachine::MicrovmKvm;
    let mut a: Vec<String> = Vec::new();
    if devices.vsock.is_some() {
        return Err(
            "--vsock: QEMU's vsock (vhost-vsock) has no Unix-socket host side; use the Torito monitor or \
                    --firecracker"
                .into(),
        );
    }
    if mmio && (!devices.disks.is_empty() || !devices.nics.is_empty()) {
        a.extend(["-machine", "acpi=off"].map(String::from));
    }
    for (n, d) in devices.disks.iter().enumerate() {
        if d.iothread {
            return Err(format!(
                "--disk {}: ',iothread' is the Torito monitor's; QEMU serves disks its own way (leave it out)",
                d.path.display()
            ));
        }
        let ro = if d.readonly { ",readonly=on" } else { "" };
        a.push("-drive".into());
        a.push(format!("file={},format=raw,if=none,id=disk{n}{ro}", qemu_escape(&d.path)));
        a.push("-device".into());
        a.push(format!("{},drive=disk{n}", if mmio { "virtio-blk-device" } else { "virtio-blk-pci" }));
    }
    for (n, nic) in devices.nics.iter().enumerate() {
        a.push("-netdev".into());
        a.push(format!("tap,id=net{n},ifname={},script=no,downscript=no", nic.tap));
        let mac = nic.mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default();
        a.push("-device".into());
        a.push(format!("{},netdev=net{n}{mac}", if mmio { "virtio-net-device" } else { "virtio-net-pci" }));
    }
    Ok(a)
}

/// A path in a QEMU option value: `,` is doubled.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Firecracker's configuration file (`--config-file`) for booting `elf` (a
/// PVH build) with `cmdline` and `devices`. Firecracker cannot share a
/// host directory (no virtio-fs): shares are refused by the caller.
pub fn firecracker_config(elf: &Path, cmdline: &str, devices: &Devices) -> Result<String> {
    use serde_json::json;
    let abs = |p: &Path| -> Result<String> {
        std::path::absolute(p).map(|p| p.display().to_string()).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut drives = Vec::new();
    for (n, d) in devices.disks.iter().enumerate() {
        if d.iothread {
            return Err(format!(
                "--disk {}: ',iothread' is the Torito monitor's; Firecracker serves disks its own way (leave it out)",
                d.path.display()
            ));
        }
        drives.push(json!({
            "drive_id": format!("disk{n}"),
            "path_on_host": abs(&d.path)?,
            "is_root_device": false,
            "is_read_only": d.readonly,
        }));
    }
    let mut nics = Vec::new();
    for (n, nic) in devices.nics.iter().enumerate() {
        let mut i = json!({ "iface_id": format!("net{n}"), "host_dev_name": nic.tap });
        if let Some(mac) = &nic.mac {
            i["guest_mac"] = json!(mac);
        }
        nics.push(i);
    }
    let mut cfg = json!({
        "boot-source": { "kernel_image_path": abs(elf)?, "boot_args": cmdline },
        "drives": drives,
        "network-interfaces": nics,
        "machine-config": { "vcpu_count": devices.cpus, "mem_size_mib": devices.mem_mib },
    });
    if let Some(v) = &devices.vsock {
        cfg["vsock"] = json!({ "guest_cid": v.cid, "uds_path": abs(&v.uds)? });
    }
    serde_json::to_string_pretty(&cfg).map_err(|e| format!("writing Firecracker's configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitors_syntax_parses() {
        assert_eq!(
            Disk::parse("a,b.img,ro,iothread").unwrap(),
            Disk { path: "a,b.img".into(), readonly: true, iothread: true }
        );
        assert!(Disk::parse(",ro").is_err());
        assert_eq!(
            Nic::parse("tap=tap0,mac=52:54:00:AB:cd:01").unwrap(),
            Nic { tap: "tap0".into(), mac: Some("52:54:00:ab:cd:01".into()) }
        );
        assert!(Nic::parse("mac=52:54:00:ab:cd:01").unwrap_err().contains("needs a TAP device"));
        assert!(Nic::parse("tap=t,mac=01:00:00:00:00:00").unwrap_err().contains("unicast"));
        assert!(Nic::parse("tap=t,queues=2").unwrap_err().contains("unknown NIC option 'queues=2'"));
        assert_eq!(Vsock::parse("cid=3,uds=/tmp/v").unwrap(), Vsock { cid: 3, uds: "/tmp/v".into() });
        assert!(Vsock::parse("cid=2,uds=/tmp/v").unwrap_err().contains("3 or more"));
        assert!(Vsock::parse("cid=3").unwrap_err().contains("give both"));
        assert_eq!(parse_mem_mib("128M").unwrap(), 128);
        assert_eq!(parse_mem_mib("1G").unwrap(), 1024);
        assert_eq!(parse_mem_mib("256").unwrap(), 256);
        assert!(parse_mem_mib("12T").is_err() && parse_mem_mib("0").is_err() && parse_mem_mib("M").is_err());
    }

    fn devices() -> Devices {
        Devices {
            mem_mib: 256,
            cpus: 2,
            disks: vec![Disk::parse("d,1.img,ro").unwrap()],
            nics: vec![
                Nic::parse("tap=tap0,mac=52:54:00:00:00:02").unwrap(),
                Nic::parse("tap=tap1").unwrap(),
            ],
            vsock: None,
        }
    }

    #[test]
    fn qemu_gets_mmio_devices_on_microvm_and_pci_elsewhere() {
        let a = qemu_args(QemuMachine::MicrovmKvm, &devices()).unwrap().join(" ");
        assert_eq!(
            a,
            "-machine acpi=off -drive file=d,,1.img,format=raw,if=none,id=disk0,readonly=on \
             -device virtio-blk-device,drive=disk0 \
             -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
             -device virtio-net-device,netdev=net0,mac=52:54:00:00:00:02 \
             -netdev tap,id=net1,ifname=tap1,script=no,downscript=no -device virtio-net-device,netdev=net1"
        );
        let a = qemu_args(QemuMachine::PcTcg, &devices()).unwrap().join(" ");
        assert!(!a.contains("acpi=off") && a.contains("virtio-net-pci,netdev=net1"), "{a}");
        assert!(qemu_args(QemuMachine::MicrovmKvm, &Devices::default()).unwrap().is_empty());
        let mut d = devices();
        d.disks[0].iothread = true;
        assert!(qemu_args(QemuMachine::MicrovmKvm, &d).unwrap_err().contains("leave it out"));
        d.vsock = Some(Vsock::parse("cid=3,uds=v").unwrap());
        assert!(qemu_args(QemuMachine::MicrovmKvm, &d).unwrap_err().contains("--vsock"));
    }

    #[test]
    fn firecracker_gets_its_configuration_file() {
        let mut d = devices();
        d.vsock = Some(Vsock::parse("cid=5,uds=/run/v.sock").unwrap());
        let cfg: serde_json::Value =
            serde_json::from_str(&firecracker_config(Path::new("/x/app"), "a b", &d).unwrap()).unwrap();
        assert_eq!(cfg["boot-source"]["kernel_image_path"], "/x/app");
        assert_eq!(cfg["boot-source"]["boot_args"], "a b");
        assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
        assert_eq!(cfg["machine-config"]["mem_size_mib"], 256);
        assert_eq!(cfg["drives"][0]["drive_id"], "disk0");
        assert_eq!(cfg["drives"][0]["is_read_only"], true);
        assert!(cfg["drives"][0]["path_on_host"].as_str().unwrap().ends_with("/d,1.img"));
        assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap0");
        assert_eq!(cfg["network-interfaces"][0]["guest_mac"], "52:54:00:00:00:02");
        assert!(cfg["network-interfaces"][1].get("guest_mac").is_none());
        assert_eq!(cfg["vsock"]["guest_cid"], 5);
        assert_eq!(cfg["vsock"]["uds_path"], "/run/v.sock");
    }
}
