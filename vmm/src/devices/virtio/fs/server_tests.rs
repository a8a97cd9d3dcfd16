//! Host tests of the FUSE server: a share with a canary beside it, and
//! requests good and hostile.

use super::*;
use fuse_abi::linux::fuse_opcode as op;

/// A share with a file, a directory, and a symbolic link pointing at a
/// canary file beside the share; returns (share, canary).
pub fn share(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = std::env::temp_dir().join(format!("torito-share-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let share = base.join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("a.txt"), b"alpha").unwrap();
    std::fs::write(share.join("sub/b.txt"), b"beta").unwrap();
    let canary = base.join("canary");
    std::fs::write(&canary, b"secret").unwrap();
    std::os::unix::fs::symlink(&canary, share.join("escape")).unwrap();
    std::os::unix::fs::symlink("../canary", share.join("relative-escape")).unwrap();
    (share, canary)
}

pub fn server(share: &Path, readonly: bool) -> Server {
    let root = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(share).unwrap();
    Server::new(root.into(), readonly).unwrap()
}

fn call(s: &mut Server, opcode: op, nodeid: u64, body: &[u8]) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    s.handle(opcode as u32, nodeid, body, &mut out).map(|_| out)
}

fn lookup(s: &mut Server, parent: u64, name: &str) -> Result<abi::fuse_entry_out, Errno> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    call(s, op::FUSE_LOOKUP, parent, &b).map(|o| read(&o))
}

fn open(s: &mut Server, nodeid: u64, flags: i32) -> Result<u64, Errno> {
    let o = abi::fuse_open_in { flags: flags as u32, ..Default::default() };
    call(s, op::FUSE_OPEN, nodeid, o.as_bytes()).map(|o| read::<abi::fuse_open_out>(&o).fh)
}

/// What a READ of `fh` gives (the device serves READ through
/// `file_to_read`).
fn read_file(s: &mut Server, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0u8; size.min(1 << 20) as usize];
    let n = s.file_to_read(fh)?.read_at(&mut out, offset).map_err(errno)?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn nothing_outside_the_share_can_be_named() {
    let (dir, canary) = share("escape");
    let mut s = server(&dir, false);
    for bad in ["..", ".", "sub/b.txt", "", "/etc/passwd"] {
        assert!(lookup(&mut s, 1, bad).is_err(), "{bad}");
    }
    assert_eq!(lookup(&mut s, 1, &"x".repeat(256)).err(), Some(libc::ENAMETOOLONG));
    // Links are nodes of their own, never followed nor opened.
    for link in ["escape", "relative-escape"] {
        let e = lookup(&mut s, 1, link).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(open(&mut s, e.nodeid, libc::O_RDONLY).err(), Some(libc::ELOOP));
        assert_eq!(open(&mut s, e.nodeid, libc::O_RDWR).err(), Some(libc::ELOOP));
        assert_eq!(lookup(&mut s, e.nodeid, "x").err(), Some(libc::ENOTDIR));
    }
    // Renames and creations with names that try to leave.
    let mut names = b"a.txt\0../stolen\0".to_vec();
    let r = abi::fuse_rename_in { newdir: 1 };
    let mut body = r.as_bytes().to_vec();
    body.append(&mut names);
    assert_eq!(call(&mut s, op::FUSE_RENAME, 1, &body).err(), Some(libc::EPERM));
    let c = abi::fuse_create_in { flags: libc::O_RDWR as u32, mode: 0o644, ..Default::default() };
    let mut body = c.as_bytes().to_vec();
    body.extend_from_slice(b"../created\0");
    assert_eq!(call(&mut s, op::FUSE_CREATE, 1, &body).err(), Some(libc::EPERM));
    // A node ID never handed out, a handle never opened.
    assert_eq!(call(&mut s, op::FUSE_GETATTR, 999, &[]).err(), Some(libc::ENOENT));
    assert_eq!(call(&mut s, op::FUSE_GETATTR, 0, &[]).err(), Some(libc::ENOENT));
    assert_eq!(read_file(&mut s, 77, 0, 10).err(), Some(libc::EBADF));
    assert_eq!(call(&mut s, op::FUSE_SETLK, 1, &[]).err(), Some(libc::ENOSYS));
    assert_eq!(std::fs::read(&canary).unwrap(), b"secret");
    assert!(
        !dir.parent().unwrap().join("stolen").exists() && !dir.parent().unwrap().join("created").exists()
    );
    // And a good request still works.
    let e = lookup(&mut s, 1, "a.txt").unwrap();
    let fh = open(&mut s, e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(read_file(&mut s, fh, 1, 1 << 30).unwrap(), b"lpha", "a huge READ is capped");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_read_only_share_refuses_every_change() {
    let (dir, _) = share("ro");
    let mut s = server(&dir, true);
    let e = lookup(&mut s, 1, "a.txt").unwrap();
    assert_eq!(open(&mut s, e.nodeid, libc::O_WRONLY).err(), Some(libc::EROFS));
    assert_eq!(open(&mut s, e.nodeid, libc::O_RDWR | libc::O_TRUNC).err(), Some(libc::EROFS));
    let m = abi::fuse_mkdir_in { mode: 0o755, umask: 0 };
    let mut body = m.as_bytes().to_vec();
    body.extend_from_slice(b"d\0");
    assert_eq!(call(&mut s, op::FUSE_MKDIR, 1, &body).err(), Some(libc::EROFS));
    assert_eq!(call(&mut s, op::FUSE_UNLINK, 1, b"a.txt\0").err(), Some(libc::EROFS));
    let set = abi::fuse_setattr_in { valid: abi::FATTR_SIZE, size: 0, ..Default::default() };
    assert_eq!(call(&mut s, op::FUSE_SETATTR, e.nodeid, set.as_bytes()).err(), Some(libc::EROFS));
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"alpha");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn nodes_are_counted_forgotten_and_capped() {
    let (dir, _) = share("nodes");
    let mut s = server(&dir, false);
    for _ in 0..1000 {
        lookup(&mut s, 1, "a.txt").unwrap();
    }
    assert_eq!(s.node_count(), 2, "one node per inode");
    let e = lookup(&mut s, 1, "a.txt").unwrap();
    let f = abi::fuse_forget_in { nlookup: 1001 };
    assert_eq!(s.handle(op::FUSE_FORGET as u32, e.nodeid, f.as_bytes(), &mut Vec::new()), Ok(false));
    assert_eq!(s.node_count(), 1);
    // The root cannot be forgotten.
    s.handle(op::FUSE_FORGET as u32, 1, f.as_bytes(), &mut Vec::new()).unwrap();
    assert!(lookup(&mut s, 1, "a.txt").is_ok());
    // Handles are capped.
    let e = lookup(&mut s, 1, "a.txt").unwrap();
    let mut last = Ok(0);
    for _ in 0..=MAX_HANDLES {
        last = open(&mut s, e.nodeid, libc::O_RDONLY);
    }
    assert_eq!(last.err(), Some(libc::EMFILE));
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn files_and_directories_round_trip() {
    let (dir, _) = share("rw");
    let mut s = server(&dir, false);
    let c = abi::fuse_create_in {
        flags: (libc::O_RDWR | libc::O_EXCL) as u32,
        mode: 0o644,
        umask: 0o022,
        open_flags: 0,
    };
    let mut body = c.as_bytes().to_vec();
    body.extend_from_slice("é new.txt\0".as_bytes());
    let o = call(&mut s, op::FUSE_CREATE, 1, &body).unwrap();
    let fh = read::<abi::fuse_open_out>(&o[128..]).fh;
    let w = abi::fuse_write_in { fh, offset: 3, size: 5, ..Default::default() };
    let mut body = w.as_bytes().to_vec();
    body.extend_from_slice(b"hello");
    call(&mut s, op::FUSE_WRITE, 0, &body).unwrap();
    assert_eq!(read_file(&mut s, fh, 0, 100).unwrap(), b"\0\0\0hello");
    assert_eq!(std::fs::read(dir.join("é new.txt")).unwrap(), b"\0\0\0hello");
    let od = call(&mut s, op::FUSE_OPENDIR, 1, &[]).unwrap();
    let dfh = read::<abi::fuse_open_out>(&od).fh;
    let r = abi::fuse_read_in { fh: dfh, offset: 0, size: 4096, ..Default::default() };
    let listing = call(&mut s, op::FUSE_READDIR, 0, r.as_bytes()).unwrap();
    let text = String::from_utf8_lossy(&listing);
    for n in ["a.txt", "sub", "é new.txt", "escape"] {
        assert!(text.contains(n), "{n} in {text:?}");
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
