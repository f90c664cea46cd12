//! Admission step 7: click and open tracking, after the transforms and
//! before DKIM. For mail whose first delivery server (the one DKIM's From
//! choice uses) has tracking domains, and whose group leaves tracking on,
//! the HTML parts' web links are rewritten and an open pixel added (see
//! `crate::tracking`); the original URLs go to the spool with the message.
//! A message whose HTML cannot be decoded is sent untracked, not refused.

use sendengine_queue::{MAX_TRACKED_LINKS, TrackedLinks};

use crate::tenancy::{DeliveryServer, UserGroup};
use crate::tracking::Tracker;
use crate::tracking::rewrite::{LinkPolicy, rewrite_links};
use crate::transform;

/// The tracking domains that apply to a message, after the group's switches.
struct Domains<'s> {
    links: Option<&'s str>,
    opens: Option<&'s str>,
}

impl<'s> Domains<'s> {
    fn of(server: Option<&'s DeliveryServer>, group: &UserGroup) -> Option<Domains<'s>> {
        let server = server?;
        let domains = Domains {
            links: server
                .link_tracking_domain
                .as_deref()
                .filter(|_| group.link_tracking),
            opens: server
                .open_tracking_domain
                .as_deref()
                .filter(|_| group.open_tracking),
        };
        (domains.links.is_some() || domains.opens.is_some()).then_some(domains)
    }
}

/// The message with its links and pixel, and the row to spool with it;
/// the message as it was when nothing is tracked.
pub(super) fn track(
    tracker: Option<&Tracker>,
    server: Option<&DeliveryServer>,
    group: &UserGroup,
    body: Vec<u8>,
    header_message_id: &str,
    now_ms: u64,
) -> (Vec<u8>, Option<TrackedLinks>) {
    let (Some(tracker), Some(domains)) = (tracker, Domains::of(server, group)) else {
        return (body, None);
    };
    let key = crate::tracking::new_key(now_ms);
    let policy = LinkPolicy {
        unsubscribe_urls: list_unsubscribe_urls(&body),
    };
    let mut urls: Vec<String> = Vec::new();
    let mut edit = |html: &[u8]| {
        let html = match domains.links {
            Some(domain) => rewrite_links(html, &policy, &mut |url| {
                let link = match urls.iter().position(|u| u == url) {
                    Some(known) => known,
                    None if urls.len() < MAX_TRACKED_LINKS => {
                        urls.push(url.to_owned());
                        urls.len() - 1
                    }
                    None => return None,
                };
                Some(tracker.click_url(domain, key, link as u32))
            }),
            None => html.to_vec(),
        };
        match domains.opens {
            Some(domain) => transform::append_to_html(&html, &tracker.pixel(domain, key)),
            None => html,
        }
    };
    let tracked = match transform::edit_html(&body, &mut edit) {
        Ok(Some(tracked)) => tracked,
        Ok(None) => return (body, None),
        Err(e) => {
            log::debug!("message {header_message_id} sent untracked: {e}");
            return (body, None);
        }
    };
    if urls.is_empty() && domains.opens.is_none() {
        return (body, None);
    }
    crate::metrics::message_tracked(urls.len());
    let links = TrackedLinks {
        key,
        header_message_id: header_message_id.to_owned(),
        urls,
        retain: tracker.retain,
    };
    (tracked, Some(links))
}

/// The web URLs of `List-Unsubscribe: <https://...>, <mailto:...>`.
fn list_unsubscribe_urls(message: &[u8]) -> Vec<String> {
    let Some(value) = transform::header_value(message, "List-Unsubscribe") else {
        return Vec::new();
    };
    value
        .split(',')
        .filter_map(|item| {
            let url = item.trim().strip_prefix('<')?.split('>').next()?.trim();
            let lower = url.to_ascii_lowercase();
            (lower.starts_with("http://") || lower.starts_with("https://")).then(|| url.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_unsubscribe_web_urls_are_found() {
        let message = b"List-Unsubscribe: <mailto:u@example.com>,\r\n <https://x.example/u?id=1>\r\nSubject: s\r\n\r\nbody";
        assert_eq!(list_unsubscribe_urls(message), ["https://x.example/u?id=1"]);
        assert!(list_unsubscribe_urls(b"Subject: s\r\n\r\n").is_empty());
    }
}
