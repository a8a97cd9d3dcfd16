//! I/O for appliances: `embedded-io`'s traits, which files
//! (`kernel::fs::File`) and streams (`kernel::net::TcpStream`,
//! `VsockStream`) implement, and a [`BufReader`] for reading lines, as
//! `std::io::BufReader` does.
//!
//! ```ignore
//! use kernel::io::{BufReader, Write};
//! let mut conn = BufReader::new(listener.accept()?);
//! let mut line = String::new();
//! while conn.read_line(&mut line)? > 0 {
//!     write!(conn.get_mut(), "you said: {line}")?;
//!     line.clear();
//! }
//! ```
//!
//! Written here because `embedded-io` (0.7) has the `BufRead` trait but no
//! buffered reader to put over a `Read`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

pub use embedded_io::{BufRead, Error, ErrorKind, ErrorType, Read, ReadExactError, Seek, SeekFrom, Write};

/// Default buffer size (as std's).
const CAPACITY: usize = 8 * 1024;

/// A buffer over a reader: fewer, larger reads, and line reading.
pub struct BufReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
}

/// Why [`BufReader::read_line`] failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadLineError<E> {
    /// The reader failed.
    Read(E),
    /// The line was not UTF-8 (the bytes are consumed; `read_until` gives
    /// them raw).
    NotUtf8,
}

impl<E: fmt::Debug> fmt::Display for ReadLineError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "read failed: {e:?}"),
            Self::NotUtf8 => f.write_str("the line is not valid UTF-8"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for ReadLineError<E> {}

impl<E: Error> Error for ReadLineError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Read(e) => e.kind(),
            Self::NotUtf8 => ErrorKind::InvalidData,
        }
    }
}

impl<E> From<E> for ReadLineError<E> {
    fn from(e: E) -> Self {
        Self::Read(e)
    }
}

impl<R: Read> BufReader<R> {
    /// A reader with an 8 KiB buffer.
    pub fn new(inner: R) -> Self {
        Self::with_capacity(CAPACITY, inner)
    }

    /// A reader with a buffer of `capacity` bytes (at least 1).
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        BufReader { inner, buf: vec![0; capacity.max(1)].into_boxed_slice(), pos: 0, filled: 0 }
    }

    /// The reader beneath.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The reader beneath, e.g. to write an answer on the same stream.
    /// Reading from it directly skips what is buffered.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The reader beneath; what was buffered is lost.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// What is buffered and not yet read.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// Append bytes to `out` up to and including `byte` (or to the end of
    /// the stream); the number appended, 0 at the end.
    pub fn read_until(&mut self, byte: u8, out: &mut Vec<u8>) -> Result<usize, R::Error> {
        let mut n = 0;
        loop {
            let available = self.fill_buf()?;
            if available.is_empty() {
                return Ok(n);
            }
            match available.iter().position(|&b| b == byte) {
                Some(i) => {
                    out.extend_from_slice(&available[..=i]);
                    self.consume(i + 1);
                    return Ok(n + i + 1);
                }
                None => {
                    let len = available.len();
                    out.extend_from_slice(available);
                    self.consume(len);
                    n += len;
                }
            }
        }
    }

    /// Append a line, its `\n` included, to `out`; the number of bytes
    /// read, 0 at the end of the stream (as `std::io::BufRead::read_line`).
    pub fn read_line(&mut self, out: &mut String) -> Result<usize, ReadLineError<R::Error>> {
        let mut bytes = Vec::new();
        let n = self.read_until(b'\n', &mut bytes)?;
        let text = String::from_utf8(bytes).map_err(|_| ReadLineError::NotUtf8)?;
        out.push_str(&text);
        Ok(n)
    }

    /// The lines that remain, without their `\n` or `\r\n`.
    pub fn lines(self) -> Lines<R> {
        Lines { reader: self }
    }
}

impl<R: Read> ErrorType for BufReader<R> {
    type Error = R::Error;
}

impl<R: Read> Read for BufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize, R::Error> {
        // A read as large as the buffer skips it.
        if self.pos == self.filled && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for BufReader<R> {
    fn fill_buf(&mut self) -> Result<&[u8], R::Error> {
        if self.pos == self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.filled);
    }
}

/// The lines of a [`BufReader`] ([`BufReader::lines`]).
pub struct Lines<R> {
    reader: BufReader<R>,
}

impl<R: Read> Iterator for Lines<R> {
    type Item = Result<String, ReadLineError<R::Error>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with('\n') {
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives at most `step` bytes per read, as a socket does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl ErrorType for Trickle<'_> {
        type Error = core::convert::Infallible;
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn lines_come_whole_however_the_bytes_arrive() {
        let text = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nlast line without newline";
        for step in [1, 3, 7, 100] {
            for cap in [1, 4, 8192] {
                let r = BufReader::with_capacity(cap, Trickle { data: text, step });
                let lines: Vec<String> = r.lines().map(Result::unwrap).collect();
                assert_eq!(
                    lines,
                    ["GET / HTTP/1.1", "Host: x", "", "last line without newline"],
                    "{step} {cap}"
                );
            }
        }
    }

    #[test]
    fn read_line_keeps_the_newline_and_says_0_at_the_end() {
        let mut r = BufReader::new(Trickle { data: b"a\nbc\n", step: 2 });
        let mut s = String::new();
        assert_eq!(r.read_line(&mut s), Ok(2));
        assert_eq!(r.read_line(&mut s), Ok(3));
        assert_eq!(s, "a\nbc\n");
        assert_eq!(r.read_line(&mut s), Ok(0));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_an_error_not_a_panic() {
        let mut r = BufReader::new(Trickle { data: b"\xff\xfe\nok\n", step: 64 });
        let mut s = String::new();
        assert_eq!(r.read_line(&mut s), Err(ReadLineError::NotUtf8));
        assert_eq!(r.read_line(&mut s), Ok(3));
        assert_eq!(s, "ok\n");
    }

    #[test]
    fn reads_mix_with_buffered_lines() {
        let mut r = BufReader::with_capacity(4, Trickle { data: b"hi\n0123456789", step: 5 });
        let mut line = Vec::new();
        assert_eq!(r.read_until(b'\n', &mut line), Ok(3));
        let mut rest = [0u8; 10];
        r.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"0123456789");
        assert_eq!(r.read(&mut rest), Ok(0));
    }
}
