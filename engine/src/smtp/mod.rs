//! SMTP on both sides. The server side is one listener/session core
//! (`listener`: accept loop and connection limits; `session`, `data`,
//! `sasl`: the commands; `budget`: DATA bytes in flight; `connection`,
//! `command`, `reply` (EHLO; every other reply is a `crate::values::Reply`):
//! the wire) with a policy per listener, which lives
//! outside this module: `crate::inject` for injection, `crate::bounce_in`
//! for bounces. The outbound `client` is what the delivery workers use.
//! Nothing here knows the engine, so the SMTP code stands on its own.

pub mod auth_limit;
pub mod budget;
pub mod client;
pub mod command;
pub mod connection;
mod data;
pub mod listener;
pub mod reply;
pub mod sasl;
pub mod session;
pub mod stream;
