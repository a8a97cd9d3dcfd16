//! The ways the monitor's devices walk their queues, written once: serve
//! every request chain (a disk), read every chain the driver sent (a
//! transmit queue), fill the driver's next buffer (a receive queue).
//!
//! Chains are walked with `virtio-queue`'s checks: a chain that loops or is
//! longer than the queue ends, and its `Reader`/`Writer` check every buffer
//! against guest memory, lengths included. A chain that points outside RAM
//! is returned with length 0; nothing in it is trusted.

use std::io::Write;

use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// A chain of the guest's descriptors.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// Serve every chain the driver made available: `serve` returns how many
/// bytes it wrote into each, and the chain goes back to the driver with
/// that length. Stops if the used ring cannot be written.
pub fn serve_all<'m>(queue: &mut Queue, mem: &'m GuestMemoryMmap, mut serve: impl FnMut(Chain<'m>) -> u32) {
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = serve(chain);
        if queue.add_used(mem, head, len).is_err() {
            break;
        }
    }
}

/// Read every chain the driver made available (buffers it sends): each is
/// handed to `read` and returned with length 0.
pub fn read_all(queue: &mut Queue, mem: &GuestMemoryMmap, mut read: impl FnMut(Reader<'_>)) {
    serve_all(queue, mem, |chain| {
        if let Ok(r) = chain.reader(mem) {
            read(r);
        }
        0
    });
}

/// What became of a frame offered to a receive queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Written (or, in a single buffer too small for it, dropped: the
    /// buffer returns with length 0).
    Done,
    /// The buffers posted cannot hold it yet; none was taken.
    NoRoom,
    /// The whole ring cannot hold it; none was taken.
    Never,
}

/// Write `data` (a `virtio_net_hdr` whose last two bytes are
/// `num_buffers`, then a frame) into the driver's next buffer, or with
/// `merged` (mergeable receive buffers, virtio 1.2 §5.1.6.3.2) across as
/// many of its next buffers as it takes, `num_buffers` set to their count.
/// Buffers are taken all or none: when those posted cannot hold it, the
/// queue is rewound.
pub fn fill_merged(queue: &mut Queue, mem: &GuestMemoryMmap, data: &mut [u8], merged: bool) -> Fill {
    let start = queue.next_avail();
    let mut chains: Vec<Chain<'_>> = Vec::new();
    let mut room = 0usize;
    while room < data.len() {
        if chains.len() >= usize::from(queue.size()) {
            queue.set_next_avail(start);
            return Fill::Never;
        }
        let next = if !merged && !chains.is_empty() { None } else { queue.pop_descriptor_chain(mem) };
        let Some(chain) = next else {
            if merged || chains.is_empty() {
                queue.set_next_avail(start);
                return Fill::NoRoom;
            }
            break;
        };
        room += chain.clone().writer(mem).map_or(0, |w| w.available_bytes());
        chains.push(chain);
    }
    let fits = room >= data.len();
    let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    if let Some(n) = data.get_mut(10..12) {
        n.copy_from_slice(&count.to_le_bytes());
    }
    let mut at = 0;
    for chain in chains {
        let head = chain.head_index();
        let written = match chain.writer(mem) {
            Ok(mut w) if fits => {
                let take = w.available_bytes().min(data.len() - at);
                if w.write_all(&data[at..at + take]).is_ok() {
                    at += take;
                    take
                } else {
                    0
                }
            }
            _ => 0,
        };
        if queue.add_used(mem, head, written as u32).is_err() {
            break;
        }
    }
    Fill::Done
}

/// Fill the driver's next buffer (a receive queue): `fill` writes into it
/// and returns the bytes written (0: the buffer could not take them). Returns
/// `false`, without calling `fill`, when the driver has no buffer posted.
pub fn fill_next(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    fill: impl FnOnce(&mut Writer<'_>) -> u32,
) -> bool {
    let Some(chain) = queue.pop_descriptor_chain(mem) else { return false };
    let head = chain.head_index();
    let len = match chain.writer(mem) {
        Ok(mut w) => fill(&mut w),
        Err(_) => 0,
    };
    queue.add_used(mem, head, len).is_ok()
}
