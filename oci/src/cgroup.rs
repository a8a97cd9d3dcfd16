//! Placing the container's process in the cgroup `linux.cgroupsPath`
//! names, with the memory limit of `linux.resources` — on cgroup v2 (one
//! hierarchy) or v1 (a directory per controller), as runc's cgroupfs
//! driver does. The shim reads the process's cgroup for statistics and
//! out-of-memory events.
//!
//! systemd's `slice:prefix:name` form is not supported yet: such a process
//! stays in the shim's cgroup (said in the log, not fatal).

use std::path::{Path, PathBuf};

use crate::Error;

/// Where cgroup file systems are mounted.
pub const MOUNT: &str = "/sys/fs/cgroup";

/// The v1 controllers an appliance is placed in.
const V1_CONTROLLERS: &[&str] =
    &["memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "devices", "freezer", "systemd"];

/// The cgroup directories `path` names under `mount`: one on v2, one per
/// mounted controller on v1. `None` for a systemd-style path.
pub fn dirs(mount: &Path, path: &str) -> Option<Vec<PathBuf>> {
    if path.contains(':') {
        return None;
    }
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    if mount.join("cgroup.controllers").is_file() {
        return Some(vec![mount.join(rel)]);
    }
    Some(V1_CONTROLLERS.iter().map(|c| mount.join(c)).filter(|d| d.is_dir()).map(|d| d.join(rel)).collect())
}

/// Create the cgroup(s) of `path`, set the memory limit, move `pid` in;
/// the directories made (for `delete`).
pub fn place(mount: &Path, path: &str, memory_limit: Option<u64>, pid: i32) -> Result<Vec<PathBuf>, Error> {
    let Some(dirs) = dirs(mount, path) else {
        return Err(Error::Setup {
            id: String::new(),
            why: format!(
                "cgroupsPath {path:?}: only cgroupfs paths (/a/b) are supported, not systemd's slice:prefix:name"
            ),
        });
    };
    for d in &dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("cannot create cgroup {}", d.display()), e))?;
        if let Some(limit) = memory_limit {
            // v2: memory.max; v1: memory.limit_in_bytes in the memory hierarchy.
            for file in ["memory.max", "memory.limit_in_bytes"] {
                let f = d.join(file);
                if f.exists() {
                    std::fs::write(&f, limit.to_string())
                        .map_err(|e| Error::io(format!("cannot write {}", f.display()), e))?;
                }
            }
        }
        fill_cpuset(d);
        let procs = d.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| Error::io(format!("cannot move into {}", procs.display()), e))?;
    }
    Ok(dirs)
}

/// v1's cpuset wants `cpuset.cpus` and `cpuset.mems` set in every new
/// directory before a task may join: each level takes its parent's.
fn fill_cpuset(dir: &Path) {
    let levels: Vec<&Path> = dir.ancestors().take_while(|a| a.join("cpuset.cpus").is_file()).collect();
    for pair in levels.windows(2).rev() {
        let (child, parent) = (pair[0], pair[1]);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if std::fs::read_to_string(child.join(file)).is_ok_and(|s| s.trim().is_empty()) {
                let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                let _ = std::fs::write(child.join(file), value.trim());
            }
        }
    }
}

/// Remove cgroup directories once their process has ended (best effort:
/// one still in use stays).
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_hierarchy() {
        let m = std::env::temp_dir().join(format!("torito-oci-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&m);
        std::fs::create_dir_all(m.join("memory")).unwrap();
        std::fs::create_dir_all(m.join("pids")).unwrap();
        assert_eq!(
            dirs(&m, "/default/c1").unwrap(),
            [m.join("memory/default/c1"), m.join("pids/default/c1")]
        );
        std::fs::write(m.join("cgroup.controllers"), "memory pids\n").unwrap();
        assert_eq!(dirs(&m, "/default/c1").unwrap(), [m.join("default/c1")]);
        assert_eq!(dirs(&m, "system.slice:torito:c1"), None);
        assert_eq!(dirs(&m, "/a/../../etc"), None);
        let _ = std::fs::remove_dir_all(&m);
    }
}
