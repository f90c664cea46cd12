//! The tracking counters: messages rewritten at admission, and clicks and
//! opens answered by the tracking listener (`crate::tracking`).

use crate::events::{Event, EventKind};

/// Messages admitted with tracked links or an open pixel.
pub const TRACKED_MESSAGES: &str = "sendengine_tracked_messages_total";
/// Links rewritten at admission (distinct URLs per message).
pub const TRACKED_LINKS: &str = "sendengine_tracked_links_total";
/// Clicks and opens recorded, by kind (`click`, `open`), route, channel [, tenant].
pub const TRACKING_HITS: &str = "sendengine_tracking_hits_total";
/// Tracking requests answered 404: a forged, damaged or expired token, or
/// a path that is none of ours.
pub const TRACKING_NOT_FOUND: &str = "sendengine_tracking_not_found_total";

pub(super) fn describe() {
    use ::metrics::{Unit, describe_counter};
    describe_counter!(
        TRACKED_MESSAGES,
        Unit::Count,
        "Messages admitted with tracked links or an open pixel"
    );
    describe_counter!(
        TRACKED_LINKS,
        Unit::Count,
        "Links rewritten for click tracking"
    );
    describe_counter!(
        TRACKING_HITS,
        Unit::Count,
        "Clicks and opens recorded, by kind"
    );
    describe_counter!(
        TRACKING_NOT_FOUND,
        Unit::Count,
        "Tracking requests answered 404 (unknown path, forged or expired token)"
    );
}

/// A message was admitted with `links` tracked links (and maybe a pixel).
pub fn message_tracked(links: usize) {
    if super::enabled() {
        ::metrics::counter!(TRACKED_MESSAGES).increment(1);
        ::metrics::counter!(TRACKED_LINKS).increment(links as u64);
    }
}

/// A `click` or `open` event was recorded.
pub fn tracking_hit(event: &Event) {
    let kind = match event.kind {
        EventKind::Click => "click",
        EventKind::Open => "open",
        _ => return,
    };
    if super::enabled() {
        let route = event.route.as_deref().unwrap_or_default();
        let tenant = event.tenant.as_deref().unwrap_or_default();
        let labels = super::MessageLabels::new(route, &event.channel, tenant).with("kind", kind);
        super::handles::counter(TRACKING_HITS, labels.pairs()).increment(1);
    }
}

/// A tracking request was answered 404.
pub fn tracking_not_found() {
    ::metrics::counter!(TRACKING_NOT_FOUND).increment(1);
}
