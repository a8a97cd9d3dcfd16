//! Torito filesystem unit: one tree of files, shaped like `std::fs`, over
//! several sources mounted in it.
//!
//! ```ignore
//! use kernel::fs::{self, File};
//! use kernel::fs::io::{Read, Write};
//!
//! let page = fs::read_to_string("/index.html")?;        // baked into the ELF
//! let mut log = fs::OpenOptions::new().append(true).create(true).open("/disk0/log.txt")?;
//! log.write_all(b"served\n")?;
//! for entry in fs::read_dir("/")? {
//!     kernel::println!("{} {:?}", entry.file_name(), entry.file_type());
//! }
//! ```
//!
//! - Paths are absolute and `/`-separated; `.` and `..` resolve lexically
//!   and never above the root of a mount ([`path`]).
//! - Mounts, the longest prefix wins: `/` = the files baked into the ELF
//!   ([`cpio`]; empty when the app has none). [`mounts`] lists them.
//! - Every call blocks until done and may be made from any thread on any
//!   core; [`File`] implements `embedded-io`'s `Read`, `Write` and `Seek`.
//! - One error type, [`Error`].
//!
//! A source implements [`vfs::FileSystem`]; the kernel mounts what it
//! finds at start-up ([`init`]).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod cpio;
pub mod disk;
mod error;
mod file;
pub mod lock;
pub mod path;
pub mod vfs;
pub mod virtiofs;

/// The I/O traits [`File`] implements (`embedded-io`): `use kernel::fs::io::{Read, Write, Seek}`.
pub use embedded_io as io;
pub use error::{Error, Result};
pub use file::{File, OpenOptions};
pub use vfs::{FileType, Metadata, Mount, Space};

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use lock::RwLock;
use path::FsPath;
use vfs::FileSystem;

/// The mount table.
static MOUNTS: RwLock<Vec<Mount>> = RwLock::new(Vec::new());

/// What [`init`] set up and what it could not.
#[derive(Default)]
pub struct Report {
    /// A line per mount.
    pub mounted: Vec<String>,
    /// What could not be mounted, and why.
    pub problems: Vec<String>,
    /// The disks with nothing mounted, for the devices unit to keep.
    pub raw: Vec<alloc::boxed::Box<dyn unit_devices::BlockDevice + Send>>,
}

/// What the kernel hands the unit at start-up.
pub struct Sources {
    /// The app's baked-in files (a cpio newc archive; empty for none).
    pub files: &'static [u8],
    /// The block devices the devices unit found, in order (disk N is
    /// `disks[N]`); those with no recognised filesystem are returned in
    /// [`Report::raw`].
    pub disks: Vec<alloc::boxed::Box<dyn unit_devices::BlockDevice + Send>>,
    /// What a thread waiting for a lock does (the process unit's
    /// `yield_now`, where there is one).
    pub relax: Option<fn()>,
    /// The wall clock, seconds since the epoch (for the times FAT stamps).
    pub clock: Option<fn() -> Option<u64>>,
    /// A monotonic clock, nanoseconds (how long a share's answers hold).
    pub monotonic: Option<fn() -> Option<u64>>,
    /// Shared host directories (virtio-fs), mounted at `/<tag>`.
    pub shares: Vec<alloc::boxed::Box<dyn virtiofs::Channel>>,
}

/// Mount the app's baked-in files at `/` and each disk's filesystem at
/// `/disk<N>`.
pub fn init(sources: Sources) -> Report {
    let Sources { files, disks, relax, clock, monotonic, shares } = sources;
    if let Some(f) = relax {
        lock::set_relax(f);
    }
    if let Some(f) = clock {
        disk::fat::set_clock(f);
    }
    let mut report = Report::default();
    match cpio::Archive::parse(files) {
        Ok(a) => {
            let (n, bytes) = a.totals();
            let source = alloc::format!("baked into the ELF, {n} files, {bytes} bytes");
            let _ = mount("/", &source, Arc::new(a));
        }
        Err(e) => {
            report.problems.push(alloc::format!("the baked-in files: {e}"));
            if let Ok(empty) = cpio::Archive::parse(&[]) {
                let _ = mount("/", "empty (the baked-in files are unusable)", Arc::new(empty));
            }
        }
    }
    for ch in shares {
        let tag = ch.tag();
        let point = alloc::format!("/{tag}");
        match virtiofs::VirtioFs::new(ch, false, monotonic) {
            Ok(fs) => {
                if let Err(e) = mount(&point, &alloc::format!("virtio-fs tag {tag}"), Arc::new(fs)) {
                    report.problems.push(alloc::format!("{point}: virtio-fs not mounted: {e}"));
                }
            }
            Err(e) => report.problems.push(alloc::format!("{point}: virtio-fs: {e}")),
        }
    }
    let (raw, lines) = disk::mount_all(disks);
    report.raw = raw;
    report.problems.extend(lines);
    report.mounted.extend(mounts().iter().map(Mount::describe));
    report
}

/// Mount `fs` at the absolute `point` (`/` or `/name`…), described by
/// `source` in reports. A point already mounted is `AlreadyExists`.
pub fn mount(point: &str, source: &str, fs: Arc<dyn FileSystem>) -> Result<()> {
    let components = path::mount_components(point)?;
    let mut table = MOUNTS.write();
    if table.iter().any(|m| m.components == components) {
        return Err(Error::AlreadyExists);
    }
    let point =
        if components.is_empty() { String::from("/") } else { alloc::format!("/{}", components.join("/")) };
    table.push(Mount { point, source: String::from(source), fs, components });
    Ok(())
}

/// Every mount, in the order they were made.
pub fn mounts() -> Vec<Mount> {
    MOUNTS.read().clone()
}

/// The filesystem holding `path`, and the path inside it. The table's lock
/// is not held while the filesystem works.
pub(crate) fn lookup(path: &str) -> Result<(Arc<dyn FileSystem>, FsPath)> {
    let table = MOUNTS.read();
    let points: Vec<Vec<String>> = table.iter().map(|m| m.components.clone()).collect();
    let (i, p) = path::resolve(path, &points)?;
    Ok((table[i].fs.clone(), p))
}

/// The mount points directly inside the directory `path` (which lies in
/// another mount), as directory entries.
fn mount_points_in(path: &str) -> Vec<String> {
    let Ok(dir) = path::mount_components(&normalised(path)) else { return Vec::new() };
    MOUNTS
        .read()
        .iter()
        .filter(|m| m.components.len() == dir.len() + 1 && m.components.starts_with(&dir))
        .filter_map(|m| m.components.last().cloned())
        .collect()
}

/// `path` with `.` and `..` resolved, as an absolute path.
fn normalised(path: &str) -> String {
    let table = MOUNTS.read();
    let points: Vec<Vec<String>> = table.iter().map(|m| m.components.clone()).collect();
    match path::resolve(path, &points) {
        Ok((i, p)) => {
            let mut parts = table[i].components.clone();
            parts.extend(p.components().map(String::from));
            alloc::format!("/{}", parts.join("/"))
        }
        Err(_) => String::from(path),
    }
}

/// What is at `path`.
pub fn metadata(path: &str) -> Result<Metadata> {
    let (fs, p) = lookup(path)?;
    fs.metadata(&p)
}

/// How much room the filesystem holding `path` has (`statvfs`; shares and
/// the baked-in files say, disks not yet: `Unsupported`).
pub fn space(path: &str) -> Result<Space> {
    let (fs, _) = lookup(path)?;
    fs.space()
}

/// Whether something is at `path` (errors other than "not found" count as
/// "exists": the path cannot be used, but it is there).
pub fn exists(path: &str) -> bool {
    !matches!(metadata(path), Err(Error::NotFound | Error::NotADirectory | Error::InvalidPath))
}

/// One entry of [`read_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    path: String,
    name: String,
    file_type: FileType,
}

impl DirEntry {
    /// The entry's name.
    pub fn file_name(&self) -> &str {
        &self.name
    }
    /// Its full path.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// Its kind.
    pub fn file_type(&self) -> FileType {
        self.file_type
    }
    /// What it is (asks the filesystem).
    pub fn metadata(&self) -> Result<Metadata> {
        metadata(&self.path)
    }
}

/// The entries of the directory at `path`, in the order the source gives
/// them (mount points inside it included).
pub fn read_dir(path: &str) -> Result<ReadDir> {
    let (fs, p) = lookup(path)?;
    let mut entries = fs.read_dir(&p)?;
    for m in mount_points_in(path) {
        if !entries.iter().any(|e| e.name == m) {
            entries.push(vfs::Entry { name: m, file_type: FileType::Dir });
        }
    }
    let base = normalised(path);
    let base = base.trim_end_matches('/');
    Ok(ReadDir {
        entries: entries
            .into_iter()
            .map(|e| DirEntry {
                path: alloc::format!("{base}/{}", e.name),
                name: e.name,
                file_type: e.file_type,
            })
            .collect::<Vec<_>>()
            .into_iter(),
    })
}

/// The iterator of [`read_dir`].
#[derive(Debug)]
pub struct ReadDir {
    entries: alloc::vec::IntoIter<DirEntry>,
}

impl Iterator for ReadDir {
    type Item = DirEntry;
    fn next(&mut self) -> Option<DirEntry> {
        self.entries.next()
    }
}

/// The whole file at `path`.
pub fn read(path: &str) -> Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// The whole file at `path`, as UTF-8.
pub fn read_to_string(path: &str) -> Result<String> {
    let mut f = File::open(path)?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Make `path` hold exactly `data` (created if missing).
pub fn write(path: &str, data: &[u8]) -> Result<()> {
    use embedded_io::Write;
    let mut f = File::create(path)?;
    f.write_all(data)
}

/// Make the directory `path` (its parent must exist).
pub fn create_dir(path: &str) -> Result<()> {
    let (fs, p) = lookup(path)?;
    if p.is_root() {
        return Err(Error::AlreadyExists);
    }
    fs.create_dir(&p)
}

/// Make the directory `path` and any missing parents.
pub fn create_dir_all(path: &str) -> Result<()> {
    let (fs, p) = lookup(path)?;
    let mut at = FsPath::root();
    for c in p.components() {
        at = at.join(c);
        match fs.create_dir(&at) {
            Ok(()) => {}
            Err(Error::AlreadyExists) if fs.metadata(&at)?.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Remove the file at `path`.
pub fn remove_file(path: &str) -> Result<()> {
    let (fs, p) = lookup(path)?;
    fs.remove_file(&p)
}

/// Remove the empty directory at `path` (not a mount point).
pub fn remove_dir(path: &str) -> Result<()> {
    let (fs, p) = lookup(path)?;
    if p.is_root() {
        return Err(Error::PermissionDenied);
    }
    fs.remove_dir(&p)
}

/// Rename `from` to `to`, replacing a file at `to`; both must be in the
/// same mount.
pub fn rename(from: &str, to: &str) -> Result<()> {
    let (a, pa) = lookup(from)?;
    let (b, pb) = lookup(to)?;
    if !Arc::ptr_eq(&a, &b) {
        return Err(Error::Unsupported("rename across filesystems"));
    }
    if pa.is_root() || pb.is_root() {
        return Err(Error::PermissionDenied);
    }
    if pb.starts_with(&pa) && pb != pa {
        return Err(Error::InvalidInput("rename a directory into itself"));
    }
    a.rename(&pa, &pb)
}

/// Make every change to every mounted filesystem durable.
pub fn sync_all() -> Result<()> {
    let table = mounts();
    let mut first = Ok(());
    for m in &table {
        if let Err(e) = m.fs.sync() {
            first = first.and(Err(e));
        }
    }
    first
}

#[cfg(test)]
mod tests {
    //! Host tests: the facade over an in-memory filesystem, and the disk
    //! filesystems over images the host's own tools make.
    mod disks;
    mod facade;
    pub mod memfs;

    /// Tests that use the one mount table run one at a time, each with a
    /// fresh table.
    pub fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        crate::MOUNTS.write().clear();
        g
    }
}
