//! Is a container an appliance: does its `args[0]` resolve, inside its root
//! file system, to an ELF carrying Torito's note.
//!
//! The path is resolved by hand, one component at a time, so that a
//! symbolic link in the image (absolute or `..`) stays inside the root
//! file system as it would for the container's own process: the monitor
//! runs on the host and must never be pointed at a host file by an image.

use std::path::{Component, Path, PathBuf};

use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, ReadCache};
use torito_abi::note::{NOTE_NAME, NOTE_TYPE};

/// How many symbolic links one resolution follows (Linux's limit).
const MAX_LINKS: usize = 40;

/// `PATH` when the spec's environment has none (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The host path of `program` inside `rootfs`: a path with a `/` is taken
/// as is, a bare name is looked for along `path` (the container's `PATH`).
/// `None` when nothing is there.
pub fn resolve(rootfs: &Path, program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        return in_root(rootfs, Path::new(program)).filter(|p| p.is_file());
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| in_root(rootfs, &Path::new(d).join(program)))
        .find(|p| p.is_file())
}

/// `path` (relative paths start at the root) resolved inside `rootfs`,
/// symbolic links followed there; the host path, or `None` when a
/// component is missing or the links do not end.
pub fn in_root(rootfs: &Path, path: &Path) -> Option<PathBuf> {
    // The components still to walk, last first; the walked ones.
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut walked: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            walked.pop();
            continue;
        }
        let host = walked.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)).join(&name);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            if target.is_absolute() {
                walked.clear();
            }
            push_components(&mut todo, &target);
        } else {
            walked.push(name);
        }
    }
    Some(walked.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)))
}

/// Push `path`'s normal and `..` components onto `todo`, first on top.
fn push_components(todo: &mut Vec<std::ffi::OsString>, path: &Path) {
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// Does the file at `path` carry Torito's note (an appliance ELF)? Reads
/// only the headers and notes (an appliance with baked files is large).
pub fn has_note(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let data = ReadCache::new(file);
    let Ok(elf) = ElfFile64::<Endianness, _>::parse(&data) else { return false };
    let endian = elf.endian();
    elf.elf_program_headers().iter().any(|ph| {
        let Ok(Some(mut notes)) = ph.notes(endian, &data) else { return false };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == NOTE_NAME && note.n_type(endian) == NOTE_TYPE {
                return true;
            }
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("torito-oci-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("bin")).unwrap();
        d
    }

    #[test]
    fn links_stay_inside_the_root() {
        let root = scratch("links");
        std::fs::write(root.join("bin/app"), b"x").unwrap();
        std::os::unix::fs::symlink("/bin/app", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../bin/app", root.join("bin/up")).unwrap();
        // A link to the host's /etc/passwd means the image's /etc/passwd.
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        assert_eq!(resolve(&root, "/abs", None), Some(root.join("bin/app")));
        assert_eq!(resolve(&root, "/bin/up", None), Some(root.join("bin/app")));
        assert_eq!(resolve(&root, "app", Some("/nowhere:/bin")), Some(root.join("bin/app")));
        assert_eq!(resolve(&root, "/passwd", None), None);
        assert_eq!(resolve(&root, "/../../etc/passwd", None), None);
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve(&root, "/loop", None), None);
        assert_eq!(resolve(&root, "", None), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn only_an_elf_with_the_note_is_an_appliance() {
        let root = scratch("note");
        std::fs::write(root.join("bin/text"), b"#!/bin/sh\necho hi\n").unwrap();
        assert!(!has_note(&root.join("bin/text")));
        assert!(!has_note(&std::env::current_exe().unwrap()), "a host program is no appliance");
        assert!(!has_note(&root.join("missing")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
