//! Admission step 8: DKIM. The message is signed once, after every
//! transform, with the active keys of the domain of the From it leaves
//! with; the signers are built by `tenancy` when the configuration loads.

use crate::engine::Engine;
use crate::tenancy::Tenancy;

use super::Admitted;

/// DKIM-signs the message with its From domain's active keys on the
/// engine's signing threads, off the async ones (RSA costs about a third
/// of a millisecond). Returns what the reception event says about it.
pub(super) async fn sign(engine: &Engine, snapshot: &Tenancy, admitted: &mut Admitted) -> String {
    let Some(domain) = admitted.signing_domain.clone() else {
        return "unsigned: no From domain".into();
    };
    let signers = match snapshot.signing.get(&domain) {
        Some(s) if !s.signers.is_empty() => s.signers.clone(),
        _ => return format!("unsigned: no DKIM key for {domain}"),
    };
    let body = std::mem::take(&mut admitted.message.body);
    let signed = engine
        .signing
        .run(move || {
            let started = std::time::Instant::now();
            let result = sendengine_dkim::sign_message(&signers, &body);
            crate::metrics::dkim_sign_time(started);
            (result, body, signers)
        })
        .await;
    match signed {
        Some((Ok(signed), _, signers)) => {
            admitted.message.body = signed.into();
            let selectors: Vec<&str> = signers.iter().map(|s| s.selector()).collect();
            format!("signed d={domain} s={}", selectors.join(","))
        }
        Some((Err(e), body, _)) => {
            admitted.message.body = body;
            format!("unsigned: {e}")
        }
        None => "unsigned: the signing task failed".into(),
    }
}
