//! `torito-oci`: an OCI runtime with runc's command line, for containerd's
//! stock runc v2 shim (`BinaryName`), Docker, Podman and CRI-O.
//!
//! A container whose `process.args[0]` is, inside its root file system, an
//! ELF carrying Torito's note (or whose environment says
//! `TORITO_APPLIANCE=1`, as `cargo xtask image` writes it) is an
//! *appliance*: its process is the Torito monitor booting that ELF. Every
//! other container — a pod's pause container included — is handed to
//! `runc` with the same arguments.
//!
//! The verbs follow runc's: `create` readies the container's process (a
//! copy of this program, [`init`], waiting on a FIFO in the state
//! directory, as `runc init` does), `start` releases it and it becomes the
//! monitor, `state`, `kill`, `delete`, `ps`, `features`. The shim reads
//! the pid file, waits for that process, and carries its stdout, stderr,
//! exit status and signals like any container's.
//!
//! Rooms: [`cli`] (the command line), [`bundle`] (the OCI spec to a
//! [`bundle::Launch`]), [`appliance`] (is it one), [`state`] (what a
//! container left in `--root`), [`container`] (the verbs), [`init`] (the
//! container's process before it is the monitor), [`net`] (a pod's
//! interface to the guest), [`cgroup`], [`signal`],
//! [`log`] (errors where the shim reads them), [`runc`] (the hand-over).

#![forbid(unsafe_code)]

pub mod appliance;
pub mod bundle;
pub mod cgroup;
pub mod cli;
pub mod container;
pub mod error;
pub mod init;
pub mod log;
pub mod net;
pub mod runc;
pub mod signal;
pub mod state;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

pub use error::Error;

/// Where container state lives when `--root` is not given.
pub const DEFAULT_ROOT: &str = "/run/torito-oci";

/// Run the command line of this process; its exit status.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // The container's process (spawned by `create`, which waits for it):
    // straight there, without building the whole command line's parser.
    if let [_, verb, dir] = &argv[..]
        && verb == "init"
    {
        return report(&log::Log::new(None, None), init::run(std::path::Path::new(dir)));
    }
    let cli = match cli::Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A verb or flag of runc's that torito-oci does not know: runc's own
        // containers are the only ones it can be for.
        Err(_) => return report(&log::Log::from_args(&argv), runc::hand_over(&argv[1..])),
    };
    let log = log::Log::new(cli.global.log.clone(), cli.global.log_format.as_deref());
    let outcome = cli::run(cli, &argv[1..]);
    report(&log, outcome)
}

/// The exit status of an outcome; an error is logged first.
fn report(log: &log::Log, outcome: Result<u8, Error>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log.error(&e.to_string());
            ExitCode::from(1)
        }
    }
}
