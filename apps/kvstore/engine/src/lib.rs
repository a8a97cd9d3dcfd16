//! The pure part of the kvstore appliance, tested on the host: RESP2
//! ([`resp`]), the command table ([`command`]), the keyspace and its
//! commands ([`store`]), the server commands ([`server`]), glob patterns
//! ([`glob`]) and the append-only file's replay ([`aof`]). The appliance
//! (`apps/kvstore/src/main.rs`) adds sockets, threads, files and clocks.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod aof;
pub mod command;
pub mod glob;
pub mod resp;
pub mod server;
pub mod store;

#[cfg(test)]
mod tests;
