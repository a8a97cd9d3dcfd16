//! Physical frame allocator.
//!
//! Frames come from up to [`MAX_RANGES`] usable ranges. Fresh frames are
//! taken with a bump pointer (no bitmap to initialise, so boot touches no
//! memory for it); freed frames go on a free list whose links are stored in
//! the freed frames themselves, reached through `phys_offset`.

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

/// Size of a frame.
pub const FRAME_SIZE: u64 = 4096;
/// Maximum number of ranges the allocator tracks.
pub const MAX_RANGES: usize = 32;

/// Round `x` up to a multiple of `align` (a power of two).
pub const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

/// Round `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// A half-open range of physical addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// `[start, end)`; an inverted range is empty.
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end: if end < start { start } else { end } }
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// The range shrunk to whole frames.
    pub const fn frame_aligned(&self) -> Self {
        Self::new(align_up(self.start, FRAME_SIZE), align_down(self.end, FRAME_SIZE))
    }

    /// Remove `hole` from `self`: up to two pieces remain.
    pub fn subtract(&self, hole: PhysRange) -> [PhysRange; 2] {
        if hole.is_empty() || hole.end <= self.start || hole.start >= self.end {
            return [*self, PhysRange::default()];
        }
        [PhysRange::new(self.start, hole.start), PhysRange::new(hole.end, self.end)]
    }
}

/// Errors of [`FrameAllocator::add_range`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More than [`MAX_RANGES`] ranges.
    TooManyRanges,
}

/// The allocator. See the module documentation.
#[derive(Debug)]
pub struct FrameAllocator {
    ranges: [PhysRange; MAX_RANGES],
    count: usize,
    /// Index of the range the bump pointer is in.
    current: usize,
    /// Next never-used frame in `ranges[current]`.
    next: u64,
    /// Physical address of the first freed frame, 0 when the list is empty
    /// (frame 0 is never handed out).
    free_head: u64,
    free_count: u64,
    phys_offset: u64,
}

impl FrameAllocator {
    /// An allocator with no memory; physical address `p` is reachable at
    /// virtual address `p + phys_offset`.
    pub const fn new(phys_offset: u64) -> Self {
        Self {
            ranges: [PhysRange { start: 0, end: 0 }; MAX_RANGES],
            count: 0,
            current: 0,
            next: 0,
            free_head: 0,
            free_count: 0,
            phys_offset,
        }
    }

    /// Give the allocator `range` (shrunk to whole frames, frame 0 excluded).
    pub fn add_range(&mut self, range: PhysRange) -> Result<(), FrameError> {
        let r = PhysRange::new(range.start.max(FRAME_SIZE), range.end).frame_aligned();
        if r.is_empty() {
            return Ok(());
        }
        if self.count == MAX_RANGES {
            return Err(FrameError::TooManyRanges);
        }
        self.ranges[self.count] = r;
        if self.count == 0 {
            self.next = r.start;
        }
        self.count += 1;
        Ok(())
    }

    /// Take one frame.
    pub fn allocate(&mut self) -> Option<PhysFrame<Size4KiB>> {
        if self.free_head != 0 {
            let frame = self.free_head;
            self.free_head = self.read_link(frame);
            self.free_count -= 1;
            return Some(PhysFrame::containing_address(PhysAddr::new(frame)));
        }
        while self.current < self.count {
            let r = self.ranges[self.current];
            if self.next < r.end {
                let frame = self.next;
                self.next += FRAME_SIZE;
                return Some(PhysFrame::containing_address(PhysAddr::new(frame)));
            }
            self.current += 1;
            if self.current < self.count {
                self.next = self.ranges[self.current].start;
            }
        }
        None
    }

    /// Return a frame. The caller must own it (it came from [`allocate`]
    /// and nothing uses it any more); its first 8 bytes are overwritten.
    ///
    /// [`allocate`]: Self::allocate
    pub fn deallocate(&mut self, frame: PhysFrame<Size4KiB>) {
        let addr = frame.start_address().as_u64();
        self.write_link(addr, self.free_head);
        self.free_head = addr;
        self.free_count += 1;
    }

    /// Bytes that can still be allocated.
    pub fn free_bytes(&self) -> u64 {
        let mut bytes = self.free_count * FRAME_SIZE;
        if self.current < self.count {
            bytes += self.ranges[self.current].end - self.next;
            for r in &self.ranges[self.current + 1..self.count] {
                bytes += r.len();
            }
        }
        bytes
    }

    fn read_link(&self, frame: u64) -> u64 {
        // Free frames are owned by the allocator, which is the only reader.
        crate::raw::read_u64(frame + self.phys_offset)
    }

    fn write_link(&self, frame: u64, value: u64) {
        crate::raw::write_u64(frame + self.phys_offset, value)
    }
}

// SAFETY: `allocate` hands out each frame at most once until it is given
// back with `deallocate`, which is what the trait requires.
#[allow(unsafe_code)]
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for FrameAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.allocate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host "physical memory": `frames` frames starting at physical `base`.
    struct Ram {
        buf: Vec<u64>,
        base: u64,
    }

    impl Ram {
        fn new(base: u64, frames: usize) -> Self {
            Self { buf: vec![0u64; frames * 512], base }
        }
        fn offset(&self) -> u64 {
            self.buf.as_ptr() as u64 - self.base
        }
        fn range(&self) -> PhysRange {
            PhysRange::new(self.base, self.base + self.buf.len() as u64 * 8)
        }
    }

    #[test]
    fn hands_out_each_frame_once_then_runs_out() {
        let ram = Ram::new(0x10_0000, 4);
        let mut fa = FrameAllocator::new(ram.offset());
        fa.add_range(ram.range()).unwrap();
        let got: Vec<u64> = (0..4).map(|_| fa.allocate().unwrap().start_address().as_u64()).collect();
        assert_eq!(got, [0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000]);
        assert!(fa.allocate().is_none());
        assert_eq!(fa.free_bytes(), 0);
    }

    #[test]
    fn freed_frames_are_reused_last_in_first_out() {
        let ram = Ram::new(0x20_0000, 3);
        let mut fa = FrameAllocator::new(ram.offset());
        fa.add_range(ram.range()).unwrap();
        let a = fa.allocate().unwrap();
        let b = fa.allocate().unwrap();
        fa.deallocate(a);
        fa.deallocate(b);
        assert_eq!(fa.free_bytes(), 3 * FRAME_SIZE);
        assert_eq!(fa.allocate(), Some(b));
        assert_eq!(fa.allocate(), Some(a));
        assert!(fa.allocate().is_some());
        assert!(fa.allocate().is_none());
    }

    #[test]
    fn walks_several_ranges_and_skips_partial_frames_and_frame_zero() {
        let mut fa = FrameAllocator::new(0);
        fa.add_range(PhysRange::new(0, 0x2000)).unwrap(); // frame 0 dropped
        fa.add_range(PhysRange::new(0x5800, 0x7100)).unwrap(); // one whole frame: 0x6000
        assert_eq!(fa.free_bytes(), 0x2000);
        assert_eq!(fa.allocate().unwrap().start_address().as_u64(), 0x1000);
        assert_eq!(fa.allocate().unwrap().start_address().as_u64(), 0x6000);
        assert!(fa.allocate().is_none());
    }

    #[test]
    fn range_limit_is_an_error() {
        let mut fa = FrameAllocator::new(0);
        for i in 0..MAX_RANGES as u64 {
            fa.add_range(PhysRange::new((i + 1) << 20, ((i + 1) << 20) + 0x1000)).unwrap();
        }
        assert_eq!(fa.add_range(PhysRange::new(1 << 40, (1 << 40) + 0x1000)), Err(FrameError::TooManyRanges));
    }

    #[test]
    fn subtract_splits_ranges() {
        let r = PhysRange::new(0x1000, 0x9000);
        assert_eq!(
            r.subtract(PhysRange::new(0x3000, 0x4000)),
            [PhysRange::new(0x1000, 0x3000), PhysRange::new(0x4000, 0x9000)]
        );
        assert_eq!(r.subtract(PhysRange::new(0, 0x2000))[1], PhysRange::new(0x2000, 0x9000));
        assert_eq!(r.subtract(PhysRange::new(0xa000, 0xb000))[0], r);
    }
}
