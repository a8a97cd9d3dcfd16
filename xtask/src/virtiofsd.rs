//! QEMU's side of a share: a `virtiofsd` daemon serving a host directory
//! over a vhost-user socket, and the QEMU options that attach it as a
//! virtio-fs device. The Torito monitor serves shares itself
//! (`--share DIR[,tag=NAME]`); QEMU needs this daemon and guest RAM that
//! the daemon can map (a shared memfd).
//!
//! Two daemons are known: the C one QEMU shipped until 8.0
//! (`/usr/lib/qemu/virtiofsd`, Debian 12's `qemu-system-common`) and the
//! Rust one (`/usr/libexec/virtiofsd`, Debian's `virtiofsd` package).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::group::{self, GroupChild};
use crate::{QemuMachine, Result};

/// The daemon binaries looked for, C first (Debian 12 has it with QEMU).
const CANDIDATES: [&str; 2] = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];

/// The installed daemon, if any.
pub fn find() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A running daemon for one share; killed (with its whole process group)
/// when dropped.
pub struct Virtiofsd {
    _child: GroupChild,
    socket: PathBuf,
    tag: String,
}

impl Virtiofsd {
    /// Serve `dir` as `tag` on a socket in `run_dir`; returns once the
    /// socket is there (at most 10 s).
    pub fn start(dir: &Path, tag: &str, run_dir: &Path) -> Result<Self> {
        let bin = find().ok_or(
            "virtiofsd is not installed (Debian 12: apt-get install qemu-system-common; later: virtiofsd)",
        )?;
        if !dir.is_dir() {
            return Err(format!("share {}: not a directory", dir.display()));
        }
        let dir = dir.canonicalize().map_err(|e| format!("share {}: {e}", dir.display()))?;
        std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let socket = run_dir.join(format!("virtiofsd-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut c = Command::new(&bin);
        c.arg(format!("--socket-path={}", socket.display()));
        if bin.starts_with("/usr/lib/qemu") {
            // The C daemon: FUSE-style -o options.
            c.args([
                "-o",
                &format!("source={}", dir.display()),
                "-o",
                "cache=always",
                "-o",
                "sandbox=chroot",
            ]);
        } else {
            c.arg(format!("--shared-dir={}", dir.display())).args(["--cache=always", "--sandbox=chroot"]);
        }
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = group::spawn(&mut c).map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not make its socket {} within 10 s",
                    bin.display(),
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Self { _child: child, socket, tag: tag.to_string() })
    }

    /// QEMU options for this share as device number `n`: the socket and
    /// the device (virtio-mmio on microvm, PCI elsewhere).
    pub fn qemu_args(&self, machine: QemuMachine, n: usize) -> Vec<String> {
        let device =
            if machine == QemuMachine::MicrovmKvm { "vhost-user-fs-device" } else { "vhost-user-fs-pci" };
        vec![
            "-chardev".into(),
            format!("socket,id=fs{n},path={}", self.socket.display()),
            "-device".into(),
            format!("{device},chardev=fs{n},tag={}", self.tag),
        ]
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// QEMU options every share needs once: guest RAM of `mem` in a shared
/// memfd the daemon maps, and on microvm the modern virtio-mmio transport
/// (virtio-fs has no legacy form) named on the kernel command line, where
/// the kernel looks for devices (`acpi=off`). `mem` must equal QEMU's `-m`.
pub fn qemu_common_args(machine: QemuMachine, mem: &str) -> Vec<String> {
    let mut a = vec![
        "-object".into(),
        format!("memory-backend-memfd,id=shm,size={mem},share=on"),
        "-machine".into(),
        "memory-backend=shm".into(),
    ];
    if machine == QemuMachine::MicrovmKvm {
        a.extend(["-machine", "acpi=off", "-global", "virtio-mmio.force-legacy=false"].map(String::from));
    }
    a
}

/// `DIR[,tag=NAME]` of `cargo xtask run --share` (the monitor's syntax;
/// the tag defaults to the directory's name): (directory, tag).
pub fn parse_share(s: &str) -> Result<(PathBuf, String)> {
    let mut parts = s.split(',');
    let dir = PathBuf::from(
        parts.next().filter(|d| !d.is_empty()).ok_or("a share needs a directory: DIR[,tag=NAME]")?,
    );
    let mut tag = None;
    for p in parts {
        match p.split_once('=') {
            Some(("tag", t)) if !t.is_empty() => tag = Some(t.to_string()),
            _ if p == "ro" => {
                return Err("virtiofsd shares are read-write; ',ro' is for the Torito monitor".into());
            }
            _ => return Err(format!("unknown share option '{p}' (options: tag=NAME)")),
        }
    }
    let tag = match tag {
        Some(t) => t,
        None => dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| format!("share {}: not a directory", dir.display()))?,
    };
    Ok((dir, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse() {
        let (d, t) = parse_share("/tmp,tag=www").unwrap();
        assert_eq!((d, t.as_str()), (PathBuf::from("/tmp"), "www"));
        assert_eq!(parse_share("/tmp").unwrap().1, "tmp");
        assert!(parse_share("/tmp,ro").unwrap_err().contains("read-write"));
        assert!(parse_share("/tmp,cache=none").unwrap_err().contains("unknown share option"));
        assert!(parse_share("").is_err());
    }
}
