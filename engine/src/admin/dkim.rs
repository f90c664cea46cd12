//! `dkim.*`: a domain's DKIM keys over the admin socket.
//!
//! Keys are generated here or imported as PEM, sealed when stored, and
//! never shown again: reads give selectors, state and the DNS records to
//! publish. Rotation is explicit: `generate --inactive` publishes a new
//! key, `activate` makes it sign (alongside the old one until the old one
//! is retired), `retire` removes a key.

use std::sync::Arc;

use sendengine_dkim::{DkimKey, KeyAlgorithm};
use serde_json::{Value, json};

use super::objects::apply;
use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::tenancy::Change;
use crate::tenancy::dkim::{DkimDomain, KeyEdit, StoredKey};

pub async fn handle(
    ctx: &Arc<AdminContext>,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    match verb {
        "list" => Ok(list(ctx)),
        "get" => get(ctx, &domain_arg(args)?),
        "generate" => generate(ctx, args).await,
        "import" => {
            let pem = args.str("private_key")?.to_owned();
            DkimKey::from_pem(&pem)
                .map_err(|e| AdminError::bad_args(format!("private_key: {e}")))?;
            add_key(ctx, args, pem).await
        }
        "activate" | "retire" => change_key(ctx, verb, args).await,
        _ => Err(AdminError::new(
            "unknown_command",
            format!(
                "`dkim.{verb}` is not a command; try dkim.list|get|generate|import|activate|retire"
            ),
        )),
    }
}

fn domain_arg(args: &Args<'_>) -> Result<String, AdminError> {
    Ok(args.str("domain")?.to_ascii_lowercase())
}

fn list(ctx: &AdminContext) -> Value {
    let snapshot = ctx.engine.tenancy.snapshot();
    let mut domains: Vec<Value> = snapshot.dkim.values().map(describe).collect();
    domains.sort_by(|a, b| a["domain"].as_str().cmp(&b["domain"].as_str()));
    Value::Array(domains)
}

fn describe(keys: &DkimDomain) -> Value {
    json!({
        "domain": keys.domain,
        "keys": keys.keys.iter().map(|k| json!({"selector": k.selector, "active": k.active})).collect::<Vec<_>>(),
    })
}

/// The keys (never the private halves) and the records to publish.
fn get(ctx: &AdminContext, domain: &str) -> Result<Value, AdminError> {
    let snapshot = ctx.engine.tenancy.snapshot();
    let keys = snapshot
        .dkim
        .get(domain)
        .ok_or_else(|| AdminError::not_found(format!("no DKIM keys for `{domain}`")))?;
    let mut shown = describe(keys);
    shown["records"] = json!(zone_lines(&snapshot, domain));
    Ok(shown)
}

/// The DKIM TXT records of `domain` in zone-file form (255-byte strings).
pub fn zone_lines(snapshot: &crate::tenancy::Tenancy, domain: &str) -> Vec<String> {
    snapshot
        .signing
        .get(domain)
        .map(|s| s.records.iter().map(|r| r.zone_line()).collect())
        .unwrap_or_default()
}

async fn generate(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let algorithm = match args.opt_str("algorithm")?.unwrap_or("rsa") {
        "rsa" => KeyAlgorithm::Rsa,
        "ed25519" => KeyAlgorithm::Ed25519,
        other => {
            return Err(AdminError::bad_args(format!(
                "algorithm: `{other}` is not rsa or ed25519"
            )));
        }
    };
    let pem = blocking(move || {
        DkimKey::generate(algorithm)
            .map(|k| k.to_pem())
            .map_err(|e| AdminError::internal(format!("generating the key: {e}")))
    })
    .await?;
    add_key(ctx, args, pem).await
}

async fn add_key(
    ctx: &Arc<AdminContext>,
    args: &Args<'_>,
    pem: String,
) -> Result<Value, AdminError> {
    let domain = domain_arg(args)?;
    let selector = match args.opt_str("selector")? {
        Some(s) => s.to_owned(),
        None => sendengine_dkim::default_selector(std::time::SystemTime::now()),
    };
    let active = !matches!(args.opt_str("inactive")?, Some("true" | "yes" | "1"));
    // The checks here give the clear refusals; the edit itself is made on
    // the keys as they are when it is applied (`Change::EditDkim`).
    if current(ctx, &domain)
        .keys
        .iter()
        .any(|k| k.selector == selector)
    {
        return Err(AdminError::bad_args(format!(
            "selector: `{selector}` already has a key for {domain}; retire it first or pick another"
        )));
    }
    let key = StoredKey {
        selector,
        private_key: pem,
        active,
    };
    edit(ctx, &domain, KeyEdit::Add(key)).await?;
    get(ctx, &domain)
}

async fn change_key(
    ctx: &Arc<AdminContext>,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let domain = domain_arg(args)?;
    let selector = args.str("selector")?.to_owned();
    if !current(ctx, &domain)
        .keys
        .iter()
        .any(|k| k.selector == selector)
    {
        return Err(AdminError::not_found(format!(
            "{domain} has no key with selector `{selector}`"
        )));
    }
    let change = if verb == "activate" {
        KeyEdit::Activate(selector)
    } else {
        KeyEdit::Retire(selector)
    };
    edit(ctx, &domain, change).await?;
    get(ctx, &domain).or_else(|_| Ok(json!({"domain": domain, "keys": []})))
}

fn current(ctx: &AdminContext, domain: &str) -> DkimDomain {
    ctx.engine
        .tenancy
        .snapshot()
        .dkim
        .get(domain)
        .cloned()
        .unwrap_or(DkimDomain {
            domain: domain.to_owned(),
            keys: Vec::new(),
        })
}

async fn edit(ctx: &Arc<AdminContext>, domain: &str, edit: KeyEdit) -> Result<(), AdminError> {
    let engine = ctx.engine.clone();
    let domain = domain.to_owned();
    blocking(move || apply(&engine, Change::EditDkim { domain, edit })).await
}
