//! The filesystem unit with real guests: a tree of files generated for the
//! run (random nesting, empty files and directories, files up to 1 MiB,
//! long and UTF-8 names), served by `apps/fscheck walk=DIR`, whose
//! `sha256sum` lines must equal the host's `sha256sum` over the same tree.
//!
//! Sources: the files baked into the ELF (every monitor); ext4 and FAT
//! images made by the host's tools (our monitor and QEMU), written and
//! checked back with mtools and fsck.fat.

use std::path::PathBuf;

use xtask::fstree;
use xtask::testing::{kvm, need};
use xtask::{QemuMachine, Variant};

/// A scratch directory for one test, removed first.
fn scratch(tag: &str) -> PathBuf {
    let d = xtask::root().join("target/tests").join(format!("fs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A seed for this run (printed, so a failure can be replayed with
/// `TORITO_TEST_SEED`).
fn seed() -> u64 {
    let s = std::env::var("TORITO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("tree seed {s} (TORITO_TEST_SEED={s} replays it)");
    s
}

/// fscheck with `tree` baked in.
fn fscheck_with(tree: &fstree::Tree, dir: &std::path::Path, pvh_only: bool) -> PathBuf {
    let to = dir.join(if pvh_only { "fscheck-pvh" } else { "fscheck" });
    xtask::build_with_files("fscheck", Variant { pvh_only, ..Default::default() }, &tree.root, &to)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn baked_in_files_on_the_torito_monitor() {
    if !kvm() {
        return;
    }
    let dir = scratch("baked");
    let tree = fstree::generate(&dir.join("tree"), seed(), 4 << 20, 1 << 20).unwrap();
    let elf = fscheck_with(&tree, &dir, false);
    let (code, out, _) = xtask::testing::torito(&[], &elf, &["walk=/"]);
    fstree::assert_walk_matches(&out, &tree.root);
    assert!(out.contains("fscheck: mount /: baked-in (read-only), baked into the ELF"), "{out}");
    assert_eq!(code, 0);
    // A subdirectory, and `..` that cannot leave the mount.
    let (code, out, _) = xtask::testing::torito(&[], &elf, &["walk=/empty-dir/../.."]);
    fstree::assert_walk_matches(&out, &tree.root);
    assert_eq!(code, 0);
    let (code, out, _) = xtask::testing::torito(&[], &elf, &["walk=/no-such-dir"]);
    assert!(out.contains("fscheck: FAILED: read_dir /no-such-dir: no such file or directory"), "{out}");
    assert_eq!(code, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn baked_in_files_on_qemu() {
    if !need("qemu-system-x86_64") || !kvm() {
        return;
    }
    let dir = scratch("baked-qemu");
    let tree = fstree::generate(&dir.join("tree"), seed(), 2 << 20, 512 << 10).unwrap();
    // The same ELF on microvm (KVM) and pc (TCG): multiboot on both.
    let elf = fscheck_with(&tree, &dir, false);
    for machine in [QemuMachine::MicrovmKvm, QemuMachine::PcTcg] {
        let (code, out) = xtask::testing::qemu_boot(machine, &elf, "walk=/", &[]);
        fstree::assert_walk_matches(&out, &tree.root);
        assert_eq!(code, 0, "{machine:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether the disk image tools are here (a failure under `CI=true`).
fn image_tools() -> bool {
    ["mkfs.ext4", "mkfs.fat", "mcopy", "fsck.fat"].iter().all(|t| {
        let path = format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default());
        let found = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .env("PATH", path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{t} is missing under CI=true");
            xtask::testing::skip(&format!("{t} is not installed; disk image test not run"));
        }
        found
    })
}

fn fscheck(pvh_only: bool) -> PathBuf {
    xtask::build("fscheck", Variant { pvh_only, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"))
}

/// ext4 (`mkfs.ext4 -d`) on our monitor, QEMU microvm (virtio-blk-device)
/// and QEMU pc (virtio-blk-pci): the same files.
#[test]
fn ext4_images_everywhere() {
    if !kvm() || !image_tools() {
        return;
    }
    let dir = scratch("ext4");
    let tree = fstree::generate(&dir.join("tree"), seed(), 4 << 20, 1 << 20).unwrap();
    let img = dir.join("ext4.img");
    fstree::ext4_image(&tree.root, &img, 24);
    let disk = format!("{},ro", img.display());
    let (code, out, _) = xtask::testing::torito(&["--disk", &disk], &fscheck(false), &["walk=/disk0"]);
    fstree::assert_walk_matches(&out, &tree.root);
    assert!(out.contains("fscheck: mount /disk0: ext4 (read-only), disk 0, the whole disk"), "{out}");
    assert_eq!(code, 0);
    if need("qemu-system-x86_64") {
        let drive = format!("file={},if=none,id=d0,format=raw,readonly=on", img.display());
        let mmio = ["-machine", "acpi=off", "-drive", &drive, "-device", "virtio-blk-device,drive=d0"];
        let (code, out) =
            xtask::testing::qemu_boot(QemuMachine::MicrovmKvm, &fscheck(true), "walk=/disk0", &mmio);
        fstree::assert_walk_matches(&out, &tree.root);
        assert_eq!(code, 0);
        let pci = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
        let (code, out) = xtask::testing::qemu_boot(QemuMachine::PcTcg, &fscheck(false), "walk=/disk0", &pci);
        fstree::assert_walk_matches(&out, &tree.root);
        assert_eq!(code, 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// FAT32 read and written on our monitor, in an MBR partition: the tree
/// made by mcopy reads back; a tree fscheck writes (long and UTF-8 names,
/// renames, deletions) is what the host's mtools read, and fsck.fat finds
/// the filesystem clean; a second boot, and QEMU microvm, read the same.
#[test]
fn fat_images_read_and_written_on_the_torito_monitor() {
    if !kvm() || !image_tools() {
        return;
    }
    let dir = scratch("fat");
    let tree = fstree::generate(&dir.join("tree"), seed(), 3 << 20, 1 << 20).unwrap();
    let img = dir.join("fat.img");
    let offset = 1 << 20;
    fstree::fat_image(&tree.root, &img, 300, offset);
    let disk = img.display().to_string();
    let elf = fscheck(false);
    // The tree is /tree in the image; fscheck writes /tree/out, among the
    // names mtools made (some of their 8.3 names are not ASCII).
    let (code, out, _) = xtask::testing::torito(&["--disk", &disk], &elf, &["walk=/disk0/tree"]);
    fstree::assert_walk_matches(&out, &tree.root);
    assert!(out.contains("fscheck: mount /disk0: fat, disk 0, partition 1"), "{out}");
    assert_eq!(code, 0);

    let s = seed().to_string();
    let (code, out, _) =
        xtask::testing::torito(&["--disk", &disk], &elf, &["write=/disk0/tree/out", &format!("seed={s}")]);
    assert!(out.contains("fscheck: read back what was written"), "{out}");
    assert_eq!(code, 0, "{out}");
    fstree::assert_fat_clean(&img, offset);
    let back = fstree::fat_extract(&img, offset, "/tree/out", &dir.join("back"));
    fstree::assert_walk_matches(&out, &back);
    // And again, from a fresh boot; and on QEMU microvm.
    let (code, again, _) = xtask::testing::torito(&["--disk", &disk], &elf, &["walk=/disk0/tree/out"]);
    fstree::assert_walk_matches(&again, &back);
    assert_eq!(code, 0);
    if need("qemu-system-x86_64") {
        let drive = format!("file={},if=none,id=d0,format=raw", img.display());
        let mmio = ["-machine", "acpi=off", "-drive", &drive, "-device", "virtio-blk-device,drive=d0"];
        let (code, out) =
            xtask::testing::qemu_boot(QemuMachine::MicrovmKvm, &fscheck(true), "walk=/disk0/tree/out", &mmio);
        fstree::assert_walk_matches(&out, &back);
        assert_eq!(code, 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A disk with nothing the unit knows stays a raw block device, and the
/// boot says so.
#[test]
fn an_unknown_disk_stays_raw() {
    if !kvm() {
        return;
    }
    let dir = scratch("raw");
    let img = dir.join("blank.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let (code, out, _) =
        xtask::testing::torito(&["--disk", &img.display().to_string()], &fscheck(false), &["walk=/"]);
    assert!(
        out.contains("[torito] fs: /disk0: no filesystem recognised; the disk stays a raw block device"),
        "{out}"
    );
    assert_eq!(code, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A host directory shared with `--share`: the guest reads the tree as
/// the host has it; a tree it writes is what the host then reads; a
/// read-only share refuses the writing and is left as it was.
#[test]
fn virtio_fs_shares_on_the_torito_monitor() {
    if !kvm() {
        return;
    }
    let dir = scratch("share");
    let tree = fstree::generate(&dir.join("tree"), seed(), 4 << 20, 1 << 20).unwrap();
    let elf = fscheck(false);
    let share = format!("{},tag=www", tree.root.display());
    let (code, out, _) = xtask::testing::torito(&["--share", &share], &elf, &["walk=/www"]);
    fstree::assert_walk_matches(&out, &tree.root);
    assert!(out.contains("fscheck: mount /www: virtio-fs, virtio-fs tag www"), "{out}");
    assert_eq!(code, 0);

    let w = dir.join("w");
    std::fs::create_dir(&w).unwrap();
    let share = format!("{},tag=w", w.display());
    let s = format!("seed={}", seed());
    let (code, out, _) = xtask::testing::torito(&["--share", &share], &elf, &["write=/w/out", &s]);
    assert!(out.contains("fscheck: read back what was written"), "{out}");
    assert_eq!(code, 0, "{out}");
    fstree::assert_walk_matches(&out, &w.join("out"));

    let before = fstree::sha256_lines(&tree.root);
    let share = format!("{},tag=www,ro", tree.root.display());
    let (code, out, _) = xtask::testing::torito(&["--share", &share], &elf, &["write=/www/out", &s]);
    assert!(out.contains("fscheck: FAILED: create_dir_all /www/out: read-only filesystem"), "{out}");
    assert_eq!(code, 1);
    assert_eq!(fstree::sha256_lines(&tree.root), before, "a read-only share changed");
    assert!(!tree.root.join("out").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same appliance on QEMU, with the share served by virtiofsd: the
/// same reads on microvm (virtio-mmio) and pc (PCI, TCG), the same writes
/// on microvm.
#[test]
fn virtio_fs_shares_on_qemu_with_virtiofsd() {
    if !need("qemu-system-x86_64") || !kvm() {
        return;
    }
    if xtask::virtiofsd::find().is_none() {
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "virtiofsd is missing under CI=true");
        xtask::testing::skip("virtiofsd is not installed; test not run");
        return;
    }
    let dir = scratch("share-qemu");
    let tree = fstree::generate(&dir.join("tree"), seed(), 2 << 20, 512 << 10).unwrap();
    let w = dir.join("w");
    std::fs::create_dir(&w).unwrap();
    let boot = |machine: QemuMachine, share: &std::path::Path, tag: &str, cmdline: &str| {
        let d = xtask::virtiofsd::Virtiofsd::start(share, tag, &dir).unwrap_or_else(|e| panic!("{e}"));
        let mut args = xtask::virtiofsd::qemu_common_args(machine, "128M");
        args.extend(d.qemu_args(machine, 0));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let elf = fscheck(machine == QemuMachine::MicrovmKvm);
        xtask::testing::qemu_boot(machine, &elf, cmdline, &args)
    };
    for machine in [QemuMachine::MicrovmKvm, QemuMachine::PcTcg] {
        let (code, out) = boot(machine, &tree.root, "www", "walk=/www");
        fstree::assert_walk_matches(&out, &tree.root);
        assert!(out.contains("fscheck: mount /www: virtio-fs, virtio-fs tag www"), "{machine:?}: {out}");
        assert_eq!(code, 0, "{machine:?}");
    }
    let (code, out) = boot(QemuMachine::MicrovmKvm, &w, "w", &format!("write=/w/out seed={}", seed()));
    assert!(out.contains("fscheck: read back what was written"), "{out}");
    assert_eq!(code, 0, "{out}");
    fstree::assert_walk_matches(&out, &w.join("out"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A guest that writes its own FUSE requests to try to leave its share
/// (`..`, names with `/`, a symbolic link to a file outside, node IDs
/// never handed out, lengths that lie, a READ of 4 GiB): every one is an
/// error reply, the good requests after them still work, and the file
/// beside the share is neither changed nor read. Then 1,500 OPENs never
/// released: the monitor holds its cap and stays small.
#[test]
fn a_hostile_guest_stays_inside_its_share() {
    if !kvm() {
        return;
    }
    let dir = scratch("evil");
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("a.txt"), "inside the share\n").unwrap();
    let canary = dir.join("canary");
    std::fs::write(&canary, "outside the share\n").unwrap();
    std::os::unix::fs::symlink("../canary", share.join("escape")).unwrap();
    let atime = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
    };
    let before = atime(&canary);
    let elf = xtask::build("evilfs", Variant::default()).unwrap_or_else(|e| panic!("{e}"));
    let arg = share.display().to_string();
    let (code, out, err) = xtask::testing::torito(&["--share", &arg, "--timeline=json"], &elf, &[]);
    assert!(out.contains("evilfs: a.txt reads 'inside the share'"), "{out}");
    assert!(out.contains("evilfs: ok"), "{out}");
    assert_eq!(code, 0);
    // 1,500 OPENs never released: the server's tables and descriptors
    // stay bounded (1,024 handles at most).
    let rss = xtask::testing::peak_rss_kib(&err);
    assert!(rss < 16 * 1024, "peak RSS {rss} KiB after a handle flood");
    assert_eq!(atime(&canary), before, "the file outside the share was read");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "outside the share\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every way `--share` can be wrong is one line and a status of its own,
/// before the guest starts; a directory the monitor may not read is 77
/// (checked as `nobody` when the tests run as root, who may read
/// anything).
#[test]
fn bad_shares_are_one_line_errors() {
    if !kvm() {
        return;
    }
    let dir = scratch("bad-share");
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let elf = fscheck(false);
    let d = dir.display().to_string();
    let missing = format!("{d}/missing");
    let f = file.display().to_string();
    let long = format!("{d},tag={}", "t".repeat(37));
    let twice = format!("{d},tag=same");
    let cases: [(&[&str], i32, &str); 5] = [
        (&["--share", &missing], 66, "No such file or directory"),
        (&["--share", &f], 66, "not a directory"),
        (&["--share", &twice, "--share", &twice], 78, "two shares are tagged 'same'"),
        (&["--share", &long], 2, "1 to 36 bytes"),
        (&["--share", &format!("{d},cache=none")], 2, "unknown share option 'cache=none'"),
    ];
    for (args, want, says) in cases {
        let (code, out, err) = xtask::testing::torito(args, &elf, &[]);
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!out.contains("fscheck:"), "{args:?}: the guest ran: {out}");
    }
    // Unreadable: mode 000, and (as root) the monitor run as nobody. The
    // share is checked before /dev/kvm is opened, so nobody gets that far.
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let monitor = xtask::build_monitor(true).unwrap();
    let root = running_as_root();
    let mut c = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&monitor);
        c
    } else {
        std::process::Command::new(&monitor)
    };
    let out = c.arg("--share").arg(&locked).arg(&elf).output();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    match out {
        Ok(o) if o.status.code() == Some(77) => {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("Permission denied") && err.lines().count() == 1, "{err}");
        }
        Ok(o) if root && o.status.code() == Some(126) => xtask::testing::skip(
            "nobody may not run the monitor from this checkout; unreadable share not tried",
        ),
        // A checkout under a directory only root may enter (`mktemp -d`):
        // nobody cannot read the app either.
        Ok(o) if root && String::from_utf8_lossy(&o.stderr).contains("cannot read kernel image") => {
            xtask::testing::skip("nobody may not read the app in this checkout; unreadable share not tried")
        }
        Ok(o) => {
            panic!("unreadable share: status {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr))
        }
        Err(e) if root => xtask::testing::skip(&format!("setpriv: {e}; unreadable share not tried")),
        Err(e) => panic!("{e}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether this process runs as root (who may read any directory).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
