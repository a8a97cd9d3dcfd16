//! Child processes in a process group of their own, killed as a group: a
//! monitor started through wrappers (`ip netns exec`, `timeout`) is gone
//! with them when a test or the bench ends, or panics. Killing the
//! wrapper alone would leave the monitor running.

use std::process::{Child, Command, Output};

/// A child process leading its own process group; the whole group is
/// killed when this is dropped before it was waited for.
pub struct GroupChild {
    child: Option<Child>,
}

/// Spawn `cmd` as the leader of a new process group.
pub fn spawn(cmd: &mut Command) -> std::io::Result<GroupChild> {
    use std::os::unix::process::CommandExt;
    let child = cmd.process_group(0).spawn()?;
    Ok(GroupChild { child: Some(child) })
}

impl GroupChild {
    /// Wait for the leader to end and collect its output (as
    /// [`Child::wait_with_output`]); anything left in its group is killed.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        let child = self.child.take().ok_or_else(|| std::io::Error::other("already waited for"))?;
        let pid = child.id();
        let out = child.wait_with_output();
        kill_group(pid);
        out
    }

    /// [`GroupChild::wait_with_output`], but the group is killed if the
    /// leader has not ended within `grace` (what it wrote until then is
    /// returned).
    pub fn wait_with_output_within(mut self, grace: std::time::Duration) -> std::io::Result<Output> {
        let until = std::time::Instant::now() + grace;
        while !self.has_ended() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(c) = &self.child {
            kill_group(c.id());
        }
        self.wait_with_output()
    }

    /// The leader's pid, which is the group's id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The leader's piped standard output, to read while it runs.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// The leader's piped standard error, to read while it runs.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    /// Whether the leader has ended (it is reaped then; its output can
    /// still be collected with [`GroupChild::wait_with_output`]).
    pub fn has_ended(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Kill the whole group now and reap the leader.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment variable that marks every process a test run or a
/// bench starts (children inherit it, through `ip netns exec`, `timeout`
/// and every other wrapper), so that what is left at the end can be found.
pub const RUN_MARK: &str = "TORITO_RUN_MARK";

/// A mark for one run, unique on this machine.
pub fn new_mark() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{t}", std::process::id())
}

/// Mark this process, so that every process it starts from now on
/// carries the mark; returns it. Call first thing, while single-threaded.
pub fn mark_this_process() -> String {
    let mark = new_mark();
    // SAFETY: called before the caller starts any thread (the bench's
    // first step), so no other thread reads the environment meanwhile.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(RUN_MARK, &mark)
    };
    mark
}

/// Processes still alive whose environment holds `RUN_MARK=mark`, the
/// caller itself aside: their pid and command line. (Processes of other users cannot be read and are
/// not seen; those of the caller's own are.)
pub fn left_behind(mark: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        if let Some(cmd) = marked(pid, mark) {
            found.push((pid, cmd));
        }
    }
    found
}

/// The command line of process `pid` if it is alive and carries `mark`.
fn marked(pid: u32, mark: &str) -> Option<String> {
    let want = format!("{RUN_MARK}={mark}");
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let env = std::fs::read(dir.join("environ")).ok()?;
    if !env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
        return None;
    }
    // A zombie has no command line and holds nothing: only a parent
    // that did not reap it yet.
    let cmd = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    if cmd.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(&cmd).replace('\0', " ").trim().to_string())
}

/// Kill what [`left_behind`] found (SIGKILL); say so, one line each.
///
/// Through a pidfd, never by pid alone: a process found here may have
/// ended since and its pid gone to another. The pidfd pins one process;
/// the mark is read again after it was opened, and the pidfd's process
/// is checked alive after that read, so the read was of that process and
/// the signal reaches it and nothing else.
pub fn kill_left_behind(mark: &str, who: &str) -> usize {
    let mut killed = 0;
    for (pid, _) in left_behind(mark) {
        let Some(pidfd) = pidfd_open(pid) else { continue };
        let Some(cmd) = marked(pid, mark) else { continue };
        if !pidfd_signal(&pidfd, 0) {
            continue;
        }
        eprintln!("{who}: left behind: pid {pid}: {cmd} (killed)");
        pidfd_signal(&pidfd, libc::SIGKILL);
        killed += 1;
    }
    killed
}

/// A pidfd of process `pid` (`pidfd_open(2)`), if it is alive.
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; nothing of this process's memory is involved.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: `fd` is a descriptor pidfd_open just created, owned by
    // nothing else.
    #[allow(unsafe_code)]
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Send `sig` (0: only check it is alive) to the process of `pidfd`.
fn pidfd_signal(pidfd: &std::os::fd::OwnedFd, sig: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with a live descriptor, a valid signal
    // number (or 0), no siginfo (null) and no flags.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// While alive, SIGINT and SIGTERM do not end this process: `cargo xtask
/// run` waits for the guest's monitor, which got the same Ctrl-C (the
/// terminal signals the whole foreground group), stops the guest and
/// reports; `xtask` then exits with its status instead of dying first and
/// leaving the monitor's last lines after the shell's prompt. A handler,
/// not SIG_IGN: handlers are reset in an exec'd child, ignores are not.
pub struct OutliveStopSignals {
    old: [(libc::c_int, libc::sigaction); 2],
}

extern "C" fn note_stop_signal(_: libc::c_int) {}

impl OutliveStopSignals {
    /// Install the handlers (restored when this is dropped).
    pub fn new() -> Self {
        let mut old = [(libc::SIGINT, zeroed_sigaction()), (libc::SIGTERM, zeroed_sigaction())];
        let mut act = zeroed_sigaction();
        act.sa_sigaction = note_stop_signal as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART;
        for (sig, prev) in &mut old {
            // SAFETY: `act` is a valid sigaction whose handler does nothing
            // (async-signal-safe); `prev` is valid storage for the old one.
            #[allow(unsafe_code)]
            unsafe {
                libc::sigaction(*sig, &act, prev)
            };
        }
        OutliveStopSignals { old }
    }
}

impl Default for OutliveStopSignals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OutliveStopSignals {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: `prev` is what sigaction returned for `sig` in `new`.
            #[allow(unsafe_code)]
            unsafe {
                libc::sigaction(*sig, prev, std::ptr::null_mut())
            };
        }
    }
}

fn zeroed_sigaction() -> libc::sigaction {
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are
    // a valid value (SIG_DFL, empty mask, no flags).
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}

/// SIGKILL to the process group `pgid` (its leader's pid).
fn kill_group(pgid: u32) {
    // SAFETY: a plain syscall on a number. While any member of the group
    // lives, Linux does not hand its id to a new process, so the id names
    // our group; a group that no longer exists gives ESRCH, which is fine.
    #[allow(unsafe_code)]
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that outlives its starter is found by its mark, and
    /// killed; one killed with its group is not.
    #[test]
    fn processes_left_behind_are_found_by_their_mark() {
        let mark = new_mark();
        let mut stray = Command::new("sleep");
        stray.arg("30").env(RUN_MARK, &mark);
        let stray = stray.spawn().unwrap();
        let mut grouped = Command::new("sh");
        grouped.args(["-c", "sleep 30 & wait"]).env(RUN_MARK, &mark);
        let grouped = spawn(&mut grouped).unwrap();
        assert!(crate::testing::poll(std::time::Duration::from_secs(5), || left_behind(&mark).len() == 3));
        grouped.kill();
        // SIGKILL is delivered at once but acted on when the process next
        // runs: on a busy machine that can take a moment.
        crate::testing::poll(std::time::Duration::from_secs(10), || left_behind(&mark).len() == 1);
        let left = left_behind(&mark);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].0, stray.id());
        assert_eq!(kill_left_behind(&mark, "test"), 1);
        let mut stray = stray;
        let _ = stray.wait();
        assert!(crate::testing::poll(std::time::Duration::from_secs(10), || left_behind(&mark).is_empty()));
    }

    /// A pidfd stays with the process it was opened on: once that one has
    /// ended (and its pid may be another's), no signal goes through it.
    #[test]
    fn a_pidfd_outlives_its_process_harmlessly() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = pidfd_open(child.id()).expect("pidfd_open");
        assert!(pidfd_signal(&pidfd, 0), "alive");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!pidfd_signal(&pidfd, 0) && !pidfd_signal(&pidfd, libc::SIGKILL), "gone");
    }
}
