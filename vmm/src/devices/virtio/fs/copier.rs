//! A second thread for large READs. Most of a large READ's cost is the
//! host kernel's copy from its page cache into guest memory (~70 µs a MiB
//! on this host, one thread), and one thread does not reach what the
//! memory allows: a READ of [`SPLIT`] bytes or more is served in two
//! halves, the vCPU's thread reading the first while this one reads the
//! second (`Fs::read_direct`), each with `pread` into guest memory.
//!
//! The thread starts at the first large READ (a run that reads no large
//! file pays nothing, launch included) and installs its own seccomp filter
//! (`Role::Copy`: `pread64` and the basics) before it takes a piece. After
//! each piece it spins for [`SPIN`] before it sleeps: a guest reading a
//! file sends its next READ within tens of µs, and waking a sleeping
//! thread costs about as much as the half it would copy. The vCPU's
//! thread, its own half done, spins until the other half is in.

use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::fill;
use crate::sandbox::{Role, Sandbox};

/// The smallest READ served in two halves.
pub const SPLIT: usize = 256 << 10;
/// How long the thread looks for the next piece before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

// The thread's states.
const STARTING: u32 = 0;
const IDLE: u32 = 1;
const PARKED: u32 = 2;
const PIECE: u32 = 3;
const DONE: u32 = 4;
const STOP: u32 = 5;
/// It could not install its filter and ended.
const GONE: u32 = 6;

/// A piece to read: `file` from `offset` into the guest buffers `to`
/// (guest address, length), in order.
pub struct Piece {
    pub file: Arc<File>,
    pub offset: u64,
    pub to: Vec<(u64, usize)>,
}

#[derive(Default)]
struct Slot {
    piece: Option<Piece>,
    /// Bytes read, or an errno.
    result: Option<Result<usize, i32>>,
}

struct Shared {
    state: AtomicU32,
    slot: Mutex<Slot>,
}

impl Shared {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The copying thread, as the vCPU's side sees it.
pub struct Copier {
    shared: Arc<Shared>,
    thread: Thread,
}

impl Copier {
    /// Start the thread over `mem` (the guest's RAM, for the whole run);
    /// `None` if the host refused a thread.
    pub fn start(mem: &GuestMemoryMmap, sandbox: &Sandbox) -> Option<Self> {
        let shared = Arc::new(Shared { state: AtomicU32::new(STARTING), slot: Mutex::default() });
        let (mem, sandbox, inner) = (mem.clone(), sandbox.clone(), Arc::clone(&shared));
        let handle = std::thread::Builder::new()
            .name("fs-copy".into())
            .stack_size(256 << 10)
            .spawn(move || run(&inner, &mem, &sandbox))
            .ok()?;
        Some(Self { shared, thread: handle.thread().clone() })
    }

    /// Whether the thread takes pieces (not while it starts, nor once it
    /// could not install its filter).
    pub fn ready(&self) -> bool {
        matches!(self.shared.state.load(Ordering::Acquire), IDLE | PARKED)
    }

    /// Hand `piece` to a [ready](Copier::ready) thread.
    pub fn post(&self, piece: Piece) {
        self.shared.slot().piece = Some(piece);
        if self.shared.state.swap(PIECE, Ordering::AcqRel) == PARKED {
            self.thread.unpark();
        }
    }

    /// Wait for the piece posted last: bytes read, or an errno.
    pub fn wait(&self) -> Result<usize, i32> {
        let mut spins = 0u32;
        while self.shared.state.load(Ordering::Acquire) != DONE {
            if spins < 1 << 16 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let r = self.shared.slot().result.take().unwrap_or(Err(libc::EIO));
        self.shared.state.store(IDLE, Ordering::Release);
        r
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.shared.state.store(STOP, Ordering::Release);
        self.thread.unpark();
    }
}

/// The thread: its filter, then one piece after another.
fn run(shared: &Shared, mem: &GuestMemoryMmap, sandbox: &Sandbox) {
    if sandbox.enter(Role::Copy).is_err()
        || shared.state.compare_exchange(STARTING, IDLE, Ordering::AcqRel, Ordering::Acquire).is_err()
    {
        shared.state.store(GONE, Ordering::Release);
        return;
    }
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        loop {
            match shared.state.load(Ordering::Acquire) {
                PIECE => break,
                STOP => return,
                IDLE if spins.is_multiple_of(64) && since.elapsed() >= SPIN => {
                    if shared
                        .state
                        .compare_exchange(IDLE, PARKED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        while shared.state.load(Ordering::Acquire) == PARKED {
                            std::thread::park();
                        }
                    }
                }
                _ => std::hint::spin_loop(),
            }
            spins = spins.wrapping_add(1);
        }
        let piece = shared.slot().piece.take();
        // The file is let go of before the vCPU hears of the result.
        let result = piece.map_or(Err(libc::EIO), |p| fill(mem, &p.file, p.offset, &p.to));
        shared.slot().result = Some(result);
        shared.state.store(DONE, Ordering::Release);
    }
}
