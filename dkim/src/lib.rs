//! DKIM for the send engine: keys, their DNS records, and signing.
//!
//! A sender domain owns one or more [`DkimKey`]s (RSA-2048 by default, or
//! Ed25519), each published under a selector as a DNS TXT record
//! ([`DnsRecord`]). Signing goes through a [`Signer`] built once per key
//! (parsing a key costs more than signing with it); which keys sign and
//! which are only published during a rotation is the daemon's business
//! (`engine/src/tenancy/dkim.rs`). Messages are normalised to CRLF with
//! [`normalize_crlf`] before they are signed and sent.
//!
//! This crate does no I/O and needs no async runtime: RSA signing takes about
//! a third of a millisecond, so async callers run it on a blocking pool.

// A `pub` item this crate does not export is crate-private and says so
// (issue 16.4: no unused public item; scripts/check-unused-pub.py checks
// what is exported). Only here, not in Cargo.toml: test support modules
// are `pub` by habit.
#![warn(unreachable_pub)]

mod dns;
mod error;
mod key;
mod normalize;
mod signer;

pub use dns::{DnsRecord, default_selector};
pub use error::{KeyError, SignError};
pub use key::{DkimKey, KeyAlgorithm};
pub use normalize::normalize_crlf;
pub use signer::{Signer, sign_message};
