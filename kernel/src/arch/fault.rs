//! CPU faults: the CPL0 stub in `boot.s` records the exception frame and
//! returns to CPL3 at `_torito_fault_upcall` on a dedicated stack, which
//! reports it on the console and exits with `128 + vector`.

/// What the CPL0 stub recorded (layout shared with `boot.s`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FaultInfo {
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 when the exception has none).
    pub error: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// Code segment at the fault.
    pub cs: u64,
    /// Flags at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Stack segment at the fault.
    pub ss: u64,
    /// CR2 (the faulting address for a page fault).
    pub cr2: u64,
}

/// Name of exception `vector`.
pub fn name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt (NMI)",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack-segment fault (#SS)",
        13 => "general protection fault (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point error (#XM)",
        21 => "control protection (#CP)",
        _ => "reserved exception",
    }
}

unsafe extern "C" {
    static _torito_fault_info: FaultInfo;
}

/// CPL3 continuation of every fault; never returns.
#[unsafe(no_mangle)]
#[cfg_attr(target_os = "none", unsafe(link_section = ".torito_cold"))]
extern "sysv64" fn _torito_fault_upcall() -> ! {
    // SAFETY: the stub wrote the record completely before jumping here and
    // sets `_torito_fault_active`, so no other fault rewrites it: any fault
    // from now on stops the machine in the stub.
    let f = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(_torito_fault_info)) };
    // The stub left `rbp` as the faulting code had it, and this function's
    // prologue saved it: the faulting function's frame heads the chain.
    let own = super::frame_pointer();
    let faulting_rbp = if own != 0 && own.is_multiple_of(8) {
        // SAFETY: `own` is this function's frame on the fault stack; its
        // first word is the saved `rbp`.
        unsafe { core::ptr::read_volatile(own as *const u64) }
    } else {
        0
    };
    crate::panic::report_fault(&f, faulting_rbp)
}
