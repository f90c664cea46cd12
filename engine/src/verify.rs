//! Sender-domain verification in the background.
//!
//! Tenants publish their records when it suits them, so the daemon keeps
//! looking: every `[dns] verify_interval` each domain that is not enabled
//! yet is resolved again, and one whose records all check out is enabled
//! (the admin socket can also verify one at once). Enabled domains are
//! left alone: a passing DNS hiccup must not switch off a tenant's sending.
//! A domain is stored again only when the lookup changed its results.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domains::DomainStatus;
use crate::engine::Engine;
use crate::tenancy::{Change, TenancyError};
use crate::timefmt::now_ms;

pub async fn run(engine: Arc<Engine>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        verify_pending(&engine).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Verifies every domain that is not enabled; returns how many changed.
pub async fn verify_pending(engine: &Engine) -> usize {
    let snapshot = engine.tenancy.snapshot();
    let mut changed = 0;
    for domain in snapshot.domains.values() {
        if domain.status == DomainStatus::Enabled {
            continue;
        }
        let mut checked = domain.clone();
        crate::domains::verify(&engine.resolver, &mut checked, now_ms()).await;
        // Every change re-checks all objects: store only what the lookup
        // changed (`last_verified_ms` then keeps the last change's time).
        if checked.status == domain.status && checked.checks == domain.checks {
            continue;
        }
        let change = Change::VerifiedDomain {
            seen: domain.clone(),
            verified: checked.clone(),
        };
        match engine.change(change) {
            Ok(()) => {}
            // Put, moved or deleted during the lookups (by an operator or
            // another node): the next round checks it as it is now.
            Err(TenancyError::Changed { .. }) => continue,
            Err(e) => {
                log::warn!(
                    "could not store the verification of {}: {e}",
                    checked.domain
                );
                continue;
            }
        }
        if checked.status != domain.status {
            changed += 1;
            log::info!(
                "sender domain {} is now {:?}",
                checked.domain,
                checked.status
            );
        }
    }
    changed
}
