//! SMTP on both sides: the injection server (`server`, with its command
//! parser `command`, buffered I/O `connection` and `reply`), and the
//! outbound `client` the delivery workers use.

pub mod auth_limit;
pub mod client;
pub mod command;
pub mod connection;
pub mod reply;
pub mod server;
pub mod stream;
