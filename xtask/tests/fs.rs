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
            eprintln!("SKIPPED: {t} is not installed; disk image test not run");
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
    fstree::fat_image(&tree.root, &img, 64, offset);
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
