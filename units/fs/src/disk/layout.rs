//! What is on a disk: a bare filesystem, or a partition table (MBR, or GPT
//! behind a protective MBR) whose partitions hold filesystems. Pure
//! functions over the disk's first bytes; every field read is checked, so
//! a hostile table yields nothing rather than a panic.

use alloc::vec::Vec;

/// A filesystem the unit recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// ext2/3/4 (read-only).
    Ext4,
    /// FAT12/16/32 (read-write).
    Fat,
}

/// A partition: its number (1-based, as `fdisk` shows it) and its byte
/// range on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its number in the table (1 = the first).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Which filesystem starts with `head` (its first 2 KiB at least), if any.
pub fn filesystem(head: &[u8]) -> Option<Kind> {
    // ext2/3/4: the superblock at 1024, magic 0xEF53 at offset 56 in it.
    if u16_at(head, 1024 + 56) == Some(0xef53) {
        return Some(Kind::Ext4);
    }
    // FAT: a boot sector with a jump, a sane BPB and the 0x55AA signature.
    let jump = matches!(head.first(), Some(0xeb) | Some(0xe9));
    let bytes_per_sector = u16_at(head, 11)?;
    let sectors_per_cluster = *head.get(13)?;
    let reserved = u16_at(head, 14)?;
    let fats = *head.get(16)?;
    let sane = bytes_per_sector.is_power_of_two()
        && (512..=4096).contains(&bytes_per_sector)
        && sectors_per_cluster.is_power_of_two()
        && reserved >= 1
        && (1..=4).contains(&fats);
    (jump && sane && u16_at(head, 510) == Some(0xaa55)).then_some(Kind::Fat)
}

/// The partitions an MBR at the start of `head` lists (empty when it is
/// not an MBR). `protective` says the table is GPT's protective MBR.
pub fn mbr(head: &[u8], disk_len: u64) -> (Vec<Partition>, bool) {
    let mut parts = Vec::new();
    if u16_at(head, 510) != Some(0xaa55) {
        return (parts, false);
    }
    let mut protective = false;
    for i in 0..4u32 {
        let e = 446 + 16 * i as usize;
        let (Some(&kind), Some(lba), Some(sectors)) =
            (head.get(e + 4), u32_at(head, e + 8), u32_at(head, e + 12))
        else {
            continue;
        };
        match kind {
            0 => {}
            0xee => protective = true,
            // Extended partitions (0x05, 0x0f, 0x85) are not followed.
            0x05 | 0x0f | 0x85 => {}
            _ => {
                let (start, len) = (u64::from(lba) * 512, u64::from(sectors) * 512);
                if lba != 0 && sectors != 0 && start.checked_add(len).is_some_and(|end| end <= disk_len) {
                    parts.push(Partition { number: i + 1, start, len });
                }
            }
        }
    }
    (parts, protective)
}

/// Where GPT's header (at LBA 1, `header`) says its entries are:
/// `(byte offset, count, entry size)`, checked for sense.
pub fn gpt_entries(header: &[u8]) -> Option<(u64, u32, u32)> {
    if header.get(..8)? != b"EFI PART" {
        return None;
    }
    let lba = u64_at(header, 72)?;
    let count = u32_at(header, 80)?.min(128);
    let size = u32_at(header, 84)?;
    ((128..=4096).contains(&size) && size.is_power_of_two()).then_some((lba.checked_mul(512)?, count, size))
}

/// The used entries of a GPT entry array.
pub fn gpt(entries: &[u8], count: u32, size: u32, disk_len: u64) -> Vec<Partition> {
    let mut parts = Vec::new();
    for i in 0..count {
        let Some(e) = entries.get(i as usize * size as usize..(i as usize + 1) * size as usize) else {
            break;
        };
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (Some(first), Some(last)) = (u64_at(e, 32), u64_at(e, 40)) else { continue };
        let (Some(start), Some(end)) =
            (first.checked_mul(512), last.checked_add(1).and_then(|l| l.checked_mul(512)))
        else {
            continue;
        };
        if first != 0 && end > start && end <= disk_len {
            parts.push(Partition { number: i + 1, start, len: end - start });
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn fat_boot_sector() -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        b[0] = 0xeb;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 8;
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[16] = 2;
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn recognises_bare_filesystems() {
        assert_eq!(filesystem(&fat_boot_sector()), Some(Kind::Fat));
        let mut ext = vec![0u8; 2048];
        ext[1080..1082].copy_from_slice(&0xef53u16.to_le_bytes());
        assert_eq!(filesystem(&ext), Some(Kind::Ext4));
        assert_eq!(filesystem(&[0u8; 2048]), None);
        assert_eq!(filesystem(&[0u8; 10]), None, "too short");
        let mut bad = fat_boot_sector();
        bad[13] = 3; // sectors per cluster not a power of two
        assert_eq!(filesystem(&bad), None);
    }

    #[test]
    fn reads_an_mbr_and_refuses_nonsense() {
        let mut m = vec![0u8; 512];
        m[510] = 0x55;
        m[511] = 0xaa;
        let entry = |m: &mut Vec<u8>, i: usize, kind: u8, lba: u32, n: u32| {
            let e = 446 + 16 * i;
            m[e + 4] = kind;
            m[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            m[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        };
        entry(&mut m, 0, 0x0c, 2048, 8192);
        entry(&mut m, 1, 0x83, 10240, 1 << 30); // beyond the disk
        entry(&mut m, 2, 0x05, 100, 100); // extended: not followed
        entry(&mut m, 3, 0x83, 0xffff_ffff, 0xffff_ffff);
        let (parts, protective) = mbr(&m, 16 << 20);
        assert_eq!(parts, [Partition { number: 1, start: 1 << 20, len: 4 << 20 }]);
        assert!(!protective);
        entry(&mut m, 0, 0xee, 1, 100);
        assert!(mbr(&m, 16 << 20).1);
        assert!(mbr(&[0u8; 512], 1 << 20).0.is_empty());
    }

    #[test]
    fn reads_gpt_entries() {
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&4u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(gpt_entries(&h), Some((1024, 4, 128)));
        let mut e = vec![0u8; 512];
        e[0] = 1; // a type GUID
        e[32..40].copy_from_slice(&2048u64.to_le_bytes());
        e[40..48].copy_from_slice(&4095u64.to_le_bytes());
        e[256] = 1; // entry 3: last < first
        e[256 + 32..256 + 40].copy_from_slice(&10u64.to_le_bytes());
        e[256 + 40..256 + 48].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(gpt(&e, 4, 128, 8 << 20), [Partition { number: 1, start: 1 << 20, len: 1 << 20 }]);
        h[84..88].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(gpt_entries(&h), None, "odd entry size");
    }
}
