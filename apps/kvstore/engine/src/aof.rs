//! The append-only file: every change as the RESP request that redoes it,
//! replayed at boot.
//!
//! A file cut short in its last record (the machine stopped mid-write) is
//! loaded up to the last whole record, and the caller is told where that
//! ends so it can cut the tail off; anything else that does not parse or
//! does not run is corruption, reported with the byte offset of the record.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::command::{self, WRITE};
use crate::resp::{Limits, Parser};
use crate::store::Store;

/// A file that loaded.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Records replayed.
    pub records: u64,
    /// Bytes of whole records; the file's length unless its end was torn.
    pub good_len: usize,
    /// Whether a partial last record was dropped.
    pub torn: bool,
}

/// A file that did not load.
#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// Where the bad record starts.
    pub offset: usize,
    /// What is wrong with it.
    pub what: String,
}

/// Replay `bytes` into `store` (`maxmemory` does not apply while loading).
pub fn replay(bytes: &[u8], store: &mut Store, now: u64) -> Result<Loaded, Corrupt> {
    let lim = Limits::default();
    let mut parser = Parser::default();
    let (mut at, mut start, mut records) = (0, 0, 0);
    let mut scratch = Vec::new();
    let max = core::mem::replace(&mut store.maxmemory, 0);
    let result = loop {
        if parser.idle() && at < bytes.len() && bytes[at] != b'*' {
            break Err(Corrupt { offset: at, what: String::from("a record does not start with '*'") });
        }
        let (used, got) = match parser.feed(&bytes[at..], &lim) {
            Ok(r) => r,
            Err(e) => break Err(Corrupt { offset: start, what: format!("{e}") }),
        };
        at += used;
        let Some(args) = got else {
            if used == 0 {
                break Ok(Loaded { records, good_len: start, torn: start < bytes.len() });
            }
            continue;
        };
        let spec = args.first().and_then(|n| command::lookup(n));
        let Some(spec) = spec.filter(|s| s.has(WRITE) && s.arity_ok(args.len())) else {
            let name = args.first().map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
            break Err(Corrupt {
                offset: start,
                what: format!("'{name}' with {} arguments is not a change", args.len()),
            });
        };
        scratch.clear();
        store.exec(spec, &args, now, &mut scratch, None);
        if scratch.first() == Some(&b'-') {
            let msg = String::from_utf8_lossy(&scratch[1..]).trim_end().into();
            break Err(Corrupt { offset: start, what: msg });
        }
        records += 1;
        start = at;
    };
    store.maxmemory = max;
    result
}
