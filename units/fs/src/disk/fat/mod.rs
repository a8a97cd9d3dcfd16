//! FAT12/16/32, read and write, long names included.
//!
//! Written here rather than taken from a crate: of the `no_std` FAT crates
//! that build on stable Rust, `embedded-sdmmc` creates 8.3 names only,
//! needs an MBR and has no FAT12; `fatfs` needs nightly (0.3) or is
//! unreleased (0.4); `hadris-fat` 1.2 panics looking up a directory that
//! holds a legal CP437 8.3 name (common for `café.txt`), gave two files the
//! same 8.3 name, and left an end mark before the entries it added (both
//! seen here), and none can be shared between threads without `unsafe`.
//!
//! - [`bpb`]: the boot sector, checked. [`table`]: the FAT, chains with a
//!   bound, allocation, FSInfo. [`dir`]: directory slots, long names,
//!   unique 8.3 names. [`time`]: FAT's dates.
//! - Everything goes through the disk's extent cache; one lock per
//!   filesystem orders every operation; a generation number tells open
//!   files when the tree changed.

pub mod bpb;
pub mod dir;
pub mod table;
pub mod time;

pub use time::set_clock;

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::Volume;
use crate::error::{Error, Result};
use crate::lock::Mutex;
use crate::path::FsPath;
use crate::vfs::{Entry, FileHandle, FileSystem, FileType, Metadata, OpenFlags};
use bpb::Layout;
use dir::{ATTR_DIR, ATTR_FILE, DirEnt, SLOT};
use table::{Alloc, Table};

/// FAT's limit: 65,536 slots in a directory.
const DIR_MAX: usize = 65_536 * SLOT;

/// What a path names.
#[derive(Clone, Debug)]
enum Node {
    Root,
    /// An entry, and the first cluster of the directory holding it (0:
    /// the root).
    Ent(u32, DirEnt),
}

struct State {
    alloc: Alloc,
    /// Bumped by every change to the tree or to a chain.
    generation: u64,
}

struct Inner {
    vol: Volume,
    l: Layout,
    state: Mutex<State>,
}

/// A FAT filesystem on a volume.
#[derive(Clone)]
pub struct FatFs {
    inner: Arc<Inner>,
}

/// A directory's bytes and, for a directory in clusters, its chain.
struct DirData {
    /// First cluster (0: the root).
    first: u32,
    raw: Vec<u8>,
    chain: Vec<u32>,
}

impl FatFs {
    /// The filesystem on `vol` (its boot sector checked).
    pub fn new(vol: Volume) -> Result<Self> {
        let mut b = vec![0u8; 512];
        vol.read_at(0, &mut b)?;
        let l = Layout::parse(&b, vol.len())?;
        let alloc = table::read_fsinfo(&vol, &l);
        let fs =
            Self { inner: Arc::new(Inner { vol, l, state: Mutex::new(State { alloc, generation: 0 }) }) };
        // The root must be readable.
        fs.dir(0)?;
        Ok(fs)
    }

    fn table(&self) -> Table<'_> {
        Table { vol: &self.inner.vol, l: &self.inner.l }
    }

    /// The directory whose first cluster is `first` (0: the root).
    fn dir(&self, first: u32) -> Result<DirData> {
        let l = &self.inner.l;
        if first == 0
            && let Some((at, len)) = l.fixed_root
        {
            let mut raw = vec![0u8; len.min(DIR_MAX as u64) as usize];
            self.inner.vol.read_at(at, &mut raw)?;
            return Ok(DirData { first, raw, chain: Vec::new() });
        }
        let start = if first == 0 { l.root_cluster } else { first };
        let chain = self.table().chain(start)?;
        if chain.len() as u64 * l.cluster > DIR_MAX as u64 {
            return Err(Error::Corrupt(format!("directory at cluster {start} is larger than FAT allows")));
        }
        let mut raw = vec![0u8; chain.len() * l.cluster as usize];
        for (k, &c) in chain.iter().enumerate() {
            let at = l.at(c, 0).ok_or_else(|| Error::Corrupt(format!("cluster {c}")))?;
            self.inner.vol.read_at(at, &mut raw[k * l.cluster as usize..(k + 1) * l.cluster as usize])?;
        }
        Ok(DirData { first, raw, chain })
    }

    /// The volume offset of slot `slot` of `d`.
    fn slot_at(&self, d: &DirData, slot: usize) -> Result<u64> {
        let l = &self.inner.l;
        let byte = (slot * SLOT) as u64;
        match (d.first, l.fixed_root) {
            (0, Some((at, len))) if byte + SLOT as u64 <= len => Ok(at + byte),
            (0, Some(_)) => Err(Error::NoSpace),
            _ => {
                let c = d.chain.get((byte / l.cluster) as usize).ok_or(Error::NoSpace)?;
                l.at(*c, byte % l.cluster).ok_or_else(|| Error::Corrupt(format!("cluster {c}")))
            }
        }
    }

    /// Write `slots` into `d` from slot `at` on (in memory too).
    fn write_slots(&self, d: &mut DirData, at: usize, slots: &[[u8; SLOT]]) -> Result<()> {
        for (k, s) in slots.iter().enumerate() {
            let off = self.slot_at(d, at + k)?;
            self.inner.vol.write_at(off, s)?;
            d.raw[(at + k) * SLOT..(at + k + 1) * SLOT].copy_from_slice(s);
        }
        Ok(())
    }

    /// What `path` names, walking its directories.
    fn walk(&self, path: &FsPath) -> Result<Node> {
        let mut node = Node::Root;
        for c in path.components() {
            let first = match &node {
                Node::Root => 0,
                Node::Ent(_, e) if e.is_dir() && e.first >= 2 => e.first,
                Node::Ent(_, e) if e.is_dir() => {
                    return Err(Error::Corrupt(format!("directory '{}' has no cluster", e.name)));
                }
                Node::Ent(..) => return Err(Error::NotADirectory),
            };
            let entries = dir::parse(&self.dir(first)?.raw);
            node = Node::Ent(first, dir::find(&entries, c).cloned().ok_or(Error::NotFound)?);
        }
        Ok(node)
    }

    /// The first cluster of the directory `path` names (0: the root).
    fn dir_first(&self, path: &FsPath) -> Result<u32> {
        match self.walk(path)? {
            Node::Root => Ok(0),
            Node::Ent(_, e) if e.is_dir() => Ok(e.first),
            Node::Ent(..) => Err(Error::NotADirectory),
        }
    }

    /// Add an entry named `name` to directory `parent`, growing it when
    /// there is no room; returns it as parsed back.
    fn add(&self, a: &mut Alloc, parent: u32, name: &str, attr: u8, first: u32, size: u32) -> Result<DirEnt> {
        let mut d = self.dir(parent)?;
        let entries = dir::parse(&d.raw);
        if dir::find(&entries, name).is_some() {
            return Err(Error::AlreadyExists);
        }
        let slots = dir::slots_for(name, &entries, attr, first, size, time::now())?;
        let at = match dir::place(&d.raw, slots.len()) {
            Ok(at) => at,
            Err(at) => {
                if d.chain.is_empty() {
                    return Err(Error::NoSpace);
                }
                // Grow by whole clusters, zeroed, so the run continues
                // into them (no end mark left before the new slots).
                let per = (self.inner.l.cluster as usize) / SLOT;
                let have = d.raw.len() / SLOT;
                let more = (at + slots.len() + 1).saturating_sub(have).div_ceil(per);
                if (have + more * per) * SLOT > DIR_MAX {
                    return Err(Error::NoSpace);
                }
                let new = self.table().alloc(a, d.chain.last().copied(), more)?;
                for &c in &new {
                    self.zero_cluster(c)?;
                }
                d.chain.extend(new);
                d.raw.resize(d.chain.len() * self.inner.l.cluster as usize, 0);
                at
            }
        };
        let end = at + slots.len();
        // A run placed at the end mark: the slot after it must stay an end
        // mark (it may hold stale bytes past the old one).
        let after_end = d.raw.get(at * SLOT).is_some_and(|&b| b == 0);
        self.write_slots(&mut d, at, &slots)?;
        if after_end && end * SLOT < d.raw.len() && d.raw[end * SLOT] != 0 {
            self.write_slots(&mut d, end, &[[0u8; SLOT]])?;
        }
        dir::parse(&d.raw)
            .into_iter()
            .find(|e| e.slot == end - 1)
            .ok_or_else(|| Error::Corrupt(String::from("a new directory entry did not read back")))
    }

    /// Mark the slots of `e` (its long-name pieces too) deleted.
    fn unlink(&self, parent: u32, e: &DirEnt) -> Result<()> {
        let mut d = self.dir(parent)?;
        for slot in e.slot - e.lfn..=e.slot {
            let mut s = [0u8; SLOT];
            s.copy_from_slice(&d.raw[slot * SLOT..(slot + 1) * SLOT]);
            s[0] = 0xe5;
            self.write_slots(&mut d, slot, &[s])?;
        }
        Ok(())
    }

    /// Set the first cluster and size of `e` (and stamp its time).
    fn update(&self, parent: u32, e: &DirEnt, first: u32, size: u32) -> Result<()> {
        let mut d = self.dir(parent)?;
        let mut s = [0u8; SLOT];
        s.copy_from_slice(&d.raw[e.slot * SLOT..(e.slot + 1) * SLOT]);
        dir::update_slot(&mut s, first, size, time::now());
        self.write_slots(&mut d, e.slot, &[s])
    }

    fn zero_cluster(&self, c: u32) -> Result<()> {
        let l = &self.inner.l;
        let at = l.at(c, 0).ok_or_else(|| Error::Corrupt(format!("cluster {c}")))?;
        self.inner.vol.write_at(at, &vec![0u8; l.cluster as usize])
    }

    /// Write `data` (or zeros, `len` bytes, with `None`) at byte `offset`
    /// of the file whose clusters are `chain`.
    fn file_io(
        &self,
        chain: &[u32],
        offset: u64,
        len: usize,
        mut io: impl FnMut(u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let l = &self.inner.l;
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let c = *chain
                .get((pos / l.cluster) as usize)
                .ok_or_else(|| Error::Corrupt(String::from("a cluster chain shorter than its file")))?;
            let within = pos % l.cluster;
            // The run of clusters that follow each other on the disk, so a
            // contiguous file is one request per run, not per cluster.
            let first = (pos / l.cluster) as usize;
            let mut span = 1;
            while chain.get(first + span).is_some_and(|&next| u64::from(next) == u64::from(c) + span as u64)
                && (span as u64) * l.cluster < (len - done) as u64 + within
            {
                span += 1;
            }
            let n = (len - done).min((span as u64 * l.cluster - within) as usize);
            let at = l.at(c, within).ok_or_else(|| Error::Corrupt(format!("cluster {c}")))?;
            io(at, done, n)?;
            done += n;
        }
        Ok(())
    }

    fn meta(&self, node: &Node) -> Metadata {
        let read_only = self.read_only();
        match node {
            Node::Root => Metadata { file_type: FileType::Dir, len: 0, modified: None, read_only },
            Node::Ent(_, e) => Metadata {
                file_type: if e.is_dir() { FileType::Dir } else { FileType::File },
                len: if e.is_dir() { 0 } else { u64::from(e.size) },
                modified: time::from_fat(e.modified),
                read_only,
            },
        }
    }

    /// The file `path` names, with its directory and chain.
    fn file(&self, path: &FsPath) -> Result<(u32, DirEnt, Vec<u32>)> {
        match self.walk(path)? {
            Node::Ent(parent, e) if !e.is_dir() => {
                let chain = self.table().chain(e.first)?;
                let need = u64::from(e.size).div_ceil(self.inner.l.cluster) as usize;
                if chain.len() < need {
                    return Err(Error::Corrupt(format!(
                        "'{}': {} clusters for {} bytes",
                        e.name,
                        chain.len(),
                        e.size
                    )));
                }
                Ok((parent, e, chain))
            }
            _ => Err(Error::IsADirectory),
        }
    }

    /// Make the file at `path` `len` bytes long (cut, or grown with
    /// zeros), under the lock.
    fn resize(&self, st: &mut State, path: &FsPath, len: u64) -> Result<()> {
        let (parent, e, mut chain) = self.file(path)?;
        let len32 = u32::try_from(len).map_err(|_| Error::NoSpace)?;
        let size = u64::from(e.size);
        let need = len.div_ceil(self.inner.l.cluster) as usize;
        if need < chain.len() {
            self.table().free(&mut st.alloc, &chain[need..])?;
            if need > 0 {
                self.table().set(chain[need - 1], self.table().eoc())?;
            }
            chain.truncate(need);
        } else if need > chain.len() {
            let new = self.table().alloc(&mut st.alloc, chain.last().copied(), need - chain.len())?;
            chain.extend(new);
        }
        if len > size {
            let vol = &self.inner.vol;
            let zeros = vec![0u8; self.inner.l.cluster as usize];
            // A run may span clusters: zeros a cluster at a time.
            self.file_io(&chain, size, (len - size) as usize, |at, _, n| {
                let mut done = 0;
                while done < n {
                    let k = (n - done).min(zeros.len());
                    vol.write_at(at + done as u64, &zeros[..k])?;
                    done += k;
                }
                Ok(())
            })?;
        }
        st.generation += 1;
        self.update(parent, &e, chain.first().copied().unwrap_or(0), len32)
    }
}

/// An open file. What it knows of its place is checked again whenever the
/// filesystem changed since.
struct Handle {
    fs: FatFs,
    path: FsPath,
    writable: bool,
    /// `(generation, size, chain)` as last seen.
    seen: Option<(u64, u32, Vec<u32>)>,
}

impl Handle {
    fn current(&mut self, st: &State) -> Result<(u32, &[u32])> {
        if self.seen.as_ref().is_none_or(|s| s.0 != st.generation) {
            let (_, e, chain) = self.fs.file(&self.path)?;
            self.seen = Some((st.generation, e.size, chain));
        }
        let s = self.seen.as_ref().map(|s| (s.1, s.2.as_slice()));
        s.ok_or(Error::NotFound)
    }
}

impl FileHandle for Handle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let fs = self.fs.clone();
        let st = fs.inner.state.lock();
        let (size, chain) = self.current(&st)?;
        if offset >= u64::from(size) || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min((u64::from(size) - offset) as usize);
        let vol = &fs.inner.vol;
        fs.file_io(chain, offset, n, |at, done, k| vol.read_at(at, &mut buf[done..done + k]))?;
        Ok(n)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<usize> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= u64::from(u32::MAX))
            .ok_or(Error::NoSpace)?;
        let fs = self.fs.clone();
        let mut st = fs.inner.state.lock();
        let (size, _) = self.current(&st)?;
        if end > u64::from(size) {
            // Grow first (zeros up to `offset`), then write over.
            fs.resize(&mut st, &self.path, end)?;
        }
        let (_, chain) = self.current(&st)?;
        let vol = &fs.inner.vol;
        fs.file_io(chain, offset, buf.len(), |at, done, k| vol.write_at(at, &buf[done..done + k]))?;
        if end <= u64::from(size) {
            // Stamp the time of a write inside the file.
            let (parent, e, chain) = fs.file(&self.path)?;
            fs.update(parent, &e, chain.first().copied().unwrap_or(0), e.size)?;
        }
        Ok(buf.len())
    }

    fn metadata(&mut self) -> Result<Metadata> {
        let fs = self.fs.clone();
        let _st = fs.inner.state.lock();
        let node = fs.walk(&self.path)?;
        let mut m = fs.meta(&node);
        m.read_only |= !self.writable;
        Ok(m)
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let fs = self.fs.clone();
        let mut st = fs.inner.state.lock();
        fs.resize(&mut st, &self.path, len)
    }

    fn sync(&mut self) -> Result<()> {
        self.fs.sync()
    }
}

impl FileSystem for FatFs {
    fn kind(&self) -> &'static str {
        "fat"
    }

    fn read_only(&self) -> bool {
        self.inner.vol.read_only()
    }

    fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        let _st = self.inner.state.lock();
        Ok(self.meta(&self.walk(path)?))
    }

    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>> {
        if flags.changes() && self.read_only() {
            return Err(Error::ReadOnly);
        }
        let mut st = self.inner.state.lock();
        match self.walk(path) {
            Ok(_) if flags.create_new => return Err(Error::AlreadyExists),
            Ok(Node::Root) => return Err(Error::IsADirectory),
            Ok(Node::Ent(_, e)) if e.is_dir() => return Err(Error::IsADirectory),
            Ok(Node::Ent(..)) => {
                if flags.truncate {
                    self.resize(&mut st, path, 0)?;
                }
            }
            Err(Error::NotFound) if flags.create => {
                let (dir, name) = path.split_last().ok_or(Error::InvalidPath)?;
                let parent = self.dir_first(&dir)?;
                self.add(&mut st.alloc, parent, name, ATTR_FILE, 0, 0)?;
                st.generation += 1;
            }
            Err(e) => return Err(e),
        }
        Ok(Box::new(Handle { fs: self.clone(), path: path.clone(), writable: flags.write, seen: None }))
    }

    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>> {
        let _st = self.inner.state.lock();
        let first = self.dir_first(path)?;
        Ok(dir::parse(&self.dir(first)?.raw)
            .into_iter()
            .map(|e| Entry {
                file_type: if e.is_dir() { FileType::Dir } else { FileType::File },
                name: e.name,
            })
            .collect())
    }

    fn create_dir(&self, path: &FsPath) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        let (parent_path, name) = path.split_last().ok_or(Error::AlreadyExists)?;
        let mut st = self.inner.state.lock();
        let parent = self.dir_first(&parent_path)?;
        let c = self.table().alloc(&mut st.alloc, None, 1)?;
        self.zero_cluster(c[0])?;
        let t = time::now();
        let dots = [
            dir::short_slot(*b".          ", 0, ATTR_DIR, c[0], 0, t),
            dir::short_slot(*b"..         ", 0, ATTR_DIR, parent, 0, t),
        ];
        let mut d = DirData { first: c[0], raw: vec![0u8; self.inner.l.cluster as usize], chain: c.clone() };
        let made = self
            .write_slots(&mut d, 0, &dots)
            .and_then(|_| self.add(&mut st.alloc, parent, name, ATTR_DIR, c[0], 0));
        if let Err(e) = made {
            self.table().free(&mut st.alloc, &c)?;
            return Err(e);
        }
        st.generation += 1;
        Ok(())
    }

    fn remove_file(&self, path: &FsPath) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        let mut st = self.inner.state.lock();
        let (parent, e, chain) = self.file(path)?;
        self.unlink(parent, &e)?;
        self.table().free(&mut st.alloc, &chain)?;
        st.generation += 1;
        Ok(())
    }

    fn remove_dir(&self, path: &FsPath) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        let mut st = self.inner.state.lock();
        let (parent, e) = match self.walk(path)? {
            Node::Ent(p, e) if e.is_dir() => (p, e),
            Node::Ent(..) => return Err(Error::NotADirectory),
            Node::Root => return Err(Error::PermissionDenied),
        };
        let d = self.dir(e.first)?;
        if !dir::parse(&d.raw).is_empty() {
            return Err(Error::DirectoryNotEmpty);
        }
        self.unlink(parent, &e)?;
        self.table().free(&mut st.alloc, &d.chain)?;
        st.generation += 1;
        Ok(())
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        let (to_dir, name) = to.split_last().ok_or(Error::InvalidPath)?;
        dir::check_long(name)?;
        let mut st = self.inner.state.lock();
        let Node::Ent(src_parent, src) = self.walk(from)? else { return Err(Error::PermissionDenied) };
        let dst_parent = self.dir_first(&to_dir)?;
        // Replacing a file, as POSIX rename does.
        match self.walk(to) {
            Ok(Node::Ent(_, old)) if old.slot == src.slot && src_parent == dst_parent => {}
            Ok(Node::Ent(p, old)) => {
                if old.is_dir() || src.is_dir() {
                    return Err(Error::AlreadyExists);
                }
                let chain = self.table().chain(old.first)?;
                self.unlink(p, &old)?;
                self.table().free(&mut st.alloc, &chain)?;
            }
            Ok(Node::Root) => return Err(Error::PermissionDenied),
            Err(Error::NotFound) => {}
            Err(e) => return Err(e),
        }
        // Out of the old place, into the new: the slots come back if the
        // new place cannot take the entry.
        let before = self.dir(src_parent)?;
        self.unlink(src_parent, &src)?;
        if let Err(e) = self.add(&mut st.alloc, dst_parent, name, src.attr, src.first, src.size) {
            let mut d = self.dir(src_parent)?;
            let first = src.slot - src.lfn;
            let mut old = Vec::new();
            for slot in first..=src.slot {
                let mut s = [0u8; SLOT];
                s.copy_from_slice(&before.raw[slot * SLOT..(slot + 1) * SLOT]);
                old.push(s);
            }
            self.write_slots(&mut d, first, &old)?;
            return Err(e);
        }
        // A directory that moved has a new parent: its `..`.
        if src.is_dir() && src_parent != dst_parent && src.first >= 2 {
            let mut d = self.dir(src.first)?;
            let mut s = [0u8; SLOT];
            s.copy_from_slice(&d.raw[SLOT..2 * SLOT]);
            if s[..2] == *b".." {
                let t = dir::parse(&[]).first().map(|e| e.modified).unwrap_or(time::now());
                dir::update_slot(&mut s, dst_parent, 0, t);
                self.write_slots(&mut d, 1, &[s])?;
            }
        }
        st.generation += 1;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut st = self.inner.state.lock();
        table::write_fsinfo(&self.inner.vol, &self.inner.l, &mut st.alloc)?;
        self.inner.vol.flush()
    }
}

use alloc::string::String;
