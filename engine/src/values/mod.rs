//! Plain value types and their syntax, shared by modules that must not
//! depend on each other: sizes and durations (`units`), and how a session
//! with a relay is set up (`relay`). This module imports nothing else of
//! the crate; it is the bottom layer of `engine/src`.

pub mod relay;
pub mod units;

pub use units::{parse_duration, parse_size};
