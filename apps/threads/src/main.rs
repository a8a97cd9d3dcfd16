//! threads: Toro's Scheduler example on Torito.
//!
//! Threads on every core print their core and thread ids; a mutex-protected
//! counter is incremented by threads on every core across yields; producers
//! on every core send numbered messages to one receiver, which checks that
//! each arrives once and in order; threads sleep on every core; then two
//! threads, on different cores when there are several, pass a message back
//! and forth through two channels N times (default 1,000,000; the first
//! command-line word overrides it) and the round-trip time per message is
//! printed. `panic` makes a thread on the last core panic, `deadlock` makes
//! two threads (on different cores when there are several) wait for each
//! other, `bench` prints the figures `cargo xtask bench` collects.
//! `bigstack` runs 72 KiB of stack frames on a thread given 256 KiB
//! (`process::Builder`); `overflow` does the same on a default (64 KiB)
//! stack, which the kernel must report as a stack overflow.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use kernel::println;
use kernel::process::{self, CoreId, channel, sync::Mutex};

kernel::entry!(main);

fn ticks_us(ticks: u64) -> u64 {
    process::clock::tsc_khz().map_or(0, |k| process::clock::ticks_to_ns(ticks, k) / 1000)
}

fn main() -> i32 {
    let arg = kernel::args().next();
    if arg == Some("bench") {
        return bench();
    }
    let last = CoreId(process::core_count() as u32 - 1);
    if arg == Some("deadlock") {
        // Each thread waits for the other's message before sending its own.
        let (tx_a, rx_a) = channel::bounded::<u8>(1);
        let (tx_b, rx_b) = channel::bounded::<u8>(1);
        let other = process::spawn_on(last, move || {
            let got = rx_b.recv();
            let _ = tx_a.send(1);
            got
        })
        .expect("the last core exists");
        let _ = rx_a.recv();
        let _ = tx_b.send(2);
        let _ = other.join();
        return 0;
    }
    if arg == Some("irq") {
        return irq(last);
    }
    if arg == Some("bigstack") || arg == Some("overflow") {
        let size = if arg == Some("bigstack") { 256 * 1024 } else { process::STACK_SIZE };
        let h = process::Builder::new().name("deep").stack_size(size).spawn(|| deep(64)).expect("a thread");
        let sum = h.join();
        println!("threads: 64 KiB of frames on a {} KiB stack, sum {sum}", size / 1024);
        return 0;
    }
    if arg == Some("panic") {
        let h = process::spawn_on(last, || {
            let v: Vec<u32> = Vec::new();
            v[3]
        })
        .expect("the last core exists");
        return h.join() as i32;
    }
    let rounds: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    println!("threads: {} core(s)", process::core_count());
    match process::clock::wall_clock_ns() {
        Some(ns) => {
            let secs = ns / 1_000_000_000;
            let (y, mo, d) = civil_date(secs / 86_400);
            let t = secs % 86_400;
            println!(
                "threads: wall clock {secs} s since the Unix epoch ({y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC)",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
        }
        None => println!("threads: no wall clock on this host"),
    }

    let cores = process::core_count() as u32;
    // Threads on every core print who they are.
    let mut hs = Vec::new();
    for core in 0..process::core_count() as u32 {
        for _ in 0..3 {
            let h = process::spawn_on(CoreId(core), || {
                let me = process::current_thread().map_or(0, |t| t.0);
                println!("threads: thread {me} on core {}", process::current_core().0);
                me
            });
            hs.push(h.expect("spawn on an existing core"));
        }
    }
    let ids: Vec<u64> = hs.into_iter().map(|h| h.join()).collect();
    if let Err(e) = process::spawn_on(CoreId(process::core_count() as u32), || ()) {
        println!("threads: {e}");
    }

    // A counter under contention from every core: every increment holds
    // the lock across a yield.
    let counter = Arc::new(Mutex::new(0u64));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let c = counter.clone();
            process::spawn_on(CoreId(i % cores), move || {
                for _ in 0..1000 {
                    let mut g = c.lock();
                    let v = *g;
                    process::yield_now();
                    *g = v + 1;
                }
            })
            .expect("an existing core")
        })
        .collect();
    for w in workers {
        w.join();
    }
    let count = *counter.lock();
    println!("threads: counter {count} (expected 4000)");

    // Producers on every core, one receiver: every message once, in order
    // per sender.
    const PER_SENDER: u32 = 10_000;
    let senders = 2 * cores;
    let (tx, rx) = channel::bounded::<(u32, u32)>(16);
    let producers: Vec<_> = (0..senders)
        .map(|p| {
            let tx = tx.clone();
            process::spawn_on(CoreId(p % cores), move || {
                for i in 0..PER_SENDER {
                    tx.send((p, i)).expect("the receiver is alive");
                }
            })
            .expect("an existing core")
        })
        .collect();
    drop(tx);
    let mut next = Vec::from_iter((0..senders).map(|_| 0u32));
    let (mut received, mut in_order) = (0u32, true);
    while let Some((p, i)) = rx.recv() {
        in_order &= next[p as usize] == i;
        next[p as usize] = i + 1;
        received += 1;
    }
    for p in producers {
        p.join();
    }
    let messages_ok = in_order && received == senders * PER_SENDER;
    println!(
        "threads: {received} messages from {senders} senders on {cores} core(s), {}",
        if in_order { "each once and in order" } else { "OUT OF ORDER" }
    );

    // Sleep: the boot thread sleeps 10 ms; three threads sleep 30, 10 and
    // 20 ms and must wake in deadline order.
    let mut slept_ok = true;
    if process::clock::tsc_khz().is_some() {
        let t0 = process::clock::ticks();
        process::sleep(Duration::from_millis(10));
        let us = ticks_us(process::clock::ticks() - t0);
        println!("threads: slept 10 ms, woke after {us} µs (timer: {})", process::has_timer());
        let order = Arc::new(Mutex::new(Vec::new()));
        let sleepers: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| {
                let order = order.clone();
                process::spawn(move || {
                    process::sleep(Duration::from_millis(ms));
                    order.lock().push(ms);
                })
            })
            .collect();
        for h in sleepers {
            h.join();
        }
        let order = order.lock().clone();
        println!("threads: sleepers woke in the order {order:?}");
        // The same 10 ms sleep on the last core.
        let there = process::spawn_on(last, || {
            let t0 = process::clock::ticks();
            process::sleep(Duration::from_millis(10));
            ticks_us(process::clock::ticks() - t0)
        })
        .expect("the last core exists")
        .join();
        println!("threads: on core {}, slept 10 ms, woke after {there} µs", last.0);
        slept_ok = us >= 10_000 && there >= 10_000 && order == [10, 20, 30];
    } else {
        println!("threads: the TSC frequency is unknown on this host: sleep not tried");
    }

    // Ping-pong, with the other side on the last core.
    let (v, answered, ticks) = ping_pong(last, rounds);
    match process::clock::tsc_khz() {
        Some(khz) => println!(
            "threads: ping-pong core 0 <-> core {}: {rounds} round trips in {} µs: {} ns per round trip",
            last.0,
            process::clock::ticks_to_ns(ticks, khz) / 1000,
            process::clock::ticks_to_ns(ticks, khz) / rounds.max(1)
        ),
        None => {
            println!("threads: ping-pong {rounds} round trips in {ticks} TSC ticks (TSC frequency unknown)")
        }
    }
    let ok = v == rounds
        && answered == rounds
        && count == 4000
        && messages_ok
        && ids.iter().all(|&i| i != 0)
        && slept_ok;
    println!("threads: {}", if ok { "ok" } else { "FAILED" });
    if ok { 0 } else { 1 }
}

/// Pass a number back and forth `rounds` times through two channels
/// between this thread and one on `core`, which adds 1 each time. Returns
/// the final number, how many the other thread answered, and the TSC
/// ticks it took.
fn ping_pong(core: CoreId, rounds: u64) -> (u64, u64, u64) {
    let (to_pong, from_ping) = channel::bounded::<u64>(1);
    let (to_ping, from_pong) = channel::bounded::<u64>(1);
    let pong = process::spawn_on(core, move || {
        let mut n = 0u64;
        while let Some(v) = from_ping.recv() {
            to_ping.send(v + 1).expect("ping is alive");
            n += 1;
        }
        n
    })
    .expect("an existing core");
    let t0 = process::clock::ticks();
    let mut v = 0;
    for _ in 0..rounds {
        to_pong.send(v).expect("pong is alive");
        v = from_pong.recv().expect("pong answers");
    }
    let ticks = process::clock::ticks() - t0;
    drop(to_pong);
    (v, pong.join(), ticks)
}

/// `threads irq`: a thread on the last core waits for a device interrupt
/// (an MSI the Torito monitor sends 50 ms later), longer than the deadlock
/// check's period, with the core halted meanwhile.
fn irq(last: CoreId) -> i32 {
    use kernel::abi::boot_info::BootProtocol;
    use kernel::arch::{irq, smp, torito};
    if kernel::boot_protocol() != BootProtocol::Direct {
        println!("threads: the interrupt test needs the Torito monitor's test interrupt");
        return 0;
    }
    let waiter = process::spawn_on(last, move || {
        let vector = irq::FIRST_VECTOR + 3;
        let core = process::current_core().0 as usize;
        let t0 = process::clock::ticks();
        torito::test_interrupt(vector, smp::apic_id(core) as u8, 50_000);
        irq::wait(vector);
        let us = ticks_us(process::clock::ticks() - t0);
        // Consumed: no longer pending; another vector never was.
        let clean = !irq::take(vector) && !irq::take(vector + 1);
        (vector, core, us, clean)
    })
    .expect("the last core exists");
    let (vector, core, us, clean) = waiter.join();
    println!(
        "threads: interrupt {vector:#x} reached the thread on core {core} after {us} µs (sent after 50000)"
    );
    if us >= 50_000 && clean { 0 } else { 1 }
}

/// `threads bench`: the process unit's figures, one line each, for
/// `cargo xtask bench`.
fn bench() -> i32 {
    let Some(khz) = process::clock::tsc_khz() else {
        println!("bench: the TSC frequency is unknown");
        return 1;
    };
    let ns = |ticks: u64| process::clock::ticks_to_ns(ticks, khz);
    // Context switch: two threads yield to each other.
    const SWITCHES: u64 = 200_000;
    let other = process::spawn(|| {
        for _ in 0..SWITCHES / 2 {
            process::yield_now();
        }
    });
    let t0 = process::clock::ticks();
    for _ in 0..SWITCHES / 2 {
        process::yield_now();
    }
    let t = process::clock::ticks() - t0;
    other.join();
    println!("bench: context switch {} ns", ns(t) / SWITCHES);
    // Channel round trip between two threads.
    const TRIPS: u64 = 100_000;
    let (_, _, t) = ping_pong(process::current_core(), TRIPS);
    println!("bench: channel round trip {} ns", ns(t) / TRIPS);
    // Spawn and join: 32 threads at once need stacks of their own (each
    // gets a guard page: page-table writes), then one at a time, from the
    // stacks the first ones left.
    let t0 = process::clock::ticks();
    let handles: Vec<_> = (0..32).map(|_| process::spawn(|| ())).collect();
    handles.into_iter().for_each(|h| h.join());
    let fresh = process::clock::ticks() - t0;
    const SPAWNS: u64 = 2000;
    let t0 = process::clock::ticks();
    for _ in 0..SPAWNS {
        process::spawn(|| ()).join();
    }
    let reused = process::clock::ticks() - t0;
    println!("bench: spawn + join {} ns; with new stacks {} ns each", ns(reused) / SPAWNS, ns(fresh) / 32);
    if process::core_count() > 1 {
        cross_core_bench(khz);
    }
    // Wake-up from a 1 ms sleep: how late.
    let mut late: Vec<u64> = (0..50)
        .map(|_| {
            let t0 = process::clock::ticks();
            process::sleep(Duration::from_millis(1));
            ns(process::clock::ticks() - t0).saturating_sub(1_000_000) / 1000
        })
        .collect();
    late.sort_unstable();
    let mut ten: Vec<u64> = (0..5)
        .map(|_| {
            let t0 = process::clock::ticks();
            process::sleep(Duration::from_millis(10));
            ns(process::clock::ticks() - t0) / 1000
        })
        .collect();
    ten.sort_unstable();
    println!(
        "bench: sleep 10 ms wakes after {} / {} / {} us (min / median / max, 5 sleeps)",
        ten[0], ten[2], ten[4]
    );
    println!(
        "bench: sleep 1 ms wakes late by {} / {} / {} us (min / median / max, 50 sleeps, timer: {})",
        late[0],
        late[late.len() / 2],
        late[late.len() - 1],
        process::has_timer()
    );
    0
}

/// Cross-core figures: a channel round trip with the other side on core 1
/// (both cores busy), and the latency of a message to a core that halted
/// waiting for it (the wake-up interrupt included; 5 ms apart, longer than
/// the longest spin before halting).
fn cross_core_bench(khz: u64) {
    let ns = |ticks: u64| process::clock::ticks_to_ns(ticks, khz);
    const TRIPS: u64 = 100_000;
    let (_, _, t) = ping_pong(CoreId(1), TRIPS);
    println!("bench: cross-core channel round trip {} ns", ns(t) / TRIPS);
    // The heap (one allocator behind a spin lock): alloc + free of 64
    // bytes, on one core alone, then on every core at once.
    const ALLOCS: u64 = 200_000;
    fn churn() -> u64 {
        let t0 = process::clock::ticks();
        for i in 0..ALLOCS {
            let b = alloc::boxed::Box::new([i; 8]);
            core::hint::black_box(&b);
        }
        process::clock::ticks() - t0
    }
    let alone = churn();
    let all: Vec<_> = (0..process::core_count() as u32)
        .map(|c| process::spawn_on(CoreId(c), churn).expect("an existing core"))
        .collect();
    let together = all.into_iter().map(|h| h.join()).max().unwrap_or(0);
    println!(
        "bench: heap alloc+free 64 B {} ns on one core, {} ns with {} cores at once",
        ns(alone) / ALLOCS,
        ns(together) / ALLOCS,
        process::core_count()
    );
    // Wake-up: core 1 waits (halted) for a message stamped with the TSC.
    let (tx, rx) = channel::bounded::<u64>(1);
    let (ack, acked) = channel::bounded::<u64>(1);
    let waiter = process::spawn_on(CoreId(1), move || {
        while let Some(sent) = rx.recv() {
            let _ = ack.send(process::clock::ticks().saturating_sub(sent));
        }
    })
    .expect("core 1 exists");
    let mut lat: Vec<u64> = (0..50)
        .map(|_| {
            // Give core 1 time to halt (past its longest spin window).
            process::sleep(Duration::from_millis(5));
            let _ = tx.send(process::clock::ticks());
            ns(acked.recv().unwrap_or(0)) / 1000
        })
        .collect();
    drop(tx);
    waiter.join();
    lat.sort_unstable();
    println!(
        "bench: wake a halted core with a message {} / {} / {} us (min / median / max, 50 messages)",
        lat[0],
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
}

/// Year, month, day of the `days`-th day since 1970-01-01 (H. Hinnant's
/// civil-from-days).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `depth` nested frames of a little over 1 KiB each, then a yield from
/// the deepest (a switch: where an overflow is noticed).
#[inline(never)]
fn deep(depth: u32) -> u64 {
    let mut frame = [0u8; 1024];
    frame[depth as usize % 1024] = depth as u8;
    core::hint::black_box(&mut frame);
    let below = if depth > 1 {
        deep(depth - 1)
    } else {
        process::yield_now();
        0
    };
    below + u64::from(frame[depth as usize % 1024])
}
