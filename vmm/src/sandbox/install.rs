//! The vCPU filter onto every thread, off the launch path.
//!
//! Installing a filter costs the kernel ~100 µs on this host (checking,
//! translating and JIT-compiling it, then running it once per system call
//! number to fill its cache), and compiling it here as much again. Done on
//! the main thread, that would all come before the guest's first
//! instruction. Instead a thread of its own compiles it while the monitor
//! sets the VM up, and when told [`Installer::go`] (the set-up is over)
//! installs it on every thread at once (`SECCOMP_FILTER_FLAG_TSYNC`) while
//! the guest runs its first instructions. The main thread waits for it
//! ([`Installer::wait`]) before it acts on the guest's first exit: the
//! guest's code before that is its own and KVM's, so no code of the
//! monitor that a guest drives ever runs unfiltered.
//!
//! The sandbox thread is kept off the CPU the main thread runs on as it is
//! made. Some hosts' schedulers pack threads onto the CPUs already busy
//! and leave the others idle (this kind of host: a kernel option,
//! `sched_vcpu_pack`): the new thread was queued behind the main thread
//! on its CPU, ran only when the main thread blocked, and so compiled the
//! filter in the main thread's time, warmed nothing up before the guest
//! ran, and installed the filter at the guest's first exit, while the
//! vCPU waited; what was left of the warm-up then held that CPU while the
//! vCPU, woken, waited again (hello: the app's run 150 → 570 µs, traced).
//! On the other CPU it does all of it beside the monitor and the guest.
//!
//! The thread waits for `go` by polling a flag and yielding, not on a
//! futex: waking it would cost the main thread an interrupt to the idle
//! CPU, and the install would start that much later.
//! It polls for at most [`SPIN`] (a set-up takes ~1–3 ms), then sleeps
//! until `go` wakes it, so that a CPU quota is not spent spinning. (It
//! slept a millisecond at a time before: in a slow launch the install then
//! came up to 1 ms late, and with it the guest's first exit.) On a host
//! that gives the monitor one CPU there is nothing to overlap: the main
//! thread compiles and installs the filter itself, at `go`.
//!
//! While it waits for `go`, and after the install, the sandbox thread also
//! warms up what the guest touches first ([`Installer::warm_up`]): the
//! pages of the kernel's image and the start of its heap are made present
//! and writable in the host (`vstate::populate`, 64 KiB per call). On a
//! shadow-paging host each page the guest touches first costs a fault
//! (4–35 µs), and KVM maps a faulting page's neighbours with it (up to 7)
//! only where the host's pages are present and writable: an image mapped
//! from its file is neither until copied. As much as the time allows is
//! done before the guest runs, code first, beside the monitor's last
//! set-up steps (KVM calls that leave the address space alone; the vCPU,
//! whose run structure is a new mapping that would wait for each call, is
//! created earlier). Done while the guest runs, a page it had already
//! mapped is replaced under it by its copy, and KVM maps no neighbours
//! while a replacement is under way: after `go`, httpd's first chunks of
//! code took up to 1.3 ms each, and the guest waited. What is left at
//! `go` is done once the filter is on, beside the guest, until the guest
//! stops ([`Installer::stop_warming`]: a short guest's last steps waited
//! for the rest, 100–250 µs of hello's exit here).
//!
//! No step starts while a thread of the monitor holds the warm-up back
//! ([`Installer::hold`]) to map memory: a thread's stack, mapped as it is
//! spawned (the I/O thread at the guest's first exit, the secondary
//! vCPUs', the RAM registration's), and the signal stack `std` maps as the
//! thread starts (held until the thread runs its closure: the I/O thread's
//! waited ~0.9 ms once, and the vCPU's page faults with it, traced), waits
//! for the address space's lock for writing, and the kernel lets each new
//! warm-up step, a reader, take the lock before it, for up to 4 ms. The
//! NIC's first exit (the I/O thread's spawn, the receive buffer, since made
//! with the device) took 415 µs that way, 300 of them waiting (traced). Not held back for every exit: the
//! steps then ran only while the guest ran, and under load, when the
//! warm-up lags, each page copied under a running guest cost it an exit
//! (the TLB shootdown's IPI): ~120 more exits to httpd's main.
//!
//! Without filters (`--no-seccomp`) the thread is started all the same and
//! only warms up: turning the filters off changes nothing else of a launch
//! (its page faults, its timeline), so that a run without them is the
//! same run, and the bench's pairs with and without measure the filters.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use seccompiler::BpfProgram;

use super::{Role, Sandbox};
use crate::error::Error;
use crate::machine::lock;
use crate::vstate::{Farewell, sigsys, sys};

/// How long the sandbox thread polls for `go` before it sleeps until
/// woken.
const SPIN: std::time::Duration = std::time::Duration::from_millis(3);

/// How long the warm-up waits for a hold to end by yielding before it
/// sleeps this long between looks (a thread's spawn takes 20–100 µs).
const HOLD_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// Bytes warmed up per call: the call holds the address space's lock,
/// which a vCPU's page fault may be waiting for.
const WARM_CHUNK: u64 = 64 << 10;

const COMPILING: u8 = 0;
const GO: u8 = 1;
const CANCELLED: u8 = 2;
const DONE: u8 = 3;

struct Shared {
    stage: AtomicU8,
    /// When the filter was on every thread (`CLOCK_MONOTONIC` ns), or why
    /// it is not; set before `stage` becomes `DONE`.
    result: Mutex<Option<Result<u64, String>>>,
    done: Condvar,
    /// The VM's way out, made before the filter that allows it.
    farewell: Mutex<Option<Farewell>>,
    /// Host chunks `(address, bytes)` still to warm up, the next one last.
    warm: Mutex<Vec<(u64, u64)>>,
    /// Holds in force ([`Installer::hold`]): no step starts meanwhile.
    holds: AtomicUsize,
    /// The warm-up is over (or there is none): a hold costs a load.
    warmed: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Shared {
            stage: AtomicU8::new(COMPILING),
            result: Mutex::new(None),
            done: Condvar::new(),
            farewell: Mutex::new(None),
            warm: Mutex::new(Vec::new()),
            holds: AtomicUsize::new(0),
            warmed: AtomicBool::new(false),
        }
    }
}

/// The vCPU filter on its way to every thread.
pub struct Installer {
    shared: Arc<Shared>,
    /// On a one-CPU host (or with no thread to spare): the main thread
    /// installs at `go`.
    inline: Option<Sandbox>,
    /// Whether filters go on at all.
    enabled: bool,
    /// The sandbox thread, to wake once it sleeps.
    thread: Option<std::thread::Thread>,
    /// Whether the run ends with a keeper (`--teardown=keeper`).
    keeper: bool,
}

impl Installer {
    /// Start compiling `sandbox`'s vCPU filter, and start the thread that
    /// warms the guest's first pages up: without filters too (`--no-seccomp`
    /// changes the filters, not the launch's course).
    pub(super) fn start(sandbox: &Sandbox) -> Result<Self, Error> {
        let shared = Arc::new(Shared::new());
        let enabled = sandbox.enabled();
        let keeper = sandbox.keeper();
        if sys::cpus_allowed() < 2 {
            if keeper {
                crate::vstate::keeper::prepare();
            }
            shared.warmed.store(true, Ordering::Relaxed);
            if !enabled {
                finish(&shared, Ok(0));
            }
            return Ok(Self {
                shared,
                inline: enabled.then(|| sandbox.clone()),
                enabled,
                thread: None,
                keeper,
            });
        }
        if !enabled {
            // Nothing to wait for; the stage is left to the thread.
            *lock(&shared.result) = Some(Ok(0));
        }
        let (mine, theirs) = (sandbox.clone(), shared.clone());
        let spawned =
            std::thread::Builder::new().name("sandbox".into()).stack_size(256 << 10).spawn(move || {
                // Whatever happens here (a panic included), a waiter is told.
                let guard = Unfinished(&theirs);
                let started = std::time::Instant::now();
                // Before the filter, which allows no `pidfd_open`.
                if keeper {
                    crate::vstate::keeper::prepare();
                }
                let bpf = enabled.then(|| {
                    let farewell = Farewell::new();
                    let mine = match &farewell {
                        Some(f) => mine.with_farewell(f.fd()),
                        None => mine,
                    };
                    *lock(&theirs.farewell) = farewell;
                    mine.compile(Role::Vcpu)
                });
                // Opened before the filter is on (it allows reading).
                let pagemap = crate::vstate::Pagemap::open();
                // Warming up while it waits: the guest has not run yet, so
                // no page it maps is replaced under it.
                if !wait_for_go(&theirs.stage, started, SPIN, || warm_one(&theirs, None)) {
                    return;
                }
                std::mem::forget(guard);
                let warm = match bpf {
                    Some(bpf) => {
                        let installed = bpf.and_then(|b| install(&b));
                        let ok = installed.is_ok();
                        finish(&theirs, installed);
                        ok
                    }
                    None => {
                        theirs.stage.store(DONE, Ordering::Release);
                        true
                    }
                };
                if warm {
                    // The rest beside the guest, but for the pages of the
                    // image it has mapped already (`Pagemap`).
                    while warm_one(&theirs, pagemap.as_ref()) {}
                }
                theirs.warmed.store(true, Ordering::Relaxed);
            });
        match spawned {
            Ok(t) => {
                // Off the main thread's CPU, or it may not run before the
                // guest does (see the module's header).
                use std::os::unix::thread::JoinHandleExt;
                sys::keep_off_this_cpu(t.as_pthread_t());
                Ok(Self { shared, inline: None, enabled, thread: Some(t.thread().clone()), keeper })
            }
            // No thread to spare: do it inline.
            Err(_) => {
                if keeper {
                    crate::vstate::keeper::prepare();
                }
                shared.warmed.store(true, Ordering::Relaxed);
                Ok(Self { shared, inline: enabled.then(|| sandbox.clone()), enabled, thread: None, keeper })
            }
        }
    }

    /// Make the host ranges `(address, bytes)` present and writable, in
    /// order, on the sandbox thread from now on (see the module's header).
    /// Nothing is done where there is no such thread (one CPU): a CPU the
    /// guest needs is not to be spent on it.
    pub fn warm_up(&self, ranges: Vec<(u64, u64)>) {
        if let Some(t) = &self.thread {
            *lock(&self.shared.warm) = chunks(&ranges);
            // A system call only if the thread sleeps (a slow launch).
            t.unpark();
        }
    }

    /// The guest has stopped: what is left of the warm-up is not done.
    /// (Done on, it held the address space's lock against the monitor's
    /// last steps: hello's exit came 100–250 µs later here.)
    pub fn stop_warming(&self) {
        lock(&self.shared.warm).clear();
    }

    /// Hold the warm-up back until the guard is dropped: the caller is
    /// about to map memory (spawn a thread), and no step is to take the
    /// address space's lock before it (see the module's header). An atomic
    /// operation while the warm-up lasts, a load after.
    pub fn hold(&self) -> Hold<'_> {
        if self.shared.warmed.load(Ordering::Relaxed) {
            return Hold(None);
        }
        self.shared.holds.fetch_add(1, Ordering::AcqRel);
        Hold(Some(&self.shared.holds))
    }

    /// The monitor's set-up is over: install the filter on every thread.
    pub fn go(&self) {
        if let Some(sandbox) = &self.inline {
            if self.shared.stage.load(Ordering::Acquire) == COMPILING {
                finish(&self.shared, sandbox.compile(Role::Vcpu).and_then(|b| install(&b)));
            }
            return;
        }
        let _ = self.shared.stage.compare_exchange(COMPILING, GO, Ordering::AcqRel, Ordering::Acquire);
        // A system call only if the thread sleeps.
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }

    /// Wait until the filter is on every thread: when that happened
    /// (`None` without filters), or why it could not be.
    pub fn wait(&self) -> Result<Option<u64>, Error> {
        let mut g = lock(&self.shared.result);
        while g.is_none() {
            g = self.shared.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        match g.as_ref() {
            Some(Ok(0)) | None => Ok(None),
            Some(Ok(t)) => Ok(Some(*t)),
            Some(Err(e)) => Err(Error::Sandbox(e.clone())),
        }
    }

    /// Whether the run ends with a keeper (`vstate::keeper`), which the
    /// vCPU filter allows to be made.
    pub fn keeper(&self) -> bool {
        self.keeper
    }

    /// The VM's way out of the process (`vstate::Farewell`), once the
    /// guest has stopped: the one the sandbox thread made before the
    /// filter; without filters, a new one; none when the main thread
    /// installed the filter itself (on one CPU the pair would delay the
    /// guest's start), so the VM is destroyed in the monitor.
    pub fn take_farewell(&self) -> Option<Farewell> {
        if !self.enabled {
            return Farewell::new();
        }
        lock(&self.shared.farewell).take()
    }
}

impl Drop for Installer {
    /// A run that ends before its guest started lets the sandbox thread
    /// end without installing anything.
    fn drop(&mut self) {
        let _ = self.shared.stage.compare_exchange(COMPILING, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

/// The warm-up held back ([`Installer::hold`]) while this lives.
#[must_use = "the warm-up goes on as soon as the hold is dropped"]
pub struct Hold<'a>(Option<&'a AtomicUsize>);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(holds) = self.0 {
            holds.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Tells the waiters the filter will not come, if the sandbox thread ends
/// without saying (a panic).
struct Unfinished<'a>(&'a Shared);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        // (Without filters the result was set at the start: nothing to tell.)
        if self.0.stage.load(Ordering::Acquire) != DONE && lock(&self.0.result).is_none() {
            finish(self.0, Err(Error::Sandbox("the sandbox thread failed".into())));
        }
    }
}

/// Wait until `stage` says `GO` (true) or `CANCELLED` (false), doing
/// `work` meanwhile while it says it did some: then polling until `spin`
/// has passed since `started`, then asleep until the thread is unparked
/// (`go` and the cancel do it; an unpark that comes first makes the sleep
/// return at once).
fn wait_for_go(
    stage: &AtomicU8,
    started: std::time::Instant,
    spin: std::time::Duration,
    mut work: impl FnMut() -> bool,
) -> bool {
    loop {
        match stage.load(Ordering::Acquire) {
            GO => return true,
            CANCELLED => return false,
            _ if work() => {}
            _ if started.elapsed() < spin => std::thread::yield_now(),
            _ => std::thread::park(),
        }
    }
}

/// `ranges` cut into [`WARM_CHUNK`]s, the last range's last chunk first
/// out ([`warm_one`] pops from the end): so the first range's first chunk
/// comes first.
fn chunks(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(addr, len) in ranges {
        let mut at = 0;
        while at < len {
            let n = WARM_CHUNK.min(len - at);
            out.push((addr + at, n));
            at += n;
        }
    }
    out.reverse();
    out
}

/// The next chunk to warm up, once no hold is in force (`None`: none
/// left, or the guest stopped, which empties the list). The thread yields
/// its CPU while it waits (the holder may be starting a thread that wants
/// it), and past [`HOLD_SPIN`] sleeps between looks: the thread is not to
/// spin behind a holder that takes long.
fn next_unheld(shared: &Shared) -> Option<(u64, u64)> {
    let since = std::time::Instant::now();
    while shared.holds.load(Ordering::Acquire) != 0 {
        if lock(&shared.warm).is_empty() {
            return None;
        }
        if since.elapsed() < HOLD_SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(HOLD_SPIN);
        }
    }
    lock(&shared.warm).pop()
}

/// Make the next chunk present (false: none left); with `pagemap` (beside
/// the guest), but for the image's pages mapped already. The list's lock
/// is not held while the pages are made present.
fn warm_one(shared: &Shared, pagemap: Option<&crate::vstate::Pagemap>) -> bool {
    let Some((addr, len)) = next_unheld(shared) else { return false };
    match pagemap {
        Some(p) => p.populate_unmapped(addr, len),
        None => {
            crate::vstate::populate(addr, len);
        }
    }
    true
}

fn install(bpf: &BpfProgram) -> Result<u64, Error> {
    sigsys::catch_forbidden()?;
    seccompiler::apply_filter_all_threads(bpf)
        .map_err(|e| Error::Sandbox(format!("cannot install the seccomp filter: {e}")))?;
    Ok(sys::now_ns())
}

fn finish(shared: &Shared, r: Result<u64, Error>) {
    *lock(&shared.result) = Some(r.map_err(|e| e.to_string()));
    shared.stage.store(DONE, Ordering::Release);
    shared.done.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Chunks come out in address order, none longer than WARM_CHUNK, and
    /// together they cover the ranges.
    #[test]
    fn ranges_are_cut_into_chunks_taken_in_order() {
        let mut c = chunks(&[(0x1000, WARM_CHUNK * 2 + 0x3000), (0x90_0000, 0x2000)]);
        let mut out = Vec::new();
        while let Some(x) = c.pop() {
            out.push(x);
        }
        assert_eq!(
            out,
            vec![
                (0x1000, WARM_CHUNK),
                (0x1000 + WARM_CHUNK, WARM_CHUNK),
                (0x1000 + 2 * WARM_CHUNK, 0x3000),
                (0x90_0000, 0x2000)
            ]
        );
        assert!(chunks(&[]).is_empty());
    }

    /// Without filters the thread is started all the same and warms the
    /// ranges up; there is nothing to wait for; what is left when the guest
    /// stops is dropped.
    #[test]
    fn without_filters_the_guest_is_warmed_up_all_the_same() {
        use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
        let mut cfg = crate::config::VmConfig::new("unused");
        cfg.seccomp = super::super::SeccompMode::Off;
        let installer = Installer::start(&Sandbox::new(&cfg)).unwrap();
        assert_eq!(installer.wait().unwrap(), None, "nothing to wait for");
        if sys::cpus_allowed() < 2 {
            assert!(installer.thread.is_none(), "one CPU: no thread, no warm-up");
            return;
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!(sys::resident_kib(&mem), Some(0));
        installer.warm_up(vec![(host, 1 << 20)]);
        installer.go();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sys::resident_kib(&mem) != Some(1024) {
            assert!(Instant::now() < deadline, "the warm-up never ended: {:?} KiB", sys::resident_kib(&mem));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(installer.wait().unwrap(), None);
        installer.warm_up(vec![(host, 1 << 20), (host, 1 << 20)]);
        installer.stop_warming();
        assert!(lock(&installer.shared.warm).is_empty(), "the rest dropped");
        assert!(installer.take_farewell().is_some(), "a way out, made at the end");
    }

    /// No chunk is taken while a hold is in force; the next one is once
    /// every hold has ended; a list emptied meanwhile (the guest stopped)
    /// ends the wait; and once the warm-up is over a hold counts nothing.
    #[test]
    fn no_chunk_is_warmed_up_while_the_warm_up_is_held() {
        // (No sandbox thread: this test takes the chunks.)
        let installer = Installer {
            shared: Arc::new(Shared::new()),
            inline: None,
            enabled: false,
            thread: None,
            keeper: false,
        };
        let shared = &installer.shared;
        *lock(&shared.warm) = vec![(0x3000, 1), (0x2000, 1), (0x1000, 1)];
        let first = installer.hold();
        let second = installer.hold();
        std::thread::scope(|s| {
            let taker = s.spawn(|| next_unheld(shared));
            std::thread::sleep(Duration::from_millis(20));
            assert!(!taker.is_finished(), "taken under two holds");
            drop(first);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!taker.is_finished(), "taken under one hold");
            drop(second);
            assert_eq!(taker.join().unwrap(), Some((0x1000, 1)));
            let _held = installer.hold();
            let taker = s.spawn(|| next_unheld(shared));
            installer.stop_warming();
            assert_eq!(taker.join().unwrap(), None, "the guest stopped");
        });
        assert_eq!(shared.holds.load(Ordering::Relaxed), 0, "every hold ended");
        shared.warmed.store(true, Ordering::Relaxed);
        let _late = installer.hold();
        assert_eq!(shared.holds.load(Ordering::Relaxed), 0, "no hold once warmed up");
    }

    /// The work is done while `go` has not come, and no more once it has.
    #[test]
    fn work_is_done_while_waiting_for_go() {
        let stage = AtomicU8::new(COMPILING);
        let mut left = 3;
        let went = wait_for_go(&stage, Instant::now(), Duration::from_secs(5), || {
            left -= 1;
            if left == 0 {
                stage.store(GO, Ordering::Release);
            }
            true
        });
        assert!(went);
        assert_eq!(left, 0, "no work after go");
    }

    /// A sandbox thread past its polling sleeps and is woken by `go` or
    /// the cancel, whether the wake-up comes before it sleeps or after.
    #[test]
    fn a_sleeping_sandbox_thread_wakes_at_go_and_at_cancel() {
        for (end, after) in [(GO, true), (CANCELLED, false)] {
            for late in [false, true] {
                let stage = Arc::new(AtomicU8::new(COMPILING));
                let theirs = stage.clone();
                let waiter = std::thread::spawn(move || {
                    wait_for_go(&theirs, Instant::now(), Duration::ZERO, || false)
                });
                if late {
                    std::thread::sleep(Duration::from_millis(20));
                }
                stage.store(end, Ordering::Release);
                waiter.thread().unpark();
                assert_eq!(waiter.join().unwrap(), after, "stage {end}, woken late: {late}");
            }
        }
    }
}
