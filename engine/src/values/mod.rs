//! Plain value types and their syntax, shared by modules that must not
//! depend on each other: sizes and durations (`units`), how a session with
//! a relay is set up (`relay`), the reply our SMTP server sends
//! (`reply`), and the syntax of a mailbox (`mailbox`). This module imports nothing else of the crate: it is the
//! bottom layer of `engine/src`.

pub mod mailbox;
pub mod relay;
pub mod reply;
pub mod units;

pub use reply::Reply;
pub use units::{parse_duration, parse_size};
