//! DKIM for the send engine: keys, their DNS records, and signing.
//!
//! A sender domain owns one or more [`DkimKey`]s (RSA-2048 by default, or
//! Ed25519), each published under a selector as a DNS TXT record
//! ([`DnsRecord`]). [`DomainKeys`] tracks which of them sign and which are
//! only kept published during a rotation. Signing goes through a [`Signer`]
//! built once per key (parsing a key costs more than signing with it), which
//! the daemon keeps in a [`SignerCache`]. Messages are normalised to CRLF with
//! [`normalize_crlf`] before they are signed and sent.
//!
//! This crate does no I/O and needs no async runtime: RSA signing takes about
//! a third of a millisecond, so async callers run it on a blocking pool.

mod cache;
mod dns;
mod error;
mod key;
mod normalize;
mod rotation;
mod signer;

pub use cache::SignerCache;
pub use dns::{DnsRecord, default_selector, selector_for_month};
pub use error::{KeyError, SignError};
pub use key::{DkimKey, Fingerprint, KeyAlgorithm};
pub use normalize::normalize_crlf;
pub use rotation::{DomainKey, DomainKeys, KeyState, RotationError};
pub use signer::{SIGNED_HEADERS, Signer, sign_message};
