//! Open files: [`File`] and [`OpenOptions`], shaped like `std::fs`'s, with
//! `embedded-io`'s `Read`, `Write` and `Seek`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use embedded_io::{ErrorType, Read, Seek, SeekFrom, Write};

use crate::error::{Error, Result};
use crate::vfs::{FileHandle, Metadata, OpenFlags};

/// What `read_to_end` asks for at once when the length is not known.
const CHUNK: usize = 64 << 10;
/// The most it asks for at once.
const MAX_CHUNK: usize = 1 << 20;

/// An open file. Reads and writes go through at the file's position; the
/// file is closed when dropped.
pub struct File {
    handle: Box<dyn FileHandle>,
    pos: u64,
    read: bool,
    write: bool,
    append: bool,
}

impl core::fmt::Debug for File {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("File")
            .field("pos", &self.pos)
            .field("read", &self.read)
            .field("write", &self.write)
            .finish()
    }
}

/// How to open a file, as `std::fs::OpenOptions`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
}

impl OpenOptions {
    /// All options off.
    pub fn new() -> Self {
        Self::default()
    }
    /// Read from the file.
    pub fn read(&mut self, on: bool) -> &mut Self {
        self.read = on;
        self
    }
    /// Write to the file.
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.write = on;
        self
    }
    /// Every write goes to the end (implies writing).
    pub fn append(&mut self, on: bool) -> &mut Self {
        self.append = on;
        self
    }
    /// Cut the file to length 0 when it is opened.
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.truncate = on;
        self
    }
    /// Create the file if it does not exist.
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.create = on;
        self
    }
    /// Create the file; fail with `AlreadyExists` if it exists.
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.create_new = on;
        self
    }

    /// The flags a filesystem sees, after std's checks.
    fn flags(&self) -> Result<OpenFlags> {
        let write = self.write || self.append;
        if !self.read && !write {
            return Err(Error::InvalidInput("open for neither reading nor writing"));
        }
        if (self.create || self.create_new || self.truncate) && !write {
            return Err(Error::InvalidInput("create or truncate without write access"));
        }
        if self.truncate && self.append {
            return Err(Error::InvalidInput("truncate and append together"));
        }
        Ok(OpenFlags {
            read: self.read,
            write,
            create: self.create || self.create_new,
            create_new: self.create_new,
            truncate: self.truncate,
        })
    }

    /// Open the file at the absolute `path` with these options.
    pub fn open(&self, path: &str) -> Result<File> {
        let flags = self.flags()?;
        let (fs, p) = crate::lookup(path)?;
        let handle = fs.open(&p, flags)?;
        Ok(File { handle, pos: 0, read: self.read, write: flags.write, append: self.append })
    }
}

impl File {
    /// Open the file at `path` for reading.
    pub fn open(path: &str) -> Result<File> {
        OpenOptions::new().read(true).open(path)
    }

    /// Create the file at `path` (or cut it to length 0) for writing.
    pub fn create(path: &str) -> Result<File> {
        OpenOptions::new().write(true).create(true).truncate(true).open(path)
    }

    /// Create the file at `path` for writing; fail if it exists.
    pub fn create_new(path: &str) -> Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    /// A blank [`OpenOptions`].
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// What the file is now.
    pub fn metadata(&mut self) -> Result<Metadata> {
        let m = self.handle.metadata()?;
        Ok(Metadata { read_only: m.read_only || !self.write, ..m })
    }

    /// Cut or extend the file to `len` bytes.
    pub fn set_len(&mut self, len: u64) -> Result<()> {
        if !self.write {
            return Err(Error::InvalidInput("file not opened for writing"));
        }
        self.handle.set_len(len)
    }

    /// Make what was written durable.
    pub fn sync_all(&mut self) -> Result<()> {
        self.handle.sync()
    }

    /// Read everything from the position to the end, appended to `buf`;
    /// the bytes read.
    pub fn read_to_end(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        let start = buf.len();
        // Straight into `buf`, in pieces as large as what is left (one
        // more byte, so a source that stops short knows the end is
        // there), without a bounce buffer.
        let mut left = self.handle.size_hint().map(|len| len.saturating_sub(self.pos));
        loop {
            let piece = left.map_or(CHUNK, |l| (l as usize).saturating_add(1).clamp(512, MAX_CHUNK));
            let at = buf.len();
            buf.resize(at + piece, 0);
            let n = match self.read(&mut buf[at..]) {
                Ok(n) => n,
                Err(e) => {
                    buf.truncate(at);
                    return Err(e);
                }
            };
            buf.truncate(at + n);
            if n == 0 {
                return Ok(buf.len() - start);
            }
            // A file that grew past its hint is read in plain pieces.
            left = left.and_then(|l| l.checked_sub(n as u64));
        }
    }

    /// Read everything from the position to the end as UTF-8, appended to
    /// `s`; the bytes read.
    pub fn read_to_string(&mut self, s: &mut String) -> Result<usize> {
        let mut bytes = Vec::new();
        let n = self.read_to_end(&mut bytes)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::InvalidInput("the file is not UTF-8"))?;
        s.push_str(&text);
        Ok(n)
    }

    /// The whole contents in place, for files baked into the ELF (no copy;
    /// `None` elsewhere).
    pub fn as_static(&self) -> Option<&'static [u8]> {
        self.handle.as_static()
    }
}

impl ErrorType for File {
    type Error = Error;
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if !self.read {
            return Err(Error::InvalidInput("file not opened for reading"));
        }
        let n = self.handle.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for File {
    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        if !self.write {
            return Err(Error::InvalidInput("file not opened for writing"));
        }
        if self.append {
            self.pos = self.handle.size()?;
        }
        let n = self.handle.write_at(self.pos, buf)?;
        if n == 0 && !buf.is_empty() {
            // `write_all` takes 0 for a broken writer; say why instead.
            return Err(Error::NoSpace);
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Seek for File {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.handle.size()?.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or(Error::InvalidInput("seek before the start of the file"))?;
        Ok(self.pos)
    }
}
