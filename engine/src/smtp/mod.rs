//! SMTP on both sides. The server side is one listener/session core
//! (`listener`: accept loop and connection limits; `session`, `data`,
//! `sasl`: the commands; `budget`: DATA bytes in flight; `connection`,
//! `command`, `reply`: the wire) with a policy per listener: `server` for
//! injection, `crate::bounce_in` for bounces. The outbound `client` is what
//! the delivery workers use.

pub mod auth_limit;
pub mod budget;
pub mod client;
pub mod command;
pub mod connection;
mod data;
pub mod listener;
pub mod reply;
pub mod sasl;
pub mod server;
pub mod session;
pub mod stream;
