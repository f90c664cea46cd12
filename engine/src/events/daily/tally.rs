//! One day's tally of one tenant: counts and bytes, and bounded tables of
//! the same counts per sender, recipient domain, bounce reason, delivery
//! server (route) and campaign. What `sendctl report` shows.
//!
//! Each table keeps at most `MAX_KEYS` keys a day; once full, events of a
//! new key count in its `other` bucket, so a tenant spraying campaign ids
//! or sender addresses cannot grow a row without limit. The first
//! `MAX_KEYS` keys of the day are exact, the rest are lumped together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{BounceType, Event, EventKind, SUPPRESSED_AT_ADMISSION};

/// Keys kept per table per day and tenant (and in a report merged across
/// tenants).
pub const MAX_KEYS: usize = 50;
/// Longer keys (a campaign id is a header value) are cut to this many
/// bytes, so that a row stays small: it is rewritten every second.
const MAX_KEY_BYTES: usize = 200;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What happened to recipients. `received`, `delivered`, ... count
/// recipients; `deferred` counts deferrals (one recipient may be deferred
/// several times); `messages` counts received messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    #[serde(skip_serializing_if = "is_zero")]
    pub received: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub messages: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub delivered: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub deferred: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub bounced_hard: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub bounced_soft: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub expired: u64,
    /// Recipients dropped at admission because they are on a suppression list.
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub complaints: u64,
    /// Tracked link clicks and open-pixel loads (every one, not unique).
    #[serde(skip_serializing_if = "is_zero")]
    pub clicks: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub opens: u64,
    /// Sizes of the received messages, once per message.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_in: u64,
    /// Message size per delivered recipient.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_out: u64,
}

impl Counts {
    /// Counts `event`; `first_of_message` says it is the first reception
    /// event of its message (the message and its bytes count once).
    fn add(&mut self, event: &Event, first_of_message: bool) {
        let size = event.size as u64;
        match event.kind {
            EventKind::Reception => {
                self.received += 1;
                if first_of_message {
                    self.messages += 1;
                    self.bytes_in += size;
                }
            }
            EventKind::Delivery => {
                self.delivered += 1;
                self.bytes_out += size;
            }
            EventKind::TransientFailure => self.deferred += 1,
            EventKind::Bounce | EventKind::AsyncBounce => match event.bounce_type {
                Some(BounceType::Hard) => self.bounced_hard += 1,
                _ => self.bounced_soft += 1,
            },
            EventKind::Expiration => self.expired += 1,
            EventKind::Suppression if dropped_at_admission(event) => self.suppressed += 1,
            // A not-spam or authentication failure report is no complaint.
            EventKind::Complaint
                if event
                    .bounce_class
                    .as_deref()
                    .is_none_or(sendengine_bounces::is_complaint_type) =>
            {
                self.complaints += 1
            }
            EventKind::Click => self.clicks += 1,
            EventKind::Open => self.opens += 1,
            EventKind::Complaint | EventKind::Suppression | EventKind::AdminAction => {}
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.received += other.received;
        self.messages += other.messages;
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced_hard += other.bounced_hard;
        self.bounced_soft += other.bounced_soft;
        self.expired += other.expired;
        self.suppressed += other.suppressed;
        self.complaints += other.complaints;
        self.clicks += other.clicks;
        self.opens += other.opens;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }

    /// Recipient events counted, for ordering the tables.
    pub fn activity(&self) -> u64 {
        self.received
            + self.delivered
            + self.deferred
            + self.bounced_hard
            + self.bounced_soft
            + self.expired
            + self.suppressed
            + self.complaints
    }

    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

/// A `suppression` event for a recipient dropped at admission (the other
/// `suppression` events say an address was added to a list).
fn dropped_at_admission(event: &Event) -> bool {
    event
        .reply
        .as_ref()
        .is_some_and(|r| r.text == SUPPRESSED_AT_ADMISSION)
}

/// Counts per key, at most `MAX_KEYS` keys; the rest in `other`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Table {
    pub keys: BTreeMap<String, Counts>,
    pub other: Counts,
}

impl Table {
    fn entry(&mut self, key: &str) -> &mut Counts {
        let key = cut(key);
        if !self.keys.contains_key(key) && self.keys.len() >= MAX_KEYS {
            return &mut self.other;
        }
        self.keys.entry(key.to_owned()).or_default()
    }

    fn merge(&mut self, other: &Table) {
        for (key, counts) in &other.keys {
            self.entry(key).merge(counts);
        }
        self.other.merge(&other.other);
    }

    /// The keys, most active first (ties by name).
    pub fn ranked(&self) -> Vec<(&str, &Counts)> {
        let mut rows: Vec<(&str, &Counts)> =
            self.keys.iter().map(|(k, c)| (k.as_str(), c)).collect();
        rows.sort_by(|a, b| b.1.activity().cmp(&a.1.activity()).then(a.0.cmp(b.0)));
        rows
    }
}

/// `key`, at most `MAX_KEY_BYTES` long, cut at a character boundary.
fn cut(key: &str) -> &str {
    let mut end = key.len().min(MAX_KEY_BYTES);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// One day of one tenant (or, merged, of several).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DayTally {
    pub totals: Counts,
    pub senders: Table,
    pub recipient_domains: Table,
    pub bounce_reasons: Table,
    pub routes: Table,
    pub campaigns: Table,
}

impl DayTally {
    /// Counts one event in the totals and in each table it belongs to.
    pub fn add(&mut self, event: &Event, first_of_message: bool) {
        self.totals.add(event, first_of_message);
        // An asynchronous report's sender is our VERP return path, unique
        // per recipient: no use as a sender, and it would fill the table.
        // So is that of the suppression it causes, which, like any
        // suppression but a drop at admission, counts nothing anyway.
        let from_us = !matches!(event.kind, EventKind::AsyncBounce | EventKind::Complaint);
        let counts = event.kind != EventKind::Suppression || dropped_at_admission(event);
        if from_us && counts && !event.sender.is_empty() {
            let sender = event.sender.to_ascii_lowercase();
            self.senders.entry(&sender).add(event, first_of_message);
        }
        if let Some((_, domain)) = event.recipient.rsplit_once('@') {
            let domain = domain.to_ascii_lowercase();
            self.recipient_domains
                .entry(&domain)
                .add(event, first_of_message);
        }
        if matches!(event.kind, EventKind::Bounce | EventKind::AsyncBounce) {
            let reason = event.bounce_class.as_deref().unwrap_or("unclassified");
            self.bounce_reasons
                .entry(reason)
                .add(event, first_of_message);
        }
        if let Some(route) = event.route.as_deref().filter(|r| !r.is_empty()) {
            self.routes.entry(route).add(event, first_of_message);
        }
        if let Some(campaign) = event.campaign.as_deref().filter(|c| !c.is_empty()) {
            self.campaigns.entry(campaign).add(event, first_of_message);
        }
    }

    /// Adds another tally (another tenant's, for a report of all).
    pub fn merge(&mut self, other: &DayTally) {
        self.totals.merge(&other.totals);
        self.senders.merge(&other.senders);
        self.recipient_domains.merge(&other.recipient_domains);
        self.bounce_reasons.merge(&other.bounce_reasons);
        self.routes.merge(&other.routes);
        self.campaigns.merge(&other.campaigns);
    }

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::events::EventReply;

    /// The module's shared test event, with the sender, tenant, campaign
    /// and size these tests count on.
    pub(crate) fn event(kind: EventKind, recipient: &str) -> Event {
        let mut event = crate::events::test_event(kind, recipient, "");
        event.message_id = "0000000000000001".into();
        event.sender = "App@Example.com".into();
        event.tenant = Some("alice".into());
        event.campaign = Some("spring".into());
        event.route = Some("relay".into());
        event.size = 1000;
        event
    }

    #[test]
    fn events_count_in_totals_and_tables() {
        let mut t = DayTally::default();
        t.add(&event(EventKind::Reception, "a@x.test"), true);
        t.add(&event(EventKind::Reception, "b@Y.test"), false);
        t.add(&event(EventKind::Delivery, "a@x.test"), false);
        let mut hard = event(EventKind::Bounce, "b@y.test");
        hard.bounce_type = Some(BounceType::Hard);
        hard.bounce_class = Some("bad-mailbox".into());
        t.add(&hard, false);
        let mut dropped = event(EventKind::Suppression, "c@y.test");
        dropped.reply = Some(EventReply {
            code: 550,
            enhanced: None,
            text: SUPPRESSED_AT_ADMISSION.into(),
        });
        t.add(&dropped, false);
        // The suppression that follows a hard bounce is not a drop.
        t.add(&event(EventKind::Suppression, "b@y.test"), false);
        for feedback_type in ["abuse", "not-spam", "auth-failure", "opt-out"] {
            let mut report = event(EventKind::Complaint, "d@y.test");
            report.bounce_class = Some(feedback_type.into());
            t.add(&report, false);
        }

        let c = &t.totals;
        assert_eq!((c.received, c.messages, c.delivered), (2, 1, 1));
        assert_eq!((c.bounced_hard, c.bounced_soft, c.suppressed), (1, 0, 1));
        assert_eq!(c.complaints, 2, "abuse and opt-out");
        assert_eq!((c.bytes_in, c.bytes_out), (1000, 1000));
        assert_eq!(t.senders.keys["app@example.com"].received, 2);
        assert_eq!(t.recipient_domains.keys["y.test"].received, 1);
        assert_eq!(t.recipient_domains.keys["y.test"].bounced_hard, 1);
        assert_eq!(t.bounce_reasons.keys["bad-mailbox"].bounced_hard, 1);
        assert_eq!(t.routes.keys["relay"].delivered, 1);
        assert_eq!(t.campaigns.keys["spring"].received, 2);
    }

    #[test]
    fn an_async_reports_suppression_makes_no_sender_row() {
        let mut t = DayTally::default();
        for kind in [EventKind::AsyncBounce, EventKind::Suppression] {
            let mut report = event(kind, "gone@y.test");
            report.sender = "bounces+TAG@bounce.example.com".into();
            t.add(&report, false);
        }
        assert!(t.senders.keys.is_empty(), "{:?}", t.senders.keys);
    }

    #[test]
    fn tables_are_bounded_with_an_other_bucket() {
        let mut t = DayTally::default();
        for n in 0..MAX_KEYS + 10 {
            let mut e = event(EventKind::Reception, "a@x.test");
            e.campaign = Some(format!("c{n}"));
            t.add(&e, true);
        }
        assert_eq!(t.campaigns.keys.len(), MAX_KEYS);
        assert_eq!(t.campaigns.other.received, 10);
        assert_eq!(t.totals.received as usize, MAX_KEYS + 10);

        let mut all = DayTally::default();
        all.merge(&t);
        all.merge(&t);
        assert_eq!(all.totals.received as usize, 2 * (MAX_KEYS + 10));
        assert_eq!(all.campaigns.keys.len(), MAX_KEYS);
        assert_eq!(all.campaigns.other.received, 20);
    }

    #[test]
    fn long_keys_are_cut_at_a_character() {
        let mut t = DayTally::default();
        let long = "é".repeat(MAX_KEY_BYTES);
        let mut e = event(EventKind::Reception, "a@x.test");
        e.route = Some(long.clone());
        t.add(&e, false);
        let kept = t.routes.keys.keys().next().unwrap();
        assert_eq!(kept.len(), MAX_KEY_BYTES);
        assert!(long.starts_with(kept.as_str()));
    }

    #[test]
    fn a_tally_survives_its_json() {
        let mut t = DayTally::default();
        t.add(&event(EventKind::Reception, "a@x.test"), true);
        let bytes = serde_json::to_vec(&t).unwrap();
        assert_eq!(serde_json::from_slice::<DayTally>(&bytes).unwrap(), t);
    }
}
