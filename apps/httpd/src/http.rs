//! The HTTP pieces httpd needs besides `httparse`: a request as owned
//! data, request targets turned into paths that cannot leave the root,
//! HTTP dates, byte ranges, content types and response heads.
//!
//! Written here: `httparse` parses the request head and nothing more, and
//! the no_std crates for dates and MIME types pull in far more than the
//! few dozen lines these take.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The status lines httpd sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A parsed request head, owned (the read buffer moves on).
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// 0: HTTP/1.0, 1: HTTP/1.1.
    pub minor: u8,
    pub connection_close: bool,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub range: Option<String>,
    /// A body's length (`Content-Length`), or `None`.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` was given (a body of unknown length).
    pub chunked: bool,
    /// Bytes of the head.
    pub head_len: usize,
}

/// Why a head could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Malformed: 400.
    Malformed,
    /// An HTTP version other than 1.0 or 1.1: 505.
    Version,
    /// Too many header fields: 431.
    TooManyHeaders,
}

/// Parse the head at the start of `buf`: `Ok(None)` while it is not whole.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, Bad> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        // "HTTP/2.0" is a version httpd does not speak (505); anything
        // not shaped like a version is a malformed line (400).
        Err(httparse::Error::Version) => {
            let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let version = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
            return Err(if version.starts_with(b"HTTP/") { Bad::Version } else { Bad::Malformed });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Bad::TooManyHeaders),
        Err(_) => return Err(Bad::Malformed),
    };
    let mut r = Request {
        method: String::from(req.method.unwrap_or("")),
        target: String::from(req.path.unwrap_or("")),
        minor: req.version.unwrap_or(1),
        head_len: n,
        ..Default::default()
    };
    for h in req.headers.iter() {
        let value = core::str::from_utf8(h.value).map_err(|_| Bad::Malformed)?.trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            r.connection_close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if name.eq_ignore_ascii_case("if-none-match") {
            r.if_none_match = Some(String::from(value));
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            r.if_modified_since = Some(String::from(value));
        } else if name.eq_ignore_ascii_case("range") {
            r.range = Some(String::from(value));
        } else if name.eq_ignore_ascii_case("content-length") {
            let len = value.parse().map_err(|_| Bad::Malformed)?;
            if r.content_length.is_some_and(|l| l != len) {
                return Err(Bad::Malformed);
            }
            r.content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            r.chunked = true;
        }
    }
    Ok(Some(r))
}

/// Whether the head at the start of `buf` has no complete request line
/// yet within `limit` bytes (a target too long: 414).
pub fn line_too_long(buf: &[u8], limit: usize) -> bool {
    !buf[..buf.len().min(limit)].contains(&b'\n') && buf.len() >= limit
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The path a request target names under the root, as `/a/b` (`/` for the
/// root itself), with whether it ended in `/`. `None`: not servable — not
/// an absolute path, a bad or NUL percent-escape, not UTF-8, or a `..`
/// that would climb (even once: nothing above a segment is asked for).
pub fn target_path(target: &str) -> Option<(String, bool)> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return None;
    }
    let mut bytes = Vec::with_capacity(path.len());
    let mut it = path.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let v = hex(it.next()?)? << 4 | hex(it.next()?)?;
            bytes.push(v);
        } else {
            bytes.push(b);
        }
    }
    if bytes.contains(&0) {
        return None;
    }
    let decoded = String::from_utf8(bytes).ok()?;
    let mut parts: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.contains('\\') => return None,
            s => parts.push(s),
        }
    }
    let dir = decoded.ends_with('/');
    Some((format!("/{}", parts.join("/")), dir))
}

/// A byte range of a file of `len` bytes, from one `Range` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    /// Bytes `start..=end`.
    Bytes(u64, u64),
    /// A range of the form httpd serves, but none of it in the file: 416.
    Unsatisfiable,
    /// Not a single byte range httpd understands: the whole file, 200.
    Ignore,
}

/// What `bytes=a-b`, `bytes=a-` or `bytes=-n` asks of a file of `len`.
pub fn range(header: &str, len: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Range::Ignore };
    if spec.contains(',') {
        return Range::Ignore; // several ranges: the whole file is a valid answer
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Ignore };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| if s.bytes().all(|c| c.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Range::Ignore,
        (true, false) => match num(b) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if len == 0 => Range::Unsatisfiable,
            Some(n) => Range::Bytes(len.saturating_sub(n), len - 1),
            None => Range::Ignore,
        },
        (false, _) => {
            let Some(start) = num(a) else { return Range::Ignore };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                match num(b) {
                    Some(e) if e >= start => Some(e),
                    _ => None,
                }
            };
            match end {
                None => Range::Ignore,
                Some(_) if start >= len => Range::Unsatisfiable,
                Some(e) => Range::Bytes(start, e.min(len - 1)),
            }
        }
    }
}

/// The media type of a file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let lower = |s: &str| s.eq_ignore_ascii_case(ext);
    const TYPES: &[(&str, &str)] = &[
        ("html", "text/html; charset=utf-8"),
        ("htm", "text/html; charset=utf-8"),
        ("css", "text/css; charset=utf-8"),
        ("js", "text/javascript; charset=utf-8"),
        ("mjs", "text/javascript; charset=utf-8"),
        ("json", "application/json"),
        ("txt", "text/plain; charset=utf-8"),
        ("md", "text/markdown; charset=utf-8"),
        ("xml", "application/xml"),
        ("svg", "image/svg+xml"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("gif", "image/gif"),
        ("webp", "image/webp"),
        ("ico", "image/x-icon"),
        ("wasm", "application/wasm"),
        ("pdf", "application/pdf"),
        ("woff", "font/woff"),
        ("woff2", "font/woff2"),
        ("mp4", "video/mp4"),
        ("webm", "video/webm"),
        ("zip", "application/zip"),
        ("gz", "application/gzip"),
    ];
    TYPES.iter().find(|(e, _)| lower(e)).map_or("application/octet-stream", |(_, t)| t)
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// (year, month 1–12, day) of day `days` since 1970-01-01 (the civil
/// calendar from a day count, as in Hinnant's "chrono-compatible
/// low-level date algorithms").
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An HTTP date (IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let (y, m, d) = civil(days);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[m as usize - 1],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Seconds since the epoch of an IMF-fixdate (names in any case); `None`
/// for other forms (which a server may ignore).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace();
    let _day = it.next()?;
    let d: u32 = it.next()?.parse().ok()?;
    let mon = it.next()?;
    let m = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(mon))? as u32 + 1;
    let y: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    if !it.next()?.eq_ignore_ascii_case("GMT")
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
        || y < 1970
    {
        return None;
    }
    Some(days_from_civil(y, m, d) as u64 * 86_400 + h * 3600 + mi * 60 + se)
}

/// The entity tag of a file: its length and modification time.
pub fn etag(len: u64, modified: Option<u64>) -> String {
    format!("\"{len:x}-{:x}\"", modified.unwrap_or(0))
}

/// Whether an `If-None-Match` list matches `tag` (weak comparison).
pub fn none_match(header: &str, tag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}
