//! `memcpy`, `memmove` and `memset` for the guest, in place of
//! `compiler_builtins`' generic ones.
//!
//! Why by hand: the builtins' x86_64 versions run three `rep` string
//! instructions on every call (head, 8-byte body, tail), and a `rep`
//! instruction costs some 20–40 cycles to start whatever it moves. The
//! kernel's hot paths copy many small things (socket buffers a few bytes
//! at a time, frames, parsed requests): under `redis-benchmark` against
//! kvstore, `memcpy` was a quarter of the guest's time, most of it in the
//! ≤ 7-byte head and tail moves (samples from `perf kvm --guest record`,
//! docs/measurement.md). Here a copy of up to 64 bytes is a few plain
//! loads and stores (overlapping at the ends, so no loop and no branch per
//! byte), and a longer one is one `rep movsb`, which CPUs with fast string
//! operations (ERMSB, FSRM) run at memory speed. No crate offers this for
//! `no_std` (the builtins are what is being replaced).
//!
//! The bodies have no loops in Rust, so the compiler cannot turn them back
//! into calls to themselves; the long paths are inline assembly. The
//! symbols are defined only for the guest (`target_os = "none"`); on the
//! host (unit tests) the same bodies run under other names against the
//! standard library's results.

/// Copy `n` bytes from `src` to `dest`; the ranges may overlap (up to 64
/// bytes, everything is loaded before anything is stored; beyond, the
/// direction of the copy follows the overlap).
///
/// # Safety
/// `src` readable and `dest` writable for `n` bytes.
#[inline(always)]
pub unsafe fn copy(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: for every access below, the caller gives `n` readable bytes
    // at `src` and `n` writable bytes at `dest`; each access lies within
    // them (offsets `n - k` are taken only when `n >= k`), and unaligned
    // accesses are what `read_unaligned`/`write_unaligned` are for.
    unsafe {
        use core::ptr::{read_unaligned as rd, write_unaligned as wr};
        if n <= 16 {
            if n >= 8 {
                let (a, b) = (rd(src as *const u64), rd(src.add(n - 8) as *const u64));
                wr(dest as *mut u64, a);
                wr(dest.add(n - 8) as *mut u64, b);
            } else if n >= 4 {
                let (a, b) = (rd(src as *const u32), rd(src.add(n - 4) as *const u32));
                wr(dest as *mut u32, a);
                wr(dest.add(n - 4) as *mut u32, b);
            } else if n > 0 {
                // 1 to 3 bytes: the first, the middle and the last.
                let (a, b, c) = (*src, *src.add(n / 2), *src.add(n - 1));
                *dest = a;
                *dest.add(n / 2) = b;
                *dest.add(n - 1) = c;
            }
        } else if n <= 32 {
            let (a, b) = (rd(src as *const u64), rd(src.add(8) as *const u64));
            let (c, d) = (rd(src.add(n - 16) as *const u64), rd(src.add(n - 8) as *const u64));
            wr(dest as *mut u64, a);
            wr(dest.add(8) as *mut u64, b);
            wr(dest.add(n - 16) as *mut u64, c);
            wr(dest.add(n - 8) as *mut u64, d);
        } else if n <= 64 {
            let (a, b) = (rd(src as *const u64), rd(src.add(8) as *const u64));
            let (c, d) = (rd(src.add(16) as *const u64), rd(src.add(24) as *const u64));
            let (e, f) = (rd(src.add(n - 32) as *const u64), rd(src.add(n - 24) as *const u64));
            let (g, h) = (rd(src.add(n - 16) as *const u64), rd(src.add(n - 8) as *const u64));
            wr(dest as *mut u64, a);
            wr(dest.add(8) as *mut u64, b);
            wr(dest.add(16) as *mut u64, c);
            wr(dest.add(24) as *mut u64, d);
            wr(dest.add(n - 32) as *mut u64, e);
            wr(dest.add(n - 24) as *mut u64, f);
            wr(dest.add(n - 16) as *mut u64, g);
            wr(dest.add(n - 8) as *mut u64, h);
        } else if (dest as usize).wrapping_sub(src as usize) >= n {
            // `dest` is not inside `src..src + n`: forward is safe.
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        } else {
            // `dest` overlaps the source's tail: copy backwards, from the
            // last byte (the direction flag is set for this instruction
            // only; the ABI wants it clear everywhere else).
            core::arch::asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
    }
}

/// Set `n` bytes at `dest` to `byte`.
///
/// # Safety
/// `dest` writable for `n` bytes.
#[inline(always)]
pub unsafe fn fill(dest: *mut u8, byte: u8, n: usize) {
    let w = u64::from(byte) * 0x0101_0101_0101_0101;
    // SAFETY: for every access below, the caller gives `n` writable bytes
    // at `dest`; each store lies within them.
    unsafe {
        use core::ptr::write_unaligned as wr;
        if n <= 16 {
            if n >= 8 {
                wr(dest as *mut u64, w);
                wr(dest.add(n - 8) as *mut u64, w);
            } else if n >= 4 {
                wr(dest as *mut u32, w as u32);
                wr(dest.add(n - 4) as *mut u32, w as u32);
            } else if n > 0 {
                *dest = byte;
                *dest.add(n / 2) = byte;
                *dest.add(n - 1) = byte;
            }
        } else if n <= 64 {
            wr(dest as *mut u64, w);
            wr(dest.add(8) as *mut u64, w);
            wr(dest.add(n - 16) as *mut u64, w);
            wr(dest.add(n - 8) as *mut u64, w);
            if n > 32 {
                wr(dest.add(16) as *mut u64, w);
                wr(dest.add(24) as *mut u64, w);
                wr(dest.add(n - 32) as *mut u64, w);
                wr(dest.add(n - 24) as *mut u64, w);
            }
        } else {
            core::arch::asm!(
                "rep stosb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                in("al") byte,
                options(nostack, preserves_flags)
            );
        }
    }
}

/// The C `memcpy` of the guest.
///
/// # Safety
/// As C's: `src` readable and `dest` writable for `n` bytes.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, passed on.
    unsafe { copy(dest, src, n) };
    dest
}

/// The C `memmove` of the guest.
///
/// # Safety
/// As C's: `src` readable and `dest` writable for `n` bytes.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, passed on; `copy` allows overlap.
    unsafe { copy(dest, src, n) };
    dest
}

/// The C `memset` of the guest.
///
/// # Safety
/// As C's: `dest` writable for `n` bytes.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, passed on.
    unsafe { fill(dest, c as u8, n) };
    dest
}

#[cfg(test)]
mod tests {
    use super::{copy, fill};
    use alloc::vec;
    use alloc::vec::Vec;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Every length up to 300 at every alignment of both ends, against
    /// `copy_from_slice`; bytes around the destination untouched.
    #[test]
    fn copies_every_length_and_alignment() {
        let src = pattern(400);
        for n in 0..300 {
            for so in 0..8 {
                for d_off in 0..8 {
                    let mut dst = vec![0xeeu8; 320];
                    // SAFETY: both ranges lie inside their vectors.
                    unsafe { copy(dst.as_mut_ptr().add(d_off), src.as_ptr().add(so), n) };
                    assert_eq!(&dst[d_off..d_off + n], &src[so..so + n], "n={n} so={so} do={d_off}");
                    assert!(dst[..d_off].iter().chain(&dst[d_off + n..]).all(|&b| b == 0xee), "n={n}");
                }
            }
        }
    }

    /// Overlapping moves both ways give `copy_within`'s result.
    #[test]
    fn moves_overlapping_ranges_as_copy_within() {
        for n in 0..300 {
            for shift in [1usize, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100] {
                let base = pattern(700);
                let mut fwd = base.clone();
                let mut want = base.clone();
                want.copy_within(shift..shift + n, 0);
                // SAFETY: both ranges lie inside the vector.
                unsafe { copy(fwd.as_mut_ptr(), fwd.as_ptr().add(shift), n) };
                assert_eq!(fwd, want, "down n={n} shift={shift}");
                let mut back = base.clone();
                let mut want = base;
                want.copy_within(0..n, shift);
                // SAFETY: both ranges lie inside the vector.
                unsafe { copy(back.as_mut_ptr().add(shift), back.as_ptr(), n) };
                assert_eq!(back, want, "up n={n} shift={shift}");
            }
        }
    }

    /// Every length and alignment, against `fill`; neighbours untouched.
    #[test]
    fn sets_every_length_and_alignment() {
        for n in 0..300 {
            for off in 0..8 {
                let mut dst = vec![0xeeu8; 320];
                // SAFETY: the range lies inside the vector.
                unsafe { fill(dst.as_mut_ptr().add(off), 0x5a, n) };
                assert!(dst[off..off + n].iter().all(|&b| b == 0x5a), "n={n} off={off}");
                assert!(dst[..off].iter().chain(&dst[off + n..]).all(|&b| b == 0xee), "n={n}");
            }
        }
    }
}
