//! The disk filesystems over images made by the host's tools (mkfs.ext4,
//! mkfs.fat, mtools), checked back with the host's tools (fsck.fat, mtype)
//! after the unit wrote to them; and a thousand mutated images, which must
//! give errors, never a panic or a hang. Skipped loudly without the tools
//! (a failure under `CI=true`, where `.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use alloc::boxed::Box;
use alloc::sync::Arc;

use crate::disk::cache::BlockCache;
use crate::disk::cache::tests::RamDisk;
use crate::disk::{Volume, ext4::Ext4Fs, fat::FatFs};
use crate::lock::Mutex;
use crate::path::FsPath;
use crate::vfs::{FileSystem, FileType, OpenFlags};
use crate::*;

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is missing under CI=true; .ci/run should have installed it");
        }
        skip(&format!("{tool} is not installed; disk image test not run"));
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out =
        cmd.env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin").output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("torito-fs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small tree: nested directories, an empty file, long and UTF-8 names,
/// a file over several clusters.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("hello.txt".into(), b"hello, world\n".to_vec()),
        ("empty".into(), vec![]),
        ("a/b/deep.bin".into(), (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect()),
        ("a/Ünïcödé name.txt".into(), "utf-8\n".into()),
        (format!("a/{}", "L".repeat(200)), b"long\n".to_vec()),
        ("www/index.html".into(), b"<h1>hi</h1>\n".to_vec()),
    ];
    for (p, d) in &files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    files
}

fn volume(image: Vec<u8>) -> (Volume, RamDisk) {
    let disk = RamDisk::new(image);
    let cache = Arc::new(Mutex::new(BlockCache::new(Box::new(disk.clone()))));
    (Volume::whole(cache), disk)
}

fn read_all(fs: &dyn FileSystem, path: &str) -> Result<Vec<u8>> {
    let mut h = fs.open(&FsPath::new(path)?, OpenFlags { read: true, ..Default::default() })?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096 + 123];
    loop {
        let n = h.read_at(out.len() as u64, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        // A damaged image may say a file is huge (and sparse: legal); the
        // trees here hold nothing that large.
        if out.len() > 16 << 20 {
            return Err(Error::Corrupt("a file larger than any in the test trees".into()));
        }
    }
}

/// Every file under the root of `fs`, read whole (depth-bounded: a
/// directory that contains itself ends as an error, not a hang).
fn walk(fs: &dyn FileSystem) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut todo = vec![(FsPath::root(), 0)];
    while let Some((dir, depth)) = todo.pop() {
        if depth > 32 {
            return Err(Error::Corrupt("too deep".into()));
        }
        for e in fs.read_dir(&dir)? {
            let p = dir.join(&e.name);
            match e.file_type {
                FileType::Dir => todo.push((p, depth + 1)),
                FileType::File => out.push((p.as_str().to_string(), read_all(fs, p.as_str())?)),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

fn assert_same(got: &[(String, Vec<u8>)], want: &[(String, Vec<u8>)]) {
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got.len(), want.len(), "{:?}", got.iter().map(|x| &x.0).collect::<Vec<_>>());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert!(g.1 == w.1, "{} differs", g.0);
    }
}

fn ext4_image(dir: &Path, src: &Path, mib: u32) -> Vec<u8> {
    let img = dir.join("ext4.img");
    run(Command::new("truncate").arg("-s").arg(format!("{mib}M")).arg(&img));
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "1024", "-d"]).arg(src).arg(&img));
    std::fs::read(&img).unwrap()
}

fn fat_image(dir: &Path, src: &Path, kib: u32, fat: &str) -> (PathBuf, Vec<u8>) {
    let img = dir.join(format!("fat{fat}.img"));
    let _ = std::fs::remove_file(&img);
    // FAT16 and FAT32 with one sector per cluster, so they fit in small
    // images; FAT12 as mkfs.fat chooses.
    let mut mkfs = Command::new("mkfs.fat");
    mkfs.args(["-F", fat]);
    if fat != "12" {
        mkfs.args(["-s", "1"]);
    }
    run(mkfs.arg("-C").arg(&img).arg(kib.to_string()));
    let mut mcopy = Command::new("mcopy");
    mcopy.args(["-s", "-i"]).arg(&img);
    for e in std::fs::read_dir(src).unwrap() {
        mcopy.arg(e.unwrap().path());
    }
    run(mcopy.arg("::/"));
    (img.clone(), std::fs::read(&img).unwrap())
}

#[test]
fn ext4_images_read_like_the_host_wrote_them() {
    if !have("mkfs.ext4") {
        return;
    }
    let dir = scratch("ext4");
    let want = tree(&dir.join("src"));
    let (vol, _) = volume(ext4_image(&dir, &dir.join("src"), 4));
    let fs = Ext4Fs::new(vol).unwrap();
    assert_same(&walk(&fs).unwrap(), &want);
    let m = fs.metadata(&FsPath::new("a/b/deep.bin").unwrap()).unwrap();
    assert_eq!((m.file_type, m.len), (FileType::File, 70_000));
    assert!(m.modified.is_some_and(|t| t > 1_600_000_000), "{m:?}");
    assert!(fs.metadata(&FsPath::new("empty-dir").unwrap()).unwrap().is_dir());
    let w = OpenFlags { write: true, ..Default::default() };
    assert_eq!(fs.open(&FsPath::new("hello.txt").unwrap(), w).err(), Some(Error::ReadOnly));
    assert_eq!(fs.metadata(&FsPath::new("nope").unwrap()), Err(Error::NotFound));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fast path (`disk::ext4::map`) reads what ext4-view reads: a file
/// with holes and more extents than an inode holds (a tree of depth 1),
/// a directory of 2,000 names (hashed, several blocks), a symbolic link
/// (left to ext4-view), metadata and listings; and so does the host.
#[test]
fn ext4_fast_path_reads_what_ext4_view_reads() {
    if !have("mkfs.ext4") {
        return;
    }
    let dir = scratch("ext4-map");
    let src = dir.join("src");
    let mut want = tree(&src);
    // Sparse: 12 runs of data with holes between them (12 extents).
    let sparse: Vec<u8> =
        (0..12 * 64 * 1024u32).map(|i| if (i / 4096) % 4 == 0 { (i % 253) as u8 + 1 } else { 0 }).collect();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("sparse.bin")).unwrap();
        for (k, chunk) in sparse.chunks(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                f.seek(SeekFrom::Start(k as u64 * 4096)).unwrap();
                f.write_all(chunk).unwrap();
            }
        }
        f.set_len(sparse.len() as u64).unwrap();
    }
    want.push(("sparse.bin".into(), sparse));
    std::fs::create_dir(src.join("many")).unwrap();
    for i in 0..2000 {
        let name = format!("many/file number {i:05} with a longer name");
        std::fs::write(src.join(&name), i.to_string()).unwrap();
        want.push((name, i.to_string().into_bytes()));
    }
    std::os::unix::fs::symlink("hello.txt", src.join("link")).unwrap();
    let img = ext4_image(&dir, &src, 16);
    let (vol, _) = volume(img.clone());
    let fast = Ext4Fs::new(vol).unwrap();
    assert!(fast.mapped(), "a clean mkfs.ext4 image is read by the fast path");
    let (vol, _) = volume(img);
    let slow = Ext4Fs::new(vol).unwrap().without_map();
    let got = walk(&fast).unwrap();
    assert_same(&got, &want);
    assert_eq!(got, walk(&slow).unwrap());
    for p in ["sparse.bin", "a", "many", "many/file number 01999 with a longer name", "link", "empty-dir"] {
        let p = FsPath::new(p).unwrap();
        let (a, b) = (fast.metadata(&p).unwrap(), slow.metadata(&p).unwrap());
        assert_eq!((a.file_type, a.len, a.modified), (b.file_type, b.len, b.modified), "{p}");
    }
    assert_eq!(read_all(&fast, "link").unwrap(), b"hello, world\n", "a link, through ext4-view");
    let mut a = fast.read_dir(&FsPath::new("many").unwrap()).unwrap();
    let mut b = slow.read_dir(&FsPath::new("many").unwrap()).unwrap();
    a.sort_by(|x, y| x.name.cmp(&y.name));
    b.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(a, b);
    for bad in ["nope", "hello.txt/x", "many/nope"] {
        let p = FsPath::new(bad).unwrap();
        assert_eq!(fast.metadata(&p).err(), slow.metadata(&p).err(), "{bad}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fat_images_read_and_written_stay_clean_for_fsck() {
    if !have("mkfs.fat") || !have("mcopy") || !have("fsck.fat") {
        return;
    }
    let dir = scratch("fat");
    let want = tree(&dir.join("src"));
    for fat in ["12", "16", "32"] {
        let kib = match fat {
            "12" => 2 * 1024,
            "16" => 8 * 1024,
            _ => 40 * 1024,
        };
        let (img, bytes) = fat_image(&dir, &dir.join("src"), kib, fat);
        let (vol, disk) = volume(bytes);
        let fs = FatFs::new(vol).unwrap();
        assert_same(&walk(&fs).unwrap(), &want);

        // Write: a new file with a long UTF-8 name in a new directory, grown
        // past a cluster, overwritten in the middle, cut; a rename; removals.
        fs.create_dir(&FsPath::new("new dir").unwrap()).unwrap();
        let name = FsPath::new("new dir/a rather long file name, ünïcödé.txt").unwrap();
        let create = OpenFlags { write: true, create: true, ..Default::default() };
        let mut h = fs.open(&name, create).unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(h.write_at(0, &data[..30_000]).unwrap(), 30_000);
        assert_eq!(h.write_at(30_000, &data[30_000..]).unwrap(), 20_000);
        h.write_at(1000, b"MIDDLE").unwrap();
        h.set_len(40_000).unwrap();
        h.sync().unwrap();
        fs.rename(&FsPath::new("hello.txt").unwrap(), &FsPath::new("new dir/hello again.txt").unwrap())
            .unwrap();
        fs.remove_file(&FsPath::new("empty").unwrap()).unwrap();
        assert_eq!(fs.remove_dir(&FsPath::new("a").unwrap()), Err(Error::DirectoryNotEmpty));
        fs.remove_dir(&FsPath::new("empty-dir").unwrap()).unwrap();
        fs.sync().unwrap();
        let mut expect = data[..40_000].to_vec();
        expect[1000..1006].copy_from_slice(b"MIDDLE");
        assert!(read_all(&fs, name.as_str()).unwrap() == expect);

        // The host's tools agree.
        std::fs::write(&img, &*disk.data.lock()).unwrap();
        let fsck = Command::new("fsck.fat")
            .arg("-n")
            .arg(&img)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(fsck.status.success(), "FAT{fat}: fsck.fat -n: {}", String::from_utf8_lossy(&fsck.stdout));
        let back = dir.join("back.bin");
        run(Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(&img)
            .arg(format!("::/new dir/{}", name.name()))
            .arg(&back));
        assert!(std::fs::read(&back).unwrap() == expect, "FAT{fat}: the host reads back other bytes");
        let listing = run(Command::new("mdir").arg("-i").arg(&img).arg("::/new dir"));
        assert!(listing.contains("hello again.txt"), "{listing}");
        assert!(!run(Command::new("mdir").arg("-i").arg(&img).arg("::/")).contains("empty-dir"));
        std::fs::remove_file(&back).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn disks_are_mounted_whole_or_by_partition_and_the_rest_stay_raw() {
    if !have("mkfs.ext4") || !have("mkfs.fat") || !have("mcopy") {
        return;
    }
    let _g = super::serial();
    let dir = scratch("mount");
    tree(&dir.join("src"));
    let ext4 = ext4_image(&dir, &dir.join("src"), 4);
    // A FAT filesystem in partition 1 of an MBR disk, starting at 1 MiB.
    let (_, fat) = fat_image(&dir, &dir.join("src"), 8 * 1024, "16");
    let mut mbr_disk = vec![0u8; (1 << 20) + fat.len()];
    mbr_disk[1 << 20..].copy_from_slice(&fat);
    mbr_disk[446 + 4] = 0x06;
    mbr_disk[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr_disk[446 + 12..446 + 16].copy_from_slice(&((fat.len() / 512) as u32).to_le_bytes());
    mbr_disk[510] = 0x55;
    mbr_disk[511] = 0xaa;
    let blank = vec![0u8; 1 << 20];
    let devs: Vec<Box<dyn unit_devices::BlockDevice + Send>> =
        vec![Box::new(RamDisk::new(ext4)), Box::new(RamDisk::new(mbr_disk)), Box::new(RamDisk::new(blank))];
    let (raw, lines) = crate::disk::mount_all(devs);
    assert_eq!(raw.len(), 1, "the blank disk stays raw");
    assert_eq!(lines, ["/disk2: no filesystem recognised; the disk stays a raw block device"]);
    let m: Vec<String> = mounts().iter().map(Mount::describe).collect();
    assert_eq!(m, ["/disk0: ext4 (read-only), disk 0, the whole disk", "/disk1: fat, disk 1, partition 1"]);
    assert_eq!(read_to_string("/disk1/www/index.html").unwrap(), "<h1>hi</h1>\n");
    assert_eq!(read_to_string("/disk0/www/index.html").unwrap(), "<h1>hi</h1>\n");
    write("/disk1/log.txt", b"appended\n").unwrap();
    let mut f = OpenOptions::new().append(true).open("/disk1/log.txt").unwrap();
    io::Write::write_all(&mut f, b"twice\n").unwrap();
    assert_eq!(read_to_string("/disk1/log.txt").unwrap(), "appended\ntwice\n");
    assert_eq!(write("/disk0/x", b"no"), Err(Error::ReadOnly));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tiny deterministic generator for the mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Mount and walk `image` mutated `rounds` times: random bytes over the
/// metadata, truncation. Errors are fine; a panic fails the test.
fn mutate(
    image: &[u8],
    rounds: u32,
    seed: u64,
    open: fn(Volume) -> Result<Arc<dyn FileSystem>>,
) -> (u32, u32) {
    let mut rng = Rng(seed);
    let (mut mounted, mut failed) = (0, 0);
    let span = image.len().min(256 * 1024);
    for round in 0..rounds {
        let mut img = image.to_vec();
        match rng.next() % 4 {
            // Truncated (whole sectors).
            0 => img.truncate((rng.next() as usize % image.len()) & !511),
            // A run of random bytes somewhere in the metadata.
            1 => {
                let at = rng.next() as usize % span;
                let len = (rng.next() % 512) as usize + 1;
                for b in img.iter_mut().skip(at).take(len) {
                    *b = rng.next() as u8;
                }
            }
            // Scattered single bytes.
            _ => {
                for _ in 0..(rng.next() % 64 + 1) {
                    let at = rng.next() as usize % span;
                    img[at] = rng.next() as u8;
                }
            }
        }
        if img.len() < 512 {
            img.resize(512, 0);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (vol, _) = volume(img);
            open(vol).and_then(|fs| walk(fs.as_ref()).map(|_| ()))
        }));
        match r {
            Ok(Ok(())) => mounted += 1,
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("round {round} (seed {seed}) panicked"),
        }
    }
    (mounted, failed)
}

#[test]
fn a_thousand_mutated_images_give_errors_not_panics() {
    if !have("mkfs.ext4") || !have("mkfs.fat") || !have("mcopy") {
        return;
    }
    let dir = scratch("mutate");
    tree(&dir.join("src"));
    let ext4 = ext4_image(&dir, &dir.join("src"), 2);
    let (_, fat) = fat_image(&dir, &dir.join("src"), 2048, "12");
    let seed = std::env::var("TORITO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    std::eprintln!("mutation seed {seed} (TORITO_TEST_SEED={seed} replays it)");
    let e = mutate(&ext4, 500, seed, |v| Ok(Arc::new(Ext4Fs::new(v)?)));
    // FAT is written too: creating, growing, renaming, removing on a
    // damaged volume must fail cleanly as well.
    let f = mutate(&fat, 500, seed ^ 0x5555, |v| {
        let fs = FatFs::new(v)?;
        let create = OpenFlags { write: true, create: true, ..Default::default() };
        let _ = fs.create_dir(&FsPath::new("made")?);
        if let Ok(mut h) = fs.open(&FsPath::new("made/new file.txt")?, create) {
            let _ = h.write_at(0, &[7u8; 10_000]);
            let _ = h.write_at(3, b"abc");
            let _ = h.set_len(100);
        }
        let _ = fs.rename(&FsPath::new("hello.txt")?, &FsPath::new("made/renamed.txt")?);
        let _ = fs.remove_file(&FsPath::new("empty")?);
        Ok(Arc::new(fs))
    });
    std::eprintln!("ext4: {} walked, {} refused; fat: {} walked, {} refused", e.0, e.1, f.0, f.1);
    assert_eq!(e.0 + e.1 + f.0 + f.1, 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_that_contains_itself_ends_in_an_error() {
    if !have("mkfs.fat") || !have("mcopy") {
        return;
    }
    let dir = scratch("loop");
    tree(&dir.join("src"));
    let (_, mut fat) = fat_image(&dir, &dir.join("src"), 4096, "16");
    // Make the FAT entry of the first data cluster point at itself: the
    // chain of whatever lives there loops.
    let reserved = u16::from_le_bytes([fat[14], fat[15]]) as usize;
    let fat_at = reserved * 512;
    for c in 2..40usize {
        fat[fat_at + 2 * c..fat_at + 2 * c + 2].copy_from_slice(&(c as u16).to_le_bytes());
    }
    let (vol, _) = volume(fat);
    let fs = FatFs::new(vol).unwrap();
    assert!(walk(&fs).is_err(), "a looping chain must end in an error");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Many long names in a directory of one-sector clusters: entries span
/// clusters, 8.3 names stay unique, and fsck.fat agrees.
#[test]
fn long_names_across_clusters() {
    if !have("mkfs.fat") || !have("mcopy") {
        return;
    }
    let dir = scratch("lfnx");
    tree(&dir.join("src"));
    let (_, bytes) = fat_image(&dir, &dir.join("src"), 40 * 1024, "32");
    let (vol, disk) = volume(bytes);
    let fs = FatFs::new(vol).unwrap();
    fs.create_dir(&FsPath::new("out").unwrap()).unwrap();
    let create = OpenFlags { write: true, create: true, ..Default::default() };
    for i in 0..12 {
        let name = format!(
            "out/a file name that is rather long, to need several long-name entries in a FAT directory {i}"
        );
        let mut h = fs.open(&FsPath::new(&name).unwrap(), create).unwrap_or_else(|e| panic!("{i}: {e}"));
        h.write_at(0, b"x").unwrap();
    }
    let names: Vec<String> =
        fs.read_dir(&FsPath::new("out").unwrap()).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    fs.sync().unwrap();
    let img = dir.join("after.img");
    std::fs::write(&img, &*disk.data.lock()).unwrap();
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(fsck.status.success(), "fsck.fat -n: {}", String::from_utf8_lossy(&fsck.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
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
