//! Torito filesystem unit.
//!
//! Status: not started. It will provide files over the devices unit's
//! `BlockDevice` trait; no filesystem code exists yet, and this crate offers
//! no API until it does.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
