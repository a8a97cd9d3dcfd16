//! A filesystem in memory, for the facade's tests: every operation, with
//! POSIX's errors.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::lock::Mutex;
use crate::path::FsPath;
use crate::vfs::{Entry, FileHandle, FileSystem, FileType, Metadata, OpenFlags};

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// The filesystem.
#[derive(Clone, Default)]
pub struct MemFs {
    nodes: Arc<Mutex<BTreeMap<FsPath, Node>>>,
}

impl MemFs {
    /// An empty one.
    pub fn new() -> Self {
        let fs = Self::default();
        fs.nodes.lock().insert(FsPath::root(), Node::Dir);
        fs
    }

    fn parent_is_dir(nodes: &BTreeMap<FsPath, Node>, path: &FsPath) -> Result<()> {
        let (dir, _) = path.split_last().ok_or(Error::AlreadyExists)?;
        match nodes.get(&dir) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err(Error::NotADirectory),
            None => Err(Error::NotFound),
        }
    }
}

struct Handle {
    fs: MemFs,
    path: FsPath,
}

impl Handle {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> Result<T> {
        match self.fs.nodes.lock().get_mut(&self.path) {
            Some(Node::File(d)) => Ok(f(d)),
            _ => Err(Error::NotFound),
        }
    }
}

impl FileHandle for Handle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.with(|d| {
            let start = (offset as usize).min(d.len());
            let n = buf.len().min(d.len() - start);
            buf[..n].copy_from_slice(&d[start..start + n]);
            n
        })
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<usize> {
        self.with(|d| {
            let end = offset as usize + buf.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[offset as usize..end].copy_from_slice(buf);
            buf.len()
        })
    }
    fn metadata(&mut self) -> Result<Metadata> {
        let len = self.with(|d| d.len() as u64)?;
        Ok(Metadata { file_type: FileType::File, len, modified: None, read_only: false })
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        self.with(|d| d.resize(len as usize, 0))
    }
}

impl FileSystem for MemFs {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn read_only(&self) -> bool {
        false
    }
    fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        let nodes = self.nodes.lock();
        let (file_type, len) = match nodes.get(path).ok_or(Error::NotFound)? {
            Node::Dir => (FileType::Dir, 0),
            Node::File(d) => (FileType::File, d.len() as u64),
        };
        Ok(Metadata { file_type, len, modified: None, read_only: false })
    }
    fn open(&self, path: &FsPath, flags: OpenFlags) -> Result<Box<dyn FileHandle>> {
        let mut nodes = self.nodes.lock();
        match nodes.get_mut(path) {
            Some(Node::Dir) => return Err(Error::IsADirectory),
            Some(Node::File(_)) if flags.create_new => return Err(Error::AlreadyExists),
            Some(Node::File(d)) => {
                if flags.truncate {
                    d.clear();
                }
            }
            None if flags.create => {
                Self::parent_is_dir(&nodes, path)?;
                nodes.insert(path.clone(), Node::File(Vec::new()));
            }
            None => return Err(Error::NotFound),
        }
        Ok(Box::new(Handle { fs: self.clone(), path: path.clone() }))
    }
    fn read_dir(&self, path: &FsPath) -> Result<Vec<Entry>> {
        let nodes = self.nodes.lock();
        match nodes.get(path) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => return Err(Error::NotADirectory),
            None => return Err(Error::NotFound),
        }
        Ok(nodes
            .iter()
            .filter_map(|(p, n)| {
                let (dir, name) = p.split_last()?;
                (dir == *path).then(|| Entry {
                    name: name.into(),
                    file_type: if matches!(n, Node::Dir) { FileType::Dir } else { FileType::File },
                })
            })
            .collect())
    }
    fn create_dir(&self, path: &FsPath) -> Result<()> {
        let mut nodes = self.nodes.lock();
        if nodes.contains_key(path) {
            return Err(Error::AlreadyExists);
        }
        Self::parent_is_dir(&nodes, path)?;
        nodes.insert(path.clone(), Node::Dir);
        Ok(())
    }
    fn remove_file(&self, path: &FsPath) -> Result<()> {
        let mut nodes = self.nodes.lock();
        match nodes.get(path) {
            Some(Node::File(_)) => {
                nodes.remove(path);
                Ok(())
            }
            Some(Node::Dir) => Err(Error::IsADirectory),
            None => Err(Error::NotFound),
        }
    }
    fn remove_dir(&self, path: &FsPath) -> Result<()> {
        let mut nodes = self.nodes.lock();
        match nodes.get(path) {
            Some(Node::Dir) if nodes.keys().any(|p| p != path && p.starts_with(path)) => {
                Err(Error::DirectoryNotEmpty)
            }
            Some(Node::Dir) => {
                nodes.remove(path);
                Ok(())
            }
            Some(Node::File(_)) => Err(Error::NotADirectory),
            None => Err(Error::NotFound),
        }
    }
    fn rename(&self, from: &FsPath, to: &FsPath) -> Result<()> {
        let mut nodes = self.nodes.lock();
        let node = nodes.get(from).cloned().ok_or(Error::NotFound)?;
        Self::parent_is_dir(&nodes, to)?;
        match (nodes.get(to), &node) {
            (Some(Node::Dir), Node::File(_)) => return Err(Error::IsADirectory),
            (Some(Node::File(_)), Node::Dir) => return Err(Error::NotADirectory),
            _ => {}
        }
        let moved: Vec<FsPath> = nodes.keys().filter(|p| p.starts_with(from)).cloned().collect();
        for p in moved {
            let n = nodes.remove(&p).unwrap_or(Node::Dir);
            let rest = &p.as_str()[from.as_str().len()..];
            let new = FsPath::new(&alloc::format!("{}{rest}", to.as_str())).unwrap_or_else(|_| to.clone());
            nodes.insert(new, n);
        }
        Ok(())
    }
}
