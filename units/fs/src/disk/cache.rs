//! A cache of a block device's extents, with read-ahead and write-back,
//! under the disk filesystems.
//!
//! The filesystem crates read small pieces (a 512-byte FAT sector, a 1 KiB
//! superblock, a 4 KiB directory block); each device request costs the
//! guest an exit or an interrupt. So the cache reads whole extents
//! ([`EXTENT`] bytes, one request each) and keeps the last [`EXTENTS`] of
//! them (least recently used goes). Writes change the cached extent and
//! mark its blocks dirty; dirty runs go to the device on [`BlockCache::flush`],
//! on eviction, and when the app exits (the kernel syncs every mount).

use alloc::boxed::Box;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use unit_devices::{BlockDevice, BlockError};

use crate::error::{Error, Result};

/// Bytes per extent (one device request on a miss).
pub const EXTENT: usize = 128 * 1024;
/// Extents kept.
pub const EXTENTS: usize = 32;
/// The largest device request a read makes past the cache.
pub const DIRECT: usize = 1 << 20;
/// The smallest: reads below it go through the cache.
pub const DIRECT_MIN: usize = 64 * 1024;

struct Extent {
    /// Index of the extent (its byte offset / [`EXTENT`]).
    index: u64,
    data: Vec<u8>,
    /// Valid bytes (the last extent of a disk may be short).
    len: usize,
    /// One bit per device block that differs from the device.
    dirty: Vec<u64>,
    /// Last use, for the LRU choice.
    used: u64,
}

/// A block device behind an extent cache.
pub struct BlockCache {
    dev: Box<dyn BlockDevice + Send>,
    block: usize,
    size: u64,
    extents: Vec<Extent>,
    clock: u64,
    /// Device requests made (reads, writes), for figures and tests.
    pub requests: (u64, u64),
}

/// A device error as the filesystem unit says it.
pub fn io(e: BlockError) -> Error {
    match e {
        BlockError::ReadOnly => Error::ReadOnly,
        e => Error::Io(format!("{e}")),
    }
}

impl BlockCache {
    /// A cache over `dev`.
    pub fn new(dev: Box<dyn BlockDevice + Send>) -> Self {
        let block = dev.block_size().max(1);
        let size = dev.num_blocks().saturating_mul(block as u64);
        Self { dev, block, size, extents: Vec::new(), clock: 0, requests: (0, 0) }
    }

    /// The device's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.dev.read_only()
    }

    /// Give the device back (after a flush).
    pub fn into_device(mut self) -> Box<dyn BlockDevice + Send> {
        let _ = self.flush();
        self.dev
    }

    /// The cached extent `index`, read from the device on a miss.
    fn extent(&mut self, index: u64) -> Result<&mut Extent> {
        self.clock += 1;
        let now = self.clock;
        if let Some(i) = self.extents.iter().position(|e| e.index == index) {
            self.extents[i].used = now;
            return Ok(&mut self.extents[i]);
        }
        let start = index * EXTENT as u64;
        let len = (self.size.saturating_sub(start)).min(EXTENT as u64) as usize;
        if len == 0 {
            return Err(Error::Io(format!("read beyond the end of the disk ({} bytes)", self.size)));
        }
        // The slot: a new one, or the least recently used (written back).
        let slot = if self.extents.len() < EXTENTS {
            self.extents.push(Extent {
                index: u64::MAX,
                data: vec![0; EXTENT],
                len: 0,
                dirty: vec![0; EXTENT / self.block / 64 + 1],
                used: 0,
            });
            self.extents.len() - 1
        } else {
            let lru = (0..self.extents.len()).min_by_key(|&i| self.extents[i].used).unwrap_or(0);
            self.write_back(lru)?;
            lru
        };
        let lba = start / self.block as u64;
        let e = &mut self.extents[slot];
        e.index = u64::MAX; // not valid until read
        self.requests.0 += 1;
        self.dev.read_blocks(lba, &mut e.data[..len]).map_err(io)?;
        e.index = index;
        e.len = len;
        e.used = now;
        Ok(e)
    }

    /// Write the dirty blocks of slot `i` to the device, in runs.
    fn write_back(&mut self, i: usize) -> Result<()> {
        let block = self.block;
        let e = &mut self.extents[i];
        if e.index == u64::MAX || e.dirty.iter().all(|&w| w == 0) {
            return Ok(());
        }
        let blocks = e.len / block;
        let first_lba = e.index * EXTENT as u64 / block as u64;
        let mut b = 0;
        while b < blocks {
            if e.dirty[b / 64] & (1 << (b % 64)) == 0 {
                b += 1;
                continue;
            }
            let start = b;
            while b < blocks && e.dirty[b / 64] & (1 << (b % 64)) != 0 {
                b += 1;
            }
            self.requests.1 += 1;
            self.dev.write_blocks(first_lba + start as u64, &e.data[start * block..b * block]).map_err(io)?;
        }
        e.dirty.fill(0);
        Ok(())
    }

    /// Read `buf.len()` bytes at byte `offset` (all of them, or an error).
    pub fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.size) {
            return Err(Error::Io(format!("read of {} bytes at {offset} beyond the disk's end", buf.len())));
        }
        while !buf.is_empty() {
            // Large pieces that are not cached go from the device straight
            // into `buf`, in runs of up to DIRECT bytes: a large sequential
            // read neither copies twice nor pushes out what is cached.
            let run = self.uncached_run(offset, buf.len());
            if run > 0 {
                self.requests.0 += 1;
                self.dev.read_blocks(offset / self.block as u64, &mut buf[..run]).map_err(io)?;
                buf = &mut buf[run..];
                offset += run as u64;
                continue;
            }
            let within = (offset % EXTENT as u64) as usize;
            let e = self.extent(offset / EXTENT as u64)?;
            let n = buf.len().min(e.len - within);
            buf[..n].copy_from_slice(&e.data[within..within + n]);
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Bytes from `offset` (at most `len`, at most [`DIRECT`]) that may go
    /// from the device straight to the caller: whole device blocks, no
    /// byte of them cached (a cached extent may be newer than the device),
    /// and at least [`DIRECT_MIN`] of them (smaller reads go through the
    /// cache, which reads ahead). 0 when none.
    fn uncached_run(&self, offset: u64, len: usize) -> usize {
        let block = self.block as u64;
        if !offset.is_multiple_of(block) {
            return 0;
        }
        let mut run = len.min(DIRECT) as u64 / block * block;
        for e in self.extents.iter().filter(|e| e.index != u64::MAX) {
            let start = e.index * EXTENT as u64;
            if start < offset + run && start + e.len as u64 > offset {
                if start <= offset {
                    return 0;
                }
                run = run.min(start - offset);
            }
        }
        if run < DIRECT_MIN as u64 { 0 } else { run as usize }
    }

    /// Write `buf` at byte `offset` into the cache (to the device later).
    pub fn write_at(&mut self, mut offset: u64, mut buf: &[u8]) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.size) {
            return Err(Error::NoSpace);
        }
        let block = self.block;
        while !buf.is_empty() {
            let within = (offset % EXTENT as u64) as usize;
            let e = self.extent(offset / EXTENT as u64)?;
            let n = buf.len().min(e.len - within);
            e.data[within..within + n].copy_from_slice(&buf[..n]);
            for b in within / block..(within + n).div_ceil(block) {
                e.dirty[b / 64] |= 1 << (b % 64);
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Write every dirty block, then ask the device to make it durable.
    pub fn flush(&mut self) -> Result<()> {
        let mut dirty = false;
        for i in 0..self.extents.len() {
            dirty |= self.extents[i].dirty.iter().any(|&w| w != 0);
            self.write_back(i)?;
        }
        if dirty {
            self.dev.flush().map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::sync::Arc;
    use spin::Mutex;

    /// A disk in memory that counts requests and can fail on purpose.
    #[derive(Clone)]
    pub struct RamDisk {
        pub data: Arc<Mutex<Vec<u8>>>,
        pub readonly: bool,
    }

    impl RamDisk {
        pub fn new(data: Vec<u8>) -> Self {
            Self { data: Arc::new(Mutex::new(data)), readonly: false }
        }
    }

    impl BlockDevice for RamDisk {
        fn block_size(&self) -> usize {
            512
        }
        fn num_blocks(&self) -> u64 {
            self.data.lock().len() as u64 / 512
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> core::result::Result<(), BlockError> {
            unit_devices::check_request(self, lba, buf.len())?;
            let d = self.data.lock();
            buf.copy_from_slice(&d[lba as usize * 512..lba as usize * 512 + buf.len()]);
            Ok(())
        }
        fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> core::result::Result<(), BlockError> {
            unit_devices::check_request(self, lba, buf.len())?;
            if self.readonly {
                return Err(BlockError::ReadOnly);
            }
            self.data.lock()[lba as usize * 512..lba as usize * 512 + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> core::result::Result<(), BlockError> {
            Ok(())
        }
        fn read_only(&self) -> bool {
            self.readonly
        }
    }

    #[test]
    fn reads_ahead_and_writes_back_dirty_runs_only() {
        let disk = RamDisk::new((0..8 << 20).map(|i| (i / 512) as u8).collect());
        let mut c = BlockCache::new(Box::new(disk.clone()));
        let mut b = [0u8; 16];
        for o in (0..EXTENT as u64).step_by(512) {
            c.read_at(o + 3, &mut b).unwrap();
        }
        assert_eq!(c.requests, (1, 0), "one request for a whole extent");
        c.read_at(EXTENT as u64 - 8, &mut b).unwrap();
        assert_eq!(b[..8], [255; 8]);
        assert_eq!(b[8], 0, "spans two extents");
        assert_eq!(c.requests.0, 2);
        c.write_at(1000, b"hello").unwrap();
        c.write_at(5000, b"world").unwrap();
        assert_eq!(&disk.data.lock()[1000..1005], &[1; 5], "not yet on the device");
        c.flush().unwrap();
        assert_eq!(&disk.data.lock()[1000..1005], b"hello");
        assert_eq!(&disk.data.lock()[5000..5005], b"world");
        assert_eq!(c.requests.1, 2, "two dirty runs, not the whole extent");
        // Reads past the end fail; eviction writes back.
        assert!(c.read_at((8 << 20) - 4, &mut b).is_err());
        c.write_at(7, b"x").unwrap();
        for i in 1..=EXTENTS as u64 + 1 {
            c.read_at(i * EXTENT as u64, &mut b).unwrap();
        }
        assert_eq!(disk.data.lock()[7], b'x', "written back when evicted");
    }

    /// A large read goes past the cache (one request, nothing cached),
    /// except where a cached extent may be newer than the device.
    #[test]
    fn large_reads_go_past_the_cache_but_see_what_it_holds() {
        let disk = RamDisk::new((0..8 << 20).map(|i| (i / 512) as u8).collect());
        let mut c = BlockCache::new(Box::new(disk.clone()));
        let mut big = vec![0u8; 1 << 20];
        c.read_at(3 * 512, &mut big).unwrap();
        assert_eq!(c.requests, (1, 0), "one request, straight into the buffer");
        assert!(c.extents.is_empty(), "nothing cached");
        assert!(big.chunks(512).enumerate().all(|(k, s)| s.iter().all(|&b| b == (k + 3) as u8)));
        // A dirty byte in the middle: the read sees it.
        c.write_at(EXTENT as u64 * 3 + 10, b"new").unwrap();
        c.read_at(0, &mut big).unwrap();
        assert_eq!(&big[EXTENT * 3 + 10..EXTENT * 3 + 13], b"new");
        assert_eq!(big[EXTENT * 3 + 9], ((EXTENT * 3) / 512) as u8);
        // Small and unaligned reads use the cache.
        let mut b = [0u8; 100];
        let before = c.requests.0;
        c.read_at(EXTENT as u64 * 5 + 7, &mut b).unwrap();
        c.read_at(EXTENT as u64 * 5 + 700, &mut b).unwrap();
        assert_eq!(c.requests.0, before + 1);
    }

    #[test]
    fn a_read_only_device_refuses_writes() {
        let mut disk = RamDisk::new(vec![0; 1 << 20]);
        disk.readonly = true;
        let mut c = BlockCache::new(Box::new(disk));
        assert_eq!(c.write_at(0, b"x"), Err(Error::ReadOnly));
    }
}
