//! The admin socket: how operators and the application configure and
//! inspect a running daemon (the `sendctl` CLI is one client).
//!
//! `server` owns the Unix socket and the connections, `protocol` the JSON
//! line frames, `commands` the argument fields each command takes
//! (`object_fields`: the fields of the objects `put` takes); the
//! handlers live per noun: `objects` (server, group, user, template,
//! domain), `queue` (and `history`, of messages that left it), `status`,
//! `dkim`, `suppression`, `usage`, `api_keys`, `report`, `server_test`, `log` (the event log read
//! back) and `fleet` (cluster mode). Every
//! handler returns a JSON value or an `AdminError`; nothing a client sends
//! can end its connection early or stop the daemon.

pub mod api_keys;
pub mod commands;
pub mod dkim;
pub mod fleet;
pub mod history;
pub mod log;
pub mod object_fields;
pub mod objects;
pub mod protocol;
pub mod queue;
pub mod report;
pub mod server;
pub mod server_test;
pub mod status;
pub mod suppression;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::engine::Engine;
use protocol::{AdminError, Args, PROTOCOL_VERSION, Request};

pub use server::{AdminStartError, bind, serve};

/// What the handlers share.
pub struct AdminContext {
    pub engine: Arc<Engine>,
    pub started: Instant,
    /// The SMTP listeners' bound addresses.
    pub listeners: Vec<SocketAddr>,
    /// `[events] path`: the log `log` reads back.
    pub events_path: Option<std::path::PathBuf>,
}

/// Runs one request.
pub async fn handle(ctx: &Arc<AdminContext>, request: Request) -> Result<Value, AdminError> {
    commands::check_fields(&request.cmd, &request.args)?;
    let args = Args(&request.args);
    let (noun, verb) = request
        .cmd
        .split_once('.')
        .unwrap_or((request.cmd.as_str(), ""));
    match (noun, verb) {
        ("hello", "") => Ok(json!({
            "protocol": PROTOCOL_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
        })),
        ("status", "") => status::status(ctx).await,
        ("report", "") => report::day_report(ctx, &args).await,
        ("log", "") => log::read(ctx, &args).await,
        ("server", "test") => server_test::run(ctx, &args).await,
        ("server", "enable") => objects::set_enabled(ctx, &args, true).await,
        ("server", "disable") => objects::set_enabled(ctx, &args, false).await,
        ("domain", "verify") => objects::verify_domain(ctx, &args).await,
        ("domain", "records") => objects::domain_records(ctx, &args).await,
        ("queue", verb) => queue::handle(ctx, verb, &args).await,
        ("dkim", verb) => dkim::handle(ctx, verb, &args).await,
        ("suppression", verb) => suppression::handle(ctx, verb, &args).await,
        ("user", "usage") => usage::user_usage(ctx, &args).await,
        ("user", verb) if verb.starts_with("api_key.") => api_keys::handle(ctx, verb, &args).await,
        ("fleet", verb) => fleet::handle(ctx, verb, &args).await,
        (noun, verb) => match objects::Kind::from_noun(noun) {
            Some(kind) => objects::handle(ctx, kind, verb, &args).await,
            None => Err(unknown(&request.cmd)),
        },
    }
}

fn unknown(cmd: &str) -> AdminError {
    let all: Vec<&str> = commands::COMMANDS.iter().map(|c| c.cmd).collect();
    let hint = commands::nearest(cmd, &all)
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    AdminError::new(
        "unknown_command",
        format!(
            "`{cmd}` is not a command; {hint}the commands: {}",
            all.join(", ")
        ),
    )
}

/// Runs blocking work (spool reads and writes wait for the disk) off the
/// async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AdminError::internal(format!("the request's task failed: {e}")))?
}
