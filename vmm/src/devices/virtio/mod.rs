//! Virtio devices on the virtio-mmio transport.
//!
//! - [`mmio`]: the transport (registers, features, queues, interrupts)
//!   and the [`mmio::Backend`] trait every device implements.
//! - [`queue`]: the ways devices walk their queues.
//! - [`blk`], [`net`], [`vsock`], [`fs`]: the backends.

pub mod blk;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod vsock;

pub use mmio::{Backend, Effect, MmioDevice, Queues};
