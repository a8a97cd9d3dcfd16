//! `apps/httpd` with real clients (curl, wrk, nc) in a network namespace:
//! status codes and headers, conditional and range requests, keep-alive
//! and pipelining, files compared byte for byte with the host's, hostile
//! requests (paths that try to leave the root, oversized and malformed
//! heads, a client trickling its headers), on our monitor (files from a
//! `--share`) and QEMU microvm (files baked into the ELF).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use xtask::group::GroupChild;
use xtask::netns::{GUEST, Netns};
use xtask::testing::settle;
use xtask::{QemuMachine, Variant};

/// A scratch directory for one test, removed first.
fn scratch(tag: &str) -> PathBuf {
    let d = xtask::root().join("target/tests").join(format!("httpd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The site: an index, a page in a directory, a binary file of `big`
/// bytes (pseudo-random, so nothing is served by luck).
fn site(dir: &Path, big: usize) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("docs")).unwrap();
    std::fs::write(www.join("index.html"), "<!doctype html><h1>Torito</h1>\n").unwrap();
    std::fs::write(www.join("docs/index.html"), "<p>docs</p>\n").unwrap();
    std::fs::write(www.join("notes.txt"), "plain text\n").unwrap();
    std::fs::write(www.join("big.bin"), xtask::noise(big, 0x2545_f491_4f6c_dd1d)).unwrap();
    www
}

/// curl in `ns` with `args`; its output.
fn curl(ns: &Netns, args: &[&str]) -> Output {
    ns.exec("curl").args(["-s", "--max-time", "30"]).args(args).output().expect("run curl")
}

/// `curl -w '%{http_code}'` of `args` (the body discarded).
fn status(ns: &Netns, args: &[&str]) -> String {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&curl(ns, &a).stdout).into_owned()
}

/// The response head of `args` (`curl -D -`), lower-cased names.
fn head(ns: &Netns, args: &[&str]) -> String {
    let mut a = vec!["-o", "/dev/null", "-D", "-"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&curl(ns, &a).stdout).to_lowercase()
}

fn url(path: &str) -> String {
    format!("http://{GUEST}{path}")
}

/// Raw bytes to the server through `nc`; what came back.
fn raw(ns: &Netns, request: &[u8]) -> String {
    use std::io::Write;
    let mut nc = ns
        .exec("nc")
        .args(["-w", "3", GUEST, "80"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run nc");
    nc.stdin.take().unwrap().write_all(request).unwrap();
    String::from_utf8_lossy(&nc.wait_with_output().unwrap().stdout).into_owned()
}

/// Wait until httpd answers (at most 10 s).
fn wait_for_http(ns: &Netns) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if status(ns, &["--max-time", "1", &url("/")]) == "200" {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("httpd never answered");
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c =
        std::process::Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).split(' ').next().unwrap_or("").to_string()
}

/// Everything a client can see of the server, through curl and nc.
fn check_http(ns: &Netns, www: &Path) {
    // Bodies byte for byte, the index of a directory, HEAD.
    assert_eq!(curl(ns, &[&url("/")]).stdout, std::fs::read(www.join("index.html")).unwrap());
    assert_eq!(curl(ns, &[&url("/docs/")]).stdout, std::fs::read(www.join("docs/index.html")).unwrap());
    let big = std::fs::read(www.join("big.bin")).unwrap();
    let got = curl(ns, &[&url("/big.bin")]).stdout;
    assert_eq!(got.len(), big.len(), "big.bin length");
    assert_eq!(sha256(&got), sha256(&big), "big.bin differs");
    let h = head(ns, &[&url("/index.html")]);
    assert!(h.starts_with("http/1.1 200 ok"), "{h}");
    for want in
        ["content-type: text/html; charset=utf-8", "content-length: 31", "etag: \"", "last-modified: "]
    {
        assert!(h.contains(want), "no '{want}' in {h}");
    }
    assert!(head(ns, &[&url("/notes.txt")]).contains("content-type: text/plain"));
    assert!(head(ns, &[&url("/big.bin")]).contains("content-type: application/octet-stream"));
    let h = head(ns, &["-I", &url("/big.bin")]);
    assert!(h.contains(&format!("content-length: {}", big.len())), "{h}");
    assert_eq!(curl(ns, &["-I", &url("/index.html")]).status.code(), Some(0));

    // Conditional requests.
    let tag = h_value(&head(ns, &[&url("/index.html")]), "etag");
    let modified = h_value(&head(ns, &[&url("/index.html")]), "last-modified");
    assert_eq!(status(ns, &["-H", &format!("If-None-Match: {tag}"), &url("/index.html")]), "304");
    assert_eq!(status(ns, &["-H", "If-None-Match: \"other\"", &url("/index.html")]), "200");
    assert_eq!(status(ns, &["-H", &format!("If-Modified-Since: {modified}"), &url("/index.html")]), "304");
    assert_eq!(
        status(ns, &["-H", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT", &url("/index.html")]),
        "200"
    );

    // Ranges.
    let part = curl(ns, &["-r", "1000-1999", &url("/big.bin")]).stdout;
    assert!(part == big[1000..2000], "a range of big.bin");
    assert!(
        head(ns, &["-r", "1000-1999", &url("/big.bin")])
            .contains(&format!("content-range: bytes 1000-1999/{}", big.len()))
    );
    assert_eq!(status(ns, &["-r", "1000-1999", &url("/big.bin")]), "206");
    assert!(curl(ns, &["-r", "-10", &url("/big.bin")]).stdout == big[big.len() - 10..], "a suffix range");
    assert_eq!(status(ns, &["-r", &format!("{}-", big.len() + 5), &url("/big.bin")]), "416");

    // Errors.
    assert_eq!(status(ns, &[&url("/no-such-file")]), "404");
    assert_eq!(status(ns, &["-X", "POST", "-d", "a=1", &url("/")]), "405");
    assert!(head(ns, &["-X", "DELETE", &url("/")]).contains("allow: get, head"));
    assert_eq!(status(ns, &[&url("/docs")]), "301");
    assert!(head(ns, &[&url("/docs")]).contains("location: /docs/"));
    for evil in [
        "/../../etc/hostname",
        "/%2e%2e/%2e%2e/etc/hostname",
        "/docs/..%2f..%2fetc/hostname",
        "/index.html%00.txt",
        "/%ff%fe",
    ] {
        assert_eq!(status(ns, &["--path-as-is", &url(evil)]), "400", "{evil}");
    }
    assert_eq!(status(ns, &[&url(&format!("/{}", "a".repeat(10_000)))]), "414");
    assert_eq!(status(ns, &["-H", &format!("X-Big: {}", "b".repeat(9_000)), &url("/")]), "431");
    assert!(raw(ns, b"GET / HTTP/2.0\r\n\r\n").starts_with("HTTP/1.1 505 "));
    assert!(raw(ns, b"NOT A REQUEST\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(raw(ns, &[0xffu8; 64]).starts_with("HTTP/1.1 400 "));

    // Keep-alive (curl reuses its connection) and pipelining (answers in
    // order); HTTP/1.0 is answered and closed.
    let out = ns
        .exec("curl")
        .args(["-sv", "-o", "/dev/null", "-o", "/dev/null", &url("/"), &url("/notes.txt")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Re-using existing connection"), "no keep-alive");
    let two = raw(ns, b"GET /notes.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /docs/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (a, b) = (two.find("plain text").unwrap_or(usize::MAX), two.find("<p>docs</p>").unwrap_or(0));
    assert!(two.matches("HTTP/1.1 200 OK").count() == 2 && a < b, "{two}");
    let old = raw(ns, b"GET /notes.txt HTTP/1.0\r\n\r\n");
    assert!(old.starts_with("HTTP/1.1 200 ") && old.contains("Connection: close"), "{old}");

    // A client trickling its head is answered 408 and closed, while others
    // are served at once.
    let slow = std::thread::spawn({
        let mut c = ns.exec("nc");
        c.args(["-w", "15", GUEST, "80"]).stdin(Stdio::piped()).stdout(Stdio::piped());
        move || {
            use std::io::Write;
            let mut nc = c.spawn().unwrap();
            let mut input = nc.stdin.take().unwrap();
            for b in b"GET / HTTP/1.1\r\nX-Slow: yes\r\n" {
                if input.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            drop(input);
            String::from_utf8_lossy(&nc.wait_with_output().unwrap().stdout).into_owned()
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(ns, &[&url("/")]), "200");
    // Served while the slow client still trickles (≥ 9 s of it): an
    // order, not a time, so a loaded machine does not change the verdict.
    assert!(!slow.is_finished(), "the others were served only after the slow client");
    let answer = slow.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
}

/// The guest heap in use, from httpd's `status=/server-status` page.
fn heap_used(ns: &Netns) -> u64 {
    let page = String::from_utf8_lossy(&curl(ns, &[&url("/server-status")]).stdout).into_owned();
    assert!(page.starts_with("Active connections: "), "{page}");
    page.lines()
        .find_map(|l| l.strip_prefix("Heap used: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no heap figure in {page}"))
}

/// The value of header `name` in a lower-cased head.
fn h_value(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// httpd on the Torito monitor in `ns`, serving `www` from a share.
fn start_on_torito(ns: &Netns, www: &Path, extra: &[&str]) -> GroupChild {
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let elf = xtask::build("httpd", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = ns.exec("timeout");
    c.arg("120").arg(monitor).args(["--mem", "256M", "--net", "tap=tap0", "--share"]);
    c.arg(format!("{},tag=www,ro", www.display())).arg(elf);
    c.args(["--", "torito.ip=10.0.2.15/24", "root=/www"]).args(extra);
    xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start torito")
}

#[test]
fn httpd_on_the_torito_monitor_with_curl() {
    let Some(ns) = Netns::or_skip("web", &["ip", "ping", "nc", "curl"]) else { return };
    let dir = scratch("trt");
    let www = site(&dir, 64 << 20);
    let vm = start_on_torito(&ns, &www, &["header_timeout=3", "status=/server-status"]);
    wait_for_http(&ns);
    let before = heap_used(&ns);
    check_http(&ns, &www);
    // Everything the requests took (the 64 MiB file in pieces, the hostile
    // heads, the trickling client) is given back once the connections end.
    let after = settle(before + (512 << 10), Duration::from_secs(10), || Some(heap_used(&ns))).unwrap();
    assert!(after <= before + (512 << 10), "guest heap in use: {before} before, {after} after");
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A figure of httpd's `status=/server-status` page.
fn status_figure(ns: &Netns, name: &str) -> u64 {
    let page = String::from_utf8_lossy(&curl(ns, &[&url("/server-status")]).stdout).into_owned();
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{name}' in {page}"))
}

/// Deferred accept (`defer=`): connections that send nothing are held by
/// the stack, not taken (no thread each), and requests on others are
/// answered meanwhile; one that speaks is taken and answered, one that
/// closes is let go.
#[test]
fn idle_connections_wait_unaccepted_until_they_speak() {
    let Some(ns) = Netns::or_skip("defer", &["ip", "ping", "nc", "curl", "ss"]) else { return };
    let dir = scratch("defer");
    let www = site(&dir, 4096);
    let vm = start_on_torito(&ns, &www, &["status=/server-status", "defer=600"]);
    wait_for_http(&ns);
    let sockets = status_figure(&ns, "Sockets");
    let idle: Vec<GroupChild> = (0..3)
        .map(|_| {
            let mut c = ns.exec("nc");
            c.args([GUEST, "80"]).stdin(Stdio::piped()).stdout(Stdio::piped());
            xtask::group::spawn(&mut c).expect("run nc")
        })
        .collect();
    // The three are connected (as the client's kernel sees them).
    let established = || {
        let out = ns.exec("ss").args(["-Htn", "state", "established", "dport", "=", ":80"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    xtask::testing::poll(Duration::from_secs(10), || established() >= 3);
    assert!(established() >= 3, "the three idle connections never got through");
    // None of them is taken: only the status request itself is served
    // (once the threads of the requests before it have ended).
    let active =
        settle(1, Duration::from_secs(10), || Some(status_figure(&ns, "Active connections"))).unwrap();
    assert_eq!(active, 1, "connections served while three idle ones are held");
    assert!(status_figure(&ns, "Sockets") >= sockets + 3, "the stack holds the three");
    assert_eq!(status(&ns, &[&url("/")]), "200");
    // One speaks: taken and answered.
    let answer = raw(&ns, b"GET / HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // The idle ones close having sent nothing: let go.
    drop(idle);
    // (Within smoltcp's 10 s of TIME-WAIT for the one the server closed.)
    let left = settle(sockets, Duration::from_secs(30), || Some(status_figure(&ns, "Sockets"))).unwrap();
    assert!(left <= sockets, "{left} sockets after the idle connections closed, {sockets} before");
    assert_eq!(status(&ns, &[&url("/")]), "200");
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--teardown=keeper`: the monitor's parent learns the status while a
/// keeper process frees the VM (`vstate::keeper`), and the keeper is an
/// orphan that its reaper (here netload, a subreaper) reaps within
/// milliseconds, the VM gone by then; `in-process` leaves no orphan. A
/// cold start each, under netload's retrying client.
#[test]
fn a_keeper_frees_the_vm_after_the_monitor_exits() {
    let Some(ns) = Netns::or_skip("keeper", &["ip", "ping"]) else { return };
    let dir = scratch("keeper");
    let www = site(&dir, 4096);
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let elf = xtask::build("httpd", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let netload = xtask::build_netload().unwrap_or_else(|e| panic!("{e}"));
    let debugfs = Path::new("/sys/kernel/debug/kvm");
    for teardown in ["keeper", "in-process"] {
        let out = ns
            .exec(&netload.display().to_string())
            .args([&format!("{GUEST}:80"), "first-byte", "http", "--tap", "tap0", "--"])
            .arg(&monitor)
            .args([&format!("--teardown={teardown}"), "--net", "tap=tap0", "--share"])
            .arg(format!("{},tag=www,ro", www.display()))
            .arg(&elf)
            .args(["--", "torito.ip=10.0.2.15/24", "root=/www", "requests=1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("--teardown={teardown}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        let line = text.lines().find(|l| l.starts_with("first-byte:")).unwrap_or_else(|| panic!("{text}"));
        let field = |key: &str| line.split(key).nth(1).and_then(|r| r.split([' ', ',']).next()).unwrap_or("");
        let reaped: f64 =
            field("reaped: ").parse().unwrap_or_else(|_| panic!("the monitor was killed: {line}"));
        let orphans = field("orphans: ");
        if teardown == "in-process" {
            assert_eq!(orphans, "0", "{line}");
            continue;
        }
        assert_eq!(orphans, "1", "{line}");
        let at: f64 = line
            .split("torito-exit reaped at ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no keeper named torito-exit: {line}"));
        assert!(at - reaped < 50_000.0, "the keeper outlived the monitor by {:.0} µs", at - reaped);
        // It saw the monitor's end (1: its wait failed).
        assert!(line.contains("torito-exit reaped at") && line.contains("with status 0"), "{line}");
        // Its exit destroyed the VM (KVM's debugfs entry `<pid>-<fd>`).
        if debugfs.is_dir() {
            let pid = field("pid: ");
            let left = std::fs::read_dir(debugfs)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{pid}-")))
                .count();
            assert_eq!(left, 0, "the VM of monitor {pid} outlived its keeper");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// wrk, 10 s, 100 connections: no socket error, no status but 2xx.
#[test]
fn httpd_under_wrk() {
    let Some(ns) = Netns::or_skip("wrk", &["ip", "ping", "curl"]) else { return };
    if !xtask::testing::need("wrk") {
        return;
    }
    let dir = scratch("wrk");
    let www = site(&dir, 4096);
    let vm = start_on_torito(&ns, &www, &["status=/server-status"]);
    wait_for_http(&ns);
    let before = heap_used(&ns);
    let out = ns.exec("wrk").args(["-t2", "-c100", "-d10s", &url("/")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("requests in"), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    // Still serving.
    assert_eq!(status(&ns, &[&url("/")]), "200");
    // A hundred connection threads that ended together give back their
    // stacks and buffers (they once kept 64 KiB each).
    let after = settle(before + (1 << 20), Duration::from_secs(10), || Some(heap_used(&ns))).unwrap();
    assert!(after <= before + (1 << 20), "guest heap in use: {before} before wrk, {after} after");
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same ELF on QEMU microvm, its site baked into the ELF (`root=/`).
#[test]
fn httpd_on_qemu_microvm_with_baked_in_files() {
    let Some(ns) = Netns::or_skip("webq", &["qemu-system-x86_64", "ip", "ping", "nc", "curl"]) else {
        return;
    };
    let dir = scratch("qemu");
    let www = site(&dir, 1 << 20);
    let pvh = Variant { pvh_only: true, ..Default::default() };
    let elf = xtask::build_with_files("httpd", pvh, &www, &dir.join("httpd-baked"))
        .unwrap_or_else(|e| panic!("{e}"));
    let qemu = xtask::qemu(QemuMachine::MicrovmKvm, &elf, "torito.ip=10.0.2.15/24 root=/ header_timeout=3");
    let mut c = ns.exec("timeout");
    c.arg("120").arg(qemu.get_program()).args(qemu.get_args());
    c.args(["-machine", "acpi=off", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    c.args(["-device", "virtio-net-device,netdev=n0"]);
    let vm = xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start qemu");
    wait_for_http(&ns);
    check_http(&ns, &www);
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Exits per request under wrk's load (32 connections), from the monitor's
/// timeline once httpd stopped itself after 5,000 responses (boot
/// included): an upper bound with room. The timeline shows the guest's
/// milestones in order, `listening` and `first_accept` among them.
#[test]
fn httpd_exits_per_request() {
    let Some(ns) = Netns::or_skip("webx", &["ip", "ping", "curl"]) else { return };
    if !xtask::testing::need("wrk") {
        return;
    }
    let dir = scratch("exits");
    let www = site(&dir, 4096);
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let elf = xtask::build("httpd", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let n = 5_000;
    let mut c = ns.exec("timeout");
    c.arg("120").arg(monitor).args(["--cpus", "2", "--net", "tap=tap0", "--timeline=json", "--share"]);
    c.arg(format!("{},tag=www,ro", www.display())).arg(elf);
    c.args(["--", "torito.ip=10.0.2.15/24", "root=/www", &format!("requests={n}")]);
    let vm = xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start torito");
    wait_for_http(&ns);
    let mut load = ns.exec("wrk");
    load.args(["-t2", "-c32", "-d60s", &url("/")]).stdout(Stdio::null()).stderr(Stdio::null());
    let load = xtask::group::spawn(&mut load).unwrap();
    let out = vm.wait_with_output().unwrap();
    load.kill();
    let console = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{console}");
    let err = String::from_utf8_lossy(&out.stderr);
    let json =
        err.lines().find(|l| l.starts_with("{\"time_zero\"")).unwrap_or_else(|| panic!("no timeline: {err}"));
    let exits = xtask::bench::json_number(json, "exits").unwrap();
    let per = exits as f64 / n as f64;
    eprintln!("httpd: {exits} exits for {n} responses: {per:.2} per request");
    // The guest's milestones, in order: each unit's end between
    // kernel_main and the app's main, the network unit's two between the
    // app's main and its exit.
    let timeline: serde_json::Value = serde_json::from_str(json).unwrap();
    let guest: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["side"] == "guest")
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(
        guest,
        [
            "kernel_main",
            "memory_unit",
            "process_unit",
            "devices_unit",
            "fs_unit",
            "net_unit",
            "app_main",
            "listening",
            "first_accept",
            "app_exit"
        ],
        "{json}"
    );
    // Measured ~6.3 (a share: each file costs a FUSE OPEN, READ and RELEASE).
    assert!(per <= 10.0, "{per:.2} exits per request");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// httpd over vsock (`vsock=80`, no IP network), as Toro's
/// StaticWebServer: the host connects through the monitor's vsock socket
/// (`CONNECT 80`), keeps the connection for two requests, gets the files
/// byte for byte, a 404, and a 408 for a head that does not come.
#[test]
fn httpd_over_vsock() {
    use std::io::{Read, Write};
    if !xtask::testing::kvm() {
        return;
    }
    let dir = scratch("vsock");
    let www = site(&dir, 1 << 20);
    let uds = dir.join("v.sock");
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let elf = xtask::build("httpd", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = std::process::Command::new("timeout");
    c.arg("60").arg(monitor).arg("--vsock").arg(format!("cid=3,uds={}", uds.display())).arg("--share");
    c.arg(format!("{},tag=www,ro", www.display())).arg(elf);
    c.args(["--", "vsock=80", "root=/www", "header_timeout=2"]);
    let vm = xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start torito");
    let mut s = xtask::hybrid_vsock_connect(&uds, 80, Duration::from_secs(15));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /notes.txt HTTP/1.1\r\nHost: v\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &text[..text.len().min(300)]);
    assert!(text.contains("plain text\n"));
    let big = std::fs::read(www.join("big.bin")).unwrap();
    assert!(got.ends_with(&big), "big.bin differs over vsock");
    let mut s = xtask::hybrid_vsock_connect(&uds, 80, Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: v\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 404");
    // A head that never ends: 408 within the timeout, the connection closed.
    let mut s = xtask::hybrid_vsock_connect(&uds, 80, Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&rest));
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}
