//! Host directories shared with virtio-fs, mounted at `/<tag>`: a FUSE
//! client (protocol 7.31, the ABI from `fuse-abi`) over the devices unit's
//! virtio-fs queues.
//!
//! Paths are looked up one component at a time (QEMU's `virtiofsd`
//! refuses `a/b` in a LOOKUP). What a LOOKUP says is kept for as long as
//! the host allows (its `entry_valid` and `attr_valid`, to the nanosecond by a
//! monotonic clock;
//! [`CACHE_MAX`] entries, keyed by parent node and name, as Linux's dentry
//! cache), so a path walked again costs nothing; a node nobody holds any
//! more is forgotten (`BATCH_FORGET`) with the next request. Requests whose
//! reply nobody waits for (RELEASE, FLUSH, FORGET) are posted: they reach
//! the host with the next request, at no exit of their own. So a small
//! file costs three requests: LOOKUP, OPEN, READ (a short READ is the end
//! of the file, as in Linux's FUSE client). Reads go straight into the
//! caller's buffer; transfers are split to the host's `max_write`. Reply
//! buffers are always as large as the largest reply a request can get
//! (`virtiofsd` aborts otherwise).

mod conn;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;

use fuse_abi::linux as abi;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, Result};
use crate::lock::Mutex;
use crate::path::FsPath;
use crate::vfs::{Entry, FileHandle, FileSystem, FileType, Metadata, OpenFlags, Space};
use conn::{Cache, Conn, Node, NodeRef, cname, file_type, meta};

/// What carries FUSE requests to the host.
pub trait Channel: Send {
    /// Send `inputs`, receive into `outputs`; the bytes received.
    fn request<'a>(&mut self, inputs: &'a [&'a [u8]], outputs: &'a mut [&'a mut [u8]]) -> Result<usize>;
    /// Queue `request` (header and body) with room for a reply of
    /// `reply_len` bytes nobody reads; it may reach the host only with
    /// the next request or [`Channel::flush`].
    fn post(&mut self, request: Box<[u8]>, reply_len: usize) -> Result<()>;
    /// Deliver every posted request.
    fn flush(&mut self) -> Result<()>;
    /// The tag the host gave the share.
    fn tag(&self) -> String;
}

fn refused(_: unit_devices::virtio_fs::FsError) -> Error {
    Error::Io(String::from("the virtio-fs device refused a request"))
}

impl Channel for unit_devices::virtio_fs::VirtioFs {
    fn request<'a>(&mut self, inputs: &'a [&'a [u8]], outputs: &'a mut [&'a mut [u8]]) -> Result<usize> {
        unit_devices::virtio_fs::VirtioFs::request(self, inputs, outputs).map_err(refused)
    }
    fn post(&mut self, request: Box<[u8]>, reply_len: usize) -> Result<()> {
        unit_devices::virtio_fs::VirtioFs::post(self, request, reply_len).map_err(refused)
    }
    fn flush(&mut self) -> Result<()> {
        unit_devices::virtio_fs::VirtioFs::flush(self).map_err(refused)
    }
    fn tag(&self) -> String {
        String::from(unit_devices::virtio_fs::VirtioFs::tag(self))
    }
}

const ROOT: u64 = abi::FUSE_ROOT_ID;
const OUT_HEADER: usize = 16;
/// The largest read asked for at once, whatever the host allows.
const MAX_READ: u32 = 1 << 20;
/// Most LOOKUP results kept.
pub const CACHE_MAX: usize = 1024;
/// Most nodes forgotten in one BATCH_FORGET.
const FORGET_BATCH: usize = 256;

/// A share mounted from a virtio-fs device.
#[derive(Clone)]
pub struct VirtioFs {
    conn: Arc<Conn>,
}

impl VirtioFs {
    /// Greet the host over `ch` (INIT) and make the filesystem; `clock`
    /// (monotonic nanoseconds) lets it keep what the host says for as long
    /// as the host allows.
    pub fn new(ch: Box<dyn Channel>, read_only: bool, clock: Option<fn() -> Option<u64>>) -> Result<Self> {
        let forgets = Arc::new(Mutex::new(Vec::new()));
        let root = Arc::new(Node { id: ROOT, forgets: forgets.clone() });
        let conn = Conn {
            ch: Mutex::new(ch),
            unique: AtomicU64::new(0),
            max_write: 4096,
            read_only,
            root,
            forgets,
            cache: Mutex::new(Cache::default()),
            clock,
        };
        let i = abi::fuse_init_in { major: 7, minor: 31, max_readahead: MAX_READ, ..Default::default() };
        let mut o = abi::fuse_init_out::default();
        conn.call(abi::fuse_opcode::FUSE_INIT, 0, &[i.as_bytes()], o.as_mut_bytes())?;
        if o.major != 7 || o.minor < 12 {
            return Err(Error::Unsupported("a FUSE version other than 7.12 or later"));
        }
        let max_write = o.max_write.clamp(4096, MAX_READ);
        Ok(Self { conn: Arc::new(Conn { max_write, ..conn }) })
    }

    /// The tag the host gave the share.
    pub fn tag(&self) -> String {
        self.conn.ch.lock().tag()
    }
}

struct Handle {
    conn: Arc<Conn>,
    node: NodeRef,
    fh: u64,
    /// Opened for writing (its close is FLUSHed).
    writes: bool,
    /// Its length when opened, from the LOOKUP or CREATE.
    len: Option<u64>,
    /// Where a short READ said the file ends (until it is written).
    end: Option<u64>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Posted: no exit, no wait; they go with the next request.
        if self.writes {
            let f = abi::fuse_flush_in { fh: self.fh, ..Default::default() };
            self.conn.post(abi::fuse_opcode::FUSE_FLUSH, self.node.id, f.as_bytes());
        }
        let r = abi::fuse_release_in { fh: self.fh, ..Default::default() };
        self.conn.post(abi::fuse_opcode::FUSE_RELEASE, self.node.id, r.as_bytes());
    }
}

impl FileHandle for Handle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = buf.len().min(self.conn.max_write.max(MAX_READ) as usize);
        if n == 0 || self.end.is_some_and(|end| offset >= end) {
            return Ok(0);
        }
        let r = abi::fuse_read_in { fh: self.fh, offset, size: n as u32, ..Default::default() };
        let got =
            self.conn.call(abi::fuse_opcode::FUSE_READ, self.node.id, &[r.as_bytes()], &mut buf[..n])?;
        if got < n {
            // A short read is the end of the file (FUSE without direct
            // I/O, as Linux's client takes it).
            self.end = Some(offset + got as u64);
        }
        Ok(got)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<usize> {
        if self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        let n = buf.len().min(self.conn.max_write as usize);
        if n == 0 {
            return Ok(0);
        }
        self.end = None;
        self.len = None;
        self.conn.stale(self.node.id);
        let w = abi::fuse_write_in { fh: self.fh, offset, size: n as u32, ..Default::default() };
        let mut o = abi::fuse_write_out::default();
        self.conn.call(
            abi::fuse_opcode::FUSE_WRITE,
            self.node.id,
            &[w.as_bytes(), &buf[..n]],
            o.as_mut_bytes(),
        )?;
        if o.size == 0 {
            return Err(Error::NoSpace);
        }
        Ok(o.size as usize)
    }

    fn metadata(&mut self) -> Result<Metadata> {
        Ok(meta(&self.conn.getattr(self.node.id, Some(self.fh))?, self.conn.read_only))
    }

    fn size_hint(&mut self) -> Option<u64> {
        self.len
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        self.end = None;
        self.len = None;
        self.conn.stale(self.node.id);
        let s = abi::fuse_setattr_in {
            valid: abi::FATTR_SIZE | abi::FATTR_FH,
            fh: self.fh,
            size: len,
            ..Default::default()
        };
        let mut a = abi::fuse_attr_out::default();
        self.conn.call(abi::fuse_opcode::FUSE_SETATTR, self.node.id, &[s.as_bytes()], a.as_mut_bytes())?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let f = abi::fuse_fsync_in { fh: self.fh, fsync_flags: 0, padding: 0 };
        self.conn.call(abi::fuse_opcode::FUSE_FSYNC, self.node.id, &[f.as_bytes()], &mut [])?;
        Ok(())
    }
}

/// `open(2)`'s flags for `flags`.
fn open_flags(flags: &OpenFlags) -> u32 {
    const O_WRONLY: u32 = 1;
    const O_RDWR: u32 = 2;
    const O_TRUNC: u32 = 0o1000;
    const O_EXCL: u32 = 0o200;
    let acc = match (flags.read, flags.write) {
        (true, true) => O_RDWR,
        (false, true) => O_WRONLY,
        _ => 0,
    };
    acc | if flags.truncate { O_TRUNC } else { 0 } | if flags.create_new { O_EXCL } else { 0 }
}

impl FileSystem for VirtioFs {
    fn kind(&self) -> &'static str {
        "virtio-fs"
    }

    fn read_only(&self) -> bool {
        self.conn.read_only
    }

    fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        self.conn.walk(path).map(|(_, a)| meta(&a, self.conn.read_only))
    }

    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>> {
        if flags.changes() && self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        if path.is_root() {
            return Err(Error::IsADirectory);
        }
        let c = &self.conn;
        let writes = flags.write;
        c.in_parent(path, |parent, name| {
            let oflags = open_flags(&flags);
            match c.lookup(parent, name) {
                Ok(_) if flags.create_new => Err(Error::AlreadyExists),
                Ok((node, attr)) => {
                    match file_type(attr.mode) {
                        FileType::File => {}
                        FileType::Dir => return Err(Error::IsADirectory),
                        _ => return Err(Error::Unsupported("not a regular file")),
                    }
                    let o = abi::fuse_open_in { flags: oflags, open_flags: 0 };
                    let mut out = abi::fuse_open_out::default();
                    c.call(abi::fuse_opcode::FUSE_OPEN, node.id, &[o.as_bytes()], out.as_mut_bytes())?;
                    let len = if flags.truncate {
                        c.stale(node.id);
                        Some(0)
                    } else {
                        Some(attr.size)
                    };
                    Ok(Box::new(Handle { conn: c.clone(), node, fh: out.fh, writes, len, end: None })
                        as Box<dyn FileHandle>)
                }
                Err(Error::NotFound) if flags.create => {
                    let cr = abi::fuse_create_in {
                        flags: oflags | 0o100,
                        mode: 0o100_644,
                        umask: 0o022,
                        open_flags: 0,
                    };
                    let mut out = vec![0u8; 128 + 16];
                    c.call(
                        abi::fuse_opcode::FUSE_CREATE,
                        parent.id,
                        &[cr.as_bytes(), &cname(name)],
                        &mut out,
                    )?;
                    let short = || Error::Io(String::from("short CREATE reply"));
                    let e = abi::fuse_entry_out::read_from_bytes(&out[..128]).map_err(|_| short())?;
                    let o = abi::fuse_open_out::read_from_bytes(&out[128..]).map_err(|_| short())?;
                    let node = c.node(e.nodeid);
                    c.stale(parent.id);
                    c.remember(parent.id, name, &node, &e);
                    Ok(Box::new(Handle { conn: c.clone(), node, fh: o.fh, writes, len: Some(0), end: None })
                        as Box<dyn FileHandle>)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>> {
        let c = &self.conn;
        let (node, a) = c.walk(path)?;
        if file_type(a.mode) != FileType::Dir {
            return Err(Error::NotADirectory);
        }
        let o = abi::fuse_open_in { flags: 0o200_000, open_flags: 0 }; // O_DIRECTORY
        let mut out = abi::fuse_open_out::default();
        c.call(abi::fuse_opcode::FUSE_OPENDIR, node.id, &[o.as_bytes()], out.as_mut_bytes())?;
        let fh = out.fh;
        let mut entries = Vec::new();
        let mut offset = 0;
        let mut buf = vec![0u8; 16 * 1024];
        let listed = loop {
            let r = abi::fuse_read_in { fh, offset, size: buf.len() as u32, ..Default::default() };
            let n = match c.call(abi::fuse_opcode::FUSE_READDIR, node.id, &[r.as_bytes()], &mut buf) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if n == 0 {
                break Ok(());
            }
            let mut at = 0;
            while at + 24 <= n {
                let word = |i: usize| buf[i..i + 8].try_into().map(u64::from_le_bytes).unwrap_or_default();
                let off = word(at + 8);
                let len = (word(at + 16) & 0xffff_ffff) as usize;
                let kind = (word(at + 16) >> 32) as u32;
                let Some(name) = buf.get(at + 24..at + 24 + len) else { break };
                if name != b"." && name != b".." {
                    let file_type = match kind {
                        4 => FileType::Dir,
                        8 => FileType::File,
                        10 => FileType::Symlink,
                        _ => FileType::Other,
                    };
                    entries.push(Entry { name: String::from_utf8_lossy(name).into_owned(), file_type });
                }
                offset = off;
                at += (24 + len).next_multiple_of(8);
            }
            if at == 0 {
                break Err(Error::Io(String::from("a READDIR reply without an entry")));
            }
        };
        let rel = abi::fuse_release_in { fh, ..Default::default() };
        c.post(abi::fuse_opcode::FUSE_RELEASEDIR, node.id, rel.as_bytes());
        listed.map(|_| entries)
    }

    fn create_dir(&self, path: &FsPath) -> Result<()> {
        if self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        let c = &self.conn;
        c.in_parent(path, |parent, name| {
            let m = abi::fuse_mkdir_in { mode: 0o755, umask: 0o022 };
            let mut e = abi::fuse_entry_out::default();
            c.call(abi::fuse_opcode::FUSE_MKDIR, parent.id, &[m.as_bytes(), &cname(name)], e.as_mut_bytes())?;
            c.stale(parent.id);
            c.remember(parent.id, name, &c.node(e.nodeid), &e);
            Ok(())
        })
    }

    fn remove_file(&self, path: &FsPath) -> Result<()> {
        self.remove(path, abi::fuse_opcode::FUSE_UNLINK)
    }

    fn remove_dir(&self, path: &FsPath) -> Result<()> {
        self.remove(path, abi::fuse_opcode::FUSE_RMDIR)
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> Result<()> {
        if self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        let c = &self.conn;
        c.in_parent(from, |old_parent, old_name| {
            c.in_parent(to, |new_parent, new_name| {
                // The source and, when there is one, the target are looked
                // up first, as Linux's FUSE client does: servers such as
                // virtiofsd act only on nodes they have handed out.
                let _old = c.lookup(old_parent, old_name)?;
                let _target = match c.lookup(new_parent, new_name) {
                    Ok(t) => Some(t),
                    Err(Error::NotFound) => None,
                    Err(e) => return Err(e),
                };
                let r = abi::fuse_rename_in { newdir: new_parent.id };
                let mut names = cname(old_name);
                names.extend_from_slice(&cname(new_name));
                let done =
                    c.call(abi::fuse_opcode::FUSE_RENAME, old_parent.id, &[r.as_bytes(), &names], &mut []);
                c.forget_name(old_parent, old_name);
                c.forget_name(new_parent, new_name);
                done.map(|_| ())
            })
        })
    }

    fn sync(&self) -> Result<()> {
        self.conn.flush()
    }

    fn space(&self) -> Result<Space> {
        let mut o = abi::fuse_statfs_out::default();
        self.conn.call(abi::fuse_opcode::FUSE_STATFS, ROOT, &[], o.as_mut_bytes())?;
        let s = o.st;
        let unit = u64::from(if s.frsize != 0 { s.frsize } else { s.bsize });
        Ok(Space {
            total: s.blocks.saturating_mul(unit),
            free: s.bfree.saturating_mul(unit),
            available: s.bavail.saturating_mul(unit),
        })
    }
}

impl VirtioFs {
    fn remove(&self, path: &FsPath, op: abi::fuse_opcode) -> Result<()> {
        if self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        let c = &self.conn;
        c.in_parent(path, |parent, name| {
            // Looked up first (see `rename`).
            let _victim = c.lookup(parent, name)?;
            let done = c.call(op, parent.id, &[&cname(name)], &mut []);
            c.forget_name(parent, name);
            done.map(|_| ())
        })
    }
}
