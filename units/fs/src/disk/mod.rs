//! Filesystems on block devices: each disk the devices unit found is looked
//! at once; a bare filesystem, or the first partition (MBR or GPT) holding
//! one the unit recognises, is mounted at `/disk<N>` (ext4 read-only, FAT
//! read-write). A disk with nothing recognised stays a raw `BlockDevice`
//! (`unit_devices::block_devices()`), and the report says why.

pub mod cache;
pub mod ext4;
pub mod fat;
pub mod layout;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use unit_devices::BlockDevice;

use crate::error::{Error, Result};
use crate::lock::Mutex;
use crate::vfs::FileSystem;
use cache::BlockCache;
use layout::{Kind, Partition};

/// A byte range of a disk (a partition, or the whole disk) over its shared
/// cache.
#[derive(Clone)]
pub struct Volume {
    cache: Arc<Mutex<BlockCache>>,
    start: u64,
    len: u64,
}

impl Volume {
    /// The whole of `cache`'s disk.
    pub fn whole(cache: Arc<Mutex<BlockCache>>) -> Self {
        let len = cache.lock().size();
        Self { cache, start: 0, len }
    }

    /// Bytes `start..start + len` of `cache`'s disk.
    pub fn part(cache: Arc<Mutex<BlockCache>>, p: Partition) -> Self {
        Self { cache, start: p.start, len: p.len }
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.cache.lock().read_only()
    }

    fn check(&self, offset: u64, n: usize) -> Result<u64> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len => Ok(self.start + offset),
            _ => Err(Error::Io(format!("{n} bytes at {offset} lie beyond the volume's {} bytes", self.len))),
        }
    }

    /// Read all of `buf` at `offset` in the volume.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.check(offset, buf.len())?;
        self.cache.lock().read_at(at, buf)
    }

    /// Write all of `buf` at `offset` in the volume.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let at = self.check(offset, buf.len()).map_err(|_| Error::NoSpace)?;
        self.cache.lock().write_at(at, buf)
    }

    /// Write back what is cached and make it durable.
    pub fn flush(&self) -> Result<()> {
        self.cache.lock().flush()
    }
}

/// The first bytes of `v`, enough to recognise a filesystem (fewer when
/// the volume is smaller).
fn head(v: &Volume) -> Result<Vec<u8>> {
    let mut b = vec![0u8; v.len().min(4096) as usize];
    v.read_at(0, &mut b)?;
    Ok(b)
}

/// Where a filesystem is on `cache`'s disk: the whole disk, or a partition.
fn find(cache: &Arc<Mutex<BlockCache>>) -> Result<Option<(Kind, Volume, String)>> {
    let whole = Volume::whole(cache.clone());
    let first = head(&whole)?;
    if let Some(kind) = layout::filesystem(&first) {
        return Ok(Some((kind, whole, String::from("the whole disk"))));
    }
    let (mut parts, protective) = layout::mbr(&first, whole.len());
    if protective
        && first.len() >= 1024
        && let Some((at, count, size)) = layout::gpt_entries(&first[512..1024])
    {
        let mut entries = vec![0u8; count as usize * size as usize];
        if whole.read_at(at, &mut entries).is_ok() {
            parts = layout::gpt(&entries, count, size, whole.len());
        }
    }
    for p in parts {
        let v = Volume::part(cache.clone(), p);
        if let Some(kind) = layout::filesystem(&head(&v)?) {
            return Ok(Some((kind, v, format!("partition {}", p.number))));
        }
    }
    Ok(None)
}

/// Mount what each of `devs` holds at `/disk<N>`; returns the devices with
/// nothing mounted (in order), and a line per mount or problem.
pub fn mount_all(devs: Vec<Box<dyn BlockDevice + Send>>) -> (Vec<Box<dyn BlockDevice + Send>>, Vec<String>) {
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    for (n, dev) in devs.into_iter().enumerate() {
        let point = format!("/disk{n}");
        let cache = Arc::new(Mutex::new(BlockCache::new(dev)));
        let mounted: Result<Option<(Arc<dyn FileSystem>, String)>> = find(&cache).and_then(|found| {
            let Some((kind, vol, place)) = found else { return Ok(None) };
            let fs: Arc<dyn FileSystem> = match kind {
                Kind::Ext4 => Arc::new(ext4::Ext4Fs::new(vol)?),
                Kind::Fat => Arc::new(fat::FatFs::new(vol)?),
            };
            Ok(Some((fs, format!("disk {n}, {place}"))))
        });
        match mounted {
            Ok(Some((fs, source))) => {
                let kind = fs.kind();
                match crate::mount(&point, &source, fs) {
                    Ok(()) => continue,
                    Err(e) => lines.push(format!("{point}: {kind} not mounted: {e}")),
                }
            }
            Ok(None) => {
                lines.push(format!("{point}: no filesystem recognised; the disk stays a raw block device"))
            }
            Err(e) => lines.push(format!("{point}: not mounted: {e}")),
        }
        // Nothing mounted: the device goes back, once nobody holds the cache.
        match Arc::try_unwrap(cache) {
            Ok(m) => raw.push(m.into_inner().into_device()),
            Err(_) => lines.push(format!("{point}: the device is still in use")),
        }
    }
    (raw, lines)
}
