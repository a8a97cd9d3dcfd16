//! The FUSE server behind the monitor's virtio-fs device: a passthrough
//! of one host directory, for a guest that is not trusted.
//!
//! Nothing outside the shared directory can be named: every node is an
//! `O_PATH` descriptor of an object inside it, and a name is resolved one
//! component at a time from its parent's descriptor ([`Server::lookup`]:
//! `openat(parent, name, O_PATH | O_NOFOLLOW)`), after it was checked to
//! hold no `/` or NUL and to be neither `.` nor `..`: a single component
//! that is a child's own name can name nothing else, so `openat2`'s
//! `RESOLVE_BENEATH` would add nothing, and plain `openat` is what the
//! seccomp filter can check (its flags are an argument, `openat2`'s sit
//! in a struct). A symbolic link is a node of its own kind that is never
//! followed nor opened (`O_NOFOLLOW`: it is the link's own descriptor,
//! and `O_CREAT` over one fails). Files are opened for I/O by reopening their node's descriptor
//! (`/proc/self/fd/N`, which names that inode, not a path), directories
//! through `openat(node, ".")`. Node IDs and file handles are indices into
//! tables this server owns; both are capped, as are names and transfers.
//! A read-only share answers `EROFS` to every change. Host errors become
//! FUSE errors; nothing here can fail the monitor.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use fuse_abi::linux as abi;
use rustix::fs::{AtFlags, FileType as Kind, Mode, OFlags};
use zerocopy::{FromBytes, IntoBytes};

/// Largest READ or WRITE served at once (what INIT announces).
pub const MAX_TRANSFER: u32 = 1 << 20;
/// Most nodes (looked-up objects) alive at once.
pub const MAX_NODES: usize = 16_384;
/// Most open files and directories at once.
pub const MAX_HANDLES: usize = 1_024;
/// Most entries a directory listing holds.
pub const MAX_DIR_ENTRIES: usize = 65_536;
/// How long the guest may trust an entry or attributes, in seconds.
const VALID: u64 = 1;

/// A FUSE error: a positive errno.
pub type Errno = i32;

fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn rerr(e: rustix::io::Errno) -> Errno {
    e.raw_os_error()
}

struct Node {
    fd: OwnedFd,
    kind: Kind,
    lookups: u64,
    key: (u64, u64),
}

enum Handle {
    /// Shared with the thread that reads a large READ's second half.
    File(Arc<File>),
    Dir(Vec<(Vec<u8>, u64, u32)>),
}

/// The server's state: the nodes and handles the guest may name.
pub struct Server {
    nodes: Vec<Option<Node>>,
    free: Vec<usize>,
    by_inode: HashMap<(u64, u64), usize>,
    handles: Vec<Option<Handle>>,
    readonly: bool,
}

/// `(dev, ino)` of a stat.
fn key(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

fn attr(st: &rustix::fs::Stat) -> abi::fuse_attr {
    abi::fuse_attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The first `T` of `body` (zero-padded if the body is short: older
/// clients send shorter structs).
fn read<T: FromBytes + IntoBytes + Default>(body: &[u8]) -> T {
    let mut v = T::default();
    let b = v.as_mut_bytes();
    let n = b.len().min(body.len());
    b[..n].copy_from_slice(&body[..n]);
    v
}

/// A name from the guest: one component, checked.
fn name(raw: &[u8]) -> Result<&OsStr, Errno> {
    let raw = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    if raw.is_empty() || raw.len() > 255 {
        return Err(if raw.is_empty() { libc::EINVAL } else { libc::ENAMETOOLONG });
    }
    if raw.contains(&b'/') || raw == b"." || raw == b".." {
        return Err(libc::EPERM);
    }
    Ok(OsStr::from_bytes(raw))
}

/// Two NUL-terminated names (RENAME).
fn two_names(raw: &[u8]) -> Result<(&OsStr, &OsStr), Errno> {
    let mut parts = raw.splitn(2, |&b| b == 0);
    let a = name(parts.next().unwrap_or(&[]))?;
    let b = name(parts.next().unwrap_or(&[]))?;
    Ok((a, b))
}

impl Server {
    /// Serve the directory `root` (an open directory).
    pub fn new(root: OwnedFd, readonly: bool) -> Result<Self, String> {
        let st = rustix::fs::fstat(&root).map_err(|e| format!("{e}"))?;
        let mut s = Self {
            nodes: Vec::new(),
            free: Vec::new(),
            by_inode: HashMap::new(),
            handles: Vec::new(),
            readonly,
        };
        s.nodes.push(Some(Node { fd: root, kind: Kind::Directory, lookups: 1, key: key(&st) }));
        s.by_inode.insert(key(&st), 0);
        Ok(s)
    }

    /// Nodes alive (the root included).
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    fn node(&self, nodeid: u64) -> Result<&Node, Errno> {
        let i = usize::try_from(nodeid.wrapping_sub(1)).map_err(|_| libc::ENOENT)?;
        self.nodes.get(i).and_then(Option::as_ref).ok_or(libc::ENOENT)
    }

    fn dir(&self, nodeid: u64) -> Result<&Node, Errno> {
        let n = self.node(nodeid)?;
        if n.kind == Kind::Directory { Ok(n) } else { Err(libc::ENOTDIR) }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.readonly { Err(libc::EROFS) } else { Ok(()) }
    }

    /// Look `name` up in directory `parent`: a node (counted once more),
    /// and its attributes.
    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<abi::fuse_entry_out, Errno> {
        let p = self.dir(parent)?;
        // One checked component (`name`): nothing but the child.
        let fd =
            rustix::fs::openat(&p.fd, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map_err(rerr)?;
        let st = rustix::fs::fstat(&fd).map_err(rerr)?;
        let k = key(&st);
        let i = match self.by_inode.get(&k) {
            Some(&i) => {
                if let Some(n) = self.nodes[i].as_mut() {
                    n.lookups += 1;
                }
                i
            }
            None => {
                let n = Node { fd, kind: Kind::from_raw_mode(st.st_mode), lookups: 1, key: k };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.nodes[i] = Some(n);
                        i
                    }
                    None if self.nodes.len() < MAX_NODES => {
                        self.nodes.push(Some(n));
                        self.nodes.len() - 1
                    }
                    None => return Err(libc::ENFILE),
                };
                self.by_inode.insert(k, i);
                i
            }
        };
        Ok(abi::fuse_entry_out {
            nodeid: i as u64 + 1,
            generation: 0,
            entry_valid: VALID,
            attr_valid: VALID,
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            attr: attr(&st),
        })
    }

    fn forget(&mut self, nodeid: u64, n: u64) {
        let Ok(i) = usize::try_from(nodeid.wrapping_sub(1)) else { return };
        if i == 0 {
            return; // the root stays
        }
        let gone = match self.nodes.get_mut(i).and_then(Option::as_mut) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone && let Some(node) = self.nodes[i].take() {
            self.by_inode.remove(&node.key);
            self.free.push(i);
        }
    }

    fn add_handle(&mut self, h: Handle) -> Result<u64, Errno> {
        if let Some(i) = self.handles.iter().position(Option::is_none) {
            self.handles[i] = Some(h);
            return Ok(i as u64);
        }
        if self.handles.len() >= MAX_HANDLES {
            return Err(libc::EMFILE);
        }
        self.handles.push(Some(h));
        Ok(self.handles.len() as u64 - 1)
    }

    fn file(&self, fh: u64) -> Result<&File, Errno> {
        match self.handles.get(usize::try_from(fh).map_err(|_| libc::EBADF)?) {
            Some(Some(Handle::File(f))) => Ok(f.as_ref()),
            _ => Err(libc::EBADF),
        }
    }

    /// The open file `fh`, for a READ straight into guest memory (by
    /// `pread`, on one thread or two: `Fs::read_direct`).
    pub fn file_to_read(&self, fh: u64) -> Result<Arc<File>, Errno> {
        match self.handles.get(usize::try_from(fh).map_err(|_| libc::EBADF)?) {
            Some(Some(Handle::File(f))) => Ok(Arc::clone(f)),
            _ => Err(libc::EBADF),
        }
    }

    /// Reopen node `nodeid` (a regular file) for I/O with `flags`.
    fn reopen(&self, nodeid: u64, flags: i32) -> Result<File, Errno> {
        let n = self.node(nodeid)?;
        match n.kind {
            Kind::RegularFile => {}
            Kind::Directory => return Err(libc::EISDIR),
            Kind::Symlink => return Err(libc::ELOOP),
            _ => return Err(libc::EACCES),
        }
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            self.writable()?;
        }
        std::fs::OpenOptions::new()
            .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
            .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
            .append(flags & libc::O_APPEND != 0)
            .truncate(flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY)
            .custom_flags(libc::O_CLOEXEC)
            .open(Path::new(&format!("/proc/self/fd/{}", n.fd.as_raw_fd())))
            .map_err(errno)
    }

    fn stat_node(&self, nodeid: u64) -> Result<abi::fuse_attr_out, Errno> {
        let st = rustix::fs::fstat(&self.node(nodeid)?.fd).map_err(rerr)?;
        Ok(abi::fuse_attr_out { attr_valid: VALID, attr_valid_nsec: 0, dummy: 0, attr: attr(&st) })
    }

    /// Serve one request: `opcode` on `nodeid` with `body` (what follows the
    /// in-header). The reply's body goes to `out`; `Ok(false)`: no reply at
    /// all (FORGET).
    pub fn handle(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, Errno> {
        use abi::fuse_opcode as op;
        out.clear();
        match opcode {
            x if x == op::FUSE_INIT as u32 => {
                let i: abi::fuse_init_in = read(body);
                if i.major != 7 {
                    // Our version; the client decides.
                    let o = abi::fuse_init_out { major: 7, minor: 31, ..Default::default() };
                    out.extend_from_slice(o.as_bytes());
                    return Ok(true);
                }
                let o = abi::fuse_init_out {
                    major: 7,
                    minor: i.minor.min(31),
                    max_readahead: i.max_readahead.min(MAX_TRANSFER),
                    flags: 0,
                    max_background: 16,
                    congestion_threshold: 12,
                    max_write: MAX_TRANSFER,
                    time_gran: 1,
                    max_pages: (MAX_TRANSFER / 4096) as u16,
                    ..Default::default()
                };
                out.extend_from_slice(o.as_bytes());
            }
            x if x == op::FUSE_DESTROY as u32 => {}
            x if x == op::FUSE_LOOKUP as u32 => {
                let e = self.lookup(nodeid, name(body)?)?;
                out.extend_from_slice(e.as_bytes());
            }
            x if x == op::FUSE_FORGET as u32 => {
                let f: abi::fuse_forget_in = read(body);
                self.forget(nodeid, f.nlookup);
                return Ok(false);
            }
            x if x == op::FUSE_BATCH_FORGET as u32 => {
                let b: abi::fuse_batch_forget_in = read(body);
                let rest = body.get(8..).unwrap_or(&[]);
                for one in rest.chunks_exact(16).take(b.count as usize) {
                    let f: abi::fuse_forget_one = read(one);
                    self.forget(f.nodeid, f.nlookup);
                }
                return Ok(false);
            }
            x if x == op::FUSE_GETATTR as u32 => {
                out.extend_from_slice(self.stat_node(nodeid)?.as_bytes());
            }
            x if x == op::FUSE_SETATTR as u32 => {
                let s: abi::fuse_setattr_in = read(body);
                if s.valid & abi::FATTR_SIZE != 0 {
                    self.writable()?;
                    match (s.valid & abi::FATTR_FH != 0).then(|| self.file(s.fh)) {
                        Some(f) => f?.set_len(s.size).map_err(errno)?,
                        None => self.reopen(nodeid, libc::O_WRONLY)?.set_len(s.size).map_err(errno)?,
                    }
                }
                out.extend_from_slice(self.stat_node(nodeid)?.as_bytes());
            }
            x if x == op::FUSE_OPEN as u32 => {
                let o: abi::fuse_open_in = read(body);
                let f = self.reopen(nodeid, o.flags as i32)?;
                let fh = self.add_handle(Handle::File(Arc::new(f)))?;
                out.extend_from_slice(abi::fuse_open_out { fh, open_flags: 0, backing_id: 0 }.as_bytes());
            }
            x if x == op::FUSE_CREATE as u32 => {
                self.writable()?;
                let c: abi::fuse_create_in = read(body);
                let n = name(body.get(16..).unwrap_or(&[]))?;
                let p = self.dir(nodeid)?;
                let mut flags = OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                if c.flags as i32 & libc::O_EXCL != 0 {
                    flags |= OFlags::EXCL;
                }
                if c.flags as i32 & libc::O_TRUNC != 0 {
                    flags |= OFlags::TRUNC;
                }
                let mode = Mode::from_raw_mode((c.mode & 0o777 & !c.umask) as _);
                let fd = rustix::fs::openat(&p.fd, n, flags, mode).map_err(rerr)?;
                let e = self.lookup(nodeid, n)?;
                let fh = match self.add_handle(Handle::File(Arc::new(File::from(fd)))) {
                    Ok(fh) => fh,
                    Err(err) => {
                        self.forget(e.nodeid, 1);
                        return Err(err);
                    }
                };
                out.extend_from_slice(e.as_bytes());
                out.extend_from_slice(abi::fuse_open_out { fh, open_flags: 0, backing_id: 0 }.as_bytes());
            }
            x if x == op::FUSE_MKDIR as u32 => {
                self.writable()?;
                let m: abi::fuse_mkdir_in = read(body);
                let n = name(body.get(8..).unwrap_or(&[]))?;
                let p = self.dir(nodeid)?;
                rustix::fs::mkdirat(&p.fd, n, Mode::from_raw_mode((m.mode & 0o777 & !m.umask) as _))
                    .map_err(rerr)?;
                let e = self.lookup(nodeid, n)?;
                out.extend_from_slice(e.as_bytes());
            }
            x if x == op::FUSE_UNLINK as u32 || x == op::FUSE_RMDIR as u32 => {
                self.writable()?;
                let n = name(body)?;
                let p = self.dir(nodeid)?;
                let flags = if x == op::FUSE_RMDIR as u32 { AtFlags::REMOVEDIR } else { AtFlags::empty() };
                rustix::fs::unlinkat(&p.fd, n, flags).map_err(rerr)?;
            }
            x if x == op::FUSE_RENAME as u32 || x == op::FUSE_RENAME2 as u32 => {
                self.writable()?;
                let (newdir, names) = if x == op::FUSE_RENAME as u32 {
                    let r: abi::fuse_rename_in = read(body);
                    (r.newdir, body.get(8..).unwrap_or(&[]))
                } else {
                    let r: abi::fuse_rename2_in = read(body);
                    if r.flags != 0 {
                        return Err(libc::EINVAL);
                    }
                    (r.newdir, body.get(16..).unwrap_or(&[]))
                };
                let (a, b) = two_names(names)?;
                let from = self.dir(nodeid)?;
                let to = self.dir(newdir)?;
                rustix::fs::renameat(&from.fd, a, &to.fd, b).map_err(rerr)?;
            }
            // READ is served by the device (`Fs::read_direct`), from the
            // file straight into guest memory, through `file_at`.
            x if x == op::FUSE_WRITE as u32 => {
                self.writable()?;
                let w: abi::fuse_write_in = read(body);
                let data = body.get(40..).unwrap_or(&[]);
                if w.size > MAX_TRANSFER || data.len() < w.size as usize {
                    return Err(libc::EINVAL);
                }
                self.file(w.fh)?.write_all_at(&data[..w.size as usize], w.offset).map_err(errno)?;
                out.extend_from_slice(abi::fuse_write_out { size: w.size, padding: 0 }.as_bytes());
            }
            x if x == op::FUSE_STATFS as u32 => {
                let s = rustix::fs::fstatfs(&self.node(1)?.fd).map_err(rerr)?;
                let st = abi::fuse_kstatfs {
                    blocks: s.f_blocks as u64,
                    bfree: s.f_bfree as u64,
                    bavail: s.f_bavail as u64,
                    files: s.f_files as u64,
                    ffree: s.f_ffree as u64,
                    bsize: s.f_bsize as u32,
                    namelen: 255,
                    frsize: s.f_frsize as u32,
                    padding: 0,
                    spare: [0; 6],
                };
                out.extend_from_slice(abi::fuse_statfs_out { st }.as_bytes());
            }
            x if x == op::FUSE_RELEASE as u32 || x == op::FUSE_RELEASEDIR as u32 => {
                let r: abi::fuse_release_in = read(body);
                match self.handles.get_mut(usize::try_from(r.fh).map_err(|_| libc::EBADF)?) {
                    Some(h @ Some(_)) => *h = None,
                    _ => return Err(libc::EBADF),
                }
            }
            x if x == op::FUSE_FLUSH as u32 || x == op::FUSE_ACCESS as u32 => {}
            x if x == op::FUSE_FSYNC as u32 => {
                let f: abi::fuse_fsync_in = read(body);
                self.file(f.fh)?.sync_data().map_err(errno)?;
            }
            x if x == op::FUSE_FSYNCDIR as u32 => {}
            x if x == op::FUSE_OPENDIR as u32 => {
                let n = self.dir(nodeid)?;
                let d = rustix::fs::openat(
                    &n.fd,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(rerr)?;
                let mut list = Vec::new();
                let mut dir = rustix::fs::Dir::read_from(&d).map_err(rerr)?;
                while let Some(e) = dir.read() {
                    let e = e.map_err(rerr)?;
                    if list.len() >= MAX_DIR_ENTRIES {
                        break;
                    }
                    list.push((e.file_name().to_bytes().to_vec(), e.ino(), dirent_type(e.file_type())));
                }
                let fh = self.add_handle(Handle::Dir(list))?;
                out.extend_from_slice(abi::fuse_open_out { fh, open_flags: 0, backing_id: 0 }.as_bytes());
            }
            x if x == op::FUSE_READDIR as u32 => {
                let r: abi::fuse_read_in = read(body);
                let list = match self.handles.get(usize::try_from(r.fh).map_err(|_| libc::EBADF)?) {
                    Some(Some(Handle::Dir(l))) => l,
                    _ => return Err(libc::EBADF),
                };
                let room = r.size.min(MAX_TRANSFER) as usize;
                for (k, (name, ino, kind)) in
                    list.iter().enumerate().skip(usize::try_from(r.offset).unwrap_or(usize::MAX))
                {
                    let rec = (24 + name.len()).next_multiple_of(8);
                    if out.len() + rec > room {
                        break;
                    }
                    let d = abi::fuse_dirent {
                        ino: *ino,
                        off: k as u64 + 1,
                        namelen: name.len() as u32,
                        type_: *kind,
                        name: Default::default(),
                    };
                    out.extend_from_slice(&d.as_bytes()[..24]);
                    out.extend_from_slice(name);
                    out.resize(out.len().next_multiple_of(8), 0);
                }
            }
            x if x == op::FUSE_INTERRUPT as u32 => return Ok(false),
            _ => return Err(libc::ENOSYS),
        }
        Ok(true)
    }
}

/// A directory entry's type as FUSE (and `d_type`) has it.
fn dirent_type(k: Kind) -> u32 {
    match k {
        Kind::RegularFile => libc::DT_REG as u32,
        Kind::Directory => libc::DT_DIR as u32,
        Kind::Symlink => libc::DT_LNK as u32,
        Kind::Fifo => libc::DT_FIFO as u32,
        Kind::Socket => libc::DT_SOCK as u32,
        Kind::CharacterDevice => libc::DT_CHR as u32,
        Kind::BlockDevice => libc::DT_BLK as u32,
        _ => libc::DT_UNKNOWN as u32,
    }
}

impl AsFd for Node {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
pub(crate) mod tests;
