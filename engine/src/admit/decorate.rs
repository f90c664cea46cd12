//! Admission step 6: the transforms, applied once. The user group's
//! header/footer and X-Mailer and the delivery server's From rules go in,
//! then the re-encoding for relays without 8BITMIME. The byte-level work
//! is the top-level `transform` module; this step picks what applies and
//! refuses (554 5.6.0) a message the transforms cannot process.

use crate::engine::Envelope;
use crate::metrics::Refusal;
use crate::tenancy::DeliveryServer;
use crate::transform::{self, Decoration};
use crate::values::Reply;

use super::tenant::Tenant;

/// What the group adds to every message, with the From that `server`
/// enforces (`enforced_from`, or the user's sender as From). A group
/// without an X-Mailer gets `default_x_mailer` (config.toml's `x_mailer`;
/// empty adds none).
pub(super) fn decoration(
    server: Option<&DeliveryServer>,
    tenant: &Tenant<'_>,
    default_x_mailer: &str,
) -> Decoration {
    let mut decoration = tenant.group.decoration();
    if decoration.x_mailer.as_deref().is_none_or(str::is_empty) && !default_x_mailer.is_empty() {
        decoration.x_mailer = Some(default_x_mailer.to_owned());
    }
    decoration.from = server.and_then(|s| {
        s.enforced_from.clone().or_else(|| {
            s.sender_info_as_from
                .then(|| tenant.user.and_then(|u| u.sender_from()))
                .flatten()
        })
    });
    decoration
}

/// A message after the transforms.
pub(super) struct Transformed {
    pub body: Vec<u8>,
    /// Whether its From field may differ from the one it came with: an
    /// enforced From, or header fields re-encoded for 7-bit transport.
    pub from_rewritten: bool,
}

/// The group's and server's transforms, then the re-encoding for relays
/// without 8BITMIME (`transform::seven_bit`): what is signed and spooled.
pub(super) fn transformed(
    body: Vec<u8>,
    decoration: &Decoration,
    envelope: &Envelope,
) -> Result<Transformed, Reply> {
    let refuse = |e: transform::TransformError| {
        crate::metrics::injection_refused(Refusal::Content);
        Reply::new(
            554,
            "5.6.0",
            format!("The message cannot be processed: {e}"),
        )
    };
    // Most groups decorate nothing: then the prepared bytes go on as they
    // are, without a copy.
    let body = if decoration.is_empty() {
        body
    } else {
        transform::decorate(&body, decoration).map_err(refuse)?
    };
    // UTF-8 addresses need SMTPUTF8 anyway: their header stays UTF-8.
    let utf8_envelope =
        !envelope.mail_from.is_ascii() || envelope.recipients.iter().any(|r| !r.is_ascii());
    let enforced_from = decoration.from.as_deref().is_some_and(|f| !f.is_empty());
    Ok(
        match transform::seven_bit(&body, utf8_envelope).map_err(refuse)? {
            Some(encoded) => Transformed {
                body: encoded,
                from_rewritten: true,
            },
            None => Transformed {
                body,
                from_rewritten: enforced_from,
            },
        },
    )
}
