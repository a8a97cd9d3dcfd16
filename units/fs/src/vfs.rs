//! What a source of files implements ([`FileSystem`], [`FileHandle`]),
//! and the mount table that puts them in one tree.
//!
//! A filesystem is called with paths inside it ([`FsPath`]), already
//! resolved; it keeps its own lock (every method takes `&self` and may be
//! called from any thread on any core). Methods that change the tree
//! default to [`Error::ReadOnly`].

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::path::FsPath;

/// A file's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (reported, never followed).
    Symlink,
    /// Anything else (device node, FIFO, socket).
    Other,
}

/// What `metadata` tells of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Its kind.
    pub file_type: FileType,
    /// Its length in bytes (0 for directories where the source says so).
    pub len: u64,
    /// Last modification, seconds since the Unix epoch, where the source
    /// keeps it.
    pub modified: Option<u64>,
    /// Whether it can be changed through this mount.
    pub read_only: bool,
}

impl Metadata {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type == FileType::File
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One entry of a directory, as a filesystem lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name (one component).
    pub name: String,
    /// Its kind.
    pub file_type: FileType,
}

/// How a file is opened (checked by the facade before a filesystem sees it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Read from it.
    pub read: bool,
    /// Write to it.
    pub write: bool,
    /// Create it if it does not exist.
    pub create: bool,
    /// Create it; fail if it exists.
    pub create_new: bool,
    /// Cut it to length 0.
    pub truncate: bool,
}

impl OpenFlags {
    /// Whether the open may change the file or the tree.
    pub fn changes(&self) -> bool {
        self.write || self.create || self.create_new || self.truncate
    }
}

/// An open file of a filesystem. Positions are the caller's: each call
/// names its offset.
pub trait FileHandle: Send {
    /// Read at `offset` into `buf`; the bytes read (0 at the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Write `buf` at `offset`; the bytes written (never 0 for a buffer
    /// that is not empty: a full filesystem is [`Error::NoSpace`]).
    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> Result<usize> {
        Err(Error::ReadOnly)
    }
    /// What the file is now.
    fn metadata(&mut self) -> Result<Metadata>;
    /// Its length now, in bytes.
    fn size(&mut self) -> Result<u64> {
        Ok(self.metadata()?.len)
    }
    /// Its length as far as known without asking the source again (the
    /// length when it was opened, for a share), to size buffers; `None`:
    /// not known.
    fn size_hint(&mut self) -> Option<u64> {
        self.size().ok()
    }
    /// Cut or extend it to `len` bytes.
    fn set_len(&mut self, _len: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// Make what was written durable.
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    /// Its whole contents in place, where the source keeps them in memory
    /// (files baked into the ELF): no copy needed.
    fn as_static(&self) -> Option<&'static [u8]> {
        None
    }
}

/// A source of files: the archive baked into the ELF, a virtio-fs share, a
/// filesystem on a disk.
pub trait FileSystem: Send + Sync {
    /// What it is, for reports (`baked-in`, `virtio-fs`, `ext4`, `fat`).
    fn kind(&self) -> &'static str;
    /// Whether every change is refused.
    fn read_only(&self) -> bool;
    /// What is at `path`.
    fn metadata(&self, path: &FsPath) -> Result<Metadata>;
    /// Open (or create) the file at `path`.
    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>>;
    /// The entries of the directory at `path` (without `.` and `..`).
    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>>;
    /// Make a directory at `path` (its parent exists).
    fn create_dir(&self, _path: &FsPath) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// Remove the file at `path`.
    fn remove_file(&self, _path: &FsPath) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// Remove the empty directory at `path`.
    fn remove_dir(&self, _path: &FsPath) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// Rename `from` to `to` (both in this filesystem), replacing a file
    /// at `to`.
    fn rename(&self, _from: &FsPath, _to: &FsPath) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// Make every change durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// How much room it has.
    fn space(&self) -> Result<Space> {
        Err(Error::Unsupported("this filesystem does not say how much room it has"))
    }
}

/// How much room a filesystem has, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Its whole size.
    pub total: u64,
    /// What is not used.
    pub free: u64,
    /// What an app may still fill (free, less what the source keeps back).
    pub available: u64,
}

/// One mounted filesystem.
#[derive(Clone)]
pub struct Mount {
    /// Where it is mounted (`/`, `/disk0`, `/<tag>`).
    pub point: String,
    /// Where its files come from, for reports (`baked into the ELF`,
    /// `disk 0 partition 1`, `virtio-fs tag www`).
    pub source: String,
    /// The filesystem.
    pub fs: Arc<dyn FileSystem>,
    pub(crate) components: Vec<String>,
}

impl core::fmt::Debug for Mount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mount").field("point", &self.point).field("source", &self.source).finish()
    }
}

impl Mount {
    /// A line for reports: `/disk0: ext4 (read-only), disk 0`.
    pub fn describe(&self) -> String {
        alloc::format!(
            "{}: {}{}, {}",
            self.point,
            self.fs.kind(),
            if self.fs.read_only() { " (read-only)" } else { "" },
            self.source
        )
    }
}
