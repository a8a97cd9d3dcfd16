//! Host tests of the engine: the parser fed in pieces and fed garbage, each
//! command's replies against Redis's, and the append-only file replayed
//! whole, torn and corrupt.

extern crate std;

use alloc::string::String;
use alloc::vec::Vec;
use std::vec;

use crate::aof;
use crate::command::{self, SERVER};
use crate::resp::{Args, Limits, Parser, ProtoError};
use crate::server::{self, Flow, Info};
use crate::store::Store;

fn parse_all(input: &[u8], lim: &Limits) -> Result<Vec<Args>, ProtoError> {
    let mut p = Parser::default();
    let mut at = 0;
    let mut got = Vec::new();
    loop {
        let (used, req) = p.feed(&input[at..], lim)?;
        at += used;
        match req {
            Some(r) => got.push(r),
            None if used == 0 => return Ok(got),
            None => {}
        }
    }
}

fn args(words: &[&str]) -> Args {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

#[test]
fn requests_whole_in_pieces_and_inline() {
    let lim = Limits::default();
    let wire = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhe\r\no\r\nPING\r\n";
    let whole = parse_all(wire, &lim).unwrap();
    assert_eq!(
        whole,
        vec![args(&["GET", "k"]), vec![b"SET".to_vec(), b"k".to_vec(), b"he\r\no".to_vec()], args(&["PING"])]
    );
    // One byte at a time: the same requests.
    let mut p = Parser::default();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for &b in wire.iter() {
        buf.push(b);
        loop {
            let (used, req) = p.feed(&buf, &lim).unwrap();
            buf.drain(..used);
            match req {
                Some(r) => got.push(r),
                None if used == 0 => break,
                None => {}
            }
        }
    }
    assert_eq!(got, whole);
    assert_eq!(
        parse_all(b"set k \"a b\\n\" 'c d'\n", &lim).unwrap(),
        vec![args(&["set", "k", "a b\n", "c d"])]
    );
    assert_eq!(parse_all(b"\r\n*0\r\n", &lim).unwrap(), vec![Args::new(), Args::new()]);
}

#[test]
fn bad_requests_are_errors_not_allocations() {
    let lim = Limits { max_bulk: 1 << 20, ..Limits::default() };
    let bad: [(&[u8], ProtoError); 9] = [
        (b"*-x\r\n", ProtoError::MultibulkLength),
        (b"*99999999999\r\n", ProtoError::MultibulkLength),
        (b"*1\r\n$-5\r\n", ProtoError::BulkLength),
        (b"*1\r\n$abc\r\n", ProtoError::BulkLength),
        (b"*1\r\n$99999999999999999999999\r\n", ProtoError::BulkLength),
        (b"*1\r\n$104857600\r\n", ProtoError::TooBig(104_857_600)),
        (b"*1\r\n:5\r\n", ProtoError::ExpectedDollar(b':')),
        (b"*1\r\n$1\r\nabc\r\n", ProtoError::ExpectedCrlf),
        (b"set \"unclosed\n", ProtoError::UnbalancedQuotes),
    ];
    for (input, want) in bad {
        assert_eq!(parse_all(input, &lim), Err(want), "{:?}", String::from_utf8_lossy(input));
    }
    let long = vec![b'a'; 70 << 10];
    assert_eq!(parse_all(&long, &lim), Err(ProtoError::LineTooLong));
    // A huge announced count with nothing behind it waits, holding little.
    let mut p = Parser::default();
    assert_eq!(p.feed(b"*1000000\r\n", &lim).unwrap(), (10, None));
}

/// Run `words` as a client would: the raw reply.
fn run(store: &mut Store, now: u64, words: &[&str]) -> String {
    let a = args(words);
    let mut out = Vec::new();
    let info = Info {
        port: 6379,
        uptime_s: 1,
        clients: 1,
        connections: 1,
        commands: 1,
        max_clients: 10,
        heap_used: 1,
        heap_size: 2,
        aof: None,
        appendfsync: "everysec",
        timeout_s: 0,
        cores: 2,
    };
    match command::lookup(&a[0]) {
        None => return String::from("unknown"),
        Some(s) if !s.arity_ok(a.len()) => return String::from("arity"),
        Some(s) if s.has(SERVER) => {
            let _ = server::exec(s, &a, store, &info, &mut out);
        }
        Some(s) => store.exec(s, &a, now, &mut out, None),
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn commands_answer_as_redis_does() {
    let mut s = Store::new(0, 7);
    let t = 1_000_000;
    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "+PONG\r\n"),
        (&["ping", "hi"], "$2\r\nhi\r\n"),
        (&["GET", "k"], "$-1\r\n"),
        (&["SET", "k", "v"], "+OK\r\n"),
        (&["GET", "k"], "$1\r\nv\r\n"),
        (&["SET", "k", "w", "NX"], "$-1\r\n"),
        (&["SET", "k", "w", "XX", "GET"], "$1\r\nv\r\n"),
        (&["SET", "k", "w", "NX", "XX"], "-ERR syntax error\r\n"),
        (&["SET", "k", "w", "EX", "0"], "-ERR invalid expire time in 'set' command\r\n"),
        (&["SET", "k", "w", "EX", "x"], "-ERR value is not an integer or out of range\r\n"),
        (&["SET", "n", "10"], "+OK\r\n"),
        (&["INCR", "n"], ":11\r\n"),
        (&["INCRBY", "n", "-20"], ":-9\r\n"),
        (&["DECR", "n"], ":-10\r\n"),
        (&["DECRBY", "n", "5"], ":-15\r\n"),
        (&["INCR", "k"], "-ERR value is not an integer or out of range\r\n"),
        (&["SET", "big", "9223372036854775807"], "+OK\r\n"),
        (&["INCR", "big"], "-ERR increment or decrement would overflow\r\n"),
        (&["MSET", "a", "1", "b", "2"], "+OK\r\n"),
        (&["MSET", "a", "1", "b"], "-ERR wrong number of arguments for 'mset' command\r\n"),
        (&["MGET", "a", "nope", "b"], "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"),
        (&["EXISTS", "a", "a", "nope"], ":2\r\n"),
        (&["DEL", "a", "nope"], ":1\r\n"),
        (&["TTL", "b"], ":-1\r\n"),
        (&["TTL", "nope"], ":-2\r\n"),
        (&["EXPIRE", "b", "100"], ":1\r\n"),
        (&["TTL", "b"], ":100\r\n"),
        (&["PTTL", "b"], ":100000\r\n"),
        (&["EXPIRE", "b", "50", "GT"], ":0\r\n"),
        (&["EXPIRE", "nope", "10"], ":0\r\n"),
        (&["PERSIST", "b"], ":1\r\n"),
        (&["TTL", "b"], ":-1\r\n"),
        (&["KEYS", "[bk]"], "*2\r\n"),
        (&["DBSIZE"], ":4\r\n"),
        (&["APPEND", "k", "xy"], ":3\r\n"),
        (&["STRLEN", "k"], ":3\r\n"),
        (&["SELECT", "1"], "-ERR DB index is out of range\r\n"),
        (
            &["CONFIG", "GET", "append*"],
            "*6\r\n$10\r\nappendonly\r\n$2\r\nno\r\n$14\r\nappendfilename\r\n$0\r\n\r\n$11\r\nappendfsync\r\n$8\r\neverysec\r\n",
        ),
        (&["GET"], "arity"),
        (&["NOSUCH"], "unknown"),
        (&["FLUSHALL"], "+OK\r\n"),
        (&["DBSIZE"], ":0\r\n"),
    ];
    for (words, want) in cases {
        let got = run(&mut s, t, words);
        if want.starts_with("*2\r\n") && words[0] == "KEYS" {
            assert!(
                got.starts_with(want) && got.contains("$1\r\nb\r\n") && got.contains("$1\r\nk\r\n"),
                "{words:?}: {got:?}"
            );
        } else {
            assert_eq!(&got, want, "{words:?}");
        }
    }
    assert_eq!(s.used(), 0);
}

#[test]
fn keys_expire_on_time() {
    let mut s = Store::new(0, 1);
    run(&mut s, 1000, &["SET", "k", "v", "PX", "500"]);
    assert_eq!(run(&mut s, 1499, &["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(run(&mut s, 1500, &["GET", "k"]), "$-1\r\n");
    run(&mut s, 1000, &["SET", "a", "v", "EX", "1"]);
    run(&mut s, 1000, &["SET", "b", "v"]);
    assert_eq!(s.sweep(5000), 1);
    assert_eq!(s.len(), 1);
    assert_eq!(run(&mut s, 5000, &["EXPIRE", "b", "-1"]), ":1\r\n");
    assert_eq!((s.len(), s.used()), (0, 0));
}

#[test]
fn maxmemory_refuses_growth_with_oom() {
    let mut s = Store::new(1000, 1);
    let big = "x".repeat(2000);
    assert!(run(&mut s, 0, &["SET", "k", &big]).starts_with("-OOM "));
    assert_eq!(run(&mut s, 0, &["SET", "k", "small"]), "+OK\r\n");
    assert_eq!(run(&mut s, 0, &["DEL", "k"]), ":1\r\n");
    assert_eq!(s.used(), 0);
}

fn logged(cmds: &[&[&str]], now: u64) -> (Store, Vec<u8>) {
    let mut s = Store::new(0, 3);
    let mut log = Vec::new();
    for words in cmds {
        let a = args(words);
        let spec = command::lookup(&a[0]).unwrap();
        s.exec(spec, &a, now, &mut Vec::new(), Some(&mut log));
    }
    (s, log)
}

#[test]
fn aof_replays_torn_and_rejects_corrupt() {
    let cmds: &[&[&str]] = &[
        &["SET", "a", "1"],
        &["SET", "t", "x", "EX", "100"],
        &["INCR", "a"],
        &["SET", "a", "no", "NX"],
        &["GET", "a"],
        &["DEL", "gone"],
        &["MSET", "m", "1", "n", "2"],
        &["DEL", "n"],
    ];
    let (live, log) = logged(cmds, 10_000);
    let mut s = Store::new(0, 9);
    let done = aof::replay(&log, &mut s, 20_000).unwrap();
    assert_eq!(done, aof::Loaded { records: 5, good_len: log.len(), torn: false });
    assert_eq!(run(&mut s, 20_000, &["GET", "a"]), "$1\r\n2\r\n");
    assert_eq!(run(&mut s, 20_000, &["PTTL", "t"]), ":90000\r\n");
    assert_eq!((s.len(), s.used()), (live.len(), live.used()));
    // Every cut inside the last record loads all the others.
    let last = log.len() - b"*2\r\n$3\r\nDEL\r\n$1\r\nn\r\n".len();
    for cut in last + 1..log.len() {
        let mut s = Store::new(0, 9);
        let done = aof::replay(&log[..cut], &mut s, 20_000).unwrap();
        assert_eq!(done, aof::Loaded { records: 4, good_len: last, torn: true });
    }
    // A damaged middle is an error naming where.
    let mut bad = log.clone();
    let at = 30;
    bad[at..at + 4].copy_from_slice(b"junk");
    let err = aof::replay(&bad, &mut Store::new(0, 9), 20_000).unwrap_err();
    assert!(err.offset <= at, "{err:?}");
    let mut read = log.clone();
    read.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
    let err = aof::replay(&read, &mut Store::new(0, 9), 20_000).unwrap_err();
    assert_eq!(err.offset, log.len());
}

#[test]
fn quit_closes_and_info_reports() {
    let mut s = Store::new(0, 1);
    run(&mut s, 0, &["SET", "k", "v"]);
    let spec = command::lookup(b"QUIT").unwrap();
    let info = Info {
        port: 1,
        uptime_s: 0,
        clients: 0,
        connections: 0,
        commands: 0,
        max_clients: 1,
        heap_used: 0,
        heap_size: 0,
        aof: Some("/data/appendonly.aof"),
        appendfsync: "always",
        timeout_s: 0,
        cores: 1,
    };
    assert_eq!(server::exec(spec, &args(&["QUIT"]), &s, &info, &mut Vec::new()), Flow::Close);
    let text = server::info_text(&[], &s, &info);
    assert!(text.contains("db0:keys=1,expires=0") && text.contains("aof_enabled:1"), "{text}");
}
