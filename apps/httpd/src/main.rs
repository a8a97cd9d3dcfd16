//! httpd: a static web server appliance (Toro's StaticWebServer, grown
//! up): HTTP/1.1 GET and HEAD over the files of the filesystem unit.
//!
//! Command line (all optional):
//! - `root=/www`: the directory served (a `--share` tag, `/disk0`, or `/`,
//!   the files baked into the ELF; default `/`).
//! - `port=80`, `torito.ip=ADDR/PREFIX` (else DHCP).
//! - `vsock=PORT`: serve over vsock instead (no IP network needed; the
//!   host connects through the hypervisor's vsock socket).
//! - `max_conns=256`: connections served at once; more are answered 503
//!   and closed. `backlog=128`: connections the stack accepts ahead.
//! - `defer=1`: seconds a connection may wait for its request's first
//!   bytes before it is taken anyway (nginx's `listen … deferred`: a
//!   thread of its own is made only then, and connections opened ahead
//!   and left idle do not hold up one whose request came); `defer=0`
//!   takes each at once.
//! - `header_max=8192`: bytes of a request head (431 beyond, 414 for a
//!   request line that long).
//! - `header_timeout=5`: seconds a client has to send a whole request head
//!   once it started one (a client trickling headers is closed: 408).
//! - `idle=15`: seconds a kept-alive connection may wait for its next
//!   request.
//! - `log=1`: an access line per request on the console.
//! - `status=/PATH`: answer GET of PATH with a few figures in plain text,
//!   like nginx's stub_status (connections open, requests answered, guest
//!   heap in use); off by default.
//! - `requests=N`: stop the appliance (exit 0) once N responses were sent
//!   (0, the default: serve for ever); for measuring a whole run.
//!
//! Keep-alive and pipelined requests are answered in order; HTTP/1.0
//! clients are answered and closed. Responses carry `Content-Length`,
//! `Content-Type`, `Last-Modified` and `ETag`; `If-None-Match` and
//! `If-Modified-Since` give 304; one byte range gives 206 (416 when it
//! lies past the end). A directory is served by its `index.html` (a
//! request for it without the final `/` is redirected, 301). No path
//! leaves the root: `..` (also as `%2e%2e`), NUL and bad escapes are 400.
//! Files are sent in pieces, never read whole.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

mod conn;
mod http;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use conn::Conn;
use kernel::fs::{self, io::Read, io::Seek};
use kernel::net::tcp::TcpListener;
use kernel::net::vsock::VsockListener;
use kernel::println;

kernel::entry!(main);

/// What the command line set.
struct Config {
    root: String,
    max_conns: usize,
    header_max: usize,
    header_timeout: Duration,
    idle: Duration,
    log: bool,
    requests: u64,
    status: Option<String>,
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Responses sent (for `requests=N`).
static SERVED: AtomicU64 = AtomicU64::new(0);
/// Bytes sent per write while streaming a file.
const PIECE: usize = 64 * 1024;

fn arg(name: &str) -> Option<&'static str> {
    kernel::args().find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> i32 {
    let root = String::from(arg("root").unwrap_or("/").trim_end_matches('/'));
    let cfg: &'static Config = alloc::boxed::Box::leak(alloc::boxed::Box::new(Config {
        root,
        max_conns: num("max_conns", 256).max(1) as usize,
        header_max: num("header_max", 8192).clamp(256, 1 << 20) as usize,
        header_timeout: Duration::from_secs(num("header_timeout", 5).max(1)),
        idle: Duration::from_secs(num("idle", 15).max(1)),
        log: arg("log") == Some("1"),
        requests: num("requests", 0),
        status: arg("status").filter(|p| p.starts_with('/')).map(String::from),
    }));
    let shown = if cfg.root.is_empty() { "/" } else { cfg.root.as_str() };
    match fs::metadata(shown) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            println!("httpd: root={shown} is not a directory");
            return 1;
        }
        Err(e) => {
            println!("httpd: root={shown}: {e}");
            return 1;
        }
    }
    if let Some(port) = arg("vsock") {
        let Ok(port) = port.parse::<u32>() else {
            println!("httpd: vsock={port}: not a port number");
            return 1;
        };
        let mut listener = match VsockListener::bind(port) {
            Ok(l) => l,
            Err(e) => {
                println!("httpd: cannot listen on vsock port {port}: {e}");
                return 1;
            }
        };
        println!("httpd: serving {shown} on vsock port {port}");
        return serve_all(|| listener.accept(), cfg);
    }
    if !kernel::args().any(|a| a.starts_with("torito.ip=")) {
        match kernel::net::wait_for_address(Duration::from_secs(10)) {
            Ok(a) => {
                let [x, y, z, w] = a.ip;
                println!("httpd: address {x}.{y}.{z}.{w}/{} from DHCP", a.prefix);
            }
            Err(e) => {
                println!("httpd: no address from DHCP: {e}");
                return 1;
            }
        }
    }
    let port = num("port", 80) as u16;
    let backlog = num("backlog", 128).clamp(1, 4096) as usize;
    let mut listener = match TcpListener::bind_with_backlog(port, backlog) {
        Ok(l) => l,
        Err(e) => {
            println!("httpd: cannot listen on port {port}: {e}");
            return 1;
        }
    };
    let defer = num("defer", 1);
    if let Err(e) = listener.set_defer_accept((defer > 0).then(|| Duration::from_secs(defer))) {
        println!("httpd: defer={defer}: {e}");
        return 1;
    }
    println!("httpd: serving {shown} on port {port}");
    serve_all(|| listener.accept(), cfg)
}

/// Take each connection `accept` gives and serve it on a thread of its own
/// (503 beyond `max_conns`); returns when accepting fails.
fn serve_all<C: Conn>(
    mut accept: impl FnMut() -> Result<C, kernel::net::Error>,
    cfg: &'static Config,
) -> i32 {
    loop {
        match accept() {
            Ok(mut s) => {
                if ACTIVE.fetch_add(1, Ordering::Relaxed) >= cfg.max_conns {
                    ACTIVE.fetch_sub(1, Ordering::Relaxed);
                    let _ = s.write_all(&head(503, "text/plain", 0, &[], true));
                    let _ = s.shutdown();
                    continue;
                }
                kernel::process::spawn(move || {
                    serve(s, cfg);
                    ACTIVE.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                println!("httpd: accept: {e}");
                return 1;
            }
        }
    }
}

/// A response head.
fn head(status: u16, ctype: &str, len: u64, extra: &[(&str, String)], close: bool) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} {}\r\nServer: torito-httpd\r\n", http::reason(status));
    if let Some(now) = kernel::process::clock::wall_clock_ns() {
        h.push_str(&format!("Date: {}\r\n", http::http_date(now / 1_000_000_000)));
    }
    if status != 304 {
        h.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {len}\r\n"));
    }
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// An error response with a short text body.
fn error(s: &mut impl Conn, status: u16, extra: &[(&str, String)], close: bool, with_body: bool) -> bool {
    let body = format!("{status} {}\n", http::reason(status));
    let mut out = head(status, "text/plain; charset=utf-8", body.len() as u64, extra, close);
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out).is_ok()
}

/// Monotonic nanoseconds (0 where there is no clock).
fn now_ns() -> u64 {
    kernel::process::clock::now_ns().unwrap_or(0)
}

/// Serve one connection: requests in order until it closes, errs, idles
/// out or asks to close.
fn serve(mut s: impl Conn, cfg: &Config) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read until a whole head is there: the first byte within `idle`,
        // the rest within `header_timeout` of the first.
        let mut started = (!buf.is_empty()).then(now_ns);
        let req = loop {
            match http::parse(&buf) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(bad) => {
                    let status = match bad {
                        http::Bad::Version => 505,
                        http::Bad::TooManyHeaders => 431,
                        http::Bad::Malformed => 400,
                    };
                    let _ = error(&mut s, status, &[], true, true);
                    return finish(s);
                }
            }
            if buf.len() >= cfg.header_max {
                let status = if http::line_too_long(&buf, cfg.header_max) { 414 } else { 431 };
                let _ = error(&mut s, status, &[], true, true);
                return finish(s);
            }
            let left = match started {
                None => cfg.idle,
                Some(t) => {
                    let spent = Duration::from_nanos(now_ns().saturating_sub(t));
                    match cfg.header_timeout.checked_sub(spent) {
                        Some(l) if !l.is_zero() => l,
                        _ => {
                            let _ = error(&mut s, 408, &[], true, true);
                            return finish(s);
                        }
                    }
                }
            };
            s.set_read_timeout(Some(left));
            let room = (cfg.header_max - buf.len()).min(chunk.len());
            match s.read(&mut chunk[..room]) {
                Ok(0) => return finish(s),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    started.get_or_insert_with(now_ns);
                }
                Err(kernel::net::Error::TimedOut) if started.is_some() => {
                    let _ = error(&mut s, 408, &[], true, true);
                    return finish(s);
                }
                Err(_) => return finish(s),
            }
        };
        buf.drain(..req.head_len);
        // A body (GET and HEAD have none worth reading): skipped when it
        // is small and whole, else the connection cannot go on.
        // HTTP/1.0 is answered and closed (keep-alive or not).
        let close = req.minor == 0 || req.connection_close;
        if req.chunked {
            let _ = error(&mut s, 413, &[], true, true);
            return finish(s);
        }
        if let Some(len) = req.content_length.filter(|&l| l > 0)
            && (len > cfg.header_max as u64 || !skip_body(&mut s, &mut buf, len as usize, cfg))
        {
            let _ = error(&mut s, 413, &[], true, true);
            return finish(s);
        }
        let ok = respond(&mut s, &req, cfg, close);
        if cfg.log {
            println!("httpd: {} {} HTTP/1.{}", req.method, req.target, req.minor);
        }
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        if cfg.requests > 0 && served >= cfg.requests {
            let _ = s.flush(Duration::from_secs(1));
            println!("httpd: {} responses sent, stopping", cfg.requests);
            kernel::exit(0);
        }
        if !ok || close {
            return finish(s);
        }
    }
}

/// Read and drop a body of `len` bytes (part of it may be in `buf`).
fn skip_body(s: &mut impl Conn, buf: &mut Vec<u8>, len: usize, cfg: &Config) -> bool {
    let have = buf.len().min(len);
    buf.drain(..have);
    let mut left = len - have;
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(cfg.header_timeout));
    while left > 0 {
        match s.read(&mut chunk[..left.min(4096)]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => left -= n,
        }
    }
    true
}

fn finish(mut s: impl Conn) {
    let _ = s.shutdown();
}

/// Answer one request; whether the connection can go on.
fn respond(s: &mut impl Conn, req: &http::Request, cfg: &Config, close: bool) -> bool {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return error(s, 405, &[("Allow", String::from("GET, HEAD"))], close, true);
    }
    let Some((path, slash)) = http::target_path(&req.target) else {
        return error(s, 400, &[], close, !head_only);
    };
    if cfg.status.as_deref() == Some(path.as_str()) {
        let heap = kernel::memory::heap_stats();
        let (sockets, closing) = kernel::net::socket_counts();
        let body = format!(
            "Active connections: {}\nRequests: {}\nHeap used: {} of {} bytes\nSockets: {} ({} closing)\nThreads: {}\n",
            ACTIVE.load(Ordering::Relaxed),
            SERVED.load(Ordering::Relaxed),
            heap.used,
            heap.size,
            sockets,
            closing,
            kernel::process::live_threads()
        );
        let mut out = head(
            200,
            "text/plain; charset=utf-8",
            body.len() as u64,
            &[("Cache-Control", String::from("no-store"))],
            close,
        );
        if !head_only {
            out.extend_from_slice(body.as_bytes());
        }
        return s.write_all(&out).is_ok();
    }
    let mut full = format!("{}{}", cfg.root, path);
    let mut meta = match fs::metadata(&full) {
        Ok(m) => m,
        Err(fs::Error::NotFound | fs::Error::NotADirectory) => return error(s, 404, &[], close, !head_only),
        Err(_) => return error(s, 500, &[], close, !head_only),
    };
    if meta.is_dir() {
        if !slash {
            let to = format!("{}/", req.target.split('?').next().unwrap_or("/"));
            return error(s, 301, &[("Location", to)], close, !head_only);
        }
        full = format!("{}/index.html", full.trim_end_matches('/'));
        meta = match fs::metadata(&full) {
            Ok(m) if m.is_file() => m,
            _ => return error(s, 404, &[], close, !head_only),
        };
    } else if !meta.is_file() {
        return error(s, 404, &[], close, !head_only);
    }
    let len = meta.len;
    let tag = http::etag(len, meta.modified);
    let mut extra: Vec<(&str, String)> =
        alloc::vec![("ETag", tag.clone()), ("Accept-Ranges", String::from("bytes"))];
    if let Some(m) = meta.modified {
        extra.push(("Last-Modified", http::http_date(m)));
    }
    // Conditional: If-None-Match wins over If-Modified-Since.
    let not_modified = match (&req.if_none_match, &req.if_modified_since, meta.modified) {
        (Some(inm), _, _) => http::none_match(inm, &tag),
        (None, Some(ims), Some(m)) => http::parse_http_date(ims).is_some_and(|t| m <= t),
        _ => false,
    };
    if not_modified {
        return s.write_all(&head(304, "", 0, &extra, close)).is_ok();
    }
    let ctype = http::content_type(&full);
    let (status, start, count) = match req.range.as_deref().map(|r| http::range(r, len)) {
        Some(http::Range::Bytes(a, b)) => {
            extra.push(("Content-Range", format!("bytes {a}-{b}/{len}")));
            (206, a, b - a + 1)
        }
        Some(http::Range::Unsatisfiable) => {
            return error(s, 416, &[("Content-Range", format!("bytes */{len}"))], close, !head_only);
        }
        Some(http::Range::Ignore) | None => (200, 0, len),
    };
    let out = head(status, ctype, count, &extra, close);
    if head_only || count == 0 {
        return s.write_all(&out).is_ok();
    }
    send_file(s, out, &full, start, count)
}

/// Send the response head `out`, then `count` bytes of the file at `path`
/// from `start`, in pieces; the head goes out with the first piece (a head
/// sent alone would wait for the client's delayed ACK before the body).
fn send_file(s: &mut impl Conn, mut out: Vec<u8>, path: &str, start: u64, count: u64) -> bool {
    let Ok(mut f) = fs::File::open(path) else { return false };
    if let Some(bytes) = f.as_static() {
        // Baked into the ELF: sent from where it lies.
        let (a, b) = (start as usize, (start + count) as usize);
        let Some(part) = bytes.get(a..b) else { return false };
        let first = part.len().min(PIECE);
        out.extend_from_slice(&part[..first]);
        return s.write_all(&out).is_ok() && part[first..].chunks(PIECE).all(|c| s.write_all(c).is_ok());
    }
    if f.seek(kernel::fs::io::SeekFrom::Start(start)).is_err() {
        return false;
    }
    let mut left = count;
    while left > 0 {
        let at = out.len();
        let want = PIECE.min(left as usize);
        out.resize(at + want, 0);
        match f.read(&mut out[at..]) {
            // The file shrank under us: the promised length cannot be
            // kept, so the connection ends.
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                out.truncate(at + n);
                if s.write_all(&out).is_err() {
                    return false;
                }
                out.clear();
                left -= n as u64;
            }
        }
    }
    true
}
