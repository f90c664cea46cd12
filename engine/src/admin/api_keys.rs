//! `user.api_key.create|list|revoke NAME`: the HTTP injection API's keys
//! of a user (see `tenancy::api_keys`). `create` answers the token once;
//! it is never stored or shown again, only its hash is kept.

use std::sync::Arc;

use serde_json::{Value, json};

use super::objects::apply;
use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::tenancy::Change;
use crate::tenancy::api_keys::{self, ApiKey, MAX_KEYS_PER_USER};
use crate::timefmt::{now_ms, rfc3339};

pub async fn handle(
    ctx: &Arc<AdminContext>,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let user = args.str("name")?.to_owned();
    // The checks here give the clear refusals; the change itself is staged
    // on the objects as they are when it is made (`Change::AddApiKey`).
    let keys = stored_keys(ctx, &user)?;
    let engine = ctx.engine.clone();
    match verb {
        "api_key.list" => Ok(Value::Array(keys.iter().map(shown).collect())),
        "api_key.create" => {
            if keys.len() >= MAX_KEYS_PER_USER {
                return Err(AdminError::new(
                    "invalid",
                    format!(
                        "user `{user}` has {MAX_KEYS_PER_USER} API keys already: revoke one first"
                    ),
                ));
            }
            let new = api_keys::generate(rfc3339(now_ms()));
            let mut answer = shown(&new.key);
            answer["token"] = new.token.into();
            answer["user"] = user.clone().into();
            let key = new.key;
            blocking(move || apply(&engine, Change::AddApiKey { user, key })).await?;
            Ok(answer)
        }
        "api_key.revoke" => {
            let id = args.str("id")?.to_owned();
            if !keys.iter().any(|k| k.id == id) {
                return Err(AdminError::not_found(format!(
                    "user `{user}` has no API key `{id}` (see: sendctl user api-key list {user})"
                )));
            }
            let revoked = json!({ "revoked": id });
            blocking(move || apply(&engine, Change::RevokeApiKey { user, id })).await?;
            Ok(revoked)
        }
        _ => Err(AdminError::new(
            "unknown_command",
            format!("`user.{verb}` is not a command; try user.api_key.create|list|revoke"),
        )),
    }
}

fn stored_keys(ctx: &AdminContext, user: &str) -> Result<Vec<ApiKey>, AdminError> {
    let snapshot = ctx.engine.tenancy.snapshot();
    let stored = snapshot
        .users
        .get(user)
        .ok_or_else(|| AdminError::not_found(format!("no user is called `{user}`")))?;
    Ok(stored.api_keys.clone())
}

/// A key as the socket shows it: never the hash.
fn shown(key: &ApiKey) -> Value {
    json!({ "id": key.id, "created": key.created })
}
