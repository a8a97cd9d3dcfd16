//! Devices named on the kernel command line, in the format QEMU microvm
//! (with `acpi=off`), Firecracker and the Torito monitor write:
//! `virtio_mmio.device=<size>@<base>:<irq>`, e.g. `512@0xfeb00e00:12` or
//! `4K@0xd0000000:5`. Sizes take K/M/G suffixes; the base is hexadecimal
//! with `0x` or decimal.

/// One virtio-mmio device: its register window and interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base address of the registers.
    pub base: u64,
    /// Size of the register window in bytes.
    pub size: u64,
    /// Interrupt line (an IOAPIC pin on QEMU; on the Torito monitor, the
    /// device vector `0x50 + irq` on core 0).
    pub irq: u32,
}

const KEY: &str = "virtio_mmio.device=";

/// The virtio-mmio devices in `cmdline`, in order; malformed entries are
/// returned as errors with the text, so the kernel can say which.
pub fn mmio_devices(cmdline: &str) -> impl Iterator<Item = Result<MmioDevice, &str>> {
    cmdline.split_ascii_whitespace().filter_map(|w| w.strip_prefix(KEY)).map(|v| parse(v).ok_or(v))
}

fn parse(v: &str) -> Option<MmioDevice> {
    let (size, rest) = v.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    let size = parse_size(size)?;
    let base = parse_u64(base)?;
    let irq = irq.parse().ok()?;
    (size > 0 && base.checked_add(size).is_some()).then_some(MmioDevice { base, size, irq })
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(num)?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz corpus of the kernel's command-line parsers
    /// (`fuzz/corpus/kernel_cmdline`, findings included) parses without a
    /// panic.
    #[test]
    fn the_fuzz_corpus_parses() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/kernel_cmdline");
        for e in std::fs::read_dir(dir).unwrap() {
            let line = String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned();
            let _ = mmio_devices(&line).take(64).count();
        }
    }

    #[test]
    fn qemu_firecracker_and_torito_formats() {
        let line = "a virtio_mmio.device=512@0xfeb00e00:12 b virtio_mmio.device=4K@0xd0000000:5";
        let all: Vec<_> = mmio_devices(line).collect();
        assert_eq!(
            all,
            [
                Ok(MmioDevice { base: 0xfeb0_0e00, size: 512, irq: 12 }),
                Ok(MmioDevice { base: 0xd000_0000, size: 4096, irq: 5 })
            ]
        );
    }

    #[test]
    fn malformed_entries_are_named() {
        let bad = [
            "virtio_mmio.device=",
            "virtio_mmio.device=4K",
            "virtio_mmio.device=4K@0xzz:1",
            "virtio_mmio.device=0@0x1000:1",
            "virtio_mmio.device=1G@0xffffffffffffffff:1",
            "virtio_mmio.device=4K@0x1000:x",
        ];
        for b in bad {
            let got: Vec<_> = mmio_devices(b).collect();
            assert_eq!(got.len(), 1, "{b}");
            assert!(got[0].is_err(), "{b}");
        }
        assert_eq!(mmio_devices("root=/dev/vda console=ttyS0").count(), 0);
    }
}
