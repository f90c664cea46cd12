//! The tracking listener's answers: `GET /c/<token>` is a 302 to the
//! link's original URL, `GET /o/<token>.gif` a 1×1 GIF, each recording a
//! `click` or `open` event; `HEAD` gets the same answer and records
//! nothing (link scanners probe with it). Only a token whose HMAC checks
//! and whose row is in the spool gets them: anything else is a 404 with
//! a JSON body, so the listener is never an open redirect. A spool that
//! cannot be read is a 503: the token may be fine, the client may retry.
//!
//! In cluster mode links carry the admitting node's name first
//! (`/<node>/c/<token>`), so that a proxy in front of the fleet can route
//! them by path to the node whose spool holds their URLs; a node answers
//! only its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sendengine_queue::{Spool, SpoolError, TrackedMessage, TrackingKey};

use super::token::TokenKey;
use crate::events::{Event, EventKind, EventLog};
use crate::timefmt::{now_ms, rfc3339};

/// A transparent 1×1 GIF (43 bytes).
const PIXEL_GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";
/// Longest `User-Agent` kept in an event.
const MAX_USER_AGENT_BYTES: usize = 512;

/// What the handlers share.
pub(super) struct Handlers {
    pub(super) spool: Spool,
    pub(super) events: EventLog,
    pub(super) tokens: TokenKey,
    /// `[cluster] node`: links then start with `/<node>`.
    pub(super) node: Option<String>,
}

/// The routes; every other path and method is answered 404/405 in JSON.
pub(super) fn router(handlers: Arc<Handlers>) -> Router {
    Router::new()
        .route(
            "/c/{token}",
            get(answer::<false>).fallback(method_not_allowed),
        )
        .route(
            "/o/{file}",
            get(answer::<true>).fallback(method_not_allowed),
        )
        .route(
            "/{node}/c/{token}",
            get(answer::<false>).fallback(method_not_allowed),
        )
        .route(
            "/{node}/o/{file}",
            get(answer::<true>).fallback(method_not_allowed),
        )
        .fallback(unknown_path)
        .with_state(handlers)
}

/// What a request says about its client.
struct Client {
    address: SocketAddr,
    user_agent: Option<String>,
    /// `GET` (recorded) or `HEAD` (answered only).
    records: bool,
}

impl Client {
    fn of(address: SocketAddr, method: &Method, headers: &HeaderMap) -> Client {
        let user_agent = headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .map(|mut ua| {
                let mut cut = ua.len().min(MAX_USER_AGENT_BYTES);
                while !ua.is_char_boundary(cut) {
                    cut -= 1;
                }
                ua.truncate(cut);
                ua
            });
        Client {
            address,
            user_agent,
            records: method == Method::GET,
        }
    }
}

/// The path's parameters: `token` (or `file`), and `node` in cluster mode.
type PathParams = Result<Path<HashMap<String, String>>, PathRejection>;

/// `/c/<token>` (`OPEN` false) and `/o/<token>.gif` (`OPEN` true), with
/// or without a node first.
async fn answer<const OPEN: bool>(
    State(handlers): State<Arc<Handlers>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    path: PathParams,
) -> Response {
    let client = Client::of(address, &method, &headers);
    match handlers.own(path, if OPEN { "file" } else { "token" }) {
        Ok(file) if OPEN => answer_open(&handlers, client, file).await,
        Ok(token) => answer_click(&handlers, client, token).await,
        Err(refused) => refused,
    }
}

async fn answer_click(handlers: &Handlers, client: Client, token: Option<String>) -> Response {
    let Some((key, link)) = token.and_then(|t| handlers.tokens.verify_click(&t)) else {
        return not_found("token", "unknown or forged tracking token");
    };
    let message = match handlers.lookup(key).await {
        Ok(Some(message)) => message,
        Ok(None) => return not_found("token", "unknown or expired tracking token"),
        Err(e) => return unavailable(&e),
    };
    let Some(url) = message.urls.get(link as usize) else {
        return not_found("token", "the message has no such link");
    };
    let Some(location) = location(url) else {
        return not_found(
            "token",
            "the link's URL cannot be sent in a Location header",
        );
    };
    if client.records {
        handlers.record(EventKind::Click, &message, Some(url), client);
    }
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
}

async fn answer_open(handlers: &Handlers, client: Client, file: Option<String>) -> Response {
    let key = file.and_then(|f| handlers.tokens.verify_open(f.strip_suffix(".gif")?));
    let Some(key) = key else {
        return not_found("token", "unknown or forged tracking token");
    };
    let message = match handlers.lookup(key).await {
        Ok(Some(message)) => message,
        Ok(None) => return not_found("token", "unknown or expired tracking token"),
        Err(e) => return unavailable(&e),
    };
    if client.records {
        handlers.record(EventKind::Open, &message, None, client);
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        PIXEL_GIF,
    )
        .into_response()
}

async fn unknown_path() -> Response {
    unknown_path_response()
}

fn unknown_path_response() -> Response {
    not_found(
        "path",
        "not a tracking URL (expected /c/<token> or /o/<token>.gif)",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
        "only GET and HEAD are answered",
    )
}

impl Handlers {
    /// Parameter `name` of the path (`None`: unreadable), unless the
    /// path names a node that is not this one.
    fn own(&self, path: PathParams, name: &str) -> Result<Option<String>, Response> {
        let Ok(Path(mut params)) = path else {
            return Ok(None);
        };
        match (params.get("node"), &self.node) {
            (None, _) => {}
            (Some(node), Some(own)) if node == own => {}
            (Some(_), Some(_)) => {
                return Err(not_found(
                    "node",
                    "the link belongs to another node of the fleet: route /<node>/ to that node",
                ));
            }
            (Some(_), None) => return Err(unknown_path_response()),
        }
        Ok(params.remove(name))
    }

    /// The tracked-links row, read off the async threads.
    async fn lookup(&self, key: TrackingKey) -> Result<Option<TrackedMessage>, SpoolError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.tracked(key))
            .await
            .unwrap_or(Err(SpoolError::Closed))
    }

    fn record(&self, kind: EventKind, message: &TrackedMessage, url: Option<&str>, client: Client) {
        let now = now_ms();
        let meta = &message.meta;
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let event = Event {
            time: rfc3339(now),
            kind,
            message_id: sendengine_queue::format_id(message.id),
            header_message_id: message.header_message_id.clone(),
            sender: message.sender.clone(),
            recipient: message.recipient.clone().unwrap_or_default(),
            tenant: opt(&meta.tenant),
            group: opt(&meta.group),
            channel: meta.channel.clone(),
            campaign: opt(&meta.campaign),
            route: opt(&meta.route),
            remote_host: Some(client.address.ip().to_string()),
            reply: None,
            bounce_class: None,
            bounce_type: None,
            tls: None,
            dkim: None,
            attempt: 0,
            queue_time_ms: now.saturating_sub(meta.received_at_ms),
            size: 0,
            url: url.map(str::to_owned),
            user_agent: client.user_agent,
            metadata: crate::events::metadata_of(meta),
        };
        crate::metrics::tracking_hit(&event);
        self.events.emit(event);
    }
}

/// The URL as a `Location` value: bytes a header cannot carry as they
/// are (non-ASCII, controls, space) percent-encoded, as browsers send them.
fn location(url: &str) -> Option<HeaderValue> {
    let mut encoded = String::with_capacity(url.len());
    for byte in url.bytes() {
        if (0x21..0x7f).contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).ok()
}

fn not_found(field: &str, problem: &str) -> Response {
    crate::metrics::tracking_not_found();
    error(StatusCode::NOT_FOUND, field, problem)
}

fn unavailable(e: &SpoolError) -> Response {
    log::warn!("tracking: the spool cannot be read: {e}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "spool",
        "the link cannot be looked up right now; try again shortly",
    )
}

/// An error answer: the status and `{"error": {"field": ..., "problem": ...}}`.
fn error(status: StatusCode, field: &str, problem: &str) -> Response {
    let body = serde_json::json!({ "error": { "field": field, "problem": problem } });
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendengine_queue::{MessageMeta, NewMessage, SpoolConfig, TrackedLinks};
    use tower::ServiceExt;

    /// A spool with one tracked message, and the router of node `n1`.
    fn node_router(dir: &std::path::Path) -> (Router, TrackingKey, Arc<Handlers>) {
        let spool = Spool::open(SpoolConfig::new(dir)).unwrap();
        let key = TrackingKey {
            time_ms: now_ms(),
            nonce: 1,
        };
        spool
            .insert_blocking(
                NewMessage {
                    mail_from: "a@example.com".into(),
                    recipients: vec!["b@example.net".into()],
                    body: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
                    meta: MessageMeta::default(),
                    quotas: Vec::new(),
                    idempotency: None,
                    tracking: Some(TrackedLinks {
                        key,
                        header_message_id: "<m@x>".into(),
                        urls: vec!["https://x.example/".into()],
                        retain: std::time::Duration::from_secs(86_400),
                    }),
                },
                false,
            )
            .unwrap();
        let handlers = Arc::new(Handlers {
            spool,
            events: EventLog::disabled(),
            tokens: TokenKey::new(&[3; 32]),
            node: Some("n1".into()),
        });
        (router(handlers.clone()), key, handlers)
    }

    async fn status(
        router: &Router,
        method: &str,
        path: &str,
    ) -> (StatusCode, Option<HeaderValue>) {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))));
        let response = router.clone().oneshot(request).await.unwrap();
        (
            response.status(),
            response.headers().get(header::LOCATION).cloned(),
        )
    }

    #[tokio::test]
    async fn in_a_fleet_a_node_answers_its_own_links_only() {
        let dir = tempfile::tempdir().unwrap();
        let (router, key, handlers) = node_router(dir.path());
        let token = handlers.tokens.click(key, 0);
        let (own, location) = status(&router, "GET", &format!("/n1/c/{token}")).await;
        assert_eq!(
            (own, location.unwrap()),
            (
                StatusCode::FOUND,
                HeaderValue::from_static("https://x.example/")
            )
        );
        let (head, _) = status(&router, "HEAD", &format!("/n1/c/{token}")).await;
        assert_eq!(head, StatusCode::FOUND);
        let (other, _) = status(&router, "GET", &format!("/n2/c/{token}")).await;
        assert_eq!(other, StatusCode::NOT_FOUND);
        let (no_link, _) = status(
            &router,
            "GET",
            &format!("/n1/c/{}", handlers.tokens.click(key, 1)),
        )
        .await;
        assert_eq!(no_link, StatusCode::NOT_FOUND);
        let pixel = format!("/n1/o/{}.gif", handlers.tokens.open(key));
        assert_eq!(status(&router, "GET", &pixel).await.0, StatusCode::OK);
        assert_eq!(
            status(&router, "DELETE", &pixel).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn locations_are_percent_encoded_where_headers_need_it() {
        let value = location("https://x.example/ü?a=b c").unwrap();
        assert_eq!(value, "https://x.example/%C3%BC?a=b%20c");
        assert_eq!(
            location("https://x.example/a?b=1&c=2").unwrap(),
            "https://x.example/a?b=1&c=2"
        );
    }

    #[test]
    fn the_pixel_is_a_gif() {
        assert!(PIXEL_GIF.starts_with(b"GIF89a"));
        assert_eq!(PIXEL_GIF.len(), 43);
    }
}
