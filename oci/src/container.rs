//! The verbs for an appliance container: `create`, `start`, `state`,
//! `kill`, `delete`, `ps`, and `features` for the runtime.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

use crate::bundle::Launch;
use crate::init::Plan;
use crate::state::{self, FIFO, LAUNCH, SYNC, State, Status};
use crate::{Error, cgroup};

/// How long `create` waits for the container's process to be ready and
/// `start` for it to take the FIFO.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// `create`: ready the container's process; it waits for `start`.
pub fn create(
    root: &Path,
    id: &str,
    bundle: &Path,
    launch: &Launch,
    pid_file: Option<&Path>,
) -> Result<(), Error> {
    state::check_id(id)?;
    let monitor = crate::init::monitor()?;
    std::fs::create_dir_all(root).map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
    let dir = state::dir(root, id);
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::Exists(id.into())),
        other => other.map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?,
    }
    let made = create_in(&dir, root, id, bundle, launch, monitor, pid_file);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}

/// [`create`] once its state directory exists.
fn create_in(
    dir: &Path,
    root: &Path,
    id: &str,
    bundle: &Path,
    launch: &Launch,
    monitor: PathBuf,
    pid_file: Option<&Path>,
) -> Result<(), Error> {
    let setup = |why: String| Error::Setup { id: id.into(), why };
    let plan = Plan { monitor, launch: launch.clone() };
    let text = serde_json::to_vec(&plan).map_err(|e| Error::io("cannot encode the launch", e))?;
    std::fs::write(dir.join(LAUNCH), text).map_err(|e| Error::io("cannot write the launch", e))?;
    rustix::fs::mkfifoat(rustix::fs::CWD, dir.join(FIFO), Mode::from_raw_mode(0o600))
        .map_err(|e| Error::io("cannot create the start FIFO", e))?;
    let listener =
        UnixListener::bind(dir.join(SYNC)).map_err(|e| Error::io("cannot create the sync socket", e))?;
    let me = std::env::current_exe().map_err(|e| Error::io("cannot find torito-oci itself", e))?;
    // stdio: the container's (the shim's pipes), inherited.
    let mut child = Command::new(me)
        .arg("init")
        .arg(dir)
        .stdin(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io("cannot start the container's process", e))?;
    let pid = child.id() as i32;
    let ready = wait_ready(&listener, &mut child);
    let _ = std::fs::remove_file(dir.join(SYNC));
    if let Err(why) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(setup(why));
    }
    let placed = place(launch, pid);
    let Some((_, start_time)) = state::proc_stat(pid).filter(|_| placed.is_ok()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(placed.err().unwrap_or_else(|| setup("its process ended while being readied".into())));
    };
    let cgroups = placed.unwrap_or_default();
    let created = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let st = State {
        id: id.into(),
        bundle: absolute(bundle),
        pid,
        start_time,
        created,
        launch: launch.clone(),
        cgroups,
    };
    st.save(root)?;
    if let Some(p) = pid_file {
        let tmp = p.with_extension("torito-oci.new");
        std::fs::write(&tmp, pid.to_string())
            .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, p).map_err(|e| Error::io(format!("cannot write {}", p.display()), e))?;
    }
    // The child lives on (the shim, a subreaper, inherits it).
    drop(child);
    Ok(())
}

/// Wait for the container's process to say `ok` on the sync socket.
fn wait_ready(listener: &UnixListener, child: &mut std::process::Child) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let until = Instant::now() + READY_WITHIN;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("its process ended while being readied ({status})"));
                }
                if Instant::now() > until {
                    return Err(format!("its process was not ready within {} s", READY_WITHIN.as_secs()));
                }
                // Woken as soon as it connects; a look at the child now and then.
                let mut fds = [PollFd::new(listener, PollFlags::IN)];
                let tick = Timespec { tv_sec: 0, tv_nsec: 20_000_000 };
                let _ = rustix::event::poll(&mut fds, Some(&tick));
            }
            Err(e) => return Err(format!("sync socket: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(READY_WITHIN)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("sync socket: {e}"))?;
    match line.trim_end() {
        "ok" => Ok(()),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
    }
}

/// Put the container's process in its cgroup; the directories made.
fn place(launch: &Launch, pid: i32) -> Result<Vec<PathBuf>, Error> {
    let Some(path) = &launch.cgroups_path else { return Ok(Vec::new()) };
    if cgroup::dirs(Path::new(cgroup::MOUNT), path).is_none() {
        eprintln!(
            "torito-oci: cgroupsPath {path:?} is not a cgroupfs path; the appliance stays in the shim's cgroup"
        );
        return Ok(Vec::new());
    }
    cgroup::place(Path::new(cgroup::MOUNT), path, &launch.limits, pid)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `start`: let the container's process become the monitor.
pub fn start(root: &Path, id: &str) -> Result<(), Error> {
    let st = State::load(root, id)?;
    match st.status(root) {
        Status::Created => {}
        s => {
            return Err(Error::WrongState {
                id: id.into(),
                status: s.as_str(),
                what: "only a created container starts",
            });
        }
    }
    let fifo_path = state::dir(root, id).join(FIFO);
    let fd = rustix::fs::open(&fifo_path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io(format!("cannot open {}", fifo_path.display()), e))?;
    let mut fifo = std::fs::File::from(fd);
    let until = Instant::now() + READY_WITHIN;
    loop {
        let mut fds = [PollFd::new(&fifo, PollFlags::IN)];
        let tick = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
        rustix::event::poll(&mut fds, Some(&tick))
            .map_err(|e| Error::io("cannot wait on the start FIFO", e))?;
        let mut byte = [0u8; 1];
        match fifo.read(&mut byte) {
            Ok(1) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::io("cannot read the start FIFO", e)),
        }
        if !state::alive(st.pid, st.start_time) {
            return Err(Error::Setup { id: id.into(), why: "its process ended before it started".into() });
        }
        if Instant::now() > until {
            return Err(Error::Setup {
                id: id.into(),
                why: "its process did not take the start FIFO".into(),
            });
        }
    }
    std::fs::remove_file(&fifo_path).map_err(|e| Error::io("cannot remove the start FIFO", e))
}

/// `state`: the OCI state JSON.
pub fn state(root: &Path, id: &str) -> Result<String, Error> {
    let st = State::load(root, id)?;
    let status = st.status(root);
    let pid = if status == Status::Stopped { 0 } else { st.pid };
    let v = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": st.id,
        "pid": pid,
        "status": status.as_str(),
        "bundle": st.bundle,
        "rootfs": st.launch.rootfs,
        "created": st.created,
        "owner": "",
    });
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}

/// `kill`: send `signal` to the container's process.
pub fn kill(root: &Path, id: &str, signal: Signal) -> Result<(), Error> {
    let st = State::load(root, id)?;
    if st.status(root) == Status::Stopped {
        return Err(Error::NotRunning);
    }
    let pid = Pid::from_raw(st.pid).ok_or(Error::NotRunning)?;
    match rustix::process::kill_process(pid, signal) {
        Err(rustix::io::Errno::SRCH) => Err(Error::NotRunning),
        other => other.map_err(|e| Error::io(format!("cannot signal container {id}"), e)),
    }
}

/// `delete`: remove what the container left; `force` kills it first.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), Error> {
    let st = State::load(root, id)?;
    let status = st.status(root);
    if status != Status::Stopped {
        if !force {
            return Err(Error::WrongState {
                id: id.into(),
                status: status.as_str(),
                what: "cannot delete a container that is not stopped (kill it, or delete --force)",
            });
        }
        if let Some(pid) = Pid::from_raw(st.pid) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while state::alive(st.pid, st.start_time) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    unwire(&state::dir(root, id));
    // A cgroup empties when its last process has exited; give it a moment.
    for _ in 0..50 {
        cgroup::remove(&st.cgroups);
        if st.cgroups.iter().all(|d| !d.exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = state::dir(root, id);
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("cannot remove {}", dir.display()), e))
}

/// Take the TAP out of the pod's namespace, if one was wired (and the
/// namespace is still there). This process joins it: `delete` does
/// nothing after.
fn unwire(dir: &Path) {
    let Ok(text) = std::fs::read(dir.join(state::NET)) else { return };
    let Ok(wired) = serde_json::from_slice::<crate::net::Wired>(&text) else { return };
    let Ok(ns) = std::fs::File::open(&wired.netns) else { return };
    if crate::net::same_as_mine(&wired.netns) {
        return;
    }
    use std::os::fd::AsFd;
    if rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .is_ok()
    {
        crate::net::unwire(&wired.uplink);
    }
}

/// `ps`: the container's processes (the monitor), `json` or `table`.
pub fn ps(root: &Path, id: &str, format: &str) -> Result<String, Error> {
    let st = State::load(root, id)?;
    let pids: Vec<i32> = if st.status(root) == Status::Stopped { Vec::new() } else { vec![st.pid] };
    Ok(match format {
        "json" => serde_json::to_string(&pids).unwrap_or_default(),
        _ => std::iter::once("PID".to_string())
            .chain(pids.iter().map(i32::to_string))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// `features`: what this runtime supports (containerd 2.x asks).
pub fn features() -> String {
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": [],
        "mountOptions": [],
        "linux": {
            "namespaces": ["network"],
            "capabilities": [],
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": { "org.torito.runtime": format!("torito-oci {}", env!("CARGO_PKG_VERSION")) },
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
