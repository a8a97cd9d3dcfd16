//! RESP2, the Redis protocol: requests (arrays of bulk strings, and the
//! inline form a person types into `nc`) and the reply writers.
//!
//! The parser is resumable: it takes bytes as they come, keeps the
//! arguments it has completed, and says how many bytes it used, so a
//! request arriving in many pieces is scanned once (a hostile client
//! announcing a million arguments and sending them slowly costs linear
//! time, not quadratic). Nothing is allocated ahead on a client's word: a
//! bulk's buffer is reserved only once its length passed the limits.

use alloc::vec::Vec;
use core::fmt;

/// What a request may announce.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string; beyond it the request is refused before its
    /// bytes are read ([`ProtoError::TooBig`]).
    pub max_bulk: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline request and longest `*`/`$` header line.
    pub max_line: usize,
}

/// Redis's own limits: 512 MiB per bulk (`proto-max-bulk-len`), 1M
/// arguments, 64 KiB inline.
pub const REDIS_MAX_BULK: usize = 512 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self { max_bulk: REDIS_MAX_BULK, max_args: 1 << 20, max_line: 64 << 10 }
    }
}

/// A request that cannot be parsed; the connection cannot go on after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// `*` followed by something that is not a count in range.
    MultibulkLength,
    /// `$` followed by something that is not a length in range.
    BulkLength,
    /// An array element that is not a bulk string.
    ExpectedDollar(u8),
    /// A bulk string not followed by CRLF.
    ExpectedCrlf,
    /// An inline request or header line longer than the limit.
    LineTooLong,
    /// A bulk string longer than [`Limits::max_bulk`] (its length).
    TooBig(usize),
    /// An inline request with an unbalanced quote.
    UnbalancedQuotes,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MultibulkLength => f.write_str("Protocol error: invalid multibulk length"),
            Self::BulkLength => f.write_str("Protocol error: invalid bulk length"),
            Self::ExpectedDollar(b) => write!(f, "Protocol error: expected '$', got '{}'", char::from(*b)),
            Self::ExpectedCrlf => f.write_str("Protocol error: expected CRLF after a bulk string"),
            Self::LineTooLong => f.write_str("Protocol error: too big inline request"),
            Self::TooBig(n) => write!(f, "Protocol error: a bulk string of {n} bytes is beyond the limit"),
            Self::UnbalancedQuotes => f.write_str("Protocol error: unbalanced quotes in request"),
        }
    }
}

/// One request's arguments.
pub type Args = Vec<Vec<u8>>;

/// A resumable request parser.
#[derive(Default)]
pub struct Parser {
    /// Arguments still to come in the array being read (0: between requests).
    left: usize,
    /// The length of the bulk being read, once its header was read.
    bulk: Option<usize>,
    args: Args,
}

impl Parser {
    /// Whether the parser is between requests.
    pub fn idle(&self) -> bool {
        self.left == 0 && self.bulk.is_none()
    }

    /// Bytes the bulk being read still needs beyond `have` (a hint for the
    /// reader's buffer).
    pub fn wants(&self, have: usize) -> usize {
        self.bulk.map_or(0, |n| (n + 2).saturating_sub(have))
    }

    /// Parse from `buf`: the bytes used and, when one was completed, a
    /// request (possibly empty: a blank line or `*0`, to be ignored). Call
    /// again with the rest until it uses nothing.
    pub fn feed(&mut self, buf: &[u8], lim: &Limits) -> Result<(usize, Option<Args>), ProtoError> {
        let mut at = 0;
        if self.idle() {
            let Some(&first) = buf.first() else { return Ok((0, None)) };
            if first != b'*' {
                return inline(buf, lim);
            }
            let Some((n, used)) = header(buf, b'*', lim)? else { return Ok((0, None)) };
            at = used;
            let n = n.map_err(|_| ProtoError::MultibulkLength)?;
            if n <= 0 {
                return Ok((at, Some(Vec::new())));
            }
            if n as u64 > lim.max_args as u64 {
                return Err(ProtoError::MultibulkLength);
            }
            self.left = n as usize;
            self.args = Vec::with_capacity(self.left.min(64));
        }
        while self.left > 0 {
            let rest = &buf[at..];
            let len = match self.bulk {
                Some(len) => len,
                None => {
                    let Some(&first) = rest.first() else { break };
                    if first != b'$' {
                        return Err(ProtoError::ExpectedDollar(first));
                    }
                    let Some((n, used)) = header(rest, b'$', lim)? else { break };
                    let n = n.map_err(|_| ProtoError::BulkLength)?;
                    if n < 0 || n as u64 > REDIS_MAX_BULK as u64 {
                        return Err(ProtoError::BulkLength);
                    }
                    if n as u64 > lim.max_bulk as u64 {
                        return Err(ProtoError::TooBig(n as usize));
                    }
                    at += used;
                    self.bulk = Some(n as usize);
                    n as usize
                }
            };
            let rest = &buf[at..];
            if rest.len() < len + 2 {
                break;
            }
            if &rest[len..len + 2] != b"\r\n" {
                return Err(ProtoError::ExpectedCrlf);
            }
            self.args.push(rest[..len].to_vec());
            at += len + 2;
            self.bulk = None;
            self.left -= 1;
        }
        if self.left == 0 {
            return Ok((at, Some(core::mem::take(&mut self.args))));
        }
        Ok((at, None))
    }
}

/// A `*N` or `$N` line: the number (or a parse failure) and the bytes used;
/// `None` while the line is incomplete.
type Header = Option<(Result<i64, ()>, usize)>;

fn header(buf: &[u8], mark: u8, lim: &Limits) -> Result<Header, ProtoError> {
    debug_assert_eq!(buf.first(), Some(&mark));
    let Some(nl) = buf.iter().take(lim.max_line).position(|&b| b == b'\n') else {
        return if buf.len() >= lim.max_line { Err(ProtoError::LineTooLong) } else { Ok(None) };
    };
    let line = &buf[1..nl];
    let Some(digits) = line.strip_suffix(b"\r") else { return Ok(Some((Err(()), nl + 1))) };
    Ok(Some((number(digits).ok_or(()), nl + 1)))
}

/// A decimal integer as Redis writes them (optional `-`, no `+`, no spaces).
pub fn number(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg { v.checked_sub(d)? } else { v.checked_add(d)? };
    }
    Some(v)
}

/// An inline request: words separated by blanks, `"..."` and `'...'`
/// quoting (with `\n`-style escapes in double quotes), as `redis-cli`'s
/// own splitting does.
fn inline(buf: &[u8], lim: &Limits) -> Result<(usize, Option<Args>), ProtoError> {
    let Some(nl) = buf.iter().take(lim.max_line).position(|&b| b == b'\n') else {
        return if buf.len() >= lim.max_line { Err(ProtoError::LineTooLong) } else { Ok((0, None)) };
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    Ok((nl + 1, Some(split_words(line)?)))
}

fn split_words(line: &[u8]) -> Result<Args, ProtoError> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else { return Err(ProtoError::UnbalancedQuotes) };
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && q == b'"' {
                        let Some(&e) = line.get(i) else { return Err(ProtoError::UnbalancedQuotes) };
                        i += 1;
                        word.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'0' => 0,
                            other => other,
                        });
                    } else {
                        word.push(c);
                    }
                }
                // A closing quote must end the word.
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(ProtoError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// `+text`.
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `+OK`.
pub fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// `-ERR text` (or another prefix when `s` starts with one, e.g. `OOM`).
pub fn error(out: &mut Vec<u8>, s: &str) {
    out.push(b'-');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `:n`.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_num(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$len\r\nbytes`.
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    push_num(out, b.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `$-1`, the null bulk string.
pub fn nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*n`, the head of an array of `n` replies.
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_num(out, n as i64);
    out.extend_from_slice(b"\r\n");
}

/// A request as RESP (the append-only file's record format).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array(out, args.len());
    for a in args {
        bulk(out, a);
    }
}

/// The decimal digits of `n`.
pub fn push_num(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}
