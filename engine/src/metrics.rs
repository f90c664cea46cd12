//! Prometheus metrics: every name, label set and bucket list of the engine,
//! and the small helpers the code paths call (one line each).
//!
//! The helpers go through the `metrics` facade, which costs next to nothing
//! until `start` installs the Prometheus recorder (`[metrics] listen` set).
//! Label values are static strings (channel, outcome, bounce category,
//! refusal reason) or the route name; direct-delivery sites (one per
//! recipient domain) share the route label `direct`, so no label grows
//! with the number of recipients, messages or domains. A `tenant` label is
//! added to the received, recipient and bounce counts only when
//! `[metrics] tenant_labels = true`.
//!
//! Counts that are cheap to read from the spool and the routes (queue
//! sizes, spool file size, ready-queue depth, connections) are not touched
//! on the hot path: a refresh task in `crate::daemon` reads them every
//! `REFRESH_INTERVAL` and sets them with `set_spool_gauges` and
//! `set_route_gauges`, so this module needs no `Engine`. The spool's own commit metrics are in
//! `sendengine_queue::metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sendengine_queue::{MessageMeta, QueueCounts, SpoolStats};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MetricsSection;
use crate::events::{Event, EventKind};

mod handles;
mod http;
mod tracking;

pub use tracking::{
    TRACKED_LINKS, TRACKED_MESSAGES, TRACKING_HITS, TRACKING_NOT_FOUND, message_tracked,
    tracking_hit, tracking_not_found,
};

// ---- names ----------------------------------------------------------------

/// Messages accepted (250 to DATA), by route, channel [, tenant].
pub const MESSAGES_RECEIVED: &str = "sendengine_messages_received_total";
/// Recipients by route, channel, outcome [, tenant]; outcome is one of
/// `received`, `delivered`, `deferred`, `bounced`, `expired`, `suppressed`.
pub const RECIPIENTS: &str = "sendengine_recipients_total";
/// Bounced recipients by route, channel, category [, tenant].
pub const BOUNCES: &str = "sendengine_bounces_total";
/// Injections refused, by reason (see `Refusal`).
pub const INJECTION_REFUSALS: &str = "sendengine_injection_refusals_total";
/// SMTP client connections accepted.
pub const SMTP_SESSIONS_TOTAL: &str = "sendengine_smtp_sessions_total";
/// SMTP sessions open now.
pub const SMTP_SESSIONS_OPEN: &str = "sendengine_smtp_sessions_open";
/// Events the event log could not keep up with (counted, not lost silently).
pub const EVENTS_DROPPED: &str = "sendengine_events_dropped_total";
/// Events a webhook's full backlog dropped, by webhook (`events::webhook`).
pub const WEBHOOK_EVENTS_DROPPED: &str = "sendengine_webhook_events_dropped_total";
/// Unfinished recipients in the spool, by state (refreshed).
pub const QUEUE_RECIPIENTS: &str = "sendengine_queue_recipients";
/// Messages in the spool (refreshed).
pub const QUEUE_MESSAGES: &str = "sendengine_queue_messages";
/// Size of the spool database file (refreshed).
pub const SPOOL_SIZE: &str = "sendengine_spool_size_bytes";
/// Jobs waiting in a route's ready queue (refreshed).
pub const READY_DEPTH: &str = "sendengine_ready_queue_depth";
/// Delivery connections open, by route (refreshed).
pub const CONNECTIONS_OPEN: &str = "sendengine_connections_open";
/// Delivery connection cap, by route (refreshed).
pub const CONNECTIONS_MAX: &str = "sendengine_connections_max";
/// Reception to 2xx from the next hop, by channel.
pub const DELIVERY_LATENCY: &str = "sendengine_delivery_latency_seconds";
/// One SMTP transaction (MAIL to the reply after the dot), by route.
pub const TRANSACTION_TIME: &str = "sendengine_smtp_transaction_seconds";
/// DKIM signing of one message (all its signatures).
pub const DKIM_SIGN_TIME: &str = "sendengine_dkim_sign_seconds";

// ---- buckets --------------------------------------------------------------

/// From sub-second (transactional on an idle queue) to a day (retries).
const DELIVERY_LATENCY_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];
/// A LAN relay answers in milliseconds; a slow MX in tens of seconds.
const TRANSACTION_TIME_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Ed25519 takes tens of microseconds, RSA-2048 about a quarter millisecond.
const DKIM_SIGN_TIME_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// How often the spool and route gauges are read again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The route label of direct delivery (all sites together).
const DIRECT_LABEL: &str = "direct";

static TENANT_LABELS: AtomicBool = AtomicBool::new(false);
/// Set once the recorder is installed; until then the helpers that would
/// allocate label values return at once.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {message} (is another process using the port?)")]
    Listen {
        addr: std::net::SocketAddr,
        message: String,
    },
    #[error("metrics: {0}")]
    Setup(String),
}

// ---- start ----------------------------------------------------------------

/// Installs the Prometheus recorder, serves `GET /metrics` on
/// `[metrics] listen` (`http`), and starts the upkeep task; both end on
/// shutdown. Without `listen` nothing is installed and nothing listens
/// (`enabled` stays false, and the daemon starts no gauge refresh).
pub fn start(
    section: &MetricsSection,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, MetricsError> {
    let Some(addr) = section.listen else {
        return Ok(Vec::new());
    };
    TENANT_LABELS.store(section.tenant_labels, Ordering::Relaxed);
    let listener = http::bind(addr).map_err(|e| MetricsError::Listen {
        addr,
        message: e.to_string(),
    })?;
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|_| {
        MetricsError::Setup("a metrics recorder is already installed in this process".into())
    })?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(vec![
        tokio::spawn(http::serve(listener, handle.clone(), shutdown.clone())),
        tokio::spawn(upkeep_loop(handle, shutdown)),
    ])
}

/// Drains histogram samples into their buckets between scrapes, so that an
/// unscraped daemon does not keep every sample (the exporter leaves this to
/// whoever builds the recorder without its listener).
async fn upkeep_loop(handle: PrometheusHandle, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_INTERVAL) => handle.run_upkeep(),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn builder() -> Result<PrometheusBuilder, MetricsError> {
    let histograms: [(&str, &[f64]); 6] = [
        (DELIVERY_LATENCY, &DELIVERY_LATENCY_BUCKETS),
        (TRANSACTION_TIME, &TRANSACTION_TIME_BUCKETS),
        (DKIM_SIGN_TIME, &DKIM_SIGN_TIME_BUCKETS),
        (
            sendengine_queue::metrics::COMMIT_SECONDS,
            &sendengine_queue::metrics::COMMIT_SECONDS_BUCKETS,
        ),
        (
            sendengine_queue::metrics::COMMIT_BATCH_SIZE,
            &sendengine_queue::metrics::COMMIT_BATCH_SIZE_BUCKETS,
        ),
        (
            sendengine_queue::metrics::COMMIT_WAIT_SECONDS,
            &sendengine_queue::metrics::COMMIT_WAIT_SECONDS_BUCKETS,
        ),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in histograms {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .map_err(|e| MetricsError::Setup(e.to_string()))?;
    }
    Ok(builder)
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "Messages accepted for delivery"
    );
    describe_counter!(
        RECIPIENTS,
        Unit::Count,
        "Recipients by outcome: received, delivered, deferred, bounced, expired, suppressed"
    );
    describe_counter!(
        BOUNCES,
        Unit::Count,
        "Bounced recipients by bounce category"
    );
    describe_counter!(
        INJECTION_REFUSALS,
        Unit::Count,
        "Injections refused, by reason"
    );
    describe_counter!(
        SMTP_SESSIONS_TOTAL,
        Unit::Count,
        "SMTP connections accepted"
    );
    describe_gauge!(SMTP_SESSIONS_OPEN, Unit::Count, "SMTP sessions open");
    describe_counter!(
        EVENTS_DROPPED,
        Unit::Count,
        "Events dropped because the event log could not keep up"
    );
    describe_counter!(
        WEBHOOK_EVENTS_DROPPED,
        Unit::Count,
        "Events dropped because a webhook's backlog was full"
    );
    describe_gauge!(
        QUEUE_RECIPIENTS,
        Unit::Count,
        "Unfinished recipients in the spool by state: queued (due), deferred, suspended, in_flight"
    );
    describe_gauge!(QUEUE_MESSAGES, Unit::Count, "Messages in the spool");
    describe_gauge!(
        SPOOL_SIZE,
        Unit::Bytes,
        "Size of the spool's files: databases and body segments"
    );
    describe_gauge!(READY_DEPTH, Unit::Count, "Jobs in a route's ready queue");
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Delivery connections open");
    describe_gauge!(CONNECTIONS_MAX, Unit::Count, "Delivery connection limit");
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from reception to delivery"
    );
    describe_histogram!(
        TRANSACTION_TIME,
        Unit::Seconds,
        "Time of one outgoing SMTP transaction"
    );
    describe_histogram!(
        DKIM_SIGN_TIME,
        Unit::Seconds,
        "Time to DKIM-sign one message"
    );
    sendengine_queue::metrics::describe();
    tracking::describe();
    // Present from the start, so that a rate over them is 0, not empty.
    ::metrics::counter!(EVENTS_DROPPED).increment(0);
    ::metrics::counter!(SMTP_SESSIONS_TOTAL).increment(0);
    ::metrics::counter!(TRACKING_NOT_FOUND).increment(0);
    ::metrics::gauge!(SMTP_SESSIONS_OPEN).increment(0.0);
}

// ---- helpers the code paths call ------------------------------------------

/// Why an injection was refused: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Busy,
    /// RCPT from a client neither authenticated nor in a relay network.
    RelayDenied,
    AuthFailed,
    TooBig,
    UnknownChannel,
    /// The From domain is not an enabled sender domain of the user.
    SenderDomain,
    /// A sending limit (quota) of the user or group.
    Quota,
    /// With user groups declared, the message has no tenant in one.
    NoTenant,
    /// Every recipient is on a suppression list.
    AllSuppressed,
    /// The message could not be parsed or edited.
    Content,
    /// The spool could not take it (storage error, or shutting down).
    LocalError,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::RelayDenied => "relay_denied",
            Refusal::AuthFailed => "auth_failed",
            Refusal::TooBig => "too_big",
            Refusal::UnknownChannel => "unknown_channel",
            Refusal::SenderDomain => "sender_domain",
            Refusal::Quota => "quota",
            Refusal::NoTenant => "no_tenant",
            Refusal::AllSuppressed => "all_suppressed",
            Refusal::Content => "content",
            Refusal::LocalError => "local_error",
        }
    }
}

pub fn injection_refused(reason: Refusal) {
    ::metrics::counter!(INJECTION_REFUSALS, "reason" => reason.as_str()).increment(1);
}

/// The reason for a refusal the spool gave at commit.
pub fn spool_refused(error: &sendengine_queue::SpoolError) {
    injection_refused(match error {
        sendengine_queue::SpoolError::QuotaExceeded(_) => Refusal::Quota,
        sendengine_queue::SpoolError::Invalid(_) => Refusal::Content,
        _ => Refusal::LocalError,
    });
}

/// A message was committed: counts it and its recipients.
pub fn message_received(meta: &MessageMeta, recipients: usize) {
    if !enabled() {
        return;
    }
    let labels = MessageLabels::new(&meta.route, &meta.channel, &meta.tenant);
    handles::counter(MESSAGES_RECEIVED, labels.pairs()).increment(1);
    handles::counter(RECIPIENTS, labels.with("outcome", "received").pairs())
        .increment(recipients as u64);
}

/// Admission left `recipients` out because they are suppressed.
pub fn recipients_suppressed(meta: &MessageMeta, recipients: usize) {
    if recipients > 0 && enabled() {
        let labels = MessageLabels::new(&meta.route, &meta.channel, &meta.tenant);
        handles::counter(RECIPIENTS, labels.with("outcome", "suppressed").pairs())
            .increment(recipients as u64);
    }
}

/// Delivery outcomes, once the spool has committed them: counts by
/// outcome (and bounce category), and the latency of deliveries.
pub fn outcomes(events: &[Event]) {
    if !enabled() {
        return;
    }
    for event in events {
        let outcome = match event.kind {
            EventKind::Delivery => "delivered",
            EventKind::TransientFailure => "deferred",
            EventKind::Bounce => "bounced",
            EventKind::Expiration => "expired",
            // `sendctl queue delete`; `queue bounce` is a Bounce of class `admin`.
            EventKind::AdminAction => "deleted",
            _ => continue,
        };
        let route = event.route.as_deref().unwrap_or_default();
        let tenant = event.tenant.as_deref().unwrap_or_default();
        let labels = MessageLabels::new(route, &event.channel, tenant);
        if event.kind == EventKind::Bounce {
            let category = bounce_category(event.bounce_class.as_deref());
            handles::counter(BOUNCES, labels.with("category", category).pairs()).increment(1);
        }
        if event.kind == EventKind::Delivery {
            let channel = channel_label(&event.channel);
            handles::histogram(DELIVERY_LATENCY, &[("channel", channel)])
                .record(event.queue_time_ms as f64 / 1000.0);
        }
        handles::counter(RECIPIENTS, labels.with("outcome", outcome).pairs()).increment(1);
    }
}

/// Counts an SMTP session as open until the returned guard is dropped.
pub fn smtp_session() -> SmtpSession {
    ::metrics::counter!(SMTP_SESSIONS_TOTAL).increment(1);
    ::metrics::gauge!(SMTP_SESSIONS_OPEN).increment(1.0);
    SmtpSession(())
}

pub struct SmtpSession(());

impl Drop for SmtpSession {
    fn drop(&mut self) {
        ::metrics::gauge!(SMTP_SESSIONS_OPEN).decrement(1.0);
    }
}

/// An outgoing transaction on `route` that began at `started` ended.
pub fn transaction_time(route: &str, started: Instant) {
    if !enabled() {
        return;
    }
    handles::histogram(TRANSACTION_TIME, &[("route", route_name(route))])
        .record(started.elapsed().as_secs_f64());
}

/// A message was DKIM-signed; signing began at `started`.
pub fn dkim_sign_time(started: Instant) {
    ::metrics::histogram!(DKIM_SIGN_TIME).record(started.elapsed().as_secs_f64());
}

/// The event log dropped `n` events.
pub fn events_dropped(n: u64) {
    ::metrics::counter!(EVENTS_DROPPED).increment(n);
}

// ---- labels ---------------------------------------------------------------

/// The labels of a message's counts: route, channel [, tenant], and one
/// more of the count's own.
#[derive(Clone, Copy)]
struct MessageLabels<'a> {
    pairs: [(&'static str, &'a str); 4],
    len: usize,
}

impl<'a> MessageLabels<'a> {
    fn new(route: &'a str, channel: &'a str, tenant: &'a str) -> MessageLabels<'a> {
        let mut labels = MessageLabels {
            pairs: [
                ("route", route_name(route)),
                ("channel", channel_label(channel)),
                ("", ""),
                ("", ""),
            ],
            len: 2,
        };
        if TENANT_LABELS.load(Ordering::Relaxed) {
            labels = labels.with("tenant", tenant);
        }
        labels
    }

    fn with(mut self, key: &'static str, value: &'a str) -> MessageLabels<'a> {
        self.pairs[self.len] = (key, value);
        self.len += 1;
        self
    }

    fn pairs(&self) -> &[(&'static str, &'a str)] {
        &self.pairs[..self.len]
    }
}

/// Relay routes by name; the sites of direct delivery (and mail admitted
/// for direct delivery, which has no route name yet) as `direct`.
fn route_name(route: &str) -> &str {
    let direct = crate::tenancy::DIRECT;
    if route.is_empty()
        || route == direct
        || route
            .strip_prefix(direct)
            .is_some_and(|rest| rest.starts_with(':'))
    {
        DIRECT_LABEL
    } else {
        route
    }
}

/// The channel as a static string: admission accepts only these.
fn channel_label(channel: &str) -> &'static str {
    crate::tenancy::CHANNELS
        .iter()
        .copied()
        .find(|c| *c == channel)
        .unwrap_or("other")
}

fn bounce_category(class: Option<&str>) -> &'static str {
    match class {
        Some("admin") => "admin",
        _ => class
            .and_then(sendengine_bounces::Category::from_name)
            .map_or("other", sendengine_bounces::Category::as_str),
    }
}

// ---- refreshed gauges -----------------------------------------------------

/// Queue counts and file size, as read from the spool.
pub fn set_spool_gauges(stats: &SpoolStats, counts: &QueueCounts) {
    let states = [
        ("queued", counts.queued),
        ("deferred", counts.deferred),
        ("suspended", counts.suspended),
        ("in_flight", counts.in_flight),
    ];
    for (state, n) in states {
        ::metrics::gauge!(QUEUE_RECIPIENTS, "state" => state).set(n as f64);
    }
    ::metrics::gauge!(QUEUE_MESSAGES).set(stats.messages as f64);
    ::metrics::gauge!(SPOOL_SIZE).set(stats.file_bytes as f64);
}

/// What the per-route gauges show of one route.
pub struct RouteGauges<'a> {
    pub name: &'a str,
    pub ready: usize,
    pub open_connections: usize,
    pub max_connections: usize,
}

/// Per-route gauges; a route that went away is set to zero once.
/// Returns the route labels set this time, for the next call's `before`.
pub fn set_route_gauges<'a>(
    routes: impl IntoIterator<Item = RouteGauges<'a>>,
    before: HashSet<String>,
) -> HashSet<String> {
    // (ready, open, max) by label: direct sites add up under one label.
    let mut live: HashMap<String, (usize, usize, usize)> = HashMap::new();
    for route in routes {
        let entry = live.entry(route_name(route.name).to_owned()).or_default();
        entry.0 += route.ready;
        entry.1 += route.open_connections;
        entry.2 += route.max_connections;
    }
    let gone = before.into_iter().filter(|label| !live.contains_key(label));
    let zeros: Vec<_> = gone.map(|label| (label, (0, 0, 0))).collect();
    for (label, (ready, open, max)) in live.iter().map(|(l, v)| (l.clone(), *v)).chain(zeros) {
        let route = ::metrics::SharedString::from(label);
        ::metrics::gauge!(READY_DEPTH, "route" => route.clone()).set(ready as f64);
        ::metrics::gauge!(CONNECTIONS_OPEN, "route" => route.clone()).set(open as f64);
        ::metrics::gauge!(CONNECTIONS_MAX, "route" => route).set(max as f64);
    }
    live.into_keys().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_sites_share_one_route_label() {
        assert_eq!(route_name("direct:example.net"), "direct");
        assert_eq!(route_name("direct"), "direct");
        assert_eq!(route_name(""), "direct");
        assert_eq!(route_name("relay-1"), "relay-1");
        assert_eq!(route_name("directory"), "directory");
    }

    #[test]
    fn free_text_never_becomes_a_label_value() {
        assert_eq!(channel_label("transactional"), "transactional");
        assert_eq!(channel_label("anything else"), "other");
        assert_eq!(bounce_category(Some("bad-mailbox")), "bad-mailbox");
        assert_eq!(bounce_category(Some("user@example.net")), "other");
        assert_eq!(bounce_category(None), "other");
    }
}
