//! `torito`: boot a Torito appliance on KVM.
//!
//! ```text
//! torito [OPTIONS] <ELF> [-- <kernel command line>...]
//! torito --symbolize <ELF> < LOG      (names a backtrace's functions and lines)
//! ```
//! Guest console output goes to stdout; the process exits with the guest's
//! exit code, or with a distinct status when something else stopped it
//! (see `vmm::error`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use torito_vmm::config::{
    DiskConfig, NetConfig, ShareConfig, TimelineFormat, VsockConfig, parse_cpus, parse_duration, parse_size,
};
use torito_vmm::timeline::{Phase, Timeline};
use torito_vmm::{Error, VmConfig};

/// Boot a Torito appliance ELF on KVM.
#[derive(Parser, Debug)]
#[command(name = "torito", version, about, long_about = None)]
struct Cli {
    /// The appliance ELF (built with `cargo xtask build <app>`).
    elf: PathBuf,
    /// Guest RAM, e.g. 128M or 1G.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    mem: u64,
    /// Number of vCPUs (secondary ones start when the kernel asks).
    #[arg(long, default_value = "1", value_parser = parse_cpus)]
    cpus: u32,
    /// A virtio-blk disk backed by a host file; `,ro` refuses writes;
    /// `,iothread` serves it on an I/O thread (for guests that poll, with
    /// `devices.poll`). Repeat for more disks.
    #[arg(long = "disk", value_name = "PATH[,ro][,iothread]", value_parser = DiskConfig::parse)]
    disks: Vec<DiskConfig>,
    /// A virtio-net NIC on an existing TAP device. Repeat for more NICs.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = NetConfig::parse)]
    nets: Vec<NetConfig>,
    /// A virtio-vsock device whose host side is the Unix socket PATH
    /// (connect and write `CONNECT <port>\n`; guest connections to host
    /// port P reach PATH_P).
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = VsockConfig::parse)]
    vsock: Option<VsockConfig>,
    /// Share a host directory with the guest (virtio-fs), mounted at
    /// `/<tag>` (default tag: the directory's name); `,ro` refuses changes.
    /// Repeat for more.
    #[arg(long = "share", value_name = "DIR[,tag=NAME][,ro]", value_parser = ShareConfig::parse)]
    shares: Vec<ShareConfig>,
    /// Stop the guest after this long (e.g. 10, 500ms); exit status 124.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Kernel command line (alternative to the words after `--`).
    #[arg(long, conflicts_with = "args")]
    cmdline: Option<String>,
    /// Print where the time went, on stderr: `--timeline` or `--timeline=json`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "human", value_enum)]
    timeline: Option<TimelineFormat>,
    /// When the guest panics, faults or crashes, write an ELF core file of
    /// it to PATH (`gdb <ELF> PATH`: `bt`, `info threads`).
    #[arg(long, value_name = "PATH")]
    core: Option<PathBuf>,
    /// Serve gdb at ADDR (`127.0.0.1:PORT`, `:PORT` or a Unix socket
    /// path): the guest waits before its first instruction until gdb
    /// continues (`gdb <ELF> -ex 'target remote ADDR'`).
    #[arg(long, value_name = "ADDR", value_parser = torito_vmm::gdb::parse_addr)]
    gdb: Option<torito_vmm::gdb::GdbAddr>,
    /// Boot nothing: copy stdin to stdout, naming the function and line of
    /// each backtrace frame (`#N 0xADDR`) and faulting `rip=0xADDR` in it
    /// from ELF (for a log of the same ELF on QEMU or Firecracker).
    #[arg(long)]
    symbolize: bool,
    /// Kernel command line words.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let mut tl = Timeline::start();
    let cli = Cli::parse();
    if cli.symbolize {
        let stdin = std::io::stdin().lock();
        return match torito_vmm::symbolize::filter(&cli.elf, stdin, std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("torito: --symbolize: {e}");
                ExitCode::from(1)
            }
        };
    }
    let mut cfg = VmConfig::new(&cli.elf);
    cfg.mem = cli.mem;
    cfg.timeout = cli.timeout;
    cfg.cpus = cli.cpus;
    cfg.disks = cli.disks;
    cfg.nets = cli.nets;
    cfg.vsock = cli.vsock;
    cfg.shares = cli.shares;
    cfg.cmdline = cli.cmdline.unwrap_or_else(|| cli.args.join(" "));
    cfg.timeline = cli.timeline;
    cfg.core = cli.core;
    cfg.gdb = cli.gdb;
    if let Some(dev) = std::env::var_os("TORITO_KVM_DEVICE") {
        cfg.kvm_device = dev.into();
    }
    let status = match torito_vmm::run(&cfg, &mut tl) {
        Ok(outcome) => {
            if let Some(m) = outcome.message() {
                eprintln!("torito: {m}");
            }
            outcome.exit_status()
        }
        Err(e) => {
            let e = match e {
                Error::BadImage(p, m) if p.as_os_str().is_empty() => Error::BadImage(cfg.kernel.clone(), m),
                e => e,
            };
            eprintln!("torito: error: {e}");
            e.exit_status()
        }
    };
    tl.mark(Phase::ProcessExit);
    if let Some(fmt) = cfg.timeline {
        eprint!("{}", tl.render(fmt));
    }
    ExitCode::from(status as u8)
}
