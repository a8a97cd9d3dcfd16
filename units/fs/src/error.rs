//! The one error type of the filesystem unit.

use alloc::string::String;
use core::fmt;

/// What went wrong with a filesystem operation. Each has a one-line
/// [`Display`](fmt::Display).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No such file or directory.
    NotFound,
    /// The file or directory exists already.
    AlreadyExists,
    /// A component of the path (or the path itself) is not a directory.
    NotADirectory,
    /// The path names a directory where a file was expected.
    IsADirectory,
    /// The directory is not empty.
    DirectoryNotEmpty,
    /// The filesystem (or the file, as opened) refuses changes.
    ReadOnly,
    /// The source refused the operation.
    PermissionDenied,
    /// Not an absolute `/`-separated path (relative, empty, or with a NUL).
    InvalidPath,
    /// A name in the path is longer than the filesystem allows.
    NameTooLong,
    /// No space left on the filesystem.
    NoSpace,
    /// The filesystem's data is inconsistent: what was wrong.
    Corrupt(String),
    /// The device or the host failed: how.
    Io(String),
    /// The operation is not supported here: which, and why.
    Unsupported(&'static str),
    /// An argument makes no sense (std's `InvalidInput`): which.
    InvalidInput(&'static str),
}

/// The unit's result type.
pub type Result<T> = core::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("no such file or directory"),
            Self::AlreadyExists => f.write_str("file exists"),
            Self::NotADirectory => f.write_str("not a directory"),
            Self::IsADirectory => f.write_str("is a directory"),
            Self::DirectoryNotEmpty => f.write_str("directory not empty"),
            Self::ReadOnly => f.write_str("read-only filesystem"),
            Self::PermissionDenied => f.write_str("permission denied"),
            Self::InvalidPath => f.write_str("not an absolute path"),
            Self::NameTooLong => f.write_str("file name too long"),
            Self::NoSpace => f.write_str("no space left on the filesystem"),
            Self::Corrupt(what) => write!(f, "corrupt filesystem: {what}"),
            Self::Io(what) => write!(f, "I/O error: {what}"),
            Self::Unsupported(what) => write!(f, "not supported: {what}"),
            Self::InvalidInput(what) => write!(f, "invalid argument: {what}"),
        }
    }
}

impl core::error::Error for Error {}

impl embedded_io::Error for Error {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind as K;
        match self {
            Self::NotFound => K::NotFound,
            Self::AlreadyExists => K::AlreadyExists,
            Self::PermissionDenied | Self::ReadOnly => K::PermissionDenied,
            Self::InvalidPath | Self::NameTooLong | Self::InvalidInput(_) => K::InvalidInput,
            Self::Corrupt(_) => K::InvalidData,
            Self::Unsupported(_) => K::Unsupported,
            Self::NoSpace => K::OutOfMemory,
            Self::NotADirectory | Self::IsADirectory | Self::DirectoryNotEmpty | Self::Io(_) => K::Other,
        }
    }
}
