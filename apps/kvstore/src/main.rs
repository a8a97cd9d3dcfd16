//! kvstore: a Redis-protocol key-value store appliance (Toro's
//! HashTableServer, grown up), for `redis-cli`, `redis-benchmark` and any
//! Redis client library.
//!
//! Command line (all optional):
//! - `port=6379`, `torito.ip=ADDR/PREFIX` (else DHCP).
//! - `aof=/data/appendonly.aof`: the append-only file (on a `--share` or a
//!   FAT disk), replayed at boot. A torn last record is cut off and the
//!   rest loads; a corrupt record elsewhere stops the boot with its offset.
//! - `appendfsync=everysec` (`always`: each batch of a client's commands
//!   is on disk before it is answered; `everysec`: synced once a second;
//!   `no`: written at once, synced when the host likes).
//! - `maxmemory=N[kb|mb|gb]`: bytes of keys and values (64 bytes each on
//!   top); commands that would grow beyond are answered `-OOM`. Default:
//!   three quarters of the guest heap (a guest has no swap; `maxmemory=0`
//!   lifts the limit, and running out of heap then stops the guest).
//! - `maxclients=10000`, `timeout=0` (idle seconds before a client is
//!   closed; 0 never), `backlog=511`.
//! - `defer=1`: seconds a connection may wait for its client's first
//!   command before it is taken anyway (a thread of its own is made only
//!   then; clients speak first); `defer=0` takes each at once.
//!
//! Each connection has a thread of its own; they share one keyspace
//! behind the process unit's [`Mutex`], taken once per batch of pipelined
//! commands. Changes go to the append-only file in the order they were
//! made; with `always`, the clients' batches are written and synced
//! together (one sync covers every batch that arrived meanwhile).
//! SHUTDOWN (from any client) syncs the file and stops the machine.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use engine::command::{self, SERVER, WRITE};
use engine::resp::{self, Limits, Parser, ProtoError};
use engine::server::{self, Flow, Info};
use engine::store::{OOM, Store};
use kernel::fs::{self, io::Write};
use kernel::net::tcp::{TcpListener, TcpStream};
use kernel::println;
use kernel::process::sync::Mutex;

kernel::entry!(main);

/// When the append-only file is synced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fsync {
    Always,
    EverySec,
    No,
}

impl Fsync {
    fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        }
    }
}

struct Config {
    port: u16,
    aof: Option<String>,
    fsync: Fsync,
    max_clients: usize,
    timeout_s: u64,
    limits: Limits,
}

/// The keyspace and the changes not yet written to the file.
struct Db {
    store: Store,
    /// Records made but not yet written.
    pending: Vec<u8>,
    /// Bytes of records ever made (written or pending).
    made: u64,
}

/// The append-only file and how far it got.
struct Aof {
    file: fs::File,
    written: u64,
    synced: u64,
}

struct Server {
    cfg: Config,
    db: Mutex<Db>,
    aof: Option<Mutex<Aof>>,
    /// Set when a write to the file failed: changes are refused from then on.
    aof_failed: AtomicBool,
    clients: AtomicUsize,
    connections: AtomicU64,
    commands: AtomicU64,
    start_ns: u64,
}

fn arg(name: &str) -> Option<&'static str> {
    kernel::args().find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `100`, `64kb`, `64mb`, `1gb` (and `k`, `m`, `g`) as Redis reads sizes.
fn size(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult: usize = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(mult)
}

/// Wall-clock milliseconds (expiry times are absolute and survive a
/// restart); monotonic when the machine gave no wall clock.
fn now_ms() -> u64 {
    kernel::process::clock::wall_clock_ns().or_else(kernel::process::clock::now_ns).unwrap_or(0) / 1_000_000
}

fn main() -> i32 {
    let heap = kernel::memory::heap_stats();
    let maxmemory = match arg("maxmemory") {
        None => heap.size / 4 * 3,
        Some(v) => match size(v) {
            Some(n) => n,
            None => {
                println!("kvstore: maxmemory={v}: not a size (e.g. 64mb)");
                return 1;
            }
        },
    };
    let fsync = match arg("appendfsync").unwrap_or("everysec") {
        "always" => Fsync::Always,
        "everysec" => Fsync::EverySec,
        "no" => Fsync::No,
        other => {
            println!("kvstore: appendfsync={other}: use always, everysec or no");
            return 1;
        }
    };
    let max_bulk = if maxmemory == 0 { resp::REDIS_MAX_BULK } else { maxmemory.min(resp::REDIS_MAX_BULK) };
    let cfg = Config {
        port: num("port", 6379) as u16,
        aof: arg("aof").map(String::from),
        fsync,
        max_clients: num("maxclients", 10_000).max(1) as usize,
        timeout_s: num("timeout", 0),
        limits: Limits { max_bulk, ..Limits::default() },
    };
    let seed = kernel::process::clock::now_ns().unwrap_or(0) ^ 0x9e37_79b9_7f4a_7c15;
    let mut store = Store::new(maxmemory, seed);
    let aof = match &cfg.aof {
        None => None,
        Some(path) => match open_aof(path, &mut store) {
            Ok(f) => Some(Mutex::new(Aof { file: f, written: 0, synced: 0 })),
            Err(e) => {
                println!("kvstore: {e}");
                return 1;
            }
        },
    };
    let srv: &'static Server = Box::leak(Box::new(Server {
        cfg,
        db: Mutex::new(Db { store, pending: Vec::new(), made: 0 }),
        aof,
        aof_failed: AtomicBool::new(false),
        clients: AtomicUsize::new(0),
        connections: AtomicU64::new(0),
        commands: AtomicU64::new(0),
        start_ns: kernel::process::clock::now_ns().unwrap_or(0),
    }));
    if !kernel::args().any(|a| a.starts_with("torito.ip=")) {
        match kernel::net::wait_for_address(Duration::from_secs(10)) {
            Ok(a) => {
                let [x, y, z, w] = a.ip;
                println!("kvstore: address {x}.{y}.{z}.{w}/{} from DHCP", a.prefix);
            }
            Err(e) => {
                println!("kvstore: no address from DHCP: {e}");
                return 1;
            }
        }
    }
    let backlog = num("backlog", 511).clamp(1, 4096) as usize;
    let mut listener = match TcpListener::bind_with_backlog(srv.cfg.port, backlog) {
        Ok(l) => l,
        Err(e) => {
            println!("kvstore: cannot listen on port {}: {e}", srv.cfg.port);
            return 1;
        }
    };
    let defer = num("defer", 1);
    if let Err(e) = listener.set_defer_accept((defer > 0).then(|| Duration::from_secs(defer))) {
        println!("kvstore: defer={defer}: {e}");
        return 1;
    }
    kernel::process::spawn(move || housekeeping(srv));
    let persist = match &srv.cfg.aof {
        Some(p) => format!("aof {p}, appendfsync {}", srv.cfg.fsync.name()),
        None => String::from("no persistence"),
    };
    println!("kvstore: ready on port {}, maxmemory {maxmemory}, {persist}", srv.cfg.port);
    loop {
        match listener.accept() {
            Ok(mut s) => {
                srv.connections.fetch_add(1, Ordering::Relaxed);
                if srv.clients.fetch_add(1, Ordering::Relaxed) >= srv.cfg.max_clients {
                    srv.clients.fetch_sub(1, Ordering::Relaxed);
                    let _ = s.write_all(b"-ERR max number of clients reached\r\n");
                    let _ = s.shutdown();
                    continue;
                }
                kernel::process::spawn(move || {
                    serve(s, srv);
                    srv.clients.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                println!("kvstore: accept: {e}");
                return 1;
            }
        }
    }
}

/// Load the append-only file at `path` into `store` and open it for
/// appending (created when missing).
fn open_aof(path: &str, store: &mut Store) -> Result<fs::File, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(fs::Error::NotFound) => Vec::new(),
        Err(e) => return Err(format!("aof {path}: {e}")),
    };
    let loaded = engine::aof::replay(&bytes, store, now_ms())
        .map_err(|c| format!("aof {path}: corrupt record at byte {}: {}", c.offset, c.what))?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("aof {path}: {e}"))?;
    if loaded.torn {
        f.set_len(loaded.good_len as u64).map_err(|e| format!("aof {path}: cutting the torn end: {e}"))?;
        println!(
            "kvstore: aof {path}: dropped a torn last record ({} bytes at byte {})",
            bytes.len() - loaded.good_len,
            loaded.good_len
        );
    }
    println!("kvstore: aof {path}: {} records, {} keys loaded", loaded.records, store.len());
    Ok(f)
}

/// Once a second: sync the file (`everysec`) and drop expired keys.
fn housekeeping(srv: &'static Server) {
    loop {
        kernel::process::sleep(Duration::from_secs(1));
        srv.db.lock().store.sweep(now_ms());
        if srv.cfg.fsync == Fsync::EverySec
            && let Some(aof) = &srv.aof
        {
            let mut a = aof.lock();
            if a.synced < a.written {
                let upto = a.written;
                match a.file.sync_all() {
                    Ok(()) => a.synced = upto,
                    Err(e) => fail_aof(srv, &format!("sync: {e}")),
                }
            }
        }
    }
}

fn fail_aof(srv: &Server, what: &str) {
    if !srv.aof_failed.swap(true, Ordering::Relaxed) {
        println!("kvstore: aof: {what}; changes are refused from now on");
    }
}

/// Make the records up to byte `upto` durable as `appendfsync` says:
/// written, and synced with `always`. False when the file failed.
fn persist(srv: &Server, upto: u64) -> bool {
    let Some(aof) = &srv.aof else { return true };
    let mut a = aof.lock();
    if a.written < upto {
        // Everything made so far goes in one write (other clients' too).
        let chunk = core::mem::take(&mut srv.db.lock().pending);
        if let Err(e) = a.file.write_all(&chunk) {
            fail_aof(srv, &format!("write: {e:?}"));
            return false;
        }
        a.written += chunk.len() as u64;
    }
    if srv.cfg.fsync == Fsync::Always && a.synced < upto {
        let upto = a.written;
        if let Err(e) = a.file.sync_all() {
            fail_aof(srv, &format!("sync: {e}"));
            return false;
        }
        a.synced = upto;
    }
    !srv.aof_failed.load(Ordering::Relaxed)
}

/// Serve one client: batches of pipelined commands, answered in order.
fn serve(mut s: TcpStream, srv: &'static Server) {
    const READ: usize = 16 << 10;
    // What was read and not yet parsed is `buf[..filled]`; the rest of
    // `buf` is room for the next read, zeroed once when it grows, not
    // before every read (zeroing 16 KiB per read was a fifth of the
    // guest's time under `redis-benchmark -P 16`).
    let mut buf: Vec<u8> = vec![0; READ];
    let mut filled = 0;
    let mut parser = Parser::default();
    let mut out: Vec<u8> = Vec::with_capacity(READ);
    let mut batch: Vec<resp::Args> = Vec::new();
    s.set_read_timeout((srv.cfg.timeout_s > 0).then(|| Duration::from_secs(srv.cfg.timeout_s)));
    loop {
        let room = parser.wants(filled).clamp(READ, 1 << 20);
        if buf.len() < filled + room {
            buf.resize(filled + room, 0);
        }
        match s.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
        // Every whole request in what arrived.
        let mut used = 0;
        let mut bad = None;
        loop {
            match parser.feed(&buf[used..filled], &srv.cfg.limits) {
                Ok((n, req)) => {
                    used += n;
                    match req {
                        Some(r) if !r.is_empty() => batch.push(r),
                        Some(_) => {}
                        None if n == 0 => break,
                        None => {}
                    }
                }
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
        if buf.len() > 4 * READ && filled < READ {
            buf.truncate(READ);
            buf.shrink_to(READ);
        }
        let flow = run_batch(srv, &mut batch, &mut out);
        if let Some(e) = bad {
            match e {
                ProtoError::TooBig(_) => resp::error(&mut out, OOM),
                e => resp::error(&mut out, &format!("ERR {e}")),
            }
        }
        if flow.is_none() {
            // The file failed: nothing of this batch is acknowledged.
            break;
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            break;
        }
        out.clear();
        if out.capacity() > 4 * READ {
            out.shrink_to(READ);
        }
        if flow == Some(Flow::Shutdown) {
            // As Redis: no reply, the connection closed, then the end.
            let _ = s.shutdown();
            let _ = s.flush(Duration::from_secs(1));
            shutdown(srv);
        }
        if bad.is_some() || flow == Some(Flow::Close) {
            break;
        }
    }
    let _ = s.shutdown();
}

/// Run the parsed requests of `batch` into `out`; `None` when their
/// changes could not be made durable.
fn run_batch(srv: &'static Server, batch: &mut Vec<resp::Args>, out: &mut Vec<u8>) -> Option<Flow> {
    if batch.is_empty() {
        return Some(Flow::Go);
    }
    let mut flow = Flow::Go;
    let now = now_ms();
    let logging = srv.aof.is_some();
    let refuse = srv.aof_failed.load(Ordering::Relaxed);
    let made = {
        let mut db = srv.db.lock();
        let db = &mut *db;
        for args in batch.iter() {
            let Some(spec) = command::lookup(&args[0]) else {
                unknown(&args[0], &args[1..], out);
                continue;
            };
            if !spec.arity_ok(args.len()) {
                resp::error(
                    out,
                    &format!(
                        "ERR wrong number of arguments for '{}' command",
                        spec.name.to_ascii_lowercase()
                    ),
                );
            } else if spec.has(SERVER) {
                let info = info(srv);
                flow = server::exec(spec, args, &db.store, &info, out);
                if flow != Flow::Go {
                    break;
                }
            } else if refuse && spec.has(WRITE) {
                resp::error(out, "MISCONF Errors writing to the AOF file: changes are refused");
            } else {
                let before = db.pending.len();
                db.store.exec(spec, args, now, out, logging.then_some(&mut db.pending));
                db.made += (db.pending.len() - before) as u64;
            }
        }
        db.made
    };
    srv.commands.fetch_add(batch.len() as u64, Ordering::Relaxed);
    batch.clear();
    if logging && !persist(srv, made) {
        return None;
    }
    Some(flow)
}

/// SHUTDOWN: every change written and synced, then the machine stops.
fn shutdown(srv: &Server) -> ! {
    if let Some(aof) = &srv.aof {
        let mut a = aof.lock();
        let chunk = core::mem::take(&mut srv.db.lock().pending);
        let synced = a
            .file
            .write_all(&chunk)
            .map_err(|e| format!("{e:?}"))
            .and_then(|()| a.file.sync_all().map_err(|e| format!("{e}")));
        if let Err(e) = synced {
            println!("kvstore: aof: {e} at shutdown");
            kernel::exit(1);
        }
    }
    println!("kvstore: shutdown after {} commands", srv.commands.load(Ordering::Relaxed));
    kernel::exit(0);
}

fn unknown(name: &[u8], rest: &[Vec<u8>], out: &mut Vec<u8>) {
    let mut msg = format!("ERR unknown command '{}', with args beginning with:", shown(name));
    for a in rest.iter().take(8) {
        msg.push_str(&format!(" '{}'", shown(a)));
    }
    resp::error(out, &msg);
}

/// An argument as an error message can show it (one line, at most 128 bytes).
fn shown(a: &[u8]) -> String {
    String::from_utf8_lossy(&a[..a.len().min(128)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn info(srv: &Server) -> Info<'_> {
    let heap = kernel::memory::heap_stats();
    let up = kernel::process::clock::now_ns().unwrap_or(0).saturating_sub(srv.start_ns);
    Info {
        port: srv.cfg.port,
        uptime_s: up / 1_000_000_000,
        clients: srv.clients.load(Ordering::Relaxed),
        connections: srv.connections.load(Ordering::Relaxed),
        commands: srv.commands.load(Ordering::Relaxed),
        max_clients: srv.cfg.max_clients,
        heap_used: heap.used,
        heap_size: heap.size,
        aof: srv.cfg.aof.as_deref(),
        appendfsync: srv.cfg.fsync.name(),
        timeout_s: srv.cfg.timeout_s,
        cores: kernel::process::core_count(),
    }
}
