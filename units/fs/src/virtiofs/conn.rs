//! The connection to the host: FUSE requests and their replies, what the
//! host's LOOKUPs said (kept while it allows), and the nodes to forget.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use fuse_abi::linux as abi;
use zerocopy::{FromBytes, IntoBytes};

use super::{CACHE_MAX, Channel, FORGET_BATCH, OUT_HEADER, ROOT};
use crate::error::{Error, Result};
use crate::lock::Mutex;
use crate::path::FsPath;
use crate::vfs::{FileType, Metadata};

/// An errno from the host, as the unit says it.
pub(super) fn errno(e: i32) -> Error {
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

pub(super) fn file_type(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Dir,
        S_IFREG => FileType::File,
        S_IFLNK => FileType::Symlink,
        _ => FileType::Other,
    }
}

pub(super) fn meta(a: &abi::fuse_attr, read_only: bool) -> Metadata {
    Metadata { file_type: file_type(a.mode), len: a.size, modified: Some(a.mtime), read_only }
}

/// A name with its terminating NUL.
pub(super) fn cname(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v
}

/// A node the host handed out, held once (one LOOKUP's count); when the
/// last holder lets go it is forgotten with the next request.
pub(super) struct Node {
    pub(super) id: u64,
    pub(super) forgets: Arc<Mutex<Vec<u64>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.id != ROOT {
            self.forgets.lock().push(self.id);
        }
    }
}

pub(super) type NodeRef = Arc<Node>;

/// What a LOOKUP said, while the host lets it be trusted.
struct Cached {
    node: NodeRef,
    attr: abi::fuse_attr,
    /// Until when (the clock's nanoseconds) the name means this node.
    entry_until: u64,
    /// Until when the attributes hold.
    attr_until: u64,
    /// When it was last used (a counter), for eviction.
    used: u64,
}

#[derive(Default)]
pub(super) struct Cache {
    map: BTreeMap<(u64, String), Cached>,
    tick: u64,
}

pub(super) struct Conn {
    pub(super) ch: Mutex<Box<dyn Channel>>,
    pub(super) unique: AtomicU64,
    pub(super) max_write: u32,
    pub(super) read_only: bool,
    pub(super) root: NodeRef,
    /// Nodes to forget with the next request.
    pub(super) forgets: Arc<Mutex<Vec<u64>>>,
    pub(super) cache: Mutex<Cache>,
    /// Monotonic nanoseconds; without a clock nothing is cached.
    pub(super) clock: Option<fn() -> Option<u64>>,
}

impl Conn {
    pub(super) fn header(
        &self,
        opcode: abi::fuse_opcode,
        nodeid: u64,
        body_len: usize,
    ) -> abi::fuse_in_header {
        let unique = self.unique.fetch_add(1, Ordering::Relaxed) + 1;
        abi::fuse_in_header {
            len: (40 + body_len) as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        }
    }

    /// Post the pending FORGETs on `ch`.
    pub(super) fn post_forgets(&self, ch: &mut Box<dyn Channel>) -> Result<()> {
        let nodes = core::mem::take(&mut *self.forgets.lock());
        for batch in nodes.chunks(FORGET_BATCH) {
            let b = abi::fuse_batch_forget_in { count: batch.len() as u32, dummy: 0 };
            let h = self.header(abi::fuse_opcode::FUSE_BATCH_FORGET, 0, 8 + 16 * batch.len());
            let mut req = Vec::with_capacity(h.len as usize);
            req.extend_from_slice(h.as_bytes());
            req.extend_from_slice(b.as_bytes());
            for &n in batch {
                req.extend_from_slice(abi::fuse_forget_one { nodeid: n, nlookup: 1 }.as_bytes());
            }
            ch.post(req.into_boxed_slice(), 0)?;
        }
        Ok(())
    }

    /// One request: `opcode` on `nodeid` with `body`; the reply's body goes
    /// into `reply` (sized for the largest reply); its length.
    pub(super) fn call(
        &self,
        opcode: abi::fuse_opcode,
        nodeid: u64,
        body: &[&[u8]],
        reply: &mut [u8],
    ) -> Result<usize> {
        let h = self.header(opcode, nodeid, body.iter().map(|b| b.len()).sum());
        let mut inputs: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
        inputs.push(h.as_bytes());
        inputs.extend(body.iter().copied().filter(|b| !b.is_empty()));
        let mut out = [0u8; OUT_HEADER];
        let got = {
            let mut outputs: [&mut [u8]; 2] = [&mut out, reply];
            let outputs: &mut [&mut [u8]] =
                if outputs[1].is_empty() { &mut outputs[..1] } else { &mut outputs[..] };
            let mut ch = self.ch.lock();
            self.post_forgets(&mut ch)?;
            ch.request(&inputs, outputs)?
        };
        let o = abi::fuse_out_header::read_from_bytes(&out)
            .map_err(|_| Error::Io(String::from("short reply")))?;
        if got < OUT_HEADER || o.unique != h.unique {
            return Err(Error::Io(String::from("the host's reply does not match the request")));
        }
        if o.error != 0 {
            return Err(errno(-o.error));
        }
        Ok((o.len as usize).saturating_sub(OUT_HEADER).min(got - OUT_HEADER))
    }

    /// Post `opcode` on `nodeid` with `body`, whose reply (a bare header)
    /// nobody reads.
    pub(super) fn post(&self, opcode: abi::fuse_opcode, nodeid: u64, body: &[u8]) {
        let h = self.header(opcode, nodeid, body.len());
        let mut req = Vec::with_capacity(h.len as usize);
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(body);
        let mut ch = self.ch.lock();
        // A request that cannot be posted is as good as answered: these
        // only let the host free what it holds.
        let _ = self.post_forgets(&mut ch);
        let _ = ch.post(req.into_boxed_slice(), OUT_HEADER);
    }

    /// Deliver everything posted (at exit, and on `sync`).
    pub(super) fn flush(&self) -> Result<()> {
        let mut ch = self.ch.lock();
        self.post_forgets(&mut ch)?;
        ch.flush()
    }

    pub(super) fn now(&self) -> Option<u64> {
        self.clock.and_then(|c| c())
    }

    pub(super) fn node(&self, id: u64) -> NodeRef {
        Arc::new(Node { id, forgets: self.forgets.clone() })
    }

    /// `name` in the directory `parent`: its node and attributes, from
    /// the cache while the host's word holds.
    pub(super) fn lookup(&self, parent: &NodeRef, name: &str) -> Result<(NodeRef, abi::fuse_attr)> {
        let now = self.now();
        if let Some(now) = now {
            let mut cache = self.cache.lock();
            cache.tick += 1;
            let tick = cache.tick;
            if let Some(c) = cache.map.get_mut(&(parent.id, String::from(name)))
                && now < c.entry_until
            {
                c.used = tick;
                let node = c.node.clone();
                if now < c.attr_until {
                    return Ok((node, c.attr));
                }
                drop(cache);
                let a = self.getattr_out(node.id, None)?;
                self.remember_attr(node.id, &a.attr, until(now, a.attr_valid, a.attr_valid_nsec));
                return Ok((node, a.attr));
            }
        }
        let mut e = abi::fuse_entry_out::default();
        self.call(abi::fuse_opcode::FUSE_LOOKUP, parent.id, &[&cname(name)], e.as_mut_bytes())?;
        if e.nodeid == 0 {
            // A negative entry: the host says there is no such name.
            return Err(Error::NotFound);
        }
        let node = self.node(e.nodeid);
        self.remember(parent.id, name, &node, &e);
        Ok((node, e.attr))
    }

    /// Keep what a LOOKUP (or CREATE, MKDIR) said about `name`.
    pub(super) fn remember(&self, parent: u64, name: &str, node: &NodeRef, e: &abi::fuse_entry_out) {
        let Some(now) = self.now() else { return };
        if e.entry_valid == 0 && e.entry_valid_nsec == 0 {
            return;
        }
        let mut cache = self.cache.lock();
        if cache.map.len() >= CACHE_MAX {
            // The least recently used goes (its node is forgotten once
            // nobody else holds it).
            if let Some(k) = cache.map.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone()) {
                cache.map.remove(&k);
            }
        }
        cache.tick += 1;
        let c = Cached {
            node: node.clone(),
            attr: e.attr,
            entry_until: until(now, e.entry_valid, e.entry_valid_nsec),
            attr_until: until(now, e.attr_valid, e.attr_valid_nsec),
            used: cache.tick,
        };
        cache.map.insert((parent, String::from(name)), c);
    }

    /// New attributes for `node` wherever it is cached.
    pub(super) fn remember_attr(&self, node: u64, attr: &abi::fuse_attr, until: u64) {
        for c in self.cache.lock().map.values_mut().filter(|c| c.node.id == node) {
            c.attr = *attr;
            c.attr_until = until;
        }
    }

    /// `node` changed (written, cut, a name added or removed in it): its
    /// cached attributes no longer hold.
    pub(super) fn stale(&self, node: u64) {
        for c in self.cache.lock().map.values_mut().filter(|c| c.node.id == node) {
            c.attr_until = 0;
        }
    }

    /// `name` in `parent` no longer means what the cache says.
    pub(super) fn forget_name(&self, parent: &NodeRef, name: &str) {
        let gone = self.cache.lock().map.remove(&(parent.id, String::from(name)));
        drop(gone);
        self.stale(parent.id);
    }

    /// The node of `path` and its attributes.
    pub(super) fn walk(&self, path: &FsPath) -> Result<(NodeRef, abi::fuse_attr)> {
        let mut at = (self.root.clone(), None);
        for c in path.components() {
            let (node, attr) = self.lookup(&at.0, c)?;
            at = (node, Some(attr));
        }
        let attr = match at.1 {
            Some(a) => a,
            None => self.getattr(ROOT, None)?,
        };
        Ok((at.0, attr))
    }

    pub(super) fn getattr(&self, node: u64, fh: Option<u64>) -> Result<abi::fuse_attr> {
        self.getattr_out(node, fh).map(|a| a.attr)
    }

    pub(super) fn getattr_out(&self, node: u64, fh: Option<u64>) -> Result<abi::fuse_attr_out> {
        let g =
            abi::fuse_getattr_in { getattr_flags: u32::from(fh.is_some()), dummy: 0, fh: fh.unwrap_or(0) };
        let mut a = abi::fuse_attr_out::default();
        self.call(abi::fuse_opcode::FUSE_GETATTR, node, &[g.as_bytes()], a.as_mut_bytes())?;
        Ok(a)
    }

    /// Run `f` with the node of `path`'s parent and `path`'s name.
    pub(super) fn in_parent<T>(
        &self,
        path: &FsPath,
        f: impl FnOnce(&NodeRef, &str) -> Result<T>,
    ) -> Result<T> {
        let (dir, name) = path.split_last().ok_or(Error::PermissionDenied)?;
        if dir.is_root() {
            // The share's root is a directory: no GETATTR to learn that.
            return f(&self.root, name);
        }
        let (node, a) = self.walk(&dir)?;
        if file_type(a.mode) != FileType::Dir {
            return Err(Error::NotADirectory);
        }
        f(&node, name)
    }
}

/// `now` (ns) plus a validity the host gave in seconds and nanoseconds.
fn until(now: u64, secs: u64, nsec: u32) -> u64 {
    now.saturating_add(secs.saturating_mul(1_000_000_000)).saturating_add(u64::from(nsec))
}

#[cfg(test)]
mod tests {
    use super::until;

    #[test]
    fn validity_counts_to_the_nanosecond_and_saturates() {
        // One second after 0.9 s holds until 1.9 s, not until a second
        // boundary.
        assert_eq!(until(900_000_000, 1, 0), 1_900_000_000);
        assert_eq!(until(0, 0, 250), 250);
        assert_eq!(until(u64::MAX - 1, 1, 0), u64::MAX);
        assert_eq!(until(1, u64::MAX, u32::MAX), u64::MAX);
    }
}
