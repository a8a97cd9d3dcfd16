//! The boot sector's BIOS parameter block: where the FATs, the root
//! directory and the data region are, and which FAT this is. Every field is
//! checked against the others and the volume's size, so the rest of the
//! module can trust the [`Layout`].

use alloc::format;

use crate::error::{Error, Result};

/// FAT12, FAT16 or FAT32 (by the number of clusters, as the specification
/// decides it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 12-bit entries, two to three bytes.
    Fat12,
    /// 16-bit entries.
    Fat16,
    /// 28-bit entries in 32 bits.
    Fat32,
}

/// Where everything is, in bytes from the volume's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Which FAT.
    pub width: Width,
    /// Bytes per sector.
    pub sector: u64,
    /// Bytes per cluster.
    pub cluster: u64,
    /// The first FAT.
    pub fat_start: u64,
    /// Bytes per FAT.
    pub fat_len: u64,
    /// Number of FATs (all kept equal).
    pub fats: u64,
    /// FAT12/16's fixed root directory `(start, bytes)`.
    pub fixed_root: Option<(u64, u64)>,
    /// FAT32's root directory cluster.
    pub root_cluster: u32,
    /// Cluster 2's first byte.
    pub data_start: u64,
    /// Clusters in the data region (numbered 2 ..= clusters + 1).
    pub clusters: u32,
    /// FAT32's FSInfo sector (byte offset), when there is one.
    pub fsinfo: Option<u64>,
}

fn u16_at(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}

impl Layout {
    /// Read the layout from the boot sector `b` (512 bytes at least) of a
    /// volume of `len` bytes.
    pub fn parse(b: &[u8], len: u64) -> Result<Self> {
        let bad = |what: &str| Err(Error::Corrupt(format!("FAT boot sector: {what}")));
        if b.len() < 512 {
            return bad("shorter than a sector");
        }
        let sector = u16_at(b, 11);
        let spc = u64::from(b[13]);
        let reserved = u16_at(b, 14);
        let fats = u64::from(b[16]);
        let root_entries = u16_at(b, 17);
        let total = if u16_at(b, 19) != 0 { u16_at(b, 19) } else { u32_at(b, 32) };
        let fat_sectors = if u16_at(b, 22) != 0 { u16_at(b, 22) } else { u32_at(b, 36) };
        if !sector.is_power_of_two() || !(512..=4096).contains(&sector) {
            return bad("bytes per sector");
        }
        if spc == 0 || !spc.is_power_of_two() || sector * spc > 1 << 20 {
            return bad("sectors per cluster");
        }
        if reserved == 0 || !(1..=4).contains(&fats) || fat_sectors == 0 {
            return bad("reserved sectors, FAT count or FAT size");
        }
        if total * sector > len {
            return bad("larger than its volume");
        }
        let root_sectors = (root_entries * 32).div_ceil(sector);
        let meta = reserved + fats * fat_sectors + root_sectors;
        if meta >= total {
            return bad("no room for data");
        }
        let clusters = (total - meta) / spc;
        let width = if clusters < 4085 {
            Width::Fat12
        } else if clusters < 65_525 {
            Width::Fat16
        } else {
            Width::Fat32
        };
        // The FAT must hold an entry for every cluster (and the two
        // reserved ones).
        let needed = match width {
            Width::Fat12 => (clusters + 2) * 3 / 2,
            Width::Fat16 => (clusters + 2) * 2,
            Width::Fat32 => (clusters + 2) * 4,
        };
        if fat_sectors * sector < needed {
            return bad("the FAT is smaller than its clusters need");
        }
        if (width == Width::Fat32) != (root_entries == 0) {
            return bad("root directory entries do not fit the FAT type");
        }
        let root_cluster = u32_at(b, 44) as u32;
        if width == Width::Fat32 && !(2..=clusters + 1).contains(&u64::from(root_cluster)) {
            return bad("root directory cluster");
        }
        let fsinfo = (width == Width::Fat32)
            .then(|| u16_at(b, 48))
            .filter(|&s| s != 0 && s != 0xffff && s < reserved)
            .map(|s| s * sector);
        Ok(Self {
            width,
            sector,
            cluster: sector * spc,
            fat_start: reserved * sector,
            fat_len: fat_sectors * sector,
            fats,
            fixed_root: (width != Width::Fat32)
                .then_some(((reserved + fats * fat_sectors) * sector, root_entries * 32)),
            root_cluster: if width == Width::Fat32 { root_cluster } else { 0 },
            data_start: (reserved + fats * fat_sectors + root_sectors) * sector,
            clusters: clusters.min(0x0fff_fff5) as u32,
            fsinfo,
        })
    }

    /// The volume offset of byte `within` of cluster `c` (a valid one).
    pub fn at(&self, c: u32, within: u64) -> Option<u64> {
        self.valid(c).then(|| self.data_start + u64::from(c - 2) * self.cluster + within)
    }

    /// Whether `c` names a cluster of the data region.
    pub fn valid(&self, c: u32) -> bool {
        c >= 2 && c <= self.clusters + 1
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A FAT16 boot sector: 512-byte sectors, 4 per cluster, 1 reserved,
    /// 2 FATs of 32 sectors, 512 root entries, 32768 sectors.
    pub fn fat16() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = 0xeb;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&1u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[19..21].copy_from_slice(&32768u16.to_le_bytes());
        b[22..24].copy_from_slice(&32u16.to_le_bytes());
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn reads_a_fat16_layout() {
        let l = Layout::parse(&fat16(), 16 << 20).unwrap();
        assert_eq!(l.width, Width::Fat16);
        assert_eq!(l.cluster, 2048);
        assert_eq!(l.fat_start, 512);
        assert_eq!(l.fixed_root, Some((512 + 2 * 32 * 512, 512 * 32)));
        assert_eq!(l.data_start, (1 + 64 + 32) * 512);
        assert_eq!(l.clusters, (32768 - 97) / 4);
        assert_eq!(l.at(2, 5), Some(l.data_start + 5));
        assert_eq!(l.at(1, 0), None);
        assert_eq!(l.at(l.clusters + 2, 0), None);
    }

    #[test]
    fn refuses_nonsense() {
        let mut b = fat16();
        assert!(Layout::parse(&b, 1 << 20).is_err(), "larger than its volume");
        b[13] = 3;
        assert!(Layout::parse(&b, 16 << 20).is_err());
        let mut b = fat16();
        b[22] = 1; // a FAT far too small
        assert!(Layout::parse(&b, 16 << 20).is_err());
        assert!(Layout::parse(&[0u8; 100], 1 << 20).is_err());
    }
}
