//! The HTTP injection API (`[http_in]`): KumoMTA's `POST /api/inject/v1`,
//! request and response as KumoMTA has them, so an application written for
//! KumoMTA works unchanged, plus API keys, idempotency keys, channel and
//! campaign (under `"sendengine"`), and `GET /api/openapi.json`.
//!
//! One file per job (the config section is `config::http_in`): `listener` (sockets,
//! TLS, timeouts), `request` (the JSON), `build` (templates and MIME),
//! `handler` (authentication, admission, the answer), `idempotency`,
//! `error` (the JSON refusals). Every message goes through the same
//! admission as SMTP (`admit`), and the 200 is sent only once all of
//! them are on disk, as SMTP's 250.

mod build;
mod error;
mod handler;
mod idempotency;
mod listener;
mod request;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use handler::InjectResponse;

use crate::config::HttpInSettings;
use crate::engine::Engine;
use idempotency::InFlight;

/// The OpenAPI document of the API, served at `GET /api/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

const METRIC_REQUESTS: &str = "sendengine_http_in_requests_total";
const METRIC_RECIPIENTS: &str = "sendengine_http_in_recipients_total";

/// What the handlers share.
struct Api {
    engine: Arc<Engine>,
    settings: HttpInSettings,
    /// `smtp_in.max_message_size`: one bound for every front door.
    max_message_size: u64,
    /// Requests being answered (`max_requests`).
    requests: Arc<Semaphore>,
    in_flight: Arc<InFlight>,
}

/// Binds every `[http_in] listen` address (none: nothing listens).
pub async fn bind(
    settings: &HttpInSettings,
) -> Result<Vec<TcpListener>, (SocketAddr, std::io::Error)> {
    let mut listeners = Vec::new();
    for addr in &settings.listen {
        listeners.push(TcpListener::bind(addr).await.map_err(|e| (*addr, e))?);
    }
    Ok(listeners)
}

/// Serves the API on `listeners` until `shutdown`; requests in flight are
/// answered first.
pub fn start(
    engine: &Arc<Engine>,
    settings: &HttpInSettings,
    max_message_size: u64,
    listeners: Vec<TcpListener>,
    tls: Option<TlsAcceptor>,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    if listeners.is_empty() {
        return Ok(Vec::new());
    }
    describe_metrics();
    let api = Arc::new(Api {
        engine: engine.clone(),
        settings: settings.clone(),
        max_message_size,
        requests: Arc::new(Semaphore::new(settings.max_requests)),
        in_flight: Arc::default(),
    });
    let app = Router::new()
        .route("/api/inject/v1", post(handler::inject))
        .route("/api/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api.clone());
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut tasks = vec![tokio::spawn(idempotency::expire(
        engine.spool.clone(),
        engine.cluster.clone(),
        shutdown.clone(),
    ))];
    if let Some(cluster) = &engine.cluster {
        tasks.push(tokio::spawn(idempotency::release_held(
            engine.spool.clone(),
            cluster.clone(),
            api.in_flight.clone(),
            shutdown.clone(),
        )));
    }
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            log::info!(
                "http_in: listening on {addr}{}",
                if tls.is_some() { " (HTTPS)" } else { "" }
            );
        }
        let (incoming, accept_task) =
            listener::incoming(listener, tls.clone(), slots.clone(), settings.read_timeout)?;
        let service = app
            .clone()
            .into_make_service_with_connect_info::<listener::ConnInfo>();
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(incoming, service).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            });
            if let Err(e) = served.await {
                log::error!("http_in: the server stopped: {e}");
            }
            accept_task.abort();
        }));
    }
    Ok(tasks)
}

async fn openapi() -> Response {
    let mut response = OPENAPI.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn not_found() -> Response {
    let e = error::ApiError::not_found(
        "no such endpoint: POST /api/inject/v1 injects, GET /api/openapi.json describes the API",
    );
    let mut response = e.into_response();
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn method_not_allowed() -> Response {
    let e = error::ApiError::not_found(
        "method not allowed: POST /api/inject/v1 injects, GET /api/openapi.json describes the API",
    );
    let mut response = e.into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

fn describe_metrics() {
    metrics::describe_counter!(METRIC_REQUESTS, "HTTP injection requests by status code");
    metrics::describe_counter!(
        METRIC_RECIPIENTS,
        "HTTP injection recipients by outcome (queued, failed)"
    );
}

fn count_request(status: u16) {
    metrics::counter!(METRIC_REQUESTS, "status" => status.to_string()).increment(1);
}

fn count_recipients(queued: usize, failed: usize) {
    metrics::counter!(METRIC_RECIPIENTS, "outcome" => "queued").increment(queued as u64);
    metrics::counter!(METRIC_RECIPIENTS, "outcome" => "failed").increment(failed as u64);
}
