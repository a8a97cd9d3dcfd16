//! What can go wrong, in the words runc uses where the shim matches them
//! (`container not running`, `does not exist`).

use std::path::PathBuf;

/// A failed verb. The message is what the shim shows (`ctr: …`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id has characters runc refuses (it names a directory).
    #[error("invalid container id {0:?}: use letters, digits and _ + - . only")]
    BadId(String),
    /// `create` of an id that exists.
    #[error("container with id exists: {0}")]
    Exists(String),
    /// A verb for an appliance in the wrong state.
    #[error("container {id} is {status}: {what}")]
    WrongState {
        /// The container.
        id: String,
        /// Its status.
        status: &'static str,
        /// What the verb wanted.
        what: &'static str,
    },
    /// `kill` of a container whose process has ended (the shim's words).
    #[error("container not running")]
    NotRunning,
    /// The bundle cannot be read or asks for what an appliance cannot do.
    #[error("bundle {path}: {why}")]
    Bundle {
        /// `config.json`'s path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A verb torito-oci does not implement for appliances.
    #[error("`{verb}` is not supported for appliance {id} (a microVM has no processes to join or pause)")]
    Unsupported {
        /// The verb.
        verb: String,
        /// The container.
        id: String,
    },
    /// A signal name or number that is not one.
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    /// Readying the container's process failed.
    #[error("container {id}: {why}")]
    Setup {
        /// The container.
        id: String,
        /// Why.
        why: String,
    },
    /// runc is needed (a container that is not an appliance) but missing.
    #[error("{0}")]
    Runc(String),
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Io { what: what.into(), source: source.into() }
    }
}
