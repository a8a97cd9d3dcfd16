//! Boot tests on the Torito monitor: real guests under KVM.
//!
//! Each test builds its guest with `xtask` (cached), runs the `torito`
//! binary as a user would, and checks console output and exit status.
//! Without `/dev/kvm` the KVM tests say so on stderr and pass vacuously;
//! the image and configuration checks need no KVM and always run.
//! (Long, as a list of independent tests sharing a few helpers is.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xtask::Variant;

fn torito() -> Command {
    Command::new(env!("CARGO_BIN_EXE_torito"))
}

fn guest(app: &str) -> PathBuf {
    xtask::build(app, Variant::default()).unwrap_or_else(|e| panic!("building {app}: {e}"))
}

/// Whether KVM tests can run here; says loudly when not.
fn kvm() -> bool {
    let ok = xtask::kvm_usable();
    if !ok {
        skip("/dev/kvm is not usable on this machine; KVM boot test not run");
    }
    ok
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], elf: &Path, cmdline: &[&str]) -> Run {
    run_env(&[], args, elf, cmdline)
}

fn run_env(env: &[(&str, &str)], args: &[&str], elf: &Path, cmdline: &[&str]) -> Run {
    let mut c = torito();
    c.envs(env.iter().copied());
    c.args(args).arg(elf);
    if !cmdline.is_empty() {
        c.arg("--").args(cmdline);
    }
    let Output { status, stdout, stderr } = c.output().expect("run torito");
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!("--- torito {args:?} {} -> {}\n{}{}", elf.display(), r.code, r.stdout, r.stderr);
    r
}

/// The integer after `"key":` in a JSON text.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    json[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

#[test]
fn hello_boots_with_its_command_line() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "10"], &guest("hello"), &["alpha", "beta"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Hello from Torito! (booted via direct)"));
    assert!(r.stdout.contains("command line: alpha beta"));
}

/// `--timeline=json-events`: the events, and none of the figures whose
/// collection would lengthen the run's end.
#[test]
fn a_timeline_of_events_alone_collects_no_figures() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "10", "--timeline=json-events"], &guest("hello"), &[]);
    assert_eq!(r.code, 0);
    let json = r.stderr.lines().find(|l| l.starts_with("{\"time_zero\"")).expect("a JSON timeline");
    for event in ["\"name\":\"kernel_main\"", "\"name\":\"app_main\"", "\"name\":\"guest_stopped\""] {
        assert!(json.contains(event), "no {event} in {json}");
    }
    assert!(json.contains("\"vcpu_stats\":{}"), "{json}");
    assert!(!json.contains("peak_rss_kib") && !json.contains("guest_touched_kib"), "{json}");
}

#[test]
fn hello_costs_few_exits_and_emulated_instructions() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "10", "--timeline=json"], &guest("hello"), &[]);
    assert_eq!(r.code, 0);
    let runs = json_u64(&r.stderr, "kvm_run_returns").expect("kvm_run_returns in the timeline");
    assert!(runs <= 10, "{runs} returns from KVM_RUN");
    for mark in ["kernel_main", "memory_unit", "app_main", "app_exit"] {
        assert!(r.stderr.contains(&format!("\"name\":\"{mark}\"")), "no {mark} in the timeline");
    }
    match json_u64(&r.stderr, "insn_emulation") {
        // One MMIO console write and one MMIO exit; no CPL0 code before
        // kernel_main. Bounded loosely for hosts that emulate differently.
        Some(n) => assert!(n <= 100, "{n} emulated instructions"),
        None => eprintln!("note: this kernel has no KVM binary statistics; emulation count not checked"),
    }
}

#[test]
fn exit_code_reaches_the_host() {
    if !kvm() {
        return;
    }
    let r = run(&[], &guest("exit42"), &[]);
    assert_eq!(r.code, 42);
    assert!(r.stdout.contains("exit42: returning 42"));
}

#[test]
fn panic_prints_message_and_location() {
    if !kvm() {
        return;
    }
    let r = run(&[], &guest("panics"), &[]);
    assert_eq!(r.code, 101);
    assert!(r.stdout.contains("panicked at apps/testapps/src/bin/panics.rs:"), "{}", r.stdout);
    assert!(r.stdout.contains("deliberate panic, answer=41"));
    // The backtrace, named by the monitor from the ELF's line tables: the
    // app's own function and file come first, down to kernel_main.
    let bt = &r.stdout[r.stdout.find("[torito] backtrace").expect("a backtrace")..];
    let own = bt.find("panics::check_the_answer at ").expect("the app's function");
    assert!(bt[own..].contains("apps/testapps/src/bin/panics.rs:"), "{bt}");
    assert!(bt.contains("kernel_main at "), "{bt}");
}

#[test]
fn heap_of_64_mib_works_and_pages_map() {
    if !kvm() {
        return;
    }
    for mem in ["128M", "4G"] {
        let r = run(&["--mem", mem, "--timeout", "60"], &guest("alloc"), &[]);
        assert_eq!(r.code, 0, "with --mem {mem}");
        assert!(r.stdout.contains("67108864 bytes checked, 0 bad"));
        assert!(r.stdout.contains("alloc: ok"));
    }
}

#[test]
fn ram_above_4g_works_and_late_registered_ram_is_served() {
    if !kvm() {
        return;
    }
    let highmem = guest("highmem");
    let r = run(&["--mem", "5G", "--timeout", "30"], &highmem, &[]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("words checked, 0 bad"));
    // Hold back the registration of RAM beyond the boot slot, so the
    // guest's first access there reaches the monitor, which must wait for
    // the registration and perform the access itself.
    let delayed = [("TORITO_DEBUG_DEFER_RAM_MS", "200")];
    let r = run_env(&delayed, &["--mem", "5G", "--timeout", "30", "--timeline=json"], &highmem, &[]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("words checked, 0 bad"));
    let served = json_u64(&r.stderr, "pending_ram_accesses").expect("pending_ram_accesses");
    assert!(served >= 1, "no access went through the monitor");
}

#[test]
fn out_of_memory_is_a_clear_panic() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "60"], &guest("oom"), &[]);
    assert_eq!(r.code, 101);
    assert!(r.stdout.contains("memory allocation of 16777216 bytes failed"));
    assert!(r.stdout.contains("out of memory: a request for 16777216 bytes failed"));
}

#[test]
fn cpu_exceptions_report_vector_error_rip_and_cr2() {
    if !kvm() {
        return;
    }
    let fault = guest("fault");
    let cases = [
        // A write to page 0, which the monitor maps for CPL0 only: present,
        // write, user.
        ("pf", 14, "page fault (#PF) (vector 14), error code 0x7"),
        ("gp", 13, "general protection fault (#GP) (vector 13), error code 0x0"),
        ("ud", 6, "invalid opcode (#UD) (vector 6)"),
        ("de", 0, "divide error (#DE) (vector 0)"),
        ("df", 8, "double fault (#DF) (vector 8)"),
    ];
    for (arg, vector, line) in cases {
        let r = run(&["--timeout", "10"], &fault, &[arg]);
        assert_eq!(r.code, 128 + vector, "{arg}");
        assert!(r.stdout.contains(line), "{arg}: {}", r.stdout);
        assert!(r.stdout.contains("rip=0x") && r.stdout.contains("cs=0x23"), "{arg}");
    }
    let r = run(&[], &fault, &["pf"]);
    assert!(r.stdout.contains("cr2=0x0000000000000008 (write, null pointer: page 0 is the null guard)"));
    // The faulting instruction, named: the app's line that wrote.
    let bt = &r.stdout[r.stdout.find("[torito] backtrace").expect("a backtrace")..];
    let first = bt.lines().take_while(|l| !l.contains("#1 ")).collect::<Vec<_>>().join("\n");
    assert!(first.contains("#0 ") && first.contains("apps/testapps/src/bin/fault.rs:"), "{bt}");
    // main running past the bottom of the boot stack meets its guard page,
    // which the monitor left out of the page tables.
    let r = run(&["--timeout", "10"], &fault, &["stack"]);
    assert_eq!(r.code, 128 + 14, "{}", r.stdout);
    assert!(
        r.stdout.contains("stack overflow: the boot stack of core 0 ran into its guard page"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("the app's main runs on it"), "{}", r.stdout);
    assert!(r.stdout.contains("page fault (#PF) (vector 14)"), "{}", r.stdout);
    assert!(r.stdout.contains("fault::deep at"), "{}", r.stdout);
}

/// SIGTERM and SIGINT stop every vCPU of a running guest and the monitor
/// exits 143 and 130, saying why.
#[test]
fn sigterm_and_sigint_stop_every_vcpu_with_their_statuses() {
    if !kvm() {
        return;
    }
    let threads = guest("threads");
    for (signal, status) in [("TERM", 143), ("INT", 130)] {
        let mut c = torito();
        c.args(["--cpus", "2", "--timeout", "60"]).arg(&threads).args(["--", "100000000"]);
        let vm =
            xtask::group::spawn(c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()))
                .expect("start torito");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let sent = Command::new("kill").args([&format!("-{signal}"), &vm.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let out = vm.wait_with_output_within(std::time::Duration::from_secs(30)).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "SIG{signal}: {err}");
        assert!(err.contains(&format!("SIG{signal}")), "{err}");
    }
}

#[test]
fn timeout_stops_a_spinning_guest() {
    if !kvm() {
        return;
    }
    let t = std::time::Instant::now();
    let r = run(&["--timeout", "1"], &guest("spin"), &[]);
    assert_eq!(r.code, 124);
    assert!(r.stderr.contains("timeout"));
    assert!(t.elapsed().as_secs() < 20);
}

/// Once the guest runs, the sandbox thread makes the image and the first
/// MiB of heap present in the host (`loader::warm_ranges`), with the
/// filters and without (`--no-seccomp` changes only the filters); on one
/// CPU there is no such thread and the guest's RAM is what it touched.
#[test]
fn the_image_and_the_heap_start_are_warmed_up_beside_the_guest() {
    if !kvm() {
        return;
    }
    let spin = guest("spin");
    let resident = |one_cpu: bool, extra: &[&str]| {
        let mut c = if one_cpu {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", env!("CARGO_BIN_EXE_torito")]);
            c
        } else {
            torito()
        };
        c.args(["--timeout", "1", "--timeline=json"]).args(extra).arg(&spin);
        let out = c.output().expect("run torito");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(124), "{stderr}");
        json_u64(&stderr, "guest_touched_kib").unwrap_or_else(|| panic!("no guest_touched_kib: {stderr}"))
    };
    let warm = resident(false, &[]);
    assert!(warm >= 1024, "{warm} KiB resident with the warm-up");
    let unfiltered = resident(false, &["--no-seccomp"]);
    assert!(unfiltered >= 1024, "{unfiltered} KiB resident with the warm-up, without filters");
    if xtask::have("taskset") {
        let cold = resident(true, &[]);
        assert!(cold < 512, "{cold} KiB resident on one CPU, without the warm-up");
    } else {
        skip("no taskset: the run on one CPU (no warm-up) not checked");
    }
}

/// The VM outlives the monitor only briefly: it is destroyed by the
/// kernel after the process has exited (`vstate::Farewell`), with the
/// filters on, without them, and after a SIGKILL. KVM names each VM in
/// debugfs `<pid>-<fd>`; the entry must go within a few seconds.
#[test]
fn the_vm_is_destroyed_after_the_monitor_exits() {
    if !kvm() {
        return;
    }
    let dir = Path::new("/sys/kernel/debug/kvm");
    if !dir.is_dir() {
        skip("debugfs is not mounted at /sys/kernel/debug (KVM's per-VM entries are there)");
        return;
    }
    let vms_of = |pid: u32| -> usize {
        let prefix = format!("{pid}-");
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count())
            .unwrap_or(0)
    };
    let spin = guest("spin");
    for (args, kill) in
        [(&["--timeout", "1"][..], false), (&["--timeout", "1", "--no-seccomp"][..], false), (&[][..], true)]
    {
        let mut child = torito()
            .args(args)
            .arg(&spin)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run torito");
        let pid = child.id();
        let t = std::time::Instant::now();
        while vms_of(pid) == 0 && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(vms_of(pid), 1, "{args:?}: the running monitor's VM is in {}", dir.display());
        if kill {
            child.kill().unwrap();
        }
        let status = child.wait().unwrap();
        let t = std::time::Instant::now();
        while vms_of(pid) > 0 && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        eprintln!(
            "{args:?} kill={kill}: {status}; VM gone {} ms after the monitor was reaped",
            t.elapsed().as_millis()
        );
        assert_eq!(vms_of(pid), 0, "{args:?}: the VM of the monitor that exited is still there");
    }
}

/// SIGTERM and SIGINT (Ctrl-C) stop a guest that would run for ever the
/// way an exit does: the timeline is printed, the status is 128 + the
/// signal (as a shell reports it), the monitor is gone.
#[test]
fn a_stop_signal_stops_the_guest_and_prints_the_timeline() {
    use std::io::BufRead;
    if !kvm() {
        return;
    }
    let spin = guest("spin");
    for (sig, name) in [(15, "SIGTERM"), (2, "SIGINT")] {
        let mut c = torito();
        c.args(["--timeline", "--timeout", "30"]).arg(&spin);
        let mut child =
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // The guest runs (the handlers are in place before it starts).
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("spin: looping forever"), "{line}");
        // Our own child, not yet reaped: its pid is still its own.
        let kill = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
        assert!(kill.unwrap().success());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + sig), "{name}: {err}");
        assert!(err.contains(&format!("guest stopped by {name}")), "{err}");
        assert!(err.contains("torito timeline"), "no timeline after {name}: {err}");
    }
}

#[test]
fn triple_fault_is_reported_with_registers() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "10"], &guest("triplefault"), &[]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("triple-faulted"), "{}", r.stderr);
    assert!(r.stderr.contains("rip=0x") && r.stderr.contains("cpl=3"));
}

#[test]
fn unmapped_mmio_is_logged_once_and_the_guest_goes_on() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "10"], &guest("mmio"), &[]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("read 0xffffffff"));
    assert_eq!(r.stderr.matches("unmapped MMIO address 0xd0000000").count(), 1);
}

#[test]
fn bad_images_are_refused_before_kvm() {
    let dir = std::env::temp_dir().join(format!("torito-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hello = std::fs::read(guest("hello")).unwrap();

    let truncated = dir.join("truncated.elf");
    std::fs::write(&truncated, &hello[..3000]).unwrap();
    let r = run(&[], &truncated, &[]);
    assert_eq!(r.code, 65);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);

    let mut arm = hello.clone();
    arm[18] = 40; // EM_ARM
    let other = dir.join("arm.elf");
    std::fs::write(&other, &arm).unwrap();
    let r = run(&[], &other, &[]);
    assert_eq!(r.code, 65);
    assert!(r.stderr.contains("another machine"));

    let text = dir.join("notes.txt");
    std::fs::write(&text, "not an elf at all, just some text\n".repeat(4)).unwrap();
    let r = run(&[], &text, &[]);
    assert_eq!(r.code, 65);
    assert!(r.stderr.contains("not an ELF"));

    let r = run(&[], &dir.join("missing.elf"), &[]);
    assert_eq!(r.code, 66);
    assert!(r.stderr.contains("missing.elf") && r.stderr.contains("No such file"));

    let r = run(&["--mem", "1M"], &guest("hello"), &[]);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("--mem 1 MiB is out of range"));

    let r = run(&["--no-such-flag"], &guest("hello"), &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--no-such-flag"));

    // Nothing was left behind in the directory but our own files.
    let mut left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["arm.elf", "notes.txt", "truncated.elf"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unusable_kvm_device_is_a_clear_error() {
    let hello = guest("hello");
    for (dev, what) in [("/nonexistent/kvm", "KVM is not available"), ("/dev/null", "not a KVM device")] {
        let out = torito().env("TORITO_KVM_DEVICE", dev).arg(&hello).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{err}");
        assert!(err.contains(dev) && err.contains(what), "{err}");
    }
}

#[test]
fn threads_mutex_channels_sleep_and_ping_pong() {
    if !kvm() {
        return;
    }
    let threads = guest("threads");
    let r = run(&["--timeout", "60", "--timeline=json"], &threads, &["100000"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("threads: thread 16 on core 0"));
    assert!(r.stdout.contains("cannot spawn on core 1: this machine has 1 core(s)"));
    assert!(r.stdout.contains("counter 4000 (expected 4000)"));
    assert!(r.stdout.contains("20000 messages from 2 senders on 1 core(s), each once and in order"));
    assert!(r.stdout.contains("ping-pong core 0 <-> core 0: 100000 round trips in"));
    assert!(r.stdout.contains("ns per round trip"), "the TSC frequency must be known: {}", r.stdout);
    // A 10 ms sleep: never early, and (loosely) not much late.
    let line = r.stdout.lines().find(|l| l.contains("slept 10 ms, woke after")).expect("a sleep line");
    let us: u64 = line.split("after ").nth(1).and_then(|x| x.split(' ').next()).unwrap().parse().unwrap();
    assert!((10_000..200_000).contains(&us), "{line}");
    assert!(line.contains("(timer: true)"), "{line}");
    assert!(r.stdout.contains("sleepers woke in the order [10, 20, 30]"));
    // The core halted while every thread slept, instead of spinning.
    let halts =
        json_u64(&r.stderr, "halt_exits").unwrap_or(0) + json_u64(&r.stderr, "halt_wakeup").unwrap_or(0);
    assert!(halts >= 1, "no halt while sleeping: {}", r.stderr);
    assert!(r.stdout.contains("threads: ok"));
    // The wall clock the monitor hands over is the host's, to within seconds.
    xtask::assert_guest_wall_clock(&r.stdout);
}

/// A thread that runs past the bottom of its stack faults on its guard page
/// and is reported by thread, name and core, with the way out; the same
/// frames fit a stack made bigger with `process::Builder`.
#[test]
fn a_stack_overflow_is_reported_and_a_bigger_stack_works() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "20"], &guest("threads"), &["overflow"]);
    assert_eq!(r.code, 128 + 14, "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "stack overflow in thread 16 ('deep') on core 0: it ran past the bottom of its 65536-byte stack into \
             its guard page"
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("process::Builder::new().stack_size(BYTES)"));
    assert!(r.stdout.contains("threads::deep at"), "the frames: {}", r.stdout);
    let r = run(&["--timeout", "20"], &guest("threads"), &["bigstack"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("64 KiB of frames on a 256 KiB stack"), "{}", r.stdout);
}

#[test]
fn a_panicking_thread_says_which_thread_and_core() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "20"], &guest("threads"), &["panic"]);
    assert_eq!(r.code, 101);
    assert!(r.stdout.contains("[torito] thread 16 on core 0 panicked"), "{}", r.stdout);
    assert!(r.stdout.contains("index out of bounds"));
    let r = run(&["--timeout", "20", "--cpus", "2"], &guest("threads"), &["panic"]);
    assert_eq!(r.code, 101);
    assert!(r.stdout.contains("[torito] thread 16 on core 1 panicked"), "{}", r.stdout);
}

#[test]
fn a_deadlock_is_reported_and_stops_the_guest() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "20"], &guest("threads"), &["deadlock"]);
    assert_eq!(r.code, 101, "{}", r.stdout);
    assert!(r.stdout.contains("deadlock: all 2 thread(s) on 1 core(s) are blocked"), "{}", r.stdout);
    // Across cores: a thread on core 1 and the main thread wait for each other.
    let r = run(&["--timeout", "20", "--cpus", "2"], &guest("threads"), &["deadlock"]);
    assert_eq!(r.code, 101, "{}", r.stdout);
    assert!(r.stdout.contains("deadlock: all 2 thread(s) on 2 core(s) are blocked"), "{}", r.stdout);
}

/// Two vCPUs: threads on both cores, a mutex from both, messages across
/// cores once and in order, a sleep on core 1, the cross-core ping-pong.
#[test]
fn two_cores_share_threads_locks_and_channels() {
    if !kvm() {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        skip("this host has one CPU; --cpus 2 is refused here");
        return;
    }
    // 2,000 round trips: each wakes a halted core, which takes a host
    // time slice (ms) when the host's CPUs are busy with something else;
    // 100,000 ran past the timeout on a loaded machine. The bench measures
    // the round trip; here it need only work.
    let r = run(&["--timeout", "60", "--cpus", "2", "--timeline=json"], &guest("threads"), &["2000"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("threads: 2 core(s)"));
    for core in 0..2 {
        assert_eq!(r.stdout.matches(&format!(" on core {core}\n")).count(), 3, "{}", r.stdout);
    }
    assert!(r.stdout.contains("cannot spawn on core 2: this machine has 2 core(s)"));
    assert!(r.stdout.contains("counter 4000 (expected 4000)"));
    assert!(r.stdout.contains("40000 messages from 4 senders on 2 core(s), each once and in order"));
    let line = r.stdout.lines().find(|l| l.contains("on core 1, slept 10 ms")).expect("a core 1 sleep line");
    let us: u64 = line.split("after ").nth(1).and_then(|x| x.split(' ').next()).unwrap().parse().unwrap();
    assert!((10_000..200_000).contains(&us), "{line}");
    assert!(r.stdout.contains("ping-pong core 0 <-> core 1: 2000 round trips in"));
    assert!(r.stdout.contains("threads: ok"));
    assert_eq!(json_u64(&r.stderr, "vcpus"), Some(2), "{}", r.stderr);
    // --timeout stops both vCPUs (both busy with a ping-pong that would
    // take minutes).
    let t = std::time::Instant::now();
    let r = run(&["--timeout", "1", "--cpus", "2"], &guest("threads"), &["1000000000"]);
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(t.elapsed().as_secs() < 20);
}

/// `--cpus` beyond what the host, KVM or the kernel allow is refused
/// before anything runs; so is 0; one core never starts a second vCPU.
#[test]
fn cpu_counts_are_checked() {
    let threads = guest("threads");
    let r = run(&["--cpus", "0"], &threads, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("at least 1 vCPU"), "{}", r.stderr);
    if !kvm() {
        return;
    }
    let r = run(&["--cpus", "1000"], &threads, &[]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(r.stderr.contains("--cpus 1000:") && r.stderr.contains("at most"), "{}", r.stderr);
    let host = std::thread::available_parallelism().map_or(1, |n| n.get());
    if host < 16 {
        let n = (host + 1).to_string();
        let r = run(&["--cpus", &n], &threads, &[]);
        assert_eq!(r.code, 78, "{}", r.stderr);
        assert!(r.stderr.contains(&format!("this host has at most {host} CPU(s)")), "{}", r.stderr);
    }
    // hello has no process unit: it never asks for the second vCPU.
    if host >= 2 {
        let r = run(&["--cpus", "2", "--timeline=json"], &guest("hello"), &[]);
        assert_eq!(r.code, 0);
        assert_eq!(json_u64(&r.stderr, "vcpus"), Some(1), "{}", r.stderr);
    }
}

/// An MSI (the monitor's test interrupt, through KVM_SIGNAL_MSI as virtio
/// devices will) reaches a thread waiting for it on core 0 and on core 1;
/// the 50 ms wait, longer than the deadlock check's period, is no deadlock,
/// and the core halts meanwhile.
#[test]
fn a_device_interrupt_wakes_the_thread_waiting_for_it() {
    if !kvm() {
        return;
    }
    let two = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    for cpus in if two { &["1", "2"][..] } else { &["1"][..] } {
        let r = run(&["--timeout", "20", "--cpus", cpus, "--timeline=json"], &guest("threads"), &["irq"]);
        assert_eq!(r.code, 0, "{}", r.stdout);
        let core = if *cpus == "1" { 0 } else { 1 };
        let line =
            r.stdout.lines().find(|l| l.contains("interrupt 0x53 reached")).expect("the interrupt line");
        assert!(line.contains(&format!("on core {core} after")), "{line}");
        let halts =
            json_u64(&r.stderr, "halt_exits").unwrap_or(0) + json_u64(&r.stderr, "halt_wakeup").unwrap_or(0);
        assert!(halts >= 1, "no halt while waiting: {}", r.stderr);
    }
}

/// Run `elf` with a fresh blkcheck image as its disk (`opts` appended to
/// the path, `args` before `--disk`); the run and the image before and
/// after (the image is removed).
fn run_with_image(
    name: &str,
    opts: &str,
    args: &[&str],
    elf: &Path,
    cmdline: &[&str],
) -> (Run, Vec<u8>, Vec<u8>) {
    let img = xtask::blkcheck_image(name, 4 << 20);
    let before = std::fs::read(&img).unwrap();
    let disk = format!("{}{opts}", img.display());
    let r = run(&[args, &["--disk", &disk]].concat(), elf, cmdline);
    let after = std::fs::read(&img).unwrap();
    std::fs::remove_file(&img).unwrap();
    (r, before, after)
}

/// `--disk`: virtio-blk on our monitor, completion by MSI. blkcheck reads
/// the pattern, writes its own and flushes; the image is checked byte for
/// byte. With `,ro` the write is refused and the image is unchanged.
#[test]
fn virtio_blk_disk_on_our_monitor() {
    if !kvm() {
        return;
    }
    let blkcheck = guest("blkcheck");
    for ro in [false, true] {
        let (r, before, after) = run_with_image(
            if ro { "disk-ro" } else { "disk-rw" },
            if ro { ",ro" } else { "" },
            &["--timeout", "20", "--timeline=json"],
            &blkcheck,
            if ro { &["ro"] } else { &[] },
        );
        assert_eq!(r.code, 0, "{}", r.stdout);
        assert!(
            r.stdout.contains("virtio-blk at 0xd0000000 (irq 0, interrupts): 8192 blocks"),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("read 65536 bytes, pattern ok"));
        assert!(r.stdout.contains("device id 'torito-disk0'"), "{}", r.stdout);
        if ro {
            assert!(r.stdout.contains("write refused: device is read-only"), "{}", r.stdout);
            assert!(after == before, "a read-only image changed");
        } else {
            assert!(r.stdout.contains("blkcheck: ok"));
            xtask::assert_blkcheck_wrote(&before, &after);
        }
        // Every device access is an MMIO exit: bounded, counted.
        let mmio = json_u64(&r.stderr, "mmio_exits").unwrap_or(0);
        assert!((10..200).contains(&mmio), "mmio exits: {mmio}");
    }
}

/// `--disk PATH,iothread`: queue notifications reach the monitor through an
/// ioeventfd (no exit) and the device I/O thread serves them; blkcheck
/// passes with completion by interrupt (an MSI from the I/O thread) and by
/// polling, and the image is right byte for byte.
#[test]
fn virtio_blk_disk_on_the_io_thread() {
    if !kvm() {
        return;
    }
    let blkcheck = guest("blkcheck");
    for poll in [false, true] {
        let (r, before, after) = run_with_image(
            if poll { "disk-iot-poll" } else { "disk-iot" },
            ",iothread",
            &["--timeout", "20"],
            &blkcheck,
            if poll { &["devices.poll"] } else { &[] },
        );
        assert_eq!(r.code, 0, "{}", r.stdout);
        let mode = if poll { "polled" } else { "interrupts" };
        assert!(r.stdout.contains(&format!("(irq 0, {mode}): 8192 blocks")), "{}", r.stdout);
        assert!(r.stdout.contains("blkcheck: ok"), "{}", r.stdout);
        xtask::assert_blkcheck_wrote(&before, &after);
    }
}

/// Disks that cannot work are refused before the guest starts.
#[test]
fn bad_disks_are_clear_errors() {
    let blkcheck = guest("blkcheck");
    let r = run(&["--disk", "/nonexistent/disk.img"], &blkcheck, &[]);
    assert_eq!(r.code, 66, "{}", r.stderr);
    assert!(
        r.stderr.contains("disk /nonexistent/disk.img") && r.stderr.contains("No such file"),
        "{}",
        r.stderr
    );
    let dir = std::env::temp_dir();
    let r = run(&["--disk", dir.to_str().unwrap()], &blkcheck, &[]);
    assert_eq!(r.code, 66, "{}", r.stderr);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);
    // A file we may read but not write (read-only even for root), without
    // ",ro": refused, with the hint.
    if std::path::Path::new("/sys/kernel/notes").exists() {
        let r = run(&["--disk", "/sys/kernel/notes"], &blkcheck, &[]);
        assert_eq!(r.code, 66, "{}", r.stderr);
        assert!(r.stderr.contains("Permission denied") && r.stderr.contains("add ',ro'"), "{}", r.stderr);
    }
    let r = run(&["--disk", "/proc/version,ro"], &blkcheck, &[]);
    assert_eq!(r.code, 66, "{}", r.stderr);
    assert!(r.stderr.contains("smaller than one 512-byte sector"), "{}", r.stderr);
    // A size that is not whole sectors is refused, not cut (it lost its
    // tail before).
    let odd = std::env::temp_dir().join(format!("torito-odd-{}.img", std::process::id()));
    std::fs::write(&odd, vec![7u8; 600]).unwrap();
    let r = run(&["--disk", odd.to_str().unwrap()], &blkcheck, &[]);
    std::fs::remove_file(&odd).unwrap();
    assert_eq!(r.code, 66, "{}", r.stderr);
    assert!(r.stderr.contains("600 bytes is not a whole number of 512-byte sectors"), "{}", r.stderr);
    assert!(r.stderr.contains("truncate -s %512"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let r = run(&["--disk", "x.img,rw"], &blkcheck, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown disk option 'rw'"), "{}", r.stderr);
}

/// A guest that misuses the disk on purpose (queue outside RAM, buffers
/// outside RAM or wrapping, a looping chain, a successor past the table, a
/// write past the end): the monitor refuses or fails each, serves the good
/// read after them, writes nothing, and does not fail.
#[test]
fn a_misbehaving_guest_cannot_break_the_disk_device() {
    if !kvm() {
        return;
    }
    // Served inline, and on the I/O thread.
    for opt in ["", ",iothread"] {
        let (r, before, after) =
            run_with_image("disk-evil", opt, &["--timeout", "20"], &guest("evilblk"), &[]);
        assert_eq!(r.code, 0, "{opt}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("queue outside RAM refused: true"), "{}", r.stdout);
        assert!(r.stdout.contains("4 bad chains returned"), "{}", r.stdout);
        assert!(r.stdout.contains("good read: status 0, data ok"), "{}", r.stdout);
        assert!(after == before, "the image changed");
    }
}

/// NICs that cannot work are refused before the guest starts, saying how
/// to make one.
#[test]
fn bad_nics_are_clear_errors() {
    let echo = guest("echo");
    let r = run(&["--net", "tap=no-such-tap9"], &echo, &[]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(
        r.stderr.contains("no network device 'no-such-tap9'") && r.stderr.contains("ip tuntap add"),
        "{}",
        r.stderr
    );
    let r = run(&["--net", "tap=x,speed=9"], &echo, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown NIC option 'speed=9'"), "{}", r.stderr);
    // `lo` exists but is not a TAP device.
    let r = run(&["--net", "tap=lo"], &echo, &[]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(r.stderr.contains("cannot attach to TAP device 'lo'"), "{}", r.stderr);
}

/// An appliance that wants the network on a guest with no NIC is told so.
#[test]
fn binding_without_a_nic_is_a_clear_error() {
    if !kvm() {
        return;
    }
    let r = run(&["--timeout", "20"], &guest("echo"), &["torito.ip=10.0.2.15/24"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("cannot listen on port 7: no network interface"), "{}", r.stdout);
}

/// `--vsock cid=3,uds=PATH`: a host program connects to PATH, asks for
/// guest port 7, and the echo appliance sends 1 MiB back byte for byte.
#[test]
fn vsock_echo_through_the_unix_socket() {
    use std::io::Read;
    if !kvm() {
        return;
    }
    let uds = std::env::temp_dir().join(format!("torito-vsock-{}.sock", std::process::id()));
    let mut vm = torito()
        .args(["--timeout", "30", "--vsock"])
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg(guest("echo"))
        .args(["--", "vsock", "port=7", "conns=1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut s = xtask::hybrid_vsock_connect(&uds, 7, std::time::Duration::from_secs(10));
    xtask::assert_echoes(&mut s, 1 << 20, 11);
    drop(s);
    let status = vm.wait().unwrap();
    let mut out = String::new();
    vm.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = std::fs::remove_file(&uds);
    assert!(out.contains("1 vsock connection(s), 1048576 bytes echoed"), "{out}");
    assert_eq!(status.code(), Some(0));
}

/// A monitor killed with SIGKILL leaves its vsock socket file; a restart
/// on the same path replaces it, while a second monitor on the path of a
/// live one is refused in one line.
#[test]
fn a_restart_after_sigkill_reuses_the_vsock_path() {
    if !kvm() {
        return;
    }
    let uds = std::env::temp_dir().join(format!("torito-vsock-kill-{}.sock", std::process::id()));
    let opt = format!("cid=3,uds={}", uds.display());
    let start = || {
        let mut c = torito();
        c.args(["--timeout", "30", "--vsock", &opt]).arg(guest("echo")).args(["--", "vsock", "port=7"]);
        xtask::group::spawn(c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()))
            .unwrap()
    };
    let first = start();
    assert!(xtask::testing::poll(std::time::Duration::from_secs(10), || uds.exists()), "listening");
    let r = run(&["--vsock", &opt], &guest("echo"), &["vsock", "port=7"]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(r.stderr.contains("is in use by another process"), "{}", r.stderr);
    first.kill();
    assert!(uds.exists(), "SIGKILL leaves the socket file");
    let second = start();
    let mut s = xtask::hybrid_vsock_connect(&uds, 7, std::time::Duration::from_secs(10));
    xtask::assert_echoes(&mut s, 4096, 3);
    drop(s);
    second.kill();
    let _ = std::fs::remove_file(&uds);
}

/// Bad vsock settings are refused before the guest starts.
#[test]
fn bad_vsock_options_are_clear_errors() {
    let r = run(&["--vsock", "cid=2,uds=/tmp/x"], &guest("echo"), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cid=N with N ≥ 3"), "{}", r.stderr);
    let r = run(&["--vsock", "cid=3,uds=/nonexistent-dir/v.sock"], &guest("echo"), &[]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(r.stderr.contains("cannot listen on /nonexistent-dir/v.sock"), "{}", r.stderr);
}

/// A vsock socket path named after `tag`, and a host program's listener
/// at its host port 5000 (`PATH_5000`, a stale file there removed).
fn host_port_5000(tag: &str) -> (PathBuf, PathBuf, std::os::unix::net::UnixListener) {
    let uds = std::env::temp_dir().join(format!("{tag}-{}.sock", std::process::id()));
    let target = PathBuf::from(format!("{}_5000", uds.display()));
    let _ = std::fs::remove_file(&target);
    let listener = std::os::unix::net::UnixListener::bind(&target).unwrap();
    (uds, target, listener)
}

/// The guest connects out over vsock: host port 5000 is the Unix socket
/// `PATH_5000`, where a host program answers.
#[test]
fn vsock_guest_connects_to_the_host() {
    use std::io::{Read, Write};
    if !kvm() {
        return;
    }
    let (uds, target, listener) = host_port_5000("torito-vsock-out");
    let host = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut got = [0u8; 17];
        c.read_exact(&mut got).unwrap();
        c.write_all(b"welcome back\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        got
    });
    let r = run(
        &["--timeout", "20", "--vsock", &format!("cid=3,uds={}", uds.display())],
        &guest("echo"),
        &["vconnect=5000"],
    );
    let got = host.join().unwrap();
    let _ = std::fs::remove_file(&target);
    let _ = std::fs::remove_file(&uds);
    assert_eq!(&got, b"hello over vsock\n");
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("vsock host port 5000 answered 13 bytes"), "{}", r.stdout);
}

/// A guest that opens vsock connections without end (1,500, beyond the
/// cap of 1,024) and writes 64 KiB on each, to a host program that
/// accepts them all and reads nothing: the monitor refuses what is beyond
/// its cap, does not stall (it once spent two system calls per connection
/// on every packet, and waited 200 ms on each close), and its memory
/// stays within its stated bound (connections × 256 KiB of credit waiting
/// for the host program, plus the packets waiting for the guest: ~260 MiB
/// at worst; a guest that fills all the credit reaches ~247 MiB, see
/// docs/security.md; 64 KiB each keeps this test short).
#[test]
fn a_vsock_connection_flood_stays_within_the_caps() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !kvm() {
        return;
    }
    let (uds, target, listener) = host_port_5000("torito-vflood");
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    // Takes every connection and keeps it, reading nothing.
    let host = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => held.push(c),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        held.len()
    });
    let r = run(
        &[
            "--timeout",
            "120",
            "--mem",
            "512M",
            "--timeline=json",
            "--vsock",
            &format!("cid=3,uds={}", uds.display()),
        ],
        &guest("vflood"),
        &["port=5000", "conns=1500", "kib=64"],
    );
    done.store(true, Ordering::Relaxed);
    let accepted = host.join().unwrap();
    let _ = std::fs::remove_file(&target);
    let _ = std::fs::remove_file(&uds);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stdout.contains("vflood: 1500 asked, 1024 connected, 476 refused, 0 failed writing"),
        "{}",
        r.stdout
    );
    assert_eq!(accepted, 1024, "connections the host program saw");
    let rss = json_u64(&r.stderr, "peak_rss_kib").expect("peak RSS in the timeline");
    eprintln!("vflood: monitor peak RSS {rss} KiB");
    assert!(rss < (1024 * 256 + 32 * 1024), "peak RSS {rss} KiB");
}

/// Say that the running test could not run (and record it for `cargo xtask
/// test`, which counts it as skipped: see `xtask::testing::skip`).
fn skip(why: &str) {
    std::eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os("TORITO_SKIP_LOG") {
        use std::io::Write;
        let name = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            // One write of the whole line: O_APPEND keeps it whole among
            // tests writing at once.
            let _ = f.write_all(format!("{name}\t{why}\n").as_bytes());
        }
    }
}

/// `--core PATH`: a guest that panics leaves an ELF core file that real
/// gdb opens: the signal, the frames down to the app's function, one
/// thread per vCPU.
#[test]
fn a_core_file_opens_in_gdb_with_the_frames_and_every_vcpu() {
    if !kvm() || !xtask::testing::need("gdb") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("torito-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gdb = |elf: &std::path::Path, core: &std::path::Path| {
        let out = std::process::Command::new("gdb")
            .args(["-batch", "-nx", "-ex", "bt", "-ex", "info threads"])
            .arg(elf)
            .arg(core)
            .output()
            .expect("run gdb");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let panics = guest("panics");
    let core = dir.join("panics.core");
    let r = run(&["--core", core.to_str().unwrap()], &panics, &["x"]);
    assert_eq!(r.code, 101);
    assert!(r.stderr.contains("core written to"), "{}", r.stderr);
    let text = gdb(&panics, &core);
    assert!(text.contains("Program terminated with signal SIGABRT"), "{text}");
    assert!(text.contains("panics::check_the_answer"), "{text}");
    assert!(text.contains("kernel_main"), "{text}");
    // Two vCPUs, two threads; a page fault is SIGSEGV.
    let threads = guest("threads");
    let core = dir.join("threads.core");
    let r = run(&["--core", core.to_str().unwrap(), "--cpus", "2", "--timeout", "20"], &threads, &["panic"]);
    assert_eq!(r.code, 101, "{}", r.stdout);
    let text = gdb(&threads, &core);
    assert!(text.contains("LWP 1") && text.contains("LWP 2"), "{text}");
    let fault = guest("fault");
    let core = dir.join("fault.core");
    let r = run(&["--core", core.to_str().unwrap()], &fault, &["pf"]);
    assert_eq!(r.code, 128 + 14);
    assert!(gdb(&fault, &core).contains("signal SIGSEGV"));
    // A clean exit leaves none.
    let core = dir.join("hello.core");
    let r = run(&["--core", core.to_str().unwrap()], &guest("hello"), &[]);
    assert_eq!(r.code, 0);
    assert!(!core.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--teardown=keeper`: the keeper is made as the guest stops, before the
/// core file is written, and the core is whole all the same; the keeper
/// ends by itself (status 0) for its reaper, here netload, a subreaper.
/// A clean run leaves its keeper too, and a run without one leaves nothing.
#[test]
fn a_keeper_run_writes_its_core_and_its_keeper_ends() {
    if !kvm() {
        return;
    }
    let netload = xtask::build_netload().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("torito-keeper-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("panics.core");
    let reap = |args: &[&str], elf: &Path, cmdline: &[&str]| {
        let out = Command::new(&netload)
            .args(["reap", "--", env!("CARGO_BIN_EXE_torito")])
            .args(args)
            .arg(elf)
            .arg("--")
            .args(cmdline)
            .output()
            .expect("run netload reap");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        eprintln!("--- {args:?} {}:\n{text}", elf.display());
        text
    };
    let keeper = "orphans: 1 (torito-exit reaped at ";
    let text = reap(&["--teardown=keeper", "--core", core.to_str().unwrap()], &guest("panics"), &["x"]);
    assert!(text.contains("reap: status 101,"), "{text}");
    assert!(text.contains(keeper) && text.contains("with status 0)"), "{text}");
    assert!(text.contains("core written to"), "{text}");
    let head = std::fs::read(&core).unwrap();
    // An ELF core file (`e_type` 4), with more than its header.
    assert!(head.len() > 4096 && head.starts_with(b"\x7fELF") && head[16] == 4, "{} bytes", head.len());
    let text = reap(&["--teardown=keeper"], &guest("hello"), &[]);
    assert!(text.contains("reap: status 0,") && text.contains(keeper), "{text}");
    let text = reap(&[], &guest("hello"), &[]);
    assert!(text.contains("reap: status 0, orphans: 0"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// seccomp: a system call no filter allows, made by the vCPU thread once
/// its filter is in place (the `TORITO_TEST_FORBIDDEN_SYSCALL` aid:
/// `execve` of nothing), kills the monitor with SIGSYS after one line
/// naming the thread and the call. `--seccomp=log` lets it through (the
/// kernel logs it) and `--no-seccomp` installs nothing and says so: the
/// same call then fails harmlessly and the guest runs to its end.
#[test]
fn a_forbidden_system_call_kills_the_monitor_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    if !kvm() {
        return;
    }
    let hello = guest("hello");
    let out = torito()
        .env("TORITO_TEST_FORBIDDEN_SYSCALL", "1")
        .args(["--timeout", "10"])
        .arg(&hello)
        .output()
        .expect("run torito");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}: {err}", out.status);
    assert!(err.contains("seccomp: the vCPU thread made system call execve (59;"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Hello from Torito"), "the guest stopped at once");
    let env = [("TORITO_TEST_FORBIDDEN_SYSCALL", "1")];
    let r = run_env(&env, &["--timeout", "10", "--seccomp=log"], &hello, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("seccomp logs instead of stopping"), "{}", r.stderr);
    let r = run_env(&env, &["--timeout", "10", "--no-seccomp"], &hello, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Hello from Torito"), "{}", r.stdout);
    assert!(r.stderr.contains("seccomp is off"), "{}", r.stderr);
    let r = run(&["--seccomp=off", "--no-seccomp"], &hello, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// Every thread of a running monitor is under a seccomp filter
/// (`Seccomp: 2` in `/proc/PID/task/*/status`): vCPU 0, the device I/O
/// thread (a vsock device has host I/O), secondary vCPUs.
#[test]
fn every_thread_of_a_running_monitor_is_filtered() {
    use std::io::BufRead;
    if !kvm() {
        return;
    }
    let uds = std::env::temp_dir().join(format!("torito-seccomp-{}.sock", std::process::id()));
    let mut c = torito();
    c.args(["--timeout", "60", "--cpus", "2", "--mem", "256M", "--vsock"])
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg(guest("threads"))
        .args(["--", "100000000"]);
    let mut vm =
        xtask::group::spawn(c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()))
            .unwrap();
    let mut out = std::io::BufReader::new(vm.take_stdout().expect("stdout"));
    let mut line = String::new();
    while out.read_line(&mut line).is_ok_and(|n| n > 0) && !line.contains("core(s)") {
        line.clear();
    }
    assert!(line.contains("threads: 2 core(s)"), "{line}");
    // (name, Seccomp field) of each thread of the monitor; KVM's own
    // workers (`kvm-nx-lpage-recovery`, in the process's thread group on
    // recent kernels) run no code of ours and are left out.
    let tasks = std::path::PathBuf::from(format!("/proc/{}/task", vm.id()));
    let threads = || -> Vec<(String, String)> {
        let mut v = Vec::new();
        for t in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            if !field("Name:").starts_with("kvm-") {
                v.push((field("Name:"), field("Seccomp:")));
            }
        }
        v
    };
    // A thread names itself once it runs: on a busy machine that can be a
    // moment after the guest's line.
    let named = |v: &[(String, String)]| ["io", "vcpu1"].iter().all(|w| v.iter().any(|(n, _)| n == w));
    xtask::testing::poll(std::time::Duration::from_secs(30), || named(&threads()));
    let all = threads();
    for (name, seccomp) in &all {
        assert_eq!(seccomp, "2", "thread {name}: {all:?}");
    }
    let mut names: Vec<String> = all.into_iter().map(|(n, _)| n).collect();
    vm.kill();
    let _ = std::fs::remove_file(&uds);
    names.sort();
    for want in ["io", "vcpu1"] {
        assert!(names.iter().any(|n| n == want), "no {want} thread in {names:?}");
    }
}

/// A guest that prints 64 MiB as fast as it can (`flood`): the monitor
/// streams it to its standard output, one console write (≤ 64 KiB) at a
/// time; its peak RSS stays under 16 MiB.
#[test]
fn a_guest_printing_a_lot_is_streamed_not_kept() {
    if !kvm() {
        return;
    }
    let out = torito()
        .args(["--timeout", "120", "--timeline=json"])
        .arg(guest("flood"))
        .args(["--", "64"])
        .stdout(std::process::Stdio::null())
        .output()
        .expect("run torito");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let rss = json_u64(&err, "peak_rss_kib").expect("peak RSS in the timeline");
    assert!(rss < 16 * 1024, "peak RSS {rss} KiB after printing 64 MiB");
}
