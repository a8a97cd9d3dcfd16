//! Networking with real clients: the echo appliance on QEMU (TAP in a
//! network namespace this test creates), `ping` and `nc` from Debian.
//!
//! Traffic stays inside the namespace: the TAP device and the clients live
//! there, and only the guest's address in it is used. Needs root (network
//! namespaces, TAP); otherwise the test says so and skips.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use xtask::group::GroupChild;

use xtask::netns::Netns;
use xtask::{QemuMachine, Variant};

/// A fresh namespace with tap0 for one test, or `None` (said loudly) when
/// the tools, KVM or root are missing.
fn netns_or_skip(tag: &str) -> Option<Netns> {
    Netns::or_skip(tag, &["qemu-system-x86_64", "ip", "ping", "nc"])
}

fn guest(app: &str, pvh_only: bool) -> PathBuf {
    xtask::build(app, Variant { pvh_only, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"))
}

/// Start the echo appliance on the Torito monitor inside `ns` (`--net
/// tap=tap0`), stopped after 60 s at most.
fn start_echo_on_torito(ns: &Netns, cmdline: &[&str]) -> GroupChild {
    start_echo_on_torito_for(ns, cmdline, 60)
}

/// [`start_echo_on_torito`], stopped after `secs` at most.
fn start_echo_on_torito_for(ns: &Netns, cmdline: &[&str], secs: u32) -> GroupChild {
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let mut c = ns.exec("timeout");
    c.arg(secs.to_string())
        .arg(monitor)
        .args(["--net", "tap=tap0"])
        .arg(guest("echo", false))
        .arg("--")
        .args(cmdline);
    xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start torito")
}

/// Start the echo appliance on QEMU inside `ns`: microvm (KVM, PVH,
/// virtio-net-device) or pc (TCG, multiboot, virtio-net-pci).
fn start_echo(ns: &Netns, machine: QemuMachine, cmdline: &str) -> GroupChild {
    let microvm = machine == QemuMachine::MicrovmKvm;
    let qemu = xtask::qemu(machine, &guest("echo", microvm), cmdline);
    let mut c = ns.exec("timeout");
    c.arg("60").arg(qemu.get_program()).args(qemu.get_args());
    if microvm {
        c.args(["-machine", "acpi=off"]);
    }
    c.args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device"]);
    c.arg(if microvm { "virtio-net-device,netdev=n0" } else { "virtio-net-pci,netdev=n0" });
    xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start qemu")
}

#[test]
fn echo_on_microvm_answers_ping_and_echoes_1_mib() {
    echo_test(Some(QemuMachine::MicrovmKvm), "virtio-net at 0xfeb00e00 (irq 12, interrupts)");
}

#[test]
fn echo_on_pc_with_virtio_net_pci() {
    echo_test(Some(QemuMachine::PcTcg), "(MSI-X): MAC");
}

#[test]
fn echo_on_the_torito_monitor() {
    echo_test(None, "virtio-net at 0xd0000000 (irq 0, interrupts)");
}

/// Boot echo on `machine` (QEMU), or on our monitor with `None`; ping it,
/// echo 1 MiB through `nc`; the console must name the NIC as `nic`.
fn echo_test(machine: Option<QemuMachine>, nic: &str) {
    let tag = match machine {
        Some(QemuMachine::MicrovmKvm) => "mvm",
        Some(_) => "pc",
        None => "trt",
    };
    let Some(ns) = netns_or_skip(tag) else { return };
    let vm = match machine {
        Some(m) => start_echo(&ns, m, "torito.ip=10.0.2.15/24 port=7 conns=1"),
        None => start_echo_on_torito(&ns, &["torito.ip=10.0.2.15/24", "port=7", "conns=1"]),
    };
    assert!(ns.wait_for_ping(), "the guest never answered ping");
    let ping = ns.exec("ping").args(["-c", "3", "-i", "0.2", "-W", "1", "10.0.2.15"]).output().unwrap();
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(text.contains("3 received"), "{text}");

    // 1 MiB of random bytes through `nc`, compared byte for byte.
    let data = xtask::noise(1 << 20, 0x9e37_79b9_7f4a_7c15);
    let mut nc = ns
        .exec("nc")
        // A minute of silence at most: under TCG, with the other tests
        // taking both cores, ten seconds once cut the last 4 KiB off.
        .args(["-N", "-w", "60", "10.0.2.15", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = nc.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data).unwrap();
        data
    });
    let out = nc.wait_with_output().unwrap();
    let data = writer.join().unwrap();
    assert_eq!(out.stdout.len(), data.len(), "echoed length");
    assert!(out.stdout == data, "echoed bytes differ");

    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains(nic), "{console}");
    // QEMU and our monitor both offer checksum and segmentation offloads.
    assert!(console.contains(", offloads: checksums, TSO"), "{console}");
    assert!(console.contains("1 connection(s), 1048576 bytes echoed"), "{console}");
    // QEMU's isa-debug-exit reports (0 << 1) | 1; our monitor 0.
    assert_eq!(result.status.code(), Some(if machine.is_some() { 1 } else { 0 }), "{console}");
}

/// The same ELF with offloads negotiated and without (`net.offload=off`),
/// on our monitor and on QEMU microvm: 16 MiB each way through one
/// connection, byte for byte (with offloads: frames of up to 64 KiB each
/// way, checksums left to the host; without: every frame ≤ 1,514 bytes,
/// checksums in smoltcp).
#[test]
fn offloads_on_and_off_move_the_same_bytes() {
    let Some(ns) = netns_or_skip("off") else { return };
    let len = (16 << 20).to_string();
    for (qemu, offload) in [(false, true), (false, false), (true, false)] {
        let mut args = vec!["torito.ip=10.0.2.15/24", "port=7", "buf=65536", "conns=1"];
        if !offload {
            args.push("net.offload=off");
        }
        let vm = if qemu {
            start_echo(&ns, QemuMachine::MicrovmKvm, &args.join(" "))
        } else {
            start_echo_on_torito(&ns, &args)
        };
        assert!(ns.wait_for_ping(), "the guest never answered ping");
        let out = netload(&ns, &["bulk", &len, "0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("qemu {qemu}, offloads {offload}: {}", text.trim());
        let result = vm.wait_with_output().unwrap();
        let console = String::from_utf8_lossy(&result.stdout);
        assert_eq!(console.contains("offloads:"), offload, "{console}");
        assert!(console.contains(&format!("1 connection(s), {len} bytes echoed")), "{console}");
    }
}

/// The monitor's echo in `ns` with `args`, and the test client.
fn netload(ns: &Netns, args: &[&str]) -> std::process::Output {
    ns.exec(env!("CARGO_BIN_EXE_netload")).arg("10.0.2.15:7").args(args).output().expect("run netload")
}

/// 1,000 connections open at once, each echoing 1,000 bytes, on one
/// appliance with bounded memory (4 KiB buffers each way).
#[test]
fn a_thousand_concurrent_connections() {
    let Some(ns) = netns_or_skip("k") else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let vm = xtask::group::spawn(
        ns.exec("timeout")
            .arg("120")
            .arg(monitor)
            .args(["--mem", "512M", "--timeline=json", "--net", "tap=tap0"])
            .arg(guest("echo", false))
            .args(["--", "torito.ip=10.0.2.15/24", "port=7", "conns=1000", "backlog=256", "buf=4096"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    assert!(ns.wait_for_ping());
    let out = netload(&ns, &["conns", "1000", "1000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1000 connections, 1000 ok"), "{text}");
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains("1000 connection(s), 1000000 bytes echoed"), "{console}");
    assert_eq!(result.status.code(), Some(0));
    // Bounded memory: what the guest touched stays far below its 512 MiB.
    let stderr = String::from_utf8_lossy(&result.stderr);
    let touched = stderr
        .split("\"guest_touched_kib\":")
        .nth(1)
        .and_then(|x| x.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    assert!(touched < 128 * 1024, "guest touched {touched} KiB");
}

/// Peers that reset mid-stream or send and never read do not stall the
/// other connections; their threads end when they go.
#[test]
fn bad_peers_do_not_stall_the_others() {
    let Some(ns) = netns_or_skip("bad") else { return };
    let vm = start_echo_on_torito(&ns, &["torito.ip=10.0.2.15/24", "port=7", "conns=12"]);
    assert!(ns.wait_for_ping());
    // A peer that sends 1 MiB and never reads (the echo thread's writes
    // block), held until its stdin is closed.
    let mut idle = ns
        .exec(env!("CARGO_BIN_EXE_netload"))
        .args(["10.0.2.15:7", "idle", "1048576"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reset = netload(&ns, &["reset"]);
    assert!(reset.status.success());
    // Meanwhile ten well-behaved clients are served: while the idle peer
    // still holds its connection (an order, not a time: the verdict does
    // not depend on the machine's speed).
    let out = netload(&ns, &["conns", "10", "4096"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(idle.try_wait().unwrap().is_none(), "the others were served only after the idle peer left");
    drop(idle.stdin.take());
    assert!(idle.wait_with_output().unwrap().status.success());
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains("12 connection(s)"), "{console}");
    assert_eq!(result.status.code(), Some(0), "{console}");
}

/// A peer that sends garbage at every layer (2,000 malformed frames:
/// random bytes, broken IPv4 headers, TCP segments with random flags and
/// numbers to the echo port, truncated ICMP/UDP/ARP) does not break the
/// appliance or the monitor: afterwards ping is answered, three clients
/// are echoed, and the app ends normally.
#[test]
fn garbage_frames_do_not_break_the_appliance() {
    let Some(ns) = netns_or_skip("junk") else { return };
    let vm = start_echo_on_torito(&ns, &["torito.ip=10.0.2.15/24", "port=7", "conns=3"]);
    assert!(ns.wait_for_ping());
    let junk = netload(&ns, &["garbage", "tap0", "2000"]);
    let text = String::from_utf8_lossy(&junk.stdout);
    assert!(junk.status.success(), "{text}{}", String::from_utf8_lossy(&junk.stderr));
    assert!(text.contains("2000 malformed frames sent"), "{text}");
    assert!(ns.wait_for_ping(), "no ping answer after the garbage");
    let out = netload(&ns, &["conns", "3", "65536"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains("3 connection(s)"), "{console}");
    assert_eq!(result.status.code(), Some(0), "{console}{}", String::from_utf8_lossy(&result.stderr));
}

/// A guest with a NIC that never posts a receive buffer (it has no
/// network driver: `spin`), flooded with 20,000 frames: they wait in the
/// TAP device's queue (which drops beyond its length), not in the
/// monitor, whose peak RSS stays small; the guest is stopped by its
/// timeout as usual.
#[test]
fn frames_for_a_guest_that_takes_none_wait_in_the_tap() {
    let Some(ns) = netns_or_skip("noreader") else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let mut c = ns.exec("timeout");
    let mac = "02:54:00:00:00:01";
    c.arg("60").arg(monitor).args([
        "--timeout",
        "5",
        "--timeline=json",
        "--net",
        &format!("tap=tap0,mac={mac}"),
    ]);
    c.arg(guest("spin", false));
    // The guest answers no ARP: its MAC is given to the namespace.
    let neigh = Command::new("ip")
        .args(["-n", ns.name(), "neigh", "replace", xtask::netns::GUEST, "lladdr", mac, "dev", "tap0"])
        .args(["nud", "permanent"])
        .status();
    assert!(neigh.is_ok_and(|s| s.success()), "ip neigh replace");
    let vm = xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start torito");
    std::thread::sleep(Duration::from_millis(500));
    let flood = netload(&ns, &["garbage", "tap0", "20000"]);
    let text = String::from_utf8_lossy(&flood.stdout);
    assert!(text.contains("20000 malformed frames sent"), "{text}{}", String::from_utf8_lossy(&flood.stderr));
    let result = vm.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(124), "{err}");
    let rss = xtask::testing::peak_rss_kib(&err);
    assert!(rss < 16 * 1024, "peak RSS {rss} KiB after 20,000 frames nobody took");
}

/// UDP: three datagrams from `nc -u` come back; then a read with a 200 ms
/// timeout times out.
#[test]
fn udp_echo_and_a_read_timeout() {
    let Some(ns) = netns_or_skip("udp") else { return };
    let vm = start_echo_on_torito(&ns, &["torito.ip=10.0.2.15/24", "port=7", "udp", "conns=3"]);
    assert!(ns.wait_for_ping());
    for i in 0..3 {
        let msg = format!("datagram {i}\n");
        let mut nc = ns
            .exec("nc")
            .args(["-u", "-w", "1", "10.0.2.15", "7"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            nc.stdin.take().unwrap().write_all(msg.as_bytes()).unwrap();
        }
        let out = nc.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), msg);
    }
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains("3 datagram(s) echoed; then timed out after"), "{console}");
    let ms: u64 = console
        .split("timed out after ")
        .nth(1)
        .and_then(|x| x.split(' ').next())
        .and_then(|x| x.parse().ok())
        .unwrap();
    assert!((200..400).contains(&ms), "timed out after {ms} ms");
    assert_eq!(result.status.code(), Some(0));
}

/// Without `torito.ip=` the address comes from DHCP: QEMU's user-mode
/// network (no root needed) offers 10.0.2.15; the host reaches the echo
/// port through a forwarded localhost port.
#[test]
fn dhcp_on_qemu_user_networking() {
    if !xtask::have("qemu-system-x86_64") || !xtask::kvm_usable() {
        xtask::testing::skip("QEMU with KVM is not available; DHCP test not run");
        return;
    }
    let elf = guest("echo", true);
    let msg = b"through DHCP and a forwarded port\n";
    // QEMU on a free port; once more on another if it ended before it
    // echoed (the port, free when picked, may have been taken meanwhile:
    // QEMU then cannot forward it and stops), with what it said.
    let launch = |first: bool| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let qemu = xtask::qemu(QemuMachine::MicrovmKvm, &elf, "port=7 conns=1");
        let mut vm = xtask::group::spawn(
            Command::new("timeout")
                .arg("60")
                .arg(qemu.get_program())
                .args(qemu.get_args())
                .args(["-machine", "acpi=off", "-netdev"])
                .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:7"))
                .args(["-device", "virtio-net-device,netdev=n0"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .unwrap();
        let t = Instant::now();
        loop {
            use std::io::{Read, Write};
            let attempt = (|| -> std::io::Result<Vec<u8>> {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(msg)?;
                s.shutdown(std::net::Shutdown::Write)?;
                let mut back = Vec::new();
                s.read_to_end(&mut back)?;
                Ok(back)
            })();
            match attempt {
                Ok(b) if !b.is_empty() => return Some((b, vm)),
                _ if vm.has_ended() && first => {
                    let out = vm.wait_with_output().unwrap();
                    eprintln!("QEMU ended before it echoed: {}", String::from_utf8_lossy(&out.stderr));
                    return None;
                }
                _ if t.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(200)),
                other => {
                    let out = vm.wait_with_output_within(Duration::from_secs(1)).unwrap();
                    panic!(
                        "no echo through the forwarded port: {other:?}; QEMU: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                }
            }
        }
    };
    let (echoed, vm) = launch(true).or_else(|| launch(false)).expect("a second launch echoes or panics");
    assert_eq!(echoed, msg);
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains("no torito.ip= given: asking DHCP"), "the wait is announced: {console}");
    assert!(console.contains("address 10.0.2.15/24 from DHCP"), "{console}");
    assert_eq!(result.status.code(), Some(1), "{console}");
}

/// The appliance as a client: `TcpStream::connect` to `nc -l` on the host
/// side of the TAP device; both directions carry data.
#[test]
fn the_appliance_connects_out() {
    let Some(ns) = netns_or_skip("cli") else { return };
    // Build first: the server below waits only 20 s.
    guest("echo", false);
    xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let mut server = ns
        .exec("timeout")
        .args(["20", "nc", "-l", "10.0.2.1", "9000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        server.stdin.take().unwrap().write_all(b"welcome\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let vm = start_echo_on_torito(&ns, &["torito.ip=10.0.2.15/24", "connect=10.0.2.1:9000"]);
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    let heard = server.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&heard.stdout), "hello from the appliance\n", "{console}");
    assert!(console.contains("connected to 10.0.2.1:9000, sent a greeting, got 8 bytes back"), "{console}");
    // local_addr and peer_addr, as core::net addresses.
    assert!(console.contains("echo: 10.0.2.15:49152 → 10.0.2.1:9000"), "{console}");
    assert_eq!(result.status.code(), Some(0));
}

/// A static address is announced when the NIC comes up (a gratuitous ARP
/// request): a client that asked for it before (its request lost while
/// the NIC was not up yet) learns it then, not a second later. Here the
/// namespace accepts gratuitous ARP (`arp_accept`), so the announcement
/// alone makes its neighbour entry, with no traffic towards the guest.
#[test]
fn a_static_address_is_announced() {
    let Some(ns) = Netns::or_skip("arp", &["ip", "sh"]) else { return };
    let accept =
        ns.exec("sh").args(["-c", "echo 1 > /proc/sys/net/ipv4/conf/tap0/arp_accept"]).status().unwrap();
    assert!(accept.success(), "arp_accept");
    let _vm = start_echo_on_torito_for(&ns, &["torito.ip=10.0.2.15/24"], 60);
    let mut seen = String::new();
    let learnt = xtask::testing::poll(std::time::Duration::from_secs(30), || {
        let out = ns.exec("ip").args(["neigh", "show", "10.0.2.15", "dev", "tap0"]).output().unwrap();
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        seen.contains("lladdr")
    });
    assert!(learnt, "no neighbour entry for the guest: {seen:?}");
}

/// A network appliance's start, counted (counts are deterministic; the
/// bounds leave room): httpd with a NIC and a static address, told to
/// serve a directory that does not exist, stops right after its `main`
/// began. The NIC's setup goes through register batches, the first of
/// which also tells the device's type, the receive queue asks for no
/// notifications: measured 5 MMIO exits (the snapshot, the setup, the
/// flush that sends the address's announcement, the console line, the
/// exit), ~50 exits,
/// ~50 guest page faults, no halt (before: 120 MMIO exits, ~250 exits; 2
/// MMIO exits more while the device's type was read on its own; ~140 faults before the receive
/// buffers were one allocation, ~110 before the warm-up). Given two
/// vCPUs it starts one: httpd keeps its threads on core 0, and a core is
/// started when first given work.
#[test]
fn a_nic_appliance_starts_in_a_few_exits() {
    let Some(ns) = Netns::or_skip("start", &["ip"]) else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let cpus = if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 { "2" } else { "1" };
    let out = ns
        .exec("timeout")
        .arg("30")
        .arg(monitor)
        .args(["--cpus", cpus, "--net", "tap=tap0", "--timeline=json"])
        .arg(guest("httpd", false))
        .args(["--", "torito.ip=10.0.2.15/24", "root=/nope"])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{console}{err}");
    assert!(console.contains("httpd: root=/nope: "), "{console}");
    let json =
        err.lines().find(|l| l.starts_with("{\"time_zero\"")).unwrap_or_else(|| panic!("no timeline: {err}"));
    assert!(json.contains("\"name\":\"app_main\""), "{json}");
    let n = |k: &str| xtask::bench::json_number(json, k).unwrap_or_else(|| panic!("no {k} in {json}"));
    let (mmio, halts, exits, faults) = (n("mmio_exits"), n("halt_exits"), n("exits"), n("pf_taken"));
    let emulated = n("insn_emulation");
    eprintln!(
        "NIC appliance to its main: {mmio} MMIO exits, {halts} halts, {exits} exits, {faults} page faults, \
         {emulated} emulated instructions"
    );
    assert!(mmio <= 5, "{mmio} MMIO exits (expected 4)");
    assert_eq!(halts, 0, "a halt before the app's main");
    // Measured 2026-12-04 on the Intel host: ~38 exits, ~35 faults, 7
    // emulated instructions; on the PVM host after the monitor set the
    // local APIC up (no `cpuid`, no register write of the kernel's): ~32,
    // ~32 and 4 (6 before). The bounds leave room for a loaded host (the
    // warm-up then lags, a frame's interrupt runs its emulated stub), not
    // for losing it (~120 faults and more).
    assert!(exits <= 150, "{exits} exits (expected ~35)");
    assert!(faults <= 150, "{faults} guest page faults (expected ~35)");
    assert!(emulated <= 30, "{emulated} emulated instructions (expected 4)");
    assert_eq!(n("vcpus"), 1, "a second vCPU started with no work for it: {json}");
}

/// The data path, counted (issue: exits are the currency on a PVM host;
/// counts vary with timing far less than rates do, and the bounds leave
/// room): echo with 64 KiB buffers on our monitor, a 2 s stream of one
/// connection, then 64 connections doing 64-byte request/response for
/// 2 s, each on a fresh guest; exits from the vCPU statistics, boot
/// included. Measured 1.1–1.7 exits per 64 KiB moved (both ways counted)
/// alone or with both host cores busy, 1.8–1.9 beside the other network
/// tests (a starved vCPU halts more), and ~0.1 per round trip; before the
/// idle core polled the NIC 2.2–2.4 per 64 KiB (an interrupt and a halt
/// per batch), before transmit batching and receive-interrupt masking ~47
/// and ~2.5. The bounds leave room for a loaded machine: 2.5 per 64 KiB
/// (the bench's verdict holds the issue's ≤ 2) and 1.5 per round trip.
#[test]
fn the_data_path_costs_few_exits() {
    let Some(ns) = netns_or_skip("dp") else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let run = |conns: &str, load: &[&str]| -> (u64, String) {
        let vm = xtask::group::spawn(
            ns.exec("timeout")
                .arg("60")
                .arg(&monitor)
                .args(["--timeline=json", "--net", "tap=tap0"])
                .arg(guest("echo", false))
                .args(["--", "torito.ip=10.0.2.15/24", "port=7", "buf=65536", conns])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .unwrap();
        assert!(ns.wait_for_ping());
        let out = netload(&ns, load);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let result = vm.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(0), "{}{err}", String::from_utf8_lossy(&result.stdout));
        let json = err.lines().find(|l| l.starts_with("{\"time_zero\"")).unwrap_or_else(|| panic!("{err}"));
        (xtask::bench::json_number(json, "exits").unwrap(), text)
    };
    let (exits, text) = run("conns=1", &["stream", "2"]);
    // "netload: stream: N MB/s each way (GOT of SENT bytes back)"
    let bytes: u64 = text
        .split('(')
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let per_64k = exits as f64 / (2 * bytes) as f64 * 65536.0;
    eprintln!("stream: {exits} exits for {bytes} bytes each way: {per_64k:.2} per 64 KiB moved ({text})");
    assert!(per_64k <= 2.5, "{per_64k:.2} exits per 64 KiB");

    let (exits, text) = run("conns=64", &["rr", "64", "2"]);
    // "netload: 64 connection(s): N round trips/s"
    let rate: u64 = text
        .rsplit(": ")
        .next()
        .and_then(|t| t.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let per_rt = exits as f64 / (rate * 2).max(1) as f64;
    eprintln!("64 connections: {exits} exits for {} round trips: {per_rt:.3} each", rate * 2);
    assert!(per_rt <= 1.5, "{per_rt:.3} exits per round trip");
}

/// The data path under stress, byte for byte, on our monitor: 64 MiB each
/// way through one connection while nftables drops 1% of the packets in
/// each direction on the host side of the TAP device. With segmentation offloads a
/// packet there is up to 64 KiB (the host cuts it later, or the guest
/// made it), so 1% of them is fewer losses than 1% of 1,514-byte frames:
/// ~40 s. Without offloads 64 MiB takes many minutes: smoltcp recovers a
/// segment lost in a two-way stream only by its retransmission timeout,
/// at least 1 s, since its fast retransmit counts only pure duplicate
/// ACKs. Then a reader that stalls 2 s with a 32 KiB buffer, so the
/// guest meets a zero window; the host side's MTU lowered to 1280 and
/// raised again in the middle of a transfer; and reordering both ways
/// (this kernel has no `netem`): towards the guest, nftables sends 3% of
/// the host's packets to an HTB class limited to 50 Mbit/s (`meta
/// priority`), where they wait while those after them go on; from the
/// guest, the TAP device's ingress is redirected to an IFB device whose
/// HTB sends the segments whose sequence number has bits 16-20 clear
/// (one 64 KiB in 2 MiB of the stream, ~3%; this kernel's tc has no
/// random action) the slow way, and the host's TCP must count segments
/// that came out of order (`TCPOFOQueue`).
#[test]
fn the_data_path_survives_loss_a_closed_window_and_mtu_changes() {
    let Some(ns) = Netns::or_skip("loss", &["ip", "ping", "nft", "tc"]) else { return };
    // Four transfers, ~40 s for the lossy one alone: on a loaded machine
    // (CI runs tests side by side) the whole may take minutes, and a guest
    // stopped by its timeout mid-transfer looked like a stall.
    let vm =
        start_echo_on_torito_for(&ns, &["torito.ip=10.0.2.15/24", "port=7", "buf=65536", "conns=4"], 600);
    assert!(ns.wait_for_ping());
    let nft = |rules: &str| {
        let ok = ns.exec("nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().is_ok_and(|mut c| {
            use std::io::Write;
            c.stdin.take().is_some_and(|mut i| i.write_all(rules.as_bytes()).is_ok())
                && c.wait().is_ok_and(|s| s.success())
        });
        assert!(ok, "nft refused:\n{rules}");
    };
    nft("table inet lossy {
        chain in { type filter hook input priority 0; iifname \"tap0\" numgen random mod 100 < 1 drop; }
        chain out { type filter hook output priority 0; oifname \"tap0\" numgen random mod 100 < 1 drop; }
    }");
    let out = netload(&ns, &["bulk", &(64 << 20).to_string(), "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "1% loss: {text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("1% loss each way: {}", text.trim());
    nft("delete table inet lossy");

    let out = netload(&ns, &["bulk", &(4 << 20).to_string(), "2000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "zero window: {text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("a reader stalled 2 s: {}", text.trim());

    let load = ns
        .exec(env!("CARGO_BIN_EXE_netload"))
        .args(["10.0.2.15:7", "bulk", &(32 << 20).to_string(), "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mtu =
        |m: &str| assert!(ns.exec("ip").args(["link", "set", "tap0", "mtu", m]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(100));
    mtu("1280");
    std::thread::sleep(Duration::from_millis(300));
    mtu("1500");
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "MTU change: {text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("MTU 1500 -> 1280 -> 1500 mid-transfer: {}", text.trim());

    let run = |program: &str, args: &str| {
        let ok = ns.exec(program).args(args.split(' ')).status().is_ok_and(|s| s.success());
        assert!(ok, "{program} {args} failed");
    };
    let tc = |args: &str| run("tc", args);
    // Class 1:10 passes everything at once, 1:20 holds what it gets.
    let slow_class = |dev: &str| {
        tc(&format!("qdisc add dev {dev} root handle 1: htb default 10"));
        tc(&format!("class add dev {dev} parent 1: classid 1:10 htb rate 10gbit"));
        tc(&format!("class add dev {dev} parent 1: classid 1:20 htb rate 50mbit ceil 50mbit"));
    };
    slow_class("tap0");
    nft("table inet reorder {
        chain out { type filter hook output priority 0; oifname \"tap0\" numgen random mod 100 < 3 meta priority set 1:20
        }
    }");
    // From the guest: its frames enter the host at the TAP device's
    // ingress, which has no queue of its own; an IFB device (which this
    // kernel must have) gives them one. (IPv4 without options: the TCP
    // sequence number is at 24.)
    run("ip", "link add ifb0 type ifb");
    run("ip", "link set ifb0 up");
    slow_class("ifb0");
    tc("filter add dev ifb0 parent 1: protocol ip u32 match u32 0 0x001f0000 at 24 classid 1:20");
    tc("qdisc add dev tap0 handle ffff: ingress");
    tc(
        "filter add dev tap0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev ifb0",
    );
    let ofo_before = out_of_order_segments(&ns);
    let out = netload(&ns, &["bulk", &(16 << 20).to_string(), "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "reordering: {text}{}", String::from_utf8_lossy(&out.stderr));
    // Each slow class carried packets (held back while others passed).
    let held = |dev: &str| {
        let classes = ns.exec("tc").args(["-s", "class", "show", "dev", dev]).output().unwrap();
        let classes = String::from_utf8_lossy(&classes.stdout).into_owned();
        let n = classes
            .split("class htb 1:20")
            .nth(1)
            .and_then(|c| c.split(" bytes ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(n > 0, "no packet went the slow way on {dev}:\n{classes}");
        n
    };
    let (to_guest, from_guest) = (held("tap0"), held("ifb0"));
    let ofo = out_of_order_segments(&ns) - ofo_before;
    assert!(ofo > 0, "the host saw no segment from the guest out of order");
    eprintln!(
        "reordered: {to_guest} packets to the guest and {from_guest} from it held back, \
         {ofo} segments reached the host out of order: {}",
        text.trim()
    );

    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    let bytes = (64u64 << 20) + (4 << 20) + (32 << 20) + (16 << 20);
    assert!(console.contains(&format!("4 connection(s), {bytes} bytes echoed")), "{console}");
    assert_eq!(result.status.code(), Some(0), "{console}");
}

/// The host's count of TCP segments queued because they came out of
/// order (`TcpExt: TCPOFOQueue` in the namespace's `/proc/net/netstat`).
fn out_of_order_segments(ns: &Netns) -> u64 {
    let out = ns.exec("cat").arg("/proc/net/netstat").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no TcpExt lines in /proc/net/netstat:\n{text}")
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPOFOQueue")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TCPOFOQueue in /proc/net/netstat:\n{text}"))
}

/// `cargo xtask run --qemu microvm --net tap=…,mac=…`: the monitor's NIC
/// option, translated for QEMU (a PVH build, `acpi=off`,
/// virtio-net-device), boots echo with the NIC and MAC asked for; `-v`
/// prints the QEMU command; the guest's exit code comes back decoded.
#[test]
fn xtask_run_gives_qemu_a_nic_from_the_monitors_options() {
    let Some(ns) = netns_or_skip("xr") else { return };
    guest("echo", true);
    let mut c = ns.exec(env!("CARGO_BIN_EXE_xtask"));
    c.args([
        "run",
        "echo",
        "--qemu",
        "microvm",
        "--net",
        "tap=tap0,mac=52:54:00:00:00:07",
        "--timeout",
        "60",
        "-v",
    ]);
    c.args(["--", "torito.ip=10.0.2.15/24", "port=7", "conns=1"]);
    let vm = xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start xtask run");
    assert!(ns.wait_for_ping_within(Duration::from_secs(120)), "the guest never answered ping");
    let echoed = ns.nc_session(7, |w| w.write_all(b"through xtask run\n").unwrap());
    assert_eq!(String::from_utf8_lossy(&echoed), "through xtask run\n");
    let out = vm.wait_with_output_within(Duration::from_secs(30)).unwrap();
    let (console, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{console}{err}");
    assert!(console.contains("MAC 52:54:00:00:00:07"), "{console}");
    assert!(
        err.contains("xtask: timeout 60 qemu-system-x86_64 -display none")
            && err.contains("virtio-net-device,netdev=net0,mac=52:54:00:00:00:07")
    );
    assert_eq!(out.status.code(), Some(0), "the guest's code, decoded from isa-debug-exit");
}

/// The std-like API over a real connection: `kernel::io::BufReader` lines
/// from a `TcpStream`, `write!` into it (embedded-io), `peer_addr`, a
/// `debug` log line (`torito.log=debug`), and random numbers seeded from
/// the monitor's entropy.
#[test]
fn lines_random_numbers_and_logs_over_a_real_connection() {
    let Some(ns) = netns_or_skip("ln") else { return };
    let vm = start_echo_on_torito(
        &ns,
        &["torito.ip=10.0.2.15/24", "port=7", "conns=1", "lines", "torito.log=debug"],
    );
    assert!(ns.wait_for_ping(), "the guest never answered ping");
    // Lines cut across writes, CRLF and LF, a last line without one.
    let out = ns.nc_session(7, |w| {
        for piece in ["hel", "lo\r\nrandom\nran", "dom\n", "bye"] {
            w.write_all(piece.as_bytes()).unwrap();
            w.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let answer = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 4, "{answer}");
    assert_eq!((lines[0], lines[3]), ("1: hello", "4: bye"));
    let hex = |l: &str, n: &str| {
        let v = l.strip_prefix(n).unwrap_or_else(|| panic!("{l}"));
        assert!(v.len() == 16 && v.chars().all(|c| c.is_ascii_hexdigit()), "{l}");
        v.to_string()
    };
    assert_ne!(hex(lines[1], "2: "), hex(lines[2], "3: "));
    let result = vm.wait_with_output().unwrap();
    let console = String::from_utf8_lossy(&result.stdout);
    assert!(console.contains("[DEBUG echo] connection from 10.0.2.1:"), "{console}");
    assert!(console.contains("random numbers seeded from the host or the CPU"), "{console}");
    assert_eq!(result.status.code(), Some(0), "{console}");
}

/// A monitor that joined the namespace with `setns()` (nsenter, as a
/// container runtime does, without remounting /sys) finds the namespace's
/// TAP device: it used to look in /sys, which still showed the host's
/// devices, and refuse with "no network device".
#[test]
fn a_monitor_that_joined_the_namespace_with_setns_finds_its_tap() {
    let Some(ns) = Netns::or_skip("setns", &["ip", "nsenter"]) else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let hello = guest("hello", false);
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.name()))
        .arg(&monitor)
        .args(["--net", "tap=tap0", "--timeout", "30"])
        .arg(&hello)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from Torito!"));
}

/// A monitor leaves the last close of its TAP device to the kernel, after
/// its exit (the close waits for an RCU grace period): the next monitor
/// on the same device, started at once, still gets it (waiting briefly if
/// the kernel has not closed it yet); one started while another uses the
/// device is refused, with the reason.
#[test]
fn the_tap_is_free_again_right_after_a_monitor_exits() {
    let Some(ns) = Netns::or_skip("tapagain", &["ip"]) else { return };
    let monitor = xtask::build_monitor(true).unwrap_or_else(|e| panic!("{e}"));
    let hello = guest("hello", false);
    for round in 0..5 {
        let out =
            ns.exec(&monitor.to_string_lossy()).args(["--net", "tap=tap0"]).arg(&hello).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "round {round}: {err}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from Torito!"), "round {round}");
    }
    let running = start_echo_on_torito_for(&ns, &["torito.ip=10.0.2.15/24", "port=7"], 30);
    assert!(ns.wait_for_ping(), "the appliance answers");
    let out = ns.exec(&monitor.to_string_lossy()).args(["--net", "tap=tap0"]).arg(&hello).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "a TAP device in use is refused: {err}");
    assert!(err.contains("cannot attach to TAP device 'tap0'") && err.contains("in use"), "{err}");
    running.kill();
}

/// The TAP device deleted under a running appliance: the monitor says so
/// in one line and stops watching it (it used to wake on the device's
/// error for ever, a core at 100%); the guest runs on.
#[test]
fn a_tap_removed_under_a_running_appliance_is_let_go() {
    use std::io::BufRead;
    let Some(ns) = netns_or_skip("tapgone") else { return };
    let mut vm = start_echo_on_torito_for(&ns, &["torito.ip=10.0.2.15/24", "port=7"], 30);
    assert!(ns.wait_for_ping(), "the appliance answers first");
    let ok = Command::new("ip").args(["-n", ns.name(), "link", "del", "tap0"]).status().unwrap().success();
    assert!(ok, "ip link del tap0");
    let err = vm.take_stderr().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Every line the monitor wrote until it says so (at most 20 s): shown
    // if it never does.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let said = loop {
        let Ok(l) = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) else {
            break false;
        };
        let it = l.contains("NIC on TAP device 'tap0' stopped") && l.contains("the guest runs on");
        lines.push(l);
        if it {
            break true;
        }
    };
    assert!(said, "the monitor says the NIC stopped (ended: {}); its stderr: {lines:#?}", vm.has_ended());
    // Not spinning: the monitor's process group uses little CPU from now on.
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // utime, stime, cutime, cstime (fields 14–17; 12–15 after the name).
        fields.get(11..15).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
    };
    let monitor = monitor_pid(vm.id()).expect("the monitor under timeout");
    let t0 = ticks(monitor);
    std::thread::sleep(Duration::from_secs(2));
    let used = ticks(monitor) - t0;
    assert!(used < 100, "{used} clock ticks of CPU in 2 s: the I/O thread spins");
    assert!(!vm.has_ended(), "the guest runs on");
    vm.kill();
}

/// The monitor's pid: the child of the `timeout` that leads the group.
fn monitor_pid(timeout_pid: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{timeout_pid}/task/{timeout_pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}
