//! ext4's paths and file data, read here rather than through `ext4-view`.
//!
//! `ext4-view` 1.0 cannot serve reads fast: its `Ext4` is not `Send`, so
//! it is loaded anew for every operation (~0.6 ms here), and its
//! `File::seek_to` walks the file's blocks from the start, so a file read
//! in windows costs time in the square of its length (256 MiB read at 344
//! MB/s, 7% of the raw disk). This module does what a read needs and no
//! more: it resolves a path by scanning directory blocks, reads the
//! inode's extent tree once when a file is opened, then reads the data by
//! extent straight from the volume (large pieces go past the disk cache to
//! the device).
//!
//! It is used only where it is sure to read what `ext4-view` would
//! ([`Layout::read`] says when): no journal waiting to be replayed, no
//! `meta_bg` or case-folding, and per inode extents without inline data or
//! encryption. Anywhere else, and for symbolic links, the unit falls back
//! to `ext4-view`, which also checks the filesystem when it is mounted.
//! Every number read from the disk is bounds-checked: a corrupt image is a
//! `Corrupt` error, never a panic or an endless loop.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use super::super::Volume;
use crate::error::{Error, Result};
use crate::path::FsPath;
use crate::vfs::{Entry, FileType, Metadata};

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CASEFOLD: u32 = 0x2_0000;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const ENCRYPT_FL: u32 = 0x800;
const S_IFMT: u16 = 0o170_000;
const S_IFDIR: u16 = 0o040_000;
const S_IFREG: u16 = 0o100_000;
const S_IFLNK: u16 = 0o120_000;
const ROOT_INODE: u32 = 2;
const EXTENT_MAGIC: u16 = 0xf30a;
/// Deepest extent tree followed (ext4 makes at most 5 levels).
const MAX_DEPTH: u16 = 5;
/// Most extents one file may have here (a bound on memory, not on ext4).
const MAX_EXTENTS: usize = 1 << 20;

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("ext4: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// What the superblock says about where things are.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    block: u64,
    blocks: u64,
    inodes: u32,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    /// Byte offset of the group descriptor table.
    descs: u64,
    groups: u64,
    /// Directory entries carry the file type.
    filetype: bool,
    /// With metadata checksums: their seed (inodes are checked, as
    /// `ext4-view` checks them).
    csum_seed: Option<u32>,
}

/// CRC-32C as ext4 chains it: the register starts at `seed` and is not
/// inverted at the end (Linux's `crc32c_le`), with the `crc` crate's
/// table (the one `ext4-view` uses).
fn crc32c(seed: u32, data: &[u8]) -> u32 {
    const RAW: crc::Algorithm<u32> = crc::Algorithm {
        width: 32,
        poly: 0x1edc_6f41,
        init: 0,
        refin: true,
        refout: true,
        xorout: 0,
        check: 0,
        residue: 0,
    };
    static CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&RAW);
    // The crate reflects the initial value of a reflected CRC.
    let mut d = CRC.digest_with_initial(seed.reverse_bits());
    d.update(data);
    d.finalize()
}

/// An inode, as far as reading needs it.
#[derive(Clone, Debug)]
pub struct Inode {
    mode: u16,
    size: u64,
    flags: u32,
    mtime: u32,
    block: [u8; 60],
}

impl Inode {
    fn kind(&self) -> u16 {
        self.mode & S_IFMT
    }

    /// Whether this module can read it (else: `ext4-view`).
    fn readable_here(&self) -> bool {
        self.flags & EXTENTS_FL != 0 && self.flags & (INLINE_DATA_FL | ENCRYPT_FL) == 0
    }

    /// Its metadata, as the unit reports it.
    pub fn metadata(&self) -> Metadata {
        let file_type = match self.kind() {
            S_IFDIR => FileType::Dir,
            S_IFREG => FileType::File,
            S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        };
        Metadata { file_type, len: self.size, modified: Some(u64::from(self.mtime)), read_only: true }
    }
}

/// A run of a file's blocks: `len` blocks from file block `logical` are at
/// volume block `physical` (zeros when `unwritten`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    logical: u64,
    physical: u64,
    len: u64,
    unwritten: bool,
}

/// What a path leads to here.
pub enum Found {
    /// An inode this module reads.
    Inode(Inode),
    /// Something on the way this module leaves to `ext4-view` (a symbolic
    /// link, inline data, encryption).
    Elsewhere,
}

impl Layout {
    /// The layout of the ext4 filesystem on `vol`, or `None` when this
    /// module must leave it to `ext4-view` (a journal to replay, `meta_bg`,
    /// case-folding, an odd size).
    pub fn read(vol: &Volume) -> Result<Option<Self>> {
        let mut sb = vec![0u8; 1024];
        vol.read_at(1024, &mut sb)?;
        if u16_at(&sb, 0x38) != 0xef53 {
            return Err(corrupt("no superblock"));
        }
        let incompat = u32_at(&sb, 0x60);
        if incompat & (INCOMPAT_RECOVER | INCOMPAT_META_BG | INCOMPAT_CASEFOLD) != 0 {
            return Ok(None);
        }
        let log = u32_at(&sb, 0x18);
        if log > 6 {
            return Ok(None);
        }
        let block = 1024u64 << log;
        let mut blocks = u64::from(u32_at(&sb, 0x04));
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            blocks |= u64::from(u32_at(&sb, 0x150)) << 32;
            u64::from(u16_at(&sb, 0xfe))
        } else {
            32
        };
        let inode_size = if u32_at(&sb, 0x4c) == 0 { 128 } else { u64::from(u16_at(&sb, 0x58)) };
        let (per_group, inodes_per_group) = (u64::from(u32_at(&sb, 0x20)), u32_at(&sb, 0x28));
        let first = u64::from(u32_at(&sb, 0x14));
        let csum_seed = (u32_at(&sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 { u32_at(&sb, 0x270) } else { crc32c(!0, &sb[0x68..0x78]) }
        });
        if !(32..=1024).contains(&desc_size)
            || !(128..=block).contains(&inode_size)
            || per_group == 0
            || inodes_per_group == 0
            || blocks <= first
        {
            return Ok(None);
        }
        Ok(Some(Self {
            block,
            blocks,
            inodes: u32_at(&sb, 0x00),
            inodes_per_group,
            inode_size,
            desc_size,
            descs: (first + 1) * block,
            groups: (blocks - first).div_ceil(per_group),
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            csum_seed,
        }))
    }

    /// Inode `ino`.
    pub fn inode(&self, vol: &Volume, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.inodes {
            return Err(corrupt(&format!("inode number {ino}")));
        }
        let (group, index) =
            (u64::from((ino - 1) / self.inodes_per_group), u64::from((ino - 1) % self.inodes_per_group));
        if group >= self.groups {
            return Err(corrupt(&format!("inode {ino} in group {group}")));
        }
        let mut d = vec![0u8; self.desc_size as usize];
        vol.read_at(self.descs + group * self.desc_size, &mut d)?;
        let mut table = u64::from(u32_at(&d, 0x08));
        if self.desc_size >= 64 {
            table |= u64::from(u32_at(&d, 0x28)) << 32;
        }
        if table == 0 || table >= self.blocks {
            return Err(corrupt(&format!("the inode table of group {group}")));
        }
        let mut b = vec![0u8; self.inode_size as usize];
        vol.read_at(table * self.block + index * self.inode_size, &mut b)?;
        if let Some(seed) = self.csum_seed {
            // crc32c over the inode number, its generation and the inode
            // with its checksum fields zeroed; the high half only where
            // the inode's extra space holds it.
            let hi = self.inode_size > 128 && u16_at(&b, 0x80) >= 4;
            let stored = u32::from(u16_at(&b, 0x7c)) | if hi { u32::from(u16_at(&b, 0x82)) << 16 } else { 0 };
            let mut z = b.clone();
            z[0x7c..0x7e].fill(0);
            if hi {
                z[0x82..0x84].fill(0);
            }
            let c = crc32c(crc32c(crc32c(seed, &ino.to_le_bytes()), &b[0x64..0x68]), &z);
            if (if hi { c } else { c & 0xffff }) != stored {
                return Err(corrupt(&format!("inode {ino} fails its checksum")));
            }
        }
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[0x28..0x64]);
        let size = u64::from(u32_at(&b, 0x04)) | u64::from(u32_at(&b, 0x6c)) << 32;
        Ok(Inode { mode: u16_at(&b, 0), size, flags: u32_at(&b, 0x20), mtime: u32_at(&b, 0x10), block })
    }

    /// Every extent of `inode`, by file block.
    pub fn extents(&self, vol: &Volume, inode: &Inode) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.node(vol, &inode.block, MAX_DEPTH + 1, &mut out)?;
        out.sort_by_key(|e| e.logical);
        if out.windows(2).any(|w| w[0].logical + w[0].len > w[1].logical) {
            return Err(corrupt("extents that overlap"));
        }
        Ok(out)
    }

    /// One node of an extent tree (`bytes`, at most `depth_left` levels
    /// above the leaves).
    fn node(&self, vol: &Volume, bytes: &[u8], depth_left: u16, out: &mut Vec<Extent>) -> Result<()> {
        if u16_at(bytes, 0) != EXTENT_MAGIC {
            return Err(corrupt("an extent header"));
        }
        let (entries, depth) = (usize::from(u16_at(bytes, 2)), u16_at(bytes, 6));
        if depth >= depth_left || 12 + 12 * entries > bytes.len() {
            return Err(corrupt("an extent tree node"));
        }
        for i in 0..entries {
            let e = &bytes[12 + 12 * i..24 + 12 * i];
            if depth == 0 {
                let raw = u64::from(u16_at(e, 4));
                let (len, unwritten) = if raw > 32768 { (raw - 32768, true) } else { (raw, false) };
                let physical = u64::from(u32_at(e, 8)) | u64::from(u16_at(e, 6)) << 32;
                if physical.checked_add(len).is_none_or(|end| end > self.blocks) {
                    return Err(corrupt("an extent beyond the disk"));
                }
                if out.len() >= MAX_EXTENTS {
                    return Err(Error::Unsupported("a file of more than a million extents"));
                }
                out.push(Extent { logical: u64::from(u32_at(e, 0)), physical, len, unwritten });
            } else {
                let child = u64::from(u32_at(e, 4)) | u64::from(u16_at(e, 8)) << 32;
                if child == 0 || child >= self.blocks {
                    return Err(corrupt("an extent index"));
                }
                let mut b = vec![0u8; self.block as usize];
                vol.read_at(child * self.block, &mut b)?;
                self.node(vol, &b, depth, out)?;
            }
        }
        Ok(())
    }

    /// Call `f(inode, file_type, name)` for each entry of the directory
    /// `dir` until it returns `Some`.
    fn scan<T>(
        &self,
        vol: &Volume,
        dir: &Inode,
        mut f: impl FnMut(u32, u8, &[u8]) -> Option<T>,
    ) -> Result<Option<T>> {
        let extents = self.extents(vol, dir)?;
        // No directory is larger than the disk (a bound for corrupt sizes
        // and extents that repeat each other).
        let blocks = dir.size.div_ceil(self.block).min(self.blocks);
        let mut b = vec![0u8; self.block as usize];
        let mut budget = self.blocks;
        for e in extents.iter().filter(|e| !e.unwritten) {
            for k in 0..e.len.min(blocks.saturating_sub(e.logical)) {
                budget = budget.checked_sub(1).ok_or_else(|| corrupt("a directory larger than the disk"))?;
                vol.read_at((e.physical + k) * self.block, &mut b)?;
                let mut at = 0;
                // Each entry is at least 8 bytes long: the walk ends.
                while at + 8 <= b.len() {
                    let (ino, rec_len) = (u32_at(&b, at), usize::from(u16_at(&b, at + 4)));
                    let (name_len, kind) = (usize::from(b[at + 6]), b[at + 7]);
                    if rec_len < 8 || at + rec_len > b.len() || 8 + name_len > rec_len {
                        return Err(corrupt("a directory entry"));
                    }
                    if ino != 0
                        && let Some(t) = f(ino, kind, &b[at + 8..at + 8 + name_len])
                    {
                        return Ok(Some(t));
                    }
                    at += rec_len;
                }
            }
        }
        Ok(None)
    }

    /// The inode `path` names.
    pub fn resolve(&self, vol: &Volume, path: &FsPath) -> Result<Found> {
        let mut inode = self.inode(vol, ROOT_INODE)?;
        for name in path.components() {
            if inode.kind() == S_IFLNK || !inode.readable_here() {
                return Ok(Found::Elsewhere);
            }
            if inode.kind() != S_IFDIR {
                return Err(Error::NotADirectory);
            }
            let ino = self.scan(vol, &inode, |ino, _, n| (n == name.as_bytes()).then_some(ino))?;
            inode = self.inode(vol, ino.ok_or(Error::NotFound)?)?;
        }
        if inode.kind() == S_IFLNK || (inode.kind() != S_IFDIR && inode.kind() != S_IFREG) {
            return Ok(Found::Elsewhere);
        }
        Ok(if inode.readable_here() { Found::Inode(inode) } else { Found::Elsewhere })
    }

    /// The entries of the directory `dir` (without `.` and `..`), where
    /// the entries carry their type; `None` where they do not.
    pub fn list(&self, vol: &Volume, dir: &Inode) -> Result<Option<Vec<Entry>>> {
        if !self.filetype {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.scan(vol, dir, |_, kind, name| {
            if name != b"." && name != b".." {
                let file_type = match kind {
                    1 => FileType::File,
                    2 => FileType::Dir,
                    7 => FileType::Symlink,
                    _ => FileType::Other,
                };
                out.push(Entry {
                    name: alloc::string::String::from_utf8_lossy(name).into_owned(),
                    file_type,
                });
            }
            None::<()>
        })?;
        Ok(Some(out))
    }

    /// A reader of `inode`'s data.
    pub fn file(&self, vol: &Volume, inode: &Inode) -> Result<FileData> {
        Ok(FileData { extents: self.extents(vol, inode)?, block: self.block, size: inode.size })
    }
}

/// A regular file's data, by extent.
pub struct FileData {
    extents: Vec<Extent>,
    block: u64,
    size: u64,
}

impl FileData {
    /// Read at `offset` into `buf`: as many bytes as the file has there.
    pub fn read_at(&self, vol: &Volume, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = buf.len().min((self.size - offset) as usize);
        let mut done = 0;
        while done < n {
            let pos = offset + done as u64;
            let (lblk, within) = (pos / self.block, pos % self.block);
            // The extent holding `lblk`, else the first after it (a hole
            // up to there).
            let i = self.extents.partition_point(|e| e.logical + e.len <= lblk);
            let (run, data) = match self.extents.get(i) {
                Some(e) if e.logical <= lblk => ((e.logical + e.len - lblk) * self.block - within, Some(e)),
                Some(e) => ((e.logical - lblk) * self.block - within, None),
                None => (u64::MAX, None),
            };
            let k = (n - done).min(usize::try_from(run).unwrap_or(usize::MAX));
            match data {
                Some(e) if !e.unwritten => {
                    let at = (e.physical + (lblk - e.logical)) * self.block + within;
                    vol.read_at(at, &mut buf[done..done + k])?;
                }
                _ => buf[done..done + k].fill(0),
            }
            done += k;
        }
        Ok(n)
    }
}
