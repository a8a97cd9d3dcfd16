//! The context switch and the TSC: the process unit's only `unsafe` code.
//!
//! A switch runs entirely at CPL3: it saves the System V callee-saved
//! registers on the current stack, stores the stack pointer, loads the next
//! thread's and restores its registers. A new thread's stack is prepared so
//! that the first switch to it "returns" into [`thread_entry`], which calls
//! the scheduler's start function with the two values left in r12 and r13.
#![allow(unsafe_code)]

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.torito_context_switch, "ax"
    .globl torito_context_switch
torito_context_switch:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .globl torito_thread_entry
torito_thread_entry:
    mov rdi, r12
    mov rsi, r13
    call {start}
    ud2
    .popsection
    "#,
    start = sym crate::sched::thread_start,
);

unsafe extern "C" {
    fn torito_context_switch(save_rsp: *mut usize, next_rsp: usize);
    fn torito_thread_entry();
}

/// Save the current context (its stack pointer into `*save`) and resume the
/// one whose stack pointer is `next`.
///
/// # Safety
/// `save` must be valid for a write; `next` must be a stack pointer saved by
/// this function, or made by [`initial_stack`], whose stack is alive and
/// not in use by any other running context.
pub(crate) unsafe fn switch(save: *mut usize, next: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { torito_context_switch(save, next) }
}

/// The words [`prepare`] writes at the bottom of a stack: a thread that
/// overwrote them ran past its stack.
const CANARY: u64 = 0x5354_4143_4b21_c0de;
const CANARY_WORDS: usize = 4;

/// Whether the canary at the bottom of the stack at `base` (prepared by
/// [`prepare`]) is still there.
pub(crate) fn stack_intact(base: *const u8) -> bool {
    // SAFETY: `base` is the start of a live thread's stack, whose first
    // CANARY_WORDS words `prepare` wrote.
    (0..CANARY_WORDS).all(|i| unsafe { core::ptr::read_volatile((base as *const u64).add(i)) } == CANARY)
}

/// Prepare a fresh stack `[base, base + len)` so that switching to the
/// returned stack pointer calls `thread_start(arg0, arg1)`. The caller
/// gives a stack it owns and has not handed to anything else.
pub(crate) fn prepare(base: *mut u8, len: usize, arg0: usize, arg1: usize) -> usize {
    assert!(len >= 256, "a thread stack of {len} bytes is too small");
    // SAFETY: the first CANARY_WORDS words of the caller's stack range,
    // which it owns (len ≥ 256); the stack grows down towards them.
    unsafe {
        for i in 0..CANARY_WORDS {
            core::ptr::write_volatile((base as *mut u64).add(i), CANARY);
        }
    }
    let top = (base as usize + len) & !15;
    // After the 6 pops and `ret`, rsp = top (16-byte aligned), as the call
    // in `torito_thread_entry` expects.
    let frame = [0usize, 0, arg1, arg0, 0, 0, torito_thread_entry as *const () as usize];
    let sp = top - frame.len() * 8;
    // SAFETY: `sp..top` lies inside the caller's stack range (len ≥ 256),
    // which the caller owns.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), sp as *mut usize, frame.len()) };
    sp
}

/// Turn an address the scheduler handed to a new thread back into a
/// reference. The scheduler passes only `&'static Scheduler` and pointers to
/// threads it keeps alive while they run.
pub(crate) fn deref<T>(addr: usize) -> &'static T {
    // SAFETY: see above; the addresses are non-null and aligned.
    unsafe { &*(addr as *const T) }
}

/// Read the time-stamp counter (native at CPL3).
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects and CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}
