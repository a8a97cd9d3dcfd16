//! A virtio-fs device (ID 26) on the virtio-mmio transport, whose FUSE
//! server runs in the monitor ([`server`]) over one host directory:
//! `--share HOST_DIR[,tag=NAME][,ro]`.
//!
//! Requests are served inside the guest's QueueNotify exit, like the disk:
//! no daemon to start, no shared-memory guest RAM, no ioeventfd (which
//! would add ~14 ms to KVM's teardown), so the launch and exit figures stay
//! as they are. Queue 0 is FUSE's high-priority queue (FORGET), queue 1
//! the one request queue. Every chain is read through `virtio-queue`'s
//! checked `Reader`/`Writer`; a request larger than its caps, or a reply
//! that does not fit the guest's buffers, is an error reply (or, without
//! room for even the header, a chain returned with length 0).
//!
//! A READ goes from the host file straight into the guest's buffers, a
//! large one in two halves on two threads ([`copier`]).

mod copier;
pub mod server;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use fuse_abi::linux as abi;
use virtio_queue::Queue;
use virtio_queue::Writer;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromBytes, IntoBytes};

use super::mmio::{Backend, F_VERSION_1, MmioDevice, Queues};
use super::queue::{Chain, serve_all};
use crate::sandbox::Sandbox;
use crate::vstate::sys::ReadAt;
use copier::Copier;
use server::Server;

const DEVICE_FS: u32 = 26;
/// Longest tag (the config space's field).
pub const TAG_MAX: usize = 36;
const IN_HEADER: usize = 40;
/// `fuse_read_in`.
const READ_IN: usize = 40;
const OUT_HEADER: usize = 16;
/// Largest request body read (a WRITE of the largest transfer, and its
/// header).
const MAX_BODY: usize = server::MAX_TRANSFER as usize + 4096;

/// `--share HOST_DIR[,tag=NAME][,ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory.
    pub dir: PathBuf,
    /// The tag the guest mounts it by (default: the directory's name).
    pub tag: String,
    /// Refuse every change.
    pub readonly: bool,
}

impl ShareConfig {
    /// Parse `HOST_DIR[,tag=NAME][,ro]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let dir = parts
            .next()
            .filter(|d| !d.is_empty())
            .ok_or("a share needs a directory: --share HOST_DIR[,tag=NAME][,ro]")?;
        let mut tag = None;
        let mut readonly = false;
        for p in parts {
            match p.split_once('=') {
                Some(("tag", t)) => tag = Some(t.to_string()),
                None if p == "ro" => readonly = true,
                _ => return Err(format!("unknown share option '{p}' (options: tag=NAME, ro)")),
            }
        }
        let dir = PathBuf::from(dir);
        let tag = match tag {
            Some(t) => t,
            None => dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "share".into()),
        };
        if tag.is_empty() || tag.len() > TAG_MAX || tag.contains(['/', '\0', ',']) {
            return Err(format!("share tag '{tag}': 1 to {TAG_MAX} bytes, without '/', ',' or NUL"));
        }
        Ok(Self { dir, tag, readonly })
    }
}

/// The virtio-fs backend.
pub struct Fs {
    server: Server,
    tag: String,
    out: Vec<u8>,
    body: Vec<u8>,
    /// Requests served.
    pub requests: u64,
    /// The filter of the thread that copies half of a large READ.
    sandbox: Sandbox,
    /// That thread, once a large READ came (`None` inside: the host
    /// refused it).
    copier: Option<Option<Copier>>,
    /// READs served in two halves.
    halves: u64,
}

/// Open the directory of `cfg` (every reason it cannot be shared is one
/// line for the user) and make the device; its copying thread, if it
/// starts one, runs under `sandbox`'s filters.
pub fn open(cfg: &ShareConfig, sandbox: &Sandbox) -> Result<MmioDevice, String> {
    Ok(MmioDevice::new(Fs::new(cfg, sandbox)?))
}

impl Fs {
    /// The backend for `cfg`.
    pub fn new(cfg: &ShareConfig, sandbox: &Sandbox) -> Result<Self, String> {
        let d = cfg.dir.display();
        let meta = std::fs::metadata(&cfg.dir).map_err(|e| format!("share {d}: {e}"))?;
        if !meta.is_dir() {
            return Err(format!("share {d}: not a directory"));
        }
        // Opened for reading (not O_PATH), so an unreadable directory is
        // refused now rather than on the guest's first look.
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&cfg.dir)
            .map_err(|e| format!("share {d}: {e}"))?;
        std::fs::read_dir(&cfg.dir).map_err(|e| format!("share {d}: {e}"))?;
        let server = Server::new(root.into(), cfg.readonly).map_err(|e| format!("share {d}: {e}"))?;
        Ok(Self {
            server,
            tag: cfg.tag.clone(),
            out: Vec::new(),
            body: Vec::new(),
            requests: 0,
            sandbox: sandbox.clone(),
            copier: None,
            halves: 0,
        })
    }

    /// Serve every request on `queue`.
    fn serve(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        serve_all(queue, mem, |chain| {
            let (Ok(mut r), Ok(mut w)) = (chain.clone().reader(mem), chain.clone().writer(mem)) else {
                return 0;
            };
            let mut h = [0u8; IN_HEADER];
            if r.read_exact(&mut h).is_err() {
                return 0;
            }
            let Ok(h) = abi::fuse_in_header::read_from_bytes(&h) else { return 0 };
            self.requests += 1;
            // The body: what the header says, within the chain and the cap.
            let want = (h.len as usize).saturating_sub(IN_HEADER).min(r.available_bytes());
            if h.opcode == abi::fuse_opcode::FUSE_READ as u32 {
                let mut body = [0u8; READ_IN];
                if want < READ_IN || r.read_exact(&mut body).is_err() {
                    return reply_error(&mut w, h.unique, libc::EINVAL);
                }
                return self.read_direct(h.unique, &body, &chain, &mut w, mem);
            }
            let result = if want > MAX_BODY {
                Err(libc::E2BIG)
            } else {
                self.body.clear();
                match (&mut r).take(want as u64).read_to_end(&mut self.body) {
                    Ok(_) => self.server.handle(h.opcode, h.nodeid, &self.body, &mut self.out),
                    Err(_) => Err(libc::EFAULT),
                }
            };
            let (error, data): (i32, &[u8]) = match result {
                Ok(false) => return 0, // FORGET: no reply
                Ok(true) => (0, &self.out),
                Err(e) => (-e, &[]),
            };
            // A reply that does not fit the guest's buffers: an error.
            let (error, data) = if OUT_HEADER + data.len() > w.available_bytes() {
                (-libc::EINVAL, &[][..])
            } else {
                (error, data)
            };
            let header =
                abi::fuse_out_header { len: (OUT_HEADER + data.len()) as u32, error, unique: h.unique };
            if OUT_HEADER > w.available_bytes()
                || w.write_all(header.as_bytes()).is_err()
                || w.write_all(data).is_err()
            {
                return 0;
            }
            header.len
        });
    }
}

impl Fs {
    /// A READ, from the host file straight into the guest's buffers: no
    /// copy on the way (the monitor's other requests go through `out`).
    /// A request for more than the buffers hold is EINVAL.
    fn read_direct(
        &mut self,
        unique: u64,
        body: &[u8; READ_IN],
        chain: &Chain<'_>,
        w: &mut Writer<'_>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        let Ok(r) = abi::fuse_read_in::read_from_bytes(&body[..]) else { return 0 };
        let room = w.available_bytes();
        if room < OUT_HEADER {
            return 0;
        }
        let n = r.size.min(server::MAX_TRANSFER) as usize;
        if n > room - OUT_HEADER {
            return reply_error(w, unique, libc::EINVAL);
        }
        let file = match self.server.file_to_read(r.fh) {
            Ok(f) => f,
            Err(e) => return reply_error(w, unique, e),
        };
        // The guest's writable buffers, the first OUT_HEADER bytes left
        // for the header.
        let to = buffers(chain, OUT_HEADER, n);
        let got = if n >= copier::SPLIT {
            self.read_halves(file, r.offset, to, n, mem)
        } else {
            fill(mem, &file, r.offset, &to)
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => return reply_error(w, unique, e),
        };
        let header = abi::fuse_out_header { len: (OUT_HEADER + got) as u32, error: 0, unique };
        if w.write_all(header.as_bytes()).is_err() {
            return 0;
        }
        header.len
    }

    /// `n` bytes of `file` from `offset` into `to`: the first half on this
    /// thread, the second on the copier's at the same time (all of it
    /// here while the copier starts, or if it could not).
    fn read_halves(
        &mut self,
        file: Arc<File>,
        offset: u64,
        mut to: Vec<(u64, usize)>,
        n: usize,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, i32> {
        let copier = self.copier.get_or_insert_with(|| Copier::start(mem, &self.sandbox));
        let Some(c) = copier.as_ref().filter(|c| c.ready()) else {
            // Not ready yet (or never): all of it here.
            return fill(mem, &file, offset, &to);
        };
        // A little over half here: the other thread starts its piece a few
        // µs after this one (it sees the post, then takes the slot).
        let half = (n * 9 / 16) & !4095;
        let second = split_off(&mut to, half);
        c.post(copier::Piece { file: Arc::clone(&file), offset: offset + half as u64, to: second });
        self.halves += 1;
        let first = fill(mem, &file, offset, &to);
        let second = c.wait();
        let (first, second) = (first?, second?);
        // A short first half is the end of the file: what the second
        // found past it is not the guest's.
        Ok(if first < half { first } else { first + second })
    }
}

/// The first `n` bytes of `chain`'s writable buffers past `skip`, as
/// (guest address, length).
fn buffers(chain: &Chain<'_>, mut skip: usize, n: usize) -> Vec<(u64, usize)> {
    let mut to = Vec::new();
    let mut left = n;
    for d in chain.clone().writable() {
        if left == 0 {
            break;
        }
        let (addr, len) = (d.addr().0, d.len() as usize);
        let s = skip.min(len);
        skip -= s;
        let len = (len - s).min(left);
        if len > 0 {
            to.push((addr.saturating_add(s as u64), len));
            left -= len;
        }
    }
    to
}

/// Cut `to` after its first `at` bytes; the rest, returned.
fn split_off(to: &mut Vec<(u64, usize)>, at: usize) -> Vec<(u64, usize)> {
    let mut seen = 0;
    for i in 0..to.len() {
        let (addr, len) = to[i];
        if seen + len > at {
            let keep = at - seen;
            let mut rest = to.split_off(i);
            if keep > 0 {
                rest[0] = (addr.saturating_add(keep as u64), len - keep);
                to.push((addr, keep));
            }
            return rest;
        }
        seen += len;
    }
    Vec::new()
}

/// Read `file` from `offset` into the guest buffers `to`, in order, until
/// they are full or the file ends: the bytes read, or an errno.
fn fill(mem: &GuestMemoryMmap, file: &File, offset: u64, to: &[(u64, usize)]) -> Result<usize, i32> {
    let mut at = ReadAt { file, offset };
    let mut got = 0;
    for &(mut addr, mut len) in to {
        while len > 0 {
            match mem.read_volatile_from(GuestAddress(addr), &mut at, len) {
                Ok(0) => return Ok(got),
                Ok(k) => (addr, len, got) = (addr.saturating_add(k as u64), len - k, got + k),
                Err(vm_memory::GuestMemoryError::IOError(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(vm_memory::GuestMemoryError::IOError(e)) => {
                    return Err(e.raw_os_error().unwrap_or(libc::EIO));
                }
                Err(_) => return Err(libc::EFAULT),
            }
        }
    }
    Ok(got)
}

/// A reply that is only a header carrying `errno`.
fn reply_error(w: &mut Writer<'_>, unique: u64, errno: i32) -> u32 {
    let header = abi::fuse_out_header { len: OUT_HEADER as u32, error: -errno, unique };
    if w.write_all(header.as_bytes()).is_err() {
        return 0;
    }
    header.len
}

impl Backend for Fs {
    fn device_id(&self) -> u32 {
        DEVICE_FS
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    /// `tag[36]`, then `num_request_queues` (1).
    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; TAG_MAX + 4];
        c[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        c[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn queue_max(&self) -> u16 {
        256
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>, mem: &GuestMemoryMmap) {
        if let Some(q) = queues.get(index) {
            self.serve(q, mem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmConfig;
    use fuse_abi::linux::fuse_opcode as op;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    /// No seccomp filter: the tests run in the test harness's threads.
    fn filters() -> Sandbox {
        let mut cfg = VmConfig::new("x.elf");
        cfg.seccomp = crate::sandbox::SeccompMode::Off;
        Sandbox::new(&cfg)
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn request(
        mem: &GuestMemoryMmap,
        at: u64,
        opcode: op,
        nodeid: u64,
        unique: u64,
        body: &[u8],
        len: Option<u32>,
    ) -> u32 {
        let h = abi::fuse_in_header {
            len: len.unwrap_or((IN_HEADER + body.len()) as u32),
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        };
        mem.write_slice(h.as_bytes(), GuestAddress(at)).unwrap();
        mem.write_slice(body, GuestAddress(at + IN_HEADER as u64)).unwrap();
        (IN_HEADER + body.len()) as u32
    }

    fn reply(mem: &GuestMemoryMmap, at: u64) -> abi::fuse_out_header {
        let mut b = [0u8; OUT_HEADER];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        abi::fuse_out_header::read_from_bytes(&b).unwrap()
    }

    /// Requests a hostile guest may post: a header cut short, a length that
    /// lies, an unknown opcode, a reply larger than the buffer, a buffer
    /// outside RAM. Each gets an error reply or its chain back; then a good
    /// LOOKUP is answered, and the canary beside the share is untouched.
    #[test]
    fn malformed_requests_get_errors_and_the_device_goes_on() {
        let (dir, canary) = server::tests::share("dev");
        let cfg = ShareConfig { dir: dir.clone(), tag: "t".into(), readonly: false };
        let mut fs = Fs::new(&cfg, &filters()).unwrap();
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 32);
        let mut queue: Queue = q.create_queue().unwrap();
        let n1 = request(&mem, 0x10_0000, op::FUSE_LOOKUP, 1, 1, b"a.txt\0", Some(u32::MAX));
        let n2 = request(&mem, 0x10_1000, op::FUSE_SETLK, 1, 2, b"", None);
        let n3 = request(&mem, 0x10_2000, op::FUSE_LOOKUP, 1, 3, b"a.txt\0", None);
        let n4 = request(&mem, 0x10_3000, op::FUSE_LOOKUP, 1, 4, b"a.txt\0", None);
        q.add_desc_chains(
            &[
                desc(0x10_0000, 20, WRITE, 0), // header cut short (and writable)
                desc(0x10_0000, n1, NEXT, 2),  // a length that lies
                desc(0x20_0000, 256, WRITE, 0),
                desc(0x10_1000, n2, NEXT, 4), // an unknown opcode
                desc(0x20_1000, 256, WRITE, 0),
                desc(0x10_2000, n3, NEXT, 6), // a reply larger than its buffer
                desc(0x20_2000, 40, WRITE, 0),
                desc(0x10_3000, n4, NEXT, 8), // a buffer outside RAM
                desc(0xffff_0000_0000, 256, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        fs.serve(&mut queue, &mem);
        let used: u16 = mem.read_obj(GuestAddress(q.used_addr().0 + 2)).unwrap();
        assert_eq!(used, 5, "every chain returned");
        let lied = reply(&mem, 0x20_0000);
        assert_eq!((lied.error, lied.unique), (0, 1), "the body is what the chain holds");
        assert_eq!(reply(&mem, 0x20_1000).error, -libc::ENOSYS);
        assert_eq!(reply(&mem, 0x20_2000).error, -libc::EINVAL, "no room for the entry");
        // The good one.
        let n5 = request(&mem, 0x10_4000, op::FUSE_LOOKUP, 1, 5, b"a.txt\0", None);
        q.add_desc_chains(&[desc(0x10_4000, n5, NEXT, 10), desc(0x20_4000, 256, WRITE, 0)], 9).unwrap();
        fs.serve(&mut queue, &mem);
        let ok = reply(&mem, 0x20_4000);
        assert_eq!((ok.error, ok.unique, ok.len), (0, 5, 16 + 128));
        assert_eq!(std::fs::read(&canary).unwrap(), b"secret");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// Serve the one chain `descs` (from descriptor 0) on a fresh queue.
    fn serve_chain(fs: &mut Fs, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) {
        let q = MockSplitQueue::new(mem, 32);
        let mut queue: Queue = q.create_queue().unwrap();
        q.add_desc_chains(descs, 0).unwrap();
        fs.serve(&mut queue, mem);
    }

    /// LOOKUP and OPEN `name` in the share's root: its node ID and handle.
    fn open_file(fs: &mut Fs, mem: &GuestMemoryMmap, name: &str) -> (u64, u64) {
        let n = request(mem, 0x10_0000, op::FUSE_LOOKUP, 1, 1, format!("{name}\0").as_bytes(), None);
        serve_chain(fs, mem, &[desc(0x10_0000, n, NEXT, 1), desc(0x20_0000, 256, WRITE, 0)]);
        let mut e = abi::fuse_entry_out::default();
        mem.read_slice(e.as_mut_bytes(), GuestAddress(0x20_0000 + OUT_HEADER as u64)).unwrap();
        let o = abi::fuse_open_in::default();
        let n = request(mem, 0x10_1000, op::FUSE_OPEN, e.nodeid, 2, o.as_bytes(), None);
        serve_chain(fs, mem, &[desc(0x10_1000, n, NEXT, 1), desc(0x20_1000, 256, WRITE, 0)]);
        let mut oo = abi::fuse_open_out::default();
        mem.read_slice(oo.as_mut_bytes(), GuestAddress(0x20_1000 + OUT_HEADER as u64)).unwrap();
        (e.nodeid, oo.fh)
    }

    /// A READ of `size` bytes of `fh` from `offset`, its reply in `bufs`
    /// (guest address, length; the header in the first): the header and
    /// the data.
    fn read(
        fs: &mut Fs,
        mem: &GuestMemoryMmap,
        node: u64,
        fh: u64,
        (offset, size): (u64, u32),
        bufs: &[(u64, u32)],
    ) -> (abi::fuse_out_header, Vec<u8>) {
        let r = abi::fuse_read_in { fh, offset, size, ..Default::default() };
        let n = request(mem, 0x10_2000, op::FUSE_READ, node, 3, r.as_bytes(), None);
        let mut descs = vec![desc(0x10_2000, n, NEXT, 1)];
        for (i, &(at, len)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            descs.push(desc(
                at,
                len,
                if last { WRITE } else { WRITE | NEXT },
                if last { 0 } else { i as u16 + 2 },
            ));
        }
        serve_chain(fs, mem, &descs);
        let mut bytes = Vec::new();
        for &(at, len) in bufs {
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            bytes.extend(b);
        }
        let h = abi::fuse_out_header::read_from_bytes(&bytes[..OUT_HEADER]).unwrap();
        let data =
            bytes[OUT_HEADER..].iter().take((h.len as usize).saturating_sub(OUT_HEADER)).copied().collect();
        (h, data)
    }

    /// A READ lands straight in the guest's buffers, across descriptors
    /// of odd sizes (the header split over two); one asking for more than
    /// its buffers hold is EINVAL; one on a handle never opened is EBADF.
    #[test]
    fn reads_go_straight_into_guest_buffers() {
        let (dir, _canary) = server::tests::share("read");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("big"), &data).unwrap();
        let mut fs =
            Fs::new(&ShareConfig { dir: dir.clone(), tag: "t".into(), readonly: false }, &filters()).unwrap();
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let (node, fh) = open_file(&mut fs, &mem, "big");
        // 70,000 bytes from offset 1,000, into 10 + 6 + 50,000 + 30,000 bytes.
        let bufs = [(0x30_0000, 10), (0x30_1000, 6), (0x31_0000, 50_000), (0x32_0000, 30_000)];
        let (h, got) = read(&mut fs, &mem, node, fh, (1_000, 70_000), &bufs);
        assert_eq!((h.error, h.unique, h.len), (0, 3, 16 + 70_000));
        assert!(got == data[1_000..71_000], "the data, in order");
        // Past the end: what is there. More than the buffers: EINVAL. A
        // handle never opened: EBADF.
        for (offset, size, fh, want) in
            [(99_990, 4096, fh, Ok(10)), (0, 8192, fh, Err(libc::EINVAL)), (0, 16, 77, Err(libc::EBADF))]
        {
            let (h, _) = read(&mut fs, &mem, node, fh, (offset, size), &[(0x3a_0000, 4096 + 16)]);
            match want {
                Ok(k) => assert_eq!((h.error, h.len), (0, 16 + k)),
                Err(e) => assert_eq!((h.error, h.len), (-e, 16)),
            }
        }
        assert_eq!(fs.halves, 0, "small READs are served whole");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// A large READ is served in two halves, the second by the copying
    /// thread under its own seccomp filter (installed for real here, on
    /// that thread alone): the guest gets the same bytes, the halves
    /// meeting inside a descriptor; a file ending in either half gives
    /// what there is.
    #[test]
    fn large_reads_go_in_two_halves() {
        let (dir, _canary) = server::tests::share("halves");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8 ^ (i >> 16) as u8).collect();
        std::fs::write(dir.join("big"), &data).unwrap();
        let mut on = VmConfig::new("x.elf");
        on.seccomp = crate::sandbox::SeccompMode::On;
        let mut fs =
            Fs::new(&ShareConfig { dir: dir.clone(), tag: "t".into(), readonly: false }, &Sandbox::new(&on))
                .unwrap();
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let (node, fh) = open_file(&mut fs, &mem, "big");
        let bufs = [(0x40_0000, 10), (0x40_1000, 300_006), (0x50_0000, 600_000), (0x60_0000, 200_000)];
        let size = (1 << 20) - 1_000;
        // The first READ starts the thread; the next ones wait for it.
        for round in 0..2_000u64 {
            let offset = 777 + 4096 * round;
            let (h, got) = read(&mut fs, &mem, node, fh, (offset, size), &bufs);
            assert_eq!((h.error, h.len), (0, 16 + size));
            assert!(got == data[offset as usize..][..size as usize], "round {round}: the data, in order");
            if fs.halves >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(fs.halves >= 2, "the copying thread never took a half");
        let end = data.len() as u64;
        for (offset, want) in [(end - 700_000, 700_000), (end - 100_000, 100_000), (end, 0), (end + 5, 0)] {
            let halves = fs.halves;
            let (h, got) = read(&mut fs, &mem, node, fh, (offset, size), &bufs);
            assert_eq!((h.error, h.len), (0, 16 + want), "from {offset}");
            assert!(got == data[offset.min(end) as usize..], "from {offset}");
            assert_eq!(fs.halves, halves + 1);
        }
        // The thread ends under its filter too (a call it lacks would
        // kill this test process).
        drop(fs);
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn buffers_split_where_asked() {
        let mut to = vec![(0x1000, 10), (0x2000, 20), (0x3000, 30)];
        assert_eq!(split_off(&mut to, 15), vec![(0x2005, 15), (0x3000, 30)]);
        assert_eq!(to, vec![(0x1000, 10), (0x2000, 5)]);
        let mut to = vec![(0x1000, 10), (0x2000, 20)];
        assert_eq!(split_off(&mut to, 10), vec![(0x2000, 20)]);
        assert_eq!(to, vec![(0x1000, 10)]);
        let mut to = vec![(0x1000, 10)];
        assert_eq!(split_off(&mut to, 10), vec![]);
        assert_eq!(split_off(&mut to, 0), vec![(0x1000, 10)]);
        assert!(to.is_empty());
    }

    #[test]
    fn share_options() {
        let d = std::env::temp_dir();
        let p = |s: &str| ShareConfig::parse(s);
        assert_eq!(
            p("/srv/www,tag=web,ro"),
            Ok(ShareConfig { dir: "/srv/www".into(), tag: "web".into(), readonly: true })
        );
        assert_eq!(
            p(&d.display().to_string()).unwrap().tag,
            d.canonicalize().unwrap().file_name().unwrap().to_string_lossy()
        );
        assert!(p("/x,tag=").is_err());
        assert!(p(&format!("/x,tag={}", "t".repeat(37))).unwrap_err().contains("1 to 36 bytes"));
        assert!(p("/x,rw").unwrap_err().contains("unknown share option 'rw'"));
        assert!(p("").is_err());
        let missing = Fs::new(
            &ShareConfig { dir: "/nonexistent/dir".into(), tag: "t".into(), readonly: false },
            &filters(),
        );
        assert!(missing.err().unwrap().contains("/nonexistent/dir"));
        let file = Fs::new(
            &ShareConfig { dir: "/etc/hostname".into(), tag: "t".into(), readonly: false },
            &filters(),
        );
        assert!(file.err().unwrap().contains("not a directory"));
    }
}
