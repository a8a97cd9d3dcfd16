//! What a run is asked to do: the parsed command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::devices::virtio::blk::DiskConfig;
pub use crate::devices::virtio::fs::ShareConfig;
pub use crate::devices::virtio::net::NetConfig;
pub use crate::devices::virtio::vsock::VsockConfig;

/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 128 << 20;

/// How `--timeline` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimelineFormat {
    /// A table for people.
    Human,
    /// One JSON object for tools.
    Json,
    /// One JSON object with the events alone: none of the figures (the
    /// vCPU's statistics, resident memory) is collected, which adds ~0.1 ms
    /// between the guest's stop and the monitor's exit here.
    JsonEvents,
}

impl TimelineFormat {
    /// Whether the run's figures are collected as it ends.
    pub fn figures(self) -> bool {
        self != TimelineFormat::JsonEvents
    }
}

/// Configuration of one guest run.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Kernel command line.
    pub cmdline: String,
    /// Print a timeline to stderr at the end.
    pub timeline: Option<TimelineFormat>,
    /// KVM device node (default `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Virtio block devices, in order.
    pub disks: Vec<DiskConfig>,
    /// Virtio network devices, in order.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// Shared host directories (virtio-fs), in order.
    pub shares: Vec<ShareConfig>,
    /// `--core PATH`: where to write a core file when the guest panics,
    /// faults or crashes.
    pub core: Option<PathBuf>,
    /// `--gdb ADDR`: serve gdb there.
    pub gdb: Option<crate::gdb::GdbAddr>,
    /// `--seccomp`: what the threads' filters do with a forbidden call.
    pub seccomp: crate::sandbox::SeccompMode,
    /// `--teardown`: who frees the VM and its memory after the guest stops.
    pub teardown: Teardown,
}

/// Who frees the VM and its memory once the guest has stopped
/// (`vstate::keeper`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Teardown {
    /// The monitor's process, as it exits.
    #[default]
    InProcess,
    /// A process that outlives the monitor by a millisecond or so: the
    /// monitor's parent learns the status without waiting for the freeing.
    /// The system's init, or the nearest subreaper, reaps it: only where
    /// one does (no file tells; a PID 1 that catches `SIGCHLD` may never
    /// wait), so not the default.
    Keeper,
}

impl VmConfig {
    /// A configuration with defaults for `kernel`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            mem: DEFAULT_MEM,
            timeout: None,
            cmdline: String::new(),
            timeline: None,
            kvm_device: PathBuf::from("/dev/kvm"),
            cpus: 1,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            shares: Vec::new(),
            core: None,
            gdb: None,
            seccomp: crate::sandbox::SeccompMode::On,
            teardown: Teardown::InProcess,
        }
    }

    /// Where guest console output goes.
    pub fn console_out(&self) -> Box<dyn Write + Send> {
        Box::new(std::io::stdout())
    }
}

/// Parse a size such as `128M`, `1G`, `4096K`, `65536` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].trim_end_matches(['b', 'B']).trim_end_matches(['i']);
            let mult = match unit {
                "" => 1,
                "k" | "K" => 1 << 10,
                "m" | "M" => 1 << 20,
                "g" | "G" => 1 << 30,
                _ => return Err(format!("unknown size unit in '{s}' (use K, M or G)")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (e.g. 128M, 1G)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parse a vCPU count (at least 1; the upper bound depends on the host and
/// the kernel, checked when the VM is made).
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("a guest needs at least 1 vCPU".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of vCPUs (e.g. 2)")),
    }
}

/// Parse a duration such as `500ms`, `2s`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("'{s}' is not a duration (e.g. 10, 500ms, 2s)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("duration '{s}' must be positive"));
    }
    // Found by the fuzzer: `from_secs_f64` panics past `Duration::MAX`.
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("duration '{s}' is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("2"), Ok(2));
        assert!(parse_cpus("0").unwrap_err().contains("at least 1"));
        assert!(parse_cpus("two").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        // Found by the fuzzer: it panicked.
        assert_eq!(parse_duration("1e30ms"), Err("duration '1e30ms' is too long".into()));
    }
}
