//! Network devices: the [`NetDevice`] interface (Ethernet frames in and
//! out; the networking unit builds its TCP/IP stack on it and never sees
//! virtio) and the virtio-net driver from `virtio-drivers` behind it.

use virtio_drivers::device::net::VirtIONet;

use crate::hal::ToritoHal;
use crate::virtio::Location;

/// Errors of network devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The transmit ring is full; try again later.
    WouldBlock,
    /// The frame is larger than the device takes.
    TooLarge,
    /// The device failed.
    Io,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::WouldBlock => "the transmit ring is full",
            Self::TooLarge => "frame too large",
            Self::Io => "network device error",
        })
    }
}

/// A network interface that sends and receives Ethernet frames.
pub trait NetDevice {
    /// The interface's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Largest IP packet, in bytes (the Ethernet MTU).
    fn mtu(&self) -> usize;
    /// Queue one frame for sending.
    fn try_send(&mut self, frame: &[u8]) -> Result<(), NetError>;
    /// Take one received frame into `buf`; `Ok(None)` when none is waiting.
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;
    /// Acknowledge the device's interrupt if one came, so the next frame
    /// interrupts again (call before looking for frames); whether one came
    /// (always `true` for a device without interrupts: look anyway).
    fn service_interrupt(&mut self) -> bool {
        true
    }
    /// Whether a received frame waits (the stack polls again before it
    /// sleeps: a frame may have come without an interrupt while sending).
    fn frame_waiting(&mut self) -> bool {
        false
    }
}

/// Ring size of each virtio-net queue.
const QUEUE: usize = 64;
/// Receive buffer size: an Ethernet frame and the virtio-net header.
pub const RX_BUF: usize = 2048;

/// An interrupt line and the function that says whether it fired.
type IrqTake = (u32, fn(u32) -> bool);

/// A virtio-net device.
pub struct VirtioNet {
    dev: VirtIONet<ToritoHal, crate::stepwise::Stepwise, QUEUE>,
    irq: Option<IrqTake>,
    /// Where the device is.
    pub location: Location,
}

impl VirtioNet {
    /// Set up the device on `transport`.
    pub fn new(
        transport: crate::stepwise::Stepwise,
        location: Location,
    ) -> Result<Self, virtio_drivers::Error> {
        let dev = VirtIONet::new(transport, RX_BUF)?;
        Ok(Self { dev, irq: None, location })
    }

    /// Received frames interrupt on `line`; `take(line)` says whether one
    /// came since the last look.
    pub fn use_interrupts(&mut self, line: u32, take: fn(u32) -> bool) {
        self.dev.enable_interrupts();
        self.irq = Some((line, take));
    }

    /// Whether received frames interrupt.
    pub fn interrupts(&self) -> bool {
        self.irq.is_some()
    }
}

impl NetDevice for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    fn mtu(&self) -> usize {
        1500
    }

    fn try_send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() > 1514 {
            return Err(NetError::TooLarge);
        }
        if !self.dev.can_send() {
            return Err(NetError::WouldBlock);
        }
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        // No interrupt for the transmit completion, which `send` waits for
        // (the Torito monitor completes it during the notification): each
        // would cost the guest an interrupt and an acknowledgement (two
        // exits). virtio-drivers switches both queues at once, so a frame
        // received meanwhile does not interrupt either: `frame_waiting`
        // makes the stack look again.
        if self.irq.is_some() {
            self.dev.disable_interrupts();
        }
        let r = self.dev.send(tx).map_err(|_| NetError::Io);
        if self.irq.is_some() {
            self.dev.enable_interrupts();
        }
        r
    }

    fn frame_waiting(&mut self) -> bool {
        // The flag store (`enable_interrupts`) before the look at the used
        // ring: a frame the device adds after the look interrupts.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.dev.can_recv()
    }

    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        if !self.dev.can_recv() {
            return Ok(None);
        }
        let rx = self.dev.receive().map_err(|_| NetError::Io)?;
        let n = rx.packet_len().min(buf.len());
        buf[..n].copy_from_slice(&rx.packet()[..n]);
        self.dev.recycle_rx_buffer(rx).map_err(|_| NetError::Io)?;
        Ok(Some(n))
    }

    fn service_interrupt(&mut self) -> bool {
        match self.irq {
            Some((line, take)) => {
                let came = take(line);
                if came {
                    self.dev.ack_interrupt();
                }
                came
            }
            None => true,
        }
    }
}
