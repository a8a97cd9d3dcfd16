//! Torito devices unit: device traits the other units build on.
//!
//! Status: API sketch. The virtio transports (MMIO, PCI) and drivers
//! (virtio-drivers: blk, net, vsock) arrive with the devices issue. What is
//! here is the interface the filesystem and networking units will depend on,
//! so they never depend on virtio itself. Nothing in this crate pretends to
//! drive hardware yet.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use core::fmt;

/// Errors of block devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// Block index or length beyond the device.
    OutOfRange,
    /// Buffer length is not a whole number of blocks.
    Unaligned,
    /// The device refuses writes.
    ReadOnly,
    /// The device reported an I/O error.
    Io,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfRange => "block out of range",
            Self::Unaligned => "buffer is not a whole number of blocks",
            Self::ReadOnly => "device is read-only",
            Self::Io => "device I/O error",
        })
    }
}

impl core::error::Error for BlockError {}

/// A device of fixed-size blocks. Each call carries its own position.
pub trait BlockDevice {
    /// Size of a block in bytes.
    fn block_size(&self) -> usize;
    /// Number of blocks.
    fn num_blocks(&self) -> u64;
    /// Read whole blocks starting at block `lba` into `buf`.
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Write whole blocks starting at block `lba` from `buf`.
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Make completed writes durable.
    fn flush(&mut self) -> Result<(), BlockError>;
}

/// Check a request against a device's geometry; drivers call this first.
pub fn check_request(dev: &dyn BlockDevice, lba: u64, len: usize) -> Result<(), BlockError> {
    let bs = dev.block_size();
    if bs == 0 || !len.is_multiple_of(bs) {
        return Err(BlockError::Unaligned);
    }
    let blocks = (len / bs) as u64;
    match lba.checked_add(blocks) {
        Some(end) if end <= dev.num_blocks() => Ok(()),
        _ => Err(BlockError::OutOfRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Geometry;
    impl BlockDevice for Geometry {
        fn block_size(&self) -> usize {
            512
        }
        fn num_blocks(&self) -> u64 {
            8
        }
        fn read_blocks(&mut self, _: u64, _: &mut [u8]) -> Result<(), BlockError> {
            Err(BlockError::Io)
        }
        fn write_blocks(&mut self, _: u64, _: &[u8]) -> Result<(), BlockError> {
            Err(BlockError::ReadOnly)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
    }

    #[test]
    fn requests_are_checked() {
        assert_eq!(check_request(&Geometry, 0, 4096), Ok(()));
        assert_eq!(check_request(&Geometry, 7, 1024), Err(BlockError::OutOfRange));
        assert_eq!(check_request(&Geometry, u64::MAX, 512), Err(BlockError::OutOfRange));
        assert_eq!(check_request(&Geometry, 0, 100), Err(BlockError::Unaligned));
    }
}
