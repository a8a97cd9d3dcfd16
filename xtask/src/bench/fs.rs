//! The filesystem section: one appliance (`apps/fscheck`) reads a 256 MiB
//! file and 1,000 files of 4 KiB through each source, side by side in one
//! run: a `--share` on our monitor (virtio-fs), ext4 and FAT images on our
//! disk, the raw disk under them (`apps/blkcheck`, the same 1 MiB
//! requests), and the same ELF on QEMU microvm with virtiofsd. The exits a
//! small file costs through a share are counted (the run reading 1,000
//! files less the run reading none).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::report::Verdicts;
use super::{json_number, summary};
use crate::virtiofsd::{self, Virtiofsd};
use crate::{QemuMachine, Variant};

/// Counted runs of each configuration (after one that warms the host's
/// page cache).
const RUNS: usize = 5;
/// Small files, and their size.
const SMALL: usize = 1000;
const SMALL_LEN: usize = 4096;

/// What one configuration measured.
struct Figures {
    name: &'static str,
    /// The figure of each counted run (MB/s, or µs per file).
    values: Vec<f64>,
}

impl Figures {
    fn median(&self) -> Option<f64> {
        summary(&self.values).map(|s| s.1)
    }
}

/// The share's tree, the images made from it, and the raw disk image (the
/// same 256 MiB the block section reads), kept under `out` between runs.
struct Data {
    share: PathBuf,
    raw: PathBuf,
    ext4: Option<PathBuf>,
    fat: Option<PathBuf>,
}

fn prepare(out: &Path) -> Result<Data, String> {
    let dir = out.join("fs");
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("small")).map_err(|e| format!("{}: {e}", share.display()))?;
    let raw = super::block::image_256m(out)?;
    // The big file: 256 MiB with no block of zeros (mkfs.ext4 -d would
    // leave those out as holes, and a file of holes is not what is being
    // measured).
    let big = share.join("big");
    if std::fs::metadata(&big).map_or(true, |m| m.len() != 256 << 20) {
        let data: Vec<u8> = (0..256usize << 20).map(|i| ((i >> 12) % 255 + 1) as u8).collect();
        std::fs::write(&big, data).map_err(|e| format!("{}: {e}", big.display()))?;
    }
    for i in 0..SMALL {
        let p = share.join(format!("small/f{i:04}"));
        if std::fs::metadata(&p).map_or(true, |m| m.len() != SMALL_LEN as u64) {
            let data: Vec<u8> = (0..SMALL_LEN).map(|k| (k + i) as u8).collect();
            std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    // Images of the same tree: ext4 by `mkfs.ext4 -d`, FAT32 by mkfs.fat
    // and mcopy; made once (they take seconds), again when the tree is
    // newer.
    let newer = |img: &Path| {
        let t = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        t(img).is_none_or(|i| t(&big).is_some_and(|b| b > i))
    };
    let tools =
        |names: &[&str]| names.iter().all(|t| crate::have(t) || Path::new("/usr/sbin").join(t).exists());
    let sbin = |t: &str| if crate::have(t) { PathBuf::from(t) } else { Path::new("/usr/sbin").join(t) };
    let ext4 = dir.join("ext4.img");
    let ext4 = if tools(&["mkfs.ext4"]) {
        if newer(&ext4) {
            run(Command::new("truncate").args(["-s", "300M"]).arg(&ext4))?;
            // 4 KiB blocks, as any filesystem of some size has (mkfs.ext4
            // takes 1 KiB for one this small).
            run(Command::new(sbin("mkfs.ext4"))
                .args(["-q", "-F", "-b", "4096", "-d"])
                .arg(&share)
                .arg(&ext4))?;
        }
        Some(ext4)
    } else {
        None
    };
    let fat = dir.join("fat.img");
    let fat = if tools(&["mkfs.fat", "mcopy"]) {
        if newer(&fat) {
            run(Command::new("truncate").args(["-s", "300M"]).arg(&fat))?;
            run(Command::new(sbin("mkfs.fat")).args(["-F", "32", "-s", "8"]).arg(&fat))?;
            run(Command::new("mcopy")
                .args(["-s", "-i"])
                .arg(&fat)
                .arg(&big)
                .arg(share.join("small"))
                .arg("::/"))?;
        }
        Some(fat)
    } else {
        None
    };
    Ok(Data { share, raw, ext4, fat })
}

fn run(c: &mut Command) -> Result<(), String> {
    let o = c.output().map_err(|e| format!("{:?}: {e}", c.get_program()))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed: {}", c.get_program(), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// The first number after `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let i = text.find(key)? + key.len();
    text[i..].trim_start().split(|c: char| !c.is_ascii_digit() && c != '.').next()?.parse().ok()
}

/// One configuration: its name, the key its figure follows in the
/// output, and how to start it.
type Config<'a> = (&'static str, &'static str, Box<dyn FnMut() -> Result<Command, String> + 'a>);

/// Run every configuration once to warm up, then [`RUNS`] rounds of each
/// in turn (interleaved, so a slow minute of the host weighs on all of
/// them alike); the figure after each one's key in each counted run.
fn measure(mut configs: Vec<Config<'_>>) -> Result<Vec<Figures>, String> {
    let mut figures: Vec<Figures> =
        configs.iter().map(|(name, _, _)| Figures { name, values: Vec::new() }).collect();
    for round in 0..=RUNS {
        for ((name, key, cmd), f) in configs.iter_mut().zip(&mut figures) {
            let o = cmd()?.output().map_err(|e| format!("{name}: {e}"))?;
            let text = String::from_utf8_lossy(&o.stdout);
            let Some(v) = number_after(&text, key) else {
                return Err(format!(
                    "{name}: no '{key}' in its output:\n{text}{}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            };
            if round > 0 {
                f.values.push(v);
            }
        }
    }
    Ok(figures)
}

/// Write `path`'s dirty pages and drop it from the host's page cache, so
/// the warm-up run reads every source in alike. (How a file was written
/// shapes its cache: an image `mkfs.ext4 -d` or `mcopy` wrote in small
/// pieces is held in small pages, which the monitor's reads copy out ~25%
/// slower than a file written or read ahead in large ones; that measured
/// the host's history, not the filesystems.)
fn uncache(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_data().map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: an advice call on a descriptor this function owns; no memory
    // is passed.
    #[allow(unsafe_code)]
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(format!("{}: posix_fadvise: {}", path.display(), std::io::Error::from_raw_os_error(r)));
    }
    Ok(())
}

/// The monitor with `args`, then `elf` and its command line.
fn torito(monitor: &Path, args: &[String], elf: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(monitor);
    c.args(["--timeout", "120"]).args(args).arg(elf).arg("--").args(cmdline.split(' '));
    c
}

/// The fs section.
pub fn run_section(monitor: &Path, out: &Path, verdicts: &mut Verdicts) -> Result<(), String> {
    println!("\nfilesystem (apps/fscheck; 256 MiB read in 1 MiB pieces, {SMALL} files of 4 KiB):");
    let data = prepare(out)?;
    let fscheck = crate::build("fscheck", Variant::default())?;
    let blkcheck = crate::build("blkcheck", Variant::default())?;
    let share = vec!["--share".to_string(), format!("{},tag=s", data.share.display())];
    let disk = |img: &Path| vec!["--disk".to_string(), format!("{},ro", img.display())];
    const READ: &str = "in 1 MiB pieces:";
    for p in [Some(&data.raw), Some(&data.share.join("big")), data.ext4.as_ref(), data.fat.as_ref()]
        .into_iter()
        .flatten()
    {
        uncache(p)?;
    }
    let qemu = crate::have("qemu-system-x86_64") && crate::kvm_usable() && virtiofsd::find().is_some();
    let pvh = crate::build("fscheck", Variant { pvh_only: true, ..Default::default() })?;
    let run_dir = out.join("fs");
    // QEMU microvm with virtiofsd: a daemon per boot (it ends with QEMU's
    // connection), killed with its process group when dropped.
    let daemons: std::cell::RefCell<Vec<Virtiofsd>> = std::cell::RefCell::new(Vec::new());
    let qemu_cmd = |cmdline: &str| -> Result<Command, String> {
        daemons.borrow_mut().clear();
        let d = Virtiofsd::start(&data.share, "s", &run_dir)?;
        let machine = QemuMachine::MicrovmKvm;
        let mut q = crate::qemu(machine, &pvh, cmdline);
        q.args(virtiofsd::qemu_common_args(machine, "128M")).args(d.qemu_args(machine, 0));
        daemons.borrow_mut().push(d);
        Ok(q)
    };
    let (fscheck, disk) = (&fscheck, &disk);
    let mut notes = Vec::new();
    let mut configs: Vec<Config<'_>> = vec![
        (
            "raw virtio-blk",
            "requests:",
            Box::new(|| Ok(torito(monitor, &disk(&data.raw), &blkcheck, "bench piece=1024"))),
        ),
        ("virtio-fs", READ, Box::new(|| Ok(torito(monitor, &share, fscheck, "read=/s/big")))),
    ];
    for (name, img) in [("ext4", &data.ext4), ("FAT", &data.fat)] {
        match img {
            Some(img) => configs.push((
                name,
                READ,
                Box::new(move || Ok(torito(monitor, &disk(img), fscheck, "read=/disk0/big"))),
            )),
            None => notes.push(format!("{name}: the image tools are not installed; left out")),
        }
    }
    if qemu {
        configs.push(("qemu microvm + virtiofsd", READ, Box::new(|| qemu_cmd("read=/s/big"))));
    } else {
        notes.push("QEMU, KVM or virtiofsd missing: QEMU microvm + virtiofsd left out".into());
    }
    let seq = measure(configs)?;
    for f in &seq {
        let (lo, med, hi) = summary(&f.values).unwrap_or_default();
        println!("  {:<26} sequential read {med:>7.0} MB/s (min {lo:.0}, max {hi:.0}, {RUNS} runs)", f.name);
    }
    let of = |n: &str| seq.iter().find(|f| f.name == n).and_then(Figures::median);
    let ratio = |a: &str, b: &str| Some(of(a)? / of(b)?);
    if let Some(r) = ratio("virtio-fs", "raw virtio-blk") {
        verdicts
            .check(r >= 0.8, format!("virtio-fs / raw virtio-blk, sequential read, same run: {r:.2}× ≥ 0.8"));
    }
    if let Some(r) = ratio("virtio-fs", "qemu microvm + virtiofsd") {
        verdicts.check(
            r >= 2.0,
            format!(
                "virtio-fs on ours / the same ELF on QEMU microvm + virtiofsd, sequential read: {r:.2}× ≥ 2"
            ),
        );
    }
    for fs in ["ext4", "FAT"] {
        if let Some(r) = ratio(fs, "raw virtio-blk") {
            verdicts
                .check(r >= 0.7, format!("{fs} / raw virtio-blk, sequential read, same run: {r:.2}× ≥ 0.7"));
        }
    }

    // Small files: time per file, and (ours) exits per file.
    const EACH: &str = "open, read, close:";
    let mut configs: Vec<Config<'_>> =
        vec![("virtio-fs", EACH, Box::new(|| Ok(torito(monitor, &share, fscheck, "small=/s/small"))))];
    for (name, img) in [("ext4", &data.ext4), ("FAT", &data.fat)] {
        if let Some(img) = img {
            configs.push((
                name,
                EACH,
                Box::new(move || Ok(torito(monitor, &disk(img), fscheck, "small=/disk0/small"))),
            ));
        }
    }
    if qemu {
        configs.push(("qemu microvm + virtiofsd", EACH, Box::new(|| qemu_cmd("small=/s/small"))));
    }
    let small = measure(configs)?;
    // The last daemon goes now, not at the end of the section.
    daemons.borrow_mut().clear();
    for f in &small {
        let (lo, med, hi) = summary(&f.values).unwrap_or_default();
        println!("  {:<26} {SMALL} small files {med:>7.1} µs each (min {lo:.1}, max {hi:.1})", f.name);
    }
    let each = |n: &str| small.iter().find(|f| f.name == n).and_then(Figures::median);
    if let (Some(a), Some(b)) = (each("virtio-fs"), each("qemu microvm + virtiofsd")) {
        println!("  small files, QEMU microvm + virtiofsd / ours, same run: {:.2}× the time", b / a);
    }
    let exits = |files: usize| -> Result<u64, String> {
        let mut t = share.clone();
        t.insert(0, "--timeline=json".into());
        let o = torito(monitor, &t, fscheck, &format!("small=/s/small files={files}"))
            .output()
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|j| json_number(j, "mmio_exits"))
            .ok_or_else(|| "no exit counts in the monitor's --timeline=json".to_string())
    };
    let per = (exits(SMALL)?.saturating_sub(exits(0)?)) as f64 / SMALL as f64;
    verdicts.check(
        per <= 3.0,
        format!("a 4 KiB file through a share (open, read, close): {per:.2} exits to the monitor ≤ 3"),
    );
    for n in notes {
        verdicts.note(format!("note: {n}"));
    }
    Ok(())
}
