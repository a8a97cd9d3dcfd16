//! What the fuzz targets (`fuzz/`, `cargo xtask fuzz`) drive, and the
//! unit tests that replay their corpora on stable: every guest-facing
//! parser of the monitor, fed arbitrary bytes.
//!
//! - [`elf`]: the ELF and note checks.
//! - [`device`]: one virtio device (block, network, vsock) or none behind
//!   the register page and COM1, in arbitrary guest memory: the input
//!   sets the memory (descriptor tables, rings, requests, all arbitrary),
//!   then makes MMIO and port accesses anywhere in the devices' windows
//!   and lets the host side run; optionally a driver first sets the
//!   queues up, so that arbitrary descriptor chains are reached at once.
//! - [`command_line`]: the monitor's command-line parser (clap and the
//!   option parsers) and the kernel command-line check.
//!
//! Each must return, whatever the input: no panic, no hang, no growth
//! beyond what the device bounds allow.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use torito_abi::layout::{TORITO_MMIO_BASE, VIRTIO_MMIO_BASE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::Devices;
use crate::devices::virtio::mmio::MmioDevice;

/// The ELF checks on arbitrary bytes, then, if they pass, the loading
/// into a guest memory.
pub fn elf(data: &[u8]) {
    const MEM: u64 = 16 << 20;
    if let Ok(info) = crate::loader::check(data, MEM) {
        let _ = info.note.max_cores;
    }
}

/// Which virtio device [`device`] puts behind the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No virtio device: the register page and COM1 only.
    None,
    /// virtio-blk on a 64 KiB file.
    Blk,
    /// virtio-net on one end of a socket pair.
    Net,
    /// virtio-vsock on a Unix socket.
    Vsock,
}

/// Guest RAM of the fuzzed machine; the input's first bytes are its
/// start (the rings and tables a driver would set up live there).
const RAM: usize = 64 << 10;
/// How much of RAM the input sets.
const IMAGE: usize = 8 << 10;
/// Where the driver preset puts queue rings (inside the image).
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x800;
const USED: u64 = 0x1000;

/// A scratch file's path, new at each call (tests run inputs on several
/// threads at once): in memory (`/dev/shm`) where there is one. Removed
/// as soon as the device holds it open, so nothing is left behind.
fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("torito-fuzz-{name}-{}-{n}", std::process::id()))
}

fn make(kind: Kind, readonly: bool) -> Option<(MmioDevice, Option<std::os::unix::net::UnixDatagram>)> {
    match kind {
        Kind::None => None,
        Kind::Blk => {
            // The same (zeroed) disk every run, so a run can be replayed.
            let path = scratch("disk");
            std::fs::write(&path, vec![0u8; 64 << 10]).ok()?;
            let cfg = crate::config::DiskConfig { path: path.clone(), readonly, iothread: false };
            let dev = crate::devices::virtio::blk::open(&cfg, 0);
            let _ = std::fs::remove_file(&path);
            dev.ok().map(|d| (d, None))
        }
        Kind::Net => {
            let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().ok()?;
            ours.set_nonblocking(true).ok()?;
            theirs.set_nonblocking(true).ok()?;
            let tap =
                crate::devices::tap::Tap::for_tests(std::fs::File::from(std::os::fd::OwnedFd::from(ours)));
            let net = crate::devices::virtio::net::Net::new(tap, [2, 0, 0, 0, 0, 1]);
            Some((MmioDevice::new(net), Some(theirs)))
        }
        Kind::Vsock => {
            let uds = scratch("vsock.sock");
            let cfg = crate::config::VsockConfig { cid: 3, uds: uds.clone() };
            let dev = crate::devices::virtio::vsock::open(&cfg);
            // The listener stays open; nobody needs to connect.
            let _ = std::fs::remove_file(&uds);
            dev.ok().map(|d| (d, None))
        }
    }
}

/// Little-endian `u32` at `at` of `data` (zeros past its end).
fn word(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

/// One fuzz input on a machine with a `kind` device. Layout: a control
/// byte (bit 0: set the queues up as a driver would; bit 1: read-only
/// disk), [`IMAGE`] bytes of guest memory, then 8-byte operations
/// (`op`, `index`, `offset: u16`, `value: u32`). Returns the index of
/// the used ring at the preset's place (for the tests).
pub fn device(kind: Kind, data: &[u8]) -> u16 {
    let Some((&ctrl, rest)) = data.split_first() else { return 0 };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]) else { return 0 };
    let image = &rest[..rest.len().min(IMAGE)];
    let _ = mem.write_slice(image, GuestAddress(0));
    let ops = rest.get(IMAGE..).unwrap_or(&[]);

    let mut devices = Devices::with_serial(Box::new(std::io::sink()), Box::new(std::io::sink()));
    let made = make(kind, ctrl & 2 != 0);
    let peer = match made {
        Some((dev, peer)) => {
            devices.add_virtio(dev);
            peer
        }
        None => None,
    };
    let base = VIRTIO_MMIO_BASE;
    let w = |d: &mut Devices, off: u64, v: u32| {
        d.mmio_write(&mem, base + off, &v.to_le_bytes());
    };
    if ctrl & 1 != 0 && kind != Kind::None {
        // A driver: status, features, each queue at the same rings, ready.
        w(&mut devices, 0x70, 1 | 2);
        w(&mut devices, 0x24, 1);
        w(&mut devices, 0x20, 1); // VIRTIO_F_VERSION_1 (bit 32)
        w(&mut devices, 0x70, 1 | 2 | 8);
        for q in 0..3 {
            w(&mut devices, 0x30, q);
            w(&mut devices, 0x38, 16);
            w(&mut devices, 0x80, DESC as u32);
            w(&mut devices, 0x90, AVAIL as u32);
            w(&mut devices, 0xa0, USED as u32);
            w(&mut devices, 0x44, 1);
        }
        w(&mut devices, 0x70, 1 | 2 | 8 | 4);
        for q in 0..3 {
            w(&mut devices, 0x50, q);
        }
    }
    for op in ops.chunks(8).take(256) {
        let (kind_of, index, off, value) =
            (op[0] % 6, op.get(1).copied().unwrap_or(0), word(op, 2) & 0xffff, word(op, 4));
        let size = [1usize, 2, 4, 8][usize::from(index >> 6)];
        let bytes = u64::from(value).to_le_bytes();
        match kind_of {
            0 => {
                devices.mmio_write(&mem, base + u64::from(off & 0x1ff), &bytes[..size]);
            }
            1 => {
                let mut b = [0u8; 8];
                devices.mmio_read(base + u64::from(off & 0x1ff), &mut b[..size]);
            }
            2 => {
                // The register page: console, exit, marks, backtraces…
                devices.mmio_write(&mem, TORITO_MMIO_BASE + u64::from(off & 0xff), &bytes[..size]);
            }
            3 => {
                devices.pio_write(0x3f8 + (off & 7) as u16, &bytes[..1]);
                let mut b = [0u8; 1];
                devices.pio_read(0x3f8 + ((off >> 3) & 7) as u16, &mut b);
            }
            4 => {
                // A frame from the host side (NIC), then the host's turn.
                if let Some(p) = &peer {
                    let from = usize::from(index) * 16 % image.len().max(1);
                    let len = (value as usize % 1600).min(image.len().saturating_sub(from));
                    let _ = p.send(&image[from..from + len]);
                }
                devices.service_host(&mem);
            }
            _ => {
                devices.mmio_write(&mem, base + 0x50, &u32::from(index % 3).to_le_bytes());
            }
        }
    }
    mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0)
}

/// The monitor's command line (words separated by NUL bytes, after the
/// program name), parsed as `torito` parses it, then the kernel command
/// line check on the bytes as text.
pub fn command_line(data: &[u8]) {
    let words = data.split(|&b| b == 0).map(|w| String::from_utf8_lossy(w).into_owned());
    let args = std::iter::once("torito".to_string()).chain(words);
    // clap's derive builds its `Command` anew at each parse, which costs
    // more than the parse; built once and cloned, the same parse runs
    // several times as many inputs a second.
    static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    let command = COMMAND.get_or_init(<crate::cli::Cli as clap::CommandFactory>::command);
    if let Ok(matches) = command.clone().try_get_matches_from(args)
        && let Ok(cli) = <crate::cli::Cli as clap::FromArgMatches>::from_arg_matches(&matches)
    {
        let _ = cli.config();
    }
    let _ = crate::arch::boot_info::check_cmdline(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input in the fuzz corpora (`fuzz/corpus/TARGET/`), crashes
    /// found once included, runs to its end: the fuzzers' findings as
    /// ordinary tests on stable.
    fn replay(target: &str, run: impl Fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "{}: no seed", dir.display());
    }

    #[test]
    fn the_elf_corpus_replays() {
        replay("elf", elf);
    }

    #[test]
    fn the_device_corpora_replay() {
        replay("mmio", |d| {
            device(Kind::None, d);
        });
        replay("virtio_blk", |d| {
            device(Kind::Blk, d);
        });
        replay("virtio_net", |d| {
            device(Kind::Net, d);
        });
        replay("virtio_vsock", |d| {
            device(Kind::Vsock, d);
        });
    }

    #[test]
    fn the_command_line_corpus_replays() {
        replay("command_line", command_line);
    }

    /// Found by the fuzzer: a receive ring whose index says buffers are
    /// posted while none can be taken (an index beyond the queue's size)
    /// kept the NIC's receive path retrying for ever, under the devices'
    /// lock. It now tries once more, then waits for a notification.
    #[test]
    fn a_receive_ring_that_says_more_for_ever_does_not_spin() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtio_net");
        device(Kind::Net, &std::fs::read(dir.join("regression-rx-ring-says-more-for-ever")).unwrap());
    }

    /// The driver preset reaches the queues: a block read request built
    /// in the image completes.
    #[test]
    fn the_driver_preset_reaches_the_device() {
        let mut data = vec![1u8];
        let mut image = vec![0u8; IMAGE];
        // Descriptors: header (0x2000, 16), data (0x2100, 512, write), status (0x2400, 1, write).
        let desc = |i: usize, addr: u64, len: u32, flags: u16, next: u16, img: &mut Vec<u8>| {
            let at = DESC as usize + 16 * i;
            img[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            img[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            img[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
            img[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
        };
        desc(0, 0x1800, 16, 1, 1, &mut image);
        desc(1, 0x1900, 512, 3, 2, &mut image);
        desc(2, 0x1c00, 1, 2, 0, &mut image);
        // avail: flags 0, idx 1, ring[0] = 0.
        image[AVAIL as usize + 2] = 1;
        data.extend(&image);
        assert_eq!(device(Kind::Blk, &data), 1, "the request was served");
    }
}
