//! The command line: runc's global options and verbs (types from
//! `liboci-cli`), and which container a verb is for — an appliance of ours,
//! or anything else, for runc.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use liboci_cli::GlobalOpts;

use crate::{Error, bundle, container, runc, state};

/// The runtime's command line (runc's).
#[derive(Parser, Debug)]
#[command(name = "torito-oci", version, about = "Run Torito appliances under containerd, runc-compatibly")]
pub struct Cli {
    /// Options before the verb.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// The verb.
    #[command(subcommand)]
    pub verb: Verb,
}

/// runc's verbs that torito-oci answers for appliances.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Ready a container's process; it waits for `start`.
    Create(liboci_cli::Create),
    /// Let a created container's process run.
    Start(liboci_cli::Start),
    /// A container's state, as JSON.
    State(liboci_cli::State),
    /// Send a signal (default SIGTERM) to a container's process.
    Kill(Kill),
    /// Remove what a container left (`--force`: kill it first).
    Delete(liboci_cli::Delete),
    /// A container's processes (one: the monitor).
    Ps(Ps),
    /// What this runtime supports, as JSON.
    Features(liboci_cli::Features),
    /// (internal) the container's process until `start`.
    #[command(hide = true)]
    Init {
        /// The container's state directory.
        dir: PathBuf,
    },
    /// Any other verb of runc's: for runc's containers.
    #[command(external_subcommand)]
    Other(Vec<OsString>),
}

/// `kill ID [SIGNAL] [--all]` (runc's default signal: SIGTERM).
#[derive(Args, Debug)]
pub struct Kill {
    /// The container.
    pub container_id: String,
    /// A name (`SIGTERM`, `TERM`) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Every process of the container (an appliance has one).
    #[arg(short, long)]
    pub all: bool,
}

/// `ps [--format table|json] ID`.
#[derive(Args, Debug)]
pub struct Ps {
    /// `table` or `json`.
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// The container.
    pub container_id: String,
    /// `ps` options (runc passes them to ps(1); ignored).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

/// Do what `cli` says; `args` (without the program name) go to runc when
/// the container is not ours. The exit status on success.
pub fn run(cli: Cli, args: &[OsString]) -> Result<u8, Error> {
    let root = cli.global.root.clone().unwrap_or_else(|| PathBuf::from(crate::DEFAULT_ROOT));
    let ours = |id: &str| state::exists(&root, id);
    match cli.verb {
        Verb::Create(c) => {
            let launch = bundle::plan(&c.bundle)?;
            match launch {
                Some(launch) => {
                    container::create(&root, &c.container_id, &c.bundle, &launch, c.pid_file.as_deref())?;
                    Ok(0)
                }
                None => runc::hand_over(args),
            }
        }
        Verb::Start(s) if ours(&s.container_id) => container::start(&root, &s.container_id).map(|()| 0),
        Verb::State(s) if ours(&s.container_id) => {
            println!("{}", container::state(&root, &s.container_id)?);
            Ok(0)
        }
        Verb::Kill(k) if ours(&k.container_id) => {
            let signal = crate::signal::parse(&k.signal)?;
            container::kill(&root, &k.container_id, signal).map(|()| 0)
        }
        Verb::Delete(d) if ours(&d.container_id) => {
            container::delete(&root, &d.container_id, d.force).map(|()| 0)
        }
        Verb::Ps(p) if ours(&p.container_id) => {
            println!("{}", container::ps(&root, &p.container_id, &p.format)?);
            Ok(0)
        }
        Verb::Features(_) => {
            println!("{}", container::features());
            Ok(0)
        }
        Verb::Init { dir } => crate::init::run(&dir),
        Verb::Other(words) => match named_appliance(&root, &words) {
            Some(id) => Err(Error::Unsupported { verb: words[0].to_string_lossy().into_owned(), id }),
            None => runc::hand_over(args),
        },
        // start, state, kill, delete, ps of a container that is not ours.
        _ => runc::hand_over(args),
    }
}

/// The appliance among the words of a verb torito-oci does not handle.
fn named_appliance(root: &Path, words: &[OsString]) -> Option<String> {
    words.iter().skip(1).filter_map(|w| w.to_str()).find(|w| state::exists(root, w)).map(str::to_owned)
}
