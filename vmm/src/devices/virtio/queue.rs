//! The ways the monitor's devices walk their queues, written once: serve
//! every request chain (a disk), read every chain the driver sent (a
//! transmit queue), fill the driver's next buffer (a receive queue).
//!
//! Chains are walked with `virtio-queue`'s checks: a chain that loops or is
//! longer than the queue ends, and its `Reader`/`Writer` check every buffer
//! against guest memory, lengths included. A chain that points outside RAM
//! is returned with length 0; nothing in it is trusted.

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
