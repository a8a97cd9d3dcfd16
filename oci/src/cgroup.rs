//! Placing the container's process in the cgroup `linux.cgroupsPath`
//! names, with the limits of `linux.resources` (memory, pids, CPU quota)
//! — on cgroup v2 (one
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

/// The limits of `linux.resources` an appliance's cgroup gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// `memory.limit`, bytes.
    pub memory: Option<u64>,
    /// `pids.limit`.
    pub pids: Option<i64>,
    /// `cpu.quota` (µs per period; negative: none).
    pub cpu_quota: Option<i64>,
    /// `cpu.period` (µs).
    pub cpu_period: Option<u64>,
}

impl Limits {
    /// The files to write and their values, in order; each is written in
    /// the directories that have it (v2 names and v1 names both listed).
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        if let Some(m) = self.memory {
            f.push(("memory.max", m.to_string()));
            f.push(("memory.limit_in_bytes", m.to_string()));
        }
        if let Some(p) = self.pids {
            f.push(("pids.max", if p > 0 { p.to_string() } else { "max".into() }));
        }
        if self.cpu_quota.is_some() || self.cpu_period.is_some() {
            let period = self.cpu_period.unwrap_or(100_000);
            let quota = self.cpu_quota.filter(|&q| q > 0);
            f.push(("cpu.max", format!("{} {period}", quota.map_or("max".to_string(), |q| q.to_string()))));
            f.push(("cpu.cfs_period_us", period.to_string()));
            f.push(("cpu.cfs_quota_us", quota.unwrap_or(-1).to_string()));
        }
        f
    }
}

/// Create the cgroup(s) of `path`, set the limits, move `pid` in; the
/// directories made (for `delete`).
pub fn place(mount: &Path, path: &str, limits: &Limits, pid: i32) -> Result<Vec<PathBuf>, Error> {
    let Some(dirs) = dirs(mount, path) else {
        return Err(Error::Setup {
            id: String::new(),
            why: format!(
                "cgroupsPath {path:?}: only cgroupfs paths (/a/b) are supported, not systemd's slice:prefix:name"
            ),
        });
    };
    let files = limits.files();
    for d in &dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("cannot create cgroup {}", d.display()), e))?;
        for (file, value) in &files {
            let f = d.join(file);
            if f.exists() {
                std::fs::write(&f, value)
                    .map_err(|e| Error::io(format!("cannot write {value} to {}", f.display()), e))?;
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
    fn limits_in_v1_and_v2_words() {
        let l = Limits { memory: Some(128 << 20), pids: Some(64), cpu_quota: Some(50_000), cpu_period: None };
        let f = l.files();
        assert!(f.contains(&("memory.max", "134217728".into())));
        assert!(f.contains(&("memory.limit_in_bytes", "134217728".into())));
        assert!(f.contains(&("pids.max", "64".into())));
        assert!(f.contains(&("cpu.max", "50000 100000".into())));
        assert!(f.contains(&("cpu.cfs_quota_us", "50000".into())));
        let period_only = Limits { cpu_period: Some(200_000), ..Default::default() }.files();
        assert!(period_only.contains(&("cpu.max", "max 200000".into())));
        assert!(period_only.contains(&("cpu.cfs_quota_us", "-1".into())));
        assert_eq!(Limits::default().files(), []);
    }

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
