//! Bounces for the send engine: classification of SMTP replies into the
//! categories operators know (rules kept as data), parsing of asynchronous
//! bounces, complaints and auto-replies into one record per recipient, and
//! the HMAC-checked VERP tags that tie a bounce back to its message.
//!
//! Pure functions, no I/O beyond [`parse_file_records`] and no async runtime,
//! so the daemon, `sendctl` and the fuzzer all share the same code.

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
pub use classify::{
    BUILTIN_RULES, Classifier, RulesError, builtin_classifier, classify, is_permanent,
};
pub use parse::{
    Kind, ParseError, Record, parse_file_records, parse_file_records_with, parse_message,
    parse_message_with,
};
