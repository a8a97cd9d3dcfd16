//! The file allocation table: reading and writing entries (every copy of
//! the table), walking chains with a bound (a looping chain is an error,
//! not a hang), allocating and freeing clusters, and FAT32's FSInfo hints.

use alloc::format;
use alloc::vec::Vec;

use super::bpb::{Layout, Width};
use crate::disk::Volume;
use crate::error::{Error, Result};

/// What the allocator knows between operations (under the filesystem's
/// lock).
#[derive(Clone, Copy, Debug, Default)]
pub struct Alloc {
    /// Where to look for a free cluster first.
    pub hint: u32,
    /// Free clusters, once known (FSInfo's figure or a count).
    pub free: Option<u32>,
    /// Whether FSInfo must be written back.
    pub dirty: bool,
}

/// The table of one volume.
pub struct Table<'a> {
    /// The volume.
    pub vol: &'a Volume,
    /// Its layout.
    pub l: &'a Layout,
}

impl Table<'_> {
    /// The end-of-chain mark written for a last cluster.
    pub fn eoc(&self) -> u32 {
        match self.l.width {
            Width::Fat12 => 0xfff,
            Width::Fat16 => 0xffff,
            Width::Fat32 => 0x0fff_ffff,
        }
    }

    /// Entry `n` of the first FAT.
    pub fn get(&self, n: u32) -> Result<u32> {
        let n64 = u64::from(n);
        Ok(match self.l.width {
            Width::Fat12 => {
                let mut b = [0u8; 2];
                self.vol.read_at(self.l.fat_start + n64 + n64 / 2, &mut b)?;
                let v = u16::from_le_bytes(b);
                u32::from(if n & 1 == 0 { v & 0xfff } else { v >> 4 })
            }
            Width::Fat16 => {
                let mut b = [0u8; 2];
                self.vol.read_at(self.l.fat_start + n64 * 2, &mut b)?;
                u32::from(u16::from_le_bytes(b))
            }
            Width::Fat32 => {
                let mut b = [0u8; 4];
                self.vol.read_at(self.l.fat_start + n64 * 4, &mut b)?;
                u32::from_le_bytes(b) & 0x0fff_ffff
            }
        })
    }

    /// Set entry `n` to `v` in every FAT.
    pub fn set(&self, n: u32, v: u32) -> Result<()> {
        let n64 = u64::from(n);
        for copy in 0..self.l.fats {
            let base = self.l.fat_start + copy * self.l.fat_len;
            match self.l.width {
                Width::Fat12 => {
                    let at = base + n64 + n64 / 2;
                    let mut b = [0u8; 2];
                    self.vol.read_at(at, &mut b)?;
                    let old = u16::from_le_bytes(b);
                    let v = (v & 0xfff) as u16;
                    let new = if n & 1 == 0 { (old & 0xf000) | v } else { (old & 0x000f) | (v << 4) };
                    self.vol.write_at(at, &new.to_le_bytes())?;
                }
                Width::Fat16 => self.vol.write_at(base + n64 * 2, &(v as u16).to_le_bytes())?,
                Width::Fat32 => {
                    let at = base + n64 * 4;
                    let mut b = [0u8; 4];
                    self.vol.read_at(at, &mut b)?;
                    // The top four bits are reserved: kept as they are.
                    let new = (u32::from_le_bytes(b) & 0xf000_0000) | (v & 0x0fff_ffff);
                    self.vol.write_at(at, &new.to_le_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// The cluster after `c`: `Some`, or `None` at the end of the chain.
    pub fn next(&self, c: u32) -> Result<Option<u32>> {
        let v = self.get(c)?;
        let (bad, end) = match self.l.width {
            Width::Fat12 => (0xff7, 0xff8),
            Width::Fat16 => (0xfff7, 0xfff8),
            Width::Fat32 => (0x0fff_fff7, 0x0fff_fff8),
        };
        match v {
            v if v >= end => Ok(None),
            v if v == bad => Err(Error::Corrupt(format!("cluster {c} is followed by a bad cluster"))),
            v if self.l.valid(v) => Ok(Some(v)),
            v => Err(Error::Corrupt(format!("cluster {c} is followed by {v:#x}, which is no cluster"))),
        }
    }

    /// The chain that starts at `first` (empty below 2); a chain longer than
    /// the volume has clusters loops, and is an error.
    pub fn chain(&self, first: u32) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if first < 2 {
            return Ok(out);
        }
        if !self.l.valid(first) {
            return Err(Error::Corrupt(format!("chain starts at {first:#x}, which is no cluster")));
        }
        let mut c = first;
        loop {
            out.push(c);
            if out.len() > self.l.clusters as usize {
                return Err(Error::Corrupt(format!("the chain from cluster {first} loops")));
            }
            match self.next(c)? {
                Some(n) => c = n,
                None => return Ok(out),
            }
        }
    }

    /// Count the free clusters (a pass over the table).
    fn count_free(&self) -> Result<u32> {
        let mut n = 0;
        for c in 2..=self.l.clusters + 1 {
            if self.get(c)? == 0 {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Allocate `count` clusters, linked after `prev` (if any), each
    /// marked as the end until the next is linked; returns them.
    pub fn alloc(&self, a: &mut Alloc, prev: Option<u32>, count: usize) -> Result<Vec<u32>> {
        if a.free.is_none() {
            a.free = Some(self.count_free()?);
        }
        if a.free.is_some_and(|f| (f as usize) < count) {
            return Err(Error::NoSpace);
        }
        let mut out = Vec::with_capacity(count);
        let mut last = prev;
        let total = self.l.clusters;
        let mut c = if self.l.valid(a.hint) { a.hint } else { 2 };
        let mut scanned = 0;
        while out.len() < count {
            if scanned > total {
                return Err(Error::NoSpace);
            }
            if self.get(c)? == 0 {
                self.set(c, self.eoc())?;
                if let Some(p) = last {
                    self.set(p, c)?;
                }
                out.push(c);
                last = Some(c);
                a.free = a.free.map(|f| f.saturating_sub(1));
            }
            scanned += 1;
            c = if c > total { 2 } else { c + 1 };
        }
        a.hint = c;
        a.dirty = true;
        Ok(out)
    }

    /// Free every cluster of `chain`.
    pub fn free(&self, a: &mut Alloc, chain: &[u32]) -> Result<()> {
        for &c in chain {
            self.set(c, 0)?;
        }
        a.free = a.free.map(|f| f.saturating_add(chain.len() as u32).min(self.l.clusters));
        a.dirty = true;
        Ok(())
    }
}

const FSINFO_LEAD: u32 = 0x4161_5252;
const FSINFO_STRUCT: u32 = 0x6141_7272;
const FSINFO_TRAIL: u32 = 0xaa55_0000;

/// FAT32's FSInfo hints (free clusters, next free), when the sector is
/// one and its figures make sense.
pub fn read_fsinfo(vol: &Volume, l: &Layout) -> Alloc {
    let mut a = Alloc { hint: 2, free: None, dirty: false };
    let Some(at) = l.fsinfo else { return a };
    let mut b = [0u8; 512];
    if vol.read_at(at, &mut b).is_err() {
        return a;
    }
    let word = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if word(0) != FSINFO_LEAD || word(484) != FSINFO_STRUCT || word(508) != FSINFO_TRAIL {
        return a;
    }
    a.free = Some(word(488)).filter(|&f| f <= l.clusters);
    a.hint = Some(word(492)).filter(|&h| l.valid(h)).unwrap_or(2);
    a
}

/// Write FAT32's FSInfo figures back (nothing for FAT12/16).
pub fn write_fsinfo(vol: &Volume, l: &Layout, a: &mut Alloc) -> Result<()> {
    if !a.dirty {
        return Ok(());
    }
    if let Some(at) = l.fsinfo {
        let mut b = [0u8; 512];
        vol.read_at(at, &mut b)?;
        b[0..4].copy_from_slice(&FSINFO_LEAD.to_le_bytes());
        b[484..488].copy_from_slice(&FSINFO_STRUCT.to_le_bytes());
        b[488..492].copy_from_slice(&a.free.unwrap_or(u32::MAX).to_le_bytes());
        b[492..496].copy_from_slice(&a.hint.to_le_bytes());
        b[508..512].copy_from_slice(&FSINFO_TRAIL.to_le_bytes());
        vol.write_at(at, &b)?;
    }
    a.dirty = false;
    Ok(())
}
