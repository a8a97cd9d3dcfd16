//! The PVH ELF on Firecracker, when a `firecracker` binary is on `PATH`
//! (it is not a Debian package, so CI does not install it; the test then
//! says so and is skipped).

use std::process::Command;

use xtask::Variant;

fn usable() -> bool {
    if !xtask::have("firecracker") {
        xtask::testing::skip("no `firecracker` on PATH; Firecracker boot test not run");
        return false;
    }
    if !xtask::kvm_usable() {
        xtask::testing::skip("/dev/kvm is not usable; Firecracker boot test not run");
        return false;
    }
    true
}

/// Boot the PVH build of `app` on Firecracker; returns (status, console).
fn boot(app: &str, args: &str) -> (Option<i32>, String) {
    boot_cpus(app, args, 1)
}

/// [`boot`] with `vcpus` vCPUs.
fn boot_cpus(app: &str, args: &str, vcpus: u32) -> (Option<i32>, String) {
    boot_with(app, args, vcpus, "")
}

/// [`boot_cpus`] with `drives`: Firecracker's `drives` array, inside.
fn boot_with(app: &str, args: &str, vcpus: u32, drives: &str) -> (Option<i32>, String) {
    let elf = xtask::build(app, Variant { pvh_only: true, ..Default::default() }).unwrap();
    boot_elf(&elf, app, args, vcpus, drives)
}

/// Boot `elf` (a PVH build) on Firecracker; `name` tells runs apart.
fn boot_elf(
    elf: &std::path::Path,
    name: &str,
    args: &str,
    vcpus: u32,
    drives: &str,
) -> (Option<i32>, String) {
    let app = name;
    let dir = std::env::temp_dir().join(format!("torito-fc-{app}-{vcpus}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "{args}"}}, "drives": [{drives}],
            "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": 128}}}}"#,
        elf.display()
    );
    std::fs::write(&cfg, json).unwrap();
    // Firecracker's own log goes to a file, so that stdout carries only the
    // guest's serial output (the two interleave otherwise).
    let log = dir.join("firecracker.log");
    std::fs::write(&log, "").unwrap();
    let out = Command::new("timeout")
        .args(["30", "firecracker", "--no-api", "--log-path"])
        .arg(&log)
        .arg("--config-file")
        .arg(&cfg)
        .output()
        .expect("run firecracker");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", std::fs::read_to_string(&log).unwrap_or_default());
    std::fs::remove_dir_all(&dir).unwrap();
    (out.status.code(), text)
}

#[test]
fn pvh_elf_boots_on_firecracker_and_stops_through_the_i8042_reset() {
    if !usable() {
        return;
    }
    let (status, text) = boot("hello", "from firecracker");
    assert!(text.contains("Hello from Torito! (booted via pvh)"), "{text}");
    assert!(text.contains("command line: from firecracker"), "{text}");
    // Firecracker stops on the i8042 reset and exits 0 (it passes no code on).
    assert_eq!(status, Some(0));
}

#[test]
fn threads_and_sleep_on_firecracker() {
    if !usable() {
        return;
    }
    let (status, text) = boot("threads", "20000");
    assert!(text.contains("sleepers woke in the order [10, 20, 30]"), "{text}");
    // Firecracker has no RTC; the time of day comes from kvmclock.
    xtask::assert_guest_wall_clock(&text);
    assert!(text.contains("threads: ok"), "{text}");
    assert_eq!(status, Some(0));
}

#[test]
fn two_cores_on_firecracker() {
    if !usable() {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        xtask::testing::skip("this host has one CPU");
        return;
    }
    let (status, text) = boot_cpus("threads", "2000", 2);
    assert!(text.contains("threads: 2 core(s)"), "{text}");
    assert!(text.contains("40000 messages from 4 senders on 2 core(s), each once and in order"), "{text}");
    assert!(text.contains("ping-pong core 0 <-> core 1"), "{text}");
    assert!(text.contains("threads: ok"), "{text}");
    assert_eq!(status, Some(0));
}

/// vsock: the echo appliance on Firecracker's virtio-vsock, reached from
/// the host through its Unix socket (`CONNECT 7\n` → `OK <port>\n`), echoes
/// 1 MiB byte for byte. (Also checks that our devices start under
/// Firecracker's strict status transitions.)
#[test]
fn vsock_echo_on_firecracker() {
    if !usable() {
        return;
    }
    let elf = xtask::build("echo", Variant { pvh_only: true, ..Default::default() }).unwrap();
    let dir = std::env::temp_dir().join(format!("torito-fc-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "vsock port=7 conns=1"}},
                "drives": [], "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}},
                "vsock": {{"guest_cid": 3, "uds_path": "{}"}}}}"#,
            elf.display(),
            uds.display()
        ),
    )
    .unwrap();
    let log = dir.join("firecracker.log");
    std::fs::write(&log, "").unwrap();
    let vm = xtask::group::spawn(
        Command::new("timeout")
            .args(["30", "firecracker", "--no-api", "--log-path"])
            .arg(&log)
            .arg("--config-file")
            .arg(&cfg)
            .stdout(std::process::Stdio::piped()),
    )
    .unwrap();
    let mut s = xtask::hybrid_vsock_connect(&uds, 7, std::time::Duration::from_secs(15));
    xtask::assert_echoes(&mut s, 1 << 20, 13);
    drop(s);
    let out = vm.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(text.contains("1 vsock connection(s), 1048576 bytes echoed"), "{text}");
}

/// virtio-blk on Firecracker (virtio-mmio, IOAPIC line): blkcheck reads
/// the pattern, writes its own and flushes; the image is checked byte for
/// byte afterwards.
#[test]
fn blkcheck_on_firecracker() {
    if !usable() {
        return;
    }
    let img = xtask::blkcheck_image("fc-disk", 4 << 20);
    let before = std::fs::read(&img).unwrap();
    let drive = format!(
        r#"{{"drive_id": "d0", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        img.display()
    );
    let (status, text) = boot_with("blkcheck", "", 1, &drive);
    let after = std::fs::read(&img).unwrap();
    std::fs::remove_file(&img).unwrap();
    assert!(text.contains("read 65536 bytes, pattern ok"), "{text}");
    assert!(text.contains("blkcheck: ok"), "{text}");
    assert!(text.contains("interrupts"), "not completed by interrupt: {text}");
    xtask::assert_blkcheck_wrote(&before, &after);
    assert_eq!(status, Some(0), "{text}");
}

/// The filesystem unit on Firecracker (no virtio-fs there): files baked
/// into the ELF, an ext4 image and a FAT image on its virtio-blk, each
/// walked by fscheck and compared with the host's sha256sum; the FAT image
/// is written as well and checked by fsck.fat.
#[test]
fn filesystems_on_firecracker() {
    if !usable() {
        return;
    }
    use xtask::fstree;
    let dir = xtask::root().join("target/tests").join(format!("fc-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    eprintln!("tree seed {seed}");
    let tree = fstree::generate(&dir.join("tree"), seed, 2 << 20, 512 << 10).unwrap();
    let pvh = Variant { pvh_only: true, ..Default::default() };
    let baked = xtask::build_with_files("fscheck", pvh, &tree.root, &dir.join("fscheck-baked")).unwrap();
    let (status, text) = boot_elf(&baked, "fscheck-baked", "walk=/", 1, "");
    fstree::assert_walk_matches(&text, &tree.root);
    assert_eq!(status, Some(0), "{text}");

    let elf = xtask::build("fscheck", pvh).unwrap();
    let drive = |img: &std::path::Path, ro: bool| {
        format!(
            r#"{{"drive_id": "d0", "path_on_host": "{}", "is_root_device": false, "is_read_only": {ro}}}"#,
            img.display()
        )
    };
    let ext4 = dir.join("ext4.img");
    fstree::ext4_image(&tree.root, &ext4, 24);
    let (status, text) = boot_elf(&elf, "fscheck-ext4", "walk=/disk0", 1, &drive(&ext4, true));
    fstree::assert_walk_matches(&text, &tree.root);
    assert_eq!(status, Some(0), "{text}");

    let fat = dir.join("fat.img");
    fstree::fat_image(&tree.root, &fat, 300, 0);
    let (status, text) =
        boot_elf(&elf, "fscheck-fat", &format!("write=/disk0/out seed={seed}"), 1, &drive(&fat, false));
    assert!(text.contains("fscheck: read back what was written"), "{text}");
    assert_eq!(status, Some(0), "{text}");
    fstree::assert_fat_clean(&fat, 0);
    let back = fstree::fat_extract(&fat, 0, "/out", &dir.join("back"));
    fstree::assert_walk_matches(&text, &back);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cargo xtask run --firecracker` writes Firecracker's configuration from
/// the monitor's options (here a read-only disk), boots the PVH build and
/// removes the file afterwards.
#[test]
fn xtask_run_boots_on_firecracker_with_the_monitors_options() {
    if !usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("torito-fc-xrun-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0x5a; 1 << 20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run", "blkcheck", "--firecracker", "--cpus", "2", "--mem", "256M", "--timeout", "30", "-v"])
        .arg("--disk")
        .arg(format!("{},ro", disk.display()))
        .output()
        .unwrap();
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}{err}");
    assert!(err.contains("xtask: timeout 30 firecracker --no-api --config-file"), "{err}");
    assert!(text.contains("booted via pvh") || text.contains("blkcheck"), "{text}");
    assert_eq!(out.status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A NIC on Firecracker from the monitor's `--net` option: echo in a
/// network namespace answers ping and echoes through `nc`; then 16 MiB
/// each way through one connection, byte for byte, with the checksum and
/// segmentation offloads Firecracker offers (asserted from the NIC's boot
/// line): frames of up to 64 KiB both ways.
#[test]
fn echo_with_a_nic_on_firecracker_through_xtask_run() {
    use std::process::Stdio;
    if !usable() {
        return;
    }
    let Some(ns) = xtask::netns::Netns::or_skip("fc", &["ip", "ping", "nc"]) else { return };
    xtask::build("echo", Variant { pvh_only: true, ..Default::default() }).unwrap();
    let mut c = ns.exec(env!("CARGO_BIN_EXE_xtask"));
    c.args(["run", "echo", "--firecracker", "--net", "tap=tap0,mac=06:00:0a:00:02:0f", "--timeout", "60"]);
    c.args(["--", "torito.ip=10.0.2.15/24", "port=7", "buf=65536", "conns=2"]);
    let vm = xtask::group::spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("start xtask run");
    assert!(ns.wait_for_ping_within(std::time::Duration::from_secs(120)), "the guest never answered ping");
    let echoed = ns.nc_session(7, |w| w.write_all(b"through firecracker\n").unwrap());
    assert_eq!(String::from_utf8_lossy(&echoed), "through firecracker\n");
    let bulk = ns
        .exec(env!("CARGO_BIN_EXE_netload"))
        .args(["10.0.2.15:7", "bulk", &(16 << 20).to_string(), "0"])
        .output()
        .expect("run netload");
    let text = String::from_utf8_lossy(&bulk.stdout);
    assert!(bulk.status.success(), "16 MiB each way: {text}{}", String::from_utf8_lossy(&bulk.stderr));
    eprintln!("Firecracker: {}", text.trim());
    let out = vm.wait_with_output_within(std::time::Duration::from_secs(30)).unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    eprintln!("{console}{}", String::from_utf8_lossy(&out.stderr));
    assert!(console.contains("MAC 06:00:0a:00:02:0f, offloads: checksums, TSO"), "{console}");
    let bytes = 20 + (16 << 20);
    assert!(console.contains(&format!("2 connection(s), {bytes} bytes echoed")), "{console}");
}
