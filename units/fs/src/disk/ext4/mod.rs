//! ext2/3/4, read-only: paths, listings and file data through [`map`] (read
//! here, fast) wherever it applies, `ext4-view` (pure Rust, no `unsafe`,
//! journal aware) for the rest and to check the filesystem when mounted.
//!
//! `ext4_view::Ext4` shares its state through `Rc`, so it cannot live in a
//! filesystem that any thread of any core may call, and this unit forbids
//! `unsafe` (no `Send` by assertion). So each operation loads it anew from
//! the volume: the superblock, the group descriptors and the journal's
//! head, all served by the disk's extent cache after the first time. Open
//! files read ahead [`WINDOW`] bytes per load, so a sequential read pays
//! for a load once per window; that is the fallback path.

pub mod map;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use super::Volume;
use crate::error::{Error, Result};
use crate::path::FsPath;
use crate::vfs::{Entry, FileHandle, FileSystem, FileType, Metadata, OpenFlags};

/// Bytes an open file reads ahead.
pub const WINDOW: usize = 256 * 1024;

impl Ext4Read for Volume {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> core::result::Result<(), Box<dyn core::error::Error + Send + Sync>> {
        self.read_at(start_byte, dst).map_err(|e| Box::new(e) as Box<dyn core::error::Error + Send + Sync>)
    }
}

/// What an ext4-view error means here.
fn err(e: Ext4Error) -> Error {
    match e {
        Ext4Error::NotFound => Error::NotFound,
        Ext4Error::IsADirectory => Error::IsADirectory,
        Ext4Error::NotADirectory => Error::NotADirectory,
        Ext4Error::IsASpecialFile => Error::Unsupported("a special file (device, FIFO, socket)"),
        Ext4Error::FileTooLarge => Error::Unsupported("a file too large for memory"),
        Ext4Error::NotUtf8 => Error::InvalidInput("not UTF-8"),
        Ext4Error::NotAbsolute | Ext4Error::MalformedPath => Error::InvalidPath,
        Ext4Error::PathTooLong => Error::NameTooLong,
        Ext4Error::TooManySymlinks => Error::Unsupported("too many levels of symbolic links"),
        Ext4Error::Encrypted => Error::Unsupported("an encrypted file"),
        Ext4Error::NotASymlink => Error::InvalidInput("not a symbolic link"),
        Ext4Error::Io(e) => Error::Io(format!("{e}")),
        Ext4Error::Incompatible(i) => Error::Corrupt(format!("ext4 features this reader lacks: {i}")),
        Ext4Error::Corrupt(c) => Error::Corrupt(format!("{c}")),
        _ => Error::Io(format!("{e}")),
    }
}

fn abs(p: &FsPath) -> String {
    format!("/{}", p.as_str())
}

fn file_type(t: ext4_view::FileType) -> FileType {
    match t {
        ext4_view::FileType::Regular => FileType::File,
        ext4_view::FileType::Directory => FileType::Dir,
        ext4_view::FileType::Symlink => FileType::Symlink,
        _ => FileType::Other,
    }
}

fn metadata(m: &ext4_view::Metadata) -> Metadata {
    let secs = m.modified().seconds();
    Metadata {
        file_type: file_type(m.file_type()),
        len: m.len(),
        modified: u64::try_from(secs).ok(),
        read_only: true,
    }
}

/// An ext4 filesystem on a volume.
#[derive(Clone)]
pub struct Ext4Fs {
    vol: Volume,
    /// Where [`map`] reads it (`None`: `ext4-view` does everything).
    layout: Option<map::Layout>,
}

impl Ext4Fs {
    /// The filesystem on `vol` (checked by loading it once).
    pub fn new(vol: Volume) -> Result<Self> {
        let mut fs = Self { vol, layout: None };
        fs.load()?;
        fs.layout = map::Layout::read(&fs.vol).ok().flatten();
        Ok(fs)
    }

    /// Whether the fast path reads it (for tests and reports).
    pub fn mapped(&self) -> bool {
        self.layout.is_some()
    }

    /// Leave everything to `ext4-view` (tests compare the two paths).
    pub fn without_map(mut self) -> Self {
        self.layout = None;
        self
    }

    /// What `path` leads to through [`map`], if it applies.
    fn find(&self, path: &FsPath) -> Result<Option<(map::Layout, map::Inode)>> {
        let Some(l) = self.layout else { return Ok(None) };
        Ok(match l.resolve(&self.vol, path)? {
            map::Found::Inode(i) => Some((l, i)),
            map::Found::Elsewhere => None,
        })
    }

    fn load(&self) -> Result<Ext4> {
        Ext4::load(Box::new(self.vol.clone())).map_err(err)
    }
}

struct Handle {
    fs: Ext4Fs,
    path: String,
    meta: Metadata,
    /// Bytes `at..at + window.len()` of the file.
    at: u64,
    window: Vec<u8>,
}

impl FileHandle for Handle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.meta.len || buf.is_empty() {
            return Ok(0);
        }
        let in_window = offset >= self.at && offset < self.at + self.window.len() as u64;
        if !in_window {
            let ext4 = self.fs.load()?;
            let mut f = ext4.open(self.path.as_str()).map_err(err)?;
            f.seek_to(offset).map_err(err)?;
            let want = (self.meta.len - offset).min(WINDOW as u64) as usize;
            self.window.resize(want, 0);
            let mut got = 0;
            while got < want {
                let n = f.read_bytes(&mut self.window[got..]).map_err(err)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            self.window.truncate(got);
            self.at = offset;
        }
        let start = (offset - self.at) as usize;
        let n = buf.len().min(self.window.len() - start);
        buf[..n].copy_from_slice(&self.window[start..start + n]);
        Ok(n)
    }

    fn metadata(&mut self) -> Result<Metadata> {
        Ok(self.meta)
    }
}

/// An open file read through [`map`].
struct Mapped {
    vol: Volume,
    data: map::FileData,
    meta: Metadata,
}

impl FileHandle for Mapped {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.data.read_at(&self.vol, offset, buf)
    }

    fn metadata(&mut self) -> Result<Metadata> {
        Ok(self.meta)
    }
}

impl FileSystem for Ext4Fs {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn read_only(&self) -> bool {
        true
    }

    fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        if let Some((_, i)) = self.find(path)? {
            return Ok(i.metadata());
        }
        let ext4 = self.load()?;
        Ok(metadata(&ext4.metadata(abs(path).as_str()).map_err(err)?))
    }

    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>> {
        match self.find(path) {
            Ok(Some((l, i))) => {
                let meta = i.metadata();
                if flags.create_new {
                    return Err(Error::AlreadyExists);
                }
                match meta.file_type {
                    FileType::Dir => return Err(Error::IsADirectory),
                    FileType::File => {}
                    _ => return Err(Error::Unsupported("not a regular file")),
                }
                if flags.changes() {
                    return Err(Error::ReadOnly);
                }
                let data = l.file(&self.vol, &i)?;
                return Ok(Box::new(Mapped { vol: self.vol.clone(), data, meta }));
            }
            Err(Error::NotFound) if flags.create => return Err(Error::ReadOnly),
            Err(e) => return Err(e),
            Ok(None) => {}
        }
        let ext4 = self.load()?;
        let p = abs(path);
        let m = match ext4.metadata(p.as_str()) {
            Ok(m) => metadata(&m),
            Err(Ext4Error::NotFound) if flags.create => return Err(Error::ReadOnly),
            Err(e) => return Err(err(e)),
        };
        if flags.create_new {
            return Err(Error::AlreadyExists);
        }
        match m.file_type {
            FileType::Dir => return Err(Error::IsADirectory),
            FileType::File => {}
            _ => return Err(Error::Unsupported("not a regular file")),
        }
        if flags.changes() {
            return Err(Error::ReadOnly);
        }
        Ok(Box::new(Handle { fs: self.clone(), path: p, meta: m, at: 0, window: vec![] }))
    }

    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>> {
        if let Some((l, i)) = self.find(path)? {
            if i.metadata().file_type != FileType::Dir {
                return Err(Error::NotADirectory);
            }
            if let Some(entries) = l.list(&self.vol, &i)? {
                return Ok(entries);
            }
        }
        let ext4 = self.load()?;
        let mut out = Vec::new();
        for e in ext4.read_dir(abs(path).as_str()).map_err(err)? {
            let e = e.map_err(err)?;
            let name = e.file_name();
            let Ok(name) = name.as_str() else { continue };
            if name == "." || name == ".." {
                continue;
            }
            out.push(Entry { name: String::from(name), file_type: file_type(e.file_type().map_err(err)?) });
        }
        Ok(out)
    }
}
