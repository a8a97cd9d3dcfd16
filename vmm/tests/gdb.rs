//! `torito --gdb`: real gdb in batch mode against real guests on the
//! monitor — breakpoints in the kernel and the app, backtraces,
//! registers, memory, single steps, `next`, a variable changed by gdb and
//! printed by the app, the exit code, two vCPUs as two threads, Ctrl-C,
//! detach, a Unix socket, and a malformed packet that is refused while
//! the guest goes on.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use xtask::Variant;
use xtask::group::{self, GroupChild};

fn guest(app: &str, gdb: bool) -> PathBuf {
    xtask::build(app, Variant { gdb, ..Variant::default() }).unwrap_or_else(|e| panic!("building {app}: {e}"))
}

fn ready() -> bool {
    xtask::testing::kvm() && xtask::testing::need("gdb")
}

/// A monitor waiting for gdb: its process group, the address it printed,
/// and the rest of its stderr (read on a thread).
struct Monitor {
    child: GroupChild,
    addr: String,
    stderr: std::thread::JoinHandle<String>,
}

fn start(args: &[&str], elf: &Path, cmdline: &[&str]) -> Monitor {
    let mut c = Command::new(env!("CARGO_BIN_EXE_torito"));
    c.args(args).arg(elf).stdout(Stdio::piped()).stderr(Stdio::piped());
    if !cmdline.is_empty() {
        c.arg("--").args(cmdline);
    }
    let mut child = group::spawn(&mut c).expect("start torito");
    let mut err = BufReader::new(child.take_stderr().expect("stderr"));
    let mut first = String::new();
    err.read_line(&mut first).expect("the monitor's first line");
    let addr = first
        .split("waiting for gdb on ")
        .nth(1)
        .and_then(|r| r.split(": gdb ").next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let stderr = std::thread::spawn(move || {
        let mut rest = first;
        let _ = err.read_to_string(&mut rest);
        rest
    });
    Monitor { child, addr, stderr }
}

impl Monitor {
    /// Wait for the monitor to end: exit code, stdout, stderr.
    fn finish(self) -> (i32, String, String) {
        let out = self.child.wait_with_output_within(Duration::from_secs(60)).expect("wait for torito");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = self.stderr.join().unwrap_or_default();
        eprintln!("--- torito -> {:?}\n{text}{err}", out.status.code());
        (out.status.code().unwrap_or(-1), text, err)
    }
}

/// gdb in batch mode on `elf`, connected to `addr`, running `cmds`.
fn gdb(elf: &Path, addr: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]).arg(elf).args(["-ex", &format!("target remote {addr}")]);
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    let out = group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .expect("run gdb")
        .wait_with_output_within(Duration::from_secs(120))
        .expect("gdb output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("--- gdb\n{text}");
    text
}

#[test]
fn gdb_breaks_steps_reads_and_changes_a_guest_on_the_monitor() {
    if !ready() {
        return;
    }
    let elf = guest("gdbme", true);
    let m = start(&["--gdb", "127.0.0.1:0"], &elf, &[]);
    let text = gdb(
        &elf,
        &m.addr,
        &[
            "info registers rip cs",
            "break kernel_main",
            "break gdbme::main",
            "break gdbme::report",
            "continue",
            "bt",
            "continue",
            "continue",
            "bt",
            "info registers",
            "info registers cr3 fs_base gs_base",
            "x/4gx $rsp",
            "stepi",
            "print $pc",
            "print answer",
            "set var answer = 42",
            "next",
            "next",
            "watch gdbme::CALLS.v.value",
            "continue",
            "delete",
            "continue",
        ],
    );
    let (code, out, err) = m.finish();
    // Held before the first instruction: gdb sees the entry at CPL3.
    assert!(text.contains("cs             0x23"), "{text}");
    assert!(text.contains("Breakpoint 1, ") && text.contains("kernel_main"), "{text}");
    assert!(text.contains("Breakpoint 2, gdbme::main () at"), "the app's main: {text}");
    assert!(text.contains("Breakpoint 3, gdbme::report (answer=41)"), "{text}");
    assert!(text.contains("in gdbme::main ()"), "bt reaches the caller: {text}");
    for reg in ["rax ", "r15 ", "eflags ", "cr3 ", "fs_base ", "gs_base "] {
        assert!(text.contains(reg), "info registers shows {reg}: {text}");
    }
    assert!(text.lines().any(|l| l.starts_with("0x") && l.matches("0x").count() == 3), "x/4gx: {text}");
    assert!(text.contains("$1 = (*mut fn ()) 0x") || text.contains("$1 = "), "{text}");
    assert!(text.contains("[Inferior 1 (process 1) exited normally]"), "{text}");
    assert!(out.contains("answer=42"), "the app printed what gdb set: {out}");
    if torito_vmm::gdb::hw::host_is_pvm() {
        // Debug registers never fire here: refused, not silently ignored.
        assert!(text.contains("Could not insert hardware watchpoint"), "{text}");
    }
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("gdb connected"), "{err}");
}

#[test]
fn two_vcpus_are_two_gdb_threads_and_ctrl_c_stops_them() {
    if !ready() {
        return;
    }
    let threads = guest("threads", false);
    let m = start(&["--gdb", ":0", "--cpus", "2"], &threads, &["1000"]);
    let text =
        gdb(&threads, &m.addr, &["break kernel_ap_main", "continue", "info threads", "delete", "continue"]);
    let (code, out, _) = m.finish();
    assert!(text.contains("Thread 2 hit Breakpoint 1, kernel_ap_main"), "{text}");
    assert!(text.contains("Thread 1.1") && text.contains("Thread 1.2"), "{text}");
    assert!(text.contains("exited normally"), "{text}");
    assert!(out.contains("threads: ok"), "{out}");
    assert_eq!(code, 0);

    // gdb's Ctrl-C (`interrupt`) stops a guest that never stops by itself;
    // `kill` ends it.
    let spin = guest("spin", false);
    let m = start(&["--gdb", ":0"], &spin, &[]);
    let interrupt_in_a_second = "python import threading; threading.Timer(1.0, lambda: gdb.post_event(lambda: gdb.execute('interrupt'))).start()";
    let text = gdb(&spin, &m.addr, &[interrupt_in_a_second, "continue", "info threads", "kill"]);
    let (code, _, err) = m.finish();
    assert!(text.contains("Program received signal SIGINT"), "{text}");
    assert!(err.contains("gdb killed the guest"), "{err}");
    assert_eq!(code, 128 + 9);
}

#[test]
fn detach_and_a_malformed_packet_let_the_guest_run_on() {
    if !ready() {
        return;
    }
    let elf = guest("gdbme", true);
    let dir = std::env::temp_dir().join(format!("torito-gdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("gdb.sock");
    let m = start(&["--gdb", sock.to_str().unwrap()], &elf, &[]);
    let text = gdb(
        &elf,
        &m.addr,
        &[
            "break gdbme::report",
            "continue",
            "set var answer = 42",
            // Software watchpoints work on every host (gdb single-steps).
            "set can-use-hw-watchpoints 0",
            "watch gdbme::CALLS.v.value",
            "continue",
            "delete",
            "detach",
        ],
    );
    let (code, out, err) = m.finish();
    assert!(text.contains("Old value = 0") && text.contains("New value = 1"), "{text}");
    assert!(text.contains("detached"), "{text}");
    assert!(err.contains("gdb detached; the guest runs on"), "{err}");
    assert!(out.contains("answer=42 calls=1"), "{out}");
    assert_eq!(code, 0);
    assert!(!sock.exists(), "the socket is removed");

    // Not gdb: a packet with a wrong checksum, then bytes of no protocol.
    let m = start(&["--gdb", ":0"], &elf, &[]);
    let mut s = std::net::TcpStream::connect(&m.addr).expect("connect");
    s.write_all(b"$g#00").unwrap();
    s.write_all(b"\xff\x00garbage$zz").unwrap();
    drop(s);
    let (code, out, err) = m.finish();
    assert!(err.contains("ChecksumMismatched") && err.contains("the guest runs on"), "{err}");
    assert!(out.contains("answer=41"), "{out}");
    assert_eq!(code, 7, "gdbme's exit code when nobody changed its answer");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// gdb killed while the guest runs: the monitor says so and the guest
/// runs on (here until the monitor's timeout).
#[test]
fn a_gdb_that_vanishes_mid_run_does_not_stop_the_monitor() {
    if !ready() {
        return;
    }
    let spin = guest("spin", false);
    let m = start(&["--gdb", ":0", "--timeout", "4"], &spin, &[]);
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]).arg(&spin).args([
        "-ex",
        &format!("target remote {}", m.addr),
        "-ex",
        "continue",
    ]);
    let g = group::spawn(c.stdout(Stdio::null()).stderr(Stdio::null())).expect("run gdb");
    std::thread::sleep(Duration::from_millis(1500));
    g.kill();
    let (code, out, err) = m.finish();
    assert!(out.contains("spin: looping forever"), "{out}");
    assert!(err.contains("the guest runs on"), "{err}");
    assert_eq!(code, 124, "the guest ran on until the timeout: {err}");
}

/// A monitor killed while it waited for gdb leaves its socket file; the
/// next one on the same path replaces it. A socket a live monitor listens
/// on is refused.
#[test]
fn a_stale_gdb_socket_is_replaced_and_a_live_one_refused() {
    if !ready() {
        return;
    }
    let hello = guest("hello", false);
    let dir = std::env::temp_dir().join(format!("torito-gdbsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("gdb.sock");
    let first = start(&["--gdb", sock.to_str().unwrap()], &hello, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_torito"))
        .args(["--gdb", sock.to_str().unwrap()])
        .arg(&hello)
        .output();
    let err = String::from_utf8_lossy(&out.as_ref().unwrap().stderr).into_owned();
    assert!(err.contains("is in use by another process"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    first.child.kill();
    assert!(sock.exists(), "SIGKILL leaves the socket file");
    let second = start(&["--gdb", sock.to_str().unwrap()], &hello, &[]);
    assert_eq!(second.addr, sock.to_str().unwrap());
    second.child.kill();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_gdb_addresses_are_refused_in_one_line() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_torito")).args(["--gdb", "nonsense", "x.elf"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not an address for gdb"), "{err}");
    if !xtask::testing::kvm() {
        return;
    }
    let hello = guest("hello", false);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = l.local_addr().unwrap().to_string();
    let out =
        Command::new(env!("CARGO_BIN_EXE_torito")).args(["--gdb", &taken]).arg(&hello).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("--gdb {taken}")) && err.contains("in use"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
