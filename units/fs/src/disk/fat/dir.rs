//! Directory entries: parsing a directory's 32-byte slots (long names with
//! their checksums, the case bits of 8.3 names), finding a name the way
//! FAT does, and making the slots of a new entry (an 8.3 name made unique
//! in its directory, and long-name pieces when the name needs them).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::time::Stamp;
use crate::error::{Error, Result};

/// Bytes per directory slot.
pub const SLOT: usize = 32;
/// Attribute bits.
pub const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LFN: u8 = 0x0f;
/// A regular file's attributes (archive).
pub const ATTR_FILE: u8 = 0x20;
/// The case of an 8.3 name, in byte 12 of its slot (Windows NT, Linux and
/// mtools set it for names such as `hello.txt`, which then need no
/// long-name pieces).
const LOWER_BASE: u8 = 0x08;
const LOWER_EXT: u8 = 0x10;

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    /// The long name, or the 8.3 name with its case bits applied.
    pub name: String,
    /// The 8.3 name's 11 bytes.
    pub short: [u8; 11],
    /// Attributes.
    pub attr: u8,
    /// First cluster (0: none).
    pub first: u32,
    /// Size in bytes (files).
    pub size: u32,
    /// Last modification.
    pub modified: Stamp,
    /// Index of its 8.3 slot in the directory.
    pub slot: usize,
    /// Long-name slots just before it.
    pub lfn: usize,
}

impl DirEnt {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }
}

/// An 8.3 name as people read it: `BASE.EXT`, with the entry's case bits;
/// bytes above 127 read as Latin-1 (their code page is not recorded).
pub fn short_name(raw: [u8; 11], case: u8) -> String {
    let part = |b: &[u8], lower: bool| {
        let s = b.iter().map(|&c| char::from(c)).collect::<String>().trim_end().to_string();
        if lower { s.to_lowercase() } else { s }
    };
    let base = part(&raw[..8], case & LOWER_BASE != 0);
    let ext = part(&raw[8..], case & LOWER_EXT != 0);
    if ext.is_empty() { base } else { alloc::format!("{base}.{ext}") }
}

/// The checksum of an 8.3 name that its long-name pieces carry.
pub fn checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Where the UTF-16 units of a long-name piece are.
const LFN_UNITS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Whether slot `s` is free (deleted, or at or past the end mark).
pub fn free(s: &[u8]) -> bool {
    s[0] == 0 || s[0] == 0xe5
}

/// The entries of a directory's bytes, in order, without `.`, `..`,
/// deleted slots and the volume label. Long names count only when their
/// pieces are complete and carry the 8.3 name's checksum.
pub fn parse(raw: &[u8]) -> Vec<DirEnt> {
    let mut out = Vec::new();
    // Long-name pieces since the last 8.3 slot: (order, checksum, units).
    let mut pieces: Vec<(u8, u8, [u16; 13])> = Vec::new();
    for (i, e) in raw.chunks_exact(SLOT).enumerate() {
        if e[0] == 0 {
            break;
        }
        if e[0] == 0xe5 {
            pieces.clear();
            continue;
        }
        if e[11] & 0x3f == ATTR_LFN {
            let mut units = [0u16; 13];
            for (k, o) in LFN_UNITS.into_iter().enumerate() {
                units[k] = u16::from_le_bytes([e[o], e[o + 1]]);
            }
            pieces.push((e[0] & 0x1f, e[13], units));
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        let sum = checksum(&short);
        if short[0] == 0x05 {
            short[0] = 0xe5;
        }
        let lfn = core::mem::take(&mut pieces);
        if e[11] & ATTR_VOLUME != 0 || short[0] == b'.' {
            continue;
        }
        // Pieces come last-first: orders n, n-1, …, 1.
        let complete = !lfn.is_empty()
            && lfn.iter().all(|p| p.1 == sum)
            && lfn.iter().rev().enumerate().all(|(k, p)| usize::from(p.0) == k + 1);
        let name = if complete {
            let units: Vec<u16> = lfn.iter().rev().flat_map(|p| p.2).take_while(|&u| u != 0).collect();
            String::from_utf16_lossy(&units)
        } else {
            short_name(short, e[12])
        };
        let u16_at = |o: usize| u16::from_le_bytes([e[o], e[o + 1]]);
        out.push(DirEnt {
            name,
            short,
            attr: e[11],
            first: u32::from(u16_at(26)) | (u32::from(u16_at(20)) << 16),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
            modified: Stamp { date: u16_at(24), time: u16_at(22) },
            slot: i,
            lfn: if complete { lfn.len() } else { 0 },
        });
    }
    out
}

/// The entry named `name`: its long name exactly, else its name (long or
/// 8.3) without regard to ASCII case, as FAT looks names up.
pub fn find<'a>(entries: &'a [DirEnt], name: &str) -> Option<&'a DirEnt> {
    entries.iter().find(|e| e.name == name).or_else(|| {
        entries
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name) || short_name(e.short, 0).eq_ignore_ascii_case(name))
    })
}

/// Characters an 8.3 name may hold besides upper-case letters and digits.
const SHORT_SYMBOLS: &[u8] = b"$%'-_@~`!(){}^#&";

fn short_char(c: char) -> Option<u8> {
    let u = c.to_ascii_uppercase();
    (u.is_ascii_uppercase() || u.is_ascii_digit() || (u.is_ascii() && SHORT_SYMBOLS.contains(&(u as u8))))
        .then_some(u as u8)
}

/// When `name` is an 8.3 name already (each part in one case): its bytes
/// and case bits.
fn as_short(name: &str) -> Option<([u8; 11], u8)> {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || base.contains('.') {
        return None;
    }
    let one_case = |s: &str| {
        let letters = s.chars().filter(char::is_ascii_alphabetic);
        letters.clone().all(|c| c.is_ascii_lowercase()) || letters.clone().all(|c| c.is_ascii_uppercase())
    };
    if !one_case(base) || !one_case(ext) {
        return None;
    }
    let mut short = [b' '; 11];
    for (k, c) in base.chars().enumerate() {
        short[k] = short_char(c)?;
    }
    for (k, c) in ext.chars().enumerate() {
        short[8 + k] = short_char(c)?;
    }
    let lower = |s: &str| s.chars().any(|c| c.is_ascii_lowercase());
    let case = if lower(base) { LOWER_BASE } else { 0 } | if lower(ext) { LOWER_EXT } else { 0 };
    Some((short, case))
}

/// Check a long name: what FAT cannot hold is refused.
pub fn check_long(name: &str) -> Result<()> {
    if name == "." || name == ".." || name.ends_with(['.', ' ']) {
        return Err(Error::InvalidInput("a FAT name cannot end with a dot or a space"));
    }
    if name.chars().any(|c| (c as u32) < 0x20 || "\"*/:<>?\\|".contains(c)) {
        return Err(Error::InvalidInput("a FAT name cannot hold \" * / : < > ? \\ | or control characters"));
    }
    if name.encode_utf16().count() > 255 {
        return Err(Error::NameTooLong);
    }
    Ok(())
}

/// The 8.3 name for the long name `name`, unique among `taken`: the
/// letters and digits that fit, then `~N`.
fn basis(name: &str, taken: &[[u8; 11]]) -> Result<[u8; 11]> {
    let name = name.trim_start_matches('.');
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let map = |s: &str, max: usize| -> Vec<u8> {
        s.chars().filter(|&c| c != ' ' && c != '.').map(|c| short_char(c).unwrap_or(b'_')).take(max).collect()
    };
    let b = map(base, 8);
    let e = map(ext, 3);
    for n in 1..1_000_000u32 {
        let tail = alloc::format!("~{n}");
        let keep = b.len().min(8 - tail.len());
        let mut short = [b' '; 11];
        short[..keep].copy_from_slice(&b[..keep]);
        short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        short[8..8 + e.len()].copy_from_slice(&e);
        if !taken.contains(&short) {
            return Ok(short);
        }
    }
    Err(Error::NoSpace)
}

/// The 8.3 slot of an entry.
pub fn short_slot(short: [u8; 11], case: u8, attr: u8, first: u32, size: u32, t: Stamp) -> [u8; SLOT] {
    let mut e = [0u8; SLOT];
    e[..11].copy_from_slice(&short);
    if e[0] == 0xe5 {
        e[0] = 0x05;
    }
    e[11] = attr;
    e[12] = case;
    for (o, v) in [(14, t.time), (16, t.date), (18, t.date), (22, t.time), (24, t.date)] {
        e[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    e[20..22].copy_from_slice(&((first >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(first as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Set the first cluster, size and modification time of an 8.3 slot.
pub fn update_slot(e: &mut [u8], first: u32, size: u32, t: Stamp) {
    e[20..22].copy_from_slice(&((first >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(first as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e[22..24].copy_from_slice(&t.time.to_le_bytes());
    e[24..26].copy_from_slice(&t.date.to_le_bytes());
    e[18..20].copy_from_slice(&t.date.to_le_bytes());
}

/// The slots for a new entry named `name` in a directory whose entries are
/// `existing`: long-name pieces (when the name is not an 8.3 name), then
/// the 8.3 slot.
pub fn slots_for(
    name: &str,
    existing: &[DirEnt],
    attr: u8,
    first: u32,
    size: u32,
    t: Stamp,
) -> Result<Vec<[u8; SLOT]>> {
    check_long(name)?;
    let taken: Vec<[u8; 11]> = existing.iter().map(|e| e.short).collect();
    if let Some((short, case)) = as_short(name).filter(|(s, _)| !taken.contains(s)) {
        return Ok(alloc::vec![short_slot(short, case, attr, first, size, t)]);
    }
    let short = basis(name, &taken)?;
    let sum = checksum(&short);
    let units: Vec<u16> = name.encode_utf16().collect();
    let pieces = units.len().div_ceil(13);
    let mut out = Vec::with_capacity(pieces + 1);
    for p in (0..pieces).rev() {
        let mut e = [0u8; SLOT];
        e[0] = (p + 1) as u8 | if p + 1 == pieces { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        for (k, o) in LFN_UNITS.into_iter().enumerate() {
            let at = p * 13 + k;
            let u = match at.cmp(&units.len()) {
                core::cmp::Ordering::Less => units[at],
                core::cmp::Ordering::Equal => 0,
                core::cmp::Ordering::Greater => 0xffff,
            };
            e[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out.push(short_slot(short, 0, attr, first, size, t));
    Ok(out)
}

/// Where `k` contiguous free slots are in a directory of `raw` bytes: the
/// index of the first. When there is no such run, `Err(start)`: the run at
/// the directory's end starts at `start` and needs the directory to grow.
pub fn place(raw: &[u8], k: usize) -> core::result::Result<usize, usize> {
    let slots = raw.len() / SLOT;
    let mut run = 0;
    let mut start = 0;
    for i in 0..slots {
        let s = &raw[i * SLOT..(i + 1) * SLOT];
        if s[0] == 0 {
            // Everything from the end mark on is free (and continues a run
            // of deleted slots just before it).
            let (from, have) = if run > 0 { (start, run + slots - i) } else { (i, slots - i) };
            return if have >= k { Ok(from) } else { Err(from) };
        }
        if free(s) {
            if run == 0 {
                start = i;
            }
            run += 1;
            if run == k {
                return Ok(start);
            }
        } else {
            run = 0;
        }
    }
    Err(if run > 0 { start } else { slots })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(slots: &[[u8; SLOT]]) -> Vec<DirEnt> {
        parse(&slots.concat())
    }

    #[test]
    fn short_names_and_case_bits() {
        assert_eq!(short_name(*b"HELLO   TXT", LOWER_BASE | LOWER_EXT), "hello.txt");
        assert_eq!(short_name(*b"README     ", 0), "README");
        assert_eq!(short_name(*b"A       B  ", LOWER_EXT), "A.b");
        assert_eq!(as_short("hello.txt"), Some((*b"HELLO   TXT", LOWER_BASE | LOWER_EXT)));
        assert_eq!(as_short("README"), Some((*b"README     ", 0)));
        assert_eq!(as_short("Hello.txt"), None, "mixed case needs a long name");
        assert_eq!(as_short("a.b.c"), None);
        assert_eq!(as_short("toolongname"), None);
        assert_eq!(as_short("é.txt"), None);
    }

    #[test]
    fn new_entries_round_trip_through_the_parser() {
        let t = Stamp { date: 0x5a21, time: 0x6000 };
        let mut raw: Vec<[u8; SLOT]> = Vec::new();
        for name in
            ["hello.txt", "a long name, ü and 日本.txt", "a long name, ü and 日本.txt2", "x", "Mixed.Case"]
        {
            let e = entries(&raw);
            raw.extend(slots_for(name, &e, ATTR_FILE, 7, 42, t).unwrap());
        }
        let e = entries(&raw);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["hello.txt", "a long name, ü and 日本.txt", "a long name, ü and 日本.txt2", "x", "Mixed.Case"]
        );
        assert_eq!(e[1].short, *b"ALONGN~1TXT");
        assert_eq!(e[2].short, *b"ALONGN~2TXT", "unique 8.3 names");
        assert_eq!((e[0].first, e[0].size, e[0].modified, e[0].lfn), (7, 42, t, 0));
        assert_eq!(e[1].lfn, 2, "24 UTF-16 units: two pieces");
        assert_eq!(find(&e, "HELLO.TXT").map(|e| e.slot), Some(0));
        assert_eq!(find(&e, "alongn~1.txt").map(|e| e.name.as_str()), Some("a long name, ü and 日本.txt"));
        assert!(slots_for("bad:name", &e, ATTR_FILE, 0, 0, t).is_err());
        assert!(slots_for("trailing.", &e, ATTR_FILE, 0, 0, t).is_err());
        assert_eq!(slots_for(&"n".repeat(256), &e, ATTR_FILE, 0, 0, t).err(), Some(Error::NameTooLong));
        assert_eq!(slots_for(&"n".repeat(255), &e, ATTR_FILE, 0, 0, t).unwrap().len(), 21);
    }

    #[test]
    fn broken_pieces_fall_back_to_the_8_3_name() {
        let t = Stamp::default();
        let mut s = slots_for("a long name", &[], ATTR_FILE, 0, 0, t).unwrap();
        s[0][13] ^= 1; // a checksum that is another name's
        let e = entries(&s);
        assert_eq!(e[0].name, "ALONGN~1");
        assert_eq!(e[0].lfn, 0);
    }

    #[test]
    fn finding_room() {
        let used = [b'A'; SLOT];
        let mut gone = [0u8; SLOT];
        gone[0] = 0xe5;
        let end = [0u8; SLOT];
        let d = |s: &[[u8; SLOT]]| s.concat();
        assert_eq!(place(&d(&[used, gone, gone, used, end, end]), 2), Ok(1));
        assert_eq!(place(&d(&[used, gone, used, end, end]), 2), Ok(3));
        assert_eq!(place(&d(&[used, gone, used, gone, end]), 3), Err(3), "the run at the end must grow");
        assert_eq!(place(&d(&[used, used]), 1), Err(2));
    }
}
