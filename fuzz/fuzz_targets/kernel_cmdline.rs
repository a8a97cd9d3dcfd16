//! Fuzz target: the kernel's command-line parsers, as a guest runs them on
//! what the monitor, QEMU or Firecracker wrote: the virtio-mmio devices
//! (`virtio_mmio.device=SIZE@BASE:IRQ`) and the network settings
//! (`torito.ip=ADDR/PREFIX`, `torito.gw=ADDR`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    for d in unit_devices::cmdline::mmio_devices(&line).take(64) {
        let _ = d;
    }
    let _ = unit_net::NetConfig::from_cmdline(&line);
});
