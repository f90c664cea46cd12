//! `POST /api/inject/v1`: authenticate, read and check the request, make
//! one message per recipient and admit each exactly as SMTP would
//! (`admit::admit_with`), then answer KumoMTA's
//! `{success_count, fail_count, failed_recipients, errors}`.
//!
//! Order of refusals: 401 before the body is read (a stranger's upload is
//! not read), 503 when `max_requests` are being answered, 413 for a body
//! or a recipient list over its bound, 400 for anything malformed. The 200
//! goes out only once every accepted message is committed (admission waits
//! for the spool's group commit); the admissions of one request run
//! `admissions_per_request` at a time, so they share commits.
//!
//! A recipient the spool could not take now (4.3.x/4.4.x: full disk,
//! shutdown, a shared service down) makes the answer 503 with
//! `Retry-After`; one refused by a sending limit, when nothing was queued,
//! makes it 429. Both bodies name what was queued, and a retry with the
//! same idempotency key queues only the rest. Other refusals (suppressed,
//! unverified sender domain, a template error) fail their recipient in a
//! 200, as in KumoMTA.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::Api;
use super::build::{self, Compiled};
use super::error::ApiError;
use super::idempotency::{Claim, Known};
use super::listener::ConnInfo;
use super::request::{self, InjectRequest, Recipient};
use crate::admit::{Extras, admit_with};
use crate::cluster::idempotency::Holder;
use crate::engine::{ClientInfo, Envelope};
use crate::timefmt::now_ms;
use crate::values::Reply;

/// Seconds a client waits after a 503 for local trouble.
const RETRY_AFTER_BUSY: u64 = 5;
/// Seconds a client waits after a 429 for a sending limit.
const RETRY_AFTER_LIMIT: u64 = 60;

/// KumoMTA's answer.
#[derive(Debug, Serialize)]
pub struct InjectResponse {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

/// What happened to one recipient.
enum Outcome {
    Queued,
    /// Refused for good, or the recipient's template failed.
    Failed(String),
    /// A sending limit refused it for now.
    Limited(String),
    /// The spool could not take it now.
    Busy(String),
}

pub(super) async fn inject(
    State(api): State<Arc<Api>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _busy = conn.busy();
    let response = match answer(&api, &conn, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    super::count_request(response.status().as_u16());
    response
}

async fn answer(
    api: &Arc<Api>,
    conn: &ConnInfo,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authenticate(api, headers)?;
    let _slot = api.requests.clone().try_acquire_owned().map_err(|_| {
        ApiError::busy(
            format!(
                "{} requests are being answered (http_in.max_requests): retry shortly",
                api.settings.max_requests
            ),
            1,
        )
    })?;
    let body = read_body(api, headers, body).await?;
    let mut request = request::parse(&body, api.settings.max_recipients)?;
    let key = idempotency_key(&request, headers)?;
    let claim = match key {
        Some(key) => Some(Arc::new(Claim::take(
            &api.in_flight,
            &user,
            &key,
            &body,
            api.settings.idempotency_ttl,
        )?)),
        None => None,
    };
    drop(body);
    let queued = match &claim {
        Some(claim) => {
            let elsewhere = match fleet_known(api, claim).await? {
                Known::Answered(stored) => return Ok(json_response(StatusCode::OK, stored)),
                Known::Partial(queued) => queued,
            };
            match known(api, claim).await? {
                Known::Answered(stored) => return Ok(json_response(StatusCode::OK, stored)),
                Known::Partial(queued) => queued.union(&elsewhere).copied().collect(),
            }
        }
        None => Default::default(),
    };
    let content = std::mem::replace(&mut request.content, request::Content::Raw(String::new()));
    let compiled = build::compile(content, request.dialect)?;
    let (emails, outcomes) =
        admit_all(api, conn, user, request, compiled, claim.clone(), queued).await;
    respond(&emails, outcomes, claim.as_deref(), api).await
}

/// The user whose API key the bearer token is; 401 otherwise.
fn authenticate(api: &Api, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "send an API key: Authorization: Bearer <key> (sendctl user api-key create USER)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or_default();
    let snapshot = api.engine.tenancy.snapshot();
    match snapshot.api_key_user(token) {
        Some(user) => Ok(user.to_owned()),
        None => Err(ApiError::unauthorized(
            "the API key is not valid (unknown, revoked or mistyped)",
        )),
    }
}

/// The body, within `max_body_size` (413) and `request_timeout` (408).
async fn read_body(api: &Api, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let max = api.settings.max_body_bytes;
    let too_large = || {
        ApiError::too_large(
            "",
            format!(
                "the body is larger than {max} bytes (http_in.max_body_size): split the request"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(api.settings.request_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes.to_vec()),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "",
            format!("the body could not be read: {e}"),
        )),
        Err(_) => Err(ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            field: String::new(),
            message: format!(
                "the body did not arrive within {}s (http_in.request_timeout)",
                api.settings.request_timeout.as_secs()
            ),
            retry_after: None,
        }),
    }
}

/// Whether reading stopped at the length limit (`http-body-util`'s error,
/// known here by its text: the crate is not ours to name).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}

/// The request's key: the body's `sendengine.idempotency_key` or the
/// `Idempotency-Key` header. Both may be given only with the same value:
/// were one to win silently, a client retrying with the other would not
/// be recognised and its recipients would be queued twice.
fn idempotency_key(
    request: &InjectRequest,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    let from_header = header_key(headers)?;
    match (&request.ours.idempotency_key, from_header) {
        (Some(body), Some(header)) if *body != header => Err(ApiError::bad_request(
            "Idempotency-Key",
            format!(
                "the header says {header:?} but sendengine.idempotency_key says {body:?}: \
                 give the key in one of them, or the same key in both"
            ),
        )),
        (Some(body), _) => Ok(Some(body.clone())),
        (None, header) => Ok(header),
    }
}

/// The `Idempotency-Key` header's value, if given. Given twice it is
/// refused: which of the two keys the client meant cannot be known.
fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "Idempotency-Key",
            "the header is given more than once: send one Idempotency-Key header",
        ));
    }
    match value.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= request::MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key",
            format!(
                "must have 1 to {} visible ASCII characters",
                request::MAX_IDEMPOTENCY_KEY
            ),
        )),
    }
}

/// With `[cluster]`: takes the key in the fleet's record for this try
/// (`cluster::idempotency`): the answer another node stored, or the
/// recipients tries on other nodes queued; an error when another node
/// holds the key, or for another request. Standalone: nothing known.
async fn fleet_known(api: &Api, claim: &Claim) -> Result<Known, ApiError> {
    let Some(cluster) = &api.engine.cluster else {
        return Ok(Known::Partial(Default::default()));
    };
    let holder = cluster
        .idempotency_keys
        .take(&claim.fleet_key(), now_ms())
        .await
        .map_err(|e| {
            ApiError::busy(
                format!(
                    "the fleet's idempotency records cannot be read now ({e}): retry after \
                     Retry-After with the same key, or send without a key"
                ),
                RETRY_AFTER_BUSY,
            )
        })?;
    match holder {
        Holder::ThisNode(elsewhere) => Ok(Known::Partial(elsewhere)),
        Holder::Answered(stored) => Ok(Known::Answered(stored)),
        Holder::OtherRequest => Err(super::idempotency::other_request()),
        Holder::OtherNode(holder) => Err(ApiError::busy(
            format!(
                "node `{holder}` is answering this key, or its try was cut short there: retry \
                 after Retry-After with the same key; only `{holder}` can finish it without \
                 queuing a recipient twice"
            ),
            RETRY_AFTER_BUSY,
        )),
    }
}

/// With `[cluster]`, after a try without a final answer: lets the key go
/// with the recipients queued so far, so that a retry on any node queues
/// only the others. A failure leaves the key held here (logged).
async fn release_key(api: &Api, claim: &Claim, queued: &[usize]) {
    let Some(cluster) = &api.engine.cluster else {
        return;
    };
    let keys = &cluster.idempotency_keys;
    if let Err(e) = keys.release(&claim.fleet_key(), queued).await {
        log::warn!(
            "http_in: an idempotency key could not be let go for the fleet (retries on other \
             nodes get 503 until one reaches this node): {e}"
        );
    }
}

async fn known(api: &Api, claim: &Arc<Claim>) -> Result<Known, ApiError> {
    let (spool, claim) = (api.engine.spool.clone(), claim.clone());
    tokio::task::spawn_blocking(move || claim.known(&spool))
        .await
        .map_err(|e| ApiError::internal(format!("the idempotency lookup failed: {e}")))?
}

/// What every admission of one request shares.
struct Shared {
    api: Arc<Api>,
    compiled: Compiled,
    globals: Map<String, Value>,
    /// X-Channel / X-Campaign-Id lines, put last in the header so they
    /// win over the content's own (admission reads and removes them).
    control: Vec<u8>,
    sender: String,
    user: String,
    conn: ConnInfo,
    claim: Option<Arc<Claim>>,
}

/// Bytes of rendered messages one request has in admission at once, on
/// top of the count bound (`admissions_per_request`): with `max_requests`
/// at 16, at most 128MB of messages wait for their commit.
const BYTES_PER_REQUEST: usize = 8 << 20;

/// Renders every recipient not already queued and admits it, at most
/// `admissions_per_request` (and `BYTES_PER_REQUEST`) at once; returns the
/// addresses and outcomes in request order.
async fn admit_all(
    api: &Arc<Api>,
    conn: &ConnInfo,
    user: String,
    request: InjectRequest,
    compiled: Compiled,
    claim: Option<Arc<Claim>>,
    queued: std::collections::HashSet<usize>,
) -> (Vec<String>, Vec<Outcome>) {
    let control = control_headers(&request);
    let shared = Arc::new(Shared {
        api: api.clone(),
        compiled,
        globals: request.substitutions,
        control,
        sender: request.envelope_sender,
        user,
        conn: conn.clone(),
        claim,
    });
    let emails: Vec<String> = request.recipients.iter().map(|r| r.email.clone()).collect();
    let mut outcomes: Vec<Option<Outcome>> = (0..emails.len()).map(|_| None).collect();
    let mut running: JoinSet<(usize, usize, Outcome)> = JoinSet::new();
    // Bytes of the running admissions' messages (a failed task's are
    // never given back: the bound only gets stricter).
    let mut bytes = 0;
    for (index, recipient) in request.recipients.into_iter().enumerate() {
        if queued.contains(&index) {
            outcomes[index] = Some(Outcome::Queued);
            continue;
        }
        let data = match message(&shared, &recipient) {
            Ok(data) => data,
            Err(why) => {
                outcomes[index] = Some(Outcome::Failed(why));
                continue;
            }
        };
        while running.len() >= api.settings.admissions_per_request
            || (!running.is_empty() && bytes + data.len() > BYTES_PER_REQUEST)
        {
            if let Some(Ok((i, size, outcome))) = running.join_next().await {
                outcomes[i] = Some(outcome);
                bytes -= size;
            }
        }
        let (shared, size) = (shared.clone(), data.len());
        bytes += size;
        running.spawn(async move {
            (
                index,
                size,
                admit_one(&shared, index, recipient, data).await,
            )
        });
    }
    while let Some(joined) = running.join_next().await {
        if let Ok((i, _, outcome)) = joined {
            outcomes[i] = Some(outcome);
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Busy("the admission task failed".into())))
        .collect();
    (emails, outcomes)
}

/// The recipient's message, rendered, with the control headers, within
/// `max_message_size`.
fn message(shared: &Shared, recipient: &Recipient) -> Result<Vec<u8>, String> {
    let data = shared.compiled.render(recipient, &shared.globals)?;
    let data = crate::amqp_in::message::with_control_headers(data, &shared.control);
    let max = shared.api.max_message_size;
    if data.len() as u64 > max {
        return Err(format!(
            "the message is {} bytes, more than {max} (smtp_in.max_message_size)",
            data.len()
        ));
    }
    Ok(data)
}

async fn admit_one(shared: &Shared, index: usize, recipient: Recipient, data: Vec<u8>) -> Outcome {
    let recipients = vec![recipient.email];
    let envelope = Envelope {
        smtputf8: Envelope::has_utf8_address(&shared.sender, &recipients),
        mail_from: shared.sender.clone(),
        recipients,
        client: ClientInfo {
            peer: shared.conn.peer,
            helo: "http".into(),
            tls: shared.conn.tls,
            auth_user: Some(shared.user.clone()),
        },
    };
    let extras = Extras {
        metadata: recipient
            .metadata
            .map(|m| m.to_string())
            .unwrap_or_default(),
        idempotency: shared.claim.as_ref().map(|c| c.mark(index)),
    };
    outcome(admit_with(&shared.api.engine, envelope, data, extras).await)
}

fn outcome(reply: Reply) -> Outcome {
    let text = format!("{} {} {}", reply.code, reply.enhanced, reply.text);
    match reply.code {
        200..=299 => Outcome::Queued,
        400..=499 if reply.enhanced.starts_with("4.3.") || reply.enhanced.starts_with("4.4.") => {
            Outcome::Busy(text)
        }
        400..=499 => Outcome::Limited(text),
        _ => Outcome::Failed(text),
    }
}

fn control_headers(request: &InjectRequest) -> Vec<u8> {
    let mut control = Vec::new();
    for (name, value) in [
        ("X-Channel", &request.ours.channel),
        ("X-Campaign-Id", &request.ours.campaign),
    ] {
        if let Some(value) = value {
            control.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    control
}

/// The answer for these outcomes; a final one is stored under the key
/// (durably) before it is sent.
async fn respond(
    emails: &[String],
    outcomes: Vec<Outcome>,
    claim: Option<&Claim>,
    api: &Api,
) -> Result<Response, ApiError> {
    let mut answer = InjectResponse {
        success_count: 0,
        fail_count: 0,
        failed_recipients: Vec::new(),
        errors: Vec::new(),
    };
    let queued: Vec<usize> = (outcomes.iter().enumerate())
        .filter(|(_, outcome)| matches!(outcome, Outcome::Queued))
        .map(|(index, _)| index)
        .collect();
    let (mut busy, mut limited) = (None, None);
    for (email, outcome) in emails.iter().zip(outcomes) {
        let why = match outcome {
            Outcome::Queued => {
                answer.success_count += 1;
                continue;
            }
            Outcome::Failed(why) => why,
            Outcome::Limited(why) => limited.insert(why).clone(),
            Outcome::Busy(why) => busy.insert(why).clone(),
        };
        answer.fail_count += 1;
        answer.failed_recipients.push(email.clone());
        answer.errors.push(format!("{email}: {why}"));
    }
    super::count_recipients(answer.success_count, answer.fail_count);
    // A try without a final answer: the retry queues only the others.
    let retry = if let Some(why) = busy {
        Some(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            &why,
            &answer,
            RETRY_AFTER_BUSY,
        ))
    } else {
        let none_queued = limited.filter(|_| answer.success_count == 0);
        none_queued.map(|why| {
            retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                &why,
                &answer,
                RETRY_AFTER_LIMIT,
            )
        })
    };
    if let Some(response) = retry {
        if let Some(claim) = claim {
            release_key(api, claim, &queued).await;
        }
        return Ok(response);
    }
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    if let Some(claim) = claim {
        store_answer(api, claim, &body).await;
    }
    Ok(json_response(StatusCode::OK, body))
}

/// 429/503: what was done, what to do, and when.
fn retry_later(status: StatusCode, why: &str, answer: &InjectResponse, seconds: u64) -> Response {
    let message = format!(
        "{} of {} recipients are queued; the others could not be now ({why}): send the same \
         request again after Retry-After with the same idempotency key, and only the others \
         are queued",
        answer.success_count,
        answer.success_count + answer.fail_count
    );
    let mut body = serde_json::to_value(answer).unwrap_or_default();
    body["error"] = serde_json::json!({ "field": "", "message": message });
    let mut response = json_response(status, serde_json::to_vec(&body).unwrap_or_default());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Writes the answer under the key, in the spool and then in the fleet's
/// record. A failure is logged, not answered: every queued message has its
/// mark, so a retry still queues nothing twice (where only the fleet's
/// record missed the answer, other nodes answer 503 until a retry reaches
/// this node, this node starts again, or the key expires).
async fn store_answer(api: &Api, claim: &Claim, body: &[u8]) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    api.engine.spool.idempotency_put(
        vec![claim.answer(body)],
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    if let Ok(Err(e)) = rx.await {
        log::warn!("http_in: the answer of an idempotent request could not be stored: {e}");
    }
    if let Some(cluster) = &api.engine.cluster {
        let key = claim.fleet_key();
        if let Err(e) = cluster.idempotency_keys.answered(&key, body).await {
            log::warn!(
                "http_in: the answer of an idempotent request could not be stored for the fleet: {e}"
            );
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
