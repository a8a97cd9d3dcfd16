//! What an appliance container leaves under `--root`: `ROOT/ID/` with
//! `torito-oci.json` (its [`State`]), `exec.fifo` (there while it waits for
//! `start`) and `sync.sock` (while `create` waits for it to be ready).
//! Its status is read from the process itself, guarding against a reused
//! pid with the start time `/proc/PID/stat` gives.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::bundle::Launch;

/// The state file's name.
pub const FILE: &str = "torito-oci.json";
/// The FIFO the container's process waits on until `start`.
pub const FIFO: &str = "exec.fifo";
/// The socket the container's process says it is ready on.
pub const SYNC: &str = "sync.sock";
/// What was wired in a pod's network namespace ([`crate::net::Wired`]).
pub const NET: &str = "net.json";
/// The launch the container's process reads.
pub const LAUNCH: &str = "launch.json";

/// A container of ours.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Its id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Its process (the monitor once started).
    pub pid: i32,
    /// That process's start time (clock ticks since boot, `/proc/PID/stat`).
    pub start_time: u64,
    /// When it was created (RFC 3339).
    pub created: String,
    /// What it runs.
    pub launch: Launch,
    /// The cgroup directories it was placed in (removed by `delete`).
    pub cgroups: Vec<PathBuf>,
}

/// A container's status, in the OCI words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Ready, waiting for `start`.
    Created,
    /// Its process runs.
    Running,
    /// Its process has ended.
    Stopped,
}

impl Status {
    /// The OCI word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// runc's rule for ids: they name a directory, so letters, digits and
/// `_ + - .` only, and not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok { Ok(()) } else { Err(Error::BadId(id.into())) }
}

/// `ROOT/ID`.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Is `id` one of our containers?
pub fn exists(root: &Path, id: &str) -> bool {
    check_id(id).is_ok() && dir(root, id).join(FILE).is_file()
}

impl State {
    /// Read `ROOT/ID/torito-oci.json`.
    pub fn load(root: &Path, id: &str) -> Result<State, Error> {
        check_id(id)?;
        let path = dir(root, id).join(FILE);
        let text = std::fs::read(&path)
            .map_err(|e| Error::io(format!("container {id} does not exist ({})", path.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| Error::io(format!("{} is damaged", path.display()), e))
    }

    /// Write it (atomically: a new file renamed over the old).
    pub fn save(&self, root: &Path) -> Result<(), Error> {
        let path = dir(root, &self.id).join(FILE);
        let tmp = path.with_extension("json.new");
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::io("cannot encode the state", e))?;
        std::fs::write(&tmp, text).map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// Its status now.
    pub fn status(&self, root: &Path) -> Status {
        if !alive(self.pid, self.start_time) {
            Status::Stopped
        } else if dir(root, &self.id).join(FIFO).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }
}

/// The state letter and start time of process `pid`, from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The state letter and start time (field 22) of a `/proc/PID/stat` line;
/// the command name in parentheses may hold spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 come between the state (3) and the start time (22).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Is process `pid`, started at `start_time`, still there and not a zombie?
pub fn alive(pid: i32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|(state, start)| start == start_time && state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_root() {
        for good in ["abc", "a-b_c.d+e", "0123456789abcdef"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", "é"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stat_lines_with_odd_names() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987_654)));
        let me = std::process::id() as i32;
        let (state, start) = proc_stat(me).unwrap();
        assert_ne!(state, 'Z');
        assert!(alive(me, start));
        assert!(!alive(me, start + 1), "a reused pid is not the same process");
    }
}
