//! Host directories shared with virtio-fs, mounted at `/<tag>`: a FUSE
//! client (protocol 7.31, the ABI from `fuse-abi`) over the devices unit's
//! virtio-fs queues.
//!
//! Paths are looked up one component at a time (QEMU's `virtiofsd`
//! refuses `a/b` in a LOOKUP), and every node looked up is forgotten again
//! when the operation is done (`BATCH_FORGET`), so the host's tables stay
//! small. Reads go straight into the caller's buffer; transfers are split
//! to the host's `max_write`. Reply buffers are always as large as the
//! largest reply a request can get (`virtiofsd` aborts otherwise).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use fuse_abi::linux as abi;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, Result};
use crate::lock::Mutex;
use crate::path::FsPath;
use crate::vfs::{Entry, FileHandle, FileSystem, FileType, Metadata, OpenFlags};

/// What carries FUSE requests to the host.
pub trait Channel: Send {
    /// Send `inputs`, receive into `outputs`; the bytes received.
    fn request<'a>(&mut self, inputs: &'a [&'a [u8]], outputs: &'a mut [&'a mut [u8]]) -> Result<usize>;
    /// Send `inputs`, expecting no reply (FORGET).
    fn send<'a>(&mut self, inputs: &'a [&'a [u8]]) -> Result<()>;
    /// The tag the host gave the share.
    fn tag(&self) -> String;
}

impl Channel for unit_devices::virtio_fs::VirtioFs {
    fn request<'a>(&mut self, inputs: &'a [&'a [u8]], outputs: &'a mut [&'a mut [u8]]) -> Result<usize> {
        unit_devices::virtio_fs::VirtioFs::request(self, inputs, outputs)
            .map_err(|_| Error::Io(String::from("the virtio-fs device refused a request")))
    }
    fn send<'a>(&mut self, inputs: &'a [&'a [u8]]) -> Result<()> {
        unit_devices::virtio_fs::VirtioFs::send(self, inputs)
            .map_err(|_| Error::Io(String::from("the virtio-fs device refused a request")))
    }
    fn tag(&self) -> String {
        String::from(unit_devices::virtio_fs::VirtioFs::tag(self))
    }
}

const ROOT: u64 = abi::FUSE_ROOT_ID;
const OUT_HEADER: usize = 16;
/// The largest read asked for at once, whatever the host allows.
const MAX_READ: u32 = 1 << 20;

/// An errno from the host, as the unit says it.
fn errno(e: i32) -> Error {
    match e {
        libc_errno::ENOENT => Error::NotFound,
        libc_errno::EEXIST => Error::AlreadyExists,
        libc_errno::ENOTDIR => Error::NotADirectory,
        libc_errno::EISDIR => Error::IsADirectory,
        libc_errno::ENOTEMPTY => Error::DirectoryNotEmpty,
        libc_errno::EROFS => Error::ReadOnly,
        libc_errno::EACCES | libc_errno::EPERM => Error::PermissionDenied,
        libc_errno::ENAMETOOLONG => Error::NameTooLong,
        libc_errno::ENOSPC => Error::NoSpace,
        libc_errno::ELOOP => Error::Unsupported("symbolic links are not followed"),
        libc_errno::EINVAL => Error::InvalidInput("the host refused the request"),
        libc_errno::ENOSYS => Error::Unsupported("the host does not do this"),
        e => Error::Io(format!("the host says errno {e}")),
    }
}

/// The errno values FUSE uses (Linux's).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOSYS: i32 = 38;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

fn file_type(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Dir,
        S_IFREG => FileType::File,
        S_IFLNK => FileType::Symlink,
        _ => FileType::Other,
    }
}

fn meta(a: &abi::fuse_attr, read_only: bool) -> Metadata {
    Metadata { file_type: file_type(a.mode), len: a.size, modified: Some(a.mtime), read_only }
}

/// A name with its terminating NUL.
fn cname(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v
}

struct Conn {
    ch: Mutex<Box<dyn Channel>>,
    unique: AtomicU64,
    max_write: u32,
    read_only: bool,
}

impl Conn {
    /// One request: `opcode` on `nodeid` with `body`; the reply's body goes
    /// into `reply` (sized for the largest reply); its length.
    fn call(&self, opcode: abi::fuse_opcode, nodeid: u64, body: &[&[u8]], reply: &mut [u8]) -> Result<usize> {
        let len = 40 + body.iter().map(|b| b.len()).sum::<usize>();
        let unique = self.unique.fetch_add(1, Ordering::Relaxed) + 1;
        let h = abi::fuse_in_header {
            len: len as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        };
        let mut inputs: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
        inputs.push(h.as_bytes());
        inputs.extend(body.iter().copied().filter(|b| !b.is_empty()));
        let mut out = [0u8; OUT_HEADER];
        let got = {
            let mut outputs: [&mut [u8]; 2] = [&mut out, reply];
            let outputs: &mut [&mut [u8]] =
                if outputs[1].is_empty() { &mut outputs[..1] } else { &mut outputs[..] };
            self.ch.lock().request(&inputs, outputs)?
        };
        let o = abi::fuse_out_header::read_from_bytes(&out)
            .map_err(|_| Error::Io(String::from("short reply")))?;
        if got < OUT_HEADER || o.unique != unique {
            return Err(Error::Io(String::from("the host's reply does not match the request")));
        }
        if o.error != 0 {
            return Err(errno(-o.error));
        }
        Ok((o.len as usize).saturating_sub(OUT_HEADER).min(got - OUT_HEADER))
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<abi::fuse_entry_out> {
        let mut e = abi::fuse_entry_out::default();
        self.call(abi::fuse_opcode::FUSE_LOOKUP, parent, &[&cname(name)], e.as_mut_bytes())?;
        Ok(e)
    }

    /// Tell the host we are done with `nodes` (each looked up once).
    fn forget(&self, nodes: &[u64]) {
        if nodes.is_empty() {
            return;
        }
        let b = abi::fuse_batch_forget_in { count: nodes.len() as u32, dummy: 0 };
        let mut body = Vec::with_capacity(8 + 16 * nodes.len());
        body.extend_from_slice(b.as_bytes());
        for &n in nodes {
            body.extend_from_slice(abi::fuse_forget_one { nodeid: n, nlookup: 1 }.as_bytes());
        }
        let unique = self.unique.fetch_add(1, Ordering::Relaxed) + 1;
        let h = abi::fuse_in_header {
            len: (40 + body.len()) as u32,
            opcode: abi::fuse_opcode::FUSE_BATCH_FORGET as u32,
            unique,
            nodeid: 0,
            ..Default::default()
        };
        let _ = self.ch.lock().send(&[h.as_bytes(), &body]);
    }

    /// The node of the directory `path` (and the nodes looked up to reach
    /// it, to forget).
    fn walk(&self, path: &FsPath, held: &mut Vec<u64>) -> Result<(u64, abi::fuse_attr)> {
        let mut node = ROOT;
        let mut attr = None;
        for c in path.components() {
            let e = self.lookup(node, c)?;
            held.push(e.nodeid);
            node = e.nodeid;
            attr = Some(e.attr);
        }
        let attr = match attr {
            Some(a) => a,
            None => self.getattr(ROOT, None)?,
        };
        Ok((node, attr))
    }

    fn getattr(&self, node: u64, fh: Option<u64>) -> Result<abi::fuse_attr> {
        let g =
            abi::fuse_getattr_in { getattr_flags: u32::from(fh.is_some()), dummy: 0, fh: fh.unwrap_or(0) };
        let mut a = abi::fuse_attr_out::default();
        self.call(abi::fuse_opcode::FUSE_GETATTR, node, &[g.as_bytes()], a.as_mut_bytes())?;
        Ok(a.attr)
    }

    /// Run `f` with the node of `path`'s parent and `path`'s name; the
    /// nodes looked up are forgotten afterwards.
    fn in_parent<T>(&self, path: &FsPath, f: impl FnOnce(u64, &str) -> Result<T>) -> Result<T> {
        let (dir, name) = path.split_last().ok_or(Error::PermissionDenied)?;
        let mut held = Vec::new();
        let r = self.walk(&dir, &mut held).and_then(|(node, a)| {
            if file_type(a.mode) != FileType::Dir {
                return Err(Error::NotADirectory);
            }
            f(node, name)
        });
        self.forget(&held);
        r
    }
}

/// A share mounted from a virtio-fs device.
#[derive(Clone)]
pub struct VirtioFs {
    conn: Arc<Conn>,
}

impl VirtioFs {
    /// Greet the host over `ch` (INIT) and make the filesystem.
    pub fn new(ch: Box<dyn Channel>, read_only: bool) -> Result<Self> {
        let conn = Conn { ch: Mutex::new(ch), unique: AtomicU64::new(0), max_write: 4096, read_only };
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
    node: u64,
    fh: u64,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let r = abi::fuse_release_in { fh: self.fh, ..Default::default() };
        let _ = self.conn.call(abi::fuse_opcode::FUSE_RELEASE, self.node, &[r.as_bytes()], &mut []);
        self.conn.forget(&[self.node]);
    }
}

impl FileHandle for Handle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = buf.len().min(self.conn.max_write.max(MAX_READ) as usize);
        if n == 0 {
            return Ok(0);
        }
        let r = abi::fuse_read_in { fh: self.fh, offset, size: n as u32, ..Default::default() };
        self.conn.call(abi::fuse_opcode::FUSE_READ, self.node, &[r.as_bytes()], &mut buf[..n])
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<usize> {
        if self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        let n = buf.len().min(self.conn.max_write as usize);
        if n == 0 {
            return Ok(0);
        }
        let w = abi::fuse_write_in { fh: self.fh, offset, size: n as u32, ..Default::default() };
        let mut o = abi::fuse_write_out::default();
        self.conn.call(
            abi::fuse_opcode::FUSE_WRITE,
            self.node,
            &[w.as_bytes(), &buf[..n]],
            o.as_mut_bytes(),
        )?;
        if o.size == 0 {
            return Err(Error::NoSpace);
        }
        Ok(o.size as usize)
    }

    fn metadata(&mut self) -> Result<Metadata> {
        Ok(meta(&self.conn.getattr(self.node, Some(self.fh))?, self.conn.read_only))
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        let s = abi::fuse_setattr_in {
            valid: abi::FATTR_SIZE | abi::FATTR_FH,
            fh: self.fh,
            size: len,
            ..Default::default()
        };
        let mut a = abi::fuse_attr_out::default();
        self.conn.call(abi::fuse_opcode::FUSE_SETATTR, self.node, &[s.as_bytes()], a.as_mut_bytes())?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let f = abi::fuse_fsync_in { fh: self.fh, fsync_flags: 0, padding: 0 };
        self.conn.call(abi::fuse_opcode::FUSE_FSYNC, self.node, &[f.as_bytes()], &mut [])?;
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
        let mut held = Vec::new();
        let r = self.conn.walk(path, &mut held).map(|(_, a)| meta(&a, self.conn.read_only));
        self.conn.forget(&held);
        r
    }

    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>> {
        if flags.changes() && self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        if path.is_root() {
            return Err(Error::IsADirectory);
        }
        let c = &self.conn;
        c.in_parent(path, |parent, name| {
            let oflags = open_flags(&flags);
            match c.lookup(parent, name) {
                Ok(_) if flags.create_new => Err(Error::AlreadyExists),
                Ok(e) => {
                    // This lookup's count goes with the handle.
                    match file_type(e.attr.mode) {
                        FileType::File => {}
                        FileType::Dir => {
                            c.forget(&[e.nodeid]);
                            return Err(Error::IsADirectory);
                        }
                        _ => {
                            c.forget(&[e.nodeid]);
                            return Err(Error::Unsupported("not a regular file"));
                        }
                    }
                    let o = abi::fuse_open_in { flags: oflags, open_flags: 0 };
                    let mut out = abi::fuse_open_out::default();
                    match c.call(abi::fuse_opcode::FUSE_OPEN, e.nodeid, &[o.as_bytes()], out.as_mut_bytes()) {
                        Ok(_) => Ok(Box::new(Handle { conn: c.clone_arc(self), node: e.nodeid, fh: out.fh })
                            as Box<dyn FileHandle>),
                        Err(err) => {
                            c.forget(&[e.nodeid]);
                            Err(err)
                        }
                    }
                }
                Err(Error::NotFound) if flags.create => {
                    let cr = abi::fuse_create_in {
                        flags: oflags | 0o100,
                        mode: 0o100_644,
                        umask: 0o022,
                        open_flags: 0,
                    };
                    let mut out = vec![0u8; 128 + 16];
                    c.call(abi::fuse_opcode::FUSE_CREATE, parent, &[cr.as_bytes(), &cname(name)], &mut out)?;
                    let e = abi::fuse_entry_out::read_from_bytes(&out[..128])
                        .map_err(|_| Error::Io(String::from("short CREATE reply")))?;
                    let o = abi::fuse_open_out::read_from_bytes(&out[128..])
                        .map_err(|_| Error::Io(String::from("short CREATE reply")))?;
                    Ok(Box::new(Handle { conn: c.clone_arc(self), node: e.nodeid, fh: o.fh })
                        as Box<dyn FileHandle>)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>> {
        let c = &self.conn;
        let mut held = Vec::new();
        let r = c.walk(path, &mut held).and_then(|(node, a)| {
            if file_type(a.mode) != FileType::Dir {
                return Err(Error::NotADirectory);
            }
            let o = abi::fuse_open_in { flags: 0o200_000, open_flags: 0 }; // O_DIRECTORY
            let mut out = abi::fuse_open_out::default();
            c.call(abi::fuse_opcode::FUSE_OPENDIR, node, &[o.as_bytes()], out.as_mut_bytes())?;
            let fh = out.fh;
            let mut entries = Vec::new();
            let mut offset = 0;
            let mut buf = vec![0u8; 16 * 1024];
            let listed = loop {
                let r = abi::fuse_read_in { fh, offset, size: buf.len() as u32, ..Default::default() };
                let n = match c.call(abi::fuse_opcode::FUSE_READDIR, node, &[r.as_bytes()], &mut buf) {
                    Ok(n) => n,
                    Err(e) => break Err(e),
                };
                if n == 0 {
                    break Ok(());
                }
                let mut at = 0;
                while at + 24 <= n {
                    let ino = u64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or_default());
                    let off = u64::from_le_bytes(buf[at + 8..at + 16].try_into().unwrap_or_default());
                    let len =
                        u32::from_le_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default()) as usize;
                    let kind = u32::from_le_bytes(buf[at + 20..at + 24].try_into().unwrap_or_default());
                    let Some(name) = buf.get(at + 24..at + 24 + len) else { break };
                    let _ = ino;
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
            let _ = c.call(abi::fuse_opcode::FUSE_RELEASEDIR, node, &[rel.as_bytes()], &mut []);
            listed.map(|_| entries)
        });
        c.forget(&held);
        r
    }

    fn create_dir(&self, path: &FsPath) -> Result<()> {
        if self.conn.read_only {
            return Err(Error::ReadOnly);
        }
        let c = &self.conn;
        c.in_parent(path, |parent, name| {
            let m = abi::fuse_mkdir_in { mode: 0o755, umask: 0o022 };
            let mut e = abi::fuse_entry_out::default();
            c.call(abi::fuse_opcode::FUSE_MKDIR, parent, &[m.as_bytes(), &cname(name)], e.as_mut_bytes())?;
            c.forget(&[e.nodeid]);
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
                let old = c.lookup(old_parent, old_name)?.nodeid;
                let target = match c.lookup(new_parent, new_name) {
                    Ok(e) => Some(e.nodeid),
                    Err(Error::NotFound) => None,
                    Err(e) => {
                        c.forget(&[old]);
                        return Err(e);
                    }
                };
                let r = abi::fuse_rename_in { newdir: new_parent };
                let mut names = cname(old_name);
                names.extend_from_slice(&cname(new_name));
                let done =
                    c.call(abi::fuse_opcode::FUSE_RENAME, old_parent, &[r.as_bytes(), &names], &mut []);
                let mut looked_up = alloc::vec![old];
                looked_up.extend(target);
                c.forget(&looked_up);
                done.map(|_| ())
            })
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
            let node = c.lookup(parent, name)?.nodeid;
            let done = c.call(op, parent, &[&cname(name)], &mut []);
            c.forget(&[node]);
            done.map(|_| ())
        })
    }
}

impl Conn {
    fn clone_arc(&self, fs: &VirtioFs) -> Arc<Conn> {
        fs.conn.clone()
    }
}
