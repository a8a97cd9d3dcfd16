//! Paths: absolute, `/`-separated, resolved lexically. `.` is dropped; `..`
//! goes up one level but never above the root of the mount it is in (so a
//! path can never leave a mount by `..`, and `/..` is `/`). What a
//! filesystem sees is an [`FsPath`]: the components below its mount point.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};

/// Longest name of one component, in bytes (what ext4, FAT and FUSE allow).
pub const NAME_MAX: usize = 255;

/// A path inside one filesystem: its components joined by `/`, without a
/// leading `/`; the empty path is the filesystem's root.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FsPath(String);

impl FsPath {
    /// The filesystem's root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// A path from components already checked.
    fn from_components<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut s = String::new();
        for p in parts {
            if !s.is_empty() {
                s.push('/');
            }
            s.push_str(p);
        }
        Self(s)
    }

    /// Parse a path relative to a filesystem's root (`a/b`, no `.`/`..`),
    /// as a filesystem's own code or a test writes it.
    pub fn new(s: &str) -> Result<Self> {
        let mut parts = Vec::new();
        for c in s.split('/').filter(|c| !c.is_empty()) {
            check_name(c)?;
            if c == "." || c == ".." {
                return Err(Error::InvalidPath);
            }
            parts.push(c);
        }
        Ok(Self::from_components(parts))
    }

    /// The path as `a/b/c` (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the filesystem's root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Its components, from the root down.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The directory holding it and its last name (`None` for the root).
    pub fn split_last(&self) -> Option<(FsPath, &str)> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((dir, name)) => (FsPath(String::from(dir)), name),
            None => (FsPath::root(), self.0.as_str()),
        })
    }

    /// Its last name (empty for the root).
    pub fn name(&self) -> &str {
        self.split_last().map_or("", |(_, n)| n)
    }

    /// `self/name`.
    pub fn join(&self, name: &str) -> FsPath {
        if self.is_root() { FsPath(String::from(name)) } else { FsPath(alloc::format!("{}/{name}", self.0)) }
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &FsPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(other.0.as_str()) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl core::fmt::Display for FsPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// Check one name: not empty, no `/` or NUL, at most [`NAME_MAX`] bytes.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\0']) {
        return Err(Error::InvalidPath);
    }
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    Ok(())
}

/// Resolve the absolute `path` against the mount points `mounts` (each a
/// list of components; `[]` is `/`): which mount holds it (the longest
/// prefix) and the path inside that mount.
pub fn resolve(path: &str, mounts: &[Vec<String>]) -> Result<(usize, FsPath)> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Error::InvalidPath);
    }
    let mut stack: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                // Up one level, unless that would leave the mount the path
                // is in (its root is a mount point).
                let at_mount_root =
                    mounts.iter().any(|m| m.len() == stack.len() && m.iter().eq(stack.iter()));
                if !at_mount_root {
                    stack.pop();
                }
            }
            name => {
                check_name(name)?;
                stack.push(name);
            }
        }
    }
    let (index, mount) = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.len() <= stack.len() && m.iter().zip(&stack).all(|(a, b)| a == b))
        .max_by_key(|(_, m)| m.len())
        .ok_or(Error::NotFound)?;
    Ok((index, FsPath::from_components(stack[mount.len()..].iter().copied())))
}

/// The components of a mount point such as `/disk0` or `/` (checked).
pub fn mount_components(point: &str) -> Result<Vec<String>> {
    if !point.starts_with('/') {
        return Err(Error::InvalidPath);
    }
    point
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| {
            check_name(c)?;
            if c == "." || c == ".." { Err(Error::InvalidPath) } else { Ok(String::from(c)) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn mounts() -> Vec<Vec<String>> {
        vec![vec![], vec!["disk0".into()], vec!["www".into()], vec!["www".into(), "img".into()]]
    }

    fn r(p: &str) -> Result<(usize, String)> {
        resolve(p, &mounts()).map(|(i, p)| (i, String::from(p.as_str())))
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(r("/a/b"), Ok((0, "a/b".into())));
        assert_eq!(r("/disk0"), Ok((1, "".into())));
        assert_eq!(r("/disk0/x/y.txt"), Ok((1, "x/y.txt".into())));
        assert_eq!(r("/www/img/logo.png"), Ok((3, "logo.png".into())));
        assert_eq!(r("/www/index.html"), Ok((2, "index.html".into())));
        assert_eq!(r("/disk01/x"), Ok((0, "disk01/x".into())), "a prefix by component, not by byte");
    }

    #[test]
    fn dots_resolve_lexically_and_never_leave_a_mount() {
        assert_eq!(r("/a/./b/../c//"), Ok((0, "a/c".into())));
        assert_eq!(r("/.."), Ok((0, "".into())));
        assert_eq!(r("/../../etc"), Ok((0, "etc".into())));
        assert_eq!(r("/disk0/.."), Ok((1, "".into())));
        assert_eq!(r("/disk0/a/../../../b"), Ok((1, "b".into())));
        assert_eq!(r("/www/img/../x"), Ok((3, "x".into())));
    }

    #[test]
    fn bad_paths() {
        assert_eq!(r("a/b"), Err(Error::InvalidPath));
        assert_eq!(r(""), Err(Error::InvalidPath));
        assert_eq!(r("/a\0b"), Err(Error::InvalidPath));
        let long = alloc::format!("/{}", "x".repeat(256));
        assert_eq!(r(&long), Err(Error::NameTooLong));
        assert!(r(&alloc::format!("/{}", "x".repeat(255))).is_ok());
        assert_eq!(resolve("/a", &[vec!["b".into()]]), Err(Error::NotFound), "no mount at /");
    }

    #[test]
    fn fs_paths() {
        let p = FsPath::new("a/b/c").unwrap();
        assert_eq!(p.split_last(), Some((FsPath::new("a/b").unwrap(), "c")));
        assert_eq!(FsPath::new("c").unwrap().split_last(), Some((FsPath::root(), "c")));
        assert_eq!(FsPath::root().split_last(), None);
        assert_eq!(FsPath::root().join("x").join("y").as_str(), "x/y");
        assert!(p.starts_with(&FsPath::new("a").unwrap()));
        assert!(!FsPath::new("ab").unwrap().starts_with(&FsPath::new("a").unwrap()));
        assert!(p.starts_with(&FsPath::root()));
        assert_eq!(FsPath::new("a/../b"), Err(Error::InvalidPath));
        assert_eq!(alloc::format!("{p}"), "/a/b/c");
        assert_eq!(mount_components("/disk0").unwrap(), vec![String::from("disk0")]);
        assert!(mount_components("/").unwrap().is_empty());
        assert!(mount_components("x").is_err());
    }
}
