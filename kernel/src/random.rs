//! Random numbers: a ChaCha20 generator (`rand_chacha`) seeded once, at
//! first use, from everything the machine offers: 32 bytes of the host's
//! `getrandom` that the Torito monitor passes in the boot information,
//! the CPU's RDSEED or RDRAND where present, and the TSC.
//!
//! ```ignore
//! let token = kernel::random::u64();
//! let mut key = [0u8; 32];
//! kernel::random::fill(&mut key);
//! ```
//!
//! [`seeded_securely`] says whether the seed had a real source of entropy
//! (the host's bytes or the CPU's generator); on QEMU or Firecracker with
//! a CPU that has neither RDSEED nor RDRAND, only the TSC seeds it:
//! unpredictable enough for hash seeds and back-off, not for keys.
//! [`Rng`] is the generator as a `rand_core::RngCore` (re-exported as
//! `kernel::random::rand_core`), for crates that take one.

use core::sync::atomic::{AtomicBool, Ordering};

use rand_chacha::ChaCha20Rng;
pub use rand_core;
use rand_core::{RngCore, SeedableRng};

static GENERATOR: spin::Mutex<Option<ChaCha20Rng>> = spin::Mutex::new(None);
static SECURE: AtomicBool = AtomicBool::new(false);

/// The seed: the host's bytes, the CPU's, and the TSC, mixed word by word
/// (the generator's key schedule does the rest); and whether a real
/// source went in.
fn seed() -> ([u8; 32], bool) {
    let host = crate::boot::try_info().map_or([0; 4], |b| b.entropy);
    let mut secure = host != [0; 4];
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_exact_mut(8).enumerate() {
        let cpu = crate::arch::hardware_random();
        secure |= cpu.is_some();
        let tsc = crate::arch::rdtsc().rotate_left(17 * i as u32);
        let word = host[i] ^ cpu.unwrap_or(0) ^ tsc;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    (seed, secure)
}

fn with<T>(f: impl FnOnce(&mut ChaCha20Rng) -> T) -> T {
    let mut g = GENERATOR.lock();
    let rng = g.get_or_insert_with(|| {
        let (s, secure) = seed();
        SECURE.store(secure, Ordering::Relaxed);
        ChaCha20Rng::from_seed(s)
    });
    f(rng)
}

/// Fill `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    with(|r| r.fill_bytes(buf))
}

/// A random `u64`.
pub fn u64() -> u64 {
    with(|r| r.next_u64())
}

/// A random `u32`.
pub fn u32() -> u32 {
    with(|r| r.next_u32())
}

/// Whether the generator was seeded from the host's entropy or the CPU's
/// generator (not from the TSC alone). Seeds the generator if it was not.
pub fn seeded_securely() -> bool {
    with(|_| ());
    SECURE.load(Ordering::Relaxed)
}

/// The kernel's generator as a `rand_core` generator (every instance
/// draws from the one shared generator).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rng;

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        u32()
    }

    fn next_u64(&mut self) -> u64 {
        u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        fill(dst)
    }
}

/// ChaCha20 seeded as above is a cryptographically secure generator when
/// [`seeded_securely`] holds.
impl rand_core::CryptoRng for Rng {}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_differ_and_fill_covers_the_buffer() {
        let (a, b) = (super::u64(), super::u64());
        assert_ne!(a, b);
        let mut buf = [0u8; 64];
        super::fill(&mut buf);
        assert!(buf.iter().filter(|&&x| x == 0).count() < 8, "{buf:?}");
    }
}
