//! The files baked into an appliance: a directory packed into a cpio
//! *newc* archive (the format of Linux's initramfs), which the kernel links
//! into the ELF's read-only data and the filesystem unit serves at `/` in
//! place.
//!
//! Which directory, first match wins: `TORITO_FILES` in the environment
//! (`cargo xtask build <app> --files DIR`), `files = "DIR"` under
//! `[package.metadata.torito]` in the app's `Cargo.toml` (relative to the
//! crate), or the crate's `files/` directory. With none, the archive is
//! empty.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The environment variable naming the directory to pack.
pub const FILES_ENV: &str = "TORITO_FILES";
/// The archive's name in the build script's `OUT_DIR`.
pub const ARCHIVE: &str = "torito-files.cpio";

/// What was packed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The directory to pack for the crate at `manifest_dir`, if any.
pub fn source_dir(manifest_dir: &Path, env: Option<&str>) -> Result<Option<PathBuf>, String> {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return Ok(Some(manifest_dir.join(dir)));
    }
    let manifest = manifest_dir.join("Cargo.toml");
    if let Ok(text) = fs::read_to_string(&manifest) {
        let doc: toml::Table = text.parse().map_err(|e| format!("{}: {e}", manifest.display()))?;
        let named = doc
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("torito"))
            .and_then(|t| t.get("files"));
        match named {
            Some(toml::Value::String(dir)) => return Ok(Some(manifest_dir.join(dir))),
            Some(_) => {
                return Err(format!(
                    "{}: package.metadata.torito.files must be a string",
                    manifest.display()
                ));
            }
            None => {}
        }
    }
    let default = manifest_dir.join("files");
    Ok(default.is_dir().then_some(default))
}

/// Pack `dir` (recursively, in name order, so the archive is reproducible)
/// into a newc archive written to `out`.
pub fn pack(dir: &Path, out: impl Write) -> io::Result<Packed> {
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: not a directory", dir.display())));
    }
    let mut packed = Packed::default();
    let mut out = out;
    let mut ino = 1;
    walk(dir, "", &mut out, &mut packed, &mut ino)?;
    cpio::newc::trailer(out)?;
    Ok(packed)
}

fn walk(
    dir: &Path,
    prefix: &str,
    out: &mut impl Write,
    packed: &mut Packed,
    ino: &mut u32,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().into_string().map_err(|n| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: a name that is not UTF-8: {n:?}", dir.display()),
            )
        })?;
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let meta = fs::symlink_metadata(e.path())?;
        let builder = cpio::newc::Builder::new(&path)
            .ino(*ino)
            .mode(meta.mode())
            .mtime(meta.mtime().clamp(0, i64::from(u32::MAX)) as u32)
            .nlink(1);
        *ino += 1;
        let ft = meta.file_type();
        if ft.is_dir() {
            builder.write(&mut *out, 0).finish()?;
            walk(&e.path(), &path, out, packed, ino)?;
        } else if ft.is_file() {
            let data = fs::read(e.path())?;
            let len = u32::try_from(data.len()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: larger than 4 GiB", e.path().display()),
                )
            })?;
            let mut w = builder.write(&mut *out, len);
            w.write_all(&data)?;
            w.finish()?;
            packed.files += 1;
            packed.bytes += data.len() as u64;
        } else if ft.is_symlink() {
            let target = fs::read_link(e.path())?;
            let t = target.as_os_str().as_encoded_bytes();
            let mut w = builder.write(&mut *out, t.len() as u32);
            w.write_all(t)?;
            w.finish()?;
        }
        // Device nodes, FIFOs and sockets are left out.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_tree_in_order() {
        let dir = std::env::temp_dir().join(format!("torito-pack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("b/c")).unwrap();
        fs::write(dir.join("a.txt"), b"alpha").unwrap();
        fs::write(dir.join("b/c/d.bin"), vec![7u8; 1000]).unwrap();
        fs::write(dir.join("b/empty"), b"").unwrap();
        let mut out = Vec::new();
        let p = pack(&dir, &mut out).unwrap();
        assert_eq!(p, Packed { files: 3, bytes: 1005 });
        // Read it back with the crate's reader: names in order, contents.
        let mut names = Vec::new();
        let mut rest = &out[..];
        loop {
            let r = cpio::newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            names.push(r.entry().name().to_string());
            rest = r.finish().unwrap();
        }
        assert_eq!(names, ["a.txt", "b", "b/c", "b/c/d.bin", "b/empty"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn where_the_files_come_from() {
        let dir = std::env::temp_dir().join(format!("torito-src-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        assert_eq!(source_dir(&dir, None), Ok(None));
        fs::create_dir(dir.join("files")).unwrap();
        assert_eq!(source_dir(&dir, None), Ok(Some(dir.join("files"))));
        fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"x\"\n[package.metadata.torito]\nfiles = \"www\"\n",
        )
        .unwrap();
        assert_eq!(source_dir(&dir, None), Ok(Some(dir.join("www"))));
        assert_eq!(source_dir(&dir, Some("/srv/site")), Ok(Some(PathBuf::from("/srv/site"))));
        fs::write(dir.join("Cargo.toml"), "[package.metadata.torito]\nfiles = 3\n").unwrap();
        assert!(source_dir(&dir, None).unwrap_err().contains("must be a string"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
