//! The std-shaped facade over a baked-in archive at `/` and a writable
//! filesystem at `/data`, as an app uses it.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use embedded_io::{Read, Seek, SeekFrom, Write};

use super::memfs::MemFs;
use crate::*;

fn fresh() -> std::sync::MutexGuard<'static, ()> {
    let g = super::serial();
    // An archive with one file and one directory, as the linker helper
    // would make it (built with the `cpio` crate's layout by hand).
    let mut bytes = Vec::new();
    for (name, mode, data) in [("hello.txt", 0o100644u32, &b"hello, world\n"[..]), ("docs", 0o040755, b"")] {
        let hdr = alloc::format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(data);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
    }
    let report = init(Sources {
        files: alloc::boxed::Box::leak(bytes.into_boxed_slice()),
        disks: Vec::new(),
        relax: None,
        clock: None,
        monotonic: None,
        shares: Vec::new(),
    });
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    mount("/data", "memory", Arc::new(MemFs::new())).unwrap();
    g
}

#[test]
fn reads_the_baked_in_files() {
    let _g = fresh();
    assert_eq!(read_to_string("/hello.txt").unwrap(), "hello, world\n");
    assert_eq!(read("/docs/../hello.txt").unwrap().len(), 13);
    let mut f = File::open("/hello.txt").unwrap();
    assert_eq!(f.as_static(), Some(&b"hello, world\n"[..]));
    let mut buf = [0u8; 5];
    f.seek(SeekFrom::Start(7)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(f.seek(SeekFrom::End(-1)).unwrap(), 12);
    assert!(f.seek(SeekFrom::Current(-20)).is_err());
    assert_eq!(f.write(b"x"), Err(Error::InvalidInput("file not opened for writing")));
    assert_eq!(File::create("/new.txt").err(), Some(Error::ReadOnly));
    assert_eq!(File::open("/missing").err(), Some(Error::NotFound));
    assert_eq!(File::open("relative").err(), Some(Error::InvalidPath));
    assert!(metadata("/docs").unwrap().is_dir());
}

#[test]
fn mounts_and_listing() {
    let _g = fresh();
    let m: Vec<String> = mounts().iter().map(Mount::describe).collect();
    assert_eq!(m[0], "/: baked-in (read-only), baked into the ELF, 1 files, 13 bytes");
    assert_eq!(m[1], "/data: memory, memory");
    let mut names: Vec<String> = read_dir("/").unwrap().map(|e| String::from(e.file_name())).collect();
    names.sort();
    assert_eq!(names, ["data", "docs", "hello.txt"], "the mount point shows in its parent");
    let e = read_dir("/").unwrap().find(|e| e.file_name() == "hello.txt").unwrap();
    assert_eq!(e.path(), "/hello.txt");
    assert_eq!(e.metadata().unwrap().len(), 13);
    assert_eq!(mount("/data", "again", Arc::new(MemFs::new())), Err(Error::AlreadyExists));
}

#[test]
fn writes_renames_and_removes_like_std() {
    let _g = fresh();
    create_dir_all("/data/a/b/c").unwrap();
    create_dir_all("/data/a/b").unwrap();
    assert_eq!(create_dir("/data/a"), Err(Error::AlreadyExists));
    write("/data/a/b/c/f.txt", b"one").unwrap();
    assert_eq!(create_dir_all("/data/a/b/c/f.txt/d"), Err(Error::AlreadyExists), "as std: mkdir of a file");
    let mut f = OpenOptions::new().append(true).open("/data/a/b/c/f.txt").unwrap();
    f.write_all(b" two").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b" three").unwrap();
    assert_eq!(read_to_string("/data/a/b/c/f.txt").unwrap(), "one two three", "append ignores the position");
    assert_eq!(File::create_new("/data/a/b/c/f.txt").err(), Some(Error::AlreadyExists));
    let mut g = OpenOptions::new().read(true).write(true).open("/data/a/b/c/f.txt").unwrap();
    g.set_len(3).unwrap();
    assert_eq!(g.metadata().unwrap().len(), 3);
    assert_eq!(
        OpenOptions::new().open("/data/x").err(),
        Some(Error::InvalidInput("open for neither reading nor writing"))
    );
    assert!(OpenOptions::new().read(true).create(true).open("/data/x").is_err());
    assert!(OpenOptions::new().append(true).truncate(true).open("/data/x").is_err());

    rename("/data/a/b", "/data/moved").unwrap();
    assert_eq!(read_to_string("/data/moved/c/f.txt").unwrap(), "one");
    assert_eq!(
        rename("/data/moved", "/data/moved/c/inside"),
        Err(Error::InvalidInput("rename a directory into itself"))
    );
    assert_eq!(rename("/data/moved/c/f.txt", "/g.txt"), Err(Error::Unsupported("rename across filesystems")));
    assert_eq!(remove_dir("/data/moved/c"), Err(Error::DirectoryNotEmpty));
    assert_eq!(remove_file("/data/moved/c"), Err(Error::IsADirectory));
    remove_file("/data/moved/c/f.txt").unwrap();
    remove_dir("/data/moved/c").unwrap();
    assert_eq!(remove_dir("/data"), Err(Error::PermissionDenied), "a mount point stays");
    assert!(!exists("/data/moved/c"));
    assert!(exists("/data/moved"));
    assert_eq!(sync_all(), Ok(()));
}

#[test]
fn errors_say_what_is_wrong() {
    assert_eq!(
        alloc::format!("{}", Error::Corrupt("inode 12: bad extent".into())),
        "corrupt filesystem: inode 12: bad extent"
    );
    assert_eq!(alloc::format!("{}", Error::NotFound), "no such file or directory");
    use embedded_io::Error as _;
    assert_eq!(Error::NotFound.kind(), embedded_io::ErrorKind::NotFound);
    assert_eq!(Error::ReadOnly.kind(), embedded_io::ErrorKind::PermissionDenied);
}
