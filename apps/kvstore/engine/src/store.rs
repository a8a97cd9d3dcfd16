//! The keyspace: string values with optional expiry times, the commands
//! that read and change it, and what each change writes to the
//! append-only file.
//!
//! Times are wall-clock milliseconds given by the caller (`now`), so an
//! expiry survives a restart as the absolute time it was; every change is
//! logged in a form that replays to the same state whenever it is read
//! back (relative expiries become `PXAT`/`PEXPIREAT`, `INCR` becomes the
//! `SET` of its result).

use alloc::vec::Vec;

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use crate::command::{DENYOOM, Spec};
use crate::resp::{self, number};

/// Bytes counted per key beyond its key and value (the map's slot, the
/// two vectors' headers, the allocator's rounding), for `maxmemory`.
pub const OVERHEAD: usize = 64;

/// The `-OOM` reply.
pub const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

struct Entry {
    val: Vec<u8>,
    /// Expiry time in ms, 0 for none.
    exp: u64,
}

/// The keyspace.
pub struct Store {
    map: HashMap<Vec<u8>, Entry, FixedState>,
    /// Bytes counted for `maxmemory`: keys, values and [`OVERHEAD`] each.
    used: usize,
    /// Limit on [`Store::used`] for commands that grow memory (0: none).
    pub maxmemory: usize,
    expiring: usize,
}

fn cost(key: &[u8], val: &[u8]) -> usize {
    key.len() + val.len() + OVERHEAD
}

impl Store {
    /// An empty keyspace whose hashing is keyed by `seed` (random per boot,
    /// so clients cannot aim keys at one bucket).
    pub fn new(maxmemory: usize, seed: u64) -> Self {
        Self { map: HashMap::with_hasher(FixedState::with_seed(seed)), used: 0, maxmemory, expiring: 0 }
    }

    /// Keys (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys with an expiry time.
    pub fn expiring(&self) -> usize {
        self.expiring
    }

    /// Bytes counted for `maxmemory`.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Remove every key whose time has come; how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        if self.expiring == 0 {
            return 0;
        }
        let (mut gone, mut freed) = (0, 0);
        self.map.retain(|k, e| {
            let keep = e.exp == 0 || e.exp > now;
            if !keep {
                gone += 1;
                freed += cost(k, &e.val);
            }
            keep
        });
        self.expiring -= gone;
        self.used -= freed;
        gone
    }

    /// The live entry of `key` (an expired one is removed on the way).
    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|e| e.exp != 0 && e.exp <= now) {
            self.remove(key);
        }
        self.map.get_mut(key)
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove_entry(key) {
            Some((k, e)) => {
                self.used -= cost(&k, &e.val);
                self.expiring -= usize::from(e.exp != 0);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, key: &[u8], val: Vec<u8>, exp: u64) {
        self.used += cost(key, &val);
        self.expiring += usize::from(exp != 0);
        if let Some(old) = self.map.insert(key.to_vec(), Entry { val, exp }) {
            self.used -= cost(key, &old.val);
            self.expiring -= usize::from(old.exp != 0);
        }
    }

    fn set_exp(&mut self, key: &[u8], exp: u64) {
        if let Some(e) = self.map.get_mut(key) {
            self.expiring = self.expiring + usize::from(exp != 0) - usize::from(e.exp != 0);
            e.exp = exp;
        }
    }

    fn over(&self, growth: usize) -> bool {
        self.maxmemory != 0 && self.used.saturating_add(growth) > self.maxmemory
    }

    /// Run the keyspace command `spec` with `args` (its name first, arity
    /// already checked): its reply goes to `out`, and to `log` the record
    /// of what it changed, if anything.
    pub fn exec(
        &mut self,
        spec: &Spec,
        args: &[Vec<u8>],
        now: u64,
        out: &mut Vec<u8>,
        log: Option<&mut Vec<u8>>,
    ) {
        let mut scratch = Vec::new();
        let log = log.unwrap_or(&mut scratch);
        if spec.has(DENYOOM) && self.over(growth(spec.name, args)) {
            return resp::error(out, OOM);
        }
        let a = &args[1..];
        match spec.name {
            "GET" => match self.live(&a[0], now) {
                Some(e) => resp::bulk(out, &e.val),
                None => resp::nil(out),
            },
            "SET" => self.set(a, now, out, log),
            "DEL" | "UNLINK" => {
                let gone: Vec<&[u8]> =
                    a.iter().filter(|k| self.live(k, now).is_some()).map(|k| &k[..]).collect();
                for k in &gone {
                    self.remove(k);
                }
                if !gone.is_empty() {
                    let mut rec: Vec<&[u8]> = alloc::vec![b"DEL"];
                    rec.extend(gone.iter().copied());
                    resp::command(log, &rec);
                }
                resp::integer(out, gone.len() as i64);
            }
            "EXISTS" => {
                let n = a.iter().filter(|k| self.live(k, now).is_some()).count();
                resp::integer(out, n as i64);
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by = match a.get(1) {
                    None => 1,
                    Some(n) => match number(n) {
                        Some(n) => n,
                        None => return resp::error(out, NOT_INT),
                    },
                };
                let by = if spec.name.starts_with('D') {
                    match by.checked_neg() {
                        Some(b) => b,
                        None => return resp::error(out, "ERR decrement would overflow"),
                    }
                } else {
                    by
                };
                self.incr(&a[0], by, now, out, log);
            }
            "APPEND" => {
                let (mut val, exp) = match self.live(&a[0], now) {
                    Some(e) => (core::mem::take(&mut e.val), e.exp),
                    None => (Vec::new(), 0),
                };
                val.extend_from_slice(&a[1]);
                let len = val.len();
                self.insert(&a[0], val, exp);
                resp::command(log, &[b"APPEND", &a[0], &a[1]]);
                resp::integer(out, len as i64);
            }
            "STRLEN" => {
                let n = self.live(&a[0], now).map_or(0, |e| e.val.len());
                resp::integer(out, n as i64);
            }
            "MGET" => {
                resp::array(out, a.len());
                for k in a {
                    match self.live(k, now) {
                        Some(e) => resp::bulk(out, &e.val),
                        None => resp::nil(out),
                    }
                }
            }
            "MSET" => {
                if !a.len().is_multiple_of(2) {
                    return resp::error(out, "ERR wrong number of arguments for 'mset' command");
                }
                for kv in a.chunks(2) {
                    self.insert(&kv[0], kv[1].clone(), 0);
                }
                let rec: Vec<&[u8]> = args.iter().map(|x| &x[..]).collect();
                resp::command(log, &rec);
                resp::ok(out);
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => self.expire(spec.name, a, now, out, log),
            "PERSIST" => {
                let had = self.live(&a[0], now).is_some_and(|e| e.exp != 0);
                if had {
                    self.set_exp(&a[0], 0);
                    resp::command(log, &[b"PERSIST", &a[0]]);
                }
                resp::integer(out, i64::from(had));
            }
            "TTL" | "PTTL" => {
                let ms = spec.name == "PTTL";
                let n = match self.live(&a[0], now) {
                    None => -2,
                    Some(e) if e.exp == 0 => -1,
                    Some(e) => {
                        let left = (e.exp - now) as i64;
                        if ms { left } else { (left + 500) / 1000 }
                    }
                };
                resp::integer(out, n);
            }
            "KEYS" => {
                let keys: Vec<&Vec<u8>> = self
                    .map
                    .iter()
                    .filter(|(k, e)| (e.exp == 0 || e.exp > now) && crate::glob::matches(&a[0], k))
                    .map(|(k, _)| k)
                    .collect();
                resp::array(out, keys.len());
                for k in keys {
                    resp::bulk(out, k);
                }
            }
            "DBSIZE" => {
                self.sweep(now);
                resp::integer(out, self.map.len() as i64);
            }
            "FLUSHALL" | "FLUSHDB" => {
                if a.len() > 1
                    || a.first().is_some_and(|m| {
                        !m.eq_ignore_ascii_case(b"sync") && !m.eq_ignore_ascii_case(b"async")
                    })
                {
                    return resp::error(out, SYNTAX);
                }
                self.map = HashMap::with_hasher(self.map.hasher().clone());
                self.used = 0;
                self.expiring = 0;
                resp::command(log, &[b"FLUSHALL"]);
                resp::ok(out);
            }
            other => resp::error(out, &alloc::format!("ERR '{other}' is not a keyspace command")),
        }
    }

    /// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
    fn set(&mut self, a: &[Vec<u8>], now: u64, out: &mut Vec<u8>, log: &mut Vec<u8>) {
        let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
        let mut exp: Option<u64> = None;
        let mut i = 2;
        while i < a.len() {
            let opt = &a[i];
            let up = |s: &[u8]| opt.eq_ignore_ascii_case(s);
            if up(b"NX") && !xx {
                nx = true;
            } else if up(b"XX") && !nx {
                xx = true;
            } else if up(b"GET") {
                get = true;
            } else if up(b"KEEPTTL") && exp.is_none() {
                keep = true;
            } else if (up(b"EX") || up(b"PX") || up(b"EXAT") || up(b"PXAT")) && exp.is_none() && !keep {
                let Some(n) = a.get(i + 1) else { return resp::error(out, SYNTAX) };
                let Some(n) = number(n) else { return resp::error(out, NOT_INT) };
                let at = if n <= 0 {
                    None
                } else if up(b"EX") {
                    (n as u64).checked_mul(1000).and_then(|ms| ms.checked_add(now))
                } else if up(b"PX") {
                    (n as u64).checked_add(now)
                } else if up(b"EXAT") {
                    (n as u64).checked_mul(1000)
                } else {
                    Some(n as u64)
                };
                let Some(at) = at else {
                    return resp::error(out, "ERR invalid expire time in 'set' command");
                };
                exp = Some(at);
                i += 1;
            } else {
                return resp::error(out, SYNTAX);
            }
            i += 1;
        }
        let old = self.live(&a[0], now).map(|e| (e.val.clone(), e.exp));
        if get {
            match &old {
                Some((v, _)) => resp::bulk(out, v),
                None => resp::nil(out),
            }
        }
        if (nx && old.is_some()) || (xx && old.is_none()) {
            if !get {
                resp::nil(out);
            }
            return;
        }
        let exp = match (exp, keep) {
            (Some(e), _) => e,
            (None, true) => old.as_ref().map_or(0, |o| o.1),
            (None, false) => 0,
        };
        if exp != 0 && exp <= now {
            // Already past: the key is gone, as Redis does.
            if self.remove(&a[0]) {
                resp::command(log, &[b"DEL", &a[0]]);
            }
        } else {
            self.insert(&a[0], a[1].clone(), exp);
            if exp == 0 {
                resp::command(log, &[b"SET", &a[0], &a[1]]);
            } else {
                let mut at = Vec::new();
                resp::push_num(&mut at, exp as i64);
                resp::command(log, &[b"SET", &a[0], &a[1], b"PXAT", &at]);
            }
        }
        if !get {
            resp::ok(out);
        }
    }

    fn incr(&mut self, key: &[u8], by: i64, now: u64, out: &mut Vec<u8>, log: &mut Vec<u8>) {
        let (cur, exp) = match self.live(key, now) {
            None => (0, 0),
            Some(e) => match core::str::from_utf8(&e.val).ok().and_then(|s| number(s.as_bytes())) {
                Some(n) => (n, e.exp),
                None => return resp::error(out, NOT_INT),
            },
        };
        let Some(new) = cur.checked_add(by) else {
            return resp::error(out, "ERR increment or decrement would overflow");
        };
        let mut val = Vec::new();
        resp::push_num(&mut val, new);
        self.insert(key, val.clone(), exp);
        if exp == 0 {
            resp::command(log, &[b"SET", key, &val]);
        } else {
            resp::command(log, &[b"SET", key, &val, b"KEEPTTL"]);
        }
        resp::integer(out, new);
    }

    /// `EXPIRE key n [NX|XX|GT|LT]` and its ms and absolute forms.
    fn expire(&mut self, name: &str, a: &[Vec<u8>], now: u64, out: &mut Vec<u8>, log: &mut Vec<u8>) {
        let Some(n) = number(&a[1]) else { return resp::error(out, NOT_INT) };
        let flag = match a.get(2) {
            None => None,
            Some(f) if a.len() == 3 => match f.to_ascii_uppercase().as_slice() {
                b"NX" => Some(b'N'),
                b"XX" => Some(b'X'),
                b"GT" => Some(b'G'),
                b"LT" => Some(b'L'),
                _ => return resp::error(out, "ERR Unsupported option"),
            },
            Some(_) => return resp::error(out, SYNTAX),
        };
        let ms = |n: i64| if name.starts_with('P') { Some(n) } else { n.checked_mul(1000) };
        let at = match ms(n) {
            Some(v) if name.ends_with("AT") => Some(v),
            Some(v) => v.checked_add(now as i64),
            None => None,
        };
        let Some(at) = at else {
            return resp::error(
                out,
                &alloc::format!("ERR invalid expire time in '{}' command", name.to_ascii_lowercase()),
            );
        };
        let Some(cur) = self.live(&a[0], now).map(|e| e.exp) else { return resp::integer(out, 0) };
        // A key without expiry counts as infinite for GT and LT.
        let allowed = match flag {
            Some(b'N') => cur == 0,
            Some(b'X') => cur != 0,
            Some(b'G') => cur != 0 && at > cur as i64,
            Some(b'L') => cur == 0 || at < cur as i64,
            _ => true,
        };
        if !allowed {
            return resp::integer(out, 0);
        }
        if at <= now as i64 {
            self.remove(&a[0]);
            resp::command(log, &[b"DEL", &a[0]]);
        } else {
            self.set_exp(&a[0], at as u64);
            let mut t = Vec::new();
            resp::push_num(&mut t, at);
            resp::command(log, &[b"PEXPIREAT", &a[0], &t]);
        }
        resp::integer(out, 1);
    }
}

/// Bytes a growing command may add (for the `maxmemory` check).
fn growth(name: &str, args: &[Vec<u8>]) -> usize {
    match name {
        "SET" if args.len() >= 3 => cost(&args[1], &args[2]),
        "MSET" => args[1..].chunks(2).map(|kv| cost(&kv[0], kv.get(1).map_or(&[][..], |v| v))).sum(),
        "APPEND" if args.len() >= 3 => args[2].len(),
        _ => args.get(1).map_or(0, |k| cost(k, &[0; 20])),
    }
}
