//! `apps/kvstore` with real clients (redis-cli, redis-benchmark, nc) in a
//! network namespace: every command against Redis's replies, pipelining,
//! hostile requests (bad lengths, random bytes, a value beyond
//! `maxmemory`) after which the guest heap is back where it was, the
//! append-only file across restarts (a kill -9 during writes with
//! `appendfsync=always` loses nothing acknowledged, a torn end is cut, a
//! corrupt middle stops the boot naming its offset), on our monitor (the
//! file on a `--share`) and on QEMU microvm.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use xtask::group::GroupChild;
use xtask::netns::{GUEST, Netns};
use xtask::{QemuMachine, Variant};

fn scratch(tag: &str) -> PathBuf {
    let d = xtask::root().join("target/tests").join(format!("kvstore-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `redis-cli` (formatted replies, as on a terminal) with `args`.
fn cli(ns: &Netns, args: &[&str]) -> String {
    let out =
        ns.exec("redis-cli").args(["-h", GUEST, "--no-raw"]).args(args).output().expect("run redis-cli");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s.trim_end().to_string()
}

/// Raw bytes through `nc`; what came back.
fn raw(ns: &Netns, request: &[u8]) -> String {
    let mut nc = ns
        .exec("nc")
        .args(["-w", "3", GUEST, "6379"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run nc");
    let _ = nc.stdin.take().unwrap().write_all(request);
    String::from_utf8_lossy(&nc.wait_with_output().unwrap().stdout).into_owned()
}

/// Wait until kvstore answers PING; its console in the panic when it ended.
fn wait_for_pong(ns: &Netns, mut vm: GroupChild) -> GroupChild {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if cli(ns, &["PING"]) == "PONG" {
            return vm;
        }
        if vm.has_ended() {
            let out = vm.wait_with_output().unwrap();
            panic!("kvstore ended before answering: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kvstore never answered PING");
}

/// `INFO memory`'s `used_memory`: the guest heap in use.
fn heap_used(ns: &Netns) -> u64 {
    let info = cli(ns, &["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.trim_matches('"').split("\\r\\n").find_map(|f| f.strip_prefix("used_memory:")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no used_memory in {info}"))
}

/// kvstore on the Torito monitor in `ns`, `/data` a share of `data`.
fn start_on_torito(ns: &Netns, data: &Path, args: &[&str]) -> GroupChild {
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let elf = xtask::build("kvstore", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = ns.exec("timeout");
    c.arg("300").arg(monitor).args(["--mem", "256M", "--cpus", "2", "--net", "tap=tap0", "--share"]);
    c.arg(format!("{},tag=data", data.display())).arg(elf);
    c.args(["--", "torito.ip=10.0.2.15/24"]).args(args);
    xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start torito")
}

/// Every command of the issue, as redis-cli prints Redis's replies.
fn check_commands(ns: &Netns) {
    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "PONG"),
        (&["ECHO", "hello world"], "\"hello world\""),
        (&["FLUSHALL"], "OK"),
        (&["SET", "k", "v"], "OK"),
        (&["GET", "k"], "\"v\""),
        (&["GET", "missing"], "(nil)"),
        (&["SET", "k", "w", "NX"], "(nil)"),
        (&["SET", "k", "w", "XX"], "OK"),
        (&["SET", "t", "x", "EX", "100"], "OK"),
        (&["TTL", "t"], "(integer) 100"),
        (&["SET", "p", "x", "PX", "100000"], "OK"),
        (&["EXPIRE", "k", "50"], "(integer) 1"),
        (&["TTL", "k"], "(integer) 50"),
        (&["TTL", "missing"], "(integer) -2"),
        (&["SET", "n", "41"], "OK"),
        (&["INCR", "n"], "(integer) 42"),
        (&["INCRBY", "n", "8"], "(integer) 50"),
        (&["DECR", "n"], "(integer) 49"),
        (&["INCR", "k"], "(error) ERR value is not an integer or out of range"),
        (&["MSET", "a", "1", "b", "2"], "OK"),
        (&["MGET", "a", "missing", "b"], "1) \"1\"\n2) (nil)\n3) \"2\""),
        (&["EXISTS", "a", "b", "missing"], "(integer) 2"),
        (&["DEL", "a", "missing"], "(integer) 1"),
        (&["KEYS", "[bn]"], "KEYS"),
        (&["DBSIZE"], "(integer) 5"),
        (&["SET", "k"], "(error) ERR wrong number of arguments for 'set' command"),
        (&["NOSUCH", "x"], "(error) ERR unknown command 'NOSUCH', with args beginning with: 'x'"),
        (&["CONFIG", "GET", "appendonly"], "1) \"appendonly\"\n2) \"yes\""),
        (&["SELECT", "0"], "OK"),
        (&["FLUSHALL"], "OK"),
        (&["DBSIZE"], "(integer) 0"),
        (&["QUIT"], "OK"),
    ];
    for (args, want) in cases {
        let got = cli(ns, args);
        if *want == "KEYS" {
            let mut keys: Vec<&str> = got.lines().map(|l| l.split_once(") ").map_or(l, |x| x.1)).collect();
            keys.sort();
            assert_eq!(keys, ["\"b\"", "\"n\""], "KEYS: {got}");
        } else {
            assert_eq!(&got, want, "redis-cli {args:?}");
        }
    }
    let info = cli(ns, &["INFO"]);
    for field in
        ["redis_version:", "connected_clients:", "used_memory:", "aof_enabled:1", "total_commands_processed:"]
    {
        assert!(info.contains(field), "INFO lacks {field}: {info}");
    }
    // Pipelining: many requests in one write, answered in order.
    let mut many = Vec::new();
    for i in 0..200 {
        many.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n$1\r\n{}\r\n", i % 10).as_bytes(),
        );
    }
    many.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$4\r\nk123\r\nDBSIZE\r\n*1\r\n$4\r\nQUIT\r\n");
    let got = raw(ns, &many);
    assert_eq!(got, format!("{}$1\r\n3\r\n:200\r\n+OK\r\n", "+OK\r\n".repeat(200)));
    assert_eq!(cli(ns, &["FLUSHALL"]), "OK");
}

/// Hostile requests: each answered with an error and a close; the server
/// goes on, and the heap returns to where it was.
fn check_bad_input(ns: &Netns, dir: &Path) {
    // Warm up (first connections set up per-core caches), then the baseline.
    for _ in 0..3 {
        assert_eq!(cli(ns, &["PING"]), "PONG");
    }
    let before = heap_used(ns);
    let bad: [(&[u8], &str); 6] = [
        (b"*1\r\n$-7\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$99999999999999\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$abc\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*-x\r\n", "-ERR Protocol error: invalid multibulk length"),
        (b"*2000000\r\n", "-ERR Protocol error: invalid multibulk length"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$104857600\r\n", "-OOM command not allowed"),
    ];
    for (req, want) in bad {
        let got = raw(ns, req);
        assert!(got.starts_with(want), "{:?}: {got:?}", String::from_utf8_lossy(req));
    }
    // 100 MiB through redis-cli itself: refused, nothing stored.
    let big = dir.join("big-value");
    std::fs::write(&big, vec![b'x'; 100 << 20]).unwrap();
    let out = ns
        .exec("timeout")
        .args(["60", "redis-cli", "-h", GUEST, "-x", "SET", "big"])
        .stdin(std::fs::File::open(&big).unwrap())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // The reply, or the reset that cut redis-cli's sending short (it may
    // die of SIGPIPE first): never OK.
    assert!(
        !said.contains("OK") && (said.contains("OOM") || !out.status.success()),
        "{said} {:?}",
        out.status
    );
    std::fs::remove_file(&big).unwrap();
    // Random bytes: answered or closed, never fatal.
    for seed in 1..=8u64 {
        let _ = raw(ns, &xtask::noise(4096, seed));
    }
    assert_eq!(cli(ns, &["EXISTS", "big"]), "(integer) 0");
    assert_eq!(cli(ns, &["PING"]), "PONG");
    // Connections end in the guest a moment after the client closed.
    let after =
        xtask::testing::settle(before + (256 << 10), Duration::from_secs(5), || Some(heap_used(ns))).unwrap();
    assert!(after <= before + (256 << 10), "heap in use {before} before the bad input, {after} after");
}

/// redis-benchmark as the issue runs it: completes, every request answered.
fn check_benchmark(ns: &Netns) {
    let out = ns
        .exec("redis-benchmark")
        .args(["-h", GUEST, "-t", "set,get", "-n", "100000", "-c", "50", "-P", "16", "-q"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "redis-benchmark failed: {text}");
    for t in ["SET: ", "GET: "] {
        assert!(
            text.lines().any(|l| l.contains(t) && l.contains("requests per second")),
            "no {t} line: {text}"
        );
    }
    assert!(!text.to_lowercase().contains("error"), "{text}");
}

#[test]
fn kvstore_with_redis_cli_benchmark_and_an_aof() {
    let Some(ns) = Netns::or_skip("kv", &["ip", "ping", "nc", "redis-cli", "redis-benchmark"]) else {
        return;
    };
    let dir = scratch("trt");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = ["aof=/data/appendonly.aof", "appendfsync=always", "maxmemory=64mb"];
    let vm = wait_for_pong(&ns, start_on_torito(&ns, &data, &args));
    check_commands(&ns);
    check_bad_input(&ns, &dir);
    check_benchmark(&ns);

    // Kill -9 during a write load: every acknowledged INCR is in the file.
    assert_eq!(cli(&ns, &["SET", "kept", "yes"]), "OK");
    let mut load = ns
        .exec("redis-cli")
        .args(["-h", GUEST, "-r", "-1", "INCR", "counter"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    vm.kill();
    let _ = load.kill();
    let seen = String::from_utf8_lossy(&load.wait_with_output().unwrap().stdout).into_owned();
    let acked: u64 = seen.lines().filter_map(|l| l.trim().parse().ok()).max().unwrap_or(0);
    assert!(acked > 10, "too few INCRs before the kill: {acked}");
    let vm = wait_for_pong(&ns, start_on_torito(&ns, &data, &args));
    let kept: u64 = cli(&ns, &["GET", "counter"]).trim_matches('"').parse().unwrap();
    assert!(kept >= acked, "{acked} INCRs acknowledged, {kept} after the restart");
    assert_eq!(cli(&ns, &["GET", "kept"]), "\"yes\"");
    drop(vm);

    // A torn last record is cut off and the rest loads.
    let aof = data.join("appendonly.aof");
    let whole = std::fs::read(&aof).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&aof)
        .unwrap()
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nz")
        .unwrap();
    let vm = wait_for_pong(&ns, start_on_torito(&ns, &data, &args));
    assert_eq!(cli(&ns, &["GET", "kept"]), "\"yes\"");
    assert_eq!(cli(&ns, &["EXISTS", "z"]), "(integer) 0");
    drop(vm);
    assert_eq!(std::fs::read(&aof).unwrap(), whole, "the torn end was not cut off");

    // A corrupt middle stops the boot with the offset.
    // The start of a record in the middle of the file loses its '*'.
    let mut bad = whole.clone();
    let mid = whole.len() / 2 + whole[whole.len() / 2..].windows(3).position(|w| w == b"\r\n*").unwrap() + 2;
    bad[mid] = b'@';
    std::fs::write(&aof, &bad).unwrap();
    let vm = start_on_torito(&ns, &data, &args);
    let out = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{console}");
    let want = format!(
        "kvstore: aof /data/appendonly.aof: corrupt record at byte {mid}: a record does not start with '*'"
    );
    assert!(console.contains(&want), "{console}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same ELF on QEMU microvm (no persistence): the commands and redis-benchmark.
#[test]
fn kvstore_on_qemu_microvm() {
    let Some(ns) =
        Netns::or_skip("kvq", &["qemu-system-x86_64", "ip", "ping", "nc", "redis-cli", "redis-benchmark"])
    else {
        return;
    };
    let pvh = Variant { pvh_only: true, ..Default::default() };
    let elf = xtask::build("kvstore", pvh).unwrap_or_else(|e| panic!("{e}"));
    let qemu = xtask::qemu(QemuMachine::MicrovmKvm, &elf, "torito.ip=10.0.2.15/24");
    let mut c = ns.exec("timeout");
    c.arg("300").arg(qemu.get_program()).args(qemu.get_args());
    c.args(["-machine", "acpi=off", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    c.args(["-device", "virtio-net-device,netdev=n0"]);
    let vm = wait_for_pong(
        &ns,
        xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start qemu"),
    );
    assert_eq!(cli(&ns, &["SET", "k", "v"]), "OK");
    assert_eq!(cli(&ns, &["GET", "k"]), "\"v\"");
    assert_eq!(cli(&ns, &["CONFIG", "GET", "appendonly"]), "1) \"appendonly\"\n2) \"no\"");
    check_benchmark(&ns);
    drop(vm);
}

/// Exits per command under redis-benchmark's pipelined load, from the
/// monitor's timeline once SHUTDOWN stopped the guest (boot included; an
/// upper bound with room: measured ~0.19 at 200,000 commands).
#[test]
fn kvstore_exits_per_command() {
    let Some(ns) = Netns::or_skip("kvx", &["ip", "redis-cli", "redis-benchmark"]) else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let elf = xtask::build("kvstore", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = ns.exec("timeout");
    c.arg("120").arg(monitor).args(["--cpus", "2", "--net", "tap=tap0", "--timeline=json"]).arg(elf);
    c.args(["--", "torito.ip=10.0.2.15/24"]);
    let vm =
        wait_for_pong(&ns, xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).unwrap());
    let n = 50_000;
    let bench = ns
        .exec("redis-benchmark")
        .args(["-h", GUEST, "-t", "set,get", "-n", &n.to_string(), "-c", "30", "-d", "3", "-P", "16", "-q"])
        .output()
        .unwrap();
    assert!(bench.status.success());
    let _ = ns.exec("timeout").args(["10", "redis-cli", "-h", GUEST, "SHUTDOWN"]).output();
    let out = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{console}");
    assert!(console.contains("kvstore: shutdown after "), "{console}");
    let err = String::from_utf8_lossy(&out.stderr);
    let json =
        err.lines().find(|l| l.starts_with("{\"time_zero\"")).unwrap_or_else(|| panic!("no timeline: {err}"));
    let exits = xtask::bench::json_number(json, "exits").unwrap();
    let per = exits as f64 / (2 * n) as f64;
    eprintln!("kvstore: {exits} exits for {} commands: {per:.3} per command", 2 * n);
    assert!(per <= 0.5, "{per:.3} exits per command (expected ~0.2)");
}
