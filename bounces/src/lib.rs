//! Bounces for the send engine: classification of SMTP replies into the
//! categories operators know (rules kept as data), parsing of asynchronous
//! bounces, complaints and auto-replies into one record per recipient, and
//! the HMAC-checked VERP tags that tie a bounce back to its message.
//!
//! Pure functions, no I/O beyond [`parse_file_records`] and no async runtime,
//! so the daemon, `sendctl` and the fuzzer all share the same code.

// A `pub` item this crate does not export is crate-private and says so
// (issue 16.4: no unused public item; scripts/check-unused-pub.py checks
// what is exported). Only here, not in Cargo.toml: test support modules
// are `pub` by habit.
#![warn(unreachable_pub)]

mod category;
mod classify;
mod dsn;
mod fml;
mod mail;
mod parse;
mod ses;
mod text;
pub mod verp;

pub use category::{Category, Classification};
pub use classify::{Classifier, RulesError, classify};
pub use parse::{
    Kind, ParseError, Record, is_complaint_type, parse_file_records, parse_message,
    parse_message_with,
};
