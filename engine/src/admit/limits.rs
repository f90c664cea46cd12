//! Admission step 4: sending limits and sender-domain policy.
//!
//! Limits are counted per accepted recipient, per user, by the spool
//! itself (`sendengine_queue::Quota`) in the transaction that stores the
//! message: exact under concurrency and kept across restarts. This module
//! says which quotas apply to a message and turns a refusal into a reply
//! that names the limit and when it resets: daily and monthly limits pass,
//! so they are temporary (4xx); the lifetime limit does not (5xx).

use sendengine_queue::{Quota, QuotaExceeded, Window};

use crate::metrics::Refusal;
use crate::tenancy::{Tenancy, User, UserGroup};
use crate::timefmt::rfc3339;
use crate::values::Reply;

use super::tenant::Tenant;

/// The quotas the spool counts for `recipients` more at the commit (the
/// user's, and the shared default domain's when the message is sent from
/// it), or the refusal of the message's sender domain.
pub(super) fn quotas(
    snapshot: &Tenancy,
    tenant: &Tenant<'_>,
    from_domain: Option<&str>,
    recipients: u64,
) -> Result<Vec<Quota>, Reply> {
    let mut quotas = match &tenant.name {
        Some(name) => user_quotas(name, tenant.group, recipients),
        None => Vec::new(),
    };
    let domain_quota =
        check_sender_domain(snapshot, tenant.user, tenant.group, from_domain, recipients)
            .inspect_err(|_| crate::metrics::injection_refused(Refusal::SenderDomain))?;
    quotas.extend(domain_quota);
    Ok(quotas)
}

/// The quota names; also what `sendctl` will show.
pub(crate) fn user_quota_name(user: &str) -> String {
    format!("user:{user}")
}

pub(crate) fn default_domain_quota_name(user: &str) -> String {
    format!("default-domain:{user}")
}

/// The user's daily, monthly and lifetime quotas for `recipients` more.
/// Limits of 0 still count, so turning a limit on later starts from truth.
pub(crate) fn user_quotas(user: &str, group: &UserGroup, recipients: u64) -> Vec<Quota> {
    [
        (Window::Day, group.daily_limit),
        (Window::Month, group.monthly_limit),
        (Window::Lifetime, group.lifetime_limit),
    ]
    .into_iter()
    .map(|(window, limit)| Quota {
        name: user_quota_name(user),
        window,
        limit,
        amount: recipients,
    })
    .collect()
}

/// Whether `user` may send from `from_domain`: `Ok(None)` yes, `Ok(Some(q))`
/// yes within quota `q` (the group's shared default domain), `Err` no.
fn check_sender_domain(
    tenancy: &Tenancy,
    user: Option<&User>,
    group: &UserGroup,
    from_domain: Option<&str>,
    recipients: u64,
) -> Result<Option<Quota>, Reply> {
    if !group.sender_domain_management {
        return Ok(None);
    }
    let Some(domain) = from_domain else {
        return Err(Reply::new(
            550,
            "5.7.1",
            "The message has no From address to check against your sender domains",
        ));
    };
    let user_name = user.map(|u| u.name.as_str()).unwrap_or("");
    if tenancy
        .domain_of(user_name, domain)
        .is_some_and(|d| d.is_enabled())
    {
        return Ok(None);
    }
    if group
        .default_sender_domain
        .as_deref()
        .is_some_and(|d| d.eq_ignore_ascii_case(domain))
    {
        return Ok(Some(Quota {
            name: default_domain_quota_name(user_name),
            window: Window::Rolling30Days,
            limit: group.default_domain_limit,
            amount: recipients,
        }));
    }
    Err(Reply::new(
        550,
        "5.7.1",
        format!(
            "Sender domain {domain} is not verified for user {user_name}: add it as a sender domain and publish its DNS records, or send from a verified domain"
        ),
    ))
}

/// The reply to an insert a quota refused.
pub(super) fn refusal(q: &QuotaExceeded) -> Reply {
    let what = if q.name.starts_with("default-domain:") {
        "rolling 30-day limit of the shared default sender domain".to_owned()
    } else {
        format!("{} sending limit", q.window.name())
    };
    let user = q.name.split_once(':').map(|(_, u)| u).unwrap_or(&q.name);
    let when = match (q.window, q.resets_at_ms) {
        (Window::Rolling30Days, Some(ms)) => {
            format!(
                "; the oldest day counted leaves the window at {}",
                rfc3339(ms)
            )
        }
        (Window::Rolling30Days, None) => {
            "; it frees as the days counted leave the 30-day window".to_owned()
        }
        (_, Some(ms)) => format!("; it resets at {}", rfc3339(ms)),
        (_, None) => "; it does not reset: ask your provider to raise it".to_owned(),
    };
    let text = format!(
        "The {what} of {} recipients for user {user} is reached ({} used){when}",
        q.limit, q.used
    );
    match q.window {
        Window::Lifetime => Reply::new(550, "5.7.1", text),
        _ => Reply::new(451, "4.7.1", text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_temporary_unless_lifetime() {
        let q = QuotaExceeded {
            name: "user:alice".into(),
            window: Window::Day,
            limit: 100,
            used: 99,
            resets_at_ms: Some(1_795_305_600_000),
        };
        let r = refusal(&q);
        assert_eq!((r.code, r.enhanced), (451, "4.7.1"));
        assert!(
            r.text
                .contains("daily sending limit of 100 recipients for user alice")
        );
        assert!(r.text.contains("2026-11-22T00:00:00.000Z"), "{}", r.text);
        let life = refusal(&QuotaExceeded {
            window: Window::Lifetime,
            resets_at_ms: None,
            ..q
        });
        assert_eq!(life.code, 550);
    }

    #[test]
    fn quotas_cover_three_windows() {
        let mut g = UserGroup::single_tenant(&["s".into()]);
        g.daily_limit = 5;
        let q = user_quotas("bob", &g, 3);
        assert_eq!(q.len(), 3);
        assert_eq!((q[0].window, q[0].limit, q[0].amount), (Window::Day, 5, 3));
    }
}
