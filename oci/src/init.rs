//! The container's process between `create` and `start` (`torito-oci init
//! DIR`, as `runc init`): it enters the network namespace the spec names
//! (and joins a TAP to a pod's interface there, see [`crate::net`]),
//! tells `create` it is ready (or why not) on `sync.sock`, waits on
//! `exec.fifo` until `start` opens it, then becomes the monitor — same pid,
//! same stdio, so the shim sees the monitor's output and exit status as
//! the container's.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::bundle::{Launch, NetNs};
use crate::net::{self, Uplink, Wired};
use crate::state::{FIFO, LAUNCH, NET, SYNC};

/// What `create` hands to the container's process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The monitor to become.
    pub monitor: PathBuf,
    /// How to start it.
    pub launch: Launch,
}

/// Status when the monitor cannot be executed (as a shell's).
pub const EXIT_NO_MONITOR: u8 = 127;

/// The monitor: `$TORITO_MONITOR`, else `torito` beside this program, else
/// `torito` on `PATH`.
pub fn monitor() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("TORITO_MONITOR") {
        return Ok(PathBuf::from(p));
    }
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("torito")));
    let on_path = || {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("torito")).find(|p| p.is_file()))
    };
    beside.filter(|p| p.is_file()).or_else(on_path).ok_or_else(|| {
        Error::Runc(
            "the Torito monitor (torito) is neither beside torito-oci nor on PATH; set TORITO_MONITOR".into(),
        )
    })
}

/// Run as the container's process in state directory `dir`. Returns only
/// when something failed (the status to exit with).
pub fn run(dir: &Path) -> Result<u8, Error> {
    let path = dir.join(LAUNCH);
    let text = std::fs::read(&path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let plan: Plan =
        serde_json::from_slice(&text).map_err(|e| Error::io(format!("{} is damaged", path.display()), e))?;
    let ready = enter_namespaces(&plan.launch).and_then(|()| wire(dir, &plan.launch));
    let nic = match &ready {
        Ok(nic) => nic.clone(),
        Err(_) => None,
    };
    let sync = dir.join(SYNC);
    let mut s =
        UnixStream::connect(&sync).map_err(|e| Error::io(format!("cannot reach {}", sync.display()), e))?;
    let said = match &ready {
        Ok(_) => writeln!(s, "ok"),
        Err(e) => writeln!(s, "error: {e}"),
    };
    said.map_err(|e| Error::io("cannot answer create", e))?;
    drop(s);
    ready.map_err(|why| Error::Setup { id: String::new(), why })?;
    // Blocks until `start` opens the FIFO for reading.
    let fifo = dir.join(FIFO);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .map_err(|e| Error::io(format!("cannot open {}", fifo.display()), e))?;
    f.write_all(b"0").map_err(|e| Error::io("cannot tell start", e))?;
    drop(f);
    let e = Command::new(&plan.monitor).args(plan.launch.monitor_args(nic.as_ref())).exec();
    eprintln!("torito-oci: cannot run the monitor {}: {e}", plan.monitor.display());
    Ok(EXIT_NO_MONITOR)
}

/// In a pod's namespace, join a TAP to its interface; what the guest
/// takes from it (recorded in the state directory for `delete`).
fn wire(dir: &Path, launch: &Launch) -> Result<Option<Uplink>, String> {
    let NetNs::Join(netns) = &launch.net else { return Ok(None) };
    let Some(uplink) = net::find_uplink()? else { return Ok(None) };
    let wired = Wired { netns: netns.clone(), uplink: uplink.clone() };
    let text = serde_json::to_vec(&wired).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(NET), text).map_err(|e| format!("cannot record the wiring: {e}"))?;
    net::wire(&uplink)?;
    Ok(Some(uplink))
}

/// Enter the network namespace of the launch (a pod's, or a new one).
fn enter_namespaces(launch: &Launch) -> Result<(), String> {
    match &launch.net {
        NetNs::Host => Ok(()),
        // rustix deprecates `unshare` for the flags that change what other
        // threads share (files, fs); a new network namespace for this
        // single-threaded process is not one of them.
        #[allow(deprecated)]
        NetNs::New => rustix::thread::unshare(UnshareFlags::NEWNET)
            .map_err(|e| format!("cannot create a network namespace: {e}")),
        NetNs::Join(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot open network namespace {}: {e}", path.display()))?;
            rustix::thread::move_into_link_name_space(f.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(|e| format!("cannot join network namespace {}: {e}", path.display()))
        }
    }
}
