//! Which records of a received email act, and on which recipient of ours.
//!
//! Each record goes to the recipient its VERP tag names ([`Intake::target_of`]).
//! A report sent to one recipient's address can still be about others (a
//! list or alias it expanded to, with a block per member): only the blocks
//! about our recipient's address act ([`Intake::about_the_recipient`]).
//! Of those, one per recipient and kind, the hard one if any.

use sendengine_bounces::{Kind, Record, verp};
use sendengine_queue::Delivered;

use super::intake::{Intake, IntakeError, Target, count};

/// A report to act on.
pub(super) struct Chosen {
    pub target: Target,
    pub record: Record,
    /// The recipient's index row, when choosing needed it: looked up once.
    pub known: Option<Option<Delivered>>,
}

impl Intake {
    /// The reports of one email to act on, at most one per recipient of
    /// ours and kind; the others are counted.
    pub(super) fn choose(
        &self,
        records: Vec<Record>,
        targets: &[Target],
    ) -> Result<Vec<Chosen>, IntakeError> {
        let mut chosen: Vec<Chosen> = Vec::new();
        for (target, records) in self.by_target(records, targets) {
            let (records, known) = self.about_the_recipient(&target, records)?;
            for record in records.into_iter().filter(acts) {
                let report = Chosen {
                    target: target.clone(),
                    record,
                    known: known.clone(),
                };
                keep_strongest(&mut chosen, report);
            }
        }
        Ok(chosen)
    }

    /// The records grouped by the recipient of ours each is about, every
    /// kind kept (a report's success blocks tell which addresses it was
    /// about); auto-replies, success notices and records tied to none of
    /// ours are counted here.
    fn by_target(&self, records: Vec<Record>, targets: &[Target]) -> Vec<(Target, Vec<Record>)> {
        let mut groups: Vec<(Target, Vec<Record>)> = Vec::new();
        for record in records {
            let acting = acts(&record);
            if !acting {
                count(label(&record));
            }
            let Some(target) = self.target_of(&record, targets) else {
                if acting {
                    count("untied");
                }
                continue;
            };
            match groups.iter_mut().find(|(t, _)| *t == target) {
                Some((_, group)) => group.push(record),
                None => groups.push((target, vec![record])),
            }
        }
        groups
    }

    /// The records about `target`'s own address. A report sent to one
    /// recipient's VERP address can still list other addresses, each in
    /// its own block: the members of a list or alias it expanded to, the
    /// addresses it was forwarded to. A member that failed says nothing of
    /// the address we sent to, so when the records name several addresses
    /// (looked up, and returned for reuse) the blocks of our address act;
    /// without one, the blocks forwarded from it (Original-Recipient) if
    /// they name one address; else none, nor when ours is not known.
    /// Records naming one address, or none, are all about ours: a single
    /// forward is still our recipient's outcome.
    fn about_the_recipient(
        &self,
        target: &Target,
        records: Vec<Record>,
    ) -> Result<(Vec<Record>, Option<Option<Delivered>>), IntakeError> {
        if distinct_recipients(&records) <= 1 {
            return Ok((records, None));
        }
        let known = self.delivered(target)?;
        let ours = known.as_ref().map_or("", |d| d.recipient.as_str());
        let (own, others) = if ours.is_empty() {
            (Vec::new(), records)
        } else {
            blocks_about(ours, records)
        };
        for _ in others.iter().filter(|r| acts(r)) {
            count("other-recipient");
        }
        Ok((own, Some(known)))
    }

    /// The RCPT's tag (HMAC checked by the listener); when several RCPTs
    /// carried tags, the one the report itself names. Without any, the
    /// report's own tag if it is valid.
    fn target_of(&self, record: &Record, targets: &[Target]) -> Option<Target> {
        let own = record
            .verp_tag
            .as_deref()
            .and_then(|tag| verp::decode(tag, &self.verp_secret).ok());
        let Some(first) = targets.first() else {
            return own.map(|t| Target::of(t, String::new()));
        };
        let named = own.and_then(|o| targets.iter().find(|t| t.tagged() == o));
        Some(named.unwrap_or(first).clone())
    }
}

/// Of records naming several addresses, those about `ours` (and the
/// rest): the blocks whose recipient it is; without one, the blocks
/// forwarded from it, if they name one address.
fn blocks_about(ours: &str, records: Vec<Record>) -> (Vec<Record>, Vec<Record>) {
    let (direct, rest): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| {
        r.recipient
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(ours))
    });
    if !direct.is_empty() {
        return (direct, rest);
    }
    let (forwarded, mut rest): (Vec<Record>, Vec<Record>) =
        rest.into_iter().partition(|r| r.names(ours));
    if distinct_recipients(&forwarded) <= 1 {
        return (forwarded, rest);
    }
    rest.extend(forwarded);
    (Vec::new(), rest)
}

/// Keeps one report per (recipient of ours, kind): the hard one if any,
/// else the first. A DSN often lists the same failure twice (text and
/// delivery-status parts, or a retry history).
fn keep_strongest(chosen: &mut Vec<Chosen>, report: Chosen) {
    let same = chosen.iter_mut().find(|c| {
        c.target.tagged() == report.target.tagged() && c.record.kind == report.record.kind
    });
    match same {
        Some(kept) if report.record.hard && !kept.record.hard => *kept = report,
        Some(_) => {}
        None => chosen.push(report),
    }
}

/// The label a record is counted under; only `bounce` and `complaint` act.
fn label(record: &Record) -> &'static str {
    match record.kind {
        Kind::Complaint => "complaint",
        Kind::AutoReply => "auto-reply",
        Kind::NotBounce => "not-bounce",
        // Success notices (RFC 3464 actions delivered, relayed, expanded).
        Kind::Bounce if is_success(record.action.as_deref()) => "not-bounce",
        Kind::Bounce => "bounce",
    }
}

/// How many different addresses the records name.
fn distinct_recipients(records: &[Record]) -> usize {
    let mut named: Vec<String> = records
        .iter()
        .filter_map(|r| r.recipient.as_deref())
        .map(str::to_ascii_lowercase)
        .collect();
    named.sort_unstable();
    named.dedup();
    named.len()
}

/// Whether the record can make an event: a failure, a delay or a complaint.
fn acts(record: &Record) -> bool {
    matches!(label(record), "bounce" | "complaint")
}

fn is_success(action: Option<&str>) -> bool {
    action.is_some_and(|a| {
        ["delivered", "relayed", "expanded"]
            .iter()
            .any(|s| a.eq_ignore_ascii_case(s))
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A record of `kind`, hard or not, about no one.
    pub(in crate::bounce_in) fn record(kind: Kind, hard: bool) -> Record {
        let mut r = sendengine_bounces::parse_message(b"Subject: hello\r\n\r\nhi\r\n")
            .pop()
            .unwrap();
        r.kind = kind;
        r.hard = hard;
        r
    }

    fn chosen(rcpt: u32, record: Record) -> Chosen {
        Chosen {
            target: Target {
                node: None,
                id: 7,
                rcpt,
                return_path: "bounces+x@example.com".into(),
            },
            record,
            known: None,
        }
    }

    #[test]
    fn one_report_per_recipient_and_kind_the_hard_one_wins() {
        let mut kept = Vec::new();
        keep_strongest(&mut kept, chosen(0, record(Kind::Bounce, false)));
        keep_strongest(&mut kept, chosen(0, record(Kind::Bounce, true)));
        keep_strongest(&mut kept, chosen(0, record(Kind::Bounce, false)));
        keep_strongest(&mut kept, chosen(1, record(Kind::Bounce, false)));
        keep_strongest(&mut kept, chosen(0, record(Kind::Complaint, false)));
        assert_eq!(kept.len(), 3);
        assert!(kept[0].record.hard);
    }

    #[test]
    fn success_notices_and_auto_replies_are_not_bounces() {
        let mut r = record(Kind::Bounce, false);
        r.action = Some("Delivered".into());
        assert_eq!(label(&r), "not-bounce");
        assert!(!acts(&r));
        r.action = Some("failed".into());
        assert_eq!(label(&r), "bounce");
        assert!(acts(&r));
        assert_eq!(label(&record(Kind::AutoReply, false)), "auto-reply");
    }
}
