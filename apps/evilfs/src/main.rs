//! A guest that speaks FUSE to the Torito monitor's virtio-fs share itself,
//! badly on purpose: names that try to leave the share (`..`, `a/b`, an
//! absolute name), a symbolic link inside the share that points outside
//! it, a node ID never handed out, a READ far beyond any sane size, an
//! unknown opcode, a request whose reply cannot fit its buffer, a header
//! that lies about the length. Each must be an error reply; then a good
//! LOOKUP, OPEN and READ must work. Then it opens the file 1,500 times
//! without releasing (the server holds its cap and refuses the rest),
//! releases them, and opens again. The test checks that a canary file
//! beside the share was neither read nor changed, and the monitor's peak
//! RSS. Exits 0 when all went as it should.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use fuse_abi::linux as abi;
use fuse_abi::linux::fuse_opcode as op;
use kernel::devices::virtio_fs::VirtioFs;
use kernel::println;
use zerocopy::{FromBytes, IntoBytes};

kernel::entry!(main);

/// One request; the reply's error (0: success) and body.
fn call(
    fs: &mut VirtioFs,
    opcode: op,
    nodeid: u64,
    body: &[u8],
    room: usize,
    lie: Option<u32>,
) -> (i32, Vec<u8>) {
    let h = abi::fuse_in_header {
        len: lie.unwrap_or((40 + body.len()) as u32),
        opcode: opcode as u32,
        unique: 7,
        nodeid,
        ..Default::default()
    };
    let mut out = [0u8; 16];
    let mut reply = vec![0u8; room.max(1)];
    let inputs: Vec<&[u8]> = if body.is_empty() { vec![h.as_bytes()] } else { vec![h.as_bytes(), body] };
    let got = {
        let mut outputs: [&mut [u8]; 2] = [&mut out, &mut reply];
        fs.request(&inputs, &mut outputs)
    };
    match got {
        Ok(n) if n >= 16 => {
            let o = abi::fuse_out_header::read_from_bytes(&out).unwrap_or_default();
            reply.truncate(n - 16);
            (o.error, reply)
        }
        _ => (i32::MIN, Vec::new()),
    }
}

/// OPENs the guest makes and never releases, beyond the server's cap.
const FLOOD: usize = 1_500;

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn main() -> i32 {
    let mut devs = kernel::devices::take_fs_devices();
    let Some(fs) = devs.first_mut() else {
        println!("evilfs: FAILED: no virtio-fs device");
        return 1;
    };
    let mut ok = true;
    let mut expect = |what: &str, got: i32, want: i32| {
        let fine = got == want;
        println!(
            "evilfs: {what}: {} (error {got}, want {want})",
            if fine { "as it should be" } else { "WRONG" }
        );
        ok &= fine;
    };
    let init = abi::fuse_init_in { major: 7, minor: 31, max_readahead: 1 << 20, ..Default::default() };
    let (e, _) = call(fs, op::FUSE_INIT, 0, init.as_bytes(), 64, None);
    expect("INIT accepted", e, 0);
    const EPERM: i32 = -1;
    const ENOENT: i32 = -2;
    const EINVAL: i32 = -22;
    const ENOSYS: i32 = -38;
    const ELOOP: i32 = -40;
    for (bad, want) in [("..", EPERM), ("a/b", EPERM), ("/etc/passwd", EPERM), (".", EPERM)] {
        let (e, _) = call(fs, op::FUSE_LOOKUP, 1, &name(bad), 128, None);
        expect(&alloc::format!("LOOKUP '{bad}'"), e, want);
    }
    // The link inside the share that points at the canary outside it.
    let (e, r) = call(fs, op::FUSE_LOOKUP, 1, &name("escape"), 128, None);
    let link = abi::fuse_entry_out::read_from_bytes(r.get(..128).unwrap_or(&[0; 128])).unwrap_or_default();
    expect("LOOKUP of the link itself", e, 0);
    let open = abi::fuse_open_in { flags: 0, open_flags: 0 };
    let (e, _) = call(fs, op::FUSE_OPEN, link.nodeid, open.as_bytes(), 16, None);
    expect("OPEN through the link", e, ELOOP);
    let (e, _) = call(fs, op::FUSE_GETATTR, 0xdead_beef, &[0u8; 16], 104, None);
    expect("GETATTR of a node never handed out", e, ENOENT);
    let (e, _) = call(fs, op::FUSE_SETLK, 1, &[0u8; 32], 16, None);
    expect("an unknown opcode", e, ENOSYS);
    let (e, _) = call(fs, op::FUSE_LOOKUP, 1, &name("a.txt"), 40, None);
    expect("a reply larger than its buffer", e, EINVAL);
    let (e, _) = call(fs, op::FUSE_LOOKUP, 1, &name("a.txt"), 128, Some(u32::MAX));
    expect("a header that lies about its length (served from the chain)", e, 0);
    // And then the good requests.
    let (e, r) = call(fs, op::FUSE_LOOKUP, 1, &name("a.txt"), 128, None);
    let file = abi::fuse_entry_out::read_from_bytes(r.get(..128).unwrap_or(&[0; 128])).unwrap_or_default();
    expect("LOOKUP a.txt", e, 0);
    let (e, r) = call(fs, op::FUSE_OPEN, file.nodeid, open.as_bytes(), 16, None);
    let fh = abi::fuse_open_out::read_from_bytes(r.get(..16).unwrap_or(&[0; 16])).unwrap_or_default().fh;
    expect("OPEN a.txt", e, 0);
    let read = abi::fuse_read_in { fh, offset: 0, size: u32::MAX, ..Default::default() };
    let (e, r) = call(fs, op::FUSE_READ, file.nodeid, read.as_bytes(), 4096, None);
    // Served in full (the file is short) or refused; never a reply that
    // overruns the 4 KiB the guest gave.
    expect("a READ of 4 GiB into 4 KiB", if e == EINVAL || (e == 0 && r.len() <= 4096) { 0 } else { e }, 0);
    let read = abi::fuse_read_in { fh, offset: 0, size: 64, ..Default::default() };
    let (e, r2) = call(fs, op::FUSE_READ, file.nodeid, read.as_bytes(), 64, None);
    expect("READ a.txt", e, 0);
    println!("evilfs: a.txt reads '{}'", core::str::from_utf8(&r2).unwrap_or("?").trim_end());
    // Handles without end: the server holds at most its cap (1,024, or
    // fewer if the monitor's descriptor limit comes first); beyond, each
    // OPEN is an error, and once they are released OPEN works again.
    const ENFILE: i32 = -23;
    const EMFILE: i32 = -24;
    let mut held = Vec::new();
    let mut refused = 0u32;
    let mut other = 0i32;
    for _ in 0..FLOOD {
        let (e, r) = call(fs, op::FUSE_OPEN, file.nodeid, open.as_bytes(), 16, None);
        match e {
            0 => held.push(
                abi::fuse_open_out::read_from_bytes(r.get(..16).unwrap_or(&[0; 16])).unwrap_or_default().fh,
            ),
            ENFILE | EMFILE => refused += 1,
            e => other = e,
        }
    }
    println!("evilfs: {FLOOD} OPENs never released: {} held, {refused} refused", held.len() + 1);
    expect("OPENs beyond the cap are refused (ENFILE/EMFILE), nothing else", other, 0);
    expect("the handles held stay within the cap", i32::from(held.len() + 1 > 1024), 0);
    expect("some OPENs were refused", i32::from(refused == 0), 0);
    let mut bad_release = 0;
    for fh in held.into_iter().chain([fh]) {
        let rel = abi::fuse_release_in { fh, ..Default::default() };
        let (e, _) = call(fs, op::FUSE_RELEASE, file.nodeid, rel.as_bytes(), 16, None);
        if e != 0 {
            bad_release = e;
        }
    }
    expect("RELEASE of every handle", bad_release, 0);
    let (e, _) = call(fs, op::FUSE_OPEN, file.nodeid, open.as_bytes(), 16, None);
    expect("OPEN after the handles were released", e, 0);
    if ok {
        println!("evilfs: ok");
        0
    } else {
        println!("evilfs: FAILED");
        1
    }
}
