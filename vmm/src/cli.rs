//! The `torito` command line: its options (clap) and the run they ask for.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{
    DiskConfig, NetConfig, ShareConfig, Teardown, TimelineFormat, VmConfig, VsockConfig, parse_cpus,
    parse_duration, parse_size,
};
use crate::sandbox::SeccompMode;

/// Boot a Torito appliance ELF on KVM.
#[derive(Parser, Debug)]
#[command(name = "torito", version, about, long_about = None)]
pub struct Cli {
    /// The appliance ELF (built with `cargo xtask build <app>`).
    pub elf: PathBuf,
    /// Guest RAM, e.g. 128M or 1G.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    pub mem: u64,
    /// Number of vCPUs (secondary ones start when the kernel asks).
    #[arg(long, default_value = "1", value_parser = parse_cpus)]
    pub cpus: u32,
    /// A virtio-blk disk backed by a host file; `,ro` refuses writes;
    /// `,iothread` serves it on an I/O thread (for guests that poll, with
    /// `devices.poll`). Repeat for more disks.
    #[arg(long = "disk", value_name = "PATH[,ro][,iothread]", value_parser = DiskConfig::parse)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net NIC on an existing TAP device. Repeat for more NICs.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = NetConfig::parse)]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device whose host side is the Unix socket PATH
    /// (connect and write `CONNECT <port>\n`; guest connections to host
    /// port P reach PATH_P).
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = VsockConfig::parse)]
    pub vsock: Option<VsockConfig>,
    /// Share a host directory with the guest (virtio-fs), mounted at
    /// `/<tag>` (default tag: the directory's name); `,ro` refuses changes.
    /// Repeat for more.
    #[arg(long = "share", value_name = "DIR[,tag=NAME][,ro]", value_parser = ShareConfig::parse)]
    pub shares: Vec<ShareConfig>,
    /// Stop the guest after this long (e.g. 10, 500ms); exit status 124.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Kernel command line (alternative to the words after `--`).
    #[arg(long, conflicts_with = "args")]
    pub cmdline: Option<String>,
    /// Print where the time went, on stderr: `--timeline`, `--timeline=json`,
    /// or `--timeline=json-events` (the events alone: no figures collected
    /// as the run ends).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "human", value_enum)]
    pub timeline: Option<TimelineFormat>,
    /// When the guest panics, faults or crashes, write an ELF core file of
    /// it to PATH (`gdb <ELF> PATH`: `bt`, `info threads`).
    #[arg(long, value_name = "PATH")]
    pub core: Option<PathBuf>,
    /// Serve gdb at ADDR (`127.0.0.1:PORT`, `:PORT` or a Unix socket
    /// path): the guest waits before its first instruction until gdb
    /// continues (`gdb <ELF> -ex 'target remote ADDR'`).
    #[arg(long, value_name = "ADDR", value_parser = crate::gdb::parse_addr)]
    pub gdb: Option<crate::gdb::GdbAddr>,
    /// What each thread's seccomp filter does with a system call it
    /// forbids: `on` kills the monitor (SIGSYS, with a line on stderr),
    /// `log` lets it through and has the kernel log it (`dmesg`), `off`
    /// installs no filter (`--no-seccomp`).
    #[arg(long, value_enum, default_value = "on", value_name = "on|log|off")]
    pub seccomp: SeccompMode,
    /// Run without seccomp filters (for debugging; said on stderr).
    #[arg(long, conflicts_with = "seccomp")]
    pub no_seccomp: bool,
    /// Who frees the VM and its memory after the guest stops: `in-process`,
    /// the monitor as it exits; `keeper`, a process that outlives the
    /// monitor by a millisecond or so, so that the monitor's parent learns
    /// the status sooner (give it only where orphans are reaped: init, a
    /// subreaper, `docker run --init`; elsewhere it stays a zombie).
    #[arg(long, value_enum, default_value = "in-process", value_name = "in-process|keeper")]
    pub teardown: Teardown,
    /// Boot nothing: copy stdin to stdout, naming the function and line of
    /// each backtrace frame (`#N 0xADDR`) and faulting `rip=0xADDR` in it
    /// from ELF (for a log of the same ELF on QEMU or Firecracker).
    #[arg(long)]
    pub symbolize: bool,
    /// Kernel command line words.
    #[arg(last = true)]
    pub args: Vec<String>,
}

impl Cli {
    /// The run these options ask for.
    pub fn config(&self) -> VmConfig {
        let mut cfg = VmConfig::new(&self.elf);
        cfg.mem = self.mem;
        cfg.timeout = self.timeout;
        cfg.cpus = self.cpus;
        cfg.disks = self.disks.clone();
        cfg.nets = self.nets.clone();
        cfg.vsock = self.vsock.clone();
        cfg.shares = self.shares.clone();
        cfg.cmdline = self.cmdline.clone().unwrap_or_else(|| self.args.join(" "));
        cfg.timeline = self.timeline;
        cfg.core = self.core.clone();
        cfg.gdb = self.gdb.clone();
        cfg.seccomp = if self.no_seccomp { SeccompMode::Off } else { self.seccomp };
        cfg.teardown = self.teardown;
        cfg
    }
}
