//! The commands about the server and the connection (PING, ECHO, QUIT,
//! SHUTDOWN, SELECT, INFO, CONFIG GET, COMMAND, CLIENT), answered as far as
//! `redis-cli` and `redis-benchmark` ask.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::command::{COMMANDS, Spec};
use crate::resp;
use crate::store::Store;

/// What INFO and CONFIG GET report, gathered by the appliance.
pub struct Info<'a> {
    /// TCP port served.
    pub port: u16,
    /// Seconds since the store started.
    pub uptime_s: u64,
    /// Connections open now.
    pub clients: usize,
    /// Connections accepted since start.
    pub connections: u64,
    /// Commands run since start.
    pub commands: u64,
    /// Limit on open connections.
    pub max_clients: usize,
    /// The guest heap's bytes in use and its size.
    pub heap_used: usize,
    /// The guest heap's size.
    pub heap_size: usize,
    /// The append-only file, when there is one.
    pub aof: Option<&'a str>,
    /// `always`, `everysec` or `no`.
    pub appendfsync: &'a str,
    /// Idle seconds before a client is closed (0: never).
    pub timeout_s: u64,
    /// Cores.
    pub cores: usize,
}

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Go,
    /// Send the replies, then close (QUIT).
    Close,
    /// Stop the server: the file synced, the machine stopped (SHUTDOWN).
    Shutdown,
}

/// Run the server command `spec` (arity already checked).
pub fn exec(spec: &Spec, args: &[Vec<u8>], store: &Store, info: &Info<'_>, out: &mut Vec<u8>) -> Flow {
    let sub = |i: usize| args.get(i).map(|a| a.to_ascii_uppercase()).unwrap_or_default();
    match spec.name {
        "PING" => match args.len() {
            1 => resp::simple(out, "PONG"),
            2 => resp::bulk(out, &args[1]),
            _ => resp::error(out, "ERR wrong number of arguments for 'ping' command"),
        },
        "ECHO" => resp::bulk(out, &args[1]),
        "QUIT" => {
            resp::ok(out);
            return Flow::Close;
        }
        "SHUTDOWN" => {
            let ok = args[1..].iter().all(|a| {
                ["NOSAVE", "SAVE", "NOW", "FORCE"].iter().any(|w| a.eq_ignore_ascii_case(w.as_bytes()))
            });
            if !ok {
                resp::error(out, "ERR syntax error");
                return Flow::Go;
            }
            return Flow::Shutdown;
        }
        "SELECT" => match resp::number(&args[1]) {
            Some(0) => resp::ok(out),
            Some(_) => resp::error(out, "ERR DB index is out of range"),
            None => resp::error(out, "ERR value is not an integer or out of range"),
        },
        "INFO" => {
            let wanted: Vec<String> =
                args[1..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
            resp::bulk(out, info_text(&wanted, store, info).as_bytes());
        }
        "CONFIG" => match sub(1).as_slice() {
            b"GET" if args.len() >= 3 => config_get(&args[2..], store, info, out),
            b"GET" => resp::error(out, "ERR wrong number of arguments for 'config|get' command"),
            b"RESETSTAT" => resp::ok(out),
            b"SET" => resp::error(
                out,
                "ERR CONFIG SET is not supported: set options on the appliance's command line",
            ),
            _ => resp::error(out, "ERR unknown subcommand for 'config': try CONFIG GET"),
        },
        // `redis-cli` asks for COMMAND DOCS at start for its hints; an empty
        // answer means "no hints".
        "COMMAND" => match sub(1).as_slice() {
            b"COUNT" => resp::integer(out, COMMANDS.len() as i64),
            _ => resp::array(out, 0),
        },
        "CLIENT" => match sub(1).as_slice() {
            b"SETNAME" | b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH" => resp::ok(out),
            b"GETNAME" => resp::nil(out),
            b"ID" => resp::integer(out, info.connections as i64),
            _ => resp::error(out, "ERR unknown subcommand for 'client'"),
        },
        other => resp::error(out, &format!("ERR '{other}' is not a server command")),
    }
    Flow::Go
}

/// The INFO text of the sections `wanted` (all when none or `all`/`everything`).
pub fn info_text(wanted: &[String], store: &Store, i: &Info<'_>) -> String {
    let all = wanted.is_empty() || wanted.iter().any(|w| w == "all" || w == "everything" || w == "default");
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let mut t = String::new();
    if want("server") {
        let _ = write!(
            t,
            "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nos:Torito\r\narch_bits:64\r\n\
             executable:kvstore\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\ncores:{}\r\n\r\n",
            i.port,
            i.uptime_s,
            i.uptime_s / 86400,
            i.cores
        );
    }
    if want("clients") {
        let _ =
            write!(t, "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n", i.clients, i.max_clients);
    }
    if want("memory") {
        let _ = write!(
            t,
            "# Memory\r\nused_memory:{}\r\nused_memory_dataset:{}\r\ntotal_system_memory:{}\r\nmaxmemory:{}\r\n\
             maxmemory_policy:noeviction\r\n\r\n",
            i.heap_used,
            store.used(),
            i.heap_size,
            store.maxmemory
        );
    }
    if want("persistence") {
        let _ = write!(t, "# Persistence\r\nloading:0\r\naof_enabled:{}\r\n\r\n", u8::from(i.aof.is_some()));
    }
    if want("stats") {
        let _ = write!(
            t,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n",
            i.connections, i.commands
        );
    }
    if want("keyspace") {
        t.push_str("# Keyspace\r\n");
        if !store.is_empty() {
            let _ = write!(t, "db0:keys={},expires={},avg_ttl=0\r\n", store.len(), store.expiring());
        }
    }
    t
}

/// CONFIG GET: name/value pairs of the parameters matching the patterns.
fn config_get(patterns: &[Vec<u8>], store: &Store, i: &Info<'_>, out: &mut Vec<u8>) {
    let params: [(&str, String); 9] = [
        ("port", format!("{}", i.port)),
        ("databases", String::from("1")),
        ("save", String::new()),
        ("appendonly", String::from(if i.aof.is_some() { "yes" } else { "no" })),
        ("appendfilename", String::from(i.aof.unwrap_or(""))),
        ("appendfsync", String::from(i.appendfsync)),
        ("maxmemory", format!("{}", store.maxmemory)),
        ("maxclients", format!("{}", i.max_clients)),
        ("timeout", format!("{}", i.timeout_s)),
    ];
    let hits: Vec<&(&str, String)> = params
        .iter()
        .filter(|(name, _)| {
            patterns.iter().any(|p| crate::glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
        })
        .collect();
    resp::array(out, hits.len() * 2);
    for (name, val) in hits {
        resp::bulk(out, name.as_bytes());
        resp::bulk(out, val.as_bytes());
    }
}
