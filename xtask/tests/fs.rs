//! The filesystem unit with real guests: a tree of files generated for the
//! run (random nesting, empty files and directories, files up to 1 MiB,
//! long and UTF-8 names), served by `apps/fscheck walk=DIR`, whose
//! `sha256sum` lines must equal the host's `sha256sum` over the same tree.
//!
//! Sources: the files baked into the ELF (every monitor).

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
