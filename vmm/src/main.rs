//! `torito`: boot a Torito appliance on KVM.
//!
//! ```text
//! torito [OPTIONS] <ELF> [-- <kernel command line>...]
//! torito --symbolize <ELF> < LOG      (names a backtrace's functions and lines)
//! ```
//! Guest console output goes to stdout; the process exits with the guest's
//! exit code, or with a distinct status when something else stopped it
//! (see `vmm::error`).

use std::process::ExitCode;

use clap::Parser;
use torito_vmm::Error;
use torito_vmm::cli::Cli;
use torito_vmm::timeline::{Phase, Timeline};

/// The system allocator, holding back what the launch frees
/// (`torito_vmm::vstate::heap`).
#[global_allocator]
static HEAP: torito_vmm::vstate::heap::Heap = torito_vmm::vstate::heap::Heap;

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
    let mut cfg = cli.config();
    match cfg.seccomp {
        torito_vmm::sandbox::SeccompMode::Off => {
            eprintln!("torito: warning: seccomp is off: the monitor's threads may make any system call")
        }
        torito_vmm::sandbox::SeccompMode::Log => eprintln!(
            "torito: warning: seccomp logs instead of stopping: forbidden system calls go through (see dmesg)"
        ),
        torito_vmm::sandbox::SeccompMode::On => {}
    }
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
