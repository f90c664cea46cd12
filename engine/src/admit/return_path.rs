//! Admission step 5: the return path, the MAIL FROM the message is
//! delivered with, and the domain of its VERP address (bounces come back
//! to it and are matched by `bounce_in`).

use crate::engine::Envelope;
use crate::tenancy::{DeliveryServer, Tenancy};

use super::tenant::Tenant;

/// MAIL FROM for delivery and the domain of its VERP address (empty: no
/// VERP). The delivery server's mail-from domain wins; else an enabled
/// sender domain's own bounce subdomain (`sl.` by default); a server set to
/// `sender_info_as_mfrom` uses the user's sender address as it is.
pub(super) fn return_path(
    snapshot: &Tenancy,
    server: Option<&DeliveryServer>,
    tenant: &Tenant<'_>,
    envelope: &Envelope,
    from_domain: Option<&str>,
) -> (String, String) {
    let user = tenant.user;
    if let Some(server) = server
        && server.sender_info_as_mfrom
        && let Some(email) = user.and_then(|u| u.sender_email.clone())
    {
        return (email, String::new());
    }
    let verp_domain = server
        .and_then(|s| s.mail_from_domain.clone())
        .or_else(|| {
            let user = user?;
            let domain = from_domain?;
            snapshot
                .domain_of(&user.name, domain)
                .filter(|d| d.is_enabled())
                .map(|d| crate::domains::mail_from_domain(&d.domain, &tenant.group.domain_settings))
        })
        .unwrap_or_default();
    (envelope.mail_from.clone(), verp_domain)
}
