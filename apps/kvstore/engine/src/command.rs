//! The command table: names, arities and what each command may do.

/// A command that changes the keyspace (it goes to the append-only file).
pub const WRITE: u8 = 1;
/// A command that may grow memory (refused with `-OOM` beyond `maxmemory`).
pub const DENYOOM: u8 = 2;
/// A command about the server or the connection, not the keyspace.
pub const SERVER: u8 = 4;

/// One command.
#[derive(Debug)]
pub struct Spec {
    /// Upper-case name.
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (the name included), `-n`
    /// at least n.
    pub arity: i32,
    /// [`WRITE`], [`DENYOOM`], [`SERVER`].
    pub flags: u8,
}

impl Spec {
    /// Whether `argc` arguments (the name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 { argc == self.arity as usize } else { argc >= self.arity.unsigned_abs() as usize }
    }

    /// Whether the command has `flag`.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

const fn c(name: &'static str, arity: i32, flags: u8) -> Spec {
    Spec { name, arity, flags }
}

/// Every command the store answers.
pub static COMMANDS: &[Spec] = &[
    c("GET", 2, 0),
    c("SET", -3, WRITE | DENYOOM),
    c("DEL", -2, WRITE),
    c("UNLINK", -2, WRITE),
    c("EXISTS", -2, 0),
    c("INCR", 2, WRITE | DENYOOM),
    c("INCRBY", 3, WRITE | DENYOOM),
    c("DECR", 2, WRITE | DENYOOM),
    c("DECRBY", 3, WRITE | DENYOOM),
    c("APPEND", 3, WRITE | DENYOOM),
    c("STRLEN", 2, 0),
    c("MGET", -2, 0),
    c("MSET", -3, WRITE | DENYOOM),
    c("EXPIRE", -3, WRITE),
    c("PEXPIRE", -3, WRITE),
    c("EXPIREAT", -3, WRITE),
    c("PEXPIREAT", -3, WRITE),
    c("PERSIST", 2, WRITE),
    c("TTL", 2, 0),
    c("PTTL", 2, 0),
    c("KEYS", 2, 0),
    c("DBSIZE", 1, 0),
    c("FLUSHALL", -1, WRITE),
    c("FLUSHDB", -1, WRITE),
    c("PING", -1, SERVER),
    c("ECHO", 2, SERVER),
    c("QUIT", -1, SERVER),
    c("SELECT", 2, SERVER),
    c("INFO", -1, SERVER),
    c("CONFIG", -2, SERVER),
    c("COMMAND", -1, SERVER),
    c("CLIENT", -2, SERVER),
    c("SHUTDOWN", -1, SERVER),
];

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}
