//! The files baked into the ELF: a cpio *newc* archive (made by
//! `torito_linker::files` at build time) served in place, read-only.
//! Reading a file copies from the ELF's read-only data; [`FileHandle::as_static`]
//! gives the bytes themselves.
//!
//! The archive is indexed by reading its headers only, so a file's pages
//! are touched when it is read, not at start-up (the Torito monitor maps a
//! large archive from the ELF file lazily). The headers are parsed here:
//! `cpio_reader` 0.1 adds up every byte of every file while it indexes
//! (a checksum newc archives do not even carry), which touched all of a
//! 4 MiB archive at boot (+3.4 ms here); the format is 13 hex fields.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::path::FsPath;
use crate::vfs::{Entry, FileHandle, FileSystem, FileType, Metadata, OpenFlags, Space};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// A newc header: the magic, then 13 fields of 8 hex digits.
const HEADER: usize = 110;

/// One entry of a newc archive.
struct NewcEntry {
    name: &'static str,
    mode: u32,
    mtime: u64,
    data: &'static [u8],
}

/// The entry at the start of `rest` (a suffix of `all`, whose start the
/// 4-byte padding counts from) and what follows it.
fn newc_entry(all: &'static [u8], rest: &'static [u8]) -> Result<(NewcEntry, &'static [u8])> {
    let bad = |what: &str| Error::Corrupt(format!("baked-in archive: {what}"));
    let h = rest.get(..HEADER).ok_or_else(|| bad("a header cut short"))?;
    if &h[..6] != b"070701" && &h[..6] != b"070702" {
        return Err(bad("not a newc header"));
    }
    let field = |i: usize| -> Result<u32> {
        let digits = core::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).map_err(|_| bad("a header field"))?;
        u32::from_str_radix(digits, 16).map_err(|_| bad("a header field"))
    };
    let (mode, mtime, size, namesize) = (field(1)?, field(5)?, field(6)? as usize, field(11)? as usize);
    // Offsets from the archive's start, where newc's padding counts from.
    let at = all.len() - rest.len();
    let name_end = at.checked_add(HEADER + namesize).ok_or_else(|| bad("a name size"))?;
    let name = all.get(at + HEADER..name_end).ok_or_else(|| bad("a name cut short"))?;
    let name = name.strip_suffix(&[0]).ok_or_else(|| bad("a name without its NUL"))?;
    let name = core::str::from_utf8(name).map_err(|_| bad("a name that is not UTF-8"))?;
    let data_start = name_end.next_multiple_of(4);
    let data_end = data_start.checked_add(size).ok_or_else(|| bad("a file size"))?;
    let data = all.get(data_start..data_end).ok_or_else(|| bad("a file cut short"))?;
    let next = all.get(data_end.next_multiple_of(4).min(all.len())..).unwrap_or(&[]);
    Ok((NewcEntry { name, mode, mtime: u64::from(mtime), data }, next))
}

/// One node of the archive.
#[derive(Clone, Copy, Debug)]
struct Node {
    file_type: FileType,
    data: &'static [u8],
    mtime: Option<u64>,
}

/// The archive as a filesystem.
pub struct Archive {
    nodes: BTreeMap<FsPath, Node>,
    files: u64,
    bytes: u64,
}

impl Archive {
    /// Index `bytes` (an empty slice is an empty filesystem). A name that
    /// is not a clean relative path, or a node under a file, is `Corrupt`.
    pub fn parse(bytes: &'static [u8]) -> Result<Self> {
        let mut a = Self { nodes: BTreeMap::new(), files: 0, bytes: 0 };
        a.nodes.insert(FsPath::root(), Node { file_type: FileType::Dir, data: &[], mtime: None });
        let mut rest = bytes;
        while !rest.is_empty() {
            // Garbage ends the index where it starts; what came before
            // stays.
            let Ok((e, next)) = newc_entry(bytes, rest) else { break };
            rest = next;
            if e.name == TRAILER {
                break;
            }
            let name = e.name.trim_start_matches("./").trim_start_matches('/');
            if name.is_empty() || name == "." {
                continue;
            }
            let path =
                FsPath::new(name).map_err(|_| Error::Corrupt(format!("archive entry name '{name}'")))?;
            let file_type = match e.mode & S_IFMT {
                S_IFLNK => FileType::Symlink,
                S_IFDIR => FileType::Dir,
                S_IFREG => FileType::File,
                _ => FileType::Other,
            };
            if file_type == FileType::File {
                a.files += 1;
                a.bytes += e.data.len() as u64;
            }
            a.add_parents(&path)?;
            a.nodes.insert(path, Node { file_type, data: e.data, mtime: Some(e.mtime) });
        }
        Ok(a)
    }

    /// Directories above `path` that the archive did not list.
    fn add_parents(&mut self, path: &FsPath) -> Result<()> {
        let mut dir = path.split_last().map(|(d, _)| d);
        while let Some(d) = dir {
            match self.nodes.get(&d) {
                Some(n) if n.file_type == FileType::Dir => break,
                Some(_) => return Err(Error::Corrupt(format!("archive entry {path} lies under a file"))),
                None => {
                    self.nodes.insert(d.clone(), Node { file_type: FileType::Dir, data: &[], mtime: None });
                }
            }
            dir = d.split_last().map(|(d, _)| d);
        }
        Ok(())
    }

    /// Regular files and their bytes.
    pub fn totals(&self) -> (u64, u64) {
        (self.files, self.bytes)
    }

    fn node(&self, path: &FsPath) -> Result<&Node> {
        match self.nodes.get(path) {
            Some(n) => Ok(n),
            // A missing node under a file is "not a directory", as POSIX has it.
            None => {
                let mut dir = path.split_last().map(|(d, _)| d);
                while let Some(d) = dir {
                    if let Some(n) = self.nodes.get(&d) {
                        return Err(if n.file_type == FileType::Dir {
                            Error::NotFound
                        } else {
                            Error::NotADirectory
                        });
                    }
                    dir = d.split_last().map(|(d, _)| d);
                }
                Err(Error::NotFound)
            }
        }
    }
}

struct Handle {
    data: &'static [u8],
    mtime: Option<u64>,
}

impl FileHandle for Handle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.data.len());
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        Ok(n)
    }

    fn metadata(&mut self) -> Result<Metadata> {
        Ok(Metadata {
            file_type: FileType::File,
            len: self.data.len() as u64,
            modified: self.mtime,
            read_only: true,
        })
    }

    fn as_static(&self) -> Option<&'static [u8]> {
        Some(self.data)
    }
}

impl FileSystem for Archive {
    fn kind(&self) -> &'static str {
        "baked-in"
    }

    fn read_only(&self) -> bool {
        true
    }

    fn space(&self) -> Result<Space> {
        Ok(Space { total: self.bytes, free: 0, available: 0 })
    }

    fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        let n = self.node(path)?;
        Ok(Metadata { file_type: n.file_type, len: n.data.len() as u64, modified: n.mtime, read_only: true })
    }

    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>> {
        let n = match self.node(path) {
            Err(Error::NotFound) if flags.create || flags.create_new => return Err(Error::ReadOnly),
            r => r?,
        };
        if flags.create_new {
            return Err(Error::AlreadyExists);
        }
        match n.file_type {
            FileType::File if flags.changes() => Err(Error::ReadOnly),
            FileType::File => Ok(Box::new(Handle { data: n.data, mtime: n.mtime })),
            FileType::Dir => Err(Error::IsADirectory),
            FileType::Symlink => Err(Error::Unsupported("symbolic links are not followed")),
            FileType::Other => Err(Error::Unsupported("not a regular file")),
        }
    }

    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>> {
        if self.node(path)?.file_type != FileType::Dir {
            return Err(Error::NotADirectory);
        }
        // The children: nodes whose directory is `path`, in name order. (A
        // range scan would skip siblings such as `a-b`, which sort between
        // `a` and `a/…`; archives are small enough for a full pass.)
        Ok(self
            .nodes
            .iter()
            .filter_map(|(p, n)| {
                let (dir, name) = p.split_last()?;
                (dir == *path).then(|| Entry { name: name.into(), file_type: n.file_type })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    /// A newc archive made the way the linker helper makes them.
    fn archive(entries: &[(&str, u32, &[u8])]) -> &'static [u8] {
        let mut out = Vec::new();
        for (name, mode, data) in entries {
            let hdr = format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1,
                mode,
                0,
                0,
                1,
                1_700_000_000u32,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            out.extend_from_slice(hdr.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        Box::leak(out.into_boxed_slice())
    }

    const FILE: u32 = 0o100644;
    const DIR: u32 = 0o040755;

    fn sample() -> Archive {
        let a = archive(&[
            ("index.html", FILE, b"<h1>hi</h1>"),
            ("css", DIR, b""),
            ("css/site.css", FILE, b"body{}"),
            ("img/deep/logo.png", FILE, &[1, 2, 3]),
            ("TRAILER!!!", 0, b""),
        ]);
        Archive::parse(a).unwrap()
    }

    fn p(s: &str) -> FsPath {
        FsPath::new(s).unwrap()
    }

    #[test]
    fn files_and_implied_directories() {
        let a = sample();
        assert_eq!(a.totals(), (3, 11 + 6 + 3));
        let mut h = a.open(&p("css/site.css"), OpenFlags { read: true, ..Default::default() }).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(h.read_at(0, &mut buf).unwrap(), 6);
        assert_eq!(&buf[..6], b"body{}");
        assert_eq!(h.read_at(4, &mut buf).unwrap(), 2);
        assert_eq!(h.read_at(100, &mut buf).unwrap(), 0);
        assert_eq!(h.as_static(), Some(&b"body{}"[..]));
        assert!(a.metadata(&p("img/deep")).unwrap().is_dir(), "implied by its file");
        assert_eq!(a.metadata(&p("index.html")).unwrap().modified, Some(1_700_000_000));
        let names =
            |d: &str| -> Vec<String> { a.read_dir(&p(d)).unwrap().into_iter().map(|e| e.name).collect() };
        assert_eq!(names(""), ["css", "img", "index.html"]);
        assert_eq!(names("img"), ["deep"]);
        assert_eq!(names("img/deep"), ["logo.png"]);
        let b =
            Archive::parse(archive(&[("a/x", FILE, b""), ("a-b", FILE, b""), ("a/y", FILE, b"")])).unwrap();
        let names: Vec<String> = b.read_dir(&p("a")).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["x", "y"], "siblings that sort between a and a/ do not hide its children");
    }

    #[test]
    fn errors_are_posix_like() {
        let a = sample();
        let rd = OpenFlags { read: true, ..Default::default() };
        assert_eq!(a.metadata(&p("nope")).unwrap_err(), Error::NotFound);
        assert_eq!(a.metadata(&p("index.html/x")).unwrap_err(), Error::NotADirectory);
        assert_eq!(a.open(&p("css"), rd).err(), Some(Error::IsADirectory));
        assert_eq!(a.read_dir(&p("index.html")).unwrap_err(), Error::NotADirectory);
        let w = OpenFlags { write: true, ..Default::default() };
        assert_eq!(a.open(&p("index.html"), w).err(), Some(Error::ReadOnly));
        let c = OpenFlags { write: true, create: true, ..Default::default() };
        assert_eq!(a.open(&p("new.txt"), c).err(), Some(Error::ReadOnly));
        assert_eq!(a.create_dir(&p("d")), Err(Error::ReadOnly));
    }

    #[test]
    fn empty_and_bad_archives() {
        let a = Archive::parse(&[]).unwrap();
        assert!(a.read_dir(&FsPath::root()).unwrap().is_empty());
        assert_eq!(
            Archive::parse(archive(&[("../etc/passwd", FILE, b"x")])).err(),
            Some(Error::Corrupt("archive entry name '../etc/passwd'".into()))
        );
        assert!(matches!(
            Archive::parse(archive(&[("f", FILE, b"x"), ("f/g", FILE, b"y")])),
            Err(Error::Corrupt(_))
        ));
        // Garbage stops the index where it starts; what came before stays.
        let mut bytes = archive(&[("a", FILE, b"1")]).to_vec();
        bytes.extend_from_slice(b"garbage garbage garbage");
        let a = Archive::parse(Box::leak(bytes.into_boxed_slice())).unwrap();
        assert_eq!(a.totals(), (1, 1));
    }
}
