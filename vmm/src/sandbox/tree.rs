//! A filter as BPF: a binary search over the system call numbers, then,
//! for the calls allowed only with some arguments, a short check of one.
//!
//! Written here rather than left to seccompiler's compiler, which lays a
//! filter out as one chain: five instructions per allowed call, five more
//! per allowed argument value. Installing a filter costs the kernel per
//! instruction (checked, translated, JIT-compiled) and, to fill its cache
//! of calls a filter always allows, one run of the filter per system call
//! number: measured on this host, seccompiler's 330-instruction vCPU
//! filter took ~200 µs to install, on the path to the guest's first
//! instruction. Here runs of neighbouring allowed calls share one leaf,
//! a leaf is one `RET`, and an argument check is one compare per value:
//! the same vCPU filter is 160 instructions instead of 330 (183 instead
//! of 402 with a disk and vsock), and the kernel's cache runs take ~12×
//! fewer steps (~8 per call number).
//! seccompiler still installs it and, in the tests, is the reference its
//! verdicts are checked against, call by call.

use seccompiler::{BpfProgram, sock_filter};

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// Offsets in `struct seccomp_data`: `nr`, `arch`, `args[0]`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// What an allowed system call number leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// Allowed whatever the arguments.
    Allow,
    /// Allowed when the low 32 bits of argument `arg` are one of `values`
    /// (all a kernel reads of an `int` or `unsigned int` argument).
    OneOf {
        /// Argument index, 0 to 5.
        arg: u8,
        /// The values allowed.
        values: &'static [u32],
    },
    /// Refused with this `errno`, not trapped (`clone3`, whose flags a
    /// filter cannot read: glibc then falls back to `clone`).
    Fail(u32),
    /// Allowed when the low 32 bits of argument `arg`, masked, equal
    /// `value`.
    Masked {
        /// Argument index, 0 to 5.
        arg: u8,
        /// The bits looked at.
        mask: u32,
        /// What they must be.
        value: u32,
    },
    /// Allowed as [`Leaf::Masked`] is, or when the low 32 bits of the
    /// argument are exactly `or` (`clone`: a thread, or the keeper).
    MaskedOr {
        /// Argument index, 0 to 5.
        arg: u8,
        /// The bits looked at.
        mask: u32,
        /// What they must be.
        value: u32,
        /// The one other value allowed.
        or: u32,
    },
}

/// A run of call numbers `[start, next run's start)` with one verdict.
enum Verdict<'a> {
    Miss,
    Allow,
    Check(&'a Leaf),
}

/// The program: the architecture checked (any other one is killed), then
/// `calls` (sorted by number, each once) found by binary search; a call
/// that is not there, or whose check fails, returns `miss`.
pub fn program(arch: u32, calls: &[(u32, Leaf)], allow: u32, miss: u32) -> BpfProgram {
    let mut runs: Vec<(u32, Verdict)> = Vec::with_capacity(2 * calls.len() + 1);
    let mut next = 0u32;
    for (nr, leaf) in calls {
        if *nr > next {
            runs.push((next, Verdict::Miss));
        }
        match (leaf, runs.last()) {
            (Leaf::Allow, Some((_, Verdict::Allow))) => {}
            (Leaf::Allow, _) => runs.push((*nr, Verdict::Allow)),
            (l, _) => runs.push((*nr, Verdict::Check(l))),
        }
        next = nr + 1;
    }
    runs.push((next, Verdict::Miss));
    let len = 4 + size(&runs);
    let mut p = Vec::with_capacity(len);
    p.extend([
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, arch, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ]);
    // Call 0 is where every search starts from.
    search(&runs, allow, miss, &mut p);
    debug_assert_eq!(p.len(), len);
    p
}

/// Instructions [`search`] writes for `runs`.
fn size(runs: &[(u32, Verdict)]) -> usize {
    if let [(_, v)] = runs {
        return leaf_size(v);
    }
    let (low, high) = runs.split_at(runs.len() / 2);
    let left = size(low);
    usize::from(left > 255) + 1 + left + size(high)
}

fn leaf_size(v: &Verdict) -> usize {
    match v {
        Verdict::Miss | Verdict::Allow | Verdict::Check(Leaf::Allow | Leaf::Fail(_)) => 1,
        Verdict::Check(Leaf::OneOf { values, .. }) => {
            1 + values.len() + 2 * values.len().div_ceil(254).max(1)
        }
        Verdict::Check(Leaf::Masked { .. }) => 5,
        Verdict::Check(Leaf::MaskedOr { .. }) => 6,
    }
}

/// Search `runs` for the call number in the accumulator (at least the
/// first run's start).
fn search(runs: &[(u32, Verdict)], allow: u32, miss: u32, p: &mut BpfProgram) {
    if let [(_, v)] = runs {
        return verdict(v, allow, miss, p);
    }
    let (low, high) = runs.split_at(runs.len() / 2);
    // `nr >= pivot`: the right half, past the left one.
    let left = size(low);
    match u8::try_from(left) {
        Ok(n) => p.push(jump(BPF_JGE_K, high[0].0, n, 0)),
        Err(_) => p.extend([jump(BPF_JGE_K, high[0].0, 0, 1), stmt(BPF_JA, left as u32)]),
    }
    search(low, allow, miss, p);
    search(high, allow, miss, p);
}

/// A leaf's code; it always returns.
fn verdict(v: &Verdict, allow: u32, miss: u32, p: &mut BpfProgram) {
    let ld = |arg: &u8| stmt(BPF_LD_W_ABS, DATA_ARGS + 8 * u32::from(*arg));
    match v {
        Verdict::Miss => p.push(stmt(BPF_RET_K, miss)),
        Verdict::Allow | Verdict::Check(Leaf::Allow) => p.push(stmt(BPF_RET_K, allow)),
        Verdict::Check(Leaf::OneOf { arg, values }) => {
            // Chunks of at most 254 compares, so each jump to the
            // `RET allow` that ends its chunk fits in 8 bits.
            p.push(ld(arg));
            let chunks = values.len().div_ceil(254).max(1);
            for (c, chunk) in values.chunks(254).chain(values.is_empty().then_some(&[][..])).enumerate() {
                let n = chunk.len();
                for (i, v) in chunk.iter().enumerate() {
                    // Past the rest of the chunk and its "next chunk" jump.
                    p.push(jump(BPF_JEQ_K, *v, (n - i) as u8, 0));
                }
                p.push(if c + 1 == chunks { stmt(BPF_RET_K, miss) } else { stmt(BPF_JA, 1) });
                p.push(stmt(BPF_RET_K, allow));
            }
        }
        Verdict::Check(Leaf::Fail(errno)) => {
            p.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | (errno & 0xffff)))
        }
        Verdict::Check(Leaf::Masked { arg, mask, value }) => p.extend([
            ld(arg),
            stmt(BPF_AND_K, *mask),
            jump(BPF_JEQ_K, value & mask, 1, 0),
            stmt(BPF_RET_K, miss),
            stmt(BPF_RET_K, allow),
        ]),
        Verdict::Check(Leaf::MaskedOr { arg, mask, value, or }) => p.extend([
            ld(arg),
            // Past the mask's test and the miss.
            jump(BPF_JEQ_K, *or, 3, 0),
            stmt(BPF_AND_K, *mask),
            jump(BPF_JEQ_K, value & mask, 1, 0),
            stmt(BPF_RET_K, miss),
            stmt(BPF_RET_K, allow),
        ]),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Run `p` on a call (the subset of classic BPF filters use), as the
    /// kernel would; also how many instructions it took.
    pub fn eval(p: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = &p[pc];
            steps += 1;
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_AND_K => acc &= i.k,
                BPF_JA => pc += i.k as usize,
                BPF_RET_K => return (i.k, steps),
                code => {
                    let taken = match code {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGE_K => acc >= i.k,
                        0x25 => acc > i.k,      // JGT
                        0x45 => acc & i.k != 0, // JSET
                        _ => panic!("opcode {code:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
    }

    #[test]
    fn a_search_finds_each_number_and_only_those() {
        for n in [0usize, 1, 2, 3, 7, 64, 300] {
            let calls: Vec<(u32, Leaf)> = (0..n).map(|i| (3 * i as u32 + 1, Leaf::Allow)).collect();
            let p = program(7, &calls, 1, 2);
            for nr in 0..(3 * n as u32 + 5) {
                let want = if nr % 3 == 1 && nr < 3 * n as u32 { 1 } else { 2 };
                assert_eq!(eval(&p, 7, nr, [0; 6]).0, want, "n={n} nr={nr}");
            }
            assert_eq!(eval(&p, 7, u32::MAX, [0; 6]).0, 2);
            assert_eq!(eval(&p, 8, 1, [0; 6]).0, libc::SECCOMP_RET_KILL_PROCESS);
        }
    }

    #[test]
    fn neighbours_share_a_leaf_and_long_value_lists_still_jump_right() {
        let calls: Vec<(u32, Leaf)> = (0..40).map(|i| (i, Leaf::Allow)).collect();
        assert!(program(7, &calls, 1, 2).len() < 10);
        let values: Vec<u32> = (0..600).map(|v| v * 2).collect();
        let values: &'static [u32] = values.leak();
        let p = program(7, &[(5, Leaf::OneOf { arg: 1, values })], 1, 2);
        for v in 0..1300u64 {
            let want = if v % 2 == 0 && v < 1200 { 1 } else { 2 };
            assert_eq!(eval(&p, 7, 5, [0, v, 0, 0, 0, 0]).0, want, "{v}");
        }
    }
}
