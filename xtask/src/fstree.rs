//! Trees of files for the filesystem tests and bench: random nesting,
//! empty files and directories, files of 0 bytes to a few MiB, long and
//! UTF-8 names; and what the host's `sha256sum` says of them, to compare
//! with `apps/fscheck walk=DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A generated tree.
#[derive(Debug)]
pub struct Tree {
    /// Its root directory.
    pub root: PathBuf,
    /// Regular files in it.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A small deterministic generator (xorshift), so a failing seed can be
/// replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Names the generator draws from (no `/`, NUL, backslash or newline:
/// `sha256sum` escapes those; nothing beyond the Basic Multilingual Plane:
/// mtools 4.0 stores such characters truncated to 16 bits).
const NAMES: &[&str] = &[
    "index.html",
    "a",
    "data.bin",
    "ünïcödé",
    "日本語のファイル",
    "ελληνικά",
    "with space",
    "x.y.z",
    "UPPER",
    "-dash",
];

/// Make a tree under `root` (created; must not exist) from `seed`, about
/// `budget` bytes in all, with at most `max_file` bytes per file.
pub fn generate(root: &Path, seed: u64, budget: u64, max_file: u64) -> std::io::Result<Tree> {
    std::fs::create_dir_all(root)?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut t = Tree { root: root.to_path_buf(), files: 0, bytes: 0 };
    // Always present: an empty file, an empty directory, a 255-byte name,
    // a name of UTF-8 multi-byte characters, one file of `max_file` bytes.
    std::fs::write(root.join("empty"), b"")?;
    std::fs::create_dir(root.join("empty-dir"))?;
    std::fs::write(root.join("n".repeat(255)), b"a long name\n")?;
    std::fs::write(root.join("ß∂ƒ©˙∆˚¬"), "utf-8 name\n")?;
    t.files += 3;
    t.bytes += 12 + 11;
    let big = fill(&mut rng, max_file as usize);
    std::fs::write(root.join("big.bin"), &big)?;
    t.files += 1;
    t.bytes += max_file;
    let mut dirs = vec![root.to_path_buf()];
    let mut n = 0;
    while t.bytes < budget && n < 400 {
        n += 1;
        let dir = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let name = format!("{}-{n}", NAMES[rng.below(NAMES.len() as u64) as usize]);
        if rng.below(5) == 0 && dirs.len() < 40 {
            let d = dir.join(name);
            std::fs::create_dir(&d)?;
            dirs.push(d);
            continue;
        }
        // Mostly small files, now and then a large one.
        let len = if rng.below(10) == 0 { rng.below(max_file) } else { rng.below(16 * 1024) };
        let len = len.min(budget.saturating_sub(t.bytes));
        std::fs::write(dir.join(name), fill(&mut rng, len as usize))?;
        t.files += 1;
        t.bytes += len;
    }
    Ok(t)
}

fn fill(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Every regular file under `root`, relative, sorted by bytes.
pub fn files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.expect("a directory entry");
            let name = e.file_name().into_string().expect("UTF-8 names");
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = e.file_type().expect("a file type");
            if ft.is_dir() {
                walk(&e.path(), &r, out);
            } else if ft.is_file() {
                out.push(r);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out.sort();
    out
}

/// `sha256sum`'s lines for every regular file under `root`, sorted by
/// path, as `fscheck walk` prints them; and the line with the totals.
pub fn sha256_lines(root: &Path) -> (Vec<String>, String) {
    let files = files(root);
    let mut lines = Vec::new();
    let mut bytes = 0;
    // In batches: one `sha256sum` per 64 files.
    for chunk in files.chunks(64) {
        let out = Command::new("sha256sum")
            .arg("--")
            .args(chunk)
            .current_dir(root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run sha256sum: {e}"));
        assert!(out.status.success(), "sha256sum: {}", String::from_utf8_lossy(&out.stderr));
        lines.extend(String::from_utf8(out.stdout).expect("UTF-8 output").lines().map(String::from));
    }
    for f in &files {
        bytes += std::fs::metadata(root.join(f)).map_or(0, |m| m.len());
    }
    (lines, format!("fscheck: {} files, {bytes} bytes", files.len()))
}

/// Panics unless `console` (fscheck's output) has exactly the host's
/// `sha256sum` lines for `root`, in order, and the totals.
pub fn assert_walk_matches(console: &str, root: &Path) {
    let (want, total) = sha256_lines(root);
    let got: Vec<&str> = console
        .lines()
        .filter(|l| l.len() > 66 && l.as_bytes()[64] == b' ' && l.as_bytes()[65] == b' ')
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{} lines from the guest, {} from the host:\n{console}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "a line differs");
    }
    assert!(console.contains(&total), "no '{total}' in:\n{console}");
    assert!(!console.contains("FAILED"), "{console}");
}

/// Run a host tool (from `/usr/sbin` too), panicking with its output when
/// it fails; its standard output.
pub fn tool(cmd: &mut Command) -> String {
    let path = format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default());
    // mtools reads and writes long names in the locale's encoding.
    let out =
        cmd.env("PATH", path).env("LC_ALL", "C.UTF-8").output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 image of `mib` MiB at `img` holding the tree at `src`
/// (`mkfs.ext4 -d`: no root, no mount).
pub fn ext4_image(src: &Path, img: &Path, mib: u32) {
    let _ = std::fs::remove_file(img);
    tool(Command::new("truncate").arg("-s").arg(format!("{mib}M")).arg(img));
    tool(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(src).arg(img));
}

/// A FAT32 image of `mib` MiB at `img` holding the directory `src` itself
/// (as `/<its name>`; `mkfs.fat`, then `mcopy`), the filesystem starting
/// `offset` bytes into the image (0: a bare filesystem; else an MBR with
/// one partition there).
pub fn fat_image(src: &Path, img: &Path, mib: u32, offset: u64) {
    let _ = std::fs::remove_file(img);
    tool(Command::new("truncate").arg("-s").arg(format!("{mib}M")).arg(img));
    if offset > 0 {
        // One partition of type 0x0c (FAT32, LBA) from `offset` to the end.
        let mut mbr = vec![0u8; 512];
        let (start, len) = ((offset / 512) as u32, ((u64::from(mib) << 20) - offset) as u32 / 512);
        mbr[446 + 4] = 0x0c;
        mbr[446 + 8..446 + 12].copy_from_slice(&start.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&len.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(img).expect("the image");
        f.write_all(&mbr).expect("writing the MBR");
    }
    // The size in KiB: without it mkfs.fat sizes the filesystem to the
    // whole file, past its end when there is an offset.
    let kib = ((u64::from(mib) << 20) - offset) / 1024;
    // 4 KiB clusters: mtools 4.0 cannot grow a directory by two clusters
    // for one long name, and with 512-byte clusters a 255-byte name (21
    // slots) sometimes needs that ("No directory slots"). FAT32 wants
    // 65,525 clusters or more, so `mib` must be 260 or more.
    assert!(mib >= 260, "a FAT32 image with 4 KiB clusters needs 260 MiB or more (sparse)");
    tool(
        Command::new("mkfs.fat")
            .args(["-F", "32", "-s", "8", "--offset"])
            .arg((offset / 512).to_string())
            .arg(img)
            .arg(kib.to_string()),
    );
    tool(
        Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(format!("{}@@{offset}", img.display()))
            .arg(src)
            .arg("::/"),
    );
}

/// Copy the directory `dir` of the FAT filesystem in `img` (at `offset`)
/// into the host directory `to` (`mcopy -s`); returns where it landed
/// (`to/<its name>`).
pub fn fat_extract(img: &Path, offset: u64, dir: &str, to: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("the target directory");
    tool(
        Command::new("mcopy")
            .args(["-s", "-n", "-i"])
            .arg(format!("{}@@{offset}", img.display()))
            .arg(format!("::{dir}"))
            .arg(to),
    );
    to.join(dir.rsplit('/').next().unwrap_or(dir))
}

/// `fsck.fat -n` over the FAT filesystem at `offset` in `img` (fsck.fat
/// has no offset: the partition is copied out first); panics unless clean.
pub fn assert_fat_clean(img: &Path, offset: u64) {
    let part = img.with_extension("part");
    let data = std::fs::read(img).expect("the image");
    std::fs::write(&part, &data[offset as usize..]).expect("the partition");
    let out = tool(Command::new("fsck.fat").arg("-n").arg(&part));
    let _ = std::fs::remove_file(&part);
    assert!(!out.contains("Dirty bit") || out.contains("0 files"), "{out}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn trees_are_reproducible_and_within_budget() {
        let base = std::env::temp_dir().join(format!("torito-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let a = super::generate(&base.join("a"), 7, 1 << 20, 256 << 10).unwrap();
        let b = super::generate(&base.join("b"), 7, 1 << 20, 256 << 10).unwrap();
        assert_eq!((a.files, a.bytes), (b.files, b.bytes));
        assert!(a.bytes <= (1 << 20) + (256 << 10) + 23 && a.files > 10, "{a:?}");
        assert_eq!(super::files(&a.root), super::files(&b.root));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
