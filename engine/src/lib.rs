//! sendengine: the send engine daemon of an email service provider.
//!
//! Data flow (see DESIGN.md): `inject` accepts a transaction, `admit`
//! decides once what happens to the message (tenant, control headers,
//! suppression, limits, the `transform`s, DKIM) and commits it to the
//! spool (`sendengine_queue`) before answering 250, `schedule` moves
//! due recipients into the ready queues of `deliver`, whose workers hand
//! them to delivery servers with `smtp::client` and record each outcome in
//! the spool and the `events` log. `daemon` wires it all and shuts it down.

pub mod admin;
pub mod admit;
pub mod amqp;
pub mod amqp_in;
pub mod amqp_out;
pub mod bounce_in;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod dns;
pub mod domains;
pub mod engine;
pub mod events;
pub mod http_in;
pub mod inject;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod route;
pub mod schedule;
pub mod secrets;
pub mod signing_pool;
pub mod smtp;
pub mod systemd;
pub mod tenancy;
pub mod timefmt;
pub mod tracking;
pub mod transform;
pub mod values;
pub mod verify;
